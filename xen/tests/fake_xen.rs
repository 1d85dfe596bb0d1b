//! The fake hypervisor behind the real handle traits: event channels between
//! two fake domains, grants that really share memory, foreign mapping, and
//! each fault it injects.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vm_memory::MmapRegion;
use vmsg_xen::fake::FakeXen;
use vmsg_xen::gntalloc::GrantSharer;
use vmsg_xen::gntdev::{GntdevError, Grant, GrantMapper, GrantMapping};
use vmsg_xen::mapping::{MappedPages, UnmapNotify};
use vmsg_xen::privcmd::{ForeignMapper, PrivcmdError};
use vmsg_xen::{EventChannels, SharedGrants};

fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
}

fn peek(r: &MmapRegion<()>, off: usize) -> u8 {
    assert!(off < r.size());
    // SAFETY: `off` is inside the live mapping `r`.
    unsafe { r.as_ptr().add(off).read_volatile() }
}

fn poke(r: &MmapRegion<()>, off: usize, v: u8) {
    assert!(off < r.size());
    // SAFETY: `off` is inside the live, writable mapping `r`.
    unsafe { r.as_ptr().add(off).write_volatile(v) }
}

fn pending(ch: &impl EventChannels) -> Vec<u32> {
    let mut ports = [0u32; 16];
    let n = ch.read_pending(&mut ports).unwrap();
    ports[..n].to_vec()
}

#[test]
fn event_channel_between_two_domains() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let fe = domu.evtchn().unwrap();
    let be = xen.domain(0).evtchn().unwrap();

    let fe_port = fe.bind_unbound(0).unwrap();
    assert!(
        be.bind_interdomain(1, fe_port + 100).is_err(),
        "no such port"
    );
    let be_port = be.bind_interdomain(1, fe_port).unwrap();
    assert!(
        xen.domain(2)
            .evtchn()
            .unwrap()
            .bind_interdomain(1, fe_port)
            .is_err(),
        "already bound"
    );

    assert!(!readable(fe.poll_fd()));
    be.notify(be_port).unwrap();
    assert!(readable(fe.poll_fd()));
    assert_eq!(pending(&fe), [fe_port]);
    assert!(!readable(fe.poll_fd()), "read resets readiness");

    // Masked until unmasked; notifications meanwhile coalesce into one.
    be.notify(be_port).unwrap();
    be.notify(be_port).unwrap();
    assert!(!readable(fe.poll_fd()));
    fe.unmask(fe_port).unwrap();
    assert!(readable(fe.poll_fd()), "pending while masked re-fires");
    assert_eq!(pending(&fe), [fe_port]);
    fe.unmask(fe_port).unwrap();
    assert!(!readable(fe.poll_fd()));

    // The other direction.
    fe.notify(fe_port).unwrap();
    assert_eq!(pending(&be), [be_port]);

    // Only ports of the handle itself (port numbers are per domain).
    assert!(fe.notify(fe_port + 50).is_err());
    let other = domu.evtchn().unwrap();
    assert!(other.notify(fe_port).is_err());
    assert!(other.unbind(fe_port).is_err());
    drop(other);
    let stats = xen.stats();
    assert_eq!(stats.live_ports, 2);
    assert_eq!(stats.live_handles, 2);
}

#[test]
fn peer_closing_its_channel_drops_notifications_silently() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let fe = domu.evtchn().unwrap();
    let be = xen.domain(0).evtchn().unwrap();
    let fe_port = fe.bind_unbound(0).unwrap();
    let be_port = be.bind_interdomain(1, fe_port).unwrap();
    drop(fe);
    let before = xen.stats().notifies_dropped;
    be.notify(be_port).unwrap();
    assert_eq!(xen.stats().notifies_dropped, before + 1);
    assert!(pending(&be).is_empty());
    be.unbind(be_port).unwrap();
    assert_eq!(xen.stats().live_ports, 0);
}

