//! A bare-metal normal-world driver side for vmsgd's secure partition, under
//! a real SPMC: it exercises what the RFC Linux driver cannot — spec-v2
//! framing over FFA_MSG_SEND_DIRECT_REQ2, the three-step VERSION, FF-A
//! memory sharing (MEM_SHARE → AREA_SHARE → the partition's
//! MEM_RETRIEVE_REQ → AREA_UNSHARE → the partition's RELINQUISH →
//! MEM_RECLAIM), EVENT_POLL, RESET — drives the partition's virtio-rng and
//! virtio-blk through virtqueues in the shared area, measures round trips,
//! and prints `VMSG-CASE` verdict lines on the UART.
//!
//! Written from the reference (virtio-msg-v2.md §3, §8; FF-A v1.2), sharing
//! no code with the device side. Runs at NS-EL1 with the MMU off (QEMU does
//! not model caches; on hardware the shared area would need matching
//! cacheable mappings on both sides).
#![no_std]
#![no_main]

mod boot;
mod ffa;
mod uart;
mod virtio;

use core::fmt::Write;

use uart::{Msg, Uart};
use virtio::{Area, Driver};

/// The virtio-msg FF-A device role (c66028b5-2498-4aa1-9de7-77da6122abf0)
/// as the 16 bytes of RFC 4122 order.
pub const DEVICE_UUID: [u8; 16] = [
    0xc6, 0x60, 0x28, 0xb5, 0x24, 0x98, 0x4a, 0xa1, 0x9d, 0xe7, 0x77, 0xda, 0x61, 0x22, 0xab, 0xf0,
];

/// Pages of the area the client shares with the partition.
const AREA_PAGES: u32 = 64;
/// Round trips per benchmark.
const ROUNDS: u32 = 500;

#[repr(C, align(4096))]
struct AreaMemory([u8; AREA_PAGES as usize * 4096]);

static mut AREA: AreaMemory = AreaMemory([0; AREA_PAGES as usize * 4096]);

/// A case's outcome: its facts, or why it failed.
pub type Outcome = Result<Msg, Msg>;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(Uart, "VMSG-CASE nw-client FAIL panic: {info}");
    ffa::system_off()
}

fn verdict(name: &str, r: Outcome) -> bool {
    let (word, text) = match &r {
        Ok(m) => ("PASS", m),
        Err(m) => ("FAIL", m),
    };
    let _ = writeln!(Uart, "VMSG-CASE {name} {word} {text}");
    r.is_ok()
}

/// The client's first Rust code, from `_start`.
#[unsafe(no_mangle)]
extern "C" fn client_main() -> ! {
    let _ = writeln!(Uart, "nw-client: up");
    run();
    let _ = writeln!(Uart, "VMSG-NW-CLIENT-DONE");
    ffa::system_off()
}

fn run() {
    let mut ffa = match ffa::Ffa::init() {
        Ok(f) => f,
        Err(e) => {
            verdict("nw-discover", Err(msg!("FF-A set-up: {e}")));
            return;
        }
    };
    let sp = match ffa.partition(&DEVICE_UUID) {
        Ok(p) => p,
        Err(e) => {
            verdict("nw-discover", Err(msg!("PARTITION_INFO_GET: {e}")));
            return;
        }
    };
    verdict(
        "nw-discover",
        Ok(msg!(
            "FF-A {:#x}, own id {:#x}; partition {:#x} has the device UUID, properties {:#x}",
            ffa.version,
            ffa.own_id,
            sp.id,
            sp.properties
        )),
    );
    // The area's address is its physical address (MMU off); the program
    // uses it for nothing else.
    let base = core::ptr::addr_of_mut!(AREA).cast::<u8>();
    let area = Area::new(base, AREA_PAGES as usize * 4096, 1);
    let mut drv = Driver::new(&mut ffa, sp.id, area);
    if !verdict("nw-version", drv.negotiate()) {
        return;
    }
    let share = drv.share_area(AREA_PAGES);
    let handle = match &share {
        Ok((h, _)) => *h,
        Err(_) => 0,
    };
    if !verdict("nw-area-share", share.map(|(_, m)| m)) {
        return;
    }
    verdict("nw-devices", drv.devices());
    verdict("nw-rng", drv.rng());
    verdict("nw-blk", drv.blk());
    verdict("nw-bench", drv.bench(ROUNDS));
    verdict("nw-unshare", drv.unshare(handle));
    verdict("nw-reset", drv.reset());
}
