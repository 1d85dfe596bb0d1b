//! Profile V1 (spec PATCH v1 / "G3": Linux PoC v1, QEMU RFC, OP-TEE) golden
//! vectors, hand-derived from virtio-msg-v2.md §3/§4/§7 (v1 columns) and
//! interop.md §2.2 ("G3 differences"). Only the messages whose layout
//! differs from v2 get their own vector, plus a sample of shared ones.

mod common;

use common::{golden, hex};
use vmsg_proto::{
    Body, Codec, DecodeError, DeviceInfo, EncodeError, Le32s, Message, Profile, SetVqueue,
    VqueueInfo, device_bus_state,
};

/// QEMU RFC maximum (48 bytes).
fn v1() -> Codec {
    Codec::new(Profile::V1, 48).expect("valid codec")
}

fn m(dev_num: u16, token: u16, body: Body<'_>) -> Message<'_> {
    Message {
        dev_num,
        token,
        body,
    }
}

#[test]
fn limits() {
    let c = v1();
    assert_eq!(c.header_len(), 8);
    assert_eq!(c.max_config_data(), 28);
    assert_eq!(c.max_feature_blocks(), 8);
    assert!(
        Codec::new(Profile::V1, 44).is_err(),
        "44 cannot carry GET/SET_VQUEUE"
    );
}

#[test]
fn device_info_has_bits_no_uuid_and_le16_admin() {
    golden(
        &v1(),
        "01 02 01 00 05 00 20 00 | 01 00 00 00 | 51 45 4D 55 | 40 00 00 00 |
         0C 00 00 00 | 03 00 00 00 | 02 00 | 01 00",
        m(
            1,
            5,
            Body::DeviceInfo(DeviceInfo {
                device_id: 1,
                vendor_id: 0x554D_4551,
                device_uuid: [0; 16],
                num_feature_blocks: 2,
                config_size: 12,
                max_virtqueues: 3,
                admin_vq_start: 2,
                admin_vq_count: 1,
            }),
        ),
    );
    golden(
        &v1(),
        "00 02 01 00 05 00 08 00",
        m(1, 5, Body::GetDeviceInfo),
    );
}

#[test]
fn device_info_rejects_partial_feature_words() {
    assert_eq!(
        v1().decode(&hex(
            "01 02 01 00 05 00 20 00 | 01 00 00 00 | 00 00 00 00 | 21 00 00 00 |
             00 00 00 00 | 01 00 00 00 | 00 00 | 00 00"
        )),
        Err(DecodeError::InvalidField {
            msg_id: 0x02,
            field: "num_feature_bits"
        })
    );
    assert_eq!(
        v1().decode(&hex("01 02 01 00 05 00 1F 00 | 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")),
        Err(DecodeError::PayloadTooShort {
            msg_id: 0x02,
            need: 24,
            have: 23
        })
    );
}

#[test]
fn device_info_unrepresentable_fields() {
    let mut out = [0u8; 48];
    for (info, what) in [
        (
            DeviceInfo {
                admin_vq_start: 0x1_0000,
                ..DeviceInfo::default()
            },
            "admin_vq_start",
        ),
        (
            DeviceInfo {
                admin_vq_count: 0x1_0000,
                ..DeviceInfo::default()
            },
            "admin_vq_count",
        ),
        (
            DeviceInfo {
                num_feature_blocks: 0x0800_0000,
                ..DeviceInfo::default()
            },
            "num_feature_blocks",
        ),
    ] {
        match v1().encode(&m(0, 0, Body::DeviceInfo(info)), &mut out) {
            Err(EncodeError::Inconsistent(s)) => assert!(s.contains(what), "{s}"),
            other => panic!("{info:?}: {other:?}"),
        }
    }
    // The UUID does not exist on the v1 wire: it is simply not sent.
    let info = DeviceInfo {
        device_id: 4,
        device_uuid: [7; 16],
        ..DeviceInfo::default()
    };
    let n = v1()
        .encode(&m(0, 0, Body::DeviceInfo(info)), &mut out)
        .expect("encodes");
    assert_eq!(n, 32);
    assert_eq!(
        v1().decode(&out[..n]).expect("decodes").body,
        Body::DeviceInfo(DeviceInfo {
            device_uuid: [0; 16],
            ..info
        })
    );
}

#[test]
fn get_vqueue_word_12_is_reserved() {
    golden(
        &v1(),
        "01 09 01 00 06 00 30 00 | 00 00 00 00 | 00 01 00 00 | 00 01 00 00 | 00 00 00 00 |
         00 00 01 00 00 00 00 00 | 00 10 01 00 00 00 00 00 | 00 20 01 00 00 00 00 00",
        m(
            1,
            6,
            Body::Vqueue(VqueueInfo {
                index: 0,
                max_size: 256,
                cur_size: 256,
                flags: 0,
                desc_addr: 0x1_0000,
                driver_addr: 0x1_1000,
                device_addr: 0x1_2000,
            }),
        ),
    );
    // A non-zero reserved word is not reported as flags ...
    let b = hex(
        "01 09 01 00 06 00 30 00 | 00 00 00 00 | 00 01 00 00 | 00 00 00 00 | 01 00 00 00 |
         00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00",
    );
    let msg = v1().decode(&b).expect("decodes");
    assert!(matches!(
        msg.body,
        Body::Vqueue(VqueueInfo { flags: 0, .. })
    ));
    // ... and v2 flags are not transmitted.
    let mut out = [0xEEu8; 48];
    let info = VqueueInfo {
        flags: 1,
        ..VqueueInfo::default()
    };
    let n = v1()
        .encode(&m(0, 0, Body::Vqueue(info)), &mut out)
        .expect("encodes");
    assert_eq!(&out[20..24], &[0, 0, 0, 0]);
    assert_eq!(n, 48);
}

#[test]
fn set_vqueue_reserved_words_map_to_flags_and_reserved() {
    golden(
        &v1(),
        "00 0A 01 00 07 00 30 00 | 01 00 00 00 | 00 00 00 00 | 80 00 00 00 | 00 00 00 00 |
         00 00 01 00 00 00 00 00 | 00 10 01 00 00 00 00 00 | 00 20 01 00 00 00 00 00",
        m(
            1,
            7,
            Body::SetVqueue(SetVqueue {
                index: 1,
                flags: 0,
                size: 128,
                reserved: 0,
                desc_addr: 0x1_0000,
                driver_addr: 0x1_1000,
                device_addr: 0x1_2000,
            }),
        ),
    );
    // Non-zero reserved0 / reserved1 are carried raw for the transport to judge.
    golden(
        &v1(),
        "00 0A 01 00 07 00 30 00 | 01 00 00 00 | 05 00 00 00 | 80 00 00 00 | 06 00 00 00 |
         00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00",
        m(
            1,
            7,
            Body::SetVqueue(SetVqueue {
                index: 1,
                flags: 5,
                size: 128,
                reserved: 6,
                ..SetVqueue::default()
            }),
        ),
    );
    golden(&v1(), "01 0A 01 00 07 00 08 00", m(1, 7, Body::VqueueSet));
}

#[test]
fn get_shm_is_three_le32() {
    golden(
        &v1(),
        "00 0C 01 00 08 00 0C 00 | 01 00 00 00",
        m(1, 8, Body::GetShm { shmid: 1 }),
    );
    golden(
        &v1(),
        "01 0C 01 00 08 00 14 00 | 01 00 00 00 | 00 10 00 00 | 00 00 00 80",
        m(
            1,
            8,
            Body::Shm {
                shmid: 1,
                length: 0x1000,
                address: 0x8000_0000,
            },
        ),
    );
    let mut out = [0u8; 48];
    for (length, address) in [(1u64 << 32, 0u64), (0, 1 << 32)] {
        assert!(matches!(
            v1().encode(
                &m(
                    1,
                    8,
                    Body::Shm {
                        shmid: 1,
                        length,
                        address
                    }
                ),
                &mut out
            ),
            Err(EncodeError::Inconsistent(_))
        ));
    }
}

#[test]
fn get_devices_response_order_is_offset_count_next() {
    golden(
        &v1(),
        "02 02 00 00 01 00 0C 00 | 00 00 | 08 00",
        m(
            0,
            1,
            Body::GetDevices {
                offset: 0,
                count: 8,
            },
        ),
    );
    golden(
        &v1(),
        "03 02 00 00 01 00 0F 00 | 00 00 | 08 00 | 10 00 | 25",
        m(
            0,
            1,
            Body::Devices {
                offset: 0,
                next_offset: 16,
                count: 8,
                bitmap: &[0x25],
            },
        ),
    );
    golden(
        &v1(),
        "03 02 00 00 01 00 10 00 | 08 00 | 10 00 | 00 00 | 00 81",
        m(
            0,
            1,
            Body::Devices {
                offset: 8,
                next_offset: 0,
                count: 16,
                bitmap: &[0x00, 0x81],
            },
        ),
    );
}

#[test]
fn shared_layouts() {
    let words = hex("00 00 00 00 03 00 00 00");
    golden(
        &v1(),
        "01 03 01 00 02 00 18 00 | 00 00 00 00 | 02 00 00 00 | 00 00 00 00 | 03 00 00 00",
        m(
            1,
            2,
            Body::DeviceFeatures {
                block_index: 0,
                features: Le32s::new(&words).expect("words"),
            },
        ),
    );
    golden(
        &v1(),
        "00 06 01 00 03 00 15 00 | 04 00 00 00 | 00 00 00 00 | 01 00 00 00 | 7F",
        m(
            1,
            3,
            Body::SetConfig {
                generation: 4,
                offset: 0,
                data: &[0x7F],
            },
        ),
    );
    golden(
        &v1(),
        "00 40 01 00 00 00 18 00 | 0F 00 00 00 | 05 00 00 00 | 00 00 00 00 | 04 00 00 00",
        m(
            1,
            0,
            Body::EventConfig {
                device_status: 0x0F,
                generation: 5,
                offset: 0,
                length: 4,
                data: &[],
            },
        ),
    );
    golden(
        &v1(),
        "00 41 01 00 09 00 10 00 | 02 00 00 00 | 00 00 00 00",
        m(
            1,
            9,
            Body::EventAvail {
                vq_index: 2,
                next_offset: 0,
            },
        ),
    );
    golden(
        &v1(),
        "00 42 01 00 00 00 0C 00 | 02 00 00 00",
        m(1, 0, Body::EventUsed { vq_index: 2 }),
    );
    // v1 name READY = v2 ADDED.
    golden(
        &v1(),
        "02 40 00 00 00 00 0C 00 | 03 00 | 01 00",
        m(
            0,
            0,
            Body::EventDevice {
                device_number: 3,
                state: device_bus_state::ADDED,
            },
        ),
    );
    golden(
        &v1(),
        "02 03 00 00 01 00 0C 00 | 78 56 34 12",
        m(0, 1, Body::Ping { data: 0x1234_5678 }),
    );
}

#[test]
fn maximum_48() {
    let data = [0x5Au8; 29];
    let mut out = [0u8; 64];
    let ok = m(
        1,
        0,
        Body::Config {
            generation: 0,
            offset: 0,
            data: &data[..28],
        },
    );
    assert_eq!(v1().encode(&ok, &mut out), Ok(48));
    let too_big = m(
        1,
        0,
        Body::Config {
            generation: 0,
            offset: 0,
            data: &data,
        },
    );
    assert_eq!(
        v1().encode(&too_big, &mut out),
        Err(EncodeError::AboveMaxMsgSize { size: 49, max: 48 })
    );
    let mut frame = hex("01 05 01 00 00 00 31 00");
    frame.resize(49, 0);
    assert_eq!(
        v1().decode(&frame),
        Err(DecodeError::MsgSizeAboveMax {
            msg_size: 49,
            max: 48
        })
    );
}
