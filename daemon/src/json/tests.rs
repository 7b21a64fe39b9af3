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
