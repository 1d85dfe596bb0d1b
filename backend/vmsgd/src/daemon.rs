//! Running the configured guests: one thread per guest, each owning its bus
//! listener and its devices, so that one guest's failure or slowness never
//! reaches another's.

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{error, info};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vmsg_backend::hotplug::DeviceControl;
use vmsg_backend::instance::{
    GuestInstance, Inspector, InstanceError, InstanceOptions, InstanceReport, InstanceStats,
    ServeEnd, StopSignal,
};
use vmsg_backend::linux_user::{LinuxUserBus, LinuxUserOptions, serve_linux_user};
use vmsg_backend::local::{LocalBusError, LocalBusListener, LocalServerOptions};
use vmsg_backend::rate_limited;

use crate::config::{BusConfig, Config, GuestConfig};
use crate::devices::build_devices;
pub use crate::error::DaemonError;
use crate::reload::{ReloadError, reload_guest};

/// The bus a guest is served on.
enum GuestBus {
    Local(LocalBusListener),
    LinuxUser(Box<LinuxUserBus>, PathBuf),
}

/// Serve the kernel's loopback bus until stopped.
fn serve_kernel(
    mut instance: GuestInstance,
    bus: &mut LinuxUserBus,
    control: &std::path::Path,
    stop: &StopSignal,
    stats: &Mutex<InstanceStats>,
) -> Result<(), DaemonError> {
    let guest = instance.name().to_string();
    let result = serve_linux_user(&mut instance, bus, stop);
    if let Ok(mut s) = stats.lock() {
        *s = instance.stats();
    }
    result.map(|_| ()).map_err(|source| DaemonError::LinuxUser {
        guest,
        path: control.to_path_buf(),
        source,
    })
}

/// A running guest.
#[derive(Debug)]
struct GuestHandle {
    name: String,
    /// What it runs now (updated by reloads).
    config: GuestConfig,
    control: DeviceControl,
    inspector: Inspector,
    stats: Arc<Mutex<InstanceStats>>,
    thread: JoinHandle<Result<(), DaemonError>>,
}

/// The running daemon: a thread per guest.
#[derive(Debug)]
pub struct Daemon {
    guests: Vec<GuestHandle>,
    stop: StopSignal,
}

