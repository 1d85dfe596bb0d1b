//! vmsg-backend: the bus-neutral device side of vmsgd.
//!
//! See `docs/architecture.md` for where each piece lives.

pub mod bus;
pub mod local;
pub mod memory;
