//! The wire generations ([`Profile`]): v2, v1 and RFC2, and what differs
//! between them.

use std::fmt;

use super::consts::{HEADER_SIZE, MIN_MAX_MSG_SIZE, RFC2_HEADER_SIZE};
use super::error::WireError;

/// Wire generation of a bus instance (interop §2.1, reference §7).
///
/// Every draft calls itself "transport revision 1", so nothing on the wire
/// tells them apart: the profile is a property of the bus instance that both
/// sides are configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Profile {
    /// Spec v2 (2026, "G4"): 8-byte header with token, 44-byte
    /// GET_DEVICE_INFO response, vqueue `flags`, 64-bit GET_SHM, GET_DEVICES
    /// response (offset, next_offset, count).
    #[default]
    V2,
    /// PATCH v1 (Jan 2026, "G3"): 8-byte header with token, 24-byte
    /// GET_DEVICE_INFO (num_feature_bits, le16 admin fields), reserved words
    /// in GET/SET_VQUEUE, 3×le32 GET_SHM, GET_DEVICES response (offset, count,
    /// next_offset) on 8-aligned windows. SET_VQUEUE enables the queue, reset
    /// completes synchronously, SET_CONFIG generations are always checked.
    V1,
    /// RFC2 (Jun 2025, "G2", the Linux RFC kernels): 6-byte header without
    /// token, v1 field layouts except unaligned 36-byte GET/SET_VQUEUE
    /// payloads, fixed-size frames (44 bytes on Linux). One request
    /// outstanding at a time; responses correlate by dev_num and msg_id.
    Rfc2,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::V2, Profile::V1, Profile::Rfc2];

    /// Header length: 8, or 6 for RFC2.
    pub fn header_size(self) -> usize {
        match self {
            Profile::V2 | Profile::V1 => HEADER_SIZE,
            Profile::Rfc2 => RFC2_HEADER_SIZE,
        }
    }

    /// Whether the header carries a token.
    pub fn has_token(self) -> bool {
        self != Profile::Rfc2
    }

    /// Smallest bus maximum this driver accepts: the largest fixed-size
    /// message of the profile must fit (v2: GET_DEVICE_INFO response, 52;
    /// v1: GET/SET_VQUEUE, 48 although the v1 text says 44; RFC2: 44).
    pub fn min_max_msg_size(self) -> usize {
        match self {
            Profile::V2 => MIN_MAX_MSG_SIZE,
            Profile::V1 => 48,
            Profile::Rfc2 => 44,
        }
    }

    /// RFC2 buses carry fixed-size frames: whole frames of the bus maximum,
    /// `msg_size` giving the real length, zero padding after it.
    pub fn fixed_frames(self) -> bool {
        self == Profile::Rfc2
    }

    /// The SET_VQUEUE semantics of v2 (state op, ignore bits, reserved word)
    /// exist; older profiles have plain reserved words and a SET_VQUEUE that
    /// always configures and enables.
    pub fn has_vqueue_flags(self) -> bool {
        self == Profile::V2
    }

    /// Config name: `v2`, `v1` or `rfc2`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::V2 => "v2",
            Profile::V1 => "v1",
            Profile::Rfc2 => "rfc2",
        }
    }

    /// GET_DEVICE_INFO response payload length (v2 44, v1/RFC2 24).
    pub fn device_info_size(self) -> usize {
        match self {
            Profile::V2 => 44,
            Profile::V1 | Profile::Rfc2 => 24,
        }
    }

    /// GET_VQUEUE response / SET_VQUEUE request payload length (RFC2 36, else 40).
    pub fn vqueue_size(self) -> usize {
        match self {
            Profile::V2 | Profile::V1 => 40,
            Profile::Rfc2 => 36,
        }
    }

    /// GET_SHM response payload length (v2 24, v1/RFC2 12).
    pub fn shm_size(self) -> usize {
        match self {
            Profile::V2 => 24,
            Profile::V1 | Profile::Rfc2 => 12,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Profile {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, WireError> {
        match s {
            "v2" => Ok(Profile::V2),
            "v1" => Ok(Profile::V1),
            "rfc2" => Ok(Profile::Rfc2),
            _ => Err(WireError::Invalid {
                name: "profile",
                what: format!("unknown wire profile {s:?} (v2, v1 or rfc2)"),
            }),
        }
    }
}
