//! GET_CONFIG / SET_CONFIG and the generation profiles (§2, §3.5, §3.6, §9.8).
//!
//! The suite cannot know which config bytes of an arbitrary device are
//! writable, so writes only put back the bytes just read: they exercise the
//! response rules without changing the device's configuration.

use super::{Case, CaseError, CaseResult, Ctx, ensure};
use crate::wire::{Profile, Request, Response};

pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "config.get_echo_and_data",
            "§3.5, §9.8",
            "GET_CONFIG echoes offset/length and returns exactly length bytes",
            get_echo,
        ),
        Case::new(
            "config.get_past_size_dropped",
            "§3.5",
            "GET_CONFIG beyond config_size gets no response (dropped, device alive)",
            get_past_size,
        ),
        Case::new(
            "config.set_past_size_dropped",
            "§3.6",
            "SET_CONFIG beyond config_size gets no response and changes nothing",
            set_past_size,
        ),
        Case::new(
            "config.set_length_zero_noop",
            "§3.6",
            "SET_CONFIG with length 0 is a valid no-op answered with length 0",
            set_len_zero,
        ),
        Case::new(
            "config.set_all_or_nothing",
            "§3.6, §9.8",
            "SET_CONFIG answers length = request length (applied) or 0 (nothing applied)",
            set_all_or_nothing,
        ),
        Case::new(
            "config.generation_current_in_responses",
            "§2, §9.8",
            "SET_CONFIG/GET_CONFIG responses carry the current generation",
            generation_current,
        ),
        Case::new(
            "config.baseline_ignores_generation",
            "§2, §9.8",
            "baseline profile: the request generation is ignored, and a mismatch triggers no EVENT_CONFIG",
            baseline_ignores,
        )
        .only(
            &[Profile::V2, Profile::Rfc2],
            "v1 has no baseline profile: the device always checks the generation (§2)",
        ),
        Case::new(
            "config.strict_rejects_stale_generation",
            "§2, §7.1",
            "strict profile (and always on v1): a stale generation is rejected with length 0",
            strict_rejects,
        ),
    ]
}

fn chunk(c: &mut Ctx) -> u32 {
    (c.drv().max_msg_size() - c.hdr() - 12) as u32
}

/// Size of a GET_CONFIG/SET_CONFIG response carrying `data` bytes.
fn config_resp(c: &Ctx, data: u32) -> u32 {
    c.hdr() as u32 + 12 + data
}

/// Reads `[0, min(config_size, chunk))` in one message: (generation, bytes).
fn head(c: &mut Ctx) -> Result<(u32, Vec<u8>), CaseError> {
    let size = c.info()?.config_size;
    let n = size.min(chunk(c));
    let dev = c.dev_num;
    Ok(c.drv().get_config(dev, 0, n)?)
}

fn need_config(c: &mut Ctx) -> Result<u32, CaseError> {
    match c.info()?.config_size {
        0 => Err(CaseError::Skip("config_size is 0".into())),
        n => Ok(n),
    }
}

fn set_generation(c: &mut Ctx, current: u32) -> u32 {
    if c.drv().strict_config_generation() {
        current
    } else {
        0
    }
}

fn get_echo(c: &mut Ctx) -> CaseResult {
    let size = c.info()?.config_size;
    let ch = chunk(c);
    let mut off = 0;
    // length 0 at offset 0 is in range for any config_size.
    let (h, _) = c.exact(Request::GetConfig {
        offset: 0,
        length: 0,
    })?;
    let want = config_resp(c, 0);
    ensure!(
        u32::from(h.msg_size) == want,
        "GET_CONFIG(0, 0) response msg_size {} (expected {want})",
        h.msg_size
    );
    while off < size {
        let len = ch.min(size - off);
        let (h, r) = c.exact(Request::GetConfig {
            offset: off,
            length: len,
        })?;
        ensure!(
            u32::from(h.msg_size) == config_resp(c, len),
            "GET_CONFIG({off}, {len}) response msg_size {}",
            h.msg_size
        );
        ensure!(matches!(r, Response::Config { .. }), "unexpected {r:?}");
        off += len;
    }
    // A 1-byte read at the last byte is in range.
    if size > 0 {
        c.exact(Request::GetConfig {
            offset: size - 1,
            length: 1,
        })?;
    }
    Ok(())
}

fn get_past_size(c: &mut Ctx) -> CaseResult {
    let size = c.info()?.config_size;
    let dev = c.dev_num;
    let mut frames = Vec::new();
    for (offset, length) in [
        (size, 1),
        (0, size + 1),
        (size.saturating_sub(1), 2),
        (u32::MAX, 2),
    ] {
        let t = c.drv().alloc_token();
        let f = c
            .raw(&Request::GetConfig { offset, length }, dev, t)
            .build();
        frames.push((
            f,
            format!("GET_CONFIG(offset {offset}, length {length}) with config_size {size}"),
        ));
    }
    c.expect_all_dropped(&frames)
}

