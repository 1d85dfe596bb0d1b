//! [`FfaBus`]: one virtio-msg bus instance over FF-A, device role, for one
//! driver endpoint. Every frame the driver sends by direct message comes in
//! through [`FfaBus::handle_direct`], which answers it with exactly one
//! response frame (direct messages are synchronous: the driver waits for
//! the DIRECT_RESP2 whatever happens).
//!
//! * Bus messages: VERSION (the v2 three-step negotiation, or the RFC's one
//!   exchange), GET_DEVICES and PING (answered as every vmsgd bus answers
//!   them, `vmsg_transport::bus`), AREA_SHARE/UNSHARE (memory retrieved and
//!   mapped through the [`Spmc`]), RESET, EVENT_CONFIGURE, EVENT_POLL.
//! * Transport messages go to the device by `dev_num` (a
//!   [`HostedDevice`]); an EVENT_AVAIL is acknowledged with a header-only
//!   bus response, and its queue processed before the answer goes back.
//! * Device → driver frames (EVENT_USED, EVENT_CONFIG) wait in a bounded
//!   queue until the driver polls (v2); the RFC bus has no way to deliver
//!   them (its driver polls the used rings), so they are counted and dropped.
//! * Hostile input: a frame that does not decode, a request of the wrong
//!   size, an unknown area, a request before negotiation — answered with
//!   the bus's ERROR (v2) or a zero frame (RFC), and counted; nothing here
//!   panics on driver input.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use vmsg_device_core::host::{CoreDevice, HostedDevice};
use vmsg_proto::{Body, Codec, Message};
use vmsg_transport::bus::{DeviceSet, answer_bus_request};

use crate::fifo::Fifo;
use crate::msg::{self, EventMethod, FfaProfile, Payload, Request, feature, id, result, v2};
use crate::spmc::Spmc;
use crate::window::{Addressing, BusMemory, Window};

/// Events held for the driver at most; more are dropped and counted.
pub const EVENT_QUEUE_MAX: usize = 64;
/// Pages one area may have (1 GiB): what a driver can make us map.
pub const MAX_AREA_PAGES: u32 = 1 << 18;
/// Areas one driver may share at once.
pub const MAX_AREAS: u16 = 255;
/// The FF-A version the partition implements.
pub const FFA_VERSION: u32 = 0x0001_0002;
/// Pages a FIFO region may have.
pub const MAX_FIFO_PAGES: u16 = 64;
/// The partition's doorbell id it gives a FIFO driver.
pub const DEVICE_NOTIF_ID: u16 = 0;
/// Size of the DIRECT_REQ2 / RESP2 payload (x4–x17).
pub const DIRECT_PAYLOAD: usize = 112;

// The two buses' codecs; checked when compiling.
const V2_CODEC: Codec = match Codec::new(vmsg_proto::Profile::V2, 96) {
    Ok(c) => c,
    Err(_) => panic!("96 bytes is a valid v2 maximum"),
};
const RFC_CODEC: Codec = match Codec::new(vmsg_proto::Profile::Rfc2, 44) {
    Ok(c) => c,
    Err(_) => panic!("44 bytes is the RFC2 frame size"),
};

/// What the bus counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FfaCounters {
    /// Frames received.
    pub frames: u64,
    /// Frames that did not decode.
    pub malformed: u64,
    /// Bus requests refused (wrong size, unknown, out of order, bad area).
    pub refused: u64,
    /// Frames from an endpoint other than the bus's driver.
    pub foreign: u64,
    /// Transport frames for a device number that does not exist.
    pub unknown_device: u64,
    /// Events produced for the driver.
    pub events: u64,
    /// Events dropped (queue full, or no way to deliver them).
    pub events_dropped: u64,
    /// EVENT_POLLs answered.
    pub polls: u64,
    /// Areas shared / unshared.
    pub areas_shared: u64,
    /// Areas given back.
    pub areas_unshared: u64,
    /// SPMC calls that failed.
    pub spmc_errors: u64,
    /// RESETs.
    pub resets: u64,
    /// Frames taken from the FIFO.
    pub fifo_frames: u64,
    /// FIFOs given up because the driver broke their indices.
    pub fifo_broken: u64,
}

