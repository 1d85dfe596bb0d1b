//! Probe foreign mapping on real Xen: map frames `FIRST..FIRST+COUNT` of a
//! domain through privcmd (`MMAPBATCH_V2`), as the backend's foreign mode
//! does with a domain's configured `ranges`, and print what happened, one
//! line:
//!
//! ```text
//! VMSG-FOREIGN domid=1 frames=0+16 mapped=16 nonzero-pages=3
//! VMSG-FOREIGN domid=1 frames=0+16 failed: 16 of 16 frames ... (first: ...)
//! ```
//!
//! `tests/xen-qemu/` runs it against the PV domU (informational: it records
//! what foreign mode by frame number does on x86 PV, docs/xen-bus.md §10).
//!
//! ```sh
//! foreign-probe DOMID FIRST COUNT
//! ```

use std::process::ExitCode;

use vmsg_xen::{ForeignMapper, MappedPages, XenPrivcmd};

fn main() -> ExitCode {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let [domid, first, count] = args[..] else {
        eprintln!("usage: foreign-probe DOMID FIRST COUNT");
        return ExitCode::from(2);
    };
    let Ok(domid) = u16::try_from(domid) else {
        eprintln!("foreign-probe: {domid} is not a domid");
        return ExitCode::from(2);
    };
    let count = count.min(1024);
    let what = format!("VMSG-FOREIGN domid={domid} frames={first}+{count}");
    let privcmd = match XenPrivcmd::open() {
        Ok(p) => p,
        Err(e) => {
            println!("{what} failed: open privcmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gfns: Vec<u64> = (first..first.saturating_add(count)).collect();
    match privcmd.map_foreign(domid, &gfns, false) {
        Ok(m) => {
            // Read through the mapping: how many pages hold anything.
            let vs = m.volatile_slice();
            let mut page = vec![0u8; 4096];
            let mut nonzero = 0;
            for i in 0..gfns.len() {
                let Ok(s) = vs.subslice(i * 4096, 4096) else {
                    break;
                };
                s.copy_to(&mut page[..]);
                if page.iter().any(|&b| b != 0) {
                    nonzero += 1;
                }
            }
            println!("{what} mapped={} nonzero-pages={nonzero}", gfns.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{what} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
