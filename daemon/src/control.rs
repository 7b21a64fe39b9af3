//! The control socket: a Unix socket for operators (`vvctl`), checked with `SO_PEERCRED`.
//! One JSON request line in, JSON lines out, then the connection closes.
//!
//! Commands: `{"cmd":"status"}`, `{"cmd":"spool_tail","limit":N}`,
//! `{"cmd":"audit_export","from":N}`, `{"cmd":"audit_checkpoints","from":N}`,
//! `{"cmd":"audit_checkpoint","now":B}`, `{"cmd":"audit_prove","index":N,"size":M}`,
//! `{"cmd":"audit_consistency","from":N,"to":M}`, `{"cmd":"audit_cosign","note":"…"}`,
//! `{"cmd":"kill","reason":"…"}`, `{"cmd":"rearm","officers":[{"name":"…","secret":"…"},…]}`,
//! `{"cmd":"reload"}`. `"via":"console"` marks requests from the serial console shell.
//! A peer that is not allowed is refused and audited (`control.refused`).
//! Reads run in bounded chunks on the event loop; writes go through the storage thread.
//! Also here: `sd_notify` for systemd.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use futures_lite::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use smol::io::BufReader;
use smol::net::unix::{UnixListener, UnixStream};
use smol::LocalExecutor;

use crate::config::ControlConfig;
use crate::gateway::Gateway;
use crate::json::{Cjson, Doc, Kind, Tape};
use crate::killswitch::{self, Caller, OfficerClaim};
use crate::reload::Reloader;

/// Bind the control socket, replacing a stale socket file but never a live one.
pub async fn bind(cfg: &ControlConfig) -> std::io::Result<(UnixListener, ControlConfig)> {
    let path = &cfg.socket_path;
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running gateway", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let mode = if cfg.allowed_gid.is_some() {
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok((listener, cfg.clone()))
}

/// Remove the socket file at shutdown.
pub fn unbind(cfg: &ControlConfig) {
    let _ = std::fs::remove_file(&cfg.socket_path);
}

/// The peer's credentials (`SO_PEERCRED`) and whether they may use the socket: root, the
/// gateway's own user, `allowed_uid`, or a member of `allowed_gid` (primary group).
fn peer(stream: &UnixStream, cfg: &ControlConfig) -> (Caller, bool) {
    let Ok(cred) = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
    else {
        let unknown = Caller {
            via: "socket",
            uid: u32::MAX,
            pid: 0,
        };
        return (unknown, false);
    };
    let me = nix::unistd::geteuid().as_raw();
    let ok = cred.uid() == 0
        || cred.uid() == me
        || cfg.allowed_uid == Some(cred.uid())
        || cfg.allowed_gid == Some(cred.gid());
    let caller = Caller {
        via: "socket",
        uid: cred.uid(),
        pid: cred.pid(),
    };
    (caller, ok)
}

/// Accept operator connections.
pub async fn serve(
    gw: Rc<Gateway>,
    ex: Rc<LocalExecutor<'static>>,
    bound: (UnixListener, ControlConfig),
    reloader: Rc<Reloader>,
) {
    let (listener, cfg) = bound;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            smol::Timer::after(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (caller, ok) = peer(&stream, &cfg);
        let gw = Rc::clone(&gw);
        if !ok {
            let mut s = stream;
            ex.spawn(async move {
                // Take the request line first (unread input would turn the close into a reset
                // and the client would not see the answer); it is not looked at.
                let mut discard = zeroize::Zeroizing::new(Vec::new());
                let mut reader = BufReader::new(s.clone()).take(MAX_REQUEST as u64);
                let _ = futures_lite::future::or(
                    async { reader.read_until(b'\n', &mut discard).await.map(|_| ()) },
                    async {
                        smol::Timer::after(std::time::Duration::from_secs(2)).await;
                        Ok(())
                    },
                )
                .await;
                killswitch::refused(&gw, &caller, "connect", "peer not allowed", &[]).await;
                let _ = s.write_all(b"{\"error\":\"not allowed\"}\n").await;
            })
            .detach();
            continue;
        }
        let reloader = Rc::clone(&reloader);
        ex.spawn(async move {
            if let Err(e) = handle(&gw, &reloader, caller, stream).await {
                tracing::warn!(error = %e, "control connection failed");
            }
        })
        .detach();
    }
}

