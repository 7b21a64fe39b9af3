//! `vvctl bench`: N keep-alive mTLS connections sending pre-signed valid requests to a running
//! gateway; prints requests/s, latency percentiles, and the gateway's CPU and RSS.
//!
//! Requests are built and signed before the timed window (signing costs the client about as
//! much as verifying costs the gateway), with unique nonces and timestamps taken at build time,
//! so keep warm-up plus duration inside the gateway's clock skew window. Pin the gateway and
//! this tool to different cores for fair numbers (`taskset -c 1 vvgated …`,
//! `taskset -c 0 vvctl bench …`; see docs/benchmarks.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::{resolve_producer, CliError, ProducerArgs, ProducerTarget, Where};
use crate::client::{self, Connection, SAMPLE_EVENT};

/// How to load the gateway.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Keep-alive connections.
    #[arg(short = 'c', long, default_value_t = 32)]
    pub connections: usize,
    /// Measured seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Pre-signed requests in total (default: 15,000 per second of run). The run ends early
    /// once all of them are answered.
    #[arg(long, default_value_t = 0)]
    pub requests: usize,
    /// Extra idle TLS connections held open during the run (RSS with many connections).
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// The gateway's PID (default: asked on its control socket).
    #[arg(long)]
    pub pid: Option<u32>,
    /// One JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Measure the audit log's append cost per request instead (no gateway needed).
    #[arg(long)]
    pub audit: bool,
    /// Entries appended with --audit.
    #[arg(long, default_value_t = 200_000)]
    pub audit_entries: usize,
    /// Entries per group commit with --audit (the group commit's maximum is 256; under
    /// moderate load groups are smaller).
    #[arg(long, default_value_t = super::bench_audit::GROUP)]
    pub audit_group: usize,
    /// Measure new connections instead: each connection thread opens a connection (a full
    /// mutual-TLS handshake; the gateway never resumes sessions), sends `GET /healthz`, reads
    /// the answer and closes, in a loop. Reports handshakes/s and the gateway's CPU per
    /// handshake (where the TLS key's signature is made: in memory or in the token).
    #[arg(long)]
    pub handshakes: bool,
    /// Total requests per second to aim at, spread over the connections (0: as fast as the
    /// gateway answers).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Percentage of bad requests mixed in, of every kind in turn: a bad signature, a stale
    /// timestamp, a replayed nonce, an unknown service identity, a body that fails the schema.
    /// Their refusals are expected; only 5xx answers and transport errors fail the run.
    #[arg(long, default_value_t = 0)]
    pub bad_percent: u32,
    /// The gateway's ops listener, for its heap counters (a gateway built with the
    /// `alloc-count` feature; default: `ops.listen` of the configuration).
    #[arg(long)]
    pub ops: Option<std::net::SocketAddr>,
}

const NONCE_MARK: &str = "ffffffff-ffff-4fff-bfff-fffffffffffe";
const TS_MARK: &str = "1999999998";

/// A body template with the positions of its nonce and timestamp.
struct Template {
    body: Vec<u8>,
    nonce_at: Vec<usize>,
    ts_at: Vec<usize>,
}

