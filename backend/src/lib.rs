//! vmsg-backend: the bus-neutral device side of vmsgd.
//!
//! - [`bus`]: the `Bus` trait every bus instance implements.
//! - [`memory`]: guest memory as devices see it (`vm-memory`).
//! - [`device`]: the `VirtioDevice` trait and the per-device host joining a
//!   model, its transport state machine and its virtqueues.
//! - [`instance`]: a guest's device table and the event loop serving it.
//! - [`hotplug`]: adding and removing a guest's devices while it is served.
//! - [`local`]: the built-in local bus (Unix socket + memfd + eventfds).
//! - [`ratelog`]: per-guest rate limits of the log lines a guest can cause.
//! - [`linux_user`]: the Linux RFC loopback bus (`/dev/virtio-msg-lb`,
//!   `/dev/virtio-msg-N`): devices for the kernel vmsgd runs on.
//! - `fake` (tests, or feature `fake`): an in-memory bus for tests and
//!   fuzzing; not in the daemon.
//!
//! See `docs/architecture.md` for the whole picture.

pub mod bus;
pub mod device;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod hotplug;
pub mod instance;
pub mod linux_user;
pub mod local;
pub mod memory;
pub mod ratelog;
