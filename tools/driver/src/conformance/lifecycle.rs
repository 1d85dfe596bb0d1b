//! GET_DEVICE_INFO, reset, status and feature negotiation (§3.2–§3.4, §3.7,
//! §3.8, §5, §9.5–§9.7).

use super::{Case, CaseError, CaseResult, Ctx, ensure};
use crate::device::{FeatureSet, check_info};
use crate::wire::{Profile, Request, Response, feature, status};

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "info.first_message",
            "§3.2, §9.5",
            "GET_DEVICE_INFO is answered before any reset (early discovery exception)",
            info_first,
        ),
        Case::new(
            "info.consistent_in_every_state",
            "§3.2, §9.5",
            "GET_DEVICE_INFO is answered with the same values in every status",
            info_every_state,
        ),
        Case::new(
            "info.fields_valid",
            "§3.2",
            "device_id ≠ 0, admin queue and max_virtqueues bounds, feature blocks cover every offered bit",
            info_fields,
        ),
        Case::new(
            "reset.completes",
            "§3.8, §9.6",
            "writing status 0 reports 0 at once or after bounded polling",
            reset_completes,
        ),
        Case::new(
            "reset.synchronous",
            "§3.8, §7.1",
            "v1/RFC2: SET_DEVICE_STATUS(0) answers 0, the reset done before the response",
            reset_synchronous,
        )
        .only(
            &[Profile::V1, Profile::Rfc2],
            "v2 lets a reset finish after the response (status polled until 0)",
        ),
        Case::new(
            "info.rfc2_64_feature_bits",
            "interop §3.2, §7.2",
            "RFC2: num_feature_bits is exactly 64 (the Linux RFC transport refuses anything else)",
            rfc2_64_bits,
        )
        .only(
            &[Profile::Rfc2],
            "only the Linux RFC kernels (RFC2) require exactly 64 bits",
        ),
        Case::new(
            "reset.clears_status_and_queues",
            "§5 step 2, §9.6",
            "reset returns status to 0 and every queue to idle",
            reset_clears,
        ),
        Case::new(
            "reset.clears_driver_features",
            "§5 step 2, §9.6",
            "reset forgets the driver-selected features",
            reset_clears_features,
        ),
        Case::new(
            "status.set_returns_status",
            "§3.7, §3.8",
            "SET_DEVICE_STATUS returns the stored status; GET_DEVICE_STATUS agrees",
            status_set_get,
        ),
        Case::new(
            "status.no_event_config_on_driver_write",
            "§3.8, §3.13, §9.11",
            "driver status writes do not cause EVENT_CONFIG",
            no_event_config_on_status,
        ),
        Case::new(
            "features.get_echo_and_range",
            "§3.3",
            "GET_DEVICE_FEATURES echoes block_index/num_blocks; blocks past the offered ones are 0",
            features_echo,
        ),
        Case::new(
            "features.version_1_offered",
            "§5 step 4",
            "VIRTIO_F_VERSION_1 (bit 32) is offered",
            version_1_offered,
        ),
        Case::new(
            "features.notif_config_data_not_offered",
            "§3.4, §9.7",
            "VIRTIO_F_NOTIF_CONFIG_DATA (bit 39) is never offered",
            no_notif_config_data,
        ),
        Case::new(
            "features.get_reports_offered_not_selected",
            "§3.3, §3.4, §9.7",
            "GET_DEVICE_FEATURES keeps reporting the offered set after SET_DRIVER_FEATURES",
            offered_not_selected,
        ),
        Case::new(
            "features.set_updates_only_addressed_blocks",
            "§3.4, §9.7",
            "SET_DRIVER_FEATURES updates only the blocks it addresses",
            set_only_addressed,
        ),
        Case::new(
            "features.ok_refused_for_unoffered_bit",
            "§3.8, §9.7",
            "FEATURES_OK is cleared when the driver set holds a bit the device did not offer",
            ok_refused_unoffered,
        ),
        Case::new(
            "features.ok_accepted_for_valid_subset",
            "§3.8, §5 step 6",
            "FEATURES_OK sticks for {VERSION_1} and for the driver's usual subset",
            ok_accepted,
        ),
    ]
}

