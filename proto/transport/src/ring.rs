//! Shared-memory message ring: two single-producer/single-consumer rings of
//! fixed-size slots carrying virtio-msg frames between a driver and a device.
//!
//! The region lives in memory shared with an **untrusted** peer (a memfd for
//! the local bus, a granted page under Xen, an FF-A memory area). The code is
//! `no_std`, makes no OS calls and never trusts a value it reads back from the
//! region: geometry is read once at [`attach`] and kept privately, every index
//! the peer writes is range-checked, frames are copied out before anyone
//! parses them, and nothing the peer writes can make this code panic or touch
//! memory outside the region.
//!
//! # Layout (all fields little-endian `u32`, offsets in bytes)
//!
//! ```text
//! header (64 bytes, offset 0)
//!   0  magic        0x4752_4D56 ("VMRG" in memory)
//!   4  version      1
//!   8  header_size  64
//!  12  slot_size    largest frame a slot carries (1..=65536)
//!  16  slots        slots per ring, a power of two (1..=32768)
//!  20  slot_stride  8 + round_up(slot_size, 8)
//!  24  ring_a       offset of ring A (driver -> device), multiple of 64
//!  28  ring_b       offset of ring B (device -> driver), multiple of 64
//!  32  total_size   bytes the layout occupies (<= region length)
//!  36..64           reserved, zero
//!
//! ring (at ring_a / ring_b)
//!   +0    prod      producer index (producer's cache line, rest reserved)
//!  +64    cons      consumer index (consumer's cache line)
//!  +68    flags     consumer flags; bit 0 = NO_KICK ("I am polling")
//! +128    slot[slots], slot_stride bytes each:
//!           +0 len        frame length in bytes
//!           +4 reserved   zero
//!           +8 data[round_up(slot_size, 8)]
//! ring size = round_up(128 + slots * slot_stride, 64)
//! ```
//!
//! [`init`] puts ring A right after the header and ring B right after ring A,
//! so [`required_size`] = `64 + 2 * ring_size`. With `slot_size = 256` and 4
//! slots each way the layout takes 2496 bytes and fits one 4 KiB page.
//!
//! # Indices
//!
//! `prod` and `cons` are free-running `u32` counters; slot `i` lives at
//! `i & (slots - 1)` (hence the power-of-two slot count: the mapping stays
//! continuous across the 2^32 wrap). The ring is empty when `prod == cons`
//! and full when `prod - cons == slots` (wrapping arithmetic). A value of
//! `prod - cons` above `slots` can only come from a broken or hostile peer:
//! [`RingError::Corrupt`].
//!
//! Producer: copy the frame into the slot, store `len`, then store
//! `prod + 1` with **release** ordering. Consumer: load `prod` with
//! **acquire**, copy the frame out, then store `cons + 1` with **release**
//! ordering (the producer loads `cons` with acquire before reusing the slot,
//! so it never overwrites a slot that is still being copied out).
//!
//! Each side keeps its own index privately and only publishes it; it never
//! reads its own index back from shared memory, so the peer can only lie
//! about *its* index, and that lie is bounded by the checks above.
//!
//! # Notification suppression (no lost wake-ups)
//!
//! Each ring has a `flags` word owned by its consumer. `NO_KICK` set means
//! "I am polling this ring, don't ring my doorbell". The protocol is the
//! classic store/fence/load pair on both sides:
//!
//! * Producer ([`Producer::try_push`]): publish `prod` (release), **full
//!   fence**, load `flags`; the peer must be kicked iff `NO_KICK` is clear.
//! * Consumer going to sleep: clear `NO_KICK` ([`Consumer::set_polling`]
//!   with `false`, which issues the **full fence**), then **re-check** the
//!   ring ([`Consumer::try_pop`]); only if it is still empty, block on the
//!   doorbell.
//!
//! Both fences are `SeqCst`, so one of them comes first: either the consumer's
//! re-check sees the new `prod`, or the producer's load sees `NO_KICK` clear
//! and kicks. A consumer that wants to avoid kicks while it drains sets
//! `NO_KICK` when it wakes up and runs the sleep sequence again before
//! blocking. A peer that lies in `flags` only delays its own wake-ups.
//!
//! There is no "space available" notification: a producer that finds the
//! ring full retries (the bus decides for how long).
//!
//! # Trust
//!
//! The constructor of [`SharedRegion`] is `unsafe`: the caller vouches that
//! the memory stays mapped. Everything after that is safe code over volatile
//! and atomic accesses, each bounds- and alignment-checked against the region.
//! Two producers (or two consumers) on the same ring break the SPSC contract;
//! [`init`] and [`attach`] must each be called once per side.

use core::fmt;
use core::ops::Deref;
use core::ptr::NonNull;

#[cfg(not(loom))]
use core::sync::atomic::{AtomicU32, Ordering, fence};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, Ordering, fence};

use thiserror::Error;

/// `"VMRG"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"VMRG");
/// Layout version this code writes and accepts.
pub const VERSION: u32 = 1;
/// Size of the region header.
pub const HEADER_SIZE: usize = 64;
/// Cache-line size the layout is padded to (fixed across architectures so
/// both sides agree on offsets).
pub const CACHE_LINE: usize = 64;
/// Largest slot payload (v2 allows frames up to 65535 bytes).
pub const MAX_SLOT_SIZE: u32 = 65536;
/// Largest slot count per ring.
pub const MAX_SLOTS: u32 = 1 << 15;
/// Consumer flag: "I am polling, don't kick me".
pub const FLAG_NO_KICK: u32 = 1;

// Header field offsets.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_HEADER_SIZE: usize = 8;
const H_SLOT_SIZE: usize = 12;
const H_SLOTS: usize = 16;
const H_STRIDE: usize = 20;
const H_RING_A: usize = 24;
const H_RING_B: usize = 28;
const H_TOTAL: usize = 32;

// Ring field offsets (relative to the ring).
const R_PROD: usize = 0;
const R_CONS: usize = CACHE_LINE;
const R_FLAGS: usize = CACHE_LINE + 4;
const R_SLOTS: usize = 2 * CACHE_LINE;

// Slot field offsets (relative to the slot).
const S_LEN: usize = 0;
const S_DATA: usize = 8;

