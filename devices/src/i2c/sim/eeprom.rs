//! A 24C02-style serial EEPROM: 256 bytes, an 8-bit address pointer,
//! 8-byte write pages.
//!
//! What it models (as in the Atmel/Microchip 24C02 datasheets):
//! - **Byte and page writes**: after START+W the first byte sets the
//!   address pointer, each further byte goes to the page buffer at the
//!   pointer, and the pointer's low 3 bits advance and **wrap within the
//!   8-byte page** (a ninth byte overwrites the first of the page). The
//!   page is programmed at STOP — the write cycle. A repeated START before
//!   the STOP abandons the page buffer (no write cycle).
//! - **Reads**: current-address read (START+R), random read (write the
//!   pointer, repeated START, read) and sequential reads; the pointer
//!   advances through the **whole memory and rolls over** from 0xff to 0x00.
//! - **Erased state**: a new part reads 0xff everywhere.
//! - **Persistence**: with a backing file the write cycle writes the page
//!   to the file and `fdatasync`s it before the STOP completes, so a write
//!   the guest saw succeed survives a restart of vmsgd or of the host; a
//!   write cycle that cannot be made durable fails (the guest sees
//!   `VIRTIO_I2C_MSG_ERR`) and leaves the contents as they were.
//!
//! Not modelled: the write cycle time (the real part NACKs for ~5 ms after a
//! STOP; this one is ready at once, so acknowledge polling succeeds
//! immediately) and the write-protect pin.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{SimChip, SimError};

/// Capacity in bytes.
pub const SIZE: usize = 256;
/// Write page size in bytes.
pub const PAGE: usize = 8;

/// The simulated EEPROM.
#[derive(Debug)]
pub struct Eeprom24c02 {
    mem: [u8; SIZE],
    pointer: u8,
    /// Bytes written since the address byte, by offset in the page of
    /// `page_base`; `None` before the address byte of a write.
    page: Option<PageBuffer>,
    /// A write START was seen and its first byte (the address) is next.
    pending_address: bool,
    backing: Option<(File, PathBuf)>,
    /// Write cycles carried out (for tests and the demo).
    write_cycles: u64,
}

#[derive(Debug)]
struct PageBuffer {
    base: u8,
    bytes: [Option<u8>; PAGE],
}

impl Default for Eeprom24c02 {
    fn default() -> Self {
        Self::new()
    }
}

impl Eeprom24c02 {
    /// An erased EEPROM in memory only.
    pub fn new() -> Self {
        Self {
            mem: [0xff; SIZE],
            pointer: 0,
            page: None,
            pending_address: false,
            backing: None,
            write_cycles: 0,
        }
    }

