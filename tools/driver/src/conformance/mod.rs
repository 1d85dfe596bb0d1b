//! Conformance suite: named cases, each checking one normative device rule of
//! spec v2 against any device reachable over a [`DriverBus`].
//!
//! Every case runs on a fresh connection (`make_bus`) and gets a [`Ctx`]; it
//! returns `Ok(())` (pass), [`CaseError::Skip`] (not applicable, with the
//! reason) or any other error (fail, with the reason). A dropped frame is
//! proven by "no response within the drop window, then a valid answer to a
//! following GET_DEVICE_STATUS" (dropped, not crashed).
//!
//! The suite runs under one wire [`Profile`] ([`SuiteConfig::profile`]).
//! Frame sizes and layouts follow the profile; cases of rules that exist
//! only in spec v2 are skipped under v1/RFC2 with the reason
//! ([`Case::only`]), and cases of the older profiles' own rules (synchronous
//! reset, SET_VQUEUE enabling, 8-aligned v1 GET_DEVICES, the Linux RFC's 64
//! feature bits) run only there.

mod blk;
mod bus;
mod config;
mod framing;
mod i2c;
mod lifecycle;
mod queues;
mod runtime;

use std::fmt;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;

use crate::blk::BlkError;
use crate::bus::DriverBus;
use crate::device::{FeatureSet, InitError, VirtioDevice};
use crate::driver::{Driver, DriverError, Received};
use crate::i2c::I2cError;
use crate::mem::{AllocError, GuestAllocator};
use crate::rng::RngError;
use crate::virtq::{QueueLayout, VirtqError};
use crate::wire::{
    self, DeviceInfo, Event, Header, Profile, RawFrame, Request, Response, SetVqueue, VqueueInfo,
    status, vq_flags,
};

/// Why a case did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The device broke the rule.
    #[error("{0}")]
    Fail(String),
    /// The case does not apply to this device or bus.
    #[error("{0}")]
    Skip(String),
    /// The transport failed (timeouts included).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Device control failed.
    #[error(transparent)]
    Init(#[from] InitError),
    /// The rng frontend failed.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// The blk frontend failed.
    #[error(transparent)]
    Blk(#[from] BlkError),
    /// The i2c frontend failed.
    #[error(transparent)]
    I2c(#[from] I2cError),
    /// A virtqueue operation failed.
    #[error(transparent)]
    Virtq(#[from] VirtqError),
    /// Guest memory allocation failed.
    #[error(transparent)]
    Alloc(#[from] AllocError),
}

/// Result of a case body.
pub type CaseResult = Result<(), CaseError>;

/// Fails the case with a formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::conformance::CaseError::Fail(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

/// Outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The device follows the rule.
    Pass,
    /// The device broke the rule (reason).
    Fail(String),
    /// Not applicable (reason).
    Skip(String),
}

/// What a case requires of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Any device.
    Any,
    /// A device of this virtio device id (from GET_DEVICE_INFO).
    DeviceId(u32),
}

/// Body of a case.
pub type CaseFn = Box<dyn Fn(&mut Ctx) -> CaseResult + Send + Sync>;

/// A named conformance case.
pub struct Case {
    /// Unique dotted name (`group.rule`).
    pub name: String,
    /// Spec reference (section or §9 checklist item).
    pub spec: &'static str,
    /// The rule checked, in one line.
    pub rule: &'static str,
    /// Device requirement.
    pub needs: Needs,
    /// Wire profiles the rule exists in.
    pub profiles: &'static [Profile],
    /// Why the rule does not exist in the other profiles.
    pub profile_note: &'static str,
    run: CaseFn,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("spec", &self.spec)
            .finish()
    }
}

impl Case {
    /// A case for any device.
    pub fn new(
        name: impl Into<String>,
        spec: &'static str,
        rule: &'static str,
        run: impl Fn(&mut Ctx) -> CaseResult + Send + Sync + 'static,
    ) -> Self {
        Case {
            name: name.into(),
            spec,
            rule,
            needs: Needs::Any,
            profiles: &Profile::ALL,
            profile_note: "",
            run: Box::new(run),
        }
    }

    /// Restricts the case to the wire profiles whose rule it checks; under
    /// the others it is skipped with `why`.
    pub fn only(mut self, profiles: &'static [Profile], why: &'static str) -> Self {
        self.profiles = profiles;
        self.profile_note = why;
        self
    }

    /// Restricts the case to a device type.
    pub fn needs(mut self, needs: Needs) -> Self {
        self.needs = needs;
        self
    }
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// Case name.
    pub name: String,
    /// Spec reference.
    pub spec: &'static str,
    /// Outcome.
    pub outcome: Outcome,
    /// Wall time.
    pub duration: Duration,
}

/// Results of a suite run. `Display` ends with `N passed, M failed` (plus
/// `, K skipped` when K > 0).
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One entry per case run, in order.
    pub results: Vec<CaseReport>,
}

