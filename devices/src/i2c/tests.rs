//! Device-level tests: requests built by hand in guest memory, processed
//! through `VirtioDevice` (the worker thread included), checked by status
//! byte, used length, guest memory and what reached the adapter. Spec
//! references are to virtio 1.3 §5.19.

use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmsg_backend::device::VirtioDevice;

use super::request::{FLAG_FAIL_NEXT, FLAG_M_RD, MSG_ERR, MSG_OK};
use super::sim::eeprom::Eeprom24c02;
use super::sim::lm75::Lm75;
use super::*;

const MEM_SIZE: usize = 4 << 20;
/// Request headers: `HDR + 0x10 * n`.
const HDR: u64 = 0x10_0000;
/// Status bytes: `STATUS + n`.
const STATUS: u64 = 0x18_0000;
/// Buffers: `DATA + 0x4000 * n`.
const DATA: u64 = 0x20_0000;
const QSIZE: u16 = 256;
const EEPROM: u16 = 0x50;
const SENSOR: u16 = 0x48;
/// How long a test waits for the worker before failing loudly.
const WORKER_TIMEOUT_MS: i32 = 10_000;

fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

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

/// The driver side of the request queue (rings at address 0).
struct Ring<'a> {
    mem: &'a GuestMemoryMmap,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
    /// Requests posted, for numbering headers, buffers and status bytes.
    n: u64,
}

const AVAIL: u64 = 16 * QSIZE as u64;
const USED: u64 = (AVAIL + 6 + 2 * QSIZE as u64 + 3) & !3;

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        mem.write_slice(
            &vec![0u8; (USED + 6 + 8 * QSIZE as u64) as usize],
            GuestAddress(0),
        )
        .expect("rings");
        Self {
            mem,
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
            n: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue");
        q.try_set_desc_table_address(GuestAddress(0)).expect("desc");
        q.try_set_avail_ring_address(GuestAddress(AVAIL))
            .expect("avail");
        q.try_set_used_ring_address(GuestAddress(USED))
            .expect("used");
        q.set_ready(true);
        q
    }

    /// Post a chain of `bufs`; returns its head.
    fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (k, b) in bufs.iter().enumerate() {
            let i = (head + k as u16) % QSIZE;
            let mut flags = if b.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if k + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d =
                RawDescriptor::from(SplitDescriptor::new(b.addr, b.len, flags, (i + 1) % QSIZE));
            self.mem
                .write_obj(d, GuestAddress(16 * u64::from(i)))
                .expect("descriptor");
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .expect("avail slot");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(AVAIL + 2))
            .expect("avail idx");
        head
    }

    /// Post one request the way Linux's driver does: header, buffer (if
    /// any), status byte. Returns its number.
    fn request(&mut self, raw_addr: u16, flags: u32, data: Req) -> u64 {
        let n = self.n;
        self.n += 1;
        let hdr = HDR + 0x10 * n;
        let mut h = [0u8; 8];
        h[0..2].copy_from_slice(&raw_addr.to_le_bytes());
        h[4..8].copy_from_slice(&flags.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(hdr)).expect("header");
        self.mem
            .write_obj(0xeeu8, GuestAddress(STATUS + n))
            .expect("status");
        let buf = DATA + 0x4000 * n;
        let mut bufs = vec![r(hdr, 8)];
        match data {
            Req::Write(bytes) => {
                self.mem
                    .write_slice(bytes, GuestAddress(buf))
                    .expect("data");
                if !bytes.is_empty() {
                    bufs.push(r(buf, bytes.len() as u32));
                }
            }
            Req::Read(len) => {
                self.mem
                    .write_slice(&vec![0xcc; len as usize], GuestAddress(buf))
                    .expect("poison");
                if len > 0 {
                    bufs.push(w(buf, len));
                }
            }
        }
        bufs.push(w(STATUS + n, 1));
        self.add(&bufs);
        n
    }

    fn status(&self, n: u64) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS + n)).expect("status")
    }

    fn data(&self, n: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(DATA + 0x4000 * n))
            .expect("data");
        v
    }

    /// Used entries added since the last call: (id, len).
    fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).expect("used idx");
        let mut out = Vec::new();
        while self.seen_used != u16::from_le(idx) {
            let at = USED + 4 + 8 * u64::from(self.seen_used % QSIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("id");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("len");
            out.push((u32::from_le(id), u32::from_le(len)));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }
}

