//! `berth cache stats|purge`: inspects the cache directory (safe while berth runs) or
//! forgets repositories and deletes what nothing else refers to (berth must be stopped).

use std::path::Path;
use std::process::ExitCode;

use crate::cache::admin;
use crate::config::Config;

#[derive(clap::Subcommand)]
pub enum Action {
    /// Count cached blobs, bytes, manifests, tags and links (safe while berth runs).
    Stats,
    /// Forget repositories and delete content nothing else refers to (berth must be stopped).
    Purge {
        /// Only this app's repositories.
        #[arg(long)]
        app: Option<String>,
        /// Only this upstream repository (glob, e.g. acme/api or acme/*).
        #[arg(long)]
        repo: Option<String>,
        /// Everything.
        #[arg(long, conflicts_with_all = ["app", "repo"])]
        all: bool,
    },
}

pub fn run(config: &Path, action: Action) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match action {
        Action::Stats => stats(&config),
        Action::Purge { app, repo, all } => purge(&config, app.as_deref(), repo.as_deref(), all),
    }
}

fn stats(config: &Config) -> ExitCode {
    match admin::stats(&config.cache.dir) {
        Ok(s) => {
            println!("cache:      {}", config.cache.dir.display());
            println!("blobs:      {} ({} bytes)", s.blobs, s.blob_bytes);
            if let Some(max) = config.cache.max_size {
                println!("max_size:   {max} bytes");
            }
            println!("manifests:  {}", s.manifests);
            println!("tags:       {}", s.tags);
            println!("links:      {}", s.links);
            println!("partial:    {}", s.partial_files);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: cache.dir: {e}");
            ExitCode::FAILURE
        }
    }
}

fn purge(config: &Config, app: Option<&str>, repo: Option<&str>, all: bool) -> ExitCode {
    if !all && app.is_none() && repo.is_none() {
        eprintln!("berth: give --app and/or --repo, or --all");
        return ExitCode::from(2);
    }
    if let Some(a) = app.filter(|a| config.app(a).is_none()) {
        eprintln!("berth: --app: unknown app {a:?}");
        return ExitCode::from(2);
    }
    let glob = match repo.map(crate::config::Glob::new) {
        Some(Ok(g)) => Some(g),
        Some(Err(e)) => {
            eprintln!("berth: --repo: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    // Content is the app's own: `--app` purges that app's repositories, not those of
    // other apps pulling through the same upstream.
    let matches = |a: Option<&str>, r: &str| {
        app.is_none_or(|want| a == Some(want)) && glob.as_ref().is_none_or(|g| g.matches(r))
    };
    let legacy = crate::cache::legacy_of(&*config.tenants);
    match admin::purge(&config.cache.dir, legacy, &matches) {
        Ok(p) => {
            println!(
                "purged: {} links, {} tags, {} manifests, {} blobs ({} bytes)",
                p.links, p.tags, p.manifests, p.blobs, p.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}
