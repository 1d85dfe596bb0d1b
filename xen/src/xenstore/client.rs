//! The xenstore client: requests, watches and transactions over one byte
//! stream (`/run/xenstored/socket` or `/dev/xen/xenbus`).
//!
//! One request is outstanding at a time (`&mut self`). Watch events may
//! arrive at any moment, also between a request and its reply: they are told
//! apart by type (`XS_WATCH_EVENT`) and queued, replies are matched by
//! `req_id`. A reply that cannot be matched, or a broken frame, means the
//! stream is out of step: the client then refuses further use
//! ([`XsError::Broken`]) and the owner reconnects.
//!
//! No user-space buffering sits between the stream and the parser, so
//! polling [`XsClient::as_fd`] is reliable once [`XsClient::pending_events`]
//! is zero.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use thiserror::Error;

use crate::DomId;
use crate::xenstore::perms::Permissions;
use crate::xenstore::wire::{
    self, ABS_PATH_MAX, Message, MsgType, PAYLOAD_MAX, REL_PATH_MAX, WireError, XsErrno,
};

/// Where xenstored listens in dom0, tried in order by [`XsClient::open`].
pub const SOCKET_PATHS: [&str; 2] = ["/run/xenstored/socket", "/var/run/xenstored/socket"];
/// The kernel's xenstore device (any domain with xenfs/xenbus).
pub const XENBUS_PATH: &str = "/dev/xen/xenbus";
/// Distinct watch events kept queued before new ones are dropped.
pub const DEFAULT_EVENT_QUEUE_LIMIT: usize = 4096;
/// Attempts [`XsClient::transaction`] makes before giving up on conflicts.
pub const DEFAULT_TRANSACTION_ATTEMPTS: u32 = 16;
/// Rounds of `XS_DIRECTORY_PART` restarts tolerated when the directory keeps
/// changing under the listing.
const DIRECTORY_PART_RESTARTS: u32 = 8;

/// Errors of xenstore operations.
#[derive(Debug, Error)]
pub enum XsError {
    /// xenstored refused the request.
    #[error("xenstore: {0}")]
    Remote(XsErrno),
    /// The stream could not be opened.
    #[error("open {path}: {source}")]
    Open {
        /// What was opened.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The stream failed or closed; the client is now [`XsError::Broken`].
    #[error("xenstore connection: {0}")]
    Connection(#[source] WireError),
    /// A reply did not have the expected shape.
    #[error("malformed reply: {0}")]
    MalformedReply(&'static str),
    /// An argument was refused before sending (bad path, NUL in a token,
    /// payload over `XENSTORE_PAYLOAD_MAX`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An earlier error left the stream out of step; reconnect.
    #[error("xenstore connection unusable after an earlier protocol error")]
    Broken,
    /// [`XsClient::transaction`] kept conflicting.
    #[error("transaction still conflicting (EAGAIN) after {0} attempts")]
    TransactionConflict(u32),
}

impl XsError {
    /// The xenstored error, if this is one.
    pub fn errno(&self) -> Option<XsErrno> {
        match self {
            Self::Remote(e) => Some(*e),
            _ => None,
        }
    }

    /// Whether xenstored said `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(XsErrno::ENOENT)
    }
}

/// One watch firing: `path` changed (or is the watched path itself, for the
/// initial event every watch gets on registration).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The path that changed (relative if the watch was registered relative).
    pub path: String,
    /// The token given at registration.
    pub token: String,
}

/// The two transports xenstored offers.
#[derive(Debug)]
pub enum XsStream {
    /// xenstored's Unix socket (dom0).
    Socket(UnixStream),
    /// The kernel's `/dev/xen/xenbus`.
    Device(File),
}

impl Read for XsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Socket(s) => s.read(buf),
            Self::Device(f) => f.read(buf),
        }
    }
}

impl Write for XsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Socket(s) => s.write(buf),
            Self::Device(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Socket(s) => s.flush(),
            Self::Device(f) => f.flush(),
        }
    }
}

