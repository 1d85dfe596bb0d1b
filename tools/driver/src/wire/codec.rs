//! Little-endian payload reader and writer with length checks, and the
//! feature-words body shared by SET_DRIVER_FEATURES and the
//! GET_DEVICE_FEATURES response.

use super::error::WireError;

/// Little-endian payload reader with length checks.
pub(super) struct Rd<'a> {
    name: &'static str,
    b: &'a [u8],
}

impl<'a> Rd<'a> {
    pub(super) fn new(name: &'static str, b: &'a [u8], need: usize) -> Result<Self, WireError> {
        if b.len() < need {
            return Err(WireError::PayloadTooShort {
                name,
                need,
                got: b.len(),
            });
        }
        Ok(Rd { name, b })
    }
    pub(super) fn need(&self, need: usize) -> Result<(), WireError> {
        if self.b.len() < need {
            return Err(WireError::PayloadTooShort {
                name: self.name,
                need,
                got: self.b.len(),
            });
        }
        Ok(())
    }
    // Callers check lengths with `new`/`need` first, so the slices below are in range.
    pub(super) fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.b[off], self.b[off + 1]])
    }
    pub(super) fn u32(&self, off: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.b[off..off + 4]);
        u32::from_le_bytes(a)
    }
    pub(super) fn u64(&self, off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.b[off..off + 8]);
        u64::from_le_bytes(a)
    }
    pub(super) fn bytes(&self, off: usize, len: usize) -> Result<Vec<u8>, WireError> {
        let end = off.checked_add(len).ok_or(WireError::PayloadTooShort {
            name: self.name,
            need: usize::MAX,
            got: self.b.len(),
        })?;
        self.need(end)?;
        Ok(self.b[off..end].to_vec())
    }
}

/// Little-endian payload writer.
#[derive(Default)]
pub(super) struct Wr(pub(super) Vec<u8>);

impl Wr {
    pub(super) fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(super) fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
}

pub(super) fn features_body(block_index: u32, features: &[u32]) -> Wr {
    let mut w = Wr::default().u32(block_index).u32(features.len() as u32);
    for f in features {
        w = w.u32(*f);
    }
    w
}

pub(super) fn decode_features_body(r: &Rd<'_>) -> Result<(u32, Vec<u32>), WireError> {
    let block_index = r.u32(0);
    let n = r.u32(4) as usize;
    let need = n
        .checked_mul(4)
        .and_then(|b| b.checked_add(8))
        .unwrap_or(usize::MAX);
    r.need(need)?;
    Ok((block_index, (0..n).map(|i| r.u32(8 + 4 * i)).collect()))
}
