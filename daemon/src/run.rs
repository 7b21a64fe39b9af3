//! Start-up and shutdown of `vvgated`.
//!
//! Start-up checks everything before serving: keys load, the TLS configuration builds, the
//! database opens with a known format. Then the listeners bind, `gateway.started` is
//! committed, and readiness is announced (a line on stdout and `READY=1` to systemd).
//! SIGTERM/SIGINT drain: no new connections, open ones finish their current request, the
//! last decisions are committed, `gateway.stopped` is written. SIGHUP reloads ([`crate::reload`]).
//! A kill switch stored as engaged is applied before the listeners open.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use smol::net::TcpListener;
use smol::{LocalExecutor, Timer};
use vvgate_hsm::file::FileKeyStore;
use vvgate_hsm::pkcs11::Pkcs11KeyStore;
use vvgate_hsm::{HsmError, KeyStore};
use vvgate_storage::{StorageError, Store};

use crate::audit::Detail;
use crate::commit::{self, CommitConfig};
use crate::config::{Config, ConfigError, KeystoreBackend};
use crate::exit;
use crate::gateway::{self, Gateway};
use crate::schema::Catalogue;
use crate::time::Clock;
use crate::tls::{self, TlsError};

/// Why the gateway could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("key store: {0}")]
    Keys(#[from] HsmError),
    /// A key store problem, named by the configuration key it concerns.
    #[error("{key}: {source}")]
    Key { key: String, source: HsmError },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("telemetry_gateway.mitre_catalogue_path {path}: {detail}")]
    Catalogue { path: String, detail: String },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardSetupError),
    #[error("queue: {0}")]
    Queue(crate::nats::NatsError),
}

impl RunError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) | RunError::Catalogue { .. } => exit::CONFIG,
            RunError::Keys(HsmError::PinRejected { .. })
            | RunError::Key {
                source: HsmError::PinRejected { .. },
                ..
            }
            | RunError::Tls(TlsError::ServerKey(HsmError::PinRejected { .. })) => exit::NOPERM,
            RunError::Keys(_) | RunError::Key { .. } => exit::UNAVAILABLE,
            RunError::Tls(TlsError::ServerKey(_)) => exit::UNAVAILABLE,
            RunError::Tls(_) => exit::CONFIG,
            RunError::Storage(_) => exit::IOERR,
            RunError::StateDir { .. } | RunError::Bind { .. } => exit::CANTCREAT,
            RunError::Io { .. } => exit::SOFTWARE,
            RunError::Forward(crate::forward::ForwardSetupError::Key(_)) => exit::UNAVAILABLE,
            RunError::Forward(_) | RunError::Queue(_) => exit::CONFIG,
        }
    }
}

/// Start-up progress at info level: each step and the milliseconds since the process began
/// starting, so a start that stops on the way names the last step it finished.
#[derive(Clone, Copy)]
pub struct StartupProgress {
    began: Instant,
}

impl StartupProgress {
    /// Begin timing; logs the first step.
    pub fn begin() -> Self {
        let p = Self {
            began: Instant::now(),
        };
        tracing::info!(pid = std::process::id(), "start-up: starting");
        p
    }

    /// Log that `step` is done.
    pub fn step(&self, step: &str) {
        tracing::info!(
            ms = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX),
            "start-up: {step}"
        );
    }
}

/// What `prepare` built: everything that can fail before the first byte is served.
pub struct Prepared {
    cfg: Rc<Config>,
    tls: tls::TlsSetup,
    /// Kept for reloads (the TLS server key is taken from it again).
    keystore: Arc<dyn KeyStore>,
    catalogue: Option<Catalogue>,
    forward: Option<crate::forward::ForwardSetup>,
    /// The connection to the shared nonce bucket (`nonce_backend = "jetstream_kv"`).
    cluster: Option<crate::forward::ForwardSetup>,
    checkpoint_signer: Arc<dyn vvgate_hsm::RecordSigner>,
    /// The active feedback key, if configured and usable.
    feedback_key: Option<crate::feedback::FeedbackKey>,
    /// Whether the key store can serve now; `None` for key files. It owns the PKCS#11 store,
    /// which must live as long as the keys taken from it.
    keystore_ready: Option<gateway::KeystoreProbe>,
    progress: StartupProgress,
}

