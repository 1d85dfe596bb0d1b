//! Response form, tokens, ordering, GET_SHM, events and device data
//! (§6.1, §6.2, §3.12, §3.15, §5 steps 11–12, §9.4, §9.10–§9.12).

use std::time::Duration;

use super::{Case, CaseError, CaseResult, Ctx, Needs, ensure};
use crate::device::{FeatureSet, VirtioDevice};
use crate::rng::{Rng, VIRTIO_ID_RNG};
use crate::virtq::Buffer;
use crate::wire::{self, Event, Profile, Request, Response, status, ty};

/// Why pipelining cases do not apply to RFC2.
const NO_TOKEN: &str = "RFC2 has no token: one request outstanding at a time";

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "resp.header_fields_exact",
            "§9.4",
            "responses: type = request type | 1 (reserved bits 0), same msg_id, dev_num, token, exact msg_size",
            header_fields,
        ),
        Case::new(
            "resp.token_echo",
            "§6.1, §9.4",
            "the response copies the request token, whatever its value",
            token_echo,
        )
        .only(&[Profile::V2, Profile::V1], NO_TOKEN),
        Case::new(
            "resp.reserved_fields_zero",
            "§9.4, §3.12",
            "reserved response fields are 0 (v2 GET_SHM reserved, v1 GET_VQUEUE reserved)",
            reserved_zero,
        )
        .only(
            &[Profile::V2, Profile::V1],
            "RFC2 responses have no reserved fields",
        ),
        Case::new(
            "order.pipelined_processing_order",
            "§6.2, §9.12",
            "pipelined requests are processed in receive order",
            processing_order,
        )
        .only(
            &[Profile::V2],
            "the observable state changes it pipelines are v2 SET_VQUEUE state ops; RFC2 cannot pipeline",
        ),
        Case::new(
            "order.pipelined_response_order",
            "§6.2, §9.12",
            "pipelined requests to one device are answered in request order (v1: required of the bus too)",
            response_order,
        )
        .only(&[Profile::V2, Profile::V1], NO_TOKEN),
        Case::new(
            "order.exactly_one_response",
            "§6.2, §9.12",
            "exactly one response per valid request",
            exactly_one,
        ),
        Case::new(
            "shm.unsupported_length_zero",
            "§3.12, §9.10",
            "GET_SHM of an unsupported shmid answers length 0 with the shmid echoed",
            shm_unsupported,
        ),
        Case::new(
            "event.used_after_buffers",
            "§3.15, §9.11",
            "the device sends a 12-byte EVENT_USED after adding used entries",
            used_event,
        )
        .needs(Needs::DeviceId(VIRTIO_ID_RNG)),
        Case::new(
            "rng.read_returns_written_bytes",
            "§5 step 12, virtio-rng",
            "virtio-rng fills posted buffers and reports the bytes written",
            rng_read,
        )
        .needs(Needs::DeviceId(VIRTIO_ID_RNG)),
        Case::new(
            "rng.no_io_before_driver_ok",
            "§5 step 11",
            "buffers are not processed before DRIVER_OK",
            no_io_before_driver_ok,
        )
        .needs(Needs::DeviceId(VIRTIO_ID_RNG)),
    ]
}

fn expected_size(p: Profile, req: &Request) -> Option<usize> {
    let h = p.header_size();
    Some(match req {
        Request::GetDeviceInfo => h + p.device_info_size(),
        Request::GetDeviceStatus | Request::SetDeviceStatus { .. } => h + 4,
        Request::GetDeviceFeatures { num_blocks, .. } => h + 8 + 4 * *num_blocks as usize,
        Request::SetDriverFeatures { .. } | Request::SetVqueue(_) | Request::ResetVqueue { .. } => {
            h
        }
        Request::GetConfig { length, .. } => h + 12 + *length as usize,
        Request::GetVqueue { .. } => h + p.vqueue_size(),
        Request::GetShm { .. } => h + p.shm_size(),
        _ => return None,
    })
}

