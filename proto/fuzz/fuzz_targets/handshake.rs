//! The local bus's hello from a hostile driver: framing, profile, message
//! size, RAM window and ring geometry as the daemon checks them before it
//! looks at the fds (`vmsg_backend::local::check_hello`). Nothing may panic;
//! a refusal is always a `Refused` with a reason; what is accepted stays
//! within the daemon's bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmsg_backend::local::{HELLO_LEN, LocalBusError, LocalServerOptions, check_hello};

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.get(..HELLO_LEN) else {
        return;
    };
    let Ok(bytes) = <[u8; HELLO_LEN]>::try_from(bytes) else {
        return;
    };
    let options = [
        LocalServerOptions::default(),
        LocalServerOptions {
            profile: Some(2),
            max_msg_size: 44,
            max_ram_size: 1 << 20,
            ..LocalServerOptions::default()
        },
        LocalServerOptions {
            profile: Some(1),
            max_msg_size: 65535,
            ..LocalServerOptions::default()
        },
    ];
    for opts in options {
        match check_hello(&bytes, &opts) {
            Ok(p) => {
                assert!(p.max_msg_size as usize <= opts.max_msg_size);
                assert!(p.max_msg_size >= 44);
                assert!(p.ram_len as u64 <= opts.max_ram_size);
                assert!(p.ram_len > 0 && p.ram_len % 4096 == 0);
                assert!(p.ring_len <= 64 << 20);
            }
            Err(LocalBusError::Refused { reason, .. }) => assert!(!reason.is_empty()),
            Err(other) => panic!("a hello is refused, never {other}"),
        }
    }
});
