//! virtio-rng (device id 4): one request queue of device-writable buffers
//! that the device fills with host entropy.
//!
//! The entropy source sits behind [`EntropySource`] (`getrandom(2)` in
//! production, a deterministic fake in tests). An optional token bucket
//! limits how many bytes per second one guest may draw, so one guest cannot
//! drain the host pool for the others.
//!
//! Nothing here may block: one thread serves all of a guest's devices and
//! its bus, so a stalled rng would stall its blk and its PING answers too.
//! [`HostEntropy`] therefore asks with `GRND_NONBLOCK`. Early in boot, on a
//! host without a hardware RNG, the kernel's CRNG can stay uninitialised for
//! a long time; the source then says [`RngError::NotReady`] and the device
//! leaves the request on the ring and asks again every
//! [`NOT_READY_RETRY`] through its deadline, exactly as it waits for a rate
//! limit, instead of completing it empty or blocking.

use std::time::{Duration, Instant};

use log::{debug, info, warn};
use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryBackend};
use vmsg_backend::device::{DeviceError, PassBudget, QueueOutcome, VirtioDevice};
use vmsg_backend::memory::GuestMemory;

/// virtio device type of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes filled per step: bounds the stack buffer and the work one request
/// can do before the rate limiter is consulted again.
const CHUNK: usize = 4096;
/// Most bytes one request gets, whatever the size of its buffers: a guest
/// posting gigabyte buffers must not keep the daemon filling them. virtio-rng
/// lets the device write fewer bytes than the buffers hold (the used length
/// says how many); the driver asks again.
pub const MAX_REQUEST_BYTES: u64 = 64 << 10;
/// How long a request waits before a not-ready entropy source is asked
/// again. The kernel offers no wake-up we could poll without it firing
/// forever once ready (`/dev/random` stays readable), so the device polls:
/// 100 ms costs one failed syscall per tick per guest, and a guest waiting
/// at boot gets its entropy at most 100 ms after the host has it.
pub const NOT_READY_RETRY: Duration = Duration::from_millis(100);

/// Errors of the rng device's host side.
#[derive(Debug, Error)]
pub enum RngError {
    /// The host entropy source failed.
    #[error("host entropy source: {0}")]
    Source(String),
    /// The source has no entropy to give yet (the kernel's CRNG is not
    /// initialised): not a failure, ask again later.
    #[error("host entropy not ready yet")]
    NotReady,
    /// A rate limit of 0 bytes/s would starve the guest forever.
    #[error("rate limit must be at least 1 byte/s")]
    ZeroRate,
}

/// Where the bytes come from.
pub trait EntropySource: Send {
    /// Fill `buf` completely, without blocking.
    ///
    /// A source that has no entropy yet returns [`RngError::NotReady`]; the
    /// device retries after [`NOT_READY_RETRY`]. On any error the contents
    /// of `buf` are unspecified and never reach the guest.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError>;
}

/// The host's entropy via `getrandom(2)` with `GRND_NONBLOCK`.
#[derive(Debug, Default)]
pub struct HostEntropy;

impl EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: `rest` is a live, exclusively borrowed byte slice of
            // `rest.len()` bytes; the kernel writes at most that many bytes
            // into it and keeps no reference after the call returns.
            let n = unsafe {
                libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_NONBLOCK)
            };
            match n {
                // Short reads happen (a signal during a large read, or more
                // than the kernel hands out per call): ask for the rest.
                1.. => done += n as usize,
                // Never returned for a non-empty buffer; guard the loop.
                0 => return Err(RngError::Source("getrandom returned 0 bytes".into())),
                _ => {
                    let err = std::io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EINTR) => {}
                        Some(libc::EAGAIN) => return Err(RngError::NotReady),
                        _ => return Err(RngError::Source(format!("getrandom: {err}"))),
                    }
                }
            }
        }
        Ok(())
    }
}

