//! `vmsgctl bench xen`: message round trip and virtio-blk 4 KiB random-read
//! IOPS over the (fake) Xen bus as ratios to the local bus measured in the
//! same run, and the grant cache's hit rate under an rng and a blk workload.
//! [`run`] measures PING and rng, [`run_with_blk`] everything; [`command`]
//! is the subcommand that prints the figures (docs/performance.md).
//!
//! It runs vmsg-xen's fake hypervisor and domU frontend (features `fake`
//! and `frontend`), which is why it lives here with the other benchmarks
//! and not in the library the daemon links.
//!
//! Both buses run the same stacks: vmsg-driver on one thread, a
//! `GuestInstance` on another, doorbell mode (the Xen frontend has no
//! polling mode). What differs is the bus: the local bus's eventfds and
//! memfds versus the Xen bus's event channels (eventfd-backed in the fake,
//! plus the fake's bookkeeping under a lock) and granted pages. The fake
//! has no hypercall cost, so the ratios measure our code, not Xen's.
//!
//! The blk workload ([`run_blk`]) serves one image file (created, filled
//! with a position-dependent pattern and removed again in a scratch
//! directory) through two devices the caller builds the same way (same
//! engine), one per bus, both connected at once. Per queue depth the two
//! buses are measured interleaved — a discarded warm-up of each, then
//! local, Xen, Xen, local — so drift favours neither. The image is read
//! through the page cache (the command and the test build the device
//! without `O_DIRECT`): the disk would otherwise hide the bus's cost.
//! Each measurement ends by comparing what the last read of every slot
//! returned with the image file's bytes at that offset, so a bus returning
//! errors or wrong data fails the benchmark instead of looking fast.
//!
//! Hit rate: every request a workload makes references guest pages (the
//! data buffer's pages, and the descriptor table, available and used
//! rings; blk requests also their header-and-status slot). A reference
//! that needs a new grant mapping is a miss; the backend's gntdev map
//! operations during the workload are counted by the fake hypervisor. With
//! the persistent pool (docs/xen-bus.md §6) every reference is a hit after
//! the connection's one-time mapping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error;
use vmsg_backend::instance::{DeviceList, GuestInstance, InstanceOptions, StopSignal};
use vmsg_backend::local::{LocalBusListener, LocalClientOptions, LocalServerOptions};
use vmsg_devices::blk::engine::{Engine, EngineError};
use vmsg_devices::blk::{BlkConfig, BlkDevice, BlkError};
use vmsg_devices::rng::{HostEntropy, RngDevice};
use vmsg_driver::blk::{GuestBuf, Request, SECTOR_SIZE, Tag};
use vmsg_driver::local::LocalDriverBus;
use vmsg_driver::{Blk, Driver, Rng};

use vmsg_xen::DomId;
use vmsg_xen::bus::{BackendConfig, FrontendOptions, XenBackend, XenBusError, XenFrontend};
use vmsg_xen::fake::FakeXen;

use super::XenArgs;

/// Errors of the benchmark.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The Xen bus failed.
    #[error("xen bus: {0}")]
    Xen(#[from] XenBusError),
    /// A blk request failed or returned data other than the image's.
    #[error("blk over the {bus} bus: {what}")]
    Blk {
        /// Which bus.
        bus: &'static str,
        /// What went wrong.
        what: String,
    },
    /// The local bus, the driver or an instance failed.
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// PING round trips per bus.
    pub iters: usize,
    /// rng reads in the grant workload.
    pub reads: usize,
    /// Bytes per rng read.
    pub read_len: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            iters: 20_000,
            reads: 2_000,
            read_len: 4096,
        }
    }
}

/// Round-trip times of one measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    /// What was measured.
    pub name: &'static str,
    /// Each round trip.
    pub rtts: Vec<Duration>,
}

impl Sample {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.rtts.clone();
        v.sort_unstable();
        v
    }

    /// The median round trip.
    pub fn median(&self) -> Duration {
        let v = self.sorted();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        let v = self.sorted();
        v.get(v.len() * 99 / 100).copied().unwrap_or_default()
    }
}

/// Grant cache figures of the workload.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GrantFigures {
    /// Grants mapped when the connection was set up (ring + pool).
    pub grants_mapped_at_connect: u64,
    /// gntdev map operations at connect.
    pub map_ops_at_connect: u64,
    /// Requests completed.
    pub requests: u64,
    /// Guest page references they made.
    pub page_refs: u64,
    /// gntdev map operations during the workload (misses).
    pub map_ops_during: u64,
    /// `1 - map_ops_during / page_refs`.
    pub hit_rate: f64,
    /// Throughput of the workload.
    pub bytes_per_sec: f64,
}

