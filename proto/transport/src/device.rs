//! The device-side transport state machine: every device rule of spec v2
//! (reference §3–§6, checklist §9) as pure logic over `vmsg-proto` types.
//!
//! One [`DeviceTransport`] per device. It owns the transport-visible state
//! (status, driver features, per-queue configuration, config generation) and
//! answers transport requests. What it cannot decide alone it asks the
//! [`DeviceModel`] (identity, offered features, config space, feature
//! acceptance, reset progress); what the embedding must *do* as a consequence
//! (start queues, reset the model, process a queue) comes back as an
//! [`Effect`]. No OS calls, no `std`: the FF-A partition image runs this code
//! unchanged.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use thiserror::Error;
use vmsg_proto::{
    Body, Codec, DeviceInfo, EncodeError, Message, Profile, SetVqueue, VqueueInfo, status, vq_flags,
};

/// The status bits virtio defines (§3.7): ACKNOWLEDGE, DRIVER, DRIVER_OK,
/// FEATURES_OK, DEVICE_NEEDS_RESET, FAILED. A driver's write of any other
/// bit is dropped.
pub const STATUS_BITS: u32 = status::ACKNOWLEDGE
    | status::DRIVER
    | status::DRIVER_OK
    | status::FEATURES_OK
    | status::DEVICE_NEEDS_RESET
    | status::FAILED;
/// Feature bit numbers the transport itself cares about (core virtio).
pub mod feature {
    /// `VIRTIO_F_RING_EVENT_IDX`.
    pub const EVENT_IDX: u32 = 29;
    /// `VIRTIO_F_VERSION_1`.
    pub const VERSION_1: u32 = 32;
    /// `VIRTIO_F_ACCESS_PLATFORM`.
    pub const ACCESS_PLATFORM: u32 = 33;
    /// `VIRTIO_F_RING_PACKED`.
    pub const RING_PACKED: u32 = 34;
    /// `VIRTIO_F_NOTIFICATION_DATA`: never offered (no bus of ours carries it
    /// reliably, and the RFC kernels mis-handle it).
    pub const NOTIFICATION_DATA: u32 = 38;
    /// `VIRTIO_F_NOTIF_CONFIG_DATA`: must never be offered over virtio-msg (§3.4).
    pub const NOTIF_CONFIG_DATA: u32 = 39;
    /// `VIRTIO_F_RING_RESET`: gates RESET_VQUEUE (§3.11).
    pub const RING_RESET: u32 = 40;
}

/// Vendor id vmsgd reports in GET_DEVICE_INFO ("VMSG", little-endian).
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"VMSG");

/// Bounded bookkeeping for feature blocks a driver writes beyond the offered
/// ones: a hostile driver must not make us allocate without limit.
const MAX_FOREIGN_FEATURE_BLOCKS: usize = 64;

/// What the transport needs to know from, and ask of, a device model.
pub trait DeviceModel {
    /// Virtio device type (net 1, blk 2, rng 4, i2c 34). Never 0.
    fn device_id(&self) -> u32;
    /// Vendor id reported in GET_DEVICE_INFO.
    fn vendor_id(&self) -> u32 {
        VENDOR_ID
    }
    /// RFC 4122 UUID of this device instance (nil = none).
    fn device_uuid(&self) -> [u8; 16] {
        [0; 16]
    }
    /// Offered feature bits as 32-bit blocks (block 0 = bits 0..31). Must
    /// not contain NOTIF_CONFIG_DATA; the transport masks it out regardless.
    fn offered_features(&self) -> &[u32];
    /// Size of the device config space in bytes.
    fn config_size(&self) -> u32;
    /// Read `data.len()` config bytes at `offset`; the range is validated.
    fn read_config(&self, offset: u32, data: &mut [u8]);
    /// Apply a driver config write, all or nothing; the range is validated.
    /// Returns whether it was applied.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> bool;
    /// `max_virtqueues` (admin queues included).
    fn num_queues(&self) -> u32;
    /// Maximum size of queue `index`; 0 when that queue is unavailable.
    fn queue_max_size(&self, index: u32) -> u32;
    /// Validate the driver's selected feature set at FEATURES_OK. The
    /// transport already checked that it is a subset of the offered set and
    /// contains VERSION_1.
    fn accept_features(&mut self, features: &[u32]) -> bool;
    /// The driver wrote status 0: stop every queue and return the model to
    /// its initial state. `Pending` if that finishes later (in-flight I/O);
    /// the embedding then calls [`DeviceTransport::complete_reset`].
    fn reset(&mut self) -> ResetProgress;
    /// GET_SHM: `(length, address)` of shared memory region `shmid`, if any.
    fn shm_region(&self, _shmid: u32) -> Option<(u64, u64)> {
        None
    }
}

