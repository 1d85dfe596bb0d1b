//! Fault injection against the dom0 side of the Xen bus. In every test a
//! second guest is served next to the victim: the daemon must survive each
//! fault, keep serving the other guest, serve the victim's next honest
//! connection, and hold nothing of the failed one.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Backend, RNG_DEV, rng_devices};
use vm_memory::MmapRegion;
use vmsg_driver::{Driver, Rng};
use vmsg_proto::{Body, Codec, Message, Profile};
use vmsg_transport::ring::{self, Consumer, Producer, RingParams, SharedRegion};
use vmsg_xen::bus::{
    BackendConfig, FrontendOptions, MemoryConfig, RunEnd, XenBusError, XenFrontend, XenbusState,
};
use vmsg_xen::evtchn::BoundPort;
use vmsg_xen::fake::{FakeDomain, FakeEvtchn, FakeXen};
use vmsg_xen::gntalloc::GrantSharer;
use vmsg_xen::memory::{GrantRuns, share_grant_pool};
use vmsg_xen::xenstore::{XsClient, XsOps};

const TIMEOUT: Duration = Duration::from_secs(5);

fn cfg() -> BackendConfig {
    BackendConfig {
        devices: vec![RNG_DEV],
        ..Default::default()
    }
}

/// A healthy guest next to the victim, and a check that it is served.
struct Bystander {
    dom: FakeDomain,
    _backend: Backend,
}

impl Bystander {
    fn start(xen: &FakeXen, domid: u16) -> Self {
        let dom = xen.create_domain(domid, 16).unwrap();
        let _backend = Backend::start(xen, domid, cfg(), rng_devices());
        Self { dom, _backend }
    }

    fn check(&self) {
        let fe = XenFrontend::connect(&self.dom, &FrontendOptions::default()).unwrap();
        let mut rng = Rng::open(
            Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT),
            RNG_DEV,
        )
        .unwrap();
        assert_eq!(rng.read(3000).unwrap().len(), 3000);
    }
}

/// An honest connection of the victim works (again).
fn honest_rng(dom: &FakeDomain) {
    let fe = XenFrontend::connect(dom, &FrontendOptions::default()).unwrap();
    let mut rng = Rng::open(
        Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT),
        RNG_DEV,
    )
    .unwrap();
    let b = rng.read(5000).unwrap();
    assert!(b.iter().enumerate().all(|(i, &v)| v == i as u8));
}

/// A frontend written by hand: real ring, pool and port, keys it can bend.
struct Hostile {
    producer: Producer,
    consumer: Consumer,
    ring: MmapRegion<()>,
    port: BoundPort<FakeEvtchn>,
    xs: XsClient<UnixStream>,
    fe: String,
    be: String,
    keys: Vec<(String, String)>,
    _pool: vm_memory::GuestMemoryMmap<()>,
    pool_refs: GrantRuns,
}

fn wait_state(
    xs: &mut XsClient<UnixStream>,
    path: &str,
    want: impl Fn(XenbusState) -> bool,
) -> XenbusState {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let s = XenbusState::parse(&xs.try_read(path).unwrap().unwrap_or_default());
        if want(s) {
            return s;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting on {path} (now {s})");
        xs.next_event(Some(left)).unwrap();
    }
}

