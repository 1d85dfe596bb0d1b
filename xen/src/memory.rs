//! Guest memory of a Xen guest, as `vm-memory` regions devices can use.
//!
//! Devices are written against `vmsg_backend::memory::GuestMemory`, today a
//! `GuestMemoryMmap<()>`: a sorted set of mmap regions at bus addresses.
//! This module builds exactly that type from Xen mappings, so the devices
//! need no change:
//!
//! - **Grant mode** ([`GrantCache`]): the driver's bus addresses are grant
//!   DMA addresses, `1 << 63 | gref << 12` (what Linux's `xen-grant-dma`
//!   produces), and consecutive grant references are consecutive bus pages.
//!   The frontend announces the pool of grants it will use (as runs,
//!   [`GrantRuns`]); the backend maps each grant **once**, as one gntdev
//!   mapping per run (chunked at [`MAX_GRANTS_PER_MAP`]), bounded by
//!   `max_grants`, and places each mapping at its bus address. Mappings are
//!   owned by their regions: they are unmapped when the bus drops the cache
//!   *and* every device has dropped its memory handle (the instance resets
//!   the devices before that), never under a device's feet.
//! - **Foreign mode** ([`map_foreign_ranges`]): bus addresses are guest
//!   physical addresses; the backend maps the guest's RAM ranges (from its
//!   own configuration, not from the guest) by GFN through privcmd, at
//!   `gfn << 12`.
//!
//! The frontend side ([`share_grant_pool`]) allocates and grants a pool of
//! its pages (gntalloc) and builds its own view of it at the same bus
//! addresses, so the driver code uses the same addresses the device sees.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion};

use crate::bindings::XEN_PAGE_SIZE;
use crate::gntalloc::{GntallocError, GrantSharer, MAX_PAGES_PER_SHARE};
use crate::gntdev::{GntdevError, Grant, GrantMapper, MAX_GRANTS_PER_MAP};
use crate::privcmd::{ForeignMapper, MAX_FRAMES_PER_MAP, PrivcmdError};
use crate::{DomId, Gfn, GrantRef};

/// Bit 63 marks a grant DMA address (Linux `XEN_GRANT_DMA_ADDR_OFF`).
pub const GRANT_DMA_BIT: u64 = 1 << 63;
/// Most runs a grant pool may be announced as.
pub const MAX_RUNS: usize = 256;
/// Xen page shift.
const PAGE_SHIFT: u32 = 12;

/// Errors of building guest memory from Xen mappings.
#[derive(Debug, Error)]
pub enum XenMemoryError {
    /// A run list (`"first+count,..."`) does not parse or is out of range.
    #[error("bad run list: {0}")]
    BadRuns(String),
    /// More grants than the bound allows.
    #[error("{requested} grants requested, {mapped} mapped, the bound is {max}")]
    TooManyGrants {
        /// Grants the request adds.
        requested: usize,
        /// Grants already mapped.
        mapped: usize,
        /// The bound.
        max: usize,
    },
    /// Mapping a run of grants failed (bad, revoked or foreign references).
    #[error("mapping grants {first}..+{count} of domain {domid}: {source}")]
    Grant {
        /// The granting domain.
        domid: DomId,
        /// First reference of the failed chunk.
        first: GrantRef,
        /// Its length.
        count: u32,
        /// What gntdev said.
        #[source]
        source: GntdevError,
    },
    /// Mapping guest frames failed (some or all).
    #[error("mapping frames {first:#x}..+{count} of domain {domid}: {source}")]
    Foreign {
        /// The foreign domain.
        domid: DomId,
        /// First frame of the failed chunk.
        first: Gfn,
        /// Its length.
        count: u64,
        /// What privcmd said.
        #[source]
        source: PrivcmdError,
    },
    /// Sharing our own pages failed (frontend side).
    #[error("sharing pages: {0}")]
    Share(#[from] GntallocError),
    /// The regions do not form a valid memory map.
    #[error("memory layout: {0}")]
    Layout(String),
    /// Nothing to map.
    #[error("empty memory")]
    Empty,
}

/// The bus address of page `gref` in grant mode.
pub fn grant_dma_addr(gref: GrantRef) -> GuestAddress {
    GuestAddress(GRANT_DMA_BIT | (u64::from(gref) << PAGE_SHIFT))
}

/// The grant reference and in-page offset of a grant DMA address, `None`
/// if bit 63 is clear or the reference does not fit 32 bits.
pub fn grant_of(addr: GuestAddress) -> Option<(GrantRef, u64)> {
    if addr.0 & GRANT_DMA_BIT == 0 {
        return None;
    }
    let rest = addr.0 & !GRANT_DMA_BIT;
    let gref = GrantRef::try_from(rest >> PAGE_SHIFT).ok()?;
    Some((gref, rest & (XEN_PAGE_SIZE as u64 - 1)))
}

/// A run of consecutive page numbers (grant references or GFNs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Run {
    /// The first.
    pub first: u64,
    /// How many (at least 1).
    pub count: u64,
}

