//! An LM75-style temperature sensor (National/TI LM75A register map).
//!
//! | pointer | register | bytes | reset value |
//! |---|---|---|---|
//! | 0 | temperature (read-only) | 2, MSB first | the configured reading |
//! | 1 | configuration | 1 | 0x00 |
//! | 2 | T_HYST | 2, MSB first | 75 °C (0x4b00) |
//! | 3 | T_OS | 2, MSB first | 80 °C (0x5000) |
//!
//! Temperatures are 9-bit two's complement in 0.5 °C steps, left-aligned in
//! 16 bits (bits 15..7; the low 7 bits read 0). After START+W the first
//! byte is the pointer (a pointer above 3 is not acknowledged), further
//! bytes write the register MSB first (writes to the temperature register
//! are acknowledged and ignored). Reads start at the register's first byte
//! and, past its end, repeat it. The reading is what the configuration
//! says (`temperature_mc`, millidegrees Celsius); the O.S. output and the
//! shutdown mode are stored, not acted on.

use super::SimChip;

/// Lowest reading the part reports (−55 °C), in millidegrees.
pub const MIN_MC: i32 = -55_000;
/// Highest reading the part reports (+125 °C), in millidegrees.
pub const MAX_MC: i32 = 125_000;

const REG_TEMP: u8 = 0;
const REG_CONF: u8 = 1;
const REG_THYST: u8 = 2;
const REG_TOS: u8 = 3;

/// The simulated sensor.
#[derive(Debug, Clone)]
pub struct Lm75 {
    temp: u16,
    conf: u8,
    thyst: u16,
    tos: u16,
    pointer: u8,
    /// Next byte of the register (0 = MSB).
    index: usize,
    /// A write START was seen and its first byte (the pointer) is next.
    pending_pointer: bool,
}

/// `mc` millidegrees as the register encodes it: rounded to 0.5 °C,
/// clamped to the part's range, bits 15..7.
pub fn encode(mc: i32) -> u16 {
    let halves = (mc.clamp(MIN_MC, MAX_MC) as f64 / 500.0).round() as i16;
    (halves << 7) as u16
}

/// A register value in millidegrees.
pub fn decode(reg: u16) -> i32 {
    i32::from((reg as i16) >> 7) * 500
}

impl Lm75 {
    /// A sensor reading `temperature_mc` millidegrees Celsius.
    pub fn new(temperature_mc: i32) -> Self {
        Self {
            temp: encode(temperature_mc),
            conf: 0,
            thyst: encode(75_000),
            tos: encode(80_000),
            pointer: REG_TEMP,
            index: 0,
            pending_pointer: false,
        }
    }

    /// Change the reading (as a host-side sensor value would).
    pub fn set_temperature(&mut self, mc: i32) {
        self.temp = encode(mc);
    }

    fn register(&self) -> (u16, usize) {
        match self.pointer {
            REG_TEMP => (self.temp, 2),
            REG_CONF => (u16::from(self.conf) << 8, 1),
            REG_THYST => (self.thyst, 2),
            _ => (self.tos, 2),
        }
    }
}

