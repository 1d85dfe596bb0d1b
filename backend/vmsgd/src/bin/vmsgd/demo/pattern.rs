//! What the demo driver writes to its disk, where: shared by the demo's two
//! sides and by the tests that check an image after a driver process ran
//! (`tests/blk_daemon.rs` includes this file).

use vmsg_driver::blk;

/// Where on the disk the demo driver writes its pattern (sector).
pub const DISK_SECTOR: u64 = 2048;
/// Sectors at the start of the pattern the driver zeroes again with
/// WRITE_ZEROES.
pub const ZEROED_SECTORS: u64 = 8;

/// The demo driver's disk pattern for `len` bytes at `first_sector`:
/// deterministic, every 512-byte sector starts with its number.
pub fn disk_pattern(first_sector: u64, len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    for (i, sector) in data.chunks_mut(blk::SECTOR_SIZE as usize).enumerate() {
        let n = first_sector + i as u64;
        let head = sector.len().min(8);
        sector[..head].copy_from_slice(&n.to_le_bytes()[..head]);
    }
    data
}
