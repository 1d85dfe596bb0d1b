//! The common message header.

use crate::wire::{Writer, le16};
use crate::{DecodeError, EncodeError, HEADER_LEN, Profile, msg_id_bits, msg_type};

/// A raw message header, as found on the wire.
///
/// Kept separate from [`crate::Message`] so bus layers can route or rewrite
/// (`token`, `dev_num`) a frame without decoding its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// `type` byte as received (bits 2–7 are not masked here).
    pub msg_type: u8,
    /// Message number within the namespace selected by `msg_type` bit1.
    pub msg_id: u8,
    /// Device number (transport) or 0 (bus).
    pub dev_num: u16,
    /// Bus-owned correlation token (0 on RFC2, which has none).
    pub token: u16,
    /// Total message length including the header.
    pub msg_size: u16,
}

impl Header {
    /// `type` bit0: this is a response.
    pub const fn is_response(&self) -> bool {
        self.msg_type & msg_type::RESPONSE != 0
    }

    /// `type` bit1: this is a bus message (else transport).
    pub const fn is_bus(&self) -> bool {
        self.msg_type & msg_type::BUS != 0
    }

    /// `msg_id` bit6: this is a one-way event.
    pub const fn is_event(&self) -> bool {
        self.msg_id & msg_id_bits::EVENT != 0
    }

    /// Parse the header of `profile` at the start of `frame` without any
    /// validation of `msg_size`.
    pub(crate) fn parse(profile: Profile, frame: &[u8]) -> Result<Self, DecodeError> {
        let hl = profile.header_len();
        let h = frame
            .get(..hl)
            .ok_or(DecodeError::ShortFrame { len: frame.len() })?;
        let msg_type = h.first().copied().unwrap_or(0);
        let msg_id = h.get(1).copied().unwrap_or(0);
        let dev_num = le16(h, 2);
        Ok(match profile {
            Profile::Rfc2 => Header {
                msg_type,
                msg_id,
                dev_num,
                token: 0,
                msg_size: le16(h, 4),
            },
            Profile::V2 | Profile::V1 => Header {
                msg_type,
                msg_id,
                dev_num,
                token: le16(h, 4),
                msg_size: le16(h, 6),
            },
        })
    }

    /// Write this header in `profile`'s layout at the start of `out`
    /// (RFC2 drops `token`).
    pub(crate) fn write(&self, profile: Profile, out: &mut [u8]) -> Result<(), EncodeError> {
        let mut w = Writer::new(out);
        w.bytes(0, &[self.msg_type, self.msg_id])?;
        w.u16(2, self.dev_num)?;
        match profile {
            Profile::Rfc2 => w.u16(4, self.msg_size),
            Profile::V2 | Profile::V1 => {
                w.u16(4, self.token)?;
                w.u16(6, self.msg_size)
            }
        }
    }
}

/// Read the 8-byte (v2/v1) header at the start of `frame`.
///
/// Only fails if the frame is shorter than the header; `msg_size` is
/// reported as is (use [`crate::Codec::decode`] to validate a message).
/// For RFC2 frames use [`crate::Codec::peek_header`].
pub fn peek_header(frame: &[u8]) -> Result<Header, DecodeError> {
    debug_assert_eq!(Profile::V2.header_len(), HEADER_LEN);
    Header::parse(Profile::V2, frame)
}
