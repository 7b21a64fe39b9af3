//! Operating the appliance: the kill switch (rows 54 and 73, audit, restart, two-officer
//! re-arm, the serial console, refused peers), the time from `kill` to the last accepted
//! request under load, hot reload (bad files refused, pins and CRLs applied to open
//! connections, expired CRLs fail closed), sd_notify and the hardened systemd unit.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vvgate::client::Connection;
use vvgate_e2e::*;

/// Two officers' secret files (made by `vvctl officer new`) and the `rearm_officers` line.
struct Officers {
    files: [PathBuf; 2],
    toml: String,
}

fn officers(dir: &Path) -> Officers {
    std::fs::create_dir_all(dir).unwrap();
    let mut lines = Vec::new();
    let mut files = Vec::new();
    for name in ["security", "platform"] {
        let file = dir.join(format!("{name}.secret"));
        let (code, out, err) = vvctl(&[
            "officer",
            "new",
            "--name",
            name,
            "--out",
            file.to_str().unwrap(),
            "--iterations",
            "10000",
        ]);
        assert_eq!(code, 0, "{err}");
        let line = out
            .lines()
            .find(|l| !l.starts_with('#'))
            .expect("verifier line")
            .to_owned();
        assert!(line.contains("pbkdf2-sha256$10000$"), "{line}");
        lines.push(line);
        files.push(file);
    }
    Officers {
        files: [files[0].clone(), files[1].clone()],
        toml: format!("rearm_officers = {{ {} }}", lines.join(", ")),
    }
}

fn socket(g: &Gateway) -> String {
    g.control.display().to_string()
}

fn events(g: &Gateway, event_type: &str) -> Vec<serde_json::Value> {
    g.audit()
        .into_iter()
        .filter(|e| e["event_type"] == event_type)
        .collect()
}

/// Whether a new producer connection can get an answer to one request.
fn producer_refused(g: &Gateway) -> bool {
    match Connection::connect_tls(
        g.addr,
        "localhost",
        g.pki.producer().tls.clone(),
        Duration::from_secs(10),
    ) {
        Err(_) => true,
        Ok(mut c) => c.send(&request(&g.pki.producer(), &valid())).is_err(),
    }
}

fn readiness(g: &Gateway) -> (u16, serde_json::Value) {
    let r = g.ops_get("/readyz");
    (r.status, json(&r))
}

/// Whether the server closed `c` (a read sees the end of the stream or an error).
fn closed_by_server(c: &mut Connection) -> bool {
    c.read_response().is_err()
}

