//! The device side of a split virtqueue (virtio 1.2 §2.7), over
//! [`DmaMemory`].
//!
//! Everything in the rings is the driver's and hostile. Two kinds of damage
//! are told apart:
//! * a broken **chain** (a loop, a `next` beyond the table, a nested or
//!   malformed indirect table) fails that request only: [`Chain::broken`]
//!   is set and the device answers it as it answers a bad request;
//! * a broken **ring** (the available index more than a queue ahead, a head
//!   beyond the queue, rings outside memory) is [`QueueError`]: the queue
//!   cannot be trusted, the host sets DEVICE_NEEDS_RESET.

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};

use thiserror::Error;

use crate::memory::{DmaMemory, MemoryError};

/// `VIRTQ_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const DESC_F_INDIRECT: u16 = 4;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Size of one descriptor.
const DESC_SIZE: u64 = 16;

/// One descriptor of a chain (indirect tables already followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Bus address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// `DESC_F_*` bits as the driver set them.
    pub flags: u16,
}

impl Desc {
    /// Device-writable.
    pub fn is_write(&self) -> bool {
        self.flags & DESC_F_WRITE != 0
    }
    /// Another descriptor follows.
    pub fn has_next(&self) -> bool {
        self.flags & DESC_F_NEXT != 0
    }
}

/// A descriptor chain taken from the available ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Head index: what the used ring entry names.
    pub head: u16,
    /// The descriptors, in chain order.
    pub descs: Vec<Desc>,
    /// The chain could not be followed to its end (loop, bad `next`, bad
    /// indirect table); `descs` holds what came before the damage.
    pub broken: bool,
}

/// A ring that can no longer be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum QueueError {
    /// A ring lies (partly) outside the driver's memory.
    #[error("ring access: {0}")]
    Memory(#[from] MemoryError),
    /// A ring address is misaligned (§2.7: 16, 2, 4).
    #[error("ring {0} is misaligned")]
    Misaligned(&'static str),
    /// Queue size 0 or above 32768.
    #[error("queue size {0} is invalid")]
    Size(u32),
    /// The available index ran more than a queue ahead of what was taken.
    #[error("available index {idx} is {pending} entries ahead (queue size {size})")]
    AvailIndex {
        /// The driver's index.
        idx: u16,
        /// Entries it claims are pending.
        pending: u16,
        /// Queue size.
        size: u16,
    },
    /// An available-ring entry names a descriptor beyond the table.
    #[error("head {head} is beyond the queue (size {size})")]
    Head {
        /// The head index read.
        head: u16,
        /// Queue size.
        size: u16,
    },
}

/// One live split virtqueue. Its methods are generic over the memory
/// (`&dyn DmaMemory` works too), so a concrete memory's accesses inline
/// (docs/performance.md, "Split virtqueue").
#[derive(Clone, Debug)]
pub struct SplitQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    next_avail: u16,
    next_used: u16,
    /// `next_used` when the driver was last notified.
    signalled: Option<u16>,
}