/// Whether a model reset finished synchronously.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetProgress {
    /// The model is back in its initial state.
    Done,
    /// In-flight work must drain first.
    Pending,
}

/// Something the embedding must do after a request was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond sending the response.
    None,
    /// The driver wrote status 0 and the model was asked to reset. If
    /// [`DeviceTransport::reset_pending`] is still true the embedding must
    /// call [`DeviceTransport::complete_reset`] once the model is quiet; until
    /// then the device reports its old status, never 0 (§3.8).
    Reset,
    /// DRIVER_OK was accepted: start processing every enabled queue.
    Activate,
    /// Queue `index` was enabled while the device is live (after DRIVER_OK).
    QueueEnabled(u32),
    /// Queue `index` was reset by RESET_VQUEUE: stop processing it.
    QueueReset(u32),
    /// EVENT_AVAIL for a live queue: process it.
    Notify(u32),
    /// The driver set FAILED: stop processing until the next reset.
    Failed,
}

/// Why a frame produced no response. Each is counted by the embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Dropped {
    /// A response or event that a device never receives (responses, EVENT_CONFIG, EVENT_USED).
    #[error("message kind a device does not accept")]
    NotARequest,
    /// GET_CONFIG / SET_CONFIG outside config_size.
    #[error("config access outside config space")]
    ConfigOutOfRange,
    /// A request whose valid response would exceed the bus's maximum size.
    #[error("response would exceed the maximum message size")]
    ResponseTooLarge,
    /// EVENT_AVAIL for a queue that is not live.
    #[error("EVENT_AVAIL for a queue that is not live")]
    QueueNotLive,
    /// A bus message routed to a device.
    #[error("bus message routed to a device")]
    BusMessage,
}

/// Result of [`DeviceTransport::handle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handled {
    /// Length of the encoded response in the output buffer, if one is due.
    pub response: Option<usize>,
    /// What the embedding must do next.
    pub effect: Effect,
    /// Set when the frame was dropped without a response.
    pub dropped: Option<Dropped>,
}

impl Handled {
    fn respond(len: usize, effect: Effect) -> Self {
        Self {
            response: Some(len),
            effect,
            dropped: None,
        }
    }

    fn silent(effect: Effect) -> Self {
        Self {
            response: None,
            effect,
            dropped: None,
        }
    }

    fn drop(reason: Dropped) -> Self {
        Self {
            response: None,
            effect: Effect::None,
            dropped: Some(reason),
        }
    }
}

/// Errors of the state machine itself (not of the guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum TransportError {
    /// The output buffer is smaller than the bus's maximum message size.
    #[error("encoding a response failed: {0}")]
    Encode(#[from] EncodeError),
}

/// Transport-visible state of one virtqueue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Configured size in descriptors (0 = not configured).
    pub size: u32,
    /// Descriptor table bus address.
    pub desc_addr: u64,
    /// Driver (available) ring bus address.
    pub driver_addr: u64,
    /// Device (used) ring bus address.
    pub device_addr: u64,
    /// Whether the queue is enabled.
    pub enabled: bool,
}

