use super::*;

fn canon(s: &str) -> Result<String, JsonError> {
    canonicalize_doc(s.as_bytes()).map(|v| String::from_utf8(v).unwrap())
}

fn repr(v: f64) -> String {
    let mut out = Vec::new();
    float_repr(&mut out, v);
    String::from_utf8(out).unwrap()
}

#[test]
fn python_float_repr() {
    let cases: &[(f64, &str)] = &[
        (1.0, "1.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (2.5e-7, "2.5e-07"),
        (1e16, "1e+16"),
        (1e15, "1000000000000000.0"),
        (0.82, "0.82"),
        (0.1 + 0.2, "0.30000000000000004"),
        (123456789.125, "123456789.125"),
        (1.5e300, "1.5e+300"),
        (-1.25e-300, "-1.25e-300"),
        (100.0, "100.0"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (12345678901234567.0, "1.2345678901234568e+16"),
        (0.001234, "0.001234"),
    ];
    for &(v, want) in cases {
        assert_eq!(repr(v), want, "repr of {v:e}");
    }
}

#[test]
fn canonical_form_sorts_keys_and_escapes_like_python() {
    assert_eq!(
        canon(r#" { "b" : 1 , "a" : [ true , false , null ] } "#).unwrap(),
        r#"{"a":[true,false,null],"b":1}"#
    );
    // Non-ASCII escaped with lowercase hex; astral plane as a surrogate pair; DEL escaped;
    // `/ < > &` kept.
    assert_eq!(
        canon("[\"é\u{1F600}\u{7f}/<>&\\/\"]").unwrap(),
        r#"["\u00e9\ud83d\ude00\u007f/<>&/"]"#
    );
    assert_eq!(
        canon(r#"["\b\f\n\r\t\u0001\"\\"]"#).unwrap(),
        r#"["\b\f\n\r\t\u0001\"\\"]"#
    );
    // Keys sorted by code point, escaped keys decoded before sorting.
    assert_eq!(
        canon(r#"{"\u00e9":1,"z":2,"\u0041":3}"#).unwrap(),
        r#"{"A":3,"z":2,"\u00e9":1}"#
    );
    // Numbers: -0 becomes 0, exponent forms are floats, big integers are kept digit for digit.
    assert_eq!(
        canon("[-0,1E2,1.50,123456789012345678901234567890,-0.0]").unwrap(),
        "[0,100.0,1.5,123456789012345678901234567890,-0.0]"
    );
}

#[test]
fn rejects_what_the_contract_rejects() {
    let bad: &[&str] = &[
        "",
        "   ",
        "\u{feff}{}",
        "{\"a\":1,}",
        "[1,]",
        "{\"a\":1",
        "{'a':1}",
        "NaN",
        "[Infinity]",
        "[-Infinity]",
        "[1e400]",
        "[-1e400]",
        "[01]",
        "[1.]",
        "[.5]",
        "[1e]",
        "[+1]",
        "[\"\\ud800\"]",
        "[\"\\udc00\"]",
        "[\"\\ud800\\u0041\"]",
        "[\"\\x41\"]",
        "[\"a\tb\"]",
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"\\u0061\":2}",
        "{} {}",
        "[true false]",
        "tru",
        "nul",
    ];
    for s in bad {
        assert!(canon(s).is_err(), "should reject {s:?}");
    }
    assert_eq!(
        canonicalize_doc(&[b'"', 0xff, b'"']),
        Err(JsonError::NotUtf8)
    );
}

#[test]
fn duplicate_keys_found_in_large_objects_and_nested_ones() {
    let mut s = String::from("{");
    for i in 0..40 {
        s.push_str(&format!("\"k{i}\":{i},"));
    }
    s.push_str("\"k7\":0}");
    assert!(matches!(canon(&s), Err(JsonError::DuplicateKey(_))));
    assert!(matches!(
        canon(r#"{"a":{"x":1,"x":1}}"#),
        Err(JsonError::DuplicateKey(_))
    ));
    // Same key in sibling objects is fine.
    assert!(canon(r#"[{"x":1},{"x":1}]"#).is_ok());
}

#[test]
fn nesting_limit_is_64() {
    let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
    assert!(canon(&ok).is_ok());
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    assert!(matches!(canon(&deep), Err(JsonError::TooDeep(_))));
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(65), "}".repeat(65));
    assert!(matches!(canon(&deep_obj), Err(JsonError::TooDeep(_))));
}

#[test]
fn navigation_and_decoding() {
    let src = br#"{"a":"x\"y","b":[1,{"c":null}],"d":"\u00e9t\u00e9","e":-5}"#;
    let mut tape = Tape::new();
    let doc = tape.parse(src).unwrap();
    let a = doc.get(Doc::ROOT, "a").unwrap();
    assert_eq!(doc.str(a), "x\"y");
    assert_eq!(doc.char_len(a), 3);
    let b = doc.get(Doc::ROOT, "b").unwrap();
    assert_eq!(doc.elements(b).count(), 2);
    let second = doc.elements(b).nth(1).unwrap();
    assert_eq!(doc.kind(doc.get(second, "c").unwrap()), Kind::Null);
    let d = doc.get(Doc::ROOT, "d").unwrap();
    assert!(doc.str_eq(d, "été"));
    assert_eq!(doc.char_len(d), 3);
    assert_eq!(doc.as_i64(doc.get(Doc::ROOT, "e").unwrap()), Some(-5));
    assert!(doc.get(Doc::ROOT, "zz").is_none());
}

#[test]
fn cjson_builder_separators() {
    let mut out = Vec::new();
    Cjson::new(&mut out)
        .begin_obj()
        .key("a")
        .begin_arr()
        .u64(1)
        .str("x")
        .end_arr()
        .key("b")
        .begin_obj()
        .end_obj()
        .key("c")
        .i64(-3)
        .end_obj();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"a":[1,"x"],"b":{},"c":-3}"#
    );
}

/// A small deterministic generator (no dependency): xorshift64*.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn string_scan_stops_where_a_byte_by_byte_scan_does() {
    // Bytes next to the ones that stop the scan, and those that could borrow into them.
    const ALPHABET: &[u8] = &[
        0x00, 0x01, 0x1f, 0x20, 0x21, b'"', 0x23, 0x5b, b'\\', 0x5d, b'a', 0x7f, 0x80, 0x9f, 0xa0,
        0xa2, 0xdc, 0xff,
    ];
    let naive = |s: &[u8], from: usize| {
        (from..s.len())
            .find(|&i| s[i] == b'"' || s[i] == b'\\' || s[i] < 0x20)
            .unwrap_or(s.len())
    };
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = usize::try_from(g.next() % 40).unwrap();
        // Mostly plain bytes, so stops land at every offset within a word.
        let s: Vec<u8> = (0..len)
            .map(|_| match g.next() % 8 {
                0 => ALPHABET[usize::try_from(g.next() % 18).unwrap()],
                _ => b'a' + u8::try_from(g.next() % 26).unwrap(),
            })
            .collect();
        for from in 0..=len {
            assert_eq!(
                parse::string_stop(&s, from),
                naive(&s, from),
                "{s:?} from {from}"
            );
        }
    }
    assert_eq!(parse::string_stop(b"abc", 7), 7);
}

#[test]
fn string_errors_name_the_same_offsets() {
    let mut tape = Tape::new();
    for at in 0..20 {
        // A control character after `at` plain bytes: reported at its own offset.
        let mut s = b"[\"".to_vec();
        s.extend(std::iter::repeat_n(b'x', at));
        s.push(0x1f);
        s.extend_from_slice(b"\"]");
        assert_eq!(
            tape.parse(&s).err(),
            Some(JsonError::ControlCharInString(2 + at))
        );
        // The same behind an escape.
        let mut s = b"[\"\\n".to_vec();
        s.extend(std::iter::repeat_n(b'y', at));
        s.push(b'\n');
        s.extend_from_slice(b"\"]");
        assert_eq!(
            tape.parse(&s).err(),
            Some(JsonError::ControlCharInString(4 + at))
        );
        // Unterminated, after plain text, a whole escape and a cut one.
        let mut s = b"[\"".to_vec();
        s.extend(std::iter::repeat_n(b'z', at));
        assert_eq!(tape.parse(&s).err(), Some(JsonError::UnexpectedEnd));
        s.extend_from_slice(b"\\\"");
        assert_eq!(tape.parse(&s).err(), Some(JsonError::UnexpectedEnd));
        s.push(b'\\');
        assert_eq!(tape.parse(&s).err(), Some(JsonError::UnexpectedEnd));
        // A bad escape is reported at its backslash.
        let mut s = b"[\"".to_vec();
        s.extend(std::iter::repeat_n(b'w', at));
        s.extend_from_slice(b"\\q\"]");
        assert_eq!(tape.parse(&s).err(), Some(JsonError::BadEscape(2 + at)));
    }
    // Non-ASCII and DEL are plain string content; an escaped string records its escape.
    let doc = tape
        .parse("[\"\u{7f}é\u{1F600}\\\"\\u00e9 more than eight bytes\"]".as_bytes())
        .unwrap();
    let s = doc.elements(Doc::ROOT).next().unwrap();
    assert!(doc.node(s).flag);
    assert_eq!(doc.str(s), "\u{7f}é\u{1F600}\"é more than eight bytes");
}

#[test]
fn duplicate_keys_by_decoded_text_with_the_same_offset() {
    let mut tape = Tape::new();
    // 20 members: the sorted path. An escaped key equal to a plain one, keys sharing their
    // first eight bytes, and keys that differ only past a zero byte.
    let mut s = String::from("{");
    for i in 0..17 {
        s.push_str(&format!("\"attribute_{i:02}\":{i},"));
    }
    s.push_str(r#""ab":1,"ab\u0000":2,"ab\u0000\u0000":3}"#);
    assert!(tape.parse(s.as_bytes()).is_ok(), "{s}");
    let dup = s.replace(r#""ab":1"#, r#""attribute_\u0030\u0037":1"#);
    let second = dup.find(r#""attribute_\u0030"#).unwrap() + 1;
    assert_eq!(
        tape.parse(dup.as_bytes()).err(),
        Some(JsonError::DuplicateKey(second))
    );
    // Two duplicated keys: the one first in key order is reported, at its later occurrence.
    let mut s = String::from("{\"zz\":0,");
    for i in 0..17 {
        s.push_str(&format!("\"k{i:02}\":{i},"));
    }
    s.push_str("\"aa\":1,\"zz\":2,\"aa\":3}");
    let later_aa = s.rfind("\"aa\"").unwrap() + 1;
    assert_eq!(
        tape.parse(s.as_bytes()).err(),
        Some(JsonError::DuplicateKey(later_aa))
    );
    // The pairwise path (16 members or fewer): the second occurrence of the first pair in
    // document order.
    let s = r#"{"b":1,"a":2,"\u0062":3,"a":4}"#;
    assert_eq!(
        tape.parse(s.as_bytes()).err(),
        Some(JsonError::DuplicateKey(s.find(r#""\u0062"#).unwrap() + 1))
    );
    // Prefix order agrees with code point order, so canonical output is unchanged.
    assert_eq!(
        canon("{\"ab\\u0000\":1,\"ab\":2,\"\u{e9}\":3,\"abcdefghij\":4,\"abcdefghi\":5}").unwrap(),
        r#"{"ab":2,"ab\u0000":1,"abcdefghi":5,"abcdefghij":4,"\u00e9":3}"#
    );
}
