//! A fake bus for tests and fuzzing: frames the instance sends are collected
//! in memory, guest memory is anonymous mappings. Not a production bus: no
//! peer, no doorbells that anyone rings.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{Bus, BusCounters, BusError};
use crate::memory::GuestMemoryHandle;

/// An in-memory [`Bus`] whose outgoing frames land in [`FakeBus::sent`].
#[derive(Debug)]
pub struct FakeBus {
    /// Frames the device side sent, oldest first.
    pub sent: VecDeque<Vec<u8>>,
    max_msg_size: usize,
    mem: GuestMemoryHandle,
    doorbell: EventFd,
}

impl FakeBus {
    /// A fake bus with `ram_size` bytes of guest RAM at `ram_base`.
    pub fn new(max_msg_size: usize, ram_base: u64, ram_size: usize) -> Result<Self, BusError> {
        let os = |op| move |source| BusError::Os { op, source };
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(ram_base), ram_size)])
            .map_err(|e| BusError::Os {
                op: "map fake guest RAM",
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(Self {
            sent: VecDeque::new(),
            max_msg_size,
            mem: Arc::new(mem),
            doorbell: EventFd::new(0).map_err(os("eventfd"))?,
        })
    }
}

impl Bus for FakeBus {
    fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }
    fn transport_features(&self) -> u32 {
        0
    }
    fn doorbell_fd(&self) -> RawFd {
        self.doorbell.as_raw_fd()
    }
    fn ack_doorbell(&mut self) -> Result<(), BusError> {
        Ok(())
    }
    fn control_fd(&self) -> Option<RawFd> {
        None
    }
    fn handle_control(&mut self) -> Result<(), BusError> {
        Ok(())
    }
    fn recv(&mut self, _buf: &mut [u8]) -> Result<Option<usize>, BusError> {
        Ok(None)
    }
    fn send(&mut self, frame: &[u8]) -> Result<(), BusError> {
        if frame.len() > self.max_msg_size {
            return Err(BusError::FrameTooLarge {
                len: frame.len(),
                max: self.max_msg_size,
            });
        }
        self.sent.push_back(frame.to_vec());
        Ok(())
    }
    fn memory(&self) -> GuestMemoryHandle {
        self.mem.clone()
    }
    fn counters(&self) -> BusCounters {
        BusCounters::default()
    }
}
