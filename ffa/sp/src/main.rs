//! vmsgd as an FF-A secure partition: an S-EL1 image entered by the SPMC,
//! serving virtio-msg devices to the normal world over FF-A direct messages.
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod conduit;
mod console;
mod entropy;
mod heap;
mod manifest;
mod mmu;
mod spmc;

use core::sync::atomic::{AtomicUsize, Ordering};

use alloc::boxed::Box;
use alloc::vec::Vec;
use arm_ffa::Interface;
use arm_ffa::interface_args::SecondaryEpRegisterAddr;
use spin::{Mutex, Once};
use vmsg_device_core::blk::{BlkDevice, MemoryStore};
use vmsg_device_core::host::CoreDevice;
use vmsg_device_core::rng::RngDevice;
use vmsg_ffa::bus::FfaBus;
use vmsg_ffa::msg::FfaProfile;
use vmsg_ffa::partition::{MSG_WAIT, PartitionCounters, answer};
use vmsg_ffa::window::Window;

/// Secure DRAM the partition owns (QEMU virt, PLAT=qemu).
pub const SECURE_DRAM: (usize, usize) = (0x0e10_0000, 0x0f00_0000);

/// The translation tables' root, written by the primary core before its
/// caches are on, so secondary cores (MMU off) read it from memory.
static ROOT: AtomicUsize = AtomicUsize::new(0);
static TABLES: Once<Mutex<mmu::Tables>> = Once::new();
static BUS: Once<Mutex<FfaBus<spmc::El3Spmc>>> = Once::new();

unsafe extern "C" {
    /// End of the image, its .bss, stacks, heap and tables (sp.ld).
    static __image_end: u8;
}

/// Stop this core for good (after saying why, if the console works).
pub fn halt(why: &str) -> ! {
    if TABLES.is_completed() {
        log!("vmsgd-sp: halted: {why}");
    }
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if TABLES.is_completed() {
        log!("vmsgd-sp: panic: {info}");
    }
    loop {
        core::hint::spin_loop();
    }
}

/// The primary execution context, from `_start`.
#[unsafe(no_mangle)]
extern "C" fn sp_main(core: usize, boot_info: usize) -> ! {
    let tables = mmu::build(SECURE_DRAM.0, SECURE_DRAM.1);
    ROOT.store(tables.root_address().0, Ordering::Release);
    // SAFETY: the tables map all of secure DRAM, which holds everything
    // this program touches.
    unsafe { mmu::enable(&tables) };
    TABLES.call_once(|| Mutex::new(tables));
    heap::init();
    log!("vmsgd-sp: core {core}: MMU on, heap ready");
    let entry = boot::secondary_entry as *const () as usize as u64;
    if let Err(e) = conduit::call(&Interface::SecondaryEpRegister {
        entrypoint: SecondaryEpRegisterAddr::Addr64(entry),
    }) {
        log!("vmsgd-sp: FFA_SECONDARY_EP_REGISTER failed: {e}");
    }
    let free = (core::ptr::addr_of!(__image_end) as usize, SECURE_DRAM.1);
    let settings = {
        let Some(tables) = TABLES.get() else {
            halt("no tables");
        };
        match manifest::read(boot_info, &mut tables.lock(), free) {
            Ok(s) => s,
            Err(e) => {
                log!("vmsgd-sp: {e}");
                manifest::Settings::default()
            }
        }
    };
    let Some(bus) = build_bus(&settings) else {
        halt("no bus: see the lines above");
    };
    BUS.call_once(|| Mutex::new(bus));
    log!("vmsgd-sp: serving");
    serve(core)
}

