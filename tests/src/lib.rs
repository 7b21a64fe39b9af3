//! Harness for end-to-end tests: runs the real `vvgated` binary (built beside the test
//! executable) in its own temporary state directory, speaks to it over real mutual TLS, and
//! reads its spool and audit log through `vvctl`'s control socket protocol.
//!
//! A [`Gateway`] sends SIGTERM on drop, waits, and asserts that the daemon exited cleanly and
//! never logged a panic; when the test failed, its directory is kept and printed.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vvgate::client::{self, Connection, HttpResponse, Producer};
use vvgate::devpki::{self, DevCa};

pub use vvgate;

pub mod cluster;
pub mod floods;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Path of a binary built by this workspace (`vvgated`, `vvctl`).
pub fn bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase())) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` before the e2e tests",
        p.display()
    );
    p
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vvgate-e2e-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Test PKI: the dev PKI plus certificates for negative cases.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
    /// Pin of the producer certificate P (`producer.pem`).
    pub producer_pin: String,
    pub producer_public_b64: String,
    /// Certificate Q from the same CA, pinned for identity `other-service`.
    pub other_pin: String,
    /// A certificate from the same CA that is pinned for nobody (`unpinned.pem`).
    pub unpinned_pin: String,
    /// A client certificate from another CA (`foreign.pem`), pinned for `foreign-service`.
    pub foreign_pin: String,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let pki = devpki::generate(dir).expect("dev pki");
        let ca = DevCa::load(dir).expect("ca");
        let other_pin = ca.issue_client(dir, "other", "other-service").expect("q");
        let unpinned_pin = ca
            .issue_client(dir, "unpinned", "nobody")
            .expect("unpinned");
        let foreign_ca = DevCa::new("foreign CA").expect("foreign ca");
        let foreign_pin = foreign_ca
            .issue_client(dir, "foreign", "foreign-service")
            .expect("foreign");
        Self {
            dir: dir.to_owned(),
            producer_pin: pki.producer_pin,
            producer_public_b64: pki.producer_public_b64,
            other_pin,
            unpinned_pin,
            foreign_pin,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The producer P.
    pub fn producer(&self) -> Producer {
        self.producer_as("producer", "spectrastrike-producer")
    }

    /// A producer presenting certificate `name` and claiming `identity`.
    pub fn producer_as(&self, name: &str, identity: &str) -> Producer {
        Producer::load(
            &self.path("ca.pem"),
            &self.path(&format!("{name}.pem")),
            &self.path(&format!("{name}.key")),
            &self.path("producer-signing.seed"),
            identity,
        )
        .expect("producer")
    }
}

/// Each thread of process `pid`: its name, scheduler state and kernel wait channel.
fn thread_states(pid: u32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let read = |f: &str| {
            std::fs::read_to_string(t.path().join(f))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let stat = read("stat");
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_owned();
        out.push_str(&format!("  {} {state} {}\n", read("comm"), read("wchan")));
    }
    out
}

/// Options for a gateway under test.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// Extra `[telemetry_gateway]` lines.
    pub gateway_toml: String,
    /// Extra sections appended at the end.
    pub extra_toml: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// A fixed producer port (so restarts keep it); default: a free one each start.
    pub port: Option<u16>,
    /// Extra `[audit]` lines.
    pub audit_toml: String,
}

impl Opts {
    pub fn with(mut self, line: &str) -> Self {
        self.gateway_toml.push_str(line);
        self.gateway_toml.push('\n');
        self
    }
}

/// The configuration text for a gateway in `dir` with PKI `pki`.
pub fn config_text(dir: &Path, pki: &Pki, opts: &Opts) -> String {
    format!(
        r#"[telemetry_gateway]
mode = "dev"
state_dir = "{state}"
listen = "127.0.0.1:{port}"
spectrastrike_ed25519_public_key_b64 = "{pk}"
allowed_service_identities = {{ "spectrastrike-producer" = "{p}", "other-service" = "{q}", "foreign-service" = "{f}" }}
operator_tenant_map = {{ "op-001" = "10000000-0000-0000-0000-000000000001", "op-002" = "20000000-0000-0000-0000-000000000002" }}
{extra_gw}
[tls]
server_cert_path = "{pki}/server.pem"
server_key = "file:{pki}/server.key"
client_ca_path = "{pki}/ca.pem"

[audit]
checkpoint_origin = "vvgate.e2e.test/audit"
checkpoint_key = "file:{pki}/checkpoint.pem"
{extra_audit}

[keystore]
backend = "file"

[ops]
listen = "127.0.0.1:0"

[control]
socket_path = "{state}/control.sock"
{extra}
"#,
        state = dir.join("state").display(),
        pki = pki.dir.display(),
        pk = pki.producer_public_b64,
        p = pki.producer_pin,
        q = pki.other_pin,
        f = pki.foreign_pin,
        extra_gw = opts.gateway_toml,
        extra = opts.extra_toml,
        extra_audit = opts.audit_toml,
        port = opts.port.unwrap_or(0),
    )
}

/// A running `vvgated`.
pub struct Gateway {
    pub dir: PathBuf,
    pub pki: Pki,
    pub opts: Opts,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub ops: SocketAddr,
    pub control: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Gateway {
    /// Start a gateway with default options.
    pub fn start() -> Self {
        Self::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Self {
        let dir = temp_dir("gw");
        let pki = Pki::new(&dir.join("pki"));
        Self::start_in(dir, pki, opts)
    }

    /// Start in an existing directory (reusing its state and PKI).
    pub fn start_in(dir: PathBuf, pki: Pki, opts: Opts) -> Self {
        let config = dir.join("vvgate.toml");
        std::fs::write(&config, config_text(&dir, &pki, &opts)).expect("write config");
        let log = dir.join(format!(
            "vvgated-{}.log",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut g = Self {
            dir,
            pki,
            opts,
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops: SocketAddr::from(([127, 0, 0, 1], 0)),
            control: PathBuf::new(),
            child: None,
            log,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let stderr = std::fs::File::create(&self.log).expect("log file");
        let mut cmd = Command::new(bin("vvgated"));
        cmd.arg("--config")
            .arg(&self.config)
            .env("VVGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn vvgated");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("vvgated ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                // Where each thread waits, for a start that hangs.
                let threads = thread_states(child.id());
                let _ = child.kill();
                panic!(
                    "vvgated did not become ready:\n{}\nthreads (name, state, wait channel):\n{threads}",
                    self.log_text()
                );
            }
        };
        for part in line.split_whitespace() {
            if let Some(v) = part.strip_prefix("producer=") {
                self.addr = v.parse().expect("producer addr");
            } else if let Some(v) = part.strip_prefix("ops=") {
                self.ops = v.parse().expect("ops addr");
            } else if let Some(v) = part.strip_prefix("control=") {
                self.control = PathBuf::from(v);
            }
        }
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop with SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("vvgated did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again with the same directory, configuration and options.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let code = self.stop();
            assert_eq!(code, Some(0), "vvgated exit status\n{}", self.log_text());
        }
        std::fs::write(&self.config, config_text(&self.dir, &self.pki, &self.opts))
            .expect("config");
        self.log = self.dir.join(format!(
            "vvgated-{}.log",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        self.spawn();
    }

    /// A new keep-alive connection as producer P.
    pub fn connect(&self) -> Connection {
        self.connect_as(&self.pki.producer())
    }

    pub fn connect_as(&self, p: &Producer) -> Connection {
        Connection::connect_tls(
            self.addr,
            "localhost",
            p.tls.clone(),
            Duration::from_secs(20),
        )
        .expect("connect")
    }

    /// Ask the control socket.
    pub fn control(&self, request: &str) -> Vec<String> {
        vvgate::cli::control(&self.control, request)
            .expect("control socket")
            .expect("gateway running")
    }

    /// Every spool entry (newest last) as JSON.
    pub fn spool(&self) -> Vec<serde_json::Value> {
        self.control("{\"cmd\":\"spool_tail\",\"limit\":10000}")
            .iter()
            .map(|l| serde_json::from_str(l).expect("spool line"))
            .collect()
    }

    /// Every audit entry as JSON.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.audit_lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("audit line"))
            .collect()
    }

    pub fn audit_lines(&self) -> Vec<String> {
        self.control("{\"cmd\":\"audit_export\",\"from\":1}")
    }

    /// The audit entry whose `details.request_id` is `id`.
    pub fn audit_for(&self, id: &str) -> Option<serde_json::Value> {
        self.audit()
            .into_iter()
            .find(|e| e["details"]["request_id"] == id)
    }

    /// Plain GET on the ops listener.
    pub fn ops_get(&self, path: &str) -> HttpResponse {
        let mut c = Connection::connect_plain(self.ops, Duration::from_secs(10)).expect("ops");
        c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("ops get")
    }

    /// Run `vvctl` with arguments; returns (exit code, stdout, stderr).
    pub fn vvctl(&self, args: &[&str]) -> (i32, String, String) {
        vvctl(args)
    }
}

/// Run `vvgated --config PATH` expecting it to exit by itself (a start-up refusal); returns
/// (exit code, stderr).
pub fn vvgated_exit(config: &Path, secs: u64) -> (i32, String) {
    let config = config.display().to_string();
    vvgated_exit_env(&["--config", &config], &[], secs)
}

/// Run `vvctl`.
pub fn vvctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("vvctl"))
        .args(args)
        .output()
        .expect("vvctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let code = self.stop();
        let log = self.log_text();
        if failing {
            eprintln!(
                "gateway directory kept: {}\n--- log ---\n{log}",
                self.dir.display()
            );
            return;
        }
        assert!(!log.contains("panicked"), "vvgated panicked:\n{log}");
        if let Some(code) = code {
            assert_eq!(code, 0, "vvgated exited with {code}:\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Current Unix seconds.
pub fn now() -> u64 {
    vvgate::time::Clock::system().now().secs()
}

/// A fresh random nonce (UUID text).
pub fn nonce() -> String {
    vvgate::ids::uuid_text(&vvgate::ids::Random::new().uuid_v4()).to_string()
}

/// The sample event as a JSON value.
pub fn sample() -> serde_json::Value {
    serde_json::from_str(client::SAMPLE_EVENT).expect("sample")
}

/// A signed valid request V for `ts` and `nonce` (with a template mutation applied first).
pub struct Signed {
    pub body: Vec<u8>,
    pub ts: u64,
    pub nonce: String,
}

pub fn event_with(ts: u64, nonce: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Signed {
    let mut v = sample();
    let body = client::prepare_event(&v, ts, nonce).expect("prepare");
    v = serde_json::from_slice(&body).expect("reparse");
    edit(&mut v);
    Signed {
        body: client::canonical(&v).expect("canonical"),
        ts,
        nonce: nonce.to_owned(),
    }
}

/// A fresh valid event.
pub fn valid() -> Signed {
    event_with(now(), &nonce(), |_| {})
}

/// Send `s` signed by `p` with the standard headers.
pub fn request(p: &Producer, s: &Signed) -> Vec<u8> {
    p.request("localhost", s.ts, &s.nonce, &s.body, None)
}

/// Write a producer signing key (raw seed, derived from `tag`) next to the dev PKI as
/// `<name>.seed`; returns its public key in base64.
pub fn extra_producer_key(pki: &Pki, name: &str, tag: u8) -> String {
    use base64::Engine;
    use ring::signature::KeyPair;
    let seed: [u8; 32] = std::array::from_fn(|i| u8::try_from(i).unwrap_or(0) ^ tag);
    std::fs::write(pki.path(&format!("{name}.seed")), seed).expect("seed");
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).expect("key");
    base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref())
}

/// The producer (its certificate and identity) signing with the key in `seed` (a file of the
/// dev PKI).
pub fn producer_with(pki: &Pki, seed: &str) -> Producer {
    Producer::load(
        &pki.path("ca.pem"),
        &pki.path("producer.pem"),
        &pki.path("producer.key"),
        &pki.path(seed),
        "spectrastrike-producer",
    )
    .expect("producer")
}

/// The audit `key_id` of a producer public key given in base64.
pub fn key_id(public_b64: &str) -> String {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(public_b64)
        .expect("base64");
    vvgate::ids::hex32(&vvgate::ids::sha256(&key)).to_string()
}

impl Gateway {
    /// One value of `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> u64 {
        self.ops_get("/metrics")
            .body_text()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }
}