impl Run {
    /// One past the last.
    pub fn end(&self) -> u64 {
        self.first.saturating_add(self.count)
    }
}

/// A list of runs, written `first+count` joined by `,` (`count` 1 may be
/// omitted: `17,20+4`): the grant pool of a frontend (`grants` in
/// xenstore) and the RAM ranges of a foreign-mode guest (configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantRuns {
    runs: Vec<Run>,
}

impl GrantRuns {
    /// Runs of consecutive values of `refs`, in order (not merged across
    /// calls to [`GrantRuns::extend_from_refs`]).
    pub fn from_refs(refs: &[GrantRef]) -> Self {
        let mut r = Self::default();
        r.extend_from_refs(refs);
        r
    }

    /// Append the runs of `refs` without merging with what is there.
    pub fn extend_from_refs(&mut self, refs: &[GrantRef]) {
        let mut cur: Option<Run> = None;
        for &g in refs {
            let g = u64::from(g);
            cur = match cur {
                Some(mut r) if r.end() == g => {
                    r.count += 1;
                    Some(r)
                }
                Some(r) => {
                    self.runs.push(r);
                    Some(Run { first: g, count: 1 })
                }
                None => Some(Run { first: g, count: 1 }),
            };
        }
        self.runs.extend(cur);
    }

    /// A list of explicit runs.
    pub fn from_runs(runs: Vec<Run>) -> Self {
        Self { runs }
    }

    /// The runs.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Total pages (saturating).
    pub fn pages(&self) -> u64 {
        self.runs
            .iter()
            .fold(0u64, |acc, r| acc.saturating_add(r.count))
    }

    /// Parse and validate: at most `max_runs` runs, counts ≥ 1, values and
    /// ends within `u32` (`limit_u32`) or `u64`, no overlaps.
    pub fn parse(s: &str, max_runs: usize, limit_u32: bool) -> Result<Self, XenMemoryError> {
        let bad = |why: &str| XenMemoryError::BadRuns(format!("{why} in {:?}", truncate(s)));
        let s = s.trim_end_matches('\0');
        if s.is_empty() {
            return Err(bad("empty list"));
        }
        let limit = if limit_u32 {
            u64::from(u32::MAX) + 1
        } else {
            u64::MAX
        };
        let mut runs = Vec::new();
        for part in s.split(',') {
            if runs.len() >= max_runs {
                return Err(bad("too many runs"));
            }
            let (first, count) = match part.split_once('+') {
                Some((f, c)) => (parse_dec(f), parse_dec(c)),
                None => (parse_dec(part), Some(1)),
            };
            let (Some(first), Some(count)) = (first, count) else {
                return Err(bad("not first+count"));
            };
            if count == 0 {
                return Err(bad("empty run"));
            }
            match first.checked_add(count) {
                Some(end) if end <= limit => {}
                _ => return Err(bad("run out of range")),
            }
            runs.push(Run { first, count });
        }
        let mut sorted = runs.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0].end() > w[1].first) {
            return Err(bad("overlapping runs"));
        }
        Ok(Self { runs })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A plain decimal number (no sign, no spaces, no leading zeros beyond "0").
