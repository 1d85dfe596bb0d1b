//! Small helpers shared by the device-node handles: opening a node, calling
//! an ioctl, checking the page size, and an owned shared mapping.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use vm_memory::FileOffset;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder, MmapRegionError};

use crate::bindings::XEN_PAGE_SIZE;

/// Open a Xen device node read-write, close-on-exec, plus `extra_flags`.
pub(crate) fn open_node(path: &Path, extra_flags: i32) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | extra_flags)
        .open(path)?;
    Ok(file.into())
}

/// The failures the grant and foreign-mapping handles (gntdev, gntalloc,
/// privcmd) share. Each of those modules converts it (`From`) into the
/// variant of the same name of its own error enum.
#[derive(Debug)]
pub(crate) enum HandleError {
    /// The host page size is not Xen's 4 KiB.
    UnsupportedPageSize(usize),
    /// The device node could not be opened.
    Open { path: PathBuf, source: io::Error },
    /// The page count does not fit the address space.
    BadCount(usize),
    /// `mmap` of `pages` pages failed.
    Mmap { pages: usize, source: io::Error },
}

/// Open the device node of a grant or foreign-mapping handle: the host page
/// size must be Xen's 4 KiB (checked first), then the node is opened
/// read-write and close-on-exec.
pub(crate) fn open_device(path: &Path) -> Result<Arc<File>, HandleError> {
    let page = host_page_size();
    if page != XEN_PAGE_SIZE {
        return Err(HandleError::UnsupportedPageSize(page));
    }
    let fd = open_node(path, 0).map_err(|source| HandleError::Open {
        path: path.to_owned(),
        source,
    })?;
    Ok(Arc::new(File::from(fd)))
}

/// Call `ioctl(fd, request, arg)` and turn -1 into the errno.
///
/// # Safety
///
/// `arg` must point to memory laid out as `request` expects, valid for the
/// reads and writes the kernel does for that request (including any trailing
/// variable-length array), for the duration of the call.
pub(crate) unsafe fn ioctl_ptr(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: *mut libc::c_void,
) -> io::Result<libc::c_int> {
    // SAFETY: the caller guarantees `arg` matches `request`; `fd` is an open
    // descriptor for the duration of the borrow.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The host page size; the handles need it to equal Xen's 4 KiB because one
/// grant or GFN must be one host page in the mmap arithmetic.
pub(crate) fn host_page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(XEN_PAGE_SIZE)
}

/// Copy `value` into an ioctl argument buffer at byte `at`.
pub(crate) fn put_bytes(buf: &mut [u8], at: usize, value: &[u8]) {
    buf[at..at + value.len()].copy_from_slice(value);
}

/// The native-endian `u64` at byte `at` of an ioctl argument buffer.
pub(crate) fn read_u64_ne(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(b)
}

/// Bytes spanned by `pages` Xen pages, or `None` on overflow.
pub(crate) fn pages_to_bytes(pages: usize) -> Option<usize> {
    pages.checked_mul(XEN_PAGE_SIZE)
}

/// A `MAP_SHARED` mapping of `len` bytes of `file` at `offset`, owned by the
/// returned `vm-memory` region: dropping the region (its last `Arc`, once it
/// is part of a `GuestMemoryMmap`) unmaps it. This is what ties a grant or
/// foreign mapping's lifetime to the memory object the devices hold.
pub(crate) fn owned_region(
    file: &Arc<File>,
    offset: u64,
    len: usize,
    writable: bool,
) -> io::Result<MmapRegion<()>> {
    if len == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    MmapRegionBuilder::new(len)
        .with_file_offset(FileOffset::from_arc(file.clone(), offset))
        .with_mmap_prot(prot)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .map_err(|e| match e {
            MmapRegionError::Mmap(e) => e,
            other => io::Error::other(other.to_string()),
        })
}

