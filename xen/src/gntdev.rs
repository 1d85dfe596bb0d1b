//! Mapping other domains' grants through `/dev/xen/gntdev`.
//!
//! A set of `(domid, gref)` is mapped as one contiguous range: one
//! `IOCTL_GNTDEV_MAP_GRANT_REF` reserves an offset in the device, one `mmap`
//! at that offset maps the pages. [`GntdevMapping`] undoes both on drop
//! (`munmap`, then `IOCTL_GNTDEV_UNMAP_GRANT_REF`, as libxengnttab does).
//! Whether the mapping is writable is decided by the `mmap` protection: the
//! kernel maps the grants read-only when the VMA is not writable.

use std::fmt;
use std::fs::File;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::bindings::{self, gntdev as raw};
use crate::mapping::{MappedPages, UnmapNotify};
use crate::sys::{
    HandleError, Mmap, ioctl_ptr, open_device, owned_pages_region, put_bytes, read_u64_ne,
};
use crate::{DomId, GrantRef};
use vm_memory::MmapRegion;

/// Default path of the grant mapping device.
pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";

/// Most grants one mapping may cover (4 MiB). The kernel's own default limit
/// per process is higher; this bounds the request buffer we build.
pub const MAX_GRANTS_PER_MAP: usize = 1024;

/// Errors of grant mapping.
#[derive(Debug, Error)]
pub enum GntdevError {
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
    #[error("host page size {0} is not 4096: grant mapping is unsupported")]
    UnsupportedPageSize(usize),
    /// No grants, or more than [`MAX_GRANTS_PER_MAP`].
    #[error("grant count {0} outside 1..={MAX_GRANTS_PER_MAP}")]
    BadCount(usize),
    /// An ioctl failed (for a map: a bad reference or domain, or the
    /// kernel's grant limit).
    #[error("{op}: {source}")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `mmap` of the reserved range failed (the hypervisor refused a grant:
    /// revoked, wrong domain, or read-only mapped writable).
    #[error("mmap of {pages} granted pages: {source}")]
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

impl GntdevError {
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

impl From<HandleError> for GntdevError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::UnsupportedPageSize(page) => Self::UnsupportedPageSize(page),
            HandleError::Open { path, source } => Self::Open { path, source },
            HandleError::BadCount(n) => Self::BadCount(n),
            HandleError::Mmap { pages, source } => Self::Mmap { pages, source },
        }
    }
}

/// One grant to map: a reference in the grant table of `domid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant {
    /// The granting domain.
    pub domid: DomId,
    /// The grant reference.
    pub gref: GrantRef,
}

/// Maps other domains' grants.
pub trait GrantMapper: Send + Sync + fmt::Debug {
    /// The mapping type; unmapped when dropped.
    type Mapping: GrantMapping;

    /// Map `grants` as one contiguous range, in order, one page each.
    fn map_grants(&self, grants: &[Grant], writable: bool) -> Result<Self::Mapping, GntdevError>;

    /// Map `grants` like [`GrantMapper::map_grants`], as a `vm-memory` region
    /// that owns the mapping: the grants stay mapped exactly as long as the
    /// region (and so any `GuestMemoryMmap` built from it) lives, and are
    /// unmapped when it drops. The device offset reserved for the mapping is
    /// released right away (Linux gntdev keeps the grants mapped for the
    /// VMA), so nothing but the region needs cleaning up.
    fn map_grants_region(
        &self,
        grants: &[Grant],
        writable: bool,
    ) -> Result<MmapRegion<()>, GntdevError>;
}

/// A live grant mapping.
pub trait GrantMapping: MappedPages {
    /// Ask the kernel to clear a byte and/or signal an event channel when
    /// this mapping goes away (also if the process dies).
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), GntdevError>;
}

/// The real grant mapping device.
#[derive(Debug, Clone)]
pub struct XenGntdev {
    fd: Arc<File>,
}

impl XenGntdev {
    /// Open [`GNTDEV_PATH`].
    pub fn open() -> Result<Self, GntdevError> {
        Self::open_path(Path::new(GNTDEV_PATH))
    }

    /// Open the grant mapping device at `path`.
    pub fn open_path(path: &Path) -> Result<Self, GntdevError> {
        Ok(Self {
            fd: open_device(path)?,
        })
    }

    /// Wrap an already open descriptor.
    ///
    /// # Safety
    ///
    /// `fd` must be `/dev/xen/gntdev`, or a file on which the gntdev ioctl
    /// numbers are harmless (pipes, sockets and regular files fail them with
    /// `ENOTTY`): the ioctls pass pointers the kernel writes through.
    pub unsafe fn from_fd(fd: OwnedFd) -> Self {
        Self {
            fd: Arc::new(File::from(fd)),
        }
    }
}

/// The argument buffer of `IOCTL_GNTDEV_MAP_GRANT_REF`: the fixed header,
/// then `count` `{u32 domid, u32 ref}` pairs (the C struct's `refs[1]` is a
/// flexible array). Fields are written native-endian at the offsets of the
/// generated struct; the kernel copies it with `copy_from_user`, which needs
/// no alignment.
#[derive(Debug)]
struct MapRequest {
    buf: Vec<u8>,
}

