//! Guest memory from grants and foreign frames over the fake Xen: the grant
//! cache (each grant once, bounded, all or nothing), the frontend's pool at
//! grant DMA addresses, foreign RAM at guest-physical addresses, and that
//! bytes really cross between the two views.

#![allow(clippy::unwrap_used)]

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmsg_xen::fake::FakeXen;
use vmsg_xen::memory::{
    GRANT_DMA_BIT, GrantCache, GrantRuns, XenMemoryError, grant_dma_addr, map_foreign_ranges,
    share_grant_pool,
};

#[test]
fn pool_and_cache_share_bytes_at_grant_dma_addresses() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let pool = share_grant_pool(&domu.gntalloc(), 0, 8).unwrap();
    assert_eq!(pool.runs.pages(), 8);
    let first = pool.runs.runs()[0].first as u32;

    let mut cache = GrantCache::new(1, 64, true);
    cache.map_runs(&xen.domain(0).gntdev(), &pool.runs).unwrap();
    let dev = cache.memory().unwrap();

    // Driver writes across a page boundary, device reads it, and back.
    let at = GuestAddress(grant_dma_addr(first + 2).0 + 4090);
    pool.memory.write_slice(b"0123456789", at).unwrap();
    let mut got = [0u8; 10];
    dev.read_slice(&mut got, at).unwrap();
    assert_eq!(&got, b"0123456789");
    dev.write_obj(0xdead_beef_u32, grant_dma_addr(first + 7))
        .unwrap();
    assert_eq!(
        pool.memory
            .read_obj::<u32>(grant_dma_addr(first + 7))
            .unwrap(),
        0xdead_beef
    );
    // Nothing outside the pool.
    assert!(!GuestMemoryBackend::check_range(
        &dev,
        grant_dma_addr(first + 8),
        1
    ));
    assert!(!GuestMemoryBackend::check_range(
        &dev,
        GuestAddress(0x1000),
        1
    ));
    assert!(dev.iter().all(|r| r.start_addr().0 & GRANT_DMA_BIT != 0));
}

#[test]
fn each_grant_is_mapped_once() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let pool = share_grant_pool(&domu.gntalloc(), 0, 16).unwrap();
    let first = pool.runs.runs()[0].first;
    let gntdev = xen.domain(0).gntdev();
    let mut cache = GrantCache::new(1, 64, true);
    cache
        .map_runs(&gntdev, &format!("{first}+4").parse().unwrap())
        .unwrap();
    cache
        .map_runs(&gntdev, &format!("{first}+8").parse().unwrap())
        .unwrap();
    cache
        .map_runs(&gntdev, &format!("{}+2", first + 2).parse().unwrap())
        .unwrap();
    let s = cache.stats();
    assert_eq!(cache.len(), 8);
    assert_eq!((s.misses, s.hits, s.map_ops), (8, 6, 2));
    assert!(cache.contains(first as u32 + 7));
    assert!(!cache.contains(first as u32 + 8));
    assert_eq!(xen.stats().grants_mapped, 8);
    // Adjacent runs are separate regions, and reads span them.
    let mem = cache.memory().unwrap();
    assert_eq!(mem.num_regions(), 2);
    let mut buf = [0u8; 8192];
    mem.read_slice(&mut buf, grant_dma_addr(first as u32 + 2))
        .unwrap();
}

#[test]
fn the_bound_and_all_or_nothing() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let pool = share_grant_pool(&domu.gntalloc(), 0, 16).unwrap();
    let first = pool.runs.runs()[0].first;
    let gntdev = xen.domain(0).gntdev();
    let mut cache = GrantCache::new(1, 10, true);
    cache
        .map_runs(&gntdev, &format!("{first}+8").parse().unwrap())
        .unwrap();
    match cache.map_runs(&gntdev, &format!("{}+4", first + 8).parse().unwrap()) {
        Err(XenMemoryError::TooManyGrants {
            requested: 4,
            mapped: 8,
            max: 10,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(cache.stats().refused, 1);
    // A run claiming every grant reference is refused without walking it.
    let huge = GrantRuns::parse("0+4294967296", 4, true).unwrap();
    assert!(matches!(
        cache.map_runs(&gntdev, &huge),
        Err(XenMemoryError::TooManyGrants { .. })
    ));
    assert_eq!(cache.stats().refused, 2);

    // Second run unmappable: the first run of the same call is undone.
    xen.revoke_grant(1, first as u32 + 9).unwrap();
    let maps_before = xen.stats().grant_maps;
    let runs: GrantRuns = format!("{},{}", first + 8, first + 9).parse().unwrap();
    assert!(matches!(
        cache.map_runs(&gntdev, &runs),
        Err(XenMemoryError::Grant { .. })
    ));
    assert_eq!(
        xen.stats().grant_maps,
        maps_before + 1,
        "the first one was mapped"
    );
    assert_eq!(cache.len(), 8, "and dropped again");
    assert!(!cache.contains(first as u32 + 8));
}

#[test]
fn memory_handed_out_outlives_clear() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let pool = share_grant_pool(&domu.gntalloc(), 0, 4).unwrap();
    let first = pool.runs.runs()[0].first as u32;
    let mut cache = GrantCache::new(1, 64, true);
    cache.map_runs(&xen.domain(0).gntdev(), &pool.runs).unwrap();
    let dev = cache.memory().unwrap();
    cache.clear();
    assert!(cache.is_empty());
    assert!(cache.memory().is_err());
    // A device still holding the memory keeps working.
    dev.write_obj(7u8, grant_dma_addr(first)).unwrap();
    assert_eq!(
        pool.memory.read_obj::<u8>(grant_dma_addr(first)).unwrap(),
        7
    );
    assert_eq!(cache.stats().unmapped, 4);
}

#[test]
fn a_large_pool_is_several_allocations_never_merged() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let pool = share_grant_pool(&domu.gntalloc(), 0, 1500).unwrap();
    assert_eq!(pool.runs.pages(), 1500);
    assert_eq!(pool.runs.runs().len(), 2, "{}", pool.runs);
    let mut cache = GrantCache::new(1, 4096, true);
    cache.map_runs(&xen.domain(0).gntdev(), &pool.runs).unwrap();
    assert_eq!(cache.len(), 1500);
    assert_eq!(cache.stats().map_ops, 2);
}

#[test]
fn foreign_ram_at_guest_physical_addresses() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 64).unwrap();
    let ranges: GrantRuns = "0+16,32+16".parse().unwrap();
    let ram = map_foreign_ranges(&xen.domain(0).privcmd(), 1, &ranges, true).unwrap();
    assert_eq!(ram.num_regions(), 2);
    ram.write_obj(0x1122_3344_u32, GuestAddress(33 * 4096 + 8))
        .unwrap();
    let mut b = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&*domu.ram_file().unwrap(), &mut b, 33 * 4096 + 8)
        .unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x1122_3344);
    assert!(!GuestMemoryBackend::check_range(
        &ram,
        GuestAddress(20 * 4096),
        1
    ));

    xen.fail_foreign_frames(1, [40], libc::EINVAL);
    assert!(matches!(
        map_foreign_ranges(&xen.domain(0).privcmd(), 1, &ranges, true),
        Err(XenMemoryError::Foreign { first: 32, .. })
    ));
}