/// Everything [`run`] measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// PING over the local bus (baseline).
    pub local_ping: Sample,
    /// PING over the fake Xen bus.
    pub xen_ping: Sample,
    /// Grant cache figures of the rng workload.
    pub grants: GrantFigures,
    /// The blk workload ([`run_with_blk`]; `None` from [`run`]).
    pub blk: Option<BlkReport>,
}

impl BenchReport {
    /// Median Xen round trip over median local round trip.
    pub fn ratio(&self) -> f64 {
        self.xen_ping.median().as_secs_f64() / self.local_ping.median().as_secs_f64().max(1e-12)
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in [&self.local_ping, &self.xen_ping] {
            writeln!(
                f,
                "  {:<40} median {:>9.2?}  p99 {:>9.2?}",
                s.name,
                s.median(),
                s.p99()
            )?;
        }
        writeln!(
            f,
            "  ratio Xen/local (median)                 {:.2}x",
            self.ratio()
        )?;
        let g = &self.grants;
        writeln!(
            f,
            "  grant cache: {} grants in {} map ops at connect; {} requests, {} page refs, {} map ops during -> hit rate {:.4} ({:.1} MB/s)",
            g.grants_mapped_at_connect,
            g.map_ops_at_connect,
            g.requests,
            g.page_refs,
            g.map_ops_during,
            g.hit_rate,
            g.bytes_per_sec / 1e6
        )?;
        match &self.blk {
            Some(blk) => write!(f, "{blk}"),
            None => Ok(()),
        }
    }
}

fn pings(drv: &mut Driver, name: &'static str, iters: usize) -> Result<Sample, BenchError> {
    // Warm-up.
    for i in 0..(iters / 10).max(10) {
        drv.ping(i as u32).map_err(other)?;
    }
    let mut rtts = Vec::with_capacity(iters);
    for i in 0..iters {
        let t = Instant::now();
        drv.ping(i as u32).map_err(other)?;
        rtts.push(t.elapsed());
    }
    Ok(Sample { name, rtts })
}

fn local_ping(iters: usize, devices: DeviceList) -> Result<Sample, BenchError> {
    let path: PathBuf =
        std::env::temp_dir().join(format!("vmsg-xen-bench-{}.sock", std::process::id()));
    let listener = LocalBusListener::bind(&path, LocalServerOptions::default()).map_err(other)?;
    let stop = StopSignal::new().map_err(other)?;
    let stop2 = stop.clone();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let r = (|| {
            let mut instance =
                GuestInstance::new("bench-local", InstanceOptions::default(), devices)
                    .map_err(other)?;
            let mut bus = listener.accept().map_err(other)?;
            instance.serve(&mut bus, &stop2).map_err(other)?;
            Ok::<(), BenchError>(())
        })();
        let _ = tx.send(r);
    });
    let result = (|| {
        let bus = LocalDriverBus::connect(&path, &LocalClientOptions::default()).map_err(other)?;
        let mut drv = Driver::new(Box::new(bus)).map_err(other)?;
        pings(&mut drv, "vmsg PING, local bus (doorbells)", iters)
    })();
    stop.trigger();
    let served = rx.recv_timeout(Duration::from_secs(10)).map_err(other);
    let _ = server.join();
    served??;
    result
}

