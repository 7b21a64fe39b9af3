//! Crash safety: `kill -9` during load, restart, and count every event end to end.
//!
//! Producers send unique signed events on several connections and record each request's
//! bytes and outcome. The gateway is killed at a random moment, restarted, and killed again,
//! three times. Afterwards: every event answered 202 is in the spool exactly once with its
//! audit entry (0 lost), no nonce is in the spool twice (0 duplicated), every 202 re-sent
//! byte for byte is a replay of itself, and requests whose answer was lost in the crash are
//! resolved by the producer's own byte-identical retry (202 or 409-with-original, never two
//! envelopes). The audit chain verifies.

// Integration tests live in their own crate, not in a #[cfg(test)] module.
#![allow(clippy::tests_outside_test_module)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vvgate::client::Connection;
use vvgate_e2e::*;

#[derive(Clone)]
struct Sent {
    nonce: String,
    request: Vec<u8>,
    /// `Some(request_id)` when answered 202; `None` when the answer was lost.
    accepted: Option<String>,
}

fn load(
    g: &Gateway,
    stop: &Arc<AtomicBool>,
    log: &Arc<Mutex<Vec<Sent>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (addr, tls) = (g.addr, g.pki.producer().tls.clone());
            let p = g.pki.producer();
            let (stop, log) = (Arc::clone(stop), Arc::clone(log));
            std::thread::spawn(move || {
                let Ok(mut c) =
                    Connection::connect_tls(addr, "localhost", tls, Duration::from_secs(5))
                else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    let s = valid();
                    let req = request(&p, &s);
                    let accepted = match c.send(&req) {
                        Ok(r) if r.status == 202 => {
                            Some(json(&r)["request_id"].as_str().unwrap().to_owned())
                        }
                        Ok(r) => panic!("unexpected {} {}", r.status, r.body_text()),
                        Err(_) => None,
                    };
                    let lost = accepted.is_none();
                    log.lock().unwrap().push(Sent {
                        nonce: s.nonce,
                        request: req,
                        accepted,
                    });
                    if lost {
                        return; // the gateway is gone
                    }
                }
            })
        })
        .collect()
}

#[test]
fn kill_9_under_load_loses_and_duplicates_nothing() {
    let mut g = Gateway::start_with(Opts::default().with("rate_limit_per_minute = 1000000"));
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    for round in 0..3u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = load(&g, &stop, &log);
        // A pseudo-random moment between 300 and 1,100 ms into the load.
        let jitter = (now() * 7919 + round * 104_729) % 800;
        std::thread::sleep(Duration::from_millis(300 + jitter));
        g.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("load thread");
        }
        g.restart();
    }

    let sent = log.lock().unwrap().clone();
    let acked: Vec<&Sent> = sent.iter().filter(|s| s.accepted.is_some()).collect();
    let unknown: Vec<&Sent> = sent.iter().filter(|s| s.accepted.is_none()).collect();

    // The spool: one envelope per accepted nonce.
    let spool = g.spool();
    let mut by_nonce: HashMap<String, usize> = HashMap::new();
    for e in &spool {
        *by_nonce
            .entry(e["body"]["payload"]["nonce"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let duplicated = by_nonce.values().filter(|&&n| n > 1).count();
    let audit = g.audit();
    let accepted_ids: HashSet<&str> = audit
        .iter()
        .filter(|e| e["event_type"] == "telemetry.accepted")
        .filter_map(|e| e["details"]["request_id"].as_str())
        .collect();
    let lost: Vec<&&Sent> = acked
        .iter()
        .filter(|s| {
            !by_nonce.contains_key(&s.nonce)
                || !accepted_ids.contains(s.accepted.as_deref().unwrap())
        })
        .collect();
    eprintln!(
        "crash test: sent {}, answered 202 {}, answer lost {}, in spool {}, duplicated {}, lost {}",
        sent.len(),
        acked.len(),
        unknown.len(),
        spool.len(),
        duplicated,
        lost.len()
    );
    assert!(
        acked.len() >= 30,
        "too little load to mean anything: {}",
        acked.len()
    );
    assert_eq!(lost.len(), 0, "accepted events missing after the crash");
    assert_eq!(duplicated, 0, "a nonce was stored twice");
    assert!(spool.len() >= acked.len() && spool.len() <= sent.len());

    // Every 202 re-sent byte for byte: 409 naming the original; nothing new stored.
    let mut c = g.connect();
    for s in acked.iter().take(200) {
        let r = c.send(&s.request).unwrap();
        assert_eq!(r.status, 409, "{}", r.body_text());
        assert_eq!(
            json(&r)["original"]["request_id"],
            s.accepted.as_deref().unwrap()
        );
    }
    // A lost answer is settled by the producer's identical retry.
    for s in &unknown {
        let r = c.send(&s.request).unwrap();
        assert!(
            r.status == 202 || (r.status == 409 && json(&r)["original"]["accepted"] == true),
            "{}",
            r.body_text()
        );
    }
    let after = g.spool();
    let nonces: Vec<&str> = after
        .iter()
        .map(|e| e["body"]["payload"]["nonce"].as_str().unwrap())
        .collect();
    let unique: HashSet<&&str> = nonces.iter().collect();
    assert_eq!(
        unique.len(),
        nonces.len(),
        "no duplicates after the retries"
    );
    for s in &sent {
        assert!(
            nonces.contains(&s.nonce.as_str()),
            "every sent event is stored once in the end"
        );
    }
    let (code, out, _) = vvctl(&["audit", "verify", "--config", g.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}
