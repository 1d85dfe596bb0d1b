//! The xenstore wire protocol: a 16-byte native-endian header
//! (`struct xsd_sockmsg { u32 type, req_id, tx_id, len }`) followed by `len`
//! payload bytes, `len <= XENSTORE_PAYLOAD_MAX`. Payloads are mostly
//! NUL-terminated strings; errors are the errno *name* (`"ENOENT\0"`).
//!
//! Shared by the client and the fake xenstored.

use std::io::{self, Read, Write};

use thiserror::Error;

use crate::bindings::xs_wire::{self, xsd_sockmsg_type as t};

/// Header length in bytes.
pub const HEADER_LEN: usize = crate::bindings::XSD_SOCKMSG_SIZE;
/// Largest payload either side may send (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = xs_wire::XENSTORE_PAYLOAD_MAX as usize;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = xs_wire::XENSTORE_ABS_PATH_MAX as usize;
/// Longest relative path (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = xs_wire::XENSTORE_REL_PATH_MAX as usize;

/// Errors of framing and payload parsing.
#[derive(Debug, Error)]
pub enum WireError {
    /// The peer closed the stream between messages.
    #[error("connection closed")]
    Closed,
    /// The peer closed the stream inside a message.
    #[error("connection closed inside a message")]
    Truncated,
    /// The stream failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// A header announced more than [`PAYLOAD_MAX`] bytes.
    #[error("payload of {0} bytes exceeds XENSTORE_PAYLOAD_MAX")]
    TooLarge(usize),
    /// A payload did not have the expected shape.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum MsgType {
    Control,
    Directory,
    Read,
    GetPerms,
    Watch,
    Unwatch,
    TransactionStart,
    TransactionEnd,
    Introduce,
    Release,
    GetDomainPath,
    Write,
    Mkdir,
    Rm,
    SetPerms,
    WatchEvent,
    Error,
    IsDomainIntroduced,
    Resume,
    SetTarget,
    ResetWatches,
    DirectoryPart,
}

impl MsgType {
    const ALL: [(MsgType, u32); 22] = [
        (Self::Control, t::XS_CONTROL),
        (Self::Directory, t::XS_DIRECTORY),
        (Self::Read, t::XS_READ),
        (Self::GetPerms, t::XS_GET_PERMS),
        (Self::Watch, t::XS_WATCH),
        (Self::Unwatch, t::XS_UNWATCH),
        (Self::TransactionStart, t::XS_TRANSACTION_START),
        (Self::TransactionEnd, t::XS_TRANSACTION_END),
        (Self::Introduce, t::XS_INTRODUCE),
        (Self::Release, t::XS_RELEASE),
        (Self::GetDomainPath, t::XS_GET_DOMAIN_PATH),
        (Self::Write, t::XS_WRITE),
        (Self::Mkdir, t::XS_MKDIR),
        (Self::Rm, t::XS_RM),
        (Self::SetPerms, t::XS_SET_PERMS),
        (Self::WatchEvent, t::XS_WATCH_EVENT),
        (Self::Error, t::XS_ERROR),
        (Self::IsDomainIntroduced, t::XS_IS_DOMAIN_INTRODUCED),
        (Self::Resume, t::XS_RESUME),
        (Self::SetTarget, t::XS_SET_TARGET),
        (Self::ResetWatches, t::XS_RESET_WATCHES),
        (Self::DirectoryPart, t::XS_DIRECTORY_PART),
    ];

    /// The wire value.
    pub fn raw(self) -> u32 {
        Self::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map_or(t::XS_INVALID, |(_, v)| *v)
    }

    /// The type of a wire value, `None` if unknown.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.iter().find(|(_, v)| *v == raw).map(|(m, _)| *m)
    }
}

/// The errors xenstored reports, by name (`xsd_errors[]` in `xs_wire.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs, clippy::upper_case_acronyms)]
pub enum XsErrno {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
}

