//! The dom0 side of the Xen bus: [`XenBackend`] (xenstore directories and
//! the XenbusState walk) and [`XenBus`] (one connection, a
//! `vmsg_backend::bus::Bus`).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vm_memory::MmapRegion;
use vmsg_backend::bus::{Bus, BusCounters, BusError};
use vmsg_backend::instance::{GuestInstance, ServeEnd, StopSignal};
use vmsg_backend::memory::GuestMemoryHandle;
use vmsg_backend::rate_limited;
use vmsg_backend::ratelog::LogLimiter;
use vmsg_proto::{Codec, Profile};
use vmsg_transport::ring::{self, Consumer, Producer, RingError, Role, SharedRegion};

use super::platform::BackendPlatform;
use super::{
    DEVICE_TYPE, MAX_RING_PAGE_ORDER, PROTOCOL_VERSION, XenBusError, XenbusState,
    dom0_backend_path, frontend_path, keys, parse_u64, profile_name, ring_ref_key,
};
use crate::evtchn::{BoundPort, EventChannels};
use crate::gntdev::{Grant, GrantMapper};
use crate::memory::{GrantCache, GrantCacheStats, GrantRuns, MAX_RUNS, map_foreign_ranges};
use crate::xenstore::{Access, Permissions, XsClient, XsErrno, XsError, XsOps};
use crate::{DomId, EvtchnPort};

const TOKEN_FE: &str = "vmsg-fe-state";
const TOKEN_ONLINE: &str = "vmsg-online";
const TOKEN_RELEASE: &str = "vmsg-release";
/// Rounds of event draining per control wake-up (see `still_wanted`).
const STILL_WANTED_ROUNDS: usize = 16;
/// Longest `error` text written to xenstore.
const MAX_ERROR_LEN: usize = 512;

/// How the backend reaches the guest's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryConfig {
    /// Driver addresses are grant DMA addresses of a pool the frontend
    /// announces; at most `max_grants` grants are mapped.
    Grant {
        /// The bound on the grant cache.
        max_grants: usize,
    },
    /// Driver addresses are guest-physical; these GFN runs of the guest's
    /// RAM are mapped (from configuration, never from the guest).
    Foreign {
        /// The RAM ranges.
        ranges: GrantRuns,
    },
}

/// Settings of one backend device directory.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Device id (the `<devid>` of the xenstore paths).
    pub devid: u32,
    /// Wire profile; must equal the serving instance's.
    pub profile: Profile,
    /// Largest message this side uses (the bus uses the minimum of both).
    pub max_msg_size: usize,
    /// Transport feature bits advertised.
    pub transport_features: u32,
    /// Memory mode.
    pub memory: MemoryConfig,
    /// Largest ring the backend maps: `2^order` pages.
    pub max_ring_page_order: u32,
    /// How long `send` retries a full ring before giving up.
    pub send_timeout: Duration,
    /// Device numbers published in `devices`.
    pub devices: Vec<u16>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            devid: 0,
            profile: Profile::V2,
            max_msg_size: 264,
            transport_features: 0,
            memory: MemoryConfig::Grant { max_grants: 4096 },
            max_ring_page_order: 4,
            send_timeout: Duration::from_millis(10),
            devices: Vec::new(),
        }
    }
}

impl BackendConfig {
    fn validate(&self) -> Result<(), XenBusError> {
        Codec::new(self.profile, self.max_msg_size)
            .map_err(|e| XenBusError::Config(format!("max_msg_size: {e}")))?;
        if self.max_ring_page_order > MAX_RING_PAGE_ORDER {
            return Err(XenBusError::Config(format!(
                "max_ring_page_order {} above {MAX_RING_PAGE_ORDER}",
                self.max_ring_page_order
            )));
        }
        match &self.memory {
            MemoryConfig::Grant { max_grants: 0 } => {
                Err(XenBusError::Config("max_grants must be at least 1".into()))
            }
            MemoryConfig::Foreign { ranges } if ranges.pages() == 0 => {
                Err(XenBusError::Config("foreign mode needs RAM ranges".into()))
            }
            _ => Ok(()),
        }
    }
}

/// What a backend did so far (all connections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Connections established.
    pub connects: u64,
    /// Connection attempts refused (bad keys, unmappable grants, …).
    pub failed_connects: u64,
    /// Connections torn down.
    pub disconnects: u64,
    /// Connections that ended with an instance error (corrupt ring, …).
    pub serve_errors: u64,
    /// The last refusal or error.
    pub last_error: Option<String>,
    /// Grant cache counters summed over connections.
    pub grants: GrantCacheStats,
}

