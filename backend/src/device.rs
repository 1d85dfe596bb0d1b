//! The `VirtioDevice` trait device models implement, and the per-device host
//! that joins a model to its transport state machine and its virtqueues.
//!
//! The transport (`vmsg_transport::device`) decides what is valid; the host
//! turns its effects into queue objects (`virtio-queue` split rings over
//! `vm-memory`), runs the model on them and produces EVENT_USED with
//! notification suppression (EVENT_IDX) honoured.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use log::debug;
use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmsg_proto::{Codec, Message};
use vmsg_transport::device::{
    DeviceModel, DeviceTransport, Effect, Handled, ResetProgress, TransportError, feature,
};

use crate::memory::{GuestMemory, GuestMemoryHandle};
use crate::rate_limited;
use crate::ratelog::LogLimiter;

/// Errors a device model reports from queue processing.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The guest put something in the queue that cannot be a valid request
    /// and leaves the queue unusable (bad ring index, unmappable ring).
    #[error("virtqueue {queue} is corrupt: {reason}")]
    QueueCorrupt { queue: u16, reason: String },
    /// The device's host side failed in a way it cannot recover from.
    #[error("device backend failed: {0}")]
    Backend(String),
}

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Used entries were added: the driver may need an EVENT_USED.
    pub used_added: bool,
}

/// How much one pass over a queue may do before the instance looks at its
/// other work again (the bus, the stop signal, the control socket, the
/// guest's other queues and devices).
///
/// A guest decides how many buffers it posts and how large they are: without
/// a bound, one pass over a ring full of huge requests keeps the guest's
/// thread busy for as long as the guest likes, and SIGTERM waits. The host
/// runs every queue one pass at a time ([`VirtioDevice::process_queue`]); a
/// pass that made progress and left buffers on the ring is run again after
/// the instance has polled its fds. A model bounds each pass with this
/// budget ([`VirtioDevice::process_queue_bounded`]): it starts a chain only
/// if [`PassBudget::take_chain`] agrees and reports the bytes it moved with
/// [`PassBudget::spend`]; once the budget is spent it returns, leaving the
/// rest on the ring.
#[derive(Clone, Debug)]
pub struct PassBudget {
    chains: u32,
    bytes: u64,
    deadline: Option<Instant>,
    /// No chain taken yet: the first is always allowed.
    fresh: bool,
}

impl PassBudget {
    /// Chains one pass may start.
    pub const MAX_CHAINS: u32 = 64;
    /// Bytes one pass may move to or from guest memory (or the disk).
    pub const MAX_BYTES: u64 = 4 << 20;
    /// Time after which a pass starts no further chain (checked between
    /// chains).
    pub const MAX_TIME: Duration = Duration::from_millis(5);

    /// A fresh budget for one pass, starting now.
    pub fn new() -> Self {
        Self::with_limits(Self::MAX_CHAINS, Self::MAX_BYTES, Self::MAX_TIME)
    }

    /// A budget of `chains` chains, `bytes` bytes and `time` from now.
    pub fn with_limits(chains: u32, bytes: u64, time: Duration) -> Self {
        Self {
            chains,
            bytes,
            deadline: Instant::now().checked_add(time),
            fresh: true,
        }
    }

    /// The chain and byte bounds without the time bound: deterministic,
    /// for a model's own `process_queue` (tests drive models directly).
    pub fn untimed() -> Self {
        Self {
            chains: Self::MAX_CHAINS,
            bytes: Self::MAX_BYTES,
            deadline: None,
            fresh: true,
        }
    }

    /// Whether another chain may be started; if so, counts it. The first
    /// chain of a fresh budget is always allowed (however long the thread
    /// waited to run), so every pass progresses.
    pub fn take_chain(&mut self) -> bool {
        let fresh = std::mem::take(&mut self.fresh);
        if self.chains == 0 || self.bytes == 0 || (!fresh && self.timed_out()) {
            return false;
        }
        self.chains -= 1;
        true
    }

