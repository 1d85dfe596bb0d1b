//! Foreign mapping of guest frames through `/dev/xen/privcmd`.
//!
//! A privileged domain may map any frame of another domain by GFN. The
//! Linux flow: `mmap` the privcmd device to reserve a VMA, then
//! `IOCTL_PRIVCMD_MMAPBATCH_V2` fills it, reporting an error code per frame.
//! A batch where some frames failed is not a usable mapping: it is unmapped
//! and reported as [`PrivcmdError::PartialMap`] listing the failed frames.
//! Frames failing with `ENOENT` are paged out (Xen memory paging); unlike
//! libxenforeignmemory we do not retry them, the caller may.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::bindings::{self, privcmd as raw};
use crate::mapping::MappedPages;
use crate::sys::{HandleError, Mmap, ioctl_ptr, open_device, owned_pages_region};
use crate::{DomId, Gfn};
use vm_memory::MmapRegion;

/// Default path of the privcmd device.
pub const PRIVCMD_PATH: &str = "/dev/xen/privcmd";

/// Most frames one foreign mapping may cover (1 GiB). Whole-RAM mappings of
/// larger guests are made of several batches.
pub const MAX_FRAMES_PER_MAP: usize = 1 << 18;

/// Errors of foreign mapping.
#[derive(Debug, Error)]
pub enum PrivcmdError {
    /// The device node could not be opened.
    #[error("open {path}: {source}")]
    Open {
        /// The node that was opened.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The host page size is not Xen's 4 KiB.
    #[error("host page size {0} is not 4096: foreign mapping is unsupported")]
    UnsupportedPageSize(usize),
    /// No frames, or more than [`MAX_FRAMES_PER_MAP`].
    #[error("frame count {0} outside 1..={MAX_FRAMES_PER_MAP}")]
    BadCount(usize),
    /// Reserving the address range failed.
    #[error("mmap of {pages} pages of privcmd: {source}")]
    Mmap {
        /// Pages requested.
        pages: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The ioctl failed as a whole (bad domain, no privilege, bad range).
    #[error("{op}: {source}")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Some frames could not be mapped; the mapping was undone.
    #[error("{} of {total} frames of domain {domid} failed to map (first: {})", failed.len(), failed.first().map_or_else(String::new, ToString::to_string))]
    PartialMap {
        /// The foreign domain.
        domid: DomId,
        /// Frames requested.
        total: usize,
        /// The frames that failed, in request order.
        failed: Vec<FrameError>,
    },
}

impl PrivcmdError {
    /// The OS errno behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Open { source, .. } | Self::Ioctl { source, .. } | Self::Mmap { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

impl From<HandleError> for PrivcmdError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::UnsupportedPageSize(page) => Self::UnsupportedPageSize(page),
            HandleError::Open { path, source } => Self::Open { path, source },
            HandleError::BadCount(n) => Self::BadCount(n),
            HandleError::Mmap { pages, source } => Self::Mmap { pages, source },
        }
    }
}

