//! The `berth` command line: the clap types of the top level and the dispatch to
//! `berth::cli`, where each subcommand (its flags and its code) has its own module.

use std::path::PathBuf;
use std::process::ExitCode;

use berth::cli;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "License-gated pull-through registry proxy"
)]
struct Cli {
    // Global, so that `berth --config f serve` and `berth serve --config f` both work; no doc
    // comment, so each subcommand's help shows it as before the flag was global.
    #[arg(long, short, global = true, default_value = cli::DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry proxy.
    Serve,
    /// Validate a config file and exit (non-zero naming the key at fault).
    CheckConfig,
    /// Rewrite Kubernetes YAML (or one image) so images pull through berth.
    Rewrite(cli::rewrite::Args),
    /// Print the Kubernetes imagePullSecret for a license.
    PullSecret(cli::pull_secret::Args),
    /// Inspect or prune the cache.
    Cache {
        #[command(subcommand)]
        action: cli::cache::Action,
    },
    /// Read the audit log: who pulled what.
    Audit(cli::audit::Args),
    /// Airgap bundles: export images to one OCI-layout tar, import it into the cache, push
    /// it into a registry, list it.
    #[command(subcommand)]
    Airgap(cli::airgap::Command),
    /// Upstream diagnostics.
    Upstream {
        #[command(subcommand)]
        command: cli::upstream::Command,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let config = args.config.as_path();
    match args.command {
        Command::Serve => cli::serve::run(config),
        Command::CheckConfig => cli::check_config::run(config),
        Command::Rewrite(a) => cli::rewrite::run(config, a),
        Command::PullSecret(a) => cli::pull_secret::run(config, a),
        Command::Cache { action } => cli::cache::run(config, action),
        Command::Audit(a) => cli::audit::run(config, a),
        Command::Airgap(c) => cli::airgap::run(config, c),
        Command::Upstream { command } => cli::upstream::run(config, command),
    }
}
