//! The sanitiser and the injection check (§4.4).

use super::super::sanitize::{py_strip, sanitize_into, write_sanitized};
use super::super::*;

#[test]
fn each_pattern_matches() {
    for s in [
        "x UNION SELECT y",
        "1 union  select 2",
        "DROP TABLE users",
        "delete from t",
        "insert into t values",
        "update users set a=1",
        "UPDATE t_1 SET",
        "' or 1=1 --",
        "or 1 = 1",
        "OR 1  =1",
        "a;drop table b",
        "(union select)",
        "union select",
    ] {
        assert!(injection_detected(s), "{s:?}");
    }
}

#[test]
fn mixed_case_and_unicode_whitespace() {
    for s in [
        "UnIoN sElEcT",
        "union\tselect",
        "union\nselect",
        "union\r\n\x0b\x0cselect",
        "union\u{a0}select",
        "union\u{2003}select",
        "union\u{3000}select",
        "union\u{85}select",
        "union\u{1c}select",
        "drop\u{1f}table",
        "update\u{2028}users\u{2029}set",
        "or\u{1680}1\u{1e}=\u{1d}1",
        // Simple case folding: U+017F (long s) folds to `s`.
        "union \u{17f}elect",
    ] {
        assert!(injection_detected(s), "{s:?}");
    }
}

#[test]
fn word_boundaries_follow_python() {
    for s in [
        "unionselect",
        "union_select",
        "reunion select",
        "union selection",
        "union select_x",
        "dropped table",
        "drop tables",
        "updateusers set",
        "update  set",
        "update users settings",
        "for 1=1",
        "or 1=12",
        "or 11=1",
        "or 1=1x",
        "or 1==1",
        "union\u{200b}select",
        "deletefrom",
        "insert  intox",
        "",
        "plain text",
        // Python's \w contains numbers of category No (U+00B2), so no boundary after `1`.
        "or 1=1\u{b2}",
        "\u{e9}union select",
    ] {
        assert!(!injection_detected(s), "{s:?}");
    }
    // Python's \w has no marks, joiners or connector punctuation other than `_`, so these
    // are boundaries (upstream flags them).
    for s in [
        "union select\u{301}",
        "drop table\u{200d}",
        "\u{203f}insert into",
        "delete from\u{200c}x",
    ] {
        assert!(injection_detected(s), "{s:?}");
    }
}

#[test]
fn strip_is_python_strip() {
    assert_eq!(
        py_strip(" \t\n\r\x0b\x0c\u{1c}\u{1d}\u{1e}\u{1f}a b\u{85}\u{a0}\u{2029}\u{3000}"),
        "a b"
    );
    // U+200B is not white space in Python.
    assert_eq!(py_strip("\u{200b}x\u{200b}"), "\u{200b}x\u{200b}");
    assert_eq!(py_strip("   "), "");
}

#[test]
fn escape_order_and_cut() {
    let mut buf = String::new();
    sanitize_into(" <a href=\"x\">'&amp;'</a> ", usize::MAX, &mut buf);
    assert_eq!(
        buf,
        "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;amp;&#x27;&lt;/a&gt;"
    );
    sanitize_into("ab&", 4, &mut buf);
    assert_eq!(buf, "ab&a");
    sanitize_into("é\u{1F600}xyz", 2, &mut buf);
    assert_eq!(buf, "é\u{1F600}");
    sanitize_into("/\\", usize::MAX, &mut buf);
    assert_eq!(buf, "/\\");
}

#[test]
fn sanitised_strings_are_written_as_cjson() {
    let mut out = Vec::new();
    write_sanitized(&mut out, " é\u{1F600}\"\\\n ", usize::MAX);
    assert_eq!(out, br#""\u00e9\ud83d\ude00&quot;\\""#);
    out.clear();
    write_sanitized(&mut out, "'<x>'", 7);
    assert_eq!(out, br#""&#x27;&""#);
}

#[test]
fn escaped_json_strings_decode_like_the_parser() {
    use super::super::sanitize::node_text;
    let src =
        r#"["a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00é😀", "\\", "\u0000x", "plain"]"#;
    let mut tape = crate::json::Tape::new();
    let doc = tape.parse(src.as_bytes()).expect("parses");
    let mut buf = String::new();
    for e in doc.elements(Doc::ROOT) {
        assert_eq!(node_text(&doc, e, &mut buf), doc.str(e));
    }
}
