//! The split ring against hand-built rings (layouts from virtio 1.2 §2.7).

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::fake::FakeMemory;

const BASE: u64 = 0x1000_0000;
const DESC: u64 = BASE;
const AVAIL: u64 = BASE + 0x1000;
const USED: u64 = BASE + 0x2000;
const SIZE: u32 = 8;

fn mem() -> FakeMemory {
    FakeMemory::new(BASE, 0x10000)
}

fn put_desc(m: &FakeMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    m.write(table + 16 * u64::from(i), &d).expect("desc");
}

/// The driver makes `heads` available (in order) and publishes the index.
fn offer(m: &FakeMemory, heads: &[u16]) {
    let idx = m.read_u16(AVAIL + 2).expect("idx");
    for (k, &h) in heads.iter().enumerate() {
        let slot = u64::from((idx.wrapping_add(k as u16)) % SIZE as u16);
        m.write_u16(AVAIL + 4 + 2 * slot, h).expect("ring");
    }
    m.write_u16(AVAIL + 2, idx.wrapping_add(heads.len() as u16))
        .expect("idx");
}

fn queue(m: &FakeMemory, event_idx: bool) -> SplitQueue {
    SplitQueue::new(m, SIZE, DESC, AVAIL, USED, event_idx).expect("queue")
}

#[test]
fn pops_chains_in_order_and_publishes_used_entries() {
    let m = mem();
    put_desc(&m, DESC, 0, BASE + 0x4000, 16, DESC_F_NEXT, 1);
    put_desc(&m, DESC, 1, BASE + 0x5000, 512, DESC_F_WRITE, 0);
    put_desc(&m, DESC, 5, BASE + 0x6000, 4, DESC_F_WRITE, 0);
    offer(&m, &[0, 5]);
    let mut q = queue(&m, false);
    let a = q.pop(&m).expect("pop").expect("chain");
    assert_eq!(a.head, 0);
    assert!(!a.broken);
    assert_eq!(
        a.descs
            .iter()
            .map(|d| (d.addr, d.len, d.is_write()))
            .collect::<Vec<_>>(),
        vec![(BASE + 0x4000, 16, false), (BASE + 0x5000, 512, true)]
    );
    let b = q.pop(&m).expect("pop").expect("chain");
    assert_eq!(b.head, 5);
    assert_eq!(q.pop(&m).expect("pop"), None);
    q.add_used(&m, 5, 4).expect("used");
    q.add_used(&m, 0, 512).expect("used");
    assert_eq!(m.read_u16(USED + 2).expect("used idx"), 2);
    assert_eq!(m.read_u32(USED + 4).expect("id"), 5);
    assert_eq!(m.read_u32(USED + 8).expect("len"), 4);
    assert_eq!(m.read_u32(USED + 12).expect("id"), 0);
}

#[test]
fn follows_an_indirect_table() {
    let m = mem();
    let table = BASE + 0x8000;
    put_desc(&m, table, 0, BASE + 0x4000, 16, DESC_F_NEXT, 1);
    put_desc(&m, table, 1, BASE + 0x5000, 8, DESC_F_WRITE, 0);
    put_desc(&m, DESC, 3, table, 32, DESC_F_INDIRECT, 0);
    offer(&m, &[3]);
    let mut q = queue(&m, false);
    let c = q.pop(&m).expect("pop").expect("chain");
    assert!(!c.broken);
    assert_eq!(c.head, 3);
    assert_eq!(c.descs.len(), 2);
    assert!(c.descs[1].is_write());
}