    fn timed_out(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Count `bytes` moved.
    pub fn spend(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Bytes still allowed in this pass.
    pub fn bytes_left(&self) -> u64 {
        self.bytes
    }

    /// Whether nothing more may be started.
    pub fn is_spent(&self) -> bool {
        self.chains == 0 || self.bytes == 0 || (!self.fresh && self.timed_out())
    }
}

impl Default for PassBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// A virtio device model (rng, blk, net, i2c).
pub trait VirtioDevice: Send {
    /// A short name for logs ("rng", "blk:disk0").
    fn name(&self) -> &str;
    /// Virtio device type.
    fn device_type(&self) -> u32;
    /// Device-specific feature bits offered. The host adds the transport-level
    /// bits it implements itself (VERSION_1, ACCESS_PLATFORM, EVENT_IDX,
    /// INDIRECT_DESC, RING_RESET).
    fn features(&self) -> u64;
    /// Maximum size of each queue (the queue count is this slice's length).
    fn queue_max_sizes(&self) -> &[u16];
    /// Config space size.
    fn config_size(&self) -> u32 {
        0
    }
    /// Read config bytes; `offset + data.len() <= config_size()` is checked.
    fn read_config(&self, _offset: u32, data: &mut [u8]) {
        data.fill(0);
    }
    /// Apply a driver config write, all or nothing.
    fn write_config(&mut self, _offset: u32, _data: &[u8]) -> bool {
        false
    }
    /// Validate the negotiated features (FEATURES_OK).
    fn accept_features(&mut self, _features: u64) -> bool {
        true
    }
    /// DRIVER_OK: the device goes live with these negotiated features.
    fn activate(&mut self, _features: u64) -> Result<(), DeviceError> {
        Ok(())
    }
    /// One pass over the available buffers of queue `index`.
    ///
    /// The host calls this once per pass: after a pass that consumed
    /// buffers and left some on the ring, it runs the next pass only after
    /// the instance has looked at its fds (stop, the bus, other queues). A
    /// pass should therefore not take everything a hostile guest posts:
    /// models that can do much work per buffer implement
    /// [`VirtioDevice::process_queue_bounded`] and stop at its budget.
    ///
    /// Guarantee for asynchronous models: the memory behind `mem` stays
    /// mapped until [`VirtioDevice::reset`] (or
    /// [`VirtioDevice::queue_reset`] for that queue) has returned; the host
    /// never drops a bus connection's memory before resetting every device.
    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<QueueOutcome, DeviceError>;
    /// [`VirtioDevice::process_queue`] within `budget`: what the host
    /// actually calls. A model that implements it starts chains only while
    /// [`PassBudget::take_chain`] allows and reports the bytes it moved;
    /// the default ignores the budget and runs `process_queue`.
    fn process_queue_bounded(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
        _budget: &mut PassBudget,
    ) -> Result<QueueOutcome, DeviceError> {
        self.process_queue(index, queue, mem)
    }
    /// Return to the initial state (device reset). A model with I/O in
    /// flight must wait for it here: nothing the guest was told is durable
    /// may be lost, and no completion may land in memory after the reset.
    fn reset(&mut self);
    /// Queue `index` is about to be dropped (RESET_VQUEUE, or a queue error
    /// that set DEVICE_NEEDS_RESET): stop and drain its in-flight work. No
    /// completion for it may reach guest memory after this returns.
    fn queue_reset(&mut self, _index: u16) {}
    /// File descriptors the instance polls on this device's behalf (e.g. an
    /// io_uring completion eventfd). Must stay the same for the device's
    /// lifetime; they are registered when a bus connection starts.
    fn event_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// One of [`VirtioDevice::event_fds`] became readable: complete finished
    /// work. `queues[i]` is queue `i` if it is live. Returns the indices of
    /// queues that got used entries (the host sends EVENT_USED as needed).
    fn handle_event(
        &mut self,
        _queues: &mut [Option<Queue>],
        _mem: &GuestMemory,
    ) -> Result<Vec<u16>, DeviceError> {
        Ok(Vec::new())
    }
    /// When the device wants its queues processed again without a
    /// notification (e.g. a rate limit refilled).
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// The model's own counters (bytes moved, requests by kind, errors), as
    /// (name, value) for `vmsgctl stats` and Prometheus: names are
    /// `snake_case`, values only grow (a gauge's name ends in `_now`).
    /// Default: none; the host counts requests, notifications and
    /// EVENT_USED for every device itself.
    fn stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// One queue as `vmsgctl status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueReport {
    /// Queue index.
    pub index: u16,
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver configured (0: not configured).
    pub size: u32,
    /// Enabled by the driver (SET_VQUEUE).
    pub enabled: bool,
    /// Being served (enabled, DRIVER_OK, not reset).
    pub live: bool,
    /// Next available entry the device will take (live queues).
    pub next_avail: u16,
    /// Next used entry the device will write (live queues).
    pub next_used: u16,
}

/// One device as `vmsgctl status`/`stats` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceReport {
    /// Device number.
    pub dev_num: u16,
    /// The model's name.
    pub name: String,
    /// Virtio device type.
    pub device_type: u32,
    /// Device status (0 when no bus is attached).
    pub status: u32,
    /// Feature bits offered.
    pub offered: u64,
    /// Feature bits the driver selected (once FEATURES_OK was accepted).
    pub negotiated: u64,
    /// Queues.
    pub queues: Vec<QueueReport>,
    /// The host's counters.
    pub counters: DeviceCounters,
    /// The model's counters ([`VirtioDevice::stats`]).
    pub model: Vec<(&'static str, u64)>,
}

/// Transport-level feature bits the host implements for every device.
pub const HOST_FEATURES: u64 = (1 << feature::VERSION_1)
    | (1 << feature::ACCESS_PLATFORM)
    | (1 << feature::EVENT_IDX)
    | (1 << 28) // VIRTIO_F_INDIRECT_DESC: virtio-queue walks indirect tables.
    | (1 << feature::RING_RESET);

/// Adapts a `VirtioDevice` plus its live queues to the transport's
/// `DeviceModel`.
struct ModelAdapter {
    dev: Box<dyn VirtioDevice>,
    offered: [u32; 2],
    queues: Vec<Option<Queue>>,
}

impl DeviceModel for ModelAdapter {
    fn device_id(&self) -> u32 {
        self.dev.device_type()
    }
    fn offered_features(&self) -> &[u32] {
        &self.offered
    }
    fn config_size(&self) -> u32 {
        self.dev.config_size()
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        self.dev.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> bool {
        self.dev.write_config(offset, data)
    }
    fn num_queues(&self) -> u32 {
        self.dev.queue_max_sizes().len() as u32
    }
    fn queue_max_size(&self, index: u32) -> u32 {
        self.dev
            .queue_max_sizes()
            .get(index as usize)
            .map_or(0, |&s| u32::from(s))
    }
    fn accept_features(&mut self, features: &[u32]) -> bool {
        self.dev.accept_features(words_to_u64(features))
    }
    fn reset(&mut self) -> ResetProgress {
        self.queues.iter_mut().for_each(|q| *q = None);
        self.dev.reset();
        ResetProgress::Done
    }
}

fn words_to_u64(words: &[u32]) -> u64 {
    let lo = words.first().copied().unwrap_or(0);
    let hi = words.get(1).copied().unwrap_or(0);
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Counters of one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Requests answered.
    pub requests: u64,
    /// Frames addressed to this device that were dropped unanswered.
    pub dropped: u64,
    /// EVENT_AVAIL received for live queues.
    pub notifications: u64,
    /// EVENT_USED sent.
    pub used_events: u64,
    /// Times the device entered DEVICE_NEEDS_RESET.
    pub needs_reset: u64,
}

/// One device on a bus instance: the model, its transport state, its queues.
pub struct DeviceHost {
    dev_num: u16,
    model: ModelAdapter,
    transport: Option<DeviceTransport>,
    mem: Option<GuestMemoryHandle>,
    counters: DeviceCounters,
    /// Where EVENT_USED / EVENT_CONFIG are encoded (bus maximum long).
    event_buf: Vec<u8>,
    /// Queues whose last pass made progress and left buffers on the ring:
    /// the instance runs another pass once it has polled its fds.
    runnable: Vec<bool>,
    /// Device errors a guest provokes are logged through this.
    log_limit: LogLimiter,
}

impl std::fmt::Debug for DeviceHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHost")
            .field("dev_num", &self.dev_num)
            .field("name", &self.model.dev.name())
            .field("transport", &self.transport)
            .finish()
    }
}

impl DeviceHost {
    /// Host `dev` as device number `dev_num`.
    pub fn new(dev_num: u16, dev: Box<dyn VirtioDevice>) -> Self {
        let offered = (dev.features() | HOST_FEATURES)
            & !(1 << feature::NOTIF_CONFIG_DATA)
            & !(1 << feature::NOTIFICATION_DATA);
        let queues = dev.queue_max_sizes().iter().map(|_| None).collect();
        let runnable = vec![false; dev.queue_max_sizes().len()];
        Self {
            dev_num,
            model: ModelAdapter {
                dev,
                offered: [offered as u32, (offered >> 32) as u32],
                queues,
            },
            transport: None,
            mem: None,
            counters: DeviceCounters::default(),
            event_buf: Vec::new(),
            runnable,
            log_limit: LogLimiter::default(),
        }
    }