fn info_first(c: &mut Ctx) -> CaseResult {
    let (h, r) = c.exact(Request::GetDeviceInfo)?;
    let want = c.hdr() + c.profile().device_info_size();
    ensure!(
        usize::from(h.msg_size) == want,
        "GET_DEVICE_INFO response msg_size {} ({}: {want})",
        h.msg_size,
        c.profile()
    );
    let Response::DeviceInfo(i) = r else {
        return Err(CaseError::Fail(format!("unexpected {r:?}")));
    };
    ensure!(i.device_id != 0, "device_id 0 (no device)");
    Ok(())
}

fn info_every_state(c: &mut Ctx) -> CaseResult {
    let dev = c.dev_num;
    let first = c.drv().get_device_info(dev)?;
    let check = |c: &mut Ctx, when: &str| -> CaseResult {
        let i = c.drv().get_device_info(dev)?;
        ensure!(
            i == first,
            "GET_DEVICE_INFO {when} differs: {i:?} vs {first:?}"
        );
        Ok(())
    };
    c.reset()?;
    check(c, "after reset")?;
    c.set_status_exact(status::ACKNOWLEDGE)?;
    check(c, "in ACKNOWLEDGE")?;
    c.set_status_exact(status::ACKNOWLEDGE | status::DRIVER)?;
    check(c, "in DRIVER")?;
    c.to_features_ok(&[])?;
    check(c, "in FEATURES_OK")?;
    if let Ok((q, max)) = c.first_queue() {
        c.enable_queue(q, max)?;
        check(c, "with a queue enabled")?;
    }
    let st = c.status()?;
    c.set_status_exact(st | status::DRIVER_OK)?;
    check(c, "in DRIVER_OK")?;
    c.set_status(st | status::DRIVER_OK | status::FAILED)?;
    check(c, "after FAILED")?;
    c.reset()?;
    check(c, "after a second reset")
}

fn info_fields(c: &mut Ctx) -> CaseResult {
    let i = c.info()?;
    ensure!(i.device_id != 0, "device_id 0");
    check_info(&i).map_err(CaseError::Fail)?;
    let offered = c.offered()?;
    ensure!(
        offered.contains(feature::VERSION_1) || i.num_feature_blocks >= 2,
        "num_feature_blocks {} cannot cover VERSION_1",
        i.num_feature_blocks
    );
    let dev = c.dev_num;
    let beyond = c.drv().get_device_features(dev, i.num_feature_blocks, 1)?;
    ensure!(
        beyond == [0],
        "block {} (past num_feature_blocks) offers {beyond:x?}",
        i.num_feature_blocks
    );
    Ok(())
}

fn reset_completes(c: &mut Ctx) -> CaseResult {
    c.to_driver()?;
    let st = c.set_status(0)?;
    if st != 0 {
        log::info!("reset pending after SET_DEVICE_STATUS(0): status {st:#x}; polling");
    }
    // Ctx::reset polls GET_DEVICE_STATUS until 0 within the bound.
    c.reset()?;
    let st = c.status()?;
    ensure!(st == 0, "status {st:#x} after reset completed");
    Ok(())
}

fn reset_synchronous(c: &mut Ctx) -> CaseResult {
    for _ in 0..2 {
        c.to_features_ok(&[])?;
        if let Ok((q, max)) = c.first_queue() {
            c.enable_queue(q, max)?;
        }
        let st = c.status()?;
        c.set_status_exact(st | status::DRIVER_OK)?;
        let r = c.set_status(0)?;
        ensure!(r == 0, "SET_DEVICE_STATUS(0) answered {r:#x}, not 0");
        let g = c.status()?;
        ensure!(
            g == 0,
            "GET_DEVICE_STATUS right after the reset reads {g:#x}"
        );
    }
    Ok(())
}

fn rfc2_64_bits(c: &mut Ctx) -> CaseResult {
    // The decoder already refused a bit count that is not a multiple of 32.
    let n = c.info()?.num_feature_blocks;
    ensure!(
        n == 2,
        "num_feature_bits {} (the Linux RFC transport needs exactly 64)",
        u64::from(n) * 32
    );
    Ok(())
}

