//! Issue 10 (hardening) against the daemon as a real process: the regression
//! tests of the defects a hostile guest found, observed from outside as an
//! operator would (`/proc`, the log, exit status).

mod common;

use std::os::unix::process::CommandExt;

use common::DaemonProcess;

const RNG_GUEST: &str = r#"
[[guest]]
name = "g"
bus = { kind = "local", socket = "{dir}/g.sock" }

[[guest.device]]
kind = "rng"
"#;

/// The soft and hard `Max open files` of process `pid`.
fn nofile_limits(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/pid/limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    let mut next = || {
        let f = fields.next().expect("a limit");
        if f == "unlimited" {
            u64::MAX
        } else {
            f.parse().expect("a number")
        }
    };
    (next(), next())
}

/// Defect 1: started under the systemd default soft limit of 1024, the
/// daemon raises its soft `RLIMIT_NOFILE` to the hard limit at once, so a
/// few hundred guests' fds cannot exhaust it.
#[test]
fn soft_fd_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = nofile_limits(std::process::id());
    let soft = 256.min(hard);
    let mut d = DaemonProcess::start_with(RNG_GUEST, &[], |cmd| {
        // SAFETY: setrlimit is async-signal-safe and touches only the
        // child's own limits between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let l = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    assert_eq!(nofile_limits(d.pid()), (hard, hard));
    assert!(d.terminate().success());
}
