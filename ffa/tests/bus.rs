//! The FF-A bus (device role) against the simulated SPMC, driven with
//! frames built here from the reference (virtio-msg-v2.md §8): the FF-A bus
//! messages by hand, the transport requests with vmsg-driver's own wire
//! code. Each test names the rule it checks.

use std::rc::Rc;

use vmsg_device_core::blk::{BlkDevice, MemoryStore};
use vmsg_device_core::host::CoreDevice;
use vmsg_device_core::memory::DmaMemory;
use vmsg_device_core::rng::{EntropyError, EntropySource, RngDevice};
use vmsg_driver::wire::{Request, SetVqueue};
use vmsg_ffa::bus::{DIRECT_PAYLOAD, EVENT_QUEUE_MAX, FfaBus};
use vmsg_ffa::fake::{Call, DriverSide, FakeSpmc, NsMemory};
use vmsg_ffa::msg::FfaProfile;
use vmsg_ffa::spmc::SpmcError;

const DRIVER: u16 = 0x0001;
const SP: u16 = 0x8001;
const NS_BASE: u64 = 0x4000_0000;
/// FF-A bus message ids (reference §8.4).
const VERSION: u8 = 0x80;
const AREA_SHARE: u8 = 0x81;
const AREA_UNSHARE: u8 = 0x82;
const RESET: u8 = 0x83;
const EVENT_POLL: u8 = 0x84;
const EVENT_CONFIGURE: u8 = 0x85;
const ERROR: u8 = 0x87;
/// Linux's default sharing attributes: share, RW, inner WB normal, NS.
const ATTRS: u32 = 0x6F4;

/// A counter, so rng output is checkable.
struct Counting(u8);

impl EntropySource for Counting {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

struct World {
    bus: FfaBus<FakeSpmc>,
    driver: DriverSide,
    mem: Rc<NsMemory>,
    token: u16,
}

impl World {
    fn new() -> Self {
        Self::with_notifications(false)
    }

    fn with_notifications(notifications: bool) -> Self {
        let mem = NsMemory::new(NS_BASE, 1 << 20);
        let (spmc, driver) = FakeSpmc::new(mem.clone(), SP, notifications);
        let disk: &'static mut [u8] = Box::leak(vec![0u8; 1 << 20].into_boxed_slice());
        let devices: Vec<(u16, Box<dyn CoreDevice>)> = vec![
            (0, Box::new(RngDevice::new(Counting(0)))),
            (
                1,
                Box::new(BlkDevice::new(
                    MemoryStore::new(disk),
                    false,
                    64,
                    b"ffa-test",
                )),
            ),
        ];
        Self {
            bus: FfaBus::new(FfaProfile::V2, spmc, devices),
            driver,
            mem,
            token: 1,
        }
    }

    /// Send one frame; the response frame (trimmed to its msg_size).
    fn send(&mut self, frame: &[u8]) -> Vec<u8> {
        self.send_as(DRIVER, frame)
    }

    fn send_as(&mut self, sender: u16, frame: &[u8]) -> Vec<u8> {
        let mut regs = [0u8; DIRECT_PAYLOAD];
        regs[..frame.len()].copy_from_slice(frame);
        let mut out = [0xAAu8; DIRECT_PAYLOAD];
        let n = self.bus.handle_direct(sender, &regs, &mut out);
        assert!(n <= DIRECT_PAYLOAD);
        assert!(
            out[n..].iter().all(|&b| b == 0),
            "bytes beyond the frame are zero"
        );
        out[..n].to_vec()
    }

    /// A v2 bus request frame: type 0x02, dev_num 0, a fresh token.
    fn bus(&mut self, msg_id: u8, payload: &[u8]) -> Vec<u8> {
        self.token += 1;
        let mut f = vec![0x02, msg_id, 0, 0];
        f.extend_from_slice(&self.token.to_le_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_le_bytes());
        f.extend_from_slice(payload);
        self.send(&f)
    }

    fn transport(&mut self, dev: u16, req: &Request) -> Vec<u8> {
        self.token += 1;
        let f = req.encode(dev, self.token).expect("encode");
        self.send(&f)
    }

