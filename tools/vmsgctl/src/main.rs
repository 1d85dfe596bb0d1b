//! `vmsgctl`: operator CLI for vmsgd — probe a guest's devices, ping its bus,
//! run the conformance suite, measure round trips.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod bench;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use vmsg_backend::instance::StopSignal;
use vmsg_driver::conformance::{SuiteConfig, run_suite_with};
use vmsg_driver::device::VirtioDevice;
use vmsg_driver::wire::Profile;
use vmsg_driver::{Driver, DriverBus};
use vmsgd::config::Config;
use vmsgd::daemon::Daemon;

/// Operator CLI for vmsgd.
#[derive(Debug, Parser)]
#[command(name = "vmsgctl", version, about, long_about = None)]
struct Cli {
    /// Wire profile to speak: v2 (default), v1 or rfc2. The guest's bus must
    /// be configured for the same profile; `conform` without --socket starts
    /// its daemon with it.
    #[arg(long, global = true, default_value = "v2")]
    profile: Profile,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List a guest's devices and their transport info.
    Probe {
        /// The guest's local bus socket.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Send bus PINGs and print round-trip times.
    Ping {
        /// The guest's local bus socket.
        #[arg(long)]
        socket: PathBuf,
        /// How many.
        #[arg(long, default_value_t = 10)]
        count: u32,
    },
    /// Run the spec-v2 conformance suite against every device of a guest.
    /// Without --socket, starts a daemon of its own (two rngs, a writable
    /// two-queue disk and a read-only disk on temporary images, on the local
    /// bus) and tests that. Against a guest's disk, the blk cases write only
    /// to a scratch area at its end and put its contents back.
    Conform {
        /// The guest's local bus socket (default: a daemon started here).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Only this device number (default: every device GET_DEVICES lists).
        #[arg(long)]
        dev: Option<u16>,
        /// Comma-separated case-name substrings (default: every case).
        #[arg(long, default_value = "")]
        filter: String,
        /// Print every case, not only failures.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Benchmarks; ratios against baselines measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::BenchCommand,
    },
    /// A running daemon's guests: connected or not, devices, negotiated
    /// features, queue states (through its control socket).
    Status {
        /// The daemon's control socket (`[daemon] control_socket`).
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print the daemon's JSON document instead.
        #[arg(long)]
        json: bool,
    },
    /// Every counter a running daemon keeps: frames, drops by reason,
    /// per-device requests, notifications, bytes and errors, bus counters
    /// (grant cache hits and maps on Xen).
    Stats {
        /// The daemon's control socket (`[daemon] control_socket`).
        #[arg(long, default_value = DEFAULT_CONTROL)]
        control: PathBuf,
        /// Print the daemon's JSON document instead.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print Prometheus text format (for node-exporter's textfile
        /// collector: write it to a `.prom` file there).
        #[arg(long)]
        prometheus: bool,
        /// Serve the Prometheus text at http://ADDR/metrics instead, asking
        /// the daemon afresh for every scrape.
        #[arg(long, value_name = "ADDR", requires = "prometheus")]
        listen: Option<String>,
    },
}

/// Where the shipped configuration puts the control socket.
const DEFAULT_CONTROL: &str = "/run/vmsgd/control.sock";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let _ = PROFILE.set(cli.profile);
    let result = match cli.command {
        Command::Probe { socket } => probe(&socket),
        Command::Ping { socket, count } => ping(&socket, count),
        Command::Conform {
            socket,
            dev,
            filter,
            verbose,
        } => conform(socket.as_deref(), dev, &filter, verbose, cli.profile),
        Command::Bench { which } => bench::run(&which),
        Command::Status { control, json } => status(&control, json),
        Command::Stats {
            control,
            json,
            prometheus,
            listen,
        } => stats(&control, json, prometheus, listen.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmsgctl: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn status(control: &Path, json: bool) -> Result<ExitCode, AnyError> {
    let doc = vmsgd::control::query(control)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", vmsgd::control::format_status(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(
    control: &Path,
    json: bool,
    prometheus: bool,
    listen: Option<&str>,
) -> Result<ExitCode, AnyError> {
    if let Some(addr) = listen {
        return serve_metrics(control, addr);
    }
    let doc = vmsgd::control::query(control)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if prometheus {
        print!("{}", vmsgd::control::format_prometheus(&doc));
    } else {
        print!("{}", vmsgd::control::format_stats(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

/// A minimal HTTP endpoint for a Prometheus scrape: every request (one at
/// a time) gets the daemon's counters as of that moment.
fn serve_metrics(control: &Path, addr: &str) -> Result<ExitCode, AnyError> {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
    eprintln!(
        "vmsgctl: serving http://{addr}/metrics from {}",
        control.display()
    );
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let _ = std::io::BufReader::new(&stream).read_line(&mut line);
        let (status, body) = if line.starts_with("GET /metrics ") {
            match vmsgd::control::query(control) {
                Ok(doc) => ("200 OK", vmsgd::control::format_prometheus(&doc)),
                Err(e) => ("503 Service Unavailable", format!("{e}\n")),
            }
        } else {
            ("404 Not Found", "try /metrics\n".to_string())
        };
        let _ = write!(
            stream,
            "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Connect to a guest's local bus as its driver.
pub(crate) fn connect(socket: &Path) -> Result<Box<dyn DriverBus>, AnyError> {
    connect_with(socket, false)
}

/// The `--profile` given on the command line, set once in `main`.
static PROFILE: std::sync::OnceLock<Profile> = std::sync::OnceLock::new();

/// Connect, spinning on the ring for responses instead of sleeping on the
/// doorbell when `polling` is set, speaking the `--profile` profile.
pub(crate) fn connect_with(socket: &Path, polling: bool) -> Result<Box<dyn DriverBus>, AnyError> {
    let opts = vmsg_backend::local::LocalClientOptions {
        polling,
        ..vmsg_driver::local::options_for(PROFILE.get().copied().unwrap_or(Profile::V2))
    };
    let bus = vmsg_driver::local::LocalDriverBus::connect(socket, &opts)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    Ok(Box::new(bus))
}

fn probe(socket: &Path) -> Result<ExitCode, AnyError> {
    let mut drv = Driver::new(connect(socket)?)?;
    println!(
        "bus: max message {} bytes, transport features {:#x}",
        drv.max_msg_size(),
        drv.transport_features()
    );
    let devices = drv.discover()?;
    println!(
        "{:>4}  {:>9}  {:>10}  {:>6}  {:>6}  {:>6}  status",
        "dev", "device_id", "vendor", "blocks", "config", "queues"
    );
    for dev_num in devices {
        let probed = VirtioDevice::probe(drv, dev_num)?;
        let i = *probed.info();
        drv = probed.into_driver();
        let status = drv.get_device_status(dev_num)?;
        println!(
            "{dev_num:>4}  {:>9}  {:#010x}  {:>6}  {:>6}  {:>6}  {status:#x}",
            i.device_id, i.vendor_id, i.num_feature_blocks, i.config_size, i.max_virtqueues
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ping(socket: &Path, count: u32) -> Result<ExitCode, AnyError> {
    let mut drv = Driver::new(connect(socket)?)?;
    let mut rtts = Vec::new();
    for i in 0..count {
        let t = Instant::now();
        drv.ping(i)?;
        let rtt = t.elapsed();
        println!("PING {i}: {rtt:.1?}");
        rtts.push(rtt);
    }
    rtts.sort();
    if let (Some(min), Some(max)) = (rtts.first(), rtts.last()) {
        println!(
            "{count} answered, min {min:.1?}, median {:.1?}, max {max:.1?}",
            rtts[rtts.len() / 2]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A daemon of our own on a temporary local bus, for `conform` and `bench`
/// without a target.
pub(crate) struct OwnDaemon {
    daemon: Option<Daemon>,
    dir: PathBuf,
    /// The guest's socket.
    pub socket: PathBuf,
}

impl OwnDaemon {
    /// Start a daemon with one guest and the given `[[guest.device]]` tables.
    pub(crate) fn start(devices_toml: &str, bus_extra: &str) -> Result<Self, AnyError> {
        Self::start_with_images(&std::env::temp_dir(), devices_toml, bus_extra, &[])
    }

    /// [`OwnDaemon::start`] in a new directory under `base`, after creating
    /// the sparse `images` (name, bytes) there; device tables name them by
    /// relative path.
    pub(crate) fn start_with_images(
        base: &Path,
        devices_toml: &str,
        bus_extra: &str,
        images: &[(&str, u64)],
    ) -> Result<Self, AnyError> {
        let dir = base.join(format!("vmsgctl-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir)?;
        for (name, len) in images {
            std::fs::File::create(dir.join(name))?.set_len(*len)?;
        }
        let socket = dir.join("guest.sock");
        let path = dir.join("vmsgd.toml");
        std::fs::write(
            &path,
            format!(
                "[daemon]\nlog_level = \"warn\"\n\n[[guest]]\nname = \"conform\"\nbus = {{ kind = \"local\", socket = \"{}\"{bus_extra} }}\n\n{devices_toml}",
                socket.display()
            ),
        )?;
        let cfg = Config::load(&path)?;
        let daemon = Daemon::start(&cfg, StopSignal::new()?)?;
        Ok(Self {
            daemon: Some(daemon),
            dir,
            socket,
        })
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            if let Err(e) = d.shutdown() {
                eprintln!("vmsgctl: stopping the daemon: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

fn conform(
    socket: Option<&Path>,
    dev: Option<u16>,
    filter: &str,
    verbose: bool,
    profile: Profile,
) -> Result<ExitCode, AnyError> {
    let bus_extra = format!(", profile = \"{profile}\"");
    let own;
    let socket = match socket {
        Some(s) => s.to_path_buf(),
        None => {
            own = OwnDaemon::start_with_images(
                &std::env::temp_dir(),
                "[[guest.device]]\nkind = \"rng\"\n\n[[guest.device]]\nkind = \"rng\"\nrate_limit = 1048576\n\n\
                 [[guest.device]]\nkind = \"blk\"\npath = \"rw.img\"\nnum_queues = 2\nserial = \"conform-rw\"\n\n\
                 [[guest.device]]\nkind = \"blk\"\npath = \"ro.img\"\nread_only = true\n\n\
                 [[guest.device]]\nkind = \"i2c\"\n\n[[guest.device.chip]]\nmodel = \"24c02\"\naddr = 0x50\n\n\
                 [[guest.device.chip]]\nmodel = \"lm75\"\naddr = 0x48\n",
                &bus_extra,
                &[("rw.img", 64 << 20), ("ro.img", 16 << 20)],
            )?;
            println!("started a daemon of our own on {}", own.socket.display());
            own.socket.clone()
        }
    };
    let devices = match dev {
        Some(d) => vec![d],
        None => Driver::new(connect(&socket)?)?.discover()?,
    };
    let cfg = SuiteConfig {
        filter: filter.to_string(),
        drop_window: Duration::from_millis(100),
        profile,
        ..SuiteConfig::default()
    };
    let mut passed = 0;
    let mut failed = 0;
    for dev_num in devices {
        let mut make = || connect(&socket).map_err(|e| e.to_string());
        let report = run_suite_with(&mut make, dev_num, &cfg);
        let text = report.to_string();
        for line in text.lines() {
            let last = Some(line) == text.lines().last();
            if verbose || line.starts_with("FAIL") || last {
                println!("dev {dev_num}: {line}");
            }
        }
        passed += report.passed();
        failed += report.failed();
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