/// Measure. `make_devices` builds the device list of each bus's instance
/// (called twice); `rng_dev` is the number of a virtio-rng in it.
pub fn run(
    opts: &BenchOptions,
    make_devices: &mut dyn FnMut() -> DeviceList,
    rng_dev: u16,
) -> Result<BenchReport, BenchError> {
    let local_ping = local_ping(opts.iters, make_devices())?;

    const DOMU: DomId = 1;
    let xen = FakeXen::new();
    let domu = xen.create_domain(DOMU, 16).map_err(other)?;
    let mut backend = XenBackend::provision(
        xen.domain(0),
        DOMU,
        BackendConfig {
            devices: vec![rng_dev],
            ..Default::default()
        },
    )?;
    let stop = StopSignal::new().map_err(other)?;
    let stop2 = stop.clone();
    let stats = backend.stats_handle();
    let devices = make_devices();
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let r = GuestInstance::new("bench-xen", InstanceOptions::default(), devices)
            .map_err(other)
            .and_then(|mut inst| backend.run(&mut inst, &stop2).map_err(BenchError::from));
        let _ = tx.send(r);
    });
    let result = (|| {
        let before = xen.stats();
        let fe = XenFrontend::connect(&domu, &FrontendOptions::default())?;
        let at_connect = xen.stats();
        let mut drv = Driver::new(Box::new(fe)).map_err(other)?;
        let xen_ping = pings(
            &mut drv,
            "vmsg PING, fake Xen bus (event channels)",
            opts.iters,
        )?;

        let mut rng = Rng::open(drv, rng_dev).map_err(other)?;
        let maps0 = xen.stats().grant_maps;
        let t = Instant::now();
        for _ in 0..opts.reads {
            rng.read(opts.read_len).map_err(other)?;
        }
        let secs = t.elapsed().as_secs_f64();
        let maps_during = xen.stats().grant_maps - maps0;
        drop(rng);
        let requests = opts.reads as u64;
        // Data pages plus descriptor table, available and used rings.
        let page_refs = requests * (opts.read_len.div_ceil(4096) as u64 + 3);
        let grants = GrantFigures {
            grants_mapped_at_connect: at_connect.grants_mapped - before.grants_mapped,
            map_ops_at_connect: at_connect.grant_maps - before.grant_maps,
            requests,
            page_refs,
            map_ops_during: maps_during,
            hit_rate: 1.0 - maps_during as f64 / page_refs.max(1) as f64,
            bytes_per_sec: (requests * opts.read_len as u64) as f64 / secs.max(1e-9),
        };
        Ok::<_, BenchError>((xen_ping, grants))
    })();
    stop.trigger();
    let served = rx.recv_timeout(Duration::from_secs(10)).map_err(other);
    let _ = server.join();
    let (xen_ping, grants) = result?;
    served??;
    log::debug!("backend stats: {:?}", stats.get());
    Ok(BenchReport {
        local_ping,
        xen_ping,
        grants,
        blk: None,
    })
}

/// [`run`], then [`run_blk`]: every figure of the Xen section of
/// docs/performance.md in one report.
pub fn run_with_blk(
    opts: &BenchOptions,
    make_devices: &mut dyn FnMut() -> DeviceList,
    rng_dev: u16,
    blk_opts: &BlkBenchOptions,
    make_blk: &mut dyn FnMut(&std::path::Path) -> Result<BlkSetup, String>,
) -> Result<BenchReport, BenchError> {
    let mut report = run(opts, make_devices, rng_dev)?;
    report.blk = Some(run_blk(blk_opts, make_blk)?);
    Ok(report)
}

/// What the blk workload runs.
#[derive(Debug, Clone)]
pub struct BlkBenchOptions {
    /// Measured time per bus and queue depth (plus a quarter of it of
    /// discarded warm-up per bus).
    pub duration: Duration,
    /// Size of the image file (rounded down to whole blocks; at least one).
    pub image_bytes: u64,
    /// Queue depths to measure; each is capped at what the queue allows.
    pub depths: Vec<usize>,
    /// Device number of the blk device in the caller's device list.
    pub blk_dev: u16,
    /// Directory for the scratch directory (default: the temporary one).
    pub dir: Option<PathBuf>,
}

impl Default for BlkBenchOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(2),
            image_bytes: 64 << 20,
            depths: vec![1, 16],
            blk_dev: 2,
            dir: None,
        }
    }
}

/// A blk device the caller built on the benchmark's image.
pub struct BlkSetup {
    /// The instance's device list, with a virtio-blk at
    /// [`BlkBenchOptions::blk_dev`].
    pub devices: DeviceList,
    /// The engine, as printed (both buses must get the same).
    pub engine: String,
}

impl std::fmt::Debug for BlkSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The devices are trait objects without `Debug`.
        f.debug_struct("BlkSetup")
            .field(
                "devices",
                &self.devices.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("engine", &self.engine)
            .finish()
    }
}

/// One blk measurement on one bus.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlkRun {
    /// Requests completed (every one with status OK).
    pub requests: u64,
    /// From the first submission to the last completion.
    pub elapsed: Duration,
    /// Reads whose data was compared with the image file (and matched).
    pub verified: u64,
}

impl BlkRun {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: BlkRun) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.verified += other.verified;
    }
}

/// One queue depth on both buses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlkRow {
    /// Requests kept in flight.
    pub depth: usize,
    /// Over the local bus (baseline).
    pub local: BlkRun,
    /// Over the fake Xen bus.
    pub xen: BlkRun,
}

impl BlkRow {
    /// Xen IOPS over local IOPS.
    pub fn ratio(&self) -> f64 {
        self.xen.iops() / self.local.iops().max(1e-9)
    }
}

