//! The `berth` subcommands, one module each, and what they share: the one config loader,
//! the one runtime builder and the log setup. `main.rs` only parses and dispatches here.
//!
//! Each subcommand's flags are a clap `Args` struct (or `Subcommand` enum) next to the code
//! that reads them, so a flag and its meaning live in one file; the global `--config` is
//! parsed once in `main.rs` and handed to every `run` as a path, and the control plane's
//! commands (license, apikey, admin-token, usage) get all the global flags as [`Global`].

pub mod admin_token;
pub mod airgap;
pub mod apikey;
pub mod audit;
pub mod cache;
pub mod check_config;
pub mod gc;
pub mod license;
pub mod mirror_config;
mod output;
mod plane;
pub mod pull_secret;
mod remote;
pub mod rewrite;
pub mod serve;
pub mod upstream;
pub mod usage;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, Secret};

/// The global flags, parsed once in `main.rs`.
#[derive(Debug)]
pub struct Global {
    pub config: PathBuf,
    /// `--json`: print the admin API's JSON instead of tables and sentences.
    pub json: bool,
    /// `--server URL`: a running berth's admin API instead of the state store.
    pub server: Option<String>,
    /// `--token` or `$BERTH_ADMIN_TOKEN`, for `--server`.
    pub token: Option<Secret>,
}

/// The config file every subcommand reads unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "berth.yaml";

/// Loads and validates the config file. On failure prints the error (which names the key at
/// fault) and gives the exit code every subcommand uses for a bad configuration: 2.
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("berth: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

/// The runtime every async subcommand runs on.
pub fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("berth: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Logs to standard error at `BERTH_LOG` (default `info`). A background thread writes the
/// lines: flush the returned sink before exiting, or the last lines (a failed start) are lost.
pub fn init_logging() -> crate::logging::Sink {
    let level = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let sink = crate::logging::Sink::stderr();
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .with_writer(sink.clone())
        .init();
    sink
}
