//! Driver side of a virtio 1.x split virtqueue in the driver's own guest memory.
//!
//! Layout (core virtio, split virtqueues): descriptor table of 16-byte entries
//! `{addr le64, len le32, flags le16, next le16}` aligned to 16; driver area
//! (avail ring) `{flags, idx, ring[size], used_event}` of le16 aligned to 2;
//! device area (used ring) `{flags, idx, ring[size] of {id le32, len le32},
//! avail_event}` aligned to 4. Each part lives in its own page-aligned block.

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::mem::{AllocError, GuestAllocator};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Avail ring flag: the driver asks not to be notified (no EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks not to be notified (no EVENT_IDX).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// Largest split queue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Split virtqueue errors.
#[derive(Debug, thiserror::Error)]
pub enum VirtqError {
    /// Queue size not a power of two in 1..=32768.
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u32),
    /// An empty chain, or device-readable after device-writable buffers.
    #[error("bad buffer chain: {0}")]
    BadChain(&'static str),
    /// Not enough free descriptors.
    #[error("need {need} descriptors, {free} free")]
    Full {
        /// Needed.
        need: usize,
        /// Free.
        free: usize,
    },
    /// The device published an invalid used entry.
    #[error("device error on queue {queue}: {what}")]
    Device {
        /// Queue index.
        queue: u32,
        /// What is wrong.
        what: String,
    },
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Ring allocation failed.
    #[error(transparent)]
    Alloc(#[from] AllocError),
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// True if the device writes it.
    pub writable: bool,
}

/// A used-ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor index of the chain.
    pub head: u16,
    /// Bytes the device wrote.
    pub len: u32,
}

/// Addresses and size of a queue's three areas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    /// Queue size.
    pub size: u16,
    /// Descriptor table.
    pub desc: GuestAddress,
    /// Driver area (avail ring).
    pub avail: GuestAddress,
    /// Device area (used ring).
    pub used: GuestAddress,
}

impl QueueLayout {
    /// Bytes of the descriptor table.
    pub fn desc_bytes(size: u16) -> u64 {
        16 * u64::from(size)
    }
    /// Bytes of the avail ring (with used_event).
    pub fn avail_bytes(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }
    /// Bytes of the used ring (with avail_event).
    pub fn used_bytes(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }
}

#[derive(Debug, Clone)]
struct Chain {
    descs: Vec<u16>,
    writable: u64,
}

/// A split virtqueue, driver side.
#[derive(Debug)]
pub struct SplitQueue {
    index: u32,
    layout: QueueLayout,
    mem: Arc<GuestMemoryMmap<()>>,
    free: Vec<u16>,
    chains: Vec<Option<Chain>>,
    next_avail: u16,
    last_kicked: u16,
    last_used: u16,
    event_idx: bool,
}

