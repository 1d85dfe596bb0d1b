//! Session, init, virtqueue and rng tests against the test-only fake device.

use std::time::{Duration, Instant};

use crate::device::{FeatureSet, InitError, VirtioDevice};
use crate::driver::{Driver, DriverError};
use crate::fake::{FakeDevice, FakeDeviceBus};
use crate::rng::Rng;
use crate::wire::{self, Event, Request, Response, feature};

fn bus(max: usize) -> FakeDeviceBus {
    FakeDeviceBus::new(FakeDevice::rng(3, max))
}

fn driver(b: &FakeDeviceBus) -> Driver {
    Driver::new(Box::new(b.reconnect()))
        .expect("driver")
        .with_timeout(Duration::from_millis(50))
}

#[test]
fn rejects_bad_max_msg_size() {
    let b = FakeDeviceBus::new(FakeDevice::rng(0, 40));
    assert!(matches!(
        Driver::new(Box::new(b)),
        Err(DriverError::BadMaxMsgSize { max: 40, .. })
    ));
}

#[test]
fn tokens_skip_zero_and_outstanding() {
    let b = bus(264);
    let mut d = driver(&b);
    let p = d
        .submit_with_token(3, 2, Request::GetDeviceStatus)
        .expect("submit");
    d.next_token_for_test(u16::MAX);
    assert_eq!(d.alloc_token(), u16::MAX);
    assert_eq!(d.alloc_token(), 1, "0 is skipped on wrap");
    assert_eq!(d.alloc_token(), 3, "2 is outstanding");
    d.wait(&p).expect("response");
    d.next_token_for_test(2);
    assert_eq!(d.alloc_token(), 2, "free again once collected");
}

#[test]
fn request_roundtrip_and_typed_helpers() {
    let b = bus(264);
    let mut d = driver(&b);
    let info = d.get_device_info(3).expect("info");
    assert_eq!(info.device_id, 4);
    assert_eq!(d.set_device_status(3, 1).expect("set"), 1);
    assert_eq!(d.get_device_status(3).expect("get"), 1);
    d.ping(0xfeed_f00d).expect("ping");
    let (len, _) = d.get_shm(3, 0).expect("shm");
    assert_eq!(len, 0);
}

