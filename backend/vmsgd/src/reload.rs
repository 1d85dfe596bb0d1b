//! Applying an edited configuration to running guests (SIGHUP): devices
//! are added and removed while the guest is served, announced to its driver
//! with EVENT_DEVICE (`vmsg_backend::hotplug`).
//!
//! Only device changes apply live. A device whose settings changed is
//! removed and added again under the same number (its driver sees REMOVED
//! then ADDED). A changed bus, a new guest or a removed guest needs a
//! restart; the reload says so and leaves that guest as it was. A file that
//! does not load changes nothing. All new device models of a guest are
//! built before anything is queued, so an image that fails to open leaves
//! the guest's devices exactly as they were.

use log::{info, warn};
use thiserror::Error;
use vmsg_backend::device::VirtioDevice;
use vmsg_backend::hotplug::{DeviceControl, PendingChange};

use crate::config::{BusConfig, DeviceConfig, GuestConfig};
use crate::devices::build_device;
use crate::error::DaemonError;

/// Why a guest's reload was not applied.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The bus settings changed: the bus cannot be swapped under a
    /// connected driver.
    #[error(
        "guest {0}: its bus settings changed; restart vmsgd (or its domain's process) to apply them"
    )]
    BusChanged(String),
    /// A guest appeared in the file.
    #[error("guest {0} is new; restart vmsgd to serve it")]
    GuestAdded(String),
    /// A guest disappeared from the file.
    #[error("guest {0} is no longer configured; restart vmsgd to stop serving it")]
    GuestRemoved(String),
    /// A new device could not be built; nothing of this guest was changed.
    /// (Not a `#[source]`: the message already carries it.)
    #[error("{0} (nothing of this guest was changed)")]
    Device(DaemonError),
    /// The Linux loopback bus cannot take devices away live: the kernel
    /// would have to REMOVE them while they are still served, and the RFC
    /// kernel's REMOVE deadlocks. Additions are applied; this guest's reload
    /// changed nothing.
    #[error(
        "guest {0}: devices {1:?} cannot be removed or changed live on the Linux loopback bus (its REMOVE deadlocks in the kernel); nothing of this guest was changed; restart vmsgd to apply"
    )]
    CannotRemove(String, Vec<u16>),
}

/// What a reload changes on one guest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// Device numbers to remove (gone, or changed).
    pub remove: Vec<u16>,
    /// Devices to add (new, or changed).
    pub add: Vec<(u16, DeviceConfig)>,
}

