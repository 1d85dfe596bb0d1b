//! Devices added to and removed from a guest while its driver is connected
//! (§4.3 EVENT_DEVICE), checked from the driver's side: the event arrives,
//! GET_DEVICES agrees with it, an added device works at once, and a removed
//! one is gone.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use vmsg_backend::device::VirtioDevice;
use vmsg_backend::hotplug::{DeviceControl, HotplugError};
use vmsg_backend::instance::{DeviceList, GuestInstance, InstanceOptions, StopSignal};
use vmsg_backend::local::{LocalBusListener, LocalClientOptions, LocalServerOptions};
use vmsg_devices::rng::{HostEntropy, RngDevice, VIRTIO_ID_RNG};
use vmsg_driver::local::LocalDriverBus;
use vmsg_driver::wire::{Event, device_bus_state};
use vmsg_driver::{Driver, Rng};

const WAIT: Duration = Duration::from_secs(10);

fn rng() -> Box<dyn VirtioDevice> {
    Box::new(RngDevice::new("rng", Box::new(HostEntropy), None).expect("rng"))
}

/// One guest served on a temp socket (one connection) until dropped.
struct Served {
    dir: PathBuf,
    stop: StopSignal,
    control: DeviceControl,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    /// `before_serve` runs with the instance's control handle before the
    /// instance accepts its connection.
    fn start(tag: &str, devices: DeviceList, before_serve: impl FnOnce(&DeviceControl)) -> Self {
        let dir = std::env::temp_dir().join(format!("vmsg-hotplug-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let listener = LocalBusListener::bind(&dir.join("s.sock"), LocalServerOptions::default())
            .expect("bind");
        let mut instance =
            GuestInstance::new(tag, InstanceOptions::default(), devices).expect("instance");
        let control = instance.device_control();
        before_serve(&control);
        let stop = StopSignal::new().expect("stop");
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut bus = listener.accept().expect("a driver connects");
            instance.serve(&mut bus, &thread_stop).expect("serve");
        });
        Self {
            dir,
            stop,
            control,
            thread: Some(thread),
        }
    }

    fn driver(&self) -> Driver {
        let bus = LocalDriverBus::connect(&self.dir.join("s.sock"), &LocalClientOptions::default())
            .expect("connect");
        Driver::new(Box::new(bus)).expect("driver")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            t.join().expect("instance thread");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_device_event(drv: &mut Driver, dev: u16, state: u16) -> Event {
    drv.wait_event_where(
        |e| matches!(e, Event::Device { device_number, state: s } if *device_number == dev && *s == state),
        WAIT,
    )
    .expect("bus")
    .unwrap_or_else(|| panic!("no EVENT_DEVICE({dev}, state {state}) within {WAIT:?}"))
}

#[test]
fn added_device_is_announced_listed_and_usable() {
    let served = Served::start("add", vec![(1, rng())], |_| {});
    let mut drv = served.driver();
    assert_eq!(drv.discover().expect("discover"), vec![1]);

    served
        .control
        .add(2, rng())
        .wait(WAIT)
        .expect("add applied");
    wait_device_event(&mut drv, 2, device_bus_state::ADDED);
    assert_eq!(drv.discover().expect("discover"), vec![1, 2]);
    let info = drv
        .get_device_info(2)
        .expect("GET_DEVICE_INFO of the new device");
    assert_eq!(info.device_id, VIRTIO_ID_RNG);

    let mut rng = Rng::open(drv, 2).expect("init the added rng");
    assert_eq!(rng.read(64).expect("read").len(), 64);
    let mut drv = rng.close().expect("close");
    // The device that was there all along is untouched.
    let mut old = Rng::open(drv, 1).expect("init rng 1");
    assert_eq!(old.read(16).expect("read").len(), 16);
    drv = old.close().expect("close");
    assert!(drv.take_events().iter().all(|e| !matches!(
        e,
        Event::Device {
            state: device_bus_state::REMOVED,
            ..
        }
    )));
}

#[test]
fn removed_device_is_announced_and_gone() {
    let served = Served::start("remove", vec![(1, rng()), (5, rng())], |_| {});
    let mut drv = served.driver();
    assert_eq!(drv.discover().expect("discover"), vec![1, 5]);
    // The driver is using it: DRIVER_OK with a live queue.
    let mut rng5 = Rng::open(drv, 5).expect("init rng 5");
    assert_eq!(rng5.read(32).expect("read").len(), 32);

    served.control.remove(5).wait(WAIT).expect("remove applied");
    let drv = rng5.device().driver_mut();
    wait_device_event(drv, 5, device_bus_state::REMOVED);
    assert_eq!(drv.discover().expect("discover"), vec![1]);
    // Gone: the device side no longer answers for it (unknown device
    // numbers are dropped, §6.3), so the request times out.
    drv.set_timeout(Duration::from_millis(300));
    let gone = drv.get_device_info(5);
    assert!(
        matches!(gone, Err(vmsg_driver::DriverError::Timeout { .. })),
        "{gone:?}"
    );
    drv.set_timeout(WAIT);
    let info = drv.get_device_info(1).expect("device 1 still answers");
    assert_eq!(info.device_id, VIRTIO_ID_RNG);
}

#[test]
fn refused_changes_say_why_and_change_nothing() {
    let served = Served::start("refuse", vec![(1, rng())], |_| {});
    let mut drv = served.driver();
    assert!(matches!(
        served.control.add(1, rng()).wait(WAIT),
        Err(HotplugError::InUse(1))
    ));
    assert!(matches!(
        served.control.remove(9).wait(WAIT),
        Err(HotplugError::NoSuchDevice(9))
    ));
    // Nothing was announced, and a PING round trip orders this check after
    // the instance handled both changes.
    drv.ping(7).expect("ping");
    assert!(drv.take_events().is_empty());
    assert_eq!(drv.discover().expect("discover"), vec![1]);
}

#[test]
fn changes_queued_before_the_driver_connects_apply_at_connection() {
    let mut pending = Vec::new();
    let served = Served::start("queued", vec![(1, rng())], |c| {
        pending.push(c.add(3, rng()));
        pending.push(c.remove(1));
    });
    // Nothing applies them until a bus connects.
    assert!(pending.iter().all(|p| p.try_result().is_none()));
    let mut drv = served.driver();
    for p in &pending {
        p.wait(WAIT).expect("applied at connection");
    }
    assert_eq!(drv.discover().expect("discover"), vec![3]);
    // Applied before discovery: no events for them.
    drv.ping(1).expect("ping");
    assert!(drv.take_events().is_empty());
}

#[test]
fn a_dropped_instance_refuses_changes() {
    let instance =
        GuestInstance::new("gone", InstanceOptions::default(), vec![(1, rng())]).expect("instance");
    let control = instance.device_control();
    let queued = control.add(2, rng());
    drop(instance);
    assert!(matches!(queued.wait(WAIT), Err(HotplugError::InstanceGone)));
    assert!(matches!(
        control.remove(1).wait(WAIT),
        Err(HotplugError::InstanceGone)
    ));
}
