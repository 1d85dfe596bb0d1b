//! Device initialization and control over the transport (§5): reset, status,
//! feature negotiation, chunked config access, virtqueue setup, notifications.
//!
//! Profile differences (reference §7.1, interop §2): on v1 and RFC2 a reset
//! completes synchronously (SET_DEVICE_STATUS(0) answers 0, no polling),
//! SET_VQUEUE has no flags word and configures *and* enables the queue
//! (GET_VQUEUE cannot show the enabled state), and v1 config writes carry
//! the last generation seen.

use std::fmt;
use std::time::{Duration, Instant};

use crate::driver::{Driver, DriverError};
use crate::mem::{AllocError, GuestAllocator};
use crate::virtq::{SplitQueue, UsedElem, VirtqError};
use crate::wire::{
    self, DeviceInfo, Event, Profile, SetVqueue, VqueueInfo, feature, status, vq_flags,
};

/// Default bound for a reset to complete (the Linux PoC waits 10 s; a local
/// device should be far quicker).
pub const DEFAULT_RESET_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval between GET_DEVICE_STATUS polls while a reset is pending (as Linux).
pub const RESET_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Re-reads of a chunked config range before giving up on a stable generation.
pub const CONFIG_RETRIES: u32 = 5;
/// How often the used ring is polled while waiting for EVENT_USED.
const USED_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Errors of device initialization and control.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The transport failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// GET_DEVICE_INFO reported device_id 0 (§3.2: no device).
    #[error("dev_num {0} reports device_id 0 (no device)")]
    NoDevice(u16),
    /// GET_DEVICE_INFO values are inconsistent.
    #[error("inconsistent GET_DEVICE_INFO: {0}")]
    BadInfo(String),
    /// v1/RFC2: SET_DEVICE_STATUS(0) answered a non-zero status, but in these
    /// profiles a reset completes synchronously (reference §3.8, §7.1).
    #[error("{profile}: reset answered status {status:#x}; it must complete synchronously")]
    ResetNotSynchronous {
        /// Status returned.
        status: u32,
        /// Profile of the session.
        profile: Profile,
    },
    /// The device did not report status 0 after a reset within the bound.
    #[error("reset did not complete within {timeout:?} (status {status:#x})")]
    ResetTimeout {
        /// Last status seen.
        status: u32,
        /// Bound.
        timeout: Duration,
    },
    /// The device does not offer VIRTIO_F_VERSION_1.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    /// The device refused the feature set (FEATURES_OK cleared, §3.8).
    #[error("device refused the features (status {status:#x})")]
    FeaturesRejected {
        /// Status returned.
        status: u32,
    },
    /// A status write did not read back as written.
    #[error("status {wanted:#x} written, device reports {got:#x}")]
    StatusMismatch {
        /// Written.
        wanted: u32,
        /// Reported.
        got: u32,
    },
    /// Config access outside config_size.
    #[error("config access {offset}+{len} outside config_size {size}")]
    ConfigRange {
        /// Offset.
        offset: u32,
        /// Length.
        len: usize,
        /// Config size.
        size: u32,
    },
    /// The generation kept changing across chunked reads.
    #[error("config generation unstable after {0} attempts")]
    ConfigUnstable(u32),
    /// SET_CONFIG answered with length 0 (nothing applied).
    #[error("device rejected the config write at {offset} ({len} bytes)")]
    ConfigWriteRejected {
        /// Offset.
        offset: u32,
        /// Length.
        len: usize,
    },
    /// The queue is unavailable, busy, or did not take the configuration.
    #[error("queue {index}: {what}")]
    Queue {
        /// Queue index.
        index: u32,
        /// What is wrong.
        what: String,
    },
    /// Virtqueue memory error.
    #[error(transparent)]
    Virtq(#[from] VirtqError),
    /// Allocation failed.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// No used buffer within the bound.
    #[error("queue {index}: no used buffer within {timeout:?}")]
    UsedTimeout {
        /// Queue index.
        index: u32,
        /// Bound.
        timeout: Duration,
    },
}

