//! The Xen bus: virtio-msg between a frontend in a domU and vmsgd in dom0,
//! in the classic split-driver style (`docs/xen-bus.md` is the binding).
//!
//! - [`XenBackend`]: the dom0 side of one device directory. It creates the
//!   backend and frontend xenstore directories (with the permissions a
//!   toolstack gives them), walks the XenbusState machine, and on
//!   connection maps the frontend's ring page(s) and memory and binds its
//!   event channel, yielding a [`XenBus`] that implements
//!   `vmsg_backend::bus::Bus` for a `GuestInstance`. [`XenBackend::run`]
//!   serves connection after connection until the domain dies.
//! - `XenFrontend` (feature `frontend`): the domU side, implementing
//!   `vmsg_driver::DriverBus`: shares a ring and a grant pool with gntalloc,
//!   allocates an unbound event channel, publishes them and walks the states.
//! - [`platform`]: where the handles come from ([`BackendPlatform`],
//!   [`FrontendPlatform`]): the real `/dev/xen/*` nodes ([`XenHost`]) or a
//!   fake domain (feature `fake`).
//!
//! Everything is generic over the handle traits, so the same code runs on
//! the fakes in tests and on real Xen.

mod backend;
#[cfg(feature = "frontend")]
mod frontend;
pub mod platform;

use std::fmt;
use std::time::Duration;

use thiserror::Error;
use vmsg_proto::Profile;

use crate::evtchn::EvtchnError;
use crate::gntalloc::GntallocError;
use crate::gntdev::GntdevError;
use crate::memory::XenMemoryError;
use crate::xenstore::XsError;
use crate::{DOMID_0, DomId};

pub use backend::{
    Accept, BackendConfig, BackendStats, MemoryConfig, RunEnd, StatsHandle, XenBackend, XenBus,
};
#[cfg(feature = "frontend")]
pub use frontend::{FrontendOptions, SharedXs, XenFrontend};
pub use platform::{BackendPlatform, FrontendPlatform, XenHost, XenPlatform};

/// The device type in xenstore paths (`backend/vmsg`, `device/vmsg`).
pub const DEVICE_TYPE: &str = "vmsg";
/// Version of this binding, published by the backend (`protocol-version`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest `max-ring-page-order` a backend may offer (256 pages, 1 MiB).
pub const MAX_RING_PAGE_ORDER: u32 = 8;

/// xenstore keys of the binding.
pub mod keys {
    /// Both sides: XenbusState as a decimal number.
    pub const STATE: &str = "state";
    /// Backend: path of the frontend directory.
    pub const FRONTEND: &str = "frontend";
    /// Backend: domid of the frontend.
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Frontend: path of the backend directory.
    pub const BACKEND: &str = "backend";
    /// Frontend: domid of the backend.
    pub const BACKEND_ID: &str = "backend-id";
    /// Backend: "1" while the toolstack wants the device; "0" asks it away.
    pub const ONLINE: &str = "online";
    /// Backend: version of the binding.
    pub const PROTOCOL_VERSION: &str = "protocol-version";
    /// Backend: wire profile ("v2", "v1", "rfc2").
    pub const PROFILE: &str = "profile";
    /// Both: largest message each side wants; the bus uses the minimum.
    pub const MAX_MSG_SIZE: &str = "max-msg-size";
    /// Backend: transport feature bits (decimal).
    pub const TRANSPORT_FEATURES: &str = "transport-features";
    /// Backend: "grant" or "foreign".
    pub const MEMORY_MODE: &str = "memory-mode";
    /// Backend (grant mode): most grants the frontend may announce.
    pub const MAX_GRANTS: &str = "max-grants";
    /// Backend: largest ring order it maps.
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    /// Backend: device numbers on this bus, ascending, space-separated.
    pub const DEVICES: &str = "devices";
    /// Either side: why it gave up (human-readable).
    pub const ERROR: &str = "error";
    /// Frontend: ring pages are `2^ring-page-order` (absent: 0).
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    /// Frontend: grant of the ring page (order 0).
    pub const RING_REF: &str = "ring-ref";
    /// Frontend: the unbound port the backend binds to.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Frontend (grant mode): the grant pool as runs (`first+count,...`).
    pub const GRANTS: &str = "grants";
}

