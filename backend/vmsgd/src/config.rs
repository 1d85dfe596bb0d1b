//! The daemon's TOML configuration: which guests, on which bus, with which
//! devices.
//!
//! Every error names the file, the line and column, what is wrong and how to
//! fix it. The format is documented in `docs/configuration.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;
use vmsg_proto::Profile;

mod i2c;
mod locate;
pub use self::i2c::{AdapterSpec, ChipSpec, I2cDeviceConfig};

/// A configuration error, located in its file. A file with several
/// errors gives the first one (in file order) here and the others in
/// [`ConfigError::more`]; `Display` prints all of them.
#[derive(Debug, Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 if unknown.
    pub line: usize,
    /// 1-based column, 0 if unknown.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
    /// The file's other errors, in file order.
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    /// Every error: this one, then [`ConfigError::more`].
    pub fn all(&self) -> impl Iterator<Item = &ConfigError> {
        std::iter::once(self).chain(self.more.iter())
    }

    /// One error holding `errors` (sorted by position), or `Ok` if there
    /// are none.
    fn check(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        // Errors without a line (whole-file ones) come last.
        errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        let mut errors = errors.into_iter();
        match errors.next() {
            None => Ok(()),
            Some(mut first) => {
                first.more = errors.collect();
                Err(first)
            }
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.all().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.line > 0 {
                write!(f, "{}:{}:{}: ", e.file.display(), e.line, e.column)?;
            } else {
                write!(f, "{}: ", e.file.display())?;
            }
            write!(f, "{}", e.message)?;
            if !e.fix.is_empty() {
                write!(f, "\n  fix: {}", e.fix)?;
            }
        }
        Ok(())
    }
}

/// Where logs go.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    /// Standard error (the default; systemd's journal picks it up).
    #[default]
    Stderr,
    /// The local syslog daemon, facility `daemon`.
    Syslog,
}

/// `[daemon]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    /// Where logs go.
    #[serde(default)]
    pub log: LogTarget,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The system call filter (`docs/security.md`).
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// The user to run as once everything that needs root is open (a name
    /// or a number); unset: stay the starting user (without capabilities).
    #[serde(default)]
    pub user: Option<String>,
    /// The group to run as (a name or a number); unset: the user's group.
    #[serde(default)]
    pub group: Option<String>,
    /// The control socket `vmsgctl status` and `vmsgctl stats` talk to
    /// (mode 0600: root, or the daemon's user, only); unset: none.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
}

pub use crate::sandbox::SeccompMode;

fn default_log_level() -> String {
    "info".into()
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            log: LogTarget::default(),
            log_level: default_log_level(),
            seccomp: SeccompMode::default(),
            user: None,
            group: None,
            control_socket: None,
        }
    }
}

/// Wire profile names as written in the config.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProfileName {
    /// Spec v2 (the default).
    #[default]
    V2,
    /// OASIS patch v1 (QEMU RFC, OP-TEE).
    V1,
    /// Spec RFC2 (Linux RFC kernels, Xen's VMP proxy).
    Rfc2,
}

impl From<ProfileName> for Profile {
    fn from(p: ProfileName) -> Self {
        match p {
            ProfileName::V2 => Profile::V2,
            ProfileName::V1 => Profile::V1,
            ProfileName::Rfc2 => Profile::Rfc2,
        }
    }
}

/// `[guest.bus]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BusConfig {
    /// The built-in local bus: a Unix socket a driver process connects to.
    Local {
        /// Path of the guest's Unix socket.
        socket: PathBuf,
        /// Wire profile.
        #[serde(default)]
        profile: ProfileName,
        /// Largest message, header included (52..=65535; 264 recommended).
        #[serde(default = "default_max_msg_size")]
        max_msg_size: u32,
        /// Keep polling the ring this many microseconds before sleeping.
        #[serde(default)]
        poll_spin_us: u64,
    },
    /// The Linux RFC virtio-msg loopback bus: vmsgd serves the devices to
    /// its own kernel through `/dev/virtio-msg-lb` and `/dev/virtio-msg-N`
    /// (docs/linux-user-bus.md). That kernel speaks only `rfc2`.
    LinuxUser {
        /// Wire profile; must be `rfc2`.
        #[serde(default = "rfc2")]
        profile: ProfileName,
        /// The loopback control node.
        #[serde(default = "default_lb_control")]
        control: PathBuf,
        /// The message node.
        #[serde(default = "default_lb_channel")]
        channel: PathBuf,
        /// The device tree's reserved-memory directory (where `vmsglb@…` is).
        #[serde(default = "default_reserved_memory")]
        reserved_memory: PathBuf,
        /// Physical base of the pool, if the device tree does not say.
        pool_base: Option<u64>,
        /// Ask the kernel to REMOVE the devices on stop. Off by default: the
        /// RFC loopback's REMOVE deadlocks inside the kernel.
        #[serde(default)]
        kernel_remove: bool,
    },
    /// The Xen bus: vmsgd in dom0 serves the Xen domain named like the
    /// guest over grants, an event channel and xenstore
    /// (docs/xen-bus.md). Served by `vmsgd watch` / `vmsgd run --domain`,
    /// one process per domain, from a file per domain.
    Xen {
        /// Device id: `device/vmsg/<devid>` in the guest's xenstore.
        #[serde(default)]
        devid: u32,
        /// How vmsgd reaches the guest's memory.
        #[serde(default)]
        memory: XenMemoryMode,
        /// Grant mode: the most grants the guest may announce (the bound
        /// on the grant cache).
        #[serde(default = "default_max_grants")]
        max_grants: u32,
        /// Foreign mode: the guest's RAM as GFN runs `first+count,...`
        /// (required there, refused in grant mode).
        ranges: Option<String>,
        /// Wire profile.
        #[serde(default)]
        profile: ProfileName,
        /// Largest message, header included (the bus uses the minimum of
        /// both sides).
        #[serde(default = "default_max_msg_size")]
        max_msg_size: u32,
        /// Largest ring vmsgd maps: `2^order` pages (0..=8).
        #[serde(default = "default_max_ring_page_order")]
        max_ring_page_order: u32,
        /// Keep polling the ring this many microseconds before sleeping.
        #[serde(default)]
        poll_spin_us: u64,
    },
}

