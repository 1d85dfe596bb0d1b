//! `kind = "i2c"`: a virtio-i2c adapter passed through to a host adapter
//! (`adapter` + `allow`) or carrying simulated chips (`[[guest.device.chip]]`).
//! The format is in docs/configuration.md; the device in docs/i2c.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vmsg_devices::i2c::adapter::{FIRST_ADDR, LAST_ADDR, is_device_addr};
use vmsg_devices::i2c::host::{SYSFS_I2C_DEVICES, dev_path, find_adapter};
use vmsg_devices::i2c::sim::eeprom;
use vmsg_devices::i2c::sim::lm75;
use vmsg_devices::i2c::{AdapterRef, ChipConfig, ChipModel, I2cBackend};

use super::{ConfigError, Locator, Where};

/// A `kind = "i2c"` device as written.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct I2cDeviceConfig {
    /// Device number on the bus (default: the next free one).
    pub dev_num: Option<u16>,
    /// Passthrough: the host adapter, by number (`/dev/i2c-N`) or by the
    /// name the kernel gives it.
    pub adapter: Option<AdapterSpec>,
    /// Passthrough: the 7-bit addresses this guest may reach on it.
    #[serde(default)]
    pub allow: Vec<u16>,
    /// Simulated: the chips on a virtual adapter.
    #[serde(default)]
    pub chip: Vec<ChipSpec>,
}

/// `adapter = 1` or `adapter = "SMBus stub driver"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum AdapterSpec {
    /// `/dev/i2c-N`.
    Number(u32),
    /// The adapter whose sysfs `name` is this.
    Name(String),
}

impl fmt::Display for AdapterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterSpec::Number(n) => write!(f, "i2c-{n}"),
            AdapterSpec::Name(s) => write!(f, "{s:?}"),
        }
    }
}

/// One `[[guest.device.chip]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "model", deny_unknown_fields)]
pub enum ChipSpec {
    /// A 24C02 EEPROM (256 bytes).
    #[serde(rename = "24c02")]
    Eeprom24c02 {
        /// 7-bit address.
        addr: u16,
        /// Backing file (256 bytes, created erased if missing; relative
        /// paths are taken from the config file's directory). Without it
        /// the contents live in memory and start erased at every start.
        file: Option<PathBuf>,
    },
    /// An LM75 temperature sensor.
    #[serde(rename = "lm75")]
    Lm75 {
        /// 7-bit address.
        addr: u16,
        /// The reading, in millidegrees Celsius (default 25 °C).
        #[serde(default = "default_temperature_mc")]
        temperature_mc: i32,
    },
}

fn default_temperature_mc() -> i32 {
    25_000
}

impl ChipSpec {
    fn addr(&self) -> u16 {
        match self {
            ChipSpec::Eeprom24c02 { addr, .. } | ChipSpec::Lm75 { addr, .. } => *addr,
        }
    }
}

impl I2cDeviceConfig {
    /// What the device model is built from.
    pub fn backend(&self) -> I2cBackend {
        match &self.adapter {
            Some(a) => I2cBackend::Host {
                adapter: match a {
                    AdapterSpec::Number(n) => AdapterRef::Number(*n),
                    AdapterSpec::Name(s) => AdapterRef::Name(s.clone()),
                },
                allow: self.allow.clone(),
            },
            None => I2cBackend::Sim {
                chips: self
                    .chip
                    .iter()
                    .map(|c| match c {
                        ChipSpec::Eeprom24c02 { addr, file } => ChipConfig {
                            addr: *addr,
                            model: ChipModel::Eeprom24c02 { file: file.clone() },
                        },
                        ChipSpec::Lm75 {
                            addr,
                            temperature_mc,
                        } => ChipConfig {
                            addr: *addr,
                            model: ChipModel::Lm75 {
                                temperature_mc: *temperature_mc,
                            },
                        },
                    })
                    .collect(),
            },
        }
    }
}

/// Who uses what on the host, across every guest of the file: addresses on
/// host adapters, EEPROM backing files.
#[derive(Debug, Default)]
pub(super) struct I2cUsers {
    /// (adapter key, address) → (guest, dev_num).
    addresses: BTreeMap<(String, u16), (String, u16)>,
    /// Backing file → (guest, dev_num).
    files: BTreeMap<PathBuf, (String, u16)>,
}

