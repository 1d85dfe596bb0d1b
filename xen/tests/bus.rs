//! The Xen bus end to end over the fake Xen: a dom0 backend thread serving
//! a virtio-rng through a `GuestInstance`, a fake domU running the
//! vmsg-driver frontend over `XenFrontend`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Backend, RNG_DEV, rng_devices};
use vmsg_driver::{Driver, DriverBus, Rng};
use vmsg_xen::bus::{BackendConfig, FrontendOptions, MemoryConfig, XenFrontend, XenbusState, keys};
use vmsg_xen::fake::FakeXen;
use vmsg_xen::memory::{GRANT_DMA_BIT, GrantRuns};
use vmsg_xen::xenstore::{Access, XsOps};

const TIMEOUT: Duration = Duration::from_secs(5);

fn grant_cfg() -> BackendConfig {
    BackendConfig {
        devices: vec![RNG_DEV],
        ..Default::default()
    }
}

#[test]
fn discovery_init_and_rng_reads_in_grant_mode() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 256).unwrap();
    let backend = Backend::start(&xen, 1, grant_cfg(), rng_devices());

    let fe = XenFrontend::connect(&domu, &FrontendOptions::default()).unwrap();
    assert!(fe.grant_mode());
    // The driver's memory is the grant pool at grant DMA addresses.
    let mem = fe.memory().clone();
    assert!(
        vm_memory::GuestMemoryBackend::iter(&*mem)
            .all(|r| { vm_memory::GuestMemoryRegion::start_addr(r).0 & GRANT_DMA_BIT != 0 })
    );
    assert_eq!(fe.max_msg_size(), 264);

    let mut drv = Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT);
    drv.ping(7).unwrap();
    assert_eq!(drv.discover().unwrap(), [RNG_DEV]);
    let mut rng = Rng::open(drv, RNG_DEV).unwrap();
    let bytes = rng.read(10000).unwrap();
    assert_eq!(bytes.len(), 10000);
    // The counting entropy source: the bytes really came from the device.
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    drop(rng);

    let stats = backend.stats.get();
    assert_eq!(stats.connects, 1);
    assert_eq!(stats.failed_connects, 0);
    assert_eq!(stats.grants.grants_mapped, 256, "the whole pool, once");
    assert_eq!(stats.grants.map_ops, 1, "one run, one gntdev map");
    assert_eq!(xen.stats().grant_maps, 2, "ring + pool");
    backend.stop();
}

#[test]
fn foreign_mode_maps_guest_ram_by_gfn() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(2, 512).unwrap();
    let cfg = BackendConfig {
        memory: MemoryConfig::Foreign {
            ranges: "0+512".parse::<GrantRuns>().unwrap(),
        },
        devices: vec![RNG_DEV],
        ..Default::default()
    };
    let backend = Backend::start(&xen, 2, cfg, rng_devices());
    let fe = XenFrontend::connect(&domu, &FrontendOptions::default()).unwrap();
    assert!(!fe.grant_mode());
    let mut rng = Rng::open(
        Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT),
        RNG_DEV,
    )
    .unwrap();
    let bytes = rng.read(5000).unwrap();
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == i as u8));
    drop(rng);
    let s = xen.stats();
    assert_eq!(s.foreign_maps, 1);
    assert_eq!(s.frames_mapped, 512);
    backend.stop();
}

#[test]
fn multi_page_ring_and_fragmented_grant_pool() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(3, 16).unwrap();
    // Every 16 grants a hole: the pool is announced as several runs.
    xen.set_gref_gap(16);
    let backend = Backend::start(&xen, 3, grant_cfg(), rng_devices());
    let opts = FrontendOptions {
        ring_page_order: 2,
        grant_pages: 100,
        ..Default::default()
    };
    let fe = XenFrontend::connect(&domu, &opts).unwrap();
    let mut xs = xen.domain(0).xenstore().unwrap();
    let runs = xs
        .read_string("/local/domain/3/device/vmsg/0/grants")
        .unwrap();
    assert_eq!(runs.split(',').count(), 7, "{runs}");
    assert_eq!(
        xs.read_string("/local/domain/3/device/vmsg/0/ring-page-order")
            .unwrap(),
        "2"
    );
    let mut rng = Rng::open(
        Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT),
        RNG_DEV,
    )
    .unwrap();
    assert_eq!(rng.read(20000).unwrap().len(), 20000);
    drop(rng);
    assert_eq!(backend.stats.get().grants.map_ops, 7);
    backend.stop();
}

#[test]
fn conformance_suite_over_the_xen_bus() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(4, 16).unwrap();
    let backend = Backend::start(&xen, 4, grant_cfg(), rng_devices());
    let mut connect = XenFrontend::connector(domu, FrontendOptions::default());
    let report = vmsg_driver::run_suite(&mut connect, RNG_DEV, "");
    print!("{report}");
    assert!(report.success(), "{report}");
    assert!(report.passed() > 40, "{report}");
    let stats = backend.stats.get();
    assert_eq!(stats.failed_connects, 0);
    // A connection per case, except cases of other profiles (skipped
    // before connecting).
    let connects = stats.connects as usize;
    assert!(connects >= report.passed() && connects <= report.results.len());
    assert_eq!(stats.disconnects, stats.connects);
    backend.stop();
}

