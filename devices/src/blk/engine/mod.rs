//! Block I/O engines: how requests reach the host file or block device.
//!
//! An engine executes *requests*: a token plus a short list of [`Op`]s run in
//! order, the first failure ending the request. One request yields exactly
//! one [`Completion`]. Two real engines exist — [`SyncEngine`]
//! (`preadv`/`pwritev` inline, completion available at once) and
//! [`UringEngine`] (io_uring; completions signalled through an eventfd) —
//! plus `FakeEngine`, an in-memory disk for tests (compiled for this
//! crate's tests, or with feature `fake`; not in the daemon).
//!
//! This module does not know about virtio: a benchmark can open a [`Disk`],
//! build an engine with [`open_engine`] and issue the same operations the
//! device issues, with the same engine:
//!
//! ```
//! use std::sync::Arc;
//! use vmsg_devices::blk::engine::*;
//!
//! # let file = tempfile::NamedTempFile::new().unwrap();
//! # file.as_file().set_len(1 << 20).unwrap();
//! # let path = file.path();
//! let disk = Arc::new(Disk::open(path, DiskOptions::default())?);
//! let mut engine = open_engine(Engine::IoUring, disk, 32)?;
//! let mut bufs: Vec<AlignedBuf> = (0..32).map(|_| AlignedBuf::new(4096, 4096).unwrap()).collect();
//! for (i, buf) in bufs.iter_mut().enumerate() {
//!     let op = Op::Read { offset: i as u64 * 4096, iov: IoVecs::from_buf(buf) };
//!     // SAFETY: `bufs` outlives the requests: `drain` below waits for them.
//!     unsafe { engine.submit(i as u64, vec![op])? };
//! }
//! engine.flush()?;
//! let mut done = Vec::new();
//! engine.drain(&mut done)?;
//! assert!(done.iter().all(|c| c.result.is_ok()));
//! # Ok::<(), EngineError>(())
//! ```
//!
//! A benchmark with a steady queue depth instead polls [`BlockEngine::event_fd`]
//! and calls [`BlockEngine::reap`], resubmitting as completions arrive.
//!
//! Semantics shared by the real engines:
//! - `Flush` is `fdatasync`.
//! - `Discard` is `fallocate(PUNCH_HOLE | KEEP_SIZE)`; where the file system
//!   says EOPNOTSUPP it succeeds without doing anything (discard is a hint).
//! - `WriteZeroes` is `fallocate(ZERO_RANGE | KEEP_SIZE)`, or
//!   `PUNCH_HOLE | KEEP_SIZE` when unmapping is allowed (a punched hole reads
//!   back as zeroes); on EOPNOTSUPP the next method is tried and finally the
//!   zeroes are written. What the file system refused is remembered in the
//!   [`Disk`], so later requests go straight to what works.
//! - With `O_DIRECT`, a read or write whose file offset or length is not a
//!   multiple of the logical block size fails with EINVAL (bouncing it would
//!   need a read-modify-write that races with concurrent writes to the same
//!   block). One whose *memory* is misaligned is bounced through an aligned
//!   buffer, up to [`BOUNCE_BUDGET`] bytes in flight per engine; beyond that
//!   it fails with ENOMEM.
//! - With [`DiskOptions::bounce`] every read and write is bounced that way
//!   (guest memory the kernel cannot pin for I/O).

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;
use vm_memory::VolatileSlice;

#[cfg(any(test, feature = "fake"))]
mod fake;
mod sync;
mod uring;

#[cfg(any(test, feature = "fake"))]
pub use fake::{FakeDisk, FakeEngine, FakeOp};
pub use sync::SyncEngine;
pub use uring::UringEngine;

/// Bytes of bounce buffers one engine may have in flight (O_DIRECT with
/// misaligned guest memory). Bounds what a hostile guest can make us allocate.
pub const BOUNCE_BUDGET: usize = 64 << 20;
/// Most iovecs handed to the kernel in one call (Linux `IOV_MAX`). Longer
/// lists are processed in several calls.
pub const IOV_MAX: usize = 1024;
/// Most operations in one request (the io_uring engine tags each with 8 bits).
pub const MAX_OPS: usize = 255;
/// Size of the zero buffer used when zeroes have to be written.
const ZERO_CHUNK: usize = 1 << 20;

