//! `vmsgd run` / `vmsgd watch` over the fake Xen (`vmsg_xen::fake`): domain
//! files, serving one domain until it dies, and the supervisor starting,
//! restarting and reaping backends — one guest's backend dying without
//! affecting another's.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use vmsg_backend::instance::StopSignal;
use vmsg_driver::{Blk, Driver, Rng};
use vmsg_xen::bus::{FrontendOptions, RunEnd, XenFrontend, XenbusState};
use vmsg_xen::fake::{FakeDomain, FakeXen};
use vmsg_xen::xenstore::{XsClient, XsOps};
use vmsgd::config::{BusConfig, Config, XenMemoryMode};
use vmsgd::daemon::{Daemon, DaemonError};
use vmsgd::xen::{
    Supervisor, ThreadLauncher, WatchOptions, XenError, backend_config, load_domain,
    load_domain_dir, resolve_domain, running_domains, serve,
};

const TIMEOUT: Duration = Duration::from_secs(10);
const RNG_DEV: u16 = 1;
const BLK_DEV: u16 = 2;

fn rng_file(name: &str) -> String {
    format!(
        "[[guest]]\nname = \"{name}\"\nbus = {{ kind = \"xen\", max_grants = 512 }}\n\n[[guest.device]]\nkind = \"rng\"\ndev_num = {RNG_DEV}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

fn opts() -> FrontendOptions {
    FrontendOptions {
        grant_pages: 256,
        ..FrontendOptions::default()
    }
}

/// Wait (bounded, loudly) until `path` satisfies `cond`, re-reading it on
/// every watch event.
fn wait_for(
    xs: &mut XsClient<std::os::unix::net::UnixStream>,
    path: &str,
    what: &str,
    cond: impl Fn(Option<&[u8]>) -> bool,
) {
    let token = format!("wait-{path}");
    xs.watch(path, &token).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let v = xs.try_read(path).unwrap();
        if cond(v.as_deref()) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out after {TIMEOUT:?} waiting for {what} ({path} = {v:?})"
        );
        xs.next_event(Some(left)).unwrap();
    }
    xs.unwatch(path, &token).unwrap();
    while xs.try_next_event().unwrap().is_some() {}
}

fn state_is(s: XenbusState) -> impl Fn(Option<&[u8]>) -> bool {
    move |v| v.map(XenbusState::parse) == Some(s)
}

fn backend_state(domid: u16) -> String {
    format!("/local/domain/0/backend/vmsg/{domid}/0/state")
}

fn read_rng(domu: &FakeDomain) -> Vec<u8> {
    let fe = XenFrontend::connect(domu, &opts()).unwrap();
    let drv = Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT);
    let mut rng = Rng::open(drv, RNG_DEV).unwrap();
    rng.read(4096).unwrap()
}

