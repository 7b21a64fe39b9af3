//! Producer signing-key rotation against the real daemon: during the overlap the active and
//! the next key both verify and the audit entry names the key that did; once the active key
//! is past `spectrastrike_ed25519_public_key_not_after` it is refused with 401.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use vvgate_e2e::*;

/// Write a second producer signing key (raw seed) next to the dev PKI; returns its public
/// key in base64.
fn next_key(pki: &Pki) -> String {
    extra_producer_key(pki, "producer-next", 0x5a)
}

/// Send one fresh event signed by `p`: (status, request id).
fn send(g: &Gateway, p: &vvgate::client::Producer) -> (u16, String) {
    let r = g.connect().send(&request(p, &valid())).expect("response");
    let id = r.header("x-request-id").unwrap_or_default().to_owned();
    (r.status, id)
}

/// A fresh state directory under `dir` for one start.
fn state(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("state dir");
    d
}

fn rotation_opts(next_b64: &str, active_not_after: u64, next_not_before: u64) -> Opts {
    Opts::default()
        .with(&format!(
            "spectrastrike_ed25519_next_public_key_b64 = \"{next_b64}\""
        ))
        .with(&format!(
            "spectrastrike_ed25519_public_key_not_after = {active_not_after}"
        ))
        .with(&format!(
            "spectrastrike_ed25519_next_not_before = {next_not_before}"
        ))
}

#[test]
fn producer_key_rotation_overlaps_then_refuses_the_old_key() {
    let dir = temp_dir("rotation");
    let pki = Pki::new(&dir.join("pki"));
    let next_b64 = next_key(&pki);
    let old = pki.producer();
    let new = producer_with(&pki, "producer-next.seed");
    let t = now();

    // Before the next key's start only the active key verifies.
    let mut g = Gateway::start_in(
        state(&dir, "before"),
        pki.clone(),
        rotation_opts(&next_b64, t + 7200, t + 3600),
    );
    assert_eq!(send(&g, &old).0, 202);
    let (status, id) = send(&g, &new);
    assert_eq!(status, 401, "the next key is not valid yet");
    let e = g.audit_for(&id).expect("audit entry");
    assert_eq!(e["details"]["detail"], "Invalid telemetry signature");
    g.stop();

    // Overlap: both verify, and each accepted entry names the key that verified it.
    let mut g = Gateway::start_in(
        state(&dir, "overlap"),
        pki.clone(),
        rotation_opts(&next_b64, t + 3600, t - 60),
    );
    let (s_old, id_old) = send(&g, &old);
    let (s_new, id_new) = send(&g, &new);
    assert_eq!((s_old, s_new), (202, 202));
    let e_old = g.audit_for(&id_old).expect("audit entry (old key)");
    let e_new = g.audit_for(&id_new).expect("audit entry (new key)");
    assert_eq!(e_old["event_type"], "telemetry.accepted");
    assert_eq!(e_old["details"]["key_id"], key_id(&pki.producer_public_b64));
    assert_eq!(e_new["details"]["key_id"], key_id(&next_b64));
    assert_ne!(e_old["details"]["key_id"], e_new["details"]["key_id"]);
    g.stop();

    // The old key retired: refused with 401 and audited as such; the new key still verifies.
    let g = Gateway::start_in(
        state(&dir, "after"),
        pki.clone(),
        rotation_opts(&next_b64, t - 1, t - 60),
    );
    let (status, id) = send(&g, &old);
    assert_eq!(status, 401, "a retired key must not verify");
    let e = g.audit_for(&id).expect("audit entry");
    assert_eq!(e["event_type"], "telemetry.rejected");
    assert_eq!(e["details"]["detail"], "Invalid telemetry signature");
    let (status, id) = send(&g, &new);
    assert_eq!(status, 202);
    assert_eq!(
        g.audit_for(&id).expect("audit entry")["details"]["key_id"],
        key_id(&next_b64)
    );
}