impl MapRequest {
    const REFS_OFFSET: usize = offset_of!(raw::ioctl_gntdev_map_grant_ref, refs);
    const REF_SIZE: usize = size_of::<raw::ioctl_gntdev_grant_ref>();

    fn new(grants: &[Grant]) -> Result<Self, GntdevError> {
        if grants.is_empty() || grants.len() > MAX_GRANTS_PER_MAP {
            return Err(GntdevError::BadCount(grants.len()));
        }
        let len = (Self::REFS_OFFSET + grants.len() * Self::REF_SIZE)
            .max(size_of::<raw::ioctl_gntdev_map_grant_ref>());
        let mut req = Self { buf: vec![0; len] };
        // Fits in u32: bounded by MAX_GRANTS_PER_MAP above.
        req.put(
            offset_of!(raw::ioctl_gntdev_map_grant_ref, count),
            &(grants.len() as u32).to_ne_bytes(),
        );
        for (i, g) in grants.iter().enumerate() {
            let at = Self::REFS_OFFSET + i * Self::REF_SIZE;
            req.put(
                at + offset_of!(raw::ioctl_gntdev_grant_ref, domid),
                &u32::from(g.domid).to_ne_bytes(),
            );
            req.put(
                at + offset_of!(raw::ioctl_gntdev_grant_ref, ref_),
                &g.gref.to_ne_bytes(),
            );
        }
        Ok(req)
    }

    fn put(&mut self, at: usize, value: &[u8]) {
        put_bytes(&mut self.buf, at, value);
    }

    /// The mmap offset the kernel wrote back.
    fn index(&self) -> u64 {
        read_u64_ne(
            &self.buf,
            offset_of!(raw::ioctl_gntdev_map_grant_ref, index),
        )
    }
}

impl GrantMapper for XenGntdev {
    type Mapping = GntdevMapping;

    fn map_grants(&self, grants: &[Grant], writable: bool) -> Result<GntdevMapping, GntdevError> {
        let (index, count) = self.reserve(grants)?;
        // From here on the reservation must be released on every path.
        let mut mapping = GntdevMapping {
            fd: self.fd.clone(),
            index,
            count,
            map: None,
        };
        mapping.map = Some(Mmap::map_pages(
            self.fd.as_fd(),
            grants.len(),
            writable,
            index,
        )?);
        Ok(mapping)
    }

    fn map_grants_region(
        &self,
        grants: &[Grant],
        writable: bool,
    ) -> Result<MmapRegion<()>, GntdevError> {
        let (index, count) = self.reserve(grants)?;
        let region = owned_pages_region(&self.fd, index, grants.len(), writable);
        // The VMA (if any) holds its own reference to the grants now; release
        // the reservation on every path.
        let released = unmap_reservation(self.fd.as_fd(), index, count);
        let region = region?;
        released
            .map(|()| region)
            .map_err(|source| GntdevError::Ioctl {
                op: "IOCTL_GNTDEV_UNMAP_GRANT_REF",
                source,
            })
    }
}

impl XenGntdev {
    /// `IOCTL_GNTDEV_MAP_GRANT_REF`: reserve a device offset for `grants`.
    fn reserve(&self, grants: &[Grant]) -> Result<(u64, u32), GntdevError> {
        let mut req = MapRequest::new(grants)?;
        // SAFETY: `req` holds the header plus `count` refs, the layout
        // IOCTL_GNTDEV_MAP_GRANT_REF reads and (for `index`) writes.
        unsafe {
            ioctl_ptr(
                self.fd.as_fd(),
                bindings::IOCTL_GNTDEV_MAP_GRANT_REF,
                req.buf.as_mut_ptr().cast(),
            )
        }
        .map_err(|source| GntdevError::Ioctl {
            op: "IOCTL_GNTDEV_MAP_GRANT_REF",
            source,
        })?;
        // Fits in u32: bounded by MAX_GRANTS_PER_MAP in `MapRequest::new`.
        Ok((req.index(), grants.len() as u32))
    }
}

/// `IOCTL_GNTDEV_UNMAP_GRANT_REF` for a reservation at `index`.
fn unmap_reservation(fd: BorrowedFd<'_>, index: u64, count: u32) -> io::Result<()> {
    let mut arg = raw::ioctl_gntdev_unmap_grant_ref {
        index,
        count,
        pad: 0,
    };
    // SAFETY: `arg` is the argument struct of IOCTL_GNTDEV_UNMAP_GRANT_REF.
    unsafe {
        ioctl_ptr(
            fd,
            bindings::IOCTL_GNTDEV_UNMAP_GRANT_REF,
            (&mut arg as *mut raw::ioctl_gntdev_unmap_grant_ref).cast(),
        )
    }
    .map(drop)
}