impl SplitQueue {
    /// A queue of `size` entries with its three areas at these bus
    /// addresses; checks that they lie in `mem` and are aligned. The indices
    /// start from the used ring's current index (0 after a reset).
    pub fn new<M: DmaMemory + ?Sized>(
        mem: &M,
        size: u32,
        desc: u64,
        avail: u64,
        used: u64,
        event_idx: bool,
    ) -> Result<Self, QueueError> {
        if size == 0 || size > 32768 {
            return Err(QueueError::Size(size));
        }
        let n = u64::from(size);
        for (name, addr, align, len) in [
            ("descriptor table", desc, 16, DESC_SIZE * n),
            ("available ring", avail, 2, 6 + 2 * n),
            ("used ring", used, 4, 6 + 8 * n),
        ] {
            if addr % align != 0 {
                return Err(QueueError::Misaligned(name));
            }
            if !mem.check(addr, len) {
                return Err(QueueError::Memory(MemoryError { addr, len }));
            }
        }
        let used_idx = mem.read_u16(used + 2)?;
        Ok(Self {
            size: size as u16,
            desc,
            avail,
            used,
            event_idx,
            next_avail: used_idx,
            next_used: used_idx,
            signalled: None,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Take the next available chain, if any.
    pub fn pop<M: DmaMemory + ?Sized>(&mut self, mem: &M) -> Result<Option<Chain>, QueueError> {
        let idx = mem.read_u16(self.avail + 2)?;
        // The ring entries the index covers are read after it.
        fence(Ordering::Acquire);
        let pending = idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailIndex {
                idx,
                pending,
                size: self.size,
            });
        }
        let slot = u64::from(self.next_avail % self.size);
        let head = mem.read_u16(self.avail + 4 + 2 * slot)?;
        if head >= self.size {
            return Err(QueueError::Head {
                head,
                size: self.size,
            });
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        if self.event_idx {
            // avail_event: kick us when the driver makes the next one
            // available.
            let at = self.used + 4 + 8 * u64::from(self.size);
            mem.write_u16(at, self.next_avail)?;
        }
        Ok(Some(self.walk(mem, head)))
    }

    /// Follow the chain at `head`: at most a table's worth of descriptors,
    /// one level of indirection.
    fn walk<M: DmaMemory + ?Sized>(&self, mem: &M, head: u16) -> Chain {
        let mut chain = Chain {
            head,
            descs: Vec::new(),
            broken: false,
        };
        let (mut table, mut entries, mut indirect) = (self.desc, u32::from(self.size), false);
        let mut i = u32::from(head);
        let mut seen = 0u32;
        loop {
            let Ok((d, next)) = read_desc(mem, table + DESC_SIZE * u64::from(i)) else {
                chain.broken = true;
                return chain;
            };
            seen += 1;
            if d.flags & DESC_F_INDIRECT != 0 {
                // §2.7.5.3.1: no nested tables, no NEXT with INDIRECT, a
                // whole number of descriptors, at most a queue's worth.
                let n = d.len / DESC_SIZE as u32;
                if indirect
                    || d.has_next()
                    || d.len == 0
                    || d.len % DESC_SIZE as u32 != 0
                    || n > u32::from(self.size)
                {
                    chain.broken = true;
                    return chain;
                }
                (table, entries, indirect) = (d.addr, n, true);
                i = 0;
                seen = 0;
                continue;
            }
            chain.descs.push(d);
            if !d.has_next() {
                return chain;
            }
            i = u32::from(next);
            if i >= entries || seen >= entries {
                // A next beyond the table, or more descriptors than the
                // table holds: a loop.
                chain.broken = true;
                return chain;
            }
        }
    }

    /// Put `head` on the used ring with `len` bytes written.
    pub fn add_used<M: DmaMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        let slot = u64::from(self.next_used % self.size);
        let at = self.used + 4 + 8 * slot;
        let mut entry = [0u8; 8];
        entry[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        entry[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(at, &entry)?;
        // The entry is visible before the index that publishes it.
        fence(Ordering::Release);
        self.next_used = self.next_used.wrapping_add(1);
        mem.write_u16(self.used + 2, self.next_used)?;
        Ok(())
    }

    /// Whether the driver wants to hear about the used entries added since
    /// the last time this returned true (EVENT_IDX or NO_INTERRUPT).
    pub fn needs_notification<M: DmaMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        // The used index is published before the driver's wish is read.
        fence(Ordering::SeqCst);
        let new = self.next_used;
        let notify = if self.event_idx {
            let used_event = mem.read_u16(self.avail + 4 + 2 * u64::from(self.size))?;
            match self.signalled {
                // vring_need_event(): `used_event` lies in (old, new].
                Some(old) => new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old),
                None => true,
            }
        } else {
            mem.read_u16(self.avail)? & AVAIL_F_NO_INTERRUPT == 0
        };
        if notify {
            self.signalled = Some(new);
        }
        Ok(notify)
    }
}

/// One descriptor and its `next` field, read once.
fn read_desc<M: DmaMemory + ?Sized>(mem: &M, at: u64) -> Result<(Desc, u16), MemoryError> {
    let mut raw = [0u8; DESC_SIZE as usize];
    mem.read(at, &mut raw)?;
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&raw[0..8]);
    let desc = Desc {
        addr: u64::from_le_bytes(addr),
        len: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
        flags: u16::from_le_bytes([raw[12], raw[13]]),
    };
    Ok((desc, u16::from_le_bytes([raw[14], raw[15]])))
}

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod tests;
