//! The local bus: the embedded default bus between a driver process and the
//! daemon on the same host.
//!
//! The driver process owns everything shared: a memfd holding its guest RAM
//! (mapped at a guest-physical base it chooses), a memfd holding the message
//! rings (`vmsg_transport::ring`, ring A driver→device, ring B device→driver)
//! and two eventfds, *kick* (driver→device doorbell) and *call*
//! (device→driver doorbell). It connects to the guest's Unix stream socket
//! and sends a versioned hello carrying the four fds (SCM_RIGHTS); the daemon
//! validates every field and fd, maps the memory, attaches to the rings and
//! answers accept or reject. After that the socket carries nothing: its EOF
//! is the disconnect signal. Wire format and rules: `docs/local-bus.md`.
//!
//! - [`LocalBusListener`] / [`LocalBus`]: the daemon side; `LocalBus`
//!   implements [`crate::bus::Bus`].
//! - [`LocalBusClient`]: the driver side, for driver-side tooling.

mod client;
mod fds;
mod server;
mod wire;

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;
use vmsg_transport::ring::RingError;

pub use client::{LocalBusClient, LocalClientOptions};
pub use server::{HelloParams, LocalBus, LocalBusListener, LocalServerOptions, check_hello};
pub use wire::{HELLO_LEN, MAGIC, MIN_MSG_SIZE, VERSION};

/// The hello's profile id of a wire profile (0 = v2, 1 = v1, 2 = rfc2);
/// `None` for a profile the local bus has no id for.
pub fn profile_id(profile: vmsg_proto::Profile) -> Option<u8> {
    match profile {
        vmsg_proto::Profile::V2 => Some(0),
        vmsg_proto::Profile::V1 => Some(1),
        vmsg_proto::Profile::Rfc2 => Some(2),
        _ => None,
    }
}

/// The wire profile of a hello profile id.
pub fn profile_from_id(id: u8) -> Option<vmsg_proto::Profile> {
    match id {
        0 => Some(vmsg_proto::Profile::V2),
        1 => Some(vmsg_proto::Profile::V1),
        2 => Some(vmsg_proto::Profile::Rfc2),
        _ => None,
    }
}

/// Why the daemon refused a handshake (carried on the wire as a `u16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// The hello does not start with the local-bus magic.
    BadMagic,
    /// The hello's version is not one the daemon speaks.
    BadVersion,
    /// Length or reserved fields of the hello are wrong.
    Malformed,
    /// Wrong number or kinds of file descriptors.
    BadFds,
    /// RAM base/size out of range or the RAM memfd does not back them.
    BadMemory,
    /// The ring memfd or the ring header in it is unusable.
    BadRing,
    /// Message size or wire profile unacceptable.
    BadParams,
    /// Another driver is connected to this socket.
    Busy,
    /// The daemon failed on its side (e.g. mapping failed).
    Internal,
    /// A code this version does not know.
    Other(u16),
}

impl RejectCode {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            RejectCode::BadMagic => 1,
            RejectCode::BadVersion => 2,
            RejectCode::Malformed => 3,
            RejectCode::BadFds => 4,
            RejectCode::BadMemory => 5,
            RejectCode::BadRing => 6,
            RejectCode::BadParams => 7,
            RejectCode::Busy => 8,
            RejectCode::Internal => 9,
            RejectCode::Other(v) => v,
        }
    }

    /// Decode a wire value (0 is "accepted" and never a reject code).
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => RejectCode::BadMagic,
            2 => RejectCode::BadVersion,
            3 => RejectCode::Malformed,
            4 => RejectCode::BadFds,
            5 => RejectCode::BadMemory,
            6 => RejectCode::BadRing,
            7 => RejectCode::BadParams,
            8 => RejectCode::Busy,
            9 => RejectCode::Internal,
            v => RejectCode::Other(v),
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RejectCode::BadMagic => "bad magic",
            RejectCode::BadVersion => "unsupported version",
            RejectCode::Malformed => "malformed hello",
            RejectCode::BadFds => "bad file descriptors",
            RejectCode::BadMemory => "bad guest memory",
            RejectCode::BadRing => "bad ring",
            RejectCode::BadParams => "bad parameters",
            RejectCode::Busy => "busy",
            RejectCode::Internal => "internal error",
            RejectCode::Other(v) => return write!(f, "reject code {v}"),
        };
        f.write_str(s)
    }
}

/// Errors of the local bus, both sides.
#[derive(Debug, Error)]
pub enum LocalBusError {
    /// An OS call failed.
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Daemon side: the driver's hello was refused (the reason was sent back).
    #[error("handshake refused ({code}): {reason}")]
    Refused { code: RejectCode, reason: String },
    /// Driver side: the daemon rejected the hello.
    #[error("daemon rejected the connection ({code}): {reason}")]
    Rejected { code: RejectCode, reason: String },
    /// Daemon side: a driver connected while another one is served; it was
    /// told "busy".
    #[error("a driver is already connected; the new connection was rejected as busy")]
    Busy,
    /// The peer did not complete the handshake in time.
    #[error("handshake timed out")]
    Timeout,
    /// Daemon side: the stop signal fired while waiting for a driver or its
    /// hello.
    #[error("stopped")]
    Stopped,
    /// The peer closed the connection.
    #[error("peer disconnected")]
    Disconnected,
    /// Driver side: the daemon's reply is malformed.
    #[error("malformed handshake reply: {0}")]
    Protocol(&'static str),
    /// The shared ring refused an operation.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// Mapping a memfd failed.
    #[error("mapping the {what}: {source}")]
    Map {
        what: &'static str,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The guest memory layout was refused by vm-memory.
    #[error("guest memory layout: {0}")]
    MemoryLayout(String),
    /// The caller's options are out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(&'static str),
    /// Driver side: the frame exceeds the negotiated maximum.
    #[error("frame of {len} bytes exceeds the negotiated maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    /// Driver side: the outgoing ring stayed full.
    #[error("outgoing ring stayed full")]
    RingFull,
    /// `bind`: a live listener already serves this path.
    #[error("{0} is in use by a live listener")]
    InUse(PathBuf),
    /// `bind`: the path exists and is not a socket (never removed).
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
}

impl LocalBusError {
    fn os(op: &'static str) -> impl FnOnce(nix::Error) -> LocalBusError {
        move |e| LocalBusError::Os {
            op,
            source: e.into(),
        }
    }

    fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> LocalBusError {
        move |source| LocalBusError::Os { op, source }
    }

    fn refused(code: RejectCode, reason: impl Into<String>) -> LocalBusError {
        LocalBusError::Refused {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests;
