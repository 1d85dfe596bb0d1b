//! The std daemon's guest memory and descriptors as `vmsg-device-core`
//! sees them, so the models here share its no_std request parsing and
//! config space with the FF-A secure partition.
//!
//! * [`GuestDma`]: a `vm-memory` guest memory as a
//!   [`DmaMemory`](vmsg_device_core::memory::DmaMemory). Guest addresses are
//!   the bus addresses of every std bus (the local bus, the Linux loopback
//!   and Xen map guest RAM at the addresses the driver uses).
//! * [`core_desc`]: a `virtio-queue` descriptor as a core
//!   [`Desc`](vmsg_device_core::virtq::Desc). The std models keep
//!   `virtio-queue` for the rings themselves (docs/performance.md, "Split
//!   virtqueue: virtio-queue against vmsg-device-core", says why).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmsg_backend::memory::GuestMemory;
use vmsg_device_core::memory::{DmaMemory, MemoryError};
use vmsg_device_core::virtq::Desc;

/// Guest memory reached by bus address: every access goes through
/// `vm-memory`'s volatile copies and region lookup, so an address outside
/// the guest's regions fails instead of touching anything else, and a
/// write that does not wholly fit stores nothing.
#[derive(Clone, Copy, Debug)]
pub struct GuestDma<'a>(pub &'a GuestMemory);

impl DmaMemory for GuestDma<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemoryError {
                addr,
                len: buf.len() as u64,
            })
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let err = MemoryError {
            addr,
            len: data.len() as u64,
        };
        // vm-memory stores the part of a straddling write that fits before
        // it fails; the core's memories (the fake, the partition's windows)
        // store all or nothing, so check the whole range first.
        if !self.check(addr, err.len) {
            return Err(err);
        }
        self.0
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| err)
    }

    fn check(&self, addr: u64, len: u64) -> bool {
        // A range that wraps the address space is outside memory: vm-memory
        // would report it as an error item, but say so before asking.
        addr.checked_add(len).is_some()
            && usize::try_from(len)
                .is_ok_and(|l| GuestMemoryBackend::check_range(self.0, GuestAddress(addr), l))
    }
}

/// A `virtio-queue` split descriptor as the core parsers take it.
pub fn core_desc(d: Descriptor) -> Desc {
    Desc {
        addr: d.addr().0,
        len: d.len(),
        flags: d.flags(),
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::GuestMemoryMmap;

    use super::*;

    /// Two regions with a hole between them: [0x1000, 0x2000) and
    /// [0x3000, 0x4000).
    fn memory() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x3000), 0x1000),
        ])
        .expect("guest memory")
    }

    #[test]
    fn reads_and_writes_reach_guest_memory_by_address() {
        let mem = memory();
        let dma = GuestDma(&mem);
        dma.write(0x1ff0, &[1, 2, 3, 4]).expect("inside the region");
        let mut direct = [0u8; 4];
        mem.read_slice(&mut direct, GuestAddress(0x1ff0))
            .expect("written");
        assert_eq!(direct, [1, 2, 3, 4]);
        mem.write_slice(&[9, 8], GuestAddress(0x3000))
            .expect("second region");
        let mut back = [0u8; 2];
        dma.read(0x3000, &mut back)
            .expect("inside the second region");
        assert_eq!(back, [9, 8]);
        assert_eq!(dma.read_u16(0x3000), Ok(u16::from_le_bytes([9, 8])));
    }

    #[test]
    fn accesses_outside_guest_memory_fail_and_change_nothing() {
        let mem = memory();
        let dma = GuestDma(&mem);
        let mut buf = [0u8; 8];
        // Straddling the hole, below the first region, past the last, and
        // wrapping the address space.
        for addr in [0x1ffc, 0x0ff8, 0x3ffc, u64::MAX - 3] {
            assert_eq!(
                dma.read(addr, &mut buf),
                Err(MemoryError { addr, len: 8 }),
                "{addr:#x}"
            );
            assert!(dma.write(addr, &[0xaa; 8]).is_err(), "{addr:#x}");
            assert!(!dma.check(addr, 8), "{addr:#x}");
        }
        assert!(!dma.check(0x1000, u64::MAX));
        assert!(dma.check(0x1000, 0x1000));
        assert!(dma.check(0x3ff8, 8));
        let mut first = [0u8; 4];
        mem.read_slice(&mut first, GuestAddress(0x1ffc))
            .expect("inside");
        assert_eq!(first, [0; 4], "a failed straddling write wrote nothing");
    }

    #[test]
    fn descriptors_keep_address_length_and_flags() {
        let raw = RawDescriptor::from(Descriptor::new(
            0x1234_5678_9abc,
            4096,
            (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            7,
        ));
        let d = core_desc(Descriptor::from(raw));
        assert_eq!(
            d,
            Desc {
                addr: 0x1234_5678_9abc,
                len: 4096,
                flags: (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
            }
        );
        assert!(d.has_next() && d.is_write());
    }
}
