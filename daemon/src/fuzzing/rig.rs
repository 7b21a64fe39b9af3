//! The gateway a fuzzed request meets: the real producer service, configuration, store and
//! storage thread, in a scratch directory (in `/dev/shm` when there is one, so the commits of
//! each request stay cheap). The clock is shifted so that "now" is [`NOW`], the time the
//! seeds are signed for; the store is rebuilt every [`RUNS_PER_STORE`] requests so the
//! database stays small over a long run.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use smol::LocalExecutor;
use vvgate_storage::Store;

use crate::commit::{self, CommitConfig, Committer};
use crate::config::Config;
use crate::gateway::{Gateway, Producer};
use crate::http::conn::{self, ConnLimits};
use crate::schema::Catalogue;
use crate::time::Clock;

use super::wire::Wire;

/// The gateway's "now" for fuzzed requests (CONTRACT.md §13.1's vector time).
pub(crate) const NOW: u64 = 1_772_107_200;
const RUNS_PER_STORE: u32 = 2000;

struct Base {
    dir: PathBuf,
    pki: crate::devpki::DevPki,
}

/// The process's scratch directory with a dev PKI in `pki/`, made once.
fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        remove_stale(&root);
        let dir = root.join(format!("vvgate-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = crate::devpki::generate(&dir.join("pki")).expect("dev PKI for fuzzing");
        Base { dir, pki }
    })
}

/// Scratch directories of fuzzing processes that are gone.
fn remove_stale(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("vvgate-fuzz-")) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The directory holding the dev PKI (`pki/…`), for config files with relative paths.
pub(crate) fn pki_dir() -> PathBuf {
    base().dir.clone()
}

/// The dev PKI the fuzzing gateway trusts.
pub(crate) fn base_pki() -> crate::devpki::DevPki {
    base().pki.clone()
}

/// The producer certificate's SHA-256 as the TLS layer reports it, and as the fuzzing
/// configuration pins it. Fixed (the dev PKI is random per process), so committed seeds carry
/// a matching `X-Client-Cert-Sha256` and reach the checks after identity.
pub(crate) fn producer_fingerprint() -> [u8; 32] {
    crate::ids::sha256(b"vvgate fuzzing producer certificate")
}

struct Rig {
    gw: Rc<Gateway>,
    committer: Committer,
    storage: Option<std::thread::JoinHandle<()>>,
    ex: LocalExecutor<'static>,
    limits: ConnLimits,
    state: PathBuf,
    runs: u32,
}

impl Rig {
    fn new(generation: u64) -> Self {
        let base = base();
        let state = base.dir.join(format!("state-{generation}"));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).expect("fuzz state dir");
        let pin = crate::ids::hex32(&producer_fingerprint());
        let text = crate::devpki::dev_config(&base.pki, "127.0.0.1:0", "127.0.0.1:0")
            .replace(&base.pki.producer_pin, pin.as_str())
            .replace(
                "state_dir = \".\"",
                &format!(
                    "state_dir = \"{}\"\nrate_limit_per_minute = 1000000",
                    state.display()
                ),
            );
        let cfg = Config::parse(&text, "fuzz.toml", &base.dir, &|_| None)
            .expect("the fuzzing configuration is valid");
        let cfg = Rc::new(cfg);
        let store =
            Arc::new(Store::open(&crate::run::database_path(&state), 4 << 20).expect("fuzz store"));
        let system = Clock::system().now().secs();
        let clock = Clock::with_offset(
            i64::try_from(NOW).unwrap_or(0) - i64::try_from(system).unwrap_or(0),
        );
        let commit_cfg = CommitConfig {
            max_requests: 64,
            max_delay: std::time::Duration::from_micros(100),
            seal_every: cfg.audit.seal_every,
            spool_max_events: cfg.spool_max_events,
            spool_max_bytes: cfg.spool_max_bytes,
            nonce_retention_secs: cfg.nonce_retention_secs(),
            federation_nonce_retention_secs: cfg.federation_nonce_retention_secs(),
            checkpoint: None,
            retention: None,
        };
        let (committer, storage) =
            commit::start(Arc::clone(&store), commit_cfg, 64, clock).expect("storage thread");
        let limits = ConnLimits::from(&cfg.limits);
        let gw = Rc::new(Gateway::new(
            cfg,
            clock,
            store,
            committer.clone(),
            Some(Catalogue::builtin()),
            String::new(),
            None,
        ));
        Self {
            gw,
            committer,
            storage: Some(storage),
            ex: LocalExecutor::new(),
            limits,
            state,
            runs: 0,
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.committer.close();
        if let Some(t) = self.storage.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Telemetry nonces in the current rig's store (tests).
#[cfg(test)]
pub(crate) fn accepted_nonces() -> u64 {
    RIG.with(|cell| {
        cell.borrow().1.as_ref().map_or(0, |r| {
            r.gw.store
                .read()
                .and_then(|rd| rd.nonce_count(vvgate_storage::NonceSpace::Telemetry))
                .unwrap_or(0)
        })
    })
}

static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    static RIG: RefCell<(u64, Option<Rig>)> = const { RefCell::new((0, None)) };
}

/// A whole producer request (or several, keep-alive) through the real service: framing, the
/// check chain, schema, commit and audit. The bytes are what the client sends after the TLS
/// handshake, from the dev producer certificate.
pub fn request(data: &[u8]) {
    RIG.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (generation, rig) = &mut *cell;
        if rig.as_ref().is_none_or(|r| r.runs >= RUNS_PER_STORE) {
            *rig = None;
            // Unique in the process: tests run rigs on several threads at once.
            *generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *rig = Some(Rig::new(*generation));
        }
        let Some(rig) = rig.as_mut() else { return };
        rig.runs += 1;
        let (chunks, stream) = super::wire::split(data);
        let mut io = Wire::new(stream, chunks);
        let svc = Producer(Rc::clone(&rig.gw));
        let info = super::conn_info(Some(producer_fingerprint()));
        futures_lite::future::block_on(rig.ex.run(conn::serve(&svc, &mut io, &info, &rig.limits)));
        assert_eq!(rig.gw.connections.get(), 0);
    });
}
