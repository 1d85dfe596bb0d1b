//! The virtio-msg bus over Arm FF-A, **device role**, without `std`: what
//! vmsgd's secure partition (`ffa/sp`) runs, and what the tests drive
//! against a simulated SPMC. Reference: `virtio-msg-v2.md` §8 (DEN0153) and
//! `interop.md` §3.4 (the RFC bus); the binding as vmsgd implements it is
//! `docs/ffa.md`.
//!
//! * [`msg`]: the FF-A bus messages (VERSION, AREA_SHARE/UNSHARE, RESET,
//!   EVENT_POLL, EVENT_CONFIGURE, FIFO_CONFIGURE, ERROR, AREA_RELEASE) in
//!   both generations ([`msg::FfaProfile`]).
//! * [`bus`]: [`bus::FfaBus`], one bus instance for one driver endpoint,
//!   answering every direct message with one response frame.
//! * [`fifo`]: the VFFAFIFO rings (where the SPMC has notifications).
//! * [`window`]: driver memory the partition mapped, reached by bus address.
//! * [`spmc`]: what the bus asks of the SPMC (memory retrieve, relinquish,
//!   notifications).
//! * [`partition`]: a partition's answer to each message the SPMC hands it
//!   (which service, the frame in and out of the registers).
#![no_std]

extern crate alloc;

pub mod bus;
pub mod fifo;
pub mod msg;
pub mod partition;
pub mod spmc;
pub mod window;

#[cfg(any(test, feature = "fake"))]
pub mod fake;
