//! Frame → [`Message`] decoding.

use crate::wire::{le16, le32, le64};
use crate::{
    Body, Codec, DeviceInfo, Header, Le32s, Message, Profile, SetVqueue, VqueueInfo, bus_id,
    msg_id_bits, transport_id,
};

/// Why a frame could not be decoded. Every case means "discard silently"
/// to a transport endpoint (spec v2 §6.3); the variants exist for logging
/// and statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is shorter than the header.
    #[error("frame of {len} bytes is shorter than the header")]
    ShortFrame {
        /// Bytes received.
        len: usize,
    },
    /// `msg_size` is smaller than the header.
    #[error("msg_size {msg_size} is smaller than the header")]
    MsgSizeBelowHeader {
        /// `msg_size` field.
        msg_size: u16,
    },
    /// `msg_size` exceeds the bus maximum.
    #[error("msg_size {msg_size} exceeds the bus maximum {max}")]
    MsgSizeAboveMax {
        /// `msg_size` field.
        msg_size: u16,
        /// Bus maximum.
        max: usize,
    },
    /// `msg_size` exceeds the bytes received.
    #[error("msg_size {msg_size} exceeds the {len} bytes received")]
    Truncated {
        /// `msg_size` field.
        msg_size: u16,
        /// Bytes received.
        len: usize,
    },
    /// No such message in that namespace and direction.
    #[error("unknown {} {} msg_id {msg_id:#04x}", if *bus { "bus" } else { "transport" }, if *response { "response" } else { "request/event" })]
    UnknownMessage {
        /// Bus namespace (`type` bit1).
        bus: bool,
        /// Response direction (`type` bit0).
        response: bool,
        /// `msg_id` field.
        msg_id: u8,
    },
    /// `msg_size` leaves less payload than the message's fixed part.
    #[error("msg_id {msg_id:#04x}: payload of {have} bytes, fixed part needs {need}")]
    PayloadTooShort {
        /// `msg_id` field.
        msg_id: u8,
        /// Fixed payload bytes required (header excluded).
        need: usize,
        /// Payload bytes present (header excluded).
        have: usize,
    },
    /// An event ID (`msg_id` bit6) with the response bit set.
    #[error("event msg_id {msg_id:#04x} sent as a response")]
    EventAsResponse {
        /// `msg_id` field.
        msg_id: u8,
    },
    /// A variable part (features, data, bitmap) does not fit the message.
    #[error("msg_id {msg_id:#04x}: variable part does not fit the message")]
    VariablePartTooLong {
        /// `msg_id` field.
        msg_id: u8,
    },
    /// A field holds a value the profile cannot map (v1/RFC2
    /// `num_feature_bits` not a multiple of 32).
    #[error("msg_id {msg_id:#04x}: invalid {field}")]
    InvalidField {
        /// `msg_id` field.
        msg_id: u8,
        /// Field name.
        field: &'static str,
    },
}

/// The payload of one message, length-checked piecewise.
struct Payload<'a> {
    id: u8,
    /// Payload bytes up to `msg_size`.
    p: &'a [u8],
    /// Bytes where a mandatory variable part may lie: `p`, or for RFC2 the
    /// rest of the fixed-size frame (see [`Codec::decode`]).
    ext: &'a [u8],
}

