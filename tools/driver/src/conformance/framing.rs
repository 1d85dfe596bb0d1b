//! Header parsing, sizes, namespaces, unknown ids and dev_nums (§1, §6.3, §9.1–§9.3).
//!
//! Every frame is built in the layout of the profile under test (RFC2: the
//! 6-byte header without token), and sent unpadded.

use super::{Case, CaseError, CaseResult, Ctx, Dropped, ensure};
use crate::wire::{
    self, Namespace, RawFrame, Request, Response, SetVqueue, bus_msg, msg, status, ty,
};

pub(super) fn cases() -> Vec<Case> {
    let mut v = vec![
        Case::new(
            "frame.header_shorter_than_8",
            "§9.1",
            "frames shorter than the header (8 bytes, RFC2 6) are dropped",
            header_short,
        ),
        Case::new(
            "frame.msg_size_below_header",
            "§9.1, §1",
            "msg_size below the header size is dropped",
            msg_size_below_header,
        ),
        Case::new(
            "frame.msg_size_exceeds_bytes",
            "§9.1",
            "msg_size larger than the bytes received is dropped",
            msg_size_exceeds,
        ),
        Case::new(
            "frame.msg_size_above_max",
            "§9.1",
            "msg_size above the bus maximum is dropped",
            msg_size_above_max,
        ),
        Case::new(
            "frame.reserved_type_bits_ignored",
            "§1, §9.1",
            "type bits 2–7 are ignored on receive",
            reserved_type_bits,
        ),
        Case::new(
            "frame.response_typed_dropped",
            "§9.1, §6.3",
            "response-typed frames sent to the device are dropped",
            response_typed,
        ),
        Case::new(
            "frame.larger_msg_size_accepted",
            "§9.3, §6.3",
            "msg_size above the fixed payload is accepted (forward compatibility)",
            larger_accepted,
        ),
        Case::new(
            "frame.variable_part_must_fit",
            "§9.3",
            "features[]/data[] not fitting msg_size make the request dropped",
            variable_part,
        ),
        Case::new(
            "ids.unknown_transport_msg_id",
            "§9.2, §6.3",
            "unknown transport msg_ids are dropped silently",
            unknown_transport_ids,
        ),
        Case::new(
            "ids.unknown_bus_msg_id",
            "§9.2, §6.3",
            "unknown bus msg_ids are dropped silently",
            unknown_bus_ids,
        ),
        Case::new(
            "ids.events_never_answered",
            "§6.3, §3.14",
            "events sent to the device never get a response",
            events_never_answered,
        ),
        Case::new(
            "devnum.unknown_dev_num_dropped",
            "§6.3, §1",
            "requests to a dev_num without a device get no response",
            unknown_dev_num,
        ),
    ];
    // One case per message with a fixed payload: msg_size one byte short.
    let short: [(Namespace, u8); 11] = [
        (Namespace::Transport, msg::GET_DEVICE_FEATURES),
        (Namespace::Transport, msg::SET_DRIVER_FEATURES),
        (Namespace::Transport, msg::GET_CONFIG),
        (Namespace::Transport, msg::SET_CONFIG),
        (Namespace::Transport, msg::SET_DEVICE_STATUS),
        (Namespace::Transport, msg::GET_VQUEUE),
        (Namespace::Transport, msg::SET_VQUEUE),
        (Namespace::Transport, msg::RESET_VQUEUE),
        (Namespace::Transport, msg::GET_SHM),
        (Namespace::Bus, bus_msg::GET_DEVICES),
        (Namespace::Bus, bus_msg::PING),
    ];
    for (ns, id) in short {
        let name = format!(
            "frame.short_payload.{}",
            wire::message_name(ns, id).to_lowercase()
        );
        v.push(Case::new(
            name,
            "§9.3, §6.3",
            "msg_size below the header + the fixed payload is dropped",
            move |c: &mut Ctx| short_payload(c, ns, id),
        ));
    }
    v
}

