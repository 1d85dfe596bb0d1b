//! The kernel's loopback interface as this bus uses it, behind two small
//! traits so that tests can put a fake kernel behind them
//! ([`super::fake_kernel`]): [`LoopbackKernel`] for `/dev/virtio-msg-lb`
//! (pool size by `lseek`, pool `mmap`, the ADD/REMOVE ioctls, opening the
//! message node) and [`MsgChannel`] for `/dev/virtio-msg-N` (blocking
//! `read` of one frame, `write` of one frame).
//!
//! [`RealLoopback`] is the implementation on the device nodes of the Linux
//! RFC kernels (interop §3.2). The pool's physical base is not exported by
//! the driver: [`find_pool`] reads it from the device tree.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::{FileOffset, MmapRegion};

/// Size of every frame on the RFC loopback: the kernel's
/// `VIRTIO_MSG_MIN_SIZE`. Reads must ask for exactly this much (the per-device
/// buffer is request + response back to back: reading more would copy the
/// response area), writes must carry at least this much.
pub const FRAME_SIZE: usize = 44;

/// `IOCTL_VMSG_LB_ADD = _IOC(_IOC_NONE, 'P', 0, 4)`.
pub const IOCTL_VMSG_LB_ADD: u64 = 0x0004_5000;
/// `IOCTL_VMSG_LB_REMOVE = _IOC(_IOC_NONE, 'P', 1, 4)`.
pub const IOCTL_VMSG_LB_REMOVE: u64 = 0x0004_5001;

/// `struct vmsg_lb_dev_info` of `include/uapi/linux/virtio_msg_lb.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct VmsgLbDevInfo {
    dev_id: u32,
}

/// `/dev/virtio-msg-N`: one frame per call, both directions.
pub trait MsgChannel: Send + Sync {
    /// Block until the kernel has a request and copy it into `buf`, which
    /// must be exactly [`FRAME_SIZE`] long. `Ok(0)` means the channel was
    /// closed ([`MsgChannel::interrupt`]); the real node never returns it.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Write one frame of at least [`FRAME_SIZE`] bytes: a response-typed
    /// frame completes the kernel's pending transfer, a transport request
    /// with msg_id EVENT_USED interrupts that queue; the kernel refuses
    /// anything else.
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize>;

    /// Make a reader blocked in [`MsgChannel::read_frame`] return; `true`
    /// if it will. The RFC node has no way to do that (no poll, no
    /// wake-up): `false` there, the reader thread stays blocked until the
    /// process exits.
    fn interrupt(&self) -> bool;
}

/// `/dev/virtio-msg-lb`: the pool and the device list.
pub trait LoopbackKernel: Send + Sync {
    /// Size of the DMA pool (`lseek(fd, 0, SEEK_END)`).
    fn pool_size(&self) -> io::Result<u64>;

    /// Map `size` bytes of the pool from its start, shared.
    fn map_pool(&self, size: usize) -> io::Result<MmapRegion>;

    /// `IOCTL_VMSG_LB_ADD`: the kernel creates device `dev_id` and probes
    /// it before returning (DEVICE_INFO, then the virtio driver's probe), so
    /// the message node must be served by another thread meanwhile.
    fn add_device(&self, dev_id: u32) -> io::Result<()>;

    /// `IOCTL_VMSG_LB_REMOVE`: unregisters device `dev_id` (the virtio
    /// driver's remove path talks to the device before this returns).
    fn remove_device(&self, dev_id: u32) -> io::Result<()>;

    /// Open the message node.
    fn open_channel(&self) -> io::Result<Arc<dyn MsgChannel>>;
}

/// The device nodes of a Linux RFC kernel with `CONFIG_VIRTIO_MSG_LOOPBACK`.
#[derive(Debug)]
pub struct RealLoopback {
    control: File,
    channel_path: PathBuf,
}