impl AsFd for XsStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Socket(s) => s.as_fd(),
            Self::Device(f) => f.as_fd(),
        }
    }
}

/// Check a path before sending it: what xenstored accepts (`[A-Za-z0-9-/_@]`,
/// no `//`, no trailing `/`, bounded length). Relative paths are relative to
/// the connection's domain home; `@`-paths are the special watch paths.
pub fn check_path(path: &str) -> Result<(), XsError> {
    let bad = |why: &str| {
        let shown: String = path.chars().take(96).collect();
        Err(XsError::InvalidArgument(format!("path {shown:?}: {why}")))
    };
    if path.is_empty() {
        return bad("empty");
    }
    let max = if path.starts_with('/') {
        ABS_PATH_MAX
    } else {
        REL_PATH_MAX
    };
    if path.len() > max {
        return bad("too long");
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b))
    {
        return bad("character outside [A-Za-z0-9-/_@]");
    }
    if path.contains("//") {
        return bad("contains //");
    }
    if path.len() > 1 && path.ends_with('/') {
        return bad("ends in /");
    }
    Ok(())
}

fn path_arg(path: &str) -> Result<Vec<u8>, XsError> {
    check_path(path)?;
    Ok(wire::join_strings([path.as_bytes()]))
}

fn expect_ok(reply: &[u8]) -> Result<(), XsError> {
    if reply == b"OK\0" {
        Ok(())
    } else {
        Err(XsError::MalformedReply("expected \"OK\""))
    }
}

fn malformed(e: WireError) -> XsError {
    match e {
        WireError::Malformed(why) => XsError::MalformedReply(why),
        other => XsError::Connection(other),
    }
}

/// The node operations, available on the client itself (outside any
/// transaction) and on a [`Transaction`].
pub trait XsOps {
    /// Send one request in this handle's transaction context and return the
    /// reply payload (an `XS_ERROR` reply becomes [`XsError::Remote`]).
    fn request(&mut self, ty: MsgType, payload: &[u8]) -> Result<Vec<u8>, XsError>;

    /// The value of a node (raw bytes; usually ASCII without a NUL).
    fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.request(MsgType::Read, &path_arg(path)?)
    }

    /// The value of a node as UTF-8.
    fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        String::from_utf8(self.read(path)?)
            .map_err(|_| XsError::MalformedReply("value is not UTF-8"))
    }

    /// The value, or `None` if the node does not exist.
    fn try_read(&mut self, path: &str) -> Result<Option<Vec<u8>>, XsError> {
        match self.read(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the node exists (and is readable).
    fn exists(&mut self, path: &str) -> Result<bool, XsError> {
        Ok(self.try_read(path)?.is_some())
    }

    /// Set a node's value, creating it and missing parents.
    fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        check_path(path)?;
        let mut payload = wire::join_strings([path.as_bytes()]);
        payload.extend_from_slice(value);
        expect_ok(&self.request(MsgType::Write, &payload)?)
    }

    /// Create a node (and missing parents) with an empty value; an existing
    /// node is left alone.
    fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        expect_ok(&self.request(MsgType::Mkdir, &path_arg(path)?)?)
    }

    /// Remove a node and everything below it. Removing a missing node whose
    /// parent exists succeeds.
    fn rm(&mut self, path: &str) -> Result<(), XsError> {
        expect_ok(&self.request(MsgType::Rm, &path_arg(path)?)?)
    }

    /// The names of a node's children. Lists too large for one reply are
    /// fetched with `XS_DIRECTORY_PART`.
    fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        let arg = path_arg(path)?;
        match self.request(MsgType::Directory, &arg) {
            Ok(reply) => Ok(wire::split_strings(&reply)
                .map_err(malformed)?
                .into_iter()
                .map(str::to_owned)
                .collect()),
            Err(e) if e.errno() == Some(XsErrno::E2BIG) => directory_parts(self, path),
            Err(e) => Err(e),
        }
    }

    /// A node's permissions.
    fn get_perms(&mut self, path: &str) -> Result<Permissions, XsError> {
        let reply = self.request(MsgType::GetPerms, &path_arg(path)?)?;
        let strings = wire::split_strings(&reply).map_err(malformed)?;
        Permissions::parse(strings).map_err(malformed)
    }

    /// Replace a node's permissions (owner or privileged domains only).
    fn set_perms(&mut self, path: &str, perms: &Permissions) -> Result<(), XsError> {
        let mut payload = path_arg(path)?;
        payload.extend_from_slice(&perms.to_wire());
        expect_ok(&self.request(MsgType::SetPerms, &payload)?)
    }
}

