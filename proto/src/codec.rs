//! Per-bus codec parameters.

use crate::{DecodeError, Header, MAX_MSG_SIZE_LIMIT, Profile};

/// Why a [`Codec`] could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The maximum message size is below what the profile's fixed-size
    /// messages need (52 for v2, 48 for v1, 44 for RFC2).
    #[error("maximum message size {max} is below the profile minimum {min}")]
    MaxMsgSizeTooSmall {
        /// Requested maximum.
        max: usize,
        /// Profile minimum.
        min: usize,
    },
    /// The maximum message size cannot be expressed in the le16 `msg_size`.
    #[error("maximum message size {max} is above the protocol limit {limit}")]
    MaxMsgSizeTooLarge {
        /// Requested maximum.
        max: usize,
        /// Protocol limit (65535).
        limit: usize,
    },
}

/// Encoder/decoder of one bus instance: a wire profile and that bus's maximum message size.
///
/// The maximum is a bus-instance parameter (spec v2 §1) and bounds both
/// directions, so it lives here rather than being passed to each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Codec {
    profile: Profile,
    max_msg_size: usize,
}

impl Codec {
    /// A codec for `profile` with the bus maximum `max_msg_size` (header
    /// included, bus framing excluded).
    ///
    /// Rejects a maximum below the profile minimum
    /// ([`Profile::min_max_msg_size`]) or above 65535.
    pub const fn new(profile: Profile, max_msg_size: usize) -> Result<Self, CodecError> {
        let min = profile.min_max_msg_size();
        if max_msg_size < min {
            return Err(CodecError::MaxMsgSizeTooSmall {
                max: max_msg_size,
                min,
            });
        }
        if max_msg_size > MAX_MSG_SIZE_LIMIT {
            return Err(CodecError::MaxMsgSizeTooLarge {
                max: max_msg_size,
                limit: MAX_MSG_SIZE_LIMIT,
            });
        }
        Ok(Self {
            profile,
            max_msg_size,
        })
    }

    /// The wire profile.
    pub const fn profile(&self) -> Profile {
        self.profile
    }

    /// The bus maximum message size.
    pub const fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    /// Header length of the profile: 8 (6 for RFC2).
    pub const fn header_len(&self) -> usize {
        self.profile.header_len()
    }

    /// Read the header at the start of `frame` in this profile's layout,
    /// without validating `msg_size` (for bus-level routing).
    pub fn peek_header(&self, frame: &[u8]) -> Result<Header, DecodeError> {
        Header::parse(self.profile, frame)
    }

    fn room(&self, fixed: usize) -> usize {
        self.max_msg_size
            .saturating_sub(self.header_len())
            .saturating_sub(fixed)
    }

    /// Data bytes that fit a GET_CONFIG response / SET_CONFIG request
    /// (max − header − 12), to chunk config accesses.
    pub fn max_config_data(&self) -> usize {
        self.room(12)
    }

    /// Feature blocks that fit a GET_DEVICE_FEATURES response /
    /// SET_DRIVER_FEATURES request ((max − header − 8) / 4).
    pub fn max_feature_blocks(&self) -> usize {
        self.room(8) / 4
    }

    /// Data bytes that fit an EVENT_CONFIG (max − header − 16); larger
    /// changes are signalled without data.
    pub fn max_event_config_data(&self) -> usize {
        self.room(16)
    }

    /// Device-number slots a GET_DEVICES response can describe: bitmap
    /// bytes × 8, capped by the le16 `count` (to a multiple of 8 for v1,
    /// whose windows must be 8-aligned).
    pub fn max_devices_bitmap_bits(&self) -> usize {
        let cap = match self.profile {
            Profile::V1 => 0xFFF8,
            Profile::V2 | Profile::Rfc2 => 0xFFFF,
        };
        self.room(6).saturating_mul(8).min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(
            Codec::new(Profile::V2, 51),
            Err(CodecError::MaxMsgSizeTooSmall { max: 51, min: 52 })
        );
        assert_eq!(
            Codec::new(Profile::V2, 65536),
            Err(CodecError::MaxMsgSizeTooLarge {
                max: 65536,
                limit: 65535
            })
        );
        assert!(Codec::new(Profile::V2, 52).is_ok());
        assert!(Codec::new(Profile::V2, 65535).is_ok());
        assert!(Codec::new(Profile::V1, 47).is_err());
        assert!(Codec::new(Profile::V1, 48).is_ok());
        assert!(Codec::new(Profile::Rfc2, 43).is_err());
        assert!(Codec::new(Profile::Rfc2, 44).is_ok());
    }

    #[test]
    fn capacities() {
        let c = Codec::new(Profile::V2, 264).expect("valid");
        assert_eq!(c.max_config_data(), 244);
        assert_eq!(c.max_event_config_data(), 240);
        assert_eq!(c.max_feature_blocks(), 62);
        assert_eq!(c.max_devices_bitmap_bits(), (264 - 14) * 8);
        let c = Codec::new(Profile::V2, 104).expect("valid");
        assert_eq!(c.max_feature_blocks(), 22);
        let c = Codec::new(Profile::Rfc2, 44).expect("valid");
        assert_eq!(c.header_len(), 6);
        assert_eq!(c.max_config_data(), 26);
        let c = Codec::new(Profile::V2, 65535).expect("valid");
        assert_eq!(c.max_devices_bitmap_bits(), 0xFFFF);
        let c = Codec::new(Profile::V1, 65535).expect("valid");
        assert_eq!(c.max_devices_bitmap_bits(), 0xFFF8);
    }
}
