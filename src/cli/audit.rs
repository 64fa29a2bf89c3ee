//! `berth audit`: reads the audit log (who pulled what), filtered, as a table or JSON lines.

use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A license id or its fingerprint (records name licenses by fingerprint).
    #[arg(long)]
    license: Option<String>,
    /// host/repository, optionally with :tag or @digest.
    #[arg(long)]
    image: Option<String>,
}

/// `json` (the global `--json`): print the raw JSON lines.
pub fn run(config: &Path, json: bool, args: Args) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(path) = &config.auth.audit_log else {
        eprintln!("berth: auth.audit_log is not set in the config");
        return ExitCode::from(2);
    };
    let filter = crate::audit::Filter {
        license: args.license,
        image: args.image,
    };
    match crate::audit::read(path, &filter) {
        Ok(records) => {
            for r in records {
                if json {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                } else {
                    println!(
                        "{}  {:<24} {:<32} {}:{}  {}",
                        r.time, r.customer, r.fingerprint, r.image, r.reference, r.digest
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: cannot read {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
