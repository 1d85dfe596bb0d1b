//! The driver's memory, reached by bus address.
//!
//! A hostile driver controls every address: an access that is not wholly
//! inside memory it shared fails with [`MemoryError`], never touches
//! anything else. Implementations copy with volatile accesses where the
//! driver may change the memory concurrently.

use thiserror::Error;

/// An access outside the memory the driver shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("bus address {addr:#x} (+{len} bytes) is outside the memory the driver shared")]
pub struct MemoryError {
    /// First address of the access.
    pub addr: u64,
    /// Its length.
    pub len: u64,
}

/// Memory the device reads and writes by bus address.
pub trait DmaMemory {
    /// Copy `buf.len()` bytes at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Copy `data` to `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError>;
    /// Whether `[addr, addr + len)` is wholly accessible.
    fn check(&self, addr: u64, len: u64) -> bool;

    /// A little-endian u16 at `addr`.
    fn read_u16(&self, addr: u64) -> Result<u16, MemoryError> {
        let mut b = [0; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    /// A little-endian u32 at `addr`.
    fn read_u32(&self, addr: u64) -> Result<u32, MemoryError> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// A little-endian u64 at `addr`.
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Store a little-endian u16 at `addr`.
    fn write_u16(&self, addr: u64, v: u16) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }
    /// Store a little-endian u32 at `addr`.
    fn write_u32(&self, addr: u64, v: u32) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }
}

/// `[addr, addr + len)` as a range, if it does not wrap.
pub fn span(addr: u64, len: u64) -> Option<(u64, u64)> {
    Some((addr, addr.checked_add(len)?))
}
