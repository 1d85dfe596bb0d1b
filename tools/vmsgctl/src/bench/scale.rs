//! `vmsgctl bench scale`: what N guests cost the daemon, measured on a real
//! `vmsgd` process (the binary beside this one, or `--vmsgd`): resident
//! memory, threads and fds with N idle guests (nobody connected) and with N
//! drivers connected, then idle; and over an idle window, the CPU time the
//! daemon used and how often its threads woke (context switches of every
//! thread). The baseline is the same daemon with one guest, measured in the
//! same run: the per-guest figures are (N guests − 1 guest) / (N − 1).
//!
//! Targets (issue 10): no wake-up while idle, at most 1 MiB of RSS per idle
//! guest, 1000 connected guests within the fd limit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use vmsg_backend::local::{LocalBusClient, LocalClientOptions};
use vmsg_transport::ring::RingParams;

use crate::AnyError;

/// Options of `vmsgctl bench scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Guests of the measured daemon (each a local bus with one rng).
    #[arg(long, default_value_t = 100)]
    pub guests: usize,
    /// The idle window over which CPU time and wake-ups are counted.
    #[arg(long, default_value_t = 2.0)]
    pub idle_secs: f64,
    /// The vmsgd binary (default: `vmsgd` beside this program).
    #[arg(long)]
    pub vmsgd: Option<PathBuf>,
}

/// What /proc says about a process at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    rss_kib: u64,
    threads: u64,
    fds: u64,
    /// utime + stime, clock ticks.
    cpu_ticks: u64,
    /// Voluntary and involuntary context switches, every thread.
    switches: u64,
}

fn field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sample(pid: u32) -> Result<Sample, AnyError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(task) = task else { continue };
        if let Ok(s) = std::fs::read_to_string(task.path().join("status")) {
            switches +=
                field(&s, "voluntary_ctxt_switches") + field(&s, "nonvoluntary_ctxt_switches");
        }
    }
    Ok(Sample {
        rss_kib: field(&status, "VmRSS"),
        threads: field(&status, "Threads"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64,
        cpu_ticks: tick(11) + tick(12),
        switches,
    })
}

/// A daemon with `guests` rng guests on local-bus sockets in `dir`.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    guests: usize,
}

