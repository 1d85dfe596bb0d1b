//! `vmsgd`: the virtio-msg backend daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use log::{error, info};
use nix::sys::signal::{SigSet, Signal};
use vmsg_backend::instance::StopSignal;
use vmsgd::config::{self, Config};
use vmsgd::daemon::Daemon;
use vmsgd::{demo, logging};

/// virtio-msg backend daemon: serves virtio devices to guests over
/// virtio-msg buses.
#[derive(Debug, Parser)]
#[command(name = "vmsgd", version, about, long_about = None)]
struct Cli {
    /// Run the daemon with this configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and print what it configures.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Quickstart: start the daemon on the local bus with every device type,
    /// then drive it from a second process with the spec-derived driver.
    Demo(demo::DemoArgs),
    /// The driver side of the demo (run by `vmsgd demo` in a second process).
    #[command(hide = true)]
    DemoDriver(demo::DemoDriverArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::CheckConfig { file }), _) => check_config(&file),
        (Some(Command::Demo(args)), _) => demo::run(&args),
        (Some(Command::DemoDriver(args)), _) => demo::run_driver(&args),
        (None, Some(file)) => run_daemon(&file),
        (None, None) => {
            eprintln!(
                "vmsgd: nothing to do: give --config FILE to run the daemon, or `vmsgd demo` for the quickstart (see --help)"
            );
            ExitCode::from(2)
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(cfg) => {
            println!("{}: ok", file.display());
            for g in &cfg.guests {
                println!("guest {}: {:?}", g.name, g.bus);
                for (n, d) in &g.devices {
                    println!("  device {n}: {d:?}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run_daemon(file: &std::path::Path) -> ExitCode {
    let cfg = match Config::load(file) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let level = config::log_level(&cfg.daemon.log_level).unwrap_or(log::LevelFilter::Info);
    if let Err(e) = logging::init(cfg.daemon.log, level) {
        eprintln!("vmsgd: {e}");
        return ExitCode::FAILURE;
    }
    // Block the termination signals in every thread (threads inherit the
    // mask) and take them synchronously here, so shutdown is orderly.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        error!("blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    let stop = match StopSignal::new() {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let daemon = match Daemon::start(&cfg, stop.clone()) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        "vmsgd {} running {} guest(s) from {}",
        env!("CARGO_PKG_VERSION"),
        cfg.guests.len(),
        file.display()
    );
    match signals.wait() {
        Ok(sig) => info!("{sig}: shutting down"),
        Err(e) => error!("sigwait: {e}"),
    }
    match daemon.shutdown() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
