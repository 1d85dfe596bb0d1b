//! Simulated I²C devices on a virtual adapter: for hosts without the
//! hardware (tests, FF-A partitions, demos). Each chip is modelled at the
//! level of the bus — START with a direction, bytes written and
//! acknowledged, bytes read, STOP — so the same transaction reaches it as it
//! would reach the real part, and a guest's own driver (Linux's `at24`,
//! `lm75`) works unchanged. Absent addresses do not acknowledge.
//!
//! Models: [`eeprom::Eeprom24c02`] (256 bytes, 8-byte pages with the real
//! page wrap, optional backing file) and [`lm75::Lm75`] (temperature
//! sensor). `docs/i2c.md` documents what they do and do not model.

pub mod eeprom;
pub mod lm75;

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

use super::adapter::{FailKind, I2cAdapter, I2cMsg, TransferError, is_device_addr};

/// Errors of a simulated chip.
#[derive(Debug, Error)]
pub enum SimError {
    /// Two chips at one address.
    #[error("two simulated chips at address {0:#04x}")]
    Duplicate(u16),
    /// Not a 7-bit device address.
    #[error("address {0:#04x} is not a 7-bit device address (0x03..=0x77)")]
    BadAddress(u16),
    /// The backing file could not be used.
    #[error("{path}: {what}")]
    Backing { path: String, what: String },
}

/// One simulated chip, driven byte by byte as the bus would drive it.
pub trait SimChip: Send + fmt::Debug {
    /// The model's name ("24c02", "lm75").
    fn model(&self) -> &'static str;
    /// A START (or repeated START) addressed to this chip, for a read or a
    /// write. The chip acknowledges its address (it is present).
    fn start(&mut self, read: bool);
    /// The master wrote `byte`; whether the chip acknowledges it.
    fn write(&mut self, byte: u8) -> bool;
    /// The master reads a byte.
    fn read(&mut self) -> u8;
    /// STOP after this chip was addressed in the transaction. A chip that
    /// commits work here (an EEPROM's write cycle) reports whether it could.
    fn stop(&mut self) -> Result<(), String>;
}

/// A virtual adapter with simulated chips at fixed addresses.
#[derive(Debug, Default)]
pub struct SimAdapter {
    chips: BTreeMap<u16, Box<dyn SimChip>>,
}

impl SimAdapter {
    /// An adapter with no chips: every address NACKs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Put `chip` at 7-bit `addr`.
    pub fn add(&mut self, addr: u16, chip: Box<dyn SimChip>) -> Result<(), SimError> {
        if !is_device_addr(addr) {
            return Err(SimError::BadAddress(addr));
        }
        if self.chips.contains_key(&addr) {
            return Err(SimError::Duplicate(addr));
        }
        self.chips.insert(addr, chip);
        Ok(())
    }

    /// The addresses chips sit at.
    pub fn addresses(&self) -> Vec<u16> {
        self.chips.keys().copied().collect()
    }

    /// The chip at `addr` (for tests and inspection).
    pub fn chip_mut(&mut self, addr: u16) -> Option<&mut (dyn SimChip + 'static)> {
        self.chips.get_mut(&addr).map(|c| &mut **c)
    }

    /// Run the messages until one fails; returns how many completed and the
    /// failure, and which chips were addressed (in order, each once).
    fn run(&mut self, msgs: &mut [I2cMsg]) -> (Result<(), TransferError>, Vec<(u16, usize)>) {
        // (address, index of the first message addressed to it)
        let mut touched: Vec<(u16, usize)> = Vec::new();
        for (i, m) in msgs.iter_mut().enumerate() {
            let Some(chip) = self.chips.get_mut(&m.addr) else {
                return (Err(TransferError::at(i, FailKind::Nack)), touched);
            };
            if !touched.iter().any(|(a, _)| *a == m.addr) {
                touched.push((m.addr, i));
            }
            chip.start(m.read);
            if m.read {
                for b in &mut m.buf {
                    *b = chip.read();
                }
            } else {
                for &b in &m.buf {
                    if !chip.write(b) {
                        return (Err(TransferError::at(i, FailKind::Nack)), touched);
                    }
                }
            }
        }
        (Ok(()), touched)
    }
}

impl I2cAdapter for SimAdapter {
    fn describe(&self) -> String {
        let chips: Vec<String> = self
            .chips
            .iter()
            .map(|(a, c)| format!("{} at {a:#04x}", c.model()))
            .collect();
        format!("simulated adapter ({})", chips.join(", "))
    }