#[test]
fn granted_pages_are_shared_memory() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let alloc = domu.gntalloc().alloc_grants(0, 4, true).unwrap();
    let grefs = alloc.grefs().to_vec();
    assert_eq!(grefs.len(), 4);
    let mine = alloc.map(0, 4).unwrap();
    poke(&mine, 4096 + 7, 0x5a);

    let grants: Vec<Grant> = grefs.iter().map(|&gref| Grant { domid: 1, gref }).collect();
    let theirs = xen
        .domain(0)
        .gntdev()
        .map_grants_region(&grants, true)
        .unwrap();
    assert_eq!(peek(&theirs, 4096 + 7), 0x5a);
    poke(&theirs, 3 * 4096, 0xa5);
    assert_eq!(peek(&mine, 3 * 4096), 0xa5);

    // A sub-range of the allocation maps the same pages.
    let sub = alloc.map(3, 1).unwrap();
    assert_eq!(peek(&sub, 0), 0xa5);
    assert!(alloc.map(3, 2).is_err(), "past the allocation");
    assert!(alloc.map(0, 0).is_err());

    // The handle-style API too.
    let m = xen
        .domain(0)
        .gntdev()
        .map_grants(&grants[1..2], false)
        .unwrap();
    assert_eq!(m.pages(), 1);
    assert_eq!(m.volatile_slice().offset(7).unwrap().len(), 4089);
    let shared = domu.gntalloc().share(0, 2, true).unwrap();
    assert_eq!(shared.grefs().len(), 2);
    assert_eq!(shared.domid(), 0);
}

#[test]
fn bad_foreign_and_revoked_grants_are_refused() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let _dom2 = xen.create_domain(2, 16).unwrap();
    let gntdev = xen.domain(0).gntdev();
    let ro = domu.gntalloc().alloc_grants(0, 1, false).unwrap();
    let to2 = domu.gntalloc().alloc_grants(2, 1, true).unwrap();
    let rw = domu.gntalloc().alloc_grants(0, 2, true).unwrap();
    let g = |gref| Grant { domid: 1, gref };

    let errno = |r: Result<vm_memory::MmapRegion<()>, GntdevError>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno(gntdev.map_grants_region(&[g(9999)], false)),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno(gntdev.map_grants_region(&[g(ro.grefs()[0])], true)),
        Some(libc::EPERM)
    );
    assert!(gntdev.map_grants_region(&[g(ro.grefs()[0])], false).is_ok());
    assert_eq!(
        errno(gntdev.map_grants_region(&[g(to2.grefs()[0])], false)),
        Some(libc::EPERM)
    );
    assert!(matches!(
        gntdev.map_grants_region(&[], false),
        Err(GntdevError::BadCount(0))
    ));
    // Grants of two allocations in one map: refused by the fake.
    assert_eq!(
        errno(gntdev.map_grants_region(&[g(ro.grefs()[0]), g(rw.grefs()[0])], false)),
        Some(libc::EINVAL)
    );

    // A mapping survives revocation; new maps fail.
    let live = gntdev.map_grants_region(&[g(rw.grefs()[0])], true).unwrap();
    xen.revoke_grant(1, rw.grefs()[0]).unwrap();
    assert_eq!(
        errno(gntdev.map_grants_region(&[g(rw.grefs()[0])], true)),
        Some(libc::EINVAL)
    );
    poke(&live, 0, 1);

    // Injected failures, then normal service.
    xen.fail_next_grant_maps(2);
    assert_eq!(
        errno(gntdev.map_grants_region(&[g(rw.grefs()[1])], true)),
        Some(libc::EFAULT)
    );
    assert_eq!(
        errno(gntdev.map_grants_region(&[g(rw.grefs()[1])], true)),
        Some(libc::EFAULT)
    );
    assert!(gntdev.map_grants_region(&[g(rw.grefs()[1])], true).is_ok());
    assert!(xen.stats().grant_map_failures >= 7);
}

#[test]
fn a_grant_ends_when_the_allocation_and_its_mappings_are_gone() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let gntdev = xen.domain(0).gntdev();
    let alloc = domu.gntalloc().alloc_grants(0, 1, true).unwrap();
    let grant = [Grant {
        domid: 1,
        gref: alloc.grefs()[0],
    }];
    let region = alloc.map(0, 1).unwrap();
    drop(alloc);
    // Still granted: the frontend maps it.
    let backend = gntdev.map_grants_region(&grant, true).unwrap();
    drop(region);
    // The backend's mapping keeps the page (and so the grant) alive.
    assert!(gntdev.map_grants_region(&grant, true).is_ok());
    drop(backend);
    assert!(gntdev.map_grants_region(&grant, true).is_err());
    assert_eq!(xen.stats().live_grants, 0);
}

#[test]
fn gref_gap_fragments_allocations() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    xen.set_gref_gap(2);
    let alloc = domu.gntalloc().alloc_grants(0, 5, true).unwrap();
    let g = alloc.grefs();
    assert_eq!(g[1], g[0] + 1);
    assert_eq!(g[2], g[1] + 2, "hole after every 2");
    assert_eq!(g[4], g[3] + 2);
}