#[derive(Clone, Copy, Debug)]
enum Req<'d> {
    Write(&'d [u8]),
    Read(u32),
}

/// `addr` as §5.19.6 encodes a 7-bit address.
fn a7(addr: u16) -> u16 {
    addr << 1
}

/// Transactions a test adapter received.
type Seen = Arc<Mutex<Vec<Vec<I2cMsg>>>>;
/// How a test adapter answers.
type Script = Box<dyn FnMut(&mut [I2cMsg]) -> Result<(), TransferError> + Send>;

/// An adapter for tests: records every transaction it gets, answers with
/// `script`, and with a gate waits for the test's go before each one.
struct Scripted {
    seen: Seen,
    script: Script,
    gate: Option<Receiver<()>>,
}

impl I2cAdapter for Scripted {
    fn describe(&self) -> String {
        "scripted test adapter".into()
    }

    fn transfer(&mut self, msgs: &mut [I2cMsg]) -> Result<(), TransferError> {
        if let Some(g) = &self.gate {
            g.recv().expect("the test opens the gate");
        }
        self.seen.lock().expect("seen").push(msgs.to_vec());
        (self.script)(msgs)
    }
}

fn scripted(
    allow: Option<&[u16]>,
    script: impl FnMut(&mut [I2cMsg]) -> Result<(), TransferError> + Send + 'static,
) -> (I2cDevice, Seen) {
    let seen = Seen::default();
    let adapter = Scripted {
        seen: seen.clone(),
        script: Box::new(script),
        gate: None,
    };
    let allow = allow.map(|a| a.iter().copied().collect::<BTreeSet<u16>>());
    let dev = I2cDevice::new("i2c-test", Box::new(adapter), allow).expect("device");
    (dev, seen)
}

/// A device on a simulated bus with an EEPROM at 0x50 and an LM75 at 0x48
/// (23.5 °C).
fn simulated() -> I2cDevice {
    let mut sim = SimAdapter::new();
    sim.add(EEPROM, Box::new(Eeprom24c02::new()))
        .expect("eeprom");
    sim.add(SENSOR, Box::new(Lm75::new(23_500))).expect("lm75");
    let mut dev = I2cDevice::new("i2c-sim", Box::new(sim), None).expect("device");
    assert!(dev.accept_features(dev.features()));
    dev.activate(dev.features()).expect("activate");
    dev
}

/// Process the queue, then let the worker finish everything in flight:
/// wait (bounded) on its eventfd and hand the events to the device.
fn run(dev: &mut I2cDevice, queues: &mut [Option<Queue>; 1], mem: &GuestMemoryMmap) {
    let q = queues[0].as_mut().expect("queue");
    dev.process_queue(0, q, mem).expect("process_queue");
    settle(dev, queues, mem);
}

fn settle(dev: &mut I2cDevice, queues: &mut [Option<Queue>; 1], mem: &GuestMemoryMmap) {
    while dev.in_flight() > 0 {
        wait_readable(dev.event_fds()[0]);
        dev.handle_event(queues, mem).expect("handle_event");
    }
}

fn wait_readable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, borrowed for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, WORKER_TIMEOUT_MS) };
    assert_eq!(n, 1, "the worker signalled within {WORKER_TIMEOUT_MS} ms");
}

fn setup(mem: &GuestMemoryMmap) -> (Ring<'_>, [Option<Queue>; 1]) {
    let ring = Ring::new(mem);
    let q = ring.queue();
    (ring, [Some(q)])
}

// ------------------------------------------------------------ features

#[test]
fn zero_length_request_is_offered_and_required() {
    // §5.19.6.2: the device MUST offer VIRTIO_I2C_F_ZERO_LENGTH_REQUEST and
    // MUST reject a driver that does not negotiate it.
    let (mut dev, _) = scripted(None, |_| Ok(()));
    assert_eq!(dev.device_type(), 34);
    assert_eq!(dev.features(), 1 << VIRTIO_I2C_F_ZERO_LENGTH_REQUEST);
    assert_eq!(dev.queue_max_sizes(), &[QSIZE]);
    assert_eq!(dev.config_size(), 0, "§5.19.4: no config space");
    assert!(!dev.accept_features(1 << 32), "VERSION_1 alone is refused");
    assert!(dev.accept_features((1 << 32) | 1));
}

