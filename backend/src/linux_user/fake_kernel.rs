//! A **fake** of the Linux RFC loopback's kernel side, written from the
//! description in interop §3.2–§3.3 (not from the kernel sources, which are
//! not at hand), behind the same [`LoopbackKernel`] / [`MsgChannel`] traits
//! as the real device nodes.
//!
//! What it reproduces:
//!
//! * **Frames of 44 bytes.** `read` must ask for exactly 44 bytes (the
//!   kernel's per-device buffer is request + response back to back, so a
//!   longer read would copy the response area; a shorter one is refused);
//!   `write` must carry at least 44. Violations fail with `EINVAL` and are
//!   counted.
//! * **Blocking reads, one transfer at a time.** `read` blocks until the
//!   kernel side has a request. [`FakeLoopbackKernel::transfer`] is the
//!   kernel transport's send: it takes the global transfer lock, posts the
//!   request, and waits for a **response-typed frame, after every request
//!   including EVENT_AVAIL**, up to the kernel's timeout (1000 jiffies, 4 s
//!   at HZ=250; configurable). A missing response fails the transfer
//!   (`TimedOut`) and is counted.
//! * **What the device may write:** a response-typed frame (completes the
//!   pending transfer; one with nothing pending is counted as late), or a
//!   transport request with msg_id EVENT_USED (queued for that device's
//!   driver, like `vring_interrupt()`). Anything else, EVENT_CONFIG
//!   included, is "Unsupported message": `EINVAL`.
//! * **ADD** creates the device and probes it synchronously before
//!   returning: DEVICE_INFO (`ENODEV` for device_id 0, `EINVAL` unless
//!   num_feature_bits is exactly 64), a feature read (`EINVAL` unless
//!   VERSION_1 and ACCESS_PLATFORM are offered: without ACCESS_PLATFORM the
//!   vring would not use the DMA pool), then the virtio driver's probe — the
//!   [`Prober`] the test installs (e.g. a vmsg-driver frontend's init, the
//!   §3.3 sequence). `EEXIST` for a known id. **REMOVE** runs the driver's
//!   remove ([`Remover`]) then the virtio core's reset (SET_DEVICE_STATUS 0);
//!   `ENOENT` for an unknown id.
//! * **REMOVE deadlocks**, as on the RFC kernel (seen on a real boot,
//!   `tests/linux-qemu/`): its remove holds the loopback lock around the
//!   unregister whose reset transfer takes the same lock, so the call never
//!   returns and every later transfer waits behind it. With
//!   [`FakeKernelOptions::remove_deadlocks`] (the default) the fake's REMOVE
//!   takes the transfer lock and blocks until [`FakeLoopbackKernel::close`];
//!   clear it to fake a kernel whose REMOVE works.
//! * **Power-off resets every device** ([`FakeLoopbackKernel::shutdown`]):
//!   devices vmsgd left registered cost the real kernel one transfer
//!   timeout each once vmsgd is gone.
//! * **The pool**: a memfd of the pool size; `pool_size` is its length (the
//!   `lseek(SEEK_END)` answer), `map_pool` maps it shared.
//!   [`FakeLoopbackKernel::pool_memory`] is the kernel's own view of it at
//!   the physical base, where drivers allocate rings and buffers.
//!
//! Frames are parsed here with a few lines of RFC2 header code of its own.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::memfd::{MFdFlags, memfd_create};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::os::{FRAME_SIZE, LoopbackKernel, MsgChannel};

/// The kernel's wait for a response: 1000 jiffies at HZ=250.
pub const KERNEL_RESPONSE_TIMEOUT: Duration = Duration::from_secs(4);

const RESPONSE: u8 = 0x01;
const BUS: u8 = 0x02;
const EVENT: u8 = 0x40;
const DEVICE_INFO: u8 = 0x02;
const GET_DEV_FEATURES: u8 = 0x03;
const SET_DEVICE_STATUS: u8 = 0x08;
const EVENT_USED: u8 = 0x42;
const HEADER: usize = 6;

