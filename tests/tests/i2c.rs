//! virtio-i2c through the whole stack (vmsg-driver ↔ local bus ↔ instance ↔
//! device ↔ worker ↔ simulated chips): reads and writes, combined
//! write-then-read transactions, FAIL_NEXT chains, NACKs on absent and on
//! disallowed addresses, EEPROM contents that outlive the daemon, and the
//! conformance suite against a daemon started from a configuration.
//! Spec references are to virtio 1.3 §5.19.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use vmsg_backend::instance::{DeviceList, GuestInstance, InstanceOptions, StopSignal};
use vmsg_backend::local::{LocalBusListener, LocalClientOptions, LocalServerOptions};
use vmsg_devices::i2c::sim::SimAdapter;
use vmsg_devices::i2c::sim::eeprom::Eeprom24c02;
use vmsg_devices::i2c::{ChipConfig, ChipModel, I2cBackend, I2cDevice};
use vmsg_driver::Driver;
use vmsg_driver::conformance::{Outcome, SuiteConfig, run_suite_with};
use vmsg_driver::i2c::{I2c, MSG_ERR, MSG_OK, Segment};
use vmsg_driver::local::{LocalDriverBus, connector};

const EEPROM: u16 = 0x50;
const SENSOR: u16 = 0x48;
/// On the allow-list device: a chip the guest may not reach.
const HIDDEN: u16 = 0x51;

/// One guest served on a temporary socket until dropped: a driver may
/// connect, disconnect and connect again.
struct Served {
    socket: PathBuf,
    stop: StopSignal,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    fn start(dir: &Path, devices: DeviceList) -> Self {
        let socket = dir.join("i2c.sock");
        let listener =
            LocalBusListener::bind(&socket, LocalServerOptions::default()).expect("bind");
        let mut instance =
            GuestInstance::new("i2c", InstanceOptions::default(), devices).expect("instance");
        let stop = StopSignal::new().expect("stop");
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            loop {
                let mut fds = [
                    libc::pollfd {
                        fd: listener.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: thread_stop.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfds, borrowed for the call; the fds
                // belong to objects this thread owns for the whole loop.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if n < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    panic!("poll: {}", std::io::Error::last_os_error());
                }
                if thread_stop.is_triggered() {
                    return;
                }
                let Ok(mut bus) = listener.accept() else {
                    continue;
                };
                if let Ok(vmsg_backend::instance::ServeEnd::Stopped) =
                    instance.serve(&mut bus, &thread_stop)
                {
                    return;
                }
            }
        });
        Self {
            socket,
            stop,
            thread: Some(thread),
        }
    }

    fn open(&self, dev_num: u16) -> I2c {
        let bus = LocalDriverBus::connect_retrying(
            &self.socket,
            &LocalClientOptions::default(),
            Duration::from_secs(10),
        )
        .expect("connect");
        let drv = Driver::new(Box::new(bus)).expect("driver");
        I2c::open(drv, dev_num).expect("i2c init")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            t.join().expect("instance thread");
        }
    }
}

/// dev 0: simulated EEPROM (backed by `eeprom.bin`) and LM75 at 23.5 °C;
/// dev 1: two EEPROMs, of which only 0x50 is on the allow-list (0x51's
/// contents in `hidden.bin`).
fn devices(dir: &Path) -> DeviceList {
    let sim = I2cDevice::open(
        "sim",
        &I2cBackend::Sim {
            chips: vec![
                ChipConfig {
                    addr: EEPROM,
                    model: ChipModel::Eeprom24c02 {
                        file: Some(dir.join("eeprom.bin")),
                    },
                },
                ChipConfig {
                    addr: SENSOR,
                    model: ChipModel::Lm75 {
                        temperature_mc: 23_500,
                    },
                },
            ],
        },
        dir,
    )
    .expect("simulated adapter");
    let mut two = SimAdapter::new();
    two.add(EEPROM, Box::new(Eeprom24c02::new()))
        .expect("eeprom");
    two.add(
        HIDDEN,
        Box::new(Eeprom24c02::with_backing_file(&dir.join("hidden.bin")).expect("hidden")),
    )
    .expect("hidden eeprom");
    let allowed: BTreeSet<u16> = [EEPROM].into_iter().collect();
    let limited = I2cDevice::new("limited", Box::new(two), Some(allowed)).expect("allow-list");
    vec![(0, Box::new(sim)), (1, Box::new(limited))]
}

