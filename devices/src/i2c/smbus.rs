//! Carrying I²C transactions on an SMBus-only adapter.
//!
//! Many host controllers (PC chipset SMBus controllers, the kernel's
//! `i2c-stub`) accept only SMBus commands (`I2C_SMBUS`), not arbitrary I²C
//! messages (`I2C_RDWR`). A guest's virtio-i2c adapter is a plain I²C
//! adapter, and Linux guests emulate their SMBus calls with I²C messages
//! (`i2c_smbus_xfer_emulated`). [`plan`] maps such a transaction back onto
//! the SMBus command that puts the same bytes on the wire:
//!
//! | transaction | SMBus command |
//! |---|---|
//! | W0 / R0 | quick (write / read) |
//! | W1 `c` | send byte `c` |
//! | R1 | receive byte |
//! | W2 `c d` | write byte data, else I²C block write of 1 |
//! | W3 `c lo hi` | write word data, else I²C block write of 2 |
//! | W`n` `c …`, 2 ≤ n ≤ 33 | I²C block write of n−1 |
//! | W1 `c`, R1 | read byte data, else I²C block read of 1 |
//! | W1 `c`, R2 | read word data, else I²C block read of 2 |
//! | W1 `c`, R`n`, n ≤ 32 | I²C block read of n |
//! | W3 `c lo hi`, R2 | process call |
//!
//! Both messages of a write-then-read must go to one address. The most
//! specific command the adapter offers (`I2C_FUNCS`) is chosen, so an
//! emulated SMBus call reaches the host adapter as that same call. Anything
//! else (longer reads, reads without a command byte, several messages to
//! different targets, SMBus block reads whose length the target sends)
//! cannot be expressed and fails cleanly with [`FailKind::Unsupported`].

use super::adapter::{FailKind, I2cMsg};

/// `I2C_FUNCS` bits (include/uapi/linux/i2c.h).
pub mod func {
    pub const I2C: u64 = 0x0000_0001;
    pub const TEN_BIT_ADDR: u64 = 0x0000_0002;
    pub const SMBUS_QUICK: u64 = 0x0001_0000;
    pub const SMBUS_READ_BYTE: u64 = 0x0002_0000;
    pub const SMBUS_WRITE_BYTE: u64 = 0x0004_0000;
    pub const SMBUS_READ_BYTE_DATA: u64 = 0x0008_0000;
    pub const SMBUS_WRITE_BYTE_DATA: u64 = 0x0010_0000;
    pub const SMBUS_READ_WORD_DATA: u64 = 0x0020_0000;
    pub const SMBUS_WRITE_WORD_DATA: u64 = 0x0040_0000;
    pub const SMBUS_PROC_CALL: u64 = 0x0080_0000;
    pub const SMBUS_READ_I2C_BLOCK: u64 = 0x0400_0000;
    pub const SMBUS_WRITE_I2C_BLOCK: u64 = 0x0800_0000;
}

/// Largest SMBus / I²C block (`I2C_SMBUS_BLOCK_MAX`).
pub const BLOCK_MAX: usize = 32;

/// One SMBus command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmbusOp {
    /// Quick command: the R/W bit is the data.
    Quick { read: bool },
    /// Send byte.
    SendByte(u8),
    /// Receive byte.
    ReceiveByte,
    /// Write byte data: command, byte.
    WriteByteData(u8, u8),
    /// Read byte data: command.
    ReadByteData(u8),
    /// Write word data: command, word (sent low byte first).
    WriteWordData(u8, u16),
    /// Read word data: command.
    ReadWordData(u8),
    /// Process call: command, word out; a word back.
    ProcessCall(u8, u16),
    /// I²C block write: command, 1..=32 bytes.
    WriteI2cBlock(u8, Vec<u8>),
    /// I²C block read: command, 1..=32 bytes.
    ReadI2cBlock(u8, u8),
}

impl SmbusOp {
    /// The `I2C_FUNCS` bit the adapter needs for this command.
    pub fn needs(&self) -> u64 {
        match self {
            SmbusOp::Quick { .. } => func::SMBUS_QUICK,
            SmbusOp::SendByte(_) => func::SMBUS_WRITE_BYTE,
            SmbusOp::ReceiveByte => func::SMBUS_READ_BYTE,
            SmbusOp::WriteByteData(..) => func::SMBUS_WRITE_BYTE_DATA,
            SmbusOp::ReadByteData(_) => func::SMBUS_READ_BYTE_DATA,
            SmbusOp::WriteWordData(..) => func::SMBUS_WRITE_WORD_DATA,
            SmbusOp::ReadWordData(_) => func::SMBUS_READ_WORD_DATA,
            SmbusOp::ProcessCall(..) => func::SMBUS_PROC_CALL,
            SmbusOp::WriteI2cBlock(..) => func::SMBUS_WRITE_I2C_BLOCK,
            SmbusOp::ReadI2cBlock(..) => func::SMBUS_READ_I2C_BLOCK,
        }
    }
}

/// The bytes an SMBus command returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmbusReply {
    /// Nothing (writes, quick).
    None,
    /// One byte.
    Byte(u8),
    /// One word (received low byte first).
    Word(u16),
    /// A block.
    Block(Vec<u8>),
}

