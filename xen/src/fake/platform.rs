//! [`FakeDomain`] as a bus platform: the handles of a fake domain behind the
//! same traits as the real nodes ([`crate::bus::XenHost`]).

use std::os::unix::net::UnixStream;

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::{FakeDomain, FakeEvtchn, FakeGntalloc, FakeGntdev, FakePrivcmd};
use crate::bus::{BackendPlatform, FrontendPlatform, XenBackend, XenBus, XenBusError, XenPlatform};
use crate::sys::owned_region;
use crate::xenstore::XsClient;

fn os(op: &'static str) -> impl FnOnce(std::io::Error) -> XenBusError {
    move |source| XenBusError::Os { op, source }
}

impl XenPlatform for FakeDomain {
    type Evtchn = FakeEvtchn;
    type Xs = UnixStream;

    fn open_evtchn(&self) -> Result<FakeEvtchn, XenBusError> {
        self.evtchn().map_err(os("open fake evtchn"))
    }

    fn open_xenstore(&self) -> Result<XsClient<UnixStream>, XenBusError> {
        self.xenstore().map_err(|e| XenBusError::Os {
            op: "connect fake xenstored",
            source: std::io::Error::other(e.to_string()),
        })
    }
}

impl BackendPlatform for FakeDomain {
    type Gntdev = FakeGntdev;
    type Privcmd = FakePrivcmd;

    fn gntdev(&self) -> Result<FakeGntdev, XenBusError> {
        Ok(FakeDomain::gntdev(self))
    }

    fn privcmd(&self) -> Result<FakePrivcmd, XenBusError> {
        Ok(FakeDomain::privcmd(self))
    }
}

impl FrontendPlatform for FakeDomain {
    type Gntalloc = FakeGntalloc;

    fn gntalloc(&self) -> Result<FakeGntalloc, XenBusError> {
        Ok(FakeDomain::gntalloc(self))
    }

    /// The fake domain's RAM memfd at guest-physical 0 (what a kernel
    /// driver in the domain would use).
    fn foreign_ram(&self) -> Result<GuestMemoryMmap<()>, XenBusError> {
        let file = self.ram_file().map_err(|e| XenBusError::Os {
            op: "fake RAM",
            source: std::io::Error::other(e.to_string()),
        })?;
        let len = usize::try_from(self.ram_pages() * 4096)
            .map_err(|_| XenBusError::Config("fake RAM too large".into()))?;
        let region = owned_region(&file, 0, len, true).map_err(os("map fake RAM"))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| XenBusError::Config("fake RAM overflows".into()))?;
        GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| XenBusError::Config(format!("fake RAM: {e}")))
    }
}

// Tests hand the backend and its bus to a per-guest thread, as the daemon
// does on real Xen.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<XenBackend<FakeDomain>>();
    assert_send::<XenBus<'static, FakeDomain>>();
};
