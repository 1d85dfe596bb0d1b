//! A driver session over one [`DriverBus`]: tokens, request/response
//! correlation with bounded timeouts, the event queue, bus discovery and PING.
//!
//! The session speaks the wire [`Profile`] of its bus. On v2 and v1 several
//! requests may be outstanding and responses correlate by (dev_num, token).
//! RFC2 has no token: the session allows one outstanding request at a time
//! and correlates a response by dev_num, namespace and msg_id, then files it
//! under the token the request was given locally, so callers see the same
//! API in every profile. RFC2 frames the session sends are padded to the bus
//! maximum (fixed-size frames, interop §2.1).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use crate::bus::{BusIoError, DriverBus};
use crate::wire::{
    self, DeviceInfo, Event, Header, MAX_MAX_MSG_SIZE, Namespace, Profile, RawFrame, Request,
    Response, SetVqueue, VqueueInfo, WireError, bus_msg, transport_feature,
};

/// Default bound on the wait for a response (§6.3: the wait must be bounded).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How many unclaimed responses are kept before the oldest are discarded.
const INBOX_LIMIT: usize = 256;
/// How many unwaited requests keep their token reserved.
const OUTSTANDING_LIMIT: usize = 4096;
/// How many queued events are kept before the oldest are discarded.
const EVENT_LIMIT: usize = 4096;

/// Errors of a driver session.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusIoError),
    /// The bus maximum message size is outside the profile's range.
    #[error("bus max_msg_size {max} is outside the {profile} range {min}..=65535")]
    BadMaxMsgSize {
        /// The bus maximum.
        max: usize,
        /// The session's profile.
        profile: Profile,
        /// The profile's minimum.
        min: usize,
    },
    /// The bus says it speaks a different profile than the session was asked for.
    #[error("the bus speaks {bus}, the session was configured for {session}")]
    ProfileMismatch {
        /// Profile of the bus.
        bus: Profile,
        /// Profile requested for the session.
        session: Profile,
    },
    /// RFC2 has no token: a second request while one is outstanding could
    /// not be told apart from the first.
    #[error("{name}: a request ({outstanding}) is still outstanding and {profile} has no token")]
    Outstanding {
        /// The request refused.
        name: &'static str,
        /// The outstanding request.
        outstanding: &'static str,
        /// The profile.
        profile: Profile,
    },
    /// No response within the timeout.
    #[error("{name} to dev_num {dev_num} (token {token}) got no response within {timeout:?}")]
    Timeout {
        /// Request name.
        name: &'static str,
        /// Device number.
        dev_num: u16,
        /// Token used.
        token: u16,
        /// The bound that expired.
        timeout: Duration,
    },
    /// A correlated frame failed validation.
    #[error("invalid {name} response from dev_num {dev_num}: {source} (frame: {frame})")]
    BadResponse {
        /// Request name.
        name: &'static str,
        /// Device number.
        dev_num: u16,
        /// What is wrong.
        source: WireError,
        /// The frame, hex.
        frame: String,
    },
    /// The request cannot be encoded or does not fit the bus maximum.
    #[error("cannot send {name}: {source}")]
    Encode {
        /// Request name.
        name: &'static str,
        /// Why.
        source: WireError,
    },
    /// A valid response carried a value the driver cannot accept.
    #[error("{0}")]
    Protocol(String),
}

/// A response frame received but not yet claimed by a waiter.
#[derive(Debug, Clone)]
pub struct Received {
    /// Arrival sequence number on this session (monotonic).
    pub seq: u64,
    /// Decoded header. On RFC2 `token` is the local token of the outstanding
    /// request the frame was correlated with (dev_num, namespace, msg_id),
    /// or 0 if none matched.
    pub header: Header,
    /// The frame bytes (`msg_size` bytes).
    pub frame: Vec<u8>,
}

/// A submitted request whose response has not been collected yet.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Device number addressed (0 for bus messages).
    pub dev_num: u16,
    /// Token used.
    pub token: u16,
    /// The request.
    pub request: Request,
}

