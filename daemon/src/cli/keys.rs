//! `vvctl keys`: key ceremonies on a PKCS#11 token under dual control (docs/key-ceremony.md).
//!
//! The token's user PIN exists only as two shares, one per officer; every ceremony needs both
//! share files (`--share-a`, `--share-b`) and both officers' names. `init` creates the shares
//! (and those of the SO PIN) and the gateway's PIN credential file; the others open a
//! read-write session with the combined PIN, run one step of `vvgate_hsm::ceremony`, close
//! it, sign the transcript with the checkpoint key (see [`crate::keys`]), write it to a file
//! and append it to the gateway's audit log: through the control socket of a running gateway,
//! or into the database of a stopped one.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use secrecy::SecretString;
use serde_json::Value;
use vvgate_hsm::ceremony::{self, Ceremony, CsrRequest, Officers, PinShare, Transcript};
use vvgate_hsm::pkcs11::{Pkcs11KeyStore, Purpose, TokenSelector};
use vvgate_hsm::{HsmError, KeyRef, KeyStore};
use zeroize::Zeroizing;

use super::{io_err, CliError, GwArgs, StateArgs, StateSource};
use crate::config::{Config, DEFAULT_PKCS11_MODULE};

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Initialise a token: random SO and user PINs, each split into two officers' shares;
    /// writes both share files and the gateway's PIN credential file (all 0600).
    Init(InitArgs),
    /// Generate keys with strict templates: tls (ECDSA P-256), checkpoint, feedback
    /// (Ed25519), kek (AES-256), tls-ed25519.
    Generate(GenerateArgs),
    /// List the keys on the token, each with the gateway's verdict on its attributes.
    List(ListArgs),
    /// Generate the next version of a key beside the current ones (kept until retired).
    Rotate(RotateArgs),
    /// Destroy an old version of a key (never the only one, never one the configuration uses).
    Retire(RetireArgs),
    /// Write a certificate signing request for a TLS key, signed inside the token.
    Csr(CsrArgs),
    /// Append transcript files to the audit log (for ceremonies run with --no-audit).
    Record(RecordArgs),
}

/// Which token.
#[derive(Args, Debug, Clone, Default)]
pub struct TokenArgs {
    /// PKCS#11 module (default: VVGATE_PKCS11_MODULE, then the configuration's
    /// [keystore] module, then /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, value_name = "PATH")]
    pub module: Option<PathBuf>,
    /// The token's label (default: the configuration's).
    #[arg(long, value_name = "LABEL", conflicts_with = "token_serial")]
    pub token_label: Option<String>,
    /// The token's serial number (default: the configuration's).
    #[arg(long, value_name = "SERIAL")]
    pub token_serial: Option<String>,
}

/// The two officers and their share files.
#[derive(Args, Debug, Clone)]
pub struct OfficerArgs {
    /// Name of the officer holding share A (e.g. Security).
    #[arg(long, value_name = "NAME")]
    pub officer_a: String,
    /// Officer A's share file.
    #[arg(long, value_name = "FILE")]
    pub share_a: PathBuf,
    /// Name of the officer holding share B (e.g. Platform).
    #[arg(long, value_name = "NAME")]
    pub officer_b: String,
    /// Officer B's share file.
    #[arg(long, value_name = "FILE")]
    pub share_b: PathBuf,
}

/// Where the transcript goes.
#[derive(Args, Debug, Clone)]
pub struct AuditArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Do not append the transcript to an audit log now (first setup, before the gateway
    /// has a database); append its file later with `vvctl keys record`.
    #[arg(long)]
    pub no_audit: bool,
    /// Directory for the transcript file.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub transcript_dir: PathBuf,
    /// Key that signs the transcript (default: the configuration's audit.checkpoint_key,
    /// else the newest checkpoint key on the token).
    #[arg(long, value_name = "KEYREF")]
    pub checkpoint_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub officers: OfficerArgs,
    /// The gateway's PIN credential file to create (e.g. for systemd-creds encrypt).
    #[arg(long, value_name = "FILE")]
    pub pin_file: PathBuf,
    #[command(flatten)]
    pub audit: AuditArgs,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub officers: OfficerArgs,
    /// What the key is for: tls, checkpoint, feedback, kek, tls-ed25519 (repeatable).
    #[arg(long, required = true, value_parser = parse_purpose)]
    pub purpose: Vec<Purpose>,
    /// The version to create (CKA_ID = purpose ‖ version).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub version: u8,
    /// CKA_LABEL (default: "vvgate <purpose> v<version>"); with one --purpose only.
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub audit: AuditArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub officers: OfficerArgs,
    #[command(flatten)]
    pub gw: GwArgs,
    /// One JSON array instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub officers: OfficerArgs,
    /// What the key is for.
    #[arg(long, value_parser = parse_purpose)]
    pub purpose: Purpose,
    /// CKA_LABEL of the new version (default: "vvgate <purpose> v<version>").
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub audit: AuditArgs,
}

