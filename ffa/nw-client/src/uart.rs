//! Output on QEMU virt's PL011 (UART0, the serial console), and a
//! fixed-size message buffer (the client has no heap).

use core::fmt::{self, Write};

const UART0: usize = 0x0900_0000;
const DR: usize = 0x00;
const FR: usize = 0x18;
const FR_TXFF: u32 = 1 << 5;

/// The console.
#[derive(Debug)]
pub struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: the PL011's flag and data registers at their fixed
            // QEMU virt addresses; TF-A initialised the UART.
            unsafe {
                while core::ptr::read_volatile((UART0 + FR) as *const u32) & FR_TXFF != 0 {}
                core::ptr::write_volatile((UART0 + DR) as *mut u32, u32::from(b));
            }
        }
        Ok(())
    }
}

/// A message of at most 240 bytes (longer ones are cut).
#[derive(Clone, Copy)]
pub struct Msg {
    buf: [u8; 240],
    len: usize,
}

impl Msg {
    /// An empty message.
    pub const fn new() -> Self {
        Self {
            buf: [0; 240],
            len: 0,
        }
    }
}

impl Default for Msg {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Msg {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = &self.buf[..self.len];
        let text = match core::str::from_utf8(bytes) {
            Ok(t) => t,
            // Cut inside a character: up to it.
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        };
        f.write_str(text)
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `format!` into a [`Msg`].
#[macro_export]
macro_rules! msg {
    ($($arg:tt)*) => {{
        let mut m = $crate::uart::Msg::new();
        let _ = core::fmt::Write::write_fmt(&mut m, format_args!($($arg)*));
        m
    }};
}