fn statuses(r: &[vmsg_driver::i2c::Reply]) -> Vec<u8> {
    r.iter().map(|r| r.status).collect()
}

#[test]
fn simulated_chips_read_and_write_over_the_local_bus() {
    let dir = tempfile::tempdir().expect("dir");
    let served = Served::start(dir.path(), devices(dir.path()));
    let mut i2c = served.open(0);
    assert!(
        i2c.negotiated().contains(0),
        "ZERO_LENGTH_REQUEST negotiated"
    );
    // A new EEPROM reads erased.
    assert_eq!(
        i2c.write_read(EEPROM, &[0x00], 16).expect("read"),
        Some(vec![0xff; 16])
    );
    // A page write, then a combined write-then-read (repeated START).
    assert!(
        i2c.write(EEPROM, &[0x20, 1, 2, 3, 4, 5, 6, 7, 8])
            .expect("page write")
    );
    assert_eq!(
        i2c.write_read(EEPROM, &[0x20], 8).expect("read back"),
        Some(vec![1, 2, 3, 4, 5, 6, 7, 8])
    );
    // Past the page's end the address wraps to its start (24C02 page write).
    assert!(
        i2c.write(EEPROM, &[0x2e, 0xa, 0xb, 0xc])
            .expect("wrapping write")
    );
    assert_eq!(
        i2c.write_read(EEPROM, &[0x28], 8).expect("read"),
        Some(vec![0xc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xa, 0xb])
    );
    // Sequential read from where the pointer is: a zero-length write
    // probes, a one-byte write sets the pointer, a read continues there.
    assert!(i2c.write(EEPROM, &[0x23]).expect("set pointer"));
    assert_eq!(i2c.read(EEPROM, 2).expect("current read"), Some(vec![4, 5]));
    // The LM75's temperature register: 23.5 °C, MSB first.
    assert_eq!(
        i2c.write_read(SENSOR, &[0x00], 2).expect("temperature"),
        Some(vec![0x17, 0x80])
    );
    // What an i2cdetect-style scan finds.
    assert_eq!(i2c.scan(0x08..=0x77).expect("scan"), vec![SENSOR, EEPROM]);
    // Durable: the backing file has it now, before any shutdown.
    let file = std::fs::read(dir.path().join("eeprom.bin")).expect("backing file");
    assert_eq!(&file[0x20..0x28], &[1, 2, 3, 4, 5, 6, 7, 8]);
    i2c.close().expect("close");
}

#[test]
fn fail_next_chains_fail_the_rest_and_keep_what_ran() {
    let dir = tempfile::tempdir().expect("dir");
    let served = Served::start(dir.path(), devices(dir.path()));
    let mut i2c = served.open(0);
    // §5.19.6: the first failed request is ERR and the rest of its group
    // is failed without being attempted.
    let r = i2c
        .transfer(&[
            Segment::write(EEPROM, &[0x40, 0x11]),
            Segment::write(0x33, &[0x00]),
            Segment::read(SENSOR, 2),
        ])
        .expect("transfer");
    assert_eq!(statuses(&r), vec![MSG_OK, MSG_ERR, MSG_ERR]);
    assert_eq!(
        r[2].data,
        vec![0xff, 0xff],
        "the failed read's buffer is untouched"
    );
    // The write before the failure went out on the bus (as on real
    // hardware, where the STOP after the NACK starts the write cycle).
    assert_eq!(
        i2c.write_read(EEPROM, &[0x40], 1).expect("read"),
        Some(vec![0x11])
    );
    // A failure at the start: nothing after it in the group is attempted.
    let r = i2c
        .transfer(&[
            Segment::read(0x33, 1),
            Segment::write(EEPROM, &[0x41, 0x22]),
        ])
        .expect("transfer");
    assert_eq!(statuses(&r), vec![MSG_ERR, MSG_ERR]);
    assert_eq!(
        i2c.write_read(EEPROM, &[0x41], 1).expect("read"),
        Some(vec![0xff]),
        "the linked write was not carried out"
    );
    // The LM75 refuses a pointer beyond its registers mid-transaction.
    let r = i2c
        .transfer(&[Segment::write(SENSOR, &[0x07]), Segment::read(SENSOR, 2)])
        .expect("transfer");
    assert_eq!(statuses(&r), vec![MSG_ERR, MSG_ERR]);
}