/// What handling one frame produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    /// A response of this many bytes is in the output buffer.
    Response(usize),
    /// An event was taken (no response is due; direct messaging acks it).
    Event,
    /// The frame was refused or dropped (direct messaging answers ERROR).
    Refused,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Negotiation {
    None,
    Done,
}

/// The areas the driver shared: id → (handle, window).
#[derive(Debug, Default)]
struct Areas {
    handles: BTreeMap<u16, u64>,
    windows: BTreeMap<u16, Window>,
}

/// One FF-A bus instance, device role.
pub struct FfaBus<S: Spmc> {
    profile: FfaProfile,
    /// Learn the profile from the driver's first VERSION.
    detect: bool,
    codec: Codec,
    spmc: S,
    devices: Vec<HostedDevice>,
    /// The driver endpoint this instance serves, once it spoke.
    peer: Option<u16>,
    negotiation: Negotiation,
    event_method: Option<EventMethod>,
    /// The driver's notification id (EVENT_CONFIGURE method 1).
    notif_id: u16,
    areas: Areas,
    pool: Option<(u64, Window)>,
    events: VecDeque<Vec<u8>>,
    fifo: Option<Fifo>,
    /// Frames for ring B that found it full (bounded like events).
    fifo_out: VecDeque<Vec<u8>>,
    counters: FfaCounters,
}

impl<S: Spmc> core::fmt::Debug for FfaBus<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FfaBus")
            .field("profile", &self.profile)
            .field("peer", &self.peer)
            .field("negotiation", &self.negotiation)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

struct Present<'a>(&'a [HostedDevice]);

impl DeviceSet for Present<'_> {
    fn contains(&self, dev_num: u16) -> bool {
        self.0.iter().any(|d| d.dev_num() == dev_num)
    }
    fn next_at_or_after(&self, from: u32) -> Option<u16> {
        self.0
            .iter()
            .map(HostedDevice::dev_num)
            .filter(|&d| u32::from(d) >= from)
            .min()
    }
}

impl<S: Spmc> FfaBus<S> {
    /// A bus of `profile` hosting `devices` (device numbers must be unique;
    /// the RFC driver only scans numbers 0–7).
    pub fn new(profile: FfaProfile, spmc: S, devices: Vec<(u16, Box<dyn CoreDevice>)>) -> Self {
        let codec = match profile {
            FfaProfile::V2 => V2_CODEC,
            FfaProfile::Rfc => RFC_CODEC,
        };
        let devices = devices
            .into_iter()
            .map(|(n, d)| HostedDevice::new(n, d, codec, 0))
            .collect();
        Self {
            profile,
            detect: false,
            codec,
            spmc,
            devices,
            peer: None,
            negotiation: Negotiation::None,
            event_method: None,
            notif_id: 0,
            areas: Areas::default(),
            pool: None,
            events: VecDeque::new(),
            fifo: None,
            fifo_out: VecDeque::new(),
            counters: FfaCounters::default(),
        }
    }

    /// Take the profile from the driver's first VERSION instead: an RFC
    /// VERSION (RFC2 header, msg_size 24) switches the bus to
    /// [`FfaProfile::Rfc`], a v2 one (msg_size 20) to [`FfaProfile::V2`].
    /// v2 is recognised by its msg_size, where an RFC VERSION carries
    /// driver_version 1, so a v2 token of 24 is no RFC frame (docs/ffa.md).
    pub fn detecting(mut self) -> Self {
        self.detect = true;
        self
    }

    fn detect_profile(&mut self, frame: &[u8]) {
        if !self.detect || self.negotiated() || frame.len() < 8 || frame[..2] != [0x02, id::VERSION]
        {
            return;
        }
        // v2 first: its msg_size (20) sits where an RFC VERSION has the low
        // half of driver_version (1); its token may well be 24.
        let profile = if u16::from_le_bytes([frame[6], frame[7]]) == 20 {
            FfaProfile::V2
        } else if u16::from_le_bytes([frame[4], frame[5]]) == 24 {
            FfaProfile::Rfc
        } else {
            return;
        };
        if profile != self.profile {
            self.profile = profile;
            self.codec = match profile {
                FfaProfile::V2 => V2_CODEC,
                FfaProfile::Rfc => RFC_CODEC,
            };
            for d in &mut self.devices {
                d.rebind(self.codec, 0);
            }
        }
    }