/// Counters of frames the session discarded (diagnostics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Frames dropped as malformed (§6.3: silently discarded).
    pub malformed: u64,
    /// Responses nobody claimed (late answers to timed-out requests).
    pub stray: u64,
    /// Events received.
    pub events: u64,
    /// Requests from the device side answered (bus PING) or dropped.
    pub device_requests: u64,
}

/// One GET_DEVICES window answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicesWindow {
    /// Echoed offset.
    pub offset: u16,
    /// Where to continue (0 = finished).
    pub next_offset: u16,
    /// Slots described.
    pub count: u16,
    /// Present device numbers within the described slots.
    pub present: Vec<u16>,
    /// Raw bitmap as received.
    pub bitmap: Vec<u8>,
}

/// A request sent and not yet collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outstanding {
    dev_num: u16,
    token: u16,
    ns: Namespace,
    msg_id: u8,
}

/// A driver session over one bus.
pub struct Driver {
    bus: Box<dyn DriverBus>,
    profile: Profile,
    max_msg_size: usize,
    timeout: Duration,
    next_token: u16,
    outstanding: Vec<Outstanding>,
    inbox: VecDeque<Received>,
    events: VecDeque<Event>,
    seq: u64,
    stats: DriverStats,
    rx_buf: Vec<u8>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("profile", &self.profile)
            .field("max_msg_size", &self.max_msg_size)
            .field("timeout", &self.timeout)
            .field("next_token", &self.next_token)
            .field("queued_events", &self.events.len())
            .field("unclaimed", &self.inbox.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Driver {
    /// Starts a session in the bus's profile ([`DriverBus::profile`]);
    /// checks the bus's maximum message size (§1).
    pub fn new(bus: Box<dyn DriverBus>) -> Result<Self, DriverError> {
        let profile = bus.profile();
        Self::with_profile(bus, profile)
    }

    /// Starts a session speaking `profile`. Fails if the bus reports another
    /// profile or a maximum message size outside the profile's range.
    pub fn with_profile(bus: Box<dyn DriverBus>, profile: Profile) -> Result<Self, DriverError> {
        if bus.profile() != profile {
            return Err(DriverError::ProfileMismatch {
                bus: bus.profile(),
                session: profile,
            });
        }
        let max = bus.max_msg_size();
        let min = profile.min_max_msg_size();
        if !(min..=MAX_MAX_MSG_SIZE).contains(&max) {
            return Err(DriverError::BadMaxMsgSize { max, profile, min });
        }
        Ok(Driver {
            bus,
            profile,
            max_msg_size: max,
            timeout: DEFAULT_TIMEOUT,
            next_token: 1,
            outstanding: Vec::new(),
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            seq: 0,
            stats: DriverStats::default(),
            // Room for padding a bus may add past msg_size.
            rx_buf: vec![0; MAX_MAX_MSG_SIZE + 1024],
        })
    }

    /// Sets the response timeout (builder style).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the response timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The response timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The bus maximum message size.
    pub fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    /// The wire profile of the session.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Header size of the session's profile (8, or 6 for RFC2).
    pub fn header_size(&self) -> usize {
        self.profile.header_size()
    }

    /// The bus transport feature bits.
    pub fn transport_features(&self) -> u32 {
        self.bus.transport_features()
    }

    /// True if SET_CONFIG generations are checked: the bus selects the
    /// strict config generation profile (§2), or the wire profile is v1,
    /// whose single rule is "the driver sends its last-seen generation and
    /// the device rejects a mismatch" (reference §2, §7.1).
    pub fn strict_config_generation(&self) -> bool {
        self.profile == Profile::V1
            || self.transport_features() & transport_feature::STRICT_CONFIG_GENERATION != 0
    }

    /// The guest memory shared with the device.
    pub fn memory(&self) -> Arc<GuestMemoryMmap<()>> {
        Arc::clone(self.bus.memory())
    }

    /// The bus.
    pub fn bus(&self) -> &dyn DriverBus {
        &*self.bus
    }

    /// The bus, mutably (raw access bypasses the session's bookkeeping).
    pub fn bus_mut(&mut self) -> &mut dyn DriverBus {
        &mut *self.bus
    }

    /// Discard counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Allocates a fresh token: never 0 (events use it, §6.1) and never one
    /// still outstanding.
    pub fn alloc_token(&mut self) -> u16 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.wrapping_add(1);
            if t != 0 && !self.outstanding.iter().any(|o| o.token == t) {
                return t;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn next_token_for_test(&mut self, t: u16) {
        self.next_token = t;
    }

    /// Sends bytes as they are (raw frames for the conformance suite). No
    /// response is expected: on RFC2 one that arrives stays unclaimed.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<(), DriverError> {
        self.bus.send(frame)?;
        Ok(())
    }

    /// Sends a raw frame whose response the caller will collect with
    /// [`Driver::wait_raw`] under `raw`'s token. On RFC2, where the token is
    /// not on the wire, the frame is registered as the outstanding request
    /// so that its response is correlated by dev_num and msg_id.
    pub fn send_raw(&mut self, raw: &RawFrame) -> Result<(), DriverError> {
        let h = raw.header();
        self.check_one_outstanding(wire::message_name(h.namespace(), h.msg_id))?;
        self.bus.send(&raw.build())?;
        if !h.is_response() && !h.is_event() {
            self.remember(Outstanding {
                dev_num: h.dev_num,
                token: h.token,
                ns: h.namespace(),
                msg_id: h.msg_id,
            });
        }
        Ok(())
    }

    fn check_one_outstanding(&self, name: &'static str) -> Result<(), DriverError> {
        match self.outstanding.first() {
            Some(o) if !self.profile.has_token() => Err(DriverError::Outstanding {
                name,
                outstanding: wire::message_name(o.ns, o.msg_id),
                profile: self.profile,
            }),
            _ => Ok(()),
        }
    }

    fn remember(&mut self, o: Outstanding) {
        // Pendings that are never waited for must not exhaust the token space.
        if self.outstanding.len() >= OUTSTANDING_LIMIT {
            self.outstanding.remove(0);
        }
        self.outstanding.push(o);
    }

    /// Pads a frame to the bus maximum on profiles with fixed-size frames.
    fn framed(&self, frame: Vec<u8>) -> Vec<u8> {
        if self.profile.fixed_frames() {
            wire::pad_frame(frame, self.max_msg_size)
        } else {
            frame
        }
    }

    /// Sends `req` with a fresh token without waiting.
    pub fn submit(&mut self, dev_num: u16, req: Request) -> Result<Pending, DriverError> {
        let token = self.alloc_token();
        self.submit_with_token(dev_num, token, req)
    }

    /// Sends `req` with the given token without waiting.
    pub fn submit_with_token(
        &mut self,
        dev_num: u16,
        token: u16,
        req: Request,
    ) -> Result<Pending, DriverError> {
        let name = req.name();
        self.check_one_outstanding(name)?;
        let frame = req
            .encode_for(self.profile, dev_num, token)
            .map_err(|source| DriverError::Encode { name, source })?;
        if frame.len() > self.max_msg_size {
            return Err(DriverError::Encode {
                name,
                source: WireError::AboveMax {
                    msg_size: frame.len(),
                    max: self.max_msg_size,
                },
            });
        }
        let frame = self.framed(frame);
        self.bus.send(&frame)?;
        let dev_num = if req.namespace() == Namespace::Bus {
            0
        } else {
            dev_num
        };
        self.remember(Outstanding {
            dev_num,
            token,
            ns: req.namespace(),
            msg_id: req.msg_id(),
        });
        Ok(Pending {
            dev_num,
            token,
            request: req,
        })
    }

    /// Waits (up to the session timeout) for the response to `p` and validates it.
    pub fn wait(&mut self, p: &Pending) -> Result<Response, DriverError> {
        let t = self.timeout;
        self.wait_timeout(p, t)
    }

    /// Waits up to `timeout` for the response to `p` and validates it.
    pub fn wait_timeout(
        &mut self,
        p: &Pending,
        timeout: Duration,
    ) -> Result<Response, DriverError> {
        let got = self.wait_raw(p.dev_num, p.token, timeout);
        let Some(rx) = got? else {
            return Err(DriverError::Timeout {
                name: p.request.name(),
                dev_num: p.dev_num,
                token: p.token,
                timeout,
            });
        };
        wire::check_response_for(
            self.profile,
            &p.request,
            p.dev_num,
            p.token,
            &rx.frame,
            self.max_msg_size,
        )
        .map_err(|source| DriverError::BadResponse {
            name: p.request.name(),
            dev_num: p.dev_num,
            source,
            frame: wire::hex(&rx.frame),
        })
    }

    /// Sends `req` and waits for its validated response.
    pub fn request(&mut self, dev_num: u16, req: Request) -> Result<Response, DriverError> {
        let p = self.submit(dev_num, req)?;
        self.wait(&p)
    }

    /// Waits up to `timeout` for any response frame correlated with
    /// (`dev_num`, `token`), unvalidated. Events arriving meanwhile are queued.
    /// The request is no longer outstanding afterwards, answered or not.
    pub fn wait_raw(
        &mut self,
        dev_num: u16,
        token: u16,
        timeout: Duration,
    ) -> Result<Option<Received>, DriverError> {
        let got = self.wait_correlated(dev_num, token, timeout);
        self.outstanding
            .retain(|o| (o.dev_num, o.token) != (dev_num, token));
        got
    }

    fn wait_correlated(
        &mut self,
        dev_num: u16,
        token: u16,
        timeout: Duration,
    ) -> Result<Option<Received>, DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .inbox
                .iter()
                .position(|r| r.header.dev_num == dev_num && r.header.token == token)
            {
                return Ok(self.inbox.remove(i));
            }
            if !self.pump(deadline)? && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Receives for the whole `window` and returns every response frame that
    /// arrived (plus unclaimed ones from before); events are queued.
    pub fn drain(&mut self, window: Duration) -> Result<Vec<Received>, DriverError> {
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            self.pump(deadline)?;
        }
        Ok(self.inbox.drain(..).collect())
    }

    /// Takes the responses received but not claimed by any waiter.
    pub fn take_unclaimed(&mut self) -> Vec<Received> {
        self.inbox.drain(..).collect()
    }

    /// Sends an event (token 0, as the Linux PoC does for events, §6.1).
    pub fn send_event(&mut self, ev: &Event) -> Result<(), DriverError> {
        let frame = ev
            .encode_for(self.profile, 0)
            .map_err(|source| DriverError::Encode {
                name: "event",
                source,
            })?;
        let frame = self.framed(frame);
        self.bus.send(&frame)?;
        Ok(())
    }

    /// Pops the oldest queued event, receiving for up to `timeout` if none is queued.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if !self.pump(deadline)? && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Waits up to `timeout` for a queued event matching `pred` and removes it,
    /// leaving other events queued.
    pub fn wait_event_where(
        &mut self,
        mut pred: impl FnMut(&Event) -> bool,
        timeout: Duration,
    ) -> Result<Option<Event>, DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(&mut pred) {
                return Ok(self.events.remove(i));
            }
            if !self.pump(deadline)? && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Takes every queued event.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Removes and returns the queued events matching `pred`, keeping the rest.
    pub fn take_events_where(&mut self, mut pred: impl FnMut(&Event) -> bool) -> Vec<Event> {
        let (hit, keep): (Vec<_>, Vec<_>) = self.events.drain(..).partition(|e| pred(e));
        self.events = keep.into();
        hit
    }

    /// Receives at most one frame, waiting until `deadline`; true if a frame arrived.
    fn pump(&mut self, deadline: Instant) -> Result<bool, DriverError> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let Some(n) = self.bus.recv(&mut self.rx_buf, Some(deadline - now))? else {
            return Ok(false);
        };
        let bytes = &self.rx_buf[..n.min(self.rx_buf.len())];
        let (mut h, payload) = match wire::split_frame_for(self.profile, bytes) {
            Ok(x) => x,
            Err(e) => {
                log::debug!("dropping malformed frame: {e}");
                self.stats.malformed += 1;
                return Ok(true);
            }
        };
        if usize::from(h.msg_size) > self.max_msg_size {
            log::debug!("dropping frame above max_msg_size: {}", h.msg_size);
            self.stats.malformed += 1;
            return Ok(true);
        }
        if h.is_response() {
            if !self.profile.has_token() {
                // RFC2: the one outstanding request of this (dev_num, namespace, msg_id).
                h.token = self
                    .outstanding
                    .iter()
                    .find(|o| {
                        o.dev_num == h.dev_num && o.ns == h.namespace() && o.msg_id == h.msg_id
                    })
                    .map_or(0, |o| o.token);
            }
            self.seq += 1;
            let rx = Received {
                seq: self.seq,
                header: h,
                frame: bytes[..usize::from(h.msg_size)].to_vec(),
            };
            if self.inbox.len() >= INBOX_LIMIT {
                self.inbox.pop_front();
                self.stats.stray += 1;
            }
            self.inbox.push_back(rx);
        } else if h.is_event() {
            match Event::decode(&h, payload) {
                Ok(ev) => {
                    self.stats.events += 1;
                    if self.events.len() >= EVENT_LIMIT {
                        self.events.pop_front();
                    }
                    self.events.push_back(ev);
                }
                Err(e) => {
                    log::debug!("dropping malformed event: {e}");
                    self.stats.malformed += 1;
                }
            }
        } else {
            self.stats.device_requests += 1;
            // The device side may PING us (§4.2 "either side"): echo it.
            if h.namespace() == Namespace::Bus && h.msg_id == bus_msg::PING && payload.len() >= 4 {
                let data = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if let Ok(f) = (Response::Ping { data }).encode_for(self.profile, 0, h.token) {
                    let f = self.framed(f);
                    self.bus.send(&f)?;
                }
            }
        }
        Ok(true)
    }