/// Errors of the shared-memory ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RingError {
    /// No free slot; retry after the consumer made progress.
    #[error("ring full")]
    Full,
    /// The frame does not fit in a slot.
    #[error("frame of {len} bytes exceeds the slot size of {max}")]
    TooLarge { len: usize, max: usize },
    /// The caller's buffer cannot hold the next frame (nothing was consumed).
    #[error("buffer of {cap} bytes too small for a frame of {len}")]
    BufferTooSmall { len: usize, cap: usize },
    /// The peer published an impossible index: it is broken or hostile and
    /// the ring cannot be used any more.
    #[error("ring corrupt: {0}")]
    Corrupt(&'static str),
    /// The parameters given to [`init`] are out of range.
    #[error("invalid ring parameters: {0}")]
    InvalidParams(&'static str),
    /// The region cannot hold the layout.
    #[error("region of {have} bytes too small, need {need}")]
    RegionTooSmall { need: usize, have: usize },
    /// The region does not start on an 8-byte boundary.
    #[error("region not 8-byte aligned")]
    Misaligned,
    /// [`attach`] found no ring header.
    #[error("bad ring magic {0:#010x}")]
    BadMagic(u32),
    /// [`attach`] found a layout version it does not speak.
    #[error("unsupported ring layout version {0}")]
    BadVersion(u32),
    /// [`attach`] found a header whose geometry is inconsistent.
    #[error("bad ring header: {0}")]
    BadHeader(&'static str),
}

/// Geometry chosen by the side that creates the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingParams {
    /// Largest frame a slot carries, in bytes (1..=[`MAX_SLOT_SIZE`]).
    pub slot_size: u32,
    /// Slots per ring, a power of two (1..=[`MAX_SLOTS`]).
    pub slots: u32,
}

impl RingParams {
    /// Check the parameters and compute the layout they produce.
    fn geometry(self) -> Result<Geometry, RingError> {
        if self.slot_size == 0 || self.slot_size > MAX_SLOT_SIZE {
            return Err(RingError::InvalidParams("slot_size out of range"));
        }
        if self.slots == 0 || self.slots > MAX_SLOTS || !self.slots.is_power_of_two() {
            return Err(RingError::InvalidParams(
                "slots must be a power of two in range",
            ));
        }
        // In u64: the limits above keep this far from overflowing u64, and
        // the result must fit the header's u32 offsets (and a 32-bit usize).
        let stride = S_DATA as u64 + u64::from(self.slot_size).div_ceil(8) * 8;
        let ring = (R_SLOTS as u64 + u64::from(self.slots) * stride).div_ceil(CACHE_LINE as u64)
            * CACHE_LINE as u64;
        let total = HEADER_SIZE as u64 + 2 * ring;
        if total > u64::from(u32::MAX) {
            return Err(RingError::InvalidParams("layout exceeds 4 GiB"));
        }
        let to_usize = |v: u64| {
            usize::try_from(v)
                .map_err(|_| RingError::InvalidParams("layout exceeds the address space"))
        };
        let ring = to_usize(ring)?;
        Ok(Geometry {
            params: self,
            stride: to_usize(stride)?,
            ring_size: ring,
            ring_a: HEADER_SIZE,
            ring_b: HEADER_SIZE + ring,
            total: to_usize(total)?,
        })
    }

    /// Bytes the layout for these parameters occupies.
    pub fn required_size(self) -> Result<usize, RingError> {
        self.geometry().map(|g| g.total)
    }
}

/// Bytes a region needs for `slots` slots of `slot_size` bytes in each
/// direction; `usize::MAX` for parameters [`init`] would refuse (so that any
/// size check against it fails).
pub fn required_size(slot_size: u32, slots: u32) -> usize {
    RingParams { slot_size, slots }
        .required_size()
        .unwrap_or(usize::MAX)
}

/// Which end of the region a side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Produces into ring A, consumes ring B.
    Driver,
    /// Produces into ring B, consumes ring A.
    Device,
}

#[derive(Debug, Clone, Copy)]
struct Geometry {
    params: RingParams,
    stride: usize,
    ring_size: usize,
    ring_a: usize,
    ring_b: usize,
    total: usize,
}

/// A view of memory shared with the peer.
///
/// Only bounds- and alignment-checked atomic and volatile accesses go through
/// it, because the peer writes the same bytes concurrently.
pub struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
    /// Loom cannot track atomics that live in raw memory, so under loom each
    /// word the layout accesses atomically gets a loom atomic shadow,
    /// registered by `init`/`attach` (keyed by offset).
    #[cfg(loom)]
    shadow: loom_shadow::Shadow,
}

