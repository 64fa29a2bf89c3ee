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
    // The config file's licenses first (no store needed), then the state store's.
    let license = match config.tenants.license_by_secret(&args.license) {
        Some(l) => l,
        None => {
            match stored_license(&config, &args.license) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    eprintln!("berth: --license: no license has this secret (give the secret, not the id)");
                    return ExitCode::from(2);
                }
                Err(code) => return code,
            }
        }
    };
    if !license.is_active(std::time::SystemTime::now()) {
        eprintln!("berth: warning: this license is expired or revoked");
    }
    print!(
        "{}",
        crate::rewrite::pull_secret_yaml(
            &args.name,
            args.namespace.as_deref(),
            &config.server.hostname,
            // A stored license logs in as its public id; a config file's as its id, which
            // is the secret (what its customers were always told to type).
            match license.origin {
                crate::config::Origin::Store => &license.id,
                crate::config::Origin::Config => &args.license,
            },
            &args.license
        )
    );
    ExitCode::SUCCESS
}

/// The state store's license whose secret is `secret`.
fn stored_license(
    config: &crate::config::Config,
    secret: &str,
) -> Result<Option<std::sync::Arc<crate::config::License>>, ExitCode> {
    let rt = super::runtime()?;
    rt.block_on(async {
        let store = crate::state::open(&config.state).await?;
        let d = crate::state::Directory::load(&*store).await?;
        Ok(d.license_by_secret(secret))
    })
    .map_err(|e: crate::state::StateError| {
        eprintln!("berth: {e} (check state.sqlite or state.postgres)");
        ExitCode::FAILURE
    })
}
