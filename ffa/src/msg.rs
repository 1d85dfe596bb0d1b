//! The FF-A bus messages (bus namespace, msg_id 0x80–0xBF requests, 0xC0
//! events; reference §8.4) in the two generations vmsgd speaks:
//!
//! * [`FfaProfile::V2`]: DEN0153 ALP2 as the 2026 Linux binding and spec v2
//!   describe it — 8-byte headers, VERSION as a three-step negotiation with
//!   a 12-byte request and a 22-byte response, 26-byte AREA_SHARE, bus
//!   addresses `area_id << 48 | offset`.
//! * [`FfaProfile::Rfc`]: the LKML RFC FF-A bus (interop §3.4) — RFC2
//!   frames of 44 bytes, one VERSION exchange of 18 bytes each way, no
//!   memory sharing (the driver's DMA pool is pre-mapped), a 16-bit device
//!   bitmap.
//!
//! Payloads are packed little-endian with unaligned fields; a request whose
//! payload is not exactly its size is refused (as the Linux device role
//! does).

use thiserror::Error;
use vmsg_proto::Profile;

/// Message ids.
pub mod id {
    /// VERSION (negotiation).
    pub const VERSION: u8 = 0x80;
    /// AREA_SHARE: the driver shared memory with FFA_MEM_SHARE/LEND.
    pub const AREA_SHARE: u8 = 0x81;
    /// AREA_UNSHARE: the driver wants an area back.
    pub const AREA_UNSHARE: u8 = 0x82;
    /// RESET: tear down all bus state for this driver.
    pub const RESET: u8 = 0x83;
    /// EVENT_POLL: hand over one pending event.
    pub const EVENT_POLL: u8 = 0x84;
    /// EVENT_CONFIGURE: how events reach the driver.
    pub const EVENT_CONFIGURE: u8 = 0x85;
    /// FIFO_CONFIGURE: the shared FIFO region.
    pub const FIFO_CONFIGURE: u8 = 0x86;
    /// ERROR (response only).
    pub const ERROR: u8 = 0x87;
    /// AREA_RELEASE (event, device → driver).
    pub const AREA_RELEASE: u8 = 0xC0;
}

/// Result codes of AREA_SHARE/UNSHARE, RESET, EVENT_CONFIGURE,
/// FIFO_CONFIGURE.
pub mod result {
    /// Done.
    pub const OK: u16 = 0;
    /// Refused.
    pub const ERROR: u16 = 1;
    /// Busy: still in use / already in progress.
    pub const BUSY: u16 = 2;
}

/// VERSION `bus_features` bits (reference §8.3).
pub mod feature {
    /// The device receives direct requests.
    pub const DIRECT_RX: u32 = 1 << 0;
    /// The device sends direct responses.
    pub const DIRECT_TX: u32 = 1 << 1;
    /// Indirect messages in.
    pub const INDIRECT_RX: u32 = 1 << 2;
    /// Indirect messages out.
    pub const INDIRECT_TX: u32 = 1 << 3;
    /// Notifications in.
    pub const NOTIF_RX: u32 = 1 << 4;
    /// Notifications out.
    pub const NOTIF_TX: u32 = 1 << 5;
    /// The FIFO.
    pub const FIFO: u32 = 1 << 6;
}

/// `event_method` of EVENT_CONFIGURE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventMethod {
    /// The driver polls with EVENT_POLL.
    Poll,
    /// An FF-A notification rings, the driver drains with EVENT_POLL.
    Notification,
    /// Events travel as indirect messages.
    Indirect,
    /// Events go to the FIFO's device→driver ring.
    Fifo,
}

impl EventMethod {
    fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Poll,
            1 => Self::Notification,
            2 => Self::Indirect,
            3 => Self::Fifo,
            _ => return None,
        })
    }
}

/// The bus generation of a partition's peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfaProfile {
    /// DEN0153 ALP2 / spec v2 (the default).
    V2,
    /// The LKML RFC FF-A bus (Linux RFC kernels).
    Rfc,
}

impl FfaProfile {
    /// The wire profile of its frames.
    pub fn wire(self) -> Profile {
        match self {
            Self::V2 => Profile::V2,
            Self::Rfc => Profile::Rfc2,
        }
    }

    /// The largest frame on this bus: the register window is 112 bytes;
    /// the 2026 Linux binding caps frames at 104, OP-TEE at 96 (reference
    /// §8.3: 96 unless both peers allow 104); the RFC bus uses 44.
    pub fn max_msg_size(self) -> usize {
        match self {
            Self::V2 => 96,
            Self::Rfc => 44,
        }
    }

    /// Shift of the area id in a bus address.
    pub fn area_shift(self) -> u32 {
        match self {
            Self::V2 => 48,
            Self::Rfc => 56,
        }
    }
}