impl fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: the region is plain memory accessed only through atomics and
// volatile copies (the peer in another address space does the same); the
// `from_raw` contract makes it valid from any thread for the view's lifetime.
unsafe impl Send for SharedRegion {}
// SAFETY: as above; no method hands out references to non-atomic data.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Wrap `len` bytes at `ptr` shared with the peer.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes for as long as
    /// this value, or any [`Producer`]/[`Consumer`] created from it, exists;
    /// the memory must not be accessed by anything in this process other than
    /// those values (the peer on the other side of the mapping may access it
    /// freely: that is what the checks are for).
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        // A null pointer cannot be valid for `len > 0` bytes; turn it into a
        // dangling empty view rather than trusting the caller blindly.
        let (ptr, len) = match NonNull::new(ptr) {
            Some(p) => (p, len),
            None => (NonNull::dangling(), 0),
        };
        SharedRegion {
            ptr,
            len,
            #[cfg(loom)]
            shadow: loom_shadow::Shadow::default(),
        }
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Another view of the same memory (the `from_raw` contract covers it:
    /// it is only ever held by a `Producer` or `Consumer` of this region).
    fn dup(&self) -> Self {
        SharedRegion {
            ptr: self.ptr,
            len: self.len,
            #[cfg(loom)]
            shadow: self.shadow.clone(),
        }
    }

    /// Pointer to `n` bytes at `off`, aligned to `align`, or an error if that
    /// span is not entirely inside the region.
    fn span(&self, off: usize, n: usize, align: usize) -> Result<*mut u8, RingError> {
        let end = off
            .checked_add(n)
            .ok_or(RingError::Corrupt("offset overflow"))?;
        if end > self.len {
            return Err(RingError::Corrupt("access outside the region"));
        }
        // SAFETY: `off + n <= len`, so the result stays inside (or one past
        // the end of) the allocation described by `from_raw`.
        let p = unsafe { self.ptr.as_ptr().add(off) };
        if (p as usize) % align != 0 {
            return Err(RingError::Misaligned);
        }
        Ok(p)
    }

    /// The atomic `u32` at `off`.
    #[cfg(not(loom))]
    fn atomic(&self, off: usize) -> Result<impl Deref<Target = AtomicU32> + '_, RingError> {
        let p = self.span(off, 4, 4)?;
        // SAFETY: `p` is 4-byte aligned and inside the region, which stays
        // valid for `&self`'s lifetime (from_raw contract); all accesses to
        // this word in this process are atomic.
        Ok(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }

    #[cfg(loom)]
    fn atomic(&self, off: usize) -> Result<impl Deref<Target = AtomicU32> + '_, RingError> {
        self.span(off, 4, 4)?;
        self.shadow
            .get(off)
            .ok_or(RingError::Corrupt("no loom shadow for this word"))
    }

    /// Create the loom shadows of every atomic word of the layout.
    #[cfg(loom)]
    fn register_atomics(&self, g: &Geometry) {
        for base in [g.ring_a, g.ring_b] {
            for off in [R_PROD, R_CONS, R_FLAGS] {
                self.shadow.register(base + off);
            }
            for i in 0..g.params.slots as usize {
                self.shadow.register(base + R_SLOTS + i * g.stride + S_LEN);
            }
        }
    }

    #[cfg(not(loom))]
    fn register_atomics(&self, _g: &Geometry) {}

    /// Volatile read of a header word.
    fn read_u32(&self, off: usize) -> Result<u32, RingError> {
        let p = self.span(off, 4, 4)?;
        // SAFETY: in bounds and aligned (checked by `span`); volatile because
        // the peer may write it concurrently.
        Ok(u32::from_le(unsafe { p.cast::<u32>().read_volatile() }))
    }

    /// Volatile write of a header word.
    fn write_u32(&self, off: usize, v: u32) -> Result<(), RingError> {
        let p = self.span(off, 4, 4)?;
        // SAFETY: in bounds and aligned (checked by `span`).
        unsafe { p.cast::<u32>().write_volatile(v.to_le()) };
        Ok(())
    }

    /// Copy `dst.len()` bytes at `off` out of the region.
    fn copy_out(&self, off: usize, dst: &mut [u8]) -> Result<(), RingError> {
        let p = self.span(off, dst.len(), 1)?;
        let mut i = 0;
        // Byte-wise up to an 8-byte boundary, then words, then the tail: all
        // volatile, since the peer may be writing the same bytes.
        while i < dst.len() && (p as usize + i) % 8 != 0 {
            // SAFETY: `i < dst.len()` and the span is in bounds.
            dst[i] = unsafe { p.add(i).read_volatile() };
            i += 1;
        }
        while i + 8 <= dst.len() {
            // SAFETY: in bounds (i + 8 <= n) and 8-byte aligned by the loop above.
            let w = unsafe { p.add(i).cast::<u64>().read_volatile() };
            dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
            i += 8;
        }
        while i < dst.len() {
            // SAFETY: `i < dst.len()` and the span is in bounds.
            dst[i] = unsafe { p.add(i).read_volatile() };
            i += 1;
        }
        Ok(())
    }

    /// Copy `src` into the region at `off`.
    fn copy_in(&self, off: usize, src: &[u8]) -> Result<(), RingError> {
        let p = self.span(off, src.len(), 1)?;
        let mut i = 0;
        while i < src.len() && (p as usize + i) % 8 != 0 {
            // SAFETY: `i < src.len()` and the span is in bounds.
            unsafe { p.add(i).write_volatile(src[i]) };
            i += 1;
        }
        while i + 8 <= src.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&src[i..i + 8]);
            // SAFETY: in bounds (i + 8 <= n) and 8-byte aligned by the loop above.
            unsafe { p.add(i).cast::<u64>().write_volatile(u64::from_ne_bytes(w)) };
            i += 8;
        }
        while i < src.len() {
            // SAFETY: `i < src.len()` and the span is in bounds.
            unsafe { p.add(i).write_volatile(src[i]) };
            i += 1;
        }
        Ok(())
    }

    /// Zero `n` bytes at `off`.
    fn zero(&self, off: usize, n: usize) -> Result<(), RingError> {
        let p = self.span(off, n, 1)?;
        for i in 0..n {
            // SAFETY: `i < n` and the span is in bounds.
            unsafe { p.add(i).write_volatile(0) };
        }
        Ok(())
    }
}

/// One ring as seen by one side, with geometry held privately.
#[derive(Debug)]
struct RingView {
    region: SharedRegion,
    base: usize,
    params: RingParams,
    stride: usize,
}

impl RingView {
    fn new(region: &SharedRegion, base: usize, g: &Geometry) -> Self {
        RingView {
            region: region.dup(),
            base,
            params: g.params,
            stride: g.stride,
        }
    }

    fn prod(&self) -> Result<impl Deref<Target = AtomicU32> + '_, RingError> {
        self.region.atomic(self.base + R_PROD)
    }

    fn cons(&self) -> Result<impl Deref<Target = AtomicU32> + '_, RingError> {
        self.region.atomic(self.base + R_CONS)
    }

    fn flags(&self) -> Result<impl Deref<Target = AtomicU32> + '_, RingError> {
        self.region.atomic(self.base + R_FLAGS)
    }

    /// Offset of the slot that index `idx` maps to.
    fn slot(&self, idx: u32) -> usize {
        let i = (idx & (self.params.slots - 1)) as usize;
        self.base + R_SLOTS + i * self.stride
    }
}

/// The sending end of one ring.
#[derive(Debug)]
pub struct Producer {
    ring: RingView,
    /// Our index; never read back from shared memory.
    prod: u32,
}

/// The receiving end of one ring.
#[derive(Debug)]
pub struct Consumer {
    ring: RingView,
    /// Our index; never read back from shared memory.
    cons: u32,
    dropped: u64,
    polling: bool,
}

// Producer and Consumer hold a `SharedRegion`, which is Send; they are
// deliberately not Sync-shared between threads (each end is single-threaded).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Producer>();
    assert_send::<Consumer>();
};

impl Producer {
    /// Largest frame [`Producer::try_push`] accepts.
    pub fn max_frame(&self) -> usize {
        self.ring.params.slot_size as usize
    }

    /// The ring's geometry.
    pub fn params(&self) -> RingParams {
        self.ring.params
    }

    /// Push one frame. Returns whether the peer must be kicked (its consumer
    /// does not say it is polling).
    pub fn try_push(&mut self, frame: &[u8]) -> Result<bool, RingError> {
        let max = self.max_frame();
        if frame.len() > max {
            return Err(RingError::TooLarge {
                len: frame.len(),
                max,
            });
        }
        // Acquire pairs with the consumer's release of `cons`: its copy-out
        // of the slot we are about to reuse is complete.
        let cons = self.ring.cons()?.load(Ordering::Acquire);
        let used = self.prod.wrapping_sub(cons);
        if used > self.ring.params.slots {
            return Err(RingError::Corrupt("consumer index ahead of producer"));
        }
        if used == self.ring.params.slots {
            return Err(RingError::Full);
        }
        let slot = self.ring.slot(self.prod);
        self.ring.region.copy_in(slot + S_DATA, frame)?;
        // The length is atomic so that loom sees the hand-off; relaxed is
        // enough, the release store of `prod` below orders it.
        let len = u32::try_from(frame.len()).map_err(|_| RingError::TooLarge {
            len: frame.len(),
            max,
        })?;
        self.ring
            .region
            .atomic(slot + S_LEN)?
            .store(len, Ordering::Relaxed);
        self.prod = self.prod.wrapping_add(1);
        self.ring.prod()?.store(self.prod, Ordering::Release);
        // Full fence between publishing `prod` and reading the consumer's
        // flags: pairs with the fence in `Consumer::set_polling(false)`.
        fence(Ordering::SeqCst);
        let flags = self.ring.flags()?.load(Ordering::Relaxed);
        Ok(flags & FLAG_NO_KICK == 0)
    }
}