/// [`owned_region`] of `pages` Xen pages of `file` at byte `offset`.
pub(crate) fn owned_pages_region(
    file: &Arc<File>,
    offset: u64,
    pages: usize,
    writable: bool,
) -> Result<MmapRegion<()>, HandleError> {
    let len = pages_to_bytes(pages).ok_or(HandleError::BadCount(pages))?;
    owned_region(file, offset, len, writable).map_err(|source| HandleError::Mmap { pages, source })
}

/// A `MAP_SHARED` mapping of a device file, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mmap {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the raw pointer is
// not tied to the creating thread and all access goes through volatile
// accessors or raw pointers whose users uphold their own rules.
unsafe impl Send for Mmap {}
// SAFETY: as above; `Mmap` exposes no interior mutability of its own.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// `mmap(NULL, len, prot, MAP_SHARED, fd, offset)`.
    pub(crate) fn map_shared(
        fd: BorrowedFd<'_>,
        len: usize,
        writable: bool,
        offset: u64,
    ) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh mapping at an address the kernel chooses cannot
        // alias existing Rust memory; the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
        Ok(Self { addr, len })
    }

    /// [`Mmap::map_shared`] of `pages` Xen pages of `fd` at byte `offset`.
    pub(crate) fn map_pages(
        fd: BorrowedFd<'_>,
        pages: usize,
        writable: bool,
        offset: u64,
    ) -> Result<Self, HandleError> {
        let len = pages_to_bytes(pages).ok_or(HandleError::BadCount(pages))?;
        Self::map_shared(fd, len, writable, offset)
            .map_err(|source| HandleError::Mmap { pages, source })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` describe a mapping this value created and
        // nobody else unmaps; borrows of it cannot outlive `self`.
        let ret = unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
        if ret != 0 {
            log::warn!(
                "munmap({:p}, {}) failed: {}",
                self.addr,
                self.len,
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn mmap_of_a_regular_file_round_trips() {
        let path = std::env::temp_dir().join(format!("vmsg-xen-mmap-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(2 * XEN_PAGE_SIZE as u64).unwrap();
        let map = Mmap::map_shared(file.as_fd(), 2 * XEN_PAGE_SIZE, true, 0).unwrap();
        assert_eq!(map.len(), 2 * XEN_PAGE_SIZE);
        // SAFETY: in bounds of a live writable mapping owned by this test.
        unsafe { map.as_ptr().add(5).write_volatile(0xab) };
        drop(map);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data[5], 0xab);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn zero_length_mapping_is_rejected() {
        let file = std::fs::File::open("/dev/zero").unwrap();
        let err = Mmap::map_shared(file.as_fd(), 0, false, 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn open_device_reports_the_path_and_errno() {
        match open_device(Path::new("/nonexistent/xen-node")) {
            Err(HandleError::Open { path, source }) => {
                assert_eq!(path, Path::new("/nonexistent/xen-node"));
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn page_mappings_report_count_and_mmap_errors() {
        let file = std::fs::File::open("/dev/zero").unwrap();
        let map = Mmap::map_pages(file.as_fd(), 2, false, 0).unwrap();
        assert_eq!(map.len(), 2 * XEN_PAGE_SIZE);
        assert!(matches!(
            Mmap::map_pages(file.as_fd(), usize::MAX, false, 0),
            Err(HandleError::BadCount(usize::MAX))
        ));
        assert!(matches!(
            Mmap::map_pages(file.as_fd(), 0, false, 0),
            Err(HandleError::Mmap { pages: 0, source }) if source.raw_os_error() == Some(libc::EINVAL)
        ));
        let file = Arc::new(file);
        let region = owned_pages_region(&file, 0, 3, false).unwrap();
        assert_eq!(region.size(), 3 * XEN_PAGE_SIZE);
        assert!(matches!(
            owned_pages_region(&file, 0, usize::MAX, false),
            Err(HandleError::BadCount(usize::MAX))
        ));
    }

    #[test]
    fn page_arithmetic() {
        assert_eq!(pages_to_bytes(3), Some(3 * 4096));
        assert_eq!(pages_to_bytes(usize::MAX), None);
        assert!(host_page_size() >= 4096);
    }
}
