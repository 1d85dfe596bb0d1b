//! The xenstore client against the fake xenstored, over real Unix sockets:
//! node operations, permissions as real Xen enforces them, watches,
//! transactions, fault injection and malformed replies.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use vmsg_xen::fake::{FakeXenstored, ReplyFault};
use vmsg_xen::xenstore::client::XsError;
use vmsg_xen::xenstore::{Access, MsgType, Permissions, WatchEvent, XsClient, XsErrno, XsOps};

type Client = XsClient<UnixStream>;

fn client(fake: &FakeXenstored, domid: u16) -> Client {
    XsClient::new(fake.connect(domid).unwrap())
}

fn errno<T: std::fmt::Debug>(r: Result<T, XsError>) -> XsErrno {
    match r {
        Err(XsError::Remote(e)) => e,
        other => panic!("expected a xenstore error, got {other:?}"),
    }
}

fn ev(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

/// Long enough never to expire on a loaded machine; waits end at the event.
const SHORT: Option<Duration> = Some(Duration::from_secs(10));

/// Everything the daemon sent this client so far: a round trip first (its
/// reply queues behind any event already sent), then take what is queued.
/// Deterministic, no timing involved.
fn drain(xs: &mut Client) -> Vec<WatchEvent> {
    // Any reply will do, an error one included (a domU may not read "/").
    let _ = xs.read("/");
    let mut out = Vec::new();
    while let Some(e) = xs.try_next_event().unwrap() {
        out.push(e);
    }
    out
}

// ---------------------------------------------------------------- basics

#[test]
fn write_read_directory_rm() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.write("/vmsg/a/b", b"1").unwrap();
    xs.write("/vmsg/a/c", b"22").unwrap();
    assert_eq!(xs.read("/vmsg/a/b").unwrap(), b"1");
    assert_eq!(xs.read_string("/vmsg/a/c").unwrap(), "22");
    assert_eq!(
        xs.read("/vmsg/a").unwrap(),
        b"",
        "intermediate nodes are created empty"
    );
    let mut dir = xs.directory("/vmsg/a").unwrap();
    dir.sort();
    assert_eq!(dir, ["b", "c"]);
    xs.rm("/vmsg/a").unwrap();
    assert!(xs.read("/vmsg/a/b").unwrap_err().is_not_found());
    assert_eq!(xs.directory("/vmsg").unwrap(), Vec::<String>::new());
    assert!(!xs.exists("/vmsg/a").unwrap());
    assert_eq!(xs.try_read("/vmsg/a").unwrap(), None);
}

#[test]
fn values_are_binary() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    let v = [0u8, 1, 0, 255, b'x'];
    xs.write("/bin", &v).unwrap();
    assert_eq!(xs.read("/bin").unwrap(), v);
    assert!(matches!(
        xs.read_string("/bin"),
        Err(XsError::MalformedReply(_))
    ));
    xs.write("/empty", b"").unwrap();
    assert_eq!(xs.read("/empty").unwrap(), b"");
}

#[test]
fn mkdir_and_rm_edge_cases() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.write("/d", b"keep").unwrap();
    xs.mkdir("/d").unwrap();
    assert_eq!(
        xs.read("/d").unwrap(),
        b"keep",
        "mkdir leaves an existing node alone"
    );
    xs.rm("/d/missing").unwrap();
    assert_eq!(
        errno(xs.rm("/nope/missing")),
        XsErrno::ENOENT,
        "parent missing too"
    );
    assert_eq!(errno(xs.rm("/")), XsErrno::EINVAL);
}

