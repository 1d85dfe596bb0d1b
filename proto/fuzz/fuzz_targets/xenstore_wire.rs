//! What a Xen backend reads from xenstore, where a guest controls the
//! values of its own frontend directory: the wire messages (headers,
//! payload lengths, string lists, error names) and the values the bus
//! parses (frontend state, wire profile, grant lists). Nothing may panic;
//! a payload longer than the protocol allows is refused before it is read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmsg_xen::bus::{XenbusState, parse_profile};
use vmsg_xen::memory::{GrantRuns, MAX_RUNS};
use vmsg_xen::xenstore::wire::{self, MsgType, PAYLOAD_MAX};

fuzz_target!(|data: &[u8]| {
    let mut stream = std::io::Cursor::new(data);
    for _ in 0..16 {
        let Ok(m) = wire::read_message(&mut stream) else {
            break;
        };
        assert!(m.payload.len() <= PAYLOAD_MAX);
        let _ = MsgType::from_raw(m.ty);
        let _ = wire::split_strings(&m.payload);
        let _ = wire::one_string(&m.payload);
        let _ = wire::parse_error(&m.payload);
    }
    let _ = XenbusState::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_profile(s);
        if let Ok(runs) = GrantRuns::parse(s, MAX_RUNS, true) {
            assert!(runs.pages() >= 1);
        }
    }
});
