//! The partition's side of the SPMC for the FF-A bus, with real FF-A calls:
//! FFA_MEM_RETRIEVE_REQ of the regions a driver shared (descriptors in the
//! partition's TX buffer, the answer in its RX buffer), their mapping into
//! the partition's own stage-1 tables (the EL3 SPMC has no stage 2: the
//! partition maps what it retrieved, non-secure, and unmaps it before
//! FFA_MEM_RELINQUISH), and notifications (which TF-A's EL3 SPMC lacks).

use alloc::vec::Vec;

use arm_ffa::Interface;
use arm_ffa::interface_args::{RxTxAddr, SuccessArgsIdGet};
use arm_ffa::memory_management::{
    DataAccessPerm, Handle, MemAccessPerm, MemRelinquishDesc, MemTransactionDesc,
    MemTransactionFlags,
};
use spin::Mutex;
use vmsg_ffa::spmc::{Spmc, SpmcError};
use vmsg_ffa::window::Window;

use crate::conduit::{self, CallError};
use crate::mmu::{self, Tables};

/// Where retrieved areas are mapped: above every physical range of QEMU's
/// virt machine the partition identity-maps, inside its 4 GiB of VA.
const AREA_VA: (usize, usize) = (0xC000_0000, 0x1_0000_0000);
const PAGE: usize = 4096;

#[repr(C, align(4096))]
struct Mailbox([u8; PAGE]);

static mut TX: Mailbox = Mailbox([0; PAGE]);
static mut RX: Mailbox = Mailbox([0; PAGE]);

/// TF-A's EL3 SPMC, as the partition reaches it through `smc`.
pub struct El3Spmc {
    own_id: u16,
    tables: &'static Mutex<Tables>,
    /// Free VA ranges for areas, first fit.
    free: Vec<(usize, usize)>,
    tx: &'static mut [u8; PAGE],
    rx: &'static [u8; PAGE],
}

impl core::fmt::Debug for El3Spmc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("El3Spmc")
            .field("own_id", &self.own_id)
            .finish_non_exhaustive()
    }
}

fn ffa_error(e: CallError) -> SpmcError {
    use arm_ffa::FfaError as E;
    match e {
        CallError::Ffa(E::InvalidParameters) => SpmcError::InvalidParameters,
        CallError::Ffa(E::Denied) => SpmcError::Denied,
        CallError::Ffa(E::NotSupported) => SpmcError::NotSupported,
        CallError::Ffa(E::Busy) => SpmcError::Busy,
        CallError::Ffa(E::NoMemory) => SpmcError::NoMemory,
        _ => SpmcError::InvalidParameters,
    }
}

impl El3Spmc {
    /// Learn the partition's id and map its RX/TX buffers with the SPMC.
    /// Once, at start (the buffers are static).
    pub fn init(tables: &'static Mutex<Tables>) -> Result<Self, CallError> {
        let own_id = match conduit::call(&Interface::IdGet)? {
            Interface::Success { args, .. } => SuccessArgsIdGet::try_from(args)
                .map(|a| a.id)
                .map_err(CallError::Decode)?,
            _ => return Err(CallError::Ffa(arm_ffa::FfaError::NotSupported)),
        };
        // SAFETY: called once; the buffers are used by nothing else (the TX
        // buffer only by this type, the RX buffer written by the SPMC and
        // read here between a call and FFA_RX_RELEASE).
        let (tx, rx) = unsafe {
            (
                &mut (*core::ptr::addr_of_mut!(TX)).0,
                &(*core::ptr::addr_of!(RX)).0,
            )
        };
        conduit::call(&Interface::RxTxMap {
            addr: RxTxAddr::Addr64 {
                rx: rx.as_ptr() as u64,
                tx: tx.as_ptr() as u64,
            },
            page_cnt: 1,
        })?;
        Ok(Self {
            own_id,
            tables,
            free: alloc::vec![AREA_VA],
            tx,
            rx,
        })
    }

    /// The partition's FF-A id.
    pub fn own_id(&self) -> u16 {
        self.own_id
    }

    fn take_va(&mut self, len: usize) -> Option<usize> {
        let i = self.free.iter().position(|&(_, l)| l >= len)?;
        let (start, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (start + len, l - len);
        }
        Some(start)
    }

