//! The FF-A conduit: every call is an `smc #0` with SMCCC v1.2 register use
//! (x0–x17 in and out), encoded and decoded by the `arm-ffa` crate.

use arm_ffa::{Interface, Version};

/// The FF-A version this partition speaks (DIRECT_REQ2 needs 1.2).
pub const FFA_VERSION: Version = Version(1, 2);

/// Why a call did not return what was expected.
#[derive(Debug)]
pub enum CallError {
    /// The SPMC answered FFA_ERROR.
    Ffa(arm_ffa::FfaError),
    /// The SPMC's answer did not decode.
    Decode(arm_ffa::Error),
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ffa(e) => write!(f, "FFA_ERROR {e:?}"),
            Self::Decode(e) => write!(f, "undecodable answer: {e:?}"),
        }
    }
}

/// Make one FF-A call; the SPMC's answer (which for FFA_MSG_WAIT and the
/// direct responses is the next message for this partition).
pub fn call(request: &Interface) -> Result<Interface, CallError> {
    let mut regs = [0u64; 18];
    request.to_regs(FFA_VERSION, &mut regs);
    let mut args = [0u64; 17];
    args.copy_from_slice(&regs[1..18]);
    #[allow(clippy::cast_possible_truncation)]
    let out = smccc::smc64(regs[0] as u32, args);
    let answer = Interface::from_regs(FFA_VERSION, &out).map_err(CallError::Decode)?;
    match answer {
        Interface::Error { error_code, .. } => Err(CallError::Ffa(error_code)),
        other => Ok(other),
    }
}
