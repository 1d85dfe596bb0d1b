//! Serving Xen domains: `vmsgd run --domain` (one domain, one process) and
//! `vmsgd watch` (the supervisor that starts one such process for each
//! configured domain that appears and lets it end when the domain dies).
//!
//! # Configuration
//!
//! One file per domain, `<dir>/<name>.toml` (default dir
//! `/etc/vmsgd/domains`): an ordinary vmsgd configuration with exactly one
//! `[[guest]]`, named like the file and the Xen domain, whose bus is
//! `{ kind = "xen", ... }` (docs/configuration.md).
//!
//! # Isolation
//!
//! Each domain is served by its own `vmsgd run --domain <id>` process: its
//! own xenstore connection, event channel handle (restricted to that
//! domain), grant and foreign mappings (privcmd restricted to that domain),
//! devices and image files. A crash of one process (a panic, an abort, a
//! bug a guest provokes) ends that domain's backend only; the supervisor
//! restarts it (bounded) while the domain lives, and the other domains'
//! processes never notice. The supervisor itself holds no guest memory and
//! touches no guest data: it reads domain names from xenstore and spawns,
//! reaps and signals processes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use thiserror::Error;
use vmsg_backend::hotplug::DeviceControl;
use vmsg_backend::instance::{
    GuestInstance, Inspector, InstanceError, InstanceOptions, StopSignal,
};
use vmsg_xen::bus::{
    BackendConfig, BackendPlatform, MemoryConfig, RunEnd, XenBackend, XenBusError, XenHost,
    XenPlatform,
};
use vmsg_xen::memory::GrantRuns;
use vmsg_xen::xenstore::{XsClient, XsError, XsOps, XsStream};
use vmsg_xen::{DomId, XenEvtchn, XenGntdev, XenPrivcmd};

use crate::config::{BusConfig, Config, ConfigError, GuestConfig, XenMemoryMode};
use crate::devices::build_devices;
use crate::error::DaemonError;

/// Where `vmsgd run` and `vmsgd watch` look for domain files by default.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/vmsgd/domains";

const TOKEN_INTRODUCE: &str = "vmsgd-introduce";
const TOKEN_RELEASE: &str = "vmsgd-release";

