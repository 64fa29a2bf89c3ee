//! `berth pull-secret`: prints the Kubernetes imagePullSecret for one license.

use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    license: String,
    #[arg(long)]
    namespace: Option<String>,
    #[arg(long, default_value = "berth-pull-secret")]
    name: String,
}

pub fn run(config: &Path, args: Args) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(l) = config.tenants.license_by_secret(&args.license) else {
        eprintln!("berth: --license: no such license in the config");
        return ExitCode::from(2);
    };
    if !l.is_active(std::time::SystemTime::now()) {
        eprintln!("berth: warning: this license is expired or revoked");
    }
    print!(
        "{}",
        crate::rewrite::pull_secret_yaml(
            &args.name,
            args.namespace.as_deref(),
            &config.server.hostname,
            &args.license,
            &args.license
        )
    );
    ExitCode::SUCCESS
}