#[derive(Args, Debug)]
pub struct RetireArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub officers: OfficerArgs,
    /// What the key is for.
    #[arg(long, value_parser = parse_purpose)]
    pub purpose: Purpose,
    /// The version to destroy.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    pub version: u8,
    #[command(flatten)]
    pub audit: AuditArgs,
}

#[derive(Args, Debug)]
pub struct CsrArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub officers: OfficerArgs,
    /// The TLS key: tls or tls-ed25519.
    #[arg(long, default_value = "tls", value_parser = parse_purpose)]
    pub purpose: Purpose,
    /// Its version (default: the newest).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..))]
    pub version: Option<u8>,
    /// Subject common name.
    #[arg(long, value_name = "NAME")]
    pub cn: String,
    /// subjectAltName: a DNS name or IP address (repeatable).
    #[arg(long, value_name = "NAME")]
    pub san: Vec<String>,
    /// Where to write the CSR (PEM).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub audit: AuditArgs,
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Transcript files written by earlier ceremonies, appended in the order given.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

fn parse_purpose(s: &str) -> Result<Purpose, String> {
    Purpose::parse(s).ok_or_else(|| {
        format!(
            "unknown purpose {s:?}; one of {}",
            Purpose::ALL.map(|p| p.name()).join(", ")
        )
    })
}

/// A key store error as the CLI reports it: refused input is a usage error (64), anything
/// else a failed command (1).
fn hsm(e: HsmError) -> CliError {
    match e {
        HsmError::Ceremony(_) | HsmError::BadReference(_) | HsmError::WrongBackend { .. } => {
            CliError::Usage(e.to_string())
        }
        other => CliError::Failed(other.to_string()),
    }
}

pub fn run(cmd: KeysCmd) -> Result<(), CliError> {
    match cmd {
        KeysCmd::Init(a) => init(&a),
        KeysCmd::Generate(a) => generate(&a),
        KeysCmd::List(a) => list(&a),
        KeysCmd::Rotate(a) => rotate(&a),
        KeysCmd::Retire(a) => retire(&a),
        KeysCmd::Csr(a) => csr(&a),
        KeysCmd::Record(a) => record(&a),
    }
}

// ---------------------------------------------------------------------------------------
// Token, officers, shares

struct Token {
    module: PathBuf,
    selector: TokenSelector,
}

fn resolve_token(t: &TokenArgs, cfg: Option<&Config>) -> Result<Token, CliError> {
    let p11 = cfg.and_then(|c| c.keystore.pkcs11.as_ref());
    let module = t
        .module
        .clone()
        .or_else(|| std::env::var_os("VVGATE_PKCS11_MODULE").map(PathBuf::from))
        .or_else(|| p11.map(|p| p.module.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PKCS11_MODULE));
    let selector = match (&t.token_label, &t.token_serial) {
        (Some(l), _) => TokenSelector::Label(l.clone()),
        (None, Some(s)) => TokenSelector::Serial(s.clone()),
        (None, None) => p11.map(|p| p.token.clone()).ok_or_else(|| {
            CliError::Usage(
                "which token? --token-label or --token-serial (or --config of a gateway with [keystore] backend = \"pkcs11\")"
                    .into(),
            )
        })?,
    };
    Ok(Token { module, selector })
}

const SHARE_PREFIX: &str = "vvgate-pin-share-v1-";
const USER_SHARE: &str = "user-pin-share:";
const SO_SHARE: &str = "so-pin-share:";

/// Both officers with their shares, checked against each other before the token is touched.
struct Shares {
    officers: Officers,
    a: PinShare,
    b: PinShare,
}