impl Hostile {
    fn prepare(dom: &FakeDomain) -> Self {
        let mut xs = dom.xenstore().unwrap();
        let d = dom.domid();
        let fe = format!("/local/domain/{d}/device/vmsg/0");
        let be = format!("/local/domain/0/backend/vmsg/{d}/0");
        xs.watch(&format!("{be}/state"), "be").unwrap();
        xs.write(&format!("{fe}/state"), b"1").unwrap();
        wait_state(&mut xs, &format!("{be}/state"), |s| {
            s == XenbusState::InitWait
        });
        let alloc = dom.gntalloc().alloc_grants(0, 1, true).unwrap();
        let ring_map = alloc.map(0, 1).unwrap();
        let ring_ref = alloc.grefs()[0];
        // SAFETY: `ring_map` lives in `Self` after the ring ends.
        let region = unsafe { SharedRegion::from_raw(ring_map.as_ptr(), ring_map.size()) };
        let (producer, consumer) = ring::init(
            &region,
            RingParams {
                slot_size: 264,
                slots: 4,
            },
        )
        .unwrap();
        let port = BoundPort::unbound(Arc::new(dom.evtchn().unwrap()), 0).unwrap();
        let pool = share_grant_pool(&dom.gntalloc(), 0, 8).unwrap();
        let keys = vec![
            ("ring-ref".into(), ring_ref.to_string()),
            ("event-channel".into(), port.port().to_string()),
            ("max-msg-size".into(), "264".into()),
            ("grants".into(), pool.runs.to_string()),
        ];
        Self {
            producer,
            consumer,
            ring: ring_map,
            port,
            xs,
            fe,
            be,
            keys,
            _pool: pool.memory,
            pool_refs: pool.runs,
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        self.keys.retain(|(k, _)| k != key);
        self.keys.push((key.into(), value.into()));
    }

    fn unset(&mut self, key: &str) {
        self.keys.retain(|(k, _)| k != key);
    }

    /// Publish and return the backend's verdict: Connected or Closing.
    fn publish(&mut self) -> XenbusState {
        for (k, v) in &self.keys {
            self.xs
                .write(&format!("{}/{k}", self.fe), v.as_bytes())
                .unwrap();
        }
        self.xs.write(&format!("{}/state", self.fe), b"3").unwrap();
        let be_state = format!("{}/state", self.be);
        wait_state(&mut self.xs, &be_state, |s| {
            matches!(s, XenbusState::Connected | XenbusState::Closing)
        })
    }

    fn backend_error(&mut self) -> String {
        self.xs.read_string(&format!("{}/error", self.be)).unwrap()
    }

    /// Say Closed and wait for the backend to be done with us.
    fn close(mut self) {
        self.xs.write(&format!("{}/state", self.fe), b"6").unwrap();
        let be_state = format!("{}/state", self.be);
        wait_state(&mut self.xs, &be_state, |s| s == XenbusState::Closed);
    }

    fn push_ping(&mut self, data: u32) -> bool {
        let codec = Codec::new(Profile::V2, 264).unwrap();
        let mut out = [0u8; 264];
        let n = codec
            .encode(
                &Message {
                    dev_num: 0,
                    token: 1,
                    body: Body::Ping { data },
                },
                &mut out,
            )
            .unwrap();
        match self.producer.try_push(&out[..n]) {
            Ok(_) => {
                self.port.notify().unwrap();
                true
            }
            Err(_) => false,
        }
    }
}

/// Refusal of a bent connection, then an honest one, with the bystander
/// served throughout.
fn refused(bend: impl FnOnce(&mut Hostile, &FakeXen), expect: &str) {
    let xen = FakeXen::new();
    let by = Bystander::start(&xen, 9);
    let dom = xen.create_domain(1, 16).unwrap();
    let backend = Backend::start(&xen, 1, cfg(), rng_devices());
    let before = xen.stats();

    let mut h = Hostile::prepare(&dom);
    bend(&mut h, &xen);
    assert_eq!(h.publish(), XenbusState::Closing, "refused");
    let err = h.backend_error();
    assert!(
        err.contains(expect),
        "error {err:?} does not mention {expect:?}"
    );
    let s = backend.stats.get();
    assert_eq!((s.connects, s.failed_connects), (0, 1));
    // Nothing of the refused connection is held.
    assert_eq!(
        xen.stats().live_ports,
        before.live_ports + 1,
        "only the hostile's own port"
    );
    h.close();

    by.check();
    honest_rng(&dom);
    assert_eq!(backend.stats.get().connects, 1);
    assert!(backend.is_running());
}

#[test]
fn bad_ring_ref_is_refused() {
    refused(|h, _| h.set("ring-ref", "4000000"), "mmap");
}

#[test]
fn revoked_ring_grant_is_refused() {
    refused(
        |h, xen| {
            let r: u32 = h.keys[0].1.parse().unwrap();
            xen.revoke_grant(1, r).unwrap();
        },
        "mapping the ring",
    );
}

#[test]
fn revoked_pool_grant_is_refused() {
    refused(
        |h, xen| {
            let first = h.pool_refs.runs()[0].first as u32;
            xen.revoke_grant(1, first + 3).unwrap();
        },
        "mapping grants",
    );
}

#[test]
fn grant_map_failure_is_refused() {
    refused(|_, xen| xen.fail_next_grant_maps(1), "mapping the ring");
}

#[test]
fn pool_above_max_grants_is_refused() {
    refused(|h, _| h.set("grants", "100+5000"), "bound is 4096");
}

#[test]
fn malformed_pool_is_refused() {
    refused(|h, _| h.set("grants", "8+0"), "bad run list");
}

#[test]
fn missing_event_channel_is_refused() {
    refused(|h, _| h.unset("event-channel"), "event-channel");
}

#[test]
fn unbindable_event_channel_is_refused() {
    refused(|h, _| h.set("event-channel", "77"), "event channel");
}

#[test]
fn ring_order_above_the_backend_maximum_is_refused() {
    refused(|h, _| h.set("ring-page-order", "9"), "ring-page-order");
}

#[test]
fn garbage_ring_header_is_refused() {
    refused(
        |h, _| {
            // SAFETY: in bounds of the hostile's own live ring mapping.
            unsafe { h.ring.as_ptr().write_volatile(0x42) };
        },
        "magic",
    );
}

#[test]
fn tiny_message_size_is_refused() {
    refused(|h, _| h.set("max-msg-size", "8"), "max-msg-size");
}

#[test]
fn partial_foreign_map_failure_is_refused() {
    let xen = FakeXen::new();
    let by = Bystander::start(&xen, 9);
    let dom = xen.create_domain(2, 64).unwrap();
    let cfg = BackendConfig {
        memory: MemoryConfig::Foreign {
            ranges: "0+64".parse().unwrap(),
        },
        ..cfg()
    };
    let backend = Backend::start(&xen, 2, cfg, rng_devices());
    xen.fail_foreign_frames(2, [40, 41], libc::ENOENT);
    let before = xen.stats().frames_mapped;
    match XenFrontend::connect(&dom, &FrontendOptions::default()) {
        Err(XenBusError::Refused(why)) => assert!(why.contains("2 of 64 frames"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(xen.stats().frames_mapped, before, "nothing mapped");
    assert_eq!(backend.stats.get().failed_connects, 1);
    by.check();
    xen.fail_foreign_frames(2, [40, 41], 0);
    honest_rng(&dom);
}

#[test]
fn peer_closing_its_event_channel() {
    let xen = FakeXen::new();
    let by = Bystander::start(&xen, 9);
    let dom = xen.create_domain(3, 16).unwrap();
    let backend = Backend::start(&xen, 3, cfg(), rng_devices());
    let baseline = xen.stats().live_ports;

    let mut fe = XenFrontend::connect(&dom, &FrontendOptions::default()).unwrap();
    fe.drop_event_channel().unwrap();
    // The frontend can no longer kick; the backend's kicks are dropped.
    let mut drv = Driver::new(Box::new(fe))
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    assert!(drv.ping(1).is_err());
    drop(drv);
    common::wait_until("the backend to tear down", TIMEOUT, || {
        backend.stats.get().disconnects == 1
    });
    assert_eq!(xen.stats().live_ports, baseline, "backend unbound its port");
    by.check();
    honest_rng(&dom);
}

#[test]
fn domain_death_mid_request() {
    let xen = FakeXen::new();
    let by = Bystander::start(&xen, 9);
    let dom = xen.create_domain(4, 16).unwrap();
    let mut backend = Backend::start(&xen, 4, cfg(), rng_devices());
    let ports = xen.stats().live_ports;

    let (tx, rx) = mpsc::channel();
    let d = dom.clone();
    let guest = std::thread::spawn(move || {
        let fe = XenFrontend::connect(&d, &FrontendOptions::default()).unwrap();
        let mut rng = Rng::open(
            Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT),
            RNG_DEV,
        )
        .unwrap();
        let mut reads = 0u64;
        loop {
            if rng.read(4096).is_err() {
                return reads;
            }
            reads += 1;
            if reads == 1 {
                tx.send(()).unwrap();
            }
        }
    });
    rx.recv_timeout(TIMEOUT).unwrap();
    xen.destroy_domain(4);
    assert_eq!(backend.join(), RunEnd::DomainGone);
    assert!(guest.join().unwrap() >= 1);
    // Directories removed, nothing held.
    assert!(
        xen.xenstored()
            .read("/local/domain/0/backend/vmsg/4/0")
            .is_none()
    );
    assert!(
        xen.xenstored()
            .read("/local/domain/4/device/vmsg/0")
            .is_none()
    );
    assert!(xen.stats().live_ports < ports + 1);
    by.check();
}

#[test]
fn corrupt_ring_indices_end_the_connection_only() {
    let xen = FakeXen::new();
    let by = Bystander::start(&xen, 9);
    let dom = xen.create_domain(5, 16).unwrap();
    let backend = Backend::start(&xen, 5, cfg(), rng_devices());
    let mut h = Hostile::prepare(&dom);
    assert_eq!(h.publish(), XenbusState::Connected);
    // Ring A's producer index (at offset 64) jumps far ahead.
    // SAFETY: in bounds of the hostile's own live ring mapping.
    unsafe { h.ring.as_ptr().add(64).cast::<u32>().write_volatile(1000) };
    h.port.notify().unwrap();
    let be_state = format!("{}/state", h.be);
    wait_state(&mut h.xs, &be_state, |s| s == XenbusState::Closing);
    assert!(
        h.backend_error().contains("corrupt"),
        "{}",
        h.backend_error()
    );
    assert_eq!(backend.stats.get().serve_errors, 1);
    h.close();
    by.check();
    honest_rng(&dom);
}

#[test]
fn a_frontend_that_never_reads_loses_its_connection_only() {
    let xen = FakeXen::new();
    let by = Bystander::start(&xen, 9);
    let dom = xen.create_domain(6, 16).unwrap();
    let backend = Backend::start(&xen, 6, cfg(), rng_devices());
    let mut h = Hostile::prepare(&dom);
    assert_eq!(h.publish(), XenbusState::Connected);
    // Pings until the device's replies fill ring B and it gives up.
    let be_state = format!("{}/state", h.be);
    let deadline = Instant::now() + TIMEOUT;
    let mut n = 0u32;
    while backend.stats.get().serve_errors == 0 {
        assert!(Instant::now() < deadline, "the backend kept waiting");
        if h.push_ping(n) {
            n += 1;
        }
        std::thread::yield_now();
    }
    wait_state(&mut h.xs, &be_state, |s| s == XenbusState::Closing);
    assert!(h.backend_error().contains("full"), "{}", h.backend_error());
    assert!(
        n >= 8,
        "4 answered into ring B, 4 waiting in ring A at least"
    );
    let _ = h.consumer.max_frame();
    h.close();
    by.check();
    honest_rng(&dom);
}

#[test]
fn a_crashed_frontend_is_replaced_by_the_next_one() {
    let xen = FakeXen::new();
    let dom = xen.create_domain(7, 16).unwrap();
    let backend = Backend::start(&xen, 7, cfg(), rng_devices());
    let mut h = Hostile::prepare(&dom);
    assert_eq!(h.publish(), XenbusState::Connected);
    // The process "dies": it never says Closing. A new one starts.
    honest_rng(&dom);
    let s = backend.stats.get();
    assert_eq!((s.connects, s.disconnects), (2, 2));
    drop(h);
}

#[test]
fn xenstore_eagain_is_retried_and_bounded() {
    let xen = FakeXen::new();
    let dom = xen.create_domain(8, 16).unwrap();
    // Provisioning and the frontend's publish both commit transactions.
    xen.xenstored().fail_next_commits(5);
    let backend = Backend::start(&xen, 8, cfg(), rng_devices());
    xen.xenstored().fail_next_commits(5);
    honest_rng(&dom);
    drop(backend);

    xen.xenstored().fail_next_commits(100);
    match vmsg_xen::bus::XenBackend::provision(xen.domain(0), 8, cfg()) {
        Err(XenBusError::Xenstore { source, .. }) => {
            assert!(source.to_string().contains("EAGAIN"), "{source}")
        }
        other => panic!("{other:?}"),
    }
    xen.xenstored().fail_next_commits(0);
}

#[test]
fn watch_storm_while_connected() {
    let xen = FakeXen::new();
    let by = Bystander::start(&xen, 9);
    let dom = xen.create_domain(10, 16).unwrap();
    let backend = Backend::start(&xen, 10, cfg(), rng_devices());
    let fe = XenFrontend::connect(&dom, &FrontendOptions::default()).unwrap();
    let mut rng = Rng::open(
        Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT),
        RNG_DEV,
    )
    .unwrap();
    for path in [
        "/local/domain/10/device/vmsg/0/state",
        "/local/domain/0/backend/vmsg/10/0/online",
        "@releaseDomain",
    ] {
        xen.xenstored().watch_storm(path, 2000);
    }
    assert_eq!(rng.read(8000).unwrap().len(), 8000);
    drop(rng);
    let s = backend.stats.get();
    assert_eq!((s.connects, s.disconnects, s.serve_errors), (1, 1, 0));
    by.check();
}

#[test]
fn taking_the_device_offline_stops_its_backend() {
    let xen = FakeXen::new();
    let dom = xen.create_domain(11, 16).unwrap();
    let mut backend = Backend::start(&xen, 11, cfg(), rng_devices());
    let fe = XenFrontend::connect(&dom, &FrontendOptions::default()).unwrap();
    xen.xenstored()
        .write("/local/domain/0/backend/vmsg/11/0/online", b"0")
        .unwrap();
    assert_eq!(backend.join(), RunEnd::Offline);
    let mut drv = Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT);
    assert!(drv.ping(1).is_err(), "the frontend sees the disconnect");
}

#[test]
fn a_pool_claiming_every_grant_is_refused_at_once() {
    refused(|h, _| h.set("grants", "0+4294967296"), "bound is 4096");
}

#[test]
fn grants_beyond_32_bits_are_refused() {
    refused(|h, _| h.set("grants", "4294967295+2"), "bad run list");
}
