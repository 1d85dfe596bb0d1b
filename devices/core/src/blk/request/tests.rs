//! The request parser against the rules of virtio 1.2 §5.2.6 (and §2.7.4
//! message framing), on chains built by hand in a [`FakeMemory`], and
//! property tests against hostile chains: arbitrary descriptors over
//! arbitrary memory never panic, every answer lands where the spec puts the
//! status byte, and nothing a request names escapes the disk or the chain.

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::fake::FakeMemory;
use crate::virtq::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

const BASE: u64 = 0x4000_0000;
const MEM_SIZE: usize = 1 << 20;
const CAPACITY: u64 = 2048;

fn limits() -> Limits {
    Limits {
        capacity: CAPACITY,
        seg_max: 8,
        size_max: 64 << 10,
        max_discard_seg: 4,
        max_discard_sectors: 1024,
        max_write_zeroes_seg: 4,
        max_write_zeroes_sectors: 1024,
        read_only: false,
        discard: true,
        write_zeroes: true,
    }
}

/// Buffers laid out one after another in a [`FakeMemory`], chained in order.
struct Builder {
    mem: FakeMemory,
    next: u64,
    descs: Vec<Desc>,
}

impl Builder {
    fn new() -> Self {
        Self {
            mem: FakeMemory::new(BASE, MEM_SIZE),
            next: BASE,
            descs: Vec::new(),
        }
    }

    /// A device-readable buffer holding `bytes`.
    fn readable(mut self, bytes: &[u8]) -> Self {
        let at = self.place(bytes.len());
        self.mem.write(at, bytes).expect("in memory");
        self.push(at, bytes.len() as u32, 0)
    }

    /// A device-writable buffer of `len` bytes.
    fn writable(mut self, len: u32) -> Self {
        let at = self.place(len as usize);
        self.push(at, len, DESC_F_WRITE)
    }

    fn place(&mut self, len: usize) -> u64 {
        let at = self.next;
        // Keep buffers apart, so a piece names exactly one buffer.
        self.next += (len as u64).div_ceil(64) * 64 + 64;
        at
    }

    fn push(mut self, addr: u64, len: u32, flags: u16) -> Self {
        if let Some(prev) = self.descs.last_mut() {
            prev.flags |= DESC_F_NEXT;
        }
        self.descs.push(Desc { addr, len, flags });
        self
    }

    fn parse(&self, lim: &Limits) -> Parsed {
        parse(self.descs.iter().copied(), &self.mem, lim)
    }
}

fn header(rtype: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&rtype.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn segment(sector: u64, num: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    s
}

fn status_addr(b: &Builder) -> u64 {
    let last = b.descs.last().expect("a chain");
    last.addr + u64::from(last.len) - 1
}

/// §5.2.6: a read is a header, device-writable data and a status byte; the
/// data is at `sector * 512` and the used length counts data and status.
#[test]
fn a_read_names_its_sectors_and_its_buffers() {
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_IN, 10))
        .writable(1024)
        .writable(512)
        .writable(1);
    let p = b.parse(&limits());
    assert_eq!(p.status, Some(status_addr(&b)));
    assert_eq!(p.writable_len, 1024 + 512 + 1);
    let Ok(Body::In { offset, data }) = p.body else {
        panic!("{:?}", p.body);
    };
    assert_eq!(offset, 10 * 512);
    assert_eq!(
        data,
        vec![
            Piece {
                addr: b.descs[1].addr,
                len: 1024
            },
            Piece {
                addr: b.descs[2].addr,
                len: 512
            }
        ]
    );
}

