//! `berth mirror-config`: writes the container runtime files that make a customer's nodes
//! pull an app's images through berth as a registry mirror, with the license's login.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::rewrite::nodes::{self, Mirror, Runtime, Style};

#[derive(clap::Args)]
pub struct Args {
    /// containerd, cri-o (also podman), k3s (also rke2) or docker.
    #[arg(long)]
    runtime: Runtime,
    /// The directory to write the files into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// The customer's license secret: its app, and the login written into the files.
    #[arg(long, required_unless_present = "app", conflicts_with = "app")]
    license: Option<String>,
    /// An app instead of a license: no login is written (the kubelet's pull secret, or
    /// the runtime's own login, brings it).
    #[arg(long)]
    app: Option<String>,
    /// berth as the nodes reach it (default: https://<server.hostname>).
    #[arg(long)]
    url: Option<String>,
    /// containerd only: `ns` (the mirror protocol) or `override-path` (berth's proxy path).
    #[arg(long, default_value = "ns")]
    style: Style,
}

pub fn run(config: &Path, args: Args) -> ExitCode {
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (slug, login) = match (&args.license, &args.app) {
        (Some(secret), _) => match super::pull_secret::find_license(&config, secret) {
            Ok(l) => {
                if !l.is_active(std::time::SystemTime::now()) {
                    eprintln!("berth: warning: this license is expired or revoked");
                }
                let user = super::pull_secret::login_name(&l, secret).to_string();
                (l.app.clone(), Some((user, secret.clone())))
            }
            Err(code) => return code,
        },
        (None, Some(app)) => (app.clone(), None),
        (None, None) => {
            eprintln!("berth: give --license or --app");
            return ExitCode::from(2);
        }
    };
    let Some(app) = config.app(&slug) else {
        eprintln!("berth: --app: no app {slug:?} in the config");
        return ExitCode::from(2);
    };
    let mut registries: Vec<String> = Vec::new();
    for u in &app.upstreams {
        let r = u.registry().to_string();
        if !registries.contains(&r) {
            registries.push(r);
        }
    }
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("https://{}", config.server.hostname));
    let url = url.trim_end_matches('/');
    let mirror = Mirror {
        url,
        app: &slug,
        registries: &registries,
        login: login.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
    };
    let files = match nodes::files(args.runtime, args.style, &mirror) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    for f in &files {
        let path = args.out.join(&f.path);
        if let Err(e) = write(&path, &f.contents, f.secret) {
            eprintln!("berth: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    println!("{}", next_steps(args.runtime, &args.out));
    ExitCode::SUCCESS
}

/// Writes one file; a file holding the license is readable by its owner only, from the
/// moment it exists.
fn write(path: &Path, contents: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// Where the files go on a node (the README has the details and the fallback behaviour).
fn next_steps(runtime: Runtime, out: &Path) -> String {
    let out = out.display();
    match runtime {
        Runtime::Containerd => format!(
            "next: copy {out}/* to /etc/containerd/certs.d/ and set config_path = \"/etc/containerd/certs.d\" \
             in [plugins.\"io.containerd.grpc.v1.cri\".registry] (ctr: --hosts-dir {out}); \
             containerd falls back to the registry itself when berth fails"
        ),
        Runtime::CriO => format!(
            "next: put {out}/registries.conf in /etc/containers/registries.conf.d/ and \
             {out}/auth.json where the runtime reads logins (CRI-O: global_auth_file; podman: --authfile or \
             $XDG_RUNTIME_DIR/containers/auth.json)"
        ),
        Runtime::K3s => format!(
            "next: copy {out}/registries.yaml to /etc/rancher/k3s/registries.yaml (RKE2: \
             /etc/rancher/rke2/registries.yaml) and restart the service"
        ),
        Runtime::Docker => format!(
            "next: merge {out}/daemon.json into /etc/docker/daemon.json and restart dockerd; \
             merge {out}/config.json into the pulling user's ~/.docker/config.json"
        ),
    }
}
