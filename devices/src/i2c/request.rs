//! Parsing and validating one virtio-i2c request (virtio 1.3 §5.19.6).
//!
//! A request is `virtio_i2c_out_hdr` (8 bytes, device-readable), an optional
//! buffer (device-readable for a write, device-writable for a read), and
//! `virtio_i2c_in_hdr` (the status byte, device-writable, last). The chain is
//! read as the spec's byte stream — a device-readable part followed by a
//! device-writable part — without assuming how the driver cut it into
//! descriptors: the header is the first 8 readable bytes, the status the last
//! byte of the chain, the buffer what lies between.
//!
//! A request is *unanswerable* when there is no place for a status byte (the
//! last descriptor is not device-writable, is empty or lies outside guest
//! memory, or the chain is broken); it is returned with used length 0.
//! Everything else wrong with it is answered with `VIRTIO_I2C_MSG_ERR`
//! ([`Refusal`] says why, for the counters).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};
use vmsg_backend::memory::GuestMemory;

use super::adapter::MAX_MSG_LEN;

/// Status: the request succeeded.
pub const MSG_OK: u8 = 0;
/// Status: the request failed (or was not attempted).
pub const MSG_ERR: u8 = 1;

/// `flags` bit 0: the next request belongs to the same transaction.
pub const FLAG_FAIL_NEXT: u32 = 1 << 0;
/// `flags` bit 1: a read request.
pub const FLAG_M_RD: u32 = 1 << 1;
/// Size of `virtio_i2c_out_hdr`.
pub const OUT_HDR_LEN: u64 = 8;
/// Descriptors one request may use: header, buffer, status, and slack for
/// drivers that split them. A longer chain is refused (bounds the work).
pub const MAX_DESCS: usize = 16;

/// One contiguous piece of a request's buffer in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A valid request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// 7-bit target address.
    pub addr: u16,
    /// A read request (`VIRTIO_I2C_FLAGS_M_RD`).
    pub read: bool,
    /// The buffer: device-readable pieces for a write, device-writable ones
    /// for a read. Empty for a zero-length request.
    pub buf: Vec<Piece>,
    /// Its length in bytes (at most [`MAX_MSG_LEN`]).
    pub len: usize,
}

/// Why a request is answered with `VIRTIO_I2C_MSG_ERR` without being
/// carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The chain has more than [`MAX_DESCS`] descriptors.
    TooManyDescriptors,
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// Fewer than 8 device-readable bytes: no complete `virtio_i2c_out_hdr`.
    ShortHeader,
    /// The header lies outside guest memory.
    HeaderOutsideMemory,
    /// Reserved `flags` bits are set (a driver MUST clear them).
    ReservedFlags(u32),
    /// A ten-bit address: not supported (the Linux driver sends only 7-bit).
    TenBitAddress(u16),
    /// `addr` is not a 7-bit address in the spec's encoding (bit 0 or bits
    /// 15..8 set without the ten-bit pattern).
    BadAddress(u16),
    /// A read request whose buffer is device-readable: the device would
    /// have to write into a buffer the driver marked read-only.
    ReadIntoReadOnly,
    /// A write request with device-writable bytes before the status.
    WriteFromWritable,
    /// The buffer is longer than [`MAX_MSG_LEN`].
    TooLong(u64),
}

/// A parsed chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Where the status byte goes; `None` when the request is unanswerable.
    pub status: Option<GuestAddress>,
    /// `VIRTIO_I2C_FLAGS_FAIL_NEXT` as read from the header; `false` when
    /// the header could not be read (the transaction ends here).
    pub fail_next: bool,
    /// The request, or why it is refused.
    pub body: Result<Request, Refusal>,
}

