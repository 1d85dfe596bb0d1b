//! Device-level tests: requests built by hand in guest memory, processed
//! through `VirtioDevice`, checked by status byte, used length and disk
//! contents.

use std::os::fd::RawFd;

use proptest::prelude::*;
use virtio_bindings::virtio_blk as vb;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmsg_backend::device::{DeviceError, VirtioDevice};

use super::config::offset;
use super::engine::{Engine, FakeDisk, FakeOp};
use super::request::{S_IOERR, S_OK, S_UNSUPP};
use super::*;

const MEM_SIZE: usize = 32 << 20;
/// Request headers: `HDR + 0x100 * n`.
const HDR: u64 = 0x10_0000;
/// Status bytes: `STATUS + n`.
const STATUS: u64 = 0x18_0000;
/// Data buffers.
const DATA: u64 = 0x20_0000;
/// Second queue's rings.
const Q1: u64 = 0x8000;
/// Indirect descriptor tables.
const TABLES: u64 = 0x1c_0000;
const QSIZE: u16 = 16;
const VERSION_1: u64 = 1 << 32;
const DISK_SIZE: usize = 1 << 20;
const SECTORS: u64 = DISK_SIZE as u64 / 512;

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

/// One buffer of a request.
#[derive(Clone, Copy, Debug)]
struct Buf {
    addr: u64,
    len: u32,
    write: bool,
}

fn r(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

fn w(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

/// Write header `n` and return its buffer.
fn header(mem: &GuestMemoryMmap, n: u64, rtype: u32, sector: u64) -> Buf {
    let a = HDR + 0x100 * n;
    mem.write_obj(rtype.to_le(), GuestAddress(a)).expect("hdr");
    mem.write_obj(0u32, GuestAddress(a + 4)).expect("hdr");
    mem.write_obj(sector.to_le(), GuestAddress(a + 8))
        .expect("hdr");
    r(a, 16)
}

/// Status buffer `n`, pre-set to a value the device never writes.
fn status(mem: &GuestMemoryMmap, n: u64) -> Buf {
    mem.write_obj(0xeeu8, GuestAddress(STATUS + n))
        .expect("status");
    w(STATUS + n, 1)
}

fn status_of(mem: &GuestMemoryMmap, n: u64) -> u8 {
    mem.read_obj(GuestAddress(STATUS + n)).expect("status")
}

/// Discard / write-zeroes segments at `addr`.
fn segments(mem: &GuestMemoryMmap, addr: u64, segs: &[(u64, u32, u32)]) -> Buf {
    for (i, &(sector, num, flags)) in segs.iter().enumerate() {
        let a = addr + 16 * i as u64;
        mem.write_obj(sector.to_le(), GuestAddress(a)).expect("seg");
        mem.write_obj(num.to_le(), GuestAddress(a + 8))
            .expect("seg");
        mem.write_obj(flags.to_le(), GuestAddress(a + 12))
            .expect("seg");
    }
    r(addr, 16 * segs.len() as u32)
}

/// The driver side of one split queue.
///
/// The rings are laid out here rather than with
/// `virtio_queue::mock::MockSplitQueue`: in virtio-queue 0.18 its `create`
/// puts the used ring inside the avail ring (`SplitQueueRing::end` adds the
/// element count, not the byte length), so the used index overwrites avail
/// entries once more than a few are posted.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        let end = used + 6 + 8 * n;
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .expect("rings");
        Self {
            mem,
            size,
            desc: base,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue");
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .expect("desc");
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .expect("avail");
        q.try_set_used_ring_address(GuestAddress(self.used))
            .expect("used");
        q.set_ready(true);
        q
    }

    fn store(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.mem
            .write_obj(d, GuestAddress(self.desc + 16 * u64::from(i)))
            .expect("descriptor");
    }

    fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx.to_le(), GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    fn push_head(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .expect("avail slot");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Add a chain of `bufs`; returns its head.
    fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (k, b) in bufs.iter().enumerate() {
            let i = (head + k as u16) % self.size;
            let next = (i + 1) % self.size;
            let mut flags = if b.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if k + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.store(i, b.addr, b.len, flags, next);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.push_head(head);
        head
    }

    /// Add `bufs` as an indirect table at `table`; returns the head.
    fn add_indirect(&mut self, bufs: &[Buf], table: u64) -> u16 {
        for (k, b) in bufs.iter().enumerate() {
            let mut flags = if b.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if k + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = RawDescriptor::from(SplitDescriptor::new(b.addr, b.len, flags, k as u16 + 1));
            self.mem
                .write_obj(d, GuestAddress(table + 16 * k as u64))
                .expect("indirect descriptor");
        }
        let head = self.next_desc;
        self.store(
            head,
            table,
            16 * bufs.len() as u32,
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        self.next_desc = (head + 1) % self.size;
        self.push_head(head);
        head
    }

    /// Used entries added since the last call: (id, len).
    fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used idx");
        let mut out = Vec::new();
        while self.seen_used != u16::from_le(idx) {
            let at = self.used + 4 + 8 * u64::from(self.seen_used % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("id");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("len");
            out.push((u32::from_le(id), u32::from_le(len)));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }
}

fn cfg() -> BlkConfig {
    BlkConfig {
        queue_size: QSIZE,
        serial: "vmsg-test-disk".into(),
        ..BlkConfig::default()
    }
}

fn fake_device(cfg: &BlkConfig, disk: &FakeDisk) -> BlkDevice {
    BlkDevice::with_engine("blk-test", cfg, disk.info(), Box::new(disk.engine())).expect("device")
}

/// Negotiate `features` (FEATURES_OK then DRIVER_OK).
fn negotiate(dev: &mut BlkDevice, features: u64) {
    assert!(dev.accept_features(features));
    dev.activate(features).expect("activate");
}

/// What a Linux driver takes: everything offered.
fn everything(dev: &BlkDevice) -> u64 {
    dev.features() | VERSION_1
}

fn negotiate_all(dev: &mut BlkDevice) {
    negotiate_masked(dev, u64::MAX);
}

/// Negotiate everything offered, restricted to `mask`.
fn negotiate_masked(dev: &mut BlkDevice, mask: u64) {
    let f = everything(dev) & mask;
    negotiate(dev, f);
}

/// A fake-disk device with everything negotiated.
fn fake_setup(cfg: &BlkConfig) -> (BlkDevice, FakeDisk) {
    let disk = FakeDisk::new(DISK_SIZE);
    let mut dev = fake_device(cfg, &disk);
    negotiate_all(&mut dev);
    (dev, disk)
}

/// Submit one request on a fresh queue 0 and process it with an inline
/// engine. Returns the byte at the end of the last buffer (the status) and
/// the used length.
fn submit(dev: &mut BlkDevice, mem: &GuestMemoryMmap, bufs: &[Buf]) -> (u8, u32) {
    let mut drv = Driver::new(mem, 0, QSIZE);
    let mut q = drv.queue();
    let last = bufs.last().expect("a buffer");
    let st = GuestAddress(last.addr + u64::from(last.len).saturating_sub(1));
    let _ = mem.write_obj(0xeeu8, st);
    let head = drv.add(bufs);
    let out = dev.process_queue(0, &mut q, mem).expect("process_queue");
    let used = drv.used();
    assert_eq!(used.len(), 1, "one used entry");
    assert_eq!(used[0].0, u32::from(head));
    assert!(out.used_added);
    (mem.read_obj(st).unwrap_or(0xee), used[0].1)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).expect("read");
    v
}

// ---------------------------------------------------------------- requests

#[test]
fn read_fills_every_segment() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    disk.fill(4096, &pattern(1536, 7));
    let bufs = [
        header(&mem, 0, vb::VIRTIO_BLK_T_IN, 8),
        w(DATA, 1024),
        w(DATA + 0x10000, 512),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 1537));
    let mut got = read_mem(&mem, DATA, 1024);
    got.extend(read_mem(&mem, DATA + 0x10000, 512));
    assert_eq!(got, pattern(1536, 7));
    assert_eq!(
        disk.take_log(),
        vec![FakeOp::Read {
            offset: 4096,
            len: 1536
        }]
    );
    assert_eq!(dev.stats().reads, 1);
    assert_eq!(dev.stats().bytes_read, 1536);
}

#[test]
fn write_lands_on_disk() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    mem.write_slice(&pattern(2048, 3), GuestAddress(DATA))
        .expect("data");
    let bufs = [
        header(&mem, 0, vb::VIRTIO_BLK_T_OUT, 2),
        r(DATA, 2048),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 1));
    assert_eq!(disk.contents(1024, 2048), pattern(2048, 3));
    // FLUSH negotiated and writeback: no fdatasync per write.
    assert_eq!(
        disk.take_log(),
        vec![FakeOp::Write {
            offset: 1024,
            len: 2048
        }]
    );
}

