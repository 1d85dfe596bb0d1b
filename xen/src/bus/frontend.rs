//! The domU side of the Xen bus: [`XenFrontend`], a `vmsg_driver::DriverBus`
//! a userspace process in a guest runs.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vm_memory::{GuestMemoryMmap, MmapRegion};
use vmsg_driver::bus::{BusIoError, DriverBus};
use vmsg_driver::wire::Profile as DriverProfile;
use vmsg_transport::ring::{self, Consumer, Producer, RingError, RingParams, SharedRegion};

use super::platform::FrontendPlatform;
use super::{
    DEFAULT_STATE_TIMEOUT, XenBusError, XenbusState, frontend_path, keys, parse_profile, parse_u64,
    profile_name, ring_ref_key, ring_slots_for,
};
use crate::DomId;
use crate::bindings::XEN_PAGE_SIZE;
use crate::evtchn::{BoundPort, EventChannels};
use crate::gntalloc::GrantSharer;
use crate::memory::share_grant_pool;
use crate::xenstore::{XsClient, XsError, XsOps, check_path};

const TOKEN_BE: &str = "vmsg-be-state";

/// A xenstore connection that successive frontends of one process share:
/// each takes it when connecting and puts it back when closed (or dropped).
pub type SharedXs<S> = Arc<Mutex<Option<XsClient<S>>>>;

/// A failed connection attempt and the xenstore connection it used.
type Failed<S> = Box<(XenBusError, Option<XsClient<S>>)>;
/// How long closing waits for the backend to let go.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Settings of a frontend connection.
#[derive(Debug, Clone)]
pub struct FrontendOptions {
    /// Device id (`device/vmsg/<devid>`).
    pub devid: u32,
    /// Largest message this side wants.
    pub max_msg_size: usize,
    /// Ring pages: `2^ring_page_order` (0: one page).
    pub ring_page_order: u32,
    /// Pages of the grant pool (grant mode).
    pub grant_pages: usize,
    /// Bound on each wait for a backend state.
    pub state_timeout: Duration,
    /// Bound on `send` retrying a full ring.
    pub send_timeout: Duration,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        Self {
            devid: 0,
            max_msg_size: 264,
            ring_page_order: 0,
            grant_pages: 256,
            state_timeout: DEFAULT_STATE_TIMEOUT,
            send_timeout: Duration::from_secs(1),
        }
    }
}

/// The connection's shared resources; ring ends before the ring mapping.
#[derive(Debug)]
struct FeConn<P: FrontendPlatform> {
    producer: Producer,
    consumer: Consumer,
    _ring: MmapRegion<()>,
    port: BoundPort<P::Evtchn>,
    scratch: Vec<u8>,
}

/// A connected frontend: the driver side of one Xen bus device.
///
/// Closing ([`XenFrontend::close`], or drop) says Closing, waits (bounded)
/// for the backend to let go, then releases the ring, the grants and the
/// event channel and says Closed.
#[derive(Debug)]
pub struct XenFrontend<P: FrontendPlatform> {
    conn: Option<FeConn<P>>,
    xs: Option<XsClient<P::Xs>>,
    memory: Arc<GuestMemoryMmap<()>>,
    fe_path: String,
    be_path: String,
    backend_id: DomId,
    max_msg_size: usize,
    transport_features: u32,
    profile: DriverProfile,
    grant_mode: bool,
    state_timeout: Duration,
    send_timeout: Duration,
    stash: VecDeque<Vec<u8>>,
    backend_gone: bool,
    home: Option<SharedXs<P::Xs>>,
}

fn read_str<O: XsOps + ?Sized>(xs: &mut O, path: &str) -> Result<String, XenBusError> {
    match xs.try_read(path) {
        Ok(Some(v)) => Ok(String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .to_owned()),
        Ok(None) => Err(XenBusError::Protocol(format!("{path} is missing"))),
        Err(e) => Err(XenBusError::xs(path)(e)),
    }
}

fn read_num<O: XsOps + ?Sized>(xs: &mut O, path: &str, max: u64) -> Result<u64, XenBusError> {
    let v = read_str(xs, path)?;
    parse_u64(&v)
        .filter(|&n| n <= max)
        .ok_or_else(|| XenBusError::Protocol(format!("{path} = {v:?} is not a number in range")))
}