/// The transport state of one device.
#[derive(Debug)]
pub struct DeviceTransport {
    codec: Codec,
    dev_num: u16,
    strict_generation: bool,
    status: u32,
    /// Driver-selected features, one word per offered block.
    driver_features: Vec<u32>,
    /// Non-zero blocks the driver wrote beyond the offered ones.
    foreign_features: BTreeMap<u32, u32>,
    /// Set when `foreign_features` would have grown past its bound: the
    /// feature set is unacceptable until the next reset.
    foreign_overflow: bool,
    /// The feature set accepted at FEATURES_OK, frozen until reset.
    features_accepted: bool,
    queues: Vec<QueueConfig>,
    generation: u32,
    reset_pending: bool,
    needs_reset: bool,
}

impl DeviceTransport {
    /// A device in its post-reset state, addressed as `dev_num` on a bus
    /// instance with `codec` and transport feature bits `transport_features`.
    pub fn new(
        model: &dyn DeviceModel,
        dev_num: u16,
        codec: Codec,
        transport_features: u32,
    ) -> Self {
        let blocks = model.offered_features().len();
        let queues = model.num_queues() as usize;
        Self {
            codec,
            dev_num,
            // v1 has no baseline profile: a SET_CONFIG whose generation
            // differs is always rejected (reference §2, §7.1).
            strict_generation: codec.profile() == Profile::V1
                || transport_features & vmsg_proto::TRANSPORT_F_STRICT_CONFIG_GENERATION != 0,
            status: 0,
            driver_features: vec![0; blocks],
            foreign_features: BTreeMap::new(),
            foreign_overflow: false,
            features_accepted: false,
            queues: vec![QueueConfig::default(); queues],
            generation: 0,
            reset_pending: false,
            needs_reset: false,
        }
    }

    /// The device number this transport answers as.
    pub fn dev_num(&self) -> u16 {
        self.dev_num
    }

    /// Current device status as GET_DEVICE_STATUS reports it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether DRIVER_OK is set and neither FAILED nor DEVICE_NEEDS_RESET.
    pub fn is_live(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.status & (status::FAILED | status::DEVICE_NEEDS_RESET) == 0
            && !self.reset_pending
    }

    /// Transport state of queue `index`.
    pub fn queue(&self, index: u32) -> Option<&QueueConfig> {
        self.queues.get(index as usize)
    }

    /// Whether feature bit `bit` was negotiated (accepted at FEATURES_OK).
    pub fn negotiated(&self, bit: u32) -> bool {
        self.features_accepted && self.driver_bit(bit)
    }

