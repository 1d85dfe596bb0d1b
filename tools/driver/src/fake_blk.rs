//! Test-only virtio-blk personality of the fake device (`fake.rs`): an
//! in-memory disk answering requests as virtio 1.2 §5.2.6 says, written from
//! the spec for this crate's tests. `BlkQuirks` break single rules so the
//! `blk.*` conformance cases can be seen to fail.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::blk::{SECTOR_SIZE, WRITE_ZEROES_FLAG_UNMAP, feature, offset, req, status};
use crate::virtq::VIRTQ_DESC_F_WRITE;

/// Single-rule deviations of the fake disk.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlkQuirks {
    /// Unknown request types complete with IOERR instead of UNSUPP.
    pub unknown_ioerr: bool,
    /// Writes to a read-only disk succeed.
    pub ro_writes: bool,
    /// Requests past capacity complete with OK (nothing is transferred).
    pub no_bounds: bool,
    /// DISCARD with the unmap flag completes with OK.
    pub discard_unmap_ok: bool,
    /// Unknown segment flags are ignored.
    pub unknown_flags_ok: bool,
    /// WRITE_ZEROES completes with OK without zeroing.
    pub wz_no_zero: bool,
    /// Successful requests report used len 0.
    pub used_len_zero: bool,
    /// unused0 / unused1 hold garbage.
    pub padding: bool,
    /// CONFIG_WCE offered without FLUSH.
    pub wce_without_flush: bool,
    /// writeback stays 1 when CONFIG_WCE is negotiated without FLUSH.
    pub wce_stays_writeback: bool,
    /// GET_ID writes non-printable bytes.
    pub id_garbage: bool,
    /// The status byte of FLUSH requests is never written.
    pub flush_no_status: bool,
    /// Reads return zeroes whatever was written.
    pub reads_zero: bool,
}

/// The fake disk.
#[derive(Debug, Clone)]
pub(crate) struct FakeBlk {
    pub disk: Vec<u8>,
    pub read_only: bool,
    pub serial: [u8; 20],
    pub quirks: BlkQuirks,
}

/// One descriptor of a chain: address, length, flags.
pub(crate) type Desc = (u64, u32, u16);

impl FakeBlk {
    /// A disk of `sectors` 512-byte sectors.
    pub fn new(sectors: u64, read_only: bool, quirks: BlkQuirks) -> Self {
        let mut serial = [0u8; 20];
        serial[..9].copy_from_slice(b"fake-disk");
        FakeBlk {
            disk: vec![0; (sectors * SECTOR_SIZE) as usize],
            read_only,
            serial,
            quirks,
        }
    }

    fn capacity(&self) -> u64 {
        self.disk.len() as u64 / SECTOR_SIZE
    }

    /// Device-specific feature bits offered (block 0).
    pub fn offered(&self) -> u32 {
        let mut f = [
            feature::SIZE_MAX,
            feature::SEG_MAX,
            feature::BLK_SIZE,
            feature::CONFIG_WCE,
            feature::MQ,
            feature::DISCARD,
            feature::WRITE_ZEROES,
        ]
        .iter()
        .fold(0u32, |a, b| a | 1 << b);
        if !self.quirks.wce_without_flush {
            f |= 1 << feature::FLUSH;
        }
        if self.read_only {
            f |= 1 << feature::RO;
        }
        f
    }

    /// The config space (60 bytes), 2 queues.
    pub fn config(&self) -> Vec<u8> {
        let mut b = vec![0u8; 60];
        let mut put = |at: u32, v: &[u8]| b[at as usize..at as usize + v.len()].copy_from_slice(v);
        put(offset::CAPACITY, &self.capacity().to_le_bytes());
        put(offset::SIZE_MAX, &65536u32.to_le_bytes());
        put(offset::SEG_MAX, &32u32.to_le_bytes());
        put(offset::BLK_SIZE, &512u32.to_le_bytes());
        put(offset::WRITEBACK, &[1]);
        put(offset::NUM_QUEUES, &2u16.to_le_bytes());
        put(offset::MAX_DISCARD_SECTORS, &4096u32.to_le_bytes());
        put(offset::MAX_DISCARD_SEG, &4u32.to_le_bytes());
        put(offset::DISCARD_SECTOR_ALIGNMENT, &1u32.to_le_bytes());
        put(offset::MAX_WRITE_ZEROES_SECTORS, &4096u32.to_le_bytes());
        put(offset::MAX_WRITE_ZEROES_SEG, &4u32.to_le_bytes());
        put(offset::WRITE_ZEROES_MAY_UNMAP, &[1]);
        if self.quirks.padding {
            put(offset::UNUSED0, &[0xAA]);
            put(offset::UNUSED1, &[0xBB, 0, 0]);
        }
        b
    }

    /// FEATURES_OK with `negotiated` (block 0): §5.2.5 writeback rule.
    pub fn features_ok(&self, negotiated: u32, config: &mut [u8]) {
        let wce = negotiated & (1 << feature::CONFIG_WCE) != 0;
        let flush = negotiated & (1 << feature::FLUSH) != 0;
        if wce && !flush && !self.quirks.wce_stays_writeback {
            config[offset::WRITEBACK as usize] = 0;
        }
    }

    /// `[sector, sector + n)` inside the disk: its byte range.
    fn range(&self, sector: u64, n: u64) -> Option<std::ops::Range<usize>> {
        let end = sector.checked_add(n)?;
        (end <= self.capacity())
            .then(|| (sector * SECTOR_SIZE) as usize..(end * SECTOR_SIZE) as usize)
    }

