//! Operating a running gateway: the kill switch (`vvctl kill`, `vvctl rearm`), reload
//! (`vvctl reload`), officer secrets for re-arming (`vvctl officer new`), and the serial
//! console shell (`vvgate-console`), which offers the same commands over stdin/stdout.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{control, io_err, CliError, StateSource};
use crate::killswitch::{self, OfficerVerifier};

/// The request line of a kill.
pub fn kill_request(reason: &str, via_console: bool) -> String {
    let mut v = serde_json::json!({ "cmd": "kill", "reason": reason });
    if via_console {
        v["via"] = "console".into();
    }
    v.to_string()
}

/// The request line of a re-arm (it carries both secrets: wiped when dropped).
pub fn rearm_request(
    officers: &[(String, Zeroizing<String>)],
    via_console: bool,
) -> Zeroizing<String> {
    let list: Vec<_> = officers
        .iter()
        .map(|(name, secret)| serde_json::json!({ "name": name, "secret": secret.as_str() }))
        .collect();
    let mut v = serde_json::json!({ "cmd": "rearm", "officers": list });
    if via_console {
        v["via"] = "console".into();
    }
    let text = Zeroizing::new(v.to_string());
    zeroize_json(v);
    text
}

/// Wipe the secret strings inside a JSON value before it is dropped.
fn zeroize_json(v: serde_json::Value) {
    use zeroize::Zeroize;
    match v {
        serde_json::Value::String(mut s) => s.zeroize(),
        serde_json::Value::Array(a) => a.into_iter().for_each(zeroize_json),
        serde_json::Value::Object(o) => o.into_iter().for_each(|(_, v)| zeroize_json(v)),
        _ => {}
    }
}

fn ask(src: &StateSource, request: &str) -> Result<Vec<String>, CliError> {
    src.ask(request)?
        .ok_or_else(|| CliError::Failed("the gateway is not running (no control socket)".into()))
}

fn print(lines: &[String]) {
    for l in lines {
        println!("{l}");
    }
}

/// `vvctl kill`.
pub fn kill(src: &StateSource, reason: &str) -> Result<(), CliError> {
    print(&ask(src, &kill_request(reason, false))?);
    Ok(())
}

/// `vvctl reload`.
pub fn reload(src: &StateSource) -> Result<(), CliError> {
    print(&ask(src, "{\"cmd\":\"reload\"}")?);
    Ok(())
}

/// Read an officer's secret file (first line, trimmed).
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(io_err(format!("officer secret {}", path.display())))?,
    );
    let line = text.lines().next().unwrap_or("").trim();
    if !line.starts_with(killswitch::SECRET_PREFIX) {
        return Err(CliError::Usage(format!(
            "{}: not an officer secret (made by vvctl officer new)",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line.to_owned()))
}

/// `vvctl rearm --officer NAME=FILE --officer NAME=FILE`.
pub fn rearm(src: &StateSource, officers: &[String]) -> Result<(), CliError> {
    if officers.len() != 2 {
        return Err(CliError::Usage(
            "re-arming needs exactly two officers: --officer NAME=SECRET_FILE twice".into(),
        ));
    }
    let mut claims = Vec::new();
    for o in officers {
        let (name, file) = o
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--officer {o}: expected NAME=SECRET_FILE")))?;
        claims.push((name.trim().to_owned(), read_secret(Path::new(file))?));
    }
    print(&ask(src, &rearm_request(&claims, false))?);
    Ok(())
}

/// `vvctl officer new`: a fresh secret written to `out` (0600, never overwritten) and the
/// verifier line for `[control] rearm_officers` printed.
pub fn officer_new(name: &str, out: &PathBuf, iterations: u32) -> Result<(), CliError> {
    if name.is_empty() || name.contains(',') || name.chars().any(char::is_control) {
        return Err(CliError::Usage(
            "officer names are non-empty, without ',' or control characters".into(),
        ));
    }
    let secret = killswitch::new_secret().map_err(CliError::Failed)?;
    let verifier =
        OfficerVerifier::create(secret.as_bytes(), iterations).map_err(CliError::Failed)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(io_err(format!("officer secret {}", out.display())))?;
    f.write_all(secret.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("officer secret {}", out.display())))?;
    println!("# officer {name}: secret written to {}", out.display());
    println!("# add to [control] rearm_officers (two officers at least), then vvctl reload:");
    println!("{name:?} = \"{verifier}\"");
    Ok(())
}

/// What the console says to `help`.
pub const CONSOLE_HELP: &str = "commands:
  status   gateway status (kill switch, readiness, connections, spool)
  kill     engage the kill switch now (asks for a reason; stored before it is confirmed)
  rearm    re-arm the kill switch (two officers, each enters their name and secret)
  reload   re-read and apply the configuration
  help     this text
  exit     leave the console (the gateway keeps running)
";

/// The serial console operator shell: one command per line on `input`, answers on `output`.
/// It only speaks to the control socket; there is no way to a shell from here. Returns when
/// `input` ends or on `exit`.
pub fn console(
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    socket: &Path,
    echo_off: &dyn Fn(bool),
) -> std::io::Result<()> {
    writeln!(output, "vvgate console ({}); type help", socket.display())?;
    loop {
        write!(output, "vvgate> ")?;
        output.flush()?;
        let Some(line) = read_line(input)? else {
            return Ok(());
        };
        let cmd = line.trim();
        let request = match cmd {
            "" => continue,
            "help" | "?" => {
                output.write_all(CONSOLE_HELP.as_bytes())?;
                continue;
            }
            "exit" | "quit" | "logout" => return Ok(()),
            "status" => Zeroizing::new("{\"cmd\":\"status\"}".to_string()),
            "reload" => Zeroizing::new("{\"cmd\":\"reload\"}".to_string()),
            "kill" => {
                write!(output, "reason: ")?;
                output.flush()?;
                let reason = read_line(input)?.unwrap_or_default();
                Zeroizing::new(kill_request(reason.trim(), true))
            }
            "rearm" => {
                let mut claims = Vec::new();
                for n in 1..=2 {
                    write!(output, "officer {n} name: ")?;
                    output.flush()?;
                    let name = read_line(input)?.unwrap_or_default();
                    write!(output, "officer {n} secret: ")?;
                    output.flush()?;
                    echo_off(true);
                    let secret = read_line(input);
                    echo_off(false);
                    writeln!(output)?;
                    let secret = Zeroizing::new(secret?.unwrap_or_default().trim().to_owned());
                    claims.push((name.trim().to_owned(), secret));
                }
                rearm_request(&claims, true)
            }
            other => {
                writeln!(output, "unknown command {other:?}; type help")?;
                continue;
            }
        };
        match control(socket, &request) {
            Ok(Some(lines)) => {
                for l in lines {
                    writeln!(output, "{l}")?;
                }
            }
            Ok(None) => writeln!(output, "error: the gateway is not running")?,
            Err(e) => writeln!(output, "error: {e}")?,
        }
    }
}

/// One line (without its end), `None` at end of input. Long lines are cut at 4 KiB.
fn read_line(input: &mut dyn BufRead) -> std::io::Result<Option<Zeroizing<String>>> {
    let mut buf = Zeroizing::new(Vec::new());
    let mut limited = <&mut dyn BufRead as std::io::Read>::take(&mut *input, 4096);
    let n = limited.read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    while buf.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        buf.pop();
    }
    Ok(Some(Zeroizing::new(
        String::from_utf8_lossy(&buf).into_owned(),
    )))
}