    /// Device number on its bus.
    pub fn dev_num(&self) -> u16 {
        self.dev_num
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        self.model.dev.name()
    }

    /// Counters so far.
    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// Transport status, 0 when no bus is attached.
    pub fn status(&self) -> u32 {
        self.transport.as_ref().map_or(0, DeviceTransport::status)
    }

    /// The device as `vmsgctl status`/`stats` show it.
    pub fn report(&self) -> DeviceReport {
        let transport = self.transport.as_ref();
        let status = transport.map_or(0, DeviceTransport::status);
        let negotiated = match transport {
            Some(t) if status & vmsg_proto::status::FEATURES_OK != 0 => {
                words_to_u64(t.driver_features())
            }
            _ => 0,
        };
        let queues = (0..self.model.queues.len())
            .map(|i| {
                let cfg = transport.and_then(|t| t.queue(i as u32));
                let live = self.model.queues.get(i).and_then(Option::as_ref);
                QueueReport {
                    index: i as u16,
                    max_size: self.model.queue_max_size(i as u32) as u16,
                    size: cfg.map_or(0, |c| c.size),
                    enabled: cfg.is_some_and(|c| c.enabled),
                    live: live.is_some(),
                    next_avail: live.map_or(0, |q| q.next_avail()),
                    next_used: live.map_or(0, |q| q.next_used()),
                }
            })
            .collect();
        DeviceReport {
            dev_num: self.dev_num,
            name: self.model.dev.name().to_string(),
            device_type: self.model.dev.device_type(),
            status,
            offered: words_to_u64(&self.model.offered),
            negotiated,
            queues,
            counters: self.counters,
            model: self.model.dev.stats(),
        }
    }