/// VERSION values of the RFC bus.
pub mod rfc {
    /// `VIRTIO_MSG_FFA_BUS_VERSION_1_0`.
    pub const BUS_VERSION: u32 = 1;
    /// `VIRTIO_MSG_REVISION_1`.
    pub const REVISION: u32 = 1;
    /// `VIRTIO_MSG_FEATURES`.
    pub const FEATURES: u32 = 0;
}

/// VERSION values of the v2 bus: bus version 1.0 (`major << 16 | minor`),
/// transport revision 1.
pub mod v2 {
    /// Bus version 1.0.
    pub const BUS_VERSION: u32 = 0x0001_0000;
    /// Transport revision.
    pub const TRANSPORT_REVISION: u32 = 1;
    /// Lowest FF-A version a peer may report (§8.1).
    pub const MIN_FFA_VERSION: u32 = 0x0001_0002;
}

/// A bus request the FF-A bus answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// RFC VERSION (one exchange).
    VersionRfc {
        /// `driver_version`.
        driver_version: u32,
        /// `vmsg_revision`.
        revision: u32,
        /// `vmsg_features`.
        vmsg_features: u32,
        /// `features`: the driver's bus feature bits.
        features: u32,
        /// `area_num`.
        area_num: u16,
    },
    /// v2 VERSION (probe or echo).
    Version {
        /// `bus_version` (0 in the probe).
        bus_version: u32,
        /// `transport_revision`.
        transport_revision: u32,
        /// The driver's FF-A version.
        ffa_version: u32,
    },
    /// AREA_SHARE.
    AreaShare {
        /// Area id chosen by the driver.
        area_id: u16,
        /// FF-A memory handle.
        mem_handle: u64,
        /// FF-A memory tag.
        mem_tag: u64,
        /// 4 KiB pages.
        page_count: u32,
        /// `sharing_attrs` (reference §8.6).
        attrs: u32,
    },
    /// AREA_UNSHARE.
    AreaUnshare {
        /// The area.
        area_id: u16,
    },
    /// RESET.
    Reset,
    /// EVENT_POLL.
    EventPoll,
    /// EVENT_CONFIGURE.
    EventConfigure {
        /// How events reach the driver (`None`: an undefined value).
        method: Option<EventMethod>,
        /// The driver's notification id (method 1).
        notif_id: u16,
    },
    /// FIFO_CONFIGURE.
    FifoConfigure {
        /// FF-A handle of the FIFO region.
        mem_handle: u64,
        /// Its size in 4 KiB pages.
        page_count: u16,
        /// The driver's doorbell.
        driver_notif_id: u16,
    },
}

/// Why a bus request could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ParseError {
    /// A msg_id this bus does not define (or one only a device sends).
    #[error("unknown FF-A bus message {0:#04x}")]
    Unknown(u8),
    /// The payload is not the message's size.
    #[error("FF-A bus message {msg_id:#04x}: payload of {got} bytes, expected {want}")]
    Size {
        /// The message.
        msg_id: u8,
        /// Bytes received.
        got: usize,
        /// Bytes its layout has.
        want: usize,
    },
}

fn le16(p: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([p[at], p[at + 1]])
}
fn le32(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}
fn le64(p: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parse the payload of bus request `msg_id` under `profile`. RFC2 frames
/// arrive padded to 44 bytes and their payload trimmed to `msg_size` by the
/// codec; RFC payloads are checked against their size too.
pub fn parse(profile: FfaProfile, msg_id: u8, p: &[u8]) -> Result<Request, ParseError> {
    let want = match (profile, msg_id) {
        (FfaProfile::Rfc, id::VERSION) => 18,
        (FfaProfile::V2, id::VERSION) => 12,
        (_, id::AREA_SHARE) => 26,
        (_, id::AREA_UNSHARE) => 2,
        (_, id::RESET | id::EVENT_POLL) => 0,
        (FfaProfile::V2, id::EVENT_CONFIGURE) => 4,
        (FfaProfile::V2, id::FIFO_CONFIGURE) => 12,
        (_, other) => return Err(ParseError::Unknown(other)),
    };
    if p.len() != want {
        return Err(ParseError::Size {
            msg_id,
            got: p.len(),
            want,
        });
    }
    Ok(match (profile, msg_id) {
        (FfaProfile::Rfc, id::VERSION) => Request::VersionRfc {
            driver_version: le32(p, 0),
            revision: le32(p, 4),
            vmsg_features: le32(p, 8),
            features: le32(p, 12),
            area_num: le16(p, 16),
        },
        (FfaProfile::V2, id::VERSION) => Request::Version {
            bus_version: le32(p, 0),
            transport_revision: le32(p, 4),
            ffa_version: le32(p, 8),
        },
        (_, id::AREA_SHARE) => Request::AreaShare {
            area_id: le16(p, 0),
            mem_handle: le64(p, 2),
            mem_tag: le64(p, 10),
            page_count: le32(p, 18),
            attrs: le32(p, 22),
        },
        (_, id::AREA_UNSHARE) => Request::AreaUnshare {
            area_id: le16(p, 0),
        },
        (_, id::RESET) => Request::Reset,
        (_, id::EVENT_POLL) => Request::EventPoll,
        (_, id::EVENT_CONFIGURE) => Request::EventConfigure {
            method: EventMethod::from_wire(p[0]),
            notif_id: le16(p, 2),
        },
        _ => Request::FifoConfigure {
            mem_handle: le64(p, 0),
            page_count: le16(p, 8),
            driver_notif_id: le16(p, 10),
        },
    })
}

/// A response payload, at most 22 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    bytes: [u8; 22],
    len: usize,
}

