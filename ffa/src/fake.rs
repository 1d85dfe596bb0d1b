//! A **simulated SPMC** for tests: the normal world's memory as a byte
//! buffer, memory sharing with the rules of FF-A v1.2 as TF-A's EL3 SPMC
//! applies them, and faults on demand.
//!
//! * The driver side shares a range of its memory ([`FakeSpmc::share`],
//!   FFA_MEM_SHARE/LEND) and gets a handle; the partition retrieves it once
//!   (a second retrieve is `DENIED`), only as the endpoint it was shared
//!   with, with the right sender, tag and share type (`INVALID_PARAMETERS`
//!   otherwise), and relinquishes it; the driver reclaims only what is not
//!   retrieved (`DENIED`).
//! * Notifications are `NOT_SUPPORTED` unless enabled (the EL3 SPMC has
//!   none).
//! * [`FakeSpmc::fail_next`] makes the next call of a kind fail with a
//!   given error (`BUSY`, `DENIED`, `NO_MEMORY`, …).

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use arm_ffa::Interface;

use vmsg_device_core::memory::{DmaMemory, MemoryError};

use crate::spmc::{Spmc, SpmcError};
use crate::window::Window;

/// The normal world's RAM, shared by the simulated SPMC and the driver side
/// of a test: its own buffer, or memory the test mapped itself (so a
/// vmsg-driver `GuestMemoryMmap` and the partition see the same bytes).
#[derive(Debug)]
pub struct NsMemory {
    base: u64,
    ptr: *mut u8,
    len: usize,
    /// Keeps the buffer of [`NsMemory::new`] alive (never resized).
    _owned: Option<Vec<u8>>,
}

impl NsMemory {
    /// `size` bytes of zeroed RAM at physical address `base`.
    pub fn new(base: u64, size: usize) -> Rc<Self> {
        let mut owned = vec![0u8; size];
        let ptr = owned.as_mut_ptr();
        Rc::new(Self {
            base,
            ptr,
            len: size,
            _owned: Some(owned),
        })
    }

    /// RAM at physical address `base` that lives at `ptr` for `len` bytes.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must stay mapped, readable and writable for as
    /// long as this memory and every window of it are used.
    pub unsafe fn from_raw(base: u64, ptr: *mut u8, len: usize) -> Rc<Self> {
        Rc::new(Self {
            base,
            ptr,
            len,
            _owned: None,
        })
    }

    /// Physical base.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn offset(&self, pa: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(pa.checked_sub(self.base)?).ok()?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }

    /// A window over `[pa, pa + len)`.
    fn window(&self, pa: u64, len: usize) -> Option<Window> {
        let off = self.offset(pa, len)?;
        // SAFETY: the range is inside the memory, which outlives the
        // windows (constructor contracts) and holds nothing but test data.
        Some(unsafe { Window::new(self.ptr.add(off), len) })
    }

    fn whole(&self, pa: u64, len: usize) -> Result<Window, MemoryError> {
        self.window(pa, len).ok_or(MemoryError {
            addr: pa,
            len: len as u64,
        })
    }
}

/// The driver side's view: its own memory by physical address.
impl DmaMemory for NsMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.whole(addr, buf.len())?.read(0, buf);
        Ok(())
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.whole(addr, data.len())?.write(0, data);
        Ok(())
    }
    fn check(&self, addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|l| self.offset(addr, l).is_some())
    }
}

/// Which SPMC call [`FakeSpmc::fail_next`] makes fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Call {
    /// FFA_MEM_RETRIEVE_REQ.
    Retrieve,
    /// FFA_MEM_RELINQUISH.
    Relinquish,
    /// FFA_NOTIFICATION_SET.
    Notify,
}

#[derive(Debug)]
struct Share {
    owner: u16,
    receiver: u16,
    pa: u64,
    pages: u32,
    tag: u64,
    lend: bool,
    retrieved: bool,
}

/// What the partition's and the driver's sides of the one SPMC share.
#[derive(Debug)]
struct State {
    memory: Rc<NsMemory>,
    shares: RefCell<BTreeMap<u64, Share>>,
    next_handle: Cell<u64>,
}

/// The simulated SPMC as the partition sees it (implements [`Spmc`]).
#[derive(Debug)]
pub struct FakeSpmc {
    state: Rc<State>,
    partition_id: u16,
    faults: RefCell<BTreeMap<Call, SpmcError>>,
    notifications: bool,
    /// Notifications set: (receiver, id).
    pub rung: Vec<(u16, u16)>,
    /// Retrieves that succeeded.
    pub retrieved: u64,
    /// Relinquishes that succeeded.
    pub relinquished: u64,
}

