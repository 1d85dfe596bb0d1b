//! The FF-A calls the client makes (FF-A v1.2, SMC conduit, SMCCC v1.2
//! registers): VERSION, ID_GET, RXTX_MAP, PARTITION_INFO_GET, RX_RELEASE,
//! MSG_SEND_DIRECT_REQ2, MEM_SHARE, MEM_RECLAIM; and PSCI SYSTEM_OFF.

use core::fmt;

const FFA_ERROR: u32 = 0x8400_0060;
const FFA_SUCCESS_32: u32 = 0x8400_0061;
const FFA_SUCCESS_64: u32 = 0xC400_0061;
const FFA_VERSION: u32 = 0x8400_0063;
const FFA_RX_RELEASE: u32 = 0x8400_0065;
const FFA_RXTX_MAP_64: u32 = 0xC400_0066;
const FFA_PARTITION_INFO_GET: u32 = 0x8400_0068;
const FFA_ID_GET: u32 = 0x8400_0069;
const FFA_MEM_SHARE_64: u32 = 0xC400_0073;
const FFA_MEM_RECLAIM: u32 = 0x8400_0077;
const FFA_MSG_SEND_DIRECT_REQ2: u32 = 0xC400_008D;
const FFA_MSG_SEND_DIRECT_RESP2: u32 = 0xC400_008E;
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
/// FF-A v1.2.
const V1_2: u64 = 0x0001_0002;

/// An FF-A call that did not succeed.
#[derive(Clone, Copy, Debug)]
pub enum FfaError {
    /// FFA_ERROR with this status code.
    Status(i32),
    /// An answer of another function than expected.
    Unexpected(u32),
    /// VERSION below 1.2.
    Version(u64),
    /// No partition with the UUID.
    NoPartition,
}

impl fmt::Display for FfaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(s) => write!(f, "FFA_ERROR {s}"),
            Self::Unexpected(fid) => write!(f, "unexpected answer {fid:#x}"),
            Self::Version(v) => write!(f, "FF-A version {v:#x} below 1.2"),
            Self::NoPartition => f.write_str("no partition with that UUID"),
        }
    }
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

static mut TX: Page = Page([0; 4096]);
static mut RX: Page = Page([0; 4096]);

fn smc(fid: u32, args: [u64; 17]) -> [u64; 18] {
    smccc::smc64(fid, args)
}

fn args(list: &[u64]) -> [u64; 17] {
    let mut a = [0u64; 17];
    a[..list.len()].copy_from_slice(list);
    a
}

fn expect_success(r: &[u64; 18]) -> Result<(), FfaError> {
    match r[0] as u32 {
        FFA_SUCCESS_32 | FFA_SUCCESS_64 => Ok(()),
        FFA_ERROR => Err(FfaError::Status(r[2] as i32)),
        other => Err(FfaError::Unexpected(other)),
    }
}

/// A partition found by UUID.
#[derive(Clone, Copy, Debug)]
pub struct Partition {
    /// Its FF-A id.
    pub id: u16,
    /// Its properties word (bit 0 direct request receive, bit 9 DIRECT_REQ2
    /// receive).
    pub properties: u32,
}

/// The client's FF-A state.
#[derive(Debug)]
pub struct Ffa {
    /// The version the SPMC answered.
    pub version: u64,
    /// The client's own endpoint id.
    pub own_id: u16,
}

impl Ffa {
    /// VERSION 1.2, ID_GET, RXTX_MAP.
    pub fn init() -> Result<Self, FfaError> {
        let v = smc(FFA_VERSION, args(&[V1_2]))[0];
        if v >> 31 != 0 || v < V1_2 {
            return Err(FfaError::Version(v));
        }
        let r = smc(FFA_ID_GET, args(&[]));
        expect_success(&r)?;
        let own_id = r[2] as u16;
        let (tx, rx) = (
            core::ptr::addr_of!(TX) as u64,
            core::ptr::addr_of!(RX) as u64,
        );
        expect_success(&smc(FFA_RXTX_MAP_64, args(&[tx, rx, 1])))?;
        Ok(Self { version: v, own_id })
    }

