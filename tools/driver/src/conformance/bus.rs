//! Bus messages PING and GET_DEVICES (§4). Bus messages are optional (§4: a
//! bus may implement any subset), so a bus that never answers one is skipped;
//! a bus that answers must follow the definition.

use super::{Case, CaseError, CaseResult, Ctx, ensure};
use crate::wire::{self, Header, Profile, Request, Response, ty};

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "bus.ping_echo",
            "§4.2",
            "PING echoes data exactly in a 12-byte bus response with dev_num 0",
            ping_echo,
        ),
        Case::new(
            "bus.get_devices_lists_device",
            "§4.1",
            "walking GET_DEVICES windows lists the device under test",
            lists_device,
        ),
        Case::new(
            "bus.get_devices_count_zero",
            "§4.1",
            "GET_DEVICES with count 0 answers count 0 and an empty bitmap",
            count_zero,
        ),
        Case::new(
            "bus.get_devices_bitmap_tail_zero",
            "§4.1",
            "response count ≤ request count and bitmap bits at positions ≥ count are 0",
            bitmap_tail,
        ),
        Case::new(
            "bus.get_devices_v1_aligned",
            "§4.1, §7.1",
            "v1: windows are 8-aligned; response count a multiple of 8, next_offset 0 or aligned ≥ offset + count",
            v1_aligned,
        )
        .only(&[Profile::V1], "only v1 requires 8-aligned windows"),
        Case::new(
            "bus.get_devices_next_offset",
            "§4.1",
            "next_offset is 0 or > the request offset, and enumeration terminates",
            next_offset,
        ),
    ]
}

/// Sends a bus request; `None` if the bus never answers (unimplemented).
fn bus_req(c: &mut Ctx, req: Request) -> Result<Option<(Header, Response)>, CaseError> {
    let p = c.drv().submit(0, req)?;
    let to = c.cfg.timeout;
    let Some(rx) = c.drv().wait_raw(0, p.token, to)? else {
        return Ok(None);
    };
    let (max, profile) = (c.drv().max_msg_size(), c.profile());
    let r =
        wire::check_response_for(profile, &p.request, 0, p.token, &rx.frame, max).map_err(|e| {
            CaseError::Fail(format!(
                "invalid {} response: {e} ({})",
                p.request.name(),
                wire::hex(&rx.frame)
            ))
        })?;
    Ok(Some((rx.header, r)))
}

fn unimplemented(what: &str) -> CaseError {
    CaseError::Skip(format!("the bus does not answer {what} (optional, §4)"))
}

fn ping_echo(c: &mut Ctx) -> CaseResult {
    for data in [0u32, 1, 0xDEAD_BEEF, u32::MAX] {
        let Some((h, _)) = bus_req(c, Request::Ping { data })? else {
            return Err(unimplemented("PING"));
        };
        ensure!(
            h.ty == ty::BUS | ty::RESPONSE,
            "PING response type {:#04x} (expected 0x03)",
            h.ty
        );
        ensure!(h.dev_num == 0, "PING response dev_num {}", h.dev_num);
        ensure!(
            usize::from(h.msg_size) == c.hdr() + 4,
            "PING response msg_size {}",
            h.msg_size
        );
    }
    Ok(())
}

fn lists_device(c: &mut Ctx) -> CaseResult {
    if bus_req(
        c,
        Request::GetDevices {
            offset: 0,
            count: 0,
        },
    )?
    .is_none()
    {
        return Err(unimplemented("GET_DEVICES"));
    }
    let found = c.drv().discover()?;
    ensure!(
        found.contains(&c.dev_num),
        "dev_num {} not listed by GET_DEVICES (found {found:?})",
        c.dev_num
    );
    Ok(())
}

