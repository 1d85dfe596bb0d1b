//! virtio-i2c (device id 34, virtio 1.3 §5.19): an I²C adapter whose
//! transfers vmsgd carries out on a host adapter (passthrough, only on the
//! addresses this guest is allowed) or on simulated chips.
//!
//! Requests are parsed by [`request`] and grouped into transactions: the
//! requests linked with `VIRTIO_I2C_FLAGS_FAIL_NEXT` and the one that ends
//! the chain of links. A transaction goes to the adapter as **one combined
//! transfer** (repeated STARTs, one STOP); when a message fails, the
//! requests before it are answered OK and it and the rest of the
//! transaction ERR, without the rest being attempted. A transaction with a
//! malformed request, an address outside the guest's allow-list or more
//! messages than [`MAX_TRANSACTION_MSGS`] is not sent to the adapter at
//! all: every request of it is answered ERR. The group's end is a request
//! without FAIL_NEXT, or the last request the driver made available
//! (`docs/i2c.md`).
//!
//! The adapter runs on a worker thread of the device ([`worker`]): a bus
//! transfer may take long and the ioctls block, and the guest's thread
//! serves all its devices and its bus. Transactions complete in order, as
//! §5.19.6 requires; at most [`MAX_IN_FLIGHT`] wait at a time, the rest stay
//! on the ring until completions free room.
//!
//! Backends: [`host::HostAdapter`] (`/dev/i2c-N`: `I2C_RDWR`, or SMBus
//! commands on SMBus-only adapters, [`smbus`]) and [`sim::SimAdapter`]
//! (a 24C02 EEPROM and an LM75 sensor, [`sim`]).

pub mod adapter;
pub mod host;
pub mod request;
pub mod sim;
pub mod smbus;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use log::{debug, info, warn};
use thiserror::Error;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmsg_backend::device::{DeviceError, QueueOutcome, VirtioDevice};
use vmsg_backend::memory::GuestMemory;

pub use self::adapter::{
    FailKind, I2cAdapter, I2cMsg, MAX_MSG_LEN, MAX_TRANSACTION_MSGS, TransferError,
};
use self::host::{HostAdapter, HostError};
use self::request::{MSG_ERR, MSG_OK, Parsed, Piece, Refusal};
use self::sim::eeprom::Eeprom24c02;
use self::sim::lm75::Lm75;
use self::sim::{SimAdapter, SimError};
use self::worker::{Done, Job, Worker};

/// virtio device type of an I²C adapter.
pub const VIRTIO_ID_I2C_ADAPTER: u32 = 34;
/// Feature bit: zero-length requests and the M_RD flag. Mandatory: the
/// device offers it and refuses a driver that does not take it (§5.19.6.2).
pub const VIRTIO_I2C_F_ZERO_LENGTH_REQUEST: u32 = 0;
/// Size of the request queue. A Linux transfer of the most messages
/// `I2C_RDWR` allows (42, three descriptors each) fits.
pub const QUEUE_SIZE: u16 = 256;
/// Transactions handed to the worker and not yet completed; more wait on
/// the ring. Bounds the memory a guest can make the device hold
/// (`MAX_IN_FLIGHT × 42 × 8 KiB`).
pub const MAX_IN_FLIGHT: usize = 4;

/// Errors of building an i2c device.
#[derive(Debug, Error)]
pub enum I2cError {
    /// The host adapter could not be found or opened.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A simulated chip could not be set up.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// A passthrough device needs at least one allowed address.
    #[error("the allow-list is empty: the guest could reach no address")]
    EmptyAllowList,
    /// An allowed address is not a 7-bit device address.
    #[error("allow-list address {0:#04x} is not a 7-bit device address (0x03..=0x77)")]
    BadAllowed(u16),
    /// A simulated adapter needs at least one chip.
    #[error("a simulated adapter needs at least one chip")]
    NoChips,
    /// The worker thread could not be started.
    #[error("starting the i2c worker thread: {0}")]
    Worker(#[source] std::io::Error),
}

/// Which host adapter: `/dev/i2c-N`, or the one sysfs names so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterRef {
    /// Adapter number N (`/dev/i2c-N`).
    Number(u32),
    /// The adapter whose `/sys/bus/i2c/devices/i2c-N/name` is this.
    Name(String),
}

