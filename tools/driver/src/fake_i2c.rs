//! Test-only virtio-i2c personality of the fake device (`fake.rs`): an
//! adapter with one target (a 256-byte register file at 0x50) answering
//! requests as virtio 1.3 §5.19.6 says, written from the spec for this
//! crate's tests. `I2cQuirks` break single rules so the `i2c.*`
//! conformance cases can be seen to fail.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::fake_blk::Desc;
use crate::i2c::{FLAGS_FAIL_NEXT, FLAGS_M_RD, MSG_ERR, MSG_OK};
use crate::virtq::VIRTQ_DESC_F_WRITE;

/// The one target's address.
const TARGET: u16 = 0x50;

/// Single-rule deviations of the fake adapter.
#[derive(Debug, Clone, Default)]
pub(crate) struct I2cQuirks {
    /// VIRTIO_I2C_F_ZERO_LENGTH_REQUEST is not offered.
    pub no_zero_length_offer: bool,
    /// FEATURES_OK is accepted without VIRTIO_I2C_F_ZERO_LENGTH_REQUEST.
    pub accept_without_zero_length: bool,
    /// Absent addresses answer OK.
    pub absent_ok: bool,
    /// FAIL_NEXT is ignored: the request after a failed one is attempted.
    pub ignore_fail_next: bool,
    /// A failure fails every later request of the pass, in any group.
    pub fail_rest_of_pass: bool,
    /// Used entries are published in reverse order.
    pub reverse_order: bool,
    /// The device writes into write requests' buffers.
    pub scribble_write_buffer: bool,
    /// Successful reads report used len 1.
    pub short_used_len: bool,
    /// Status bytes are never written.
    pub no_status: bool,
}

/// The fake adapter.
#[derive(Debug, Clone)]
pub(crate) struct FakeI2c {
    pub regs: [u8; 256],
    pointer: u8,
    pub quirks: I2cQuirks,
}

impl FakeI2c {
    pub fn new(quirks: I2cQuirks) -> Self {
        FakeI2c {
            regs: [0; 256],
            pointer: 0,
            quirks,
        }
    }

    /// Device-specific feature bits offered (block 0).
    pub fn offered(&self) -> u32 {
        if self.quirks.no_zero_length_offer {
            0
        } else {
            1
        }
    }

    /// Whether FEATURES_OK may be accepted with `negotiated` (block 0).
    pub fn features_ok(&self, negotiated: u32) -> bool {
        negotiated & 1 != 0 || self.quirks.accept_without_zero_length
    }

    /// Execute the chains of one pass in order; returns (head, used len)
    /// in the order to publish them.
    pub fn handle_pass(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        chains: &[(u16, Vec<Desc>)],
    ) -> Vec<(u16, u32)> {
        let mut out = Vec::with_capacity(chains.len());
        // The previous request failed and linked this one (FAIL_NEXT).
        let mut failing = false;
        let mut pass_failed = false;
        for (head, descs) in chains {
            let (status, len, fail_next) = self.request(mem, descs, failing || pass_failed);
            let failed = status != Some(MSG_OK);
            if let Some(at) = status_addr(descs) {
                if !self.quirks.no_status {
                    if let Some(s) = status {
                        mem.write_obj(s, at).expect("status byte");
                    }
                }
            }
            failing = failed && fail_next && !self.quirks.ignore_fail_next;
            pass_failed |= failed && self.quirks.fail_rest_of_pass;
            out.push((*head, len));
        }
        if self.quirks.reverse_order {
            out.reverse();
        }
        out
    }

    /// One request: (status, used len, FAIL_NEXT).
    fn request(
        &mut self,
        mem: &GuestMemoryMmap<()>,
        descs: &[Desc],
        skip: bool,
    ) -> (Option<u8>, u32, bool) {
        let Some(&(_, last_len, last_flags)) = descs.last() else {
            return (None, 0, false);
        };
        if last_flags & VIRTQ_DESC_F_WRITE == 0 || last_len == 0 {
            return (None, 0, false);
        }
        let split = descs
            .iter()
            .position(|d| d.2 & VIRTQ_DESC_F_WRITE != 0)
            .unwrap_or(descs.len());
        let (readable, writable) = descs.split_at(split);
        let mut input = Vec::new();
        for &(a, l, _) in readable {
            let mut v = vec![0u8; l as usize];
            mem.read_slice(&mut v, GuestAddress(a))
                .expect("readable buffer");
            input.extend(v);
        }
        if input.len() < 8 {
            return (Some(MSG_ERR), 1, false);
        }
        let addr = u16::from_le_bytes([input[0], input[1]]);
        let flags = u32::from_le_bytes([input[4], input[5], input[6], input[7]]);
        let fail_next = flags & FLAGS_FAIL_NEXT != 0;
        let read = flags & FLAGS_M_RD != 0;
        let w_total: u64 = writable.iter().map(|d| u64::from(d.1)).sum();
        let out_len = (w_total - 1) as usize;
        if self.quirks.scribble_write_buffer && !read {
            for &(a, l, _) in readable.iter().skip(1) {
                mem.write_slice(&vec![0xAB; l as usize], GuestAddress(a))
                    .expect("scribble");
            }
        }
        if skip || addr & 1 != 0 || addr > 0xff {
            return (Some(MSG_ERR), 1, fail_next);
        }
        let target = addr >> 1;
        if target != TARGET && !self.quirks.absent_ok {
            return (Some(MSG_ERR), 1, fail_next);
        }
        if read {
            let data: Vec<u8> = (0..out_len)
                .map(|_| {
                    let b = self.regs[usize::from(self.pointer)];
                    self.pointer = self.pointer.wrapping_add(1);
                    b
                })
                .collect();
            let mut done = 0usize;
            for &(a, l, _) in writable {
                let n = (l as usize).min(data.len() - done);
                if n == 0 {
                    break;
                }
                mem.write_slice(&data[done..done + n], GuestAddress(a))
                    .expect("writable buffer");
                done += n;
            }
            let len = if self.quirks.short_used_len {
                1
            } else {
                out_len as u32 + 1
            };
            (Some(MSG_OK), len, fail_next)
        } else {
            let payload = &input[8..];
            if let Some((&p, data)) = payload.split_first() {
                self.pointer = p;
                for &b in data {
                    self.regs[usize::from(self.pointer)] = b;
                    self.pointer = self.pointer.wrapping_add(1);
                }
            }
            (Some(MSG_OK), 1, fail_next)
        }
    }
}

/// The status byte: the last byte of a device-writable last descriptor.
fn status_addr(descs: &[Desc]) -> Option<GuestAddress> {
    let &(a, l, f) = descs.last()?;
    (f & VIRTQ_DESC_F_WRITE != 0 && l > 0).then(|| GuestAddress(a + u64::from(l) - 1))
}
