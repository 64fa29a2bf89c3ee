//! The servers under test, all on loopback: the authenticated upstream and its open twin,
//! berth, distribution in proxy mode and as a plain local registry, and nginx serving the
//! blob file from disk.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::berth::Berth;
use crate::support::{free_port, tempdir, wait_for_port, wait_until};

pub const VENDOR: &str = "vendor";
pub const VENDOR_PW: &str = "vendor-s3cret";
/// Customers use the license as user and password, for berth and (via htpasswd) dist alike,
/// so both get the very same `Authorization` header.
pub const LICENSE: &str = "LICENSE-bench-0001";
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Self-signed CA plus a leaf for 127.0.0.1, as PEM files every server can load.
pub struct Certs {
    pub ca_der: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Certs {
    pub fn generate() -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "berth bench CA");
        let ca = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("sign leaf");
        let dir = tempdir();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, leaf.pem()).expect("write cert");
        std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
        Certs {
            ca_der: ca.der().to_vec(),
            cert,
            key,
            _dir: dir,
        }
    }
}

// ---- berth ------------------------------------------------------------------------------

/// Where berth finds the customer's license.
pub enum Licenses<'a> {
    /// `LICENSE` in the config file's `licenses:` (and the default, empty, SQLite store).
    ConfigFile,
    /// Only in the state store this `state:` YAML value names (`{ sqlite: "…" }`,
    /// `{ postgres: "…" }`); the config file lists none.
    Store(&'a str),
}

pub fn berth_yaml(
    port: u16,
    cache: &Path,
    upstream_url: &str,
    tls: Option<&Certs>,
    licenses: &Licenses,
) -> String {
    let tls = tls
        .map(|c| {
            format!(
                ", tls: [ {{ cert: \"{}\", key: \"{}\" }} ]",
                c.cert.display(),
                c.key.display()
            )
        })
        .unwrap_or_default();
    let licenses = match licenses {
        Licenses::ConfigFile => {
            format!("licenses: [ {{ id: {LICENSE}, app: acme, customer: Bench }} ]\n")
        }
        Licenses::Store(state) => format!("state: {state}\n"),
    };
    format!(
        r#"server: {{ listen: "127.0.0.1:{port}", hostname: "127.0.0.1:{port}"{tls} }}
cache: {{ dir: "{cache}", tag_ttl: 5m }}
upstreams:
  - {{ name: up, url: "{upstream_url}", host: upstream.test, username: {VENDOR}, password: "${{UPSTREAM_PASSWORD}}", repositories: ["acme/*"] }}
apps: [ {{ slug: acme, upstreams: [up] }} ]
{licenses}"#,
        cache = cache.display(),
    )
}

/// The environment every berth of the bench runs with (the YAML names the upstream's
/// password by variable, as a deployment would).
pub const BERTH_ENV: [(&str, &str); 1] = [("UPSTREAM_PASSWORD", VENDOR_PW)];

pub fn start_berth(cache: &Path, upstream_url: &str, tls: Option<&Certs>) -> Berth {
    let port = free_port();
    Berth::start_on(
        port,
        &berth_yaml(port, cache, upstream_url, tls, &Licenses::ConfigFile),
        &BERTH_ENV,
    )
}

// ---- distribution in proxy mode, or local -------------------------------------------------