    /// PARTITION_INFO_GET for `uuid`: the first partition's id and
    /// properties (v1.1 descriptors of 24 bytes in the RX buffer).
    pub fn partition(&mut self, uuid: &[u8; 16]) -> Result<Partition, FfaError> {
        let w = |i: usize| {
            u64::from(u32::from_le_bytes([
                uuid[i],
                uuid[i + 1],
                uuid[i + 2],
                uuid[i + 3],
            ]))
        };
        let r = smc(FFA_PARTITION_INFO_GET, args(&[w(0), w(4), w(8), w(12), 0]));
        expect_success(&r)?;
        let count = r[2];
        // SAFETY: the SPMC wrote the descriptors into the RX buffer before
        // answering; it is read here before FFA_RX_RELEASE.
        let rx = unsafe { &(*core::ptr::addr_of!(RX)).0 };
        let p = Partition {
            id: u16::from_le_bytes([rx[0], rx[1]]),
            properties: u32::from_le_bytes([rx[4], rx[5], rx[6], rx[7]]),
        };
        let _ = smc(FFA_RX_RELEASE, args(&[]));
        if count == 0 {
            return Err(FfaError::NoPartition);
        }
        Ok(p)
    }

    /// One DIRECT_REQ2 to `dest` for the service `uuid` with `frame` in
    /// x4…x17; the response frame from the RESP2.
    pub fn direct(
        &mut self,
        dest: u16,
        uuid: &[u8; 16],
        frame: &[u8],
        out: &mut [u8; 112],
    ) -> Result<(), FfaError> {
        let mut a = [0u64; 17];
        a[0] = (u64::from(self.own_id) << 16) | u64::from(dest);
        let mut u = [0u8; 8];
        u.copy_from_slice(&uuid[..8]);
        a[1] = u64::from_le_bytes(u);
        u.copy_from_slice(&uuid[8..]);
        a[2] = u64::from_le_bytes(u);
        let mut regs = [0u8; 112];
        regs[..frame.len()].copy_from_slice(frame);
        for (i, chunk) in regs.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            a[3 + i] = u64::from_le_bytes(b);
        }
        let r = smc(FFA_MSG_SEND_DIRECT_REQ2, a);
        match r[0] as u32 {
            FFA_MSG_SEND_DIRECT_RESP2 => {
                for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
                    chunk.copy_from_slice(&r[4 + i].to_le_bytes());
                }
                Ok(())
            }
            FFA_ERROR => Err(FfaError::Status(r[2] as i32)),
            other => Err(FfaError::Unexpected(other)),
        }
    }

    /// MEM_SHARE of `pages` pages at `pa` with `receiver`, read/write,
    /// normal inner-shareable write-back memory: the handle. The transaction
    /// descriptor (FF-A v1.1 layout) goes in the TX buffer.
    pub fn mem_share(&mut self, receiver: u16, pa: u64, pages: u32) -> Result<u64, FfaError> {
        // SAFETY: only this function writes the TX buffer, between calls.
        let tx = unsafe { &mut (*core::ptr::addr_of_mut!(TX)).0 };
        tx.fill(0);
        let put16 =
            |b: &mut [u8], at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        // Memory transaction descriptor (48 bytes).
        put16(tx, 0, self.own_id);
        // Normal memory (0b10 << 4), write-back (0b11 << 2), inner shareable (0b11).
        put16(tx, 2, 0b10_11_11);
        put32(tx, 4, 0); // flags
        put64(tx, 8, 0); // handle (assigned by the SPMC)
        put64(tx, 16, 0); // tag
        put32(tx, 24, 16); // endpoint memory access descriptor size
        put32(tx, 28, 1); // count
        put32(tx, 32, 48); // offset
        // Endpoint memory access descriptor: receiver, RW, composite at 64.
        put16(tx, 48, receiver);
        tx[50] = 0b10; // data access read/write, instruction access not specified
        put32(tx, 52, 64);
        // Composite memory region descriptor, then one constituent.
        put32(tx, 64, pages);
        put32(tx, 68, 1);
        put64(tx, 80, pa);
        put32(tx, 88, pages);
        let len = 96u64;
        let r = smc(FFA_MEM_SHARE_64, args(&[len, len, 0, 0]));
        expect_success(&r)?;
        Ok(r[2] & 0xffff_ffff | (r[3] << 32))
    }

    /// MEM_RECLAIM of `handle`.
    pub fn mem_reclaim(&mut self, handle: u64) -> Result<(), FfaError> {
        expect_success(&smc(
            FFA_MEM_RECLAIM,
            args(&[handle & 0xffff_ffff, handle >> 32, 0]),
        ))
    }
}

/// The virtual counter and its frequency.
pub fn ticks() -> (u64, u64) {
    let (cnt, frq): (u64, u64);
    // SAFETY: reading the generic timer's counter and frequency registers.
    unsafe {
        core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) cnt, options(nomem, nostack));
        core::arch::asm!("mrs {}, cntfrq_el0", out(reg) frq, options(nomem, nostack));
    }
    (cnt, frq)
}

/// PSCI SYSTEM_OFF: QEMU exits.
pub fn system_off() -> ! {
    let _ = smc(PSCI_SYSTEM_OFF, args(&[]));
    loop {
        core::hint::spin_loop();
    }
}