fn parse_dec(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for GrantRuns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.runs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.count == 1 {
                write!(f, "{}", r.first)?;
            } else {
                write!(f, "{}+{}", r.first, r.count)?;
            }
        }
        Ok(())
    }
}

impl FromStr for GrantRuns {
    type Err = XenMemoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, MAX_RUNS, false)
    }
}

/// Counters of a [`GrantCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantCacheStats {
    /// gntdev map operations issued.
    pub map_ops: u64,
    /// Grants mapped by them.
    pub grants_mapped: u64,
    /// Grants requested that were mapped already (served from the cache).
    pub hits: u64,
    /// Grants requested that had to be mapped.
    pub misses: u64,
    /// Requests refused by the bound.
    pub refused: u64,
    /// Grants dropped by [`GrantCache::clear`].
    pub unmapped: u64,
}

/// The grants of one frontend domain mapped into the backend, each once,
/// bounded, placed at their grant DMA addresses.
#[derive(Debug)]
pub struct GrantCache {
    domid: DomId,
    max_grants: usize,
    writable: bool,
    /// First grant of each mapping → its region (sorted by address).
    regions: BTreeMap<GrantRef, Arc<GuestRegionMmap<()>>>,
    mapped: usize,
    stats: GrantCacheStats,
}

impl GrantCache {
    /// An empty cache for grants of `domid`, holding at most `max_grants`.
    pub fn new(domid: DomId, max_grants: usize, writable: bool) -> Self {
        Self {
            domid,
            max_grants,
            writable,
            regions: BTreeMap::new(),
            mapped: 0,
            stats: GrantCacheStats::default(),
        }
    }

    /// Grants mapped now.
    pub fn len(&self) -> usize {
        self.mapped
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.mapped == 0
    }

    /// The bound.
    pub fn max_grants(&self) -> usize {
        self.max_grants
    }

    /// Counters so far.
    pub fn stats(&self) -> GrantCacheStats {
        self.stats
    }

    /// Whether `gref` is mapped.
    pub fn contains(&self, gref: GrantRef) -> bool {
        self.regions
            .range(..=gref)
            .next_back()
            .is_some_and(|(&first, r)| {
                u64::from(gref) < u64::from(first) + r.len() / XEN_PAGE_SIZE as u64
            })
    }

    /// Map every run of `runs` not mapped yet. All or nothing: if a grant
    /// cannot be mapped, or the bound would be exceeded, nothing of this
    /// call stays mapped and the error says why.
    pub fn map_runs<M: GrantMapper + ?Sized>(
        &mut self,
        mapper: &M,
        runs: &GrantRuns,
    ) -> Result<(), XenMemoryError> {
        // More grants than the cache can hold cannot all be hits: refuse
        // before walking them (a run may claim 2^32 grants).
        let pages = runs.pages();
        if pages > self.max_grants as u64 {
            self.stats.refused += 1;
            return Err(XenMemoryError::TooManyGrants {
                requested: usize::try_from(pages).unwrap_or(usize::MAX),
                mapped: self.mapped,
                max: self.max_grants,
            });
        }
        // The grants not mapped yet, as runs.
        let mut todo: Vec<(GrantRef, u32)> = Vec::new();
        let mut hits = 0u64;
        for r in runs.runs() {
            let mut start = None;
            for g in r.first..r.end() {
                let Ok(g) = GrantRef::try_from(g) else {
                    return Err(XenMemoryError::BadRuns(format!("grant {g} beyond 32 bits")));
                };
                if self.contains(g) {
                    hits += 1;
                    if let Some(s) = start.take() {
                        todo.push((s, g - s));
                    }
                } else if start.is_none() {
                    start = Some(g);
                }
            }
            if let Some(s) = start {
                let n = u32::try_from(r.end() - u64::from(s))
                    .map_err(|_| XenMemoryError::BadRuns("run beyond 32 bits".into()))?;
                todo.push((s, n));
            }
        }
        let new: usize = todo.iter().map(|&(_, n)| n as usize).sum();
        if self.mapped.saturating_add(new) > self.max_grants {
            self.stats.refused += 1;
            return Err(XenMemoryError::TooManyGrants {
                requested: new,
                mapped: self.mapped,
                max: self.max_grants,
            });
        }
        let mut made: Vec<(GrantRef, Arc<GuestRegionMmap<()>>)> = Vec::new();
        for (first, count) in todo {
            let mut off = 0u32;
            while off < count {
                let n = (count - off).min(MAX_GRANTS_PER_MAP as u32);
                let chunk_first = first + off;
                let grants: Vec<Grant> = (chunk_first..chunk_first + n)
                    .map(|gref| Grant {
                        domid: self.domid,
                        gref,
                    })
                    .collect();
                let region =
                    mapper
                        .map_grants_region(&grants, self.writable)
                        .map_err(|source| XenMemoryError::Grant {
                            domid: self.domid,
                            first: chunk_first,
                            count: n,
                            source,
                        })?;
                self.stats.map_ops += 1;
                let region = GuestRegionMmap::new(region, grant_dma_addr(chunk_first))
                    .ok_or_else(|| XenMemoryError::Layout("grant region overflows".into()))?;
                made.push((chunk_first, Arc::new(region)));
                off += n;
            }
        }
        // Every map succeeded (an error above dropped `made`: unmapped).
        for (first, region) in made {
            self.regions.insert(first, region);
        }
        self.mapped += new;
        self.stats.grants_mapped += new as u64;
        self.stats.misses += new as u64;
        self.stats.hits += hits;
        Ok(())
    }

