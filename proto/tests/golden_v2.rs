//! Spec v2 golden byte vectors: the worked examples of virtio-msg-v2.md §9
//! verbatim, and one hand-written vector per other message derived from the
//! layout tables of §3/§4. Bytes are written out here, never produced by the
//! encoder under test.

mod common;

use common::{golden, hex};
use vmsg_proto::{
    Body, Codec, DecodeError, DeviceInfo, EncodeError, Le32s, Message, Profile, SetVqueue,
    VqueueInfo, device_bus_state, status, vq_flags,
};

fn v2() -> Codec {
    Codec::new(Profile::V2, 264).expect("valid codec")
}

fn m(dev_num: u16, token: u16, body: Body<'_>) -> Message<'_> {
    Message {
        dev_num,
        token,
        body,
    }
}

// ---------------------------------------------------------------- §9 examples

#[test]
fn spec_get_device_info_request() {
    golden(
        &v2(),
        "00 02 01 00 05 00 08 00",
        m(1, 5, Body::GetDeviceInfo),
    );
}

#[test]
fn spec_get_device_info_response() {
    golden(
        &v2(),
        "01 02 01 00 05 00 34 00 | 01 00 00 00 | 51 45 4D 55 |
         00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 |
         02 00 00 00 | 0C 00 00 00 | 03 00 00 00 | 00 00 00 00 | 00 00 00 00",
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
                admin_vq_start: 0,
                admin_vq_count: 0,
            }),
        ),
    );
}

#[test]
fn spec_set_vqueue_request() {
    golden(
        &v2(),
        "00 0A 01 00 07 00 30 00 | 00 00 00 00 | 01 00 00 00 | 00 01 00 00 |
         00 00 00 00 | 00 00 01 00 00 00 00 00 | 00 10 01 00 00 00 00 00 |
         00 20 01 00 00 00 00 00",
        m(
            1,
            7,
            Body::SetVqueue(SetVqueue {
                index: 0,
                flags: vq_flags::STATE_ENABLE,
                size: 256,
                reserved: 0,
                desc_addr: 0x1_0000,
                driver_addr: 0x1_1000,
                device_addr: 0x1_2000,
            }),
        ),
    );
}

#[test]
fn spec_set_vqueue_response() {
    golden(&v2(), "01 0A 01 00 07 00 08 00", m(1, 7, Body::VqueueSet));
}

#[test]
fn spec_event_used() {
    golden(
        &v2(),
        "00 42 01 00 00 00 0C 00 | 02 00 00 00",
        m(1, 0, Body::EventUsed { vq_index: 2 }),
    );
}

// ------------------------------------------------- §3 transport, by hand

#[test]
fn device_info_with_uuid_and_admin_queues() {
    golden(
        &v2(),
        "01 02 07 00 FF FF 34 00 | 02 00 00 00 | 00 00 00 00 |
         00 11 22 33 44 55 46 77 88 99 AA BB CC DD EE FF |
         03 00 00 00 | 00 01 00 00 | 05 00 00 00 | 04 00 00 00 | 01 00 00 00",
        m(
            7,
            0xFFFF,
            Body::DeviceInfo(DeviceInfo {
                device_id: 2,
                vendor_id: 0,
                device_uuid: [
                    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x46, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC,
                    0xDD, 0xEE, 0xFF,
                ],
                num_feature_blocks: 3,
                config_size: 256,
                max_virtqueues: 5,
                admin_vq_start: 4,
                admin_vq_count: 1,
            }),
        ),
    );
}

#[test]
fn get_device_features() {
    golden(
        &v2(),
        "00 03 03 00 34 12 10 00 | 00 00 00 00 | 02 00 00 00",
        m(
            3,
            0x1234,
            Body::GetDeviceFeatures {
                block_index: 0,
                num_blocks: 2,
            },
        ),
    );
    let words = hex("20 00 00 00 01 00 00 00");
    golden(
        &v2(),
        "01 03 03 00 34 12 18 00 | 00 00 00 00 | 02 00 00 00 | 20 00 00 00 | 01 00 00 00",
        m(
            3,
            0x1234,
            Body::DeviceFeatures {
                block_index: 0,
                features: Le32s::new(&words).expect("words"),
            },
        ),
    );
}