/// Open the configured key store: for PKCS#11 one read-only session and one login (a refused
/// PIN is never retried: exit code 77).
pub fn open_keystore(
    cfg: &Config,
) -> Result<(Arc<dyn KeyStore>, Option<gateway::KeystoreProbe>), RunError> {
    let p11 = match (cfg.keystore.backend, &cfg.keystore.pkcs11) {
        (KeystoreBackend::File, _) => return Ok((Arc::new(FileKeyStore::new()), None)),
        (KeystoreBackend::Pkcs11, Some(p)) => p,
        (KeystoreBackend::Pkcs11, None) => {
            return Err(RunError::Key {
                key: "keystore".into(),
                source: HsmError::NotReady("no PKCS#11 token configured".into()),
            })
        }
    };
    let store = Pkcs11KeyStore::open(p11).map_err(|source| RunError::Key {
        key: match &source {
            HsmError::Module { .. } => "keystore.module",
            HsmError::Token { .. } => "keystore.token_label/token_serial",
            _ => "keystore.pin_file",
        }
        .into(),
        source,
    })?;
    tracing::info!(module = %p11.module.display(), token = %p11.token, "PKCS#11 key store open (read-only session, user logged in)");
    let store = Arc::new(store);
    let probe = Arc::clone(&store);
    Ok((store, Some(Arc::new(move || probe.is_ready()))))
}

/// Check keys, TLS material and the catalogue without opening storage or sockets
/// (`vvgated --check-config` stops here).
pub fn prepare(cfg: Config, progress: StartupProgress) -> Result<Prepared, RunError> {
    let (keystore, keystore_ready) = open_keystore(&cfg)?;
    progress.step("key store open");
    let key_err = |key: String| move |source| RunError::Key { key, source };
    let tls = tls::server_setup(&cfg, keystore.as_ref())?;
    let checkpoint_signer = keystore
        .record_signer(&cfg.audit.checkpoint_key)
        .map_err(key_err("audit.checkpoint_key".into()))?;
    let mut feedback_key = None;
    for (kid, key) in &cfg.feedback_keys {
        match keystore.record_signer(key) {
            Ok(signer) => {
                if cfg.feedback_active_kid.as_deref() == Some(kid.as_str()) {
                    feedback_key = Some(crate::feedback::FeedbackKey {
                        kid: kid.clone(),
                        signer,
                    });
                }
            }
            Err(e @ HsmError::WeakKey { .. }) => {
                return Err(key_err(format!(
                    "telemetry_gateway.feedback_ed25519_keys.{kid}"
                ))(e))
            }
            Err(e) => {
                tracing::warn!(kid, error = %e, "feedback key unusable; the feedback route will answer 503")
            }
        }
    }
    for (kid, key) in &cfg.evidence.keys {
        keystore
            .kek(key)
            .map_err(key_err(format!("evidence.keys.{kid}")))?;
    }
    let catalogue = if cfg.enforce_mitre_catalogue {
        Some(match &cfg.mitre_catalogue_path {
            None => Catalogue::builtin(),
            Some(p) => {
                let bad = |detail: String| RunError::Catalogue {
                    path: p.display().to_string(),
                    detail,
                };
                let text = std::fs::read_to_string(p).map_err(|e| bad(e.to_string()))?;
                Catalogue::from_tsv(&text).map_err(bad)?
            }
        })
    } else {
        None
    };
    let forward = match cfg.queue_backend {
        crate::config::QueueBackend::Nats => Some(crate::forward::setup(&cfg, keystore.as_ref())?),
        crate::config::QueueBackend::Spool => None,
    };
    let cluster = match cfg.cluster {
        Some(_) => Some(crate::forward::setup(&cfg, keystore.as_ref())?),
        None => None,
    };
    progress.step("keys, TLS material and catalogue checked");
    Ok(Prepared {
        cfg: Rc::new(cfg),
        tls,
        keystore,
        catalogue,
        forward,
        cluster,
        checkpoint_signer,
        feedback_key,
        keystore_ready,
        progress,
    })
}