/// `XS_DIRECTORY_PART` listing: each reply is `generation\0` then children
/// from byte `offset` of the child list, ending with an empty string once the
/// list is complete. A changed generation means the directory changed: start
/// over.
fn directory_parts<O: XsOps + ?Sized>(ops: &mut O, path: &str) -> Result<Vec<String>, XsError> {
    'restart: for _ in 0..DIRECTORY_PART_RESTARTS {
        let mut children = Vec::new();
        let mut offset = 0usize;
        let mut generation: Option<String> = None;
        loop {
            let mut payload = path_arg(path)?;
            payload.extend_from_slice(offset.to_string().as_bytes());
            payload.push(0);
            let reply = ops.request(MsgType::DirectoryPart, &payload)?;
            let strings = wire::split_strings(&reply).map_err(malformed)?;
            let Some((gen_now, rest)) = strings.split_first() else {
                return Err(XsError::MalformedReply("empty directory part"));
            };
            match &generation {
                None => generation = Some((*gen_now).to_owned()),
                Some(g) if g != gen_now => continue 'restart,
                Some(_) => {}
            }
            let mut progressed = false;
            for name in rest {
                if name.is_empty() {
                    return Ok(children);
                }
                offset += name.len() + 1;
                children.push((*name).to_owned());
                progressed = true;
            }
            if !progressed {
                return Err(XsError::MalformedReply("directory part made no progress"));
            }
        }
    }
    Err(XsError::MalformedReply(
        "directory kept changing during a partial listing",
    ))
}

/// A xenstore connection.
#[derive(Debug)]
pub struct XsClient<S: Read + Write + AsFd = XsStream> {
    stream: S,
    next_req_id: u32,
    events: VecDeque<WatchEvent>,
    queued: HashSet<WatchEvent>,
    event_limit: usize,
    dropped_events: u64,
    malformed_events: u64,
    broken: bool,
    tx_attempts: u32,
}

impl XsClient<XsStream> {
    /// Connect to xenstored: its socket if present (dom0), else
    /// `/dev/xen/xenbus`.
    pub fn open() -> Result<Self, XsError> {
        for p in SOCKET_PATHS {
            match Self::connect_socket(Path::new(p)) {
                Ok(c) => return Ok(c),
                Err(e) => log::debug!("xenstore socket {p}: {e}"),
            }
        }
        Self::open_device(Path::new(XENBUS_PATH))
    }

    /// Connect to xenstored's Unix socket at `path`.
    pub fn connect_socket(path: &Path) -> Result<Self, XsError> {
        let s = UnixStream::connect(path).map_err(|source| XsError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(XsStream::Socket(s)))
    }

    /// Open the kernel's xenstore device at `path`.
    pub fn open_device(path: &Path) -> Result<Self, XsError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| XsError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self::new(XsStream::Device(f)))
    }
}

