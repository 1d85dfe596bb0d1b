//! Sharing our own pages with another domain through `/dev/xen/gntalloc`.
//!
//! The frontend side of a split driver (and vmsg-driver's Xen flavour) needs
//! it: allocate pages, grant them to a domain, publish the references. One
//! `IOCTL_GNTALLOC_ALLOC_GREF` allocates and grants `count` pages and
//! reserves an offset; `mmap` at that offset gives us the pages.
//! [`XenSharedPages`] unmaps and deallocates on drop; the kernel keeps a
//! grant alive until the peer has unmapped it too.

use std::fmt;
use std::fs::File;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::bindings::{self, gntalloc as raw};
use crate::mapping::{MappedPages, UnmapNotify};
use crate::sys::{
    HandleError, Mmap, ioctl_ptr, open_device, owned_pages_region, pages_to_bytes, put_bytes,
    read_u64_ne,
};
use crate::{DomId, GrantRef};
use vm_memory::MmapRegion;

/// Default path of the grant allocation device.
pub const GNTALLOC_PATH: &str = "/dev/xen/gntalloc";

/// Most pages one share may cover (4 MiB).
pub const MAX_PAGES_PER_SHARE: usize = 1024;

/// Errors of sharing pages.
#[derive(Debug, Error)]
pub enum GntallocError {
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
    #[error("host page size {0} is not 4096: grant allocation is unsupported")]
    UnsupportedPageSize(usize),
    /// Zero pages, or more than [`MAX_PAGES_PER_SHARE`].
    #[error("page count {0} outside 1..={MAX_PAGES_PER_SHARE}")]
    BadCount(usize),
    /// An ioctl failed (for an allocation: out of grant entries, or the
    /// kernel's per-process limit).
    #[error("{op}: {source}")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `mmap` of the allocated pages failed.
    #[error("mmap of {pages} shared pages: {source}")]
    Mmap {
        /// Pages requested.
        pages: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The unmap-notify byte offset lies outside the mapping.
    #[error("unmap-notify offset {offset} outside a {len}-byte mapping")]
    NotifyOutOfRange {
        /// Requested offset.
        offset: usize,
        /// Mapping length.
        len: usize,
    },
}

impl GntallocError {
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

impl From<HandleError> for GntallocError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::UnsupportedPageSize(page) => Self::UnsupportedPageSize(page),
            HandleError::Open { path, source } => Self::Open { path, source },
            HandleError::BadCount(n) => Self::BadCount(n),
            HandleError::Mmap { pages, source } => Self::Mmap { pages, source },
        }
    }
}

/// Shares our own pages with other domains.
pub trait GrantSharer: Send + Sync + fmt::Debug {
    /// The shared pages; revoked and freed when dropped.
    type Shared: SharedGrants;

    /// Allocate `pages` zeroed pages and grant `domid` access (read-only
    /// unless `writable`).
    fn share(
        &self,
        domid: DomId,
        pages: usize,
        writable: bool,
    ) -> Result<Self::Shared, GntallocError>;

    /// Allocate `pages` zeroed pages and grant `domid` access, to be mapped
    /// as owned `vm-memory` regions ([`GrantAllocation::map`]).
    ///
    /// The grants live as long as the allocation *or* any region mapped from
    /// it (Linux gntalloc keeps a page granted while a VMA maps it; the
    /// kernel ends the grant, deferred until the peer unmapped it, when the
    /// last user is gone). So: map what you need, then drop the allocation;
    /// dropping the regions later revokes the grants.
    fn alloc_grants(
        &self,
        domid: DomId,
        pages: usize,
        writable: bool,
    ) -> Result<GrantAllocation, GntallocError>;
}

/// What to do when a [`GrantAllocation`] is dropped.
pub type ReleaseFn = Box<dyn FnOnce() + Send + Sync>;

/// Pages granted to another domain, to be mapped as owned regions.
///
/// Built by [`GrantSharer::alloc_grants`]; a fake builds it from its own
/// backing file. Page `i` is at byte `offset + i * 4096` of `file`.
pub struct GrantAllocation {
    grefs: Vec<GrantRef>,
    domid: DomId,
    file: Arc<File>,
    offset: u64,
    release: Option<ReleaseFn>,
}

impl fmt::Debug for GrantAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantAllocation")
            .field("domid", &self.domid)
            .field("offset", &self.offset)
            .field("grefs", &self.grefs)
            .finish()
    }
}

