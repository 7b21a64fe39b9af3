//! RFC 3339 date-times (§4.3.1) and the MITRE catalogue (§4.5).

use super::super::*;

fn reserialise(s: &str) -> Option<String> {
    let dt = parse_rfc3339(s)?;
    let mut out = Vec::new();
    dt.write_upstream(&mut out);
    String::from_utf8(out).ok()
}

#[test]
fn upstream_serialisation() {
    let cases = [
        (
            "2026-02-26T12:00:00.123456+00:00",
            "2026-02-26T12:00:00.123456Z",
        ),
        ("2026-02-26T12:00:00.000Z", "2026-02-26T12:00:00Z"),
        ("2026-02-26T12:00:00Z", "2026-02-26T12:00:00Z"),
        ("2026-02-26T12:00:00z", "2026-02-26T12:00:00Z"),
        ("2026-02-26T12:00:00-00:00", "2026-02-26T12:00:00Z"),
        (
            "2026-02-26T12:00:00.1+01:00",
            "2026-02-26T12:00:00.100000+01:00",
        ),
        (
            "2026-02-26T12:00:00.000001-09:30",
            "2026-02-26T12:00:00.000001-09:30",
        ),
        (
            "2026-02-26T12:00:00.1234567+23:59",
            "2026-02-26T12:00:00.123456+23:59",
        ),
        ("2026-02-26T12:00:00.000000999Z", "2026-02-26T12:00:00Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.999999Z"),
        ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"),
        ("2000-02-29T00:00:00Z", "2000-02-29T00:00:00Z"),
    ];
    for (input, want) in cases {
        assert_eq!(reserialise(input).as_deref(), Some(want), "{input}");
    }
    let dt = parse_rfc3339("2026-02-26T12:00:00.5-05:30").expect("valid");
    assert_eq!(
        (
            dt.year,
            dt.month,
            dt.day,
            dt.hour,
            dt.micros,
            dt.offset_minutes
        ),
        (2026, 2, 26, 12, 500_000, -330)
    );
}

#[test]
fn rejections() {
    for bad in [
        "2026-02-26T12:00:00",             // naive
        "2026-02-26",                      // date only
        "2026-02-26 12:00:00Z",            // space instead of T
        "2026-02-26t12:00:00Z",            // lower-case t
        "2026-02-26T24:00:00Z",            // hour 24
        "2026-02-26T12:60:00Z",            // minute 60
        "2026-02-26T23:59:60Z",            // leap second
        "2026-02-30T12:00:00Z",            // Feb 30
        "2026-02-29T12:00:00Z",            // not a leap year
        "1900-02-29T12:00:00Z",            // not a leap year either
        "2026-04-31T12:00:00Z",            // April has 30 days
        "2026-13-01T12:00:00Z",            // month 13
        "2026-00-01T12:00:00Z",            // month 0
        "2026-01-00T12:00:00Z",            // day 0
        "0000-01-01T00:00:00Z",            // year 0
        "2026-02-26T12:00:00+24:00",       // offset hour 24
        "2026-02-26T12:00:00+05:60",       // offset minute 60
        "2026-02-26T12:00:00+0530",        // offset without colon
        "2026-02-26T12:00:00+05",          // offset without minutes
        "2026-02-26T12:00Z",               // no seconds
        "2026-02-26T12:00:00.Z",           // empty fraction
        "2026-02-26T12:00:00.1234567890Z", // ten fraction digits
        "2026-02-26T12:00:00,5Z",          // comma fraction
        "2026-02-26T12:00:00ZZ",           // trailing data
        " 2026-02-26T12:00:00Z",           // leading space
        "2026-2-26T12:00:00Z",             // one-digit month
        "+2026-02-26T12:00:00Z",           // signed year
        "2026-02-26T12:00:00UTC",
        "1772107200",
        "",
        "2026-02-26T1２:00:00Z", // non-ASCII digit
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
    }
}

#[test]
fn instants_compare_across_offsets() {
    let t = |s: &str| parse_rfc3339(s).expect("valid");
    let a = t("2026-02-26T12:00:00+01:00");
    let b = t("2026-02-26T11:30:00Z");
    assert!(a.cmp_instant(&b).is_lt());
    assert!(t("2026-02-26T11:00:00Z").cmp_instant(&a).is_eq());
    assert!(t("2026-02-26T11:00:00.000001Z").cmp_instant(&a).is_gt());
    assert_eq!(t("1970-01-01T00:00:00Z").unix_micros(), 0);
    assert_eq!(
        t("2026-02-26T12:00:00Z").unix_micros(),
        1_772_107_200_000_000
    );
    assert_eq!(t("1970-01-01T00:00:00+00:01").unix_micros(), -60_000_000);
}

#[test]
fn builtin_catalogue() {
    let c = Catalogue::builtin();
    assert_eq!(c.len(), 705);
    assert!(!c.is_empty());
    assert_eq!(c.lookup("T1595"), Some(MitreKind::Technique));
    assert_eq!(c.lookup("T1059.001"), Some(MitreKind::Subtechnique));
    assert_eq!(c.lookup("TA0043"), Some(MitreKind::Tactic));
    assert_eq!(c.lookup("T9999"), None);
    assert_eq!(c.lookup("t1595"), None);
    assert_eq!(c.lookup(""), None);
}

#[test]
fn from_tsv_accepts_comments_blank_lines_and_crlf() {
    let c = Catalogue::from_tsv(
        "# header\n\nTA0001\tInitial Access\ttactic\r\n  \nT1001\tData Obfuscation\ttechnique\n\
         T1001.001\tJunk Data\tsubtechnique\n",
    )
    .expect("valid");
    assert_eq!(c.len(), 3);
    assert_eq!(c.lookup("TA0001"), Some(MitreKind::Tactic));
    assert_eq!(c.lookup("T1001.001"), Some(MitreKind::Subtechnique));
    assert!(Catalogue::from_tsv("").expect("empty is valid").is_empty());
}

#[test]
fn from_tsv_errors_name_the_line() {
    let cases = [
        ("# c\nT1001\tData Obfuscation\n", "line 2"),
        ("T1001\tx\ttechnique\textra\n", "line 1"),
        ("T1001\tx\ttechnique\nT1002\tx\tprocedure\n", "line 2"),
        ("T1001\tx\ttactic\n", "line 1"),
        ("\n\nTA01\tx\ttactic\n", "line 3"),
        ("T1001.1\tx\tsubtechnique\n", "line 1"),
        ("T1001.001\tx\ttechnique\n", "line 1"),
        ("T1001\t\ttechnique\n", "line 1"),
        (
            "T1001\tx\ttechnique\nT1002\ty\ttechnique\nT1001\tz\ttechnique\n",
            "line 3",
        ),
        ("T1001 x technique\n", "line 1"),
    ];
    for (text, line) in cases {
        let err = Catalogue::from_tsv(text).expect_err(text);
        assert!(err.starts_with(&format!("{line}:")), "{text:?}: {err}");
    }
    assert!(Catalogue::from_tsv("T1001\tx\tprocedure\n")
        .expect_err("kind")
        .contains("unknown kind"));
}