/// A token bucket: `rate` bytes per second, bursts up to one second's worth.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let add = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = (self.tokens + add).min(self.rate);
            // Advance by the time the added tokens represent, so fractions
            // are not lost between calls.
            let used = Duration::from_nanos(
                (u128::from(add) * 1_000_000_000 / u128::from(self.rate)) as u64,
            );
            self.last += used;
            if self.tokens == self.rate {
                self.last = now;
            }
        }
    }

    /// When at least `want` (clamped to the burst) tokens will be available.
    fn ready_at(&self, want: u64) -> Instant {
        let want = want.min(self.rate).max(1);
        if self.tokens >= want {
            return self.last;
        }
        let missing = want - self.tokens;
        self.last
            + Duration::from_nanos(
                (u128::from(missing) * 1_000_000_000 / u128::from(self.rate)) as u64 + 1,
            )
    }
}

/// The virtio-rng device model.
pub struct RngDevice {
    name: String,
    queue_sizes: [u16; 1],
    source: Box<dyn EntropySource>,
    limit: Option<TokenBucket>,
    /// Set while buffers wait for the rate limiter or for the source to
    /// become ready: when to look at the queue again.
    starved: Option<Instant>,
    /// The source said not ready and has not filled anything since: the
    /// transitions are logged once each, not on every retry. Kept across
    /// device resets, since it is the host's state, not the guest's.
    entropy_waiting: bool,
    bytes_served: u64,
}

/// What [`RngDevice::fill_chain`] did with one chain.
#[derive(Debug, Clone, Copy)]
struct Filled {
    /// Bytes of entropy written to the chain's buffers.
    written: u32,
    /// The source was not ready: the chain is filled only up to `written`.
    not_ready: bool,
}

impl std::fmt::Debug for RngDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RngDevice")
            .field("name", &self.name)
            .field("limit", &self.limit.as_ref().map(|l| l.rate))
            .field("bytes_served", &self.bytes_served)
            .finish()
    }
}

impl RngDevice {
    /// An rng named `name` drawing from `source`, limited to `rate_limit`
    /// bytes per second if given.
    pub fn new(
        name: impl Into<String>,
        source: Box<dyn EntropySource>,
        rate_limit: Option<u64>,
    ) -> Result<Self, RngError> {
        if rate_limit == Some(0) {
            return Err(RngError::ZeroRate);
        }
        Ok(Self {
            name: name.into(),
            queue_sizes: [QUEUE_SIZE],
            source,
            limit: rate_limit.map(TokenBucket::new),
            starved: None,
            entropy_waiting: false,
            bytes_served: 0,
        })
    }

    /// Bytes handed to the guest so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }

    /// Fill one chain's writable buffers, up to `budget` bytes. Returns the
    /// bytes written and whether the source ran dry. Readable descriptors (a
    /// driver bug) are skipped; a buffer outside guest memory ends the
    /// request with what was written so far, it does not fail the device.
    /// Only bytes the source delivered are ever written to guest memory.
    fn fill_chain(
        &mut self,
        mem: &GuestMemory,
        descs: impl Iterator<Item = Descriptor>,
        budget: u64,
    ) -> Result<Filled, DeviceError> {
        let mut not_ready = false;
        let mut written: u64 = 0;
        let mut chunk = [0u8; CHUNK];
        'descs: for desc in descs {
            if !desc.is_write_only() {
                debug!("{}: skipping a device-readable descriptor", self.name);
                continue;
            }
            let mut done: u64 = 0;
            while done < u64::from(desc.len()) {
                let left = budget - written;
                if left == 0 {
                    break 'descs;
                }
                let n = (u64::from(desc.len()) - done).min(CHUNK as u64).min(left) as usize;
                let Some(addr) = desc.addr().checked_add(done) else {
                    break 'descs;
                };
                if !GuestMemoryBackend::check_range(mem, addr, n) {
                    debug!(
                        "{}: buffer at {:#x} outside guest memory",
                        self.name, addr.0
                    );
                    break 'descs;
                }
                let bytes = &mut chunk[..n];
                match self.source.fill(bytes) {
                    Ok(()) => self.note_ready(),
                    Err(RngError::NotReady) => {
                        self.note_not_ready();
                        not_ready = true;
                        break 'descs;
                    }
                    Err(e) => return Err(DeviceError::Backend(e.to_string())),
                }
                if mem.write_slice(bytes, addr).is_err() {
                    break 'descs;
                }
                done += n as u64;
                written += n as u64;
            }
        }
        // Each descriptor is at most u32::MAX bytes and a chain at most the
        // queue size long, but the used length is 32 bits: clamp.
        Ok(Filled {
            written: written.min(u64::from(u32::MAX)) as u32,
            not_ready,
        })
    }

    fn note_not_ready(&mut self) {
        if !self.entropy_waiting {
            self.entropy_waiting = true;
            warn!(
                "{}: host entropy not ready yet (kernel CRNG not initialised); \
                 requests wait, retrying every {} ms",
                self.name,
                NOT_READY_RETRY.as_millis()
            );
        }
    }

    fn note_ready(&mut self) {
        if self.entropy_waiting {
            self.entropy_waiting = false;
            info!("{}: host entropy ready, serving requests", self.name);
        }
    }
}

