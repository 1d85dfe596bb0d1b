//! Typed messages.

use crate::{Le32s, bus_id, msg_id_bits, msg_type, transport_id};

/// GET_DEVICE_INFO response contents, in the v2 shape.
///
/// Older profiles map onto it: v1/RFC2 `num_feature_bits` = 32 ×
/// `num_feature_blocks`, no UUID (zero), 16-bit admin fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// Virtio device type (0 = no device).
    pub device_id: u32,
    /// Implementation-defined vendor id.
    pub vendor_id: u32,
    /// RFC 4122 UUID, all-zero = none (v2 only; zero elsewhere).
    pub device_uuid: [u8; 16],
    /// Number of 32-bit device feature blocks.
    pub num_feature_blocks: u32,
    /// Size of the device config space in bytes.
    pub config_size: u32,
    /// Number of virtqueues, admin queues included.
    pub max_virtqueues: u32,
    /// First admin virtqueue index (0 if none).
    pub admin_vq_start: u32,
    /// Number of admin virtqueues.
    pub admin_vq_count: u32,
}

/// GET_VQUEUE response contents, in the v2 shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VqueueInfo {
    /// Queue index (echo).
    pub index: u32,
    /// Maximum queue size; 0 = queue unavailable.
    pub max_size: u32,
    /// Current size; 0 = not configured.
    pub cur_size: u32,
    /// v2: bit0 = enabled ([`crate::vq_flags::ENABLED`]). V1 and RFC2 have
    /// no such word: decoded as 0 and not transmitted.
    pub flags: u32,
    /// Descriptor area bus address.
    pub desc_addr: u64,
    /// Driver (avail) area bus address.
    pub driver_addr: u64,
    /// Device (used) area bus address.
    pub device_addr: u64,
}

/// SET_VQUEUE request contents, in the v2 shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SetVqueue {
    /// Queue index.
    pub index: u32,
    /// v2: state op and ignore bits ([`crate::vq_flags`]). V1/RFC2: the raw
    /// `reserved0`/`unused` word at the same place (0 from conforming
    /// drivers, which expect the queue to go live: apply v1 semantics).
    pub flags: u32,
    /// Queue size in descriptors.
    pub size: u32,
    /// Reserved word (v2 `reserved`, v1 `reserved1`); must be 0. RFC2 has
    /// no such word: decoded as 0 and not transmitted.
    pub reserved: u32,
    /// Descriptor area bus address.
    pub desc_addr: u64,
    /// Driver (avail) area bus address.
    pub driver_addr: u64,
    /// Device (used) area bus address.
    pub device_addr: u64,
}

