//! Hostile virtio-i2c requests: a descriptor table, an avail ring and
//! guest memory all taken from the input, every chain parsed as the device
//! parses it (`vmsg_devices::i2c::request::parse`), the valid ones grouped
//! by FAIL_NEXT into transactions as the device groups them, each mapped
//! onto SMBus commands (`smbus::plan`, for an I²C-capable and an SMBus-only
//! adapter) and carried out on the simulated chips (24C02, LM75). Nothing
//! may panic or loop; what parse accepts must respect the limits.
//!
//! Input: 256 bytes of descriptor table (16 descriptors; an address with
//! the top bit clear is folded into guest memory so chains meet headers),
//! 32 bytes of avail ring, 1 byte of avail count, the rest copied into
//! guest memory at 0x1000.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmsg_devices::i2c::adapter::{I2cAdapter, I2cMsg, MAX_MSG_LEN, MAX_TRANSACTION_MSGS};
use vmsg_devices::i2c::request;
use vmsg_devices::i2c::sim::SimAdapter;
use vmsg_devices::i2c::sim::eeprom::Eeprom24c02;
use vmsg_devices::i2c::sim::lm75::Lm75;
use vmsg_devices::i2c::smbus;

const MEM: usize = 64 << 10;
const QSIZE: u16 = 16;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
const DATA: u64 = 0x1000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 256 + 32 + 1 {
        return;
    }
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let (table, rest) = data.split_at(256);
    let (ring, rest) = rest.split_at(32);
    let (count, payload) = rest.split_at(1);
    for (i, d) in table.chunks_exact(16).enumerate() {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(d);
        let addr = u64::from_le_bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]]);
        if addr >> 63 == 0 {
            raw[..8].copy_from_slice(&(addr % MEM as u64).to_le_bytes());
        }
        let _ = mem.write_slice(&raw, GuestAddress(16 * i as u64));
    }
    let _ = mem.write_slice(ring, GuestAddress(AVAIL + 4));
    let n = u16::from(count[0]) % (QSIZE + 1);
    let _ = mem.write_obj(n.to_le(), GuestAddress(AVAIL + 2));
    let room = MEM - DATA as usize;
    let _ = mem.write_slice(&payload[..payload.len().min(room)], GuestAddress(DATA));

    let Ok(mut q) = Queue::new(QSIZE) else { return };
    let _ = q.try_set_desc_table_address(GuestAddress(0));
    let _ = q.try_set_avail_ring_address(GuestAddress(AVAIL));
    let _ = q.try_set_used_ring_address(GuestAddress(USED));
    q.set_ready(true);

    let mut sim = SimAdapter::new();
    let _ = sim.add(0x50, Box::new(Eeprom24c02::new()));
    let _ = sim.add(0x48, Box::new(Lm75::new(21_000)));
    let mut group: Vec<I2cMsg> = Vec::new();
    let mut broken = false;
    let mut chains = 0;
    while let Some(chain) = q.iter(&mem).ok().and_then(|mut it| it.next()) {
        chains += 1;
        assert!(chains <= usize::from(QSIZE), "more chains than the ring holds");
        let parsed = request::parse(chain, &mem);
        if let Some(s) = parsed.status {
            assert!(GuestMemoryBackend::check_range(&mem, s, 1), "status outside memory");
        }
        match &parsed.body {
            Ok(req) => {
                assert!(req.len <= MAX_MSG_LEN);
                let total: u64 = req.buf.iter().map(|p| u64::from(p.len)).sum();
                assert_eq!(total, req.len as u64, "pieces cover the buffer exactly");
                assert!(req.addr <= 0x7f);
                let mut buf = vec![0u8; req.len];
                if !req.read && request::read_pieces(&mem, &req.buf, &mut buf).is_none() {
                    broken = true;
                }
                group.push(I2cMsg { addr: req.addr, read: req.read, buf });
            }
            Err(_) => broken = true,
        }
        if !parsed.fail_next {
            run(&mut sim, &mut group, broken);
            group.clear();
            broken = false;
        }
    }
    run(&mut sim, &mut group, broken);
});

/// Carry out a transaction as the device would: not at all if any request
/// of it was refused or it is too long.
fn run(sim: &mut SimAdapter, msgs: &mut [I2cMsg], broken: bool) {
    if msgs.is_empty() || broken || msgs.len() > MAX_TRANSACTION_MSGS {
        return;
    }
    for funcs in [u64::MAX, 0x0fff_0000, 0] {
        if let Ok((addr, op)) = smbus::plan(msgs, funcs) {
            assert_eq!(addr, msgs[0].addr);
            assert!(funcs & op.needs() != 0, "a command the adapter lacks");
        }
    }
    let lens: Vec<usize> = msgs.iter().map(|m| m.buf.len()).collect();
    match sim.transfer(msgs) {
        Ok(()) => {}
        Err(e) => assert!(e.done <= msgs.len()),
    }
    let after: Vec<usize> = msgs.iter().map(|m| m.buf.len()).collect();
    assert_eq!(lens, after, "a transfer keeps every buffer's length");
}