/// §2.7.4: the device must not assume how the driver cut the request into
/// descriptors: a header split in two, data and status in one buffer.
#[test]
fn framing_is_not_assumed() {
    let h = header(vb::VIRTIO_BLK_T_IN, 3);
    let b = Builder::new()
        .readable(&h[..5])
        .readable(&h[5..])
        .writable(512 + 1);
    let p = b.parse(&limits());
    assert_eq!(p.status, Some(status_addr(&b)));
    let Ok(Body::In { offset, data }) = p.body else {
        panic!("{:?}", p.body);
    };
    assert_eq!(offset, 3 * 512);
    assert_eq!(
        data,
        vec![Piece {
            addr: b.descs[2].addr,
            len: 512
        }]
    );

    // A write whose header and data share one buffer.
    let mut bytes = header(vb::VIRTIO_BLK_T_OUT, 7).to_vec();
    bytes.extend_from_slice(&[0x5a; 512]);
    let b = Builder::new().readable(&bytes).writable(1);
    let Ok(Body::Out { offset, data }) = b.parse(&limits()).body else {
        panic!("not a write");
    };
    assert_eq!(offset, 7 * 512);
    assert_eq!(
        data,
        vec![Piece {
            addr: b.descs[0].addr + 16,
            len: 512
        }]
    );
}

/// The status byte is the last byte of a device-writable last descriptor;
/// without one the request cannot be answered (used length 0).
#[test]
fn without_a_place_for_the_status_byte_nothing_is_answered() {
    let h = header(vb::VIRTIO_BLK_T_FLUSH, 0);
    // The last descriptor is device-readable.
    let b = Builder::new().readable(&h).readable(&[0]);
    assert_eq!(b.parse(&limits()).status, None);
    // Empty.
    let b = Builder::new().readable(&h).writable(0);
    assert_eq!(b.parse(&limits()).status, None);
    // Outside memory.
    let mut b = Builder::new().readable(&h).writable(1);
    b.descs[1].addr = BASE + MEM_SIZE as u64;
    assert_eq!(b.parse(&limits()).status, None);
    // Wrapping the address space.
    let mut b = Builder::new().readable(&h).writable(2);
    b.descs[1].addr = u64::MAX;
    assert_eq!(b.parse(&limits()).status, None);
    // A broken chain: the walk stopped at a descriptor still marked NEXT.
    let mut b = Builder::new().readable(&h).writable(1);
    b.descs[1].flags |= DESC_F_NEXT;
    assert_eq!(b.parse(&limits()).status, None);
    // No descriptor at all.
    assert_eq!(parse(core::iter::empty(), &b.mem, &limits()).status, None);
}

/// §5.2.6.1: unknown request types are answered UNSUPP.
#[test]
fn unknown_types_are_unsupported() {
    for rtype in [2, 3, 5, 7, 9, 10, 12, 14, 0xffff_ffff] {
        let b = Builder::new().readable(&header(rtype, 0)).writable(1);
        let p = b.parse(&limits());
        assert_eq!(p.status, Some(status_addr(&b)), "type {rtype}");
        assert_eq!(p.body, Err(S_UNSUPP), "type {rtype}");
    }
}

/// §5.2.6: requests past the capacity, data not a whole number of sectors,
/// more segments than `seg_max` or a segment above `size_max` fail IOERR.
#[test]
fn out_of_range_and_misshapen_reads_and_writes_fail() {
    let lim = limits();
    let cases: [(u32, u64, &[u32]); 6] = [
        (vb::VIRTIO_BLK_T_IN, CAPACITY - 1, &[1024]),
        (vb::VIRTIO_BLK_T_IN, u64::MAX, &[512]),
        (vb::VIRTIO_BLK_T_IN, 0, &[500]),
        (vb::VIRTIO_BLK_T_IN, 0, &[512; 9]),
        (vb::VIRTIO_BLK_T_IN, 0, &[(64 << 10) + 512]),
        (vb::VIRTIO_BLK_T_OUT, CAPACITY, &[512]),
    ];
    for (rtype, sector, lens) in cases {
        let mut b = Builder::new().readable(&header(rtype, sector));
        for &len in lens {
            b = if rtype == vb::VIRTIO_BLK_T_IN {
                b.writable(len)
            } else {
                b.readable(&vec![0; len as usize])
            };
        }
        let b = b.writable(1);
        let p = b.parse(&lim);
        assert_eq!(p.status, Some(status_addr(&b)), "{sector} {lens:?}");
        assert_eq!(p.body, Err(S_IOERR), "{sector} {lens:?}");
    }
    // The last sectors are fine.
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_IN, CAPACITY - 2))
        .writable(1024)
        .writable(1);
    assert!(b.parse(&lim).body.is_ok());
}