    fn version(&mut self, bus_version: u32, revision: u32, ffa: u32) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&bus_version.to_le_bytes());
        p.extend_from_slice(&revision.to_le_bytes());
        p.extend_from_slice(&ffa.to_le_bytes());
        self.bus(VERSION, &p)
    }

    fn negotiate(&mut self) {
        let probe = self.version(0, 0, 0x10002);
        assert_eq!(u32_at(&probe, 8), 0x0001_0000);
        let echo = self.version(0x0001_0000, 1, 0x10002);
        assert_eq!(&echo[8..16], &probe[8..16]);
        assert!(self.bus.negotiated());
    }

    /// Share `pages` pages at `pa` and AREA_SHARE them as `area`.
    fn share(&mut self, area: u16, pa: u64, pages: u32) -> u16 {
        let handle = self
            .driver
            .share(DRIVER, SP, pa, pages, 0, false)
            .expect("MEM_SHARE");
        self.area_share(area, handle, 0, pages, ATTRS)
    }

    fn area_share(&mut self, area: u16, handle: u64, tag: u64, pages: u32, attrs: u32) -> u16 {
        let mut p = Vec::new();
        p.extend_from_slice(&area.to_le_bytes());
        p.extend_from_slice(&handle.to_le_bytes());
        p.extend_from_slice(&tag.to_le_bytes());
        p.extend_from_slice(&pages.to_le_bytes());
        p.extend_from_slice(&attrs.to_le_bytes());
        let r = self.bus(AREA_SHARE, &p);
        assert_eq!(r[1], AREA_SHARE);
        assert_eq!(u16_at(&r, 8), area);
        u16_at(&r, 10)
    }
}