#[test]
fn set_driver_features() {
    let words = hex("01 00 00 00");
    golden(
        &v2(),
        "00 04 03 00 35 12 14 00 | 01 00 00 00 | 01 00 00 00 | 01 00 00 00",
        m(
            3,
            0x1235,
            Body::SetDriverFeatures {
                block_index: 1,
                features: Le32s::new(&words).expect("words"),
            },
        ),
    );
    golden(
        &v2(),
        "01 04 03 00 35 12 08 00",
        m(3, 0x1235, Body::DriverFeaturesSet),
    );
    // Zero blocks is a valid (no-op) request.
    golden(
        &v2(),
        "00 04 03 00 35 12 10 00 | 00 00 00 00 | 00 00 00 00",
        m(
            3,
            0x1235,
            Body::SetDriverFeatures {
                block_index: 0,
                features: Le32s::EMPTY,
            },
        ),
    );
}

#[test]
fn get_config() {
    golden(
        &v2(),
        "00 05 03 00 01 00 10 00 | 04 00 00 00 | 02 00 00 00",
        m(
            3,
            1,
            Body::GetConfig {
                offset: 4,
                length: 2,
            },
        ),
    );
    golden(
        &v2(),
        "01 05 03 00 01 00 16 00 | 07 00 00 00 | 04 00 00 00 | 02 00 00 00 | AA BB",
        m(
            3,
            1,
            Body::Config {
                generation: 7,
                offset: 4,
                data: &[0xAA, 0xBB],
            },
        ),
    );
}

#[test]
fn set_config() {
    golden(
        &v2(),
        "00 06 03 00 02 00 17 00 | 00 00 00 00 | 08 00 00 00 | 03 00 00 00 | 01 02 03",
        m(
            3,
            2,
            Body::SetConfig {
                generation: 0,
                offset: 8,
                data: &[1, 2, 3],
            },
        ),
    );
    // Applied, no echo.
    golden(
        &v2(),
        "01 06 03 00 02 00 14 00 | 08 00 00 00 | 08 00 00 00 | 03 00 00 00",
        m(
            3,
            2,
            Body::ConfigSet {
                generation: 8,
                offset: 8,
                length: 3,
                data: &[],
            },
        ),
    );
    // Applied, with echo.
    golden(
        &v2(),
        "01 06 03 00 02 00 17 00 | 08 00 00 00 | 08 00 00 00 | 03 00 00 00 | 01 02 03",
        m(
            3,
            2,
            Body::ConfigSet {
                generation: 8,
                offset: 8,
                length: 3,
                data: &[1, 2, 3],
            },
        ),
    );
    // Rejected (strict profile): length 0.
    golden(
        &v2(),
        "01 06 03 00 02 00 14 00 | 09 00 00 00 | 08 00 00 00 | 00 00 00 00",
        m(
            3,
            2,
            Body::ConfigSet {
                generation: 9,
                offset: 8,
                length: 0,
                data: &[],
            },
        ),
    );
}

#[test]
fn device_status() {
    golden(
        &v2(),
        "00 07 03 00 03 00 08 00",
        m(3, 3, Body::GetDeviceStatus),
    );
    golden(
        &v2(),
        "01 07 03 00 03 00 0C 00 | 0F 00 00 00",
        m(
            3,
            3,
            Body::DeviceStatus {
                status: status::ACKNOWLEDGE
                    | status::DRIVER
                    | status::FEATURES_OK
                    | status::DRIVER_OK,
            },
        ),
    );
    golden(
        &v2(),
        "00 08 03 00 04 00 0C 00 | 0B 00 00 00",
        m(3, 4, Body::SetDeviceStatus { status: 0x0B }),
    );
    // FEATURES_OK refused: returned status has it cleared.
    golden(
        &v2(),
        "01 08 03 00 04 00 0C 00 | 03 00 00 00",
        m(3, 4, Body::DeviceStatusSet { status: 0x03 }),
    );
    golden(
        &v2(),
        "00 08 03 00 04 00 0C 00 | 00 00 00 00",
        m(3, 4, Body::SetDeviceStatus { status: 0 }),
    );
}