fn read_share(path: &Path, flag: &str, want: char) -> Result<PinShare, CliError> {
    let bytes =
        Zeroizing::new(std::fs::read(path).map_err(io_err(format!("{flag} {}", path.display())))?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| CliError::Usage(format!("{flag} {}: not a share file", path.display())))?;
    let line = text.lines().map(str::trim).find_map(|l| {
        if let Some(v) = l.strip_prefix(USER_SHARE) {
            Some(v.trim())
        } else if l.starts_with(SHARE_PREFIX) {
            Some(l)
        } else {
            None
        }
    });
    let Some(line) = line else {
        return Err(CliError::Usage(format!(
            "{flag} {}: no user PIN share in this file",
            path.display()
        )));
    };
    let share = PinShare::parse(line)
        .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", path.display())))?;
    if share.index() != want {
        return Err(CliError::Usage(format!(
            "{flag} {} holds share {}, not share {want}: each officer brings their own share \
             (are --share-a and --share-b swapped?)",
            path.display(),
            share.index()
        )));
    }
    Ok(share)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn officers(o: &OfficerArgs) -> Result<Officers, CliError> {
    Officers::new(o.officer_a.trim(), o.officer_b.trim()).map_err(hsm)
}

fn read_shares(o: &OfficerArgs) -> Result<Shares, CliError> {
    let officers = officers(o)?;
    if same_file(&o.share_a, &o.share_b) {
        return Err(CliError::Usage(
            "--share-a and --share-b are the same file: dual control needs both officers' shares"
                .into(),
        ));
    }
    let a = read_share(&o.share_a, "--share-a", 'A')?;
    let b = read_share(&o.share_b, "--share-b", 'B')?;
    // Refuse mismatched shares before the token counts a failed login.
    ceremony::combine(&a, &b).map_err(|e| {
        CliError::Usage(format!(
            "{e} (--share-a {}, --share-b {})",
            o.share_a.display(),
            o.share_b.display()
        ))
    })?;
    Ok(Shares { officers, a, b })
}

fn open(tok: &Token, sh: &Shares) -> Result<Ceremony, CliError> {
    Ceremony::open(
        &tok.module,
        &tok.selector,
        sh.officers.clone(),
        &sh.a,
        &sh.b,
    )
    .map_err(hsm)
}

// ---------------------------------------------------------------------------------------
// Transcripts: sign, write, append

/// Where this ceremony's transcript is appended, checked before the ceremony runs so that a
/// ceremony never happens without a place for its record.
fn destination(a: &AuditArgs) -> Result<Option<StateSource>, CliError> {
    if a.no_audit {
        return Ok(None);
    }
    let src = a.state.source().map_err(|e| match e {
        CliError::Usage(_) => CliError::Usage(
            "say whose audit log records this ceremony: --config PATH (or --socket, --state-dir), \
             or --no-audit and `vvctl keys record` later"
                .into(),
        ),
        other => other,
    })?;
    if src.ask("{\"cmd\":\"status\"}")?.is_some() {
        return Ok(Some(src));
    }
    match &src.database {
        Some(db) if db.exists() => Ok(Some(src)),
        other => Err(CliError::Usage(format!(
            "no running gateway{} and no database{}: run the ceremony with --no-audit and append \
             its transcript with `vvctl keys record` once the gateway has run",
            src.socket
                .as_ref()
                .map(|p| format!(" at {}", p.display()))
                .unwrap_or_default(),
            other
                .as_ref()
                .map(|p| format!(" at {}", p.display()))
                .unwrap_or_default(),
        ))),
    }
}

/// The checkpoint key that signs the transcript of a ceremony on `c` (after its step ran).
fn signing_key(
    a: &AuditArgs,
    cfg: Option<&Config>,
    c: &Ceremony,
) -> Result<Option<KeyRef>, CliError> {
    if let Some(s) = &a.checkpoint_key {
        let r = KeyRef::parse(s).map_err(hsm)?;
        if r.is_file() {
            return Err(CliError::Usage(
                "--checkpoint-key must be pkcs11:<CKA_ID>".into(),
            ));
        }
        return Ok(Some(r));
    }
    if let Some(r) = cfg
        .map(|c| &c.audit.checkpoint_key)
        .filter(|r| !r.is_file())
    {
        return Ok(Some(r.clone()));
    }
    Ok(c.versions(Purpose::Checkpoint)
        .map_err(hsm)?
        .last()
        .map(|v| KeyRef::Pkcs11 {
            id: Purpose::Checkpoint.id(*v),
        }))
}

/// Sign `t` with `key` through a read-only key store session (the ceremony is closed by
/// now: one PKCS#11 user per process at a time). A key that cannot sign leaves the
/// transcript unsigned, saying why: the ceremony has happened and must be recorded.
fn sign(tok: &Token, sh: &Shares, key: Option<KeyRef>, t: &Transcript) -> Result<Value, CliError> {
    let tv = crate::keys::transcript_value(t).map_err(CliError::Failed)?;
    let Some(key) = key else {
        let why = if t.ceremony == "init-token" {
            "the checkpoint key does not exist yet: this ceremony initialised the token"
        } else {
            "the checkpoint key does not exist yet: no checkpoint key on the token"
        };
        return crate::keys::sign(tv, None, why).map_err(CliError::Failed);
    };
    let pin = ceremony::combine(&sh.a, &sh.b).map_err(hsm)?;
    let signed = Pkcs11KeyStore::open_with_pin(&tok.module, &tok.selector, pin).and_then(|s| {
        let signer = s.record_signer(&key)?;
        crate::keys::sign(tv.clone(), Some((&key, signer.as_ref())), "").map_err(HsmError::NotReady)
    });
    match signed {
        Ok(doc) => Ok(doc),
        Err(e) => {
            eprintln!("vvctl: warning: the transcript is not signed: {e}");
            crate::keys::sign(
                tv,
                None,
                &format!("the checkpoint key {key} could not sign: {e}"),
            )
            .map_err(CliError::Failed)
        }
    }
}

/// Write the document to a new file in `dir`; returns its path.
fn write_transcript(dir: &Path, t: &Transcript, doc: &Value) -> Result<PathBuf, CliError> {
    // File names sort in the order the ceremonies ran (`record` them in that order).
    let now = crate::time::iso(crate::time::Clock::system().now());
    let stamp: String = now
        .trim_end_matches("+00:00")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let stem = format!("{stamp}Z-{}", t.ceremony);
    let mut text =
        serde_json::to_string_pretty(doc).map_err(|e| CliError::Failed(e.to_string()))?;
    text.push('\n');
    for n in 1..1000 {
        let name = if n == 1 {
            format!("{stem}.json")
        } else {
            format!("{stem}-{n}.json")
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(text.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io_err(format!("cannot write {}", path.display())))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(format!("cannot create {}", path.display()))(e)),
        }
    }
    Err(CliError::Failed(format!(
        "too many transcripts named {stem} in {}",
        dir.display()
    )))
}

