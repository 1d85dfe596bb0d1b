//! virtio-blk end to end with the daemon as a real process: the `vmsgd`
//! binary on a config file, the spec-derived driver over the local bus.

mod common;
// The demo's disk pattern (the `vmsgd` binary's demo module).
#[path = "../src/bin/vmsgd/demo/pattern.rs"]
mod pattern;

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use common::{DaemonProcess, STARTUP, block, open_blk, wait_exit};
use vmsg_driver::blk::{self, RawRequest, Request, Segment, feature, status};
use vmsg_driver::conformance::{SuiteConfig, run_suite_with};
use vmsg_driver::local::connector;

const MIB: u64 = 1 << 20;

fn one_disk(extra: &str) -> String {
    format!(
        r#"[daemon]
log_level = "info"

[[guest]]
name = "g"
bus = {{ kind = "local", socket = "{{dir}}/g.sock" }}

[[guest.device]]
kind = "blk"
path = "disk.img"
serial = "test-disk-0"
{extra}
"#
    )
}

/// Write, read back, GET_ID, discard, write-zeroes and flush through a
/// daemon process, and find the data on the image file afterwards.
fn io_round_trip(extra: &str) {
    let mut daemon = DaemonProcess::start(&one_disk(extra), &[("disk.img", 16 * MIB)]);
    let mut disk = open_blk(&daemon.path("g.sock"), 0);
    assert_eq!(disk.capacity(), 16 * MIB / 512);
    assert_eq!(disk.serial().expect("GET_ID"), "test-disk-0");
    let neg = disk.negotiated().clone();
    for f in [feature::FLUSH, feature::DISCARD, feature::WRITE_ZEROES] {
        assert!(neg.contains(f), "feature {f} negotiated: {neg:?}");
    }
    // 256 KiB spanning several segments, at an odd block.
    let data: Vec<u8> = (0..64u64).flat_map(|b| block(b, 7)).collect();
    disk.write(8 * 3, &data).expect("write");
    let mut back = vec![0u8; data.len()];
    disk.read(8 * 3, &mut back).expect("read");
    assert!(back == data, "read back what was written");
    // Zero blocks 4..6 of it (one with unmap), discard 10..12.
    disk.write_zeroes(&[Segment::new(8 * 7, 8), Segment::unmap(8 * 8, 8)])
        .expect("write zeroes");
    disk.discard(&[Segment::new(8 * 13, 16)]).expect("discard");
    disk.flush().expect("flush");
    let mut z = vec![0xFFu8; 3 * 4096];
    disk.read(8 * 6, &mut z).expect("read around the zeroes");
    assert_eq!(
        &z[..4096],
        &block(3, 7)[..],
        "block before the range intact"
    );
    assert!(
        z[4096..].iter().all(|&b| b == 0),
        "zeroed range reads zeroes"
    );
    // The last sector reads; one past it is IOERR, not a panic or a hang.
    let buf = disk.alloc_buf(512).expect("buf");
    let last = disk.capacity() - 1;
    let c = disk
        .execute(&Request::Read { sector: last, buf })
        .expect("last sector");
    assert!(c.is_ok());
    let c = disk
        .execute(&Request::Read {
            sector: last + 1,
            buf,
        })
        .expect("past the end");
    assert_eq!(c.status, status::IOERR);
    drop(disk.close().expect("close"));
    let status = daemon.terminate();
    assert!(status.success(), "vmsgd exits cleanly on SIGTERM: {status}");
    // What the driver wrote is on the image file.
    let f = std::fs::File::open(daemon.path("disk.img")).expect("image");
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, (3 + 2) * 4096).expect("read image");
    assert_eq!(b, block(2, 7));
}

#[test]
fn io_through_a_daemon_process() {
    io_round_trip("");
}

#[test]
fn io_with_the_sync_engine() {
    io_round_trip("engine = \"sync\"");
}

#[test]
fn io_with_o_direct() {
    io_round_trip("direct = true");
}

/// Four queues, 32 requests in flight spread over them: every queue
/// serves, and the data is right.
#[test]
fn multiqueue_spreads_requests() {
    let daemon = DaemonProcess::start(&one_disk("num_queues = 4"), &[("disk.img", 16 * MIB)]);
    let mut disk = open_blk(&daemon.path("g.sock"), 0);
    assert!(disk.negotiated().contains(feature::MQ));
    assert_eq!(disk.num_queues(), 4);
    let bufs: Vec<_> = (0..32)
        .map(|_| disk.alloc_buf(4096).expect("buf"))
        .collect();
    for (i, b) in bufs.iter().enumerate() {
        disk.write_buf(*b, &block(i as u64, 9)).expect("fill");
    }
    let mut tags = Vec::new();
    for (i, b) in bufs.iter().enumerate() {
        let req = Request::Write {
            sector: i as u64 * 8,
            buf: *b,
        };
        tags.push(disk.submit_any(&req).expect("submit"));
    }
    for q in 0..4 {
        assert_eq!(disk.in_flight_on(q), 8, "round robin over the queues");
    }
    disk.kick().expect("kick");
    let mut done = Vec::new();
    while done.len() < tags.len() {
        disk.wait(&mut done).expect("completions");
    }
    assert!(done.iter().all(|c| c.is_ok()));
    let mut per_queue = [0usize; 4];
    for c in &done {
        per_queue[usize::from(c.queue)] += 1;
    }
    assert_eq!(per_queue, [8; 4], "each queue completed its own requests");
    disk.flush_all().expect("flush every queue");
    for i in 0..32u64 {
        let mut b = vec![0u8; 4096];
        disk.read(i * 8, &mut b).expect("read");
        assert_eq!(b, block(i, 9), "block {i}");
    }
}

