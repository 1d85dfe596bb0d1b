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
//!
//! Where each part lives:
//!
//! | File | What |
//! |---|---|
//! | `profile.rs` | [`Profile`]: the wire generations and what differs between them |
//! | `header.rs` | [`Header`], splitting, building and padding frames |
//! | `consts.rs` | sizes, header bits, message ids ([`msg`], [`bus_msg`]), status, feature and flag values, [`Namespace`], [`message_name`] |
//! | `request.rs` | every request, transport and bus ([`Request`], [`SetVqueue`]) |
//! | `response.rs` | every response ([`Response`], [`DeviceInfo`], [`VqueueInfo`]) |
//! | `check.rs` | validating a response against its request ([`check_response`], [`check_echo`]) |
//! | `event.rs` | EVENT_CONFIG, EVENT_AVAIL, EVENT_USED, EVENT_DEVICE ([`Event`]) |
//! | `raw.rs` | [`RawFrame`] (malformed frames for the suite), [`hex`] |
//! | `error.rs`, `codec.rs` | [`WireError`]; the payload reader and writer |

mod check;
mod codec;
mod consts;
mod error;
mod event;
mod header;
mod profile;
mod raw;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use check::{check_echo, check_echo_for, check_response, check_response_for};
pub use consts::{
    HEADER_SIZE, MAX_MAX_MSG_SIZE, MIN_MAX_MSG_SIZE, Namespace, RECOMMENDED_MAX_MSG_SIZE,
    RFC2_HEADER_SIZE, bus_msg, device_bus_state, feature, id_bits, message_name, msg, status,
    transport_feature, ty, vq_flags,
};
pub use error::WireError;
pub use event::{Event, EventConfig};
pub use header::{Header, build_frame, build_frame_for, pad_frame, split_frame, split_frame_for};
pub use profile::Profile;
pub use raw::{RawFrame, hex};
pub use request::{Request, SetVqueue};
pub use response::{DeviceInfo, Response, VqueueInfo};
