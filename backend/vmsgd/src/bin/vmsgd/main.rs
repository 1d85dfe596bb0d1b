//! `vmsgd`: the virtio-msg backend daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use clap::{Parser, Subcommand};
use log::{error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use vmsg_backend::hotplug::DeviceControl;
use vmsg_backend::instance::StopSignal;
use vmsgd::config::{self, Config};
use vmsgd::daemon::Daemon;
use vmsgd::{logging, sandbox, xen};

mod demo;

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
    /// Serve one Xen domain from <config-dir>/<name>.toml until it dies
    /// (what `vmsgd watch` and the xl hook start; run it in dom0).
    Run {
        /// The domain: its id or its name.
        #[arg(long, value_name = "NAME|ID")]
        domain: String,
        /// Where the domain files are.
        #[arg(long, value_name = "DIR", default_value = xen::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
    },
    /// Supervise Xen domains: start a `vmsgd run` process for each domain
    /// with a file in <config-dir> when it appears; it ends when the domain
    /// dies; a failed one is restarted while its domain lives.
    Watch {
        /// Where the domain files are (re-read whenever a domain appears).
        #[arg(long, value_name = "DIR", default_value = xen::DEFAULT_CONFIG_DIR)]
        config_dir: PathBuf,
        /// error, warn, info, debug or trace (RUST_LOG overrides it).
        #[arg(long, default_value = "info")]
        log_level: String,
        /// Log to syslog instead of stderr.
        #[arg(long)]
        syslog: bool,
        /// The system call filter: kill (default), log (allow and log what
        /// is not on the list, for debugging) or off. The `vmsgd run`
        /// processes started inherit it.
        #[arg(long, value_enum, default_value = "kill")]
        seccomp: SeccompArg,
    },
}

/// `--seccomp`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SeccompArg {
    Kill,
    Log,
    Off,
}