impl VirtioDevice for RngDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<QueueOutcome, DeviceError> {
        self.process_queue_bounded(index, queue, mem, &mut PassBudget::untimed())
    }

    fn process_queue_bounded(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
        pass: &mut PassBudget,
    ) -> Result<QueueOutcome, DeviceError> {
        let mut outcome = QueueOutcome::default();
        if index != 0 {
            return Ok(outcome);
        }
        self.starved = None;
        loop {
            let budget = match self.limit.as_mut() {
                Some(bucket) => {
                    bucket.refill(Instant::now());
                    bucket.tokens
                }
                None => u64::MAX,
            }
            .min(MAX_REQUEST_BYTES);
            // Pop only when there is budget, so a starved chain stays on the
            // ring untouched.
            if budget == 0 {
                if queue
                    .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                    .map_err(|e| corrupt(index, &e))?
                    != std::num::Wrapping(queue.next_avail())
                {
                    self.starved = self.limit.as_ref().map(|b| b.ready_at(CHUNK as u64));
                }
                break;
            }
            // The rest waits for the next pass (the host runs it after the
            // instance looked at its other work).
            if !pass.take_chain() {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // pop_descriptor_chain hides a corrupt avail index as "empty";
                // ask explicitly so a hostile index sets DEVICE_NEEDS_RESET.
                if queue.iter(mem).is_err() {
                    return Err(DeviceError::QueueCorrupt {
                        queue: index,
                        reason: "avail index moved beyond the queue size".into(),
                    });
                }
                break;
            };
            let head = chain.head_index();
            // Under a limit, serve a request only once a useful amount is
            // available (a chunk, or the whole buffer if smaller); otherwise
            // a starved driver would get a stream of few-byte completions.
            if self.limit.is_some() {
                let wanted: u64 = chain
                    .clone()
                    .filter(|d| d.is_write_only())
                    .map(|d| u64::from(d.len()))
                    .sum();
                let useful = wanted.clamp(1, CHUNK as u64);
                if budget < useful {
                    queue.go_to_previous_position();
                    self.starved = self.limit.as_ref().map(|b| b.ready_at(useful));
                    break;
                }
            }
            // take_chain guarantees bytes are left in this pass.
            let budget = budget.min(pass.bytes_left());
            let Filled { written, not_ready } = self.fill_chain(mem, chain, budget)?;
            if not_ready {
                // Retry on a timer: the instance keeps serving the bus and
                // the other devices meanwhile.
                self.starved = Some(Instant::now() + NOT_READY_RETRY);
                if written == 0 {
                    // Nothing to give: leave the chain on the ring for the
                    // retry rather than complete it empty.
                    queue.go_to_previous_position();
                    break;
                }
                // Otherwise complete it with the entropy it did get (a short
                // fill, as virtio-rng allows), then stop for this pass.
            }
            if let Some(bucket) = self.limit.as_mut() {
                bucket.tokens -= u64::from(written);
            }
            self.bytes_served += u64::from(written);
            pass.spend(u64::from(written));
            queue
                .add_used(mem, head, written)
                .map_err(|e| corrupt(index, &e))?;
            outcome.used_added = true;
            if not_ready {
                break;
            }
        }
        Ok(outcome)
    }

    fn reset(&mut self) {
        self.starved = None;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.starved
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        vec![("bytes_served", self.bytes_served)]
    }
}