#[test]
fn client_rejects_bad_arguments_before_sending() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    for bad in ["/a/", "/a//b", "/a b", ""] {
        assert!(
            matches!(xs.read(bad), Err(XsError::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        xs.watch("/a", "t\0"),
        Err(XsError::InvalidArgument(_))
    ));
    let big = vec![b'x'; 4096];
    assert!(
        matches!(xs.write("/big", &big), Err(XsError::InvalidArgument(_))),
        "path + value > 4096"
    );
    xs.write("/big", &big[..4096 - "/big\0".len()]).unwrap();
    assert!(!xs.is_broken());
    assert_eq!(
        fake.stats().requests,
        1,
        "only the valid write reached the daemon"
    );
}

#[test]
fn server_validates_what_the_client_lets_through() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    assert_eq!(
        errno(xs.raw_request(MsgType::Read, 0, b"/a//b\0")),
        XsErrno::EINVAL
    );
    assert_eq!(
        errno(xs.raw_request(MsgType::Read, 0, b"/a\0/b\0")),
        XsErrno::EINVAL,
        "two args"
    );
    assert_eq!(
        errno(xs.raw_request(MsgType::Write, 0, b"/novalue")),
        XsErrno::EINVAL,
        "no NUL"
    );
    assert_eq!(
        errno(xs.raw_request(MsgType::Read, 99, b"/\0")),
        XsErrno::ENOENT,
        "unknown tx"
    );
    assert_eq!(
        errno(xs.raw_request(MsgType::WatchEvent, 0, b"")),
        XsErrno::ENOSYS
    );
    assert_eq!(
        errno(xs.raw_request(MsgType::Introduce, 0, b"")),
        XsErrno::ENOSYS
    );
    assert_eq!(
        errno(xs.raw_request(MsgType::SetPerms, 0, b"/tool\0")),
        XsErrno::EINVAL,
        "no perms"
    );
    assert_eq!(
        errno(xs.raw_request(MsgType::SetPerms, 0, b"/tool\0q5\0")),
        XsErrno::EINVAL
    );
    assert!(!xs.is_broken(), "error replies leave the stream usable");
    xs.write("/ok", b"1").unwrap();
}

#[test]
fn oversized_request_makes_the_daemon_drop_the_client() {
    use std::io::Write;
    let fake = FakeXenstored::new();
    let mut raw = fake.connect(0).unwrap();
    let header = vmsg_xen::xenstore::wire::encode_header(MsgType::Read.raw(), 1, 0, 5000);
    raw.write_all(&header).unwrap();
    let mut xs = XsClient::new(raw);
    assert!(matches!(xs.read("/"), Err(XsError::Connection(_))));
    assert!(xs.is_broken());
}

#[test]
fn domain_path_and_introduction() {
    let fake = FakeXenstored::new();
    fake.add_domain(4).unwrap();
    let mut xs = client(&fake, 0);
    assert_eq!(xs.get_domain_path(4).unwrap(), "/local/domain/4");
    assert!(xs.is_domain_introduced(4).unwrap());
    assert!(!xs.is_domain_introduced(5).unwrap());
    fake.release_domain(4);
    assert!(!xs.is_domain_introduced(4).unwrap());
    let mut domu = client(&fake, 4);
    assert_eq!(domu.get_domain_path(4).unwrap(), "/local/domain/4");
    assert_eq!(
        errno(domu.is_domain_introduced(4)),
        XsErrno::EACCES,
        "privileged only"
    );
}

#[test]
fn large_directories_are_listed_in_parts() {
    let fake = FakeXenstored::new();
    for i in 0..600 {
        fake.mkdir(&format!("/big/child-number-{i:04}")).unwrap();
    }
    let mut xs = client(&fake, 0);
    assert_eq!(
        errno(xs.raw_request(MsgType::Directory, 0, b"/big\0")),
        XsErrno::E2BIG
    );
    let mut list = xs.directory("/big").unwrap();
    list.sort();
    let want: Vec<String> = (0..600).map(|i| format!("child-number-{i:04}")).collect();
    assert_eq!(list, want);
}

// ---------------------------------------------------------- permissions

#[test]
fn permissions_round_trip() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.write("/p", b"").unwrap();
    assert_eq!(
        xs.get_perms("/p").unwrap(),
        Permissions::new(0, Access::None),
        "inherited from /"
    );
    let p = Permissions::new(5, Access::Read).with(6, Access::Both);
    xs.set_perms("/p", &p).unwrap();
    assert_eq!(xs.get_perms("/p").unwrap(), p);
    xs.write("/p/child", b"").unwrap();
    assert_eq!(
        xs.get_perms("/p/child").unwrap(),
        p,
        "dom0 creations inherit as is"
    );
}