impl GrantAllocation {
    /// An allocation of `grefs.len()` pages of `file` starting at byte
    /// `offset`, granted to `domid`; `release` runs when it is dropped.
    pub fn new(
        grefs: Vec<GrantRef>,
        domid: DomId,
        file: Arc<File>,
        offset: u64,
        release: Option<ReleaseFn>,
    ) -> Self {
        Self {
            grefs,
            domid,
            file,
            offset,
            release,
        }
    }

    /// One grant reference per page, in page order.
    pub fn grefs(&self) -> &[GrantRef] {
        &self.grefs
    }

    /// The domain the pages are granted to.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.grefs.len()
    }

    /// Map pages `first..first + pages` (always writable: they are ours) as
    /// a region that owns the mapping.
    pub fn map(&self, first: usize, pages: usize) -> Result<MmapRegion<()>, GntallocError> {
        first
            .checked_add(pages)
            .filter(|&e| pages > 0 && e <= self.pages())
            .ok_or(GntallocError::BadCount(pages))?;
        let offset = pages_to_bytes(first)
            .and_then(|b| self.offset.checked_add(b as u64))
            .ok_or(GntallocError::BadCount(first))?;
        Ok(owned_pages_region(&self.file, offset, pages, true)?)
    }
}

impl Drop for GrantAllocation {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Pages we granted to another domain.
pub trait SharedGrants: MappedPages {
    /// One grant reference per page, in mapping order.
    fn grefs(&self) -> &[GrantRef];

    /// The domain the pages are granted to.
    fn domid(&self) -> DomId;

    /// Ask the kernel to clear a byte and/or signal an event channel when
    /// this mapping goes away (also if the process dies).
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), GntallocError>;
}

/// The real grant allocation device.
#[derive(Debug, Clone)]
pub struct XenGntalloc {
    fd: Arc<File>,
}

impl XenGntalloc {
    /// Open [`GNTALLOC_PATH`].
    pub fn open() -> Result<Self, GntallocError> {
        Self::open_path(Path::new(GNTALLOC_PATH))
    }

    /// Open the grant allocation device at `path`.
    pub fn open_path(path: &Path) -> Result<Self, GntallocError> {
        Ok(Self {
            fd: open_device(path)?,
        })
    }

    /// Wrap an already open descriptor.
    ///
    /// # Safety
    ///
    /// `fd` must be `/dev/xen/gntalloc`, or a file on which the gntalloc
    /// ioctl numbers are harmless (pipes, sockets and regular files fail them
    /// with `ENOTTY`): the ioctls pass pointers the kernel writes through.
    pub unsafe fn from_fd(fd: OwnedFd) -> Self {
        Self {
            fd: Arc::new(File::from(fd)),
        }
    }
}

/// The argument buffer of `IOCTL_GNTALLOC_ALLOC_GREF`: the fixed header and
/// room for `count` grant references the kernel writes back (`gref_ids[1]`
/// is a flexible array). Native-endian fields at the generated offsets.
#[derive(Debug)]
struct AllocRequest {
    buf: Vec<u8>,
    count: usize,
}

impl AllocRequest {
    const GREFS_OFFSET: usize = offset_of!(raw::ioctl_gntalloc_alloc_gref, gref_ids);

    fn new(domid: DomId, pages: usize, writable: bool) -> Result<Self, GntallocError> {
        if pages == 0 || pages > MAX_PAGES_PER_SHARE {
            return Err(GntallocError::BadCount(pages));
        }
        let len = (Self::GREFS_OFFSET + pages * size_of::<GrantRef>())
            .max(size_of::<raw::ioctl_gntalloc_alloc_gref>());
        let mut req = Self {
            buf: vec![0; len],
            count: pages,
        };
        let flags = if writable {
            raw::GNTALLOC_FLAG_WRITABLE as u16
        } else {
            0
        };
        req.put(
            offset_of!(raw::ioctl_gntalloc_alloc_gref, domid),
            &domid.to_ne_bytes(),
        );
        req.put(
            offset_of!(raw::ioctl_gntalloc_alloc_gref, flags),
            &flags.to_ne_bytes(),
        );
        // Fits in u32: bounded by MAX_PAGES_PER_SHARE above.
        req.put(
            offset_of!(raw::ioctl_gntalloc_alloc_gref, count),
            &(pages as u32).to_ne_bytes(),
        );
        Ok(req)
    }

