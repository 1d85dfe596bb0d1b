//! Where the Xen bus gets its handles from: the real device nodes
//! ([`XenHost`]) or, with the feature `fake`, a fake domain (`FakeDomain`,
//! whose platform impls are in `crate::fake::platform`).

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::AsFd;

use vm_memory::GuestMemoryMmap;

use super::XenBusError;
use crate::evtchn::{EventChannels, XenEvtchn};
use crate::gntalloc::{GrantSharer, XenGntalloc};
use crate::gntdev::{GrantMapper, XenGntdev};
use crate::privcmd::{ForeignMapper, XenPrivcmd};
use crate::xenstore::{XsClient, XsStream};

/// What both sides of the bus open.
pub trait XenPlatform: Send + Sync + fmt::Debug {
    /// Event channel handle type.
    type Evtchn: EventChannels + 'static;
    /// The xenstore stream type.
    type Xs: Read + Write + AsFd + Send + fmt::Debug + 'static;

    /// Open an event channel handle (one per connection).
    fn open_evtchn(&self) -> Result<Self::Evtchn, XenBusError>;

    /// Connect to xenstore.
    fn open_xenstore(&self) -> Result<XsClient<Self::Xs>, XenBusError>;
}

/// What the dom0 side needs besides.
pub trait BackendPlatform: XenPlatform {
    /// Grant mapping handle type.
    type Gntdev: GrantMapper + 'static;
    /// Foreign mapping handle type.
    type Privcmd: ForeignMapper + 'static;

    /// Open the grant mapping device.
    fn gntdev(&self) -> Result<Self::Gntdev, XenBusError>;

    /// Open the privcmd device (foreign mode).
    fn privcmd(&self) -> Result<Self::Privcmd, XenBusError>;
}

/// What the domU side needs besides.
pub trait FrontendPlatform: XenPlatform {
    /// Grant allocation handle type.
    type Gntalloc: GrantSharer + 'static;

    /// Open the grant allocation device.
    fn gntalloc(&self) -> Result<Self::Gntalloc, XenBusError>;

    /// The domain's RAM as a driver addresses it in foreign mode (guest
    /// physical addresses), if this platform can provide it.
    fn foreign_ram(&self) -> Result<GuestMemoryMmap<()>, XenBusError>;
}

/// The real `/dev/xen/*` nodes and xenstored.
#[derive(Debug, Clone, Copy, Default)]
pub struct XenHost;

impl XenPlatform for XenHost {
    type Evtchn = XenEvtchn;
    type Xs = XsStream;

    fn open_evtchn(&self) -> Result<XenEvtchn, XenBusError> {
        Ok(XenEvtchn::open()?)
    }

    fn open_xenstore(&self) -> Result<XsClient<XsStream>, XenBusError> {
        XsClient::open().map_err(XenBusError::xs("open"))
    }
}

impl BackendPlatform for XenHost {
    type Gntdev = XenGntdev;
    type Privcmd = XenPrivcmd;

    fn gntdev(&self) -> Result<XenGntdev, XenBusError> {
        Ok(XenGntdev::open()?)
    }

    fn privcmd(&self) -> Result<XenPrivcmd, XenBusError> {
        Ok(XenPrivcmd::open()?)
    }
}

impl FrontendPlatform for XenHost {
    type Gntalloc = XenGntalloc;

    fn gntalloc(&self) -> Result<XenGntalloc, XenBusError> {
        Ok(XenGntalloc::open()?)
    }

    fn foreign_ram(&self) -> Result<GuestMemoryMmap<()>, XenBusError> {
        Err(XenBusError::Unsupported(
            "foreign mode needs guest-physical buffer addresses, which a userspace \
             frontend cannot get without pinning and /proc/self/pagemap (not implemented)"
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_platform_reports_missing_nodes_and_unsupported_foreign_ram() {
        if std::path::Path::new("/dev/xen/evtchn").exists() {
            return; // Running under Xen: nothing to check here.
        }
        let host = XenHost;
        assert!(matches!(
            XenPlatform::open_evtchn(&host),
            Err(XenBusError::Evtchn(e)) if e.raw_os_error() == Some(libc::ENOENT)
        ));
        assert!(matches!(
            BackendPlatform::gntdev(&host),
            Err(XenBusError::Gntdev(_))
        ));
        assert!(matches!(
            BackendPlatform::privcmd(&host),
            Err(XenBusError::Privcmd(_))
        ));
        assert!(matches!(
            FrontendPlatform::gntalloc(&host),
            Err(XenBusError::Gntalloc(_))
        ));
        assert!(matches!(
            host.foreign_ram(),
            Err(XenBusError::Unsupported(_))
        ));
    }
}
