//! [`Message`] → frame encoding.

use crate::wire::Writer;
use crate::{Body, Codec, Header, Message, Profile, msg_id_bits};

/// Why a message could not be encoded. These are caller bugs or
/// capacity limits, never caused by received data alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer is shorter than the frame.
    #[error("output buffer of {have} bytes, frame needs {need}")]
    BufferTooSmall {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The message exceeds the bus maximum message size.
    #[error("message of {size} bytes exceeds the bus maximum {max}")]
    AboveMaxMsgSize {
        /// Message size.
        size: usize,
        /// Bus maximum.
        max: usize,
    },
    /// Fields contradict each other or cannot be represented in the
    /// profile (e.g. a Devices bitmap length vs count, ConfigSet data
    /// neither empty nor `length` bytes, a v1 admin field above 0xFFFF).
    #[error("inconsistent message: {0}")]
    Inconsistent(&'static str),
}

fn len32(n: usize) -> Result<u32, EncodeError> {
    u32::try_from(n).map_err(|_| EncodeError::Inconsistent("length does not fit a u32"))
}

fn narrow32(v: u64, what: &'static str) -> Result<u32, EncodeError> {
    u32::try_from(v).map_err(|_| EncodeError::Inconsistent(what))
}

fn narrow16(v: u32, what: &'static str) -> Result<u16, EncodeError> {
    u16::try_from(v).map_err(|_| EncodeError::Inconsistent(what))
}

impl Codec {
    /// Payload length of `body` in this profile (no validation).
    fn payload_len(&self, body: &Body<'_>) -> usize {
        let profile = self.profile();
        let vq = match profile {
            Profile::V2 | Profile::V1 => 40,
            Profile::Rfc2 => 36,
        };
        match body {
            Body::GetDeviceInfo
            | Body::GetDeviceStatus
            | Body::DriverFeaturesSet
            | Body::VqueueSet
            | Body::VqueueReset => 0,
            Body::SetDeviceStatus { .. }
            | Body::GetVqueue { .. }
            | Body::ResetVqueue { .. }
            | Body::GetShm { .. }
            | Body::DeviceStatus { .. }
            | Body::DeviceStatusSet { .. }
            | Body::EventUsed { .. }
            | Body::GetDevices { .. }
            | Body::Ping { .. }
            | Body::Pong { .. }
            | Body::EventDevice { .. } => 4,
            Body::GetDeviceFeatures { .. } | Body::GetConfig { .. } | Body::EventAvail { .. } => 8,
            Body::SetDriverFeatures { features, .. } | Body::DeviceFeatures { features, .. } => {
                features.as_bytes().len().saturating_add(8)
            }
            Body::SetConfig { data, .. }
            | Body::Config { data, .. }
            | Body::ConfigSet { data, .. } => data.len().saturating_add(12),
            Body::SetVqueue(_) | Body::Vqueue(_) => vq,
            Body::DeviceInfo(_) => match profile {
                Profile::V2 => 44,
                Profile::V1 | Profile::Rfc2 => 24,
            },
            Body::Shm { .. } => match profile {
                Profile::V2 => 24,
                Profile::V1 | Profile::Rfc2 => 12,
            },
            Body::EventConfig { data, .. } => data.len().saturating_add(16),
            Body::Devices { bitmap, .. } => bitmap.len().saturating_add(6),
            Body::BusSpecific { payload, .. } => payload.len(),
        }
    }

    /// Value of the `msg_size` field for `msg`: header + payload.
    pub fn msg_size(&self, msg: &Message<'_>) -> usize {
        self.header_len()
            .saturating_add(self.payload_len(&msg.body))
    }

    /// Bytes [`Codec::encode`] writes for `msg`: its `msg_size`, or for
    /// fixed-frame profiles (RFC2) the bus maximum if that is larger.
    pub fn encoded_len(&self, msg: &Message<'_>) -> usize {
        let size = self.msg_size(msg);
        if self.profile().fixed_frames() {
            size.max(self.max_msg_size())
        } else {
            size
        }
    }

    /// Encode `msg` into `out`, returning the number of bytes written.
    ///
    /// Writes the header (`type` from the body with reserved bits 0, the
    /// body's `msg_id`, `dev_num`, `token` — dropped on RFC2 — and the exact
    /// `msg_size`) and the payload, zeroing reserved fields. Lengths on the
    /// wire (`num_blocks`, `length`, bitmap size) come from the slices.
    /// Fields a profile does not have (v2-only UUID and vqueue flags, RFC2
    /// `SetVqueue::reserved`) are not transmitted.
    ///
    /// [`Profile::Rfc2`] frames are fixed-size: every frame is padded with
    /// zeros to the bus maximum (44 bytes on every known RFC2 bus) while
    /// `msg_size` holds the real length, because the Linux RFC loopback only
    /// accepts writes of at least its 44-byte frame size and the RFC
    /// transport reads replies out of a frame-sized buffer.
    ///
    /// Fails if `out` is too small, the message exceeds the bus maximum, or
    /// its fields are inconsistent; `out` may be partially written then.
    pub fn encode(&self, msg: &Message<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
        let size = self.msg_size(msg);
        if size > self.max_msg_size() {
            return Err(EncodeError::AboveMaxMsgSize {
                size,
                max: self.max_msg_size(),
            });
        }
        let frame_len = self.encoded_len(msg);
        let have = out.len();
        let frame = out
            .get_mut(..frame_len)
            .ok_or(EncodeError::BufferTooSmall {
                need: frame_len,
                have,
            })?;
        let msg_size = u16::try_from(size).map_err(|_| EncodeError::AboveMaxMsgSize {
            size,
            max: self.max_msg_size(),
        })?;
        let body = &msg.body;
        Header {
            msg_type: body.msg_type(),
            msg_id: body.msg_id(),
            dev_num: msg.dev_num,
            token: msg.token,
            msg_size,
        }
        .write(self.profile(), frame)?;
        // frame_len >= size >= header: neither lookup can fail.
        let (payload, padding) = frame
            .get_mut(self.header_len()..)
            .and_then(|rest| rest.split_at_mut_checked(size.saturating_sub(self.header_len())))
            .ok_or(EncodeError::BufferTooSmall {
                need: frame_len,
                have,
            })?;
        self.write_payload(body, &mut Writer::new(payload))?;
        padding.fill(0);
        Ok(frame_len)
    }

    fn write_payload(&self, body: &Body<'_>, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let profile = self.profile();
        match *body {
            Body::GetDeviceInfo
            | Body::GetDeviceStatus
            | Body::DriverFeaturesSet
            | Body::VqueueSet
            | Body::VqueueReset => {}
            Body::GetDeviceFeatures {
                block_index,
                num_blocks,
            } => {
                w.u32(0, block_index)?;
                w.u32(4, num_blocks)?;
            }
            Body::SetDriverFeatures {
                block_index,
                features,
            }
            | Body::DeviceFeatures {
                block_index,
                features,
            } => {
                w.u32(0, block_index)?;
                w.u32(4, len32(features.len())?)?;
                w.bytes(8, features.as_bytes())?;
            }
            Body::GetConfig { offset, length } => {
                w.u32(0, offset)?;
                w.u32(4, length)?;
            }
            Body::SetConfig {
                generation,
                offset,
                data,
            }
            | Body::Config {
                generation,
                offset,
                data,
            } => {
                w.u32(0, generation)?;
                w.u32(4, offset)?;
                w.u32(8, len32(data.len())?)?;
                w.bytes(12, data)?;
            }
            Body::ConfigSet {
                generation,
                offset,
                length,
                data,
            } => {
                if !data.is_empty() && Ok(length) != len32(data.len()) {
                    return Err(EncodeError::Inconsistent(
                        "ConfigSet data must be empty or `length` bytes",
                    ));
                }
                w.u32(0, generation)?;
                w.u32(4, offset)?;
                w.u32(8, length)?;
                w.bytes(12, data)?;
            }
            Body::SetDeviceStatus { status }
            | Body::DeviceStatus { status }
            | Body::DeviceStatusSet { status } => w.u32(0, status)?,
            Body::GetVqueue { index } | Body::ResetVqueue { index } => w.u32(0, index)?,
            Body::GetShm { shmid } => w.u32(0, shmid)?,
            Body::SetVqueue(v) => match profile {
                Profile::V2 | Profile::V1 => {
                    w.u32(0, v.index)?;
                    w.u32(4, v.flags)?;
                    w.u32(8, v.size)?;
                    w.u32(12, v.reserved)?;
                    w.u64(16, v.desc_addr)?;
                    w.u64(24, v.driver_addr)?;
                    w.u64(32, v.device_addr)?;
                }
                Profile::Rfc2 => {
                    w.u32(0, v.index)?;
                    w.u32(4, v.flags)?;
                    w.u32(8, v.size)?;
                    w.u64(12, v.desc_addr)?;
                    w.u64(20, v.driver_addr)?;
                    w.u64(28, v.device_addr)?;
                }
            },
            Body::Vqueue(v) => match profile {
                Profile::V2 | Profile::V1 => {
                    w.u32(0, v.index)?;
                    w.u32(4, v.max_size)?;
                    w.u32(8, v.cur_size)?;
                    w.u32(12, if profile == Profile::V2 { v.flags } else { 0 })?;
                    w.u64(16, v.desc_addr)?;
                    w.u64(24, v.driver_addr)?;
                    w.u64(32, v.device_addr)?;
                }
                Profile::Rfc2 => {
                    w.u32(0, v.index)?;
                    w.u32(4, v.max_size)?;
                    w.u32(8, v.cur_size)?;
                    w.u64(12, v.desc_addr)?;
                    w.u64(20, v.driver_addr)?;
                    w.u64(28, v.device_addr)?;
                }
            },
            Body::DeviceInfo(i) => match profile {
                Profile::V2 => {
                    w.u32(0, i.device_id)?;
                    w.u32(4, i.vendor_id)?;
                    w.bytes(8, &i.device_uuid)?;
                    w.u32(24, i.num_feature_blocks)?;
                    w.u32(28, i.config_size)?;
                    w.u32(32, i.max_virtqueues)?;
                    w.u32(36, i.admin_vq_start)?;
                    w.u32(40, i.admin_vq_count)?;
                }
                Profile::V1 | Profile::Rfc2 => {
                    let bits =
                        i.num_feature_blocks
                            .checked_mul(32)
                            .ok_or(EncodeError::Inconsistent(
                                "num_feature_blocks too large for num_feature_bits",
                            ))?;
                    w.u32(0, i.device_id)?;
                    w.u32(4, i.vendor_id)?;
                    w.u32(8, bits)?;
                    w.u32(12, i.config_size)?;
                    w.u32(16, i.max_virtqueues)?;
                    w.u16(
                        20,
                        narrow16(i.admin_vq_start, "admin_vq_start above 0xFFFF")?,
                    )?;
                    w.u16(
                        22,
                        narrow16(i.admin_vq_count, "admin_vq_count above 0xFFFF")?,
                    )?;
                }
            },
            Body::Shm {
                shmid,
                length,
                address,
            } => match profile {
                Profile::V2 => {
                    w.u32(0, shmid)?;
                    w.u32(4, 0)?;
                    w.u64(8, length)?;
                    w.u64(16, address)?;
                }
                Profile::V1 | Profile::Rfc2 => {
                    w.u32(0, shmid)?;
                    w.u32(4, narrow32(length, "shm length above u32")?)?;
                    w.u32(8, narrow32(address, "shm address above u32")?)?;
                }
            },
            Body::EventConfig {
                device_status,
                generation,
                offset,
                length,
                data,
            } => {
                if !data.is_empty() && Ok(length) != len32(data.len()) {
                    return Err(EncodeError::Inconsistent(
                        "EventConfig data must be empty or `length` bytes",
                    ));
                }
                w.u32(0, device_status)?;
                w.u32(4, generation)?;
                w.u32(8, offset)?;
                w.u32(12, length)?;
                w.bytes(16, data)?;
            }
            Body::EventAvail {
                vq_index,
                next_offset,
            } => {
                w.u32(0, vq_index)?;
                w.u32(4, next_offset)?;
            }
            Body::EventUsed { vq_index } => w.u32(0, vq_index)?,
            Body::GetDevices { offset, count } => {
                w.u16(0, offset)?;
                w.u16(2, count)?;
            }
            Body::Devices {
                offset,
                next_offset,
                count,
                bitmap,
            } => {
                if bitmap.len() != usize::from(count).div_ceil(8) {
                    return Err(EncodeError::Inconsistent(
                        "Devices bitmap must be (count + 7) / 8 bytes",
                    ));
                }
                w.u16(0, offset)?;
                match profile {
                    Profile::V2 => {
                        w.u16(2, next_offset)?;
                        w.u16(4, count)?;
                    }
                    Profile::V1 | Profile::Rfc2 => {
                        w.u16(2, count)?;
                        w.u16(4, next_offset)?;
                    }
                }
                w.bytes(6, bitmap)?;
            }
            Body::Ping { data } | Body::Pong { data } => w.u32(0, data)?,
            Body::EventDevice {
                device_number,
                state,
            } => {
                w.u16(0, device_number)?;
                w.u16(2, state)?;
            }
            Body::BusSpecific {
                msg_id,
                response,
                payload,
            } => {
                if msg_id & msg_id_bits::IMPLEMENTATION == 0 {
                    return Err(EncodeError::Inconsistent(
                        "BusSpecific msg_id must be in 0x80..=0xFF",
                    ));
                }
                if response && msg_id & msg_id_bits::EVENT != 0 {
                    return Err(EncodeError::Inconsistent(
                        "bus-specific event (0xC0..=0xFF) cannot be a response",
                    ));
                }
                w.bytes(0, payload)?;
            }
        }
        Ok(())
    }
}