#[test]
fn flush_is_passed_to_the_backend() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    let bufs = [header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 0)];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 1));
    assert_eq!(disk.take_log(), vec![FakeOp::Flush]);
}

#[test]
fn get_id_returns_the_padded_serial() {
    let mem = memory();
    let (mut dev, _disk) = fake_setup(&cfg());
    mem.write_slice(&[0xaa; 20], GuestAddress(DATA))
        .expect("fill");
    let bufs = [
        header(&mem, 0, vb::VIRTIO_BLK_T_GET_ID, 0),
        w(DATA, 20),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 21));
    let mut want = b"vmsg-test-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(read_mem(&mem, DATA, 20), want);

    // A full 20-byte serial has no NUL.
    let c = BlkConfig {
        serial: "ABCDEFGHIJKLMNOPQRST".into(),
        ..cfg()
    };
    let (mut dev, _disk) = fake_setup(&c);
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 21));
    assert_eq!(read_mem(&mem, DATA, 20), b"ABCDEFGHIJKLMNOPQRST");
}

#[test]
fn discard_and_write_zeroes_reach_the_backend() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    disk.fill(0, &[0x55; 8192]);
    let bufs = [
        header(&mem, 0, vb::VIRTIO_BLK_T_DISCARD, 0),
        segments(&mem, DATA, &[(0, 2, 0), (4, 1, 0)]),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 1));
    assert_eq!(
        disk.take_log(),
        vec![
            FakeOp::Discard {
                offset: 0,
                len: 1024
            },
            FakeOp::Discard {
                offset: 2048,
                len: 512
            },
        ]
    );

    let unmap = vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    let bufs = [
        header(&mem, 0, vb::VIRTIO_BLK_T_WRITE_ZEROES, 0),
        segments(&mem, DATA, &[(8, 2, unmap), (12, 2, 0)]),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 1));
    assert_eq!(
        disk.take_log(),
        vec![
            FakeOp::WriteZeroes {
                offset: 4096,
                len: 1024,
                unmap: true
            },
            FakeOp::WriteZeroes {
                offset: 6144,
                len: 1024,
                unmap: false
            },
        ]
    );
    assert_eq!(disk.contents(4096, 1024), vec![0; 1024]);
    assert_eq!(disk.contents(5120, 1024), vec![0x55; 1024]);
    assert_eq!(dev.stats().discards, 1);
    assert_eq!(dev.stats().write_zeroes, 1);
}

#[test]
fn discard_flags_are_checked() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    let unmap = vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    let cases = [
        // Unmap is for write-zeroes only.
        (vb::VIRTIO_BLK_T_DISCARD, unmap),
        (vb::VIRTIO_BLK_T_DISCARD, 2),
        (vb::VIRTIO_BLK_T_WRITE_ZEROES, 1 << 31),
    ];
    for (t, flags) in cases {
        let bufs = [
            header(&mem, 0, t, 0),
            // The first segment is also out of range: UNSUPP still wins.
            segments(&mem, DATA, &[(SECTORS, 8, 0), (0, 1, flags)]),
            status(&mem, 0),
        ];
        assert_eq!(
            submit(&mut dev, &mem, &bufs),
            (S_UNSUPP, 1),
            "type {t} flags {flags:#x}"
        );
    }
    assert!(disk.take_log().is_empty());
}

#[test]
fn discard_limits_are_enforced() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    let space = dev.config_space();
    let too_many: Vec<(u64, u32, u32)> = (0..=u64::from(space.max_discard_seg))
        .map(|i| (i, 1, 0))
        .collect();
    let cases: Vec<(&str, Buf)> = vec![
        ("too many segments", segments(&mem, DATA, &too_many)),
        (
            "segment too long",
            segments(&mem, DATA, &[(0, space.max_discard_sectors + 1, 0)]),
        ),
        (
            "past capacity",
            segments(&mem, DATA, &[(SECTORS - 1, 2, 0)]),
        ),
        (
            "overflowing sector",
            segments(&mem, DATA, &[(u64::MAX, 1, 0)]),
        ),
        ("not whole segments", r(DATA, 24)),
        ("no segment", r(DATA, 0)),
        ("outside memory", r(MEM_SIZE as u64 - 8, 16)),
    ];
    for t in [vb::VIRTIO_BLK_T_DISCARD, vb::VIRTIO_BLK_T_WRITE_ZEROES] {
        for (what, seg) in &cases {
            let bufs = [header(&mem, 0, t, 0), *seg, status(&mem, 0)];
            assert_eq!(
                submit(&mut dev, &mem, &bufs),
                (S_IOERR, 1),
                "type {t}: {what}"
            );
        }
    }
    assert!(disk.take_log().is_empty());
}

#[test]
fn discard_without_the_feature_is_unsupported() {
    let mem = memory();
    let disk = FakeDisk::new(DISK_SIZE);
    let mut dev = fake_device(&cfg(), &disk);
    let f = everything(&dev) & !bit(vb::VIRTIO_BLK_F_DISCARD) & !bit(vb::VIRTIO_BLK_F_WRITE_ZEROES);
    negotiate(&mut dev, f);
    for t in [vb::VIRTIO_BLK_T_DISCARD, vb::VIRTIO_BLK_T_WRITE_ZEROES] {
        let bufs = [
            header(&mem, 0, t, 0),
            segments(&mem, DATA, &[(0, 1, 0)]),
            status(&mem, 0),
        ];
        assert_eq!(submit(&mut dev, &mem, &bufs), (S_UNSUPP, 1));
    }
    assert!(disk.take_log().is_empty());
}

#[test]
fn unknown_types_are_unsupported() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    for t in [
        2,  // SCSI_CMD (legacy)
        5,  // FLUSH_OUT (legacy)
        10, // GET_LIFETIME
        vb::VIRTIO_BLK_T_SECURE_ERASE,
        vb::VIRTIO_BLK_T_ZONE_REPORT,
        vb::VIRTIO_BLK_T_ZONE_APPEND,
        vb::VIRTIO_BLK_T_ZONE_RESET_ALL,
        vb::VIRTIO_BLK_T_BARRIER,
        u32::MAX,
    ] {
        let bufs = [header(&mem, 0, t, 0), status(&mem, 0)];
        assert_eq!(submit(&mut dev, &mem, &bufs), (S_UNSUPP, 1), "type {t}");
    }
    assert!(disk.take_log().is_empty());
    assert_eq!(dev.stats().rejected, 9);
}