#[test]
fn domu_may_write_only_where_permitted() {
    // shared/reference/testbeds.md: on real Xen a domU writing
    // /local/domain/<id>/foo got EACCES; data/ is its own.
    let fake = FakeXenstored::new();
    fake.add_domain(7).unwrap();
    let mut domu = client(&fake, 7);
    assert_eq!(
        errno(domu.write("/local/domain/7/foo", b"x")),
        XsErrno::EACCES
    );
    assert_eq!(
        errno(domu.write("foo", b"x")),
        XsErrno::EACCES,
        "relative path, same node"
    );
    domu.write("/local/domain/7/data/foo", b"x").unwrap();
    domu.write("data/bar/baz", b"y").unwrap();
    assert_eq!(fake.read("/local/domain/7/data/bar/baz").unwrap(), b"y");
    assert_eq!(
        fake.get_perms("/local/domain/7/data/bar").unwrap(),
        Permissions::new(7, Access::None),
        "created by the domU: owned by it"
    );
    assert_eq!(
        domu.read_string("name").unwrap(),
        "domU-7",
        "its home is readable"
    );
    assert_eq!(
        errno(domu.write("/local/domain/7/name", b"evil")),
        XsErrno::EACCES
    );
    assert_eq!(errno(domu.rm("/local/domain/7/name")), XsErrno::EACCES);
    assert_eq!(errno(domu.mkdir("/tool/x")), XsErrno::EACCES);
}

#[test]
fn domu_cannot_see_other_domains_and_learns_nothing_from_errors() {
    let fake = FakeXenstored::new();
    fake.add_domain(7).unwrap();
    fake.add_domain(8).unwrap();
    fake.write("/local/domain/8/data/secret", b"s").unwrap();
    let mut domu = client(&fake, 7);
    assert_eq!(
        errno(domu.read("/local/domain/8/data/secret")),
        XsErrno::EACCES
    );
    // Missing node under an unreadable parent: EACCES, not ENOENT.
    assert_eq!(
        errno(domu.read("/local/domain/8/data/missing")),
        XsErrno::EACCES
    );
    // Missing node under a readable parent: ENOENT.
    assert_eq!(
        errno(domu.read("/local/domain/7/data/missing")),
        XsErrno::ENOENT
    );
    assert_eq!(errno(domu.directory("/local/domain")), XsErrno::EACCES);
    assert_eq!(errno(domu.get_perms("/local/domain/8")), XsErrno::EACCES);
}

#[test]
fn only_owners_set_permissions_and_domus_cannot_give_nodes_away() {
    let fake = FakeXenstored::new();
    fake.add_domain(7).unwrap();
    fake.add_domain(8).unwrap();
    let mut domu = client(&fake, 7);
    domu.write("data/shared", b"v").unwrap();
    // Granting read to another domain: allowed, owner unchanged.
    domu.set_perms(
        "data/shared",
        &Permissions::new(7, Access::None).with(8, Access::Read),
    )
    .unwrap();
    let mut other = client(&fake, 8);
    assert_eq!(other.read("/local/domain/7/data/shared").unwrap(), b"v");
    assert_eq!(
        errno(other.write("/local/domain/7/data/shared", b"w")),
        XsErrno::EACCES
    );
    assert_eq!(
        errno(domu.set_perms("data/shared", &Permissions::new(8, Access::None))),
        XsErrno::EPERM,
        "changing the owner"
    );
    assert_eq!(
        errno(other.set_perms(
            "/local/domain/7/data/shared",
            &Permissions::new(8, Access::Both)
        )),
        XsErrno::EACCES,
        "not the owner"
    );
    assert_eq!(
        errno(domu.set_perms("name", &Permissions::new(0, Access::Both))),
        XsErrno::EACCES
    );
}

#[test]
fn split_driver_directories_created_by_dom0() {
    // The toolstack-side pattern the Xen bus will use: dom0 creates the
    // backend and frontend directories; the frontend may write its own,
    // read the backend's, and nothing else.
    let fake = FakeXenstored::new();
    fake.add_domain(3).unwrap();
    let mut dom0 = client(&fake, 0);
    let be = "/local/domain/0/backend/vmsg/3/0";
    let fe = "/local/domain/3/device/vmsg/0";
    dom0.transaction(|tx| {
        tx.mkdir(be)?;
        tx.set_perms(be, &Permissions::new(0, Access::None).with(3, Access::Read))?;
        tx.write(&format!("{be}/frontend"), fe.as_bytes())?;
        tx.write(&format!("{be}/state"), b"1")?;
        tx.mkdir(fe)?;
        tx.set_perms(fe, &Permissions::new(3, Access::None).with(0, Access::Read))?;
        tx.write(&format!("{fe}/backend"), be.as_bytes())?;
        tx.write(&format!("{fe}/state"), b"1")?;
        Ok(())
    })
    .unwrap();
    let mut domu = client(&fake, 3);
    domu.write("device/vmsg/0/ring-ref", b"8").unwrap();
    domu.write("device/vmsg/0/event-channel", b"5").unwrap();
    domu.write("device/vmsg/0/state", b"3").unwrap();
    assert_eq!(domu.read_string(&format!("{be}/state")).unwrap(), "1");
    assert_eq!(
        errno(domu.write(&format!("{be}/state",), b"4")),
        XsErrno::EACCES
    );
    assert_eq!(dom0.read_string(&format!("{fe}/ring-ref")).unwrap(), "8");
    assert_eq!(
        fake.get_perms(&format!("{fe}/ring-ref")).unwrap().owner(),
        3
    );
}

