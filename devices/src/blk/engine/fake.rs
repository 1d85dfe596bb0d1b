//! A fake disk in memory, for tests: records what it was asked to do, can
//! fail on demand and can hold completions back until a test releases them
//! (standing in for an asynchronous engine).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::VolatileSlice;
use vmm_sys_util::eventfd::{EFD_CLOEXEC, EFD_NONBLOCK, EventFd};

use super::{BlockEngine, Completion, DiskInfo, EngineError, MAX_OPS, Op};

/// An operation the fake executed, for tests to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeOp {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64 },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

#[derive(Debug)]
struct State {
    data: Vec<u8>,
    log: Vec<FakeOp>,
    /// errnos the next operations fail with.
    fail: VecDeque<i32>,
    /// Requests a deferred engine may complete (oldest first / newest first).
    release_oldest: usize,
    release_newest: usize,
}

/// The shared state of a fake disk: tests keep one handle, the engine
/// another.
#[derive(Clone, Debug)]
pub struct FakeDisk {
    state: Arc<Mutex<State>>,
    event: Option<Arc<EventFd>>,
    read_only: bool,
}

impl FakeDisk {
    /// A zero-filled disk of `size` bytes whose engine completes requests
    /// inside `submit`, like the sync engine.
    pub fn new(size: usize) -> Self {
        Self::build(size, None, false)
    }

    /// Like [`FakeDisk::new`], but requests complete only when released
    /// ([`FakeDisk::release_oldest`]), signalled through an eventfd like the
    /// io_uring engine.
    pub fn deferred(size: usize) -> io::Result<Self> {
        let event = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?;
        Ok(Self::build(size, Some(Arc::new(event)), false))
    }