impl Payload {
    fn put(mut self, v: &[u8]) -> Self {
        self.bytes[self.len..self.len + v.len()].copy_from_slice(v);
        self.len += v.len();
        self
    }
    fn u16(self, v: u16) -> Self {
        self.put(&v.to_le_bytes())
    }
    fn u32(self, v: u32) -> Self {
        self.put(&v.to_le_bytes())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The RFC VERSION response.
pub fn version_rfc_response(features: u32, area_num: u16) -> Payload {
    Payload::default()
        .u32(rfc::BUS_VERSION)
        .u32(rfc::REVISION)
        .u32(rfc::FEATURES)
        .u32(features)
        .u16(area_num)
}

/// The v2 VERSION response.
pub fn version_response(
    bus_version: u32,
    transport_revision: u32,
    ffa_version: u32,
    bus_features: u32,
    max_areas: u16,
) -> Payload {
    Payload::default()
        .u32(bus_version)
        .u32(transport_revision)
        .u32(ffa_version)
        .u32(0)
        .u32(bus_features)
        .u16(max_areas)
}

/// `{area_id, result}` (AREA_SHARE and AREA_UNSHARE responses).
pub fn area_response(area_id: u16, result: u16) -> Payload {
    Payload::default().u16(area_id).u16(result)
}

/// `{result}` (RESET, EVENT_CONFIGURE).
pub fn result_response(result: u16) -> Payload {
    Payload::default().u16(result)
}

/// `{result, device_notif_id}` (FIFO_CONFIGURE).
pub fn fifo_response(result: u16, device_notif_id: u16) -> Payload {
    Payload::default().u16(result).u16(device_notif_id)
}

/// `{original_msg_id}` (ERROR).
pub fn error_response(original_msg_id: u8) -> Payload {
    Payload::default().u16(u16::from(original_msg_id))
}

/// `{area_id}` (AREA_RELEASE event).
pub fn area_release(area_id: u16) -> Payload {
    Payload::default().u16(area_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_exactly_per_profile() {
        assert!(matches!(
            parse(FfaProfile::V2, id::VERSION, &[0; 18]),
            Err(ParseError::Size { want: 12, .. })
        ));
        assert!(matches!(
            parse(FfaProfile::Rfc, id::VERSION, &[0; 12]),
            Err(ParseError::Size { want: 18, .. })
        ));
        assert!(parse(FfaProfile::V2, id::RESET, &[0]).is_err());
        assert_eq!(
            parse(FfaProfile::V2, id::AREA_RELEASE, &[0; 2]),
            Err(ParseError::Unknown(id::AREA_RELEASE))
        );
        assert_eq!(
            parse(FfaProfile::Rfc, id::EVENT_CONFIGURE, &[0; 4]),
            Err(ParseError::Unknown(id::EVENT_CONFIGURE))
        );
    }

    #[test]
    fn area_share_has_unaligned_fields() {
        // Reference §8.4: area_id @0, mem_handle @2, mem_tag @10,
        // page_count @18, sharing_attrs @22.
        let mut p = [0u8; 26];
        p[0..2].copy_from_slice(&7u16.to_le_bytes());
        p[2..10].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        p[10..18].copy_from_slice(&9u64.to_le_bytes());
        p[18..22].copy_from_slice(&16u32.to_le_bytes());
        p[22..26].copy_from_slice(&0x6F4u32.to_le_bytes());
        assert_eq!(
            parse(FfaProfile::V2, id::AREA_SHARE, &p),
            Ok(Request::AreaShare {
                area_id: 7,
                mem_handle: 0x1122_3344_5566_7788,
                mem_tag: 9,
                page_count: 16,
                attrs: 0x6F4
            })
        );
    }

    #[test]
    fn version_responses_have_the_reference_layouts() {
        let r = version_response(v2::BUS_VERSION, 1, 0x10002, feature::DIRECT_RX, 0xFF);
        assert_eq!(r.as_slice().len(), 22);
        assert_eq!(&r.as_slice()[0..4], &0x0001_0000u32.to_le_bytes());
        assert_eq!(&r.as_slice()[12..16], &[0; 4], "feature_bits");
        assert_eq!(&r.as_slice()[20..22], &0xFFu16.to_le_bytes());
        let r = version_rfc_response(0x3, 0xFF);
        assert_eq!(
            r.as_slice(),
            &[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0xFF, 0]
        );
    }
}
