//! The device rules of spec v2 (reference §3–§6, checklist §9), one test per
//! rule, against the state machine with a fake model. Frames are written as
//! bytes from the spec's layout tables where the layout is the point.

use proptest::prelude::*;
use vmsg_proto::{Body, Codec, Message, Profile, SetVqueue, VqueueInfo, status, vq_flags};
use vmsg_transport::device::{
    DeviceModel, DeviceTransport, Dropped, Effect, ResetProgress, feature,
};

/// A fake device: 2 queues (max 256, and queue 1 unavailable when `hole`),
/// a 16-byte config whose last 8 bytes are read-only.
struct FakeModel {
    offered: [u32; 2],
    config: [u8; 16],
    resets: u32,
    reject_features: bool,
    reset_progress: ResetProgress,
}

impl FakeModel {
    fn new() -> Self {
        let offered = (1u64 << feature::VERSION_1)
            | (1 << feature::RING_RESET)
            | (1 << feature::EVENT_IDX)
            | (1 << 3)
            // A model that wrongly offers NOTIF_CONFIG_DATA: the transport must mask it.
            | (1 << feature::NOTIF_CONFIG_DATA);
        Self {
            offered: [offered as u32, (offered >> 32) as u32],
            config: *b"ABCDEFGHrrrrrrrr",
            resets: 0,
            reject_features: false,
            reset_progress: ResetProgress::Done,
        }
    }
}

impl DeviceModel for FakeModel {
    fn device_id(&self) -> u32 {
        4
    }
    fn offered_features(&self) -> &[u32] {
        &self.offered
    }
    fn config_size(&self) -> u32 {
        16
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let o = offset as usize;
        data.copy_from_slice(&self.config[o..o + data.len()]);
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> bool {
        let o = offset as usize;
        if o + data.len() > 8 {
            return false;
        }
        self.config[o..o + data.len()].copy_from_slice(data);
        true
    }
    fn num_queues(&self) -> u32 {
        3
    }
    fn queue_max_size(&self, index: u32) -> u32 {
        match index {
            0 | 2 => 256,
            _ => 0,
        }
    }
    fn accept_features(&mut self, _features: &[u32]) -> bool {
        !self.reject_features
    }
    fn reset(&mut self) -> ResetProgress {
        self.resets += 1;
        self.reset_progress
    }
}

struct Rig {
    codec: Codec,
    model: FakeModel,
    t: DeviceTransport,
    out: Vec<u8>,
}

impl Rig {
    fn with(profile: Profile, transport_features: u32) -> Self {
        let codec = Codec::new(profile, 264).expect("codec");
        let model = FakeModel::new();
        let t = DeviceTransport::new(&model, 1, codec, transport_features);
        Self {
            codec,
            model,
            t,
            out: vec![0; 264],
        }
    }

    fn new() -> Self {
        Self::with(Profile::V2, 0)
    }

    /// Send `body` with `token`; returns (response bytes, effect, dropped).
    fn send(&mut self, token: u16, body: Body<'_>) -> (Option<Vec<u8>>, Effect, Option<Dropped>) {
        let msg = Message {
            dev_num: 1,
            token,
            body,
        };
        let h = self
            .t
            .handle(&mut self.model, &msg, &mut self.out)
            .expect("handle");
        (
            h.response.map(|n| self.out[..n].to_vec()),
            h.effect,
            h.dropped,
        )
    }

    fn ask(&mut self, body: Body<'_>) -> Vec<u8> {
        self.send(9, body).0.expect("a response")
    }

    fn status(&mut self) -> u32 {
        let r = self.ask(Body::GetDeviceStatus);
        match self.codec.decode(&r).expect("decode").body {
            Body::DeviceStatus { status } => status,
            b => panic!("unexpected {b:?}"),
        }
    }

    fn set_status(&mut self, s: u32) -> (u32, Effect) {
        let (r, effect, _) = self.send(9, Body::SetDeviceStatus { status: s });
        let r = r.expect("response");
        match self.codec.decode(&r).expect("decode").body {
            Body::DeviceStatusSet { status } => (status, effect),
            b => panic!("unexpected {b:?}"),
        }
    }

