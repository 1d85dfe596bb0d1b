//! Passthrough to a host I²C adapter through Linux's `i2c-dev`
//! (`/dev/i2c-N`, Documentation/i2c/dev-interface.rst).
//!
//! `I2C_FUNCS` decides how transactions go: an adapter with `I2C_FUNC_I2C`
//! gets each transaction as one `I2C_RDWR` (one combined transfer, repeated
//! STARTs, one STOP); an SMBus-only adapter gets the SMBus command that puts
//! the same bytes on the wire ([`super::smbus`]), after `I2C_SLAVE` selected
//! the target. Ten-bit addressing is not used (the device refuses ten-bit
//! requests before they get here).
//!
//! Adapters are named by number or by the name the kernel gives them
//! (`/sys/bus/i2c/devices/i2c-N/name`), which survives renumbering across
//! boots.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::adapter::{
    FailKind, I2cAdapter, I2cMsg, MAX_MSG_LEN, MAX_TRANSACTION_MSGS, TransferError,
};
use super::smbus::{self, BLOCK_MAX, SmbusOp, SmbusReply, func};

/// `i2c-dev` ioctl numbers (include/uapi/linux/i2c-dev.h): plain numbers,
/// not `_IOC` encoded.
const I2C_SLAVE: libc::c_ulong = 0x0703;
const I2C_FUNCS: libc::c_ulong = 0x0705;
const I2C_RDWR: libc::c_ulong = 0x0707;
const I2C_SMBUS: libc::c_ulong = 0x0720;
/// `i2c_msg.flags`: a read.
const I2C_M_RD: u16 = 0x0001;
const I2C_SMBUS_READ: u8 = 1;
const I2C_SMBUS_WRITE: u8 = 0;
/// `i2c_smbus_ioctl_data.size` values.
const I2C_SMBUS_QUICK: u32 = 0;
const I2C_SMBUS_BYTE: u32 = 1;
const I2C_SMBUS_BYTE_DATA: u32 = 2;
const I2C_SMBUS_WORD_DATA: u32 = 3;
const I2C_SMBUS_PROC_CALL: u32 = 4;
const I2C_SMBUS_I2C_BLOCK_DATA: u32 = 8;

/// `struct i2c_msg`.
#[repr(C)]
struct RawMsg {
    addr: u16,
    flags: u16,
    len: u16,
    buf: *mut u8,
}

/// `struct i2c_rdwr_ioctl_data`.
#[repr(C)]
struct RdwrData {
    msgs: *mut RawMsg,
    nmsgs: u32,
}

/// `union i2c_smbus_data`: a byte, a native-endian word, or a block whose
/// byte 0 is the length (34 bytes, 2-aligned).
#[repr(C, align(2))]
struct SmbusData {
    block: [u8; BLOCK_MAX + 2],
}

/// `struct i2c_smbus_ioctl_data`.
#[repr(C)]
struct SmbusIoctl {
    read_write: u8,
    command: u8,
    size: u32,
    data: *mut SmbusData,
}

