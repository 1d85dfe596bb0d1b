//! The suite against the test-only fake device: everything passes on the
//! conformant fake, and each quirk makes the case for its rule fail.

use std::time::Duration;

use super::*;
use crate::fake::{FakeDevice, FakeDeviceBus, Quirks};

fn cfg(filter: &str) -> SuiteConfig {
    SuiteConfig {
        filter: filter.into(),
        timeout: Duration::from_millis(200),
        drop_window: Duration::from_millis(10),
        reset_timeout: Duration::from_millis(500),
    }
}

fn run(fake: &FakeDeviceBus, filter: &str) -> Report {
    let mut make = || -> Result<Box<dyn DriverBus>, String> { Ok(Box::new(fake.reconnect())) };
    let dev = fake.device().dev_num;
    run_suite_with(&mut make, dev, &cfg(filter))
}

fn fake(quirks: Quirks) -> FakeDeviceBus {
    let mut d = FakeDevice::rng(5, 264);
    d.quirks = quirks;
    FakeDeviceBus::new(d)
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
    // Only the strict-profile case is not applicable on a baseline bus.
    assert_eq!(r.skipped(), 1, "{r}");
    assert!(
        r.get("config.strict_rejects_stale_generation")
            .is_some_and(|c| matches!(c.outcome, Outcome::Skip(_)))
    );
    let text = r.to_string();
    let last = text.lines().last().expect("summary line");
    assert_eq!(last, format!("{} passed, 0 failed, 1 skipped", r.passed()));
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