    /// The mapped grants as guest memory at their bus addresses. The memory
    /// shares the mappings: they stay mapped until both it and the cache
    /// let go of them.
    pub fn memory(&self) -> Result<GuestMemoryMmap<()>, XenMemoryError> {
        if self.regions.is_empty() {
            return Err(XenMemoryError::Empty);
        }
        GuestMemoryMmap::from_arc_regions(self.regions.values().cloned().collect())
            .map_err(|e| XenMemoryError::Layout(e.to_string()))
    }

    /// Drop every mapping (reset or teardown).
    pub fn clear(&mut self) {
        self.stats.unmapped += self.mapped as u64;
        self.regions.clear();
        self.mapped = 0;
    }
}

/// Map guest RAM `ranges` (GFN runs) of `domid` through privcmd, each at
/// bus address `gfn << 12`, in chunks of at most [`MAX_FRAMES_PER_MAP`]
/// frames. All or nothing.
pub fn map_foreign_ranges<P: ForeignMapper + ?Sized>(
    privcmd: &P,
    domid: DomId,
    ranges: &GrantRuns,
    writable: bool,
) -> Result<GuestMemoryMmap<()>, XenMemoryError> {
    let mut sorted = ranges.runs().to_vec();
    sorted.sort_unstable();
    let mut regions = Vec::new();
    for r in sorted {
        let mut off = 0u64;
        while off < r.count {
            let n = (r.count - off).min(MAX_FRAMES_PER_MAP as u64);
            let first = r.first + off;
            let base = first
                .checked_mul(XEN_PAGE_SIZE as u64)
                .filter(|b| b & GRANT_DMA_BIT == 0)
                .ok_or_else(|| XenMemoryError::BadRuns(format!("gfn {first:#x} out of range")))?;
            let gfns: Vec<Gfn> = (first..first + n).collect();
            let region = privcmd
                .map_foreign_region(domid, &gfns, writable)
                .map_err(|source| XenMemoryError::Foreign {
                    domid,
                    first,
                    count: n,
                    source,
                })?;
            let region = GuestRegionMmap::new(region, GuestAddress(base))
                .ok_or_else(|| XenMemoryError::Layout("RAM region overflows".into()))?;
            regions.push(region);
            off += n;
        }
    }
    if regions.is_empty() {
        return Err(XenMemoryError::Empty);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| XenMemoryError::Layout(e.to_string()))
}

/// A frontend's grant pool: pages shared with the backend, seen by the
/// driver at their grant DMA addresses.
#[derive(Debug)]
pub struct GrantPool {
    /// The driver's view of the pool.
    pub memory: GuestMemoryMmap<()>,
    /// The runs to announce (`grants` in xenstore).
    pub runs: GrantRuns,
}