/// A read-only disk: RO offered, the image's contents readable, writes and
/// write-zeroes refused with IOERR, FLUSH fine, the image untouched.
#[test]
fn read_only_disk() {
    let mut daemon = DaemonProcess::start(&one_disk("read_only = true"), &[("disk.img", 4 * MIB)]);
    let image = daemon.path("disk.img");
    // Contents written on the host before the guest looks (the daemon has
    // the image open; writes through another fd are visible to it).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|f| f.write_all_at(&block(5, 1), 5 * 4096))
        .expect("seed the image");
    let mut disk = open_blk(&daemon.path("g.sock"), 0);
    assert!(disk.limits().read_only, "VIRTIO_BLK_F_RO negotiated");
    let mut b = vec![0u8; 4096];
    disk.read(5 * 8, &mut b).expect("read");
    assert_eq!(b, block(5, 1));
    // The frontend refuses to send a write to an RO device; send it raw.
    assert!(matches!(
        disk.write(0, &block(0, 2)),
        Err(blk::BlkError::Invalid(_))
    ));
    let buf = disk.alloc_buf(4096).expect("buf");
    disk.write_buf(buf, &block(0, 2)).expect("fill");
    let c = disk
        .execute(&Request::Raw(RawRequest {
            rtype: blk::req::OUT,
            reserved: 0,
            sector: 5 * 8,
            readable: vec![buf],
            writable: vec![],
        }))
        .expect("raw write");
    assert_eq!(c.status, status::IOERR, "write to a read-only disk");
    disk.flush().expect("FLUSH on a read-only disk is OK");
    drop(disk.close().expect("close"));
    assert!(daemon.terminate().success());
    let f = std::fs::File::open(&image).expect("image");
    f.read_exact_at(&mut b, 5 * 4096).expect("read image");
    assert_eq!(b, block(5, 1), "the image is untouched");
}

/// The blk conformance cases against a writable two-queue disk and a
/// read-only one, each case on a fresh connection to the daemon process.
#[test]
fn conformance_blk_cases_pass() {
    let daemon = DaemonProcess::start(
        r#"[daemon]
log_level = "info"

[[guest]]
name = "g"
bus = { kind = "local", socket = "{dir}/g.sock" }

[[guest.device]]
kind = "blk"
path = "rw.img"
num_queues = 2
serial = "rw"

[[guest.device]]
kind = "blk"
path = "ro.img"
read_only = true
direct = true
"#,
        &[("rw.img", 16 * MIB), ("ro.img", 4 * MIB)],
    );
    let cfg = SuiteConfig {
        filter: "blk.".into(),
        timeout: Duration::from_secs(5),
        drop_window: Duration::from_millis(50),
        ..SuiteConfig::default()
    };
    for (dev, skips) in [(0u16, 2usize), (1, 8)] {
        let mut make = connector(daemon.path("g.sock"), Default::default());
        let report = run_suite_with(&mut make, dev, &cfg);
        assert!(report.success(), "device {dev}:\n{report}");
        assert_eq!(report.skipped(), skips, "device {dev}:\n{report}");
        assert!(report.passed() >= 12, "device {dev}:\n{report}");
    }
}

/// Two driver processes (`vmsgd demo-driver`: rng reads, disk write / read
/// back / verify, a conformance subset) against two guests of one daemon
/// process at the same time.
#[test]
fn two_driver_processes_against_two_guests() {
    let guest = |name: &str| {
        format!(
            r#"
[[guest]]
name = "{name}"
bus = {{ kind = "local", socket = "{{dir}}/{name}.sock" }}

[[guest.device]]
kind = "rng"

[[guest.device]]
kind = "blk"
path = "{name}.img"
num_queues = 2
"#
        )
    };
    let config = format!(
        "[daemon]\nlog_level = \"info\"\n{}{}",
        guest("a"),
        guest("b")
    );
    let daemon = DaemonProcess::start(&config, &[("a.img", 8 * MIB), ("b.img", 8 * MIB)]);
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_vmsgd"))
            .arg("demo-driver")
            .arg("--socket")
            .arg(daemon.path(&format!("{name}.sock")))
            .arg("--disk-bytes")
            .arg((2 * MIB).to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn a driver process")
    };
    // Both running before either is waited for.
    let a = spawn("a");
    let b = spawn("b");
    let (pa, pb) = (a.id(), b.id());
    let out_a = wait_output(a);
    let out_b = wait_output(b);
    for (pid, (status, out)) in [(pa, out_a), (pb, out_b)] {
        assert!(status.success(), "driver process {pid} failed:\n{out}");
        assert!(
            out.contains("read back"),
            "process {pid} did disk I/O:\n{out}"
        );
        assert!(
            out.contains("random bytes"),
            "process {pid} read the rng:\n{out}"
        );
    }
    // Each guest's image holds what its driver wrote (the demo pattern,
    // its first sectors zeroed again by WRITE_ZEROES).
    let len = (2 * MIB) as usize;
    let want = pattern::disk_pattern(pattern::DISK_SECTOR, len);
    let skip = (pattern::ZEROED_SECTORS * 512) as usize;
    for name in ["a", "b"] {
        let f = std::fs::File::open(daemon.path(&format!("{name}.img"))).expect("image");
        let mut got = vec![0u8; len];
        f.read_exact_at(&mut got, pattern::DISK_SECTOR * 512)
            .expect("read image");
        assert!(got[..skip].iter().all(|&b| b == 0), "{name}: zeroed range");
        assert!(
            got[skip..] == want[skip..],
            "{name}: the pattern is on the image"
        );
    }
}

/// Collect a child's stdout and wait for it (bounded).
fn wait_output(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut stdout = child.stdout.take().expect("stdout pipe");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let status = wait_exit(child, STARTUP);
    let out = reader.join().unwrap_or_default();
    (status, out)
}