    /// The same disk, reported read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    fn build(size: usize, event: Option<Arc<EventFd>>, read_only: bool) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                data: vec![0; size],
                log: Vec::new(),
                fail: VecDeque::new(),
                release_oldest: 0,
                release_newest: 0,
            })),
            event,
            read_only,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has already failed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Geometry: 512-byte logical, 4 KiB physical blocks.
    pub fn info(&self) -> DiskInfo {
        DiskInfo {
            size: self.lock().data.len() as u64,
            logical_block_size: 512,
            physical_block_size: 4096,
            alignment_offset: 0,
            min_io_size: 4096,
            opt_io_size: 0,
            read_only: self.read_only,
        }
    }

    /// An engine on this disk.
    pub fn engine(&self) -> FakeEngine {
        FakeEngine {
            disk: self.clone(),
            queued: VecDeque::new(),
            done: Vec::new(),
        }
    }

    /// Bytes `[offset, offset + len)` of the disk.
    pub fn contents(&self, offset: usize, len: usize) -> Vec<u8> {
        let st = self.lock();
        st.data
            .get(offset..offset.saturating_add(len))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Overwrite the disk at `offset`.
    pub fn fill(&self, offset: usize, bytes: &[u8]) {
        let mut st = self.lock();
        if let Some(dst) = st.data.get_mut(offset..offset.saturating_add(bytes.len())) {
            dst.copy_from_slice(bytes);
        }
    }

    /// Operations executed so far, oldest first; clears the log.
    pub fn take_log(&self) -> Vec<FakeOp> {
        std::mem::take(&mut self.lock().log)
    }

    /// Make the next operation fail with `errno`.
    pub fn fail_next(&self, errno: i32) {
        self.lock().fail.push_back(errno);
    }

    /// Let the `n` oldest held-back requests complete.
    pub fn release_oldest(&self, n: usize) {
        self.lock().release_oldest += n;
        self.kick();
    }

    /// Let the `n` newest held-back requests complete.
    pub fn release_newest(&self, n: usize) {
        self.lock().release_newest += n;
        self.kick();
    }

    fn kick(&self) {
        if let Some(ev) = &self.event {
            let _ = ev.write(1);
        }
    }

    /// Execute one op against the data.
    ///
    /// # Safety
    ///
    /// The op's buffers must be valid per [`BlockEngine::submit`]'s contract.
    unsafe fn exec(&self, op: &Op) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(errno) = st.fail.pop_front() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let range = |st: &State, offset: u64, len: u64| -> io::Result<std::ops::Range<usize>> {
            let start = usize::try_from(offset).map_err(|_| einval())?;
            let end = start
                .checked_add(usize::try_from(len).map_err(|_| einval())?)
                .filter(|&e| e <= st.data.len())
                .ok_or_else(einval)?;
            Ok(start..end)
        };
        match op {
            Op::Read { offset, iov } => {
                let len = iov.total_len();
                let r = range(&st, *offset, len)?;
                let mut src = &st.data[r];
                for v in iov.as_slice() {
                    let n = v.iov_len.min(src.len());
                    // SAFETY: valid per the caller's contract; volatile
                    // because the guest may touch it concurrently.
                    let dst = unsafe { VolatileSlice::new(v.iov_base.cast(), n) };
                    dst.copy_from(&src[..n]);
                    src = &src[n..];
                }
                st.log.push(FakeOp::Read {
                    offset: *offset,
                    len,
                });
            }
            Op::Write { offset, iov } => {
                if self.read_only {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                }
                let len = iov.total_len();
                let r = range(&st, *offset, len)?;
                let mut dst = &mut st.data[r];
                for v in iov.as_slice() {
                    let n = v.iov_len.min(dst.len());
                    // SAFETY: as for reads.
                    let src = unsafe { VolatileSlice::new(v.iov_base.cast(), n) };
                    src.copy_to(&mut dst[..n]);
                    dst = &mut dst[n..];
                }
                st.log.push(FakeOp::Write {
                    offset: *offset,
                    len,
                });
            }
            Op::Flush => st.log.push(FakeOp::Flush),
            Op::Discard { offset, len } => {
                let r = range(&st, *offset, *len)?;
                st.data[r].fill(0);
                st.log.push(FakeOp::Discard {
                    offset: *offset,
                    len: *len,
                });
            }
            Op::WriteZeroes { offset, len, unmap } => {
                let r = range(&st, *offset, *len)?;
                st.data[r].fill(0);
                st.log.push(FakeOp::WriteZeroes {
                    offset: *offset,
                    len: *len,
                    unmap: *unmap,
                });
            }
        }
        Ok(())
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// The engine of a [`FakeDisk`].
#[derive(Debug)]
pub struct FakeEngine {
    disk: FakeDisk,
    queued: VecDeque<(u64, Vec<Op>)>,
    done: Vec<Completion>,
}

// SAFETY: the raw pointers in queued ops refer to memory governed by
// `submit`'s contract, whichever thread runs the engine.
unsafe impl Send for FakeEngine {}

impl FakeEngine {
    /// # Safety
    ///
    /// As for [`BlockEngine::submit`].
    unsafe fn run(&mut self, token: u64, ops: &[Op]) {
        let mut result = Ok(());
        for op in ops {
            // SAFETY: forwarded from the caller.
            result = unsafe { self.disk.exec(op) };
            if result.is_err() {
                break;
            }
        }
        self.done.push(Completion { token, result });
    }
}

impl BlockEngine for FakeEngine {
    fn name(&self) -> &'static str {
        "fake"
    }

    unsafe fn submit(&mut self, token: u64, ops: Vec<Op>) -> Result<(), EngineError> {
        if ops.is_empty() || ops.len() > MAX_OPS {
            return Err(EngineError::BadRequest(ops.len()));
        }
        if self.disk.event.is_some() {
            self.queued.push_back((token, ops));
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { self.run(token, &ops) };
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        if let Some(ev) = &self.disk.event {
            let _ = ev.read();
        }
        let (oldest, newest) = {
            let mut st = self.disk.lock();
            let o = st.release_oldest.min(self.queued.len());
            st.release_oldest -= o;
            let n = st.release_newest.min(self.queued.len() - o);
            st.release_newest -= n;
            (o, n)
        };
        for _ in 0..oldest {
            if let Some((token, ops)) = self.queued.pop_front() {
                // SAFETY: the submitter keeps the buffers valid until reaped.
                unsafe { self.run(token, &ops) };
            }
        }
        for _ in 0..newest {
            if let Some((token, ops)) = self.queued.pop_back() {
                // SAFETY: as above.
                unsafe { self.run(token, &ops) };
            }
        }
        out.append(&mut self.done);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        while let Some((token, ops)) = self.queued.pop_front() {
            // SAFETY: the submitter keeps the buffers valid until reaped.
            unsafe { self.run(token, &ops) };
        }
        out.append(&mut self.done);
        Ok(())
    }

    fn event_fd(&self) -> Option<RawFd> {
        self.disk.event.as_ref().map(|e| e.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.queued.len() + self.done.len()
    }
}
