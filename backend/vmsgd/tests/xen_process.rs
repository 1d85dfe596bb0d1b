//! The supervisor with real backend processes (`ProcessLauncher`, reaped
//! through a SIGCHLD signalfd) over the fake xenstored: a backend process
//! that keeps failing is restarted (bounded) and given up while another
//! domain's backend process keeps running, untouched (same pid); a backend
//! that outlives its domain gets SIGTERM after the grace period.
//!
//! `harness = false`: SIGCHLD must be blocked in every thread before any
//! exists, which a custom `main` can guarantee.

#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use vmsg_backend::instance::StopSignal;
use vmsg_xen::fake::FakeXen;
use vmsg_xen::xenstore::XsClient;
use vmsgd::xen::{BackendChild, Launcher, ProcessLauncher, Supervisor, WatchOptions};

const TIMEOUT: Duration = Duration::from_secs(20);

fn step_until<L: Launcher>(
    sup: &mut Supervisor<L>,
    xs: &mut XsClient<std::os::unix::net::UnixStream>,
    stop: &StopSignal,
    what: &str,
    mut cond: impl FnMut(&mut Supervisor<L>) -> bool,
) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond(sup) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}: {:?}",
            sup.stats()
        );
        sup.step(xs, stop, Some(left)).unwrap();
    }
}

fn write(dir: &Path, name: &str) {
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!("[[guest]]\nname = \"{name}\"\nbus = {{ kind = \"xen\" }}\n[[guest.device]]\nkind = \"rng\"\n"),
    )
    .unwrap();
}

fn main() {
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block().unwrap();

    let xen = FakeXen::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "domU-1");
    write(dir.path(), "domU-2");
    // Stand-in backends: `sh -c SCRIPT sh run --domain <id> --config-dir <dir>`.
    // Domain 1's fails at once; domain 2's runs until signalled.
    let script = "case \"$3\" in 1) exit 3 ;; *) exec sleep 600 ;; esac";
    let launcher = ProcessLauncher::new(
        "/bin/sh".into(),
        vec![
            OsString::from("-c"),
            OsString::from(script),
            OsString::from("sh"),
        ],
        dir.path().to_path_buf(),
    )
    .unwrap();
    let opts = WatchOptions {
        config_dir: dir.path().to_path_buf(),
        restart_delay: Duration::from_millis(1),
        max_restarts: 3,
        restart_window: Duration::from_secs(600),
        stop_grace: Duration::from_millis(200),
    };
    let mut sup = Supervisor::new(launcher, opts);
    let mut xs = xen.domain(0).xenstore().unwrap();
    let stop = StopSignal::new().unwrap();
    sup.watch_domains(&mut xs).unwrap();
    xen.create_domain(2, 1).unwrap();
    step_until(&mut sup, &mut xs, &stop, "domain 2's backend", |s| {
        s.serving() == [2]
    });
    let pid2 = format!("{:?}", sup.child_mut(2).unwrap());

    // Domain 1's backend exits 3 every time: 1 start + 3 restarts, then
    // given up; domain 2's process is the same one throughout.
    xen.create_domain(1, 1).unwrap();
    step_until(&mut sup, &mut xs, &stop, "domain 1 given up", |s| {
        let st = s.stats();
        st.failed == 4 && st.restarts == 3
    });
    sup.step(&mut xs, &stop, Some(Duration::from_millis(50)))
        .unwrap();
    let st = sup.stats();
    assert_eq!((st.launched, st.restarts, st.failed), (5, 3, 4), "{st:?}");
    assert_eq!(sup.serving(), [2]);
    assert_eq!(format!("{:?}", sup.child_mut(2).unwrap()), pid2);
    assert!(sup.child_mut(2).unwrap().try_end().is_none());

    // Domain 2 dies; its stand-in backend does not notice, so it gets
    // SIGTERM after the grace period and is reaped.
    xen.destroy_domain(2);
    step_until(&mut sup, &mut xs, &stop, "domain 2's backend reaped", |s| {
        s.serving().is_empty() && s.stats().ended == 5
    });
    let st = sup.stats();
    assert_eq!(st.failed, 5, "SIGTERM counts as a failure: {st:?}");
    assert_eq!(st.launched, 5, "a dead domain gets no restart: {st:?}");
    sup.shutdown();
    println!("xen_process: ok");
}
