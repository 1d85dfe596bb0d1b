//! Adding and removing a guest's devices while it is served (§4.3
//! EVENT_DEVICE).
//!
//! A [`DeviceControl`] is a cloneable handle on one [`GuestInstance`]'s
//! device table that any thread may hold (the daemon's reload path does).
//! Changes are queued and carried out by the instance's own thread, so the
//! device table stays unshared: while a bus is connected the instance
//! attaches a new device to it and then sends EVENT_DEVICE `ADDED` (the
//! device can process transport messages from that point, as the v2 bus
//! rule asks); a removed device is reset first and EVENT_DEVICE `REMOVED`
//! follows. Changes queued while no bus is connected are applied when the
//! next connection starts, before the driver can discover anything, so no
//! event is needed for them.
//!
//! [`GuestInstance`]: crate::instance::GuestInstance

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use thiserror::Error;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::VirtioDevice;

/// Why a device change was refused.
#[derive(Debug, Error)]
pub enum HotplugError {
    /// Adding a device number the guest already has.
    #[error("device number {0} is already in use")]
    InUse(u16),
    /// Removing a device number the guest does not have.
    #[error("no device number {0}")]
    NoSuchDevice(u16),
    /// Registering the new device's event fds failed.
    #[error("device {dev_num}: watching its fds: {source}")]
    Watch {
        /// The device.
        dev_num: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The instance was dropped; nothing will apply the change.
    #[error("the guest instance is gone")]
    InstanceGone,
    /// The instance did not apply the change in time (it applies queued
    /// changes only while it serves a bus or when the next one connects).
    #[error("not applied within {0:?} (the guest is not connected?)")]
    Timeout(Duration),
    /// The wake-up eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A requested change of the device table.
pub(crate) enum Change {
    /// Host this device at this number.
    Add(u16, Box<dyn VirtioDevice>),
    /// Reset and drop the device at this number.
    Remove(u16),
}

impl Change {
    pub(crate) fn dev_num(&self) -> u16 {
        match self {
            Change::Add(n, _) | Change::Remove(n) => *n,
        }
    }
}

/// A change with the channel its outcome goes back on.
pub(crate) struct Request {
    pub(crate) change: Change,
    pub(crate) reply: mpsc::Sender<Result<(), HotplugError>>,
}

impl Request {
    /// Report the outcome; the requester may have stopped listening.
    pub(crate) fn answer(self, result: Result<(), HotplugError>) {
        let _ = self.reply.send(result);
    }
}

/// The instance's end: the queue and the fd that says it is not empty.
pub(crate) struct HotplugQueue {
    rx: mpsc::Receiver<Request>,
    handle: DeviceControl,
}

impl std::fmt::Debug for HotplugQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugQueue").finish_non_exhaustive()
    }
}

impl HotplugQueue {
    pub(crate) fn new() -> Result<Self, HotplugError> {
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK).map_err(HotplugError::EventFd)?;
        Ok(Self {
            rx,
            handle: DeviceControl {
                tx,
                wake: Arc::new(wake),
            },
        })
    }

    /// A handle for other threads.
    pub(crate) fn control(&self) -> DeviceControl {
        self.handle.clone()
    }

    /// Readable while changes may be queued.
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.handle.wake.as_raw_fd()
    }

    /// Take every queued change, oldest first.
    pub(crate) fn take(&self) -> Vec<Request> {
        // Reset the counter before draining: a change queued after this
        // read writes it again, so it is never missed.
        let _ = self.handle.wake.read();
        self.rx.try_iter().collect()
    }
}

/// A cloneable, `Send` handle that queues device changes for one guest
/// instance (see the module documentation).
#[derive(Clone, Debug)]
pub struct DeviceControl {
    tx: mpsc::Sender<Request>,
    wake: Arc<EventFd>,
}

impl DeviceControl {
    /// Queue adding `dev` as device number `dev_num`.
    pub fn add(&self, dev_num: u16, dev: Box<dyn VirtioDevice>) -> PendingChange {
        self.queue(Change::Add(dev_num, dev))
    }

    /// Queue removing device number `dev_num`.
    pub fn remove(&self, dev_num: u16) -> PendingChange {
        self.queue(Change::Remove(dev_num))
    }

    fn queue(&self, change: Change) -> PendingChange {
        let (reply, rx) = mpsc::channel();
        let dev_num = change.dev_num();
        if let Err(mpsc::SendError(req)) = self.tx.send(Request { change, reply }) {
            req.answer(Err(HotplugError::InstanceGone));
        } else {
            // Only fails if the counter would overflow: it is readable then.
            let _ = self.wake.write(1);
        }
        PendingChange { dev_num, rx }
    }
}

/// The outcome of a queued change, when the instance has applied it.
#[derive(Debug)]
pub struct PendingChange {
    dev_num: u16,
    rx: mpsc::Receiver<Result<(), HotplugError>>,
}

impl PendingChange {
    /// The device number the change concerns.
    pub fn dev_num(&self) -> u16 {
        self.dev_num
    }

    /// Wait up to `timeout` for the outcome.
    pub fn wait(&self, timeout: Duration) -> Result<(), HotplugError> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(HotplugError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(HotplugError::InstanceGone),
        }
    }

    /// The outcome if it is known already.
    pub fn try_result(&self) -> Option<Result<(), HotplugError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(HotplugError::InstanceGone)),
        }
    }
}
