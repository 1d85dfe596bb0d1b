//! Wire encoding and decoding of virtio-msg frames in the three wire
//! generations deployed peers speak ([`Profile`]).
//!
//! Written from the layout tables of the reference (§1 header, §3 transport
//! messages, §4 bus messages, §7 version history) and the interop notes
//! (interop §2: generations G2 = RFC2, G3 = PATCH v1, G4 = spec v2). Every
//! multi-byte field is little-endian and structures are packed; offsets in
//! the payload tables are relative to the payload, which starts after the
//! header (8 bytes, 6 for RFC2).
//!
//! The typed API ([`Request`], [`Response`], [`DeviceInfo`], [`VqueueInfo`],
//! [`SetVqueue`]) has the v2 shape; the `*_for(profile, ..)` functions map it
//! onto the older layouts. The functions without a profile speak v2.
//!
//! The module is symmetric (requests, responses and events can be both encoded
//! and decoded) so the test-only fake device and the byte examples of §9 can be
//! exercised with the same code. [`RawFrame`] builds arbitrary, possibly
//! malformed, frames for the conformance suite.

use std::fmt;

/// Size of the common message header (§1; v2 and v1).
pub const HEADER_SIZE: usize = 8;
/// Size of the RFC2 header: type, msg_id, dev_num, msg_size (interop §2.1, no token).
pub const RFC2_HEADER_SIZE: usize = 6;
/// Smallest maximum message size a v2 bus may advertise (§1: 8 + 44).
pub const MIN_MAX_MSG_SIZE: usize = 52;
/// Largest maximum message size of the v2 protocol range (§1).
pub const MAX_MAX_MSG_SIZE: usize = 65535;
/// The "recommended" maximum message size (§1: 8 + 256).
pub const RECOMMENDED_MAX_MSG_SIZE: usize = 264;

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

/// Bits of the header `type` byte (§1).
pub mod ty {
    /// bit0: 1 = response, 0 = request or event.
    pub const RESPONSE: u8 = 0x01;
    /// bit1: 1 = bus message, 0 = transport message.
    pub const BUS: u8 = 0x02;
    /// bits 2–7 are reserved: sent as 0, ignored on receive.
    pub const RESERVED_MASK: u8 = 0xFC;
}

/// Bits of the header `msg_id` byte (§1, v2 split).
pub mod id_bits {
    /// bit6: 1 = event (one-way).
    pub const EVENT: u8 = 0x40;
    /// bit7: 1 = implementation/bus-defined.
    pub const IMPL_DEFINED: u8 = 0x80;
}

/// Transport message ids (namespace `type.bit1 = 0`, §3.1).
pub mod msg {
    /// GET_DEVICE_INFO.
    pub const GET_DEVICE_INFO: u8 = 0x02;
    /// GET_DEVICE_FEATURES.
    pub const GET_DEVICE_FEATURES: u8 = 0x03;
    /// SET_DRIVER_FEATURES.
    pub const SET_DRIVER_FEATURES: u8 = 0x04;
    /// GET_CONFIG.
    pub const GET_CONFIG: u8 = 0x05;
    /// SET_CONFIG.
    pub const SET_CONFIG: u8 = 0x06;
    /// GET_DEVICE_STATUS.
    pub const GET_DEVICE_STATUS: u8 = 0x07;
    /// SET_DEVICE_STATUS.
    pub const SET_DEVICE_STATUS: u8 = 0x08;
    /// GET_VQUEUE.
    pub const GET_VQUEUE: u8 = 0x09;
    /// SET_VQUEUE.
    pub const SET_VQUEUE: u8 = 0x0A;
    /// RESET_VQUEUE.
    pub const RESET_VQUEUE: u8 = 0x0B;
    /// GET_SHM.
    pub const GET_SHM: u8 = 0x0C;
    /// EVENT_CONFIG (device → driver).
    pub const EVENT_CONFIG: u8 = 0x40;
    /// EVENT_AVAIL (driver → device).
    pub const EVENT_AVAIL: u8 = 0x41;
    /// EVENT_USED (device → driver).
    pub const EVENT_USED: u8 = 0x42;
}

/// Bus message ids (namespace `type.bit1 = 1`, §4).
pub mod bus_msg {
    /// GET_DEVICES.
    pub const GET_DEVICES: u8 = 0x02;
    /// PING.
    pub const PING: u8 = 0x03;
    /// EVENT_DEVICE (device-side bus → driver-side bus).
    pub const EVENT_DEVICE: u8 = 0x40;
}

/// Virtio device status bits (§3.7).
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u32 = 1;
    /// DRIVER.
    pub const DRIVER: u32 = 2;
    /// DRIVER_OK.
    pub const DRIVER_OK: u32 = 4;
    /// FEATURES_OK.
    pub const FEATURES_OK: u32 = 8;
    /// DEVICE_NEEDS_RESET.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// FAILED.
    pub const FAILED: u32 = 128;
}

/// Device feature bit numbers used by the transport and the split ring.
pub mod feature {
    /// VIRTIO_F_INDIRECT_DESC.
    pub const INDIRECT_DESC: u32 = 28;
    /// VIRTIO_F_EVENT_IDX (VIRTIO_RING_F_EVENT_IDX).
    pub const EVENT_IDX: u32 = 29;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u32 = 32;
    /// VIRTIO_F_ACCESS_PLATFORM.
    pub const ACCESS_PLATFORM: u32 = 33;
    /// VIRTIO_F_RING_PACKED.
    pub const RING_PACKED: u32 = 34;
    /// VIRTIO_F_IN_ORDER.
    pub const IN_ORDER: u32 = 35;
    /// VIRTIO_F_NOTIFICATION_DATA.
    pub const NOTIFICATION_DATA: u32 = 38;
    /// VIRTIO_F_NOTIF_CONFIG_DATA (never offered / negotiated over virtio-msg, §3.4).
    pub const NOTIF_CONFIG_DATA: u32 = 39;
    /// VIRTIO_F_RING_RESET.
    pub const RING_RESET: u32 = 40;
}

/// Transport feature bits advertised by the bus instance (§1, §2).
pub mod transport_feature {
    /// VIRTIO_MSG_F_STRICT_CONFIG_GENERATION.
    pub const STRICT_CONFIG_GENERATION: u32 = 1 << 0;
}

/// SET_VQUEUE `flags` (§3.10) and GET_VQUEUE `flags` (§3.9).
pub mod vq_flags {
    /// Mask of the state op in SET_VQUEUE flags (bits 1:0).
    pub const STATE_MASK: u32 = 0x3;
    /// State op 0: keep the queue disabled.
    pub const STATE_KEEP_DISABLED: u32 = 0;
    /// State op 1: enable the queue.
    pub const STATE_ENABLE: u32 = 1;
    /// State op 2: keep the current state.
    pub const STATE_KEEP: u32 = 2;
    /// State op 3: reserved.
    pub const STATE_RESERVED: u32 = 3;
    /// bit2: keep the current size.
    pub const SIZE_IGNORE: u32 = 1 << 2;
    /// bit3: keep the current descriptor table address.
    pub const DESC_ADDR_IGNORE: u32 = 1 << 3;
    /// bit4: keep the current driver area address.
    pub const DRIVER_ADDR_IGNORE: u32 = 1 << 4;
    /// bit5: keep the current device area address.
    pub const DEVICE_ADDR_IGNORE: u32 = 1 << 5;
    /// All four ignore bits.
    pub const ALL_IGNORE: u32 =
        SIZE_IGNORE | DESC_ADDR_IGNORE | DRIVER_ADDR_IGNORE | DEVICE_ADDR_IGNORE;
    /// bits 31:6 of SET_VQUEUE flags are reserved.
    pub const SET_RESERVED_MASK: u32 = !0x3F;
    /// GET_VQUEUE flags bit0: the queue is enabled.
    pub const ENABLED: u32 = 1;
}

/// EVENT_DEVICE `device_bus_state` values (§4.3).
pub mod device_bus_state {
    /// DEVICE_BUS_STATE_ADDED.
    pub const ADDED: u16 = 1;
    /// DEVICE_BUS_STATE_REMOVED.
    pub const REMOVED: u16 = 2;
}

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

/// Message namespace, selected by `type.bit1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Transport messages (bit1 = 0).
    Transport,
    /// Bus messages (bit1 = 1).
    Bus,
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Namespace::Transport => "transport",
            Namespace::Bus => "bus",
        })
    }
}

impl Namespace {
    fn type_bits(self) -> u8 {
        match self {
            Namespace::Transport => 0,
            Namespace::Bus => ty::BUS,
        }
    }
}

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

/// Little-endian payload reader with length checks.
struct Rd<'a> {
    name: &'static str,
    b: &'a [u8],
}

impl<'a> Rd<'a> {
    fn new(name: &'static str, b: &'a [u8], need: usize) -> Result<Self, WireError> {
        if b.len() < need {
            return Err(WireError::PayloadTooShort {
                name,
                need,
                got: b.len(),
            });
        }
        Ok(Rd { name, b })
    }
    fn need(&self, need: usize) -> Result<(), WireError> {
        if self.b.len() < need {
            return Err(WireError::PayloadTooShort {
                name: self.name,
                need,
                got: self.b.len(),
            });
        }
        Ok(())
    }
    // Callers check lengths with `new`/`need` first, so the slices below are in range.
    fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.b[off], self.b[off + 1]])
    }
    fn u32(&self, off: usize) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.b[off..off + 4]);
        u32::from_le_bytes(a)
    }
    fn u64(&self, off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.b[off..off + 8]);
        u64::from_le_bytes(a)
    }
    fn bytes(&self, off: usize, len: usize) -> Result<Vec<u8>, WireError> {
        let end = off.checked_add(len).ok_or(WireError::PayloadTooShort {
            name: self.name,
            need: usize::MAX,
            got: self.b.len(),
        })?;
        self.need(end)?;
        Ok(self.b[off..end].to_vec())
    }
}

