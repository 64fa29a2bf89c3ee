//! `berth check-config`: validates the config file and exits, non-zero naming the key at fault.

use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path) -> ExitCode {
    match super::load_config(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} upstreams, {} apps, {} licenses)",
                path.display(),
                c.tenants.upstreams().len(),
                c.tenants.apps().len(),
                c.tenants.license_count()
            );
            for w in mirror_warnings(&c) {
                eprintln!("berth: warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Docker's `registry-mirrors` asks for `/v2/<namespace>/<repository>` without `ns`, and
/// berth reads a first component that is an app's slug as that app's hosted content (the
/// precedence in `api::route::parse_request`). Where an app mirrors Docker Hub and a slug is
/// also a Hub namespace it serves, those pulls reach the hosted registry instead.
fn mirror_warnings(c: &crate::config::Config) -> Vec<String> {
    let apps = c.tenants.apps();
    let mut out = Vec::new();
    for app in &apps {
        for u in app
            .upstreams
            .iter()
            .filter(|u| u.registry() == crate::oci::name::DOCKER_HUB)
        {
            for other in &apps {
                if u.match_score(&format!("{}/x", other.slug)).is_some() {
                    out.push(format!(
                        "app {} mirrors Docker Hub (upstream {}) and {} is an app: Docker's \
                         registry-mirrors pulls of docker.io/{}/... are answered from app {}'s \
                         hosted repositories (containerd's ?ns= requests and /v2/proxy/ paths \
                         are not affected)",
                        app.slug, u.name, other.slug, other.slug, other.slug
                    ));
                }
            }
        }
    }
    out
}
