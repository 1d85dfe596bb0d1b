//! The fake domain's device handles, behind the same traits as the real
//! `/dev/xen/*` handles: [`FakeEvtchn`], [`FakeGntalloc`], [`FakeGntdev`],
//! [`FakePrivcmd`]. See [`super::hypervisor`] for the semantics.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use vm_memory::MmapRegion;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::hypervisor::{
    Backing, FakeDomain, FakeXen, GrantEntry, HandleState, PAGE, Port, Remote, new_memfd,
};
use crate::bindings::XEN_PAGE_SIZE;
use crate::evtchn::{EventChannels, EvtchnError};
use crate::gntalloc::{
    GntallocError, GrantAllocation, GrantSharer, MAX_PAGES_PER_SHARE, SharedGrants,
};
use crate::gntdev::{GntdevError, Grant, GrantMapper, GrantMapping, MAX_GRANTS_PER_MAP};
use crate::mapping::{MappedPages, UnmapNotify};
use crate::privcmd::{ForeignMapper, FrameError, MAX_FRAMES_PER_MAP, PrivcmdError};
use crate::sys::owned_region;
use crate::{DOMID_0, DomId, EvtchnPort, Gfn, GrantRef};

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn ev_ioctl(op: &'static str, e: i32) -> EvtchnError {
    EvtchnError::Ioctl {
        op,
        source: errno(e),
    }
}

impl FakeDomain {
    /// Open the event channel device (`/dev/xen/evtchn`) in this domain.
    pub fn evtchn(&self) -> io::Result<FakeEvtchn> {
        let efd = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let mut st = self.xen.inner.lock();
        let id = st.next_handle;
        st.next_handle += 1;
        st.handles.insert(
            id,
            HandleState {
                efd: efd.clone(),
                ring: Default::default(),
            },
        );
        Ok(FakeEvtchn {
            xen: self.xen.clone(),
            domid: self.domid,
            id,
            efd,
        })
    }

    /// The grant allocation device (`/dev/xen/gntalloc`) of this domain.
    pub fn gntalloc(&self) -> FakeGntalloc {
        FakeGntalloc { dom: self.clone() }
    }

    /// The grant mapping device (`/dev/xen/gntdev`) of this domain.
    pub fn gntdev(&self) -> FakeGntdev {
        FakeGntdev { dom: self.clone() }
    }

    /// The privcmd device of this domain (foreign maps work from dom0 only).
    pub fn privcmd(&self) -> FakePrivcmd {
        FakePrivcmd { dom: self.clone() }
    }
}

/// A fake `/dev/xen/evtchn` handle; closing it (drop) closes its ports.
#[derive(Debug)]
pub struct FakeEvtchn {
    xen: FakeXen,
    domid: DomId,
    id: u64,
    efd: Arc<EventFd>,
}

impl FakeEvtchn {
    /// Check that `port` is bound on this handle.
    fn own(
        &self,
        st: &super::hypervisor::State,
        port: EvtchnPort,
        op: &'static str,
    ) -> Result<(), EvtchnError> {
        match st.ports.get(&(self.domid, port)) {
            Some(p) if p.handle == self.id => Ok(()),
            _ => Err(ev_ioctl(op, libc::EINVAL)),
        }
    }

    fn bind(&self, op: &'static str, remote: Remote) -> Result<EvtchnPort, EvtchnError> {
        let mut st = self.xen.inner.lock();
        let port = st
            .alloc_port(self.domid)
            .ok_or_else(|| ev_ioctl(op, libc::ESRCH))?;
        st.ports.insert(
            (self.domid, port),
            Port {
                handle: self.id,
                remote,
                masked: false,
                pending: false,
            },
        );
        Ok(port)
    }
}