fn ensure_state_dir(dir: &Path) -> Result<(), RunError> {
    let err = |source| RunError::StateDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Read the test seam's step file (a signed number of seconds); a missing or bad file leaves
/// the step as it was.
fn read_clock_step(path: &Path) {
    if let Some(step) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
    {
        crate::time::set_step(step);
    }
}

/// The database file in a state directory.
pub fn database_path(state_dir: &Path) -> PathBuf {
    state_dir.join("vvgate.redb")
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { what, addr, source })
}

/// The first connection to JetStream at start, waited for at most 5 s. A reachable server
/// with a missing or wrong stream or bucket is a start-up error; an unreachable one is not
/// (the connection task keeps trying; `unreachable` is logged).
async fn first_connection(
    connect: impl std::future::Future<Output = Result<crate::nats::Connection, crate::nats::NatsError>>,
    unreachable: &str,
) -> Result<Option<crate::nats::Connection>, RunError> {
    let first = futures_lite::future::or(async { connect.await.map(Some) }, async {
        Timer::after(Duration::from_secs(5)).await;
        Ok(None)
    })
    .await;
    match first {
        Ok(c) => Ok(c),
        Err(
            e @ (crate::nats::NatsError::Stream { .. } | crate::nats::NatsError::JetStream { .. }),
        ) => Err(RunError::Queue(e)),
        Err(e) => {
            tracing::warn!(error = %e, "{unreachable}");
            Ok(None)
        }
    }
}

