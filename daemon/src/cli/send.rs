//! `vvctl send`: sign and send events as the producer does, or print the equivalent `curl`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use super::{io_err, resolve_producer, CliError, ProducerArgs, Where};
use crate::client::{self, Connection, SAMPLE_EVENT};

/// What to send.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SendArgs {
    /// Events: a JSON object, an array of objects, or JSON lines; `-` for stdin (default: a
    /// sample event).
    pub file: Option<PathBuf>,
    /// Send the bodies as they are (their own timestamp and nonce) instead of fresh ones.
    #[arg(long)]
    pub keep: bool,
    /// Print a curl command per event instead of sending.
    #[arg(long)]
    pub curl: bool,
    /// Send everything this many times, with fresh nonces.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

fn read_events(file: &Option<PathBuf>) -> Result<Vec<serde_json::Value>, CliError> {
    let text = match file {
        None => SAMPLE_EVENT.to_owned(),
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(io_err("cannot read stdin"))?;
            s
        }
        Some(p) => {
            std::fs::read_to_string(p).map_err(io_err(format!("cannot read {}", p.display())))?
        }
    };
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        return match v {
            serde_json::Value::Array(items) => Ok(items),
            obj @ serde_json::Value::Object(_) => Ok(vec![obj]),
            _ => Err(CliError::Usage("events must be JSON objects".into())),
        };
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| CliError::Usage(format!("line {}: {e}", i + 1)))
        })
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn run(w: &Where, pa: &ProducerArgs, args: &SendArgs) -> Result<(), CliError> {
    let t = resolve_producer(w, pa)?;
    let events = read_events(&args.file)?;
    let mut rng = crate::ids::Random::new();
    let mut conn: Option<Connection> = None;
    let mut failures = 0usize;
    for round in 0..args.repeat.max(1) {
        for (i, event) in events.iter().enumerate() {
            let (body, ts, nonce) = if args.keep {
                let ts = event.get("timestamp").and_then(serde_json::Value::as_u64);
                let nonce = event.get("nonce").and_then(serde_json::Value::as_str);
                let (Some(ts), Some(nonce)) = (ts, nonce) else {
                    return Err(CliError::Usage(format!(
                        "event {}: --keep needs timestamp and nonce",
                        i + 1
                    )));
                };
                (client::canonical(event)?, ts, nonce.to_owned())
            } else {
                let nonce = crate::ids::uuid_text(&rng.uuid_v4()).to_string();
                let ts = crate::time::Clock::system().now().secs();
                (client::prepare_event(event, ts, &nonce)?, ts, nonce)
            };
            let idem = event
                .get("execution_hash")
                .and_then(serde_json::Value::as_str);
            if args.curl {
                let h = t.producer.headers(ts, &nonce, &body, idem);
                let file = std::env::temp_dir().join(format!("vvctl-body-{nonce}.json"));
                std::fs::write(&file, &body)
                    .map_err(io_err(format!("cannot write {}", file.display())))?;
                let mut cmd = format!(
                    "curl -sS --cacert {} --cert {} --key {} --resolve {}:{}:{} \\\n  -H 'Content-Type: application/json' \\\n  -H {} -H {} \\\n  -H {} -H {} \\\n  -H {} \\\n",
                    shell_quote(&t.ca.display().to_string()),
                    shell_quote(&t.cert.display().to_string()),
                    shell_quote(&t.key.display().to_string()),
                    t.server_name,
                    t.addr.port(),
                    t.addr.ip(),
                    shell_quote(&format!("X-Service-Identity: {}", h.identity)),
                    shell_quote(&format!("X-Client-Cert-Sha256: {}", h.cert_sha256)),
                    shell_quote(&format!("X-Telemetry-Timestamp: {}", h.timestamp)),
                    shell_quote(&format!("X-Telemetry-Nonce: {}", h.nonce)),
                    shell_quote(&format!("X-Telemetry-Signature: {}", h.signature)),
                );
                if let Some(k) = &h.idempotency_key {
                    cmd.push_str(&format!(
                        "  -H {} \\\n",
                        shell_quote(&format!("Idempotency-Key: {k}"))
                    ));
                }
                cmd.push_str(&format!(
                    "  --data-binary @{} https://{}:{}/internal/v1/telemetry; echo",
                    shell_quote(&file.display().to_string()),
                    t.server_name,
                    t.addr.port()
                ));
                println!("{cmd}");
                continue;
            }
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(Connection::connect_tls(
                    t.addr,
                    &t.server_name,
                    t.producer.tls.clone(),
                    Duration::from_secs(15),
                )?),
            };
            let req = t.producer.request(&t.host, ts, &nonce, &body, idem);
            let resp = c.send(&req)?;
            if !(200..300).contains(&resp.status) {
                failures += 1;
            }
            println!("{} {}", resp.status, resp.body_text());
            if resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            {
                conn = None;
            }
            let _ = round;
        }
    }
    if failures > 0 {
        return Err(CliError::Failed(format!(
            "{failures} event(s) were not accepted"
        )));
    }
    Ok(())
}
