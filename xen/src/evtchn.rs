//! Event channels through `/dev/xen/evtchn`.
//!
//! [`EventChannels`] is the seam: the real [`XenEvtchn`] issues the ioctls,
//! a fake (eventfd-based) can stand in for tests. [`BoundPort`] is the RAII
//! owner of one bound port: it unbinds on drop.
//!
//! Kernel behaviour the API follows: a port that fired is masked until it is
//! unmasked by writing it back to the device; `read()` returns the pending
//! ports as native-endian `u32`s; the fd polls readable while any are pending.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::bindings::{self, evtchn as raw};
use crate::sys::{ioctl_ptr, open_node};
use crate::{DomId, EvtchnPort};

/// Default path of the event channel device.
pub const EVTCHN_PATH: &str = "/dev/xen/evtchn";

/// Largest number of ports one `read()` of the device returns (one page of
/// `u32`s, the kernel's own cap).
pub const MAX_PENDING_PER_READ: usize = 1024;

/// Errors of event channel operations.
#[derive(Debug, Error)]
pub enum EvtchnError {
    /// The device node could not be opened (not in a Xen domain, or the
    /// `xen-evtchn` module is not loaded).
    #[error("open {path}: {source}")]
    Open {
        /// The node that was opened.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("{op}: {source}")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading pending ports or writing an unmask failed.
    #[error("{op}: {source}")]
    Io {
        /// `read pending` or `unmask`.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device returned a byte count that is not a whole number of ports.
    #[error("pending-port read returned {0} bytes, not a multiple of 4")]
    PartialPort(usize),
    /// The kernel returned a negative or oversized port number.
    #[error("kernel returned invalid port {0}")]
    InvalidPort(i64),
}

impl EvtchnError {
    /// The OS errno behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Open { source, .. } | Self::Ioctl { source, .. } | Self::Io { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// The operations a bus needs on event channels. All take `&self`: the
/// kernel serialises them, and one handle is shared by the ports it binds.
pub trait EventChannels: Send + Sync + fmt::Debug {
    /// Bind a local port to `remote_port` of `remote_domid`; returns the
    /// local port.
    fn bind_interdomain(
        &self,
        remote_domid: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, EvtchnError>;

    /// Allocate a local port that `remote_domid` may bind to later; returns
    /// the local port (to be published to the peer, e.g. in xenstore).
    fn bind_unbound(&self, remote_domid: DomId) -> Result<EvtchnPort, EvtchnError>;

    /// Unbind a local port.
    fn unbind(&self, port: EvtchnPort) -> Result<(), EvtchnError>;

    /// Signal the peer of a local port.
    fn notify(&self, port: EvtchnPort) -> Result<(), EvtchnError>;

    /// Read pending ports into `ports` without blocking; returns how many
    /// were written (0 when none is pending). Each returned port stays masked
    /// until [`EventChannels::unmask`].
    fn read_pending(&self, ports: &mut [EvtchnPort]) -> Result<usize, EvtchnError>;

    /// Unmask a port so it can fire again.
    fn unmask(&self, port: EvtchnPort) -> Result<(), EvtchnError>;

    /// A descriptor that polls readable while a port is pending.
    fn poll_fd(&self) -> BorrowedFd<'_>;
}

/// The real event channel device, opened non-blocking.
#[derive(Debug)]
pub struct XenEvtchn {
    fd: OwnedFd,
}

impl XenEvtchn {
    /// Open [`EVTCHN_PATH`].
    pub fn open() -> Result<Self, EvtchnError> {
        Self::open_path(Path::new(EVTCHN_PATH))
    }

    /// Open the event channel device at `path`.
    pub fn open_path(path: &Path) -> Result<Self, EvtchnError> {
        let fd = open_node(path, libc::O_NONBLOCK).map_err(|source| EvtchnError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self { fd })
    }

    /// Wrap an already open descriptor.
    ///
    /// # Safety
    ///
    /// `fd` must be `/dev/xen/evtchn`, or a file on which the evtchn ioctl
    /// numbers are harmless (pipes, sockets and regular files fail them with
    /// `ENOTTY`): the ioctls pass pointers the kernel writes through.
    pub unsafe fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Restrict this handle to ports of `domid` (`IOCTL_EVTCHN_RESTRICT_DOMID`),
    /// a defence-in-depth step for a per-guest process.
    pub fn restrict(&self, domid: DomId) -> Result<(), EvtchnError> {
        let mut arg = raw::ioctl_evtchn_restrict_domid { domid };
        self.ioctl(
            "IOCTL_EVTCHN_RESTRICT_DOMID",
            bindings::IOCTL_EVTCHN_RESTRICT_DOMID,
            &mut arg,
        )
        .map(drop)
    }

    fn ioctl<T>(
        &self,
        op: &'static str,
        request: libc::c_ulong,
        arg: &mut T,
    ) -> Result<libc::c_int, EvtchnError> {
        // SAFETY: every caller pairs `request` with its argument struct from
        // the generated bindings; `arg` is a live exclusive borrow.
        unsafe { ioctl_ptr(self.fd.as_fd(), request, (arg as *mut T).cast()) }
            .map_err(|source| EvtchnError::Ioctl { op, source })
    }
}

/// A port number returned by a bind ioctl.
fn port_from_ret(ret: libc::c_int) -> Result<EvtchnPort, EvtchnError> {
    EvtchnPort::try_from(ret).map_err(|_| EvtchnError::InvalidPort(i64::from(ret)))
}

/// Decode the bytes of a pending-port read into `ports`.
fn decode_pending(bytes: &[u8], ports: &mut [EvtchnPort]) -> Result<usize, EvtchnError> {
    if bytes.len() % 4 != 0 {
        return Err(EvtchnError::PartialPort(bytes.len()));
    }
    let mut n = 0;
    for (chunk, slot) in bytes.chunks_exact(4).zip(ports.iter_mut()) {
        let mut word = [0u8; 4];
        word.copy_from_slice(chunk);
        *slot = u32::from_ne_bytes(word);
        n += 1;
    }
    Ok(n)
}

impl EventChannels for XenEvtchn {
    fn bind_interdomain(
        &self,
        remote_domid: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, EvtchnError> {
        let mut arg = raw::ioctl_evtchn_bind_interdomain {
            remote_domain: u32::from(remote_domid),
            remote_port,
        };
        let ret = self.ioctl(
            "IOCTL_EVTCHN_BIND_INTERDOMAIN",
            bindings::IOCTL_EVTCHN_BIND_INTERDOMAIN,
            &mut arg,
        )?;
        port_from_ret(ret)
    }

    fn bind_unbound(&self, remote_domid: DomId) -> Result<EvtchnPort, EvtchnError> {
        let mut arg = raw::ioctl_evtchn_bind_unbound_port {
            remote_domain: u32::from(remote_domid),
        };
        let ret = self.ioctl(
            "IOCTL_EVTCHN_BIND_UNBOUND_PORT",
            bindings::IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            &mut arg,
        )?;
        port_from_ret(ret)
    }

    fn unbind(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let mut arg = raw::ioctl_evtchn_unbind { port };
        self.ioctl(
            "IOCTL_EVTCHN_UNBIND",
            bindings::IOCTL_EVTCHN_UNBIND,
            &mut arg,
        )
        .map(drop)
    }

    fn notify(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let mut arg = raw::ioctl_evtchn_notify { port };
        self.ioctl(
            "IOCTL_EVTCHN_NOTIFY",
            bindings::IOCTL_EVTCHN_NOTIFY,
            &mut arg,
        )
        .map(drop)
    }

    fn read_pending(&self, ports: &mut [EvtchnPort]) -> Result<usize, EvtchnError> {
        let want = ports.len().min(MAX_PENDING_PER_READ);
        if want == 0 {
            return Ok(0);
        }
        let mut buf = [0u8; MAX_PENDING_PER_READ * 4];
        let buf = &mut buf[..want * 4];
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let source = io::Error::last_os_error();
            if source.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(EvtchnError::Io {
                op: "read pending ports",
                source,
            });
        }
        // n >= 0 and <= buf.len() by the read contract.
        let n = usize::try_from(n).unwrap_or(0).min(buf.len());
        decode_pending(&buf[..n], ports)
    }

    fn unmask(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let bytes = port.to_ne_bytes();
        // SAFETY: `bytes` is a live 4-byte buffer.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            return Err(EvtchnError::Io {
                op: "unmask",
                source: io::Error::last_os_error(),
            });
        }
        if n != 4 {
            return Err(EvtchnError::Io {
                op: "unmask",
                source: io::Error::new(io::ErrorKind::WriteZero, "short unmask write"),
            });
        }
        Ok(())
    }

    fn poll_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for XenEvtchn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One bound local port; unbound when dropped.
#[derive(Debug)]
pub struct BoundPort<E: EventChannels + ?Sized = XenEvtchn> {
    chans: Arc<E>,
    port: EvtchnPort,
    remote_domid: DomId,
}

impl<E: EventChannels + ?Sized> BoundPort<E> {
    /// Bind to `remote_port` of `remote_domid` (the peer allocated it unbound
    /// and published it).
    pub fn interdomain(
        chans: Arc<E>,
        remote_domid: DomId,
        remote_port: EvtchnPort,
    ) -> Result<Self, EvtchnError> {
        let port = chans.bind_interdomain(remote_domid, remote_port)?;
        Ok(Self {
            chans,
            port,
            remote_domid,
        })
    }

    /// Allocate an unbound port for `remote_domid` to bind to.
    pub fn unbound(chans: Arc<E>, remote_domid: DomId) -> Result<Self, EvtchnError> {
        let port = chans.bind_unbound(remote_domid)?;
        Ok(Self {
            chans,
            port,
            remote_domid,
        })
    }

    /// The local port number.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// The peer domain.
    pub fn remote_domid(&self) -> DomId {
        self.remote_domid
    }

    /// Signal the peer.
    pub fn notify(&self) -> Result<(), EvtchnError> {
        self.chans.notify(self.port)
    }

    /// Unmask this port after handling its event.
    pub fn unmask(&self) -> Result<(), EvtchnError> {
        self.chans.unmask(self.port)
    }

    /// The handle the port is bound on (for `read_pending` and polling).
    pub fn channels(&self) -> &Arc<E> {
        &self.chans
    }
}

impl<E: EventChannels + ?Sized> Drop for BoundPort<E> {
    fn drop(&mut self) {
        if let Err(e) = self.chans.unbind(self.port) {
            log::warn!("unbinding event channel port {}: {e}", self.port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn open_missing_node_reports_path_and_enoent() {
        let err = XenEvtchn::open_path(Path::new("/nonexistent/xen/evtchn")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(err.to_string().contains("/nonexistent/xen/evtchn"));
    }

    /// A "device" that reads pending ports from a pipe, and the pipe's
    /// write end to feed it.
    fn pipe_handle() -> (XenEvtchn, OwnedFd) {
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        // SAFETY: a pipe fails every ioctl with ENOTTY.
        (unsafe { XenEvtchn::from_fd(rx) }, tx)
    }

    #[test]
    fn ioctls_on_a_non_evtchn_fd_map_to_typed_errors() {
        let (dev, _tx) = pipe_handle();
        let err = dev.notify(3).unwrap_err();
        assert!(matches!(
            err,
            EvtchnError::Ioctl {
                op: "IOCTL_EVTCHN_NOTIFY",
                ..
            }
        ));
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        assert_eq!(
            dev.bind_interdomain(1, 5).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        assert_eq!(
            dev.bind_unbound(1).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        assert_eq!(
            dev.unbind(1).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
        assert_eq!(
            dev.restrict(1).unwrap_err().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }

    #[test]
    fn pending_ports_are_read_as_native_u32s() {
        let (dev, tx) = pipe_handle();
        let mut ports = [0u32; 8];
        assert_eq!(
            dev.read_pending(&mut ports).unwrap(),
            0,
            "nothing pending: no blocking"
        );
        let mut bytes = Vec::new();
        for p in [7u32, 0x1234_5678, 1] {
            bytes.extend_from_slice(&p.to_ne_bytes());
        }
        nix::unistd::write(&tx, &bytes).unwrap();
        assert_eq!(dev.read_pending(&mut ports).unwrap(), 3);
        assert_eq!(&ports[..3], &[7, 0x1234_5678, 1]);
        assert_eq!(dev.read_pending(&mut []).unwrap(), 0);
    }

    #[test]
    fn pending_read_of_a_partial_port_is_an_error() {
        let (dev, tx) = pipe_handle();
        nix::unistd::write(&tx, &[1, 2, 3, 4, 5, 6]).unwrap();
        let mut ports = [0u32; 8];
        assert!(matches!(
            dev.read_pending(&mut ports),
            Err(EvtchnError::PartialPort(6))
        ));
    }

    #[test]
    fn decode_pending_respects_the_output_length() {
        let mut ports = [0u32; 1];
        let bytes: Vec<u8> = [1u32, 2].iter().flat_map(|p| p.to_ne_bytes()).collect();
        assert_eq!(decode_pending(&bytes, &mut ports).unwrap(), 1);
        assert_eq!(ports, [1]);
    }

    #[test]
    fn unmask_writes_the_port() {
        let (out_rx, out_tx) = nix::unistd::pipe().unwrap();
        // SAFETY: a pipe fails every ioctl with ENOTTY.
        let dev = unsafe { XenEvtchn::from_fd(out_tx) };
        dev.unmask(42).unwrap();
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(&out_rx, &mut buf).unwrap();
        assert_eq!(&buf[..n], &42u32.to_ne_bytes());
    }

    #[test]
    fn bind_return_values_are_validated() {
        assert_eq!(port_from_ret(9).unwrap(), 9);
        assert!(matches!(
            port_from_ret(-1),
            Err(EvtchnError::InvalidPort(-1))
        ));
    }

    /// A recording fake, to check the RAII wrapper's calls.
    #[derive(Debug, Default)]
    struct Recorder {
        log: Mutex<Vec<String>>,
    }

    impl EventChannels for Recorder {
        fn bind_interdomain(&self, d: DomId, p: EvtchnPort) -> Result<EvtchnPort, EvtchnError> {
            self.log.lock().unwrap().push(format!("bind {d}:{p}"));
            Ok(100 + p)
        }
        fn bind_unbound(&self, d: DomId) -> Result<EvtchnPort, EvtchnError> {
            self.log.lock().unwrap().push(format!("alloc {d}"));
            Ok(50)
        }
        fn unbind(&self, p: EvtchnPort) -> Result<(), EvtchnError> {
            self.log.lock().unwrap().push(format!("unbind {p}"));
            Ok(())
        }
        fn notify(&self, p: EvtchnPort) -> Result<(), EvtchnError> {
            self.log.lock().unwrap().push(format!("notify {p}"));
            Ok(())
        }
        fn read_pending(&self, _: &mut [EvtchnPort]) -> Result<usize, EvtchnError> {
            Ok(0)
        }
        fn unmask(&self, p: EvtchnPort) -> Result<(), EvtchnError> {
            self.log.lock().unwrap().push(format!("unmask {p}"));
            Ok(())
        }
        fn poll_fd(&self) -> BorrowedFd<'_> {
            // SAFETY: stdin outlives the test; the fd is only borrowed.
            unsafe { BorrowedFd::borrow_raw(0) }
        }
    }

    #[test]
    fn bound_port_unbinds_on_drop() {
        let rec = Arc::new(Recorder::default());
        {
            let a = BoundPort::interdomain(rec.clone(), 3, 7).unwrap();
            assert_eq!((a.port(), a.remote_domid()), (107, 3));
            a.notify().unwrap();
            a.unmask().unwrap();
            let b = BoundPort::unbound(rec.clone(), 4).unwrap();
            assert_eq!(b.port(), 50);
        }
        let log = rec.log.lock().unwrap().clone();
        assert_eq!(
            log,
            [
                "bind 3:7",
                "notify 107",
                "unmask 107",
                "alloc 4",
                "unbind 50",
                "unbind 107"
            ]
        );
    }

    #[test]
    fn failed_bind_leaves_nothing_to_unbind() {
        let (dev, _tx) = pipe_handle();
        let dev = Arc::new(dev);
        assert!(BoundPort::interdomain(dev.clone(), 1, 2).is_err());
        assert!(BoundPort::unbound(dev, 1).is_err());
    }
}
