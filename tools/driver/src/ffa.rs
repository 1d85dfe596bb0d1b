//! The driver side of the virtio-msg FF-A bus (v2 binding), against the
//! FF-A bus and partition logic of `vmsg-ffa` under its **simulated SPMC**
//! (feature `ffa`; a test vehicle: the real secure world is in
//! `tests/ffa-qemu`).
//!
//! What a Linux FF-A bus driver does before virtio probing happens here at
//! connection: the VERSION probe and echo, FFA_MEM_SHARE of the driver's RAM
//! and AREA_SHARE of it as area 1, EVENT_CONFIGURE(poll). From then on every
//! frame the transport sends is one DIRECT_REQ2 through the simulated
//! SPMC's run-to-completion rules to the partition's dispatch; its
//! DIRECT_RESP2 is the answer. The bus layer keeps its own messages from
//! the transport above it, as the Linux binding does: the header-only ack of
//! an event, and an ERROR answer (the transport sees no response, as for a
//! dropped request, §6.3). After each exchange it drains EVENT_POLL, so
//! EVENT_USED and EVENT_CONFIG reach the transport in order.
//!
//! The driver's RAM lives at bus address `1 << 48` (area 1, offset 0):
//! those are the addresses vmsg-driver puts in SET_VQUEUE and descriptors,
//! and the same bytes are the normal world's memory the simulated SPMC
//! shares with the partition.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmsg_device_core::blk::{BlockStore, StoreError};
use vmsg_device_core::host::CoreDevice;
use vmsg_device_core::rng::{EntropyError, EntropySource};
use vmsg_ffa::bus::{DIRECT_PAYLOAD, FfaBus};
use vmsg_ffa::fake::{DriverSide, FakeSpmc, NsMemory, SimDirect};
use vmsg_ffa::msg::FfaProfile;
use vmsg_ffa::partition::{DEVICE_UUID, MSG_WAIT, PartitionCounters, answer};

use crate::bus::{BusIoError, DriverBus};
use crate::wire::Profile;

/// The driver's endpoint id; the partition's.
const DRIVER_ID: u16 = 0x0001;
const PARTITION_ID: u16 = 0x8001;
/// Where the driver's RAM is in its physical address space (what it shares).
const NS_PA: u64 = 0x8000_0000;
/// Its bus address: area 1, offset 0.
const AREA: u16 = 1;
/// Largest frame on the v2 FF-A bus (reference §8.3).
pub const FFA_MAX_MSG: usize = 96;
/// EVENT_POLLs per exchange at most (the partition queues at most 64).
const POLL_BOUND: usize = 128;

fn backend(what: impl Into<String>) -> BusIoError {
    BusIoError::Backend(what.into().into())
}

/// Entropy from the host's `/dev/urandom`, for the partition's rng in
/// simulation.
#[derive(Debug)]
pub struct HostEntropy;

impl EntropySource for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(buf))
            .map_err(|_| EntropyError)
    }
}

/// A RAM disk for the partition's blk in simulation.
#[derive(Debug)]
pub struct VecStore(pub Vec<u8>);

impl BlockStore for VecStore {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let s = usize::try_from(offset).map_err(|_| StoreError)?;
        let src = self.0.get(s..s + buf.len()).ok_or(StoreError)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let s = usize::try_from(offset).map_err(|_| StoreError)?;
        let dst = self.0.get_mut(s..s + data.len()).ok_or(StoreError)?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), StoreError> {
        let s = usize::try_from(offset).map_err(|_| StoreError)?;
        let n = usize::try_from(len).map_err(|_| StoreError)?;
        self.0.get_mut(s..s + n).ok_or(StoreError)?.fill(0);
        Ok(())
    }
}

/// The simulated secure world: the partition's bus and dispatch, the SPMC's
/// rules, the driver's memory. Shared by the connections a test makes.
pub struct SimFfaWorld {
    sim: SimDirect,
    bus: FfaBus<FakeSpmc>,
    driver: DriverSide,
    counters: PartitionCounters,
    mem: Arc<GuestMemoryMmap<()>>,
    pages: u32,
    handle: Option<u64>,
    token: u16,
}

