//! The io_uring engine: a request becomes a chain of linked SQEs, submitted
//! in batches by [`BlockEngine::flush`]; completions are reaped when the
//! eventfd registered with the ring fires.
//!
//! A request is evaluated once every CQE of its chain arrived: a short
//! transfer, EAGAIN or an unsupported `fallocate` mode (the chain behind it
//! is cancelled by the kernel) resubmits the request from the first
//! unfinished operation; an error ends it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{IoUring, opcode, squeue, types};
use log::error;
use vmm_sys_util::eventfd::{EFD_CLOEXEC, EFD_NONBLOCK, EventFd};

use super::{
    AlignedBuf, BlockEngine, Bounce, Completion, Disk, EngineError, MAX_OPS, Op, PUNCH, ZERO,
    ZERO_CHUNK, ZeroMethod, prepare_direct, unsupported,
};

/// Resubmissions without progress (EAGAIN, EINTR) before a request fails.
const MAX_STALLS: u32 = 64;
/// io_uring_enter retries on EBUSY/EAGAIN before the engine gives up.
const MAX_BUSY: u32 = 1000;
/// Smallest ring: a request's chain (up to [`MAX_OPS`] SQEs) must fit.
const MIN_ENTRIES: u32 = 256;
/// Largest ring we ask for.
const MAX_ENTRIES: u32 = 4096;

#[derive(Debug)]
enum OpState {
    /// Not submitted (or to be submitted again).
    Pending,
    /// Submitted, no CQE yet.
    InFlight,
    Done,
    /// Submit again from here (short transfer, EAGAIN, method refused).
    Again {
        progress: bool,
    },
    Failed(io::Error),
    /// Cancelled because an earlier op of the chain did not finish.
    Cancelled,
}

#[derive(Debug)]
struct UringOp {
    op: Op,
    /// Bytes transferred so far (reads, writes, written zeroes).
    done: u64,
    state: OpState,
    /// The iovecs of the SQE in flight; the kernel reads them at submission.
    cur: Vec<libc::iovec>,
    zero: ZeroMethod,
    bounce: Option<Bounce>,
}

#[derive(Debug)]
struct Request {
    token: u64,
    ops: Vec<UringOp>,
    /// First op not known to be done.
    next: usize,
    /// CQEs still expected for the chain in flight.
    outstanding: u32,
    stalls: u32,
}

/// An io_uring engine on one disk.
pub struct UringEngine {
    ring: IoUring,
    disk: Arc<Disk>,
    event: EventFd,
    slots: Vec<Option<Request>>,
    free: Vec<u32>,
    live: usize,
    /// CQEs taken off the ring, not yet processed.
    cqes: Vec<(u64, i32)>,
    /// Requests to submit again.
    resubmit: Vec<u32>,
    /// Completed requests not yet reaped.
    ready: Vec<Completion>,
    /// SQEs pushed and not yet handed to the kernel.
    queued: usize,
    zeroes: AlignedBuf,
    bounce_bytes: usize,
}

// SAFETY: the ring, the disk and the buffers are owned by the engine; the raw
// pointers inside (iovecs, SQE addresses) refer to memory whose validity is
// governed by `submit`'s contract, not by the thread using the engine.
unsafe impl Send for UringEngine {}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("disk", &self.disk.path())
            .field("live", &self.live)
            .field("queued", &self.queued)
            .finish()
    }
}

impl UringEngine {
    /// An engine on `disk` sized for about `depth` requests in flight.
    pub fn new(disk: Arc<Disk>, depth: u32) -> Result<Self, EngineError> {
        let entries = depth
            .saturating_mul(2)
            .clamp(MIN_ENTRIES, MAX_ENTRIES)
            .next_power_of_two();
        let ring = IoUring::new(entries).map_err(EngineError::UringSetup)?;
        let event = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(EngineError::EventFd)?;
        ring.submitter()
            .register_eventfd(event.as_raw_fd())
            .map_err(EngineError::UringSetup)?;
        // A registered file saves the kernel a file-table lookup per SQE.
        ring.submitter()
            .register_files(&[disk.fd()])
            .map_err(EngineError::UringSetup)?;
        let align = disk.mem_align.max(4096);
        let zeroes = AlignedBuf::new(ZERO_CHUNK, align)
            .ok_or_else(|| EngineError::UringSetup(io::Error::from_raw_os_error(libc::ENOMEM)))?;
        Ok(Self {
            ring,
            disk,
            event,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            cqes: Vec::new(),
            resubmit: Vec::new(),
            ready: Vec::new(),
            queued: 0,
            zeroes,
            bounce_bytes: 0,
        })
    }

