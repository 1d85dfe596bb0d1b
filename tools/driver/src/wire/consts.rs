//! Sizes, header bits, message ids and field values of the wire format (§1,
//! §3.1, §3.7, §3.9, §3.10, §4), the message [`Namespace`] and
//! [`message_name`].

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
    pub(super) fn type_bits(self) -> u8 {
        match self {
            Namespace::Transport => 0,
            Namespace::Bus => ty::BUS,
        }
    }
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
