//! Runs the conformance suite against a device on a vmsgd local-bus socket.
//!
//! `cargo run -p vmsg-driver --example conformance -- SOCKET DEV_NUM [FILTER]`
//! prints one line per case and `N passed, M failed[, K skipped]`; exits 1
//! if any case failed.

use vmsg_backend::local::LocalClientOptions;
use vmsg_driver::conformance::run_suite;
use vmsg_driver::local::connector;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(socket), Some(dev)) = (
        args.first(),
        args.get(1).and_then(|d| d.parse::<u16>().ok()),
    ) else {
        eprintln!("usage: conformance SOCKET DEV_NUM [FILTER]");
        std::process::exit(2);
    };
    let filter = args.get(2).map(String::as_str).unwrap_or("");
    let mut make = connector(socket, LocalClientOptions::default());
    let report = run_suite(&mut make, dev, filter);
    print!("{report}");
    if !report.success() {
        std::process::exit(1);
    }
}