/// Errors serving or supervising Xen domains.
#[derive(Debug, Error)]
pub enum XenError {
    /// A domain file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A domain file holds no usable Xen guest.
    #[error("{file}: {message}\n  fix: {fix}")]
    DomainFile {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },
    /// No domain matches.
    #[error("no Xen domain {0:?} (neither a domain id nor the name of a running domain)")]
    NoSuchDomain(String),
    /// The devices could not be built.
    #[error(transparent)]
    Devices(#[from] DaemonError),
    /// The guest instance could not be created.
    #[error("guest {guest}: {source}")]
    Instance {
        /// The guest.
        guest: String,
        /// Why.
        #[source]
        source: InstanceError,
    },
    /// The Xen bus failed (not a guest's doing: xenstore gone, handles
    /// unavailable).
    #[error("domain {domid}: {source}")]
    Bus {
        /// The domain.
        domid: DomId,
        /// Why.
        #[source]
        source: XenBusError,
    },
    /// A xenstore operation of the supervisor failed.
    #[error("xenstore {what}: {source}")]
    Xenstore {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: XsError,
    },
    /// An OS operation failed.
    #[error("{op}: {source}")]
    Os {
        /// Which.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn xs_err(what: impl Into<String>) -> impl FnOnce(XsError) -> XenError {
    let what = what.into();
    move |source| XenError::Xenstore { what, source }
}

fn os(op: &'static str) -> impl FnOnce(std::io::Error) -> XenError {
    move |source| XenError::Os { op, source }
}

fn domain_file_err(file: &Path, message: String, fix: &str) -> XenError {
    XenError::DomainFile {
        file: file.to_path_buf(),
        message,
        fix: fix.into(),
    }
}

/// Check that a loaded config is a domain file: one guest, named `name`,
/// on the Xen bus.
fn domain_guest(file: &Path, cfg: Config, name: &str) -> Result<GuestConfig, XenError> {
    if cfg.daemon.user.is_some() || cfg.daemon.group.is_some() {
        return Err(domain_file_err(
            file,
            "user/group in a domain file: a Xen domain's backend reopens root-only device nodes for every connection, so it runs as root without capabilities".into(),
            "remove user and group from [daemon] (docs/security.md)",
        ));
    }
    let n = cfg.guests.len();
    let Some(guest) = cfg.guests.into_iter().next() else {
        return Err(domain_file_err(file, "no [[guest]]".into(), "add one"));
    };
    if n != 1 {
        return Err(domain_file_err(
            file,
            format!("{n} [[guest]] tables; a domain file configures one domain"),
            "move each domain into its own <name>.toml",
        ));
    }
    if guest.name != name {
        return Err(domain_file_err(
            file,
            format!(
                "the guest is named {:?}, but the file is for domain {name:?}",
                guest.name
            ),
            "name the file after the Xen domain and set the guest's name to match",
        ));
    }
    if !matches!(guest.bus, BusConfig::Xen { .. }) {
        return Err(domain_file_err(
            file,
            format!("guest {name:?} is not on the Xen bus"),
            "set bus = { kind = \"xen\" } (docs/configuration.md)",
        ));
    }
    Ok(guest)
}

/// Check a loaded configuration that has a Xen guest against the rules of
/// a domain file (one guest, named like the file, on the Xen bus, with
/// usable bus settings), as `vmsgd run` and `vmsgd watch` will.
pub fn check_domain_file(file: &Path, cfg: Config) -> Result<GuestConfig, XenError> {
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let guest = domain_guest(file, cfg, &name)?;
    backend_config(&guest)?;
    Ok(guest)
}

/// Load and validate `<dir>/<name>.toml`.
pub fn load_domain(dir: &Path, name: &str) -> Result<(Config, GuestConfig), XenError> {
    let file = dir.join(format!("{name}.toml"));
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(XenError::NoSuchDomain(name.into()));
    }
    let cfg = Config::load(&file)?;
    let guest = domain_guest(&file, cfg.clone(), name)?;
    Ok((cfg, guest))
}

/// The domain files in `dir`: the valid ones, and the errors of the others
/// (a broken file never stops the other domains from being served).
pub fn load_domain_dir(dir: &Path) -> (BTreeMap<String, GuestConfig>, Vec<XenError>) {
    let mut good = BTreeMap::new();
    let mut bad = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            bad.push(XenError::Os {
                op: "reading the domain config directory",
                source: std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())),
            });
            return (good, bad);
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            let stem = p.file_stem()?.to_str()?.to_owned();
            (p.extension()? == "toml" && !stem.starts_with('.')).then_some(stem)
        })
        .collect();
    names.sort();
    for name in names {
        match load_domain(dir, &name) {
            Ok((_, g)) => {
                good.insert(name, g);
            }
            Err(e) => bad.push(e),
        }
    }
    (good, bad)
}

/// The Xen backend settings and instance options of a Xen guest.
pub fn backend_config(guest: &GuestConfig) -> Result<(BackendConfig, InstanceOptions), XenError> {
    let BusConfig::Xen {
        devid,
        memory,
        max_grants,
        ranges,
        profile,
        max_msg_size,
        max_ring_page_order,
        poll_spin_us,
    } = &guest.bus
    else {
        return Err(XenError::DomainFile {
            file: PathBuf::new(),
            message: format!("guest {:?} is not on the Xen bus", guest.name),
            fix: "set bus = { kind = \"xen\" }".into(),
        });
    };
    let memory = match memory {
        XenMemoryMode::Grant => MemoryConfig::Grant {
            max_grants: *max_grants as usize,
        },
        XenMemoryMode::Foreign => {
            let ranges = ranges
                .as_deref()
                .unwrap_or_default()
                .parse::<GrantRuns>()
                .map_err(|e| XenError::DomainFile {
                    file: PathBuf::new(),
                    message: format!("guest {:?}: ranges: {e}", guest.name),
                    fix: "write GFN runs as first+count".into(),
                })?;
            MemoryConfig::Foreign { ranges }
        }
    };
    let cfg = BackendConfig {
        devid: *devid,
        profile: (*profile).into(),
        max_msg_size: *max_msg_size as usize,
        memory,
        max_ring_page_order: *max_ring_page_order,
        devices: guest.devices.iter().map(|(n, _)| *n).collect(),
        ..BackendConfig::default()
    };
    let opts = InstanceOptions {
        profile: (*profile).into(),
        poll_spin: Duration::from_micros(*poll_spin_us),
    };
    Ok((cfg, opts))
}