#[test]
fn get_vqueue() {
    golden(
        &v2(),
        "00 09 03 00 05 00 0C 00 | 01 00 00 00",
        m(3, 5, Body::GetVqueue { index: 1 }),
    );
    golden(
        &v2(),
        "01 09 03 00 05 00 30 00 | 01 00 00 00 | 00 01 00 00 | 80 00 00 00 | 01 00 00 00 |
         00 00 01 00 00 00 00 00 | 00 10 01 00 00 00 00 00 | 00 20 01 00 00 00 00 00",
        m(
            3,
            5,
            Body::Vqueue(VqueueInfo {
                index: 1,
                max_size: 256,
                cur_size: 128,
                flags: vq_flags::ENABLED,
                desc_addr: 0x1_0000,
                driver_addr: 0x1_1000,
                device_addr: 0x1_2000,
            }),
        ),
    );
    // Zero sentinel for an out-of-range index still echoes it.
    golden(
        &v2(),
        "01 09 03 00 05 00 30 00 | 09 00 00 00 | 00 00 00 00 | 00 00 00 00 | 00 00 00 00 |
         00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00",
        m(
            3,
            5,
            Body::Vqueue(VqueueInfo {
                index: 9,
                ..VqueueInfo::default()
            }),
        ),
    );
}

#[test]
fn set_vqueue_with_ignore_bits_and_reserved() {
    // flags = keep state | size/desc ignore; reserved word non-zero is
    // carried as is (the transport turns it into a no-op, not the codec).
    golden(
        &v2(),
        "00 0A 02 00 08 00 30 00 | 03 00 00 00 | 0E 00 00 00 | 00 00 00 00 |
         01 00 00 00 | 00 00 00 00 00 00 00 00 | 00 00 00 40 00 00 FF 00 |
         08 07 06 05 04 03 02 01",
        m(
            2,
            8,
            Body::SetVqueue(SetVqueue {
                index: 3,
                flags: vq_flags::STATE_KEEP | vq_flags::SIZE_IGNORE | vq_flags::DESC_ADDR_IGNORE,
                size: 0,
                reserved: 1,
                desc_addr: 0,
                driver_addr: 0x00FF_0000_4000_0000,
                device_addr: 0x0102_0304_0506_0708,
            }),
        ),
    );
}

#[test]
fn reset_vqueue() {
    golden(
        &v2(),
        "00 0B 03 00 06 00 0C 00 | 01 00 00 00",
        m(3, 6, Body::ResetVqueue { index: 1 }),
    );
    golden(&v2(), "01 0B 03 00 06 00 08 00", m(3, 6, Body::VqueueReset));
}

#[test]
fn get_shm() {
    golden(
        &v2(),
        "00 0C 03 00 07 00 0C 00 | 02 00 00 00",
        m(3, 7, Body::GetShm { shmid: 2 }),
    );
    golden(
        &v2(),
        "01 0C 03 00 07 00 20 00 | 02 00 00 00 | 00 00 00 00 |
         00 00 00 00 01 00 00 00 | 00 00 00 00 80 00 00 00",
        m(
            3,
            7,
            Body::Shm {
                shmid: 2,
                length: 0x1_0000_0000,
                address: 0x80_0000_0000,
            },
        ),
    );
}

