//! Daemon side of the local bus: the listening socket, the handshake and the
//! [`Bus`] implementation.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::debug;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};
use vmsg_transport::ring::{self, Consumer, Producer, RingError, Role, SharedRegion};

use super::fds::{self, SocketState};
use super::wire::{self, HELLO_FDS, HELLO_LEN, Hello, Reply};
use super::{LocalBusError, RejectCode};
use crate::bus::{Bus, BusCounters, BusError};
use crate::memory::GuestMemoryHandle;
use crate::rate_limited;
use crate::ratelog::LogLimiter;

/// Guest pages are 4 KiB; RAM base and size must be multiples of it.
const PAGE: u64 = 4096;
/// Largest ring region a driver may hand us.
const MAX_RING_REGION: u64 = 64 << 20;
/// How many pending connections one `handle_control` turns away.
const BUSY_REJECTS_PER_CALL: usize = 16;

/// Daemon-side settings of one local-bus socket.
#[derive(Debug, Clone)]
pub struct LocalServerOptions {
    /// Largest message this side will use (the bus uses the minimum of both
    /// sides' values). Default 264.
    pub max_msg_size: usize,
    /// Transport feature bits advertised to the driver (v2 §1). Default 0.
    pub transport_features: u32,
    /// Accept only this wire profile (0 = v2, 1 = v1, 2 = rfc2); `None`
    /// accepts any known profile and reports it via [`LocalBus::profile`].
    pub profile: Option<u8>,
    /// Largest guest RAM a driver may share. Default 64 GiB.
    pub max_ram_size: u64,
    /// How long a connecting driver may take to send its hello. Default 5 s.
    pub handshake_timeout: Duration,
    /// How long [`Bus::send`] retries a full outgoing ring before giving up
    /// with [`BusError::RingFull`]. Default 10 ms.
    pub send_timeout: Duration,
    /// How often (at most) a doorbell re-checks that the driver's memfds
    /// are still fully allocated (`docs/local-bus.md`). Default 1 ms.
    pub memory_check_interval: Duration,
}

impl Default for LocalServerOptions {
    fn default() -> Self {
        LocalServerOptions {
            max_msg_size: 264,
            transport_features: 0,
            profile: None,
            max_ram_size: 64 << 30,
            handshake_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_millis(10),
            memory_check_interval: Duration::from_millis(1),
        }
    }
}

/// State shared by the listener and the bus it handed out.
#[derive(Debug)]
struct ListenerInner {
    listener: UnixListener,
    path: PathBuf,
    /// (dev, ino) of the socket file we created, so Drop only removes ours.
    ident: (u64, u64),
    busy: AtomicBool,
    opts: LocalServerOptions,
    /// Second drivers turned away are logged through this.
    busy_log: std::sync::Mutex<LogLimiter>,
}

