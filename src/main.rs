//! The `berth` command line: parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "License-gated pull-through registry proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry proxy.
    Serve {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and exit (non-zero naming the key at fault).
    CheckConfig {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
    },
    /// Upstream diagnostics.
    Upstream {
        #[command(subcommand)]
        command: UpstreamCommand,
    },
}

#[derive(Subcommand)]
enum UpstreamCommand {
    /// Check each upstream (or NAME): DNS, TCP, TLS, authentication and, with --image, a
    /// manifest HEAD. Prints one ✓/✗ line per step; exits 1 if any step fails.
    Test {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
        /// Only this upstream.
        name: Option<String>,
        /// Also check this image: REPO:TAG or REPO@DIGEST, as named on the upstream.
        #[arg(long)]
        image: Option<String>,
    },
}

fn upstream_test(config: &std::path::Path, name: Option<&str>, image: Option<&str>) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let image = match image.map(berth::upstream::probe::parse_image).transpose() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("berth: --image: {e}");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<_> = config
        .upstreams
        .iter()
        .filter(|u| name.is_none_or(|n| n == u.name))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "berth: no upstream named {:?} in the configuration",
            name.unwrap_or("")
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = berth::upstream::Client::new();
    let mut failed = false;
    for up in selected {
        println!("{} ({}, {})", up.name, up.kind.as_str(), up.base_url);
        let image = image.as_ref().map(|(r, t)| (r.as_str(), t.as_str()));
        let steps = runtime.block_on(berth::upstream::probe::probe(&client, up, image));
        for s in &steps {
            println!("  {} {}: {}", s.mark(), s.what, s.detail);
        }
        failed |= steps
            .iter()
            .any(|s| s.outcome == berth::upstream::probe::Outcome::Failed);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn init_logging() {
    let level = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

fn load(path: &std::path::Path) -> Result<berth::config::Config, ExitCode> {
    berth::config::Config::load(path).map_err(|e| {
        eprintln!("berth: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} upstreams, {} apps, {} licenses)",
                    config.display(),
                    c.upstreams.len(),
                    c.apps.len(),
                    c.licenses.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Upstream {
            command:
                UpstreamCommand::Test {
                    config,
                    name,
                    image,
                },
        } => upstream_test(&config, name.as_deref(), image.as_deref()),
        Command::Serve { config } => {
            init_logging();
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("berth: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(berth::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("berth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
