//! Flood latency benchmark: a well-behaved producer sends valid signed requests at a steady
//! rate on a few keep-alive connections while one flood after another runs against the
//! gateway (the generators of the flood tests, `vvgate_e2e::floods`), and its latency is
//! printed per flood next to a no-flood baseline from the same run. Each flood gets a fresh
//! gateway with the configuration it needs. Loopback only, bounded in time.
//!
//! Run through `scripts/bench-floods.sh`, which builds an optimised `vvgated` and points
//! `VVGATED_BIN` at it. Prints figures; asserts nothing about time. Besides the producer's
//! latency, each line has the gateway's side over the measured window: connections that went
//! on to a TLS handshake per second (`tls/s`), connections closed before TLS per second
//! (`refused/s`, of which over the new-connection rate: `rate/s`), and the gateway's CPU use.
//! Aborted (SIGINT, SIGTERM, a panic), it stops the running gateway and removes its directory.
//!
//! usage: flood-bench [SECONDS_PER_FLOOD (12)] [RATE_PER_S (200)] [CONNECTIONS (4)] [FLOOD...]
//! floods: baseline idle slowloris handshakes cap nofile bodies (default: all, in that order)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vvgate::client::Connection;
use vvgate_e2e::{floods, request, valid, Gateway, Opts};

/// What the well-behaved producer saw during one window.
struct Seen {
    sent: u64,
    latencies_ms: Vec<f64>,
    errors: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
}