/// Append one document to the audit log of `src`; a line saying where it went.
fn append(src: &StateSource, doc: &Value) -> Result<String, CliError> {
    let req = serde_json::json!({ "cmd": "keys_transcript", "transcript": doc });
    if let Some(lines) = src.ask(&req.to_string())? {
        let first = lines.first().map(String::as_str).unwrap_or("{}");
        let v: Value = serde_json::from_str(first)
            .map_err(|e| CliError::Failed(format!("unexpected answer {first:?}: {e}")))?;
        return Ok(format!(
            "appended to the running gateway's audit log ({} entries; signed checkpoint of size {})",
            v["entries"], v["checkpoint_size"]
        ));
    }
    let store = src.open()?;
    let seal_every = src.config.as_ref().map_or(50, |c| c.audit.seal_every);
    let index = crate::keys::append_to_store(&store, seal_every, doc).map_err(CliError::Failed)?;
    Ok(format!(
        "appended to the stopped gateway's audit log as entry {index} (a checkpoint covers it after its next start)"
    ))
}

/// Sign, write and append a finished ceremony's transcript, and say what happened.
fn finish(
    tok: &Token,
    sh: &Shares,
    a: &AuditArgs,
    dest: Option<&StateSource>,
    key: Option<KeyRef>,
    t: &Transcript,
) -> Result<(), CliError> {
    let doc = sign(tok, sh, key, t)?;
    let path = write_transcript(&a.transcript_dir, t, &doc)?;
    let sig = &doc["signature"];
    match sig["status"].as_str() {
        Some("signed") => println!(
            "transcript: {} (signed by {})",
            path.display(),
            sig["key_ref"].as_str().unwrap_or("?")
        ),
        _ => println!(
            "transcript: {} (unsigned: {})",
            path.display(),
            sig["reason"].as_str().unwrap_or("?")
        ),
    }
    match dest {
        Some(src) => println!("audit: {}", append(src, &doc)?),
        None => println!(
            "audit: not appended (--no-audit); once the gateway has run: vvctl keys record --config PATH {}",
            path.display()
        ),
    }
    Ok(())
}

