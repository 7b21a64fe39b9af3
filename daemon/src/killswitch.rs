//! The kill switch (CONTRACT.md §2.4, row 54): one atomic control that stops all producer
//! traffic. Engaging takes effect in memory at once (every request 403, every connection
//! closed, every handshake refused) and is then written to storage together with its
//! `control.kill` audit entry; the operator is answered only after that commit. Re-arming
//! needs two officers, each with their own secret, checked against the salted verifiers in
//! `[control] rearm_officers`; it is written (`control.rearm`) before traffic flows again.
//! Refused attempts are audited as `control.refused`.

use std::fmt;
use std::num::NonZeroU32;

use base64::Engine;
use ring::pbkdf2;
use zeroize::Zeroizing;

use crate::audit::{write_details, Detail, ACTOR_SYSTEM};
use crate::commit::{Action, AuditItem, Op, Outcome};
use crate::gateway::Gateway;

/// How an officer secret starts (the rest is 32 random bytes, base64url).
pub const SECRET_PREFIX: &str = "vvgate-officer-v1-";
/// PBKDF2 rounds for new verifiers. Secrets are 256 random bits, so the rounds only slow
/// down guessing a verifier taken from a configuration backup.
pub const DEFAULT_ITERATIONS: u32 = 100_000;
const MIN_ITERATIONS: u32 = 10_000;
const ALG: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// A salted verifier of one officer's secret:
/// `pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct OfficerVerifier {
    iterations: NonZeroU32,
    salt: [u8; 16],
    hash: [u8; 32],
}

impl fmt::Debug for OfficerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OfficerVerifier(..)")
    }
}

impl fmt::Display for OfficerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pbkdf2-sha256${}${}${}",
            self.iterations,
            B64.encode(self.salt),
            B64.encode(self.hash)
        )
    }
}

impl OfficerVerifier {
    /// Parse a verifier from the configuration.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split('$');
        let (Some("pbkdf2-sha256"), Some(iter), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(
                "expected pbkdf2-sha256$<iterations>$<salt>$<hash> (vvctl officer new)".into(),
            );
        };
        let iterations = iter
            .parse::<u32>()
            .ok()
            .filter(|&i| i >= MIN_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or(format!(
                "iterations {iter}: at least {MIN_ITERATIONS} are needed"
            ))?;
        let decode = |what: &str, v: &str, len: usize| -> Result<Vec<u8>, String> {
            let b = B64
                .decode(v.trim_end_matches('='))
                .map_err(|_| format!("{what} is not base64"))?;
            if b.len() == len {
                Ok(b)
            } else {
                Err(format!("{what} must be {len} bytes, found {}", b.len()))
            }
        };
        let mut out = Self {
            iterations,
            salt: [0; 16],
            hash: [0; 32],
        };
        out.salt.copy_from_slice(&decode("salt", salt, 16)?);
        out.hash.copy_from_slice(&decode("hash", hash, 32)?);
        Ok(out)
    }

    /// A verifier for `secret` with a fresh salt.
    pub fn create(secret: &[u8], iterations: u32) -> Result<Self, String> {
        let iterations = NonZeroU32::new(iterations.max(MIN_ITERATIONS)).ok_or("iterations")?;
        let mut salt = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| "no system randomness".to_string())?;
        let mut hash = [0u8; 32];
        pbkdf2::derive(ALG, iterations, &salt, secret, &mut hash);
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `secret` matches (constant time in the secret).
    pub fn verify(&self, secret: &[u8]) -> bool {
        pbkdf2::verify(ALG, self.iterations, &self.salt, secret, &self.hash).is_ok()
    }
}

/// A new officer secret (text to keep in a file or on paper).
pub fn new_secret() -> Result<Zeroizing<String>, String> {
    let mut raw = Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), raw.as_mut())
        .map_err(|_| "no system randomness".to_string())?;
    let mut s = Zeroizing::new(String::with_capacity(64));
    s.push_str(SECRET_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(raw.as_ref(), &mut s);
    Ok(s)
}

/// One officer's claim in a re-arm request. The secret is wiped when dropped.
pub struct OfficerClaim {
    pub name: String,
    pub secret: Zeroizing<String>,
}

/// Who asked (for the audit entry): the channel and the peer's credentials.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `socket` (vvctl) or `console` (vvgate-console).
    pub via: &'static str,
    pub uid: u32,
    pub pid: i32,
}

impl Caller {
    fn text(&self) -> String {
        format!("{} uid={} pid={}", self.via, self.uid, self.pid)
    }
}

/// Engage the kill switch: at once in memory, then durably with its audit entry. An error
/// means the switch is engaged but not yet on disk (it stays engaged until a re-arm).
pub async fn kill(gw: &Gateway, caller: &Caller, reason: &str) -> Result<u64, String> {
    let was = gw.killed.get();
    gw.engage_kill();
    if !was {
        tracing::warn!(via = caller.via, uid = caller.uid, "kill switch engaged");
    }
    let by = caller.text();
    let reason: String = reason.chars().take(200).collect();
    let open = i64::try_from(gw.connections.get()).unwrap_or(i64::MAX);
    let state = vvgate_storage::KillSwitch::V1 {
        engaged: true,
        changed_at: gw.clock.now().secs(),
        audit_index: 0,
        by: by.clone(),
        reason: reason.clone(),
    };
    commit_change(
        gw,
        "control.kill",
        state,
        &mut [
            ("by", Detail::Str(&by)),
            ("reason", Detail::Str(&reason)),
            ("already_engaged", Detail::Int(i64::from(was))),
            ("open_connections", Detail::Int(open)),
        ],
    )
    .await
    .map_err(|e| format!("the kill switch is engaged but could not be stored: {e}"))
}

