//! The driver-side bus abstraction: how frames reach a device.

use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use crate::wire::Profile;

/// Errors of a bus implementation.
#[derive(Debug, thiserror::Error)]
pub enum BusIoError {
    /// The peer went away.
    #[error("bus disconnected")]
    Disconnected,
    /// The frame is larger than the bus accepts.
    #[error("frame of {size} bytes exceeds the bus maximum {max}")]
    FrameTooLarge {
        /// Frame size.
        size: usize,
        /// Bus maximum.
        max: usize,
    },
    /// The bus refused the frame locally (routing or policy, §6.3).
    #[error("bus refused the frame: {0}")]
    Refused(String),
    /// An OS-level I/O error.
    #[error("bus i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Any other error of a concrete bus implementation.
    #[error("bus: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// One driver-side bus instance connected to a device-side bus.
///
/// A bus carries whole frames (header + payload, exactly `msg_size` bytes,
/// possibly followed by zero padding) and supplies the transport parameters
/// of §1. Addresses the driver puts in SET_VQUEUE and descriptors are guest
/// addresses of [`DriverBus::memory`].
pub trait DriverBus {
    /// Maximum message size (header included, bus framing excluded).
    fn max_msg_size(&self) -> usize;

    /// The wire profile this bus instance carries (a bus-instance property
    /// both sides are configured with, interop §2). Default: spec v2.
    fn profile(&self) -> Profile {
        Profile::V2
    }

    /// Transport feature bits of this bus instance (§1, §2).
    fn transport_features(&self) -> u32;

    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> Result<(), BusIoError>;

    /// Receives one frame into `buf`; `Ok(None)` when `timeout` expires first.
    /// `None` as timeout waits without bound (the driver never passes it).
    fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<usize>, BusIoError>;

    /// The driver's guest RAM, shared with the device.
    fn memory(&self) -> &Arc<GuestMemoryMmap<()>>;

    /// True if the bus instance agreed on polling-only used notifications
    /// (§3.16): EVENT_USED is then not expected.
    fn polling_only(&self) -> bool {
        false
    }

    /// False for a bus that carries no frame length, where a frame is
    /// whatever `msg_size` says within a fixed window (FF-A direct
    /// messages: the 112-byte register window): a frame shorter than its
    /// header or than its msg_size cannot be sent there.
    fn carries_frame_length(&self) -> bool {
        true
    }
}

impl<B: DriverBus + ?Sized> DriverBus for Box<B> {
    fn max_msg_size(&self) -> usize {
        (**self).max_msg_size()
    }
    fn profile(&self) -> Profile {
        (**self).profile()
    }
    fn transport_features(&self) -> u32 {
        (**self).transport_features()
    }
    fn send(&mut self, frame: &[u8]) -> Result<(), BusIoError> {
        (**self).send(frame)
    }
    fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<usize>, BusIoError> {
        (**self).recv(buf, timeout)
    }
    fn memory(&self) -> &Arc<GuestMemoryMmap<()>> {
        (**self).memory()
    }
    fn polling_only(&self) -> bool {
        (**self).polling_only()
    }
    fn carries_frame_length(&self) -> bool {
        (**self).carries_frame_length()
    }
}
