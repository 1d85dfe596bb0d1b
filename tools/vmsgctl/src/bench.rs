//! `vmsgctl bench`: performance measured against baselines taken in the same
//! run (these machines are noisy), printed as ratios.
//!
//! `rtt`: request→response round trip over the local bus (PING and
//! GET_DEVICE_STATUS through the full driver and daemon stacks) next to a
//! raw eventfd ping-pong and a raw shared-memory ring ping-pong between two
//! threads, in doorbell mode and in polling mode.
//!
//! `blk`: virtio-blk I/O through the whole stack against the same I/O issued
//! directly on the same image file (see [`blk`]).
//!
//! `queue`: the device side of a split virtqueue with virtio-queue (the std
//! daemon's) against vmsg-device-core's `SplitQueue` (the FF-A
//! partition's), on the same guest memory (see [`queue`]).
//! `scale`: what N guests cost a daemon process (RSS, threads, fds, idle
//! CPU and wake-ups) against the same daemon with one guest (`scale.rs`).
//!
//! `xen`: the Xen bus (fake hypervisor) against the local bus: PING round
//! trip, virtio-blk random reads, grant cache hit rate (`xen.rs`). It links
//! vmsg-xen's fake hypervisor and domU frontend, so it is built only with the
//! feature `xen-bench` (and for the tests).

mod blk;
mod queue;
pub(crate) mod scale;
#[cfg(any(test, feature = "xen-bench"))]
mod xen;

use std::alloc::Layout;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use vmm_sys_util::eventfd::EventFd;
use vmsg_driver::Driver;
use vmsg_transport::ring::{self, RingParams, Role, SharedRegion};

use crate::{AnyError, OwnDaemon};

/// Which benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Message round trip vs raw eventfd and raw ring ping-pongs.
    Rtt {
        /// Round trips per measurement.
        #[arg(long, default_value_t = 20000)]
        iters: usize,
    },
    /// virtio-blk through driver, bus and daemon vs the same I/O directly
    /// on the image (same engine, same queue depth).
    Blk(blk::BlkArgs),
    /// Split virtqueue, device side: virtio-queue (std daemon) vs
    /// vmsg-device-core's SplitQueue (FF-A partition) popping the same
    /// chains from the same guest memory, in chains per second.
    Queue(queue::QueueArgs),
    /// The Xen bus over the fake hypervisor vs the local bus in the same
    /// run: PING round trip, virtio-blk 4 KiB random-read IOPS at QD1 and
    /// QD16, grant cache hit rate.
    Xen(XenArgs),
    /// What N guests cost a vmsgd process: RSS, threads and fds with N idle
    /// and N connected guests, CPU and wake-ups over an idle window, against
    /// the same daemon with one guest.
    Scale(scale::ScaleArgs),
}

/// Run a benchmark.
pub fn run(which: &BenchCommand) -> Result<ExitCode, AnyError> {
    match which {
        BenchCommand::Rtt { iters } => rtt(*iters),
        BenchCommand::Blk(args) => blk::run(args),
        BenchCommand::Queue(args) => queue::run(args),
        BenchCommand::Xen(args) => xen_bench(args),
        BenchCommand::Scale(args) => scale::run(args),
    }
}

/// Options of `vmsgctl bench xen`.
#[derive(Debug, Args)]
pub struct XenArgs {
    /// PING round trips per bus (default 20000).
    pub iters: Option<usize>,
    /// rng reads of 4 KiB over the Xen bus (default 2000).
    pub reads: Option<usize>,
    /// Measured seconds of the blk workload per bus and queue depth
    /// (default 2; 0 skips it).
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub blk_secs: Option<f64>,
    /// Size of the blk workload's image in MiB (default 64).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub blk_mib: Option<f64>,
}

#[cfg(any(test, feature = "xen-bench"))]
fn xen_bench(args: &XenArgs) -> Result<ExitCode, AnyError> {
    Ok(xen::command(args))
}

#[cfg(not(any(test, feature = "xen-bench")))]
fn xen_bench(_: &XenArgs) -> Result<ExitCode, AnyError> {
    Err(
        "`bench xen` runs vmsg-xen's fake hypervisor, which this vmsgctl was built without: \
         cargo run --release -p vmsgctl --features xen-bench -- bench xen"
            .into(),
    )
}

/// Round-trip times of one measurement.
struct Sample {
    name: &'static str,
    rtts: Vec<Duration>,
}

impl Sample {
    fn median(&self) -> Duration {
        let mut v = self.rtts.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    fn p99(&self) -> Duration {
        let mut v = self.rtts.clone();
        v.sort();
        v.get(v.len() * 99 / 100).copied().unwrap_or_default()
    }

    fn print(&self, baseline: Option<(&Sample, f64)>) {
        print!(
            "  {:<44} median {:>9.2?}  p99 {:>9.2?}",
            self.name,
            self.median(),
            self.p99()
        );
        if let Some((base, target)) = baseline {
            let ratio = self.median().as_secs_f64() / base.median().as_secs_f64().max(1e-12);
            print!(
                "  {ratio:>5.2}x {} (target <= {target}x: {})",
                base.name,
                if ratio <= target { "met" } else { "NOT met" }
            );
        }
        println!();
    }
}

fn timed(
    iters: usize,
    mut op: impl FnMut() -> Result<(), AnyError>,
) -> Result<Vec<Duration>, AnyError> {
    // Warm up caches, page tables and the peer thread's wake-up path.
    for _ in 0..iters.min(1000) {
        op()?;
    }
    let mut rtts = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        op()?;
        rtts.push(t.elapsed());
    }
    Ok(rtts)
}