impl XsErrno {
    const ALL: [(XsErrno, &'static str, i32); 16] = [
        (Self::EINVAL, "EINVAL", libc::EINVAL),
        (Self::EACCES, "EACCES", libc::EACCES),
        (Self::EEXIST, "EEXIST", libc::EEXIST),
        (Self::EISDIR, "EISDIR", libc::EISDIR),
        (Self::ENOENT, "ENOENT", libc::ENOENT),
        (Self::ENOMEM, "ENOMEM", libc::ENOMEM),
        (Self::ENOSPC, "ENOSPC", libc::ENOSPC),
        (Self::EIO, "EIO", libc::EIO),
        (Self::ENOTEMPTY, "ENOTEMPTY", libc::ENOTEMPTY),
        (Self::ENOSYS, "ENOSYS", libc::ENOSYS),
        (Self::EROFS, "EROFS", libc::EROFS),
        (Self::EBUSY, "EBUSY", libc::EBUSY),
        (Self::EAGAIN, "EAGAIN", libc::EAGAIN),
        (Self::EISCONN, "EISCONN", libc::EISCONN),
        (Self::E2BIG, "E2BIG", libc::E2BIG),
        (Self::EPERM, "EPERM", libc::EPERM),
    ];

    /// The name on the wire (`"ENOENT"`).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(e, ..)| *e == self)
            .map_or("EINVAL", |(_, n, _)| n)
    }

    /// Parse a wire name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(e, ..)| *e)
    }

    /// The Linux errno value.
    pub fn raw_os_error(self) -> i32 {
        Self::ALL
            .iter()
            .find(|(e, ..)| *e == self)
            .map_or(libc::EINVAL, |(.., v)| *v)
    }
}

impl std::fmt::Display for XsErrno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.name(),
            io::Error::from_raw_os_error(self.raw_os_error())
        )
    }
}

/// One message as read off the wire. `ty` stays raw: the client rejects
/// unknown types, the fake answers them with `ENOSYS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Raw message type.
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none).
    pub tx_id: u32,
    /// The payload, at most [`PAYLOAD_MAX`] bytes.
    pub payload: Vec<u8>,
}

/// Encode a header.
pub fn encode_header(ty: u32, req_id: u32, tx_id: u32, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&ty.to_ne_bytes());
    h[4..8].copy_from_slice(&req_id.to_ne_bytes());
    h[8..12].copy_from_slice(&tx_id.to_ne_bytes());
    h[12..16].copy_from_slice(&len.to_ne_bytes());
    h
}

