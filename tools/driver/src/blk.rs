//! virtio-blk frontend (virtio device id 2), written from the virtio 1.2
//! specification §5.2 — not from vmsgd's device model.
//!
//! A request is one descriptor chain: a device-readable header
//! `{le32 type, le32 reserved, le64 sector}`, then the data (device-readable
//! for OUT, DISCARD and WRITE_ZEROES; device-writable for IN and GET_ID),
//! then one device-writable status byte (§5.2.6). `sector` always counts
//! 512-byte units, whatever `blk_size` says.
//!
//! [`Blk`] keeps any number of requests in flight on each of its queues:
//! [`Blk::submit`] posts a request on a queue (header and status live in a
//! per-queue slot array, data in guest buffers from [`Blk::alloc_buf`]),
//! [`Blk::kick`] notifies the device, [`Blk::poll`] / [`Blk::wait`] collect
//! [`Completion`]s. The blocking helpers ([`Blk::read`], [`Blk::write`],
//! [`Blk::flush`], [`Blk::discard`], [`Blk::write_zeroes`], [`Blk::get_id`])
//! are built on those and spread their requests over the queues.
//!
//! Driver rules of §5.2.6.1 the frontend enforces (returning
//! [`BlkError::Invalid`] instead of sending): data lengths are multiples of
//! 512, at most `seg_max` data descriptors (each at most `size_max`) when
//! SEG_MAX / SIZE_MAX were negotiated, FLUSH only with VIRTIO_BLK_F_FLUSH,
//! DISCARD / WRITE_ZEROES only when negotiated, within their segment and
//! sector limits, and never the unmap flag on a DISCARD.
//! [`Request::Raw`] bypasses all of that, for the conformance suite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::device::{FeatureSet, InitError, VirtioDevice};
use crate::driver::{Driver, DriverError};
use crate::mem::AllocError;
use crate::virtq::{Buffer, SplitQueue, VirtqError};
use crate::wire::Event;

/// Virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// The unit of `sector` and `capacity`.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID string.
pub const ID_BYTES: usize = 20;
/// Write-zeroes segment flag: the device may deallocate the range.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Bytes of the config space this frontend reads (up to `unused1`).
pub const CONFIG_LEN: usize = 60;
/// Queue size asked for by default (capped by the device's max_size).
pub const DEFAULT_QUEUE_SIZE: u32 = 256;
/// Default bound on the wait for one completion: generous, since a FLUSH
/// may have to write back a large host cache.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Value the status byte holds until the device writes it.
pub const STATUS_UNWRITTEN: u8 = 0xFF;
/// How often the used rings are polled while no EVENT_USED arrives.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes of one header-and-status slot: header at 0, status at 16, an
/// internal GET_ID buffer at 32.
const SLOT: u64 = 64;
const STATUS_OFF: u64 = 16;
const ID_OFF: u64 = 32;
/// Descriptor length used when SIZE_MAX is not negotiated.
const UNLIMITED_SEGMENT: u32 = 1 << 30;

/// Device-specific feature bits (§5.2.3).
pub mod feature {
    /// Maximum size of any single segment is in `size_max`.
    pub const SIZE_MAX: u32 = 1;
    /// Maximum number of segments in a request is in `seg_max`.
    pub const SEG_MAX: u32 = 2;
    /// Disk-style geometry is in `geometry`.
    pub const GEOMETRY: u32 = 4;
    /// The device is read-only.
    pub const RO: u32 = 5;
    /// Block size of the disk is in `blk_size`.
    pub const BLK_SIZE: u32 = 6;
    /// Cache flush command support.
    pub const FLUSH: u32 = 9;
    /// Topology information is available.
    pub const TOPOLOGY: u32 = 10;
    /// The device can toggle its cache between writeback and writethrough.
    pub const CONFIG_WCE: u32 = 11;
    /// More than one virtqueue.
    pub const MQ: u32 = 12;
    /// DISCARD commands.
    pub const DISCARD: u32 = 13;
    /// WRITE_ZEROES commands.
    pub const WRITE_ZEROES: u32 = 14;
    /// GET_LIFETIME commands.
    pub const LIFETIME: u32 = 15;
    /// SECURE_ERASE commands.
    pub const SECURE_ERASE: u32 = 16;
    /// Zoned device.
    pub const ZONED: u32 = 17;
}

/// Request types (§5.2.6).
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Make completed writes stable.
    pub const FLUSH: u32 = 4;
    /// Device identifier string.
    pub const GET_ID: u32 = 8;
    /// Device lifetime information.
    pub const GET_LIFETIME: u32 = 10;
    /// Discard ranges.
    pub const DISCARD: u32 = 11;
    /// Zero ranges.
    pub const WRITE_ZEROES: u32 = 13;
    /// Securely erase ranges.
    pub const SECURE_ERASE: u32 = 14;
}

/// Status byte values (§5.2.6).
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Request unsupported by the device.
    pub const UNSUPP: u8 = 2;

    /// A name for logs.
    pub fn name(s: u8) -> &'static str {
        match s {
            OK => "OK",
            IOERR => "IOERR",
            UNSUPP => "UNSUPP",
            super::STATUS_UNWRITTEN => "not written",
            _ => "invalid",
        }
    }
}

/// Byte offsets of the config fields (`struct virtio_blk_config`, §5.2.4).
pub mod offset {
    /// le64 capacity (512-byte sectors).
    pub const CAPACITY: u32 = 0;
    /// le32 size_max.
    pub const SIZE_MAX: u32 = 8;
    /// le32 seg_max.
    pub const SEG_MAX: u32 = 12;
    /// le16 geometry.cylinders.
    pub const CYLINDERS: u32 = 16;
    /// u8 geometry.heads.
    pub const HEADS: u32 = 18;
    /// u8 geometry.sectors.
    pub const SECTORS: u32 = 19;
    /// le32 blk_size.
    pub const BLK_SIZE: u32 = 20;
    /// u8 topology.physical_block_exp.
    pub const PHYSICAL_BLOCK_EXP: u32 = 24;
    /// u8 topology.alignment_offset.
    pub const ALIGNMENT_OFFSET: u32 = 25;
    /// le16 topology.min_io_size.
    pub const MIN_IO_SIZE: u32 = 26;
    /// le32 topology.opt_io_size.
    pub const OPT_IO_SIZE: u32 = 28;
    /// u8 writeback.
    pub const WRITEBACK: u32 = 32;
    /// u8 unused0.
    pub const UNUSED0: u32 = 33;
    /// le16 num_queues.
    pub const NUM_QUEUES: u32 = 34;
    /// le32 max_discard_sectors.
    pub const MAX_DISCARD_SECTORS: u32 = 36;
    /// le32 max_discard_seg.
    pub const MAX_DISCARD_SEG: u32 = 40;
    /// le32 discard_sector_alignment.
    pub const DISCARD_SECTOR_ALIGNMENT: u32 = 44;
    /// le32 max_write_zeroes_sectors.
    pub const MAX_WRITE_ZEROES_SECTORS: u32 = 48;
    /// le32 max_write_zeroes_seg.
    pub const MAX_WRITE_ZEROES_SEG: u32 = 52;
    /// u8 write_zeroes_may_unmap.
    pub const WRITE_ZEROES_MAY_UNMAP: u32 = 56;
    /// u8 unused1\[3\].
    pub const UNUSED1: u32 = 57;
}

