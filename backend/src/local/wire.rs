//! Handshake messages of the local bus (little-endian, fixed layout; see
//! `docs/local-bus.md`).

use vmsg_transport::ring::RingParams;

use super::{LocalBusError, RejectCode};

/// `"VMLB"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"VMLB");
/// The one handshake version this code speaks.
pub const VERSION: u16 = 1;
/// Length of a version-1 hello.
pub const HELLO_LEN: usize = 64;
/// Smallest maximum message size any wire profile allows (v1/rfc2: 44;
/// v2 needs 52, which the transport checks for its profile).
pub const MIN_MSG_SIZE: u32 = 44;
/// Largest maximum message size (v2's protocol limit).
pub const MAX_MSG_SIZE: u32 = 65535;
/// Highest wire profile id (0 = v2, 1 = v1, 2 = rfc2).
pub const MAX_PROFILE: u8 = 2;

/// The config name of a hello profile id, for messages.
pub fn profile_name(id: u8) -> &'static str {
    match id {
        0 => "v2",
        1 => "v1",
        2 => "rfc2",
        _ => "unknown",
    }
}
/// Fixed part of a reply.
pub const REPLY_HEAD_LEN: usize = 24;
/// Longest reject reason sent (longer ones are cut on a char boundary).
pub const MAX_REASON_LEN: usize = 232;
/// Number of fds a hello carries: RAM memfd, ring memfd, kick, call.
pub const HELLO_FDS: usize = 4;

/// Driver → daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub profile: u8,
    pub max_msg_size: u32,
    pub ram_base: u64,
    pub ram_size: u64,
    pub ring: RingParams,
    pub ring_size: u64,
}

/// Daemon → driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accept {
        max_msg_size: u32,
        transport_features: u32,
    },
    Reject {
        code: RejectCode,
        reason: String,
    },
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(a)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(HELLO_LEN as u16).to_le_bytes());
        b[8] = self.profile;
        // 9: flags, 10..12: reserved (zero)
        b[12..16].copy_from_slice(&self.max_msg_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.ram_base.to_le_bytes());
        b[24..32].copy_from_slice(&self.ram_size.to_le_bytes());
        b[32..36].copy_from_slice(&self.ring.slot_size.to_le_bytes());
        b[36..40].copy_from_slice(&self.ring.slots.to_le_bytes());
        b[40..48].copy_from_slice(&self.ring_size.to_le_bytes());
        // 48..64: reserved (zero)
        b
    }

    /// Decode and check the framing (not the values: the server does that
    /// against the fds).
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, LocalBusError> {
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(LocalBusError::refused(
                RejectCode::BadMagic,
                format!("magic {magic:#010x}"),
            ));
        }
        let version = u16_at(b, 4);
        if version != VERSION {
            return Err(LocalBusError::refused(
                RejectCode::BadVersion,
                format!("version {version}, this daemon speaks {VERSION}"),
            ));
        }
        let len = u16_at(b, 6);
        if usize::from(len) != HELLO_LEN {
            return Err(LocalBusError::refused(
                RejectCode::Malformed,
                format!("hello length {len}, expected {HELLO_LEN}"),
            ));
        }
        // Reserved bytes must be zero so they can gain a meaning later.
        if b[9..12].iter().chain(&b[48..64]).any(|&x| x != 0) {
            return Err(LocalBusError::refused(
                RejectCode::Malformed,
                "reserved hello bytes not zero",
            ));
        }
        Ok(Hello {
            profile: b[8],
            max_msg_size: u32_at(b, 12),
            ram_base: u64_at(b, 16),
            ram_size: u64_at(b, 24),
            ring: RingParams {
                slot_size: u32_at(b, 32),
                slots: u32_at(b, 36),
            },
            ring_size: u64_at(b, 40),
        })
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let (status, max, features, reason) = match self {
            Reply::Accept {
                max_msg_size,
                transport_features,
            } => (0u16, *max_msg_size, *transport_features, ""),
            Reply::Reject { code, reason } => (code.to_u16(), 0, 0, reason.as_str()),
        };
        let mut cut = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let reason = &reason.as_bytes()[..cut];
        let mut b = vec![0u8; REPLY_HEAD_LEN + reason.len()];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&status.to_le_bytes());
        b[8..12].copy_from_slice(&max.to_le_bytes());
        b[12..16].copy_from_slice(&features.to_le_bytes());
        // `cut <= MAX_REASON_LEN` fits a u16.
        b[16..18].copy_from_slice(&(reason.len() as u16).to_le_bytes());
        // 18..24: reserved (zero)
        b[REPLY_HEAD_LEN..].copy_from_slice(reason);
        b
    }

    /// Check the fixed part; returns the status and the reason length that
    /// follows.
    pub fn decode_head(h: &[u8; REPLY_HEAD_LEN]) -> Result<(u16, usize), LocalBusError> {
        if u32_at(h, 0) != MAGIC {
            return Err(LocalBusError::Protocol("bad reply magic"));
        }
        if u16_at(h, 4) != VERSION {
            return Err(LocalBusError::Protocol("unsupported reply version"));
        }
        let reason_len = usize::from(u16_at(h, 16));
        if reason_len > MAX_REASON_LEN {
            return Err(LocalBusError::Protocol("reject reason too long"));
        }
        Ok((u16_at(h, 6), reason_len))
    }

    pub fn decode(h: &[u8; REPLY_HEAD_LEN], reason: &[u8]) -> Result<Reply, LocalBusError> {
        let (status, _) = Self::decode_head(h)?;
        if status == 0 {
            return Ok(Reply::Accept {
                max_msg_size: u32_at(h, 8),
                transport_features: u32_at(h, 12),
            });
        }
        Ok(Reply::Reject {
            code: RejectCode::from_u16(status),
            reason: String::from_utf8_lossy(reason).into_owned(),
        })
    }
}