#[test]
fn ranges_past_capacity_fail() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    for (t, data) in [
        (vb::VIRTIO_BLK_T_IN, w(DATA, 1024)),
        (vb::VIRTIO_BLK_T_OUT, r(DATA, 1024)),
    ] {
        for sector in [SECTORS - 1, SECTORS, u64::MAX, u64::MAX / 512 + 1] {
            let bufs = [header(&mem, 0, t, sector), data, status(&mem, 0)];
            assert_eq!(
                submit(&mut dev, &mem, &bufs),
                (S_IOERR, 1),
                "type {t} sector {sector}"
            );
        }
        // The last two sectors are fine.
        let bufs = [header(&mem, 0, t, SECTORS - 2), data, status(&mem, 0)];
        let want_len = if t == vb::VIRTIO_BLK_T_IN { 1025 } else { 1 };
        assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, want_len));
    }
    assert_eq!(disk.take_log().len(), 2);
}

#[test]
fn misaligned_oversized_and_too_many_segments_fail() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    let space = dev.config_space();
    for t in [vb::VIRTIO_BLK_T_IN, vb::VIRTIO_BLK_T_OUT] {
        let data = |addr, len| {
            if t == vb::VIRTIO_BLK_T_IN {
                w(addr, len)
            } else {
                r(addr, len)
            }
        };
        // Not a multiple of 512.
        let bufs = [header(&mem, 0, t, 0), data(DATA, 700), status(&mem, 0)];
        assert_eq!(submit(&mut dev, &mem, &bufs), (S_IOERR, 1));
        // One segment above size_max.
        let bufs = [
            header(&mem, 0, t, 0),
            data(DATA, space.size_max + 512),
            status(&mem, 0),
        ];
        assert_eq!(submit(&mut dev, &mem, &bufs), (S_IOERR, 1));
        // seg_max + 1 segments (through an indirect table: the ring is
        // smaller).
        let mut bufs = vec![header(&mem, 0, t, 0)];
        for i in 0..=u64::from(space.seg_max) {
            bufs.push(data(DATA + 512 * i, 512));
        }
        bufs.push(status(&mem, 0));
        let mut drv = Driver::new(&mem, 0, QSIZE);
        let mut q = drv.queue();
        drv.add_indirect(&bufs, TABLES);
        dev.process_queue(0, &mut q, &mem).expect("process");
        assert_eq!(drv.used(), vec![(0, 1)]);
        assert_eq!(status_of(&mem, 0), S_IOERR);
    }
    assert!(disk.take_log().is_empty());
}

#[test]
fn seg_max_segments_are_fine() {
    let mem = memory();
    // A big queue so that seg_max is not limited by it.
    let c = BlkConfig {
        queue_size: 256,
        ..cfg()
    };
    let (mut dev, disk) = fake_setup(&c);
    let seg_max = dev.config_space().seg_max;
    assert_eq!(seg_max, config::SEG_MAX);
    let mut bufs = vec![header(&mem, 0, vb::VIRTIO_BLK_T_OUT, 0)];
    for i in 0..u64::from(seg_max) {
        bufs.push(r(DATA + 512 * i, 512));
    }
    bufs.push(status(&mem, 0));
    let mut drv = Driver::new(&mem, 0, 256);
    let mut q = drv.queue();
    drv.add(&bufs);
    dev.process_queue(0, &mut q, &mem).expect("process");
    assert_eq!(drv.used(), vec![(0, 1)]);
    assert_eq!(status_of(&mem, 0), S_OK);
    assert_eq!(
        disk.take_log(),
        vec![FakeOp::Write {
            offset: 0,
            len: 512 * u64::from(seg_max)
        }]
    );
}

#[test]
fn malformed_headers_fail() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    let h = header(&mem, 0, vb::VIRTIO_BLK_T_IN, 0);
    let cases: Vec<(&str, Vec<Buf>)> = vec![
        (
            "short header",
            vec![r(h.addr, 8), w(DATA, 512), status(&mem, 0)],
        ),
        (
            "device-writable header",
            vec![w(h.addr, 16), w(DATA, 512), status(&mem, 0)],
        ),
        (
            "header with trailing bytes on a read",
            vec![r(h.addr, 32), w(DATA, 512), status(&mem, 0)],
        ),
        (
            "header outside memory",
            vec![r(MEM_SIZE as u64 - 8, 16), w(DATA, 512), status(&mem, 0)],
        ),
        (
            "readable after writable",
            vec![h, w(DATA, 512), r(DATA + 512, 512), status(&mem, 0)],
        ),
        (
            "data outside memory",
            vec![h, w(MEM_SIZE as u64 - 512, 1024), status(&mem, 0)],
        ),
        (
            "data address wraps",
            vec![h, w(u64::MAX - 511, 1024), status(&mem, 0)],
        ),
    ];
    for (what, bufs) in cases {
        assert_eq!(submit(&mut dev, &mem, &bufs), (S_IOERR, 1), "{what}");
    }
    // Same for a write whose data is outside memory.
    let bufs = [
        header(&mem, 0, vb::VIRTIO_BLK_T_OUT, 0),
        r(MEM_SIZE as u64 - 512, 1024),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_IOERR, 1));
    assert!(disk.take_log().is_empty());
}

#[test]
fn wrong_status_descriptors() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    let h = |mem| header(mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0);
    // No place for a status: returned with length 0, nothing written.
    for (what, last) in [
        ("read-only status", r(STATUS, 1)),
        ("empty status", w(STATUS, 0)),
        ("status outside memory", w(MEM_SIZE as u64, 1)),
    ] {
        mem.write_obj(0xeeu8, GuestAddress(STATUS)).expect("st");
        assert_eq!(
            submit(&mut dev, &mem, &[h(&mem), last]),
            (0xee, 0),
            "{what}"
        );
        assert_eq!(status_of(&mem, 0), 0xee, "{what}");
    }
    // Only the header: it is the last descriptor and readable.
    assert_eq!(submit(&mut dev, &mem, &[h(&mem)]).1, 0);
    // A 2-byte status on a flush: extra writable bytes are an error, the
    // status is the last byte.
    assert_eq!(
        submit(&mut dev, &mem, &[h(&mem), w(STATUS, 2)]),
        (S_IOERR, 1)
    );
    assert!(disk.take_log().is_empty());
    assert_eq!(dev.stats().unanswerable, 4);
}

#[test]
fn framing_is_not_assumed() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    // Header and data in one descriptor.
    let h = header(&mem, 0, vb::VIRTIO_BLK_T_OUT, 0);
    mem.write_slice(&pattern(512, 9), GuestAddress(h.addr + 16))
        .expect("data");
    assert_eq!(
        submit(&mut dev, &mem, &[r(h.addr, 16 + 512), status(&mem, 0)]),
        (S_OK, 1)
    );
    assert_eq!(disk.contents(0, 512), pattern(512, 9));
    // Data and status in one descriptor, header split in two.
    let h = header(&mem, 1, vb::VIRTIO_BLK_T_IN, 0);
    let bufs = [r(h.addr, 4), r(h.addr + 4, 12), w(DATA, 513)];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 513));
    assert_eq!(read_mem(&mem, DATA, 512), pattern(512, 9));
    assert_eq!(read_mem(&mem, DATA + 512, 1), vec![S_OK]);
}

#[test]
fn indirect_chains_work() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    disk.fill(0, &pattern(1024, 1));
    let bufs = [
        header(&mem, 0, vb::VIRTIO_BLK_T_IN, 0),
        w(DATA, 1024),
        status(&mem, 0),
    ];
    let mut drv = Driver::new(&mem, 0, QSIZE);
    let mut q = drv.queue();
    drv.add_indirect(&bufs, TABLES);
    dev.process_queue(0, &mut q, &mem).expect("process");
    assert_eq!(drv.used(), vec![(0, 1025)]);
    assert_eq!(status_of(&mem, 0), S_OK);
    assert_eq!(read_mem(&mem, DATA, 1024), pattern(1024, 1));
}

