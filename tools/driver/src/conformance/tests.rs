//! The suite against the test-only fake device: everything passes on the
//! conformant fake, and each quirk makes the case for its rule fail.

use std::time::Duration;

use super::*;
use crate::fake::{FakeDevice, FakeDeviceBus, Quirks};
use crate::fake_blk::{BlkQuirks, FakeBlk};
use crate::fake_i2c::{FakeI2c, I2cQuirks};
use crate::rng::VIRTIO_ID_RNG;

fn cfg_for(profile: Profile, filter: &str) -> SuiteConfig {
    SuiteConfig {
        profile,
        filter: filter.into(),
        timeout: Duration::from_millis(200),
        drop_window: Duration::from_millis(10),
        reset_timeout: Duration::from_millis(500),
    }
}

fn run(fake: &FakeDeviceBus, filter: &str) -> Report {
    let mut make = || -> Result<Box<dyn DriverBus>, String> { Ok(Box::new(fake.reconnect())) };
    let (dev, profile) = {
        let d = fake.device();
        (d.dev_num, d.profile)
    };
    run_suite_with(&mut make, dev, &cfg_for(profile, filter))
}

fn fake(quirks: Quirks) -> FakeDeviceBus {
    fake_for(Profile::V2, 264, quirks)
}

fn fake_for(profile: Profile, max: usize, quirks: Quirks) -> FakeDeviceBus {
    let mut d = FakeDevice::rng(5, max);
    d.profile = profile;
    d.quirks = quirks;
    FakeDeviceBus::new(d)
}

/// Every skip is a rule of another profile, a case for another device
/// type than the fake rng, or one of `allowed`.
fn only_profile_skips(r: &Report, profile: Profile, allowed: &[&str]) {
    for c in &r.results {
        if let Outcome::Skip(why) = &c.outcome {
            assert!(
                why.starts_with(&format!("not a {profile} rule"))
                    || why.starts_with("needs device_id")
                    || allowed.contains(&c.name.as_str()),
                "{} skipped: {why}\n{r}",
                c.name
            );
        }
    }
}

#[test]
fn case_names_unique_and_tagged() {
    let cs = cases();
    let mut names: Vec<_> = cs.iter().map(|c| c.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cs.len(), "duplicate case names");
    assert!(cs.len() >= 60, "only {} cases", cs.len());
    assert!(cs.iter().all(|c| c.spec.contains('§')));
}

#[test]
fn conformant_fake_passes_everything() {
    let f = fake(Quirks {
        reset_pending_polls: 2,
        ..Default::default()
    });
    let r = run(&f, "");
    assert_eq!(r.failed(), 0, "{r}");
    // Only the strict-profile case and the rules of the older profiles are
    // not applicable on a v2 baseline bus.
    only_profile_skips(&r, Profile::V2, &["config.strict_rejects_stale_generation"]);
    assert!(
        r.get("config.strict_rejects_stale_generation")
            .is_some_and(|c| matches!(c.outcome, Outcome::Skip(_)))
    );
    let others = cases()
        .iter()
        .filter(|c| {
            !c.profiles.contains(&Profile::V2)
                || matches!(c.needs, Needs::DeviceId(id) if id != VIRTIO_ID_RNG)
        })
        .count();
    assert_eq!(r.skipped(), 1 + others, "{r}");
    let text = r.to_string();
    let last = text.lines().last().expect("summary line");
    assert_eq!(
        last,
        format!("{} passed, 0 failed, {} skipped", r.passed(), 1 + others)
    );
}

#[test]
fn conformant_fake_passes_under_every_profile() {
    for profile in Profile::ALL {
        // RFC2 peers use fixed 44-byte frames; v1's smallest workable bus is 48.
        for max in [264, profile.min_max_msg_size()] {
            let f = fake_for(profile, max, Quirks::default());
            let r = run(&f, "");
            assert_eq!(r.failed(), 0, "{profile} max {max}:\n{r}");
            let strict = if profile == Profile::V1 {
                vec![]
            } else {
                vec!["config.strict_rejects_stale_generation"]
            };
            only_profile_skips(&r, profile, &strict);
            let own = match profile {
                Profile::V2 => vec!["vq.set_load_disabled_then_enable"],
                Profile::V1 => vec![
                    "reset.synchronous",
                    "vq.set_configures_and_enables",
                    "bus.get_devices_v1_aligned",
                    "config.strict_rejects_stale_generation",
                ],
                Profile::Rfc2 => vec![
                    "reset.synchronous",
                    "info.rfc2_64_feature_bits",
                    "vq.set_configures_and_enables",
                ],
            };
            for name in own {
                assert!(
                    r.get(name).is_some_and(|c| c.outcome == Outcome::Pass),
                    "{profile}: {name} did not pass:\n{r}"
                );
            }
        }
    }
}