fn print_keys(t: &Transcript) {
    for k in &t.keys {
        let public = if k.public_key_b64.is_empty() {
            "(secret key, no public half)".to_owned()
        } else {
            format!("public key {}", k.public_key_b64)
        };
        println!("{:<13} {:<9} {:<12} {public}", k.key_ref, k.status, k.kind);
    }
}

// ---------------------------------------------------------------------------------------
// Ceremonies

/// A new file for a secret, mode 0600; refused if it exists.
fn create_secret(path: &Path, what: &str) -> Result<File, CliError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CliError::Usage(format!(
                "{what} {} already exists; refusing to overwrite it",
                path.display()
            )),
            _ => io_err(format!("cannot create {what} {}", path.display()))(e),
        })
}

fn write_secret(mut f: File, path: &Path, text: &[u8]) -> Result<(), CliError> {
    f.write_all(text)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("cannot write {}", path.display())))
}

fn share_file_text(
    officer: &str,
    user: &PinShare,
    so: &PinShare,
    token: &str,
) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "# vvgate PIN shares {idx} of officer {officer:?}\n\
         # token: {token}\n\
         # Keep this file secret and offline. Every key ceremony needs it together with the\n\
         # other officer's file; neither file alone says anything about the PINs.\n\
         {USER_SHARE} {}\n\
         {SO_SHARE} {}\n",
        user.as_text(),
        so.as_text(),
        idx = user.index(),
    ))
}