fn set_past_size(c: &mut Ctx) -> CaseResult {
    let size = c.info()?.config_size;
    let dev = c.dev_num;
    let before = head(c)?.1;
    let mut frames = Vec::new();
    for (offset, len) in [(size, 1usize), (size.saturating_sub(1), 2), (u32::MAX, 2)] {
        let t = c.drv().alloc_token();
        let data = vec![0xA5; len];
        let f = c
            .raw(
                &Request::SetConfig {
                    generation: 0,
                    offset,
                    data,
                },
                dev,
                t,
            )
            .build();
        frames.push((
            f,
            format!("SET_CONFIG(offset {offset}, length {len}) with config_size {size}"),
        ));
    }
    c.expect_all_dropped(&frames)?;
    let after = head(c)?.1;
    ensure!(
        after == before,
        "config changed by an out-of-range SET_CONFIG: {before:x?} -> {after:x?}"
    );
    Ok(())
}

fn set_len_zero(c: &mut Ctx) -> CaseResult {
    let (g0, before) = head(c)?;
    let generation = set_generation(c, g0);
    let (h, r) = c.exact(Request::SetConfig {
        generation,
        offset: 0,
        data: vec![],
    })?;
    let Response::SetConfig {
        length,
        data,
        generation: g1,
        ..
    } = r
    else {
        return Err(CaseError::Fail(format!("unexpected {r:?}")));
    };
    ensure!(
        length == 0 && data.is_empty(),
        "length-0 SET_CONFIG answered length {length} with {} data bytes",
        data.len()
    );
    let want = config_resp(c, 0);
    ensure!(
        u32::from(h.msg_size) == want,
        "response msg_size {} (expected {want})",
        h.msg_size
    );
    let (g2, after) = head(c)?;
    ensure!(after == before, "config changed by a length-0 SET_CONFIG");
    ensure!(
        g1 == g2,
        "SET_CONFIG response generation {g1} but GET_CONFIG then reads {g2}"
    );
    Ok(())
}

fn set_all_or_nothing(c: &mut Ctx) -> CaseResult {
    need_config(c)?;
    let (g0, before) = head(c)?;
    let generation = set_generation(c, g0);
    let req = Request::SetConfig {
        generation,
        offset: 0,
        data: before.clone(),
    };
    let (h, r) = c.exact(req)?;
    let Response::SetConfig { length, data, .. } = r else {
        return Err(CaseError::Fail(format!("unexpected {r:?}")));
    };
    // check_response already refused a partial non-zero length.
    let n = before.len() as u32;
    ensure!(
        length == 0 || length == n,
        "length {length} for a {n}-byte write"
    );
    let size = u32::from(h.msg_size);
    let empty = config_resp(c, 0);
    ensure!(
        size == empty || (length == n && size == empty + n),
        "msg_size {size}: neither {empty} nor {empty} + {n} with the data echo"
    );
    if !data.is_empty() {
        ensure!(
            data == before,
            "data echo {data:x?} differs from the written {before:x?}"
        );
    }
    let after = head(c)?.1;
    ensure!(
        after == before,
        "config reads {after:x?} after writing back {before:x?}"
    );
    Ok(())
}

fn generation_current(c: &mut Ctx) -> CaseResult {
    let (g0, before) = head(c)?;
    let generation = set_generation(c, g0);
    let dev = c.dev_num;
    let (g1, _) = c.drv().set_config(dev, generation, 0, &before)?;
    let (g2, _) = head(c)?;
    ensure!(
        g1 == g2,
        "SET_CONFIG response generation {g1}, next GET_CONFIG generation {g2}"
    );
    let (g3, _) = head(c)?;
    ensure!(
        g2 == g3,
        "two GET_CONFIG with nothing in between report generations {g2} and {g3}"
    );
    Ok(())
}

fn baseline_ignores(c: &mut Ctx) -> CaseResult {
    if c.drv().transport_features() & crate::wire::transport_feature::STRICT_CONFIG_GENERATION != 0
    {
        return Err(CaseError::Skip("bus selects the strict profile".into()));
    }
    need_config(c)?;
    c.drv().take_events();
    let (g0, before) = head(c)?;
    let dev = c.dev_num;
    let (_, l0) = c.drv().set_config(dev, 0, 0, &before)?;
    let stale = g0 ^ 0xA5A5_A5A5;
    let (_, l1) = c.drv().set_config(dev, stale, 0, &before)?;
    ensure!(
        l0 == l1,
        "generation 0 write answered length {l0}, mismatched generation {stale} answered {l1}"
    );
    let w = c.cfg.drop_window;
    c.drv().drain(w)?;
    let evs = c.take_config_events();
    ensure!(
        evs.is_empty(),
        "EVENT_CONFIG after writes that changed nothing: {evs:?}"
    );
    if l0 == 0 {
        return Err(CaseError::Skip(
            "device rejects writes at offset 0 regardless of generation".into(),
        ));
    }
    Ok(())
}

fn strict_rejects(c: &mut Ctx) -> CaseResult {
    if !c.drv().strict_config_generation() {
        return Err(CaseError::Skip(format!(
            "{} bus selects the baseline profile",
            c.profile()
        )));
    }
    need_config(c)?;
    let (g0, before) = head(c)?;
    let dev = c.dev_num;
    let (_, l) = c.drv().set_config(dev, g0.wrapping_add(1), 0, &before)?;
    ensure!(
        l == 0,
        "stale generation {} accepted (length {l}); current is {g0}",
        g0.wrapping_add(1)
    );
    let (g1, _) = head(c)?;
    let (_, l) = c.drv().set_config(dev, g1, 0, &before)?;
    if l == 0 {
        return Err(CaseError::Skip(
            "device rejects writes at offset 0 even with the current generation".into(),
        ));
    }
    Ok(())
}
