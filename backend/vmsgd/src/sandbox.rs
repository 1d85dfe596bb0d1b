//! Confining the daemon once it is set up: resource limits, the privilege
//! drop (user, group, capabilities, no new privileges) and a seccomp
//! allow-list per process role. `docs/security.md` says what each role may
//! do and why.
//!
//! Order, in every role: open what needs root (sockets, device nodes,
//! images), then [`drop_privileges`], then [`install_filter`] (a filter is
//! installed with `PR_SET_NO_NEW_PRIVS`, which the drop sets). The filter
//! covers every thread (`SECCOMP_FILTER_FLAG_TSYNC`) and every process
//! started afterwards: `vmsgd watch`'s list therefore holds everything the
//! `vmsgd run` processes it starts need as well as its own calls.

use std::collections::BTreeMap;

use caps::{CapSet, Capability};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::Deserialize;
use thiserror::Error;

/// What the system call filter does with a call outside a role's list
/// (`[daemon] seccomp`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Kill the process (the default).
    #[default]
    Kill,
    /// Allow it and have the kernel log it (audit): for finding what a new
    /// setup needs, not for production.
    Log,
    /// No filter.
    Off,
}

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
    /// The configured user or group does not exist.
    #[error("{what} {name:?} is not in {file}")]
    NoSuchId {
        /// "user" or "group".
        what: &'static str,
        /// As configured.
        name: String,
        /// Where it was looked up.
        file: &'static str,
    },
    /// Changing the user, group or capabilities failed.
    #[error("{op}: {source}")]
    Privileges {
        /// The operation.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The capability sets could not be changed.
    #[error("capabilities: {0}")]
    Caps(String),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// What a process is, for the calls it may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `vmsgd --config`: guests on the local bus and the Linux loopback bus,
    /// a thread each; reloads open new images.
    Daemon,
    /// `vmsgd run --domain`: one Xen domain (xenstore, event channels,
    /// grant and foreign mappings).
    Domain,
    /// `vmsgd watch`: starts, signals and reaps `vmsgd run` processes,
    /// which inherit its filter.
    Watch,
}

// ------------------------------------------------------------ rlimits --

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

// --------------------------------------------------------- privileges --

/// A user or group id from a number or a name in `file` (`/etc/passwd`,
/// `/etc/group`): read directly, so that a static binary needs no NSS.
/// Returns (id, the user's primary group for passwd).
fn lookup(spec: &str, file: &'static str, what: &'static str) -> Result<(u32, u32), SandboxError> {
    if let Ok(id) = spec.parse::<u32>() {
        return Ok((id, id));
    }
    let text = std::fs::read_to_string(file).map_err(|source| SandboxError::Privileges {
        op: "reading the user database",
        source,
    })?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            if name != spec {
                return None;
            }
            let _password = f.next()?;
            let id = f.next()?.parse().ok()?;
            let group = f.next().and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, group))
        })
        .ok_or_else(|| SandboxError::NoSuchId {
            what,
            name: spec.to_string(),
            file,
        })
}

/// The uid and gid `user` and `group` name (either may be unset).
pub fn resolve_ids(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), SandboxError> {
    let user = user.map(|u| lookup(u, "/etc/passwd", "user")).transpose()?;
    let gid = match group {
        Some(g) => Some(lookup(g, "/etc/group", "group")?.0),
        None => user.map(|(_, primary)| primary),
    };
    Ok((user.map(|(uid, _)| uid), gid))
}

