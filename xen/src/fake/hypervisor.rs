//! A fake Xen hypervisor: domains with memfd RAM, a grant table, event
//! channels and the fake xenstored, shared by the fake handles of every fake
//! domain ([`FakeDomain`]).
//!
//! It models what the Xen bus relies on, with Xen's and Linux's semantics:
//!
//! - **RAM**: each domain's RAM is one memfd; GFN `n` is page `n` of it.
//!   Foreign mapping (privcmd, dom0 only) maps it by GFN.
//! - **Grants**: `gntalloc` in a domain allocates fresh pages (a memfd per
//!   allocation, zeroed like kernel pages) and grants them to a peer,
//!   `gntdev` in the peer maps them by `(domid, gref)` from the same memfd —
//!   real shared memory. A grant made with `gntalloc` stays valid while the
//!   allocation or any mapping of it lives (the fake holds only a weak
//!   reference to the backing file, as Linux ties the grant to the VMAs).
//!   A mapping outlives the grant's revocation and the granting domain's
//!   death (Xen keeps a dying domain's mapped pages until they are
//!   unmapped). New maps of revoked, ended or foreign grants fail.
//! - **Event channels**: ports per domain, unbound or interdomain; a port
//!   that fires is masked until unmasked, further notifications meanwhile
//!   leave it pending (Linux `/dev/xen/evtchn`); each handle's pollable fd
//!   is an eventfd, readable while it has ports to report. Closing one end
//!   makes the other end unbound, and notifications on it are dropped
//!   silently, as Xen does.
//! - **Domain death** ([`FakeXen::destroy_domain`]): ports closed, grant
//!   table gone, RAM released once unmapped, `@releaseDomain` fired.
//!
//! Fault injection: [`FakeXen::revoke_grant`], [`FakeXen::fail_next_grant_maps`],
//! [`FakeXen::fail_foreign_frames`], [`FakeXen::set_gref_gap`] (non-contiguous
//! grant references), peer closing its event channel (drop its handle or
//! port), domain death, plus the fake xenstored's own
//! ([`FakeXenstored::fail_next_commits`], [`FakeXenstored::watch_storm`]).
//!
//! Limitation of the fake: one grant mapping (or foreign mapping) must cover
//! consecutive pages of one backing file, because it is made with a single
//! `mmap` so that the mapping is owned by one `vm-memory` region. Real
//! gntdev maps any list of grants; the fake refuses a list spanning two
//! allocations with `EINVAL`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use super::xenstored::{FakeError, FakeXenstored};
use crate::{DOMID_0, DomId, EvtchnPort, Gfn, GrantRef};

/// Xen's page size.
pub(crate) const PAGE: u64 = 4096;
/// The first grant reference handed out (Linux reserves the first 8).
const FIRST_GREF: GrantRef = 8;

/// Errors of the fake's setup API.
#[derive(Debug, Error)]
pub enum FakeXenError {
    /// A domain with this id exists already.
    #[error("fake xen: domain {0} exists")]
    DomainExists(DomId),
    /// No live domain with this id.
    #[error("fake xen: no domain {0}")]
    NoSuchDomain(DomId),
    /// No such grant in the domain's grant table.
    #[error("fake xen: domain {0} has no grant {1}")]
    NoSuchGrant(DomId, GrantRef),
    /// The frame is outside the domain's RAM.
    #[error("fake xen: gfn {1:#x} outside the RAM of domain {0}")]
    BadGfn(DomId, Gfn),
    /// The fake xenstored refused.
    #[error(transparent)]
    Xenstore(#[from] FakeError),
    /// Creating RAM or an eventfd failed.
    #[error("fake xen: {0}")]
    Io(#[from] io::Error),
}

/// Counters of the fake, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeXenStats {
    /// Successful gntdev map operations.
    pub grant_maps: u64,
    /// Grants mapped by them (pages).
    pub grants_mapped: u64,
    /// gntdev map operations refused.
    pub grant_map_failures: u64,
    /// Successful privcmd foreign map operations.
    pub foreign_maps: u64,
    /// Frames mapped by them.
    pub frames_mapped: u64,
    /// Notifications delivered to a peer port.
    pub notifies: u64,
    /// Notifications dropped (unbound port, peer closed, dead domain).
    pub notifies_dropped: u64,
    /// Event channel ports currently bound.
    pub live_ports: usize,
    /// Event channel handles currently open.
    pub live_handles: usize,
    /// Grants currently usable (entry present and backing alive).
    pub live_grants: usize,
}

#[derive(Debug)]
pub(super) enum Backing {
    /// Page `n` of the domain's RAM.
    Ram(Gfn),
    /// Page `n` of a gntalloc allocation's memfd (weak: the grant ends when
    /// the allocation and every mapping of it are gone).
    Alloc(Weak<File>, u64),
}

#[derive(Debug)]
pub(super) struct GrantEntry {
    pub(super) backing: Backing,
    pub(super) to: DomId,
    pub(super) writable: bool,
    pub(super) revoked: bool,
}

#[derive(Debug)]
pub(super) struct Domain {
    pub(super) alive: bool,
    pub(super) ram: Option<Arc<File>>,
    pub(super) ram_pages: u64,
    pub(super) grants: HashMap<GrantRef, GrantEntry>,
    pub(super) next_gref: GrantRef,
    pub(super) next_port: EvtchnPort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Remote {
    /// Allocated for this domain to bind.
    Unbound(DomId),
    /// Connected to the peer's port.
    Interdomain(DomId, EvtchnPort),
}

#[derive(Debug)]
pub(super) struct Port {
    pub(super) handle: u64,
    pub(super) remote: Remote,
    /// Fired and not yet unmasked.
    pub(super) masked: bool,
    /// Fired again while masked.
    pub(super) pending: bool,
}

#[derive(Debug)]
pub(super) struct HandleState {
    pub(super) efd: Arc<EventFd>,
    /// Ports fired and not yet read.
    pub(super) ring: VecDeque<EvtchnPort>,
}

#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) fail_grant_maps: u32,
    pub(super) foreign: HashMap<(DomId, Gfn), i32>,
    pub(super) gref_gap: u32,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) domains: BTreeMap<DomId, Domain>,
    pub(super) handles: HashMap<u64, HandleState>,
    pub(super) ports: HashMap<(DomId, EvtchnPort), Port>,
    pub(super) next_handle: u64,
    pub(super) faults: Faults,
    pub(super) stats: FakeXenStats,
    /// Eventfds to write once the lock is released.
    signals: Vec<Arc<EventFd>>,
}

