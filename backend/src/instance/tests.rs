//! The instance's event loop against a hostile bus: bounded work per
//! iteration, so stop and the control path are seen whatever the guest does
//! (issue 10, defects 2 and 4).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::bus::{Bus, BusCounters, BusError};
use crate::memory::GuestMemoryHandle;

/// A bus whose driver never stops sending: every `recv` returns a frame,
/// the doorbell is always rung. `frames` counts what the instance took;
/// `tell` hears once when `after` frames were taken.
struct EndlessBus {
    doorbell: EventFd,
    mem: GuestMemoryHandle,
    frames: Arc<AtomicU64>,
    after: u64,
    tell: Option<mpsc::Sender<()>>,
}

impl EndlessBus {
    fn new(frames: Arc<AtomicU64>, after: u64, tell: mpsc::Sender<()>) -> Self {
        let doorbell = EventFd::new(0).expect("eventfd");
        doorbell.write(1).expect("ring");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)])
            .expect("guest memory");
        Self {
            doorbell,
            mem: Arc::new(mem),
            frames,
            after,
            tell: Some(tell),
        }
    }
}

impl Bus for EndlessBus {
    fn max_msg_size(&self) -> usize {
        264
    }
    fn transport_features(&self) -> u32 {
        0
    }
    fn doorbell_fd(&self) -> RawFd {
        self.doorbell.as_raw_fd()
    }
    fn ack_doorbell(&mut self) -> Result<(), BusError> {
        // Rung again at once, as a driver kicking without pause would.
        Ok(())
    }
    fn control_fd(&self) -> Option<RawFd> {
        None
    }
    fn handle_control(&mut self) -> Result<(), BusError> {
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BusError> {
        let n = self.frames.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.after {
            if let Some(tell) = self.tell.take() {
                let _ = tell.send(());
            }
        }
        // A frame too short to decode: dropped and counted, as fast as the
        // instance can take them.
        buf[..4].copy_from_slice(&[0, 0x02, 0, 0]);
        Ok(Some(4))
    }
    fn send(&mut self, _frame: &[u8]) -> Result<(), BusError> {
        Ok(())
    }
    fn memory(&self) -> GuestMemoryHandle {
        self.mem.clone()
    }
    fn counters(&self) -> BusCounters {
        BusCounters::default()
    }
}

/// Serve `bus` on a thread with `options`; trigger stop once the bus said
/// the guest is in full swing, and return how serving ended (failing loudly
/// if it does not end within `bound`).
fn stop_under_load(options: InstanceOptions, after: u64, bound: Duration) -> ServeEnd {
    let frames = Arc::new(AtomicU64::new(0));
    let (tell, busy) = mpsc::channel();
    let mut bus = EndlessBus::new(frames.clone(), after, tell);
    let stop = StopSignal::new().expect("stop signal");
    let stop2 = stop.clone();
    let (done_tx, done) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut instance = GuestInstance::new("hostile", options, Vec::new()).expect("instance");
        let end = instance.serve(&mut bus, &stop2);
        let _ = done_tx.send(end.map_err(|e| e.to_string()));
    });
    busy.recv_timeout(Duration::from_secs(60))
        .expect("the guest's frames are being taken");
    stop.trigger();
    let end = done
        .recv_timeout(bound)
        .unwrap_or_else(|_| {
            panic!(
                "serve did not see stop within {bound:?} ({} frames taken)",
                frames.load(Ordering::Relaxed)
            )
        })
        .expect("serve ends without error");
    thread.join().expect("instance thread");
    end
}

/// Defect 2: a driver that keeps the ring full must not keep the instance
/// from seeing stop (frames are drained in bounded batches).
#[test]
fn stop_is_seen_while_a_driver_floods_the_ring() {
    let end = stop_under_load(InstanceOptions::default(), 10_000, Duration::from_secs(10));
    assert_eq!(end, ServeEnd::Stopped);
}