    fn transfer(&mut self, msgs: &mut [I2cMsg]) -> Result<(), TransferError> {
        let (mut result, touched) = self.run(msgs);
        // The master ends every transaction with a STOP, after a NACK too:
        // every chip addressed sees it.
        for (addr, first) in touched {
            let Some(chip) = self.chips.get_mut(&addr) else {
                continue;
            };
            if let Err(why) = chip.stop() {
                // Its work is not done (not durable): fail from the first
                // message that reached it, whatever came later.
                let failed = TransferError::at(first, FailKind::Chip(why));
                result = match result {
                    Err(e) if e.done <= first => Err(e),
                    _ => Err(failed),
                };
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    /// A chip that records what the bus did to it.
    #[derive(Debug, Default)]
    struct Recorder {
        log: Log,
        nack_byte: Option<u8>,
        fail_stop: bool,
    }

    impl Recorder {
        fn note(&self, what: String) {
            self.log.lock().expect("log").push(what);
        }
    }

    impl SimChip for Recorder {
        fn model(&self) -> &'static str {
            "recorder"
        }
        fn start(&mut self, read: bool) {
            self.note(if read { "S+R" } else { "S+W" }.into());
        }
        fn write(&mut self, byte: u8) -> bool {
            self.note(format!("w{byte:02x}"));
            Some(byte) != self.nack_byte
        }
        fn read(&mut self) -> u8 {
            self.note("r".into());
            0x5a
        }
        fn stop(&mut self) -> Result<(), String> {
            self.note("P".into());
            if self.fail_stop {
                Err("cannot commit".into())
            } else {
                Ok(())
            }
        }
    }

    fn recorder(a: &mut SimAdapter, addr: u16, nack_byte: Option<u8>, fail_stop: bool) -> Log {
        let log = Log::default();
        a.add(
            addr,
            Box::new(Recorder {
                log: log.clone(),
                nack_byte,
                fail_stop,
            }),
        )
        .expect("add");
        log
    }

    fn take(log: &Log) -> String {
        std::mem::take(&mut *log.lock().expect("log")).join(" ")
    }

    #[test]
    fn a_transaction_is_starts_bytes_and_one_stop() {
        let mut a = SimAdapter::new();
        let log = recorder(&mut a, 0x20, None, false);
        let mut msgs = vec![I2cMsg::write(0x20, &[1, 2]), I2cMsg::read(0x20, 2)];
        a.transfer(&mut msgs).expect("transfer");
        assert_eq!(msgs[1].buf, vec![0x5a, 0x5a]);
        assert_eq!(take(&log), "S+W w01 w02 S+R r r P");
    }

    #[test]
    fn absent_addresses_and_refused_bytes_nack_at_their_message_then_stop() {
        let mut a = SimAdapter::new();
        let log = recorder(&mut a, 0x20, Some(0xff), false);
        let mut msgs = vec![I2cMsg::write(0x20, &[1]), I2cMsg::read(0x21, 1)];
        assert_eq!(
            a.transfer(&mut msgs),
            Err(TransferError::at(1, FailKind::Nack))
        );
        assert_eq!(take(&log), "S+W w01 P", "the STOP after the NACK");
        let mut msgs = vec![I2cMsg::write(0x20, &[1, 0xff, 2])];
        assert_eq!(
            a.transfer(&mut msgs),
            Err(TransferError::at(0, FailKind::Nack))
        );
        assert_eq!(
            take(&log),
            "S+W w01 wff P",
            "nothing after the refused byte"
        );
        let mut msgs = vec![I2cMsg::read(0x00, 0)];
        assert_eq!(
            a.transfer(&mut msgs),
            Err(TransferError::at(0, FailKind::Nack)),
            "nobody answers the general call"
        );
        assert_eq!(take(&log), "");
    }

    #[test]
    fn a_chip_that_cannot_commit_fails_from_its_first_message() {
        let mut a = SimAdapter::new();
        let _ = recorder(&mut a, 0x20, None, false);
        let _ = recorder(&mut a, 0x30, None, true);
        let mut msgs = vec![
            I2cMsg::write(0x20, &[1]),
            I2cMsg::write(0x30, &[1]),
            I2cMsg::read(0x20, 1),
        ];
        let err = a.transfer(&mut msgs).expect_err("0x30 cannot commit");
        assert_eq!(err.done, 1);
        assert!(matches!(err.kind, FailKind::Chip(_)));
    }

    #[test]
    fn chips_sit_at_device_addresses_once() {
        let mut a = SimAdapter::new();
        let _ = recorder(&mut a, 0x50, None, false);
        assert!(matches!(
            a.add(0x50, Box::new(Recorder::default())),
            Err(SimError::Duplicate(0x50))
        ));
        for bad in [0x00, 0x02, 0x78, 0x7f, 0x150] {
            assert!(matches!(
                a.add(bad, Box::new(Recorder::default())),
                Err(SimError::BadAddress(_))
            ));
        }
        assert_eq!(a.addresses(), vec![0x50]);
        assert!(
            a.describe().contains("recorder at 0x50"),
            "{}",
            a.describe()
        );
    }
}
