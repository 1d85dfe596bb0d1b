//! Xen support for vmsgd, the device side of virtio-msg.
//!
//! This crate talks to Xen the way a dom0 (or driver domain) backend does,
//! through the Linux device nodes, without linking any Xen library:
//!
//! - [`bindings`]: bindgen output of the kernel UAPI and Xen public headers,
//!   checked in (`xen/regen-bindings.sh` regenerates it), and the ioctl
//!   numbers computed from it.
//! - [`evtchn`], [`gntdev`], [`gntalloc`], [`privcmd`]: safe RAII handles on
//!   `/dev/xen/{evtchn,gntdev,gntalloc,privcmd}`, each behind a small trait so
//!   tests can substitute a fake.
//! - [`xenstore`]: a xenstore client speaking the wire protocol directly on
//!   `/dev/xen/xenbus` or `/run/xenstored/socket` (no libxenstore: its watch
//!   thread failed in static builds on real Xen).
//! - [`memory`]: guest memory from grants (grant mode, addresses
//!   `1 << 63 | gref << 12`) or foreign frames (foreign mode) as
//!   `vm-memory` regions, the grant cache and the frontend's grant pool.
//! - [`bus`]: the Xen bus: the dom0 side ([`bus::XenBackend`], [`bus::XenBus`]
//!   implementing `vmsg_backend::bus::Bus`) and, with the feature
//!   `frontend`, the domU side (`bus::XenFrontend` implementing
//!   `vmsg_driver::DriverBus`), generic over the handle traits
//!   (`docs/xen-bus.md` is the binding).
//! - `fake` (feature `fake`): a fake Xen (memfd RAM, grant table, eventfd
//!   event channels, fault injection) and an in-memory xenstored with the
//!   real permission model, served over the same wire protocol, for tests
//!   and tools.
//!
//! The daemon builds this crate without features: no fake and no
//! driver-side code in dom0 (docs/architecture.md, "Layering").
//!
//! Only 64-bit Linux with 4 KiB pages (x86_64, arm64) is supported; the
//! device nodes exist only in a Xen domain, so the handles are exercised for
//! real under Xen (see `xen/README.md`).

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bindings;
pub mod bus;
pub mod evtchn;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod gntalloc;
pub mod gntdev;
pub mod mapping;
pub mod memory;
pub mod privcmd;
mod sys;
pub mod xenstore;

pub use evtchn::{BoundPort, EventChannels, EvtchnError, XenEvtchn};
pub use gntalloc::{GntallocError, GrantSharer, SharedGrants, XenGntalloc, XenSharedPages};
pub use gntdev::{GntdevError, GntdevMapping, Grant, GrantMapper, GrantMapping, XenGntdev};
pub use mapping::{MappedPages, UnmapNotify};
pub use privcmd::{ForeignMapper, ForeignMapping, FrameError, PrivcmdError, XenPrivcmd};

/// A Xen domain id (`domid_t`).
pub type DomId = u16;

/// An event channel port number (`evtchn_port_t`).
pub type EvtchnPort = u32;

/// A grant reference (`grant_ref_t`).
pub type GrantRef = u32;

/// A guest frame number, in units of Xen's 4 KiB pages.
pub type Gfn = u64;

/// The domain id of dom0, the privileged control domain.
pub const DOMID_0: DomId = 0;