#[test]
fn xen_bus_config_defaults_and_located_errors() {
    let cfg = Config::parse(Path::new("web.toml"), &rng_file("web")).unwrap();
    let BusConfig::Xen {
        devid,
        memory,
        max_grants,
        ranges,
        max_msg_size,
        max_ring_page_order,
        ..
    } = &cfg.guests[0].bus
    else {
        panic!("{:?}", cfg.guests[0].bus);
    };
    assert_eq!(
        (*devid, *memory, *max_grants, ranges.clone()),
        (0, XenMemoryMode::Grant, 512, None)
    );
    assert_eq!((*max_msg_size, *max_ring_page_order), (264, 4));
    let (be, _) = backend_config(&cfg.guests[0]).unwrap();
    assert_eq!(be.devices, [RNG_DEV]);

    let foreign = "[[guest]]\nname = \"f\"\nbus = { kind = \"xen\", memory = \"foreign\", ranges = \"0+65536\" }\n[[guest.device]]\nkind = \"rng\"\n";
    let cfg = Config::parse(Path::new("f.toml"), foreign).unwrap();
    let (be, _) = backend_config(&cfg.guests[0]).unwrap();
    assert!(
        matches!(be.memory, vmsg_xen::bus::MemoryConfig::Foreign { ref ranges } if ranges.pages() == 65536)
    );

    for (bus, what, fix) in [
        (
            "{ kind = \"xen\", memory = \"foreign\" }",
            "needs the guest's RAM",
            "add ranges",
        ),
        (
            "{ kind = \"xen\", ranges = \"0+16\" }",
            "ranges is for memory = \"foreign\"",
            "remove ranges",
        ),
        (
            "{ kind = \"xen\", memory = \"foreign\", ranges = \"0+16,8+16\" }",
            "overlapping",
            "first+count",
        ),
        ("{ kind = \"xen\", max_grants = 0 }", "max_grants 0", "4096"),
        (
            "{ kind = \"xen\", max_ring_page_order = 9 }",
            "max_ring_page_order 9",
            "use 4",
        ),
        (
            "{ kind = \"xen\", max_msg_size = 20 }",
            "max_msg_size 20",
            "264",
        ),
        (
            "{ kind = \"xen\", memory = \"shared\" }",
            "shared",
            "values",
        ),
        ("{ kind = \"xen\", grants = 5 }", "grants", "spelling"),
    ] {
        let text =
            format!("[[guest]]\nname = \"g\"\nbus = {bus}\n[[guest.device]]\nkind = \"rng\"\n");
        let err = Config::parse(Path::new("g.toml"), &text).expect_err(what);
        assert!(err.message.contains(what), "{what}: {err}");
        assert!(err.fix.contains(fix), "{what}: {err}");
        assert_eq!(err.line, 3, "{what}: located at the bus: {err}");
    }
}

#[test]
fn domain_files_are_one_xen_guest_named_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web", &rng_file("web"));
    write(dir.path(), "other", &rng_file("db"));
    write(
        dir.path(),
        "two",
        &format!("{}{}", rng_file("two"), rng_file("three")),
    );
    write(
        dir.path(),
        "local",
        "[[guest]]\nname = \"local\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\n",
    );
    write(
        dir.path(),
        "broken",
        "[[guest]]\nname = \"broken\"\nbus = 5\n",
    );
    std::fs::write(dir.path().join("notes.txt"), "not a domain").unwrap();

    let (_, web) = load_domain(dir.path(), "web").unwrap();
    assert_eq!(web.name, "web");
    for (name, what) in [
        ("other", "file is for domain \"other\""),
        ("two", "2 [[guest]] tables"),
        ("local", "not on the Xen bus"),
        ("broken", "broken.toml:3"),
        ("missing", "cannot read"),
    ] {
        let err = load_domain(dir.path(), name).expect_err(name).to_string();
        assert!(err.contains(what), "{name}: {err}");
    }
    assert!(matches!(
        load_domain(dir.path(), "../web"),
        Err(XenError::NoSuchDomain(_))
    ));
    // A broken file never hides the good ones.
    let (good, bad) = load_domain_dir(dir.path());
    assert_eq!(good.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(bad.len(), 4, "{bad:?}");
}

#[test]
fn the_daemon_refuses_xen_guests_in_its_main_config() {
    let cfg = Config::parse(Path::new("vmsgd.toml"), &rng_file("web")).unwrap();
    let err = Daemon::start(&cfg, StopSignal::new().unwrap()).unwrap_err();
    assert!(matches!(err, DaemonError::XenGuest { .. }), "{err}");
    assert!(err.to_string().contains("vmsgd watch"), "{err}");
}

