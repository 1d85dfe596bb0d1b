//! A per-guest instance: the devices one guest sees on one bus, and the event
//! loop that serves them.
//!
//! The instance owns its device table outright: nothing is shared with other
//! guests, so a slow or hostile guest can only stall its own thread.
//! Frames are decoded under the bus instance's codec; malformed ones are
//! dropped and counted, never answered (§6.3).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use thiserror::Error;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmsg_proto::{Codec, CodecError, DecodeError, Profile};
use vmsg_transport::bus::{DeviceSet, answer_bus_request, event_device};

use crate::bus::{Bus, BusCounters, BusError};
use crate::device::{DeviceCounters, DeviceHost, DeviceReport, VirtioDevice};
use crate::hotplug::{Change, DeviceControl, HotplugError, HotplugQueue, Request};
use crate::rate_limited;
use crate::ratelog::LogLimiter;

/// Errors of an instance.
#[derive(Debug, Error)]
pub enum InstanceError {
    /// Two devices were given the same device number.
    #[error("device number {0} is used twice")]
    DuplicateDevNum(u16),
    /// The bus advertised a maximum message size the profile cannot use.
    #[error("bus parameters rejected: {0}")]
    Codec(#[from] CodecError),
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The hot-plug queue could not be set up.
    #[error("hot-plug: {0}")]
    Hotplug(#[from] HotplugError),
    /// epoll or eventfd failed.
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn os(op: &'static str) -> impl FnOnce(std::io::Error) -> InstanceError {
    move |source| InstanceError::Os { op, source }
}

fn errno(op: &'static str) -> impl FnOnce(nix::Error) -> InstanceError {
    move |e| InstanceError::Os {
        op,
        source: std::io::Error::from(e),
    }
}

/// Frames the instance dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Frames that failed to decode (size, truncation, unknown id, …).
    pub malformed: u64,
    /// Of those, frames with an unknown message id.
    pub unknown_msg_id: u64,
    /// Transport messages for a device number that does not exist.
    pub unknown_device: u64,
    /// Responses or events a device side never accepts.
    pub unexpected: u64,
    /// Well-formed frames a device dropped (out-of-range config, EVENT_AVAIL
    /// for a queue not live, responses that would not fit).
    pub device_dropped: u64,
    /// Bus messages the device side does not answer.
    pub bus_unhandled: u64,
}

/// A snapshot of an instance's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Frames received (decoded or not).
    pub frames: u64,
    /// Drops by reason.
    pub drops: DropCounters,
    /// Per device number.
    pub devices: BTreeMap<u16, DeviceCounters>,
    /// The current bus connection's counters.
    pub bus: BusCounters,
}

/// A guest as `vmsgctl status` and `vmsgctl stats` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceReport {
    /// The guest's name.
    pub name: String,
    /// Whether a driver is connected (a bus is being served).
    pub connected: bool,
    /// The wire profile.
    pub profile: Profile,
    /// The bus maximum message size of the connection (0 when none).
    pub max_msg_size: usize,
    /// Connections served so far.
    pub connections: u64,
    /// Frames received (decoded or not), all connections.
    pub frames: u64,
    /// Drops by reason, all connections.
    pub drops: DropCounters,
    /// The bus counters of the current (or last) connection.
    pub bus: BusCounters,
    /// Counters of this kind of bus ([`Bus::extra_counters`]).
    pub bus_extra: Vec<(&'static str, u64)>,
    /// Log lines of this guest suppressed by its rate limit.
    pub log_suppressed: u64,
    /// The devices.
    pub devices: Vec<DeviceReport>,
}

/// What an [`Inspector`] and its instance share.
#[derive(Debug)]
struct InspectShared {
    state: Mutex<InspectState>,
    answered: Condvar,
    /// Wakes a serving instance to answer.
    wake: EventFd,
}

#[derive(Debug, Default)]
struct InspectState {
    /// Between connections the instance does not poll: `offline` answers.
    serving: bool,
    offline: Option<InstanceReport>,
    asked: u64,
    answered: u64,
    answer: Option<InstanceReport>,
}

/// Asks a running instance for its [`InstanceReport`] from another thread
/// (the control socket's). While a driver is connected the instance builds
/// the report in its own loop when asked (so it is exact, and nothing runs
/// while nobody asks); between connections the report of the last one is
/// returned directly.
#[derive(Clone, Debug)]
pub struct Inspector(Arc<InspectShared>);

impl Inspector {
    /// The instance's report, or `None` if it did not answer within
    /// `timeout` (it is busy with one bounded slice of work at most, so
    /// this only happens if it is stuck).
    pub fn report(&self, timeout: Duration) -> Option<InstanceReport> {
        let deadline = Instant::now() + timeout;
        let mut st = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.serving {
            return st.offline.clone();
        }
        st.asked += 1;
        let ticket = st.asked;
        // Writing can only fail if the counter would overflow: then the
        // instance has a wake-up pending anyway.
        let _ = self.0.wake.write(1);
        loop {
            if st.answered >= ticket {
                return st.answer.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .0
                .answered
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Signals an instance (or any loop of the daemon) to stop; cloneable and
/// pollable.
#[derive(Clone, Debug)]
pub struct StopSignal(Arc<EventFd>);

impl StopSignal {
    /// A new, untriggered signal.
    pub fn new() -> Result<Self, InstanceError> {
        Ok(Self(Arc::new(
            EventFd::new(EFD_NONBLOCK).map_err(os("eventfd"))?,
        )))
    }

    /// Ask every loop watching this signal to stop. Idempotent.
    pub fn trigger(&self) {
        // Writing can only fail if the counter would overflow, which means
        // it is already triggered.
        let _ = self.0.write(1);
    }

    /// Whether the signal was triggered (does not consume it).
    pub fn is_triggered(&self) -> bool {
        // SAFETY: the eventfd is owned by `self` and outlives this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) };
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// The fd to poll.
    pub fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Why [`GuestInstance::serve`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeEnd {
    /// The peer disconnected; the devices were reset.
    Disconnected,
    /// The stop signal fired.
    Stopped,
}

/// Devices of one guest with their device numbers.
pub type DeviceList = Vec<(u16, Box<dyn VirtioDevice>)>;

/// Instance-wide options.
#[derive(Clone, Copy, Debug)]
pub struct InstanceOptions {
    /// Wire profile of the bus instance.
    pub profile: Profile,
    /// After draining the ring, keep polling it this long before sleeping on
    /// the doorbell (0 = always sleep). Trades a core for latency. At most
    /// [`MAX_POLL_SPIN`] is honoured; the fds (stop, control) are looked at
    /// while spinning.
    pub poll_spin: Duration,
}

impl Default for InstanceOptions {
    fn default() -> Self {
        Self {
            profile: Profile::V2,
            poll_spin: Duration::ZERO,
        }
    }
}

struct Devices<'a>(&'a BTreeMap<u16, DeviceHost>);

impl DeviceSet for Devices<'_> {
    fn contains(&self, dev_num: u16) -> bool {
        self.0.contains_key(&dev_num)
    }
    fn next_at_or_after(&self, from: u32) -> Option<u16> {
        let from = u16::try_from(from).ok()?;
        self.0.range(from..).next().map(|(&k, _)| k)
    }
}

/// The devices of one guest and the logic that serves them over a bus.
#[derive(Debug)]
pub struct GuestInstance {
    name: String,
    options: InstanceOptions,
    devices: BTreeMap<u16, DeviceHost>,
    frames: u64,
    drops: DropCounters,
    bus_counters: BusCounters,
    hotplug: HotplugQueue,
    /// The guest's connects, disconnects and errors are logged through
    /// this (a hostile guest must not flood the log).
    log_limit: LogLimiter,
    inspect: Arc<InspectShared>,
    connections: u64,
    bus_extra: Vec<(&'static str, u64)>,
}

const EV_DOORBELL: u64 = 1;
const EV_CONTROL: u64 = 2;
const EV_STOP: u64 = 3;
const EV_HOTPLUG: u64 = 4;
const EV_INSPECT: u64 = 5;
/// Device fds use `EV_DEVICE_BASE + dev_num`.
const EV_DEVICE_BASE: u64 = 1 << 32;
/// Most frames one drain of the bus handles before the instance looks at its
/// fds again (stop, control, device completions): a driver can refill the
/// ring as fast as it is emptied.
pub const MAX_FRAMES_PER_DRAIN: usize = 64;
/// Longest `poll_spin` honoured: polling is for latency, a longer spin only
/// burns a core (the configuration refuses more).
pub const MAX_POLL_SPIN: Duration = Duration::from_millis(10);
/// How often a spinning instance looks at its other fds (one epoll_wait
/// without timeout each time).
const FD_CHECK_WHILE_SPINNING: Duration = Duration::from_micros(100);

/// Whether any fd other than the doorbell is ready (a zero-timeout look;
/// level-triggered, so the events are reported again by the next wait).
fn other_fds_ready(epoll: &Epoll, events: &mut [EpollEvent]) -> Result<bool, InstanceError> {
    match epoll.wait(events, EpollTimeout::ZERO) {
        Ok(n) => Ok(events[..n].iter().any(|e| e.data() != EV_DOORBELL)),
        Err(nix::Error::EINTR) => Ok(false),
        Err(e) => Err(errno("epoll_wait")(e)),
    }
}

impl GuestInstance {
    /// An instance named `name` hosting `devices` at their device numbers.
    pub fn new(
        name: impl Into<String>,
        options: InstanceOptions,
        devices: DeviceList,
    ) -> Result<Self, InstanceError> {
        let mut table = BTreeMap::new();
        for (dev_num, dev) in devices {
            if table
                .insert(dev_num, DeviceHost::new(dev_num, dev))
                .is_some()
            {
                return Err(InstanceError::DuplicateDevNum(dev_num));
            }
        }
        let instance = Self {
            name: name.into(),
            options,
            devices: table,
            frames: 0,
            drops: DropCounters::default(),
            bus_counters: BusCounters::default(),
            hotplug: HotplugQueue::new()?,
            log_limit: LogLimiter::default(),
            inspect: Arc::new(InspectShared {
                state: Mutex::new(InspectState::default()),
                answered: Condvar::new(),
                wake: EventFd::new(EFD_NONBLOCK).map_err(os("eventfd"))?,
            }),
            connections: 0,
            bus_extra: Vec::new(),
        };
        // Until the first connection, inspectors get the idle report.
        let offline = instance.report(None);
        instance.inspect_state().offline = Some(offline);
        Ok(instance)
    }

    /// A handle other threads use to ask for this instance's report.
    pub fn inspector(&self) -> Inspector {
        Inspector(self.inspect.clone())
    }

    fn inspect_state(&self) -> std::sync::MutexGuard<'_, InspectState> {
        self.inspect.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guest as it is now; `bus` is the connection being served.
    pub fn report(&self, bus: Option<&dyn Bus>) -> InstanceReport {
        InstanceReport {
            name: self.name.clone(),
            connected: bus.is_some(),
            profile: self.options.profile,
            max_msg_size: bus.map_or(0, |b| b.max_msg_size()),
            connections: self.connections,
            frames: self.frames,
            drops: self.drops,
            bus: bus.map_or(self.bus_counters, |b| b.counters()),
            bus_extra: bus.map_or_else(|| self.bus_extra.clone(), |b| b.extra_counters()),
            log_suppressed: self.log_limit.suppressed(),
            devices: self.devices.values().map(DeviceHost::report).collect(),
        }
    }

    /// Answer the inspectors waiting (from the event loop).
    fn answer_inspectors(&mut self, bus: &dyn Bus) {
        // Consume the wake-up; several questions share one answer.
        let _ = self.inspect.wake.read();
        let report = self.report(Some(bus));
        let mut st = self.inspect_state();
        st.answer = Some(report);
        st.answered = st.asked;
        drop(st);
        self.inspect.answered.notify_all();
    }

    /// A handle other threads use to add and remove this guest's devices
    /// while it is served (`crate::hotplug`).
    pub fn device_control(&self) -> DeviceControl {
        self.hotplug.control()
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rate limit of this guest's log lines: whoever serves the guest
    /// logs what the guest causes (connects, refusals) through it.
    pub fn log_limiter(&mut self) -> &mut LogLimiter {
        &mut self.log_limit
    }

    /// Counters so far.
    pub fn stats(&self) -> InstanceStats {
        InstanceStats {
            frames: self.frames,
            drops: self.drops,
            devices: self
                .devices
                .iter()
                .map(|(&n, d)| (n, d.counters()))
                .collect(),
            bus: self.bus_counters,
        }
    }

    /// Serve `bus` until the peer disconnects or `stop` fires. Devices start
    /// from reset and are reset again when this returns.
    pub fn serve(
        &mut self,
        bus: &mut dyn Bus,
        stop: &StopSignal,
    ) -> Result<ServeEnd, InstanceError> {
        let codec = self.attach(bus)?;
        self.connections += 1;
        self.inspect_state().serving = true;
        bus.devices_changed(&self.device_numbers());
        rate_limited!(
            self.log_limit,
            info,
            "{}: bus up ({:?}, max message {} bytes, {} devices)",
            self.name,
            self.options.profile,
            bus.max_msg_size(),
            self.devices.len()
        );
        // A bus may learn the peer is gone while receiving rather than on
        // its control fd (which of the two it sees first can race): either
        // way the peer disconnected.
        let result = match self.event_loop(&codec, bus, stop) {
            Err(InstanceError::Bus(BusError::Disconnected)) => Ok(ServeEnd::Disconnected),
            r => r,
        };
        self.detach();
        self.bus_counters = bus.counters();
        self.bus_extra = bus.extra_counters();
        // Inspectors get the last connection's report from now on, and
        // those waiting get it too.
        let offline = self.report(None);
        let mut st = self.inspect_state();
        st.serving = false;
        st.answer = Some(offline.clone());
        st.offline = Some(offline);
        st.answered = st.asked;
        drop(st);
        self.inspect.answered.notify_all();
        let stats = self.stats();
        rate_limited!(
            self.log_limit,
            info,
            "{}: bus down ({:?}); frames {}, drops {:?}",
            self.name,
            result,
            stats.frames,
            stats.drops
        );
        result
    }

    /// Attach every device to a new bus connection (each starts from reset)
    /// and return the codec frames on it use. [`GuestInstance::serve`] does
    /// this itself; tests that feed frames with `on_frame` call it directly.
    pub fn attach(&mut self, bus: &dyn Bus) -> Result<Codec, InstanceError> {
        let codec = Codec::new(self.options.profile, bus.max_msg_size())?;
        // Changes queued while no bus was connected: the driver has not
        // discovered anything yet, so they need no EVENT_DEVICE.
        for Request { change, reply } in self.hotplug.take() {
            let dev_num = change.dev_num();
            let result = self.apply_change(change, None);
            self.log_change(dev_num, &result);
            let _ = reply.send(result.map(|_| ()));
        }
        let mem = bus.memory();
        for dev in self.devices.values_mut() {
            dev.attach(codec, bus.transport_features(), mem.clone());
        }
        Ok(codec)
    }

    /// Detach every device from the bus: queues stop, models reset.
    pub fn detach(&mut self) {
        for dev in self.devices.values_mut() {
            dev.detach();
        }
    }

    fn event_loop(
        &mut self,
        codec: &Codec,
        bus: &mut dyn Bus,
        stop: &StopSignal,
    ) -> Result<ServeEnd, InstanceError> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(errno("epoll_create"))?;
        let add = |fd: RawFd, data: u64| epoll_add(&epoll, fd, data).map_err(os("epoll_ctl"));
        add(bus.doorbell_fd(), EV_DOORBELL)?;
        if let Some(fd) = bus.control_fd() {
            add(fd, EV_CONTROL)?;
        }
        add(stop.as_raw_fd(), EV_STOP)?;
        add(self.hotplug.wake_fd(), EV_HOTPLUG)?;
        add(self.inspect.wake.as_raw_fd(), EV_INSPECT)?;
        for (&dev_num, dev) in &self.devices {
            for fd in dev.event_fds() {
                add(fd, EV_DEVICE_BASE + u64::from(dev_num))?;
            }
        }

        let mut buf = vec![0u8; codec.max_msg_size()];
        let mut out = vec![0u8; codec.max_msg_size()];
        let mut events = [EpollEvent::empty(); 4];
        loop {
            bus.ack_doorbell()?;
            let mut backlog = self.drain(codec, bus, &mut buf, &mut out)? == MAX_FRAMES_PER_DRAIN;
            let poll_spin = self.options.poll_spin.min(MAX_POLL_SPIN);
            if !poll_spin.is_zero() && !backlog {
                // Spin until the ring stays empty for poll_spin, then sleep.
                // Every FD_CHECK_WHILE_SPINNING, and whenever frames keep the
                // spin going, look at the other fds (stop, a disconnect,
                // device completions): any of them ends the spin.
                bus.set_spinning(true);
                let mut idle_since = Instant::now();
                let mut fds_checked = idle_since;
                let mut spins = 0u32;
                loop {
                    spins = spins.wrapping_add(1);
                    if self.drain(codec, bus, &mut buf, &mut out)? > 0 {
                        idle_since = Instant::now();
                    } else {
                        std::hint::spin_loop();
                    }
                    // Reading the clock costs as much as a ring check.
                    if spins % 64 != 0 {
                        continue;
                    }
                    let now = Instant::now();
                    if now.duration_since(idle_since) >= poll_spin {
                        break;
                    }
                    if now.duration_since(fds_checked) >= FD_CHECK_WHILE_SPINNING {
                        fds_checked = now;
                        if other_fds_ready(&epoll, &mut events)? {
                            break;
                        }
                    }
                }
                bus.set_spinning(false);
                // A frame pushed while the flag was still set was not kicked.
                backlog = self.drain(codec, bus, &mut buf, &mut out)? == MAX_FRAMES_PER_DRAIN;
            }
            self.run_pending(bus)?;
            self.run_deadlines(bus)?;
            // Work left over (frames beyond one drain's bound, queues whose
            // pass spent its budget): look at the fds without sleeping, so
            // stop, the control path and the other devices are seen between
            // bounded slices of a guest's work.
            let busy = backlog || self.devices.values().any(DeviceHost::has_pending_work);
            let timeout = if busy {
                EpollTimeout::ZERO
            } else {
                match self
                    .devices
                    .values()
                    .filter_map(DeviceHost::next_deadline)
                    .min()
                {
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            EpollTimeout::ZERO
                        } else {
                            // Round up: epoll counts whole milliseconds, and
                            // a sub-millisecond remainder rounded down would
                            // spin until the deadline.
                            let ms = left.as_micros().div_ceil(1000);
                            EpollTimeout::try_from(Duration::from_millis(
                                u64::try_from(ms).unwrap_or(u64::MAX),
                            ))
                            .unwrap_or(EpollTimeout::NONE)
                        }
                    }
                    None => EpollTimeout::NONE,
                }
            };
            let n = match epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(errno("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    EV_STOP => return Ok(ServeEnd::Stopped),
                    data if data >= EV_DEVICE_BASE => {
                        let dev_num = (data - EV_DEVICE_BASE) as u16;
                        self.device_event(dev_num, bus)?;
                    }
                    EV_HOTPLUG => self.apply_changes(codec, bus, &epoll)?,
                    EV_INSPECT => self.answer_inspectors(&*bus),
                    EV_CONTROL => match bus.handle_control() {
                        Ok(()) => {}
                        Err(BusError::Disconnected) => return Ok(ServeEnd::Disconnected),
                        Err(e) => return Err(e.into()),
                    },
                    _ => {}
                }
            }
        }
    }

    /// Handle pending frames, at most [`MAX_FRAMES_PER_DRAIN`] of them (a
    /// driver can refill the ring as fast as we empty it). Returns how many
    /// were handled.
    fn drain(
        &mut self,
        codec: &Codec,
        bus: &mut dyn Bus,
        buf: &mut [u8],
        out: &mut [u8],
    ) -> Result<usize, InstanceError> {
        let mut handled = 0;
        while handled < MAX_FRAMES_PER_DRAIN {
            let Some(len) = bus.recv(buf)? else {
                break;
            };
            handled += 1;
            let frame = buf.get(..len).unwrap_or(&[]);
            self.on_frame(codec, frame, bus, out)?;
        }
        Ok(handled)
    }

    /// One more pass of every queue whose last pass left work on its ring.
    fn run_pending(&mut self, bus: &mut dyn Bus) -> Result<(), InstanceError> {
        let devices = &mut self.devices;
        emit_to(bus, |emit| {
            for dev in devices.values_mut() {
                if dev.has_pending_work() {
                    dev.run_pending(emit);
                }
            }
        })
    }

    /// Decode, route and answer one frame.
    pub fn on_frame(
        &mut self,
        codec: &Codec,
        frame: &[u8],
        bus: &mut dyn Bus,
        out: &mut [u8],
    ) -> Result<(), InstanceError> {
        self.frames += 1;
        let msg = match codec.decode(frame) {
            Ok(msg) => msg,
            Err(e) => {
                self.drops.malformed += 1;
                if matches!(e, DecodeError::UnknownMessage { .. }) {
                    self.drops.unknown_msg_id += 1;
                }
                debug!("{}: dropped malformed frame: {e}", self.name);
                return Ok(());
            }
        };
        if msg.body.is_bus() {
            // Bus messages carry dev_num 0 (§1); anything else is malformed.
            if msg.dev_num != 0 {
                self.drops.malformed += 1;
                return Ok(());
            }
            if !msg.body.is_request() {
                self.drops.unexpected += 1;
                return Ok(());
            }
            match answer_bus_request(&Devices(&self.devices), codec, &msg, out) {
                Ok(Some(n)) => send(bus, &out[..n])?,
                Ok(None) => self.drops.bus_unhandled += 1,
                Err(e) => rate_limited!(
                    self.log_limit,
                    warn,
                    "{}: encoding a bus response: {e}",
                    self.name
                ),
            }
            return Ok(());
        }
        let Some(dev) = self.devices.get_mut(&msg.dev_num) else {
            self.drops.unknown_device += 1;
            return Ok(());
        };
        let handled = match dev.handle(&msg, out) {
            Ok(h) => h,
            Err(e) => {
                rate_limited!(
                    self.log_limit,
                    warn,
                    "{}: device {}: {e}",
                    self.name,
                    msg.dev_num
                );
                return Ok(());
            }
        };
        if let Some(reason) = handled.dropped {
            match reason {
                vmsg_transport::device::Dropped::NotARequest => self.drops.unexpected += 1,
                _ => self.drops.device_dropped += 1,
            }
            debug!(
                "{}: device {} dropped a frame: {reason}",
                self.name, msg.dev_num
            );
        }
        if let Some(n) = handled.response {
            send(bus, &out[..n])?;
        }
        emit_to(bus, |emit| dev.apply(handled.effect, emit))
    }

    /// Carry out the queued device changes on a connected bus and announce
    /// each with EVENT_DEVICE (§4.3: `ADDED` once the device can process
    /// transport messages, `REMOVED` once it no longer can).
    fn apply_changes(
        &mut self,
        codec: &Codec,
        bus: &mut dyn Bus,
        epoll: &Epoll,
    ) -> Result<(), InstanceError> {
        // Apply the whole batch even if an announcement fails (the bus is
        // going down then): a change taken from the queue is never lost.
        let mut send_failed = None;
        let mut out = vec![0u8; codec.max_msg_size()];
        for Request { change, reply } in self.hotplug.take() {
            let dev_num = change.dev_num();
            let live = Live {
                codec,
                bus: &*bus,
                epoll,
            };
            let result = self.apply_change(change, Some(&live));
            self.log_change(dev_num, &result);
            if let (Ok(added), None) = (&result, &send_failed) {
                match event_device(codec, dev_num, *added, &mut out) {
                    Ok(n) => {
                        if let Err(e) = send(bus, &out[..n]) {
                            warn!(
                                "{}: device {dev_num}: EVENT_DEVICE not sent ({e}); the driver finds the change when it reconnects",
                                self.name
                            );
                            send_failed = Some(e);
                        }
                    }
                    Err(e) => warn!("{}: encoding EVENT_DEVICE: {e}", self.name),
                }
            }
            // After the announcement: the change is in effect either way.
            let _ = reply.send(result.map(|_| ()));
        }
        bus.devices_changed(&self.device_numbers());
        send_failed.map_or(Ok(()), Err)
    }

    fn device_numbers(&self) -> Vec<u16> {
        self.devices.keys().copied().collect()
    }

    /// Carry out one change; returns whether the device was added (else
    /// removed). On a `live` bus a new device is watched and attached to it
    /// and a removed one unwatched; offline the next `attach` does that.
    fn apply_change(
        &mut self,
        change: Change,
        live: Option<&Live<'_>>,
    ) -> Result<bool, HotplugError> {
        match change {
            Change::Add(n, dev) => {
                if self.devices.contains_key(&n) {
                    return Err(HotplugError::InUse(n));
                }
                let mut host = DeviceHost::new(n, dev);
                if let Some(live) = live {
                    let fds = host.event_fds();
                    for (i, &fd) in fds.iter().enumerate() {
                        let data = EV_DEVICE_BASE + u64::from(n);
                        if let Err(source) = epoll_add(live.epoll, fd, data) {
                            for &done in &fds[..i] {
                                epoll_delete(live.epoll, done);
                            }
                            return Err(HotplugError::Watch { dev_num: n, source });
                        }
                    }
                    host.attach(
                        *live.codec,
                        live.bus.transport_features(),
                        live.bus.memory(),
                    );
                }
                self.devices.insert(n, host);
                Ok(true)
            }
            Change::Remove(n) => {
                let mut host = self
                    .devices
                    .remove(&n)
                    .ok_or(HotplugError::NoSuchDevice(n))?;
                if let Some(live) = live {
                    for fd in host.event_fds() {
                        epoll_delete(live.epoll, fd);
                    }
                }
                // Reset: queues stop, in-flight work is abandoned (the
                // driver is told REMOVED only after this).
                host.detach();
                Ok(false)
            }
        }
    }

    fn log_change(&self, dev_num: u16, result: &Result<bool, HotplugError>) {
        match result {
            Ok(true) => info!("{}: device {dev_num} added", self.name),
            Ok(false) => info!("{}: device {dev_num} removed", self.name),
            Err(e) => warn!("{}: device {dev_num}: change refused: {e}", self.name),
        }
    }

    fn device_event(&mut self, dev_num: u16, bus: &mut dyn Bus) -> Result<(), InstanceError> {
        let Some(dev) = self.devices.get_mut(&dev_num) else {
            return Ok(());
        };
        emit_to(bus, |emit| dev.handle_event(emit))
    }

    fn run_deadlines(&mut self, bus: &mut dyn Bus) -> Result<(), InstanceError> {
        let now = Instant::now();
        let devices = &mut self.devices;
        emit_to(bus, |emit| {
            for dev in devices.values_mut() {
                dev.run_deadline(now, emit);
            }
        })
    }
}

/// The connected bus a hot-plug change is applied on.
struct Live<'a> {
    codec: &'a Codec,
    bus: &'a dyn Bus,
    epoll: &'a Epoll,
}

/// Run `f` with an emitter that sends frames on `bus`; after the first send
/// error the rest are skipped and that error is returned.
fn emit_to(bus: &mut dyn Bus, f: impl FnOnce(&mut dyn FnMut(&[u8]))) -> Result<(), InstanceError> {
    let mut failed = None;
    f(&mut |frame| {
        if failed.is_none() {
            if let Err(e) = bus.send(frame) {
                failed = Some(e);
            }
        }
    });
    failed.map_or(Ok(()), |e| Err(e.into()))
}

fn epoll_add(epoll: &Epoll, fd: RawFd, data: u64) -> Result<(), std::io::Error> {
    // SAFETY: the fds belong to the bus, the stop signal, the hot-plug queue
    // or a device the instance owns, all of which outlive their
    // registration (a removed device is deregistered before it is
    // dropped); the borrow only lives for the epoll_ctl call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    epoll
        .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, data))
        .map_err(std::io::Error::from)
}

fn epoll_delete(epoll: &Epoll, fd: RawFd) {
    // SAFETY: as in `epoll_add`: the fd is still open (its device is being
    // removed, not yet dropped).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    // A failure means it was never registered: nothing to undo.
    let _ = epoll.delete(fd);
}

fn send(bus: &mut dyn Bus, frame: &[u8]) -> Result<(), InstanceError> {
    bus.send(frame).map_err(InstanceError::from)
}

#[cfg(test)]
mod tests;