impl Report {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }
    /// Cases passed.
    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Pass)
    }
    /// Cases failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Fail(_)))
    }
    /// Cases skipped.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skip(_)))
    }
    /// True if nothing failed.
    pub fn success(&self) -> bool {
        self.failed() == 0
    }
    /// The result of the named case.
    pub fn get(&self, name: &str) -> Option<&CaseReport> {
        self.results.iter().find(|r| r.name == name)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            match &r.outcome {
                Outcome::Pass => writeln!(f, "PASS {} [{}]", r.name, r.spec)?,
                Outcome::Fail(why) => writeln!(f, "FAIL {} [{}]: {}", r.name, r.spec, why)?,
                Outcome::Skip(why) => writeln!(f, "SKIP {} [{}]: {}", r.name, r.spec, why)?,
            }
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())?;
        if self.skipped() > 0 {
            write!(f, ", {} skipped", self.skipped())?;
        }
        writeln!(f)
    }
}

/// Suite tunables.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Wire profile of the bus under test; the bus must report the same
    /// ([`DriverBus::profile`]).
    pub profile: Profile,
    /// Comma-separated name substrings; empty runs every case.
    pub filter: String,
    /// Bound on each expected response.
    pub timeout: Duration,
    /// Silence that proves a frame was dropped.
    pub drop_window: Duration,
    /// Bound for a reset to report status 0.
    pub reset_timeout: Duration,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            profile: Profile::V2,
            filter: String::new(),
            timeout: Duration::from_secs(1),
            drop_window: Duration::from_millis(100),
            reset_timeout: Duration::from_secs(2),
        }
    }
}

impl SuiteConfig {
    fn selects(&self, name: &str) -> bool {
        let pats: Vec<&str> = self
            .filter
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        pats.is_empty() || pats.iter().any(|p| name.contains(p))
    }
}

/// Every case, in run order.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(framing::cases());
    v.extend(lifecycle::cases());
    v.extend(config::cases());
    v.extend(queues::cases());
    v.extend(runtime::cases());
    v.extend(blk::cases());
    v.extend(i2c::cases());
    v.extend(bus::cases());
    v
}

/// Runs the cases whose names match `filter` (comma-separated substrings,
/// empty = all) against `dev_num`, with a fresh bus per case and default tunables.
pub fn run_suite<E: fmt::Display>(
    make_bus: &mut dyn FnMut() -> Result<Box<dyn DriverBus>, E>,
    dev_num: u16,
    filter: &str,
) -> Report {
    run_suite_with(
        make_bus,
        dev_num,
        &SuiteConfig {
            filter: filter.to_string(),
            ..Default::default()
        },
    )
}

/// [`run_suite`] with explicit tunables.
pub fn run_suite_with<E: fmt::Display>(
    make_bus: &mut dyn FnMut() -> Result<Box<dyn DriverBus>, E>,
    dev_num: u16,
    cfg: &SuiteConfig,
) -> Report {
    let mut report = Report::default();
    for case in cases().into_iter().filter(|c| cfg.selects(&c.name)) {
        let t0 = Instant::now();
        let outcome = run_case(&case, make_bus, dev_num, cfg);
        log::info!("{}: {:?}", case.name, outcome);
        report.results.push(CaseReport {
            name: case.name,
            spec: case.spec,
            outcome,
            duration: t0.elapsed(),
        });
    }
    report
}