fn driver_profile(p: vmsg_proto::Profile) -> Option<DriverProfile> {
    DriverProfile::ALL
        .into_iter()
        .find(|d| format!("{d:?}").eq_ignore_ascii_case(profile_name(p)))
}

impl<P: FrontendPlatform> XenFrontend<P> {
    /// Connect device `opts.devid` of this domain to its backend.
    pub fn connect(platform: &P, opts: &FrontendOptions) -> Result<Self, XenBusError> {
        Self::connect_with(platform, platform.open_xenstore()?, opts)
    }

    /// [`Self::connect`] over an existing xenstore connection (returned by
    /// [`Self::close`]).
    pub fn connect_with(
        platform: &P,
        xs: XsClient<P::Xs>,
        opts: &FrontendOptions,
    ) -> Result<Self, XenBusError> {
        Self::try_connect_with(platform, xs, opts).map_err(|f| f.0)
    }

    /// Connect over the shared xenstore connection `home` (taken now, put
    /// back when this frontend is closed or dropped, or at once if
    /// connecting fails).
    pub fn connect_shared(
        platform: &P,
        home: &SharedXs<P::Xs>,
        opts: &FrontendOptions,
    ) -> Result<Self, XenBusError> {
        let xs = lock(home).take().ok_or_else(|| {
            XenBusError::Config("the shared xenstore connection is in use".into())
        })?;
        match Self::try_connect_with(platform, xs, opts) {
            Ok(mut fe) => {
                fe.home = Some(home.clone());
                Ok(fe)
            }
            Err(failed) => {
                let (e, xs) = *failed;
                *lock(home) = xs;
                Err(e)
            }
        }
    }

    /// [`Self::connect_with`], handing the xenstore connection back on
    /// failure too (always `Some`; an `Option` only to stay panic-free).
    fn try_connect_with(
        platform: &P,
        mut xs: XsClient<P::Xs>,
        opts: &FrontendOptions,
    ) -> Result<Self, Failed<P::Xs>> {
        match Self::read_paths(&mut xs, opts) {
            Ok((fe_path, be_path, backend_id)) => {
                Self::handshake_from(platform, xs, opts, fe_path, be_path, backend_id)
            }
            Err(e) => Err(Box::new((e, Some(xs)))),
        }
    }

    fn read_paths(
        xs: &mut XsClient<P::Xs>,
        opts: &FrontendOptions,
    ) -> Result<(String, String, DomId), XenBusError> {
        let domid = read_num(xs, "domid", u64::from(DomId::MAX))? as DomId;
        let fe_path = frontend_path(domid, opts.devid);
        let be_path = read_str(xs, &format!("{fe_path}/{}", keys::BACKEND))?;
        check_path(&be_path).map_err(|e| XenBusError::Protocol(e.to_string()))?;
        if !be_path.starts_with("/local/domain/") {
            return Err(XenBusError::Protocol(format!("backend path {be_path:?}")));
        }
        let backend_id = read_num(
            xs,
            &format!("{fe_path}/{}", keys::BACKEND_ID),
            u64::from(DomId::MAX),
        )? as DomId;
        Ok((fe_path, be_path, backend_id))
    }

    fn handshake_from(
        platform: &P,
        mut xs: XsClient<P::Xs>,
        opts: &FrontendOptions,
        fe_path: String,
        be_path: String,
        backend_id: DomId,
    ) -> Result<Self, Failed<P::Xs>> {
        let be_state = format!("{be_path}/{}", keys::STATE);
        if let Err(e) = xs.watch(&be_state, TOKEN_BE) {
            return Err(Box::new((
                XenBusError::xs(format!("watch {be_state}"))(e),
                Some(xs),
            )));
        }
        let mut fe = Self {
            conn: None,
            xs: Some(xs),
            memory: Arc::new(GuestMemoryMmap::default()),
            fe_path,
            be_path,
            backend_id,
            max_msg_size: 0,
            transport_features: 0,
            profile: DriverProfile::V2,
            grant_mode: true,
            state_timeout: opts.state_timeout,
            send_timeout: opts.send_timeout,
            stash: VecDeque::new(),
            backend_gone: false,
            home: None,
        };
        match fe.handshake(platform, opts) {
            Ok(()) => {
                info!("{}: connected to {}", fe.fe_path, fe.be_path);
                Ok(fe)
            }
            Err(e) => {
                fe.give_up(&e);
                Err(Box::new((e, fe.xs.take())))
            }
        }
    }