#[test]
fn looping_chain_is_returned_unanswered() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    let h = header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0);
    let mut drv = Driver::new(&mem, 0, QSIZE);
    let mut q = drv.queue();
    let next = VRING_DESC_F_NEXT as u16;
    drv.store(0, h.addr, 16, next, 1);
    drv.store(1, STATUS, 1, next | VRING_DESC_F_WRITE as u16, 0);
    drv.push_head(0);
    // A next index beyond the table.
    drv.store(2, h.addr, 16, next, QSIZE + 1);
    drv.push_head(2);
    dev.process_queue(0, &mut q, &mem).expect("process");
    assert_eq!(drv.used(), vec![(0, 0), (2, 0)]);
    assert!(disk.take_log().is_empty());
}

#[test]
fn corrupt_rings_need_reset() {
    let mem = memory();
    let (mut dev, _disk) = fake_setup(&cfg());
    // avail index more than a queue ahead.
    let drv = Driver::new(&mem, 0, QSIZE);
    let mut q = drv.queue();
    drv.set_avail_idx(QSIZE + 1);
    let e = dev.process_queue(0, &mut q, &mem).expect_err("corrupt");
    assert!(
        matches!(e, DeviceError::QueueCorrupt { queue: 0, .. }),
        "{e}"
    );
    // A head index beyond the queue.
    let mut drv = Driver::new(&mem, 0, QSIZE);
    let mut q = drv.queue();
    drv.push_head(QSIZE + 3);
    let e = dev.process_queue(0, &mut q, &mem).expect_err("corrupt");
    assert!(
        matches!(e, DeviceError::QueueCorrupt { queue: 0, .. }),
        "{e}"
    );
    // The device keeps working on a good queue.
    let bufs = [header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 0)];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 1));
}

#[test]
fn host_errors_become_ioerr_and_the_device_goes_on() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    disk.fail_next(libc::EIO);
    let read = [
        header(&mem, 0, vb::VIRTIO_BLK_T_IN, 0),
        w(DATA, 512),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &read), (S_IOERR, 1));
    assert_eq!(dev.stats().io_errors, 1);
    assert_eq!(submit(&mut dev, &mem, &read), (S_OK, 513));
    disk.fail_next(libc::ENOSPC);
    let flush = [header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 0)];
    assert_eq!(submit(&mut dev, &mem, &flush), (S_IOERR, 1));
    assert_eq!(submit(&mut dev, &mem, &flush), (S_OK, 1));
}

#[test]
fn read_only_device_refuses_writes() {
    let mem = memory();
    let c = BlkConfig {
        read_only: true,
        ..cfg()
    };
    let (mut dev, disk) = fake_setup(&c);
    assert_ne!(dev.features() & bit(vb::VIRTIO_BLK_F_RO), 0);
    disk.fill(0, &[0x11; 1024]);
    mem.write_slice(&[0x22; 1024], GuestAddress(DATA))
        .expect("data");
    let refused = [
        vec![
            header(&mem, 0, vb::VIRTIO_BLK_T_OUT, 0),
            r(DATA, 1024),
            status(&mem, 0),
        ],
        vec![
            header(&mem, 0, vb::VIRTIO_BLK_T_DISCARD, 0),
            segments(&mem, DATA + 0x1000, &[(0, 1, 0)]),
            status(&mem, 0),
        ],
        vec![
            header(&mem, 0, vb::VIRTIO_BLK_T_WRITE_ZEROES, 0),
            segments(&mem, DATA + 0x1000, &[(0, 1, 0)]),
            status(&mem, 0),
        ],
    ];
    for bufs in &refused {
        assert_eq!(submit(&mut dev, &mem, bufs), (S_IOERR, 1));
    }
    assert_eq!(disk.contents(0, 1024), vec![0x11; 1024]);
    // Flush succeeds without touching the backend; reads work.
    let flush = [header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 0)];
    assert_eq!(submit(&mut dev, &mem, &flush), (S_OK, 1));
    let read = [
        header(&mem, 0, vb::VIRTIO_BLK_T_IN, 0),
        w(DATA, 1024),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &read), (S_OK, 1025));
    assert_eq!(read_mem(&mem, DATA, 1024), vec![0x11; 1024]);
    assert_eq!(
        disk.take_log(),
        vec![FakeOp::Read {
            offset: 0,
            len: 1024
        }]
    );
}

// ------------------------------------------------------------- cache mode

fn write_req(mem: &GuestMemoryMmap) -> [Buf; 3] {
    [
        header(mem, 0, vb::VIRTIO_BLK_T_OUT, 0),
        r(DATA, 512),
        status(mem, 0),
    ]
}

#[test]
fn writethrough_without_flush_or_wce() {
    let mem = memory();
    let disk = FakeDisk::new(DISK_SIZE);
    let mut dev = fake_device(&cfg(), &disk);
    let f = everything(&dev) & !bit(vb::VIRTIO_BLK_F_FLUSH) & !bit(vb::VIRTIO_BLK_F_CONFIG_WCE);
    negotiate(&mut dev, f);
    assert_eq!(submit(&mut dev, &mem, &write_req(&mem)), (S_OK, 1));
    assert_eq!(
        disk.take_log(),
        vec![
            FakeOp::Write {
                offset: 0,
                len: 512
            },
            FakeOp::Flush
        ]
    );
    // Write-zeroes is a write too.
    let bufs = [
        header(&mem, 0, vb::VIRTIO_BLK_T_WRITE_ZEROES, 0),
        segments(&mem, DATA, &[(0, 1, 0)]),
        status(&mem, 0),
    ];
    assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 1));
    assert_eq!(disk.take_log().last(), Some(&FakeOp::Flush));
}

#[test]
fn writeback_switch_through_config() {
    let mem = memory();
    let (mut dev, disk) = fake_setup(&cfg());
    let mut wb = [0u8];
    dev.read_config(offset::WRITEBACK as u32, &mut wb);
    assert_eq!(wb, [1]);
    assert!(dev.write_config(offset::WRITEBACK as u32, &[0]));
    dev.read_config(offset::WRITEBACK as u32, &mut wb);
    assert_eq!(wb, [0]);
    assert_eq!(submit(&mut dev, &mem, &write_req(&mem)), (S_OK, 1));
    assert_eq!(
        disk.take_log(),
        vec![
            FakeOp::Write {
                offset: 0,
                len: 512
            },
            FakeOp::Flush
        ]
    );
    assert!(dev.write_config(offset::WRITEBACK as u32, &[1]));
    assert_eq!(submit(&mut dev, &mem, &write_req(&mem)), (S_OK, 1));
    assert_eq!(
        disk.take_log(),
        vec![FakeOp::Write {
            offset: 0,
            len: 512
        }]
    );
}

#[test]
fn configured_writethrough_holds_with_flush_negotiated() {
    let mem = memory();
    let c = BlkConfig {
        writeback: false,
        ..cfg()
    };
    let (mut dev, disk) = fake_setup(&c);
    let mut wb = [9u8];
    dev.read_config(offset::WRITEBACK as u32, &mut wb);
    assert_eq!(wb, [0]);
    assert_eq!(submit(&mut dev, &mem, &write_req(&mem)), (S_OK, 1));
    assert_eq!(disk.take_log().len(), 2, "write + flush");
}

