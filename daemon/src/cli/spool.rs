//! `vvctl spool tail`: the newest envelopes in the outbox.

use super::{CliError, StateSource};

pub fn tail(src: &StateSource, limit: usize) -> Result<(), CliError> {
    if let Some(lines) = src.ask(&format!("{{\"cmd\":\"spool_tail\",\"limit\":{limit}}}"))? {
        for l in lines {
            println!("{l}");
        }
        return Ok(());
    }
    let store = src.open()?;
    let mut out = Vec::new();
    crate::control::tail_lines(&store, limit, &mut out)?;
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}