    fn put(&mut self, at: usize, value: &[u8]) {
        put_bytes(&mut self.buf, at, value);
    }

    fn index(&self) -> u64 {
        read_u64_ne(&self.buf, offset_of!(raw::ioctl_gntalloc_alloc_gref, index))
    }

    fn grefs(&self) -> Vec<GrantRef> {
        self.buf[Self::GREFS_OFFSET..Self::GREFS_OFFSET + self.count * 4]
            .chunks_exact(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b.copy_from_slice(c);
                u32::from_ne_bytes(b)
            })
            .collect()
    }
}

impl XenGntalloc {
    /// `IOCTL_GNTALLOC_ALLOC_GREF`: allocate and grant `pages` pages; the
    /// returned request holds the mmap offset and the grant references.
    fn alloc(
        &self,
        domid: DomId,
        pages: usize,
        writable: bool,
    ) -> Result<AllocRequest, GntallocError> {
        let mut req = AllocRequest::new(domid, pages, writable)?;
        // SAFETY: `req` holds the header plus room for `count` grefs, the
        // layout IOCTL_GNTALLOC_ALLOC_GREF reads and writes.
        unsafe {
            ioctl_ptr(
                self.fd.as_fd(),
                bindings::IOCTL_GNTALLOC_ALLOC_GREF,
                req.buf.as_mut_ptr().cast(),
            )
        }
        .map_err(|source| GntallocError::Ioctl {
            op: "IOCTL_GNTALLOC_ALLOC_GREF",
            source,
        })?;
        Ok(req)
    }
}

impl GrantSharer for XenGntalloc {
    type Shared = XenSharedPages;

    fn share(
        &self,
        domid: DomId,
        pages: usize,
        writable: bool,
    ) -> Result<XenSharedPages, GntallocError> {
        let req = self.alloc(domid, pages, writable)?;
        // From here on, drop deallocates.
        let mut shared = XenSharedPages {
            fd: self.fd.clone(),
            index: req.index(),
            grefs: req.grefs(),
            domid,
            map: None,
        };
        // Always mapped writable: these are our pages; `writable` only
        // governs what the peer may do.
        shared.map = Some(Mmap::map_pages(self.fd.as_fd(), pages, true, shared.index)?);
        Ok(shared)
    }

    fn alloc_grants(
        &self,
        domid: DomId,
        pages: usize,
        writable: bool,
    ) -> Result<GrantAllocation, GntallocError> {
        let req = self.alloc(domid, pages, writable)?;
        let index = req.index();
        let fd = self.fd.clone();
        // Bounded by MAX_PAGES_PER_SHARE.
        let count = pages as u32;
        let release: ReleaseFn = Box::new(move || {
            if let Err(e) = dealloc(fd.as_fd(), index, count) {
                log::warn!("IOCTL_GNTALLOC_DEALLOC_GREF: {e}");
            }
        });
        Ok(GrantAllocation::new(
            req.grefs(),
            domid,
            self.fd.clone(),
            index,
            Some(release),
        ))
    }
}

/// `IOCTL_GNTALLOC_DEALLOC_GREF`: the kernel frees (and ends the grants of)
/// the pages once no VMA maps them any more.
fn dealloc(fd: BorrowedFd<'_>, index: u64, count: u32) -> io::Result<()> {
    let mut arg = raw::ioctl_gntalloc_dealloc_gref { index, count };
    // SAFETY: `arg` is the argument struct of IOCTL_GNTALLOC_DEALLOC_GREF.
    unsafe {
        ioctl_ptr(
            fd,
            bindings::IOCTL_GNTALLOC_DEALLOC_GREF,
            (&mut arg as *mut raw::ioctl_gntalloc_dealloc_gref).cast(),
        )
    }
    .map(drop)
}

/// Pages shared by [`XenGntalloc`].
pub struct XenSharedPages {
    fd: Arc<File>,
    index: u64,
    grefs: Vec<GrantRef>,
    domid: DomId,
    /// `None` only inside `share` when mmap failed.
    map: Option<Mmap>,
}

impl fmt::Debug for XenSharedPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenSharedPages")
            .field("domid", &self.domid)
            .field("index", &self.index)
            .field("grefs", &self.grefs)
            .finish()
    }
}

// SAFETY: `map` is a live writable mapping of `grefs.len()` pages for the life
// of `self` (only `None` inside `share`, never observable).
unsafe impl MappedPages for XenSharedPages {
    fn as_ptr(&self) -> *mut u8 {
        self.map.as_ref().map_or(std::ptr::null_mut(), Mmap::as_ptr)
    }