/// Read all bytes until EOF (for raw-socket tests).
pub fn read_to_end(r: &mut impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// Parse a response body as JSON.
pub fn json(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.body_text()))
}

/// Wait until `f` holds (polling), or panic after `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// How the test NATS server authenticates the gateway.
#[derive(Clone, Debug)]
pub enum NatsAuth {
    UserPass,
    /// An nkey: the server knows the public key, the gateway holds the seed.
    NKey,
}

/// A real `nats-server` with JetStream (file storage in its own directory) and TLS that
/// requires a client certificate from the test CA. The port stays the same across restarts.
pub struct NatsServer {
    pub dir: PathBuf,
    pub port: u16,
    pub stream: String,
    conf: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    started: usize,
}

/// A free TCP port on loopback (bound and released).
///
/// Ports come from 20000–32767, below Linux's ephemeral range (32768–60999): a port the kernel
/// handed out for `bind(:0)` could be handed out again, to an outgoing connection or another
/// test, between this check and the server's own `bind`. Each test process walks the range
/// from its own offset, so two processes rarely try the same port, and a port is returned
/// only once per process and only if it can be bound now.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = u16::try_from(port).expect("port in range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000–32767");
}

impl NatsServer {
    /// Start one for `pki` (server and gateway client certificates are issued into it).
    pub fn start(pki: &Pki, auth: NatsAuth) -> Self {
        let dir = temp_dir("nats");
        let ca = DevCa::load(&pki.dir).expect("ca");
        let (cert, key, _) = ca
            .issue("localhost", &["localhost", "127.0.0.1"])
            .expect("server cert");
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        ca.issue_client(&pki.dir, "nats-client", "vvgate-gateway")
            .expect("client cert");
        let authz = match auth {
            NatsAuth::UserPass => {
                let creds = pki.dir.join("nats.creds");
                vvgate::devpki::write_private(&creds, b"vvgate:s3cret-pass").unwrap();
                "authorization { user: vvgate, password: \"s3cret-pass\" }".to_owned()
            }
            NatsAuth::NKey => {
                let seed = [42u8; 32];
                let public = vvgate::nats::auth::user_public_key(&seed).unwrap();
                let creds = pki.dir.join("nats.creds");
                let text = vvgate::nats::auth::encode_user_seed(&seed);
                vvgate::devpki::write_private(&creds, text.as_bytes()).unwrap();
                format!("authorization {{ users = [ {{ nkey: {public} }} ] }}")
            }
        };
        let port = free_port();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                r#"listen: 127.0.0.1:{port}
server_name: vvgate-e2e
max_payload: 4MB
jetstream {{ store_dir: "{js}" }}
tls {{
  cert_file: "{d}/server.pem"
  key_file: "{d}/server.key"
  ca_file: "{ca}"
  verify: true
  timeout: 5
}}
{authz}
"#,
                js = dir.join("js").display(),
                d = dir.display(),
                ca = pki.path("ca.pem").display(),
            ),
        )
        .unwrap();
        let log = dir.join("nats.log");
        let mut s = Self {
            dir,
            port,
            stream: "VECTORVUE_TELEMETRY".into(),
            conf,
            child: None,
            log,
            started: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (install it: scripts/test-all.sh does)");
        self.child = Some(child);
        let log = self.log.clone();
        let mut ready = false;
        for _ in 0..200 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("Server is ready").count() > self.starts() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            ready,
            "nats-server did not start:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        self.started += 1;
    }

    fn starts(&self) -> usize {
        self.started
    }

    /// SIGKILL (an outage).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port with the same stored streams.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The `[telemetry_gateway]` and `[nats]` configuration that points a gateway here.
    pub fn gateway_opts(&self, pki: &Pki, base: Opts) -> Opts {
        let mut o = base
            .with("queue_backend = \"nats\"")
            .with(&format!("nats_url = \"tls://127.0.0.1:{}\"", self.port));
        o.extra_toml.push_str(&format!(
            "\n[nats]\nca_path = \"{ca}\"\ncert_path = \"{d}/nats-client.pem\"\nkey = \"file:{d}/nats-client.key\"\ncredentials_file = \"{d}/nats.creds\"\ncreate_stream = true\n",
            ca = pki.path("ca.pem").display(),
            d = pki.dir.display(),
        ));
        o
    }

    /// Every message in the stream.
    pub fn messages(&self, pki: &Pki) -> Vec<StreamMessage> {
        smol::block_on(read_stream(self, pki))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One stored message.
#[derive(Clone, Debug)]
pub struct StreamMessage {
    pub seq: u64,
    pub subject: String,
    pub headers: String,
    pub data: Vec<u8>,
}

impl StreamMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn envelope(&self) -> serde_json::Value {
        serde_json::from_slice(&self.data).expect("envelope JSON")
    }
}

