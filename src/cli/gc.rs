//! `berth gc`: one garbage collection of the hosted registry — in this process beside a
//! running server (the cache directory is shared, the index is the state store's), or with
//! `--server` by the running server itself through the admin API (`POST /api/v1/gc`) —
//! or `--dry-run` to see what it would free. `hosted.gc` in the config sets the grace
//! period and what happens to untagged manifests; the flags here override them.

use std::process::ExitCode;
use std::sync::Arc;

use super::remote::Remote;
use super::Global;
use crate::hosted::gc::{Options, Report, Untagged};
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
}

pub fn run(global: &Global, args: Args) -> ExitCode {
    if let Some(server) = &global.server {
        return remote(global, server, &args);
    }
    let config = match super::load_config(&global.config) {
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
        // Beside a running server: its uploads in progress are in cache.dir too.
        let cache = crate::cache::Cache::open_beside(
            &config.cache,
            legacy,
            crate::cache::CacheMetrics::default(),
        )
        .map_err(|e| format!("cache.dir: {e}"))?;
        let hosted = Hosted::new(Arc::new(cache), store, config.hosted.upload_timeout);
        hosted.collect(&opts).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(r) => print(&r, global.json),
        Err(e) => {
            eprintln!("berth gc: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the server at `server` to collect (it updates its own memory of what is stored).
fn remote(global: &Global, server: &str, args: &Args) -> ExitCode {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let r = Remote::new(server, global.token.as_ref())?;
        let flag = |b: bool| b.then_some("true");
        let q = super::remote::query(&[
            ("app", args.app.as_deref()),
            ("dry_run", flag(args.dry_run)),
            ("grace", args.grace.as_deref()),
            ("delete_untagged", flag(args.delete_untagged)),
        ]);
        r.post_empty::<Report>(&format!("/api/v1/gc{q}")).await
    });
    match result {
        Ok(r) => print(&r, global.json),
        Err(f) => f.exit(),
    }
}

fn print(report: &Report, json: bool) -> ExitCode {
    if json {
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
