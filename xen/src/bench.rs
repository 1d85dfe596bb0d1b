//! Benchmark hook: message round trip over the (fake) Xen bus as a ratio to
//! the local bus measured in the same run, and the grant cache's hit rate
//! under an rng workload. `vmsgctl bench` can call [`run`];
//! `cargo run --release -p vmsg-xen --example bench` prints the figures.
//!
//! Both buses run the same stacks: vmsg-driver on one thread, a
//! `GuestInstance` on another, doorbell mode (the Xen frontend has no
//! polling mode). What differs is the bus: the local bus's eventfds and
//! memfds versus the Xen bus's event channels (eventfd-backed in the fake,
//! plus the fake's bookkeeping under a lock) and granted pages. The fake
//! has no hypercall cost, so the ratio measures our code, not Xen's.
//!
//! Hit rate: every request the rng workload makes references guest pages
//! (the data buffer's pages, and the descriptor table, available and used
//! rings). A reference that needs a new grant mapping is a miss; the
//! backend's gntdev map operations during the workload are counted by the
//! fake hypervisor. With the persistent pool (docs/xen-bus.md §6) every
//! reference is a hit after the connection's one-time mapping.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error;
use vmsg_backend::instance::{DeviceList, GuestInstance, InstanceOptions, StopSignal};
use vmsg_backend::local::{LocalBusListener, LocalClientOptions, LocalServerOptions};
use vmsg_driver::local::LocalDriverBus;
use vmsg_driver::{Driver, Rng};

use crate::DomId;
use crate::bus::{BackendConfig, FrontendOptions, XenBackend, XenBusError, XenFrontend};
use crate::fake::FakeXen;

/// Errors of the benchmark.
#[derive(Debug, Error)]
pub enum BenchError {
    /// The Xen bus failed.
    #[error("xen bus: {0}")]
    Xen(#[from] XenBusError),
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
    /// rng requests completed.
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
    /// Grant cache figures.
    pub grants: GrantFigures,
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
        )
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
    })
}
