//! One-way messages ([`Event`]): EVENT_CONFIG ([`EventConfig`], §3.13),
//! EVENT_AVAIL, EVENT_USED (§3.14, §3.15) and the bus's EVENT_DEVICE (§4.3).

use super::codec::{Rd, Wr};
use super::consts::{Namespace, bus_msg, id_bits, message_name, msg, ty};
use super::error::WireError;
use super::header::{Header, build_frame_for};
use super::profile::Profile;

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
        /// New bus state (see [`device_bus_state`](super::device_bus_state)).
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