/// `docker-registry` with `proxy: remoteurl:`, or as a plain local registry. support::registry
/// has no proxy or TLS options and no pid for /proc, hence this small launcher.
pub struct Dist {
    pub port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Dist {
    /// `htpasswd_auth`: require the license as user/password, like berth does.
    pub fn start(
        storage: &Path,
        remote: &str,
        tls: Option<&Certs>,
        htpasswd_auth: bool,
    ) -> anyhow::Result<Dist> {
        Self::launch(storage, Some(remote), tls, htpasswd_auth)
    }

    /// A plain local registry, the hosted registry's counterpart (the `push` phase):
    /// filesystem storage, no auth, no proxy, deletes enabled.
    pub fn local(storage: &Path) -> anyhow::Result<Dist> {
        Self::launch(storage, None, None, false)
    }

    fn launch(
        storage: &Path,
        remote: Option<&str>,
        tls: Option<&Certs>,
        htpasswd_auth: bool,
    ) -> anyhow::Result<Dist> {
        let dir = tempdir();
        let port = free_port();
        let tls_yaml = tls
            .map(|c| {
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.cert.display(),
                    c.key.display()
                )
            })
            .unwrap_or_default();
        let auth_yaml = if htpasswd_auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", LICENSE, LICENSE])
                .output()
                .expect("run htpasswd (apt-get install -y apache2-utils)");
            anyhow::ensure!(out.status.success(), "htpasswd failed: {out:?}");
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, &out.stdout)?;
            format!(
                "auth:\n  htpasswd:\n    realm: berth-bench\n    path: {}\n",
                path.display()
            )
        } else {
            String::new()
        };
        let (proxy_yaml, delete_yaml) = match remote {
            Some(remote) => (format!("proxy:\n  remoteurl: {remote}\n"), ""),
            None => (String::new(), "  delete:\n    enabled: true\n"),
        };
        // Distribution's defaults (info log, access log on) plus the in-memory blob
        // descriptor cache that Debian's packaged config enables.
        let config = format!(
            "version: 0.1
log:
  level: info
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {storage}
{delete_yaml}  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: berth-bench-secret
{tls_yaml}{auth_yaml}{proxy_yaml}",
            storage = storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let mut d = Dist {
            port,
            config_path,
            log_path: dir.path().join("dist.log"),
            child: None,
            _dir: dir,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        let before = self.log().matches(&listening).count();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        self.child = Some(
            Command::new("docker-registry")
                .arg("serve")
                .arg(&self.config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry (apt-get install -y docker-registry)"),
        );
        let port = self.port;
        let up = wait_until(START_TIMEOUT, || {
            self.log().matches(&listening).count() > before && wait_for_port(port, Duration::ZERO)
        });
        anyhow::ensure!(
            up,
            "dist proxy not up on {port}; log:\n{}",
            tail(&self.log(), 20)
        );
        Ok(())
    }

    /// A fresh process over the same storage and config.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("dist not running").id()
    }

    pub fn log(&self) -> String {
        read_to_string(&self.log_path)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where distribution's filesystem driver keeps a blob's bytes.
pub fn dist_blob_file(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

// ---- nginx ------------------------------------------------------------------------------

/// nginx serving `/blob` (a symlink to the upstream's blob file) on a plain and a TLS port.
pub struct Nginx {
    pub port: u16,
    pub tls_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nginx {
    pub fn start(blob_file: &Path, certs: &Certs) -> anyhow::Result<Nginx> {
        let dir = tempdir();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root)?;
        std::os::unix::fs::symlink(blob_file, root.join("blob"))?;
        let port = free_port();
        let tls_port = free_port();
        let d = dir.path().display();
        // `user root`: the temp dirs are 0700, and workers would otherwise run as nobody.
        // Temp paths and the pid file live in our dir so nothing touches /var.
        let conf = format!(
            "user root;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  {extra}
  default_type application/octet-stream;
  client_body_temp_path {d}/t_body;
  proxy_temp_path {d}/t_proxy;
  fastcgi_temp_path {d}/t_fcgi;
  uwsgi_temp_path {d}/t_uwsgi;
  scgi_temp_path {d}/t_scgi;
  server {{
    listen 127.0.0.1:{port};
    root {d}/root;
  }}
  server {{
    listen 127.0.0.1:{tls_port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    root {d}/root;
  }}
}}
",
            cert = certs.cert.display(),
            key = certs.key.display(),
            extra = nginx_extra(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = File::create(dir.path().join("stderr.log"))?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .expect("spawn nginx (apt-get install -y nginx)");
        let mut n = Nginx {
            port,
            tls_port,
            dir,
            child: Some(child),
        };
        let up = wait_until(START_TIMEOUT, || {
            wait_for_port(port, Duration::ZERO) && wait_for_port(tls_port, Duration::ZERO)
        });
        if !up {
            n.stop();
            anyhow::bail!(
                "nginx not up; log:\n{}",
                read_to_string(&n.dir.path().join("stderr.log"))
                    + &read_to_string(&n.dir.path().join("error.log"))
            );
        }
        Ok(n)
    }

    /// SIGTERM to the master, which takes its workers down with it (SIGKILL would orphan them).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let exited = wait_until(Duration::from_secs(10), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if !exited {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Extra nginx directives for the `http` block, for experiments such as
/// `BERTH_BENCH_NGINX_EXTRA="output_buffers 2 256k;"` (with TLS nginx cannot sendfile and
/// reads the file through output_buffers). Empty by default: nginx as shipped, since
/// larger buffers made no difference we could see above the noise.
fn nginx_extra() -> String {
    std::env::var("BERTH_BENCH_NGINX_EXTRA").unwrap_or_default()
}

// ---- memory ------------------------------------------------------------------------------

/// A `/proc/<pid>/status` field in KiB (VmRSS, VmHWM).
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn read_to_string(p: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(p) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