/// Re-arm: two different configured officers, each with their own valid secret.
pub async fn rearm(gw: &Gateway, caller: &Caller, claims: &[OfficerClaim]) -> Result<u64, String> {
    let by = caller.text();
    let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
    if let Err(problem) = check_officers(gw, claims) {
        refused(gw, caller, "rearm", problem, &names).await;
        return Err(problem.to_string());
    }
    if !gw.killed.get() {
        return Err("the kill switch is not engaged".into());
    }
    let generation = gw.kill_generation.get();
    let officers = names.join(",");
    let state = vvgate_storage::KillSwitch::V1 {
        engaged: false,
        changed_at: gw.clock.now().secs(),
        audit_index: 0,
        by: format!("{by} officers={officers}"),
        reason: String::new(),
    };
    let index = commit_change(
        gw,
        "control.rearm",
        state,
        &mut [
            ("by", Detail::Str(&by)),
            ("officers", Detail::Str(&officers)),
        ],
    )
    .await
    .map_err(|e| format!("re-arm not stored, the kill switch stays engaged: {e}"))?;
    // A kill that arrived while the re-arm was being written wins: its entry comes later.
    if gw.kill_generation.get() == generation {
        gw.killed.set(false);
        tracing::warn!(officers, "kill switch re-armed");
        Ok(index)
    } else {
        Err("a kill arrived during the re-arm; the kill switch stays engaged".into())
    }
}

/// Why a re-arm request is refused, if it is.
fn check_officers(gw: &Gateway, claims: &[OfficerClaim]) -> Result<(), &'static str> {
    let cfg = gw.cfg();
    let officers = &cfg.control.rearm_officers;
    if officers.len() < 2 {
        return Err("no re-arm officers are configured ([control] rearm_officers)");
    }
    let [a, b] = claims else {
        return Err("re-arming needs exactly two officers");
    };
    if a.name == b.name {
        return Err("re-arming needs two different officers");
    }
    if a.secret.as_bytes() == b.secret.as_bytes() {
        return Err("both officers gave the same secret");
    }
    // Check both, always, so the time taken does not tell which one failed.
    let ok_a = officers
        .get(&a.name)
        .is_some_and(|v| v.verify(a.secret.as_bytes()));
    let ok_b = officers
        .get(&b.name)
        .is_some_and(|v| v.verify(b.secret.as_bytes()));
    if ok_a && ok_b {
        Ok(())
    } else {
        Err("officer name or secret not accepted")
    }
}

/// Audit a refused control command (`control.refused`); never fails the caller.
pub async fn refused(
    gw: &Gateway,
    caller: &Caller,
    command: &str,
    reason: &str,
    officers: &[&str],
) {
    tracing::warn!(
        via = caller.via,
        uid = caller.uid,
        command,
        reason,
        "control command refused"
    );
    let by = caller.text();
    let officers = officers.join(",");
    gw.audit_system(
        "control.refused",
        &mut [
            ("by", Detail::Str(&by)),
            ("command", Detail::Str(command)),
            ("reason", Detail::Str(reason)),
            ("officers", Detail::Str(&officers)),
        ],
    )
    .await;
}

async fn commit_change(
    gw: &Gateway,
    event_type: &'static str,
    state: vvgate_storage::KillSwitch,
    fields: &mut [(&str, Detail<'_>)],
) -> Result<u64, String> {
    let mut details = Vec::with_capacity(200);
    write_details(&mut details, fields);
    let op = Op {
        request_id: gw.new_request_id(),
        route: None,
        action: Action::SetKillSwitch(state),
        audit: AuditItem {
            actor: ACTOR_SYSTEM,
            event_type,
            details,
        },
        reply: None,
    };
    match gw.committer.commit(op).await {
        Ok(Outcome::Committed { audit_index }) => Ok(audit_index),
        Ok(_) => Err("storage refused the change".into()),
        Err(e) => Err(format!("storage unavailable ({e:?})")),
    }
}

/// The state stored on disk, applied at start before any listener opens.
pub fn restore(gw: &Gateway) -> Result<(), vvgate_storage::StorageError> {
    let state = gw.store.read()?.kill_switch()?;
    if state.engaged() {
        gw.engage_kill();
        tracing::warn!("kill switch engaged (stored state): producer traffic is refused until re-armed by two officers");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_round_trip_and_check_secrets() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX));
        let v = OfficerVerifier::create(secret.as_bytes(), MIN_ITERATIONS).unwrap();
        let parsed = OfficerVerifier::parse(&v.to_string()).unwrap();
        assert_eq!(parsed, v);
        assert!(parsed.verify(secret.as_bytes()));
        assert!(!parsed.verify(b"vvgate-officer-v1-guess"));
        assert_eq!(format!("{v:?}"), "OfficerVerifier(..)");
    }

    #[test]
    fn bad_verifiers_are_named() {
        for (text, want) in [
            ("sha256$x", "expected pbkdf2-sha256"),
            (
                "pbkdf2-sha256$10$AAAAAAAAAAAAAAAAAAAAAA$AAAA",
                "at least 10000",
            ),
            ("pbkdf2-sha256$20000$!!$AAAA", "salt is not base64"),
            (
                "pbkdf2-sha256$20000$AAAAAAAAAAAAAAAAAAAAAA$AAAA",
                "hash must be 32 bytes",
            ),
        ] {
            let e = OfficerVerifier::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
