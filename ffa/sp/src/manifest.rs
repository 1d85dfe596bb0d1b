//! The partition's settings from its own FF-A manifest: the SPMC passes
//! the boot information blob in x0 (manifest `gp-register-num = <0>`), whose
//! FDT descriptor is the manifest; the partition reads its `vmsgd` node.
//! Every range is checked against the memory the partition may use.

use arm_ffa::Version;
use arm_ffa::boot_info::{
    BootInfo, BootInfoContents, BootInfoIterator, BootInfoStdId, BootInfoType,
};

use crate::mmu::{self, Tables};

/// What the `vmsgd` node configures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// Secure RAM for the virtio-blk RAM disk: (address, size).
    pub ram_disk: Option<(usize, usize)>,
    /// GET_ID of the RAM disk (at most 20 bytes used).
    pub serial: [u8; 20],
    /// The RFC bus's DMA pool in normal-world memory: (address, size).
    pub rfc_pool: Option<(usize, usize)>,
}

/// Why the manifest could not be used.
#[derive(Clone, Copy, Debug)]
pub enum ManifestError {
    /// x0 was 0: the manifest lacks `gp-register-num = <0>`.
    NoBootInfo,
    /// The boot information blob did not parse.
    BootInfo,
    /// It holds no FDT (manifest) descriptor.
    NoManifest,
    /// The manifest is not a valid device tree.
    Fdt,
    /// A `vmsgd` property is malformed or out of bounds.
    Property(&'static str),
}

impl core::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoBootInfo => {
                f.write_str("no boot information in x0 (gp-register-num = <0> missing)")
            }
            Self::BootInfo => f.write_str("the boot information blob does not parse"),
            Self::NoManifest => f.write_str("the boot information has no manifest"),
            Self::Fdt => f.write_str("the manifest is not a valid device tree"),
            Self::Property(p) => write!(
                f,
                "manifest property vmsgd/{p} is malformed or out of bounds"
            ),
        }
    }
}

/// Largest boot information blob read (TF-A's is a few hundred bytes).
const MAX_BLOB: usize = 2 * 4096;

/// Read the settings. `free` is the secure memory a RAM disk may take
/// (above the image, below the end of secure DRAM).
pub fn read(
    boot_info: usize,
    tables: &mut Tables,
    free: (usize, usize),
) -> Result<Settings, ManifestError> {
    if boot_info == 0 {
        return Err(ManifestError::NoBootInfo);
    }
    let page = boot_info & !0xfff;
    mmu::map_secure_ro(tables, page, page + MAX_BLOB + 4096);
    let avail = page + MAX_BLOB + 4096 - boot_info;
    // SAFETY: just mapped read-only; the SPMC placed the blob there for the
    // partition and does not change it.
    let head = unsafe { core::slice::from_raw_parts(boot_info as *const u8, avail) };
    let size = BootInfo::get_blob_size(Version(1, 2), head).map_err(|_| ManifestError::BootInfo)?;
    let blob = head.get(..size).ok_or(ManifestError::BootInfo)?;
    let fdt_bytes = BootInfoIterator::new(Version(1, 2), blob)
        .map_err(|_| ManifestError::BootInfo)?
        .filter_map(Result::ok)
        .find_map(|d| match (d.typ, d.contents) {
            (BootInfoType::Std(BootInfoStdId::Fdt), BootInfoContents::Address { content_buf }) => {
                Some(content_buf)
            }
            _ => None,
        })
        .ok_or(ManifestError::NoManifest)?;
    let fdt = fdt::Fdt::new(fdt_bytes).map_err(|_| ManifestError::Fdt)?;
    let mut s = Settings::default();
    let Some(node) = fdt.find_node("/vmsgd") else {
        return Ok(s);
    };
    if let Some(p) = node.property("ram-disk") {
        let (at, len) = range(p.value).ok_or(ManifestError::Property("ram-disk"))?;
        let ok = at % 4096 == 0
            && len > 0
            && len % 512 == 0
            && at >= free.0
            && at.checked_add(len).is_some_and(|e| e <= free.1);
        if !ok {
            return Err(ManifestError::Property("ram-disk"));
        }
        s.ram_disk = Some((at, len));
    }
    if let Some(p) = node.property("ram-disk-serial") {
        let text = p
            .as_str()
            .ok_or(ManifestError::Property("ram-disk-serial"))?;
        let n = text.len().min(s.serial.len());
        s.serial[..n].copy_from_slice(&text.as_bytes()[..n]);
    }
    if let Some(p) = node.property("rfc-dma-pool") {
        let (at, len) = range(p.value).ok_or(ManifestError::Property("rfc-dma-pool"))?;
        // Normal-world memory only: never secure DRAM.
        let secure = at < crate::SECURE_DRAM.1 && at.saturating_add(len) > crate::SECURE_DRAM.0;
        if at % 4096 != 0 || len == 0 || len % 4096 != 0 || secure || at.checked_add(len).is_none()
        {
            return Err(ManifestError::Property("rfc-dma-pool"));
        }
        s.rfc_pool = Some((at, len));
    }
    Ok(s)
}

/// `<addr-hi addr-lo size-hi size-lo>` (big-endian cells).
fn range(v: &[u8]) -> Option<(usize, usize)> {
    if v.len() != 16 {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&v[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[8..]);
    Some((
        usize::try_from(u64::from_be_bytes(a)).ok()?,
        usize::try_from(u64::from_be_bytes(b)).ok()?,
    ))
}