/// Serve `guest` to domain `domid` until the domain dies, the device is
/// taken offline or `stop` fires: build the devices, provision the xenstore
/// directories, serve connection after connection.
pub fn serve<P: BackendPlatform + Clone>(
    platform: P,
    domid: DomId,
    guest: &GuestConfig,
    stop: &StopSignal,
) -> Result<RunEnd, XenError> {
    serve_with_control(platform, domid, guest, stop, |_| {})
}

/// [`serve`], handing the guest's [`DeviceControl`] to `control` before
/// serving (the SIGHUP reload of `vmsgd run` uses it to add and remove
/// devices live).
pub fn serve_with_control<P: BackendPlatform + Clone>(
    platform: P,
    domid: DomId,
    guest: &GuestConfig,
    stop: &StopSignal,
    control: impl FnOnce(DeviceControl),
) -> Result<RunEnd, XenError> {
    serve_with_handles(platform, domid, guest, stop, |c, _| control(c))
}

/// [`serve_with_control`], also handing over the instance's [`Inspector`]
/// (the control socket's status and counters).
pub fn serve_with_handles<P: BackendPlatform + Clone>(
    platform: P,
    domid: DomId,
    guest: &GuestConfig,
    stop: &StopSignal,
    handles: impl FnOnce(DeviceControl, Inspector),
) -> Result<RunEnd, XenError> {
    let (cfg, opts) = backend_config(guest)?;
    let devices = build_devices(guest)?;
    let mut instance = GuestInstance::new(guest.name.clone(), opts, devices).map_err(|source| {
        XenError::Instance {
            guest: guest.name.clone(),
            source,
        }
    })?;
    handles(instance.device_control(), instance.inspector());
    let bus = |source| XenError::Bus { domid, source };
    let mut backend = XenBackend::provision(platform.clone(), domid, cfg).map_err(bus)?;
    info!(
        "domain {domid} ({}): serving {} device(s) at {}",
        guest.name,
        guest.devices.len(),
        backend.backend_path()
    );
    let end = backend.run(&mut instance, stop).map_err(bus)?;
    if end == RunEnd::DomainGone {
        // The backend removed its device directory; the domain's parent
        // (`backend/vmsg/<domid>`) is ours too (xl removes only the device
        // types it knows).
        let parent = format!(
            "/local/domain/0/backend/{}/{domid}",
            vmsg_xen::bus::DEVICE_TYPE
        );
        match platform.open_xenstore().map(|mut xs| xs.rm(&parent)) {
            Ok(Err(e)) if !e.is_not_found() => debug!("removing {parent}: {e}"),
            Err(e) => debug!("removing {parent}: {e}"),
            _ => {}
        }
    }
    let s = backend.stats();
    info!(
        "domain {domid} ({}): {end:?}; {} connection(s), {} refused, {} failed{}",
        guest.name,
        s.connects,
        s.failed_connects,
        s.serve_errors,
        s.last_error
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    );
    Ok(end)
}

/// A running domain, as xenstore lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRef {
    /// Its id.
    pub domid: DomId,
    /// Its name (`/local/domain/<id>/name`).
    pub name: String,
}

/// The domains xenstore knows (introduced, with a `name`), dom0 excluded.
pub fn running_domains<S>(xs: &mut XsClient<S>) -> Result<Vec<DomainRef>, XsError>
where
    S: std::io::Read + std::io::Write + AsFd,
{
    let mut out = Vec::new();
    for entry in xs.directory("/local/domain")? {
        let Ok(domid) = entry.parse::<DomId>() else {
            continue;
        };
        if domid == vmsg_xen::DOMID_0 || !xs.is_domain_introduced(domid)? {
            continue;
        }
        let Some(name) = xs.try_read(&format!("/local/domain/{domid}/name"))? else {
            continue;
        };
        let name = String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_owned();
        out.push(DomainRef { domid, name });
    }
    Ok(out)
}

/// Find a running domain by id or name.
pub fn resolve_domain<S>(xs: &mut XsClient<S>, spec: &str) -> Result<DomainRef, XenError>
where
    S: std::io::Read + std::io::Write + AsFd,
{
    let domains = running_domains(xs).map_err(xs_err("listing /local/domain"))?;
    let by_id = spec.parse::<DomId>().ok();
    domains
        .into_iter()
        .find(|d| Some(d.domid) == by_id || d.name == spec)
        .ok_or_else(|| XenError::NoSuchDomain(spec.into()))
}

