//! Hot reload (`SIGHUP`, `vvctl reload`): read the configuration file again, validate it
//! completely, build the new TLS configuration (certificates, server key, CA, CRLs, pins),
//! and only then swap both. A bad file is refused with the same messages as at start and the
//! running state is untouched (`config.reload_rejected`). After a swap, open connections whose
//! certificate the new pins or CRLs refuse are closed; new handshakes use the new TLS
//! configuration, requests read from now on the new pins, keys, tenant map and limits
//! (`config.reloaded`).
//!
//! Settings that shape the process (listeners, storage, key store, queue, audit signing,
//! control socket) keep their running values until a restart; the entry names the ones the
//! file changed.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use vvgate_hsm::KeyStore;

use crate::audit::Detail;
use crate::config::Config;
use crate::gateway::{Gateway, TlsState};

/// What a reload needs besides the gateway: where the file is and the open key store.
pub struct Reloader {
    pub config_path: PathBuf,
    pub keystore: Arc<dyn KeyStore>,
}

/// What a successful reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// Producer connections closed because their certificate is no longer accepted.
    pub closed_connections: usize,
    /// Changed keys that apply only after a restart.
    pub restart_required: Vec<&'static str>,
}

/// Reload now. `by` names the trigger in the audit entry (`signal`, `socket uid=…`).
pub async fn reload(gw: &Gateway, r: &Reloader, by: &str) -> Result<Reloaded, String> {
    crate::control::sd_notify_reloading();
    let result = build(gw, r);
    let out = match result {
        Err(e) => {
            gw.metrics
                .reloads_rejected
                .set(gw.metrics.reloads_rejected.get() + 1);
            tracing::error!(error = %e, "configuration reload rejected; the running configuration stays");
            gw.audit_system(
                "config.reload_rejected",
                &mut [("by", Detail::Str(by)), ("error", Detail::Str(&e))],
            )
            .await;
            Err(e)
        }
        Ok((cfg, tls, restart_required)) => {
            gw.swap_config(Rc::new(cfg));
            gw.metrics.reloads.set(gw.metrics.reloads.get() + 1);
            let closed_connections = gw.swap_tls(tls);
            let fixed = restart_required.join(",");
            tracing::info!(
                closed_connections,
                restart_required = %fixed,
                "configuration reloaded"
            );
            gw.audit_system(
                "config.reloaded",
                &mut [
                    ("by", Detail::Str(by)),
                    (
                        "closed_connections",
                        Detail::Int(i64::try_from(closed_connections).unwrap_or(i64::MAX)),
                    ),
                    ("restart_required", Detail::Str(&fixed)),
                ],
            )
            .await;
            Ok(Reloaded {
                closed_connections,
                restart_required,
            })
        }
    };
    crate::control::sd_notify("READY=1");
    out
}

type Built = (Config, TlsState, Vec<&'static str>);

fn build(gw: &Gateway, r: &Reloader) -> Result<Built, String> {
    let mut cfg = Config::load(&r.config_path).map_err(|e| e.to_string())?;
    let setup = crate::tls::server_setup(&cfg, r.keystore.as_ref()).map_err(|e| e.to_string())?;
    let running = gw.cfg();
    let restart_required = keep_fixed(&running, &mut cfg);
    let tls = TlsState {
        acceptor: futures_rustls::TlsAcceptor::from(setup.server),
        verifier: setup.verifier,
        crl_next_update: setup.crl_next_update,
    };
    Ok((cfg, tls, restart_required))
}

/// Put the running values of the settings that need a restart into `new`; return the names
/// of those the file changed. Compared through `Debug`, which prints references and paths,
/// never key material.
fn keep_fixed(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! fixed {
        ($($name:literal => $($field:ident).+),* $(,)?) => {$(
            if format!("{:?}", new.$($field).+) != format!("{:?}", running.$($field).+) {
                changed.push($name);
                new.$($field).+ = running.$($field).+.clone();
            }
        )*};
    }
    fixed!(
        "mode" => mode,
        "state_dir" => state_dir,
        "listen" => listen,
        "ops.listen" => ops_listen,
        "max_in_flight" => limits.max_in_flight,
        "group_commit" => group_commit_max_requests,
        "group_commit_max_delay_us" => group_commit_max_delay,
        "storage_cache_bytes" => storage_cache_bytes,
        "queue_backend" => queue_backend,
        "queue_subject" => queue_subject,
        "dlq_subject" => dlq_subject,
        "enforce_mitre_catalogue" => enforce_mitre_catalogue,
        "mitre_catalogue_path" => mitre_catalogue_path,
        "nats" => nats,
        "audit" => audit,
        "keystore" => keystore,
        "evidence" => evidence,
        "control.socket_path" => control.socket_path,
        "control.allowed_uid" => control.allowed_uid,
        "control.allowed_gid" => control.allowed_gid,
    );
    changed
}
