//! Byte examples of §9, round trips per profile and decoder robustness.

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|t| u8::from_str_radix(t, 16).expect("hex byte"))
        .collect()
}

#[test]
fn s9_get_device_info_request_bytes() {
    let f = Request::GetDeviceInfo.encode(1, 5).expect("encode");
    assert_eq!(f, unhex("00 02 01 00 05 00 08 00"));
    let (h, p) = split_frame(&f).expect("split");
    assert_eq!(
        Request::decode(&h, p).expect("decode"),
        Request::GetDeviceInfo
    );
}

#[test]
fn s9_get_device_info_response_bytes() {
    let mut want = unhex("01 02 01 00 05 00 34 00 01 00 00 00 51 45 4D 55");
    want.extend_from_slice(&[0u8; 16]);
    want.extend(unhex(
        "02 00 00 00 0C 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00",
    ));
    let info = DeviceInfo {
        device_id: 1,
        vendor_id: 0x554D_4551,
        device_uuid: [0; 16],
        num_feature_blocks: 2,
        config_size: 12,
        max_virtqueues: 3,
        admin_vq_start: 0,
        admin_vq_count: 0,
    };
    assert_eq!(
        Response::DeviceInfo(info).encode(1, 5).expect("encode"),
        want
    );
    let got = check_response(&Request::GetDeviceInfo, 1, 5, &want, 264).expect("valid");
    assert_eq!(got, Response::DeviceInfo(info));
}

#[test]
fn s9_set_vqueue_bytes() {
    let req = Request::SetVqueue(SetVqueue {
        index: 0,
        flags: vq_flags::STATE_ENABLE,
        size: 256,
        reserved: 0,
        desc_addr: 0x1_0000,
        driver_addr: 0x1_1000,
        device_addr: 0x1_2000,
    });
    let want = unhex(
        "00 0A 01 00 07 00 30 00 00 00 00 00 01 00 00 00 00 01 00 00 00 00 00 00 \
             00 00 01 00 00 00 00 00 00 10 01 00 00 00 00 00 00 20 01 00 00 00 00 00",
    );
    assert_eq!(req.encode(1, 7).expect("encode"), want);
    let (h, p) = split_frame(&want).expect("split");
    assert_eq!(Request::decode(&h, p).expect("decode"), req);
    let resp = unhex("01 0A 01 00 07 00 08 00");
    assert_eq!(Response::SetVqueue.encode(1, 7).expect("encode"), resp);
    assert_eq!(
        check_response(&req, 1, 7, &resp, 52).expect("valid"),
        Response::SetVqueue
    );
}

#[test]
fn s9_event_used_bytes() {
    let f = unhex("00 42 01 00 00 00 0C 00 02 00 00 00");
    let (h, p) = split_frame(&f).expect("split");
    assert!(h.is_event());
    assert_eq!(
        Event::decode(&h, p).expect("decode"),
        Event::Used {
            dev_num: 1,
            vq_index: 2
        }
    );
    assert_eq!(
        Event::Used {
            dev_num: 1,
            vq_index: 2
        }
        .encode(0)
        .expect("encode"),
        f
    );
}

#[test]
fn s4_get_devices_example() {
    // offset 0, count 16, bitmap 0x25 0x00, next_offset 16 => devices 0, 2, 5.
    let resp = Response::Devices {
        offset: 0,
        next_offset: 16,
        count: 16,
        bitmap: vec![0x25, 0],
    };
    let f = resp.encode(0, 9).expect("encode");
    assert_eq!(f, unhex("03 02 00 00 09 00 10 00 00 00 10 00 10 00 25 00"));
    let req = Request::GetDevices {
        offset: 0,
        count: 16,
    };
    assert_eq!(check_response(&req, 0, 9, &f, 264).expect("valid"), resp);
}