    /// Serve the RFC driver's addresses as physical addresses inside a DMA
    /// pool the partition mapped itself (the RFC bus shares no memory).
    pub fn with_pool(mut self, base: u64, window: Window) -> Self {
        self.pool = Some((base, window));
        self
    }

    /// The bus profile.
    pub fn profile(&self) -> FfaProfile {
        self.profile
    }

    /// Counters so far.
    pub fn counters(&self) -> FfaCounters {
        self.counters
    }

    /// The hosted devices.
    pub fn devices(&self) -> &[HostedDevice] {
        &self.devices
    }

    /// The SPMC interface.
    pub fn spmc(&self) -> &S {
        &self.spmc
    }

    /// Whether VERSION completed.
    pub fn negotiated(&self) -> bool {
        self.negotiation == Negotiation::Done
    }

    /// Events waiting for the driver.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Ids of the shared areas.
    pub fn areas(&self) -> Vec<u16> {
        self.areas.windows.keys().copied().collect()
    }

    /// Handle one frame `sender` sent by direct message (`frame` = the
    /// payload registers). The response frame is written to `out` (at
    /// least [`DIRECT_PAYLOAD`] bytes, zeroed beyond the frame); returns its
    /// length.
    pub fn handle_direct(&mut self, sender: u16, frame: &[u8], out: &mut [u8]) -> usize {
        out.iter_mut().for_each(|b| *b = 0);
        let n = match self.handle_frame(sender, frame, out) {
            Ok(Reply::Response(n)) => n,
            Ok(Reply::Event) => match self
                .codec
                .decode(&frame[..frame.len().min(self.codec.max_msg_size())])
            {
                Ok(msg) => self.ack(&msg, out),
                Err(_) => 0,
            },
            Ok(Reply::Refused) => match self
                .codec
                .decode(&frame[..frame.len().min(self.codec.max_msg_size())])
            {
                Ok(msg) => self.error(&msg, out),
                Err(_) => self.error_raw(frame, out),
            },
            Err(()) => self.error_raw(frame, out),
        };
        self.run_pending();
        self.flush_fifo();
        n
    }

    /// One frame from `sender`, however it arrived; `Err` for a frame that
    /// does not decode (or comes from the wrong endpoint).
    fn handle_frame(&mut self, sender: u16, frame: &[u8], out: &mut [u8]) -> Result<Reply, ()> {
        self.counters.frames += 1;
        if let Some(peer) = self.peer {
            if peer != sender {
                self.counters.foreign += 1;
                return Err(());
            }
        }
        self.detect_profile(frame);
        let frame = &frame[..frame.len().min(self.codec.max_msg_size())];
        let Ok(msg) = self.codec.decode(frame) else {
            self.counters.malformed += 1;
            return Err(());
        };
        out.iter_mut().for_each(|b| *b = 0);
        Ok(if msg.body.is_bus() {
            self.bus_request(sender, &msg, out)
        } else {
            self.transport(&msg, out)
        })
    }

