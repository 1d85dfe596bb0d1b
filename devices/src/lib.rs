//! vmsg-devices: the virtio device models vmsgd hosts.
//!
//! Each model implements `vmsg_backend::device::VirtioDevice`; its host side
//! (entropy, block files, TAP, I²C adapters) sits behind a trait, so tests
//! can put an in-memory fake behind it. The blk engine's fake
//! (`blk::engine::FakeEngine`) is compiled for this crate's tests or with the
//! feature `fake`, never into the daemon.
//!
//! What the std models share with the FF-A secure partition (blk request
//! parsing and config space) comes from the no_std `vmsg-device-core`;
//! [`guest_dma`] shows it this side's guest memory and descriptors.

pub mod blk;
pub mod guest_dma;
pub mod i2c;
pub mod rng;
