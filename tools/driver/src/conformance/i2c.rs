//! virtio-i2c device rules (virtio 1.3 §5.19), checked through the i2c
//! frontend. Every case needs device id 34.
//!
//! The cases do not know what sits on the adapter. They find out with a
//! zero-length read of every address 0x08..=0x77 (what `i2cdetect -r`
//! does with one-byte reads; a zero-length one changes no register
//! pointer), then use an address that acknowledged ("present") and one
//! that did not ("absent"). They never write to a present target: writes
//! go to absent addresses, so running the suite against real hardware
//! changes nothing there. A case that needs a present or an absent
//! address skips when there is none.

use super::{Case, CaseError, CaseResult, Ctx, Needs, ensure};
use crate::device::{FeatureSet, VirtioDevice};
use crate::i2c::{
    F_ZERO_LENGTH_REQUEST, FLAGS_FAIL_NEXT, I2c, MSG_ERR, MSG_OK, RawRequest, Segment,
    VIRTIO_ID_I2C_ADAPTER, out_hdr,
};
use crate::wire::status;

/// Addresses probed: the 7-bit range a device may use, as i2cdetect.
const PROBED: std::ops::RangeInclusive<u16> = 0x08..=0x77;

pub(super) fn cases() -> Vec<Case> {
    let i2c = Needs::DeviceId(VIRTIO_ID_I2C_ADAPTER);
    vec![
        Case::new(
            "i2c.zero_length_offered",
            "§5.19.3, §5.19.6.2",
            "the device offers VIRTIO_I2C_F_ZERO_LENGTH_REQUEST",
            zero_length_offered,
        )
        .needs(i2c),
        Case::new(
            "i2c.rejects_without_zero_length",
            "§5.19.6.2",
            "the device rejects a driver that does not negotiate VIRTIO_I2C_F_ZERO_LENGTH_REQUEST (FEATURES_OK not set)",
            rejects_without_zero_length,
        )
        .needs(i2c),
        Case::new(
            "i2c.status_written",
            "§5.19.6",
            "every request gets a status byte of VIRTIO_I2C_MSG_OK or VIRTIO_I2C_MSG_ERR",
            status_written,
        )
        .needs(i2c),
        Case::new(
            "i2c.absent_address_err",
            "§5.19.6",
            "a request to an address no target acknowledges completes with VIRTIO_I2C_MSG_ERR",
            absent_address_err,
        )
        .needs(i2c),
        Case::new(
            "i2c.read_fills_buffer",
            "§5.19.6.2, §2.7.8",
            "a successful read places its segment in buf: used len = length of buf + the status byte",
            read_fills_buffer,
        )
        .needs(i2c),
        Case::new(
            "i2c.fail_next_fails_rest",
            "§5.19.6, §5.19.6.2",
            "when a request with FAIL_NEXT fails, the next request of the group fails (ERR) instead of being attempted",
            fail_next_fails_rest,
        )
        .needs(i2c),
        Case::new(
            "i2c.groups_are_independent",
            "§5.19.6",
            "a failure fails only the rest of its own group: the next group is carried out",
            groups_are_independent,
        )
        .needs(i2c),
        Case::new(
            "i2c.in_order",
            "§5.19.6.2",
            "requests received at a time are processed in order: used entries follow the order of the avail ring",
            in_order,
        )
        .needs(i2c),
        Case::new(
            "i2c.request_unchanged",
            "§5.19.6.2",
            "the device changes neither addr, the flags nor the buf of a write request",
            request_unchanged,
        )
        .needs(i2c),
    ]
}

/// Open the adapter, run `f`, reset and give the session back.
fn with_i2c(c: &mut Ctx, f: impl FnOnce(&mut I2c) -> CaseResult) -> CaseResult {
    let dev = c.dev_num;
    let drv = c.take_driver();
    let mut i2c = I2c::open(drv, dev)?;
    let res = f(&mut i2c);
    match i2c.close() {
        Ok(d) => c.put_driver(d),
        Err(e) if res.is_ok() => return Err(e.into()),
        Err(_) => {}
    }
    res
}

