//! virtio-rng frontend (virtio device id 4, one request queue, no config,
//! no device-specific features): posts device-writable buffers and returns
//! the bytes the device reports as written (used len).

use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use crate::device::{FeatureSet, InitError, VirtioDevice};
use crate::driver::Driver;
use crate::virtq::{Buffer, SplitQueue, VirtqError};

/// Virtio device id of the entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Queue size requested (capped by the device's max_size).
const QUEUE_SIZE: u32 = 64;
/// Size of the receive buffer posted per request.
const BUF_SIZE: u32 = 4096;
/// Consecutive zero-length completions tolerated before giving up.
const MAX_EMPTY_COMPLETIONS: u32 = 64;

/// virtio-rng errors.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// Initialization or transport failure.
    #[error(transparent)]
    Init(#[from] InitError),
    /// The device is not an entropy device.
    #[error("device_id {0} is not virtio-rng (4)")]
    NotRng(u32),
    /// Queue failure.
    #[error(transparent)]
    Virtq(#[from] VirtqError),
    /// Guest memory access failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The device keeps completing buffers without data.
    #[error("device returned {0} empty buffers in a row")]
    NoEntropy(u32),
}

/// An initialized virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    dev: VirtioDevice,
    vq: SplitQueue,
    buf: GuestAddress,
    timeout: Duration,
}

impl Rng {
    /// Full §5 initialization of `dev_num` as virtio-rng (queue 0, DRIVER_OK).
    pub fn open(drv: Driver, dev_num: u16) -> Result<Self, RngError> {
        let probed = VirtioDevice::probe(drv, dev_num)?;
        if probed.info().device_id != VIRTIO_ID_RNG {
            return Err(RngError::NotRng(probed.info().device_id));
        }
        let mut dev = VirtioDevice::initialize(probed.into_driver(), dev_num, &FeatureSet::new())?;
        let vq = dev.setup_queue(0, QUEUE_SIZE)?;
        let buf = dev
            .allocator()
            .alloc(u64::from(BUF_SIZE), 1)
            .map_err(InitError::from)?;
        dev.driver_ok()?;
        let timeout = dev.driver().timeout();
        Ok(Rng {
            dev,
            vq,
            buf,
            timeout,
        })
    }

    /// Bound on the wait for each buffer (default: the session timeout).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Reads `n` random bytes, posting one buffer at a time and keeping only
    /// the `used len` bytes the device wrote.
    pub fn read(&mut self, n: usize) -> Result<Vec<u8>, RngError> {
        let mut out = Vec::with_capacity(n);
        let mut empty = 0;
        while out.len() < n {
            let want = (n - out.len()).min(BUF_SIZE as usize) as u32;
            self.vq.add(&[Buffer {
                addr: self.buf,
                len: want,
                writable: true,
            }])?;
            self.dev.kick(&mut self.vq)?;
            let used = self.dev.wait_used(&mut self.vq, self.timeout)?;
            if used.len == 0 {
                empty += 1;
                if empty >= MAX_EMPTY_COMPLETIONS {
                    return Err(RngError::NoEntropy(empty));
                }
                continue;
            }
            empty = 0;
            let mut chunk = vec![0u8; used.len as usize];
            self.dev
                .driver()
                .memory()
                .read_slice(&mut chunk, self.buf)?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The underlying device.
    pub fn device(&mut self) -> &mut VirtioDevice {
        &mut self.dev
    }

    /// The request queue.
    pub fn queue(&mut self) -> &mut SplitQueue {
        &mut self.vq
    }

    /// Resets the device and returns the session.
    pub fn close(mut self) -> Result<Driver, RngError> {
        self.dev.reset()?;
        Ok(self.dev.into_driver())
    }
}
