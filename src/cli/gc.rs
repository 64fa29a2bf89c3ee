//! `berth gc`: one garbage collection of the hosted registry, beside a running server (the
//! cache directory is shared, the index is the state store's), or `--dry-run` to see what
//! it would free. `hosted.gc` in the config sets the grace period and what happens to
//! untagged manifests; the flags here override them.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::hosted::gc::{Options, Untagged};
use crate::hosted::{human, Hosted};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this app's repositories (a collection of all apps also frees stored blobs that
    /// nothing links at all).
    #[arg(long)]
    app: Option<String>,
    /// Report what would be removed and freed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Nothing touched more recently is collected (default hosted.gc.grace, 1h).
    #[arg(long, value_name = "DURATION")]
    grace: Option<String>,
    /// Also delete manifests no tag reaches (default hosted.gc.untagged, keep).
    #[arg(long)]
    delete_untagged: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &Path, args: Args) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(app) = &args.app {
        if config.app(app).is_none() {
            eprintln!("berth gc: --app: unknown app {app:?}");
            return ExitCode::from(2);
        }
    }
    let mut opts = Options::from_config(&config.hosted.gc);
    opts.app = args.app.clone();
    opts.dry_run = args.dry_run;
    if args.delete_untagged {
        opts.untagged = Untagged::Delete;
    }
    if let Some(g) = &args.grace {
        match crate::settings::parse_duration("--grace", g) {
            Ok(d) => opts.grace = d,
            Err(e) => {
                eprintln!("berth gc: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let store = crate::state::open(&config.state)
            .await
            .map_err(|e| format!("{e} (check state.sqlite or state.postgres)"))?;
        let legacy = crate::cache::legacy_of(&*config.tenants);
        let cache =
            crate::cache::Cache::open(&config.cache, legacy, crate::cache::CacheMetrics::default())
                .map_err(|e| format!("cache.dir: {e}"))?;
        let hosted = Hosted::new(Arc::new(cache), store, config.hosted.upload_timeout);
        hosted.collect(&opts).await.map_err(|e| e.to_string())
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth gc: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("berth gc: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let verb = if report.dry_run {
        "would free"
    } else {
        "freed"
    };
    for m in &report.manifests {
        println!("manifest {m}");
    }
    println!(
        "{} repositories: {} manifests and {} blob links removed; {verb} {} blobs, {}{}",
        report.repositories,
        report.manifests.len(),
        report.blob_links,
        report.blobs_freed,
        human(report.bytes_freed),
        if report.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    ExitCode::SUCCESS
}
