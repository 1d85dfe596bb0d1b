//! Parsing and validating one virtio-blk request (virtio 1.2 §5.2.6).
//!
//! The chain is read as the spec's byte stream — a device-readable part
//! followed by a device-writable part — without assuming how the driver cut
//! it into descriptors (§2.7.4 message framing): the header is the first 16
//! readable bytes, the status the last byte of the chain, the data what lies
//! between. A request is *unanswerable* when there is no place for a status
//! byte (the last descriptor is not device-writable, is empty or lies outside
//! guest memory, or the chain is broken: a loop, a bad next index); it is
//! returned with used length 0. Everything else wrong with a request is
//! answered with a status byte.

use alloc::vec;
use alloc::vec::Vec;

use super::config::SECTOR_SIZE;
use super::vb;
use crate::memory::DmaMemory;
use crate::virtq::Desc;

/// Status byte values.
pub const S_OK: u8 = vb::VIRTIO_BLK_S_OK;
pub const S_IOERR: u8 = vb::VIRTIO_BLK_S_IOERR;
pub const S_UNSUPP: u8 = vb::VIRTIO_BLK_S_UNSUPP;

/// Size of the request header (`type`, `reserved`, `sector`).
const HEADER_LEN: u64 = 16;
/// Size of one discard / write-zeroes segment.
const SEGMENT_LEN: u64 = 16;
/// Descriptors beyond the data segments that a request may use (header,
/// status, and slack for drivers that split them).
const EXTRA_DESCS: usize = 4;

/// One contiguous piece of a request's data in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub addr: u64,
    pub len: u32,
}

/// One discard / write-zeroes range, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

/// A valid request.
#[derive(Debug, PartialEq, Eq)]
pub enum Body {
    In { offset: u64, data: Vec<Piece> },
    Out { offset: u64, data: Vec<Piece> },
    Flush,
    GetId { data: Vec<Piece> },
    Discard { ranges: Vec<Range> },
    WriteZeroes { ranges: Vec<Range> },
}

/// What the device allows, from its config and the negotiated features.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Capacity in sectors.
    pub capacity: u64,
    pub seg_max: u32,
    pub size_max: u32,
    pub max_discard_seg: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub read_only: bool,
    /// DISCARD / WRITE_ZEROES negotiated.
    pub discard: bool,
    pub write_zeroes: bool,
}

/// A parsed chain.
#[derive(Debug)]
pub struct Parsed {
    /// Where the status byte goes; `None` when the request is unanswerable.
    pub status: Option<u64>,
    /// Bytes of the device-writable part (data + status).
    pub writable_len: u32,
    /// The request, or the status to answer it with at once.
    pub body: Result<Body, u8>,
}

impl Parsed {
    fn fail(status: Option<u64>, writable_len: u32, code: u8) -> Self {
        Self {
            status,
            writable_len,
            body: Err(code),
        }
    }
}

/// Parse the descriptors of one chain. A chain that could not be followed
/// to its end (a loop, a bad `next`) arrives with its last descriptor still
/// marked NEXT, or empty: it is unanswerable.
///
/// Generic over the memory (`&dyn DmaMemory` works too) so that a caller
/// with a concrete one gets its accesses inlined: through the std daemon's
/// `GuestDma` that is what keeps the shared parser as fast as the std copy
/// it replaced (docs/performance.md, "Split virtqueue").
pub fn parse<M: DmaMemory + ?Sized>(
    descs: impl Iterator<Item = Desc>,
    mem: &M,
    lim: &Limits,
) -> Parsed {
    let cap = lim.seg_max as usize + EXTRA_DESCS;
    let mut list: Vec<Desc> = Vec::with_capacity(cap.min(16));
    let mut too_many = false;
    let mut last = None;
    for d in descs {
        if list.len() < cap {
            list.push(d);
        } else {
            too_many = true;
        }
        last = Some(d);
    }
    let status = last
        .filter(|d| !d.has_next() && d.is_write() && d.len > 0)
        .and_then(|d| d.addr.checked_add(u64::from(d.len) - 1))
        .filter(|&a| mem.check(a, 1));
    if status.is_none() {
        return Parsed::fail(None, 0, S_IOERR);
    }
    if too_many {
        return Parsed::fail(status, 1, S_IOERR);
    }

    // Device-readable descriptors must all come before device-writable ones.
    let split = list.iter().position(Desc::is_write).unwrap_or(list.len());
    let (readable, writable) = list.split_at(split);
    if writable.iter().any(|d| !d.is_write()) {
        return Parsed::fail(status, 1, S_IOERR);
    }
    let r_len: u64 = readable.iter().map(|d| u64::from(d.len)).sum();
    let w_len: u64 = writable.iter().map(|d| u64::from(d.len)).sum();
    let w_len32 = u32::try_from(w_len).unwrap_or(u32::MAX);
    let fail = |code| Parsed::fail(status, 1, code);

    let mut header = [0u8; HEADER_LEN as usize];
    if r_len < HEADER_LEN || gather(mem, readable, 0, &mut header).is_none() {
        return fail(S_IOERR);
    }
    let rtype = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    // Only the status byte is writable for requests that return no data.
    let status_only = w_len == 1;
    let no_payload = r_len == HEADER_LEN;

    let body = match rtype {
        vb::VIRTIO_BLK_T_IN => {
            if !no_payload {
                return fail(S_IOERR);
            }
            let data = pieces(writable, 0, w_len - 1);
            check_rw(lim, sector, &data).map(|offset| Body::In { offset, data })
        }
        vb::VIRTIO_BLK_T_OUT => {
            if !status_only || lim.read_only {
                return fail(S_IOERR);
            }
            let data = pieces(readable, HEADER_LEN, r_len - HEADER_LEN);
            check_rw(lim, sector, &data).map(|offset| Body::Out { offset, data })
        }
        vb::VIRTIO_BLK_T_FLUSH => {
            if !status_only || !no_payload {
                return fail(S_IOERR);
            }
            Ok(Body::Flush)
        }
        vb::VIRTIO_BLK_T_GET_ID => {
            if !no_payload {
                return fail(S_IOERR);
            }
            // The device fills the whole buffer (ID, then NULs: §2.7.8.2
            // wants `len` bytes written), so it is bounded like a read's.
            let data = pieces(writable, 0, w_len - 1);
            if data.len() > lim.seg_max as usize || data.iter().any(|p| p.len > lim.size_max) {
                return fail(S_IOERR);
            }
            Ok(Body::GetId { data })
        }
        vb::VIRTIO_BLK_T_DISCARD | vb::VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = rtype == vb::VIRTIO_BLK_T_DISCARD;
            if !status_only || lim.read_only {
                return fail(S_IOERR);
            }
            if (discard && !lim.discard) || (!discard && !lim.write_zeroes) {
                return fail(S_UNSUPP);
            }
            check_segments(mem, lim, discard, readable, r_len).map(|ranges| {
                if discard {
                    Body::Discard { ranges }
                } else {
                    Body::WriteZeroes { ranges }
                }
            })
        }
        _ => Err(S_UNSUPP),
    };
    Parsed {
        status,
        writable_len: w_len32,
        body,
    }
}

