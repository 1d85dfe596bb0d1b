//! A xenstore client speaking the wire protocol directly (no libxenstore).
//!
//! - [`wire`]: message framing, types and error names (shared with the fake
//!   xenstored).
//! - [`perms`]: node permissions.
//! - [`client`]: [`XsClient`], its node operations ([`XsOps`]), watches and
//!   transactions.
//!
//! ```no_run
//! use vmsg_xen::xenstore::{XsClient, XsOps};
//! let mut xs = XsClient::open()?;
//! xs.write("/local/domain/0/data/hello", b"world")?;
//! xs.watch("/local/domain/0/data", "data")?;
//! let first = xs.next_event(None)?; // the initial event of the watch
//! let n = xs.transaction(|tx| {
//!     let n: u32 = tx.read_string("/local/domain/0/data/n").unwrap_or_default().parse().unwrap_or(0);
//!     tx.write("/local/domain/0/data/n", (n + 1).to_string().as_bytes())?;
//!     Ok(n + 1)
//! })?;
//! # let _ = (first, n);
//! # Ok::<(), vmsg_xen::xenstore::XsError>(())
//! ```

pub mod client;
pub mod perms;
pub mod wire;

pub use client::{
    INTRODUCE_DOMAIN, RELEASE_DOMAIN, Transaction, WatchEvent, XsClient, XsError, XsOps, XsStream,
    check_path,
};
pub use perms::{Access, Perm, Permissions};
pub use wire::{MsgType, XsErrno};
