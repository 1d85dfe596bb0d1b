//! vmsgd serving virtio-rng and virtio-blk on the Linux RFC loopback bus,
//! with the kernel side played by the fake (`vmsg_backend::linux_user::
//! fake_kernel`, interop §3.2) and the kernel's virtio drivers by the
//! vmsg-driver frontends, speaking RFC2 in 44-byte frames.
//!
//! The kernel side runs as the kernel does: ADD probes the device inside the
//! ioctl (DEVICE_INFO, then the driver's init of §3.3) on the registrar
//! thread while vmsgd answers on its reader thread; every transfer waits for
//! a response-typed frame, EVENT_AVAIL included; completions arrive as
//! EVENT_USED writes; REMOVE runs the driver's remove and a reset.
//!
//! The vmsg-driver types are not `Send`, so the "kernel drivers" live on one
//! worker thread and the prober and the test hand it jobs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;
use vmsg_backend::instance::{GuestInstance, InstanceOptions, ServeEnd, StopSignal};
use vmsg_backend::linux_user::fake_kernel::{FakeKernelOptions, FakeLoopbackKernel};
use vmsg_backend::linux_user::{FRAME_SIZE, LinuxUserBus, serve_linux_user};
use vmsg_devices::blk::engine::Engine;
use vmsg_devices::blk::{BlkConfig, BlkDevice};
use vmsg_devices::rng::{HostEntropy, RngDevice};
use vmsg_driver::blk::Blk;
use vmsg_driver::device::VirtioDevice;
use vmsg_driver::rng::Rng;
use vmsg_driver::wire::Profile;
use vmsg_driver::{BusIoError, Driver, DriverBus};
use vmsg_proto::Profile as WireProfile;

/// How long a job on the kernel-driver thread may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// The kernel transport of one device, as a vmsg-driver bus: a send is one
/// loopback transfer (it returns once the device answered), receives are
/// the responses of those transfers and the device's EVENT_USED writes.
struct KernelTransport {
    k: FakeLoopbackKernel,
    dev_id: u32,
    inbox: VecDeque<[u8; FRAME_SIZE]>,
    mem: Arc<GuestMemoryMmap<()>>,
}

impl DriverBus for KernelTransport {
    fn max_msg_size(&self) -> usize {
        FRAME_SIZE
    }
    fn profile(&self) -> Profile {
        Profile::Rfc2
    }
    fn transport_features(&self) -> u32 {
        0
    }
    fn send(&mut self, frame: &[u8]) -> Result<(), BusIoError> {
        if let Some(r) = self.k.transfer(frame)? {
            self.inbox.push_back(r);
        }
        Ok(())
    }
    fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<usize>, BusIoError> {
        let f = match self.inbox.pop_front() {
            Some(f) => Some(f),
            None => self
                .k
                .next_event(self.dev_id, timeout.unwrap_or(Duration::from_secs(1))),
        };
        Ok(f.map(|f| {
            buf[..FRAME_SIZE].copy_from_slice(&f);
            FRAME_SIZE
        }))
    }
    fn memory(&self) -> &Arc<GuestMemoryMmap<()>> {
        &self.mem
    }
}

/// The kernel's virtio drivers bound to the loopback devices.
#[derive(Default)]
struct Drivers {
    rng: Option<Rng>,
    blk: Option<Blk>,
}

type Job = Box<dyn FnOnce(&mut Drivers) + Send>;

/// A handle on the kernel-driver thread.
#[derive(Clone)]
struct KernelDrivers {
    jobs: Sender<Job>,
}

impl KernelDrivers {
    fn start() -> (Self, JoinHandle<()>) {
        let (jobs, rx) = channel::<Job>();
        let t = std::thread::spawn(move || {
            let mut d = Drivers::default();
            for job in rx {
                job(&mut d);
            }
        });
        (Self { jobs }, t)
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Drivers) -> R + Send + 'static,
    ) -> Result<R, String> {
        let (tx, rx) = channel();
        self.jobs
            .send(Box::new(move |d| {
                let _ = tx.send(f(d));
            }))
            .map_err(|_| "kernel-driver thread gone".to_string())?;
        rx.recv_timeout(JOB_TIMEOUT)
            .map_err(|e| format!("kernel-driver job: {e}"))
    }
}