/// Errors of the blk frontend.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// Initialization or device control failed.
    #[error(transparent)]
    Init(#[from] InitError),
    /// The transport failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The device is not a block device.
    #[error("device_id {0} is not virtio-blk (2)")]
    NotBlk(u32),
    /// The config space cannot hold `capacity`.
    #[error("config space of {0} bytes is too small for capacity")]
    ConfigTooSmall(u32),
    /// A queue operation failed (includes invalid used entries).
    #[error(transparent)]
    Virtq(#[from] VirtqError),
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Guest memory allocation failed.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The request breaks a driver rule of §5.2.6.1 or a negotiated limit.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The queue has too few free descriptors or slots right now.
    #[error("queue {queue} is full ({need} descriptors needed)")]
    QueueFull {
        /// Queue.
        queue: u16,
        /// Descriptors the request needs.
        need: usize,
    },
    /// No such request queue.
    #[error("no request queue {0}")]
    NoQueue(u16),
    /// A request completed with a status other than OK.
    #[error("{what} failed with status {status} ({})", status::name(*status))]
    Status {
        /// The request.
        what: &'static str,
        /// Its status byte.
        status: u8,
    },
    /// No completion within the bound.
    #[error("no completion within {0:?}")]
    Timeout(Duration),
    /// The device broke a rule of the protocol.
    #[error("device error: {0}")]
    Device(String),
}

/// `geometry` (§5.2.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

/// `struct virtio_blk_config` as read (§5.2.4). Fields are meaningful only
/// when their feature was negotiated; see [`Limits`] for the values a driver
/// may rely on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment in bytes (SIZE_MAX).
    pub size_max: u32,
    /// Most segments per request (SEG_MAX).
    pub seg_max: u32,
    /// Geometry (GEOMETRY).
    pub geometry: Geometry,
    /// Optimal block size in bytes (BLK_SIZE).
    pub blk_size: u32,
    /// log2(physical blocks per logical block) (TOPOLOGY).
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block (TOPOLOGY).
    pub alignment_offset: u8,
    /// Suggested minimum I/O size in blocks (TOPOLOGY).
    pub min_io_size: u16,
    /// Optimal sustained I/O size in blocks (TOPOLOGY).
    pub opt_io_size: u32,
    /// Cache mode, 1 = writeback (CONFIG_WCE).
    pub writeback: u8,
    /// Padding after `writeback`.
    pub unused0: u8,
    /// Request queues (MQ).
    pub num_queues: u16,
    /// Most sectors per discard segment (DISCARD).
    pub max_discard_sectors: u32,
    /// Most discard segments per request (DISCARD).
    pub max_discard_seg: u32,
    /// Discard alignment in sectors (DISCARD).
    pub discard_sector_alignment: u32,
    /// Most sectors per write-zeroes segment (WRITE_ZEROES).
    pub max_write_zeroes_sectors: u32,
    /// Most write-zeroes segments per request (WRITE_ZEROES).
    pub max_write_zeroes_seg: u32,
    /// Whether write-zeroes with unmap may deallocate (WRITE_ZEROES).
    pub write_zeroes_may_unmap: u8,
    /// Padding after `write_zeroes_may_unmap`.
    pub unused1: [u8; 3],
}

impl BlkConfig {
    /// Decodes the little-endian config bytes; missing bytes read as 0.
    pub fn parse(bytes: &[u8]) -> Self {
        let mut b = [0u8; CONFIG_LEN];
        let n = bytes.len().min(CONFIG_LEN);
        b[..n].copy_from_slice(&bytes[..n]);
        let u8_at = |o: u32| b[o as usize];
        let u16_at = |o: u32| u16::from_le_bytes([b[o as usize], b[o as usize + 1]]);
        let u32_at = |o: u32| {
            let o = o as usize;
            u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
        };
        let u64_at = |o: u32| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        use offset::*;
        BlkConfig {
            capacity: u64_at(CAPACITY),
            size_max: u32_at(SIZE_MAX),
            seg_max: u32_at(SEG_MAX),
            geometry: Geometry {
                cylinders: u16_at(CYLINDERS),
                heads: u8_at(HEADS),
                sectors: u8_at(SECTORS),
            },
            blk_size: u32_at(BLK_SIZE),
            physical_block_exp: u8_at(PHYSICAL_BLOCK_EXP),
            alignment_offset: u8_at(ALIGNMENT_OFFSET),
            min_io_size: u16_at(MIN_IO_SIZE),
            opt_io_size: u32_at(OPT_IO_SIZE),
            writeback: u8_at(WRITEBACK),
            unused0: u8_at(UNUSED0),
            num_queues: u16_at(NUM_QUEUES),
            max_discard_sectors: u32_at(MAX_DISCARD_SECTORS),
            max_discard_seg: u32_at(MAX_DISCARD_SEG),
            discard_sector_alignment: u32_at(DISCARD_SECTOR_ALIGNMENT),
            max_write_zeroes_sectors: u32_at(MAX_WRITE_ZEROES_SECTORS),
            max_write_zeroes_seg: u32_at(MAX_WRITE_ZEROES_SEG),
            write_zeroes_may_unmap: u8_at(WRITE_ZEROES_MAY_UNMAP),
            unused1: [u8_at(UNUSED1), u8_at(UNUSED1 + 1), u8_at(UNUSED1 + 2)],
        }
    }
}

/// Discard limits (DISCARD negotiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardLimits {
    /// Most sectors per segment.
    pub max_sectors: u32,
    /// Most segments per request.
    pub max_seg: u32,
    /// Suggested alignment in sectors.
    pub sector_alignment: u32,
}

/// Write-zeroes limits (WRITE_ZEROES negotiated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteZeroesLimits {
    /// Most sectors per segment.
    pub max_sectors: u32,
    /// Most segments per request.
    pub max_seg: u32,
    /// The unmap flag may deallocate.
    pub may_unmap: bool,
}

