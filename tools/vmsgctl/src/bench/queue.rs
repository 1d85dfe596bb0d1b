//! `vmsgctl bench queue`: the device side of a split virtqueue, two ways, on
//! the same guest memory in the same run:
//!
//! * **virtio-queue** (rust-vmm), as the std daemon's models drive it: per
//!   pass `disable_notification`, `iter().next()` per chain, `add_used`,
//!   then `enable_notification` and `needs_notification`;
//! * **vmsg-device-core's `SplitQueue`**, as the FF-A partition drives it
//!   (`pop`, `add_used`, `needs_notification`), over the same memory seen
//!   through `vmsg_devices::guest_dma::GuestDma` (what the std daemon would
//!   run were it to switch), and over a byte-wise volatile window like the
//!   partition's (`ffa/src/window.rs`), which leaves vm-memory out.
//!
//! Chain shapes: one descriptor, a three-descriptor blk request (header,
//! data, status), the same three behind an indirect descriptor, and the
//! blk request popped *and* parsed by the shared `blk::request::parse`
//! (the std path converts each descriptor with `core_desc`). Each
//! implementation reads every descriptor of every chain (lengths summed and
//! compared across implementations, so nothing is optimised away).
//!
//! The driver side is this process: the descriptor tables and ring entries
//! are written once; a batch is made available by bumping the available
//! index, popped and returned, again and again. EVENT_IDX is on (Linux
//! negotiates it). Printed: chains per second, median of alternating rounds,
//! and the ratio to virtio-queue.

use std::hint::black_box;
use std::process::ExitCode;
use std::ptr;
use std::time::Instant;

use clap::Args;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmsg_device_core::blk::request::{self, Limits};
use vmsg_device_core::memory::{DmaMemory, MemoryError};
use vmsg_device_core::virtq::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, SplitQueue};
use vmsg_devices::guest_dma::{GuestDma, core_desc};

use crate::AnyError;

/// Options of `vmsgctl bench queue`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Chains popped per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub chains: u64,
    /// Measurements per implementation and shape, alternating between the
    /// implementations; the median is printed.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

const MEM_SIZE: usize = 4 << 20;
const QUEUE_SIZE: u16 = 256;
const DESC: u64 = 0;
const AVAIL: u64 = 0x1_0000;
const USED: u64 = 0x2_0000;
/// Indirect tables, 64 bytes apart.
const TABLES: u64 = 0x3_0000;
/// Request headers, 16 bytes apart.
const HEADERS: u64 = 0x5_0000;
/// Status bytes, one per chain.
const STATUS: u64 = 0x6_0000;
/// The one data buffer every chain names.
const DATA: u64 = 0x10_0000;
const DATA_LEN: u32 = 4096;

/// How a chain is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One device-writable descriptor (an rng request).
    One,
    /// Header, data, status: a 4 KiB blk read.
    Blk,
    /// The blk read behind an indirect descriptor.
    Indirect,
    /// The blk read, popped and parsed as a blk request.
    BlkParsed,
}

impl Shape {
    const ALL: [Shape; 4] = [Shape::One, Shape::Blk, Shape::Indirect, Shape::BlkParsed];

    fn name(self) -> &'static str {
        match self {
            Shape::One => "1 descriptor",
            Shape::Blk => "3 descriptors (blk read)",
            Shape::Indirect => "indirect table of 3",
            Shape::BlkParsed => "3 descriptors + blk request::parse",
        }
    }

    /// Descriptors of the queue's table one chain takes.
    fn table_entries(self) -> u16 {
        match self {
            Shape::One | Shape::Indirect => 1,
            Shape::Blk | Shape::BlkParsed => 3,
        }
    }

    /// Chains made available at once: a power of two, so that a batch
    /// always lands on the same ring slots, and as many as the table holds.
    fn batch(self) -> u16 {
        let fit = QUEUE_SIZE / self.table_entries();
        1 << (15 - fit.leading_zeros())
    }
}

/// Which implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    VirtioQueue,
    CoreOnGuestDma,
    CoreOnWindow,
}

impl Side {
    const ALL: [Side; 3] = [Side::VirtioQueue, Side::CoreOnGuestDma, Side::CoreOnWindow];

    fn name(self) -> &'static str {
        match self {
            Side::VirtioQueue => "virtio-queue (std daemon)",
            Side::CoreOnGuestDma => "core SplitQueue, GuestDma",
            Side::CoreOnWindow => "core SplitQueue, volatile window",
        }
    }
}