/// Parse the descriptors of one chain.
pub fn parse(descs: impl Iterator<Item = Descriptor>, mem: &GuestMemory) -> Parsed {
    let mut list: Vec<Descriptor> = Vec::with_capacity(4);
    let mut too_many = false;
    let mut last = None;
    for d in descs {
        if list.len() < MAX_DESCS {
            list.push(d);
        } else {
            too_many = true;
        }
        last = Some(d);
    }
    // The chain iterator stops early, without error, on a loop, a bad next
    // index or an unreadable descriptor: then the last one still has NEXT.
    let status = last
        .filter(|d| !d.has_next() && d.is_write_only() && d.len() > 0)
        .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1))
        .filter(|&a| GuestMemoryBackend::check_range(mem, a, 1));
    let fail = |fail_next, refusal| Parsed {
        status,
        fail_next,
        body: Err(refusal),
    };
    if too_many {
        return fail(false, Refusal::TooManyDescriptors);
    }
    let split = list
        .iter()
        .position(Descriptor::is_write_only)
        .unwrap_or(list.len());
    let (readable, writable) = list.split_at(split);
    let r_len: u64 = readable.iter().map(|d| u64::from(d.len())).sum();
    let w_len: u64 = writable.iter().map(|d| u64::from(d.len())).sum();

    // The header first: FAIL_NEXT decides the transaction even when the rest
    // of the request is wrong.
    let mut hdr = [0u8; OUT_HDR_LEN as usize];
    if r_len < OUT_HDR_LEN {
        return fail(false, Refusal::ShortHeader);
    }
    if gather(mem, readable, 0, &mut hdr).is_none() {
        return fail(false, Refusal::HeaderOutsideMemory);
    }
    let raw_addr = u16::from_le_bytes([hdr[0], hdr[1]]);
    let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let fail_next = flags & FLAG_FAIL_NEXT != 0;
    let fail = |refusal| fail(fail_next, refusal);
    if writable.iter().any(|d| !d.is_write_only()) {
        return fail(Refusal::ReadableAfterWritable);
    }
    let reserved = flags & !(FLAG_FAIL_NEXT | FLAG_M_RD);
    if reserved != 0 {
        return fail(Refusal::ReservedFlags(reserved));
    }
    let addr = match decode_addr(raw_addr) {
        Ok(a) => a,
        Err(r) => return fail(r),
    };
    let read = flags & FLAG_M_RD != 0;
    let (buf, len) = if read {
        // Only the header may be device-readable; the buffer is what comes
        // before the status byte in the writable part.
        if r_len > OUT_HDR_LEN {
            return fail(Refusal::ReadIntoReadOnly);
        }
        let len = w_len.saturating_sub(1);
        (pieces(writable, 0, len), len)
    } else {
        if w_len > 1 {
            return fail(Refusal::WriteFromWritable);
        }
        let len = r_len - OUT_HDR_LEN;
        (pieces(readable, OUT_HDR_LEN, len), len)
    };
    if len > MAX_MSG_LEN as u64 {
        return fail(Refusal::TooLong(len));
    }
    Parsed {
        status,
        fail_next,
        body: Ok(Request {
            addr,
            read,
            buf,
            len: len as usize,
        }),
    }
}

/// The 7-bit address from `addr` as §5.19.6 encodes it: bits 7..1, bit 0
/// and bits 15..8 zero. The ten-bit form (`11110 A9 A8 0` in bits 7..0) is
/// recognised and refused.
pub fn decode_addr(raw: u16) -> Result<u16, Refusal> {
    if raw & 0x00f9 == 0x00f0 {
        return Err(Refusal::TenBitAddress(
            ((raw & 0x0006) << 7) | ((raw >> 8) & 0xff),
        ));
    }
    if raw & 0xff01 != 0 {
        return Err(Refusal::BadAddress(raw));
    }
    Ok(raw >> 1)
}

/// The pieces covering bytes `[start, start + len)` of a run of descriptors.
fn pieces(descs: &[Descriptor], start: u64, len: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let end = start.saturating_add(len);
    for d in descs {
        let (d_start, d_end) = (pos, pos + u64::from(d.len()));
        pos = d_end;
        let (s, e) = (d_start.max(start), d_end.min(end));
        if s >= e {
            continue;
        }
        // A wrapping address is caught when the piece is accessed.
        out.push(Piece {
            addr: GuestAddress(d.addr().0.wrapping_add(s - d_start)),
            len: (e - s) as u32,
        });
    }
    out
}

/// Copy bytes `[start, start + out.len())` of a run of descriptors into
/// `out`. `None` if any of it lies outside guest memory.
fn gather(mem: &GuestMemory, descs: &[Descriptor], start: u64, out: &mut [u8]) -> Option<()> {
    read_pieces(mem, &pieces(descs, start, out.len() as u64), out)
}

/// Copy the bytes of `pieces` into `out` (which is exactly as long).
pub fn read_pieces(mem: &GuestMemory, pieces: &[Piece], out: &mut [u8]) -> Option<()> {
    let mut filled = 0usize;
    for p in pieces {
        let n = p.len as usize;
        mem.read_slice(out.get_mut(filled..filled + n)?, p.addr)
            .ok()?;
        filled += n;
    }
    (filled == out.len()).then_some(())
}

/// Copy `data` into the bytes of `pieces` (exactly as long).
pub fn write_pieces(mem: &GuestMemory, pieces: &[Piece], data: &[u8]) -> Option<()> {
    let mut done = 0usize;
    for p in pieces {
        let n = p.len as usize;
        mem.write_slice(data.get(done..done + n)?, p.addr).ok()?;
        done += n;
    }
    (done == data.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_decode_as_the_spec_draws_them() {
        // §5.19.6: 7-bit A6..A0 in bits 7..1.
        assert_eq!(decode_addr(0x50 << 1), Ok(0x50));
        assert_eq!(decode_addr(0x7f << 1), Ok(0x7f));
        assert_eq!(decode_addr(0), Ok(0));
        // Bit 0 reserved.
        assert_eq!(decode_addr(0xa1), Err(Refusal::BadAddress(0xa1)));
        // Bits 15..8 without the ten-bit marker.
        assert_eq!(decode_addr(0x01a0), Err(Refusal::BadAddress(0x01a0)));
        // Ten-bit 0x2a5: A7..A0 = 0xa5 in bits 15..8, 11110 A9 A8 0 below.
        let ten = (0xa5 << 8) | 0xf0 | (0b10 << 1);
        assert_eq!(decode_addr(ten), Err(Refusal::TenBitAddress(0x2a5)));
        assert_eq!(decode_addr(0x00f0), Err(Refusal::TenBitAddress(0)));
    }
}
