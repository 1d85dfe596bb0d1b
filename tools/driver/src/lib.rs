//! vmsg-driver: a spec-derived DRIVER side of the virtio-msg transport (spec v2).
//!
//! Written from the reference text only, to test a device-side implementation
//! against the spec rather than against itself. See `README.md`.
//!
//! * [`wire`]: frame encoding/decoding and response validation.
//! * [`bus`]: the [`DriverBus`] trait a transport implements.
//! * [`driver`]: a [`Driver`] session (tokens, correlation, events, discovery).

pub mod bus;
pub mod driver;
pub mod wire;

pub use bus::{BusIoError, DriverBus};
pub use driver::{Driver, DriverError};
pub mod device;
pub mod mem;
pub mod rng;
pub mod virtq;

pub mod conformance;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
