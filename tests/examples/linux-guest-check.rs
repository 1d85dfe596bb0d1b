//! The checks of the real-Linux harness (`tests/linux-qemu/`) that busybox
//! cannot make: timed reads of the guest's hwrng, deterministic patterns
//! written and checked with `O_DIRECT`, the block ioctls (discard, write
//! zeroes), waiting for a device node or a process without polling loops.
//! Each subcommand prints `key=value` facts on one line and exits non-zero,
//! with the reason on stderr, when what it checks does not hold.
//!
//! The same program runs on the host after the guest powered off, to check
//! the image files from outside (`pattern check`, `zeros`, `allocated`).
//!
//! ```sh
//! linux-guest-check rng DEV BYTES                      # distinct=… differ=… ms=…
//! linux-guest-check pattern write|check FILE OFFSET LEN SEED [--direct]
//! linux-guest-check zeros FILE OFFSET LEN              # every byte of the range is 0
//! linux-guest-check blk-ioctl discard|zeroout DEV OFFSET LEN
//! linux-guest-check allocated FILE OFFSET LEN          # allocated=BYTES (SEEK_DATA/SEEK_HOLE)
//! linux-guest-check wait-path PATH TIMEOUT_MS          # inotify on the parent directory
//! linux-guest-check wait-exit PID TIMEOUT_MS           # pidfd; exited_ms=…
//! linux-guest-check wait-log FILE TEXT TIMEOUT_MS      # inotify on the file
//! ```

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