#[test]
fn config_writes_are_all_or_nothing() {
    let disk = FakeDisk::new(DISK_SIZE);
    let mut dev = fake_device(&cfg(), &disk);
    let before = dev.config_space();
    // Before features are negotiated: refused.
    assert!(!dev.write_config(offset::WRITEBACK as u32, &[0]));
    negotiate_all(&mut dev);
    for (off, data) in [
        (offset::CAPACITY, vec![0u8; 8]),
        (offset::WRITEBACK, vec![0, 0]),
        (offset::WRITEBACK - 1, vec![0, 0]),
        (offset::WRITEBACK, vec![2]),
        (offset::NUM_QUEUES, vec![4, 0]),
        (offset::WRITE_ZEROES_MAY_UNMAP, vec![0]),
    ] {
        assert!(!dev.write_config(off as u32, &data), "offset {off}");
    }
    assert_eq!(dev.config_space(), before);
    // Without CONFIG_WCE: refused.
    let mut dev = fake_device(&cfg(), &disk);
    negotiate_masked(&mut dev, !bit(vb::VIRTIO_BLK_F_CONFIG_WCE));
    assert!(!dev.write_config(offset::WRITEBACK as u32, &[0]));
}

#[test]
fn wce_without_flush_starts_writethrough_and_reset_restores() {
    let disk = FakeDisk::new(DISK_SIZE);
    let mut dev = fake_device(&cfg(), &disk);
    negotiate_masked(&mut dev, !bit(vb::VIRTIO_BLK_F_FLUSH));
    let mut wb = [9u8];
    dev.read_config(offset::WRITEBACK as u32, &mut wb);
    assert_eq!(wb, [0]);
    dev.reset();
    dev.read_config(offset::WRITEBACK as u32, &mut wb);
    assert_eq!(wb, [1]);
}

#[test]
fn config_space_reads() {
    let disk = FakeDisk::new(DISK_SIZE);
    let c = BlkConfig {
        num_queues: 3,
        ..cfg()
    };
    let dev = fake_device(&c, &disk);
    assert_eq!(dev.config_size(), 96);
    let mut all = [0xffu8; 96];
    dev.read_config(0, &mut all);
    assert_eq!(&all[0..8], &SECTORS.to_le_bytes());
    assert_eq!(&all[34..36], &3u16.to_le_bytes());
    assert_eq!(&all[12..16], &u32::from(QSIZE - 2).to_le_bytes());
    // Any window reads the same bytes.
    let mut part = [0u8; 4];
    dev.read_config(20, &mut part);
    assert_eq!(part, [0, 2, 0, 0], "blk_size 512");
    let f = dev.features();
    for b in [
        vb::VIRTIO_BLK_F_SIZE_MAX,
        vb::VIRTIO_BLK_F_SEG_MAX,
        vb::VIRTIO_BLK_F_BLK_SIZE,
        vb::VIRTIO_BLK_F_TOPOLOGY,
        vb::VIRTIO_BLK_F_FLUSH,
        vb::VIRTIO_BLK_F_MQ,
        vb::VIRTIO_BLK_F_DISCARD,
        vb::VIRTIO_BLK_F_WRITE_ZEROES,
        vb::VIRTIO_BLK_F_CONFIG_WCE,
    ] {
        assert_ne!(f & bit(b), 0, "feature {b}");
    }
    assert_eq!(f & bit(vb::VIRTIO_BLK_F_RO), 0);
    assert_eq!(dev.queue_max_sizes(), &[QSIZE; 3]);
    assert_eq!(dev.device_type(), VIRTIO_ID_BLOCK);
}

#[test]
fn bad_configs_are_refused() {
    let disk = FakeDisk::new(DISK_SIZE);
    let mk = |c: BlkConfig| BlkDevice::with_engine("x", &c, disk.info(), Box::new(disk.engine()));
    assert!(matches!(
        mk(BlkConfig {
            num_queues: 0,
            ..cfg()
        }),
        Err(BlkError::NumQueues(0))
    ));
    assert!(matches!(
        mk(BlkConfig {
            queue_size: 100,
            ..cfg()
        }),
        Err(BlkError::QueueSize(100))
    ));
    assert!(matches!(
        mk(BlkConfig {
            serial: "x".repeat(21),
            ..cfg()
        }),
        Err(BlkError::Serial(_))
    ));
    assert!(matches!(
        mk(BlkConfig {
            serial: "a\0b".into(),
            ..cfg()
        }),
        Err(BlkError::Serial(_))
    ));
    let missing = BlkConfig {
        path: "/nonexistent/disk.img".into(),
        ..cfg()
    };
    assert!(matches!(
        BlkDevice::new("x", &missing),
        Err(BlkError::Engine(EngineError::Open { .. }))
    ));
}

// ------------------------------------------------------ async, MQ, reset

/// Run `handle_event` once the engine's fd is readable.
fn on_event(dev: &mut BlkDevice, queues: &mut [Option<Queue>], mem: &GuestMemoryMmap) -> Vec<u16> {
    let fds = dev.event_fds();
    assert_eq!(fds.len(), 1);
    wait_readable(fds[0]);
    dev.handle_event(queues, mem).expect("handle_event")
}

fn wait_readable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 10_000) };
    assert_eq!(n, 1, "event fd did not fire");
}

fn queue_mut(queues: &mut [Option<Queue>], i: usize) -> &mut Queue {
    queues[i].as_mut().expect("live queue")
}

#[test]
fn mq_completions_go_to_their_queue() {
    let mem = memory();
    let disk = FakeDisk::deferred(DISK_SIZE).expect("fake");
    let c = BlkConfig {
        num_queues: 2,
        ..cfg()
    };
    let mut dev = fake_device(&c, &disk);
    negotiate_all(&mut dev);
    disk.fill(0, &[1; 512]);
    disk.fill(512, &[2; 512]);
    let mut d0 = Driver::new(&mem, 0, QSIZE);
    let mut d1 = Driver::new(&mem, Q1, QSIZE);
    let mut queues = vec![Some(d0.queue()), Some(d1.queue())];
    let h0 = d0.add(&[
        header(&mem, 0, vb::VIRTIO_BLK_T_IN, 0),
        w(DATA, 512),
        status(&mem, 0),
    ]);
    let h1 = d1.add(&[
        header(&mem, 1, vb::VIRTIO_BLK_T_IN, 1),
        w(DATA + 0x1000, 512),
        status(&mem, 1),
    ]);
    for i in 0..2u16 {
        let out = dev
            .process_queue(i, queue_mut(&mut queues, usize::from(i)), &mem)
            .expect("process");
        assert!(!out.used_added);
    }
    assert_eq!(dev.in_flight(), 2);
    assert!(d0.used().is_empty() && d1.used().is_empty());

    // The newer request (queue 1) completes first.
    disk.release_newest(1);
    assert_eq!(on_event(&mut dev, &mut queues, &mem), vec![1]);
    assert_eq!(d1.used(), vec![(u32::from(h1), 513)]);
    assert!(d0.used().is_empty());
    assert_eq!(read_mem(&mem, DATA + 0x1000, 512), vec![2; 512]);
    assert_eq!(status_of(&mem, 1), S_OK);
    assert_eq!(status_of(&mem, 0), 0xee);

    disk.release_oldest(1);
    assert_eq!(on_event(&mut dev, &mut queues, &mem), vec![0]);
    assert_eq!(d0.used(), vec![(u32::from(h0), 513)]);
    assert_eq!(read_mem(&mem, DATA, 512), vec![1; 512]);
    assert_eq!(dev.in_flight(), 0);
}