#[derive(Debug, Default)]
struct SharedStats {
    connects: AtomicU64,
    failed_connects: AtomicU64,
    disconnects: AtomicU64,
    serve_errors: AtomicU64,
    rest: Mutex<(Option<String>, GrantCacheStats)>,
}

impl SharedStats {
    fn rest(&self) -> std::sync::MutexGuard<'_, (Option<String>, GrantCacheStats)> {
        self.rest.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> BackendStats {
        let rest = self.rest();
        BackendStats {
            connects: self.connects.load(Ordering::Relaxed),
            failed_connects: self.failed_connects.load(Ordering::Relaxed),
            disconnects: self.disconnects.load(Ordering::Relaxed),
            serve_errors: self.serve_errors.load(Ordering::Relaxed),
            last_error: rest.0.clone(),
            grants: rest.1,
        }
    }
}

/// A cloneable view of a backend's counters (for another thread).
#[derive(Debug, Clone)]
pub struct StatsHandle(Arc<SharedStats>);

impl StatsHandle {
    /// Counters now.
    pub fn get(&self) -> BackendStats {
        self.0.snapshot()
    }
}

/// What [`XenBackend::accept`] ended with.
#[derive(Debug)]
pub enum Accept<'a, P: BackendPlatform> {
    /// A frontend connected.
    Connected(Box<XenBus<'a, P>>),
    /// The stop signal fired.
    Stopped,
    /// The timeout passed.
    TimedOut,
    /// The guest domain is gone.
    DomainGone,
    /// The toolstack took the device away (`online` is not 1, or the
    /// backend directory vanished).
    Offline,
}

/// Why [`XenBackend::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The stop signal fired.
    Stopped,
    /// The guest domain died; its directories were removed.
    DomainGone,
    /// The device was taken offline.
    Offline,
}

#[derive(Debug, Default)]
struct Events {
    release: bool,
    overflow: bool,
}

/// The dom0 side of one device directory of one guest.
#[derive(Debug)]
pub struct XenBackend<P: BackendPlatform> {
    platform: P,
    xs: XsClient<P::Xs>,
    cfg: BackendConfig,
    domid: DomId,
    be_path: String,
    fe_path: String,
    state: XenbusState,
    gone: bool,
    dropped_seen: u64,
    stats: Arc<SharedStats>,
    /// Connects, refusals and disconnects (the guest's doing) are logged
    /// through this.
    log_limit: LogLimiter,
}

