//! virtio-blk (device id 2): a disk backed by a raw image file or a host
//! block device.
//!
//! Requests are parsed and validated by [`request`] and the config space is
//! [`config`], both `vmsg-device-core`'s (shared with the FF-A secure
//! partition, reached through [`crate::guest_dma`]). Requests are turned
//! into engine operations and executed by an [`engine::BlockEngine`]: synchronously
//! (`preadv`/`pwritev` inside `process_queue`) or through io_uring
//! (submitted in `process_queue`, completed in `handle_event` when the
//! ring's eventfd fires). Guest buffers are handed to the kernel in place as
//! iovecs; nothing is copied except under `O_DIRECT` with misaligned memory
//! (see [`engine`]).
//!
//! Each queue has its own in-flight set, bounded by the queue size: a queue
//! at its bound is left alone until completions free slots, then processed
//! again from `handle_event`. `reset` waits for everything in flight.
//!
//! Cache mode (§5.2.6.2): writes are *writethrough* — followed by
//! `fdatasync` before they complete — when neither FLUSH nor CONFIG_WCE was
//! negotiated, or when the driver (CONFIG_WCE) or the configuration
//! (`writeback = false`) chose writethrough; otherwise they are writeback
//! and FLUSH makes them durable.

pub mod engine;
pub use vmsg_device_core::blk::{config, request};

#[cfg(test)]
mod tests;

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use log::{debug, error, warn};
use thiserror::Error;
use virtio_bindings::virtio_blk as vb;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmsg_backend::device::{DeviceError, PassBudget, QueueOutcome, VirtioDevice};
use vmsg_backend::memory::GuestMemory;

use self::config::{BlkConfigSpace, CONFIG_SIZE, bit, offered_features};
use self::engine::{
    BlockEngine, Completion, Disk, DiskInfo, DiskOptions, Engine, EngineError, IoVecs, Op,
    open_engine,
};
use self::request::{Body, Limits, Piece, S_IOERR, S_OK};
use crate::guest_dma::{GuestDma, core_desc};

/// virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Length of the GET_ID string.
pub const SERIAL_LEN: usize = vb::VIRTIO_BLK_ID_BYTES as usize;
/// Most request queues.
pub const MAX_QUEUES: u16 = 64;

/// Errors of building a block device.
#[derive(Debug, Error)]
pub enum BlkError {
    /// Opening the disk or setting up the engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("num_queues must be 1..={MAX_QUEUES}, not {0}")]
    NumQueues(u16),
    #[error("queue_size must be a power of two in 4..=32768, not {0}")]
    QueueSize(u16),
    #[error("serial must be at most {SERIAL_LEN} printable ASCII bytes, not {0:?}")]
    Serial(String),
}

/// How to build a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Refuse writes (and offer VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Open with `O_DIRECT`.
    pub direct: bool,
    /// I/O engine.
    pub engine: Engine,
    /// Request queues (more than one offers VIRTIO_BLK_F_MQ).
    pub num_queues: u16,
    /// Maximum size of each queue.
    pub queue_size: u16,
    /// GET_ID string, at most 20 ASCII bytes.
    pub serial: String,
    /// Initial cache mode: writeback (`true`) or writethrough.
    pub writeback: bool,
    /// Copy every read and write through a buffer of the daemon's instead
    /// of handing guest memory to the kernel: for guest memory the kernel
    /// cannot pin (the Linux loopback's pool is a PFN mapping; O_DIRECT and
    /// zero-copy file systems such as 9p fail on it with EFAULT).
    pub bounce: bool,
}

impl Default for BlkConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            read_only: false,
            direct: false,
            engine: Engine::default(),
            num_queues: 1,
            queue_size: 256,
            serial: String::new(),
            writeback: true,
            bounce: false,
        }
    }
}

impl BlkConfig {
    fn validate(&self) -> Result<[u8; SERIAL_LEN], BlkError> {
        if self.num_queues == 0 || self.num_queues > MAX_QUEUES {
            return Err(BlkError::NumQueues(self.num_queues));
        }
        if !self.queue_size.is_power_of_two() || self.queue_size < 4 {
            return Err(BlkError::QueueSize(self.queue_size));
        }
        let bytes = self.serial.as_bytes();
        if bytes.len() > SERIAL_LEN || !bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(BlkError::Serial(self.serial.clone()));
        }
        let mut serial = [0u8; SERIAL_LEN];
        serial[..bytes.len()].copy_from_slice(bytes);
        Ok(serial)
    }
}

