//! Building a guest's device models from its configuration: the one place
//! devices are constructed, used when guests start (`daemon`, `xen`) and
//! when a reload adds devices (`reload`).

use vmsg_backend::device::VirtioDevice;
use vmsg_backend::instance::DeviceList;
use vmsg_devices::blk::{BlkConfig, BlkDevice};
use vmsg_devices::i2c::I2cDevice;
use vmsg_devices::i2c::host::SYSFS_I2C_DEVICES;
use vmsg_devices::rng::{HostEntropy, RngDevice};

use crate::config::{BusConfig, DeviceConfig, GuestConfig};
use crate::error::DaemonError;

/// Build the device models of one guest.
pub fn build_devices(guest: &GuestConfig) -> Result<DeviceList, DaemonError> {
    guest
        .devices
        .iter()
        .map(|(dev_num, cfg)| Ok((*dev_num, build_device(guest, *dev_num, cfg)?)))
        .collect()
}

/// Build the model of device `dev_num` (configured as `cfg`) of `guest`.
pub fn build_device(
    guest_config: &GuestConfig,
    dev_num: u16,
    cfg: &DeviceConfig,
) -> Result<Box<dyn VirtioDevice>, DaemonError> {
    let guest = guest_config.name.as_str();
    Ok(match cfg {
        DeviceConfig::Rng { rate_limit, .. } => Box::new(
            RngDevice::new(
                format!("{guest}/rng{dev_num}"),
                Box::new(HostEntropy),
                *rate_limit,
            )
            .map_err(|source| DaemonError::Device {
                guest: guest.to_string(),
                dev_num,
                kind: cfg.kind(),
                source,
            })?,
        ),
        DeviceConfig::Blk {
            path,
            read_only,
            direct,
            engine,
            num_queues,
            queue_size,
            serial,
            writeback,
            ..
        } => {
            let blk = BlkConfig {
                path: path.clone(),
                read_only: *read_only,
                direct: *direct,
                engine: (*engine).into(),
                num_queues: *num_queues,
                queue_size: *queue_size,
                serial: serial.clone(),
                writeback: *writeback,
                bounce: !memory_pinnable(&guest_config.bus),
            };
            Box::new(
                BlkDevice::new(format!("{guest}/blk{dev_num}"), &blk).map_err(|source| {
                    DaemonError::Blk {
                        guest: guest.to_string(),
                        dev_num,
                        source,
                    }
                })?,
            )
        }
        DeviceConfig::I2c(i2c) => Box::new(
            I2cDevice::open(
                format!("{guest}/i2c{dev_num}"),
                &i2c.backend(),
                std::path::Path::new(SYSFS_I2C_DEVICES),
            )
            .map_err(|source| DaemonError::I2c {
                guest: guest.to_string(),
                dev_num,
                source,
            })?,
        ),
    })
}

/// Whether the kernel can pin the guest memory this bus maps for I/O. The
/// Linux loopback's pool is mapped with `remap_pfn_range` (a PFN mapping):
/// O_DIRECT and zero-copy file systems fail on it with EFAULT, so block
/// devices bounce their I/O there (seen on the real kernel, tests/linux-qemu).
fn memory_pinnable(bus: &BusConfig) -> bool {
    !matches!(bus, BusConfig::LinuxUser { .. })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn guest(text: &str) -> GuestConfig {
        let cfg = Config::parse_offline(Path::new("test.toml"), text).expect("valid config");
        cfg.guests.into_iter().next().expect("one guest")
    }

    #[test]
    fn builds_rng_and_blk_devices() {
        let img = tempfile::NamedTempFile::new().expect("image");
        img.as_file().set_len(1 << 20).expect("size");
        let g = guest(&format!(
            "[[guest]]\nname = \"g\"\nbus = {{ kind = \"local\", socket = \"/s\" }}\n[[guest.device]]\nkind = \"rng\"\n[[guest.device]]\nkind = \"blk\"\npath = \"{}\"\nnum_queues = 3\nengine = \"sync\"\n",
            img.path().display()
        ));
        let devices = build_devices(&g).expect("devices");
        let kinds: Vec<(u16, u32, usize)> = devices
            .iter()
            .map(|(n, d)| (*n, d.device_type(), d.queue_max_sizes().len()))
            .collect();
        assert_eq!(kinds, vec![(0, 4, 1), (1, 2, 3)]);
    }

    #[test]
    fn builds_a_simulated_i2c_device() {
        let dir = tempfile::tempdir().expect("dir");
        let g = guest(&format!(
            "[[guest]]\nname = \"g\"\nbus = {{ kind = \"local\", socket = \"/s\" }}\n[[guest.device]]\nkind = \"i2c\"\ndev_num = 4\n[[guest.device.chip]]\nmodel = \"24c02\"\naddr = 0x50\nfile = \"{}\"\n",
            dir.path().join("e.bin").display()
        ));
        let devices = build_devices(&g).expect("devices");
        assert_eq!(devices[0].0, 4);
        assert_eq!(devices[0].1.device_type(), 34);
        assert_eq!(devices[0].1.name(), "g/i2c4");
        assert_eq!(
            std::fs::read(dir.path().join("e.bin")).expect("created erased"),
            vec![0xff; 256]
        );
    }

    #[test]
    fn i2c_open_failure_names_guest_and_device() {
        // No host I2C adapters here (no CONFIG_I2C): opening fails, named.
        if std::path::Path::new("/dev/i2c-7").exists() {
            return;
        }
        let g = guest(
            "[[guest]]\nname = \"g\"\nbus = { kind = \"local\", socket = \"/s\" }\n[[guest.device]]\nkind = \"i2c\"\ndev_num = 2\nadapter = 7\nallow = [0x50]\n",
        );
        let Err(err) = build_devices(&g) else {
            panic!("built a passthrough device without the adapter");
        };
        let text = err.to_string();
        assert!(text.contains("guest g: device 2 (i2c)"), "{text}");
        assert!(text.contains("/dev/i2c-7"), "{text}");
    }

    #[test]
    fn blk_open_failure_names_guest_and_device() {
        let dir = tempfile::tempdir().expect("dir");
        let g = guest(&format!(
            "[[guest]]\nname = \"g\"\nbus = {{ kind = \"local\", socket = \"/s\" }}\n[[guest.device]]\nkind = \"blk\"\ndev_num = 7\npath = \"{}\"\n",
            dir.path().join("gone.img").display()
        ));
        let Err(err) = build_devices(&g) else {
            panic!("built a device on an image that does not exist");
        };
        let text = err.to_string();
        assert!(matches!(err, DaemonError::Blk { dev_num: 7, .. }), "{text}");
        assert!(text.contains("guest g: device 7 (blk)"), "{text}");
        assert!(text.contains("gone.img"), "{text}");
    }
}
