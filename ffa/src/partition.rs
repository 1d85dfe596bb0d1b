//! What an FF-A partition hosting a bus does with each message the SPMC
//! hands it: the answer is the partition's next FF-A call (FF-A's
//! run-to-completion model: a request is the return value of the
//! partition's previous FFA_MSG_WAIT or direct response).
//!
//! * DIRECT_REQ2 for the virtio-msg device UUID: the frame in x4…x17 goes
//!   to the bus; the response frame travels back in the DIRECT_RESP2.
//! * DIRECT_REQ2 with the nil UUID: no service — answered at once with the
//!   payload unchanged, the round trip the benchmark measures against.
//! * DIRECT_REQ2 for any other UUID: an all-zero response (the "busy"
//!   sentinel of the v2 binding; nothing else can be said), counted.
//! * Anything else (a v1.0 direct request, a stray message): counted; a
//!   direct request still gets its direct response, so the caller is never
//!   left waiting, then the partition waits again.
//!
//! The secure partition (`ffa/sp`) runs exactly this; the simulated SPMC
//! runs it under FF-A's rules in tests.

use arm_ffa::Interface;
use arm_ffa::Uuid;
use arm_ffa::interface_args::{DirectMsg2Args, DirectMsgArgs, MsgWaitFlags};

use crate::bus::DIRECT_PAYLOAD;

/// The virtio-msg FF-A device role, c66028b5-2498-4aa1-9de7-77da6122abf0.
pub const DEVICE_UUID: Uuid = Uuid::from_bytes([
    0xc6, 0x60, 0x28, 0xb5, 0x24, 0x98, 0x4a, 0xa1, 0x9d, 0xe7, 0x77, 0xda, 0x61, 0x22, 0xab, 0xf0,
]);

/// FFA_MSG_WAIT, SMC32 form (the 64-bit one exists only from FF-A v1.3).
pub const MSG_WAIT: Interface = Interface::MsgWait {
    flags: MsgWaitFlags {
        retain_rx_buffer: false,
    },
    is_32bit: true,
};

/// What the dispatcher counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionCounters {
    /// Frames handed to the bus.
    pub frames: u64,
    /// Nil-UUID round trips.
    pub echoes: u64,
    /// DIRECT_REQ2 for a service this partition does not have.
    pub unknown_service: u64,
    /// Other messages (v1.0 direct requests, strays).
    pub unexpected: u64,
}

/// The frame carried in x4…x17 (little-endian register packing, §8.3).
pub fn frame_bytes(args: &DirectMsg2Args) -> [u8; DIRECT_PAYLOAD] {
    let mut out = [0u8; DIRECT_PAYLOAD];
    for (chunk, reg) in out.chunks_exact_mut(8).zip(args.0.iter()) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    out
}

/// A frame packed into x4…x17.
pub fn frame_args(frame: &[u8; DIRECT_PAYLOAD]) -> DirectMsg2Args {
    let mut regs = [0u64; 14];
    for (reg, chunk) in regs.iter_mut().zip(frame.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *reg = u64::from_le_bytes(b);
    }
    DirectMsg2Args(regs)
}

/// Hands one frame from `sender` to the bus: `(sender, frame, response)`.
pub type FrameHandler<'a> = dyn FnMut(u16, &[u8], &mut [u8]) + 'a;

/// The partition's next call after `incoming`. `bus` handles one frame
/// from `sender` (`handle(sender, frame, response)`), however the caller
/// reaches its bus (the partition locks it; tests own it).
pub fn answer(
    incoming: &Interface,
    counters: &mut PartitionCounters,
    bus: &mut FrameHandler<'_>,
) -> Interface {
    match *incoming {
        Interface::MsgSendDirectReq2 {
            src_id,
            dst_id,
            uuid,
            ref args,
        } => {
            let args = if uuid.is_nil() {
                counters.echoes += 1;
                *args
            } else if uuid == DEVICE_UUID {
                counters.frames += 1;
                let mut out = [0u8; DIRECT_PAYLOAD];
                bus(src_id, &frame_bytes(args), &mut out);
                frame_args(&out)
            } else {
                counters.unknown_service += 1;
                DirectMsg2Args([0; 14])
            };
            Interface::MsgSendDirectResp2 {
                src_id: dst_id,
                dst_id: src_id,
                args,
            }
        }
        Interface::MsgSendDirectReq { src_id, dst_id, .. } => {
            counters.unexpected += 1;
            Interface::MsgSendDirectResp {
                src_id: dst_id,
                dst_id: src_id,
                args: DirectMsgArgs::Args64([0; 15]),
            }
        }
        _ => {
            counters.unexpected += 1;
            MSG_WAIT
        }
    }
}
