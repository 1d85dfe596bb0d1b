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

/// A configuration error, located in its file.
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
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file.display())?;
        }
        write!(f, "{}", self.message)?;
        if !self.fix.is_empty() {
            write!(f, "\n  fix: {}", self.fix)?;
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
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for DaemonSection {
    fn default() -> Self {
        Self {
            log: LogTarget::default(),
            log_level: default_log_level(),
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
}

fn default_max_msg_size() -> u32 {
    vmsg_proto::RECOMMENDED_MAX_MSG_SIZE as u32
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
}

impl DeviceConfig {
    /// The configured device number, if any.
    pub fn dev_num(&self) -> Option<u16> {
        match self {
            DeviceConfig::Rng { dev_num, .. } => *dev_num,
        }
    }

    /// The device kind as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceConfig::Rng { .. } => "rng",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: Spanned<String>,
    bus: Spanned<BusConfig>,
    #[serde(default)]
    device: Vec<Spanned<DeviceConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
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
        })?;
        Self::parse(path, &text)
    }

    /// Validate config text; `file` is used for error locations.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let loc = Locator { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            let fix = fix_for(&message);
            loc.error(e.span(), message, fix)
        })?;
        if log_level(&raw.daemon.log_level).is_none() {
            return Err(loc.error(
                None,
                format!(
                    "[daemon] log_level \"{}\" is not a log level",
                    raw.daemon.log_level
                ),
                "use one of error, warn, info, debug, trace",
            ));
        }
        let mut names = BTreeSet::new();
        let mut sockets = BTreeMap::new();
        let mut guests = Vec::new();
        for guest in raw.guest {
            let guest_span = guest.span();
            let guest = guest.into_inner();
            let name = guest.name.get_ref().clone();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(loc.error(
                    Some(guest.name.span()),
                    format!("guest name {name:?} is not usable"),
                    "use letters, digits, '-', '_' and '.' only",
                ));
            }
            if !names.insert(name.clone()) {
                return Err(loc.error(
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
                    ..
                } => {
                    if let Some(other) = sockets.insert(socket.clone(), name.clone()) {
                        return Err(loc.error(
                            Some(bus_span.clone()),
                            format!(
                                "socket {} is already used by guest {other:?}",
                                socket.display()
                            ),
                            "give every guest its own socket path",
                        ));
                    }
                    if socket.as_os_str().is_empty() {
                        return Err(loc.error(
                            Some(bus_span),
                            "socket path is empty",
                            "set socket = \"/run/vmsgd/<guest>.sock\"",
                        ));
                    }
                    let min = if *profile == ProfileName::V2 {
                        vmsg_proto::MIN_MAX_MSG_SIZE
                    } else {
                        48
                    };
                    if (*max_msg_size as usize) < min
                        || *max_msg_size as usize > vmsg_proto::MAX_MSG_SIZE_LIMIT
                    {
                        return Err(loc.error(
                            Some(bus_span),
                            format!("max_msg_size {max_msg_size} is outside {min}..=65535 for this profile"),
                            "use 264 (the recommended size) unless the peer needs another",
                        ));
                    }
                }
            }
            if guest.device.is_empty() {
                return Err(loc.error(
                    Some(guest_span),
                    format!("guest {name:?} has no devices"),
                    "add at least one [[guest.device]] table, e.g. kind = \"rng\"",
                ));
            }
            let mut used = BTreeSet::new();
            for d in &guest.device {
                if let Some(n) = d.get_ref().dev_num() {
                    if !used.insert(n) {
                        return Err(loc.error(
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
                if let DeviceConfig::Rng {
                    rate_limit: Some(0),
                    ..
                } = dev
                {
                    return Err(loc.error(
                        Some(span),
                        "rate_limit = 0 would starve the guest",
                        "remove rate_limit for no limit, or give bytes per second (e.g. 1048576)",
                    ));
                }
                let dev_num = match dev.dev_num() {
                    Some(n) => n,
                    None => {
                        while used.contains(&next) {
                            next = next.checked_add(1).ok_or_else(|| {
                                loc.error(
                                    Some(span.clone()),
                                    "no free device number left",
                                    "remove devices",
                                )
                            })?;
                        }
                        used.insert(next);
                        next
                    }
                };
                devices.push((dev_num, dev));
            }
            guests.push(GuestConfig { name, bus, devices });
        }
        if guests.is_empty() {
            return Err(loc.error(
                None,
                "no [[guest]] is configured",
                "add a [[guest]] table with a name, a bus and at least one device (see docs/configuration.md)",
            ));
        }
        Ok(Self {
            file: file.to_path_buf(),
            daemon: raw.daemon,
            guests,
        })
    }
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
        }
    }

    #[test]
    fn unknown_key_names_line_and_fix() {
        let text = "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"rng\"\nrate = 5\n";
        let err = parse(text).expect_err("unknown key");
        // toml locates unknown keys of a tagged table at the table itself.
        assert_eq!(err.line, 4, "{err}");
        assert!(err.message.contains("rate"), "{err}");
        assert!(err.to_string().contains("test.toml:4:"), "{err}");
        assert!(err.fix.contains("spelling"), "{err}");
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
}
