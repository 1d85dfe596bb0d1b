//! GET_VQUEUE / SET_VQUEUE / RESET_VQUEUE rules (§3.9–§3.11, §9.9).
//!
//! SET_VQUEUE has an empty response in every case, so each no-op is proven
//! by reading the queue back with GET_VQUEUE.

use super::{Case, CaseError, CaseResult, Ctx, Needs, ensure};
use crate::device::{FeatureSet, VirtioDevice};
use crate::rng::VIRTIO_ID_RNG;
use crate::virtq::Buffer;
use crate::wire::{Profile, Request, SetVqueue, VqueueInfo, feature, status, vq_flags};

/// Why the v2 SET_VQUEUE state-op cases do not apply elsewhere.
const NO_FLAGS: &str =
    "v1/RFC2 SET_VQUEUE has no flags word (state op, ignore bits, reserved rules)";

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "vq.get_consistent_and_idle",
            "§3.9, §5 step 8",
            "GET_VQUEUE of every queue is self-consistent and idle after reset",
            get_consistent,
        ),
        Case::new(
            "vq.get_out_of_range_sentinel",
            "§3.9, §9.9",
            "GET_VQUEUE(index ≥ max_virtqueues) returns the zero sentinel echoing index",
            get_sentinel,
        ),
        Case::new(
            "vq.set_enable_roundtrip",
            "§3.9, §3.10, §5 steps 9–10",
            "SET_VQUEUE(flags=1) is read back exactly by GET_VQUEUE with the enabled bit",
            set_roundtrip,
        ),
        Case::new(
            "vq.set_out_of_range_noop",
            "§3.10 rule 1, §9.9",
            "SET_VQUEUE(index ≥ max_virtqueues) is an answered no-op",
            set_out_of_range,
        ),
        Case::new(
            "vq.set_reserved_nonzero_noop",
            "§3.10 rule 2",
            "SET_VQUEUE with reserved ≠ 0 is an answered no-op",
            set_reserved,
        )
        .only(&[Profile::V2], NO_FLAGS),
        Case::new(
            "vq.set_flags_reserved_bits_noop",
            "§3.10 rule 2",
            "SET_VQUEUE with flags bits 31:6 set is an answered no-op",
            set_flags_reserved,
        )
        .only(&[Profile::V2], NO_FLAGS),
        Case::new(
            "vq.set_state_op_3_noop",
            "§3.10 rule 2",
            "SET_VQUEUE with state op 3 is an answered no-op",
            set_state_op3,
        )
        .only(&[Profile::V2], NO_FLAGS),
        Case::new(
            "vq.set_cannot_disable_enabled",
            "§3.10 rule 3",
            "SET_VQUEUE cannot disable an enabled queue",
            set_cannot_disable,
        )
        .only(&[Profile::V2], NO_FLAGS),
        Case::new(
            "vq.set_cannot_reconfigure_enabled",
            "§3.10 rule 4",
            "SET_VQUEUE cannot change size/addresses of an enabled queue",
            set_cannot_reconfigure,
        )
        .only(&[Profile::V2], NO_FLAGS),
        Case::new(
            "vq.set_load_disabled_then_enable",
            "§3.10 rule 5",
            "flags=0 loads fields and stays disabled; enable with all fields ignored keeps them",
            set_load_then_enable,
        )
        .only(&[Profile::V2], NO_FLAGS),
        Case::new(
            "vq.set_configures_and_enables",
            "§3.10, §7.1",
            "v1/RFC2: SET_VQUEUE (reserved word 0) configures the queue and makes it live: buffers are used after DRIVER_OK",
            set_enables_old,
        )
        .needs(Needs::DeviceId(VIRTIO_ID_RNG))
        .only(
            &[Profile::V1, Profile::Rfc2],
            "v2 enables only with state op 1 (covered by vq.set_enable_roundtrip)",
        ),
        Case::new(
            "vq.reset_out_of_range_noop",
            "§3.11",
            "RESET_VQUEUE(index ≥ max_virtqueues) is an answered no-op",
            reset_out_of_range,
        ),
        Case::new(
            "vq.reset_without_ring_reset_noop",
            "§3.11",
            "RESET_VQUEUE without VIRTIO_F_RING_RESET negotiated is an answered no-op",
            reset_without_feature,
        ),
        Case::new(
            "vq.reset_clears_queue",
            "§3.11, §9.9",
            "RESET_VQUEUE (RING_RESET negotiated) returns the queue to idle; it can be set up again",
            reset_clears,
        ),
    ]
}