/// Errors of the engines and of opening a disk.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The image or device could not be opened.
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// A property of the opened disk could not be read.
    #[error("querying {path}: {what}: {source}")]
    Query {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{0} is neither a regular file nor a block device")]
    NotADisk(PathBuf),
    /// io_uring could not be set up (kernel too old, disabled by policy).
    #[error("setting up io_uring: {0}")]
    UringSetup(io::Error),
    /// io_uring_enter failed in a way that leaves the ring unusable.
    #[error("io_uring submission: {0}")]
    Uring(io::Error),
    /// A request had no operations or more than [`MAX_OPS`].
    #[error("a request must have 1..={MAX_OPS} operations, not {0}")]
    BadRequest(usize),
    /// The eventfd could not be created.
    #[error("creating the completion eventfd: {0}")]
    EventFd(io::Error),
}

/// Which engine executes the I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Engine {
    /// `preadv`/`pwritev` on the device thread: simple, one request at a time.
    Sync,
    /// io_uring: many requests in flight, completed asynchronously.
    #[default]
    IoUring,
}

/// How to open a disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskOptions {
    /// Open read-only; writes fail.
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// Bounce every read and write through a buffer of ours: the guest's
    /// memory cannot be pinned by the kernel (a PFN mapping).
    pub bounce: bool,
}

/// What the device model needs to know about a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in bytes.
    pub size: u64,
    /// Smallest unit of I/O the disk accepts (512 for buffered files; the
    /// device's or file system's DIO alignment with `O_DIRECT`).
    pub logical_block_size: u32,
    /// Physical block size (a multiple of the logical one).
    pub physical_block_size: u32,
    /// Offset of the first physically aligned logical block, in bytes.
    pub alignment_offset: u32,
    /// Suggested minimum I/O size in bytes (0: unknown).
    pub min_io_size: u32,
    /// Optimal I/O size in bytes (0: unknown).
    pub opt_io_size: u32,
    /// Opened read-only.
    pub read_only: bool,
}

impl DiskInfo {
    /// What the config space (`vmsg-device-core`'s) needs of the disk.
    pub fn geometry(&self) -> vmsg_device_core::blk::config::DiskGeometry {
        vmsg_device_core::blk::config::DiskGeometry {
            size: self.size,
            logical_block_size: self.logical_block_size,
            physical_block_size: self.physical_block_size,
            alignment_offset: self.alignment_offset,
            min_io_size: self.min_io_size,
            opt_io_size: self.opt_io_size,
        }
    }
}

/// An opened image file or block device, shared by the device and its engine.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    info: DiskInfo,
    direct: bool,
    /// Bounce every read and write.
    bounce: bool,
    /// Alignment O_DIRECT needs for memory buffers.
    mem_align: usize,
    /// Cleared once the file system refused `PUNCH_HOLE`.
    punch_hole: AtomicBool,
    /// Cleared once the file system refused `ZERO_RANGE`.
    zero_range: AtomicBool,
}

// Block-device ioctls (linux/fs.h) that libc does not name on every arch.
const BLKALIGNOFF: libc::Ioctl = 0x127a;