/// Little-endian payload writer.
#[derive(Default)]
struct Wr(Vec<u8>);

impl Wr {
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
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

/// SET_VQUEUE request body (§3.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetVqueue {
    /// Queue index.
    pub index: u32,
    /// `flags` (see [`vq_flags`]).
    pub flags: u32,
    /// Queue size in descriptors.
    pub size: u32,
    /// Reserved, must be 0 (settable for conformance tests).
    pub reserved: u32,
    /// Descriptor table address.
    pub desc_addr: u64,
    /// Driver area (avail ring) address.
    pub driver_addr: u64,
    /// Device area (used ring) address.
    pub device_addr: u64,
}

/// GET_VQUEUE response body (§3.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VqueueInfo {
    /// Echoed index.
    pub index: u32,
    /// Maximum size (0 = queue unavailable).
    pub max_size: u32,
    /// Current size (0 = not configured).
    pub cur_size: u32,
    /// bit0 = enabled; bits 31:1 must be 0.
    pub flags: u32,
    /// Descriptor table address.
    pub desc_addr: u64,
    /// Driver area address.
    pub driver_addr: u64,
    /// Device area address.
    pub device_addr: u64,
}

impl VqueueInfo {
    /// The deterministic zero sentinel for `index` (§3.9).
    pub fn sentinel(index: u32) -> Self {
        VqueueInfo {
            index,
            ..Default::default()
        }
    }

    /// True if bit0 of flags is set.
    pub fn enabled(&self) -> bool {
        self.flags & vq_flags::ENABLED != 0
    }

    /// True if the queue is configured to nothing: size 0, disabled, addresses 0.
    pub fn is_idle(&self) -> bool {
        self.cur_size == 0
            && self.flags == 0
            && self.desc_addr == 0
            && self.driver_addr == 0
            && self.device_addr == 0
    }

    /// [`VqueueInfo::check_consistency`] for `profile`: on v1 `flags` holds
    /// the reserved word at payload offset 12, which must be 0 (RFC2 has no
    /// such word and decodes it as 0).
    pub fn check_consistency_for(&self, profile: Profile) -> Result<(), String> {
        if !profile.has_vqueue_flags() && self.flags != 0 {
            return Err(format!(
                "reserved word {:#x} is not 0 ({profile} GET_VQUEUE)",
                self.flags
            ));
        }
        self.check_consistency()
    }

    /// The consistency checks the Linux v2 driver applies (§3.9); `Err` says which failed.
    pub fn check_consistency(&self) -> Result<(), String> {
        if self.flags & !vq_flags::ENABLED != 0 {
            return Err(format!("flags {:#x} has bits other than bit0", self.flags));
        }
        if self.max_size == 0 && *self != VqueueInfo::sentinel(self.index) {
            return Err(format!("max_size 0 but other fields non-zero: {self:?}"));
        }
        if self.cur_size > self.max_size {
            return Err(format!(
                "cur_size {} > max_size {}",
                self.cur_size, self.max_size
            ));
        }
        let addrs = [self.desc_addr, self.driver_addr, self.device_addr];
        if self.cur_size == 0 && (self.enabled() || addrs.iter().any(|&a| a != 0)) {
            return Err(format!("cur_size 0 but enabled or addresses set: {self:?}"));
        }
        if self.cur_size != 0 && addrs.contains(&0) {
            return Err(format!(
                "cur_size {} but an address is 0: {self:?}",
                self.cur_size
            ));
        }
        Ok(())
    }
}

/// GET_DEVICE_INFO response body, v2 (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// Virtio device type.
    pub device_id: u32,
    /// Vendor id.
    pub vendor_id: u32,
    /// RFC 4122 UUID bytes (nil = none).
    pub device_uuid: [u8; 16],
    /// Number of 32-bit feature blocks.
    pub num_feature_blocks: u32,
    /// Config space size in bytes.
    pub config_size: u32,
    /// Number of virtqueues including admin queues.
    pub max_virtqueues: u32,
    /// First admin queue.
    pub admin_vq_start: u32,
    /// Number of admin queues.
    pub admin_vq_count: u32,
}

/// A driver-to-device request (transport 0x02–0x0C, bus GET_DEVICES and PING).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// GET_DEVICE_INFO (§3.2).
    GetDeviceInfo,
    /// GET_DEVICE_FEATURES (§3.3).
    GetDeviceFeatures {
        /// First block.
        block_index: u32,
        /// Number of blocks.
        num_blocks: u32,
    },
    /// SET_DRIVER_FEATURES (§3.4); `num_blocks` is `features.len()`.
    SetDriverFeatures {
        /// First block.
        block_index: u32,
        /// Feature words.
        features: Vec<u32>,
    },
    /// GET_CONFIG (§3.5).
    GetConfig {
        /// Offset in config space.
        offset: u32,
        /// Bytes to read.
        length: u32,
    },
    /// SET_CONFIG (§3.6); `length` is `data.len()`.
    SetConfig {
        /// Generation per the active profile (§2).
        generation: u32,
        /// Offset in config space.
        offset: u32,
        /// Bytes to write.
        data: Vec<u8>,
    },
    /// GET_DEVICE_STATUS (§3.7).
    GetDeviceStatus,
    /// SET_DEVICE_STATUS (§3.8).
    SetDeviceStatus {
        /// Desired status.
        status: u32,
    },
    /// GET_VQUEUE (§3.9).
    GetVqueue {
        /// Queue index.
        index: u32,
    },
    /// SET_VQUEUE (§3.10).
    SetVqueue(SetVqueue),
    /// RESET_VQUEUE (§3.11).
    ResetVqueue {
        /// Queue index.
        index: u32,
    },
    /// GET_SHM (§3.12).
    GetShm {
        /// Shared memory id.
        shmid: u32,
    },
    /// Bus GET_DEVICES (§4.1).
    GetDevices {
        /// First device number of the window.
        offset: u16,
        /// Number of slots.
        count: u16,
    },
    /// Bus PING (§4.2).
    Ping {
        /// Data to echo.
        data: u32,
    },
}

impl Request {
    /// The message's namespace.
    pub fn namespace(&self) -> Namespace {
        match self {
            Request::GetDevices { .. } | Request::Ping { .. } => Namespace::Bus,
            _ => Namespace::Transport,
        }
    }

    /// The message id.
    pub fn msg_id(&self) -> u8 {
        match self {
            Request::GetDeviceInfo => msg::GET_DEVICE_INFO,
            Request::GetDeviceFeatures { .. } => msg::GET_DEVICE_FEATURES,
            Request::SetDriverFeatures { .. } => msg::SET_DRIVER_FEATURES,
            Request::GetConfig { .. } => msg::GET_CONFIG,
            Request::SetConfig { .. } => msg::SET_CONFIG,
            Request::GetDeviceStatus => msg::GET_DEVICE_STATUS,
            Request::SetDeviceStatus { .. } => msg::SET_DEVICE_STATUS,
            Request::GetVqueue { .. } => msg::GET_VQUEUE,
            Request::SetVqueue(_) => msg::SET_VQUEUE,
            Request::ResetVqueue { .. } => msg::RESET_VQUEUE,
            Request::GetShm { .. } => msg::GET_SHM,
            Request::GetDevices { .. } => bus_msg::GET_DEVICES,
            Request::Ping { .. } => bus_msg::PING,
        }
    }