/// The real Xen nodes, with the event channel and privcmd handles
/// restricted to one domain (defence in depth for the per-domain process).
#[derive(Debug, Clone, Copy)]
pub struct RestrictedHost {
    /// The only domain the handles may touch.
    pub domid: DomId,
}

impl XenPlatform for RestrictedHost {
    type Evtchn = XenEvtchn;
    type Xs = XsStream;

    fn open_evtchn(&self) -> Result<XenEvtchn, XenBusError> {
        let h = XenHost.open_evtchn()?;
        h.restrict(self.domid)?;
        Ok(h)
    }

    fn open_xenstore(&self) -> Result<XsClient<XsStream>, XenBusError> {
        XenHost.open_xenstore()
    }
}

impl BackendPlatform for RestrictedHost {
    type Gntdev = XenGntdev;
    type Privcmd = XenPrivcmd;

    fn gntdev(&self) -> Result<XenGntdev, XenBusError> {
        XenHost.gntdev()
    }

    fn privcmd(&self) -> Result<XenPrivcmd, XenBusError> {
        let h = XenHost.privcmd()?;
        h.restrict(self.domid)?;
        Ok(h)
    }
}

// ---------------------------------------------------------------- watch --

/// How a backend ended, as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildEnd {
    /// It ended on purpose (domain gone, device offline, stopped).
    pub success: bool,
    /// Human-readable.
    pub what: String,
}

/// A running backend (a process, or a thread in tests).
pub trait BackendChild: std::fmt::Debug {
    /// Has it ended? Never blocks.
    fn try_end(&mut self) -> Option<ChildEnd>;
    /// Ask it to stop (SIGTERM).
    fn stop(&mut self);
    /// Make it stop (SIGKILL); it may still need reaping.
    fn kill(&mut self);
}

/// Starts backends.
pub trait Launcher: std::fmt::Debug {
    /// The running backend type.
    type Child: BackendChild;
    /// Start serving `guest` to `domid`.
    fn launch(&mut self, domid: DomId, guest: &GuestConfig) -> Result<Self::Child, XenError>;
    /// Readable when a child may have ended (then `drain_wake` is called).
    fn wake_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Consume the wake-up.
    fn drain_wake(&mut self);
}

/// Backends as `vmsgd run --domain <id>` processes.
#[derive(Debug)]
pub struct ProcessLauncher {
    program: PathBuf,
    prefix: Vec<OsString>,
    config_dir: PathBuf,
    sigchld: nix::sys::signalfd::SignalFd,
}

impl ProcessLauncher {
    /// Spawn `program prefix... run --domain <id> --config-dir <dir>`.
    /// SIGCHLD must be blocked in every thread (the launcher reads it from
    /// a signalfd).
    pub fn new(
        program: PathBuf,
        prefix: Vec<OsString>,
        config_dir: PathBuf,
    ) -> Result<Self, XenError> {
        let mut mask = nix::sys::signal::SigSet::empty();
        mask.add(nix::sys::signal::Signal::SIGCHLD);
        let sigchld = nix::sys::signalfd::SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        )
        .map_err(|e| XenError::Os {
            op: "signalfd(SIGCHLD)",
            source: e.into(),
        })?;
        Ok(Self {
            program,
            prefix,
            config_dir,
            sigchld,
        })
    }
}

/// A backend process.
#[derive(Debug)]
pub struct ProcessChild {
    child: Child,
    ended: Option<ChildEnd>,
}

impl BackendChild for ProcessChild {
    fn try_end(&mut self) -> Option<ChildEnd> {
        if self.ended.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.ended = Some(ChildEnd {
                        success: status.success(),
                        what: format!("process {} {status}", self.child.id()),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    self.ended = Some(ChildEnd {
                        success: false,
                        what: format!("process {}: wait: {e}", self.child.id()),
                    });
                }
            }
        }
        self.ended.clone()
    }

    fn stop(&mut self) {
        if self.ended.is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }

    fn kill(&mut self) {
        if self.ended.is_none() {
            let _ = self.child.kill();
        }
    }
}

impl Launcher for ProcessLauncher {
    type Child = ProcessChild;

    fn launch(&mut self, domid: DomId, _guest: &GuestConfig) -> Result<ProcessChild, XenError> {
        let child = Command::new(&self.program)
            .args(&self.prefix)
            .arg("run")
            .arg("--domain")
            .arg(domid.to_string())
            .arg("--config-dir")
            .arg(&self.config_dir)
            .stdin(Stdio::null())
            .spawn()
            .map_err(os("spawning vmsgd run"))?;
        Ok(ProcessChild { child, ended: None })
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.sigchld.as_fd())
    }

    fn drain_wake(&mut self) {
        while let Ok(Some(_)) = self.sigchld.read_signal() {}
    }
}