#[test]
fn a_queue_at_its_bound_resumes_after_completions() {
    let mem = memory();
    let disk = FakeDisk::deferred(DISK_SIZE).expect("fake");
    let c = BlkConfig {
        queue_size: 4,
        ..cfg()
    };
    let mut dev = fake_device(&c, &disk);
    negotiate_all(&mut dev);
    let mut drv = Driver::new(&mem, 0, 4);
    let mut queues = vec![Some(drv.queue())];
    // A driver posting the same chain again and again while it is in
    // flight: at most queue-size requests are taken.
    let bufs = [header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 0)];
    let head = drv.add(&bufs);
    for _ in 0..3 {
        drv.push_head(head);
    }
    dev.process_queue(0, queue_mut(&mut queues, 0), &mem)
        .expect("process");
    assert_eq!(dev.in_flight(), 4);
    drv.push_head(head);
    drv.push_head(head);
    dev.process_queue(0, queue_mut(&mut queues, 0), &mem)
        .expect("process");
    assert_eq!(dev.in_flight(), 4, "bound reached: nothing more taken");

    disk.release_oldest(4);
    assert_eq!(on_event(&mut dev, &mut queues, &mem), vec![0]);
    assert_eq!(drv.used().len(), 4);
    assert_eq!(dev.in_flight(), 2, "the rest was taken after completions");
    disk.release_oldest(2);
    assert_eq!(on_event(&mut dev, &mut queues, &mem), vec![0]);
    assert_eq!(drv.used().len(), 2);
    assert_eq!(disk.take_log().len(), 6);
}

#[test]
fn reset_waits_for_in_flight_requests_and_forgets_them() {
    let mem = memory();
    let disk = FakeDisk::deferred(DISK_SIZE).expect("fake");
    let mut dev = fake_device(&cfg(), &disk);
    negotiate_all(&mut dev);
    let mut drv = Driver::new(&mem, 0, QSIZE);
    let mut q = drv.queue();
    mem.write_slice(&[7; 512], GuestAddress(DATA))
        .expect("data");
    drv.add(&write_req(&mem));
    dev.process_queue(0, &mut q, &mem).expect("process");
    assert_eq!(dev.in_flight(), 1);
    dev.reset();
    assert_eq!(dev.in_flight(), 0);
    assert_eq!(disk.contents(0, 512), vec![7; 512], "the write was done");
    assert!(drv.used().is_empty(), "but not reported");
    assert_eq!(status_of(&mem, 0), 0xee);
    let mut queues = vec![Some(q)];
    assert!(
        dev.handle_event(&mut queues, &mem)
            .expect("event")
            .is_empty()
    );
}

#[test]
fn completions_for_a_replaced_queue_are_dropped() {
    let mem = memory();
    let disk = FakeDisk::deferred(DISK_SIZE).expect("fake");
    let mut dev = fake_device(&cfg(), &disk);
    negotiate_all(&mut dev);
    let mut drv = Driver::new(&mem, 0, QSIZE);
    let mut queues = vec![Some(drv.queue())];
    drv.add(&[header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 0)]);
    dev.process_queue(0, queue_mut(&mut queues, 0), &mem)
        .expect("process");
    // The driver reset the queue and set it up elsewhere.
    let mut other = Driver::new(&mem, Q1, QSIZE);
    queues[0] = Some(other.queue());
    disk.release_oldest(1);
    assert!(on_event(&mut dev, &mut queues, &mem).is_empty());
    assert!(drv.used().is_empty() && other.used().is_empty());
    assert_eq!(dev.in_flight(), 0);
    // A queue that is gone altogether.
    queues[0] = Some(drv.queue());
    drv.add(&[header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 0)]);
    dev.process_queue(0, queue_mut(&mut queues, 0), &mem)
        .expect("process");
    // (The new queue object starts at avail index 0: it takes the old
    // entry again too.)
    assert_eq!(dev.in_flight(), 2);
    queues[0] = None;
    disk.release_oldest(2);
    assert!(on_event(&mut dev, &mut queues, &mem).is_empty());
    assert_eq!(dev.in_flight(), 0);
}

#[test]
fn event_idx_publishes_avail_event() {
    let mem = memory();
    let (mut dev, _disk) = fake_setup(&cfg());
    let mut drv = Driver::new(&mem, 0, QSIZE);
    let mut q = drv.queue();
    q.set_event_idx(true);
    for n in 0..3 {
        drv.add(&[header(&mem, n, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, n)]);
    }
    dev.process_queue(0, &mut q, &mem).expect("process");
    assert_eq!(drv.used().len(), 3);
    // avail_event sits after the used ring: the driver kicks for entry 3.
    let at = drv.used + 4 + 8 * u64::from(QSIZE);
    let avail_event: u16 = mem.read_obj(GuestAddress(at)).expect("avail_event");
    assert_eq!(u16::from_le(avail_event), 3);
}

#[test]
fn queue_index_beyond_the_device_is_ignored() {
    let mem = memory();
    let (mut dev, _disk) = fake_setup(&cfg());
    let drv = Driver::new(&mem, 0, QSIZE);
    let mut q = drv.queue();
    let out = dev.process_queue(5, &mut q, &mem).expect("process");
    assert!(!out.used_added);
}

// ----------------------------------------------------------- real engines

fn temp_disk(size: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    f.as_file().set_len(size).expect("set_len");
    f
}

fn file_device(
    engine: Engine,
    path: &std::path::Path,
    tweak: impl Fn(&mut BlkConfig),
) -> BlkDevice {
    let mut c = BlkConfig {
        path: path.to_path_buf(),
        engine,
        ..cfg()
    };
    tweak(&mut c);
    let mut dev = BlkDevice::new("blk-file", &c).expect("device");
    negotiate_all(&mut dev);
    dev
}

/// Post `reqs` on queue 0, process them and wait until all are used.
fn run_all(dev: &mut BlkDevice, mem: &GuestMemoryMmap, reqs: &[Vec<Buf>]) -> Vec<(u32, u32)> {
    let mut drv = Driver::new(mem, 0, 64);
    let mut queues = vec![Some(drv.queue())];
    for bufs in reqs {
        drv.add(bufs);
    }
    dev.process_queue(0, queue_mut(&mut queues, 0), mem)
        .expect("process");
    let mut used = drv.used();
    // A pass is bounded (chains, bytes, time): a synchronous engine may
    // need more than one, as the host would run them.
    let mut passes = 1;
    while used.len() < reqs.len() {
        if dev.event_fds().is_empty() {
            assert!(passes < 1000, "no progress after {passes} passes");
            passes += 1;
            dev.process_queue(0, queue_mut(&mut queues, 0), mem)
                .expect("process");
        } else {
            on_event(dev, &mut queues, mem);
        }
        used.extend(drv.used());
    }
    used.sort_unstable();
    used
}

