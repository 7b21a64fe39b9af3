//! `vvgate-console`: the operator shell on the serial console. It reads commands (`status`,
//! `kill`, `rearm`, `reload`, `help`, `exit`) line by line and speaks only to the gateway's
//! control socket; it starts no other program, so there is no shell behind it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vvgate::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser, Debug)]
#[command(version, about = "Operator console of a vvgate gateway (serial line)")]
struct Args {
    /// The control socket (default: from the configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The gateway's configuration, to find the control socket.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

/// Hide what is typed (officer secrets) when the input is a terminal.
fn echo(off: bool) {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    if let Ok(mut t) = tcgetattr(&stdin) {
        t.local_flags.set(LocalFlags::ECHO, !off);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket = match args.socket {
        Some(s) => s,
        None => match Config::load(&args.config) {
            Ok(c) => c.control.socket_path,
            Err(e) => {
                eprintln!("vvgate-console: {e}");
                return ExitCode::from(vvgate::exit::CONFIG);
            }
        },
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::stdout();
    match vvgate::cli::operate::console(&mut input, &mut output, &socket, &echo) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vvgate-console: {e}");
            ExitCode::from(vvgate::exit::IOERR)
        }
    }
}
