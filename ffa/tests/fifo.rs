//! The VFFAFIFO (reference §8.5) against the simulated SPMC with
//! notifications: the region's layout checks, frames through ring A and
//! answers through ring B, events by FIFO, a full ring B, broken indices.

use std::rc::Rc;

use vmsg_device_core::host::CoreDevice;
use vmsg_device_core::memory::DmaMemory;
use vmsg_device_core::rng::{EntropyError, EntropySource, RngDevice};
use vmsg_ffa::bus::{DIRECT_PAYLOAD, FfaBus};
use vmsg_ffa::fake::{DriverSide, FakeSpmc, NsMemory};
use vmsg_ffa::msg::FfaProfile;

const DRIVER: u16 = 1;
const SP: u16 = 0x8001;
const NS: u64 = 0x4000_0000;
/// The FIFO region: two pages at NS + 0x10000.
const REGION: u64 = NS + 0x1_0000;
const MSG: u16 = 104;
const DEPTH: u16 = 8;
const RING_B: u64 = 0x800;

struct Ones;

impl EntropySource for Ones {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        buf.fill(1);
        Ok(())
    }
}

struct World {
    bus: FfaBus<FakeSpmc>,
    driver: DriverSide,
    mem: Rc<NsMemory>,
    token: u16,
    /// Driver's producer index of ring A and consumer index of ring B.
    a_write: u16,
    b_read: u16,
}

fn header(m: &NsMemory, base: u64, msg: u16, depth: u16, next: u32) {
    m.write(base, b"VFFAFIFO").expect("magic");
    m.write(base + 0x10, &msg.to_le_bytes()).expect("size");
    m.write(base + 0x12, &depth.to_le_bytes()).expect("depth");
    m.write(base + 0x18, &next.to_le_bytes()).expect("next");
}

impl World {
    fn new() -> Self {
        let mem = NsMemory::new(NS, 1 << 20);
        let (spmc, driver) = FakeSpmc::new(mem.clone(), SP, true);
        let devices: Vec<(u16, Box<dyn CoreDevice>)> = vec![(0, Box::new(RngDevice::new(Ones)))];
        let mut w = Self {
            bus: FfaBus::new(FfaProfile::V2, spmc, devices),
            driver,
            mem,
            token: 1,
            a_write: 0,
            b_read: 0,
        };
        let mut probe = vec![0u8; 8];
        probe.extend_from_slice(&0x10002u32.to_le_bytes());
        w.direct(0x80, &probe);
        let mut echo = Vec::new();
        echo.extend_from_slice(&0x0001_0000u32.to_le_bytes());
        echo.extend_from_slice(&1u32.to_le_bytes());
        echo.extend_from_slice(&0x10002u32.to_le_bytes());
        let r = w.direct(0x80, &echo);
        assert_eq!(
            u32_at(&r, 24) & (1 << 6),
            1 << 6,
            "FIFO offered with notifications"
        );
        w
    }

