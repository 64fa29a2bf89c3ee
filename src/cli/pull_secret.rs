//! `berth pull-secret`: prints the Kubernetes imagePullSecret for one license.

use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    license: String,
    #[arg(long)]
    namespace: Option<String>,
    /// The Secret's name (default: the pull_secret the config's `rewrite:` rules give the
    /// license's app, which is what the webhook and `berth rewrite` reference; else
    /// berth-pull-secret).
    #[arg(long)]
    name: Option<String>,
}

pub fn run(config: &Path, args: Args) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let license = match find_license(&config, &args.license) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if !license.is_active(std::time::SystemTime::now()) {
        eprintln!("berth: warning: this license is expired or revoked");
    }
    let name = args.name.clone().unwrap_or_else(|| {
        crate::rewrite::configured_pull_secret(&config, &license.app)
            .unwrap_or_else(|| "berth-pull-secret".to_string())
    });
    print!(
        "{}",
        crate::rewrite::pull_secret_yaml(
            &name,
            args.namespace.as_deref(),
            &config.server.hostname,
            login_name(&license, &args.license),
            &args.license
        )
    );
    ExitCode::SUCCESS
}

/// The license whose secret is `secret` (`--license`): the config file's first (no store
/// needed), then the state store's; none is a usage error (exit 2).
pub(super) fn find_license(
    config: &crate::config::Config,
    secret: &str,
) -> Result<std::sync::Arc<crate::config::License>, ExitCode> {
    if let Some(l) = config.tenants.license_by_secret(secret) {
        return Ok(l);
    }
    match stored_license(config, secret)? {
        Some(l) => Ok(l),
        None => {
            eprintln!("berth: --license: no license has this secret (give the secret, not the id)");
            Err(ExitCode::from(2))
        }
    }
}

/// The name a license logs in with: a stored license its public id; a config file's its
/// id, which is the secret (what its customers were always told to type).
pub(super) fn login_name<'a>(license: &'a crate::config::License, secret: &'a str) -> &'a str {
    match license.origin {
        crate::config::Origin::Store => &license.id,
        crate::config::Origin::Config => secret,
    }
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
