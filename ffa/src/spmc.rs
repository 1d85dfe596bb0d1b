//! What the bus needs from the SPMC: retrieving the memory a driver shared
//! (and mapping it for the partition), giving it back, ringing a
//! notification. The secure partition implements it with real FF-A calls
//! (`ffa/sp`); tests use the simulated SPMC (`fake`, feature `fake`).

use thiserror::Error;

use crate::window::Window;

/// An SPMC call that failed, as FF-A reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SpmcError {
    /// `INVALID_PARAMETERS`: a bad handle, tag, sender or descriptor.
    #[error("invalid parameters")]
    InvalidParameters,
    /// `DENIED`: not allowed (already retrieved, not shared with us, …).
    #[error("denied")]
    Denied,
    /// `NOT_SUPPORTED`: the SPMC lacks the ABI (notifications on TF-A's EL3 SPMC).
    #[error("not supported")]
    NotSupported,
    /// `BUSY`: try again.
    #[error("busy")]
    Busy,
    /// `NO_MEMORY`: nothing left to map it with.
    #[error("no memory")]
    NoMemory,
    /// The retrieved region does not have the announced size.
    #[error("the shared region has {got} pages, the driver announced {want}")]
    Size {
        /// Pages the SPMC described.
        got: u32,
        /// Pages AREA_SHARE announced.
        want: u32,
    },
}

/// The SPMC as the FF-A bus uses it.
pub trait Spmc {
    /// `FFA_MEM_RETRIEVE_REQ` for the region `sender` shared under
    /// `handle`/`tag` with `sharing_attrs` (reference §8.6), expected to be
    /// `pages` 4 KiB pages, then map it for the partition (non-secure).
    fn retrieve(
        &mut self,
        sender: u16,
        handle: u64,
        tag: u64,
        attrs: u32,
        pages: u32,
    ) -> Result<Window, SpmcError>;
    /// Unmap `window` and `FFA_MEM_RELINQUISH` the region of `handle`.
    fn relinquish(&mut self, handle: u64, window: Window) -> Result<(), SpmcError>;
    /// `FFA_NOTIFICATION_SET` of `receiver`'s notification `id`.
    fn notify(&mut self, receiver: u16, id: u16) -> Result<(), SpmcError>;
    /// Whether the SPMC implements notifications at all.
    fn has_notifications(&self) -> bool;
}