fn run_case<E: fmt::Display>(
    case: &Case,
    make_bus: &mut dyn FnMut() -> Result<Box<dyn DriverBus>, E>,
    dev_num: u16,
    cfg: &SuiteConfig,
) -> Outcome {
    if !case.profiles.contains(&cfg.profile) {
        return Outcome::Skip(format!("not a {} rule: {}", cfg.profile, case.profile_note));
    }
    let bus = match make_bus() {
        Ok(b) => b,
        Err(e) => return Outcome::Fail(format!("cannot connect: {e}")),
    };
    let drv = match Driver::with_profile(bus, cfg.profile) {
        Ok(d) => d.with_timeout(cfg.timeout),
        Err(e) => return Outcome::Fail(format!("bad bus: {e}")),
    };
    let mut ctx = Ctx::new(drv, dev_num, cfg.clone());
    let res = match case.needs {
        Needs::Any => (case.run)(&mut ctx),
        Needs::DeviceId(id) => match ctx.info() {
            Ok(i) if i.device_id == id => (case.run)(&mut ctx),
            Ok(i) => Err(CaseError::Skip(format!(
                "needs device_id {id}, device is {}",
                i.device_id
            ))),
            Err(e) => Err(e),
        },
    };
    // Leave the device idle for the next case; failures here are not the case's.
    if ctx.drv.is_some() {
        let _ = ctx.reset();
    }
    match res {
        Ok(()) => Outcome::Pass,
        Err(CaseError::Skip(why)) => Outcome::Skip(why),
        Err(e) => Outcome::Fail(e.to_string()),
    }
}

/// What happened to a frame that should be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// No response within the window and the device still answers.
    Yes,
    /// The bus refused to send it (the device never saw it).
    RefusedByBus(String),
}

/// Per-case context: a driver session plus helpers.
#[derive(Debug)]
pub struct Ctx {
    drv: Option<Driver>,
    /// The device number under test.
    pub dev_num: u16,
    /// Suite tunables.
    pub cfg: SuiteConfig,
    info: Option<DeviceInfo>,
    alloc: Option<GuestAllocator>,
}

impl Ctx {
    /// A context over a session.
    pub fn new(drv: Driver, dev_num: u16, cfg: SuiteConfig) -> Self {
        Ctx {
            drv: Some(drv),
            dev_num,
            cfg,
            info: None,
            alloc: None,
        }
    }

    /// The session. Panics only if a case took it and did not give it back,
    /// which is a bug in that case.
    pub fn drv(&mut self) -> &mut Driver {
        self.drv
            .as_mut()
            .expect("driver taken by the case and not returned")
    }

    /// The wire profile under test.
    pub fn profile(&self) -> Profile {
        self.cfg.profile
    }

    /// Header size of the profile (8, or 6 for RFC2).
    pub fn hdr(&self) -> usize {
        self.cfg.profile.header_size()
    }

    /// A raw frame of `req` in the profile's layout.
    pub fn raw(&self, req: &Request, dev_num: u16, token: u16) -> RawFrame {
        RawFrame::from_request_for(self.profile(), req, dev_num, token)
    }

    /// An arbitrary raw frame in the profile's header layout.
    pub fn raw_new(&self, ty: u8, msg_id: u8) -> RawFrame {
        RawFrame::new(ty, msg_id).profile(self.profile())
    }

    /// SET_VQUEUE `flags` that enable a queue: v2 state op 1; v1/RFC2 have
    /// a reserved word there (0), and every SET_VQUEUE enables.
    pub fn enable_flags(&self) -> u32 {
        if self.profile().has_vqueue_flags() {
            vq_flags::STATE_ENABLE
        } else {
            0
        }
    }

    /// What GET_VQUEUE must read after `s` was applied to a queue of `max`
    /// entries; the enabled bit is only visible in v2.
    pub fn expected_after_set(&self, max: u32, s: &SetVqueue, enabled: bool) -> VqueueInfo {
        expected_after_set(max, s, enabled && self.profile().has_vqueue_flags())
    }

