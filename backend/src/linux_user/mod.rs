//! The Linux RFC virtio-msg *loopback* bus: vmsgd provides virtio devices to
//! the kernel it runs on, whose own virtio drivers (virtio-rng, virtio-blk,
//! …) then drive them (interop §3.2–§3.3, `docs/linux-user-bus.md`).
//!
//! * `/dev/virtio-msg-lb` ([`LoopbackKernel`]): the DMA pool every virtio
//!   buffer of these devices lives in (a `restricted-dma-pool` named
//!   `vmsglb` in the device tree; size by `lseek(SEEK_END)`, mapped with
//!   `mmap`), and the ADD/REMOVE ioctls that create and delete devices.
//! * `/dev/virtio-msg-N` ([`MsgChannel`]): RFC2 frames of 44 bytes; a
//!   blocking `read` returns the kernel's next request, a `write` answers it
//!   or signals EVENT_USED.
//!
//! [`LinuxUserBus`] implements [`crate::bus::Bus`] on them (the instance
//! must use [`vmsg_proto::Profile::Rfc2`]); [`serve_linux_user`] runs an
//! instance on it and adds/removes its devices. Guest addresses are physical
//! addresses inside the pool, which is mapped at its physical base.
//!
//! Daemon wiring:
//!
//! ```no_run
//! # use vmsg_backend::instance::{GuestInstance, InstanceOptions, StopSignal};
//! # use vmsg_backend::linux_user::{LinuxUserBus, LinuxUserOptions, serve_linux_user};
//! # fn f(mut instance: GuestInstance, stop: StopSignal) -> Result<(), Box<dyn std::error::Error>> {
//! let mut bus = LinuxUserBus::open(&LinuxUserOptions::default())?;
//! serve_linux_user(&mut instance, &mut bus, &stop)?;
//! # Ok(()) }
//! ```
//!
//! [`fake_kernel`] (tests, or feature `fake-kernel`) is a fake of the kernel
//! side behind the same traits.

mod bus;
#[cfg(any(test, feature = "fake-kernel"))]
pub mod fake_kernel;
mod os;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

pub use bus::{LinuxUserBus, LinuxUserStats};
pub use os::{
    FRAME_SIZE, IOCTL_VMSG_LB_ADD, IOCTL_VMSG_LB_REMOVE, LoopbackKernel, MsgChannel, PoolRegion,
    RealLoopback, find_pool,
};
pub use serve::{REMOVE_DEADLINE, serve_linux_user};

use crate::instance::InstanceError;

/// Errors of the loopback bus.
#[derive(Debug, Error)]
pub enum LinuxUserError {
    /// A device node could not be opened.
    #[error("opening {path}: {source}")]
    Open {
        /// The node.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pool's physical base could not be found.
    #[error("loopback pool base: {source} (set pool_base to override)")]
    PoolBase {
        #[source]
        source: std::io::Error,
    },
    /// The pool is unusable.
    #[error("loopback pool: {0}")]
    Pool(String),
    /// An OS call failed.
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The instance failed.
    #[error(transparent)]
    Instance(#[from] InstanceError),
}

/// Where the loopback's pieces are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxUserOptions {
    /// The control node. Default `/dev/virtio-msg-lb`.
    pub control: PathBuf,
    /// The message node. Default `/dev/virtio-msg-0` (the RFC driver
    /// registers the loopback's user interface first, so it gets number 0).
    pub channel: PathBuf,
    /// Physical base of the pool; `None` reads it from the `vmsglb@…` node
    /// under [`LinuxUserOptions::reserved_memory`].
    pub pool_base: Option<u64>,
    /// The device tree's reserved-memory directory. Default
    /// `/proc/device-tree/reserved-memory`.
    pub reserved_memory: PathBuf,
    /// REMOVE devices on stop and on hot-unplug. Default off: the RFC
    /// loopback's REMOVE deadlocks inside the kernel (`serve_linux_user`).
    pub kernel_remove: bool,
}

impl Default for LinuxUserOptions {
    fn default() -> Self {
        Self {
            control: "/dev/virtio-msg-lb".into(),
            channel: "/dev/virtio-msg-0".into(),
            pool_base: None,
            reserved_memory: "/proc/device-tree/reserved-memory".into(),
            kernel_remove: false,
        }
    }
}

impl LinuxUserBus {
    /// Open the real device nodes, find the pool's base and map the pool.
    pub fn open(opts: &LinuxUserOptions) -> Result<Self, LinuxUserError> {
        let kernel = RealLoopback::open(&opts.control, &opts.channel).map_err(|source| {
            LinuxUserError::Open {
                path: opts.control.clone(),
                source,
            }
        })?;
        let base = match opts.pool_base {
            Some(b) => b,
            None => {
                let region = find_pool(&opts.reserved_memory)
                    .map_err(|source| LinuxUserError::PoolBase { source })?;
                let size = kernel.pool_size().map_err(|source| LinuxUserError::Os {
                    op: "lseek(SEEK_END) on the pool",
                    source,
                })?;
                if region.size != size {
                    log::warn!(
                        "device tree says the vmsglb pool is {:#x} bytes, the driver {size:#x}",
                        region.size
                    );
                }
                region.base
            }
        };
        log::info!(
            "loopback: {} / {}, pool at {base:#x}",
            opts.control.display(),
            opts.channel.display()
        );
        Ok(Self::with_kernel(Arc::new(kernel), base)?.with_kernel_remove(opts.kernel_remove))
    }
}

#[cfg(test)]
mod tests;