#[test]
fn response_validation_rejects_mismatches() {
    let req = Request::GetDeviceStatus;
    let good = Response::DeviceStatus { status: 3 }
        .encode(2, 9)
        .expect("encode");
    assert!(check_response(&req, 2, 9, &good, 52).is_ok());
    // wrong token, dev_num, msg_id, request bit, namespace
    assert!(matches!(
        check_response(&req, 2, 8, &good, 52),
        Err(WireError::HeaderMismatch { field: "token", .. })
    ));
    assert!(matches!(
        check_response(&req, 3, 9, &good, 52),
        Err(WireError::HeaderMismatch {
            field: "dev_num",
            ..
        })
    ));
    let other = Request::SetDeviceStatus { status: 0 };
    assert!(matches!(
        check_response(&other, 2, 9, &good, 52),
        Err(WireError::HeaderMismatch {
            field: "msg_id",
            ..
        })
    ));
    let mut req_bit = good.clone();
    req_bit[0] = 0;
    assert!(check_response(&req, 2, 9, &req_bit, 52).is_err());
    let mut bus = good.clone();
    bus[0] = 3;
    assert!(check_response(&req, 2, 9, &bus, 52).is_err());
    // reserved type bits are ignored on receive
    let mut reserved = good.clone();
    reserved[0] |= 0x80;
    assert!(check_response(&req, 2, 9, &reserved, 52).is_ok());
    // too short payload, truncated, above max
    let short = RawFrame::new(1, msg::GET_DEVICE_STATUS)
        .dev_num(2)
        .token(9)
        .payload(&[0, 0])
        .build();
    assert!(matches!(
        check_response(&req, 2, 9, &short, 52),
        Err(WireError::PayloadTooShort { .. })
    ));
    assert!(matches!(
        check_response(&req, 2, 9, &good[..10], 52),
        Err(WireError::Truncated { .. })
    ));
    let big = RawFrame::new(1, msg::GET_DEVICE_STATUS)
        .dev_num(2)
        .token(9)
        .payload(&[0; 60])
        .build();
    assert!(matches!(
        check_response(&req, 2, 9, &big, 52),
        Err(WireError::AboveMax { .. })
    ));
    // larger than minimum within max is accepted (forward compatibility)
    let larger = RawFrame::new(1, msg::GET_DEVICE_STATUS)
        .dev_num(2)
        .token(9)
        .payload(&[3, 0, 0, 0, 9, 9])
        .build();
    assert_eq!(
        check_response(&req, 2, 9, &larger, 52).expect("ok"),
        Response::DeviceStatus { status: 3 }
    );
    // padding beyond msg_size is ignored
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 4]);
    assert!(check_response(&req, 2, 9, &padded, 52).is_ok());
}

#[test]
fn echo_checks() {
    let req = Request::GetDeviceFeatures {
        block_index: 0,
        num_blocks: 2,
    };
    let bad = Response::DeviceFeatures {
        block_index: 0,
        features: vec![1],
    }
    .encode(0, 1)
    .expect("encode");
    assert!(matches!(
        check_response(&req, 0, 1, &bad, 264),
        Err(WireError::EchoMismatch {
            field: "num_blocks",
            ..
        })
    ));
    let req = Request::GetConfig {
        offset: 4,
        length: 2,
    };
    let bad = Response::Config {
        generation: 0,
        offset: 0,
        data: vec![1, 2],
    }
    .encode(0, 1)
    .expect("encode");
    assert!(check_response(&req, 0, 1, &bad, 264).is_err());
    let req = Request::SetConfig {
        generation: 0,
        offset: 0,
        data: vec![1, 2, 3],
    };
    let partial = Response::SetConfig {
        generation: 0,
        offset: 0,
        length: 2,
        data: vec![],
    }
    .encode(0, 1)
    .expect("encode");
    assert!(matches!(
        check_response(&req, 0, 1, &partial, 264),
        Err(WireError::Invalid { .. })
    ));
    let rejected = Response::SetConfig {
        generation: 0,
        offset: 0,
        length: 0,
        data: vec![],
    }
    .encode(0, 1)
    .expect("encode");
    assert!(check_response(&req, 0, 1, &rejected, 264).is_ok());
    let req = Request::GetDevices {
        offset: 16,
        count: 8,
    };
    let back = Response::Devices {
        offset: 16,
        next_offset: 8,
        count: 8,
        bitmap: vec![0],
    }
    .encode(0, 1)
    .expect("encode");
    assert!(check_response(&req, 0, 1, &back, 264).is_err());
    let req = Request::Ping { data: 0xdead_beef };
    let wrong = Response::Ping { data: 0xdead_beee }
        .encode(0, 1)
        .expect("encode");
    assert!(check_response(&req, 0, 1, &wrong, 264).is_err());
}