#[test]
fn foreign_mapping_by_gfn() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let privcmd = xen.domain(0).privcmd();
    let map = privcmd.map_foreign_region(1, &[4, 5, 6], true).unwrap();
    poke(&map, 4096 + 3, 0x77);
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&*domu.ram_file().unwrap(), &mut b, 5 * 4096 + 3)
        .unwrap();
    assert_eq!(b[0], 0x77);

    // Outside RAM and injected failures are per-frame errors.
    xen.fail_foreign_frames(1, [6], libc::ENOENT);
    match privcmd.map_foreign_region(1, &[5, 6, 7], true) {
        Err(PrivcmdError::PartialMap {
            domid: 1,
            total: 3,
            failed,
        }) => {
            assert_eq!(failed.len(), 1);
            assert_eq!(
                (failed[0].index, failed[0].gfn, failed[0].errno),
                (1, 6, libc::ENOENT)
            );
        }
        other => panic!("{other:?}"),
    }
    match privcmd.map_foreign_region(1, &[15, 16], true) {
        Err(PrivcmdError::PartialMap { failed, .. }) => assert_eq!(failed[0].gfn, 16),
        other => panic!("{other:?}"),
    }
    xen.fail_foreign_frames(1, [6], 0);
    assert!(privcmd.map_foreign(1, &[5, 6, 7], false).is_ok());
    // Only dom0 may map foreign frames; only live domains can be mapped.
    assert_eq!(
        domu.privcmd()
            .map_foreign_region(1, &[1], false)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        privcmd
            .map_foreign_region(7, &[1], false)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ESRCH)
    );
}

#[test]
fn domain_death_closes_ports_ends_grants_and_keeps_mappings() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let mut xs = xen.domain(0).xenstore().unwrap();
    xs.watch_release_domain("rel").unwrap();
    assert_eq!(
        xs.next_event(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap()
            .token,
        "rel"
    );

    let fe = domu.evtchn().unwrap();
    let be = xen.domain(0).evtchn().unwrap();
    let be_port = be.bind_interdomain(1, fe.bind_unbound(0).unwrap()).unwrap();
    let alloc = domu.gntalloc().alloc_grants(0, 1, true).unwrap();
    let grant = [Grant {
        domid: 1,
        gref: alloc.grefs()[0],
    }];
    let mapped = xen
        .domain(0)
        .gntdev()
        .map_grants_region(&grant, true)
        .unwrap();
    let ram = xen
        .domain(0)
        .privcmd()
        .map_foreign_region(1, &[0], true)
        .unwrap();

    xen.destroy_domain(1);
    assert!(!domu.is_alive());
    assert_eq!(
        xs.next_event(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap()
            .token,
        "rel"
    );
    be.notify(be_port).unwrap();
    assert!(xen.stats().notifies_dropped >= 1);
    assert!(
        xen.domain(0)
            .gntdev()
            .map_grants_region(&grant, true)
            .is_err()
    );
    assert!(
        xen.domain(0)
            .privcmd()
            .map_foreign_region(1, &[0], true)
            .is_err()
    );
    // Mapped pages stay valid until unmapped.
    poke(&mapped, 0, 9);
    poke(&ram, 0, 9);
    assert!(domu.evtchn().unwrap().bind_unbound(0).is_err());
    drop(be);
    assert_eq!(xen.stats().live_ports, 0);
}

#[test]
fn unmap_notify_clears_a_byte_and_signals_the_peer() {
    let xen = FakeXen::new();
    let domu = xen.create_domain(1, 16).unwrap();
    let fe = domu.evtchn().unwrap();
    let be = xen.domain(0).evtchn().unwrap();
    let fe_port = fe.bind_unbound(0).unwrap();
    let be_port = be.bind_interdomain(1, fe_port).unwrap();
    let alloc = domu.gntalloc().alloc_grants(0, 1, true).unwrap();
    let mine = alloc.map(0, 1).unwrap();
    let grant = [Grant {
        domid: 1,
        gref: alloc.grefs()[0],
    }];
    let mut theirs = xen.domain(0).gntdev().map_grants(&grant, true).unwrap();
    poke(&mine, 10, 1);
    assert!(
        theirs
            .set_unmap_notify(UnmapNotify {
                clear_byte: Some(4096),
                send_event: None,
            })
            .is_err()
    );
    theirs
        .set_unmap_notify(UnmapNotify {
            clear_byte: Some(10),
            send_event: Some(be_port),
        })
        .unwrap();
    drop(theirs);
    assert_eq!(peek(&mine, 10), 0);
    assert!(readable(fe.poll_fd()));
}