/// The longest request line (a cosigned checkpoint note fits).
const MAX_REQUEST: usize = 80 * 1024;

/// One JSON line: the answer, or `{"error":"…"}`.
fn answer(r: Result<serde_json::Value, String>) -> Vec<u8> {
    let v = r.unwrap_or_else(|e| serde_json::json!({ "error": e }));
    let mut out = serde_json::to_vec(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

async fn handle(
    gw: &Gateway,
    reloader: &Reloader,
    mut caller: Caller,
    stream: UnixStream,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.clone());
    // May carry officer secrets: wiped when dropped.
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = futures_lite::future::or(
        async { reader.read_line(&mut line).await.map(Some) },
        async {
            smol::Timer::after(std::time::Duration::from_secs(5)).await;
            Ok(None)
        },
    )
    .await?;
    let mut out = stream;
    if read.is_none() || line.len() > MAX_REQUEST {
        return out
            .write_all(b"{\"error\":\"request line missing or too long\"}\n")
            .await;
    }
    let mut tape = Tape::new();
    let Ok(doc) = tape.parse(line.trim_end().as_bytes()) else {
        return out
            .write_all(b"{\"error\":\"request is not JSON\"}\n")
            .await;
    };
    let cmd = doc
        .get(Doc::ROOT, "cmd")
        .filter(|&i| doc.kind(i) == Kind::Str)
        .map(|i| doc.str(i).into_owned())
        .unwrap_or_default();
    if doc
        .get(Doc::ROOT, "via")
        .is_some_and(|i| doc.str_eq(i, "console"))
    {
        caller.via = "console";
    }
    let text = |name: &str| {
        doc.get(Doc::ROOT, name)
            .filter(|&i| doc.kind(i) == Kind::Str)
            .map(|i| doc.str(i).into_owned())
    };
    let num = |name: &str, default: u64| {
        doc.get(Doc::ROOT, name)
            .and_then(|i| doc.as_i64(i))
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(default)
    };
    match cmd.as_str() {
        "status" => {
            let mut buf = Vec::new();
            status(gw, &mut buf);
            buf.push(b'\n');
            out.write_all(&buf).await
        }
        "spool_tail" => {
            spool_tail(
                gw,
                &mut out,
                usize::try_from(num("limit", 10).min(10_000)).unwrap_or(10),
            )
            .await
        }
        "audit_export" => audit_export(gw, &mut out, num("from", 1).max(1)).await,
        "audit_checkpoints" => {
            let r = gw.store.read().map_err(|e| e.to_string()).and_then(|r| {
                crate::audit::query::checkpoints(&r, num("from", 0), 100_000)
                    .map_err(|e| e.to_string())
            });
            match r {
                Ok(list) => {
                    let mut buf = Vec::new();
                    for v in list {
                        buf.extend(answer(Ok(v)));
                    }
                    out.write_all(&buf).await
                }
                Err(e) => out.write_all(&answer(Err(e))).await,
            }
        }
        "audit_checkpoint" => {
            let flag = |name| {
                doc.get(Doc::ROOT, name)
                    .is_some_and(|i| doc.kind(i) == Kind::Bool && doc.raw(i) == "true")
            };
            let r = audit_checkpoint(gw, flag("now"), flag("vkey_only")).await;
            out.write_all(&answer(r)).await
        }
        "audit_prove" => {
            let size = doc.get(Doc::ROOT, "size").map(|_| num("size", 0));
            let r = gw.store.read().map_err(|e| e.to_string()).and_then(|r| {
                crate::audit::query::prove(&r, num("index", 0), size)
                    .map(|i| i.to_json())
                    .map_err(|e| e.to_string())
            });
            out.write_all(&answer(r)).await
        }
        "audit_consistency" => {
            let to = doc.get(Doc::ROOT, "to").map(|_| num("to", 0));
            let r = gw.store.read().map_err(|e| e.to_string()).and_then(|r| {
                crate::audit::query::consistency(&r, num("from", 0), to).map_err(|e| e.to_string())
            });
            out.write_all(&answer(r)).await
        }
        "audit_retention" => {
            let r = gw
                .store
                .read()
                .map_err(|e| e.to_string())
                .and_then(|r| crate::audit::query::retention(&r).map_err(|e| e.to_string()));
            out.write_all(&answer(r)).await
        }
        "audit_cosign" => {
            let note = doc
                .get(Doc::ROOT, "note")
                .filter(|&i| doc.kind(i) == Kind::Str)
                .map(|i| doc.str(i).into_owned().into_bytes());
            let r = match note {
                None => Err("audit_cosign needs \"note\": the cosigned checkpoint".to_string()),
                Some(n) => gw
                    .committer
                    .cosign(n)
                    .await
                    .map(|added| serde_json::json!({ "added": added })),
            };
            out.write_all(&answer(r)).await
        }
        "kill" => {
            let reason = text("reason").unwrap_or_default();
            let r = killswitch::kill(gw, &caller, &reason)
                .await
                .map(|index| serde_json::json!({ "kill_switch": "engaged", "audit_index": index }));
            out.write_all(&answer(r)).await
        }
        "rearm" => {
            let mut claims = Vec::new();
            if let Some(arr) = doc
                .get(Doc::ROOT, "officers")
                .filter(|&i| doc.kind(i) == Kind::Arr)
            {
                for o in doc.elements(arr).take(4) {
                    let field = |k: &str| {
                        doc.get(o, k)
                            .filter(|&i| doc.kind(i) == Kind::Str)
                            .map(|i| zeroize::Zeroizing::new(doc.str(i).into_owned()))
                            .unwrap_or_default()
                    };
                    claims.push(OfficerClaim {
                        name: field("name").to_string(),
                        secret: field("secret"),
                    });
                }
            }
            let r = killswitch::rearm(gw, &caller, &claims)
                .await
                .map(|index| serde_json::json!({ "kill_switch": "armed", "audit_index": index }));
            out.write_all(&answer(r)).await
        }
        "reload" => {
            let by = format!("{} uid={}", caller.via, caller.uid);
            let r = crate::reload::reload(gw, reloader, &by).await.map(|done| {
                serde_json::json!({
                    "reloaded": true,
                    "closed_connections": done.closed_connections,
                    "restart_required": done.restart_required,
                })
            });
            out.write_all(&answer(r)).await
        }
        "keys_transcript" => {
            let r = crate::keys::append_via_gateway(gw, line.trim_end()).await;
            out.write_all(&answer(r)).await
        }
        _ => out.write_all(b"{\"error\":\"unknown command\"}\n").await,
    }
}

fn status(gw: &Gateway, buf: &mut Vec<u8>) {
    let s = &gw.committer.shared;
    let reasons = gw.readiness();
    let mut w = Cjson::new(buf);
    w.begin_obj()
        .key("audit")
        .begin_obj()
        .key("checkpoint_size")
        .u64(s.checkpoint_size.load(Ordering::Relaxed))
        .key("problem");
    match s.audit_problem() {
        Some(p) => w.str(&p),
        None => w.null(),
    };
    w.key("vkey")
        .str(&gw.audit_vkey)
        .end_obj()
        .key("audit_entries")
        .u64(s.audit_index.load(Ordering::Relaxed))
        .key("connections")
        .u64(u64::try_from(gw.connections.get()).unwrap_or(0))
        .key("crl_next_update");
    match gw.tls().and_then(|t| t.crl_next_update) {
        Some(n) => w.u64(n),
        None => w.null(),
    };
    w.key("forward")
        .begin_obj()
        .key("acked")
        .u64(gw.forward.acked.get())
        .key("connected")
        .bool(gw.forward.connected.get())
        .key("duplicates")
        .u64(gw.forward.duplicates.get())
        .key("errors")
        .u64(gw.forward.errors.get())
        .key("lag_seconds")
        .u64(gw.spool_lag_secs())
        .key("published")
        .u64(gw.forward.published.get())
        .end_obj()
        .key("kill_switch")
        .str(if gw.killed.get() { "engaged" } else { "armed" })
        .key("pid")
        .u64(u64::from(std::process::id()))
        .key("ready")
        .bool(reasons.is_empty())
        .key("reasons")
        .begin_arr();
    for r in &reasons {
        w.str(r);
    }
    w.end_arr()
        .key("spool_bytes")
        .u64(s.spool_bytes.load(Ordering::Relaxed))
        .key("spool_events")
        .u64(s.spool_count.load(Ordering::Relaxed))
        .key("version")
        .str(env!("CARGO_PKG_VERSION"))
        .end_obj();
}

/// The envelopes of one spool segment as JSON lines: metadata and the envelope itself.
pub fn spool_lines(seq: u64, raw: &[u8], out: &mut Vec<u8>) {
    match vvgate_storage::decode_spool(raw) {
        Ok(seg) => {
            for (i, item) in seg.items().iter().enumerate() {
                let mut w = Cjson::new(out);
                w.begin_obj()
                    .key("body")
                    .raw(item.body)
                    .key("integrity_hash")
                    .str(item.integrity_hash)
                    .key("kind")
                    .str(item.kind.as_str())
                    .key("msg_id")
                    .str(item.msg_id)
                    .key("position")
                    .u64(u64::try_from(i).unwrap_or(0))
                    .key("segment")
                    .u64(seq)
                    .key("spooled_at")
                    .u64(seg.spooled_at())
                    .end_obj();
                out.push(b'\n');
            }
        }
        Err(e) => {
            let mut w = Cjson::new(out);
            w.begin_obj()
                .key("error")
                .str(&e.to_string())
                .key("segment")
                .u64(seq)
                .end_obj();
            out.push(b'\n');
        }
    }
}

async fn spool_tail(gw: &Gateway, out: &mut UnixStream, limit: usize) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    if let Err(e) = tail_lines(&gw.store, limit, &mut buf) {
        return out
            .write_all(format!("{{\"error\":{:?}}}\n", e.to_string()).as_bytes())
            .await;
    }
    out.write_all(&buf).await
}

