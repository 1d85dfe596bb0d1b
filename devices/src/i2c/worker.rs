//! The thread an i2c device's adapter runs on.
//!
//! A transfer on a real bus takes as long as the bus does (8 KiB at
//! 100 kHz is most of a second) and the i2c-dev ioctls block; the guest's
//! thread serves all its devices and its bus, so it never waits for one.
//! It hands each transaction to this worker and goes on; the worker carries
//! them out one after the other, in order, and signals each result on an
//! eventfd the guest's instance polls (`VirtioDevice::event_fds`).
//! The worker never touches guest memory: it gets and returns owned
//! buffers, and the device copies them in and out on the guest's thread.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use log::warn;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::adapter::{I2cAdapter, I2cMsg, TransferError};

/// A transaction handed to the worker.
#[derive(Debug)]
pub(super) struct Job {
    pub id: u64,
    pub msgs: Vec<I2cMsg>,
}

/// What the worker did with a job.
#[derive(Debug)]
pub(super) struct Done {
    pub id: u64,
    pub msgs: Vec<I2cMsg>,
    pub result: Result<(), TransferError>,
}

/// The worker thread and its channels.
#[derive(Debug)]
pub(super) struct Worker {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    ready: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Start a worker carrying out transactions on `adapter`.
    pub fn start(name: &str, mut adapter: Box<dyn I2cAdapter>) -> std::io::Result<Self> {
        let ready = EventFd::new(EFD_NONBLOCK)?;
        let signal = ready.try_clone()?;
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let thread_name: String = format!("i2c:{name}").chars().take(15).collect();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                // Ends when the device drops its sender.
                for mut job in job_rx {
                    let result = adapter.transfer(&mut job.msgs);
                    let done = Done {
                        id: job.id,
                        msgs: job.msgs,
                        result,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                    if let Err(e) = signal.write(1) {
                        warn!("i2c worker: signalling a completion: {e}");
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            ready,
            thread: Some(thread),
        })
    }

    /// Queue a transaction.
    pub fn submit(&self, job: Job) -> Result<(), String> {
        self.jobs
            .as_ref()
            .ok_or_else(|| "worker stopped".to_string())?
            .send(job)
            .map_err(|_| "the i2c worker thread is gone".to_string())
    }

    /// The eventfd that becomes readable when results are waiting.
    pub fn event_fd(&self) -> &EventFd {
        &self.ready
    }

    /// Take the results that are ready (and acknowledge the eventfd first,
    /// so a result arriving meanwhile signals again).
    pub fn take(&self) -> Result<Vec<Done>, String> {
        let _ = self.ready.read();
        let mut out = Vec::new();
        loop {
            match self.done.try_recv() {
                Ok(d) => out.push(d),
                Err(TryRecvError::Empty) => return Ok(out),
                Err(TryRecvError::Disconnected) => {
                    return if out.is_empty() {
                        Err("the i2c worker thread is gone".into())
                    } else {
                        Ok(out)
                    };
                }
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its current transfer is
        // done (a bus transfer cannot be cut short; it is bounded by the
        // message limits).
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("i2c worker thread panicked");
            }
        }
    }
}
