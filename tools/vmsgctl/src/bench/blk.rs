//! `vmsgctl bench blk`: virtio-blk through the whole stack — the
//! spec-derived driver (`vmsg_driver::blk`) ↔ local bus ↔ a daemon in this
//! process ↔ the image file — against the same I/O pattern issued directly
//! on the same file with the same engine (`vmsg_devices::blk::engine`) and
//! the same queue depth, in the same run. Printed as ratios, with the
//! message round trip measured on the same connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vmsg_devices::blk::engine::{
    AlignedBuf, BlockEngine, Completion, Disk, DiskOptions, Engine, IoVecs, Op, open_engine,
};
use vmsg_driver::Driver;
use vmsg_driver::blk::{Blk, GuestBuf, Request, SECTOR_SIZE, Tag};

use crate::{AnyError, OwnDaemon};

/// Options of `vmsgctl bench blk`.
#[derive(Debug, Args)]
pub struct BlkArgs {
    /// Directory for the image: a real disk, not tmpfs (default: the
    /// temporary directory, or the current one if that is tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Image size in MiB (written in full first, so reads hit the disk).
    #[arg(long, default_value_t = 512)]
    pub size_mib: u64,
    /// Seconds per measurement (each side; plus a quarter of it to warm up).
    #[arg(long, default_value_t = 1.0)]
    pub secs: f64,
    /// Engine(s) to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub engine: EngineChoice,
    /// Go through the host page cache instead of O_DIRECT.
    #[arg(long)]
    pub buffered: bool,
}

/// Which engines `bench blk` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineChoice {
    /// io_uring only.
    IoUring,
    /// preadv/pwritev only.
    Sync,
    /// Both, one after the other.
    Both,
}

/// One I/O pattern.
#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    block: u32,
    depth: usize,
    write: bool,
    random: bool,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        name: "4 KiB random read, QD1",
        block: 4096,
        depth: 1,
        write: false,
        random: true,
    },
    Workload {
        name: "4 KiB random read, QD32",
        block: 4096,
        depth: 32,
        write: false,
        random: true,
    },
    Workload {
        name: "4 KiB random write, QD1",
        block: 4096,
        depth: 1,
        write: true,
        random: true,
    },
    Workload {
        name: "4 KiB random write, QD32",
        block: 4096,
        depth: 32,
        write: true,
        random: true,
    },
    Workload {
        name: "1 MiB sequential read, QD8",
        block: 1 << 20,
        depth: 8,
        write: false,
        random: false,
    },
    Workload {
        name: "1 MiB sequential write, QD8",
        block: 1 << 20,
        depth: 8,
        write: true,
        random: false,
    },
];

/// Byte offsets of a workload: random blocks (xorshift, the same sequence
/// on both sides) or consecutive ones, wrapping at the end of the image.
struct Offsets {
    state: u64,
    next: u64,
    blocks: u64,
    block: u64,
    random: bool,
}

impl Offsets {
    fn new(w: &Workload, image: u64) -> Self {
        Offsets {
            state: 0x9E37_79B9_7F4A_7C15,
            next: 0,
            blocks: (image / u64::from(w.block)).max(1),
            block: u64::from(w.block),
            random: w.random,
        }
    }

    fn next(&mut self) -> u64 {
        let b = if self.random {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            self.state % self.blocks
        } else {
            let b = self.next;
            self.next = (self.next + 1) % self.blocks;
            b
        };
        b * self.block
    }
}

