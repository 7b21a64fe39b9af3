//! Admission of new producer connections, decided right after `accept` and before any TLS
//! work: at most `max_connections` open at once, and new ones at most at
//! `max_new_connections_per_second` on average with bursts of `new_connection_burst` (a token
//! bucket). A refused connection is closed without a byte; the refusal is counted by reason,
//! audited coalesced (`tls.rejected`, once a second) and logged at most once a minute per
//! reason, so a flood cannot flood the journal either.
//!
//! The bucket runs on the monotonic clock, not on [`crate::time::Clock`]: it measures
//! intervals only, and a step of the wall clock (or of its test seam) must neither freeze the
//! refill nor grant a fresh burst.

use std::time::{Duration, Instant};

use crate::config::Limits;

/// Why a new connection was closed before TLS; the strings are the `tls.rejected`
/// `sub_reason` and the metrics' `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` were open.
    ConnectionLimit,
    /// Over `max_new_connections_per_second` (the bucket was empty).
    ConnectionRate,
}

impl Refused {
    pub const ALL: [Self; 2] = [Self::ConnectionLimit, Self::ConnectionRate];

    pub fn reason(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::ConnectionRate => "connection_rate",
        }
    }

    /// The configuration key that caused the refusal.
    pub fn key(self) -> &'static str {
        match self {
            Self::ConnectionLimit => "max_connections",
            Self::ConnectionRate => "max_new_connections_per_second",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Self::ConnectionLimit => 0,
            Self::ConnectionRate => 1,
        }
    }
}

/// One token per connection, in millionths so that any integer rate refills exactly.
const MICRO: u64 = 1_000_000;

/// A token bucket, full at start. The rate and the size are passed on every call, so a reload
/// applies to the next connection (tokens above a smaller size are dropped).
#[derive(Debug, Default)]
pub struct TokenBucket {
    micro_tokens: u64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Take a token at `now` if there is one.
    pub fn take(&mut self, now: Instant, per_second: u64, burst: u64) -> bool {
        let size = burst.saturating_mul(MICRO);
        let tokens = match self.last {
            None => size,
            Some(last) => {
                let us = u64::try_from(now.saturating_duration_since(last).as_micros())
                    .unwrap_or(u64::MAX);
                // A microsecond refills `per_second` millionths of a token.
                self.micro_tokens
                    .saturating_add(us.saturating_mul(per_second))
                    .min(size)
            }
        };
        self.last = Some(now.max(self.last.unwrap_or(now)));
        if tokens >= MICRO {
            self.micro_tokens = tokens - MICRO;
            true
        } else {
            self.micro_tokens = tokens;
            false
        }
    }
}

/// How often a refusal reason may be logged while refusals go on.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// Refusals counted since the last log line of their reason.
#[derive(Debug, Default)]
struct LogThrottle {
    last: Option<Instant>,
    unlogged: u64,
}

/// The accept loop's admission state.
#[derive(Debug, Default)]
pub struct Admission {
    bucket: TokenBucket,
    logs: [LogThrottle; Refused::ALL.len()],
}

impl Admission {
    /// Whether a new connection may be served, `open` being the producer connections open now.
    /// The limit is checked first, so a connection refused for it takes no token.
    pub fn check(&mut self, now: Instant, open: usize, limits: &Limits) -> Result<(), Refused> {
        if open >= limits.max_connections {
            return Err(Refused::ConnectionLimit);
        }
        if !self.bucket.take(
            now,
            limits.max_new_connections_per_second,
            limits.new_connection_burst,
        ) {
            return Err(Refused::ConnectionRate);
        }
        Ok(())
    }

    /// Count a refusal for the log; `Some(n)` when a line is due now, with the refusals of
    /// this reason since the previous line (this one included).
    pub fn log_due(&mut self, now: Instant, why: Refused) -> Option<u64> {
        let t = self.logs.get_mut(why.index())?;
        t.unlogged += 1;
        if t.last
            .is_some_and(|last| now.saturating_duration_since(last) < LOG_EVERY)
        {
            return None;
        }
        t.last = Some(now);
        Some(std::mem::take(&mut t.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_second: u64, burst: u64) -> Limits {
        Limits {
            max_body_bytes: 1024,
            max_header_bytes: 1024,
            max_connections: max,
            max_new_connections_per_second: per_second,
            new_connection_burst: burst,
            max_in_flight: 1,
            header_read_timeout: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn bucket_starts_full_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        // A burst of 20 at once, then nothing.
        assert!((0..20).all(|_| b.take(t0, 20, 20)));
        assert!(!b.take(t0, 20, 20));
        // 20/s: one token every 50 ms, none before.
        assert!(!b.take(t0 + Duration::from_millis(49), 20, 20));
        assert!(b.take(t0 + Duration::from_millis(50), 20, 20));
        assert!(!b.take(t0 + Duration::from_millis(60), 20, 20));
        // Refused attempts take nothing: at 100 ms the second token is there.
        assert!(b.take(t0 + Duration::from_millis(100), 20, 20));
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.take(later, 20, 20)).count(), 20);
    }

    #[test]
    fn bucket_admits_the_rate_over_a_second_whatever_the_spacing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        // Empty it, then try every millisecond for 10 s at 7/s: 70 admitted (± the edge).
        while b.take(t0, 7, 3) {}
        let admitted = (1..=10_000u64)
            .filter(|ms| b.take(t0 + Duration::from_millis(*ms), 7, 3))
            .count();
        assert_eq!(admitted, 70);
    }

    #[test]
    fn a_smaller_burst_after_a_reload_drops_the_extra_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        assert!(b.take(t0, 100, 100));
        assert_eq!((0..100).filter(|_| b.take(t0, 100, 5)).count(), 5);
    }

    #[test]
    fn the_connection_limit_is_checked_first_and_takes_no_token() {
        let t0 = Instant::now();
        let mut a = Admission::default();
        let l = limits(2, 1, 1);
        assert_eq!(a.check(t0, 2, &l), Err(Refused::ConnectionLimit));
        assert_eq!(a.check(t0, 1, &l), Ok(()));
        assert_eq!(a.check(t0, 1, &l), Err(Refused::ConnectionRate));
        assert_eq!(a.check(t0 + Duration::from_secs(1), 1, &l), Ok(()));
    }

    #[test]
    fn refusals_are_logged_at_most_once_a_minute_per_reason_with_the_count() {
        let t0 = Instant::now();
        let mut a = Admission::default();
        assert_eq!(a.log_due(t0, Refused::ConnectionRate), Some(1));
        for s in 1..60 {
            assert_eq!(
                a.log_due(t0 + Duration::from_secs(s), Refused::ConnectionRate),
                None
            );
        }
        // The other reason has its own line.
        assert_eq!(a.log_due(t0, Refused::ConnectionLimit), Some(1));
        assert_eq!(a.log_due(t0 + LOG_EVERY, Refused::ConnectionRate), Some(60));
    }

    #[test]
    fn reasons_are_distinct_and_name_their_key() {
        assert_eq!(Refused::ConnectionLimit.reason(), "connection_limit");
        assert_eq!(Refused::ConnectionRate.reason(), "connection_rate");
        for (i, r) in Refused::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(
            Refused::ConnectionRate.key(),
            "max_new_connections_per_second"
        );
    }
}
