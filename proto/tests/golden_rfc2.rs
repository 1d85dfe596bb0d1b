//! Profile Rfc2 (spec RFC2 / "G2": Linux LKML RFC, its loopback and FF-A
//! buses, Xen VMP) golden vectors, hand-derived from interop.md §2.2 (the
//! Linux RFC `include/uapi/linux/virtio_msg.h` layouts): 6-byte header
//! without token, frames padded to the 44-byte bus size.

mod common;

use common::{golden_padded, hex};
use vmsg_proto::{
    Body, Codec, DecodeError, DeviceInfo, EncodeError, Le32s, Message, Profile, SetVqueue,
    VqueueInfo, device_bus_state,
};

const FRAME: usize = 44;

fn rfc2() -> Codec {
    Codec::new(Profile::Rfc2, FRAME).expect("valid codec")
}

fn m(dev_num: u16, body: Body<'_>) -> Message<'_> {
    Message {
        dev_num,
        token: 0,
        body,
    }
}

fn golden(bytes: &str, msg: Message<'_>) {
    golden_padded(&rfc2(), bytes, FRAME, msg);
}

#[test]
fn limits() {
    let c = rfc2();
    assert_eq!(c.header_len(), 6);
    // The Linux RFC chunks config accesses to 44 - 6 - 12 = 26 bytes.
    assert_eq!(c.max_config_data(), 26);
    assert_eq!(c.max_feature_blocks(), 7);
    assert_eq!(c.max_event_config_data(), 22);
    assert!(Codec::new(Profile::Rfc2, 43).is_err());
}

#[test]
fn header_has_no_token() {
    golden("00 02 00 00 06 00", m(0, Body::GetDeviceInfo));
    // A token given to the encoder is not transmitted.
    let mut out = [0u8; FRAME];
    let n = rfc2()
        .encode(
            &Message {
                dev_num: 0x0102,
                token: 0xBEEF,
                body: Body::GetDeviceStatus,
            },
            &mut out,
        )
        .expect("encodes");
    assert_eq!(n, FRAME);
    assert_eq!(&out[..6], &hex("00 07 02 01 06 00")[..]);
    assert!(out[6..].iter().all(|&b| b == 0));
    let h = rfc2().peek_header(&out).expect("header");
    assert_eq!((h.dev_num, h.token, h.msg_size), (0x0102, 0, 6));
}

#[test]
fn device_info() {
    // What the Linux RFC requires: num_feature_bits exactly 64.
    golden(
        "01 02 00 00 1E 00 | 04 00 00 00 | 51 45 4D 55 | 40 00 00 00 | 00 00 00 00 |
         01 00 00 00 | 00 00 | 00 00",
        m(
            0,
            Body::DeviceInfo(DeviceInfo {
                device_id: 4,
                vendor_id: 0x554D_4551,
                device_uuid: [0; 16],
                num_feature_blocks: 2,
                config_size: 0,
                max_virtqueues: 1,
                admin_vq_start: 0,
                admin_vq_count: 0,
            }),
        ),
    );
}

#[test]
fn features() {
    golden(
        "00 03 00 00 0E 00 | 00 00 00 00 | 02 00 00 00",
        m(
            0,
            Body::GetDeviceFeatures {
                block_index: 0,
                num_blocks: 2,
            },
        ),
    );
    // VERSION_1 (32) | ACCESS_PLATFORM (33).
    let words = hex("00 00 00 00 03 00 00 00");
    golden(
        "01 03 00 00 16 00 | 00 00 00 00 | 02 00 00 00 | 00 00 00 00 | 03 00 00 00",
        m(
            0,
            Body::DeviceFeatures {
                block_index: 0,
                features: Le32s::new(&words).expect("words"),
            },
        ),
    );
    golden(
        "00 04 00 00 16 00 | 00 00 00 00 | 02 00 00 00 | 00 00 00 00 | 03 00 00 00",
        m(
            0,
            Body::SetDriverFeatures {
                block_index: 0,
                features: Le32s::new(&words).expect("words"),
            },
        ),
    );
    golden("01 04 00 00 06 00", m(0, Body::DriverFeaturesSet));
}

#[test]
fn linux_rfc_variable_parts_after_msg_size() {
    // The Linux RFC sets msg_size = header + fixed part (6 + 8 = 14) and
    // writes the features after it inside the 44-byte frame.
    let mut frame =
        hex("00 04 00 00 0E 00 | 00 00 00 00 | 02 00 00 00 | 00 00 00 00 | 03 00 00 00");
    frame.resize(FRAME, 0);
    let msg = rfc2().decode(&frame).expect("decodes");
    let words = hex("00 00 00 00 03 00 00 00");
    assert_eq!(
        msg,
        m(
            0,
            Body::SetDriverFeatures {
                block_index: 0,
                features: Le32s::new(&words).expect("words"),
            }
        )
    );
    // Re-encoding gives the canonical msg_size (22) and the same bytes.
    let mut out = [0u8; FRAME];
    assert_eq!(rfc2().encode(&msg, &mut out), Ok(FRAME));
    assert_eq!(&out[4..6], &[0x16, 0x00]);
    assert_eq!(&out[6..], &frame[6..]);

    // SET_CONFIG: msg_size 6 + 12 = 18, 4 data bytes after it.
    let mut frame =
        hex("00 06 00 00 12 00 | 07 00 00 00 | 10 00 00 00 | 04 00 00 00 | DE AD BE EF");
    frame.resize(FRAME, 0);
    assert_eq!(
        rfc2().decode(&frame),
        Ok(m(
            0,
            Body::SetConfig {
                generation: 7,
                offset: 16,
                data: &[0xDE, 0xAD, 0xBE, 0xEF],
            }
        ))
    );
    // Still bounded by the frame and the bus maximum.
    let mut frame = hex("00 06 00 00 12 00 | 07 00 00 00 | 10 00 00 00 | 1B 00 00 00");
    frame.resize(FRAME, 0);
    assert_eq!(
        rfc2().decode(&frame),
        Err(DecodeError::VariablePartTooLong { msg_id: 0x06 })
    );
    let mut frame = hex("00 06 00 00 12 00 | 07 00 00 00 | 10 00 00 00 | 1A 00 00 00");
    frame.resize(FRAME, 0);
    assert!(rfc2().decode(&frame).is_ok(), "26 data bytes fit the frame");
    frame.truncate(FRAME - 1);
    assert_eq!(
        rfc2().decode(&frame),
        Err(DecodeError::VariablePartTooLong { msg_id: 0x06 })
    );
    let mut long = frame.clone();
    long.resize(100, 0);
    assert_eq!(
        rfc2().decode(&long[..FRAME - 1]),
        Err(DecodeError::VariablePartTooLong { msg_id: 0x06 })
    );
}

#[test]
fn config() {
    // Linux `generation()` = GET_CONFIG(0, 0).
    golden(
        "00 05 00 00 0E 00 | 00 00 00 00 | 00 00 00 00",
        m(
            0,
            Body::GetConfig {
                offset: 0,
                length: 0,
            },
        ),
    );
    golden(
        "01 05 00 00 14 00 | 05 00 00 00 | 00 00 00 00 | 02 00 00 00 | 34 12",
        m(
            0,
            Body::Config {
                generation: 5,
                offset: 0,
                data: &[0x34, 0x12],
            },
        ),
    );
    golden(
        "01 06 00 00 12 00 | 06 00 00 00 | 10 00 00 00 | 04 00 00 00",
        m(
            0,
            Body::ConfigSet {
                generation: 6,
                offset: 16,
                length: 4,
                data: &[],
            },
        ),
    );
    // Optional parts are only taken from within msg_size, never from
    // padding.
    golden(
        "00 40 00 00 16 00 | 0F 00 00 00 | 01 00 00 00 | 00 00 00 00 | 04 00 00 00",
        m(
            0,
            Body::EventConfig {
                device_status: 0x0F,
                generation: 1,
                offset: 0,
                length: 4,
                data: &[],
            },
        ),
    );
    golden(
        "00 40 00 00 1A 00 | 0F 00 00 00 | 01 00 00 00 | 00 00 00 00 | 04 00 00 00 | 01 02 03 04",
        m(
            0,
            Body::EventConfig {
                device_status: 0x0F,
                generation: 1,
                offset: 0,
                length: 4,
                data: &[1, 2, 3, 4],
            },
        ),
    );
}

#[test]
fn status() {
    golden("00 07 00 00 06 00", m(0, Body::GetDeviceStatus));
    golden(
        "01 07 00 00 0A 00 | 0F 00 00 00",
        m(0, Body::DeviceStatus { status: 0x0F }),
    );
    golden(
        "00 08 00 00 0A 00 | 00 00 00 00",
        m(0, Body::SetDeviceStatus { status: 0 }),
    );
    golden(
        "01 08 00 00 0A 00 | 00 00 00 00",
        m(0, Body::DeviceStatusSet { status: 0 }),
    );
}

#[test]
fn vqueue_layouts_are_unaligned() {
    golden(
        "00 09 00 00 0A 00 | 00 00 00 00",
        m(0, Body::GetVqueue { index: 0 }),
    );
    golden(
        "01 09 00 00 2A 00 | 00 00 00 00 | 00 01 00 00 | 00 01 00 00 |
         00 00 C0 5F 00 00 00 00 | 00 10 C0 5F 00 00 00 00 | 00 20 C0 5F 00 00 00 00",
        m(
            0,
            Body::Vqueue(VqueueInfo {
                index: 0,
                max_size: 256,
                cur_size: 256,
                flags: 0,
                desc_addr: 0x5FC0_0000,
                driver_addr: 0x5FC0_1000,
                device_addr: 0x5FC0_2000,
            }),
        ),
    );
    golden(
        "00 0A 00 00 2A 00 | 00 00 00 00 | 00 00 00 00 | 00 01 00 00 |
         00 00 C0 5F 00 00 00 00 | 00 10 C0 5F 00 00 00 00 | 00 20 C0 5F 00 00 00 00",
        m(
            0,
            Body::SetVqueue(SetVqueue {
                index: 0,
                flags: 0,
                size: 256,
                reserved: 0,
                desc_addr: 0x5FC0_0000,
                driver_addr: 0x5FC0_1000,
                device_addr: 0x5FC0_2000,
            }),
        ),
    );
    golden("01 0A 00 00 06 00", m(0, Body::VqueueSet));
    golden(
        "00 0B 00 00 0A 00 | 00 00 00 00",
        m(0, Body::ResetVqueue { index: 0 }),
    );
    golden("01 0B 00 00 06 00", m(0, Body::VqueueReset));
    // Fields RFC2 lacks are not transmitted.
    let mut out = [0u8; FRAME];
    rfc2()
        .encode(
            &m(
                0,
                Body::SetVqueue(SetVqueue {
                    reserved: 9,
                    ..SetVqueue::default()
                }),
            ),
            &mut out,
        )
        .expect("encodes");
    assert!(out[6..].iter().all(|&b| b == 0));
    // 36-byte payload: 35 is too short.
    let mut frame = hex("00 0A 00 00 29 00");
    frame.resize(FRAME, 0);
    assert_eq!(
        rfc2().decode(&frame),
        Err(DecodeError::PayloadTooShort {
            msg_id: 0x0A,
            need: 36,
            have: 35
        })
    );
}

#[test]
fn shm_and_events() {
    golden(
        "00 0C 00 00 0A 00 | 00 00 00 00",
        m(0, Body::GetShm { shmid: 0 }),
    );
    golden(
        "01 0C 00 00 12 00 | 00 00 00 00 | 00 00 00 00 | 00 00 00 00",
        m(
            0,
            Body::Shm {
                shmid: 0,
                length: 0,
                address: 0,
            },
        ),
    );
    golden(
        "00 41 00 00 0E 00 | 01 00 00 00 | 00 00 00 00",
        m(
            0,
            Body::EventAvail {
                vq_index: 1,
                next_offset: 0,
            },
        ),
    );
    golden(
        "00 42 00 00 0A 00 | 01 00 00 00",
        m(0, Body::EventUsed { vq_index: 1 }),
    );
}

#[test]
fn bus_messages() {
    // Linux RFC FF-A bus: GET_DEVICES {offset 0, num 0xFF}.
    golden(
        "02 02 00 00 0A 00 | 00 00 | FF 00",
        m(
            0,
            Body::GetDevices {
                offset: 0,
                count: 0xFF,
            },
        ),
    );
    // Response (offset, num, next_offset, bitmap): device 0 only.
    golden(
        "03 02 00 00 0E 00 | 00 00 | 10 00 | 00 00 | 01 00",
        m(
            0,
            Body::Devices {
                offset: 0,
                next_offset: 0,
                count: 16,
                bitmap: &[0x01, 0x00],
            },
        ),
    );
    golden(
        "02 03 00 00 0A 00 | 01 00 00 00",
        m(0, Body::Ping { data: 1 }),
    );
    golden(
        "03 03 00 00 0A 00 | 01 00 00 00",
        m(0, Body::Pong { data: 1 }),
    );
    golden(
        "02 40 00 00 0A 00 | 02 00 | 02 00",
        m(
            0,
            Body::EventDevice {
                device_number: 2,
                state: device_bus_state::REMOVED,
            },
        ),
    );
}

#[test]
fn frames() {
    let c = rfc2();
    // The frame may also be exactly msg_size long.
    assert_eq!(
        c.decode(&hex("00 42 00 00 0A 00 | 01 00 00 00")),
        Ok(m(0, Body::EventUsed { vq_index: 1 }))
    );
    assert_eq!(
        c.decode(&hex("00 42 00 00 0A 00 | 01 00 00")),
        Err(DecodeError::Truncated {
            msg_size: 10,
            len: 9
        })
    );
    assert_eq!(
        c.decode(&hex("00 42 00 00 0A")),
        Err(DecodeError::ShortFrame { len: 5 })
    );
    assert_eq!(
        c.decode(&hex("00 42 00 00 05 00")),
        Err(DecodeError::MsgSizeBelowHeader { msg_size: 5 })
    );
    // Every encoding needs a whole frame, even a 6-byte message.
    let mut small = [0u8; FRAME - 1];
    assert_eq!(
        c.encode(&m(0, Body::GetDeviceInfo), &mut small),
        Err(EncodeError::BufferTooSmall {
            need: FRAME,
            have: FRAME - 1
        })
    );
    assert_eq!(c.encoded_len(&m(0, Body::GetDeviceInfo)), FRAME);
    assert_eq!(c.msg_size(&m(0, Body::GetDeviceInfo)), 6);
    // A larger RFC2 bus pads to its own maximum.
    let c64 = Codec::new(Profile::Rfc2, 64).expect("valid codec");
    let mut out = [0xFFu8; 80];
    assert_eq!(c64.encode(&m(0, Body::GetDeviceInfo), &mut out), Ok(64));
    assert!(out[6..64].iter().all(|&b| b == 0));
    assert!(out[64..].iter().all(|&b| b == 0xFF));
}