/// §5.2.6.1 with VIRTIO_BLK_F_RO: writes, discards and write-zeroes fail.
#[test]
fn a_read_only_device_refuses_every_write() {
    let lim = Limits {
        read_only: true,
        ..limits()
    };
    let write = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_OUT, 0))
        .readable(&[1; 512])
        .writable(1);
    assert_eq!(write.parse(&lim).body, Err(S_IOERR));
    for rtype in [vb::VIRTIO_BLK_T_DISCARD, vb::VIRTIO_BLK_T_WRITE_ZEROES] {
        let b = Builder::new()
            .readable(&header(rtype, 0))
            .readable(&segment(0, 8, 0))
            .writable(1);
        assert_eq!(b.parse(&lim).body, Err(S_IOERR), "type {rtype}");
    }
    let read = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_IN, 0))
        .writable(513);
    assert!(read.parse(&lim).body.is_ok());
}

/// §5.2.6.2: unknown segment flags, and UNMAP on a discard, are UNSUPP,
/// even when another segment is also out of range; commands whose feature
/// was not negotiated are UNSUPP.
#[test]
fn discard_and_write_zeroes_flags_and_features() {
    let lim = limits();
    let with = |rtype, segs: &[[u8; 16]]| {
        let mut b = Builder::new().readable(&header(rtype, 0));
        for s in segs {
            b = b.readable(s);
        }
        b.writable(1)
    };
    let discard = vb::VIRTIO_BLK_T_DISCARD;
    let zeroes = vb::VIRTIO_BLK_T_WRITE_ZEROES;
    let unmap = vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    let b = with(discard, &[segment(CAPACITY, 1, 0), segment(0, 1, unmap)]);
    assert_eq!(b.parse(&lim).body, Err(S_UNSUPP));
    let b = with(zeroes, &[segment(CAPACITY, 1, 0), segment(0, 1, 2)]);
    assert_eq!(b.parse(&lim).body, Err(S_UNSUPP));
    let b = with(zeroes, &[segment(8, 16, unmap), segment(100, 1, 0)]);
    assert_eq!(
        b.parse(&lim).body,
        Ok(Body::WriteZeroes {
            ranges: vec![
                Range {
                    offset: 8 * 512,
                    len: 16 * 512,
                    unmap: true
                },
                Range {
                    offset: 100 * 512,
                    len: 512,
                    unmap: false
                }
            ]
        })
    );
    // Past the capacity, above the sector limit, too many segments, no
    // segment at all, a partial segment.
    for segs in [
        vec![segment(CAPACITY - 1, 2, 0)],
        vec![segment(0, 1025, 0)],
        vec![segment(0, 1, 0); 5],
        vec![],
    ] {
        assert_eq!(with(discard, &segs).parse(&lim).body, Err(S_IOERR));
    }
    let b = Builder::new()
        .readable(&header(discard, 0))
        .readable(&[0; 15])
        .writable(1);
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
    let off = Limits {
        discard: false,
        write_zeroes: false,
        ..lim
    };
    for rtype in [discard, zeroes] {
        let b = with(rtype, &[segment(0, 1, 0)]);
        assert_eq!(b.parse(&off).body, Err(S_UNSUPP), "type {rtype}");
    }
}

/// Device-readable descriptors come before device-writable ones (§2.7.4.2);
/// a request mixing them, or with a payload its type does not take, fails.
#[test]
fn misordered_and_misshapen_chains_fail() {
    let lim = limits();
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_IN, 0))
        .writable(512)
        .readable(&[0; 16])
        .writable(1);
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
    // A header shorter than 16 bytes.
    let b = Builder::new().readable(&[0; 15]).writable(1);
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
    // A flush with data, a read with a payload, a write with writable data.
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_FLUSH, 0))
        .readable(&[0; 512])
        .writable(1);
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_IN, 0))
        .readable(&[0; 512])
        .writable(513);
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_OUT, 0))
        .readable(&[0; 512])
        .writable(513);
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
    // Header in memory the driver did not share.
    let mut b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_FLUSH, 0))
        .writable(1);
    b.descs[0].addr = BASE - 16;
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
}