/// Guest memory holding a queue of `shape` chains, every ring slot filled.
pub fn guest(shape: Shape) -> Result<GuestMemoryMmap<()>, AnyError> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])?;
    let put = |table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(table + 16 * u64::from(i)))
    };
    let batch = shape.batch();
    for c in 0..batch {
        let head = c * shape.table_entries();
        let header = HEADERS + 16 * u64::from(c);
        // A read (type 0) of sector c.
        let mut h = [0u8; 16];
        h[8..].copy_from_slice(&u64::from(c).to_le_bytes());
        mem.write_slice(&h, GuestAddress(header))?;
        let status = STATUS + u64::from(c);
        match shape {
            Shape::One => put(DESC, head, DATA, 64, DESC_F_WRITE, 0)?,
            Shape::Blk | Shape::BlkParsed => {
                put(DESC, head, header, 16, DESC_F_NEXT, head + 1)?;
                put(
                    DESC,
                    head + 1,
                    DATA,
                    DATA_LEN,
                    DESC_F_NEXT | DESC_F_WRITE,
                    head + 2,
                )?;
                put(DESC, head + 2, status, 1, DESC_F_WRITE, 0)?;
            }
            Shape::Indirect => {
                let table = TABLES + 64 * u64::from(c);
                put(DESC, head, table, 48, DESC_F_INDIRECT, 0)?;
                put(table, 0, header, 16, DESC_F_NEXT, 1)?;
                put(table, 1, DATA, DATA_LEN, DESC_F_NEXT | DESC_F_WRITE, 2)?;
                put(table, 2, status, 1, DESC_F_WRITE, 0)?;
            }
        }
    }
    for slot in 0..QUEUE_SIZE {
        let head = (slot % batch) * shape.table_entries();
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))?;
    }
    Ok(mem)
}

/// The driver makes the next batch available.
fn offer(mem: &GuestMemoryMmap<()>, batch: u16) -> Result<(), AnyError> {
    let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2))?;
    mem.write_obj(idx.wrapping_add(batch), GuestAddress(AVAIL + 2))?;
    Ok(())
}

fn limits() -> Limits {
    Limits {
        capacity: 1 << 20,
        seg_max: 126,
        size_max: 64 << 10,
        max_discard_seg: 0,
        max_discard_sectors: 0,
        max_write_zeroes_seg: 0,
        max_write_zeroes_sectors: 0,
        read_only: false,
        discard: false,
        write_zeroes: false,
    }
}

/// What a run saw: per chain, its head and the sum of its descriptor
/// lengths (or, parsed, the used length the parser gives).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Chains popped.
    pub chains: u64,
    /// Sum over chains of `head * 2^32 + bytes`: differs if any chain was
    /// read differently.
    pub digest: u64,
}

impl Seen {
    fn chain(&mut self, head: u16, bytes: u64) {
        self.chains += 1;
        self.digest = self
            .digest
            .wrapping_add((u64::from(head) << 32).wrapping_add(bytes));
    }
}

/// Pop `batches` batches of `shape` chains with virtio-queue.
fn run_virtio_queue(
    mem: &GuestMemoryMmap<()>,
    shape: Shape,
    batches: u64,
) -> Result<Seen, AnyError> {
    let mut q = Queue::new(QUEUE_SIZE)?;
    q.try_set_size(QUEUE_SIZE)?;
    q.try_set_desc_table_address(GuestAddress(DESC))?;
    q.try_set_avail_ring_address(GuestAddress(AVAIL))?;
    q.try_set_used_ring_address(GuestAddress(USED))?;
    q.set_event_idx(true);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return Err("virtio-queue refuses the layout".into());
    }
    let lim = limits();
    let dma = GuestDma(mem);
    let mut seen = Seen::default();
    for _ in 0..batches {
        offer(mem, shape.batch())?;
        q.disable_notification(mem)?;
        // As the blk model does: a fresh iterator per chain (it lets go of
        // the queue before add_used).
        while let Some(chain) = {
            let mut avail = q.iter(mem)?;
            avail.next()
        } {
            let head = chain.head_index();
            let bytes = if shape == Shape::BlkParsed {
                let parsed = request::parse(chain.map(core_desc), &dma, &lim);
                u64::from(parsed.writable_len)
            } else {
                chain.map(|d| u64::from(d.len())).sum()
            };
            seen.chain(head, bytes);
            q.add_used(mem, head, bytes as u32)?;
        }
        q.enable_notification(mem)?;
        black_box(q.needs_notification(mem)?);
    }
    Ok(seen)
}

