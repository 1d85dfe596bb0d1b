//! vmsg-driver: a spec-derived DRIVER side of the virtio-msg transport (spec v2).
//!
//! Written from the reference text only, to test a device-side implementation
//! against the spec rather than against itself. See `README.md`.
//!
//! * [`wire`]: frame encoding/decoding and response validation.
//! * [`bus`]: the [`DriverBus`] trait a transport implements.
//! * [`driver`]: a [`Driver`] session (tokens, correlation, events, discovery).
//! * [`device`]: §5 device initialization and control ([`VirtioDevice`]).
//! * [`mem`] and [`virtq`]: guest memory allocation and split virtqueues.
//! * [`rng`]: the virtio-rng frontend ([`Rng`]).
//! * [`blk`]: the virtio-blk frontend ([`Blk`]): multiqueue, requests in flight.
//! * [`i2c`]: the virtio-i2c frontend ([`I2c`]): transactions, raw requests.
//! * [`local`]: [`DriverBus`] over vmsgd's local bus client.
//! * `ffa` (feature `ffa`): [`DriverBus`] over the FF-A bus against the
//!   simulated SPMC of `vmsg-ffa`.
//! * [`conformance`]: the device conformance suite ([`run_suite`], [`Report`]).

#![warn(missing_docs)]

pub mod blk;
pub mod bus;
pub mod conformance;
pub mod device;
pub mod driver;
#[cfg(feature = "ffa")]
pub mod ffa;
pub mod i2c;
pub mod local;
pub mod mem;
pub mod rng;
pub mod virtq;
pub mod wire;

pub use blk::Blk;
pub use bus::{BusIoError, DriverBus};
pub use conformance::{Report, run_suite, run_suite_with};
pub use device::{FeatureSet, VirtioDevice};
pub use driver::{Driver, DriverError};
pub use i2c::I2c;
pub use rng::Rng;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
pub(crate) mod fake_blk;
#[cfg(test)]
pub(crate) mod fake_i2c;
#[cfg(test)]
mod tests;