/// Run the gateway until SIGTERM or SIGINT; `config_path` is read again on reload.
pub fn run(p: Prepared, config_path: &Path) -> Result<(), RunError> {
    let cfg = Rc::clone(&p.cfg);
    let progress = p.progress;
    ensure_state_dir(&cfg.state_dir)?;
    let store = Arc::new(Store::open(
        &database_path(&cfg.state_dir),
        cfg.storage_cache_bytes,
    )?);
    progress.step("database open");
    // The test seam for the wall clock: dev mode only, never in production.
    let clock_file = (cfg.mode == crate::config::Mode::Dev)
        .then(|| std::env::var_os(crate::time::TEST_CLOCK_ENV))
        .flatten()
        .map(PathBuf::from);
    let clock = match &clock_file {
        Some(path) => {
            read_clock_step(path);
            tracing::warn!(path = %path.display(), "the clock follows a test step file (dev mode)");
            Clock::stepped()
        }
        None => Clock::system(),
    };
    let commit_cfg = CommitConfig {
        max_requests: cfg.group_commit_max_requests,
        max_delay: cfg.group_commit_max_delay,
        seal_every: cfg.audit.seal_every,
        spool_max_events: cfg.spool_max_events,
        spool_max_bytes: cfg.spool_max_bytes,
        nonce_retention_secs: cfg.nonce_retention_secs(),
        federation_nonce_retention_secs: cfg.federation_nonce_retention_secs(),
        checkpoint: Some(commit::CheckpointSetup {
            origin: cfg.audit.checkpoint_origin.clone(),
            interval: Duration::from_secs(cfg.audit.seal_interval_seconds),
            signer: Arc::clone(&p.checkpoint_signer),
            witnesses: cfg.audit.witness_keys.clone(),
        }),
        retention: (cfg.queue_backend == crate::config::QueueBackend::Nats).then_some(
            commit::RetentionSetup {
                segment_entries: cfg.audit.segment_entries,
                retain_entries: cfg.audit.retain_entries,
            },
        ),
    };
    let (committer, storage_thread) = commit::start(
        Arc::clone(&store),
        commit_cfg,
        cfg.limits.max_in_flight,
        clock,
    )
    .map_err(|source| RunError::Io {
        what: "cannot start the storage thread",
        source,
    })?;
    progress.step("storage thread started");
    let audit_key = crate::audit::checkpoint::VerifierKey {
        name: cfg.audit.checkpoint_origin.clone(),
        alg: crate::audit::checkpoint::ALG_ED25519,
        key: p.checkpoint_signer.public_key(),
    };
    if let Err(problem) = crate::audit::startup_check(&store, &audit_key) {
        committer.shared.set_audit_problem(problem);
    }
    progress.step("audit log checked");
    let mut signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(|source| RunError::Io {
        what: "cannot install signal handlers",
        source,
    })?;

    let mut gw = Gateway::new(
        Rc::clone(&cfg),
        clock,
        Arc::clone(&store),
        committer.clone(),
        p.catalogue,
        audit_key.to_string(),
        p.keystore_ready.clone(),
    );
    gw.feedback_key = p.feedback_key;
    let bucket = cfg.cluster.as_ref().map(|c| {
        let min_ttl = crate::config::validate::min_bucket_ttl_secs(
            cfg.allowed_clock_skew_seconds,
            cfg.nonce_ttl_seconds,
        );
        Rc::new(crate::cluster::NonceBucket::new(
            c,
            Duration::from_secs(min_ttl),
        ))
    });
    gw.cluster = bucket.clone();
    let gw = Rc::new(gw);
    let ex: Rc<LocalExecutor<'static>> = Rc::new(LocalExecutor::new());
    gw.swap_tls(gateway::TlsState {
        acceptor: futures_rustls::TlsAcceptor::from(p.tls.server),
        verifier: p.tls.verifier,
        crl_next_update: p.tls.crl_next_update,
    });
    crate::killswitch::restore(&gw)?;
    progress.step("kill switch state read");
    let reloader = Rc::new(crate::reload::Reloader {
        config_path: config_path.to_owned(),
        keystore: p.keystore,
    });

    let result: Result<(), RunError> = smol::block_on(ex.run(async {
        let producer = bind("the producer listener", cfg.listen).await?;
        let ops = bind("the ops listener", cfg.ops_listen).await?;
        let producer_addr = producer.local_addr().map_err(|source| RunError::Io {
            what: "listener address",
            source,
        })?;
        let ops_addr = ops.local_addr().map_err(|source| RunError::Io {
            what: "listener address",
            source,
        })?;
        let control = crate::control::bind(&cfg.control)
            .await
            .map_err(|source| RunError::Io {
                what: "cannot create the control socket",
                source,
            })?;
        progress.step("listeners bound");

        let started = gw
            .audit_system(
                "gateway.started",
                &mut [
                    ("version", Detail::Str(env!("CARGO_PKG_VERSION"))),
                    ("listen", Detail::Str(&producer_addr.to_string())),
                    (
                        "mode",
                        Detail::Str(if cfg.mode == crate::config::Mode::Dev {
                            "dev"
                        } else {
                            "production"
                        }),
                    ),
                ],
            )
            .await;
        if !started {
            return Err(RunError::Io {
                what: "cannot write the first audit entry",
                source: std::io::Error::other("storage commit failed"),
            });
        }
        progress.step("gateway.started committed");
        if let Some(mut setup) = p.forward {
            // A reachable queue with a missing or wrong stream is a start-up error; an
            // unreachable one is not (ingest goes on into the spool, forwarding retries).
            let first = first_connection(
                crate::forward::connect_and_check(&mut setup),
                "queue not reachable at start; forwarding will retry",
            )
            .await?;
            match first {
                Some(_) => progress.step("queue connected, stream checked"),
                None => {
                    tracing::warn!("queue not connected yet; events stay in the spool until it is")
                }
            }
            ex.spawn(crate::forward::run(Rc::clone(&gw), setup, first))
                .detach();
        }
        if let (Some(mut setup), Some(b), Some(c)) = (p.cluster, bucket, cfg.cluster.as_ref()) {
            // As the queue: a reachable bucket with a wrong configuration is a start-up
            // error; an unreachable one is not (telemetry answers 503 until it is back).
            let first = first_connection(
                crate::cluster::connect_and_check(&mut setup, &b.spec, c.create_bucket),
                "nonce bucket not reachable at start; telemetry answers 503 until it is",
            )
            .await?;
            if first.is_some() {
                progress.step("nonce bucket connected, configuration checked");
            }
            ex.spawn(crate::cluster::run(
                Rc::clone(&b),
                setup,
                c.create_bucket,
                first,
            ))
            .detach();
            ex.spawn(crate::cluster::settle::settler(Rc::clone(&gw), b))
                .detach();
        }
        ex.spawn(gateway::accept_producers(
            Rc::clone(&gw),
            Rc::clone(&ex),
            producer,
        ))
        .detach();
        ex.spawn(gateway::accept_ops(Rc::clone(&gw), Rc::clone(&ex), ops))
            .detach();
        ex.spawn(gateway::tls_reject_flusher(Rc::clone(&gw)))
            .detach();
        if let Some(path) = clock_file.clone() {
            ex.spawn(async move {
                loop {
                    smol::Timer::after(Duration::from_millis(100)).await;
                    read_clock_step(&path);
                }
            })
            .detach();
        }
        ex.spawn(crate::control::serve(
            Rc::clone(&gw),
            Rc::clone(&ex),
            control,
            Rc::clone(&reloader),
        ))
        .detach();
        if let Some(every) = crate::control::watchdog_interval() {
            ex.spawn(crate::control::watchdog(every)).detach();
        }
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        tracing::info!(producer = %producer_addr, ops = %ops_addr, "vvgated ready");
        println!(
            "vvgated ready producer={producer_addr} ops={ops_addr} control={}",
            cfg.control.socket_path.display()
        );
        crate::control::sd_notify("READY=1");

        while let Some(sig) = signals.next().await {
            match sig {
                Ok(async_signal::Signal::Hup) => {
                    // Errors are logged and audited by the reload itself.
                    let _ = crate::reload::reload(&gw, &reloader, "signal").await;
                }
                _ => break,
            }
        }
        tracing::info!("shutting down: draining connections");
        crate::control::sd_notify("STOPPING=1");
        gw.draining.set(true);
        gw.closing.notify(usize::MAX);
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.connections.get() > 0 && Instant::now() < deadline {
            Timer::after(Duration::from_millis(20)).await;
        }
        gw.audit_system(
            "gateway.stopped",
            &mut [(
                "open_connections",
                Detail::Int(i64::try_from(gw.connections.get()).unwrap_or(0)),
            )],
        )
        .await;
        // A last checkpoint covering the whole log, then a moment for the forwarder to
        // publish it and empty the spool while the queue is up.
        if let Err(e) = gw.committer.checkpoint().await {
            tracing::warn!(error = %e, "no checkpoint at shutdown");
        }
        // Give the forwarder a moment to empty the spool while the queue is up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while gw.forward.connected.get()
            && gw
                .committer
                .shared
                .spool_count
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
            && Instant::now() < deadline
        {
            Timer::after(Duration::from_millis(20)).await;
        }
        Ok(())
    }));
    crate::control::unbind(&cfg.control);
    // Tasks still on the executor hold the gateway (and a committer); the storage thread is
    // stopped explicitly, after it has committed everything queued before this point.
    committer.close();
    let _ = storage_thread.join();
    // The gateway state is still referenced from tasks left on the executor (and from the
    // reactor's wakers), so the database would never be dropped: close it here, or the next
    // start has to repair the whole file.
    store.close();
    result
}