fn rm_if_exists<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<(), XsError> {
    match ops.rm(path) {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

fn truncate_error(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_ERROR_LEN).collect();
    // xenstore values are bytes, but keep them printable.
    out.retain(|c| !c.is_control());
    out
}

impl<P: BackendPlatform> XenBackend<P> {
    /// Create the backend and frontend directories of device `cfg.devid` of
    /// `domid` (replacing stale ones), with the permissions a toolstack
    /// gives them, register the watches and go to InitWait.
    pub fn provision(platform: P, domid: DomId, cfg: BackendConfig) -> Result<Self, XenBusError> {
        cfg.validate()?;
        let xs = platform.open_xenstore()?;
        let mut this = Self {
            platform,
            xs,
            be_path: dom0_backend_path(domid, cfg.devid),
            fe_path: frontend_path(domid, cfg.devid),
            cfg,
            domid,
            state: XenbusState::Initialising,
            gone: false,
            dropped_seen: 0,
            stats: Arc::default(),
            log_limit: LogLimiter::default(),
        };
        this.create_dirs()?;
        let fe_state = format!("{}/{}", this.fe_path, keys::STATE);
        let online = format!("{}/{}", this.be_path, keys::ONLINE);
        this.xs
            .watch(&fe_state, TOKEN_FE)
            .map_err(XenBusError::xs(format!("watch {fe_state}")))?;
        this.xs
            .watch(&online, TOKEN_ONLINE)
            .map_err(XenBusError::xs(format!("watch {online}")))?;
        this.xs
            .watch_release_domain(TOKEN_RELEASE)
            .map_err(XenBusError::xs("watch @releaseDomain"))?;
        this.set_state(XenbusState::InitWait)?;
        info!(
            "xen backend for domain {domid}: {} ({} memory)",
            this.be_path,
            this.memory_mode()
        );
        Ok(this)
    }

    fn memory_mode(&self) -> &'static str {
        match self.cfg.memory {
            MemoryConfig::Grant { .. } => "grant",
            MemoryConfig::Foreign { .. } => "foreign",
        }
    }

    fn backend_values(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            (keys::FRONTEND, self.fe_path.clone()),
            (keys::FRONTEND_ID, self.domid.to_string()),
            (keys::ONLINE, "1".into()),
            (keys::PROTOCOL_VERSION, PROTOCOL_VERSION.to_string()),
            (keys::PROFILE, profile_name(self.cfg.profile).into()),
            (keys::MAX_MSG_SIZE, self.cfg.max_msg_size.to_string()),
            (
                keys::TRANSPORT_FEATURES,
                self.cfg.transport_features.to_string(),
            ),
            (keys::MEMORY_MODE, self.memory_mode().into()),
            (
                keys::MAX_RING_PAGE_ORDER,
                self.cfg.max_ring_page_order.to_string(),
            ),
            (keys::DEVICES, devices_value(&self.cfg.devices)),
            (keys::STATE, XenbusState::Initialising.raw().to_string()),
        ];
        if let MemoryConfig::Grant { max_grants } = self.cfg.memory {
            v.push((keys::MAX_GRANTS, max_grants.to_string()));
        }
        v
    }

    fn create_dirs(&mut self) -> Result<(), XenBusError> {
        let domid = self.domid;
        let be = self.be_path.clone();
        let fe = self.fe_path.clone();
        let dev_dir = format!("/local/domain/{domid}/device/{DEVICE_TYPE}");
        // Backend: ours, readable by the guest. Frontend: the guest's (it
        // writes its keys there), readable by us. Both created by us: a
        // domU may not create nodes outside what it owns.
        let be_perms = Permissions::new(crate::DOMID_0, Access::None).with(domid, Access::Read);
        let fe_perms = Permissions::new(domid, Access::None).with(crate::DOMID_0, Access::Read);
        let values = self.backend_values();
        self.xs
            .transaction(|tx| {
                rm_if_exists(tx, &be)?;
                rm_if_exists(tx, &fe)?;
                tx.mkdir(&dev_dir)?;
                tx.set_perms(&dev_dir, &be_perms)?;
                tx.mkdir(&be)?;
                tx.set_perms(&be, &be_perms)?;
                for (k, v) in &values {
                    tx.write(&format!("{be}/{k}"), v.as_bytes())?;
                }
                tx.mkdir(&fe)?;
                tx.set_perms(&fe, &fe_perms)?;
                tx.write(&format!("{fe}/{}", keys::BACKEND), be.as_bytes())?;
                tx.write(&format!("{fe}/{}", keys::BACKEND_ID), b"0")?;
                tx.write(
                    &format!("{fe}/{}", keys::STATE),
                    XenbusState::Initialising.raw().to_string().as_bytes(),
                )?;
                Ok(())
            })
            .map_err(XenBusError::xs(format!("create {be} and {fe}")))
    }

    /// The guest domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The backend directory.
    pub fn backend_path(&self) -> &str {
        &self.be_path
    }

    /// The frontend directory.
    pub fn frontend_path(&self) -> &str {
        &self.fe_path
    }

    /// The state this side last published.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// Counters so far.
    pub fn stats(&self) -> BackendStats {
        self.stats.snapshot()
    }

    /// A handle on the counters, readable from another thread.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.stats.clone())
    }

    /// Publish the device numbers of this bus (`devices`). A device added
    /// while connected is announced in band with EVENT_DEVICE as well (by
    /// the instance serving the bus).
    pub fn set_devices(&mut self, devices: &[u16]) -> Result<(), XenBusError> {
        let path = format!("{}/{}", self.be_path, keys::DEVICES);
        self.cfg.devices = devices.to_vec();
        self.xs
            .write(&path, devices_value(devices).as_bytes())
            .map_err(XenBusError::xs(path))
    }

    fn set_state(&mut self, s: XenbusState) -> Result<(), XenBusError> {
        let path = format!("{}/{}", self.be_path, keys::STATE);
        self.xs
            .write(&path, s.raw().to_string().as_bytes())
            .map_err(XenBusError::xs(path))?;
        debug!("{}: backend {} -> {s}", self.be_path, self.state);
        self.state = s;
        Ok(())
    }

    /// Take every queued watch event; note what they say.
    fn drain_events(&mut self) -> Result<Events, XsError> {
        let mut ev = Events::default();
        while let Some(e) = self.xs.try_next_event()? {
            if e.token == TOKEN_RELEASE {
                ev.release = true;
            }
        }
        let dropped = self.xs.dropped_events();
        if dropped != self.dropped_seen {
            self.dropped_seen = dropped;
            ev.overflow = true;
        }
        Ok(ev)
    }

    fn domain_alive(&mut self) -> Result<bool, XsError> {
        self.xs.is_domain_introduced(self.domid)
    }

    fn read_opt(&mut self, dir_key: &str) -> Result<Option<String>, XsError> {
        Ok(self.xs.try_read(dir_key)?.map(|v| {
            String::from_utf8_lossy(&v)
                .trim_end_matches('\0')
                .to_owned()
        }))
    }

    fn fe_state(&mut self) -> Result<XenbusState, XsError> {
        let path = format!("{}/{}", self.fe_path, keys::STATE);
        Ok(match self.xs.try_read(&path) {
            Ok(Some(v)) => XenbusState::parse(&v),
            Ok(None) => XenbusState::Unknown,
            // Unreadable (permissions changed under us) counts as gone.
            Err(XsError::Remote(XsErrno::EACCES)) => XenbusState::Unknown,
            Err(e) => return Err(e),
        })
    }

    fn online(&mut self) -> Result<bool, XsError> {
        let path = format!("{}/{}", self.be_path, keys::ONLINE);
        Ok(self.read_opt(&path)?.as_deref() == Some("1"))
    }

    /// Whether the connection may go on: domain alive, online, frontend
    /// Initialised or Connected. Drains events first.
    fn still_wanted(&mut self) -> Result<bool, XsError> {
        // Each round reads the current state, so events queued meanwhile
        // are already reflected; rounds only repeat to catch a
        // @releaseDomain among them. A guest storming its own nodes cannot
        // keep us here: after the cap, check the domain directly.
        for _ in 0..STILL_WANTED_ROUNDS {
            let ev = self.drain_events()?;
            if (ev.release || ev.overflow) && !self.domain_alive()? {
                self.gone = true;
                return Ok(false);
            }
            if !self.online()? {
                return Ok(false);
            }
            let fe = self.fe_state()?;
            if !matches!(fe, XenbusState::Initialised | XenbusState::Connected) {
                debug!("{}: frontend {fe}: disconnecting", self.be_path);
                return Ok(false);
            }
            // Replies to the reads above may have queued more events; the
            // fd would not show them.
            if self.xs.pending_events() == 0 {
                return Ok(true);
            }
        }
        if !self.domain_alive()? {
            self.gone = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn refuse(&mut self, e: &XenBusError) -> Result<(), XenBusError> {
        let msg = truncate_error(&e.to_string());
        rate_limited!(
            self.log_limit,
            warn,
            "{}: refusing the frontend: {msg}",
            self.be_path
        );
        self.stats.failed_connects.fetch_add(1, Ordering::Relaxed);
        self.stats.rest().0 = Some(msg.clone());
        let path = format!("{}/{}", self.be_path, keys::ERROR);
        self.xs
            .write(&path, msg.as_bytes())
            .map_err(XenBusError::xs(path))?;
        self.set_state(XenbusState::Closing)
    }

    fn clear_error(&mut self) -> Result<(), XenBusError> {
        let path = format!("{}/{}", self.be_path, keys::ERROR);
        rm_if_exists(&mut self.xs, &path).map_err(XenBusError::xs(path))
    }

    /// Wait for a frontend and connect to it. Connection attempts that fail
    /// (bad keys, unmappable grants or frames, …) are refused in xenstore
    /// (`error`, state Closing) and waiting goes on. Returns when connected,
    /// or when `stop` fires, `timeout` passes, the domain dies or the device
    /// goes offline.
    pub fn accept(
        &mut self,
        stop: Option<&StopSignal>,
        timeout: Option<Duration>,
    ) -> Result<Accept<'_, P>, XenBusError> {
        use XenbusState as S;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.gone {
                return Ok(Accept::DomainGone);
            }
            let ev = self
                .drain_events()
                .map_err(XenBusError::xs("watch events"))?;
            if (ev.release || ev.overflow)
                && !self
                    .domain_alive()
                    .map_err(XenBusError::xs("is-domain-introduced"))?
            {
                self.gone = true;
                return Ok(Accept::DomainGone);
            }
            if !self.online().map_err(XenBusError::xs("online"))? {
                return Ok(Accept::Offline);
            }
            let fe = self.fe_state().map_err(XenBusError::xs("frontend state"))?;
            let next = match (self.state, fe) {
                (S::InitWait, S::Initialised | S::Connected) => {
                    match self.connect() {
                        Ok(conn) => {
                            self.set_state(S::Connected)?;
                            self.stats.connects.fetch_add(1, Ordering::Relaxed);
                            rate_limited!(self.log_limit, info, "{}: connected", self.be_path);
                            return Ok(Accept::Connected(Box::new(XenBus::new(self, conn))));
                        }
                        Err(e) => {
                            self.refuse(&e)?;
                        }
                    }
                    continue;
                }
                (_, S::Initialising) if self.state != S::InitWait => {
                    self.clear_error()?;
                    Some(S::InitWait)
                }
                (S::InitWait, S::Closing | S::Closed) => Some(S::Closed),
                (S::Connected, _) => Some(S::Closing),
                (S::Closing, S::Closing | S::Closed | S::Unknown) => Some(S::Closed),
                (S::Initialising | S::Unknown, _) => Some(S::InitWait),
                _ => None,
            };
            if let Some(s) = next {
                self.set_state(s)?;
                continue;
            }
            if self.xs.pending_events() > 0 {
                continue;
            }
            match wait_readable(self.xs.as_fd(), stop, deadline)? {
                Wake::Ready => {}
                Wake::Stop => return Ok(Accept::Stopped),
                Wake::Timeout => return Ok(Accept::TimedOut),
            }
        }
    }

    fn read_key(&mut self, key: &str) -> Result<String, XenBusError> {
        let path = format!("{}/{key}", self.fe_path);
        match self.read_opt(&path) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(XenBusError::Protocol(format!("frontend has no {key}"))),
            Err(e) => Err(XenBusError::xs(path)(e)),
        }
    }

    fn read_num(&mut self, key: &str, max: u64) -> Result<u64, XenBusError> {
        let v = self.read_key(key)?;
        parse_u64(&v).filter(|&n| n <= max).ok_or_else(|| {
            XenBusError::Protocol(format!(
                "{key} = {:?} is not a number in range",
                truncate_error(&v)
            ))
        })
    }

    /// Read the frontend's details, map its ring and memory, bind its event
    /// channel.
    fn connect(&mut self) -> Result<Conn<P>, XenBusError> {
        let order = match self
            .read_opt(&format!("{}/{}", self.fe_path, keys::RING_PAGE_ORDER))
            .map_err(XenBusError::xs("ring-page-order"))?
        {
            None => 0,
            Some(_) => self.read_num(
                keys::RING_PAGE_ORDER,
                u64::from(self.cfg.max_ring_page_order),
            )? as u32,
        };
        let pages = 1usize << order;
        let mut ring_grants = Vec::with_capacity(pages);
        for i in 0..pages {
            let gref = self.read_num(&ring_ref_key(order, i), u64::from(u32::MAX))? as u32;
            ring_grants.push(Grant {
                domid: self.domid,
                gref,
            });
        }
        let fe_port = self.read_num(keys::EVENT_CHANNEL, u64::from(u32::MAX))? as EvtchnPort;
        let fe_max = self.read_num(keys::MAX_MSG_SIZE, 65535)? as usize;
        if let Some(p) = self
            .read_opt(&format!("{}/{}", self.fe_path, keys::PROFILE))
            .map_err(XenBusError::xs("profile"))?
        {
            if p != profile_name(self.cfg.profile) {
                return Err(XenBusError::Protocol(format!(
                    "frontend wants profile {:?}, this bus serves {}",
                    truncate_error(&p),
                    profile_name(self.cfg.profile)
                )));
            }
        }
        let max = fe_max.min(self.cfg.max_msg_size);
        // The instance builds its own codec; refuse here what it would.
        Codec::new(self.cfg.profile, max)
            .map_err(|e| XenBusError::Protocol(format!("max-msg-size {fe_max}: {e}")))?;

        let gntdev = self.platform.gntdev()?;
        let ring = gntdev.map_grants_region(&ring_grants, true)?;
        // SAFETY: `ring` is a live shared mapping of `ring.size()` bytes that
        // `Conn` keeps (declared after the ring ends, so dropped after
        // them); only those ends access it in this process.
        let region = unsafe { SharedRegion::from_raw(ring.as_ptr(), ring.size()) };
        let (producer, consumer) = ring::attach(&region, Role::Device)?;
        let slot = producer.params().slot_size as usize;
        if slot < max {
            return Err(XenBusError::Protocol(format!(
                "ring slots of {slot} bytes below the message size {max}"
            )));
        }

        let (memory, cache) = match self.cfg.memory.clone() {
            MemoryConfig::Grant { max_grants } => {
                let runs = self.read_key(keys::GRANTS)?;
                let runs = GrantRuns::parse(&runs, MAX_RUNS, true)?;
                let mut cache = GrantCache::new(self.domid, max_grants, true);
                cache.map_runs(&gntdev, &runs)?;
                (cache.memory()?, Some(cache))
            }
            MemoryConfig::Foreign { ranges } => {
                let privcmd = self.platform.privcmd()?;
                (
                    map_foreign_ranges(&privcmd, self.domid, &ranges, true)?,
                    None,
                )
            }
        };
        let chans = Arc::new(self.platform.open_evtchn()?);
        let port = BoundPort::interdomain(chans, self.domid, fe_port)?;
        let conn = Conn {
            producer,
            consumer,
            _ring: ring,
            memory: Arc::new(memory),
            cache,
            port,
            scratch: vec![0; slot],
            max_msg_size: max,
        };
        Ok(conn)
    }

    /// Serve `instance` on connection after connection until the domain
    /// dies (its directories are then removed), the device goes offline or
    /// `stop` fires. A connection that fails (refused handshake, corrupt
    /// ring, full ring) is torn down and the next one awaited: nothing a
    /// guest does ends this loop except its own death.
    pub fn run(
        &mut self,
        instance: &mut GuestInstance,
        stop: &StopSignal,
    ) -> Result<RunEnd, XenBusError> {
        loop {
            let end = match self.accept(Some(stop), None)? {
                Accept::Connected(mut bus) => match instance.serve(&mut *bus, stop) {
                    Ok(ServeEnd::Stopped) => Some(RunEnd::Stopped),
                    Ok(ServeEnd::Disconnected) => None,
                    Err(e) => {
                        rate_limited!(
                            bus.backend.log_limit,
                            warn,
                            "{}: connection failed: {e}",
                            bus.backend.be_path
                        );
                        bus.fail(&e.to_string());
                        None
                    }
                },
                Accept::Stopped => Some(RunEnd::Stopped),
                Accept::DomainGone => Some(RunEnd::DomainGone),
                Accept::Offline => Some(RunEnd::Offline),
                Accept::TimedOut => None,
            };
            if self.xs.is_broken() {
                return Err(XenBusError::Xenstore {
                    what: "connection".into(),
                    source: XsError::Broken,
                });
            }
            match end {
                Some(RunEnd::DomainGone) => {
                    info!("{}: domain {} is gone", self.be_path, self.domid);
                    self.remove_dirs();
                    return Ok(RunEnd::DomainGone);
                }
                Some(end) => return Ok(end),
                None => {}
            }
        }
    }

    fn remove_dirs(&mut self) {
        for p in [self.fe_path.clone(), self.be_path.clone()] {
            if let Err(e) = rm_if_exists(&mut self.xs, &p) {
                debug!("removing {p}: {e}");
            }
        }
    }

    /// Remove both directories (toolstack-style device removal).
    pub fn remove(mut self) -> Result<(), XenBusError> {
        for p in [self.fe_path.clone(), self.be_path.clone()] {
            rm_if_exists(&mut self.xs, &p).map_err(XenBusError::xs(p))?;
        }
        Ok(())
    }
}