/// A client connection to the test server, as the gateway's client certificate.
async fn nats_connect(ns: &NatsServer, pki: &Pki, name: &str) -> vvgate::nats::Connection {
    use vvgate::nats::{Connection, Credentials, NatsOptions};
    let tls = vvgate::client::client_config(
        &pki.path("ca.pem"),
        &pki.path("nats-client.pem"),
        &pki.path("nats-client.key"),
    )
    .expect("tls");
    let opts = NatsOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], ns.port)),
        server_name: "127.0.0.1".into(),
        tls,
        credentials: Credentials::load(&pki.path("nats.creds")).expect("creds"),
        name: name.into(),
        timeout: Duration::from_secs(10),
    };
    Connection::connect(&opts, name)
        .await
        .expect("connect to nats")
}

impl NatsServer {
    /// Publish one core-NATS message (as a witness or another client would).
    pub fn publish(&self, pki: &Pki, subject: &str, payload: &[u8]) {
        smol::block_on(async {
            let mut c = nats_connect(self, pki, "e2epub").await;
            c.queue_pub(subject, payload);
            c.flush().await.expect("publish");
            // A round trip, so the server has routed the message before we disconnect.
            let _ = c.request("$JS.API.INFO", b"", Duration::from_secs(5)).await;
        });
    }
}