    /// Human-readable message name.
    pub fn name(&self) -> &'static str {
        message_name(self.namespace(), self.msg_id())
    }

    /// Encoded v2 payload (without header).
    pub fn payload(&self) -> Vec<u8> {
        self.payload_for(Profile::V2)
    }

    /// Encoded payload in the layout of `profile` (without header).
    ///
    /// v1 SET_VQUEUE: `flags` goes into `reserved0` and `reserved` into
    /// `reserved1` (both 0 from a conforming driver). RFC2 SET_VQUEUE:
    /// `flags` goes into the `unused` word at 4, `reserved` is not sent.
    pub fn payload_for(&self, profile: Profile) -> Vec<u8> {
        let w = Wr::default();
        match self {
            Request::GetDeviceInfo | Request::GetDeviceStatus => w,
            Request::GetDeviceFeatures {
                block_index,
                num_blocks,
            } => w.u32(*block_index).u32(*num_blocks),
            Request::SetDriverFeatures {
                block_index,
                features,
            } => features_body(*block_index, features),
            Request::GetConfig { offset, length } => w.u32(*offset).u32(*length),
            Request::SetConfig {
                generation,
                offset,
                data,
            } => w
                .u32(*generation)
                .u32(*offset)
                .u32(data.len() as u32)
                .bytes(data),
            Request::SetDeviceStatus { status } => w.u32(*status),
            Request::GetVqueue { index } | Request::ResetVqueue { index } => w.u32(*index),
            Request::SetVqueue(s) => {
                let w = w.u32(s.index).u32(s.flags).u32(s.size);
                let w = match profile {
                    Profile::V2 | Profile::V1 => w.u32(s.reserved),
                    Profile::Rfc2 => w,
                };
                w.u64(s.desc_addr).u64(s.driver_addr).u64(s.device_addr)
            }
            Request::GetShm { shmid } => w.u32(*shmid),
            Request::GetDevices { offset, count } => w.u16(*offset).u16(*count),
            Request::Ping { data } => w.u32(*data),
        }
        .0
    }

    /// Encodes the complete v2 frame. Bus messages always carry dev_num 0 (§4).
    pub fn encode(&self, dev_num: u16, token: u16) -> Result<Vec<u8>, WireError> {
        self.encode_for(Profile::V2, dev_num, token)
    }

    /// Encodes the complete frame of `profile`, unpadded (RFC2 drops the token).
    pub fn encode_for(
        &self,
        profile: Profile,
        dev_num: u16,
        token: u16,
    ) -> Result<Vec<u8>, WireError> {
        let dev_num = if self.namespace() == Namespace::Bus {
            0
        } else {
            dev_num
        };
        build_frame_for(
            profile,
            self.namespace().type_bits(),
            self.msg_id(),
            dev_num,
            token,
            &self.payload_for(profile),
        )
    }

    /// Fixed v2 request payload size (the minimum a device must accept, §9.3).
    pub fn fixed_payload(ns: Namespace, msg_id: u8) -> Option<usize> {
        Self::fixed_payload_for(Profile::V2, ns, msg_id)
    }

    /// Fixed request payload size in `profile` (RFC2 SET_VQUEUE is 36 bytes).
    pub fn fixed_payload_for(profile: Profile, ns: Namespace, msg_id: u8) -> Option<usize> {
        Some(match (ns, msg_id) {
            (Namespace::Transport, msg::GET_DEVICE_INFO | msg::GET_DEVICE_STATUS) => 0,
            (
                Namespace::Transport,
                msg::GET_DEVICE_FEATURES | msg::SET_DRIVER_FEATURES | msg::GET_CONFIG,
            ) => 8,
            (Namespace::Transport, msg::SET_CONFIG) => 12,
            (
                Namespace::Transport,
                msg::SET_DEVICE_STATUS | msg::GET_VQUEUE | msg::RESET_VQUEUE | msg::GET_SHM,
            ) => 4,
            (Namespace::Transport, msg::SET_VQUEUE) => profile.vqueue_size(),
            (Namespace::Transport, msg::EVENT_AVAIL) => 8,
            (Namespace::Bus, bus_msg::GET_DEVICES | bus_msg::PING) => 4,
            _ => return None,
        })
    }

    /// Decodes a v2 request payload (device side; used by the test fake and round-trip tests).
    pub fn decode(h: &Header, p: &[u8]) -> Result<Request, WireError> {
        Self::decode_for(Profile::V2, h, p)
    }

    /// Decodes a request payload of `profile`.
    pub fn decode_for(profile: Profile, h: &Header, p: &[u8]) -> Result<Request, WireError> {
        let ns = h.namespace();
        let name = message_name(ns, h.msg_id);
        let fixed =
            Request::fixed_payload_for(profile, ns, h.msg_id).ok_or(WireError::UnknownMsgId {
                ns,
                msg_id: h.msg_id,
            })?;
        let r = Rd::new(name, p, fixed)?;
        Ok(match (ns, h.msg_id) {
            (Namespace::Transport, msg::GET_DEVICE_INFO) => Request::GetDeviceInfo,
            (Namespace::Transport, msg::GET_DEVICE_STATUS) => Request::GetDeviceStatus,
            (Namespace::Transport, msg::GET_DEVICE_FEATURES) => Request::GetDeviceFeatures {
                block_index: r.u32(0),
                num_blocks: r.u32(4),
            },
            (Namespace::Transport, msg::SET_DRIVER_FEATURES) => {
                let (block_index, features) = decode_features_body(&r)?;
                Request::SetDriverFeatures {
                    block_index,
                    features,
                }
            }
            (Namespace::Transport, msg::GET_CONFIG) => Request::GetConfig {
                offset: r.u32(0),
                length: r.u32(4),
            },
            (Namespace::Transport, msg::SET_CONFIG) => Request::SetConfig {
                generation: r.u32(0),
                offset: r.u32(4),
                data: r.bytes(12, r.u32(8) as usize)?,
            },
            (Namespace::Transport, msg::SET_DEVICE_STATUS) => {
                Request::SetDeviceStatus { status: r.u32(0) }
            }
            (Namespace::Transport, msg::GET_VQUEUE) => Request::GetVqueue { index: r.u32(0) },
            (Namespace::Transport, msg::RESET_VQUEUE) => Request::ResetVqueue { index: r.u32(0) },
            (Namespace::Transport, msg::GET_SHM) => Request::GetShm { shmid: r.u32(0) },
            (Namespace::Transport, msg::SET_VQUEUE) => Request::SetVqueue(match profile {
                Profile::V2 | Profile::V1 => SetVqueue {
                    index: r.u32(0),
                    flags: r.u32(4),
                    size: r.u32(8),
                    reserved: r.u32(12),
                    desc_addr: r.u64(16),
                    driver_addr: r.u64(24),
                    device_addr: r.u64(32),
                },
                Profile::Rfc2 => SetVqueue {
                    index: r.u32(0),
                    flags: r.u32(4),
                    size: r.u32(8),
                    reserved: 0,
                    desc_addr: r.u64(12),
                    driver_addr: r.u64(20),
                    device_addr: r.u64(28),
                },
            }),
            (Namespace::Bus, bus_msg::GET_DEVICES) => Request::GetDevices {
                offset: r.u16(0),
                count: r.u16(2),
            },
            (Namespace::Bus, bus_msg::PING) => Request::Ping { data: r.u32(0) },
            _ => {
                return Err(WireError::UnknownMsgId {
                    ns,
                    msg_id: h.msg_id,
                });
            }
        })
    }
}

fn features_body(block_index: u32, features: &[u32]) -> Wr {
    let mut w = Wr::default().u32(block_index).u32(features.len() as u32);
    for f in features {
        w = w.u32(*f);
    }
    w
}

fn decode_features_body(r: &Rd<'_>) -> Result<(u32, Vec<u32>), WireError> {
    let block_index = r.u32(0);
    let n = r.u32(4) as usize;
    let need = n
        .checked_mul(4)
        .and_then(|b| b.checked_add(8))
        .unwrap_or(usize::MAX);
    r.need(need)?;
    Ok((block_index, (0..n).map(|i| r.u32(8 + 4 * i)).collect()))
}

/// Name of a message id in its namespace (events included); "UNKNOWN" otherwise.
pub fn message_name(ns: Namespace, msg_id: u8) -> &'static str {
    match (ns, msg_id) {
        (Namespace::Transport, msg::GET_DEVICE_INFO) => "GET_DEVICE_INFO",
        (Namespace::Transport, msg::GET_DEVICE_FEATURES) => "GET_DEVICE_FEATURES",
        (Namespace::Transport, msg::SET_DRIVER_FEATURES) => "SET_DRIVER_FEATURES",
        (Namespace::Transport, msg::GET_CONFIG) => "GET_CONFIG",
        (Namespace::Transport, msg::SET_CONFIG) => "SET_CONFIG",
        (Namespace::Transport, msg::GET_DEVICE_STATUS) => "GET_DEVICE_STATUS",
        (Namespace::Transport, msg::SET_DEVICE_STATUS) => "SET_DEVICE_STATUS",
        (Namespace::Transport, msg::GET_VQUEUE) => "GET_VQUEUE",
        (Namespace::Transport, msg::SET_VQUEUE) => "SET_VQUEUE",
        (Namespace::Transport, msg::RESET_VQUEUE) => "RESET_VQUEUE",
        (Namespace::Transport, msg::GET_SHM) => "GET_SHM",
        (Namespace::Transport, msg::EVENT_CONFIG) => "EVENT_CONFIG",
        (Namespace::Transport, msg::EVENT_AVAIL) => "EVENT_AVAIL",
        (Namespace::Transport, msg::EVENT_USED) => "EVENT_USED",
        (Namespace::Bus, bus_msg::GET_DEVICES) => "GET_DEVICES",
        (Namespace::Bus, bus_msg::PING) => "PING",
        (Namespace::Bus, bus_msg::EVENT_DEVICE) => "EVENT_DEVICE",
        _ => "UNKNOWN",
    }
}

/// A device-to-driver response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// GET_DEVICE_INFO response.
    DeviceInfo(DeviceInfo),
    /// GET_DEVICE_FEATURES response.
    DeviceFeatures {
        /// Echoed first block.
        block_index: u32,
        /// Feature words (their count is the echoed num_blocks).
        features: Vec<u32>,
    },
    /// SET_DRIVER_FEATURES response (empty).
    SetDriverFeatures,
    /// GET_CONFIG response.
    Config {
        /// Current generation.
        generation: u32,
        /// Echoed offset.
        offset: u32,
        /// Data (its length is the echoed length).
        data: Vec<u8>,
    },
    /// SET_CONFIG response.
    SetConfig {
        /// Generation after the operation.
        generation: u32,
        /// Echoed offset.
        offset: u32,
        /// Request length if applied, 0 if rejected.
        length: u32,
        /// Optional echo of the written bytes (empty when absent).
        data: Vec<u8>,
    },
    /// GET_DEVICE_STATUS response.
    DeviceStatus {
        /// Status.
        status: u32,
    },
    /// SET_DEVICE_STATUS response.
    SetDeviceStatus {
        /// Status when the response was built.
        status: u32,
    },
    /// GET_VQUEUE response.
    Vqueue(VqueueInfo),
    /// SET_VQUEUE response (empty).
    SetVqueue,
    /// RESET_VQUEUE response (empty).
    ResetVqueue,
    /// GET_SHM response.
    Shm {
        /// Echoed shmid.
        shmid: u32,
        /// Reserved (0).
        reserved: u32,
        /// Region length (0 = unsupported shmid).
        length: u64,
        /// Region address.
        address: u64,
    },
    /// Bus GET_DEVICES response (v2 order: offset, next_offset, count, bitmap).
    Devices {
        /// Echoed window start.
        offset: u16,
        /// Where to continue (0 = finished).
        next_offset: u16,
        /// Slots described.
        count: u16,
        /// `(count + 7) / 8` bitmap bytes, LSB first.
        bitmap: Vec<u8>,
    },
    /// Bus PING response.
    Ping {
        /// Echoed data.
        data: u32,
    },
}