impl Drop for ListenerInner {
    fn drop(&mut self) {
        if let Ok(md) = std::fs::symlink_metadata(&self.path) {
            if (md.dev(), md.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Marks the listener busy while a [`LocalBus`] from it is alive.
#[derive(Debug)]
struct BusyGuard(Arc<ListenerInner>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// The daemon's listening socket for one guest.
///
/// Serves one driver at a time: while a [`LocalBus`] from this listener is
/// alive, further connections are answered "busy" (by [`Self::accept`], and
/// by the live bus itself whenever its control fd fires).
#[derive(Debug)]
pub struct LocalBusListener {
    inner: Arc<ListenerInner>,
}

impl LocalBusListener {
    /// Listen on `path` (mode 0600). A stale socket file (nobody listening)
    /// is replaced; a live one or a non-socket file is an error.
    pub fn bind(path: &Path, opts: LocalServerOptions) -> Result<Self, LocalBusError> {
        let max = opts.max_msg_size;
        if max < wire::MIN_MSG_SIZE as usize || max > wire::MAX_MSG_SIZE as usize {
            return Err(LocalBusError::InvalidOptions(
                "max_msg_size outside 44..=65535",
            ));
        }
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(LocalBusError::InUse(path.to_path_buf())),
                Err(_) => {
                    std::fs::remove_file(path).map_err(LocalBusError::io("remove stale socket"))?
                }
            },
            Ok(_) => return Err(LocalBusError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LocalBusError::io("stat socket path")(e)),
        }
        let listener = UnixListener::bind(path).map_err(LocalBusError::io("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(LocalBusError::io("chmod socket"))?;
        // Non-blocking so that a connection that vanished between poll and
        // accept cannot block us; `accept` waits with poll instead.
        listener
            .set_nonblocking(true)
            .map_err(LocalBusError::io("set_nonblocking"))?;
        let md = std::fs::symlink_metadata(path).map_err(LocalBusError::io("stat socket"))?;
        Ok(LocalBusListener {
            inner: Arc::new(ListenerInner {
                listener,
                path: path.to_path_buf(),
                ident: (md.dev(), md.ino()),
                busy: AtomicBool::new(false),
                opts,
                busy_log: std::sync::Mutex::new(LogLimiter::default()),
            }),
        })
    }

    /// The listening fd: readable when a driver is connecting.
    pub fn as_raw_fd(&self) -> RawFd {
        self.inner.listener.as_raw_fd()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether a [`LocalBus`] from this listener is alive.
    pub fn is_busy(&self) -> bool {
        self.inner.busy.load(Ordering::Acquire)
    }

    /// Wait for a driver and perform the handshake. On a refused handshake
    /// the driver has been told why and the error says the same.
    pub fn accept(&self) -> Result<LocalBus, LocalBusError> {
        self.accept_until(None)?.ok_or(LocalBusError::Timeout)
    }

    /// [`Self::accept`], giving up with `Ok(None)` if no driver connects
    /// within `timeout` (the handshake has its own timeout).
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<LocalBus>, LocalBusError> {
        self.accept_until(fds::deadline_after(Some(timeout)))
    }

    /// Wait for a driver and perform the handshake, until `stop` becomes
    /// readable: then [`LocalBusError::Stopped`], also in the middle of a
    /// handshake (a silent peer cannot hold a stopping daemon for the
    /// handshake timeout).
    pub fn accept_or_stop(&self, stop: BorrowedFd<'_>) -> Result<LocalBus, LocalBusError> {
        self.accept_inner(None, Some(stop))?
            .ok_or(LocalBusError::Stopped)
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Option<LocalBus>, LocalBusError> {
        self.accept_inner(deadline, None)
    }

    fn accept_inner(
        &self,
        deadline: Option<Instant>,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<Option<LocalBus>, LocalBusError> {
        let mut watched = vec![self.inner.listener.as_fd()];
        watched.extend(stop);
        let stream = loop {
            let ready = fds::wait_readable(&watched, deadline)?;
            if ready.get(1).copied().unwrap_or(false) {
                return Err(LocalBusError::Stopped);
            }
            if !ready[0] {
                return Ok(None);
            }
            match self.inner.listener.accept() {
                Ok((s, _)) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(LocalBusError::io("accept")(e)),
            }
        };
        if self.inner.busy.swap(true, Ordering::AcqRel) {
            reject_busy(&stream);
            return Err(LocalBusError::Busy);
        }
        let guard = BusyGuard(self.inner.clone());
        handshake(stream, guard, stop).map(Some)
    }
}

impl AsRawFd for LocalBusListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.listener.as_raw_fd()
    }
}

impl AsFd for LocalBusListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.listener.as_fd()
    }
}

/// Tell a connecting driver we are busy, without waiting for its hello (so
/// a slow peer cannot stall the bus we are serving).
fn reject_busy(stream: &UnixStream) {
    let reply = Reply::Reject {
        code: RejectCode::Busy,
        reason: "another driver is connected to this socket".into(),
    }
    .encode();
    // Best effort, non-blocking: a fresh socket buffer always has room.
    let _ = nix::sys::socket::send(
        stream.as_raw_fd(),
        &reply,
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    );
}

/// Receive the hello, validate it, answer, and build the bus.
fn handshake(
    stream: UnixStream,
    guard: BusyGuard,
    stop: Option<BorrowedFd<'_>>,
) -> Result<LocalBus, LocalBusError> {
    let opts = guard.0.opts.clone();
    debug!(
        "local bus {}: a driver connected; waiting for its hello",
        guard.0.path.display()
    );
    let deadline = Instant::now() + opts.handshake_timeout;
    let mut hello = [0u8; HELLO_LEN];
    match fds::recv_with_fds(stream.as_fd(), &mut hello, deadline, HELLO_FDS, stop) {
        Ok(fds) => build(&hello, fds, stream, guard, &opts),
        Err(e) => {
            if !matches!(e, LocalBusError::Disconnected | LocalBusError::Stopped) {
                send_reject(&stream, &e);
            }
            Err(e)
        }
    }
}

/// Tell the driver why it was refused (best effort: it may be gone).
fn send_reject(stream: &UnixStream, e: &LocalBusError) {
    let (code, reason) = match e {
        LocalBusError::Refused { code, reason } => (*code, reason.clone()),
        LocalBusError::Timeout => (RejectCode::Malformed, "no complete hello in time".into()),
        other => (RejectCode::Internal, other.to_string()),
    };
    debug!("local bus: refusing handshake ({code}): {reason}");
    let _ = send_reply(stream, &Reply::Reject { code, reason });
}

fn send_reply(stream: &UnixStream, reply: &Reply) -> Result<(), LocalBusError> {
    fds::send_all(stream.as_raw_fd(), &reply.encode()).map_err(|e| match e {
        Errno::EPIPE | Errno::ECONNRESET => LocalBusError::Disconnected,
        e => LocalBusError::os("send reply")(e),
    })
}

fn build(
    hello: &[u8; HELLO_LEN],
    fds: Vec<OwnedFd>,
    stream: UnixStream,
    guard: BusyGuard,
    opts: &LocalServerOptions,
) -> Result<LocalBus, LocalBusError> {
    let prepared = validate(hello, fds, opts)
        .and_then(|v| Ok((v, control_epoll(&stream, &guard.0.listener)?)));
    match prepared {
        Ok((v, control)) => {
            let max = v.max_msg_size;
            let bus = LocalBus::new(v, stream, control, guard, opts);
            send_reply(
                &bus.sock,
                &Reply::Accept {
                    max_msg_size: max,
                    transport_features: opts.transport_features,
                },
            )?;
            Ok(bus)
        }
        Err(e) => {
            send_reject(&stream, &e);
            Err(e)
        }
    }
}

/// The bus's control fd: one epoll set over the connection (EOF means the
/// driver is gone) and the listener (a second driver to turn away).
fn control_epoll(sock: &UnixStream, listener: &UnixListener) -> Result<Epoll, LocalBusError> {
    sock.set_nonblocking(true)
        .map_err(LocalBusError::io("set_nonblocking"))?;
    let control =
        Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(LocalBusError::os("epoll_create"))?;
    control
        .add(
            sock,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, 0),
        )
        .map_err(LocalBusError::os("epoll_ctl"))?;
    control
        .add(listener, EpollEvent::new(EpollFlags::EPOLLIN, 1))
        .map_err(LocalBusError::os("epoll_ctl"))?;
    Ok(control)
}

/// Everything a valid hello gave us, mapped and attached.
struct Validated {
    hello: Hello,
    max_msg_size: u32,
    producer: Producer,
    consumer: Consumer,
    ring_map: MmapRegion,
    memory: GuestMemoryHandle,
    kick: OwnedFd,
    call: OwnedFd,
}

fn validate(
    b: &[u8; HELLO_LEN],
    fds: Vec<OwnedFd>,
    opts: &LocalServerOptions,
) -> Result<Validated, LocalBusError> {
    use LocalBusError as E;
    use RejectCode as C;
    let hello = Hello::decode(b)?;
    let n = fds.len();
    let [ram, ring_fd, kick, call]: [OwnedFd; HELLO_FDS] = fds.try_into().map_err(|_| {
        E::refused(
            C::BadFds,
            format!("expected {HELLO_FDS} fds (ram, ring, kick, call), got {n}"),
        )
    })?;
    fds::check_eventfd(&kick, "kick")?;
    fds::check_eventfd(&call, "call")?;
    let HelloParams {
        max_msg_size,
        ram_len,
        ring_len,
    } = check_params(&hello, opts)?;
    let (base, size) = (hello.ram_base, hello.ram_size);
    fds::check_memfd(&ram, size, "RAM", C::BadMemory)?;
    fds::check_memfd(&ring_fd, hello.ring_size, "ring", C::BadRing)?;
    let ring_map = fds::map_memfd(File::from(ring_fd), ring_len, "ring region")?;
    // SAFETY: `ring_map` is a live shared mapping of `ring_len` bytes that
    // `Validated` (and then `LocalBus`) keeps alongside the ring ends made
    // from this view; only those ends access it in this process.
    let region = unsafe { SharedRegion::from_raw(ring_map.as_ptr(), ring_map.size()) };
    let (producer, consumer) = ring::attach(&region, Role::Device)
        .map_err(|e| E::refused(C::BadRing, format!("ring header: {e}")))?;
    if producer.params() != hello.ring {
        return Err(E::refused(
            C::BadRing,
            "ring header disagrees with the hello's ring parameters",
        ));
    }

    let ram_map = fds::map_memfd(File::from(ram), ram_len, "guest RAM")?;
    let region = GuestRegionMmap::new(ram_map, GuestAddress(base))
        .ok_or_else(|| E::refused(C::BadMemory, "RAM region overflows"))?;
    let memory =
        GuestMemoryMmap::from_regions(vec![region]).map_err(|e| E::MemoryLayout(e.to_string()))?;

    Ok(Validated {
        hello,
        max_msg_size,
        producer,
        consumer,
        ring_map,
        memory: Arc::new(memory),
        kick,
        call,
    })
}

/// What a hello asks for, once it passed every check that needs no fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloParams {
    /// The bus maximum both sides use: min(driver's, daemon's).
    pub max_msg_size: u32,
    /// Bytes of RAM to map.
    pub ram_len: usize,
    /// Bytes of the ring region to map.
    pub ring_len: usize,
}

/// The checks of a hello that need no fd (framing, profile, message size,
/// RAM window, ring geometry), as the daemon applies them: what the fuzz
/// target `handshake` drives with arbitrary bytes.
pub fn check_hello(
    bytes: &[u8; HELLO_LEN],
    opts: &LocalServerOptions,
) -> Result<HelloParams, LocalBusError> {
    check_params(&Hello::decode(bytes)?, opts)
}

fn check_params(hello: &Hello, opts: &LocalServerOptions) -> Result<HelloParams, LocalBusError> {
    use LocalBusError as E;
    use RejectCode as C;

    if hello.profile > wire::MAX_PROFILE {
        return Err(E::refused(
            C::BadParams,
            format!("unknown wire profile {}", hello.profile),
        ));
    }
    if let Some(p) = opts.profile {
        if p != hello.profile {
            return Err(E::refused(
                C::BadParams,
                format!(
                    "wire profile {} ({}) requested, this socket serves {} ({p})",
                    wire::profile_name(hello.profile),
                    hello.profile,
                    wire::profile_name(p),
                ),
            ));
        }
    }
    // The profile's smallest maximum: its largest fixed-size message must
    // fit (v2 52, v1 48, rfc2 44). Below it, messages would be dropped later.
    let min = super::profile_from_id(hello.profile)
        .map_or(wire::MIN_MSG_SIZE, |p| p.min_max_msg_size() as u32);
    if hello.max_msg_size < min || hello.max_msg_size > wire::MAX_MSG_SIZE {
        return Err(E::refused(
            C::BadParams,
            format!(
                "max_msg_size {} must be from {min} to {} for wire profile {}",
                hello.max_msg_size,
                wire::MAX_MSG_SIZE,
                wire::profile_name(hello.profile)
            ),
        ));
    }
    // `bind` checked ours is in range too.
    let max_msg_size = hello.max_msg_size.min(opts.max_msg_size as u32);

    let (base, size) = (hello.ram_base, hello.ram_size);
    if size == 0 || base % PAGE != 0 || size % PAGE != 0 {
        return Err(E::refused(
            C::BadMemory,
            format!("RAM {base:#x}+{size:#x} is empty or not page aligned"),
        ));
    }
    if base.checked_add(size).is_none() {
        return Err(E::refused(
            C::BadMemory,
            format!("RAM {base:#x}+{size:#x} overflows the address space"),
        ));
    }
    if size > opts.max_ram_size {
        return Err(E::refused(
            C::BadMemory,
            format!(
                "RAM size {size:#x} above this socket's limit {:#x}",
                opts.max_ram_size
            ),
        ));
    }
    let ram_len = usize::try_from(size)
        .map_err(|_| E::refused(C::BadMemory, "RAM size exceeds the address space"))?;

    let need = hello
        .ring
        .required_size()
        .map_err(|e| E::refused(C::BadRing, e.to_string()))?;
    if hello.ring.slot_size < max_msg_size {
        return Err(E::refused(
            C::BadRing,
            format!(
                "ring slot size {} below the message size {max_msg_size}",
                hello.ring.slot_size
            ),
        ));
    }
    if hello.ring_size < need as u64 || hello.ring_size > MAX_RING_REGION {
        return Err(E::refused(
            C::BadRing,
            format!(
                "ring region of {} bytes, the rings need {need} (at most {MAX_RING_REGION})",
                hello.ring_size
            ),
        ));
    }
    Ok(HelloParams {
        max_msg_size,
        ram_len,
        // Bounded by MAX_RING_REGION above.
        ring_len: hello.ring_size as usize,
    })
}

/// One connected driver, daemon side.
#[derive(Debug)]
pub struct LocalBus {
    // The ring ends come before `_ring_map`: they point into it, so they are
    // dropped first.
    producer: Producer,
    consumer: Consumer,
    _ring_map: MmapRegion,
    memory: GuestMemoryHandle,
    kick: OwnedFd,
    call: OwnedFd,
    sock: UnixStream,
    /// `control_fd`: readable when the socket or the listener is.
    control: Epoll,
    max_msg_size: usize,
    transport_features: u32,
    profile: u8,
    ram_base: u64,
    ram_size: u64,
    ring_size: u64,
    /// When the memfds were last found fully allocated.
    memory_checked: Instant,
    memory_check_interval: Duration,
    send_timeout: Duration,
    scratch: Vec<u8>,
    oversized: u64,
    /// The instance is spinning on `recv`: keep NO_KICK set while empty.
    spinning: bool,
    counters: BusCounters,
    guard: BusyGuard,
}

impl LocalBus {
    fn new(
        v: Validated,
        sock: UnixStream,
        control: Epoll,
        guard: BusyGuard,
        opts: &LocalServerOptions,
    ) -> Self {
        let slot = v.consumer.max_frame();
        LocalBus {
            producer: v.producer,
            consumer: v.consumer,
            _ring_map: v.ring_map,
            memory: v.memory,
            kick: v.kick,
            call: v.call,
            sock,
            control,
            max_msg_size: v.max_msg_size as usize,
            transport_features: opts.transport_features,
            profile: v.hello.profile,
            ram_base: v.hello.ram_base,
            ram_size: v.hello.ram_size,
            ring_size: v.hello.ring_size,
            // The handshake just checked them.
            memory_checked: Instant::now(),
            memory_check_interval: opts.memory_check_interval,
            send_timeout: opts.send_timeout,
            scratch: vec![0; slot],
            oversized: 0,
            spinning: false,
            counters: BusCounters::default(),
            guard,
        }
    }

    /// The wire profile the driver asked for (0 = v2, 1 = v1, 2 = rfc2).
    pub fn profile(&self) -> u8 {
        self.profile
    }

    /// Guest-physical base of the driver's RAM.
    pub fn ram_base(&self) -> u64 {
        self.ram_base
    }

    /// Size of the driver's RAM.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// Where the ring region is mapped (tests play hostile driver with it).
    #[cfg(test)]
    pub(super) fn ring_ptr(&self) -> *mut u8 {
        self._ring_map.as_ptr()
    }

    /// Whether the RAM and ring memfds are still fully allocated, as the
    /// handshake found them.
    fn check_memory(&self) -> Result<(), BusError> {
        let ram = self
            .memory
            .iter()
            .next()
            .and_then(|r| r.file_offset())
            .map(|f| (f.file(), self.ram_size, "RAM"));
        let ring = self
            ._ring_map
            .file_offset()
            .map(|f| (f.file(), self.ring_size, "ring"));
        for (file, need, what) in ram.into_iter().chain(ring) {
            if !fds::still_allocated(file, need).map_err(bus_err("fstat shared memfd"))? {
                return Err(BusError::MemoryRevoked(format!(
                    "the driver freed pages of its {what} memfd"
                )));
            }
        }
        Ok(())
    }

    /// Turn away drivers connecting while we serve this one.
    fn reject_waiting(&mut self) {
        for _ in 0..BUSY_REJECTS_PER_CALL {
            match self.guard.0.listener.accept() {
                Ok((s, _)) => {
                    let mut limit = self
                        .guard
                        .0
                        .busy_log
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    rate_limited!(
                        limit,
                        warn,
                        "local bus: rejecting a second driver on {}: busy",
                        self.guard.0.path.display()
                    );
                    reject_busy(&s);
                }
                Err(_) => break,
            }
        }
    }

    /// Pop one frame; oversized ones (larger than the negotiated maximum or
    /// than `buf`) are dropped and counted.
    fn pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        loop {
            let got = if buf.len() >= self.consumer.max_frame() {
                self.consumer.try_pop(buf)?
            } else {
                match self.consumer.try_pop(&mut self.scratch)? {
                    Some(n) if n <= buf.len() => {
                        buf[..n].copy_from_slice(&self.scratch[..n]);
                        Some(n)
                    }
                    other => other,
                }
            };
            match got {
                Some(n) if n > self.max_msg_size || n > buf.len() => self.oversized += 1,
                other => return Ok(other),
            }
        }
    }
}

fn bus_err(op: &'static str) -> impl FnOnce(Errno) -> BusError {
    move |e| BusError::Os {
        op,
        source: e.into(),
    }
}

fn ring_err(e: RingError) -> BusError {
    match e {
        RingError::Corrupt(what) => BusError::RingCorrupt(what),
        _ => BusError::RingCorrupt("unexpected ring error"),
    }
}

impl Bus for LocalBus {
    fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    fn transport_features(&self) -> u32 {
        self.transport_features
    }