#[test]
fn event_config_sizes() {
    let with = Event::Config {
        dev_num: 3,
        body: EventConfig {
            device_status: 15,
            generation: 7,
            offset: 2,
            length: 2,
            data: vec![9, 9],
        },
    };
    let f = with.encode(0).expect("encode");
    assert_eq!(f.len(), 26);
    let (h, p) = split_frame(&f).expect("split");
    assert_eq!(Event::decode(&h, p).expect("decode"), with);
    let without = Event::Config {
        dev_num: 3,
        body: EventConfig {
            device_status: 15,
            generation: 7,
            offset: 0,
            length: 0,
            data: vec![],
        },
    };
    let f = without.encode(0).expect("encode");
    assert_eq!(f.len(), 24);
    let (h, p) = split_frame(&f).expect("split");
    assert_eq!(Event::decode(&h, p).expect("decode"), without);
    // A range without data is accepted (§2 strict SHOULD), partial data is not.
    let range = RawFrame::new(0, msg::EVENT_CONFIG)
        .payload(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0])
        .build();
    let (h, p) = split_frame(&range).expect("split");
    assert!(
        matches!(Event::decode(&h, p), Ok(Event::Config { body, .. }) if body.length == 4 && body.data.is_empty())
    );
    let partial = RawFrame::new(0, msg::EVENT_CONFIG)
        .payload(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 2])
        .build();
    let (h, p) = split_frame(&partial).expect("split");
    assert!(Event::decode(&h, p).is_err());
    // EVENT_USED must be exactly 12 bytes
    let long = RawFrame::new(0, msg::EVENT_USED).payload(&[0; 8]).build();
    let (h, p) = split_frame(&long).expect("split");
    assert!(Event::decode(&h, p).is_err());
}

#[test]
fn raw_frames() {
    let f = RawFrame::new(0, msg::GET_VQUEUE)
        .dev_num(1)
        .token(2)
        .payload(&[0; 4])
        .msg_size(40)
        .build();
    assert_eq!(f.len(), 12);
    assert_eq!(Header::decode(&f).expect("hdr").msg_size, 40);
    assert!(matches!(split_frame(&f), Err(WireError::Truncated { .. })));
    let f = RawFrame::new(0, msg::GET_DEVICE_STATUS).truncate(5).build();
    assert_eq!(
        split_frame(&f),
        Err(WireError::ShortFrame { len: 5, need: 8 })
    );
    let f = RawFrame::new(0, msg::GET_DEVICE_STATUS).msg_size(4).build();
    assert_eq!(
        split_frame(&f),
        Err(WireError::MsgSizeBelowHeader { msg_size: 4 })
    );
    let f = RawFrame::from_request(&Request::Ping { data: 1 }, 7, 3).build();
    assert_eq!(f, unhex("02 03 00 00 03 00 0C 00 01 00 00 00"));
}

// ---- golden vectors of the older profiles (interop §2.1–§2.2, reference §7.1)

#[test]
fn rfc2_header_has_no_token() {
    let f = Request::GetDeviceInfo
        .encode_for(Profile::Rfc2, 1, 99)
        .expect("encode");
    assert_eq!(f, unhex("00 02 01 00 06 00"));
    let (h, p) = split_frame_for(Profile::Rfc2, &f).expect("split");
    assert_eq!((h.token, h.msg_size, p.len()), (0, 6, 0));
    assert_eq!(
        split_frame_for(Profile::Rfc2, &f[..5]),
        Err(WireError::ShortFrame { len: 5, need: 6 })
    );
    // Padding after msg_size (fixed 44-byte frames) is ignored.
    let padded = pad_frame(f.clone(), 44);
    assert_eq!(padded.len(), 44);
    assert_eq!(
        split_frame_for(Profile::Rfc2, &padded)
            .expect("split")
            .1
            .len(),
        0
    );
}