/// Validate an i2c device; resolves relative backing files against the
/// config file's directory. With `host_checks`, the adapter must exist
/// (by number: its device node; by name: in sysfs) and backing files must
/// be usable. No two devices — of one guest or of two — may allow one
/// address of one adapter, or share a backing file.
pub(super) fn check_i2c(
    loc: &Locator<'_>,
    at: &Where<'_>,
    cfg: &mut I2cDeviceConfig,
    host_checks: bool,
    users: &mut I2cUsers,
) -> Result<(), ConfigError> {
    let err = |message: String, fix: &str| loc.error(Some(at.span.clone()), message, fix);
    let addr_range = format!("{FIRST_ADDR:#04x}..={LAST_ADDR:#04x}");
    match (&cfg.adapter, cfg.chip.is_empty()) {
        (Some(_), false) => {
            return Err(err(
                "an i2c device is either a host adapter (adapter) or simulated chips ([[guest.device.chip]]), not both".into(),
                "move the chips to a device of their own (a second kind = \"i2c\")",
            ));
        }
        (None, true) => {
            return Err(err(
                "an i2c device needs adapter = N or \"name\" (passthrough) or at least one [[guest.device.chip]] (simulated)".into(),
                "add adapter and allow = [...] for a host adapter, or a [[guest.device.chip]] table with model = \"24c02\" or \"lm75\"",
            ));
        }
        _ => {}
    }
    let Some(adapter) = cfg.adapter.clone() else {
        return check_chips(loc, at, cfg, host_checks, users);
    };
    if cfg.allow.is_empty() {
        return Err(err(
            "a passthrough i2c device needs the addresses this guest may use".into(),
            "add allow = [0x50, ...] (7-bit addresses); the guest reaches nothing else on the adapter",
        ));
    }
    if let Some(bad) = cfg.allow.iter().find(|&&a| !is_device_addr(a)) {
        return Err(err(
            format!("allow: {bad:#x} is not a 7-bit device address ({addr_range})"),
            "give 7-bit addresses as i2cdetect shows them; ten-bit addresses are not supported",
        ));
    }
    cfg.allow.sort_unstable();
    cfg.allow.dedup();
    let key = if host_checks {
        let number = match &adapter {
            AdapterSpec::Number(n) => *n,
            AdapterSpec::Name(name) => find_adapter(Path::new(SYSFS_I2C_DEVICES), name).map_err(|e| {
                err(
                    format!("adapter {adapter}: {e}"),
                    "name the adapter as /sys/bus/i2c/devices/i2c-N/name says (`i2cdetect -l` lists them), or give its number",
                )
            })?,
        };
        let node = dev_path(number);
        if !node.exists() {
            return Err(err(
                format!("adapter {adapter}: {} does not exist", node.display()),
                "load i2c-dev (modprobe i2c-dev) and check the adapter number with `i2cdetect -l`",
            ));
        }
        format!("i2c-{number}")
    } else {
        adapter.to_string()
    };
    for &addr in &cfg.allow {
        let here = (at.guest.to_string(), at.dev_num);
        if let Some((guest, dev_num)) = users.addresses.get(&(key.clone(), addr)) {
            return Err(err(
                format!(
                    "address {addr:#04x} on adapter {key} is allowed to guest {:?} device {dev_num} and to guest {:?} device {}; two guests may not share an address on one adapter",
                    guest, at.guest, at.dev_num
                ),
                "give the address to one device only (split the chips between guests, or use one guest)",
            ));
        }
        users.addresses.insert((key.clone(), addr), here);
    }
    Ok(())
}