    fn doorbell_fd(&self) -> RawFd {
        self.kick.as_raw_fd()
    }

    fn ack_doorbell(&mut self) -> Result<(), BusError> {
        let n = fds::drain(&self.kick).map_err(bus_err("read kick eventfd"))?;
        self.counters.doorbells_in += n;
        // Before work: the driver's memory must still be the driver's (a
        // hole punched into it would be refilled by our faults, charged to
        // the daemon). One fstat per memfd, at most every
        // `memory_check_interval`: what a driver can make us fault in is
        // bounded by that much work (measured: a check at every wake-up cost
        // 0.2-0.3 us of a 3 us round trip).
        let now = Instant::now();
        if now.duration_since(self.memory_checked) >= self.memory_check_interval {
            self.memory_checked = now;
            self.check_memory()?;
        }
        Ok(())
    }

    fn control_fd(&self) -> Option<RawFd> {
        Some(self.control.0.as_raw_fd())
    }

    fn handle_control(&mut self) -> Result<(), BusError> {
        match fds::drain_socket(self.sock.as_fd()) {
            Ok(SocketState::Closed) => return Err(BusError::Disconnected),
            Ok(SocketState::Idle) => {}
            Err(e) => return Err(bus_err("recv control socket")(e)),
        }
        self.reject_waiting();
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BusError> {
        // While frames keep coming, tell the driver not to kick; before
        // reporting "empty", clear that (with a fence) and look once more, so
        // a frame pushed meanwhile is either seen now or kicked.
        loop {
            match self.pop(buf).map_err(ring_err)? {
                Some(n) => {
                    if !self.consumer.is_polling() {
                        self.consumer.set_polling(true);
                    }
                    self.counters.frames_in += 1;
                    return Ok(Some(n));
                }
                // A spinning instance keeps the driver from kicking.
                None if self.consumer.is_polling() && !self.spinning => {
                    self.consumer.set_polling(false)
                }
                None => return Ok(None),
            }
        }
    }

    fn set_spinning(&mut self, spinning: bool) {
        self.spinning = spinning;
        if !spinning && self.consumer.is_polling() {
            // Clear with the fence; the instance re-checks the ring next.
            self.consumer.set_polling(false);
        } else if spinning && !self.consumer.is_polling() {
            self.consumer.set_polling(true);
        }
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), BusError> {
        if frame.len() > self.max_msg_size {
            return Err(BusError::FrameTooLarge {
                len: frame.len(),
                max: self.max_msg_size,
            });
        }
        let mut deadline = None;
        loop {
            match self.producer.try_push(frame) {
                Ok(kick) => {
                    self.counters.frames_out += 1;
                    if kick {
                        fds::kick(&self.call).map_err(bus_err("write call eventfd"))?;
                    }
                    return Ok(());
                }
                Err(RingError::Full) => {
                    let now = Instant::now();
                    let d = *deadline.get_or_insert_with(|| {
                        // Make sure a sleeping driver wakes up to drain.
                        let _ = fds::kick(&self.call);
                        now + self.send_timeout
                    });
                    if now >= d {
                        return Err(BusError::RingFull);
                    }
                    std::thread::yield_now();
                }
                Err(RingError::TooLarge { len, max }) => {
                    return Err(BusError::FrameTooLarge { len, max });
                }
                Err(e) => return Err(ring_err(e)),
            }
        }
    }

    fn memory(&self) -> GuestMemoryHandle {
        self.memory.clone()
    }

    fn counters(&self) -> BusCounters {
        BusCounters {
            bad_slots: self.counters.bad_slots + self.consumer.dropped() + self.oversized,
            ..self.counters
        }
    }
}

// The bus is handed to a per-guest thread.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<LocalBus>();
};