impl State {
    pub(super) fn domain(&self, domid: DomId) -> Option<&Domain> {
        self.domains.get(&domid).filter(|d| d.alive)
    }

    pub(super) fn domain_mut(&mut self, domid: DomId) -> Option<&mut Domain> {
        self.domains.get_mut(&domid).filter(|d| d.alive)
    }

    /// Fire `port` of `domid` (its handle reports it unless masked).
    pub(super) fn deliver(&mut self, domid: DomId, port: EvtchnPort) {
        let Some(p) = self.ports.get_mut(&(domid, port)) else {
            self.stats.notifies_dropped += 1;
            return;
        };
        self.stats.notifies += 1;
        if p.masked {
            p.pending = true;
            return;
        }
        p.masked = true;
        let handle = p.handle;
        if let Some(h) = self.handles.get_mut(&handle) {
            h.ring.push_back(port);
            // Signalled once the lock is released (`Guard::drop`), so the
            // woken reader does not run into the lock we still hold.
            let efd = h.efd.clone();
            self.signals.push(efd);
        }
    }

    /// Send on `port` of `domid` to its peer.
    pub(super) fn notify(&mut self, domid: DomId, port: EvtchnPort) {
        match self.ports.get(&(domid, port)).map(|p| p.remote) {
            Some(Remote::Interdomain(rd, rp)) if self.domain(rd).is_some() => self.deliver(rd, rp),
            // Xen drops a send on an unbound port silently.
            _ => self.stats.notifies_dropped += 1,
        }
    }

    /// Close `port` of `domid`; an interdomain peer becomes unbound.
    pub(super) fn close_port(&mut self, domid: DomId, port: EvtchnPort) -> Option<Port> {
        let p = self.ports.remove(&(domid, port))?;
        if let Remote::Interdomain(rd, rp) = p.remote {
            if let Some(peer) = self.ports.get_mut(&(rd, rp)) {
                peer.remote = Remote::Unbound(domid);
            }
        }
        if let Some(h) = self.handles.get_mut(&p.handle) {
            h.ring.retain(|&q| q != port);
            if h.ring.is_empty() {
                let _ = h.efd.read();
            }
        }
        Some(p)
    }

    /// Allocate a port number in `domid`.
    pub(super) fn alloc_port(&mut self, domid: DomId) -> Option<EvtchnPort> {
        let d = self.domain_mut(domid)?;
        let port = d.next_port;
        d.next_port = d.next_port.checked_add(1)?;
        Some(port)
    }

