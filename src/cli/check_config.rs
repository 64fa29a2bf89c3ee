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
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