/// A set of device feature bits stored as 32-bit blocks.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FeatureSet {
    blocks: Vec<u32>,
}

impl fmt::Debug for FeatureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.bits()).finish()
    }
}

impl FeatureSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// From feature bit numbers.
    pub fn from_bits(bits: &[u32]) -> Self {
        let mut s = Self::new();
        for &b in bits {
            s.insert(b);
        }
        s
    }

    /// From 32-bit blocks (block 0 = bits 0–31).
    pub fn from_blocks(blocks: Vec<u32>) -> Self {
        FeatureSet { blocks }
    }

    /// The blocks, padded with zeros to at least `n` entries.
    pub fn blocks(&self, n: usize) -> Vec<u32> {
        let mut v = self.blocks.clone();
        if v.len() < n {
            v.resize(n, 0);
        }
        v
    }

    /// True if `bit` is set.
    pub fn contains(&self, bit: u32) -> bool {
        self.blocks
            .get((bit / 32) as usize)
            .is_some_and(|w| w & (1 << (bit % 32)) != 0)
    }

    /// Sets `bit`.
    pub fn insert(&mut self, bit: u32) {
        let i = (bit / 32) as usize;
        if self.blocks.len() <= i {
            self.blocks.resize(i + 1, 0);
        }
        self.blocks[i] |= 1 << (bit % 32);
    }

    /// Clears `bit`.
    pub fn remove(&mut self, bit: u32) {
        if let Some(w) = self.blocks.get_mut((bit / 32) as usize) {
            *w &= !(1 << (bit % 32));
        }
    }

    /// Bits present in both sets.
    pub fn intersect(&self, other: &FeatureSet) -> FeatureSet {
        FeatureSet {
            blocks: self
                .blocks
                .iter()
                .zip(&other.blocks)
                .map(|(a, b)| a & b)
                .collect(),
        }
    }

    /// Bits present in `self` but not in `other`.
    pub fn difference(&self, other: &FeatureSet) -> FeatureSet {
        let o = other.blocks(self.blocks.len());
        FeatureSet {
            blocks: self.blocks.iter().zip(o).map(|(a, b)| a & !b).collect(),
        }
    }

    /// True if no bit is set.
    pub fn is_empty(&self) -> bool {
        self.blocks.iter().all(|&w| w == 0)
    }

    /// The set bit numbers, ascending.
    pub fn bits(&self) -> Vec<u32> {
        (0..self.blocks.len() as u32 * 32)
            .filter(|&b| self.contains(b))
            .collect()
    }
}

/// Tunables for device control.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOptions {
    /// Bound for a reset to report status 0.
    pub reset_timeout: Duration,
    /// Attempts to read a chunked config range with a stable generation.
    pub config_retries: u32,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            reset_timeout: DEFAULT_RESET_TIMEOUT,
            config_retries: CONFIG_RETRIES,
        }
    }
}

/// One device (dev_num) driven over a [`Driver`] session.
#[derive(Debug)]
pub struct VirtioDevice {
    drv: Driver,
    dev_num: u16,
    info: DeviceInfo,
    offered: FeatureSet,
    negotiated: FeatureSet,
    generation: u32,
    alloc: GuestAllocator,
    opts: DeviceOptions,
}

impl VirtioDevice {
    /// GET_DEVICE_INFO and sanity checks (§3.2); touches no device state.
    pub fn probe(mut drv: Driver, dev_num: u16) -> Result<Self, InitError> {
        let info = drv.get_device_info(dev_num)?;
        if info.device_id == 0 {
            return Err(InitError::NoDevice(dev_num));
        }
        check_info(&info).map_err(InitError::BadInfo)?;
        let alloc = GuestAllocator::new(&drv.memory());
        Ok(VirtioDevice {
            drv,
            dev_num,
            info,
            offered: FeatureSet::new(),
            negotiated: FeatureSet::new(),
            generation: 0,
            alloc,
            opts: DeviceOptions::default(),
        })
    }