fn init(a: &InitArgs) -> Result<(), CliError> {
    let label = match (&a.token.token_label, &a.token.token_serial) {
        (Some(l), None) => l.clone(),
        _ => {
            return Err(CliError::Usage(
                "init needs --token-label: the label of the new token (its serial is assigned by the token)"
                    .into(),
            ))
        }
    };
    let officers = officers(&a.officers)?;
    let o = &a.officers;
    if o.share_a == o.share_b || o.share_a == a.pin_file || o.share_b == a.pin_file {
        return Err(CliError::Usage(
            "--share-a, --share-b and --pin-file must be three different files".into(),
        ));
    }
    let dest = destination(&a.audit)?;
    let cfg = dest.as_ref().and_then(|s| s.config.as_ref());
    let tok = resolve_token(&a.token, cfg)?;
    // Reserve the three files first: a token must never end up with PINs nobody holds.
    let files = [
        (&o.share_a, "share file"),
        (&o.share_b, "share file"),
        (&a.pin_file, "PIN file"),
    ];
    let mut handles = Vec::new();
    for (path, what) in files {
        match create_secret(path, what) {
            Ok(f) => handles.push(f),
            Err(e) => {
                for (p, _) in files.iter().take(handles.len()) {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        }
    }
    let remove_all = || {
        for (p, _) in files {
            let _ = std::fs::remove_file(p);
        }
    };
    let made = (|| {
        let user_pin = ceremony::random_pin()?;
        let so_pin = ceremony::random_pin()?;
        let (ua, ub) = ceremony::split_pin(&user_pin)?;
        let (sa, sb) = ceremony::split_pin(&so_pin)?;
        let t = ceremony::init_token(
            &tok.module,
            &label,
            &SecretString::from(so_pin.as_str()),
            &SecretString::from(user_pin.as_str()),
            &officers,
        )?;
        Ok::<_, HsmError>((t, user_pin, ua, ub, sa, sb))
    })();
    let (t, user_pin, ua, ub, sa, sb) = match made {
        Ok(v) => v,
        Err(e) => {
            remove_all();
            return Err(hsm(e));
        }
    };
    let [fa, fb, fp] = <[File; 3]>::try_from(handles)
        .map_err(|_| CliError::Failed("internal: three files expected".into()))?;
    write_secret(
        fa,
        &o.share_a,
        share_file_text(&officers.a, &ua, &sa, &t.token).as_bytes(),
    )?;
    write_secret(
        fb,
        &o.share_b,
        share_file_text(&officers.b, &ub, &sb, &t.token).as_bytes(),
    )?;
    write_secret(fp, &a.pin_file, user_pin.as_bytes())?;
    drop(user_pin);
    println!("token initialised: {}", t.token);
    println!(
        "share A of officer {:?}: {} (0600)",
        officers.a,
        o.share_a.display()
    );
    println!(
        "share B of officer {:?}: {} (0600)",
        officers.b,
        o.share_b.display()
    );
    println!(
        "gateway PIN credential: {} (0600; give it to vvgated as a systemd credential, then delete it)",
        a.pin_file.display()
    );
    let sh = Shares {
        officers,
        a: ua,
        b: ub,
    };
    finish(&tok, &sh, &a.audit, dest.as_ref(), None, &t)
}

fn generate(a: &GenerateArgs) -> Result<(), CliError> {
    if a.label.is_some() && a.purpose.len() > 1 {
        return Err(CliError::Usage(
            "--label names one key: give one --purpose with it".into(),
        ));
    }
    let mut purposes = a.purpose.clone();
    purposes.dedup();
    let sh = read_shares(&a.officers)?;
    let dest = destination(&a.audit)?;
    let cfg = dest.as_ref().and_then(|s| s.config.as_ref());
    let tok = resolve_token(&a.token, cfg)?;
    let c = open(&tok, &sh)?;
    let mut merged: Option<Transcript> = None;
    for p in &purposes {
        let label = a
            .label
            .clone()
            .unwrap_or_else(|| format!("vvgate {} v{}", p.name(), a.version));
        let t = match c.generate(*p, a.version, &label) {
            Ok(t) => t,
            Err(e) => {
                // Keys made before this one exist: record them, then report the failure.
                if let Some(m) = merged.take() {
                    let key = signing_key(&a.audit, cfg, &c)?;
                    drop(c);
                    print_keys(&m);
                    finish(&tok, &sh, &a.audit, dest.as_ref(), key, &m)?;
                }
                return Err(hsm(e));
            }
        };
        merged = Some(match merged.take() {
            None => t,
            Some(mut m) => {
                m.keys.extend(t.keys);
                m.purpose = None;
                m
            }
        });
    }
    let key = signing_key(&a.audit, cfg, &c)?;
    drop(c);
    let t = merged.ok_or_else(|| CliError::Usage("nothing to generate".into()))?;
    print_keys(&t);
    finish(&tok, &sh, &a.audit, dest.as_ref(), key, &t)
}

fn list(a: &ListArgs) -> Result<(), CliError> {
    let sh = read_shares(&a.officers)?;
    let cfg = a.gw.where_().load()?;
    let tok = resolve_token(&a.token, cfg.as_ref())?;
    let c = open(&tok, &sh)?;
    let keys = c.list().map_err(hsm)?;
    let token = c.token().to_owned();
    drop(c);
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&keys).map_err(|e| CliError::Failed(e.to_string()))?
        );
        return Ok(());
    }
    println!("token {token}: {} keys", keys.len());
    for k in &keys {
        let what = match (k.purpose, k.version) {
            (Some(p), Some(v)) => format!("{} v{v}", p.name()),
            _ => "(no purpose)".into(),
        };
        let verdict = match k.failures.first() {
            None => "ok".to_owned(),
            Some(f) => format!("REFUSED: {} {}", f.attribute, f.detail),
        };
        println!(
            "{:<13} {:<16} {:<12} {verdict}",
            k.key_ref,
            what,
            k.kind.as_deref().unwrap_or("?")
        );
        if !k.label.is_empty() {
            println!("              label {:?}", k.label);
        }
        if !k.public_key_b64.is_empty() {
            println!("              public key {}", k.public_key_b64);
        }
    }
    Ok(())
}