/// How a Xen guest's memory is reached (docs/xen-bus.md §6).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XenMemoryMode {
    /// The guest announces a pool of granted pages; driver addresses are
    /// grant DMA addresses (the default; any guest type).
    #[default]
    Grant,
    /// vmsgd maps the guest's RAM ranges from this configuration by frame
    /// number (privileged; driver addresses are guest-physical).
    Foreign,
}

/// Largest `max_grants` accepted (1 GiB of guest memory).
pub const MAX_XEN_GRANTS: u32 = 1 << 18;

fn default_max_grants() -> u32 {
    4096
}

fn default_max_ring_page_order() -> u32 {
    4
}

fn rfc2() -> ProfileName {
    ProfileName::Rfc2
}

fn default_lb_control() -> PathBuf {
    "/dev/virtio-msg-lb".into()
}

fn default_lb_channel() -> PathBuf {
    "/dev/virtio-msg-0".into()
}

fn default_reserved_memory() -> PathBuf {
    "/proc/device-tree/reserved-memory".into()
}

fn default_max_msg_size() -> u32 {
    vmsg_proto::RECOMMENDED_MAX_MSG_SIZE as u32
}

/// The I/O engine of a block device, as written in the config.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BlkEngine {
    /// io_uring: many requests in flight per queue, completed
    /// asynchronously. The default: with requests in flight it does several
    /// times the I/O of `Sync` on `vmsgctl bench blk` (docs/performance.md).
    #[default]
    IoUring,
    /// `preadv`/`pwritev` on the guest's thread, one request at a time.
    Sync,
}

impl From<BlkEngine> for vmsg_devices::blk::engine::Engine {
    fn from(e: BlkEngine) -> Self {
        match e {
            BlkEngine::IoUring => Self::IoUring,
            BlkEngine::Sync => Self::Sync,
        }
    }
}

/// One `[[guest.device]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DeviceConfig {
    /// virtio-rng.
    Rng {
        /// Device number on the bus (default: the next free one).
        dev_num: Option<u16>,
        /// Bytes per second this guest may draw (default: unlimited).
        rate_limit: Option<u64>,
    },
    /// virtio-blk on a raw image file or a host block device.
    Blk {
        /// Device number on the bus (default: the next free one).
        dev_num: Option<u16>,
        /// The image file or block device (relative paths are taken from
        /// the config file's directory).
        path: PathBuf,
        /// Refuse writes and offer VIRTIO_BLK_F_RO.
        #[serde(default)]
        read_only: bool,
        /// Open with `O_DIRECT`, bypassing the host page cache.
        #[serde(default)]
        direct: bool,
        /// I/O engine.
        #[serde(default)]
        engine: BlkEngine,
        /// Request queues (more than one offers VIRTIO_BLK_F_MQ).
        #[serde(default = "default_blk_queues")]
        num_queues: u16,
        /// Maximum size of each queue.
        #[serde(default = "default_blk_queue_size")]
        queue_size: u16,
        /// GET_ID string: at most 20 printable ASCII bytes.
        #[serde(default)]
        serial: String,
        /// Start in writeback mode (FLUSH makes writes durable); `false`
        /// makes every write durable before it completes.
        #[serde(default = "default_true")]
        writeback: bool,
    },
    /// virtio-i2c: a host adapter passed through for an allow-list of
    /// addresses, or simulated chips (`config/i2c.rs`).
    I2c(I2cDeviceConfig),
}

fn default_blk_queues() -> u16 {
    1
}

fn default_blk_queue_size() -> u16 {
    256
}

fn default_true() -> bool {
    true
}

impl DeviceConfig {
    /// The configured device number, if any.
    pub fn dev_num(&self) -> Option<u16> {
        match self {
            DeviceConfig::Rng { dev_num, .. } | DeviceConfig::Blk { dev_num, .. } => *dev_num,
            DeviceConfig::I2c(c) => c.dev_num,
        }
    }

    /// The device kind as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceConfig::Rng { .. } => "rng",
            DeviceConfig::Blk { .. } => "blk",
            DeviceConfig::I2c(_) => "i2c",
        }
    }
}

/// A `[[guest]]` as written (built by `locate`).
#[derive(Debug)]
struct RawGuest {
    name: Spanned<String>,
    bus: Spanned<BusConfig>,
    device: Vec<Spanned<DeviceConfig>>,
}

/// The file as written (built by `locate`, every table checked on its own).
#[derive(Debug)]
struct RawConfig {
    daemon: DaemonSection,
    /// Where each key of `[daemon]` is.
    daemon_keys: BTreeMap<String, Range<usize>>,
    guest: Vec<Spanned<RawGuest>>,
}

/// One guest, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    /// Unique name.
    pub name: String,
    /// Its bus.
    pub bus: BusConfig,
    /// Its devices with their final device numbers.
    pub devices: Vec<(u16, DeviceConfig)>,
}

/// A whole, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// `[daemon]`.
    pub daemon: DaemonSection,
    /// `[[guest]]`s.
    pub guests: Vec<GuestConfig>,
}

struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| line_col(self.text, s.start));
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
            fix: fix.into(),
            more: Vec::new(),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Suggest a fix for a deserialization error from its message.
fn fix_for(message: &str) -> String {
    if message.contains("unknown field") {
        "remove that key or correct its spelling (the message lists the accepted keys)".into()
    } else if message.contains("missing field") {
        "add the missing key to this table".into()
    } else if message.contains("unknown variant") {
        "use one of the values the message lists".into()
    } else if message.contains("invalid type") {
        "give the value the type the message names (strings in quotes, numbers without)".into()
    } else if message.contains("invalid value") || message.contains("out of range") {
        "use a value in the range the message names".into()
    } else {
        "see docs/configuration.md for the format".into()
    }
}