    /// Probes, resets, sets ACKNOWLEDGE and DRIVER and negotiates features
    /// (§5 steps 1–6). Queues and DRIVER_OK are left to the caller.
    pub fn initialize(drv: Driver, dev_num: u16, wanted: &FeatureSet) -> Result<Self, InitError> {
        let mut d = Self::probe(drv, dev_num)?;
        d.reset()?;
        d.set_status_checked(status::ACKNOWLEDGE)?;
        d.set_status_checked(status::ACKNOWLEDGE | status::DRIVER)?;
        d.negotiate(wanted)?;
        Ok(d)
    }

    /// Replaces the tunables.
    pub fn set_options(&mut self, opts: DeviceOptions) {
        self.opts = opts;
    }

    /// The device number.
    pub fn dev_num(&self) -> u16 {
        self.dev_num
    }

    /// GET_DEVICE_INFO as probed.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Features the device offered (after [`VirtioDevice::read_device_features`]).
    pub fn offered(&self) -> &FeatureSet {
        &self.offered
    }

    /// Features accepted with FEATURES_OK.
    pub fn negotiated(&self) -> &FeatureSet {
        &self.negotiated
    }

    /// The session.
    pub fn driver(&self) -> &Driver {
        &self.drv
    }

    /// The session, mutably.
    pub fn driver_mut(&mut self) -> &mut Driver {
        &mut self.drv
    }

    /// The guest memory allocator of this device's session.
    pub fn allocator(&mut self) -> &mut GuestAllocator {
        &mut self.alloc
    }

    /// Gives the session back.
    pub fn into_driver(self) -> Driver {
        self.drv
    }

    /// GET_DEVICE_STATUS.
    pub fn status(&mut self) -> Result<u32, InitError> {
        Ok(self.drv.get_device_status(self.dev_num)?)
    }

    /// SET_DEVICE_STATUS; returns what the device reports.
    pub fn set_status(&mut self, s: u32) -> Result<u32, InitError> {
        Ok(self.drv.set_device_status(self.dev_num, s)?)
    }

    /// SET_DEVICE_STATUS and require the response to equal the request.
    pub fn set_status_checked(&mut self, s: u32) -> Result<(), InitError> {
        let got = self.set_status(s)?;
        if got != s {
            return Err(InitError::StatusMismatch { wanted: s, got });
        }
        Ok(())
    }

    /// Writes status 0 and waits (bounded) until the device reports 0 (§3.8).
    /// On v1/RFC2 the response itself must be 0.
    pub fn reset(&mut self) -> Result<(), InitError> {
        let mut st = self.set_status(0)?;
        let profile = self.drv.profile();
        if st != 0 && profile != Profile::V2 {
            return Err(InitError::ResetNotSynchronous {
                status: st,
                profile,
            });
        }
        let deadline = Instant::now() + self.opts.reset_timeout;
        while st != 0 {
            if Instant::now() >= deadline {
                return Err(InitError::ResetTimeout {
                    status: st,
                    timeout: self.opts.reset_timeout,
                });
            }
            std::thread::sleep(RESET_POLL_INTERVAL);
            st = self.status()?;
        }
        self.negotiated = FeatureSet::new();
        // Rings of the old configuration are dead now; start memory afresh.
        self.alloc = GuestAllocator::new(&self.drv.memory());
        Ok(())
    }

    /// Blocks per GET_DEVICE_FEATURES / SET_DRIVER_FEATURES at this message size (§3.3).
    pub fn feature_blocks_per_msg(&self) -> u32 {
        ((self.drv.max_msg_size() - self.drv.header_size() - 8) / 4) as u32
    }

    /// Reads all offered feature blocks, chunked to the message size (§3.3).
    pub fn read_device_features(&mut self) -> Result<FeatureSet, InitError> {
        let n = self.info.num_feature_blocks;
        let per = self.feature_blocks_per_msg();
        let mut blocks = Vec::with_capacity(n as usize);
        let mut i = 0;
        while i < n {
            let k = per.min(n - i);
            blocks.extend(self.drv.get_device_features(self.dev_num, i, k)?);
            i += k;
        }
        self.offered = FeatureSet::from_blocks(blocks);
        Ok(self.offered.clone())
    }

