//! [`BlkDevice`] (the partition's synchronous blk device) on a fake ring:
//! what it writes back for each kind of request.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::fake::FakeMemory;
use crate::virtq::{DESC_F_NEXT, DESC_F_WRITE};

const BASE: u64 = 0x2000_0000;
const DESC: u64 = BASE;
const AVAIL: u64 = BASE + 0x1000;
const USED: u64 = BASE + 0x2000;
const HDR: u64 = BASE + 0x3000;
const DATA: u64 = BASE + 0x4000;
const STATUS: u64 = BASE + 0x8000;
const QSIZE: u16 = 8;

/// Put the chain `bufs` (address, length, device-writable) at descriptors
/// 0.. and make it available; process the queue; the used entry.
fn run(
    dev: &mut BlkDevice<MemoryStore<'_>>,
    m: &FakeMemory,
    bufs: &[(u64, u32, bool)],
) -> (u32, u32) {
    for (i, &(addr, len, write)) in bufs.iter().enumerate() {
        let mut flags = if write { DESC_F_WRITE } else { 0 };
        if i + 1 < bufs.len() {
            flags |= DESC_F_NEXT;
        }
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        m.write(DESC + 16 * i as u64, &d).expect("table");
    }
    let idx = m.read_u16(AVAIL + 2).expect("idx");
    m.write_u16(AVAIL + 4 + 2 * u64::from(idx % QSIZE), 0)
        .expect("ring");
    m.write_u16(AVAIL + 2, idx.wrapping_add(1)).expect("idx");
    let mut q = SplitQueue::new(m, u32::from(QSIZE), DESC, AVAIL, USED, false).expect("queue");
    // A fresh queue starts at the used index: where the last run stopped.
    let pass = dev.process_queue(0, &mut q, m, 16).expect("ring intact");
    assert_eq!(pass.used, 1);
    let slot = u64::from(idx % QSIZE);
    (
        m.read_u32(USED + 4 + 8 * slot).expect("id"),
        m.read_u32(USED + 8 + 8 * slot).expect("len"),
    )
}

fn header(m: &FakeMemory, rtype: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&rtype.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    m.write(HDR, &h).expect("header");
}

fn status(m: &FakeMemory) -> u8 {
    let mut s = [0u8];
    m.read(STATUS, &mut s).expect("status");
    s[0]
}

#[test]
fn get_id_fills_the_whole_buffer_it_reports() {
    let mut disk = vec![0u8; 64 * 512];
    let mut dev = BlkDevice::new(MemoryStore::new(&mut disk), false, QSIZE, b"sp-disk");
    let m = FakeMemory::new(BASE, 0x10000);
    m.write(DATA, &[0xaa; 32]).expect("dirty buffer");
    header(&m, vb::VIRTIO_BLK_T_GET_ID, 0);
    let got = run(
        &mut dev,
        &m,
        &[(HDR, 16, false), (DATA, 32, true), (STATUS, 1, true)],
    );
    // §2.7.8.2: the device wrote (at least) the `len` it reports.
    assert_eq!(got, (0, 33));
    assert_eq!(status(&m), S_OK);
    let mut id = [0u8; 32];
    m.read(DATA, &mut id).expect("id");
    let mut want = b"sp-disk".to_vec();
    want.resize(32, 0);
    assert_eq!(&id[..], &want[..]);
}

#[test]
fn writes_reach_the_store_and_reads_come_back() {
    let mut disk = vec![0u8; 64 * 512];
    let mut dev = BlkDevice::new(MemoryStore::new(&mut disk), false, QSIZE, b"");
    let m = FakeMemory::new(BASE, 0x10000);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    m.write(DATA, &pattern).expect("data");
    header(&m, vb::VIRTIO_BLK_T_OUT, 3);
    let got = run(
        &mut dev,
        &m,
        &[(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
    );
    assert_eq!((got, status(&m)), ((0, 1), S_OK));
    m.write(DATA, &[0; 1024]).expect("clear");
    header(&m, vb::VIRTIO_BLK_T_IN, 3);
    let got = run(
        &mut dev,
        &m,
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
    );
    assert_eq!((got, status(&m)), ((0, 1025), S_OK));
    let mut back = vec![0u8; 1024];
    m.read(DATA, &mut back).expect("data");
    assert_eq!(back, pattern);
    assert_eq!(&dev.store().bytes[3 * 512..5 * 512], &pattern[..]);
    // Past the end: IOERR, counted.
    header(&m, vb::VIRTIO_BLK_T_IN, 63);
    let got = run(
        &mut dev,
        &m,
        &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
    );
    assert_eq!((got, status(&m)), ((0, 1), S_IOERR));
    assert_eq!(dev.errors, 1);
}
