//! The gateway's wall clock stepping back and forward by minutes (the dev-mode test seam, not
//! the host clock): an expired request is never accepted, a fresh one is never refused outside
//! the contract's skew rule, and a nonce is never accepted twice, even when the clock comes
//! back to a time at which its request would be fresh again.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};

use vvgate_e2e::*;

const SKEW: u64 = 30;

fn step(file: &Path, g: &Gateway, secs: i64) {
    std::fs::write(file, secs.to_string()).unwrap();
    // The gateway re-reads the file every 100 ms: wait until a request signed for the
    // gateway's new "now" is fresh to it (the skew check answers before anything is stored).
    let p = g.pki.producer();
    wait_for(10, "the clock step to take effect", || {
        let ts = now().saturating_add_signed(secs);
        let probe = event_with(ts, &nonce(), |_| {});
        let mut req = request(&p, &probe);
        // A bad signature: fresh timestamps get 401 for the signature, stale ones for skew;
        // either way nothing is accepted or stored.
        let sig_at = req
            .windows(22)
            .position(|w| w == b"X-Telemetry-Signature:")
            .unwrap()
            + 23;
        req[sig_at] = if req[sig_at] == b'A' { b'B' } else { b'A' };
        let r = g.connect().send(&req).unwrap();
        r.status == 401 && !r.body_text().contains("skew")
    });
}

fn send(g: &Gateway, s: &Signed) -> (u16, String) {
    let r = g.connect().send(&request(&g.pki.producer(), s)).unwrap();
    (r.status, r.body_text())
}

#[test]
fn clock_steps_never_accept_expired_or_replayed_requests() {
    let dir = temp_dir("clock");
    let file: PathBuf = dir.join("clock-step");
    std::fs::write(&file, "0").unwrap();
    let pki = Pki::new(&dir.join("pki"));
    let mut opts = Opts::default()
        .with(&format!("allowed_clock_skew_seconds = {SKEW}"))
        .with("nonce_ttl_seconds = 120");
    opts.env.push((
        "VVGATE_DEV_CLOCK_STEP_FILE".into(),
        file.display().to_string(),
    ));
    let g = Gateway::start_in(dir.clone(), pki, opts);

    // Accepted at the true time.
    let first = valid();
    assert_eq!(send(&g, &first).0, 202);

    // Forward 10 minutes: the request signed a moment ago is now expired, and its re-send too.
    step(&file, &g, 600);
    let stale = valid();
    let (status, body) = send(&g, &stale);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("skew"), "{body}");
    assert_eq!(send(&g, &first).0, 401);
    // A request signed for the gateway's time is fresh.
    let ahead = event_with(now() + 600, &nonce(), |_| {});
    assert_eq!(send(&g, &ahead).0, 202);
    // Nonce sweeps run with a commit at most once a second: make commits (each refusal is
    // audited) for a few seconds at the stepped time.
    for _ in 0..6 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(send(&g, &stale).0, 401);
    }

    // Back to the true time: the first request is fresh again by its timestamp, but its nonce
    // was used: 409, never a second 202. The one signed 10 minutes ahead is expired.
    step(&file, &g, 0);
    let (status, body) = send(&g, &first);
    assert_eq!(
        status, 409,
        "a nonce accepted twice after a clock step: {body}"
    );
    assert_eq!(send(&g, &ahead).0, 401);
    assert_eq!(send(&g, &valid()).0, 202);

    // Back 1 minute: requests signed at the true time are from the future beyond the skew;
    // those signed for the gateway's time are fresh, once.
    step(&file, &g, -60);
    assert_eq!(send(&g, &valid()).0, 401);
    let behind = event_with(now() - 60, &nonce(), |_| {});
    assert_eq!(send(&g, &behind).0, 202);
    assert_eq!(send(&g, &behind).0, 409);

    // Back 10 minutes, past the nonce retention (skew + TTL): nonces signed that long ago may
    // have been expired, so a request signed for that time is refused as stale rather than
    // risk accepting a nonce twice.
    step(&file, &g, -600);
    let (status, body) = send(&g, &event_with(now() - 600, &nonce(), |_| {}));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("skew"), "{body}");

    // Exactly at the skew bounds (the contract's rule is |now - ts| <= skew).
    step(&file, &g, 0);
    let edge = event_with(now() - SKEW + 2, &nonce(), |_| {});
    assert_eq!(send(&g, &edge).0, 202);

    // Each accepted nonce is stored once.
    let spool = g.spool();
    let mut nonces: Vec<String> = spool
        .iter()
        .map(|e| e["body"]["payload"]["nonce"].as_str().unwrap().to_owned())
        .collect();
    let n = nonces.len();
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), n, "a nonce spooled twice");
    assert_eq!(n, 5);
}