/// Errors of the Xen bus.
#[derive(Debug, Error)]
pub enum XenBusError {
    /// A xenstore operation failed.
    #[error("xenstore {what}: {source}")]
    Xenstore {
        /// What was being done (usually the path).
        what: String,
        /// The client's error.
        #[source]
        source: XsError,
    },
    /// An event channel operation failed.
    #[error("event channel: {0}")]
    Evtchn(#[from] EvtchnError),
    /// Mapping the ring failed.
    #[error("mapping the ring: {0}")]
    Gntdev(#[from] GntdevError),
    /// Sharing the ring failed.
    #[error("sharing the ring: {0}")]
    Gntalloc(#[from] GntallocError),
    /// Opening the privcmd device failed.
    #[error("privcmd: {0}")]
    Privcmd(#[from] crate::privcmd::PrivcmdError),
    /// Mapping or sharing guest memory failed.
    #[error(transparent)]
    Memory(#[from] XenMemoryError),
    /// The ring is unusable.
    #[error("ring: {0}")]
    Ring(#[from] vmsg_transport::ring::RingError),
    /// The peer published something this side cannot accept.
    #[error("peer: {0}")]
    Protocol(String),
    /// The peer gave up (its `error` node, if any, says why).
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The peer did not reach the awaited state in time.
    #[error("timed out waiting for {what} (peer state {state})")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The peer's state when giving up.
        state: XenbusState,
    },
    /// The guest domain is gone.
    #[error("domain {0} is gone")]
    DomainGone(DomId),
    /// Local configuration out of range.
    #[error("configuration: {0}")]
    Config(String),
    /// The platform cannot provide a facility.
    #[error("{0}")]
    Unsupported(String),
    /// Opening a device node or polling failed.
    #[error("{op}: {source}")]
    Os {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl XenBusError {
    fn xs(what: impl Into<String>) -> impl FnOnce(XsError) -> Self {
        let what = what.into();
        move |source| Self::Xenstore { what, source }
    }
}

/// `enum xenbus_state` of `xen/io/xenbus.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XenbusState {
    /// 0: missing, unreadable or unknown value.
    Unknown,
    /// 1: setting up.
    Initialising,
    /// 2: backend waits for the frontend's details.
    InitWait,
    /// 3: frontend published its details.
    Initialised,
    /// 4: connected.
    Connected,
    /// 5: shutting down.
    Closing,
    /// 6: closed.
    Closed,
    /// 7: (unused by this binding).
    Reconfiguring,
    /// 8: (unused by this binding).
    Reconfigured,
}

impl XenbusState {
    /// The numeric value.
    pub fn raw(self) -> u32 {
        use crate::bindings::xenbus::xenbus_state as s;
        match self {
            Self::Unknown => s::XenbusStateUnknown,
            Self::Initialising => s::XenbusStateInitialising,
            Self::InitWait => s::XenbusStateInitWait,
            Self::Initialised => s::XenbusStateInitialised,
            Self::Connected => s::XenbusStateConnected,
            Self::Closing => s::XenbusStateClosing,
            Self::Closed => s::XenbusStateClosed,
            Self::Reconfiguring => s::XenbusStateReconfiguring,
            Self::Reconfigured => s::XenbusStateReconfigured,
        }
    }

    /// From a numeric value; anything else is `Unknown`.
    pub fn from_raw(v: u32) -> Self {
        [
            Self::Initialising,
            Self::InitWait,
            Self::Initialised,
            Self::Connected,
            Self::Closing,
            Self::Closed,
            Self::Reconfiguring,
            Self::Reconfigured,
        ]
        .into_iter()
        .find(|s| s.raw() == v)
        .unwrap_or(Self::Unknown)
    }

    /// From a xenstore value (decimal, optionally NUL-terminated); garbage
    /// is `Unknown`.
    pub fn parse(value: &[u8]) -> Self {
        std::str::from_utf8(value)
            .ok()
            .map(|s| s.trim_end_matches('\0'))
            .and_then(parse_u64)
            .and_then(|v| u32::try_from(v).ok())
            .map_or(Self::Unknown, Self::from_raw)
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self, self.raw())
    }
}

/// A plain decimal number as xenstore carries them.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The wire profile's name in xenstore.
pub fn profile_name(p: Profile) -> &'static str {
    match p {
        Profile::V2 => "v2",
        Profile::V1 => "v1",
        Profile::Rfc2 => "rfc2",
        // A profile this crate does not know yet.
        _ => "unknown",
    }
}

/// A wire profile from its xenstore name.
pub fn parse_profile(s: &str) -> Option<Profile> {
    Profile::ALL.into_iter().find(|p| profile_name(*p) == s)
}

/// `/local/domain/<backend>/backend/vmsg/<domid>/<devid>`.
pub fn backend_path(backend: DomId, domid: DomId, devid: u32) -> String {
    format!("/local/domain/{backend}/backend/{DEVICE_TYPE}/{domid}/{devid}")
}

/// `/local/domain/<domid>/device/vmsg/<devid>`.
pub fn frontend_path(domid: DomId, devid: u32) -> String {
    format!("/local/domain/{domid}/device/{DEVICE_TYPE}/{devid}")
}

/// The backend directory of a frontend in dom0.
pub fn dom0_backend_path(domid: DomId, devid: u32) -> String {
    backend_path(DOMID_0, domid, devid)
}

/// Key of ring page `i` for order `order` (`ring-ref` or `ring-ref<i>`).
pub fn ring_ref_key(order: u32, i: usize) -> String {
    if order == 0 {
        keys::RING_REF.to_owned()
    } else {
        format!("{}{i}", keys::RING_REF)
    }
}

/// The largest power-of-two slot count whose ring layout with `slot_size`
/// fits `bytes`.
pub fn ring_slots_for(bytes: usize, slot_size: u32) -> Option<u32> {
    let mut best = None;
    let mut slots = 1u32;
    while slots <= vmsg_transport::ring::MAX_SLOTS {
        if vmsg_transport::ring::required_size(slot_size, slots) > bytes {
            break;
        }
        best = Some(slots);
        slots *= 2;
    }
    best
}

/// How long to wait for a peer's state change by default.
pub const DEFAULT_STATE_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_garbage_is_unknown() {
        for v in 0..=8 {
            assert_eq!(XenbusState::from_raw(v).raw(), v);
        }
        assert_eq!(XenbusState::parse(b"4"), XenbusState::Connected);
        assert_eq!(XenbusState::parse(b"4\0"), XenbusState::Connected);
        for bad in [
            &b""[..],
            b"x",
            b"-1",
            b"9",
            b" 4",
            b"99999999999999999999999",
        ] {
            assert_eq!(XenbusState::parse(bad), XenbusState::Unknown, "{bad:?}");
        }
    }

    #[test]
    fn paths_and_keys() {
        assert_eq!(dom0_backend_path(3, 0), "/local/domain/0/backend/vmsg/3/0");
        assert_eq!(frontend_path(3, 1), "/local/domain/3/device/vmsg/1");
        assert_eq!(ring_ref_key(0, 0), "ring-ref");
        assert_eq!(ring_ref_key(2, 3), "ring-ref3");
        for p in Profile::ALL {
            assert_eq!(parse_profile(profile_name(p)), Some(p));
        }
        assert_eq!(parse_profile("v3"), None);
    }

    #[test]
    fn ring_geometry_in_a_page() {
        // 264-byte slots: 4 each way fit one page, 16 fit four.
        assert_eq!(ring_slots_for(4096, 264), Some(4));
        assert_eq!(ring_slots_for(4 * 4096, 264), Some(16));
        assert_eq!(ring_slots_for(100, 264), None);
        assert_eq!(ring_slots_for(4096, 65536), None);
    }
}
