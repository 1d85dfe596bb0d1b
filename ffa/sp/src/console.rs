//! Log lines through FFA_CONSOLE_LOG (the SPMC prints them on its console),
//! one core at a time.

use core::fmt::{self, Write};

use arm_ffa::Interface;
use arm_ffa::interface_args::{ConsoleLogChars, ConsoleLogChars64};
use spin::Mutex;

use crate::conduit;

static CONSOLE: Mutex<()> = Mutex::new(());

struct FfaConsole {
    chars: ConsoleLogChars64,
}

impl FfaConsole {
    fn flush(&mut self) {
        if !self.chars.empty() {
            let chars = core::mem::take(&mut self.chars);
            // A console that refuses output has nowhere to report it.
            let _ = conduit::call(&Interface::ConsoleLog {
                chars: ConsoleLogChars::Chars64(chars),
            });
        }
    }
}

impl Write for FfaConsole {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            let n = self.chars.push(rest);
            rest = &rest[n..];
            if self.chars.full() {
                self.flush();
            }
        }
        Ok(())
    }
}

/// Print one line (a newline is added).
pub fn line(args: fmt::Arguments<'_>) {
    let _one = CONSOLE.lock();
    let mut c = FfaConsole {
        chars: ConsoleLogChars64::default(),
    };
    let _ = c.write_fmt(args);
    let _ = c.write_str("\n");
    c.flush();
}

/// `println!` for the partition.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::console::line(format_args!($($arg)*))
    };
}