    /// Allocate `n` grant references in `domid`, honouring the gap fault.
    pub(super) fn alloc_grefs(&mut self, domid: DomId, n: usize) -> Option<Vec<GrantRef>> {
        let gap = self.faults.gref_gap;
        let d = self.domain_mut(domid)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if gap > 0 && i > 0 && i % gap as usize == 0 {
                d.next_gref = d.next_gref.checked_add(1)?;
            }
            out.push(d.next_gref);
            d.next_gref = d.next_gref.checked_add(1)?;
        }
        Some(out)
    }

    /// Forget grant entries whose backing allocation is gone.
    pub(super) fn gc_grants(&mut self) {
        for d in self.domains.values_mut() {
            d.grants.retain(|_, e| match &e.backing {
                Backing::Alloc(w, _) => w.strong_count() > 0,
                Backing::Ram(_) => true,
            });
        }
    }

    fn snapshot(&mut self) -> FakeXenStats {
        self.gc_grants();
        FakeXenStats {
            live_ports: self.ports.len(),
            live_handles: self.handles.len(),
            live_grants: self
                .domains
                .values()
                .filter(|d| d.alive)
                .map(|d| d.grants.len())
                .sum(),
            ..self.stats
        }
    }
}

#[derive(Debug)]
pub(super) struct Inner {
    state: Mutex<State>,
    pub(super) xenstored: FakeXenstored,
}

impl Inner {
    pub(super) fn lock(&self) -> Guard<'_> {
        // A panicking test thread must not take the fake down for the others.
        Guard(Some(self.state.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

/// The state lock; pending doorbells are rung after it is released. A
/// reader may then find an eventfd readable with nothing pending (it just
/// took the port): a spurious wake-up, which doorbell users tolerate.
pub(super) struct Guard<'a>(Option<MutexGuard<'a, State>>);

impl std::ops::Deref for Guard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        // Only `None` inside `drop`.
        self.0.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let signals = self
            .0
            .as_mut()
            .map(|g| std::mem::take(&mut g.signals))
            .unwrap_or_default();
        drop(self.0.take());
        for efd in signals {
            // Overflow would need 2^64 - 1 unread signals.
            let _ = efd.write(1);
        }
    }
}

/// The fake hypervisor (cheap to clone: all clones are the same machine).
#[derive(Debug, Clone)]
pub struct FakeXen {
    pub(super) inner: Arc<Inner>,
}

impl Default for FakeXen {
    fn default() -> Self {
        Self::new()
    }
}

fn memfd(name: &str, bytes: u64) -> io::Result<Arc<File>> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(io::Error::from)?;
    let file = File::from(fd);
    file.set_len(bytes)?;
    Ok(Arc::new(file))
}

pub(super) fn new_memfd(name: &str, pages: u64) -> io::Result<Arc<File>> {
    memfd(name, pages.saturating_mul(PAGE))
}