/// `vring_need_event` of the core spec: notify if `event` lies in `[old, new)`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl SplitQueue {
    /// Allocates and zeroes the rings for queue `index` of `size` entries.
    pub fn new(
        index: u32,
        size: u32,
        mem: Arc<GuestMemoryMmap<()>>,
        alloc: &mut GuestAllocator,
        event_idx: bool,
    ) -> Result<Self, VirtqError> {
        if !size.is_power_of_two() || size > u32::from(MAX_QUEUE_SIZE) {
            return Err(VirtqError::BadSize(size));
        }
        let size = size as u16;
        let desc = alloc.alloc(QueueLayout::desc_bytes(size), 16)?;
        let avail = alloc.alloc(QueueLayout::avail_bytes(size), 2)?;
        let used = alloc.alloc(QueueLayout::used_bytes(size), 4)?;
        let layout = QueueLayout {
            size,
            desc,
            avail,
            used,
        };
        // Fresh pages may hold an earlier queue's contents.
        for (a, n) in [
            (desc, QueueLayout::desc_bytes(size)),
            (avail, QueueLayout::avail_bytes(size)),
            (used, QueueLayout::used_bytes(size)),
        ] {
            mem.write_slice(&vec![0u8; n as usize], a)?;
        }
        Ok(SplitQueue {
            index,
            layout,
            mem,
            free: (0..size).rev().collect(),
            chains: vec![None; usize::from(size)],
            next_avail: 0,
            last_kicked: 0,
            last_used: 0,
            event_idx,
        })
    }

    /// Returns the ring memory to the allocator.
    pub fn release(self, alloc: &mut GuestAllocator) -> Result<(), VirtqError> {
        let s = self.layout.size;
        alloc.free(self.layout.desc, QueueLayout::desc_bytes(s))?;
        alloc.free(self.layout.avail, QueueLayout::avail_bytes(s))?;
        alloc.free(self.layout.used, QueueLayout::used_bytes(s))?;
        Ok(())
    }

    /// Queue index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Ring addresses and size.
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Free descriptors.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Chains posted and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.chains.iter().filter(|c| c.is_some()).count()
    }

    /// The avail index the driver published last.
    pub fn avail_idx(&self) -> u16 {
        self.next_avail
    }

    fn avail_ring(&self, i: u16) -> GuestAddress {
        GuestAddress(self.layout.avail.0 + 4 + 2 * u64::from(i % self.layout.size))
    }
    fn used_event_addr(&self) -> GuestAddress {
        GuestAddress(self.layout.avail.0 + 4 + 2 * u64::from(self.layout.size))
    }
    fn avail_event_addr(&self) -> GuestAddress {
        GuestAddress(self.layout.used.0 + 4 + 8 * u64::from(self.layout.size))
    }

    /// Posts a chain (device-readable buffers first) and publishes it in the
    /// avail ring; returns the head index.
    pub fn add(&mut self, bufs: &[Buffer]) -> Result<u16, VirtqError> {
        if bufs.is_empty() {
            return Err(VirtqError::BadChain("empty chain"));
        }
        if bufs.windows(2).any(|w| w[0].writable && !w[1].writable) {
            return Err(VirtqError::BadChain(
                "device-readable buffer after a device-writable one",
            ));
        }
        if bufs.len() > self.free.len() {
            return Err(VirtqError::Full {
                need: bufs.len(),
                free: self.free.len(),
            });
        }
        let descs: Vec<u16> = (0..bufs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, (b, &d)) in bufs.iter().zip(&descs).enumerate() {
            let mut flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = descs.get(i + 1).copied().unwrap_or(0);
            if i + 1 < descs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&b.addr.0.to_le_bytes());
            raw[8..12].copy_from_slice(&b.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&raw, GuestAddress(self.layout.desc.0 + 16 * u64::from(d)))?;
        }
        let head = descs[0];
        let writable = bufs
            .iter()
            .filter(|b| b.writable)
            .map(|b| u64::from(b.len))
            .sum();
        self.chains[usize::from(head)] = Some(Chain { descs, writable });
        self.mem
            .write_slice(&head.to_le_bytes(), self.avail_ring(self.next_avail))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // Release: the descriptors and ring entry must be visible before idx.
        self.mem.store(
            self.next_avail.to_le(),
            GuestAddress(self.layout.avail.0 + 2),
            Ordering::Release,
        )?;
        Ok(head)
    }

    /// Decides whether the device wants a notification for what was published
    /// since the last call (used flags or avail_event with EVENT_IDX).
    pub fn needs_notification(&mut self) -> Result<bool, VirtqError> {
        // Order the avail idx store before reading the device's suppression field.
        fence(Ordering::SeqCst);
        let old = self.last_kicked;
        let new = self.next_avail;
        self.last_kicked = new;
        if old == new {
            return Ok(false);
        }
        if self.event_idx {
            let ev = u16::from_le(self.mem.load(self.avail_event_addr(), Ordering::Acquire)?);
            Ok(need_event(ev, new, old))
        } else {
            let flags = u16::from_le(self.mem.load(self.layout.used, Ordering::Acquire)?);
            Ok(flags & VIRTQ_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Asks the device to notify on the next used buffer (used_event with
    /// EVENT_IDX, otherwise clearing VIRTQ_AVAIL_F_NO_INTERRUPT).
    pub fn enable_notifications(&mut self) -> Result<(), VirtqError> {
        if self.event_idx {
            self.mem.store(
                self.last_used.to_le(),
                self.used_event_addr(),
                Ordering::Release,
            )?;
        } else {
            self.mem.store(0u16, self.layout.avail, Ordering::Release)?;
        }
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Asks the device not to notify (best effort: the device may still do so).
    pub fn disable_notifications(&mut self) -> Result<(), VirtqError> {
        if self.event_idx {
            // Half the index space away: no notification for a long time.
            let far = self.last_used.wrapping_add(0x8000);
            self.mem
                .store(far.to_le(), self.used_event_addr(), Ordering::Release)?;
        } else {
            self.mem.store(
                VIRTQ_AVAIL_F_NO_INTERRUPT.to_le(),
                self.layout.avail,
                Ordering::Release,
            )?;
        }
        Ok(())
    }

    /// True if the device published used entries not yet collected.
    pub fn has_used(&self) -> Result<bool, VirtqError> {
        let idx = u16::from_le(
            self.mem
                .load(GuestAddress(self.layout.used.0 + 2), Ordering::Acquire)?,
        );
        Ok(idx != self.last_used)
    }

    /// The device's used idx as currently published.
    pub fn used_idx(&self) -> Result<u16, VirtqError> {
        Ok(u16::from_le(self.mem.load(
            GuestAddress(self.layout.used.0 + 2),
            Ordering::Acquire,
        )?))
    }

    /// Collects one used entry, frees its chain, and re-arms used_event when
    /// EVENT_IDX is in use.
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>, VirtqError> {
        let idx = self.used_idx()?;
        if idx == self.last_used {
            return Ok(None);
        }
        let dev_err = |what: String| VirtqError::Device {
            queue: self.index,
            what,
        };
        let pending = idx.wrapping_sub(self.last_used);
        if pending > self.layout.size {
            return Err(dev_err(format!(
                "used idx {idx} is {pending} ahead of {} (size {})",
                self.last_used, self.layout.size
            )));
        }
        let slot =
            GuestAddress(self.layout.used.0 + 4 + 8 * u64::from(self.last_used % self.layout.size));
        let mut raw = [0u8; 8];
        self.mem.read_slice(&mut raw, slot)?;
        let id = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let chain = usize::try_from(id)
            .ok()
            .and_then(|i| self.chains.get_mut(i))
            .and_then(Option::take)
            .ok_or_else(|| dev_err(format!("used id {id} is not an outstanding head")))?;
        self.last_used = self.last_used.wrapping_add(1);
        self.free.extend(chain.descs.iter().rev());
        if self.event_idx {
            self.mem.store(
                self.last_used.to_le(),
                self.used_event_addr(),
                Ordering::Release,
            )?;
        }
        if u64::from(len) > chain.writable {
            return Err(dev_err(format!(
                "used len {len} exceeds the {} writable bytes of chain {id}",
                chain.writable
            )));
        }
        Ok(Some(UsedElem {
            head: id as u16,
            len,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(event_idx: bool) -> (Arc<GuestMemoryMmap<()>>, GuestAllocator, SplitQueue) {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem"),
        );
        let mut alloc = GuestAllocator::new(&mem);
        let q = SplitQueue::new(0, 8, Arc::clone(&mem), &mut alloc, event_idx).expect("queue");
        (mem, alloc, q)
    }

    /// Plays the device: completes the next avail entry with `len`.
    fn device_complete(mem: &GuestMemoryMmap<()>, l: QueueLayout, n: u16, len: u32) {
        let head: u16 = mem
            .read_obj(GuestAddress(l.avail.0 + 4 + 2 * u64::from(n % l.size)))
            .expect("read");
        let used_idx: u16 = mem.read_obj(GuestAddress(l.used.0 + 2)).expect("read");
        let slot = GuestAddress(l.used.0 + 4 + 8 * u64::from(used_idx % l.size));
        mem.write_obj(u32::from(head), slot).expect("write");
        mem.write_obj(len, GuestAddress(slot.0 + 4)).expect("write");
        mem.write_obj(used_idx.wrapping_add(1), GuestAddress(l.used.0 + 2))
            .expect("write");
    }

    #[test]
    fn add_writes_descriptors_and_avail() {
        let (mem, _a, mut q) = setup(false);
        let l = q.layout();
        let h = q
            .add(&[
                Buffer {
                    addr: GuestAddress(0x8000),
                    len: 10,
                    writable: false,
                },
                Buffer {
                    addr: GuestAddress(0x9000),
                    len: 20,
                    writable: true,
                },
            ])
            .expect("add");
        let d0 = GuestAddress(l.desc.0 + 16 * u64::from(h));
        assert_eq!(mem.read_obj::<u64>(d0).expect("r"), 0x8000);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(d0.0 + 8)).expect("r"), 10);
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(d0.0 + 12)).expect("r"),
            VIRTQ_DESC_F_NEXT
        );
        let next = mem.read_obj::<u16>(GuestAddress(d0.0 + 14)).expect("r");
        let d1 = GuestAddress(l.desc.0 + 16 * u64::from(next));
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(d1.0 + 12)).expect("r"),
            VIRTQ_DESC_F_WRITE
        );
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(l.avail.0 + 2)).expect("r"),
            1
        );
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(l.avail.0 + 4)).expect("r"),
            h
        );
        assert_eq!(q.num_free(), 6);
        assert!(q.needs_notification().expect("n"));
        assert!(!q.needs_notification().expect("n"), "nothing new since");
        device_complete(&mem, l, 0, 7);
        assert_eq!(
            q.pop_used().expect("pop"),
            Some(UsedElem { head: h, len: 7 })
        );
        assert_eq!(q.pop_used().expect("pop"), None);
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn chain_order_and_capacity() {
        let (_m, _a, mut q) = setup(false);
        let w = Buffer {
            addr: GuestAddress(0x8000),
            len: 1,
            writable: true,
        };
        let r = Buffer {
            writable: false,
            ..w
        };
        assert!(matches!(q.add(&[w, r]), Err(VirtqError::BadChain(_))));
        assert!(matches!(q.add(&[]), Err(VirtqError::BadChain(_))));
        assert!(matches!(q.add(&[w; 9]), Err(VirtqError::Full { .. })));
        q.add(&[w; 8]).expect("exactly full");
    }

    #[test]
    fn no_notify_flag_respected() {
        let (mem, _a, mut q) = setup(false);
        let l = q.layout();
        mem.write_obj(VIRTQ_USED_F_NO_NOTIFY, l.used).expect("w");
        q.add(&[Buffer {
            addr: GuestAddress(0x8000),
            len: 4,
            writable: true,
        }])
        .expect("add");
        assert!(!q.needs_notification().expect("n"));
    }

    #[test]
    fn event_idx_notification_and_used_event() {
        let (mem, _a, mut q) = setup(true);
        let l = q.layout();
        let avail_event = GuestAddress(l.used.0 + 4 + 8 * 8);
        let used_event = GuestAddress(l.avail.0 + 4 + 2 * 8);
        let b = Buffer {
            addr: GuestAddress(0x8000),
            len: 4,
            writable: true,
        };
        // avail_event 0: device wants a kick when idx moves past 0.
        q.add(&[b]).expect("add");
        assert!(q.needs_notification().expect("n"));
        // device says: notify me when idx passes 5
        mem.write_obj(5u16, avail_event).expect("w");
        q.add(&[b]).expect("add");
        assert!(!q.needs_notification().expect("n"));
        for _ in 0..4 {
            q.add(&[b]).expect("add");
        }
        assert!(q.needs_notification().expect("n"), "crossed 5");
        device_complete(&mem, l, 0, 4);
        q.pop_used().expect("pop").expect("elem");
        assert_eq!(
            mem.read_obj::<u16>(used_event).expect("r"),
            1,
            "re-armed for the next entry"
        );
        q.disable_notifications().expect("d");
        assert_eq!(mem.read_obj::<u16>(used_event).expect("r"), 0x8001);
        q.enable_notifications().expect("e");
        assert_eq!(mem.read_obj::<u16>(used_event).expect("r"), 1);
    }

    #[test]
    fn bad_used_entries_detected() {
        let (mem, _a, mut q) = setup(false);
        let l = q.layout();
        q.add(&[Buffer {
            addr: GuestAddress(0x8000),
            len: 4,
            writable: true,
        }])
        .expect("add");
        device_complete(&mem, l, 0, 5);
        assert!(
            matches!(q.pop_used(), Err(VirtqError::Device { .. })),
            "len beyond buffer"
        );
        mem.write_obj(3u16, GuestAddress(l.used.0 + 2)).expect("w");
        assert!(
            matches!(q.pop_used(), Err(VirtqError::Device { .. })),
            "id not outstanding"
        );
        mem.write_obj(100u16, GuestAddress(l.used.0 + 2))
            .expect("w");
        assert!(
            matches!(q.pop_used(), Err(VirtqError::Device { .. })),
            "idx too far ahead"
        );
    }

    #[test]
    fn need_event_wraps() {
        assert!(need_event(0xFFFF, 1, 0xFFFE));
        assert!(!need_event(3, 2, 1));
        assert!(need_event(1, 2, 1));
    }
}
