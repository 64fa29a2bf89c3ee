//! The `berth` command line: parses arguments and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "License-gated pull-through registry proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry proxy.
    Serve {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and exit (non-zero naming the key at fault).
    CheckConfig {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
    },
    /// Airgap bundles: export images to one OCI-layout tar, import it into the cache, push
    /// it into a registry, list it.
    #[command(subcommand)]
    Airgap(Airgap),
}

#[derive(Subcommand)]
enum Airgap {
    /// Pull images through the app's upstreams into one OCI image layout tar.
    Export {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
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
        /// Upstream references (`host/repository:tag`); default: the app's `images:`.
        images: Vec<String>,
    },
    /// Verify a bundle, then seed the cache with it (pinned) for `berth serve`.
    Import {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
        /// The app to import into (default: the one recorded in the bundle).
        #[arg(long)]
        app: Option<String>,
        bundle: PathBuf,
    },
    /// Push every image of a bundle into a registry; prints old → new references.
    Push {
        bundle: PathBuf,
        /// REGISTRY[/NAMESPACE]
        #[arg(long)]
        to: String,
        #[arg(long)]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Plain HTTP instead of HTTPS.
        #[arg(long)]
        insecure: bool,
    },
    /// Print the images, platforms and sizes in a bundle.
    List { bundle: PathBuf },
}

fn init_logging() {
    let level = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

fn load(path: &std::path::Path) -> Result<berth::config::Config, ExitCode> {
    berth::config::Config::load(path).map_err(|e| {
        eprintln!("berth: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("berth: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn read_images_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn airgap(cmd: Airgap) -> ExitCode {
    use berth::airgap;
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("berth: {e}");
        ExitCode::FAILURE
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match cmd {
        Airgap::Export {
            config,
            app,
            output,
            images_file,
            platform,
            images,
        } => {
            let config = match load(&config) {
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
            };
            let started = std::time::Instant::now();
            match rt.block_on(airgap::export::export(&config, &opts)) {
                Ok(r) => {
                    println!(
                        "{}: {} images, {} blobs, {} stored ({} of configs and layers referenced), file {} bytes, {:.1}s",
                        opts.output.display(),
                        r.images,
                        r.blobs,
                        airgap::human(r.stored),
                        airgap::human(r.referenced),
                        r.file_size,
                        started.elapsed().as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("airgap export: {e:#}")),
            }
        }
        Airgap::Import {
            config,
            app,
            bundle,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let started = std::time::Instant::now();
            match rt.block_on(airgap::import::import(&config, &bundle, app.as_deref())) {
                Ok(r) => {
                    println!(
                        "{}: imported {} images, {} blobs ({}) into {}, pinned, {:.1}s",
                        bundle.display(),
                        r.images.len(),
                        r.blobs,
                        airgap::human(r.bytes),
                        config.cache.dir.display(),
                        started.elapsed().as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!(
                    "airgap import: {}: {e:#}; nothing was imported",
                    bundle.display()
                )),
            }
        }
        Airgap::Push {
            bundle,
            to,
            username,
            password_stdin,
            insecure,
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                if let Err(e) = std::io::stdin().read_line(&mut line) {
                    return fail(&format!("--password-stdin: {e}"));
                }
                Some(berth::config::Secret::new(
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
                        "pushed {} images: {} blobs uploaded ({}), {} already present, {} mounted",
                        r.mapping.len(),
                        r.uploaded,
                        airgap::human(r.uploaded_bytes),
                        r.skipped,
                        r.mounted
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("airgap push: {e:#}")),
            }
        }
        Airgap::List { bundle } => match airgap::list(&bundle, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("airgap list: {e}")),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Airgap(cmd) => airgap(cmd),
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} upstreams, {} apps, {} licenses)",
                    config.display(),
                    c.upstreams.len(),
                    c.apps.len(),
                    c.licenses.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            init_logging();
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("berth: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(berth::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("berth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