fn corrupt(queue: u16, e: &virtio_queue::Error) -> DeviceError {
    DeviceError::QueueCorrupt {
        queue,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;

    const QSIZE: u16 = 16;
    /// Rings at 0, data buffers from here.
    const DATA: u64 = 0x1_0000;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("guest memory")
    }

    /// A minimal driver side of one split queue at address 0.
    struct Ring<'a> {
        mem: &'a GuestMemoryMmap,
        next_desc: u16,
        avail_idx: u16,
        seen_used: u16,
    }

    const AVAIL: u64 = 16 * QSIZE as u64;
    const USED: u64 = (AVAIL + 6 + 2 * QSIZE as u64 + 3) & !3;

    impl<'a> Ring<'a> {
        fn new(mem: &'a GuestMemoryMmap) -> Self {
            Self {
                mem,
                next_desc: 0,
                avail_idx: 0,
                seen_used: 0,
            }
        }

        fn queue(&self) -> Queue {
            let mut q = Queue::new(QSIZE).expect("queue");
            q.try_set_desc_table_address(GuestAddress(0)).expect("desc");
            q.try_set_avail_ring_address(GuestAddress(AVAIL))
                .expect("avail");
            q.try_set_used_ring_address(GuestAddress(USED))
                .expect("used");
            q.set_ready(true);
            q
        }

        /// Post one request of device-writable buffers `(addr, len)`.
        fn add(&mut self, bufs: &[(u64, u32)]) -> u16 {
            let head = self.next_desc;
            for (k, &(addr, len)) in bufs.iter().enumerate() {
                let i = (head + k as u16) % QSIZE;
                let mut flags = VRING_DESC_F_WRITE as u16;
                if k + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let d =
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, (i + 1) % QSIZE));
                self.mem
                    .write_obj(d, GuestAddress(16 * u64::from(i)))
                    .expect("descriptor");
            }
            self.next_desc = (head + bufs.len() as u16) % QSIZE;
            let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
            self.mem
                .write_obj(head.to_le(), GuestAddress(slot))
                .expect("avail slot");
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx.to_le(), GuestAddress(AVAIL + 2))
                .expect("avail idx");
            head
        }

        /// Used entries added since the last call: (id, len).
        fn used(&mut self) -> Vec<(u32, u32)> {
            let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).expect("used idx");
            let mut out = Vec::new();
            while self.seen_used != u16::from_le(idx) {
                let at = USED + 4 + 8 * u64::from(self.seen_used % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("id");
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("len");
                out.push((u32::from_le(id), u32::from_le(len)));
                self.seen_used = self.seen_used.wrapping_add(1);
            }
            out
        }
    }

    /// A source that is not ready on the calls `not_ready(call)` picks and
    /// otherwise yields the counting stream 0, 1, 2, … (as u8), so a test
    /// can tell exactly which bytes reached the guest.
    struct Scripted {
        calls: Arc<AtomicUsize>,
        not_ready: Box<dyn Fn(usize) -> bool + Send>,
        next: u8,
    }

    impl EntropySource for Scripted {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if (self.not_ready)(call) {
                // Scribble, as a failing source may: none of it may reach
                // the guest.
                buf.fill(0xEE);
                return Err(RngError::NotReady);
            }
            for b in buf {
                *b = self.next;
                self.next = self.next.wrapping_add(1);
            }
            Ok(())
        }
    }

    fn scripted(
        not_ready: impl Fn(usize) -> bool + Send + 'static,
    ) -> (RngDevice, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let source = Scripted {
            calls: calls.clone(),
            not_ready: Box::new(not_ready),
            next: 0,
        };
        let dev = RngDevice::new("rng", Box::new(source), None).expect("rng");
        (dev, calls)
    }

    fn counting(from: usize, len: usize) -> Vec<u8> {
        (from..from + len).map(|i| i as u8).collect()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).expect("read");
        v
    }

    #[test]
    fn a_not_ready_source_defers_requests_until_it_is_ready() {
        const NOT_READY: usize = 3;
        let mem = memory();
        let mut ring = Ring::new(&mem);
        let mut q = ring.queue();
        let (mut dev, calls) = scripted(|call| call < NOT_READY);
        // Three chunks' worth and then a second request behind it.
        let len = 2 * CHUNK as u32 + 100;
        let first = ring.add(&[(DATA, len)]);
        let second = ring.add(&[(DATA + 0x1_0000, 16)]);
        mem.write_slice(&[0x55; 3 * CHUNK], GuestAddress(DATA))
            .expect("poison");

        for pass in 0..NOT_READY {
            // Each pass is one quick attempt, not a wait: the pass that
            // would otherwise block returns at once with a deadline.
            let before = Instant::now();
            let outcome = dev.process_queue(0, &mut q, &mem).expect("process");
            let after = Instant::now();
            assert!(!outcome.used_added, "pass {pass}: nothing completed");
            assert!(ring.used().is_empty(), "pass {pass}: nothing completed");
            assert_eq!(calls.load(Ordering::SeqCst), pass + 1, "one try per pass");
            assert!(after - before < Duration::from_secs(1), "no blocking");
            let deadline = dev.next_deadline().expect("a retry is scheduled");
            assert!(
                deadline >= before + NOT_READY_RETRY && deadline <= after + NOT_READY_RETRY,
                "retry after NOT_READY_RETRY"
            );
            assert!(dev.entropy_waiting);
            assert_eq!(q.next_avail(), 0, "the request stays on the ring");
            assert_eq!(dev.bytes_served(), 0);
        }
        // Nothing the failing source scribbled reached the guest.
        assert_eq!(read(&mem, DATA, 3 * CHUNK), vec![0x55; 3 * CHUNK]);

        // The instance runs the device again at the deadline; time is not
        // waited for here, only the pass it triggers is replayed.
        let outcome = dev.process_queue(0, &mut q, &mem).expect("process");
        assert!(outcome.used_added);
        assert_eq!(
            ring.used(),
            vec![(u32::from(first), len), (u32::from(second), 16)],
            "both requests complete in order, in full"
        );
        assert_eq!(read(&mem, DATA, len as usize), counting(0, len as usize));
        assert_eq!(read(&mem, DATA + 0x1_0000, 16), counting(len as usize, 16));
        assert_eq!(dev.next_deadline(), None, "no retry pending");
        assert!(!dev.entropy_waiting);
        assert_eq!(dev.bytes_served(), u64::from(len) + 16);
    }

    #[test]
    fn a_source_running_dry_mid_request_completes_only_what_it_delivered() {
        let mem = memory();
        let mut ring = Ring::new(&mem);
        let mut q = ring.queue();
        // The first chunk is filled, the second attempt is not ready.
        let (mut dev, _calls) = scripted(|call| call == 1);
        let first = ring.add(&[(DATA, CHUNK as u32), (DATA + 0x2000, CHUNK as u32)]);
        let second = ring.add(&[(DATA + 0x1_0000, 8)]);
        mem.write_slice(&[0x55; CHUNK], GuestAddress(DATA + 0x2000))
            .expect("poison");

        let outcome = dev.process_queue(0, &mut q, &mem).expect("process");
        assert!(outcome.used_added);
        assert_eq!(ring.used(), vec![(u32::from(first), CHUNK as u32)]);
        assert_eq!(read(&mem, DATA, CHUNK), counting(0, CHUNK));
        assert_eq!(read(&mem, DATA + 0x2000, CHUNK), vec![0x55; CHUNK]);
        assert!(dev.next_deadline().is_some(), "the second request waits");

        dev.process_queue(0, &mut q, &mem).expect("process");
        assert_eq!(ring.used(), vec![(u32::from(second), 8)]);
        assert_eq!(read(&mem, DATA + 0x1_0000, 8), counting(CHUNK, 8));
        assert_eq!(dev.next_deadline(), None);
    }

    #[test]
    fn not_ready_does_not_spend_the_rate_limit() {
        let mem = memory();
        let mut ring = Ring::new(&mem);
        let mut q = ring.queue();
        let calls = Arc::new(AtomicUsize::new(0));
        let source = Scripted {
            calls: calls.clone(),
            not_ready: Box::new(|call| call == 0),
            next: 0,
        };
        let mut dev = RngDevice::new("rng", Box::new(source), Some(64)).expect("rng");
        let head = ring.add(&[(DATA, 64)]);
        dev.process_queue(0, &mut q, &mem).expect("process");
        assert!(ring.used().is_empty());
        dev.process_queue(0, &mut q, &mem).expect("process");
        assert_eq!(ring.used(), vec![(u32::from(head), 64)], "the full burst");
    }

    /// Issue 10, defect 2: a ring full of huge requests. One pass serves
    /// at most `PassBudget::MAX_CHAINS` chains and `MAX_BYTES` bytes, each
    /// request at most `MAX_REQUEST_BYTES`; the rest waits on the ring for
    /// the next pass.
    #[test]
    fn a_pass_is_bounded_whatever_the_guest_posts() {
        let mem = memory();
        let mut ring = Ring::new(&mem);
        let mut q = ring.queue();
        let (mut dev, _calls) = scripted(|_| false);
        // Every request points at the same 64 KiB, declared 256 MiB long
        // (the device stops at the end of guest memory if not before).
        let huge = 256 << 20;
        for _ in 0..QSIZE {
            ring.add(&[(DATA, huge)]);
        }
        let mut budget = PassBudget::with_limits(4, u64::MAX, Duration::from_secs(3600));
        dev.process_queue_bounded(0, &mut q, &mem, &mut budget)
            .expect("process");
        let used = ring.used();
        assert_eq!(used.len(), 4, "one pass starts at most its chain budget");
        assert!(
            used.iter()
                .all(|&(_, len)| u64::from(len) <= MAX_REQUEST_BYTES),
            "each request gets at most the per-request cap: {used:?}"
        );
        assert_eq!(q.next_avail(), 4, "the rest stays on the ring");

        // The byte budget bounds a pass too.
        let mut budget =
            PassBudget::with_limits(64, 2 * MAX_REQUEST_BYTES, Duration::from_secs(3600));
        dev.process_queue_bounded(0, &mut q, &mem, &mut budget)
            .expect("process");
        let used = ring.used();
        let total: u64 = used.iter().map(|&(_, len)| u64::from(len)).sum();
        assert_eq!(used.len(), 2, "{used:?}");
        assert_eq!(total, 2 * MAX_REQUEST_BYTES);

        // A default pass: the host's bounds.
        let mut budget = PassBudget::untimed();
        dev.process_queue_bounded(0, &mut q, &mem, &mut budget)
            .expect("process");
        let total: u64 = ring.used().iter().map(|&(_, len)| u64::from(len)).sum();
        assert!(total <= PassBudget::MAX_BYTES, "{total}");
    }

    #[test]
    fn host_entropy_fills_buffers() {
        // The pool is initialised on the machines the tests run on.
        let mut a = vec![0u8; 1 << 20];
        let mut b = vec![0u8; 1 << 20];
        HostEntropy.fill(&mut a).expect("host entropy");
        HostEntropy.fill(&mut b).expect("host entropy");
        assert_ne!(a, b);
        // Filled to the end, not just a prefix.
        assert!(a[a.len() - 4096..].iter().any(|&x| x != 0));
        let mut seen = [false; 256];
        a.iter().for_each(|&x| seen[usize::from(x)] = true);
        assert!(seen.iter().all(|&s| s), "1 MiB covers every byte value");
        HostEntropy
            .fill(&mut [])
            .expect("an empty buffer is trivially full");
    }
}
