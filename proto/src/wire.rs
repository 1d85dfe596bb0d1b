//! Little-endian field access that cannot panic.
//!
//! Readers return 0 for a field outside the slice: callers check the payload
//! length against the message's fixed size first, so this never happens on
//! a path that produces a message, but it keeps every access panic-free.

use crate::EncodeError;

pub(crate) fn le16(p: &[u8], off: usize) -> u16 {
    p.get(off..)
        .and_then(<[u8]>::first_chunk::<2>)
        .map_or(0, |b| u16::from_le_bytes(*b))
}

pub(crate) fn le32(p: &[u8], off: usize) -> u32 {
    p.get(off..)
        .and_then(<[u8]>::first_chunk::<4>)
        .map_or(0, |b| u32::from_le_bytes(*b))
}

pub(crate) fn le64(p: &[u8], off: usize) -> u64 {
    p.get(off..)
        .and_then(<[u8]>::first_chunk::<8>)
        .map_or(0, |b| u64::from_le_bytes(*b))
}

/// Bounds-checked writer over an output payload.
pub(crate) struct Writer<'b> {
    buf: &'b mut [u8],
}

impl<'b> Writer<'b> {
    pub(crate) fn new(buf: &'b mut [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn bytes(&mut self, off: usize, src: &[u8]) -> Result<(), EncodeError> {
        let have = self.buf.len();
        let end = off
            .checked_add(src.len())
            .ok_or(EncodeError::BufferTooSmall {
                need: usize::MAX,
                have,
            })?;
        let dst = self
            .buf
            .get_mut(off..end)
            .ok_or(EncodeError::BufferTooSmall { need: end, have })?;
        dst.copy_from_slice(src);
        Ok(())
    }

    pub(crate) fn u16(&mut self, off: usize, v: u16) -> Result<(), EncodeError> {
        self.bytes(off, &v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, off: usize, v: u32) -> Result<(), EncodeError> {
        self.bytes(off, &v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, off: usize, v: u64) -> Result<(), EncodeError> {
        self.bytes(off, &v.to_le_bytes())
    }
}