async fn read_stream(ns: &NatsServer, pki: &Pki) -> Vec<StreamMessage> {
    read_stream_at(ns.port, &ns.stream, pki).await
}

/// Every message of `stream`, read through the server on `port`.
pub async fn read_stream_at(port: u16, stream: &str, pki: &Pki) -> Vec<StreamMessage> {
    try_read_stream_at(port, stream, pki)
        .await
        .expect("read the stream")
}

/// Every message of `stream`, or why it could not be read (a cluster electing a leader).
pub async fn try_read_stream_at(
    port: u16,
    stream: &str,
    pki: &Pki,
) -> Result<Vec<StreamMessage>, String> {
    use base64::Engine;
    use vvgate::nats::{Connection, Credentials, NatsOptions};
    let tls = vvgate::client::client_config(
        &pki.path("ca.pem"),
        &pki.path("nats-client.pem"),
        &pki.path("nats-client.key"),
    )
    .map_err(|e| e.to_string())?;
    let opts = NatsOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        server_name: "127.0.0.1".into(),
        tls,
        credentials: Credentials::load(&pki.path("nats.creds")).map_err(|e| e.to_string())?,
        name: "vvgate-e2e-reader".into(),
        timeout: Duration::from_secs(10),
    };
    let mut conn = Connection::connect(&opts, "e2ereader")
        .await
        .map_err(|e| e.to_string())?;
    let info = conn
        .request(
            &format!("$JS.API.STREAM.INFO.{stream}"),
            b"",
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
    let info: serde_json::Value =
        serde_json::from_slice(&info.payload).map_err(|e| e.to_string())?;
    if info.get("error").is_some() {
        return Err(info.to_string());
    }
    let first = info["state"]["first_seq"].as_u64().unwrap_or(1);
    let last = info["state"]["last_seq"].as_u64().unwrap_or(0);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for seq in first..=last {
        let body = format!("{{\"seq\":{seq}}}");
        let r = conn
            .request(
                &format!("$JS.API.STREAM.MSG.GET.{stream}"),
                body.as_bytes(),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&r.payload).map_err(|e| e.to_string())?;
        let m = &v["message"];
        if m.is_null() {
            continue; // deleted
        }
        out.push(StreamMessage {
            seq,
            subject: m["subject"].as_str().unwrap_or_default().to_owned(),
            headers: String::from_utf8_lossy(
                &b64.decode(m["hdrs"].as_str().unwrap_or(""))
                    .unwrap_or_default(),
            )
            .into_owned(),
            data: b64
                .decode(m["data"].as_str().unwrap_or(""))
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// One request sent by [`Load`] and what became of it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub nonce: String,
    pub request: Vec<u8>,
    /// HTTP status, or `None` when the answer was lost (connection broken).
    pub status: Option<u16>,
    pub request_id: Option<String>,
}

/// Producer threads sending fresh valid events until stopped, recording every outcome.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Sent>>>,
}

impl Load {
    /// `threads` producers against `g`; each reconnects after a broken connection when
    /// `reconnect` (the gateway may be restarted under it).
    pub fn start(g: &Gateway, threads: usize, reconnect: bool) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addr = std::sync::Arc::new(std::sync::Mutex::new(g.addr));
        let handles = (0..threads)
            .map(|_| {
                let (stop, p, addr) = (
                    std::sync::Arc::clone(&stop),
                    g.pki.producer(),
                    std::sync::Arc::clone(&addr),
                );
                std::thread::spawn(move || {
                    let mut log = Vec::new();
                    let mut conn: Option<Connection> = None;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let a = *addr.lock().unwrap();
                        if conn.is_none() {
                            match Connection::connect_tls(
                                a,
                                "localhost",
                                p.tls.clone(),
                                Duration::from_secs(5),
                            ) {
                                Ok(c) => conn = Some(c),
                                Err(_) if reconnect => {
                                    std::thread::sleep(Duration::from_millis(50));
                                    continue;
                                }
                                Err(_) => break,
                            }
                        }
                        let s = valid();
                        let req = request(&p, &s);
                        let r = conn.as_mut().map(|c| c.send(&req));
                        let (status, id) = match r {
                            Some(Ok(r)) => {
                                let id = (r.status == 202)
                                    .then(|| json(&r)["request_id"].as_str().map(str::to_owned))
                                    .flatten();
                                (Some(r.status), id)
                            }
                            _ => {
                                conn = None;
                                (None, None)
                            }
                        };
                        log.push(Sent {
                            nonce: s.nonce,
                            request: req,
                            status,
                            request_id: id,
                        });
                        if status.is_none() && !reconnect {
                            break;
                        }
                    }
                    log
                })
            })
            .collect();
        Self {
            stop,
            threads: handles,
        }
    }

    /// Stop and collect every outcome.
    pub fn finish(self) -> Vec<Sent> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect()
    }
}

