//! A fake xenstored for tests: an in-memory tree with xenstored's permission
//! model, watches and transactions, served over the real wire protocol on
//! Unix streams so [`XsClient`](crate::xenstore::XsClient) is tested against
//! it byte for byte.
//!
//! Modelled on C xenstored (`tools/xenstore/xenstored_core.c`, `_watch.c`,
//! `_transaction.c`):
//! - Permissions: the first entry names the owner (full access) and the
//!   access of unlisted domains; dom0 is privileged and bypasses them.
//!   Creating a node needs write access to the nearest existing ancestor;
//!   new nodes inherit their parent's permissions, and a node created by an
//!   unprivileged domain is owned by it. A missing node reads as `ENOENT`
//!   only if the ancestor is readable, `EACCES` otherwise. Only the owner
//!   (or dom0) may set permissions, and a domU may not give a node away.
//! - Watches fire on the watched path and everything below it, once on
//!   registration (after the `OK`), and only for connections that may read
//!   the node (or its parent). Removing a subtree fires watches set on the
//!   removed nodes too. `@introduceDomain` / `@releaseDomain` are fired by
//!   [`FakeXenstored::add_domain`] / [`FakeXenstored::release_domain`].
//! - Transactions work on a snapshot; commit fails with `EAGAIN` if any node
//!   the transaction touched changed meanwhile. Their watch events fire at
//!   commit.
//! - Relative paths are relative to `/local/domain/<domid>`.
//!
//! Fault injection: [`FakeXenstored::fail_next_commits`] (forced `EAGAIN`),
//! [`FakeXenstored::watch_storm`], [`FakeXenstored::disconnect_all`] and
//! [`FakeXenstored::inject_reply_fault`] (malformed replies).
//!
//! Not modelled: quotas beyond watch and transaction counts, the
//! `XS_INTRODUCE`/`XS_RELEASE` commands (the test drives domain lifecycle
//! directly), `XS_CONTROL`, domain "targets", the ring-page transport.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;

use thiserror::Error;

use crate::DomId;
use crate::xenstore::perms::{Access, Permissions};
use crate::xenstore::wire::{
    self, ABS_PATH_MAX, Message, MsgType, PAYLOAD_MAX, REL_PATH_MAX, XsErrno,
};

/// Watches an unprivileged connection may hold (xenstored's default quota).
pub const WATCH_QUOTA: usize = 128;
/// Open transactions an unprivileged connection may hold.
pub const TRANSACTION_QUOTA: usize = 10;

/// Errors of the fake's direct (test-side) API.
#[derive(Debug, Error)]
pub enum FakeError {
    /// The operation failed as xenstored would have failed it for dom0.
    #[error("fake xenstored: {0}")]
    Xs(XsErrno),
    /// Setting up a connection failed.
    #[error("fake xenstored connection: {0}")]
    Io(#[from] io::Error),
}

/// A malformed reply the fake sends instead of the next real reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyFault {
    /// The reply carries another request id.
    WrongReqId,
    /// The reply carries another (valid, unrelated) message type.
    WrongType,
    /// The header announces a payload over `XENSTORE_PAYLOAD_MAX`.
    OversizedLength,
    /// Half the reply is sent, then the connection is closed.
    Truncated,
    /// The reply payload is replaced by these bytes (type kept).
    Payload(Vec<u8>),
    /// An `XS_ERROR` reply with these payload bytes.
    ErrorPayload(Vec<u8>),
    /// A reply to a request id nobody sent is sent first, then the real one.
    Unsolicited,
    /// A watch event with this payload is sent before the real reply.
    EventPayload(Vec<u8>),
}

/// Counters, for tests that check how often something happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Requests handled.
    pub requests: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Commits refused with `EAGAIN` (conflicts and injected failures).
    pub conflicts: u64,
    /// Watch events sent.
    pub events: u64,
}

type ConnId = u64;
/// The pseudo-connection of the test-side API: dom0, no socket.
const INTERNAL: ConnId = 0;

#[derive(Debug, Clone)]
struct Node {
    value: Vec<u8>,
    perms: Permissions,
    /// Global counter value of the last change to the node or its child
    /// list: what commit compares to detect conflicts.
    generation: u64,
}

type Tree = BTreeMap<String, Node>;

#[derive(Debug, Clone, Copy)]
struct Who {
    cid: ConnId,
    domid: DomId,
    privileged: bool,
}

#[derive(Debug)]
enum Out {
    Msg(Vec<u8>),
    Close,
}

#[derive(Debug)]
struct Watch {
    /// Canonical (absolute or `@`) path.
    node: String,
    token: String,
    /// For relative watches, the home prefix stripped from event paths.
    relative_to: Option<String>,
}

#[derive(Debug)]
struct Conn {
    domid: DomId,
    out: mpsc::Sender<Out>,
    watches: Vec<Watch>,
}

/// A watch firing waiting to be delivered: `path` changed; delivered to
/// connections that may read under any of `perms`.
#[derive(Debug, Clone)]
struct Fire {
    path: String,
    /// Only watches set exactly on `path` (nodes removed below the root of
    /// an `rm`), rather than on `path` or an ancestor.
    exact: bool,
    perms: Vec<Permissions>,
}

