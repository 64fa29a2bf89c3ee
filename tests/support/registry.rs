//! The real `docker-registry` (distribution 2.8) as a throwaway upstream for tests.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, tempdir, wait_until};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub enum RegistryAuth {
    None,
    Htpasswd {
        user: String,
        password: String,
    },
    /// Docker token auth; `root_cert_pem_path` is the bundle that must contain
    /// the certificate carried in the tokens' `x5c` header.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert_pem_path: PathBuf,
    },
}

enum Storage {
    Owned(tempfile::TempDir),
    Shared(PathBuf),
}

pub struct Registry {
    pub port: u16,
    pub auth: RegistryAuth,
    storage: Storage,
    // Holds config, htpasswd file and log; lives as long as the registry.
    workdir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Registry {
    pub fn start(auth: RegistryAuth) -> Registry {
        Self::launch(Storage::Owned(tempdir()), auth)
    }

    /// A registry over an existing storage directory, e.g. another registry's
    /// `storage_dir()`, so two origins can serve identical content.
    pub fn start_with_storage(dir: &Path, auth: RegistryAuth) -> Registry {
        Self::launch(Storage::Shared(dir.to_path_buf()), auth)
    }

    fn launch(storage: Storage, auth: RegistryAuth) -> Registry {
        let workdir = tempdir();
        let mut reg = Registry {
            port: 0,
            auth,
            storage,
            log_path: workdir.path().join("registry.log"),
            config_path: workdir.path().join("config.yml"),
            workdir,
            child: None,
        };
        // free_port() can race with other tests; a lost race shows up as a bind
        // failure in the log and is worth a fresh port, anything else is fatal.
        for attempt in 1..=3 {
            reg.port = free_port();
            let config = render_config(reg.port, reg.storage_dir(), &reg.auth, reg.workdir.path());
            std::fs::write(&reg.config_path, config).expect("write registry config");
            match reg.spawn() {
                Ok(()) => return reg,
                Err(e) if attempt < 3 && e.contains("address already in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        let seen_before = self.log().matches(&listening).count();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry (apt-get install -y docker-registry)");
        self.child = Some(child);
        let port = self.port;
        let mut exited = None;
        // The "listening on" line is logged only after the bind succeeded, so
        // a stranger on our port can't pass for us by answering /v2/.
        let ready = wait_until(READY_TIMEOUT, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                exited = Some(status);
                return true;
            }
            self.log().matches(&listening).count() > seen_before && answers_http(port)
        });
        if let Some(status) = exited {
            self.child = None;
            return Err(format!(
                "docker-registry exited during startup ({status}); log:\n{}",
                self.log()
            ));
        }
        if !ready {
            self.stop();
            return Err(format!(
                "docker-registry on port {port} not answering GET /v2/ within {READY_TIMEOUT:?}; log:\n{}",
                self.log()
            ));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, the form skopeo and image references want.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn storage_dir(&self) -> &Path {
        match &self.storage {
            Storage::Owned(d) => d.path(),
            Storage::Shared(p) => p,
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Same port, same storage, same auth; the log keeps growing across restarts.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("registry restart on the same port failed: {e}");
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Requests seen so far, from distribution's combined-format access log
    /// (`... "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 ...`). That log covers
    /// every request including 401s, unlike the app-level "response completed" lines.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(m, p, _)| m == method && p.contains(path_contains))
            .count()
    }

    /// (method, path+query, status) for each access-log line, in order.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.log().lines().filter_map(parse_access_line).collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse_access_line(line: &str) -> Option<(String, String, u16)> {
    // 127.0.0.1 - - [23/Nov/2026:03:04:10 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
    let rest = &line[line.find("] \"")? + 3..];
    let (request, after) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = after.split_whitespace().next()?.parse().ok()?;
    Some((method, path, status))
}

/// Any HTTP status line counts as ready: with auth on, `/v2/` answers 401.
fn answers_http(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

fn render_config(port: u16, storage: &Path, auth: &RegistryAuth, workdir: &Path) -> String {
    let auth_yaml = match auth {
        RegistryAuth::None => String::new(),
        RegistryAuth::Htpasswd { user, password } => {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd (apt-get install -y apache2-utils)");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let path = workdir.join("htpasswd");
            std::fs::write(&path, &out.stdout).expect("write htpasswd file");
            format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                path.display()
            )
        }
        RegistryAuth::Token {
            realm,
            service,
            issuer,
            root_cert_pem_path,
        } => format!(
            "auth:\n  token:\n    realm: \"{realm}\"\n    service: \"{service}\"\n    issuer: \"{issuer}\"\n    rootcertbundle: {}\n",
            root_cert_pem_path.display()
        ),
    };
    format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: berth-test-secret
{auth_yaml}",
        storage = storage.display()
    )
}
