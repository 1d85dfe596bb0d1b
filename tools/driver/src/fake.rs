//! Test-only in-process device: a small spec-v2 virtio-rng written from the
//! reference, used to exercise this crate's code paths (timeouts, matching,
//! init, virtqueues, the conformance suite). It is NOT the device under test;
//! `Quirks` break single rules so suite cases can be seen to fail.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::{BusIoError, DriverBus};
use crate::fake_blk::FakeBlk;
use crate::fake_i2c::FakeI2c;
use crate::virtq::{VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, need_event};
use crate::wire::{
    self, DeviceInfo, Event, Header, Namespace, Profile, Request, Response, VqueueInfo, feature,
    msg, status, transport_feature, vq_flags,
};

/// Single-rule deviations for negative tests of the suite.
#[derive(Debug, Clone, Default)]
pub(crate) struct Quirks {
    pub wrong_token: bool,
    pub answer_responses: bool,
    pub keep_queues_on_reset: bool,
    pub accept_unoffered: bool,
    pub event_config_on_status: bool,
    pub answer_config_out_of_range: bool,
    pub no_used_event: bool,
    pub sentinel_garbage: bool,
    pub process_before_driver_ok: bool,
    /// Reset reports non-zero for this many GET_DEVICE_STATUS polls
    /// (conformant on v2, not on v1/RFC2).
    pub reset_pending_polls: u32,
    /// v1/RFC2: apply v2 SET_VQUEUE semantics (flags 0 = stay disabled).
    pub v2_set_vqueue: bool,
    /// v1: accept SET_CONFIG whatever its generation.
    pub ignore_generation: bool,
    /// v1: answer GET_DEVICES with v2-style trimmed, unaligned windows.
    pub unaligned_devices: bool,
}

#[derive(Debug, Clone, Default)]
struct Queue {
    max: u32,
    size: u32,
    desc: u64,
    driver: u64,
    device: u64,
    enabled: bool,
    last_avail: u16,
    used_idx: u16,
}

#[derive(Debug)]
pub(crate) struct FakeDevice {
    pub dev_num: u16,
    /// Wire profile (v1/RFC2: SET_VQUEUE enables, v1: generations checked).
    pub profile: Profile,
    pub info: DeviceInfo,
    pub offered: Vec<u32>,
    driver_features: BTreeMap<u32, u32>,
    status: u32,
    reset_polls_left: u32,
    pub config: Vec<u8>,
    generation: u32,
    queues: Vec<Queue>,
    pub quirks: Quirks,
    pub transport_features: u32,
    max_msg_size: usize,
    mem: Arc<GuestMemoryMmap<()>>,
    out: VecDeque<Vec<u8>>,
    rng: u64,
    pub received: Vec<Vec<u8>>,
    /// A virtio-blk disk behind the queues instead of the rng filler.
    pub blk: Option<FakeBlk>,
    /// A virtio-i2c adapter behind the queue instead of the rng filler.
    pub i2c: Option<FakeI2c>,
}