#[derive(Debug)]
struct Tx {
    conn: ConnId,
    base: Tree,
    work: Tree,
    accessed: BTreeSet<String>,
    fired: Vec<Fire>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Read,
    Write,
    /// Write plus ownership: set-perms.
    Own,
}

fn allowed(who: &Who, perms: &Permissions, want: Want) -> bool {
    if who.privileged {
        return true;
    }
    let access = perms.access_for(who.domid);
    match want {
        Want::Read => access.can_read(),
        Want::Write => access.can_write(),
        Want::Own => perms.owner() == who.domid,
    }
}

/// Whether an ancestor's permissions let `who` learn that a node is missing
/// (xenstored's `errno_from_parents`: any of the wanted bits).
fn allowed_any(who: &Who, perms: &Permissions, want: Want) -> bool {
    match want {
        Want::Own => allowed(who, perms, Want::Write) || allowed(who, perms, Want::Own),
        w => allowed(who, perms, w),
    }
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_valid_nodename(path: &str) -> bool {
    path.starts_with('/')
        && (path == "/" || !path.ends_with('/'))
        && !path.contains("//")
        && path.len() <= ABS_PATH_MAX
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b))
}

/// `child` is `parent` or below it (xenstored's `is_child`; everything is
/// below `/`).
fn is_child(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return true;
    }
    child
        .strip_prefix(parent)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn home(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

fn canonicalize(who: &Who, path: &str) -> String {
    if path.starts_with('/') || path.starts_with('@') {
        path.to_owned()
    } else {
        format!("{}/{path}", home(who.domid))
    }
}

/// A view of one tree (the store, or a transaction's copy).
struct Ctx<'a> {
    tree: &'a mut Tree,
    generation: &'a mut u64,
    accessed: Option<&'a mut BTreeSet<String>>,
    fired: Vec<Fire>,
}

impl Ctx<'_> {
    fn touch(&mut self, path: &str) {
        if let Some(a) = self.accessed.as_deref_mut() {
            a.insert(path.to_owned());
        }
    }

    fn next_gen(&mut self) -> u64 {
        *self.generation += 1;
        *self.generation
    }

    fn nearest_ancestor(&self, path: &str) -> Option<&Node> {
        let mut p = parent(path);
        while let Some(name) = p {
            if let Some(n) = self.tree.get(name) {
                return Some(n);
            }
            p = parent(name);
        }
        None
    }

    /// xenstored's `get_node`: Ok if the node exists and `who` may `want`
    /// it; else `EINVAL`, `EACCES` or `ENOENT` as xenstored reports them.
    fn check(&mut self, who: &Who, path: &str, want: Want) -> Result<(), XsErrno> {
        if !is_valid_nodename(path) {
            return Err(XsErrno::EINVAL);
        }
        self.touch(path);
        if let Some(n) = self.tree.get(path) {
            return if allowed(who, &n.perms, want) {
                Ok(())
            } else {
                Err(XsErrno::EACCES)
            };
        }
        match self.nearest_ancestor(path) {
            Some(a) if allowed_any(who, &a.perms, want) => Err(XsErrno::ENOENT),
            _ => Err(XsErrno::EACCES),
        }
    }

    fn node(&self, path: &str) -> Result<&Node, XsErrno> {
        self.tree.get(path).ok_or(XsErrno::ENOENT)
    }

    fn perms_for_fire(&self, path: &str) -> Vec<Permissions> {
        let mut v = Vec::new();
        if let Some(n) = self.tree.get(path) {
            v.push(n.perms.clone());
        }
        if let Some(p) = parent(path).and_then(|p| self.tree.get(p)) {
            v.push(p.perms.clone());
        }
        v
    }

    /// Create `path` and missing ancestors; the caller checked permission.
    fn create(&mut self, who: &Who, path: &str, value: Vec<u8>) {
        let mut missing = vec![path.to_owned()];
        let mut p = parent(path);
        while let Some(name) = p {
            if self.tree.contains_key(name) {
                break;
            }
            missing.push(name.to_owned());
            p = parent(name);
        }
        // The existing ancestor's child list changes.
        if let Some(anc) = p.map(str::to_owned) {
            let g = self.next_gen();
            self.touch(&anc);
            if let Some(n) = self.tree.get_mut(&anc) {
                n.generation = g;
            }
        }
        for name in missing.into_iter().rev() {
            let mut perms = parent(&name)
                .and_then(|p| self.tree.get(p))
                .map_or_else(|| Permissions::new(0, Access::None), |n| n.perms.clone());
            if !who.privileged {
                perms = reown(&perms, who.domid);
            }
            let generation = self.next_gen();
            let value = if name == path {
                value.clone()
            } else {
                Vec::new()
            };
            self.touch(&name);
            self.tree.insert(
                name,
                Node {
                    value,
                    perms,
                    generation,
                },
            );
        }
    }

    /// Remove `path` and its subtree, firing as xenstored does.
    fn remove(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let below: Vec<String> = self
            .tree
            .range(prefix.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        // Deepest first, like xenstored's post-order walk.
        for name in below.iter().rev() {
            let perms = self.perms_for_fire(name);
            self.touch(name);
            self.tree.remove(name);
            self.fired.push(Fire {
                path: name.clone(),
                exact: true,
                perms,
            });
        }
        let perms = self.perms_for_fire(path);
        self.touch(path);
        self.tree.remove(path);
        self.fired.push(Fire {
            path: path.to_owned(),
            exact: false,
            perms,
        });
        if let Some(p) = parent(path).map(str::to_owned) {
            let g = self.next_gen();
            self.touch(&p);
            if let Some(n) = self.tree.get_mut(&p) {
                n.generation = g;
            }
        }
    }

    fn children(&self, path: &str) -> Vec<&str> {
        let prefix = if path == "/" {
            "/".to_owned()
        } else {
            format!("{path}/")
        };
        self.tree
            .range(prefix.clone()..)
            .map(|(k, _)| k.as_str())
            .take_while(|k| k.starts_with(&prefix))
            .filter(|k| k.len() > prefix.len() && !k[prefix.len()..].contains('/'))
            .map(basename)
            .collect()
    }

    fn fire(&mut self, path: &str, extra: Option<Permissions>) {
        let mut perms = self.perms_for_fire(path);
        perms.extend(extra);
        self.fired.push(Fire {
            path: path.to_owned(),
            exact: false,
            perms,
        });
    }
}

