//! Driver side of the local bus: creates the shared memory and doorbells,
//! hands them to the daemon and then talks over the rings.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vmsg_transport::ring::{self, Consumer, Producer, RingError, RingParams, SharedRegion};

use super::LocalBusError;
use super::fds::{self, SocketState};
use super::wire::{self, HELLO_LEN, Hello, REPLY_HEAD_LEN, Reply};
use crate::memory::GuestMemory;

/// How long the daemon may take to answer the hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `send` retries a full ring before giving up.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Ring polls between two looks at the socket in polling mode.
const SPINS_PER_SOCKET_CHECK: u32 = 4096;
const PAGE: u64 = 4096;

/// What the driver shares and asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalClientOptions {
    /// Guest-physical address of the first RAM byte (page aligned).
    pub ram_base: u64,
    /// Bytes of guest RAM (page aligned, non-zero).
    pub ram_size: u64,
    /// Largest message the driver wants to use (44..=65535, at most
    /// `ring.slot_size`); the daemon answers with the minimum of both sides.
    pub max_msg_size: usize,
    /// Geometry of the message rings.
    pub ring: RingParams,
    /// Wire profile id carried to the daemon: 0 = v2, 1 = v1, 2 = rfc2.
    pub profile: u8,
    /// Start in polling mode: the daemon does not kick the call eventfd and
    /// `recv` spins on the ring.
    pub polling: bool,
}

impl Default for LocalClientOptions {
    fn default() -> Self {
        LocalClientOptions {
            ram_base: 0x4000_0000,
            ram_size: 64 << 20,
            max_msg_size: 264,
            ring: RingParams {
                slot_size: 264,
                slots: 16,
            },
            profile: 0,
            polling: false,
        }
    }
}

impl LocalClientOptions {
    fn check(&self) -> Result<(), LocalBusError> {
        use LocalBusError::InvalidOptions as Bad;
        let max = self.max_msg_size;
        if max < wire::MIN_MSG_SIZE as usize || max > wire::MAX_MSG_SIZE as usize {
            return Err(Bad("max_msg_size outside 44..=65535"));
        }
        if (self.ring.slot_size as usize) < max {
            return Err(Bad("ring slot_size smaller than max_msg_size"));
        }
        self.ring
            .required_size()
            .map_err(|_| Bad("ring parameters"))?;
        if self.ram_size == 0 || self.ram_size % PAGE != 0 || self.ram_base % PAGE != 0 {
            return Err(Bad("RAM base/size must be page aligned and non-empty"));
        }
        if self.ram_base.checked_add(self.ram_size).is_none() {
            return Err(Bad("RAM base + size overflows"));
        }
        if self.profile > wire::MAX_PROFILE {
            return Err(Bad("unknown wire profile"));
        }
        Ok(())
    }
}

/// A driver connected to the daemon over the local bus.
#[derive(Debug)]
pub struct LocalBusClient {
    // The ring ends come before `_ring_map`: they point into it.
    producer: Producer,
    consumer: Consumer,
    _ring_map: MmapRegion,
    memory: Arc<GuestMemory>,
    kick: OwnedFd,
    call: OwnedFd,
    sock: UnixStream,
    max_msg_size: usize,
    transport_features: u32,
    polling: bool,
    scratch: Vec<u8>,
}