impl From<SeccompArg> for config::SeccompMode {
    fn from(a: SeccompArg) -> Self {
        match a {
            SeccompArg::Kill => Self::Kill,
            SeccompArg::Log => Self::Log,
            SeccompArg::Off => Self::Off,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Processes that reload on SIGHUP block it before anything else, so a
    // reload sent right after start (`systemctl reload` while `vmsgd watch`
    // is starting a domain's backend) is held, not fatal.
    if matches!(cli.command, Some(Command::Run { .. })) || cli.command.is_none() {
        let mut hup = SigSet::empty();
        hup.add(Signal::SIGHUP);
        if let Err(e) = hup.thread_block() {
            eprintln!("vmsgd: blocking SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    }
    match (cli.command, cli.config) {
        (Some(Command::CheckConfig { file }), _) => check_config(&file),
        (Some(Command::Demo(args)), _) => demo::run(&args),
        (Some(Command::DemoDriver(args)), _) => demo::run_driver(&args),
        (Some(Command::Run { domain, config_dir }), _) => run_domain(&domain, &config_dir),
        (
            Some(Command::Watch {
                config_dir,
                log_level,
                syslog,
                seccomp,
            }),
            _,
        ) => watch(&config_dir, &log_level, syslog, seccomp.into()),
        (None, Some(file)) => run_daemon(&file),
        (None, None) => {
            eprintln!(
                "vmsgd: nothing to do: give --config FILE to run the daemon, or `vmsgd demo` for the quickstart (see --help)"
            );
            ExitCode::from(2)
        }
    }
}

/// Raise the soft fd limit to the hard one (every serving role does this
/// first; `sandbox::raise_fd_limit` says why) and log the result.
fn raise_fd_limit() {
    match sandbox::raise_fd_limit() {
        Ok((soft, _)) => info!("file descriptor limit: {soft}"),
        Err(e) => warn!("{e}; keeping the file descriptor limit as it is"),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(cfg) => {
            // A Xen guest only runs from a domain file: check its rules too.
            let is_domain_file = cfg
                .guests
                .iter()
                .any(|g| matches!(g.bus, config::BusConfig::Xen { .. }));
            if is_domain_file {
                if let Err(e) = xen::check_domain_file(file, cfg.clone()) {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
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
    raise_fd_limit();
    // Block the termination signals and SIGHUP in every thread (threads
    // inherit the mask) and take them synchronously here, so shutdown and
    // reloads are orderly.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
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
    let mut daemon = match Daemon::start(&cfg, stop.clone()) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The control socket, bound now (root's, mode 0600).
    let _control = match &cfg.daemon.control_socket {
        None => None,
        Some(path) => match vmsgd::control::ControlServer::start(
            path,
            std::sync::Arc::new(std::sync::Mutex::new(daemon.inspectors())),
            stop.clone(),
        ) {
            Ok(c) => {
                info!("control socket {}", path.display());
                Some(c)
            }
            Err(e) => {
                error!("{e}");
                let _ = daemon.shutdown();
                return ExitCode::FAILURE;
            }
        },
    };
    // Everything that needs root is open (sockets bound, devices and
    // images opened): drop what is left of it and filter system calls.
    let sockets: Vec<PathBuf> = cfg
        .guests
        .iter()
        .filter_map(|g| match &g.bus {
            config::BusConfig::Local { socket, .. } => Some(socket.clone()),
            _ => None,
        })
        .collect();
    match sandbox::confine(
        sandbox::Role::Daemon,
        cfg.daemon.user.as_deref(),
        cfg.daemon.group.as_deref(),
        cfg.daemon.seccomp,
        &sockets,
    ) {
        Ok(what) => info!("sandbox: {what}"),
        Err(e) => {
            error!("sandbox: {e}");
            let _ = daemon.shutdown();
            return ExitCode::FAILURE;
        }
    }
    info!(
        "vmsgd {} running {} guest(s) from {}",
        env!("CARGO_PKG_VERSION"),
        cfg.guests.len(),
        file.display()
    );
    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => match Config::load(file) {
                Ok(new) => {
                    info!("SIGHUP: reloading {}", file.display());
                    vmsgd::reload::warn_unapplied(&daemon.reload(&new));
                }
                Err(e) => error!("SIGHUP: {e}\n  (kept the running configuration)"),
            },
            Ok(sig) => {
                info!("{sig}: shutting down");
                break;
            }
            Err(e) => {
                error!("sigwait: {e}");
                break;
            }
        }
    }
    match daemon.shutdown() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Block SIGINT, SIGTERM and SIGHUP (and `extra`) in every thread and
/// trigger the returned stop signal when SIGINT or SIGTERM arrives; SIGHUP
/// calls `on_hangup` (and is ignored without one).
fn stop_on_signals(
    extra: &[Signal],
    mut on_hangup: Option<Box<dyn FnMut() + Send>>,
) -> Result<StopSignal, String> {
    let mut block = SigSet::empty();
    block.add(Signal::SIGINT);
    block.add(Signal::SIGTERM);
    block.add(Signal::SIGHUP);
    for s in extra {
        block.add(*s);
    }
    block
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let stop = StopSignal::new().map_err(|e| e.to_string())?;
    let mut wait = SigSet::empty();
    wait.add(Signal::SIGINT);
    wait.add(Signal::SIGTERM);
    wait.add(Signal::SIGHUP);
    let trigger = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                match wait.wait() {
                    Ok(Signal::SIGHUP) => match on_hangup.as_mut() {
                        Some(f) => f(),
                        None => info!(
                            "SIGHUP ignored: reloads are per domain, send it to the domain's `vmsgd run` process (`systemctl reload` does)"
                        ),
                    },
                    Ok(sig) => {
                        info!("{sig}: shutting down");
                        break;
                    }
                    Err(e) => {
                        error!("sigwait: {e}");
                        break;
                    }
                }
            }
            trigger.trigger();
        })
        .map_err(|e| format!("spawning the signal thread: {e}"))?;
    Ok(stop)
}

fn run_domain(spec: &str, dir: &std::path::Path) -> ExitCode {
    let domain = match vmsg_xen::xenstore::XsClient::open()
        .map_err(|e| format!("vmsgd: xenstore: {e} (is this dom0 with xenstored running?)"))
        .and_then(|mut xs| xen::resolve_domain(&mut xs, spec).map_err(|e| format!("vmsgd: {e}")))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (cfg, guest) = match xen::load_domain(dir, &domain.name) {
        Ok(c) => c,
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
    raise_fd_limit();
    // SIGHUP re-reads the domain file and applies its device changes live.
    let control: Arc<OnceLock<DeviceControl>> = Arc::new(OnceLock::new());
    let hangup = {
        let control = control.clone();
        let dir = dir.to_path_buf();
        let name = domain.name.clone();
        let mut running = guest.clone();
        Box::new(
            move || match (xen::load_domain(&dir, &name), control.get()) {
                (Ok((_, new)), Some(control)) => {
                    info!("SIGHUP: reloading the devices of {name}");
                    match vmsgd::reload::reload_guest(control, &running, &new) {
                        Ok(_) => running = new,
                        Err(e) => warn!("reload: {e}"),
                    }
                }
                (Err(e), _) => error!("SIGHUP: {e}\n  (kept the running configuration)"),
                (Ok(_), None) => warn!("SIGHUP: not serving yet; nothing reloaded"),
            },
        ) as Box<dyn FnMut() + Send>
    };
    let stop = match stop_on_signals(&[], Some(hangup)) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // The control socket, bound before the filter (which allows no bind);
    // the guest is added once its instance exists.
    let guests = vmsgd::control::GuestSet::default();
    let _control = match &cfg.daemon.control_socket {
        None => None,
        Some(path) => {
            match vmsgd::control::ControlServer::start(path, guests.clone(), stop.clone()) {
                Ok(c) => Some(c),
                Err(e) => {
                    error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    // The backend opens the Xen device nodes (root's) for every
    // connection: it stays uid 0, without capabilities (docs/security.md;
    // load_domain refuses user/group in a domain file).
    match sandbox::confine(sandbox::Role::Domain, None, None, cfg.daemon.seccomp, &[]) {
        Ok(what) => info!("sandbox: {what}"),
        Err(e) => {
            error!("sandbox: {e}");
            return ExitCode::FAILURE;
        }
    }
    let platform = xen::RestrictedHost {
        domid: domain.domid,
    };
    let publish = |c: DeviceControl, i: vmsg_backend::instance::Inspector| {
        let _ = control.set(c);
        if let Ok(mut list) = guests.lock() {
            list.push((domain.name.clone(), i));
        }
    };
    match xen::serve_with_handles(platform, domain.domid, &guest, &stop, publish) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn watch(
    dir: &std::path::Path,
    log_level: &str,
    syslog: bool,
    seccomp: config::SeccompMode,
) -> ExitCode {
    let Some(level) = config::log_level(log_level) else {
        eprintln!("vmsgd: --log-level {log_level:?}: use error, warn, info, debug or trace");
        return ExitCode::from(2);
    };
    let target = if syslog {
        config::LogTarget::Syslog
    } else {
        config::LogTarget::Stderr
    };
    if let Err(e) = logging::init(target, level) {
        eprintln!("vmsgd: {e}");
        return ExitCode::FAILURE;
    }
    raise_fd_limit();
    // Children are reaped through a signalfd: SIGCHLD stays blocked.
    let stop = match stop_on_signals(&[Signal::SIGCHLD], None) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let result = std::env::current_exe()
        .map_err(|e| format!("locating the vmsgd binary: {e}"))
        .and_then(|exe| {
            xen::ProcessLauncher::new(exe, Vec::new(), dir.clone()).map_err(|e| e.to_string())
        })
        .and_then(|launcher| {
            let mut xs = vmsg_xen::xenstore::XsClient::open()
                .map_err(|e| format!("xenstore: {e} (is this dom0 with xenstored running?)"))?;
            // The supervisor needs no privilege of its own; the backends it
            // starts inherit the filter (and add their own).
            let what = sandbox::confine(sandbox::Role::Watch, None, None, seccomp, &[])
                .map_err(|e| format!("sandbox: {e}"))?;
            info!("sandbox: {what}");
            let opts = xen::WatchOptions {
                config_dir: dir.clone(),
                ..xen::WatchOptions::default()
            };
            xen::Supervisor::new(launcher, opts)
                .run(&mut xs, &stop)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
