//! Device-to-driver responses ([`Response`]) to every request, transport
//! and bus, with their bodies [`DeviceInfo`] (§3.2) and [`VqueueInfo`]
//! (§3.9).

use super::codec::{Rd, Wr, decode_features_body, features_body};
use super::consts::{Namespace, bus_msg, message_name, msg, ty, vq_flags};
use super::error::WireError;
use super::header::{Header, build_frame_for};
use super::profile::Profile;

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
