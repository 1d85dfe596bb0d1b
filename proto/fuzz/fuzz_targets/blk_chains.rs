//! virtio-blk request chains from a hostile driver: a descriptor table, an
//! avail ring and request headers, data and indirect tables of the input's
//! choosing, processed by the blk device on an in-memory disk (the fake
//! engine). Nothing may panic; every answer stays inside guest memory.
//!
//! Input: bytes 0..256 the descriptor table (16 entries; an address without
//! bit 63 is taken modulo guest memory so chains land in it), byte 256 the
//! avail index, bytes 257..289 the avail ring, the rest guest memory from
//! 0x1000 (headers, data, indirect tables).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmsg_backend::device::VirtioDevice;
use vmsg_devices::blk::engine::FakeDisk;
use vmsg_devices::blk::{BlkConfig, BlkDevice};

const MEM: u64 = 1 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const DATA: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 289 {
        return;
    }
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]) else {
        return;
    };
    for (i, d) in data[..256].chunks_exact(16).enumerate() {
        let mut d: [u8; 16] = d.try_into().expect("16 bytes");
        let addr = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        if addr & (1 << 63) == 0 {
            d[..8].copy_from_slice(&(addr % MEM).to_le_bytes());
        }
        let _ = mem.write_slice(&d, GuestAddress(DESC + 16 * i as u64));
    }
    let _ = mem.write_obj(0u16, GuestAddress(AVAIL));
    let _ = mem.write_obj(u16::from(data[256]), GuestAddress(AVAIL + 2));
    let _ = mem.write_slice(&data[257..289], GuestAddress(AVAIL + 4));
    let rest = &data[289..];
    let _ = mem.write_slice(
        &rest[..rest.len().min((MEM - DATA) as usize)],
        GuestAddress(DATA),
    );

    let disk = FakeDisk::new(64 << 10);
    let cfg = BlkConfig {
        queue_size: QSIZE,
        serial: "fuzz".into(),
        ..BlkConfig::default()
    };
    let Ok(mut dev) = BlkDevice::with_engine("fuzz", &cfg, disk.info(), Box::new(disk.engine()))
    else {
        return;
    };
    // Everything offered, VERSION_1 included.
    let features = dev.features() | (1 << 32);
    dev.accept_features(features);
    if dev.activate(features).is_err() {
        return;
    }
    let Ok(mut q) = Queue::new(QSIZE) else { return };
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_size(QSIZE);
    q.set_ready(true);
    for _ in 0..4 {
        if dev.process_queue(0, &mut q, &mem).is_err() {
            break;
        }
    }
    dev.reset();
});