    /// The negotiated feature words (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> &[u32] {
        &self.driver_features
    }

    /// Current config generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    fn driver_bit(&self, bit: u32) -> bool {
        self.driver_features
            .get((bit / 32) as usize)
            .is_some_and(|w| w & (1 << (bit % 32)) != 0)
    }

    /// Finish a reset started by [`Effect::Reset`]: the device now reports 0.
    pub fn complete_reset(&mut self) {
        self.status = 0;
        self.driver_features.iter_mut().for_each(|w| *w = 0);
        self.foreign_features.clear();
        self.foreign_overflow = false;
        self.features_accepted = false;
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueConfig::default());
        self.reset_pending = false;
        self.needs_reset = false;
        // The generation may change at reset (§2); bump it so a driver that
        // cached config across the reset re-reads.
        self.generation = self.generation.wrapping_add(1);
    }

    /// Whether a reset is in progress (status 0 written, not yet complete).
    pub fn reset_pending(&self) -> bool {
        self.reset_pending
    }

    /// Handle one decoded transport message addressed to this device and
    /// encode the response, if any, into `out` (at least the bus maximum).
    pub fn handle(
        &mut self,
        model: &mut dyn DeviceModel,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Result<Handled, TransportError> {
        let codec = self.codec;
        let reply = |body: Body<'_>, out: &mut [u8]| -> Result<usize, EncodeError> {
            codec.encode(
                &Message {
                    dev_num: msg.dev_num,
                    token: msg.token,
                    body,
                },
                out,
            )
        };
        let handled = match msg.body {
            Body::GetDeviceInfo => {
                let info = DeviceInfo {
                    device_id: model.device_id(),
                    vendor_id: model.vendor_id(),
                    device_uuid: model.device_uuid(),
                    num_feature_blocks: offered_blocks(model) as u32,
                    config_size: model.config_size(),
                    max_virtqueues: model.num_queues(),
                    admin_vq_start: 0,
                    admin_vq_count: 0,
                };
                Handled::respond(reply(Body::DeviceInfo(info), out)?, Effect::None)
            }
            Body::GetDeviceFeatures {
                block_index,
                num_blocks,
            } => {
                if num_blocks as usize > self.codec.max_feature_blocks() {
                    return Ok(Handled::drop(Dropped::ResponseTooLarge));
                }
                let mut words = [0u8; 4 * 64];
                let mut bytes = Vec::new();
                let buf: &mut [u8] = if num_blocks as usize <= 64 {
                    &mut words[..4 * num_blocks as usize]
                } else {
                    bytes.resize(4 * num_blocks as usize, 0);
                    &mut bytes
                };
                for (i, chunk) in buf.chunks_exact_mut(4).enumerate() {
                    let word = block_index
                        .checked_add(i as u32)
                        .map_or(0, |b| offered_word(model, b));
                    chunk.copy_from_slice(&word.to_le_bytes());
                }
                let features = vmsg_proto::Le32s::new(buf).unwrap_or_default();
                Handled::respond(
                    reply(
                        Body::DeviceFeatures {
                            block_index,
                            features,
                        },
                        out,
                    )?,
                    Effect::None,
                )
            }
            Body::SetDriverFeatures {
                block_index,
                features,
            } => {
                // Features are frozen once FEATURES_OK was accepted (core
                // virtio); the request is still answered, one response per
                // valid request.
                if !self.features_accepted {
                    for (i, word) in features.iter().enumerate() {
                        match block_index.checked_add(i as u32) {
                            Some(b) => self.store_driver_block(b, word),
                            None => self.foreign_overflow |= word != 0,
                        }
                    }
                }
                Handled::respond(reply(Body::DriverFeaturesSet, out)?, Effect::None)
            }
            Body::GetConfig { offset, length } => {
                if !in_config(model, offset, length) {
                    return Ok(Handled::drop(Dropped::ConfigOutOfRange));
                }
                if length as usize > self.codec.max_config_data() {
                    return Ok(Handled::drop(Dropped::ResponseTooLarge));
                }
                let mut data = vec![0u8; length as usize];
                model.read_config(offset, &mut data);
                Handled::respond(
                    reply(
                        Body::Config {
                            generation: self.generation,
                            offset,
                            data: &data,
                        },
                        out,
                    )?,
                    Effect::None,
                )
            }
            Body::SetConfig {
                generation,
                offset,
                data,
            } => {
                let length = data.len() as u32;
                if !in_config(model, offset, length) {
                    return Ok(Handled::drop(Dropped::ConfigOutOfRange));
                }
                let applied = if length == 0 {
                    true
                } else if self.strict_generation && generation != self.generation {
                    false
                } else {
                    let mut before = vec![0u8; data.len()];
                    model.read_config(offset, &mut before);
                    let ok = model.write_config(offset, data);
                    if ok {
                        let mut after = vec![0u8; data.len()];
                        model.read_config(offset, &mut after);
                        if before != after {
                            self.generation = self.generation.wrapping_add(1);
                        }
                    }
                    ok
                };
                let body = Body::ConfigSet {
                    generation: self.generation,
                    offset,
                    length: if applied { length } else { 0 },
                    data: &[],
                };
                Handled::respond(reply(body, out)?, Effect::None)
            }
            Body::GetDeviceStatus => Handled::respond(
                reply(
                    Body::DeviceStatus {
                        status: self.status,
                    },
                    out,
                )?,
                Effect::None,
            ),
            Body::SetDeviceStatus { status: requested } => {
                let effect = self.set_status(model, requested);
                Handled::respond(
                    reply(
                        Body::DeviceStatusSet {
                            status: self.status,
                        },
                        out,
                    )?,
                    effect,
                )
            }
            Body::GetVqueue { index } => {
                let info = self.vqueue_info(model, index);
                Handled::respond(reply(Body::Vqueue(info), out)?, Effect::None)
            }
            Body::SetVqueue(req) => {
                let effect = self.set_vqueue(model, &req);
                Handled::respond(reply(Body::VqueueSet, out)?, effect)
            }
            Body::ResetVqueue { index } => {
                let effect = self.reset_vqueue(model, index);
                Handled::respond(reply(Body::VqueueReset, out)?, effect)
            }
            Body::GetShm { shmid } => {
                let (length, address) = model.shm_region(shmid).unwrap_or((0, 0));
                let (length, address) = if length == 0 {
                    (0, 0)
                } else {
                    (length, address)
                };
                Handled::respond(
                    reply(
                        Body::Shm {
                            shmid,
                            length,
                            address,
                        },
                        out,
                    )?,
                    Effect::None,
                )
            }
            Body::EventAvail { vq_index, .. } => {
                // next_offset is reserved: NOTIFICATION_DATA is never offered.
                match self.queues.get(vq_index as usize) {
                    Some(q) if q.enabled && self.is_live() => {
                        Handled::silent(Effect::Notify(vq_index))
                    }
                    _ => Handled::drop(Dropped::QueueNotLive),
                }
            }
            body if body.is_bus() => Handled::drop(Dropped::BusMessage),
            _ => Handled::drop(Dropped::NotARequest),
        };
        Ok(handled)
    }

    fn store_driver_block(&mut self, block: u32, word: u32) {
        if let Some(w) = self.driver_features.get_mut(block as usize) {
            *w = word;
        } else if word == 0 {
            self.foreign_features.remove(&block);
        } else if self.foreign_features.len() < MAX_FOREIGN_FEATURE_BLOCKS
            || self.foreign_features.contains_key(&block)
        {
            self.foreign_features.insert(block, word);
        } else {
            self.foreign_overflow = true;
        }
    }

    /// §3.8 plus the core virtio status rules, from the device's side.
    /// A non-zero write of undefined bits only is no reset: it changes
    /// nothing.
    fn set_status(&mut self, model: &mut dyn DeviceModel, requested: u32) -> Effect {
        if requested == 0 {
            match model.reset() {
                ResetProgress::Done => self.complete_reset(),
                ResetProgress::Pending => {
                    self.reset_pending = true;
                    // Never report 0 before the reset is complete, even if
                    // nothing had been set yet.
                    if self.status == 0 {
                        self.status = status::ACKNOWLEDGE;
                    }
                }
            }
            return Effect::Reset;
        }
        if self.reset_pending {
            // Nothing but polling makes sense until the reset completed.
            return Effect::None;
        }
        // Only the defined status bits are status: others are not kept (and
        // so never reported back by GET_DEVICE_STATUS).
        let requested = requested & STATUS_BITS;
        // DEVICE_NEEDS_RESET belongs to the device; a driver cannot set or
        // clear it. Clearing any other bit is only possible through reset.
        let requested =
            (requested & !status::DEVICE_NEEDS_RESET) | (self.status & status::DEVICE_NEEDS_RESET);
        if requested & self.status != self.status {
            return Effect::None;
        }
        let mut new = requested;
        let newly = new & !self.status;
        if newly & status::FEATURES_OK != 0 {
            if self.status & status::DRIVER == 0 || !self.features_acceptable(model) {
                new &= !status::FEATURES_OK;
            } else {
                self.features_accepted = true;
            }
        }
        if newly & status::DRIVER_OK != 0 && new & status::FEATURES_OK == 0 {
            new &= !status::DRIVER_OK;
        }
        self.status = new;
        if newly & status::FAILED != 0 {
            Effect::Failed
        } else if new & newly & status::DRIVER_OK != 0 {
            Effect::Activate
        } else {
            Effect::None
        }
    }

    fn features_acceptable(&self, model: &mut dyn DeviceModel) -> bool {
        if self.foreign_overflow || !self.foreign_features.is_empty() {
            return false;
        }
        let offered = model.offered_features();
        let subset = self
            .driver_features
            .iter()
            .enumerate()
            .all(|(i, w)| w & !offered_word_of(offered, i as u32) == 0);
        subset && self.driver_bit(feature::VERSION_1) && {
            let selected = self.driver_features.clone();
            model.accept_features(&selected)
        }
    }

    fn vqueue_info(&self, model: &dyn DeviceModel, index: u32) -> VqueueInfo {
        let max_size = model.queue_max_size(index);
        match self.queues.get(index as usize) {
            Some(q) if max_size != 0 => VqueueInfo {
                index,
                max_size,
                cur_size: q.size,
                flags: if q.enabled { vq_flags::ENABLED } else { 0 },
                desc_addr: q.desc_addr,
                driver_addr: q.driver_addr,
                device_addr: q.device_addr,
            },
            // The deterministic zero sentinel of §3.9, index echoed.
            _ => VqueueInfo {
                index,
                ..VqueueInfo::default()
            },
        }
    }

    /// §3.10: all-or-nothing; every rejected case is a silent no-op.
    fn set_vqueue(&mut self, model: &dyn DeviceModel, req: &SetVqueue) -> Effect {
        let max_size = model.queue_max_size(req.index);
        let packed = self.negotiated(feature::RING_PACKED);
        let live = self.is_live();
        let Some(q) = self.queues.get_mut(req.index as usize) else {
            return Effect::None;
        };
        if max_size == 0 {
            return Effect::None;
        }
        // Older profiles have no flags word: a SET_VQUEUE there configures
        // every field and makes the queue live (§7, interop §2).
        let flags = match self.codec.profile() {
            Profile::V2 => req.flags,
            _ => vq_flags::STATE_ENABLE,
        };
        if req.reserved != 0 && self.codec.profile() == Profile::V2 {
            return Effect::None;
        }
        if flags & vq_flags::RESERVED_MASK != 0 {
            return Effect::None;
        }
        let op = flags & vq_flags::STATE_MASK;
        if op == 3 {
            return Effect::None;
        }
        let set_size = flags & vq_flags::SIZE_IGNORE == 0;
        let set_desc = flags & vq_flags::DESC_ADDR_IGNORE == 0;
        let set_driver = flags & vq_flags::DRIVER_ADDR_IGNORE == 0;
        let set_device = flags & vq_flags::DEVICE_ADDR_IGNORE == 0;
        if q.enabled
            && (op == vq_flags::STATE_DISABLED || set_size || set_desc || set_driver || set_device)
        {
            return Effect::None;
        }
        let mut next = *q;
        if set_size {
            // Size 0, above max or (split ring) not a power of two cannot be
            // a working queue; QEMU's reference treats them as no-ops too.
            if req.size == 0 || req.size > max_size || (!packed && !req.size.is_power_of_two()) {
                return Effect::None;
            }
            next.size = req.size;
        }
        if set_desc {
            next.desc_addr = req.desc_addr;
        }
        if set_driver {
            next.driver_addr = req.driver_addr;
        }
        if set_device {
            next.device_addr = req.device_addr;
        }
        // Ring alignment of core virtio (split: 16/2/4; packed: 16/4/4).
        let (da, ra, ua) = if packed { (16, 4, 4) } else { (16, 2, 4) };
        if next.desc_addr % da != 0 || next.driver_addr % ra != 0 || next.device_addr % ua != 0 {
            return Effect::None;
        }
        if op == vq_flags::STATE_ENABLE {
            // An enabled queue must be complete: Linux checks that a queue
            // with a size has three non-zero addresses (§3.9).
            if next.size == 0
                || next.desc_addr == 0
                || next.driver_addr == 0
                || next.device_addr == 0
            {
                return Effect::None;
            }
            next.enabled = true;
        }
        let enabled_now = next.enabled && !q.enabled;
        *q = next;
        if enabled_now && live {
            Effect::QueueEnabled(req.index)
        } else {
            Effect::None
        }
    }

    /// §3.11.
    fn reset_vqueue(&mut self, model: &dyn DeviceModel, index: u32) -> Effect {
        if model.queue_max_size(index) == 0 || !self.negotiated(feature::RING_RESET) {
            return Effect::None;
        }
        match self.queues.get_mut(index as usize) {
            Some(q) => {
                *q = QueueConfig::default();
                Effect::QueueReset(index)
            }
            None => Effect::None,
        }
    }

    /// Record a device-originated config change of `length` bytes at
    /// `offset` and encode the EVENT_CONFIG announcing it (with the data when
    /// it fits, else the generic offset = length = 0 form, §3.13).
    pub fn config_changed(
        &mut self,
        model: &dyn DeviceModel,
        offset: u32,
        length: u32,
        out: &mut [u8],
    ) -> Result<usize, TransportError> {
        self.generation = self.generation.wrapping_add(1);
        let fits = in_config(model, offset, length)
            && (length as usize) <= self.codec.max_event_config_data();
        let mut data = Vec::new();
        let (offset, length) = if fits {
            data.resize(length as usize, 0);
            model.read_config(offset, &mut data);
            (offset, length)
        } else {
            (0, 0)
        };
        self.event_config(offset, length, &data, out)
    }

    /// Set DEVICE_NEEDS_RESET (an unrecoverable device error, e.g. a corrupt
    /// queue) and encode the status-only EVENT_CONFIG announcing it. Returns
    /// `None` if it was already set (the driver was told).
    pub fn set_needs_reset(&mut self, out: &mut [u8]) -> Result<Option<usize>, TransportError> {
        if self.needs_reset {
            return Ok(None);
        }
        self.needs_reset = true;
        self.status |= status::DEVICE_NEEDS_RESET;
        self.event_config(0, 0, &[], out).map(Some)
    }

    fn event_config(
        &self,
        offset: u32,
        length: u32,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TransportError> {
        Ok(self.codec.encode(
            &Message {
                dev_num: self.dev_num,
                token: 0,
                body: Body::EventConfig {
                    device_status: self.status,
                    generation: self.generation,
                    offset,
                    length,
                    data,
                },
            },
            out,
        )?)
    }

    /// Encode EVENT_USED for queue `index` (§3.15).
    pub fn event_used(&self, index: u32, out: &mut [u8]) -> Result<usize, TransportError> {
        Ok(self.codec.encode(
            &Message {
                dev_num: self.dev_num,
                token: 0,
                body: Body::EventUsed { vq_index: index },
            },
            out,
        )?)
    }
}

fn offered_blocks(model: &dyn DeviceModel) -> usize {
    model.offered_features().len()
}

fn offered_word_of(offered: &[u32], block: u32) -> u32 {
    let word = offered.get(block as usize).copied().unwrap_or(0);
    if block == feature::NOTIF_CONFIG_DATA / 32 {
        word & !(1 << (feature::NOTIF_CONFIG_DATA % 32)) & !(1 << (feature::NOTIFICATION_DATA % 32))
    } else {
        word
    }
}

fn offered_word(model: &dyn DeviceModel, block: u32) -> u32 {
    offered_word_of(model.offered_features(), block)
}

fn in_config(model: &dyn DeviceModel, offset: u32, length: u32) -> bool {
    offset
        .checked_add(length)
        .is_some_and(|end| end <= model.config_size())
}