impl Disk {
    /// Open `path` (a regular file or a block device) once for the device's
    /// lifetime.
    pub fn open(path: impl AsRef<Path>, opts: DiskOptions) -> Result<Self, EngineError> {
        let path = path.as_ref().to_path_buf();
        let mut flags = libc::O_CLOEXEC;
        if opts.direct {
            flags |= libc::O_DIRECT;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(flags)
            .open(&path)
            .map_err(|source| EngineError::Open {
                path: path.clone(),
                source,
            })?;
        let query = |what: &'static str| {
            let path = path.clone();
            move |source| EngineError::Query { path, what, source }
        };
        let meta = file.metadata().map_err(query("metadata"))?;
        let ftype = meta.file_type();
        // The end offset is the size for files and block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(query("size"))?;
        let info = if ftype.is_block_device() {
            let fd = file.as_raw_fd();
            let lbs = ioctl_u32(fd, libc::BLKSSZGET).map_err(query("BLKSSZGET"))?;
            let pbs = ioctl_u32(fd, libc::BLKPBSZGET).unwrap_or(lbs);
            DiskInfo {
                size,
                logical_block_size: lbs.max(512),
                physical_block_size: pbs.max(lbs),
                alignment_offset: ioctl_u32(fd, BLKALIGNOFF).unwrap_or(0),
                min_io_size: ioctl_u32(fd, libc::BLKIOMIN).unwrap_or(0),
                opt_io_size: ioctl_u32(fd, libc::BLKIOOPT).unwrap_or(0),
                read_only: opts.read_only,
            }
        } else if ftype.is_file() {
            use std::os::unix::fs::MetadataExt;
            let lbs = if opts.direct {
                dio_offset_align(&file).unwrap_or(4096).max(512)
            } else {
                512
            };
            let blksize = u32::try_from(meta.blksize()).unwrap_or(4096);
            let pbs = if blksize.is_power_of_two() && blksize >= lbs {
                blksize
            } else {
                lbs
            };
            DiskInfo {
                size,
                logical_block_size: lbs,
                physical_block_size: pbs,
                alignment_offset: 0,
                min_io_size: pbs,
                opt_io_size: 0,
                read_only: opts.read_only,
            }
        } else {
            return Err(EngineError::NotADisk(path));
        };
        Ok(Self {
            file,
            path,
            direct: opts.direct,
            bounce: opts.bounce,
            mem_align: info.logical_block_size as usize,
            info,
            punch_hole: AtomicBool::new(true),
            zero_range: AtomicBool::new(true),
        })
    }

    /// Geometry and flags.
    pub fn info(&self) -> DiskInfo {
        self.info
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it was opened with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The file descriptor (owned by the disk).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Forget that `fallocate` works, so write-zeroes writes zeroes and
    /// discard does nothing. For tests of the fallback path on file systems
    /// that support everything.
    pub fn assume_no_fallocate(&self) {
        self.punch_hole.store(false, Ordering::Relaxed);
        self.zero_range.store(false, Ordering::Relaxed);
    }

    fn refuse_punch_hole(&self) {
        self.punch_hole.store(false, Ordering::Relaxed);
    }

    fn punch_hole_ok(&self) -> bool {
        self.punch_hole.load(Ordering::Relaxed)
    }

    fn zero_range_ok(&self) -> bool {
        self.zero_range.load(Ordering::Relaxed)
    }
}

/// A block-device ioctl that returns an int-sized value.
fn ioctl_u32(fd: RawFd, req: libc::Ioctl) -> io::Result<u32> {
    let mut val: libc::c_uint = 0;
    // SAFETY: every request passed here writes one int-sized value to the
    // pointer, which points at a live local of that size.
    let ret = unsafe { libc::ioctl(fd, req, &mut val as *mut libc::c_uint) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

/// The file system's O_DIRECT offset alignment (statx `STATX_DIOALIGN`, Linux
/// 6.1+), if it reports one.
fn dio_offset_align(file: &File) -> Option<u32> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid C string, the fd is open, and `stx` is a
    // live, writable statx buffer.
    let ret = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if ret != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some(stx.stx_dio_offset_align.max(stx.stx_dio_mem_align))
}

/// A scatter-gather list: addresses and lengths of memory the I/O reads from
/// or writes to. It only carries addresses; the contract of
/// [`BlockEngine::submit`] says who keeps the memory valid.
#[derive(Debug, Default)]
pub struct IoVecs(Vec<libc::iovec>);

// SAFETY: IoVecs is a list of addresses. Dereferencing them is what needs
// care, and that is governed by `BlockEngine::submit`'s contract whichever
// thread does it.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// An empty list.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// An empty list with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Append `len` bytes at `ptr`.
    pub fn push(&mut self, ptr: *mut u8, len: usize) {
        self.0.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        });
    }

    /// A list covering all of `buf`.
    pub fn from_buf(buf: &mut AlignedBuf) -> Self {
        let mut v = Self::with_capacity(1);
        v.push(buf.as_mut_ptr(), buf.len());
        v
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total bytes.
    pub fn total_len(&self) -> u64 {
        self.0.iter().map(|v| v.iov_len as u64).sum()
    }

    /// The entries.
    pub fn as_slice(&self) -> &[libc::iovec] {
        &self.0
    }

    /// Whether every base and length is a multiple of `align`.
    fn is_aligned(&self, align: usize) -> bool {
        self.0
            .iter()
            .all(|v| (v.iov_base as usize) % align == 0 && v.iov_len % align == 0)
    }

    /// The entries left after skipping `skip` bytes, at most [`IOV_MAX`].
    fn remainder(&self, skip: u64) -> Vec<libc::iovec> {
        let mut skip = skip;
        let mut out = Vec::with_capacity(self.0.len().min(IOV_MAX));
        for v in &self.0 {
            if out.len() == IOV_MAX {
                break;
            }
            let len = v.iov_len as u64;
            if skip >= len {
                skip -= len;
                continue;
            }
            out.push(libc::iovec {
                iov_base: v.iov_base.cast::<u8>().wrapping_add(skip as usize).cast(),
                iov_len: (len - skip) as usize,
            });
            skip = 0;
        }
        out
    }
}