    fn give_va(&mut self, start: usize, len: usize) {
        self.free.push((start, len));
        self.free.sort_unstable();
        // Merge neighbours.
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.free.len());
        for &(s, l) in &self.free {
            match merged.last_mut() {
                Some(last) if last.0 + last.1 == s => last.1 += l,
                _ => merged.push((s, l)),
            }
        }
        self.free = merged;
    }

    fn release_rx(&self) {
        let _ = conduit::call(&Interface::RxRelease { vm_id: self.own_id });
    }

    fn relinquish_handle(&mut self, handle: u64) -> Result<(), SpmcError> {
        // The descriptor goes in the TX buffer; the call names no length.
        MemRelinquishDesc {
            handle: Handle(handle),
            flags: 0,
        }
        .pack(&[self.own_id], &mut self.tx[..]);
        conduit::call(&Interface::MemRelinquish)
            .map(|_| ())
            .map_err(ffa_error)
    }
}

impl Spmc for El3Spmc {
    fn retrieve(
        &mut self,
        sender: u16,
        handle: u64,
        tag: u64,
        attrs: u32,
        pages: u32,
    ) -> Result<Window, SpmcError> {
        // The transaction type must be the driver's: share or lend.
        let kind = match attrs & 0b11 {
            0 => MemTransactionFlags::TYPE_SHARE,
            1 => MemTransactionFlags::TYPE_LEND,
            _ => return Err(SpmcError::InvalidParameters),
        };
        let desc = MemTransactionDesc {
            sender_id: sender,
            flags: MemTransactionFlags(kind),
            handle: Handle(handle),
            tag,
            ..MemTransactionDesc::default()
        };
        let access = [MemAccessPerm {
            endpoint_id: self.own_id,
            data_access: DataAccessPerm::ReadWrite,
            ..MemAccessPerm::default()
        }];
        let len = desc.pack(&[], &access, &mut self.tx[..]) as u32;
        let (total, frag) = match conduit::call(&Interface::MemRetrieveReq {
            total_len: len,
            frag_len: len,
            buf: None,
        }) {
            Ok(Interface::MemRetrieveResp {
                total_len,
                frag_len,
            }) => (total_len as usize, frag_len as usize),
            Ok(_) => return Err(SpmcError::InvalidParameters),
            Err(e) => return Err(ffa_error(e)),
        };
        // This SPMC sends the whole description in one fragment for the
        // sizes a driver shares here; a longer one is refused (and given back).
        let mut ranges: Vec<(u64, u32)> = Vec::new();
        let parsed = if frag == total && total <= PAGE {
            match MemTransactionDesc::unpack(&self.rx[..total]) {
                Ok((_, _, Some(constituents))) => constituents
                    .map(|c| c.map(|c| (c.address, c.page_cnt)))
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| ranges = v)
                    .is_ok(),
                _ => false,
            }
        } else {
            false
        };
        self.release_rx();
        let got: u32 = ranges.iter().map(|&(_, n)| n).sum();
        let aligned = ranges
            .iter()
            .all(|&(pa, _)| (pa as usize).is_multiple_of(PAGE));
        if !parsed || !aligned || got != pages {
            let _ = self.relinquish_handle(handle);
            return Err(if parsed && aligned {
                SpmcError::Size { got, want: pages }
            } else {
                SpmcError::InvalidParameters
            });
        }
        let len = pages as usize * PAGE;
        let Some(va) = self.take_va(len) else {
            let _ = self.relinquish_handle(handle);
            return Err(SpmcError::NoMemory);
        };
        {
            let mut tables = self.tables.lock();
            let mut at = va;
            for &(pa, n) in &ranges {
                let bytes = n as usize * PAGE;
                mmu::map_at(&mut tables, at, pa as usize, bytes, true);
                at += bytes;
            }
        }
        // SAFETY: [va, va + len) was just mapped (non-secure, read/write) to
        // the retrieved pages, is used for nothing else, and stays mapped
        // until `relinquish` unmaps it.
        Ok(unsafe { Window::new(va as *mut u8, len) })
    }

    fn relinquish(&mut self, handle: u64, window: Window) -> Result<(), SpmcError> {
        let va = window.as_ptr() as usize;
        mmu::unmap(&mut self.tables.lock(), va, window.len());
        self.give_va(va, window.len());
        self.relinquish_handle(handle)
    }

    fn notify(&mut self, _receiver: u16, _id: u16) -> Result<(), SpmcError> {
        // TF-A's EL3 SPMC implements no notifications.
        Err(SpmcError::NotSupported)
    }

    fn has_notifications(&self) -> bool {
        false
    }
}