    fn set_features(&mut self, lo: u32, hi: u32) {
        let bytes: Vec<u8> = [lo, hi].iter().flat_map(|w| w.to_le_bytes()).collect();
        self.ask(Body::SetDriverFeatures {
            block_index: 0,
            features: vmsg_proto::Le32s::new(&bytes).expect("words"),
        });
    }

    /// ACKNOWLEDGE, DRIVER, VERSION_1 (+ `extra_hi` bits of block 1), FEATURES_OK.
    fn negotiate(&mut self, extra_hi: u32) -> u32 {
        self.set_status(status::ACKNOWLEDGE);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        self.set_features(0, 1 | extra_hi);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)
            .0
    }

    fn vqueue(&mut self, index: u32) -> VqueueInfo {
        let r = self.ask(Body::GetVqueue { index });
        match self.codec.decode(&r).expect("decode").body {
            Body::Vqueue(v) => v,
            b => panic!("unexpected {b:?}"),
        }
    }

    fn set_vqueue(&mut self, req: SetVqueue) -> Effect {
        let (r, effect, _) = self.send(9, Body::SetVqueue(req));
        let r = r.expect("SET_VQUEUE is always answered");
        assert_eq!(r, [0x01, 0x0A, 1, 0, 9, 0, 8, 0], "empty response");
        effect
    }
}

fn enable_q0() -> SetVqueue {
    SetVqueue {
        index: 0,
        flags: vq_flags::STATE_ENABLE,
        size: 256,
        reserved: 0,
        desc_addr: 0x1_0000,
        driver_addr: 0x1_1000,
        device_addr: 0x1_2000,
    }
}

const ALL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn get_device_info_in_every_state_is_consistent() {
    let mut rig = Rig::new();
    let first = rig.ask(Body::GetDeviceInfo);
    // §9 example layout: type 01, id 02, dev 1, token 9, size 52.
    assert_eq!(&first[..8], &[0x01, 0x02, 1, 0, 9, 0, 52, 0]);
    assert_eq!(&first[8..12], &4u32.to_le_bytes(), "device_id");
    assert_eq!(&first[12..16], b"VMSG", "vendor_id");
    assert_eq!(&first[32..36], &2u32.to_le_bytes(), "num_feature_blocks");
    assert_eq!(&first[36..40], &16u32.to_le_bytes(), "config_size");
    assert_eq!(&first[40..44], &3u32.to_le_bytes(), "max_virtqueues");
    rig.negotiate(0);
    rig.set_status(ALL);
    assert_eq!(rig.ask(Body::GetDeviceInfo), first);
    rig.set_status(0);
    assert_eq!(rig.ask(Body::GetDeviceInfo), first);
}

#[test]
fn response_echoes_token_dev_num_and_msg_id() {
    let mut rig = Rig::new();
    for token in [0u16, 1, 0x1234, 0xFFFF] {
        let (r, _, _) = rig.send(token, Body::GetDeviceStatus);
        let r = r.expect("response");
        assert_eq!(
            r,
            [
                0x01,
                0x07,
                1,
                0,
                token as u8,
                (token >> 8) as u8,
                12,
                0,
                0,
                0,
                0,
                0
            ]
        );
    }
}

#[test]
fn features_offered_set_never_reflects_driver_selection_and_masks_notif_config_data() {
    let mut rig = Rig::new();
    let r = rig.ask(Body::GetDeviceFeatures {
        block_index: 0,
        num_blocks: 4,
    });
    let m = rig.codec.decode(&r).expect("decode");
    let Body::DeviceFeatures {
        block_index,
        features,
    } = m.body
    else {
        panic!("{m:?}")
    };
    assert_eq!(block_index, 0);
    let words: Vec<u32> = features.iter().collect();
    assert_eq!(words.len(), 4, "num_blocks echoed");
    assert_eq!(
        words[1] & (1 << (feature::NOTIF_CONFIG_DATA - 32)),
        0,
        "NOTIF_CONFIG_DATA never offered"
    );
    assert_ne!(words[1] & 1, 0, "VERSION_1 offered");
    assert_eq!(words[2..], [0, 0], "zero beyond the implemented blocks");
    rig.set_features(0, 1);
    assert_eq!(
        rig.ask(Body::GetDeviceFeatures {
            block_index: 0,
            num_blocks: 4
        }),
        r
    );
}