/// One operation on the disk. Offsets and lengths are in bytes.
#[derive(Debug)]
pub enum Op {
    /// Read `iov.total_len()` bytes at `offset` into `iov`.
    Read { offset: u64, iov: IoVecs },
    /// Write `iov` at `offset`.
    Write { offset: u64, iov: IoVecs },
    /// Make completed writes durable (`fdatasync`).
    Flush,
    /// Deallocate a range if the host can (contents afterwards unspecified).
    Discard { offset: u64, len: u64 },
    /// Make a range read back as zeroes; `unmap` allows deallocating it.
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

impl Op {
    /// Bytes this operation moves between memory and disk.
    pub fn data_len(&self) -> u64 {
        match self {
            Op::Read { iov, .. } | Op::Write { iov, .. } => iov.total_len(),
            _ => 0,
        }
    }
}

/// The end of one request.
#[derive(Debug)]
pub struct Completion {
    /// The token given to [`BlockEngine::submit`].
    pub token: u64,
    /// Success, or the first failure.
    pub result: io::Result<()>,
}

/// An I/O engine. One thread drives it.
pub trait BlockEngine: Send + std::fmt::Debug {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Queue a request: `ops` run in order and the first failure ends it.
    /// Its [`Completion`] carries `token`. Per-request I/O errors are
    /// reported through the completion; `Err` means the engine itself broke.
    ///
    /// # Safety
    ///
    /// Every buffer the `ops` point to must stay valid for the access
    /// (mapped, and writable for reads) until this request's completion has
    /// been returned by [`BlockEngine::reap`] or [`BlockEngine::drain`].
    unsafe fn submit(&mut self, token: u64, ops: Vec<Op>) -> Result<(), EngineError>;

    /// Hand queued work to the kernel (one system call for a batch).
    fn flush(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

    /// Append the requests that completed so far to `out`; never blocks.
    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError>;

    /// Block until every submitted request completed; append them to `out`.
    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError>;

    /// A file descriptor that becomes readable when [`BlockEngine::reap`] has
    /// something to return. `None` for engines that complete inside
    /// [`BlockEngine::submit`].
    fn event_fd(&self) -> Option<RawFd> {
        None
    }

    /// Requests submitted and not yet returned.
    fn in_flight(&self) -> usize;
}

/// Build the engine of kind `kind` on `disk`. `depth` is the number of
/// requests expected in flight at once (sizes the io_uring rings).
pub fn open_engine(
    kind: Engine,
    disk: Arc<Disk>,
    depth: u32,
) -> Result<Box<dyn BlockEngine>, EngineError> {
    Ok(match kind {
        Engine::Sync => Box::new(SyncEngine::new(disk)),
        Engine::IoUring => Box::new(UringEngine::new(disk, depth)?),
    })
}

/// Heap memory aligned for O_DIRECT, zero-initialised.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.layout.size())
            .field("align", &self.layout.align())
            .finish()
    }
}