impl SimChip for Lm75 {
    fn model(&self) -> &'static str {
        "lm75"
    }

    fn start(&mut self, read: bool) {
        self.index = 0;
        self.pending_pointer = !read;
    }

    fn write(&mut self, byte: u8) -> bool {
        if self.pending_pointer {
            self.pending_pointer = false;
            if byte > REG_TOS {
                return false;
            }
            self.pointer = byte;
            return true;
        }
        let i = self.index;
        self.index += 1;
        // Temperature limits keep 9 bits; extra bytes are ignored.
        let set = |reg: &mut u16| match i {
            0 => *reg = (*reg & 0x00ff) | (u16::from(byte) << 8),
            1 => *reg = (*reg & 0xff00) | u16::from(byte & 0x80),
            _ => {}
        };
        match self.pointer {
            REG_CONF if i == 0 => self.conf = byte & 0x1f,
            REG_THYST => set(&mut self.thyst),
            REG_TOS => set(&mut self.tos),
            _ => {}
        }
        true
    }

    fn read(&mut self) -> u8 {
        let (value, len) = self.register();
        let i = self.index % len;
        self.index += 1;
        value.to_be_bytes()[i]
    }

    fn stop(&mut self) -> Result<(), String> {
        self.pending_pointer = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::SimAdapter;
    use super::*;
    use crate::i2c::adapter::{FailKind, I2cAdapter, I2cMsg};

    const A: u16 = 0x48;

    fn read_reg(a: &mut SimAdapter, reg: u8, len: usize) -> Vec<u8> {
        let mut msgs = [I2cMsg::write(A, &[reg]), I2cMsg::read(A, len)];
        a.transfer(&mut msgs).expect("read");
        msgs[1].buf.clone()
    }

    fn bus(mc: i32) -> SimAdapter {
        let mut a = SimAdapter::new();
        a.add(A, Box::new(Lm75::new(mc))).expect("add");
        a
    }

    #[test]
    fn temperatures_encode_as_the_datasheet_table() {
        // LM75A datasheet, temperature register examples.
        for (mc, reg) in [
            (125_000, 0x7d00),
            (25_000, 0x1900),
            (500, 0x0080),
            (0, 0x0000),
            (-500, 0xff80),
            (-25_000, 0xe700),
            (-55_000, 0xc900),
        ] {
            assert_eq!(encode(mc), reg, "{mc} m°C");
            assert_eq!(decode(reg), mc);
        }
        assert_eq!(encode(23_600), 0x1780, "rounded to 0.5 °C");
        assert_eq!(encode(200_000), 0x7d00, "clamped");
    }

    #[test]
    fn the_reading_is_read_msb_first_and_repeats() {
        let mut a = bus(23_500);
        assert_eq!(read_reg(&mut a, 0, 2), vec![0x17, 0x80]);
        assert_eq!(read_reg(&mut a, 0, 4), vec![0x17, 0x80, 0x17, 0x80]);
        // The pointer stays: a plain read gives the temperature again.
        let mut msgs = [I2cMsg::read(A, 2)];
        a.transfer(&mut msgs).expect("read");
        assert_eq!(msgs[0].buf, vec![0x17, 0x80]);
    }

    #[test]
    fn limits_and_configuration_are_writable_the_temperature_is_not() {
        let mut a = bus(20_000);
        assert_eq!(read_reg(&mut a, 2, 2), vec![0x4b, 0x00], "T_HYST 75 °C");
        assert_eq!(read_reg(&mut a, 3, 2), vec![0x50, 0x00], "T_OS 80 °C");
        a.transfer(&mut [I2cMsg::write(A, &[3, 0x3c, 0xff])])
            .expect("T_OS");
        assert_eq!(read_reg(&mut a, 3, 2), vec![0x3c, 0x80], "9 bits kept");
        a.transfer(&mut [I2cMsg::write(A, &[1, 0x01])])
            .expect("conf");
        assert_eq!(read_reg(&mut a, 1, 2), vec![0x01, 0x01]);
        a.transfer(&mut [I2cMsg::write(A, &[0, 0x00, 0x00])])
            .expect("temp");
        assert_eq!(read_reg(&mut a, 0, 2), vec![0x14, 0x00], "read-only");
    }

    #[test]
    fn a_pointer_beyond_the_registers_is_not_acknowledged() {
        let mut a = bus(0);
        let err = a
            .transfer(&mut [I2cMsg::write(A, &[4]), I2cMsg::read(A, 2)])
            .expect_err("pointer 4");
        assert_eq!((err.done, err.kind), (0, FailKind::Nack));
        if let Some(chip) = a.chip_mut(A) {
            assert_eq!(chip.model(), "lm75");
        }
    }
}