/// What [`run_blk`] measured.
#[derive(Debug, Clone)]
pub struct BlkReport {
    /// The engine both devices used.
    pub engine: String,
    /// Size of the image.
    pub image_bytes: u64,
    /// Bytes per request.
    pub block: u32,
    /// One row per queue depth.
    pub rows: Vec<BlkRow>,
    /// Grant cache figures of every Xen blk request (warm-ups included).
    pub grants: GrantFigures,
}

impl std::fmt::Display for BlkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  blk: {} B random reads, image {} MiB (page cache), engine {}",
            self.block,
            self.image_bytes >> 20,
            self.engine
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "  blk QD{:<3} local {:>9.0} IOPS  Xen {:>9.0} IOPS  ratio Xen/local {:.2}x  ({} + {} reads checked against the image)",
                r.depth,
                r.local.iops(),
                r.xen.iops(),
                r.ratio(),
                r.local.verified,
                r.xen.verified
            )?;
        }
        let g = &self.grants;
        writeln!(
            f,
            "  blk grant cache: {} grants in {} map ops at connect; {} requests, {} page refs, {} map ops during -> hit rate {:.4}",
            g.grants_mapped_at_connect,
            g.map_ops_at_connect,
            g.requests,
            g.page_refs,
            g.map_ops_during,
            g.hit_rate
        )
    }
}

/// Bytes per blk request.
const BLOCK: u32 = 4096;
/// Descriptors of one read: header, data, status.
const DESCS_PER_READ: usize = 3;
/// Guest pages one blk read references besides its data: the
/// header-and-status slot (64 bytes, 64-aligned: never across a page), the
/// descriptor table, the available ring and the used ring.
const BLK_META_PAGES: u64 = 4;

/// Word `word` of the image: each 8-byte word holds its own index
/// (xor a constant, so zeroes never pass), so a read of the wrong block
/// differs.
fn image_word(word: u64) -> [u8; 8] {
    (word ^ 0x5A17_C0DE_0000_0000).to_le_bytes()
}

/// Writes the image in full, so every read hits written data.
fn fill_image(path: &std::path::Path, bytes: u64) -> Result<(), BenchError> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).map_err(other)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(chunk.len() as u64) as usize;
        for (i, w) in chunk[..n].chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&image_word(at / 8 + i as u64));
        }
        f.write_all(&chunk[..n]).map_err(other)?;
        at += n as u64;
    }
    f.sync_all().map_err(other)
}

/// Removes the scratch directory when dropped.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new(base: Option<&std::path::Path>) -> Result<Self, BenchError> {
        // Unique per call: tests run several benchmarks in one process.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = base.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
        let dir = base.join(format!("vmsg-xen-bench-blk-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(other)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `GuestInstance` serving on its own thread until [`Server::finish`].
#[derive(Debug)]
struct Server {
    stop: StopSignal,
    rx: mpsc::Receiver<Result<(), BenchError>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn spawn(
        serve: impl FnOnce(&StopSignal) -> Result<(), BenchError> + Send + 'static,
    ) -> Result<Self, BenchError> {
        let stop = StopSignal::new().map_err(other)?;
        let stop2 = stop.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = tx.send(serve(&stop2));
        });
        Ok(Self {
            stop,
            rx,
            thread: Some(thread),
        })
    }

    /// Stops the instance and returns how serving ended.
    fn finish(mut self) -> Result<(), BenchError> {
        self.stop.trigger();
        let served = self.rx.recv_timeout(Duration::from_secs(10)).map_err(other);
        // Joined only once it reported: a thread still blocked (in accept,
        // say) is left behind rather than hanging the benchmark.
        if served.is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        served?
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // An error path that never reached `finish`: stop serving.
        self.stop.trigger();
    }
}

/// xorshift64: the random block numbers, the same sequence on both buses.
#[derive(Debug)]
struct Offsets {
    state: u64,
    blocks: u64,
}

impl Offsets {
    fn new(seed: u64, blocks: u64) -> Self {
        Self {
            state: seed | 1,
            blocks: blocks.max(1),
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.blocks) * u64::from(BLOCK)
    }
}

