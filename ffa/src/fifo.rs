//! The VFFAFIFO (reference §8.5): a region the driver shares by FF-A handle
//! with two single-producer rings of fixed-size slots — ring A (driver →
//! device) at offset 0, ring B (device → driver) at ring A's `next_offset` —
//! rung by FF-A notifications both ways.
//!
//! Ring header: magic `"VFFAFIFO"` @0, version 0 @8, `message_size` @0x10,
//! `depth` @0x12, `next_offset` @0x18, `read_index` @0x40 (consumer's line),
//! `write_index` @0x80 (producer's line), slots from 0xC0. Empty when read ==
//! write, full when (write + 1) % depth == read. The producer fills a slot,
//! then publishes `write_index` (release); the consumer reads `write_index`
//! (acquire), copies the slot, then advances `read_index` (release).
//!
//! Everything in the region is the driver's: the headers are checked once
//! at FIFO_CONFIGURE, and every index read afterwards is checked against
//! `depth` (a bad one breaks the FIFO, which is counted and stops being
//! served).

use core::sync::atomic::{Ordering, fence};

use crate::window::Window;

const MAGIC: &[u8; 8] = b"VFFAFIFO";
const HEADER: u64 = 0xC0;
const READ_INDEX: u64 = 0x40;
const WRITE_INDEX: u64 = 0x80;
/// Smallest slot (reference §8.5: message_size ≥ 104).
pub const MIN_MESSAGE_SIZE: u16 = 104;

/// Why a FIFO region was refused or broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FifoError {
    /// A header is not a version-0 VFFAFIFO ring of usable geometry inside
    /// the region.
    Layout,
    /// An index the driver wrote is beyond its ring.
    Index,
}

/// One ring's geometry inside the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ring {
    base: u64,
    message_size: u16,
    depth: u16,
}

impl Ring {
    fn read(w: &Window, base: u64) -> Result<Self, FifoError> {
        let mut h = [0u8; 0x20];
        if !w.read(base, &mut h) || &h[..8] != MAGIC || h[8..10] != [0, 0] {
            return Err(FifoError::Layout);
        }
        let message_size = u16::from_le_bytes([h[0x10], h[0x11]]);
        let depth = u16::from_le_bytes([h[0x12], h[0x13]]);
        let ring = Self {
            base,
            message_size,
            depth,
        };
        if message_size < MIN_MESSAGE_SIZE || depth == 0 {
            return Err(FifoError::Layout);
        }
        Ok(ring)
    }

    fn end(&self) -> u64 {
        self.base + HEADER + u64::from(self.depth) * u64::from(self.message_size)
    }

    fn slot(&self, i: u16) -> u64 {
        self.base + HEADER + u64::from(i) * u64::from(self.message_size)
    }

    fn index(&self, w: &Window, at: u64) -> Result<u16, FifoError> {
        let mut b = [0u8; 2];
        if !w.read(self.base + at, &mut b) {
            return Err(FifoError::Index);
        }
        let v = u16::from_le_bytes(b);
        if v >= self.depth {
            return Err(FifoError::Index);
        }
        Ok(v)
    }

    fn set_index(&self, w: &Window, at: u64, v: u16) -> Result<(), FifoError> {
        if w.write(self.base + at, &v.to_le_bytes()) {
            Ok(())
        } else {
            Err(FifoError::Index)
        }
    }
}

/// The device's end of a configured FIFO.
#[derive(Debug)]
pub struct Fifo {
    window: Window,
    handle: u64,
    /// Ring A: the device consumes.
    inbound: Ring,
    /// Ring B: the device produces.
    outbound: Ring,
    /// The driver's doorbell.
    pub driver_notif_id: u16,
}

impl Fifo {
    /// Check both ring headers of the region in `window` (retrieved under
    /// `handle`): magic, version 0, slots of at least 104 bytes, depth ≥ 1,
    /// ring B after ring A, both inside the region.
    pub fn new(window: Window, handle: u64, driver_notif_id: u16) -> Result<Self, FifoError> {
        let a = Ring::read(&window, 0)?;
        let mut next = [0u8; 4];
        if !window.read(0x18, &mut next) {
            return Err(FifoError::Layout);
        }
        let b_base = u64::from(u32::from_le_bytes(next));
        if b_base < a.end() || b_base % 64 != 0 {
            return Err(FifoError::Layout);
        }
        let b = Ring::read(&window, b_base)?;
        if b.end() > window.len() as u64 {
            return Err(FifoError::Layout);
        }
        Ok(Self {
            window,
            handle,
            inbound: a,
            outbound: b,
            driver_notif_id,
        })
    }

    /// The region's handle and window (to give back).
    pub fn release(self) -> (u64, Window) {
        (self.handle, self.window)
    }

    /// The next frame the driver enqueued, into `out` (its msg_size bytes,
    /// at most the slot): its length, or `None` when ring A is empty.
    pub fn pop(&self, out: &mut [u8]) -> Result<Option<usize>, FifoError> {
        let r = &self.inbound;
        let write = r.index(&self.window, WRITE_INDEX)?;
        fence(Ordering::Acquire);
        let read = r.index(&self.window, READ_INDEX)?;
        if read == write {
            return Ok(None);
        }
        let n = usize::from(r.message_size).min(out.len());
        if !self.window.read(r.slot(read), &mut out[..n]) {
            return Err(FifoError::Index);
        }
        fence(Ordering::Release);
        r.set_index(&self.window, READ_INDEX, (read + 1) % r.depth)?;
        Ok(Some(n))
    }

    /// Enqueue `frame` on ring B: false when it is full (the caller keeps
    /// the frame for later).
    pub fn push(&self, frame: &[u8]) -> Result<bool, FifoError> {
        let r = &self.outbound;
        let write = r.index(&self.window, WRITE_INDEX)?;
        let read = r.index(&self.window, READ_INDEX)?;
        fence(Ordering::Acquire);
        if (write + 1) % r.depth == read {
            return Ok(false);
        }
        let slot = r.slot(write);
        let n = frame.len().min(usize::from(r.message_size));
        let mut zero = [0u8; 64];
        let mut at = 0u64;
        while at < u64::from(r.message_size) {
            let len = (u64::from(r.message_size) - at).min(64) as usize;
            zero[..len].fill(0);
            if !self.window.write(slot + at, &zero[..len]) {
                return Err(FifoError::Index);
            }
            at += len as u64;
        }
        if !self.window.write(slot, &frame[..n]) {
            return Err(FifoError::Index);
        }
        fence(Ordering::Release);
        r.set_index(&self.window, WRITE_INDEX, (write + 1) % r.depth)?;
        Ok(true)
    }

    /// Slots of ring A (the most frames one doorbell can bring).
    pub fn depth(&self) -> u16 {
        self.inbound.depth
    }
}
