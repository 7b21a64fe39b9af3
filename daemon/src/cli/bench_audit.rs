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

fn reference_verify_us() -> f64 {
    use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
    let kp = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).ok();
    let Some(kp) = kp else { return f64::NAN };
    let msg = vec![b'x'; 2200];
    let sig = kp.sign(&msg);
    let pk = UnparsedPublicKey::new(&ED25519, kp.public_key().as_ref().to_vec());
    let n = 2000;
    let t = thread_cpu();
    for _ in 0..n {
        let _ = std::hint::black_box(pk.verify(std::hint::black_box(&msg), sig.as_ref()));
    }
    (thread_cpu() - t) * 1e6 / f64::from(n)
}

pub(super) fn run(entries: usize, group: usize, json: bool) -> Result<(), CliError> {
    let group = group.clamp(1, 4096);
    let load_before = loadavg();
    let dir = std::env::temp_dir().join(format!("vvctl-bench-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(super::io_err("scratch directory"))?;
    let result = measure(&dir, entries.max(group), group);
    let _ = std::fs::remove_dir_all(&dir);
    let (append_us, tree_us, encode_us, fsync_us, reference) = result?;
    let load = format!("{load_before} → {}", loadavg());
    if json {
        println!(
            "{}",
            serde_json::json!({
                "audit_append_us_per_request": append_us,
                "tree_share_us": tree_us,
                "chain_encode_us": encode_us,
                "durable_commit_us_per_group": fsync_us,
                "group": group,
                "entries": entries,
                "reference_verify_us": reference,
                "load": load,
            })
        );
    } else {
        println!("audit log cost per request ({entries} entries, groups of {group}):");
        println!(
            "  append      {append_us:.2} µs CPU (chain hash, entry row, Merkle leaf and nodes, hash blocks; the transaction itself is shared with the group's nonces and spool and not counted)"
        );
        println!("  of which    {tree_us:.2} µs Merkle tree hashing (leaf and nodes)");
        println!("              {encode_us:.2} µs entry serialisation and chain hash");
        println!(
            "              {:.2} µs redb writes (entry row, hash blocks)",
            (append_us - tree_us - encode_us).max(0.0)
        );
        println!(
            "  commit      {fsync_us:.0} µs per durable group commit (shared by the group: {:.2} µs per request at {group})",
            fsync_us / group as f64
        );
        println!(
            "  reference   ring Ed25519 verify {reference:.1} µs here, now: the audit append is {:.3} of one",
            append_us / reference
        );
        println!("  load        {load} (1-minute load average before → after)");
    }
    Ok(())
}

fn measure(
    dir: &std::path::Path,
    entries: usize,
    group: usize,
) -> Result<(f64, f64, f64, f64, f64), CliError> {
    let store = Store::open(&dir.join("bench.redb"), 64 << 20)?;
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
    Ok((
        append_us,
        tree_us,
        encode_us,
        fsync_us.max(0.0),
        reference_verify_us(),
    ))
}
