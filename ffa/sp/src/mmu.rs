//! The partition's own stage-1 translation (the EL3 SPMC has no stage 2):
//! an identity map of secure DRAM (image, stacks, heap, RAM disk) as
//! normal write-back memory, and of the non-secure ranges the partition
//! serves (the driver's DMA pool, later retrieved FF-A areas) with the NS
//! attribute. The tables come from a fixed pool in .bss, so building them
//! needs no allocator and no atomics (both need the MMU on).

use core::ptr::NonNull;

use aarch64_paging::Mapping;
use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, PageTable, Translation, VaRange};

/// MAIR_EL1 index 0: Device-nGnRE; index 1: Normal, inner/outer write-back
/// read/write-allocate.
const MAIR: u64 = 0x04 | (0xff << 8);
/// TCR_EL1: T0SZ = 32 (4 GiB of VA from TTBR0: all of QEMU virt's RAM and
/// secure DRAM), inner/outer WB WA table walks, inner shareable, 4 KiB
/// granule, TTBR1 walks disabled (EPD1), 32-bit physical addresses.
const TCR: u64 = 32 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23);
/// SCTLR_EL1: M (MMU), C (data cache), I (instruction cache).
const SCTLR_ON: u64 = (1 << 0) | (1 << 2) | (1 << 12);
/// SCTLR_EL1.A: alignment checking, cleared once memory is Normal.
const SCTLR_A: u64 = 1 << 1;

/// Page-table pages available (each maps 512 entries of its level).
const POOL_PAGES: usize = 96;

const NORMAL: El1Attributes = El1Attributes::ATTRIBUTE_INDEX_1
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::VALID)
    .union(El1Attributes::ACCESSED);

#[repr(C, align(4096))]
struct TablePage([u8; 4096]);

/// Zeroed at boot with the rest of .bss.
static mut POOL: [TablePage; POOL_PAGES] = [const { TablePage([0; 4096]) }; POOL_PAGES];

/// Hands out the pool's pages in order; freed tables are not reused (the
/// partition's mappings only ever grow to a bounded set of areas).
pub struct StaticTables {
    pages: &'static mut [TablePage; POOL_PAGES],
    next: usize,
}

impl Translation<El1Attributes> for StaticTables {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El1Attributes>>, PhysicalAddress) {
        let Some(page) = self.pages.get_mut(self.next) else {
            // Out of tables: nothing sensible to continue with.
            crate::halt("page-table pool exhausted");
        };
        self.next += 1;
        page.0.fill(0);
        let ptr = NonNull::from(page).cast::<PageTable<El1Attributes>>();
        (ptr, PhysicalAddress(ptr.as_ptr() as usize))
    }

    unsafe fn deallocate_table(&mut self, _table: NonNull<PageTable<El1Attributes>>) {}

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El1Attributes>> {
        NonNull::new(pa.0 as *mut PageTable<El1Attributes>)
            .unwrap_or_else(|| crate::halt("page table at physical address 0"))
    }
}

/// The partition's translation tables.
pub type Tables = Mapping<StaticTables, El1And0>;

/// Build the tables for secure DRAM `[start, end)`. Runs once, on the
/// primary core, before anything else uses memory.
pub fn build(start: usize, end: usize) -> Tables {
    // SAFETY: called once, before secondary cores run; nothing else refers
    // to the pool.
    let pages = unsafe { &mut *core::ptr::addr_of_mut!(POOL) };
    let mut tables = Mapping::with_asid_and_va_range(
        StaticTables { pages, next: 0 },
        0,
        1,
        El1And0,
        VaRange::Lower,
    );
    map(&mut tables, start, end, NORMAL);
    tables
}

/// Map `[start, end)` of non-secure memory (the driver's), normal WB.
pub fn map_non_secure(tables: &mut Tables, start: usize, end: usize) {
    map(tables, start, end, NORMAL | El1Attributes::NS);
}

/// Map `len` bytes of physical memory at `pa` to `va` (non-secure if `ns`),
/// normal write-back, never executable.
pub fn map_at(tables: &mut Tables, va: usize, pa: usize, len: usize, ns: bool) {
    let mut attrs = NORMAL | El1Attributes::UXN | El1Attributes::PXN;
    if ns {
        attrs |= El1Attributes::NS;
    }
    map_to(tables, va, va + len, pa, attrs);
}

/// Map `[start, end)` of secure memory read-only (the boot information).
pub fn map_secure_ro(tables: &mut Tables, start: usize, end: usize) {
    map(
        tables,
        start,
        end,
        NORMAL | El1Attributes::READ_ONLY | El1Attributes::UXN | El1Attributes::PXN,
    );
}

/// Remove the mapping of `[va, va + len)` and make every core forget it.
pub fn unmap(tables: &mut Tables, va: usize, len: usize) {
    map_to(tables, va, va + len, 0, El1Attributes::empty());
    // SAFETY: TLB maintenance only; no memory is touched.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "tlbi vmalle1is",
            "dsb ish",
            "isb",
            options(nostack)
        );
    }
}

fn map(tables: &mut Tables, start: usize, end: usize, attrs: El1Attributes) {
    map_to(tables, start, end, start, attrs);
}

fn map_to(tables: &mut Tables, start: usize, end: usize, pa: usize, attrs: El1Attributes) {
    if tables
        .map_range(
            &MemoryRegion::new(start, end),
            PhysicalAddress(pa),
            attrs,
            Constraints::empty(),
        )
        .is_err()
    {
        crate::halt("mapping a range failed");
    }
}

/// Turn the MMU on for this core with `tables` (every core calls it).
///
/// # Safety
///
/// `tables` must identity-map everything this core touches from here on:
/// its code, its stack, .data/.bss and the heap.
pub unsafe fn enable(tables: &Tables) {
    // SAFETY: forwarded from the caller.
    unsafe { enable_root(tables.root_address().0) };
    tables.mark_active();
}

/// Turn the MMU on for this core with the tables rooted at `root` (the
/// secondary cores, which must not take the tables' lock with the MMU off).
///
/// # Safety
///
/// As for [`enable`]: the tables at `root` identity-map everything this
/// core touches from here on.
pub unsafe fn enable_root(root: usize) {
    let root = root as u64;
    // SAFETY: the caller guarantees the tables cover what runs next; the
    // sequence is the architectural one (invalidate, set the registers,
    // barrier, enable).
    unsafe {
        core::arch::asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "dsb ish",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            "mrs {tmp}, sctlr_el1",
            "orr {tmp}, {tmp}, {on}",
            "bic {tmp}, {tmp}, {a}",
            "msr sctlr_el1, {tmp}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) TCR,
            ttbr = in(reg) root,
            on = in(reg) SCTLR_ON,
            a = in(reg) SCTLR_A,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}