/// Backends as threads on a platform a factory makes per domain: the fake
/// Xen in tests (no process isolation: a test vehicle). [`Killer`] makes a
/// backend thread end as a crashed process would.
pub struct ThreadLauncher<P, F>
where
    F: FnMut(DomId) -> P,
{
    platform: F,
    wake: OwnedFd,
    killer: Killer,
}

impl<P, F: FnMut(DomId) -> P> std::fmt::Debug for ThreadLauncher<P, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadLauncher").finish_non_exhaustive()
    }
}

/// Kills backend threads of a [`ThreadLauncher`] (fault injection: the
/// thread ends at once, reported as a failure, like a SIGKILLed process).
#[derive(Debug, Clone, Default)]
pub struct Killer(Arc<Mutex<BTreeMap<DomId, KillSwitch>>>);

/// A backend thread's stop signal and its "was killed" flag.
type KillSwitch = (StopSignal, Arc<AtomicBool>);

impl Killer {
    /// Kill the running backend of `domid`; false if there is none.
    pub fn kill(&self, domid: DomId) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&domid) {
            Some((stop, killed)) => {
                killed.store(true, Ordering::SeqCst);
                stop.trigger();
                true
            }
            None => false,
        }
    }
}

impl<P, F> ThreadLauncher<P, F>
where
    P: BackendPlatform + Clone + 'static,
    F: FnMut(DomId) -> P,
{
    /// Launch backends on `platform(domid)`.
    pub fn new(platform: F) -> Result<Self, XenError> {
        let wake = nix::sys::eventfd::EventFd::from_flags(
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )
        .map_err(|e| XenError::Os {
            op: "eventfd",
            source: e.into(),
        })?;
        Ok(Self {
            platform,
            wake: wake.into(),
            killer: Killer::default(),
        })
    }

    /// A handle that kills backend threads.
    pub fn killer(&self) -> Killer {
        self.killer.clone()
    }
}

/// A backend thread.
#[derive(Debug)]
pub struct ThreadChild {
    stop: StopSignal,
    done: mpsc::Receiver<ChildEnd>,
    thread: Option<JoinHandle<()>>,
    ended: Option<ChildEnd>,
}

impl BackendChild for ThreadChild {
    fn try_end(&mut self) -> Option<ChildEnd> {
        if self.ended.is_none() {
            let end = match self.done.try_recv() {
                Ok(end) => Some(end),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(ChildEnd {
                    success: false,
                    what: "thread panicked".into(),
                }),
            };
            if let Some(end) = end {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                self.ended = Some(end);
            }
        }
        self.ended.clone()
    }

    fn stop(&mut self) {
        self.stop.trigger();
    }

    fn kill(&mut self) {
        self.stop.trigger();
    }
}

impl<P, F> Launcher for ThreadLauncher<P, F>
where
    P: BackendPlatform + Clone + 'static,
    F: FnMut(DomId) -> P,
{
    type Child = ThreadChild;

    fn launch(&mut self, domid: DomId, guest: &GuestConfig) -> Result<ThreadChild, XenError> {
        let stop = StopSignal::new().map_err(|source| XenError::Instance {
            guest: guest.name.clone(),
            source,
        })?;
        let killed = Arc::new(AtomicBool::new(false));
        self.killer
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domid, (stop.clone(), killed.clone()));
        let platform = (self.platform)(domid);
        let guest = guest.clone();
        let stop2 = stop.clone();
        let (tx, done) = mpsc::channel();
        let wake = self
            .wake
            .try_clone()
            .map_err(os("duplicating the wake eventfd"))?;
        let killer = self.killer.clone();
        let thread = std::thread::Builder::new()
            .name(format!("xen-dom{domid}"))
            .spawn(move || {
                let result = serve(platform, domid, &guest, &stop2);
                let end = if killed.load(Ordering::SeqCst) {
                    ChildEnd {
                        success: false,
                        what: "killed".into(),
                    }
                } else {
                    match result {
                        Ok(end) => ChildEnd {
                            success: true,
                            what: format!("{end:?}"),
                        },
                        Err(e) => ChildEnd {
                            success: false,
                            what: e.to_string(),
                        },
                    }
                };
                killer
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&domid);
                let _ = tx.send(end);
                let _ = nix::unistd::write(&wake, &1u64.to_ne_bytes());
            })
            .map_err(os("spawning a backend thread"))?;
        Ok(ThreadChild {
            stop,
            done,
            thread: Some(thread),
            ended: None,
        })
    }

    fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.wake.as_fd())
    }

    fn drain_wake(&mut self) {
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(&self.wake, &mut buf);
    }
}

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Where the domain files are (re-read on every domain appearance).
    pub config_dir: PathBuf,
    /// Wait before restarting a backend that failed while its domain lives
    /// (doubled on each restart within `restart_window`).
    pub restart_delay: Duration,
    /// Restarts allowed within `restart_window`; beyond them the domain is
    /// left unserved (logged) until it is created anew.
    pub max_restarts: u32,
    /// The window of `max_restarts`.
    pub restart_window: Duration,
    /// How long a backend of a dead domain may take to end by itself
    /// before SIGTERM, and again before SIGKILL.
    pub stop_grace: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            config_dir: DEFAULT_CONFIG_DIR.into(),
            restart_delay: Duration::from_secs(1),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            stop_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug)]
