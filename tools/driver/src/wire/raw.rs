//! [`RawFrame`]: arbitrary, possibly malformed frames for the conformance
//! suite, and [`hex`] for diagnostics.

use super::consts::Namespace;
use super::header::Header;
use super::profile::Profile;
use super::request::Request;

/// Builder for arbitrary frames, including malformed ones (conformance suite).
///
/// By default `msg_size` is the true length; [`RawFrame::msg_size`] overrides
/// the header field and [`RawFrame::truncate`] cuts the bytes actually sent.
#[derive(Debug, Clone, Default)]
pub struct RawFrame {
    profile: Profile,
    ty: u8,
    msg_id: u8,
    dev_num: u16,
    token: u16,
    msg_size: Option<u16>,
    payload: Vec<u8>,
    truncate: Option<usize>,
}

impl RawFrame {
    /// Starts a frame with the given `type` byte and `msg_id`.
    pub fn new(ty: u8, msg_id: u8) -> Self {
        RawFrame {
            ty,
            msg_id,
            ..Default::default()
        }
    }

    /// Starts from a well-formed v2 request.
    pub fn from_request(req: &Request, dev_num: u16, token: u16) -> Self {
        Self::from_request_for(Profile::V2, req, dev_num, token)
    }

    /// Starts from a well-formed request in the layout of `profile`.
    pub fn from_request_for(profile: Profile, req: &Request, dev_num: u16, token: u16) -> Self {
        let dev_num = if req.namespace() == Namespace::Bus {
            0
        } else {
            dev_num
        };
        RawFrame {
            profile,
            ty: req.namespace().type_bits(),
            msg_id: req.msg_id(),
            dev_num,
            token,
            payload: req.payload_for(profile),
            ..Default::default()
        }
    }

    /// Sets the wire profile (header layout; RFC2 drops the token on build).
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    /// The frame's header fields as the driver intends them (the token
    /// included even on RFC2, where it is not sent).
    pub fn header(&self) -> Header {
        Header {
            ty: self.ty,
            msg_id: self.msg_id,
            dev_num: self.dev_num,
            token: self.token,
            msg_size: self
                .msg_size
                .unwrap_or(u16::try_from(self.true_size()).unwrap_or(u16::MAX)),
        }
    }

    fn true_size(&self) -> usize {
        self.profile.header_size() + self.payload.len()
    }

    /// Sets the `type` byte.
    pub fn ty(mut self, ty: u8) -> Self {
        self.ty = ty;
        self
    }

    /// Sets `dev_num`.
    pub fn dev_num(mut self, dev_num: u16) -> Self {
        self.dev_num = dev_num;
        self
    }

    /// Sets `token`.
    pub fn token(mut self, token: u16) -> Self {
        self.token = token;
        self
    }

    /// Overrides the header `msg_size` regardless of the bytes present.
    pub fn msg_size(mut self, msg_size: u16) -> Self {
        self.msg_size = Some(msg_size);
        self
    }

    /// Replaces the payload.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Truncates the payload to `len` bytes (msg_size follows unless overridden).
    pub fn payload_len(mut self, len: usize) -> Self {
        self.payload.resize(len, 0);
        self
    }

    /// Sends only the first `len` bytes of the encoded frame (header included).
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    /// The token the frame carries.
    pub fn token_value(&self) -> u16 {
        self.token
    }

    /// Builds the bytes (never padded: the frame is sent as built).
    pub fn build(&self) -> Vec<u8> {
        let mut v = self.header().encode_for(self.profile);
        v.extend_from_slice(&self.payload);
        if let Some(n) = self.truncate {
            v.truncate(n);
        }
        v
    }
}

/// Formats bytes as space-separated hex (diagnostics).
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