/// Root on the box: rewrite the audit entries of a stopped gateway's database directly
/// (`f` gets every entry line in order and may change, drop or reorder them). The table is
/// written back with one entry per row, a layout the gateway reads like its own.
pub fn rewrite_audit_table(db_path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    use redb::ReadableTable;
    const AUDIT: redb::TableDefinition<'static, u64, &'static [u8]> =
        redb::TableDefinition::new("audit");
    let db = redb::Database::create(db_path).expect("open the database");
    let txn = db.begin_write().expect("write txn");
    {
        let mut t = txn.open_table(AUDIT).expect("audit table");
        let mut first = None;
        let mut lines = Vec::new();
        for row in t.iter().expect("rows") {
            let (k, v) = row.expect("row");
            first.get_or_insert(k.value());
            for l in v.value().split(|&b| b == b'\n') {
                lines.push(String::from_utf8(l.to_vec()).expect("UTF-8 entry"));
            }
        }
        let first = first.unwrap_or(1);
        f(&mut lines);
        t.retain(|_, _| false).expect("clear");
        for (i, l) in lines.iter().enumerate() {
            t.insert(first + i as u64, l.as_bytes()).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

// ---------------------------------------------------------------------------------------
// PKCS#11: one SoftHSM token directory per test; keys made by the ceremonies themselves
// (`vvctl keys`), gateways configured with `[keystore] backend = "pkcs11"`.

/// The PKCS#11 module under test: `VVGATE_PKCS11_MODULE`, default Debian's SoftHSM. The
/// tests fail (they do not skip) when it is absent: `scripts/test-all.sh` installs softhsm2.
pub fn pkcs11_module() -> PathBuf {
    let m = std::env::var_os("VVGATE_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(
        m.exists(),
        "PKCS#11 module {} not found: apt-get install softhsm2 opensc (scripts/test-all.sh does)",
        m.display()
    );
    m
}

/// The officers of the test ceremonies.
pub const OFFICER_A: &str = "Security";
pub const OFFICER_B: &str = "Platform";

/// A throwaway SoftHSM token store (its own `SOFTHSM2_CONF` and token directory) and the
/// files of one token's ceremonies: the officers' share files, the gateway's PIN file and
/// the transcripts.
#[derive(Clone, Debug)]
pub struct SoftHsm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub label: String,
}

impl SoftHsm {
    /// A new token store in `dir` (created); the token is made by [`SoftHsm::init`].
    pub fn new(dir: &Path, label: &str) -> Self {
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        std::fs::create_dir_all(dir.join("transcripts")).expect("transcript dir");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("softhsm2.conf");
        Self {
            dir: dir.to_owned(),
            conf,
            module: pkcs11_module(),
            label: label.to_owned(),
        }
    }

    /// The same token store, another token (label) with its own files.
    pub fn other_token(&self, label: &str) -> Self {
        let dir = self.dir.join(label);
        std::fs::create_dir_all(dir.join("transcripts")).expect("dir");
        Self {
            dir,
            conf: self.conf.clone(),
            module: self.module.clone(),
            label: label.to_owned(),
        }
    }

    /// The environment of every process that uses the token.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".to_owned(), self.conf.display().to_string())]
    }

    pub fn share_a(&self) -> PathBuf {
        self.dir.join("share-a.txt")
    }

    pub fn share_b(&self) -> PathBuf {
        self.dir.join("share-b.txt")
    }

    pub fn pin_file(&self) -> PathBuf {
        self.dir.join("hsm-pin")
    }

    pub fn transcripts(&self) -> PathBuf {
        self.dir.join("transcripts")
    }

    /// The combined user PIN (from the gateway's PIN file).
    pub fn user_pin(&self) -> String {
        std::fs::read_to_string(self.pin_file()).expect("PIN file")
    }

    /// Run `vvctl` with the token's environment.
    pub fn vvctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("vvctl"))
            .args(args)
            .envs(self.env())
            .output()
            .expect("vvctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The token and officer arguments of a ceremony with the standard share files.
    pub fn ceremony_args(&self) -> Vec<String> {
        self.ceremony_args_with(OFFICER_A, &self.share_a(), OFFICER_B, &self.share_b())
    }

    pub fn ceremony_args_with(
        &self,
        officer_a: &str,
        share_a: &Path,
        officer_b: &str,
        share_b: &Path,
    ) -> Vec<String> {
        vec![
            "--module".into(),
            self.module.display().to_string(),
            "--token-label".into(),
            self.label.clone(),
            "--officer-a".into(),
            officer_a.into(),
            "--share-a".into(),
            share_a.display().to_string(),
            "--officer-b".into(),
            officer_b.into(),
            "--share-b".into(),
            share_b.display().to_string(),
        ]
    }

    /// `vvctl keys <sub> <ceremony args> <extra>`; transcripts go to
    /// [`SoftHsm::transcripts`].
    pub fn keys(&self, sub: &str, extra: &[&str]) -> (i32, String, String) {
        let mut args: Vec<String> = vec!["keys".into(), sub.into()];
        args.extend(self.ceremony_args());
        if sub != "list" {
            args.push("--transcript-dir".into());
            args.push(self.transcripts().display().to_string());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.vvctl(&refs)
    }

    /// Like [`SoftHsm::keys`], asserting success.
    pub fn keys_ok(&self, sub: &str, extra: &[&str]) -> String {
        let (code, out, err) = self.keys(sub, extra);
        assert_eq!(code, 0, "vvctl keys {sub} {extra:?} failed:\n{out}\n{err}");
        out
    }

    /// `vvctl keys init` (no gateway yet: `--no-audit`).
    pub fn init(&self) -> String {
        let pin = self.pin_file().display().to_string();
        self.keys_ok("init", &["--pin-file", &pin, "--no-audit"])
    }

    /// The token's keys as `vvctl keys list --json` reports them.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let out = self.keys_ok("list", &["--json"]);
        serde_json::from_str::<serde_json::Value>(out.trim())
            .expect("list JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The public key of `key_ref` on the token.
    pub fn public_key(&self, key_ref: &str) -> Vec<u8> {
        use base64::Engine;
        let keys = self.list();
        let k = keys
            .iter()
            .find(|k| k["key_ref"] == key_ref)
            .unwrap_or_else(|| panic!("{key_ref} not on the token: {keys:?}"));
        base64::engine::general_purpose::STANDARD
            .decode(k["public_key_b64"].as_str().unwrap_or_default())
            .expect("public key base64")
    }

    /// Transcript files, oldest first.
    pub fn transcript_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.transcripts())
            .expect("transcripts")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        v.sort();
        v
    }

    /// Run `pkcs11-tool` (opensc) on the token with the user PIN.
    pub fn pkcs11_tool(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.label, "--login", "--pin"])
            .arg(self.user_pin())
            .args(args)
            .envs(self.env())
            .output()
            .expect("pkcs11-tool (apt-get install opensc)");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The token's flags line (`pkcs11-tool -T`, no login).
    pub fn token_flags(&self) -> String {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .arg("-T")
            .envs(self.env())
            .output()
            .expect("pkcs11-tool");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut in_token = false;
        for line in text.lines() {
            if line.contains("token label") {
                in_token = line.split(':').nth(1).map(str::trim) == Some(self.label.as_str());
            }
            if in_token && line.contains("token flags") {
                return line.to_owned();
            }
        }
        panic!("token {} not listed:\n{text}", self.label)
    }
}

