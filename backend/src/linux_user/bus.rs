//! [`LinuxUserBus`]: the [`Bus`] over the RFC loopback's message node.
//!
//! A reader thread blocks in `read` on the node (it has no poll), one
//! 44-byte frame per call, and hands each frame to the instance through a
//! bounded channel plus an eventfd doorbell. The instance thread writes:
//! the responses the transport produces, EVENT_USED, and the response-typed
//! *ack* the kernel waits for after every event it sends (EVENT_AVAIL,
//! interop §3.2 quirk 1), written when the instance takes the event. Frames
//! the loopback refuses (EVENT_CONFIG, bus messages) are dropped and counted.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::{debug, warn};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::LinuxUserError;
use super::os::{FRAME_SIZE, LoopbackKernel, MsgChannel};
use crate::bus::{Bus, BusCounters, BusError};
use crate::memory::GuestMemoryHandle;
use crate::rate_limited;
use crate::ratelog::LogLimiter;

/// `type` bit 0 and bit 1 (reference §1).
const TY_RESPONSE: u8 = 0x01;
const TY_BUS: u8 = 0x02;
/// msg_id bit 6: an event.
const ID_EVENT: u8 = 0x40;
/// EVENT_USED: the only request the loopback accepts from the device.
const EVENT_USED: u8 = 0x42;
/// The RFC2 header: type, msg_id, dev_num, msg_size (interop §2.1).
const RFC2_HEADER: usize = 6;
/// Frames the reader may queue ahead of the instance (the kernel has one
/// transfer in flight, so one or two are ever pending).
const QUEUE_DEPTH: usize = 16;

/// The instance's device list, handed from the instance thread
/// ([`Bus::devices_changed`]) to the registrar, which ADDs (and, if allowed,
/// REMOVEs) devices in the kernel. Only the latest list matters.
#[derive(Debug)]
pub(crate) struct DeviceRegistry {
    wanted: Mutex<Option<Vec<u16>>>,
    wake: EventFd,
}

impl DeviceRegistry {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            wanted: Mutex::new(None),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn publish(&self, devices: &[u16]) {
        if let Ok(mut w) = self.wanted.lock() {
            *w = Some(devices.to_vec());
        }
        // Only fails when the counter would overflow: readable then anyway.
        let _ = self.wake.write(1);
    }

    /// The list published since the last call, if any.
    pub(crate) fn take(&self) -> Option<Vec<u16>> {
        // Reset the counter first: a list published after this read rings
        // it again, so none is missed.
        let _ = self.wake.read();
        self.wanted.lock().ok().and_then(|mut w| w.take())
    }

    /// Readable when a list may have been published.
    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// What the loopback bus did beyond carrying frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinuxUserStats {
    /// Response-typed acks written after events (EVENT_AVAIL).
    pub acks: u64,
    /// Requests the instance did not answer (malformed or unsupported: the
    /// kernel waits for its timeout and fails the transfer, §6.3).
    pub unanswered: u64,
    /// Device frames the loopback would refuse (EVENT_CONFIG, bus messages),
    /// dropped here.
    pub refused: u64,
    /// Frames read that were not a request or event of the transport.
    pub unexpected: u64,
}

#[derive(Debug, Default)]
struct Shared {
    frames_in: AtomicU64,
    doorbells: AtomicU64,
    /// Why the reader stopped, if it did.
    reader_end: Mutex<Option<String>>,
}

type Frame = ([u8; FRAME_SIZE], usize);

/// One RFC loopback bus instance (`/dev/virtio-msg-lb` + `/dev/virtio-msg-N`),
/// device side. Frames are RFC2, 44 bytes; guest addresses are physical
/// addresses inside the loopback pool, which [`Bus::memory`] maps at its
/// physical base.
pub struct LinuxUserBus {
    kernel: Arc<dyn LoopbackKernel>,
    channel: Arc<dyn MsgChannel>,
    memory: GuestMemoryHandle,
    rx: Receiver<Frame>,
    doorbell: Arc<EventFd>,
    ended: Arc<EventFd>,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    registry: Arc<DeviceRegistry>,
    /// Whether devices may be REMOVEd (see `serve`: the RFC kernel deadlocks).
    kernel_remove: bool,
    /// (dev_num, msg_id) of the request handed to the instance and not yet answered.
    pending: Option<(u16, u8)>,
    frames_out: u64,
    stats: LinuxUserStats,
    log_limit: LogLimiter,
}

impl std::fmt::Debug for LinuxUserBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinuxUserBus")
            .field("pending", &self.pending)
            .field("stats", &self.stats)
            .finish()
    }
}

fn os(op: &'static str) -> impl FnOnce(std::io::Error) -> LinuxUserError {
    move |source| LinuxUserError::Os { op, source }
}