#[test]
fn a_loop_a_bad_next_and_bad_indirect_tables_break_only_that_chain() {
    let m = mem();
    // 0 -> 1 -> 0 -> ...
    put_desc(&m, DESC, 0, BASE + 0x4000, 1, DESC_F_NEXT, 1);
    put_desc(&m, DESC, 1, BASE + 0x4000, 1, DESC_F_NEXT, 0);
    // next beyond the table
    put_desc(&m, DESC, 2, BASE + 0x4000, 1, DESC_F_NEXT, 200);
    // indirect with NEXT, nested indirect, indirect of a partial descriptor
    put_desc(
        &m,
        DESC,
        3,
        BASE + 0x8000,
        16,
        DESC_F_INDIRECT | DESC_F_NEXT,
        4,
    );
    put_desc(&m, BASE + 0x9000, 0, BASE + 0x8000, 16, DESC_F_INDIRECT, 0);
    put_desc(&m, DESC, 4, BASE + 0x9000, 16, DESC_F_INDIRECT, 0);
    put_desc(&m, DESC, 5, BASE + 0x8000, 20, DESC_F_INDIRECT, 0);
    // an indirect table larger than the queue
    put_desc(
        &m,
        DESC,
        6,
        BASE + 0x8000,
        16 * (SIZE + 1),
        DESC_F_INDIRECT,
        0,
    );
    offer(&m, &[0, 2, 3, 4, 5, 6]);
    let mut q = queue(&m, false);
    for head in [0, 2, 3, 4, 5, 6] {
        let c = q.pop(&m).expect("the ring is fine").expect("chain");
        assert_eq!(c.head, head);
        assert!(c.broken, "chain {head}");
        // What came before the damage ends in NEXT, or there is nothing.
        assert!(c.descs.last().is_none_or(Desc::has_next), "chain {head}");
    }
}

#[test]
fn ring_damage_is_an_error() {
    let m = mem();
    let mut q = queue(&m, false);
    // Index a whole queue and more ahead.
    m.write_u16(AVAIL + 2, SIZE as u16 + 1).expect("idx");
    assert!(matches!(q.pop(&m), Err(QueueError::AvailIndex { .. })));
    // A head beyond the table.
    let m = mem();
    let mut q = queue(&m, false);
    offer(&m, &[SIZE as u16]);
    assert!(matches!(q.pop(&m), Err(QueueError::Head { .. })));
    // Rings outside memory or misaligned.
    assert!(SplitQueue::new(&m, SIZE, BASE + 0x10000, AVAIL, USED, false).is_err());
    assert!(matches!(
        SplitQueue::new(&m, SIZE, DESC + 8, AVAIL, USED, false),
        Err(QueueError::Misaligned(_))
    ));
    assert!(matches!(
        SplitQueue::new(&m, 0, DESC, AVAIL, USED, false),
        Err(QueueError::Size(0))
    ));
}

#[test]
fn notifications_follow_no_interrupt_and_event_idx() {
    let m = mem();
    put_desc(&m, DESC, 0, BASE + 0x4000, 4, DESC_F_WRITE, 0);
    let mut q = queue(&m, false);
    q.add_used(&m, 0, 4).expect("used");
    assert!(q.needs_notification(&m).expect("check"));
    m.write_u16(AVAIL, AVAIL_F_NO_INTERRUPT).expect("flags");
    q.add_used(&m, 0, 4).expect("used");
    assert!(!q.needs_notification(&m).expect("check"));

    // EVENT_IDX (§2.7.10): notify once the used index passes used_event.
    let m = mem();
    let mut q = queue(&m, true);
    let used_event_at = AVAIL + 4 + 2 * u64::from(SIZE);
    m.write_u16(used_event_at, 2).expect("used_event");
    q.add_used(&m, 0, 1).expect("used");
    assert!(q.needs_notification(&m).expect("check"), "the first one");
    q.add_used(&m, 0, 1).expect("used"); // used idx 2
    assert!(
        !q.needs_notification(&m).expect("check"),
        "event 2 not passed yet"
    );
    q.add_used(&m, 0, 1).expect("used"); // used idx 3: crossed 2
    assert!(q.needs_notification(&m).expect("check"));
    // And avail_event tells the driver where we are.
    let m = mem();
    put_desc(&m, DESC, 1, BASE + 0x4000, 4, DESC_F_WRITE, 0);
    offer(&m, &[1]);
    let mut q = SplitQueue::new(&m, SIZE, DESC, AVAIL, USED, true).expect("queue");
    let _ = q.pop(&m).expect("pop");
    let avail_event = m
        .read_u16(USED + 4 + 8 * u64::from(SIZE))
        .expect("avail_event");
    assert_eq!(avail_event, m.read_u16(AVAIL + 2).expect("idx"));
}
