//! The virtio-blk configuration space (`struct virtio_blk_config`, virtio
//! 1.2 §5.2.4), little-endian, and the feature bits the model offers.

use super::vb;

/// Size of `struct virtio_blk_config` with every field of virtio 1.2 (the
/// secure-erase and zoned fields read as zero: those features are not
/// offered).
pub const CONFIG_SIZE: usize = 96;

/// Byte offsets of the fields.
pub mod offset {
    pub const CAPACITY: usize = 0;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
    pub const CYLINDERS: usize = 16;
    pub const HEADS: usize = 18;
    pub const SECTORS: usize = 19;
    pub const BLK_SIZE: usize = 20;
    pub const PHYSICAL_BLOCK_EXP: usize = 24;
    pub const ALIGNMENT_OFFSET: usize = 25;
    pub const MIN_IO_SIZE: usize = 26;
    pub const OPT_IO_SIZE: usize = 28;
    pub const WRITEBACK: usize = 32;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

/// Bytes per sector: the unit of `sector` and `capacity`, whatever
/// `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// Largest data segment (one descriptor's worth) accepted, in bytes.
pub const SIZE_MAX: u32 = 64 << 10;
/// Most data segments per request (also bounded by the queue size).
pub const SEG_MAX: u32 = 126;
/// Most sectors in one discard or write-zeroes segment (2 GiB, as QEMU).
pub const MAX_DISCARD_SECTORS: u32 = (1 << 22) - 1;
/// Most segments in one discard or write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 32;

/// What the config space needs to know about the disk behind the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskGeometry {
    /// Size in bytes.
    pub size: u64,
    /// Smallest unit of I/O the disk accepts.
    pub logical_block_size: u32,
    /// Physical block size (a multiple of the logical one).
    pub physical_block_size: u32,
    /// Offset of the first physically aligned logical block, in bytes.
    pub alignment_offset: u32,
    /// Suggested minimum I/O size in bytes (0: unknown).
    pub min_io_size: u32,
    /// Optimal I/O size in bytes (0: unknown).
    pub opt_io_size: u32,
}

/// The values of the config space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfigSpace {
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub cylinders: u16,
    pub heads: u8,
    pub sectors: u8,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub writeback: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfigSpace {
    /// The config of a disk with `info`, `num_queues` queues of `queue_size`
    /// entries, and the given cache mode.
    pub fn new(info: &DiskGeometry, num_queues: u16, queue_size: u16, writeback: bool) -> Self {
        let lbs = info.logical_block_size.max(SECTOR_SIZE as u32);
        let per_block = u64::from(lbs) / SECTOR_SIZE;
        // Whole logical blocks only: a trailing partial block is unusable.
        let capacity = info.size / u64::from(lbs) * per_block;
        let blocks = |bytes: u32| bytes / lbs;
        let exp = if info.physical_block_size > lbs {
            (info.physical_block_size / lbs).trailing_zeros() as u8
        } else {
            0
        };
        // Align the limits to whole logical blocks.
        let max_sectors = MAX_DISCARD_SECTORS / per_block as u32 * per_block as u32;
        // Conventional 16 heads × 63 sectors; a disk too large for that
        // reports the most cylinders the field holds.
        let cylinders = (capacity / (16 * 63)).min(u64::from(u16::MAX)) as u16;
        Self {
            capacity,
            size_max: SIZE_MAX,
            // The header and the status take two descriptors of a direct
            // chain, which cannot be longer than the queue.
            seg_max: SEG_MAX.min(u32::from(queue_size).saturating_sub(2)).max(1),
            cylinders,
            heads: 16,
            sectors: 63,
            blk_size: lbs,
            physical_block_exp: exp,
            alignment_offset: u8::try_from(blocks(info.alignment_offset)).unwrap_or(0),
            min_io_size: u16::try_from(blocks(info.min_io_size)).unwrap_or(u16::MAX),
            opt_io_size: blocks(info.opt_io_size),
            writeback: u8::from(writeback),
            num_queues,
            max_discard_sectors: max_sectors,
            max_discard_seg: MAX_DISCARD_SEG,
            discard_sector_alignment: per_block as u32,
            max_write_zeroes_sectors: max_sectors,
            max_write_zeroes_seg: MAX_DISCARD_SEG,
            // Write-zeroes with the unmap flag punches holes.
            write_zeroes_may_unmap: 1,
        }
    }

    /// The little-endian bytes the driver reads.
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        use offset::*;
        let mut b = [0u8; CONFIG_SIZE];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(CAPACITY, &self.capacity.to_le_bytes());
        put(SIZE_MAX, &self.size_max.to_le_bytes());
        put(SEG_MAX, &self.seg_max.to_le_bytes());
        put(CYLINDERS, &self.cylinders.to_le_bytes());
        put(HEADS, &[self.heads]);
        put(SECTORS, &[self.sectors]);
        put(BLK_SIZE, &self.blk_size.to_le_bytes());
        put(PHYSICAL_BLOCK_EXP, &[self.physical_block_exp]);
        put(ALIGNMENT_OFFSET, &[self.alignment_offset]);
        put(MIN_IO_SIZE, &self.min_io_size.to_le_bytes());
        put(OPT_IO_SIZE, &self.opt_io_size.to_le_bytes());
        put(WRITEBACK, &[self.writeback]);
        put(NUM_QUEUES, &self.num_queues.to_le_bytes());
        put(MAX_DISCARD_SECTORS, &self.max_discard_sectors.to_le_bytes());
        put(MAX_DISCARD_SEG, &self.max_discard_seg.to_le_bytes());
        put(
            DISCARD_SECTOR_ALIGNMENT,
            &self.discard_sector_alignment.to_le_bytes(),
        );
        put(
            MAX_WRITE_ZEROES_SECTORS,
            &self.max_write_zeroes_sectors.to_le_bytes(),
        );
        put(
            MAX_WRITE_ZEROES_SEG,
            &self.max_write_zeroes_seg.to_le_bytes(),
        );
        put(WRITE_ZEROES_MAY_UNMAP, &[self.write_zeroes_may_unmap]);
        b
    }
}