/// `_IO(0x12, 119)` and `_IO(0x12, 127)` from `<linux/fs.h>`.
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// O_DIRECT needs buffers and offsets aligned to the logical block size;
/// 4 KiB covers every device the harness uses.
const ALIGN: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&argv) {
        Ok(facts) => {
            println!("{facts}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("linux-guest-check: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(argv: &[&str]) -> Result<String> {
    match argv {
        ["rng", dev, bytes] => rng(dev, num(bytes)?),
        [
            "pattern",
            op @ ("write" | "check"),
            file,
            off,
            len,
            seed,
            rest @ ..,
        ] => {
            let direct = match rest {
                [] => false,
                ["--direct"] => true,
                _ => return Err(usage()),
            };
            pattern(
                *op == "write",
                file,
                num(off)?,
                num(len)?,
                num(seed)?,
                direct,
            )
        }
        ["zeros", file, off, len] => zeros(file, num(off)?, num(len)?),
        ["blk-ioctl", op @ ("discard" | "zeroout"), dev, off, len] => {
            blk_ioctl(*op == "discard", dev, num(off)?, num(len)?)
        }
        ["allocated", file, off, len] => allocated(file, num(off)?, num(len)?),
        ["wait-path", path, ms] => wait_path(Path::new(path), Duration::from_millis(num(ms)?)),
        ["wait-log", file, text, ms] => {
            wait_log(Path::new(file), text, Duration::from_millis(num(ms)?))
        }
        ["wait-exit", pid, ms] => wait_exit(num(pid)?, Duration::from_millis(num(ms)?)),
        _ => Err(usage()),
    }
}

fn usage() -> String {
    "usage: see the module documentation of tests/examples/linux-guest-check.rs".into()
}

/// A decimal or `0x` number.
fn num(s: &str) -> Result<u64> {
    let r = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Read `bytes` from the rng in two halves: how many distinct byte values,
/// whether the halves differ, and how long it took.
fn rng(dev: &str, bytes: u64) -> Result<String> {
    let half = usize::try_from(bytes / 2).map_err(|e| e.to_string())?;
    if half == 0 {
        return Err("read at least 2 bytes".into());
    }
    let mut f = File::open(dev).map_err(|e| format!("{dev}: {e}"))?;
    let t0 = Instant::now();
    let mut a = vec![0u8; half];
    let mut b = vec![0u8; half];
    f.read_exact(&mut a).map_err(|e| format!("{dev}: {e}"))?;
    f.read_exact(&mut b).map_err(|e| format!("{dev}: {e}"))?;
    let ms = t0.elapsed().as_millis();
    let mut seen = [false; 256];
    for &x in a.iter().chain(&b) {
        seen[usize::from(x)] = true;
    }
    let distinct = seen.iter().filter(|s| **s).count();
    let differ = a != b;
    let facts = format!(
        "bytes={} distinct={distinct} differ={differ} ms={ms}",
        2 * half
    );
    if distinct < 2 || !differ {
        return Err(format!("constant output: {facts}"));
    }
    Ok(facts)
}

/// xorshift64*, seeded: the same stream on the guest and on the host.
fn fill(buf: &mut [u8], seed: u64, start: u64) {
    let mut s = seed ^ 0x9e37_79b9_7f4a_7c15 ^ start.wrapping_mul(0x2545_f491_4f6c_dd1d);
    if s == 0 {
        s = 1;
    }
    for chunk in buf.chunks_mut(8) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let v = s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// A buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len.max(ALIGN), ALIGN)
            .map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".into());
        }
        Ok(Self { ptr, len })
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is an allocation of at least `len` bytes owned by
        // self; the borrow of self keeps it unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(self.len.max(ALIGN), ALIGN) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
        }
    }
}

/// Write (then fsync) or check the seeded pattern over `len` bytes at `off`,
/// in 64 KiB pieces; each piece's stream depends on its offset, so a piece
/// written to the wrong place is caught.
fn pattern(write: bool, file: &str, off: u64, len: u64, seed: u64, direct: bool) -> Result<String> {
    const PIECE: u64 = 64 << 10;
    if direct && (off % ALIGN as u64 != 0 || len % ALIGN as u64 != 0) {
        return Err(format!(
            "--direct needs {ALIGN}-byte aligned offset and length"
        ));
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(write);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let f = opts.open(file).map_err(|e| format!("{file}: {e}"))?;
    let mut want = vec![0u8; PIECE as usize];
    let mut io = Aligned::new(PIECE as usize)?;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(PIECE) as usize;
        let at = off + done;
        fill(&mut want[..n], seed, at);
        let buf = &mut io.as_mut()[..n];
        if write {
            buf.copy_from_slice(&want[..n]);
            f.write_all_at(buf, at)
                .map_err(|e| format!("write at {at}: {e}"))?;
        } else {
            f.read_exact_at(buf, at)
                .map_err(|e| format!("read at {at}: {e}"))?;
            if let Some(i) = buf.iter().zip(&want[..n]).position(|(a, b)| a != b) {
                return Err(format!(
                    "mismatch at byte {} (got {:#04x}, want {:#04x})",
                    at + i as u64,
                    buf[i],
                    want[i]
                ));
            }
        }
        done += n as u64;
    }
    if write {
        f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    }
    Ok(format!(
        "{} bytes={len} offset={off} seed={seed} direct={direct}",
        if write { "written" } else { "matched" }
    ))
}

fn zeros(file: &str, off: u64, len: u64) -> Result<String> {
    let f = File::open(file).map_err(|e| format!("{file}: {e}"))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], off + done)
            .map_err(|e| format!("read at {}: {e}", off + done))?;
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Err(format!(
                "byte {} is {:#04x}, not zero",
                off + done + i as u64,
                buf[i]
            ));
        }
        done += n as u64;
    }
    Ok(format!("zeros bytes={len} offset={off}"))
}

fn blk_ioctl(discard: bool, dev: &str, off: u64, len: u64) -> Result<String> {
    let f = OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))?;
    let range: [u64; 2] = [off, len];
    let (req, name) = if discard {
        (BLKDISCARD, "BLKDISCARD")
    } else {
        (BLKZEROOUT, "BLKZEROOUT")
    };
    // SAFETY: both ioctls read a `u64[2]` {start, length} that lives for the
    // call; the fd is open.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, range.as_ptr()) };
    if r != 0 {
        return Err(os_err(name));
    }
    Ok(format!("{name} offset={off} bytes={len}"))
}