impl<S: Read + Write + AsFd> XsClient<S> {
    /// Speak xenstore over `stream` (must be blocking).
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            next_req_id: 1,
            events: VecDeque::new(),
            queued: HashSet::new(),
            event_limit: DEFAULT_EVENT_QUEUE_LIMIT,
            dropped_events: 0,
            malformed_events: 0,
            broken: false,
            tx_attempts: DEFAULT_TRANSACTION_ATTEMPTS,
        }
    }

    /// Bound the watch-event queue (distinct events; identical events are
    /// merged while queued, as xenstored itself does).
    pub fn set_event_queue_limit(&mut self, limit: usize) {
        self.event_limit = limit.max(1);
    }

    /// Bound the attempts of [`XsClient::transaction`] (at least 1).
    pub fn set_transaction_attempts(&mut self, attempts: u32) {
        self.tx_attempts = attempts.max(1);
    }

    /// Whether an earlier protocol or I/O error made the connection unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Send a request with an explicit transaction id and return the reply
    /// payload. The building block of everything else; exposed for
    /// protocol-level tests. Does not validate `payload`.
    pub fn raw_request(
        &mut self,
        ty: MsgType,
        tx_id: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, XsError> {
        if self.broken {
            return Err(XsError::Broken);
        }
        if payload.len() > PAYLOAD_MAX {
            return Err(XsError::InvalidArgument(format!(
                "payload of {} bytes exceeds XENSTORE_PAYLOAD_MAX",
                payload.len()
            )));
        }
        let req_id = self.next_req_id;
        self.next_req_id = self.next_req_id.wrapping_add(1);
        let msg =
            wire::encode_message(ty.raw(), req_id, tx_id, payload).map_err(|e| self.fail(e))?;
        if let Err(e) = self.stream.write_all(&msg) {
            return Err(self.fail(WireError::Io(e)));
        }
        loop {
            let reply = self.read_one()?;
            if reply.ty == MsgType::WatchEvent.raw() {
                self.queue_event(&reply.payload);
                continue;
            }
            if reply.req_id != req_id {
                self.broken = true;
                return Err(XsError::MalformedReply(
                    "reply to a request that is not outstanding",
                ));
            }
            if reply.ty == MsgType::Error.raw() {
                return wire::parse_error(&reply.payload)
                    .map(XsError::Remote)
                    .map_or_else(
                        |_| {
                            Err(XsError::MalformedReply(
                                "XS_ERROR payload is not a known error name",
                            ))
                        },
                        Err,
                    );
            }
            if reply.ty != ty.raw() {
                self.broken = true;
                return Err(XsError::MalformedReply(
                    "reply type differs from the request",
                ));
            }
            return Ok(reply.payload);
        }
    }

    fn fail(&mut self, e: WireError) -> XsError {
        self.broken = true;
        XsError::Connection(e)
    }

    fn read_one(&mut self) -> Result<Message, XsError> {
        match wire::read_message(&mut self.stream) {
            Ok(m) => Ok(m),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn queue_event(&mut self, payload: &[u8]) {
        let event = match wire::split_strings(payload) {
            Ok(v) if v.len() == 2 => WatchEvent {
                path: v[0].to_owned(),
                token: v[1].to_owned(),
            },
            _ => {
                // Framing is intact, so the stream stays usable; the event
                // itself is useless.
                self.malformed_events += 1;
                log::warn!(
                    "dropping malformed xenstore watch event ({} bytes)",
                    payload.len()
                );
                return;
            }
        };
        if self.queued.contains(&event) {
            return;
        }
        if self.events.len() >= self.event_limit {
            self.dropped_events += 1;
            return;
        }
        self.queued.insert(event.clone());
        self.events.push_back(event);
    }

    fn pop_event(&mut self) -> Option<WatchEvent> {
        let e = self.events.pop_front()?;
        self.queued.remove(&e);
        Some(e)
    }

    /// Register a watch on `path` and its descendants. xenstored fires it
    /// once right away (with `path` itself), then on every change.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let payload = watch_args(path, token)?;
        expect_ok(&self.raw_request(MsgType::Watch, 0, &payload)?)
    }

    /// Remove a watch registered with the same `path` and `token`. Events
    /// already queued stay queued.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let payload = watch_args(path, token)?;
        expect_ok(&self.raw_request(MsgType::Unwatch, 0, &payload)?)
    }

    /// Watch domain creation (`@introduceDomain`): fires when xenstored
    /// learns of a new domain.
    pub fn watch_introduce_domain(&mut self, token: &str) -> Result<(), XsError> {
        self.watch(INTRODUCE_DOMAIN, token)
    }

    /// Watch domain destruction (`@releaseDomain`): fires when a domain is
    /// gone; the watcher then finds out which one by looking.
    pub fn watch_release_domain(&mut self, token: &str) -> Result<(), XsError> {
        self.watch(RELEASE_DOMAIN, token)
    }

    /// Drop all watches (and transactions) of this connection. Only for
    /// socket connections: over `/dev/xen/xenbus` the kernel multiplexes its
    /// own watches and every other user onto one xenstore connection.
    pub fn reset_watches(&mut self) -> Result<(), XsError> {
        expect_ok(&self.raw_request(MsgType::ResetWatches, 0, b"\0")?)
    }

    /// Events received and not yet taken.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Events dropped because the queue was full (the owner should rescan).
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Watch events dropped because their payload was malformed.
    pub fn malformed_events(&self) -> u64 {
        self.malformed_events
    }

    /// Take a queued event, or one already readable on the stream; never
    /// blocks waiting for one.
    pub fn try_next_event(&mut self) -> Result<Option<WatchEvent>, XsError> {
        self.next_event(Some(Duration::ZERO))
    }

    /// Wait up to `timeout` (`None`: forever) for a watch event.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent>, XsError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(e) = self.pop_event() {
                return Ok(Some(e));
            }
            if self.broken {
                return Err(XsError::Broken);
            }
            let wait = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so a sub-millisecond remainder still waits.
                    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(self.fail(WireError::Io(e.into()))),
            }
            let msg = self.read_one()?;
            if msg.ty != MsgType::WatchEvent.raw() {
                self.broken = true;
                return Err(XsError::MalformedReply(
                    "reply received with no request outstanding",
                ));
            }
            self.queue_event(&msg.payload);
            if self.events.is_empty() && deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    /// The path of a domain's home directory (`/local/domain/<domid>`).
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String, XsError> {
        let arg = wire::join_strings([domid.to_string().as_bytes()]);
        let reply = self.raw_request(MsgType::GetDomainPath, 0, &arg)?;
        wire::one_string(&reply)
            .map(str::to_owned)
            .map_err(malformed)
    }

    /// Whether xenstored knows `domid` (privileged callers only).
    pub fn is_domain_introduced(&mut self, domid: DomId) -> Result<bool, XsError> {
        let arg = wire::join_strings([domid.to_string().as_bytes()]);
        let reply = self.raw_request(MsgType::IsDomainIntroduced, 0, &arg)?;
        match wire::one_string(&reply).map_err(malformed)? {
            "T" => Ok(true),
            "F" => Ok(false),
            _ => Err(XsError::MalformedReply("expected T or F")),
        }
    }

    /// Start a transaction. Dropping it without [`Transaction::commit`]
    /// aborts it.
    pub fn transaction_start(&mut self) -> Result<Transaction<'_, S>, XsError> {
        let reply = self.raw_request(MsgType::TransactionStart, 0, b"\0")?;
        let id = wire::one_string(&reply)
            .map_err(malformed)?
            .parse::<u32>()
            .ok()
            .filter(|id| *id != 0)
            .ok_or(XsError::MalformedReply(
                "transaction id is not a non-zero u32",
            ))?;
        Ok(Transaction {
            client: self,
            id,
            done: false,
        })
    }

    /// Run `body` in a transaction and commit it, retrying the whole body
    /// while xenstored answers `EAGAIN` (a conflicting change), at most
    /// [`XsClient::set_transaction_attempts`] times. Any other error aborts
    /// the transaction and is returned. `body` must be safe to re-run.
    pub fn transaction<T, F>(&mut self, mut body: F) -> Result<T, XsError>
    where
        F: FnMut(&mut Transaction<'_, S>) -> Result<T, XsError>,
    {
        for _ in 0..self.tx_attempts {
            let mut tx = self.transaction_start()?;
            match body(&mut tx) {
                Ok(v) => match tx.commit() {
                    Ok(()) => return Ok(v),
                    Err(e) if e.errno() == Some(XsErrno::EAGAIN) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    // Best effort: if the abort fails too, the first error
                    // is the one worth reporting.
                    let _ = tx.abort();
                    if e.errno() != Some(XsErrno::EAGAIN) {
                        return Err(e);
                    }
                }
            }
        }
        Err(XsError::TransactionConflict(self.tx_attempts))
    }

    /// The stream's descriptor, to poll for watch events (check
    /// [`XsClient::pending_events`] first: queued events do not make it
    /// readable).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// The underlying stream.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

/// The special path of domain-creation watches.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// The special path of domain-destruction watches.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

fn watch_args(path: &str, token: &str) -> Result<Vec<u8>, XsError> {
    check_path(path)?;
    if token.as_bytes().contains(&0) {
        return Err(XsError::InvalidArgument("watch token contains NUL".into()));
    }
    Ok(wire::join_strings([path.as_bytes(), token.as_bytes()]))
}

impl<S: Read + Write + AsFd> XsOps for XsClient<S> {
    fn request(&mut self, ty: MsgType, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        self.raw_request(ty, 0, payload)
    }
}

/// An open transaction: node operations through it see a snapshot and are
/// applied atomically at [`Transaction::commit`].
#[derive(Debug)]
pub struct Transaction<'a, S: Read + Write + AsFd = XsStream> {
    client: &'a mut XsClient<S>,
    id: u32,
    done: bool,
}

