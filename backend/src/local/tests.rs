//! Unit tests of the local bus: wire format, handshake validation (with
//! hand-crafted hellos and fds), notification suppression and busy handling.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::memfd::{MFdFlags, memfd_create};
use vm_memory::{Bytes, GuestAddress, MmapRegion};
use vmsg_transport::ring::{self, RingParams, SharedRegion};

use super::fds;
use super::wire::{HELLO_LEN, Hello, REPLY_HEAD_LEN, Reply};
use super::*;
use crate::bus::{Bus, BusError};

const T: Duration = Duration::from_secs(10);

fn sock_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("guest.sock")
}

fn listen(path: &Path, opts: LocalServerOptions) -> Arc<LocalBusListener> {
    Arc::new(LocalBusListener::bind(path, opts).expect("bind"))
}

fn serve_one(l: &Arc<LocalBusListener>) -> JoinHandle<Result<Option<LocalBus>, LocalBusError>> {
    let l = l.clone();
    std::thread::spawn(move || l.accept_timeout(T))
}

fn small_client() -> LocalClientOptions {
    LocalClientOptions {
        ram_size: 1 << 20,
        ring: RingParams {
            slot_size: 264,
            slots: 4,
        },
        ..LocalClientOptions::default()
    }
}

/// Everything a driver would send, built by hand so a test can spoil one part.
struct Parts {
    hello: Hello,
    ram: File,
    ring: File,
    kick: OwnedFd,
    call: OwnedFd,
    _ring_map: MmapRegion,
}

impl Parts {
    fn new(o: &LocalClientOptions) -> Parts {
        let need = o.ring.required_size().expect("ring params") as u64;
        let ring_size = need.div_ceil(4096) * 4096;
        let ram = fds::create_memfd("t-ram", o.ram_size).expect("memfd");
        let ring = fds::create_memfd("t-ring", ring_size).expect("memfd");
        let map = fds::map_memfd(ring.try_clone().expect("dup"), ring_size as usize, "ring")
            .expect("map");
        // SAFETY: `map` lives in the returned Parts, longer than the view.
        let region = unsafe { SharedRegion::from_raw(map.as_ptr(), map.size()) };
        ring::init(&region, o.ring).expect("ring init");
        Parts {
            hello: Hello {
                profile: o.profile,
                max_msg_size: o.max_msg_size as u32,
                ram_base: o.ram_base,
                ram_size: o.ram_size,
                ring: o.ring,
                ring_size,
            },
            ram,
            ring,
            kick: fds::create_eventfd().expect("eventfd"),
            call: fds::create_eventfd().expect("eventfd"),
            _ring_map: map,
        }
    }

    fn fds(&self) -> [RawFd; 4] {
        [
            self.ram.as_raw_fd(),
            self.ring.as_raw_fd(),
            self.kick.as_raw_fd(),
            self.call.as_raw_fd(),
        ]
    }
}

/// Send a raw hello and read the reply.
fn send_raw(path: &Path, bytes: &[u8], fds_out: &[RawFd]) -> Reply {
    let sock = UnixStream::connect(path).expect("connect");
    fds::send_with_fds(sock.as_raw_fd(), bytes, fds_out).expect("send hello");
    let deadline = Instant::now() + T;
    let mut head = [0u8; REPLY_HEAD_LEN];
    fds::recv_exact(sock.as_fd(), &mut head, deadline).expect("reply head");
    let (_, n) = Reply::decode_head(&head).expect("reply head valid");
    let mut reason = vec![0u8; n];
    fds::recv_exact(sock.as_fd(), &mut reason, deadline).expect("reply reason");
    Reply::decode(&head, &reason).expect("reply")
}

/// Run one crafted handshake; check both sides agree on the reject code.
fn expect_reject(parts: &Parts, bytes: &[u8; HELLO_LEN], fds_out: &[RawFd], want: RejectCode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock_path(&dir);
    let l = listen(&path, LocalServerOptions::default());
    let server = serve_one(&l);
    let reply = send_raw(&path, bytes, fds_out);
    let got = server.join().expect("server thread");
    match (&reply, &got) {
        (Reply::Reject { code, reason }, Err(LocalBusError::Refused { code: c2, .. })) => {
            assert_eq!(*code, want, "reason: {reason}");
            assert_eq!(*c2, want);
        }
        other => panic!("expected reject {want}, got {other:?}"),
    }
    // The listener is free again for the next driver.
    assert!(!l.is_busy());
    let _ = parts;
}