#[test]
fn absent_addresses_nack() {
    let dir = tempfile::tempdir().expect("dir");
    let served = Served::start(dir.path(), devices(dir.path()));
    let mut i2c = served.open(0);
    for seg in [
        Segment::write(0x33, &[]),
        Segment::read(0x33, 0),
        Segment::write(0x33, &[1, 2]),
        Segment::read(0x33, 4),
    ] {
        let r = i2c.transfer(std::slice::from_ref(&seg)).expect("transfer");
        assert_eq!(r[0].status, MSG_ERR, "{seg:?}");
        assert_eq!(r[0].used_len, 1, "{seg:?}: only the status byte");
    }
    // The device goes on.
    assert_eq!(i2c.read(SENSOR, 2).expect("read"), Some(vec![0x17, 0x80]));
}

#[test]
fn disallowed_addresses_are_answered_as_nack_and_never_reach_the_chip() {
    let dir = tempfile::tempdir().expect("dir");
    let served = Served::start(dir.path(), devices(dir.path()));
    let mut i2c = served.open(1);
    assert!(i2c.write(EEPROM, &[0x00, 0x77]).expect("allowed write"));
    assert!(
        !i2c.write(HIDDEN, &[0x00, 0x66]).expect("write"),
        "not on the list"
    );
    assert_eq!(i2c.read(HIDDEN, 1).expect("read"), None);
    // A transaction touching it fails whole, before anything is sent.
    let r = i2c
        .transfer(&[
            Segment::write(EEPROM, &[0x01, 0x55]),
            Segment::write(HIDDEN, &[0x01, 0x66]),
        ])
        .expect("transfer");
    assert_eq!(statuses(&r), vec![MSG_ERR, MSG_ERR]);
    assert_eq!(
        i2c.write_read(EEPROM, &[0x00], 2).expect("read"),
        Some(vec![0x77, 0xff]),
        "the allowed half was not sent either"
    );
    assert_eq!(
        i2c.scan(0x08..=0x77).expect("scan"),
        vec![EEPROM],
        "hidden from scans"
    );
    i2c.close().expect("close");
    drop(served);
    // The hidden chip never saw a byte: its file is as erased.
    assert_eq!(
        std::fs::read(dir.path().join("hidden.bin")).expect("file"),
        vec![0xff; 256]
    );
}

#[test]
fn eeprom_contents_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let served = Served::start(dir.path(), devices(dir.path()));
        let mut i2c = served.open(0);
        assert!(
            i2c.write(EEPROM, &[0x80, 0xde, 0xad, 0xbe, 0xef])
                .expect("write")
        );
    }
    let served = Served::start(dir.path(), devices(dir.path()));
    let mut i2c = served.open(0);
    assert_eq!(
        i2c.write_read(EEPROM, &[0x80], 4).expect("read"),
        Some(vec![0xde, 0xad, 0xbe, 0xef])
    );
}

#[test]
fn the_conformance_suite_passes_on_a_daemon_with_simulated_chips() {
    // The configuration path end to end: vmsgd's config, device building,
    // daemon threads; then every case on a fresh connection each.
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("conform.sock");
    let text = format!(
        "[[guest]]\nname = \"conform\"\nbus = {{ kind = \"local\", socket = \"{}\" }}\n\n[[guest.device]]\nkind = \"i2c\"\ndev_num = 0\n\n[[guest.device.chip]]\nmodel = \"24c02\"\naddr = 0x50\nfile = \"eeprom.bin\"\n\n[[guest.device.chip]]\nmodel = \"lm75\"\naddr = 0x48\n",
        socket.display()
    );
    let cfg_path = dir.path().join("vmsgd.toml");
    std::fs::write(&cfg_path, &text).expect("config");
    let cfg = vmsgd::config::Config::load(&cfg_path).expect("valid config");
    let daemon =
        vmsgd::daemon::Daemon::start(&cfg, StopSignal::new().expect("stop")).expect("daemon");
    let mut make = connector(&socket, LocalClientOptions::default());
    let report = run_suite_with(&mut make, 0, &SuiteConfig::default());
    daemon.shutdown().expect("shutdown");
    assert!(report.success(), "{report}");
    let i2c: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.name.starts_with("i2c."))
        .collect();
    assert_eq!(i2c.len(), 9, "{report}");
    assert!(
        i2c.iter().all(|r| r.outcome == Outcome::Pass),
        "every i2c case applies and passes:\n{report}"
    );
    // The suite writes only to absent addresses: the EEPROM is as erased.
    assert_eq!(
        std::fs::read(dir.path().join("eeprom.bin")).expect("file"),
        vec![0xff; 256]
    );
}
