//! One device on a bus instance, without `std`: the `vmsg-transport` state
//! machine, a [`CoreDevice`] model and its live [`SplitQueue`]s. The same
//! job as `vmsg_backend::device::DeviceHost` does with `virtio-queue` on the
//! std side; the secure partition hosts its devices with this.
//!
//! Work is bounded: one pass over a queue handles at most
//! [`QUEUE_PASS_BUDGET`] chains; a queue with more pending stays marked and
//! is continued by [`HostedDevice::run_pending`], so one busy queue cannot
//! hold the partition's single thread of control per request.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use vmsg_proto::{Codec, Message};
use vmsg_transport::device::{
    DeviceModel, DeviceTransport, Effect, Handled, ResetProgress, TransportError, feature,
};

use crate::memory::DmaMemory;
use crate::virtq::{QueueError, SplitQueue};

/// Chains one pass over a queue may handle.
pub const QUEUE_PASS_BUDGET: usize = 64;

/// Transport bits every hosted device offers: VERSION_1, ACCESS_PLATFORM
/// (addresses are bus addresses), INDIRECT_DESC and EVENT_IDX (the queue
/// implements both), RING_RESET.
pub const HOST_FEATURES: u64 = (1 << feature::VERSION_1)
    | (1 << feature::ACCESS_PLATFORM)
    | (1 << feature::EVENT_IDX)
    | (1 << 28)
    | (1 << feature::RING_RESET);

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Used entries added.
    pub used: usize,
    /// The budget ran out with chains still available.
    pub more: bool,
}

/// A device model the no_std host runs.
pub trait CoreDevice: Send {
    /// Virtio device type.
    fn device_type(&self) -> u32;
    /// Device-specific feature bits offered (the host adds its own).
    fn features(&self) -> u64;
    /// Config space size.
    fn config_size(&self) -> u32 {
        0
    }
    /// Read config bytes (the range is validated).
    fn read_config(&self, _offset: u32, _data: &mut [u8]) {}
    /// Apply a driver config write, all or nothing.
    fn write_config(&mut self, _offset: u32, _data: &[u8]) -> bool {
        false
    }
    /// Maximum size of each queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// Accept the negotiated features at FEATURES_OK.
    fn accept_features(&mut self, _features: u64) -> bool {
        true
    }
    /// DRIVER_OK with these features.
    fn activate(&mut self, _features: u64) {}
    /// Back to the initial state.
    fn reset(&mut self);
    /// Handle at most `budget` chains of queue `index`.
    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut SplitQueue,
        mem: &dyn DmaMemory,
        budget: usize,
    ) -> Result<Pass, QueueError>;
}

/// Counters of one hosted device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// Requests answered.
    pub requests: u64,
    /// Frames for this device dropped unanswered.
    pub dropped: u64,
    /// EVENT_AVAIL for live queues.
    pub notifications: u64,
    /// Used entries added.
    pub used: u64,
    /// EVENT_USED frames produced.
    pub used_events: u64,
    /// Times DEVICE_NEEDS_RESET was set.
    pub needs_reset: u64,
}

struct Adapter {
    dev: Box<dyn CoreDevice>,
    offered: [u32; 2],
}

impl DeviceModel for Adapter {
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
        self.dev.read_config(offset, data);
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
        self.dev.accept_features(words(features))
    }
    fn reset(&mut self) -> ResetProgress {
        self.dev.reset();
        ResetProgress::Done
    }
}

fn words(w: &[u32]) -> u64 {
    u64::from(w.first().copied().unwrap_or(0)) | (u64::from(w.get(1).copied().unwrap_or(0)) << 32)
}

/// One device on a bus instance.
pub struct HostedDevice {
    model: Adapter,
    transport: DeviceTransport,
    queues: Vec<Option<SplitQueue>>,
    /// Queues whose last pass ran out of budget.
    pending: Vec<bool>,
    counters: HostCounters,
    event_buf: Vec<u8>,
}

