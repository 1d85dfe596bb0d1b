//! virtio-rng (device id 4): one request queue of device-writable buffers
//! that the device fills with host entropy.
//!
//! The entropy source sits behind [`EntropySource`] (`getrandom` in
//! production, a deterministic fake in tests). An optional token bucket
//! limits how many bytes per second one guest may draw, so one guest cannot
//! drain the host pool for the others.

use std::time::{Duration, Instant};

use log::debug;
use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryBackend};
use vmsg_backend::device::{DeviceError, QueueOutcome, VirtioDevice};
use vmsg_backend::memory::GuestMemory;

/// virtio device type of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes filled per step: bounds the stack buffer and the work one request
/// can do before the rate limiter is consulted again.
const CHUNK: usize = 4096;

/// Errors of the rng device's host side.
#[derive(Debug, Error)]
pub enum RngError {
    /// The host entropy source failed.
    #[error("host entropy source: {0}")]
    Source(String),
    /// A rate limit of 0 bytes/s would starve the guest forever.
    #[error("rate limit must be at least 1 byte/s")]
    ZeroRate,
}

/// Where the bytes come from.
pub trait EntropySource: Send {
    /// Fill `buf` completely.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError>;
}

/// The host's entropy via `getrandom(2)`.
#[derive(Debug, Default)]
pub struct HostEntropy;

impl EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
        getrandom::fill(buf).map_err(|e| RngError::Source(e.to_string()))
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
    /// Set while buffers wait for the rate limiter.
    starved: Option<Instant>,
    bytes_served: u64,
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
            bytes_served: 0,
        })
    }

    /// Bytes handed to the guest so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }

    /// Fill one chain's writable buffers, up to `budget` bytes. Returns the
    /// bytes written. Readable descriptors (a driver bug) are skipped; a
    /// buffer outside guest memory ends the request with what was written so
    /// far, it does not fail the device.
    fn fill_chain(
        &mut self,
        mem: &GuestMemory,
        descs: impl Iterator<Item = Descriptor>,
        budget: u64,
    ) -> Result<u32, DeviceError> {
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
                self.source
                    .fill(bytes)
                    .map_err(|e| DeviceError::Backend(e.to_string()))?;
                if mem.write_slice(bytes, addr).is_err() {
                    break 'descs;
                }
                done += n as u64;
                written += n as u64;
            }
        }
        // Each descriptor is at most u32::MAX bytes and a chain at most the
        // queue size long, but the used length is 32 bits: clamp.
        Ok(written.min(u64::from(u32::MAX)) as u32)
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
            };
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
            let written = self.fill_chain(mem, chain, budget)?;
            if let Some(bucket) = self.limit.as_mut() {
                bucket.tokens -= u64::from(written);
            }
            self.bytes_served += u64::from(written);
            queue
                .add_used(mem, head, written)
                .map_err(|e| corrupt(index, &e))?;
            outcome.used_added = true;
        }
        Ok(outcome)
    }

    fn reset(&mut self) {
        self.starved = None;
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.starved
    }
}

fn corrupt(queue: u16, e: &virtio_queue::Error) -> DeviceError {
    DeviceError::QueueCorrupt {
        queue,
        reason: e.to_string(),
    }
}