impl Consumer {
    /// Largest frame the peer may push.
    pub fn max_frame(&self) -> usize {
        self.ring.params.slot_size as usize
    }

    /// The ring's geometry.
    pub fn params(&self) -> RingParams {
        self.ring.params
    }

    /// Frames dropped so far because their slot length was out of range.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether this consumer currently tells the producer not to kick it.
    pub fn is_polling(&self) -> bool {
        self.polling
    }

    /// Tell the producer whether it needs to kick us.
    ///
    /// `set_polling(false)` is the first half of going to sleep: it clears
    /// `NO_KICK` and issues a full fence; the caller **must** then call
    /// [`Consumer::try_pop`] once more and only block on the doorbell if that
    /// finds the ring empty. See the module docs.
    pub fn set_polling(&mut self, polling: bool) {
        self.polling = polling;
        let v = if polling { FLAG_NO_KICK } else { 0 };
        // The flags word was bounds-checked at attach; if this ever failed,
        // the producer keeps kicking, which is safe.
        if let Ok(flags) = self.ring.flags() {
            flags.store(v, Ordering::Relaxed);
        }
        if !polling {
            // Pairs with the fence in `Producer::try_push`.
            fence(Ordering::SeqCst);
        }
    }

    /// Pop one frame into `buf`. Returns its length, or `None` if the ring was
    /// empty. Slots whose length is out of range are dropped and counted; the
    /// frame bytes are copied out of shared memory before this returns.
    pub fn try_pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        // Acquire pairs with the producer's release of `prod`: the slot
        // contents are visible.
        let prod = self.ring.prod()?.load(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.cons);
        if avail > self.ring.params.slots {
            return Err(RingError::Corrupt("producer index out of range"));
        }
        // Bounded by the snapshot: a peer flooding bad slots cannot keep us
        // here. Frames pushed after the snapshot are found by the next call.
        for _ in 0..avail {
            let slot = self.ring.slot(self.cons);
            let len = self
                .ring
                .region
                .atomic(slot + S_LEN)?
                .load(Ordering::Relaxed) as usize;
            if len > self.max_frame() {
                self.dropped += 1;
                self.advance()?;
                continue;
            }
            let Some(dst) = buf.get_mut(..len) else {
                return Err(RingError::BufferTooSmall {
                    len,
                    cap: buf.len(),
                });
            };
            self.ring.region.copy_out(slot + S_DATA, dst)?;
            self.advance()?;
            return Ok(Some(len));
        }
        Ok(None)
    }

    fn advance(&mut self) -> Result<(), RingError> {
        self.cons = self.cons.wrapping_add(1);
        // Release: our copy-out of the slot happens before the producer may
        // reuse it.
        self.ring.cons()?.store(self.cons, Ordering::Release);
        Ok(())
    }
}

fn check_region(region: &SharedRegion) -> Result<(), RingError> {
    if region.len > 0 && region.ptr.as_ptr() as usize % 8 != 0 {
        return Err(RingError::Misaligned);
    }
    Ok(())
}

/// Lay out a fresh region (driver side) and return the driver's ends: the
/// producer of ring A and the consumer of ring B.
///
/// Must happen before the region is shared with the peer (the header is
/// written with plain volatile stores; the out-of-band hand-over of the
/// region orders it).
pub fn init(region: &SharedRegion, params: RingParams) -> Result<(Producer, Consumer), RingError> {
    check_region(region)?;
    let g = params.geometry()?;
    if g.total > region.len {
        return Err(RingError::RegionTooSmall {
            need: g.total,
            have: region.len,
        });
    }
    region.zero(0, g.total)?;
    region.register_atomics(&g);
    let to_u32 =
        |v: usize| u32::try_from(v).map_err(|_| RingError::InvalidParams("layout too large"));
    region.write_u32(H_MAGIC, MAGIC)?;
    region.write_u32(H_VERSION, VERSION)?;
    region.write_u32(H_HEADER_SIZE, HEADER_SIZE as u32)?;
    region.write_u32(H_SLOT_SIZE, params.slot_size)?;
    region.write_u32(H_SLOTS, params.slots)?;
    region.write_u32(H_STRIDE, to_u32(g.stride)?)?;
    region.write_u32(H_RING_A, to_u32(g.ring_a)?)?;
    region.write_u32(H_RING_B, to_u32(g.ring_b)?)?;
    region.write_u32(H_TOTAL, to_u32(g.total)?)?;
    for base in [g.ring_a, g.ring_b] {
        for off in [R_PROD, R_CONS, R_FLAGS] {
            region.atomic(base + off)?.store(0, Ordering::Relaxed);
        }
    }
    Ok(ends(region, &g, Role::Driver))
}

/// Validate the header of a region laid out by the peer and return this
/// side's ends: for [`Role::Device`] the producer of ring B and the consumer
/// of ring A.
///
/// The header is read once; later changes to it by the peer are ignored.
pub fn attach(region: &SharedRegion, role: Role) -> Result<(Producer, Consumer), RingError> {
    check_region(region)?;
    if region.len < HEADER_SIZE {
        return Err(RingError::RegionTooSmall {
            need: HEADER_SIZE,
            have: region.len,
        });
    }
    let magic = region.read_u32(H_MAGIC)?;
    if magic != MAGIC {
        return Err(RingError::BadMagic(magic));
    }
    let version = region.read_u32(H_VERSION)?;
    if version != VERSION {
        return Err(RingError::BadVersion(version));
    }
    if region.read_u32(H_HEADER_SIZE)? as usize != HEADER_SIZE {
        return Err(RingError::BadHeader("header_size"));
    }
    let params = RingParams {
        slot_size: region.read_u32(H_SLOT_SIZE)?,
        slots: region.read_u32(H_SLOTS)?,
    };
    let mut g = params.geometry().map_err(|e| match e {
        RingError::InvalidParams(what) => RingError::BadHeader(what),
        other => other,
    })?;
    if region.read_u32(H_STRIDE)? as usize != g.stride {
        return Err(RingError::BadHeader("slot_stride does not match slot_size"));
    }
    // The creator may place the rings anywhere that is aligned, inside the
    // region, clear of the header and of each other.
    let ring_a = region.read_u32(H_RING_A)? as usize;
    let ring_b = region.read_u32(H_RING_B)? as usize;
    let total = region.read_u32(H_TOTAL)? as usize;
    if total > region.len {
        return Err(RingError::RegionTooSmall {
            need: total,
            have: region.len,
        });
    }
    for base in [ring_a, ring_b] {
        if base % CACHE_LINE != 0 {
            return Err(RingError::BadHeader("ring offset not cache-line aligned"));
        }
        if base < HEADER_SIZE {
            return Err(RingError::BadHeader("ring overlaps the header"));
        }
        match base.checked_add(g.ring_size) {
            Some(end) if end <= total => {}
            _ => return Err(RingError::BadHeader("ring extends past total_size")),
        }
    }
    let (lo, hi) = if ring_a <= ring_b {
        (ring_a, ring_b)
    } else {
        (ring_b, ring_a)
    };
    if lo + g.ring_size > hi {
        return Err(RingError::BadHeader("rings overlap"));
    }
    g.ring_a = ring_a;
    g.ring_b = ring_b;
    g.total = total;
    region.register_atomics(&g);
    Ok(ends(region, &g, role))
}

