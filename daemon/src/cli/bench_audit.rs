//! `vvctl bench --audit`: what the audit log costs per request on the ingest path, measured
//! on the storage thread's own code (`audit::Chain::append` inside a storage batch, as the
//! group commit runs it) in a scratch database: chain hashing, the entry insert, the Merkle
//! leaf and node hashes and their block writes. The commit's fsync is shared by the whole
//! group and reported apart. A ring Ed25519 verification is measured in the same run as the
//! fixed reference (see docs/benchmarks.md). Phases are timed in this thread's CPU time (the
//! kernel's share of the writes included), so other processes on a shared machine inflate
//! them less than wall time; the durable commit is wall time (it waits for the disk).

use std::time::Instant;

use vvgate_storage::{tree, Store};

use super::bench::{loadavg, thread_cpu};
use super::CliError;
use crate::audit::{write_details, Chain, Detail, ACTOR_GATEWAY};
use crate::time::Micros;

/// Entries per measured group by default (the group commit's default maximum).
pub(super) const GROUP: usize = 256;

fn details() -> Vec<u8> {
    let mut d = Vec::new();
    write_details(
        &mut d,
        &mut [
            (
                "request_id",
                Detail::Str("5b0c1f4e-2f7a-4c59-9d0b-6a1f3e2d9c11"),
            ),
            (
                "tenant_id",
                Detail::Str("10000000-0000-0000-0000-000000000001"),
            ),
            ("operator_id", Detail::Str("op-001")),
            ("campaign_id", Detail::Str("cmp-001")),
            ("service_identity", Detail::Str("spectrastrike-producer")),
            (
                "key_id",
                Detail::Str("0b17d2c6f9a14f74b3a935b6c13d2fb67788cbc03ad9e564ef719f584fddec23"),
            ),
            ("signed_timestamp", Detail::Int(1_795_435_832)),
            ("nonce", Detail::Str("35ed1c8d-2e66-49d9-8afc-6c52e9df3517")),
            (
                "body_sha256",
                Detail::Str("d9a0e847108d2cb9f3fec3c475bef415fade97e056b81d8dbf1bf0fcfdf2ff9d"),
            ),
            (
                "event_id",
                Detail::Str("35ed1c8d-2e66-49d9-8afc-6c52e9df3517"),
            ),
            (
                "message_id",
                Detail::Str("7040fab7-d5d6-4724-8008-d982e4ad5ea4"),
            ),
            (
                "idempotency_key",
                Detail::Str("0c40dbd5295bc42311cb7f980880d9407e386bca6f83639de3a38144a037e6cd"),
            ),
        ],
    );
    d
}

/// The reference machine of the performance budget (docs/benchmarks.md, "The audit log's
/// cost per request"): CPU µs of one ring Ed25519 verification of a 1 KiB message, and of
/// SHA-256 (sha2) over 1 KiB. The append measured here is also printed scaled to it, since
/// this shared host's speed varies by a factor of two or three with its load: the hashing
/// parts by the SHA-256 reference, the rest (serialisation, redb) by the verification.
const REFERENCE_MACHINE_VERIFY_US: f64 = 33.9;
const REFERENCE_MACHINE_SHA256_US: f64 = 0.570;

/// The references measured here, now, on the same message size as the reference machine's.
#[derive(Clone, Copy)]
struct References {
    verify_us: f64,
    sha256_us: f64,
}

impl References {
    fn measure() -> Self {
        use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
        use sha2::Digest;
        let msg = vec![b'x'; 1024];
        let verify_us = match Ed25519KeyPair::from_seed_unchecked(&[7; 32]) {
            Ok(kp) => {
                let sig = kp.sign(&msg);
                let pk = UnparsedPublicKey::new(&ED25519, kp.public_key().as_ref().to_vec());
                let n = 2000;
                let t = thread_cpu();
                for _ in 0..n {
                    let _ =
                        std::hint::black_box(pk.verify(std::hint::black_box(&msg), sig.as_ref()));
                }
                (thread_cpu() - t) * 1e6 / f64::from(n)
            }
            Err(_) => f64::NAN,
        };
        let n = 100_000;
        let t = thread_cpu();
        for _ in 0..n {
            std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(&msg)));
        }
        let sha256_us = (thread_cpu() - t) * 1e6 / f64::from(n);
        Self {
            verify_us,
            sha256_us,
        }
    }

    /// The append (with its hashing share) as it would cost on the reference machine.
    fn scaled(&self, append_us: f64, hashing_us: f64) -> f64 {
        let hashing = hashing_us.min(append_us);
        hashing * REFERENCE_MACHINE_SHA256_US / self.sha256_us
            + (append_us - hashing) * REFERENCE_MACHINE_VERIFY_US / self.verify_us
    }
}

/// What one run measured, in CPU µs per request unless named otherwise.
struct Figures {
    append_us: f64,
    tree_us: f64,
    encode_us: f64,
    /// SHA-256 of one serialised entry: the chain hash's share of `encode_us`.
    chain_hash_us: f64,
    /// Wall µs of a durable commit of one group, the appends excluded.
    fsync_us: f64,
    references: References,
}