    /// Takes the session (e.g. for [`VirtioDevice`] or the rng frontend).
    pub fn take_driver(&mut self) -> Driver {
        self.drv.take().expect("driver already taken")
    }

    /// Returns the session.
    pub fn put_driver(&mut self, d: Driver) {
        self.drv = Some(d);
    }

    /// GET_DEVICE_INFO (cached).
    pub fn info(&mut self) -> Result<DeviceInfo, CaseError> {
        if let Some(i) = self.info {
            return Ok(i);
        }
        let dev = self.dev_num;
        let i = self.drv().get_device_info(dev)?;
        self.info = Some(i);
        Ok(i)
    }

    /// GET_DEVICE_STATUS.
    pub fn status(&mut self) -> Result<u32, CaseError> {
        let dev = self.dev_num;
        Ok(self.drv().get_device_status(dev)?)
    }

    /// SET_DEVICE_STATUS; returns the reported status.
    pub fn set_status(&mut self, s: u32) -> Result<u32, CaseError> {
        let dev = self.dev_num;
        Ok(self.drv().set_device_status(dev, s)?)
    }

    /// SET_DEVICE_STATUS that must be echoed exactly.
    pub fn set_status_exact(&mut self, s: u32) -> CaseResult {
        let got = self.set_status(s)?;
        ensure!(got == s, "SET_DEVICE_STATUS({s:#x}) returned {got:#x}");
        Ok(())
    }

    /// Reset: write 0 and poll until 0 (bounded, §3.8). On v1/RFC2 the
    /// reset completes synchronously: the response must be 0 (§7.1).
    pub fn reset(&mut self) -> CaseResult {
        let mut st = self.set_status(0)?;
        ensure!(
            st == 0 || self.profile() == Profile::V2,
            "{}: SET_DEVICE_STATUS(0) answered {st:#x}; the reset must complete synchronously",
            self.profile()
        );
        let deadline = Instant::now() + self.cfg.reset_timeout;
        while st != 0 {
            ensure!(
                Instant::now() < deadline,
                "reset still pending after {:?} (status {st:#x})",
                self.cfg.reset_timeout
            );
            std::thread::sleep(Duration::from_millis(10));
            st = self.status()?;
        }
        self.alloc = None;
        Ok(())
    }

    /// Reset, ACKNOWLEDGE, DRIVER (§5 steps 2–3).
    pub fn to_driver(&mut self) -> CaseResult {
        self.reset()?;
        self.set_status_exact(status::ACKNOWLEDGE)?;
        self.set_status_exact(status::ACKNOWLEDGE | status::DRIVER)
    }

    /// All offered feature blocks, chunked to the message size.
    pub fn offered(&mut self) -> Result<FeatureSet, CaseError> {
        let n = self.info()?.num_feature_blocks;
        let per = ((self.drv().max_msg_size() - self.hdr() - 8) / 4) as u32;
        let dev = self.dev_num;
        let mut blocks = Vec::new();
        let mut i = 0;
        while i < n {
            let k = per.min(n - i);
            blocks.extend(self.drv().get_device_features(dev, i, k)?);
            i += k;
        }
        Ok(FeatureSet::from_blocks(blocks))
    }

    /// Writes driver feature blocks `0..max(num_feature_blocks, set length)`, chunked.
    pub fn write_features(&mut self, f: &FeatureSet) -> CaseResult {
        let n = self.info()?.num_feature_blocks as usize;
        let blocks = f.blocks(n);
        let per = (self.drv().max_msg_size() - self.hdr() - 8) / 4;
        let dev = self.dev_num;
        for (ci, chunk) in blocks.chunks(per).enumerate() {
            self.drv()
                .set_driver_features(dev, (ci * per) as u32, chunk)?;
        }
        Ok(())
    }