fn count_zero(c: &mut Ctx) -> CaseResult {
    // v1 windows start on a multiple of 8 (§4.1).
    let own = if c.profile() == Profile::V1 {
        c.dev_num & !7
    } else {
        c.dev_num
    };
    for offset in [0u16, own] {
        let Some((h, r)) = bus_req(c, Request::GetDevices { offset, count: 0 })? else {
            return Err(unimplemented("GET_DEVICES"));
        };
        let Response::Devices { count, bitmap, .. } = r else {
            return Err(CaseError::Fail(format!("unexpected {r:?}")));
        };
        ensure!(
            count == 0 && bitmap.is_empty(),
            "count 0 request answered count {count}"
        );
        let want = c.hdr() + 6;
        ensure!(
            usize::from(h.msg_size) == want,
            "count-0 response msg_size {} (expected {want})",
            h.msg_size
        );
    }
    Ok(())
}

fn bitmap_tail(c: &mut Ctx) -> CaseResult {
    let d = c.dev_num;
    let windows = if c.profile() == Profile::V1 {
        // v1 windows are 8-aligned (§4.1).
        vec![(0u16, 8u16), (0, 16), (d & !7, 8), (d & !7, 16)]
    } else {
        vec![
            (0u16, 3u16),
            (0, 13),
            (d, 1),
            (d - d % 8, 5),
            (d.saturating_sub(2), 7),
        ]
    };
    for (offset, count) in windows {
        let Some((h, r)) = bus_req(c, Request::GetDevices { offset, count })? else {
            return Err(unimplemented("GET_DEVICES"));
        };
        let Response::Devices {
            count: n, bitmap, ..
        } = r
        else {
            return Err(CaseError::Fail(format!("unexpected {r:?}")));
        };
        // check_response enforced n ≤ count.
        let bytes = usize::from(n).div_ceil(8);
        ensure!(
            usize::from(h.msg_size) == c.hdr() + 6 + bytes,
            "GET_DEVICES({offset}, {count}): msg_size {} for count {n}",
            h.msg_size
        );
        if n % 8 != 0 {
            let tail = bitmap[bytes - 1] >> (n % 8);
            ensure!(
                tail == 0,
                "GET_DEVICES({offset}, {count}): bits ≥ count {n} set in the last byte {:#04x}",
                bitmap[bytes - 1]
            );
        }
        if d >= offset && u32::from(d) < u32::from(offset) + u32::from(n) {
            let b = d - offset;
            ensure!(
                bitmap[usize::from(b / 8)] & (1 << (b % 8)) != 0,
                "GET_DEVICES({offset}, {count}) does not show device {d}"
            );
        }
    }
    Ok(())
}

fn next_offset(c: &mut Ctx) -> CaseResult {
    let d = c.dev_num;
    let windows = if c.profile() == Profile::V1 {
        vec![(0u16, 8u16), (d & !7, 8), (0xFFF0, 8), (0xFFF8, 8)]
    } else {
        vec![(0u16, 8u16), (0, 1), (d, 1), (0xFFF8, 8), (0xFFFF, 1)]
    };
    for (offset, count) in windows {
        let Some((_, r)) = bus_req(c, Request::GetDevices { offset, count })? else {
            return Err(unimplemented("GET_DEVICES"));
        };
        // check_response already enforced next_offset == 0 || next_offset > offset.
        let Response::Devices { next_offset, .. } = r else {
            return Err(CaseError::Fail(format!("unexpected {r:?}")));
        };
        if u32::from(offset) + u32::from(count) == 0x10000 {
            ensure!(
                next_offset == 0,
                "window at the last device number answered next_offset {next_offset}"
            );
        }
    }
    // A full walk from 0 terminates (strictly increasing offsets) and ends with next_offset 0.
    c.drv().discover()?;
    Ok(())
}

fn v1_aligned(c: &mut Ctx) -> CaseResult {
    // check_response_for(V1) enforces the alignment rules on every answer.
    let d = c.dev_num;
    for (offset, count) in [(0u16, 8u16), (0, 64), (d & !7, 8), (d & !7, 0), (0x8000, 8)] {
        if bus_req(c, Request::GetDevices { offset, count })?.is_none() {
            return Err(unimplemented("GET_DEVICES"));
        }
    }
    let found = c.drv().discover()?;
    ensure!(
        found.contains(&d),
        "dev_num {d} not listed by an aligned GET_DEVICES walk (found {found:?})"
    );
    Ok(())
}