fn u16_at(f: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([f[at], f[at + 1]])
}
fn u32_at(f: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

fn is_error_for(f: &[u8], msg_id: u8) -> bool {
    f.len() >= 10 && f[0] == 0x03 && f[1] == ERROR && u16_at(f, 8) == u16::from(msg_id)
}

/// Bus address of `offset` in `area` (§8.6).
fn bus_addr(area: u16, offset: u64) -> u64 {
    (u64::from(area) << 48) | offset
}

#[test]
fn version_is_a_probe_then_an_exact_echo() {
    // §8.4: probe → the device's pair without commit; echo → commit.
    let mut w = World::new();
    let probe = w.version(0, 0, 0x10002);
    assert_eq!(probe[0], 0x03, "bus response");
    assert_eq!(u16_at(&probe, 6), 8 + 22, "22-byte VERSION response");
    assert_eq!(u32_at(&probe, 8), 0x0001_0000, "bus version 1.0");
    assert_eq!(u32_at(&probe, 12), 1, "transport revision 1");
    assert_eq!(u32_at(&probe, 16), 0x10002, "FF-A v1.2");
    assert_eq!(u32_at(&probe, 20), 0, "feature_bits");
    assert_eq!(u32_at(&probe, 24) & 0b11, 0b11, "direct RX and TX");
    assert_eq!(u32_at(&probe, 24) & (1 << 6), 0, "no FIFO offered");
    assert!(!w.bus.negotiated());
    // Until negotiation completes only VERSION and RESET are accepted.
    let early = w.transport(
        0,
        &Request::GetDevices {
            offset: 0,
            count: 8,
        },
    );
    assert!(is_error_for(&early, 0x02), "{early:02x?}");
    let early = w.transport(0, &Request::GetDeviceInfo);
    assert!(is_error_for(&early, 0x02) && u16_at(&early, 2) == 0);
    // A version above ours: our pair, no commit.
    let above = w.version(0x0002_0000, 1, 0x10002);
    assert_eq!(u32_at(&above, 8), 0x0001_0000);
    assert!(!w.bus.negotiated());
    // Below: zeros.
    let below = w.version(0x0000_0001, 1, 0x10002);
    assert_eq!(u32_at(&below, 8), 0);
    assert_eq!(u32_at(&below, 24), 0);
    // A driver below FF-A v1.2 is not supported.
    let old = w.version(0x0001_0000, 1, 0x10001);
    assert_eq!(u32_at(&old, 8), 0);
    assert!(!w.bus.negotiated());
    w.negotiate();
    // Repeating the echo is harmless; anything else now is refused.
    let again = w.version(0x0001_0000, 1, 0x10002);
    assert_eq!(u32_at(&again, 8), 0x0001_0000);
    let later = w.version(0, 0, 0x10002);
    assert_eq!(u32_at(&later, 8), 0);
    assert!(w.bus.negotiated());
    let devs = w.transport(
        0,
        &Request::GetDevices {
            offset: 0,
            count: 8,
        },
    );
    assert_eq!(devs[0], 0x03);
    assert_eq!(devs[1], 0x02);
}

#[test]
fn version_request_sizes_are_checked_exactly() {
    // §8.4: "Implementations check the request size exactly".
    let mut w = World::new();
    let r = w.bus(VERSION, &[0; 18]);
    assert!(is_error_for(&r, VERSION), "{r:02x?}");
    let r = w.bus(VERSION, &[0; 11]);
    assert!(is_error_for(&r, VERSION));
    assert_eq!(w.bus.counters().refused, 2);
}

#[test]
fn areas_are_retrieved_mapped_and_given_back() {
    let mut w = World::new();
    w.negotiate();
    assert_eq!(w.share(1, NS_BASE, 4), 0);
    assert_eq!(w.bus.spmc().retrieved, 1);
    assert_eq!(w.bus.areas(), vec![1]);
    // The same id again, an id at the limit, zero or too many pages, the
    // same handle under another id, an unknown handle, a wrong tag,
    // a non-writable or donate transaction: refused.
    assert_eq!(w.share(1, NS_BASE + 0x10000, 1), 1);
    assert_eq!(w.share(255, NS_BASE + 0x10000, 1), 1);
    let h = w
        .driver
        .share(DRIVER, SP, NS_BASE + 0x20000, 2, 7, false)
        .expect("share");
    assert_eq!(w.area_share(2, h, 7, 0, ATTRS), 1);
    assert_eq!(w.area_share(2, h, 7, (1 << 18) + 1, ATTRS), 1);
    assert_eq!(w.area_share(2, 0xdead, 7, 2, ATTRS), 1);
    assert_eq!(w.area_share(2, h, 8, 2, ATTRS), 1, "wrong tag");
    assert_eq!(w.area_share(2, h, 7, 2, ATTRS & !(1 << 2)), 1, "read-only");
    assert_eq!(w.area_share(2, h, 7, 2, (ATTRS & !0b11) | 2), 1, "donate");
    assert_eq!(
        w.area_share(2, h, 7, 3, ATTRS),
        1,
        "page count differs from the share"
    );
    assert_eq!(w.area_share(2, h, 7, 2, ATTRS), 0);
    assert_eq!(w.area_share(3, h, 7, 2, ATTRS), 1, "handle already an area");
    // The driver cannot reclaim what the partition holds.
    assert_eq!(w.driver.reclaim(h), Err(SpmcError::Denied));
    // UNSHARE relinquishes; then the driver reclaims.
    let r = w.bus(AREA_UNSHARE, &2u16.to_le_bytes());
    assert_eq!((u16_at(&r, 8), u16_at(&r, 10)), (2, 0));
    assert_eq!(w.driver.reclaim(h), Ok(()));
    let r = w.bus(AREA_UNSHARE, &9u16.to_le_bytes());
    assert_eq!(u16_at(&r, 10), 1, "unknown area");
    assert_eq!(w.bus.spmc().outstanding().len(), 1);
}

#[test]
fn an_spmc_failure_refuses_the_area_and_is_counted() {
    let mut w = World::new();
    w.negotiate();
    w.bus.spmc().fail_next(Call::Retrieve, SpmcError::Busy);
    assert_eq!(w.share(1, NS_BASE, 1), 1);
    assert_eq!(w.bus.counters().spmc_errors, 1);
    assert_eq!(w.share(1, NS_BASE, 1), 0, "the next try works");
}

/// Ring layout inside area 1, which covers NS_BASE..+64 KiB.
const RING: u64 = 0x1000;
const BUF: u64 = 0x8000;
const QSIZE: u32 = 8;

/// Bring device `dev` to DRIVER_OK with queue 0 in area 1 (§3.3 order).
fn bring_up(w: &mut World, dev: u16, features_hi: u32) {
    for s in [0u32, 1, 3] {
        w.transport(dev, &Request::SetDeviceStatus { status: s });
    }
    w.transport(
        dev,
        &Request::SetDriverFeatures {
            block_index: 0,
            features: vec![0, features_hi],
        },
    );
    let fok = w.transport(dev, &Request::SetDeviceStatus { status: 0xb });
    assert_eq!(u32_at(&fok, 8) & 0x8, 0x8, "FEATURES_OK accepted");
    let r = w.transport(
        dev,
        &Request::SetVqueue(SetVqueue {
            index: 0,
            flags: 1,
            size: QSIZE,
            desc_addr: bus_addr(1, RING),
            driver_addr: bus_addr(1, RING + 0x100),
            device_addr: bus_addr(1, RING + 0x200),
            ..SetVqueue::default()
        }),
    );
    assert_eq!(r[0], 0x01, "SET_VQUEUE answered");
    let ok = w.transport(dev, &Request::SetDeviceStatus { status: 0xf });
    assert_eq!(u32_at(&ok, 8), 0xf);
}

/// Put one chain of (bus offset in area 1, len, write) descriptors at head
/// 0 and make it available.
fn post(w: &World, chain: &[(u64, u32, bool)], avail_idx: u16) {
    let pa = |off: u64| NS_BASE + off;
    for (i, &(off, len, write)) in chain.iter().enumerate() {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&bus_addr(1, off).to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        let mut flags = if write { 2u16 } else { 0 };
        if i + 1 < chain.len() {
            flags |= 1;
        }
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        w.mem.write(pa(RING + 16 * i as u64), &d).expect("desc");
    }
    let slot = u64::from(avail_idx.wrapping_sub(1) % QSIZE as u16);
    w.mem
        .write_u16(pa(RING + 0x100 + 4 + 2 * slot), 0)
        .expect("ring");
    w.mem.write_u16(pa(RING + 0x102), avail_idx).expect("idx");
}

fn event_avail(w: &mut World, dev: u16) -> Vec<u8> {
    // EVENT_AVAIL (0x41), queue 0, no notification data.
    w.token += 1;
    let mut f = vec![0x00, 0x41];
    f.extend_from_slice(&dev.to_le_bytes());
    f.extend_from_slice(&w.token.to_le_bytes());
    f.extend_from_slice(&16u16.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    let ack = w.send(&f);
    // §8.3: an event over direct gets a header-only bus response with its token.
    assert_eq!(ack.len(), 8);
    assert_eq!((ack[0], ack[1], u16_at(&ack, 2)), (0x03, 0, 0));
    assert_eq!(u16_at(&ack, 4), w.token);
    ack
}

#[test]
fn rng_serves_a_buffer_in_an_area_and_event_poll_hands_over_event_used() {
    let mut w = World::new();
    w.negotiate();
    assert_eq!(w.share(1, NS_BASE, 16), 0);
    // EVENT_CONFIGURE: poll (method 0); a second one is refused.
    let r = w.bus(EVENT_CONFIGURE, &[0, 0, 0, 0]);
    assert_eq!(u16_at(&r, 8), 0);
    let r = w.bus(EVENT_CONFIGURE, &[0, 0, 0, 0]);
    assert_eq!(u16_at(&r, 8), 1);
    // Nothing pending: a header-only EVENT_POLL response.
    let none = w.bus(EVENT_POLL, &[]);
    assert_eq!((none[0], none[1], none.len()), (0x03, EVENT_POLL, 8));
    bring_up(&mut w, 0, 0b11);
    post(&w, &[(BUF, 64, true)], 1);
    event_avail(&mut w, 0);
    let mut data = [0u8; 64];
    w.mem.read(NS_BASE + BUF, &mut data).expect("read");
    assert_eq!(data[0], 1);
    assert_eq!(data[63], 64);
    assert_eq!(w.mem.read_u16(NS_BASE + RING + 0x202).expect("used idx"), 1);
    assert_eq!(
        w.mem.read_u32(NS_BASE + RING + 0x208).expect("used len"),
        64
    );
    // The EVENT_USED waits for the driver's poll, then comes in its place.
    let ev = w.bus(EVENT_POLL, &[]);
    assert_eq!((ev[0], ev[1], u16_at(&ev, 2)), (0x00, 0x42, 0), "{ev:02x?}");
    assert_eq!(u32_at(&ev, 8), 0, "queue 0");
    let none = w.bus(EVENT_POLL, &[]);
    assert_eq!(none.len(), 8);
}

#[test]
fn an_area_with_live_rings_is_busy_until_the_device_resets() {
    // §8.6: AREA_UNSHARE answers 2 while the area is in use.
    let mut w = World::new();
    w.negotiate();
    assert_eq!(w.share(1, NS_BASE, 16), 0);
    bring_up(&mut w, 0, 0b11);
    let r = w.bus(AREA_UNSHARE, &1u16.to_le_bytes());
    assert_eq!(u16_at(&r, 10), 2, "busy");
    w.transport(0, &Request::SetDeviceStatus { status: 0 });
    let r = w.bus(AREA_UNSHARE, &1u16.to_le_bytes());
    assert_eq!(u16_at(&r, 10), 0);
}

#[test]
fn blk_reads_and_writes_through_an_area() {
    let mut w = World::new();
    w.negotiate();
    assert_eq!(w.share(1, NS_BASE, 16), 0);
    bring_up(&mut w, 1, 0b11);
    // OUT at sector 8: header, 512 bytes, status.
    let mut hdr = [0u8; 16];
    hdr[0] = 1;
    hdr[8] = 8;
    w.mem.write(NS_BASE + BUF, &hdr).expect("hdr");
    let data: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
    w.mem.write(NS_BASE + BUF + 0x100, &data).expect("data");
    post(
        &w,
        &[
            (BUF, 16, false),
            (BUF + 0x100, 512, false),
            (BUF + 0x400, 1, true),
        ],
        1,
    );
    event_avail(&mut w, 1);
    let mut status = [9u8];
    w.mem
        .read(NS_BASE + BUF + 0x400, &mut status)
        .expect("status");
    assert_eq!(status[0], 0, "VIRTIO_BLK_S_OK");
    // IN at sector 8 into another buffer.
    hdr[0] = 0;
    w.mem.write(NS_BASE + BUF, &hdr).expect("hdr");
    post(
        &w,
        &[
            (BUF, 16, false),
            (BUF + 0x800, 512, true),
            (BUF + 0x400, 1, true),
        ],
        2,
    );
    event_avail(&mut w, 1);
    let mut back = vec![0u8; 512];
    w.mem.read(NS_BASE + BUF + 0x800, &mut back).expect("back");
    assert_eq!(back, data);
    assert_eq!(
        w.mem.read_u32(NS_BASE + RING + 0x210).expect("used len"),
        513
    );
}

#[test]
fn addresses_outside_every_area_fail_the_device_not_the_partition() {
    let mut w = World::new();
    w.negotiate();
    assert_eq!(w.share(1, NS_BASE, 16), 0);
    for s in [0u32, 1, 3] {
        w.transport(0, &Request::SetDeviceStatus { status: s });
    }
    w.transport(
        0,
        &Request::SetDriverFeatures {
            block_index: 0,
            features: vec![0, 0b11],
        },
    );
    w.transport(0, &Request::SetDeviceStatus { status: 0xb });
    // Rings in area 9, which does not exist.
    w.transport(
        0,
        &Request::SetVqueue(SetVqueue {
            index: 0,
            flags: 1,
            size: QSIZE,
            desc_addr: bus_addr(9, 0),
            driver_addr: bus_addr(9, 0x100),
            device_addr: bus_addr(9, 0x200),
            ..SetVqueue::default()
        }),
    );
    let r = w.transport(0, &Request::SetDeviceStatus { status: 0xf });
    assert_eq!(u32_at(&r, 8), 0xf);
    // DEVICE_NEEDS_RESET, announced with EVENT_CONFIG at the next poll.
    let st = w.transport(0, &Request::GetDeviceStatus);
    assert_ne!(u32_at(&st, 8) & 0x40, 0, "DEVICE_NEEDS_RESET");
    let ev = w.bus(EVENT_POLL, &[]);
    assert_eq!(ev[1], 0x40, "EVENT_CONFIG");
    // A buffer outside the area: the request is returned with nothing.
    let mut w = World::new();
    w.negotiate();
    assert_eq!(w.share(1, NS_BASE, 16), 0);
    bring_up(&mut w, 0, 0b11);
    post(&w, &[(0x1_0000 - 8, 64, true)], 1);
    event_avail(&mut w, 0);
    assert_eq!(w.mem.read_u32(NS_BASE + RING + 0x208).expect("used len"), 0);
}

#[test]
fn reset_gives_back_every_area_and_forgets_the_negotiation() {
    let mut w = World::new();
    w.negotiate();
    assert_eq!(w.share(1, NS_BASE, 4), 0);
    assert_eq!(w.share(2, NS_BASE + 0x10000, 4), 0);
    bring_up(&mut w, 0, 0b11);
    let r = w.bus(RESET, &[]);
    assert_eq!(u16_at(&r, 8), 0);
    assert!(w.bus.spmc().outstanding().is_empty());
    assert!(w.bus.areas().is_empty());
    assert!(!w.bus.negotiated());
    assert_eq!(w.bus.devices()[0].status(), 0);
    let r = w.transport(
        0,
        &Request::GetDevices {
            offset: 0,
            count: 8,
        },
    );
    assert!(is_error_for(&r, 0x02));
    w.negotiate();
}

#[test]
fn event_polls_and_event_floods_stay_bounded() {
    let mut w = World::new();
    w.negotiate();
    assert_eq!(w.share(1, NS_BASE, 16), 0);
    bring_up(&mut w, 0, 0b11);
    // Many completions, never polled: the queue holds at most its bound.
    for i in 1..=200u16 {
        post(&w, &[(BUF, 8, true)], i);
        event_avail(&mut w, 0);
    }
    assert_eq!(w.bus.pending_events(), EVENT_QUEUE_MAX);
    assert!(w.bus.counters().events_dropped > 0);
    for _ in 0..1000 {
        let r = w.bus(EVENT_POLL, &[]);
        assert!(r.len() <= 96);
    }
    assert_eq!(w.bus.pending_events(), 0);
}

#[test]
fn hostile_frames_are_answered_with_error_and_counted() {
    let mut w = World::new();
    w.negotiate();
    // Too short for a header; a msg_size beyond the frame; a response.
    assert!(w.send(&[0x02, 0x80, 0]).is_empty() || w.bus.counters().malformed == 1);
    let bad = [0x00, 0x02, 0, 0, 9, 0, 200, 0];
    let r = w.send(&bad);
    assert!(is_error_for(&r, 0x02), "{r:02x?}");
    let resp = [0x01, 0x02, 0, 0, 9, 0, 8, 0];
    let r = w.send(&resp);
    assert_eq!(r.first(), Some(&0x03));
    // A device number that does not exist.
    let r = w.transport(7, &Request::GetDeviceInfo);
    assert!(is_error_for(&r, 0x02));
    assert_eq!(w.bus.counters().unknown_device, 1);
    // Another endpoint than the negotiated driver.
    let f = Request::GetDeviceInfo.encode(0, 5).expect("encode");
    let r = w.send_as(0x0002, &f);
    assert_eq!(r[1], ERROR);
    assert_eq!(w.bus.counters().foreign, 1);
    // FIFO is not offered: refused.
    let r = w.bus(0x86, &[0; 12]);
    assert_eq!(u16_at(&r, 8), 1);
    // Unknown FF-A bus message.
    let r = w.bus(0xBE, &[]);
    assert!(is_error_for(&r, 0xBE));
}

#[test]
fn notification_events_need_an_spmc_that_has_them() {
    // §8.7 method 1 rings the driver's notification; TF-A's EL3 SPMC has
    // none, so it is refused there and accepted where they exist.
    let mut w = World::new();
    w.negotiate();
    let r = w.bus(EVENT_CONFIGURE, &[1, 0, 5, 0]);
    assert_eq!(u16_at(&r, 8), 1);
    let mut w = World::with_notifications(true);
    w.negotiate();
    let r = w.bus(EVENT_CONFIGURE, &[1, 0, 5, 0]);
    assert_eq!(u16_at(&r, 8), 0);
    assert_eq!(w.share(1, NS_BASE, 16), 0);
    bring_up(&mut w, 0, 0b11);
    post(&w, &[(BUF, 8, true)], 1);
    event_avail(&mut w, 0);
    assert_eq!(w.bus.spmc().rung, vec![(DRIVER, 5)]);
}

#[test]
fn the_rfc_bus_answers_its_version_and_a_16_bit_device_bitmap() {
    // interop §3.4: VERSION {1, 1, 0, features, area_num}, 44-byte frames.
    let mem = NsMemory::new(NS_BASE, 1 << 16);
    let (spmc, _driver) = FakeSpmc::new(mem, SP, false);
    let devices: Vec<(u16, Box<dyn CoreDevice>)> = vec![(0, Box::new(RngDevice::new(Counting(0))))];
    let mut bus = FfaBus::new(FfaProfile::Rfc, spmc, devices);
    let mut req = [0u8; DIRECT_PAYLOAD];
    req[..6].copy_from_slice(&[0x02, 0x80, 0, 0, 24, 0]);
    req[6..24].copy_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xf, 0, 0, 0, 0xff, 0]);
    let mut out = [0u8; DIRECT_PAYLOAD];
    bus.handle_direct(0, &req, &mut out);
    assert_eq!(&out[..6], &[0x03, 0x80, 0, 0, 24, 0]);
    assert_eq!(u32_at(&out, 6), 1);
    assert_eq!(u32_at(&out, 10), 1);
    assert_eq!(u32_at(&out, 14), 0);
    assert_ne!(u32_at(&out, 18) & 1, 0, "direct RX");
    // GET_DEVICES {offset 0, num 0xff}: num ≠ 0, next_offset 0, bit 0 set.
    let mut req = [0u8; DIRECT_PAYLOAD];
    req[..10].copy_from_slice(&[0x02, 0x02, 0, 0, 10, 0, 0, 0, 0xff, 0]);
    bus.handle_direct(0, &req, &mut out);
    assert_eq!(&out[..2], &[0x03, 0x02]);
    assert_ne!(u16_at(&out, 8), 0, "num");
    assert_eq!(u16_at(&out, 10), 0, "next_offset");
    assert_eq!(out[12] & 1, 1);
}