impl Config {
    /// Read and validate the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
            fix: "check the path given to --config and its permissions".into(),
            more: Vec::new(),
        })?;
        Self::parse(path, &text)
    }

    /// Validate config text; `file` is used for error locations and as the
    /// base of relative image paths. Block device images are checked on
    /// this host: they must exist and be usable.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_inner(file, text, true)
    }

    /// [`Config::parse`] without looking at the host: images need not
    /// exist (for checking a config meant for another machine).
    pub fn parse_offline(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_inner(file, text, false)
    }

    fn parse_inner(file: &Path, text: &str, host_checks: bool) -> Result<Self, ConfigError> {
        let loc = Locator { file, text };
        // The structure first, every table on its own (all errors, each at
        // its key), then every rule; every error of both is reported.
        let raw = locate::read(&loc).map_err(|errors| {
            ConfigError::check(errors).err().unwrap_or_else(|| {
                loc.error(
                    None,
                    "unreadable configuration",
                    "see docs/configuration.md",
                )
            })
        })?;
        let mut errors = Vec::new();
        if log_level(&raw.daemon.log_level).is_none() {
            errors.push(loc.error(
                raw.daemon_keys.get("log_level").cloned(),
                format!(
                    "[daemon] log_level \"{}\" is not a log level",
                    raw.daemon.log_level
                ),
                "use one of error, warn, info, debug, trace",
            ));
        }
        if host_checks {
            for (key, value, check) in [
                ("user", &raw.daemon.user, Some(raw.daemon.user.as_deref())),
                ("group", &raw.daemon.group, None),
            ] {
                let Some(v) = value else { continue };
                let found = match check {
                    Some(user) => crate::sandbox::resolve_ids(user, None),
                    None => crate::sandbox::resolve_ids(None, Some(v)),
                };
                if let Err(e) = found {
                    errors.push(loc.error(
                        raw.daemon_keys.get(key).cloned(),
                        format!("[daemon] {key}: {e}"),
                        format!(
                            "create the {key} (e.g. `useradd --system vmsgd`) or give a numeric id"
                        ),
                    ));
                }
            }
        }
        let mut seen = Seen::default();
        let mut guests = Vec::new();
        for guest in raw.guest {
            if let Some(g) = check_guest(&loc, guest, host_checks, &mut seen, &mut errors) {
                guests.push(g);
            }
        }
        if guests.is_empty() && errors.is_empty() {
            errors.push(loc.error(
                None,
                "no [[guest]] is configured",
                "add a [[guest]] table with a name, a bus and at least one device (see docs/configuration.md)",
            ));
        }
        ConfigError::check(errors)?;
        Ok(Self {
            file: file.to_path_buf(),
            daemon: raw.daemon,
            guests,
        })
    }
}

/// What the guests checked so far use, for the rules across guests.
#[derive(Default)]
struct Seen {
    names: BTreeSet<String>,
    /// Socket paths and loopback nodes, by guest.
    sockets: BTreeMap<PathBuf, String>,
    images: ImageUsers,
    /// Addresses of host i2c adapters, by device.
    i2c: i2c::I2cUsers,
}

/// Check one guest; its errors go to `errors`. The guest is returned if it
/// had none.
fn check_guest(
    loc: &Locator<'_>,
    guest: Spanned<RawGuest>,
    host_checks: bool,
    seen: &mut Seen,
    errors: &mut Vec<ConfigError>,
) -> Option<GuestConfig> {
    let before = errors.len();
    let guest_span = guest.span();
    let guest = guest.into_inner();
    let name = guest.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        errors.push(loc.error(
            Some(guest.name.span()),
            format!("guest name {name:?} is not usable"),
            "use letters, digits, '-', '_' and '.' only",
        ));
    } else if !seen.names.insert(name.clone()) {
        errors.push(loc.error(
            Some(guest.name.span()),
            format!("guest name {name:?} is used twice"),
            "give every [[guest]] a unique name",
        ));
    }
    let bus_span = guest.bus.span();
    let bus = guest.bus.into_inner();
    match &bus {
        BusConfig::Local {
            socket,
            max_msg_size,
            profile,
            poll_spin_us,
        } => {
            check_poll_spin(loc, &bus_span, *poll_spin_us, errors);
            if socket.as_os_str().is_empty() {
                errors.push(loc.error(
                    Some(bus_span.clone()),
                    "socket path is empty",
                    "set socket = \"/run/vmsgd/<guest>.sock\"",
                ));
            } else if let Some(other) = seen.sockets.insert(socket.clone(), name.clone()) {
                errors.push(loc.error(
                    Some(bus_span.clone()),
                    format!(
                        "socket {} is already used by guest {other:?}",
                        socket.display()
                    ),
                    "give every guest its own socket path",
                ));
            } else {
                check_socket_path(loc, &bus_span, socket, host_checks, errors);
            }
            check_msg_size(loc, &bus_span, *profile, *max_msg_size, "peer", errors);
        }
        BusConfig::Xen { .. } => check_xen(loc, bus_span, &bus, errors),
        BusConfig::LinuxUser {
            profile, control, ..
        } => {
            if *profile != ProfileName::Rfc2 {
                errors.push(loc.error(
                    Some(bus_span.clone()),
                    "the Linux loopback bus speaks only the rfc2 wire profile",
                    "set profile = \"rfc2\" or leave profile out",
                ));
            }
            if let Some(other) = seen.sockets.insert(control.clone(), name.clone()) {
                errors.push(loc.error(
                    Some(bus_span),
                    format!("{} is already used by guest {other:?}", control.display()),
                    "one kernel loopback serves one guest: merge the devices into it",
                ));
            }
        }
    }
    if guest.device.is_empty() {
        errors.push(loc.error(
            Some(guest_span),
            format!("guest {name:?} has no devices"),
            "add at least one [[guest.device]] table, e.g. kind = \"rng\"",
        ));
    }
    let mut used = BTreeSet::new();
    for d in &guest.device {
        if let Some(n) = d.get_ref().dev_num() {
            if !used.insert(n) {
                errors.push(loc.error(
                    Some(d.span()),
                    format!("device number {n} is used twice in guest {name:?}"),
                    "give each device of a guest its own dev_num, or leave dev_num out",
                ));
            }
        }
    }
    let mut next = 0u16;
    let mut devices = Vec::new();
    for d in guest.device {
        let span = d.span();
        let dev = d.into_inner();
        let dev_num = match dev.dev_num() {
            Some(n) => n,
            None => {
                while used.contains(&next) && next < u16::MAX {
                    next += 1;
                }
                if used.contains(&next) {
                    errors.push(loc.error(
                        Some(span.clone()),
                        "no free device number left",
                        "remove devices",
                    ));
                    continue;
                }
                used.insert(next);
                next
            }
        };
        let at = Where {
            span,
            guest: &name,
            dev_num,
        };
        match check_device(loc, &at, dev, host_checks, seen) {
            Ok(dev) => devices.push((dev_num, dev)),
            Err(e) => errors.extend(e),
        }
    }
    (errors.len() == before).then_some(GuestConfig { name, bus, devices })
}