#[test]
fn timeout_is_bounded_and_reported() {
    let b = bus(264);
    let mut d = driver(&b);
    let t0 = Instant::now();
    let e = d
        .request(9, Request::GetDeviceStatus)
        .expect_err("no device 9");
    assert!(matches!(e, DriverError::Timeout { dev_num: 9, .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(500));
}

#[test]
fn wrong_token_is_a_timeout_not_a_match() {
    let b = bus(264);
    b.device().quirks.wrong_token = true;
    let mut d = driver(&b);
    assert!(matches!(
        d.request(3, Request::GetDeviceStatus),
        Err(DriverError::Timeout { .. })
    ));
    assert_eq!(
        d.take_unclaimed().len(),
        1,
        "the mis-tokened response stays unclaimed"
    );
}

#[test]
fn mismatched_msg_id_is_a_bad_response() {
    let b = bus(264);
    let mut d = driver(&b);
    // Send GET_DEVICE_STATUS bytes but wait as if it were SET_DEVICE_STATUS with that token.
    let f = Request::GetDeviceStatus.encode(3, 77).expect("encode");
    d.send_frame(&f).expect("send");
    let p = crate::driver::Pending {
        dev_num: 3,
        token: 77,
        request: Request::SetDeviceStatus { status: 0 },
    };
    let e = d.wait(&p).expect_err("mismatch");
    assert!(matches!(e, DriverError::BadResponse { .. }), "{e}");
}

#[test]
fn events_are_queued_while_waiting() {
    let b = bus(264);
    b.device().quirks.event_config_on_status = true;
    let mut d = driver(&b);
    assert_eq!(d.set_device_status(3, 1).expect("set"), 1);
    assert_eq!(d.get_device_status(3).expect("get"), 1);
    let evs = d.take_events();
    assert_eq!(evs.len(), 1);
    assert!(matches!(evs[0], Event::Config { dev_num: 3, .. }));
}

#[test]
fn pipelined_out_of_order_waits() {
    let b = bus(264);
    let mut d = driver(&b);
    let p1 = d.submit(3, Request::GetVqueue { index: 0 }).expect("p1");
    let p2 = d.submit(3, Request::GetDeviceInfo).expect("p2");
    assert!(matches!(d.wait(&p2).expect("r2"), Response::DeviceInfo(_)));
    assert!(matches!(d.wait(&p1).expect("r1"), Response::Vqueue(_)));
}

#[test]
fn discovery_walks_windows() {
    for (dev, max) in [(3u16, 52usize), (700, 52), (0, 264), (65535, 52)] {
        let b = FakeDeviceBus::new(FakeDevice::rng(dev, max));
        let mut d = Driver::new(Box::new(b)).expect("driver");
        assert_eq!(
            d.discover().expect("discover"),
            vec![dev],
            "dev {dev} max {max}"
        );
    }
}

#[test]
fn full_init_sequence() {
    let b = bus(52);
    b.device().quirks.reset_pending_polls = 3;
    let d = driver(&b);
    let mut dev = VirtioDevice::initialize(d, 3, &FeatureSet::from_bits(&[feature::RING_RESET]))
        .expect("init");
    let neg = dev.negotiated().clone();
    assert!(neg.contains(feature::VERSION_1));
    assert!(neg.contains(feature::EVENT_IDX));
    assert!(neg.contains(feature::RING_RESET));
    // Config chunking at the minimum message size (32 data bytes per chunk).
    assert_eq!(
        dev.read_config(0, 12).expect("cfg"),
        (0..12).collect::<Vec<u8>>()
    );
    dev.write_config(4, &[9, 9]).expect("write");
    assert_eq!(dev.read_config(3, 4).expect("cfg"), vec![3, 9, 9, 6]);
    assert!(matches!(
        dev.read_config(10, 4),
        Err(InitError::ConfigRange { .. })
    ));
    let q = dev.setup_queue(0, 1000).expect("queue");
    assert_eq!(q.layout().size, 256);
    assert!(dev.setup_queue(0, 8).is_err(), "already enabled");
    assert!(dev.setup_queue(1, 8).is_err(), "beyond max_virtqueues");
    dev.driver_ok().expect("driver ok");
    assert_eq!(dev.status().expect("status"), 15);
}

#[test]
fn feature_refusal_detected() {
    let b = bus(264);
    b.device().offered[1] = 0; // no VERSION_1
    let d = driver(&b);
    assert!(matches!(
        VirtioDevice::initialize(d, 3, &FeatureSet::new()),
        Err(InitError::NoVersion1)
    ));
}

#[test]
fn strict_profile_sends_last_generation() {
    let b = bus(264);
    b.device().transport_features = wire::transport_feature::STRICT_CONFIG_GENERATION;
    let d = driver(&b);
    let mut dev = VirtioDevice::initialize(d, 3, &FeatureSet::new()).expect("init");
    // Without having read config, generation 0 is stale: the device rejects.
    assert!(matches!(
        dev.write_config(0, &[1]),
        Err(InitError::ConfigWriteRejected { .. })
    ));
    // The rejected response carried the current generation, so the retry works.
    dev.write_config(0, &[1])
        .expect("write with current generation");
}

#[test]
fn rng_reads_bytes_with_and_without_events() {
    for polling in [false, true] {
        let b = bus(264);
        b.device().quirks.no_used_event = polling;
        let mut r = Rng::open(driver(&b), 3).expect("open");
        let bytes = r.read(5000).expect("read");
        assert_eq!(bytes.len(), 5000);
        assert!(bytes.iter().any(|&x| x != 0));
        let d = r.close().expect("close");
        assert_eq!(d.max_msg_size(), 264);
    }
}

#[test]
fn rng_refuses_other_devices() {
    let b = bus(264);
    b.device().info.device_id = 1;
    assert!(matches!(
        Rng::open(driver(&b), 3),
        Err(crate::rng::RngError::NotRng(1))
    ));
}

#[test]
fn device_ping_is_answered() {
    let b = bus(264);
    let mut d = driver(&b);
    let ping = Request::Ping { data: 5 }.encode(0, 44).expect("encode");
    b.device().out_push_for_test(ping);
    d.drain(Duration::from_millis(5)).expect("drain");
    let last = b.device().received.last().cloned().expect("sent");
    let (h, _) = wire::split_frame(&last).expect("frame");
    assert!(h.is_response());
    assert_eq!((h.msg_id, h.token), (wire::bus_msg::PING, 44));
}

fn bus_for(profile: wire::Profile, max: usize) -> FakeDeviceBus {
    let mut d = FakeDevice::rng(3, max);
    d.profile = profile;
    FakeDeviceBus::new(d)
}

#[test]
fn rfc2_session_one_request_at_a_time() {
    let b = bus_for(wire::Profile::Rfc2, 44);
    let mut d = driver(&b);
    assert_eq!(d.profile(), wire::Profile::Rfc2);
    let p = d.submit(3, Request::GetDeviceStatus).expect("submit");
    let e = d
        .submit(3, Request::GetDeviceInfo)
        .expect_err("a second request while one is outstanding");
    assert!(matches!(e, DriverError::Outstanding { .. }), "{e}");
    // Frames are padded to the 44-byte bus maximum, the token is not on the wire.
    let sent = b.device().received.last().cloned().expect("sent");
    assert_eq!(sent.len(), 44);
    assert_eq!(&sent[..6], &[0, wire::msg::GET_DEVICE_STATUS, 3, 0, 6, 0]);
    // The response (token 0 on the wire) is correlated by dev_num and msg_id.
    assert!(matches!(
        d.wait(&p).expect("response"),
        Response::DeviceStatus { .. }
    ));
    d.submit(3, Request::GetDeviceInfo).expect("free again");
}

#[test]
fn rfc2_stray_response_is_not_claimed() {
    let b = bus_for(wire::Profile::Rfc2, 44);
    let mut d = driver(&b);
    // A GET_DEVICE_INFO response nobody asked for must not satisfy a
    // GET_DEVICE_STATUS request.
    let stray = Response::DeviceStatus { status: 1 }
        .encode_for(wire::Profile::Rfc2, 3, 0)
        .expect("encode");
    b.device().out_push_for_test(wire::pad_frame(stray, 44));
    let info = d.get_device_info(3).expect("info");
    assert_eq!(info.num_feature_blocks, 2);
    assert_eq!(d.take_unclaimed().len(), 1);
}

#[test]
fn old_profiles_require_synchronous_reset() {
    for profile in [wire::Profile::V1, wire::Profile::Rfc2] {
        let b = bus_for(profile, 264);
        b.device().quirks.reset_pending_polls = 1;
        let e =
            VirtioDevice::initialize(driver(&b), 3, &FeatureSet::new()).expect_err("pending reset");
        assert!(
            matches!(e, InitError::ResetNotSynchronous { status: 1, .. }),
            "{profile}: {e}"
        );
    }
}

#[test]
fn full_init_and_rng_under_every_profile() {
    for profile in wire::Profile::ALL {
        for max in [profile.min_max_msg_size(), 264] {
            let b = bus_for(profile, max);
            let d = driver(&b);
            let mut dev = VirtioDevice::initialize(d, 3, &FeatureSet::new()).expect("init");
            // Config chunks follow the header size (26 bytes on a 44-byte RFC2 bus).
            assert_eq!(dev.config_chunk(), max - profile.header_size() - 12);
            assert_eq!(
                dev.read_config(0, 12).expect("cfg"),
                (0..12).collect::<Vec<u8>>()
            );
            // v1 sends the generation it saw; a stale one would be refused.
            dev.write_config(4, &[9, 9]).expect("write");
            let q = dev.setup_queue(0, 16).expect("queue");
            assert_eq!(q.layout().size, 16);
            dev.driver_ok().expect("driver ok");
            let mut r = Rng::open(dev.into_driver(), 3).expect("open");
            assert_eq!(r.read(100).expect("read").len(), 100, "{profile} {max}");
            let mut d = r.close().expect("close");
            assert_eq!(d.discover().expect("discover"), vec![3], "{profile} {max}");
        }
    }
}

#[test]
fn session_refuses_a_bus_of_another_profile_or_size() {
    let b = bus_for(wire::Profile::V1, 264);
    assert!(matches!(
        Driver::with_profile(Box::new(b), wire::Profile::V2),
        Err(DriverError::ProfileMismatch { .. })
    ));
    let b = bus_for(wire::Profile::V1, 44);
    assert!(matches!(
        Driver::new(Box::new(b)),
        Err(DriverError::BadMaxMsgSize {
            max: 44,
            min: 48,
            ..
        })
    ));
    let b = bus_for(wire::Profile::Rfc2, 44);
    assert!(Driver::new(Box::new(b)).is_ok());
}
