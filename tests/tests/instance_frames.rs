//! The per-guest instance under hostile input: random frame sequences sent to
//! a real virtio-rng through an in-memory fake bus never panic or hang the
//! instance, every valid request is answered exactly once, in order, and the
//! drop counters account for every dropped frame.

use proptest::prelude::*;
use vmsg_backend::fake::FakeBus;
use vmsg_backend::instance::{GuestInstance, InstanceOptions};
use vmsg_devices::rng::{HostEntropy, RngDevice};
use vmsg_proto::{Codec, Profile};

fn instance() -> GuestInstance {
    let rng = RngDevice::new("rng", Box::new(HostEntropy), None).expect("rng");
    GuestInstance::new("fuzz", InstanceOptions::default(), vec![(0, Box::new(rng))])
        .expect("instance")
}

fn frame(ty: u8, id: u8, dev: u16, token: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![ty, id];
    f.extend_from_slice(&dev.to_le_bytes());
    f.extend_from_slice(&token.to_le_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn malformed_frames_are_dropped_and_counted_by_reason() {
    let codec = Codec::new(Profile::V2, 264).expect("codec");
    let mut inst = instance();
    let mut bus = FakeBus::new(264, 0x4000_0000, 1 << 20).expect("fake bus");
    let mut out = vec![0u8; 264];
    inst.attach(&bus).expect("attach");
    let cases: Vec<Vec<u8>> = vec![
        vec![0x00, 0x02, 0x00],                     // shorter than a header
        frame(0x00, 0x02, 0, 1, &[])[..6].to_vec(), // truncated header
        {
            let mut f = frame(0x00, 0x07, 0, 1, &[]);
            f[6] = 200;
            f
        }, // msg_size > bytes received
        {
            let mut f = frame(0x00, 0x07, 0, 1, &[]);
            f[6] = 4;
            f
        }, // msg_size < header
        frame(0x00, 0x09, 0, 1, &[1, 2]),           // GET_VQUEUE shorter than its payload
        frame(0x00, 0x3F, 0, 1, &[]),               // unknown transport id
        frame(0x02, 0x3E, 0, 1, &[]),               // unknown bus id
    ];
    for f in &cases {
        inst.on_frame(&codec, f, &mut bus, &mut out)
            .expect("on_frame");
    }
    inst.on_frame(&codec, &frame(0x00, 0x07, 9, 1, &[]), &mut bus, &mut out)
        .expect("unknown device");
    inst.on_frame(
        &codec,
        &frame(0x01, 0x07, 0, 1, &[0; 4]),
        &mut bus,
        &mut out,
    )
    .expect("response to device");
    assert!(
        bus.sent.is_empty(),
        "nothing is ever answered: {:?}",
        bus.sent
    );
    let stats = inst.stats();
    assert_eq!(stats.drops.malformed, 7, "{stats:?}");
    assert_eq!(stats.drops.unknown_msg_id, 2, "{stats:?}");
    assert_eq!(stats.drops.unknown_device, 1, "{stats:?}");
    assert_eq!(stats.drops.unexpected, 1, "{stats:?}");
}

#[test]
fn bus_messages_ping_and_get_devices() {
    let codec = Codec::new(Profile::V2, 264).expect("codec");
    let rng = |n| {
        Box::new(RngDevice::new(format!("rng{n}"), Box::new(HostEntropy), None).expect("rng"))
            as Box<dyn vmsg_backend::device::VirtioDevice>
    };
    let mut inst = GuestInstance::new(
        "bus",
        InstanceOptions::default(),
        vec![(0, rng(0)), (2, rng(2)), (5, rng(5)), (40, rng(40))],
    )
    .expect("instance");
    let mut bus = FakeBus::new(264, 0x4000_0000, 1 << 20).expect("fake bus");
    inst.attach(&bus).expect("attach");
    let mut out = vec![0u8; 264];
    inst.on_frame(
        &codec,
        &frame(0x02, 0x03, 0, 77, &0xDEADBEEFu32.to_le_bytes()),
        &mut bus,
        &mut out,
    )
    .expect("ping");
    assert_eq!(
        bus.sent.pop_front().expect("pong"),
        frame(0x03, 0x03, 0, 77, &0xDEADBEEFu32.to_le_bytes())
    );
    // §4.1's example: offset 0, count 16 -> bitmap 0x25 0x00 (devices 0, 2, 5).
    let mut req = 0u16.to_le_bytes().to_vec();
    req.extend_from_slice(&16u16.to_le_bytes());
    inst.on_frame(&codec, &frame(0x02, 0x02, 0, 3, &req), &mut bus, &mut out)
        .expect("get_devices");
    let r = bus.sent.pop_front().expect("devices");
    assert_eq!(&r[..8], &[0x03, 0x02, 0, 0, 3, 0, (r.len()) as u8, 0]);
    let offset = u16::from_le_bytes([r[8], r[9]]);
    let next = u16::from_le_bytes([r[10], r[11]]);
    let count = u16::from_le_bytes([r[12], r[13]]);
    assert_eq!(offset, 0);
    assert!((6..=16).contains(&count), "count {count}");
    assert_eq!(r[14] & 0x25, 0x25);
    assert_eq!(r[14] & !0x25, 0, "only devices 0, 2, 5");
    assert_eq!(next, 40, "continue at the next present device");
    // A bus request with a non-zero dev_num is malformed.
    inst.on_frame(
        &codec,
        &frame(0x02, 0x03, 3, 1, &[0; 4]),
        &mut bus,
        &mut out,
    )
    .expect("bad ping");
    assert!(bus.sent.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_frame_sequences(frames in proptest::collection::vec(
        (prop_oneof![Just(0u8), Just(1), Just(2), Just(3), any::<u8>()],
         prop_oneof![0x02u8..0x0D, 0x40u8..0x43, any::<u8>()],
         prop_oneof![Just(0u16), Just(1), any::<u16>()],
         any::<u16>(),
         proptest::collection::vec(any::<u8>(), 0..80),
         any::<bool>()), 1..48)) {
        let codec = Codec::new(Profile::V2, 264).expect("codec");
        let mut inst = instance();
        let mut bus = FakeBus::new(264, 0x4000_0000, 1 << 20).expect("fake bus");
        inst.attach(&bus).expect("attach");
        let mut out = vec![0u8; 264];
        let mut expected_responses = 0u64;
        for (ty, id, dev, token, payload, lie_about_size) in frames {
            let mut f = frame(ty, id, dev, token, &payload);
            if lie_about_size {
                f[6] = payload.len() as u8;
            }
            let before = bus.sent.len();
            inst.on_frame(&codec, &f, &mut bus, &mut out).expect("on_frame never fails on guest input");
            let answered: Vec<_> = bus.sent.range(before..).filter(|r| r[0] & 1 == 1).cloned().collect();
            prop_assert!(answered.len() <= 1, "at most one response per frame");
            if let Some(r) = answered.first() {
                expected_responses += 1;
                prop_assert_eq!(r[1], id, "same msg_id");
                prop_assert_eq!(&r[4..6], &token.to_le_bytes(), "same token");
                prop_assert_eq!(r[0] & 0xFE, ty & 0x02, "same namespace");
            }
        }
        let stats = inst.stats();
        let dropped = stats.drops.malformed + stats.drops.unknown_device + stats.drops.unexpected
            + stats.drops.device_dropped + stats.drops.bus_unhandled;
        let answered = bus.sent.iter().filter(|r| r[0] & 1 == 1).count() as u64;
        prop_assert_eq!(answered, expected_responses);
        // Every frame is answered, dropped and counted, or a valid event.
        prop_assert!(answered + dropped <= stats.frames);
    }
}