/// 4 KiB random reads on `disk`, `depth` in flight (refilled with
/// `submit` as each completes), for `dur`; then the last read of every
/// slot is compared with `image` at its offset.
fn blk_reads(
    disk: &mut Blk,
    image: &std::fs::File,
    image_bytes: u64,
    depth: usize,
    dur: Duration,
    seed: u64,
    bus: &'static str,
) -> Result<BlkRun, BenchError> {
    use std::os::unix::fs::FileExt as _;

    let bufs: Vec<GuestBuf> = (0..depth)
        .map(|_| disk.alloc_buf(BLOCK))
        .collect::<Result<_, _>>()
        .map_err(other)?;
    let result = (|| {
        let mut offsets = Offsets::new(seed, image_bytes / u64::from(BLOCK));
        // Per slot: the offset of its outstanding (or last) read.
        let mut at = vec![0u64; depth];
        let mut tags: HashMap<Tag, usize> = HashMap::with_capacity(depth);
        let mut submit =
            |disk: &mut Blk, tags: &mut HashMap<Tag, usize>, slot: usize, offset: u64| {
                at[slot] = offset;
                let req = Request::Read {
                    sector: offset / SECTOR_SIZE,
                    buf: bufs[slot],
                };
                disk.submit(0, &req).map(|tag| {
                    tags.insert(tag, slot);
                })
            };
        let mut run = BlkRun::default();
        let t0 = Instant::now();
        let end = t0 + dur;
        for slot in 0..depth {
            submit(disk, &mut tags, slot, offsets.next()).map_err(other)?;
        }
        disk.kick().map_err(other)?;
        let mut live = depth;
        let mut done = Vec::with_capacity(depth);
        let mut last = t0;
        while live > 0 {
            done.clear();
            disk.wait(&mut done).map_err(other)?;
            let now = Instant::now();
            last = now;
            for c in &done {
                if !c.is_ok() {
                    return Err(BenchError::Blk {
                        bus,
                        what: format!("a read completed with status {}", c.status),
                    });
                }
                let slot = tags.remove(&c.tag).ok_or_else(|| BenchError::Blk {
                    bus,
                    what: "completion of an unknown request".into(),
                })?;
                run.requests += 1;
                live -= 1;
                if now < end {
                    submit(disk, &mut tags, slot, offsets.next()).map_err(other)?;
                    live += 1;
                }
            }
            disk.kick().map_err(other)?;
        }
        run.elapsed = last - t0;
        // Outside the timed loop: the data must be the image's.
        let mut got = vec![0u8; BLOCK as usize];
        let mut want = vec![0u8; BLOCK as usize];
        for (slot, &offset) in at.iter().enumerate() {
            disk.read_buf(bufs[slot], &mut got).map_err(other)?;
            image.read_exact_at(&mut want, offset).map_err(other)?;
            if got != want {
                return Err(BenchError::Blk {
                    bus,
                    what: format!("the read at byte {offset} differs from the image"),
                });
            }
            run.verified += 1;
        }
        Ok(run)
    })();
    // After a failure requests may still be in flight into these buffers:
    // they stay allocated (the benchmark is ending) and the first error is
    // the one reported.
    if result.is_ok() {
        for b in bufs {
            disk.free_buf(b).map_err(other)?;
        }
    }
    result
}

/// Grant pool pages the blk workload needs at queue depth `depth`: the
/// data buffers, the header-and-status slots, the three rings of the
/// largest queue the driver asks for (each rounded up, plus a page for
/// alignment), and headroom for the allocator.
fn blk_pool_pages(depth: usize) -> usize {
    let qs = vmsg_driver::blk::DEFAULT_QUEUE_SIZE as usize;
    let pages = |bytes: usize| bytes.div_ceil(4096) + 1;
    let data = depth * (BLOCK as usize).div_ceil(4096);
    let rings = pages(16 * qs) + pages(6 + 2 * qs) + pages(6 + 8 * qs);
    let slots = pages(64 * qs);
    (data + rings + slots) * 2
}

