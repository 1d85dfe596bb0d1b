//! The `Bus` trait: what the per-guest instance needs from a bus instance.
//!
//! A bus instance is the device side's endpoint towards one guest: it carries
//! frames in both directions, wakes the instance through a pollable fd
//! (eventfd, Xen event channel, FF-A notification, socket) and exposes the
//! guest memory that guest shares. The local bus (`crate::local`), the Xen bus
//! and the FF-A bus implement it; the instance code does not know which one it
//! talks to.

use std::os::fd::RawFd;

use thiserror::Error;

use crate::memory::GuestMemoryHandle;

/// Errors a bus instance reports to the instance driving it.
#[derive(Debug, Error)]
pub enum BusError {
    /// The peer went away (socket closed, event channel closed, domain died).
    #[error("peer disconnected")]
    Disconnected,
    /// The outgoing ring stayed full for longer than the bus allows.
    #[error("outgoing ring full")]
    RingFull,
    /// The frame is larger than the bus instance's maximum message size.
    #[error("frame of {len} bytes exceeds the bus maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    /// The shared ring is corrupt (indices out of range): the peer is hostile
    /// or broken, the bus instance cannot continue.
    #[error("shared ring corrupt: {0}")]
    RingCorrupt(&'static str),
    /// The peer took back memory it shared (e.g. freed pages of its RAM):
    /// touching it would make the device side allocate it. The bus instance
    /// cannot continue.
    #[error("shared memory revoked: {0}")]
    MemoryRevoked(String),
    /// An OS call failed.
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Counters a bus instance keeps about what it had to drop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BusCounters {
    /// Frames received whose ring slot was malformed (length out of range).
    pub bad_slots: u64,
    /// Frames received in total.
    pub frames_in: u64,
    /// Frames sent in total.
    pub frames_out: u64,
    /// Doorbells received.
    pub doorbells_in: u64,
}

/// One bus instance, device side.
pub trait Bus: Send {
    /// Largest frame (8-byte header included) either side may send.
    fn max_msg_size(&self) -> usize;

    /// Transport feature bits this bus instance advertises (v2 §1: bit 0 is
    /// `VIRTIO_MSG_F_STRICT_CONFIG_GENERATION`).
    fn transport_features(&self) -> u32;

    /// A file descriptor that becomes readable when the peer rang the
    /// doorbell. The instance polls it; it stays owned by the bus.
    fn doorbell_fd(&self) -> RawFd;

    /// Consume the pending doorbell (drain the eventfd / event channel). Call
    /// before draining the ring so that a kick arriving meanwhile is not lost.
    fn ack_doorbell(&mut self) -> Result<(), BusError>;

    /// A file descriptor that becomes readable when the bus's control path
    /// has something to say (for the local bus: the Unix socket, which reads
    /// EOF when the driver process exits). `None` if the bus has none.
    fn control_fd(&self) -> Option<RawFd>;

    /// Handle readiness of `control_fd`. Returns `Err(BusError::Disconnected)`
    /// when the peer has gone.
    fn handle_control(&mut self) -> Result<(), BusError>;

    /// Pop one frame into `buf` (which is at least `max_msg_size()` long).
    /// Returns the frame length, or `None` when nothing is pending.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BusError>;

    /// The instance is about to spin on [`Bus::recv`] (`true`) or has
    /// stopped spinning and will next sleep on the doorbell (`false`). While
    /// spinning, a bus may tell the peer not to ring the doorbell; after
    /// `false` the instance calls `recv` once more before sleeping, so a frame
    /// pushed meanwhile is seen or kicked. Default: nothing to do.
    fn set_spinning(&mut self, _spinning: bool) {}

    /// Push one frame and notify the peer.
    fn send(&mut self, frame: &[u8]) -> Result<(), BusError>;

    /// The device numbers the instance serves on this connection, sorted:
    /// told when the connection starts and after every hot-plug change, for
    /// buses that also publish them outside the messages (Xen's `devices`
    /// key). GET_DEVICES stays authoritative. Default: nothing to do.
    fn devices_changed(&mut self, _devices: &[u16]) {}

    /// The guest memory this bus instance exposes to the devices.
    fn memory(&self) -> GuestMemoryHandle;

    /// What the bus dropped or carried so far.
    fn counters(&self) -> BusCounters;

    /// Counters only this kind of bus keeps (e.g. the Xen bus's grant cache
    /// hits and maps), as (name, value) for `vmsgctl stats`: names are
    /// `snake_case`, values only grow. Default: none.
    fn extra_counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