/// Check one device (`at` says where); returns it with relative paths
/// resolved, or its errors.
fn check_device(
    loc: &Locator<'_>,
    at: &Where<'_>,
    mut dev: DeviceConfig,
    host_checks: bool,
    seen: &mut Seen,
) -> Result<DeviceConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    if let DeviceConfig::I2c(c) = &mut dev {
        if let Err(e) = i2c::check_i2c(loc, at, c, host_checks, &mut seen.i2c) {
            errors.push(e);
        }
    }
    match &dev {
        DeviceConfig::Rng {
            rate_limit: Some(0),
            ..
        } => errors.push(loc.error(
            Some(at.span.clone()),
            "rate_limit = 0 would starve the guest",
            "remove rate_limit for no limit, or give bytes per second (e.g. 1048576)",
        )),
        DeviceConfig::Rng { .. } => {}
        DeviceConfig::Blk { .. } => check_blk(
            loc,
            at,
            &mut dev,
            host_checks,
            &mut seen.images,
            &mut errors,
        ),
        DeviceConfig::I2c(_) => {}
    }
    if errors.is_empty() {
        Ok(dev)
    } else {
        Err(errors)
    }
}

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes,
/// NUL included).
pub const MAX_SOCKET_PATH: usize = 107;

/// A local-bus socket path must fit a socket address; with `host_checks`,
/// its directory must exist and be writable, and the path must not be a
/// file other than a socket (vmsgd replaces only stale sockets).
fn check_socket_path(
    loc: &Locator<'_>,
    span: &Range<usize>,
    socket: &Path,
    host_checks: bool,
    errors: &mut Vec<ConfigError>,
) {
    let err = |message: String, fix: String| loc.error(Some(span.clone()), message, fix);
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        errors.push(err(
            format!(
                "socket path {} is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                socket.display()
            ),
            "use a shorter path, e.g. /run/vmsgd/<guest>.sock".into(),
        ));
        return;
    }
    if !host_checks {
        return;
    }
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(socket) {
        // A socket is there: a stale one (replaced at start) or the running
        // daemon's own (a reload, perhaps after the privilege drop, when the
        // directory is no longer writable by us).
        Ok(md) if md.file_type().is_socket() => return,
        Ok(_) => {
            errors.push(err(
                format!(
                    "{} exists and is not a socket (vmsgd never removes it)",
                    socket.display()
                ),
                "remove or rename that file, or choose another socket path".into(),
            ));
            return;
        }
        Err(_) => {}
    }
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            errors.push(err(
                format!("socket directory {} does not exist", dir.display()),
                format!(
                    "create it (`mkdir -p {}`; the systemd unit's RuntimeDirectory=vmsgd creates /run/vmsgd) or correct the path",
                    dir.display()
                ),
            ));
        }
        Err(e) => {
            errors.push(err(
                format!("cannot access the socket directory {}: {e}", dir.display()),
                "check the permissions of the directories leading to it".into(),
            ));
        }
        Ok(md) if !md.is_dir() => {
            errors.push(err(
                format!(
                    "{} (the socket's directory) is not a directory",
                    dir.display()
                ),
                "point socket into a directory".into(),
            ));
        }
        Ok(_) => {
            if let Err(e) = nix::unistd::access(
                dir,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            ) {
                errors.push(err(
                    format!(
                        "the socket directory {} is not writable here ({e})",
                        dir.display()
                    ),
                    "run vmsgd as a user that may create files there, or give that user write access"
                        .into(),
                ));
            }
        }
    }
}

/// `max_msg_size` must suit the profile (`peer` names the other side in the
/// fix).
fn check_msg_size(
    loc: &Locator<'_>,
    span: &Range<usize>,
    profile: ProfileName,
    max_msg_size: u32,
    peer: &str,
    errors: &mut Vec<ConfigError>,
) {
    let min = min_msg_size(profile);
    if (max_msg_size as usize) < min || max_msg_size as usize > vmsg_proto::MAX_MSG_SIZE_LIMIT {
        errors.push(loc.error(
            Some(span.clone()),
            format!(
                "max_msg_size {max_msg_size} must be from {min} to {} for this profile",
                vmsg_proto::MAX_MSG_SIZE_LIMIT
            ),
            format!("use 264 (the recommended size) unless the {peer} needs another"),
        ));
    }
}

/// Largest `poll_spin_us` accepted: what the instance honours
/// (`vmsg_backend::instance::MAX_POLL_SPIN`).
pub const MAX_POLL_SPIN_US: u64 = vmsg_backend::instance::MAX_POLL_SPIN.as_micros() as u64;

/// A bus's `poll_spin_us` must be one the instance honours.
fn check_poll_spin(loc: &Locator<'_>, span: &Range<usize>, us: u64, errors: &mut Vec<ConfigError>) {
    if us > MAX_POLL_SPIN_US {
        errors.push(loc.error(
            Some(span.clone()),
            format!(
                "poll_spin_us {us} is above the most allowed, {MAX_POLL_SPIN_US} ({} ms)",
                MAX_POLL_SPIN_US / 1000
            ),
            "use 0 (sleep on the doorbell, the default) or a few tens of microseconds, e.g. 50",
        ));
    }
}