/// Errors opening a host adapter.
#[derive(Debug, Error)]
pub enum HostError {
    /// The device node could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `I2C_FUNCS` failed: not an i2c-dev node.
    #[error("{path}: I2C_FUNCS failed ({source}); is it an i2c-dev node?")]
    Funcs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The adapter offers neither I²C nor any SMBus command we use.
    #[error(
        "{path} ({name}) offers neither I2C transfers nor SMBus commands (functionality {funcs:#010x})"
    )]
    Useless {
        path: PathBuf,
        name: String,
        funcs: u64,
    },
    /// No adapter of that name in sysfs.
    #[error("no I2C adapter named {name:?} in {dir} (adapters there: {present})")]
    NoSuchName {
        name: String,
        dir: PathBuf,
        present: String,
    },
    /// Several adapters of that name.
    #[error("several I2C adapters are named {name:?}: i2c-{numbers}; name it by number instead")]
    Ambiguous { name: String, numbers: String },
    /// sysfs could not be read.
    #[error("cannot list I2C adapters in {dir}: {source}")]
    Sysfs {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the kernel lists I²C adapters (and clients) in sysfs.
pub const SYSFS_I2C_DEVICES: &str = "/sys/bus/i2c/devices";

/// The adapters listed under `dir` (a `/sys/bus/i2c/devices`): number and
/// name, by number. Clients (`0-0050`) are skipped.
pub fn list_adapters(dir: &Path) -> Result<Vec<(u32, String)>, HostError> {
    let sysfs = |source| HostError::Sysfs {
        dir: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(sysfs)? {
        let entry = entry.map_err(sysfs)?;
        let file_name = entry.file_name();
        let Some(n) = file_name
            .to_str()
            .and_then(|s| s.strip_prefix("i2c-"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        out.push((n, name.trim_end_matches('\n').to_string()));
    }
    out.sort();
    Ok(out)
}

/// The number of the adapter named `name` under `dir`.
pub fn find_adapter(dir: &Path, name: &str) -> Result<u32, HostError> {
    let all = list_adapters(dir)?;
    let hits: Vec<u32> = all
        .iter()
        .filter(|(_, n)| n == name)
        .map(|(i, _)| *i)
        .collect();
    match hits.as_slice() {
        [n] => Ok(*n),
        [] => Err(HostError::NoSuchName {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            present: if all.is_empty() {
                "none".into()
            } else {
                all.iter()
                    .map(|(i, n)| format!("i2c-{i} {n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
        many => Err(HostError::Ambiguous {
            name: name.to_string(),
            numbers: many
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", i2c-"),
        }),
    }
}

/// The name sysfs gives adapter `number`, if any.
pub fn adapter_name(dir: &Path, number: u32) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("i2c-{number}")).join("name"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// The device node of adapter `number`.
pub fn dev_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/i2c-{number}"))
}

/// A host adapter opened through i2c-dev.
#[derive(Debug)]
pub struct HostAdapter {
    file: File,
    path: PathBuf,
    name: String,
    funcs: u64,
    /// The address `I2C_SLAVE` selected last (SMBus path).
    selected: Option<u16>,
}

impl HostAdapter {
    /// Open `path` (a `/dev/i2c-N`) and read its functionality. `name` is
    /// for logs.
    pub fn open(path: &Path, name: &str) -> Result<Self, HostError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| HostError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let mut funcs: libc::c_ulong = 0;
        // SAFETY: I2C_FUNCS writes one unsigned long through the pointer,
        // which points at a live, exclusively borrowed c_ulong.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), I2C_FUNCS, &mut funcs) };
        if rc < 0 {
            return Err(HostError::Funcs {
                path: path.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        // c_ulong is 32 bits on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let funcs = u64::from(funcs);
        let smbus_any = func::SMBUS_QUICK
            | func::SMBUS_READ_BYTE
            | func::SMBUS_WRITE_BYTE
            | func::SMBUS_READ_BYTE_DATA
            | func::SMBUS_WRITE_BYTE_DATA
            | func::SMBUS_READ_WORD_DATA
            | func::SMBUS_WRITE_WORD_DATA
            | func::SMBUS_PROC_CALL
            | func::SMBUS_READ_I2C_BLOCK
            | func::SMBUS_WRITE_I2C_BLOCK;
        if funcs & (func::I2C | smbus_any) == 0 {
            return Err(HostError::Useless {
                path: path.to_path_buf(),
                name: name.to_string(),
                funcs,
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            name: name.to_string(),
            funcs,
            selected: None,
        })
    }

    /// `I2C_FUNCS` of the adapter.
    pub fn funcs(&self) -> u64 {
        self.funcs
    }

    /// Whether transactions go as `I2C_RDWR` (else as SMBus commands).
    pub fn is_i2c(&self) -> bool {
        self.funcs & func::I2C != 0
    }

    fn rdwr(&mut self, msgs: &mut [I2cMsg]) -> Result<(), TransferError> {
        if msgs.len() > MAX_TRANSACTION_MSGS || msgs.iter().any(|m| m.buf.len() > MAX_MSG_LEN) {
            // The device bounds both before it gets here.
            return Err(TransferError::at(
                0,
                FailKind::Unsupported("transaction beyond the I2C_RDWR limits".into()),
            ));
        }
        let mut raw: Vec<RawMsg> = msgs
            .iter_mut()
            .map(|m| RawMsg {
                addr: m.addr,
                flags: if m.read { I2C_M_RD } else { 0 },
                len: m.buf.len() as u16,
                buf: m.buf.as_mut_ptr(),
            })
            .collect();
        let mut data = RdwrData {
            msgs: raw.as_mut_ptr(),
            nmsgs: raw.len() as u32,
        };
        // SAFETY: `data` points at `raw`, whose entries point at the
        // messages' buffers of exactly `len` bytes; all of them are live and
        // exclusively borrowed for the call, and the kernel copies in and
        // out during it and keeps no pointer afterwards.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), I2C_RDWR, &mut data) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            // The kernel does not say how far a failed transfer got.
            return Err(TransferError::at(0, errno_kind(&err)));
        }
        // A driver may report fewer messages than asked without an error.
        let done = rc as usize;
        if done < msgs.len() {
            return Err(TransferError::at(done, FailKind::Nack));
        }
        Ok(())
    }

    fn select(&mut self, addr: u16) -> Result<(), FailKind> {
        if self.selected == Some(addr) {
            return Ok(());
        }
        // SAFETY: I2C_SLAVE takes its argument by value; no memory is passed.
        let rc =
            unsafe { libc::ioctl(self.file.as_raw_fd(), I2C_SLAVE, libc::c_ulong::from(addr)) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            self.selected = None;
            return Err(if err.raw_os_error() == Some(libc::EBUSY) {
                FailKind::Host(format!(
                    "address {addr:#04x} is claimed by a host kernel driver (EBUSY)"
                ))
            } else {
                FailKind::Host(format!("I2C_SLAVE {addr:#04x}: {err}"))
            });
        }
        self.selected = Some(addr);
        Ok(())
    }

    fn smbus(&mut self, msgs: &mut [I2cMsg]) -> Result<(), TransferError> {
        let fail = |kind| TransferError::at(0, kind);
        let (addr, op) = smbus::plan(msgs, self.funcs).map_err(fail)?;
        self.select(addr).map_err(fail)?;
        let mut data = SmbusData {
            block: [0; BLOCK_MAX + 2],
        };
        let (read_write, command, size) = match &op {
            SmbusOp::Quick { read } => (
                if *read {
                    I2C_SMBUS_READ
                } else {
                    I2C_SMBUS_WRITE
                },
                0,
                I2C_SMBUS_QUICK,
            ),
            SmbusOp::SendByte(c) => (I2C_SMBUS_WRITE, *c, I2C_SMBUS_BYTE),
            SmbusOp::ReceiveByte => (I2C_SMBUS_READ, 0, I2C_SMBUS_BYTE),
            SmbusOp::WriteByteData(c, b) => {
                data.block[0] = *b;
                (I2C_SMBUS_WRITE, *c, I2C_SMBUS_BYTE_DATA)
            }
            SmbusOp::ReadByteData(c) => (I2C_SMBUS_READ, *c, I2C_SMBUS_BYTE_DATA),
            SmbusOp::WriteWordData(c, w) => {
                data.block[..2].copy_from_slice(&w.to_ne_bytes());
                (I2C_SMBUS_WRITE, *c, I2C_SMBUS_WORD_DATA)
            }
            SmbusOp::ReadWordData(c) => (I2C_SMBUS_READ, *c, I2C_SMBUS_WORD_DATA),
            SmbusOp::ProcessCall(c, w) => {
                data.block[..2].copy_from_slice(&w.to_ne_bytes());
                (I2C_SMBUS_WRITE, *c, I2C_SMBUS_PROC_CALL)
            }
            SmbusOp::WriteI2cBlock(c, bytes) => {
                data.block[0] = bytes.len() as u8;
                data.block[1..=bytes.len()].copy_from_slice(bytes);
                (I2C_SMBUS_WRITE, *c, I2C_SMBUS_I2C_BLOCK_DATA)
            }
            SmbusOp::ReadI2cBlock(c, n) => {
                data.block[0] = *n;
                (I2C_SMBUS_READ, *c, I2C_SMBUS_I2C_BLOCK_DATA)
            }
        };
        let mut args = SmbusIoctl {
            read_write,
            command,
            size,
            data: &mut data,
        };
        // SAFETY: `args` points at `data`, a live 34-byte, 2-aligned
        // i2c_smbus_data the kernel reads and writes during the call only.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), I2C_SMBUS, &mut args) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            return Err(fail(errno_kind(&err)));
        }
        let reply = match &op {
            SmbusOp::ReceiveByte | SmbusOp::ReadByteData(_) => SmbusReply::Byte(data.block[0]),
            SmbusOp::ReadWordData(_) | SmbusOp::ProcessCall(..) => {
                SmbusReply::Word(u16::from_ne_bytes([data.block[0], data.block[1]]))
            }
            SmbusOp::ReadI2cBlock(..) => {
                let n = usize::from(data.block[0]).min(BLOCK_MAX);
                SmbusReply::Block(data.block[1..=n].to_vec())
            }
            _ => SmbusReply::None,
        };
        smbus::deliver(&op, &reply, msgs).map_err(fail)
    }
}

/// What an errno from i2c-dev means for the guest: a missing acknowledge
/// (ENXIO, ENODEV, EREMOTEIO, EIO are how drivers report a NACK) or a
/// failure of the host side.
fn errno_kind(err: &std::io::Error) -> FailKind {
    match err.raw_os_error() {
        Some(libc::ENXIO | libc::ENODEV | libc::EREMOTEIO | libc::EIO | libc::EAGAIN) => {
            FailKind::Nack
        }
        Some(libc::EOPNOTSUPP | libc::EINVAL) => FailKind::Unsupported(err.to_string()),
        _ => FailKind::Host(err.to_string()),
    }
}

impl I2cAdapter for HostAdapter {
    fn describe(&self) -> String {
        format!(
            "{} ({:?}), {}",
            self.path.display(),
            self.name,
            if self.is_i2c() {
                "I2C transfers (I2C_RDWR)"
            } else {
                "SMBus only (I2C_SMBUS)"
            }
        )
    }

    fn transfer(&mut self, msgs: &mut [I2cMsg]) -> Result<(), TransferError> {
        if self.is_i2c() {
            self.rdwr(msgs)
        } else {
            self.smbus(msgs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree as the kernel lays it out: adapters `i2c-N` with a
    /// `name`, clients `N-00AA` beside them.
    fn sysfs(entries: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (entry, name) in entries {
            let d = dir.path().join(entry);
            std::fs::create_dir(&d).expect("entry");
            if let Some(n) = name {
                std::fs::write(d.join("name"), format!("{n}\n")).expect("name");
            }
        }
        dir
    }

    #[test]
    fn adapters_are_found_by_their_sysfs_name() {
        let dir = sysfs(&[
            ("i2c-0", Some("SMBus stub driver")),
            ("i2c-1", Some("i2c_virtio at virtio bus 5")),
            ("0-0050", Some("dummy")),
            ("i2c-10", Some("i915 gmbus dpc")),
        ]);
        assert_eq!(
            find_adapter(dir.path(), "SMBus stub driver").expect("stub"),
            0
        );
        assert_eq!(
            find_adapter(dir.path(), "i915 gmbus dpc").expect("gmbus"),
            10
        );
        assert_eq!(
            list_adapters(dir.path()).expect("list"),
            vec![
                (0, "SMBus stub driver".to_string()),
                (1, "i2c_virtio at virtio bus 5".to_string()),
                (10, "i915 gmbus dpc".to_string()),
            ],
            "clients are not adapters; sorted by number"
        );
        assert_eq!(
            adapter_name(dir.path(), 1).as_deref(),
            Some("i2c_virtio at virtio bus 5")
        );
        assert_eq!(adapter_name(dir.path(), 7), None);
    }

    #[test]
    fn a_missing_or_ambiguous_name_is_an_error_naming_the_adapters() {
        let dir = sysfs(&[
            ("i2c-0", Some("a")),
            ("i2c-3", Some("a")),
            ("i2c-4", Some("b")),
        ]);
        let err = find_adapter(dir.path(), "c").expect_err("no such adapter");
        let text = err.to_string();
        assert!(
            text.contains("i2c-0 \"a\"") && text.contains("i2c-4 \"b\""),
            "{text}"
        );
        let err = find_adapter(dir.path(), "a").expect_err("two of them");
        assert!(err.to_string().contains("i2c-0, i2c-3"), "{err}");
        let empty = sysfs(&[]);
        let err = find_adapter(empty.path(), "a").expect_err("none");
        assert!(err.to_string().contains("none"), "{err}");
        let err = find_adapter(&empty.path().join("gone"), "a").expect_err("no sysfs");
        assert!(matches!(err, HostError::Sysfs { .. }), "{err}");
    }

    #[test]
    fn opening_something_that_is_not_i2c_dev_says_so() {
        // No /dev/i2c-* on the machines the tests run on (no CONFIG_I2C):
        // the ioctl paths run in the real-Linux harness (tests/linux-qemu).
        let err = HostAdapter::open(Path::new("/dev/null"), "null").expect_err("not i2c-dev");
        assert!(matches!(err, HostError::Funcs { .. }), "{err}");
        assert!(err.to_string().contains("i2c-dev"), "{err}");
        let err = HostAdapter::open(Path::new("/nonexistent/i2c-9"), "x").expect_err("missing");
        assert!(matches!(err, HostError::Open { .. }), "{err}");
    }

    #[test]
    fn errnos_map_to_nack_or_host_failures() {
        let e = |n| errno_kind(&std::io::Error::from_raw_os_error(n));
        assert_eq!(e(libc::ENXIO), FailKind::Nack);
        assert_eq!(e(libc::EREMOTEIO), FailKind::Nack);
        assert!(matches!(e(libc::EOPNOTSUPP), FailKind::Unsupported(_)));
        assert!(matches!(e(libc::ETIMEDOUT), FailKind::Host(_)));
    }

    #[test]
    fn ioctl_structures_have_the_kernel_layout() {
        // x86_64 and aarch64 alike (LP64).
        assert_eq!(std::mem::size_of::<RawMsg>(), 16);
        assert_eq!(std::mem::size_of::<RdwrData>(), 16);
        assert_eq!(std::mem::size_of::<SmbusData>(), 34);
        assert_eq!(std::mem::align_of::<SmbusData>(), 2);
        assert_eq!(std::mem::size_of::<SmbusIoctl>(), 16);
    }
}