#[test]
fn features_ok_accepts_subset_with_version_1() {
    let mut rig = Rig::new();
    let s = rig.negotiate(1 << (feature::RING_RESET - 32));
    assert_ne!(s & status::FEATURES_OK, 0);
    assert_eq!(rig.status() & status::FEATURES_OK, status::FEATURES_OK);
    assert!(rig.t.negotiated(feature::RING_RESET));
}

#[test]
fn features_ok_refused_for_unoffered_bits_missing_version_1_or_model_veto() {
    // An unoffered bit (bit 35) in block 1.
    let mut rig = Rig::new();
    assert_eq!(rig.negotiate(1 << 3) & status::FEATURES_OK, 0);
    assert_eq!(rig.status() & status::FEATURES_OK, 0);
    // NOTIF_CONFIG_DATA even though the model (wrongly) offered it.
    let mut rig = Rig::new();
    assert_eq!(
        rig.negotiate(1 << (feature::NOTIF_CONFIG_DATA - 32)) & status::FEATURES_OK,
        0
    );
    // No VERSION_1.
    let mut rig = Rig::new();
    rig.set_status(status::ACKNOWLEDGE | status::DRIVER);
    rig.set_features(1 << 3, 0);
    let (s, _) = rig.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(s & status::FEATURES_OK, 0);
    // A bit in a block beyond the offered ones.
    let mut rig = Rig::new();
    rig.set_status(status::ACKNOWLEDGE | status::DRIVER);
    rig.set_features(0, 1);
    let b = 1u32.to_le_bytes();
    rig.ask(Body::SetDriverFeatures {
        block_index: 7,
        features: vmsg_proto::Le32s::new(&b).expect("w"),
    });
    let (s, _) = rig.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(s & status::FEATURES_OK, 0);
    // The model vetoes.
    let mut rig = Rig::new();
    rig.model.reject_features = true;
    assert_eq!(rig.negotiate(0) & status::FEATURES_OK, 0);
}

#[test]
fn set_driver_features_updates_only_addressed_blocks() {
    let mut rig = Rig::new();
    rig.set_status(status::ACKNOWLEDGE | status::DRIVER);
    rig.set_features(1 << 3, 1);
    let b = 0u32.to_le_bytes();
    rig.ask(Body::SetDriverFeatures {
        block_index: 1,
        features: vmsg_proto::Le32s::new(&b).expect("w"),
    });
    assert_eq!(rig.t.driver_features(), &[1 << 3, 0]);
}

#[test]
fn driver_ok_requires_features_ok() {
    let mut rig = Rig::new();
    rig.set_status(status::ACKNOWLEDGE | status::DRIVER);
    let (s, effect) = rig.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    assert_eq!(s & status::DRIVER_OK, 0);
    assert_eq!(effect, Effect::None);
    rig.negotiate(0);
    let (s, effect) = rig.set_status(ALL);
    assert_eq!(s, ALL);
    assert_eq!(effect, Effect::Activate);
}