/// A grant mapping made by [`XenGntdev`].
pub struct GntdevMapping {
    fd: Arc<File>,
    index: u64,
    count: u32,
    /// `None` only while being built (mmap failed): drop then just releases
    /// the reservation.
    map: Option<Mmap>,
}

impl fmt::Debug for GntdevMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GntdevMapping")
            .field("index", &self.index)
            .field("count", &self.count)
            .field("addr", &self.map.as_ref().map(Mmap::as_ptr))
            .finish()
    }
}

impl GntdevMapping {
    /// The device offset of the mapping (diagnostics).
    pub fn index(&self) -> u64 {
        self.index
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

// SAFETY: `map` is a live mapping of exactly `count` pages for the life of
// `self` (it is only `None` inside `map_grants`, never observable), and its
// address and length never change.
unsafe impl MappedPages for GntdevMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.map.as_ref().map_or(std::ptr::null_mut(), Mmap::as_ptr)
    }

    fn len(&self) -> usize {
        self.map.as_ref().map_or(0, Mmap::len)
    }
}

impl GrantMapping for GntdevMapping {
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), GntdevError> {
        let len = self.len();
        let (offset, action) = notify.encode(len).ok_or(GntdevError::NotifyOutOfRange {
            offset: notify.clear_byte.unwrap_or(0),
            len,
        })?;
        let mut arg = raw::ioctl_gntdev_unmap_notify {
            index: self.index + offset,
            action,
            event_channel_port: notify.send_event.unwrap_or(0),
        };
        // SAFETY: `arg` is the argument struct of IOCTL_GNTDEV_SET_UNMAP_NOTIFY.
        unsafe {
            ioctl_ptr(
                self.fd(),
                bindings::IOCTL_GNTDEV_SET_UNMAP_NOTIFY,
                (&mut arg as *mut raw::ioctl_gntdev_unmap_notify).cast(),
            )
        }
        .map(drop)
        .map_err(|source| GntdevError::Ioctl {
            op: "IOCTL_GNTDEV_SET_UNMAP_NOTIFY",
            source,
        })
    }
}

impl Drop for GntdevMapping {
    fn drop(&mut self) {
        // munmap first: the grants stay mapped while a VMA uses them.
        self.map = None;
        if let Err(e) = unmap_reservation(self.fd(), self.index, self.count) {
            log::warn!(
                "IOCTL_GNTDEV_UNMAP_GRANT_REF(index {:#x}, {} pages): {e}",
                self.index,
                self.count
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn map_request_layout() {
        let grants = [
            Grant {
                domid: 3,
                gref: 0x11,
            },
            Grant {
                domid: 7,
                gref: 0x2233,
            },
        ];
        let req = MapRequest::new(&grants).unwrap();
        let b = &req.buf;
        assert_eq!(b.len(), 32, "16-byte header + 2 * 8-byte refs");
        assert_eq!(word(b, 0), 2, "count");
        assert_eq!(word(b, 4), 0, "pad");
        assert_eq!(req.index(), 0);
        assert_eq!((word(b, 16), word(b, 20)), (3, 0x11));
        assert_eq!((word(b, 24), word(b, 28)), (7, 0x2233));
    }

    #[test]
    fn map_request_of_one_grant_is_the_c_struct_size() {
        let req = MapRequest::new(&[Grant { domid: 1, gref: 2 }]).unwrap();
        assert_eq!(req.buf.len(), size_of::<raw::ioctl_gntdev_map_grant_ref>());
    }

    #[test]
    fn map_request_counts_are_bounded() {
        assert!(matches!(
            MapRequest::new(&[]),
            Err(GntdevError::BadCount(0))
        ));
        let many = vec![Grant { domid: 1, gref: 1 }; MAX_GRANTS_PER_MAP + 1];
        assert!(
            matches!(MapRequest::new(&many), Err(GntdevError::BadCount(n)) if n == MAX_GRANTS_PER_MAP + 1)
        );
        let max = vec![Grant { domid: 1, gref: 1 }; MAX_GRANTS_PER_MAP];
        assert!(MapRequest::new(&max).is_ok());
    }

    #[test]
    fn open_missing_node_is_a_typed_error() {
        let err = XenGntdev::open_path(Path::new("/nonexistent/gntdev")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn map_on_a_non_gntdev_fd_fails_cleanly() {
        let (rx, _tx) = nix::unistd::pipe().unwrap();
        // SAFETY: a pipe fails every ioctl with ENOTTY.
        let dev = unsafe { XenGntdev::from_fd(rx) };
        let err = dev
            .map_grants(&[Grant { domid: 1, gref: 8 }], true)
            .unwrap_err();
        assert!(matches!(
            err,
            GntdevError::Ioctl {
                op: "IOCTL_GNTDEV_MAP_GRANT_REF",
                ..
            }
        ));
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        let err = dev
            .map_grants_region(&[Grant { domid: 1, gref: 8 }], true)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        assert!(matches!(
            dev.map_grants(&[], true),
            Err(GntdevError::BadCount(0))
        ));
    }
}
