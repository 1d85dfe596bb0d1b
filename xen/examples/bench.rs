//! Prints the Xen bus figures: PING round trip over the fake Xen bus as a
//! ratio to the local bus (same run), and the grant cache hit rate under an
//! rng workload.
//!
//! ```sh
//! cargo run --release -p vmsg-xen --example bench -- [ITERS] [READS]
//! ```

use std::process::ExitCode;

use vmsg_backend::instance::DeviceList;
use vmsg_devices::rng::{HostEntropy, RngDevice};
use vmsg_xen::bench::{BenchOptions, run};

const RNG_DEV: u16 = 1;

fn devices() -> DeviceList {
    match RngDevice::new("rng", Box::new(HostEntropy), None) {
        Ok(d) => vec![(RNG_DEV, Box::new(d))],
        Err(e) => {
            eprintln!("rng: {e}");
            Vec::new()
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut opts = BenchOptions::default();
    if let Some(n) = args.next().and_then(|a| a.parse().ok()) {
        opts.iters = n;
    }
    if let Some(n) = args.next().and_then(|a| a.parse().ok()) {
        opts.reads = n;
    }
    println!(
        "Xen bus (fake) vs local bus: {} PINGs each, {} rng reads of {} bytes",
        opts.iters, opts.reads, opts.read_len
    );
    match run(&opts, &mut devices, RNG_DEV) {
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
