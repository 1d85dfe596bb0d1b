//! virtio-i2c frontend (virtio device id 34), written from virtio 1.3
//! §5.19: one request queue, no config space, the mandatory feature
//! `VIRTIO_I2C_F_ZERO_LENGTH_REQUEST` (a driver MUST accept it and abort if
//! the device does not offer it).
//!
//! A request is `virtio_i2c_out_hdr { le16 addr; le16 padding; le32 flags }`
//! (device-readable), an optional buffer (device-readable for a write,
//! device-writable for a read), and a one-byte status (device-writable).
//! A 7-bit address goes in bits 7..1 of `addr`. A transaction is a run of
//! requests each but the last carrying `VIRTIO_I2C_FLAGS_FAIL_NEXT`;
//! `VIRTIO_I2C_FLAGS_M_RD` marks reads. [`I2c::transfer`] posts one
//! transaction and waits for all of it; [`I2c::execute_raw`] posts
//! requests built freely (for the conformance cases that break rules).
//! Status bytes are preset to [`STATUS_UNWRITTEN`] so an unwritten one
//! shows.

use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use crate::device::{FeatureSet, InitError, VirtioDevice};
use crate::driver::Driver;
use crate::mem::AllocError;
use crate::virtq::{Buffer, SplitQueue, VirtqError};

/// Virtio device id of an I²C adapter.
pub const VIRTIO_ID_I2C_ADAPTER: u32 = 34;
/// Feature bit: zero-length requests and the M_RD flag (mandatory).
pub const F_ZERO_LENGTH_REQUEST: u32 = 0;
/// `flags`: the next request belongs to this transaction.
pub const FLAGS_FAIL_NEXT: u32 = 1 << 0;
/// `flags`: a read request.
pub const FLAGS_M_RD: u32 = 1 << 1;
/// Status: success.
pub const MSG_OK: u8 = 0;
/// Status: error.
pub const MSG_ERR: u8 = 1;
/// What a status byte reads before the device wrote it.
pub const STATUS_UNWRITTEN: u8 = 0xFF;
/// Queue size requested (capped by the device's max_size).
const QUEUE_SIZE: u32 = 256;

/// virtio-i2c errors.
#[derive(Debug, thiserror::Error)]
pub enum I2cError {
    /// Initialization or transport failure.
    #[error(transparent)]
    Init(#[from] InitError),
    /// The device is not an I²C adapter.
    #[error("device_id {0} is not virtio-i2c (34)")]
    NotI2c(u32),
    /// The device does not offer the mandatory feature (§5.19.6.1: the
    /// driver aborts).
    #[error("the device does not offer VIRTIO_I2C_F_ZERO_LENGTH_REQUEST")]
    NoZeroLength,
    /// Queue failure.
    #[error(transparent)]
    Virtq(#[from] VirtqError),
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Guest memory allocation failed.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// A request the driver rules forbid (an empty transaction, an address
    /// beyond 7 bits).
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// `virtio_i2c_out_hdr` bytes for a 7-bit address and flags.
pub fn out_hdr(addr7: u16, flags: u32) -> Vec<u8> {
    raw_out_hdr(addr7 << 1, flags)
}

/// `virtio_i2c_out_hdr` bytes with `addr` exactly as given.
pub fn raw_out_hdr(addr: u16, flags: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(8);
    h.extend_from_slice(&addr.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h
}

/// One segment of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write these bytes (empty: a zero-length write).
    Write(Vec<u8>),
    /// Read this many bytes (0: a zero-length read).
    Read(u32),
}

/// A segment addressed to a 7-bit target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// 7-bit address.
    pub addr: u16,
    /// What to do.
    pub op: Op,
}

impl Segment {
    /// A write of `data` to `addr`.
    pub fn write(addr: u16, data: &[u8]) -> Self {
        Segment {
            addr,
            op: Op::Write(data.to_vec()),
        }
    }
    /// A read of `len` bytes from `addr`.
    pub fn read(addr: u16, len: u32) -> Self {
        Segment {
            addr,
            op: Op::Read(len),
        }
    }
}

/// The device's answer to one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status byte ([`STATUS_UNWRITTEN`] if the device did not write it).
    pub status: u8,
    /// The used length the device reported.
    pub used_len: u32,
    /// For a read: the buffer as the device left it (use only on OK).
    pub data: Vec<u8>,
}

impl Reply {
    /// Status OK.
    pub fn ok(&self) -> bool {
        self.status == MSG_OK
    }
}

/// A request built freely: any header bytes, any buffers, with or without
/// the status byte. Buffers go in this order: `header`, `readable`,
/// `writable`, status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRequest {
    /// Device-readable header bytes (8 for a well-formed request).
    pub header: Vec<u8>,
    /// Further device-readable buffers.
    pub readable: Vec<Vec<u8>>,
    /// Device-writable buffer lengths before the status byte.
    pub writable: Vec<u32>,
    /// Append the one-byte device-writable status buffer.
    pub status: bool,
}