fn ends(region: &SharedRegion, g: &Geometry, role: Role) -> (Producer, Consumer) {
    let (out, inc) = match role {
        Role::Driver => (g.ring_a, g.ring_b),
        Role::Device => (g.ring_b, g.ring_a),
    };
    let out = RingView::new(region, out, g);
    let inc = RingView::new(region, inc, g);
    // Start from whatever the peer's view of our indices is: a peer that
    // already pushed before we attached is not lost. A lie here is caught by
    // the range checks on the first push/pop.
    let prod = out.prod().map_or(0, |a| a.load(Ordering::Acquire));
    let cons = inc.cons().map_or(0, |a| a.load(Ordering::Acquire));
    let mut consumer = Consumer {
        ring: inc,
        cons,
        dropped: 0,
        polling: false,
    };
    // A previous incarnation of this side may have left NO_KICK set; start
    // out asking to be kicked so no wake-up is lost.
    consumer.set_polling(false);
    (Producer { ring: out, prod }, consumer)
}

#[cfg(loom)]
mod loom_shadow {
    //! Loom atomics standing in for the words of the shared region.
    extern crate std;

    use super::AtomicU32;
    use alloc::collections::BTreeMap;
    use alloc::sync::Arc;
    use std::sync::Mutex;

    /// Offset -> loom atomic. The std mutex is bookkeeping only: loom runs
    /// its threads on one OS thread and never switches inside it.
    #[derive(Debug, Default, Clone)]
    pub(super) struct Shadow(Arc<Mutex<BTreeMap<usize, Arc<AtomicU32>>>>);

    impl Shadow {
        pub(super) fn register(&self, off: usize) {
            if let Ok(mut m) = self.0.lock() {
                m.entry(off).or_insert_with(|| Arc::new(AtomicU32::new(0)));
            }
        }

        pub(super) fn get(&self, off: usize) -> Option<Arc<AtomicU32>> {
            self.0.lock().ok()?.get(&off).cloned()
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use super::*;
    use alloc::collections::VecDeque;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// 8-aligned backing memory standing in for a shared page.
    struct Mem {
        words: Vec<u64>,
        len: usize,
    }

    impl Mem {
        fn new(len: usize) -> Self {
            Mem {
                words: vec![0; len.div_ceil(8)],
                len,
            }
        }

        fn region(&mut self) -> SharedRegion {
            // SAFETY: the vector outlives every view made in these tests and
            // is only touched through them.
            unsafe { SharedRegion::from_raw(self.words.as_mut_ptr().cast(), self.len) }
        }
    }

    const SMALL: RingParams = RingParams {
        slot_size: 16,
        slots: 4,
    };

    fn pair(params: RingParams) -> (Mem, SharedRegion) {
        let mut mem = Mem::new(params.required_size().expect("valid params"));
        let r = mem.region();
        (mem, r)
    }

    fn ring_a(r: &SharedRegion) -> usize {
        r.read_u32(H_RING_A).expect("header") as usize
    }

    fn ring_b(r: &SharedRegion) -> usize {
        r.read_u32(H_RING_B).expect("header") as usize
    }

    #[test]
    fn ring_sizes_fit_a_page() {
        assert_eq!(required_size(256, 4), 2496);
        assert_eq!(required_size(264, 4), 2496);
        assert!(required_size(256, 4) <= 4096);
        assert_eq!(required_size(0, 4), usize::MAX);
        assert_eq!(required_size(16, 3), usize::MAX);
        assert_eq!(required_size(MAX_SLOT_SIZE + 1, 1), usize::MAX);
        assert_eq!(required_size(16, MAX_SLOTS * 2), usize::MAX);
        // Geometries whose offsets would not fit the u32 header are refused.
        assert_eq!(required_size(MAX_SLOT_SIZE, MAX_SLOTS), usize::MAX);
        assert!(required_size(MAX_SLOT_SIZE, MAX_SLOTS / 2) < u32::MAX as usize);
    }

    #[test]
    fn ring_frames_both_ways() {
        let (_mem, r) = pair(SMALL);
        let (mut dp, mut dc) = init(&r, SMALL).expect("init");
        let (mut vp, mut vc) = attach(&r, Role::Device).expect("attach");
        assert_eq!(vp.params(), SMALL);
        assert_eq!(vc.max_frame(), 16);
        let mut buf = [0u8; 16];

        assert_eq!(vc.try_pop(&mut buf), Ok(None));
        assert_eq!(dp.try_push(b"hello"), Ok(true));
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(5)));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(vc.try_pop(&mut buf), Ok(None));

        assert_eq!(vp.try_push(b"world!"), Ok(true));
        assert_eq!(dc.try_pop(&mut buf), Ok(Some(6)));
        assert_eq!(&buf[..6], b"world!");

