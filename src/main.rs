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
    /// Rewrite Kubernetes YAML (or one image) so images pull through berth.
    Rewrite {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
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
    },
    /// Print the Kubernetes imagePullSecret for a license.
    PullSecret {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
        #[arg(long)]
        license: String,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long, default_value = "berth-pull-secret")]
        name: String,
    },
    /// Inspect or prune the cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Read the audit log: who pulled what.
    Audit {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
        /// A license id or its fingerprint (records name licenses by fingerprint).
        #[arg(long)]
        license: Option<String>,
        /// host/repository, optionally with :tag or @digest.
        #[arg(long)]
        image: Option<String>,
        /// Print the raw JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Airgap bundles: export images to one OCI-layout tar, import it into the cache, push
    /// it into a registry, list it.
    #[command(subcommand)]
    Airgap(Airgap),
    /// Upstream diagnostics.
    Upstream {
        #[command(subcommand)]
        command: UpstreamCommand,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Count cached blobs, bytes, manifests, tags and links (safe while berth runs).
    Stats {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
    },
    /// Forget repositories and delete content nothing else refers to (berth must be stopped).
    Purge {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
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

#[derive(Subcommand)]
enum UpstreamCommand {
    /// Check each upstream (or NAME): DNS, TCP, TLS, authentication and, with --image, a
    /// manifest HEAD. Prints one ✓/✗ line per step; exits 1 if any step fails.
    Test {
        #[arg(long, short, default_value = "berth.yaml")]
        config: PathBuf,
        /// Only this upstream.
        name: Option<String>,
        /// Also check this image: REPO:TAG or REPO@DIGEST, as named on the upstream.
        #[arg(long)]
        image: Option<String>,
    },
}

fn upstream_test(config: &std::path::Path, name: Option<&str>, image: Option<&str>) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let image = match image.map(berth::upstream::probe::parse_image).transpose() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("berth: --image: {e}");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<_> = config
        .upstreams
        .iter()
        .filter(|u| name.is_none_or(|n| n == u.name))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "berth: no upstream named {:?} in the configuration",
            name.unwrap_or("")
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = berth::upstream::Client::new();
    let mut failed = false;
    for up in selected {
        println!("{} ({}, {})", up.name, up.kind.as_str(), up.base_url);
        let image = image.as_ref().map(|(r, t)| (r.as_str(), t.as_str()));
        let steps = runtime.block_on(berth::upstream::probe::probe(&client, up, image));
        for s in &steps {
            println!("  {} {}: {}", s.mark(), s.what, s.detail);
        }
        failed |= steps
            .iter()
            .any(|s| s.outcome == berth::upstream::probe::Outcome::Failed);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
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
        /// The app to import into (default: the configuration's only app). A bundle
        /// exported for another app is refused.
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

fn init_logging() -> berth::logging::Sink {
    let level = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let sink = berth::logging::Sink::stderr();
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .with_writer(sink.clone())
        .init();
    sink
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
            let result = rt.block_on(airgap::import::import(&config, &bundle, app.as_deref()));
            // An interrupted import leaves its bundle reader blocked in a read: do not wait.
            rt.shutdown_background();
            match result {
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
        Command::Rewrite {
            config,
            app,
            file,
            image,
            pull_secret,
            pin_digests,
            all,
            registry,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let mut rules = match berth::rewrite::rules_for_app(&config, &app) {
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
                    berth::rewrite::rewrite_image(&rules, &image).unwrap_or(image)
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
                match berth::pin::Pinner::new(&config, &app) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        eprintln!("berth: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                None
            };
            let pin = |r: &berth::rewrite::ImageRef| match &pinner {
                Some(p) => p.resolve(r),
                None => Err("pinning is off".to_string()),
            };
            match berth::rewrite::rewrite_yaml(
                &rules,
                &input,
                if pin_digests { Some(&pin) } else { None },
            ) {
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
        Command::PullSecret {
            config,
            license,
            namespace,
            name,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let Some(l) = config.license(&license) else {
                eprintln!("berth: --license: no such license in the config");
                return ExitCode::from(2);
            };
            if !l.is_active(std::time::SystemTime::now()) {
                eprintln!("berth: warning: this license is expired or revoked");
            }
            print!(
                "{}",
                berth::rewrite::pull_secret_yaml(
                    &name,
                    namespace.as_deref(),
                    &config.server.hostname,
                    l.id.expose(),
                    l.id.expose()
                )
            );
            ExitCode::SUCCESS
        }
        Command::Cache { action } => cache_command(action),
        Command::Audit {
            config,
            license,
            image,
            json,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let Some(path) = &config.auth.audit_log else {
                eprintln!("berth: auth.audit_log is not set in the config");
                return ExitCode::from(2);
            };
            let filter = berth::audit::Filter { license, image };
            match berth::audit::read(path, &filter) {
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
        Command::Upstream {
            command:
                UpstreamCommand::Test {
                    config,
                    name,
                    image,
                },
        } => upstream_test(&config, name.as_deref(), image.as_deref()),
        Command::Serve { config } => {
            let logs = init_logging();
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
            let code = match runtime.block_on(berth::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            };
            logs.flush();
            code
        }
    }
}

fn cache_command(action: CacheAction) -> ExitCode {
    match action {
        CacheAction::Stats { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match berth::cache::admin::stats(&config.cache.dir) {
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
        CacheAction::Purge {
            config,
            app,
            repo,
            all,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if !all && app.is_none() && repo.is_none() {
                eprintln!("berth: give --app and/or --repo, or --all");
                return ExitCode::from(2);
            }
            let upstreams: Option<Vec<String>> = match &app {
                Some(a) => match config.app(a) {
                    Some(app) => Some(
                        app.upstreams
                            .iter()
                            .map(|&i| config.upstreams[i].name.clone())
                            .collect(),
                    ),
                    None => {
                        eprintln!("berth: --app: unknown app {a:?}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            };
            let glob = match repo.as_deref().map(berth::config::Glob::new) {
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
            match berth::cache::admin::purge(&config.cache.dir, &matches) {
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
    }
}
