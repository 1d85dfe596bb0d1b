//! Rate limits for log lines a guest can cause (connects, refusals,
//! disconnects, device errors): a hostile guest must not be able to flood
//! the log (3000 lines a second were seen, issue 10). Each guest has its
//! own limits, so one guest's flood never silences another's lines.
//!
//! A [`LogLimiter`] is a token bucket of lines: a burst of
//! [`LogLimiter::BURST`] lines, then [`LogLimiter::PER_SECOND`] a second.
//! A suppressed line is counted; the next line let through says how many
//! were suppressed ([`Suppressed`] displays as ` (N similar lines
//! suppressed)`, or nothing).

use std::fmt;
use std::time::{Duration, Instant};

/// Lines a guest may log at once before the limit applies.
const DEFAULT_BURST: u32 = 20;
/// Lines a second once the burst is spent.
const DEFAULT_PER_SECOND: u32 = 1;

/// A token bucket of log lines.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    burst: u32,
    per_second: u32,
    tokens: u32,
    last: Instant,
    /// Suppressed since the last line let through.
    pending: u64,
    /// Suppressed in total.
    total: u64,
}

/// How many lines were suppressed before the one being logged; displays as
/// a note to append to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => f.write_str(" (1 similar line suppressed)"),
            n => write!(f, " ({n} similar lines suppressed)"),
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_BURST, DEFAULT_PER_SECOND)
    }
}

impl LogLimiter {
    /// The default burst.
    pub const BURST: u32 = DEFAULT_BURST;
    /// The default rate once the burst is spent.
    pub const PER_SECOND: u32 = DEFAULT_PER_SECOND;

    /// A limiter of `burst` lines, then `per_second` a second (at least 1).
    pub fn new(burst: u32, per_second: u32) -> Self {
        Self {
            burst: burst.max(1),
            per_second: per_second.max(1),
            tokens: burst.max(1),
            last: Instant::now(),
            pending: 0,
            total: 0,
        }
    }

    /// May a line be logged now? `Some` (with the count suppressed since the
    /// last line let through) if so; `None` if it is suppressed (counted).
    pub fn allow(&mut self) -> Option<Suppressed> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<Suppressed> {
        let elapsed = now.saturating_duration_since(self.last);
        let per_token = Duration::from_secs(1) / self.per_second;
        let earned = (elapsed.as_nanos() / per_token.as_nanos().max(1)) as u64;
        if earned > 0 {
            let room = u64::from(self.burst - self.tokens);
            self.tokens += earned.min(room) as u32;
            self.last = if earned >= room {
                now
            } else {
                self.last + per_token * earned as u32
            };
        }
        if self.tokens == 0 {
            self.pending += 1;
            self.total += 1;
            return None;
        }
        self.tokens -= 1;
        Some(Suppressed(std::mem::take(&mut self.pending)))
    }

    /// Lines suppressed so far.
    pub fn suppressed(&self) -> u64 {
        self.total
    }
}

/// Log through `limiter`: `rate_limited!(limiter, warn, "...", args)` logs
/// the line with the suppression note appended, or counts it.
#[macro_export]
macro_rules! rate_limited {
    ($limiter:expr, $level:ident, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.allow() {
            log::$level!("{}{}", format_args!($($arg)+), suppressed);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_with_the_suppressed_count() {
        let mut l = LogLimiter::new(3, 2);
        let t0 = l.last;
        let mut allowed = 0;
        for _ in 0..1000 {
            if l.allow_at(t0).is_some() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3, "the burst");
        assert_eq!(l.suppressed(), 997);
        // Half a second later (2 a second): one more, saying what it missed.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.allow_at(t1), Some(Suppressed(997)));
        assert_eq!(l.allow_at(t1), None);
        assert_eq!(
            l.allow_at(t1 + Duration::from_millis(500)),
            Some(Suppressed(1))
        );
        // Quiet for long: the burst is back, no more than the burst.
        let t2 = t1 + Duration::from_secs(3600);
        let back = (0..10).filter(|_| l.allow_at(t2).is_some()).count();
        assert_eq!(back, 3);
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(5).to_string(), " (5 similar lines suppressed)");
    }
}