impl LocalBusClient {
    /// Create the shared memory and doorbells, connect to the daemon's socket
    /// at `path` and perform the handshake.
    pub fn connect(path: &Path, opts: &LocalClientOptions) -> Result<Self, LocalBusError> {
        opts.check()?;
        let ring_need = opts.ring.required_size()? as u64;
        let ring_size = ring_need.div_ceil(PAGE) * PAGE;
        let ram_len = usize::try_from(opts.ram_size)
            .map_err(|_| LocalBusError::InvalidOptions("RAM size exceeds the address space"))?;

        let ram = fds::create_memfd("vmsg-ram", opts.ram_size)?;
        let ring_file = fds::create_memfd("vmsg-ring", ring_size)?;
        // Bounded by the ring parameter limits (< 4 GiB) and a page.
        let ring_map = fds::map_memfd(
            ring_file
                .try_clone()
                .map_err(LocalBusError::io("dup ring memfd"))?,
            ring_size as usize,
            "ring region",
        )?;
        // SAFETY: `ring_map` is a live shared mapping of its full size that
        // this client keeps alongside the ring ends made from the view; only
        // they access it in this process.
        let region = unsafe { SharedRegion::from_raw(ring_map.as_ptr(), ring_map.size()) };
        let (producer, mut consumer) = ring::init(&region, opts.ring)?;
        consumer.set_polling(opts.polling);

        let ram_map = fds::map_memfd(
            ram.try_clone()
                .map_err(LocalBusError::io("dup RAM memfd"))?,
            ram_len,
            "guest RAM",
        )?;
        let region = GuestRegionMmap::new(ram_map, GuestAddress(opts.ram_base))
            .ok_or(LocalBusError::InvalidOptions("RAM base + size overflows"))?;
        let memory = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| LocalBusError::MemoryLayout(e.to_string()))?;

        let kick = fds::create_eventfd()?;
        let call = fds::create_eventfd()?;
        let sock = UnixStream::connect(path).map_err(LocalBusError::io("connect"))?;