/// A chain longer than `seg_max` plus header and status slack is refused
/// without looking at it further (bounded work and memory).
#[test]
fn overlong_chains_are_refused() {
    let lim = limits();
    let mut b = Builder::new().readable(&header(vb::VIRTIO_BLK_T_IN, 0));
    for _ in 0..lim.seg_max as usize + EXTRA_DESCS {
        b = b.writable(512);
    }
    let b = b.writable(1);
    let p = b.parse(&lim);
    assert_eq!(p.status, Some(status_addr(&b)));
    assert_eq!(p.writable_len, 1);
    assert_eq!(p.body, Err(S_IOERR));
}

/// GET_ID (§5.2.6): a header, a writable buffer and the status byte; flush
/// is a bare header and status.
#[test]
fn get_id_and_flush() {
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_GET_ID, 0))
        .writable(20)
        .writable(1);
    let p = b.parse(&limits());
    assert_eq!(p.writable_len, 21);
    assert_eq!(
        p.body,
        Ok(Body::GetId {
            data: vec![Piece {
                addr: b.descs[1].addr,
                len: 20
            }]
        })
    );
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_FLUSH, 99))
        .writable(1);
    assert_eq!(b.parse(&limits()).body, Ok(Body::Flush));

    // The device NUL-pads the whole buffer (§2.7.8.2: `len` bytes written),
    // so a buffer larger than a read may be is refused.
    let lim = limits();
    let b = Builder::new()
        .readable(&header(vb::VIRTIO_BLK_T_GET_ID, 0))
        .writable(lim.size_max + 1)
        .writable(1);
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
    let mut b = Builder::new().readable(&header(vb::VIRTIO_BLK_T_GET_ID, 0));
    for _ in 0..=lim.seg_max {
        b = b.writable(1);
    }
    let b = b.writable(1);
    assert_eq!(b.parse(&lim).body, Err(S_IOERR));
}

// ---- property tests ----

/// Addresses a hostile driver might give: inside memory (often), straddling
/// its ends, outside, or anything.
fn any_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0..MEM_SIZE as u64 / 4096).prop_map(|page| BASE + page * 4096),
        2 => (0..MEM_SIZE as u64).prop_map(|o| BASE + o),
        1 => (0..64u64).prop_map(|o| BASE + MEM_SIZE as u64 - o),
        1 => (0..64u64).prop_map(|o| BASE - o),
        1 => any::<u64>(),
    ]
}

fn any_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(16u32),
        3 => (0..5u32).prop_map(|n| n * 512),
        2 => Just(1u32),
        2 => 0..2048u32,
        1 => any::<u32>(),
    ]
}

fn any_flags() -> impl Strategy<Value = u16> {
    prop_oneof![
        8 => prop::sample::select(vec![0, DESC_F_WRITE, DESC_F_NEXT, DESC_F_NEXT | DESC_F_WRITE]),
        1 => Just(DESC_F_INDIRECT),
        1 => any::<u16>(),
    ]
}

fn any_desc() -> impl Strategy<Value = Desc> {
    (any_addr(), any_len(), any_flags()).prop_map(|(addr, len, flags)| Desc { addr, len, flags })
}

fn any_type() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => prop::sample::select(vec![
            vb::VIRTIO_BLK_T_IN,
            vb::VIRTIO_BLK_T_OUT,
            vb::VIRTIO_BLK_T_FLUSH,
            vb::VIRTIO_BLK_T_GET_ID,
            vb::VIRTIO_BLK_T_DISCARD,
            vb::VIRTIO_BLK_T_WRITE_ZEROES,
        ]),
        1 => any::<u32>(),
    ]
}

