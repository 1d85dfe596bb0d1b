//! What every mapping of foreign or shared pages offers: a byte range to be
//! accessed with volatile operations, plus the unmap-notify request shared by
//! gntdev and gntalloc.

use std::fmt;

use vm_memory::VolatileSlice;

use crate::EvtchnPort;

/// A live mapping of pages shared with (or by) another domain.
///
/// The other domain may change the bytes at any time, so the contents are
/// only ever reached through volatile accesses ([`MappedPages::volatile_slice`])
/// or raw pointers; never through `&[u8]`.
///
/// # Safety
///
/// Implementors guarantee that `as_ptr()..as_ptr() + len()` is mapped,
/// readable (and writable if the mapping was requested writable) for as long
/// as the value lives, and that both methods return the same values every time.
pub unsafe trait MappedPages: Send + Sync + fmt::Debug {
    /// Start of the mapping.
    fn as_ptr(&self) -> *mut u8;

    /// Length of the mapping in bytes (a multiple of 4 KiB).
    fn len(&self) -> usize;

    /// Whether the mapping is empty (never, for the mappings of this crate).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of 4 KiB pages mapped.
    fn pages(&self) -> usize {
        self.len() / crate::bindings::XEN_PAGE_SIZE
    }

    /// The mapping as a bounds-checked volatile slice.
    fn volatile_slice(&self) -> VolatileSlice<'_> {
        // SAFETY: the trait's contract says the range is mapped for the life
        // of `self`, which bounds the slice's lifetime.
        unsafe { VolatileSlice::new(self.as_ptr(), self.len()) }
    }
}

/// What the kernel does for us when a gntdev or gntalloc mapping goes away,
/// even if this process dies: the classic way to tell the peer "the backend
/// is gone" without relying on our own cleanup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Zero this byte offset (within the mapping) on unmap.
    pub clear_byte: Option<usize>,
    /// Notify this (locally bound) event channel port on unmap.
    pub send_event: Option<EvtchnPort>,
}

impl UnmapNotify {
    /// The `(offset, action)` pair of `ioctl_*_unmap_notify`: the byte offset
    /// within the mapping that the notification is attached to and the
    /// `UNMAP_NOTIFY_*` bits. `None` if `clear_byte` is outside `len`.
    pub(crate) fn encode(&self, len: usize) -> Option<(u64, u32)> {
        use crate::bindings::gntdev::{UNMAP_NOTIFY_CLEAR_BYTE, UNMAP_NOTIFY_SEND_EVENT};
        let mut action = 0;
        let mut offset = 0;
        if let Some(byte) = self.clear_byte {
            if byte >= len {
                return None;
            }
            action |= UNMAP_NOTIFY_CLEAR_BYTE;
            offset = byte;
        }
        if self.send_event.is_some() {
            action |= UNMAP_NOTIFY_SEND_EVENT;
        }
        Some((offset as u64, action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmap_notify_encoding() {
        assert_eq!(UnmapNotify::default().encode(4096), Some((0, 0)));
        let n = UnmapNotify {
            clear_byte: Some(17),
            send_event: Some(5),
        };
        assert_eq!(n.encode(4096), Some((17, 3)));
        let n = UnmapNotify {
            clear_byte: None,
            send_event: Some(5),
        };
        assert_eq!(n.encode(4096), Some((0, 2)));
        let n = UnmapNotify {
            clear_byte: Some(4096),
            send_event: None,
        };
        assert_eq!(n.encode(4096), None);
    }
}
