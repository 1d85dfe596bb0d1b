//! The synchronous engine: `preadv`/`pwritev`/`fdatasync`/`fallocate` on the
//! calling thread. A request is complete when `submit` returns.

use std::io;
use std::sync::Arc;

use super::{
    AlignedBuf, BlockEngine, Completion, Disk, EngineError, IOV_MAX, IoVecs, MAX_OPS, Op, PUNCH,
    ZERO, ZERO_CHUNK, ZeroMethod, prepare_direct, unsupported,
};

/// Executes every request inline.
#[derive(Debug)]
pub struct SyncEngine {
    disk: Arc<Disk>,
    done: Vec<Completion>,
    zeroes: Option<AlignedBuf>,
    bounce_bytes: usize,
}

impl SyncEngine {
    /// An engine on `disk`.
    pub fn new(disk: Arc<Disk>) -> Self {
        Self {
            disk,
            done: Vec::new(),
            zeroes: None,
            bounce_bytes: 0,
        }
    }

    /// Run one operation to its end.
    ///
    /// # Safety
    ///
    /// The op's buffers must be valid per [`BlockEngine::submit`]'s contract.
    unsafe fn run(&mut self, mut op: Op) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        let bounce = unsafe { prepare_direct(&self.disk, &mut op, &mut self.bounce_bytes) }?;
        let result = self.run_prepared(&op);
        if let Some(b) = bounce {
            if result.is_ok() && b.read {
                // SAFETY: forwarded from the caller.
                unsafe { b.scatter() };
            }
            self.bounce_bytes -= b.buf.len();
        }
        result
    }

    fn run_prepared(&mut self, op: &Op) -> io::Result<()> {
        let fd = self.disk.fd();
        match op {
            Op::Read { offset, iov } => rw_all(fd, *offset, iov, true),
            Op::Write { offset, iov } => rw_all(fd, *offset, iov, false),
            Op::Flush => retry_eintr(|| {
                // SAFETY: fdatasync on an fd the disk owns.
                unsafe { libc::fdatasync(fd) }
            }),
            Op::Discard { offset, len } => {
                if *len == 0 || !self.disk.punch_hole_ok() {
                    return Ok(());
                }
                match fallocate(fd, PUNCH, *offset, *len) {
                    Err(e) if e.raw_os_error().is_some_and(unsupported) => {
                        self.disk.refuse_punch_hole();
                        Ok(())
                    }
                    r => r,
                }
            }
            Op::WriteZeroes { offset, len, unmap } => {
                if *len == 0 {
                    return Ok(());
                }
                let mut method = ZeroMethod::first(&self.disk, *unmap);
                loop {
                    let r = match method {
                        ZeroMethod::Punch => fallocate(fd, PUNCH, *offset, *len),
                        ZeroMethod::ZeroRange => fallocate(fd, ZERO, *offset, *len),
                        ZeroMethod::Write => return self.write_zeroes(*offset, *len),
                    };
                    match r {
                        Err(e) if e.raw_os_error().is_some_and(unsupported) => {
                            method = method.refused(&self.disk);
                        }
                        r => return r,
                    }
                }
            }
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let align = (self.disk.mem_align).max(4096);
        if self.zeroes.is_none() {
            self.zeroes = Some(
                AlignedBuf::new(ZERO_CHUNK, align)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?,
            );
        }
        let Some(zeroes) = self.zeroes.as_mut() else {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        };
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_CHUNK as u64) as usize;
            let mut iov = IoVecs::with_capacity(1);
            iov.push(zeroes.as_mut_ptr(), n);
            rw_all(self.disk.fd(), offset + done, &iov, false)?;
            done += n as u64;
        }
        Ok(())
    }
}

impl BlockEngine for SyncEngine {
    fn name(&self) -> &'static str {
        "sync"
    }

    unsafe fn submit(&mut self, token: u64, ops: Vec<Op>) -> Result<(), EngineError> {
        if ops.is_empty() || ops.len() > MAX_OPS {
            return Err(EngineError::BadRequest(ops.len()));
        }
        let mut result = Ok(());
        for op in ops {
            // SAFETY: forwarded from the caller.
            result = unsafe { self.run(op) };
            if result.is_err() {
                break;
            }
        }
        self.done.push(Completion { token, result });
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        out.append(&mut self.done);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        self.reap(out)
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}

/// Retry a libc call returning -1/errno while it fails with EINTR.
fn retry_eintr(mut f: impl FnMut() -> libc::c_int) -> io::Result<()> {
    loop {
        if f() == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn fallocate(fd: libc::c_int, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    retry_eintr(|| {
        // SAFETY: fallocate on an fd the disk owns; no memory is passed.
        unsafe { libc::fallocate(fd, mode, off, len) }
    })
}

/// Transfer all of `iov` at `offset`, looping over short transfers.
fn rw_all(fd: libc::c_int, offset: u64, iov: &IoVecs, read: bool) -> io::Result<()> {
    let total = iov.total_len();
    let mut done = 0u64;
    while done < total {
        let rest = iov.remainder(done);
        let pos =
            i64::try_from(offset + done).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let cnt = rest.len().min(IOV_MAX) as libc::c_int;
        // SAFETY: the iovecs describe memory valid per submit's contract
        // (or our own zero buffer); the kernel checks the fd.
        let n = unsafe {
            if read {
                libc::preadv(fd, rest.as_ptr(), cnt, pos)
            } else {
                libc::pwritev(fd, rest.as_ptr(), cnt, pos)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            // Past the end of a file that shrank underneath us.
            return Err(io::Error::from(if read {
                io::ErrorKind::UnexpectedEof
            } else {
                io::ErrorKind::WriteZero
            }));
        }
        done += n as u64;
    }
    Ok(())
}