fn reject_with(o: &LocalClientOptions, spoil: impl FnOnce(&mut Parts), want: RejectCode) {
    let mut p = Parts::new(o);
    spoil(&mut p);
    let bytes = p.hello.encode();
    expect_reject(&p, &bytes, &p.fds(), want);
}

#[test]
fn wire_hello_roundtrip() {
    let p = Parts::new(&small_client());
    let b = p.hello.encode();
    assert_eq!(&b[0..4], b"VMLB");
    assert_eq!(Hello::decode(&b).expect("decode"), p.hello);
}

#[test]
fn wire_hello_framing_errors() {
    let good = Parts::new(&small_client()).hello.encode();
    let cases: [(usize, u8, RejectCode); 5] = [
        (0, b'X', RejectCode::BadMagic),
        (4, 2, RejectCode::BadVersion),
        (6, 65, RejectCode::Malformed),
        (9, 1, RejectCode::Malformed),
        (60, 1, RejectCode::Malformed),
    ];
    for (off, val, want) in cases {
        let mut b = good;
        b[off] = val;
        match Hello::decode(&b) {
            Err(LocalBusError::Refused { code, .. }) => assert_eq!(code, want, "byte {off}"),
            other => panic!("byte {off}: {other:?}"),
        }
    }
}

#[test]
fn wire_reply_roundtrip_and_reason_cut() {
    let a = Reply::Accept {
        max_msg_size: 128,
        transport_features: 1,
    };
    let b = a.encode();
    assert_eq!(b.len(), REPLY_HEAD_LEN);
    let head: [u8; REPLY_HEAD_LEN] = b[..REPLY_HEAD_LEN].try_into().expect("len");
    assert_eq!(Reply::decode(&head, &[]).expect("decode"), a);

    // A long reason is cut on a character boundary.
    let reason = "é".repeat(200);
    let r = Reply::Reject {
        code: RejectCode::Busy,
        reason,
    };
    let b = r.encode();
    let head: [u8; REPLY_HEAD_LEN] = b[..REPLY_HEAD_LEN].try_into().expect("len");
    let (status, n) = Reply::decode_head(&head).expect("head");
    assert_eq!(status, 8);
    assert!(n <= wire::MAX_REASON_LEN && n % 2 == 0);
    match Reply::decode(&head, &b[REPLY_HEAD_LEN..]).expect("decode") {
        Reply::Reject { code, reason } => {
            assert_eq!(code, RejectCode::Busy);
            assert!(reason.chars().all(|c| c == 'é'));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(RejectCode::from_u16(77), RejectCode::Other(77));
    assert_eq!(RejectCode::Other(77).to_u16(), 77);
}

#[test]
fn handshake_accepts_and_negotiates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock_path(&dir);
    let l = listen(
        &path,
        LocalServerOptions {
            max_msg_size: 128,
            transport_features: 1,
            ..LocalServerOptions::default()
        },
    );
    let server = serve_one(&l);
    let client = LocalBusClient::connect(&path, &small_client()).expect("connect");
    let bus = server
        .join()
        .expect("thread")
        .expect("accept")
        .expect("no timeout");
    assert_eq!(client.max_msg_size(), 128);
    assert_eq!(bus.max_msg_size(), 128);
    assert_eq!(client.transport_features(), 1);
    assert_eq!(bus.transport_features(), 1);
    assert_eq!(bus.profile(), 0);
    assert_eq!(bus.ram_base(), 0x4000_0000);
    assert_eq!(bus.ram_size(), 1 << 20);
    assert!(l.is_busy());
    drop(bus);
    assert!(!l.is_busy());
    // Socket file is 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

// `reject_with` encodes the (valid) hello; spoil bytes through a raw send.
fn reject_bytes(
    o: &LocalClientOptions,
    spoil: impl FnOnce(&mut [u8; HELLO_LEN]),
    want: RejectCode,
) {
    let p = Parts::new(o);
    let mut b = p.hello.encode();
    spoil(&mut b);
    expect_reject(&p, &b, &p.fds(), want);
}

#[test]
fn handshake_rejects_framing() {
    reject_bytes(&small_client(), |b| b[0] = 0, RejectCode::BadMagic);
    reject_bytes(&small_client(), |b| b[4] = 9, RejectCode::BadVersion);
    reject_bytes(&small_client(), |b| b[50] = 1, RejectCode::Malformed);
}

#[test]
fn handshake_rejects_wrong_fds() {
    let o = small_client();
    // Wrong count.
    let p = Parts::new(&o);
    let f = p.fds();
    expect_reject(&p, &p.hello.encode(), &f[..3], RejectCode::BadFds);
    expect_reject(&p, &p.hello.encode(), &[], RejectCode::BadFds);
    let extra = [f[0], f[1], f[2], f[3], f[0]];
    expect_reject(&p, &p.hello.encode(), &extra, RejectCode::BadFds);
    // A memfd where an eventfd belongs.
    expect_reject(
        &p,
        &p.hello.encode(),
        &[f[0], f[1], f[0], f[3]],
        RejectCode::BadFds,
    );
    expect_reject(
        &p,
        &p.hello.encode(),
        &[f[0], f[1], f[2], f[1]],
        RejectCode::BadFds,
    );
    // An eventfd where the RAM memfd belongs.
    expect_reject(
        &p,
        &p.hello.encode(),
        &[f[2], f[1], f[2], f[3]],
        RejectCode::BadMemory,
    );
    // A socket where the ring memfd belongs.
    let (a, _b) = UnixStream::pair().expect("pair");
    expect_reject(
        &p,
        &p.hello.encode(),
        &[f[0], a.as_raw_fd(), f[2], f[3]],
        RejectCode::BadRing,
    );
}

#[test]
fn handshake_rejects_memory_problems() {
    let o = small_client();
    // The RAM memfd is smaller than declared.
    reject_with(&o, |p| p.hello.ram_size = 2 << 20, RejectCode::BadMemory);
    // Base + size overflows.
    reject_with(
        &o,
        |p| p.hello.ram_base = u64::MAX - 4095,
        RejectCode::BadMemory,
    );
    // Not page aligned, empty, above the limit.
    reject_with(
        &o,
        |p| p.hello.ram_base = 0x4000_0001,
        RejectCode::BadMemory,
    );
    reject_with(&o, |p| p.hello.ram_size = 1000, RejectCode::BadMemory);
    reject_with(&o, |p| p.hello.ram_size = 0, RejectCode::BadMemory);
    reject_with(&o, |p| p.hello.ram_size = 128 << 30, RejectCode::BadMemory);
    // A memfd that can still shrink under our mapping.
    reject_with(
        &o,
        |p| {
            let fd = memfd_create("unsealed", MFdFlags::MFD_CLOEXEC).expect("memfd");
            nix::unistd::ftruncate(&fd, 1 << 20).expect("ftruncate");
            p.ram = File::from(fd);
        },
        RejectCode::BadMemory,
    );
    // A regular file is not a memfd.
    reject_with(
        &o,
        |p| {
            let f = tempfile::tempfile().expect("tempfile");
            f.set_len(1 << 20).expect("set_len");
            p.ram = f;
        },
        RejectCode::BadMemory,
    );
}

/// The number of bytes of `file` that are backed by allocated pages.
fn allocated(file: &File) -> u64 {
    let st = nix::sys::stat::fstat(file).expect("fstat");
    u64::try_from(st.st_blocks).expect("blocks") * 512
}

/// A sealed memfd of `size` bytes of which nothing is allocated (a hole).
fn sparse_memfd(size: u64) -> File {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    let fd = memfd_create(
        "sparse",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .expect("memfd");
    nix::unistd::ftruncate(&fd, size as i64).expect("ftruncate");
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).expect("seal");
    File::from(fd)
}

/// Issue 10, defect 3: RAM the driver has not allocated would be allocated
/// by the daemon's own page faults (and charged to it) as soon as a request
/// touches it: a sparse memfd is refused, for RAM and ring alike.
#[test]
fn handshake_rejects_memory_the_driver_did_not_allocate() {
    let o = small_client();
    reject_with(
        &o,
        |p| p.ram = sparse_memfd(o.ram_size),
        RejectCode::BadMemory,
    );
    // Half allocated is not allocated.
    reject_with(
        &o,
        |p| {
            let f = sparse_memfd(o.ram_size);
            nix::fcntl::fallocate(
                &f,
                nix::fcntl::FallocateFlags::empty(),
                0,
                (o.ram_size / 2) as i64,
            )
            .expect("fallocate");
            p.ram = f;
        },
        RejectCode::BadMemory,
    );
    // The driver side allocates what it shares.
    let p = Parts::new(&o);
    assert!(allocated(&p.ram) >= o.ram_size);
}

/// Issue 10, defect 3: a driver that frees its RAM after the handshake
/// (punching holes, which the shrink seal allows) is disconnected at the
/// next doorbell, before the daemon touches (and so allocates) the pages.
#[test]
fn ram_freed_after_the_handshake_ends_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock_path(&dir);
    // At every doorbell (the default is at most every millisecond).
    let l = listen(
        &path,
        LocalServerOptions {
            memory_check_interval: Duration::ZERO,
            ..LocalServerOptions::default()
        },
    );
    let server = serve_one(&l);
    let o = small_client();
    let p = Parts::new(&o);
    let reply = {
        let sock = UnixStream::connect(&path).expect("connect");
        fds::send_with_fds(sock.as_raw_fd(), &p.hello.encode(), &p.fds()).expect("hello");
        let mut head = [0u8; REPLY_HEAD_LEN];
        fds::recv_exact(sock.as_fd(), &mut head, Instant::now() + T).expect("reply");
        (Reply::decode_head(&head).expect("head"), sock)
    };
    assert_eq!((reply.0).0, 0, "accepted");
    let mut bus = server
        .join()
        .expect("thread")
        .expect("accept")
        .expect("bus");
    bus.ack_doorbell().expect("memory intact");
    use nix::fcntl::FallocateFlags as F;
    nix::fcntl::fallocate(
        &p.ram,
        F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
        0,
        o.ram_size as i64,
    )
    .expect("punch");
    assert_eq!(allocated(&p.ram), 0);
    assert!(matches!(
        bus.ack_doorbell(),
        Err(BusError::MemoryRevoked(_))
    ));
    assert_eq!(allocated(&p.ram), 0, "the daemon allocated nothing");
    drop(reply);
}

#[test]
fn handshake_rejects_ring_problems() {
    let o = small_client();
    // A ring memfd that was never initialised: no header.
    reject_with(
        &o,
        |p| p.ring = fds::create_memfd("blank", p.hello.ring_size).expect("memfd"),
        RejectCode::BadRing,
    );
    // Header and hello disagree.
    reject_with(&o, |p| p.hello.ring.slots = 2, RejectCode::BadRing);
    // Region too small for the rings, too big, smaller memfd than declared.
    reject_with(&o, |p| p.hello.ring_size = 1024, RejectCode::BadRing);
    reject_with(&o, |p| p.hello.ring_size = 1 << 30, RejectCode::BadRing);
    reject_with(&o, |p| p.hello.ring_size += 4096, RejectCode::BadRing);
    // Invalid ring parameters.
    reject_with(&o, |p| p.hello.ring.slots = 3, RejectCode::BadRing);
    // Slots smaller than the negotiated message size.
    let o2 = LocalClientOptions {
        ring: RingParams {
            slot_size: 64,
            slots: 4,
        },
        ..small_client()
    };
    reject_with(&o2, |p| p.hello.max_msg_size = 264, RejectCode::BadRing);
}

#[test]
fn handshake_rejects_bad_params() {
    let o = small_client();
    reject_with(&o, |p| p.hello.max_msg_size = 20, RejectCode::BadParams);
    reject_with(&o, |p| p.hello.max_msg_size = 70000, RejectCode::BadParams);
    reject_with(&o, |p| p.hello.profile = 3, RejectCode::BadParams);
}

/// Issue 10, defect 7: a message size below the profile's minimum (v2 52,
/// v1 48, rfc2 44; the largest fixed-size message must fit) was accepted,
/// then every such message dropped; it is refused at the handshake.
#[test]
fn handshake_refuses_a_message_size_below_the_profile_minimum() {
    for (profile, min) in [(0u8, 52u32), (1, 48), (2, 44)] {
        let o = LocalClientOptions {
            profile,
            ..small_client()
        };
        if min > 44 {
            reject_with(
                &o,
                |p| p.hello.max_msg_size = min - 1,
                RejectCode::BadParams,
            );
        }
        // The minimum itself is fine.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = sock_path(&dir);
        let l = listen(&path, LocalServerOptions::default());
        let server = serve_one(&l);
        let client = LocalBusClient::connect(
            &path,
            &LocalClientOptions {
                max_msg_size: min as usize,
                ..o
            },
        )
        .expect("the profile's minimum");
        assert_eq!(client.max_msg_size(), min as usize);
        drop(server.join().expect("thread").expect("accept"));
    }
}

#[test]
fn handshake_profile_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock_path(&dir);
    let l = listen(
        &path,
        LocalServerOptions {
            profile: Some(1),
            ..LocalServerOptions::default()
        },
    );
    let server = serve_one(&l);
    match LocalBusClient::connect(&path, &small_client()) {
        Err(LocalBusError::Rejected { code, reason }) => {
            assert_eq!(code, RejectCode::BadParams);
            assert_eq!(
                reason,
                "wire profile v2 (0) requested, this socket serves v1 (1)"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(server.join().expect("thread").is_err());
    let server = serve_one(&l);
    let o = LocalClientOptions {
        profile: 1,
        ..small_client()
    };
    let _c = LocalBusClient::connect(&path, &o).expect("v1 accepted");
    let bus = server
        .join()
        .expect("thread")
        .expect("accept")
        .expect("bus");
    assert_eq!(bus.profile(), 1);
    for p in vmsg_proto::Profile::ALL {
        let id = super::profile_id(p).expect("id");
        assert_eq!(super::profile_from_id(id), Some(p));
    }
    assert_eq!(super::profile_from_id(3), None);
}

#[test]
fn handshake_times_out_on_silent_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock_path(&dir);
    let l = listen(
        &path,
        LocalServerOptions {
            handshake_timeout: Duration::from_millis(100),
            ..LocalServerOptions::default()
        },
    );
    let server = serve_one(&l);
    let sock = UnixStream::connect(&path).expect("connect");
    assert!(matches!(
        server.join().expect("thread"),
        Err(LocalBusError::Timeout)
    ));
    // The silent peer is told why before the connection closes.
    let mut head = [0u8; REPLY_HEAD_LEN];
    fds::recv_exact(sock.as_fd(), &mut head, Instant::now() + T).expect("reply");
    let (status, _) = Reply::decode_head(&head).expect("head");
    assert_eq!(RejectCode::from_u16(status), RejectCode::Malformed);
    assert!(!l.is_busy());
}

#[test]
fn client_rejects_bad_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock_path(&dir);
    let bad = [
        LocalClientOptions {
            max_msg_size: 10,
            ..small_client()
        },
        LocalClientOptions {
            max_msg_size: 512,
            ..small_client()
        },
        LocalClientOptions {
            ram_size: 0,
            ..small_client()
        },
        LocalClientOptions {
            ram_base: u64::MAX - 4095,
            ..small_client()
        },
        LocalClientOptions {
            profile: 9,
            ..small_client()
        },
        LocalClientOptions {
            ring: RingParams {
                slot_size: 264,
                slots: 5,
            },
            ..small_client()
        },
    ];
    for o in bad {
        assert!(
            matches!(
                LocalBusClient::connect(&path, &o),
                Err(LocalBusError::InvalidOptions(_))
            ),
            "{o:?}"
        );
    }
}

#[test]
fn bind_handles_existing_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock_path(&dir);
    // A stale socket (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let l = LocalBusListener::bind(&path, LocalServerOptions::default()).expect("rebind");
    // A live one is not.
    assert!(matches!(
        LocalBusListener::bind(&path, LocalServerOptions::default()),
        Err(LocalBusError::InUse(_))
    ));
    drop(l);
    // Our socket file is removed when the listener goes.
    assert!(!path.exists());
    // A regular file is never removed.
    std::fs::write(&path, b"data").expect("write");
    assert!(matches!(
        LocalBusListener::bind(&path, LocalServerOptions::default()),
        Err(LocalBusError::NotASocket(_))
    ));
    assert!(path.exists());
    assert!(matches!(
        LocalBusListener::bind(
            &dir.path().join("x.sock"),
            LocalServerOptions {
                max_msg_size: 8,
                ..LocalServerOptions::default()
            }
        ),
        Err(LocalBusError::InvalidOptions(_))
    ));
}

