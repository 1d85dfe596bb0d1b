//! Serving one guest instance on the RFC loopback. A registrar thread keeps
//! the kernel's device list in step with the instance's: it adds every
//! device the instance hosts with `IOCTL_VMSG_LB_ADD` (the ioctl probes the
//! device synchronously, so the instance must be answering meanwhile, which
//! is why the ioctls never run on the instance's thread), at start and
//! whenever the device table changes (hot-plug, [`Bus::devices_changed`]).
//!
//! Removal: the RFC kernel's `IOCTL_VMSG_LB_REMOVE` deadlocks inside the
//! kernel (its remove path resets the device through a transfer that takes
//! the lock REMOVE already holds; the calling thread never returns and the
//! process can then never exit). So by default vmsgd never calls it: on stop
//! the devices stay registered (their drivers' transfers time out), and a
//! removal is refused before it reaches the instance (the daemon's reload).
//! With [`LinuxUserBus::with_kernel_remove`] (config `kernel_remove = true`,
//! for a kernel whose REMOVE works) devices are removed on stop, while the
//! instance still answers, from a detached thread and within
//! [`REMOVE_DEADLINE`], so a REMOVE that does not return cannot hold the
//! daemon's shutdown. Hot-unplug is never done on this bus: REMOVE would
//! have to run before the device leaves the instance, and no kernel at hand
//! has a REMOVE that works to test that order against.
//!
//! [`Bus::devices_changed`]: crate::bus::Bus::devices_changed

use std::collections::BTreeSet;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::LinuxUserError;
use super::bus::{DeviceRegistry, LinuxUserBus};
use super::os::LoopbackKernel;
use crate::instance::{GuestInstance, ServeEnd, StopSignal};

/// How long REMOVEs may take together before vmsgd stops waiting for them
/// (only with `kernel_remove`): within the daemon's one-second stop bound.
pub const REMOVE_DEADLINE: Duration = Duration::from_millis(900);

/// Serve `instance` on `bus` until `stop` fires or the message node fails.
/// Every device of the instance is added to the kernel with its device
/// number as `dev_id`, and so is every device hot-added later; a device the
/// kernel refuses is logged and left out, the others are served.
pub fn serve_linux_user(
    instance: &mut GuestInstance,
    bus: &mut LinuxUserBus,
    stop: &StopSignal,
) -> Result<ServeEnd, LinuxUserError> {
    let kernel = bus.kernel();
    let registry = bus.registry();
    let kernel_remove = bus.kernel_remove();
    // Stops the instance once the registrar is done with the devices.
    let inner = StopSignal::new()?;
    // Tells the registrar the instance stopped on its own.
    let served = StopSignal::new()?;
    let name = instance.name().to_string();
    std::thread::scope(|s| {
        let registrar = std::thread::Builder::new()
            .name("vmsg-lb-registrar".into())
            .spawn_scoped(s, || {
                Registrar {
                    name: &name,
                    kernel: &kernel,
                    kernel_remove,
                    added: BTreeSet::new(),
                }
                .run(&registry, stop, &served, &inner)
            })
            .map_err(|source| LinuxUserError::Os {
                op: "spawning the registrar thread",
                source,
            })?;
        let end = instance.serve(bus, &inner);
        served.trigger();
        if registrar.join().is_err() {
            error!("{name}: loopback registrar panicked");
        }
        Ok(end?)
    })
}

/// The kernel's view of the guest's devices, kept by one thread.
struct Registrar<'a> {
    name: &'a str,
    kernel: &'a Arc<dyn LoopbackKernel>,
    kernel_remove: bool,
    /// Devices ADDed and not removed.
    added: BTreeSet<u32>,
}