/// Pool bytes each device's driver allocates from (the kernel shares one
/// DMA allocator; vmsg-driver has one per session, so each gets a window).
const WINDOW: u64 = 1 << 20;

/// virtio_dev_probe(): bind the driver matching the device id.
fn probe(k: &FakeLoopbackKernel, d: &mut Drivers, id: u32) -> Result<(), String> {
    let mem = k
        .pool_window(u64::from(id) * WINDOW, WINDOW)
        .map_err(|e| e.to_string())?;
    let bus = KernelTransport {
        k: k.clone(),
        dev_id: id,
        inbox: VecDeque::new(),
        mem,
    };
    let drv = Driver::new(Box::new(bus)).map_err(|e| e.to_string())?;
    let dev = VirtioDevice::probe(drv, id as u16).map_err(|e| e.to_string())?;
    match dev.info().device_id {
        4 => d.rng = Some(Rng::open(dev.into_driver(), id as u16).map_err(|e| e.to_string())?),
        2 => d.blk = Some(Blk::open(dev.into_driver(), id as u16).map_err(|e| e.to_string())?),
        other => return Err(format!("no driver for device id {other}")),
    }
    Ok(())
}

/// vmsgd's side: an rng at 0 and a blk at 1 served on the loopback.
fn vmsgd(
    k: &FakeLoopbackKernel,
    image: &std::path::Path,
    kernel_remove: bool,
) -> (StopSignal, JoinHandle<ServeEnd>) {
    let mut bus = LinuxUserBus::with_kernel(k.kernel(), k.options().pool_base)
        .expect("bus")
        .with_kernel_remove(kernel_remove);
    let rng = RngDevice::new("lb/rng0", Box::new(HostEntropy), None).expect("rng");
    let blk = BlkDevice::new(
        "lb/blk1",
        &BlkConfig {
            path: image.to_path_buf(),
            engine: Engine::Sync,
            serial: "loopback-disk".into(),
            ..BlkConfig::default()
        },
    )
    .expect("blk");
    let mut instance = GuestInstance::new(
        "lb",
        InstanceOptions {
            profile: WireProfile::Rfc2,
            ..InstanceOptions::default()
        },
        vec![(0, Box::new(rng)), (1, Box::new(blk))],
    )
    .expect("instance");
    let stop = StopSignal::new().expect("stop");
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        serve_linux_user(&mut instance, &mut bus, &s).expect("serve_linux_user")
    });
    (stop, t)
}