fn file_roundtrip(engine: Engine, direct: bool) {
    let mem = memory();
    let file = temp_disk(4 << 20);
    let mut dev = file_device(engine, file.path(), |c| c.direct = direct);
    mem.write_slice(&pattern(8192, 5), GuestAddress(DATA))
        .expect("data");
    let write = vec![
        header(&mem, 0, vb::VIRTIO_BLK_T_OUT, 16),
        r(DATA, 4096),
        r(DATA + 4096, 4096),
        status(&mem, 0),
    ];
    let flush = vec![header(&mem, 1, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 1)];
    assert_eq!(run_all(&mut dev, &mem, &[write]), vec![(0, 1)]);
    assert_eq!(run_all(&mut dev, &mem, &[flush]), vec![(0, 1)]);
    assert_eq!((status_of(&mem, 0), status_of(&mem, 1)), (S_OK, S_OK));
    let on_disk = std::fs::read(file.path()).expect("read back");
    assert_eq!(&on_disk[8192..16384], pattern(8192, 5).as_slice());

    // Read it back, into a misaligned buffer too (bounced under O_DIRECT).
    let read = |n: u64, addr: u64| {
        vec![
            header(&mem, n, vb::VIRTIO_BLK_T_IN, 16),
            w(addr, 8192),
            status(&mem, n),
        ]
    };
    let reqs = [read(2, DATA + 0x10000), read(3, DATA + 0x20000 + 8)];
    assert_eq!(run_all(&mut dev, &mem, &reqs), vec![(0, 8193), (3, 8193)]);
    assert_eq!(read_mem(&mem, DATA + 0x10000, 8192), pattern(8192, 5));
    assert_eq!(read_mem(&mem, DATA + 0x20008, 8192), pattern(8192, 5));
    assert_eq!(dev.stats().bytes_read, 16384);

    // Write-zeroes (with and without unmap) and discard.
    let unmap = vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    let wz = vec![
        header(&mem, 4, vb::VIRTIO_BLK_T_WRITE_ZEROES, 0),
        segments(&mem, DATA + 0x30000, &[(16, 4, 0), (24, 4, unmap)]),
        status(&mem, 4),
    ];
    let discard = vec![
        header(&mem, 5, vb::VIRTIO_BLK_T_DISCARD, 0),
        segments(&mem, DATA + 0x31000, &[(64, 64, 0)]),
        status(&mem, 5),
    ];
    run_all(&mut dev, &mem, &[wz, discard]);
    assert_eq!((status_of(&mem, 4), status_of(&mem, 5)), (S_OK, S_OK));
    let on_disk = std::fs::read(file.path()).expect("read back");
    assert_eq!(&on_disk[8192..10240], &[0u8; 2048][..]);
    assert_eq!(&on_disk[10240..12288], &pattern(8192, 5)[2048..4096]);
    assert_eq!(&on_disk[12288..14336], &[0u8; 2048][..]);
    assert_eq!(on_disk.len(), 4 << 20, "the size did not change");
}

#[test]
fn sync_engine_on_a_file() {
    file_roundtrip(Engine::Sync, false);
}

#[test]
fn io_uring_engine_on_a_file() {
    file_roundtrip(Engine::IoUring, false);
}

#[test]
fn sync_engine_with_o_direct() {
    file_roundtrip(Engine::Sync, true);
}

#[test]
fn io_uring_engine_with_o_direct() {
    file_roundtrip(Engine::IoUring, true);
}

#[test]
fn io_uring_writethrough_links_a_flush() {
    let mem = memory();
    let file = temp_disk(1 << 20);
    let mut dev = file_device(Engine::IoUring, file.path(), |c| c.writeback = false);
    mem.write_slice(&[9; 4096], GuestAddress(DATA))
        .expect("data");
    let reqs: Vec<Vec<Buf>> = (0..8)
        .map(|n| {
            vec![
                header(&mem, n, vb::VIRTIO_BLK_T_OUT, n * 8),
                r(DATA, 4096),
                status(&mem, n),
            ]
        })
        .collect();
    assert_eq!(run_all(&mut dev, &mem, &reqs).len(), 8);
    assert!((0..8).all(|n| status_of(&mem, n) == S_OK));
    let on_disk = std::fs::read(file.path()).expect("read back");
    assert!(on_disk[..32768].iter().all(|&b| b == 9));
}

#[test]
fn read_only_file_device() {
    for engine in [Engine::Sync, Engine::IoUring] {
        let mem = memory();
        let file = temp_disk(1 << 20);
        std::fs::write(file.path(), vec![3u8; 1 << 20]).expect("fill");
        let mut dev = file_device(engine, file.path(), |c| c.read_only = true);
        assert_ne!(dev.features() & bit(vb::VIRTIO_BLK_F_RO), 0);
        mem.write_slice(&[4; 512], GuestAddress(DATA))
            .expect("data");
        let reqs = [
            vec![
                header(&mem, 0, vb::VIRTIO_BLK_T_OUT, 0),
                r(DATA, 512),
                status(&mem, 0),
            ],
            vec![header(&mem, 1, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 1)],
            vec![
                header(&mem, 2, vb::VIRTIO_BLK_T_IN, 0),
                w(DATA + 4096, 512),
                status(&mem, 2),
            ],
        ];
        run_all(&mut dev, &mem, &reqs);
        assert_eq!(
            (status_of(&mem, 0), status_of(&mem, 1), status_of(&mem, 2)),
            (S_IOERR, S_OK, S_OK)
        );
        assert_eq!(read_mem(&mem, DATA + 4096, 512), vec![3; 512]);
        assert!(
            std::fs::read(file.path())
                .expect("read")
                .iter()
                .all(|&b| b == 3)
        );
    }
}

#[test]
fn a_file_shrinking_underneath_gives_ioerr() {
    for engine in [Engine::Sync, Engine::IoUring] {
        let mem = memory();
        let file = temp_disk(1 << 20);
        let mut dev = file_device(engine, file.path(), |_| {});
        file.as_file().set_len(4096).expect("shrink");
        let read = |n: u64, sector: u64| {
            vec![
                header(&mem, n, vb::VIRTIO_BLK_T_IN, sector),
                w(DATA + 0x1000 * n, 512),
                status(&mem, n),
            ]
        };
        run_all(&mut dev, &mem, &[read(0, 100)]);
        assert_eq!(status_of(&mem, 0), S_IOERR, "{engine:?}");
        run_all(&mut dev, &mem, &[read(1, 0)]);
        assert_eq!(status_of(&mem, 1), S_OK, "{engine:?}");
        assert_eq!(dev.stats().io_errors, 1);
    }
}

#[test]
fn io_uring_reset_waits_for_in_flight_requests() {
    let mem = memory();
    let file = temp_disk(16 << 20);
    let mut dev = file_device(Engine::IoUring, file.path(), |c| c.queue_size = 64);
    mem.write_slice(&pattern(64 << 10, 2), GuestAddress(DATA))
        .expect("data");
    let mut drv = Driver::new(&mem, 0, 64);
    let mut q = drv.queue();
    for n in 0..16u64 {
        drv.add(&[
            header(&mem, n, vb::VIRTIO_BLK_T_OUT, n * 128),
            r(DATA, 64 << 10),
            status(&mem, n),
        ]);
    }
    dev.process_queue(0, &mut q, &mem).expect("process");
    dev.reset();
    assert_eq!(dev.in_flight(), 0);
    assert!(drv.used().is_empty(), "nothing reported after reset");
    assert!((0..16).all(|n| status_of(&mem, n) == 0xee));
    // Every write the kernel accepted finished before reset returned.
    let on_disk = std::fs::read(file.path()).expect("read back");
    for n in 0..16usize {
        let at = n * (64 << 10);
        assert_eq!(
            &on_disk[at..at + (64 << 10)],
            pattern(64 << 10, 2).as_slice()
        );
    }
    // The eventfd was drained too: nothing left to report.
    let mut queues = vec![Some(q)];
    assert!(
        dev.handle_event(&mut queues, &mem)
            .expect("event")
            .is_empty()
    );
}

// ------------------------------------------------------------- properties

/// Interesting descriptor addresses: the rings, data, the end of memory,
/// beyond it, near the top of the address space.
fn any_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(HDR),
        Just(STATUS),
        Just(DATA),
        Just(TABLES),
        Just(MEM_SIZE as u64 - 1),
        Just(MEM_SIZE as u64),
        Just(u64::MAX - 15),
        0u64..MEM_SIZE as u64,
        any::<u64>(),
    ]
}

fn any_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(16),
        Just(17),
        Just(512),
        Just(4096),
        Just(1 << 20),
        Just(u32::MAX),
        0u32..70_000,
    ]
}

fn any_desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    (any_addr(), any_len(), 0u16..8, 0u16..(QSIZE + 4))
}

