//! `vvctl audit verify` and `vvctl audit export`: the chain verifier (CONTRACT.md §6.5) over a
//! running gateway (control socket), a stopped one (its database) or an exported file.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use super::{io_err, CliError, StateSource};
use crate::audit::{verify_lines, VerifyOptions};

/// Every entry line, oldest first.
pub fn lines(src: &StateSource) -> Result<Vec<Vec<u8>>, CliError> {
    if let Some(lines) = src.ask("{\"cmd\":\"audit_export\",\"from\":1}")? {
        return Ok(lines.into_iter().map(String::into_bytes).collect());
    }
    let store = src.open()?;
    let reader = store.read()?;
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let rows = reader.audit_range(next, 10_000)?;
        let Some((last, _)) = rows.last() else { break };
        next = last + 1;
        out.extend(rows.into_iter().map(|(_, l)| l));
    }
    Ok(out)
}

pub fn export(src: &StateSource) -> Result<(), CliError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    for l in lines(src)? {
        stdout.write_all(&l).map_err(io_err("stdout"))?;
        stdout.write_all(b"\n").map_err(io_err("stdout"))?;
    }
    Ok(())
}

/// Verify; prints the contract's JSON verdict and fails when the log is broken.
pub fn verify(
    src: Option<&StateSource>,
    file: Option<&PathBuf>,
    opts: VerifyOptions,
) -> Result<(), CliError> {
    let verdict = match file {
        Some(p) => {
            let reader: Box<dyn BufRead> = if p.as_os_str() == "-" {
                Box::new(BufReader::new(std::io::stdin()))
            } else {
                Box::new(BufReader::new(
                    std::fs::File::open(p)
                        .map_err(io_err(format!("cannot open {}", p.display())))?,
                ))
            };
            verify_lines(reader.split(b'\n'), opts).map_err(io_err("cannot read the log"))?
        }
        None => {
            let src = src.ok_or_else(|| CliError::Usage("nothing to verify".into()))?;
            let lines = lines(src)?;
            verify_lines(
                lines.into_iter().map(Ok::<_, std::convert::Infallible>),
                opts,
            )
            .unwrap_or_else(|e| match e {})
        }
    };
    println!("{}", verdict.to_json());
    if verdict.is_ok() {
        Ok(())
    } else {
        Err(CliError::Failed("audit log verification failed".into()))
    }
}