/// Pop `batches` batches of `shape` chains with the core queue over `dma`.
fn run_core<M: DmaMemory>(dma: &M, shape: Shape, batches: u64) -> Result<Seen, AnyError> {
    let mut q = SplitQueue::new(dma, u32::from(QUEUE_SIZE), DESC, AVAIL, USED, true)?;
    let lim = limits();
    let mut seen = Seen::default();
    for _ in 0..batches {
        let idx = dma.read_u16(AVAIL + 2)?;
        dma.write(AVAIL + 2, &idx.wrapping_add(shape.batch()).to_le_bytes())?;
        while let Some(chain) = q.pop(dma)? {
            if chain.broken {
                return Err(format!("chain {} is broken", chain.head).into());
            }
            let bytes = if shape == Shape::BlkParsed {
                let parsed = request::parse(chain.descs.iter().copied(), dma, &lim);
                u64::from(parsed.writable_len)
            } else {
                chain.descs.iter().map(|d| u64::from(d.len)).sum()
            };
            seen.chain(chain.head, bytes);
            q.add_used(dma, chain.head, bytes as u32)?;
        }
        black_box(q.needs_notification(dma)?);
    }
    Ok(seen)
}

/// Guest memory through raw pointers, one volatile byte at a time, bounds
/// checked: how the partition's `Window` reaches a shared area.
pub struct VolatileWindow<'a> {
    ptr: *mut u8,
    len: usize,
    _mem: &'a GuestMemoryMmap<()>,
}

impl std::fmt::Debug for VolatileWindow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolatileWindow")
            .field("len", &self.len)
            .finish()
    }
}

impl<'a> VolatileWindow<'a> {
    /// The first `MEM_SIZE` bytes of `mem` (one region at 0).
    pub fn new(mem: &'a GuestMemoryMmap<()>) -> Result<Self, AnyError> {
        let ptr = mem.get_host_address(GuestAddress(0))?;
        if !GuestMemoryBackend::check_range(mem, GuestAddress(0), MEM_SIZE)
            || mem.num_regions() != 1
        {
            return Err("the window needs one region at 0".into());
        }
        Ok(Self {
            ptr,
            len: MEM_SIZE,
            _mem: mem,
        })
    }

    fn range(&self, addr: u64, len: usize) -> Result<usize, MemoryError> {
        let err = MemoryError {
            addr,
            len: len as u64,
        };
        let start = usize::try_from(addr).map_err(|_| err)?;
        match start.checked_add(len) {
            Some(end) if end <= self.len => Ok(start),
            _ => Err(err),
        }
    }
}

impl DmaMemory for VolatileWindow<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let start = self.range(addr, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `start + i < self.len` (checked by `range`), and the
            // region is mapped for `self.len` bytes while `_mem` lives.
            *b = unsafe { ptr::read_volatile(self.ptr.add(start + i)) };
        }
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let start = self.range(addr, data.len())?;
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as in `read`; the mapping is writable.
            unsafe { ptr::write_volatile(self.ptr.add(start + i), b) };
        }
        Ok(())
    }

    fn check(&self, addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|l| self.range(addr, l).is_ok())
    }
}