/// The newest `limit` envelopes as JSON lines, oldest first.
pub fn tail_lines(
    store: &vvgate_storage::Store,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), vvgate_storage::StorageError> {
    let segs = store.read()?.spool_tail(limit)?;
    let mut lines = Vec::new();
    for (seq, raw) in &segs {
        spool_lines(*seq, raw, &mut lines);
    }
    let text = lines
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>();
    for l in &text[text.len().saturating_sub(limit)..] {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    Ok(())
}

/// The newest checkpoint (after signing one when `now`) with the log's verifier key.
async fn audit_checkpoint(
    gw: &Gateway,
    now: bool,
    vkey_only: bool,
) -> Result<serde_json::Value, String> {
    let vkey = gw.audit_vkey.clone();
    if vkey_only {
        return Ok(serde_json::json!({ "vkey": vkey }));
    }
    if now {
        gw.committer.checkpoint().await?;
    }
    let latest = gw
        .store
        .read()
        .and_then(|r| r.checkpoint_latest())
        .map_err(|e| e.to_string())?;
    match latest {
        Some((size, note)) => Ok(serde_json::json!({
            "size": size,
            "note": String::from_utf8_lossy(&note),
            "vkey": vkey,
        })),
        None => Err(crate::audit::query::QueryError::NoCheckpoint.to_string()),
    }
}

async fn audit_export(gw: &Gateway, out: &mut UnixStream, from: u64) -> std::io::Result<()> {
    let mut next = from;
    loop {
        let rows = match gw.store.read().and_then(|r| r.audit_range(next, 1000)) {
            Ok(r) => r,
            Err(e) => {
                return out
                    .write_all(format!("{{\"error\":{:?}}}\n", e.to_string()).as_bytes())
                    .await
            }
        };
        if rows.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(rows.len() * 600);
        for (index, line) in &rows {
            buf.extend_from_slice(line);
            buf.push(b'\n');
            next = index + 1;
        }
        out.write_all(&buf).await?;
        smol::future::yield_now().await;
    }
}

/// Tell systemd a reload starts (`RELOADING=1` with the monotonic time systemd asks for).
pub fn sd_notify_reloading() {
    let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000
        })
        .unwrap_or(0);
    sd_notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// Ping the systemd watchdog at half its interval from the event loop: a loop that stops
/// turning (a blocking call, a livelock) stops the pings and systemd restarts the gateway.
/// Storage trouble is not a reason to restart (readiness reports it), so it does not stop them.
pub async fn watchdog(every: std::time::Duration) {
    loop {
        smol::Timer::after(every / 2).await;
        sd_notify("WATCHDOG=1");
    }
}

/// Tell systemd about a state change (`READY=1`, `STOPPING=1`, ...), if it is listening.
pub fn sd_notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(msg.as_bytes(), &addr))
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&path))
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