impl<'a> Payload<'a> {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.p.len() < n {
            Err(DecodeError::PayloadTooShort {
                msg_id: self.id,
                need: n,
                have: self.p.len(),
            })
        } else {
            Ok(())
        }
    }

    fn u16(&self, off: usize) -> u16 {
        le16(self.p, off)
    }

    fn u32(&self, off: usize) -> u32 {
        le32(self.p, off)
    }

    fn u64(&self, off: usize) -> u64 {
        le64(self.p, off)
    }

    fn range(start: usize, len: usize) -> Option<core::ops::Range<usize>> {
        Some(start..start.checked_add(len)?)
    }

    /// A mandatory variable part of `len` bytes at `start`.
    fn var(&self, start: usize, len: usize) -> Result<&'a [u8], DecodeError> {
        Self::range(start, len)
            .and_then(|r| self.p.get(r.clone()).or_else(|| self.ext.get(r)))
            .ok_or(DecodeError::VariablePartTooLong { msg_id: self.id })
    }

    /// A mandatory variable part whose length is a wire u32.
    fn var32(&self, start: usize, len: u32) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len)
            .map_err(|_| DecodeError::VariablePartTooLong { msg_id: self.id })?;
        self.var(start, len)
    }

    /// `n` u32 words at `start`.
    fn words(&self, start: usize, n: u32) -> Result<Le32s<'a>, DecodeError> {
        let len = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .ok_or(DecodeError::VariablePartTooLong { msg_id: self.id })?;
        self.var(start, len).map(Le32s::from_words)
    }

    /// An optional part of `len` bytes at `start`: present only if it fits
    /// inside `msg_size`, else empty.
    fn opt(&self, start: usize, len: u32) -> &'a [u8] {
        usize::try_from(len)
            .ok()
            .and_then(|len| Self::range(start, len))
            .and_then(|r| self.p.get(r))
            .unwrap_or(&[])
    }
}