fn any_type() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(vb::VIRTIO_BLK_T_IN),
        Just(vb::VIRTIO_BLK_T_OUT),
        Just(vb::VIRTIO_BLK_T_FLUSH),
        Just(vb::VIRTIO_BLK_T_GET_ID),
        Just(vb::VIRTIO_BLK_T_DISCARD),
        Just(vb::VIRTIO_BLK_T_WRITE_ZEROES),
        any::<u32>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random descriptor tables (flags, lengths, addresses, next pointers,
    /// loops, indirect tables) and avail rings: the device answers or
    /// reports a corrupt queue, never panics, and stays usable.
    #[test]
    fn random_chains_never_panic(
        descs in proptest::collection::vec(any_desc(), QSIZE as usize),
        heads in proptest::collection::vec(0u16..(QSIZE + 2), 0..12),
        types in proptest::collection::vec((any_type(), any::<u64>()), 4),
        deferred in any::<bool>(),
    ) {
        let mem = memory();
        let disk = if deferred {
            FakeDisk::deferred(DISK_SIZE).expect("fake")
        } else {
            FakeDisk::new(DISK_SIZE)
        };
        let mut dev = fake_device(&cfg(), &disk);
        negotiate_all(&mut dev);
        for (i, &(t, sector)) in types.iter().enumerate() {
            header(&mem, i as u64, t, sector % (SECTORS + 4));
        }
        let mut drv = Driver::new(&mem, 0, QSIZE);
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            // Point some descriptors at the prepared headers.
            let addr = if i % 4 == 0 { HDR + 0x100 * (i as u64 / 4) } else { addr };
            drv.store(i as u16, addr, len, flags, next);
        }
        for &h in &heads {
            drv.push_head(h);
        }
        let mut queues = vec![Some(drv.queue())];
        let result = dev.process_queue(0, queue_mut(&mut queues, 0), &mem);
        match result {
            Ok(_) | Err(DeviceError::QueueCorrupt { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
        if deferred {
            disk.release_oldest(usize::MAX / 2);
            let r = dev.handle_event(&mut queues, &mem);
            prop_assert!(!matches!(r, Err(DeviceError::Backend(_))));
        }
        // Every used entry is a chain head of this queue.
        for (id, _) in drv.used() {
            prop_assert!(id < u32::from(QSIZE));
        }
        dev.reset();
        prop_assert_eq!(dev.in_flight(), 0);
        // Still serves a good request afterwards.
        negotiate_all(&mut dev);
        let bufs = [header(&mem, 0, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 0)];
        if !deferred {
            prop_assert_eq!(submit(&mut dev, &mem, &bufs), (S_OK, 1));
        }
    }
}

// ---------------------------------------------------------- block devices

/// A loop device over a file, detached on drop.
struct LoopDev(String);

impl LoopDev {
    /// `None` where loop devices cannot be set up (no root, no losetup).
    fn attach(file: &std::path::Path, sector_size: u32) -> Option<Self> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector_size.to_string()])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let name = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!name.is_empty()).then_some(Self(name))
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn block_device_with_4k_sectors() {
    let file = temp_disk(8 << 20);
    let Some(lo) = LoopDev::attach(file.path(), 4096) else {
        eprintln!("skipped: cannot attach a loop device");
        return;
    };
    for engine in [Engine::Sync, Engine::IoUring] {
        let mem = memory();
        let mut dev = file_device(engine, std::path::Path::new(&lo.0), |c| c.direct = true);
        let space = dev.config_space();
        assert_eq!(space.blk_size, 4096);
        assert_eq!(space.capacity, (8 << 20) / 512);
        assert_eq!(space.discard_sector_alignment, 8);
        mem.write_slice(&pattern(8192, 4), GuestAddress(DATA))
            .expect("data");
        let reqs = [
            vec![
                header(&mem, 0, vb::VIRTIO_BLK_T_OUT, 8),
                r(DATA, 8192),
                status(&mem, 0),
            ],
            // Not aligned to the device's 4 KiB blocks: refused by the host.
            vec![
                header(&mem, 1, vb::VIRTIO_BLK_T_OUT, 1),
                r(DATA, 4096),
                status(&mem, 1),
            ],
            vec![header(&mem, 2, vb::VIRTIO_BLK_T_FLUSH, 0), status(&mem, 2)],
        ];
        run_all(&mut dev, &mem, &reqs);
        assert_eq!(
            (status_of(&mem, 0), status_of(&mem, 1), status_of(&mem, 2)),
            (S_OK, S_IOERR, S_OK),
            "{engine:?}"
        );
        // Read back into misaligned memory (bounced).
        let read = vec![
            header(&mem, 3, vb::VIRTIO_BLK_T_IN, 8),
            w(DATA + 0x10008, 8192),
            status(&mem, 3),
        ];
        run_all(&mut dev, &mem, &[read]);
        assert_eq!(status_of(&mem, 3), S_OK);
        assert_eq!(read_mem(&mem, DATA + 0x10008, 8192), pattern(8192, 4));
        // Write-zeroes with unmap, then read zeroes.
        let wz = vec![
            header(&mem, 4, vb::VIRTIO_BLK_T_WRITE_ZEROES, 0),
            segments(
                &mem,
                DATA + 0x30000,
                &[(8, 8, vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
            ),
            status(&mem, 4),
        ];
        let read = vec![
            header(&mem, 5, vb::VIRTIO_BLK_T_IN, 8),
            w(DATA + 0x20000, 8192),
            status(&mem, 5),
        ];
        run_all(&mut dev, &mem, &[wz]);
        run_all(&mut dev, &mem, &[read]);
        assert_eq!((status_of(&mem, 4), status_of(&mem, 5)), (S_OK, S_OK));
        assert_eq!(read_mem(&mem, DATA + 0x20000, 4096), vec![0; 4096]);
        assert_eq!(
            read_mem(&mem, DATA + 0x21000, 4096),
            pattern(8192, 4)[4096..].to_vec()
        );
    }
}

// ------------------------------------------------------- bounded passes

/// Issue 10, defect 2: with requests on the ring beyond a pass's budget,
/// one pass starts only the budget's worth and leaves the rest for the next
/// pass (the host runs it after the instance has looked at its fds).
#[test]
fn a_pass_starts_at_most_its_budget() {
    use std::time::Duration;
    use vmsg_backend::device::PassBudget;

    let mem = memory();
    let (mut dev, _disk) = fake_setup(&cfg());
    let mut drv = Driver::new(&mem, 0, QSIZE);
    let mut q = drv.queue();
    let per_request = QSIZE / 3;
    for n in 0..per_request {
        let n = u64::from(n);
        drv.add(&[
            header(&mem, n, vb::VIRTIO_BLK_T_IN, 0),
            w(DATA + 0x1000 * n, 4096),
            status(&mem, n),
        ]);
    }
    let far = Duration::from_secs(3600);
    let mut budget = PassBudget::with_limits(2, u64::MAX, far);
    dev.process_queue_bounded(0, &mut q, &mem, &mut budget)
        .expect("process");
    assert_eq!(drv.used().len(), 2, "two chains per this pass");
    assert_eq!(q.next_avail(), 2, "the rest stays on the ring");
    // Synchronous I/O spends the byte budget: one 4 KiB read per pass here.
    let mut budget = PassBudget::with_limits(64, 4096, far);
    dev.process_queue_bounded(0, &mut q, &mem, &mut budget)
        .expect("process");
    assert_eq!(drv.used().len(), 1);
    let mut budget = PassBudget::untimed();
    dev.process_queue_bounded(0, &mut q, &mem, &mut budget)
        .expect("process");
    assert_eq!(drv.used().len(), usize::from(per_request) - 3);
}