    /// The driver rang the FIFO's doorbell: take every frame of ring A
    /// (at most one ring's worth), answer each into ring B, ring the
    /// driver's doorbell if anything was queued. Returns the frames taken.
    pub fn fifo_doorbell(&mut self, sender: u16) -> usize {
        let mut taken = 0;
        let depth = self.fifo.as_ref().map_or(0, Fifo::depth);
        let mut frame = [0u8; DIRECT_PAYLOAD];
        let mut out = [0u8; DIRECT_PAYLOAD];
        for _ in 0..depth {
            let Some(fifo) = self.fifo.as_ref() else {
                break;
            };
            frame.fill(0);
            let n = match fifo.pop(&mut frame) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(_) => {
                    self.break_fifo();
                    break;
                }
            };
            taken += 1;
            self.counters.fifo_frames += 1;
            // Over the FIFO there is no ack and no ERROR: what gets no
            // response is dropped (§6.3), the driver's timeout tells it.
            if let Ok(Reply::Response(len)) = self.handle_frame(sender, &frame[..n], &mut out) {
                self.fifo_out.push_back(out[..len].to_vec());
            }
            self.run_pending();
        }
        self.flush_fifo();
        taken
    }

    /// Move queued frames to ring B while it has room; ring the driver.
    fn flush_fifo(&mut self) {
        let mut pushed = false;
        while let (Some(fifo), Some(front)) = (self.fifo.as_ref(), self.fifo_out.front()) {
            match fifo.push(front) {
                Ok(true) => {
                    self.fifo_out.pop_front();
                    pushed = true;
                }
                Ok(false) => break,
                Err(_) => {
                    self.break_fifo();
                    break;
                }
            }
        }
        if pushed {
            let id = self.fifo.as_ref().map_or(0, |f| f.driver_notif_id);
            if let Some(peer) = self.peer {
                if self.spmc.notify(peer, id).is_err() {
                    self.counters.spmc_errors += 1;
                }
            }
        }
    }

    /// The driver broke the FIFO's indices: stop serving it.
    fn break_fifo(&mut self) {
        self.counters.fifo_broken += 1;
        self.release_fifo();
    }

    fn release_fifo(&mut self) {
        self.fifo_out.clear();
        if let Some(f) = self.fifo.take() {
            let (handle, window) = f.release();
            if self.spmc.relinquish(handle, window).is_err() {
                self.counters.spmc_errors += 1;
            }
        }
    }

    fn transport(&mut self, msg: &Message<'_>, out: &mut [u8]) -> Reply {
        if self.profile == FfaProfile::V2 && !self.negotiated() {
            // §8.4: until negotiation completes, only VERSION and RESET.
            self.counters.refused += 1;
            return Reply::Refused;
        }
        let Some(i) = self.devices.iter().position(|d| d.dev_num() == msg.dev_num) else {
            self.counters.unknown_device += 1;
            return Reply::Refused;
        };
        let is_event = matches!(msg.body, Body::EventAvail { .. });
        let handled = match self.devices[i].handle(msg, out) {
            Ok(h) => h,
            Err(_) => return Reply::Refused,
        };
        let mut emitted: Vec<Vec<u8>> = Vec::new();
        {
            let mem = BusMemory {
                addressing: self.addressing(),
                areas: &self.areas.windows,
                pool: self.pool.as_ref().map(|(_, w)| w),
            };
            self.devices[i].apply(handled.effect, &mem, &mut |f| emitted.push(f.to_vec()));
        }
        for e in emitted {
            self.queue_event(e);
        }
        match handled.response {
            Some(n) => Reply::Response(n),
            None if is_event => Reply::Event,
            None => Reply::Refused,
        }
    }

    fn addressing(&self) -> Addressing {
        match (self.profile, self.pool) {
            (FfaProfile::Rfc, Some((base, _))) => Addressing::Pool { base },
            _ => Addressing::Areas {
                shift: self.profile.area_shift(),
            },
        }
    }

    /// Continue queues a pass left with work.
    fn run_pending(&mut self) {
        let mut emitted: Vec<Vec<u8>> = Vec::new();
        let mem = BusMemory {
            addressing: self.addressing(),
            areas: &self.areas.windows,
            pool: self.pool.as_ref().map(|(_, w)| w),
        };
        for d in self.devices.iter_mut().filter(|d| d.has_pending()) {
            d.run_pending(&mem, &mut |f| emitted.push(f.to_vec()));
        }
        for e in emitted {
            self.queue_event(e);
        }
    }

    fn queue_event(&mut self, frame: Vec<u8>) {
        self.counters.events += 1;
        if self.event_method == Some(EventMethod::Fifo) && self.fifo.is_some() {
            if self.fifo_out.len() >= EVENT_QUEUE_MAX {
                self.counters.events_dropped += 1;
            } else {
                self.fifo_out.push_back(frame);
            }
            return;
        }
        let deliverable = self.profile == FfaProfile::V2
            && matches!(
                self.event_method,
                Some(EventMethod::Poll | EventMethod::Notification) | None
            );
        if !deliverable || self.events.len() >= EVENT_QUEUE_MAX {
            self.counters.events_dropped += 1;
            return;
        }
        self.events.push_back(frame);
        if let (Some(EventMethod::Notification), Some(peer)) = (self.event_method, self.peer) {
            // A failed doorbell is not fatal: the driver finds the event at
            // its next poll.
            if self.spmc.notify(peer, self.notif_id).is_err() {
                self.counters.spmc_errors += 1;
            }
        }
    }

    fn bus_request(&mut self, sender: u16, msg: &Message<'_>, out: &mut [u8]) -> Reply {
        let Body::BusSpecific {
            msg_id,
            response: false,
            payload,
        } = msg.body
        else {
            // GET_DEVICES, PING: the generic bus answers (after VERSION on v2).
            if self.profile == FfaProfile::V2 && !self.negotiated() {
                self.counters.refused += 1;
                return Reply::Refused;
            }
            return match answer_bus_request(&Present(&self.devices), &self.codec, msg, out) {
                Ok(Some(n)) => Reply::Response(n),
                _ => {
                    self.counters.refused += 1;
                    Reply::Refused
                }
            };
        };
        let req = match msg::parse(self.profile, msg_id, payload) {
            Ok(r) => r,
            Err(_) => {
                self.counters.refused += 1;
                return Reply::Refused;
            }
        };
        let gated = !matches!(
            req,
            Request::Version { .. } | Request::VersionRfc { .. } | Request::Reset
        );
        if self.profile == FfaProfile::V2 && gated && !self.negotiated() {
            self.counters.refused += 1;
            return Reply::Refused;
        }
        let reply = match req {
            Request::VersionRfc { .. } => {
                // One exchange: the driver checks the echo of 1/1/0 and that
                // direct reception is among our features.
                self.peer = Some(sender);
                self.negotiation = Negotiation::Done;
                msg::version_rfc_response(feature::DIRECT_RX | feature::DIRECT_TX, MAX_AREAS)
            }
            Request::Version {
                bus_version,
                transport_revision,
                ffa_version,
            } => self.version(sender, bus_version, transport_revision, ffa_version),
            Request::AreaShare {
                area_id,
                mem_handle,
                mem_tag,
                page_count,
                attrs,
            } => msg::area_response(
                area_id,
                self.area_share(sender, area_id, mem_handle, mem_tag, page_count, attrs),
            ),
            Request::AreaUnshare { area_id } => {
                msg::area_response(area_id, self.area_unshare(area_id))
            }
            Request::Reset => {
                self.reset();
                msg::result_response(result::OK)
            }
            Request::EventPoll => return Reply::Response(self.event_poll(msg, out)),
            Request::EventConfigure { method, notif_id } => {
                msg::result_response(self.event_configure(method, notif_id))
            }
            Request::FifoConfigure {
                mem_handle,
                page_count,
                driver_notif_id,
            } => self.fifo_configure(sender, mem_handle, page_count, driver_notif_id),
        };
        Reply::Response(self.respond(msg, msg_id, &reply, out))
    }

    /// The v2 VERSION negotiation (reference §8.4).
    fn version(
        &mut self,
        sender: u16,
        bus_version: u32,
        revision: u32,
        ffa_version: u32,
    ) -> Payload {
        let ours = (v2::BUS_VERSION, v2::TRANSPORT_REVISION);
        let asked = (bus_version, revision);
        let features = self.bus_features();
        let offer = || msg::version_response(ours.0, ours.1, FFA_VERSION, features, MAX_AREAS);
        if ffa_version < v2::MIN_FFA_VERSION {
            self.counters.refused += 1;
            return msg::version_response(0, 0, FFA_VERSION, 0, 0);
        }
        if self.negotiated() {
            // An exact echo again is harmless; anything else after the
            // commit is out of order.
            if asked == ours {
                return offer();
            }
            self.counters.refused += 1;
            return msg::version_response(0, 0, FFA_VERSION, 0, 0);
        }
        if asked == (0, 0) || asked > ours {
            // The probe, or a version above ours: our pair, no commit.
            offer()
        } else if asked == ours {
            self.peer = Some(sender);
            self.negotiation = Negotiation::Done;
            offer()
        } else {
            // Below what we support: not supported.
            msg::version_response(0, 0, FFA_VERSION, 0, 0)
        }
    }

    /// Direct messages both ways; the FIFO only where notifications exist
    /// (its doorbells).
    fn bus_features(&self) -> u32 {
        let mut f = feature::DIRECT_RX | feature::DIRECT_TX;
        if self.spmc.has_notifications() {
            f |= feature::FIFO;
        }
        f
    }

    fn fifo_configure(
        &mut self,
        sender: u16,
        handle: u64,
        pages: u16,
        driver_notif_id: u16,
    ) -> Payload {
        let refused = self.fifo.is_some()
            || !self.spmc.has_notifications()
            || pages == 0
            || pages > MAX_FIFO_PAGES
            || self.areas.handles.values().any(|&h| h == handle);
        if refused {
            self.counters.refused += 1;
            return msg::fifo_response(result::ERROR, 0);
        }
        // Shared read/write (type share, W): the device writes ring B.
        let window = match self
            .spmc
            .retrieve(sender, handle, 0, 1 << 2, u32::from(pages))
        {
            Ok(w) => w,
            Err(_) => {
                self.counters.spmc_errors += 1;
                return msg::fifo_response(result::ERROR, 0);
            }
        };
        match Fifo::new(window, handle, driver_notif_id) {
            Ok(f) => {
                self.fifo = Some(f);
                msg::fifo_response(result::OK, DEVICE_NOTIF_ID)
            }
            Err(_) => {
                self.counters.refused += 1;
                if self.spmc.relinquish(handle, window).is_err() {
                    self.counters.spmc_errors += 1;
                }
                msg::fifo_response(result::ERROR, 0)
            }
        }
    }

    fn area_share(
        &mut self,
        sender: u16,
        area_id: u16,
        handle: u64,
        tag: u64,
        pages: u32,
        attrs: u32,
    ) -> u16 {
        // The RFC bus addresses a pre-mapped pool; its areas are unused.
        let bad = (self.profile == FfaProfile::Rfc && self.pool.is_some())
            || area_id >= MAX_AREAS
            || pages == 0
            || pages > MAX_AREA_PAGES
            || self.areas.windows.contains_key(&area_id)
            || self.areas.handles.values().any(|&h| h == handle)
            // type share (0) or lend (1), writable (bit 2): the device
            // writes into every area it uses.
            || attrs & 0b11 > 1
            || attrs & (1 << 2) == 0;
        if bad {
            self.counters.refused += 1;
            return result::ERROR;
        }
        match self.spmc.retrieve(sender, handle, tag, attrs, pages) {
            Ok(window) if window.len() as u64 == u64::from(pages) * 4096 => {
                self.areas.handles.insert(area_id, handle);
                self.areas.windows.insert(area_id, window);
                self.counters.areas_shared += 1;
                result::OK
            }
            Ok(window) => {
                // Not what was announced: give it back at once.
                let _ = self.spmc.relinquish(handle, window);
                self.counters.spmc_errors += 1;
                result::ERROR
            }
            Err(_) => {
                self.counters.spmc_errors += 1;
                result::ERROR
            }
        }
    }

    fn area_unshare(&mut self, area_id: u16) -> u16 {
        let Some(&handle) = self.areas.handles.get(&area_id) else {
            self.counters.refused += 1;
            return result::ERROR;
        };
        if self.area_in_use(area_id) {
            return result::BUSY;
        }
        self.release_area(area_id, handle)
    }

    /// Whether a live queue's rings lie in the area (the device would keep
    /// using it).
    fn area_in_use(&self, area_id: u16) -> bool {
        let shift = self.profile.area_shift();
        self.devices.iter().any(|d| {
            d.queue_addresses()
                .any(|a| u16::try_from(a >> shift).is_ok_and(|id| id == area_id))
        })
    }

    fn release_area(&mut self, area_id: u16, handle: u64) -> u16 {
        let Some(window) = self.areas.windows.remove(&area_id) else {
            return result::ERROR;
        };
        self.areas.handles.remove(&area_id);
        self.counters.areas_unshared += 1;
        match self.spmc.relinquish(handle, window) {
            Ok(()) => result::OK,
            Err(_) => {
                self.counters.spmc_errors += 1;
                result::ERROR
            }
        }
    }

    fn event_configure(&mut self, method: Option<EventMethod>, notif_id: u16) -> u16 {
        // §8.4: exactly one EVENT_CONFIGURE; poll always works, a
        // notification only where the SPMC has them.
        let ok = match method {
            Some(EventMethod::Poll) => true,
            Some(EventMethod::Notification) => self.spmc.has_notifications(),
            Some(EventMethod::Fifo) => self.fifo.is_some(),
            _ => false,
        };
        if self.event_method.is_some() || !ok {
            self.counters.refused += 1;
            return result::ERROR;
        }
        self.event_method = method;
        self.notif_id = notif_id;
        result::OK
    }

    fn event_poll(&mut self, msg: &Message<'_>, out: &mut [u8]) -> usize {
        self.counters.polls += 1;
        if let Some(e) = self.events.pop_front() {
            out[..e.len()].copy_from_slice(&e);
            return e.len();
        }
        // Nothing pending: the header-only EVENT_POLL response.
        self.respond(msg, id::EVENT_POLL, &Payload::default(), out)
    }

    /// RESET (reference §8.4): every device back to reset, every area given
    /// back, events dropped, negotiation and event configuration forgotten.
    pub fn reset(&mut self) {
        self.counters.resets += 1;
        for d in &mut self.devices {
            d.reset();
        }
        let ids: Vec<(u16, u64)> = self.areas.handles.iter().map(|(&a, &h)| (a, h)).collect();
        for (area, handle) in ids {
            self.release_area(area, handle);
        }
        self.events.clear();
        self.release_fifo();
        self.event_method = None;
        if self.profile == FfaProfile::V2 {
            self.negotiation = Negotiation::None;
            self.peer = None;
        }
    }

    /// A bus response to `msg` with `payload`.
    fn respond(&self, msg: &Message<'_>, msg_id: u8, payload: &Payload, out: &mut [u8]) -> usize {
        self.codec
            .encode(
                &Message {
                    dev_num: 0,
                    token: msg.token,
                    body: Body::BusSpecific {
                        msg_id,
                        response: true,
                        payload: payload.as_slice(),
                    },
                },
                out,
            )
            .unwrap_or(0)
    }

    /// The answer to an event over direct messaging: a header-only bus
    /// response with the event's token (reference §8.3). The RFC driver
    /// ignores the content.
    fn ack(&self, msg: &Message<'_>, out: &mut [u8]) -> usize {
        match self.profile {
            FfaProfile::V2 => {
                let h = [0x03, 0, 0, 0];
                out[..4].copy_from_slice(&h);
                out[4..6].copy_from_slice(&msg.token.to_le_bytes());
                out[6..8].copy_from_slice(&8u16.to_le_bytes());
                8
            }
            FfaProfile::Rfc => {
                out[0] = 0x01;
                out[1] = msg.body.msg_id();
                out[2..4].copy_from_slice(&msg.dev_num.to_le_bytes());
                out[4..6].copy_from_slice(&6u16.to_le_bytes());
                self.codec.max_msg_size()
            }
        }
    }

    /// ERROR for a request that got no answer (v2): a bus response carrying
    /// the failed request's dev_num and token (reference §8.4). The RFC bus
    /// has no ERROR: a zero frame.
    fn error(&self, msg: &Message<'_>, out: &mut [u8]) -> usize {
        if self.profile == FfaProfile::Rfc {
            return 0;
        }
        let p = msg::error_response(msg.body.msg_id());
        let n = self.respond(msg, id::ERROR, &p, out);
        if n >= 4 {
            out[2..4].copy_from_slice(&msg.dev_num.to_le_bytes());
        }
        n
    }

    /// ERROR for a frame that did not decode: built from its raw header
    /// where there is one.
    fn error_raw(&self, frame: &[u8], out: &mut [u8]) -> usize {
        if self.profile == FfaProfile::Rfc || frame.len() < 8 {
            return 0;
        }
        let token = u16::from_le_bytes([frame[4], frame[5]]);
        out[0] = 0x03;
        out[1] = id::ERROR;
        out[2] = frame[2];
        out[3] = frame[3];
        out[4..6].copy_from_slice(&token.to_le_bytes());
        out[6..8].copy_from_slice(&10u16.to_le_bytes());
        out[8..10].copy_from_slice(&u16::from(frame[1]).to_le_bytes());
        10
    }
}