impl EventChannels for FakeEvtchn {
    fn bind_interdomain(
        &self,
        remote_domid: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, EvtchnError> {
        const OP: &str = "IOCTL_EVTCHN_BIND_INTERDOMAIN";
        {
            let st = self.xen.inner.lock();
            if st.domain(remote_domid).is_none() || st.domain(self.domid).is_none() {
                return Err(ev_ioctl(OP, libc::ESRCH));
            }
            match st.ports.get(&(remote_domid, remote_port)) {
                Some(p) if p.remote == Remote::Unbound(self.domid) => {}
                _ => return Err(ev_ioctl(OP, libc::EINVAL)),
            }
        }
        let port = self.bind(OP, Remote::Interdomain(remote_domid, remote_port))?;
        let mut st = self.xen.inner.lock();
        match st.ports.get_mut(&(remote_domid, remote_port)) {
            Some(p) if p.remote == Remote::Unbound(self.domid) => {
                p.remote = Remote::Interdomain(self.domid, port);
                Ok(port)
            }
            _ => {
                // Lost a race with another binder: undo.
                st.ports.remove(&(self.domid, port));
                Err(ev_ioctl(OP, libc::EINVAL))
            }
        }
    }

    fn bind_unbound(&self, remote_domid: DomId) -> Result<EvtchnPort, EvtchnError> {
        self.bind(
            "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
            Remote::Unbound(remote_domid),
        )
    }

    fn unbind(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let mut st = self.xen.inner.lock();
        self.own(&st, port, "IOCTL_EVTCHN_UNBIND")?;
        st.close_port(self.domid, port);
        Ok(())
    }

    fn notify(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let mut st = self.xen.inner.lock();
        self.own(&st, port, "IOCTL_EVTCHN_NOTIFY")?;
        st.notify(self.domid, port);
        Ok(())
    }

    fn read_pending(&self, ports: &mut [EvtchnPort]) -> Result<usize, EvtchnError> {
        let mut st = self.xen.inner.lock();
        let Some(h) = st.handles.get_mut(&self.id) else {
            return Ok(0);
        };
        let mut n = 0;
        while n < ports.len() {
            let Some(p) = h.ring.pop_front() else { break };
            ports[n] = p;
            n += 1;
        }
        if h.ring.is_empty() {
            // Reset the eventfd: readable again only when a port fires.
            let _ = h.efd.read();
        }
        Ok(n)
    }

    fn unmask(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let mut st = self.xen.inner.lock();
        let refire = match st.ports.get_mut(&(self.domid, port)) {
            Some(p) if p.handle == self.id => {
                p.masked = false;
                std::mem::take(&mut p.pending)
            }
            _ => {
                return Err(EvtchnError::Io {
                    op: "unmask",
                    source: errno(libc::EINVAL),
                });
            }
        };
        if refire {
            // The re-fire is the same event, not a new notification.
            st.stats.notifies = st.stats.notifies.saturating_sub(1);
            st.deliver(self.domid, port);
        }
        Ok(())
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self` (through the Arc) and lives
        // at least as long as the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.efd.as_raw_fd()) }
    }
}

impl Drop for FakeEvtchn {
    fn drop(&mut self) {
        let mut st = self.xen.inner.lock();
        let ports: Vec<EvtchnPort> = st
            .ports
            .iter()
            .filter(|(_, p)| p.handle == self.id)
            .map(|(&(_, port), _)| port)
            .collect();
        for p in ports {
            st.close_port(self.domid, p);
        }
        st.handles.remove(&self.id);
    }
}

/// A fake `/dev/xen/gntalloc` of one domain: every allocation is a fresh
/// memfd.
#[derive(Debug, Clone)]
pub struct FakeGntalloc {
    dom: FakeDomain,
}

fn ga_ioctl(e: i32) -> GntallocError {
    GntallocError::Ioctl {
        op: "IOCTL_GNTALLOC_ALLOC_GREF",
        source: errno(e),
    }
}

impl GrantSharer for FakeGntalloc {
    type Shared = FakeShared;

    fn share(
        &self,
        domid: DomId,
        pages: usize,
        writable: bool,
    ) -> Result<FakeShared, GntallocError> {
        let alloc = self.alloc_grants(domid, pages, writable)?;
        let region = alloc.map(0, pages)?;
        Ok(FakeShared {
            alloc,
            region,
            notify: Mutex::new(None),
            xen: self.dom.xen.clone(),
            owner: self.dom.domid,
        })
    }

    fn alloc_grants(
        &self,
        domid: DomId,
        pages: usize,
        writable: bool,
    ) -> Result<GrantAllocation, GntallocError> {
        if pages == 0 || pages > MAX_PAGES_PER_SHARE {
            return Err(GntallocError::BadCount(pages));
        }
        let file = new_memfd("fake-gntalloc", pages as u64).map_err(|e| GntallocError::Ioctl {
            op: "IOCTL_GNTALLOC_ALLOC_GREF",
            source: e,
        })?;
        let mut st = self.dom.xen.inner.lock();
        st.gc_grants();
        let grefs = st
            .alloc_grefs(self.dom.domid, pages)
            .ok_or_else(|| ga_ioctl(libc::ESRCH))?;
        let d = st
            .domain_mut(self.dom.domid)
            .ok_or_else(|| ga_ioctl(libc::ESRCH))?;
        for (i, &g) in grefs.iter().enumerate() {
            d.grants.insert(
                g,
                GrantEntry {
                    backing: Backing::Alloc(Arc::downgrade(&file), i as u64),
                    to: domid,
                    writable,
                    revoked: false,
                },
            );
        }
        Ok(GrantAllocation::new(grefs, domid, file, 0, None))
    }
}

/// Pages shared by [`FakeGntalloc::share`] (the handle-style API).
#[derive(Debug)]
pub struct FakeShared {
    alloc: GrantAllocation,
    region: MmapRegion<()>,
    notify: Mutex<Option<UnmapNotify>>,
    xen: FakeXen,
    owner: DomId,
}

// SAFETY: `region` is a live mapping of `alloc.pages()` pages owned by `self`;
// its address and length never change.
unsafe impl MappedPages for FakeShared {
    fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }
    fn len(&self) -> usize {
        self.region.size()
    }
}

impl SharedGrants for FakeShared {
    fn grefs(&self) -> &[GrantRef] {
        self.alloc.grefs()
    }
    fn domid(&self) -> DomId {
        self.alloc.domid()
    }
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), GntallocError> {
        let len = self.len();
        if notify.clear_byte.is_some_and(|b| b >= len) {
            return Err(GntallocError::NotifyOutOfRange {
                offset: notify.clear_byte.unwrap_or(0),
                len,
            });
        }
        *self.notify.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(notify);
        Ok(())
    }
}

impl Drop for FakeShared {
    fn drop(&mut self) {
        let notify = self
            .notify
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        run_unmap_notify(notify, &self.region, &self.xen, self.owner);
    }
}

fn run_unmap_notify(
    notify: Option<UnmapNotify>,
    region: &MmapRegion<()>,
    xen: &FakeXen,
    owner: DomId,
) {
    let Some(n) = notify else { return };
    if let Some(b) = n.clear_byte.filter(|&b| b < region.size()) {
        // SAFETY: `b` is inside the live mapping `region`.
        unsafe { region.as_ptr().add(b).write_volatile(0) };
    }
    if let Some(port) = n.send_event {
        xen.inner.lock().notify(owner, port);
    }
}

/// A fake `/dev/xen/gntdev` of one domain.
#[derive(Debug, Clone)]
pub struct FakeGntdev {
    dom: FakeDomain,
}

fn gd_mmap(pages: usize, e: i32) -> GntdevError {
    GntdevError::Mmap {
        pages,
        source: errno(e),
    }
}

impl FakeGntdev {
    /// Resolve `grants` to one backing file range, as the hypervisor checks
    /// them at map time.
    fn resolve(&self, grants: &[Grant], writable: bool) -> Result<(Arc<File>, u64), GntdevError> {
        let pages = grants.len();
        if pages == 0 || pages > MAX_GRANTS_PER_MAP {
            return Err(GntdevError::BadCount(pages));
        }
        let mut st = self.dom.xen.inner.lock();
        if st.faults.fail_grant_maps > 0 {
            st.faults.fail_grant_maps -= 1;
            st.stats.grant_map_failures += 1;
            return Err(gd_mmap(pages, libc::EFAULT));
        }
        let mut first: Option<(Arc<File>, u64)> = None;
        for (i, g) in grants.iter().enumerate() {
            let resolved = st.domain(g.domid).and_then(|d| {
                let e = d.grants.get(&g.gref)?;
                Some((e, d))
            });
            let Some((e, d)) = resolved else {
                st.stats.grant_map_failures += 1;
                return Err(gd_mmap(pages, libc::EINVAL));
            };
            if e.to != self.dom.domid || (writable && !e.writable) {
                st.stats.grant_map_failures += 1;
                return Err(gd_mmap(pages, libc::EPERM));
            }
            let backing = match &e.backing {
                _ if e.revoked => None,
                Backing::Ram(gfn) => d.ram.clone().map(|f| (f, *gfn)),
                Backing::Alloc(w, page) => w.upgrade().map(|f| (f, *page)),
            };
            let Some((file, page)) = backing else {
                st.stats.grant_map_failures += 1;
                return Err(gd_mmap(pages, libc::EINVAL));
            };
            match &first {
                None => first = Some((file, page)),
                Some((f0, p0)) => {
                    if !Arc::ptr_eq(f0, &file) || *p0 + i as u64 != page {
                        log::debug!(
                            "fake gntdev: grants of one map are not one contiguous allocation"
                        );
                        st.stats.grant_map_failures += 1;
                        return Err(gd_mmap(pages, libc::EINVAL));
                    }
                }
            }
        }
        st.stats.grant_maps += 1;
        st.stats.grants_mapped += pages as u64;
        first.ok_or(GntdevError::BadCount(0))
    }
}

impl GrantMapper for FakeGntdev {
    type Mapping = FakeMapping;

    fn map_grants(&self, grants: &[Grant], writable: bool) -> Result<FakeMapping, GntdevError> {
        let region = self.map_grants_region(grants, writable)?;
        Ok(FakeMapping {
            region,
            notify: None,
            xen: self.dom.xen.clone(),
            owner: self.dom.domid,
        })
    }

    fn map_grants_region(
        &self,
        grants: &[Grant],
        writable: bool,
    ) -> Result<MmapRegion<()>, GntdevError> {
        let (file, page) = self.resolve(grants, writable)?;
        let pages = grants.len();
        owned_region(&file, page * PAGE, pages * XEN_PAGE_SIZE, writable)
            .map_err(|source| GntdevError::Mmap { pages, source })
    }
}

/// A grant mapping made by [`FakeGntdev::map_grants`] (the handle-style API).
#[derive(Debug)]
pub struct FakeMapping {
    region: MmapRegion<()>,
    notify: Option<UnmapNotify>,
    xen: FakeXen,
    owner: DomId,
}

// SAFETY: `region` is a live mapping owned by `self`; its address and length
// never change.
unsafe impl MappedPages for FakeMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }
    fn len(&self) -> usize {
        self.region.size()
    }
}

impl GrantMapping for FakeMapping {
    fn set_unmap_notify(&mut self, notify: UnmapNotify) -> Result<(), GntdevError> {
        let len = self.len();
        if notify.clear_byte.is_some_and(|b| b >= len) {
            return Err(GntdevError::NotifyOutOfRange {
                offset: notify.clear_byte.unwrap_or(0),
                len,
            });
        }
        self.notify = Some(notify);
        Ok(())
    }
}

impl Drop for FakeMapping {
    fn drop(&mut self) {
        run_unmap_notify(self.notify.take(), &self.region, &self.xen, self.owner);
    }
}

/// A fake `/dev/xen/privcmd` of one domain.
#[derive(Debug, Clone)]
pub struct FakePrivcmd {
    dom: FakeDomain,
}

fn pc_ioctl(e: i32) -> PrivcmdError {
    PrivcmdError::Ioctl {
        op: "IOCTL_PRIVCMD_MMAPBATCH_V2",
        source: errno(e),
    }
}

impl ForeignMapper for FakePrivcmd {
    type Mapping = FakeForeignMapping;

    fn map_foreign(
        &self,
        domid: DomId,
        gfns: &[Gfn],
        writable: bool,
    ) -> Result<FakeForeignMapping, PrivcmdError> {
        Ok(FakeForeignMapping {
            region: self.map_foreign_region(domid, gfns, writable)?,
        })
    }

    fn map_foreign_region(
        &self,
        domid: DomId,
        gfns: &[Gfn],
        writable: bool,
    ) -> Result<MmapRegion<()>, PrivcmdError> {
        let pages = gfns.len();
        if pages == 0 || pages > MAX_FRAMES_PER_MAP {
            return Err(PrivcmdError::BadCount(pages));
        }
        let (file, first) = {
            let mut st = self.dom.xen.inner.lock();
            if self.dom.domid != DOMID_0 {
                return Err(pc_ioctl(libc::EPERM));
            }
            let Some(d) = st.domain(domid) else {
                return Err(pc_ioctl(libc::ESRCH));
            };
            let ram_pages = d.ram_pages;
            let Some(file) = d.ram.clone() else {
                return Err(pc_ioctl(libc::ESRCH));
            };
            let failed: Vec<FrameError> = gfns
                .iter()
                .enumerate()
                .filter_map(|(index, &gfn)| {
                    let errno = if gfn >= ram_pages {
                        libc::EINVAL
                    } else {
                        *st.faults.foreign.get(&(domid, gfn))?
                    };
                    Some(FrameError { index, gfn, errno })
                })
                .collect();
            if !failed.is_empty() {
                return Err(PrivcmdError::PartialMap {
                    domid,
                    total: pages,
                    failed,
                });
            }
            let first = gfns[0];
            if gfns.iter().enumerate().any(|(i, &g)| g != first + i as u64) {
                log::debug!("fake privcmd: frames of one map are not contiguous");
                return Err(pc_ioctl(libc::EINVAL));
            }
            st.stats.foreign_maps += 1;
            st.stats.frames_mapped += pages as u64;
            (file, first)
        };
        owned_region(&file, first * PAGE, pages * XEN_PAGE_SIZE, writable)
            .map_err(|source| PrivcmdError::Mmap { pages, source })
    }
}

/// A foreign mapping made by [`FakePrivcmd::map_foreign`].
#[derive(Debug)]
pub struct FakeForeignMapping {
    region: MmapRegion<()>,
}

// SAFETY: `region` is a live mapping owned by `self`; its address and length
// never change.
unsafe impl MappedPages for FakeForeignMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }
    fn len(&self) -> usize {
        self.region.size()
    }
}
