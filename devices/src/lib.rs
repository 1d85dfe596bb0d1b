//! vmsg-devices: the virtio device models vmsgd hosts.
//!
//! Each model implements `vmsg_backend::device::VirtioDevice`; its host side
//! (entropy, block files, TAP, I²C adapters) sits behind a trait, so tests
//! can put an in-memory fake behind it. The blk engine's fake
//! (`blk::engine::FakeEngine`) is compiled for this crate's tests or with the
//! feature `fake`, never into the daemon.

pub mod blk;
pub mod i2c;
pub mod rng;