impl AdapterRef {
    /// The adapter number, looking the name up in `sysfs` (a
    /// `/sys/bus/i2c/devices`).
    pub fn resolve(&self, sysfs: &Path) -> Result<u32, HostError> {
        match self {
            AdapterRef::Number(n) => Ok(*n),
            AdapterRef::Name(name) => host::find_adapter(sysfs, name),
        }
    }
}

/// A simulated chip model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChipModel {
    /// A 24C02 EEPROM, contents in `file` if given (else in memory).
    Eeprom24c02 { file: Option<PathBuf> },
    /// An LM75 reading `temperature_mc` millidegrees Celsius.
    Lm75 { temperature_mc: i32 },
}

/// A simulated chip and its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipConfig {
    /// 7-bit address.
    pub addr: u16,
    /// What it is.
    pub model: ChipModel,
}

/// Where an i2c device's transfers go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum I2cBackend {
    /// A host adapter, only for these 7-bit addresses.
    Host {
        adapter: AdapterRef,
        allow: Vec<u16>,
    },
    /// A virtual adapter with these chips.
    Sim { chips: Vec<ChipConfig> },
}

/// Counters of one i2c device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I2cStats {
    /// Transactions handed to the adapter.
    pub transactions: u64,
    /// Requests answered OK.
    pub requests_ok: u64,
    /// Requests answered ERR, for whatever reason.
    pub requests_failed: u64,
    /// Transactions the adapter ended with a missing acknowledge.
    pub nacks: u64,
    /// Transactions the adapter cannot express (SMBus-only adapters).
    pub unsupported: u64,
    /// Transactions the host adapter or a simulated chip failed.
    pub adapter_errors: u64,
    /// Transactions refused because an address is not on the allow-list.
    pub disallowed: u64,
    /// Transactions refused because a request was malformed or the
    /// transaction too long.
    pub malformed: u64,
    /// Requests without a usable status byte (returned with length 0).
    pub unanswerable: u64,
    /// Bytes read from and written to targets by successful requests.
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// One request of a transaction waiting for its answer.
#[derive(Debug)]
struct Slot {
    head: u16,
    status: Option<GuestAddress>,
    /// A read's buffer in guest memory.
    read_into: Vec<Piece>,
    /// Bytes a successful request moved (read or written).
    len: usize,
    read: bool,
}

/// How a transaction ended.
#[derive(Debug)]
enum Outcome {
    /// Not sent to the adapter: every request is answered ERR.
    Refused,
    /// The adapter ran it: the first `ok` requests succeeded.
    Ran { ok: usize, msgs: Vec<I2cMsg> },
}

/// A transaction in order of arrival.
#[derive(Debug)]
struct Pending {
    id: u64,
    slots: Vec<Slot>,
    outcome: Option<Outcome>,
}

/// Why a transaction was refused before reaching the adapter.
#[derive(Debug)]
enum Refused {
    Malformed(Refusal),
    Unanswerable,
    TooLong(usize),
    Disallowed(u16),
    BufferOutsideMemory,
}

/// The virtio-i2c device model.
pub struct I2cDevice {
    name: String,
    queue_sizes: [u16; 1],
    /// 7-bit addresses the guest may reach; `None`: every address goes to
    /// the adapter (a simulated one, where absent chips NACK).
    allow: Option<BTreeSet<u16>>,
    adapter: String,
    worker: Worker,
    pending: VecDeque<Pending>,
    next_id: u64,
    /// Stopped popping at the in-flight bound.
    throttled: bool,
    stats: I2cStats,
    /// Warnings logged about guest-caused refusals (bounded).
    refusal_warnings: u64,
}

impl std::fmt::Debug for I2cDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I2cDevice")
            .field("name", &self.name)
            .field("adapter", &self.adapter)
            .field("allow", &self.allow)
            .field("stats", &self.stats)
            .finish()
    }
}

