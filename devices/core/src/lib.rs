//! The device side of virtio over virtio-msg without `std`: what vmsgd's
//! FF-A secure partition runs, and what the std daemon shares with it.
//!
//! * [`memory`]: the driver's memory as the device reaches it, by **bus
//!   address** (FF-A area addresses, a DMA pool's physical addresses), every
//!   access bounds-checked.
//! * [`virtq`]: the device side of a split virtqueue (virtio 1.2 §2.7):
//!   descriptor chains with indirect tables, used ring, EVENT_IDX.
//! * [`host`]: one device on a bus instance: the `vmsg-transport` state
//!   machine, the model, its live queues, and the events they produce.
//! * [`rng`], [`blk`]: device models whose request handling both sides use.
//!
//! The std daemon keeps `virtio-queue`/`vm-memory` for its queues (measured
//! faster there: docs/performance.md, "Split virtqueue") and shares the
//! request parsing and config space, through `vmsg_devices::guest_dma`.
#![no_std]

extern crate alloc;

pub mod blk;
pub mod host;
pub mod memory;
pub mod rng;
pub mod virtq;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
