//! Guest memory as the devices see it.
//!
//! Devices access guest memory only through `vm-memory`, with volatile
//! accesses, because a hostile guest mutates it concurrently. Today every
//! bus maps guest RAM as plain mmap regions (the local bus maps the driver's
//! memfd). The Xen grant and foreign mappings and FF-A areas will become
//! further region types behind this same alias, not new code paths.

use std::sync::Arc;

/// The guest memory type devices are written against.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// A cheap, shareable handle on one guest's memory.
pub type GuestMemoryHandle = Arc<GuestMemory>;