/// The blk workload over both buses (see the module documentation).
/// `make_blk` builds the device list of each bus's instance on the image
/// at the path it is given (called twice; both must report the same
/// engine). Reads go through whatever caching the device uses: the command
/// and the test build it without `O_DIRECT`.
pub fn run_blk(
    opts: &BlkBenchOptions,
    make_blk: &mut dyn FnMut(&std::path::Path) -> Result<BlkSetup, String>,
) -> Result<BlkReport, BenchError> {
    const DOMU: DomId = 1;
    let blocks = (opts.image_bytes / u64::from(BLOCK)).max(1);
    let image_bytes = blocks * u64::from(BLOCK);
    let scratch = Scratch::new(opts.dir.as_deref())?;
    let image_path = scratch.0.join("bench.img");
    fill_image(&image_path, image_bytes)?;
    let image = std::fs::File::open(&image_path).map_err(other)?;
    let local_setup = make_blk(&image_path).map_err(BenchError::Other)?;
    let xen_setup = make_blk(&image_path).map_err(BenchError::Other)?;
    if local_setup.engine != xen_setup.engine {
        return Err(BenchError::Other(format!(
            "the buses got different engines: {} and {}",
            local_setup.engine, xen_setup.engine
        )));
    }
    let engine = local_setup.engine;
    let dev = opts.blk_dev;
    let max_depth = opts.depths.iter().copied().max().unwrap_or(1).max(1);

    // Local bus: as `local_ping`.
    let sock = scratch.0.join("local.sock");
    let listener = LocalBusListener::bind(&sock, LocalServerOptions::default()).map_err(other)?;
    let local_devices = local_setup.devices;
    let local_server = Server::spawn(move |stop| {
        let mut instance =
            GuestInstance::new("bench-blk-local", InstanceOptions::default(), local_devices)
                .map_err(other)?;
        let mut bus = listener.accept().map_err(other)?;
        instance.serve(&mut bus, stop).map(drop).map_err(other)
    })?;

    // Xen bus: as `run`, with a grant pool that holds the workload.
    let xen = FakeXen::new();
    let domu = xen.create_domain(DOMU, 16).map_err(other)?;
    let mut backend = XenBackend::provision(
        xen.domain(0),
        DOMU,
        BackendConfig {
            devices: vec![dev],
            ..Default::default()
        },
    )?;
    let xen_devices = xen_setup.devices;
    let xen_server = Server::spawn(move |stop| {
        let mut inst = GuestInstance::new("bench-blk-xen", InstanceOptions::default(), xen_devices)
            .map_err(other)?;
        backend
            .run(&mut inst, stop)
            .map(drop)
            .map_err(BenchError::from)
    })?;

    let result = (|| {
        let bus = LocalDriverBus::connect(&sock, &LocalClientOptions::default()).map_err(other)?;
        let mut local =
            Blk::open(Driver::new(Box::new(bus)).map_err(other)?, dev).map_err(other)?;

        let fe_opts = FrontendOptions {
            grant_pages: FrontendOptions::default()
                .grant_pages
                .max(blk_pool_pages(max_depth)),
            ..Default::default()
        };
        let before = xen.stats();
        let fe = XenFrontend::connect(&domu, &fe_opts)?;
        let at_connect = xen.stats();
        let mut xdisk = Blk::open(Driver::new(Box::new(fe)).map_err(other)?, dev).map_err(other)?;

        // Both queues are the same size (same device configuration).
        let queue_cap = usize::from(local.queue_size().min(xdisk.queue_size())) / DESCS_PER_READ;
        let maps0 = xen.stats().grant_maps;
        let mut xen_requests = 0u64;
        let mut xen_time = Duration::ZERO;
        let mut rows = Vec::with_capacity(opts.depths.len());
        let half = opts.duration / 2;
        let warm = opts.duration / 4;
        for (i, &want) in opts.depths.iter().enumerate() {
            let depth = want.clamp(1, queue_cap.max(1));
            let seed = 0x9E37_79B9_7F4A_7C15 ^ i as u64;
            let reads = |disk: &mut Blk, d: Duration, bus: &'static str| {
                blk_reads(disk, &image, image_bytes, depth, d, seed, bus)
            };
            // Warm-ups, discarded (the Xen one still counts for the hit
            // rate: its pages are referenced too).
            reads(&mut local, warm, "local")?;
            let w = reads(&mut xdisk, warm, "xen")?;
            xen_requests += w.requests;
            xen_time += w.elapsed;
            // Local, Xen, Xen, local: drift favours neither.
            let mut lr = reads(&mut local, half, "local")?;
            let mut xr = reads(&mut xdisk, half, "xen")?;
            xr.merge(reads(&mut xdisk, half, "xen")?);
            lr.merge(reads(&mut local, half, "local")?);
            xen_requests += xr.requests;
            xen_time += xr.elapsed;
            rows.push(BlkRow {
                depth,
                local: lr,
                xen: xr,
            });
        }
        let maps_during = xen.stats().grant_maps - maps0;
        // Per read: its data pages plus the header-and-status slot, the
        // descriptor table, the available ring and the used ring.
        let page_refs = xen_requests * (u64::from(BLOCK).div_ceil(4096) + BLK_META_PAGES);
        let grants = GrantFigures {
            grants_mapped_at_connect: at_connect.grants_mapped - before.grants_mapped,
            map_ops_at_connect: at_connect.grant_maps - before.grant_maps,
            requests: xen_requests,
            page_refs,
            map_ops_during: maps_during,
            hit_rate: 1.0 - maps_during as f64 / page_refs.max(1) as f64,
            bytes_per_sec: (xen_requests * u64::from(BLOCK)) as f64
                / xen_time.as_secs_f64().max(1e-9),
        };
        // Frontends go first, while their instances still serve.
        drop(xdisk.close().map_err(other)?);
        drop(local.close().map_err(other)?);
        Ok::<_, BenchError>((rows, grants))
    })();
    let local_served = local_server.finish();
    let xen_served = xen_server.finish();
    let (rows, grants) = result?;
    local_served?;
    xen_served?;
    drop(image);
    drop(scratch);
    Ok(BlkReport {
        engine,
        image_bytes,
        block: BLOCK,
        rows,
        grants,
    })
}

