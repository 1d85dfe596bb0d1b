//! Serving one guest instance on the RFC loopback: the devices are added
//! with `IOCTL_VMSG_LB_ADD` from a registrar thread (the ioctl probes the
//! device synchronously, so the instance must already be answering on the
//! message node), and removed with `IOCTL_VMSG_LB_REMOVE` on shutdown while
//! the instance still answers (the kernel driver's remove path talks to the
//! device).

use std::os::fd::BorrowedFd;

use log::{error, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::LinuxUserError;
use super::bus::LinuxUserBus;
use super::os::LoopbackKernel;
use crate::instance::{GuestInstance, ServeEnd, StopSignal};

/// Serve `instance` on `bus` until `stop` fires (devices removed first) or
/// the message node fails. Every device of the instance is added to the
/// kernel with its device number as `dev_id`; a device the kernel refuses
/// is logged and left out, the others are served.
pub fn serve_linux_user(
    instance: &mut GuestInstance,
    bus: &mut LinuxUserBus,
    stop: &StopSignal,
) -> Result<ServeEnd, LinuxUserError> {
    let dev_ids: Vec<u32> = instance
        .stats()
        .devices
        .keys()
        .map(|&d| u32::from(d))
        .collect();
    let kernel = bus.kernel();
    // Stops the instance once the devices are removed.
    let inner = StopSignal::new()?;
    // Tells the registrar the instance stopped on its own.
    let served = StopSignal::new()?;
    let name = instance.name().to_string();
    std::thread::scope(|s| {
        let registrar = std::thread::Builder::new()
            .name("vmsg-lb-registrar".into())
            .spawn_scoped(s, || {
                registrar(&name, &*kernel, &dev_ids, stop, &served, &inner)
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

/// ADD every device, wait for `stop` (or the instance ending), REMOVE them
/// while the instance still serves, then stop the instance. Returns whether
/// the devices were removed.
fn registrar(
    name: &str,
    kernel: &dyn LoopbackKernel,
    dev_ids: &[u32],
    stop: &StopSignal,
    served: &StopSignal,
    inner: &StopSignal,
) -> bool {
    let mut added = Vec::new();
    for &id in dev_ids {
        if stop.is_triggered() || served.is_triggered() {
            break;
        }
        match add(kernel, id) {
            Ok(()) => {
                info!("{name}: loopback device {id} added");
                added.push(id);
            }
            Err(e) => error!("{name}: IOCTL_VMSG_LB_ADD({id}): {e}"),
        }
    }
    wait_either(stop, served);
    let removed = if served.is_triggered() {
        // Nobody answers the message node any more: the remove path would
        // only time out. A later start removes the stale devices (EEXIST).
        if !added.is_empty() {
            warn!("{name}: message node gone; devices {added:?} left registered");
        }
        false
    } else {
        for &id in added.iter().rev() {
            match kernel.remove_device(id) {
                Ok(()) => info!("{name}: loopback device {id} removed"),
                Err(e) => error!("{name}: IOCTL_VMSG_LB_REMOVE({id}): {e}"),
            }
        }
        true
    };
    inner.trigger();
    removed
}

/// ADD, replacing a stale device of the same number left by an earlier run.
fn add(kernel: &dyn LoopbackKernel, id: u32) -> std::io::Result<()> {
    match kernel.add_device(id) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            warn!("loopback device {id} already exists (left by an earlier run?); replacing it");
            kernel.remove_device(id)?;
            kernel.add_device(id)
        }
        r => r,
    }
}

fn wait_either(a: &StopSignal, b: &StopSignal) {
    loop {
        // SAFETY: both eventfds are owned by the signals, which outlive this
        // call; the borrows only live for the poll.
        let (fa, fb) = unsafe {
            (
                BorrowedFd::borrow_raw(a.as_raw_fd()),
                BorrowedFd::borrow_raw(b.as_raw_fd()),
            )
        };
        let mut fds = [
            PollFd::new(fa, PollFlags::POLLIN),
            PollFd::new(fb, PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => return,
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => {
                error!("poll on the stop signals: {e}");
                return;
            }
        }
    }
}