// --------------------------------------------------------------- watches

#[test]
fn watch_fires_initially_and_on_the_subtree_only() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.watch("/w/a", "tok").unwrap();
    assert_eq!(
        xs.next_event(SHORT).unwrap(),
        Some(ev("/w/a", "tok")),
        "initial event"
    );
    let mut writer = client(&fake, 0);
    writer.write("/w/a", b"1").unwrap();
    writer.write("/w/a/deep/er", b"2").unwrap();
    writer.write("/w/ab", b"sibling").unwrap();
    writer.write("/w", b"parent").unwrap();
    let got = drain(&mut xs);
    assert_eq!(got, [ev("/w/a", "tok"), ev("/w/a/deep/er", "tok")]);
}

#[test]
fn events_interleaved_with_replies_are_queued() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.watch("/q", "mine").unwrap();
    // Our own writes fire before their replies arrive: the client must
    // match the replies and keep the events.
    for i in 0..5 {
        xs.write(&format!("/q/{i}"), b"v").unwrap();
    }
    assert_eq!(xs.pending_events(), 6);
    let got: Vec<_> = std::iter::from_fn(|| xs.try_next_event().unwrap()).collect();
    let want: Vec<_> = std::iter::once(ev("/q", "mine"))
        .chain((0..5).map(|i| ev(&format!("/q/{i}"), "mine")))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        xs.next_event(Some(Duration::from_millis(50))).unwrap(),
        None,
        "timeout"
    );
}

#[test]
fn unwatch_and_duplicates() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.watch("/u", "t").unwrap();
    assert_eq!(errno(xs.watch("/u", "t")), XsErrno::EEXIST);
    xs.watch("/u", "t2").unwrap();
    xs.unwatch("/u", "t").unwrap();
    assert_eq!(errno(xs.unwatch("/u", "t")), XsErrno::ENOENT);
    drain(&mut xs);
    fake.write("/u", b"x").unwrap();
    assert_eq!(drain(&mut xs), [ev("/u", "t2")]);
    xs.reset_watches().unwrap();
    fake.write("/u", b"y").unwrap();
    assert_eq!(drain(&mut xs), []);
}

#[test]
fn rm_fires_on_ancestors_and_on_watched_descendants() {
    let fake = FakeXenstored::new();
    fake.write("/r/a/b/c", b"").unwrap();
    fake.write("/r/a/x", b"").unwrap();
    let mut xs = client(&fake, 0);
    xs.watch("/r", "top").unwrap();
    xs.watch("/r/a/b/c", "leaf").unwrap();
    xs.watch("/r/a/b/c/none", "absent").unwrap();
    drain(&mut xs);
    fake.rm("/r/a").unwrap();
    let mut got = drain(&mut xs);
    got.sort_by(|a, b| (&a.token, &a.path).cmp(&(&b.token, &b.path)));
    assert_eq!(got, [ev("/r/a/b/c", "leaf"), ev("/r/a", "top")]);
}

#[test]
fn set_perms_fires_and_watchers_losing_access_still_hear_it() {
    let fake = FakeXenstored::new();
    fake.add_domain(5).unwrap();
    fake.write("/local/domain/5/data/n", b"").unwrap();
    let mut domu = client(&fake, 5);
    domu.watch("data/n", "n").unwrap();
    drain(&mut domu);
    fake.set_perms("/local/domain/5/data/n", &Permissions::new(0, Access::None))
        .unwrap();
    assert_eq!(drain(&mut domu), [ev("data/n", "n")]);
    fake.write("/local/domain/5/data/n", b"hidden").unwrap();
    assert_eq!(
        drain(&mut domu),
        [ev("data/n", "n")],
        "the parent is still readable"
    );
}