/// A message payload, by kind. One variant per (namespace, direction, id).
///
/// Variable parts borrow the frame they were decoded from, so decoding does
/// not allocate; on encode, lengths on the wire are derived from the slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    // ---- transport requests (driver -> device)
    /// GET_DEVICE_INFO request.
    GetDeviceInfo,
    /// GET_DEVICE_FEATURES request.
    GetDeviceFeatures {
        /// First block (block n = bits 32n..32n+31).
        block_index: u32,
        /// Number of blocks requested.
        num_blocks: u32,
    },
    /// SET_DRIVER_FEATURES request; `num_blocks` on the wire = `features.len()`.
    SetDriverFeatures {
        /// First block written.
        block_index: u32,
        /// Driver-selected blocks.
        features: Le32s<'a>,
    },
    /// GET_CONFIG request.
    GetConfig {
        /// Config space offset.
        offset: u32,
        /// Number of bytes.
        length: u32,
    },
    /// SET_CONFIG request; `length` on the wire = `data.len()`.
    SetConfig {
        /// Generation the driver last saw (0 in the baseline profile).
        generation: u32,
        /// Config space offset.
        offset: u32,
        /// Bytes to write.
        data: &'a [u8],
    },
    /// GET_DEVICE_STATUS request.
    GetDeviceStatus,
    /// SET_DEVICE_STATUS request.
    SetDeviceStatus {
        /// Desired status (0 = reset).
        status: u32,
    },
    /// GET_VQUEUE request.
    GetVqueue {
        /// Queue index.
        index: u32,
    },
    /// SET_VQUEUE request.
    SetVqueue(SetVqueue),
    /// RESET_VQUEUE request.
    ResetVqueue {
        /// Queue index.
        index: u32,
    },
    /// GET_SHM request.
    GetShm {
        /// Shared memory region id (v1: `index`).
        shmid: u32,
    },

    // ---- transport responses (device -> driver)
    /// GET_DEVICE_INFO response.
    DeviceInfo(DeviceInfo),
    /// GET_DEVICE_FEATURES response; `num_blocks` on the wire = `features.len()`.
    DeviceFeatures {
        /// First block (echo).
        block_index: u32,
        /// Device-offered blocks.
        features: Le32s<'a>,
    },
    /// SET_DRIVER_FEATURES response (empty).
    DriverFeaturesSet,
    /// GET_CONFIG response; `length` on the wire = `data.len()`.
    Config {
        /// Current config generation.
        generation: u32,
        /// Offset (echo).
        offset: u32,
        /// Config bytes.
        data: &'a [u8],
    },
    /// SET_CONFIG response.
    ConfigSet {
        /// Generation after the operation.
        generation: u32,
        /// Offset (echo).
        offset: u32,
        /// Bytes applied: the request length, or 0 if rejected.
        length: u32,
        /// Optional echo of the written bytes: empty or exactly `length` bytes.
        data: &'a [u8],
    },
    /// GET_DEVICE_STATUS response.
    DeviceStatus {
        /// Current status.
        status: u32,
    },
    /// SET_DEVICE_STATUS response.
    DeviceStatusSet {
        /// Status when the response was built.
        status: u32,
    },
    /// GET_VQUEUE response.
    Vqueue(VqueueInfo),
    /// SET_VQUEUE response (empty).
    VqueueSet,
    /// RESET_VQUEUE response (empty).
    VqueueReset,
    /// GET_SHM response. v2: the reserved word is sent as 0 and ignored on
    /// receive; v1/RFC2 carry 32-bit `length` and `address`.
    Shm {
        /// Region id (echo).
        shmid: u32,
        /// Region length; 0 = not supported.
        length: u64,
        /// Region address.
        address: u64,
    },

    // ---- transport events
    /// EVENT_CONFIG (device -> driver).
    EventConfig {
        /// Current device status.
        device_status: u32,
        /// Current config generation.
        generation: u32,
        /// Affected range start (0 with `length` 0: "re-read what you need").
        offset: u32,
        /// Affected range length.
        length: u32,
        /// Optional new contents: empty or exactly `length` bytes.
        data: &'a [u8],
    },
    /// EVENT_AVAIL (driver -> device).
    EventAvail {
        /// Queue index.
        vq_index: u32,
        /// Notification data (bits 30:0 offset, bit 31 wrap) or 0.
        next_offset: u32,
    },
    /// EVENT_USED (device -> driver).
    EventUsed {
        /// Queue index.
        vq_index: u32,
    },

    // ---- bus messages (dev_num must be 0 on the wire; decode reports it as is)
    /// GET_DEVICES request.
    GetDevices {
        /// First device number of the window.
        offset: u16,
        /// Number of device-number slots asked for.
        count: u16,
    },
    /// GET_DEVICES response; `bitmap.len()` must be `(count + 7) / 8`.
    Devices {
        /// Window start (echo).
        offset: u16,
        /// Where to continue; 0 = enumeration finished.
        next_offset: u16,
        /// Slots described by `bitmap`.
        count: u16,
        /// Bit n (LSB first, byte 0 first) = device `offset + n` present.
        bitmap: &'a [u8],
    },
    /// PING request.
    Ping {
        /// Opaque value to echo.
        data: u32,
    },
    /// PING response.
    Pong {
        /// Echoed value.
        data: u32,
    },
    /// EVENT_DEVICE (device-side bus -> driver-side bus).
    EventDevice {
        /// Device number concerned.
        device_number: u16,
        /// [`crate::device_bus_state`] value.
        state: u16,
    },
    /// Bus-specific bus message (msg_id 0x80..=0xFF in the bus namespace), passed raw to the bus layer (FF-A).
    BusSpecific {
        /// 0x80..=0xBF request/response, 0xC0..=0xFF event.
        msg_id: u8,
        /// Response direction (never for events).
        response: bool,
        /// Payload after the header, up to `msg_size`.
        payload: &'a [u8],
    },
}