impl RawRequest {
    /// The request [`I2c::transfer`] posts for `seg`, with `flags` added.
    pub fn for_segment(seg: &Segment, flags: u32) -> Self {
        match &seg.op {
            Op::Write(d) => RawRequest {
                header: out_hdr(seg.addr, flags),
                readable: if d.is_empty() {
                    vec![]
                } else {
                    vec![d.clone()]
                },
                writable: vec![],
                status: true,
            },
            Op::Read(n) => RawRequest {
                header: out_hdr(seg.addr, flags | FLAGS_M_RD),
                readable: vec![],
                writable: if *n == 0 { vec![] } else { vec![*n] },
                status: true,
            },
        }
    }
}

/// What became of a raw request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The status byte, if the request had one.
    pub status: Option<u8>,
    /// The used length.
    pub used_len: u32,
    /// The device-readable buffers (header first) as they are after
    /// completion (a device must not change them).
    pub readable_after: Vec<Vec<u8>>,
    /// The device-writable buffers (status excluded) after completion.
    pub writable_after: Vec<Vec<u8>>,
}

/// Options of [`I2c::open_with`].
#[derive(Debug, Clone)]
pub struct I2cOptions {
    /// Device-specific feature bits wanted.
    pub features: FeatureSet,
    /// Bound on the wait for each completion.
    pub timeout: Duration,
}

impl Default for I2cOptions {
    fn default() -> Self {
        I2cOptions {
            features: FeatureSet::from_bits(&[F_ZERO_LENGTH_REQUEST]),
            timeout: Duration::from_secs(5),
        }
    }
}

/// An initialized virtio-i2c adapter.
#[derive(Debug)]
pub struct I2c {
    dev: VirtioDevice,
    vq: SplitQueue,
    timeout: Duration,
    /// Request indices in the order the device completed them, for the
    /// last `execute_raw`.
    last_order: Vec<usize>,
}

impl I2c {
    /// §5 initialization of `dev_num` as virtio-i2c with the mandatory
    /// feature, queue 0, DRIVER_OK.
    pub fn open(drv: Driver, dev_num: u16) -> Result<Self, I2cError> {
        Self::open_with(drv, dev_num, &I2cOptions::default())
    }

    /// [`I2c::open`] with options.
    pub fn open_with(drv: Driver, dev_num: u16, opts: &I2cOptions) -> Result<Self, I2cError> {
        let probed = VirtioDevice::probe(drv, dev_num)?;
        if probed.info().device_id != VIRTIO_ID_I2C_ADAPTER {
            return Err(I2cError::NotI2c(probed.info().device_id));
        }
        let mut dev = VirtioDevice::initialize(probed.into_driver(), dev_num, &opts.features)?;
        if !dev.offered().contains(F_ZERO_LENGTH_REQUEST) {
            // §5.19.6.1: abort negotiation.
            let _ = dev.reset();
            return Err(I2cError::NoZeroLength);
        }
        let vq = dev.setup_queue(0, QUEUE_SIZE)?;
        dev.driver_ok()?;
        Ok(I2c {
            dev,
            vq,
            timeout: opts.timeout,
            last_order: Vec::new(),
        })
    }