/// `perms` with `domid` as owner (what a domU creating a node gets).
fn reown(perms: &Permissions, domid: DomId) -> Permissions {
    let mut p = Permissions::new(domid, perms.others());
    for e in perms.acl() {
        p = p.with(e.domid, e.access);
    }
    p
}

#[derive(Debug)]
struct State {
    tree: Tree,
    generation: u64,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    txs: HashMap<u32, Tx>,
    next_tx: u32,
    introduced: BTreeSet<DomId>,
    special: BTreeMap<String, Permissions>,
    eagain_commits: u32,
    faults: VecDeque<ReplyFault>,
    stats: FakeStats,
}

/// What a request produced.
struct Outcome {
    reply: Result<(MsgType, Vec<u8>), XsErrno>,
    /// Messages for the requester after the reply (a new watch's event).
    after: Vec<Vec<u8>>,
}

fn ok(ty: MsgType) -> Result<(MsgType, Vec<u8>), XsErrno> {
    Ok((ty, b"OK\0".to_vec()))
}

fn event_message(path: &str, token: &str) -> Option<Vec<u8>> {
    let payload = wire::join_strings([path.as_bytes(), token.as_bytes()]);
    // xenstored silently skips events it could not send.
    wire::encode_message(MsgType::WatchEvent.raw(), 0, 0, &payload).ok()
}

impl State {
    fn new() -> Self {
        let mut tree = Tree::new();
        let root = Permissions::new(0, Access::None);
        for (i, p) in ["/", "/local", "/local/domain", "/local/domain/0", "/tool"]
            .iter()
            .enumerate()
        {
            tree.insert(
                (*p).to_owned(),
                Node {
                    value: Vec::new(),
                    perms: root.clone(),
                    generation: i as u64 + 1,
                },
            );
        }
        let mut special = BTreeMap::new();
        special.insert(crate::xenstore::INTRODUCE_DOMAIN.to_owned(), root.clone());
        special.insert(crate::xenstore::RELEASE_DOMAIN.to_owned(), root);
        Self {
            tree,
            generation: 16,
            conns: HashMap::new(),
            next_conn: 1,
            txs: HashMap::new(),
            next_tx: 1,
            introduced: [0].into_iter().collect(),
            special,
            eagain_commits: 0,
            faults: VecDeque::new(),
            stats: FakeStats::default(),
        }
    }

    fn who(&self, cid: ConnId) -> Option<Who> {
        if cid == INTERNAL {
            return Some(Who {
                cid,
                domid: 0,
                privileged: true,
            });
        }
        self.conns.get(&cid).map(|c| Who {
            cid,
            domid: c.domid,
            privileged: c.domid == 0,
        })
    }

    fn send(&mut self, cid: ConnId, msg: Vec<u8>) {
        if let Some(c) = self.conns.get(&cid) {
            // A closed writer means the connection is going away anyway.
            let _ = c.out.send(Out::Msg(msg));
        }
    }

    /// Deliver watch events for `fire` to every connection with a matching
    /// watch that may see it.
    fn deliver(&mut self, fire: &Fire) {
        let mut sent = 0;
        for c in self.conns.values() {
            let who = Who {
                cid: 0,
                domid: c.domid,
                privileged: c.domid == 0,
            };
            let visible = if fire.path.starts_with('@') {
                self.special
                    .get(&fire.path)
                    .is_some_and(|p| allowed(&who, p, Want::Read))
            } else {
                fire.perms.iter().any(|p| allowed(&who, p, Want::Read))
            };
            if !visible {
                continue;
            }
            for w in &c.watches {
                let hit = if fire.exact {
                    w.node == fire.path
                } else {
                    is_child(&fire.path, &w.node)
                };
                if !hit {
                    continue;
                }
                let path = match &w.relative_to {
                    Some(prefix) => {
                        let rest = fire
                            .path
                            .strip_prefix(prefix.as_str())
                            .unwrap_or(&fire.path);
                        rest.strip_prefix('/').unwrap_or(rest)
                    }
                    None => fire.path.as_str(),
                };
                if let Some(m) = event_message(path, &w.token) {
                    let _ = c.out.send(Out::Msg(m));
                    sent += 1;
                }
            }
        }
        self.stats.events += sent;
    }