/// Sends `s`, which must be a no-op: the queue still reads `before`.
fn expect_noop(c: &mut Ctx, s: SetVqueue, before: VqueueInfo, what: &str) -> CaseResult {
    c.set_vq(s)?;
    let after = c.vq(before.index)?;
    ensure!(
        after == before,
        "{what} changed queue {}: {before:?} -> {after:?}",
        before.index
    );
    Ok(())
}

/// FEATURES_OK, then the first available queue (index, max, idle state).
fn setup(c: &mut Ctx, extra: &[u32]) -> Result<(u32, u32, VqueueInfo), CaseError> {
    c.to_features_ok(extra)?;
    let (q, max) = c.first_queue()?;
    let before = c.vq(q)?;
    ensure!(
        before.is_idle(),
        "queue {q} not idle after reset: {before:?}"
    );
    Ok((q, max, before))
}

fn get_consistent(c: &mut Ctx) -> CaseResult {
    c.reset()?;
    let n = c.info()?.max_virtqueues.min(1024);
    for i in 0..n {
        let q = c.vq(i)?;
        ensure!(q.is_idle(), "queue {i} not idle after reset: {q:?}");
    }
    Ok(())
}

fn get_sentinel(c: &mut Ctx) -> CaseResult {
    let m = c.info()?.max_virtqueues;
    let dev = c.dev_num;
    for i in [
        m,
        m.saturating_add(1),
        m.saturating_add(1000),
        0x7FFF_FFFF,
        u32::MAX,
    ] {
        if i < m {
            continue;
        }
        let (h, _) = c.exact(Request::GetVqueue { index: i })?;
        let want = c.hdr() + c.profile().vqueue_size();
        ensure!(
            usize::from(h.msg_size) == want,
            "GET_VQUEUE({i}) response msg_size {} (expected {want})",
            h.msg_size
        );
        let q = c.drv().get_vqueue(dev, i)?;
        ensure!(
            q == VqueueInfo::sentinel(i),
            "GET_VQUEUE({i}) with max_virtqueues {m} is not the zero sentinel: {q:?}"
        );
    }
    Ok(())
}

fn set_roundtrip(c: &mut Ctx) -> CaseResult {
    let (q, max, _) = setup(c, &[])?;
    c.enable_queue(q, max)?;
    Ok(())
}

fn set_out_of_range(c: &mut Ctx) -> CaseResult {
    let (q, max, before) = setup(c, &[])?;
    let m = c.info()?.max_virtqueues;
    let flags = c.enable_flags();
    let mut s = c.rings(m, Ctx::small_size(max), flags)?;
    c.set_vq(s)?;
    let got = c.vq(m)?;
    ensure!(
        got == VqueueInfo::sentinel(m),
        "GET_VQUEUE({m}) after SET_VQUEUE({m}): {got:?}"
    );
    s.index = u32::MAX;
    c.set_vq(s)?;
    let after = c.vq(q)?;
    ensure!(
        after == before,
        "queue {q} changed by SET_VQUEUE of an out-of-range index: {after:?}"
    );
    Ok(())
}

fn set_reserved(c: &mut Ctx) -> CaseResult {
    let (q, max, before) = setup(c, &[])?;
    for reserved in [1u32, 0x8000_0000] {
        let mut s = c.rings(q, Ctx::small_size(max), vq_flags::STATE_ENABLE)?;
        s.reserved = reserved;
        expect_noop(
            c,
            s,
            before,
            &format!("SET_VQUEUE with reserved {reserved:#x}"),
        )?;
    }
    Ok(())
}

