//! vmsg-devices: the virtio device models vmsgd hosts.
//!
//! Each model implements `vmsg_backend::device::VirtioDevice`; its host side
//! (entropy, block files, TAP, I²C adapters) sits behind a trait with an
//! in-memory fake for tests.

pub mod blk;
pub mod rng;
