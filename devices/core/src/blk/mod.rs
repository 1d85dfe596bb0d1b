//! virtio-blk (virtio 1.2 §5.2): the parts the std daemon and the secure
//! partition share — the config space ([`config`]) and the parsing and
//! validation of a request chain ([`request`]) — and [`BlkDevice`], the
//! device over a synchronous [`BlockStore`] (the partition's RAM disk).

pub mod config;
pub mod request;

use alloc::vec;
use alloc::vec::Vec;

use thiserror::Error;

use self::config::{BlkConfigSpace, CONFIG_SIZE, DiskGeometry, SECTOR_SIZE, bit};
use self::request::{Body, Limits, S_IOERR, S_OK, S_UNSUPP};
use crate::host::{CoreDevice, Pass};
use crate::memory::DmaMemory;
use crate::virtq::{QueueError, SplitQueue};

/// Virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// The virtio-blk constants of virtio 1.2 §5.2 (the names of Linux's
/// `virtio_blk.h`, which `virtio-bindings` has only for std targets).
pub mod vb {
    pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
    pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
    pub const VIRTIO_BLK_F_GEOMETRY: u32 = 4;
    pub const VIRTIO_BLK_F_RO: u32 = 5;
    pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
    pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
    pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
    pub const VIRTIO_BLK_F_CONFIG_WCE: u32 = 11;
    pub const VIRTIO_BLK_F_MQ: u32 = 12;
    pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
    pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
    pub const VIRTIO_BLK_T_IN: u32 = 0;
    pub const VIRTIO_BLK_T_OUT: u32 = 1;
    pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
    pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
    pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
    pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;
    pub const VIRTIO_BLK_S_OK: u8 = 0;
    pub const VIRTIO_BLK_S_IOERR: u8 = 1;
    pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
    pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
    /// Length of the GET_ID string.
    pub const VIRTIO_BLK_ID_BYTES: usize = 20;
}

/// The store failed an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("block store I/O error")]
pub struct StoreError;

/// Storage behind a [`BlkDevice`], synchronous.
pub trait BlockStore {
    /// Size in bytes (a whole number of sectors is used).
    fn size(&self) -> u64;
    /// Copy `buf.len()` bytes at byte `offset` into `buf`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError>;
    /// Store `data` at byte `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError>;
    /// Make completed writes durable.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Zero `[offset, offset + len)`.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), StoreError>;
}

/// A virtio-blk device over a synchronous store: one queue, requests
/// executed in the order they arrive.
pub struct BlkDevice<S: BlockStore> {
    store: S,
    config: BlkConfigSpace,
    bytes: [u8; CONFIG_SIZE],
    serial: [u8; vb::VIRTIO_BLK_ID_BYTES],
    read_only: bool,
    features: u64,
    negotiated: u64,
    sizes: [u16; 1],
    /// Requests answered IOERR or UNSUPP.
    pub errors: u64,
}