// ------------------------------------------------------------ transfers

#[test]
fn writes_and_combined_write_then_read_reach_the_eeprom() {
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let mut dev = simulated();
    // A page write, then a random read as one transaction (FAIL_NEXT links
    // the write of the pointer to the read: a repeated START between them).
    let write = ring.request(a7(EEPROM), 0, Req::Write(&[0x10, 1, 2, 3, 4]));
    let pointer = ring.request(a7(EEPROM), FLAG_FAIL_NEXT, Req::Write(&[0x10]));
    let read = ring.request(a7(EEPROM), FLAG_M_RD, Req::Read(6));
    run(&mut dev, &mut qs, &mem);
    assert_eq!(
        ring.used(),
        vec![(0, 1), (3, 1), (6, 7)],
        "used len: the status byte, plus the bytes read"
    );
    assert_eq!(
        [ring.status(write), ring.status(pointer), ring.status(read)],
        [MSG_OK; 3]
    );
    assert_eq!(ring.data(read, 6), vec![1, 2, 3, 4, 0xff, 0xff]);
    let s = dev.stats();
    assert_eq!(
        (s.transactions, s.requests_ok, s.requests_failed),
        (2, 3, 0)
    );
    assert_eq!((s.bytes_written, s.bytes_read), (6, 6));
}

#[test]
fn the_sensor_answers_with_its_configured_reading() {
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let mut dev = simulated();
    let _ = ring.request(a7(SENSOR), FLAG_FAIL_NEXT, Req::Write(&[0]));
    let read = ring.request(a7(SENSOR), FLAG_M_RD, Req::Read(2));
    run(&mut dev, &mut qs, &mem);
    assert_eq!(ring.status(read), MSG_OK);
    assert_eq!(ring.data(read, 2), vec![0x17, 0x80], "23.5 °C");
}

#[test]
fn zero_length_requests_probe_presence() {
    // §5.19.6: a request without buf (SMBus quick); M_RD gives the direction.
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let mut dev = simulated();
    let present_w = ring.request(a7(EEPROM), 0, Req::Write(&[]));
    let present_r = ring.request(a7(SENSOR), FLAG_M_RD, Req::Read(0));
    let absent = ring.request(a7(0x33), FLAG_M_RD, Req::Read(0));
    run(&mut dev, &mut qs, &mem);
    assert_eq!(ring.status(present_w), MSG_OK);
    assert_eq!(ring.status(present_r), MSG_OK);
    assert_eq!(ring.status(absent), MSG_ERR, "absent addresses NACK");
    assert_eq!(
        ring.used().iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
}

#[test]
fn a_failed_request_fails_the_rest_of_its_transaction_unattempted() {
    // §5.19.6: FAIL_NEXT set and the request fails: the next one fails
    // without being attempted; the first failed one is ERR (§5.19.6.2).
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let (mut dev, seen) = scripted(None, |msgs| {
        match msgs.iter().position(|m| m.addr == 0x33) {
            Some(i) => Err(TransferError::at(i, FailKind::Nack)),
            None => {
                for m in msgs.iter_mut().filter(|m| m.read) {
                    m.buf.fill(0x42);
                }
                Ok(())
            }
        }
    });
    let ok = ring.request(a7(0x20), FLAG_FAIL_NEXT, Req::Write(&[1]));
    let nack = ring.request(a7(0x33), FLAG_FAIL_NEXT, Req::Write(&[2]));
    let skipped = ring.request(a7(0x20), FLAG_FAIL_NEXT | FLAG_M_RD, Req::Read(4));
    let skipped_too = ring.request(a7(0x20), 0, Req::Write(&[3]));
    // The next transaction is independent of that failure.
    let next = ring.request(a7(0x20), FLAG_M_RD, Req::Read(2));
    run(&mut dev, &mut qs, &mem);
    // The failed request is returned after the rest of its transaction:
    // Linux's driver frees the transfer once it sees the first failure.
    assert_eq!(
        ring.used(),
        vec![(0, 1), (9, 1), (6, 1), (3, 1), (12, 3)],
        "OK prefix in order, then the rest backwards to the failed one"
    );
    assert_eq!(ring.status(skipped_too), MSG_ERR);
    assert_eq!(
        [
            ring.status(ok),
            ring.status(nack),
            ring.status(skipped),
            ring.status(next)
        ],
        [MSG_OK, MSG_ERR, MSG_ERR, MSG_OK]
    );
    assert_eq!(
        ring.data(skipped, 4),
        vec![0xcc; 4],
        "a failed read's buffer is not written"
    );
    assert_eq!(ring.data(next, 2), vec![0x42; 2]);
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.len(), 2, "two transactions: {seen:?}");
    assert_eq!(
        seen[0].len(),
        4,
        "one combined transfer of the four linked requests"
    );
    assert_eq!(
        format!("{:?}", seen[0]),
        "[W1@0x20, W1@0x33, R4@0x20, W1@0x20]"
    );
    assert_eq!(dev.stats().nacks, 1);
}

