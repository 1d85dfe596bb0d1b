//! File-descriptor plumbing of the local bus: memfds, eventfds, fd passing
//! over the socket and bounded waits.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EfdFlags;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
use nix::sys::stat::{SFlag, fstat};
use vm_memory::{FileOffset, MmapRegion};

use super::{LocalBusError, RejectCode};

/// Create a sealable memfd of `size` bytes, allocate all of it and seal its
/// size, so the peer cannot shrink it under our mapping (which would SIGBUS
/// the mapper). Allocated here, its pages are the creator's: the daemon
/// refuses a memfd with holes (its own page faults would allocate them).
pub fn create_memfd(name: &str, size: u64) -> Result<File, LocalBusError> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(LocalBusError::os("memfd_create"))?;
    let len = i64::try_from(size).map_err(|_| LocalBusError::InvalidOptions("memfd size"))?;
    nix::unistd::ftruncate(&fd, len).map_err(LocalBusError::os("ftruncate"))?;
    if len > 0 {
        nix::fcntl::fallocate(&fd, nix::fcntl::FallocateFlags::empty(), 0, len)
            .map_err(LocalBusError::os("fallocate"))?;
    }
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(LocalBusError::os("F_ADD_SEALS"))?;
    Ok(File::from(fd))
}

/// A non-blocking, close-on-exec eventfd.
pub fn create_eventfd() -> Result<OwnedFd, LocalBusError> {
    nix::sys::eventfd::EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map(OwnedFd::from)
        .map_err(LocalBusError::os("eventfd"))
}

/// Check that a peer's fd is a sealed memfd (regular shmem file that cannot
/// shrink) of at least `need` bytes.
pub fn check_memfd(
    fd: &OwnedFd,
    need: u64,
    what: &str,
    code: RejectCode,
) -> Result<(), LocalBusError> {
    let st = fstat(fd).map_err(LocalBusError::os("fstat"))?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(LocalBusError::refused(
            code,
            format!("{what} fd is not a memfd"),
        ));
    }
    // Only memfds (and hugetlbfs memfds) can carry seals; F_SEAL_SHRINK is
    // what makes mapping the whole declared size safe.
    let seals = fcntl(fd, FcntlArg::F_GET_SEALS)
        .map_err(|_| LocalBusError::refused(code, format!("{what} fd is not a sealable memfd")))?;
    if SealFlag::from_bits_truncate(seals) & SealFlag::F_SEAL_SHRINK != SealFlag::F_SEAL_SHRINK {
        return Err(LocalBusError::refused(
            code,
            format!("{what} memfd is not sealed against shrinking (F_SEAL_SHRINK)"),
        ));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size < need {
        return Err(LocalBusError::refused(
            code,
            format!("{what} memfd holds {size} bytes, {need} declared"),
        ));
    }
    let allocated = allocated_bytes(&st);
    if allocated < need {
        return Err(LocalBusError::refused(
            code,
            format!(
                "{what} memfd has {allocated} of its {need} bytes allocated; allocate it all \
                 (fallocate) before sharing it"
            ),
        ));
    }
    Ok(())
}

/// Bytes of a file backed by allocated pages (`st_blocks` counts 512-byte
/// units; for a memfd, pages allocated or swapped out, not holes).
pub fn allocated_bytes(st: &nix::sys::stat::FileStat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512)
}

/// Whether the memfd behind a mapping still has at least `need` bytes
/// allocated (a driver can punch holes into a memfd sealed only against
/// shrinking).
pub fn still_allocated(file: &File, need: u64) -> Result<bool, Errno> {
    Ok(allocated_bytes(&fstat(file)?) >= need)
}

