//! Entropy from the CPU: `RNDR` (FEAT_RNG), the architectural random number
//! generator. The partition refuses to offer an rng without it.

use vmsg_device_core::rng::{EntropyError, EntropySource};

/// Reads of RNDR that may fail (the generator is briefly out of entropy)
/// before a request is given up.
const RETRIES: u32 = 16;

/// The CPU's RNDR register.
#[derive(Debug)]
pub struct Rndr(());

impl Rndr {
    /// The source, if this CPU implements FEAT_RNG
    /// (ID_AA64ISAR0_EL1.RNDR ≥ 1).
    pub fn probe() -> Option<Self> {
        let isar0: u64;
        // SAFETY: reading an ID register has no side effect.
        unsafe {
            core::arch::asm!("mrs {}, id_aa64isar0_el1", out(reg) isar0, options(nomem, nostack))
        };
        ((isar0 >> 60) & 0xf >= 1).then_some(Self(()))
    }

    fn word() -> Option<u64> {
        let value: u64;
        let failed: u64;
        // SAFETY: RNDR exists (checked in `probe`); it returns a random
        // value, or sets PSTATE.Z (read back with CSET) when it has none.
        unsafe {
            core::arch::asm!(
                "mrs {v}, s3_3_c2_c4_0",
                "cset {f}, eq",
                v = out(reg) value,
                f = out(reg) failed,
                options(nomem, nostack),
            );
        }
        (failed == 0).then_some(value)
    }
}

impl EntropySource for Rndr {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        for chunk in buf.chunks_mut(8) {
            let w = (0..RETRIES)
                .find_map(|_| Self::word())
                .ok_or(EntropyError)?;
            chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}