    /// Writes the driver feature blocks 0..num_feature_blocks, chunked (§3.4).
    pub fn write_driver_features(&mut self, f: &FeatureSet) -> Result<(), InitError> {
        let n = self.info.num_feature_blocks as usize;
        let blocks = f.blocks(n);
        let per = self.feature_blocks_per_msg() as usize;
        for (ci, chunk) in blocks.chunks(per).enumerate() {
            self.drv
                .set_driver_features(self.dev_num, (ci * per) as u32, chunk)?;
        }
        Ok(())
    }

    /// The feature selection policy: what the caller wants that the device
    /// offers, plus VERSION_1 always and EVENT_IDX when offered; never
    /// NOTIF_CONFIG_DATA (§3.4) nor RING_PACKED (this driver is split-ring only).
    pub fn choose_features(offered: &FeatureSet, wanted: &FeatureSet) -> FeatureSet {
        let mut want = wanted.clone();
        want.insert(feature::VERSION_1);
        want.insert(feature::EVENT_IDX);
        want.remove(feature::NOTIF_CONFIG_DATA);
        want.remove(feature::RING_PACKED);
        offered.intersect(&want)
    }

    /// Reads the offered set, chooses, writes, sets FEATURES_OK and checks it
    /// stuck in both the response and GET_DEVICE_STATUS (§5 steps 4–6).
    pub fn negotiate(&mut self, wanted: &FeatureSet) -> Result<FeatureSet, InitError> {
        let offered = self.read_device_features()?;
        if !offered.contains(feature::VERSION_1) {
            return Err(InitError::NoVersion1);
        }
        let chosen = Self::choose_features(&offered, wanted);
        self.write_driver_features(&chosen)?;
        let cur = self.status()?;
        let st = self.set_status(cur | status::FEATURES_OK)?;
        if st & status::FEATURES_OK == 0 {
            return Err(InitError::FeaturesRejected { status: st });
        }
        let st = self.status()?;
        if st & status::FEATURES_OK == 0 {
            return Err(InitError::FeaturesRejected { status: st });
        }
        self.negotiated = chosen.clone();
        Ok(chosen)
    }

    /// Sets DRIVER_OK on top of the current status (§5 step 11).
    pub fn driver_ok(&mut self) -> Result<(), InitError> {
        let cur = self.status()?;
        self.set_status_checked(cur | status::DRIVER_OK)
    }

    /// Config bytes per GET_CONFIG/SET_CONFIG at this message size (§1;
    /// 26 on a 44-byte RFC2 bus, as Linux RFC chunks them, interop §3.2).
    pub fn config_chunk(&self) -> usize {
        self.drv.max_msg_size() - self.drv.header_size() - 12
    }

    fn check_config_range(&self, offset: u32, len: usize) -> Result<(), InitError> {
        let end = u64::from(offset) + len as u64;
        if end > u64::from(self.info.config_size) {
            return Err(InitError::ConfigRange {
                offset,
                len,
                size: self.info.config_size,
            });
        }
        Ok(())
    }

    /// Reads a config range in chunks; retries until every chunk reports the
    /// same generation (§2 "re-read until stable").
    pub fn read_config(&mut self, offset: u32, len: usize) -> Result<Vec<u8>, InitError> {
        self.check_config_range(offset, len)?;
        let chunk = self.config_chunk();
        for _ in 0..self.opts.config_retries.max(1) {
            let mut out = Vec::with_capacity(len);
            let mut gens = Vec::new();
            while out.len() < len {
                let k = chunk.min(len - out.len());
                let (g, data) =
                    self.drv
                        .get_config(self.dev_num, offset + out.len() as u32, k as u32)?;
                gens.push(g);
                out.extend(data);
            }
            if len == 0 {
                return Ok(out);
            }
            self.generation = gens[gens.len() - 1];
            if gens.iter().all(|&g| g == gens[0]) {
                return Ok(out);
            }
        }
        Err(InitError::ConfigUnstable(self.opts.config_retries))
    }

