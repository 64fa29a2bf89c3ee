//! `berth rewrite`: rewrites Kubernetes YAML (or one image reference) so images pull through
//! berth, optionally pinning tags to digests through the upstream.

use std::path::Path;
use std::process::ExitCode;

use crate::rewrite::{self, ImageRef};

#[derive(clap::Args)]
pub struct Args {
    /// The app whose upstreams' images are rewritten.
    #[arg(long)]
    app: String,
    /// YAML file to read ("-" for standard input).
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: String,
    /// Rewrite just this image reference and print it.
    #[arg(long, conflicts_with = "file")]
    image: Option<String>,
    /// imagePullSecrets name to add to every rewritten pod spec.
    #[arg(long)]
    pull_secret: Option<String>,
    /// Resolve tags to digests through the upstream and write name:tag@sha256:….
    #[arg(long)]
    pin_digests: bool,
    /// Rewrite every image, not only the app's upstreams'.
    #[arg(long)]
    all: bool,
    /// Target REGISTRY[/NAMESPACE] instead of berth (images pushed by `airgap push`).
    #[arg(long)]
    registry: Option<String>,
}

pub fn run(config: &Path, args: Args) -> ExitCode {
    let Args {
        app,
        file,
        image,
        pull_secret,
        pin_digests,
        all,
        registry,
    } = args;
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut rules = match rewrite::rules_for_app(&config, &app) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: --app: {e}");
            return ExitCode::from(2);
        }
    };
    rules.pull_secret = pull_secret;
    rules.all = all;
    rules.registry = registry;
    if let Some(image) = image {
        println!(
            "{}",
            rewrite::rewrite_image(&rules, &image).unwrap_or(image)
        );
        return ExitCode::SUCCESS;
    }
    let input = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read_to_string(&file)
    };
    let input = match input {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth: cannot read {file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pinner = if pin_digests {
        match crate::pin::Pinner::new(&config, &app) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("berth: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let pin = |r: &ImageRef| match &pinner {
        Some(p) => p.resolve(r),
        None => Err("pinning is off".to_string()),
    };
    match rewrite::rewrite_yaml(&rules, &input, if pin_digests { Some(&pin) } else { None }) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {file}: {e}");
            ExitCode::FAILURE
        }
    }
}