/// Keep-alive connections `open` (opened before the flood, as a producer's are), each
/// sending a freshly signed valid request every `open.len() / rate` seconds (on a fixed
/// schedule, so a slow answer does not lower the rate) until `secs` have passed. A
/// connection that fails is opened again (counted as an error).
fn well_behaved(g: &Gateway, open: Vec<Connection>, rate: f64, secs: f64) -> Seen {
    let conns = open.len();
    let gap = Duration::from_secs_f64(conns as f64 / rate);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = open
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let p = g.pki.producer();
            let mut conn = Some(c);
            let (addr, tls) = (g.addr, p.tls.clone());
            std::thread::spawn(move || {
                let mut seen = Seen {
                    sent: 0,
                    latencies_ms: Vec::new(),
                    errors: 0,
                    statuses: Default::default(),
                };
                // Spread the connections over the gap.
                let start = Instant::now() + gap.mul_f64(i as f64 / conns as f64);
                for k in 0u32.. {
                    let due = start + gap * k;
                    if due >= end {
                        break;
                    }
                    if let Some(w) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(w);
                    }
                    let req = request(&p, &valid());
                    seen.sent += 1;
                    let t0 = Instant::now();
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match Connection::connect_tls(
                            addr,
                            "localhost",
                            tls.clone(),
                            Duration::from_secs(10),
                        ) {
                            Ok(c) => conn.insert(c),
                            Err(_) => {
                                seen.errors += 1;
                                continue;
                            }
                        },
                    };
                    match c.send(&req) {
                        Ok(r) => {
                            seen.latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
                            *seen.statuses.entry(r.status).or_default() += 1;
                            if r.status != 202 {
                                seen.errors += 1;
                            }
                        }
                        Err(_) => {
                            seen.errors += 1;
                            conn = None;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Seen {
        sent: 0,
        latencies_ms: Vec::new(),
        errors: 0,
        statuses: Default::default(),
    };
    for h in handles {
        let s = h.join().expect("producer thread");
        all.latencies_ms.extend(s.latencies_ms);
        all.errors += s.errors;
        all.sent += s.sent;
        for (k, v) in s.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
    }
    all.latencies_ms.sort_by(f64::total_cmp);
    all
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small, >= 0
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// The gateway's counters that a flood moves, and its CPU time.
#[derive(Clone, Copy, Default)]
struct GatewayCounters {
    /// Connections that went on to a TLS handshake.
    accepted: u64,
    /// Connections closed before TLS (connection limit, connection rate; any label set).
    refused: u64,
    /// Of those, for the connection rate.
    refused_rate: u64,
    /// CPU seconds of the gateway process (user + system).
    cpu_s: f64,
}

fn counters(g: &Gateway) -> GatewayCounters {
    let text = g.ops_get("/metrics").body_text();
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    GatewayCounters {
        accepted: sum("vvgate_connections_accepted_total"),
        refused: sum("vvgate_connections_refused_total"),
        refused_rate: sum("vvgate_connections_refused_total{reason=\"connection_rate\"}"),
        cpu_s: cpu_seconds(g.pid()),
    }
}

/// User + system CPU seconds of a process (`/proc/PID/stat`, clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at `state`, field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14, stime 15: indexes 11 and 12 after `state`.
    (ticks(11) + ticks(12)) / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// The gateway's options for a flood: the rate limit out of the producer's way, plus the
/// lines of `VVGATE_BENCH_GATEWAY_TOML` (`;`-separated `[telemetry_gateway]` lines, e.g.
/// `max_new_connections_per_second = 200;new_connection_burst = 200`).
fn opts(flood: &str) -> Opts {
    let mut o = Opts::default().with("rate_limit_per_minute = 100000000");
    for line in std::env::var("VVGATE_BENCH_GATEWAY_TOML")
        .unwrap_or_default()
        .split(';')
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        o = o.with(line);
    }
    match flood {
        "idle" => o
            .with("max_connections = 1100")
            .with("idle_timeout_seconds = 120"),
        "slowloris" => o.with("header_read_timeout_seconds = 3"),
        "cap" => o.with("max_connections = 40"),
        "nofile" => o.with("max_connections = 900"),
        "bodies" => o.with("body_read_timeout_seconds = 3"),
        _ => o,
    }
}

/// Run `flood` against `g` until `stop`; returns its account.
fn flood(name: &str, g: &Gateway, stop: &Arc<AtomicBool>) -> String {
    let tls = g.pki.producer().tls.clone();
    match name {
        "baseline" => {
            floods::sleep_unless(stop, Duration::from_secs(86_400));
            "no flood".to_owned()
        }
        "idle" => floods::idle(g.addr, &tls, 1000, stop),
        "slowloris" => floods::slowloris(g.addr, &tls, 300, stop),
        "handshakes" => floods::handshakes(g.addr, &g.pki.path("ca.pem"), 4, stop).0,
        "cap" => {
            // 40 allowed: the producer's connections and these fill the cap.
            let held = floods::connect_many(g.addr, &tls, 36);
            let (text, _) = floods::past_the_cap(g.addr, 4, stop);
            drop(held);
            format!("36 held besides the producer's, {text}")
        }
        "nofile" => floods::descriptor_rounds(g.addr, 950, stop),
        "bodies" => floods::huge_bodies(g.addr, &tls, 40, stop),
        other => panic!("unknown flood {other}"),
    }
}

fn main() {
    cleanup::install();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: f64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (secs, rate) = (num(0, 12.0), num(1, 200.0));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let conns = num(2, 4.0).max(1.0) as usize;
    let all = [
        "baseline",
        "idle",
        "slowloris",
        "handshakes",
        "cap",
        "nofile",
        "bodies",
    ];
    let chosen: Vec<&str> = if args.len() > 3 {
        args[3..].iter().map(String::as_str).collect()
    } else {
        all.to_vec()
    };
    println!(
        "flood-bench: {conns} keep-alive connections at {rate} valid requests/s in all, {secs} s per flood after 1 s of flood ramp-up; vvgated {}",
        vvgate_e2e::bin("vvgated").display()
    );
    println!(
        "{:<11} {:>6} {:>6} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>6} {:>11}  flood",
        "flood",
        "sent",
        "errors",
        "p50 ms",
        "p99 ms",
        "max ms",
        "tls/s",
        "refused/s",
        "rate/s",
        "gw cpu",
        "load"
    );
    for name in chosen {
        let g = Gateway::start_with(opts(name));
        if name == "nofile" {
            // LimitNOFILE=1024 on the running gateway, as systemd would set it.
            let st = std::process::Command::new("prlimit")
                .args(["--pid", &g.pid().to_string(), "--nofile=1024:1024"])
                .status()
                .expect("prlimit");
            assert!(st.success(), "prlimit failed");
        }
        cleanup::watch(g.pid(), &g.dir);
        let load0 = loadavg();
        let stop = Arc::new(AtomicBool::new(false));
        let open: Vec<Connection> = (0..conns).map(|_| g.connect()).collect();
        let account = std::thread::scope(|s| {
            let f = s.spawn(|| flood(name, &g, &stop));
            std::thread::sleep(Duration::from_secs(1));
            let (c0, t0) = (counters(&g), Instant::now());
            let seen = well_behaved(&g, open, rate, secs);
            let (c1, window) = (counters(&g), t0.elapsed().as_secs_f64());
            stop.store(true, Ordering::Relaxed);
            let account = f.join().expect("flood thread");
            (seen, account, c0, c1, window)
        });
        let (seen, account, c0, c1, window) = account;
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / window;
        let gateway = format!(
            "{:>9.0} {:>9.0} {:>9.0} {:>5.0}%",
            per_s(c0.accepted, c1.accepted),
            per_s(c0.refused, c1.refused),
            per_s(c0.refused_rate, c1.refused_rate),
            100.0 * (c1.cpu_s - c0.cpu_s) / window
        );
        let l = &seen.latencies_ms;
        let other: Vec<String> = seen
            .statuses
            .iter()
            .filter(|(s, _)| **s != 202)
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        println!(
            "{name:<11} {:>6} {:>6} {:>8.2} {:>8.2} {:>8.2} {gateway} {:>11}  {account}{}",
            seen.sent,
            seen.errors,
            pct(l, 0.5),
            pct(l, 0.99),
            pct(l, 1.0),
            format!("{load0}->{}", loadavg()),
            if other.is_empty() {
                String::new()
            } else {
                format!("; non-202 answers {}", other.join(", "))
            }
        );
        drop(g);
        cleanup::forget();
    }
}

/// What an aborted run would leave behind: the running `vvgated` and its directory (PKI,
/// state, log). `panic = "abort"` skips `Gateway`'s drop, and SIGINT/SIGTERM end the process
/// without it, so a panic hook and a signal thread stop the gateway and remove the directory
/// first. The flood's sockets are closed by the kernel when the process ends.
mod cleanup {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;

    static CURRENT: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

    /// Install the panic hook and the signal thread. The signal handlers only wake that
    /// thread (no signal mask is changed, so the gateway, started later, inherits none).
    pub(crate) fn install() {
        use async_signal::{Signal, Signals};
        use smol::stream::StreamExt;
        if let Ok(mut signals) = Signals::new([Signal::Int, Signal::Term, Signal::Hup]) {
            std::thread::spawn(move || {
                if let Some(Ok(sig)) = smol::block_on(signals.next()) {
                    eprintln!("flood-bench: {sig:?}, stopping the gateway");
                    run();
                    // The shell's convention for a death by signal.
                    #[allow(clippy::exit)]
                    std::process::exit(128 + sig as i32);
                }
            });
        }
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            run();
        }));
    }

    /// The gateway to stop if the run is aborted now.
    pub(crate) fn watch(pid: u32, dir: &Path) {
        if let Ok(mut c) = CURRENT.lock() {
            *c = Some((pid, dir.to_owned()));
        }
    }

    /// The gateway was stopped and removed normally.
    pub(crate) fn forget() {
        if let Ok(mut c) = CURRENT.lock() {
            *c = None;
        }
    }

    /// SIGTERM the watched gateway, wait up to 10 s (then SIGKILL), remove its directory.
    fn run() {
        let Some((pid, dir)) = CURRENT.lock().ok().and_then(|mut c| c.take()) else {
            return;
        };
        let Ok(raw) = i32::try_from(pid) else {
            return;
        };
        let pid = Pid::from_raw(raw);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    break;
                }
                _ => break,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "flood-bench: gateway {pid} stopped, {} removed",
            dir.display()
        );
    }
}