    /// The underlying device.
    pub fn device(&mut self) -> &mut VirtioDevice {
        &mut self.dev
    }

    /// Features negotiated.
    pub fn negotiated(&self) -> &FeatureSet {
        self.dev.negotiated()
    }

    /// Request indices of the last [`I2c::execute_raw`] in the order the
    /// device returned them.
    pub fn completion_order(&self) -> &[usize] {
        &self.last_order
    }

    /// One transaction: every segment but the last carries FAIL_NEXT.
    pub fn transfer(&mut self, segs: &[Segment]) -> Result<Vec<Reply>, I2cError> {
        if segs.is_empty() {
            return Err(I2cError::Invalid("an empty transaction".into()));
        }
        if let Some(s) = segs.iter().find(|s| s.addr > 0x7f) {
            return Err(I2cError::Invalid(format!(
                "address {:#x} is not a 7-bit address",
                s.addr
            )));
        }
        let reqs: Vec<RawRequest> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let flags = if i + 1 < segs.len() {
                    FLAGS_FAIL_NEXT
                } else {
                    0
                };
                RawRequest::for_segment(s, flags)
            })
            .collect();
        let raw = self.execute_raw(&reqs)?;
        Ok(raw
            .into_iter()
            .map(|r| Reply {
                status: r.status.unwrap_or(STATUS_UNWRITTEN),
                used_len: r.used_len,
                data: r.writable_after.into_iter().next().unwrap_or_default(),
            })
            .collect())
    }

    /// Write `data` to `addr` (one request); true if OK.
    pub fn write(&mut self, addr: u16, data: &[u8]) -> Result<bool, I2cError> {
        Ok(self.transfer(&[Segment::write(addr, data)])?[0].ok())
    }

    /// Read `len` bytes from `addr` (one request); `None` on ERR.
    pub fn read(&mut self, addr: u16, len: u32) -> Result<Option<Vec<u8>>, I2cError> {
        let r = self.transfer(&[Segment::read(addr, len)])?.remove(0);
        Ok(r.ok().then_some(r.data))
    }

    /// Write `w` then read `len` bytes from `addr` in one transaction
    /// (repeated START); `None` if either failed.
    pub fn write_read(
        &mut self,
        addr: u16,
        w: &[u8],
        len: u32,
    ) -> Result<Option<Vec<u8>>, I2cError> {
        let r = self.transfer(&[Segment::write(addr, w), Segment::read(addr, len)])?;
        Ok((r[0].ok() && r[1].ok()).then(|| r[1].data.clone()))
    }

    /// The 7-bit addresses in `range` that acknowledge a zero-length read,
    /// each probed on its own (one request, one notification): a device
    /// that mishandles groups or batches cannot hide its targets from it.
    pub fn scan(&mut self, range: std::ops::RangeInclusive<u16>) -> Result<Vec<u16>, I2cError> {
        let mut found = Vec::new();
        for a in range {
            let r = self.execute_raw(&[RawRequest::for_segment(&Segment::read(a, 0), 0)])?;
            if r.first().and_then(|r| r.status) == Some(MSG_OK) {
                found.push(a);
            }
        }
        Ok(found)
    }

    /// Post `reqs` in order, notify once, wait (bounded) for every one.
    pub fn execute_raw(&mut self, reqs: &[RawRequest]) -> Result<Vec<RawReply>, I2cError> {
        let (total, relative) = layout(reqs);
        let base = self.dev.allocator().alloc(total.max(1), 8)?;
        let placed: Vec<Placed> = relative.into_iter().map(|p| p.at(base)).collect();
        let result = self.post_and_wait(reqs, &placed);
        self.dev.allocator().free(base, total.max(1))?;
        result
    }

    fn post_and_wait(
        &mut self,
        reqs: &[RawRequest],
        placed: &[Placed],
    ) -> Result<Vec<RawReply>, I2cError> {
        let mem = self.dev.driver().memory();
        for (r, p) in reqs.iter().zip(placed) {
            let mut inputs = std::iter::once(&r.header).chain(&r.readable);
            for b in p.bufs.iter().filter(|b| !b.writable) {
                if let Some(data) = inputs.next() {
                    mem.write_slice(data, b.addr)?;
                }
            }
            // Writable buffers start poisoned, so bytes the device did not
            // write are visible.
            for b in p.bufs.iter().filter(|b| b.writable) {
                mem.write_slice(&vec![STATUS_UNWRITTEN; b.len as usize], b.addr)?;
            }
        }
        let mut heads = Vec::with_capacity(reqs.len());
        for p in placed {
            heads.push(self.vq.add(&p.bufs)?);
        }
        self.dev.kick(&mut self.vq)?;
        let mut used_len = vec![None; reqs.len()];
        self.last_order.clear();
        while self.last_order.len() < reqs.len() {
            let u = self.dev.wait_used(&mut self.vq, self.timeout)?;
            let Some(i) = heads.iter().position(|&h| h == u.head) else {
                continue;
            };
            used_len[i] = Some(u.len);
            self.last_order.push(i);
        }
        let mut out = Vec::with_capacity(reqs.len());
        for ((r, p), len) in reqs.iter().zip(placed).zip(used_len) {
            let read = |b: &Buffer| -> Result<Vec<u8>, I2cError> {
                let mut v = vec![0u8; b.len as usize];
                mem.read_slice(&mut v, b.addr)?;
                Ok(v)
            };
            let status = match p.status {
                Some(a) => Some(mem.read_obj::<u8>(a)?),
                None => None,
            };
            let n_writable = r.writable.len();
            out.push(RawReply {
                status,
                used_len: len.unwrap_or(0),
                readable_after: p
                    .bufs
                    .iter()
                    .filter(|b| !b.writable)
                    .map(read)
                    .collect::<Result<_, _>>()?,
                writable_after: p
                    .bufs
                    .iter()
                    .filter(|b| b.writable)
                    .take(n_writable)
                    .map(read)
                    .collect::<Result<_, _>>()?,
            });
        }
        Ok(out)
    }

    /// Resets the device and returns the session.
    pub fn close(mut self) -> Result<Driver, I2cError> {
        self.dev.reset()?;
        Ok(self.dev.into_driver())
    }
}