fn devices_value(devices: &[u16]) -> String {
    let mut d = devices.to_vec();
    d.sort_unstable();
    d.dedup();
    d.iter().map(u16::to_string).collect::<Vec<_>>().join(" ")
}

enum Wake {
    Ready,
    Stop,
    Timeout,
}

/// Wait until `fd` is readable, `stop` fires or `deadline` passes.
fn wait_readable(
    fd: BorrowedFd<'_>,
    stop: Option<&StopSignal>,
    deadline: Option<Instant>,
) -> Result<Wake, XenBusError> {
    loop {
        if stop.is_some_and(StopSignal::is_triggered) {
            return Ok(Wake::Stop);
        }
        let wait = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Wake::Timeout);
                }
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        // SAFETY: the stop signal's eventfd outlives this call.
        let stop_fd = stop.map(|s| unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) });
        let mut fds = vec![PollFd::new(fd, PollFlags::POLLIN)];
        if let Some(s) = stop_fd {
            fds.push(PollFd::new(s, PollFlags::POLLIN));
        }
        match poll(&mut fds, wait) {
            Ok(0) => {}
            Ok(_) => {
                let ready = fds[0].revents().is_some_and(|r| !r.is_empty());
                if ready {
                    return Ok(Wake::Ready);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(XenBusError::Os {
                    op: "poll",
                    source: e.into(),
                });
            }
        }
    }
}