    /// Run `f` on the tree `tx_id` designates, then deliver (or, inside a
    /// transaction, queue) the watch events it fired.
    fn with_tree<R>(
        &mut self,
        who: &Who,
        tx_id: u32,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<R, XsErrno>,
    ) -> Result<R, XsErrno> {
        if tx_id == 0 {
            let mut ctx = Ctx {
                tree: &mut self.tree,
                generation: &mut self.generation,
                accessed: None,
                fired: Vec::new(),
            };
            let r = f(&mut ctx);
            let fired = std::mem::take(&mut ctx.fired);
            for fire in &fired {
                self.deliver(fire);
            }
            r
        } else {
            let tx = self
                .txs
                .get_mut(&tx_id)
                .filter(|t| t.conn == who.cid)
                .ok_or(XsErrno::ENOENT)?;
            let mut ctx = Ctx {
                tree: &mut tx.work,
                generation: &mut self.generation,
                accessed: Some(&mut tx.accessed),
                fired: Vec::new(),
            };
            let r = f(&mut ctx);
            let fired = std::mem::take(&mut ctx.fired);
            tx.fired.extend(fired);
            r
        }
    }

    fn process(&mut self, cid: ConnId, msg: &Message) -> Outcome {
        self.stats.requests += 1;
        let Some(who) = self.who(cid) else {
            return Outcome {
                reply: Err(XsErrno::EINVAL),
                after: Vec::new(),
            };
        };
        let mut after = Vec::new();
        let reply = match MsgType::from_raw(msg.ty) {
            None | Some(MsgType::WatchEvent | MsgType::Error) => Err(XsErrno::ENOSYS),
            Some(ty) => self.dispatch(&who, ty, msg, &mut after),
        };
        Outcome { reply, after }
    }