impl DevicePlan {
    /// Compare `old` and `new` device lists of one guest.
    pub fn between(old: &GuestConfig, new: &GuestConfig) -> Self {
        let find = |list: &[(u16, DeviceConfig)], n: u16| {
            list.iter().find(|(m, _)| *m == n).map(|(_, c)| c.clone())
        };
        let mut plan = Self::default();
        for (n, cfg) in &old.devices {
            if find(&new.devices, *n).as_ref() != Some(cfg) {
                plan.remove.push(*n);
            }
        }
        for (n, cfg) in &new.devices {
            if find(&old.devices, *n).as_ref() != Some(cfg) {
                plan.add.push((*n, cfg.clone()));
            }
        }
        plan
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

/// Apply `new` to a guest running `old` through its device control. On
/// success the changes are queued (the guest's thread carries them out and
/// logs each); the returned handles tell their outcome to whoever wants to
/// wait.
pub fn reload_guest(
    control: &DeviceControl,
    old: &GuestConfig,
    new: &GuestConfig,
) -> Result<Vec<PendingChange>, ReloadError> {
    if old.bus != new.bus {
        return Err(ReloadError::BusChanged(new.name.clone()));
    }
    let plan = DevicePlan::between(old, new);
    if plan.is_empty() {
        info!("guest {}: devices unchanged", new.name);
        return Ok(Vec::new());
    }
    if matches!(new.bus, BusConfig::LinuxUser { .. }) && !plan.remove.is_empty() {
        // New devices reach its kernel through the registrar's ADD; a
        // removal cannot (vmsg_backend::linux_user's serve).
        return Err(ReloadError::CannotRemove(new.name.clone(), plan.remove));
    }
    let built = plan
        .add
        .iter()
        .map(|(n, cfg)| Ok((*n, build_device(new, *n, cfg)?)))
        .collect::<Result<Vec<(u16, Box<dyn VirtioDevice>)>, DaemonError>>()
        .map_err(ReloadError::Device)?;
    info!(
        "guest {}: reload removes {:?}, adds {:?}",
        new.name,
        plan.remove,
        plan.add.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    let mut pending: Vec<PendingChange> = plan.remove.iter().map(|&n| control.remove(n)).collect();
    pending.extend(built.into_iter().map(|(n, dev)| control.add(n, dev)));
    Ok(pending)
}

/// Log the reload errors of guests that kept their devices.
pub fn warn_unapplied(errors: &[ReloadError]) {
    for e in errors {
        warn!("reload: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn guest(devices: &str) -> GuestConfig {
        let text = format!(
            "[[guest]]\nname = \"g\"\nbus = {{ kind = \"local\", socket = \"/run/g.sock\" }}\n{devices}"
        );
        Config::parse_offline(std::path::Path::new("g.toml"), &text)
            .expect("config")
            .guests
            .remove(0)
    }

    const RNG1: &str = "[[guest.device]]\nkind = \"rng\"\ndev_num = 1\n";
    const RNG2: &str = "[[guest.device]]\nkind = \"rng\"\ndev_num = 2\n";
    const RNG2_LIMITED: &str = "[[guest.device]]\nkind = \"rng\"\ndev_num = 2\nrate_limit = 1000\n";

    #[test]
    fn a_device_that_fails_to_build_changes_nothing() {
        use vmsg_backend::fake::FakeBus;
        use vmsg_backend::instance::{GuestInstance, InstanceOptions};

        let old = guest(RNG1);
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.img");
        // parse_offline does not check images: the open fails at build time.
        let new = guest(&format!(
            "[[guest.device]]\nkind = \"blk\"\ndev_num = 2\npath = \"{}\"\n",
            missing.display()
        ));
        let devices = crate::devices::build_devices(&old).expect("devices");
        let mut instance =
            GuestInstance::new("g", InstanceOptions::default(), devices).expect("instance");
        let result = reload_guest(&instance.device_control(), &old, &new);
        assert!(matches!(result, Err(ReloadError::Device(_))), "{result:?}");
        // Nothing was queued: device 1 survives the next connection.
        let bus = FakeBus::new(264, 0x1000_0000, 1 << 20).expect("fake bus");
        instance.attach(&bus).expect("attach");
        assert_eq!(
            instance.stats().devices.keys().copied().collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn linux_user_guests_take_additions_live_but_not_removals() {
        let on_lb = |devices: &str| {
            let text =
                format!("[[guest]]\nname = \"g\"\nbus = {{ kind = \"linux-user\" }}\n{devices}");
            Config::parse_offline(std::path::Path::new("g.toml"), &text)
                .expect("config")
                .guests
                .remove(0)
        };
        let old = on_lb(RNG1);
        let instance = vmsg_backend::instance::GuestInstance::new(
            "g",
            Default::default(),
            crate::devices::build_devices(&old).expect("devices"),
        )
        .expect("instance");
        let both = on_lb(&format!("{RNG1}{RNG2}"));
        let added = reload_guest(&instance.device_control(), &old, &both).expect("addition");
        assert_eq!(
            added.iter().map(|p| p.dev_num()).collect::<Vec<_>>(),
            vec![2]
        );
        let r = reload_guest(&instance.device_control(), &both, &old);
        match r {
            Err(e @ ReloadError::CannotRemove(..)) => {
                let text = e.to_string();
                assert!(text.contains("devices [2] cannot be removed"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        // Unchanged devices are not an error.
        assert!(reload_guest(&instance.device_control(), &old, &old).is_ok());
    }

    #[test]
    fn plan_adds_removes_and_replaces_changed_devices() {
        let old = guest(&format!("{RNG1}{RNG2}"));
        assert!(DevicePlan::between(&old, &old).is_empty());
        let plan = DevicePlan::between(&old, &guest(RNG1));
        assert_eq!(plan.remove, vec![2]);
        assert!(plan.add.is_empty());
        let plan = DevicePlan::between(&guest(RNG1), &old);
        assert!(plan.remove.is_empty());
        assert_eq!(
            plan.add.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![2]
        );
        let plan = DevicePlan::between(&old, &guest(&format!("{RNG1}{RNG2_LIMITED}")));
        assert_eq!(plan.remove, vec![2]);
        assert_eq!(
            plan.add.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![2]
        );
    }
}
