//! `berth airgap export|import|push|list`: one OCI-layout tar of images — pulled through the
//! app's upstreams, seeded into the cache (pinned), pushed into another registry, or listed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::airgap;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Pull images through the app's upstreams (or, for `<hostname>/<app>/<repo>`, from
    /// berth's hosted registry) into one OCI image layout tar.
    Export(ExportArgs),
    /// Verify a bundle, then seed the cache with it (pinned) for `berth serve`; hosted
    /// images seed the app's hosted repositories.
    Import {
        /// The app to import into (default: the configuration's only app). A bundle
        /// exported for another app is refused.
        #[arg(long)]
        app: Option<String>,
        /// The bundle (a tar written by `berth airgap export`).
        bundle: PathBuf,
    },
    /// Push every image of a bundle into a registry; prints old → new references.
    Push(PushArgs),
    /// Print the images, platforms and sizes in a bundle.
    List {
        /// The bundle (a tar written by `berth airgap export`).
        bundle: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The app whose upstreams serve the images.
    #[arg(long)]
    app: String,
    /// Where to write the bundle.
    #[arg(long, short)]
    output: PathBuf,
    /// A file of upstream references, one a line (`#` comments and blank lines ignored).
    #[arg(long)]
    images_file: Option<PathBuf>,
    /// Keep only these platforms of multi-platform images, e.g. linux/amd64,linux/arm64.
    #[arg(long, value_delimiter = ',')]
    platform: Vec<String>,
    /// Leave out the images' referrers (signatures, attestations, SBOMs: the referrers
    /// API or the `sha256-<hex>` referrers tag, and the cosign `.sig`/`.att`/`.sbom` tags),
    /// which are exported by default.
    #[arg(long)]
    no_referrers: bool,
    /// Upstream references (`host/repository:tag`) or hosted ones
    /// (`<hostname>/<app>/<repository>:tag`); default: the app's `images:`.
    images: Vec<String>,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// The bundle (a tar written by `berth airgap export`).
    bundle: PathBuf,
    /// REGISTRY[/NAMESPACE]
    #[arg(long)]
    to: String,
    /// The registry login's user name (the password comes from --password-stdin).
    #[arg(long)]
    username: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Plain HTTP instead of HTTPS.
    #[arg(long)]
    insecure: bool,
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("berth: {e}");
    ExitCode::FAILURE
}

/// `config` is read by export and import only: push and list need just the bundle.
pub fn run(config: &Path, command: Command) -> ExitCode {
    let rt = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match command {
        Command::Export(args) => export(&rt, config, args),
        Command::Import { app, bundle } => import(rt, config, app.as_deref(), &bundle),
        Command::Push(args) => push(&rt, args),
        Command::List { bundle } => match airgap::list(&bundle, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("airgap list: {e}")),
        },
    }
}

fn read_images_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn export(rt: &tokio::runtime::Runtime, config: &Path, args: ExportArgs) -> ExitCode {
    let ExportArgs {
        app,
        output,
        images_file,
        platform,
        no_referrers,
        images,
    } = args;
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut list = images;
    if let Some(f) = images_file {
        match read_images_file(&f) {
            Ok(more) => list.extend(more),
            Err(e) => return fail(&e),
        }
    }
    if list.is_empty() {
        if let Some(a) = config.app(&app) {
            list = a.images.clone();
        }
    }
    let mut platforms = Vec::new();
    for p in platform.iter().filter(|p| !p.trim().is_empty()) {
        match airgap::Platform::parse(p) {
            Ok(p) => platforms.push(p),
            Err(e) => return fail(&format!("--platform: {e}")),
        }
    }
    let opts = airgap::export::ExportOptions {
        app,
        images: list,
        platforms,
        output,
        referrers: !no_referrers,
    };
    let started = std::time::Instant::now();
    match rt.block_on(airgap::export::export(&config, &opts)) {
        Ok(r) => {
            println!(
                "{}: {}, {}, {}, {} stored ({} of configs and layers referenced), file {}, {:.1}s",
                opts.output.display(),
                airgap::count(r.images, "image", "images"),
                airgap::count(r.referrers, "referrer", "referrers"),
                airgap::blob_count(r.blobs, r.manifests),
                airgap::human(r.stored),
                airgap::human(r.referenced),
                airgap::human(r.file_size),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("airgap export: {e:#}")),
    }
}

fn import(
    rt: tokio::runtime::Runtime,
    config: &Path,
    app: Option<&str>,
    bundle: &Path,
) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let started = std::time::Instant::now();
    let result = rt.block_on(airgap::import::import(&config, bundle, app));
    // An interrupted import leaves its bundle reader blocked in a read: do not wait.
    rt.shutdown_background();
    match result {
        Ok(r) => {
            println!(
                "{}: imported {}, {} ({} of configs and layers) into {}, pinned, {:.1}s",
                bundle.display(),
                airgap::count(r.images.len(), "image", "images"),
                airgap::blob_count(r.blobs, r.manifests),
                airgap::human(r.bytes),
                config.cache.dir.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => match e.downcast_ref::<airgap::import::PartlyImported>() {
            Some(p) => fail(&format!(
                "airgap import: {}: {p}; {} imported before it ({}); importing the bundle again completes it",
                bundle.display(),
                airgap::count(p.imported.len(), "image was", "images were"),
                p.imported.join(", ")
            )),
            None => fail(&format!(
                "airgap import: {}: {e:#}; nothing was imported",
                bundle.display()
            )),
        },
    }
}

fn push(rt: &tokio::runtime::Runtime, args: PushArgs) -> ExitCode {
    let PushArgs {
        bundle,
        to,
        username,
        password_stdin,
        insecure,
    } = args;
    let password = if password_stdin {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            return fail(&format!("--password-stdin: {e}"));
        }
        Some(crate::config::Secret::new(
            line.trim_end_matches(['\r', '\n']),
        ))
    } else {
        None
    };
    let opts = airgap::push::PushOptions {
        to,
        username,
        password,
        insecure,
    };
    let b = match airgap::Bundle::scan(&bundle, None) {
        Ok(b) => b,
        Err(e) => return fail(&format!("airgap push: {e}")),
    };
    match rt.block_on(airgap::push::push(&b, &opts)) {
        Ok(r) => {
            for (old, new) in &r.mapping {
                println!("{old} {new}");
            }
            eprintln!(
                "pushed {}: {} uploaded ({}), {} already present, {} mounted",
                airgap::count(r.mapping.len(), "image", "images"),
                airgap::count(r.uploaded, "blob", "blobs"),
                airgap::human(r.uploaded_bytes),
                r.skipped,
                r.mounted
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("airgap push: {e:#}")),
    }
}
