//! The command lines: `vvgated --check-config` names bad keys and exits 78; `vvctl` commands
//! work against a live gateway.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;

use vvgate_e2e::*;

fn check_config(config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(bin("vvgated"));
    cmd.arg("--check-config").arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn check_config_accepts_a_valid_config_and_names_every_bad_key() {
    let dir = temp_dir("cli");
    let pki = Pki::new(&dir.join("pki"));
    let path = dir.join("vvgate.toml");
    let good = config_text(&dir, &pki, &Opts::default());
    std::fs::write(&path, &good).unwrap();
    let (code, out) = check_config(&path, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is valid"));

    let bad = good.replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nallowed_clock_skew_seconds = 0\nrequire_mtls = false",
        1,
    );
    std::fs::write(&path, &bad).unwrap();
    let (code, out) = check_config(&path, &[]);
    assert_eq!(code, 78, "{out}");
    assert!(
        out.contains(
            "telemetry_gateway.allowed_clock_skew_seconds: must be between 1 and 3600 (got 0)"
        ),
        "{out}"
    );
    assert!(out.contains("telemetry_gateway.require_mtls"), "{out}");

    std::fs::write(&path, &good).unwrap();
    let (code, out) = check_config(&path, &[("VV_TG_NONCE_TTL_SECONDS", "ten")]);
    assert_eq!(code, 78);
    assert!(
        out.contains("VV_TG_NONCE_TTL_SECONDS (telemetry_gateway.nonce_ttl_seconds)"),
        "{out}"
    );

    // A key file that does not match the certificate, and a missing CA file.
    let swapped = good.replace("server.key", "producer.key");
    std::fs::write(&path, &swapped).unwrap();
    let (code, out) = check_config(&path, &[]);
    assert_ne!(code, 0);
    assert!(out.contains("does not match"), "{out}");
    let missing = good.replace("/ca.pem", "/nope.pem");
    std::fs::write(&path, &missing).unwrap();
    let (code, out) = check_config(&path, &[]);
    assert_eq!(code, 78);
    assert!(out.contains("tls.client_ca_path"), "{out}");

    let (code, out) = check_config(&dir.join("absent.toml"), &[]);
    assert_eq!(code, 78);
    assert!(out.contains("cannot read the configuration file"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_pki_and_send_and_spool_tail() {
    let g = Gateway::start();
    let out_dir = g.dir.join("newpki");
    let (code, out, err) = vvctl(&["dev-pki", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("X-Client-Cert-Sha256"));
    for f in [
        "ca.pem",
        "server.pem",
        "producer.pem",
        "producer.key",
        "producer-signing.seed",
        "checkpoint.pem",
    ] {
        assert!(out_dir.join(f).exists(), "{f}");
    }

    let cfg = g.config.to_str().unwrap().to_owned();
    let pki = &g.pki.dir;
    let p = |f: &str| pki.join(f).to_str().unwrap().to_owned();
    let producer_args = [
        "--ca",
        &p("ca.pem"),
        "--cert",
        &p("producer.pem"),
        "--key",
        &p("producer.key"),
        "--signing-key",
        &p("producer-signing.seed"),
    ];
    let target = g.addr.to_string();
    let mut args = vec!["send", "--target", &target, "--repeat", "2"];
    args.extend_from_slice(&producer_args);
    let (code, out, err) = vvctl(&args);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("202 ")).count(),
        2,
        "{out}"
    );

    // A file of events as JSON lines, one of them unacceptable: exit 1, each answer printed.
    let events = g.dir.join("events.jsonl");
    let mut bad = sample();
    bad["payload"]["mitre_techniques"] = serde_json::json!(["T9999"]);
    std::fs::write(&events, format!("{}\n{}\n", sample(), bad)).unwrap();
    let mut args = vec!["send", "--target", &target, events.to_str().unwrap()];
    args.extend_from_slice(&producer_args);
    let (code, out, _) = vvctl(&args);
    assert_eq!(code, 1);
    assert!(out.contains("202 ") && out.contains("422 "), "{out}");

    let (code, out, _) = vvctl(&["spool", "tail", "--config", &cfg, "-n", "2"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["kind"], "dead_letter");
    assert_eq!(lines[0]["kind"], "ingest");

    let (code, out, _) = vvctl(&["status", "--config", &cfg]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["spool_events"], 4);
    assert_eq!(v["ready"], true);
}