    /// An EEPROM whose contents live in `path`: read from it if it exists
    /// (it must be exactly 256 bytes; an empty file counts as erased),
    /// created erased (0xff) otherwise.
    pub fn with_backing_file(path: &Path) -> Result<Self, SimError> {
        let err = |what: String| SimError::Backing {
            path: path.display().to_string(),
            what,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| err(format!("cannot open or create: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| err(format!("cannot stat: {e}")))?
            .len();
        let mut chip = Self::new();
        match len {
            0 => {
                // A new part: erased, and durable as such.
                file.write_all_at(&chip.mem, 0)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| err(format!("cannot initialise: {e}")))?;
            }
            n if n == SIZE as u64 => {
                file.read_exact_at(&mut chip.mem, 0)
                    .map_err(|e| err(format!("cannot read: {e}")))?;
            }
            n => {
                return Err(err(format!(
                    "is {n} bytes; a 24c02 backing file holds exactly {SIZE}"
                )));
            }
        }
        chip.backing = Some((file, path.to_path_buf()));
        Ok(chip)
    }

    /// The contents.
    pub fn contents(&self) -> &[u8; SIZE] {
        &self.mem
    }

    /// Write cycles carried out so far.
    pub fn write_cycles(&self) -> u64 {
        self.write_cycles
    }

    /// Program the page buffer: the write cycle at STOP.
    fn write_cycle(&mut self, page: &PageBuffer) -> Result<(), String> {
        let base = usize::from(page.base);
        let mut new = [0u8; PAGE];
        new.copy_from_slice(&self.mem[base..base + PAGE]);
        for (slot, b) in new.iter_mut().zip(page.bytes) {
            if let Some(b) = b {
                *slot = b;
            }
        }
        if let Some((file, path)) = &self.backing {
            file.write_all_at(&new, base as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("{}: write cycle not durable: {e}", path.display()))?;
        }
        self.mem[base..base + PAGE].copy_from_slice(&new);
        self.write_cycles += 1;
        Ok(())
    }
}

impl SimChip for Eeprom24c02 {
    fn model(&self) -> &'static str {
        "24c02"
    }

    fn start(&mut self, read: bool) {
        // A repeated START abandons a page buffer (no STOP, no write cycle);
        // a write starts with its address byte.
        self.page = None;
        self.pending_address = !read;
    }

    fn write(&mut self, byte: u8) -> bool {
        if self.pending_address {
            self.pending_address = false;
            self.pointer = byte;
            self.page = Some(PageBuffer {
                base: byte & !(PAGE as u8 - 1),
                bytes: [None; PAGE],
            });
            return true;
        }
        let Some(page) = self.page.as_mut() else {
            // Bytes after a read START: the part ignores them.
            return true;
        };
        let offset = usize::from(self.pointer) % PAGE;
        page.bytes[offset] = Some(byte);
        // The pointer's low bits wrap within the page.
        self.pointer = page.base | ((self.pointer.wrapping_add(1)) & (PAGE as u8 - 1));
        true
    }

    fn read(&mut self) -> u8 {
        let b = self.mem[usize::from(self.pointer)];
        self.pointer = self.pointer.wrapping_add(1);
        b
    }

    fn stop(&mut self) -> Result<(), String> {
        self.pending_address = false;
        let Some(page) = self.page.take() else {
            return Ok(());
        };
        if page.bytes.iter().all(Option::is_none) {
            // Only the address was written: a pointer set, no write cycle.
            return Ok(());
        }
        self.write_cycle(&page)
    }
}

#[cfg(test)]
mod tests {
    use super::super::SimAdapter;
    use super::*;
    use crate::i2c::adapter::{I2cAdapter, I2cMsg};

    const A: u16 = 0x50;

    fn bus(chip: Eeprom24c02) -> SimAdapter {
        let mut a = SimAdapter::new();
        a.add(A, Box::new(chip)).expect("add");
        a
    }

    fn write(a: &mut SimAdapter, bytes: &[u8]) {
        a.transfer(&mut [I2cMsg::write(A, bytes)]).expect("write");
    }

    fn random_read(a: &mut SimAdapter, at: u8, len: usize) -> Vec<u8> {
        let mut msgs = [I2cMsg::write(A, &[at]), I2cMsg::read(A, len)];
        a.transfer(&mut msgs).expect("random read");
        msgs[1].buf.clone()
    }

    fn current_read(a: &mut SimAdapter, len: usize) -> Vec<u8> {
        let mut msgs = [I2cMsg::read(A, len)];
        a.transfer(&mut msgs).expect("current-address read");
        msgs[0].buf.clone()
    }

    #[test]
    fn a_new_part_is_erased() {
        let mut a = bus(Eeprom24c02::new());
        assert_eq!(random_read(&mut a, 0, SIZE), vec![0xff; SIZE]);
    }

