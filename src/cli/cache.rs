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
        /// Only this app's upstreams.
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
    let upstreams: Option<Vec<String>> = match app {
        Some(a) => match config.app(a) {
            Some(app) => Some(app.upstreams.iter().map(|u| u.name.clone()).collect()),
            None => {
                eprintln!("berth: --app: unknown app {a:?}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let glob = match repo.map(crate::config::Glob::new) {
        Some(Ok(g)) => Some(g),
        Some(Err(e)) => {
            eprintln!("berth: --repo: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let matches = |u: &str, r: &str| {
        upstreams
            .as_ref()
            .is_none_or(|ups| ups.iter().any(|x| x == u))
            && glob.as_ref().is_none_or(|g| g.matches(r))
    };
    match admin::purge(&config.cache.dir, &matches) {
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
