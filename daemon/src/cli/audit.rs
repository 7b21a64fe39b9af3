//! `vvctl audit`: verify the log (chain, tree, checkpoints), export it, print checkpoints,
//! make and check proofs, store witness cosignatures. Works on a running gateway (control
//! socket), a stopped one (its database) or exported files (another machine).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{io_err, CliError, StateArgs, StateSource};
use crate::audit::checkpoint::{self, Checkpoint, Keys, VerifierKey};
use crate::audit::query::{self, Inclusion};
use crate::audit::{verify_checkpoints, verify_entries, CheckpointInput, Verdict, VerifyOptions};

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify the whole log: hash chain, Merkle tree, every checkpoint signature, and the
    /// checkpoints against the entries. Prints {"ok":…}; exits 1 when anything fails.
    Verify(VerifyArgs),
    /// Print every entry as CJSON lines (with --checkpoints: every checkpoint as a JSON line).
    Export {
        #[command(flatten)]
        state: StateArgs,
        /// Export the signed checkpoints instead ({"size":N,"note":"…"} per line).
        #[arg(long)]
        checkpoints: bool,
    },
    /// Print the newest signed checkpoint (a C2SP signed note).
    Checkpoint {
        #[command(flatten)]
        state: StateArgs,
        /// Sign one now (running gateway) if the log grew since the last.
        #[arg(long)]
        now: bool,
        /// Print the log's verifier key (name+id+key) instead.
        #[arg(long)]
        vkey: bool,
    },
    /// Inclusion proof of entry INDEX against a checkpoint, as a C2SP tlog-proof (the entry
    /// line in its `extra` line).
    Prove {
        #[command(flatten)]
        state: StateArgs,
        /// The entry's index (1 is the first entry).
        #[arg(long)]
        index: u64,
        /// The checkpoint's tree size (default: the newest checkpoint).
        #[arg(long)]
        size: Option<u64>,
        /// Print JSON instead of the tlog-proof text.
        #[arg(long)]
        json: bool,
    },
    /// Consistency proof between the trees of FROM and TO entries (JSON).
    Consistency {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long)]
        from: u64,
        /// Default: the newest checkpoint.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Check a tlog-proof made by `prove`, offline, with the log's verifier key.
    CheckProof {
        /// The proof file (`-` for stdin).
        #[arg(long)]
        file: PathBuf,
        /// The log's verifier key (repeat during a key rotation).
        #[arg(long, required = true)]
        vkey: Vec<String>,
    },
    /// Store the cosignatures of a witness-cosigned checkpoint note.
    Cosign {
        #[command(flatten)]
        state: StateArgs,
        /// The cosigned checkpoint note (`-` for stdin).
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Verify an exported JSONL file instead of a gateway's log (`-` for stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The file is an upstream log (indexes repeat at seals; no checkpoints).
    #[arg(long)]
    upstream: bool,
    /// Checkpoints to check, as `export --checkpoints` writes them (default with a gateway:
    /// its stored checkpoints).
    #[arg(long)]
    checkpoints: Option<PathBuf>,
    /// Checkpoints anchored off the box (the queue's copies), same format; repeatable.
    /// A log rolled back or forked after them fails against them.
    #[arg(long)]
    anchored: Vec<PathBuf>,
    /// The log's verifier key (default with a gateway: its checkpoint key). Repeat during a
    /// key rotation.
    #[arg(long)]
    vkey: Vec<String>,
    /// A witness verifier key whose cosignatures are checked; repeatable.
    #[arg(long)]
    witness: Vec<String>,
}