/// What the driver may do, from the config and the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Most data descriptors per IN/OUT request.
    pub seg_max: u32,
    /// Largest data descriptor in bytes.
    pub size_max: u32,
    /// Block size in bytes (512 without BLK_SIZE).
    pub blk_size: u32,
    /// RO negotiated.
    pub read_only: bool,
    /// FLUSH negotiated.
    pub flush: bool,
    /// CONFIG_WCE negotiated.
    pub config_wce: bool,
    /// DISCARD negotiated, with its limits.
    pub discard: Option<DiscardLimits>,
    /// WRITE_ZEROES negotiated, with its limits.
    pub write_zeroes: Option<WriteZeroesLimits>,
}

impl Limits {
    /// The limits of `cfg` under `negotiated`, for queues of `queue_size`.
    pub fn new(cfg: &BlkConfig, negotiated: &FeatureSet, queue_size: u32) -> Self {
        let has = |b| negotiated.contains(b);
        // A direct chain holds the header and the status besides the data.
        let ring_max = queue_size.saturating_sub(2).max(1);
        Limits {
            capacity: cfg.capacity,
            seg_max: if has(feature::SEG_MAX) && cfg.seg_max > 0 {
                cfg.seg_max.min(ring_max)
            } else {
                ring_max
            },
            size_max: if has(feature::SIZE_MAX) && cfg.size_max > 0 {
                cfg.size_max
            } else {
                UNLIMITED_SEGMENT
            },
            blk_size: if has(feature::BLK_SIZE) && cfg.blk_size >= 512 {
                cfg.blk_size
            } else {
                SECTOR_SIZE as u32
            },
            read_only: has(feature::RO),
            flush: has(feature::FLUSH),
            config_wce: has(feature::CONFIG_WCE),
            discard: has(feature::DISCARD).then_some(DiscardLimits {
                max_sectors: cfg.max_discard_sectors,
                max_seg: cfg.max_discard_seg,
                sector_alignment: cfg.discard_sector_alignment,
            }),
            write_zeroes: has(feature::WRITE_ZEROES).then_some(WriteZeroesLimits {
                max_sectors: cfg.max_write_zeroes_sectors,
                max_seg: cfg.max_write_zeroes_seg,
                may_unmap: cfg.write_zeroes_may_unmap != 0,
            }),
        }
    }

    /// Most data bytes one IN/OUT request can carry.
    pub fn max_request_bytes(&self) -> u64 {
        let per = u64::from(self.size_max) / SECTOR_SIZE * SECTOR_SIZE;
        u64::from(self.seg_max) * per.max(SECTOR_SIZE)
    }
}

/// A buffer in guest memory (from [`Blk::alloc_buf`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBuf {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

impl GuestBuf {
    /// The first `len` bytes.
    pub fn prefix(&self, len: u32) -> GuestBuf {
        GuestBuf {
            addr: self.addr,
            len: len.min(self.len),
        }
    }
}

/// One DISCARD or WRITE_ZEROES range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First sector.
    pub sector: u64,
    /// Sectors.
    pub num_sectors: u32,
    /// The `flags` field (bit 0: unmap, write-zeroes only).
    pub flags: u32,
}

impl Segment {
    /// A range without flags.
    pub fn new(sector: u64, num_sectors: u32) -> Self {
        Segment {
            sector,
            num_sectors,
            flags: 0,
        }
    }

    /// A write-zeroes range the device may deallocate.
    pub fn unmap(sector: u64, num_sectors: u32) -> Self {
        Segment {
            sector,
            num_sectors,
            flags: WRITE_ZEROES_FLAG_UNMAP,
        }
    }

    fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// A request chain as the conformance suite wants it, unchecked: the header
/// (`type`, `reserved`, `sector`), device-readable buffers after it,
/// device-writable buffers before the status byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// `type`.
    pub rtype: u32,
    /// `reserved` (0 in a valid request).
    pub reserved: u32,
    /// `sector`.
    pub sector: u64,
    /// Device-readable data after the header.
    pub readable: Vec<GuestBuf>,
    /// Device-writable data before the status byte.
    pub writable: Vec<GuestBuf>,
}

/// A request to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// VIRTIO_BLK_T_IN: read `buf.len` bytes at `sector` into `buf`.
    Read {
        /// First sector.
        sector: u64,
        /// Destination.
        buf: GuestBuf,
    },
    /// VIRTIO_BLK_T_OUT: write `buf` at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Source.
        buf: GuestBuf,
    },
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID into the request's own 20-byte buffer (read it
    /// with [`Blk::id_of`] before the next request on that queue).
    GetId,
    /// VIRTIO_BLK_T_DISCARD.
    Discard(Vec<Segment>),
    /// VIRTIO_BLK_T_WRITE_ZEROES.
    WriteZeroes(Vec<Segment>),
    /// Anything, unchecked.
    Raw(RawRequest),
}

impl Request {
    /// A name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Read { .. } => "IN",
            Request::Write { .. } => "OUT",
            Request::Flush => "FLUSH",
            Request::GetId => "GET_ID",
            Request::Discard(_) => "DISCARD",
            Request::WriteZeroes(_) => "WRITE_ZEROES",
            Request::Raw(_) => "raw request",
        }
    }
}

/// Identifies a submitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(pub u64);

/// A completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The tag [`Blk::submit`] returned.
    pub tag: Tag,
    /// The queue it ran on.
    pub queue: u16,
    /// The status byte ([`STATUS_UNWRITTEN`] if the device did not write it).
    pub status: u8,
    /// The used length the device reported.
    pub used_len: u32,
    /// Bytes of the chain's device-writable part (data + status).
    pub writable_len: u64,
    /// Where the request's GET_ID bytes are ([`Request::GetId`] only).
    id_addr: Option<GuestAddress>,
}

impl Completion {
    /// True if the status is OK.
    pub fn is_ok(&self) -> bool {
        self.status == status::OK
    }
}

/// Tunables of [`Blk::open_with`].
#[derive(Debug, Clone)]
pub struct BlkOptions {
    /// Device-specific features wanted (only offered ones are accepted).
    pub features: FeatureSet,
    /// Queue size asked for (capped by the device's maximum).
    pub queue_size: u32,
    /// Use at most this many queues (MQ).
    pub max_queues: u16,
    /// Bound on each wait for a completion.
    pub timeout: Duration,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            features: FeatureSet::from_bits(&[
                feature::SIZE_MAX,
                feature::SEG_MAX,
                feature::GEOMETRY,
                feature::RO,
                feature::BLK_SIZE,
                feature::FLUSH,
                feature::TOPOLOGY,
                feature::CONFIG_WCE,
                feature::MQ,
                feature::DISCARD,
                feature::WRITE_ZEROES,
            ]),
            queue_size: DEFAULT_QUEUE_SIZE,
            max_queues: u16::MAX,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

#[derive(Debug)]
struct InFlight {
    tag: Tag,
    slot: u16,
    /// A page allocated for this request (discard segments), freed on
    /// completion.
    extra: Option<(GuestAddress, u64)>,
    writable: u64,
    get_id: bool,
}

#[derive(Debug)]
struct BlkQueue {
    index: u16,
    vq: SplitQueue,
    slots: GuestAddress,
    free_slots: Vec<u16>,
    /// By head descriptor index.
    in_flight: Vec<Option<InFlight>>,
    live: usize,
    unkicked: bool,
}

impl BlkQueue {
    fn slot_addr(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.slots.0 + SLOT * u64::from(slot))
    }
}