fn readable(fd: RawFd) -> bool {
    // SAFETY: the caller's bus owns `fd` for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fds::wait_readable(&[fd], Some(Instant::now())).expect("poll")[0]
}

fn wait(fd: RawFd) -> bool {
    // SAFETY: the caller's bus owns `fd` for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    fds::wait_readable(&[fd], Some(Instant::now() + T)).expect("poll")[0]
}

fn connected(
    server: LocalServerOptions,
    client: LocalClientOptions,
) -> (
    tempfile::TempDir,
    Arc<LocalBusListener>,
    LocalBus,
    LocalBusClient,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sock_path(&dir);
    let l = listen(&path, server);
    let s = serve_one(&l);
    let c = LocalBusClient::connect(&path, &client).expect("connect");
    let bus = s.join().expect("thread").expect("accept").expect("bus");
    (dir, l, bus, c)
}

#[test]
fn device_side_kick_suppression() {
    let (_d, _l, mut bus, mut c) = connected(LocalServerOptions::default(), small_client());
    let mut buf = [0u8; 264];
    c.send(b"first frame").expect("send");
    assert!(wait(bus.doorbell_fd()));
    bus.ack_doorbell().expect("ack");
    assert!(!readable(bus.doorbell_fd()));
    assert_eq!(bus.recv(&mut buf).expect("recv"), Some(11));
    // While we drain, the driver does not kick.
    c.send(b"second").expect("send");
    assert!(!readable(bus.doorbell_fd()));
    assert_eq!(bus.recv(&mut buf).expect("recv"), Some(6));
    assert_eq!(bus.recv(&mut buf).expect("recv"), None);
    // Having reported "empty", we are kicked again.
    c.send(b"third").expect("send");
    assert!(wait(bus.doorbell_fd()));
    bus.ack_doorbell().expect("ack");
    assert_eq!(bus.recv(&mut buf).expect("recv"), Some(5));
    assert_eq!(&buf[..5], b"third");
    assert_eq!(bus.counters().frames_in, 3);
    assert_eq!(bus.counters().doorbells_in, 2);
}