pub fn run(cmd: AuditCmd) -> Result<(), CliError> {
    match cmd {
        AuditCmd::Verify(a) => verify(&a),
        AuditCmd::Export { state, checkpoints } => {
            let src = state.source()?;
            if checkpoints {
                for c in stored_checkpoints(&src)? {
                    println!("{c}");
                }
                Ok(())
            } else {
                export(&src)
            }
        }
        AuditCmd::Checkpoint { state, now, vkey } => {
            let src = state.source()?;
            if vkey {
                println!("{}", log_vkey(&src)?);
                return Ok(());
            }
            let cp = latest_checkpoint(&src, now)?;
            print!("{}", cp["note"].as_str().unwrap_or_default());
            Ok(())
        }
        AuditCmd::Prove {
            state,
            index,
            size,
            json,
        } => {
            let src = state.source()?;
            let mut req = json!({"cmd": "audit_prove", "index": index});
            if let Some(s) = size {
                req["size"] = s.into();
            }
            let v = ask_one(&src, &req, |r| {
                query::prove(r, index, size).map(|i| i.to_json())
            })?;
            if json {
                println!("{v}");
            } else {
                let inc = Inclusion::from_json(&v)
                    .ok_or_else(|| CliError::Failed(format!("unexpected answer: {v}")))?;
                print!("{}", inc.tlog_proof());
            }
            Ok(())
        }
        AuditCmd::Consistency { state, from, to } => {
            let src = state.source()?;
            let mut req = json!({"cmd": "audit_consistency", "from": from});
            if let Some(t) = to {
                req["to"] = t.into();
            }
            let v = ask_one(&src, &req, |r| query::consistency(r, from, to))?;
            println!("{v}");
            Ok(())
        }
        AuditCmd::CheckProof { file, vkey } => check_proof(&file, &vkey),
        AuditCmd::Cosign { state, file } => {
            let src = state.source()?;
            let note = read_input(&file)?;
            let req = json!({"cmd": "audit_cosign", "note": String::from_utf8_lossy(&note)});
            match src.ask(&req.to_string())? {
                Some(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    Ok(())
                }
                None => Err(CliError::Failed(
                    "the gateway is not running: cosignatures are stored by the running gateway"
                        .into(),
                )),
            }
        }
    }
}

fn read_input(p: &Path) -> Result<Vec<u8>, CliError> {
    if p.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map_err(io_err("stdin"))?;
        Ok(v)
    } else {
        std::fs::read(p).map_err(io_err(format!("cannot read {}", p.display())))
    }
}

/// Ask the running gateway one question, or answer it from the database.
fn ask_one(
    src: &StateSource,
    req: &Value,
    local: impl FnOnce(&vvgate_storage::Reader) -> Result<Value, query::QueryError>,
) -> Result<Value, CliError> {
    if let Some(lines) = src.ask(&req.to_string())? {
        let first = lines.first().map(String::as_str).unwrap_or("{}");
        return serde_json::from_str(first)
            .map_err(|e| CliError::Failed(format!("unexpected answer {first:?}: {e}")));
    }
    let store = src.open()?;
    let reader = store.read()?;
    local(&reader).map_err(|e| CliError::Failed(e.to_string()))
}

/// Every entry line, oldest first.
pub fn lines(src: &StateSource) -> Result<Vec<Vec<u8>>, CliError> {
    if let Some(lines) = src.ask("{\"cmd\":\"audit_export\",\"from\":1}")? {
        return Ok(lines.into_iter().map(String::into_bytes).collect());
    }
    let store = src.open()?;
    let reader = store.read()?;
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let rows = reader.audit_range(next, 10_000)?;
        let Some((last, _)) = rows.last() else { break };
        next = last + 1;
        out.extend(rows.into_iter().map(|(_, l)| l));
    }
    Ok(out)
}

pub fn export(src: &StateSource) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    for l in lines(src)? {
        stdout.write_all(&l).map_err(io_err("stdout"))?;
        stdout.write_all(b"\n").map_err(io_err("stdout"))?;
    }
    Ok(())
}

/// The gateway's checkpoints as `{"size":N,"note":"…"}` values.
fn stored_checkpoints(src: &StateSource) -> Result<Vec<Value>, CliError> {
    if let Some(lines) = src.ask("{\"cmd\":\"audit_checkpoints\",\"from\":0}")? {
        return lines
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| CliError::Failed(format!("unexpected answer {l:?}: {e}")))
            })
            .collect();
    }
    let store = src.open()?;
    let reader = store.read()?;
    query::checkpoints(&reader, 0, usize::MAX).map_err(|e| CliError::Failed(e.to_string()))
}

fn latest_checkpoint(src: &StateSource, now: bool) -> Result<Value, CliError> {
    let req = json!({"cmd": "audit_checkpoint", "now": now});
    if let Some(lines) = src.ask(&req.to_string())? {
        let first = lines.first().map(String::as_str).unwrap_or("{}");
        return serde_json::from_str(first)
            .map_err(|e| CliError::Failed(format!("unexpected answer {first:?}: {e}")));
    }
    if now {
        return Err(CliError::Failed(
            "--now needs the running gateway (its control socket)".into(),
        ));
    }
    let store = src.open()?;
    let reader = store.read()?;
    match reader.checkpoint_latest()? {
        Some((size, note)) => Ok(json!({"size": size, "note": String::from_utf8_lossy(&note)})),
        None => Err(CliError::Failed(
            query::QueryError::NoCheckpoint.to_string(),
        )),
    }
}