/// A request's buffers in guest memory.
#[derive(Debug)]
struct Placed {
    bufs: Vec<Buffer>,
    status: Option<GuestAddress>,
}

impl Placed {
    /// The same buffers `base` further on.
    fn at(mut self, base: GuestAddress) -> Self {
        for b in &mut self.bufs {
            b.addr = GuestAddress(base.0 + b.addr.0);
        }
        self.status = self.status.map(|s| GuestAddress(base.0 + s.0));
        self
    }
}

/// Every buffer of `reqs` laid out from offset 0, each 8-aligned with a gap:
/// the total size and each request's buffers (header, readable, writable,
/// status) at offsets.
fn layout(reqs: &[RawRequest]) -> (u64, Vec<Placed>) {
    let mut total = 0u64;
    let mut place = |len: usize, writable: bool| {
        let b = Buffer {
            addr: GuestAddress(total),
            len: len as u32,
            writable,
        };
        total += (len as u64).div_ceil(8) * 8 + 8;
        b
    };
    let placed = reqs
        .iter()
        .map(|r| {
            let mut bufs = vec![place(r.header.len(), false)];
            bufs.extend(r.readable.iter().map(|b| place(b.len(), false)));
            bufs.extend(r.writable.iter().map(|&n| place(n as usize, true)));
            let status = r.status.then(|| {
                let b = place(1, true);
                bufs.push(b);
                b.addr
            });
            Placed { bufs, status }
        })
        .collect();
    (total, placed)
}