impl Response {
    /// Namespace of the response.
    pub fn namespace(&self) -> Namespace {
        match self {
            Response::Devices { .. } | Response::Ping { .. } => Namespace::Bus,
            _ => Namespace::Transport,
        }
    }

    /// Message id of the response.
    pub fn msg_id(&self) -> u8 {
        match self {
            Response::DeviceInfo(_) => msg::GET_DEVICE_INFO,
            Response::DeviceFeatures { .. } => msg::GET_DEVICE_FEATURES,
            Response::SetDriverFeatures => msg::SET_DRIVER_FEATURES,
            Response::Config { .. } => msg::GET_CONFIG,
            Response::SetConfig { .. } => msg::SET_CONFIG,
            Response::DeviceStatus { .. } => msg::GET_DEVICE_STATUS,
            Response::SetDeviceStatus { .. } => msg::SET_DEVICE_STATUS,
            Response::Vqueue(_) => msg::GET_VQUEUE,
            Response::SetVqueue => msg::SET_VQUEUE,
            Response::ResetVqueue => msg::RESET_VQUEUE,
            Response::Shm { .. } => msg::GET_SHM,
            Response::Devices { .. } => bus_msg::GET_DEVICES,
            Response::Ping { .. } => bus_msg::PING,
        }
    }

    /// Minimum v2 response payload for (namespace, msg_id): the fixed part (§3, §4).
    pub fn min_payload(ns: Namespace, msg_id: u8) -> Option<usize> {
        Self::min_payload_for(Profile::V2, ns, msg_id)
    }

    /// Minimum response payload for (namespace, msg_id) in `profile`.
    pub fn min_payload_for(profile: Profile, ns: Namespace, msg_id: u8) -> Option<usize> {
        Some(match (ns, msg_id) {
            (Namespace::Transport, msg::GET_DEVICE_INFO) => profile.device_info_size(),
            (Namespace::Transport, msg::GET_DEVICE_FEATURES) => 8,
            (
                Namespace::Transport,
                msg::SET_DRIVER_FEATURES | msg::SET_VQUEUE | msg::RESET_VQUEUE,
            ) => 0,
            (Namespace::Transport, msg::GET_CONFIG | msg::SET_CONFIG) => 12,
            (Namespace::Transport, msg::GET_DEVICE_STATUS | msg::SET_DEVICE_STATUS) => 4,
            (Namespace::Transport, msg::GET_VQUEUE) => profile.vqueue_size(),
            (Namespace::Transport, msg::GET_SHM) => profile.shm_size(),
            (Namespace::Bus, bus_msg::GET_DEVICES) => 6,
            (Namespace::Bus, bus_msg::PING) => 4,
            _ => return None,
        })
    }

    /// Encoded v2 payload.
    pub fn payload(&self) -> Vec<u8> {
        // v2 can express every value of the typed API.
        self.payload_for(Profile::V2).unwrap_or_default()
    }

    /// Encoded payload in the layout of `profile`. Fails when a value does
    /// not fit the older layout (feature bits, le16 admin fields, 32-bit
    /// GET_SHM values).
    pub fn payload_for(&self, profile: Profile) -> Result<Vec<u8>, WireError> {
        let w = Wr::default();
        let old = profile != Profile::V2;
        let narrow = |name, field: &str, v: u64, max: u64| {
            if v > max {
                Err(WireError::Invalid {
                    name,
                    what: format!("{field} {v:#x} does not fit the {profile} layout"),
                })
            } else {
                Ok(v)
            }
        };
        Ok(match self {
            Response::DeviceInfo(i) if old => {
                let n = "GET_DEVICE_INFO";
                let bits = narrow(
                    n,
                    "num_feature_blocks",
                    u64::from(i.num_feature_blocks) * 32,
                    u64::from(u32::MAX),
                )?;
                let start = narrow(
                    n,
                    "admin_vq_start",
                    i.admin_vq_start.into(),
                    u16::MAX.into(),
                )?;
                let count = narrow(
                    n,
                    "admin_vq_count",
                    i.admin_vq_count.into(),
                    u16::MAX.into(),
                )?;
                w.u32(i.device_id)
                    .u32(i.vendor_id)
                    .u32(bits as u32)
                    .u32(i.config_size)
                    .u32(i.max_virtqueues)
                    .u16(start as u16)
                    .u16(count as u16)
            }
            Response::DeviceInfo(i) => w
                .u32(i.device_id)
                .u32(i.vendor_id)
                .bytes(&i.device_uuid)
                .u32(i.num_feature_blocks)
                .u32(i.config_size)
                .u32(i.max_virtqueues)
                .u32(i.admin_vq_start)
                .u32(i.admin_vq_count),
            Response::DeviceFeatures {
                block_index,
                features,
            } => features_body(*block_index, features),
            Response::SetDriverFeatures | Response::SetVqueue | Response::ResetVqueue => w,
            Response::Config {
                generation,
                offset,
                data,
            } => w
                .u32(*generation)
                .u32(*offset)
                .u32(data.len() as u32)
                .bytes(data),
            Response::SetConfig {
                generation,
                offset,
                length,
                data,
            } => w.u32(*generation).u32(*offset).u32(*length).bytes(data),
            Response::DeviceStatus { status } | Response::SetDeviceStatus { status } => {
                w.u32(*status)
            }
            Response::Vqueue(q) => {
                let w = w.u32(q.index).u32(q.max_size).u32(q.cur_size);
                let w = match profile {
                    Profile::V2 | Profile::V1 => w.u32(q.flags),
                    Profile::Rfc2 => w,
                };
                w.u64(q.desc_addr).u64(q.driver_addr).u64(q.device_addr)
            }
            Response::Shm {
                shmid,
                length,
                address,
                ..
            } if old => {
                let n = "GET_SHM";
                let l = narrow(n, "length", *length, u32::MAX.into())?;
                let a = narrow(n, "address", *address, u32::MAX.into())?;
                w.u32(*shmid).u32(l as u32).u32(a as u32)
            }
            Response::Shm {
                shmid,
                reserved,
                length,
                address,
            } => w.u32(*shmid).u32(*reserved).u64(*length).u64(*address),
            Response::Devices {
                offset,
                next_offset,
                count,
                bitmap,
            } if old => w.u16(*offset).u16(*count).u16(*next_offset).bytes(bitmap),
            Response::Devices {
                offset,
                next_offset,
                count,
                bitmap,
            } => w.u16(*offset).u16(*next_offset).u16(*count).bytes(bitmap),
            Response::Ping { data } => w.u32(*data),
        }
        .0)
    }

    /// Encodes the complete v2 response frame (device side: type = request type | 1, §9.4).
    pub fn encode(&self, dev_num: u16, token: u16) -> Result<Vec<u8>, WireError> {
        self.encode_for(Profile::V2, dev_num, token)
    }

    /// Encodes the complete, unpadded response frame of `profile`.
    pub fn encode_for(
        &self,
        profile: Profile,
        dev_num: u16,
        token: u16,
    ) -> Result<Vec<u8>, WireError> {
        let dev_num = if self.namespace() == Namespace::Bus {
            0
        } else {
            dev_num
        };
        build_frame_for(
            profile,
            self.namespace().type_bits() | ty::RESPONSE,
            self.msg_id(),
            dev_num,
            token,
            &self.payload_for(profile)?,
        )
    }

    /// Decodes a v2 response payload by (namespace, msg_id) alone.
    pub fn decode(h: &Header, p: &[u8]) -> Result<Response, WireError> {
        Self::decode_for(Profile::V2, h, p)
    }