#[test]
fn profile_rules_are_detected() {
    let cases: [(Profile, Quirks, &str); 6] = [
        (
            Profile::V1,
            Quirks {
                reset_pending_polls: 2,
                ..Default::default()
            },
            "reset.synchronous",
        ),
        (
            Profile::Rfc2,
            Quirks {
                reset_pending_polls: 1,
                ..Default::default()
            },
            "reset.synchronous",
        ),
        (
            Profile::V1,
            Quirks {
                v2_set_vqueue: true,
                ..Default::default()
            },
            "vq.set_configures_and_enables",
        ),
        (
            Profile::V1,
            Quirks {
                ignore_generation: true,
                ..Default::default()
            },
            "config.strict_rejects_stale_generation",
        ),
        (
            Profile::V1,
            Quirks {
                unaligned_devices: true,
                ..Default::default()
            },
            "bus.get_devices_v1_aligned",
        ),
        (
            Profile::Rfc2,
            Quirks {
                v2_set_vqueue: true,
                ..Default::default()
            },
            "vq.set_configures_and_enables",
        ),
    ];
    for (profile, q, case) in cases {
        let f = fake_for(profile, 264, q);
        let r = run(&f, case);
        let c = r
            .get(case)
            .unwrap_or_else(|| panic!("{profile}: case {case} not run:\n{r}"));
        assert!(
            matches!(c.outcome, Outcome::Fail(_)),
            "{profile}: {case} should fail:\n{r}"
        );
    }
    // The Linux RFC needs exactly 64 feature bits.
    let f = fake_for(Profile::Rfc2, 44, Quirks::default());
    {
        let mut d = f.device();
        d.info.num_feature_blocks = 3;
        d.offered.push(0);
    }
    let r = run(&f, "info.rfc2_64");
    assert_eq!(r.failed(), 1, "{r}");
}

#[test]
fn v2_only_cases_are_skipped_with_the_reason() {
    let f = fake_for(Profile::Rfc2, 44, Quirks::default());
    let r = run(&f, "vq.set_state_op_3_noop,resp.token_echo,order.");
    for name in [
        "vq.set_state_op_3_noop",
        "resp.token_echo",
        "order.pipelined_processing_order",
        "order.pipelined_response_order",
    ] {
        assert!(
            r.get(name).is_some_and(
                |c| matches!(&c.outcome, Outcome::Skip(w) if w.starts_with("not a rfc2 rule:"))
            ),
            "{name}:\n{r}"
        );
    }
    assert!(
        r.get("order.exactly_one_response")
            .is_some_and(|c| c.outcome == Outcome::Pass),
        "{r}"
    );
}

#[test]
fn a_bus_of_another_profile_fails_every_case() {
    let f = fake_for(Profile::V1, 264, Quirks::default());
    let mut make = || -> Result<Box<dyn DriverBus>, String> { Ok(Box::new(f.reconnect())) };
    let r = run_suite_with(&mut make, 5, &cfg_for(Profile::V2, "bus.ping"));
    assert_eq!(r.failed(), 1, "{r}");
    assert!(r.to_string().contains("the bus speaks v1"), "{r}");
}

#[test]
fn conformant_fake_at_minimum_message_size() {
    let mut d = FakeDevice::rng(0, 52);
    d.quirks.reset_pending_polls = 1;
    let f = FakeDeviceBus::new(d);
    let r = run(&f, "");
    assert_eq!(r.failed(), 0, "{r}");
}

#[test]
fn strict_profile_cases() {
    let f = fake(Quirks::default());
    f.device().transport_features = crate::wire::transport_feature::STRICT_CONFIG_GENERATION;
    let r = run(&f, "config.");
    assert_eq!(r.failed(), 0, "{r}");
    assert!(
        r.get("config.strict_rejects_stale_generation")
            .is_some_and(|c| c.outcome == Outcome::Pass),
        "{r}"
    );
    assert!(
        r.get("config.baseline_ignores_generation")
            .is_some_and(|c| matches!(c.outcome, Outcome::Skip(_)))
    );
}

#[test]
fn polling_bus_skips_used_event() {
    let mut f = fake(Quirks {
        no_used_event: true,
        ..Default::default()
    });
    f.polling = true;
    let r = run(&f, "event.,rng.");
    assert_eq!((r.passed(), r.failed(), r.skipped()), (2, 0, 1), "{r}");
}

