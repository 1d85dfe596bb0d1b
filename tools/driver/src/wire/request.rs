//! Driver-to-device requests ([`Request`]): the transport requests
//! GET_DEVICE_INFO … GET_SHM (§3.2–§3.12, [`SetVqueue`] for §3.10) and the
//! bus requests GET_DEVICES and PING (§4.1, §4.2).

use super::codec::{Rd, Wr, decode_features_body, features_body};
use super::consts::{Namespace, bus_msg, message_name, msg};
use super::error::WireError;
use super::header::{Header, build_frame_for};
use super::profile::Profile;

/// SET_VQUEUE request body (§3.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetVqueue {
    /// Queue index.
    pub index: u32,
    /// `flags` (see [`vq_flags`](super::vq_flags)).
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