/// An initialized virtio-blk device.
#[derive(Debug)]
pub struct Blk {
    dev: VirtioDevice,
    mem: Arc<GuestMemoryMmap<()>>,
    config: BlkConfig,
    limits: Limits,
    queues: Vec<BlkQueue>,
    timeout: Duration,
    next_tag: u64,
    next_queue: usize,
    /// Completions collected while waiting for a particular one.
    stash: Vec<Completion>,
}

impl Blk {
    /// §5.2.5 initialization of `dev_num` with the default options: every
    /// feature this frontend knows, all queues, DRIVER_OK.
    pub fn open(drv: Driver, dev_num: u16) -> Result<Self, BlkError> {
        Self::open_with(drv, dev_num, &BlkOptions::default())
    }

    /// §5.2.5 initialization with explicit options.
    pub fn open_with(drv: Driver, dev_num: u16, opts: &BlkOptions) -> Result<Self, BlkError> {
        let probed = VirtioDevice::probe(drv, dev_num)?;
        let info = *probed.info();
        if info.device_id != VIRTIO_ID_BLOCK {
            return Err(BlkError::NotBlk(info.device_id));
        }
        if info.config_size < 8 {
            return Err(BlkError::ConfigTooSmall(info.config_size));
        }
        let mut dev = VirtioDevice::initialize(probed.into_driver(), dev_num, &opts.features)?;
        // Config fields are read after FEATURES_OK, when they are final.
        let len = (info.config_size as usize).min(CONFIG_LEN);
        let config = BlkConfig::parse(&dev.read_config(0, len)?);
        let negotiated = dev.negotiated().clone();
        let wanted_queues = if negotiated.contains(feature::MQ) {
            config.num_queues.max(1)
        } else {
            1
        };
        let n = u32::from(wanted_queues.min(opts.max_queues.max(1))).min(info.max_virtqueues);
        if n == 0 {
            return Err(BlkError::Device("the device has no virtqueue".into()));
        }
        let mem = dev.driver().memory();
        let mut queues = Vec::with_capacity(n as usize);
        for i in 0..n {
            let vq = dev.setup_queue(i, opts.queue_size)?;
            let size = vq.layout().size;
            let slots = dev.allocator().alloc(SLOT * u64::from(size), 64)?;
            queues.push(BlkQueue {
                index: i as u16,
                vq,
                slots,
                free_slots: (0..size).rev().collect(),
                in_flight: (0..size).map(|_| None).collect(),
                live: 0,
                unkicked: false,
            });
        }
        let queue_size = queues
            .first()
            .map_or(opts.queue_size, |q| u32::from(q.vq.layout().size));
        let limits = Limits::new(&config, &negotiated, queue_size);
        dev.driver_ok()?;
        Ok(Blk {
            dev,
            mem,
            config,
            limits,
            queues,
            timeout: opts.timeout,
            next_tag: 1,
            next_queue: 0,
            stash: Vec::new(),
        })
    }

    /// The underlying device.
    pub fn device(&mut self) -> &mut VirtioDevice {
        &mut self.dev
    }

    /// The config space as read at initialization.
    pub fn config(&self) -> &BlkConfig {
        &self.config
    }

    /// Re-reads the config space (e.g. after an EVENT_CONFIG).
    pub fn reread_config(&mut self) -> Result<BlkConfig, BlkError> {
        let len = (self.dev.info().config_size as usize).min(CONFIG_LEN);
        self.config = BlkConfig::parse(&self.dev.read_config(0, len)?);
        let size = u32::from(self.queues[0].vq.layout().size);
        self.limits = Limits::new(&self.config, self.dev.negotiated(), size);
        Ok(self.config)
    }