impl Codec {
    /// Decode one frame as received from the bus.
    ///
    /// Checks, in order (spec v2 §9 items 1–3): the header fits; `msg_size`
    /// ≥ header, ≤ the bus maximum and ≤ the bytes received; then by
    /// namespace (`type` bit1) and direction (bit0) the message is known,
    /// is not an event sent as a response, and `msg_size` covers its fixed
    /// part and variable parts. `type` bits 2–7 are ignored, bytes after
    /// `msg_size` are bus padding, a `msg_size` larger than needed is
    /// accepted (forward compatibility). Optional parts (SET_CONFIG response
    /// echo, EVENT_CONFIG data) are present only when all `length` bytes fit
    /// within `msg_size`, else decoded empty.
    ///
    /// [`Profile::Rfc2`] exception: the Linux RFC driver sets `msg_size` to
    /// header + fixed part only and puts SET_DRIVER_FEATURES features and
    /// SET_CONFIG data after it inside its fixed-size frame, so a mandatory
    /// variable part that does not fit `msg_size` is taken from the rest of
    /// the frame (up to the bus maximum).
    pub fn decode<'a>(&self, frame: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let profile = self.profile();
        let hl = profile.header_len();
        let h = Header::parse(profile, frame)?;
        let size = usize::from(h.msg_size);
        if size < hl {
            return Err(DecodeError::MsgSizeBelowHeader {
                msg_size: h.msg_size,
            });
        }
        if size > self.max_msg_size() {
            return Err(DecodeError::MsgSizeAboveMax {
                msg_size: h.msg_size,
                max: self.max_msg_size(),
            });
        }
        let p = frame.get(hl..size).ok_or(DecodeError::Truncated {
            msg_size: h.msg_size,
            len: frame.len(),
        })?;
        let ext = if profile.fixed_frames() {
            frame
                .get(hl..frame.len().min(self.max_msg_size()))
                .unwrap_or(p)
        } else {
            p
        };
        if h.is_event() && h.is_response() {
            return Err(DecodeError::EventAsResponse { msg_id: h.msg_id });
        }
        let d = Payload {
            id: h.msg_id,
            p,
            ext,
        };
        let body = match (h.is_bus(), h.is_response()) {
            (false, false) => self.transport_request(&d)?,
            (false, true) => self.transport_response(&d)?,
            (true, response) => self.bus(&d, response)?,
        };
        Ok(Message {
            dev_num: h.dev_num,
            token: h.token,
            body,
        })
    }

    fn transport_request<'a>(&self, d: &Payload<'a>) -> Result<Body<'a>, DecodeError> {
        use transport_id as t;
        Ok(match d.id {
            t::GET_DEVICE_INFO => Body::GetDeviceInfo,
            t::GET_DEVICE_FEATURES => {
                d.need(8)?;
                Body::GetDeviceFeatures {
                    block_index: d.u32(0),
                    num_blocks: d.u32(4),
                }
            }
            t::SET_DRIVER_FEATURES => {
                d.need(8)?;
                Body::SetDriverFeatures {
                    block_index: d.u32(0),
                    features: d.words(8, d.u32(4))?,
                }
            }
            t::GET_CONFIG => {
                d.need(8)?;
                Body::GetConfig {
                    offset: d.u32(0),
                    length: d.u32(4),
                }
            }
            t::SET_CONFIG => {
                d.need(12)?;
                Body::SetConfig {
                    generation: d.u32(0),
                    offset: d.u32(4),
                    data: d.var32(12, d.u32(8))?,
                }
            }
            t::GET_DEVICE_STATUS => Body::GetDeviceStatus,
            t::SET_DEVICE_STATUS => {
                d.need(4)?;
                Body::SetDeviceStatus { status: d.u32(0) }
            }
            t::GET_VQUEUE => {
                d.need(4)?;
                Body::GetVqueue { index: d.u32(0) }
            }
            t::SET_VQUEUE => Body::SetVqueue(match self.profile() {
                Profile::V2 | Profile::V1 => {
                    d.need(40)?;
                    SetVqueue {
                        index: d.u32(0),
                        flags: d.u32(4),
                        size: d.u32(8),
                        reserved: d.u32(12),
                        desc_addr: d.u64(16),
                        driver_addr: d.u64(24),
                        device_addr: d.u64(32),
                    }
                }
                Profile::Rfc2 => {
                    d.need(36)?;
                    SetVqueue {
                        index: d.u32(0),
                        flags: d.u32(4),
                        size: d.u32(8),
                        reserved: 0,
                        desc_addr: d.u64(12),
                        driver_addr: d.u64(20),
                        device_addr: d.u64(28),
                    }
                }
            }),
            t::RESET_VQUEUE => {
                d.need(4)?;
                Body::ResetVqueue { index: d.u32(0) }
            }
            t::GET_SHM => {
                d.need(4)?;
                Body::GetShm { shmid: d.u32(0) }
            }
            t::EVENT_CONFIG => {
                d.need(16)?;
                let length = d.u32(12);
                Body::EventConfig {
                    device_status: d.u32(0),
                    generation: d.u32(4),
                    offset: d.u32(8),
                    length,
                    data: d.opt(16, length),
                }
            }
            t::EVENT_AVAIL => {
                d.need(8)?;
                Body::EventAvail {
                    vq_index: d.u32(0),
                    next_offset: d.u32(4),
                }
            }
            t::EVENT_USED => {
                d.need(4)?;
                Body::EventUsed { vq_index: d.u32(0) }
            }
            msg_id => {
                return Err(DecodeError::UnknownMessage {
                    bus: false,
                    response: false,
                    msg_id,
                });
            }
        })
    }

    fn transport_response<'a>(&self, d: &Payload<'a>) -> Result<Body<'a>, DecodeError> {
        use transport_id as t;
        let profile = self.profile();
        Ok(match d.id {
            t::GET_DEVICE_INFO => Body::DeviceInfo(match profile {
                Profile::V2 => {
                    d.need(44)?;
                    DeviceInfo {
                        device_id: d.u32(0),
                        vendor_id: d.u32(4),
                        device_uuid: d
                            .p
                            .get(8..24)
                            .and_then(|u| <[u8; 16]>::try_from(u).ok())
                            .unwrap_or_default(),
                        num_feature_blocks: d.u32(24),
                        config_size: d.u32(28),
                        max_virtqueues: d.u32(32),
                        admin_vq_start: d.u32(36),
                        admin_vq_count: d.u32(40),
                    }
                }
                Profile::V1 | Profile::Rfc2 => {
                    d.need(24)?;
                    let bits = d.u32(8);
                    if bits % 32 != 0 {
                        return Err(DecodeError::InvalidField {
                            msg_id: d.id,
                            field: "num_feature_bits",
                        });
                    }
                    DeviceInfo {
                        device_id: d.u32(0),
                        vendor_id: d.u32(4),
                        device_uuid: [0; 16],
                        num_feature_blocks: bits / 32,
                        config_size: d.u32(12),
                        max_virtqueues: d.u32(16),
                        admin_vq_start: d.u16(20).into(),
                        admin_vq_count: d.u16(22).into(),
                    }
                }
            }),
            t::GET_DEVICE_FEATURES => {
                d.need(8)?;
                Body::DeviceFeatures {
                    block_index: d.u32(0),
                    features: d.words(8, d.u32(4))?,
                }
            }
            t::SET_DRIVER_FEATURES => Body::DriverFeaturesSet,
            t::GET_CONFIG => {
                d.need(12)?;
                Body::Config {
                    generation: d.u32(0),
                    offset: d.u32(4),
                    data: d.var32(12, d.u32(8))?,
                }
            }
            t::SET_CONFIG => {
                d.need(12)?;
                let length = d.u32(8);
                Body::ConfigSet {
                    generation: d.u32(0),
                    offset: d.u32(4),
                    length,
                    data: d.opt(12, length),
                }
            }
            t::GET_DEVICE_STATUS => {
                d.need(4)?;
                Body::DeviceStatus { status: d.u32(0) }
            }
            t::SET_DEVICE_STATUS => {
                d.need(4)?;
                Body::DeviceStatusSet { status: d.u32(0) }
            }
            t::GET_VQUEUE => Body::Vqueue(match profile {
                Profile::V2 | Profile::V1 => {
                    d.need(40)?;
                    VqueueInfo {
                        index: d.u32(0),
                        max_size: d.u32(4),
                        cur_size: d.u32(8),
                        flags: if profile == Profile::V2 { d.u32(12) } else { 0 },
                        desc_addr: d.u64(16),
                        driver_addr: d.u64(24),
                        device_addr: d.u64(32),
                    }
                }
                Profile::Rfc2 => {
                    d.need(36)?;
                    VqueueInfo {
                        index: d.u32(0),
                        max_size: d.u32(4),
                        cur_size: d.u32(8),
                        flags: 0,
                        desc_addr: d.u64(12),
                        driver_addr: d.u64(20),
                        device_addr: d.u64(28),
                    }
                }
            }),
            t::SET_VQUEUE => Body::VqueueSet,
            t::RESET_VQUEUE => Body::VqueueReset,
            t::GET_SHM => match profile {
                Profile::V2 => {
                    d.need(24)?;
                    Body::Shm {
                        shmid: d.u32(0),
                        length: d.u64(8),
                        address: d.u64(16),
                    }
                }
                Profile::V1 | Profile::Rfc2 => {
                    d.need(12)?;
                    Body::Shm {
                        shmid: d.u32(0),
                        length: d.u32(4).into(),
                        address: d.u32(8).into(),
                    }
                }
            },
            msg_id => {
                return Err(DecodeError::UnknownMessage {
                    bus: false,
                    response: true,
                    msg_id,
                });
            }
        })
    }

    fn bus<'a>(&self, d: &Payload<'a>, response: bool) -> Result<Body<'a>, DecodeError> {
        Ok(match (d.id, response) {
            (bus_id::GET_DEVICES, false) => {
                d.need(4)?;
                Body::GetDevices {
                    offset: d.u16(0),
                    count: d.u16(2),
                }
            }
            (bus_id::GET_DEVICES, true) => {
                d.need(6)?;
                let (next_offset, count) = match self.profile() {
                    Profile::V2 => (d.u16(2), d.u16(4)),
                    Profile::V1 | Profile::Rfc2 => (d.u16(4), d.u16(2)),
                };
                Body::Devices {
                    offset: d.u16(0),
                    next_offset,
                    count,
                    bitmap: d.var(6, usize::from(count).div_ceil(8))?,
                }
            }
            (bus_id::PING, false) => {
                d.need(4)?;
                Body::Ping { data: d.u32(0) }
            }
            (bus_id::PING, true) => {
                d.need(4)?;
                Body::Pong { data: d.u32(0) }
            }
            (bus_id::EVENT_DEVICE, false) => {
                d.need(4)?;
                Body::EventDevice {
                    device_number: d.u16(0),
                    state: d.u16(2),
                }
            }
            (msg_id, response) if msg_id & msg_id_bits::IMPLEMENTATION != 0 => Body::BusSpecific {
                msg_id,
                response,
                payload: d.p,
            },
            (msg_id, response) => {
                return Err(DecodeError::UnknownMessage {
                    bus: true,
                    response,
                    msg_id,
                });
            }
        })
    }
}