#[test]
fn rfc2_device_info_response_bytes() {
    // device_id 4, vendor "QEMU", 64 feature bits, config 0, 1 queue, no admin queues.
    let want = unhex(
        "01 02 01 00 1e 00 04 00 00 00 51 45 4d 55 40 00 00 00 00 00 00 00 \
             01 00 00 00 00 00 00 00",
    );
    let info = DeviceInfo {
        device_id: 4,
        vendor_id: 0x554D_4551,
        num_feature_blocks: 2,
        max_virtqueues: 1,
        ..Default::default()
    };
    let f = Response::DeviceInfo(info)
        .encode_for(Profile::Rfc2, 1, 0)
        .expect("encode");
    assert_eq!(f, want);
    // The token is not on the wire, so any expected token is fine.
    let got =
        check_response_for(Profile::Rfc2, &Request::GetDeviceInfo, 1, 7, &want, 44).expect("valid");
    assert_eq!(got, Response::DeviceInfo(info));
    // v1 has the same payload behind an 8-byte header.
    let v1 = Response::DeviceInfo(info)
        .encode_for(Profile::V1, 1, 5)
        .expect("encode");
    assert_eq!(&v1[..8], &unhex("01 02 01 00 05 00 20 00")[..]);
    assert_eq!(&v1[8..], &want[6..]);
}

#[test]
fn old_profiles_reject_feature_bits_not_multiple_of_32() {
    let mut f = Response::DeviceInfo(DeviceInfo {
        device_id: 4,
        num_feature_blocks: 2,
        ..Default::default()
    })
    .encode_for(Profile::V1, 0, 1)
    .expect("encode");
    f[16] = 48; // num_feature_bits = 48
    assert!(matches!(
        check_response_for(Profile::V1, &Request::GetDeviceInfo, 0, 1, &f, 48),
        Err(WireError::Invalid { .. })
    ));
    // admin fields are le16 there: 70000 does not fit.
    let big = Response::DeviceInfo(DeviceInfo {
        admin_vq_count: 70000,
        ..Default::default()
    });
    assert!(big.encode_for(Profile::Rfc2, 0, 0).is_err());
    assert!(big.encode_for(Profile::V2, 0, 0).is_ok());
}

#[test]
fn rfc2_vqueue_layout_is_unaligned() {
    let set = Request::SetVqueue(SetVqueue {
        index: 0,
        flags: 0,
        size: 256,
        reserved: 0,
        desc_addr: 0x5fc0_0000,
        driver_addr: 0x5fc0_1000,
        device_addr: 0x5fc0_2000,
    });
    let want = unhex(
        "00 0a 01 00 2a 00 00 00 00 00 00 00 00 00 00 01 00 00 \
             00 00 c0 5f 00 00 00 00 00 10 c0 5f 00 00 00 00 00 20 c0 5f 00 00 00 00",
    );
    assert_eq!(set.encode_for(Profile::Rfc2, 1, 3).expect("encode"), want);
    let (h, p) = split_frame_for(Profile::Rfc2, &want).expect("split");
    assert_eq!(
        Request::decode_for(Profile::Rfc2, &h, p).expect("decode"),
        set
    );
    // v1: reserved0 and reserved1 words, 8-byte fields aligned at 16.
    let v1 = set.encode_for(Profile::V1, 1, 3).expect("encode");
    assert_eq!(v1.len(), 48);
    assert_eq!(&v1[..8], &unhex("00 0a 01 00 03 00 30 00")[..]);
    assert_eq!(&v1[24..28], &0x5fc0_0000u32.to_le_bytes()[..]);
    // GET_VQUEUE response: RFC2 36 bytes, flags not on the wire.
    let info = VqueueInfo {
        index: 0,
        max_size: 256,
        cur_size: 256,
        flags: 1,
        desc_addr: 0x5fc0_0000,
        driver_addr: 0x5fc0_1000,
        device_addr: 0x5fc0_2000,
    };
    let f = Response::Vqueue(info)
        .encode_for(Profile::Rfc2, 1, 0)
        .expect("encode");
    assert_eq!(f.len(), 42);
    assert_eq!(&f[6..18], &unhex("00 00 00 00 00 01 00 00 00 01 00 00")[..]);
    assert_eq!(&f[18..22], &0x5fc0_0000u32.to_le_bytes()[..]);
    let got = check_response_for(
        Profile::Rfc2,
        &Request::GetVqueue { index: 0 },
        1,
        0,
        &f,
        44,
    )
    .expect("valid");
    assert_eq!(got, Response::Vqueue(VqueueInfo { flags: 0, ..info }));
    // v1 carries the reserved word where v2 has flags; it must read 0.
    assert!(info.check_consistency_for(Profile::V1).is_err());
    assert!(info.check_consistency_for(Profile::V2).is_ok());
}