fn positions(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

impl Template {
    fn new() -> Result<Self, CliError> {
        let v: serde_json::Value =
            serde_json::from_str(SAMPLE_EVENT).map_err(|e| CliError::Usage(e.to_string()))?;
        let body = client::prepare_event(&v, TS_MARK.parse().unwrap_or(0), NONCE_MARK)?;
        Ok(Self {
            nonce_at: positions(&body, NONCE_MARK.as_bytes()),
            ts_at: positions(&body, TS_MARK.as_bytes()),
            body,
        })
    }

    fn fill(&self, ts: &str, nonce: &str) -> Vec<u8> {
        let mut b = self.body.clone();
        for &p in &self.nonce_at {
            b[p..p + nonce.len()].copy_from_slice(nonce.as_bytes());
        }
        for &p in &self.ts_at {
            b[p..p + ts.len()].copy_from_slice(ts.as_bytes());
        }
        b
    }
}

/// Build `n` signed requests (in parallel, one thread per core).
fn presign(t: &ProducerTarget, tpl: &Template, n: usize) -> Vec<Vec<u8>> {
    let threads = std::thread::available_parallelism().map_or(2, |p| p.get());
    let per = n.div_ceil(threads);
    let idem = "0c40dbd5295bc42311cb7f980880d9407e386bca6f83639de3a38144a037e6cd";
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                s.spawn(move || {
                    let mut rng = crate::ids::Random::new();
                    let count = per.min(n.saturating_sub(k * per));
                    let mut out = Vec::with_capacity(count);
                    for _ in 0..count {
                        let nonce = crate::ids::uuid_text(&rng.uuid_v4());
                        let ts = crate::time::Clock::system().now().secs();
                        let body = tpl.fill(&ts.to_string(), &nonce);
                        out.push(t.producer.request(&t.host, ts, &nonce, &body, Some(idem)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Replace `percent`% of `reqs` with bad requests, one kind after another. A replay repeats
/// the request `conns` places earlier, which the same connection has sent before. Returns
/// how many were replaced.
fn mix_bad(
    t: &ProducerTarget,
    tpl: &Template,
    reqs: &mut [Vec<u8>],
    percent: u32,
    conns: usize,
) -> usize {
    if percent == 0 {
        return 0;
    }
    let every = usize::try_from(100 / percent.clamp(1, 50)).unwrap_or(50);
    let mut rng = crate::ids::Random::new();
    let mut n = 0;
    for i in (every..reqs.len()).step_by(every) {
        let nonce = crate::ids::uuid_text(&rng.uuid_v4());
        let ts = crate::time::Clock::system().now().secs();
        let kind = n % 5;
        reqs[i] = match kind {
            // A signature over other bytes.
            0 => {
                let body = tpl.fill(&ts.to_string(), &nonce);
                let mut r = t.producer.request(&t.host, ts, &nonce, &body, None);
                let last = r.len() - 2;
                r[last] ^= 0x01;
                r
            }
            // Signed an hour ago.
            1 => {
                let old = ts.saturating_sub(3600);
                let body = tpl.fill(&old.to_string(), &nonce);
                t.producer.request(&t.host, old, &nonce, &body, None)
            }
            // The request this connection sent `conns` requests ago.
            2 if i >= conns => reqs[i - conns].clone(),
            // A service identity nobody pinned (same length, so the framing is unchanged).
            3 | 2 => {
                let body = tpl.fill(&ts.to_string(), &nonce);
                let r = t.producer.request(&t.host, ts, &nonce, &body, None);
                let text = String::from_utf8_lossy(&r).into_owned();
                match text.find("X-Service-Identity: ") {
                    Some(at) => {
                        let mut r = r;
                        r[at + 20] = if r[at + 20] == b'z' { b'y' } else { b'z' };
                        r
                    }
                    None => r,
                }
            }
            // Signed, but not a telemetry request.
            _ => t
                .producer
                .request(&t.host, ts, &nonce, b"{\"not\":\"telemetry\"}", None),
        };
        n += 1;
    }
    n
}

/// utime+stime in seconds, and current/peak RSS in KiB.
fn proc_stats(pid: u32) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    #[allow(clippy::cast_precision_loss)] // seconds of CPU, displayed
    Some((ticks as f64 / hz as f64, kib("VmRSS:"), kib("VmHWM:")))
}

/// The fixed reference of this run: CPU µs of one ring Ed25519 verification of a sample
/// request (what the gateway must do once per request), measured for half a second here.
fn reference_verify_us(t: &ProducerTarget, tpl: &Template) -> f64 {
    use ring::signature::{KeyPair, UnparsedPublicKey, ED25519};
    let body = tpl.fill("1999999998", NONCE_MARK);
    let mut msg = b"1999999998.".to_vec();
    msg.extend_from_slice(NONCE_MARK.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(&body);
    let sig = t.producer.key.sign(&msg);
    let pk = UnparsedPublicKey::new(&ED25519, t.producer.key.public_key().as_ref());
    let start = thread_cpu();
    let mut n = 0u32;
    while thread_cpu() - start < 0.5 {
        for _ in 0..100 {
            let _ = std::hint::black_box(pk.verify(std::hint::black_box(&msg), sig.as_ref()));
        }
        n += 100;
    }
    (thread_cpu() - start) * 1e6 / f64::from(n)
}

/// This thread's CPU time in seconds.
pub(super) fn thread_cpu() -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let v = crate::time::thread_cpu_us() as f64 / 1e6;
    v
}

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The gateway's status line (control socket), if reachable.
fn status(w: &Where) -> Option<serde_json::Value> {
    let cfg = w.load().ok()??;
    let lines = super::control(&cfg.control.socket_path, "{\"cmd\":\"status\"}").ok()??;
    serde_json::from_str(lines.first()?).ok()
}

/// The gateway's heap counters (`alloc-count` builds) from `/metrics` on its ops listener:
/// allocations, bytes, group commits, decisions committed.
fn heap_totals(ops: Option<std::net::SocketAddr>) -> Option<[u64; 4]> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect_timeout(&ops?, Duration::from_secs(2)).ok()?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some([
        value("vvgate_heap_allocations_total")?,
        value("vvgate_heap_allocated_bytes_total")?,
        value("vvgate_storage_commits_total")?,
        value("vvgate_storage_committed_ops_total")?,
    ])
}

struct ThreadResult {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

pub fn run(w: &Where, pa: &ProducerArgs, args: &BenchArgs) -> Result<(), CliError> {
    if args.audit {
        return super::bench_audit::run(args.audit_entries, args.audit_group, args.json);
    }
    let t = Arc::new(resolve_producer(w, pa)?);
    let pid = match args.pid {
        Some(p) => Some(p),
        None => {
            let cfg = w.load()?;
            cfg.and_then(|c| {
                super::control(&c.control.socket_path, "{\"cmd\":\"status\"}")
                    .ok()
                    .flatten()
            })
            .and_then(|lines| {
                let v: serde_json::Value = serde_json::from_str(lines.first()?).ok()?;
                u32::try_from(v.get("pid")?.as_u64()?).ok()
            })
        }
    };
    if args.handshakes {
        return handshakes(&t, pid, args);
    }
    let ops = args
        .ops
        .or_else(|| w.load().ok().flatten().map(|c| c.ops_listen))
        .filter(|a| a.port() != 0);
    let conns = args.connections.max(1);
    let total = if args.requests > 0 {
        args.requests
    } else {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small positive
        let n = (15_000.0 * (args.duration + args.warmup)) as usize;
        n.max(conns)
    };
    let tpl = Template::new()?;
    let reference = reference_verify_us(&t, &tpl);
    let build = Instant::now();
    let mut reqs = presign(&t, &tpl, total);
    let bad = mix_bad(&t, &tpl, &mut reqs, args.bad_percent, conns);
    eprintln!(
        "vvctl bench: pre-signed {} requests in {:.1} s; {} connections, {:.1} s warm-up, {:.1} s measured",
        reqs.len(),
        build.elapsed().as_secs_f64(),
        conns,
        args.warmup,
        args.duration
    );

    let mut idle = Vec::with_capacity(args.idle);
    for _ in 0..args.idle {
        idle.push(Connection::connect_tls(
            t.addr,
            &t.server_name,
            t.producer.tls.clone(),
            Duration::from_secs(15),
        )?);
    }

    // Split the requests per connection.
    let mut per_conn: Vec<Vec<Vec<u8>>> = (0..conns).map(|_| Vec::new()).collect();
    for (i, r) in reqs.drain(..).enumerate() {
        per_conn[i % conns].push(r);
    }
    let barrier = Arc::new(Barrier::new(conns + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let warm = Duration::from_secs_f64(args.warmup);
    let mut handles = Vec::new();
    #[allow(clippy::cast_precision_loss)]
    let gap = (args.rate > 0.0).then(|| Duration::from_secs_f64(conns as f64 / args.rate));
    for list in per_conn {
        let (t, barrier, stop) = (Arc::clone(&t), Arc::clone(&barrier), Arc::clone(&stop));
        handles.push(std::thread::spawn(move || {
            let mut res = ThreadResult {
                latencies_us: Vec::with_capacity(list.len()),
                statuses: BTreeMap::new(),
                errors: 0,
            };
            let conn = Connection::connect_tls(
                t.addr,
                &t.server_name,
                t.producer.tls.clone(),
                Duration::from_secs(30),
            );
            barrier.wait();
            let Ok(mut conn) = conn else {
                res.errors += 1;
                return res;
            };
            let start = Instant::now();
            for (k, req) in list.into_iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(gap) = gap {
                    let due = start + gap * u32::try_from(k).unwrap_or(u32::MAX);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let t0 = Instant::now();
                match conn.send(&req) {
                    Ok(r) => {
                        if t0.duration_since(start) >= warm {
                            res.latencies_us
                                .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                            *res.statuses.entry(r.status).or_default() += 1;
                        }
                    }
                    Err(_) => {
                        res.errors += 1;
                        match Connection::connect_tls(
                            t.addr,
                            &t.server_name,
                            t.producer.tls.clone(),
                            Duration::from_secs(30),
                        ) {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            res
        }));
    }
    let load_before = loadavg();
    barrier.wait();
    std::thread::sleep(warm);
    let cpu0 = pid.and_then(proc_stats);
    let heap0 = heap_totals(ops);
    let acked0 = status(w).and_then(|s| s["forward"]["acked"].as_u64());
    let measured_start = Instant::now();
    // The measured window ends at --duration, or earlier once every connection has sent all
    // its requests (a fixed count of requests with --requests and a long --duration).
    let window = Duration::from_secs_f64(args.duration);
    while measured_start.elapsed() < window && !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(
            window
                .saturating_sub(measured_start.elapsed())
                .min(Duration::from_millis(50)),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let measured = measured_start.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(proc_stats);
    let heap1 = heap_totals(ops);
    let acked1 = status(w).and_then(|s| s["forward"]["acked"].as_u64());
    let mut lat = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| CliError::Failed("a bench thread panicked".into()))?;
        lat.extend(r.latencies_us);
        for (s, n) in r.statuses {
            *statuses.entry(s).or_default() += n;
        }
        errors += r.errors;
    }
    drop(idle);
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat[i]) / 1000.0
    };
    let n = lat.len();
    #[allow(clippy::cast_precision_loss)]
    let rps = n as f64 / measured;
    let ok = statuses.get(&202).copied().unwrap_or(0);
    let (cpu_us, rss, peak) = match (cpu0, cpu1) {
        #[allow(clippy::cast_precision_loss)]
        (Some((c0, _, _)), Some((c1, rss, peak))) => (
            if n > 0 {
                (c1 - c0) * 1e6 / n as f64
            } else {
                0.0
            },
            rss,
            peak,
        ),
        _ => (0.0, 0, 0),
    };
    let cpu_share = match (cpu0, cpu1) {
        (Some((c0, _, _)), Some((c1, _, _))) => (c1 - c0) / measured * 100.0,
        _ => 0.0,
    };
    // Heap allocations per accepted request over the measured window (all gateway threads:
    // event loop, storage, forwarder).
    #[allow(clippy::cast_precision_loss)]
    let heap = match (heap0, heap1) {
        (Some(h0), Some(h1)) if ok > 0 => {
            let d = |i: usize| h1[i].saturating_sub(h0[i]) as f64;
            Some((d(0) / ok as f64, d(1) / ok as f64, d(3) / d(2).max(1.0)))
        }
        _ => None,
    };
    let load_after = loadavg();
    // With a queue: how far behind the forwarder was, and how long the spool takes to empty.
    let queue = match (acked0, acked1) {
        (Some(a0), Some(a1))
            if status(w).is_some_and(|s| s["forward"]["connected"] == true || a1 > 0) =>
        {
            let load_end = Instant::now();
            let left = status(w)
                .and_then(|s| s["spool_events"].as_u64())
                .unwrap_or(0);
            let mut drained = None;
            while load_end.elapsed() < Duration::from_secs(60) {
                if status(w).and_then(|s| s["spool_events"].as_u64()) == Some(0) {
                    drained = Some(load_end.elapsed().as_secs_f64());
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            #[allow(clippy::cast_precision_loss)]
            let rate = (a1 - a0) as f64 / measured;
            Some((rate, left, drained))
        }
        _ => None,
    };
    if args.json {
        println!(
            "{{\"reference_verify_us\":{reference:.1},\"connections\":{conns},\"idle\":{},\"duration_s\":{measured:.3},\"requests\":{n},\"accepted\":{ok},\"errors\":{errors},\"rps\":{rps:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"gateway_cpu_us_per_request\":{cpu_us:.1},\"gateway_cpu_percent\":{cpu_share:.1},\"gateway_rss_kib\":{rss},\"gateway_peak_rss_kib\":{peak},\"load_before\":\"{load_before}\",\"load_after\":\"{load_after}\",\"queue_acks_per_s\":{},\"spool_left_at_end\":{},\"spool_drained_s\":{},\"heap_allocs_per_request\":{},\"heap_bytes_per_request\":{},\"decisions_per_commit\":{},\"bad_mixed\":{bad},\"statuses\":{}}}",
            args.idle,
            pct(0.5),
            pct(0.99),
            pct(1.0),
            queue.map_or("null".to_owned(), |q| format!("{:.1}", q.0)),
            queue.map_or("null".to_owned(), |q| q.1.to_string()),
            queue.and_then(|q| q.2).map_or("null".to_owned(), |d| format!("{d:.3}")),
            heap.map_or("null".to_owned(), |h| format!("{:.2}", h.0)),
            heap.map_or("null".to_owned(), |h| format!("{:.0}", h.1)),
            heap.map_or("null".to_owned(), |h| format!("{:.1}", h.2)),
            serde_json::to_string(&statuses).unwrap_or_default(),
        );
    } else {
        let status_list: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        println!(
            "requests    {n} in {measured:.2} s ({}), errors {errors}",
            status_list.join(", ")
        );
        println!("throughput  {rps:.0} req/s");
        println!(
            "latency     p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
        match pid {
            Some(p) => println!(
                "gateway     pid {p}: {cpu_us:.1} µs CPU/request ({cpu_share:.0}% of a core), RSS {:.1} MiB (peak {:.1} MiB) with {} idle + {conns} busy connections",
                kib_to_mib(rss),
                kib_to_mib(peak),
                args.idle
            ),
            None => println!("gateway     pid unknown (pass --pid or --dev/--config with a reachable control socket)"),
        }
        if cpu_us > 0.0 && reference > 0.0 {
            println!(
                "reference   ring Ed25519 verify of this request: {reference:.1} µs here, now; the gateway used {:.2} of those per request",
                cpu_us / reference
            );
        }
        if let Some((rate, left, drained)) = queue {
            println!(
                "queue       {rate:.0} PubAcks/s during the run; {left} envelopes spooled when the load stopped, spool empty after {}",
                drained.map_or_else(|| "more than 60 s".to_owned(), |d| format!("{d:.2} s"))
            );
        }
        if let Some((allocs, bytes, group)) = heap {
            println!(
                "heap        {allocs:.2} allocations, {bytes:.0} bytes per accepted request (gateway, all threads); {group:.1} decisions per group commit"
            );
        }
        println!("load        {load_before} -> {load_after}");
    }
    let unexpected = if bad > 0 {
        statuses.keys().any(|&s| s >= 500)
    } else {
        statuses.keys().any(|&s| s != 202)
    };
    if ok == 0 || errors > 0 || unexpected {
        return Err(CliError::Failed(format!(
            "not every request was accepted: statuses {statuses:?}, errors {errors}"
        )));
    }
    Ok(())
}

/// `--handshakes`: full handshakes (plus one small request each) per second.
fn handshakes(t: &Arc<ProducerTarget>, pid: Option<u32>, args: &BenchArgs) -> Result<(), CliError> {
    const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let conns = args.connections.max(1);
    let warm = Duration::from_secs_f64(args.warmup);
    let barrier = Arc::new(Barrier::new(conns + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let (t, barrier, stop) = (Arc::clone(t), Arc::clone(&barrier), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut res = ThreadResult {
                    latencies_us: Vec::new(),
                    statuses: BTreeMap::new(),
                    errors: 0,
                };
                barrier.wait();
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let r = Connection::connect_tls(
                        t.addr,
                        &t.server_name,
                        t.producer.tls.clone(),
                        Duration::from_secs(30),
                    )
                    .and_then(|mut c| c.send(HEALTH));
                    if t0.duration_since(start) < warm {
                        continue;
                    }
                    match r {
                        Ok(r) => {
                            res.latencies_us
                                .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                            *res.statuses.entry(r.status).or_default() += 1;
                        }
                        Err(_) => res.errors += 1,
                    }
                }
                res
            })
        })
        .collect();
    let load_before = loadavg();
    barrier.wait();
    std::thread::sleep(warm);
    let cpu0 = pid.and_then(proc_stats);
    let measured_start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let cpu1 = pid.and_then(proc_stats);
    let measured = measured_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = 0;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| CliError::Failed("a bench thread panicked".into()))?;
        lat.extend(r.latencies_us);
        for (s, n) in r.statuses {
            *statuses.entry(s).or_default() += n;
        }
        errors += r.errors;
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat[i]) / 1000.0
    };
    let n = lat.len();
    #[allow(clippy::cast_precision_loss)]
    let rate = n as f64 / measured;
    let (cpu_us, cpu_share) = match (cpu0, cpu1) {
        #[allow(clippy::cast_precision_loss)]
        (Some((c0, _, _)), Some((c1, _, _))) if n > 0 => {
            ((c1 - c0) * 1e6 / n as f64, (c1 - c0) / measured * 100.0)
        }
        _ => (0.0, 0.0),
    };
    let load_after = loadavg();
    if args.json {
        println!(
            "{{\"mode\":\"handshakes\",\"connections\":{conns},\"duration_s\":{measured:.3},\"handshakes\":{n},\"errors\":{errors},\"handshakes_per_s\":{rate:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"gateway_cpu_us_per_handshake\":{cpu_us:.1},\"gateway_cpu_percent\":{cpu_share:.1},\"load_before\":\"{load_before}\",\"load_after\":\"{load_after}\"}}",
            pct(0.5),
            pct(0.99),
        );
    } else {
        let status_list: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        println!(
            "handshakes  {n} in {measured:.2} s ({}), errors {errors}: full mutual-TLS handshake + GET /healthz each",
            status_list.join(", ")
        );
        println!("rate        {rate:.0} handshakes/s");
        println!(
            "latency     p50 {:.2} ms   p99 {:.2} ms",
            pct(0.5),
            pct(0.99)
        );
        match pid {
            Some(p) => println!(
                "gateway     pid {p}: {cpu_us:.1} µs CPU/handshake ({cpu_share:.0}% of a core)"
            ),
            None => println!(
                "gateway     pid unknown (pass --pid or --config with a reachable control socket)"
            ),
        }
        println!("load        {load_before} -> {load_after}");
    }
    if n == 0 || errors > 0 || statuses.keys().any(|&s| s != 200) {
        return Err(CliError::Failed(format!(
            "not every handshake succeeded: statuses {statuses:?}, errors {errors}"
        )));
    }
    Ok(())
}

fn kib_to_mib(kib: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let v = kib as f64 / 1024.0;
    v
}