impl std::fmt::Debug for SimFfaWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFfaWorld")
            .field("bus", &self.bus)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl SimFfaWorld {
    /// A partition hosting `devices`, and `ram` bytes of driver memory.
    pub fn new(
        devices: Vec<(u16, Box<dyn CoreDevice>)>,
        ram: usize,
    ) -> Result<Rc<RefCell<Self>>, BusIoError> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(u64::from(AREA) << 48), ram)])
            .map_err(|e| backend(format!("driver RAM: {e}")))?;
        let mem = Arc::new(mem);
        let host = mem
            .get_host_address(GuestAddress(u64::from(AREA) << 48))
            .map_err(|e| backend(format!("driver RAM: {e}")))?;
        // SAFETY: the mapping is owned by `mem`, which the world keeps for
        // as long as the simulated SPMC and its windows exist.
        let ns = unsafe { NsMemory::from_raw(NS_PA, host, ram) };
        let (spmc, driver) = FakeSpmc::new(ns, PARTITION_ID, false);
        let mut sim = SimDirect::new(PARTITION_ID, 1);
        sim.partition_ready(0, &MSG_WAIT)
            .map_err(|e| backend(format!("partition start: {e}")))?;
        Ok(Rc::new(RefCell::new(Self {
            sim,
            bus: FfaBus::new(FfaProfile::V2, spmc, devices),
            driver,
            counters: PartitionCounters::default(),
            mem,
            pages: u32::try_from(ram / 4096).map_err(|_| backend("driver RAM too large"))?,
            handle: None,
            token: 1,
        })))
    }

    /// The partition's bus (counters, devices).
    pub fn bus(&self) -> &FfaBus<FakeSpmc> {
        &self.bus
    }

    /// Rule violations the simulated SPMC saw.
    pub fn violations(&self) -> usize {
        self.sim.violations.len()
    }

    /// One DIRECT_REQ2 with `frame`; the DIRECT_RESP2 frame.
    fn direct(&mut self, frame: &[u8]) -> Result<[u8; DIRECT_PAYLOAD], BusIoError> {
        if frame.len() > FFA_MAX_MSG {
            return Err(BusIoError::FrameTooLarge {
                size: frame.len(),
                max: FFA_MAX_MSG,
            });
        }
        let mut regs = [0u8; DIRECT_PAYLOAD];
        regs[..frame.len()].copy_from_slice(frame);
        let Self {
            sim, bus, counters, ..
        } = self;
        sim.direct_req2(0, DRIVER_ID, DEVICE_UUID, &regs, &mut |m| {
            answer(m, counters, &mut |s, f, o| {
                bus.handle_direct(s, f, o);
            })
        })
        .map_err(|e| backend(format!("FFA_MSG_SEND_DIRECT_REQ2: {e}")))
    }

    /// An FF-A bus request of the bus layer (§8.4); the response payload.
    fn bus_request(&mut self, msg_id: u8, payload: &[u8]) -> Result<Vec<u8>, BusIoError> {
        self.token = self.token.wrapping_add(1).max(2);
        let mut f = vec![0x02, msg_id, 0, 0];
        f.extend_from_slice(&self.token.to_le_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_le_bytes());
        f.extend_from_slice(payload);
        let r = self.direct(&f)?;
        if r[0] != 0x03 || r[1] != msg_id {
            return Err(backend(format!(
                "FF-A bus request {msg_id:#04x} answered {:02x?}",
                &r[..10]
            )));
        }
        let size = usize::from(u16::from_le_bytes([r[6], r[7]])).clamp(8, DIRECT_PAYLOAD);
        Ok(r[8..size].to_vec())
    }

    /// What a driver's bus layer does at connection: RESET a previous
    /// session (and reclaim its memory), negotiate, share the RAM, poll.
    fn connect(&mut self) -> Result<(), BusIoError> {
        if self.bus.negotiated() || self.handle.is_some() {
            let r = self.bus_request(0x83, &[])?;
            if r.first() != Some(&0) {
                return Err(backend(format!("RESET answered {r:?}")));
            }
        }
        if let Some(h) = self.handle.take() {
            self.driver
                .reclaim(h)
                .map_err(|e| backend(format!("MEM_RECLAIM after RESET: {e}")))?;
        }
        let mut v = Vec::new();
        for w in [0u32, 0, 0x10002] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        let probe = self.bus_request(0x80, &v)?;
        v.clear();
        v.extend_from_slice(&probe[..8]);
        v.extend_from_slice(&0x10002u32.to_le_bytes());
        let echo = self.bus_request(0x80, &v)?;
        if echo[..8] != probe[..8] || probe[..4] != 0x0001_0000u32.to_le_bytes() {
            return Err(backend("VERSION negotiation failed"));
        }
        let handle = self
            .driver
            .share(DRIVER_ID, PARTITION_ID, NS_PA, self.pages, 0, false)
            .map_err(|e| backend(format!("FFA_MEM_SHARE: {e}")))?;
        self.handle = Some(handle);
        let mut p = Vec::new();
        p.extend_from_slice(&AREA.to_le_bytes());
        p.extend_from_slice(&handle.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(&self.pages.to_le_bytes());
        p.extend_from_slice(&0x6F4u32.to_le_bytes());
        let r = self.bus_request(0x81, &p)?;
        if r.get(2..4) != Some(&[0, 0][..]) {
            return Err(backend(format!("AREA_SHARE answered {r:?}")));
        }
        let r = self.bus_request(0x85, &[0, 0, 0, 0])?;
        if r.first() != Some(&0) {
            return Err(backend(format!("EVENT_CONFIGURE answered {r:?}")));
        }
        Ok(())
    }

    /// Drain the partition's pending events.
    fn poll_events(&mut self, into: &mut VecDeque<Vec<u8>>) -> Result<(), BusIoError> {
        for _ in 0..POLL_BOUND {
            self.token = self.token.wrapping_add(1).max(2);
            let mut f = vec![0x02, 0x84, 0, 0];
            f.extend_from_slice(&self.token.to_le_bytes());
            f.extend_from_slice(&8u16.to_le_bytes());
            let r = self.direct(&f)?;
            let size = usize::from(u16::from_le_bytes([r[6], r[7]])).clamp(8, DIRECT_PAYLOAD);
            if r[0] == 0x03 && r[1] == 0x84 {
                return Ok(());
            }
            into.push_back(r[..size].to_vec());
        }
        Err(backend("EVENT_POLL never ran dry"))
    }
}

