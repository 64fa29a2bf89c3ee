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
    /// The config file (YAML: listeners, cache, upstreams, apps, licenses).
    // Global, so that `berth --config f serve` and `berth serve --config f` both work.
    #[arg(long, short, global = true, default_value = cli::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Machine-readable output: the admin API's JSON (license, apikey, admin-token, usage,
    /// audit).
    #[arg(long, global = true)]
    json: bool,
    /// Talk to a running berth's admin API (http(s)://host:port of server.admin_listen)
    /// instead of opening the state store (license, apikey, admin-token, usage).
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// The admin token for --server (default: $BERTH_ADMIN_TOKEN, which keeps it out of
    /// the process list).
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
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
    /// Write the container runtime files (containerd, CRI-O, k3s, Docker) that make
    /// nodes pull an app's images through berth as a registry mirror.
    MirrorConfig(cli::mirror_config::Args),
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
    /// Customer licenses: create (prints the secret once), list, show, extend, revoke, rotate.
    License {
        #[command(subcommand)]
        command: cli::license::Command,
    },
    /// API keys for CI and vendors' tooling: create (prints the key once), list, show, revoke.
    Apikey {
        #[command(subcommand)]
        command: cli::apikey::Command,
    },
    /// Admin API tokens: create (prints the token once), list, revoke, and `hash` for
    /// auth.admin_tokens in the config.
    AdminToken {
        #[command(subcommand)]
        command: cli::admin_token::Command,
    },
    /// Who pulled which images and versions, how often and how many bytes.
    Usage(cli::usage::Args),
    /// Garbage-collect the hosted registry: remove what no tag reaches (per policy) and
    /// free blobs nothing links; `--dry-run` reports only.
    Gc(cli::gc::Args),
}

impl Command {
    /// The commands that work on the control plane (and so take --server and --token).
    fn is_control_plane(&self) -> bool {
        matches!(
            self,
            Command::License { .. }
                | Command::Apikey { .. }
                | Command::AdminToken { .. }
                | Command::Usage(_)
                | Command::Gc(_)
        )
    }
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let control_plane = args.command.is_control_plane();
    if !control_plane && (args.server.is_some() || args.token.is_some()) {
        eprintln!(
            "berth: --server and --token apply to license, apikey, admin-token, usage and gc"
        );
        return ExitCode::from(2);
    }
    if args.json && !control_plane && !matches!(args.command, Command::Audit(_)) {
        eprintln!("berth: --json applies to license, apikey, admin-token, usage, gc and audit");
        return ExitCode::from(2);
    }
    let global = cli::Global {
        config: args.config,
        json: args.json,
        server: args.server,
        token: args
            .token
            .or_else(|| std::env::var("BERTH_ADMIN_TOKEN").ok())
            .filter(|t| !t.is_empty())
            .map(berth::config::Secret::new),
    };
    let config = global.config.as_path();
    match args.command {
        Command::Serve => cli::serve::run(config),
        Command::CheckConfig => cli::check_config::run(config),
        Command::Rewrite(a) => cli::rewrite::run(config, a),
        Command::PullSecret(a) => cli::pull_secret::run(config, a),
        Command::MirrorConfig(a) => cli::mirror_config::run(config, a),
        Command::Cache { action } => cli::cache::run(config, action),
        Command::Audit(a) => cli::audit::run(config, global.json, a),
        Command::Airgap(c) => cli::airgap::run(config, c),
        Command::Upstream { command } => cli::upstream::run(config, command),
        Command::License { command } => cli::license::run(&global, command),
        Command::Apikey { command } => cli::apikey::run(&global, command),
        Command::AdminToken { command } => cli::admin_token::run(&global, command),
        Command::Usage(a) => cli::usage::run(&global, a),
        Command::Gc(a) => cli::gc::run(&global, a),
    }
}
