//! `berth rewrite`: rewrites Kubernetes YAML or JSON (or one image reference) so images pull
//! through berth, optionally pinning tags to digests through the upstream. Which objects and
//! images are rewritten, and with which pull secret, is decided as the admission webhook
//! decides it (`rewrite::rules_for_object` over the config's `rewrite:` rules); flags override.

use std::path::Path;
use std::process::ExitCode;

use crate::rewrite::{self, Decided, ImageRef};

#[derive(clap::Args)]
pub struct Args {
    /// The app whose upstreams' images are rewritten. Optional when the config has one app,
    /// when `rewrite:` rules name one, or (with --image) when one app serves the image.
    #[arg(long)]
    app: Option<String>,
    /// YAML or JSON file to read ("-" for standard input).
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: String,
    /// Rewrite just this image reference and print it.
    #[arg(long, conflicts_with = "file")]
    image: Option<String>,
    /// imagePullSecrets name to add to every rewritten pod spec (default: the pull_secret of
    /// the config's `rewrite:` rule that selects the object).
    #[arg(long)]
    pull_secret: Option<String>,
    /// The namespace of objects without metadata.namespace, as `kubectl apply -n` would put
    /// them (matched against the `rewrite:` rules' namespaces).
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Resolve tags to digests through the upstream and write name:tag@sha256:….
    #[arg(long)]
    pin_digests: bool,
    /// With --registry: move every image there, not only the app's upstreams'.
    #[arg(long)]
    all: bool,
    /// Target REGISTRY[/NAMESPACE] instead of berth (images pushed by `airgap push`).
    #[arg(long)]
    registry: Option<String>,
}

pub fn run(config: &Path, args: Args) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let app = match choose_app(&config, args.app.as_deref(), args.image.as_deref()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth: --app: {e}");
            return ExitCode::from(2);
        }
    };
    if args.all && args.registry.is_none() {
        eprintln!(
            "berth: warning: --all only applies with --registry: berth serves the images of \
             app {app}'s upstreams only, so only those are rewritten"
        );
    }
    // Flags override what the config's rules decide, explicitly and for every object.
    let adjust = |mut rules: rewrite::Rules| {
        if args.pull_secret.is_some() {
            rules.pull_secret.clone_from(&args.pull_secret);
        }
        rules.all = args.all;
        rules.registry.clone_from(&args.registry);
        rules
    };
    let pinner = if args.pin_digests {
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
    let pin: Option<&rewrite::PinFn<'_>> = if args.pin_digests { Some(&pin) } else { None };

    if let Some(image) = args.image {
        let rules = match rewrite::rules_for_app(&config, &app) {
            Ok(r) => adjust(r),
            Err(e) => {
                eprintln!("berth: --app: {e}");
                return ExitCode::from(2);
            }
        };
        return match rewrite::rewrite_one(&rules, &image, pin) {
            Ok(new) => {
                println!("{}", new.unwrap_or(image));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berth: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let file = args.file;
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
    let rules_for =
        |ctx: &rewrite::AdmissionContext| match rewrite::rules_for_object(&config, &app, ctx) {
            Decided::Rules(r) => Some(adjust(r)),
            Decided::Skipped => None,
            Decided::OtherApp(other) => {
                eprintln!(
                    "berth: warning: {} {} in namespace {}: the config's rewrite rules give it \
                     to app {other}, not {app}; left as it is",
                    ctx.kind,
                    ctx.name.as_deref().unwrap_or("(unnamed)"),
                    ctx.namespace
                );
                None
            }
        };
    match rewrite::rewrite_yaml_for(&rules_for, &args.namespace, &input, pin) {
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

/// `--app`, or the one app the config leaves: its only app, the only app its `rewrite:`
/// rules name, or (with `--image`) the only app serving that image. Otherwise an error
/// naming the candidates.
fn choose_app(
    config: &crate::config::Config,
    app: Option<&str>,
    image: Option<&str>,
) -> Result<String, String> {
    if let Some(app) = app {
        return config
            .app(app)
            .map(|a| a.slug.clone())
            .ok_or_else(|| format!("unknown app {app:?}"));
    }
    let mut all: Vec<String> = config
        .tenants
        .apps()
        .iter()
        .map(|a| a.slug.clone())
        .collect();
    all.sort();
    if let [only] = all.as_slice() {
        return Ok(only.clone());
    }
    if let Some(image) = image {
        let r = ImageRef::parse(image).map_err(|e| format!("--image {image:?}: {e}"))?;
        return match rewrite::apps_serving(config, &r).as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(format!(
                "no app serves {image}; name one of: {}",
                all.join(", ")
            )),
            many => Err(format!(
                "{image} is served by apps {}; name one",
                many.join(", ")
            )),
        };
    }
    let mut ruled: Vec<String> = config.rewrite.iter().map(|r| r.app.clone()).collect();
    ruled.sort();
    ruled.dedup();
    if let [only] = ruled.as_slice() {
        return Ok(only.clone());
    }
    Err(format!(
        "the config has apps {}; name one with --app",
        all.join(", ")
    ))
}