/// One connection of the driver to the simulated partition.
#[derive(Debug)]
pub struct SimFfaDriverBus {
    world: Rc<RefCell<SimFfaWorld>>,
    mem: Arc<GuestMemoryMmap<()>>,
    inbox: VecDeque<Vec<u8>>,
}

impl SimFfaDriverBus {
    /// Connect to `world` (its previous session, if any, is RESET).
    pub fn connect(world: &Rc<RefCell<SimFfaWorld>>) -> Result<Self, BusIoError> {
        let mem = {
            let mut w = world.borrow_mut();
            w.connect()?;
            w.mem.clone()
        };
        Ok(Self {
            world: world.clone(),
            mem,
            inbox: VecDeque::new(),
        })
    }
}

impl DriverBus for SimFfaDriverBus {
    fn max_msg_size(&self) -> usize {
        FFA_MAX_MSG
    }

    fn profile(&self) -> Profile {
        Profile::V2
    }

    fn transport_features(&self) -> u32 {
        0
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), BusIoError> {
        let mut w = self.world.borrow_mut();
        let r = w.direct(frame)?;
        let size = usize::from(u16::from_le_bytes([r[6], r[7]])).clamp(8, DIRECT_PAYLOAD);
        let ack = r[0] == 0x03 && r[1] == 0 && size == 8;
        let error = r[0] == 0x03 && r[1] == 0x87;
        let busy = r.iter().all(|&b| b == 0);
        // The bus layer's own answers stay in the bus layer.
        if !(ack || error || busy) {
            self.inbox.push_back(r[..size].to_vec());
        }
        w.poll_events(&mut self.inbox)
    }

    fn recv(
        &mut self,
        buf: &mut [u8],
        _timeout: Option<Duration>,
    ) -> Result<Option<usize>, BusIoError> {
        // The partition answers synchronously: what it has not sent by now
        // it never will, so there is nothing to wait for.
        let Some(f) = self.inbox.pop_front() else {
            return Ok(None);
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(n))
    }

    fn memory(&self) -> &Arc<GuestMemoryMmap<()>> {
        &self.mem
    }

    fn carries_frame_length(&self) -> bool {
        // The frame is the register window; its length is msg_size.
        false
    }
}

/// A connector for `conformance::run_suite`: each call connects afresh
/// (RESET, negotiation, sharing) to the same simulated partition.
pub fn connector(
    world: Rc<RefCell<SimFfaWorld>>,
) -> impl FnMut() -> Result<Box<dyn DriverBus>, BusIoError> {
    move || Ok(Box::new(SimFfaDriverBus::connect(&world)?) as Box<dyn DriverBus>)
}