    fn frame(&mut self, ty: u8, msg_id: u8, payload: &[u8]) -> Vec<u8> {
        self.token += 1;
        let mut f = vec![ty, msg_id, 0, 0];
        f.extend_from_slice(&self.token.to_le_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn direct(&mut self, msg_id: u8, payload: &[u8]) -> Vec<u8> {
        let f = self.frame(0x02, msg_id, payload);
        let mut regs = [0u8; DIRECT_PAYLOAD];
        regs[..f.len()].copy_from_slice(&f);
        let mut out = [0u8; DIRECT_PAYLOAD];
        let n = self.bus.handle_direct(DRIVER, &regs, &mut out);
        out[..n].to_vec()
    }

    fn configure(&mut self, pages: u16) -> (u16, u16) {
        let handle = self
            .driver
            .share(DRIVER, SP, REGION, u32::from(pages), 0, false)
            .expect("share");
        let mut p = Vec::new();
        p.extend_from_slice(&handle.to_le_bytes());
        p.extend_from_slice(&pages.to_le_bytes());
        p.extend_from_slice(&9u16.to_le_bytes());
        let r = self.direct(0x86, &p);
        (u16_at(&r, 8), u16_at(&r, 10))
    }

    /// Enqueue on ring A (driver = producer).
    fn enqueue(&mut self, f: &[u8]) {
        let slot = REGION + 0xC0 + u64::from(self.a_write) * u64::from(MSG);
        self.mem.write(slot, f).expect("slot");
        self.a_write = (self.a_write + 1) % DEPTH;
        self.mem
            .write(REGION + 0x80, &self.a_write.to_le_bytes())
            .expect("write_index");
    }

    /// Dequeue from ring B (driver = consumer).
    fn dequeue(&mut self) -> Option<Vec<u8>> {
        let b = REGION + RING_B;
        let write = self.mem.read_u16(b + 0x80).expect("write_index");
        if write == self.b_read {
            return None;
        }
        let mut f = vec![0u8; usize::from(MSG)];
        self.mem
            .read(b + 0xC0 + u64::from(self.b_read) * u64::from(MSG), &mut f)
            .expect("slot");
        self.b_read = (self.b_read + 1) % DEPTH;
        self.mem
            .write(b + 0x40, &self.b_read.to_le_bytes())
            .expect("read_index");
        let size = usize::from(u16_at(&f, 6));
        f.truncate(size);
        Some(f)
    }
}

fn u16_at(f: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([f[at], f[at + 1]])
}
fn u32_at(f: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

#[test]
fn bad_layouts_are_refused_and_the_region_given_back() {
    let cases: [(&str, u64, &[u8]); 5] = [
        ("bad magic", REGION, b"VFFAFIFX"),
        ("slots below 104 bytes", REGION + 0x10, &[96, 0]),
        ("depth 0", REGION + RING_B + 0x12, &[0, 0]),
        ("ring B inside ring A", REGION + 0x18, &[0, 1, 0, 0]),
        ("ring B beyond the region", REGION + 0x18, &[0, 0x20, 0, 0]),
    ];
    for (what, at, bytes) in cases {
        let mut w = World::new();
        header(&w.mem, REGION, MSG, DEPTH, RING_B as u32);
        header(&w.mem, REGION + RING_B, MSG, DEPTH, 0);
        w.mem.write(at, bytes).expect("corrupt");
        assert_eq!(w.configure(2).0, 1, "{what}");
        assert!(
            w.bus.spmc().outstanding().is_empty(),
            "{what}: relinquished"
        );
    }
}

#[test]
fn frames_go_in_by_ring_a_and_answers_out_by_ring_b() {
    let mut w = World::new();
    header(&w.mem, REGION, MSG, DEPTH, RING_B as u32);
    header(&w.mem, REGION + RING_B, MSG, DEPTH, 0);
    assert_eq!(w.configure(2), (0, 0));
    // A second FIFO_CONFIGURE is refused.
    assert_eq!(w.configure(2).0, 1);
    let ping = w.frame(0x02, 0x03, &0xabcdu32.to_le_bytes());
    let tok = w.token;
    w.enqueue(&ping);
    let gd = w.frame(0x02, 0x02, &[0, 0, 8, 0]);
    w.enqueue(&gd);
    assert_eq!(w.bus.fifo_doorbell(DRIVER), 2);
    let pong = w.dequeue().expect("PING answer");
    assert_eq!((pong[0], pong[1], u16_at(&pong, 4)), (0x03, 0x03, tok));
    assert_eq!(u32_at(&pong, 8), 0xabcd);
    let devs = w.dequeue().expect("GET_DEVICES answer");
    assert_eq!(devs[1], 0x02);
    assert!(w.dequeue().is_none());
    // The driver's doorbell was rung (its id from FIFO_CONFIGURE).
    assert!(w.bus.spmc().rung.contains(&(DRIVER, 9)));
    // EVENT_CONFIGURE FIFO is accepted once the FIFO exists.
    let r = w.direct(0x85, &[3, 0, 0, 0]);
    assert_eq!(u16_at(&r, 8), 0);
}

#[test]
fn a_full_ring_b_holds_answers_until_the_driver_reads() {
    let mut w = World::new();
    header(&w.mem, REGION, MSG, DEPTH, RING_B as u32);
    header(&w.mem, REGION + RING_B, MSG, DEPTH, 0);
    assert_eq!(w.configure(2).0, 0);
    // DEPTH - 1 frames fill ring A; ring B holds DEPTH - 1 answers.
    for round in 0..2 {
        for i in 0..DEPTH - 1 {
            let f = w.frame(0x02, 0x03, &u32::from(i).to_le_bytes());
            w.enqueue(&f);
        }
        w.bus.fifo_doorbell(DRIVER);
        let _ = round;
    }
    let mut got = 0;
    while w.dequeue().is_some() {
        got += 1;
    }
    assert_eq!(got, DEPTH - 1, "ring B full");
    // The rest come at the next doorbell.
    w.bus.fifo_doorbell(DRIVER);
    let mut more = 0;
    while w.dequeue().is_some() {
        more += 1;
    }
    assert_eq!(more, DEPTH - 1);
}

#[test]
fn broken_indices_stop_the_fifo_and_reset_gives_the_region_back() {
    let mut w = World::new();
    header(&w.mem, REGION, MSG, DEPTH, RING_B as u32);
    header(&w.mem, REGION + RING_B, MSG, DEPTH, 0);
    assert_eq!(w.configure(2).0, 0);
    w.mem
        .write(REGION + 0x80, &(DEPTH + 3).to_le_bytes())
        .expect("write_index");
    assert_eq!(w.bus.fifo_doorbell(DRIVER), 0);
    assert_eq!(w.bus.counters().fifo_broken, 1);
    assert!(w.bus.spmc().outstanding().is_empty(), "relinquished");
    // A new one, then RESET gives it back.
    w.mem
        .write(REGION + 0x80, &0u16.to_le_bytes())
        .expect("write_index");
    w.a_write = 0;
    assert_eq!(w.configure(2).0, 0);
    assert_eq!(w.bus.spmc().outstanding().len(), 1);
    let r = w.direct(0x83, &[]);
    assert_eq!(u16_at(&r, 8), 0);
    assert!(w.bus.spmc().outstanding().is_empty());
}

#[test]
fn events_configured_for_the_fifo_arrive_on_ring_b() {
    let mut w = World::new();
    header(&w.mem, REGION, MSG, DEPTH, RING_B as u32);
    header(&w.mem, REGION + RING_B, MSG, DEPTH, 0);
    assert_eq!(w.configure(2).0, 0);
    assert_eq!(u16_at(&w.direct(0x85, &[3, 0, 0, 0]), 8), 0);
    // Device 0 to DRIVER_OK with its queue in an area that does not exist:
    // DEVICE_NEEDS_RESET and an EVENT_CONFIG (transport frames, direct).
    let transport = |w: &mut World, msg_id: u8, payload: &[u8]| {
        let f = w.frame(0x00, msg_id, payload);
        let mut regs = [0u8; DIRECT_PAYLOAD];
        regs[..f.len()].copy_from_slice(&f);
        let mut out = [0u8; DIRECT_PAYLOAD];
        w.bus.handle_direct(DRIVER, &regs, &mut out);
    };
    for s in [1u32, 3] {
        transport(&mut w, 0x08, &s.to_le_bytes());
    }
    let mut feats = vec![0u8; 8];
    feats[4] = 2;
    feats.extend_from_slice(&0u32.to_le_bytes());
    feats.extend_from_slice(&3u32.to_le_bytes());
    transport(&mut w, 0x04, &feats);
    transport(&mut w, 0x08, &0xbu32.to_le_bytes());
    let mut vq = vec![0u8; 40];
    vq[4] = 1;
    vq[8] = 8;
    vq[16..24].copy_from_slice(&(9u64 << 48).to_le_bytes());
    vq[24..32].copy_from_slice(&((9u64 << 48) | 0x100).to_le_bytes());
    vq[32..40].copy_from_slice(&((9u64 << 48) | 0x200).to_le_bytes());
    transport(&mut w, 0x0a, &vq);
    transport(&mut w, 0x08, &0xfu32.to_le_bytes());
    let ev = w.dequeue().expect("the event on ring B");
    assert_eq!(ev[1], 0x40, "EVENT_CONFIG: {ev:02x?}");
    assert_ne!(u32_at(&ev, 8) & 0x40, 0, "DEVICE_NEEDS_RESET in its status");
    assert_eq!(w.bus.pending_events(), 0, "nothing for EVENT_POLL");
}