#[test]
fn a_simulated_absent_address_nacks_and_the_linked_read_is_not_attempted() {
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let mut dev = simulated();
    let absent = ring.request(a7(0x51), FLAG_FAIL_NEXT, Req::Write(&[0]));
    let read = ring.request(a7(EEPROM), FLAG_M_RD, Req::Read(1));
    run(&mut dev, &mut qs, &mem);
    assert_eq!([ring.status(absent), ring.status(read)], [MSG_ERR, MSG_ERR]);
    assert_eq!(ring.data(read, 1), vec![0xcc]);
}

#[test]
fn addresses_outside_the_allow_list_are_never_sent() {
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let (mut dev, seen) = scripted(Some(&[0x50, 0x1c]), |_| Ok(()));
    let allowed = ring.request(a7(0x50), FLAG_FAIL_NEXT, Req::Write(&[0]));
    let forbidden = ring.request(a7(0x51), FLAG_M_RD, Req::Read(1));
    let alone = ring.request(a7(0x1c), 0, Req::Write(&[7, 8]));
    run(&mut dev, &mut qs, &mem);
    assert_eq!(
        [
            ring.status(allowed),
            ring.status(forbidden),
            ring.status(alone)
        ],
        [MSG_ERR, MSG_ERR, MSG_OK],
        "the transaction with a forbidden address fails whole, as a NACK would"
    );
    let seen = seen.lock().expect("seen");
    assert_eq!(
        format!("{seen:?}"),
        "[[W2@0x1c]]",
        "only the allowed transaction reached the bus"
    );
    assert_eq!(dev.stats().disallowed, 1);
}

#[test]
fn unsupported_transfers_fail_cleanly_and_the_device_goes_on() {
    // What an SMBus-only adapter reports for a transaction it cannot carry.
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let (mut dev, _) = scripted(None, |msgs| {
        if msgs.len() > 1 {
            Err(TransferError::at(
                0,
                FailKind::Unsupported("three messages".into()),
            ))
        } else {
            Ok(())
        }
    });
    let a = ring.request(a7(0x50), FLAG_FAIL_NEXT, Req::Write(&[0]));
    let b = ring.request(a7(0x50), FLAG_FAIL_NEXT | FLAG_M_RD, Req::Read(1));
    let c = ring.request(a7(0x50), FLAG_M_RD, Req::Read(1));
    let after = ring.request(a7(0x50), 0, Req::Write(&[1]));
    run(&mut dev, &mut qs, &mem);
    assert_eq!(
        [
            ring.status(a),
            ring.status(b),
            ring.status(c),
            ring.status(after)
        ],
        [MSG_ERR, MSG_ERR, MSG_ERR, MSG_OK]
    );
    assert_eq!(dev.stats().unsupported, 1);
}