fn header_fields(c: &mut Ctx) -> CaseResult {
    let info = c.info()?;
    let blocks = info.num_feature_blocks.min(4);
    let cfg_len = info.config_size.min(8);
    c.to_driver()?;
    let reqs = [
        Request::GetDeviceInfo,
        Request::GetDeviceStatus,
        Request::SetDeviceStatus {
            status: status::ACKNOWLEDGE | status::DRIVER,
        },
        Request::GetDeviceFeatures {
            block_index: 0,
            num_blocks: blocks,
        },
        Request::SetDriverFeatures {
            block_index: 0,
            features: vec![0],
        },
        Request::GetConfig {
            offset: 0,
            length: cfg_len,
        },
        Request::GetVqueue { index: 0 },
        Request::GetVqueue {
            index: info.max_virtqueues,
        },
        Request::GetShm { shmid: 0 },
    ];
    let dev = c.dev_num;
    for req in reqs {
        let token = c.drv().alloc_token();
        let p = c.drv().submit_with_token(dev, token, req.clone())?;
        let to = c.cfg.timeout;
        let Some(rx) = c.drv().wait_raw(dev, p.token, to)? else {
            return Err(CaseError::Fail(format!("no response to {}", req.name())));
        };
        let f = &rx.frame;
        ensure!(
            f[0] == ty::RESPONSE,
            "{}: response type byte {:#04x} (expected 0x01)",
            req.name(),
            f[0]
        );
        ensure!(f[1] == req.msg_id(), "{}: msg_id {:#04x}", req.name(), f[1]);
        ensure!(
            rx.header.dev_num == dev,
            "{}: dev_num {} (expected {dev})",
            req.name(),
            rx.header.dev_num
        );
        ensure!(
            rx.header.token == token,
            "{}: token {} (expected {token})",
            req.name(),
            rx.header.token
        );
        if let Some(n) = expected_size(c.profile(), &req) {
            ensure!(
                usize::from(rx.header.msg_size) == n,
                "{}: msg_size {} (expected {n})",
                req.name(),
                rx.header.msg_size
            );
        }
        ensure!(
            f.len() == usize::from(rx.header.msg_size),
            "{}: frame carries {} bytes for msg_size {}",
            req.name(),
            f.len(),
            rx.header.msg_size
        );
        let (max, p) = (c.drv().max_msg_size(), c.profile());
        wire::check_response_for(p, &req, dev, token, f, max)
            .map_err(|e| CaseError::Fail(format!("{}: {e}", req.name())))?;
    }
    Ok(())
}

fn token_echo(c: &mut Ctx) -> CaseResult {
    let dev = c.dev_num;
    for token in [
        1u16, 0x00FF, 0x0100, 0x7FFF, 0x8000, 0xA55A, 0xFFFE, 0xFFFF, 0,
    ] {
        let p = c
            .drv()
            .submit_with_token(dev, token, Request::GetDeviceStatus)?;
        let to = c.cfg.timeout;
        let rx = c.drv().wait_raw(dev, p.token, to)?;
        let stray = c.drv().take_unclaimed();
        ensure!(
            rx.is_some(),
            "no response echoing token {token:#06x}{}",
            if stray.is_empty() {
                String::new()
            } else {
                format!(
                    " (got tokens {:?})",
                    stray.iter().map(|r| r.header.token).collect::<Vec<_>>()
                )
            }
        );
    }
    Ok(())
}

fn reserved_zero(c: &mut Ctx) -> CaseResult {
    let dev = c.dev_num;
    if c.profile() == Profile::V1 {
        // v1 GET_VQUEUE word 12 is reserved (decoded into `flags`): 0 for
        // every queue, idle or enabled (Ctx::vq checks it).
        c.to_features_ok(&[])?;
        let n = c.info()?.max_virtqueues.min(256);
        for i in 0..n {
            c.vq(i)?;
        }
        if let Ok((q, max)) = c.first_queue() {
            c.enable_queue(q, max)?;
            c.vq(q)?;
        }
        return Ok(());
    }
    for shmid in (0u32..=255).chain([u32::MAX]) {
        match c.drv().request(dev, Request::GetShm { shmid })? {
            Response::Shm { reserved, .. } => {
                ensure!(reserved == 0, "GET_SHM({shmid}) reserved = {reserved:#x}")
            }
            r => return Err(CaseError::Fail(format!("unexpected {r:?}"))),
        }
    }
    Ok(())
}