#[test]
fn driver_polling_mode_suppresses_calls() {
    let (_d, _l, mut bus, mut c) = connected(
        LocalServerOptions::default(),
        LocalClientOptions {
            polling: true,
            ..small_client()
        },
    );
    let mut buf = [0u8; 264];
    bus.send(b"polled").expect("send");
    assert!(c.is_polling());
    assert_eq!(c.recv(&mut buf, Some(T)).expect("recv"), Some(6));
    assert_eq!(c.recv(&mut buf, Some(Duration::ZERO)).expect("recv"), None);
    // Back to doorbell mode: the next frame wakes a blocked recv.
    c.set_polling(false);
    bus.send(b"rung").expect("send");
    assert_eq!(c.recv(&mut buf, Some(T)).expect("recv"), Some(4));
    assert_eq!(bus.counters().frames_out, 2);
}

#[test]
fn oversized_and_small_buffers() {
    let (_d, _l, mut bus, mut c) = connected(
        LocalServerOptions {
            max_msg_size: 64,
            ..LocalServerOptions::default()
        },
        small_client(),
    );
    assert!(matches!(
        c.send(&[0; 65]),
        Err(LocalBusError::FrameTooLarge { len: 65, max: 64 })
    ));
    assert!(matches!(
        bus.send(&[0; 65]),
        Err(BusError::FrameTooLarge { len: 65, max: 64 })
    ));
    // The instance's buffer is only max_msg_size long: fine for valid frames.
    let mut buf = [0u8; 64];
    c.send(&[3; 64]).expect("send");
    assert_eq!(bus.recv(&mut buf).expect("recv"), Some(64));
    assert_eq!(buf, [3; 64]);
}