#[test]
fn the_device_leaves_the_drivers_header_and_write_buffer_as_they_were() {
    // §5.19.6.2: MUST NOT change addr, reserved bits of flags, or buf of a
    // write request.
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let mut dev = simulated();
    let n = ring.request(a7(EEPROM), 0, Req::Write(&[0x00, 9, 8, 7]));
    let hdr_before = {
        let mut h = [0u8; 8];
        mem.read_slice(&mut h, GuestAddress(HDR + 0x10 * n))
            .expect("hdr");
        h
    };
    run(&mut dev, &mut qs, &mem);
    let mut h = [0u8; 8];
    mem.read_slice(&mut h, GuestAddress(HDR + 0x10 * n))
        .expect("hdr");
    assert_eq!(h, hdr_before);
    assert_eq!(ring.data(n, 4), vec![0x00, 9, 8, 7]);
    assert_eq!(ring.status(n), MSG_OK);
}

// ------------------------------------------------------------ hostile input

/// `virtio_i2c_out_hdr` bytes.
fn header(raw_addr: u16, flags: u32) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&raw_addr.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h
}

/// Post `bufs` as one request over the header `hdr` (written at `HDR`),
/// then a valid write to the EEPROM in a later pass; returns the first
/// one's status byte (the last byte of its chain) and used len, and the
/// second one's status.
fn hostile_with(hdr: &[u8], bufs: &[Buf]) -> (u8, u32, u8) {
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let mut dev = simulated();
    mem.write_slice(hdr, GuestAddress(HDR)).expect("header");
    for b in bufs.iter().filter(|b| b.write) {
        let _ = mem.write_slice(&vec![0xeeu8; b.len.min(64) as usize], GuestAddress(b.addr));
    }
    let _ = ring.add(bufs);
    run(&mut dev, &mut qs, &mem);
    ring.n = 100;
    let good = ring.request(a7(EEPROM), 0, Req::Write(&[0x00, 1]));
    run(&mut dev, &mut qs, &mem);
    let used = ring.used();
    assert_eq!(used.len(), 2, "every chain is returned: {used:?}");
    let last = bufs.last().expect("a buffer");
    // The last byte of the chain (0xee when it is not in guest memory).
    let st: u8 = mem
        .read_obj(GuestAddress(
            last.addr + u64::from(last.len).saturating_sub(1),
        ))
        .unwrap_or(0xee);
    (st, used[0].1, ring.status(good))
}

#[test]
fn malformed_requests_are_answered_err_and_the_device_keeps_running() {
    let st = STATUS + 50;
    let ok_hdr = header(a7(EEPROM), 0);
    let rd_hdr = header(a7(EEPROM), FLAG_M_RD);
    let cases: Vec<(&str, Vec<u8>, Vec<Buf>)> = vec![
        ("short header", ok_hdr.clone(), vec![r(HDR, 6), w(st, 1)]),
        (
            "reserved flag bits",
            header(a7(EEPROM), 1 << 5),
            vec![r(HDR, 8), w(st, 1)],
        ),
        (
            "ten-bit address",
            header((0x55 << 8) | 0xf0, 0),
            vec![r(HDR, 8), w(st, 1)],
        ),
        (
            "address bit 0 set",
            header(a7(EEPROM) | 1, 0),
            vec![r(HDR, 8), w(st, 1)],
        ),
        (
            "a read into a device-readable buffer",
            rd_hdr.clone(),
            vec![r(HDR, 8), r(DATA, 4), w(st, 1)],
        ),
        (
            "a write with a device-writable buffer",
            ok_hdr.clone(),
            vec![r(HDR, 8), w(DATA, 4), w(st, 1)],
        ),
        (
            "a read longer than 8 KiB",
            rd_hdr.clone(),
            vec![r(HDR, 8), w(DATA, 8193), w(st, 1)],
        ),
        (
            "a write longer than 8 KiB",
            ok_hdr.clone(),
            vec![r(HDR, 8), r(DATA, 8193), w(st, 1)],
        ),
        (
            "a header outside guest memory",
            ok_hdr.clone(),
            vec![r(MEM_SIZE as u64 - 4, 8), w(st, 1)],
        ),
        (
            "a read buffer outside guest memory",
            rd_hdr.clone(),
            vec![r(HDR, 8), w(MEM_SIZE as u64 - 2, 4), w(st, 1)],
        ),
        (
            "a write buffer outside guest memory",
            ok_hdr.clone(),
            vec![r(HDR, 8), r(MEM_SIZE as u64 - 2, 4), w(st, 1)],
        ),
        (
            "too many descriptors",
            ok_hdr.clone(),
            std::iter::once(r(HDR, 8))
                .chain((0..20).map(|i| r(DATA + i, 1)))
                .chain(std::iter::once(w(st, 1)))
                .collect(),
        ),
    ];
    for (what, hdr, bufs) in cases {
        let (status, len, after) = hostile_with(&hdr, &bufs);
        assert_eq!(status, MSG_ERR, "{what}");
        assert_eq!(len, 1, "{what}: used len covers the status byte");
        assert_eq!(after, MSG_OK, "{what}: the next request is served");
    }
}