/// The same SPMC as the normal world (the driver) calls it: MEM_SHARE,
/// MEM_LEND, MEM_RECLAIM.
#[derive(Clone, Debug)]
pub struct DriverSide {
    state: Rc<State>,
}

impl FakeSpmc {
    /// An SPMC for partition `partition_id` over the normal world's
    /// `memory`; notifications exist only if `notifications`.
    pub fn new(memory: Rc<NsMemory>, partition_id: u16, notifications: bool) -> (Self, DriverSide) {
        let state = Rc::new(State {
            memory,
            shares: RefCell::new(BTreeMap::new()),
            next_handle: Cell::new(0x1000),
        });
        let spmc = Self {
            state: state.clone(),
            partition_id,
            faults: RefCell::new(BTreeMap::new()),
            notifications,
            rung: Vec::new(),
            retrieved: 0,
            relinquished: 0,
        };
        (spmc, DriverSide { state })
    }

    /// Make the next call of `call` fail with `err`.
    pub fn fail_next(&self, call: Call, err: SpmcError) {
        self.faults.borrow_mut().insert(call, err);
    }

    fn fault(&self, call: Call) -> Result<(), SpmcError> {
        self.faults.borrow_mut().remove(&call).map_or(Ok(()), Err)
    }

    /// Handles retrieved and not relinquished.
    pub fn outstanding(&self) -> Vec<u64> {
        self.state
            .shares
            .borrow()
            .iter()
            .filter(|(_, s)| s.retrieved)
            .map(|(&h, _)| h)
            .collect()
    }
}

impl Spmc for FakeSpmc {
    fn retrieve(
        &mut self,
        sender: u16,
        handle: u64,
        tag: u64,
        attrs: u32,
        pages: u32,
    ) -> Result<Window, SpmcError> {
        self.fault(Call::Retrieve)?;
        let mut shares = self.state.shares.borrow_mut();
        let share = shares
            .get_mut(&handle)
            .ok_or(SpmcError::InvalidParameters)?;
        if share.receiver != self.partition_id || share.owner != sender || share.tag != tag {
            return Err(SpmcError::InvalidParameters);
        }
        // The transaction type the partition asks for must be the one the
        // driver used (share 0, lend 1).
        if (attrs & 0b11 == 1) != share.lend {
            return Err(SpmcError::InvalidParameters);
        }
        if share.retrieved {
            return Err(SpmcError::Denied);
        }
        if share.pages != pages {
            return Err(SpmcError::Size {
                got: share.pages,
                want: pages,
            });
        }
        let len = share.pages as usize * 4096;
        let window = self
            .state
            .memory
            .window(share.pa, len)
            .ok_or(SpmcError::InvalidParameters)?;
        share.retrieved = true;
        self.retrieved += 1;
        Ok(window)
    }

    fn relinquish(&mut self, handle: u64, window: Window) -> Result<(), SpmcError> {
        self.fault(Call::Relinquish)?;
        let mut shares = self.state.shares.borrow_mut();
        let share = shares
            .get_mut(&handle)
            .ok_or(SpmcError::InvalidParameters)?;
        if !share.retrieved
            || self
                .state
                .memory
                .window(share.pa, share.pages as usize * 4096)
                != Some(window)
        {
            return Err(SpmcError::InvalidParameters);
        }
        share.retrieved = false;
        self.relinquished += 1;
        Ok(())
    }

    fn notify(&mut self, receiver: u16, id: u16) -> Result<(), SpmcError> {
        if !self.notifications {
            return Err(SpmcError::NotSupported);
        }
        self.fault(Call::Notify)?;
        self.rung.push((receiver, id));
        Ok(())
    }

    fn has_notifications(&self) -> bool {
        self.notifications
    }
}

impl DriverSide {
    /// The normal world's memory.
    pub fn memory(&self) -> Rc<NsMemory> {
        self.state.memory.clone()
    }