fn reset_clears(c: &mut Ctx) -> CaseResult {
    c.to_features_ok(&[])?;
    let (q, max) = c.first_queue()?;
    c.enable_queue(q, max)?;
    let st = c.status()?;
    c.set_status_exact(st | status::DRIVER_OK)?;
    c.reset()?;
    let st = c.status()?;
    ensure!(st == 0, "status {st:#x} after reset");
    let n = c.info()?.max_virtqueues.min(256);
    for i in 0..n {
        let v = c.vq(i)?;
        ensure!(v.is_idle(), "queue {i} not idle after reset: {v:?}");
    }
    Ok(())
}

/// An offered-set bit in `block` that is NOT offered, preferring device-specific bits.
fn unoffered_bit(offered: &FeatureSet, candidates: impl IntoIterator<Item = u32>) -> Option<u32> {
    candidates.into_iter().find(|&b| !offered.contains(b))
}

fn reset_clears_features(c: &mut Ctx) -> CaseResult {
    if !c.mandatory_features()?.is_empty() {
        // The observation below leaves block 0 unwritten after the reset,
        // which such a device must refuse whatever it remembers.
        return Err(CaseError::Skip(
            "the device type has mandatory feature bits (a block 0 left unwritten is refused anyway)"
                .into(),
        ));
    }
    c.to_driver()?;
    let offered = c.offered()?;
    let Some(bad) = unoffered_bit(&offered, 0..24) else {
        return Err(CaseError::Skip(
            "every device-specific bit of block 0 is offered".into(),
        ));
    };
    // Prove the device refuses the bad bit at all, so that acceptance later means "forgotten".
    let mut sel = FeatureSet::from_bits(&[feature::VERSION_1]);
    sel.insert(bad);
    c.write_features(&sel)?;
    let st = c.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    if st & status::FEATURES_OK != 0 {
        return Err(CaseError::Skip(format!(
            "device accepted unoffered bit {bad} (see features.ok_refused_for_unoffered_bit); cannot observe"
        )));
    }
    c.to_driver()?;
    // Write block 1 only: block 0 must read as 0 after the reset.
    let dev = c.dev_num;
    c.drv()
        .set_driver_features(dev, 1, &[1 << (feature::VERSION_1 - 32)])?;
    let st = c.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    ensure!(
        st & status::FEATURES_OK != 0,
        "FEATURES_OK refused after reset with only VERSION_1 written: bit {bad} seems to survive the reset (status {st:#x})"
    );
    Ok(())
}

fn status_set_get(c: &mut Ctx) -> CaseResult {
    c.reset()?;
    for s in [status::ACKNOWLEDGE, status::ACKNOWLEDGE | status::DRIVER] {
        let r = c.set_status(s)?;
        ensure!(r == s, "SET_DEVICE_STATUS({s:#x}) returned {r:#x}");
        let g = c.status()?;
        ensure!(
            g == s,
            "GET_DEVICE_STATUS reads {g:#x} after setting {s:#x}"
        );
    }
    Ok(())
}

fn no_event_config_on_status(c: &mut Ctx) -> CaseResult {
    c.drv().take_events();
    c.to_features_ok(&[])?;
    if let Ok((q, max)) = c.first_queue() {
        c.enable_queue(q, max)?;
    }
    let st = c.status()?;
    c.set_status_exact(st | status::DRIVER_OK)?;
    c.reset()?;
    let w = c.cfg.drop_window;
    c.drv().drain(w)?;
    let evs = c.take_config_events();
    ensure!(
        evs.is_empty(),
        "EVENT_CONFIG after driver status writes: {evs:?}"
    );
    Ok(())
}

fn features_echo(c: &mut Ctx) -> CaseResult {
    let n = c.info()?.num_feature_blocks;
    let dev = c.dev_num;
    let all = c.offered()?;
    // check_response verifies the echoes and the word count.
    for b in 0..n.min(4) {
        let one = c.drv().get_device_features(dev, b, 1)?;
        ensure!(
            one[0] == all.blocks(n as usize)[b as usize],
            "block {b} alone reads {:#x}, in bulk {:#x}",
            one[0],
            all.blocks(n as usize)[b as usize]
        );
    }
    let past = c.drv().get_device_features(dev, n, 2)?;
    ensure!(
        past == [0, 0],
        "blocks {n}..{} past num_feature_blocks read {past:x?}",
        n + 2
    );
    Ok(())
}