impl LinuxUserBus {
    /// Map the pool of `kernel` at physical address `pool_base` and start
    /// the reader thread on a freshly opened message node.
    pub fn with_kernel(
        kernel: Arc<dyn LoopbackKernel>,
        pool_base: u64,
    ) -> Result<Self, LinuxUserError> {
        let size = kernel
            .pool_size()
            .map_err(os("lseek(SEEK_END) on the pool"))?;
        if size == 0 {
            return Err(LinuxUserError::Pool("the loopback pool is empty".into()));
        }
        let len = usize::try_from(size).map_err(|_| {
            LinuxUserError::Pool(format!("pool size {size} exceeds the address space"))
        })?;
        let region = kernel.map_pool(len).map_err(os("mmap of the pool"))?;
        let region = GuestRegionMmap::new(region, GuestAddress(pool_base)).ok_or_else(|| {
            LinuxUserError::Pool(format!("pool {pool_base:#x} + {size:#x} overflows"))
        })?;
        let memory = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| LinuxUserError::Pool(e.to_string()))?;
        let channel = kernel
            .open_channel()
            .map_err(os("opening the message node"))?;
        let doorbell = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(os("eventfd"))?);
        let ended = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(os("eventfd"))?);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = sync_channel(QUEUE_DEPTH);
        let reader = {
            let (channel, doorbell, ended, shared) = (
                channel.clone(),
                doorbell.clone(),
                ended.clone(),
                shared.clone(),
            );
            std::thread::Builder::new()
                .name("vmsg-lb-reader".into())
                .spawn(move || reader(&*channel, &tx, &doorbell, &ended, &shared))
                .map_err(os("spawning the reader thread"))?
        };
        Ok(Self {
            kernel,
            channel,
            memory: Arc::new(memory),
            rx,
            doorbell,
            ended,
            shared,
            reader: Some(reader),
            registry: Arc::new(DeviceRegistry::new().map_err(os("eventfd"))?),
            kernel_remove: false,
            pending: None,
            frames_out: 0,
            stats: LinuxUserStats::default(),
            log_limit: LogLimiter::default(),
        })
    }

    /// The kernel interface (for ADD/REMOVE from another thread).
    pub fn kernel(&self) -> Arc<dyn LoopbackKernel> {
        self.kernel.clone()
    }

    /// Allow REMOVE on stop and on hot-unplug (off by default: the RFC
    /// loopback's REMOVE deadlocks inside the kernel; `serve_linux_user`).
    pub fn with_kernel_remove(mut self, on: bool) -> Self {
        self.kernel_remove = on;
        self
    }

    /// Whether devices may be REMOVEd.
    pub fn kernel_remove(&self) -> bool {
        self.kernel_remove
    }

    pub(crate) fn registry(&self) -> Arc<DeviceRegistry> {
        self.registry.clone()
    }

    /// What the bus did beyond carrying frames.
    pub fn stats(&self) -> LinuxUserStats {
        self.stats
    }

    /// Why the reader thread stopped, if it did.
    pub fn reader_end(&self) -> Option<String> {
        self.shared.reader_end.lock().ok().and_then(|g| g.clone())
    }

    fn write(&mut self, frame: &[u8]) -> Result<(), BusError> {
        self.channel
            .write_frame(frame)
            .map_err(|source| BusError::Os {
                op: "write to the message node",
                source,
            })?;
        self.frames_out += 1;
        Ok(())
    }

    /// The response-typed frame the kernel waits for after an event:
    /// `01 <msg_id> <dev_num>` with msg_size 6, zero-padded. The kernel only
    /// looks at the response bit (it sent the event with no response buffer).
    fn ack(&mut self, msg_id: u8, dev_num: u16) -> Result<(), BusError> {
        let mut f = [0u8; FRAME_SIZE];
        f[0] = TY_RESPONSE;
        f[1] = msg_id;
        f[2..4].copy_from_slice(&dev_num.to_le_bytes());
        f[4..6].copy_from_slice(&(RFC2_HEADER as u16).to_le_bytes());
        self.write(&f)?;
        self.stats.acks += 1;
        Ok(())
    }
}