/// The devices and the bus the partition serves, as its manifest says.
fn build_bus(settings: &manifest::Settings) -> Option<FfaBus<spmc::El3Spmc>> {
    let mut devices: Vec<(u16, Box<dyn CoreDevice>)> = Vec::new();
    // An rng only with a hardware source: never made-up entropy.
    match entropy::Rndr::probe() {
        Some(rndr) => {
            log!("vmsgd-sp: device 0: virtio-rng from RNDR (FEAT_RNG)");
            devices.push((0, Box::new(RngDevice::new(rndr))));
        }
        None => log!("vmsgd-sp: this CPU has no RNDR (FEAT_RNG): no virtio-rng"),
    }
    if let Some((at, len)) = settings.ram_disk {
        // SAFETY: the manifest's range was checked to lie in secure DRAM
        // above the image (its .bss, stacks, heap and tables), which nothing
        // else uses; it is identity-mapped with the rest of secure DRAM.
        let disk = unsafe { core::slice::from_raw_parts_mut(at as *mut u8, len) };
        disk.fill(0);
        let serial = &settings.serial;
        let n = serial.iter().position(|&b| b == 0).unwrap_or(serial.len());
        log!("vmsgd-sp: device 1: virtio-blk on {len:#x} bytes of secure RAM at {at:#x}");
        devices.push((
            1,
            Box::new(BlkDevice::new(
                MemoryStore::new(disk),
                false,
                128,
                &serial[..n],
            )),
        ));
    }
    let spmc = match spmc::El3Spmc::init(TABLES.get()?) {
        Ok(s) => s,
        Err(e) => {
            log!("vmsgd-sp: RX/TX buffers: {e}");
            return None;
        }
    };
    log!("vmsgd-sp: partition {:#x}", spmc.own_id());
    // The RFC driver and a v2 driver differ from their first VERSION on.
    let mut bus = FfaBus::new(FfaProfile::V2, spmc, devices).detecting();
    if let Some((at, len)) = settings.rfc_pool {
        mmu::map_non_secure(&mut TABLES.get()?.lock(), at, at + len);
        // SAFETY: the pool is mapped (non-secure, just above) for the life
        // of the partition and is the driver's DMA memory, nothing of ours.
        let pool = unsafe { Window::new(at as *mut u8, len) };
        log!("vmsgd-sp: RFC bus DMA pool {len:#x} bytes at {at:#x}");
        bus = bus.with_pool(at as u64, pool);
    }
    Some(bus)
}

/// A secondary execution context, from `secondary_entry`.
#[unsafe(no_mangle)]
extern "C" fn sp_secondary(core: usize) -> ! {
    // MMU off here: no locks (they need exclusive accesses to Normal
    // memory). The primary wrote the root before its caches were on.
    let root = ROOT.load(Ordering::Acquire);
    if root == 0 {
        halt("secondary core before the primary finished");
    }
    // SAFETY: the primary's tables cover all of secure DRAM and are
    // complete before any secondary core is powered on.
    unsafe { mmu::enable_root(root) };
    log!("vmsgd-sp: core {core} up");
    serve(core)
}

/// The message loop of one execution context: each request is the answer
/// to the previous FFA_MSG_WAIT or direct response
/// (`vmsg_ffa::partition::answer` decides the next call).
fn serve(core: usize) -> ! {
    let mut counters = PartitionCounters::default();
    let mut next = conduit::call(&MSG_WAIT);
    loop {
        let call =
            match &next {
                Ok(incoming) => answer(incoming, &mut counters, &mut |src, frame, out| match BUS
                    .get()
                {
                    Some(bus) => {
                        let mut bus = bus.lock();
                        bus.handle_direct(src, frame, out);
                        log_live(&bus);
                    }
                    None => log!("vmsgd-sp: core {core}: request before the bus exists"),
                }),
                Err(e) => {
                    log!("vmsgd-sp: core {core}: {e}");
                    MSG_WAIT
                }
            };
        next = conduit::call(&call);
    }
}

/// Devices already reported live (bit = device number).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Say once when a device goes live (DRIVER_OK), with the features the
/// driver negotiated; forget it when it is reset.
fn log_live(bus: &FfaBus<spmc::El3Spmc>) {
    for d in bus.devices() {
        let bit = 1usize << (d.dev_num() % 64);
        let live = d.status() & 0x4 != 0;
        let known = LIVE.load(Ordering::Relaxed) & bit != 0;
        if live && !known {
            LIVE.fetch_or(bit, Ordering::Relaxed);
            log!(
                "vmsgd-sp: device {} live: type {}, status {:#x}, features {:#x}",
                d.dev_num(),
                d.device_type(),
                d.status(),
                d.driver_features()
            );
        } else if !live && known {
            LIVE.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}
