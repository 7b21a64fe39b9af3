//! Logging to stderr through `tracing` (journald captures it under systemd). The level comes
//! from `VVGATE_LOG` (default `info`). No secrets and no payloads are ever logged.

/// Install the subscriber.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VVGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Raise the soft limit on open files to the hard limit (connections are file descriptors).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
