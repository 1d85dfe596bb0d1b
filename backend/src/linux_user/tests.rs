//! The loopback bus against the fake kernel side, with raw RFC2 frames (the
//! vmsg-driver frontends drive it in `tests/tests/linux_user.rs`).

use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::Queue;
use vmsg_proto::Profile;

use super::fake_kernel::{FakeKernelOptions, FakeLoopbackKernel};
use super::*;
use crate::bus::Bus;
use crate::device::{DeviceError, QueueOutcome, VirtioDevice};
use crate::instance::{GuestInstance, InstanceOptions, ServeEnd, StopSignal};
use crate::memory::GuestMemory;

/// A device that never completes anything: enough for transport traffic.
struct Idle;

impl VirtioDevice for Idle {
    fn name(&self) -> &str {
        "idle"
    }
    fn device_type(&self) -> u32 {
        4
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[8]
    }
    fn process_queue(
        &mut self,
        _index: u16,
        _queue: &mut Queue,
        _mem: &GuestMemory,
    ) -> Result<QueueOutcome, DeviceError> {
        Ok(QueueOutcome::default())
    }
    fn reset(&mut self) {}
}

/// A fake RFC kernel (whose REMOVE deadlocks).
fn fake(timeout: Duration) -> FakeLoopbackKernel {
    fake_with(timeout, true)
}

fn fake_with(timeout: Duration, remove_deadlocks: bool) -> FakeLoopbackKernel {
    FakeLoopbackKernel::new(FakeKernelOptions {
        response_timeout: timeout,
        remove_deadlocks,
        ..FakeKernelOptions::default()
    })
    .expect("fake kernel")
}

struct Served {
    stop: StopSignal,
    control: crate::hotplug::DeviceControl,
    thread: Option<JoinHandle<(Result<ServeEnd, LinuxUserError>, LinuxUserStats)>>,
}

impl Served {
    fn start(k: &FakeLoopbackKernel, devs: &[u16]) -> Self {
        Self::start_with(k, devs, false)
    }