struct Slot<C> {
    name: String,
    child: Option<C>,
    /// Start times of recent launches (restart accounting).
    launches: Vec<Instant>,
    /// A restart is due at this time.
    restart_at: Option<Instant>,
    /// No backend for this domain any more: restarts exhausted, or it
    /// ended on purpose.
    given_up: bool,
    /// The domain is gone: escalation deadlines (SIGTERM, then SIGKILL).
    dying: Option<(Instant, bool)>,
}

/// What the supervisor did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Backends started (restarts included).
    pub launched: u64,
    /// Restarts of failed backends.
    pub restarts: u64,
    /// Backends that ended (reaped).
    pub ended: u64,
    /// Backends that ended with a failure.
    pub failed: u64,
}

/// The supervisor: one backend per configured, running domain.
#[derive(Debug)]
pub struct Supervisor<L: Launcher> {
    launcher: L,
    opts: WatchOptions,
    /// By domid.
    slots: BTreeMap<DomId, Slot<L::Child>>,
    stats: WatchStats,
    /// When the next restart or escalation is due.
    next: Option<Instant>,
}

impl<L: Launcher> Supervisor<L> {
    /// A supervisor starting backends with `launcher`.
    pub fn new(launcher: L, opts: WatchOptions) -> Self {
        Self {
            launcher,
            opts,
            slots: BTreeMap::new(),
            stats: WatchStats::default(),
            next: None,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> WatchStats {
        self.stats.clone()
    }

    /// The domains with a running backend.
    pub fn serving(&mut self) -> Vec<DomId> {
        self.slots
            .iter_mut()
            .filter_map(|(d, s)| {
                s.child
                    .as_mut()
                    .is_some_and(|c| c.try_end().is_none())
                    .then_some(*d)
            })
            .collect()
    }

    /// When the supervisor next has to act without an event (a restart or
    /// an escalation is due), as of the last reconcile.
    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// The running backend of `domid` (tests make it fail through it).
    pub fn child_mut(&mut self, domid: DomId) -> Option<&mut L::Child> {
        self.slots.get_mut(&domid).and_then(|s| s.child.as_mut())
    }

    /// Bring the backends in line with xenstore: reap the ones that ended,
    /// start one for every configured running domain that has none (and
    /// restart failed ones, bounded), escalate on backends of dead domains.
    /// Returns when to call again at the latest (a pending restart or
    /// escalation).
    pub fn reconcile<S>(&mut self, xs: &mut XsClient<S>) -> Result<Option<Instant>, XenError>
    where
        S: std::io::Read + std::io::Write + AsFd,
    {
        let now = Instant::now();
        let running = running_domains(xs).map_err(xs_err("listing /local/domain"))?;
        let (configs, errors) = load_domain_dir(&self.opts.config_dir);
        for e in &errors {
            warn!("{e}");
        }
        // Reap.
        let mut removed = Vec::new();
        for (&domid, slot) in self.slots.iter_mut() {
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            let Some(end) = child.try_end() else {
                continue;
            };
            slot.child = None;
            self.stats.ended += 1;
            let alive = running
                .iter()
                .any(|d| d.domid == domid && d.name == slot.name);
            if !end.success {
                self.stats.failed += 1;
            }
            if alive && !end.success {
                slot.launches
                    .retain(|t| now.duration_since(*t) < self.opts.restart_window);
                let n = slot.launches.len() as u32;
                if n > self.opts.max_restarts {
                    error!(
                        "domain {domid} ({}): backend {}; {n} starts within {:?}: giving up until the domain is recreated",
                        slot.name, end.what, self.opts.restart_window
                    );
                    slot.given_up = true;
                } else {
                    let delay = self
                        .opts
                        .restart_delay
                        .saturating_mul(1u32 << n.saturating_sub(1).min(10));
                    warn!(
                        "domain {domid} ({}): backend {}; restarting in {delay:?}",
                        slot.name, end.what
                    );
                    slot.restart_at = Some(now + delay);
                }
            } else if alive {
                // Ended on purpose (device taken offline, SIGTERM from an
                // administrator): not restarted while this domain lives.
                info!(
                    "domain {domid} ({}): backend ended: {}; not restarting it for this domain",
                    slot.name, end.what
                );
                slot.given_up = true;
            } else {
                info!(
                    "domain {domid} ({}): backend ended: {}",
                    slot.name, end.what
                );
                removed.push(domid);
            }
        }
        for domid in removed {
            self.slots.remove(&domid);
            // The backend removes its directory when it sees the domain go;
            // one that was killed cannot.
            let be = format!(
                "/local/domain/0/backend/{}/{domid}",
                vmsg_xen::bus::DEVICE_TYPE
            );
            if let Err(e) = xs.rm(&be) {
                if !e.is_not_found() {
                    debug!("removing {be}: {e}");
                }
            }
        }
        // Domains that are gone (or were recreated under another name).
        for (&domid, slot) in self.slots.iter_mut() {
            let alive = running
                .iter()
                .any(|d| d.domid == domid && d.name == slot.name);
            if alive {
                continue;
            }
            slot.restart_at = None;
            if slot.child.is_none() {
                continue;
            }
            match slot.dying {
                None => slot.dying = Some((now + self.opts.stop_grace, false)),
                Some((t, false)) if now >= t => {
                    warn!(
                        "domain {domid} ({}): backend still running after the domain died; SIGTERM",
                        slot.name
                    );
                    if let Some(c) = slot.child.as_mut() {
                        c.stop();
                    }
                    slot.dying = Some((now + self.opts.stop_grace, true));
                }
                Some((t, true)) if now >= t => {
                    error!(
                        "domain {domid} ({}): backend ignored SIGTERM; SIGKILL",
                        slot.name
                    );
                    if let Some(c) = slot.child.as_mut() {
                        c.kill();
                    }
                    slot.dying = Some((now + self.opts.stop_grace, true));
                }
                Some(_) => {}
            }
        }
        self.slots
            .retain(|d, s| s.child.is_some() || running.iter().any(|r| r.domid == *d));
        // A restart is only due for a domain that still has a file.
        for slot in self.slots.values_mut() {
            if !configs.contains_key(&slot.name) {
                slot.restart_at = None;
            }
        }
        // Start what is missing.
        for d in &running {
            let Some(guest) = configs.get(&d.name) else {
                continue;
            };
            let slot = self.slots.entry(d.domid).or_insert_with(|| Slot {
                name: d.name.clone(),
                child: None,
                launches: Vec::new(),
                restart_at: None,
                given_up: false,
                dying: None,
            });
            if slot.child.is_some() || slot.given_up {
                continue;
            }
            if slot.restart_at.is_some_and(|t| now < t) {
                continue;
            }
            let restart = slot.restart_at.take().is_some();
            match self.launcher.launch(d.domid, guest) {
                Ok(child) => {
                    info!(
                        "domain {} ({}): backend {}",
                        d.domid,
                        d.name,
                        if restart { "restarted" } else { "started" }
                    );
                    slot.child = Some(child);
                    slot.launches.push(now);
                    self.stats.launched += 1;
                    if restart {
                        self.stats.restarts += 1;
                    }
                }
                Err(e) => {
                    slot.launches.push(now);
                    slot.launches
                        .retain(|t| now.duration_since(*t) < self.opts.restart_window);
                    if slot.launches.len() as u32 > self.opts.max_restarts {
                        error!(
                            "domain {} ({}): {e}; giving up until the domain is recreated",
                            d.domid, d.name
                        );
                        slot.given_up = true;
                    } else {
                        error!("domain {} ({}): {e}; retrying", d.domid, d.name);
                        slot.restart_at = Some(now + self.opts.restart_delay);
                    }
                }
            }
        }
        let next = self
            .slots
            .values()
            .filter_map(|s| s.restart_at.or(s.dying.map(|(t, _)| t)))
            .min();
        Ok(next)
    }

    /// Stop every backend and wait for them (bounded by `stop_grace`, then
    /// SIGKILL and another `stop_grace`).
    pub fn shutdown(&mut self) {
        for s in self.slots.values_mut() {
            if let Some(c) = s.child.as_mut() {
                c.stop();
            }
        }
        for escalate in [false, true] {
            let deadline = Instant::now() + self.opts.stop_grace;
            loop {
                let left: Vec<DomId> = self
                    .slots
                    .iter_mut()
                    .filter_map(|(d, s)| {
                        s.child
                            .as_mut()
                            .is_some_and(|c| c.try_end().is_none())
                            .then_some(*d)
                    })
                    .collect();
                if left.is_empty() {
                    self.slots.clear();
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    if !escalate {
                        warn!(
                            "backends {left:?} did not stop in {:?}: SIGKILL",
                            self.opts.stop_grace
                        );
                        for d in &left {
                            if let Some(c) = self.slots.get_mut(d).and_then(|s| s.child.as_mut()) {
                                c.kill();
                            }
                        }
                    } else {
                        error!("backends {left:?} did not end after SIGKILL");
                    }
                    break;
                }
                self.wait_wake(deadline - now);
            }
        }
    }

    fn wait_wake(&mut self, timeout: Duration) {
        if let Some(fd) = self.launcher.wake_fd() {
            let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            );
        }
        self.launcher.drain_wake();
    }

    /// Register the `@introduceDomain` / `@releaseDomain` watches on `xs`
    /// (before the first [`Supervisor::step`]).
    pub fn watch_domains<S>(&mut self, xs: &mut XsClient<S>) -> Result<(), XenError>
    where
        S: std::io::Read + std::io::Write + AsFd,
    {
        xs.watch_introduce_domain(TOKEN_INTRODUCE)
            .map_err(xs_err("watch @introduceDomain"))?;
        xs.watch_release_domain(TOKEN_RELEASE)
            .map_err(xs_err("watch @releaseDomain"))
    }

    /// Run until `stop` fires: watch the domains and reconcile on every
    /// event, every ended backend and every due restart; then stop every
    /// backend.
    pub fn run<S>(&mut self, xs: &mut XsClient<S>, stop: &StopSignal) -> Result<(), XenError>
    where
        S: std::io::Read + std::io::Write + AsFd,
    {
        self.watch_domains(xs)?;
        info!(
            "watching for domains configured in {}",
            self.opts.config_dir.display()
        );
        let mut first = true;
        let result = loop {
            match self.step(xs, stop, Some(Duration::ZERO).filter(|_| first)) {
                Ok(true) => break Ok(()),
                Ok(false) => first = false,
                Err(e) => break Err(e),
            }
        };
        self.shutdown();
        result
    }

    /// One round: wait (at most `timeout`, if given) for a watch event, an
    /// ended backend, a due restart or escalation, or `stop`; then take the
    /// queued events and reconcile. Returns whether `stop` fired.
    pub fn step<S>(
        &mut self,
        xs: &mut XsClient<S>,
        stop: &StopSignal,
        timeout: Option<Duration>,
    ) -> Result<bool, XenError>
    where
        S: std::io::Read + std::io::Write + AsFd,
    {
        if xs.pending_events() == 0 && !stop.is_triggered() {
            let limit = timeout.map(|t| Instant::now() + t);
            let until = match (self.next, limit) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = match until {
                None => PollTimeout::NONE,
                Some(t) => {
                    let ms = t.saturating_duration_since(Instant::now()).as_millis();
                    PollTimeout::try_from(i32::try_from(ms).unwrap_or(i32::MAX))
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            // SAFETY: the stop signal's eventfd outlives this call.
            let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
            let mut fds = vec![
                PollFd::new(xs.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop_fd, PollFlags::POLLIN),
            ];
            if let Some(w) = self.launcher.wake_fd() {
                fds.push(PollFd::new(w, PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(XenError::Os {
                        op: "poll",
                        source: e.into(),
                    });
                }
            }
        }
        while xs
            .try_next_event()
            .map_err(xs_err("watch events"))?
            .is_some()
        {}
        self.launcher.drain_wake();
        self.next = self.reconcile(xs)?;
        Ok(stop.is_triggered())
    }
}