    /// What the driver may do.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.limits.capacity
    }

    /// Features accepted with FEATURES_OK.
    pub fn negotiated(&self) -> &FeatureSet {
        self.dev.negotiated()
    }

    /// Number of request queues in use.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Size of each queue.
    pub fn queue_size(&self) -> u16 {
        self.queues[0].vq.layout().size
    }

    /// The driver's guest memory.
    pub fn memory(&self) -> &Arc<GuestMemoryMmap<()>> {
        &self.mem
    }

    /// Bound on each wait for a completion.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Allocates a page-aligned guest buffer of `len` bytes.
    pub fn alloc_buf(&mut self, len: u32) -> Result<GuestBuf, BlkError> {
        let addr = self.dev.allocator().alloc(u64::from(len.max(1)), 4096)?;
        Ok(GuestBuf { addr, len })
    }

    /// Returns a buffer from [`Blk::alloc_buf`].
    pub fn free_buf(&mut self, buf: GuestBuf) -> Result<(), BlkError> {
        self.dev
            .allocator()
            .free(buf.addr, u64::from(buf.len.max(1)))?;
        Ok(())
    }

    /// Copies `data` into the start of `buf`.
    pub fn write_buf(&self, buf: GuestBuf, data: &[u8]) -> Result<(), BlkError> {
        if data.len() > buf.len as usize {
            return Err(BlkError::Invalid(format!(
                "{} bytes do not fit a {}-byte buffer",
                data.len(),
                buf.len
            )));
        }
        self.mem.write_slice(data, buf.addr)?;
        Ok(())
    }

    /// Copies the start of `buf` into `out`.
    pub fn read_buf(&self, buf: GuestBuf, out: &mut [u8]) -> Result<(), BlkError> {
        if out.len() > buf.len as usize {
            return Err(BlkError::Invalid(format!(
                "{} bytes do not fit a {}-byte buffer",
                out.len(),
                buf.len
            )));
        }
        self.mem.read_slice(out, buf.addr)?;
        Ok(())
    }

    /// Requests submitted and not yet collected, on every queue.
    pub fn in_flight(&self) -> usize {
        self.queues.iter().map(|q| q.live).sum::<usize>() + self.stash.len()
    }

    /// Requests in flight on queue `q`.
    pub fn in_flight_on(&self, q: u16) -> usize {
        self.queues.get(usize::from(q)).map_or(0, |q| q.live)
    }

    /// Free descriptors of queue `q`.
    pub fn free_descriptors(&self, q: u16) -> usize {
        self.queues
            .get(usize::from(q))
            .map_or(0, |q| q.vq.num_free())
    }

    /// Descriptors `req` takes (header + data pieces + status).
    pub fn descriptors_for(&self, req: &Request) -> usize {
        let pieces = |b: &GuestBuf| self.split(*b).len();
        2 + match req {
            Request::Read { buf, .. } | Request::Write { buf, .. } => pieces(buf),
            Request::Flush => 0,
            Request::GetId | Request::Discard(_) | Request::WriteZeroes(_) => 1,
            Request::Raw(r) => r.readable.len() + r.writable.len(),
        }
    }

    /// Splits a buffer into descriptors of at most `size_max` bytes.
    fn split(&self, b: GuestBuf) -> Vec<GuestBuf> {
        let max = self.limits.size_max.max(1);
        if b.len <= max {
            return vec![b];
        }
        let mut out = Vec::new();
        let mut off = 0u32;
        while off < b.len {
            let n = (b.len - off).min(max);
            out.push(GuestBuf {
                addr: GuestAddress(b.addr.0 + u64::from(off)),
                len: n,
            });
            off += n;
        }
        out
    }

    /// Checks `req` against the driver rules of §5.2.6.1 and the limits.
    fn check(&self, req: &Request) -> Result<(), BlkError> {
        let bad = |m: String| Err(BlkError::Invalid(m));
        let l = &self.limits;
        match req {
            Request::Read { buf, .. } | Request::Write { buf, .. } => {
                if buf.len == 0 || u64::from(buf.len) % SECTOR_SIZE != 0 {
                    return bad(format!(
                        "{} of {} bytes: not a non-zero multiple of 512",
                        req.name(),
                        buf.len
                    ));
                }
                let pieces = self.split(*buf).len();
                if pieces > l.seg_max as usize {
                    return bad(format!(
                        "{} of {} bytes needs {pieces} segments, seg_max is {}",
                        req.name(),
                        buf.len,
                        l.seg_max
                    ));
                }
                if matches!(req, Request::Write { .. }) && l.read_only {
                    return bad("OUT on a read-only device (VIRTIO_BLK_F_RO)".into());
                }
            }
            Request::Flush if !l.flush => {
                return bad("FLUSH without VIRTIO_BLK_F_FLUSH".into());
            }
            Request::Discard(segs) => {
                let Some(d) = l.discard else {
                    return bad("DISCARD without VIRTIO_BLK_F_DISCARD".into());
                };
                check_segments("DISCARD", segs, d.max_seg, d.max_sectors)?;
                if segs.iter().any(|s| s.flags != 0) {
                    return bad("DISCARD segments must not carry flags (unmap)".into());
                }
            }
            Request::WriteZeroes(segs) => {
                let Some(w) = l.write_zeroes else {
                    return bad("WRITE_ZEROES without VIRTIO_BLK_F_WRITE_ZEROES".into());
                };
                check_segments("WRITE_ZEROES", segs, w.max_seg, w.max_sectors)?;
                if segs.iter().any(|s| s.flags & !WRITE_ZEROES_FLAG_UNMAP != 0) {
                    return bad("WRITE_ZEROES segment with an unknown flag".into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Posts `req` on queue `q` without notifying the device (see
    /// [`Blk::kick`]). Checked against the driver rules unless it is
    /// [`Request::Raw`].
    pub fn submit(&mut self, q: u16, req: &Request) -> Result<Tag, BlkError> {
        if usize::from(q) >= self.queues.len() {
            return Err(BlkError::NoQueue(q));
        }
        self.check(req)?;
        let need = self.descriptors_for(req);
        let (rtype, reserved, sector) = match req {
            Request::Read { sector, .. } => (req::IN, 0, *sector),
            Request::Write { sector, .. } => (req::OUT, 0, *sector),
            Request::Flush => (req::FLUSH, 0, 0),
            Request::GetId => (req::GET_ID, 0, 0),
            Request::Discard(_) => (req::DISCARD, 0, 0),
            Request::WriteZeroes(_) => (req::WRITE_ZEROES, 0, 0),
            Request::Raw(r) => (r.rtype, r.reserved, r.sector),
        };
        // Data descriptors, built before taking a slot.
        let mut readable: Vec<GuestBuf> = Vec::new();
        let mut writable: Vec<GuestBuf> = Vec::new();
        let mut extra = None;
        match req {
            Request::Read { buf, .. } => writable = self.split(*buf),
            Request::Write { buf, .. } => readable = self.split(*buf),
            Request::Flush | Request::GetId => {}
            Request::Discard(segs) | Request::WriteZeroes(segs) => {
                let bytes: Vec<u8> = segs.iter().flat_map(Segment::encode).collect();
                let len = bytes.len().max(1) as u64;
                let page = self.dev.allocator().alloc(len, 16)?;
                self.mem.write_slice(&bytes, page)?;
                extra = Some((page, len));
                readable.push(GuestBuf {
                    addr: page,
                    len: bytes.len() as u32,
                });
            }
            Request::Raw(r) => {
                readable.clone_from(&r.readable);
                writable.clone_from(&r.writable);
            }
        }
        let queue = &mut self.queues[usize::from(q)];
        let slot = match queue.free_slots.pop() {
            Some(s) if queue.vq.num_free() >= need => s,
            other => {
                if let Some(s) = other {
                    queue.free_slots.push(s);
                }
                if let Some((a, n)) = extra {
                    self.dev.allocator().free(a, n)?;
                }
                return Err(BlkError::QueueFull { queue: q, need });
            }
        };
        let base = queue.slot_addr(slot);
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&rtype.to_le_bytes());
        header[4..8].copy_from_slice(&reserved.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&header, base)?;
        let status_addr = GuestAddress(base.0 + STATUS_OFF);
        self.mem.write_obj(STATUS_UNWRITTEN, status_addr)?;
        let get_id = matches!(req, Request::GetId);
        if get_id {
            let id = GuestAddress(base.0 + ID_OFF);
            self.mem.write_slice(&[0u8; ID_BYTES], id)?;
            writable.push(GuestBuf {
                addr: id,
                len: ID_BYTES as u32,
            });
        }
        let mut chain = Vec::with_capacity(need);
        chain.push(Buffer {
            addr: base,
            len: 16,
            writable: false,
        });
        chain.extend(readable.iter().map(|b| Buffer {
            addr: b.addr,
            len: b.len,
            writable: false,
        }));
        chain.extend(writable.iter().map(|b| Buffer {
            addr: b.addr,
            len: b.len,
            writable: true,
        }));
        chain.push(Buffer {
            addr: status_addr,
            len: 1,
            writable: true,
        });
        let writable_len = chain
            .iter()
            .filter(|b| b.writable)
            .map(|b| u64::from(b.len))
            .sum();
        let head = match queue.vq.add(&chain) {
            Ok(h) => h,
            Err(e) => {
                queue.free_slots.push(slot);
                if let Some((a, n)) = extra {
                    self.dev.allocator().free(a, n)?;
                }
                return Err(e.into());
            }
        };
        let tag = Tag(self.next_tag);
        self.next_tag += 1;
        queue.in_flight[usize::from(head)] = Some(InFlight {
            tag,
            slot,
            extra,
            writable: writable_len,
            get_id,
        });
        queue.live += 1;
        queue.unkicked = true;
        Ok(tag)
    }

    /// The queue the next request should go to: round robin over the
    /// queues with room for `need` descriptors, `None` if all are full.
    pub fn pick_queue(&mut self, need: usize) -> Option<u16> {
        let n = self.queues.len();
        for i in 0..n {
            let q = (self.next_queue + i) % n;
            let queue = &self.queues[q];
            if queue.vq.num_free() >= need && !queue.free_slots.is_empty() {
                self.next_queue = (q + 1) % n;
                return Some(q as u16);
            }
        }
        None
    }

    /// Posts `req` on the next queue with room (round robin).
    pub fn submit_any(&mut self, req: &Request) -> Result<Tag, BlkError> {
        let need = self.descriptors_for(req);
        match self.pick_queue(need) {
            Some(q) => self.submit(q, req),
            None => Err(BlkError::QueueFull {
                queue: self.next_queue as u16,
                need,
            }),
        }
    }

    /// Notifies the device of every queue with unannounced requests (when
    /// the ring says it wants a notification).
    pub fn kick(&mut self) -> Result<(), BlkError> {
        for q in &mut self.queues {
            if q.unkicked {
                q.unkicked = false;
                self.dev.kick(&mut q.vq)?;
            }
        }
        Ok(())
    }

    /// Collects completed requests without blocking; returns how many were
    /// appended to `out`.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize, BlkError> {
        let before = out.len();
        out.append(&mut self.stash);
        for qi in 0..self.queues.len() {
            loop {
                let queue = &mut self.queues[qi];
                let Some(used) = queue.vq.pop_used()? else {
                    break;
                };
                let Some(f) = queue
                    .in_flight
                    .get_mut(usize::from(used.head))
                    .and_then(Option::take)
                else {
                    return Err(BlkError::Device(format!(
                        "queue {qi}: used head {} has no request",
                        used.head
                    )));
                };
                queue.live -= 1;
                let base = queue.slot_addr(f.slot);
                let st: u8 = self.mem.read_obj(GuestAddress(base.0 + STATUS_OFF))?;
                queue.free_slots.push(f.slot);
                let index = queue.index;
                if let Some((a, n)) = f.extra {
                    self.dev.allocator().free(a, n)?;
                }
                out.push(Completion {
                    tag: f.tag,
                    queue: index,
                    status: st,
                    used_len: used.len,
                    writable_len: f.writable,
                    id_addr: f.get_id.then_some(GuestAddress(base.0 + ID_OFF)),
                });
            }
        }
        Ok(out.len() - before)
    }

    /// Blocks (up to the timeout) until at least one request completes;
    /// returns how many were appended to `out`.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> Result<usize, BlkError> {
        let timeout = self.timeout;
        self.wait_timeout(out, timeout)
    }

    /// [`Blk::wait`] with an explicit bound.
    pub fn wait_timeout(
        &mut self,
        out: &mut Vec<Completion>,
        timeout: Duration,
    ) -> Result<usize, BlkError> {
        let deadline = Instant::now() + timeout;
        let dev = self.dev.dev_num();
        let ours = move |e: &Event| matches!(e, Event::Used { dev_num, .. } if *dev_num == dev);
        loop {
            // EVENT_USED received so far is accounted for by the ring check
            // below; one arriving after it wakes the wait.
            self.dev.driver_mut().take_events_where(ours);
            for q in &mut self.queues {
                q.vq.enable_notifications()?;
            }
            let n = self.poll(out)?;
            if n > 0 {
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BlkError::Timeout(timeout));
            }
            self.dev
                .driver_mut()
                .wait_event_where(ours, POLL_INTERVAL.min(deadline - now))?;
        }
    }

    /// Waits for the request `tag` (other completions are kept for the
    /// next [`Blk::poll`]).
    pub fn wait_for(&mut self, tag: Tag) -> Result<Completion, BlkError> {
        if let Some(i) = self.stash.iter().position(|c| c.tag == tag) {
            return Ok(self.stash.remove(i));
        }
        let deadline = Instant::now() + self.timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BlkError::Timeout(self.timeout));
            }
            // Completions of other requests collected here are kept aside.
            let mut fresh = Vec::new();
            let timeout = self.timeout;
            match self.wait_timeout(&mut fresh, left) {
                Ok(_) => {}
                Err(BlkError::Timeout(_)) => {
                    self.stash.append(&mut got);
                    return Err(BlkError::Timeout(timeout));
                }
                Err(e) => return Err(e),
            }
            got.append(&mut fresh);
            if let Some(i) = got.iter().position(|c| c.tag == tag) {
                let c = got.remove(i);
                self.stash.append(&mut got);
                return Ok(c);
            }
        }
    }

    /// Submits `req` on queue `q`, notifies and waits for it.
    pub fn execute_on(&mut self, q: u16, req: &Request) -> Result<Completion, BlkError> {
        let tag = self.submit(q, req)?;
        self.kick()?;
        self.wait_for(tag)
    }

    /// Submits `req` on the next queue (round robin), notifies and waits.
    pub fn execute(&mut self, req: &Request) -> Result<Completion, BlkError> {
        let need = self.descriptors_for(req);
        let q = self.pick_queue(need).ok_or(BlkError::QueueFull {
            queue: self.next_queue as u16,
            need,
        })?;
        self.execute_on(q, req)
    }

    /// The GET_ID bytes of a completed [`Request::GetId`]. Valid until the
    /// request's slot is reused by the next submission on its queue.
    pub fn id_of(&self, c: &Completion) -> Result<[u8; ID_BYTES], BlkError> {
        let addr = c
            .id_addr
            .ok_or_else(|| BlkError::Invalid("not a GET_ID completion".into()))?;
        let mut id = [0u8; ID_BYTES];
        self.mem.read_slice(&mut id, addr)?;
        Ok(id)
    }

    fn ok(what: &'static str, c: Completion) -> Result<Completion, BlkError> {
        if c.is_ok() {
            Ok(c)
        } else {
            Err(BlkError::Status {
                what,
                status: c.status,
            })
        }
    }

    /// Reads `out.len()` bytes (a multiple of 512) at `sector`, in requests
    /// of at most the negotiated size, spread over the queues.
    pub fn read(&mut self, sector: u64, out: &mut [u8]) -> Result<(), BlkError> {
        self.transfer(sector, Dir::Read(out))
    }

    /// Writes `data` (a multiple of 512 bytes) at `sector`.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlkError> {
        self.transfer(sector, Dir::Write(data))
    }

    fn transfer(&mut self, sector: u64, mut dir: Dir<'_>) -> Result<(), BlkError> {
        let total = dir.len();
        if total as u64 % SECTOR_SIZE != 0 {
            return Err(BlkError::Invalid(format!(
                "{total} bytes: not a multiple of 512"
            )));
        }
        if total == 0 {
            return Ok(());
        }
        let chunk = (self.limits.max_request_bytes().min(1 << 20) as usize).min(total);
        let staging = self.alloc_buf(chunk as u32)?;
        let result = self.transfer_via(sector, &mut dir, staging, chunk);
        self.free_buf(staging)?;
        result
    }

    fn transfer_via(
        &mut self,
        sector: u64,
        dir: &mut Dir<'_>,
        staging: GuestBuf,
        chunk: usize,
    ) -> Result<(), BlkError> {
        let total = dir.len();
        let mut done = 0usize;
        while done < total {
            let n = chunk.min(total - done);
            let buf = staging.prefix(n as u32);
            let s = sector + (done as u64) / SECTOR_SIZE;
            match dir {
                Dir::Read(out) => {
                    let c = self.execute(&Request::Read { sector: s, buf })?;
                    Self::ok("IN", c)?;
                    self.mem
                        .read_slice(&mut out[done..done + n], staging.addr)?;
                }
                Dir::Write(data) => {
                    self.mem.write_slice(&data[done..done + n], staging.addr)?;
                    let c = self.execute(&Request::Write { sector: s, buf })?;
                    Self::ok("OUT", c)?;
                }
            }
            done += n;
        }
        Ok(())
    }

    /// FLUSH: every write completed before it is stable once it completes.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        let c = self.execute(&Request::Flush)?;
        Self::ok("FLUSH", c).map(|_| ())
    }

    /// FLUSH on every queue: each makes the writes completed before it
    /// stable. Waits for all of them.
    pub fn flush_all(&mut self) -> Result<(), BlkError> {
        let mut tags = Vec::new();
        for q in 0..self.num_queues() {
            tags.push(self.submit(q, &Request::Flush)?);
        }
        self.kick()?;
        for t in tags {
            let c = self.wait_for(t)?;
            Self::ok("FLUSH", c)?;
        }
        Ok(())
    }

    /// DISCARD of `segs`.
    pub fn discard(&mut self, segs: &[Segment]) -> Result<(), BlkError> {
        let c = self.execute(&Request::Discard(segs.to_vec()))?;
        Self::ok("DISCARD", c).map(|_| ())
    }

    /// WRITE_ZEROES of `segs` (use [`Segment::unmap`] to allow deallocation).
    pub fn write_zeroes(&mut self, segs: &[Segment]) -> Result<(), BlkError> {
        let c = self.execute(&Request::WriteZeroes(segs.to_vec()))?;
        Self::ok("WRITE_ZEROES", c).map(|_| ())
    }

    /// GET_ID: the 20-byte identifier (NUL-padded when shorter).
    pub fn get_id(&mut self) -> Result<[u8; ID_BYTES], BlkError> {
        let c = self.execute(&Request::GetId)?;
        let c = Self::ok("GET_ID", c)?;
        self.id_of(&c)
    }

    /// GET_ID as a string: the bytes up to the first NUL.
    pub fn serial(&mut self) -> Result<String, BlkError> {
        let id = self.get_id()?;
        let end = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        Ok(String::from_utf8_lossy(&id[..end]).into_owned())
    }

    /// Switches the cache mode through `writeback` (CONFIG_WCE, §5.2.5).
    pub fn set_writeback(&mut self, writeback: bool) -> Result<(), BlkError> {
        if !self.limits.config_wce {
            return Err(BlkError::Invalid(
                "writeback is writable only with VIRTIO_BLK_F_CONFIG_WCE".into(),
            ));
        }
        self.dev
            .write_config(offset::WRITEBACK, &[u8::from(writeback)])?;
        self.config.writeback = u8::from(writeback);
        Ok(())
    }

    /// Resets the device and returns the session.
    pub fn close(mut self) -> Result<Driver, BlkError> {
        self.dev.reset()?;
        Ok(self.dev.into_driver())
    }
}