#[test]
fn events_respect_read_permission() {
    let fake = FakeXenstored::new();
    fake.add_domain(5).unwrap();
    fake.add_domain(6).unwrap();
    let mut domu = client(&fake, 5);
    domu.watch("/local/domain", "all").unwrap();
    drain(&mut domu);
    fake.write("/local/domain/6/data/secret", b"x").unwrap();
    fake.write("/local/domain/5/data/mine", b"y").unwrap();
    assert_eq!(drain(&mut domu), [ev("/local/domain/5/data/mine", "all")]);
}

#[test]
fn relative_watches_report_relative_paths() {
    let fake = FakeXenstored::new();
    fake.add_domain(9).unwrap();
    let mut domu = client(&fake, 9);
    domu.watch("data", "rel").unwrap();
    assert_eq!(domu.next_event(SHORT).unwrap(), Some(ev("data", "rel")));
    fake.write("/local/domain/9/data/k", b"v").unwrap();
    assert_eq!(drain(&mut domu), [ev("data/k", "rel")]);
}

#[test]
fn domain_lifecycle_watches() {
    let fake = FakeXenstored::new();
    let mut dom0 = client(&fake, 0);
    dom0.watch_introduce_domain("intro").unwrap();
    dom0.watch_release_domain("release").unwrap();
    assert_eq!(
        drain(&mut dom0),
        [
            ev("@introduceDomain", "intro"),
            ev("@releaseDomain", "release")
        ]
    );
    fake.add_domain(12).unwrap();
    assert_eq!(drain(&mut dom0), [ev("@introduceDomain", "intro")]);
    fake.release_domain(12);
    assert_eq!(drain(&mut dom0), [ev("@releaseDomain", "release")]);
    // A domU may register but is not told about other domains.
    let mut domu = client(&fake, 13);
    domu.watch_release_domain("r").unwrap();
    assert_eq!(
        drain(&mut domu),
        [ev("@releaseDomain", "r")],
        "only the initial event"
    );
    fake.release_domain(12);
    assert_eq!(drain(&mut domu), []);
}

#[test]
fn watch_quota_for_domus() {
    let fake = FakeXenstored::new();
    fake.add_domain(2).unwrap();
    let mut domu = client(&fake, 2);
    for i in 0..vmsg_xen::fake::xenstored::WATCH_QUOTA {
        domu.watch("data", &format!("t{i}")).unwrap();
    }
    assert_eq!(errno(domu.watch("data", "one-more")), XsErrno::E2BIG);
}

#[test]
fn watch_storm_is_merged_and_bounded() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.watch("/storm", "s").unwrap();
    drain(&mut xs);
    fake.watch_storm("/storm/x", 20_000);
    // A request issued during the storm still gets its reply.
    xs.write("/other", b"1").unwrap();
    let got = drain(&mut xs);
    assert_eq!(got, [ev("/storm/x", "s")], "identical queued events merge");
    assert_eq!(fake.stats().events, 20_001);

    // Distinct events beyond the queue limit are dropped and counted.
    xs.set_event_queue_limit(10);
    for i in 0..50 {
        fake.write(&format!("/storm/{i}"), b"").unwrap();
    }
    xs.write("/other", b"2").unwrap();
    assert_eq!(xs.pending_events(), 10);
    assert_eq!(xs.dropped_events(), 40);
    assert_eq!(drain(&mut xs).len(), 10);
}

// ---------------------------------------------------------- transactions

#[test]
fn transaction_commit_abort_and_isolation() {
    let fake = FakeXenstored::new();
    let mut a = client(&fake, 0);
    let mut b = client(&fake, 0);
    a.write("/t/v", b"0").unwrap();
    {
        let mut tx = a.transaction_start().unwrap();
        tx.write("/t/v", b"1").unwrap();
        tx.write("/t/new", b"n").unwrap();
        assert_eq!(tx.read("/t/v").unwrap(), b"1", "own writes visible inside");
        assert_eq!(
            b.read("/t/v").unwrap(),
            b"0",
            "invisible outside before commit"
        );
        assert!(b.read("/t/new").unwrap_err().is_not_found());
        tx.commit().unwrap();
    }
    assert_eq!(b.read("/t/v").unwrap(), b"1");
    assert_eq!(b.read("/t/new").unwrap(), b"n");

    let mut tx = a.transaction_start().unwrap();
    tx.rm("/t/new").unwrap();
    tx.abort().unwrap();
    assert_eq!(b.read("/t/new").unwrap(), b"n", "aborted");

    {
        let mut tx = a.transaction_start().unwrap();
        tx.write("/t/v", b"dropped").unwrap();
    } // dropped without commit: aborted
    assert_eq!(b.read("/t/v").unwrap(), b"1");
    assert_eq!(fake.stats().commits, 1);
}