/// One frame of a batch that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError {
    /// Position in the requested frame list (= page index in the mapping).
    pub index: usize,
    /// The frame.
    pub gfn: Gfn,
    /// Positive errno (`ENOENT`: paged out; `EINVAL`/`EFAULT`: no such frame
    /// or not mappable; `EPERM`: not permitted).
    pub errno: i32,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frame {} (gfn {:#x}): {}",
            self.index,
            self.gfn,
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

/// Maps other domains' frames by GFN.
pub trait ForeignMapper: Send + Sync + fmt::Debug {
    /// The mapping type; unmapped when dropped.
    type Mapping: MappedPages;

    /// Map `gfns` of `domid` as one contiguous range, in order.
    fn map_foreign(
        &self,
        domid: DomId,
        gfns: &[Gfn],
        writable: bool,
    ) -> Result<Self::Mapping, PrivcmdError>;

    /// Map like [`ForeignMapper::map_foreign`], as a `vm-memory` region that
    /// owns the mapping (unmapped when the region, or the last
    /// `GuestMemoryMmap` holding it, drops).
    fn map_foreign_region(
        &self,
        domid: DomId,
        gfns: &[Gfn],
        writable: bool,
    ) -> Result<MmapRegion<()>, PrivcmdError>;
}

/// The real privcmd device.
#[derive(Debug, Clone)]
pub struct XenPrivcmd {
    fd: Arc<File>,
}

impl XenPrivcmd {
    /// Open [`PRIVCMD_PATH`].
    pub fn open() -> Result<Self, PrivcmdError> {
        Self::open_path(Path::new(PRIVCMD_PATH))
    }

    /// Open the privcmd device at `path`.
    pub fn open_path(path: &Path) -> Result<Self, PrivcmdError> {
        Ok(Self {
            fd: open_device(path)?,
        })
    }

    /// Wrap an already open descriptor.
    ///
    /// # Safety
    ///
    /// `fd` must be `/dev/xen/privcmd`, or a file on which the privcmd ioctl
    /// numbers are harmless (pipes, sockets and regular files fail them with
    /// `ENOTTY`): the ioctls pass pointers the kernel reads and writes.
    pub unsafe fn from_fd(fd: OwnedFd) -> Self {
        Self {
            fd: Arc::new(File::from(fd)),
        }
    }

    /// Restrict this handle to `domid` (`IOCTL_PRIVCMD_RESTRICT`): later
    /// calls may only target that domain. Irreversible.
    pub fn restrict(&self, domid: DomId) -> Result<(), PrivcmdError> {
        let mut arg: raw::domid_t = domid;
        // SAFETY: IOCTL_PRIVCMD_RESTRICT reads one domid_t.
        unsafe {
            ioctl_ptr(
                self.fd.as_fd(),
                bindings::IOCTL_PRIVCMD_RESTRICT,
                (&mut arg as *mut raw::domid_t).cast(),
            )
        }
        .map(drop)
        .map_err(|source| PrivcmdError::Ioctl {
            op: "IOCTL_PRIVCMD_RESTRICT",
            source,
        })
    }
}

/// The `IOCTL_PRIVCMD_MMAPBATCH_V2` argument for a batch at `addr`.
fn batch_args(
    domid: DomId,
    addr: *mut u8,
    gfns: &[Gfn],
    errs: &mut [i32],
) -> raw::privcmd_mmapbatch_v2 {
    debug_assert_eq!(gfns.len(), errs.len());
    raw::privcmd_mmapbatch_v2 {
        // Bounded by MAX_FRAMES_PER_MAP.
        num: gfns.len() as u32,
        dom: domid,
        addr: addr as u64,
        arr: gfns.as_ptr(),
        err: errs.as_mut_ptr(),
    }
}

/// The frames whose per-frame error code is non-zero (the kernel stores
/// negative errnos).
fn failed_frames(gfns: &[Gfn], errs: &[i32]) -> Vec<FrameError> {
    gfns.iter()
        .zip(errs)
        .enumerate()
        .filter(|(_, (_, e))| **e != 0)
        .map(|(index, (gfn, e))| FrameError {
            index,
            gfn: *gfn,
            errno: e.saturating_neg(),
        })
        .collect()
}

impl XenPrivcmd {
    /// Fill the privcmd VMA at `addr` (`gfns.len()` pages) with `gfns` of
    /// `domid`; per-frame failures become [`PrivcmdError::PartialMap`].
    fn fill(&self, domid: DomId, addr: *mut u8, gfns: &[Gfn]) -> Result<(), PrivcmdError> {
        let pages = gfns.len();
        let mut errs = vec![0i32; pages];
        let mut arg = batch_args(domid, addr, gfns, &mut errs);
        // SAFETY: `arg` points at `pages` GFNs and `pages` error slots that
        // outlive the call, and at a privcmd VMA of exactly `pages` pages
        // (the callers' contract).
        let res = unsafe {
            ioctl_ptr(
                self.fd.as_fd(),
                bindings::IOCTL_PRIVCMD_MMAPBATCH_V2,
                (&mut arg as *mut raw::privcmd_mmapbatch_v2).cast(),
            )
        };
        match res {
            // ENOENT: the batch ran but some frames were paged out; `errs`
            // is valid. Any other error: nothing is valid.
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(PrivcmdError::Ioctl {
                    op: "IOCTL_PRIVCMD_MMAPBATCH_V2",
                    source,
                });
            }
        }
        let failed = failed_frames(gfns, &errs);
        if !failed.is_empty() {
            return Err(PrivcmdError::PartialMap {
                domid,
                total: pages,
                failed,
            });
        }
        Ok(())
    }
}

/// The number of frames of a batch, if it is within 1..=MAX_FRAMES_PER_MAP.
fn check_count(gfns: &[Gfn]) -> Result<usize, PrivcmdError> {
    let pages = gfns.len();
    if pages == 0 || pages > MAX_FRAMES_PER_MAP {
        return Err(PrivcmdError::BadCount(pages));
    }
    Ok(pages)
}

impl ForeignMapper for XenPrivcmd {
    type Mapping = ForeignMapping;

    fn map_foreign(
        &self,
        domid: DomId,
        gfns: &[Gfn],
        writable: bool,
    ) -> Result<ForeignMapping, PrivcmdError> {
        let pages = check_count(gfns)?;
        // Reserve the VMA; dropped (unmapped) on every error path below.
        let map = Mmap::map_pages(self.fd.as_fd(), pages, writable, 0)?;
        self.fill(domid, map.as_ptr(), gfns)?;
        Ok(ForeignMapping { map, domid })
    }

    fn map_foreign_region(
        &self,
        domid: DomId,
        gfns: &[Gfn],
        writable: bool,
    ) -> Result<MmapRegion<()>, PrivcmdError> {
        let pages = check_count(gfns)?;
        // The region owns the VMA: dropped (unmapped) on every error path.
        let region = owned_pages_region(&self.fd, 0, pages, writable)?;
        self.fill(domid, region.as_ptr(), gfns)?;
        Ok(region)
    }
}

/// Foreign frames mapped by [`XenPrivcmd`]; unmapped on drop (closing the
/// VMA releases the foreign frames).
#[derive(Debug)]
pub struct ForeignMapping {
    map: Mmap,
    domid: DomId,
}

impl ForeignMapping {
    /// The domain whose frames are mapped.
    pub fn domid(&self) -> DomId {
        self.domid
    }
}

// SAFETY: `map` is a live mapping of the requested frames for the life of
// `self`; its address and length never change.
unsafe impl MappedPages for ForeignMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr()
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_argument_packing() {
        let gfns = [0x1000, 0x1001, 0x2000];
        let mut errs = [0i32; 3];
        let addr = 0x7f00_0000_0000usize as *mut u8;
        let arg = batch_args(9, addr, &gfns, &mut errs);
        assert_eq!(arg.num, 3);
        assert_eq!(arg.dom, 9);
        assert_eq!(arg.addr, 0x7f00_0000_0000);
        assert_eq!(arg.arr, gfns.as_ptr());
        assert_eq!(arg.err, errs.as_mut_ptr());
    }

    #[test]
    fn per_frame_errors_are_reported_with_index_and_gfn() {
        let gfns = [0x10, 0x11, 0x12, 0x13];
        let errs = [0, -libc::ENOENT, 0, -libc::EINVAL];
        let failed = failed_frames(&gfns, &errs);
        assert_eq!(
            failed,
            [
                FrameError {
                    index: 1,
                    gfn: 0x11,
                    errno: libc::ENOENT
                },
                FrameError {
                    index: 3,
                    gfn: 0x13,
                    errno: libc::EINVAL
                },
            ]
        );
        assert!(failed_frames(&gfns, &[0; 4]).is_empty());
        let err = PrivcmdError::PartialMap {
            domid: 4,
            total: 4,
            failed,
        };
        let text = err.to_string();
        assert!(text.contains("2 of 4 frames of domain 4"), "{text}");
        assert!(text.contains("frame 1 (gfn 0x11)"), "{text}");
    }

    #[test]
    fn counts_are_bounded() {
        let (rx, _tx) = nix::unistd::pipe().unwrap();
        // SAFETY: a pipe fails every ioctl with ENOTTY.
        let dev = unsafe { XenPrivcmd::from_fd(rx) };
        assert!(matches!(
            dev.map_foreign(1, &[], false),
            Err(PrivcmdError::BadCount(0))
        ));
        let too_many = vec![0; MAX_FRAMES_PER_MAP + 1];
        assert!(matches!(
            dev.map_foreign(1, &too_many, false),
            Err(PrivcmdError::BadCount(_))
        ));
    }

    #[test]
    fn errors_on_a_non_privcmd_fd_are_typed() {
        assert_eq!(
            XenPrivcmd::open_path(Path::new("/nonexistent/privcmd"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
        let (rx, _tx) = nix::unistd::pipe().unwrap();
        // SAFETY: a pipe fails every ioctl with ENOTTY (and cannot be mmapped).
        let dev = unsafe { XenPrivcmd::from_fd(rx) };
        assert!(matches!(
            dev.map_foreign(1, &[5], false),
            Err(PrivcmdError::Mmap { pages: 1, .. })
        ));
        assert_eq!(
            dev.restrict(3).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }

    #[test]
    fn mapping_of_a_mappable_non_privcmd_file_fails_at_the_ioctl_and_unmaps() {
        // /dev/zero can be mmapped but has no privcmd ioctls: exercises the
        // reserve-then-fail path.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        // SAFETY: /dev/zero fails unknown ioctls with ENOTTY.
        let dev = unsafe { XenPrivcmd::from_fd(file.into()) };
        let err = dev.map_foreign(1, &[1, 2], true).unwrap_err();
        assert!(
            matches!(
                err,
                PrivcmdError::Ioctl {
                    op: "IOCTL_PRIVCMD_MMAPBATCH_V2",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        // The owned-region flavour takes the same path (the region is
        // dropped, i.e. unmapped, on the error).
        let err = dev.map_foreign_region(1, &[1, 2], true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        assert!(matches!(
            dev.map_foreign_region(1, &[], true),
            Err(PrivcmdError::BadCount(0))
        ));
    }
}