/// The virtio driver's probe, run inside ADD after DEVICE_INFO succeeded.
pub type Prober = Box<dyn FnMut(u32) -> Result<(), String> + Send>;
/// The virtio driver's remove, run inside REMOVE before the reset.
pub type Remover = Box<dyn FnMut(u32) + Send>;

/// Fake kernel parameters.
#[derive(Debug, Clone, Copy)]
pub struct FakeKernelOptions {
    /// Physical base of the pool (the `reg` of `vmsglb@…`).
    pub pool_base: u64,
    /// Pool size.
    pub pool_size: u64,
    /// How long a transfer waits for the device's response.
    pub response_timeout: Duration,
    /// REMOVE never returns (until the fake is closed), as on the RFC kernel.
    pub remove_deadlocks: bool,
}

impl Default for FakeKernelOptions {
    fn default() -> Self {
        // The hvac demo's DT: 4 MiB at 0x5fc0_0000.
        Self {
            pool_base: 0x5fc0_0000,
            pool_size: 4 << 20,
            response_timeout: KERNEL_RESPONSE_TIMEOUT,
            remove_deadlocks: true,
        }
    }
}

/// What the fake saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeKernelStats {
    /// Transfers completed with a response.
    pub transfers: u64,
    /// Transfers that timed out waiting for the response.
    pub timeouts: u64,
    /// Response-typed writes with no transfer waiting for one.
    pub late_responses: u64,
    /// Reads not of exactly 44 bytes.
    pub bad_reads: u64,
    /// Writes shorter than 44 bytes.
    pub bad_writes: u64,
    /// Writes the loopback refuses (not a response, not EVENT_USED).
    pub unsupported: u64,
    /// EVENT_USED writes.
    pub used_events: u64,
    /// Probe failures reported by the [`Prober`], by device.
    pub probe_errors: Vec<(u32, String)>,
    /// REMOVE calls (deadlocked or not).
    pub removes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Idle,
    /// A request waits for the device's read.
    Posted([u8; FRAME_SIZE]),
    /// The device read it; its response is due.
    Read,
    Answered([u8; FRAME_SIZE]),
}

#[derive(Debug)]
struct State {
    slot: Slot,
    closed: bool,
    devices: BTreeSet<u32>,
    events: BTreeMap<u32, VecDeque<[u8; FRAME_SIZE]>>,
    stats: FakeKernelStats,
}

struct Shared {
    opts: FakeKernelOptions,
    pool: File,
    memory: Arc<GuestMemoryMmap<()>>,
    state: Mutex<State>,
    cv: Condvar,
    /// One transfer at a time (the RFC loopback's global mutex).
    transfer: Mutex<()>,
    prober: Mutex<Option<Prober>>,
    remover: Mutex<Option<Remover>>,
}

/// The fake kernel side. Cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeLoopbackKernel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeLoopbackKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLoopbackKernel")
            .field("opts", &self.shared.opts)
            .finish()
    }
}

/// EINVAL with the reason (the errno itself is not kept).
fn einval(what: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("EINVAL: {}", what.into()),
    )
}

/// An errno callers can check with `raw_os_error()`.
fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn frame(ty: u8, msg_id: u8, dev: u32, payload: &[u8]) -> [u8; FRAME_SIZE] {
    let mut f = [0u8; FRAME_SIZE];
    f[0] = ty;
    f[1] = msg_id;
    f[2..4].copy_from_slice(&(dev as u16).to_le_bytes());
    f[4..6].copy_from_slice(&((HEADER + payload.len()) as u16).to_le_bytes());
    f[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    f
}

fn le32(f: &[u8], payload_off: usize) -> u32 {
    let o = HEADER + payload_off;
    u32::from_le_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]])
}