#[test]
fn conflicting_commit_fails_with_eagain() {
    let fake = FakeXenstored::new();
    let mut a = client(&fake, 0);
    let mut b = client(&fake, 0);
    a.write("/c", b"0").unwrap();
    let mut tx = a.transaction_start().unwrap();
    assert_eq!(tx.read("/c").unwrap(), b"0");
    tx.write("/c2", b"x").unwrap();
    b.write("/c", b"changed").unwrap();
    assert_eq!(errno(tx.commit()), XsErrno::EAGAIN);
    assert!(b.read("/c2").unwrap_err().is_not_found(), "nothing applied");
    // Changes to nodes the transaction did not touch do not conflict...
    a.write("/c3", b"0").unwrap();
    let mut tx = a.transaction_start().unwrap();
    tx.write("/c3", b"x").unwrap();
    b.write("/unrelated", b"y").unwrap();
    tx.commit().unwrap();
    // ...but two creations under one parent do: both change its child list
    // (as in xenstored).
    let mut tx = a.transaction_start().unwrap();
    tx.write("/sib/one", b"x").unwrap();
    b.write("/sib/two", b"y").unwrap();
    assert_eq!(errno(tx.commit()), XsErrno::EAGAIN);
}

#[test]
fn transaction_helper_retries_on_eagain() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    fake.fail_next_commits(3);
    let mut runs = 0;
    let v = xs
        .transaction(|tx| {
            runs += 1;
            tx.write("/retry", runs.to_string().as_bytes())?;
            Ok(runs)
        })
        .unwrap();
    assert_eq!((v, runs), (4, 4));
    assert_eq!(xs.read("/retry").unwrap(), b"4");
    let s = fake.stats();
    assert_eq!((s.commits, s.conflicts), (1, 3));
}

#[test]
fn transaction_helper_gives_up_after_the_bound() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.set_transaction_attempts(5);
    fake.fail_next_commits(100);
    let mut runs = 0;
    let r = xs.transaction(|tx| {
        runs += 1;
        tx.write("/never", b"x")
    });
    assert!(matches!(r, Err(XsError::TransactionConflict(5))), "{r:?}");
    assert_eq!(runs, 5);
    assert!(fake.read("/never").is_none());
}

#[test]
fn transaction_helper_aborts_on_other_errors() {
    let fake = FakeXenstored::new();
    fake.add_domain(4).unwrap();
    let mut domu = client(&fake, 4);
    let r = domu.transaction(|tx| {
        tx.write("data/ok", b"1")?;
        tx.write("/local/domain/4/forbidden", b"1")
    });
    assert_eq!(errno(r), XsErrno::EACCES);
    assert!(
        fake.read("/local/domain/4/data/ok").is_none(),
        "aborted, not committed"
    );
    assert_eq!(fake.stats().commits, 0);
}

#[test]
fn transaction_helper_retries_real_conflicts() {
    let fake = FakeXenstored::new();
    let mut a = client(&fake, 0);
    let mut b = client(&fake, 0);
    a.write("/n", b"0").unwrap();
    let mut first = true;
    let v = a
        .transaction(|tx| {
            let n: u32 = tx
                .read_string("/n")?
                .parse()
                .map_err(|_| XsError::MalformedReply("n"))?;
            if first {
                // Someone else increments meanwhile.
                first = false;
                b.write("/n", b"10").unwrap();
            }
            tx.write("/n", (n + 1).to_string().as_bytes())?;
            Ok(n + 1)
        })
        .unwrap();
    assert_eq!(v, 11);
    assert_eq!(a.read("/n").unwrap(), b"11");
}

