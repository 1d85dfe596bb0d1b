//! Durability of virtio-blk writes across a SIGKILL of the daemon.
//!
//! The real `vmsgd` binary runs as a separate process on a config file and
//! a raw image; the spec-derived driver (`vmsg_driver::blk`) writes through
//! the local bus. Then the daemon is killed with SIGKILL and the image file
//! is read directly.
//!
//! - writeback: every block whose write completed before a FLUSH that was
//!   acknowledged is on the image, even though the daemon is killed the
//!   moment the FLUSH completion is seen (with more writes still in flight);
//! - writethrough (`writeback = false`): every write acknowledged before the
//!   kill is on the image, without any FLUSH.
//!
//! A SIGKILL leaves the host page cache intact, so this proves that nothing
//! acknowledged is held back in the daemon's memory or still queued in its
//! engine; that FLUSH and writethrough reach the disk (`fdatasync`) is the
//! engine's contract, tested in `vmsg-devices`.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use common::{DaemonProcess, block, open_blk};
use vmsg_driver::blk::{Blk, GuestBuf, Request, Tag};

const IMAGE: u64 = 64 << 20;
const BLOCKS: u64 = IMAGE / 4096;

fn config(writeback: bool) -> String {
    format!(
        r#"[daemon]
log_level = "info"

[[guest]]
name = "dur"
bus = {{ kind = "local", socket = "{{dir}}/dur.sock" }}

[[guest.device]]
kind = "blk"
path = "disk.img"
num_queues = 2
writeback = {writeback}
"#
    )
}

/// Distinct pseudo-random block numbers.
fn blocks(n: usize, seed: u64) -> Vec<u64> {
    let mut s = seed | 1;
    let mut out: Vec<u64> = Vec::with_capacity(n);
    while out.len() < n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let b = s % BLOCKS;
        if !out.contains(&b) {
            out.push(b);
        }
    }
    out
}

/// Writes of 4 KiB blocks kept in flight, at most `depth` at a time.
struct Writer {
    bufs: Vec<GuestBuf>,
    free: Vec<usize>,
    in_flight: BTreeMap<Tag, (usize, u64)>,
}

impl Writer {
    fn new(disk: &mut Blk, depth: usize) -> Self {
        let bufs: Vec<GuestBuf> = (0..depth)
            .map(|_| disk.alloc_buf(4096).expect("guest buffer"))
            .collect();
        Writer {
            free: (0..depth).rev().collect(),
            bufs,
            in_flight: BTreeMap::new(),
        }
    }

    /// Post the write of block `b` (pattern `seed`) if a buffer is free.
    fn post(&mut self, disk: &mut Blk, b: u64, seed: u64) -> bool {
        let Some(slot) = self.free.pop() else {
            return false;
        };
        let buf = self.bufs[slot];
        disk.write_buf(buf, &block(b, seed)).expect("fill buffer");
        let tag = disk
            .submit_any(&Request::Write { sector: b * 8, buf })
            .expect("submit write");
        self.in_flight.insert(tag, (slot, b));
        true
    }

    /// Wait for some completions; returns the blocks acknowledged OK.
    fn reap(&mut self, disk: &mut Blk) -> Vec<u64> {
        let mut done = Vec::new();
        disk.wait(&mut done).expect("completions");
        done.iter()
            .map(|c| {
                let (slot, b) = self
                    .in_flight
                    .remove(&c.tag)
                    .expect("completion of a posted write");
                assert!(c.is_ok(), "write of block {b} failed: status {}", c.status);
                self.free.push(slot);
                b
            })
            .collect()
    }
}

/// Assert every block of `acked` reads back from the image file with its
/// pattern.
fn assert_on_image(image: &std::path::Path, acked: &[u64], seed: u64, what: &str) {
    let f = std::fs::File::open(image).expect("open image");
    let mut buf = vec![0u8; 4096];
    let mut lost = Vec::new();
    for &b in acked {
        f.read_exact_at(&mut buf, b * 4096).expect("read image");
        if buf != block(b, seed) {
            lost.push(b);
        }
    }
    assert!(
        lost.is_empty(),
        "{what}: {} of {} blocks are not on the image after SIGKILL: {lost:?}",
        lost.len(),
        acked.len()
    );
}

#[test]
fn flushed_writes_survive_sigkill() {
    let mut daemon = DaemonProcess::start(&config(true), &[("disk.img", IMAGE)]);
    let image = daemon.path("disk.img");
    let mut disk = open_blk(&daemon.path("dur.sock"), 0);
    assert_eq!(disk.config().writeback, 1, "configured writeback");
    assert_eq!(disk.num_queues(), 2);
    let targets = blocks(600, 0x5EED);
    let (before, after) = targets.split_at(512);
    let mut w = Writer::new(&mut disk, 32);
    // 512 writes, 32 in flight over both queues; all acknowledged.
    let mut acked = Vec::new();
    let mut next = before.iter();
    loop {
        while let Some(&b) = next.clone().next() {
            if !w.post(&mut disk, b, 1) {
                break;
            }
            next.next();
        }
        disk.kick().expect("kick");
        if w.in_flight.is_empty() {
            break;
        }
        acked.extend(w.reap(&mut disk));
    }
    assert_eq!(acked.len(), before.len());
    // FLUSH after every write completed; wait for its completion.
    disk.flush().expect("FLUSH completes OK");
    // More writes in flight while the daemon dies: not covered by the FLUSH.
    for &b in after.iter().take(32) {
        assert!(w.post(&mut disk, b, 2));
    }
    disk.kick().expect("kick");
    let status = daemon.kill();
    assert!(!status.success(), "vmsgd was killed: {status}");
    assert_on_image(&image, &acked, 1, "writeback, after FLUSH");
}

#[test]
fn writethrough_writes_survive_sigkill() {
    let mut daemon = DaemonProcess::start(&config(false), &[("disk.img", IMAGE)]);
    let image = daemon.path("disk.img");
    let mut disk = open_blk(&daemon.path("dur.sock"), 0);
    assert_eq!(disk.config().writeback, 0, "configured writethrough");
    let targets = blocks(256, 0xD00D);
    let mut w = Writer::new(&mut disk, 32);
    let mut acked = Vec::new();
    let mut next = targets.iter();
    // Keep 32 writes in flight and kill the daemon as soon as 200 are
    // acknowledged, with the others still in flight. No FLUSH at all.
    while acked.len() < 200 {
        while let Some(&b) = next.clone().next() {
            if !w.post(&mut disk, b, 3) {
                break;
            }
            next.next();
        }
        disk.kick().expect("kick");
        acked.extend(w.reap(&mut disk));
    }
    let status = daemon.kill();
    assert!(!status.success(), "vmsgd was killed: {status}");
    assert_on_image(&image, &acked, 3, "writethrough, no FLUSH");
}