#[test]
fn domains_resolve_by_id_and_name() {
    let xen = FakeXen::new();
    xen.create_domain(3, 16).unwrap();
    xen.create_domain(5, 16).unwrap();
    let mut xs = xen.domain(0).xenstore().unwrap();
    let names: Vec<_> = running_domains(&mut xs)
        .unwrap()
        .into_iter()
        .map(|d| (d.domid, d.name))
        .collect();
    assert_eq!(names, [(3, "domU-3".into()), (5, "domU-5".into())]);
    assert_eq!(resolve_domain(&mut xs, "5").unwrap().name, "domU-5");
    assert_eq!(resolve_domain(&mut xs, "domU-3").unwrap().domid, 3);
    xen.destroy_domain(3);
    for spec in ["3", "domU-3", "0", "web"] {
        assert!(
            matches!(
                resolve_domain(&mut xs, spec),
                Err(XenError::NoSuchDomain(_))
            ),
            "{spec}"
        );
    }
}

#[test]
fn run_serves_rng_and_blk_until_the_domain_dies() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("web.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    write(
        dir.path(),
        "domU-1",
        &format!(
            "{}[[guest.device]]\nkind = \"blk\"\ndev_num = {BLK_DEV}\npath = \"web.img\"\nengine = \"sync\"\n",
            rng_file("domU-1")
        ),
    );
    let (_, guest) = load_domain(dir.path(), "domU-1").unwrap();
    let stop = StopSignal::new().unwrap();
    let (tx, done) = std::sync::mpsc::channel();
    let backend = {
        let (xen, stop) = (xen.clone(), stop.clone());
        std::thread::spawn(move || tx.send(serve(xen.domain(0), 1, &guest, &stop)).unwrap())
    };
    let mut xs = xen.domain(0).xenstore().unwrap();
    wait_for(
        &mut xs,
        &backend_state(1),
        "InitWait",
        state_is(XenbusState::InitWait),
    );

    let fe = XenFrontend::connect(&domu, &opts()).unwrap();
    let mut drv = Driver::new(Box::new(fe)).unwrap().with_timeout(TIMEOUT);
    assert_eq!(drv.discover().unwrap(), [RNG_DEV, BLK_DEV]);
    let mut rng = Rng::open(drv, RNG_DEV).unwrap();
    assert_eq!(rng.read(4096).unwrap().len(), 4096);
    let mut blk = Blk::open(rng.close().unwrap(), BLK_DEV).unwrap();
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    blk.write(8, &data).unwrap();
    blk.flush().unwrap();
    let mut back = vec![0; data.len()];
    blk.read(8, &mut back).unwrap();
    assert_eq!(back, data);
    drop(blk);
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(&on_disk[4096..4096 + 8192], &data[..]);

    xen.destroy_domain(1);
    let end = done
        .recv_timeout(TIMEOUT)
        .expect("serve ends when the domain dies");
    assert_eq!(end.unwrap(), RunEnd::DomainGone);
    backend.join().unwrap();
    assert!(
        xen.xenstored()
            .read("/local/domain/0/backend/vmsg/1")
            .is_none()
    );
    assert!(
        xen.xenstored()
            .read("/local/domain/1/device/vmsg/0")
            .is_none()
    );
}

fn watch_opts(dir: &Path) -> WatchOptions {
    WatchOptions {
        config_dir: dir.to_path_buf(),
        restart_delay: Duration::ZERO,
        max_restarts: 2,
        restart_window: Duration::from_secs(600),
        stop_grace: TIMEOUT,
    }
}