impl FakeXen {
    /// A machine with dom0 (no RAM of its own: it only maps others') and a
    /// fresh fake xenstored.
    pub fn new() -> Self {
        let mut state = State::default();
        state.domains.insert(
            DOMID_0,
            Domain {
                alive: true,
                ram: None,
                ram_pages: 0,
                grants: HashMap::new(),
                next_gref: FIRST_GREF,
                next_port: 1,
            },
        );
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                xenstored: FakeXenstored::new(),
            }),
        }
    }

    /// The fake xenstored of this machine.
    pub fn xenstored(&self) -> &FakeXenstored {
        &self.inner.xenstored
    }

    /// Create domain `domid` with `ram_pages` pages of RAM (a sparse memfd)
    /// and its xenstore home (as libxl does), and fire `@introduceDomain`.
    pub fn create_domain(&self, domid: DomId, ram_pages: u64) -> Result<FakeDomain, FakeXenError> {
        {
            let mut st = self.inner.lock();
            if st.domains.get(&domid).is_some_and(|d| d.alive) {
                return Err(FakeXenError::DomainExists(domid));
            }
            let ram = if ram_pages > 0 {
                Some(new_memfd(&format!("fake-dom{domid}-ram"), ram_pages)?)
            } else {
                None
            };
            st.domains.insert(
                domid,
                Domain {
                    alive: true,
                    ram,
                    ram_pages,
                    grants: HashMap::new(),
                    next_gref: FIRST_GREF,
                    next_port: 1,
                },
            );
        }
        self.inner.xenstored.add_domain(domid)?;
        Ok(self.domain(domid))
    }

    /// Handles of `domid` (existing or not: operations of a missing or dead
    /// domain fail as Xen fails them).
    pub fn domain(&self, domid: DomId) -> FakeDomain {
        FakeDomain {
            xen: self.clone(),
            domid,
        }
    }

    /// Kill `domid`: its ports close (peers become unbound), its grant table
    /// goes (existing mappings stay valid until unmapped), its RAM is
    /// released once nobody maps it, and `@releaseDomain` fires.
    pub fn destroy_domain(&self, domid: DomId) {
        {
            let mut st = self.inner.lock();
            let ports: Vec<EvtchnPort> = st
                .ports
                .keys()
                .filter(|(d, _)| *d == domid)
                .map(|&(_, p)| p)
                .collect();
            for p in ports {
                st.close_port(domid, p);
            }
            if let Some(d) = st.domains.get_mut(&domid) {
                d.alive = false;
                d.ram = None;
                d.grants.clear();
            }
            st.faults.foreign.retain(|(d, _), _| *d != domid);
        }
        self.inner.xenstored.release_domain(domid);
    }

    /// Revoke grant `gref` of `domid`: further maps fail; existing mappings
    /// keep working (Xen cannot take a mapped page back).
    pub fn revoke_grant(&self, domid: DomId, gref: GrantRef) -> Result<(), FakeXenError> {
        let mut st = self.inner.lock();
        let d = st
            .domain_mut(domid)
            .ok_or(FakeXenError::NoSuchDomain(domid))?;
        let e = d
            .grants
            .get_mut(&gref)
            .ok_or(FakeXenError::NoSuchGrant(domid, gref))?;
        e.revoked = true;
        Ok(())
    }

    /// The next `n` grant map operations (any domain) fail as if the
    /// hypervisor refused the grants.
    pub fn fail_next_grant_maps(&self, n: u32) {
        self.inner.lock().faults.fail_grant_maps = n;
    }

    /// Foreign maps of these frames of `domid` fail with `errno` (positive),
    /// reported per frame as privcmd does; `errno == 0` clears the fault.
    pub fn fail_foreign_frames(
        &self,
        domid: DomId,
        gfns: impl IntoIterator<Item = Gfn>,
        errno: i32,
    ) {
        let mut st = self.inner.lock();
        for g in gfns {
            if errno == 0 {
                st.faults.foreign.remove(&(domid, g));
            } else {
                st.faults.foreign.insert((domid, g), errno);
            }
        }
    }

    /// Leave a hole in the grant references after every `every` references
    /// of one allocation (0: contiguous), so that grant runs are fragmented.
    pub fn set_gref_gap(&self, every: u32) {
        self.inner.lock().faults.gref_gap = every;
    }

    /// Counters so far.
    pub fn stats(&self) -> FakeXenStats {
        self.inner.lock().snapshot()
    }
}

/// One fake domain: a factory of the handles a process in it opens.
#[derive(Debug, Clone)]
pub struct FakeDomain {
    pub(super) xen: FakeXen,
    pub(super) domid: DomId,
}

impl FakeDomain {
    /// The domain id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The machine.
    pub fn xen(&self) -> &FakeXen {
        &self.xen
    }

    /// Whether the domain is alive.
    pub fn is_alive(&self) -> bool {
        self.xen.inner.lock().domain(self.domid).is_some()
    }

    /// Pages of RAM.
    pub fn ram_pages(&self) -> u64 {
        self.xen
            .inner
            .lock()
            .domain(self.domid)
            .map_or(0, |d| d.ram_pages)
    }

    /// The domain's RAM file (what its kernel sees as physical memory).
    pub fn ram_file(&self) -> Result<Arc<File>, FakeXenError> {
        self.xen
            .inner
            .lock()
            .domain(self.domid)
            .and_then(|d| d.ram.clone())
            .ok_or(FakeXenError::NoSuchDomain(self.domid))
    }

    /// Grant `to` access to RAM frame `gfn`, as a kernel driver
    /// (`gnttab_grant_foreign_access`) does; returns the reference.
    pub fn grant_ram(&self, gfn: Gfn, to: DomId, writable: bool) -> Result<GrantRef, FakeXenError> {
        let mut st = self.xen.inner.lock();
        let pages = st
            .domain(self.domid)
            .ok_or(FakeXenError::NoSuchDomain(self.domid))?
            .ram_pages;
        if gfn >= pages {
            return Err(FakeXenError::BadGfn(self.domid, gfn));
        }
        let gref = st
            .alloc_grefs(self.domid, 1)
            .and_then(|v| v.first().copied())
            .ok_or(FakeXenError::NoSuchDomain(self.domid))?;
        if let Some(d) = st.domain_mut(self.domid) {
            d.grants.insert(
                gref,
                GrantEntry {
                    backing: Backing::Ram(gfn),
                    to,
                    writable,
                    revoked: false,
                },
            );
        }
        Ok(gref)
    }

    /// A xenstore connection as this domain.
    pub fn xenstore(
        &self,
    ) -> Result<crate::xenstore::XsClient<std::os::unix::net::UnixStream>, FakeXenError> {
        Ok(crate::xenstore::XsClient::new(
            self.xen.inner.xenstored.connect(self.domid)?,
        ))
    }
}