#[test]
fn xenstore_layout_and_permissions() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(5, 16).unwrap();
    let backend = Backend::start(&xen, 5, grant_cfg(), rng_devices());
    let be = "/local/domain/0/backend/vmsg/5/0";
    let fe = "/local/domain/5/device/vmsg/0";
    let xsd = xen.xenstored();
    let perms = xsd.get_perms(be).unwrap();
    assert_eq!(perms.owner(), 0);
    assert_eq!(perms.access_for(5), Access::Read);
    let perms = xsd.get_perms(fe).unwrap();
    assert_eq!(perms.owner(), 5);
    assert_eq!(perms.access_for(0), Access::Read);
    for (k, v) in [
        (keys::FRONTEND, fe),
        (keys::FRONTEND_ID, "5"),
        (keys::ONLINE, "1"),
        (keys::PROFILE, "v2"),
        (keys::MAX_MSG_SIZE, "264"),
        (keys::MEMORY_MODE, "grant"),
        (keys::MAX_GRANTS, "4096"),
        (keys::DEVICES, "1"),
        (keys::STATE, "2"),
    ] {
        assert_eq!(xsd.read(&format!("{be}/{k}")).unwrap(), v.as_bytes(), "{k}");
    }
    assert_eq!(xsd.read(&format!("{fe}/backend")).unwrap(), be.as_bytes());

    // The domU may write its own directory but not the backend's, nor
    // create nodes beside its device directory.
    let mut xs = domu.xenstore().unwrap();
    xs.write(&format!("{fe}/scratch"), b"x").unwrap();
    assert!(xs.write(&format!("{be}/state"), b"4").is_err());
    assert!(
        xs.write("/local/domain/5/device/vmsg/9/state", b"1")
            .is_err()
    );
    assert_eq!(
        xs.read_string(&format!("{be}/memory-mode")).unwrap(),
        "grant"
    );

    // Connected: both sides say so.
    let f = XenFrontend::connect(&domu, &FrontendOptions::default()).unwrap();
    assert_eq!(xsd.read(&format!("{be}/state")).unwrap(), b"4");
    assert_eq!(xsd.read(&format!("{fe}/state")).unwrap(), b"4");
    let rings = xsd.read(&format!("{fe}/ring-ref")).unwrap();
    assert!(!rings.is_empty());
    drop(f);
    // Closing walks both to Closed.
    assert_eq!(xsd.read(&format!("{fe}/state")).unwrap(), b"6");
    common::wait_until("backend Closed", TIMEOUT, || {
        xsd.read(&format!("{be}/state")).unwrap() == b"6"
    });
    assert_eq!(
        XenbusState::parse(&xsd.read(&format!("{be}/state")).unwrap()),
        XenbusState::Closed
    );
    backend.stop();
}

#[test]
fn event_device_is_carried_in_band_and_mirrored_in_xenstore() {
    use vmsg_backend::bus::Bus;
    use vmsg_xen::bus::{Accept, XenBackend};

    let xen = FakeXen::new();
    let domu = xen.create_domain(6, 16).unwrap();
    let mut backend = XenBackend::provision(xen.domain(0), 6, grant_cfg()).unwrap();
    let (ev_tx, ev_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let guest = std::thread::spawn(move || {
        let fe = XenFrontend::connect(&domu, &FrontendOptions::default()).unwrap();
        let mut drv = Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT);
        ev_tx.send(drv.next_event(TIMEOUT).unwrap()).unwrap();
        // Close only after the backend let go (no 2 s close wait).
        let _ = done_rx.recv_timeout(TIMEOUT);
    });
    let Accept::Connected(mut bus) = backend.accept(None, Some(TIMEOUT)).unwrap() else {
        panic!("no connection");
    };
    let codec = vmsg_proto::Codec::new(vmsg_proto::Profile::V2, bus.max_msg_size()).unwrap();
    let mut out = [0u8; 64];
    let n = vmsg_transport::bus::event_device(&codec, 2, true, &mut out).unwrap();
    bus.send(&out[..n]).unwrap();
    let ev = ev_rx.recv_timeout(TIMEOUT).unwrap();
    assert!(
        matches!(
            ev,
            Some(vmsg_driver::wire::Event::Device {
                device_number: 2,
                state: 1
            })
        ),
        "{ev:?}"
    );
    // The xenstore view follows what the instance says it serves.
    let devices = "/local/domain/0/backend/vmsg/6/0/devices";
    bus.devices_changed(&[1, 2]);
    assert_eq!(xen.xenstored().read(devices).unwrap(), b"1 2");
    bus.devices_changed(&[2]);
    assert_eq!(xen.xenstored().read(devices).unwrap(), b"2");
    drop(bus);
    done_tx.send(()).unwrap();
    guest.join().unwrap();
}
