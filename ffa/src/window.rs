//! A window of the driver's memory the partition has mapped, and the bus
//! memory devices see through it.
//!
//! The driver may change its memory at any time, so every access is a
//! volatile copy; a window is only ever dereferenced inside its bounds.

use alloc::collections::BTreeMap;
use core::ptr;

use vmsg_device_core::memory::{DmaMemory, MemoryError};

/// `len` bytes of mapped driver memory at `ptr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a window names memory mapped for the whole partition, not for
// one core; the bus that holds it serialises every access behind its lock.
unsafe impl Send for Window {}

impl Window {
    /// A window over `[ptr, ptr + len)`.
    ///
    /// # Safety
    ///
    /// The range must stay mapped, readable and writable for as long as the
    /// window is in use (until the bus gives it back to the SPMC), and hold
    /// nothing of the partition's own: the driver writes it concurrently.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Self { ptr, len }
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its start (for the SPMC that unmaps it).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn range(&self, offset: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(offset).ok()?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }

    /// Copy `buf.len()` bytes at `offset` out; false if out of bounds.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(off) = self.range(offset, buf.len()) else {
            return false;
        };
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `off + i < len` (checked above) and the window is
            // mapped and readable (constructor contract).
            *b = unsafe { ptr::read_volatile(self.ptr.add(off + i)) };
        }
        true
    }

    /// Copy `data` in at `offset`; false if out of bounds.
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        let Some(off) = self.range(offset, data.len()) else {
            return false;
        };
        for (i, &b) in data.iter().enumerate() {
            // SAFETY: as in `read`, and the window is writable.
            unsafe { ptr::write_volatile(self.ptr.add(off + i), b) };
        }
        true
    }
}

/// How bus addresses name driver memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// `area_id << shift | offset`: FF-A areas.
    Areas {
        /// 48 (v2) or 56 (RFC header).
        shift: u32,
    },
    /// Physical addresses inside one pre-mapped DMA pool (RFC bus).
    Pool {
        /// The pool's bus (physical) address.
        base: u64,
    },
}

/// The driver memory a bus instance can reach: its areas, or its pool.
#[derive(Debug)]
pub struct BusMemory<'a> {
    /// How addresses are formed.
    pub addressing: Addressing,
    /// Areas by id.
    pub areas: &'a BTreeMap<u16, Window>,
    /// The pool window (addressing `Pool`).
    pub pool: Option<&'a Window>,
}

impl BusMemory<'_> {
    fn locate(&self, addr: u64, len: usize) -> Result<(&Window, u64), MemoryError> {
        let err = MemoryError {
            addr,
            len: len as u64,
        };
        match self.addressing {
            Addressing::Areas { shift } => {
                let id = u16::try_from(addr >> shift).map_err(|_| err)?;
                let offset = addr & ((1u64 << shift) - 1);
                Ok((self.areas.get(&id).ok_or(err)?, offset))
            }
            Addressing::Pool { base } => {
                let offset = addr.checked_sub(base).ok_or(err)?;
                Ok((self.pool.ok_or(err)?, offset))
            }
        }
    }
}

impl DmaMemory for BusMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let (w, off) = self.locate(addr, buf.len())?;
        w.read(off, buf).then_some(()).ok_or(MemoryError {
            addr,
            len: buf.len() as u64,
        })
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let (w, off) = self.locate(addr, data.len())?;
        w.write(off, data).then_some(()).ok_or(MemoryError {
            addr,
            len: data.len() as u64,
        })
    }

    fn check(&self, addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|l| {
            self.locate(addr, l)
                .is_ok_and(|(w, off)| w.range(off, l).is_some())
        })
    }
}
