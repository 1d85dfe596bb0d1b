//! vmsgd as an FF-A secure partition: an S-EL1 image entered by the SPMC,
//! serving virtio-msg devices to the normal world over FF-A direct messages.
#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod conduit;
mod console;
mod heap;
mod mmu;

use core::sync::atomic::{AtomicUsize, Ordering};

use arm_ffa::Interface;
use arm_ffa::interface_args::{
    DirectMsg2Args, MsgWaitFlags, SecondaryEpRegisterAddr,
};
use spin::{Mutex, Once};

/// Secure DRAM the partition owns (QEMU virt, PLAT=qemu).
const SECURE_DRAM: (usize, usize) = (0x0e10_0000, 0x0f00_0000);

/// The translation tables' root, written by the primary core before its
/// caches are on, so secondary cores (MMU off) read it from memory.
static ROOT: AtomicUsize = AtomicUsize::new(0);
static TABLES: Once<Mutex<mmu::Tables>> = Once::new();

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
extern "C" fn sp_main(core: usize, _boot_info: usize) -> ! {
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
        log!("vmsgd-sp: FFA_SECONDARY_EP_REGISTER failed: {e:?}");
    }
    serve(core)
}

/// A secondary execution context, from `secondary_entry`.
#[unsafe(no_mangle)]
extern "C" fn sp_secondary(core: usize) -> ! {
    let root = ROOT.load(Ordering::Acquire);
    let Some(tables) = TABLES.get() else {
        halt("secondary core before the primary finished");
    };
    let _ = root;
    // SAFETY: the primary's tables cover all of secure DRAM.
    unsafe { mmu::enable(&tables.lock()) };
    log!("vmsgd-sp: core {core} up");
    serve(core)
}

/// The message loop of one execution context: each request is the answer
/// to the previous FFA_MSG_WAIT or direct response.
fn serve(core: usize) -> ! {
    // The SMC32 form: FFA_MSG_WAIT_64 only exists from FF-A v1.3.
    let wait = Interface::MsgWait {
        flags: MsgWaitFlags::default(),
        is_32bit: true,
    };
    let mut next = conduit::call(&wait);
    loop {
        next = match next {
            Ok(Interface::MsgSendDirectReq2 {
                src_id,
                dst_id,
                args,
                ..
            }) => {
                let frame = frame_bytes(&args);
                log!("vmsgd-sp: core {core}: DIRECT_REQ2 from {src_id:#x}: {:02x?}", &frame[..16]);
                conduit::call(&Interface::MsgSendDirectResp2 {
                    src_id: dst_id,
                    dst_id: src_id,
                    args: DirectMsg2Args([0; 14]),
                })
            }
            Ok(other) => {
                log!("vmsgd-sp: core {core}: unexpected {other:?}");
                conduit::call(&wait)
            }
            Err(e) => {
                log!("vmsgd-sp: core {core}: {e:?}");
                conduit::call(&wait)
            }
        };
    }
}

/// The frame carried in x4..x17, little-endian register packing.
fn frame_bytes(args: &DirectMsg2Args) -> [u8; 112] {
    let mut out = [0u8; 112];
    for (chunk, reg) in out.chunks_exact_mut(8).zip(args.0.iter()) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    out
}