    /// Execute one chain; returns the used length.
    pub fn handle(&mut self, mem: &GuestMemoryMmap<()>, descs: &[Desc]) -> u32 {
        let Some(&(last_addr, last_len, last_flags)) = descs.last() else {
            return 0;
        };
        if last_flags & VIRTQ_DESC_F_WRITE == 0 || last_len == 0 {
            return 0;
        }
        let status_addr = GuestAddress(last_addr + u64::from(last_len) - 1);
        let split = descs
            .iter()
            .position(|d| d.2 & VIRTQ_DESC_F_WRITE != 0)
            .unwrap_or(descs.len());
        let (readable, writable) = descs.split_at(split);
        let mut input = Vec::new();
        for &(a, l, _) in readable {
            let mut v = vec![0u8; l as usize];
            mem.read_slice(&mut v, GuestAddress(a))
                .expect("readable buffer");
            input.extend(v);
        }
        let w_total: u64 = writable.iter().map(|d| u64::from(d.1)).sum();
        let out_len = (w_total - 1) as usize;
        let (code, data_written) = if input.len() < 16 {
            (status::IOERR, 0)
        } else {
            let rtype = u32::from_le_bytes([input[0], input[1], input[2], input[3]]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&input[8..16]);
            let sector = u64::from_le_bytes(s);
            let payload = &input[16..];
            self.execute(rtype, sector, payload, out_len, mem, writable)
        };
        let code = if self.quirks.flush_no_status && code == status::OK && out_len == 0 {
            None
        } else {
            Some(code)
        };
        if let Some(c) = code {
            mem.write_obj(c, status_addr).expect("status byte");
        }
        match code {
            Some(status::OK) if self.quirks.used_len_zero => 0,
            Some(status::OK) => data_written + 1,
            Some(_) => 1,
            None => 0,
        }
    }

    /// Scatter `bytes` over the writable descriptors (the status byte is
    /// the last writable byte and not touched here).
    fn scatter(mem: &GuestMemoryMmap<()>, writable: &[Desc], bytes: &[u8]) {
        let mut done = 0usize;
        for &(a, l, _) in writable {
            let n = (l as usize).min(bytes.len() - done);
            if n == 0 {
                break;
            }
            mem.write_slice(&bytes[done..done + n], GuestAddress(a))
                .expect("writable buffer");
            done += n;
        }
    }

    fn execute(
        &mut self,
        rtype: u32,
        sector: u64,
        payload: &[u8],
        out_len: usize,
        mem: &GuestMemoryMmap<()>,
        writable: &[Desc],
    ) -> (u8, u32) {
        let q = self.quirks.clone();
        match rtype {
            req::IN => {
                if !payload.is_empty() || out_len as u64 % SECTOR_SIZE != 0 {
                    return (status::IOERR, 0);
                }
                let Some(r) = self.range(sector, out_len as u64 / SECTOR_SIZE) else {
                    return if q.no_bounds {
                        (status::OK, out_len as u32)
                    } else {
                        (status::IOERR, 0)
                    };
                };
                let data = if q.reads_zero {
                    vec![0; out_len]
                } else {
                    self.disk[r].to_vec()
                };
                Self::scatter(mem, writable, &data);
                (status::OK, out_len as u32)
            }
            req::OUT => {
                if out_len != 0 || payload.len() as u64 % SECTOR_SIZE != 0 {
                    return (status::IOERR, 0);
                }
                if self.read_only && !q.ro_writes {
                    return (status::IOERR, 0);
                }
                match self.range(sector, payload.len() as u64 / SECTOR_SIZE) {
                    Some(r) => self.disk[r].copy_from_slice(payload),
                    None if q.no_bounds => {}
                    None => return (status::IOERR, 0),
                }
                (status::OK, 0)
            }
            req::FLUSH => (status::OK, 0),
            req::GET_ID => {
                let mut id = self.serial.to_vec();
                if q.id_garbage {
                    id = vec![0x07; 20];
                }
                id.resize(out_len, 0);
                Self::scatter(mem, writable, &id);
                (status::OK, out_len as u32)
            }
            req::DISCARD | req::WRITE_ZEROES => {
                let discard = rtype == req::DISCARD;
                if self.read_only {
                    return (status::IOERR, 0);
                }
                if payload.is_empty() || payload.len() % 16 != 0 {
                    return (status::IOERR, 0);
                }
                let segs: Vec<(u64, u32, u32)> = payload
                    .chunks_exact(16)
                    .map(|c| {
                        let mut s = [0u8; 8];
                        s.copy_from_slice(&c[0..8]);
                        (
                            u64::from_le_bytes(s),
                            u32::from_le_bytes([c[8], c[9], c[10], c[11]]),
                            u32::from_le_bytes([c[12], c[13], c[14], c[15]]),
                        )
                    })
                    .collect();
                for &(_, _, flags) in &segs {
                    if flags & !WRITE_ZEROES_FLAG_UNMAP != 0 && !q.unknown_flags_ok {
                        return (status::UNSUPP, 0);
                    }
                    if discard && flags & WRITE_ZEROES_FLAG_UNMAP != 0 && !q.discard_unmap_ok {
                        return (status::UNSUPP, 0);
                    }
                }
                for &(s, n, _) in &segs {
                    match self.range(s, u64::from(n)) {
                        Some(r) if !discard && !q.wz_no_zero => self.disk[r].fill(0),
                        Some(_) => {}
                        None if q.no_bounds => {}
                        None => return (status::IOERR, 0),
                    }
                }
                (status::OK, 0)
            }
            _ if q.unknown_ioerr => (status::IOERR, 0),
            _ => (status::UNSUPP, 0),
        }
    }
}