// `vmsgctl bench xen` (formerly vmsg-xen's `bench` example): the devices
// and the printing.

const RNG_DEV: u16 = 1;
const BLK_DEV: u16 = 2;

fn devices() -> DeviceList {
    match RngDevice::new("rng", Box::new(HostEntropy), None) {
        Ok(d) => vec![(RNG_DEV, Box::new(d))],
        Err(e) => {
            eprintln!("rng: {e}");
            Vec::new()
        }
    }
}

/// Builds the blk device on `image`: io_uring (the default engine) unless
/// the kernel refuses it, then sync from then on, so both buses get the
/// same engine. Through the page cache: the bus's cost is what is measured.
fn blk_maker() -> impl FnMut(&Path) -> Result<BlkSetup, String> {
    let mut engine = Engine::IoUring;
    let mut label = "io-uring".to_string();
    move |image: &Path| {
        let cfg = |engine| BlkConfig {
            path: image.to_path_buf(),
            direct: false,
            engine,
            ..Default::default()
        };
        let dev = match BlkDevice::new("blk", &cfg(engine)) {
            Err(BlkError::Engine(EngineError::UringSetup(e))) if engine == Engine::IoUring => {
                engine = Engine::Sync;
                label = format!("sync (io_uring unavailable: {e})");
                BlkDevice::new("blk", &cfg(engine))
            }
            other => other,
        }
        .map_err(|e| format!("blk device on {}: {e}", image.display()))?;
        Ok(BlkSetup {
            devices: vec![(BLK_DEV, Box::new(dev))],
            engine: label.clone(),
        })
    }
}

