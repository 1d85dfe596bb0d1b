//! Decode arbitrary input under every profile and a spread of bus maximum
//! sizes; whatever decodes must re-encode, and the re-encoding must decode
//! back to the same message (canonical form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmsg_proto::{Codec, Profile};

fuzz_target!(|data: &[u8]| {
    let mut out = [0u8; 65535];
    for profile in Profile::ALL {
        let min = profile.min_max_msg_size();
        for max in [min, 64, 104, 264, 4096, 65535] {
            let Ok(codec) = Codec::new(profile, max.max(min)) else {
                unreachable!("sizes are within the profile range")
            };
            let _ = codec.peek_header(data);
            let Ok(msg) = codec.decode(data) else {
                continue;
            };
            let n = codec
                .encode(&msg, &mut out)
                .expect("a decoded message re-encodes");
            assert_eq!(n, codec.encoded_len(&msg));
            let again = codec.decode(&out[..n]).expect("re-encoding decodes");
            assert_eq!(again, msg);
            let hl = codec.header_len();
            assert_eq!(out[0], data[0] & 3);
            assert_eq!(out[1..hl - 2], data[1..hl - 2]);
        }
    }
    let _ = vmsg_proto::peek_header(data);
});