    /// Decodes a response payload of `profile` by (namespace, msg_id) alone.
    ///
    /// v1/RFC2 GET_DEVICE_INFO: `num_feature_bits` must be a multiple of 32
    /// (reference §3.2) and becomes `num_feature_blocks`; the UUID reads as
    /// nil. v1 GET_VQUEUE: the reserved word lands in `flags`.
    pub fn decode_for(profile: Profile, h: &Header, p: &[u8]) -> Result<Response, WireError> {
        let ns = h.namespace();
        let name = message_name(ns, h.msg_id);
        let min =
            Response::min_payload_for(profile, ns, h.msg_id).ok_or(WireError::UnknownMsgId {
                ns,
                msg_id: h.msg_id,
            })?;
        let r = Rd::new(name, p, min)?;
        let old = profile != Profile::V2;
        Ok(match (ns, h.msg_id) {
            (Namespace::Transport, msg::GET_DEVICE_INFO) if old => {
                let bits = r.u32(8);
                if bits % 32 != 0 {
                    return Err(WireError::Invalid {
                        name,
                        what: format!("num_feature_bits {bits} is not a multiple of 32"),
                    });
                }
                Response::DeviceInfo(DeviceInfo {
                    device_id: r.u32(0),
                    vendor_id: r.u32(4),
                    device_uuid: [0; 16],
                    num_feature_blocks: bits / 32,
                    config_size: r.u32(12),
                    max_virtqueues: r.u32(16),
                    admin_vq_start: r.u16(20).into(),
                    admin_vq_count: r.u16(22).into(),
                })
            }
            (Namespace::Transport, msg::GET_DEVICE_INFO) => {
                let mut device_uuid = [0u8; 16];
                device_uuid.copy_from_slice(&p[8..24]);
                Response::DeviceInfo(DeviceInfo {
                    device_id: r.u32(0),
                    vendor_id: r.u32(4),
                    device_uuid,
                    num_feature_blocks: r.u32(24),
                    config_size: r.u32(28),
                    max_virtqueues: r.u32(32),
                    admin_vq_start: r.u32(36),
                    admin_vq_count: r.u32(40),
                })
            }
            (Namespace::Transport, msg::GET_DEVICE_FEATURES) => {
                let (block_index, features) = decode_features_body(&r)?;
                Response::DeviceFeatures {
                    block_index,
                    features,
                }
            }
            (Namespace::Transport, msg::SET_DRIVER_FEATURES) => Response::SetDriverFeatures,
            (Namespace::Transport, msg::SET_VQUEUE) => Response::SetVqueue,
            (Namespace::Transport, msg::RESET_VQUEUE) => Response::ResetVqueue,
            (Namespace::Transport, msg::GET_CONFIG) => Response::Config {
                generation: r.u32(0),
                offset: r.u32(4),
                data: r.bytes(12, r.u32(8) as usize)?,
            },
            (Namespace::Transport, msg::SET_CONFIG) => {
                let length = r.u32(8);
                // The data echo is optional (§3.6): present only if the frame carries it.
                let data = if p.len() > 12 {
                    r.bytes(12, length as usize)?
                } else {
                    Vec::new()
                };
                Response::SetConfig {
                    generation: r.u32(0),
                    offset: r.u32(4),
                    length,
                    data,
                }
            }
            (Namespace::Transport, msg::GET_DEVICE_STATUS) => {
                Response::DeviceStatus { status: r.u32(0) }
            }
            (Namespace::Transport, msg::SET_DEVICE_STATUS) => {
                Response::SetDeviceStatus { status: r.u32(0) }
            }
            (Namespace::Transport, msg::GET_VQUEUE) => Response::Vqueue(match profile {
                Profile::V2 | Profile::V1 => VqueueInfo {
                    index: r.u32(0),
                    max_size: r.u32(4),
                    cur_size: r.u32(8),
                    flags: r.u32(12),
                    desc_addr: r.u64(16),
                    driver_addr: r.u64(24),
                    device_addr: r.u64(32),
                },
                Profile::Rfc2 => VqueueInfo {
                    index: r.u32(0),
                    max_size: r.u32(4),
                    cur_size: r.u32(8),
                    flags: 0,
                    desc_addr: r.u64(12),
                    driver_addr: r.u64(20),
                    device_addr: r.u64(28),
                },
            }),
            (Namespace::Transport, msg::GET_SHM) if old => Response::Shm {
                shmid: r.u32(0),
                reserved: 0,
                length: r.u32(4).into(),
                address: r.u32(8).into(),
            },
            (Namespace::Transport, msg::GET_SHM) => Response::Shm {
                shmid: r.u32(0),
                reserved: r.u32(4),
                length: r.u64(8),
                address: r.u64(16),
            },
            (Namespace::Bus, bus_msg::GET_DEVICES) => {
                let (next_offset, count) = if old {
                    (r.u16(4), r.u16(2))
                } else {
                    (r.u16(2), r.u16(4))
                };
                Response::Devices {
                    offset: r.u16(0),
                    next_offset,
                    count,
                    bitmap: r.bytes(6, usize::from(count).div_ceil(8))?,
                }
            }
            (Namespace::Bus, bus_msg::PING) => Response::Ping { data: r.u32(0) },
            _ => {
                return Err(WireError::UnknownMsgId {
                    ns,
                    msg_id: h.msg_id,
                });
            }
        })
    }
}

/// Validates a received v2 frame as the response to `req` sent with (`dev_num`, `token`) and decodes it.
///
/// Checks what Linux checks (§6.3): the response bit and namespace bit, msg_id,
/// dev_num, token, and that `msg_size` lies within [header + min payload, max];
/// then the echoed payload fields (§3.3, §3.5, §3.6, §3.9, §3.12, §4.1, §4.2).
pub fn check_response(
    req: &Request,
    dev_num: u16,
    token: u16,
    frame: &[u8],
    max_msg_size: usize,
) -> Result<Response, WireError> {
    check_response_for(Profile::V2, req, dev_num, token, frame, max_msg_size)
}

/// [`check_response`] for `profile`. RFC2 frames carry no token, so `token`
/// is not compared there (the driver correlates by dev_num and msg_id).
pub fn check_response_for(
    profile: Profile,
    req: &Request,
    dev_num: u16,
    token: u16,
    frame: &[u8],
    max_msg_size: usize,
) -> Result<Response, WireError> {
    let (h, p) = split_frame_for(profile, frame)?;
    if usize::from(h.msg_size) > max_msg_size {
        return Err(WireError::AboveMax {
            msg_size: usize::from(h.msg_size),
            max: max_msg_size,
        });
    }
    let mismatch = |field, expected: u32, got: u32| WireError::HeaderMismatch {
        field,
        expected,
        got,
    };
    if !h.is_response() {
        return Err(mismatch("type.bit0 (response)", 1, 0));
    }
    let ns = req.namespace();
    if h.namespace() != ns {
        return Err(mismatch(
            "type.bit1 (bus)",
            u32::from(ns == Namespace::Bus),
            u32::from(h.namespace() == Namespace::Bus),
        ));
    }
    if h.msg_id != req.msg_id() {
        return Err(mismatch("msg_id", req.msg_id().into(), h.msg_id.into()));
    }
    let want_dev = if ns == Namespace::Bus { 0 } else { dev_num };
    if h.dev_num != want_dev {
        return Err(mismatch("dev_num", want_dev.into(), h.dev_num.into()));
    }
    if profile.has_token() && h.token != token {
        return Err(mismatch("token", token.into(), h.token.into()));
    }
    let resp = Response::decode_for(profile, &h, p)?;
    check_echo_for(profile, req, &resp)?;
    Ok(resp)
}

/// Checks the echoed payload fields of `resp` against `req` (v2 rules).
pub fn check_echo(req: &Request, resp: &Response) -> Result<(), WireError> {
    check_echo_for(Profile::V2, req, resp)
}

/// [`check_echo`] with the GET_DEVICES rules of `profile`: v1 windows are
/// 8-aligned (response `count` a multiple of 8, `next_offset` 0 or an aligned
/// value ≥ offset + count, reference §4.1); v2 and RFC2 require `next_offset`
/// to be 0 or above the request offset.
pub fn check_echo_for(profile: Profile, req: &Request, resp: &Response) -> Result<(), WireError> {
    let name = req.name();
    let echo = |field, expected: u64, got: u64| {
        if expected == got {
            Ok(())
        } else {
            Err(WireError::EchoMismatch {
                name,
                field,
                expected,
                got,
            })
        }
    };
    match (req, resp) {
        (
            Request::GetDeviceFeatures {
                block_index,
                num_blocks,
            },
            Response::DeviceFeatures {
                block_index: b,
                features,
            },
        ) => {
            echo("block_index", (*block_index).into(), (*b).into())?;
            echo("num_blocks", (*num_blocks).into(), features.len() as u64)
        }
        (
            Request::GetConfig { offset, length },
            Response::Config {
                offset: o, data, ..
            },
        ) => {
            echo("offset", (*offset).into(), (*o).into())?;
            echo("length", (*length).into(), data.len() as u64)
        }
        (
            Request::SetConfig { offset, data, .. },
            Response::SetConfig {
                offset: o,
                length,
                data: echoed,
                ..
            },
        ) => {
            echo("offset", (*offset).into(), (*o).into())?;
            if *length != 0 && *length as usize != data.len() {
                return Err(WireError::Invalid {
                    name,
                    what: format!(
                        "response length {length} is neither 0 nor the request length {}",
                        data.len()
                    ),
                });
            }
            if !echoed.is_empty() && echoed.len() != *length as usize {
                return Err(WireError::Invalid {
                    name,
                    what: "data echo length differs from length".into(),
                });
            }
            Ok(())
        }
        (Request::GetVqueue { index }, Response::Vqueue(q)) => {
            echo("index", (*index).into(), q.index.into())
        }
        (Request::GetShm { shmid }, Response::Shm { shmid: s, .. }) => {
            echo("shmid", (*shmid).into(), (*s).into())
        }
        (
            Request::GetDevices { offset, count },
            Response::Devices {
                offset: o,
                next_offset,
                count: c,
                ..
            },
        ) => {
            echo("offset", (*offset).into(), (*o).into())?;
            if c > count {
                return Err(WireError::Invalid {
                    name,
                    what: format!("response count {c} > request count {count}"),
                });
            }
            if profile == Profile::V1 {
                let end = u32::from(*offset) + u32::from(*c);
                if c % 8 != 0 {
                    return Err(WireError::Invalid {
                        name,
                        what: format!("v1 response count {c} is not a multiple of 8"),
                    });
                }
                if *next_offset != 0 && (next_offset % 8 != 0 || u32::from(*next_offset) < end) {
                    return Err(WireError::Invalid {
                        name,
                        what: format!(
                            "v1 next_offset {next_offset} is neither 0 nor an 8-aligned value ≥ offset + count = {end}"
                        ),
                    });
                }
                return Ok(());
            }
            if *next_offset != 0 && next_offset <= offset {
                return Err(WireError::Invalid {
                    name,
                    what: format!("next_offset {next_offset} is neither 0 nor > offset {offset}"),
                });
            }
            Ok(())
        }
        (Request::Ping { data }, Response::Ping { data: d }) => {
            echo("data", (*data).into(), (*d).into())
        }
        _ if req.msg_id() == resp.msg_id() && req.namespace() == resp.namespace() => Ok(()),
        _ => Err(WireError::HeaderMismatch {
            field: "msg_id",
            expected: req.msg_id().into(),
            got: resp.msg_id().into(),
        }),
    }
}