/// The SMBus command carrying `msgs` on an adapter with `funcs`, and the
/// target address.
pub fn plan(msgs: &[I2cMsg], funcs: u64) -> Result<(u16, SmbusOp), FailKind> {
    let unsupported = |why: String| FailKind::Unsupported(why);
    let shape = || {
        msgs.iter()
            .map(|m| format!("{m:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let candidates: Vec<SmbusOp> = match msgs {
        [w] if !w.read => match w.buf.as_slice() {
            [] => vec![SmbusOp::Quick { read: false }],
            [c] => vec![SmbusOp::SendByte(*c)],
            [c, d] => vec![
                SmbusOp::WriteByteData(*c, *d),
                SmbusOp::WriteI2cBlock(*c, vec![*d]),
            ],
            [c, lo, hi] => vec![
                SmbusOp::WriteWordData(*c, u16::from_le_bytes([*lo, *hi])),
                SmbusOp::WriteI2cBlock(*c, vec![*lo, *hi]),
            ],
            [c, rest @ ..] if rest.len() <= BLOCK_MAX => {
                vec![SmbusOp::WriteI2cBlock(*c, rest.to_vec())]
            }
            _ => vec![],
        },
        [r] if r.read => match r.buf.len() {
            0 => vec![SmbusOp::Quick { read: true }],
            1 => vec![SmbusOp::ReceiveByte],
            _ => vec![],
        },
        [w, r] if !w.read && r.read && w.addr == r.addr => match (w.buf.as_slice(), r.buf.len()) {
            ([c], 1) => vec![SmbusOp::ReadByteData(*c), SmbusOp::ReadI2cBlock(*c, 1)],
            ([c], 2) => vec![SmbusOp::ReadWordData(*c), SmbusOp::ReadI2cBlock(*c, 2)],
            ([c], n) if (1..=BLOCK_MAX).contains(&n) => vec![SmbusOp::ReadI2cBlock(*c, n as u8)],
            ([c, lo, hi], 2) => vec![SmbusOp::ProcessCall(*c, u16::from_le_bytes([*lo, *hi]))],
            _ => vec![],
        },
        _ => vec![],
    };
    if candidates.is_empty() {
        return Err(unsupported(format!(
            "no SMBus command carries [{}]",
            shape()
        )));
    }
    let addr = msgs.first().map_or(0, |m| m.addr);
    candidates
        .into_iter()
        .find(|op| funcs & op.needs() != 0)
        .map(|op| (addr, op))
        .ok_or_else(|| {
            unsupported(format!(
                "[{}] needs an SMBus command this adapter lacks (functionality {funcs:#010x})",
                shape()
            ))
        })
}

/// Put what `op` returned into the read message of `msgs`.
pub fn deliver(op: &SmbusOp, reply: &SmbusReply, msgs: &mut [I2cMsg]) -> Result<(), FailKind> {
    let bad = || FailKind::Host(format!("{op:?} returned {reply:?}"));
    let Some(read) = msgs.iter_mut().find(|m| m.read) else {
        return Ok(());
    };
    match (op, reply) {
        (SmbusOp::Quick { .. }, _) => Ok(()),
        (SmbusOp::ReceiveByte | SmbusOp::ReadByteData(_), SmbusReply::Byte(b)) => {
            let slot = read.buf.first_mut().ok_or_else(bad)?;
            *slot = *b;
            Ok(())
        }
        (SmbusOp::ReadWordData(_) | SmbusOp::ProcessCall(..), SmbusReply::Word(w)) => {
            if read.buf.len() != 2 {
                return Err(bad());
            }
            read.buf.copy_from_slice(&w.to_le_bytes());
            Ok(())
        }
        (SmbusOp::ReadI2cBlock(_, n), SmbusReply::Block(data)) => {
            // A short block would leave bytes the target never sent.
            if data.len() != usize::from(*n) || read.buf.len() != data.len() {
                return Err(bad());
            }
            read.buf.copy_from_slice(data);
            Ok(())
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUB: u64 = func::SMBUS_QUICK
        | func::SMBUS_READ_BYTE
        | func::SMBUS_WRITE_BYTE
        | func::SMBUS_READ_BYTE_DATA
        | func::SMBUS_WRITE_BYTE_DATA
        | func::SMBUS_READ_WORD_DATA
        | func::SMBUS_WRITE_WORD_DATA
        | func::SMBUS_READ_I2C_BLOCK
        | func::SMBUS_WRITE_I2C_BLOCK;
    const ALL: u64 = STUB | func::SMBUS_PROC_CALL;

    fn w(data: &[u8]) -> I2cMsg {
        I2cMsg::write(0x50, data)
    }
    fn r(len: usize) -> I2cMsg {
        I2cMsg::read(0x50, len)
    }

    #[test]
    fn the_kernels_emulated_smbus_calls_map_back_onto_themselves() {
        // What Linux's i2c_smbus_xfer_emulated sends for each SMBus call,
        // and the command that puts the same bytes on the wire.
        let cases: Vec<(Vec<I2cMsg>, SmbusOp)> = vec![
            (vec![w(&[])], SmbusOp::Quick { read: false }),
            (vec![r(0)], SmbusOp::Quick { read: true }),
            (vec![w(&[0x10])], SmbusOp::SendByte(0x10)),
            (vec![r(1)], SmbusOp::ReceiveByte),
            (vec![w(&[0x10, 0xab])], SmbusOp::WriteByteData(0x10, 0xab)),
            (vec![w(&[0x10]), r(1)], SmbusOp::ReadByteData(0x10)),
            (
                vec![w(&[0x10, 0x34, 0x12])],
                SmbusOp::WriteWordData(0x10, 0x1234),
            ),
            (vec![w(&[0x10]), r(2)], SmbusOp::ReadWordData(0x10)),
            (
                vec![w(&[0x10, 1, 2, 3, 4])],
                SmbusOp::WriteI2cBlock(0x10, vec![1, 2, 3, 4]),
            ),
            (vec![w(&[0x10]), r(32)], SmbusOp::ReadI2cBlock(0x10, 32)),
            (
                vec![w(&[0x10, 0x34, 0x12]), r(2)],
                SmbusOp::ProcessCall(0x10, 0x1234),
            ),
        ];
        for (msgs, want) in cases {
            assert_eq!(plan(&msgs, ALL), Ok((0x50, want.clone())), "{msgs:?}");
        }
    }

    #[test]
    fn falls_back_to_i2c_blocks_when_the_exact_command_is_missing() {
        let no_word = ALL & !(func::SMBUS_READ_WORD_DATA | func::SMBUS_WRITE_WORD_DATA);
        assert_eq!(
            plan(&[w(&[7]), r(2)], no_word),
            Ok((0x50, SmbusOp::ReadI2cBlock(7, 2)))
        );
        assert_eq!(
            plan(&[w(&[7, 1, 2])], no_word),
            Ok((0x50, SmbusOp::WriteI2cBlock(7, vec![1, 2])))
        );
        let no_byte_data = ALL & !(func::SMBUS_READ_BYTE_DATA | func::SMBUS_WRITE_BYTE_DATA);
        assert_eq!(
            plan(&[w(&[7]), r(1)], no_byte_data),
            Ok((0x50, SmbusOp::ReadI2cBlock(7, 1)))
        );
        assert_eq!(
            plan(&[w(&[7, 9])], no_byte_data),
            Ok((0x50, SmbusOp::WriteI2cBlock(7, vec![9])))
        );
    }

    #[test]
    fn what_smbus_cannot_carry_fails_cleanly() {
        let unsupported =
            |msgs: &[I2cMsg], funcs| matches!(plan(msgs, funcs), Err(FailKind::Unsupported(_)));
        // Too long for a block, reads without a command, two targets,
        // three messages, a write after a read.
        assert!(unsupported(&[w(&[0; 34])], ALL));
        assert!(unsupported(&[w(&[0]), r(33)], ALL));
        assert!(unsupported(&[r(2)], ALL));
        assert!(unsupported(&[w(&[0]), I2cMsg::read(0x51, 1)], ALL));
        assert!(unsupported(&[w(&[0]), r(1), r(1)], ALL));
        assert!(unsupported(&[r(1), w(&[0])], ALL));
        assert!(unsupported(&[w(&[0, 1]), r(1)], ALL));
        assert!(unsupported(&[], ALL));
        // A process call needs its functionality bit (i2c-stub lacks it).
        assert!(unsupported(&[w(&[1, 2, 3]), r(2)], STUB));
        // Nothing at all without the bits.
        assert!(unsupported(&[w(&[])], STUB & !func::SMBUS_QUICK));
        let Err(FailKind::Unsupported(why)) = plan(&[r(5)], ALL) else {
            panic!("a 5-byte read without a command");
        };
        assert!(why.contains("R5@0x50"), "{why}");
    }

    #[test]
    fn replies_land_in_the_read_message() {
        let mut msgs = vec![w(&[3]), r(2)];
        deliver(
            &SmbusOp::ReadWordData(3),
            &SmbusReply::Word(0xbeef),
            &mut msgs,
        )
        .expect("word");
        assert_eq!(msgs[1].buf, vec![0xef, 0xbe], "low byte first on the wire");
        let mut msgs = vec![w(&[3]), r(3)];
        deliver(
            &SmbusOp::ReadI2cBlock(3, 3),
            &SmbusReply::Block(vec![1, 2, 3]),
            &mut msgs,
        )
        .expect("block");
        assert_eq!(msgs[1].buf, vec![1, 2, 3]);
        // A short block is an error, not a partly filled buffer.
        assert!(
            deliver(
                &SmbusOp::ReadI2cBlock(3, 3),
                &SmbusReply::Block(vec![1, 2]),
                &mut msgs
            )
            .is_err()
        );
        let mut msgs = vec![r(1)];
        deliver(&SmbusOp::ReceiveByte, &SmbusReply::Byte(9), &mut msgs).expect("byte");
        assert_eq!(msgs[0].buf, vec![9]);
    }
}