/// Two threads bouncing a counter through two eventfds: the floor for any
/// doorbell-driven round trip.
fn eventfd_pingpong(iters: usize) -> Result<Sample, AnyError> {
    let ping = EventFd::new(0)?;
    let pong = EventFd::new(0)?;
    let (ping2, pong2) = (ping.try_clone()?, pong.try_clone()?);
    let total = iters + iters.min(1000);
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..total {
            ping2.read()?;
            pong2.write(1)?;
        }
        Ok(())
    });
    let rtts = timed(iters, || {
        ping.write(1)?;
        pong.read()?;
        Ok(())
    })?;
    echo.join().map_err(|_| "echo thread panicked")??;
    Ok(Sample {
        name: "raw eventfd ping-pong (2 threads)",
        rtts,
    })
}

/// Page-aligned zeroed memory standing in for a shared ring region.
struct Region {
    ptr: *mut u8,
    layout: Layout,
}

impl Region {
    fn new(len: usize) -> Result<Self, AnyError> {
        let layout = Layout::from_size_align(len, 4096)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".into());
        }
        Ok(Self { ptr, layout })
    }

    fn shared(&self) -> SharedRegion {
        // SAFETY: `ptr` is valid for `layout.size()` bytes until `self` is
        // dropped, which happens after both ring users are joined.
        unsafe { SharedRegion::from_raw(self.ptr, self.layout.size()) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Two threads bouncing a 16-byte frame through the message ring, both
/// spinning: the floor for a polling round trip.
fn ring_pingpong(iters: usize) -> Result<Sample, AnyError> {
    let params = RingParams {
        slot_size: 264,
        slots: 64,
    };
    let region = Region::new(ring::required_size(params.slot_size, params.slots))?;
    let (mut drv_tx, mut drv_rx) = ring::init(&region.shared(), params)?;
    let (mut dev_tx, mut dev_rx) = ring::attach(&region.shared(), Role::Device)?;
    let total = iters + iters.min(1000);
    let echo = std::thread::spawn(move || -> Result<(), String> {
        let mut buf = [0u8; 264];
        for _ in 0..total {
            let n = loop {
                if let Some(n) = dev_rx.try_pop(&mut buf).map_err(|e| e.to_string())? {
                    break n;
                }
                std::hint::spin_loop();
            };
            dev_tx.try_push(&buf[..n]).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let frame = [0x02u8, 0x03, 0, 0, 1, 0, 12, 0, 1, 2, 3, 4];
    let mut buf = [0u8; 264];
    let rtts = timed(iters, || {
        drv_tx.try_push(&frame)?;
        loop {
            if drv_rx.try_pop(&mut buf)?.is_some() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
    })?;
    echo.join().map_err(|_| "echo thread panicked")??;
    drop(region);
    Ok(Sample {
        name: "raw ring ping-pong, polling (2 threads)",
        rtts,
    })
}

fn vmsg_rtt(socket: &Path, polling: bool, iters: usize) -> Result<(Sample, Sample), AnyError> {
    let mut drv = Driver::new(crate::connect_with(socket, polling)?)?;
    let dev = drv
        .discover()?
        .first()
        .copied()
        .ok_or("the daemon has no device")?;
    let mut data = 0u32;
    let ping = timed(iters, || {
        data = data.wrapping_add(1);
        drv.ping(data)?;
        Ok(())
    })?;
    let status = timed(iters, || {
        drv.get_device_status(dev)?;
        Ok(())
    })?;
    let (p, s) = if polling {
        (
            "vmsg PING over the local bus, polling",
            "vmsg GET_DEVICE_STATUS, polling",
        )
    } else {
        (
            "vmsg PING over the local bus, doorbells",
            "vmsg GET_DEVICE_STATUS, doorbells",
        )
    };
    Ok((
        Sample {
            name: p,
            rtts: ping,
        },
        Sample {
            name: s,
            rtts: status,
        },
    ))
}

fn rtt(iters: usize) -> Result<ExitCode, AnyError> {
    println!(
        "round trip, {iters} per measurement, this run's baselines (driver and daemon are threads of this process, talking over the local bus: socket handshake, memfd rings, eventfd doorbells):"
    );
    let efd = eventfd_pingpong(iters)?;
    efd.print(None);
    let ring = ring_pingpong(iters)?;
    ring.print(None);
    let rng = "[[guest.device]]\nkind = \"rng\"\n";
    {
        let daemon = OwnDaemon::start(rng, "")?;
        let (ping, status) = vmsg_rtt(&daemon.socket, false, iters)?;
        ping.print(Some((&efd, 1.5)));
        status.print(Some((&efd, 1.5)));
    }
    {
        // The most the configuration allows (10 ms): requests follow each
        // other much faster, so the daemon spins throughout.
        let daemon = OwnDaemon::start(rng, ", poll_spin_us = 10000")?;
        let (ping, status) = vmsg_rtt(&daemon.socket, true, iters)?;
        ping.print(Some((&ring, 2.0)));
        status.print(Some((&ring, 2.0)));
    }
    Ok(ExitCode::SUCCESS)
}
