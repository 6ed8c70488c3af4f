//! `tracing` set-up for the binary: human-readable or JSON lines on stderr, filtered by
//! `RUST_LOG` (default `info`). Called once from `main`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (JSON lines when `json`).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_thread_names(true);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