impl core::fmt::Debug for HostedDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostedDevice")
            .field("transport", &self.transport)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl HostedDevice {
    /// Host `dev` as device `dev_num` on a bus with `codec`.
    pub fn new(
        dev_num: u16,
        dev: Box<dyn CoreDevice>,
        codec: Codec,
        transport_features: u32,
    ) -> Self {
        let offered = (dev.features() | HOST_FEATURES)
            & !(1 << feature::NOTIF_CONFIG_DATA)
            & !(1 << feature::NOTIFICATION_DATA);
        let nq = dev.queue_max_sizes().len();
        let model = Adapter {
            dev,
            offered: [offered as u32, (offered >> 32) as u32],
        };
        let transport = DeviceTransport::new(&model, dev_num, codec, transport_features);
        Self {
            model,
            transport,
            queues: vec![None; nq],
            pending: vec![false; nq],
            counters: HostCounters::default(),
            event_buf: vec![0; codec.max_msg_size()],
        }
    }

    /// Start over on a bus of another wire profile: back to reset, with a
    /// transport for `codec` (a bus that learns its peer's generation from
    /// the first frame).
    pub fn rebind(&mut self, codec: Codec, transport_features: u32) {
        self.stop_queues();
        self.model.dev.reset();
        self.transport =
            DeviceTransport::new(&self.model, self.dev_num(), codec, transport_features);
        self.event_buf = vec![0; codec.max_msg_size()];
    }

    /// Device number.
    pub fn dev_num(&self) -> u16 {
        self.transport.dev_num()
    }

    /// Virtio device type.
    pub fn device_type(&self) -> u32 {
        self.model.dev.device_type()
    }

    /// Transport status.
    pub fn status(&self) -> u32 {
        self.transport.status()
    }

    /// The negotiated feature words.
    pub fn driver_features(&self) -> u64 {
        words(self.transport.driver_features())
    }

    /// Counters so far.
    pub fn counters(&self) -> HostCounters {
        self.counters
    }

    /// Handle a transport message for this device; the response goes to
    /// `out`. Carry out the returned effect with [`HostedDevice::apply`]
    /// once the response is on its way.
    pub fn handle(&mut self, msg: &Message<'_>, out: &mut [u8]) -> Result<Handled, TransportError> {
        let handled = self.transport.handle(&mut self.model, msg, out)?;
        if handled.response.is_some() {
            self.counters.requests += 1;
        }
        if handled.dropped.is_some() {
            self.counters.dropped += 1;
        }
        if handled.effect == Effect::Reset {
            self.stop_queues();
        }
        Ok(handled)
    }

    /// Back to reset (the bus was reset or the peer left).
    pub fn reset(&mut self) {
        self.stop_queues();
        self.model.dev.reset();
        self.transport.complete_reset();
    }

    /// Carry out `effect`; device→driver frames (EVENT_USED, EVENT_CONFIG)
    /// go to `emit`.
    pub fn apply(&mut self, effect: Effect, mem: &dyn DmaMemory, emit: &mut dyn FnMut(&[u8])) {
        match effect {
            Effect::None | Effect::Reset => {}
            Effect::Failed => self.stop_queues(),
            Effect::Activate => {
                for index in 0..self.queues.len() as u32 {
                    if let Err(e) = self.start_queue(index, mem) {
                        return self.fail(e, emit);
                    }
                }
                self.model.dev.activate(self.driver_features());
                for index in 0..self.queues.len() as u32 {
                    self.process(index, mem, emit);
                }
            }
            Effect::QueueEnabled(index) => match self.start_queue(index, mem) {
                Ok(()) => self.process(index, mem, emit),
                Err(e) => self.fail(e, emit),
            },
            Effect::QueueReset(index) => {
                if let Some(q) = self.queues.get_mut(index as usize) {
                    *q = None;
                }
            }
            Effect::Notify(index) => {
                self.counters.notifications += 1;
                self.process(index, mem, emit);
            }
        }
    }

    /// Bus addresses of the live queues' rings (what must stay mapped).
    pub fn queue_addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.is_some())
            .filter_map(|(i, _)| self.transport.queue(i as u32))
            .flat_map(|c| [c.desc_addr, c.driver_addr, c.device_addr])
    }

    /// Whether a queue has chains left over from a pass that ran out of
    /// budget.
    pub fn has_pending(&self) -> bool {
        self.pending.iter().any(|p| *p)
    }

    /// Continue every queue left with work by an earlier pass.
    pub fn run_pending(&mut self, mem: &dyn DmaMemory, emit: &mut dyn FnMut(&[u8])) {
        for index in 0..self.queues.len() {
            if self.pending[index] {
                self.process(index as u32, mem, emit);
            }
        }
    }

    fn start_queue(&mut self, index: u32, mem: &dyn DmaMemory) -> Result<(), QueueError> {
        let Some(cfg) = self.transport.queue(index).copied() else {
            return Ok(());
        };
        if !cfg.enabled {
            return Ok(());
        }
        let q = SplitQueue::new(
            mem,
            cfg.size,
            cfg.desc_addr,
            cfg.driver_addr,
            cfg.device_addr,
            self.transport.negotiated(feature::EVENT_IDX),
        )?;
        if let Some(slot) = self.queues.get_mut(index as usize) {
            *slot = Some(q);
        }
        Ok(())
    }

    fn process(&mut self, index: u32, mem: &dyn DmaMemory, emit: &mut dyn FnMut(&[u8])) {
        if !self.transport.is_live() {
            return;
        }
        let i = index as usize;
        let Some(Some(queue)) = self.queues.get_mut(i) else {
            return;
        };
        let pass = match self
            .model
            .dev
            .process_queue(index as u16, queue, mem, QUEUE_PASS_BUDGET)
        {
            Ok(p) => p,
            Err(e) => return self.fail(e, emit),
        };
        self.pending[i] = pass.more;
        self.counters.used += pass.used as u64;
        if pass.used == 0 {
            return;
        }
        match queue.needs_notification(mem) {
            Ok(true) => match self.transport.event_used(index, &mut self.event_buf) {
                Ok(n) => {
                    self.counters.used_events += 1;
                    emit(&self.event_buf[..n]);
                }
                Err(_) => self.counters.dropped += 1,
            },
            Ok(false) => {}
            Err(e) => self.fail(e, emit),
        }
    }

    fn stop_queues(&mut self) {
        self.queues.iter_mut().for_each(|q| *q = None);
        self.pending.iter_mut().for_each(|p| *p = false);
    }

    /// A ring that cannot be trusted: stop, set DEVICE_NEEDS_RESET and tell
    /// the driver with EVENT_CONFIG.
    fn fail(&mut self, _err: QueueError, emit: &mut dyn FnMut(&[u8])) {
        self.stop_queues();
        if let Ok(Some(n)) = self.transport.set_needs_reset(&mut self.event_buf) {
            self.counters.needs_reset += 1;
            emit(&self.event_buf[..n]);
        }
    }
}