    /// A completion that happened without the kernel: make the eventfd fire
    /// so the owner reaps it.
    fn complete_now(&mut self, token: u64, result: io::Result<()>) {
        self.ready.push(Completion { token, result });
        let _ = self.event.write(1);
    }

    /// Build the SQE for op `k` of the request in `slot`, or `None` if the op
    /// needs no I/O.
    fn build(&mut self, slot: u32, k: usize) -> Option<squeue::Entry> {
        let disk = Arc::clone(&self.disk);
        let zero_ptr = self.zeroes.as_mut_ptr();
        let req = self.slots.get_mut(slot as usize)?.as_mut()?;
        let uop = req.ops.get_mut(k)?;
        let fd = types::Fixed(0);
        let entry = match &uop.op {
            Op::Read { offset, iov } | Op::Write { offset, iov } => {
                if uop.done >= iov.total_len() {
                    return None;
                }
                uop.cur = iov.remainder(uop.done);
                let (ptr, cnt) = (uop.cur.as_ptr(), uop.cur.len() as u32);
                let pos = offset + uop.done;
                if matches!(uop.op, Op::Read { .. }) {
                    opcode::Readv::new(fd, ptr, cnt).offset(pos).build()
                } else {
                    opcode::Writev::new(fd, ptr, cnt).offset(pos).build()
                }
            }
            Op::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Discard { offset, len } => {
                if *len == 0 || !disk.punch_hole_ok() {
                    return None;
                }
                opcode::Fallocate::new(fd, *len)
                    .offset(*offset)
                    .mode(PUNCH)
                    .build()
            }
            Op::WriteZeroes { offset, len, .. } => {
                if uop.done >= *len {
                    return None;
                }
                match uop.zero {
                    ZeroMethod::Punch => opcode::Fallocate::new(fd, *len)
                        .offset(*offset)
                        .mode(PUNCH)
                        .build(),
                    ZeroMethod::ZeroRange => opcode::Fallocate::new(fd, *len)
                        .offset(*offset)
                        .mode(ZERO)
                        .build(),
                    ZeroMethod::Write => {
                        let n = (len - uop.done).min(ZERO_CHUNK as u64) as u32;
                        opcode::Write::new(fd, zero_ptr, n)
                            .offset(offset + uop.done)
                            .build()
                    }
                }
            }
        };
        uop.state = OpState::InFlight;
        Some(entry.user_data((u64::from(slot) << 8) | k as u64))
    }