fn rotate(a: &RotateArgs) -> Result<(), CliError> {
    let sh = read_shares(&a.officers)?;
    let dest = destination(&a.audit)?;
    let cfg = dest.as_ref().and_then(|s| s.config.as_ref());
    let tok = resolve_token(&a.token, cfg)?;
    let c = open(&tok, &sh)?;
    let next = c
        .versions(a.purpose)
        .map_err(hsm)?
        .last()
        .map_or(1, |v| v.saturating_add(1));
    let label = a
        .label
        .clone()
        .unwrap_or_else(|| format!("vvgate {} v{next}", a.purpose.name()));
    let t = c.rotate(a.purpose, &label).map_err(hsm)?;
    let key = signing_key(&a.audit, cfg, &c)?;
    drop(c);
    print_keys(&t);
    println!(
        "the gateway keeps using its configured version until its configuration names the new one and it restarts"
    );
    finish(&tok, &sh, &a.audit, dest.as_ref(), key, &t)
}

/// Where the configuration still uses `key`, if it does.
fn configured_as(cfg: &Config, key: &KeyRef) -> Option<String> {
    let mut uses: Vec<(String, &KeyRef)> = vec![
        ("tls.server_key".into(), &cfg.tls.server_key),
        ("audit.checkpoint_key".into(), &cfg.audit.checkpoint_key),
    ];
    if let Some(k) = &cfg.nats.key {
        uses.push(("nats.key".into(), k));
    }
    for (kid, k) in &cfg.feedback_keys {
        uses.push((format!("telemetry_gateway.feedback_ed25519_keys.{kid}"), k));
    }
    for (kid, k) in &cfg.evidence.keys {
        uses.push((format!("evidence.keys.{kid}"), k));
    }
    uses.into_iter().find(|(_, k)| *k == key).map(|(n, _)| n)
}

fn retire(a: &RetireArgs) -> Result<(), CliError> {
    let sh = read_shares(&a.officers)?;
    let dest = destination(&a.audit)?;
    let cfg = dest.as_ref().and_then(|s| s.config.as_ref());
    let key = KeyRef::Pkcs11 {
        id: a.purpose.id(a.version),
    };
    if let Some(used) = cfg.and_then(|c| configured_as(c, &key)) {
        return Err(CliError::Usage(format!(
            "{key} is still the gateway's {used}: point the configuration at another version and restart the gateway first"
        )));
    }
    let tok = resolve_token(&a.token, cfg)?;
    let c = open(&tok, &sh)?;
    let t = c.retire(a.purpose, a.version).map_err(hsm)?;
    let signer = signing_key(&a.audit, cfg, &c)?;
    drop(c);
    print_keys(&t);
    finish(&tok, &sh, &a.audit, dest.as_ref(), signer, &t)
}

fn csr(a: &CsrArgs) -> Result<(), CliError> {
    if a.cn.trim().is_empty() {
        return Err(CliError::Usage("--cn must not be empty".into()));
    }
    let sh = read_shares(&a.officers)?;
    let dest = destination(&a.audit)?;
    let cfg = dest.as_ref().and_then(|s| s.config.as_ref());
    let tok = resolve_token(&a.token, cfg)?;
    let c = open(&tok, &sh)?;
    let version =
        match a.version {
            Some(v) => v,
            None => *c.versions(a.purpose).map_err(hsm)?.last().ok_or_else(|| {
                CliError::Failed(format!("no {} key on the token", a.purpose.name()))
            })?,
        };
    let req = CsrRequest {
        common_name: a.cn.clone(),
        subject_alt_names: a.san.clone(),
    };
    let out = c.csr(a.purpose, version, &req).map_err(hsm)?;
    let key = signing_key(&a.audit, cfg, &c)?;
    drop(c);
    std::fs::write(&a.out, out.pem.as_bytes())
        .map_err(io_err(format!("cannot write {}", a.out.display())))?;
    println!(
        "CSR for {} written to {}",
        KeyRef::Pkcs11 {
            id: a.purpose.id(version)
        },
        a.out.display()
    );
    finish(&tok, &sh, &a.audit, dest.as_ref(), key, &out.transcript)
}

fn record(a: &RecordArgs) -> Result<(), CliError> {
    let src = a.state.source()?;
    for f in &a.files {
        let text = std::fs::read(f).map_err(io_err(format!("cannot read {}", f.display())))?;
        let doc: Value = serde_json::from_slice(&text)
            .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", f.display())))?;
        crate::keys::verify(&doc).map_err(|e| CliError::Failed(format!("{}: {e}", f.display())))?;
        println!("{}: {}", f.display(), append(&src, &doc)?);
    }
    Ok(())
}
