//! Property tests: every Body variant round-trips under every profile, and
//! decoding arbitrary bytes never panics and is canonical when it succeeds.

use proptest::prelude::*;
use vmsg_proto::{
    Body, Codec, DecodeError, DeviceInfo, EncodeError, Le32s, Message, Profile, SetVqueue,
    VqueueInfo, bus_id, transport_id,
};

/// Number of `Body` variants; `build` maps a selector onto each of them.
const VARIANTS: u8 = 31;

/// Raw material for one message; the `Body` borrows `data`.
#[derive(Clone, Debug)]
struct Raw {
    sel: u8,
    a: [u32; 6],
    w: [u64; 3],
    uuid: [u8; 16],
    data: Vec<u8>,
    flag: bool,
    dev_num: u16,
    token: u16,
}

fn raw() -> impl Strategy<Value = Raw> {
    (
        0..VARIANTS,
        any::<[u32; 6]>(),
        any::<[u64; 3]>(),
        any::<[u8; 16]>(),
        prop::collection::vec(any::<u8>(), 0..1100),
        any::<bool>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(sel, a, w, uuid, data, flag, dev_num, token)| Raw {
            sel,
            a,
            w,
            uuid,
            data,
            flag,
            dev_num,
            token,
        })
}

fn codec_for(p: Profile) -> impl Strategy<Value = Codec> {
    prop_oneof![Just(0usize), 0usize..260, Just(65535)].prop_map(move |extra| {
        let max = (p.min_max_msg_size() + extra).min(65535);
        Codec::new(p, max).expect("valid codec")
    })
}

fn codec() -> impl Strategy<Value = Codec> {
    prop::sample::select(Profile::ALL.to_vec()).prop_flat_map(codec_for)
}

fn head(data: &[u8], n: usize) -> &[u8] {
    &data[..n.min(data.len())]
}

/// Build a valid message of variant `r.sel` that fits `c`.
fn build<'a>(r: &'a Raw, c: &Codec) -> Message<'a> {
    let p = c.profile();
    let old = p != Profile::V2;
    let [a0, a1, a2, a3, a4, a5] = r.a;
    let [w0, w1, w2] = r.w;
    let feats = {
        let d = head(&r.data, 4 * c.max_feature_blocks());
        Le32s::new(&d[..d.len() / 4 * 4]).expect("multiple of 4")
    };
    let cfg = head(&r.data, c.max_config_data());
    let ev = head(&r.data, c.max_event_config_data());
    let body = match r.sel {
        0 => Body::GetDeviceInfo,
        1 => Body::GetDeviceFeatures {
            block_index: a0,
            num_blocks: a1,
        },
        2 => Body::SetDriverFeatures {
            block_index: a0,
            features: feats,
        },
        3 => Body::GetConfig {
            offset: a0,
            length: a1,
        },
        4 => Body::SetConfig {
            generation: a0,
            offset: a1,
            data: cfg,
        },
        5 => Body::GetDeviceStatus,
        6 => Body::SetDeviceStatus { status: a0 },
        7 => Body::GetVqueue { index: a0 },
        8 => Body::SetVqueue(SetVqueue {
            index: a0,
            flags: a1,
            size: a2,
            reserved: if p == Profile::Rfc2 { 0 } else { a3 },
            desc_addr: w0,
            driver_addr: w1,
            device_addr: w2,
        }),
        9 => Body::ResetVqueue { index: a0 },
        10 => Body::GetShm { shmid: a0 },
        11 => Body::DeviceInfo(DeviceInfo {
            device_id: a0,
            vendor_id: a1,
            device_uuid: if old { [0; 16] } else { r.uuid },
            num_feature_blocks: if old { a2 >> 5 } else { a2 },
            config_size: a3,
            max_virtqueues: a4,
            admin_vq_start: if old { a5 & 0xFFFF } else { a5 },
            admin_vq_count: if old { a5 >> 16 } else { a0 ^ a5 },
        }),
        12 => Body::DeviceFeatures {
            block_index: a0,
            features: feats,
        },
        13 => Body::DriverFeaturesSet,
        14 => Body::Config {
            generation: a0,
            offset: a1,
            data: cfg,
        },
        15 => {
            if r.flag {
                Body::ConfigSet {
                    generation: a0,
                    offset: a1,
                    length: cfg.len() as u32,
                    data: cfg,
                }
            } else {
                Body::ConfigSet {
                    generation: a0,
                    offset: a1,
                    length: a2,
                    data: &[],
                }
            }
        }
        16 => Body::DeviceStatus { status: a0 },
        17 => Body::DeviceStatusSet { status: a0 },
        18 => Body::Vqueue(VqueueInfo {
            index: a0,
            max_size: a1,
            cur_size: a2,
            flags: if old { 0 } else { a3 },
            desc_addr: w0,
            driver_addr: w1,
            device_addr: w2,
        }),
        19 => Body::VqueueSet,
        20 => Body::VqueueReset,
        21 => Body::Shm {
            shmid: a0,
            length: if old { w0 & 0xFFFF_FFFF } else { w0 },
            address: if old { w1 >> 32 } else { w1 },
        },
        22 => {
            if r.flag {
                Body::EventConfig {
                    device_status: a0,
                    generation: a1,
                    offset: a2,
                    length: ev.len() as u32,
                    data: ev,
                }
            } else {
                Body::EventConfig {
                    device_status: a0,
                    generation: a1,
                    offset: a2,
                    length: a3,
                    data: &[],
                }
            }
        }
        23 => Body::EventAvail {
            vq_index: a0,
            next_offset: a1,
        },
        24 => Body::EventUsed { vq_index: a0 },
        25 => Body::GetDevices {
            offset: a0 as u16,
            count: a1 as u16,
        },
        26 => {
            let count = usize::from(a1 as u16)
                .min(c.max_devices_bitmap_bits())
                .min(r.data.len() * 8);
            Body::Devices {
                offset: a0 as u16,
                next_offset: (a0 >> 16) as u16,
                count: count as u16,
                bitmap: &r.data[..count.div_ceil(8)],
            }
        }
        27 => Body::Ping { data: a0 },
        28 => Body::Pong { data: a0 },
        29 => Body::EventDevice {
            device_number: a0 as u16,
            state: a1 as u16,
        },
        _ => {
            let msg_id = 0x80 | (a0 as u8 & 0x7F);
            Body::BusSpecific {
                msg_id,
                response: r.flag && msg_id & 0x40 == 0,
                payload: head(&r.data, c.max_msg_size() - c.header_len()),
            }
        }
    };
    Message {
        dev_num: r.dev_num,
        token: if p == Profile::Rfc2 { 0 } else { r.token },
        body,
    }
}