pub(super) fn run(entries: usize, group: usize, json: bool) -> Result<(), CliError> {
    let group = group.clamp(1, 4096);
    let load_before = loadavg();
    let dir = std::env::temp_dir().join(format!("vvctl-bench-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(super::io_err("scratch directory"))?;
    let result = measure(&dir, entries.max(group), group);
    let _ = std::fs::remove_dir_all(&dir);
    let f = result?;
    let load = format!("{load_before} → {}", loadavg());
    let r = f.references;
    let hashing_us = f.tree_us + f.chain_hash_us;
    let scaled = r.scaled(f.append_us, hashing_us);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "audit_append_us_per_request": f.append_us,
                "tree_share_us": f.tree_us,
                "chain_encode_us": f.encode_us,
                "chain_hash_us": f.chain_hash_us,
                "durable_commit_us_per_group": f.fsync_us,
                "group": group,
                "entries": entries,
                "reference_verify_us": r.verify_us,
                "reference_sha256_us": r.sha256_us,
                "append_us_at_reference_machine": scaled,
                "load": load,
            })
        );
    } else {
        let append_us = f.append_us;
        println!("audit log cost per request ({entries} entries, groups of {group}):");
        println!(
            "  append      {append_us:.2} µs CPU (chain hash, entry row, Merkle leaf and nodes, hash blocks; the transaction itself is shared with the group's nonces and spool and not counted)"
        );
        println!(
            "  of which    {:.2} µs Merkle tree hashing (leaf and nodes)",
            f.tree_us
        );
        println!(
            "              {:.2} µs entry serialisation and chain hash ({:.2} µs of it the hash)",
            f.encode_us, f.chain_hash_us
        );
        println!(
            "              {:.2} µs redb writes (entry row, hash blocks)",
            (append_us - f.tree_us - f.encode_us).max(0.0)
        );
        println!(
            "  commit      {:.0} µs per durable group commit (shared by the group: {:.2} µs per request at {group})",
            f.fsync_us,
            f.fsync_us / group as f64
        );
        println!(
            "  reference   here, now: ring Ed25519 verify (1 KiB) {:.1} µs, SHA-256 (1 KiB) {:.3} µs; the append is {:.4} of a verification",
            r.verify_us,
            r.sha256_us,
            append_us / r.verify_us
        );
        println!(
            "  scaled      {scaled:.2} µs on the reference machine (verify {REFERENCE_MACHINE_VERIFY_US} µs, SHA-256 {REFERENCE_MACHINE_SHA256_US} µs): {hashing_us:.2} µs of hashing scaled by SHA-256, the rest by the verification"
        );
        println!("  load        {load} (1-minute load average before → after)");
    }
    Ok(())
}

fn measure(dir: &std::path::Path, entries: usize, group: usize) -> Result<Figures, CliError> {
    // The gateway's page cache: a larger one keeps every written page in memory for longer, so
    // the run would mostly measure fresh memory being faulted in.
    let store = Store::open(
        &dir.join("bench.redb"),
        crate::config::DEFAULT_STORAGE_CACHE_BYTES,
    )?;
    let details = details();
    let mut chain = Chain::new(50);
    let now = Micros(1_795_435_832_000_000);
    // Warm-up: one group.
    store.batch_lazy(|b| {
        for _ in 0..group {
            chain.append(b, now, ACTOR_GATEWAY, "telemetry.accepted", &details)?;
        }
        Ok(())
    })?;
    let groups = entries / group;
    let t = thread_cpu();
    for _ in 0..groups {
        store.batch_lazy(|b| {
            for _ in 0..group {
                chain.append(b, now, ACTOR_GATEWAY, "telemetry.accepted", &details)?;
            }
            Ok(())
        })?;
    }
    let with_audit = thread_cpu() - t;
    // The same transactions without the audit entries: what the group commit pays anyway
    // (its nonces and spool segment share the transaction).
    let t = thread_cpu();
    for _ in 0..groups {
        store.batch_lazy(|b| Ok(b.audit_head()))?;
    }
    let bare = thread_cpu() - t;
    let append_us = (with_audit - bare).max(0.0) * 1e6 / (groups * group) as f64;
    // The tree's hashing alone, over lines of the same size.
    let lines = store.read()?.audit_range(1, group)?;
    let mut f = tree::Frontier::default();
    let mut out = Vec::with_capacity(4);
    let t = thread_cpu();
    for i in 0..groups * group {
        out.clear();
        f.append(tree::leaf_hash(&lines[i % lines.len()].1), &mut out);
    }
    let tree_us = (thread_cpu() - t) * 1e6 / (groups * group) as f64;
    // Serialisation and chain hash alone.
    let ts = crate::time::iso(now);
    let (mut line, mut scratch) = (Vec::new(), Vec::new());
    let prev = "5ed79301a3c999beb7bc3d7ffff718df9eb2ceb549f609e68a26def7589ce903";
    let t = thread_cpu();
    for i in 0..groups * group {
        let _ = crate::audit::encode_entry(
            i as u64,
            &ts,
            "telemetry.accepted",
            ACTOR_GATEWAY,
            &details,
            prev,
            &mut line,
            &mut scratch,
        );
    }
    let encode_us = (thread_cpu() - t) * 1e6 / (groups * group) as f64;
    // The chain hash's share of it: SHA-256 over the entry's bytes.
    let t = thread_cpu();
    for _ in 0..groups * group {
        std::hint::black_box(crate::ids::sha256(std::hint::black_box(&scratch)));
    }
    let chain_hash_us = (thread_cpu() - t) * 1e6 / (groups * group) as f64;
    // Durable commits of one group each.
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        store.batch(|b| {
            for _ in 0..group {
                chain.append(b, now, ACTOR_GATEWAY, "telemetry.accepted", &details)?;
            }
            Ok(())
        })?;
    }
    let fsync_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n) - append_us * group as f64;
    Ok(Figures {
        append_us,
        tree_us,
        encode_us,
        chain_hash_us,
        fsync_us: fsync_us.max(0.0),
        references: References::measure(),
    })
}
