//! The conformance suite under every wire profile over the local bus, against
//! a daemon started from a TOML config that selects that profile
//! (`bus = { kind = "local", socket = "...", profile = "v1" }`), with an rng
//! and a blk device; and a driver asking for another profile is refused at
//! the handshake with both names in the reason.

use std::path::Path;
use std::time::Duration;

use vmsg_backend::instance::StopSignal;
use vmsg_backend::local::{LocalBusClient, LocalBusError, RejectCode};
use vmsg_driver::conformance::{Report, SuiteConfig, run_suite_with};
use vmsg_driver::local::{connector, options_for};
use vmsg_driver::wire::Profile;
use vmsgd::config::Config;
use vmsgd::daemon::Daemon;

/// A daemon serving one guest (rng at 0, blk at 1) under `profile` with
/// bus maximum `max`, from a config file in `dir`.
fn daemon(dir: &Path, profile: Profile, max: usize) -> Daemon {
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let text = format!(
        r#"
[[guest]]
name = "g"
bus = {{ kind = "local", socket = "{sock}", profile = "{profile}", max_msg_size = {max} }}

[[guest.device]]
kind = "rng"
dev_num = 0

[[guest.device]]
kind = "blk"
dev_num = 1
path = "disk.img"
engine = "sync"
"#,
        sock = dir.join("g.sock").display(),
    );
    let file = dir.join("vmsgd.toml");
    std::fs::write(&file, &text).expect("config");
    let config = Config::load(&file).expect("config parses");
    Daemon::start(&config, StopSignal::new().expect("stop")).expect("daemon starts")
}

fn suite(dir: &Path, profile: Profile, dev_num: u16) -> Report {
    let mut make = connector(dir.join("g.sock"), options_for(profile));
    let cfg = SuiteConfig {
        profile,
        timeout: Duration::from_secs(2),
        drop_window: Duration::from_millis(50),
        ..SuiteConfig::default()
    };
    run_suite_with(&mut make, dev_num, &cfg)
}

fn green_under(profile: Profile, max: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), profile, max);
    for dev_num in [0u16, 1] {
        let r = suite(dir.path(), profile, dev_num);
        eprintln!(
            "{profile} (max {max}), device {dev_num}: {}",
            r.to_string().lines().last().unwrap_or_default()
        );
        assert_eq!(r.failed(), 0, "{profile}, device {dev_num}:\n{r}");
        // Skips are the other profiles' rules, device-type and strict-bus cases.
        assert!(r.passed() >= 45, "{profile}, device {dev_num}:\n{r}");
        let own = match profile {
            Profile::V2 => "vq.set_load_disabled_then_enable",
            Profile::V1 => "bus.get_devices_v1_aligned",
            Profile::Rfc2 => "info.rfc2_64_feature_bits",
        };
        assert!(
            r.get(own)
                .is_some_and(|c| c.outcome == vmsg_driver::conformance::Outcome::Pass),
            "{profile}: {own}:\n{r}"
        );
    }
    d.shutdown().expect("daemon stops");
}

#[test]
fn conformance_green_under_v2() {
    green_under(Profile::V2, 264);
}

#[test]
fn conformance_green_under_v1() {
    // 48: v1's smallest workable bus (its SET_VQUEUE is 48 bytes; QEMU's RFC uses 48).
    green_under(Profile::V1, 48);
}

#[test]
fn conformance_green_under_rfc2() {
    // The Linux RFC uses 44-byte frames; the config's floor is 48 today.
    green_under(Profile::Rfc2, 48);
}

#[test]
fn conformance_green_under_v1_and_rfc2_at_264() {
    green_under(Profile::V1, 264);
    green_under(Profile::Rfc2, 264);
}

#[test]
fn another_profile_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), Profile::V1, 264);
    let sock = dir.path().join("g.sock");
    for (asked, reason) in [
        (
            Profile::V2,
            "wire profile v2 (0) requested, this socket serves v1 (1)",
        ),
        (
            Profile::Rfc2,
            "wire profile rfc2 (2) requested, this socket serves v1 (1)",
        ),
    ] {
        match LocalBusClient::connect(&sock, &options_for(asked)) {
            Err(LocalBusError::Rejected { code, reason: r }) => {
                assert_eq!(code, RejectCode::BadParams);
                assert_eq!(r, reason);
            }
            other => panic!("{asked}: {other:?}"),
        }
    }
    // The configured profile is accepted.
    LocalBusClient::connect(&sock, &options_for(Profile::V1)).expect("v1 accepted");
    d.shutdown().expect("daemon stops");
}