/// EVENT_CONFIG body (§3.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    /// Current device status.
    pub device_status: u32,
    /// Current generation.
    pub generation: u32,
    /// Affected range start.
    pub offset: u32,
    /// Affected range length.
    pub length: u32,
    /// Optional data of the range (empty if absent).
    pub data: Vec<u8>,
}

/// An event (one-way message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// EVENT_CONFIG from device `dev_num`.
    Config {
        /// Sender's device number.
        dev_num: u16,
        /// Body.
        body: EventConfig,
    },
    /// EVENT_AVAIL to device `dev_num` (driver → device).
    Avail {
        /// Target device.
        dev_num: u16,
        /// Queue index.
        vq_index: u32,
        /// next_offset (0 unless NOTIFICATION_DATA).
        next_offset: u32,
    },
    /// EVENT_USED from device `dev_num`.
    Used {
        /// Sender's device number.
        dev_num: u16,
        /// Queue index.
        vq_index: u32,
    },
    /// Bus EVENT_DEVICE.
    Device {
        /// Device number concerned.
        device_number: u16,
        /// New bus state (see [`device_bus_state`]).
        state: u16,
    },
    /// An implementation-defined event, kept raw.
    Other {
        /// Header as received.
        header: Header,
        /// Payload.
        payload: Vec<u8>,
    },
}

impl Event {
    /// Encodes the v2 event frame with the given token (events: whatever the bus uses, 0 by default).
    pub fn encode(&self, token: u16) -> Result<Vec<u8>, WireError> {
        self.encode_for(Profile::V2, token)
    }

    /// Encodes the unpadded event frame of `profile` (event payloads are the
    /// same in every profile; RFC2 drops the token).
    pub fn encode_for(&self, profile: Profile, token: u16) -> Result<Vec<u8>, WireError> {
        let build_frame = |ty_bits, msg_id, dev_num, token, payload: &[u8]| {
            build_frame_for(profile, ty_bits, msg_id, dev_num, token, payload)
        };
        let w = Wr::default();
        match self {
            Event::Config { dev_num, body } => {
                let p = w
                    .u32(body.device_status)
                    .u32(body.generation)
                    .u32(body.offset)
                    .u32(body.length)
                    .bytes(&body.data);
                build_frame(0, msg::EVENT_CONFIG, *dev_num, token, &p.0)
            }
            Event::Avail {
                dev_num,
                vq_index,
                next_offset,
            } => build_frame(
                0,
                msg::EVENT_AVAIL,
                *dev_num,
                token,
                &w.u32(*vq_index).u32(*next_offset).0,
            ),
            Event::Used { dev_num, vq_index } => {
                build_frame(0, msg::EVENT_USED, *dev_num, token, &w.u32(*vq_index).0)
            }
            Event::Device {
                device_number,
                state,
            } => build_frame(
                ty::BUS,
                bus_msg::EVENT_DEVICE,
                0,
                token,
                &w.u16(*device_number).u16(*state).0,
            ),
            Event::Other { header, payload } => build_frame(
                header.ty & !ty::RESPONSE,
                header.msg_id,
                header.dev_num,
                token,
                payload,
            ),
        }
    }

