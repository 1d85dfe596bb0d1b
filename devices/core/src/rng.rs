//! virtio-rng (virtio 1.2 §5.4): one request queue; the device fills each
//! device-writable buffer with entropy and returns it. No config space, no
//! feature bits.

use alloc::vec;

use thiserror::Error;

use crate::host::{CoreDevice, Pass};
use crate::memory::DmaMemory;
use crate::virtq::{QueueError, SplitQueue};

/// Virtio device type of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Bytes one request may receive: a driver asking for more gets this much
/// (the used length says so, as §5.4.6.1 allows), bounding one request's work.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 64;

/// The entropy source could not deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("the entropy source failed")]
pub struct EntropyError;

/// Where random bytes come from.
pub trait EntropySource {
    /// Fill `buf` entirely with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

/// A virtio-rng device.
pub struct RngDevice<E: EntropySource> {
    source: E,
    sizes: [u16; 1],
    /// Source failures (the request is returned with what was written).
    pub source_errors: u64,
}

impl<E: EntropySource> core::fmt::Debug for RngDevice<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RngDevice")
            .field("source_errors", &self.source_errors)
            .finish_non_exhaustive()
    }
}

impl<E: EntropySource> RngDevice<E> {
    /// An rng fed by `source`.
    pub fn new(source: E) -> Self {
        Self {
            source,
            sizes: [QUEUE_SIZE],
            source_errors: 0,
        }
    }
}

impl<E: EntropySource + Send> CoreDevice for RngDevice<E> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn reset(&mut self) {}

    fn process_queue(
        &mut self,
        _index: u16,
        queue: &mut SplitQueue,
        mem: &dyn DmaMemory,
        budget: usize,
    ) -> Result<Pass, QueueError> {
        let mut pass = Pass::default();
        let mut chunk = vec![0u8; 4096];
        while pass.used < budget {
            let Some(chain) = queue.pop(mem)? else {
                return Ok(pass);
            };
            let mut written = 0usize;
            if !chain.broken {
                'descs: for d in chain.descs.iter().filter(|d| d.is_write()) {
                    let mut at = 0usize;
                    while at < d.len as usize && written < MAX_REQUEST_BYTES {
                        let n = (d.len as usize - at)
                            .min(chunk.len())
                            .min(MAX_REQUEST_BYTES - written);
                        if self.source.fill(&mut chunk[..n]).is_err() {
                            self.source_errors += 1;
                            break 'descs;
                        }
                        // A buffer outside the driver's memory ends the
                        // request with what was written so far.
                        if mem.write(d.addr + at as u64, &chunk[..n]).is_err() {
                            break 'descs;
                        }
                        at += n;
                        written += n;
                    }
                }
            }
            queue.add_used(mem, chain.head, written as u32)?;
            pass.used += 1;
        }
        pass.more = true;
        Ok(pass)
    }
}