impl Body<'_> {
    /// The `msg_id` byte of this message.
    pub fn msg_id(&self) -> u8 {
        use transport_id as t;
        match self {
            Body::GetDeviceInfo | Body::DeviceInfo(_) => t::GET_DEVICE_INFO,
            Body::GetDeviceFeatures { .. } | Body::DeviceFeatures { .. } => t::GET_DEVICE_FEATURES,
            Body::SetDriverFeatures { .. } | Body::DriverFeaturesSet => t::SET_DRIVER_FEATURES,
            Body::GetConfig { .. } | Body::Config { .. } => t::GET_CONFIG,
            Body::SetConfig { .. } | Body::ConfigSet { .. } => t::SET_CONFIG,
            Body::GetDeviceStatus | Body::DeviceStatus { .. } => t::GET_DEVICE_STATUS,
            Body::SetDeviceStatus { .. } | Body::DeviceStatusSet { .. } => t::SET_DEVICE_STATUS,
            Body::GetVqueue { .. } | Body::Vqueue(_) => t::GET_VQUEUE,
            Body::SetVqueue(_) | Body::VqueueSet => t::SET_VQUEUE,
            Body::ResetVqueue { .. } | Body::VqueueReset => t::RESET_VQUEUE,
            Body::GetShm { .. } | Body::Shm { .. } => t::GET_SHM,
            Body::EventConfig { .. } => t::EVENT_CONFIG,
            Body::EventAvail { .. } => t::EVENT_AVAIL,
            Body::EventUsed { .. } => t::EVENT_USED,
            Body::GetDevices { .. } | Body::Devices { .. } => bus_id::GET_DEVICES,
            Body::Ping { .. } | Body::Pong { .. } => bus_id::PING,
            Body::EventDevice { .. } => bus_id::EVENT_DEVICE,
            Body::BusSpecific { msg_id, .. } => *msg_id,
        }
    }

    /// True for responses (`type` bit0).
    pub fn is_response(&self) -> bool {
        match self {
            Body::DeviceInfo(_)
            | Body::DeviceFeatures { .. }
            | Body::DriverFeaturesSet
            | Body::Config { .. }
            | Body::ConfigSet { .. }
            | Body::DeviceStatus { .. }
            | Body::DeviceStatusSet { .. }
            | Body::Vqueue(_)
            | Body::VqueueSet
            | Body::VqueueReset
            | Body::Shm { .. }
            | Body::Devices { .. }
            | Body::Pong { .. } => true,
            Body::BusSpecific { response, .. } => *response,
            _ => false,
        }
    }

    /// True for bus messages (`type` bit1).
    pub fn is_bus(&self) -> bool {
        matches!(
            self,
            Body::GetDevices { .. }
                | Body::Devices { .. }
                | Body::Ping { .. }
                | Body::Pong { .. }
                | Body::EventDevice { .. }
                | Body::BusSpecific { .. }
        )
    }

    /// True for one-way events (`msg_id` bit6).
    pub fn is_event(&self) -> bool {
        self.msg_id() & msg_id_bits::EVENT != 0
    }

    /// The `type` byte this message is sent with (reserved bits 0).
    pub fn msg_type(&self) -> u8 {
        let mut t = 0;
        if self.is_response() {
            t |= msg_type::RESPONSE;
        }
        if self.is_bus() {
            t |= msg_type::BUS;
        }
        t
    }

    /// True if the message expects a response (requests, not events or
    /// responses).
    pub fn is_request(&self) -> bool {
        !self.is_response() && !self.is_event()
    }
}

/// A decoded message: header routing fields plus the typed payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Device number (transport) or 0 (bus; FF-A ERROR excepted).
    pub dev_num: u16,
    /// Bus-owned correlation token; always 0 when decoded from RFC2 and not
    /// transmitted there.
    pub token: u16,
    /// The payload.
    pub body: Body<'a>,
}

impl Message<'_> {
    /// A response to `self`: same `dev_num` and `token` (spec v2 §9 item 4).
    pub fn reply<'b>(&self, body: Body<'b>) -> Message<'b> {
        Message {
            dev_num: self.dev_num,
            token: self.token,
            body,
        }
    }
}
