//! `vmsgd demo`: the quickstart. It writes a real config file, starts the
//! daemon from it on the local bus, and drives the devices from a second
//! process (`vmsgd demo-driver`) with the spec-derived `vmsg-driver`:
//! discovery, the init sequence, feature negotiation, I/O. Both sides print
//! what they did.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Args;
use vmsg_backend::instance::StopSignal;
use vmsg_driver::conformance::{SuiteConfig, run_suite_with};
use vmsg_driver::device::{FeatureSet, VirtioDevice};
use vmsg_driver::rng::Rng;
use vmsg_driver::{Driver, DriverBus};

use crate::config::{Config, log_level};
use crate::daemon::Daemon;
use crate::logging;

/// Options of `vmsgd demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Random bytes to read from each rng.
    #[arg(long, default_value_t = 64)]
    pub bytes: usize,
    /// Daemon log level (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Keep the demo's directory (config file, socket) afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Options of the hidden `vmsgd demo-driver`.
#[derive(Debug, Args)]
pub struct DemoDriverArgs {
    /// The guest's local bus socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// Random bytes to read from each rng.
    #[arg(long, default_value_t = 64)]
    pub bytes: usize,
}

/// The demo's configuration: one guest with a plain rng and a rate-limited
/// one, on the local bus.
fn demo_config(dir: &Path) -> String {
    format!(
        r#"# Written by `vmsgd demo`; the same format as /etc/vmsgd/*.toml.
[daemon]
log = "stderr"

[[guest]]
name = "demo"
bus = {{ kind = "local", socket = "{}" }}

[[guest.device]]
kind = "rng"
dev_num = 0

[[guest.device]]
kind = "rng"
dev_num = 1
rate_limit = 65536
"#,
        dir.join("demo.sock").display()
    )
}

/// Run the quickstart. Exit status: success only if the driver process
/// succeeded.
pub fn run(args: &DemoArgs) -> ExitCode {
    let level = log_level(&args.log_level).unwrap_or(log::LevelFilter::Info);
    if let Err(e) = logging::init(crate::config::LogTarget::Stderr, level) {
        eprintln!("vmsgd demo: {e}");
        return ExitCode::FAILURE;
    }
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmsgd demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: &DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("vmsgd-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("vmsgd.toml");
    std::fs::write(&config_path, demo_config(&dir))?;
    println!("== vmsgd demo");
    println!("config {}:", config_path.display());
    for line in demo_config(&dir)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        println!("  {line}");
    }
    let config = Config::load(&config_path)?;
    let stop = StopSignal::new()?;
    let daemon = Daemon::start(&config, stop)?;
    let socket = dir.join("demo.sock");
    println!("daemon: serving guest \"demo\" on {}", socket.display());
    let _ = std::io::stdout().flush();

    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let status = Command::new(exe)
        .arg("demo-driver")
        .arg("--socket")
        .arg(&socket)
        .arg("--bytes")
        .arg(args.bytes.to_string())
        .status()?;
    let elapsed = started.elapsed();
    // The driver disconnected, so the guest's counters are final.
    let stats = daemon.stats("demo");
    daemon.shutdown()?;
    if let Some(stats) = stats {
        println!("== daemon side (guest \"demo\")");
        println!("frames received: {}", stats.frames);
        println!(
            "frames dropped: {} malformed ({} unknown id), {} unknown device, {} unexpected, {} refused by a device",
            stats.drops.malformed,
            stats.drops.unknown_msg_id,
            stats.drops.unknown_device,
            stats.drops.unexpected,
            stats.drops.device_dropped
        );
        for (dev, c) in &stats.devices {
            println!(
                "device {dev}: {} requests answered, {} notifications, {} EVENT_USED sent",
                c.requests, c.notifications, c.used_events
            );
        }
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "== driver process {} after {:.0?}",
        if status.success() {
            "succeeded"
        } else {
            "FAILED"
        },
        elapsed
    );
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The driver half of the demo, in its own process.
pub fn run_driver(args: &DemoDriverArgs) -> ExitCode {
    match drive(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo driver: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect(socket: &Path) -> Result<Box<dyn DriverBus>, Box<dyn std::error::Error>> {
    Ok(Box::new(vmsg_driver::local::LocalDriverBus::connect(
        socket,
        &vmsg_backend::local::LocalClientOptions::default(),
    )?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn drive(args: &DemoDriverArgs) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "== driver side (pid {}, connected to {})",
        std::process::id(),
        args.socket.display()
    );
    let mut drv = Driver::new(connect(&args.socket)?)?;
    println!(
        "bus: max message {} bytes, transport features {:#x}",
        drv.max_msg_size(),
        drv.transport_features()
    );
    let t = Instant::now();
    drv.ping(0x5EED_F00D)?;
    println!("PING answered in {:.1?}", t.elapsed());
    let devices = drv.discover()?;
    println!("GET_DEVICES: {} device(s): {:?}", devices.len(), devices);
    for &dev_num in &devices {
        let probed = VirtioDevice::probe(drv, dev_num)?;
        let info = *probed.info();
        println!(
            "device {dev_num}: device_id {} vendor {:#010x} feature blocks {} config {} bytes, {} queue(s)",
            info.device_id,
            info.vendor_id,
            info.num_feature_blocks,
            info.config_size,
            info.max_virtqueues
        );
        drv = probed.into_driver();
        if info.device_id != vmsg_driver::rng::VIRTIO_ID_RNG {
            continue;
        }
        let mut rng = Rng::open(drv, dev_num)?;
        let negotiated = rng.device().negotiated().clone();
        println!(
            "  features offered {}, negotiated {}",
            features(rng.device().offered()),
            features(&negotiated)
        );
        let t = Instant::now();
        let bytes = rng.read(args.bytes)?;
        println!(
            "  read {} random bytes in {:.1?}: {}",
            bytes.len(),
            t.elapsed(),
            hex(&bytes)
        );
        drv = rng.close()?;
    }
    // One driver per guest bus at a time: hang up before the suite connects.
    drop(drv);
    // A quick subset of the conformance suite, a fresh connection per case.
    let dev = devices.first().copied().unwrap_or(0);
    let socket = args.socket.clone();
    let mut make = || connect(&socket).map_err(|e| e.to_string());
    let cfg = SuiteConfig {
        filter: "info.,status.,features.,vq.".into(),
        drop_window: Duration::from_millis(50),
        ..SuiteConfig::default()
    };
    let report = run_suite_with(&mut make, dev, &cfg);
    let summary = report.to_string();
    println!(
        "conformance subset on device {dev}: {}",
        summary.lines().last().unwrap_or_default()
    );
    if !report.success() {
        print!("{report}");
        return Err("conformance failures".into());
    }
    Ok(())
}

fn features(f: &FeatureSet) -> String {
    let names: Vec<String> = f
        .bits()
        .iter()
        .map(|&b| match b {
            28 => "INDIRECT_DESC".into(),
            29 => "EVENT_IDX".into(),
            32 => "VERSION_1".into(),
            33 => "ACCESS_PLATFORM".into(),
            40 => "RING_RESET".into(),
            b => format!("bit{b}"),
        })
        .collect();
    names.join("|")
}