impl RealLoopback {
    /// Open the control node (`/dev/virtio-msg-lb`) read-write; the message
    /// node at `channel` is opened by [`LoopbackKernel::open_channel`].
    pub fn open(control: &Path, channel: &Path) -> io::Result<Self> {
        let control = OpenOptions::new().read(true).write(true).open(control)?;
        Ok(Self {
            control,
            channel_path: channel.to_path_buf(),
        })
    }

    fn ioctl(&self, request: u64, dev_id: u32) -> io::Result<()> {
        let info = VmsgLbDevInfo { dev_id };
        // SAFETY: the fd is open for the lifetime of `self`; the kernel reads
        // `sizeof(struct vmsg_lb_dev_info)` = 4 bytes from the pointer, which
        // points at a live, properly laid out `#[repr(C)]` struct on our stack.
        let rc = unsafe {
            libc::ioctl(
                self.control.as_raw_fd(),
                request as libc::Ioctl,
                &info as *const VmsgLbDevInfo,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl LoopbackKernel for RealLoopback {
    fn pool_size(&self) -> io::Result<u64> {
        (&self.control).seek(SeekFrom::End(0))
    }

    fn map_pool(&self, size: usize) -> io::Result<MmapRegion> {
        MmapRegion::from_file(FileOffset::new(self.control.try_clone()?, 0), size)
            .map_err(|e| io::Error::other(format!("mmap of the loopback pool: {e}")))
    }

    fn add_device(&self, dev_id: u32) -> io::Result<()> {
        self.ioctl(IOCTL_VMSG_LB_ADD, dev_id)
    }

    fn remove_device(&self, dev_id: u32) -> io::Result<()> {
        self.ioctl(IOCTL_VMSG_LB_REMOVE, dev_id)
    }

    fn open_channel(&self) -> io::Result<Arc<dyn MsgChannel>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.channel_path)?;
        Ok(Arc::new(RealChannel { file }))
    }
}

/// `/dev/virtio-msg-N` of the RFC kernel.
#[derive(Debug)]
struct RealChannel {
    file: File,
}

impl MsgChannel for RealChannel {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&self.file).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        loop {
            match (&self.file).write(frame) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn interrupt(&self) -> bool {
        false
    }
}

/// The loopback pool as the device tree describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRegion {
    /// Physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Find the `vmsglb` node under `reserved_memory` (normally
/// `/proc/device-tree/reserved-memory`) and decode its `reg`: big-endian
/// cells, `#address-cells` / `#size-cells` of the parent (default 2 and 2).
/// The RFC driver looks the node up by the name `vmsglb` (`vmsglb@<addr>`
/// in the tree).
pub fn find_pool(reserved_memory: &Path) -> io::Result<PoolRegion> {
    let mut node = None;
    for entry in std::fs::read_dir(reserved_memory)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "vmsglb" || name.starts_with("vmsglb@") {
            node = Some(entry.path());
            break;
        }
    }
    let node = node.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no vmsglb@… node under {} (the loopback needs a restricted-dma-pool named vmsglb)",
                reserved_memory.display()
            ),
        )
    })?;
    let cells = |name: &str| -> io::Result<usize> {
        match std::fs::read(reserved_memory.join(name)) {
            Ok(b) if b.len() == 4 => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} of {} is not one cell", reserved_memory.display()),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(2),
            Err(e) => Err(e),
        }
    };
    let (ac, sc) = (cells("#address-cells")?, cells("#size-cells")?);
    if !(1..=2).contains(&ac) || !(1..=2).contains(&sc) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unsupported #address-cells {ac} / #size-cells {sc}"),
        ));
    }
    let reg = std::fs::read(node.join("reg"))?;
    if reg.len() < 4 * (ac + sc) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}/reg has {} bytes, expected {}",
                node.display(),
                reg.len(),
                4 * (ac + sc)
            ),
        ));
    }
    let read = |cells: &[u8]| {
        cells.chunks_exact(4).fold(0u64, |v, c| {
            (v << 32) | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        })
    };
    Ok(PoolRegion {
        base: read(&reg[..4 * ac]),
        size: read(&reg[4 * ac..4 * (ac + sc)]),
    })
}