fn status_frame(c: &mut Ctx) -> RawFrame {
    let t = c.drv().alloc_token();
    c.raw(&Request::GetDeviceStatus, c.dev_num, t)
}

/// Skip a case about frame lengths on a bus that has none.
fn needs_frame_length(c: &mut Ctx) -> Result<(), CaseError> {
    if c.drv().bus().carries_frame_length() {
        Ok(())
    } else {
        Err(CaseError::Skip(
            "this bus carries no frame length (a fixed window, e.g. FF-A direct messages): such a frame cannot be sent".into(),
        ))
    }
}

fn header_short(c: &mut Ctx) -> CaseResult {
    needs_frame_length(c)?;
    // A GET_DEVICE_STATUS frame is exactly one header long.
    let full = status_frame(c).build();
    let frames: Vec<_> = [1usize, 4, c.hdr() - 1]
        .iter()
        .map(|&n| (full[..n].to_vec(), format!("a {n}-byte frame")))
        .collect();
    c.expect_all_dropped(&frames)
}

fn msg_size_below_header(c: &mut Ctx) -> CaseResult {
    let mut frames = Vec::new();
    let below = c.hdr() as u16 - 1;
    for s in [0u16, 4, below] {
        frames.push((
            status_frame(c).msg_size(s).build(),
            format!("GET_DEVICE_STATUS with msg_size {s}"),
        ));
    }
    c.expect_all_dropped(&frames)
}

fn msg_size_exceeds(c: &mut Ctx) -> CaseResult {
    needs_frame_length(c)?;
    let mut frames = Vec::new();
    let hdr = c.hdr();
    for s in [hdr as u16 + 1, hdr as u16 + 8] {
        frames.push((
            status_frame(c).msg_size(s).build(),
            format!("{hdr} bytes claiming msg_size {s}"),
        ));
    }
    let t = c.drv().alloc_token();
    let f = c
        .raw(&Request::GetVqueue { index: 0 }, c.dev_num, t)
        .truncate(hdr + 2)
        .build();
    frames.push((
        f,
        format!(
            "GET_VQUEUE of {} bytes claiming msg_size {}",
            hdr + 2,
            hdr + 4
        ),
    ));
    c.expect_all_dropped(&frames)
}

fn msg_size_above_max(c: &mut Ctx) -> CaseResult {
    let max = c.drv().max_msg_size();
    let size = max + 8;
    let Ok(size16) = u16::try_from(size) else {
        return Err(CaseError::Skip(format!(
            "max_msg_size {max} leaves no representable larger msg_size"
        )));
    };
    let hdr = c.hdr();
    let f = status_frame(c)
        .payload_len(size - hdr)
        .msg_size(size16)
        .build();
    match c.expect_dropped(
        &f,
        &format!("GET_DEVICE_STATUS with msg_size {size} > max {max}"),
    )? {
        Dropped::Yes => Ok(()),
        Dropped::RefusedByBus(e) => Err(CaseError::Skip(format!(
            "bus refuses frames above max: {e}"
        ))),
    }
}

fn reserved_type_bits(c: &mut Ctx) -> CaseResult {
    for t in [0x04u8, 0xFC] {
        let token = c.drv().alloc_token();
        let f = c.raw(&Request::GetDeviceStatus, c.dev_num, token).ty(t);
        c.drv().send_raw(&f)?;
        let (dev, to) = (c.dev_num, c.cfg.timeout);
        let rx = c.drv().wait_raw(dev, token, to)?;
        let Some(rx) = rx else {
            return Err(CaseError::Fail(format!(
                "no response to GET_DEVICE_STATUS with type {t:#04x}"
            )));
        };
        let (max, p) = (c.drv().max_msg_size(), c.profile());
        wire::check_response_for(p, &Request::GetDeviceStatus, dev, token, &rx.frame, max)
            .map_err(|e| CaseError::Fail(format!("type {t:#04x}: invalid response: {e}")))?;
    }
    Ok(())
}