/// What one measurement saw.
#[derive(Debug, Default)]
struct Measure {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Measure {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn mib_s(&self) -> f64 {
        self.bytes as f64 / f64::from(1 << 20) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Add another measurement of the same workload.
    fn merge(&mut self, other: Measure) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    fn p50(&self) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
}

/// Keeps `depth` requests in flight until `dur` has passed, then waits for
/// the last ones. `submit(slot, offset)` starts one, `collect` returns the
/// slots that completed (blocking until at least one did).
fn keep_busy(
    w: &Workload,
    image: u64,
    dur: Duration,
    submit: &mut dyn FnMut(usize, u64) -> Result<(), AnyError>,
    commit: &mut dyn FnMut() -> Result<(), AnyError>,
    collect: &mut dyn FnMut(&mut Vec<usize>) -> Result<(), AnyError>,
) -> Result<Measure, AnyError> {
    let mut offsets = Offsets::new(w, image);
    let mut started = vec![Instant::now(); w.depth];
    let mut m = Measure::default();
    let t0 = Instant::now();
    let end = t0 + dur;
    for (slot, s) in started.iter_mut().enumerate() {
        *s = Instant::now();
        submit(slot, offsets.next())?;
    }
    commit()?;
    let mut live = w.depth;
    let mut done = Vec::new();
    let mut last = t0;
    while live > 0 {
        done.clear();
        collect(&mut done)?;
        let now = Instant::now();
        last = now;
        for &slot in &done {
            m.latencies.push(now - started[slot]);
            m.ops += 1;
            m.bytes += u64::from(w.block);
            live -= 1;
            if now < end {
                started[slot] = now;
                submit(slot, offsets.next())?;
                live += 1;
            }
        }
        commit()?;
    }
    m.elapsed = last - t0;
    Ok(m)
}

/// The workload issued directly on the file with `kind`.
fn direct(
    kind: Engine,
    path: &Path,
    o_direct: bool,
    w: &Workload,
    image: u64,
    dur: Duration,
) -> Result<Measure, AnyError> {
    // Declared before the engine, so they are dropped after it: dropping
    // the engine waits for whatever is still in flight.
    let mut bufs: Vec<AlignedBuf> = (0..w.depth)
        .map(|i| {
            let mut b = AlignedBuf::new(w.block as usize, 4096).ok_or("out of memory")?;
            b.as_mut_slice().fill(i as u8 ^ 0x5A);
            Ok::<_, AnyError>(b)
        })
        .collect::<Result<_, _>>()?;
    let ptrs: Vec<(*mut u8, usize)> = bufs.iter_mut().map(|b| (b.as_mut_ptr(), b.len())).collect();
    let disk = Arc::new(Disk::open(
        path,
        DiskOptions {
            read_only: false,
            direct: o_direct,
            bounce: false,
        },
    )?);
    let engine: RefCell<Box<dyn BlockEngine>> =
        RefCell::new(open_engine(kind, disk, w.depth as u32)?);
    let mut submit = |slot: usize, offset: u64| -> Result<(), AnyError> {
        let (ptr, len) = ptrs[slot];
        let mut iov = IoVecs::with_capacity(1);
        iov.push(ptr, len);
        let op = if w.write {
            Op::Write { offset, iov }
        } else {
            Op::Read { offset, iov }
        };
        // SAFETY: `bufs` outlives the engine (declared before it), and a
        // slot's buffer is reused only after its request completed.
        unsafe { engine.borrow_mut().submit(slot as u64, vec![op])? };
        Ok(())
    };
    let mut commit = || -> Result<(), AnyError> { Ok(engine.borrow_mut().flush()?) };
    let mut completions: Vec<Completion> = Vec::new();
    let mut collect = |out: &mut Vec<usize>| -> Result<(), AnyError> {
        loop {
            completions.clear();
            let mut eng = engine.borrow_mut();
            eng.reap(&mut completions)?;
            if !completions.is_empty() {
                break;
            }
            // Nothing yet: sleep on the completion eventfd, as the daemon does.
            let Some(fd) = eng.event_fd() else {
                return Err("the engine lost requests".into());
            };
            // SAFETY: the fd belongs to the engine, borrowed for this call.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(5000u16))? == 0 {
                return Err("no completion within 5 s".into());
            }
        }
        for c in &completions {
            if let Err(e) = &c.result {
                return Err(format!("direct I/O failed: {e}").into());
            }
            out.push(c.token as usize);
        }
        Ok(())
    };
    let m = keep_busy(w, image, dur, &mut submit, &mut commit, &mut collect)?;
    drop(engine);
    drop(bufs);
    Ok(m)
}

/// The workload through the driver, the local bus and the daemon.
fn stack(disk: &mut Blk, w: &Workload, image: u64, dur: Duration) -> Result<Measure, AnyError> {
    let bufs: Vec<GuestBuf> = (0..w.depth)
        .map(|_| disk.alloc_buf(w.block))
        .collect::<Result<_, _>>()?;
    for (i, b) in bufs.iter().enumerate() {
        disk.write_buf(*b, &vec![i as u8 ^ 0x5A; w.block as usize])?;
    }
    let disk_cell = RefCell::new(&mut *disk);
    let tags = RefCell::new(HashMap::<Tag, usize>::new());
    let mut submit = |slot: usize, offset: u64| -> Result<(), AnyError> {
        let buf = bufs[slot];
        let sector = offset / SECTOR_SIZE;
        let req = if w.write {
            Request::Write { sector, buf }
        } else {
            Request::Read { sector, buf }
        };
        let tag = disk_cell.borrow_mut().submit(0, &req)?;
        tags.borrow_mut().insert(tag, slot);
        Ok(())
    };
    let mut commit = || -> Result<(), AnyError> { Ok(disk_cell.borrow_mut().kick()?) };
    let mut done = Vec::new();
    let mut collect = |out: &mut Vec<usize>| -> Result<(), AnyError> {
        done.clear();
        disk_cell.borrow_mut().wait(&mut done)?;
        for c in &done {
            if !c.is_ok() {
                return Err(format!("request failed with status {}", c.status).into());
            }
            let slot = tags
                .borrow_mut()
                .remove(&c.tag)
                .ok_or("completion of an unknown request")?;
            out.push(slot);
        }
        Ok(())
    };
    let m = keep_busy(w, image, dur, &mut submit, &mut commit, &mut collect)?;
    for b in bufs {
        disk.free_buf(b)?;
    }
    Ok(m)
}

/// 2000 GET_DEVICE_STATUS round trips on the disk's session.
fn round_trip(disk: &mut Blk) -> Result<super::Sample, AnyError> {
    Ok(super::Sample {
        name: "message round trip (GET_DEVICE_STATUS)",
        rtts: super::timed(2000, || {
            disk.device().status()?;
            Ok(())
        })?,
    })
}

/// Removes the bench directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// File system name of `path`, and whether it is tmpfs.
fn fs_type(path: &Path) -> Result<(&'static str, bool), AnyError> {
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC, statfs,
    };
    let t = statfs(path)?.filesystem_type();
    Ok(if t == TMPFS_MAGIC {
        ("tmpfs", true)
    } else if t == EXT4_SUPER_MAGIC {
        ("ext2/3/4", false)
    } else if t == XFS_SUPER_MAGIC {
        ("xfs", false)
    } else if t == BTRFS_SUPER_MAGIC {
        ("btrfs", false)
    } else {
        ("another file system", false)
    })
}