/// Allocate `pages` pages, grant them to `backend` (writable) and map them
/// at their grant DMA addresses. The grants stay valid as long as the
/// returned memory (or the backend's mapping) lives.
pub fn share_grant_pool<S: GrantSharer + ?Sized>(
    sharer: &S,
    backend: DomId,
    pages: usize,
) -> Result<GrantPool, XenMemoryError> {
    if pages == 0 {
        return Err(XenMemoryError::Empty);
    }
    let mut runs = GrantRuns::default();
    let mut regions: Vec<GuestRegionMmap<()>> = Vec::new();
    let mut left = pages;
    while left > 0 {
        let n = left.min(MAX_PAGES_PER_SHARE);
        let alloc = sharer.alloc_grants(backend, n, true)?;
        let piece = GrantRuns::from_refs(alloc.grefs());
        let mut page = 0usize;
        for r in piece.runs() {
            // Runs of one allocation: counts are bounded by its size.
            let count = r.count as usize;
            let region: MmapRegion<()> = alloc.map(page, count)?;
            let gref = GrantRef::try_from(r.first)
                .map_err(|_| XenMemoryError::BadRuns("grant beyond 32 bits".into()))?;
            regions.push(
                GuestRegionMmap::new(region, grant_dma_addr(gref))
                    .ok_or_else(|| XenMemoryError::Layout("grant region overflows".into()))?,
            );
            page += count;
        }
        runs.runs.extend_from_slice(piece.runs());
        left -= n;
        // `alloc` drops here: the regions keep the grants alive.
    }
    regions.sort_by_key(|r| r.start_addr());
    let memory = GuestMemoryMmap::from_regions(regions)
        .map_err(|e| XenMemoryError::Layout(e.to_string()))?;
    Ok(GrantPool { memory, runs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_dma_addresses() {
        assert_eq!(grant_dma_addr(0), GuestAddress(1 << 63));
        assert_eq!(grant_dma_addr(5).0, (1 << 63) | 0x5000);
        assert_eq!(grant_of(GuestAddress((1 << 63) | 0x5123)), Some((5, 0x123)));
        assert_eq!(grant_of(GuestAddress(0x5123)), None);
        assert_eq!(
            grant_of(grant_dma_addr(u32::MAX)),
            Some((u32::MAX, 0)),
            "the largest reference"
        );
        assert_eq!(grant_of(GuestAddress(u64::MAX)), None, "beyond 32 bits");
    }

    #[test]
    fn runs_from_refs_and_display() {
        let r = GrantRuns::from_refs(&[8, 9, 10, 12, 20, 21]);
        assert_eq!(r.to_string(), "8+3,12,20+2");
        assert_eq!(r.pages(), 6);
        let mut r = GrantRuns::from_refs(&[1, 2]);
        r.extend_from_refs(&[3, 4]);
        assert_eq!(r.to_string(), "1+2,3+2", "not merged across allocations");
        assert_eq!(GrantRuns::from_refs(&[]).to_string(), "");
    }

    #[test]
    fn runs_parse_round_trip_and_reject() {
        let r: GrantRuns = "8+3,12,20+2".parse().unwrap();
        assert_eq!(r.to_string(), "8+3,12,20+2");
        assert_eq!(GrantRuns::parse("8+3\0", 4, true).unwrap().pages(), 3);
        for bad in [
            "",
            "+",
            "8+",
            "+3",
            "8+0",
            "a",
            "8 +3",
            "08+1",
            "-1",
            "8+3,",
            ",8",
            "8+3,10",
            "4294967295+2",
            "1+1,1+1",
        ] {
            assert!(GrantRuns::parse(bad, 16, true).is_err(), "{bad:?}");
        }
        assert!(GrantRuns::parse("4294967295", 16, true).is_ok());
        assert!(
            GrantRuns::parse("1,2,3", 2, true).is_err(),
            "run count bound"
        );
        assert!(GrantRuns::parse("18446744073709551615+1", 2, false).is_err());
    }
}
