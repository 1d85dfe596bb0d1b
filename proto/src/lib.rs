#![no_std]
#![warn(missing_docs)]
//! virtio-msg wire codec: headers, transport and bus messages, wire profiles.
//!
//! The crate turns frames received from a virtio-msg bus into typed
//! [`Message`]s and back, for one bus instance at a time ([`Codec`]: a wire
//! [`Profile`] plus that bus's maximum message size). It is `no_std`, does not
//! allocate, never panics on any input and never reads past the frame it is
//! given, because it sits directly on guest-controlled data.
//!
//! Layouts follow the virtio-msg transport spec v2 (the default profile) and
//! the two older wire generations still spoken by deployed peers
//! ([`Profile::V1`], [`Profile::Rfc2`]); see `docs/wire-profiles.md`.
//! All multi-byte fields are little-endian, structures are packed.

mod body;
mod codec;
mod decode;
mod encode;
mod header;
mod le32s;
mod profile;
mod wire;

pub use body::{Body, DeviceInfo, Message, SetVqueue, VqueueInfo};
pub use codec::{Codec, CodecError};
pub use decode::DecodeError;
pub use encode::EncodeError;
pub use header::{Header, peek_header};
pub use le32s::{Le32Iter, Le32s};
pub use profile::Profile;

/// Length of the v2 (and v1) message header: type, msg_id, dev_num, token,
/// msg_size. Payload offsets in the spec are relative to its end.
pub const HEADER_LEN: usize = 8;

/// Length of the RFC2 header (no token), used by [`Profile::Rfc2`].
pub const RFC2_HEADER_LEN: usize = 6;

/// Smallest maximum message size a v2 bus may advertise: the largest
/// fixed-size v2 message (GET_DEVICE_INFO response, 8 + 44) must fit.
pub const MIN_MAX_MSG_SIZE: usize = 52;

/// Smallest maximum message size accepted for [`Profile::V1`]: the v1 text
/// says 44, but its own GET/SET_VQUEUE messages are 48 bytes long.
pub const V1_MIN_MAX_MSG_SIZE: usize = 48;

/// Smallest (and, for every known peer, the only) maximum message size of
/// [`Profile::Rfc2`]: the Linux RFC uses fixed 44-byte frames.
pub const RFC2_MIN_MAX_MSG_SIZE: usize = 44;

/// Maximum message size a bus SHOULD NOT exceed (8-byte header + 256).
pub const RECOMMENDED_MAX_MSG_SIZE: usize = 264;

/// Upper bound of any maximum message size: `msg_size` is a le16.
pub const MAX_MSG_SIZE_LIMIT: usize = 65535;

/// Bits of the header `type` byte. Bits 2–7 are reserved: sent as 0,
/// ignored on receive.
pub mod msg_type {
    /// bit0: the message is a response (clear for requests and events).
    pub const RESPONSE: u8 = 0x01;
    /// bit1: the message is in the bus namespace (clear for transport).
    pub const BUS: u8 = 0x02;
}

/// Bits of the header `msg_id` byte shared by both namespaces.
pub mod msg_id_bits {
    /// bit6: one-way event (never sent as a response).
    pub const EVENT: u8 = 0x40;
    /// bit7: implementation- / bus-specific message.
    pub const IMPLEMENTATION: u8 = 0x80;
}

/// Transport message IDs (namespace `type.bit1 = 0`).
pub mod transport_id {
    /// Device identity, feature-block count, config size, queue count.
    pub const GET_DEVICE_INFO: u8 = 0x02;
    /// Read device-offered feature blocks.
    pub const GET_DEVICE_FEATURES: u8 = 0x03;
    /// Write driver-selected feature blocks.
    pub const SET_DRIVER_FEATURES: u8 = 0x04;
    /// Read a range of device config space.
    pub const GET_CONFIG: u8 = 0x05;
    /// Write a range of device config space.
    pub const SET_CONFIG: u8 = 0x06;
    /// Read the virtio device status.
    pub const GET_DEVICE_STATUS: u8 = 0x07;
    /// Write the virtio device status (0 = reset).
    pub const SET_DEVICE_STATUS: u8 = 0x08;
    /// Read one virtqueue's configuration.
    pub const GET_VQUEUE: u8 = 0x09;
    /// Configure (and in v2 optionally enable) one virtqueue.
    pub const SET_VQUEUE: u8 = 0x0A;
    /// Reset one virtqueue (VIRTIO_F_RING_RESET).
    pub const RESET_VQUEUE: u8 = 0x0B;
    /// Query a device shared-memory region.
    pub const GET_SHM: u8 = 0x0C;
    /// Device → driver: config and/or status changed.
    pub const EVENT_CONFIG: u8 = 0x40;
    /// Driver → device: buffers available on a queue.
    pub const EVENT_AVAIL: u8 = 0x41;
    /// Device → driver: buffers used on a queue.
    pub const EVENT_USED: u8 = 0x42;
}

/// Bus message IDs (namespace `type.bit1 = 1`).
pub mod bus_id {
    /// Enumerate device numbers present on the bus (bitmap window).
    pub const GET_DEVICES: u8 = 0x02;
    /// Liveness check, data echoed.
    pub const PING: u8 = 0x03;
    /// Device-side bus → driver-side bus: a device was added or removed.
    pub const EVENT_DEVICE: u8 = 0x40;
}

/// Virtio device status bits (GET/SET_DEVICE_STATUS, EVENT_CONFIG).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete (cleared by the device on refusal).
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// SET_VQUEUE `flags` (v2) and GET_VQUEUE `flags` bits.
pub mod vq_flags {
    /// SET_VQUEUE bits 1:0: the state operation.
    pub const STATE_MASK: u32 = 0x3;
    /// State op 0: keep the queue disabled.
    pub const STATE_DISABLED: u32 = 0;
    /// State op 1: enable the queue.
    pub const STATE_ENABLE: u32 = 1;
    /// State op 2: keep the current state.
    pub const STATE_KEEP: u32 = 2;
    /// Keep the current queue size.
    pub const SIZE_IGNORE: u32 = 1 << 2;
    /// Keep the current descriptor area address.
    pub const DESC_ADDR_IGNORE: u32 = 1 << 3;
    /// Keep the current driver (avail) area address.
    pub const DRIVER_ADDR_IGNORE: u32 = 1 << 4;
    /// Keep the current device (used) area address.
    pub const DEVICE_ADDR_IGNORE: u32 = 1 << 5;
    /// SET_VQUEUE bits 31:6: reserved, must be 0.
    pub const RESERVED_MASK: u32 = !0x3f;
    /// GET_VQUEUE response `flags` bit0: the queue is enabled.
    pub const ENABLED: u32 = 1;
}

/// Transport feature bit 0 (bus-instance property, v2): strict config
/// generation checking on SET_CONFIG.
pub const TRANSPORT_F_STRICT_CONFIG_GENERATION: u32 = 1;

/// EVENT_DEVICE `state` values.
pub mod device_bus_state {
    /// The device can process transport messages (v1 name: READY).
    pub const ADDED: u16 = 1;
    /// The device is gone.
    pub const REMOVED: u16 = 2;
}
