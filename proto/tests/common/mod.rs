//! Helpers shared by the golden-vector tests.
#![allow(dead_code)]

use vmsg_proto::{Codec, Message};

/// Parse whitespace/`|`-separated hex bytes written by hand in a test.
pub fn hex(s: &str) -> Vec<u8> {
    s.split(|c: char| c.is_whitespace() || c == '|')
        .filter(|t| !t.is_empty())
        .map(|t| u8::from_str_radix(t, 16).expect("hex byte"))
        .collect()
}

/// `bytes` decodes to `msg` and `msg` encodes back to exactly `bytes`.
pub fn golden(codec: &Codec, bytes: &str, msg: Message<'_>) {
    let bytes = hex(bytes);
    let decoded = codec.decode(&bytes).expect("golden vector decodes");
    assert_eq!(decoded, msg, "decode of {bytes:02x?}");
    let mut out = vec![0xA5u8; codec.max_msg_size() + 16];
    let n = codec
        .encode(&msg, &mut out)
        .expect("golden message encodes");
    assert_eq!(n, codec.encoded_len(&msg));
    assert_eq!(&out[..n], &bytes[..], "encode of {msg:?}");
    // Nothing written past the frame.
    assert!(out[n..].iter().all(|&b| b == 0xA5));
}

/// `bytes` is the exact encoding of `msg` once padded with zeros to the
/// fixed frame size `frame` (RFC2), and decodes back to `msg`.
pub fn golden_padded(codec: &Codec, bytes: &str, frame: usize, msg: Message<'_>) {
    let mut bytes = hex(bytes);
    assert!(bytes.len() <= frame);
    bytes.resize(frame, 0);
    let decoded = codec.decode(&bytes).expect("golden vector decodes");
    assert_eq!(decoded, msg, "decode of {bytes:02x?}");
    let mut out = vec![0xA5u8; frame + 16];
    let n = codec
        .encode(&msg, &mut out)
        .expect("golden message encodes");
    assert_eq!(n, frame);
    assert_eq!(&out[..n], &bytes[..], "encode of {msg:?}");
    assert!(out[n..].iter().all(|&b| b == 0xA5));
}