/// The key references a token-backed gateway uses.
#[derive(Clone, Debug)]
pub struct HsmKeys {
    pub tls: String,
    pub checkpoint: String,
    pub feedback: String,
    pub kek: String,
}

impl Default for HsmKeys {
    fn default() -> Self {
        Self {
            tls: "pkcs11:0101".into(),
            checkpoint: "pkcs11:0201".into(),
            feedback: "pkcs11:0301".into(),
            kek: "pkcs11:0401".into(),
        }
    }
}

/// The checkpoint origin of token-backed test gateways.
pub const HSM_ORIGIN: &str = "vvgate.e2e.hsm/audit";

/// A production configuration whose keys are all in `hsm`'s token; `cert` is the TLS
/// certificate of `keys.tls`, `pin_file` the user PIN file.
pub fn hsm_config_text(
    dir: &Path,
    pki: &Pki,
    hsm: &SoftHsm,
    cert: &Path,
    keys: &HsmKeys,
    pin_file: &Path,
) -> String {
    format!(
        r#"[telemetry_gateway]
mode = "production"
state_dir = "{state}"
listen = "127.0.0.1:0"
spectrastrike_ed25519_public_key_b64 = "{pk}"
allowed_service_identities = {{ "spectrastrike-producer" = "{p}" }}
operator_tenant_map = {{ "op-001" = "10000000-0000-0000-0000-000000000001" }}
feedback_active_kid = "fb-v1"
feedback_ed25519_keys = {{ "fb-v1" = "{feedback}" }}

[tls]
server_cert_path = "{cert}"
server_key = "{tls}"
client_ca_path = "{pki}/ca.pem"

[audit]
checkpoint_origin = "{HSM_ORIGIN}"
checkpoint_key = "{checkpoint}"

[keystore]
backend = "pkcs11"
module = "{module}"
token_label = "{label}"
pin_file = "{pin}"

[ops]
listen = "127.0.0.1:0"

[control]
socket_path = "{state}/control.sock"

[evidence]
active_key_id = "kek-v1"
keys = {{ "kek-v1" = "{kek}" }}
"#,
        state = dir.join("state").display(),
        pki = pki.dir.display(),
        pk = pki.producer_public_b64,
        p = pki.producer_pin,
        cert = cert.display(),
        tls = keys.tls,
        checkpoint = keys.checkpoint,
        feedback = keys.feedback,
        kek = keys.kek,
        module = hsm.module.display(),
        label = hsm.label,
        pin = pin_file.display(),
    )
}

