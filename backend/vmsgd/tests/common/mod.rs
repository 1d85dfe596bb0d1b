//! Helpers of the daemon-process tests: the real `vmsgd` binary started on
//! a config file in a temporary directory, its readiness and exit observed
//! through its stderr pipe and its process status — never by sleeping.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use vmsg_backend::local::LocalClientOptions;
use vmsg_driver::Driver;
use vmsg_driver::blk::{Blk, BlkOptions};
use vmsg_driver::local::LocalDriverBus;

/// Bound on the daemon coming up, and on any single wait here.
pub const STARTUP: Duration = Duration::from_secs(20);

/// A `vmsgd` process.
pub struct DaemonProcess {
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
    /// The temporary directory holding config, sockets and images.
    pub dir: tempfile::TempDir,
}

impl DaemonProcess {
    /// Write `config` (with `{dir}` replaced by the temporary directory) to
    /// `vmsgd.toml`, create the sparse `images` (name, bytes) and start
    /// `vmsgd --config` on it; returns once it logged that its guests run.
    pub fn start(config: &str, images: &[(&str, u64)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vmsgd-test-")
            .tempdir_in(disk_dir())
            .expect("temporary directory");
        for (name, len) in images {
            std::fs::File::create(dir.path().join(name))
                .and_then(|f| f.set_len(*len))
                .expect("create image");
        }
        let text = config.replace("{dir}", &dir.path().display().to_string());
        let cfg = dir.path().join("vmsgd.toml");
        std::fs::write(&cfg, text).expect("write config");
        Self::start_in(dir, &cfg)
    }

    /// Start `vmsgd --config cfg` (a file in `dir`).
    pub fn start_in(dir: tempfile::TempDir, cfg: &Path) -> Self {
        Self::start_in_with(dir, cfg, |_| {})
    }

    /// [`DaemonProcess::start`], letting `setup` adjust the command first
    /// (environment, resource limits).
    pub fn start_with(
        config: &str,
        images: &[(&str, u64)],
        setup: impl FnOnce(&mut Command),
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vmsgd-test-")
            .tempdir_in(disk_dir())
            .expect("temporary directory");
        for (name, len) in images {
            std::fs::File::create(dir.path().join(name))
                .and_then(|f| f.set_len(*len))
                .expect("create image");
        }
        let text = config.replace("{dir}", &dir.path().display().to_string());
        let cfg = dir.path().join("vmsgd.toml");
        std::fs::write(&cfg, text).expect("write config");
        Self::start_in_with(dir, &cfg, setup)
    }

    /// [`DaemonProcess::start_in`] with a `setup` hook on the command.
    pub fn start_in_with(
        dir: tempfile::TempDir,
        cfg: &Path,
        setup: impl FnOnce(&mut Command),
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmsgd"));
        cmd.arg("--config")
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("spawn vmsgd");
        let stderr = child.stderr.take().expect("stderr pipe");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut d = DaemonProcess {
            child: Some(child),
            lines,
            seen: Vec::new(),
            dir,
        };
        d.wait_for_log("running", STARTUP);
        d
    }

    /// Block until the daemon logs a line containing `what`.
    pub fn wait_for_log(&mut self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(what);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "vmsgd did not log {what:?} within {timeout:?}; it logged:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "vmsgd exited before logging {what:?}; it logged:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// A path in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL the daemon and wait (bounded) until it is gone.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        child.kill().expect("SIGKILL vmsgd");
        wait_exit(child, STARTUP)
    }

    /// Send SIGHUP (reload the configuration).
    pub fn hangup(&self) {
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    /// SIGTERM the daemon, wait (bounded) for its exit and return its
    /// status and every line it logged.
    pub fn terminate_with_log(&mut self) -> (ExitStatus, Vec<String>) {
        let status = self.terminate();
        // The pipe's reader ends with the process: take what is left.
        while let Ok(line) = self.lines.recv_timeout(STARTUP) {
            self.seen.push(line);
        }
        (status, self.seen.clone())
    }

    /// SIGTERM the daemon and wait (bounded) for its exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let child = self.child.take().expect("daemon already stopped");
        wait_exit(child, STARTUP)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("daemon running");
        let pid = i32::try_from(child.id()).expect("pid");
        // Our own child, not reaped yet (we hold its Child): the pid is its.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .unwrap_or_else(|e| panic!("{sig} to vmsgd: {e}"));
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Wait for `child` to exit, failing loudly after `timeout`.
pub fn wait_exit(mut child: Child, timeout: Duration) -> ExitStatus {
    let pid = child.id();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => status.expect("wait for the child"),
        Err(_) => panic!("process {pid} did not exit within {timeout:?}"),
    }
}

/// A directory on a real file system for images (the temporary directory
/// unless it is tmpfs, then the target directory).
pub fn disk_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    let is_tmpfs = nix::sys::statfs::statfs(&tmp)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    if is_tmpfs {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    } else {
        tmp
    }
}

/// A driver session on a guest's local bus socket.
pub fn driver(socket: &Path) -> Driver {
    let bus = LocalDriverBus::connect_retrying(socket, &LocalClientOptions::default(), STARTUP)
        .expect("connect to the guest socket");
    Driver::new(Box::new(bus)).expect("driver session")
}

/// The blk device `dev_num` of the guest on `socket`, initialized.
pub fn open_blk(socket: &Path, dev_num: u16) -> Blk {
    let opts = BlkOptions {
        timeout: Duration::from_secs(10),
        ..BlkOptions::default()
    };
    Blk::open_with(driver(socket), dev_num, &opts).expect("open the blk device")
}

/// A recognizable 4 KiB block: its number and a seed, repeated.
pub fn block(n: u64, seed: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(4096);
    while b.len() < 4096 {
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&seed.to_le_bytes());
    }
    b
}