/// The log's verifier key: from the running gateway, or from its configured key file.
fn log_vkey(src: &StateSource) -> Result<String, CliError> {
    if let Some(lines) =
        src.ask("{\"cmd\":\"audit_checkpoint\",\"now\":false,\"vkey_only\":true}")?
    {
        let first = lines.first().map(String::as_str).unwrap_or("{}");
        let v: Value = serde_json::from_str(first)
            .map_err(|e| CliError::Failed(format!("unexpected answer {first:?}: {e}")))?;
        if let Some(k) = v["vkey"].as_str() {
            return Ok(k.to_owned());
        }
    }
    let cfg = src.config.as_ref().ok_or_else(|| {
        CliError::Usage("the log's verifier key is unknown: pass --vkey, --dev or --config".into())
    })?;
    let public = crate::keys::checkpoint_public_key(cfg).map_err(|e| {
        CliError::Usage(format!(
            "cannot read the checkpoint key ({e}); pass the log's verifier key with --vkey"
        ))
    })?;
    Ok(checkpoint::vkey(
        &cfg.audit.checkpoint_origin,
        checkpoint::ALG_ED25519,
        &public,
    ))
}

fn parse_keys(list: &[String], what: &str) -> Result<Vec<VerifierKey>, CliError> {
    list.iter()
        .map(|k| VerifierKey::parse(k).map_err(|e| CliError::Usage(format!("{what}: {e}"))))
        .collect()
}

/// Read a checkpoints file: JSON lines with a `note` field, or one raw signed note.
fn read_checkpoints(p: &Path, source: &'static str) -> Result<Vec<CheckpointInput>, CliError> {
    let data = read_input(p)?;
    let text = String::from_utf8_lossy(&data);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    if !text.trim_start().starts_with('{') {
        return Ok(vec![CheckpointInput { note: data, source }]);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            CliError::Usage(format!("{} line {}: not JSON ({e})", p.display(), i + 1))
        })?;
        let note = v["note"].as_str().ok_or_else(|| {
            CliError::Usage(format!(
                "{} line {}: no \"note\" string",
                p.display(),
                i + 1
            ))
        })?;
        out.push(CheckpointInput {
            note: note.as_bytes().to_vec(),
            source,
        });
    }
    Ok(out)
}