fn set_flags_reserved(c: &mut Ctx) -> CaseResult {
    let (q, max, before) = setup(c, &[])?;
    for bit in [6u32, 7, 31] {
        let s = c.rings(q, Ctx::small_size(max), vq_flags::STATE_ENABLE | (1 << bit))?;
        expect_noop(c, s, before, &format!("SET_VQUEUE with flags bit {bit}"))?;
    }
    Ok(())
}

fn set_state_op3(c: &mut Ctx) -> CaseResult {
    let (q, max, before) = setup(c, &[])?;
    let s = c.rings(q, Ctx::small_size(max), vq_flags::STATE_RESERVED)?;
    expect_noop(c, s, before, "SET_VQUEUE with state op 3")
}

fn set_cannot_disable(c: &mut Ctx) -> CaseResult {
    let (q, max, _) = setup(c, &[])?;
    let s = c.enable_queue(q, max)?;
    let enabled = c.expected_after_set(max, &s, true);
    let keep = SetVqueue {
        flags: vq_flags::STATE_KEEP_DISABLED | vq_flags::ALL_IGNORE,
        ..s
    };
    expect_noop(
        c,
        keep,
        enabled,
        "SET_VQUEUE(state 0, all ignored) on an enabled queue",
    )?;
    let full = SetVqueue {
        flags: vq_flags::STATE_KEEP_DISABLED,
        ..s
    };
    expect_noop(
        c,
        full,
        enabled,
        "SET_VQUEUE(state 0, same fields) on an enabled queue",
    )
}

fn set_cannot_reconfigure(c: &mut Ctx) -> CaseResult {
    let (q, max, _) = setup(c, &[])?;
    let s = c.enable_queue(q, max)?;
    let enabled = c.expected_after_set(max, &s, true);
    let other = c.rings(q, s.size, 0)?;
    let variants = [
        (
            "new size, state keep",
            SetVqueue {
                flags: vq_flags::STATE_KEEP | vq_flags::ALL_IGNORE & !vq_flags::SIZE_IGNORE,
                size: (s.size / 2).max(1),
                ..s
            },
        ),
        (
            "new desc addr, state keep",
            SetVqueue {
                flags: vq_flags::STATE_KEEP | vq_flags::ALL_IGNORE & !vq_flags::DESC_ADDR_IGNORE,
                desc_addr: other.desc_addr,
                ..s
            },
        ),
        (
            "new driver addr, state keep",
            SetVqueue {
                flags: vq_flags::STATE_KEEP | vq_flags::ALL_IGNORE & !vq_flags::DRIVER_ADDR_IGNORE,
                driver_addr: other.driver_addr,
                ..s
            },
        ),
        (
            "new device addr, state keep",
            SetVqueue {
                flags: vq_flags::STATE_KEEP | vq_flags::ALL_IGNORE & !vq_flags::DEVICE_ADDR_IGNORE,
                device_addr: other.device_addr,
                ..s
            },
        ),
        (
            "all new addresses, state enable",
            SetVqueue {
                flags: vq_flags::STATE_ENABLE,
                ..other
            },
        ),
    ];
    for (what, v) in variants {
        if v == s && what.starts_with("new size") {
            continue;
        }
        expect_noop(
            c,
            v,
            enabled,
            &format!("SET_VQUEUE ({what}) on an enabled queue"),
        )?;
    }
    Ok(())
}

fn set_load_then_enable(c: &mut Ctx) -> CaseResult {
    let (q, max, _) = setup(c, &[])?;
    let s = c.rings(q, Ctx::small_size(max), vq_flags::STATE_KEEP_DISABLED)?;
    c.set_vq(s)?;
    let loaded = c.vq(q)?;
    let want = c.expected_after_set(max, &s, false);
    ensure!(
        loaded == want,
        "SET_VQUEUE(flags=0) on a disabled queue: GET reads {loaded:?}, expected {want:?}"
    );
    let en = SetVqueue {
        flags: vq_flags::STATE_ENABLE | vq_flags::ALL_IGNORE,
        size: 0,
        desc_addr: 0,
        driver_addr: 0,
        device_addr: 0,
        ..s
    };
    c.set_vq(en)?;
    let got = c.vq(q)?;
    let want = c.expected_after_set(max, &s, true);
    ensure!(
        got == want,
        "enable with every field ignored: GET reads {got:?}, expected {want:?}"
    );
    Ok(())
}