enum Dir<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Dir<'_> {
    fn len(&self) -> usize {
        match self {
            Dir::Read(b) => b.len(),
            Dir::Write(b) => b.len(),
        }
    }
}

fn check_segments(
    what: &str,
    segs: &[Segment],
    max_seg: u32,
    max_sectors: u32,
) -> Result<(), BlkError> {
    if segs.is_empty() || segs.len() > max_seg as usize {
        return Err(BlkError::Invalid(format!(
            "{what} with {} segments (1..={max_seg} allowed)",
            segs.len()
        )));
    }
    if let Some(s) = segs.iter().find(|s| s.num_sectors > max_sectors) {
        return Err(BlkError::Invalid(format!(
            "{what} segment of {} sectors (at most {max_sectors})",
            s.num_sectors
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDevice, FakeDeviceBus};
    use crate::fake_blk::{BlkQuirks, FakeBlk};

    /// The frontend on the test-only fake disk (2048 sectors, 2 queues).
    fn fake(read_only: bool) -> (FakeDeviceBus, Blk) {
        let bus = FakeDeviceBus::new(FakeDevice::blk(
            1,
            264,
            FakeBlk::new(2048, read_only, BlkQuirks::default()),
        ));
        let drv = Driver::new(Box::new(bus.clone())).expect("session");
        let opts = BlkOptions {
            queue_size: 16,
            timeout: Duration::from_secs(2),
            ..BlkOptions::default()
        };
        let disk = Blk::open_with(drv, 1, &opts).expect("open");
        (bus, disk)
    }

    #[test]
    fn blocking_helpers_on_the_fake() {
        let (bus, mut disk) = fake(false);
        assert_eq!(disk.capacity(), 2048);
        assert_eq!(disk.num_queues(), 2);
        assert_eq!(disk.serial().expect("GET_ID"), "fake-disk");
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        disk.write(10, &data).expect("write");
        let mut back = vec![0u8; 8192];
        disk.read(10, &mut back).expect("read");
        assert_eq!(back, data);
        disk.write_zeroes(&[Segment::unmap(11, 2)]).expect("zeroes");
        disk.discard(&[Segment::new(100, 8)]).expect("discard");
        disk.flush_all().expect("flush");
        let d = bus.device();
        let img = &d.blk.as_ref().expect("blk").disk;
        assert!(img[10 * 512..11 * 512] == data[..512], "sector 10 written");
        assert!(img[11 * 512..13 * 512].iter().all(|&b| b == 0), "zeroed");
        assert!(img[13 * 512..26 * 512] == data[3 * 512..], "sectors 13..26");
    }

    #[test]
    fn requests_in_flight_spread_over_queues() {
        let (_bus, mut disk) = fake(false);
        let buf = disk.alloc_buf(512).expect("buf");
        // 16-entry queues, 3 descriptors per read: 5 per queue fit.
        let mut tags = Vec::new();
        loop {
            match disk.submit_any(&Request::Read { sector: 1, buf }) {
                Ok(t) => tags.push(t),
                Err(BlkError::QueueFull { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(tags.len(), 10);
        assert_eq!((disk.in_flight_on(0), disk.in_flight_on(1)), (5, 5));
        disk.kick().expect("kick");
        let mut done = Vec::new();
        while done.len() < tags.len() {
            disk.wait(&mut done).expect("wait");
        }
        assert!(done.iter().all(|c| c.is_ok() && c.used_len == 513));
        assert_eq!(disk.in_flight(), 0);
        // Everything was given back: the queues take as many again.
        assert_eq!(disk.free_descriptors(0), 16);
    }

    #[test]
    fn driver_rules_are_checked_before_sending() {
        let (bus, mut disk) = fake(true);
        let sent = bus.device().received.len();
        let buf = disk.alloc_buf(4096).expect("buf");
        for r in [
            Request::Read {
                sector: 0,
                buf: buf.prefix(100),
            },
            Request::Write { sector: 0, buf },
            Request::Discard(vec![Segment::unmap(0, 1)]),
            Request::Discard(vec![]),
            Request::WriteZeroes(vec![Segment {
                sector: 0,
                num_sectors: 1,
                flags: 2,
            }]),
            Request::WriteZeroes(vec![Segment::new(0, 5000)]),
        ] {
            assert!(
                matches!(disk.submit(0, &r), Err(BlkError::Invalid(_))),
                "{r:?} refused"
            );
        }
        assert!(matches!(
            disk.submit(7, &Request::Flush),
            Err(BlkError::NoQueue(7))
        ));
        assert_eq!(disk.in_flight(), 0);
        assert_eq!(bus.device().received.len(), sent, "nothing was sent");
        // A read-only disk still takes a FLUSH.
        disk.flush().expect("flush");
    }

    fn config_bytes() -> Vec<u8> {
        let mut b = vec![0u8; CONFIG_LEN];
        b[0..8].copy_from_slice(&(1u64 << 21).to_le_bytes());
        b[8..12].copy_from_slice(&65536u32.to_le_bytes());
        b[12..16].copy_from_slice(&126u32.to_le_bytes());
        b[16..18].copy_from_slice(&2080u16.to_le_bytes());
        b[18] = 16;
        b[19] = 63;
        b[20..24].copy_from_slice(&4096u32.to_le_bytes());
        b[24] = 3;
        b[26..28].copy_from_slice(&8u16.to_le_bytes());
        b[32] = 1;
        b[34..36].copy_from_slice(&4u16.to_le_bytes());
        b[36..40].copy_from_slice(&1000u32.to_le_bytes());
        b[40..44].copy_from_slice(&32u32.to_le_bytes());
        b[44..48].copy_from_slice(&8u32.to_le_bytes());
        b[48..52].copy_from_slice(&2000u32.to_le_bytes());
        b[52..56].copy_from_slice(&16u32.to_le_bytes());
        b[56] = 1;
        b
    }

    #[test]
    fn config_is_decoded_little_endian() {
        let c = BlkConfig::parse(&config_bytes());
        assert_eq!(c.capacity, 1 << 21);
        assert_eq!((c.size_max, c.seg_max), (65536, 126));
        assert_eq!(
            c.geometry,
            Geometry {
                cylinders: 2080,
                heads: 16,
                sectors: 63
            }
        );
        assert_eq!(
            (c.blk_size, c.physical_block_exp, c.min_io_size),
            (4096, 3, 8)
        );
        assert_eq!((c.writeback, c.num_queues), (1, 4));
        assert_eq!(
            (
                c.max_discard_sectors,
                c.max_discard_seg,
                c.discard_sector_alignment
            ),
            (1000, 32, 8)
        );
        assert_eq!(
            (
                c.max_write_zeroes_sectors,
                c.max_write_zeroes_seg,
                c.write_zeroes_may_unmap
            ),
            (2000, 16, 1)
        );
        // A short config space reads as zeroes beyond its end.
        let short = BlkConfig::parse(&config_bytes()[..8]);
        assert_eq!(short.capacity, 1 << 21);
        assert_eq!(short.seg_max, 0);
    }

    #[test]
    fn limits_follow_the_negotiated_features() {
        let c = BlkConfig::parse(&config_bytes());
        let none = Limits::new(&c, &FeatureSet::from_bits(&[32]), 64);
        assert_eq!(none.seg_max, 62, "queue size - 2 without SEG_MAX");
        assert_eq!(none.size_max, UNLIMITED_SEGMENT);
        assert_eq!(none.blk_size, 512);
        assert!(!none.flush && !none.read_only);
        assert_eq!((none.discard, none.write_zeroes), (None, None));
        let all = Limits::new(
            &c,
            &FeatureSet::from_bits(&[
                feature::SEG_MAX,
                feature::SIZE_MAX,
                feature::BLK_SIZE,
                feature::FLUSH,
                feature::RO,
                feature::DISCARD,
                feature::WRITE_ZEROES,
            ]),
            256,
        );
        assert_eq!(
            (all.seg_max, all.size_max, all.blk_size),
            (126, 65536, 4096)
        );
        assert!(all.flush && all.read_only);
        assert_eq!(all.discard.map(|d| d.max_seg), Some(32));
        assert_eq!(all.write_zeroes.map(|w| w.may_unmap), Some(true));
        assert_eq!(all.max_request_bytes(), 126 * 65536);
        // SEG_MAX larger than the ring allows is capped by the ring.
        let small = Limits::new(&c, &FeatureSet::from_bits(&[feature::SEG_MAX]), 8);
        assert_eq!(small.seg_max, 6);
    }

    #[test]
    fn segments_encode_as_the_spec_layout() {
        let s = Segment::unmap(0x0102_0304_0506_0708, 0x0A0B_0C0D);
        assert_eq!(
            s.encode(),
            [8, 7, 6, 5, 4, 3, 2, 1, 0x0D, 0x0C, 0x0B, 0x0A, 1, 0, 0, 0]
        );
        assert!(check_segments("DISCARD", &[], 4, 8).is_err());
        assert!(check_segments("DISCARD", &[Segment::new(0, 9)], 4, 8).is_err());
        assert!(check_segments("DISCARD", &[Segment::new(0, 8); 5], 4, 8).is_err());
        assert!(check_segments("DISCARD", &[Segment::new(0, 8); 4], 4, 8).is_ok());
    }
}