impl Daemon {
    fn start(vmsgd: &Path, guests: usize) -> Result<Self, AnyError> {
        let dir = tempfile::Builder::new().prefix("vmsgd-scale-").tempdir()?;
        let mut config = String::from("[daemon]\nlog_level = \"info\"\n");
        for i in 0..guests {
            config.push_str(&format!(
                "[[guest]]\nname = \"g{i}\"\nbus = {{ kind = \"local\", socket = \"{}/g{i}.sock\" }}\n[[guest.device]]\nkind = \"rng\"\n",
                dir.path().display()
            ));
        }
        let file = dir.path().join("vmsgd.toml");
        std::fs::write(&file, config)?;
        let mut child = Command::new(vmsgd)
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", vmsgd.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("running") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(120))
            .map_err(|_| "vmsgd did not start within 120 s")?;
        Ok(Self { child, dir, guests })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("g{i}.sock"))
    }

    /// Connect a driver to every guest (a handshake each: shared RAM,
    /// rings, doorbells), keeping the connections.
    fn connect_all(&self) -> Result<Vec<LocalBusClient>, AnyError> {
        let opts = LocalClientOptions {
            ram_size: 64 << 10,
            ring: RingParams {
                slot_size: 264,
                slots: 4,
            },
            ..LocalClientOptions::default()
        };
        (0..self.guests)
            .map(|i| {
                LocalBusClient::connect(&self.socket(i), &opts)
                    .map_err(|e| format!("guest {i}: {e}").into())
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the daemon is left to settle (the last handshakes' logging)
/// before an idle window starts.
const SETTLE: Duration = Duration::from_millis(500);

/// RSS, threads and fds now; CPU time and wake-ups over `idle`.
fn measure(pid: u32, idle: Duration) -> Result<(Sample, Sample), AnyError> {
    std::thread::sleep(SETTLE);
    let before = sample(pid)?;
    let start = Instant::now();
    while start.elapsed() < idle {
        std::thread::sleep(idle.saturating_sub(start.elapsed()));
    }
    let after = sample(pid)?;
    Ok((before, after))
}

struct Row {
    what: String,
    rss_kib: u64,
    threads: u64,
    fds: u64,
    cpu_ms: f64,
    wakeups: u64,
}

fn row(what: String, (before, after): (Sample, Sample)) -> Row {
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Row {
        what,
        rss_kib: after.rss_kib,
        threads: after.threads,
        fds: after.fds,
        cpu_ms: (after.cpu_ticks.saturating_sub(before.cpu_ticks)) as f64 * 1000.0 / hz,
        wakeups: after.switches.saturating_sub(before.switches),
    }
}

/// Run the benchmark.
pub fn run(args: &ScaleArgs) -> Result<ExitCode, AnyError> {
    let n = args.guests.max(2);
    let vmsgd = match &args.vmsgd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("no directory for this program")?
            .join("vmsgd"),
    };
    // Our side holds five fds per connected driver.
    vmsgd::sandbox::raise_fd_limit()?;
    let idle = Duration::from_secs_f64(args.idle_secs.max(0.1));
    println!(
        "vmsgctl bench scale: {} with 1 and {n} guests (one rng each, local bus), idle window {idle:?}",
        vmsgd.display()
    );
    let mut rows = Vec::new();
    let mut daemon_limit = 0;
    for guests in [1, n] {
        let d = Daemon::start(&vmsgd, guests)?;
        daemon_limit = nofile(d.pid());
        rows.push(row(format!("{guests} idle"), measure(d.pid(), idle)?));
        let clients = d.connect_all()?;
        rows.push(row(
            format!("{guests} connected, idle"),
            measure(d.pid(), idle)?,
        ));
        drop(clients);
    }
    println!(
        "\n| guests | RSS | threads | fds | CPU over {:.1} s | wake-ups over {:.1} s |",
        idle.as_secs_f64(),
        idle.as_secs_f64()
    );
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.1} MiB | {} | {} | {:.0} ms | {} |",
            r.what,
            r.rss_kib as f64 / 1024.0,
            r.threads,
            r.fds,
            r.cpu_ms,
            r.wakeups
        );
    }
    let per = |a: &Row, b: &Row, f: fn(&Row) -> u64| (f(b) as f64 - f(a) as f64) / (n - 1) as f64;
    let (idle1, conn1, idle_n, conn_n) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    let rss_idle = per(idle1, idle_n, |r| r.rss_kib) / 1024.0;
    let rss_conn = per(conn1, conn_n, |r| r.rss_kib) / 1024.0;
    println!(
        "\nper guest (baseline: the 1-guest daemon): idle {rss_idle:.2} MiB RSS, {:.1} threads, {:.1} fds; connected {rss_conn:.2} MiB RSS, {:.1} fds",
        per(idle1, idle_n, |r| r.threads),
        per(idle1, idle_n, |r| r.fds),
        per(conn1, conn_n, |r| r.fds),
    );
    let quiet = rows.iter().all(|r| r.wakeups == 0);
    println!(
        "targets: no wake-up while idle — {}; ≤ 1 MiB RSS per idle guest — {}; {n} connected guests within the fd limit ({} of {daemon_limit}) — {}",
        if quiet { "met" } else { "NOT met" },
        if rss_idle <= 1.0 { "met" } else { "NOT met" },
        conn_n.fds,
        if conn_n.fds < daemon_limit {
            "met"
        } else {
            "NOT met"
        },
    );
    Ok(ExitCode::SUCCESS)
}

/// The soft `Max open files` of process `pid`.
pub fn nofile(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    l["Max open files".len()..]
                        .split_whitespace()
                        .next()
                        .map(str::to_string)
                })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("sample");
        assert!(s.rss_kib > 0 && s.threads >= 1 && s.fds >= 3);
        assert!(nofile(std::process::id()) > 0);
    }
}