fn version_1_offered(c: &mut Ctx) -> CaseResult {
    let f = c.offered()?;
    ensure!(
        f.contains(feature::VERSION_1),
        "VERSION_1 not offered: {f:?}"
    );
    Ok(())
}

fn no_notif_config_data(c: &mut Ctx) -> CaseResult {
    let f = c.offered()?;
    ensure!(
        !f.contains(feature::NOTIF_CONFIG_DATA),
        "NOTIF_CONFIG_DATA offered: {f:?}"
    );
    Ok(())
}

fn offered_not_selected(c: &mut Ctx) -> CaseResult {
    c.to_driver()?;
    let before = c.offered()?;
    c.write_features(&FeatureSet::from_bits(&[feature::VERSION_1]))?;
    let after_set = c.offered()?;
    ensure!(
        after_set == before,
        "GET_DEVICE_FEATURES changed after SET_DRIVER_FEATURES: {before:?} -> {after_set:?}"
    );
    c.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    let after_ok = c.offered()?;
    ensure!(
        after_ok == before,
        "GET_DEVICE_FEATURES changed after FEATURES_OK: {before:?} -> {after_ok:?}"
    );
    Ok(())
}

fn set_only_addressed(c: &mut Ctx) -> CaseResult {
    c.to_driver()?;
    let offered = c.offered()?;
    let Some(bad) = unoffered_bit(
        &offered,
        [feature::NOTIF_CONFIG_DATA].into_iter().chain(33..64),
    ) else {
        return Err(CaseError::Skip("every bit of block 1 is offered".into()));
    };
    let dev = c.dev_num;
    let mut b1 = FeatureSet::from_bits(&[feature::VERSION_1, bad]).blocks(2)[1];
    b1 |= offered.blocks(2)[1] & (1 << (feature::VERSION_1 - 32));
    c.drv().set_driver_features(dev, 1, &[b1])?;
    // A device that replaced its whole driver set here would lose `bad` and accept.
    c.drv().set_driver_features(dev, 0, &[0])?;
    let st = c.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    ensure!(
        st & status::FEATURES_OK == 0,
        "FEATURES_OK accepted although block 1 still selects unoffered bit {bad}: the block-0 write clobbered block 1 (or unoffered bits are accepted)"
    );
    Ok(())
}

fn ok_refused_unoffered(c: &mut Ctx) -> CaseResult {
    c.to_driver()?;
    let offered = c.offered()?;
    let Some(bad) = unoffered_bit(&offered, (0..24).chain([feature::NOTIF_CONFIG_DATA])) else {
        return Err(CaseError::Skip("no unoffered bit found".into()));
    };
    let mut sel = crate::device::VirtioDevice::choose_features(&offered, &FeatureSet::new());
    sel.insert(bad);
    c.write_features(&sel)?;
    let st = c.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    ensure!(
        st & status::FEATURES_OK == 0,
        "SET_DEVICE_STATUS kept FEATURES_OK with unoffered bit {bad} selected (status {st:#x})"
    );
    let g = c.status()?;
    ensure!(
        g & status::FEATURES_OK == 0,
        "GET_DEVICE_STATUS shows FEATURES_OK with unoffered bit {bad} selected (status {g:#x})"
    );
    Ok(())
}

fn ok_accepted(c: &mut Ctx) -> CaseResult {
    for extra in [&[][..], &[feature::RING_RESET, feature::EVENT_IDX][..]] {
        c.to_driver()?;
        let offered = c.offered()?;
        let mandatory = c.mandatory_features()?;
        let sel = if extra.is_empty() {
            let mut bits = vec![feature::VERSION_1];
            bits.extend(mandatory.iter().filter(|&&b| offered.contains(b)));
            FeatureSet::from_bits(&bits)
        } else {
            let mut wanted = extra.to_vec();
            wanted.extend(mandatory);
            crate::device::VirtioDevice::choose_features(&offered, &FeatureSet::from_bits(&wanted))
        };
        c.write_features(&sel)?;
        let st = c.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
        ensure!(
            st & status::FEATURES_OK != 0,
            "FEATURES_OK refused for valid subset {sel:?} (status {st:#x})"
        );
        let g = c.status()?;
        ensure!(
            g & status::FEATURES_OK != 0,
            "FEATURES_OK did not stick for {sel:?} (GET_DEVICE_STATUS {g:#x})"
        );
    }
    Ok(())
}