    fn len(&self) -> usize {
        self.map.as_ref().map_or(0, Mmap::len)
    }
}

impl SharedGrants for XenSharedPages {
    fn grefs(&self) -> &[GrantRef] {
        &self.grefs
    }

    fn domid(&self) -> DomId {
        self.domid
    }

    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), GntallocError> {
        let len = self.len();
        let (offset, action) = notify.encode(len).ok_or(GntallocError::NotifyOutOfRange {
            offset: notify.clear_byte.unwrap_or(0),
            len,
        })?;
        let mut arg = raw::ioctl_gntalloc_unmap_notify {
            index: self.index + offset,
            action,
            event_channel_port: notify.send_event.unwrap_or(0),
        };
        // SAFETY: `arg` is the argument struct of IOCTL_GNTALLOC_SET_UNMAP_NOTIFY.
        unsafe {
            ioctl_ptr(
                self.fd.as_fd(),
                bindings::IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
                (&mut arg as *mut raw::ioctl_gntalloc_unmap_notify).cast(),
            )
        }
        .map(drop)
        .map_err(|source| GntallocError::Ioctl {
            op: "IOCTL_GNTALLOC_SET_UNMAP_NOTIFY",
            source,
        })
    }
}

impl Drop for XenSharedPages {
    fn drop(&mut self) {
        self.map = None;
        // Bounded by MAX_PAGES_PER_SHARE.
        let count = self.grefs.len() as u32;
        if let Err(e) = dealloc(self.fd.as_fd(), self.index, count) {
            log::warn!(
                "IOCTL_GNTALLOC_DEALLOC_GREF(index {:#x}, {} pages): {e}",
                self.index,
                self.grefs.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_request_layout() {
        let mut req = AllocRequest::new(5, 3, true).unwrap();
        assert_eq!(req.buf.len(), 16 + 3 * 4, "16-byte header + 3 grefs");
        assert_eq!(u16::from_ne_bytes([req.buf[0], req.buf[1]]), 5, "domid");
        assert_eq!(
            u16::from_ne_bytes([req.buf[2], req.buf[3]]),
            1,
            "GNTALLOC_FLAG_WRITABLE"
        );
        assert_eq!(
            u32::from_ne_bytes(req.buf[4..8].try_into().unwrap()),
            3,
            "count"
        );
        // What the kernel would write back.
        req.buf[8..16].copy_from_slice(&0x7000u64.to_ne_bytes());
        for (i, g) in [10u32, 11, 12].iter().enumerate() {
            req.buf[16 + 4 * i..20 + 4 * i].copy_from_slice(&g.to_ne_bytes());
        }
        assert_eq!(req.index(), 0x7000);
        assert_eq!(req.grefs(), [10, 11, 12]);
    }

    #[test]
    fn alloc_request_minimum_is_the_c_struct_and_read_only_has_no_flag() {
        let req = AllocRequest::new(1, 1, false).unwrap();
        assert_eq!(req.buf.len(), size_of::<raw::ioctl_gntalloc_alloc_gref>());
        assert_eq!(u16::from_ne_bytes([req.buf[2], req.buf[3]]), 0);
    }

    #[test]
    fn alloc_request_counts_are_bounded() {
        assert!(matches!(
            AllocRequest::new(1, 0, true),
            Err(GntallocError::BadCount(0))
        ));
        assert!(AllocRequest::new(1, MAX_PAGES_PER_SHARE, true).is_ok());
        assert!(AllocRequest::new(1, MAX_PAGES_PER_SHARE + 1, true).is_err());
    }

    #[test]
    fn share_on_a_non_gntalloc_fd_fails_cleanly() {
        assert_eq!(
            XenGntalloc::open_path(Path::new("/nonexistent/gntalloc"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
        let (rx, _tx) = nix::unistd::pipe().unwrap();
        // SAFETY: a pipe fails every ioctl with ENOTTY.
        let dev = unsafe { XenGntalloc::from_fd(rx) };
        let err = dev.share(1, 1, true).unwrap_err();
        assert!(matches!(
            err,
            GntallocError::Ioctl {
                op: "IOCTL_GNTALLOC_ALLOC_GREF",
                ..
            }
        ));
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        let err = dev.alloc_grants(1, 1, true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