impl Gateway {
    /// Start `vvgated` on `config_text` (written to `dir/vvgate.toml`) with `env` added.
    /// [`Gateway::restart`] would rewrite the configuration: use [`Gateway::restart_as_is`].
    pub fn start_with_config(
        dir: PathBuf,
        pki: Pki,
        config_text: &str,
        env: Vec<(String, String)>,
    ) -> Self {
        let config = dir.join("vvgate.toml");
        std::fs::write(&config, config_text).expect("write config");
        let log = dir.join(format!(
            "vvgated-{}.log",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut g = Self {
            dir,
            pki,
            opts: Opts {
                env,
                ..Opts::default()
            },
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops: SocketAddr::from(([127, 0, 0, 1], 0)),
            control: PathBuf::new(),
            child: None,
            log,
        };
        g.spawn();
        g
    }

    /// Stop (asserting a clean exit) and start again on the configuration file as it is.
    pub fn restart_as_is(&mut self) {
        if self.child.is_some() {
            let code = self.stop();
            assert_eq!(code, Some(0), "vvgated exit status\n{}", self.log_text());
        }
        self.log = self.dir.join(format!(
            "vvgated-{}.log",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        self.spawn();
    }

    /// Whether the process is still running (not yet stopped by the test).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// Run `vvgated ARGS` with `env` added, expecting it to exit by itself; returns (exit code,
/// stderr).
pub fn vvgated_exit_env(args: &[&str], env: &[(String, String)], secs: u64) -> (i32, String) {
    let mut child = Command::new(bin("vvgated"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vvgated");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vvgated kept running; expected a start-up refusal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