fn reset_out_of_range(c: &mut Ctx) -> CaseResult {
    let (q, max, _) = setup(c, &[feature::RING_RESET])?;
    let s = c.enable_queue(q, max)?;
    let enabled = c.expected_after_set(max, &s, true);
    let m = c.info()?.max_virtqueues;
    for i in [m, u32::MAX] {
        let (h, _) = c.exact(Request::ResetVqueue { index: i })?;
        ensure!(
            usize::from(h.msg_size) == c.hdr(),
            "RESET_VQUEUE({i}) response msg_size {}",
            h.msg_size
        );
    }
    let after = c.vq(q)?;
    ensure!(
        after == enabled,
        "queue {q} changed by RESET_VQUEUE of an out-of-range index: {after:?}"
    );
    Ok(())
}

fn reset_without_feature(c: &mut Ctx) -> CaseResult {
    c.to_driver()?;
    let offered = c.offered()?;
    let mandatory = c.mandatory_features()?;
    let mut sel = VirtioDevice::choose_features(&offered, &FeatureSet::from_bits(&mandatory));
    sel.remove(feature::RING_RESET);
    c.write_features(&sel)?;
    let st = c.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
    ensure!(
        st & status::FEATURES_OK != 0,
        "FEATURES_OK refused for {sel:?}"
    );
    let (q, max) = c.first_queue()?;
    let s = c.enable_queue(q, max)?;
    let (h, _) = c.exact(Request::ResetVqueue { index: q })?;
    ensure!(
        usize::from(h.msg_size) == c.hdr(),
        "RESET_VQUEUE response msg_size {}",
        h.msg_size
    );
    let after = c.vq(q)?;
    let want = c.expected_after_set(max, &s, true);
    ensure!(
        after == want,
        "RESET_VQUEUE without RING_RESET changed queue {q}: {after:?}"
    );
    Ok(())
}

fn reset_clears(c: &mut Ctx) -> CaseResult {
    c.to_driver()?;
    if !c.offered()?.contains(feature::RING_RESET) {
        return Err(CaseError::Skip(
            "device does not offer VIRTIO_F_RING_RESET".into(),
        ));
    }
    let (q, max, _) = setup(c, &[feature::RING_RESET])?;
    c.enable_queue(q, max)?;
    let (h, _) = c.exact(Request::ResetVqueue { index: q })?;
    ensure!(
        usize::from(h.msg_size) == c.hdr(),
        "RESET_VQUEUE response msg_size {}",
        h.msg_size
    );
    let after = c.vq(q)?;
    ensure!(
        after
            == VqueueInfo {
                max_size: max,
                ..VqueueInfo::sentinel(q)
            },
        "queue {q} after RESET_VQUEUE: {after:?}"
    );
    c.enable_queue(q, max)?;
    Ok(())
}

fn set_enables_old(c: &mut Ctx) -> CaseResult {
    // VirtioDevice::setup_queue sends one SET_VQUEUE with the reserved word
    // 0 on these profiles and requires GET_VQUEUE to read it back.
    let drv = c.take_driver();
    let mut dev = VirtioDevice::initialize(drv, c.dev_num, &FeatureSet::new())?;
    let mut q = dev.setup_queue(0, 8)?;
    dev.driver_ok()?;
    let buf = dev.allocator().alloc(4096, 1)?;
    q.add(&[Buffer {
        addr: buf,
        len: 16,
        writable: true,
    }])?;
    dev.notify(&q)?;
    let t = dev.driver().timeout();
    let used = dev.wait_used(&mut q, t);
    c.put_driver(dev.into_driver());
    used.map_err(|e| {
        CaseError::Fail(format!(
            "no used buffer after SET_VQUEUE, DRIVER_OK and EVENT_AVAIL (the queue did not go live): {e}"
        ))
    })?;
    Ok(())
}
