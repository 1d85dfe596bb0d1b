//! Fakes of Xen facilities for tests, real enough to run the daemon's Xen
//! paths without a hypervisor, behind the same traits as the real handles.
//!
//! - [`hypervisor`]: [`FakeXen`], a machine of fake domains (memfd RAM, a
//!   grant table, event channels over eventfds, domain death) with fault
//!   injection, and [`FakeDomain`], the handle factory of one domain.
//! - [`handles`]: the per-domain handles ([`FakeEvtchn`], [`FakeGntalloc`],
//!   [`FakeGntdev`], [`FakePrivcmd`]).
//! - [`xenstored`]: an in-memory xenstored served over the wire protocol.
//! - `platform`: [`FakeDomain`] as a platform of the Xen bus.
//!
//! Compiled for this crate's tests or with the feature `fake`: tests and
//! tools only, never the daemon.

pub mod handles;
pub mod hypervisor;
mod platform;
pub mod xenstored;

pub use handles::{
    FakeEvtchn, FakeForeignMapping, FakeGntalloc, FakeGntdev, FakeMapping, FakePrivcmd, FakeShared,
};
pub use hypervisor::{FakeDomain, FakeXen, FakeXenError, FakeXenStats};
pub use xenstored::{FakeError, FakeStats, FakeXenstored, ReplyFault};
