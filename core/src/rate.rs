//! Per-connection rate limiting, driven only by input time.
//!
//! A token bucket allows `message_burst` messages at once and refills at
//! `messages_per_second`. A message that finds the bucket empty is a
//! *violation*: it is answered with `RATE_LIMITED` and not executed. Violations
//! drain at one per second; when more than `rate_violations_max` are pending
//! the client is persistently abusive and is closed with 1008.

use crate::limits::Limits;

/// Fixed-point scale: one token (or one violation) is a million units, so
/// refills are exact integer arithmetic on microseconds.
const UNIT: u64 = 1_000_000;

/// What the limiter decided about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the allowance: execute it.
    Allow,
    /// Over the allowance: answer `RATE_LIMITED`, do not execute.
    Warn,
    /// Over the allowance too often: close with 1008.
    Close,
}

/// One connection's token bucket and violation counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimiter {
    tokens: u64,
    violations: u64,
    last_us: u64,
}

impl RateLimiter {
    /// A full bucket at time `now_us`.
    pub fn new(limits: &Limits, now_us: u64) -> RateLimiter {
        RateLimiter {
            tokens: u64::from(limits.message_burst) * UNIT,
            violations: 0,
            last_us: now_us,
        }
    }

    /// Accounts one client message arriving at `now_us`.
    pub fn check(&mut self, limits: &Limits, now_us: u64) -> Verdict {
        let elapsed_us = now_us.saturating_sub(self.last_us);
        self.last_us = self.last_us.max(now_us);
        let capacity = u64::from(limits.message_burst) * UNIT;
        let refill = elapsed_us.saturating_mul(u64::from(limits.messages_per_second));
        self.tokens = self.tokens.saturating_add(refill).min(capacity);
        self.violations = self.violations.saturating_sub(elapsed_us);

        if self.tokens >= UNIT {
            self.tokens -= UNIT;
            return Verdict::Allow;
        }
        self.violations = self.violations.saturating_add(UNIT);
        if self.violations > u64::from(limits.rate_violations_max) * UNIT {
            Verdict::Close
        } else {
            Verdict::Warn
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, violations: u32) -> Limits {
        Limits {
            messages_per_second: rate,
            message_burst: burst,
            rate_violations_max: violations,
            ..Limits::default()
        }
    }

    #[test]
    fn burst_then_warn_then_close() {
        let l = limits(10, 3, 2);
        let mut r = RateLimiter::new(&l, 0);
        assert_eq!(r.check(&l, 0), Verdict::Allow);
        assert_eq!(r.check(&l, 0), Verdict::Allow);
        assert_eq!(r.check(&l, 0), Verdict::Allow);
        assert_eq!(r.check(&l, 0), Verdict::Warn);
        assert_eq!(r.check(&l, 0), Verdict::Warn);
        assert_eq!(r.check(&l, 0), Verdict::Close);
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let l = limits(10, 1, 100);
        let mut r = RateLimiter::new(&l, 0);
        assert_eq!(r.check(&l, 0), Verdict::Allow);
        assert_eq!(r.check(&l, 99_999), Verdict::Warn);
        // 100 ms after the start one token (1/10 s) has been refilled.
        assert_eq!(r.check(&l, 100_000), Verdict::Allow);
        assert_eq!(r.check(&l, 100_000), Verdict::Warn);
    }

    #[test]
    fn violations_are_forgiven_over_time() {
        let l = limits(1, 1, 1);
        let mut r = RateLimiter::new(&l, 0);
        assert_eq!(r.check(&l, 0), Verdict::Allow);
        assert_eq!(r.check(&l, 0), Verdict::Warn);
        // A second later the violation has drained and a token is back.
        assert_eq!(r.check(&l, 1_000_000), Verdict::Allow);
        assert_eq!(r.check(&l, 1_000_000), Verdict::Warn);
        assert_eq!(r.check(&l, 1_000_000), Verdict::Close);
    }

    #[test]
    fn a_client_within_its_rate_is_never_limited() {
        let l = limits(50, 5, 0);
        let mut r = RateLimiter::new(&l, 0);
        for i in 0..10_000u64 {
            assert_eq!(r.check(&l, i * 20_000), Verdict::Allow, "message {i}");
        }
    }

    #[test]
    fn time_going_backwards_does_not_refill() {
        let l = limits(10, 1, 5);
        let mut r = RateLimiter::new(&l, 1_000_000);
        assert_eq!(r.check(&l, 1_000_000), Verdict::Allow);
        assert_eq!(r.check(&l, 0), Verdict::Warn);
    }
}