/// Payload byte ranges (relative to the payload) that encode zeroes
/// whatever was received: reserved words the typed form does not keep.
fn zeroed_on_encode(p: Profile, body: &Body<'_>) -> Option<core::ops::Range<usize>> {
    match (p, body) {
        (Profile::V2, Body::Shm { .. }) => Some(4..8),
        (Profile::V1, Body::Vqueue(_)) => Some(12..16),
        _ => None,
    }
}

fn frame() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..400)
}

/// decode(encode(x)) == x for a valid message, with exact sizes.
fn check_round_trip(c: Codec, r: &Raw) -> Result<(), TestCaseError> {
    let msg = build(r, &c);
    let mut out = vec![0u8; c.max_msg_size()];
    let n = c.encode(&msg, &mut out).expect("valid message encodes");
    prop_assert_eq!(n, c.encoded_len(&msg));
    let size = c.msg_size(&msg);
    let hl = c.header_len();
    prop_assert_eq!(
        usize::from(u16::from_le_bytes([out[hl - 2], out[hl - 1]])),
        size
    );
    if c.profile().fixed_frames() {
        prop_assert_eq!(n, c.max_msg_size());
        prop_assert!(out[size..n].iter().all(|&b| b == 0));
    } else {
        prop_assert_eq!(n, size);
    }
    prop_assert_eq!(c.decode(&out[..n]), Ok(msg));
    // A frame exactly msg_size long decodes too (no reliance on padding).
    prop_assert_eq!(c.decode(&out[..size]), Ok(msg));
    // Too small a buffer is an error, never a panic or a partial success.
    let k = (r.a[5] as usize) % n;
    prop_assert_eq!(
        c.encode(&msg, &mut out[..k]),
        Err(EncodeError::BufferTooSmall { need: n, have: k })
    );
    Ok(())
}

