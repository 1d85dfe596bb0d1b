//! [`WireError`]: what decoding or validating a frame can find wrong.

use super::consts::Namespace;

/// Errors decoding or validating frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the header.
    #[error("frame of {len} bytes is shorter than the {need}-byte header")]
    ShortFrame {
        /// Bytes available.
        len: usize,
        /// Header size of the profile.
        need: usize,
    },
    /// `msg_size` below the header size.
    #[error("msg_size {msg_size} is below the header size")]
    MsgSizeBelowHeader {
        /// The header's msg_size.
        msg_size: u16,
    },
    /// `msg_size` larger than the bytes received.
    #[error("msg_size {msg_size} exceeds the {len} bytes received")]
    Truncated {
        /// The header's msg_size.
        msg_size: u16,
        /// Bytes received.
        len: usize,
    },
    /// `msg_size` above the bus maximum.
    #[error("msg_size {msg_size} exceeds the bus maximum {max}")]
    AboveMax {
        /// The header's msg_size.
        msg_size: usize,
        /// The bus maximum.
        max: usize,
    },
    /// Payload shorter than the message's fixed part (or its variable part does not fit).
    #[error("{name}: payload of {got} bytes, need at least {need}")]
    PayloadTooShort {
        /// Message name.
        name: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// No layout is known for this (namespace, kind, msg_id).
    #[error("unknown {ns} msg_id {msg_id:#04x}")]
    UnknownMsgId {
        /// Namespace.
        ns: Namespace,
        /// Message id.
        msg_id: u8,
    },
    /// A header field of a response does not match the request (§6.3).
    #[error("response {field} is {got:#x}, expected {expected:#x}")]
    HeaderMismatch {
        /// Field name.
        field: &'static str,
        /// Expected value.
        expected: u32,
        /// Received value.
        got: u32,
    },
    /// An echoed payload field does not match the request.
    #[error("{name}: echoed {field} is {got:#x}, expected {expected:#x}")]
    EchoMismatch {
        /// Message name.
        name: &'static str,
        /// Field name.
        field: &'static str,
        /// Expected value.
        expected: u64,
        /// Received value.
        got: u64,
    },
    /// Some other rule of the message layout is violated.
    #[error("{name}: {what}")]
    Invalid {
        /// Message name.
        name: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A message would not fit the 16-bit msg_size field.
    #[error("message of {size} bytes does not fit msg_size")]
    TooLarge {
        /// Encoded size.
        size: usize,
    },
}