/// Run `vmsgctl bench xen`: print the Xen bus figures, each against the
/// local bus in the same run.
pub fn command(args: &XenArgs) -> ExitCode {
    let mut opts = BenchOptions::default();
    let mut blk = BlkBenchOptions {
        blk_dev: BLK_DEV,
        ..Default::default()
    };
    let value = |name: &str, v: Option<f64>| match v {
        None => Ok(None),
        Some(v) if v >= 0.0 && v.is_finite() => Ok(Some(v)),
        Some(_) => Err(format!("{name} needs a non-negative number")),
    };
    let parsed = value("--blk-secs", args.blk_secs).and_then(|secs| {
        value("--blk-mib", args.blk_mib).map(|mib| {
            if let Some(v) = secs {
                blk.duration = Duration::from_secs_f64(v);
            }
            if let Some(v) = mib {
                blk.image_bytes = (v as u64).max(1) << 20;
            }
        })
    });
    if let Err(e) = parsed {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    if let Some(n) = args.iters {
        opts.iters = n;
    }
    if let Some(n) = args.reads {
        opts.reads = n;
    }
    println!(
        "Xen bus (fake) vs local bus: {} PINGs each, {} rng reads of {} bytes",
        opts.iters, opts.reads, opts.read_len
    );
    let result = if blk.duration.is_zero() {
        run(&opts, &mut devices, RNG_DEV)
    } else {
        println!(
            "virtio-blk: 4 KiB random reads at QD {:?}, {:.1} s per bus and depth (interleaved local, Xen, Xen, local after a warm-up of each)",
            blk.depths,
            blk.duration.as_secs_f64()
        );
        run_with_blk(&opts, &mut devices, RNG_DEV, &blk, &mut blk_maker())
    };
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmsg_devices::blk::engine::{Engine, EngineError};
    use vmsg_devices::blk::{BlkConfig, BlkDevice, BlkError};

    const BLK_DEV: u16 = 2;

    /// Builds the device on `path`, io_uring unless the kernel refuses it.
    fn device_on(path: &std::path::Path) -> Result<BlkSetup, String> {
        let cfg = |engine| BlkConfig {
            path: path.to_path_buf(),
            engine,
            ..Default::default()
        };
        let (dev, engine) = match BlkDevice::new("blk", &cfg(Engine::IoUring)) {
            Err(BlkError::Engine(EngineError::UringSetup(_))) => {
                (BlkDevice::new("blk", &cfg(Engine::Sync)), "sync")
            }
            d => (d, "io-uring"),
        };
        Ok(BlkSetup {
            devices: vec![(BLK_DEV, Box::new(dev.map_err(|e| e.to_string())?))],
            engine: engine.into(),
        })
    }

    fn brief() -> BlkBenchOptions {
        BlkBenchOptions {
            duration: Duration::from_millis(50),
            image_bytes: 1 << 20,
            depths: vec![1, 16],
            blk_dev: BLK_DEV,
            dir: None,
        }
    }

    #[test]
    fn blk_workload_reads_the_image_on_both_buses_without_mapping() {
        let report = run_blk(&brief(), &mut device_on).unwrap();
        assert_eq!(report.image_bytes, 1 << 20);
        let depths: Vec<usize> = report.rows.iter().map(|r| r.depth).collect();
        assert_eq!(depths, [1, 16]);
        for r in &report.rows {
            assert!(
                r.local.requests > 0,
                "QD{}: nothing completed locally",
                r.depth
            );
            assert!(
                r.xen.requests > 0,
                "QD{}: nothing completed over Xen",
                r.depth
            );
            // Two measurements per bus, each checking every slot's last read.
            assert_eq!(r.local.verified, 2 * r.depth as u64);
            assert_eq!(r.xen.verified, 2 * r.depth as u64);
        }
        let g = report.grants;
        assert_eq!(g.map_ops_at_connect, 2, "ring + pool");
        assert_eq!(g.grants_mapped_at_connect, 257);
        assert_eq!(g.map_ops_during, 0, "no grant mapped on the I/O path");
        assert_eq!(g.hit_rate, 1.0);
        let measured: u64 = report.rows.iter().map(|r| r.xen.requests).sum();
        assert!(g.requests >= measured, "warm-ups count too");
        assert_eq!(g.page_refs, g.requests * 5);
        // The report prints every row.
        let text = report.to_string();
        assert!(text.contains("QD1 ") && text.contains("QD16"), "{text}");
    }

    #[test]
    fn blk_workload_refuses_data_other_than_the_image() {
        // The devices serve a zero-filled file instead of the image: every
        // request succeeds, the comparison must not.
        let scratch = Scratch::new(None).unwrap();
        let zeros = scratch.0.join("zeros.img");
        std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
        let opts = BlkBenchOptions {
            depths: vec![1],
            ..brief()
        };
        let err = run_blk(&opts, &mut |_: &std::path::Path| device_on(&zeros)).unwrap_err();
        assert!(
            matches!(&err, BenchError::Blk { what, .. } if what.contains("differs from the image")),
            "{err}"
        );
    }

    // The rng and the test that used to be in vmsg-xen's tests/bus.rs
    // (with its helpers from tests/common).

    /// Entropy that counts: byte `i` of the stream is `i as u8`, so a test can
    /// tell that the bytes really crossed the shared memory.
    #[derive(Debug, Default)]
    pub struct CountingEntropy(pub u64);

    impl vmsg_devices::rng::EntropySource for CountingEntropy {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), vmsg_devices::rng::RngError> {
            for b in buf {
                *b = self.0 as u8;
                self.0 += 1;
            }
            Ok(())
        }
    }

    /// The rng device number the backends serve.
    pub const RNG_DEV: u16 = 1;

    pub fn rng_devices() -> DeviceList {
        vec![(
            RNG_DEV,
            Box::new(RngDevice::new("rng", Box::new(CountingEntropy::default()), None).unwrap()),
        )]
    }

    #[test]
    fn bench_hook_measures_both_buses_and_the_grant_cache() {
        let opts = BenchOptions {
            iters: 300,
            reads: 50,
            read_len: 4096,
        };
        let report = run(&opts, &mut rng_devices, RNG_DEV).unwrap();
        assert_eq!(report.local_ping.rtts.len(), 300);
        assert_eq!(report.xen_ping.rtts.len(), 300);
        assert!(report.ratio() > 0.0);
        let g = report.grants;
        assert_eq!(g.map_ops_at_connect, 2, "ring + pool");
        assert_eq!(g.grants_mapped_at_connect, 257);
        assert_eq!(g.map_ops_during, 0, "no grant mapped on the I/O path");
        assert_eq!(g.hit_rate, 1.0);
        assert_eq!(g.page_refs, 50 * 4);
    }
}