impl FakeLoopbackKernel {
    /// A kernel with an empty device list and a zeroed pool.
    pub fn new(opts: FakeKernelOptions) -> io::Result<Self> {
        let fd: OwnedFd =
            memfd_create("vmsg-fake-lb-pool", MFdFlags::MFD_CLOEXEC).map_err(io::Error::from)?;
        let pool = File::from(fd);
        pool.set_len(opts.pool_size)?;
        let len = usize::try_from(opts.pool_size).map_err(|_| einval("pool size"))?;
        let region = MmapRegion::from_file(FileOffset::new(pool.try_clone()?, 0), len)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(opts.pool_base))
            .ok_or_else(|| einval("pool base + size overflows"))?;
        let memory = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                opts,
                pool,
                memory: Arc::new(memory),
                state: Mutex::new(State {
                    slot: Slot::Idle,
                    closed: false,
                    devices: BTreeSet::new(),
                    events: BTreeMap::new(),
                    stats: FakeKernelStats::default(),
                }),
                cv: Condvar::new(),
                transfer: Mutex::new(()),
                prober: Mutex::new(None),
                remover: Mutex::new(None),
            }),
        })
    }

    /// The kernel interface to hand to [`super::LinuxUserBus::with_kernel`].
    pub fn kernel(&self) -> Arc<dyn LoopbackKernel> {
        Arc::new(self.clone())
    }

    /// Install the virtio driver's probe (run by ADD).
    pub fn set_prober(&self, p: Prober) {
        *lock(&self.shared.prober) = Some(p);
    }

    /// Install the virtio driver's remove (run by REMOVE).
    pub fn set_remover(&self, r: Remover) {
        *lock(&self.shared.remover) = Some(r);
    }

    /// Drop the installed probe and remove (they may hold clones of this
    /// kernel: dropping them breaks that cycle).
    pub fn unbind_drivers(&self) {
        lock(&self.shared.prober).take();
        lock(&self.shared.remover).take();
    }

    /// The pool as the kernel (and its drivers) see it: at its physical base.
    pub fn pool_memory(&self) -> Arc<GuestMemoryMmap<()>> {
        self.shared.memory.clone()
    }

    /// A window `[base + offset, base + offset + len)` of the pool, mapped at
    /// its physical address: the kernel's DMA allocator hands each driver
    /// disjoint parts of the one pool, and drivers with allocators of their
    /// own (vmsg-driver's) get one window each.
    pub fn pool_window(&self, offset: u64, len: u64) -> io::Result<Arc<GuestMemoryMmap<()>>> {
        offset
            .checked_add(len)
            .filter(|&e| e <= self.shared.opts.pool_size && len > 0)
            .ok_or_else(|| einval("window outside the pool"))?;
        let size = usize::try_from(len).map_err(|_| einval("window size"))?;
        let region =
            MmapRegion::from_file(FileOffset::new(self.shared.pool.try_clone()?, offset), size)
                .map_err(|e| io::Error::other(e.to_string()))?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(self.shared.opts.pool_base + offset))
                .ok_or_else(|| einval("window overflows"))?;
        GuestMemoryMmap::from_regions(vec![region])
            .map(Arc::new)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// The options.
    pub fn options(&self) -> FakeKernelOptions {
        self.shared.opts
    }

    /// What the fake saw so far.
    pub fn stats(&self) -> FakeKernelStats {
        self.state().stats.clone()
    }

    /// The devices added and not removed.
    pub fn devices(&self) -> Vec<u32> {
        self.state().devices.iter().copied().collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// The kernel transport sending `request` (an RFC2 frame, padded to 44
    /// bytes here): waits for the device to read it and write a
    /// response-typed frame, within the response timeout. Returns the
    /// response, or `None` for an event (sent with no response buffer; the
    /// response is waited for and discarded).
    pub fn transfer(&self, request: &[u8]) -> io::Result<Option<[u8; FRAME_SIZE]>> {
        if request.len() < HEADER || request.len() > FRAME_SIZE {
            return Err(einval(format!("request of {} bytes", request.len())));
        }
        let mut f = [0u8; FRAME_SIZE];
        f[..request.len()].copy_from_slice(request);
        let is_event = f[1] & EVENT != 0;
        let _one = lock(&self.shared.transfer);
        let mut st = self.state();
        if st.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "message node closed",
            ));
        }
        st.slot = Slot::Posted(f);
        self.shared.cv.notify_all();
        let deadline = Instant::now() + self.shared.opts.response_timeout;
        loop {
            if let Slot::Answered(r) = st.slot {
                st.slot = Slot::Idle;
                st.stats.transfers += 1;
                return Ok(if is_event { None } else { Some(r) });
            }
            let now = Instant::now();
            if now >= deadline || st.closed {
                st.slot = Slot::Idle;
                st.stats.timeouts += 1;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "Timed out waiting for response (msg_id {:#04x}, dev {})",
                        f[1],
                        u16::from_le_bytes([f[2], f[3]])
                    ),
                ));
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Wait up to `timeout` for an EVENT_USED the device wrote for `dev_id`.
    pub fn next_event(&self, dev_id: u32, timeout: Duration) -> Option<[u8; FRAME_SIZE]> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        loop {
            if let Some(e) = st.events.get_mut(&dev_id).and_then(VecDeque::pop_front) {
                return Some(e);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The kernel powering off: `device_shutdown()` resets every registered
    /// device (SET_DEVICE_STATUS 0 through the transfer path, seen on the
    /// real kernel). Returns how many resets went unanswered — each costs
    /// the real kernel its transfer timeout.
    pub fn shutdown(&self) -> usize {
        let devices = self.devices();
        devices
            .into_iter()
            .filter(|&id| {
                self.transfer(&frame(0, SET_DEVICE_STATUS, id, &0u32.to_le_bytes()))
                    .is_err()
            })
            .count()
    }

    /// The message node opened again, as by a new daemon process after the
    /// previous one closed it (devices registered meanwhile stay).
    pub fn reopen(&self) {
        self.state().closed = false;
    }

    /// Close the message node: a blocked reader returns 0.
    pub fn close(&self) {
        self.state().closed = true;
        self.shared.cv.notify_all();
    }

    fn probe(&self, id: u32) -> io::Result<()> {
        let info = self
            .transfer(&frame(0, DEVICE_INFO, id, &[]))?
            .ok_or_else(|| errno(libc::EIO))?;
        let size = usize::from(u16::from_le_bytes([info[4], info[5]]));
        if info[0] & (RESPONSE | BUS) != RESPONSE
            || info[1] != DEVICE_INFO
            || u16::from_le_bytes([info[2], info[3]]) != id as u16
            || size < HEADER + 24
        {
            return Err(errno(libc::EIO));
        }
        if le32(&info, 0) == 0 {
            return Err(errno(libc::ENODEV));
        }
        if le32(&info, 8) != 64 {
            return Err(errno(libc::EINVAL));
        }
        let mut req = [0u8; 8];
        req[4..8].copy_from_slice(&2u32.to_le_bytes());
        let feat = self
            .transfer(&frame(0, GET_DEV_FEATURES, id, &req))?
            .ok_or_else(|| errno(libc::EIO))?;
        let hi = le32(&feat, 12);
        // VERSION_1 (32) and ACCESS_PLATFORM (33): without the latter the
        // vring would not use the DMA API, its buffers not the pool.
        if feat[1] != GET_DEV_FEATURES || hi & 0b11 != 0b11 {
            return Err(errno(libc::EINVAL));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoopbackKernel for FakeLoopbackKernel {
    fn pool_size(&self) -> io::Result<u64> {
        Ok(self.shared.pool.metadata()?.len())
    }

    fn map_pool(&self, size: usize) -> io::Result<MmapRegion> {
        if size as u64 > self.shared.opts.pool_size {
            return Err(einval("mmap beyond the pool"));
        }
        MmapRegion::from_file(FileOffset::new(self.shared.pool.try_clone()?, 0), size)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn add_device(&self, dev_id: u32) -> io::Result<()> {
        if !self.state().devices.insert(dev_id) {
            return Err(errno(libc::EEXIST));
        }
        if let Err(e) = self.probe(dev_id) {
            self.state().devices.remove(&dev_id);
            return Err(e);
        }
        // register_virtio_device(): the virtio driver probes now.
        let mut prober = lock(&self.shared.prober);
        if let Some(p) = prober.as_mut() {
            if let Err(e) = p(dev_id) {
                self.state().stats.probe_errors.push((dev_id, e));
            }
        }
        Ok(())
    }

    fn remove_device(&self, dev_id: u32) -> io::Result<()> {
        {
            let mut st = self.state();
            if !st.devices.contains(&dev_id) {
                return Err(errno(libc::ENOENT));
            }
            st.stats.removes += 1;
        }
        if self.shared.opts.remove_deadlocks {
            // The loopback lock is held for good: no transfer gets through.
            let _held = lock(&self.shared.transfer);
            let mut st = self.state();
            while !st.closed {
                st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "REMOVE deadlocked (until the fake was closed)",
            ));
        }
        if let Some(r) = lock(&self.shared.remover).as_mut() {
            r(dev_id);
        }
        // The virtio core resets the device on unregister.
        let _ = self.transfer(&frame(0, SET_DEVICE_STATUS, dev_id, &0u32.to_le_bytes()));
        let mut st = self.state();
        st.devices.remove(&dev_id);
        st.events.remove(&dev_id);
        Ok(())
    }

    fn open_channel(&self) -> io::Result<Arc<dyn MsgChannel>> {
        Ok(Arc::new(self.clone()))
    }
}

impl MsgChannel for FakeLoopbackKernel {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut st = self.state();
        if buf.len() != FRAME_SIZE {
            st.stats.bad_reads += 1;
            return Err(einval(format!(
                "read of {} bytes (the buffer is {FRAME_SIZE})",
                buf.len()
            )));
        }
        loop {
            if st.closed {
                return Ok(0);
            }
            if let Slot::Posted(f) = st.slot {
                buf.copy_from_slice(&f);
                st.slot = Slot::Read;
                return Ok(FRAME_SIZE);
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn write_frame(&self, f: &[u8]) -> io::Result<usize> {
        let mut st = self.state();
        if f.len() < FRAME_SIZE {
            st.stats.bad_writes += 1;
            return Err(einval(format!("write of {} bytes", f.len())));
        }
        if f[0] & RESPONSE != 0 {
            if st.slot == Slot::Read {
                let mut r = [0u8; FRAME_SIZE];
                r.copy_from_slice(&f[..FRAME_SIZE]);
                st.slot = Slot::Answered(r);
                self.shared.cv.notify_all();
            } else {
                st.stats.late_responses += 1;
            }
            return Ok(f.len());
        }
        let dev = u32::from(u16::from_le_bytes([f[2], f[3]]));
        if f[0] & BUS == 0 && f[1] == EVENT_USED && st.devices.contains(&dev) {
            let mut e = [0u8; FRAME_SIZE];
            e.copy_from_slice(&f[..FRAME_SIZE]);
            st.events.entry(dev).or_default().push_back(e);
            st.stats.used_events += 1;
            self.shared.cv.notify_all();
            return Ok(f.len());
        }
        st.stats.unsupported += 1;
        Err(einval(format!(
            "Unsupported message {:#04x}/{:#04x} from device {dev}",
            f[0], f[1]
        )))
    }

    fn interrupt(&self) -> bool {
        self.close();
        true
    }
}