/// Step the supervisor until `cond` holds (bounded, loudly).
fn step_until<L: vmsgd::xen::Launcher>(
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

#[test]
fn watch_serves_configured_domains_and_one_backend_dying_leaves_the_other_alone() {
    let xen = FakeXen::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "domU-1", &rng_file("domU-1"));
    write(dir.path(), "domU-2", &rng_file("domU-2"));
    let launcher = {
        let xen = xen.clone();
        ThreadLauncher::new(move |_| xen.domain(0)).unwrap()
    };
    let killer = launcher.killer();
    let mut sup = Supervisor::new(launcher, watch_opts(dir.path()));
    let mut xs = xen.domain(0).xenstore().unwrap();
    let stop = StopSignal::new().unwrap();
    sup.watch_domains(&mut xs).unwrap();
    sup.step(&mut xs, &stop, Some(Duration::ZERO)).unwrap();
    assert!(sup.serving().is_empty());

    // Domains appear; 3 has no file and gets no backend.
    let d1 = xen.create_domain(1, 256).unwrap();
    let d2 = xen.create_domain(2, 256).unwrap();
    xen.create_domain(3, 16).unwrap();
    step_until(&mut sup, &mut xs, &stop, "backends for 1 and 2", |s| {
        s.serving() == [1, 2]
    });
    let mut probe = xen.domain(0).xenstore().unwrap();
    for d in [1, 2] {
        wait_for(
            &mut probe,
            &backend_state(d),
            "InitWait",
            state_is(XenbusState::InitWait),
        );
    }
    assert!(
        xen.xenstored()
            .read("/local/domain/0/backend/vmsg/3")
            .is_none()
    );

    // Both guests are served; 2 keeps its connection through what follows.
    assert_eq!(read_rng(&d1).len(), 4096);
    let fe2 = XenFrontend::connect(&d2, &opts()).unwrap();
    let mut rng2 = Rng::open(
        Driver::new(Box::new(fe2)).unwrap().with_timeout(TIMEOUT),
        RNG_DEV,
    )
    .unwrap();
    assert_eq!(rng2.read(1000).unwrap().len(), 1000);

    // 1's backend dies while 1 is connected.
    let fe1 = XenFrontend::connect(&d1, &opts()).unwrap();
    assert!(killer.kill(1));
    step_until(&mut sup, &mut xs, &stop, "the restart of 1", |s| {
        s.stats().restarts == 1 && s.serving() == [1, 2]
    });
    // 2 never noticed.
    assert_eq!(rng2.read(1000).unwrap().len(), 1000);
    drop(fe1);
    // The restarted backend serves 1 again (a fresh connection).
    wait_for(
        &mut probe,
        &backend_state(1),
        "InitWait",
        state_is(XenbusState::InitWait),
    );
    assert_eq!(read_rng(&d1).len(), 4096);
    assert_eq!(rng2.read(1000).unwrap().len(), 1000);

    // 2 dies: its backend ends by itself and removes its directories; it
    // is not restarted.
    drop(rng2);
    xen.destroy_domain(2);
    step_until(&mut sup, &mut xs, &stop, "2's backend to end", |s| {
        s.serving() == [1]
    });
    assert!(
        xen.xenstored()
            .read("/local/domain/0/backend/vmsg/2")
            .is_none()
    );
    assert_eq!(read_rng(&d1).len(), 4096);

    let s = sup.stats();
    assert_eq!((s.launched, s.restarts, s.failed), (3, 1, 1), "{s:?}");
    stop.trigger();
    assert!(sup.step(&mut xs, &stop, None).unwrap());
    sup.shutdown();
    assert!(sup.serving().is_empty());
}

#[test]
fn a_backend_that_keeps_failing_is_given_up_and_the_others_stay() {
    let xen = FakeXen::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "domU-1", &rng_file("domU-1"));
    write(dir.path(), "domU-4", &rng_file("domU-4"));
    // Domain 4's backend runs as a domain without dom0's rights: provision
    // fails every time (EACCES creating the directories).
    let launcher = {
        let xen = xen.clone();
        ThreadLauncher::new(move |d| if d == 4 { xen.domain(9) } else { xen.domain(0) }).unwrap()
    };
    let mut sup = Supervisor::new(launcher, watch_opts(dir.path()));
    let mut xs = xen.domain(0).xenstore().unwrap();
    let stop = StopSignal::new().unwrap();
    sup.watch_domains(&mut xs).unwrap();
    xen.create_domain(9, 1).unwrap();
    let d1 = xen.create_domain(1, 256).unwrap();
    xen.create_domain(4, 16).unwrap();
    // 1 start + 2 restarts for 4, then nothing more.
    step_until(&mut sup, &mut xs, &stop, "4 to be given up", |s| {
        let st = s.stats();
        st.failed == 3 && st.restarts == 2 && s.serving() == [1]
    });
    let mut probe = xen.domain(0).xenstore().unwrap();
    wait_for(
        &mut probe,
        &backend_state(1),
        "InitWait",
        state_is(XenbusState::InitWait),
    );
    assert_eq!(read_rng(&d1).len(), 4096);
    sup.step(&mut xs, &stop, Some(Duration::from_millis(10)))
        .unwrap();
    assert_eq!(sup.stats().launched, 4, "no fourth start for 4");
    sup.shutdown();
}