fn run_side(side: Side, shape: Shape, batches: u64) -> Result<Seen, AnyError> {
    let mem = guest(shape)?;
    match side {
        Side::VirtioQueue => run_virtio_queue(&mem, shape, batches),
        Side::CoreOnGuestDma => run_core(&GuestDma(&mem), shape, batches),
        Side::CoreOnWindow => run_core(&VolatileWindow::new(&mem)?, shape, batches),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Run `vmsgctl bench queue`.
pub fn run(args: &QueueArgs) -> Result<ExitCode, AnyError> {
    let rounds = args.rounds.max(1);
    println!(
        "split virtqueue, device side: pop + add_used on the same guest memory, queue size {QUEUE_SIZE}, EVENT_IDX on; {} chains per measurement, median of {rounds} alternating rounds",
        args.chains
    );
    for shape in Shape::ALL {
        let batches = args.chains.div_ceil(u64::from(shape.batch())).max(1);
        // Warm up, and check the three agree on what they read.
        let reference = run_side(Side::VirtioQueue, shape, 4)?;
        for side in Side::ALL {
            let seen = run_side(side, shape, 4)?;
            if seen != reference {
                return Err(format!(
                    "{}: {} read {seen:?}, virtio-queue {reference:?}",
                    shape.name(),
                    side.name()
                )
                .into());
            }
        }
        let mut rates: [Vec<f64>; 3] = Default::default();
        for _ in 0..rounds {
            for (k, side) in Side::ALL.into_iter().enumerate() {
                let mem = guest(shape)?;
                let window;
                let t = Instant::now();
                let seen = match side {
                    Side::VirtioQueue => run_virtio_queue(&mem, shape, batches)?,
                    Side::CoreOnGuestDma => run_core(&GuestDma(&mem), shape, batches)?,
                    Side::CoreOnWindow => {
                        window = VolatileWindow::new(&mem)?;
                        run_core(&window, shape, batches)?
                    }
                };
                let secs = t.elapsed().as_secs_f64();
                rates[k].push(seen.chains as f64 / secs.max(1e-9));
            }
        }
        println!("{}:", shape.name());
        let base = median(&mut rates[0]);
        for (k, side) in Side::ALL.into_iter().enumerate() {
            let rate = median(&mut rates[k]);
            print!("  {:<34} {:>8.2} M chains/s", side.name(), rate / 1e6);
            if k == 0 {
                println!("  (baseline)");
            } else {
                println!("  {:>5.2}x virtio-queue", rate / base.max(1e-9));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three implementations read the same chains, the ones the layout
    /// holds, and leave byte-identical used rings; the parsed shape sees a
    /// 4 KiB read answered with 4 KiB + status.
    #[test]
    fn every_implementation_reads_the_chains_the_driver_made() {
        for shape in Shape::ALL {
            let batch = u64::from(shape.batch());
            let mut used_rings = Vec::new();
            let mut seens = Vec::new();
            for side in Side::ALL {
                let mem = guest(shape).expect("guest");
                let seen = match side {
                    Side::VirtioQueue => run_virtio_queue(&mem, shape, 3),
                    Side::CoreOnGuestDma => run_core(&GuestDma(&mem), shape, 3),
                    Side::CoreOnWindow => {
                        run_core(&VolatileWindow::new(&mem).expect("window"), shape, 3)
                    }
                }
                .expect("run");
                let mut ring = vec![0u8; 4 + 8 * usize::from(QUEUE_SIZE)];
                mem.read_slice(&mut ring, GuestAddress(USED))
                    .expect("used ring");
                used_rings.push(ring);
                seens.push(seen);
            }
            // What the layout holds: each batch's chains in order.
            let per_chain = match shape {
                Shape::One => 64,
                Shape::Blk | Shape::Indirect => 16 + u64::from(DATA_LEN) + 1,
                Shape::BlkParsed => u64::from(DATA_LEN) + 1,
            };
            let mut want = Seen::default();
            for _ in 0..3 {
                for c in 0..shape.batch() {
                    want.chain(c * shape.table_entries(), per_chain);
                }
            }
            assert_eq!(want.chains, 3 * batch);
            for (side, seen) in Side::ALL.iter().zip(&seens) {
                assert_eq!(seen, &want, "{} on {:?}", side.name(), shape);
            }
            assert_eq!(used_rings[0][2..4], ((3 * batch) as u16).to_le_bytes());
            assert!(
                used_rings.iter().all(|r| r == &used_rings[0]),
                "used rings differ for {shape:?}"
            );
        }
    }

    #[test]
    fn batches_fill_the_table_without_overlap() {
        assert_eq!(Shape::One.batch(), 256);
        assert_eq!(Shape::Blk.batch(), 64);
        assert_eq!(Shape::Indirect.batch(), 256);
    }

    #[test]
    fn the_window_refuses_what_lies_outside() {
        let mem = guest(Shape::One).expect("guest");
        let w = VolatileWindow::new(&mem).expect("window");
        let mut b = [0u8; 4];
        assert!(w.read(MEM_SIZE as u64 - 2, &mut b).is_err());
        assert!(w.write(u64::MAX, &b).is_err());
        assert!(w.check(MEM_SIZE as u64 - 4, 4));
        assert!(!w.check(0, u64::MAX));
    }
}