#[test]
fn get_shm_response_reserved_word_is_ignored() {
    let bytes = hex("01 0C 03 00 07 00 20 00 | 02 00 00 00 | DE AD BE EF |
         00 10 00 00 00 00 00 00 | 00 00 00 10 00 00 00 00");
    let msg = v2().decode(&bytes).expect("decodes");
    assert_eq!(
        msg.body,
        Body::Shm {
            shmid: 2,
            length: 0x1000,
            address: 0x1000_0000
        }
    );
    let mut out = [0xFFu8; 64];
    let n = v2().encode(&msg, &mut out).expect("encodes");
    assert_eq!(&out[8..12], &[2, 0, 0, 0]);
    assert_eq!(&out[12..16], &[0, 0, 0, 0], "reserved word zeroed");
    assert_eq!(&out[16..n], &bytes[16..]);
}

#[test]
fn event_config() {
    // Status-only / generic event: offset = length = 0, no data.
    golden(
        &v2(),
        "00 40 03 00 00 00 18 00 | 4F 00 00 00 | 09 00 00 00 | 00 00 00 00 | 00 00 00 00",
        m(
            3,
            0,
            Body::EventConfig {
                device_status: 0x4F,
                generation: 9,
                offset: 0,
                length: 0,
                data: &[],
            },
        ),
    );
    // With data for the range.
    golden(
        &v2(),
        "00 40 03 00 00 00 1A 00 | 0F 00 00 00 | 0A 00 00 00 | 02 00 00 00 | 02 00 00 00 | 01 00",
        m(
            3,
            0,
            Body::EventConfig {
                device_status: 0x0F,
                generation: 10,
                offset: 2,
                length: 2,
                data: &[1, 0],
            },
        ),
    );
    // Range without data (strict profile hint).
    golden(
        &v2(),
        "00 40 03 00 00 00 18 00 | 0F 00 00 00 | 0A 00 00 00 | 02 00 00 00 | 02 00 00 00",
        m(
            3,
            0,
            Body::EventConfig {
                device_status: 0x0F,
                generation: 10,
                offset: 2,
                length: 2,
                data: &[],
            },
        ),
    );
}

#[test]
fn event_avail() {
    golden(
        &v2(),
        "00 41 03 00 00 00 10 00 | 00 00 00 00 | 05 00 00 80",
        m(
            3,
            0,
            Body::EventAvail {
                vq_index: 0,
                next_offset: 0x8000_0005,
            },
        ),
    );
}

// ------------------------------------------------------- §4 bus, by hand

#[test]
fn get_devices() {
    golden(
        &v2(),
        "02 02 00 00 01 00 0C 00 | 00 00 | 10 00",
        m(
            0,
            1,
            Body::GetDevices {
                offset: 0,
                count: 16,
            },
        ),
    );
    // v2 order: offset, next_offset, count. Devices 0, 2, 5; continue at 16.
    golden(
        &v2(),
        "03 02 00 00 01 00 0F 00 | 00 00 | 10 00 | 08 00 | 25",
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
    // §4.1 example: offset 0, count 16, bitmap 25 00, next 16.
    golden(
        &v2(),
        "03 02 00 00 01 00 10 00 | 00 00 | 10 00 | 10 00 | 25 00",
        m(
            0,
            1,
            Body::Devices {
                offset: 0,
                next_offset: 16,
                count: 16,
                bitmap: &[0x25, 0x00],
            },
        ),
    );
    // Odd count, enumeration finished; count 0 answer has no bitmap.
    golden(
        &v2(),
        "03 02 00 00 01 00 0F 00 | 20 00 | 00 00 | 03 00 | 05",
        m(
            0,
            1,
            Body::Devices {
                offset: 32,
                next_offset: 0,
                count: 3,
                bitmap: &[0x05],
            },
        ),
    );
    golden(
        &v2(),
        "03 02 00 00 01 00 0E 00 | 20 00 | 00 00 | 00 00",
        m(
            0,
            1,
            Body::Devices {
                offset: 32,
                next_offset: 0,
                count: 0,
                bitmap: &[],
            },
        ),
    );
}

#[test]
fn ping() {
    golden(
        &v2(),
        "02 03 00 00 02 00 0C 00 | EF BE AD DE",
        m(0, 2, Body::Ping { data: 0xDEAD_BEEF }),
    );
    golden(
        &v2(),
        "03 03 00 00 02 00 0C 00 | EF BE AD DE",
        m(0, 2, Body::Pong { data: 0xDEAD_BEEF }),
    );
}

#[test]
fn event_device() {
    golden(
        &v2(),
        "02 40 00 00 00 00 0C 00 | 05 00 | 01 00",
        m(
            0,
            0,
            Body::EventDevice {
                device_number: 5,
                state: device_bus_state::ADDED,
            },
        ),
    );
    golden(
        &v2(),
        "02 40 00 00 00 00 0C 00 | 05 00 | 02 00",
        m(
            0,
            0,
            Body::EventDevice {
                device_number: 5,
                state: device_bus_state::REMOVED,
            },
        ),
    );
}

#[test]
fn bus_specific() {
    // FF-A VERSION request (0x80): bus_version 0, revision 0, ffa 1.2.
    golden(
        &v2(),
        "02 80 00 00 01 00 14 00 | 00 00 00 00 | 00 00 00 00 | 02 00 01 00",
        m(
            0,
            1,
            Body::BusSpecific {
                msg_id: 0x80,
                response: false,
                payload: &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0],
            },
        ),
    );
    // FF-A RESET response (0x83), result 0.
    golden(
        &v2(),
        "03 83 00 00 09 00 0A 00 | 00 00",
        m(
            0,
            9,
            Body::BusSpecific {
                msg_id: 0x83,
                response: true,
                payload: &[0, 0],
            },
        ),
    );
    // FF-A ERROR response (0x87) carries the failed request's dev_num.
    golden(
        &v2(),
        "03 87 04 00 09 00 0A 00 | 05 00",
        m(
            4,
            9,
            Body::BusSpecific {
                msg_id: 0x87,
                response: true,
                payload: &[5, 0],
            },
        ),
    );
    // FF-A AREA_RELEASE event (0xC0), area 3.
    golden(
        &v2(),
        "02 C0 00 00 00 00 0A 00 | 03 00",
        m(
            0,
            0,
            Body::BusSpecific {
                msg_id: 0xC0,
                response: false,
                payload: &[3, 0],
            },
        ),
    );
}

// ------------------------------------------------------ decode rules (§9)

#[test]
fn header_errors() {
    let c = v2();
    assert_eq!(
        c.decode(&hex("00 02 01 00 05 00 08")),
        Err(DecodeError::ShortFrame { len: 7 })
    );
    assert_eq!(c.decode(&[]), Err(DecodeError::ShortFrame { len: 0 }));
    assert_eq!(
        c.decode(&hex("00 02 01 00 05 00 07 00")),
        Err(DecodeError::MsgSizeBelowHeader { msg_size: 7 })
    );
    assert_eq!(
        c.decode(&hex("00 02 01 00 05 00 00 00")),
        Err(DecodeError::MsgSizeBelowHeader { msg_size: 0 })
    );
    let mut big = hex("00 02 01 00 05 00 09 01");
    big.resize(300, 0);
    assert_eq!(
        c.decode(&big),
        Err(DecodeError::MsgSizeAboveMax {
            msg_size: 265,
            max: 264
        })
    );
    assert_eq!(
        c.decode(&hex("00 09 01 00 05 00 0C 00 | 01 00")),
        Err(DecodeError::Truncated {
            msg_size: 12,
            len: 10
        })
    );
}

#[test]
fn unknown_ids() {
    let c = v2();
    for (bytes, bus, response, msg_id) in [
        ("00 00 01 00 00 00 08 00", false, false, 0x00),
        ("00 01 01 00 00 00 08 00", false, false, 0x01),
        ("00 0D 01 00 00 00 08 00", false, false, 0x0D),
        ("00 43 01 00 00 00 08 00", false, false, 0x43),
        ("00 80 01 00 00 00 08 00", false, false, 0x80),
        ("01 0D 01 00 00 00 08 00", false, true, 0x0D),
        ("01 80 01 00 00 00 08 00", false, true, 0x80),
        ("02 04 00 00 00 00 08 00", true, false, 0x04),
        ("02 00 00 00 00 00 08 00", true, false, 0x00),
        ("03 00 00 00 00 00 08 00", true, true, 0x00),
        ("03 04 00 00 00 00 08 00", true, true, 0x04),
    ] {
        assert_eq!(
            c.decode(&hex(bytes)),
            Err(DecodeError::UnknownMessage {
                bus,
                response,
                msg_id
            }),
            "{bytes}"
        );
    }
}

#[test]
fn events_are_never_responses() {
    let c = v2();
    for (bytes, msg_id) in [
        ("01 42 01 00 00 00 0C 00 | 02 00 00 00", 0x42),
        (
            "01 40 01 00 00 00 18 00 | 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
            0x40,
        ),
        ("03 40 00 00 00 00 0C 00 | 05 00 01 00", 0x40),
        ("03 C0 00 00 00 00 0A 00 | 03 00", 0xC0),
        ("01 7F 00 00 00 00 08 00", 0x7F),
    ] {
        assert_eq!(
            c.decode(&hex(bytes)),
            Err(DecodeError::EventAsResponse { msg_id }),
            "{bytes}"
        );
    }
}

#[test]
fn payload_too_short() {
    let c = v2();
    assert_eq!(
        c.decode(&hex("00 09 01 00 00 00 08 00")),
        Err(DecodeError::PayloadTooShort {
            msg_id: 0x09,
            need: 4,
            have: 0
        })
    );
    // msg_size, not the frame length, bounds the payload.
    assert_eq!(
        c.decode(&hex("00 0A 01 00 00 00 2F 00 | 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")),
        Err(DecodeError::PayloadTooShort {
            msg_id: 0x0A,
            need: 40,
            have: 39
        })
    );
    assert_eq!(
        c.decode(&hex("01 02 01 00 00 00 20 00 | 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")),
        Err(DecodeError::PayloadTooShort {
            msg_id: 0x02,
            need: 44,
            have: 24
        })
    );
}

#[test]
fn variable_parts_must_fit() {
    let c = v2();
    // num_blocks 2, one word present.
    assert_eq!(
        c.decode(&hex(
            "00 04 01 00 00 00 14 00 | 00 00 00 00 | 02 00 00 00 | 01 00 00 00 | 01 00 00 00"
        )),
        Err(DecodeError::VariablePartTooLong { msg_id: 0x04 })
    );
    // Huge counts must not overflow.
    assert_eq!(
        c.decode(&hex("01 03 01 00 00 00 10 00 | 00 00 00 00 | FF FF FF FF")),
        Err(DecodeError::VariablePartTooLong { msg_id: 0x03 })
    );
    assert_eq!(
        c.decode(&hex(
            "00 06 01 00 00 00 14 00 | 00 00 00 00 | 00 00 00 00 | FF FF FF FF"
        )),
        Err(DecodeError::VariablePartTooLong { msg_id: 0x06 })
    );
    assert_eq!(
        c.decode(&hex(
            "01 05 01 00 00 00 15 00 | 00 00 00 00 | 00 00 00 00 | 02 00 00 00 | AA"
        )),
        Err(DecodeError::VariablePartTooLong { msg_id: 0x05 })
    );
    // Bitmap for count 9 needs 2 bytes.
    assert_eq!(
        c.decode(&hex("03 02 00 00 00 00 0F 00 | 00 00 | 00 00 | 09 00 | FF")),
        Err(DecodeError::VariablePartTooLong { msg_id: 0x02 })
    );
}

#[test]
fn forward_compatible_sizes_and_padding() {
    let c = v2();
    // GET_VQUEUE with 4 extra payload bytes and 4 bytes of bus padding.
    let b1 = hex("00 09 01 00 05 00 10 00 | 01 00 00 00 | EE EE EE EE | 00 00 00 00");
    let msg = c.decode(&b1).expect("larger msg_size accepted");
    assert_eq!(msg, m(1, 5, Body::GetVqueue { index: 1 }));
    // Features followed by unknown trailing bytes.
    let b2 = hex("00 04 01 00 00 00 18 00 | 00 00 00 00 | 01 00 00 00 | 07 00 00 00 | 99 99 99 99");
    let msg = c.decode(&b2).expect("decodes");
    assert_eq!(
        msg.body,
        Body::SetDriverFeatures {
            block_index: 0,
            features: Le32s::new(&[7, 0, 0, 0]).expect("words")
        }
    );
    // A partial echo is not an echo: data decodes empty.
    let b3 = hex("01 06 01 00 00 00 16 00 | 01 00 00 00 | 00 00 00 00 | 04 00 00 00 | AA BB");
    let msg = c.decode(&b3).expect("decodes");
    assert_eq!(
        msg.body,
        Body::ConfigSet {
            generation: 1,
            offset: 0,
            length: 4,
            data: &[]
        }
    );
    let b4 = hex(
        "00 40 01 00 00 00 1A 00 | 00 00 00 00 | 01 00 00 00 | 00 00 00 00 | 04 00 00 00 | AA BB",
    );
    let msg = c.decode(&b4).expect("decodes");
    assert!(matches!(
        msg.body,
        Body::EventConfig {
            length: 4,
            data: &[],
            ..
        }
    ));
}

#[test]
fn reserved_type_bits_are_ignored() {
    let c = v2();
    assert_eq!(
        c.decode(&hex("FC 02 01 00 05 00 08 00")),
        Ok(m(1, 5, Body::GetDeviceInfo))
    );
    assert_eq!(
        c.decode(&hex("FF 03 00 00 02 00 0C 00 | EF BE AD DE")),
        Ok(m(0, 2, Body::Pong { data: 0xDEAD_BEEF }))
    );
}

#[test]
fn bus_dev_num_is_reported_as_is() {
    assert_eq!(
        v2().decode(&hex("02 03 09 00 02 00 0C 00 | 01 00 00 00")),
        Ok(m(9, 2, Body::Ping { data: 1 }))
    );
}

// ---------------------------------------------------------- encode rules

#[test]
fn encode_errors() {
    let c = v2();
    let msg = m(1, 5, Body::GetVqueue { index: 1 });
    let mut small = [0u8; 11];
    assert_eq!(
        c.encode(&msg, &mut small),
        Err(EncodeError::BufferTooSmall { need: 12, have: 11 })
    );
    let data = [0u8; 245];
    let big = m(
        1,
        5,
        Body::Config {
            generation: 0,
            offset: 0,
            data: &data,
        },
    );
    let mut out = [0u8; 1024];
    assert_eq!(
        c.encode(&big, &mut out),
        Err(EncodeError::AboveMaxMsgSize {
            size: 265,
            max: 264
        })
    );
    let fits = m(
        1,
        5,
        Body::Config {
            generation: 0,
            offset: 0,
            data: &data[..c.max_config_data()],
        },
    );
    assert_eq!(c.encode(&fits, &mut out), Ok(264));
    for (body, what) in [
        (
            Body::Devices {
                offset: 0,
                next_offset: 0,
                count: 9,
                bitmap: &[0],
            },
            "bitmap",
        ),
        (
            Body::ConfigSet {
                generation: 0,
                offset: 0,
                length: 3,
                data: &[1, 2],
            },
            "ConfigSet",
        ),
        (
            Body::EventConfig {
                device_status: 0,
                generation: 0,
                offset: 0,
                length: 1,
                data: &[1, 2],
            },
            "EventConfig",
        ),
        (
            Body::BusSpecific {
                msg_id: 0x10,
                response: false,
                payload: &[],
            },
            "BusSpecific",
        ),
        (
            Body::BusSpecific {
                msg_id: 0xC0,
                response: true,
                payload: &[],
            },
            "event",
        ),
    ] {
        match c.encode(&m(0, 0, body), &mut out) {
            Err(EncodeError::Inconsistent(s)) => assert!(s.contains(what), "{s}"),
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

#[test]
fn body_classification() {
    assert_eq!(Body::GetDeviceInfo.msg_type(), 0x00);
    assert_eq!(Body::VqueueSet.msg_type(), 0x01);
    assert_eq!(Body::Ping { data: 0 }.msg_type(), 0x02);
    assert_eq!(Body::Pong { data: 0 }.msg_type(), 0x03);
    assert!(Body::GetDeviceInfo.is_request());
    assert!(Body::Ping { data: 0 }.is_request());
    assert!(!Body::EventUsed { vq_index: 0 }.is_request());
    assert!(
        !Body::EventAvail {
            vq_index: 0,
            next_offset: 0
        }
        .is_request()
    );
    assert!(!Body::VqueueSet.is_request());
    assert!(
        Body::EventDevice {
            device_number: 0,
            state: 1
        }
        .is_event()
    );
    let req = Body::BusSpecific {
        msg_id: 0x84,
        response: false,
        payload: &[],
    };
    assert!(req.is_request() && req.is_bus() && !req.is_event());
    let ev = Body::BusSpecific {
        msg_id: 0xC0,
        response: false,
        payload: &[],
    };
    assert!(!ev.is_request() && ev.is_event());
    let request = m(4, 77, Body::GetDeviceStatus);
    assert_eq!(
        request.reply(Body::DeviceStatus { status: 0 }),
        m(4, 77, Body::DeviceStatus { status: 0 })
    );
}

#[test]
fn peek_header_reads_raw_fields() {
    let h = vmsg_proto::peek_header(&hex("FD 42 01 00 34 12 07 00")).expect("8 bytes");
    assert_eq!(h.msg_type, 0xFD);
    assert_eq!(h.msg_id, 0x42);
    assert_eq!(h.dev_num, 1);
    assert_eq!(h.token, 0x1234);
    assert_eq!(h.msg_size, 7);
    assert!(h.is_response() && !h.is_bus() && h.is_event());
    assert_eq!(
        vmsg_proto::peek_header(&[0; 7]),
        Err(DecodeError::ShortFrame { len: 7 })
    );
}
