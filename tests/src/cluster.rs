//! Scale-out parts: a 3-node `nats-server` cluster with JetStream on loopback (routes between
//! the nodes, TLS with client certificates for clients), an R3 telemetry stream, several
//! gateways sharing a KV nonce bucket, and HAProxy in TCP mode in front of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vvgate::devpki::DevCa;

use crate::{free_port, temp_dir, NatsAuth, Opts, Pki, StreamMessage};

/// The telemetry stream every test cluster carries (R3).
pub const STREAM: &str = "VECTORVUE_TELEMETRY";
/// The nonce bucket.
pub const BUCKET: &str = "VVGATE_NONCES";

struct Node {
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
}

/// Three `nats-server` processes forming one JetStream cluster.
pub struct NatsCluster {
    pub dir: PathBuf,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Start three nodes for `pki` (user/password auth, as [`crate::NatsServer`]) and wait
    /// until JetStream has a meta leader.
    pub fn start(pki: &Pki) -> Self {
        let dir = temp_dir("natsc");
        let ca = DevCa::load(&pki.dir).expect("ca");
        let (cert, key, _) = ca
            .issue("localhost", &["localhost", "127.0.0.1"])
            .expect("server cert");
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        ca.issue_client(&pki.dir, "nats-client", "vvgate-gateway")
            .expect("client cert");
        let creds = pki.dir.join("nats.creds");
        vvgate::devpki::write_private(&creds, b"vvgate:s3cret-pass").unwrap();
        let _ = NatsAuth::UserPass;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, r)| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let conf = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    r#"listen: 127.0.0.1:{port}
server_name: n{i}
max_payload: 4MB
jetstream {{ store_dir: "{js}" }}
cluster {{
  name: vvgate-e2e
  listen: 127.0.0.1:{route}
  routes: [{routes}]
}}
tls {{
  cert_file: "{d}/server.pem"
  key_file: "{d}/server.key"
  ca_file: "{ca}"
  verify: true
  timeout: 5
}}
authorization {{ user: vvgate, password: "s3cret-pass" }}
"#,
                    js = dir.join(format!("js{i}")).display(),
                    d = dir.display(),
                    ca = pki.path("ca.pem").display(),
                    routes = routes.join(", "),
                ),
            )
            .unwrap();
            nodes.push(Node {
                port: *port,
                conf,
                log: dir.join(format!("n{i}.log")),
                child: None,
                starts: 0,
            });
        }
        let mut c = Self { dir, nodes };
        for i in 0..3 {
            c.spawn(i);
        }
        c.wait_for_jetstream(pki);
        c
    }

    fn spawn(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("nats log");
        n.child = Some(
            Command::new("nats-server")
                .arg("-c")
                .arg(&n.conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server (install it: scripts/test-all.sh does)"),
        );
        for _ in 0..200 {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            if text.matches("Server is ready").count() > n.starts {
                n.starts += 1;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nats-server n{i} did not start:\n{}",
            std::fs::read_to_string(&n.log).unwrap_or_default()
        );
    }

    /// A JetStream API request through node `i` until it answers without an error.
    fn wait_for_jetstream(&self, pki: &Pki) {
        let start = std::time::Instant::now();
        loop {
            let r = self.request(pki, 0, "$JS.API.INFO", b"");
            if r.as_ref().is_some_and(|v| v.get("error").is_none()) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "JetStream cluster has no meta leader: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The client port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start node `i` again with its stored state.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// One JetStream API request through node `i`; `None` without an answer.
    pub fn request(
        &self,
        pki: &Pki,
        i: usize,
        subject: &str,
        body: &[u8],
    ) -> Option<serde_json::Value> {
        smol::block_on(async {
            let mut c = connect(self.port(i), pki).await?;
            let r = c
                .request(subject, body, Duration::from_secs(10))
                .await
                .ok()?;
            serde_json::from_slice(&r.payload).ok()
        })
    }

    /// Create the R3 telemetry stream (file storage, a duplicate window over the nonce
    /// retention) through node 0.
    pub fn create_stream(&self, pki: &Pki) {
        let cfg = serde_json::json!({
            "name": STREAM,
            "subjects": ["vectorvue.telemetry.ingest", "vectorvue.telemetry.dlq", "vectorvue.audit.>"],
            "storage": "file", "retention": "limits", "discard": "old", "num_replicas": 3,
            "duplicate_window": 600_000_000_000u64,
        });
        let start = std::time::Instant::now();
        loop {
            let v = self.request(
                pki,
                0,
                &format!("$JS.API.STREAM.CREATE.{STREAM}"),
                cfg.to_string().as_bytes(),
            );
            if v.as_ref().is_some_and(|v| v.get("error").is_none()) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "cannot create the R3 stream: {v:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Publish `value` under `key` of the bucket with a plain JetStream publish (as a foreign
    /// writer would), through node `i`.
    pub fn put(&self, pki: &Pki, i: usize, key: &str, value: &[u8]) -> serde_json::Value {
        self.request(pki, i, &format!("$KV.{BUCKET}.{key}"), value)
            .expect("KV put answered")
    }

    /// Every message in the telemetry stream, read through a live node `i` (retried while
    /// the cluster elects a leader, up to 30 s).
    pub fn messages(&self, pki: &Pki, i: usize) -> Vec<StreamMessage> {
        let start = std::time::Instant::now();
        loop {
            match smol::block_on(crate::try_read_stream_at(self.port(i), STREAM, pki)) {
                Ok(m) => return m,
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    panic!("cannot read the stream through n{i}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// The gateway configuration for node `i`, with the shared bucket as `appliance`.
    pub fn gateway_opts(&self, pki: &Pki, i: usize, appliance: &str, base: Opts) -> Opts {
        self.gateway_opts_nodes(pki, &[i], appliance, base)
    }

    /// The gateway configuration for the nodes `nodes`, tried in that order (`nats_url` as a
    /// list), with the shared bucket as `appliance`.
    pub fn gateway_opts_nodes(
        &self,
        pki: &Pki,
        nodes: &[usize],
        appliance: &str,
        base: Opts,
    ) -> Opts {
        let urls: Vec<String> = nodes
            .iter()
            .map(|i| format!("\"tls://127.0.0.1:{}\"", self.port(*i)))
            .collect();
        let mut o = base
            .with("queue_backend = \"nats\"")
            .with("nonce_backend = \"jetstream_kv\"")
            .with(&format!("nats_url = [{}]", urls.join(", ")));
        o.extra_toml.push_str(&format!(
            "\n[nats]\nca_path = \"{ca}\"\ncert_path = \"{d}/nats-client.pem\"\nkey = \"file:{d}/nats-client.key\"\ncredentials_file = \"{d}/nats.creds\"\n\n[cluster]\nappliance_id = \"{appliance}\"\nbucket = \"{BUCKET}\"\nreplicas = 3\ncreate_bucket = true\ntimeout_ms = 3000\n",
            ca = pki.path("ca.pem").display(),
            d = pki.dir.display(),
        ));
        o
    }
}

async fn connect(port: u16, pki: &Pki) -> Option<vvgate::nats::Connection> {
    use vvgate::nats::{Connection, Credentials, NatsOptions};
    let tls = vvgate::client::client_config(
        &pki.path("ca.pem"),
        &pki.path("nats-client.pem"),
        &pki.path("nats-client.key"),
    )
    .ok()?;
    let opts = NatsOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        server_name: "127.0.0.1".into(),
        tls,
        credentials: Credentials::load(&pki.path("nats.creds")).ok()?,
        name: "vvgate-e2e-cluster".into(),
        timeout: Duration::from_secs(5),
    };
    Connection::connect(&opts, &format!("e2e{}", free_port()))
        .await
        .ok()
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// HAProxy in TCP mode balancing round-robin over gateways (TLS passes through).
pub struct Haproxy {
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Haproxy {
    /// `None` when `haproxy` is not installed (scripts/test-all.sh installs it).
    pub fn start(backends: &[SocketAddr]) -> Option<Self> {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = temp_dir("haproxy");
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, a)| format!("  server gw{i} {a} check inter 200ms fall 1 rise 2\n"))
            .collect();
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n  maxconn 512\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nfrontend producers\n  bind 127.0.0.1:{port}\n  default_backend gateways\nbackend gateways\n  balance roundrobin\n{servers}"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Some(Self {
                    addr,
                    dir,
                    child: Some(child),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
