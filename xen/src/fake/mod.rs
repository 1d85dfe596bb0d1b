//! Fakes of Xen facilities for tests, real enough to run the daemon's Xen
//! paths without a hypervisor.
//!
//! - [`xenstored`]: an in-memory xenstored served over the wire protocol.

pub mod xenstored;

pub use xenstored::{FakeError, FakeStats, FakeXenstored, ReplyFault};