#[test]
fn old_profiles_shm_and_devices_layouts() {
    let shm = Response::Shm {
        shmid: 1,
        reserved: 0,
        length: 0x1000,
        address: 0x8000,
    };
    let f = shm.encode_for(Profile::V1, 2, 4).expect("encode");
    assert_eq!(
        f,
        unhex("01 0c 02 00 04 00 14 00 01 00 00 00 00 10 00 00 00 80 00 00")
    );
    let big = Response::Shm {
        shmid: 1,
        reserved: 0,
        length: 1 << 32,
        address: 0,
    };
    assert!(big.encode_for(Profile::Rfc2, 2, 0).is_err());
    // GET_DEVICES: offset, count, next_offset (fields 2 and 4 swapped vs v2).
    let devs = Response::Devices {
        offset: 0,
        next_offset: 16,
        count: 8,
        bitmap: vec![0x25],
    };
    let f = devs.encode_for(Profile::V1, 0, 9).expect("encode");
    assert_eq!(f, unhex("03 02 00 00 09 00 0f 00 00 00 08 00 10 00 25"));
    let req = Request::GetDevices {
        offset: 0,
        count: 8,
    };
    assert_eq!(
        check_response_for(Profile::V1, &req, 0, 9, &f, 48).expect("valid"),
        devs
    );
    let f = devs.encode_for(Profile::Rfc2, 0, 0).expect("encode");
    assert_eq!(f, unhex("03 02 00 00 0d 00 00 00 08 00 10 00 25"));
    // v1 alignment: count and next_offset multiples of 8, next ≥ offset + count.
    for (count, next, bitmap) in [
        (5u16, 16u16, vec![0x05]),
        (8, 12, vec![0x05]),
        (8, 0, vec![1]),
    ] {
        let f = Response::Devices {
            offset: 0,
            next_offset: next,
            count,
            bitmap,
        }
        .encode_for(Profile::V1, 0, 9)
        .expect("encode");
        let r = check_response_for(Profile::V1, &req, 0, 9, &f, 48);
        assert_eq!(r.is_ok(), next == 0 && count == 8, "{count} {next}: {r:?}");
    }
}

#[test]
fn rfc2_events_and_raw_frames() {
    let ev = Event::Avail {
        dev_num: 1,
        vq_index: 2,
        next_offset: 0,
    };
    let f = ev.encode_for(Profile::Rfc2, 5).expect("encode");
    assert_eq!(f, unhex("00 41 01 00 0e 00 02 00 00 00 00 00 00 00"));
    let (h, p) = split_frame_for(Profile::Rfc2, &f).expect("split");
    assert_eq!(Event::decode(&h, p).expect("decode"), ev);
    let raw = RawFrame::from_request_for(Profile::Rfc2, &Request::Ping { data: 1 }, 7, 3);
    assert_eq!(raw.build(), unhex("02 03 00 00 0a 00 01 00 00 00"));
    assert_eq!(raw.header().token, 3);
}