/// Feature bit `bit` as a mask.
pub const fn bit(bit: u32) -> u64 {
    1 << bit
}

/// The device-specific features offered.
pub fn offered_features(read_only: bool, num_queues: u16) -> u64 {
    let mut f = bit(vb::VIRTIO_BLK_F_SIZE_MAX)
        | bit(vb::VIRTIO_BLK_F_SEG_MAX)
        | bit(vb::VIRTIO_BLK_F_GEOMETRY)
        | bit(vb::VIRTIO_BLK_F_BLK_SIZE)
        | bit(vb::VIRTIO_BLK_F_TOPOLOGY)
        | bit(vb::VIRTIO_BLK_F_FLUSH)
        | bit(vb::VIRTIO_BLK_F_CONFIG_WCE)
        | bit(vb::VIRTIO_BLK_F_DISCARD)
        | bit(vb::VIRTIO_BLK_F_WRITE_ZEROES);
    if read_only {
        f |= bit(vb::VIRTIO_BLK_F_RO);
    }
    if num_queues > 1 {
        f |= bit(vb::VIRTIO_BLK_F_MQ);
    }
    f
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::mem::{offset_of, size_of};

    use virtio_bindings::virtio_blk::{virtio_blk_config, virtio_blk_config_virtio_blk_geometry};

    use super::*;

    #[test]
    fn offsets_match_the_uapi_layout() {
        use offset::*;
        type C = virtio_blk_config;
        type G = virtio_blk_config_virtio_blk_geometry;
        assert_eq!(size_of::<C>(), CONFIG_SIZE);
        assert_eq!(offset_of!(C, capacity), CAPACITY);
        assert_eq!(offset_of!(C, size_max), SIZE_MAX);
        assert_eq!(offset_of!(C, seg_max), SEG_MAX);
        assert_eq!(
            offset_of!(C, geometry) + offset_of!(G, cylinders),
            CYLINDERS
        );
        assert_eq!(offset_of!(C, geometry) + offset_of!(G, heads), HEADS);
        assert_eq!(offset_of!(C, geometry) + offset_of!(G, sectors), SECTORS);
        assert_eq!(offset_of!(C, blk_size), BLK_SIZE);
        assert_eq!(offset_of!(C, physical_block_exp), PHYSICAL_BLOCK_EXP);
        assert_eq!(offset_of!(C, alignment_offset), ALIGNMENT_OFFSET);
        assert_eq!(offset_of!(C, min_io_size), MIN_IO_SIZE);
        assert_eq!(offset_of!(C, opt_io_size), OPT_IO_SIZE);
        assert_eq!(offset_of!(C, wce), WRITEBACK);
        assert_eq!(offset_of!(C, num_queues), NUM_QUEUES);
        assert_eq!(offset_of!(C, max_discard_sectors), MAX_DISCARD_SECTORS);
        assert_eq!(offset_of!(C, max_discard_seg), MAX_DISCARD_SEG);
        assert_eq!(
            offset_of!(C, discard_sector_alignment),
            DISCARD_SECTOR_ALIGNMENT
        );
        assert_eq!(
            offset_of!(C, max_write_zeroes_sectors),
            MAX_WRITE_ZEROES_SECTORS
        );
        assert_eq!(offset_of!(C, max_write_zeroes_seg), MAX_WRITE_ZEROES_SEG);
        assert_eq!(
            offset_of!(C, write_zeroes_may_unmap),
            WRITE_ZEROES_MAY_UNMAP
        );
    }

    /// The constants of `vb` against Linux's uapi header as virtio-bindings
    /// has it.
    #[test]
    fn constants_match_the_uapi() {
        use virtio_bindings::virtio_blk as uapi;
        assert_eq!(vb::VIRTIO_BLK_F_SIZE_MAX, uapi::VIRTIO_BLK_F_SIZE_MAX);
        assert_eq!(vb::VIRTIO_BLK_F_SEG_MAX, uapi::VIRTIO_BLK_F_SEG_MAX);
        assert_eq!(vb::VIRTIO_BLK_F_GEOMETRY, uapi::VIRTIO_BLK_F_GEOMETRY);
        assert_eq!(vb::VIRTIO_BLK_F_RO, uapi::VIRTIO_BLK_F_RO);
        assert_eq!(vb::VIRTIO_BLK_F_BLK_SIZE, uapi::VIRTIO_BLK_F_BLK_SIZE);
        assert_eq!(vb::VIRTIO_BLK_F_FLUSH, uapi::VIRTIO_BLK_F_FLUSH);
        assert_eq!(vb::VIRTIO_BLK_F_TOPOLOGY, uapi::VIRTIO_BLK_F_TOPOLOGY);
        assert_eq!(vb::VIRTIO_BLK_F_CONFIG_WCE, uapi::VIRTIO_BLK_F_CONFIG_WCE);
        assert_eq!(vb::VIRTIO_BLK_F_MQ, uapi::VIRTIO_BLK_F_MQ);
        assert_eq!(vb::VIRTIO_BLK_F_DISCARD, uapi::VIRTIO_BLK_F_DISCARD);
        assert_eq!(
            vb::VIRTIO_BLK_F_WRITE_ZEROES,
            uapi::VIRTIO_BLK_F_WRITE_ZEROES
        );
        assert_eq!(vb::VIRTIO_BLK_T_IN, uapi::VIRTIO_BLK_T_IN);
        assert_eq!(vb::VIRTIO_BLK_T_OUT, uapi::VIRTIO_BLK_T_OUT);
        assert_eq!(vb::VIRTIO_BLK_T_FLUSH, uapi::VIRTIO_BLK_T_FLUSH);
        assert_eq!(vb::VIRTIO_BLK_T_GET_ID, uapi::VIRTIO_BLK_T_GET_ID);
        assert_eq!(vb::VIRTIO_BLK_T_DISCARD, uapi::VIRTIO_BLK_T_DISCARD);
        assert_eq!(
            vb::VIRTIO_BLK_T_WRITE_ZEROES,
            uapi::VIRTIO_BLK_T_WRITE_ZEROES
        );
        assert_eq!(u32::from(vb::VIRTIO_BLK_S_OK), uapi::VIRTIO_BLK_S_OK);
        assert_eq!(u32::from(vb::VIRTIO_BLK_S_IOERR), uapi::VIRTIO_BLK_S_IOERR);
        assert_eq!(
            u32::from(vb::VIRTIO_BLK_S_UNSUPP),
            uapi::VIRTIO_BLK_S_UNSUPP
        );
        assert_eq!(
            vb::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            uapi::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        );
        assert_eq!(vb::VIRTIO_BLK_ID_BYTES, uapi::VIRTIO_BLK_ID_BYTES as usize);
    }

    fn geometry(size: u64, lbs: u32, pbs: u32) -> DiskGeometry {
        DiskGeometry {
            size,
            logical_block_size: lbs,
            physical_block_size: pbs,
            alignment_offset: 0,
            min_io_size: pbs,
            opt_io_size: 0,
        }
    }

    #[test]
    fn bytes_are_little_endian_and_padding_zero() {
        let c = BlkConfigSpace::new(&geometry(1 << 30, 512, 4096), 4, 256, true);
        let b = c.to_bytes();
        assert_eq!(&b[0..8], &(2u64 << 20).to_le_bytes());
        assert_eq!(&b[8..12], &SIZE_MAX.to_le_bytes());
        assert_eq!(&b[12..16], &126u32.to_le_bytes());
        assert_eq!(&b[20..24], &512u32.to_le_bytes());
        assert_eq!(b[24], 3, "4096/512 = 2^3");
        assert_eq!(&b[26..28], &8u16.to_le_bytes());
        assert_eq!(b[32], 1);
        assert_eq!(b[33], 0, "unused0");
        assert_eq!(&b[34..36], &4u16.to_le_bytes());
        assert_eq!(&b[44..48], &1u32.to_le_bytes());
        assert_eq!(b[56], 1);
        assert!(b[57..].iter().all(|&x| x == 0), "unused1 and beyond");
    }

    #[test]
    fn capacity_counts_whole_logical_blocks() {
        let c = BlkConfigSpace::new(&geometry(3 * 4096 + 1000, 4096, 4096), 1, 8, false);
        assert_eq!(c.capacity, 24);
        assert_eq!(c.blk_size, 4096);
        assert_eq!(c.discard_sector_alignment, 8);
        assert_eq!(c.max_discard_sectors % 8, 0);
        assert_eq!(c.seg_max, 6, "bounded by queue size - 2");
        assert_eq!(c.physical_block_exp, 0);
    }

    #[test]
    fn features_follow_the_disk() {
        let rw = offered_features(false, 1);
        assert_eq!(rw & bit(vb::VIRTIO_BLK_F_RO), 0);
        assert_eq!(rw & bit(vb::VIRTIO_BLK_F_MQ), 0);
        assert_ne!(rw & bit(vb::VIRTIO_BLK_F_FLUSH), 0);
        let ro = offered_features(true, 2);
        assert_ne!(ro & bit(vb::VIRTIO_BLK_F_RO), 0);
        assert_ne!(ro & bit(vb::VIRTIO_BLK_F_MQ), 0);
    }
}
