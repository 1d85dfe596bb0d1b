//! The daemon's error type: what can go wrong building a guest's devices,
//! setting up its bus or running it. Its own module so that everything that
//! builds devices or runs guests (`devices`, `daemon`, `reload`, `xen`)
//! shares it without importing one another.

use std::path::PathBuf;

use thiserror::Error;
use vmsg_backend::instance::InstanceError;
use vmsg_backend::linux_user::LinuxUserError;
use vmsg_backend::local::LocalBusError;
use vmsg_devices::blk::BlkError;
use vmsg_devices::i2c::I2cError;
use vmsg_devices::rng::RngError;

/// Errors starting or running the daemon.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// An rng device could not be created.
    #[error("guest {guest}: device {dev_num} ({kind}): {source}")]
    Device {
        guest: String,
        dev_num: u16,
        kind: &'static str,
        #[source]
        source: RngError,
    },
    /// A block device could not be created (image not openable, io_uring
    /// unavailable, bad geometry).
    #[error("guest {guest}: device {dev_num} (blk): {source}")]
    Blk {
        guest: String,
        dev_num: u16,
        #[source]
        source: BlkError,
    },
    /// An i2c device could not be created (host adapter missing, not
    /// i2c-dev, an EEPROM backing file unusable).
    #[error("guest {guest}: device {dev_num} (i2c): {source}")]
    I2c {
        guest: String,
        dev_num: u16,
        #[source]
        source: I2cError,
    },
    /// The guest's bus could not be set up.
    #[error("guest {guest}: bus socket {path}: {source}")]
    Bus {
        guest: String,
        path: PathBuf,
        #[source]
        source: LocalBusError,
    },
    /// The Linux loopback bus could not be opened or failed.
    #[error("guest {guest}: Linux loopback bus {path}: {source}")]
    LinuxUser {
        guest: String,
        path: PathBuf,
        #[source]
        source: LinuxUserError,
    },
    /// The instance could not be created or failed.
    #[error("guest {guest}: {source}")]
    Instance {
        guest: String,
        #[source]
        source: InstanceError,
    },
    /// A Xen guest in the main configuration: Xen domains are served one
    /// process each, by `vmsgd watch` or `vmsgd run --domain`.
    #[error(
        "guest {guest}: Xen guests are served by `vmsgd watch` (or `vmsgd run --domain {guest}`) from /etc/vmsgd/domains/{guest}.toml, not by --config"
    )]
    XenGuest { guest: String },
    /// A guest thread could not be started.
    #[error("guest {guest}: spawning its thread: {source}")]
    Spawn {
        guest: String,
        #[source]
        source: std::io::Error,
    },
}