#[test]
fn vmsgd_serves_rng_and_blk_to_the_loopback_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");

    // A kernel whose REMOVE works (the RFC one deadlocks), so that vmsgd's
    // kernel_remove path is exercised with the drivers' remove.
    let k = FakeLoopbackKernel::new(FakeKernelOptions {
        remove_deadlocks: false,
        ..FakeKernelOptions::default()
    })
    .expect("fake kernel");
    let (drivers, drivers_thread) = KernelDrivers::start();
    let (probed_tx, probed) = channel();
    {
        let (k2, d) = (k.clone(), drivers.clone());
        k.set_prober(Box::new(move |id| {
            let k3 = k2.clone();
            let r = d.call(move |drv| probe(&k3, drv, id))?;
            let _ = probed_tx.send((id, r.clone()));
            r
        }));
    }
    {
        let d = drivers.clone();
        k.set_remover(Box::new(move |id| {
            // The driver's remove: release the frontend (its close resets
            // the device, still served by vmsgd).
            let _ = d.call(move |drv| match id {
                0 => drop(drv.rng.take().map(Rng::close)),
                _ => drop(drv.blk.take().map(Blk::close)),
            });
        }));
    }

    let (stop, served) = vmsgd(&k, &image, true);
    // ADD of each device returns only after the driver bound.
    for want in [0u32, 1] {
        let (id, r) = probed.recv_timeout(JOB_TIMEOUT).expect("probe");
        assert_eq!(id, want);
        r.unwrap_or_else(|e| panic!("probe of device {id}: {e}"));
    }
    assert_eq!(k.devices(), vec![0, 1]);

    // virtio-rng: entropy through EVENT_AVAIL / EVENT_USED on the loopback.
    let bytes = drivers
        .call(|d| {
            d.rng
                .as_mut()
                .map(|r| r.read(5000).map_err(|e| e.to_string()))
        })
        .expect("job")
        .expect("rng bound")
        .expect("rng read");
    assert_eq!(bytes.len(), 5000);
    assert!(bytes.iter().any(|&b| b != 0));

    // virtio-blk: a write read back, flushed, and on the image afterwards.
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let d2 = data.clone();
    let (back, serial) = drivers
        .call(move |d| -> Result<(Vec<u8>, String), String> {
            let blk = d.blk.as_mut().ok_or("blk not bound")?;
            blk.write(8, &d2).map_err(|e| e.to_string())?;
            blk.flush().map_err(|e| e.to_string())?;
            let mut back = vec![0u8; d2.len()];
            blk.read(8, &mut back).map_err(|e| e.to_string())?;
            Ok((back, blk.serial().map_err(|e| e.to_string())?))
        })
        .expect("job")
        .expect("blk i/o");
    assert_eq!(back, data);
    assert_eq!(serial, "loopback-disk");
    let on_disk = std::fs::read(&image).expect("image");
    assert_eq!(&on_disk[8 * 512..8 * 512 + data.len()], &data[..]);

    // Shutdown: REMOVE (driver remove + reset) while vmsgd still serves.
    stop.trigger();
    assert_eq!(served.join().expect("vmsgd thread"), ServeEnd::Stopped);
    assert!(k.devices().is_empty());

    let s = k.stats();
    assert_eq!(s.timeouts, 0, "a transfer went unanswered: {s:?}");
    assert_eq!(
        (s.bad_reads, s.bad_writes, s.unsupported, s.late_responses),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert!(s.used_events > 0, "{s:?}");
    assert!(s.probe_errors.is_empty(), "{s:?}");
    // The probe and remove hold the last job senders.
    k.unbind_drivers();
    drop(drivers);
    drivers_thread.join().expect("kernel-driver thread");
}

#[test]
fn a_device_without_a_driver_still_registers_and_the_probe_error_is_kept() {
    // The fake's own rules on ADD: DEVICE_INFO must report 64 feature bits
    // and VERSION_1 + ACCESS_PLATFORM; vmsgd's devices pass them. A probe
    // that fails (no driver here) does not fail ADD, as in Linux.
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let k = FakeLoopbackKernel::new(FakeKernelOptions::default()).expect("fake kernel");
    let (tx, rx) = channel();
    k.set_prober(Box::new(move |id| {
        let _ = tx.send(id);
        Err("no driver bound in this test".into())
    }));
    let (stop, served) = vmsgd(&k, &image, false);
    assert_eq!(rx.recv_timeout(JOB_TIMEOUT).expect("probe"), 0);
    assert_eq!(rx.recv_timeout(JOB_TIMEOUT).expect("probe"), 1);
    stop.trigger();
    assert_eq!(served.join().expect("vmsgd"), ServeEnd::Stopped);
    let s = k.stats();
    assert_eq!(s.probe_errors.len(), 2, "{s:?}");
    assert_eq!(s.timeouts, 0, "{s:?}");
    // The default: this kernel's REMOVE deadlocks, so vmsgd leaves them.
    assert_eq!(s.removes, 0, "{s:?}");
    assert_eq!(k.devices(), vec![0, 1]);
}
