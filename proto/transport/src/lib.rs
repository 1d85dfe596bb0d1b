//! vmsg-transport: the device side of the virtio-msg transport as pure
//! `no_std` + `alloc` logic, shared by the daemon and the FF-A partition image.
//!
//! - [`device`]: the per-device transport state machine (spec v2 §3–§6).
//! - [`bus`]: bus messages a device-side bus instance answers (GET_DEVICES, PING, EVENT_DEVICE).
//! - `ring`: the shared-memory single-producer/single-consumer message ring.
#![no_std]

extern crate alloc;

pub mod bus;
pub mod device;
pub mod ring;
