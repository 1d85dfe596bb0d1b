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

/// How the hostile driver behind an [`EndlessBus`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pace {
    /// A frame on every `recv`: the ring never empties.
    Flood,
    /// A frame on every other `recv`: the ring empties, then has a frame
    /// again at once (keeps a polling instance spinning).
    Trickle,
    /// Never a frame.
    Silent,
}

/// A bus whose driver never stops (or never starts) sending; the doorbell
/// is always rung. `polls` counts `recv` calls; `tell` hears once when
/// `after` were made. Writing `hangup` makes the control fd report a
/// disconnect.
struct EndlessBus {
    doorbell: EventFd,
    hangup: Arc<EventFd>,
    mem: GuestMemoryHandle,
    pace: Pace,
    polls: Arc<AtomicU64>,
    after: u64,
    tell: Option<mpsc::Sender<()>>,
}

impl EndlessBus {
    fn new(pace: Pace, polls: Arc<AtomicU64>, after: u64, tell: mpsc::Sender<()>) -> Self {
        let doorbell = EventFd::new(0).expect("eventfd");
        doorbell.write(1).expect("ring");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)])
            .expect("guest memory");
        Self {
            doorbell,
            hangup: Arc::new(EventFd::new(0).expect("eventfd")),
            mem: Arc::new(mem),
            pace,
            polls,
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
        Some(self.hangup.as_raw_fd())
    }
    fn handle_control(&mut self) -> Result<(), BusError> {
        Err(BusError::Disconnected)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, BusError> {
        let n = self.polls.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.after {
            if let Some(tell) = self.tell.take() {
                let _ = tell.send(());
            }
        }
        let frame = match self.pace {
            Pace::Flood => true,
            Pace::Trickle => n % 2 == 0,
            Pace::Silent => false,
        };
        if !frame {
            return Ok(None);
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

/// What ends serving in [`serve_under_load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// The stop signal.
    Stop,
    /// The driver hangs up (the control fd fires).
    Hangup,
}

/// Serve an [`EndlessBus`] of `pace` on a thread with `options`; once the
/// bus was polled `after` times, end it the `ending` way and return how
/// serving ended (failing loudly if it does not end within `bound`).
fn serve_under_load(
    options: InstanceOptions,
    pace: Pace,
    after: u64,
    ending: Ending,
    bound: Duration,
) -> ServeEnd {
    let polls = Arc::new(AtomicU64::new(0));
    let (tell, busy) = mpsc::channel();
    let mut bus = EndlessBus::new(pace, polls.clone(), after, tell);
    let hangup = bus.hangup.clone();
    let stop = StopSignal::new().expect("stop signal");
    let stop2 = stop.clone();
    let (done_tx, done) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let mut instance = GuestInstance::new("hostile", options, Vec::new()).expect("instance");
        let end = instance.serve(&mut bus, &stop2);
        let _ = done_tx.send(end.map_err(|e| e.to_string()));
    });
    busy.recv_timeout(Duration::from_secs(60))
        .expect("the instance polls the bus");
    match ending {
        Ending::Stop => stop.trigger(),
        Ending::Hangup => hangup.write(1).expect("hang up"),
    }
    let end = done
        .recv_timeout(bound)
        .unwrap_or_else(|_| {
            panic!(
                "serve did not see {ending:?} within {bound:?} ({} polls of the bus)",
                polls.load(Ordering::Relaxed)
            )
        })
        .expect("serve ends without error");
    thread.join().expect("instance thread");
    end
}

const BOUND: Duration = Duration::from_secs(10);

/// Defect 2: a driver that keeps the ring full must not keep the instance
/// from seeing stop (frames are drained in bounded batches).
#[test]
fn stop_is_seen_while_a_driver_floods_the_ring() {
    let end = serve_under_load(
        InstanceOptions::default(),
        Pace::Flood,
        10_000,
        Ending::Stop,
        BOUND,
    );
    assert_eq!(end, ServeEnd::Stopped);
}

fn spinning(poll_spin: Duration) -> InstanceOptions {
    InstanceOptions {
        poll_spin,
        ..InstanceOptions::default()
    }
}

/// Defect 4: with a huge `poll_spin` the polling loop spun for that long
/// after the last frame, blind to stop.
#[test]
fn stop_is_seen_while_spinning_on_an_idle_ring() {
    let end = serve_under_load(
        spinning(Duration::from_secs(3600)),
        Pace::Silent,
        10_000,
        Ending::Stop,
        BOUND,
    );
    assert_eq!(end, ServeEnd::Stopped);
}

/// Defect 4: a driver sending just often enough keeps a polling instance
/// spinning forever (each frame restarts the idle time); stop and a
/// disconnect are still seen.
#[test]
fn stop_and_disconnect_are_seen_while_a_trickle_keeps_the_loop_spinning() {
    let options = spinning(Duration::from_millis(5));
    let end = serve_under_load(options, Pace::Trickle, 10_000, Ending::Stop, BOUND);
    assert_eq!(end, ServeEnd::Stopped);
    let end = serve_under_load(options, Pace::Trickle, 10_000, Ending::Hangup, BOUND);
    assert_eq!(end, ServeEnd::Disconnected);
}
