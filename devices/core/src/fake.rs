//! A **fake** guest memory for tests: one byte vector at a bus address.

use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::memory::{DmaMemory, MemoryError, span};

/// `size` bytes of zeroed memory at bus address `base`.
#[derive(Debug)]
pub struct FakeMemory {
    base: u64,
    bytes: RefCell<Vec<u8>>,
}

impl FakeMemory {
    /// Zeroed memory.
    pub fn new(base: u64, size: usize) -> Self {
        Self {
            base,
            bytes: RefCell::new(vec![0; size]),
        }
    }

    fn range(&self, addr: u64, len: usize) -> Result<core::ops::Range<usize>, MemoryError> {
        let err = MemoryError {
            addr,
            len: len as u64,
        };
        let (start, end) = span(addr, len as u64).ok_or(err)?;
        if start < self.base || end > self.base + self.bytes.borrow().len() as u64 {
            return Err(err);
        }
        Ok((start - self.base) as usize..(end - self.base) as usize)
    }
}

impl DmaMemory for FakeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.bytes.borrow()[r]);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, data.len())?;
        self.bytes.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }

    fn check(&self, addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|l| self.range(addr, l).is_ok())
    }
}