fn response_typed(c: &mut Ctx) -> CaseResult {
    let dev = c.dev_num;
    let mut frames = Vec::new();
    for (req, t) in [
        (Request::GetDeviceStatus, ty::RESPONSE),
        (Request::GetDeviceInfo, ty::RESPONSE),
        (Request::Ping { data: 1 }, ty::BUS | ty::RESPONSE),
        (
            Request::GetDevices {
                offset: 0,
                count: 8,
            },
            ty::BUS | ty::RESPONSE,
        ),
    ] {
        let token = c.drv().alloc_token();
        let f = c.raw(&req, dev, token).ty(t).build();
        frames.push((f, format!("{} with type {t:#04x}", req.name())));
    }
    // A well-formed response body too (a device that parses by msg_id alone would act on it).
    let token = c.drv().alloc_token();
    let f = Response::DeviceStatus { status: 0 }
        .encode_for(c.profile(), dev, token)
        .map_err(|e| CaseError::Fail(e.to_string()))?;
    frames.push((f, "a GET_DEVICE_STATUS response frame".into()));
    c.expect_all_dropped(&frames)
}

fn larger_accepted(c: &mut Ctx) -> CaseResult {
    let dev = c.dev_num;
    for (req, extra) in [
        (Request::GetDeviceStatus, 8usize),
        (Request::GetVqueue { index: 0 }, 4),
        (Request::GetDeviceInfo, 4),
    ] {
        let token = c.drv().alloc_token();
        let body = req.payload_for(c.profile());
        let f = c.raw(&req, dev, token).payload_len(body.len() + extra);
        c.drv().send_raw(&f)?;
        let to = c.cfg.timeout;
        let Some(rx) = c.drv().wait_raw(dev, token, to)? else {
            return Err(CaseError::Fail(format!(
                "{} with {extra} extra payload bytes got no response",
                req.name()
            )));
        };
        let (max, p) = (c.drv().max_msg_size(), c.profile());
        wire::check_response_for(p, &req, dev, token, &rx.frame, max)
            .map_err(|e| CaseError::Fail(format!("{}: invalid response: {e}", req.name())))?;
    }
    Ok(())
}

fn short_payload(c: &mut Ctx, ns: Namespace, id: u8) -> CaseResult {
    let dev = c.dev_num;
    let fixed = Request::fixed_payload_for(c.profile(), ns, id).unwrap_or(0);
    let body = match (ns, id) {
        (Namespace::Transport, msg::GET_DEVICE_FEATURES) => Request::GetDeviceFeatures {
            block_index: 0,
            num_blocks: 0,
        },
        (Namespace::Transport, msg::SET_DRIVER_FEATURES) => Request::SetDriverFeatures {
            block_index: 0,
            features: vec![],
        },
        (Namespace::Transport, msg::GET_CONFIG) => Request::GetConfig {
            offset: 0,
            length: 0,
        },
        (Namespace::Transport, msg::SET_CONFIG) => Request::SetConfig {
            generation: 0,
            offset: 0,
            data: vec![],
        },
        // Payload of zeros: a device reading past the frame would see "reset".
        (Namespace::Transport, msg::SET_DEVICE_STATUS) => Request::SetDeviceStatus { status: 0 },
        (Namespace::Transport, msg::GET_VQUEUE) => Request::GetVqueue { index: 0 },
        (Namespace::Transport, msg::SET_VQUEUE) => Request::SetVqueue(SetVqueue::default()),
        (Namespace::Transport, msg::RESET_VQUEUE) => Request::ResetVqueue { index: 0 },
        (Namespace::Transport, msg::GET_SHM) => Request::GetShm { shmid: 0 },
        (Namespace::Bus, bus_msg::GET_DEVICES) => Request::GetDevices {
            offset: 0,
            count: 0,
        },
        _ => Request::Ping { data: 0 },
    };
    // State a wrongly accepted frame would visibly change.
    let queue = match id {
        msg::SET_DEVICE_STATUS if ns == Namespace::Transport => {
            c.reset()?;
            c.set_status_exact(status::ACKNOWLEDGE)?;
            None
        }
        msg::SET_VQUEUE if ns == Namespace::Transport => {
            c.to_features_ok(&[])?;
            let (q, max) = c.first_queue()?;
            let flags = c.enable_flags();
            let s = c.rings(q, Ctx::small_size(max), flags)?;
            Some(Request::SetVqueue(s))
        }
        _ => None,
    };
    let req = queue.unwrap_or(body);
    let token = c.drv().alloc_token();
    let f = c.raw(&req, dev, token).payload_len(fixed - 1).build();
    match c.expect_dropped(
        &f,
        &format!(
            "{} with a {}-byte payload (fixed part {fixed})",
            req.name(),
            fixed - 1
        ),
    )? {
        Dropped::Yes => {}
        Dropped::RefusedByBus(e) => {
            return Err(CaseError::Skip(format!("bus refused the frame: {e}")));
        }
    }
    match req {
        Request::SetDeviceStatus { .. } => {
            let st = c.status()?;
            ensure!(
                st == status::ACKNOWLEDGE,
                "status changed to {st:#x} by a short SET_DEVICE_STATUS"
            );
        }
        Request::SetVqueue(s) => {
            let q = c.vq(s.index)?;
            ensure!(
                q.is_idle(),
                "queue {} configured by a short SET_VQUEUE: {q:?}",
                s.index
            );
        }
        _ => {}
    }
    Ok(())
}