/// Decoding arbitrary bytes, when it succeeds, yields the canonical form:
/// re-encoding reproduces the received bytes except ignored `type` bits,
/// bytes past the canonical size (forward-compatible extensions) and
/// reserved words the typed form does not keep.
fn check_canonical(
    c: Codec,
    mut frame: Vec<u8>,
    patch: Option<(u8, u8, u16)>,
) -> Result<(), TestCaseError> {
    let hl = c.header_len();
    // Bias towards well-formed headers so decoding gets past them.
    if let Some((ty, id, size)) = patch {
        if frame.len() >= hl {
            const IDS: [u8; 20] = [
                0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x40, 0x41, 0x42,
                0x80, 0x84, 0xBF, 0xC0, 0xFF, 0x00,
            ];
            frame[0] = if ty & 0x80 != 0 { ty } else { ty & 3 };
            frame[1] = IDS[usize::from(id) % IDS.len()];
            let span = frame.len().min(c.max_msg_size()) - hl + 1;
            let size = (hl + usize::from(size) % span) as u16;
            frame[hl - 2..hl].copy_from_slice(&size.to_le_bytes());
        }
    }
    let Ok(msg) = c.decode(&frame) else {
        return Ok(());
    };
    let mut out = vec![0u8; c.max_msg_size()];
    let n = c
        .encode(&msg, &mut out)
        .expect("decoded message re-encodes");
    let out = &out[..n];
    prop_assert_eq!(c.decode(out), Ok(msg));
    let n = c.msg_size(&msg);
    let rx_size = usize::from(u16::from_le_bytes([frame[hl - 2], frame[hl - 1]]));
    prop_assert_eq!(out[0], frame[0] & 3);
    prop_assert_eq!(&out[1..hl - 2], &frame[1..hl - 2]);
    if c.profile() != Profile::Rfc2 {
        // Larger-than-canonical msg_size = forward-compatible extension.
        prop_assert!(rx_size >= n);
    }
    let mut got = out[hl..n].to_vec();
    let mut want = frame[hl..n].to_vec();
    if let Some(r) = zeroed_on_encode(c.profile(), &msg.body) {
        prop_assert!(got[r.clone()].iter().all(|&b| b == 0));
        got[r.clone()].fill(0);
        want[r].fill(0);
    }
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_v2(c in codec_for(Profile::V2), r in raw()) {
        check_round_trip(c, &r)?;
    }

    #[test]
    fn round_trip_v1(c in codec_for(Profile::V1), r in raw()) {
        check_round_trip(c, &r)?;
    }

    #[test]
    fn round_trip_rfc2(c in codec_for(Profile::Rfc2), r in raw()) {
        check_round_trip(c, &r)?;
    }

    #[test]
    fn canonical_v2(c in codec_for(Profile::V2), frame in frame(), patch in any::<Option<(u8, u8, u16)>>()) {
        check_canonical(c, frame, patch)?;
    }

    #[test]
    fn canonical_v1(c in codec_for(Profile::V1), frame in frame(), patch in any::<Option<(u8, u8, u16)>>()) {
        check_canonical(c, frame, patch)?;
    }

    #[test]
    fn canonical_rfc2(c in codec_for(Profile::Rfc2), frame in frame(), patch in any::<Option<(u8, u8, u16)>>()) {
        check_canonical(c, frame, patch)?;
    }

    #[test]
    fn truly_arbitrary_bytes_never_panic(
        c in codec(),
        frame in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        match c.decode(&frame) {
            Ok(msg) => {
                let mut out = vec![0u8; c.max_msg_size()];
                prop_assert!(c.encode(&msg, &mut out).is_ok());
            }
            Err(DecodeError::ShortFrame { len }) => prop_assert!(len < c.header_len()),
            Err(_) => {}
        }
        let _ = c.peek_header(&frame);
        let _ = vmsg_proto::peek_header(&frame);
    }
}

#[test]
fn selector_covers_every_variant() {
    // Guard against a new Body variant without a generator: every selector
    // yields a distinct (namespace, direction, id) triple.
    let c = Codec::new(Profile::V2, 264).expect("valid codec");
    let mut seen = std::collections::BTreeSet::new();
    for sel in 0..VARIANTS {
        let r = Raw {
            sel,
            a: [0; 6],
            w: [0; 3],
            uuid: [0; 16],
            data: vec![],
            flag: false,
            dev_num: 0,
            token: 0,
        };
        let b = build(&r, &c).body;
        assert!(seen.insert((b.msg_type(), b.msg_id())), "{b:?}");
    }
    assert_eq!(seen.len(), usize::from(VARIANTS));
    assert!(seen.contains(&(0, transport_id::GET_SHM)));
    assert!(seen.contains(&(3, bus_id::GET_DEVICES)));
}
