//! The vmsgd daemon as a library: configuration, logging, building devices,
//! running guests, reloads, Xen domains. The `vmsgd` binary
//! (`src/bin/vmsgd/`) is a thin CLI over it plus the quickstart demo, and
//! `vmsgctl` embeds it to test a daemon it starts itself. The library does
//! not use the driver side (`vmsg-driver`); only the binary's demo does.

pub mod config;
pub mod control;
pub mod daemon;
pub mod devices;
pub mod error;
pub mod logging;
pub mod reload;
pub mod sandbox;
pub mod xen;
