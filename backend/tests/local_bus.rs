//! Local bus end to end: frames both ways across threads and across
//! processes, shared memory at the driver's guest addresses, disconnect
//! detection and fd hygiene over many connect/teardown cycles.
//!
//! Cross-process tests re-run this test binary as the driver process
//! (`--exact <child test>` with an environment variable naming the socket);
//! without the variable the child tests return at once.

use std::os::fd::{BorrowedFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vm_memory::{Bytes, GuestAddress};
use vmsg_backend::bus::{Bus, BusError};
use vmsg_backend::local::{
    LocalBus, LocalBusClient, LocalBusError, LocalBusListener, LocalClientOptions,
    LocalServerOptions,
};
use vmsg_transport::ring::RingParams;

const T: Duration = Duration::from_secs(20);
const CHILD_SOCKET: &str = "VMSG_LOCAL_BUS_TEST_SOCKET";
const CHILD_MODE: &str = "VMSG_LOCAL_BUS_TEST_MODE";
const RAM_BASE: u64 = 0x4000_0000;
const RAM_SIZE: u64 = 2 << 20;

fn client_opts() -> LocalClientOptions {
    LocalClientOptions {
        ram_base: RAM_BASE,
        ram_size: RAM_SIZE,
        ring: RingParams {
            slot_size: 264,
            slots: 4,
        },
        ..LocalClientOptions::default()
    }
}

/// Readiness of `fds` within `timeout`.
fn wait_any(fds: &[RawFd], timeout: Duration) -> Vec<bool> {
    // SAFETY: the callers' buses own these fds for the duration of the call.
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    let mut p: Vec<PollFd<'_>> = borrowed
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let n = poll(
        &mut p,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    )
    .expect("poll");
    if n == 0 {
        return vec![false; fds.len()];
    }
    p.iter()
        .map(|x| x.revents().is_some_and(|r| !r.is_empty()))
        .collect()
}

/// What the instance loop does: ack the doorbell, drain, otherwise sleep on
/// the doorbell and control fds. `Ok(None)` on timeout.
fn serve_recv(bus: &mut LocalBus, buf: &mut [u8]) -> Result<Option<usize>, BusError> {
    let deadline = Instant::now() + T;
    loop {
        bus.ack_doorbell()?;
        if let Some(n) = bus.recv(buf)? {
            return Ok(Some(n));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let control = bus.control_fd().expect("local bus has a control fd");
        let ready = wait_any(&[bus.doorbell_fd(), control], left);
        if ready[1] {
            bus.handle_control()?;
        }
    }
}

/// Echo every frame back reversed until the driver disconnects; returns the
/// number of frames echoed.
fn echo_until_disconnect(bus: &mut LocalBus) -> u64 {
    let mut buf = vec![0u8; bus.max_msg_size()];
    let mut n = 0;
    loop {
        match serve_recv(bus, &mut buf) {
            Ok(Some(len)) => {
                let mut f = buf[..len].to_vec();
                f.reverse();
                bus.send(&f).expect("echo");
                n += 1;
            }
            Ok(None) => panic!("driver went quiet without disconnecting"),
            Err(BusError::Disconnected) => return n,
            Err(e) => panic!("serve: {e}"),
        }
    }
}

fn frame(i: u32, max: usize) -> Vec<u8> {
    let len = 4 + (i as usize * 37) % (max - 3);
    let mut f: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
    f[..4].copy_from_slice(&i.to_le_bytes());
    f
}

#[test]
fn frames_both_ways_across_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let l = Arc::new(LocalBusListener::bind(&path, LocalServerOptions::default()).expect("bind"));
    let lt = l.clone();
    let server = std::thread::spawn(move || {
        let mut bus = lt.accept_timeout(T).expect("accept").expect("a driver");
        echo_until_disconnect(&mut bus)
    });
    let mut c = LocalBusClient::connect(&path, &client_opts()).expect("connect");
    let max = c.max_msg_size();
    assert_eq!(max, 264);
    let mut buf = vec![0u8; max];
    let rounds = 500u32;
    for r in 0..rounds {
        // Bursts as deep as the rings, so both sides meet a full ring.
        for k in 0..4 {
            c.send(&frame(r * 4 + k, max)).expect("send");
        }
        for k in 0..4 {
            let n = c
                .recv(&mut buf, Some(T))
                .expect("recv")
                .expect("echo in time");
            let mut want = frame(r * 4 + k, max);
            want.reverse();
            assert_eq!(&buf[..n], &want[..]);
        }
    }
    drop(c);
    assert_eq!(server.join().expect("server"), u64::from(rounds) * 4);
}

#[test]
fn driver_flow_control_waits_for_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let l = Arc::new(LocalBusListener::bind(&path, LocalServerOptions::default()).expect("bind"));
    let lt = l.clone();
    let server = std::thread::spawn(move || {
        let mut bus = lt.accept_timeout(T).expect("accept").expect("a driver");
        let mut buf = vec![0u8; bus.max_msg_size()];
        let mut got = Vec::new();
        loop {
            match serve_recv(&mut bus, &mut buf) {
                Ok(Some(n)) => got.push(buf[..n].to_vec()),
                Err(BusError::Disconnected) => return got,
                other => panic!("{other:?}"),
            }
        }
    });
    let mut c = LocalBusClient::connect(&path, &client_opts()).expect("connect");
    // Far more than the ring holds, without waiting for anything.
    for i in 0..300u32 {
        c.send(&i.to_le_bytes()).expect("send");
    }
    drop(c);
    let got = server.join().expect("server");
    assert_eq!(got.len(), 300);
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f[..], (i as u32).to_le_bytes());
    }
}

