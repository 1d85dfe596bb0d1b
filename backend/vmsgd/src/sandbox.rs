//! Process set-up that confines what a guest can make the daemon do:
//! resource limits (and, later in start-up, the seccomp filter and the
//! privilege drop). `docs/security.md` says what each role is allowed and
//! why.

use thiserror::Error;

/// Errors confining the process.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// A resource limit could not be read or set.
    #[error("{op}: {source}")]
    Rlimit {
        /// The operation.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The soft and hard `RLIMIT_NOFILE`.
pub fn fd_limits() -> Result<(u64, u64), SandboxError> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and keeps no reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(SandboxError::Rlimit {
            op: "getrlimit(RLIMIT_NOFILE)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok((l.rlim_cur, l.rlim_max))
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit and return both (as
/// they are now). Every connected local-bus guest holds about a dozen fds
/// and systemd's default soft limit is 1024: at that limit a few guests
/// (or a hostile one passing fds) would lock every other guest out. The
/// hard limit is the administrator's bound (`LimitNOFILE` in the units).
pub fn raise_fd_limit() -> Result<(u64, u64), SandboxError> {
    let (soft, hard) = fd_limits()?;
    if soft < hard {
        let l = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct we pass and keeps no reference.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Err(SandboxError::Rlimit {
                op: "setrlimit(RLIMIT_NOFILE)",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    fd_limits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_soft_equal_to_hard() {
        let (soft, hard) = raise_fd_limit().expect("raise");
        assert_eq!(soft, hard);
        assert_eq!(fd_limits().expect("read"), (hard, hard));
    }
}