fn check_chips(
    loc: &Locator<'_>,
    at: &Where<'_>,
    cfg: &mut I2cDeviceConfig,
    host_checks: bool,
    users: &mut I2cUsers,
) -> Result<(), ConfigError> {
    let err = |message: String, fix: &str| loc.error(Some(at.span.clone()), message, fix);
    if !cfg.allow.is_empty() {
        return Err(err(
            "allow is for a host adapter; simulated chips answer at their own addresses".into(),
            "remove allow, or add adapter = N to pass a host adapter through",
        ));
    }
    let mut seen = BTreeSet::new();
    for chip in &mut cfg.chip {
        let addr = chip.addr();
        if !is_device_addr(addr) {
            return Err(err(
                format!(
                    "chip address {addr:#x} is not a 7-bit device address ({FIRST_ADDR:#04x}..={LAST_ADDR:#04x})"
                ),
                "a 24c02 usually sits at 0x50..=0x57, an lm75 at 0x48..=0x4f",
            ));
        }
        if !seen.insert(addr) {
            return Err(err(
                format!("two chips at address {addr:#04x}"),
                "give every chip of a device its own addr",
            ));
        }
        match chip {
            ChipSpec::Lm75 { temperature_mc, .. } => {
                if !(lm75::MIN_MC..=lm75::MAX_MC).contains(temperature_mc) {
                    return Err(err(
                        format!("lm75 temperature_mc {temperature_mc} is outside the part's range"),
                        &format!(
                            "use {}..={} (millidegrees Celsius, e.g. 23500 for 23.5 °C)",
                            lm75::MIN_MC,
                            lm75::MAX_MC
                        ),
                    ));
                }
            }
            ChipSpec::Eeprom24c02 {
                file: Some(path), ..
            } => {
                if path.as_os_str().is_empty() {
                    return Err(err(
                        "24c02 file is empty".into(),
                        "give a path, or remove file to keep the contents in memory",
                    ));
                }
                if path.is_relative() {
                    if let Some(dir) = loc.file.parent().filter(|d| !d.as_os_str().is_empty()) {
                        *path = dir.join(&*path);
                    }
                }
                if host_checks {
                    check_backing_file(path).map_err(|(message, fix)| err(message, &fix))?;
                }
                let key = std::fs::canonicalize(&*path).unwrap_or_else(|_| path.clone());
                if let Some((guest, dev_num)) = users.files.get(&key) {
                    return Err(err(
                        format!(
                            "24c02 file {} is also used by guest {guest:?} device {dev_num}; two EEPROMs on one file overwrite each other",
                            path.display()
                        ),
                        "give every EEPROM its own file",
                    ));
                }
                users.files.insert(key, (at.guest.to_string(), at.dev_num));
            }
            ChipSpec::Eeprom24c02 { file: None, .. } => {}
        }
    }
    Ok(())
}