#[test]
fn a_request_without_a_status_byte_is_returned_with_length_zero() {
    for bufs in [
        // Last descriptor device-readable.
        vec![r(HDR, 8), r(DATA, 1)],
        // Empty status descriptor.
        vec![r(HDR, 8), w(STATUS + 50, 0)],
        // Status outside memory.
        vec![r(HDR, 8), w(MEM_SIZE as u64, 1)],
    ] {
        let (_, len, after) = hostile_with(&header(a7(EEPROM), 0), &bufs);
        assert_eq!(len, 0, "{bufs:?}");
        assert_eq!(after, MSG_OK);
    }
}

#[test]
fn a_malformed_request_fails_its_whole_transaction_unsent() {
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let (mut dev, seen) = scripted(None, |_| Ok(()));
    let first = ring.request(a7(0x20), FLAG_FAIL_NEXT, Req::Write(&[1]));
    let bad = ring.request(a7(0x20), FLAG_FAIL_NEXT | (1 << 9), Req::Write(&[2]));
    let last = ring.request(a7(0x20), 0, Req::Write(&[3]));
    run(&mut dev, &mut qs, &mem);
    assert_eq!(
        [ring.status(first), ring.status(bad), ring.status(last)],
        [MSG_ERR; 3]
    );
    assert!(
        seen.lock().expect("seen").is_empty(),
        "nothing reached the bus"
    );
    assert_eq!(dev.stats().malformed, 1);
}

#[test]
fn a_transaction_beyond_the_message_limit_is_refused_whole() {
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let (mut dev, seen) = scripted(None, |_| Ok(()));
    let n = MAX_TRANSACTION_MSGS + 1;
    let reqs: Vec<u64> = (0..n)
        .map(|i| {
            let flags = if i + 1 < n { FLAG_FAIL_NEXT } else { 0 };
            ring.request(a7(0x20), flags, Req::Write(&[i as u8]))
        })
        .collect();
    let limit: Vec<u64> = (0..MAX_TRANSACTION_MSGS)
        .map(|i| {
            let flags = if i + 1 < MAX_TRANSACTION_MSGS {
                FLAG_FAIL_NEXT
            } else {
                0
            };
            ring.request(a7(0x20), flags, Req::Write(&[i as u8]))
        })
        .collect();
    run(&mut dev, &mut qs, &mem);
    assert!(reqs.iter().all(|&r| ring.status(r) == MSG_ERR));
    assert!(limit.iter().all(|&r| ring.status(r) == MSG_OK));
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].len(),
        MAX_TRANSACTION_MSGS,
        "42 messages are carried"
    );
}

// ------------------------------------------------------------ ordering and bounds