fn processing_order(c: &mut Ctx) -> CaseResult {
    // Observable, driver-legal state changes interleaved with reads: the
    // size of a disabled queue may be reloaded any number of times (§3.10
    // rule 5), and each GET_VQUEUE must see the SET_VQUEUE sent before it.
    // (Status writes would not do: a driver may not clear status bits.)
    c.reset()?;
    c.to_driver()?;
    let (index, max) = c.first_queue()?;
    if max < 2 {
        return Err(CaseError::Skip(format!(
            "queue {index} max_size {max} leaves no second size"
        )));
    }
    let (a, b) = (max, max / 2);
    let load = |size: u32| {
        Request::SetVqueue(wire::SetVqueue {
            index,
            flags: wire::vq_flags::STATE_KEEP_DISABLED
                | wire::vq_flags::DESC_ADDR_IGNORE
                | wire::vq_flags::DRIVER_ADDR_IGNORE
                | wire::vq_flags::DEVICE_ADDR_IGNORE,
            size,
            ..Default::default()
        })
    };
    let steps = [
        load(a),
        Request::GetVqueue { index },
        load(b),
        Request::GetVqueue { index },
        load(a),
        Request::GetVqueue { index },
    ];
    let dev = c.dev_num;
    let mut pending = Vec::new();
    for r in steps {
        pending.push(c.drv().submit(dev, r)?);
    }
    let mut gets = Vec::new();
    for p in &pending {
        if let Response::Vqueue(q) = c.drv().wait(p)? {
            gets.push(q.cur_size);
        }
    }
    let want = [a, b, a];
    ensure!(
        gets == want,
        "pipelined GET_VQUEUE read sizes {gets:?}, in-order processing gives {want:?}"
    );
    Ok(())
}

fn pipeline_requests() -> Vec<Request> {
    let reqs = [
        Request::GetDeviceStatus,
        Request::GetVqueue { index: 0 },
        Request::GetDeviceInfo,
        Request::GetDeviceFeatures {
            block_index: 0,
            num_blocks: 1,
        },
        Request::GetConfig {
            offset: 0,
            length: 0,
        },
        Request::GetShm { shmid: 0 },
    ];
    let mut v = reqs.to_vec();
    v.extend(reqs);
    v
}

fn pipeline(c: &mut Ctx) -> Result<Vec<crate::driver::Pending>, CaseError> {
    let dev = c.dev_num;
    let mut v = Vec::new();
    for r in pipeline_requests() {
        v.push(c.drv().submit(dev, r)?);
    }
    Ok(v)
}

fn response_order(c: &mut Ctx) -> CaseResult {
    let pending = pipeline(c)?;
    let mut seqs = Vec::new();
    let to = c.cfg.timeout;
    for p in &pending {
        let Some(rx) = c.drv().wait_raw(p.dev_num, p.token, to)? else {
            return Err(CaseError::Fail(format!(
                "no response to pipelined {} (token {})",
                p.request.name(),
                p.token
            )));
        };
        seqs.push(rx.seq);
    }
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "responses arrived in order {seqs:?} (request order is ascending)"
    );
    Ok(())
}