#[test]
fn kill_switch_refuses_producers_survives_restart_and_needs_two_officers_to_rearm() {
    let dir = temp_dir("ops-kill");
    let off = officers(&dir.join("officers"));
    let pki = Pki::new(&dir.join("pki"));
    let opts = Opts {
        extra_toml: off.toml.clone(),
        ..Opts::default()
    };
    let mut g = Gateway::start_in(dir.clone(), pki, opts);
    let p = g.pki.producer();

    // An idle keep-alive connection, and one in the middle of a request.
    let mut idle = g.connect();
    assert_eq!(idle.send(&request(&p, &valid())).unwrap().status, 202);
    let mut busy = g.connect();
    let req = request(&p, &valid());
    let split = req.len() - 10;
    busy.write_raw(&req[..split]).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let (code, out, err) = g.vvctl(&["kill", "--socket", &socket(&g), "--reason", "drill"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"kill_switch\":\"engaged\""), "{out}");

    // Row 54: the request in progress is answered 403 and its connection closed.
    busy.write_raw(&req[split..]).unwrap();
    let r = busy.read_response().unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(json(&r)["detail"], "Gateway kill switch engaged");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed_by_server(&mut busy));
    // The idle connection was closed at once; new handshakes are refused.
    assert!(closed_by_server(&mut idle));
    assert!(producer_refused(&g));

    // Row 73.
    let h = g.ops_get("/healthz");
    assert_eq!(h.status, 200);
    assert_eq!(
        json(&h),
        serde_json::json!({"status":"degraded","detail":"kill_switch_engaged"})
    );
    let (status, body) = readiness(&g);
    assert_eq!(status, 503);
    assert!(body["reasons"]
        .as_array()
        .unwrap()
        .contains(&"kill_switch_engaged".into()));
    let metrics = g.ops_get("/metrics").body_text();
    assert!(
        metrics.contains("\nvvgate_kill_switch_engaged 1\n"),
        "{metrics}"
    );

    // Audited: the kill, the 403, the refused handshakes.
    let kills = events(&g, "control.kill");
    assert_eq!(kills.len(), 1);
    assert_eq!(kills[0]["details"]["reason"], "drill");
    assert!(kills[0]["details"]["by"]
        .as_str()
        .unwrap()
        .starts_with("socket uid="));
    assert!(g.audit().iter().any(|e| e["event_type"] == "http.rejected"
        && e["details"]["detail"] == "Gateway kill switch engaged"));
    wait_for(10, "tls.rejected kill_switch_engaged", || {
        events(&g, "tls.rejected")
            .iter()
            .any(|e| e["details"]["sub_reason"] == "kill_switch_engaged")
    });

    // It survives a restart.
    g.restart();
    assert!(producer_refused(&g));
    assert_eq!(readiness(&g).0, 503);
    let status: serde_json::Value =
        serde_json::from_str(&g.control("{\"cmd\":\"status\"}")[0]).unwrap();
    assert_eq!(status["kill_switch"], "engaged");

    // Re-arm: one officer twice, a wrong secret, a single officer: all refused and audited.
    let [a, b] = &off.files;
    let wrong = dir.join("wrong.secret");
    std::fs::write(
        &wrong,
        "vvgate-officer-v1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let officer = |name: &str, f: &Path| format!("{name}={}", f.display());
    for args in [
        vec![officer("security", a), officer("security", a)],
        vec![officer("security", a), officer("platform", &wrong)],
        vec![officer("security", b), officer("platform", a)],
    ] {
        let mut argv = vec!["rearm".to_string(), "--socket".into(), socket(&g)];
        for o in &args {
            argv.push("--officer".into());
            argv.push(o.clone());
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, out, err) = g.vvctl(&argv);
        assert_ne!(code, 0, "re-arm with {args:?} accepted: {out}");
        assert!(err.contains("error"), "{err}");
    }
    let (code, _, err) = g.vvctl(&[
        "rearm",
        "--socket",
        &socket(&g),
        "--officer",
        &officer("security", a),
    ]);
    assert_eq!(code, 64, "{err}");
    assert_eq!(events(&g, "control.refused").len(), 3);
    assert!(producer_refused(&g));

    let (code, out, err) = g.vvctl(&[
        "rearm",
        "--socket",
        &socket(&g),
        "--officer",
        &officer("security", a),
        "--officer",
        &officer("platform", b),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let rearm = events(&g, "control.rearm");
    assert_eq!(rearm.len(), 1);
    assert_eq!(rearm[0]["details"]["officers"], "security,platform");
    // No secret reaches the audit log.
    let secret_a = std::fs::read_to_string(a).unwrap();
    assert!(!g.audit_lines().iter().any(|l| l.contains(secret_a.trim())));
    assert_eq!(
        g.connect().send(&request(&p, &valid())).unwrap().status,
        202
    );
    assert_eq!(readiness(&g).0, 200);
    g.restart();
    assert_eq!(
        g.connect().send(&request(&p, &valid())).unwrap().status,
        202
    );
}

#[test]
fn kill_under_load_stops_acceptance_within_a_bounded_time() {
    let g = Gateway::start();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (p, addr, stop) = (g.pki.producer(), g.addr, Arc::clone(&stop));
            std::thread::spawn(move || {
                // (sent at, answered at, status) of every request.
                let mut log: Vec<(Instant, Instant, Option<u16>)> = Vec::new();
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    if conn.is_none() {
                        match Connection::connect_tls(
                            addr,
                            "localhost",
                            p.tls.clone(),
                            Duration::from_secs(5),
                        ) {
                            Ok(c) => conn = Some(c),
                            Err(_) => {
                                // A refused handshake counts as a request that got nothing.
                                log.push((Instant::now(), Instant::now(), None));
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                    }
                    let req = request(&p, &valid());
                    let sent = Instant::now();
                    let r = conn.as_mut().map(|c| c.send(&req));
                    let status = match r {
                        Some(Ok(r)) => Some(r.status),
                        _ => {
                            conn = None;
                            None
                        }
                    };
                    log.push((sent, Instant::now(), status));
                }
                log
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let kill_sent = Instant::now();
    let lines = g.control("{\"cmd\":\"kill\",\"reason\":\"load test\"}");
    let kill_acked = Instant::now();
    assert!(lines[0].contains("engaged"), "{lines:?}");
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let log: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();

    let accepted: Vec<_> = log.iter().filter(|l| l.2 == Some(202)).collect();
    let after_kill = log.iter().filter(|l| l.0 > kill_acked).count();
    // Nothing written after the kill was acknowledged is accepted.
    assert!(after_kill > 0, "no request was tried after the kill");
    assert!(
        !log.iter().any(|l| l.0 > kill_acked && l.2 == Some(202)),
        "a request sent after the kill was acknowledged got 202"
    );
    let last_accept = accepted.iter().map(|l| l.1).max().expect("some 202");
    let refused_403 = log.iter().filter(|l| l.2 == Some(403)).count();
    let broken = log.iter().filter(|l| l.2.is_none()).count();
    // Every 202 is durable: the spool holds exactly as many events as were answered 202.
    let spooled = g.spool().len();
    assert_eq!(spooled, accepted.len(), "202 answers vs spooled events");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "kill under load (4 producers): {} requests before the kill, kill acknowledged in {:.1} ms; \
         last 202 answered {:+.1} ms after the kill was sent ({:+.1} ms after its acknowledgement); \
         after it: {} × 403, {} broken/refused connections",
        accepted.len(),
        ms(kill_acked - kill_sent),
        last_accept.saturating_duration_since(kill_sent).as_secs_f64() * 1000.0,
        if last_accept > kill_acked {
            ms(last_accept - kill_acked)
        } else {
            -ms(kill_acked - last_accept)
        },
        refused_403,
        broken,
    );
}

#[test]
fn console_runs_the_commands_without_a_shell_and_foreign_users_are_refused() {
    let dir = temp_dir("ops-console");
    let off = officers(&dir.join("officers"));
    let pki = Pki::new(&dir.join("pki"));
    let opts = Opts {
        extra_toml: off.toml.clone(),
        ..Opts::default()
    };
    let g = Gateway::start_in(dir.clone(), pki, opts);
    let secret = |f: &Path| std::fs::read_to_string(f).unwrap().trim().to_owned();
    let script = format!(
        "help\n!sh\nsh -c id\nstatus\nkill\nconsole drill\nstatus\nrearm\nsecurity\n{}\nplatform\n{}\nstatus\nexit\nstatus\n",
        secret(&off.files[0]),
        secret(&off.files[1])
    );
    let mut child = Command::new(bin("vvgate-console"))
        .args(["--socket", &socket(&g)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rearm    re-arm the kill switch"), "{text}");
    assert!(text.contains("unknown command \"!sh\""), "{text}");
    assert!(text.contains("unknown command \"sh -c id\""), "{text}");
    assert!(!text.contains("uid="), "a shell ran: {text}");
    let states: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("\"kill_switch\":\"").nth(1))
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    // status, kill, status, rearm, status (nothing after exit).
    assert_eq!(
        states,
        ["armed", "engaged", "engaged", "armed", "armed"],
        "{text}"
    );
    assert!(
        !text.contains(&secret(&off.files[0])),
        "secret echoed: {text}"
    );
    let kill = &events(&g, "control.kill")[0];
    assert!(kill["details"]["by"]
        .as_str()
        .unwrap()
        .starts_with("console uid="));
    assert_eq!(kill["details"]["reason"], "console drill");

    // A user who is neither root, the gateway's user nor allowed: refused and audited.
    let state = g.control.parent().unwrap();
    let chmod = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chmod(state, 0o711);
    chmod(&g.control, 0o666);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("vvctl"))
        .args(["kill", "--socket", &socket(&g)])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not allowed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(10, "control.refused for uid 65534", || {
        events(&g, "control.refused").iter().any(|e| {
            e["details"]["by"]
                .as_str()
                .unwrap_or("")
                .contains("uid=65534")
        })
    });
    assert_eq!(events(&g, "control.kill").len(), 1);
    assert_eq!(
        g.connect()
            .send(&request(&g.pki.producer(), &valid()))
            .unwrap()
            .status,
        202
    );
}

/// The configuration file with `from` replaced by `to`.
fn edit_config(g: &Gateway, from: &str, to: &str) {
    let text = std::fs::read_to_string(&g.config).unwrap();
    assert!(text.contains(from), "{from} not in the configuration");
    std::fs::write(&g.config, text.replacen(from, to, 1)).unwrap();
}

fn reload(g: &Gateway) -> (i32, String, String) {
    g.vvctl(&["reload", "--socket", &socket(g)])
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[test]
fn reload_refuses_bad_files_and_applies_pins_and_crls_to_open_connections() {
    let g = Gateway::start();
    let p = g.pki.producer();
    let q = g.pki.producer_as("other", "other-service");
    let mut conn_p = g.connect();
    let mut conn_q = g.connect_as(&q);
    assert_eq!(conn_p.send(&request(&p, &valid())).unwrap().status, 202);
    let original = std::fs::read_to_string(&g.config).unwrap();

    // A bad file: refused with the key named, by vvctl and by SIGHUP; nothing changes.
    edit_config(&g, "[ops]", "[ops]\nmax_anything = 1");
    let (code, _, err) = reload(&g);
    assert_ne!(code, 0);
    assert!(err.contains("max_anything"), "{err}");
    std::fs::write(&g.config, &original).unwrap();
    edit_config(
        &g,
        "operator_tenant_map = {",
        "operator_tenant_map = { \"bad op\" = \"x\",",
    );
    let (code, _, err) = reload(&g);
    assert_ne!(code, 0);
    assert!(err.contains("operator_tenant_map"), "{err}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(g.pid()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(10, "two config.reload_rejected entries", || {
        events(&g, "config.reload_rejected").len() == 2 + 1
    });
    assert_eq!(conn_p.send(&request(&p, &valid())).unwrap().status, 202);
    assert_eq!(conn_q.send(&request(&q, &valid())).unwrap().status, 202);

    // A good reload that removes the pin of `other-service`: its open connection is closed,
    // P's open connection keeps working (no drop on a good reload).
    std::fs::write(&g.config, &original).unwrap();
    edit_config(
        &g,
        &format!(", \"other-service\" = \"{}\"", g.pki.other_pin),
        "",
    );
    let (code, out, err) = reload(&g);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["closed_connections"], 1, "{out}");
    assert!(closed_by_server(&mut conn_q));
    assert_eq!(conn_p.send(&request(&p, &valid())).unwrap().status, 202);
    let health = json(&g.ops_get("/healthz"));
    assert_eq!(
        health["trusted_identities"],
        serde_json::json!(["foreign-service", "spectrastrike-producer"])
    );

    // The contract's revocation row: a CRL revoking P closes P's open connection; a new
    // handshake fails and is audited as certificate_revoked.
    let ca = vvgate::devpki::DevCa::load(&g.pki.dir).unwrap();
    let t = i64::try_from(now()).unwrap();
    let crl = ca
        .crl(&[&pem_der(&g.pki.path("producer.pem"))], t - 60, t + 3600)
        .unwrap();
    let crl_path = g.dir.join("clients.crl.pem");
    std::fs::write(&crl_path, crl).unwrap();
    edit_config(
        &g,
        "[tls]\n",
        &format!("[tls]\ncrl_paths = [\"{}\"]\n", crl_path.display()),
    );
    let (code, out, err) = reload(&g);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"closed_connections\":1"), "{out}");
    assert!(closed_by_server(&mut conn_p));
    assert!(producer_refused(&g));
    wait_for(10, "tls.rejected certificate_revoked", || {
        events(&g, "tls.rejected")
            .iter()
            .any(|e| e["details"]["sub_reason"] == "certificate_revoked")
    });
    assert_eq!(readiness(&g).0, 200);

    // A CRL past its nextUpdate fails closed: readiness crl_unavailable, handshakes refused.
    let expired = ca.crl(&[], t - 7200, t - 3600).unwrap();
    std::fs::write(&crl_path, expired).unwrap();
    let (code, _, err) = reload(&g);
    assert_eq!(code, 0, "{err}");
    let (status, body) = readiness(&g);
    assert_eq!(status, 503);
    assert_eq!(body["reasons"], serde_json::json!(["crl_unavailable"]));
    assert!(producer_refused(&g));
    // A missing CRL is refused as a whole and the running configuration stays.
    std::fs::remove_file(&crl_path).unwrap();
    let (code, _, err) = reload(&g);
    assert_ne!(code, 0);
    assert!(err.contains("tls.crl_paths"), "{err}");
    // A fresh CRL that revokes nobody: P is back.
    std::fs::write(&crl_path, ca.crl(&[], t - 60, t + 3600).unwrap()).unwrap();
    let (code, _, err) = reload(&g);
    assert_eq!(code, 0, "{err}");
    assert_eq!(readiness(&g).0, 200);
    assert_eq!(
        g.connect().send(&request(&p, &valid())).unwrap().status,
        202
    );

    // Removing the producer's key rejects its signatures from the next request on, on a
    // connection opened before the reload.
    let mut conn = g.connect();
    assert_eq!(conn.send(&request(&p, &valid())).unwrap().status, 202);
    edit_config(
        &g,
        &g.pki.producer_public_b64,
        "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
    );
    let (code, _, err) = reload(&g);
    assert_eq!(code, 0, "{err}");
    let r = conn.send(&request(&p, &valid())).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(json(&r)["detail"], "Invalid telemetry signature");

    let reloaded = events(&g, "config.reloaded");
    assert_eq!(reloaded.len(), 5);
    let rejected = events(&g, "config.reload_rejected");
    assert_eq!(rejected.len(), 4);
    let metrics = g.ops_get("/metrics").body_text();
    assert!(
        metrics.contains("\nvvgate_config_reloads_total 5\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nvvgate_config_reloads_rejected_total 4\n"),
        "{metrics}"
    );
}

/// A datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Self { sock, path }
    }

    /// Messages until one contains `want`.
    fn until(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = self
                .sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {want} after {seen:?}: {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.contains(want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
}

#[test]
fn sd_notify_ready_watchdog_reloading_and_stopping() {
    let dir = temp_dir("ops-notify");
    let notify = NotifySocket::new(&dir.join("systemd"));
    let pki = Pki::new(&dir.join("pki"));
    let opts = Opts {
        env: vec![
            ("NOTIFY_SOCKET".into(), notify.path.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        ..Opts::default()
    };
    let mut g = Gateway::start_in(dir.clone(), pki, opts);
    notify.until("READY=1");
    notify.until("WATCHDOG=1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(g.pid()).unwrap()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let seen = notify.until("RELOADING=1");
    let reloading = seen.last().unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notify.until("READY=1");
    assert_eq!(events(&g, "config.reloaded").len(), 1);
    assert_eq!(g.stop(), Some(0));
    notify.until("STOPPING=1");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn systemd_units_are_hardened() {
    let unit = repo_root().join("systemd/vvgated.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt package systemd)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for vvgated.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security --offline: vvgated.service scores {score}");
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{text}");

    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "RestartPreventExitStatus=",
    ] {
        assert!(text.contains(line), "vvgated.service lacks {line}");
    }
    let console =
        std::fs::read_to_string(repo_root().join("systemd/vvgate-console.service")).unwrap();
    assert!(console.contains("TTYPath=/dev/ttyS1"));
    assert!(console.contains("ExecStart=/usr/bin/vvgate-console"));
    for f in [
        "systemd/sysusers.d/vvgate.conf",
        "systemd/tmpfiles.d/vvgate.conf",
    ] {
        let text = std::fs::read_to_string(repo_root().join(f)).unwrap();
        assert!(text.contains("vvgate"), "{f}");
    }
    // The units parse (unknown keys and bad values are reported).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("Unknown key") && !err.contains("Failed to parse"),
        "{err}"
    );
}

#[test]
fn sigterm_closes_the_database_cleanly_so_the_next_start_needs_no_repair() {
    let mut g = Gateway::start_with(Opts::default().with("rate_limit_per_minute = 100000"));
    let p = g.pki.producer();
    let mut c = g.connect();
    for _ in 0..20 {
        assert_eq!(c.send(&request(&p, &valid())).unwrap().status, 202);
    }
    // A producer connection still open, and one with half a request, at SIGTERM.
    let mut half = g.connect();
    half.write_raw(b"POST /internal/v1/telemetry HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(g.stop(), Some(0));
    let repairs = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&repairs);
    let db = redb::Database::builder()
        .set_repair_callback(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .open(g.dir.join("state").join("vvgate.redb"))
        .expect("the database opens after a clean stop");
    drop(db);
    assert_eq!(
        repairs.load(Ordering::Relaxed),
        0,
        "the database was left open at shutdown: redb had to repair it"
    );
    drop((c, half));
}