#[test]
fn transactions_complete_in_order_beyond_the_in_flight_bound() {
    // §5.19.6.2: requests are processed in order. More transactions than
    // MAX_IN_FLIGHT: the rest wait on the ring and follow as room frees.
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let (mut dev, seen) = scripted(None, |msgs| {
        if msgs[0].addr == 0x33 {
            return Err(TransferError::at(0, FailKind::Nack));
        }
        if let Some(m) = msgs.iter_mut().find(|m| m.read) {
            let v = m.addr as u8;
            m.buf.fill(v);
        }
        Ok(())
    });
    let mut posted = Vec::new();
    for i in 0..20u16 {
        // Refused (malformed), failing and succeeding ones interleaved.
        let n = match i % 4 {
            0 => ring.request(a7(0x33), 0, Req::Write(&[0])),
            1 => ring.request(a7(0x20), 1 << 7, Req::Write(&[0])),
            _ => ring.request(a7(0x10 + i), FLAG_M_RD, Req::Read(1)),
        };
        posted.push((i, n));
    }
    run(&mut dev, &mut qs, &mem);
    let used = ring.used();
    let heads: Vec<u32> = used.iter().map(|u| u.0).collect();
    // Three descriptors per request: header, buffer, status.
    let want: Vec<u32> = (0..20).map(|i| 3 * i).collect();
    assert_eq!(heads, want, "used in avail order");
    for (i, n) in posted {
        let want = if i % 4 < 2 { MSG_ERR } else { MSG_OK };
        assert_eq!(ring.status(n), want, "request {i}");
        if want == MSG_OK {
            assert_eq!(ring.data(n, 1), vec![(0x10 + i) as u8]);
        }
    }
    assert_eq!(
        seen.lock().expect("seen").len(),
        15,
        "the malformed five never ran"
    );
}

#[test]
fn results_arriving_after_a_reset_are_dropped() {
    // Nothing completes into guest memory after a reset.
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let seen = Seen::default();
    let (go, gate): (Sender<()>, Receiver<()>) = mpsc::channel();
    let adapter = Scripted {
        seen: seen.clone(),
        script: Box::new(|msgs| {
            msgs.iter_mut()
                .filter(|m| m.read)
                .for_each(|m| m.buf.fill(9));
            Ok(())
        }),
        gate: Some(gate),
    };
    let mut dev = I2cDevice::new("i2c-reset", Box::new(adapter), None).expect("device");
    let n = ring.request(a7(0x20), FLAG_M_RD, Req::Read(4));
    let q = qs[0].as_mut().expect("queue");
    dev.process_queue(0, q, &mem).expect("process");
    assert_eq!(dev.in_flight(), 1);
    dev.reset();
    assert_eq!(dev.in_flight(), 0);
    go.send(()).expect("open the gate");
    wait_readable(dev.event_fds()[0]);
    let used = dev.handle_event(&mut qs, &mem).expect("handle_event");
    assert!(used.is_empty());
    assert!(ring.used().is_empty(), "no used entry after the reset");
    assert_eq!(ring.status(n), 0xee, "no status written");
    assert_eq!(ring.data(n, 4), vec![0xcc; 4], "no data written");
    assert_eq!(
        seen.lock().expect("seen").len(),
        1,
        "the bus transfer itself ran"
    );
}

#[test]
fn a_passthrough_device_needs_a_valid_allow_list() {
    let sysfs = tempfile::tempdir().expect("sysfs");
    let open = |allow: Vec<u16>| {
        I2cDevice::open(
            "i2c",
            &I2cBackend::Host {
                adapter: AdapterRef::Number(0),
                allow,
            },
            sysfs.path(),
        )
    };
    assert!(matches!(open(vec![]), Err(I2cError::EmptyAllowList)));
    assert!(matches!(
        open(vec![0x50, 0x78]),
        Err(I2cError::BadAllowed(0x78))
    ));
    // A valid list gets as far as the host adapter, which this machine
    // does not have (no CONFIG_I2C): tests/linux-qemu covers it.
    let err = I2cDevice::open(
        "i2c",
        &I2cBackend::Host {
            adapter: AdapterRef::Name("SMBus stub driver".into()),
            allow: vec![0x50],
        },
        sysfs.path(),
    )
    .expect_err("no such adapter here");
    assert!(err.to_string().contains("SMBus stub driver"), "{err}");
    assert!(matches!(
        I2cDevice::open("i2c", &I2cBackend::Sim { chips: vec![] }, sysfs.path()),
        Err(I2cError::NoChips)
    ));
}