#[test]
fn vmsgd_run_without_xen_says_so() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmsgd"))
        .args(["run", "--domain", "web", "--config-dir", "/nonexistent"])
        .output()
        .unwrap();
    if Path::new("/dev/xen/xenbus").exists() {
        return; // Under Xen: a different answer.
    }
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xenstore"), "{err}");
}

#[test]
fn check_config_applies_the_domain_file_rules() {
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str| {
        write(dir.path(), name, text);
        std::process::Command::new(env!("CARGO_BIN_EXE_vmsgd"))
            .arg("check-config")
            .arg(dir.path().join(format!("{name}.toml")))
            .output()
            .unwrap()
    };
    let guest = |name: &str| {
        format!(
            "[[guest]]\nname = \"{name}\"\nbus = {{ kind = \"xen\" }}\n\n[[guest.device]]\nkind = \"rng\"\n"
        )
    };
    let ok = check("web", &guest("web"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let misnamed = check("db", &guest("www"));
    assert_eq!(misnamed.status.code(), Some(2));
    let err = String::from_utf8_lossy(&misnamed.stderr);
    assert!(err.contains("db.toml") && err.contains("fix:"), "{err}");
    let two = check("two", &format!("{}{}", guest("two"), guest("other")));
    assert_eq!(two.status.code(), Some(2), "two guests in a domain file");
}

#[test]
fn the_example_domain_files_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dom0-config/domains");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Offline: the images belong to the dom0 the file is meant for.
        let cfg = Config::parse_offline(&path, &text).unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert_eq!(cfg.guests.len(), 1, "{}", path.display());
        assert_eq!(cfg.guests[0].name, stem, "{}", path.display());
        backend_config(&cfg.guests[0]).unwrap();
        seen += 1;
    }
    assert!(seen >= 2, "grant and foreign examples in {}", dir.display());
}

#[test]
fn a_failed_backend_whose_file_is_gone_is_not_restarted() {
    let xen = FakeXen::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "domU-1", &rng_file("domU-1"));
    let launcher = {
        let xen = xen.clone();
        ThreadLauncher::new(move |_| xen.domain(0)).unwrap()
    };
    let killer = launcher.killer();
    let mut sup = Supervisor::new(launcher, watch_opts(dir.path()));
    let mut xs = xen.domain(0).xenstore().unwrap();
    let stop = StopSignal::new().unwrap();
    sup.watch_domains(&mut xs).unwrap();
    xen.create_domain(1, 16).unwrap();
    step_until(&mut sup, &mut xs, &stop, "the backend of 1", |s| {
        s.serving() == [1]
    });
    std::fs::remove_file(dir.path().join("domU-1.toml")).unwrap();
    assert!(killer.kill(1));
    step_until(&mut sup, &mut xs, &stop, "the backend's end", |s| {
        s.stats().failed == 1
    });
    assert!(sup.serving().is_empty());
    assert_eq!(sup.next_due(), None, "no restart due: nothing to spin on");
    assert_eq!(sup.stats().launched, 1);
    sup.shutdown();
}