    /// Attach to a (new) bus connection: the device starts from reset with
    /// that bus's codec and guest memory.
    pub fn attach(&mut self, codec: Codec, transport_features: u32, mem: GuestMemoryHandle) {
        let _ = self.model.reset();
        self.runnable.fill(false);
        self.transport = Some(DeviceTransport::new(
            &self.model,
            self.dev_num,
            codec,
            transport_features,
        ));
        self.mem = Some(mem);
        // Events are encoded here: room for the bus maximum, because RFC2
        // frames are padded to it.
        self.event_buf = vec![0; codec.max_msg_size()];
    }

    /// Detach from the bus (peer gone): stop everything.
    pub fn detach(&mut self) {
        let _ = self.model.reset();
        self.runnable.fill(false);
        self.transport = None;
        self.mem = None;
    }

    /// Handle one transport message for this device. The response (if any)
    /// is encoded into `out`; events that follow it are passed to `emit`
    /// after the caller sent the response, via [`DeviceHost::apply`].
    pub fn handle(&mut self, msg: &Message<'_>, out: &mut [u8]) -> Result<Handled, TransportError> {
        let Some(transport) = self.transport.as_mut() else {
            return Ok(Handled {
                response: None,
                effect: Effect::None,
                dropped: None,
            });
        };
        let handled = transport.handle(&mut self.model, msg, out)?;
        if handled.response.is_some() {
            self.counters.requests += 1;
        }
        if handled.dropped.is_some() {
            self.counters.dropped += 1;
        }
        Ok(handled)
    }

    /// Carry out an effect. Frames to send (EVENT_USED, EVENT_CONFIG) are
    /// handed to `emit`, in order.
    pub fn apply(&mut self, effect: Effect, emit: &mut dyn FnMut(&[u8])) {
        match effect {
            Effect::None => {}
            // The transport reset the model (and with it every queue).
            Effect::Reset => self.runnable.fill(false),
            Effect::Failed => self.stop_queues(),
            Effect::Activate => {
                let features = self
                    .transport
                    .as_ref()
                    .map_or(0, |t| words_to_u64(t.driver_features()));
                let count = self.model.queues.len() as u32;
                for index in 0..count {
                    if let Err(e) = self.start_queue(index) {
                        self.fail(&e, emit);
                        return;
                    }
                }
                if let Err(e) = self.model.dev.activate(features) {
                    self.fail(&e, emit);
                    return;
                }
                // Buffers may already be waiting (the driver may post before
                // DRIVER_OK completes on its side).
                for index in 0..count {
                    self.process(index, emit);
                }
            }
            Effect::QueueEnabled(index) => match self.start_queue(index) {
                Ok(()) => self.process(index, emit),
                Err(e) => self.fail(&e, emit),
            },
            Effect::QueueReset(index) => {
                if let Some(r) = self.runnable.get_mut(index as usize) {
                    *r = false;
                }
                if let Some(q) = self.model.queues.get_mut(index as usize) {
                    if q.take().is_some() {
                        self.model.dev.queue_reset(index as u16);
                        // Draining may have completed other queues' work.
                        self.handle_event(emit);
                    }
                }
            }
            Effect::Notify(index) => {
                self.counters.notifications += 1;
                self.process(index, emit);
            }
        }
    }