#[test]
fn device_send_ring_full_times_out() {
    let (_d, _l, mut bus, _c) = connected(
        LocalServerOptions {
            send_timeout: Duration::from_millis(1),
            ..LocalServerOptions::default()
        },
        small_client(),
    );
    for _ in 0..4 {
        bus.send(b"x").expect("send");
    }
    assert!(matches!(bus.send(b"x"), Err(BusError::RingFull)));
}

#[test]
fn busy_rejects_second_driver() {
    let (d, l, mut bus, _c) = connected(LocalServerOptions::default(), small_client());
    let path = sock_path(&d);
    // Turned away by the live bus when its control fd fires.
    let p2 = path.clone();
    let second = std::thread::spawn(move || LocalBusClient::connect(&p2, &small_client()));
    let control = bus.control_fd().expect("control fd");
    assert!(wait(control));
    bus.handle_control().expect("still connected");
    match second.join().expect("thread") {
        Err(LocalBusError::Rejected { code, .. }) => assert_eq!(code, RejectCode::Busy),
        other => panic!("{other:?}"),
    }
    // Or by accept, if the owner calls it while serving.
    let p3 = path.clone();
    let third = std::thread::spawn(move || LocalBusClient::connect(&p3, &small_client()));
    assert!(matches!(l.accept_timeout(T), Err(LocalBusError::Busy)));
    match third.join().expect("thread") {
        Err(LocalBusError::Rejected { code, .. }) => assert_eq!(code, RejectCode::Busy),
        other => panic!("{other:?}"),
    }
    // After the first driver's bus is gone, the next one is served.
    drop(bus);
    let s = serve_one(&l);
    let _c2 = LocalBusClient::connect(&path, &small_client()).expect("connect");
    assert!(s.join().expect("thread").expect("accept").is_some());
}