    fn xs(&mut self) -> Result<&mut XsClient<P::Xs>, XenBusError> {
        self.xs
            .as_mut()
            .ok_or_else(|| XenBusError::Protocol("frontend closed".into()))
    }

    fn set_state(&mut self, s: XenbusState) -> Result<(), XenBusError> {
        let path = format!("{}/{}", self.fe_path, keys::STATE);
        self.xs()?
            .write(&path, s.raw().to_string().as_bytes())
            .map_err(XenBusError::xs(path))
    }

    fn backend_state(&mut self) -> Result<XenbusState, XenBusError> {
        let path = format!("{}/{}", self.be_path, keys::STATE);
        let xs = self.xs()?;
        while xs
            .try_next_event()
            .map_err(XenBusError::xs("watch events"))?
            .is_some()
        {}
        Ok(match xs.try_read(&path) {
            Ok(Some(v)) => XenbusState::parse(&v),
            Ok(None) | Err(XsError::Remote(crate::xenstore::XsErrno::EACCES)) => {
                XenbusState::Unknown
            }
            Err(e) => return Err(XenBusError::xs(path)(e)),
        })
    }

    /// Wait until the backend state satisfies `done` (Ok) or `fail` (Err).
    fn wait_backend(
        &mut self,
        what: &'static str,
        timeout: Duration,
        done: impl Fn(XenbusState) -> bool,
        fail: impl Fn(XenbusState) -> bool,
    ) -> Result<XenbusState, XenBusError> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.backend_state()?;
            if done(s) {
                return Ok(s);
            }
            if fail(s) {
                let path = format!("{}/{}", self.be_path, keys::ERROR);
                let err =
                    read_str(self.xs()?, &path).unwrap_or_else(|_| format!("backend went {s}"));
                return Err(XenBusError::Refused(err));
            }
            let xs = self.xs()?;
            if xs.pending_events() > 0 {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(XenBusError::Timeout { what, state: s });
            }
            xs.next_event(Some(left))
                .map_err(XenBusError::xs("watch events"))?;
        }
    }

    fn handshake(&mut self, platform: &P, opts: &FrontendOptions) -> Result<(), XenBusError> {
        use XenbusState as S;
        let err_path = format!("{}/{}", self.fe_path, keys::ERROR);
        if let Err(e) = self.xs()?.rm(&err_path) {
            debug!("{err_path}: {e}");
        }
        self.set_state(S::Initialising)?;
        self.wait_backend(
            "backend InitWait",
            self.state_timeout,
            |s| s == S::InitWait,
            |_| false,
        )?;

        // The backend's parameters.
        let be = self.be_path.clone();
        let xs = self.xs()?;
        let profile_s = read_str(xs, &format!("{be}/{}", keys::PROFILE))?;
        let profile = parse_profile(&profile_s)
            .and_then(driver_profile)
            .ok_or_else(|| XenBusError::Protocol(format!("unknown profile {profile_s:?}")))?;
        let be_max = read_num(xs, &format!("{be}/{}", keys::MAX_MSG_SIZE), 65535)? as usize;
        let features = read_num(
            xs,
            &format!("{be}/{}", keys::TRANSPORT_FEATURES),
            u64::from(u32::MAX),
        )? as u32;
        let mode = read_str(xs, &format!("{be}/{}", keys::MEMORY_MODE))?;
        let max_order = read_num(xs, &format!("{be}/{}", keys::MAX_RING_PAGE_ORDER), 16)? as u32;
        let grant_mode = match mode.as_str() {
            "grant" => true,
            "foreign" => false,
            other => return Err(XenBusError::Protocol(format!("memory-mode {other:?}"))),
        };
        let max = be_max.min(opts.max_msg_size);
        if max < profile.min_max_msg_size() {
            return Err(XenBusError::Protocol(format!(
                "max-msg-size {max} below the {profile:?} minimum"
            )));
        }
        if opts.ring_page_order > max_order {
            return Err(XenBusError::Config(format!(
                "ring-page-order {} above the backend's {max_order}",
                opts.ring_page_order
            )));
        }
        let order = opts.ring_page_order;
        let pages = 1usize << order;

        // The ring: fresh pages granted to the backend.
        let gntalloc = platform.gntalloc()?;
        let alloc = gntalloc.alloc_grants(self.backend_id, pages, true)?;
        let ring_map = alloc.map(0, pages)?;
        let ring_refs = alloc.grefs().to_vec();
        drop(alloc);
        let slot = u32::try_from(max).unwrap_or(u32::MAX);
        let slots = ring_slots_for(pages * XEN_PAGE_SIZE, slot).ok_or_else(|| {
            XenBusError::Config(format!("{pages} ring pages cannot hold {max}-byte slots"))
        })?;
        // SAFETY: `ring_map` is a live shared mapping that `FeConn` keeps
        // (declared after the ring ends, so dropped after them); only those
        // ends access it in this process.
        let region = unsafe { SharedRegion::from_raw(ring_map.as_ptr(), ring_map.size()) };
        let (producer, consumer) = ring::init(
            &region,
            RingParams {
                slot_size: slot,
                slots,
            },
        )?;

        // Memory.
        let (memory, runs) = if grant_mode {
            let max_grants = read_num(self.xs()?, &format!("{be}/{}", keys::MAX_GRANTS), u64::MAX)?;
            if opts.grant_pages as u64 > max_grants {
                return Err(XenBusError::Config(format!(
                    "grant pool of {} pages above the backend's max-grants {max_grants}",
                    opts.grant_pages
                )));
            }
            let pool = share_grant_pool(&gntalloc, self.backend_id, opts.grant_pages)?;
            (pool.memory, Some(pool.runs))
        } else {
            (platform.foreign_ram()?, None)
        };

        // The event channel, unbound for the backend to bind.
        let chans = Arc::new(platform.open_evtchn()?);
        let port = BoundPort::unbound(chans, self.backend_id)?;

        self.memory = Arc::new(memory);
        self.max_msg_size = max;
        self.transport_features = features;
        self.profile = profile;
        self.grant_mode = grant_mode;
        let port_no = port.port();
        self.conn = Some(FeConn {
            producer,
            consumer,
            _ring: ring_map,
            port,
            scratch: vec![0; slot as usize],
        });

        // Publish, atomically with the state change.
        let fe = self.fe_path.clone();
        self.xs()?
            .transaction(|tx| {
                let order_key = format!("{fe}/{}", keys::RING_PAGE_ORDER);
                if order > 0 {
                    tx.write(&order_key, order.to_string().as_bytes())?;
                } else {
                    match tx.rm(&order_key) {
                        Err(e) if !e.is_not_found() => return Err(e),
                        _ => {}
                    }
                }
                for (i, r) in ring_refs.iter().enumerate() {
                    tx.write(
                        &format!("{fe}/{}", ring_ref_key(order, i)),
                        r.to_string().as_bytes(),
                    )?;
                }
                tx.write(
                    &format!("{fe}/{}", keys::EVENT_CHANNEL),
                    port_no.to_string().as_bytes(),
                )?;
                tx.write(
                    &format!("{fe}/{}", keys::MAX_MSG_SIZE),
                    max.to_string().as_bytes(),
                )?;
                tx.write(&format!("{fe}/{}", keys::PROFILE), profile_s.as_bytes())?;
                if let Some(runs) = &runs {
                    tx.write(
                        &format!("{fe}/{}", keys::GRANTS),
                        runs.to_string().as_bytes(),
                    )?;
                }
                tx.write(
                    &format!("{fe}/{}", keys::STATE),
                    S::Initialised.raw().to_string().as_bytes(),
                )?;
                Ok(())
            })
            .map_err(XenBusError::xs(format!("publish {fe}")))?;

        self.wait_backend(
            "backend Connected",
            self.state_timeout,
            |s| s == S::Connected,
            |s| matches!(s, S::Closing | S::Closed),
        )?;
        self.set_state(S::Connected)
    }

    /// Something went wrong during the handshake: say why, say Closed,
    /// release everything.
    fn give_up(&mut self, e: &XenBusError) {
        let msg: String = e.to_string().chars().take(512).collect();
        let path = format!("{}/{}", self.fe_path, keys::ERROR);
        if let Ok(xs) = self.xs() {
            let _ = xs.write(&path, msg.as_bytes());
        }
        self.conn = None;
        let _ = self.set_state(XenbusState::Closed);
        self.unwatch();
    }

    fn unwatch(&mut self) {
        let be_state = format!("{}/{}", self.be_path, keys::STATE);
        if let Some(xs) = self.xs.as_mut() {
            if let Err(e) = xs.unwatch(&be_state, TOKEN_BE) {
                debug!("unwatch {be_state}: {e}");
            }
            while let Ok(Some(_)) = xs.try_next_event() {}
        }
    }

    fn do_close(&mut self) {
        if self.conn.is_none() {
            return;
        }
        use XenbusState as S;
        if self.set_state(S::Closing).is_ok() && !self.backend_gone {
            let wait = self.state_timeout.min(CLOSE_WAIT);
            if let Err(e) = self.wait_backend(
                "backend to let go",
                wait,
                |s| matches!(s, S::Closing | S::Closed | S::InitWait | S::Unknown),
                |_| false,
            ) {
                debug!("{}: {e}", self.fe_path);
            }
        }
        self.conn = None;
        let _ = self.set_state(S::Closed);
        self.unwatch();
        info!("{}: closed", self.fe_path);
    }

    /// Close the connection and hand back the xenstore connection.
    pub fn close(mut self) -> Result<XsClient<P::Xs>, XenBusError> {
        self.do_close();
        self.xs
            .take()
            .ok_or_else(|| XenBusError::Protocol("frontend closed".into()))
    }

    /// Whether driver addresses are grant DMA addresses (else guest
    /// physical).
    pub fn grant_mode(&self) -> bool {
        self.grant_mode
    }

    /// The backend directory.
    pub fn backend_path(&self) -> &str {
        &self.be_path
    }

    /// The local event channel port.
    pub fn local_port(&self) -> Option<u32> {
        self.conn.as_ref().map(|c| c.port.port())
    }

    /// Close our event channel port without telling anyone (fault
    /// injection: the peer's notifications go nowhere from now on).
    pub fn drop_event_channel(&mut self) -> Result<(), XenBusError> {
        if let Some(c) = self.conn.as_ref() {
            c.port.channels().unbind(c.port.port())?;
        }
        Ok(())
    }

    /// A connector for `vmsg_driver::conformance::run_suite`: a fresh
    /// connection on every call.
    pub fn connector(
        platform: P,
        opts: FrontendOptions,
    ) -> impl FnMut() -> Result<Box<dyn DriverBus>, XenBusError>
    where
        P: 'static,
    {
        move || Ok(Box::new(Self::connect(&platform, &opts)?) as Box<dyn DriverBus>)
    }

    fn check_backend(&mut self) -> Result<(), BusIoError> {
        let s = self.backend_state().map_err(backend_err)?;
        if s != XenbusState::Connected {
            debug!("{}: backend {s}", self.fe_path);
            self.backend_gone = true;
        }
        Ok(())
    }

    fn pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BusIoError> {
        if let Some(f) = self.stash.pop_front() {
            if f.len() > buf.len() {
                return Err(BusIoError::FrameTooLarge {
                    size: f.len(),
                    max: buf.len(),
                });
            }
            buf[..f.len()].copy_from_slice(&f);
            return Ok(Some(f.len()));
        }
        let Some(c) = self.conn.as_mut() else {
            return Err(BusIoError::Disconnected);
        };
        match c.consumer.try_pop(&mut c.scratch).map_err(ring_io)? {
            Some(n) if n <= buf.len() => {
                buf[..n].copy_from_slice(&c.scratch[..n]);
                Ok(Some(n))
            }
            Some(n) => Err(BusIoError::FrameTooLarge {
                size: n,
                max: buf.len(),
            }),
            None => Ok(None),
        }
    }

    /// Move what the backend sent into the stash (while our own ring is
    /// full, so that the backend is never blocked on us).
    fn stash_incoming(&mut self) -> Result<(), BusIoError> {
        let Some(c) = self.conn.as_mut() else {
            return Err(BusIoError::Disconnected);
        };
        while let Some(n) = c.consumer.try_pop(&mut c.scratch).map_err(ring_io)? {
            self.stash.push_back(c.scratch[..n].to_vec());
        }
        Ok(())
    }

    fn ack(&mut self) -> Result<(), BusIoError> {
        let Some(c) = self.conn.as_ref() else {
            return Err(BusIoError::Disconnected);
        };
        let mine = c.port.port();
        let mut ports = [0u32; 64];
        let mut seen = false;
        loop {
            let n = c.port.channels().read_pending(&mut ports).map_err(ev_io)?;
            if n == 0 {
                break;
            }
            seen |= ports[..n].contains(&mine);
        }
        if seen {
            c.port.unmask().map_err(ev_io)?;
        }
        Ok(())
    }
}

