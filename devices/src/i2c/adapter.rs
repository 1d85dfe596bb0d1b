//! What the virtio-i2c device carries its transfers out on: an I²C adapter
//! (a host adapter through `/dev/i2c-N`, or the simulated bus of [`super::sim`]).
//!
//! A *transaction* is what the guest grouped with `VIRTIO_I2C_FLAGS_FAIL_NEXT`:
//! one START, one message per request (repeated START between them), one
//! STOP. An adapter carries out a transaction as one combined transfer and
//! says how far it got when it fails, so the device can answer the requests
//! before the failure OK and the failed one and the rest ERR (§5.19.6).

use std::fmt;

use thiserror::Error;

/// The most messages in one transaction: Linux's `I2C_RDWR_IOCTL_MAX_MSGS`,
/// the bound of the host interface passthrough uses, applied to every
/// adapter so a guest sees the same limits on each.
pub const MAX_TRANSACTION_MSGS: usize = 42;
/// The most bytes one message may carry: the bound `i2c-dev` puts on one
/// `I2C_RDWR` message.
pub const MAX_MSG_LEN: usize = 8192;

/// Lowest 7-bit address a device may have; 0x00–0x02 are the general call,
/// CBUS and another bus format (I²C spec table 4).
pub const FIRST_ADDR: u16 = 0x03;
/// Highest 7-bit address a device may have; 0x78–0x7f are the 10-bit prefix
/// and reserved.
pub const LAST_ADDR: u16 = 0x77;

/// Whether `addr` is a 7-bit address an I²C device can have.
pub fn is_device_addr(addr: u16) -> bool {
    (FIRST_ADDR..=LAST_ADDR).contains(&addr)
}

/// One message of a transaction: a segment between (repeated) STARTs.
#[derive(Clone, PartialEq, Eq)]
pub struct I2cMsg {
    /// 7-bit target address.
    pub addr: u16,
    /// A read (the target sends `buf.len()` bytes) or a write.
    pub read: bool,
    /// The bytes to write, or room for the bytes read.
    pub buf: Vec<u8>,
}

impl I2cMsg {
    /// A write of `data` to `addr`.
    pub fn write(addr: u16, data: &[u8]) -> Self {
        Self {
            addr,
            read: false,
            buf: data.to_vec(),
        }
    }

    /// A read of `len` bytes from `addr`.
    pub fn read(addr: u16, len: usize) -> Self {
        Self {
            addr,
            read: true,
            buf: vec![0; len],
        }
    }
}

impl fmt::Debug for I2cMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = if self.read { 'R' } else { 'W' };
        write!(f, "{dir}{}@{:#04x}", self.buf.len(), self.addr)
    }
}

/// Why a transaction stopped.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FailKind {
    /// The target did not acknowledge its address or a byte (absent or busy).
    #[error("no acknowledge")]
    Nack,
    /// The adapter cannot express this transaction (an SMBus-only adapter
    /// and a transfer no SMBus command carries).
    #[error("not supported by this adapter: {0}")]
    Unsupported(String),
    /// The host interface failed.
    #[error("host adapter: {0}")]
    Host(String),
    /// A simulated chip could not finish (e.g. persisting an EEPROM write).
    #[error("simulated chip: {0}")]
    Chip(String),
}

/// A failed transaction: how many messages completed before it stopped.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("transaction failed at message {done}: {kind}")]
pub struct TransferError {
    /// Messages carried out completely before the failure (those the device
    /// may answer OK). 0 when the adapter cannot tell.
    pub done: usize,
    /// What went wrong.
    pub kind: FailKind,
}

impl TransferError {
    /// A failure at message `done`.
    pub fn at(done: usize, kind: FailKind) -> Self {
        Self { done, kind }
    }
}

/// An I²C adapter transactions are carried out on.
///
/// Implementations run on the device's worker thread (never on the guest's
/// thread), so they may block for as long as the bus takes.
pub trait I2cAdapter: Send {
    /// What it is, for logs ("/dev/i2c-1 (SMBus stub driver), SMBus only").
    fn describe(&self) -> String;
    /// Carry out `msgs` as one combined transfer; read messages get their
    /// bytes in `buf`. On failure the contents of read buffers are
    /// unspecified.
    fn transfer(&mut self, msgs: &mut [I2cMsg]) -> Result<(), TransferError>;
}