fn any_limits() -> impl Strategy<Value = Limits> {
    (
        (0..4096u64, 1..16u32, 512..(128u32 << 10)),
        (
            0..8u32,
            0..4096u32,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((capacity, seg_max, size_max), (max_seg, max_sectors, read_only, discard, wz))| {
                Limits {
                    capacity,
                    seg_max,
                    size_max,
                    max_discard_seg: max_seg,
                    max_discard_sectors: max_sectors,
                    max_write_zeroes_seg: max_seg,
                    max_write_zeroes_sectors: max_sectors,
                    read_only,
                    discard,
                    write_zeroes: wz,
                }
            },
        )
}

/// Whether `p` lies wholly inside one of `descs`.
fn inside_one(p: &Piece, descs: &[Desc]) -> bool {
    descs.iter().any(|d| {
        p.addr >= d.addr
            && p.addr
                .checked_add(u64::from(p.len))
                .is_some_and(|end| end <= d.addr.saturating_add(u64::from(d.len)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary descriptors over memory holding arbitrary bytes (and, at
    /// the start of every buffer, often a plausible header): the parser
    /// never panics, and whatever it answers keeps to the spec's shape.
    #[test]
    fn hostile_chains_are_answered_within_the_rules(
        mut descs in prop::collection::vec(any_desc(), 0..16),
        shaped in prop::option::weighted(0.7, 0..16usize),
        headers in prop::collection::vec((any_type(), 0..5000u64), 16),
        scribbles in prop::collection::vec((0..MEM_SIZE as u64, prop::collection::vec(any::<u8>(), 1..64)), 0..8),
        lim in any_limits(),
    ) {
        // Most chains get a request's shape (readable part, then writable
        // part ending in the status byte) so that the checks below meet
        // requests the parser accepts, not only ones it refuses.
        if let Some(readable) = shaped {
            let n = descs.len();
            for (i, d) in descs.iter_mut().enumerate() {
                d.flags &= !(DESC_F_NEXT | DESC_F_WRITE);
                if i + 1 < n {
                    d.flags |= DESC_F_NEXT;
                }
                if i >= readable.min(n.saturating_sub(1)) {
                    d.flags |= DESC_F_WRITE;
                }
            }
        }
        let mem = FakeMemory::new(BASE, MEM_SIZE);
        for (d, (t, s)) in descs.iter().zip(&headers) {
            let _ = mem.write(d.addr, &header(*t, *s));
        }
        for (off, bytes) in &scribbles {
            let _ = mem.write(BASE + off, bytes);
        }
        let p = parse(descs.iter().copied(), &mem, &lim);

        // The status byte: exactly when the last descriptor is writable,
        // ends the chain, is not empty and its last byte is in memory.
        let expect_status = descs.last().and_then(|d| {
            if d.flags & DESC_F_NEXT != 0 || d.flags & DESC_F_WRITE == 0 || d.len == 0 {
                return None;
            }
            let at = d.addr.checked_add(u64::from(d.len) - 1)?;
            mem.check(at, 1).then_some(at)
        });
        prop_assert_eq!(p.status, expect_status);
        let Some(_) = p.status else {
            prop_assert_eq!(p.writable_len, 0);
            return Ok(());
        };
        let readable: Vec<Desc> = descs.iter().copied().take_while(|d| !d.is_write()).collect();
        let writable = &descs[readable.len()..];
        let w_len: u64 = writable.iter().map(|d| u64::from(d.len)).sum();
        match &p.body {
            Err(code) => {
                prop_assert!([S_IOERR, S_UNSUPP].contains(code));
                // The used length of a refusal is 1 whatever this says; beyond
                // 4 GiB it saturates.
                let saturated = u32::try_from(w_len).unwrap_or(u32::MAX);
                prop_assert!(p.writable_len == 1 || p.writable_len == saturated);
            }
            Ok(body) => {
                // Only a well-ordered chain short enough is executed.
                prop_assert!(descs.len() <= lim.seg_max as usize + EXTRA_DESCS);
                prop_assert!(writable.iter().all(Desc::is_write));
                prop_assert_eq!(u64::from(p.writable_len), w_len);
                match body {
                    Body::In { offset, data } | Body::Out { offset, data } => {
                        let is_in = matches!(body, Body::In { .. });
                        prop_assert!(is_in || !lim.read_only, "a write on a read-only disk");
                        let len: u64 = data.iter().map(|p| u64::from(p.len)).sum();
                        prop_assert_eq!(len % 512, 0);
                        prop_assert!(data.len() <= lim.seg_max as usize);
                        prop_assert!(data.iter().all(|p| p.len > 0 && p.len <= lim.size_max));
                        prop_assert_eq!(offset % 512, 0);
                        prop_assert!((offset / 512).checked_add(len / 512).is_some_and(|e| e <= lim.capacity));
                        let from = if is_in { writable } else { &readable[..] };
                        prop_assert!(data.iter().all(|p| inside_one(p, from)));
                        if is_in {
                            // Everything writable but the status byte.
                            prop_assert_eq!(len + 1, w_len);
                        }
                    }
                    Body::GetId { data } => {
                        prop_assert!(data.iter().all(|p| inside_one(p, writable)));
                        // Filled in full by the device: bounded like a read.
                        prop_assert!(data.len() <= lim.seg_max as usize);
                        prop_assert!(data.iter().all(|p| p.len <= lim.size_max));
                    }
                    Body::Flush => prop_assert_eq!(w_len, 1),
                    Body::Discard { ranges } | Body::WriteZeroes { ranges } => {
                        let discard = matches!(body, Body::Discard { .. });
                        prop_assert!(!lim.read_only);
                        let negotiated = if discard { lim.discard } else { lim.write_zeroes };
                        prop_assert!(negotiated);
                        prop_assert!(!ranges.is_empty() && ranges.len() <= lim.max_discard_seg as usize);
                        for r in ranges {
                            prop_assert!(!(discard && r.unmap));
                            prop_assert!(r.len <= u64::from(lim.max_discard_sectors) * 512);
                            prop_assert!(r.offset.checked_add(r.len).is_some_and(|e| e <= lim.capacity * 512));
                        }
                    }
                }
            }
        }
    }

    /// Well-formed reads and writes cut into arbitrary descriptors: the
    /// parser finds exactly the sector and the data the driver meant,
    /// whatever the cut (§2.7.4).
    #[test]
    fn well_formed_reads_and_writes_parse_whatever_the_cut(
        write in any::<bool>(),
        sectors in 1..16u64,
        start in 0..CAPACITY,
        cuts in prop::collection::vec(1..4096u64, 0..6),
        header_cut in 1..16usize,
        status_with_data in any::<bool>(),
    ) {
        let lim = Limits { seg_max: 16, ..limits() };
        let len = sectors * 512;
        // Cut [0, len) at the (sorted, distinct) points inside it.
        let mut points: Vec<u64> = cuts.iter().map(|c| c % len).filter(|&c| c > 0).collect();
        points.sort_unstable();
        points.dedup();
        points.push(len);
        let rtype = if write { vb::VIRTIO_BLK_T_OUT } else { vb::VIRTIO_BLK_T_IN };
        let h = header(rtype, start);
        let mut b = Builder::new().readable(&h[..header_cut]).readable(&h[header_cut..]);
        let mut prev = 0;
        let last = points.len() - 1;
        for (i, &p) in points.iter().enumerate() {
            let piece = (p - prev) as u32;
            prev = p;
            b = if write {
                b.readable(&vec![0xa5; piece as usize])
            } else if i == last && status_with_data {
                b.writable(piece + 1)
            } else {
                b.writable(piece)
            };
        }
        if write || !status_with_data {
            b = b.writable(1);
        }
        let p = b.parse(&lim);
        prop_assert_eq!(p.status, Some(status_addr(&b)));
        let in_range = start + sectors <= CAPACITY;
        let body = match p.body {
            Ok(body) => body,
            Err(code) => {
                prop_assert!(!in_range, "refused {}", code);
                return Ok(());
            }
        };
        prop_assert!(in_range);
        let (offset, data) = match body {
            Body::In { offset, data } if !write => (offset, data),
            Body::Out { offset, data } if write => (offset, data),
            other => return Err(TestCaseError::fail(alloc::format!("{other:?}"))),
        };
        prop_assert_eq!(offset, start * 512);
        prop_assert_eq!(data.iter().map(|p| u64::from(p.len)).sum::<u64>(), len);
        prop_assert_eq!(data.len(), points.len());
        if !write {
            prop_assert_eq!(u64::from(p.writable_len), len + 1);
        }
    }
}