#[test]
fn concurrent_increments_lose_nothing() {
    let fake = Arc::new(FakeXenstored::new());
    fake.write("/counter", b"0").unwrap();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let fake = fake.clone();
            std::thread::spawn(move || {
                let mut xs = client(&fake, 0);
                xs.set_transaction_attempts(10_000);
                for _ in 0..30 {
                    xs.transaction(|tx| {
                        let n: u32 = tx
                            .read_string("/counter")?
                            .parse()
                            .map_err(|_| XsError::MalformedReply("n"))?;
                        tx.write("/counter", (n + 1).to_string().as_bytes())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fake.read("/counter").unwrap(), b"90");
    assert_eq!(fake.stats().commits, 90);
}

#[test]
fn transaction_watch_events_fire_at_commit() {
    let fake = FakeXenstored::new();
    let mut watcher = client(&fake, 0);
    watcher.watch("/tw", "t").unwrap();
    drain(&mut watcher);
    let mut xs = client(&fake, 0);
    let mut tx = xs.transaction_start().unwrap();
    tx.write("/tw/a", b"1").unwrap();
    assert_eq!(drain(&mut watcher), [], "nothing before commit");
    tx.commit().unwrap();
    assert_eq!(drain(&mut watcher), [ev("/tw/a", "t")]);
    let mut tx = xs.transaction_start().unwrap();
    tx.write("/tw/b", b"1").unwrap();
    tx.abort().unwrap();
    assert_eq!(drain(&mut watcher), [], "nothing for an abort");
}

#[test]
fn transaction_ids_are_per_connection() {
    let fake = FakeXenstored::new();
    let mut a = client(&fake, 0);
    let mut b = client(&fake, 0);
    let tx = a.transaction_start().unwrap();
    let id = tx.id();
    assert_eq!(
        errno(b.raw_request(MsgType::Read, id, b"/\0")),
        XsErrno::ENOENT
    );
    assert_eq!(
        errno(b.raw_request(MsgType::TransactionEnd, id, b"T\0")),
        XsErrno::ENOENT
    );
    tx.commit().unwrap();
    assert_eq!(
        errno(a.raw_request(MsgType::TransactionEnd, id, b"T\0")),
        XsErrno::ENOENT,
        "already ended"
    );
}

// ------------------------------------------------ faults and bad replies

#[test]
fn connection_drop_breaks_the_client() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.write("/x", b"1").unwrap();
    assert_eq!(fake.connections(), 1);
    fake.disconnect_all();
    assert!(matches!(xs.read("/x"), Err(XsError::Connection(_))));
    assert!(xs.is_broken());
    assert!(matches!(xs.read("/x"), Err(XsError::Broken)));
    assert!(matches!(xs.next_event(SHORT), Err(XsError::Broken)));
}

#[test]
fn connection_drop_while_waiting_for_events() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    xs.watch("/w", "t").unwrap();
    drain(&mut xs);
    fake.disconnect_all();
    assert!(matches!(
        xs.next_event(Some(Duration::from_secs(5))),
        Err(XsError::Connection(_))
    ));
}

#[test]
fn client_disconnect_cleans_up_the_daemon_side() {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    let tx = xs.transaction_start().unwrap();
    std::mem::forget(tx);
    drop(xs);
    for _ in 0..100 {
        if fake.connections() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("connection not cleaned up");
}

fn with_fault(fault: ReplyFault) -> (FakeXenstored, Client, Result<(), XsError>) {
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    fake.inject_reply_fault(fault);
    let r = xs.write("/f", b"v");
    (fake, xs, r)
}

#[test]
fn reply_with_a_wrong_request_id_breaks_the_stream() {
    let (_f, mut xs, r) = with_fault(ReplyFault::WrongReqId);
    assert!(matches!(r, Err(XsError::MalformedReply(_))), "{r:?}");
    assert!(matches!(xs.read("/f"), Err(XsError::Broken)));
}

#[test]
fn unsolicited_reply_breaks_the_stream() {
    let (_f, xs, r) = with_fault(ReplyFault::Unsolicited);
    assert!(matches!(r, Err(XsError::MalformedReply(_))), "{r:?}");
    assert!(xs.is_broken());
}

#[test]
fn reply_of_the_wrong_type_breaks_the_stream() {
    let (_f, xs, r) = with_fault(ReplyFault::WrongType);
    assert!(matches!(r, Err(XsError::MalformedReply(_))), "{r:?}");
    assert!(xs.is_broken());
}

#[test]
fn oversized_reply_length_is_refused() {
    let (_f, xs, r) = with_fault(ReplyFault::OversizedLength);
    assert!(
        matches!(
            r,
            Err(XsError::Connection(
                vmsg_xen::xenstore::wire::WireError::TooLarge(4097)
            ))
        ),
        "{r:?}"
    );
    assert!(xs.is_broken());
}

#[test]
fn truncated_reply_is_a_connection_error() {
    let (_f, xs, r) = with_fault(ReplyFault::Truncated);
    assert!(
        matches!(
            r,
            Err(XsError::Connection(
                vmsg_xen::xenstore::wire::WireError::Truncated
            ))
        ),
        "{r:?}"
    );
    assert!(xs.is_broken());
}

#[test]
fn bad_payloads_are_rejected_but_keep_the_stream() {
    for bad in [&b"OK"[..], b"ok\0", b"", b"OK\0junk"] {
        let (_f, mut xs, r) = with_fault(ReplyFault::Payload(bad.to_vec()));
        assert!(
            matches!(r, Err(XsError::MalformedReply(_))),
            "{bad:?}: {r:?}"
        );
        assert!(!xs.is_broken());
        xs.write("/f", b"again").unwrap();
    }
    let fake = FakeXenstored::new();
    let mut xs = client(&fake, 0);
    fake.inject_reply_fault(ReplyFault::Payload(b"r5\0x9\0".to_vec()));
    assert!(matches!(xs.get_perms("/"), Err(XsError::MalformedReply(_))));
    fake.inject_reply_fault(ReplyFault::Payload(b"a\0b".to_vec()));
    assert!(matches!(xs.directory("/"), Err(XsError::MalformedReply(_))));
    fake.inject_reply_fault(ReplyFault::Payload(b"0\0".to_vec()));
    assert!(
        matches!(xs.transaction_start(), Err(XsError::MalformedReply(_))),
        "tx id 0"
    );
    fake.inject_reply_fault(ReplyFault::Payload(b"maybe\0".to_vec()));
    assert!(matches!(
        xs.is_domain_introduced(0),
        Err(XsError::MalformedReply(_))
    ));
}

#[test]
fn error_replies_map_to_errnos_or_are_rejected() {
    let (_f, _xs, r) = with_fault(ReplyFault::ErrorPayload(b"EACCES\0".to_vec()));
    assert_eq!(errno(r), XsErrno::EACCES);
    for bad in [&b"EWHATEVER\0"[..], b"ENOENT", b"", b"EACCES\0EIO\0"] {
        let (_f, xs, r) = with_fault(ReplyFault::ErrorPayload(bad.to_vec()));
        assert!(
            matches!(r, Err(XsError::MalformedReply(_))),
            "{bad:?}: {r:?}"
        );
        assert!(!xs.is_broken());
    }
}

#[test]
fn malformed_watch_events_are_dropped_and_counted() {
    for bad in [&b"only-one\0"[..], b"a\0b\0c\0", b"no-nul", b"\xff\0t\0"] {
        let (_f, mut xs, r) = with_fault(ReplyFault::EventPayload(bad.to_vec()));
        r.unwrap();
        assert_eq!(xs.malformed_events(), 1, "{bad:?}");
        assert_eq!(xs.pending_events(), 0);
        xs.write("/f", b"again").unwrap();
    }
}

// ------------------------------------------------------------ transports

#[test]
fn connect_socket_path_served_by_the_fake() {
    let dir = std::env::temp_dir().join(format!("vmsg-xen-xs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("socket");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fake = Arc::new(FakeXenstored::new());
    let server = fake.clone();
    let acceptor = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        server.serve(stream, 0).unwrap();
    });
    let mut xs = XsClient::connect_socket(&path).unwrap();
    acceptor.join().unwrap();
    xs.write("/via/socket", b"yes").unwrap();
    assert_eq!(fake.read("/via/socket").unwrap(), b"yes");
    assert!(matches!(
        xs.into_inner(),
        vmsg_xen::xenstore::XsStream::Socket(_)
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_transports_are_open_errors() {
    let r = XsClient::open_device(std::path::Path::new("/nonexistent/xen/xenbus"));
    assert!(matches!(r, Err(XsError::Open { .. })), "{r:?}");
    let r = XsClient::connect_socket(std::path::Path::new("/nonexistent/xenstored/socket"));
    assert!(matches!(r, Err(XsError::Open { .. })), "{r:?}");
}