/// The reader thread: one frame per `read`, never more than [`FRAME_SIZE`].
fn reader(
    channel: &dyn MsgChannel,
    tx: &SyncSender<Frame>,
    doorbell: &EventFd,
    ended: &EventFd,
    shared: &Shared,
) {
    let why = loop {
        let mut buf = [0u8; FRAME_SIZE];
        match channel.read_frame(&mut buf) {
            Ok(0) => break "message node closed".to_string(),
            Ok(n) => {
                shared.frames_in.fetch_add(1, Ordering::Relaxed);
                if tx.send((buf, n.min(FRAME_SIZE))).is_err() {
                    break "bus dropped".to_string();
                }
                // A full counter (EAGAIN) already means "rung".
                let _ = doorbell.write(1);
                shared.doorbells.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => break format!("read from the message node: {e}"),
        }
    };
    debug!("loopback reader stops: {why}");
    if let Ok(mut g) = shared.reader_end.lock() {
        *g = Some(why);
    }
    let _ = ended.write(1);
}

impl Bus for LinuxUserBus {
    fn max_msg_size(&self) -> usize {
        FRAME_SIZE
    }

    fn transport_features(&self) -> u32 {
        0
    }

    fn doorbell_fd(&self) -> RawFd {
        self.doorbell.as_raw_fd()
    }

    fn ack_doorbell(&mut self) -> Result<(), BusError> {
        match self.doorbell.read() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(source) => Err(BusError::Os {
                op: "eventfd read",
                source,
            }),
        }
    }

    fn control_fd(&self) -> Option<RawFd> {
        Some(self.ended.as_raw_fd())
    }

    fn handle_control(&mut self) -> Result<(), BusError> {
        // Only the reader's end is signalled here.
        let _ = self.ended.read();
        warn!(
            "loopback message node: {}",
            self.reader_end().unwrap_or_else(|| "reader stopped".into())
        );
        Err(BusError::Disconnected)
    }

    fn extra_counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("acks", s.acks),
            ("unanswered", s.unanswered),
            ("refused", s.refused),
            ("unexpected", s.unexpected),
        ]
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BusError> {
        let (frame, len) = match self.rx.try_recv() {
            Ok(f) => f,
            Err(TryRecvError::Empty) => return Ok(None),
            Err(TryRecvError::Disconnected) => return Err(BusError::Disconnected),
        };
        if let Some((dev_num, msg_id)) = self.pending.take() {
            // The instance handled the previous request without answering.
            self.stats.unanswered += 1;
            rate_limited!(
                self.log_limit,
                warn,
                "loopback: request {msg_id:#04x} to device {dev_num} got no response; \
                 the kernel fails it after its timeout"
            );
        }
        let frame = &frame[..len];
        if let [ty, msg_id, d0, d1, ..] = *frame {
            let dev_num = u16::from_le_bytes([d0, d1]);
            if ty & TY_RESPONSE != 0 {
                self.stats.unexpected += 1;
            } else if msg_id & ID_EVENT != 0 {
                // The kernel waits for a response-typed frame even after an
                // event; acknowledge before the instance acts on it.
                self.ack(msg_id, dev_num)?;
            } else {
                self.pending = Some((dev_num, msg_id));
            }
        } else {
            self.stats.unexpected += 1;
        }
        let n = len.min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(Some(n))
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), BusError> {
        if frame.len() > FRAME_SIZE {
            return Err(BusError::FrameTooLarge {
                len: frame.len(),
                max: FRAME_SIZE,
            });
        }
        let (ty, msg_id) = match *frame {
            [ty, msg_id, ..] => (ty, msg_id),
            _ => return Ok(()),
        };
        let accepted = ty & TY_RESPONSE != 0 || (ty & TY_BUS == 0 && msg_id == EVENT_USED);
        if !accepted {
            // The RFC loopback answers "Unsupported message" to anything else
            // (EVENT_CONFIG included, interop §3.2).
            self.stats.refused += 1;
            debug!("loopback: dropping device frame {ty:#04x}/{msg_id:#04x} the kernel refuses");
            return Ok(());
        }
        if ty & TY_RESPONSE != 0 {
            self.pending = None;
        }
        // The codec pads RFC2 frames to the bus maximum, 44 bytes; pad
        // anything shorter so the kernel's minimum is met.
        if frame.len() < FRAME_SIZE {
            let mut f = [0u8; FRAME_SIZE];
            f[..frame.len()].copy_from_slice(frame);
            self.write(&f)
        } else {
            self.write(frame)
        }
    }

    fn devices_changed(&mut self, devices: &[u16]) {
        self.registry.publish(devices);
    }

    fn memory(&self) -> GuestMemoryHandle {
        self.memory.clone()
    }

    fn counters(&self) -> BusCounters {
        BusCounters {
            bad_slots: 0,
            frames_in: self.shared.frames_in.load(Ordering::Relaxed),
            frames_out: self.frames_out,
            doorbells_in: self.shared.doorbells.load(Ordering::Relaxed),
        }
    }
}

impl Drop for LinuxUserBus {
    fn drop(&mut self) {
        let wakes = self.channel.interrupt();
        if let Some(t) = self.reader.take() {
            if wakes || t.is_finished() {
                // A reader blocked on a full queue must not wait for us.
                while self.rx.try_recv().is_ok() {}
                let _ = t.join();
            }
            // Otherwise it is blocked in read() on a node that cannot be
            // woken (the RFC node has no poll): it ends with the process.
        }
    }
}