#[test]
fn polling_driver_across_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let l = Arc::new(LocalBusListener::bind(&path, LocalServerOptions::default()).expect("bind"));
    let lt = l.clone();
    let server = std::thread::spawn(move || {
        let mut bus = lt.accept_timeout(T).expect("accept").expect("a driver");
        echo_until_disconnect(&mut bus)
    });
    let opts = LocalClientOptions {
        polling: true,
        ..client_opts()
    };
    let mut c = LocalBusClient::connect(&path, &opts).expect("connect");
    let mut buf = vec![0u8; 264];
    for i in 0..200u32 {
        c.send(&frame(i, 264)).expect("send");
        let n = c.recv(&mut buf, Some(T)).expect("recv").expect("echo");
        let mut want = frame(i, 264);
        want.reverse();
        assert_eq!(&buf[..n], &want[..]);
    }
    drop(c);
    assert_eq!(server.join().expect("server"), 200);
}

fn spawn_child(test: &str, socket: &Path, mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_SOCKET, socket)
        .env(CHILD_MODE, mode)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn driver process")
}

/// The driver process of `frames_and_memory_across_processes`.
#[test]
fn child_driver_process() {
    let Some(path) = std::env::var_os(CHILD_SOCKET) else {
        return;
    };
    let mode = std::env::var(CHILD_MODE).unwrap_or_default();
    let mut c = LocalBusClient::connect(Path::new(&path), &client_opts()).expect("child connect");
    let mut buf = vec![0u8; 264];
    if mode == "hang" {
        c.send(b"hello, then nothing").expect("send");
        // Wait for a frame that never comes: the parent kills us.
        let _ = c.recv(&mut buf, None);
        return;
    }
    // Frames both ways.
    for i in 0..200u32 {
        c.send(&frame(i, 264)).expect("send");
        let n = c.recv(&mut buf, Some(T)).expect("recv").expect("echo");
        let mut want = frame(i, 264);
        want.reverse();
        assert_eq!(&buf[..n], &want[..]);
    }
    // Memory: write a pattern at a guest address and tell the device where.
    let addr = RAM_BASE + 0x1_0000;
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    c.memory()
        .write_slice(&pattern, GuestAddress(addr))
        .expect("write RAM");
    let mut msg = b"MEM!".to_vec();
    msg.extend_from_slice(&addr.to_le_bytes());
    c.send(&msg).expect("send");
    // The device answers by writing its own pattern just after ours.
    let n = c.recv(&mut buf, Some(T)).expect("recv").expect("answer");
    assert_eq!(&buf[..n], b"DONE");
    let mut back = [0u8; 16];
    c.memory()
        .read_slice(&mut back, GuestAddress(addr + 4096))
        .expect("read RAM");
    assert_eq!(&back, b"written by vmsgd");
}

#[test]
fn frames_and_memory_across_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let l = LocalBusListener::bind(&path, LocalServerOptions::default()).expect("bind");
    let mut child = spawn_child("child_driver_process", &path, "echo");
    let mut bus = l
        .accept_timeout(T)
        .expect("accept")
        .expect("child connected");
    let mut buf = vec![0u8; bus.max_msg_size()];
    let mut echoed = 0;
    let mut mem_checked = false;
    loop {
        match serve_recv(&mut bus, &mut buf) {
            Ok(Some(n)) if n == 12 && &buf[..4] == b"MEM!" => {
                let addr = u64::from_le_bytes(buf[4..12].try_into().expect("8 bytes"));
                let mut got = vec![0u8; 4096];
                bus.memory()
                    .read_slice(&mut got, GuestAddress(addr))
                    .expect("read guest RAM");
                let want: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
                assert_eq!(got, want);
                bus.memory()
                    .write_slice(b"written by vmsgd", GuestAddress(addr + 4096))
                    .expect("write guest RAM");
                bus.send(b"DONE").expect("send");
                mem_checked = true;
            }
            Ok(Some(n)) => {
                let mut f = buf[..n].to_vec();
                f.reverse();
                bus.send(&f).expect("echo");
                echoed += 1;
            }
            Ok(None) => panic!("child went quiet"),
            Err(BusError::Disconnected) => break,
            Err(e) => panic!("serve: {e}"),
        }
    }
    let status = child.wait().expect("wait child");
    assert!(status.success(), "driver process failed: {status}");
    assert_eq!(echoed, 200);
    assert!(mem_checked);
    assert_eq!(bus.counters().frames_in, 201);
    assert_eq!(bus.counters().bad_slots, 0);
}