    fn dispatch(
        &mut self,
        who: &Who,
        ty: MsgType,
        msg: &Message,
        after: &mut Vec<Vec<u8>>,
    ) -> Result<(MsgType, Vec<u8>), XsErrno> {
        let strings = wire::split_strings(&msg.payload);
        // Exactly one NUL-terminated argument (xenstored's `onearg`).
        let one = || match strings.as_deref() {
            Ok([s]) => Ok(*s),
            _ => Err(XsErrno::EINVAL),
        };
        let tx = msg.tx_id;
        match ty {
            MsgType::Read => {
                let name = canonicalize(who, one()?);
                let v = self.with_tree(who, tx, |c| {
                    c.check(who, &name, Want::Read)?;
                    Ok(c.node(&name)?.value.clone())
                })?;
                Ok((ty, v))
            }
            MsgType::Write => {
                let Some(nul) = msg.payload.iter().position(|b| *b == 0) else {
                    return Err(XsErrno::EINVAL);
                };
                let path = std::str::from_utf8(&msg.payload[..nul]).map_err(|_| XsErrno::EINVAL)?;
                let name = canonicalize(who, path);
                let value = msg.payload[nul + 1..].to_vec();
                self.with_tree(who, tx, |c| {
                    match c.check(who, &name, Want::Write) {
                        Ok(()) => {
                            let g = c.next_gen();
                            c.touch(&name);
                            if let Some(n) = c.tree.get_mut(&name) {
                                n.value = value;
                                n.generation = g;
                            }
                        }
                        Err(XsErrno::ENOENT) => c.create(who, &name, value),
                        Err(e) => return Err(e),
                    }
                    c.fire(&name, None);
                    Ok(())
                })?;
                ok(ty)
            }
            MsgType::Mkdir => {
                let name = canonicalize(who, one()?);
                self.with_tree(who, tx, |c| match c.check(who, &name, Want::Write) {
                    Ok(()) => Ok(()),
                    Err(XsErrno::ENOENT) => {
                        c.create(who, &name, Vec::new());
                        c.fire(&name, None);
                        Ok(())
                    }
                    Err(e) => Err(e),
                })?;
                ok(ty)
            }
            MsgType::Rm => {
                let name = canonicalize(who, one()?);
                self.with_tree(who, tx, |c| match c.check(who, &name, Want::Write) {
                    Ok(()) if name == "/" => Err(XsErrno::EINVAL),
                    Ok(()) => {
                        c.remove(&name);
                        Ok(())
                    }
                    Err(XsErrno::ENOENT) => match parent(&name) {
                        Some(p) if c.tree.contains_key(p) => Ok(()),
                        _ => Err(XsErrno::ENOENT),
                    },
                    Err(e) => Err(e),
                })?;
                ok(ty)
            }
            MsgType::Directory => {
                let name = canonicalize(who, one()?);
                let v = self.with_tree(who, tx, |c| {
                    c.check(who, &name, Want::Read)?;
                    Ok(wire::join_strings(
                        c.children(&name).into_iter().map(str::as_bytes),
                    ))
                })?;
                if v.len() > PAYLOAD_MAX {
                    return Err(XsErrno::E2BIG);
                }
                Ok((ty, v))
            }
            MsgType::DirectoryPart => {
                let (path, off) = match strings.as_deref() {
                    Ok([p, o]) => (
                        canonicalize(who, p),
                        o.parse::<usize>().map_err(|_| XsErrno::EINVAL)?,
                    ),
                    _ => return Err(XsErrno::EINVAL),
                };
                let v = self.with_tree(who, tx, |c| {
                    c.check(who, &path, Want::Read)?;
                    let generation = c.node(&path)?.generation;
                    let list = wire::join_strings(c.children(&path).into_iter().map(str::as_bytes));
                    Ok(directory_part(generation, &list, off))
                })?;
                Ok((ty, v))
            }
            MsgType::GetPerms => {
                let name = canonicalize(who, one()?);
                if name.starts_with('@') {
                    let p = self.special.get(&name).ok_or(XsErrno::ENOENT)?;
                    if !allowed(who, p, Want::Read) {
                        return Err(XsErrno::EACCES);
                    }
                    return Ok((ty, p.to_wire()));
                }
                let v = self.with_tree(who, tx, |c| {
                    c.check(who, &name, Want::Read)?;
                    Ok(c.node(&name)?.perms.to_wire())
                })?;
                Ok((ty, v))
            }
            MsgType::SetPerms => {
                let strings = strings.map_err(|_| XsErrno::EINVAL)?;
                let [path, entries @ ..] = strings.as_slice() else {
                    return Err(XsErrno::EINVAL);
                };
                let perms =
                    Permissions::parse(entries.iter().copied()).map_err(|_| XsErrno::EINVAL)?;
                let name = canonicalize(who, path);
                if name.starts_with('@') {
                    let cur = self.special.get(&name).ok_or(XsErrno::ENOENT)?;
                    if !allowed(who, cur, Want::Own) {
                        return Err(XsErrno::EACCES);
                    }
                    self.special.insert(name, perms);
                    return ok(ty);
                }
                self.with_tree(who, tx, |c| {
                    c.check(who, &name, Want::Own)?;
                    let old = c.node(&name)?.perms.clone();
                    if !who.privileged && perms.owner() != old.owner() {
                        return Err(XsErrno::EPERM);
                    }
                    let g = c.next_gen();
                    if let Some(n) = c.tree.get_mut(&name) {
                        n.perms = perms;
                        n.generation = g;
                    }
                    // A watcher losing access still hears of the change.
                    c.fire(&name, Some(old));
                    Ok(())
                })?;
                ok(ty)
            }
            MsgType::Watch => {
                let (path, token) = match strings.as_deref() {
                    Ok([p, t]) => (*p, *t),
                    _ => return Err(XsErrno::EINVAL),
                };
                let relative = !path.starts_with('/') && !path.starts_with('@');
                let node = canonicalize(who, path);
                let valid = if node.starts_with('@') {
                    node.len() <= REL_PATH_MAX
                } else {
                    is_valid_nodename(&node)
                };
                if !valid {
                    return Err(XsErrno::EINVAL);
                }
                let conn = self.conns.get_mut(&who.cid).ok_or(XsErrno::EINVAL)?;
                if conn
                    .watches
                    .iter()
                    .any(|w| w.node == node && w.token == token)
                {
                    return Err(XsErrno::EEXIST);
                }
                if !who.privileged && conn.watches.len() >= WATCH_QUOTA {
                    return Err(XsErrno::E2BIG);
                }
                conn.watches.push(Watch {
                    node,
                    token: token.to_owned(),
                    relative_to: relative.then(|| home(who.domid)),
                });
                // The initial event, after the OK, with the path as given.
                after.extend(event_message(path, token));
                ok(ty)
            }
            MsgType::Unwatch => {
                let (path, token) = match strings.as_deref() {
                    Ok([p, t]) => (*p, *t),
                    _ => return Err(XsErrno::EINVAL),
                };
                let node = canonicalize(who, path);
                let conn = self.conns.get_mut(&who.cid).ok_or(XsErrno::EINVAL)?;
                let pos = conn
                    .watches
                    .iter()
                    .position(|w| w.node == node && w.token == token)
                    .ok_or(XsErrno::ENOENT)?;
                conn.watches.remove(pos);
                ok(ty)
            }
            MsgType::TransactionStart => {
                if tx != 0 {
                    return Err(if self.txs.contains_key(&tx) {
                        XsErrno::EBUSY
                    } else {
                        XsErrno::ENOENT
                    });
                }
                let open = self.txs.values().filter(|t| t.conn == who.cid).count();
                if !who.privileged && open >= TRANSACTION_QUOTA {
                    return Err(XsErrno::ENOSPC);
                }
                let mut id = self.next_tx;
                while id == 0 || self.txs.contains_key(&id) {
                    id = id.wrapping_add(1);
                }
                self.next_tx = id.wrapping_add(1);
                self.txs.insert(
                    id,
                    Tx {
                        conn: who.cid,
                        base: self.tree.clone(),
                        work: self.tree.clone(),
                        accessed: BTreeSet::new(),
                        fired: Vec::new(),
                    },
                );
                Ok((ty, wire::join_strings([id.to_string().as_bytes()])))
            }
            MsgType::TransactionEnd => {
                if self.txs.get(&tx).is_none_or(|t| t.conn != who.cid) {
                    return Err(XsErrno::ENOENT);
                }
                let commit = match one()? {
                    "T" => true,
                    "F" => false,
                    _ => return Err(XsErrno::EINVAL),
                };
                let Some(t) = self.txs.remove(&tx) else {
                    return Err(XsErrno::ENOENT);
                };
                if !commit {
                    return ok(ty);
                }
                if self.eagain_commits > 0 {
                    self.eagain_commits -= 1;
                    self.stats.conflicts += 1;
                    return Err(XsErrno::EAGAIN);
                }
                let conflict = t.accessed.iter().any(|p| {
                    self.tree.get(p).map(|n| n.generation) != t.base.get(p).map(|n| n.generation)
                });
                if conflict {
                    self.stats.conflicts += 1;
                    return Err(XsErrno::EAGAIN);
                }
                for p in &t.accessed {
                    match t.work.get(p) {
                        Some(n) => {
                            self.tree.insert(p.clone(), n.clone());
                        }
                        None => {
                            self.tree.remove(p);
                        }
                    }
                }
                self.stats.commits += 1;
                for fire in &t.fired {
                    self.deliver(fire);
                }
                ok(ty)
            }
            MsgType::GetDomainPath => {
                let domid: DomId = one()?.parse().map_err(|_| XsErrno::EINVAL)?;
                Ok((ty, wire::join_strings([home(domid).as_bytes()])))
            }
            MsgType::IsDomainIntroduced => {
                if !who.privileged {
                    return Err(XsErrno::EACCES);
                }
                let domid: DomId = one()?.parse().map_err(|_| XsErrno::EINVAL)?;
                let yes: &[u8] = if self.introduced.contains(&domid) {
                    b"T"
                } else {
                    b"F"
                };
                Ok((ty, wire::join_strings([yes])))
            }
            MsgType::ResetWatches => {
                if let Some(c) = self.conns.get_mut(&who.cid) {
                    c.watches.clear();
                }
                self.txs.retain(|_, t| t.conn != who.cid);
                ok(ty)
            }
            MsgType::Control
            | MsgType::Introduce
            | MsgType::Release
            | MsgType::Resume
            | MsgType::SetTarget => Err(if who.privileged {
                XsErrno::ENOSYS
            } else {
                XsErrno::EACCES
            }),
            MsgType::WatchEvent | MsgType::Error => Err(XsErrno::ENOSYS),
        }
    }