/// The resources of one connection. The ring ends come before the ring
/// mapping: they point into it.
#[derive(Debug)]
struct Conn<P: BackendPlatform> {
    producer: Producer,
    consumer: Consumer,
    _ring: MmapRegion<()>,
    memory: GuestMemoryHandle,
    cache: Option<GrantCache>,
    port: BoundPort<P::Evtchn>,
    scratch: Vec<u8>,
    max_msg_size: usize,
}

/// One connected frontend: a `vmsg_backend::bus::Bus`.
///
/// Dropping it tears the connection down: the grant and ring mappings are
/// released (they stay mapped while a device still holds the memory; the
/// instance resets its devices before it lets go of the bus), the event
/// channel is unbound and the backend goes to Closing.
#[derive(Debug)]
pub struct XenBus<'a, P: BackendPlatform> {
    backend: &'a mut XenBackend<P>,
    conn: Option<Conn<P>>,
    max_msg_size: usize,
    transport_features: u32,
    send_timeout: Duration,
    oversized: u64,
    spinning: bool,
    counters: BusCounters,
}

impl<'a, P: BackendPlatform> XenBus<'a, P> {
    fn new(backend: &'a mut XenBackend<P>, conn: Conn<P>) -> Self {
        Self {
            max_msg_size: conn.max_msg_size,
            transport_features: backend.cfg.transport_features,
            send_timeout: backend.cfg.send_timeout,
            backend,
            conn: Some(conn),
            oversized: 0,
            spinning: false,
            counters: BusCounters::default(),
        }
    }