fn variable_part(c: &mut Ctx) -> CaseResult {
    let dev = c.dev_num;
    let mut frames = Vec::new();
    // num_blocks = 2 but one feature word.
    let token = c.drv().alloc_token();
    let f = c
        .raw(
            &Request::SetDriverFeatures {
                block_index: 0,
                features: vec![0, 0],
            },
            dev,
            token,
        )
        .payload_len(12)
        .build();
    frames.push((
        f,
        "SET_DRIVER_FEATURES num_blocks 2 with 1 word".to_string(),
    ));
    let info = c.info()?;
    let cfg_before = if info.config_size >= 4 {
        Some(c.drv().get_config(dev, 0, 4)?.1)
    } else {
        None
    };
    // length = 4 but 2 data bytes.
    let token = c.drv().alloc_token();
    let data = cfg_before
        .clone()
        .unwrap_or_else(|| vec![0; 4])
        .iter()
        .map(|b| !b)
        .collect();
    let f = c
        .raw(
            &Request::SetConfig {
                generation: 0,
                offset: 0,
                data,
            },
            dev,
            token,
        )
        .payload_len(14)
        .build();
    frames.push((f, "SET_CONFIG length 4 with 2 data bytes".to_string()));
    // GET_CONFIG is fixed-size, but SET_CONFIG data claiming more than 64 KiB must not be read past the frame.
    let token = c.drv().alloc_token();
    let mut p = vec![0u8; 12];
    p[8..12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let f = c
        .raw_new(0, msg::SET_CONFIG)
        .dev_num(dev)
        .token(token)
        .payload(&p)
        .build();
    frames.push((f, "SET_CONFIG length 0xFFFFFFF0 with no data".to_string()));
    c.expect_all_dropped(&frames)?;
    if let Some(before) = cfg_before {
        let after = c.drv().get_config(dev, 0, 4)?.1;
        ensure!(
            after == before,
            "config changed by a SET_CONFIG whose data did not fit: {before:?} -> {after:?}"
        );
    }
    Ok(())
}

fn unknown_transport_ids(c: &mut Ctx) -> CaseResult {
    let dev = c.dev_num;
    let mut frames = Vec::new();
    for id in [0x00u8, 0x01, 0x0D, 0x20, 0x3F, 0x80, 0xBF] {
        let token = c.drv().alloc_token();
        let f = c
            .raw_new(0, id)
            .dev_num(dev)
            .token(token)
            .payload(&[0; 8])
            .build();
        frames.push((f, format!("transport msg_id {id:#04x}")));
    }
    c.expect_all_dropped(&frames)
}

fn unknown_bus_ids(c: &mut Ctx) -> CaseResult {
    let mut frames = Vec::new();
    // 0x80+ is the bus-specific range a bus may use: only the standard range is probed.
    for id in [0x00u8, 0x01, 0x04, 0x20, 0x3F] {
        let token = c.drv().alloc_token();
        let f = c.raw_new(ty::BUS, id).token(token).payload(&[0; 8]).build();
        frames.push((f, format!("bus msg_id {id:#04x}")));
    }
    c.expect_all_dropped(&frames)
}

fn events_never_answered(c: &mut Ctx) -> CaseResult {
    let dev = c.dev_num;
    let maxq = c.info()?.max_virtqueues;
    let frames = vec![
        (
            c.raw_new(0, msg::EVENT_AVAIL)
                .dev_num(dev)
                .payload(&[0; 8])
                .build(),
            "EVENT_AVAIL for unconfigured queue 0".to_string(),
        ),
        (
            c.raw_new(0, msg::EVENT_AVAIL)
                .dev_num(dev)
                .payload(&[&maxq.to_le_bytes()[..], &[0; 4]].concat())
                .build(),
            "EVENT_AVAIL for queue max_virtqueues".to_string(),
        ),
        (
            c.raw_new(0, msg::EVENT_USED)
                .dev_num(dev)
                .payload(&[0; 4])
                .build(),
            "EVENT_USED sent to the device".to_string(),
        ),
        (
            c.raw_new(0, msg::EVENT_CONFIG)
                .dev_num(dev)
                .payload(&[0; 16])
                .build(),
            "EVENT_CONFIG sent to the device".to_string(),
        ),
        (
            c.raw_new(ty::BUS, bus_msg::EVENT_DEVICE)
                .payload(&[&dev.to_le_bytes()[..], &1u16.to_le_bytes()].concat())
                .build(),
            "bus EVENT_DEVICE sent to the device side".to_string(),
        ),
        (
            c.raw_new(0, 0x7F).dev_num(dev).payload(&[0; 8]).build(),
            "unknown standard event 0x7f".to_string(),
        ),
    ];
    c.expect_all_dropped(&frames)
}

fn unknown_dev_num(c: &mut Ctx) -> CaseResult {
    // Prefer a number GET_DEVICES does not list; fall back to a far-away one.
    let listed = c.drv().discover().unwrap_or_default();
    let candidates = [
        c.dev_num.wrapping_add(1),
        c.dev_num ^ 0x8000,
        0xFFFF,
        0xFFFE,
    ];
    let Some(&other) = candidates
        .iter()
        .find(|d| **d != c.dev_num && !listed.contains(d))
    else {
        return Err(CaseError::Skip("no free device number found".into()));
    };
    let mut frames = Vec::new();
    for req in [
        Request::GetDeviceInfo,
        Request::GetDeviceStatus,
        Request::SetDeviceStatus { status: 0 },
    ] {
        let token = c.drv().alloc_token();
        let f = c.raw(&req, other, token).build();
        frames.push((f, format!("{} to dev_num {other}", req.name())));
    }
    for (f, what) in &frames {
        c.drv().take_unclaimed();
        if let Err(e) = c.drv().send_frame(f) {
            // A routing failure raised locally by the bus is allowed (§6.3).
            log::info!("{what}: refused by the bus: {e}");
            continue;
        }
        let got = c.responses_within_window()?;
        ensure!(
            got.is_empty(),
            "got a response for {what}: {}",
            got.iter()
                .map(|r| wire::hex(&r.frame))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    c.alive("requests to an unknown dev_num")
}