fn exactly_one(c: &mut Ctx) -> CaseResult {
    let pending = if c.profile().has_token() {
        let pending = pipeline(c)?;
        for p in &pending {
            c.drv().wait(p)?;
        }
        pending
    } else {
        // No token: one request at a time, then look for extras.
        let dev = c.dev_num;
        let mut done = Vec::new();
        for r in pipeline_requests() {
            let p = c.drv().submit(dev, r)?;
            c.drv().wait(&p)?;
            done.push(p);
        }
        done
    };
    let extra = c.responses_within_window()?;
    ensure!(
        extra.is_empty(),
        "{} extra responses after {} requests: {}",
        extra.len(),
        pending.len(),
        extra
            .iter()
            .map(|r| wire::hex(&r.frame))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    Ok(())
}

fn shm_unsupported(c: &mut Ctx) -> CaseResult {
    // shmid is 8 bits in the core spec, so ids above 255 are never supported.
    for shmid in [256u32, 0x8000_0000, u32::MAX] {
        let (h, r) = c.exact(Request::GetShm { shmid })?;
        let want = c.hdr() + c.profile().shm_size();
        ensure!(
            usize::from(h.msg_size) == want,
            "GET_SHM({shmid}) response msg_size {} (expected {want})",
            h.msg_size
        );
        let Response::Shm { length, .. } = r else {
            return Err(CaseError::Fail(format!("unexpected {r:?}")));
        };
        ensure!(length == 0, "GET_SHM({shmid:#x}) reports length {length}");
    }
    Ok(())
}

/// Full init with queue 0 of an rng and DRIVER_OK; the session moves into the device.
fn rng_device(
    c: &mut Ctx,
    driver_ok: bool,
) -> Result<(VirtioDevice, crate::virtq::SplitQueue), CaseError> {
    let drv = c.take_driver();
    let mut dev = VirtioDevice::initialize(drv, c.dev_num, &FeatureSet::new())?;
    let q = dev.setup_queue(0, 8)?;
    if driver_ok {
        dev.driver_ok()?;
    }
    Ok((dev, q))
}

fn used_event(c: &mut Ctx) -> CaseResult {
    if c.drv().bus().polling_only() {
        return Err(CaseError::Skip(
            "bus uses polling-only used notifications (§3.16)".into(),
        ));
    }
    let (mut dev, mut q) = rng_device(c, true)?;
    let buf = dev.allocator().alloc(4096, 1)?;
    q.enable_notifications()?;
    q.add(&[Buffer {
        addr: buf,
        len: 16,
        writable: true,
    }])?;
    dev.notify(&q)?;
    let (d, to) = (c.dev_num, c.cfg.timeout);
    let ev = dev.driver_mut().wait_event_where(
        |e| matches!(e, Event::Used { dev_num, .. } if *dev_num == d),
        to,
    )?;
    let malformed = dev.driver().stats().malformed;
    let used = q.pop_used()?;
    c.put_driver(dev.into_driver());
    match ev {
        Some(Event::Used { vq_index: 0, .. }) => {}
        Some(e) => {
            return Err(CaseError::Fail(format!(
                "EVENT_USED for the wrong queue: {e:?}"
            )));
        }
        None => {
            return Err(CaseError::Fail(format!(
                "no valid EVENT_USED within {to:?} ({malformed} malformed frames dropped; used entry {})",
                if used.is_some() { "present" } else { "absent" }
            )));
        }
    }
    ensure!(
        used.is_some(),
        "EVENT_USED arrived but the used ring has no new entry"
    );
    Ok(())
}

fn rng_read(c: &mut Ctx) -> CaseResult {
    let drv = c.take_driver();
    let mut rng = Rng::open(drv, c.dev_num)?;
    for n in [1usize, 64, 5000] {
        let b = rng.read(n)?;
        ensure!(b.len() == n, "read({n}) returned {} bytes", b.len());
        if n >= 64 {
            ensure!(
                b.iter().any(|&x| x != 0),
                "read({n}) returned only zero bytes"
            );
        }
    }
    c.put_driver(rng.close()?);
    Ok(())
}

fn no_io_before_driver_ok(c: &mut Ctx) -> CaseResult {
    let (mut dev, mut q) = rng_device(c, false)?;
    let buf = dev.allocator().alloc(4096, 1)?;
    q.add(&[Buffer {
        addr: buf,
        len: 16,
        writable: true,
    }])?;
    dev.notify(&q)?;
    std::thread::sleep(c.cfg.drop_window);
    let early = q.has_used()?;
    if early {
        c.put_driver(dev.into_driver());
        return Err(CaseError::Fail("buffer completed before DRIVER_OK".into()));
    }
    dev.driver_ok()?;
    dev.notify(&q)?;
    let r = dev.wait_used(&mut q, c.cfg.timeout.max(Duration::from_millis(100)));
    c.put_driver(dev.into_driver());
    r.map_err(|e| {
        CaseError::Fail(format!(
            "buffer not processed after DRIVER_OK and a new EVENT_AVAIL: {e}"
        ))
    })?;
    Ok(())
}
