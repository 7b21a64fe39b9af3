//! RFC 3339 date-times as the contract accepts them (§4.3.1).

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
    let _ = s;
    todo!("schema: parse_rfc3339")
}