    /// Send the reply to `msg` on `cid`, applying any queued fault.
    fn reply(&mut self, cid: ConnId, msg: &Message, outcome: Outcome) {
        let (ty, payload) = match outcome.reply {
            Ok((ty, p)) => (ty.raw(), p),
            Err(e) => (
                MsgType::Error.raw(),
                wire::join_strings([e.name().as_bytes()]),
            ),
        };
        let (req_id, tx_id) = (msg.req_id, msg.tx_id);
        let encode = |ty: u32, req_id: u32, p: &[u8]| {
            wire::encode_message(ty, req_id, tx_id, p).unwrap_or_default()
        };
        match self.faults.pop_front() {
            None => self.send(cid, encode(ty, req_id, &payload)),
            Some(ReplyFault::WrongReqId) => {
                self.send(cid, encode(ty, req_id.wrapping_add(1000), &payload))
            }
            Some(ReplyFault::WrongType) => {
                self.send(cid, encode(MsgType::Resume.raw(), req_id, &payload))
            }
            Some(ReplyFault::OversizedLength) => {
                let h = wire::encode_header(ty, req_id, tx_id, PAYLOAD_MAX as u32 + 1);
                self.send(cid, h.to_vec());
            }
            Some(ReplyFault::Truncated) => {
                let mut m = encode(ty, req_id, &payload);
                m.truncate(wire::HEADER_LEN + payload.len() / 2);
                if payload.is_empty() {
                    m.truncate(wire::HEADER_LEN / 2);
                }
                self.send(cid, m);
                if let Some(c) = self.conns.get(&cid) {
                    let _ = c.out.send(Out::Close);
                }
            }
            Some(ReplyFault::Payload(p)) => self.send(cid, encode(ty, req_id, &p)),
            Some(ReplyFault::ErrorPayload(p)) => {
                self.send(cid, encode(MsgType::Error.raw(), req_id, &p))
            }
            Some(ReplyFault::Unsolicited) => {
                self.send(cid, encode(ty, req_id.wrapping_add(77), &payload));
                self.send(cid, encode(ty, req_id, &payload));
            }
            Some(ReplyFault::EventPayload(p)) => {
                self.send(cid, encode(MsgType::WatchEvent.raw(), 0, &p));
                self.send(cid, encode(ty, req_id, &payload));
            }
        }
        for m in outcome.after {
            self.stats.events += 1;
            self.send(cid, m);
        }
    }