    /// Device-type feature bits a driver MUST accept, so that the device
    /// may refuse FEATURES_OK without them: i2c's
    /// VIRTIO_I2C_F_ZERO_LENGTH_REQUEST (virtio 1.3 §5.19.6.1).
    pub fn mandatory_features(&mut self) -> Result<Vec<u32>, CaseError> {
        Ok(match self.info()?.device_id {
            crate::i2c::VIRTIO_ID_I2C_ADAPTER => vec![crate::i2c::F_ZERO_LENGTH_REQUEST],
            _ => Vec::new(),
        })
    }

    /// Reset through FEATURES_OK with the driver's policy plus `extra` bits
    /// and the device type's mandatory ones (only those offered); returns
    /// the accepted set.
    pub fn to_features_ok(&mut self, extra: &[u32]) -> Result<FeatureSet, CaseError> {
        self.to_driver()?;
        let offered = self.offered()?;
        let mut wanted = self.mandatory_features()?;
        wanted.extend_from_slice(extra);
        let chosen = VirtioDevice::choose_features(&offered, &FeatureSet::from_bits(&wanted));
        self.write_features(&chosen)?;
        let st = self.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK)?;
        ensure!(
            st & status::FEATURES_OK != 0,
            "FEATURES_OK refused for {chosen:?} (status {st:#x})"
        );
        Ok(chosen)
    }

    /// The first queue with max_size > 0, or skip.
    pub fn first_queue(&mut self) -> Result<(u32, u32), CaseError> {
        let n = self.info()?.max_virtqueues.min(256);
        let dev = self.dev_num;
        for i in 0..n {
            let q = self.drv().get_vqueue(dev, i)?;
            if q.max_size > 0 {
                return Ok((i, q.max_size));
            }
        }
        Err(CaseError::Skip("device has no available virtqueue".into()))
    }

    /// Allocates real ring memory for a queue of `size` and returns a
    /// SET_VQUEUE body with `flags` for it.
    pub fn rings(&mut self, index: u32, size: u32, flags: u32) -> Result<SetVqueue, CaseError> {
        let mem = self.drv().memory();
        let alloc = self.alloc.get_or_insert_with(|| GuestAllocator::new(&mem));
        let s = size.min(32768) as u16;
        let desc = alloc.alloc(QueueLayout::desc_bytes(s), 16)?;
        let avail = alloc.alloc(QueueLayout::avail_bytes(s), 2)?;
        let used = alloc.alloc(QueueLayout::used_bytes(s), 4)?;
        Ok(SetVqueue {
            index,
            flags,
            size,
            reserved: 0,
            desc_addr: desc.0,
            driver_addr: avail.0,
            device_addr: used.0,
        })
    }

    /// A small queue size valid for a queue of `max` entries.
    pub fn small_size(max: u32) -> u32 {
        1u32 << (31 - max.min(16).leading_zeros())
    }

    /// GET_VQUEUE with the §3.9 consistency checks.
    pub fn vq(&mut self, index: u32) -> Result<VqueueInfo, CaseError> {
        let dev = self.dev_num;
        let q = self.drv().get_vqueue(dev, index)?;
        q.check_consistency_for(self.profile())
            .map_err(|e| CaseError::Fail(format!("GET_VQUEUE({index}): {e}")))?;
        Ok(q)
    }

    /// SET_VQUEUE whose response must be exactly the header-only empty response (§3.10).
    pub fn set_vq(&mut self, s: SetVqueue) -> CaseResult {
        let (h, _) = self.exact(Request::SetVqueue(s))?;
        let want = self.hdr();
        ensure!(
            usize::from(h.msg_size) == want,
            "SET_VQUEUE response msg_size {} (expected {want})",
            h.msg_size
        );
        Ok(())
    }

    /// Enables queue `index` with valid rings (flags = 1) and confirms it by
    /// exact GET_VQUEUE equality; returns what was set.
    pub fn enable_queue(&mut self, index: u32, max: u32) -> Result<SetVqueue, CaseError> {
        let flags = self.enable_flags();
        let s = self.rings(index, Self::small_size(max), flags)?;
        self.set_vq(s)?;
        let got = self.vq(index)?;
        let want = self.expected_after_set(max, &s, true);
        ensure!(
            got == want,
            "after SET_VQUEUE {s:?}: GET_VQUEUE reads {got:?}, expected {want:?}"
        );
        Ok(s)
    }

    /// Sends `req` and returns the response header (for exact checks) and the validated body.
    pub fn exact(&mut self, req: Request) -> Result<(Header, Response), CaseError> {
        let dev = self.dev_num;
        let timeout = self.cfg.timeout;
        let d = self.drv();
        let p = d.submit(dev, req)?;
        let Some(rx) = d.wait_raw(p.dev_num, p.token, timeout)? else {
            return Err(CaseError::Fail(format!(
                "no response to {} within {timeout:?}",
                p.request.name()
            )));
        };
        let (max, profile) = (d.max_msg_size(), d.profile());
        let resp =
            wire::check_response_for(profile, &p.request, p.dev_num, p.token, &rx.frame, max)
                .map_err(|e| {
                    CaseError::Fail(format!(
                        "invalid {} response: {e} ({})",
                        p.request.name(),
                        wire::hex(&rx.frame)
                    ))
                })?;
        Ok((rx.header, resp))
    }

    /// The device answers GET_DEVICE_STATUS (liveness after a dropped frame).
    pub fn alive(&mut self, after: &str) -> CaseResult {
        let dev = self.dev_num;
        self.drv()
            .get_device_status(dev)
            .map(|_| ())
            .map_err(|e| CaseError::Fail(format!("device stopped answering after {after}: {e}")))
    }

    /// Responses arriving within the drop window (events are queued).
    pub fn responses_within_window(&mut self) -> Result<Vec<Received>, CaseError> {
        let w = self.cfg.drop_window;
        Ok(self.drv().drain(w)?)
    }

    /// Sends `frame` and proves it is dropped: no response within the drop
    /// window, then the device still answers GET_DEVICE_STATUS.
    pub fn expect_dropped(&mut self, frame: &[u8], what: &str) -> Result<Dropped, CaseError> {
        self.drv().take_unclaimed();
        if let Err(e) = self.drv().send_frame(frame) {
            return match e {
                DriverError::Bus(b) => Ok(Dropped::RefusedByBus(b.to_string())),
                e => Err(e.into()),
            };
        }
        let got = self.responses_within_window()?;
        ensure!(
            got.is_empty(),
            "device answered {what} ({}): {}",
            wire::hex(frame),
            got.iter()
                .map(|r| wire::hex(&r.frame))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        self.alive(what)?;
        Ok(Dropped::Yes)
    }

    /// [`Ctx::expect_dropped`] over several frames; skips if the bus refused all.
    pub fn expect_all_dropped(&mut self, frames: &[(Vec<u8>, String)]) -> CaseResult {
        let mut refused = Vec::new();
        for (f, what) in frames {
            if let Dropped::RefusedByBus(e) = self.expect_dropped(f, what)? {
                refused.push(format!("{what}: {e}"));
            }
        }
        if refused.len() == frames.len() {
            return Err(CaseError::Skip(format!(
                "bus refused every frame: {}",
                refused.join("; ")
            )));
        }
        Ok(())
    }

    /// Queued EVENT_CONFIG events from the device under test.
    pub fn take_config_events(&mut self) -> Vec<Event> {
        let dev = self.dev_num;
        self.drv()
            .take_events_where(|e| matches!(e, Event::Config { dev_num, .. } if *dev_num == dev))
    }

    /// The guest address of a fresh page (for buffers).
    pub fn page(&mut self) -> Result<GuestAddress, CaseError> {
        let mem = self.drv().memory();
        let alloc = self.alloc.get_or_insert_with(|| GuestAllocator::new(&mem));
        Ok(alloc.alloc(4096, 1)?)
    }
}

/// What GET_VQUEUE must read after `s` was applied to a queue of `max` entries.
pub fn expected_after_set(max: u32, s: &SetVqueue, enabled: bool) -> VqueueInfo {
    VqueueInfo {
        index: s.index,
        max_size: max,
        cur_size: s.size,
        flags: u32::from(enabled),
        desc_addr: s.desc_addr,
        driver_addr: s.driver_addr,
        device_addr: s.device_addr,
    }
}

#[cfg(test)]
mod tests;
