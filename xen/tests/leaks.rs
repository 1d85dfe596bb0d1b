//! 100 connect/teardown cycles over the fake Xen bus leave the process's
//! file descriptors, memory mappings and the fake hypervisor's ports,
//! handles and grants exactly as they were. One test in this binary, so
//! nothing else runs in the process while it counts.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Backend, RNG_DEV, rng_devices};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vmsg_driver::{Driver, Rng};

use vmsg_xen::bus::{
    BackendConfig, FrontendOptions, MemoryConfig, SharedXs, XenBusError, XenFrontend,
};
use vmsg_xen::fake::{FakeDomain, FakeXen};

const TIMEOUT: Duration = Duration::from_secs(5);
const CYCLES: usize = 100;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

type Home = SharedXs<UnixStream>;

/// One connection: connect over the shared xenstore client, ping or read
/// from the rng, close. Every `fail_every`-th cycle the backend's first
/// grant map fails first, so the refused path is cycled too.
fn cycle(xen: &FakeXen, dom: &FakeDomain, home: &Home, i: usize, fail_every: usize) {
    let opts = FrontendOptions::default();
    if i % fail_every == fail_every - 1 {
        xen.fail_next_grant_maps(1);
        match XenFrontend::connect_shared(dom, home, &opts) {
            Err(XenBusError::Refused(_)) => {}
            Err(e) => panic!("cycle {i}: {e}"),
            Ok(_) => panic!("cycle {i}: connected despite the injected map failure"),
        }
    }
    let fe = XenFrontend::connect_shared(dom, home, &opts).unwrap();
    let mut drv = Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT);
    if i % 2 == 0 {
        drv.ping(i as u32).unwrap();
        return;
    }
    let mut rng = Rng::open(drv, RNG_DEV).unwrap();
    assert_eq!(rng.read(4096).unwrap().len(), 4096);
}

#[test]
fn hundred_connect_teardown_cycles_leak_nothing() {
    let xen = FakeXen::new();
    let grant_dom = xen.create_domain(1, 16).unwrap();
    let foreign_dom = xen.create_domain(2, 256).unwrap();
    let grant = Backend::start(
        &xen,
        1,
        BackendConfig {
            devices: vec![RNG_DEV],
            ..Default::default()
        },
        rng_devices(),
    );
    let foreign = Backend::start(
        &xen,
        2,
        BackendConfig {
            memory: MemoryConfig::Foreign {
                ranges: "0+256".parse().unwrap(),
            },
            devices: vec![RNG_DEV],
            ..Default::default()
        },
        rng_devices(),
    );
    let home1: Home = Arc::new(Mutex::new(Some(grant_dom.xenstore().unwrap())));
    let home2: Home = Arc::new(Mutex::new(Some(foreign_dom.xenstore().unwrap())));
    // Warm up allocator caches and lazily created thread state.
    for i in 0..4 {
        cycle(&xen, &grant_dom, &home1, i, 2);
        cycle(&xen, &foreign_dom, &home2, i, 2);
    }
    let (fds0, maps0, fake0) = (fds(), maps(), xen.stats());

    for i in 0..CYCLES {
        cycle(&xen, &grant_dom, &home1, i, 10);
        cycle(&xen, &foreign_dom, &home2, i, 10);
    }

    let (fds1, maps1, fake1) = (fds(), maps(), xen.stats());
    assert_eq!(fds1, fds0, "file descriptors after {CYCLES} cycles");
    assert_eq!(maps1, maps0, "memory mappings after {CYCLES} cycles");
    assert_eq!(fake1.live_ports, fake0.live_ports, "event channel ports");
    assert_eq!(
        fake1.live_handles, fake0.live_handles,
        "event channel handles"
    );
    assert_eq!(fake1.live_grants, fake0.live_grants, "grants");
    let g = grant.stats.get();
    let f = foreign.stats.get();
    assert_eq!(g.connects, 4 + CYCLES as u64);
    assert_eq!(g.failed_connects, 2 + (CYCLES / 10) as u64);
    assert_eq!(g.disconnects, g.connects);
    assert_eq!(f.connects, 4 + CYCLES as u64);
    assert_eq!(f.disconnects, f.connects);
    assert_eq!(
        g.grants.unmapped, g.grants.grants_mapped,
        "every grant unmapped"
    );
}
