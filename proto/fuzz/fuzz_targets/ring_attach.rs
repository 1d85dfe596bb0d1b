//! The shared message ring as a hostile driver leaves it: a region laid out
//! properly, then scribbled on (header fields, indices, slot lengths), then
//! attached by the device side and used. Attaching must refuse a bad header
//! and the ends must report corruption, never panic, read or write outside
//! the region, or return a frame longer than a slot.
//!
//! Input: `[slot_size lo, hi, slots log2, extra lines]` then records of six
//! bytes `[offset lo, hi, value (4, little-endian)]` written into the region.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmsg_transport::ring::{self, RingParams, Role, SharedRegion};

fuzz_target!(|data: &[u8]| {
    let [lo, hi, log2, extra, rest @ ..] = data else {
        return;
    };
    let params = RingParams {
        slot_size: 1 + u32::from(u16::from_le_bytes([*lo, *hi])) % 1024,
        slots: 1 << (log2 % 8),
    };
    let Ok(need) = params.required_size() else {
        return;
    };
    let len = need + usize::from(*extra % 4) * 64;
    let mut mem = vec![0u64; len.div_ceil(8)];
    let base = mem.as_mut_ptr().cast::<u8>();
    // SAFETY: `mem` is `len` bytes or more, 8-aligned, and outlives
    // `region` and every ring end made from it (all dropped before `mem`);
    // nothing else accesses it while they live except the raw writes below,
    // which stand for the peer process.
    let region = unsafe { SharedRegion::from_raw(base, len) };
    let Ok(_driver) = ring::init(&region, params) else {
        return;
    };
    for rec in rest.chunks_exact(6) {
        let off = usize::from(u16::from_le_bytes([rec[0], rec[1]])) % len & !3;
        let value = u32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]);
        if off + 4 <= len {
            // SAFETY: `off + 4 <= len`, inside `mem`; an aligned u32 write,
            // as the peer's would be.
            unsafe { base.add(off).cast::<u32>().write_volatile(value) };
        }
    }
    let Ok((mut producer, mut consumer)) = ring::attach(&region, Role::Device) else {
        return;
    };
    let mut buf = vec![0u8; consumer.max_frame()];
    for _ in 0..2 * params.slots {
        match consumer.try_pop(&mut buf) {
            Ok(Some(n)) => assert!(n <= buf.len()),
            Ok(None) | Err(_) => break,
        }
    }
    for _ in 0..2 * params.slots {
        if producer.try_push(b"device frame").is_err() {
            break;
        }
    }
});