    fn drop_conn(&mut self, cid: ConnId) {
        if let Some(c) = self.conns.remove(&cid) {
            let _ = c.out.send(Out::Close);
        }
        self.txs.retain(|_, t| t.conn != cid);
    }
}

/// One `XS_DIRECTORY_PART` reply: `generation\0` then the children from byte `off`
/// of the NUL-separated list that fit, plus a final empty string once the
/// list is complete (xenstored's `send_directory_part`).
fn directory_part(generation: u64, list: &[u8], off: usize) -> Vec<u8> {
    let mut out = wire::join_strings([generation.to_string().as_bytes()]);
    if off >= list.len() {
        out.push(0);
        return out;
    }
    let maxlen = PAYLOAD_MAX - out.len() - 1;
    let mut len = 0;
    for name in list[off..].split_inclusive(|b| *b == 0) {
        if len + name.len() > maxlen {
            break;
        }
        len += name.len();
    }
    out.extend_from_slice(&list[off..off + len]);
    if off + len == list.len() {
        out.push(0);
    }
    out
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the store from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake xenstored. Dropping it closes every connection.
#[derive(Debug)]
pub struct FakeXenstored {
    shared: Arc<Shared>,
}

impl Default for FakeXenstored {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeXenstored {
    /// A store holding `/`, `/local/domain/0` and `/tool`, all `n0`.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new()),
            }),
        }
    }

    /// A new client connection as `domid` (0 is privileged).
    pub fn connect(&self, domid: DomId) -> Result<UnixStream, FakeError> {
        let (client, server) = UnixStream::pair()?;
        self.serve(server, domid)?;
        Ok(client)
    }

    /// Serve xenstore to `domid` on `stream` (e.g. one accepted from a
    /// listener the test created at a socket path), on two threads.
    pub fn serve(&self, stream: UnixStream, domid: DomId) -> Result<(), FakeError> {
        let mut writer = stream.try_clone()?;
        let mut reader = stream;
        let (tx, rx) = mpsc::channel::<Out>();
        let cid = {
            let mut st = self.shared.lock();
            let cid = st.next_conn;
            st.next_conn += 1;
            st.conns.insert(
                cid,
                Conn {
                    domid,
                    out: tx,
                    watches: Vec::new(),
                },
            );
            cid
        };
        thread::Builder::new()
            .name(format!("fake-xs-w{cid}"))
            .spawn(move || {
                for out in rx {
                    match out {
                        Out::Msg(m) => {
                            if writer.write_all(&m).is_err() {
                                break;
                            }
                        }
                        Out::Close => break,
                    }
                }
                let _ = writer.shutdown(std::net::Shutdown::Both);
            })?;
        let shared = self.shared.clone();
        thread::Builder::new()
            .name(format!("fake-xs-r{cid}"))
            .spawn(move || {
                // Any read error ends the connection: EOF, I/O errors, and
                // oversized requests, a protocol violation xenstored answers
                // by dropping the client.
                while let Ok(msg) = wire::read_message(&mut reader) {
                    let mut st = shared.lock();
                    if !st.conns.contains_key(&cid) {
                        break;
                    }
                    let outcome = st.process(cid, &msg);
                    st.reply(cid, &msg, outcome);
                }
                shared.lock().drop_conn(cid);
            })?;
        Ok(())
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Close every connection (the clients see EOF).
    pub fn disconnect_all(&self) {
        let mut st = self.shared.lock();
        let ids: Vec<ConnId> = st.conns.keys().copied().collect();
        for cid in ids {
            st.drop_conn(cid);
        }
    }

    /// The next `n` transaction commits fail with `EAGAIN`.
    pub fn fail_next_commits(&self, n: u32) {
        self.shared.lock().eagain_commits = n;
    }

    /// Replace the next reply (on any connection) with a malformed one.
    /// Faults queue up in order.
    pub fn inject_reply_fault(&self, fault: ReplyFault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Fire `count` watch events for `path` as if it changed that many times
    /// (without changing it).
    pub fn watch_storm(&self, path: &str, count: usize) {
        let mut st = self.shared.lock();
        let mut perms = Vec::new();
        let mut p = Some(path);
        while let Some(name) = p {
            if let Some(n) = st.tree.get(name) {
                perms.push(n.perms.clone());
                break;
            }
            p = parent(name);
        }
        let fire = Fire {
            path: path.to_owned(),
            exact: false,
            perms,
        };
        for _ in 0..count {
            st.deliver(&fire);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> FakeStats {
        self.shared.lock().stats
    }

    fn internal(&self, ty: MsgType, payload: Vec<u8>) -> Result<Vec<u8>, FakeError> {
        let msg = Message {
            ty: ty.raw(),
            req_id: 0,
            tx_id: 0,
            payload,
        };
        let mut st = self.shared.lock();
        st.process(INTERNAL, &msg)
            .reply
            .map(|(_, p)| p)
            .map_err(FakeError::Xs)
    }

    /// Write a node as dom0 (fires watches).
    pub fn write(&self, path: &str, value: &[u8]) -> Result<(), FakeError> {
        let mut p = wire::join_strings([path.as_bytes()]);
        p.extend_from_slice(value);
        self.internal(MsgType::Write, p).map(drop)
    }

    /// Create a node as dom0 (fires watches if it is new).
    pub fn mkdir(&self, path: &str) -> Result<(), FakeError> {
        self.internal(MsgType::Mkdir, wire::join_strings([path.as_bytes()]))
            .map(drop)
    }

    /// Remove a subtree as dom0 (fires watches).
    pub fn rm(&self, path: &str) -> Result<(), FakeError> {
        self.internal(MsgType::Rm, wire::join_strings([path.as_bytes()]))
            .map(drop)
    }

    /// Set a node's permissions as dom0 (fires watches).
    pub fn set_perms(&self, path: &str, perms: &Permissions) -> Result<(), FakeError> {
        let mut p = wire::join_strings([path.as_bytes()]);
        p.extend_from_slice(&perms.to_wire());
        self.internal(MsgType::SetPerms, p).map(drop)
    }

    /// A node's value, `None` if missing.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.shared.lock().tree.get(path).map(|n| n.value.clone())
    }

    /// A node's permissions, `None` if missing.
    pub fn get_perms(&self, path: &str) -> Option<Permissions> {
        self.shared.lock().tree.get(path).map(|n| n.perms.clone())
    }

    /// Create a domain's home as libxl does and fire `@introduceDomain`:
    /// `/local/domain/<id>` (and `device`, `control`, `name`, `domid`)
    /// owned by dom0 and readable by the domain; `data`, `drivers`,
    /// `feature`, `attr`, `error` and `control/shutdown` owned by the
    /// domain. So the domain may write under `data/` but not, say, `foo`.
    pub fn add_domain(&self, domid: DomId) -> Result<(), FakeError> {
        let dom = home(domid);
        let ro = Permissions::new(0, Access::None).with(domid, Access::Read);
        let rw = Permissions::new(domid, Access::None);
        self.mkdir(&dom)?;
        self.set_perms(&dom, &ro)?;
        for sub in ["device", "control", "name", "domid"] {
            self.mkdir(&format!("{dom}/{sub}"))?;
            self.set_perms(&format!("{dom}/{sub}"), &ro)?;
        }
        self.write(&format!("{dom}/name"), format!("domU-{domid}").as_bytes())?;
        self.write(&format!("{dom}/domid"), domid.to_string().as_bytes())?;
        for sub in [
            "data",
            "drivers",
            "feature",
            "attr",
            "error",
            "control/shutdown",
        ] {
            self.mkdir(&format!("{dom}/{sub}"))?;
            self.set_perms(&format!("{dom}/{sub}"), &rw)?;
        }
        let mut st = self.shared.lock();
        st.introduced.insert(domid);
        let fire = Fire {
            path: crate::xenstore::INTRODUCE_DOMAIN.to_owned(),
            exact: false,
            perms: Vec::new(),
        };
        st.deliver(&fire);
        Ok(())
    }

    /// The domain died: forget it and fire `@releaseDomain`. Its nodes stay
    /// (the toolstack removes them).
    pub fn release_domain(&self, domid: DomId) {
        let mut st = self.shared.lock();
        st.introduced.remove(&domid);
        let fire = Fire {
            path: crate::xenstore::RELEASE_DOMAIN.to_owned(),
            exact: false,
            perms: Vec::new(),
        };
        st.deliver(&fire);
    }
}

impl Drop for FakeXenstored {
    fn drop(&mut self) {
        self.disconnect_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_helpers() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(!is_child("/ab", "/a"));
        assert!(is_child("/anything", "/"));
        assert!(is_valid_nodename("/"));
        assert!(!is_valid_nodename("/a/"));
        assert!(!is_valid_nodename("a"));
        assert!(!is_valid_nodename("/a//b"));
    }

    #[test]
    fn directory_part_chunks() {
        let list = wire::join_strings([&b"aa"[..], b"b"]);
        assert_eq!(directory_part(7, &list, 0), b"7\0aa\0b\0\0");
        assert_eq!(directory_part(7, &list, 3), b"7\0b\0\0");
        assert_eq!(directory_part(7, &list, 5), b"7\0\0");
        // A list larger than one reply is cut at a name boundary.
        let names: Vec<String> = (0..2000).map(|i| format!("n{i}")).collect();
        let list = wire::join_strings(names.iter().map(|n| n.as_bytes()));
        let part = directory_part(1, &list, 0);
        assert!(part.len() <= PAYLOAD_MAX);
        assert_eq!(part.last(), Some(&0));
        assert!(!part.ends_with(b"\0\0"), "not the last part");
    }

    #[test]
    fn creation_inherits_and_reowns() {
        let fake = FakeXenstored::new();
        fake.add_domain(3).unwrap();
        let p = fake.get_perms("/local/domain/3/data").unwrap();
        assert_eq!(p, Permissions::new(3, Access::None));
        fake.write("/local/domain/3/data/x/y", b"v").unwrap();
        assert_eq!(
            fake.get_perms("/local/domain/3/data/x").unwrap(),
            p,
            "dom0-created: inherited as is"
        );
        let reowned = reown(&Permissions::new(0, Access::Read).with(5, Access::Write), 7);
        assert_eq!(
            reowned,
            Permissions::new(7, Access::Read).with(5, Access::Write)
        );
    }
}