    /// Decodes an event frame's payload; sizes are checked as Linux does
    /// (EVENT_USED exactly 12 bytes, EVENT_CONFIG exactly 24 + length, §3.13, §3.15).
    pub fn decode(h: &Header, p: &[u8]) -> Result<Event, WireError> {
        let ns = h.namespace();
        let name = message_name(ns, h.msg_id);
        let exact = |need: usize| {
            if p.len() == need {
                Ok(())
            } else {
                Err(WireError::Invalid {
                    name,
                    what: format!("payload is {} bytes, expected exactly {need}", p.len()),
                })
            }
        };
        Ok(match (ns, h.msg_id) {
            (Namespace::Transport, msg::EVENT_CONFIG) => {
                let r = Rd::new(name, p, 16)?;
                let length = r.u32(12);
                let data = if p.len() > 16 {
                    r.bytes(16, length as usize)?
                } else {
                    Vec::new()
                };
                // Either exactly 24 + length with the data, or 24 without: a range
                // without data is allowed when the data does not fit (§2, §3.13),
                // although Linux drops that form.
                exact(16 + data.len())?;
                Event::Config {
                    dev_num: h.dev_num,
                    body: EventConfig {
                        device_status: r.u32(0),
                        generation: r.u32(4),
                        offset: r.u32(8),
                        length,
                        data,
                    },
                }
            }
            (Namespace::Transport, msg::EVENT_AVAIL) => {
                let r = Rd::new(name, p, 8)?;
                Event::Avail {
                    dev_num: h.dev_num,
                    vq_index: r.u32(0),
                    next_offset: r.u32(4),
                }
            }
            (Namespace::Transport, msg::EVENT_USED) => {
                exact(4)?;
                Event::Used {
                    dev_num: h.dev_num,
                    vq_index: Rd::new(name, p, 4)?.u32(0),
                }
            }
            (Namespace::Bus, bus_msg::EVENT_DEVICE) => {
                let r = Rd::new(name, p, 4)?;
                Event::Device {
                    device_number: r.u16(0),
                    state: r.u16(2),
                }
            }
            _ if h.msg_id & id_bits::IMPL_DEFINED != 0 => Event::Other {
                header: *h,
                payload: p.to_vec(),
            },
            _ => {
                return Err(WireError::UnknownMsgId {
                    ns,
                    msg_id: h.msg_id,
                });
            }
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|t| u8::from_str_radix(t, 16).expect("hex byte"))
            .collect()
    }

    #[test]
    fn s9_get_device_info_request_bytes() {
        let f = Request::GetDeviceInfo.encode(1, 5).expect("encode");
        assert_eq!(f, unhex("00 02 01 00 05 00 08 00"));
        let (h, p) = split_frame(&f).expect("split");
        assert_eq!(
            Request::decode(&h, p).expect("decode"),
            Request::GetDeviceInfo
        );
    }

    #[test]
    fn s9_get_device_info_response_bytes() {
        let mut want = unhex("01 02 01 00 05 00 34 00 01 00 00 00 51 45 4D 55");
        want.extend_from_slice(&[0u8; 16]);
        want.extend(unhex(
            "02 00 00 00 0C 00 00 00 03 00 00 00 00 00 00 00 00 00 00 00",
        ));
        let info = DeviceInfo {
            device_id: 1,
            vendor_id: 0x554D_4551,
            device_uuid: [0; 16],
            num_feature_blocks: 2,
            config_size: 12,
            max_virtqueues: 3,
            admin_vq_start: 0,
            admin_vq_count: 0,
        };
        assert_eq!(
            Response::DeviceInfo(info).encode(1, 5).expect("encode"),
            want
        );
        let got = check_response(&Request::GetDeviceInfo, 1, 5, &want, 264).expect("valid");
        assert_eq!(got, Response::DeviceInfo(info));
    }

    #[test]
    fn s9_set_vqueue_bytes() {
        let req = Request::SetVqueue(SetVqueue {
            index: 0,
            flags: vq_flags::STATE_ENABLE,
            size: 256,
            reserved: 0,
            desc_addr: 0x1_0000,
            driver_addr: 0x1_1000,
            device_addr: 0x1_2000,
        });
        let want = unhex(
            "00 0A 01 00 07 00 30 00 00 00 00 00 01 00 00 00 00 01 00 00 00 00 00 00 \
             00 00 01 00 00 00 00 00 00 10 01 00 00 00 00 00 00 20 01 00 00 00 00 00",
        );
        assert_eq!(req.encode(1, 7).expect("encode"), want);
        let (h, p) = split_frame(&want).expect("split");
        assert_eq!(Request::decode(&h, p).expect("decode"), req);
        let resp = unhex("01 0A 01 00 07 00 08 00");
        assert_eq!(Response::SetVqueue.encode(1, 7).expect("encode"), resp);
        assert_eq!(
            check_response(&req, 1, 7, &resp, 52).expect("valid"),
            Response::SetVqueue
        );
    }

    #[test]
    fn s9_event_used_bytes() {
        let f = unhex("00 42 01 00 00 00 0C 00 02 00 00 00");
        let (h, p) = split_frame(&f).expect("split");
        assert!(h.is_event());
        assert_eq!(
            Event::decode(&h, p).expect("decode"),
            Event::Used {
                dev_num: 1,
                vq_index: 2
            }
        );
        assert_eq!(
            Event::Used {
                dev_num: 1,
                vq_index: 2
            }
            .encode(0)
            .expect("encode"),
            f
        );
    }

    #[test]
    fn s4_get_devices_example() {
        // offset 0, count 16, bitmap 0x25 0x00, next_offset 16 => devices 0, 2, 5.
        let resp = Response::Devices {
            offset: 0,
            next_offset: 16,
            count: 16,
            bitmap: vec![0x25, 0],
        };
        let f = resp.encode(0, 9).expect("encode");
        assert_eq!(f, unhex("03 02 00 00 09 00 10 00 00 00 10 00 10 00 25 00"));
        let req = Request::GetDevices {
            offset: 0,
            count: 16,
        };
        assert_eq!(check_response(&req, 0, 9, &f, 264).expect("valid"), resp);
    }

    #[test]
    fn response_validation_rejects_mismatches() {
        let req = Request::GetDeviceStatus;
        let good = Response::DeviceStatus { status: 3 }
            .encode(2, 9)
            .expect("encode");
        assert!(check_response(&req, 2, 9, &good, 52).is_ok());
        // wrong token, dev_num, msg_id, request bit, namespace
        assert!(matches!(
            check_response(&req, 2, 8, &good, 52),
            Err(WireError::HeaderMismatch { field: "token", .. })
        ));
        assert!(matches!(
            check_response(&req, 3, 9, &good, 52),
            Err(WireError::HeaderMismatch {
                field: "dev_num",
                ..
            })
        ));
        let other = Request::SetDeviceStatus { status: 0 };
        assert!(matches!(
            check_response(&other, 2, 9, &good, 52),
            Err(WireError::HeaderMismatch {
                field: "msg_id",
                ..
            })
        ));
        let mut req_bit = good.clone();
        req_bit[0] = 0;
        assert!(check_response(&req, 2, 9, &req_bit, 52).is_err());
        let mut bus = good.clone();
        bus[0] = 3;
        assert!(check_response(&req, 2, 9, &bus, 52).is_err());
        // reserved type bits are ignored on receive
        let mut reserved = good.clone();
        reserved[0] |= 0x80;
        assert!(check_response(&req, 2, 9, &reserved, 52).is_ok());
        // too short payload, truncated, above max
        let short = RawFrame::new(1, msg::GET_DEVICE_STATUS)
            .dev_num(2)
            .token(9)
            .payload(&[0, 0])
            .build();
        assert!(matches!(
            check_response(&req, 2, 9, &short, 52),
            Err(WireError::PayloadTooShort { .. })
        ));
        assert!(matches!(
            check_response(&req, 2, 9, &good[..10], 52),
            Err(WireError::Truncated { .. })
        ));
        let big = RawFrame::new(1, msg::GET_DEVICE_STATUS)
            .dev_num(2)
            .token(9)
            .payload(&[0; 60])
            .build();
        assert!(matches!(
            check_response(&req, 2, 9, &big, 52),
            Err(WireError::AboveMax { .. })
        ));
        // larger than minimum within max is accepted (forward compatibility)
        let larger = RawFrame::new(1, msg::GET_DEVICE_STATUS)
            .dev_num(2)
            .token(9)
            .payload(&[3, 0, 0, 0, 9, 9])
            .build();
        assert_eq!(
            check_response(&req, 2, 9, &larger, 52).expect("ok"),
            Response::DeviceStatus { status: 3 }
        );
        // padding beyond msg_size is ignored
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 4]);
        assert!(check_response(&req, 2, 9, &padded, 52).is_ok());
    }

    #[test]
    fn echo_checks() {
        let req = Request::GetDeviceFeatures {
            block_index: 0,
            num_blocks: 2,
        };
        let bad = Response::DeviceFeatures {
            block_index: 0,
            features: vec![1],
        }
        .encode(0, 1)
        .expect("encode");
        assert!(matches!(
            check_response(&req, 0, 1, &bad, 264),
            Err(WireError::EchoMismatch {
                field: "num_blocks",
                ..
            })
        ));
        let req = Request::GetConfig {
            offset: 4,
            length: 2,
        };
        let bad = Response::Config {
            generation: 0,
            offset: 0,
            data: vec![1, 2],
        }
        .encode(0, 1)
        .expect("encode");
        assert!(check_response(&req, 0, 1, &bad, 264).is_err());
        let req = Request::SetConfig {
            generation: 0,
            offset: 0,
            data: vec![1, 2, 3],
        };
        let partial = Response::SetConfig {
            generation: 0,
            offset: 0,
            length: 2,
            data: vec![],
        }
        .encode(0, 1)
        .expect("encode");
        assert!(matches!(
            check_response(&req, 0, 1, &partial, 264),
            Err(WireError::Invalid { .. })
        ));
        let rejected = Response::SetConfig {
            generation: 0,
            offset: 0,
            length: 0,
            data: vec![],
        }
        .encode(0, 1)
        .expect("encode");
        assert!(check_response(&req, 0, 1, &rejected, 264).is_ok());
        let req = Request::GetDevices {
            offset: 16,
            count: 8,
        };
        let back = Response::Devices {
            offset: 16,
            next_offset: 8,
            count: 8,
            bitmap: vec![0],
        }
        .encode(0, 1)
        .expect("encode");
        assert!(check_response(&req, 0, 1, &back, 264).is_err());
        let req = Request::Ping { data: 0xdead_beef };
        let wrong = Response::Ping { data: 0xdead_beee }
            .encode(0, 1)
            .expect("encode");
        assert!(check_response(&req, 0, 1, &wrong, 264).is_err());
    }

    #[test]
    fn event_config_sizes() {
        let with = Event::Config {
            dev_num: 3,
            body: EventConfig {
                device_status: 15,
                generation: 7,
                offset: 2,
                length: 2,
                data: vec![9, 9],
            },
        };
        let f = with.encode(0).expect("encode");
        assert_eq!(f.len(), 26);
        let (h, p) = split_frame(&f).expect("split");
        assert_eq!(Event::decode(&h, p).expect("decode"), with);
        let without = Event::Config {
            dev_num: 3,
            body: EventConfig {
                device_status: 15,
                generation: 7,
                offset: 0,
                length: 0,
                data: vec![],
            },
        };
        let f = without.encode(0).expect("encode");
        assert_eq!(f.len(), 24);
        let (h, p) = split_frame(&f).expect("split");
        assert_eq!(Event::decode(&h, p).expect("decode"), without);
        // A range without data is accepted (§2 strict SHOULD), partial data is not.
        let range = RawFrame::new(0, msg::EVENT_CONFIG)
            .payload(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0])
            .build();
        let (h, p) = split_frame(&range).expect("split");
        assert!(
            matches!(Event::decode(&h, p), Ok(Event::Config { body, .. }) if body.length == 4 && body.data.is_empty())
        );
        let partial = RawFrame::new(0, msg::EVENT_CONFIG)
            .payload(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 2])
            .build();
        let (h, p) = split_frame(&partial).expect("split");
        assert!(Event::decode(&h, p).is_err());
        // EVENT_USED must be exactly 12 bytes
        let long = RawFrame::new(0, msg::EVENT_USED).payload(&[0; 8]).build();
        let (h, p) = split_frame(&long).expect("split");
        assert!(Event::decode(&h, p).is_err());
    }

    #[test]
    fn raw_frames() {
        let f = RawFrame::new(0, msg::GET_VQUEUE)
            .dev_num(1)
            .token(2)
            .payload(&[0; 4])
            .msg_size(40)
            .build();
        assert_eq!(f.len(), 12);
        assert_eq!(Header::decode(&f).expect("hdr").msg_size, 40);
        assert!(matches!(split_frame(&f), Err(WireError::Truncated { .. })));
        let f = RawFrame::new(0, msg::GET_DEVICE_STATUS).truncate(5).build();
        assert_eq!(
            split_frame(&f),
            Err(WireError::ShortFrame { len: 5, need: 8 })
        );
        let f = RawFrame::new(0, msg::GET_DEVICE_STATUS).msg_size(4).build();
        assert_eq!(
            split_frame(&f),
            Err(WireError::MsgSizeBelowHeader { msg_size: 4 })
        );
        let f = RawFrame::from_request(&Request::Ping { data: 1 }, 7, 3).build();
        assert_eq!(f, unhex("02 03 00 00 03 00 0C 00 01 00 00 00"));
    }

    // ---- golden vectors of the older profiles (interop §2.1–§2.2, reference §7.1)

    #[test]
    fn rfc2_header_has_no_token() {
        let f = Request::GetDeviceInfo
            .encode_for(Profile::Rfc2, 1, 99)
            .expect("encode");
        assert_eq!(f, unhex("00 02 01 00 06 00"));
        let (h, p) = split_frame_for(Profile::Rfc2, &f).expect("split");
        assert_eq!((h.token, h.msg_size, p.len()), (0, 6, 0));
        assert_eq!(
            split_frame_for(Profile::Rfc2, &f[..5]),
            Err(WireError::ShortFrame { len: 5, need: 6 })
        );
        // Padding after msg_size (fixed 44-byte frames) is ignored.
        let padded = pad_frame(f.clone(), 44);
        assert_eq!(padded.len(), 44);
        assert_eq!(
            split_frame_for(Profile::Rfc2, &padded)
                .expect("split")
                .1
                .len(),
            0
        );
    }

    #[test]
    fn rfc2_device_info_response_bytes() {
        // device_id 4, vendor "QEMU", 64 feature bits, config 0, 1 queue, no admin queues.
        let want = unhex(
            "01 02 01 00 1e 00 04 00 00 00 51 45 4d 55 40 00 00 00 00 00 00 00 \
             01 00 00 00 00 00 00 00",
        );
        let info = DeviceInfo {
            device_id: 4,
            vendor_id: 0x554D_4551,
            num_feature_blocks: 2,
            max_virtqueues: 1,
            ..Default::default()
        };
        let f = Response::DeviceInfo(info)
            .encode_for(Profile::Rfc2, 1, 0)
            .expect("encode");
        assert_eq!(f, want);
        // The token is not on the wire, so any expected token is fine.
        let got = check_response_for(Profile::Rfc2, &Request::GetDeviceInfo, 1, 7, &want, 44)
            .expect("valid");
        assert_eq!(got, Response::DeviceInfo(info));
        // v1 has the same payload behind an 8-byte header.
        let v1 = Response::DeviceInfo(info)
            .encode_for(Profile::V1, 1, 5)
            .expect("encode");
        assert_eq!(&v1[..8], &unhex("01 02 01 00 05 00 20 00")[..]);
        assert_eq!(&v1[8..], &want[6..]);
    }

    #[test]
    fn old_profiles_reject_feature_bits_not_multiple_of_32() {
        let mut f = Response::DeviceInfo(DeviceInfo {
            device_id: 4,
            num_feature_blocks: 2,
            ..Default::default()
        })
        .encode_for(Profile::V1, 0, 1)
        .expect("encode");
        f[16] = 48; // num_feature_bits = 48
        assert!(matches!(
            check_response_for(Profile::V1, &Request::GetDeviceInfo, 0, 1, &f, 48),
            Err(WireError::Invalid { .. })
        ));
        // admin fields are le16 there: 70000 does not fit.
        let big = Response::DeviceInfo(DeviceInfo {
            admin_vq_count: 70000,
            ..Default::default()
        });
        assert!(big.encode_for(Profile::Rfc2, 0, 0).is_err());
        assert!(big.encode_for(Profile::V2, 0, 0).is_ok());
    }

    #[test]
    fn rfc2_vqueue_layout_is_unaligned() {
        let set = Request::SetVqueue(SetVqueue {
            index: 0,
            flags: 0,
            size: 256,
            reserved: 0,
            desc_addr: 0x5fc0_0000,
            driver_addr: 0x5fc0_1000,
            device_addr: 0x5fc0_2000,
        });
        let want = unhex(
            "00 0a 01 00 2a 00 00 00 00 00 00 00 00 00 00 01 00 00 \
             00 00 c0 5f 00 00 00 00 00 10 c0 5f 00 00 00 00 00 20 c0 5f 00 00 00 00",
        );
        assert_eq!(set.encode_for(Profile::Rfc2, 1, 3).expect("encode"), want);
        let (h, p) = split_frame_for(Profile::Rfc2, &want).expect("split");
        assert_eq!(
            Request::decode_for(Profile::Rfc2, &h, p).expect("decode"),
            set
        );
        // v1: reserved0 and reserved1 words, 8-byte fields aligned at 16.
        let v1 = set.encode_for(Profile::V1, 1, 3).expect("encode");
        assert_eq!(v1.len(), 48);
        assert_eq!(&v1[..8], &unhex("00 0a 01 00 03 00 30 00")[..]);
        assert_eq!(&v1[24..28], &0x5fc0_0000u32.to_le_bytes()[..]);
        // GET_VQUEUE response: RFC2 36 bytes, flags not on the wire.
        let info = VqueueInfo {
            index: 0,
            max_size: 256,
            cur_size: 256,
            flags: 1,
            desc_addr: 0x5fc0_0000,
            driver_addr: 0x5fc0_1000,
            device_addr: 0x5fc0_2000,
        };
        let f = Response::Vqueue(info)
            .encode_for(Profile::Rfc2, 1, 0)
            .expect("encode");
        assert_eq!(f.len(), 42);
        assert_eq!(&f[6..18], &unhex("00 00 00 00 00 01 00 00 00 01 00 00")[..]);
        assert_eq!(&f[18..22], &0x5fc0_0000u32.to_le_bytes()[..]);
        let got = check_response_for(
            Profile::Rfc2,
            &Request::GetVqueue { index: 0 },
            1,
            0,
            &f,
            44,
        )
        .expect("valid");
        assert_eq!(got, Response::Vqueue(VqueueInfo { flags: 0, ..info }));
        // v1 carries the reserved word where v2 has flags; it must read 0.
        assert!(info.check_consistency_for(Profile::V1).is_err());
        assert!(info.check_consistency_for(Profile::V2).is_ok());
    }

    #[test]
    fn old_profiles_shm_and_devices_layouts() {
        let shm = Response::Shm {
            shmid: 1,
            reserved: 0,
            length: 0x1000,
            address: 0x8000,
        };
        let f = shm.encode_for(Profile::V1, 2, 4).expect("encode");
        assert_eq!(
            f,
            unhex("01 0c 02 00 04 00 14 00 01 00 00 00 00 10 00 00 00 80 00 00")
        );
        let big = Response::Shm {
            shmid: 1,
            reserved: 0,
            length: 1 << 32,
            address: 0,
        };
        assert!(big.encode_for(Profile::Rfc2, 2, 0).is_err());
        // GET_DEVICES: offset, count, next_offset (fields 2 and 4 swapped vs v2).
        let devs = Response::Devices {
            offset: 0,
            next_offset: 16,
            count: 8,
            bitmap: vec![0x25],
        };
        let f = devs.encode_for(Profile::V1, 0, 9).expect("encode");
        assert_eq!(f, unhex("03 02 00 00 09 00 0f 00 00 00 08 00 10 00 25"));
        let req = Request::GetDevices {
            offset: 0,
            count: 8,
        };
        assert_eq!(
            check_response_for(Profile::V1, &req, 0, 9, &f, 48).expect("valid"),
            devs
        );
        let f = devs.encode_for(Profile::Rfc2, 0, 0).expect("encode");
        assert_eq!(f, unhex("03 02 00 00 0d 00 00 00 08 00 10 00 25"));
        // v1 alignment: count and next_offset multiples of 8, next ≥ offset + count.
        for (count, next, bitmap) in [
            (5u16, 16u16, vec![0x05]),
            (8, 12, vec![0x05]),
            (8, 0, vec![1]),
        ] {
            let f = Response::Devices {
                offset: 0,
                next_offset: next,
                count,
                bitmap,
            }
            .encode_for(Profile::V1, 0, 9)
            .expect("encode");
            let r = check_response_for(Profile::V1, &req, 0, 9, &f, 48);
            assert_eq!(r.is_ok(), next == 0 && count == 8, "{count} {next}: {r:?}");
        }
    }

    #[test]
    fn rfc2_events_and_raw_frames() {
        let ev = Event::Avail {
            dev_num: 1,
            vq_index: 2,
            next_offset: 0,
        };
        let f = ev.encode_for(Profile::Rfc2, 5).expect("encode");
        assert_eq!(f, unhex("00 41 01 00 0e 00 02 00 00 00 00 00 00 00"));
        let (h, p) = split_frame_for(Profile::Rfc2, &f).expect("split");
        assert_eq!(Event::decode(&h, p).expect("decode"), ev);
        let raw = RawFrame::from_request_for(Profile::Rfc2, &Request::Ping { data: 1 }, 7, 3);
        assert_eq!(raw.build(), unhex("02 03 00 00 0a 00 01 00 00 00"));
        assert_eq!(raw.header().token, 3);
    }

    #[test]
    fn profile_names() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().expect("parse"), p);
        }
        assert!("v3".parse::<Profile>().is_err());
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn any_request() -> impl Strategy<Value = Request> {
            prop_oneof![
                Just(Request::GetDeviceInfo),
                Just(Request::GetDeviceStatus),
                (any::<u32>(), 0u32..60).prop_map(|(b, n)| Request::GetDeviceFeatures {
                    block_index: b,
                    num_blocks: n
                }),
                (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..60)).prop_map(
                    |(b, f)| Request::SetDriverFeatures {
                        block_index: b,
                        features: f
                    }
                ),
                (any::<u32>(), any::<u32>()).prop_map(|(o, l)| Request::GetConfig {
                    offset: o,
                    length: l
                }),
                (
                    any::<u32>(),
                    any::<u32>(),
                    proptest::collection::vec(any::<u8>(), 0..240)
                )
                    .prop_map(|(g, o, d)| Request::SetConfig {
                        generation: g,
                        offset: o,
                        data: d
                    }),
                any::<u32>().prop_map(|s| Request::SetDeviceStatus { status: s }),
                any::<u32>().prop_map(|i| Request::GetVqueue { index: i }),
                any::<u32>().prop_map(|i| Request::ResetVqueue { index: i }),
                any::<u32>().prop_map(|i| Request::GetShm { shmid: i }),
                (any::<[u32; 4]>(), any::<[u64; 3]>()).prop_map(|(a, b)| Request::SetVqueue(
                    SetVqueue {
                        index: a[0],
                        flags: a[1],
                        size: a[2],
                        reserved: a[3],
                        desc_addr: b[0],
                        driver_addr: b[1],
                        device_addr: b[2],
                    }
                )),
                (any::<u16>(), any::<u16>()).prop_map(|(o, c)| Request::GetDevices {
                    offset: o,
                    count: c
                }),
                any::<u32>().prop_map(|d| Request::Ping { data: d }),
            ]
        }

        fn any_profile() -> impl Strategy<Value = Profile> {
            prop_oneof![Just(Profile::V2), Just(Profile::V1), Just(Profile::Rfc2)]
        }

        proptest! {
            #[test]
            fn request_roundtrip_per_profile(
                req in any_request(),
                profile in any_profile(),
                dev in any::<u16>(),
                tok in any::<u16>(),
            ) {
                let f = req.encode_for(profile, dev, tok).expect("encode");
                let (h, p) = split_frame_for(profile, &f).expect("split");
                prop_assert_eq!(usize::from(h.msg_size), f.len());
                prop_assert_eq!(h.token, if profile.has_token() { tok } else { 0 });
                let mut want = req.clone();
                if let (Profile::Rfc2, Request::SetVqueue(s)) = (profile, &mut want) {
                    s.reserved = 0;
                }
                prop_assert_eq!(Request::decode_for(profile, &h, p).expect("decode"), want);
            }

            #[test]
            fn decoders_never_panic_per_profile(
                profile in any_profile(),
                bytes in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                if let Ok((h, p)) = split_frame_for(profile, &bytes) {
                    let _ = Request::decode_for(profile, &h, p);
                    let _ = Response::decode_for(profile, &h, p);
                    let _ = Event::decode(&h, p);
                }
            }

            #[test]
            fn request_roundtrip(req in any_request(), dev in any::<u16>(), tok in any::<u16>()) {
                let f = req.encode(dev, tok).expect("encode");
                let (h, p) = split_frame(&f).expect("split");
                prop_assert_eq!(usize::from(h.msg_size), f.len());
                prop_assert_eq!(h.token, tok);
                prop_assert_eq!(Request::decode(&h, p).expect("decode"), req);
            }

            #[test]
            fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                if let Ok((h, p)) = split_frame(&bytes) {
                    let _ = Request::decode(&h, p);
                    let _ = Response::decode(&h, p);
                    let _ = Event::decode(&h, p);
                }
            }
        }
    }
}
