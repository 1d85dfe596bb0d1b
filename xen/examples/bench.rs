//! Prints the Xen bus figures, each against the local bus in the same run:
//! PING round trip, virtio-blk 4 KiB random-read IOPS at QD1 and QD16, and
//! the grant cache hit rate under an rng and the blk workload.
//!
//! ```sh
//! cargo run --release -p vmsg-xen --example bench -- [ITERS] [READS] [--blk-secs S] [--blk-mib N]
//! ```
//!
//! `--blk-secs` is the measured time per bus and queue depth (default 2;
//! 0 skips the blk workload), `--blk-mib` the image size (default 64).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use vmsg_backend::instance::DeviceList;
use vmsg_devices::blk::engine::{Engine, EngineError};
use vmsg_devices::blk::{BlkConfig, BlkDevice, BlkError};
use vmsg_devices::rng::{HostEntropy, RngDevice};
use vmsg_xen::bench::{BenchOptions, BlkBenchOptions, BlkSetup, run, run_with_blk};

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

fn main() -> ExitCode {
    let mut opts = BenchOptions::default();
    let mut blk = BlkBenchOptions {
        blk_dev: BLK_DEV,
        ..Default::default()
    };
    let mut positional = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| match args.next().map(|v| v.parse::<f64>()) {
            Some(Ok(v)) if v >= 0.0 && v.is_finite() => Ok(v),
            _ => Err(format!("{name} needs a non-negative number")),
        };
        let parsed = match a.as_str() {
            "--blk-secs" => value("--blk-secs").map(|v| blk.duration = Duration::from_secs_f64(v)),
            "--blk-mib" => value("--blk-mib").map(|v| blk.image_bytes = (v as u64).max(1) << 20),
            _ => {
                // The historical positional arguments: ITERS, then READS.
                match (positional, a.parse()) {
                    (0, Ok(n)) => opts.iters = n,
                    (1, Ok(n)) => opts.reads = n,
                    _ => {}
                }
                positional += 1;
                Ok(())
            }
        };
        if let Err(e) = parsed {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
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