/// Smallest `max_msg_size` a wire profile allows.
fn min_msg_size(profile: ProfileName) -> usize {
    match profile {
        ProfileName::V2 => vmsg_proto::MIN_MAX_MSG_SIZE,
        ProfileName::V1 => vmsg_proto::V1_MIN_MAX_MSG_SIZE,
        ProfileName::Rfc2 => vmsg_proto::RFC2_MIN_MAX_MSG_SIZE,
    }
}

/// Validate a `kind = "xen"` bus.
fn check_xen(
    loc: &Locator<'_>,
    span: Range<usize>,
    bus: &BusConfig,
    errors: &mut Vec<ConfigError>,
) {
    let BusConfig::Xen {
        memory,
        max_grants,
        ranges,
        profile,
        max_msg_size,
        max_ring_page_order,
        poll_spin_us,
        ..
    } = bus
    else {
        return;
    };
    check_poll_spin(loc, &span, *poll_spin_us, errors);
    check_msg_size(loc, &span, *profile, *max_msg_size, "guest", errors);
    let err = |message: String, fix: &str| loc.error(Some(span.clone()), message, fix);
    if *max_ring_page_order > vmsg_xen::bus::MAX_RING_PAGE_ORDER {
        errors.push(err(
            format!(
                "max_ring_page_order {max_ring_page_order} is above the most allowed, {}",
                vmsg_xen::bus::MAX_RING_PAGE_ORDER
            ),
            "use 4 (the default: rings of up to 16 pages) or less",
        ));
    }
    match (memory, ranges) {
        (XenMemoryMode::Grant, Some(_)) => errors.push(err(
            "ranges is for memory = \"foreign\"; a grant-mode guest announces its own pool".into(),
            "remove ranges, or set memory = \"foreign\"",
        )),
        (XenMemoryMode::Grant, None) if *max_grants == 0 || *max_grants > MAX_XEN_GRANTS => {
            errors.push(err(
                format!("max_grants {max_grants} must be from 1 to {MAX_XEN_GRANTS}"),
                "use 4096 (the default: 16 MiB of guest buffers) or what the guest's frontend announces",
            ))
        }
        (XenMemoryMode::Grant, None) => {}
        (XenMemoryMode::Foreign, None) => errors.push(err(
            "memory = \"foreign\" needs the guest's RAM as ranges".into(),
            "add ranges = \"0+<pages>\" (GFN runs first+count, e.g. \"0+65536\" for 256 MiB)",
        )),
        (XenMemoryMode::Foreign, Some(r)) => match r.parse::<vmsg_xen::memory::GrantRuns>() {
            Err(e) => errors.push(err(
                format!("ranges: {e}"),
                "write GFN runs as first+count joined by commas, e.g. \"0+65536\"",
            )),
            Ok(runs) if runs.pages() > u64::from(u32::MAX) => errors.push(err(
                format!("ranges cover {} pages", runs.pages()),
                "map at most 16 TiB",
            )),
            Ok(_) => {}
        },
    }
}

/// Where a device sits, for error messages.
struct Where<'a> {
    span: Range<usize>,
    guest: &'a str,
    dev_num: u16,
}

/// Who uses an image: (guest, device number, read-only).
type ImageUsers = BTreeMap<PathBuf, (String, u16, bool)>;

/// Validate a `kind = "blk"` device; resolves a relative `path` against the
/// config file's directory. With `host_checks`, the image must exist and be
/// a regular file of at least one sector or a block device, and no two
/// devices may use one image unless all of them are read-only.
fn check_blk(
    loc: &Locator<'_>,
    at: &Where<'_>,
    dev: &mut DeviceConfig,
    host_checks: bool,
    images: &mut ImageUsers,
    errors: &mut Vec<ConfigError>,
) {
    use vmsg_devices::blk::{MAX_QUEUES, SERIAL_LEN};
    let DeviceConfig::Blk {
        path,
        read_only,
        num_queues,
        queue_size,
        serial,
        ..
    } = dev
    else {
        return;
    };
    let err = |message: String, fix: String| loc.error(Some(at.span.clone()), message, fix);
    if *num_queues == 0 || *num_queues > MAX_QUEUES {
        errors.push(err(
            format!("num_queues {num_queues} must be from 1 to {MAX_QUEUES}"),
            "use 1 (the default) or up to one queue per guest vCPU".into(),
        ));
    }
    if !queue_size.is_power_of_two() || *queue_size < 4 {
        errors.push(err(
            format!("queue_size {queue_size} is not a power of two from 4 to 32768"),
            "use 256 (the default) or another power of two".into(),
        ));
    }
    if serial.len() > SERIAL_LEN || !serial.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        errors.push(err(
            format!("serial {serial:?} is not at most {SERIAL_LEN} printable ASCII characters"),
            format!("shorten it to {SERIAL_LEN} ASCII letters, digits, punctuation or spaces"),
        ));
    }
    if path.as_os_str().is_empty() {
        errors.push(err(
            "blk path is empty".into(),
            "set path = \"/var/lib/vmsgd/<guest>.img\" (a raw image file or a block device)".into(),
        ));
        return;
    }
    if path.is_relative() {
        if let Some(dir) = loc.file.parent().filter(|d| !d.as_os_str().is_empty()) {
            *path = dir.join(&*path);
        }
    }
    let mut key = path.clone();
    if host_checks {
        let create = format!(
            "create it (e.g. `truncate -s 8G {}`) or correct the path",
            path.display()
        );
        let meta = match std::fs::metadata(&*path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                errors.push(err(
                    format!("image {} does not exist", path.display()),
                    create,
                ));
                return;
            }
            Err(e) => {
                errors.push(err(
                    format!("cannot access image {}: {e}", path.display()),
                    "check the path and the permissions of the directories leading to it".into(),
                ));
                return;
            }
        };
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        if ft.is_file() {
            if meta.len() < 512 {
                errors.push(err(
                    format!(
                        "image {} is {} bytes, less than one 512-byte sector",
                        path.display(),
                        meta.len()
                    ),
                    format!("grow it (e.g. `truncate -s 8G {}`)", path.display()),
                ));
                return;
            }
        } else if !ft.is_block_device() {
            errors.push(err(
                format!(
                    "{} is neither a regular file nor a block device",
                    path.display()
                ),
                "point path at a raw image file or a block device".into(),
            ));
            return;
        }
        key = std::fs::canonicalize(&*path).unwrap_or(key);
    }
    if let Some((guest, dev_num, ro)) = images.get(&key) {
        if !(*ro && *read_only) {
            errors.push(err(
                format!(
                    "image {} is also used by guest {guest:?} device {dev_num}; a second user of a writable image corrupts it",
                    path.display()
                ),
                "give each device its own image, or set read_only = true on every device that uses it".into(),
            ));
            return;
        }
    }
    images.insert(key, (at.guest.to_string(), at.dev_num, *read_only));
}

