//! The vmsgd daemon as a library: configuration, logging, running guests and
//! the quickstart demo. The `vmsgd` binary is a thin CLI over it, and
//! `vmsgctl` embeds it to test a daemon it starts itself.

pub mod config;
pub mod daemon;
pub mod demo;
pub mod devices;
pub mod error;
pub mod logging;
pub mod reload;
pub mod xen;