fn expect_fail(q: Quirks, case: &str) {
    let f = fake(q);
    let r = run(&f, case);
    let c = r
        .get(case)
        .unwrap_or_else(|| panic!("case {case} not run:\n{r}"));
    assert!(
        matches!(c.outcome, Outcome::Fail(_)),
        "{case} should fail:\n{r}"
    );
}

#[test]
fn quirks_are_detected() {
    expect_fail(
        Quirks {
            wrong_token: true,
            ..Default::default()
        },
        "resp.token_echo",
    );
    expect_fail(
        Quirks {
            answer_responses: true,
            ..Default::default()
        },
        "frame.response_typed_dropped",
    );
    expect_fail(
        Quirks {
            keep_queues_on_reset: true,
            ..Default::default()
        },
        "reset.clears_status_and_queues",
    );
    expect_fail(
        Quirks {
            accept_unoffered: true,
            ..Default::default()
        },
        "features.ok_refused_for_unoffered_bit",
    );
    expect_fail(
        Quirks {
            accept_unoffered: true,
            ..Default::default()
        },
        "features.set_updates_only_addressed_blocks",
    );
    expect_fail(
        Quirks {
            event_config_on_status: true,
            ..Default::default()
        },
        "status.no_event_config_on_driver_write",
    );
    expect_fail(
        Quirks {
            answer_config_out_of_range: true,
            ..Default::default()
        },
        "config.get_past_size_dropped",
    );
    expect_fail(
        Quirks {
            no_used_event: true,
            ..Default::default()
        },
        "event.used_after_buffers",
    );
    expect_fail(
        Quirks {
            sentinel_garbage: true,
            ..Default::default()
        },
        "vq.get_out_of_range_sentinel",
    );
    expect_fail(
        Quirks {
            process_before_driver_ok: true,
            ..Default::default()
        },
        "rng.no_io_before_driver_ok",
    );
}

#[test]
fn other_device_types_skip_rng_cases() {
    let f = fake(Quirks::default());
    f.device().info.device_id = 2;
    let r = run(&f, "rng.");
    assert_eq!((r.passed(), r.failed(), r.skipped()), (0, 0, 2), "{r}");
}

#[test]
fn connection_failure_is_a_failure() {
    let mut make = || -> Result<Box<dyn DriverBus>, String> { Err("refused".into()) };
    let r = run_suite(&mut make, 0, "bus.ping");
    assert_eq!(r.failed(), 1);
    assert!(r.to_string().ends_with("0 passed, 1 failed\n"));
}

fn fake_blk(read_only: bool, quirks: BlkQuirks) -> FakeDeviceBus {
    FakeDeviceBus::new(FakeDevice::blk(
        3,
        264,
        FakeBlk::new(2048, read_only, quirks),
    ))
}

#[test]
fn conformant_fake_blk_passes() {
    // Writable: only the 2 read-only rules skip; read-only: the 7 write
    // rules (the fake has two queues either way).
    for (read_only, blk_skips) in [(false, 2), (true, 7)] {
        let f = fake_blk(read_only, BlkQuirks::default());
        let r = run(&f, "blk.");
        assert_eq!(r.failed(), 0, "read_only {read_only}:\n{r}");
        assert_eq!(r.skipped(), blk_skips, "read_only {read_only}:\n{r}");
        // The transport cases hold on a blk device too.
        let r = run(&f, "");
        assert_eq!(r.failed(), 0, "read_only {read_only}:\n{r}");
    }
    // The scratch area is put back: the disk is as before the suite.
    let f = fake_blk(false, BlkQuirks::default());
    f.device().blk.as_mut().expect("blk").disk.fill(0x5A);
    run(&f, "blk.");
    let d = f.device();
    let disk = &d.blk.as_ref().expect("blk").disk;
    assert!(
        disk.iter().all(|&b| b == 0x5A),
        "the suite left the disk as it was"
    );
}