fn verify(a: &VerifyArgs) -> Result<(), CliError> {
    let src = if a.file.is_none() {
        Some(a.state.source()?)
    } else {
        None
    };
    // The checkpoints: given, or the gateway's own.
    let mut checkpoints = match (&a.checkpoints, &src) {
        (Some(p), _) => read_checkpoints(p, "stored")?,
        (None, Some(src)) if !a.upstream => stored_checkpoints(src)?
            .into_iter()
            .filter_map(|v| {
                v["note"].as_str().map(|n| CheckpointInput {
                    note: n.as_bytes().to_vec(),
                    source: "stored",
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    for p in &a.anchored {
        checkpoints.extend(read_checkpoints(p, "anchored")?);
    }
    let mut log_keys = parse_keys(&a.vkey, "--vkey")?;
    let witnesses = parse_keys(&a.witness, "--witness")?;
    let sizes: Vec<u64> = checkpoints
        .iter()
        .filter_map(|c| {
            signed_note::Note::from_bytes(&c.note)
                .ok()
                .and_then(|n| Checkpoint::parse(n.text()).ok())
                .map(|cp| cp.size)
        })
        .collect();
    let mut opts = VerifyOptions {
        upstream: a.upstream,
        ..VerifyOptions::default()
    };
    // A gateway's pruned log starts after its last pruned entry.
    if let (None, Some(src)) = (&a.file, &src) {
        let v = ask_one(src, &json!({"cmd": "audit_retention"}), query::retention)?;
        if let Some((through, frontier, hash)) = query::start_of(&v) {
            eprintln!("the local log starts after entry {through} (earlier entries were exported and pruned)");
            opts.first_index = Some(through + 1);
            opts.start = Some((frontier, hash));
        }
    }
    let entries = match (&a.file, &src) {
        (Some(p), _) => {
            let reader: Box<dyn BufRead> = if p.as_os_str() == "-" {
                Box::new(BufReader::new(std::io::stdin()))
            } else {
                Box::new(BufReader::new(
                    std::fs::File::open(p)
                        .map_err(io_err(format!("cannot open {}", p.display())))?,
                ))
            };
            verify_entries(reader.split(b'\n'), &opts, &sizes)
                .map_err(io_err("cannot read the log"))?
        }
        (None, Some(src)) => {
            let lines = lines(src)?;
            verify_entries(
                lines.into_iter().map(Ok::<_, std::convert::Infallible>),
                &opts,
                &sizes,
            )
            .unwrap_or_else(|e| match e {})
        }
        (None, None) => return Err(CliError::Usage("nothing to verify".into())),
    };
    let fail = |verdict: &Verdict, why: &str| {
        println!("{}", verdict.to_json());
        eprintln!("audit log verification failed: {why}");
        Err(CliError::Failed("audit log verification failed".into()))
    };
    if let Verdict::Broken { broken_at, reason } = &entries.verdict {
        return fail(&entries.verdict, &format!("{reason} at entry {broken_at}"));
    }
    // Only now is the key needed: a broken chain is reported without it.
    if log_keys.is_empty() && !checkpoints.is_empty() {
        let src = src.as_ref().ok_or_else(|| {
            CliError::Usage("checking checkpoints needs the log's verifier key: --vkey".into())
        })?;
        log_keys.push(
            VerifierKey::parse(&log_vkey(src)?)
                .map_err(|e| CliError::Failed(format!("the gateway's verifier key: {e}")))?,
        );
    }
    let origin = log_keys.first().map(|k| k.name.clone());
    let keys = Keys::new(&log_keys, &witnesses);
    match verify_checkpoints(&entries, &checkpoints, origin.as_deref(), &keys) {
        Err((verdict, why)) => fail(&verdict, &why),
        Ok(report) => {
            println!("{}", entries.verdict.to_json());
            eprintln!(
                "audit log ok: {} entries, Merkle root {} ; checkpoints: {} verified{}, newest covers {} entries; witness cosignatures: {}",
                entries.tree.size(),
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    entries.tree.root()
                ),
                report.checked,
                if report.skipped > 0 {
                    format!(" ({} of pruned entries not recomputed)", report.skipped)
                } else {
                    String::new()
                },
                report.latest_size,
                report.cosignatures
            );
            if checkpoints.is_empty() && !a.upstream {
                eprintln!("note: no checkpoints were checked (give --checkpoints or --anchored)");
            }
            Ok(())
        }
    }
}

fn check_proof(file: &Path, vkeys: &[String]) -> Result<(), CliError> {
    let text = read_input(file)?;
    let inc = Inclusion::parse_tlog_proof(&String::from_utf8_lossy(&text))
        .map_err(|e| CliError::Failed(format!("{}: {e}", file.display())))?;
    let keys = parse_keys(vkeys, "--vkey")?;
    let origin = keys.first().map(|k| k.name.clone());
    let opened = checkpoint::open(&inc.checkpoint, origin.as_deref(), &Keys::new(&keys, &[]))
        .map_err(|e| CliError::Failed(format!("checkpoint: {e}")))?;
    let cp = opened.checkpoint;
    vvgate_storage::tree::check_record(
        &inc.proof,
        cp.size,
        &cp.root,
        inc.index - 1,
        &vvgate_storage::tree::leaf_hash(&inc.entry),
    )
    .map_err(|e| CliError::Failed(format!("inclusion proof of entry {}: {e}", inc.index)))?;
    // The entry itself must be a well-formed entry with that index.
    let verdict = crate::audit::verify_lines(
        [Ok::<_, std::convert::Infallible>(inc.entry.clone())],
        VerifyOptions {
            first_index: Some(inc.index),
            ..VerifyOptions::default()
        },
    )
    .unwrap_or_else(|e| match e {});
    if !verdict.is_ok() {
        return Err(CliError::Failed(format!(
            "the proven entry is not a valid entry {}: {}",
            inc.index,
            verdict.to_json()
        )));
    }
    println!(
        "{}",
        json!({"ok": true, "index": inc.index, "size": cp.size, "origin": cp.origin})
    );
    Ok(())
}
