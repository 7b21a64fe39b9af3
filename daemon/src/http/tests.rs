use super::*;

fn head(text: &str) -> Result<Head, HeadError> {
    let buf = text.as_bytes();
    let end = find_head_end(buf, 0).expect("complete head");
    parse_head(&buf[..end])
}

#[test]
fn parses_the_producer_request_head() {
    let text = "POST /internal/v1/telemetry HTTP/1.1\r\nHost: gw:8443\r\nUser-Agent: python-requests/2.32\r\n\
Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n\
X-Service-Identity:  spectrastrike-producer \r\nX-Client-Cert-Sha256: AB\r\nX-Telemetry-Timestamp: 1772107200\r\n\
X-Telemetry-Nonce: n-1\r\nX-Telemetry-Signature: c2ln\r\nIdempotency-Key: k\r\nContent-Length: 12\r\n\r\n{\"a\":1}";
    let h = head(text).unwrap();
    let buf = text.as_bytes();
    assert_eq!(h.method, Some(Method::Post));
    assert_eq!(h.path.str(buf), "/internal/v1/telemetry");
    assert_eq!(h.content_length, Some(12));
    assert_eq!(
        h.service_identity.unwrap().str(buf),
        "spectrastrike-producer"
    );
    assert_eq!(h.timestamp.unwrap().str(buf), "1772107200");
    assert_eq!(h.idempotency_key.unwrap().str(buf), "k");
    assert!(!h.close && !h.http10 && !h.transfer_encoding && !h.expect_continue);
    assert_eq!(&buf[h.len..], b"{\"a\":1}");
}

#[test]
fn duplicate_security_headers_and_bad_bytes_are_malformed() {
    for dup in [
        "Content-Length: 1\r\nContent-Length: 1",
        "Content-Type: a\r\ncontent-type: a",
        "X-Service-Identity: a\r\nX-Service-Identity: b",
        "X-Client-Cert-Sha256: a\r\nx-client-cert-sha256: a",
        "X-Telemetry-Nonce: a\r\nX-Telemetry-Nonce: a",
        "Content-Length: 1a",
        "Content-Length: -1",
        "Content-Length: 99999999999999999999",
    ] {
        let t = format!("POST / HTTP/1.1\r\n{dup}\r\n\r\n");
        assert_eq!(head(&t).unwrap_err(), HeadError::Malformed, "{dup}");
    }
    let mut raw = b"POST / HTTP/1.1\r\nX-Telemetry-Nonce: caf\xc3\xa9\r\n\r\n".to_vec();
    assert_eq!(parse_head(&raw).unwrap_err(), HeadError::Malformed);
    raw = b"GARBAGE\r\n\r\n".to_vec();
    assert_eq!(parse_head(&raw).unwrap_err(), HeadError::Malformed);
    assert_eq!(
        head("GET http://x/ HTTP/1.1\r\n\r\n").unwrap_err(),
        HeadError::Malformed
    );
}

#[test]
fn too_many_headers_is_431() {
    let mut t = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        t.push_str(&format!("X-H{i}: v\r\n"));
    }
    t.push_str("\r\n");
    assert_eq!(head(&t).unwrap_err(), HeadError::TooLarge);
}

#[test]
fn connection_semantics() {
    assert!(head("GET / HTTP/1.0\r\n\r\n").unwrap().close);
    assert!(
        !head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .close
    );
    assert!(
        head("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n")
            .unwrap()
            .close
    );
    assert!(
        head("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .expect_continue
    );
    assert!(
        head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .transfer_encoding
    );
}

#[test]
fn json_media_type_rules() {
    for ok in [
        &b"application/json"[..],
        b"Application/JSON",
        b"application/json; charset=utf-8",
        b"application/json;charset=\"UTF-8\"",
        b"application/json; foo=bar",
    ] {
        assert!(is_json_content_type(ok), "{}", String::from_utf8_lossy(ok));
    }
    for bad in [
        &b"text/plain"[..],
        b"application/json; charset=latin-1",
        b"application/jsonx",
        b"application/json-patch+json",
        b"",
    ] {
        assert!(
            !is_json_content_type(bad),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(is_identity_encoding(None));
    assert!(is_identity_encoding(Some(b"Identity")));
    assert!(!is_identity_encoding(Some(b"gzip")));
}

#[test]
fn head_end_search_resumes() {
    let buf = b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest";
    assert_eq!(find_head_end(buf, 0), Some(24));
    assert_eq!(find_head_end(buf, 22), Some(24));
    assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
    assert!(has_request_line(b"GET / HTTP/1.1\r\nX"));
    assert!(!has_request_line(b"GET / HT"));
}

#[test]
fn response_serialisation() {
    let mut out = Vec::new();
    let mut r = Response::new(429);
    r.retry_after = Some(7);
    r.close = true;
    let mut body = Vec::new();
    error_body(&mut body, "Operator burst anomaly detected");
    write_response(&mut out, &r, &body);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\
Retry-After: 7\r\nConnection: close\r\n\r\n{\"detail\":\"Operator burst anomaly detected\"}"
    );
}

/// The connection deadline never passes early, whether it moved later (the timer then fires
/// first at its old place and is set again) or earlier (the timer is moved).
#[test]
fn the_connection_deadline_follows_its_last_setting() {
    use std::time::{Duration, Instant};
    smol::block_on(async {
        let mut d = conn::Deadline::new();
        let start = Instant::now();
        d.set_after(Duration::from_millis(30));
        d.set_after(Duration::from_millis(150));
        d.passed().await;
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "passed early"
        );

        let start = Instant::now();
        d.set_after(Duration::from_secs(30));
        d.set_after(Duration::from_millis(40));
        d.passed().await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(40), "passed early");
        assert!(
            took < Duration::from_secs(20),
            "the earlier deadline was not kept"
        );

        // Set again after passing.
        let start = Instant::now();
        d.set_after(Duration::from_millis(20));
        d.passed().await;
        assert!(start.elapsed() >= Duration::from_millis(20), "passed early");
    });
}