/// Encode a whole message (header + payload) into one buffer, so it goes out
/// in one `write` (`/dev/xen/xenbus` wants whole messages).
pub fn encode_message(
    ty: u32,
    req_id: u32,
    tx_id: u32,
    payload: &[u8],
) -> Result<Vec<u8>, WireError> {
    if payload.len() > PAYLOAD_MAX {
        return Err(WireError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    // len <= PAYLOAD_MAX fits in u32.
    out.extend_from_slice(&encode_header(ty, req_id, tx_id, payload.len() as u32));
    out.extend_from_slice(payload);
    Ok(out)
}

/// Write one message.
pub fn write_message<W: Write + ?Sized>(
    w: &mut W,
    ty: u32,
    req_id: u32,
    tx_id: u32,
    payload: &[u8],
) -> Result<(), WireError> {
    let buf = encode_message(ty, req_id, tx_id, payload)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Fill `buf` completely; `Ok(false)` on EOF before the first byte.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<bool, WireError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(true)
}

/// Read one message. A header announcing more than [`PAYLOAD_MAX`] is
/// rejected before reading the payload (the stream is then unusable).
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Message, WireError> {
    let mut h = [0u8; HEADER_LEN];
    if !read_full(r, &mut h)? {
        return Err(WireError::Closed);
    }
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let (ty, req_id, tx_id, len) = (word(0), word(4), word(8), word(12));
    let len = len as usize;
    if len > PAYLOAD_MAX {
        return Err(WireError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    if len > 0 && !read_full(r, &mut payload)? {
        return Err(WireError::Truncated);
    }
    Ok(Message {
        ty,
        req_id,
        tx_id,
        payload,
    })
}

/// Split a payload made of NUL-terminated strings. The payload must be empty
/// or end in NUL; every string must be UTF-8.
pub fn split_strings(payload: &[u8]) -> Result<Vec<&str>, WireError> {
    if payload.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = payload.strip_suffix(b"\0") else {
        return Err(WireError::Malformed("string list not NUL-terminated"));
    };
    body.split(|b| *b == 0)
        .map(|s| std::str::from_utf8(s).map_err(|_| WireError::Malformed("string is not UTF-8")))
        .collect()
}

/// Exactly one NUL-terminated string.
pub fn one_string(payload: &[u8]) -> Result<&str, WireError> {
    match split_strings(payload)?.as_slice() {
        [s] => Ok(s),
        _ => Err(WireError::Malformed("expected exactly one string")),
    }
}

/// Build a payload of NUL-terminated strings.
pub fn join_strings<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.push(0);
    }
    out
}

/// Parse an `XS_ERROR` payload (`"ENOENT\0"`).
pub fn parse_error(payload: &[u8]) -> Result<XsErrno, WireError> {
    let name = one_string(payload)?;
    XsErrno::from_name(name).ok_or(WireError::Malformed("unknown error name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_16_native_endian_bytes() {
        let h = encode_header(2, 0x0102_0304, 7, 9);
        assert_eq!(h.len(), 16);
        assert_eq!(&h[0..4], &2u32.to_ne_bytes());
        assert_eq!(&h[4..8], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&h[8..12], &7u32.to_ne_bytes());
        assert_eq!(&h[12..16], &9u32.to_ne_bytes());
    }

    #[test]
    fn message_round_trip() {
        let buf = encode_message(MsgType::Write.raw(), 5, 3, b"/a\0v").unwrap();
        let m = read_message(&mut &buf[..]).unwrap();
        assert_eq!(
            m,
            Message {
                ty: 11,
                req_id: 5,
                tx_id: 3,
                payload: b"/a\0v".to_vec()
            }
        );
    }

    #[test]
    fn oversized_payloads_are_refused_both_ways() {
        assert!(matches!(
            encode_message(2, 0, 0, &[0; PAYLOAD_MAX + 1]),
            Err(WireError::TooLarge(_))
        ));
        assert!(encode_message(2, 0, 0, &[0; PAYLOAD_MAX]).is_ok());
        let h = encode_header(2, 0, 0, PAYLOAD_MAX as u32 + 1);
        assert!(matches!(
            read_message(&mut &h[..]),
            Err(WireError::TooLarge(4097))
        ));
    }

    #[test]
    fn eof_between_and_inside_messages() {
        assert!(matches!(read_message(&mut &[][..]), Err(WireError::Closed)));
        assert!(matches!(
            read_message(&mut &[1u8, 2, 3][..]),
            Err(WireError::Truncated)
        ));
        let mut buf = encode_message(2, 0, 0, b"abcdef").unwrap();
        buf.truncate(HEADER_LEN + 3);
        assert!(matches!(
            read_message(&mut &buf[..]),
            Err(WireError::Truncated)
        ));
        let buf = encode_header(2, 0, 0, 4);
        assert!(matches!(
            read_message(&mut &buf[..]),
            Err(WireError::Truncated)
        ));
    }

    #[test]
    fn string_lists() {
        assert_eq!(split_strings(b"").unwrap(), Vec::<&str>::new());
        assert_eq!(split_strings(b"a\0bc\0").unwrap(), ["a", "bc"]);
        assert_eq!(split_strings(b"\0").unwrap(), [""]);
        assert!(split_strings(b"a\0b").is_err());
        assert!(split_strings(b"\xff\0").is_err());
        assert_eq!(one_string(b"OK\0").unwrap(), "OK");
        assert!(one_string(b"a\0b\0").is_err());
        assert_eq!(join_strings([&b"p"[..], b"tok"]), b"p\0tok\0");
    }

    #[test]
    fn error_names() {
        assert_eq!(parse_error(b"ENOENT\0").unwrap(), XsErrno::ENOENT);
        assert_eq!(
            parse_error(b"EAGAIN\0").unwrap().raw_os_error(),
            libc::EAGAIN
        );
        assert!(parse_error(b"ENOENT").is_err(), "missing NUL");
        assert!(parse_error(b"EWHATEVER\0").is_err());
        for (e, name, errno) in XsErrno::ALL {
            assert_eq!(XsErrno::from_name(name), Some(e));
            assert_eq!(e.name(), name);
            assert_eq!(e.raw_os_error(), errno);
        }
    }

    #[test]
    fn message_types_match_the_header() {
        for (m, raw) in MsgType::ALL {
            assert_eq!(MsgType::from_raw(raw), Some(m));
            assert_eq!(m.raw(), raw);
        }
        assert_eq!(MsgType::from_raw(20), None, "removed XS_RESTRICT");
        assert_eq!(MsgType::from_raw(0xffff), None);
    }
}