/// Bytes of `[off, off+len)` backed by data extents.
fn allocated(file: &str, off: u64, len: u64) -> Result<String> {
    let f = File::open(file).map_err(|e| format!("{file}: {e}"))?;
    let fd = f.as_raw_fd();
    let end = off + len;
    let mut pos = off;
    let mut data = 0;
    while pos < end {
        let at = i64::try_from(pos).map_err(|e| e.to_string())?;
        // SAFETY: lseek on an open fd; no memory is passed.
        let d = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if d < 0 {
            break; // ENXIO: no data after pos
        }
        let d = d as u64;
        if d >= end {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d as i64, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(os_err("SEEK_HOLE"));
        }
        let h = (h as u64).min(end);
        data += h - d;
        pos = h;
    }
    Ok(format!("allocated={data} offset={off} bytes={len}"))
}

/// Wait until `path` exists, watching its directory with inotify.
fn wait_path(path: &Path, timeout: Duration) -> Result<String> {
    let dir = path.parent().ok_or("the path has no directory")?;
    let ms = wait_until(dir, libc::IN_CREATE | libc::IN_MOVED_TO, timeout, || {
        Ok(path.exists())
    })
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("appeared_ms={ms}"))
}

/// Wait until `file` contains `text`, watching it with inotify.
fn wait_log(file: &Path, text: &str, timeout: Duration) -> Result<String> {
    let ms = wait_until(file, libc::IN_MODIFY, timeout, || {
        let content = std::fs::read(file).map_err(|e| e.to_string())?;
        Ok(content
            .windows(text.len().max(1))
            .any(|w| w == text.as_bytes()))
    })
    .map_err(|e| format!("{text:?} in {}: {e}", file.display()))?;
    Ok(format!("found_ms={ms}"))
}

/// Evaluate `done` whenever `watched` sees one of `mask`'s events, until it
/// holds or `timeout` passes; the milliseconds it took.
fn wait_until(
    watched: &Path,
    mask: u32,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<u128> {
    let t0 = Instant::now();
    let cpath = CString::new(watched.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: plain syscall; the fd it returns is owned below.
    let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
    if ifd < 0 {
        return Err(os_err("inotify_init1"));
    }
    // SAFETY: ifd is a fresh fd nobody else owns.
    let ifd = unsafe { OwnedFd::from_raw_fd(ifd) };
    // SAFETY: cpath is a valid C string for the call.
    let w = unsafe { libc::inotify_add_watch(ifd.as_raw_fd(), cpath.as_ptr(), mask) };
    if w < 0 {
        return Err(os_err("inotify_add_watch"));
    }
    let mut events = File::from(ifd);
    // Checked after the watch exists, so a change in between is not missed.
    while !done()? {
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(format!("not within {timeout:?}"));
        }
        if poll_readable(events.as_raw_fd(), left)? {
            let mut buf = [0u8; 4096];
            events
                .read(&mut buf)
                .map_err(|e| format!("inotify read: {e}"))?;
        }
    }
    Ok(t0.elapsed().as_millis())
}

fn poll_readable(fd: i32, timeout: Duration) -> Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
    // SAFETY: one pollfd that lives for the call.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        return Err(os_err("poll"));
    }
    Ok(r > 0)
}

/// Wait for process `pid` to exit (it need not be our child).
fn wait_exit(pid: u64, timeout: Duration) -> Result<String> {
    let t0 = Instant::now();
    let pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok("exited_ms=0 (already gone)".into());
        }
        return Err(format!("pidfd_open({pid}): {e}"));
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !poll_readable(fd.as_raw_fd(), timeout)? {
        return Err(format!("process {pid} still running after {timeout:?}"));
    }
    Ok(format!("exited_ms={}", t0.elapsed().as_millis()))
}