    /// FFA_MEM_SHARE (or LEND) of `pages` pages at `pa` by endpoint `owner`
    /// to `receiver`, with `tag`: the handle.
    pub fn share(
        &self,
        owner: u16,
        receiver: u16,
        pa: u64,
        pages: u32,
        tag: u64,
        lend: bool,
    ) -> Result<u64, SpmcError> {
        if pages == 0 || !self.state.memory.check(pa, u64::from(pages) * 4096) || pa % 4096 != 0 {
            return Err(SpmcError::InvalidParameters);
        }
        let handle = self.state.next_handle.get();
        self.state.next_handle.set(handle + 1);
        self.state.shares.borrow_mut().insert(
            handle,
            Share {
                owner,
                receiver,
                pa,
                pages,
                tag,
                lend,
                retrieved: false,
            },
        );
        Ok(handle)
    }

    /// FFA_MEM_RECLAIM: only what the receiver relinquished.
    pub fn reclaim(&self, handle: u64) -> Result<(), SpmcError> {
        let mut shares = self.state.shares.borrow_mut();
        match shares.get(&handle) {
            None => Err(SpmcError::InvalidParameters),
            Some(s) if s.retrieved => Err(SpmcError::Denied),
            Some(_) => {
                shares.remove(&handle);
                Ok(())
            }
        }
    }
}

/// The state of one execution context of the simulated partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    /// Not yet through its initialisation (no FFA_MSG_WAIT yet).
    Init,
    /// Blocked in FFA_MSG_WAIT or after a direct response: requests may
    /// be delivered.
    Waiting,
}

/// The SPMC's handling of direct messages to one partition, with FF-A's
/// run-to-completion rules as TF-A's EL3 SPMC applies them: a request goes
/// to the execution context of the caller's core, only if that context is
/// waiting (else `BUSY`); the partition's next call after a request must be
/// the direct response to that very request (swapped ids, same kind), or the
/// SPMC refuses it (`DENIED`, recorded in [`SimDirect::violations`]); only a
/// normal-world sender may send (`INVALID_PARAMETERS`).
#[derive(Debug)]
pub struct SimDirect {
    partition_id: u16,
    contexts: Vec<Context>,
    fault: Option<SpmcError>,
    /// Calls of the partition that broke the rules.
    pub violations: Vec<Interface>,
}

impl SimDirect {
    /// A partition with `cores` execution contexts, none initialised.
    pub fn new(partition_id: u16, cores: usize) -> Self {
        Self {
            partition_id,
            contexts: vec![Context::Init; cores],
            fault: None,
            violations: Vec::new(),
        }
    }

    /// The partition ended its initialisation on `core` with `call`, which
    /// must be FFA_MSG_WAIT.
    pub fn partition_ready(&mut self, core: usize, call: &Interface) -> Result<(), SpmcError> {
        let ctx = self
            .contexts
            .get_mut(core)
            .ok_or(SpmcError::InvalidParameters)?;
        match call {
            Interface::MsgWait { .. } if *ctx == Context::Init => {
                *ctx = Context::Waiting;
                Ok(())
            }
            _ => {
                self.violations.push(*call);
                Err(SpmcError::Denied)
            }
        }
    }

    /// Make the next direct request fail with `err` before it reaches the
    /// partition.
    pub fn fail_next(&mut self, err: SpmcError) {
        self.fault = Some(err);
    }

    /// `src` sends DIRECT_REQ2 with `uuid` and `frame` from `core`: the
    /// partition's answer (`step` is the partition: its next call after a
    /// message) must be the DIRECT_RESP2, whose frame is returned.
    pub fn direct_req2(
        &mut self,
        core: usize,
        src: u16,
        uuid: arm_ffa::Uuid,
        frame: &[u8; crate::bus::DIRECT_PAYLOAD],
        step: &mut dyn FnMut(&Interface) -> Interface,
    ) -> Result<[u8; crate::bus::DIRECT_PAYLOAD], SpmcError> {
        if let Some(e) = self.fault.take() {
            return Err(e);
        }
        if src & 0x8000 != 0 {
            return Err(SpmcError::InvalidParameters);
        }
        match self.contexts.get(core) {
            None => return Err(SpmcError::InvalidParameters),
            Some(Context::Init) => return Err(SpmcError::Busy),
            Some(Context::Waiting) => {}
        }
        let request = Interface::MsgSendDirectReq2 {
            src_id: src,
            dst_id: self.partition_id,
            uuid,
            args: crate::partition::frame_args(frame),
        };
        match step(&request) {
            Interface::MsgSendDirectResp2 {
                src_id,
                dst_id,
                args,
            } if src_id == self.partition_id && dst_id == src => {
                Ok(crate::partition::frame_bytes(&args))
            }
            other => {
                self.violations.push(other);
                Err(SpmcError::Denied)
            }
        }
    }
}