/// The addresses that acknowledge, and the first one that does not.
fn survey(i2c: &mut I2c) -> Result<(Vec<u16>, Option<u16>), CaseError> {
    let present = i2c.scan(PROBED)?;
    let absent = PROBED.clone().find(|a| !present.contains(a));
    Ok((present, absent))
}

fn need_present(present: &[u16]) -> Result<u16, CaseError> {
    present
        .first()
        .copied()
        .ok_or_else(|| CaseError::Skip("no address on the adapter acknowledges".into()))
}

fn need_absent(absent: Option<u16>) -> Result<u16, CaseError> {
    absent.ok_or_else(|| CaseError::Skip("every address acknowledges".into()))
}

fn zero_length_offered(c: &mut Ctx) -> CaseResult {
    c.to_driver()?;
    let offered = c.offered()?;
    ensure!(
        offered.contains(F_ZERO_LENGTH_REQUEST),
        "VIRTIO_I2C_F_ZERO_LENGTH_REQUEST (bit 0) not offered: {:?}",
        offered.bits()
    );
    Ok(())
}

fn rejects_without_zero_length(c: &mut Ctx) -> CaseResult {
    c.to_driver()?;
    let offered = c.offered()?;
    let mut chosen = VirtioDevice::choose_features(&offered, &FeatureSet::new());
    chosen.remove(F_ZERO_LENGTH_REQUEST);
    c.write_features(&chosen)?;
    let st = c.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    ensure!(
        st & status::FEATURES_OK == 0,
        "FEATURES_OK accepted without VIRTIO_I2C_F_ZERO_LENGTH_REQUEST (status {st:#x})"
    );
    let st = c.status()?;
    ensure!(
        st & status::FEATURES_OK == 0,
        "GET_DEVICE_STATUS shows FEATURES_OK ({st:#x}) for a driver without VIRTIO_I2C_F_ZERO_LENGTH_REQUEST"
    );
    Ok(())
}

fn status_written(c: &mut Ctx) -> CaseResult {
    with_i2c(c, |i2c| {
        let reqs: Vec<RawRequest> = PROBED
            .map(|a| RawRequest::for_segment(&Segment::read(a, 0), 0))
            .collect();
        let replies = i2c.execute_raw(&reqs)?;
        for (a, r) in PROBED.zip(&replies) {
            ensure!(
                matches!(r.status, Some(MSG_OK | MSG_ERR)),
                "zero-length read of {a:#04x}: status byte {:?}",
                r.status
            );
            ensure!(
                r.used_len == 1,
                "zero-length read of {a:#04x}: used len {} (only the status byte is writable)",
                r.used_len
            );
        }
        Ok(())
    })
}

fn absent_address_err(c: &mut Ctx) -> CaseResult {
    with_i2c(c, |i2c| {
        let (_, absent) = survey(i2c)?;
        let a = need_absent(absent)?;
        for seg in [
            Segment::write(a, &[0x00]),
            Segment::read(a, 1),
            Segment::write(a, &[]),
        ] {
            let r = i2c.transfer(std::slice::from_ref(&seg))?;
            ensure!(
                r[0].status == MSG_ERR,
                "{seg:?} to an address that did not acknowledge: status {}",
                r[0].status
            );
        }
        Ok(())
    })
}

fn read_fills_buffer(c: &mut Ctx) -> CaseResult {
    with_i2c(c, |i2c| {
        let (present, _) = survey(i2c)?;
        let a = need_present(&present)?;
        let r = i2c.transfer(&[Segment::read(a, 1)])?.remove(0);
        if r.status != MSG_OK {
            return Err(CaseError::Skip(format!(
                "the target at {a:#04x} refused a one-byte read (status {})",
                r.status
            )));
        }
        ensure!(
            r.used_len == 2,
            "one-byte read of {a:#04x} completed OK with used len {} (expected 2: the byte and the status)",
            r.used_len
        );
        Ok(())
    })
}

