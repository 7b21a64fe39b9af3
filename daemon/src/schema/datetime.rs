//! RFC 3339 date-times as the contract accepts them (§4.3.1).
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|z|±HH:MM)` with a real calendar date, year
//! 0001–9999, hour ≤ 23, minute and second ≤ 59 (no leap second), offset hours ≤ 23 and
//! minutes ≤ 59. The separator must be an upper-case `T`. Fraction digits beyond the sixth
//! are truncated. Written back the way upstream (pydantic) serialises a `datetime`.

use std::cmp::Ordering;

use crate::time::{days_from_civil, days_in_month};

/// A parsed date-time with its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub micros: u32,
    /// Offset from UTC in minutes.
    pub offset_minutes: i16,
}

/// Parse `s` strictly (§4.3.1).
pub fn parse_rfc3339(s: &str) -> Option<DateTime> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if year == 0
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(i64::from(year), month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut pos = 19;
    let mut micros = 0u32;
    if b[pos] == b'.' {
        pos += 1;
        let start = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            if pos - start < 6 {
                micros = micros * 10 + u32::from(b[pos] - b'0');
            }
            pos += 1;
        }
        let n = pos - start;
        if !(1..=9).contains(&n) {
            return None;
        }
        for _ in n..6 {
            micros *= 10;
        }
    }
    let offset_minutes = match b.get(pos..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = digits(b, pos + 1, 2)?;
            let om = digits(b, pos + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let total = i16::try_from(oh * 60 + om).ok()?;
            if *sign == b'-' {
                -total
            } else {
                total
            }
        }
        _ => return None,
    };
    Some(DateTime {
        year: u16::try_from(year).ok()?,
        month: u8::try_from(month).ok()?,
        day: u8::try_from(day).ok()?,
        hour: u8::try_from(hour).ok()?,
        minute: u8::try_from(minute).ok()?,
        second: u8::try_from(second).ok()?,
        micros,
        offset_minutes,
    })
}

/// `n` ASCII digits of `b` starting at `at`.
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    b.get(at..at + n)?.iter().try_fold(0u32, |v, &d| {
        d.is_ascii_digit().then(|| v * 10 + u32::from(d - b'0'))
    })
}

impl DateTime {
    /// The instant as microseconds since the Unix epoch (UTC).
    pub fn unix_micros(&self) -> i64 {
        let days = days_from_civil(
            i64::from(self.year),
            u32::from(self.month),
            u32::from(self.day),
        );
        let secs = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.offset_minutes) * 60;
        secs * 1_000_000 + i64::from(self.micros)
    }

    /// Compare the instants (not the local wall-clock readings) of two date-times.
    pub fn cmp_instant(&self, other: &Self) -> Ordering {
        self.unix_micros().cmp(&other.unix_micros())
    }

    /// Write the upstream serialisation (no quotes): `YYYY-MM-DDTHH:MM:SS`, `.ffffff` unless
    /// the microseconds are 0, then `Z` for a zero offset (`-00:00` included) or `±HH:MM`.
    pub fn write_upstream(&self, out: &mut Vec<u8>) {
        pad(out, u32::from(self.year), 4);
        out.push(b'-');
        pad(out, u32::from(self.month), 2);
        out.push(b'-');
        pad(out, u32::from(self.day), 2);
        out.push(b'T');
        pad(out, u32::from(self.hour), 2);
        out.push(b':');
        pad(out, u32::from(self.minute), 2);
        out.push(b':');
        pad(out, u32::from(self.second), 2);
        if self.micros != 0 {
            out.push(b'.');
            pad(out, self.micros, 6);
        }
        if self.offset_minutes == 0 {
            out.push(b'Z');
        } else {
            out.push(if self.offset_minutes < 0 { b'-' } else { b'+' });
            let abs = u32::from(self.offset_minutes.unsigned_abs());
            pad(out, abs / 60, 2);
            out.push(b':');
            pad(out, abs % 60, 2);
        }
    }
}

/// `v` in decimal, zero-padded to `width` digits (`v` < 10^width).
fn pad(out: &mut Vec<u8>, v: u32, width: u32) {
    let mut div = 10u32.pow(width.saturating_sub(1));
    while div > 0 {
        out.push(b'0' + u8::try_from(v / div % 10).unwrap_or(0));
        div /= 10;
    }
}
