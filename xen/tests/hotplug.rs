//! A device added to and removed from a connected Xen guest: the instance
//! announces it in band (EVENT_DEVICE) and the Xen bus mirrors the device
//! list into the backend's xenstore directory (docs/xen-bus.md §7).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{RNG_DEV, rng_devices};
use vmsg_backend::instance::{GuestInstance, InstanceOptions, StopSignal};
use vmsg_devices::rng::{HostEntropy, RngDevice};
use vmsg_driver::wire::{Event, device_bus_state};
use vmsg_driver::{Driver, Rng};
use vmsg_xen::bus::{BackendConfig, FrontendOptions, XenBackend, XenFrontend};
use vmsg_xen::fake::FakeXen;

const TIMEOUT: Duration = Duration::from_secs(5);

fn wait_device_event(drv: &mut Driver, dev: u16, state: u16) {
    let ev = drv
        .wait_event_where(
            |e| matches!(e, Event::Device { device_number, state: s } if *device_number == dev && *s == state),
            TIMEOUT,
        )
        .unwrap();
    assert!(
        ev.is_some(),
        "EVENT_DEVICE({dev}, {state}) within {TIMEOUT:?}"
    );
}

#[test]
fn hot_added_device_is_announced_usable_and_listed_in_xenstore() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(4, 256).unwrap();
    let mut backend = XenBackend::provision(
        xen.domain(0),
        4,
        BackendConfig {
            devices: vec![RNG_DEV],
            ..Default::default()
        },
    )
    .unwrap();
    let devices_key = format!("{}/devices", backend.backend_path());
    let mut instance =
        GuestInstance::new("dom4", InstanceOptions::default(), rng_devices()).unwrap();
    let control = instance.device_control();
    // Queued before the frontend connects: applied at connection, without
    // an event, and published in `devices` all the same.
    let early = control.add(
        5,
        Box::new(RngDevice::new("rng5", Box::new(HostEntropy), None).unwrap()),
    );
    let stop = StopSignal::new().unwrap();
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || backend.run(&mut instance, &stop2));

    let fe = XenFrontend::connect(&domu, &FrontendOptions::default()).unwrap();
    let mut drv = Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT);
    early.wait(TIMEOUT).unwrap();
    assert_eq!(drv.discover().unwrap(), vec![RNG_DEV, 5]);
    assert_eq!(xen.xenstored().read(&devices_key).unwrap(), b"1 5");

    let rng = RngDevice::new("rng7", Box::new(HostEntropy), None).unwrap();
    control.add(7, Box::new(rng)).wait(TIMEOUT).unwrap();
    wait_device_event(&mut drv, 7, device_bus_state::ADDED);
    assert_eq!(drv.discover().unwrap(), vec![RNG_DEV, 5, 7]);
    assert_eq!(xen.xenstored().read(&devices_key).unwrap(), b"1 5 7");

    // The new device works over the guest's grants at once.
    let mut rng7 = Rng::open(drv, 7).unwrap();
    assert_eq!(rng7.read(4096).unwrap().len(), 4096);
    let mut drv = rng7.close().unwrap();

    control.remove(RNG_DEV).wait(TIMEOUT).unwrap();
    wait_device_event(&mut drv, RNG_DEV, device_bus_state::REMOVED);
    assert_eq!(drv.discover().unwrap(), vec![5, 7]);
    assert_eq!(xen.xenstored().read(&devices_key).unwrap(), b"5 7");

    drop(drv);
    stop.trigger();
    server.join().unwrap().unwrap();
}