impl Registrar<'_> {
    /// Follow the instance's device list until `stop` (or the instance
    /// ending), then stop the instance.
    fn run(
        mut self,
        registry: &DeviceRegistry,
        stop: &StopSignal,
        served: &StopSignal,
        inner: &StopSignal,
    ) {
        loop {
            if stop.is_triggered() || served.is_triggered() {
                break;
            }
            if let Some(wanted) = registry.take() {
                self.follow(&wanted, stop, served);
                continue;
            }
            wait_any(&[stop.as_raw_fd(), served.as_raw_fd(), registry.as_raw_fd()]);
        }
        if served.is_triggered() {
            // Nobody answers the message node any more: a remove path would
            // only time out.
            if !self.added.is_empty() {
                warn!(
                    "{}: message node gone; devices {:?} left registered",
                    self.name, self.added
                );
            }
        } else if self.kernel_remove {
            let ids: Vec<u32> = self.added.iter().rev().copied().collect();
            self.remove(&ids);
        } else if !self.added.is_empty() {
            info!(
                "{}: leaving loopback devices {:?} registered (kernel_remove is off: the RFC \
                 loopback's REMOVE deadlocks in the kernel); their drivers time out until reboot",
                self.name, self.added
            );
        }
        inner.trigger();
    }

    /// ADD what the instance hosts and the kernel lacks.
    fn follow(&mut self, wanted: &[u16], stop: &StopSignal, served: &StopSignal) {
        let wanted: BTreeSet<u32> = wanted.iter().map(|&d| u32::from(d)).collect();
        let gone: Vec<u32> = self.added.difference(&wanted).copied().collect();
        if !gone.is_empty() {
            // A REMOVE must run while the instance still serves the device
            // (the kernel's remove path resets it), so a device that already
            // left the instance cannot be removed cleanly: the daemon refuses
            // such reloads on this bus. Its driver's transfers now time out.
            error!(
                "{}: devices {gone:?} left the instance but stay registered in the kernel",
                self.name
            );
            for id in gone {
                self.added.remove(&id);
            }
        }
        for id in wanted.difference(&self.added.clone()) {
            if stop.is_triggered() || served.is_triggered() {
                return;
            }
            match self.add(*id) {
                Ok(()) => {
                    info!("{}: loopback device {id} added", self.name);
                    self.added.insert(*id);
                }
                Err(e) => error!("{}: IOCTL_VMSG_LB_ADD({id}): {e}", self.name),
            }
        }
    }

    /// ADD; a device of the same number left by an earlier run is replaced
    /// only where REMOVE is allowed.
    fn add(&self, id: u32) -> std::io::Result<()> {
        match self.kernel.add_device(id) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if !self.kernel_remove {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "{e}: device {id} is still registered by an earlier run, and this \
                             kernel's REMOVE deadlocks (kernel_remove is off); reboot to clear it"
                        ),
                    ));
                }
                warn!(
                    "loopback device {id} already exists (left by an earlier run?); replacing it"
                );
                match remove_within(self.kernel, &[id], REMOVE_DEADLINE).pop() {
                    Some((_, Ok(()))) => self.kernel.add_device(id),
                    Some((_, Err(e))) => Err(e),
                    None => Err(std::io::Error::other("REMOVE did not return")),
                }
            }
            r => r,
        }
    }

    fn remove(&mut self, ids: &[u32]) {
        let done = remove_within(self.kernel, ids, REMOVE_DEADLINE);
        for &id in ids {
            match done.iter().find(|(d, _)| *d == id) {
                Some((_, Ok(()))) => info!("{}: loopback device {id} removed", self.name),
                Some((_, Err(e))) => error!("{}: IOCTL_VMSG_LB_REMOVE({id}): {e}", self.name),
                None => error!(
                    "{}: IOCTL_VMSG_LB_REMOVE({id}) did not return within {REMOVE_DEADLINE:?} \
                     (a kernel whose REMOVE deadlocks needs kernel_remove = false); going on",
                    self.name
                ),
            }
            self.added.remove(&id);
        }
    }
}

/// REMOVE `ids` in order from a detached thread (a REMOVE that never
/// returns must not hold the caller); the outcomes that arrived in time.
fn remove_within(
    kernel: &Arc<dyn LoopbackKernel>,
    ids: &[u32],
    deadline: Duration,
) -> Vec<(u32, std::io::Result<()>)> {
    let (tx, rx) = mpsc::channel();
    let (kernel, list) = (kernel.clone(), ids.to_vec());
    let spawned = std::thread::Builder::new()
        .name("vmsg-lb-remove".into())
        .spawn(move || {
            for id in list {
                if tx.send((id, kernel.remove_device(id))).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        return ids
            .iter()
            .map(|&id| (id, Err(std::io::Error::new(e.kind(), e.to_string()))))
            .collect();
    }
    let end = Instant::now() + deadline;
    let mut done = Vec::new();
    while done.len() < ids.len() {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(r) => done.push(r),
            Err(_) => break,
        }
    }
    done
}

/// Block until one of `fds` is readable (or poll fails, which is logged).
fn wait_any(fds: &[std::os::fd::RawFd]) {
    loop {
        let mut polled = Vec::with_capacity(fds.len());
        for &fd in fds {
            // SAFETY: the fds belong to signals and the registry, which
            // outlive this call; the borrows only live for the poll.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            polled.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut polled, PollTimeout::NONE) {
            Ok(n) if n > 0 => return,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => {
                error!("poll in the loopback registrar: {e}");
                return;
            }
        }
    }
}