#[test]
fn memory_shared_both_ways() {
    let (_d, _l, bus, c) = connected(LocalServerOptions::default(), small_client());
    let addr = GuestAddress(0x4000_0000 + 0x1234);
    c.memory()
        .write_slice(b"from the driver", addr)
        .expect("write");
    let mem = bus.memory();
    let mut got = [0u8; 15];
    mem.read_slice(&mut got, addr).expect("read");
    assert_eq!(&got, b"from the driver");
    mem.write_obj(0xdead_beef_u32, GuestAddress(0x4000_0000 + (1 << 20) - 4))
        .expect("write");
    let v: u32 = c
        .memory()
        .read_obj(GuestAddress(0x4000_0000 + (1 << 20) - 4))
        .expect("read");
    assert_eq!(v, 0xdead_beef);
    // Outside the driver's RAM is outside the device's view too.
    assert!(mem.read_obj::<u8>(GuestAddress(0x4000_0000 - 1)).is_err());
    assert!(
        mem.read_obj::<u8>(GuestAddress(0x4000_0000 + (1 << 20)))
            .is_err()
    );
}

#[test]
fn disconnect_both_ways() {
    let (_d, _l, mut bus, c) = connected(LocalServerOptions::default(), small_client());
    drop(c);
    assert!(wait(bus.control_fd().expect("control fd")));
    assert!(matches!(bus.handle_control(), Err(BusError::Disconnected)));

    let (_d, _l, mut bus, mut c) = connected(LocalServerOptions::default(), small_client());
    bus.send(b"last words").expect("send");
    drop(bus);
    let mut buf = [0u8; 264];
    // Queued frames first, then the disconnect.
    assert_eq!(c.recv(&mut buf, Some(T)).expect("recv"), Some(10));
    assert!(matches!(
        c.recv(&mut buf, Some(T)),
        Err(LocalBusError::Disconnected)
    ));
}

#[test]
fn hostile_ring_indices_are_reported() {
    let (_d, _l, mut bus, _c) = connected(LocalServerOptions::default(), small_client());
    // Scribble over ring A's producer index through our own mapping of it,
    // as a hostile driver would.
    let base = bus.ring_ptr();
    // SAFETY: offset 64 (ring A's prod) is inside the live mapping; the
    // write races only with our own reads, through atomics-compatible u32.
    unsafe { base.add(64).cast::<u32>().write_volatile(1000) };
    let mut buf = [0u8; 264];
    assert!(matches!(bus.recv(&mut buf), Err(BusError::RingCorrupt(_))));
}