    /// The grant cache of this connection (grant mode).
    pub fn grant_cache(&self) -> Option<&GrantCache> {
        self.conn.as_ref().and_then(|c| c.cache.as_ref())
    }

    /// The local event channel port.
    pub fn local_port(&self) -> Option<EvtchnPort> {
        self.conn.as_ref().map(|c| c.port.port())
    }

    /// End this connection with an error the frontend can read.
    pub fn fail(&mut self, why: &str) {
        self.backend
            .stats
            .serve_errors
            .fetch_add(1, Ordering::Relaxed);
        let msg = truncate_error(why);
        self.backend.stats.rest().0 = Some(msg.clone());
        let path = format!("{}/{}", self.backend.be_path, keys::ERROR);
        if let Err(e) = self.backend.xs.write(&path, msg.as_bytes()) {
            debug!("{path}: {e}");
        }
    }

    fn conn(&mut self) -> Result<&mut Conn<P>, BusError> {
        self.conn.as_mut().ok_or(BusError::Disconnected)
    }

    fn pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(None);
        };
        loop {
            let got = if buf.len() >= c.consumer.max_frame() {
                c.consumer.try_pop(buf)?
            } else {
                match c.consumer.try_pop(&mut c.scratch)? {
                    Some(n) if n <= buf.len() => {
                        buf[..n].copy_from_slice(&c.scratch[..n]);
                        Some(n)
                    }
                    other => other,
                }
            };
            match got {
                Some(n) if n > c.max_msg_size || n > buf.len() => self.oversized += 1,
                other => return Ok(other),
            }
        }
    }
}