    fn proto(what: String) -> DriverError {
        DriverError::Protocol(what)
    }

    /// GET_DEVICE_INFO (§3.2).
    pub fn get_device_info(&mut self, dev_num: u16) -> Result<DeviceInfo, DriverError> {
        match self.request(dev_num, Request::GetDeviceInfo)? {
            Response::DeviceInfo(i) => Ok(i),
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// GET_DEVICE_STATUS (§3.7).
    pub fn get_device_status(&mut self, dev_num: u16) -> Result<u32, DriverError> {
        match self.request(dev_num, Request::GetDeviceStatus)? {
            Response::DeviceStatus { status } => Ok(status),
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// SET_DEVICE_STATUS (§3.8); returns the status the device reports.
    pub fn set_device_status(&mut self, dev_num: u16, status: u32) -> Result<u32, DriverError> {
        match self.request(dev_num, Request::SetDeviceStatus { status })? {
            Response::SetDeviceStatus { status } => Ok(status),
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// GET_DEVICE_FEATURES for `num_blocks` blocks from `block_index` (§3.3).
    pub fn get_device_features(
        &mut self,
        dev_num: u16,
        block_index: u32,
        num_blocks: u32,
    ) -> Result<Vec<u32>, DriverError> {
        match self.request(
            dev_num,
            Request::GetDeviceFeatures {
                block_index,
                num_blocks,
            },
        )? {
            Response::DeviceFeatures { features, .. } => Ok(features),
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// SET_DRIVER_FEATURES of `features` starting at `block_index` (§3.4).
    pub fn set_driver_features(
        &mut self,
        dev_num: u16,
        block_index: u32,
        features: &[u32],
    ) -> Result<(), DriverError> {
        self.request(
            dev_num,
            Request::SetDriverFeatures {
                block_index,
                features: features.to_vec(),
            },
        )?;
        Ok(())
    }

    /// GET_CONFIG (§3.5); returns (generation, data).
    pub fn get_config(
        &mut self,
        dev_num: u16,
        offset: u32,
        length: u32,
    ) -> Result<(u32, Vec<u8>), DriverError> {
        match self.request(dev_num, Request::GetConfig { offset, length })? {
            Response::Config {
                generation, data, ..
            } => Ok((generation, data)),
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// SET_CONFIG (§3.6); returns (generation, response length).
    pub fn set_config(
        &mut self,
        dev_num: u16,
        generation: u32,
        offset: u32,
        data: &[u8],
    ) -> Result<(u32, u32), DriverError> {
        match self.request(
            dev_num,
            Request::SetConfig {
                generation,
                offset,
                data: data.to_vec(),
            },
        )? {
            Response::SetConfig {
                generation, length, ..
            } => Ok((generation, length)),
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// GET_VQUEUE (§3.9).
    pub fn get_vqueue(&mut self, dev_num: u16, index: u32) -> Result<VqueueInfo, DriverError> {
        match self.request(dev_num, Request::GetVqueue { index })? {
            Response::Vqueue(q) => Ok(q),
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// SET_VQUEUE (§3.10).
    pub fn set_vqueue(&mut self, dev_num: u16, s: SetVqueue) -> Result<(), DriverError> {
        self.request(dev_num, Request::SetVqueue(s))?;
        Ok(())
    }

    /// RESET_VQUEUE (§3.11).
    pub fn reset_vqueue(&mut self, dev_num: u16, index: u32) -> Result<(), DriverError> {
        self.request(dev_num, Request::ResetVqueue { index })?;
        Ok(())
    }

    /// GET_SHM (§3.12); returns (length, address).
    pub fn get_shm(&mut self, dev_num: u16, shmid: u32) -> Result<(u64, u64), DriverError> {
        match self.request(dev_num, Request::GetShm { shmid })? {
            Response::Shm {
                length, address, ..
            } => Ok((length, address)),
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// Bus PING (§4.2); the echo is checked by the response validation.
    pub fn ping(&mut self, data: u32) -> Result<(), DriverError> {
        self.request(0, Request::Ping { data })?;
        Ok(())
    }

    /// One bus GET_DEVICES window (§4.1).
    pub fn get_devices(&mut self, offset: u16, count: u16) -> Result<DevicesWindow, DriverError> {
        match self.request(0, Request::GetDevices { offset, count })? {
            Response::Devices {
                offset,
                next_offset,
                count,
                bitmap,
            } => {
                let present = (0..count)
                    .filter(|&n| bitmap[usize::from(n / 8)] & (1 << (n % 8)) != 0)
                    .map(|n| offset.wrapping_add(n))
                    .collect();
                Ok(DevicesWindow {
                    offset,
                    next_offset,
                    count,
                    present,
                    bitmap,
                })
            }
            r => Err(Self::proto(format!("unexpected {r:?}"))),
        }
    }

    /// The largest GET_DEVICES window whose response fits the message size
    /// (on v1 a multiple of 8: v1 windows are 8-aligned, §4.1).
    pub fn max_devices_window(&self) -> u16 {
        let slots = (self.max_msg_size - self.header_size() - 6) * 8;
        let cap = if self.profile == Profile::V1 {
            0xFFF8
        } else {
            u16::MAX
        };
        u16::try_from(slots).unwrap_or(u16::MAX).min(cap)
    }

    /// Enumerates device numbers by walking GET_DEVICES windows (§4.1):
    /// continue at `next_offset` until it is 0.
    pub fn discover(&mut self) -> Result<Vec<u16>, DriverError> {
        let mut found = Vec::new();
        let mut offset: u16 = 0;
        loop {
            // Keep the window inside the 16-bit device number space.
            let room = u16::try_from(65536 - u32::from(offset)).unwrap_or(u16::MAX);
            let w = self.get_devices(offset, self.max_devices_window().min(room))?;
            found.extend(w.present);
            if w.next_offset == 0 {
                return Ok(found);
            }
            // check_response makes next_offset > offset for a non-empty
            // window; an empty one pointing back would loop forever.
            if w.next_offset <= offset {
                return Err(Self::proto(format!(
                    "GET_DEVICES({offset}) answered next_offset {} without progress",
                    w.next_offset
                )));
            }
            offset = w.next_offset;
        }
    }
}