    fn start_with(k: &FakeLoopbackKernel, devs: &[u16], kernel_remove: bool) -> Self {
        let mut bus = LinuxUserBus::with_kernel(k.kernel(), k.options().pool_base)
            .expect("loopback bus")
            .with_kernel_remove(kernel_remove);
        let devices = devs
            .iter()
            .map(|&d| (d, Box::new(Idle) as Box<dyn VirtioDevice>))
            .collect();
        let mut instance = GuestInstance::new(
            "lb",
            InstanceOptions {
                profile: Profile::Rfc2,
                ..InstanceOptions::default()
            },
            devices,
        )
        .expect("instance");
        let stop = StopSignal::new().expect("stop");
        let s = stop.clone();
        let control = instance.device_control();
        let thread = std::thread::spawn(move || {
            let r = serve_linux_user(&mut instance, &mut bus, &s);
            (r, bus.stats())
        });
        Self {
            stop,
            control,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (Result<ServeEnd, LinuxUserError>, LinuxUserStats) {
        self.stop.trigger();
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("serve thread")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A prober reporting each device the kernel probes (inside ADD, after
/// DEVICE_INFO and the feature check passed).
fn probed(k: &FakeLoopbackKernel) -> std::sync::mpsc::Receiver<u32> {
    let (tx, rx) = std::sync::mpsc::channel();
    k.set_prober(Box::new(move |id| tx.send(id).map_err(|e| e.to_string())));
    rx
}

/// Wait (bounded) until `ids` were probed, in order.
fn wait_probed(rx: &std::sync::mpsc::Receiver<u32>, ids: &[u32]) {
    for &id in ids {
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("probe"), id);
    }
}

fn req(msg_id: u8, dev: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0, msg_id, dev as u8, (dev >> 8) as u8];
    f.extend_from_slice(&((6 + payload.len()) as u16).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn add_probes_then_requests_events_and_remove() {
    // A kernel whose REMOVE works, and vmsgd allowed to call it.
    let k = fake_with(Duration::from_secs(5), false);
    let rx = probed(&k);
    let served = Served::start_with(&k, &[0, 7], true);
    // ADD ran DEVICE_INFO (64 bits, VERSION_1 + ACCESS_PLATFORM) and the probe.
    wait_probed(&rx, &[0, 7]);
    assert_eq!(k.devices(), vec![0, 7]);

    // A request gets its response, padded to 44 bytes, RFC2 header.
    let r = k
        .transfer(&req(0x07, 7, &[]))
        .expect("GET_DEVICE_STATUS")
        .expect("a response");
    assert_eq!(&r[..6], &[0x01, 0x07, 7, 0, 10, 0]);
    // EVENT_AVAIL (queue not live: the device drops it) is still answered
    // with a response-typed frame, or the kernel would wait 4 s.
    let t0 = std::time::Instant::now();
    assert_eq!(
        k.transfer(&req(0x41, 7, &[0; 8]))
            .expect("EVENT_AVAIL acked"),
        None
    );
    assert!(t0.elapsed() < Duration::from_secs(2));

    let (end, stats) = served.stop();
    assert_eq!(end.expect("serve"), ServeEnd::Stopped);
    // REMOVE ran (with its reset) before the instance stopped.
    assert!(k.devices().is_empty());
    assert_eq!(k.stats().removes, 2);
    assert!(stats.acks >= 1, "{stats:?}");
    assert_eq!(stats.unanswered, 0, "{stats:?}");
    let ks = k.stats();
    assert_eq!(
        (
            ks.timeouts,
            ks.bad_reads,
            ks.bad_writes,
            ks.unsupported,
            ks.late_responses
        ),
        (0, 0, 0, 0, 0),
        "{ks:?}"
    );
    assert!(ks.probe_errors.is_empty(), "{ks:?}");
}

#[test]
fn unanswered_request_times_out_in_the_kernel_and_is_counted() {
    let k = fake(Duration::from_millis(200));
    let rx = probed(&k);
    let served = Served::start(&k, &[1]);
    wait_probed(&rx, &[1]);
    // GET_CONFIG beyond config_size (0): dropped by the device (§3.5).
    let mut p = [0u8; 8];
    p[4..8].copy_from_slice(&4u32.to_le_bytes());
    let e = k.transfer(&req(0x05, 1, &p)).expect_err("no response");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    // The next request is served normally.
    assert!(k.transfer(&req(0x07, 1, &[])).expect("status").is_some());
    let (end, stats) = served.stop();
    end.expect("serve");
    assert_eq!(stats.unanswered, 1, "{stats:?}");
    assert_eq!(k.stats().timeouts, 1);
}

#[test]
fn event_config_is_not_written_to_the_loopback() {
    let k = fake(Duration::from_secs(1));
    let mut bus = LinuxUserBus::with_kernel(k.kernel(), k.options().pool_base).expect("bus");
    // EVENT_CONFIG (device → driver): the RFC loopback refuses it.
    let mut ev = req(0x40, 0, &[0; 16]);
    ev.resize(FRAME_SIZE, 0);
    bus.send(&ev).expect("dropped, not an error");
    // So does a bus request (a device-side PING).
    let mut ping = req(0x03, 0, &[0; 4]);
    ping[0] = 0x02;
    ping.resize(FRAME_SIZE, 0);
    bus.send(&ping).expect("dropped");
    assert_eq!(bus.stats().refused, 2);
    assert_eq!(k.stats().unsupported, 0);
    // Too large for the node.
    assert!(bus.send(&[0u8; 45]).is_err());
}

#[test]
fn memory_is_the_pool_at_its_physical_base() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};
    let k = fake(Duration::from_secs(1));
    let bus = LinuxUserBus::with_kernel(k.kernel(), k.options().pool_base).expect("bus");
    let m = bus.memory();
    let base = k.options().pool_base;
    assert_eq!(
        m.last_addr(),
        GuestAddress(base + k.options().pool_size - 1)
    );
    // The kernel's writes are seen by the device at the same address.
    k.pool_memory()
        .write_obj(0xfeed_u32, GuestAddress(base + 0x1000))
        .expect("kernel write");
    assert_eq!(
        m.read_obj::<u32>(GuestAddress(base + 0x1000))
            .expect("read"),
        0xfeed
    );
    assert!(m.read_obj::<u32>(GuestAddress(base - 4)).is_err());
}

#[test]
fn fake_kernel_enforces_frame_sizes_and_refusals() {
    let k = fake(Duration::from_millis(100));
    let ch = k.kernel().open_channel().expect("channel");
    let mut big = [0u8; 64];
    assert!(ch.read_frame(&mut big).is_err());
    let mut small = [0u8; 16];
    assert!(ch.read_frame(&mut small).is_err());
    assert!(ch.write_frame(&[1u8; 10]).is_err());
    // EVENT_CONFIG and unknown requests are "Unsupported message".
    let mut ev = req(0x40, 0, &[0; 16]);
    ev.resize(FRAME_SIZE, 0);
    assert!(ch.write_frame(&ev).is_err());
    // A response with nothing pending is late.
    let mut resp = req(0x07, 0, &[0; 4]);
    resp[0] = 1;
    resp.resize(FRAME_SIZE, 0);
    ch.write_frame(&resp).expect("late response accepted");
    let s = k.stats();
    assert_eq!(
        (s.bad_reads, s.bad_writes, s.unsupported, s.late_responses),
        (2, 1, 1, 1)
    );
    // REMOVE of an unknown device, ADD with nobody serving (times out).
    let kernel = k.kernel();
    assert_eq!(
        kernel.remove_device(3).expect_err("enoent").raw_os_error(),
        Some(libc::ENOENT)
    );
    let e = kernel
        .add_device(3)
        .expect_err("nobody answers DEVICE_INFO");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert!(k.devices().is_empty());
    // A closed node reads 0.
    assert!(ch.interrupt());
    assert_eq!(ch.read_frame(&mut [0u8; FRAME_SIZE]).expect("eof"), 0);
}

#[test]
fn reader_end_disconnects_the_instance() {
    let k = fake(Duration::from_secs(1));
    let rx = probed(&k);
    let mut served = Served::start(&k, &[0]);
    wait_probed(&rx, &[0]);
    k.close();
    let (end, _) = served.thread.take().expect("thread").join().expect("join");
    assert_eq!(end.expect("serve"), ServeEnd::Disconnected);
    // The devices could not be removed (nobody serves the node any more).
    assert_eq!(k.devices(), vec![0]);
}

#[test]
fn pool_base_from_the_device_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rm = dir.path();
    assert!(find_pool(rm).is_err(), "no node");
    let node = rm.join("vmsglb@5fc00000");
    std::fs::create_dir(&node).expect("node");
    // 2×2 big-endian cells: base 0x5fc00000, size 0x400000.
    std::fs::write(
        node.join("reg"),
        [0, 0, 0, 0, 0x5f, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0],
    )
    .expect("reg");
    assert_eq!(
        find_pool(rm).expect("pool"),
        PoolRegion {
            base: 0x5fc0_0000,
            size: 0x40_0000
        }
    );
    // 1×1 cells.
    std::fs::write(rm.join("#address-cells"), 1u32.to_be_bytes()).expect("cells");
    std::fs::write(rm.join("#size-cells"), 1u32.to_be_bytes()).expect("cells");
    std::fs::write(node.join("reg"), [0x5f, 0xc0, 0, 0, 0, 0x40, 0, 0]).expect("reg");
    assert_eq!(find_pool(rm).expect("pool").base, 0x5fc0_0000);
    std::fs::write(node.join("reg"), [0x5f, 0xc0]).expect("reg");
    assert!(find_pool(rm).is_err(), "short reg");
}

#[test]
fn open_reports_missing_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LinuxUserOptions {
        control: dir.path().join("virtio-msg-lb"),
        channel: dir.path().join("virtio-msg-0"),
        pool_base: None,
        reserved_memory: dir.path().join("reserved-memory"),
        kernel_remove: false,
    };
    let e = LinuxUserBus::open(&opts).expect_err("no node");
    assert!(matches!(e, LinuxUserError::Open { .. }), "{e}");
}

#[test]
fn by_default_stop_leaves_devices_registered_and_never_calls_remove() {
    // The RFC kernel's REMOVE deadlocks: vmsgd must not call it, and must
    // stop at once.
    let k = fake(Duration::from_secs(5));
    let rx = probed(&k);
    let served = Served::start(&k, &[0, 3]);
    wait_probed(&rx, &[0, 3]);
    let t0 = std::time::Instant::now();
    let (end, _) = served.stop();
    assert_eq!(end.expect("serve"), ServeEnd::Stopped);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(k.devices(), vec![0, 3]);
    assert_eq!(k.stats().removes, 0);
}

#[test]
fn kernel_remove_on_a_deadlocking_kernel_gives_up_within_the_deadline() {
    let k = fake(Duration::from_secs(5));
    let rx = probed(&k);
    let served = Served::start_with(&k, &[0, 3], true);
    wait_probed(&rx, &[0, 3]);
    let t0 = std::time::Instant::now();
    let (end, _) = served.stop();
    let took = t0.elapsed();
    assert_eq!(end.expect("serve"), ServeEnd::Stopped);
    assert!(took >= REMOVE_DEADLINE, "waited for REMOVE: {took:?}");
    assert!(
        took < REMOVE_DEADLINE + Duration::from_millis(500),
        "{took:?}"
    );
    // The first REMOVE is stuck in the kernel; the second was never issued.
    assert_eq!(k.stats().removes, 1);
    // Free the stuck thread.
    k.close();
}

#[test]
fn hot_added_devices_are_added_to_the_kernel() {
    let k = fake(Duration::from_secs(5));
    let rx = probed(&k);
    let served = Served::start(&k, &[0]);
    wait_probed(&rx, &[0]);
    served
        .control
        .add(5, Box::new(Idle))
        .wait(Duration::from_secs(5))
        .expect("instance applied the change");
    // The registrar ADDs it; the kernel probes it while the instance serves.
    wait_probed(&rx, &[5]);
    assert_eq!(k.devices(), vec![0, 5]);
    let r = k
        .transfer(&req(0x07, 5, &[]))
        .expect("GET_DEVICE_STATUS")
        .expect("a response");
    assert_eq!(&r[..4], &[0x01, 0x07, 5, 0]);
    let (end, _) = served.stop();
    end.expect("serve");
    assert_eq!(k.stats().removes, 0);
}

#[test]
fn a_device_left_by_an_earlier_run_is_not_removed_without_kernel_remove() {
    let k = fake(Duration::from_secs(5));
    let rx = probed(&k);
    let first = Served::start(&k, &[2]);
    wait_probed(&rx, &[2]);
    let (end, _) = first.stop();
    end.expect("serve");
    // A second run: ADD says EEXIST; replacing it would need REMOVE.
    k.reopen();
    let second = Served::start(&k, &[2]);
    let (end, _) = second.stop();
    end.expect("serve");
    assert_eq!(k.stats().removes, 0);
    assert_eq!(k.devices(), vec![2]);
}

#[test]
fn power_off_resets_every_device_and_waits_out_the_ones_nobody_serves() {
    // Seen on the real kernel: device_shutdown() resets each registered
    // device; with vmsgd gone, each reset waits for the transfer timeout.
    let k = fake(Duration::from_millis(100));
    let rx = probed(&k);
    let served = Served::start(&k, &[0, 3]);
    wait_probed(&rx, &[0, 3]);
    // While vmsgd serves, the resets are answered.
    assert_eq!(k.shutdown(), 0);
    let (end, _) = served.stop();
    end.expect("serve");
    // vmsgd stopped without REMOVE: the devices are still registered, and
    // the kernel's reset of each now times out.
    k.reopen();
    assert_eq!(k.shutdown(), 2);
    assert_eq!(k.stats().timeouts, 2);
}

/// A bus whose peer vanished: the doorbell is rung and `recv` says
/// Disconnected (what the loopback's reader does when its node closes and
/// its queue drops before the control fd is seen).
struct GoneBus(crate::fake::FakeBus);

impl Bus for GoneBus {
    fn max_msg_size(&self) -> usize {
        self.0.max_msg_size()
    }
    fn transport_features(&self) -> u32 {
        0
    }
    fn doorbell_fd(&self) -> std::os::fd::RawFd {
        self.0.doorbell_fd()
    }
    fn ack_doorbell(&mut self) -> Result<(), crate::bus::BusError> {
        Ok(())
    }
    fn control_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn handle_control(&mut self) -> Result<(), crate::bus::BusError> {
        Ok(())
    }
    fn recv(&mut self, _buf: &mut [u8]) -> Result<Option<usize>, crate::bus::BusError> {
        Err(crate::bus::BusError::Disconnected)
    }
    fn send(&mut self, frame: &[u8]) -> Result<(), crate::bus::BusError> {
        self.0.send(frame)
    }
    fn memory(&self) -> crate::memory::GuestMemoryHandle {
        self.0.memory()
    }
    fn counters(&self) -> crate::bus::BusCounters {
        self.0.counters()
    }
}

#[test]
fn a_peer_gone_while_receiving_ends_the_serve_as_a_disconnect() {
    let fake = crate::fake::FakeBus::new(FRAME_SIZE, 0x1000, 0x10000).expect("fake bus");
    // Rung: the instance drains at once and meets the Disconnected.
    let one = 1u64.to_ne_bytes();
    // SAFETY: the fd is open for the call; 8 bytes from a live buffer.
    let n = unsafe { libc::write(fake.doorbell_fd(), one.as_ptr().cast(), 8) };
    assert_eq!(n, 8);
    let mut bus = GoneBus(fake);
    let mut instance = GuestInstance::new(
        "gone",
        InstanceOptions {
            profile: Profile::Rfc2,
            ..InstanceOptions::default()
        },
        vec![(0, Box::new(Idle) as Box<dyn VirtioDevice>)],
    )
    .expect("instance");
    let stop = StopSignal::new().expect("stop");
    assert_eq!(
        instance
            .serve(&mut bus, &stop)
            .expect("a disconnect, not an error"),
        ServeEnd::Disconnected
    );
}