impl<S: Read + Write + AsFd> Transaction<'_, S> {
    /// The transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn end(&mut self, commit: bool) -> Result<(), XsError> {
        // Whatever the reply, xenstored has forgotten the transaction.
        self.done = true;
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        expect_ok(
            &self
                .client
                .raw_request(MsgType::TransactionEnd, self.id, arg)?,
        )
    }

    /// Commit; `Err(Remote(EAGAIN))` means a conflicting change won and
    /// nothing was applied.
    pub fn commit(mut self) -> Result<(), XsError> {
        self.end(true)
    }

    /// Abort: nothing is applied.
    pub fn abort(mut self) -> Result<(), XsError> {
        self.end(false)
    }
}

impl<S: Read + Write + AsFd> XsOps for Transaction<'_, S> {
    fn request(&mut self, ty: MsgType, payload: &[u8]) -> Result<Vec<u8>, XsError> {
        if self.done {
            return Err(XsError::InvalidArgument("transaction already ended".into()));
        }
        self.client.raw_request(ty, self.id, payload)
    }
}

impl<S: Read + Write + AsFd> Drop for Transaction<'_, S> {
    fn drop(&mut self) {
        if !self.done && !self.client.broken {
            if let Err(e) = self.end(false) {
                log::warn!("aborting xenstore transaction {}: {e}", self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_checks() {
        for ok in [
            "/",
            "/local/domain/1",
            "device/vmsg/0",
            "@releaseDomain",
            "/a-b_c/9",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a//b", "/a/", "/a b", "/a\0b", "/ü", "a/"] {
            assert!(
                matches!(check_path(bad), Err(XsError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        assert!(check_path(&format!("/{}", "a".repeat(ABS_PATH_MAX - 1))).is_ok());
        assert!(check_path(&format!("/{}", "a".repeat(ABS_PATH_MAX))).is_err());
        assert!(check_path(&"a".repeat(REL_PATH_MAX + 1)).is_err());
    }

    #[test]
    fn watch_arguments() {
        assert_eq!(watch_args("/a", "tok").unwrap(), b"/a\0tok\0");
        assert!(watch_args("/a", "t\0k").is_err());
        assert!(watch_args("/a/", "t").is_err());
    }

    #[test]
    fn ok_replies_are_strict() {
        assert!(expect_ok(b"OK\0").is_ok());
        for bad in [&b"OK"[..], b"ok\0", b"", b"OK\0\0"] {
            assert!(expect_ok(bad).is_err());
        }
    }
}
