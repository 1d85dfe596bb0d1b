//! Shared test scaffolding: a fake machine with a dom0 backend thread
//! serving an rng over the Xen bus, and fake domUs running the frontend.

#![allow(dead_code, clippy::unwrap_used)]

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::mpsc;
use vmsg_backend::instance::{DeviceList, GuestInstance, InstanceOptions, StopSignal};
use vmsg_devices::rng::{EntropySource, RngDevice, RngError};

use vmsg_xen::DomId;
use vmsg_xen::bus::{BackendConfig, RunEnd, StatsHandle, XenBackend, XenBusError};
use vmsg_xen::fake::FakeXen;

/// Entropy that counts: byte `i` of the stream is `i as u8`, so a test can
/// tell that the bytes really crossed the shared memory.
#[derive(Debug, Default)]
pub struct CountingEntropy(pub u64);

impl EntropySource for CountingEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RngError> {
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

/// A dom0 backend serving one domain on its own thread.
pub struct Backend {
    pub domid: DomId,
    pub stop: StopSignal,
    pub stats: StatsHandle,
    pub be_path: String,
    thread: Option<JoinHandle<()>>,
    done: mpsc::Receiver<Result<RunEnd, XenBusError>>,
}

impl Backend {
    /// Provision `domid`'s device and serve `devices` on it.
    pub fn start(xen: &FakeXen, domid: DomId, cfg: BackendConfig, devices: DeviceList) -> Self {
        let mut backend = XenBackend::provision(xen.domain(0), domid, cfg).unwrap();
        let stop = StopSignal::new().unwrap();
        let stats = backend.stats_handle();
        let be_path = backend.backend_path().to_owned();
        let stop2 = stop.clone();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("dom0-backend-{domid}"))
            .spawn(move || {
                let mut instance =
                    GuestInstance::new(format!("dom{domid}"), InstanceOptions::default(), devices)
                        .unwrap();
                let _ = tx.send(backend.run(&mut instance, &stop2));
            })
            .unwrap();
        Self {
            domid,
            stop,
            stats,
            be_path,
            thread: Some(thread),
            done,
        }
    }

    /// Stop the backend and return how its loop ended.
    pub fn stop(mut self) -> RunEnd {
        self.stop.trigger();
        self.join()
    }

    /// Wait (bounded) for the backend loop to end by itself.
    pub fn join(&mut self) -> RunEnd {
        let t = self.thread.take().expect("joined once");
        let end = self
            .done
            .recv_timeout(Duration::from_secs(10))
            .expect("backend thread did not end within 10 s");
        t.join().expect("backend thread panicked");
        end.expect("backend run failed")
    }

    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.trigger();
            let _ = t.join();
        }
    }
}

/// Wait (bounded, loudly) until `cond` holds, re-checking whenever the
/// thread is scheduled again.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::yield_now();
    }
}