/// Counters of one block device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Requests completed successfully, by type.
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub get_ids: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests the host failed (answered IOERR).
    pub io_errors: u64,
    /// Requests refused as invalid or unsupported (IOERR / UNSUPP).
    pub rejected: u64,
    /// Requests without a usable status byte (returned with length 0).
    pub unanswerable: u64,
}

/// Which queue a request came from, to detect a queue replaced meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueIdent {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
}

impl QueueIdent {
    fn of(q: &Queue) -> Self {
        Self {
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            size: q.size(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

/// A request handed to the engine.
#[derive(Debug)]
struct InFlight {
    head: u16,
    status: GuestAddress,
    /// Used length on success.
    ok_len: u32,
    ident: QueueIdent,
    kind: Kind,
    bytes: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    live: usize,
    /// Stopped popping at the in-flight bound.
    throttled: bool,
}

impl QueueState {
    fn insert(&mut self, f: InFlight) -> u32 {
        self.live += 1;
        match self.free.pop() {
            Some(s) => {
                if let Some(slot) = self.slots.get_mut(s as usize) {
                    *slot = Some(f);
                }
                s
            }
            None => {
                self.slots.push(Some(f));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, slot: u32) -> Option<InFlight> {
        let f = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.live -= 1;
        Some(f)
    }
}

/// The virtio-blk device model.
pub struct BlkDevice {
    name: String,
    info: DiskInfo,
    read_only: bool,
    engine: Box<dyn BlockEngine>,
    queue_sizes: Vec<u16>,
    serial: [u8; SERIAL_LEN],
    /// The config space; its `writeback` is the live cache mode.
    space: BlkConfigSpace,
    writeback_default: bool,
    offered: u64,
    negotiated: u64,
    queues: Vec<QueueState>,
    /// Completions reaped for a queue other than the one being processed.
    pending: Vec<Completion>,
    scratch: Vec<Completion>,
    stats: BlkStats,
}

impl std::fmt::Debug for BlkDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkDevice")
            .field("name", &self.name)
            .field("engine", &self.engine.name())
            .field("info", &self.info)
            .field("queues", &self.queue_sizes.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl BlkDevice {
    /// Open `cfg.path` and build the device with the configured engine.
    pub fn new(name: impl Into<String>, cfg: &BlkConfig) -> Result<Self, BlkError> {
        cfg.validate()?;
        let disk = Arc::new(Disk::open(
            &cfg.path,
            DiskOptions {
                read_only: cfg.read_only,
                direct: cfg.direct,
                bounce: cfg.bounce,
            },
        )?);
        let depth = u32::from(cfg.num_queues) * u32::from(cfg.queue_size);
        let engine = open_engine(cfg.engine, Arc::clone(&disk), depth)?;
        Self::with_engine(name, cfg, disk.info(), engine)
    }

    /// Build the device on an engine the caller made (tests use
    /// `engine::FakeEngine`, feature `fake`). `cfg.path`, `direct` and
    /// `engine` are ignored.
    pub fn with_engine(
        name: impl Into<String>,
        cfg: &BlkConfig,
        info: DiskInfo,
        engine: Box<dyn BlockEngine>,
    ) -> Result<Self, BlkError> {
        let serial = cfg.validate()?;
        let read_only = cfg.read_only || info.read_only;
        let space = BlkConfigSpace::new(
            &info.geometry(),
            cfg.num_queues,
            cfg.queue_size,
            cfg.writeback,
        );
        Ok(Self {
            name: name.into(),
            info,
            read_only,
            engine,
            queue_sizes: vec![cfg.queue_size; usize::from(cfg.num_queues)],
            serial,
            space,
            writeback_default: cfg.writeback,
            offered: offered_features(read_only, cfg.num_queues),
            negotiated: 0,
            queues: (0..cfg.num_queues).map(|_| QueueState::default()).collect(),
            pending: Vec::new(),
            scratch: Vec::new(),
            stats: BlkStats::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    /// The config space values.
    pub fn config_space(&self) -> BlkConfigSpace {
        self.space
    }

    /// Requests handed to the engine and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.queues.iter().map(|q| q.live).sum()
    }

    fn negotiated(&self, feature: u32) -> bool {
        self.negotiated & bit(feature) != 0
    }

    /// Whether a write must be durable before it completes (§5.2.6.2).
    fn writethrough(&self) -> bool {
        let flush = self.negotiated(vb::VIRTIO_BLK_F_FLUSH);
        let wce = self.negotiated(vb::VIRTIO_BLK_F_CONFIG_WCE);
        !(flush || wce) || self.space.writeback == 0
    }

    fn limits(&self) -> Limits {
        Limits {
            capacity: self.space.capacity,
            seg_max: self.space.seg_max,
            size_max: self.space.size_max,
            max_discard_seg: self.space.max_discard_seg,
            max_discard_sectors: self.space.max_discard_sectors,
            max_write_zeroes_seg: self.space.max_write_zeroes_seg,
            max_write_zeroes_sectors: self.space.max_write_zeroes_sectors,
            read_only: self.read_only,
            discard: self.negotiated(vb::VIRTIO_BLK_F_DISCARD),
            write_zeroes: self.negotiated(vb::VIRTIO_BLK_F_WRITE_ZEROES),
        }
    }

    /// Pop and start requests of queue `q` until it is empty, at its
    /// in-flight bound or `budget` is spent (the host then runs another pass
    /// later). Returns whether used entries were added.
    fn run_queue(
        &mut self,
        q: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
        budget: &mut PassBudget,
    ) -> Result<bool, DeviceError> {
        let qi = usize::from(q);
        if qi >= self.queues.len() {
            return Ok(false);
        }
        let ident = QueueIdent::of(queue);
        let limits = self.limits();
        let inline = self.engine.event_fd().is_none();
        let mut used = false;
        self.queues[qi].throttled = false;
        'notify: loop {
            queue
                .disable_notification(mem)
                .map_err(|e| corrupt(q, &e))?;
            loop {
                if self.queues[qi].live >= usize::from(queue.size()) {
                    // Resumed from handle_event once completions free slots.
                    self.queues[qi].throttled = true;
                    break 'notify;
                }
                if !budget.take_chain() {
                    // The host sees the chains left and runs another pass.
                    break 'notify;
                }
                let chain = {
                    let mut iter = queue.iter(mem).map_err(|e| corrupt(q, &e))?;
                    iter.next()
                };
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                let parsed = request::parse(chain.map(core_desc), &GuestDma(mem), &limits);
                if inline {
                    // Synchronous I/O takes time by the byte; queued I/O
                    // does not hold this thread.
                    let bytes: u64 = match &parsed.body {
                        Ok(Body::In { data, .. } | Body::Out { data, .. }) => {
                            data.iter().map(|p| u64::from(p.len)).sum()
                        }
                        _ => 0,
                    };
                    budget.spend(bytes);
                }
                used |= self.start(q, queue, ident, head, parsed, mem)?;
                if inline {
                    used |= self.complete_inline(q, queue, mem)?;
                }
            }
            // With EVENT_IDX this publishes avail_event; a buffer added
            // meanwhile is picked up by going round again.
            if !queue.enable_notification(mem).map_err(|e| corrupt(q, &e))? {
                break;
            }
        }
        self.engine.flush().map_err(backend)?;
        Ok(used)
    }

    /// Answer a request or hand it to the engine.
    fn start(
        &mut self,
        q: u16,
        queue: &mut Queue,
        ident: QueueIdent,
        head: u16,
        parsed: request::Parsed,
        mem: &GuestMemory,
    ) -> Result<bool, DeviceError> {
        let Some(status) = parsed.status.map(GuestAddress) else {
            debug!("{}: q{q}: request {head} has no status byte", self.name);
            self.stats.unanswerable += 1;
            return add_used(q, queue, mem, head, 0);
        };
        let body = match parsed.body {
            Ok(b) => b,
            Err(code) => {
                debug!("{}: q{q}: request {head} refused ({code})", self.name);
                self.stats.rejected += 1;
                return answer(q, queue, mem, head, status, code, 1);
            }
        };
        let ok_len = parsed.writable_len;
        let (kind, ops) = match body {
            Body::GetId { data } => {
                let code = if write_id(mem, &data, &self.serial) {
                    self.stats.get_ids += 1;
                    S_OK
                } else {
                    self.stats.rejected += 1;
                    S_IOERR
                };
                let len = if code == S_OK { ok_len } else { 1 };
                return answer(q, queue, mem, head, status, code, len);
            }
            Body::Flush if self.read_only => {
                // Nothing can have been written.
                self.stats.flushes += 1;
                return answer(q, queue, mem, head, status, S_OK, 1);
            }
            Body::Flush => (Kind::Flush, vec![Op::Flush]),
            Body::In { offset, data } => match map(mem, &data) {
                Some(iov) => (Kind::Read, vec![Op::Read { offset, iov }]),
                None => {
                    self.stats.rejected += 1;
                    return answer(q, queue, mem, head, status, S_IOERR, 1);
                }
            },
            Body::Out { offset, data } => match map(mem, &data) {
                Some(iov) => {
                    let mut ops = vec![Op::Write { offset, iov }];
                    if self.writethrough() {
                        ops.push(Op::Flush);
                    }
                    (Kind::Write, ops)
                }
                None => {
                    self.stats.rejected += 1;
                    return answer(q, queue, mem, head, status, S_IOERR, 1);
                }
            },
            Body::Discard { ranges } => (
                Kind::Discard,
                ranges
                    .iter()
                    .map(|r| Op::Discard {
                        offset: r.offset,
                        len: r.len,
                    })
                    .collect(),
            ),
            Body::WriteZeroes { ranges } => {
                let mut ops: Vec<Op> = ranges
                    .iter()
                    .map(|r| Op::WriteZeroes {
                        offset: r.offset,
                        len: r.len,
                        unmap: r.unmap,
                    })
                    .collect();
                if self.writethrough() {
                    ops.push(Op::Flush);
                }
                (Kind::WriteZeroes, ops)
            }
        };
        let bytes = ops.iter().map(Op::data_len).sum();
        let slot = self.queues[usize::from(q)].insert(InFlight {
            head,
            status,
            ok_len,
            ident,
            kind,
            bytes,
        });
        let token = (u64::from(q) << 32) | u64::from(slot);
        // SAFETY: the iovecs point into guest memory regions, which stay
        // mapped until the host drops the memory; the host resets the device
        // before that (VirtioDevice::reset), and reset — like dropping the
        // engine — waits for every request in flight.
        if let Err(e) = unsafe { self.engine.submit(token, ops) } {
            self.queues[usize::from(q)].remove(slot);
            return Err(backend(e));
        }
        Ok(false)
    }

    /// Deliver what an inline engine completed.
    fn complete_inline(
        &mut self,
        q: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, DeviceError> {
        let mut done = std::mem::take(&mut self.scratch);
        self.engine.reap(&mut done).map_err(backend)?;
        let mut used = false;
        for c in done.drain(..) {
            if c.token >> 32 == u64::from(q) {
                used |= self.finish(q, Some(&mut *queue), mem, c)?;
            } else {
                self.pending.push(c);
            }
        }
        self.scratch = done;
        Ok(used)
    }

    /// Complete one request: status byte, used entry, counters.
    fn finish(
        &mut self,
        q: u16,
        queue: Option<&mut Queue>,
        mem: &GuestMemory,
        c: Completion,
    ) -> Result<bool, DeviceError> {
        let slot = (c.token & 0xffff_ffff) as u32;
        let Some(f) = self
            .queues
            .get_mut(usize::from(q))
            .and_then(|s| s.remove(slot))
        else {
            return Ok(false);
        };
        // The driver reset or replaced the queue meanwhile (RING_RESET), or
        // the device failed: the request is forgotten.
        let Some(queue) = queue.filter(|qu| QueueIdent::of(qu) == f.ident) else {
            debug!("{}: q{q}: completion for a queue that is gone", self.name);
            return Ok(false);
        };
        let (code, len) = match c.result {
            Ok(()) => {
                let s = &mut self.stats;
                match f.kind {
                    Kind::Read => {
                        s.reads += 1;
                        s.bytes_read += f.bytes;
                    }
                    Kind::Write => {
                        s.writes += 1;
                        s.bytes_written += f.bytes;
                    }
                    Kind::Flush => s.flushes += 1,
                    Kind::Discard => s.discards += 1,
                    Kind::WriteZeroes => s.write_zeroes += 1,
                }
                (S_OK, f.ok_len)
            }
            Err(e) => {
                self.stats.io_errors += 1;
                // A guest can provoke errors (e.g. misaligned I/O under
                // O_DIRECT): warn about the first ones, then sparsely.
                let n = self.stats.io_errors;
                if n <= 16 || n.is_power_of_two() {
                    warn!(
                        "{}: q{q}: {:?} request failed: {e} ({n} so far)",
                        self.name, f.kind
                    );
                } else {
                    debug!("{}: q{q}: {:?} request failed: {e}", self.name, f.kind);
                }
                (S_IOERR, 1)
            }
        };
        answer(q, queue, mem, f.head, f.status, code, len)
    }
}

/// Write the status byte and return the chain.
fn answer(
    q: u16,
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    status: GuestAddress,
    code: u8,
    len: u32,
) -> Result<bool, DeviceError> {
    // The address was checked when the request was parsed and guest memory
    // does not change, so this cannot fail; if it did, claim nothing.
    let len = if mem.write_obj(code, status).is_ok() {
        len
    } else {
        0
    };
    add_used(q, queue, mem, head, len)
}

fn add_used(
    q: u16,
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
) -> Result<bool, DeviceError> {
    queue.add_used(mem, head, len).map_err(|e| corrupt(q, &e))?;
    Ok(true)
}

/// Iovecs for data pieces, in place in guest memory. `None` if any byte lies
/// outside it.
fn map(mem: &GuestMemory, data: &[Piece]) -> Option<IoVecs> {
    let mut iov = IoVecs::with_capacity(data.len());
    for p in data {
        for slice in mem.get_slices(GuestAddress(p.addr), p.len as usize) {
            let slice = slice.ok()?;
            // An mmap region's pointer stays valid after the guard is gone
            // (the guard only matters for Xen mappings, not built here).
            iov.push(slice.ptr_guard_mut().as_ptr(), slice.len());
        }
    }
    Some(iov)
}

/// Fill the GET_ID buffer: the serial, NUL-padded to the buffer's length.
fn write_id(mem: &GuestMemory, data: &[Piece], serial: &[u8; SERIAL_LEN]) -> bool {
    const ZEROES: [u8; 512] = [0; 512];
    let mut pos = 0usize;
    for p in data {
        let mut done = 0usize;
        while done < p.len as usize {
            let src = serial
                .get(pos..)
                .filter(|s| !s.is_empty())
                .unwrap_or(&ZEROES);
            let n = src.len().min(p.len as usize - done);
            let Some(addr) = p.addr.checked_add(done as u64) else {
                return false;
            };
            if mem.write_slice(&src[..n], GuestAddress(addr)).is_err() {
                return false;
            }
            done += n;
            pos += n;
        }
    }
    true
}

fn corrupt(queue: u16, e: &virtio_queue::Error) -> DeviceError {
    DeviceError::QueueCorrupt {
        queue,
        reason: e.to_string(),
    }
}

fn backend(e: EngineError) -> DeviceError {
    DeviceError::Backend(e.to_string())
}

impl VirtioDevice for BlkDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn config_size(&self) -> u32 {
        CONFIG_SIZE as u32
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let bytes = self.space.to_bytes();
        let start = offset as usize;
        match bytes.get(start..start.saturating_add(data.len())) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0),
        }
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> bool {
        // Only `writeback` is writable, and only with CONFIG_WCE (§5.2.5).
        if !self.negotiated(vb::VIRTIO_BLK_F_CONFIG_WCE)
            || offset as usize != config::offset::WRITEBACK
            || data.len() != 1
            || data[0] > 1
        {
            return false;
        }
        self.space.writeback = data[0];
        true
    }

    fn accept_features(&mut self, features: u64) -> bool {
        self.negotiated = features;
        // §5.2.5.2: CONFIG_WCE without FLUSH starts in writethrough.
        if self.negotiated(vb::VIRTIO_BLK_F_CONFIG_WCE) && !self.negotiated(vb::VIRTIO_BLK_F_FLUSH)
        {
            self.space.writeback = 0;
        }
        true
    }

    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        self.negotiated = features;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<QueueOutcome, DeviceError> {
        self.process_queue_bounded(index, queue, mem, &mut PassBudget::untimed())
    }

    fn process_queue_bounded(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
        budget: &mut PassBudget,
    ) -> Result<QueueOutcome, DeviceError> {
        let mut used = false;
        // Completions an inline engine produced for this queue while another
        // was being processed.
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            for c in pending {
                if c.token >> 32 == u64::from(index) {
                    used |= self.finish(index, Some(&mut *queue), mem, c)?;
                } else {
                    self.pending.push(c);
                }
            }
        }
        used |= self.run_queue(index, queue, mem, budget)?;
        Ok(QueueOutcome { used_added: used })
    }

    fn reset(&mut self) {
        let mut done = Vec::new();
        if let Err(e) = self.engine.drain(&mut done) {
            // The kernel may still write into guest memory the host is about
            // to unmap: stopping is the only safe course.
            error!("{}: cannot wait for I/O in flight: {e}", self.name);
            std::process::abort();
        }
        for q in &mut self.queues {
            *q = QueueState::default();
        }
        self.pending.clear();
        self.negotiated = 0;
        self.space.writeback = u8::from(self.writeback_default);
    }

    fn queue_reset(&mut self, index: u16) {
        // The engine has no per-queue cancel: wait for everything, forget
        // the reset queue's completions (its buffers belong to the old ring)
        // and keep the others for their queues' next pass.
        let mut done = Vec::new();
        if let Err(e) = self.engine.drain(&mut done) {
            error!("{}: cannot wait for I/O in flight: {e}", self.name);
            std::process::abort();
        }
        done.append(&mut self.pending);
        self.pending = done
            .into_iter()
            .filter(|c| c.token >> 32 != u64::from(index))
            .collect();
        if let Some(q) = self.queues.get_mut(usize::from(index)) {
            *q = QueueState::default();
        }
    }

    fn event_fds(&self) -> Vec<RawFd> {
        self.engine.event_fd().into_iter().collect()
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        vec![
            ("reads", s.reads),
            ("writes", s.writes),
            ("flushes", s.flushes),
            ("discards", s.discards),
            ("write_zeroes", s.write_zeroes),
            ("get_ids", s.get_ids),
            ("bytes_read", s.bytes_read),
            ("bytes_written", s.bytes_written),
            ("io_errors", s.io_errors),
            ("rejected", s.rejected),
            ("unanswerable", s.unanswerable),
            ("in_flight_now", self.in_flight() as u64),
        ]
    }

    fn handle_event(
        &mut self,
        queues: &mut [Option<Queue>],
        mem: &GuestMemory,
    ) -> Result<Vec<u16>, DeviceError> {
        let mut done = std::mem::take(&mut self.scratch);
        self.engine.reap(&mut done).map_err(backend)?;
        done.append(&mut self.pending);
        let mut used: Vec<u16> = Vec::new();
        for c in done.drain(..) {
            let q = (c.token >> 32) as u16;
            let queue = queues.get_mut(usize::from(q)).and_then(Option::as_mut);
            if self.finish(q, queue, mem, c)? && !used.contains(&q) {
                used.push(q);
            }
        }
        self.scratch = done;
        // Queues that stopped at their bound can go on now.
        for q in 0..self.queues.len() {
            if !self.queues[q].throttled {
                continue;
            }
            let Some(Some(queue)) = queues.get_mut(q) else {
                continue;
            };
            let q = q as u16;
            // What this pass leaves is seen by the host (it looks for
            // buffers left on every live queue after a completion).
            let mut budget = PassBudget::new();
            if self.run_queue(q, queue, mem, &mut budget)? && !used.contains(&q) {
                used.push(q);
            }
        }
        Ok(used)
    }
}
