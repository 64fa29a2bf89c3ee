//! `berth upstream test`: checks each upstream step by step (DNS, TCP, TLS, authentication,
//! optionally a manifest HEAD) and prints one ✓/✗ line per step.

use std::path::Path;
use std::process::ExitCode;

use crate::upstream::probe;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check each upstream (or NAME): DNS, TCP, TLS, authentication and, with --image, a
    /// manifest HEAD. Prints one ✓/✗ line per step; exits 1 if any step fails.
    Test {
        /// Only this upstream.
        name: Option<String>,
        /// Also check this image: REPO:TAG or REPO@DIGEST, as named on the upstream.
        #[arg(long)]
        image: Option<String>,
    },
}

pub fn run(config: &Path, command: Command) -> ExitCode {
    match command {
        Command::Test { name, image } => test(config, name.as_deref(), image.as_deref()),
    }
}

fn test(config: &Path, name: Option<&str>, image: Option<&str>) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let image = match image.map(probe::parse_image).transpose() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("berth: --image: {e}");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<_> = config
        .tenants
        .upstreams()
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
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let client = crate::upstream::Client::new();
    let mut failed = false;
    for up in selected {
        println!("{} ({}, {})", up.name, up.kind.as_str(), up.base_url);
        let image = image.as_ref().map(|(r, t)| (r.as_str(), t.as_str()));
        let steps = runtime.block_on(probe::probe(&client, up, image));
        for s in &steps {
            println!("  {} {}: {}", s.mark(), s.what, s.detail);
        }
        failed |= steps.iter().any(|s| s.outcome == probe::Outcome::Failed);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