    #[test]
    fn page_writes_wrap_within_their_page() {
        let mut a = bus(Eeprom24c02::new());
        // 8 bytes from offset 0x16: 0x16, 0x17, then back to 0x10.
        write(&mut a, &[0x16, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(random_read(&mut a, 0x10, 8), vec![3, 4, 5, 6, 7, 8, 1, 2]);
        // Neighbouring pages untouched.
        assert_eq!(random_read(&mut a, 0x08, 8), vec![0xff; 8]);
        assert_eq!(random_read(&mut a, 0x18, 8), vec![0xff; 8]);
        // A ninth byte overwrites the first of the page.
        write(&mut a, &[0x20, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(random_read(&mut a, 0x20, 8), vec![9, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn sequential_reads_roll_over_the_whole_memory() {
        let mut a = bus(Eeprom24c02::new());
        write(
            &mut a,
            &[0xf8, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7],
        );
        write(&mut a, &[0x00, 0x10, 0x11]);
        assert_eq!(random_read(&mut a, 0xfe, 4), vec![0xa6, 0xa7, 0x10, 0x11]);
        // The pointer is where the last read left it: current-address read.
        assert_eq!(current_read(&mut a, 1), vec![0xff]);
        // A write leaves it after the last byte written (within the page).
        write(&mut a, &[0x40, 0x77]);
        assert_eq!(current_read(&mut a, 1), vec![0xff]);
        assert_eq!(random_read(&mut a, 0x40, 1), vec![0x77]);
    }

    #[test]
    fn an_address_only_write_sets_the_pointer_without_a_write_cycle() {
        let mut chip = Eeprom24c02::new();
        chip.mem[0x33] = 0x42;
        let mut a = bus(chip);
        write(&mut a, &[0x33]);
        assert_eq!(current_read(&mut a, 1), vec![0x42]);
    }

    #[test]
    fn a_repeated_start_abandons_the_page_buffer() {
        let mut a = bus(Eeprom24c02::new());
        let mut msgs = [I2cMsg::write(A, &[0x00, 0x11]), I2cMsg::read(A, 1)];
        a.transfer(&mut msgs).expect("transfer");
        assert_eq!(random_read(&mut a, 0x00, 1), vec![0xff], "no write cycle");
    }

    #[test]
    fn contents_persist_in_the_backing_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("eeprom.bin");
        {
            let mut a = bus(Eeprom24c02::with_backing_file(&path).expect("new file"));
            assert_eq!(std::fs::read(&path).expect("file"), vec![0xff; SIZE]);
            write(&mut a, &[0x08, 1, 2, 3]);
        }
        let mut want = vec![0xff; SIZE];
        want[8..11].copy_from_slice(&[1, 2, 3]);
        assert_eq!(std::fs::read(&path).expect("file"), want, "on disk at STOP");
        // A restart finds them.
        let mut a = bus(Eeprom24c02::with_backing_file(&path).expect("reopen"));
        assert_eq!(random_read(&mut a, 0x08, 3), vec![1, 2, 3]);
    }

    #[test]
    fn a_backing_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("eeprom.bin");
        std::fs::write(&path, [0u8; 100]).expect("file");
        let err = Eeprom24c02::with_backing_file(&path).expect_err("100 bytes");
        assert!(err.to_string().contains("exactly 256"), "{err}");
        let err = Eeprom24c02::with_backing_file(&dir.path().join("no/such/dir/e.bin"))
            .expect_err("no directory");
        assert!(err.to_string().contains("cannot open"), "{err}");
    }

    #[test]
    fn a_write_cycle_that_cannot_be_made_durable_fails_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("eeprom.bin");
        let mut chip = Eeprom24c02::with_backing_file(&path).expect("new file");
        // A file that cannot be written any more: reopened read-only.
        let ro = File::open(&path).expect("read-only");
        chip.backing = Some((ro, path.clone()));
        let mut a = bus(chip);
        let err = a
            .transfer(&mut [I2cMsg::write(A, &[0x00, 0x55])])
            .expect_err("not durable");
        assert_eq!(err.done, 0);
        assert_eq!(random_read(&mut a, 0x00, 1), vec![0xff], "unchanged");
    }
}