    /// Writes a config range in chunks. Baseline profile sends generation 0,
    /// strict sends the latest generation observed (§2). A length-0 answer
    /// means nothing was applied (§3.6).
    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), InitError> {
        self.check_config_range(offset, data.len())?;
        let chunk = self.config_chunk();
        for (i, c) in data.chunks(chunk).enumerate() {
            let off = offset + (i * chunk) as u32;
            let g = if self.drv.strict_config_generation() {
                self.generation
            } else {
                0
            };
            let (gen_after, length) = self.drv.set_config(self.dev_num, g, off, c)?;
            self.generation = gen_after;
            if length == 0 {
                return Err(InitError::ConfigWriteRejected {
                    offset: off,
                    len: c.len(),
                });
            }
        }
        Ok(())
    }

    /// Notes the generation of an EVENT_CONFIG (strict profile bookkeeping).
    pub fn observe_event(&mut self, ev: &Event) {
        match ev {
            Event::Config { dev_num, body } if *dev_num == self.dev_num => {
                self.generation = body.generation
            }
            _ => {}
        }
    }

    /// GET_VQUEUE with the Linux consistency checks (§3.9).
    pub fn get_vqueue(&mut self, index: u32) -> Result<VqueueInfo, InitError> {
        let q = self.drv.get_vqueue(self.dev_num, index)?;
        q.check_consistency_for(self.drv.profile())
            .map_err(|what| InitError::Queue { index, what })?;
        Ok(q)
    }

    /// Sets up queue `index` (§5 steps 8–10): requires it idle, allocates a
    /// ring of the largest power of two ≤ min(`want_size`, max_size), sends
    /// SET_VQUEUE(flags = enable; on v1/RFC2 the reserved word 0, which
    /// enables too) and requires GET_VQUEUE to read back exactly.
    pub fn setup_queue(&mut self, index: u32, want_size: u32) -> Result<SplitQueue, InitError> {
        let qerr = |what: String| InitError::Queue { index, what };
        if index >= self.info.max_virtqueues {
            return Err(qerr(format!(
                "index ≥ max_virtqueues {}",
                self.info.max_virtqueues
            )));
        }
        let cur = self.get_vqueue(index)?;
        if cur.max_size == 0 {
            return Err(qerr("unavailable (max_size 0)".into()));
        }
        if !cur.is_idle() {
            return Err(qerr(format!("not idle before setup: {cur:?}")));
        }
        let limit = want_size.min(cur.max_size).min(32768);
        if limit == 0 {
            return Err(qerr("requested size 0".into()));
        }
        let size = 1u32 << (31 - limit.leading_zeros());
        let event_idx = self.negotiated.contains(feature::EVENT_IDX);
        let q = SplitQueue::new(index, size, self.drv.memory(), &mut self.alloc, event_idx)?;
        let l = q.layout();
        let v2 = self.drv.profile().has_vqueue_flags();
        let set = SetVqueue {
            index,
            flags: if v2 { vq_flags::STATE_ENABLE } else { 0 },
            size,
            reserved: 0,
            desc_addr: l.desc.0,
            driver_addr: l.avail.0,
            device_addr: l.used.0,
        };
        self.drv.set_vqueue(self.dev_num, set)?;
        let got = self.get_vqueue(index)?;
        let want = VqueueInfo {
            index,
            max_size: cur.max_size,
            cur_size: size,
            flags: if v2 { vq_flags::ENABLED } else { 0 },
            desc_addr: l.desc.0,
            driver_addr: l.avail.0,
            device_addr: l.used.0,
        };
        if got != want {
            return Err(qerr(format!(
                "GET_VQUEUE after SET_VQUEUE reads {got:?}, expected {want:?}"
            )));
        }
        Ok(q)
    }

    /// Notifies the device of new avail entries with EVENT_AVAIL when the ring
    /// says it wants one (§3.14); returns whether a notification was sent.
    pub fn kick(&mut self, q: &mut SplitQueue) -> Result<bool, InitError> {
        if !q.needs_notification()? {
            return Ok(false);
        }
        self.notify(q)?;
        Ok(true)
    }

    /// Sends EVENT_AVAIL unconditionally. next_offset is 0 unless
    /// NOTIFICATION_DATA was negotiated, then the new avail idx (wrap 0, §3.14).
    pub fn notify(&mut self, q: &SplitQueue) -> Result<(), InitError> {
        let next_offset = if self.negotiated.contains(feature::NOTIFICATION_DATA) {
            u32::from(q.avail_idx())
        } else {
            0
        };
        let ev = Event::Avail {
            dev_num: self.dev_num,
            vq_index: q.index(),
            next_offset,
        };
        self.drv.send_event(&ev)?;
        Ok(())
    }

    /// Waits (bounded) for a used entry on `q`: consumes this queue's
    /// EVENT_USED notifications and polls the ring in between, so it works
    /// whether or not the device notifies.
    pub fn wait_used(
        &mut self,
        q: &mut SplitQueue,
        timeout: Duration,
    ) -> Result<UsedElem, InitError> {
        let deadline = Instant::now() + timeout;
        q.enable_notifications()?;
        loop {
            if let Some(u) = q.pop_used()? {
                return Ok(u);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(InitError::UsedTimeout {
                    index: q.index(),
                    timeout,
                });
            }
            let (dev, idx) = (self.dev_num, q.index());
            self.drv.wait_event_where(
                |e| matches!(e, Event::Used { dev_num, vq_index } if *dev_num == dev && *vq_index == idx),
                USED_POLL_INTERVAL.min(deadline - now),
            )?;
        }
    }
}