/// Become `user`/`group` (supplementary groups cleared) if given, keep only
/// the capabilities in `keep` (in every set, the bounding set included) and
/// set `PR_SET_NO_NEW_PRIVS`, so that nothing this process or its children
/// run can gain privileges again.
pub fn drop_privileges(
    user: Option<&str>,
    group: Option<&str>,
    keep: &[Capability],
) -> Result<(), SandboxError> {
    let (uid, gid) = resolve_ids(user, group)?;
    let caps_err = |e: caps::errors::CapsError| SandboxError::Caps(e.to_string());
    let privileged =
        caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(caps_err)?;
    // The bounding set first: dropping from it needs CAP_SETPCAP.
    if privileged {
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(caps_err)?;
            }
        }
    }
    // glibc's wrappers apply these to every thread of the process (the
    // guests' threads already run), unlike the raw system calls.
    let check = |op, rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(SandboxError::Privileges {
                op,
                source: std::io::Error::last_os_error(),
            })
        }
    };
    if uid.is_some() || gid.is_some() {
        // SAFETY: an empty list: the pointer is not read.
        check("setgroups", unsafe { libc::setgroups(0, std::ptr::null()) })?;
    }
    if let Some(gid) = gid {
        // SAFETY: integer arguments only.
        check("setresgid", unsafe { libc::setresgid(gid, gid, gid) })?;
    }
    if let Some(uid) = uid {
        if !keep.is_empty() {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
                return Err(SandboxError::Privileges {
                    op: "PR_SET_KEEPCAPS",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        // SAFETY: integer arguments only.
        check("setresuid", unsafe { libc::setresuid(uid, uid, uid) })?;
    }
    let kept: caps::CapsHashSet = keep.iter().copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(caps_err)?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err)?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err)?;
    let still: caps::CapsHashSet = permitted.intersection(&kept).copied().collect();
    caps::set(None, CapSet::Effective, &still).map_err(caps_err)?;
    caps::set(None, CapSet::Permitted, &still).map_err(caps_err)?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::Privileges {
            op: "PR_SET_NO_NEW_PRIVS",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Confine this process as `role`: hand `sockets` (the guests' sockets,
/// bound as root) to `user`/`group` so that drivers of that user can still
/// connect, drop to them (if set) without capabilities, then install the
/// filter. Returns what was done, for the log.
pub fn confine(
    role: Role,
    user: Option<&str>,
    group: Option<&str>,
    seccomp: SeccompMode,
    sockets: &[std::path::PathBuf],
) -> Result<String, SandboxError> {
    let (uid, gid) = resolve_ids(user, group)?;
    if uid.is_some() || gid.is_some() {
        for path in sockets {
            std::os::unix::fs::chown(path, uid, gid).map_err(|source| {
                SandboxError::Privileges {
                    op: "chown of a guest socket",
                    source,
                }
            })?;
        }
    }
    drop_privileges(user, group, &[])?;
    install_filter(role, seccomp)?;
    Ok(format!(
        "uid {} gid {}, no capabilities, no new privileges, seccomp {}",
        // SAFETY: no arguments; cannot fail.
        unsafe { libc::getuid() },
        // SAFETY: no arguments; cannot fail.
        unsafe { libc::getgid() },
        match seccomp {
            SeccompMode::Kill => "on (kill)",
            SeccompMode::Log => "logging only",
            SeccompMode::Off => "off",
        }
    ))
}

// ------------------------------------------------------------ seccomp --

/// Calls every role makes: memory, files already open or opened again
/// (reloads, images, configuration), sockets of the local family, epoll,
/// eventfds, threads, time, signals, io_uring, entropy.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_close,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_unlinkat,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_connect,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_prlimit64,
    libc::SYS_uname,
];

/// The x86_64 forms of calls aarch64 only has as `*at`/`p*` variants.
#[cfg(target_arch = "x86_64")]
const COMMON_ARCH: &[libc::c_long] = &[
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_unlink,
    libc::SYS_getrlimit,
    libc::SYS_arch_prctl,
];
#[cfg(not(target_arch = "x86_64"))]
const COMMON_ARCH: &[libc::c_long] = &[];

/// What supervising processes adds: starting (`vmsgd run`), signalling and
/// reaping them, SIGCHLD through a signalfd; and what a started `vmsgd run`
/// needs to confine itself further under this filter (reading and clearing
/// capabilities it no longer has, adding its own filter: none of it can
/// gain anything).
const SUPERVISE: &[libc::c_long] = &[
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_seccomp,
    libc::SYS_execve,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_setsid,
    libc::SYS_setpgid,
    libc::SYS_getppid,
    libc::SYS_signalfd4,
    libc::SYS_close_range,
    libc::SYS_chdir,
    libc::SYS_umask,
    libc::SYS_set_tid_address,
];
#[cfg(target_arch = "x86_64")]
const SUPERVISE_ARCH: &[libc::c_long] = &[
    libc::SYS_vfork,
    libc::SYS_fork,
    libc::SYS_dup2,
    libc::SYS_pipe,
];
#[cfg(not(target_arch = "x86_64"))]
const SUPERVISE_ARCH: &[libc::c_long] = &[];

/// The calls `role` may make: (unconditional, with conditions).
fn allow_list(role: Role) -> Vec<libc::c_long> {
    let mut list: Vec<libc::c_long> = COMMON.iter().chain(COMMON_ARCH).copied().collect();
    match role {
        Role::Daemon | Role::Domain => {}
        // `vmsgd run` processes start under this filter.
        Role::Watch => list.extend(SUPERVISE.iter().chain(SUPERVISE_ARCH)),
    }
    list.sort_unstable();
    list.dedup();
    list
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// The BPF program of `role`'s filter.
pub fn filter_program(role: Role, mode: SeccompMode) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allow_list(role)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    // Sockets of the local family only (syslog, xenstored): no network.
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![arg_eq(0, libc::AF_UNIX as u64)?])?],
    );
    // Thread names (std names every thread); under the supervisor also
    // what a started backend's own confinement asks (dropping, never
    // raising, privileges).
    let mut prctl_ops = vec![libc::PR_SET_NAME, libc::PR_GET_NAME];
    if role == Role::Watch {
        prctl_ops.extend([
            libc::PR_SET_NO_NEW_PRIVS,
            libc::PR_GET_NO_NEW_PRIVS,
            libc::PR_CAP_AMBIENT,
            libc::PR_CAPBSET_READ,
            libc::PR_CAPBSET_DROP,
            libc::PR_SET_KEEPCAPS,
        ]);
    }
    let prctl = prctl_ops
        .into_iter()
        .map(|op| rule(vec![arg_eq(0, op as u64)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_prctl, prctl);
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::KillProcess,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

/// Install `role`'s filter on every thread of the process (`mode` says what
/// happens to a call outside it; [`SeccompMode::Off`] installs nothing).
pub fn install_filter(role: Role, mode: SeccompMode) -> Result<(), SandboxError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    let program = filter_program(role, mode)?;
    // The filter needs no privilege once no new ones can be gained.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::Privileges {
            op: "PR_SET_NO_NEW_PRIVS",
            source: std::io::Error::last_os_error(),
        });
    }
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))
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

    #[test]
    fn every_role_has_a_filter_and_watch_covers_domain() {
        for role in [Role::Daemon, Role::Domain, Role::Watch] {
            for mode in [SeccompMode::Kill, SeccompMode::Log] {
                assert!(!filter_program(role, mode).expect("compiles").is_empty());
            }
        }
        let watch = allow_list(Role::Watch);
        assert!(allow_list(Role::Domain).iter().all(|nr| watch.contains(nr)));
        for role in [Role::Daemon, Role::Domain] {
            let list = allow_list(role);
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_setuid,
            ] {
                assert!(!list.contains(&forbidden), "{role:?} allows {forbidden}");
            }
        }
    }

    const CHILD: &str = "VMSGD_SANDBOX_CHILD";

    /// The child of [`a_forbidden_call_kills_the_process`]: filter as the
    /// daemon, then make a call outside its list.
    #[test]
    fn child_makes_a_forbidden_call() {
        let mode = match std::env::var(CHILD).as_deref() {
            Ok("kill") => SeccompMode::Kill,
            Ok("log") => SeccompMode::Log,
            Ok("watch-then-domain") => {
                // `vmsgd watch` confined, then a `vmsgd run` it started
                // confining itself under the inherited filter.
                confine(Role::Watch, None, None, SeccompMode::Kill, &[]).expect("watch");
                confine(Role::Domain, None, None, SeccompMode::Kill, &[]).expect("domain");
                return;
            }
            _ => return,
        };
        install_filter(Role::Daemon, mode).expect("filter");
        // Harmless, and outside every role's list.
        // SAFETY: a query with an integer argument.
        let rc = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
        // Only reached when the filter lets it through (log mode).
        assert!(rc >= 0, "the call itself works");
    }

    fn run_child(mode: &str) -> std::process::ExitStatus {
        std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "sandbox::tests::child_makes_a_forbidden_call",
                "--test-threads=1",
            ])
            .env(CHILD, mode)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("spawn the child")
    }

    /// A call outside the list kills the process (SIGSYS); in log mode it
    /// goes through.
    #[test]
    fn a_forbidden_call_kills_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let killed = run_child("kill");
        assert_eq!(killed.signal(), Some(libc::SIGSYS), "{killed}");
        let logged = run_child("log");
        assert!(logged.success(), "{logged}");
    }

    /// A backend started by the supervisor confines itself under the
    /// supervisor's filter (found on real Xen: it was killed by SIGSYS at
    /// its first capget).
    #[test]
    fn a_backend_confines_itself_under_the_supervisors_filter() {
        let status = run_child("watch-then-domain");
        assert!(status.success(), "{status}");
    }

    #[test]
    fn ids_from_numbers_and_names() {
        assert_eq!(
            resolve_ids(Some("1234"), None).expect("uid"),
            (Some(1234), Some(1234))
        );
        assert_eq!(
            resolve_ids(Some("0"), Some("5")).expect("ids"),
            (Some(0), Some(5))
        );
        assert_eq!(
            resolve_ids(Some("root"), None).expect("root"),
            (Some(0), Some(0))
        );
        assert!(matches!(
            resolve_ids(Some("no-such-user-here"), None),
            Err(SandboxError::NoSuchId { what: "user", .. })
        ));
        assert!(matches!(
            resolve_ids(None, Some("no-such-group-here")),
            Err(SandboxError::NoSuchId { what: "group", .. })
        ));
        assert_eq!(resolve_ids(None, None).expect("none"), (None, None));
    }
}