    /// Push the request's chain from its first unfinished op.
    fn push_chain(&mut self, slot: u32) -> Result<(), EngineError> {
        let Some(req) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return Ok(());
        };
        let (next, n) = (req.next, req.ops.len());
        let mut entries = Vec::with_capacity(n - next);
        for k in next..n {
            match self.build(slot, k) {
                Some(e) => entries.push(e),
                None => {
                    if let Some(op) = self.op_mut(slot, k) {
                        op.state = OpState::Done;
                    }
                }
            }
        }
        if let Some((last, rest)) = entries.split_last_mut() {
            for e in rest.iter_mut() {
                *e = e.clone().flags(squeue::Flags::IO_LINK);
            }
            let _ = last;
        }
        if let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            req.outstanding = entries.len() as u32;
        }
        if entries.is_empty() {
            // Nothing needed the kernel (e.g. zero-length ops).
            self.evaluate(slot);
            return Ok(());
        }
        // A linked chain must be pushed in one go; make room first.
        loop {
            let space = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if space >= entries.len() {
                break;
            }
            if self.queued == 0 {
                return Err(EngineError::BadRequest(entries.len()));
            }
            self.enter(0)?;
        }
        // SAFETY: the SQEs point at iovec arrays owned by the request (kept
        // until its completion), the engine's zero buffer, and the memory the
        // submitter vouched for in `submit`.
        unsafe { self.ring.submission().push_multiple(&entries) }
            .map_err(|_| EngineError::BadRequest(entries.len()))?;
        self.queued += entries.len();
        Ok(())
    }

    fn op_mut(&mut self, slot: u32, k: usize) -> Option<&mut UringOp> {
        self.slots.get_mut(slot as usize)?.as_mut()?.ops.get_mut(k)
    }

    /// io_uring_enter: submit what is queued and wait for `want` CQEs.
    fn enter(&mut self, want: usize) -> Result<(), EngineError> {
        let mut busy = 0u32;
        loop {
            match self.ring.submitter().submit_and_wait(want) {
                // Nothing consumed means nothing was left to consume.
                Ok(0) => {
                    self.queued = 0;
                    return Ok(());
                }
                Ok(n) => {
                    self.queued = self.queued.saturating_sub(n);
                    if self.queued == 0 || want > 0 {
                        return Ok(());
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // The CQ overflowed or the kernel is short of memory: make
                // room, then try again, a bounded number of times.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN))
                        && busy < MAX_BUSY =>
                {
                    busy += 1;
                    self.harvest();
                    if busy > 1 {
                        std::thread::yield_now();
                    }
                }
                Err(e) => return Err(EngineError::Uring(e)),
            }
        }
    }

    /// Move CQEs off the ring.
    fn harvest(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            self.cqes.push((cqe.user_data(), cqe.result()));
        }
    }

    /// Apply the harvested CQEs.
    fn process_cqes(&mut self) {
        let cqes = std::mem::take(&mut self.cqes);
        for &(ud, res) in &cqes {
            self.on_cqe(ud, res);
        }
        // Keep the allocation.
        self.cqes = cqes;
        self.cqes.clear();
    }

    fn on_cqe(&mut self, ud: u64, res: i32) {
        let slot = (ud >> 8) as u32;
        let k = (ud & 0xff) as usize;
        let disk = Arc::clone(&self.disk);
        let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        req.outstanding = req.outstanding.saturating_sub(1);
        let Some(uop) = req.ops.get_mut(k) else {
            return;
        };
        uop.state = if res >= 0 {
            let n = res as u64;
            match &uop.op {
                Op::Read { iov, .. } | Op::Write { iov, .. } => {
                    let total = iov.total_len();
                    uop.done += n;
                    if uop.done >= total {
                        OpState::Done
                    } else if n == 0 {
                        OpState::Failed(io::Error::from(if matches!(uop.op, Op::Read { .. }) {
                            io::ErrorKind::UnexpectedEof
                        } else {
                            io::ErrorKind::WriteZero
                        }))
                    } else {
                        OpState::Again { progress: true }
                    }
                }
                Op::WriteZeroes { len, .. } if uop.zero == ZeroMethod::Write => {
                    uop.done += n;
                    if uop.done >= *len {
                        OpState::Done
                    } else if n == 0 {
                        OpState::Failed(io::Error::from(io::ErrorKind::WriteZero))
                    } else {
                        OpState::Again { progress: true }
                    }
                }
                _ => OpState::Done,
            }
        } else {
            let errno = -res;
            match &uop.op {
                _ if errno == libc::ECANCELED => OpState::Cancelled,
                _ if errno == libc::EAGAIN || errno == libc::EINTR => {
                    OpState::Again { progress: false }
                }
                Op::Discard { .. } if unsupported(errno) => {
                    disk.refuse_punch_hole();
                    OpState::Done
                }
                Op::WriteZeroes { .. } if unsupported(errno) && uop.zero != ZeroMethod::Write => {
                    uop.zero = uop.zero.refused(&disk);
                    OpState::Again { progress: true }
                }
                _ => OpState::Failed(io::Error::from_raw_os_error(errno)),
            }
        };
        if req.outstanding == 0 {
            self.evaluate(slot);
        }
    }

    /// The chain of `slot` has no CQE outstanding: finish the request or
    /// schedule its resubmission.
    fn evaluate(&mut self, slot: u32) {
        enum Then {
            Finish(io::Result<()>),
            Resubmit,
        }
        let then = {
            let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                return;
            };
            loop {
                let Some(uop) = req.ops.get_mut(req.next) else {
                    break Then::Finish(Ok(()));
                };
                match std::mem::replace(&mut uop.state, OpState::Pending) {
                    OpState::Done => {
                        uop.state = OpState::Done;
                        req.next += 1;
                    }
                    OpState::Again { progress } => {
                        req.stalls = if progress { 0 } else { req.stalls + 1 };
                        if req.stalls > MAX_STALLS {
                            break Then::Finish(Err(io::Error::from_raw_os_error(libc::EAGAIN)));
                        }
                        // Everything after it runs again, after it.
                        for later in req.ops.iter_mut().skip(req.next + 1) {
                            later.state = OpState::Pending;
                        }
                        break Then::Resubmit;
                    }
                    OpState::Failed(e) => break Then::Finish(Err(e)),
                    OpState::Cancelled | OpState::Pending | OpState::InFlight => {
                        // Nothing before it failed, yet it did not run.
                        break Then::Finish(Err(io::Error::from_raw_os_error(libc::ECANCELED)));
                    }
                }
            }
        };
        match then {
            Then::Finish(result) => self.finish(slot, result),
            Then::Resubmit => self.resubmit.push(slot),
        }
    }

    fn finish(&mut self, slot: u32, result: io::Result<()>) {
        let Some(req) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        for uop in &req.ops {
            if let Some(b) = &uop.bounce {
                if result.is_ok() && b.read {
                    // SAFETY: the submitter keeps the buffers valid until
                    // this completion is reaped.
                    unsafe { b.scatter() };
                }
                self.bounce_bytes -= b.buf.len();
            }
        }
        self.free.push(slot);
        self.live -= 1;
        self.ready.push(Completion {
            token: req.token,
            result,
        });
    }

    /// Resubmit what needs it and hand everything queued to the kernel.
    fn push_pending(&mut self) -> Result<(), EngineError> {
        while let Some(slot) = self.resubmit.pop() {
            self.push_chain(slot)?;
        }
        if self.queued > 0 {
            self.enter(0)?;
        }
        Ok(())
    }
}