    /// Build the `virtio-queue` object for an enabled queue.
    fn start_queue(&mut self, index: u32) -> Result<(), DeviceError> {
        let (Some(transport), Some(mem)) = (self.transport.as_ref(), self.mem.as_ref()) else {
            return Ok(());
        };
        let Some(cfg) = transport.queue(index).copied() else {
            return Ok(());
        };
        if !cfg.enabled {
            return Ok(());
        }
        let corrupt = |reason: String| DeviceError::QueueCorrupt {
            queue: index as u16,
            reason,
        };
        let max = self.model.queue_max_size(index) as u16;
        let mut queue = Queue::new(max).map_err(|e| corrupt(e.to_string()))?;
        queue
            .try_set_size(cfg.size as u16)
            .map_err(|e| corrupt(e.to_string()))?;
        queue
            .try_set_desc_table_address(GuestAddress(cfg.desc_addr))
            .map_err(|e| corrupt(e.to_string()))?;
        queue
            .try_set_avail_ring_address(GuestAddress(cfg.driver_addr))
            .map_err(|e| corrupt(e.to_string()))?;
        queue
            .try_set_used_ring_address(GuestAddress(cfg.device_addr))
            .map_err(|e| corrupt(e.to_string()))?;
        queue.set_event_idx(transport.negotiated(feature::EVENT_IDX));
        queue.set_ready(true);
        // The rings must lie inside guest memory; a queue pointing elsewhere
        // can never work.
        if !queue.is_valid(&**mem) {
            return Err(corrupt("rings outside guest memory".into()));
        }
        if let Some(slot) = self.model.queues.get_mut(index as usize) {
            *slot = Some(queue);
        }
        Ok(())
    }