impl AlignedBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two). `None` if the
    /// layout is invalid or allocation fails.
    pub fn new(len: usize, align: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        Some(Self {
            ptr: std::ptr::NonNull::new(ptr)?,
            layout,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always false: a buffer has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Start of the buffer.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation is `len` initialised bytes owned by self,
        // and the shared borrow of self prevents writes through it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    /// The contents, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, and the exclusive borrow of self makes this
        // the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout and not freed before.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A bounce buffer standing in for misaligned memory under O_DIRECT, or for
/// memory the kernel cannot pin.
#[derive(Debug)]
struct Bounce {
    buf: AlignedBuf,
    orig: IoVecs,
    read: bool,
}

impl Bounce {
    /// Copy the disk data read into the bounce buffer out to the real
    /// buffers.
    ///
    /// # Safety
    ///
    /// `orig` must still be valid per [`BlockEngine::submit`]'s contract.
    unsafe fn scatter(&self) {
        let mut src = self.buf.as_slice();
        for v in self.orig.as_slice() {
            let n = v.iov_len.min(src.len());
            // SAFETY: the caller guarantees the iovec is valid memory; the
            // guest may access it concurrently, hence a volatile slice.
            let dst = unsafe { VolatileSlice::new(v.iov_base.cast(), n) };
            dst.copy_from(&src[..n]);
            src = &src[n..];
        }
    }
}

/// Under O_DIRECT, check a read or write's alignment and bounce misaligned
/// memory; with [`DiskOptions::bounce`], bounce all of it. `budget` counts
/// bounce bytes in flight.
///
/// # Safety
///
/// The op's buffers must be valid per [`BlockEngine::submit`]'s contract.
unsafe fn prepare_direct(
    disk: &Disk,
    op: &mut Op,
    budget: &mut usize,
) -> io::Result<Option<Bounce>> {
    if !disk.direct && !disk.bounce {
        return Ok(None);
    }
    let lbs = u64::from(disk.info.logical_block_size);
    let (offset, iov, read) = match op {
        Op::Read { offset, iov } => (*offset, iov, true),
        Op::Write { offset, iov } => (*offset, iov, false),
        _ => return Ok(None),
    };
    let total = iov.total_len();
    if disk.direct && (offset % lbs != 0 || total % lbs != 0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    if !disk.bounce && iov.is_aligned(disk.mem_align) {
        return Ok(None);
    }
    let len = usize::try_from(total).map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
    if budget.saturating_add(len) > BOUNCE_BUDGET {
        return Err(io::Error::from_raw_os_error(libc::ENOMEM));
    }
    let mut buf = AlignedBuf::new(len, disk.mem_align.max(4096))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    if !read {
        let mut dst = buf.as_mut_slice();
        for v in iov.as_slice() {
            let n = v.iov_len.min(dst.len());
            // SAFETY: the caller guarantees the iovec is valid memory.
            let src = unsafe { VolatileSlice::new(v.iov_base.cast(), n) };
            src.copy_to(&mut dst[..n]);
            dst = &mut dst[n..];
        }
    }
    *budget += len;
    let orig = std::mem::replace(iov, IoVecs::from_buf(&mut buf));
    Ok(Some(Bounce { buf, orig, read }))
}

/// `fallocate` mode for a discard.
const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// `fallocate` mode for zeroing in place.
const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// Whether an errno means "this file system cannot do that fallocate mode".
fn unsupported(errno: i32) -> bool {
    errno == libc::EOPNOTSUPP || errno == libc::ENOSYS || errno == libc::ENODEV
}

/// How a write-zeroes is carried out, in the order tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ZeroMethod {
    Punch,
    ZeroRange,
    Write,
}

impl ZeroMethod {
    /// The first method worth trying on `disk`.
    fn first(disk: &Disk, unmap: bool) -> Self {
        if unmap && disk.punch_hole_ok() {
            ZeroMethod::Punch
        } else if disk.zero_range_ok() {
            ZeroMethod::ZeroRange
        } else {
            ZeroMethod::Write
        }
    }

    /// `self` was refused: remember it and return what to try next.
    fn refused(self, disk: &Disk) -> Self {
        match self {
            ZeroMethod::Punch => {
                disk.refuse_punch_hole();
                if disk.zero_range_ok() {
                    ZeroMethod::ZeroRange
                } else {
                    ZeroMethod::Write
                }
            }
            ZeroMethod::ZeroRange | ZeroMethod::Write => {
                disk.zero_range.store(false, Ordering::Relaxed);
                ZeroMethod::Write
            }
        }
    }
}

#[cfg(test)]
mod tests;
