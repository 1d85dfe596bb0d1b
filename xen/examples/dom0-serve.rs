//! The smallest dom0 backend on real Xen: provision device 0 of one domain
//! and serve a virtio-rng (device 1) and optionally a virtio-blk (device 2)
//! on it until the domain dies. A bring-up and debugging aid for
//! `tests/xen-qemu/` (`VMSGD_XEN_SERVER=example`); what a user runs is
//! `vmsgd watch` / `vmsgd run --domain` with a domain config file.
//!
//! ```sh
//! dom0-serve DOMID [IMAGE]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use vmsg_backend::device::VirtioDevice;
use vmsg_backend::instance::{DeviceList, GuestInstance, InstanceOptions, StopSignal};
use vmsg_devices::blk::{BlkConfig, BlkDevice, engine::Engine};
use vmsg_devices::rng::{HostEntropy, RngDevice};
use vmsg_xen::bus::{BackendConfig, XenBackend, XenHost};

fn run(domid: u16, image: Option<PathBuf>) -> Result<String, String> {
    let mut devices: DeviceList = Vec::new();
    let rng = RngDevice::new("rng", Box::new(HostEntropy), None).map_err(|e| e.to_string())?;
    devices.push((1, Box::new(rng) as Box<dyn VirtioDevice>));
    if let Some(path) = image {
        let cfg = BlkConfig {
            path,
            engine: Engine::Sync,
            ..BlkConfig::default()
        };
        let blk = BlkDevice::new("blk", &cfg).map_err(|e| e.to_string())?;
        devices.push((2, Box::new(blk)));
    }
    let cfg = BackendConfig {
        devices: devices.iter().map(|(n, _)| *n).collect(),
        ..BackendConfig::default()
    };
    let mut instance =
        GuestInstance::new(format!("dom{domid}"), InstanceOptions::default(), devices)
            .map_err(|e| e.to_string())?;
    let mut backend = XenBackend::provision(XenHost, domid, cfg).map_err(|e| e.to_string())?;
    println!("dom0-serve: serving {}", backend.backend_path());
    let stop = StopSignal::new().map_err(|e| e.to_string())?;
    let end = backend
        .run(&mut instance, &stop)
        .map_err(|e| e.to_string())?;
    Ok(format!("{end:?} after {:?}", backend.stats()))
}

fn main() -> ExitCode {
    env_logger_init();
    let mut args = std::env::args().skip(1);
    let Some(domid) = args.next().and_then(|a| a.parse().ok()) else {
        eprintln!("usage: dom0-serve DOMID [IMAGE]");
        return ExitCode::from(2);
    };
    match run(domid, args.next().map(PathBuf::from)) {
        Ok(s) => {
            println!("dom0-serve: {s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("dom0-serve: FAIL {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr without a logger crate (vmsg-xen has none).
fn env_logger_init() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        let level = match std::env::var("DOM0_SERVE_LOG").as_deref() {
            Ok("debug") => log::LevelFilter::Debug,
            Ok("trace") => log::LevelFilter::Trace,
            _ => log::LevelFilter::Info,
        };
        log::set_max_level(level);
    }
}