    /// Run one pass of the model on queue `index` and send EVENT_USED if
    /// the driver wants one. A pass that consumed buffers and left more on
    /// the ring marks the queue runnable ([`DeviceHost::run_pending`]).
    fn process(&mut self, index: u32, emit: &mut dyn FnMut(&[u8])) {
        if let Some(r) = self.runnable.get_mut(index as usize) {
            *r = false;
        }
        let (Some(transport), Some(mem)) = (self.transport.as_ref(), self.mem.clone()) else {
            return;
        };
        if !transport.is_live() {
            return;
        }
        let Some(Some(queue)) = self.model.queues.get_mut(index as usize) else {
            return;
        };
        let before = queue.next_avail();
        let mut budget = PassBudget::new();
        let used_added =
            match self
                .model
                .dev
                .process_queue_bounded(index as u16, queue, &mem, &mut budget)
            {
                Ok(outcome) => outcome.used_added,
                Err(e) => return self.fail(&e, emit),
            };
        // Re-arm driver notifications (with EVENT_IDX: publish avail_event,
        // without which the driver stops kicking), then look for buffers
        // still on the ring: posted meanwhile, or left by a pass that spent
        // its budget. Another pass only if this one consumed something: a
        // model stalled on a rate limit or its in-flight bound is woken by
        // its deadline or its completions.
        match queue.enable_notification(&*mem) {
            Ok(true) if queue.next_avail() != before => {
                if let Some(r) = self.runnable.get_mut(index as usize) {
                    *r = true;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let err = DeviceError::QueueCorrupt {
                    queue: index as u16,
                    reason: e.to_string(),
                };
                return self.fail(&err, emit);
            }
        }
        if used_added {
            self.notify_used(index, &mem, emit);
        }
    }

    /// Whether a queue waits for another pass ([`DeviceHost::run_pending`]).
    pub fn has_pending_work(&self) -> bool {
        self.runnable.iter().any(|&r| r)
    }

    /// One more pass of every queue whose last pass left buffers on the
    /// ring.
    pub fn run_pending(&mut self, emit: &mut dyn FnMut(&[u8])) {
        for index in 0..self.runnable.len() {
            if self.runnable[index] {
                self.process(index as u32, emit);
            }
        }
    }

    /// Mark every live queue with buffers the model has not taken runnable
    /// (after a completion freed room, a model may be able to go on).
    fn mark_backlogged(&mut self) {
        let Some(mem) = self.mem.as_ref() else {
            return;
        };
        for (index, q) in self.model.queues.iter().enumerate() {
            let Some(q) = q else { continue };
            let waiting = q
                .avail_idx(&**mem, std::sync::atomic::Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != q.next_avail());
            if waiting {
                if let Some(r) = self.runnable.get_mut(index) {
                    *r = true;
                }
            }
        }
    }

    /// The model's pollable fds.
    pub fn event_fds(&self) -> Vec<RawFd> {
        self.model.dev.event_fds()
    }

    /// A model fd became readable: let the model complete work, then send
    /// EVENT_USED for the queues that need one.
    pub fn handle_event(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let Some(mem) = self.mem.clone() else {
            return;
        };
        match self.model.dev.handle_event(&mut self.model.queues, &mem) {
            Ok(used) => {
                for index in used {
                    self.notify_used(u32::from(index), &mem, emit);
                }
                self.mark_backlogged();
            }
            Err(e) => self.fail(&e, emit),
        }
    }

    /// Send EVENT_USED for queue `index` if the driver wants one (EVENT_IDX).
    fn notify_used(&mut self, index: u32, mem: &GuestMemory, emit: &mut dyn FnMut(&[u8])) {
        let (Some(transport), Some(Some(queue))) = (
            self.transport.as_ref(),
            self.model.queues.get_mut(index as usize),
        ) else {
            return;
        };
        match queue.needs_notification(mem) {
            Ok(true) => {
                let buf = &mut self.event_buf;
                match transport.event_used(index, buf) {
                    Ok(n) => {
                        self.counters.used_events += 1;
                        emit(&buf[..n]);
                    }
                    Err(e) => rate_limited!(
                        self.log_limit,
                        warn,
                        "{}: encoding EVENT_USED: {e}",
                        self.model.dev.name()
                    ),
                }
            }
            Ok(false) => {}
            Err(e) => {
                let err = DeviceError::QueueCorrupt {
                    queue: index as u16,
                    reason: e.to_string(),
                };
                self.fail(&err, emit);
            }
        }
    }

    /// Process every live queue whose device asked to be woken by now.
    pub fn run_deadline(&mut self, now: Instant, emit: &mut dyn FnMut(&[u8])) {
        if self.model.dev.next_deadline().is_some_and(|d| d <= now) {
            for index in 0..self.model.queues.len() as u32 {
                self.process(index, emit);
            }
        }
    }

    /// The model's next wake-up, if live.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self
            .transport
            .as_ref()
            .is_some_and(DeviceTransport::is_live)
        {
            self.model.dev.next_deadline()
        } else {
            None
        }
    }

    /// Stop every live queue, letting the model drain each first.
    fn stop_queues(&mut self) {
        self.runnable.iter_mut().for_each(|r| *r = false);
        for (index, q) in self.model.queues.iter_mut().enumerate() {
            if q.take().is_some() {
                self.model.dev.queue_reset(index as u16);
            }
        }
    }

    /// An unrecoverable queue or backend error: stop the queues, set
    /// DEVICE_NEEDS_RESET and tell the driver with EVENT_CONFIG.
    fn fail(&mut self, err: &DeviceError, emit: &mut dyn FnMut(&[u8])) {
        rate_limited!(
            self.log_limit,
            warn,
            "{} (dev {}): {err}; setting DEVICE_NEEDS_RESET",
            self.model.dev.name(),
            self.dev_num
        );
        self.stop_queues();
        let Some(transport) = self.transport.as_mut() else {
            return;
        };
        let buf = &mut self.event_buf;
        match transport.set_needs_reset(buf) {
            Ok(Some(n)) => {
                self.counters.needs_reset += 1;
                emit(&buf[..n]);
            }
            Ok(None) => debug!("DEVICE_NEEDS_RESET already signalled"),
            Err(e) => rate_limited!(self.log_limit, warn, "encoding EVENT_CONFIG: {e}"),
        }
    }
}