impl I2cDevice {
    /// Build the device `backend` describes. A host adapter named by name is
    /// looked up in `sysfs` (normally [`host::SYSFS_I2C_DEVICES`]).
    pub fn open(
        name: impl Into<String>,
        backend: &I2cBackend,
        sysfs: &Path,
    ) -> Result<Self, I2cError> {
        let name = name.into();
        match backend {
            I2cBackend::Host { adapter, allow } => {
                let allow = check_allow(allow)?;
                let number = adapter.resolve(sysfs)?;
                let adapter_name = host::adapter_name(sysfs, number).unwrap_or_default();
                let host = HostAdapter::open(&host::dev_path(number), &adapter_name)?;
                Self::new(name, Box::new(host), Some(allow))
            }
            I2cBackend::Sim { chips } => {
                if chips.is_empty() {
                    return Err(I2cError::NoChips);
                }
                let mut sim = SimAdapter::new();
                for c in chips {
                    let chip: Box<dyn sim::SimChip> = match &c.model {
                        ChipModel::Eeprom24c02 { file: Some(path) } => {
                            Box::new(Eeprom24c02::with_backing_file(path)?)
                        }
                        ChipModel::Eeprom24c02 { file: None } => Box::new(Eeprom24c02::new()),
                        ChipModel::Lm75 { temperature_mc } => Box::new(Lm75::new(*temperature_mc)),
                    };
                    sim.add(c.addr, chip)?;
                }
                Self::new(name, Box::new(sim), None)
            }
        }
    }

