//! Arbitrary bytes as a hostile driver's split virtqueue and memory, popped
//! with `vmsg_device_core::virtq::SplitQueue` and parsed as virtio-blk
//! requests by `vmsg_device_core::blk::request` (the code the std daemon and
//! the FF-A partition share), then served by the partition's `BlkDevice`
//! on a RAM disk. Nothing may panic or hang; a broken chain is never
//! answered; a chain is never longer than two tables' worth; a pass never
//! adds more used entries than its budget.
//!
//! Input: byte 0 picks the queue size (1..=256) and EVENT_IDX, bytes 1..9
//! the parser's limits, the rest is the driver's memory from `BASE` on: the
//! descriptor table at `BASE`, the available ring at `AVAIL`, the used ring
//! at `USED`, anything else (buffers, indirect tables) anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmsg_device_core::blk::request::{self, Limits};
use vmsg_device_core::blk::{BlkDevice, MemoryStore};
use vmsg_device_core::fake::FakeMemory;
use vmsg_device_core::host::CoreDevice;
use vmsg_device_core::memory::DmaMemory;
use vmsg_device_core::virtq::SplitQueue;

const BASE: u64 = 0x1000;
const MEM_SIZE: usize = 0x8000;
const AVAIL: u64 = BASE + 0x1000;
const USED: u64 = BASE + 0x1400;

fn memory(bytes: &[u8]) -> FakeMemory {
    let mem = FakeMemory::new(BASE, MEM_SIZE);
    let n = bytes.len().min(MEM_SIZE);
    mem.write(BASE, &bytes[..n]).expect("inside the fake");
    mem
}

fuzz_target!(|data: &[u8]| {
    let [pick, l0, l1, l2, l3, l4, l5, l6, l7, rest @ ..] = data else {
        return;
    };
    let size = 1u32 << (pick % 9);
    let event_idx = pick & 0x80 != 0;
    let lim = Limits {
        capacity: u64::from(u16::from_le_bytes([*l0, *l1])),
        seg_max: u32::from(*l2 % 130).max(1),
        size_max: (u32::from(*l3) + 1) * 512,
        max_discard_seg: u32::from(*l4 % 40),
        max_discard_sectors: u32::from(u16::from_le_bytes([*l5, *l6])),
        max_write_zeroes_seg: u32::from(*l4 % 40),
        max_write_zeroes_sectors: u32::from(u16::from_le_bytes([*l5, *l6])),
        read_only: l7 & 1 != 0,
        discard: l7 & 2 != 0,
        write_zeroes: l7 & 4 != 0,
    };

    // Pop and parse by hand.
    let mem = memory(rest);
    let Ok(mut q) = SplitQueue::new(&mem, size, BASE, AVAIL, USED, event_idx) else {
        return;
    };
    for _ in 0..=size {
        let chain = match q.pop(&mem) {
            Ok(Some(chain)) => chain,
            Ok(None) | Err(_) => break,
        };
        assert!(
            chain.descs.len() <= 2 * size as usize,
            "chain longer than two tables"
        );
        let parsed = request::parse(chain.descs.iter().copied(), &mem, &lim);
        if chain.broken {
            assert_eq!(parsed.status, None, "a broken chain was answered");
        }
        if q.add_used(&mem, chain.head, parsed.writable_len).is_err() {
            break;
        }
        let _ = q.needs_notification(&mem);
    }

    // The partition's device on the same input.
    let mem = memory(rest);
    let Ok(mut q) = SplitQueue::new(&mem, size, BASE, AVAIL, USED, event_idx) else {
        return;
    };
    let mut disk = vec![0u8; 64 << 10];
    let mut dev = BlkDevice::new(
        MemoryStore::new(&mut disk),
        l7 & 1 != 0,
        size as u16,
        b"fuzz",
    );
    let _ = dev.accept_features(u64::from(*l7) << 9);
    let budget = (size as usize).min(64);
    if let Ok(pass) = dev.process_queue(0, &mut q, &mem, budget) {
        assert!(pass.used <= budget);
    }
});