#[test]
fn reset_clears_status_features_and_queues_and_reports_zero_when_done() {
    let mut rig = Rig::new();
    rig.negotiate(0);
    rig.set_vqueue(enable_q0());
    rig.set_status(ALL);
    let (s, effect) = rig.set_status(0);
    assert_eq!((s, effect), (0, Effect::Reset));
    assert_eq!(rig.model.resets, 1);
    assert_eq!(rig.status(), 0);
    assert_eq!(rig.t.driver_features(), &[0, 0]);
    let q = rig.vqueue(0);
    assert_eq!(
        (
            q.cur_size,
            q.flags,
            q.desc_addr,
            q.driver_addr,
            q.device_addr
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(q.max_size, 256);
}

#[test]
fn pending_reset_never_reports_zero_before_completion() {
    let mut rig = Rig::new();
    rig.model.reset_progress = ResetProgress::Pending;
    // Even from the initial all-zero state.
    let (s, effect) = rig.set_status(0);
    assert_ne!(s, 0);
    assert_eq!(effect, Effect::Reset);
    assert_ne!(rig.status(), 0);
    rig.negotiate(0);
    assert_ne!(rig.status(), 0);
    rig.t.complete_reset();
    assert_eq!(rig.status(), 0);
}

#[test]
fn status_write_never_raises_events_and_needs_reset_is_device_owned() {
    let mut rig = Rig::new();
    rig.negotiate(0);
    // A driver cannot set DEVICE_NEEDS_RESET.
    let (s, _) = rig.set_status(ALL | status::DEVICE_NEEDS_RESET);
    assert_eq!(s & status::DEVICE_NEEDS_RESET, 0);
    // The device sets it and tells the driver with a status-only EVENT_CONFIG.
    let mut out = [0u8; 64];
    let n = rig
        .t
        .set_needs_reset(&mut out)
        .expect("encode")
        .expect("first time");
    let m = rig.codec.decode(&out[..n]).expect("decode");
    match m.body {
        Body::EventConfig {
            device_status,
            offset,
            length,
            data,
            ..
        } => {
            assert_ne!(device_status & status::DEVICE_NEEDS_RESET, 0);
            assert_eq!((offset, length, data.len()), (0, 0, 0));
        }
        b => panic!("{b:?}"),
    }
    assert_eq!(n, 24, "status-only EVENT_CONFIG is 24 bytes");
    assert!(
        rig.t.set_needs_reset(&mut out).expect("encode").is_none(),
        "signalled once"
    );
    assert_ne!(rig.status() & status::DEVICE_NEEDS_RESET, 0);
    // Clearing other bits is not possible without reset.
    let (s, _) = rig.set_status(status::ACKNOWLEDGE);
    assert_eq!(s & ALL, ALL);
}

/// §3.7/§3.8 (issue 10, defect 7): the status carries the virtio status
/// bits (ACKNOWLEDGE 1, DRIVER 2, DRIVER_OK 4, FEATURES_OK 8,
/// DEVICE_NEEDS_RESET 64, FAILED 128) and GET_DEVICE_STATUS "must be
/// accurate": bits a driver writes outside that set are not kept, and never
/// reported back (docs/decisions.md).
#[test]
fn undefined_status_bits_are_not_kept() {
    let mut rig = Rig::new();
    let junk = 0x10 | 0x20 | 0x100 | 0x8000_0000;
    let (s, effect) = rig.set_status(status::ACKNOWLEDGE | junk);
    assert_eq!(s, status::ACKNOWLEDGE, "the response drops undefined bits");
    assert_eq!(effect, Effect::None);
    assert_eq!(rig.status(), status::ACKNOWLEDGE);
    // The normal sequence goes on from there.
    let (s, _) = rig.set_status(status::ACKNOWLEDGE | status::DRIVER | junk);
    assert_eq!(s, status::ACKNOWLEDGE | status::DRIVER);
    // Undefined bits alone are a write of nothing new, not a reset.
    let (s, effect) = rig.set_status(junk);
    assert_eq!(effect, Effect::None);
    assert_eq!(s, status::ACKNOWLEDGE | status::DRIVER);
}

#[test]
fn get_config_returns_current_generation_and_drops_out_of_range() {
    let mut rig = Rig::new();
    let r = rig.ask(Body::GetConfig {
        offset: 2,
        length: 4,
    });
    let m = rig.codec.decode(&r).expect("decode");
    let Body::Config {
        generation,
        offset,
        data,
    } = m.body
    else {
        panic!()
    };
    assert_eq!(
        (generation, offset, data),
        (rig.t.generation(), 2, &b"CDEF"[..])
    );
    for (offset, length) in [(0, 17), (16, 1), (u32::MAX, 2), (8, u32::MAX)] {
        let (r, _, dropped) = rig.send(1, Body::GetConfig { offset, length });
        assert!(r.is_none());
        assert_eq!(dropped, Some(Dropped::ConfigOutOfRange));
    }
    // Length 0 at the end is a valid empty read.
    assert!(
        rig.send(
            1,
            Body::GetConfig {
                offset: 16,
                length: 0
            }
        )
        .0
        .is_some()
    );
}

#[test]
fn set_config_is_all_or_nothing_and_bumps_generation_on_change() {
    let mut rig = Rig::new();
    let g0 = rig.t.generation();
    let r = rig.ask(Body::SetConfig {
        generation: 0,
        offset: 0,
        data: b"xy",
    });
    let Body::ConfigSet {
        generation, length, ..
    } = rig.codec.decode(&r).expect("d").body
    else {
        panic!()
    };
    assert_eq!(length, 2);
    assert_ne!(generation, g0, "contents changed, generation changed");
    // Straddling the read-only part: nothing applied, length 0.
    let r = rig.ask(Body::SetConfig {
        generation: 0,
        offset: 6,
        data: b"1234",
    });
    let Body::ConfigSet { length, .. } = rig.codec.decode(&r).expect("d").body else {
        panic!()
    };
    assert_eq!(length, 0);
    assert_eq!(&rig.model.config[..8], b"xyCDEFGH");
    // Length 0 is a valid no-op.
    let r = rig.ask(Body::SetConfig {
        generation: 0,
        offset: 3,
        data: b"",
    });
    let Body::ConfigSet { length, .. } = rig.codec.decode(&r).expect("d").body else {
        panic!()
    };
    assert_eq!(length, 0);
    // Past config_size: dropped, unanswered.
    let (r, _, d) = rig.send(
        1,
        Body::SetConfig {
            generation: 0,
            offset: 15,
            data: b"ab",
        },
    );
    assert!(r.is_none());
    assert_eq!(d, Some(Dropped::ConfigOutOfRange));
}

#[test]
fn baseline_profile_ignores_generation_strict_profile_rejects_mismatch() {
    let mut rig = Rig::new();
    let r = rig.ask(Body::SetConfig {
        generation: 0xDEAD,
        offset: 0,
        data: b"q",
    });
    let Body::ConfigSet { length, .. } = rig.codec.decode(&r).expect("d").body else {
        panic!()
    };
    assert_eq!(length, 1, "baseline applies regardless of generation");

    let mut rig = Rig::with(
        Profile::V2,
        vmsg_proto::TRANSPORT_F_STRICT_CONFIG_GENERATION,
    );
    let r = rig.ask(Body::SetConfig {
        generation: rig.t.generation().wrapping_add(1),
        offset: 0,
        data: b"q",
    });
    let Body::ConfigSet { length, .. } = rig.codec.decode(&r).expect("d").body else {
        panic!()
    };
    assert_eq!(length, 0, "strict rejects a stale generation");
    assert_eq!(rig.model.config[0], b'A');
    let g = rig.t.generation();
    let r = rig.ask(Body::SetConfig {
        generation: g,
        offset: 0,
        data: b"q",
    });
    let Body::ConfigSet { length, .. } = rig.codec.decode(&r).expect("d").body else {
        panic!()
    };
    assert_eq!(length, 1);
}

#[test]
fn device_config_change_sends_event_config_with_data_and_new_generation() {
    let mut rig = Rig::new();
    let g = rig.t.generation();
    rig.model.config[4] = b'z';
    let mut out = [0u8; 264];
    let n = rig
        .t
        .config_changed(&rig.model, 4, 2, &mut out)
        .expect("encode");
    assert_eq!(
        n,
        24 + 2,
        "msg_size == 24 + length (Linux drops anything else)"
    );
    let Body::EventConfig {
        generation,
        offset,
        length,
        data,
        ..
    } = rig.codec.decode(&out[..n]).expect("d").body
    else {
        panic!()
    };
    assert_ne!(generation, g);
    assert_eq!((offset, length, data), (4, 2, &b"zF"[..]));
    assert_eq!(out[4..6], [0, 0], "events use token 0");
}

#[test]
fn get_vqueue_zero_sentinel_for_unavailable_and_out_of_range() {
    let mut rig = Rig::new();
    for index in [1u32, 3, 1000, u32::MAX] {
        let q = rig.vqueue(index);
        assert_eq!(
            q,
            VqueueInfo {
                index,
                ..VqueueInfo::default()
            }
        );
    }
    let q = rig.vqueue(0);
    assert_eq!((q.max_size, q.cur_size, q.flags), (256, 0, 0));
}

#[test]
fn set_vqueue_applies_atomically_and_reports_enabled() {
    let mut rig = Rig::new();
    rig.negotiate(0);
    assert_eq!(
        rig.set_vqueue(enable_q0()),
        Effect::None,
        "not live before DRIVER_OK"
    );
    let q = rig.vqueue(0);
    assert_eq!(
        (
            q.cur_size,
            q.flags,
            q.desc_addr,
            q.driver_addr,
            q.device_addr
        ),
        (256, 1, 0x1_0000, 0x1_1000, 0x1_2000)
    );
    // After DRIVER_OK, enabling another queue is an effect.
    rig.set_status(ALL);
    let mut q2 = enable_q0();
    q2.index = 2;
    assert_eq!(rig.set_vqueue(q2), Effect::QueueEnabled(2));
}

#[test]
fn set_vqueue_no_op_cases() {
    let mut rig = Rig::new();
    rig.negotiate(0);
    let idle = rig.vqueue(0);
    let cases: Vec<SetVqueue> = vec![
        SetVqueue {
            index: 1,
            ..enable_q0()
        }, // unavailable
        SetVqueue {
            index: 3,
            ..enable_q0()
        }, // out of range
        SetVqueue {
            reserved: 1,
            ..enable_q0()
        }, // reserved word
        SetVqueue {
            flags: 1 << 6 | 1,
            ..enable_q0()
        }, // reserved flag bits
        SetVqueue {
            flags: 3,
            ..enable_q0()
        }, // state op 3
        SetVqueue {
            size: 0,
            ..enable_q0()
        }, // size 0
        SetVqueue {
            size: 512,
            ..enable_q0()
        }, // above max
        SetVqueue {
            size: 100,
            ..enable_q0()
        }, // split ring: not a power of two
        SetVqueue {
            desc_addr: 0x1_0008,
            ..enable_q0()
        }, // misaligned descriptor table
        SetVqueue {
            device_addr: 0,
            ..enable_q0()
        }, // enable without a used ring
    ];
    for case in cases {
        rig.set_vqueue(case);
        assert_eq!(rig.vqueue(0), idle, "{case:?} must be a no-op");
    }
    // flags = 0 on a disabled queue: load every field, stay disabled.
    rig.set_vqueue(SetVqueue {
        flags: 0,
        ..enable_q0()
    });
    let q = rig.vqueue(0);
    assert_eq!((q.cur_size, q.flags, q.desc_addr), (256, 0, 0x1_0000));
    // Then enable with every field ignored.
    rig.set_vqueue(SetVqueue {
        flags: vq_flags::STATE_ENABLE
            | vq_flags::SIZE_IGNORE
            | vq_flags::DESC_ADDR_IGNORE
            | vq_flags::DRIVER_ADDR_IGNORE
            | vq_flags::DEVICE_ADDR_IGNORE,
        size: 0,
        desc_addr: 0,
        driver_addr: 0,
        device_addr: 0,
        ..enable_q0()
    });
    let enabled = rig.vqueue(0);
    assert_eq!(
        (enabled.cur_size, enabled.flags, enabled.desc_addr),
        (256, 1, 0x1_0000)
    );
    // An enabled queue can be neither disabled nor reconfigured by SET_VQUEUE.
    for case in [
        SetVqueue {
            flags: vq_flags::STATE_DISABLED
                | vq_flags::SIZE_IGNORE
                | vq_flags::DESC_ADDR_IGNORE
                | vq_flags::DRIVER_ADDR_IGNORE
                | vq_flags::DEVICE_ADDR_IGNORE,
            ..enable_q0()
        },
        SetVqueue {
            flags: vq_flags::STATE_KEEP,
            size: 128,
            ..enable_q0()
        },
        SetVqueue {
            desc_addr: 0x2_0000,
            ..enable_q0()
        },
    ] {
        rig.set_vqueue(case);
        assert_eq!(rig.vqueue(0), enabled, "{case:?} must be a no-op");
    }
}

#[test]
fn reset_vqueue_needs_ring_reset_and_returns_queue_to_idle() {
    let mut rig = Rig::new();
    rig.negotiate(0);
    rig.set_vqueue(enable_q0());
    let (_, effect, _) = rig.send(1, Body::ResetVqueue { index: 0 });
    assert_eq!(effect, Effect::None, "RING_RESET not negotiated: no-op");
    assert_eq!(rig.vqueue(0).flags, 1);

    let mut rig = Rig::new();
    rig.negotiate(1 << (feature::RING_RESET - 32));
    rig.set_vqueue(enable_q0());
    let (r, effect, _) = rig.send(1, Body::ResetVqueue { index: 0 });
    assert_eq!(r.expect("answered"), [0x01, 0x0B, 1, 0, 1, 0, 8, 0]);
    assert_eq!(effect, Effect::QueueReset(0));
    assert_eq!(
        rig.vqueue(0),
        VqueueInfo {
            index: 0,
            max_size: 256,
            ..VqueueInfo::default()
        }
    );
    // Out of range: answered, no-op.
    let (r, effect, _) = rig.send(1, Body::ResetVqueue { index: 77 });
    assert!(r.is_some());
    assert_eq!(effect, Effect::None);
}

#[test]
fn get_shm_unsupported_is_length_zero() {
    let mut rig = Rig::new();
    let r = rig.ask(Body::GetShm { shmid: 3 });
    assert_eq!(r.len(), 32);
    assert_eq!(&r[8..12], &3u32.to_le_bytes(), "shmid echoed");
    assert!(
        r[12..].iter().all(|&b| b == 0),
        "reserved, length and address zero"
    );
}

#[test]
fn event_avail_only_for_live_enabled_queues() {
    let mut rig = Rig::new();
    let (r, effect, d) = rig.send(
        0,
        Body::EventAvail {
            vq_index: 0,
            next_offset: 0,
        },
    );
    assert!(r.is_none());
    assert_eq!((effect, d), (Effect::None, Some(Dropped::QueueNotLive)));
    rig.negotiate(0);
    rig.set_vqueue(enable_q0());
    rig.set_status(ALL);
    let (r, effect, d) = rig.send(
        0,
        Body::EventAvail {
            vq_index: 0,
            next_offset: 0,
        },
    );
    assert!(r.is_none(), "events are never answered");
    assert_eq!((effect, d), (Effect::Notify(0), None));
    let (_, effect, _) = rig.send(
        0,
        Body::EventAvail {
            vq_index: 2,
            next_offset: 0,
        },
    );
    assert_eq!(effect, Effect::None, "queue 2 not enabled");
}

#[test]
fn device_never_accepts_responses_or_device_events() {
    let mut rig = Rig::new();
    for body in [
        Body::DeviceStatus { status: 0 },
        Body::VqueueSet,
        Body::EventUsed { vq_index: 0 },
        Body::EventConfig {
            device_status: 0,
            generation: 0,
            offset: 0,
            length: 0,
            data: &[],
        },
    ] {
        let (r, _, d) = rig.send(1, body);
        assert!(r.is_none());
        assert_eq!(d, Some(Dropped::NotARequest));
    }
}

#[test]
fn event_used_layout_matches_spec_example() {
    let rig = Rig::new();
    let mut out = [0u8; 16];
    let n = rig.t.event_used(2, &mut out).expect("encode");
    assert_eq!(
        &out[..n],
        &[
            0x00, 0x42, 0x01, 0x00, 0x00, 0x00, 0x0C, 0x00, 0x02, 0x00, 0x00, 0x00
        ]
    );
}

#[test]
fn v1_always_checks_the_generation() {
    let mut rig = Rig::with(Profile::V1, 0);
    let r = rig.ask(Body::SetConfig {
        generation: rig.t.generation().wrapping_add(1),
        offset: 0,
        data: b"q",
    });
    let Body::ConfigSet { length, .. } = rig.codec.decode(&r).expect("d").body else {
        panic!()
    };
    assert_eq!(
        length, 0,
        "v1 rejects a stale generation without the strict bit"
    );
    let g = rig.t.generation();
    let r = rig.ask(Body::SetConfig {
        generation: g,
        offset: 0,
        data: b"q",
    });
    let Body::ConfigSet { length, .. } = rig.codec.decode(&r).expect("d").body else {
        panic!()
    };
    assert_eq!(length, 1);
    // RFC2 keeps the baseline rule (the Linux RFC driver's generation is not
    // known to track the device's).
    let mut rig = Rig::with(Profile::Rfc2, 0);
    let r = rig.ask(Body::SetConfig {
        generation: 0xDEAD,
        offset: 0,
        data: b"q",
    });
    let Body::ConfigSet { length, .. } = rig.codec.decode(&r).expect("d").body else {
        panic!()
    };
    assert_eq!(length, 1);
}

#[test]
fn older_profiles_enable_on_set_vqueue() {
    let mut rig = Rig::with(Profile::V1, 0);
    rig.negotiate(0);
    rig.set_vqueue(SetVqueue {
        flags: 0,
        ..enable_q0()
    });
    assert_eq!(rig.vqueue(0).cur_size, 256);
    assert_eq!(rig.t.queue(0).map(|q| q.enabled), Some(true));
}

proptest! {
    /// Arbitrary frames in arbitrary order never panic the state machine,
    /// and every answered request gets exactly one well-formed response that
    /// echoes the request's token, dev_num and message id.
    #[test]
    fn random_frame_sequences_never_panic(frames in proptest::collection::vec(
        (0u8..4, 0u8..0x50, any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..64)) {
        let mut rig = Rig::new();
        for (ty, id, token, payload) in frames {
            let mut frame = vec![ty, id, 1, 0];
            frame.extend_from_slice(&token.to_le_bytes());
            frame.extend_from_slice(&((8 + payload.len()) as u16).to_le_bytes());
            frame.extend_from_slice(&payload);
            let Ok(msg) = rig.codec.decode(&frame) else { continue };
            let h = rig.t.handle(&mut rig.model, &msg, &mut rig.out).expect("encode never fails with a max-size buffer");
            if let Some(n) = h.response {
                let r = rig.codec.decode(&rig.out[..n]).expect("our responses decode");
                prop_assert_eq!(r.token, token);
                prop_assert_eq!(r.dev_num, 1);
                prop_assert_eq!(rig.out[1], id);
                prop_assert_eq!(rig.out[0], 0x01);
                prop_assert!(msg.body.is_request());
            }
            if h.effect == Effect::Reset && rig.t.reset_pending() {
                rig.t.complete_reset();
            }
            // Invariants the Linux driver checks on every GET_VQUEUE.
            for index in 0..4 {
                let q = rig.vqueue(index);
                prop_assert_eq!(q.flags & !1, 0);
                prop_assert!(q.cur_size <= q.max_size);
                if q.max_size == 0 {
                    prop_assert_eq!((q.cur_size, q.flags, q.desc_addr, q.driver_addr, q.device_addr), (0, 0, 0, 0, 0));
                }
                if q.flags & 1 != 0 {
                    prop_assert!(q.cur_size != 0 && q.desc_addr != 0 && q.driver_addr != 0 && q.device_addr != 0);
                }
            }
        }
    }
}