    /// A device on `adapter`, limited to `allow` if given.
    pub fn new(
        name: impl Into<String>,
        adapter: Box<dyn I2cAdapter>,
        allow: Option<BTreeSet<u16>>,
    ) -> Result<Self, I2cError> {
        let name = name.into();
        let described = adapter.describe();
        let worker = Worker::start(&name, adapter).map_err(I2cError::Worker)?;
        info!(
            "{name}: virtio-i2c on {described}{}",
            match &allow {
                Some(a) => format!(
                    ", allowed addresses {}",
                    a.iter()
                        .map(|x| format!("{x:#04x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                None => String::new(),
            }
        );
        Ok(Self {
            name,
            queue_sizes: [QUEUE_SIZE],
            allow,
            adapter: described,
            worker,
            pending: VecDeque::new(),
            next_id: 0,
            throttled: false,
            stats: I2cStats::default(),
            refusal_warnings: 0,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> I2cStats {
        self.stats
    }

    /// Transactions waiting for the adapter or for earlier ones.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Pop the next transaction's chains: up to and including the first
    /// request without FAIL_NEXT, or to the last one available.
    fn pop_group(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<Vec<(u16, Parsed)>, DeviceError> {
        let mut group = Vec::new();
        // A group cannot hold more chains than the ring.
        while group.len() < usize::from(queue.size()) {
            let chain = {
                let mut iter = queue.iter(mem).map_err(|e| corrupt(&e))?;
                iter.next()
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let parsed = request::parse(chain, mem);
            let more = parsed.fail_next;
            group.push((head, parsed));
            if !more {
                break;
            }
        }
        Ok(group)
    }

    /// Validate a transaction and hand it to the worker, or refuse it.
    fn start(&mut self, group: Vec<(u16, Parsed)>, mem: &GuestMemory) -> Result<(), DeviceError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut slots = Vec::with_capacity(group.len());
        let mut msgs = Vec::with_capacity(group.len());
        let mut refused: Option<Refused> = None;
        if group.len() > MAX_TRANSACTION_MSGS {
            refused = Some(Refused::TooLong(group.len()));
        }
        for (head, parsed) in group {
            let mut slot = Slot {
                head,
                status: parsed.status,
                read_into: Vec::new(),
                len: 0,
                read: false,
            };
            if parsed.status.is_none() {
                self.stats.unanswerable += 1;
                refused.get_or_insert(Refused::Unanswerable);
            }
            match parsed.body {
                Err(r) => {
                    refused.get_or_insert(Refused::Malformed(r));
                }
                Ok(req) if refused.is_none() => {
                    if self.allow.as_ref().is_some_and(|a| !a.contains(&req.addr)) {
                        refused = Some(Refused::Disallowed(req.addr));
                    } else if req.read {
                        let in_memory = req
                            .buf
                            .iter()
                            .all(|p| GuestMemoryBackend::check_range(mem, p.addr, p.len as usize));
                        if in_memory {
                            msgs.push(I2cMsg::read(req.addr, req.len));
                        } else {
                            refused = Some(Refused::BufferOutsideMemory);
                        }
                    } else {
                        let mut data = vec![0u8; req.len];
                        if request::read_pieces(mem, &req.buf, &mut data).is_some() {
                            msgs.push(I2cMsg {
                                addr: req.addr,
                                read: false,
                                buf: data,
                            });
                        } else {
                            refused = Some(Refused::BufferOutsideMemory);
                        }
                    }
                    slot.read = req.read;
                    slot.len = req.len;
                    if req.read {
                        slot.read_into = req.buf;
                    }
                }
                Ok(_) => {}
            }
            slots.push(slot);
        }
        let outcome = match refused {
            Some(why) => {
                self.note_refusal(&why, slots.len());
                Some(Outcome::Refused)
            }
            None => {
                self.stats.transactions += 1;
                self.worker
                    .submit(Job { id, msgs })
                    .map_err(DeviceError::Backend)?;
                None
            }
        };
        self.pending.push_back(Pending { id, slots, outcome });
        Ok(())
    }

    fn note_refusal(&mut self, why: &Refused, requests: usize) {
        match why {
            Refused::Disallowed(_) => self.stats.disallowed += 1,
            _ => self.stats.malformed += 1,
        }
        // Guest-caused: warn about the first ones, then sparsely.
        self.refusal_warnings += 1;
        let n = self.refusal_warnings;
        let what = match why {
            Refused::Malformed(r) => format!("malformed request ({r:?})"),
            Refused::Unanswerable => "a request without a status byte".into(),
            Refused::TooLong(n) => {
                format!("{n} requests, more than {MAX_TRANSACTION_MSGS} in one transaction")
            }
            Refused::Disallowed(a) => format!("address {a:#04x} is not on this guest's allow-list"),
            Refused::BufferOutsideMemory => "a buffer outside guest memory".into(),
        };
        if n <= 16 || n.is_power_of_two() {
            warn!(
                "{}: transaction of {requests} request(s) refused, not sent to the adapter: {what} ({n} refusals so far)",
                self.name
            );
        } else {
            debug!("{}: transaction refused: {what}", self.name);
        }
    }

    /// Record what the worker did.
    fn collect(&mut self, done: Done) {
        let Some(p) = self.pending.iter_mut().find(|p| p.id == done.id) else {
            // Started before a reset: forgotten.
            debug!("{}: result of a transaction from before a reset", self.name);
            return;
        };
        let ok = match &done.result {
            Ok(()) => done.msgs.len(),
            Err(e) => {
                match &e.kind {
                    FailKind::Nack => {
                        // Normal on an I²C bus (probing, a busy EEPROM).
                        self.stats.nacks += 1;
                        debug!("{}: {e} ({:?})", self.name, done.msgs);
                    }
                    FailKind::Unsupported(_) => {
                        // Its own log budget: a guest scanning past its
                        // allow-list must not silence these.
                        self.stats.unsupported += 1;
                        let n = self.stats.unsupported;
                        if n <= 16 || n.is_power_of_two() {
                            warn!("{}: {e} ({n} so far)", self.name);
                        }
                    }
                    FailKind::Host(_) | FailKind::Chip(_) => {
                        self.stats.adapter_errors += 1;
                        let n = self.stats.adapter_errors;
                        if n <= 16 || n.is_power_of_two() {
                            warn!("{}: {e} ({n} so far)", self.name);
                        }
                    }
                }
                e.done.min(done.msgs.len())
            }
        };
        p.outcome = Some(Outcome::Ran {
            ok,
            msgs: done.msgs,
        });
    }

    /// Answer the transactions at the front that are decided, in order.
    fn complete_ready(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<bool, DeviceError> {
        let mut used = false;
        while self.pending.front().is_some_and(|p| p.outcome.is_some()) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let (ok, msgs) = match p.outcome {
                Some(Outcome::Ran { ok, msgs }) => (ok, msgs),
                _ => (0, Vec::new()),
            };
            // (head, used len) of each request; None from the first
            // failure on, since the rest of the transaction fails with it.
            let mut answers: Vec<(u16, u32)> = Vec::with_capacity(p.slots.len());
            let mut first_failed: Option<usize> = None;
            for (i, slot) in p.slots.iter().enumerate() {
                let Some(status) = slot.status else {
                    first_failed.get_or_insert(i);
                    answers.push((slot.head, 0));
                    continue;
                };
                let mut code = MSG_ERR;
                let mut len = 1;
                if first_failed.is_none() && i < ok {
                    let delivered = !slot.read
                        || msgs
                            .get(i)
                            .and_then(|m| request::write_pieces(mem, &slot.read_into, &m.buf))
                            .is_some();
                    if delivered {
                        code = MSG_OK;
                        if slot.read {
                            self.stats.bytes_read += slot.len as u64;
                            len += slot.len as u32;
                        } else {
                            self.stats.bytes_written += slot.len as u64;
                        }
                    }
                }
                if code == MSG_OK {
                    self.stats.requests_ok += 1;
                } else {
                    first_failed.get_or_insert(i);
                    self.stats.requests_failed += 1;
                }
                // Checked when parsed, and guest memory does not change; if
                // it failed anyway, claim nothing written.
                let len = if mem.write_obj(code, status).is_ok() {
                    len
                } else {
                    0
                };
                answers.push((slot.head, len));
            }
            // The requests before the failure in order, then the rest of
            // the transaction from its last request back to the failed one.
            // Linux's i2c-virtio stops waiting at the first failed request
            // and frees the whole transfer, so every later request must be
            // returned before the failed one is (docs/decisions.md).
            let split = first_failed.unwrap_or(answers.len());
            let (before, after) = answers.split_at(split);
            for &(head, len) in before.iter().chain(after.iter().rev()) {
                queue.add_used(mem, head, len).map_err(|e| corrupt(&e))?;
                used = true;
            }
        }
        Ok(used)
    }

    /// Pop and start transactions until the ring is empty or the in-flight
    /// bound is reached. Returns whether used entries were added.
    fn run_queue(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<bool, DeviceError> {
        let mut used = self.complete_ready(queue, mem)?;
        self.throttled = false;
        'notify: loop {
            queue.disable_notification(mem).map_err(|e| corrupt(&e))?;
            loop {
                if self.pending.len() >= MAX_IN_FLIGHT {
                    // Resumed from handle_event once transactions complete.
                    self.throttled = true;
                    break 'notify;
                }
                let group = self.pop_group(queue, mem)?;
                if group.is_empty() {
                    break;
                }
                self.start(group, mem)?;
                used |= self.complete_ready(queue, mem)?;
            }
            // With EVENT_IDX this publishes avail_event; a buffer added
            // meanwhile is picked up by going round again.
            if !queue.enable_notification(mem).map_err(|e| corrupt(&e))? {
                break;
            }
        }
        Ok(used)
    }
}

/// The allow-list as a set, checked.
fn check_allow(allow: &[u16]) -> Result<BTreeSet<u16>, I2cError> {
    if allow.is_empty() {
        return Err(I2cError::EmptyAllowList);
    }
    if let Some(&bad) = allow.iter().find(|&&a| !adapter::is_device_addr(a)) {
        return Err(I2cError::BadAllowed(bad));
    }
    Ok(allow.iter().copied().collect())
}

fn corrupt(e: &virtio_queue::Error) -> DeviceError {
    DeviceError::QueueCorrupt {
        queue: 0,
        reason: e.to_string(),
    }
}

impl VirtioDevice for I2cDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_I2C_ADAPTER
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_I2C_F_ZERO_LENGTH_REQUEST
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn accept_features(&mut self, features: u64) -> bool {
        // §5.19.6.2: MUST reject a driver that does not negotiate it.
        features & (1 << VIRTIO_I2C_F_ZERO_LENGTH_REQUEST) != 0
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &GuestMemory,
    ) -> Result<QueueOutcome, DeviceError> {
        if index != 0 {
            return Ok(QueueOutcome::default());
        }
        let used_added = self.run_queue(queue, mem)?;
        Ok(QueueOutcome { used_added })
    }

    fn reset(&mut self) {
        // Nothing in flight touches guest memory (the worker has its own
        // buffers), so a transfer still on the bus need not be waited for:
        // its result is dropped when it arrives.
        self.pending.clear();
        self.throttled = false;
    }

    fn queue_reset(&mut self, _index: u16) {
        self.pending.clear();
        self.throttled = false;
    }

    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.worker.event_fd().as_raw_fd()]
    }

    fn handle_event(
        &mut self,
        queues: &mut [Option<Queue>],
        mem: &GuestMemory,
    ) -> Result<Vec<u16>, DeviceError> {
        let done = self.worker.take().map_err(DeviceError::Backend)?;
        for d in done {
            self.collect(d);
        }
        let Some(Some(queue)) = queues.get_mut(0) else {
            self.pending.clear();
            return Ok(Vec::new());
        };
        let mut used = self.complete_ready(queue, mem)?;
        if self.throttled {
            used |= self.run_queue(queue, mem)?;
        }
        Ok(if used { vec![0] } else { Vec::new() })
    }
}