fn fail_next_fails_rest(c: &mut Ctx) -> CaseResult {
    with_i2c(c, |i2c| {
        let (present, absent) = survey(i2c)?;
        let a = need_absent(absent)?;
        let p = need_present(&present)?;
        // A failing request linked to a read that would succeed alone.
        let r = i2c.transfer(&[Segment::write(a, &[0x00]), Segment::read(p, 0)])?;
        ensure!(
            r[0].status == MSG_ERR,
            "the write to absent {a:#04x}: status {}",
            r[0].status
        );
        ensure!(
            r[1].status == MSG_ERR,
            "the request after a failed FAIL_NEXT request was answered {} (attempted), not VIRTIO_I2C_MSG_ERR",
            r[1].status
        );
        // Alone, the same request succeeds: the ERR above came from the link.
        let alone = i2c.transfer(&[Segment::read(p, 0)])?;
        ensure!(
            alone[0].status == MSG_OK,
            "zero-length read of present {p:#04x} failed on its own: status {}",
            alone[0].status
        );
        Ok(())
    })
}

fn groups_are_independent(c: &mut Ctx) -> CaseResult {
    with_i2c(c, |i2c| {
        let (present, absent) = survey(i2c)?;
        let a = need_absent(absent)?;
        let p = need_present(&present)?;
        // Two groups posted at once: the first fails, the second must run.
        let reqs = vec![
            RawRequest::for_segment(&Segment::write(a, &[0x00]), 0),
            RawRequest::for_segment(&Segment::read(p, 0), 0),
        ];
        let r = i2c.execute_raw(&reqs)?;
        ensure!(
            r[0].status == Some(MSG_ERR),
            "absent {a:#04x}: status {:?}",
            r[0].status
        );
        ensure!(
            r[1].status == Some(MSG_OK),
            "a group after a failed group (no FAIL_NEXT between them) failed too: status {:?}",
            r[1].status
        );
        Ok(())
    })
}

fn in_order(c: &mut Ctx) -> CaseResult {
    with_i2c(c, |i2c| {
        let (present, absent) = survey(i2c)?;
        // Succeeding and failing requests interleaved, posted at once.
        let mut addrs: Vec<u16> = Vec::new();
        for i in 0..16u16 {
            let a = if i % 3 == 0 {
                absent.or(present.first().copied())
            } else {
                present.first().copied().or(absent)
            };
            addrs.extend(a);
        }
        let reqs: Vec<RawRequest> = addrs
            .iter()
            .map(|&a| RawRequest::for_segment(&Segment::read(a, 0), 0))
            .collect();
        i2c.execute_raw(&reqs)?;
        let order = i2c.completion_order().to_vec();
        let want: Vec<usize> = (0..reqs.len()).collect();
        ensure!(order == want, "used entries came back in order {order:?}");
        Ok(())
    })
}

fn request_unchanged(c: &mut Ctx) -> CaseResult {
    with_i2c(c, |i2c| {
        let (_, absent) = survey(i2c)?;
        let a = need_absent(absent)?;
        let data: Vec<u8> = (0..16).map(|i| 0x30 + i).collect();
        // Reserved padding set to a pattern too: nothing of the request is
        // the device's to change.
        let mut header = out_hdr(a, FLAGS_FAIL_NEXT);
        header[2..4].copy_from_slice(&[0x5a, 0xa5]);
        let reqs = vec![
            RawRequest {
                header: header.clone(),
                readable: vec![data.clone()],
                writable: vec![],
                status: true,
            },
            RawRequest::for_segment(&Segment::write(a, &[]), 0),
        ];
        let r = i2c.execute_raw(&reqs)?;
        ensure!(
            r[0].readable_after[0] == header,
            "the header changed: {:02x?} -> {:02x?}",
            header,
            r[0].readable_after[0]
        );
        ensure!(
            r[0].readable_after[1] == data,
            "the write buffer changed: {:02x?} -> {:02x?}",
            data,
            r[0].readable_after[1]
        );
        Ok(())
    })
}
