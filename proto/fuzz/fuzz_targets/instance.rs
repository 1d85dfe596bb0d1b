//! Frame sequences from a hostile driver into a whole guest instance: the
//! codec, the bus-message answers, the transport state machine of two
//! devices (an rng and a rate-limited rng) and their queue processing over
//! guest memory the input also scribbles on. Nothing may panic or hang; every
//! response must stay within the bus maximum (the fake bus checks).
//!
//! Input: a sequence of records `[kind, len_lo, len_hi, bytes…]`; kind even =
//! a frame for the instance, kind odd = bytes written into guest RAM at an
//! offset taken from the first 4 bytes (so rings and descriptors the input
//! set up via SET_VQUEUE contain attacker-chosen data).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmsg_backend::fake::FakeBus;
use vmsg_backend::instance::{GuestInstance, InstanceOptions};
use vmsg_devices::rng::{EntropySource, RngDevice, RngError};

/// Deterministic entropy so a crash reproduces.
struct Counter(u8);

impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

const RAM_BASE: u64 = 0x1000;
const RAM_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(rng) = RngDevice::new("rng", Box::new(Counter(0)), None) else {
        return;
    };
    let Ok(limited) = RngDevice::new("rng-limited", Box::new(Counter(7)), Some(4096)) else {
        return;
    };
    let Ok(mut inst) = GuestInstance::new(
        "fuzz",
        InstanceOptions::default(),
        vec![(0, Box::new(rng)), (1, Box::new(limited))],
    ) else {
        return;
    };
    let Ok(mut bus) = FakeBus::new(264, RAM_BASE, RAM_SIZE) else {
        return;
    };
    let Ok(codec) = inst.attach(&bus) else { return };
    let mem = vmsg_backend::bus::Bus::memory(&bus);
    let mut out = vec![0u8; 264];
    let mut rest = data;
    while rest.len() >= 3 {
        let kind = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let take = len.min(rest.len() - 3);
        let body = &rest[3..3 + take];
        rest = &rest[3 + take..];
        if kind % 2 == 0 {
            inst.on_frame(&codec, body, &mut bus, &mut out)
                .expect("on_frame never fails on guest input");
        } else if body.len() >= 4 {
            let off = u64::from(u32::from_le_bytes([body[0], body[1], body[2], body[3]]))
                % RAM_SIZE as u64;
            let _ = mem.write_slice(&body[4..], GuestAddress(RAM_BASE + off));
        }
        bus.sent.clear();
    }
    inst.detach();
});
