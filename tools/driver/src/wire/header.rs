//! The message [`Header`] (§1; no token on RFC2) and framing: splitting a
//! received frame, building and padding one.

use super::consts::{HEADER_SIZE, Namespace, id_bits, ty};
use super::error::WireError;
use super::profile::Profile;

/// The message header (§1; RFC2 has no token, interop §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `type` byte, including reserved bits as received.
    pub ty: u8,
    /// `msg_id`.
    pub msg_id: u8,
    /// `dev_num`.
    pub dev_num: u16,
    /// `token` (0 on RFC2, which has none; see [`crate::driver::Received`]
    /// for how the driver fills it in after correlating).
    pub token: u16,
    /// `msg_size` (total length including the header).
    pub msg_size: u16,
}

impl Header {
    /// True if `type.bit0` (response) is set.
    pub fn is_response(&self) -> bool {
        self.ty & ty::RESPONSE != 0
    }

    /// Namespace from `type.bit1`.
    pub fn namespace(&self) -> Namespace {
        if self.ty & ty::BUS != 0 {
            Namespace::Bus
        } else {
            Namespace::Transport
        }
    }

    /// True for a one-way event (msg_id bit6 set, not a response).
    pub fn is_event(&self) -> bool {
        !self.is_response() && self.msg_id & id_bits::EVENT != 0
    }

    /// Encodes the v2 header.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0] = self.ty;
        b[1] = self.msg_id;
        b[2..4].copy_from_slice(&self.dev_num.to_le_bytes());
        b[4..6].copy_from_slice(&self.token.to_le_bytes());
        b[6..8].copy_from_slice(&self.msg_size.to_le_bytes());
        b
    }

    /// Encodes the header of `profile` (RFC2: the token is not sent).
    pub fn encode_for(&self, profile: Profile) -> Vec<u8> {
        match profile {
            Profile::V2 | Profile::V1 => self.encode().to_vec(),
            Profile::Rfc2 => {
                let mut b = vec![self.ty, self.msg_id];
                b.extend_from_slice(&self.dev_num.to_le_bytes());
                b.extend_from_slice(&self.msg_size.to_le_bytes());
                b
            }
        }
    }

    /// Decodes the first 8 bytes (v2); no check of `msg_size` against anything.
    pub fn decode(bytes: &[u8]) -> Result<Header, WireError> {
        Self::decode_for(Profile::V2, bytes)
    }

    /// Decodes the header of `profile`; no check of `msg_size` against anything.
    pub fn decode_for(profile: Profile, bytes: &[u8]) -> Result<Header, WireError> {
        let need = profile.header_size();
        if bytes.len() < need {
            return Err(WireError::ShortFrame {
                len: bytes.len(),
                need,
            });
        }
        let le16 = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        Ok(match profile {
            Profile::V2 | Profile::V1 => Header {
                ty: bytes[0],
                msg_id: bytes[1],
                dev_num: le16(2),
                token: le16(4),
                msg_size: le16(6),
            },
            Profile::Rfc2 => Header {
                ty: bytes[0],
                msg_id: bytes[1],
                dev_num: le16(2),
                token: 0,
                msg_size: le16(4),
            },
        })
    }
}

/// Splits a received v2 frame into header and payload (§9.1 checks).
///
/// Bytes past `msg_size` are bus padding and are ignored (§1).
pub fn split_frame(bytes: &[u8]) -> Result<(Header, &[u8]), WireError> {
    split_frame_for(Profile::V2, bytes)
}

/// Splits a received frame of `profile` into header and payload: the header
/// fits, `header ≤ msg_size ≤ bytes received`; bytes past `msg_size` are
/// padding (§1; on RFC2 buses every frame is padded to the bus maximum).
pub fn split_frame_for(profile: Profile, bytes: &[u8]) -> Result<(Header, &[u8]), WireError> {
    let h = Header::decode_for(profile, bytes)?;
    let size = usize::from(h.msg_size);
    if size < profile.header_size() {
        return Err(WireError::MsgSizeBelowHeader {
            msg_size: h.msg_size,
        });
    }
    if size > bytes.len() {
        return Err(WireError::Truncated {
            msg_size: h.msg_size,
            len: bytes.len(),
        });
    }
    Ok((h, &bytes[profile.header_size()..size]))
}

/// Builds a complete v2 frame: header with the exact `msg_size` followed by `payload`.
pub fn build_frame(
    ty_bits: u8,
    msg_id: u8,
    dev_num: u16,
    token: u16,
    payload: &[u8],
) -> Result<Vec<u8>, WireError> {
    build_frame_for(Profile::V2, ty_bits, msg_id, dev_num, token, payload)
}

/// Builds a complete frame of `profile` with the exact `msg_size` (no padding;
/// see [`pad_frame`]). RFC2 drops the token.
pub fn build_frame_for(
    profile: Profile,
    ty_bits: u8,
    msg_id: u8,
    dev_num: u16,
    token: u16,
    payload: &[u8],
) -> Result<Vec<u8>, WireError> {
    let size = profile.header_size() + payload.len();
    let msg_size = u16::try_from(size).map_err(|_| WireError::TooLarge { size })?;
    let h = Header {
        ty: ty_bits,
        msg_id,
        dev_num,
        token,
        msg_size,
    };
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&h.encode_for(profile));
    v.extend_from_slice(payload);
    Ok(v)
}

/// Pads `frame` with zeros to `frame_size` (RFC2 fixed-size frames; a frame
/// already that long or longer is left alone).
pub fn pad_frame(mut frame: Vec<u8>, frame_size: usize) -> Vec<u8> {
    if frame.len() < frame_size {
        frame.resize(frame_size, 0);
    }
    frame
}