/// Parse a log level name.
pub fn log_level(name: &str) -> Option<log::LevelFilter> {
    match name.to_ascii_lowercase().as_str() {
        "error" => Some(log::LevelFilter::Error),
        "warn" => Some(log::LevelFilter::Warn),
        "info" => Some(log::LevelFilter::Info),
        "debug" => Some(log::LevelFilter::Debug),
        "trace" => Some(log::LevelFilter::Trace),
        "off" => Some(log::LevelFilter::Off),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    fn parse_offline(text: &str) -> Result<Config, ConfigError> {
        Config::parse_offline(Path::new("test.toml"), text)
    }

    const GOOD: &str = r#"
[daemon]
log_level = "debug"

[[guest]]
name = "g1"
bus = { kind = "local", socket = "/tmp/g1.sock" }

[[guest.device]]
kind = "rng"

[[guest.device]]
kind = "rng"
dev_num = 0
rate_limit = 4096
"#;

    #[test]
    fn good_config_assigns_free_device_numbers() {
        let cfg = parse(GOOD).expect("valid config");
        assert_eq!(cfg.guests.len(), 1);
        let nums: Vec<u16> = cfg.guests[0].devices.iter().map(|(n, _)| *n).collect();
        assert_eq!(nums, vec![1, 0]);
        assert_eq!(cfg.daemon.log_level, "debug");
        match &cfg.guests[0].bus {
            BusConfig::Local {
                max_msg_size,
                profile,
                ..
            } => {
                assert_eq!(*max_msg_size, 264);
                assert_eq!(*profile, ProfileName::V2);
            }
            other => panic!("expected the local bus, got {other:?}"),
        }
    }

    #[test]
    fn unknown_key_names_line_and_fix() {
        let text = "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\nrate = 5\n";
        let err = parse(text).expect_err("unknown key");
        // At the key itself, not the table (toml alone locates unknown keys
        // of a tagged table at the table).
        assert_eq!(err.line, 6, "{err}");
        assert!(err.message.contains("rate"), "{err}");
        assert!(err.to_string().contains("test.toml:6:1:"), "{err}");
        assert!(err.fix.contains("spelling"), "{err}");
    }

    #[test]
    fn linux_user_bus_defaults_to_rfc2_and_the_kernel_nodes() {
        let text = "[[guest]]\nname = \"board\"\nbus = { kind = \"linux-user\", pool_base = 0x5fc00000 }\n[[guest.device]]\nkind = \"rng\"\n";
        let cfg = parse(text).expect("valid");
        match &cfg.guests[0].bus {
            BusConfig::LinuxUser {
                profile,
                control,
                channel,
                pool_base,
                kernel_remove,
                ..
            } => {
                assert_eq!(*profile, ProfileName::Rfc2);
                assert_eq!(control, Path::new("/dev/virtio-msg-lb"));
                assert_eq!(channel, Path::new("/dev/virtio-msg-0"));
                assert_eq!(*pool_base, Some(0x5fc0_0000));
                assert!(!kernel_remove, "REMOVE deadlocks on the RFC kernel");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn linux_user_bus_rejects_other_profiles_and_a_shared_node() {
        let text = "[[guest]]\nname = \"b\"\nbus = { kind = \"linux-user\", profile = \"v2\" }\n[[guest.device]]\nkind = \"rng\"\n";
        let err = parse(text).expect_err("v2 on the loopback");
        assert!(err.message.contains("rfc2"), "{err}");
        assert_eq!(err.line, 3, "{err}");
        let text = "[[guest]]\nname = \"a\"\nbus = { kind = \"linux-user\" }\n[[guest.device]]\nkind = \"rng\"\n[[guest]]\nname = \"b\"\nbus = { kind = \"linux-user\" }\n[[guest.device]]\nkind = \"rng\"\n";
        let err = parse(text).expect_err("two guests on one loopback");
        assert!(err.message.contains("already used"), "{err}");
    }

    #[test]
    fn rfc2_local_bus_accepts_44_byte_frames() {
        let text = "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\", profile = \"rfc2\", max_msg_size = 44 }\n[[guest.device]]\nkind = \"rng\"\n";
        parse(text).expect("44 is rfc2's frame size");
    }

    #[test]
    fn duplicate_dev_num_is_located() {
        let text = "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\ndev_num = 3\n[[guest.device]]\nkind = \"rng\"\ndev_num = 3\n";
        let err = parse(text).expect_err("duplicate");
        assert!(err.message.contains("used twice"), "{err}");
        assert!(err.line >= 7, "{err}");
    }

    #[test]
    fn unknown_device_kind_lists_alternatives() {
        let text = "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"gpu\"\n";
        let err = parse(text).expect_err("unknown kind");
        assert!(err.message.contains("gpu"), "{err}");
        assert!(err.line >= 4, "{err}");
    }

    /// A guest with one blk device on `path` plus `extra` keys, the device
    /// table on line 4.
    fn blk_text(path: &Path, extra: &str) -> String {
        format!(
            "[[guest]]\nname = \"g\"\nbus = {{ kind = \"local\", socket = \"/s\" }}\n[[guest.device]]\nkind = \"blk\"\npath = \"{}\"\n{extra}",
            path.display()
        )
    }

    fn image(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp image");
        f.as_file().set_len(len).expect("size the image");
        f
    }

    #[test]
    fn blk_defaults() {
        let img = image(1 << 20);
        let cfg = parse(&blk_text(img.path(), "")).expect("valid");
        assert_eq!(
            cfg.guests[0].devices,
            vec![(
                0,
                DeviceConfig::Blk {
                    dev_num: None,
                    path: img.path().to_path_buf(),
                    read_only: false,
                    direct: false,
                    engine: BlkEngine::IoUring,
                    num_queues: 1,
                    queue_size: 256,
                    serial: String::new(),
                    writeback: true,
                }
            )]
        );
    }

    #[test]
    fn blk_all_keys() {
        let img = image(1 << 20);
        let text = blk_text(
            img.path(),
            "dev_num = 3\nread_only = true\ndirect = true\nengine = \"sync\"\nnum_queues = 4\nqueue_size = 64\nserial = \"disk-0\"\nwriteback = false\n",
        );
        let cfg = parse(&text).expect("valid");
        let (
            n,
            DeviceConfig::Blk {
                read_only,
                direct,
                engine,
                num_queues,
                queue_size,
                serial,
                writeback,
                ..
            },
        ) = &cfg.guests[0].devices[0]
        else {
            panic!("not a blk device: {cfg:?}");
        };
        assert_eq!(*n, 3);
        assert!(*read_only && *direct && !*writeback);
        assert_eq!(*engine, BlkEngine::Sync);
        assert_eq!((*num_queues, *queue_size), (4, 64));
        assert_eq!(serial, "disk-0");
    }

    #[test]
    fn blk_relative_path_is_taken_from_the_config_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("disk.img"), vec![0u8; 4096]).expect("image");
        let file = dir.path().join("vmsgd.toml");
        let text = blk_text(Path::new("disk.img"), "");
        let cfg = Config::parse(&file, &text).expect("valid");
        match &cfg.guests[0].devices[0].1 {
            DeviceConfig::Blk { path, .. } => assert_eq!(path, &dir.path().join("disk.img")),
            d => panic!("not blk: {d:?}"),
        }
    }

    #[test]
    fn blk_errors_are_located_with_a_fix() {
        let img = image(1 << 20);
        let small = image(100);
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.img");
        for (path, extra, what, fix) in [
            (missing.as_path(), "", "does not exist", "truncate -s"),
            (small.path(), "", "less than one 512-byte sector", "grow it"),
            (dir.path(), "", "neither a regular file", "raw image"),
            (Path::new(""), "", "path is empty", "set path"),
            (img.path(), "num_queues = 0\n", "num_queues 0", "use 1"),
            (img.path(), "num_queues = 65\n", "num_queues 65", "use 1"),
            (
                img.path(),
                "queue_size = 100\n",
                "queue_size 100",
                "power of two",
            ),
            (
                img.path(),
                "queue_size = 2\n",
                "queue_size 2",
                "power of two",
            ),
            (
                img.path(),
                "serial = \"012345678901234567890\"\n",
                "printable ASCII",
                "shorten",
            ),
            (
                img.path(),
                "serial = \"tab\\there\"\n",
                "printable ASCII",
                "shorten",
            ),
        ] {
            let err = parse(&blk_text(path, extra)).expect_err(what);
            assert!(err.message.contains(what), "{what}: {err}");
            assert!(err.fix.contains(fix), "{what}: {err}");
            assert_eq!(err.line, 4, "{what}: located at the device table: {err}");
        }
    }

    #[test]
    fn blk_bad_engine_and_unknown_key() {
        let img = image(1 << 20);
        let err = parse(&blk_text(img.path(), "engine = \"aio\"\n")).expect_err("engine");
        assert!(err.message.contains("aio"), "{err}");
        assert!(err.message.contains("io-uring"), "lists the engines: {err}");
        assert!(err.fix.contains("values the message lists"), "{err}");
        let err = parse(&blk_text(img.path(), "cache = \"none\"\n")).expect_err("key");
        assert!(err.message.contains("cache"), "{err}");
        assert!(err.message.contains("writeback"), "lists the keys: {err}");
        let err = parse(&blk_text(img.path(), "read_only = \"yes\"\n")).expect_err("type");
        assert!(err.line > 0, "{err}");
    }

    #[test]
    fn blk_image_shared_only_read_only() {
        let img = image(1 << 20);
        let two = |a: &str, b: &str| {
            format!(
                "[[guest]]\nname = \"a\"\nbus = {{ kind = \"local\", socket = \"/a\" }}\n[[guest.device]]\nkind = \"blk\"\npath = \"{p}\"\n{a}\n[[guest]]\nname = \"b\"\nbus = {{ kind = \"local\", socket = \"/b\" }}\n[[guest.device]]\nkind = \"blk\"\npath = \"{p}\"\n{b}\n",
                p = img.path().display()
            )
        };
        parse(&two("read_only = true", "read_only = true")).expect("two readers are fine");
        for (a, b) in [("", ""), ("read_only = true", ""), ("", "read_only = true")] {
            let err = parse(&two(a, b)).expect_err("a writer and another user");
            assert!(err.message.contains("also used by guest \"a\""), "{err}");
            assert_eq!(err.line, 11, "{err}");
            assert!(err.fix.contains("own image"), "{err}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../dom0-config/vmsgd.toml");
        let cfg = Config::parse_offline(Path::new("dom0-config/vmsgd.toml"), text)
            .expect("the shipped example parses");
        assert!(
            cfg.guests
                .iter()
                .flat_map(|g| &g.devices)
                .any(|(_, d)| d.kind() == "blk"),
            "the example shows a blk device"
        );
    }

    #[test]
    fn bad_values_are_rejected_with_a_fix() {
        for (text, what) in [
            (
                "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\", max_msg_size = 20 }\n[[guest.device]]\nkind = \"rng\"\n",
                "max_msg_size",
            ),
            (
                "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n",
                "no devices",
            ),
            (
                "[[guest]]\nname = \"g h\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\n",
                "not usable",
            ),
            (
                "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\nrate_limit = 0\n",
                "starve",
            ),
            (
                "[daemon]\nlog_level = \"loud\"\n[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\n",
                "log level",
            ),
            ("", "no [[guest]]"),
            // Issue 10, defect 4: accepted before, then the polling loop
            // spun blind to SIGTERM.
            (
                "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\", poll_spin_us = 1000000000000 }\n[[guest.device]]\nkind = \"rng\"\n",
                "poll_spin_us 1000000000000 is above the most allowed, 10000 (10 ms)",
            ),
            (
                "[[guest]]\nname = \"a\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\n[[guest]]\nname = \"b\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\n",
                "already used",
            ),
        ] {
            let err = parse(text).expect_err(what);
            assert!(err.message.contains(what), "{what}: {err}");
            assert!(!err.fix.is_empty(), "{what}: {err}");
        }
    }

    /// Issue 10, defect 6: every error of the file, not only the first,
    /// each at its own line.
    #[test]
    fn every_error_is_reported() {
        let text = "\
[daemon]
log_level = \"loud\"

[[guest]]
name = \"a\"
bus = { kind = \"local\", socket = \"/a\", poll_spin_us = 99999999 }

[[guest.device]]
kind = \"rng\"
rate_limit = 0

[[guest]]
name = \"b b\"
bus = { kind = \"local\", socket = \"/b\" }

[[guest.device]]
kind = \"rng\"
";
        let err = parse_offline(text).expect_err("four errors");
        let lines: Vec<usize> = err.all().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 6, 8, 13], "{err}");
        let text = err.to_string();
        for what in [
            "poll_spin_us",
            "rate_limit = 0",
            "\"b b\" is not usable",
            "log_level",
        ] {
            assert!(text.contains(what), "{what}: {text}");
        }
        // Type errors in several devices: each reported at its key.
        let text = "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\nrate_limit = \"fast\"\n[[guest.device]]\nkind = \"rng\"\ndev_num = -1\n[[guest.device]]\nkind = \"rng\"\nbogus = 1\n";
        let err = parse_offline(text).expect_err("three errors");
        let lines: Vec<usize> = err.all().map(|e| e.line).collect();
        assert_eq!(lines, vec![6, 9, 12], "{err}");
    }

    /// Issue 10, defect 6: a type error points at the key, not the table,
    /// and says the range in words.
    #[test]
    fn type_errors_point_at_the_key_in_words() {
        let img = image(1 << 20);
        let err = parse(&blk_text(
            img.path(),
            "direct = true\nread_only = \"yes\"\n",
        ))
        .expect_err("type");
        assert_eq!((err.line, err.column), (8, 1), "{err}");
        assert!(err.message.contains("expected true or false"), "{err}");
        let err = parse(&blk_text(img.path(), "dev_num = 70000\n")).expect_err("range");
        assert_eq!(err.line, 7, "{err}");
        assert!(
            err.message.contains("a whole number from 0 to 65535"),
            "{err}"
        );
        assert!(!err.message.contains("u16"), "{err}");
        // Inside the bus's inline table too.
        let err = parse_offline(
            "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\", max_msg_size = \"big\" }\n[[guest.device]]\nkind = \"rng\"\n",
        )
        .expect_err("type in the bus");
        assert_eq!(err.line, 3, "{err}");
        assert!(err.column > 20, "at the key, not the table: {err}");
        assert!(
            err.message.contains("a whole number from 0 to 4294967295"),
            "{err}"
        );
    }

    /// Issue 10, defect 6: what `--config` would refuse at bind time is
    /// refused by the check already, with file:line and a fix.
    #[test]
    fn socket_paths_are_checked_on_the_host() {
        let dir = tempfile::tempdir().expect("dir");
        let with_socket = |socket: &Path| {
            format!(
                "[[guest]]\nname = \"g\"\nbus = {{ kind = \"local\", socket = \"{}\" }}\n[[guest.device]]\nkind = \"rng\"\n",
                socket.display()
            )
        };
        parse(&with_socket(&dir.path().join("g.sock"))).expect("a good socket path");
        let missing = dir.path().join("nowhere").join("g.sock");
        let err = parse(&with_socket(&missing)).expect_err("missing directory");
        assert_eq!(err.line, 3, "{err}");
        assert!(err.message.contains("does not exist"), "{err}");
        assert!(err.fix.contains("mkdir -p"), "{err}");
        // Offline, the host is not looked at.
        parse_offline(&with_socket(&missing)).expect("offline");

        let file = dir.path().join("plain");
        std::fs::write(&file, b"data").expect("file");
        let err = parse(&with_socket(&file)).expect_err("a regular file");
        assert!(err.message.contains("is not a socket"), "{err}");
        let not_dir = file.join("g.sock");
        let err = parse(&with_socket(&not_dir)).expect_err("a file as directory");
        assert!(err.message.contains("not a directory"), "{err}");

        let long = dir.path().join("x".repeat(120));
        for check in [parse, parse_offline] {
            let err = check(&with_socket(&long)).expect_err("too long");
            assert!(err.message.contains("at most 107"), "{err}");
            assert!(err.fix.contains("shorter"), "{err}");
        }
    }

    #[test]
    fn sandbox_settings() {
        let guest = "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\n";
        let cfg = parse_offline(guest).expect("defaults");
        assert_eq!(cfg.daemon.seccomp, SeccompMode::Kill, "on by default");
        assert_eq!(
            (cfg.daemon.user.as_deref(), cfg.daemon.group.as_deref()),
            (None, None)
        );
        let cfg = parse_offline(&format!(
            "[daemon]\nseccomp = \"log\"\nuser = \"vmsgd\"\ngroup = \"vmsgd\"\ncontrol_socket = \"/run/vmsgd/control.sock\"\n{guest}"
        ))
        .expect("all keys");
        assert_eq!(cfg.daemon.seccomp, SeccompMode::Log);
        assert_eq!(cfg.daemon.user.as_deref(), Some("vmsgd"));
        let err = parse(&format!("[daemon]\nuser = \"no-such-user-here\"\n{guest}"))
            .expect_err("unknown user");
        assert_eq!(err.line, 2, "{err}");
        assert!(err.fix.contains("useradd"), "{err}");
        let err = parse_offline(&format!("[daemon]\nseccomp = \"maybe\"\n{guest}"))
            .expect_err("bad mode");
        assert!(err.message.contains("kill"), "{err}");
    }
}