impl BlockEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    unsafe fn submit(&mut self, token: u64, ops: Vec<Op>) -> Result<(), EngineError> {
        if ops.is_empty() || ops.len() > MAX_OPS {
            return Err(EngineError::BadRequest(ops.len()));
        }
        let mut uops = Vec::with_capacity(ops.len());
        let mut failed = None;
        for mut op in ops {
            // SAFETY: forwarded from the caller.
            let bounce =
                match unsafe { prepare_direct(&self.disk, &mut op, &mut self.bounce_bytes) } {
                    Ok(b) => b,
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                };
            let zero = match &op {
                Op::WriteZeroes { unmap, .. } => ZeroMethod::first(&self.disk, *unmap),
                _ => ZeroMethod::Write,
            };
            uops.push(UringOp {
                op,
                done: 0,
                state: OpState::Pending,
                cur: Vec::new(),
                zero,
                bounce,
            });
            if failed.is_some() {
                break;
            }
        }
        if let Some(e) = failed {
            for b in uops.iter().filter_map(|u| u.bounce.as_ref()) {
                self.bounce_bytes -= b.buf.len();
            }
            self.complete_now(token, Err(e));
            return Ok(());
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(Request {
                token,
                ops: uops,
                next: 0,
                outstanding: 0,
                stalls: 0,
            });
        }
        self.live += 1;
        self.push_chain(slot)?;
        // Chains that needed no I/O completed inside push_chain.
        if !self.ready.is_empty() {
            let _ = self.event.write(1);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EngineError> {
        self.push_pending()
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        // Reset the eventfd first: a CQE posted after the harvest below
        // makes it fire again.
        let _ = self.event.read();
        self.harvest();
        self.process_cqes();
        self.push_pending()?;
        out.append(&mut self.ready);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Completion>) -> Result<(), EngineError> {
        loop {
            self.reap(out)?;
            if self.live == 0 {
                return Ok(());
            }
            self.enter(1)?;
        }
    }

    fn event_fd(&self) -> Option<RawFd> {
        Some(self.event.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.live + self.ready.len()
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The kernel may still write into submitted buffers: wait for it.
        let mut out = Vec::new();
        if let Err(e) = self.drain(&mut out) {
            error!("io_uring engine dropped with I/O in flight: {e}");
            // Memory the kernel writes into might be freed next: stopping is
            // the only safe course.
            std::process::abort();
        }
    }
}