impl<S: BlockStore> core::fmt::Debug for BlkDevice<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BlkDevice")
            .field("capacity", &self.config.capacity)
            .field("read_only", &self.read_only)
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl<S: BlockStore> BlkDevice<S> {
    /// A device on `store`, one queue of `queue_size`, GET_ID answering
    /// `serial` (at most 20 bytes are used).
    pub fn new(store: S, read_only: bool, queue_size: u16, serial: &[u8]) -> Self {
        let geometry = DiskGeometry {
            size: store.size(),
            logical_block_size: SECTOR_SIZE as u32,
            physical_block_size: SECTOR_SIZE as u32,
            alignment_offset: 0,
            min_io_size: 0,
            opt_io_size: 0,
        };
        // Writes are durable when they complete (the store has no cache of
        // ours): writethrough, no CONFIG_WCE.
        let config = BlkConfigSpace::new(&geometry, 1, queue_size, false);
        let mut features = bit(vb::VIRTIO_BLK_F_SIZE_MAX)
            | bit(vb::VIRTIO_BLK_F_SEG_MAX)
            | bit(vb::VIRTIO_BLK_F_BLK_SIZE)
            | bit(vb::VIRTIO_BLK_F_FLUSH)
            | bit(vb::VIRTIO_BLK_F_WRITE_ZEROES);
        if read_only {
            features |= bit(vb::VIRTIO_BLK_F_RO);
        }
        let mut id = [0u8; vb::VIRTIO_BLK_ID_BYTES];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial[..n]);
        Self {
            store,
            bytes: config.to_bytes(),
            config,
            serial: id,
            read_only,
            features,
            negotiated: 0,
            sizes: [queue_size],
            errors: 0,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn limits(&self) -> Limits {
        Limits {
            capacity: self.config.capacity,
            seg_max: self.config.seg_max,
            size_max: self.config.size_max,
            max_discard_seg: 0,
            max_discard_sectors: 0,
            max_write_zeroes_seg: self.config.max_write_zeroes_seg,
            max_write_zeroes_sectors: self.config.max_write_zeroes_sectors,
            read_only: self.read_only,
            discard: false,
            write_zeroes: self.negotiated & bit(vb::VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        }
    }

    /// Carry out a valid request; the status byte.
    fn execute(&mut self, body: &Body, mem: &dyn DmaMemory, scratch: &mut Vec<u8>) -> u8 {
        let io = |r: Result<(), StoreError>| if r.is_ok() { S_OK } else { S_IOERR };
        match body {
            Body::In { offset, data } => {
                let mut at = *offset;
                for p in data {
                    scratch.resize(p.len as usize, 0);
                    if self.store.read(at, scratch).is_err() || mem.write(p.addr, scratch).is_err()
                    {
                        return S_IOERR;
                    }
                    at += u64::from(p.len);
                }
                S_OK
            }
            Body::Out { offset, data } => {
                let mut at = *offset;
                for p in data {
                    scratch.resize(p.len as usize, 0);
                    if mem.read(p.addr, scratch).is_err() || self.store.write(at, scratch).is_err()
                    {
                        return S_IOERR;
                    }
                    at += u64::from(p.len);
                }
                S_OK
            }
            Body::Flush => io(self.store.flush()),
            Body::GetId { data } => {
                // The ID, NUL-padded to the whole buffer: the used length
                // counts every writable byte, and §2.7.8.2 wants that many
                // written (the parser bounds the buffer like a read's).
                let mut src = &self.serial[..];
                for p in data {
                    scratch.clear();
                    scratch.resize(p.len as usize, 0);
                    let n = scratch.len().min(src.len());
                    scratch[..n].copy_from_slice(&src[..n]);
                    if mem.write(p.addr, scratch).is_err() {
                        return S_IOERR;
                    }
                    src = &src[n..];
                }
                S_OK
            }
            Body::WriteZeroes { ranges } => {
                for r in ranges {
                    if self.store.write_zeroes(r.offset, r.len).is_err() {
                        return S_IOERR;
                    }
                }
                S_OK
            }
            Body::Discard { .. } => S_UNSUPP,
        }
    }
}

impl<S: BlockStore + Send> CoreDevice for BlkDevice<S> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_size(&self) -> u32 {
        CONFIG_SIZE as u32
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let start = offset as usize;
        if let Some(src) = self.bytes.get(start..start + data.len()) {
            data.copy_from_slice(src);
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn accept_features(&mut self, features: u64) -> bool {
        self.negotiated = features;
        true
    }

    fn reset(&mut self) {
        self.negotiated = 0;
    }

    fn process_queue(
        &mut self,
        _index: u16,
        queue: &mut SplitQueue,
        mem: &dyn DmaMemory,
        budget: usize,
    ) -> Result<Pass, QueueError> {
        let mut pass = Pass::default();
        let limits = self.limits();
        let mut scratch = vec![0u8; 0];
        while pass.used < budget {
            let Some(chain) = queue.pop(mem)? else {
                return Ok(pass);
            };
            let parsed = request::parse(chain.descs.iter().copied(), mem, &limits);
            let used_len = match parsed.status {
                None => 0,
                Some(status_at) => {
                    let status = match &parsed.body {
                        Ok(body) => self.execute(body, mem, &mut scratch),
                        Err(code) => *code,
                    };
                    if status != S_OK {
                        self.errors += 1;
                    }
                    match (&parsed.body, status) {
                        // Reads return their data plus the status byte.
                        (Ok(Body::In { .. } | Body::GetId { .. }), S_OK) => {
                            if mem.write(status_at, &[status]).is_ok() {
                                parsed.writable_len
                            } else {
                                0
                            }
                        }
                        _ => {
                            if mem.write(status_at, &[status]).is_ok() {
                                1
                            } else {
                                0
                            }
                        }
                    }
                }
            };
            queue.add_used(mem, chain.head, used_len)?;
            pass.used += 1;
        }
        pass.more = true;
        Ok(pass)
    }
}

/// A store in memory the partition owns (its RAM disk).
#[derive(Debug)]
pub struct MemoryStore<'a> {
    bytes: &'a mut [u8],
}

impl<'a> MemoryStore<'a> {
    /// A store over `bytes`.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes }
    }

    fn range(&self, offset: u64, len: u64) -> Result<core::ops::Range<usize>, StoreError> {
        let end = offset.checked_add(len).ok_or(StoreError)?;
        if end > self.bytes.len() as u64 {
            return Err(StoreError);
        }
        Ok(offset as usize..end as usize)
    }
}

impl BlockStore for MemoryStore<'_> {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let r = self.range(offset, data.len() as u64)?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), StoreError> {
        let r = self.range(offset, len)?;
        self.bytes[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