#[test]
fn profile_names() {
    for p in Profile::ALL {
        assert_eq!(p.name().parse::<Profile>().expect("parse"), p);
    }
    assert!("v3".parse::<Profile>().is_err());
}

mod prop {
    use super::super::*;
    use proptest::prelude::*;

    fn any_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::GetDeviceInfo),
            Just(Request::GetDeviceStatus),
            (any::<u32>(), 0u32..60).prop_map(|(b, n)| Request::GetDeviceFeatures {
                block_index: b,
                num_blocks: n
            }),
            (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..60)).prop_map(|(b, f)| {
                Request::SetDriverFeatures {
                    block_index: b,
                    features: f,
                }
            }),
            (any::<u32>(), any::<u32>()).prop_map(|(o, l)| Request::GetConfig {
                offset: o,
                length: l
            }),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..240)
            )
                .prop_map(|(g, o, d)| Request::SetConfig {
                    generation: g,
                    offset: o,
                    data: d
                }),
            any::<u32>().prop_map(|s| Request::SetDeviceStatus { status: s }),
            any::<u32>().prop_map(|i| Request::GetVqueue { index: i }),
            any::<u32>().prop_map(|i| Request::ResetVqueue { index: i }),
            any::<u32>().prop_map(|i| Request::GetShm { shmid: i }),
            (any::<[u32; 4]>(), any::<[u64; 3]>()).prop_map(|(a, b)| Request::SetVqueue(
                SetVqueue {
                    index: a[0],
                    flags: a[1],
                    size: a[2],
                    reserved: a[3],
                    desc_addr: b[0],
                    driver_addr: b[1],
                    device_addr: b[2],
                }
            )),
            (any::<u16>(), any::<u16>()).prop_map(|(o, c)| Request::GetDevices {
                offset: o,
                count: c
            }),
            any::<u32>().prop_map(|d| Request::Ping { data: d }),
        ]
    }

    fn any_profile() -> impl Strategy<Value = Profile> {
        prop_oneof![Just(Profile::V2), Just(Profile::V1), Just(Profile::Rfc2)]
    }

    proptest! {
        #[test]
        fn request_roundtrip_per_profile(
            req in any_request(),
            profile in any_profile(),
            dev in any::<u16>(),
            tok in any::<u16>(),
        ) {
            let f = req.encode_for(profile, dev, tok).expect("encode");
            let (h, p) = split_frame_for(profile, &f).expect("split");
            prop_assert_eq!(usize::from(h.msg_size), f.len());
            prop_assert_eq!(h.token, if profile.has_token() { tok } else { 0 });
            let mut want = req.clone();
            if let (Profile::Rfc2, Request::SetVqueue(s)) = (profile, &mut want) {
                s.reserved = 0;
            }
            prop_assert_eq!(Request::decode_for(profile, &h, p).expect("decode"), want);
        }

        #[test]
        fn decoders_never_panic_per_profile(
            profile in any_profile(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            if let Ok((h, p)) = split_frame_for(profile, &bytes) {
                let _ = Request::decode_for(profile, &h, p);
                let _ = Response::decode_for(profile, &h, p);
                let _ = Event::decode(&h, p);
            }
        }

        #[test]
        fn request_roundtrip(req in any_request(), dev in any::<u16>(), tok in any::<u16>()) {
            let f = req.encode(dev, tok).expect("encode");
            let (h, p) = split_frame(&f).expect("split");
            prop_assert_eq!(usize::from(h.msg_size), f.len());
            prop_assert_eq!(h.token, tok);
            prop_assert_eq!(Request::decode(&h, p).expect("decode"), req);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok((h, p)) = split_frame(&bytes) {
                let _ = Request::decode(&h, p);
                let _ = Response::decode(&h, p);
                let _ = Event::decode(&h, p);
            }
        }
    }
}
