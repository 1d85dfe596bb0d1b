//! The split ring against a hostile driver (property tests): arbitrary
//! descriptor tables, indirect tables, available rings and indices. Checked
//! against a reference walk written from virtio 1.2 §2.7.5 (loops found by
//! remembering every descriptor visited, not by counting), and for bounds:
//! no panic, every broken chain reported broken and every intact one
//! exactly as the driver chained it, ring damage reported as the error the
//! ring shows, used entries only for the heads popped, and a bounded number
//! of memory accesses per pop.

use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;

use proptest::prelude::*;

use super::*;
use crate::fake::FakeMemory;

const BASE: u64 = 0x1000_0000;
const MEM_SIZE: usize = 0x10000;
const DESC: u64 = BASE;
const AVAIL: u64 = BASE + 0x1000;
const USED: u64 = BASE + 0x2000;
/// Two indirect tables of [`TABLE_LEN`] descriptors each.
const TABLES: [u64; 2] = [BASE + 0x3000, BASE + 0x4000];
const TABLE_LEN: usize = 40;
/// Buffers (never read by the ring code).
const DATA: u64 = BASE + 0x8000;

/// A [`FakeMemory`] that counts the device's accesses.
struct Counting<'a> {
    mem: &'a FakeMemory,
    reads: Cell<usize>,
    writes: Cell<usize>,
}

impl DmaMemory for Counting<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.reads.set(self.reads.get() + 1);
        self.mem.read(addr, buf)
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.writes.set(self.writes.get() + 1);
        self.mem.write(addr, data)
    }
    fn check(&self, addr: u64, len: u64) -> bool {
        self.mem.check(addr, len)
    }
}

/// A raw descriptor: address, length, flags, next.
type Raw = (u64, u32, u16, u16);

fn put(m: &FakeMemory, at: u64, (addr, len, flags, next): Raw) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    m.write(at, &d).expect("inside the fake");
}

/// The chain at `head` as §2.7.5 defines it: `None` where it is broken (a
/// next index outside its table, a descriptor visited twice, an unreadable
/// descriptor, an indirect descriptor with NEXT, in an indirect table, of a
/// partial or empty table or one longer than the queue).
fn reference_walk(m: &FakeMemory, size: u16, head: u16) -> Option<Vec<Desc>> {
    let mut out = Vec::new();
    let (mut table, mut entries, mut in_indirect) = (DESC, u32::from(size), false);
    let mut visited = BTreeSet::new();
    let mut i = u32::from(head);
    loop {
        if i >= entries || !visited.insert((table, i)) {
            return None;
        }
        let mut raw = [0u8; 16];
        m.read(table.checked_add(16 * u64::from(i))?, &mut raw)
            .ok()?;
        let addr = u64::from_le_bytes(raw[..8].try_into().ok()?);
        let len = u32::from_le_bytes(raw[8..12].try_into().ok()?);
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if flags & DESC_F_INDIRECT != 0 {
            if in_indirect
                || flags & DESC_F_NEXT != 0
                || len == 0
                || len % 16 != 0
                || len / 16 > u32::from(size)
            {
                return None;
            }
            (table, entries, in_indirect, i) = (addr, len / 16, true, 0);
            continue;
        }
        out.push(Desc { addr, len, flags });
        if flags & DESC_F_NEXT == 0 {
            return Some(out);
        }
        i = u32::from(next);
    }
}

fn any_raw(size: u16) -> impl Strategy<Value = Raw> {
    let addr = prop_oneof![
        4 => (0..0x100u64).prop_map(|k| DATA + 16 * k),
        2 => prop::sample::select(TABLES.to_vec()),
        1 => prop::sample::select(vec![DESC, AVAIL, USED, BASE + MEM_SIZE as u64 - 16]),
        1 => any::<u64>(),
    ];
    let table_entries = 2 * u32::from(size) + 2;
    let len = prop_oneof![
        4 => (0..=table_entries).prop_map(|k| 16 * k),
        1 => any::<u32>(),
    ];
    let flags = prop_oneof![
        8 => prop::sample::select(vec![
            0,
            DESC_F_NEXT,
            DESC_F_WRITE,
            DESC_F_NEXT | DESC_F_WRITE,
            DESC_F_INDIRECT,
            DESC_F_INDIRECT | DESC_F_WRITE,
        ]),
        1 => Just(DESC_F_INDIRECT | DESC_F_NEXT),
        1 => any::<u16>(),
    ];
    let next = prop_oneof![
        6 => 0..size + 2,
        1 => 0..TABLE_LEN as u16 + 2,
        1 => any::<u16>(),
    ];
    (addr, len, flags, next)
}

/// A queue's worth of hostile state.
#[derive(Debug)]
struct Ring {
    size: u16,
    table: Vec<Raw>,
    indirect: [Vec<Raw>; 2],
    heads: Vec<u16>,
    /// The used index the queue starts from (where a previous user left it).
    start: u16,
    /// Entries the driver claims are available.
    pending: u16,
    event_idx: bool,
}