/// Where the image goes: `--dir`, else the temporary directory unless it is
/// tmpfs, else the current directory.
fn image_dir(dir: Option<&Path>) -> Result<(PathBuf, &'static str), AnyError> {
    let candidates: Vec<PathBuf> = match dir {
        Some(d) => vec![d.to_path_buf()],
        None => vec![std::env::temp_dir(), std::env::current_dir()?],
    };
    for d in &candidates {
        let (name, tmpfs) = fs_type(d)?;
        if !tmpfs {
            return Ok((d.clone(), name));
        }
    }
    Err(format!(
        "{} is tmpfs: the page cache would decide the result; give --dir on a real disk",
        candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    )
    .into())
}

/// Writes the whole image, so reads hit allocated blocks on the disk.
fn fill(path: &Path, bytes: u64) -> Result<(), AnyError> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    let chunk: Vec<u8> = (0..1usize << 20).map(|i| (i * 13 + 7) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::IoUring => "io-uring",
        Engine::Sync => "sync",
    }
}

/// Run `vmsgctl bench blk`.
pub fn run(args: &BlkArgs) -> Result<ExitCode, AnyError> {
    let (base, fs) = image_dir(args.dir.as_deref())?;
    let scratch = Scratch(base.join(format!("vmsgctl-bench-blk-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let image = scratch.0.join("bench.img");
    let image_bytes = args.size_mib.max(16) << 20;
    let dur = Duration::from_secs_f64(args.secs.clamp(0.05, 60.0));
    let o_direct = !args.buffered;
    let t = Instant::now();
    fill(&image, image_bytes)?;
    println!(
        "virtio-blk: driver <-> local bus <-> daemon (a thread of this process) <-> image file, against the same I/O pattern issued directly on the image with the same engine and queue depth, in this run"
    );
    println!(
        "image {} ({} MiB on {fs}, written in full in {:.1?}), {}, {:.1} s per measurement",
        image.display(),
        image_bytes >> 20,
        t.elapsed(),
        if o_direct {
            "O_DIRECT on both sides"
        } else {
            "page cache (buffered) on both sides"
        },
        dur.as_secs_f64()
    );
    let engines: &[Engine] = match args.engine {
        EngineChoice::IoUring => &[Engine::IoUring],
        EngineChoice::Sync => &[Engine::Sync],
        EngineChoice::Both => &[Engine::IoUring, Engine::Sync],
    };
    let mut all_met = true;
    let mut qd32_read = Vec::new();
    for &kind in engines {
        let devices = format!(
            "[[guest.device]]\nkind = \"blk\"\npath = \"{}\"\ndirect = {o_direct}\nengine = \"{}\"\n",
            image.display(),
            engine_name(kind)
        );
        let own = OwnDaemon::start_with_images(&scratch.0, &devices, "", &[])?;
        let mut disk = Blk::open(Driver::new(crate::connect(&own.socket)?)?, 0)?;
        let rtt = round_trip(&mut disk)?;
        // A request that does no disk I/O: what the stack itself costs.
        let null = super::timed(2000, || {
            disk.execute(&Request::GetId)?;
            Ok(())
        })?;
        let null = super::Sample {
            name: "GET_ID",
            rtts: null,
        };
        println!();
        println!(
            "engine {}: message round trip (GET_DEVICE_STATUS, doorbells) median {:.1?}; a GET_ID request through the stack (no disk I/O) median {:.1?}",
            engine_name(kind),
            rtt.median(),
            null.median()
        );
        println!(
            "  {:<28} {:>9} {:>8} {:>9}   {:>9} {:>8} {:>9}   {:>6}  target",
            "workload", "direct/s", "MiB/s", "p50", "stack/s", "MiB/s", "p50", "ratio"
        );
        for w in &WORKLOADS {
            // A discarded warm-up of each side, then direct, stack, stack,
            // direct: whatever one run leaves in caches (the host's too)
            // or in the CPUs' frequency helps both sides alike.
            let half = dur / 2;
            direct(kind, &image, o_direct, w, image_bytes, dur / 4)?;
            stack(&mut disk, w, image_bytes, dur / 4)?;
            let mut d = direct(kind, &image, o_direct, w, image_bytes, half)?;
            let mut s = stack(&mut disk, w, image_bytes, half)?;
            s.merge(stack(&mut disk, w, image_bytes, half)?);
            d.merge(direct(kind, &image, o_direct, w, image_bytes, half)?);
            let ratio = s.iops() / d.iops().max(1e-9);
            let target = if w.depth == 1 {
                // The round trip right after the measurement: it moves
                // with the CPUs' idle states as much as the I/O does.
                let rtt = round_trip(&mut disk)?.median();
                let bound = d.p50() + 2 * rtt;
                let met = s.p50() <= bound;
                all_met &= met;
                format!(
                    "p50 <= direct + 2 RTT ({rtt:.1?}) = {bound:.1?}: {}",
                    if met { "met" } else { "NOT met" }
                )
            } else if w.random && !w.write {
                let met = ratio >= 0.7;
                all_met &= met;
                qd32_read.push((kind, s.iops()));
                format!(">= 0.70x: {}", if met { "met" } else { "NOT met" })
            } else {
                String::new()
            };
            println!(
                "  {:<28} {:>9.0} {:>8.1} {:>9.1?}   {:>9.0} {:>8.1} {:>9.1?}   {:>5.2}x  {target}",
                w.name,
                d.iops(),
                d.mib_s(),
                d.p50(),
                s.iops(),
                s.mib_s(),
                s.p50(),
                ratio
            );
        }
        drop(disk.close()?);
        drop(own);
    }
    if let Some((best, iops)) = qd32_read.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)) {
        if qd32_read.len() > 1 {
            println!();
            println!(
                "faster engine through the stack (4 KiB random read, QD32): {} ({iops:.0} IOPS)",
                engine_name(best)
            );
        }
    }
    drop(scratch);
    Ok(if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