        // Zero-length and exactly-slot-sized frames.
        assert_eq!(dp.try_push(&[]), Ok(true));
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(0)));
        assert_eq!(dp.try_push(&[7; 16]), Ok(true));
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(16)));
        assert_eq!(buf, [7; 16]);
    }

    #[test]
    fn ring_full_and_too_large() {
        let (_mem, r) = pair(SMALL);
        let (mut dp, _dc) = init(&r, SMALL).expect("init");
        let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
        assert_eq!(
            dp.try_push(&[0; 17]),
            Err(RingError::TooLarge { len: 17, max: 16 })
        );
        for i in 0..4u8 {
            assert!(dp.try_push(&[i]).is_ok());
        }
        assert_eq!(dp.try_push(&[9]), Err(RingError::Full));
        let mut buf = [0u8; 16];
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(1)));
        assert_eq!(buf[0], 0);
        assert!(dp.try_push(&[4]).is_ok());
        for i in 1..5u8 {
            assert_eq!(vc.try_pop(&mut buf), Ok(Some(1)));
            assert_eq!(buf[0], i);
        }
        assert_eq!(vc.try_pop(&mut buf), Ok(None));
    }

    #[test]
    fn ring_small_buffer_does_not_consume() {
        let (_mem, r) = pair(SMALL);
        let (mut dp, _dc) = init(&r, SMALL).expect("init");
        let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
        dp.try_push(b"0123456789").expect("push");
        let mut small = [0u8; 4];
        assert_eq!(
            vc.try_pop(&mut small),
            Err(RingError::BufferTooSmall { len: 10, cap: 4 })
        );
        let mut buf = [0u8; 16];
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(10)));
        assert_eq!(&buf[..10], b"0123456789");
    }

    #[test]
    fn ring_notification_suppression() {
        let (_mem, r) = pair(SMALL);
        let (mut dp, _dc) = init(&r, SMALL).expect("init");
        let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
        let mut buf = [0u8; 16];
        assert!(!vc.is_polling());
        assert_eq!(dp.try_push(b"a"), Ok(true));
        vc.set_polling(true);
        assert!(vc.is_polling());
        assert_eq!(dp.try_push(b"b"), Ok(false));
        // Going to sleep: clear the flag, then re-check before blocking.
        vc.set_polling(false);
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(1)));
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(1)));
        assert_eq!(vc.try_pop(&mut buf), Ok(None));
        assert_eq!(dp.try_push(b"c"), Ok(true));
    }

    #[test]
    fn ring_attach_resets_stale_polling_flag() {
        let (_mem, r) = pair(SMALL);
        let (mut dp, _dc) = init(&r, SMALL).expect("init");
        let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
        vc.set_polling(true);
        // A restarted device (fresh attach) must be kicked again.
        let (_vp, _vc) = attach(&r, Role::Device).expect("re-attach");
        assert_eq!(dp.try_push(b"x"), Ok(true));
    }

    #[test]
    fn ring_attach_as_driver_sees_same_rings() {
        let (_mem, r) = pair(SMALL);
        let (_dp, _dc) = init(&r, SMALL).expect("init");
        let (mut vp, mut vc) = attach(&r, Role::Device).expect("attach");
        let (mut dp2, mut dc2) = attach(&r, Role::Driver).expect("attach as driver");
        let mut buf = [0u8; 16];
        dp2.try_push(b"d2v").expect("push");
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(3)));
        vp.try_push(b"v2d!").expect("push");
        assert_eq!(dc2.try_pop(&mut buf), Ok(Some(4)));
    }

    #[test]
    fn ring_init_rejects_bad_params_and_regions() {
        let (_mem, r) = pair(SMALL);
        assert!(matches!(
            init(
                &r,
                RingParams {
                    slot_size: 0,
                    slots: 4
                }
            ),
            Err(RingError::InvalidParams(_))
        ));
        assert!(matches!(
            init(
                &r,
                RingParams {
                    slot_size: 16,
                    slots: 6
                }
            ),
            Err(RingError::InvalidParams(_))
        ));
        assert!(matches!(
            init(
                &r,
                RingParams {
                    slot_size: 16,
                    slots: 0
                }
            ),
            Err(RingError::InvalidParams(_))
        ));
        let need = SMALL.required_size().expect("valid");
        let mut small = Mem::new(need - 8);
        let sr = small.region();
        assert_eq!(
            init(&sr, SMALL).err(),
            Some(RingError::RegionTooSmall {
                need,
                have: need - 8
            })
        );
        // A region starting 4 bytes into an 8-aligned buffer.
        let mut mem = Mem::new(need + 8);
        // SAFETY: in bounds of `mem`, which outlives the view.
        let mis =
            unsafe { SharedRegion::from_raw(mem.words.as_mut_ptr().cast::<u8>().add(4), need) };
        assert_eq!(init(&mis, SMALL).err(), Some(RingError::Misaligned));
        assert_eq!(
            attach(&mis, Role::Device).err(),
            Some(RingError::Misaligned)
        );
        // A null pointer becomes an empty view.
        // SAFETY: len 0 after normalisation; nothing is accessed.
        let null = unsafe { SharedRegion::from_raw(core::ptr::null_mut(), 4096) };
        assert!(null.is_empty());
        assert!(matches!(
            attach(&null, Role::Device),
            Err(RingError::RegionTooSmall { .. })
        ));
    }

    #[test]
    fn ring_attach_validates_header() {
        let cases: [(usize, u32, RingError); 6] = [
            (H_MAGIC, 0xdead_beef, RingError::BadMagic(0xdead_beef)),
            (H_VERSION, 2, RingError::BadVersion(2)),
            (H_HEADER_SIZE, 128, RingError::BadHeader("header_size")),
            (
                H_STRIDE,
                32,
                RingError::BadHeader("slot_stride does not match slot_size"),
            ),
            (
                H_RING_A,
                HEADER_SIZE as u32 + 4,
                RingError::BadHeader("ring offset not cache-line aligned"),
            ),
            (
                H_RING_A,
                0,
                RingError::BadHeader("ring overlaps the header"),
            ),
        ];
        for (off, val, want) in cases {
            let (_mem, r) = pair(SMALL);
            init(&r, SMALL).expect("init");
            r.write_u32(off, val).expect("poke");
            assert_eq!(attach(&r, Role::Device).err(), Some(want), "field at {off}");
        }

        let (_mem, r) = pair(SMALL);
        init(&r, SMALL).expect("init");
        let b = ring_b(&r) as u32;
        r.write_u32(H_RING_A, b).expect("poke");
        assert_eq!(
            attach(&r, Role::Device).err(),
            Some(RingError::BadHeader("rings overlap"))
        );
        r.write_u32(H_RING_A, HEADER_SIZE as u32).expect("poke");
        r.write_u32(H_RING_B, u32::MAX - 63).expect("poke");
        assert_eq!(
            attach(&r, Role::Device).err(),
            Some(RingError::BadHeader("ring extends past total_size"))
        );
        r.write_u32(H_TOTAL, u32::MAX).expect("poke");
        assert!(matches!(
            attach(&r, Role::Device),
            Err(RingError::RegionTooSmall { .. })
        ));

        for (slot_size, slots) in [
            (0, 4),
            (16, 3),
            (16, 0),
            (MAX_SLOT_SIZE + 1, 4),
            (16, 1 << 16),
        ] {
            let (_mem, r) = pair(SMALL);
            init(&r, SMALL).expect("init");
            r.write_u32(H_SLOT_SIZE, slot_size).expect("poke");
            r.write_u32(H_SLOTS, slots).expect("poke");
            assert!(
                matches!(attach(&r, Role::Device), Err(RingError::BadHeader(_))),
                "slot_size {slot_size} slots {slots}"
            );
        }

        // A header claiming more slots than the region holds.
        let (_mem, r) = pair(SMALL);
        init(&r, SMALL).expect("init");
        r.write_u32(H_SLOTS, 1024).expect("poke");
        assert!(attach(&r, Role::Device).is_err());

        // Rings may be placed elsewhere (here swapped) as long as they fit.
        let (_mem, r) = pair(SMALL);
        init(&r, SMALL).expect("init");
        let (a, b) = (ring_a(&r) as u32, ring_b(&r) as u32);
        r.write_u32(H_RING_A, b).expect("poke");
        r.write_u32(H_RING_B, a).expect("poke");
        assert!(attach(&r, Role::Device).is_ok());

        // Too short to even hold a header.
        let mut tiny = Mem::new(32);
        let tr = tiny.region();
        assert_eq!(
            attach(&tr, Role::Device).err(),
            Some(RingError::RegionTooSmall { need: 64, have: 32 })
        );
    }

    #[test]
    fn ring_attach_ignores_later_header_changes() {
        let (_mem, r) = pair(SMALL);
        init(&r, SMALL).expect("init");
        let (mut vp, _vc) = attach(&r, Role::Device).expect("attach");
        r.write_u32(H_SLOT_SIZE, MAX_SLOT_SIZE).expect("poke");
        r.write_u32(H_SLOTS, MAX_SLOTS).expect("poke");
        assert_eq!(vp.max_frame(), 16);
        assert!(matches!(
            vp.try_push(&[0; 17]),
            Err(RingError::TooLarge { .. })
        ));
    }

    #[test]
    fn ring_hostile_producer_index() {
        let (_mem, r) = pair(SMALL);
        init(&r, SMALL).expect("init");
        let a = ring_a(&r);
        let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
        let mut buf = [0u8; 16];
        for bad in [5u32, u32::MAX, 0x8000_0000] {
            r.write_u32(a + R_PROD, bad).expect("poke");
            assert!(
                matches!(vc.try_pop(&mut buf), Err(RingError::Corrupt(_))),
                "prod {bad}"
            );
        }
        // Back to a sane value: the consumer carries on.
        r.write_u32(a + R_PROD, 0).expect("poke");
        assert_eq!(vc.try_pop(&mut buf), Ok(None));
    }

    #[test]
    fn ring_hostile_consumer_index() {
        let (_mem, r) = pair(SMALL);
        init(&r, SMALL).expect("init");
        let b = ring_b(&r);
        let (mut vp, _vc) = attach(&r, Role::Device).expect("attach");
        // Consumer claims to have consumed frames never produced.
        r.write_u32(b + R_CONS, 1).expect("poke");
        assert!(matches!(vp.try_push(b"x"), Err(RingError::Corrupt(_))));
        // Consumer claims to be further behind than the ring allows.
        r.write_u32(b + R_CONS, u32::MAX - 8).expect("poke");
        assert!(matches!(vp.try_push(b"x"), Err(RingError::Corrupt(_))));
        r.write_u32(b + R_CONS, 0).expect("poke");
        assert_eq!(vp.try_push(b"x"), Ok(true));
    }

    #[test]
    fn ring_hostile_slot_length_is_dropped() {
        let (_mem, r) = pair(SMALL);
        let (mut dp, _dc) = init(&r, SMALL).expect("init");
        let a = ring_a(&r);
        let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
        dp.try_push(b"bad").expect("push");
        dp.try_push(b"bad2").expect("push");
        dp.try_push(b"good").expect("push");
        let stride = 8 + 16;
        r.write_u32(a + R_SLOTS + S_LEN, 17).expect("poke");
        r.write_u32(a + R_SLOTS + stride + S_LEN, u32::MAX)
            .expect("poke");
        let mut buf = [0u8; 16];
        assert_eq!(vc.try_pop(&mut buf), Ok(Some(4)));
        assert_eq!(&buf[..4], b"good");
        assert_eq!(vc.dropped(), 2);
        assert_eq!(vc.try_pop(&mut buf), Ok(None));
        // The dropped slots were released to the producer.
        for _ in 0..4 {
            dp.try_push(b"z").expect("space freed");
        }
    }

    #[test]
    fn ring_indices_wrap() {
        let (_mem, r) = pair(SMALL);
        init(&r, SMALL).expect("init");
        let a = ring_a(&r);
        let start = u32::MAX - 5;
        r.write_u32(a + R_PROD, start).expect("poke");
        r.write_u32(a + R_CONS, start).expect("poke");
        let (mut dp, _dc) = attach(&r, Role::Driver).expect("attach");
        let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
        let mut buf = [0u8; 16];
        for i in 0..40u32 {
            let f = i.to_le_bytes();
            dp.try_push(&f).expect("push");
            if i % 3 == 0 {
                dp.try_push(&f).expect("push");
                assert_eq!(vc.try_pop(&mut buf), Ok(Some(4)));
            }
            assert_eq!(vc.try_pop(&mut buf), Ok(Some(4)));
            assert_eq!(&buf[..4], &f);
        }
        assert_eq!(vc.try_pop(&mut buf), Ok(None));
    }

    #[test]
    fn ring_two_threads_with_doorbell() {
        use std::sync::{Condvar, Mutex};
        let frames: u32 = if cfg!(miri) { 40 } else { 20_000 };
        let (_mem, r) = pair(SMALL);
        let (mut dp, _dc) = init(&r, SMALL).expect("init");
        let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
        let bell = (Mutex::new(false), Condvar::new());
        std::thread::scope(|s| {
            let bell = &bell;
            s.spawn(move || {
                let mut i = 0u32;
                while i < frames {
                    let len = (i % 17) as usize;
                    let mut f = [0u8; 16];
                    f[..len.min(4)].copy_from_slice(&i.to_le_bytes()[..len.min(4)]);
                    match dp.try_push(&f[..len.min(16)]) {
                        Ok(kick) => {
                            if kick {
                                *bell.0.lock().expect("lock") = true;
                                bell.1.notify_one();
                            }
                            i += 1;
                        }
                        Err(RingError::Full) => std::thread::yield_now(),
                        Err(e) => panic!("push: {e}"),
                    }
                }
            });
            let mut buf = [0u8; 16];
            let mut next = 0u32;
            vc.set_polling(true);
            while next < frames {
                if let Some(n) = vc.try_pop(&mut buf).expect("pop") {
                    let want = (next % 17) as usize;
                    assert_eq!(n, want.min(16));
                    let mut f = [0u8; 4];
                    f[..n.min(4)].copy_from_slice(&next.to_le_bytes()[..n.min(4)]);
                    assert_eq!(&buf[..n.min(4)], &f[..n.min(4)]);
                    next += 1;
                    continue;
                }
                // Sleep protocol: clear flag (+fence), re-check, then block.
                vc.set_polling(false);
                if vc.try_pop(&mut buf).expect("pop").is_some() {
                    // Re-handle it through the normal path next time round.
                    panic_free_requeue(&mut next, &buf, frames);
                    vc.set_polling(true);
                    continue;
                }
                let mut rung = bell.0.lock().expect("lock");
                while !*rung {
                    rung = bell.1.wait(rung).expect("wait");
                }
                *rung = false;
                drop(rung);
                vc.set_polling(true);
            }
        });
        assert_eq!(vc.dropped(), 0);
    }

    /// The re-check in the sleep protocol popped a frame: check and count it.
    fn panic_free_requeue(next: &mut u32, buf: &[u8], frames: u32) {
        assert!(*next < frames);
        let n = ((*next % 17) as usize).min(4);
        assert_eq!(&buf[..n], &next.to_le_bytes()[..n]);
        *next += 1;
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize, u8),
        Pop,
        Poll(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..=20, any::<u8>()).prop_map(|(l, b)| Op::Push(l, b)),
            4 => Just(Op::Pop),
            1 => any::<bool>().prop_map(Op::Poll),
        ]
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: if cfg!(miri) { 8 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn ring_model_push_pop(ops in proptest::collection::vec(op(), 0..200), slots_log in 0u32..4) {
            let params = RingParams { slot_size: 16, slots: 1 << slots_log };
            let (_mem, r) = pair(params);
            let (mut dp, _dc) = init(&r, params).expect("init");
            let (_vp, mut vc) = attach(&r, Role::Device).expect("attach");
            let mut model: VecDeque<Vec<u8>> = VecDeque::new();
            let mut buf = [0u8; 16];
            for op in ops {
                match op {
                    Op::Push(len, b) => {
                        let frame = vec![b; len];
                        let got = dp.try_push(&frame);
                        if len > 16 {
                            prop_assert_eq!(got, Err(RingError::TooLarge { len, max: 16 }));
                        } else if model.len() == params.slots as usize {
                            prop_assert_eq!(got, Err(RingError::Full));
                        } else {
                            prop_assert_eq!(got, Ok(!vc.is_polling()));
                            model.push_back(frame);
                        }
                    }
                    Op::Pop => {
                        let got = vc.try_pop(&mut buf).expect("pop");
                        match model.pop_front() {
                            None => prop_assert_eq!(got, None),
                            Some(f) => {
                                prop_assert_eq!(got, Some(f.len()));
                                prop_assert_eq!(&buf[..f.len()], &f[..]);
                            }
                        }
                    }
                    Op::Poll(p) => vc.set_polling(p),
                }
            }
            prop_assert_eq!(vc.dropped(), 0);
        }

        #[test]
        fn ring_hostile_header_never_panics(
            header in proptest::collection::vec(any::<u32>(), 9),
            keep in proptest::collection::vec(any::<bool>(), 9),
        ) {
            let (_mem, r) = pair(SMALL);
            init(&r, SMALL).expect("init");
            for (i, (v, k)) in header.iter().zip(&keep).enumerate() {
                if !k {
                    r.write_u32(i * 4, *v).expect("poke");
                }
            }
            if let Ok((mut p, mut c)) = attach(&r, Role::Device) {
                let mut buf = [0u8; 16];
                let _ = p.try_push(b"abc");
                let _ = c.try_pop(&mut buf);
            }
        }

        #[test]
        fn ring_hostile_writes_never_panic(
            pokes in proptest::collection::vec((0usize..SMALL_TOTAL / 4, any::<u32>(), any::<bool>()), 0..40),
        ) {
            let (_mem, r) = pair(SMALL);
            let (mut dp, mut dc) = init(&r, SMALL).expect("init");
            let (mut vp, mut vc) = attach(&r, Role::Device).expect("attach");
            let mut buf = [0u8; 16];
            for (word, val, small_val) in pokes {
                // Small values hit the interesting index/length ranges.
                let v = if small_val { val % 40 } else { val };
                // The peer scribbles anywhere but the header (which is only
                // read at attach, see ring_attach_ignores_later_header_changes).
                if word * 4 >= HEADER_SIZE {
                    r.write_u32(word * 4, v).expect("poke");
                }
                for (p, c) in [(&mut dp, &mut vc), (&mut vp, &mut dc)] {
                    match p.try_push(b"frame") {
                        Ok(_) | Err(RingError::Full) | Err(RingError::Corrupt(_)) => {}
                        Err(e) => prop_assert!(false, "push: {e}"),
                    }
                    match c.try_pop(&mut buf) {
                        Ok(Some(n)) => prop_assert!(n <= 16),
                        Ok(None) | Err(RingError::Corrupt(_)) => {}
                        Err(e) => prop_assert!(false, "pop: {e}"),
                    }
                }
            }
        }
    }

    const SMALL_TOTAL: usize = 64 + 2 * 256;

    #[test]
    fn ring_small_total_matches() {
        assert_eq!(SMALL.required_size(), Ok(SMALL_TOTAL));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use alloc::vec;
    use loom::sync::{Arc, Condvar, Mutex};

    const P: RingParams = RingParams {
        slot_size: 8,
        slots: 2,
    };

    /// A doorbell like an eventfd: a sticky "rung" bit.
    struct Bell {
        rung: Mutex<bool>,
        cv: Condvar,
    }

    impl Bell {
        fn ring(&self) {
            *self.rung.lock().expect("lock") = true;
            self.cv.notify_one();
        }

        fn wait(&self) {
            let mut rung = self.rung.lock().expect("lock");
            while !*rung {
                rung = self.cv.wait(rung).expect("wait");
            }
            *rung = false;
        }
    }

    /// Producer pushes `n` frames, kicking when told to; the consumer drains
    /// with `NO_KICK` set and runs the sleep protocol before blocking. A lost
    /// wake-up shows up as a loom deadlock; a torn frame as a wrong byte.
    fn run(n: u8, start_polling: bool) {
        let mut model = loom::model::Builder::new();
        // Bounded preemptions keep the run in minutes on two cores; the
        // interesting interleavings (push vs. the sleep sequence) need few.
        if model.preemption_bound.is_none() {
            model.preemption_bound = Some(3);
        }
        model.check(move || {
            let len = P.required_size().expect("params");
            let mut words = vec![0u64; len.div_ceil(8)];
            // SAFETY: `words` outlives both threads (joined below) and is only
            // accessed through the ring.
            let region = unsafe { SharedRegion::from_raw(words.as_mut_ptr().cast(), len) };
            let (mut dp, _dc) = init(&region, P).expect("init");
            let (_vp, mut vc) = attach(&region, Role::Device).expect("attach");
            let bell = Arc::new(Bell {
                rung: Mutex::new(false),
                cv: Condvar::new(),
            });
            let pb = bell.clone();
            let producer = loom::thread::spawn(move || {
                let mut i = 0;
                while i < n {
                    match dp.try_push(&[i; 3]) {
                        Ok(kick) => {
                            if kick {
                                pb.ring();
                            }
                            i += 1;
                        }
                        Err(RingError::Full) => loom::thread::yield_now(),
                        Err(e) => panic!("push: {e}"),
                    }
                }
            });
            let mut buf = [0u8; 8];
            let mut next = 0;
            vc.set_polling(start_polling);
            while next < n {
                match vc.try_pop(&mut buf).expect("pop") {
                    Some(got) => {
                        assert_eq!(got, 3);
                        assert_eq!(&buf[..3], &[next; 3]);
                        next += 1;
                    }
                    None => {
                        vc.set_polling(false);
                        if let Some(got) = vc.try_pop(&mut buf).expect("pop") {
                            assert_eq!(&buf[..got], &[next; 3]);
                            next += 1;
                        } else {
                            bell.wait();
                        }
                        vc.set_polling(true);
                    }
                }
            }
            producer.join().expect("producer");
            // Keep the memory alive until both ends are done with it.
            drop(region);
            drop(words);
        });
    }

    #[test]
    fn ring_loom_no_lost_wakeup() {
        run(2, false);
    }

    #[test]
    fn ring_loom_no_lost_wakeup_polling_start() {
        run(3, true);
    }
}