impl Daemon {
    /// Bind every guest's bus and start serving. Fails before any guest runs
    /// if any guest cannot be set up.
    pub fn start(config: &Config, stop: StopSignal) -> Result<Self, DaemonError> {
        let mut prepared = Vec::new();
        for guest in &config.guests {
            if let BusConfig::Xen { .. } = guest.bus {
                return Err(DaemonError::XenGuest {
                    guest: guest.name.clone(),
                });
            }
            let devices = build_devices(guest)?;
            let (profile, poll_spin_us) = match &guest.bus {
                BusConfig::Local {
                    profile,
                    poll_spin_us,
                    ..
                } => (*profile, *poll_spin_us),
                BusConfig::LinuxUser { profile, .. } => (*profile, 0),
                BusConfig::Xen {
                    profile,
                    poll_spin_us,
                    ..
                } => (*profile, *poll_spin_us),
            };
            let options = InstanceOptions {
                profile: profile.into(),
                poll_spin: std::time::Duration::from_micros(poll_spin_us),
            };
            let instance =
                GuestInstance::new(guest.name.clone(), options, devices).map_err(|source| {
                    DaemonError::Instance {
                        guest: guest.name.clone(),
                        source,
                    }
                })?;
            let listener = match &guest.bus {
                BusConfig::Local {
                    socket,
                    max_msg_size,
                    ..
                } => {
                    let server = LocalServerOptions {
                        max_msg_size: *max_msg_size as usize,
                        // A driver asking for another wire profile is refused
                        // at the handshake, with both names in the reason.
                        profile: vmsg_backend::local::profile_id(options.profile),
                        ..LocalServerOptions::default()
                    };
                    let listener = LocalBusListener::bind(socket, server).map_err(|source| {
                        DaemonError::Bus {
                            guest: guest.name.clone(),
                            path: socket.clone(),
                            source,
                        }
                    })?;
                    info!(
                        "guest {}: listening on {} ({} devices)",
                        guest.name,
                        socket.display(),
                        guest.devices.len()
                    );
                    GuestBus::Local(listener)
                }
                BusConfig::LinuxUser {
                    control,
                    channel,
                    reserved_memory,
                    pool_base,
                    kernel_remove,
                    ..
                } => {
                    let opts = LinuxUserOptions {
                        control: control.clone(),
                        channel: channel.clone(),
                        pool_base: *pool_base,
                        reserved_memory: reserved_memory.clone(),
                        kernel_remove: *kernel_remove,
                    };
                    let bus =
                        LinuxUserBus::open(&opts).map_err(|source| DaemonError::LinuxUser {
                            guest: guest.name.clone(),
                            path: control.clone(),
                            source,
                        })?;
                    info!(
                        "guest {}: serving the kernel's loopback bus {} ({} devices)",
                        guest.name,
                        control.display(),
                        guest.devices.len()
                    );
                    GuestBus::LinuxUser(Box::new(bus), control.clone())
                }
                BusConfig::Xen { .. } => {
                    return Err(DaemonError::XenGuest {
                        guest: guest.name.clone(),
                    });
                }
            };
            prepared.push((guest.clone(), instance, listener));
        }
        let mut guests = Vec::new();
        for (config, instance, listener) in prepared {
            let name = instance.name().to_string();
            let control = instance.device_control();
            let inspector = instance.inspector();
            let stats = Arc::new(Mutex::new(InstanceStats::default()));
            let thread_stats = stats.clone();
            let thread_stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("guest-{name}"))
                .spawn(move || match listener {
                    GuestBus::Local(listener) => {
                        serve_local(instance, &listener, &thread_stop, &thread_stats)
                    }
                    GuestBus::LinuxUser(mut bus, control) => {
                        serve_kernel(instance, &mut bus, &control, &thread_stop, &thread_stats)
                    }
                })
                .map_err(|source| DaemonError::Spawn {
                    guest: name.clone(),
                    source,
                })?;
            guests.push(GuestHandle {
                name,
                config,
                control,
                inspector,
                stats,
                thread,
            });
        }
        Ok(Self { guests, stop })
    }

    /// Every guest's report (`vmsgctl status`/`stats`), each asked of its
    /// instance with `timeout`; `None` for a guest that did not answer.
    pub fn reports(&self, timeout: Duration) -> Vec<(String, Option<InstanceReport>)> {
        self.inspectors()
            .into_iter()
            .map(|(name, i)| (name, i.report(timeout)))
            .collect()
    }

    /// The guests' names and inspectors (for the control socket's thread).
    pub fn inspectors(&self) -> Vec<(String, Inspector)> {
        self.guests
            .iter()
            .map(|g| (g.name.clone(), g.inspector.clone()))
            .collect()
    }

    /// Counters of guest `name` as of its last disconnect.
    pub fn stats(&self, name: &str) -> Option<InstanceStats> {
        self.guests
            .iter()
            .find(|g| g.name == name)
            .and_then(|g| g.stats.lock().ok().map(|s| s.clone()))
    }

    /// Apply an edited configuration to the running guests: device changes
    /// are carried out live (`crate::reload`); what needs a restart is
    /// returned, and those guests keep running as they were.
    pub fn reload(&mut self, new: &Config) -> Vec<ReloadError> {
        let mut errors = Vec::new();
        for g in &mut self.guests {
            let Some(fresh) = new.guests.iter().find(|n| n.name == g.name) else {
                errors.push(ReloadError::GuestRemoved(g.name.clone()));
                continue;
            };
            match reload_guest(&g.control, &g.config, fresh) {
                Ok(_) => g.config = fresh.clone(),
                Err(e) => errors.push(e),
            }
        }
        for n in &new.guests {
            if !self.guests.iter().any(|g| g.name == n.name) {
                errors.push(ReloadError::GuestAdded(n.name.clone()));
            }
        }
        errors
    }

    /// Stop every guest and wait for them. Returns the first guest error.
    pub fn shutdown(self) -> Result<(), DaemonError> {
        self.stop.trigger();
        self.join()
    }

    /// Wait for every guest thread (they end when the stop signal fires).
    pub fn join(self) -> Result<(), DaemonError> {
        let mut first = None;
        for g in self.guests {
            match g.thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    error!("{e}");
                    first.get_or_insert(e);
                }
                Err(_) => error!("guest {}: thread panicked", g.name),
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Serve one guest's local bus until stopped: accept a driver, serve it until
/// it disconnects (devices reset), accept the next.
fn serve_local(
    mut instance: GuestInstance,
    listener: &LocalBusListener,
    stop: &StopSignal,
    stats: &Mutex<InstanceStats>,
) -> Result<(), DaemonError> {
    let guest = instance.name().to_string();
    loop {
        // SAFETY: both fds are owned by objects that outlive this call.
        let (lfd, sfd) = unsafe {
            (
                BorrowedFd::borrow_raw(listener.as_raw_fd()),
                BorrowedFd::borrow_raw(stop.as_raw_fd()),
            )
        };
        let mut fds = [
            PollFd::new(lfd, PollFlags::POLLIN),
            PollFd::new(sfd, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                return Err(DaemonError::Instance {
                    guest,
                    source: InstanceError::Os {
                        op: "poll",
                        source: e.into(),
                    },
                });
            }
        }
        if stop.is_triggered() {
            return Ok(());
        }
        let mut bus = match listener.accept_or_stop(sfd) {
            Ok(bus) => bus,
            Err(LocalBusError::Stopped) => return Ok(()),
            Err(e) => {
                // A bad handshake is the peer's problem, not the guest's end.
                rate_limited!(
                    instance.log_limiter(),
                    warn,
                    "guest {guest}: refused a connection: {e}"
                );
                continue;
            }
        };
        let end = instance.serve(&mut bus, stop);
        if let Ok(mut s) = stats.lock() {
            *s = instance.stats();
        }
        match end {
            Ok(ServeEnd::Stopped) => return Ok(()),
            Ok(ServeEnd::Disconnected) => rate_limited!(
                instance.log_limiter(),
                info,
                "guest {guest}: driver disconnected"
            ),
            Err(e) => rate_limited!(
                instance.log_limiter(),
                warn,
                "guest {guest}: connection ended: {e}"
            ),
        }
    }
}