/// Consistency rules for GET_DEVICE_INFO (§3.2); `Err` names the first violated.
pub fn check_info(i: &DeviceInfo) -> Result<(), String> {
    if i.max_virtqueues > 65536 {
        return Err(format!("max_virtqueues {} > 65536", i.max_virtqueues));
    }
    if i.admin_vq_count == 0 && i.admin_vq_start != 0 {
        return Err(format!(
            "admin_vq_start {} with admin_vq_count 0",
            i.admin_vq_start
        ));
    }
    if u64::from(i.admin_vq_start) + u64::from(i.admin_vq_count) > u64::from(i.max_virtqueues) {
        return Err(format!(
            "admin queues {}+{} exceed max_virtqueues {}",
            i.admin_vq_start, i.admin_vq_count, i.max_virtqueues
        ));
    }
    if i.device_uuid != [0; 16] && i.device_uuid[6] >> 4 != 4 {
        // SHOULD-level (§3.2): logged, not fatal.
        log::info!(
            "device UUID is not version 4: {}",
            wire::hex(&i.device_uuid)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_choice() {
        let offered = FeatureSet::from_bits(&[
            0,
            5,
            feature::EVENT_IDX,
            feature::VERSION_1,
            feature::RING_PACKED,
        ]);
        let wanted =
            FeatureSet::from_bits(&[5, 7, feature::NOTIF_CONFIG_DATA, feature::RING_PACKED]);
        let c = VirtioDevice::choose_features(&offered, &wanted);
        assert_eq!(c.bits(), vec![5, feature::EVENT_IDX, feature::VERSION_1]);
        assert_eq!(c.blocks(3), vec![(1 << 5) | (1 << 29), 1, 0]);
        assert!(FeatureSet::new().is_empty());
        assert_eq!(offered.difference(&c).bits(), vec![0, feature::RING_PACKED]);
    }

    #[test]
    fn info_checks() {
        let ok = DeviceInfo {
            device_id: 4,
            max_virtqueues: 2,
            num_feature_blocks: 2,
            ..Default::default()
        };
        assert!(check_info(&ok).is_ok());
        assert!(
            check_info(&DeviceInfo {
                admin_vq_start: 1,
                ..ok
            })
            .is_err()
        );
        assert!(
            check_info(&DeviceInfo {
                admin_vq_start: 1,
                admin_vq_count: 2,
                ..ok
            })
            .is_err()
        );
        assert!(
            check_info(&DeviceInfo {
                max_virtqueues: 70000,
                ..ok
            })
            .is_err()
        );
    }
}