        let hello = Hello {
            profile: opts.profile,
            max_msg_size: opts.max_msg_size as u32,
            ram_base: opts.ram_base,
            ram_size: opts.ram_size,
            ring: opts.ring,
            ring_size,
        };
        let fds_out = [
            ram.as_raw_fd(),
            ring_file.as_raw_fd(),
            kick.as_raw_fd(),
            call.as_raw_fd(),
        ];
        let sent = fds::send_with_fds(sock.as_raw_fd(), &hello.encode(), &fds_out);
        debug_assert_eq!(hello.encode().len(), HELLO_LEN);
        // A daemon that turns us away early (busy) may close before our hello
        // lands: its reply is still worth reading.
        match sent {
            Ok(()) | Err(Errno::EPIPE | Errno::ECONNRESET) => {}
            Err(e) => return Err(LocalBusError::os("send hello")(e)),
        }
        let reply = read_reply(&sock, Instant::now() + HANDSHAKE_TIMEOUT)?;
        // The daemon holds its own references now (or refused); ours close.
        drop((ram, ring_file));
        let (max, features) = match reply {
            Reply::Accept {
                max_msg_size,
                transport_features,
            } => (max_msg_size, transport_features),
            Reply::Reject { code, reason } => {
                return Err(LocalBusError::Rejected { code, reason });
            }
        };
        if max < wire::MIN_MSG_SIZE || max as usize > opts.max_msg_size {
            return Err(LocalBusError::Protocol(
                "negotiated max_msg_size out of range",
            ));
        }
        sock.set_nonblocking(true)
            .map_err(LocalBusError::io("set_nonblocking"))?;
        Ok(LocalBusClient {
            scratch: vec![0; opts.ring.slot_size as usize],
            producer,
            consumer,
            _ring_map: ring_map,
            memory: Arc::new(memory),
            kick,
            call,
            sock,
            max_msg_size: max as usize,
            transport_features: features,
            polling: opts.polling,
        })
    }

    /// The negotiated maximum message size.
    pub fn max_msg_size(&self) -> usize {
        self.max_msg_size
    }

    /// Transport feature bits the daemon advertised.
    pub fn transport_features(&self) -> u32 {
        self.transport_features
    }

    /// The driver's own view of its RAM (the memory it shares).
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// Whether `recv` spins instead of waiting for the call doorbell.
    pub fn is_polling(&self) -> bool {
        self.polling
    }

    /// Switch between polling (the daemon does not kick us, `recv` spins)
    /// and doorbell mode.
    pub fn set_polling(&mut self, polling: bool) {
        self.polling = polling;
        self.consumer.set_polling(polling);
    }

    /// Send one frame, kicking the daemon if it asked for kicks.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), LocalBusError> {
        if frame.len() > self.max_msg_size {
            return Err(LocalBusError::FrameTooLarge {
                len: frame.len(),
                max: self.max_msg_size,
            });
        }
        let mut deadline = None;
        loop {
            match self.producer.try_push(frame) {
                Ok(kick) => {
                    if kick {
                        fds::kick(&self.kick).map_err(LocalBusError::os("write kick eventfd"))?;
                    }
                    return Ok(());
                }
                Err(RingError::Full) => {
                    let now = Instant::now();
                    let d = *deadline.get_or_insert_with(|| {
                        let _ = fds::kick(&self.kick);
                        now + SEND_TIMEOUT
                    });
                    if now >= d {
                        return Err(match fds::drain_socket(self.sock.as_fd()) {
                            Ok(SocketState::Closed) => LocalBusError::Disconnected,
                            _ => LocalBusError::RingFull,
                        });
                    }
                    std::thread::yield_now();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receive one frame into `buf`: `Ok(None)` if none arrived within
    /// `timeout` (`None` waits without bound). Waits on the call eventfd
    /// with poll(2), or spins on the ring in polling mode. Frames already in
    /// the ring are delivered before a disconnect is reported.
    pub fn recv(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<Option<usize>, LocalBusError> {
        let deadline = fds::deadline_after(timeout);
        let mut spins = 0u32;
        loop {
            if let Some(n) = self.pop(buf)? {
                return Ok(Some(n));
            }
            // While polling, the clock is read every 64 spins only: it costs
            // as much as a ring check.
            if (!self.polling || spins % 64 == 0) && deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            if self.polling {
                spins += 1;
                if spins % SPINS_PER_SOCKET_CHECK == 0 {
                    self.check_socket()?;
                    std::thread::yield_now();
                }
                std::hint::spin_loop();
                continue;
            }
            // Doorbell mode: our flag is clear, so any push after the pop
            // above rings `call` and this wait returns.
            let ready = fds::wait_readable(&[self.call.as_fd(), self.sock.as_fd()], deadline)?;
            if ready[0] {
                fds::drain(&self.call).map_err(LocalBusError::os("read call eventfd"))?;
            }
            if ready[1] {
                // Deliver what is already queued before reporting the end.
                if let Some(n) = self.pop(buf)? {
                    return Ok(Some(n));
                }
                self.check_socket()?;
            }
        }
    }

    fn check_socket(&self) -> Result<(), LocalBusError> {
        match fds::drain_socket(self.sock.as_fd()) {
            Ok(SocketState::Closed) => Err(LocalBusError::Disconnected),
            Ok(SocketState::Idle) => Ok(()),
            Err(e) => Err(LocalBusError::os("recv control socket")(e)),
        }
    }

    fn pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, LocalBusError> {
        if buf.len() >= self.consumer.max_frame() {
            return Ok(self.consumer.try_pop(buf)?);
        }
        match self.consumer.try_pop(&mut self.scratch)? {
            Some(n) if n <= buf.len() => {
                buf[..n].copy_from_slice(&self.scratch[..n]);
                Ok(Some(n))
            }
            Some(n) => Err(LocalBusError::FrameTooLarge {
                len: n,
                max: buf.len(),
            }),
            None => Ok(None),
        }
    }
}

/// Read the daemon's answer to the hello.
fn read_reply(sock: &UnixStream, deadline: Instant) -> Result<Reply, LocalBusError> {
    let mut head = [0u8; REPLY_HEAD_LEN];
    fds::recv_exact(sock.as_fd(), &mut head, deadline)?;
    let (_, reason_len) = Reply::decode_head(&head)?;
    let mut reason = vec![0u8; reason_len];
    fds::recv_exact(sock.as_fd(), &mut reason, deadline)?;
    Reply::decode(&head, &reason)
}

// The client is handed to driver threads.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<LocalBusClient>();
};