#[test]
fn killed_driver_process_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let l = LocalBusListener::bind(&path, LocalServerOptions::default()).expect("bind");
    let mut child = spawn_child("child_driver_process", &path, "hang");
    let mut bus = l
        .accept_timeout(T)
        .expect("accept")
        .expect("child connected");
    let mut buf = vec![0u8; bus.max_msg_size()];
    let n = serve_recv(&mut bus, &mut buf)
        .expect("recv")
        .expect("first frame");
    assert_eq!(&buf[..n], b"hello, then nothing");
    child.kill().expect("kill driver");
    child.wait().expect("reap driver");
    assert!(matches!(
        serve_recv(&mut bus, &mut buf),
        Err(BusError::Disconnected)
    ));
    // The socket serves the next driver.
    drop(bus);
    let lp = path.clone();
    let c = std::thread::spawn(move || LocalBusClient::connect(&lp, &client_opts()));
    assert!(l.accept_timeout(T).expect("accept").is_some());
    assert!(c.join().expect("thread").is_ok());
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Runs in its own process (no other test's fds around to count).
#[test]
fn child_fd_leak_cycles() {
    if std::env::var(CHILD_MODE).as_deref() != Ok("fd-cycles") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let l = Arc::new(LocalBusListener::bind(&path, LocalServerOptions::default()).expect("bind"));
    let cycles = 100;
    let before = open_fds();
    let lt = l.clone();
    let server = std::thread::spawn(move || {
        for _ in 0..cycles {
            let mut bus = lt.accept_timeout(T).expect("accept").expect("a driver");
            echo_until_disconnect(&mut bus);
        }
    });
    let mut buf = vec![0u8; 264];
    for i in 0..cycles {
        let mut c = LocalBusClient::connect(&path, &client_opts()).expect("connect");
        c.send(&frame(i, 264)).expect("send");
        assert!(c.recv(&mut buf, Some(T)).expect("recv").is_some());
        drop(c);
    }
    server.join().expect("server");
    // Refused handshakes must not leak either (the daemon closes the fds it
    // received, the driver its own).
    let strict = Arc::new(
        LocalBusListener::bind(
            &dir.path().join("strict.sock"),
            LocalServerOptions {
                max_ram_size: 1 << 20,
                ..LocalServerOptions::default()
            },
        )
        .expect("bind"),
    );
    let before_rejects = open_fds();
    for _ in 0..20 {
        let lt = strict.clone();
        let s = std::thread::spawn(move || lt.accept_timeout(T));
        let e = LocalBusClient::connect(strict.path(), &client_opts()).expect_err("too much RAM");
        assert!(matches!(e, LocalBusError::Rejected { .. }), "{e}");
        assert!(matches!(
            s.join().expect("thread"),
            Err(LocalBusError::Refused { .. })
        ));
    }
    assert_eq!(
        before_rejects,
        open_fds(),
        "fds leaked by rejected handshakes"
    );
    drop(strict);
    let after = open_fds();
    assert_eq!(before, after, "fd count changed over {cycles} cycles");
}

#[test]
fn no_fd_leak_over_100_cycles() {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_fd_leak_cycles",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, "fd-cycles")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let status = child.wait().expect("wait");
    assert!(status.success(), "fd leak check failed: {status}");
}

#[test]
fn rejected_handshake_reports_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.sock");
    let l = Arc::new(
        LocalBusListener::bind(
            &path,
            LocalServerOptions {
                max_ram_size: 1 << 20,
                ..LocalServerOptions::default()
            },
        )
        .expect("bind"),
    );
    let lt = l.clone();
    let s = std::thread::spawn(move || lt.accept_timeout(T));
    match LocalBusClient::connect(&path, &client_opts()) {
        Err(LocalBusError::Rejected { reason, .. }) => {
            assert!(reason.contains("limit"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.join().expect("thread"),
        Err(LocalBusError::Refused { .. })
    ));
}
