//! The one place that reads the wall clock, and UTC calendar arithmetic.
//!
//! Every decision that depends on time (skew, nonce expiry, rate windows, audit timestamps)
//! reads it through [`Clock`], so tests can step the clock without touching the host's.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micros(pub u64);

impl Micros {
    /// `floor(unix time in seconds)`, the contract's `now`.
    pub fn secs(self) -> u64 {
        self.0 / 1_000_000
    }
}

/// The gateway clock: the system clock plus a fixed offset (zero outside tests), plus the
/// step of the dev-mode test seam when enabled.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    offset_secs: i64,
    step: Option<&'static AtomicI64>,
}

/// Seconds the test seam moves the clock by (see [`Clock::stepped`]).
static STEP: AtomicI64 = AtomicI64::new(0);

/// The environment variable naming the test seam's file (dev mode only): the file holds a
/// signed number of seconds to add to the wall clock, re-read every 100 ms, so tests can step
/// the gateway's clock back and forward without touching the host's.
pub const TEST_CLOCK_ENV: &str = "VVGATE_DEV_CLOCK_STEP_FILE";

/// Set the test seam's step (seconds).
/// CPU time this thread has used, in microseconds (0 if the clock cannot be read). For
/// accounting (the storage thread's commit cost, benchmarks), never for decisions.
pub fn thread_cpu_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0, |t| {
        let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
        secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
    })
}

pub fn set_step(secs: i64) {
    STEP.store(secs, Ordering::Relaxed);
}

impl Clock {
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock shifted by `offset_secs` from the system clock (test seam).
    pub fn with_offset(offset_secs: i64) -> Self {
        Self {
            offset_secs,
            step: None,
        }
    }

    /// The system clock moved by the test seam's step ([`set_step`]). Dev mode only.
    pub fn stepped() -> Self {
        Self {
            offset_secs: 0,
            step: Some(&STEP),
        }
    }

    pub fn now(&self) -> Micros {
        #[allow(clippy::disallowed_methods)] // this is the one sanctioned read of the wall clock
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let step = self.step.map_or(0, |s| s.load(Ordering::Relaxed));
        let shifted =
            i128::from(micros) + (i128::from(self.offset_secs) + i128::from(step)) * 1_000_000;
        Micros(u64::try_from(shifted.max(0)).unwrap_or(u64::MAX))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date `(year, month, day)` of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

pub fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Write `t` as `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` (CONTRACT.md §1.1: always six digits).
pub fn write_iso(out: &mut Vec<u8>, t: Micros) {
    let secs = t.0 / 1_000_000;
    let micros = t.0 % 1_000_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let sod = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    push_num(out, u64::try_from(y).unwrap_or(0), 4);
    out.push(b'-');
    push_num(out, u64::from(mo), 2);
    out.push(b'-');
    push_num(out, u64::from(d), 2);
    out.push(b'T');
    push_num(out, sod / 3600, 2);
    out.push(b':');
    push_num(out, sod / 60 % 60, 2);
    out.push(b':');
    push_num(out, sod % 60, 2);
    out.push(b'.');
    push_num(out, micros, 6);
    out.extend_from_slice(b"+00:00");
}

/// The ISO form of `t` as a string, formatted in place (no heap; once per audit entry and
/// envelope). Empty past the year 9999, which does not fit.
pub fn iso(t: Micros) -> heapless::String<32> {
    use std::fmt::Write as _;
    let secs = t.0 / 1_000_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let sod = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, us) = (sod / 3600, sod / 60 % 60, sod % 60, t.0 % 1_000_000);
    let mut out = heapless::String::new();
    if write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}+00:00"
    )
    .is_err()
    {
        out.clear();
    }
    out
}

/// Zero-padded decimal of at least `width` digits.
pub fn push_num(out: &mut Vec<u8>, v: u64, width: usize) {
    crate::json::write_u64_padded(out, v, width);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for z in [-800_000, -1, 0, 1, 59, 60, 11_016, 20_510, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(days_from_civil(2026, 2, 26), 20_510);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn iso_always_has_six_fraction_digits() {
        let t = Micros(1_772_107_201_000_000);
        assert_eq!(iso(t).as_str(), "2026-02-26T12:00:01.000000+00:00");
        let t = Micros(1_772_107_200_123_456);
        assert_eq!(iso(t).as_str(), "2026-02-26T12:00:00.123456+00:00");
        for t in [
            0,
            1,
            951_782_400_000_001,
            1_772_107_200_123_456,
            4_102_444_799_999_999,
        ] {
            let mut v = Vec::new();
            write_iso(&mut v, Micros(t));
            assert_eq!(iso(Micros(t)).as_bytes(), v.as_slice());
        }
    }

    #[test]
    fn leap_years() {
        assert!(is_leap(2000) && is_leap(2024) && !is_leap(1900) && !is_leap(2026));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2026, 2), 28);
    }
}
