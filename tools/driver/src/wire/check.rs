//! Validating a received frame as the response to a request: the header
//! checks Linux applies (§6.3) and the echoed payload fields.

use super::consts::Namespace;
use super::error::WireError;
use super::header::split_frame_for;
use super::profile::Profile;
use super::request::Request;
use super::response::Response;

/// Validates a received v2 frame as the response to `req` sent with (`dev_num`, `token`) and decodes it.
///
/// Checks what Linux checks (§6.3): the response bit and namespace bit, msg_id,
/// dev_num, token, and that `msg_size` lies within [header + min payload, max];
/// then the echoed payload fields (§3.3, §3.5, §3.6, §3.9, §3.12, §4.1, §4.2).
pub fn check_response(
    req: &Request,
    dev_num: u16,
    token: u16,
    frame: &[u8],
    max_msg_size: usize,
) -> Result<Response, WireError> {
    check_response_for(Profile::V2, req, dev_num, token, frame, max_msg_size)
}

/// [`check_response`] for `profile`. RFC2 frames carry no token, so `token`
/// is not compared there (the driver correlates by dev_num and msg_id).
pub fn check_response_for(
    profile: Profile,
    req: &Request,
    dev_num: u16,
    token: u16,
    frame: &[u8],
    max_msg_size: usize,
) -> Result<Response, WireError> {
    let (h, p) = split_frame_for(profile, frame)?;
    if usize::from(h.msg_size) > max_msg_size {
        return Err(WireError::AboveMax {
            msg_size: usize::from(h.msg_size),
            max: max_msg_size,
        });
    }
    let mismatch = |field, expected: u32, got: u32| WireError::HeaderMismatch {
        field,
        expected,
        got,
    };
    if !h.is_response() {
        return Err(mismatch("type.bit0 (response)", 1, 0));
    }
    let ns = req.namespace();
    if h.namespace() != ns {
        return Err(mismatch(
            "type.bit1 (bus)",
            u32::from(ns == Namespace::Bus),
            u32::from(h.namespace() == Namespace::Bus),
        ));
    }
    if h.msg_id != req.msg_id() {
        return Err(mismatch("msg_id", req.msg_id().into(), h.msg_id.into()));
    }
    let want_dev = if ns == Namespace::Bus { 0 } else { dev_num };
    if h.dev_num != want_dev {
        return Err(mismatch("dev_num", want_dev.into(), h.dev_num.into()));
    }
    if profile.has_token() && h.token != token {
        return Err(mismatch("token", token.into(), h.token.into()));
    }
    let resp = Response::decode_for(profile, &h, p)?;
    check_echo_for(profile, req, &resp)?;
    Ok(resp)
}

/// Checks the echoed payload fields of `resp` against `req` (v2 rules).
pub fn check_echo(req: &Request, resp: &Response) -> Result<(), WireError> {
    check_echo_for(Profile::V2, req, resp)
}

/// [`check_echo`] with the GET_DEVICES rules of `profile`: v1 windows are
/// 8-aligned (response `count` a multiple of 8, `next_offset` 0 or an aligned
/// value ≥ offset + count, reference §4.1); v2 and RFC2 require `next_offset`
/// to be 0 or above the request offset.
pub fn check_echo_for(profile: Profile, req: &Request, resp: &Response) -> Result<(), WireError> {
    let name = req.name();
    let echo = |field, expected: u64, got: u64| {
        if expected == got {
            Ok(())
        } else {
            Err(WireError::EchoMismatch {
                name,
                field,
                expected,
                got,
            })
        }
    };
    match (req, resp) {
        (
            Request::GetDeviceFeatures {
                block_index,
                num_blocks,
            },
            Response::DeviceFeatures {
                block_index: b,
                features,
            },
        ) => {
            echo("block_index", (*block_index).into(), (*b).into())?;
            echo("num_blocks", (*num_blocks).into(), features.len() as u64)
        }
        (
            Request::GetConfig { offset, length },
            Response::Config {
                offset: o, data, ..
            },
        ) => {
            echo("offset", (*offset).into(), (*o).into())?;
            echo("length", (*length).into(), data.len() as u64)
        }
        (
            Request::SetConfig { offset, data, .. },
            Response::SetConfig {
                offset: o,
                length,
                data: echoed,
                ..
            },
        ) => {
            echo("offset", (*offset).into(), (*o).into())?;
            if *length != 0 && *length as usize != data.len() {
                return Err(WireError::Invalid {
                    name,
                    what: format!(
                        "response length {length} is neither 0 nor the request length {}",
                        data.len()
                    ),
                });
            }
            if !echoed.is_empty() && echoed.len() != *length as usize {
                return Err(WireError::Invalid {
                    name,
                    what: "data echo length differs from length".into(),
                });
            }
            Ok(())
        }
        (Request::GetVqueue { index }, Response::Vqueue(q)) => {
            echo("index", (*index).into(), q.index.into())
        }
        (Request::GetShm { shmid }, Response::Shm { shmid: s, .. }) => {
            echo("shmid", (*shmid).into(), (*s).into())
        }
        (
            Request::GetDevices { offset, count },
            Response::Devices {
                offset: o,
                next_offset,
                count: c,
                ..
            },
        ) => {
            echo("offset", (*offset).into(), (*o).into())?;
            if c > count {
                return Err(WireError::Invalid {
                    name,
                    what: format!("response count {c} > request count {count}"),
                });
            }
            if profile == Profile::V1 {
                let end = u32::from(*offset) + u32::from(*c);
                if c % 8 != 0 {
                    return Err(WireError::Invalid {
                        name,
                        what: format!("v1 response count {c} is not a multiple of 8"),
                    });
                }
                if *next_offset != 0 && (next_offset % 8 != 0 || u32::from(*next_offset) < end) {
                    return Err(WireError::Invalid {
                        name,
                        what: format!(
                            "v1 next_offset {next_offset} is neither 0 nor an 8-aligned value ≥ offset + count = {end}"
                        ),
                    });
                }
                return Ok(());
            }
            if *next_offset != 0 && next_offset <= offset {
                return Err(WireError::Invalid {
                    name,
                    what: format!("next_offset {next_offset} is neither 0 nor > offset {offset}"),
                });
            }
            Ok(())
        }
        (Request::Ping { data }, Response::Ping { data: d }) => {
            echo("data", (*data).into(), (*d).into())
        }
        _ if req.msg_id() == resp.msg_id() && req.namespace() == resp.namespace() => Ok(()),
        _ => Err(WireError::HeaderMismatch {
            field: "msg_id",
            expected: req.msg_id().into(),
            got: resp.msg_id().into(),
        }),
    }
}