impl FakeDevice {
    /// An rng (device id 4) with 1 queue of max 256, EVENT_IDX and RING_RESET
    /// offered, and 12 config bytes (rng has none; they exist to exercise config paths).
    pub fn rng(dev_num: u16, max_msg_size: usize) -> Self {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)])
                .expect("guest memory"),
        );
        let offered = vec![
            1 << feature::EVENT_IDX,
            (1 << (feature::VERSION_1 - 32)) | (1 << (feature::RING_RESET - 32)),
        ];
        FakeDevice {
            dev_num,
            profile: Profile::V2,
            info: DeviceInfo {
                device_id: 4,
                vendor_id: 0x1234,
                device_uuid: [0; 16],
                num_feature_blocks: 2,
                config_size: 12,
                max_virtqueues: 1,
                admin_vq_start: 0,
                admin_vq_count: 0,
            },
            offered,
            driver_features: BTreeMap::new(),
            status: 0,
            reset_polls_left: 0,
            config: (0..12).collect(),
            generation: 7,
            queues: vec![Queue {
                max: 256,
                ..Default::default()
            }],
            quirks: Quirks::default(),
            transport_features: 0,
            max_msg_size,
            mem,
            out: VecDeque::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            received: Vec::new(),
            blk: None,
            i2c: None,
        }
    }

    /// A virtio-i2c (device id 34) with 1 queue of max 256 and no config.
    pub fn i2c(dev_num: u16, max_msg_size: usize, adapter: FakeI2c) -> Self {
        let mut d = Self::rng(dev_num, max_msg_size);
        d.info.device_id = 34;
        d.offered[0] |= adapter.offered();
        d.config = Vec::new();
        d.info.config_size = 0;
        d.i2c = Some(adapter);
        d
    }

    /// A virtio-blk (device id 2) with 2 queues of max 256 on `disk`.
    pub fn blk(dev_num: u16, max_msg_size: usize, disk: FakeBlk) -> Self {
        let mut d = Self::rng(dev_num, max_msg_size);
        d.info.device_id = 2;
        d.info.max_virtqueues = 2;
        d.queues = vec![
            Queue {
                max: 256,
                ..Default::default()
            };
            2
        ];
        d.offered[0] |= disk.offered();
        d.config = disk.config();
        d.info.config_size = d.config.len() as u32;
        d.blk = Some(disk);
        d
    }

    fn reply(&mut self, h: &Header, r: Response) {
        let token = if self.quirks.wrong_token {
            h.token.wrapping_add(1)
        } else {
            h.token
        };
        let f = r
            .encode_for(self.profile, h.dev_num, token)
            .expect("encode");
        if f.len() <= self.max_msg_size {
            self.push(f);
        }
    }

    /// Queues a frame for the driver, padded on fixed-frame profiles.
    fn push(&mut self, f: Vec<u8>) {
        if self.profile.fixed_frames() {
            self.out.push_back(wire::pad_frame(f, self.max_msg_size));
        } else {
            self.out.push_back(f);
        }
    }

    fn negotiated(&self, bit: u32) -> bool {
        self.status & status::FEATURES_OK != 0
            && self
                .driver_features
                .get(&(bit / 32))
                .is_some_and(|w| w & (1 << (bit % 32)) != 0)
    }

    fn features_acceptable(&self) -> bool {
        self.quirks.accept_unoffered
            || self
                .driver_features
                .iter()
                .all(|(&b, &w)| w & !self.offered.get(b as usize).copied().unwrap_or(0) == 0)
    }

    fn do_reset(&mut self) {
        self.status = 0;
        self.driver_features.clear();
        if !self.quirks.keep_queues_on_reset {
            for q in &mut self.queues {
                *q = Queue {
                    max: q.max,
                    ..Default::default()
                };
            }
        }
        self.reset_polls_left = self.quirks.reset_pending_polls;
        if let Some(b) = &self.blk {
            self.config = b.config();
        }
    }

    pub fn out_push_for_test(&mut self, f: Vec<u8>) {
        self.out.push_back(f);
    }

    pub fn handle(&mut self, frame: &[u8]) {
        self.received.push(frame.to_vec());
        let Ok((h, p)) = wire::split_frame_for(self.profile, frame) else {
            return;
        };
        if usize::from(h.msg_size) > self.max_msg_size {
            return;
        }
        if h.is_response() && !self.quirks.answer_responses {
            return;
        }
        if h.namespace() == Namespace::Bus {
            return self.handle_bus(&h, p);
        }
        if h.dev_num != self.dev_num {
            return;
        }
        if h.msg_id == msg::EVENT_AVAIL && !h.is_response() {
            if let Ok(Event::Avail { vq_index, .. }) = Event::decode(&h, p) {
                self.process_queue(vq_index);
            }
            return;
        }
        let Ok(req) = Request::decode_for(self.profile, &h, p) else {
            return;
        };
        let hdr = self.profile.header_size();
        match req {
            Request::GetDeviceInfo => self.reply(&h, Response::DeviceInfo(self.info)),
            Request::GetDeviceFeatures {
                block_index,
                num_blocks,
            } => {
                if hdr + 8 + 4 * num_blocks as usize > self.max_msg_size {
                    return;
                }
                let features = (0..num_blocks)
                    .map(|i| {
                        self.offered
                            .get((block_index + i) as usize)
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect();
                self.reply(
                    &h,
                    Response::DeviceFeatures {
                        block_index,
                        features,
                    },
                );
            }
            Request::SetDriverFeatures {
                block_index,
                features,
            } => {
                for (i, f) in features.iter().enumerate() {
                    self.driver_features.insert(block_index + i as u32, *f);
                }
                self.reply(&h, Response::SetDriverFeatures);
            }
            Request::GetConfig { offset, length } => {
                let end = u64::from(offset) + u64::from(length);
                if end > self.config.len() as u64 && !self.quirks.answer_config_out_of_range {
                    return;
                }
                let data = (offset..offset + length)
                    .map(|i| self.config.get(i as usize).copied().unwrap_or(0))
                    .collect();
                self.reply(
                    &h,
                    Response::Config {
                        generation: self.generation,
                        offset,
                        data,
                    },
                );
            }
            Request::SetConfig {
                generation,
                offset,
                data,
            } => {
                let end = u64::from(offset) + data.len() as u64;
                if end > self.config.len() as u64 {
                    return;
                }
                let strict = (self.profile == Profile::V1 && !self.quirks.ignore_generation)
                    || self.transport_features & transport_feature::STRICT_CONFIG_GENERATION != 0;
                let length = if data.is_empty() || (strict && generation != self.generation) {
                    0
                } else {
                    let o = offset as usize;
                    if self.config[o..o + data.len()] != data[..] {
                        self.config[o..o + data.len()].copy_from_slice(&data);
                        self.generation = self.generation.wrapping_add(1);
                    }
                    data.len() as u32
                };
                self.reply(
                    &h,
                    Response::SetConfig {
                        generation: self.generation,
                        offset,
                        length,
                        data: vec![],
                    },
                );
            }
            Request::GetDeviceStatus => {
                if self.reset_polls_left > 0 {
                    self.reset_polls_left -= 1;
                    return self.reply(
                        &h,
                        Response::DeviceStatus {
                            status: status::ACKNOWLEDGE,
                        },
                    );
                }
                self.reply(
                    &h,
                    Response::DeviceStatus {
                        status: self.status,
                    },
                )
            }
            Request::SetDeviceStatus { status: s } => {
                if s == 0 {
                    self.do_reset();
                    let st = if self.reset_polls_left > 0 {
                        status::ACKNOWLEDGE
                    } else {
                        0
                    };
                    return self.reply(&h, Response::SetDeviceStatus { status: st });
                }
                let mut s = s;
                let i2c_refuses = self.i2c.as_ref().is_some_and(|i| {
                    !i.features_ok(self.driver_features.get(&0).copied().unwrap_or(0))
                });
                if s & status::FEATURES_OK != 0
                    && self.status & status::FEATURES_OK == 0
                    && (!self.features_acceptable() || i2c_refuses)
                {
                    s &= !status::FEATURES_OK;
                }
                if s & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
                    if let Some(b) = &self.blk {
                        let negotiated = self.driver_features.get(&0).copied().unwrap_or(0);
                        b.features_ok(negotiated, &mut self.config);
                    }
                }
                self.status = s;
                self.reply(&h, Response::SetDeviceStatus { status: s });
                if self.quirks.event_config_on_status {
                    let ev = Event::Config {
                        dev_num: self.dev_num,
                        body: wire::EventConfig {
                            device_status: s,
                            generation: self.generation,
                            offset: 0,
                            length: 0,
                            data: vec![],
                        },
                    };
                    let f = ev.encode_for(self.profile, 0).expect("encode");
                    self.push(f);
                }
            }
            Request::GetVqueue { index } => {
                let info = match self.queues.get(index as usize) {
                    Some(q) => VqueueInfo {
                        index,
                        max_size: q.max,
                        cur_size: q.size,
                        // v1 has a reserved word there (0), RFC2 nothing.
                        flags: u32::from(q.enabled && self.profile.has_vqueue_flags()),
                        desc_addr: q.desc,
                        driver_addr: q.driver,
                        device_addr: q.device,
                    },
                    None if self.quirks.sentinel_garbage => VqueueInfo {
                        index,
                        max_size: 1,
                        ..Default::default()
                    },
                    None => VqueueInfo::sentinel(index),
                };
                self.reply(&h, Response::Vqueue(info));
            }
            Request::SetVqueue(mut s) => {
                if !self.profile.has_vqueue_flags() && !self.quirks.v2_set_vqueue {
                    // No flags word: configure everything and enable.
                    s.flags = vq_flags::STATE_ENABLE;
                    s.reserved = 0;
                }
                if let Some(q) = self.queues.get_mut(s.index as usize) {
                    let op = s.flags & vq_flags::STATE_MASK;
                    let ign = |b| s.flags & b != 0;
                    let noop = s.reserved != 0
                        || s.flags & vq_flags::SET_RESERVED_MASK != 0
                        || op == vq_flags::STATE_RESERVED
                        || (q.enabled && op == vq_flags::STATE_KEEP_DISABLED)
                        || (q.enabled && s.flags & vq_flags::ALL_IGNORE != vq_flags::ALL_IGNORE)
                        || (!ign(vq_flags::SIZE_IGNORE) && (s.size == 0 || s.size > q.max));
                    if !noop {
                        if !ign(vq_flags::SIZE_IGNORE) {
                            q.size = s.size;
                        }
                        if !ign(vq_flags::DESC_ADDR_IGNORE) {
                            q.desc = s.desc_addr;
                        }
                        if !ign(vq_flags::DRIVER_ADDR_IGNORE) {
                            q.driver = s.driver_addr;
                        }
                        if !ign(vq_flags::DEVICE_ADDR_IGNORE) {
                            q.device = s.device_addr;
                        }
                        if op == vq_flags::STATE_ENABLE {
                            q.enabled = true;
                            q.last_avail = 0;
                            q.used_idx = 0;
                        }
                    }
                }
                self.reply(&h, Response::SetVqueue);
            }
            Request::ResetVqueue { index } => {
                if self.negotiated(feature::RING_RESET) {
                    if let Some(q) = self.queues.get_mut(index as usize) {
                        *q = Queue {
                            max: q.max,
                            ..Default::default()
                        };
                    }
                }
                self.reply(&h, Response::ResetVqueue);
            }
            Request::GetShm { shmid } => self.reply(
                &h,
                Response::Shm {
                    shmid,
                    reserved: 0,
                    length: 0,
                    address: 0,
                },
            ),
            Request::GetDevices { .. } | Request::Ping { .. } => {}
        }
    }

    fn handle_bus(&mut self, h: &Header, p: &[u8]) {
        let Ok(req) = Request::decode_for(self.profile, h, p) else {
            return;
        };
        let v1 = self.profile == Profile::V1 && !self.quirks.unaligned_devices;
        match req {
            Request::Ping { data } => self.reply(h, Response::Ping { data }),
            Request::GetDevices { offset, count } => {
                let fit = ((self.max_msg_size - self.profile.header_size() - 6) * 8) as u32;
                let room = 65536 - u32::from(offset);
                let mut n = u32::from(count).min(fit).min(room);
                if v1 {
                    // v1 windows are 8-aligned.
                    n &= !7;
                } else if self.quirks.unaligned_devices {
                    // Trim the empty tail as v2 allows.
                    let d = u32::from(self.dev_num);
                    n = n.min((d + 1).saturating_sub(u32::from(offset)));
                }
                let mut bitmap = vec![0u8; (n as usize).div_ceil(8)];
                let d = u32::from(self.dev_num);
                if d >= u32::from(offset) && d < u32::from(offset) + n {
                    let b = d - u32::from(offset);
                    bitmap[(b / 8) as usize] |= 1 << (b % 8);
                }
                let end = u32::from(offset) + n;
                let next_offset = match n {
                    // Empty window: point at the device if it lies beyond.
                    0 if v1 && d & !7 >= u32::from(offset) => (d & !7) as u16,
                    0 if !v1 && d > u32::from(offset) => d as u16,
                    0 => 0,
                    _ if d >= end && end < 65536 => end as u16,
                    _ => 0,
                };
                self.reply(
                    h,
                    Response::Devices {
                        offset,
                        next_offset,
                        count: n as u16,
                        bitmap,
                    },
                );
            }
            _ => {}
        }
    }

    fn next_rand(&mut self) -> u8 {
        // xorshift64: deterministic filler, not entropy.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng as u8
    }

    fn process_queue(&mut self, index: u32) {
        let Some(q) = self.queues.get(index as usize).cloned() else {
            return;
        };
        if !q.enabled
            || (self.status & status::DRIVER_OK == 0 && !self.quirks.process_before_driver_ok)
        {
            return;
        }
        let mem = Arc::clone(&self.mem);
        let size = q.size as u16;
        let avail_idx: u16 = mem
            .load(GuestAddress(q.driver + 2), Ordering::Acquire)
            .expect("avail idx");
        let mut last = q.last_avail;
        let mut used = q.used_idx;
        let old_used = used;
        // i2c: the pass's chains, executed together (FAIL_NEXT links them).
        let mut i2c_chains = Vec::new();
        while last != avail_idx {
            let head: u16 = mem
                .read_obj(GuestAddress(q.driver + 4 + 2 * u64::from(last % size)))
                .expect("ring");
            let mut d = head;
            let mut written = 0u32;
            let mut chain = Vec::new();
            for _ in 0..size {
                let base = GuestAddress(q.desc + 16 * u64::from(d));
                let addr: u64 = mem.read_obj(base).expect("desc");
                let len: u32 = mem.read_obj(GuestAddress(base.0 + 8)).expect("desc");
                let flags: u16 = mem.read_obj(GuestAddress(base.0 + 12)).expect("desc");
                let next: u16 = mem.read_obj(GuestAddress(base.0 + 14)).expect("desc");
                if self.blk.is_some() || self.i2c.is_some() {
                    chain.push((addr, len, flags));
                } else if flags & VIRTQ_DESC_F_WRITE != 0 {
                    let bytes: Vec<u8> = (0..len).map(|_| self.next_rand()).collect();
                    mem.write_slice(&bytes, GuestAddress(addr)).expect("buffer");
                    written += len;
                }
                if flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                d = next;
            }
            if let Some(b) = self.blk.as_mut() {
                written = b.handle(&mem, &chain);
            }
            if self.i2c.is_some() {
                i2c_chains.push((head, chain));
                last = last.wrapping_add(1);
                continue;
            }
            let slot = GuestAddress(q.device + 4 + 8 * u64::from(used % size));
            mem.write_obj(u32::from(head), slot).expect("used");
            mem.write_obj(written, GuestAddress(slot.0 + 4))
                .expect("used");
            used = used.wrapping_add(1);
            last = last.wrapping_add(1);
        }
        if let Some(i) = self.i2c.as_mut() {
            for (head, written) in i.handle_pass(&mem, &i2c_chains) {
                let slot = GuestAddress(q.device + 4 + 8 * u64::from(used % size));
                mem.write_obj(u32::from(head), slot).expect("used");
                mem.write_obj(written, GuestAddress(slot.0 + 4))
                    .expect("used");
                used = used.wrapping_add(1);
            }
        }
        mem.store(used, GuestAddress(q.device + 2), Ordering::Release)
            .expect("used idx");
        if self.negotiated(feature::EVENT_IDX) {
            // avail_event: kick me once the driver publishes past what I consumed.
            mem.store(
                last,
                GuestAddress(q.device + 4 + 8 * u64::from(size)),
                Ordering::Release,
            )
            .expect("avail_event");
        }
        if let Some(qm) = self.queues.get_mut(index as usize) {
            qm.last_avail = last;
            qm.used_idx = used;
        }
        let notify = if self.negotiated(feature::EVENT_IDX) {
            let ue: u16 = mem
                .read_obj(GuestAddress(q.driver + 4 + 2 * u64::from(size)))
                .expect("used_event");
            need_event(ue, used, old_used)
        } else {
            let f: u16 = mem.read_obj(GuestAddress(q.driver)).expect("flags");
            f & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
        };
        if used != old_used && notify && !self.quirks.no_used_event {
            let ev = Event::Used {
                dev_num: self.dev_num,
                vq_index: index,
            };
            let f = ev.encode_for(self.profile, 0).expect("encode");
            self.push(f);
        }
    }
}

