//! The partition's heap: a fixed region of .bss behind a spin lock (usable
//! once the MMU is on: the lock needs exclusive accesses to Normal memory).

use linked_list_allocator::LockedHeap;

const HEAP_SIZE: usize = 2 << 20;

#[repr(C, align(4096))]
struct HeapArea([u8; HEAP_SIZE]);

static mut AREA: HeapArea = HeapArea([0; HEAP_SIZE]);

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hand the area to the allocator. Once, on the primary core, MMU on.
pub fn init() {
    // SAFETY: called once; the area is used by nothing else and lives for
    // the program.
    unsafe {
        let start = core::ptr::addr_of_mut!(AREA).cast::<u8>();
        HEAP.lock().init(start, HEAP_SIZE);
    }
}
