//! The state directory on a small filesystem (a 16 MiB tmpfs made by the test) that fills up:
//! telemetry gets 503 and never a 202 without being stored; once space is back the gateway
//! recovers without a restart, the audit log records the failed period, and nothing accepted
//! before, during or after is lost. Needs root (mount); skipped with a message otherwise.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use vvgate_e2e::*;

/// A size-limited tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .ok()?
            .success();
        ok.then(|| Self(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        if !std::thread::panicking() {
            if let Some(parent) = self.0.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }
}

/// Fill the filesystem at `dir` with one file until it is full; returns the file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0xA5u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    // Small writes for the last partial block.
    while f.write_all(&[0xA5; 512]).is_ok() {}
    let _ = f.flush();
    path
}

#[test]
fn a_full_disk_answers_503_and_recovers_without_restart() {
    let dir = temp_dir("diskfull");
    let Some(fs) = Tmpfs::mount(&dir.join("state"), "16m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let pki = Pki::new(&dir.join("pki"));
    let g = Gateway::start_in(
        dir.clone(),
        pki,
        Opts::default().with("rate_limit_per_minute = 100000"),
    );
    let p = g.pki.producer();
    let mut conn = g.connect();
    let mut accepted = BTreeSet::new();
    let send = |conn: &mut vvgate::client::Connection| {
        let s = valid();
        let r = conn.send(&request(&p, &s)).unwrap();
        (r.status, s.nonce, r.body_text())
    };

    // Accepted before the disk fills.
    for _ in 0..20 {
        let (status, nonce, _) = send(&mut conn);
        assert_eq!(status, 202);
        accepted.insert(nonce);
    }

    let filler = fill(&fs.0);
    // redb may still have room inside its file: send until the refusals start.
    let mut refused = 0;
    let mut accepted_while_full = 0;
    for _ in 0..3000 {
        let (status, nonce, body) = send(&mut conn);
        match status {
            202 => {
                accepted.insert(nonce);
                accepted_while_full += 1;
            }
            503 => {
                assert!(body.contains("Telemetry persistence failed"), "{body}");
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    println!("disk full: {accepted_while_full} accepted into space redb still had, then {refused} refused with 503");
    assert!(refused >= 20, "the full disk never caused a 503");
    // Readiness says so meanwhile.
    assert_ne!(g.ops_get("/readyz").status, 200);

    // Space comes back: the same gateway (no restart) accepts again.
    std::fs::remove_file(&filler).unwrap();
    let pid = g.pid();
    wait_for(30, "a 202 after space came back", || {
        let (status, nonce, _) = send(&mut conn);
        if status == 202 {
            accepted.insert(nonce);
        }
        status == 202
    });
    for _ in 0..10 {
        let (status, nonce, _) = send(&mut conn);
        assert_eq!(status, 202);
        accepted.insert(nonce);
    }
    assert_eq!(g.pid(), pid);

    // The failed period is in the audit log, and the log verifies.
    let audit = g.audit();
    let failed: Vec<_> = audit
        .iter()
        .filter(|e| e["event_type"] == "storage.commit_failed")
        .collect();
    assert!(!failed.is_empty(), "no storage.commit_failed entry");
    let failed_requests: u64 = failed
        .iter()
        .map(|e| e["details"]["failed_requests"].as_u64().unwrap_or(0))
        .sum();
    assert!(failed_requests >= 1, "{failed:?}");
    let config = g.config.display().to_string();
    let (code, out, err) = vvctl(&["audit", "verify", "--config", &config]);
    assert_eq!(code, 0, "audit verify: {out} {err}");

    // Every 202 is stored: its event is in the spool exactly once.
    let spooled: Vec<String> = g
        .spool()
        .iter()
        .filter(|e| e["body"]["kind"] == "ingest")
        .map(|e| e["body"]["payload"]["nonce"].as_str().unwrap().to_owned())
        .collect();
    let unique: BTreeSet<String> = spooled.iter().cloned().collect();
    assert_eq!(unique.len(), spooled.len(), "an event spooled twice");
    let lost: Vec<_> = accepted.difference(&unique).collect();
    assert!(lost.is_empty(), "answered 202 but not stored: {lost:?}");
    assert_eq!(unique.len(), accepted.len(), "stored without a 202");
    drop(conn);
    drop(g);
    drop(fs);
}