#[test]
fn blk_quirks_are_detected() {
    let q = BlkQuirks::default;
    let cases: Vec<(BlkQuirks, bool, &str)> = vec![
        (
            BlkQuirks {
                unknown_ioerr: true,
                ..q()
            },
            false,
            "blk.unknown_type_unsupp",
        ),
        (
            BlkQuirks {
                ro_writes: true,
                ..q()
            },
            true,
            "blk.ro_write_ioerr",
        ),
        (
            BlkQuirks {
                no_bounds: true,
                ..q()
            },
            false,
            "blk.capacity_bounds_reads",
        ),
        (
            BlkQuirks {
                no_bounds: true,
                ..q()
            },
            false,
            "blk.out_of_range_write_ioerr",
        ),
        (
            BlkQuirks {
                no_bounds: true,
                ..q()
            },
            false,
            "blk.discard_ok",
        ),
        (
            BlkQuirks {
                discard_unmap_ok: true,
                ..q()
            },
            false,
            "blk.discard_unmap_unsupp",
        ),
        (
            BlkQuirks {
                unknown_flags_ok: true,
                ..q()
            },
            false,
            "blk.unknown_segment_flag_unsupp",
        ),
        (
            BlkQuirks {
                wz_no_zero: true,
                ..q()
            },
            false,
            "blk.write_zeroes_reads_zero",
        ),
        (
            BlkQuirks {
                used_len_zero: true,
                ..q()
            },
            false,
            "blk.status_and_used_len",
        ),
        (
            BlkQuirks {
                padding: true,
                ..q()
            },
            false,
            "blk.config_padding_zero",
        ),
        (
            BlkQuirks {
                wce_without_flush: true,
                ..q()
            },
            false,
            "blk.wce_offered_with_flush",
        ),
        (
            BlkQuirks {
                wce_stays_writeback: true,
                ..q()
            },
            false,
            "blk.wce_without_flush_writethrough",
        ),
        (
            BlkQuirks {
                id_garbage: true,
                ..q()
            },
            false,
            "blk.get_id",
        ),
        (
            BlkQuirks {
                flush_no_status: true,
                ..q()
            },
            false,
            "blk.flush_ok",
        ),
        (
            BlkQuirks {
                reads_zero: true,
                ..q()
            },
            false,
            "blk.write_read_back",
        ),
    ];
    for (quirks, read_only, case) in cases {
        let f = fake_blk(read_only, quirks.clone());
        let r = run(&f, case);
        let c = r
            .get(case)
            .unwrap_or_else(|| panic!("case {case} not run:\n{r}"));
        assert!(
            matches!(c.outcome, Outcome::Fail(_)),
            "{case} should fail with {quirks:?}:\n{r}"
        );
    }
}

fn fake_i2c(quirks: I2cQuirks) -> FakeDeviceBus {
    FakeDeviceBus::new(FakeDevice::i2c(4, 264, FakeI2c::new(quirks)))
}

#[test]
fn conformant_fake_i2c_passes() {
    let f = fake_i2c(I2cQuirks::default());
    let r = run(&f, "i2c.");
    assert_eq!(r.failed(), 0, "{r}");
    assert_eq!(r.skipped(), 0, "{r}");
    assert_eq!(r.passed(), 9, "{r}");
    // The transport cases hold on an i2c device too.
    let r = run(&f, "");
    assert_eq!(r.failed(), 0, "{r}");
    // Nothing was written to the target that answered.
    let d = f.device();
    assert!(
        d.i2c.as_ref().expect("i2c").regs.iter().all(|&b| b == 0),
        "the suite wrote only to absent addresses"
    );
}

#[test]
fn i2c_quirks_are_detected() {
    let q = I2cQuirks::default;
    let cases: Vec<(I2cQuirks, &str)> = vec![
        (
            I2cQuirks {
                no_zero_length_offer: true,
                ..q()
            },
            "i2c.zero_length_offered",
        ),
        (
            I2cQuirks {
                accept_without_zero_length: true,
                ..q()
            },
            "i2c.rejects_without_zero_length",
        ),
        (
            I2cQuirks {
                no_status: true,
                ..q()
            },
            "i2c.status_written",
        ),
        (
            I2cQuirks {
                ignore_fail_next: true,
                ..q()
            },
            "i2c.fail_next_fails_rest",
        ),
        (
            I2cQuirks {
                fail_rest_of_pass: true,
                ..q()
            },
            "i2c.groups_are_independent",
        ),
        (
            I2cQuirks {
                reverse_order: true,
                ..q()
            },
            "i2c.in_order",
        ),
        (
            I2cQuirks {
                scribble_write_buffer: true,
                ..q()
            },
            "i2c.request_unchanged",
        ),
        (
            I2cQuirks {
                short_used_len: true,
                ..q()
            },
            "i2c.read_fills_buffer",
        ),
    ];
    for (quirks, case) in cases {
        let f = fake_i2c(quirks.clone());
        let r = run(&f, case);
        let c = r
            .get(case)
            .unwrap_or_else(|| panic!("case {case} not run:\n{r}"));
        assert!(
            matches!(c.outcome, Outcome::Fail(_)),
            "{case} should fail with {quirks:?}:\n{r}"
        );
    }
    // An adapter where everything answers: no absent address to test with.
    let f = fake_i2c(I2cQuirks {
        absent_ok: true,
        ..q()
    });
    let r = run(&f, "i2c.absent_address_err");
    assert!(
        r.get("i2c.absent_address_err")
            .is_some_and(|c| matches!(c.outcome, Outcome::Skip(_))),
        "{r}"
    );
}