/// A connection to a shared [`FakeDevice`]; responses are produced synchronously on send.
#[derive(Debug, Clone)]
pub(crate) struct FakeDeviceBus {
    pub dev: Arc<Mutex<FakeDevice>>,
    mem: Arc<GuestMemoryMmap<()>>,
    max: usize,
    pub polling: bool,
}

impl FakeDeviceBus {
    pub fn new(dev: FakeDevice) -> Self {
        let mem = Arc::clone(&dev.mem);
        let max = dev.max_msg_size;
        FakeDeviceBus {
            dev: Arc::new(Mutex::new(dev)),
            mem,
            max,
            polling: false,
        }
    }

    pub fn device(&self) -> MutexGuard<'_, FakeDevice> {
        self.dev.lock().expect("fake device lock")
    }

    /// A fresh connection to the same device (pending output discarded).
    pub fn reconnect(&self) -> Self {
        self.device().out.clear();
        self.clone()
    }
}

impl DriverBus for FakeDeviceBus {
    fn max_msg_size(&self) -> usize {
        self.max
    }
    fn profile(&self) -> Profile {
        self.device().profile
    }
    fn transport_features(&self) -> u32 {
        self.device().transport_features
    }
    fn send(&mut self, frame: &[u8]) -> Result<(), BusIoError> {
        // Oversized frames reach the device, which must drop them (§9.1).
        self.device().handle(frame);
        Ok(())
    }
    fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<usize>, BusIoError> {
        let next = self.device().out.pop_front();
        match next {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(Some(f.len()))
            }
            None => {
                // Nothing can arrive until the next send: sleeping is exact.
                std::thread::sleep(timeout.unwrap_or(Duration::from_millis(10)));
                Ok(None)
            }
        }
    }
    fn memory(&self) -> &Arc<GuestMemoryMmap<()>> {
        &self.mem
    }
    fn polling_only(&self) -> bool {
        self.polling
    }
}