/// A backing file must be a regular file of 0 or 256 bytes, or not exist
/// in an existing directory (it is created erased).
fn check_backing_file(path: &Path) -> Result<(), (String, String)> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && (m.len() == 0 || m.len() == eeprom::SIZE as u64) => Ok(()),
        Ok(m) if m.is_file() => Err((
            format!(
                "24c02 file {} is {} bytes; it holds exactly {}",
                path.display(),
                m.len(),
                eeprom::SIZE
            ),
            "point at the EEPROM's own file, or remove it to start erased".into(),
        )),
        Ok(_) => Err((
            format!("24c02 file {} is not a regular file", path.display()),
            "point file at a regular file (it is created if missing)".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if dir.is_dir() {
                Ok(())
            } else {
                Err((
                    format!(
                        "24c02 file {}: directory {} does not exist",
                        path.display(),
                        dir.display()
                    ),
                    "create the directory; the file is created erased at start".into(),
                ))
            }
        }
        Err(e) => Err((
            format!("cannot access 24c02 file {}: {e}", path.display()),
            "check the path and its permissions".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, DeviceConfig};
    use super::*;

    fn guest(name: &str, socket: &str, devices: &str) -> String {
        format!(
            "[[guest]]\nname = \"{name}\"\nbus = {{ kind = \"local\", socket = \"{socket}\" }}\n{devices}"
        )
    }

    const PASS: &str =
        "[[guest.device]]\nkind = \"i2c\"\ndev_num = 5\nadapter = 1\nallow = [0x50, 0x1c, 0x50]\n";
    const SIM: &str = "[[guest.device]]\nkind = \"i2c\"\n[[guest.device.chip]]\nmodel = \"24c02\"\naddr = 0x50\n[[guest.device.chip]]\nmodel = \"lm75\"\naddr = 0x48\ntemperature_mc = -5500\n";

    fn offline(text: &str) -> Result<Config, ConfigError> {
        Config::parse_offline(Path::new("test.toml"), text)
    }

    fn only_device(cfg: &Config) -> &I2cDeviceConfig {
        match &cfg.guests[0].devices[0].1 {
            DeviceConfig::I2c(c) => c,
            d => panic!("not i2c: {d:?}"),
        }
    }

    #[test]
    fn passthrough_and_simulated_devices_parse() {
        let cfg = offline(&guest("g", "/s", PASS)).expect("passthrough");
        let d = only_device(&cfg);
        assert_eq!(cfg.guests[0].devices[0].0, 5);
        assert_eq!(d.adapter, Some(AdapterSpec::Number(1)));
        assert_eq!(d.allow, vec![0x1c, 0x50], "sorted, once each");
        assert_eq!(
            d.backend(),
            I2cBackend::Host {
                adapter: AdapterRef::Number(1),
                allow: vec![0x1c, 0x50]
            }
        );
        let cfg = offline(&guest("g", "/s", SIM)).expect("simulated");
        let d = only_device(&cfg);
        assert_eq!(
            d.backend(),
            I2cBackend::Sim {
                chips: vec![
                    ChipConfig {
                        addr: 0x50,
                        model: ChipModel::Eeprom24c02 { file: None }
                    },
                    ChipConfig {
                        addr: 0x48,
                        model: ChipModel::Lm75 {
                            temperature_mc: -5500
                        }
                    },
                ]
            }
        );
        let named =
            "[[guest.device]]\nkind = \"i2c\"\nadapter = \"SMBus stub driver\"\nallow = [0x1c]\n";
        let cfg = offline(&guest("g", "/s", named)).expect("by name");
        assert_eq!(
            only_device(&cfg).adapter,
            Some(AdapterSpec::Name("SMBus stub driver".into()))
        );
    }

    #[test]
    fn mistakes_are_located_with_a_fix() {
        for (devices, what, fix) in [
            (
                "[[guest.device]]\nkind = \"i2c\"\n".to_string(),
                "needs adapter",
                "[[guest.device.chip]]",
            ),
            (
                format!("{PASS}[[guest.device.chip]]\nmodel = \"lm75\"\naddr = 0x48\n"),
                "not both",
                "device of their own",
            ),
            (
                "[[guest.device]]\nkind = \"i2c\"\nadapter = 0\n".into(),
                "needs the addresses",
                "allow = [0x50",
            ),
            (
                "[[guest.device]]\nkind = \"i2c\"\nadapter = 0\nallow = [0x50, 0x78]\n".into(),
                "0x78 is not a 7-bit device address",
                "ten-bit",
            ),
            (
                "[[guest.device]]\nkind = \"i2c\"\nallow = [0x50]\n[[guest.device.chip]]\nmodel = \"lm75\"\naddr = 0x48\n".into(),
                "allow is for a host adapter",
                "remove allow",
            ),
            (
                "[[guest.device]]\nkind = \"i2c\"\n[[guest.device.chip]]\nmodel = \"lm75\"\naddr = 0x48\n[[guest.device.chip]]\nmodel = \"24c02\"\naddr = 0x48\n".into(),
                "two chips at address 0x48",
                "its own addr",
            ),
            (
                "[[guest.device]]\nkind = \"i2c\"\n[[guest.device.chip]]\nmodel = \"24c02\"\naddr = 0x02\n".into(),
                "not a 7-bit device address",
                "0x50",
            ),
            (
                "[[guest.device]]\nkind = \"i2c\"\n[[guest.device.chip]]\nmodel = \"lm75\"\naddr = 0x48\ntemperature_mc = 150000\n".into(),
                "outside the part's range",
                "23500",
            ),
        ] {
            let text = guest("g", "/s", &devices);
            let e = offline(&text).expect_err(what);
            assert!(e.message.contains(what), "{what}: {e}");
            assert!(e.fix.contains(fix), "{what}: {e}");
            assert_eq!(e.line, 4, "{what}: located at the device table: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_models_are_named() {
        let e = offline(&guest(
            "g",
            "/s",
            "[[guest.device]]\nkind = \"i2c\"\nadapter = 0\nallow = [0x50]\nspeed = 400\n",
        ))
        .expect_err("unknown key");
        assert!(e.message.contains("speed"), "{e}");
        let e = offline(&guest(
            "g",
            "/s",
            "[[guest.device]]\nkind = \"i2c\"\n[[guest.device.chip]]\nmodel = \"24c64\"\naddr = 0x50\n",
        ))
        .expect_err("unknown model");
        assert!(e.message.contains("24c64"), "{e}");
        assert!(
            e.message.contains("24c02") && e.message.contains("lm75"),
            "lists the models: {e}"
        );
    }

    #[test]
    fn two_guests_may_not_share_an_address_on_one_adapter() {
        let a = guest(
            "a",
            "/a",
            "[[guest.device]]\nkind = \"i2c\"\ndev_num = 3\nadapter = 1\nallow = [0x1c, 0x50]\n",
        );
        let b = guest(
            "b",
            "/b",
            "[[guest.device]]\nkind = \"i2c\"\ndev_num = 7\nadapter = 1\nallow = [0x50]\n",
        );
        let e = offline(&format!("{a}{b}")).expect_err("0x50 twice on i2c-1");
        assert!(
            e.message.contains("guest \"a\" device 3")
                && e.message.contains("guest \"b\" device 7"),
            "names both: {e}"
        );
        assert!(
            e.message.contains("0x50") && e.message.contains("i2c-1"),
            "{e}"
        );
        assert_eq!(e.line, 12, "at the second device: {e}");
        // Other addresses or another adapter are fine.
        let c = guest(
            "c",
            "/c",
            "[[guest.device]]\nkind = \"i2c\"\nadapter = 2\nallow = [0x50]\n",
        );
        let d = guest(
            "d",
            "/d",
            "[[guest.device]]\nkind = \"i2c\"\nadapter = 1\nallow = [0x51]\n",
        );
        offline(&format!("{a}{c}{d}")).expect("disjoint");
        // Within one guest too.
        let twice = guest(
            "g",
            "/g",
            "[[guest.device]]\nkind = \"i2c\"\nadapter = 1\nallow = [0x20]\n[[guest.device]]\nkind = \"i2c\"\nadapter = 1\nallow = [0x20]\n",
        );
        assert!(offline(&twice).is_err());
    }

    #[test]
    fn host_checks_look_for_the_adapter() {
        // No I2C on the machines the tests run on: the adapter is missing,
        // and the error says how to find it.
        let text = guest("g", "/s", PASS);
        if Path::new("/dev/i2c-1").exists() {
            return;
        }
        let e = Config::parse(Path::new("test.toml"), &text).expect_err("no /dev/i2c-1");
        assert!(e.message.contains("/dev/i2c-1 does not exist"), "{e}");
        assert!(e.fix.contains("i2cdetect -l"), "{e}");
        let named = guest(
            "g",
            "/s",
            "[[guest.device]]\nkind = \"i2c\"\nadapter = \"no such adapter\"\nallow = [0x1c]\n",
        );
        let e = Config::parse(Path::new("test.toml"), &named).expect_err("no such name");
        assert!(e.message.contains("no such adapter"), "{e}");
    }

    #[test]
    fn eeprom_files_are_checked_resolved_and_not_shared() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("vmsgd.toml");
        let eeprom = |f: &str| {
            format!(
                "[[guest.device]]\nkind = \"i2c\"\n[[guest.device.chip]]\nmodel = \"24c02\"\naddr = 0x50\nfile = \"{f}\"\n"
            )
        };
        // Relative to the config file; need not exist yet.
        let cfg = Config::parse(&file, &guest("g", "/s", &eeprom("e.bin"))).expect("new file");
        match &only_device(&cfg).chip[0] {
            ChipSpec::Eeprom24c02 { file: Some(p), .. } => assert_eq!(p, &dir.path().join("e.bin")),
            c => panic!("{c:?}"),
        }
        std::fs::write(dir.path().join("bad.bin"), [0u8; 100]).expect("file");
        let e = Config::parse(&file, &guest("g", "/s", &eeprom("bad.bin"))).expect_err("100 bytes");
        assert!(e.message.contains("is 100 bytes"), "{e}");
        let e =
            Config::parse(&file, &guest("g", "/s", &eeprom("no/dir/e.bin"))).expect_err("no dir");
        assert!(e.message.contains("does not exist"), "{e}");
        let two = format!(
            "{}{}",
            guest("a", "/a", &eeprom("e.bin")),
            guest("b", "/b", &eeprom("e.bin"))
        );
        let e = Config::parse(&file, &two).expect_err("shared");
        assert!(e.message.contains("also used by guest \"a\""), "{e}");
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../../../../dom0-config/i2c.toml");
        let cfg = Config::parse_offline(Path::new("dom0-config/i2c.toml"), text)
            .expect("the shipped i2c example parses");
        let kinds: Vec<bool> = cfg
            .guests
            .iter()
            .flat_map(|g| &g.devices)
            .filter_map(|(_, d)| match d {
                DeviceConfig::I2c(c) => Some(c.adapter.is_some()),
                _ => None,
            })
            .collect();
        assert!(
            kinds.contains(&true) && kinds.contains(&false),
            "shows passthrough and simulated: {kinds:?}"
        );
    }
}
