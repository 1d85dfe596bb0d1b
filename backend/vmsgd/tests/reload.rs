//! `vmsgd --config` reloads its file on SIGHUP: device changes reach a
//! connected driver as EVENT_DEVICE (§4.3) and take effect at once; a file
//! that does not load changes nothing and is reported with its line.

mod common;

use std::time::Duration;

use common::{DaemonProcess, STARTUP, driver, open_blk};
use vmsg_driver::Driver;
use vmsg_driver::blk::feature;
use vmsg_driver::wire::{Event, device_bus_state};

const MIB: u64 = 1 << 20;

fn config(devices: &str) -> String {
    format!(
        r#"[daemon]
log_level = "info"

[[guest]]
name = "g"
bus = {{ kind = "local", socket = "{{dir}}/g.sock" }}
{devices}"#
    )
}

const RNG1: &str = "\n[[guest.device]]\nkind = \"rng\"\ndev_num = 1\n";
const BLK2: &str = "\n[[guest.device]]\nkind = \"blk\"\ndev_num = 2\npath = \"disk.img\"\n";
const BLK2_RO: &str =
    "\n[[guest.device]]\nkind = \"blk\"\ndev_num = 2\npath = \"disk.img\"\nread_only = true\n";
const RNG3: &str = "\n[[guest.device]]\nkind = \"rng\"\ndev_num = 3\n";

/// Wait for the EVENT_DEVICEs `want`, and check they came in that order.
fn device_events(drv: &mut Driver, want: &[(u16, u16)]) {
    let &(dev, state) = want.last().expect("events to wait for");
    let last = drv
        .wait_event_where(
            |e| {
                matches!(e, Event::Device { device_number, state: s }
                    if *device_number == dev && *s == state)
            },
            STARTUP,
        )
        .expect("bus");
    assert!(
        last.is_some(),
        "EVENT_DEVICE({dev}, {state}) within {STARTUP:?}"
    );
    // What arrived before it, in order.
    let before: Vec<(u16, u16)> = drv
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Device {
                device_number,
                state,
            } => Some((device_number, state)),
            _ => None,
        })
        .collect();
    assert_eq!(before, want[..want.len() - 1], "EVENT_DEVICE order");
}

fn rewrite(daemon: &DaemonProcess, devices: &str) {
    let dir = daemon.dir.path().display().to_string();
    std::fs::write(
        daemon.path("vmsgd.toml"),
        config(devices).replace("{dir}", &dir),
    )
    .expect("rewrite the config");
}

#[test]
fn sighup_adds_replaces_and_removes_devices_of_a_connected_guest() {
    let mut daemon = DaemonProcess::start(&config(&format!("{RNG1}{BLK2}")), &[("disk.img", MIB)]);
    let socket = daemon.path("g.sock");
    let mut drv = driver(&socket);
    assert_eq!(drv.discover().expect("discover"), vec![1, 2]);

    // Device 2 becomes read-only (replaced), device 3 is new.
    rewrite(&daemon, &format!("{RNG1}{BLK2_RO}{RNG3}"));
    daemon.hangup();
    device_events(
        &mut drv,
        &[
            (2, device_bus_state::REMOVED),
            (2, device_bus_state::ADDED),
            (3, device_bus_state::ADDED),
        ],
    );
    assert_eq!(drv.discover().expect("discover"), vec![1, 2, 3]);
    daemon.wait_for_log("device 3 added", STARTUP);

    // Device 1 goes.
    rewrite(&daemon, &format!("{BLK2_RO}{RNG3}"));
    daemon.hangup();
    device_events(&mut drv, &[(1, device_bus_state::REMOVED)]);
    assert_eq!(drv.discover().expect("discover"), vec![2, 3]);
    drop(drv);

    // The replaced disk is the read-only one (a new connection).
    let disk = open_blk(&socket, 2);
    assert!(
        disk.negotiated().contains(feature::RO),
        "device 2 is read-only now"
    );
    drop(disk);

    assert!(daemon.terminate().success());
}

#[test]
fn sighup_with_a_broken_file_keeps_the_running_devices() {
    let mut daemon = DaemonProcess::start(&config(RNG1), &[]);
    let mut drv = driver(&daemon.path("g.sock"));
    assert_eq!(drv.discover().expect("discover"), vec![1]);

    std::fs::write(
        daemon.path("vmsgd.toml"),
        "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = 7 }\n",
    )
    .expect("write a broken config");
    daemon.hangup();
    // The error names the file and the line.
    daemon.wait_for_log("vmsgd.toml:3", STARTUP);
    daemon.wait_for_log("kept the running configuration", STARTUP);

    // An image that does not exist is caught when the file loads.
    rewrite(
        &daemon,
        "\n[[guest.device]]\nkind = \"blk\"\ndev_num = 2\npath = \"missing.img\"\n",
    );
    daemon.hangup();
    daemon.wait_for_log("missing.img does not exist", STARTUP);
    drv.set_timeout(Duration::from_secs(10));
    assert_eq!(drv.discover().expect("discover"), vec![1]);
    drv.ping(1).expect("ping");
    assert!(drv.take_events().is_empty(), "no EVENT_DEVICE was sent");
    drop(drv);
    assert!(daemon.terminate().success());
}
