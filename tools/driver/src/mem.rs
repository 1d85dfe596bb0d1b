//! A page allocator over the driver's guest RAM.
//!
//! First-fit over a sorted free list of page-aligned ranges; frees coalesce.
//! Guest address 0 is never handed out because the transport uses address 0
//! to mean "not configured" (§3.9).

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Allocation granule.
pub const PAGE_SIZE: u64 = 4096;

/// Allocator errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No free range is large enough.
    #[error("out of guest memory for {size} bytes (align {align})")]
    OutOfMemory {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// Alignment is not a power of two, or size is zero.
    #[error("bad allocation request: size {size}, align {align}")]
    BadRequest {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// The freed range was not allocated.
    #[error("free of {size} bytes at {addr:#x} does not match an allocation")]
    BadFree {
        /// Address.
        addr: u64,
        /// Size.
        size: u64,
    },
}

/// Page allocator over guest RAM.
#[derive(Debug, Clone, Default)]
pub struct GuestAllocator {
    /// Free `[start, end)` ranges, sorted and disjoint.
    free: Vec<(u64, u64)>,
}

fn round_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

impl GuestAllocator {
    /// Manages every region of `mem`.
    pub fn new(mem: &GuestMemoryMmap<()>) -> Self {
        let ranges: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.start_addr().0, r.start_addr().0 + r.len()))
            .collect();
        Self::from_ranges(&ranges)
    }

    /// Manages the given `[start, end)` ranges (trimmed to whole pages, page 0 excluded).
    pub fn from_ranges(ranges: &[(u64, u64)]) -> Self {
        let mut free: Vec<(u64, u64)> = ranges
            .iter()
            .filter_map(|&(s, e)| {
                let s = round_up(s.max(PAGE_SIZE), PAGE_SIZE)?;
                let e = e & !(PAGE_SIZE - 1);
                (s < e).then_some((s, e))
            })
            .collect();
        free.sort_unstable();
        GuestAllocator { free }
    }

    /// Bytes still free.
    pub fn available(&self) -> u64 {
        self.free.iter().map(|(s, e)| e - s).sum()
    }

    /// Allocates `size` bytes (rounded up to pages) aligned to `align` (at least a page).
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<GuestAddress, AllocError> {
        if size == 0 || !align.is_power_of_two() {
            return Err(AllocError::BadRequest { size, align });
        }
        let align = align.max(PAGE_SIZE);
        let size = round_up(size, PAGE_SIZE).ok_or(AllocError::BadRequest { size, align })?;
        for i in 0..self.free.len() {
            let (s, e) = self.free[i];
            let Some(a) = round_up(s, align) else {
                continue;
            };
            if a.checked_add(size).is_some_and(|end| end <= e) {
                let end = a + size;
                // Split the range into the part before and after the allocation.
                let mut repl = Vec::with_capacity(2);
                if s < a {
                    repl.push((s, a));
                }
                if end < e {
                    repl.push((end, e));
                }
                self.free.splice(i..=i, repl);
                return Ok(GuestAddress(a));
            }
        }
        Err(AllocError::OutOfMemory { size, align })
    }

    /// Returns an allocation made with [`GuestAllocator::alloc`] (same size).
    pub fn free(&mut self, addr: GuestAddress, size: u64) -> Result<(), AllocError> {
        let bad = AllocError::BadFree { addr: addr.0, size };
        let size = round_up(size, PAGE_SIZE).ok_or(bad.clone())?;
        let (s, e) = (addr.0, addr.0.checked_add(size).ok_or(bad.clone())?);
        if s % PAGE_SIZE != 0 || size == 0 {
            return Err(bad);
        }
        let i = self.free.partition_point(|&(fs, _)| fs < s);
        // Overlap with a neighbouring free range means a double free.
        if i > 0 && self.free[i - 1].1 > s || i < self.free.len() && self.free[i].0 < e {
            return Err(bad);
        }
        self.free.insert(i, (s, e));
        if i + 1 < self.free.len() && self.free[i + 1].0 == e {
            self.free[i].1 = self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].1 == s {
            self.free[i - 1].1 = self.free[i].1;
            self.free.remove(i);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_coalesce() {
        let mut a = GuestAllocator::from_ranges(&[(0, 16 * PAGE_SIZE)]);
        assert_eq!(a.available(), 15 * PAGE_SIZE, "page 0 is reserved");
        let x = a.alloc(1, 1).expect("alloc");
        assert_eq!(x.0, PAGE_SIZE);
        let y = a.alloc(PAGE_SIZE + 1, 16).expect("alloc");
        assert_eq!(y.0, 2 * PAGE_SIZE);
        let z = a.alloc(PAGE_SIZE, 4 * PAGE_SIZE).expect("aligned");
        assert_eq!(z.0 % (4 * PAGE_SIZE), 0);
        assert_eq!(a.free(y, PAGE_SIZE + 1), Ok(()));
        assert!(a.free(y, PAGE_SIZE).is_err(), "double free detected");
        a.free(x, 1).expect("free");
        a.free(z, PAGE_SIZE).expect("free");
        assert_eq!(a.available(), 15 * PAGE_SIZE);
        assert_eq!(a.free.len(), 1, "fully coalesced");
        assert!(matches!(
            a.alloc(16 * PAGE_SIZE, 1),
            Err(AllocError::OutOfMemory { .. })
        ));
        assert!(a.alloc(0, 1).is_err());
        assert!(a.alloc(1, 3).is_err());
    }

    #[test]
    fn from_guest_memory() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 0x8000)]).expect("mem");
        let mut a = GuestAllocator::new(&mem);
        assert_eq!(a.available(), 0x8000);
        assert_eq!(a.alloc(1, 1).expect("alloc").0, 0x10_0000);
    }
}