fn ring_err(e: RingError) -> BusError {
    match e {
        RingError::Corrupt(what) => BusError::RingCorrupt(what),
        _ => BusError::RingCorrupt("unexpected ring error"),
    }
}

fn xs_bus_err(e: XsError) -> BusError {
    BusError::Os {
        op: "xenstore",
        source: std::io::Error::other(e.to_string()),
    }
}

fn ev_bus_err(op: &'static str) -> impl FnOnce(crate::evtchn::EvtchnError) -> BusError {
    move |e| BusError::Os {
        op,
        source: std::io::Error::other(e.to_string()),
    }
}

impl<P: BackendPlatform> Bus for XenBus<'_, P> {
    fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    fn transport_features(&self) -> u32 {
        self.transport_features
    }

    fn doorbell_fd(&self) -> RawFd {
        self.conn
            .as_ref()
            .map_or(-1, |c| c.port.channels().poll_fd().as_raw_fd())
    }

    fn ack_doorbell(&mut self) -> Result<(), BusError> {
        let c = self.conn()?;
        let mine = c.port.port();
        let mut ports = [0u32; 64];
        let mut seen = 0u64;
        loop {
            let n = c
                .port
                .channels()
                .read_pending(&mut ports)
                .map_err(ev_bus_err("read pending ports"))?;
            if n == 0 {
                break;
            }
            seen += ports[..n].iter().filter(|&&p| p == mine).count() as u64;
        }
        if seen > 0 {
            c.port.unmask().map_err(ev_bus_err("unmask"))?;
        }
        self.counters.doorbells_in += seen;
        Ok(())
    }

    fn control_fd(&self) -> Option<RawFd> {
        Some(self.backend.xs.as_fd().as_raw_fd())
    }

    fn handle_control(&mut self) -> Result<(), BusError> {
        match self.backend.still_wanted() {
            Ok(true) => Ok(()),
            Ok(false) => Err(BusError::Disconnected),
            Err(e) => Err(xs_bus_err(e)),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BusError> {
        loop {
            match self.pop(buf).map_err(ring_err)? {
                Some(n) => {
                    let c = self.conn()?;
                    if !c.consumer.is_polling() {
                        c.consumer.set_polling(true);
                    }
                    self.counters.frames_in += 1;
                    return Ok(Some(n));
                }
                None => {
                    let spinning = self.spinning;
                    let c = self.conn()?;
                    if c.consumer.is_polling() && !spinning {
                        c.consumer.set_polling(false);
                    } else {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn set_spinning(&mut self, spinning: bool) {
        self.spinning = spinning;
        if let Some(c) = self.conn.as_mut() {
            if c.consumer.is_polling() != spinning {
                c.consumer.set_polling(spinning);
            }
        }
    }

    /// Mirror the instance's device numbers into `devices`, so the
    /// xenstore view follows hot-add and removal (docs/xen-bus.md §7).
    fn devices_changed(&mut self, devices: &[u16]) {
        if self.backend.cfg.devices == devices {
            return;
        }
        if let Err(e) = self.backend.set_devices(devices) {
            warn!("{}: publishing devices: {e}", self.backend.be_path);
        }
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), BusError> {
        if frame.len() > self.max_msg_size {
            return Err(BusError::FrameTooLarge {
                len: frame.len(),
                max: self.max_msg_size,
            });
        }
        let send_timeout = self.send_timeout;
        let c = self.conn()?;
        let mut deadline = None;
        loop {
            match c.producer.try_push(frame) {
                Ok(kick) => {
                    if kick {
                        c.port.notify().map_err(ev_bus_err("notify"))?;
                    }
                    self.counters.frames_out += 1;
                    return Ok(());
                }
                Err(RingError::Full) => {
                    let now = Instant::now();
                    let d = *deadline.get_or_insert_with(|| {
                        // Make sure a sleeping frontend wakes up to drain.
                        let _ = c.port.notify();
                        now + send_timeout
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
        self.conn
            .as_ref()
            .map_or_else(|| Arc::new(Default::default()), |c| c.memory.clone())
    }

    fn extra_counters(&self) -> Vec<(&'static str, u64)> {
        // This connection's grant cache plus the earlier connections'.
        let current = self
            .conn
            .as_ref()
            .and_then(|c| c.cache.as_ref())
            .map(GrantCache::stats)
            .unwrap_or_default();
        let (connects, failed, disconnects) = (
            self.backend.stats.connects.load(Ordering::Relaxed),
            self.backend.stats.failed_connects.load(Ordering::Relaxed),
            self.backend.stats.disconnects.load(Ordering::Relaxed),
        );
        let past = self.backend.stats.rest().1;
        vec![
            ("grant_map_ops", past.map_ops + current.map_ops),
            ("grants_mapped", past.grants_mapped + current.grants_mapped),
            ("grant_cache_hits", past.hits + current.hits),
            ("grant_cache_misses", past.misses + current.misses),
            ("grants_refused", past.refused + current.refused),
            ("grants_unmapped", past.unmapped + current.unmapped),
            ("connects", connects),
            ("refused_connects", failed),
            ("disconnects", disconnects),
        ]
    }

    fn counters(&self) -> BusCounters {
        let dropped = self.conn.as_ref().map_or(0, |c| c.consumer.dropped());
        BusCounters {
            bad_slots: self.counters.bad_slots + dropped + self.oversized,
            ..self.counters
        }
    }
}

impl<P: BackendPlatform> Drop for XenBus<'_, P> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if let Some(cache) = conn.cache.as_mut() {
                let mut rest = self.backend.stats.rest();
                let s = cache.stats();
                rest.1.map_ops += s.map_ops;
                rest.1.grants_mapped += s.grants_mapped;
                rest.1.hits += s.hits;
                rest.1.misses += s.misses;
                rest.1.refused += s.refused;
                rest.1.unmapped += s.grants_mapped;
                drop(rest);
                cache.clear();
            }
            // Ring ends, ring mapping, memory (once the devices let go) and
            // the event channel go here, before the state says so.
            drop(conn);
        }
        self.backend
            .stats
            .disconnects
            .fetch_add(1, Ordering::Relaxed);
        if !self.backend.gone {
            if let Err(e) = self.backend.set_state(XenbusState::Closing) {
                debug!("{}: {e}", self.backend.be_path);
            }
        }
        rate_limited!(
            self.backend.log_limit,
            info,
            "{}: disconnected",
            self.backend.be_path
        );
    }
}

// The backend and its bus are handed to a per-guest thread (on the fake
// Xen too: `crate::fake::platform` asserts the same for `FakeDomain`).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<XenBackend<super::XenHost>>();
};