/// Validate a read or write: length, segments, range. Returns the byte
/// offset.
fn check_rw(lim: &Limits, sector: u64, data: &[Piece]) -> Result<u64, u8> {
    let len: u64 = data.iter().map(|p| u64::from(p.len)).sum();
    if len % SECTOR_SIZE != 0
        || data.len() > lim.seg_max as usize
        || data.iter().any(|p| p.len > lim.size_max)
    {
        return Err(S_IOERR);
    }
    in_capacity(lim, sector, len / SECTOR_SIZE).ok_or(S_IOERR)
}

/// `[sector, sector + count)` inside the disk: its byte offset.
fn in_capacity(lim: &Limits, sector: u64, count: u64) -> Option<u64> {
    let end = sector.checked_add(count)?;
    if end > lim.capacity {
        return None;
    }
    sector.checked_mul(SECTOR_SIZE)
}

/// Read and validate discard / write-zeroes segments.
fn check_segments<M: DmaMemory + ?Sized>(
    mem: &M,
    lim: &Limits,
    discard: bool,
    readable: &[Desc],
    r_len: u64,
) -> Result<Vec<Range>, u8> {
    let (max_seg, max_sectors) = if discard {
        (lim.max_discard_seg, lim.max_discard_sectors)
    } else {
        (lim.max_write_zeroes_seg, lim.max_write_zeroes_sectors)
    };
    let len = r_len - HEADER_LEN;
    if len == 0 || len % SEGMENT_LEN != 0 || len / SEGMENT_LEN > u64::from(max_seg) {
        return Err(S_IOERR);
    }
    let mut raw = vec![0u8; len as usize];
    gather(mem, readable, HEADER_LEN, &mut raw).ok_or(S_IOERR)?;
    let segs: Vec<(u64, u32, u32)> = raw
        .chunks_exact(SEGMENT_LEN as usize)
        .map(|s| {
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&s[0..8]);
            let num = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
            let flags = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
            (u64::from_le_bytes(sector), num, flags)
        })
        .collect();
    // Unknown flags, and unmap on a discard, are UNSUPP whatever else is
    // wrong (a MUST of §5.2.6.2), so check them across all segments first.
    let known = vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    if segs
        .iter()
        .any(|&(_, _, f)| f & !known != 0 || (discard && f & known != 0))
    {
        return Err(S_UNSUPP);
    }
    segs.iter()
        .map(|&(sector, num, flags)| {
            if num > max_sectors {
                return Err(S_IOERR);
            }
            let offset = in_capacity(lim, sector, u64::from(num)).ok_or(S_IOERR)?;
            Ok(Range {
                offset,
                len: u64::from(num) * SECTOR_SIZE,
                unmap: flags & known != 0,
            })
        })
        .collect()
}

/// The pieces covering bytes `[start, start + len)` of a run of descriptors.
fn pieces(descs: &[Desc], start: u64, len: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let end = start + len;
    for d in descs {
        let (d_start, d_end) = (pos, pos + u64::from(d.len));
        pos = d_end;
        let (s, e) = (d_start.max(start), d_end.min(end));
        if s >= e {
            continue;
        }
        // A wrapping address is caught when the piece is mapped.
        out.push(Piece {
            addr: d.addr.wrapping_add(s - d_start),
            len: (e - s) as u32,
        });
    }
    out
}

/// Copy bytes `[start, start + out.len())` of a run of descriptors into
/// `out`. `None` if any of it lies outside guest memory.
fn gather<M: DmaMemory + ?Sized>(
    mem: &M,
    descs: &[Desc],
    start: u64,
    out: &mut [u8],
) -> Option<()> {
    let mut filled = 0usize;
    for p in pieces(descs, start, out.len() as u64) {
        let n = p.len as usize;
        mem.read(p.addr, out.get_mut(filled..filled + n)?).ok()?;
        filled += n;
    }
    (filled == out.len()).then_some(())
}

#[cfg(test)]
mod tests;