fn backend_err(e: XenBusError) -> BusIoError {
    BusIoError::Backend(Box::new(e))
}

fn ring_io(e: RingError) -> BusIoError {
    BusIoError::Backend(Box::new(XenBusError::Ring(e)))
}

fn ev_io(e: crate::evtchn::EvtchnError) -> BusIoError {
    BusIoError::Backend(Box::new(XenBusError::Evtchn(e)))
}

impl<P: FrontendPlatform> DriverBus for XenFrontend<P> {
    fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    fn profile(&self) -> DriverProfile {
        self.profile
    }

    fn transport_features(&self) -> u32 {
        self.transport_features
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), BusIoError> {
        if frame.len() > self.max_msg_size {
            return Err(BusIoError::FrameTooLarge {
                size: frame.len(),
                max: self.max_msg_size,
            });
        }
        if self.backend_gone {
            return Err(BusIoError::Disconnected);
        }
        let mut deadline = None;
        loop {
            let Some(c) = self.conn.as_mut() else {
                return Err(BusIoError::Disconnected);
            };
            match c.producer.try_push(frame) {
                Ok(kick) => {
                    if kick {
                        c.port.notify().map_err(ev_io)?;
                    }
                    return Ok(());
                }
                Err(RingError::Full) => {
                    let now = Instant::now();
                    let d = *deadline.get_or_insert_with(|| now + self.send_timeout);
                    let _ = c.port.notify();
                    self.stash_incoming()?;
                    if now >= d {
                        self.check_backend()?;
                        if self.backend_gone {
                            return Err(BusIoError::Disconnected);
                        }
                        return Err(BusIoError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "outgoing ring stayed full",
                        )));
                    }
                    std::thread::yield_now();
                }
                Err(RingError::TooLarge { len, max }) => {
                    return Err(BusIoError::FrameTooLarge { size: len, max });
                }
                Err(e) => return Err(ring_io(e)),
            }
        }
    }

    fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<usize>, BusIoError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(n) = self.pop(buf)? {
                return Ok(Some(n));
            }
            if self.backend_gone {
                return Err(BusIoError::Disconnected);
            }
            if self.xs.as_ref().is_some_and(|xs| xs.pending_events() > 0) {
                self.check_backend()?;
                continue;
            }
            let wait = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let (Some(c), Some(xs)) = (self.conn.as_ref(), self.xs.as_ref()) else {
                return Err(BusIoError::Disconnected);
            };
            let ev_fd = c.port.channels().poll_fd().as_raw_fd();
            let xs_fd = xs.as_fd().as_raw_fd();
            // SAFETY: both fds are owned by `self` (event channel handle and
            // xenstore client) and outlive the poll call.
            let (ev_fd, xs_fd) =
                unsafe { (BorrowedFd::borrow_raw(ev_fd), BorrowedFd::borrow_raw(xs_fd)) };
            let mut fds = [
                PollFd::new(ev_fd, PollFlags::POLLIN),
                PollFd::new(xs_fd, PollFlags::POLLIN),
            ];
            let ready = match poll(&mut fds, wait) {
                Ok(_) => fds.map(|f| f.revents().is_some_and(|r| !r.is_empty())),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(BusIoError::Io(e.into())),
            };
            if ready[0] {
                self.ack()?;
            }
            if ready[1] {
                // Deliver what is already queued before reporting the end.
                if let Some(n) = self.pop(buf)? {
                    return Ok(Some(n));
                }
                self.check_backend()?;
            }
        }
    }

    fn memory(&self) -> &Arc<GuestMemoryMmap<()>> {
        &self.memory
    }
}

impl<P: FrontendPlatform> Drop for XenFrontend<P> {
    fn drop(&mut self) {
        self.do_close();
        if let Some(home) = self.home.take() {
            *lock(&home) = self.xs.take();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
