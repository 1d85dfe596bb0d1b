//! Wire profiles: which draft of the transport a bus instance speaks.

use crate::{
    HEADER_LEN, MIN_MAX_MSG_SIZE, RFC2_HEADER_LEN, RFC2_MIN_MAX_MSG_SIZE, V1_MIN_MAX_MSG_SIZE,
};

/// Wire generation spoken on one bus instance.
///
/// The drafts all call themselves "transport revision 1" yet are not
/// wire-compatible, so the profile is configuration, not negotiation
/// (see `docs/wire-profiles.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Profile {
    /// Spec v2 (2026, "G4"): the project default.
    #[default]
    V2,
    /// Spec PATCH v1 (Jan 2026, "G3", Linux PoC v1, QEMU RFC, OP-TEE):
    /// 8-byte header, 24-byte GET_DEVICE_INFO response, no vqueue flags,
    /// 32-bit GET_SHM, GET_DEVICES response (offset, count, next_offset).
    V1,
    /// Spec RFC2 (Jun 2025, "G2", Linux LKML RFC and its loopback/FF-A
    /// buses, Xen VMP): 6-byte header without token, unaligned vqueue
    /// messages, fixed-size frames.
    Rfc2,
}

impl Profile {
    /// Every profile, for tests and tools that iterate over them.
    pub const ALL: [Profile; 3] = [Profile::V2, Profile::V1, Profile::Rfc2];

    /// Header length of this profile (6 for RFC2, else 8).
    pub const fn header_len(self) -> usize {
        match self {
            Profile::V2 | Profile::V1 => HEADER_LEN,
            Profile::Rfc2 => RFC2_HEADER_LEN,
        }
    }

    /// Smallest maximum message size a bus of this profile may use: every
    /// fixed-size message of the profile must fit.
    pub const fn min_max_msg_size(self) -> usize {
        match self {
            Profile::V2 => MIN_MAX_MSG_SIZE,
            Profile::V1 => V1_MIN_MAX_MSG_SIZE,
            Profile::Rfc2 => RFC2_MIN_MAX_MSG_SIZE,
        }
    }

    /// Whether frames are fixed-size (padded to the bus maximum) on this
    /// profile; see [`crate::Codec::encode`].
    pub const fn fixed_frames(self) -> bool {
        matches!(self, Profile::Rfc2)
    }
}