#[test]
fn a_detecting_bus_takes_the_generation_of_the_first_version() {
    let build = || {
        let mem = NsMemory::new(NS_BASE, 1 << 16);
        let (spmc, _driver) = FakeSpmc::new(mem, SP, false);
        let devices: Vec<(u16, Box<dyn CoreDevice>)> =
            vec![(0, Box::new(RngDevice::new(Counting(0))))];
        FfaBus::new(FfaProfile::V2, spmc, devices).detecting()
    };
    // An RFC VERSION: RFC2 header, msg_size 24 at bytes 4..6.
    let mut bus = build();
    let mut req = [0u8; DIRECT_PAYLOAD];
    req[..6].copy_from_slice(&[0x02, 0x80, 0, 0, 24, 0]);
    req[6..24].copy_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xf, 0, 0, 0, 0xff, 0]);
    let mut out = [0u8; DIRECT_PAYLOAD];
    bus.handle_direct(0, &req, &mut out);
    assert_eq!(bus.profile(), FfaProfile::Rfc);
    assert_eq!(&out[..6], &[0x03, 0x80, 0, 0, 24, 0]);
    // A v2 probe: token at 4..6, msg_size 20 at 6..8.
    let mut bus = build();
    let mut req = [0u8; DIRECT_PAYLOAD];
    req[..8].copy_from_slice(&[0x02, 0x80, 0, 0, 24, 0, 20, 0]);
    req[16..20].copy_from_slice(&0x10002u32.to_le_bytes());
    bus.handle_direct(0, &req, &mut out);
    assert_eq!(bus.profile(), FfaProfile::V2);
    assert_eq!(u32_at(&out, 8), 0x0001_0000);
}

mod hostile {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any register contents from any sender, in any order, after any
        /// negotiation state: one bounded answer, zero beyond it, and the
        /// bus still negotiates afterwards.
        #[test]
        fn any_frames_get_one_bounded_answer(
            frames in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..DIRECT_PAYLOAD)),
                1..24,
            ),
            negotiate_first in any::<bool>(),
        ) {
            let mut w = World::new();
            if negotiate_first {
                w.negotiate();
                assert_eq!(w.share(1, NS_BASE, 16), 0);
            }
            for (foreign, bytes) in frames {
                let sender = if foreign { 0x0002 } else { DRIVER };
                let r = w.send_as(sender, &bytes);
                prop_assert!(r.len() <= 96);
            }
            // RESET always works, and negotiation after it.
            let r = w.bus(RESET, &[]);
            prop_assert_eq!(r[1], RESET);
            w.negotiate();
        }
    }
}