#[test]
fn a_simulated_device_is_built_from_its_configuration() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("eeprom.bin");
    let backend = I2cBackend::Sim {
        chips: vec![
            ChipConfig {
                addr: EEPROM,
                model: ChipModel::Eeprom24c02 {
                    file: Some(file.clone()),
                },
            },
            ChipConfig {
                addr: SENSOR,
                model: ChipModel::Lm75 {
                    temperature_mc: -5_000,
                },
            },
        ],
    };
    let mut dev = I2cDevice::open("sim", &backend, dir.path()).expect("device");
    let mem = memory();
    let (mut ring, mut qs) = setup(&mem);
    let w = ring.request(a7(EEPROM), 0, Req::Write(&[0x80, 0xab]));
    let _ = ring.request(a7(SENSOR), FLAG_FAIL_NEXT, Req::Write(&[0]));
    let t = ring.request(a7(SENSOR), FLAG_M_RD, Req::Read(2));
    run(&mut dev, &mut qs, &mem);
    assert_eq!([ring.status(w), ring.status(t)], [MSG_OK, MSG_OK]);
    assert_eq!(ring.data(t, 2), vec![0xfb, 0x00], "-5 °C");
    assert_eq!(
        std::fs::read(&file).expect("backing file")[0x80],
        0xab,
        "durable once OK"
    );
    let dup = I2cBackend::Sim {
        chips: vec![
            ChipConfig {
                addr: SENSOR,
                model: ChipModel::Lm75 { temperature_mc: 0 },
            },
            ChipConfig {
                addr: SENSOR,
                model: ChipModel::Lm75 { temperature_mc: 0 },
            },
        ],
    };
    assert!(matches!(
        I2cDevice::open("sim", &dup, dir.path()),
        Err(I2cError::Sim(SimError::Duplicate(SENSOR)))
    ));
}

// ------------------------------------------------------------ properties

/// A hostile chain: a header of arbitrary bytes and descriptors with
/// arbitrary lengths and directions, pointing at its header, a data area,
/// its status byte, the end of memory or anywhere.
/// (place, address when anywhere, length, device-writable)
type ArbDesc = (u8, u64, u32, bool);

fn arb_chain() -> impl Strategy<Value = (Vec<u8>, Vec<ArbDesc>)> {
    let desc = (
        0u8..5,
        any::<u64>(),
        prop_oneof![0u32..16, 0u32..10_000],
        any::<bool>(),
    );
    (
        proptest::collection::vec(any::<u8>(), 8),
        proptest::collection::vec(desc, 1..6),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_chains_never_break_the_device(chains in proptest::collection::vec(arb_chain(), 1..8)) {
        let mem = memory();
        let (mut ring, mut qs) = setup(&mem);
        let mut dev = simulated();
        let mut writable = Vec::new();
        for (i, (hdr, descs)) in chains.iter().enumerate() {
            let i = i as u64;
            mem.write_slice(hdr, GuestAddress(HDR + 0x10 * i)).expect("header");
            let bufs: Vec<Buf> = descs
                .iter()
                .map(|&(place, any_addr, len, write)| {
                    let addr = match place {
                        0 => HDR + 0x10 * i,
                        1 => DATA + 0x4000 * i,
                        2 => STATUS + i,
                        3 => MEM_SIZE as u64 - 3,
                        _ => any_addr,
                    };
                    Buf { addr, len, write }
                })
                .collect();
            let head = ring.add(&bufs);
            writable.push((u32::from(head), bufs.iter().filter(|b| b.write).map(|b| u64::from(b.len)).sum::<u64>()));
        }
        run(&mut dev, &mut qs, &mem);
        let used = ring.used();
        prop_assert_eq!(used.len(), chains.len(), "every chain is returned once");
        let mut ids: Vec<u32> = used.iter().map(|u| u.0).collect();
        ids.sort_unstable();
        let mut heads: Vec<u32> = writable.iter().map(|w| w.0).collect();
        heads.sort_unstable();
        prop_assert_eq!(ids, heads, "each chain exactly once");
        for &(id, len) in &used {
            let w = writable.iter().find(|w| w.0 == id).map_or(0, |w| w.1);
            prop_assert!(u64::from(len) <= w, "chain {}: used len {} > writable {}", id, len, w);
        }
        // The device still serves a valid request.
        ring.n = 60;
        let good = ring.request(a7(EEPROM), 0, Req::Write(&[0x00, 1]));
        run(&mut dev, &mut qs, &mem);
        prop_assert_eq!(ring.used().len(), 1);
        prop_assert_eq!(ring.status(good), MSG_OK);
    }
}
