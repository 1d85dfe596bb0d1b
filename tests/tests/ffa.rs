//! The conformance suite over the FF-A bus: vmsg-driver (spec v2) drives
//! the partition's devices — the same bus, dispatch and device code the
//! secure partition runs — through the simulated SPMC, with the bus layer a
//! Linux FF-A driver has (VERSION, MEM_SHARE + AREA_SHARE, EVENT_POLL,
//! RESET between connections). The real secure world: tests/ffa-qemu.

use std::time::Duration;

use vmsg_device_core::blk::BlkDevice;
use vmsg_device_core::host::CoreDevice;
use vmsg_device_core::rng::RngDevice;
use vmsg_driver::conformance::{Outcome, SuiteConfig, run_suite_with};
use vmsg_driver::ffa::{HostEntropy, SimFfaWorld, VecStore, connector};
use vmsg_driver::wire::Profile;

fn world() -> std::rc::Rc<std::cell::RefCell<SimFfaWorld>> {
    let devices: Vec<(u16, Box<dyn CoreDevice>)> = vec![
        (0, Box::new(RngDevice::new(HostEntropy))),
        (
            1,
            Box::new(BlkDevice::new(
                VecStore(vec![0; 1 << 20]),
                false,
                64,
                b"ffa-sim",
            )),
        ),
    ];
    SimFfaWorld::new(devices, 4 << 20).expect("simulated secure world")
}

#[test]
fn the_conformance_suite_passes_over_ffa() {
    let w = world();
    let cfg = SuiteConfig {
        profile: Profile::V2,
        timeout: Duration::from_millis(200),
        drop_window: Duration::from_millis(10),
        ..SuiteConfig::default()
    };
    for dev_num in [0u16, 1] {
        let mut make = connector(w.clone());
        let r = run_suite_with(&mut make, dev_num, &cfg);
        eprintln!(
            "FF-A, device {dev_num}: {}",
            r.to_string().lines().last().unwrap_or_default()
        );
        assert_eq!(r.failed(), 0, "device {dev_num}:\n{r}");
        assert!(r.passed() >= 40, "device {dev_num}:\n{r}");
        assert!(
            r.get("vq.set_load_disabled_then_enable")
                .is_some_and(|c| c.outcome == Outcome::Pass),
            "{r}"
        );
    }
    let w = w.borrow();
    assert_eq!(w.violations(), 0, "the partition broke the SPMC's rules");
    let c = w.bus().counters();
    assert!(c.resets > 0 && c.areas_shared > 1, "{c:?}");
}