fn any_ring() -> impl Strategy<Value = Ring> {
    prop::sample::select(vec![1u16, 2, 4, 8, 16]).prop_flat_map(|size| {
        let head = prop_oneof![8 => 0..size, 1 => size..size + 4, 1 => any::<u16>()];
        let pending = prop_oneof![8 => 0..=size, 1 => any::<u16>()];
        (
            prop::collection::vec(any_raw(size), usize::from(size)),
            prop::collection::vec(any_raw(size), TABLE_LEN),
            prop::collection::vec(any_raw(size), TABLE_LEN),
            prop::collection::vec(head, usize::from(size)),
            any::<u16>(),
            pending,
            any::<bool>(),
        )
            .prop_map(
                move |(table, t0, t1, heads, start, pending, event_idx)| Ring {
                    size,
                    table,
                    indirect: [t0, t1],
                    heads,
                    start,
                    pending,
                    event_idx,
                },
            )
    })
}

fn lay_out(r: &Ring) -> FakeMemory {
    let m = FakeMemory::new(BASE, MEM_SIZE);
    for (i, d) in r.table.iter().enumerate() {
        put(&m, DESC + 16 * i as u64, *d);
    }
    for (t, table) in TABLES.iter().zip(&r.indirect) {
        for (i, d) in table.iter().enumerate() {
            put(&m, t + 16 * i as u64, *d);
        }
    }
    for (k, h) in r.heads.iter().enumerate() {
        // Slot k of the ring; the driver filled them all.
        m.write_u16(AVAIL + 4 + 2 * k as u64, *h)
            .expect("avail ring");
    }
    m.write_u16(AVAIL + 2, r.start.wrapping_add(r.pending))
        .expect("avail idx");
    m.write_u16(USED + 2, r.start).expect("used idx");
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn hostile_rings_are_popped_within_the_rules(r in any_ring()) {
        let m = lay_out(&r);
        let dev = Counting { mem: &m, reads: Cell::new(0), writes: Cell::new(0) };
        let size = r.size;
        let mut q = SplitQueue::new(&dev, u32::from(size), DESC, AVAIL, USED, r.event_idx)
            .expect("a valid layout");
        let mut popped: Vec<u16> = Vec::new();
        // Pop until the ring is empty or damaged; never more than it holds.
        for k in 0..=u32::from(size) {
            let (reads, writes) = (dev.reads.get(), dev.writes.get());
            let got = q.pop(&dev);
            // Bounded work: the index and the head, at most a table's worth
            // of descriptors in each of the two tables a chain may use, and
            // only avail_event written.
            prop_assert!(dev.reads.get() - reads <= 2 + 2 * usize::from(size));
            prop_assert!(dev.writes.get() - writes <= usize::from(r.event_idx));
            if r.pending > size {
                prop_assert!(
                    matches!(got, Err(QueueError::AvailIndex { pending, .. }) if pending == r.pending),
                    "{:?}", got
                );
                break;
            }
            if k == u32::from(r.pending) {
                prop_assert_eq!(got, Ok(None));
                break;
            }
            let head = r.heads[usize::from(r.start.wrapping_add(k as u16) % size)];
            if head >= size {
                prop_assert_eq!(got, Err(QueueError::Head { head, size }));
                break;
            }
            let chain = match got {
                Ok(Some(c)) => c,
                other => return Err(TestCaseError::fail(alloc::format!("{other:?}"))),
            };
            prop_assert_eq!(chain.head, head);
            prop_assert!(chain.descs.len() <= 2 * usize::from(size));
            // The memory as the walk saw it (pop writes avail_event first).
            match reference_walk(&m, size, head) {
                Some(descs) => {
                    prop_assert!(!chain.broken);
                    prop_assert_eq!(&chain.descs, &descs);
                }
                None => {
                    prop_assert!(chain.broken, "{:?}", chain);
                    // What the parsers see of a broken chain cannot be
                    // answered: it is empty or ends in NEXT.
                    prop_assert!(chain.descs.last().is_none_or(Desc::has_next));
                }
            }
            if r.event_idx {
                let avail_event = m.read_u16(USED + 4 + 8 * u64::from(size)).expect("in memory");
                prop_assert_eq!(avail_event, r.start.wrapping_add(k as u16 + 1));
            }
            popped.push(head);
        }

        // Used entries: one per popped head, in order, nothing else.
        for (k, &head) in popped.iter().enumerate() {
            q.add_used(&dev, head, k as u32 * 7).expect("used ring in memory");
        }
        prop_assert_eq!(
            m.read_u16(USED + 2).expect("used idx"),
            r.start.wrapping_add(popped.len() as u16)
        );
        let mut written = BTreeSet::new();
        for (k, &head) in popped.iter().enumerate() {
            let slot = u64::from(r.start.wrapping_add(k as u16) % size);
            written.insert(slot);
            prop_assert_eq!(m.read_u32(USED + 4 + 8 * slot).expect("id"), u32::from(head));
            prop_assert_eq!(m.read_u32(USED + 8 + 8 * slot).expect("len"), k as u32 * 7);
        }
        for slot in (0..u64::from(size)).filter(|s| !written.contains(s)) {
            prop_assert_eq!(m.read_u64(USED + 4 + 8 * slot).expect("entry"), 0);
        }
    }
}