/// Check that a peer's fd is an eventfd and make it non-blocking (we must
/// never block reading a doorbell the peer also holds).
pub fn check_eventfd(fd: &OwnedFd, what: &str) -> Result<(), LocalBusError> {
    let link = nix::fcntl::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str())
        .map_err(LocalBusError::os("readlink /proc/self/fd"))?;
    if link != "anon_inode:[eventfd]" {
        return Err(LocalBusError::refused(
            RejectCode::BadFds,
            format!("{what} fd is not an eventfd"),
        ));
    }
    set_nonblocking(fd.as_fd())
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), LocalBusError> {
    let fl = fcntl(fd, FcntlArg::F_GETFL).map_err(LocalBusError::os("F_GETFL"))?;
    let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(fl)).map_err(LocalBusError::os("F_SETFL"))?;
    Ok(())
}

/// Map `size` bytes of a memfd shared and read-write.
pub fn map_memfd(file: File, size: usize, what: &'static str) -> Result<MmapRegion, LocalBusError> {
    MmapRegion::from_file(FileOffset::new(file, 0), size)
        .map_err(|source| LocalBusError::Map { what, source })
}

/// Ring an eventfd doorbell. A full counter (EAGAIN) already means "rung".
pub fn kick(fd: &OwnedFd) -> Result<(), Errno> {
    loop {
        match nix::unistd::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::EAGAIN) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Drain an eventfd. Returns how many reads found it rung (bounded: an
/// EFD_SEMAPHORE eventfd from a hostile peer decrements by one per read).
pub fn drain(fd: &OwnedFd) -> Result<u64, Errno> {
    let mut n = 0;
    let mut buf = [0u8; 8];
    while n < 64 {
        match nix::unistd::read(fd, &mut buf) {
            Ok(_) => n += 1,
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Send `data` with `fds` attached (never raises SIGPIPE).
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let n = loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            r => break r?,
        }
    };
    if n < data.len() {
        // The rest goes without fds (they travel with the first byte).
        send_all(sock, &data[n..])?;
    }
    Ok(())
}

/// Send all of `data` (blocking socket; never raises SIGPIPE).
pub fn send_all(sock: RawFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match nix::sys::socket::send(sock, data, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {
                // SAFETY: `sock` is open for the duration of this call (the
                // caller owns it).
                let b = unsafe { BorrowedFd::borrow_raw(sock) };
                wait_writable(b)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn wait_writable(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
    loop {
        match poll(&mut p, PollTimeout::from(1000u16)) {
            Ok(0) => return Err(Errno::ETIMEDOUT),
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Fill `buf` from the socket before `deadline`, collecting the fds that
/// come along, at most `max_fds` over the whole read.
///
/// Every fd the kernel installed for us is wrapped as owned at once, so each
/// is closed on every path, refusals included. The control buffer only has
/// room for `max_fds`: the kernel installs no more than fit and drops the
/// rest (marking the message truncated), so a peer cannot make us hold more
/// than `max_fds` fds, whatever it sends. A truncated message (more fds than
/// allowed, or the daemon out of fds so that the kernel could install only
/// some) or a total above `max_fds` is refused.
///
/// If `cancel` becomes readable first, the read ends with
/// [`LocalBusError::Stopped`].
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    deadline: Instant,
    max_fds: usize,
    cancel: Option<BorrowedFd<'_>>,
) -> Result<Vec<OwnedFd>, LocalBusError> {
    let mut fds = Vec::new();
    let mut got = 0;
    // u64 words keep the buffer aligned for `cmsghdr`.
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((max_fds * std::mem::size_of::<RawFd>()) as u32) };
    let mut control = vec![0u64; (space as usize).div_ceil(8)];
    let mut watched = vec![sock];
    watched.extend(cancel);
    while got < buf.len() {
        let ready = wait_readable(&watched, Some(deadline))?;
        if ready.get(1).copied().unwrap_or(false) {
            return Err(LocalBusError::Stopped);
        }
        if !ready[0] {
            return Err(LocalBusError::Timeout);
        }
        let (n, truncated) = match recvmsg_fds(sock, &mut buf[got..], &mut control, &mut fds) {
            Ok(r) => r,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Err(LocalBusError::Disconnected),
            Err(e) => return Err(LocalBusError::os("recvmsg")(e)),
        };
        if truncated || fds.len() > max_fds {
            return Err(LocalBusError::refused(
                RejectCode::BadFds,
                format!(
                    "more than {max_fds} file descriptors sent (or the daemon is out of file descriptors)"
                ),
            ));
        }
        if n == 0 {
            return Err(LocalBusError::Disconnected);
        }
        got += n;
    }
    Ok(fds)
}

/// One non-blocking `recvmsg` into `buf` with `control` as the control
/// buffer; every fd of every SCM_RIGHTS message in it is pushed to `fds` as
/// owned, also when the kernel truncated the control data. Returns the
/// bytes read and whether the control data was truncated (`MSG_CTRUNC`).
fn recvmsg_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    control: &mut [u64],
    fds: &mut Vec<OwnedFd>,
) -> Result<(usize, bool), Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = std::mem::size_of_val(control) as _;
    // SAFETY: `hdr` points at `iov` (which points at `buf`) and at
    // `control`, all live and exclusively borrowed for the call; the kernel
    // writes at most their lengths.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut hdr,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `hdr` was filled by a successful recvmsg: msg_controllen is
    // the length of valid control data in `control`, and the CMSG macros
    // only walk headers inside it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let header = data.offset_from(cmsg.cast::<u8>()) as usize;
                let count =
                    (c.cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = data
                        .add(i * std::mem::size_of::<RawFd>())
                        .cast::<RawFd>()
                        .read_unaligned();
                    // The kernel just installed `fd` in our table for us;
                    // nothing else owns it.
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
    Ok((n as usize, hdr.msg_flags & libc::MSG_CTRUNC != 0))
}

/// Fill `buf` from the socket before `deadline` (no fds expected: any that
/// arrive are discarded by the kernel since no control buffer is given).
pub fn recv_exact(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), LocalBusError> {
    let mut got = 0;
    while got < buf.len() {
        if !wait_readable(&[sock], Some(deadline))?[0] {
            return Err(LocalBusError::Timeout);
        }
        match recv(sock.as_raw_fd(), &mut buf[got..], MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err(LocalBusError::Disconnected),
            Ok(n) => got += n,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(Errno::ECONNRESET) => return Err(LocalBusError::Disconnected),
            Err(e) => return Err(LocalBusError::os("recv")(e)),
        }
    }
    Ok(())
}

/// What a non-blocking look at the control socket found.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketState {
    /// Nothing (more) to read.
    Idle,
    /// The peer closed or reset the connection.
    Closed,
}

/// Read and discard whatever the peer sent after the handshake (nothing is
/// defined; fds sent along are closed by the kernel since we pass no control
/// buffer). Bounded so a chatty peer cannot keep us here.
pub fn drain_socket(sock: BorrowedFd<'_>) -> Result<SocketState, Errno> {
    let mut buf = [0u8; 512];
    for _ in 0..16 {
        match recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) | Err(Errno::ECONNRESET) => return Ok(SocketState::Closed),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(SocketState::Idle),
            Err(e) => return Err(e),
        }
    }
    Ok(SocketState::Idle)
}

/// Wait until any of `fds` is readable (or hung up) or `deadline` passes.
/// Returns per-fd readiness; all false on timeout.
pub fn wait_readable(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> Result<Vec<bool>, LocalBusError> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so we never spin on a sub-millisecond remainder.
                let ms = left.as_micros().div_ceil(1000);
                PollTimeout::try_from(ms.min(i32::MAX as u128)).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut pfds, timeout) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(vec![false; fds.len()]);
                }
            }
            Ok(_) => {
                let ready = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
                return Ok(pfds
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| r.intersects(ready)))
                    .collect());
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(LocalBusError::os("poll")(e)),
        }
    }
}

/// `deadline` from an optional timeout (`None` = wait without bound).
pub fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}
