//! Operations: Prometheus metrics and health endpoints, config reload (SIGHUP) during a
//! pull, graceful SIGTERM, the FROM-scratch container image, and the deployment files
//! (docker/compose.yaml, deploy/kubernetes/*.yaml) checked against berth and the API schema.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::digest::{Context, SHA256};
use serde_yaml_ng::Value;

use support::berth::Berth;
use support::image::{push_image, read_oci_layout, skopeo_copy_to_oci, ImageSpec, TestImage};
use support::registry::{Registry, RegistryAuth};

const GOOD: &str = "LICENSE-good-0001";
const DOOMED: &str = "LICENSE-doomed-0001";
const VENDOR: &str = "vendor";
const HOST: &str = "upstream.test";
const MIB: u64 = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

// ---- fixtures -------------------------------------------------------------------------

/// What varies between the tests' berth configs.
struct Cfg<'a> {
    port: u16,
    admin: Option<u16>,
    cache: &'a Path,
    upstream_url: String,
    /// Upstream password written literally into the YAML, so a reload can change it (an
    /// `${ENV}` reference is fixed at process start).
    password: Option<String>,
    doomed_revoked: bool,
    shutdown_timeout: &'a str,
}

impl<'a> Cfg<'a> {
    fn new(cache: &'a Path, upstream_url: String) -> Cfg<'a> {
        Cfg {
            port: support::free_port(),
            admin: Some(support::free_port()),
            cache,
            upstream_url,
            password: None,
            doomed_revoked: false,
            shutdown_timeout: "30s",
        }
    }

    fn yaml(&self) -> String {
        let port = self.port;
        let mut y = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n  shutdown_timeout: {}\n",
            self.shutdown_timeout
        );
        if let Some(a) = self.admin {
            y.push_str(&format!("  admin_listen: \"127.0.0.1:{a}\"\n"));
        }
        y.push_str(&format!(
            "cache: {{ dir: \"{}\" }}\nupstreams:\n  - name: vendor-registry\n    url: \"{}\"\n    host: {HOST}\n",
            self.cache.display(),
            self.upstream_url
        ));
        if let Some(p) = &self.password {
            y.push_str(&format!("    username: {VENDOR}\n    password: \"{p}\"\n"));
        }
        y.push_str(&format!(
            "apps:\n  - {{ slug: acme, upstreams: [vendor-registry] }}\nlicenses:\n  - {{ id: {GOOD}, app: acme, customer: Good }}\n  - {{ id: {DOOMED}, app: acme, customer: Doomed, revoked: {} }}\n",
            self.doomed_revoked
        ));
        y
    }

    fn start(&self) -> Berth {
        Berth::start_on(self.port, &self.yaml(), &[])
    }
}

fn secret(prefix: &str) -> String {
    let mut b = [0u8; 10];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    format!("{prefix}-{}", support::hex(&b))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn license(id: &str) -> String {
    basic(id, id)
}

fn proxied(repo: &str) -> String {
    format!("/v2/proxy/acme/{HOST}/{repo}")
}

fn htpasswd_registry(password: &str) -> Registry {
    Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: password.into(),
    })
}

fn push(reg: &Registry, password: Option<&str>, repo: &str, sizes: &[u64], seed: u64) -> TestImage {
    push_image(
        reg,
        password.map(|p| (VENDOR, p)),
        repo,
        "v1",
        &ImageSpec {
            layer_sizes: sizes.to_vec(),
            seed,
        },
    )
}

/// Pulls `repo:v1` through berth with skopeo and checks every blob hashes to its name and
/// the manifest is the pushed one.
fn pull_through(b: &Berth, img: &TestImage, license: &str) {
    let dest = support::tempdir();
    let src = format!(
        "docker://127.0.0.1:{}/proxy/acme/{HOST}/{}:v1",
        b.port, img.repo
    );
    let out = skopeo_copy_to_oci(
        &src,
        Some(&format!("{license}:{license}")),
        dest.path(),
        &["--preserve-digests"],
    );
    assert!(
        out.status.success(),
        "skopeo pull of {src} failed: {}\nberth log tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&b.logs(), 30)
    );
    let got = read_oci_layout(dest.path());
    assert_eq!(
        got.manifest_digest, img.manifest_digest,
        "pulled another manifest"
    );
    for (d, _) in &img.layers {
        assert!(
            got.blob_digests.contains(d),
            "layer {d} missing from the pull"
        );
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Replaces the config atomically (write + rename), so the 2 s file watch can never read a
/// half-written file and log a spurious refusal.
fn write_config(path: &Path, yaml: &str) {
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, yaml).expect("write new config");
    std::fs::rename(&tmp, path).expect("rename new config into place");
}

/// Replaces the config keeping its size and mtime, so the 2 s file watch sees no change and
/// only a SIGHUP can make berth read it. `yaml` may not be longer than the current file.
fn write_config_unseen(path: &Path, yaml: &str) {
    let meta = std::fs::metadata(path).unwrap();
    let len = meta.len() as usize;
    assert!(yaml.len() <= len, "new config longer than the old one");
    let mut text = yaml.to_string();
    if text.len() < len {
        text.push_str(&"#".repeat(len - text.len() - 1));
        text.push('\n');
    }
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, &text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(meta.modified()?))
        .expect("reset the config's mtime");
    std::fs::rename(&tmp, path).unwrap();
    let now = std::fs::metadata(path).unwrap();
    assert_eq!(
        (now.len(), now.modified().ok()),
        (meta.len(), meta.modified().ok())
    );
}

/// Waits (bounded) for the berth log to hold more than `before` lines containing `needle`.
fn wait_log(b: &Berth, needle: &str, before: usize, timeout: Duration) -> bool {
    support::wait_until(timeout, || b.logs().matches(needle).count() > before)
}

// ---- raw HTTP -------------------------------------------------------------------------

type Headers = Vec<(String, String)>;

struct Resp {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_head(raw: &[u8]) -> Option<(u16, Headers, usize)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, split))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

/// One HTTP/1.1 request with `Connection: close`, read to the end (bounded by IO_TIMEOUT).
fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let (status, headers, split) =
        parse_head(&raw).ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(&raw[split..])
    } else {
        raw[split..].to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    try_http(port, method, path, headers)
        .unwrap_or_else(|e| panic!("{method} 127.0.0.1:{port}{path}: {e}"))
}

/// A blob download read at the test's pace, hashing as it goes: the pull "in flight".
struct Download {
    s: TcpStream,
    hash: Context,
    got: u64,
    len: u64,
}

impl Download {
    fn start(port: u16, path: &str, auth: &str) -> Download {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to berth");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).expect("read the blob's response head");
            assert!(n > 0, "berth closed before the response head");
            head.extend_from_slice(&buf[..n]);
            if let Some((status, headers, split)) = parse_head(&head) {
                assert_eq!(status, 200, "blob GET: {}", String::from_utf8_lossy(&head));
                let len = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .expect("blob response without Content-Length");
                let mut d = Download {
                    s,
                    hash: Context::new(&SHA256),
                    got: 0,
                    len,
                };
                d.hash.update(&head[split..]);
                d.got = (head.len() - split) as u64;
                return d;
            }
        }
    }

    /// Reads at least `n` more bytes (fewer at the end of the body).
    fn read(&mut self, n: u64) {
        let target = (self.got + n).min(self.len);
        let mut buf = vec![0u8; 256 * 1024];
        while self.got < target {
            let k = self.s.read(&mut buf).expect("read blob body");
            if k == 0 {
                break;
            }
            self.hash.update(&buf[..k]);
            self.got += k as u64;
        }
    }

    /// Reads to EOF; (bytes, sha256:digest).
    fn finish(mut self) -> (u64, String) {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let k = self.s.read(&mut buf).expect("read blob body");
            if k == 0 {
                break;
            }
            self.hash.update(&buf[..k]);
            self.got += k as u64;
        }
        let digest = format!("sha256:{}", support::hex(self.hash.finish().as_ref()));
        (self.got, digest)
    }
}

// ---- Prometheus text --------------------------------------------------------------------

/// The sum of every sample of `name` whose labels include all of `labels` (0 when absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let have: BTreeMap<&str, &str> = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
            sum += value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample {line:?}"));
        }
    }
    sum
}

fn scrape(admin: u16) -> String {
    let r = http(admin, "GET", "/metrics", &[]);
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "/metrics content type {:?}",
        r.header("content-type")
    );
    r.text()
}

// ---- 1. metrics -----------------------------------------------------------------------

#[test]
fn metrics_count_requests_pulls_and_cache_hits() {
    let pw = secret("pw");
    let reg = htpasswd_registry(&pw);
    let img = push(&reg, Some(&pw), "acme/app", &[MIB, 64 * 1024], 7);
    let cache = support::tempdir();
    let mut cfg = Cfg::new(cache.path(), reg.url());
    cfg.password = Some(pw.clone());
    let b = cfg.start();
    let admin = cfg.admin.unwrap();
    let blobs = img.layers.len() as f64 + 1.0; // layers and the config
    let layer_bytes: u64 = img.layers.iter().map(|(_, s)| s).sum();

    let m0 = scrape(admin);
    assert_eq!(
        metric(&m0, "berth_cache_size_bytes", &[]),
        0.0,
        "fresh cache not empty"
    );
    // A 401 counted under its route class and status.
    assert_eq!(http(b.port, "GET", "/v2/", &[]).status, 401);
    pull_through(&b, &img, GOOD);
    let m1 = scrape(admin);
    let d = |a: &str, b: &str, name: &str, labels: &[(&str, &str)]| {
        metric(b, name, labels) - metric(a, name, labels)
    };
    let req = "berth_http_requests_total";
    assert!(
        d(&m0, &m1, req, &[("route", "base"), ("status", "401")]) >= 1.0,
        "{m1}"
    );
    assert!(
        d(&m0, &m1, req, &[("route", "manifest"), ("status", "200")]) >= 1.0,
        "{m1}"
    );
    assert!(
        d(&m0, &m1, req, &[("route", "blob"), ("status", "200")]) >= blobs,
        "{m1}"
    );
    assert!(
        d(&m0, &m1, "berth_pulls_total", &[("app", "acme")]) >= 1.0,
        "{m1}"
    );
    assert!(
        d(
            &m0,
            &m1,
            "berth_http_response_bytes_total",
            &[("route", "blob")]
        ) >= layer_bytes as f64,
        "{m1}"
    );
    assert!(
        d(&m0, &m1, "berth_cache_misses_total", &[("kind", "blob")]) >= blobs,
        "{m1}"
    );
    assert!(
        d(
            &m0,
            &m1,
            "berth_cache_misses_total",
            &[("kind", "manifest")]
        ) >= 1.0,
        "{m1}"
    );
    assert!(d(&m0, &m1, "berth_cache_fills_total", &[]) >= blobs, "{m1}");
    assert!(
        metric(&m1, "berth_cache_size_bytes", &[]) >= layer_bytes as f64,
        "{m1}"
    );
    assert!(metric(&m1, "berth_cache_blobs", &[]) >= blobs, "{m1}");
    assert_eq!(metric(&m1, "berth_cache_fills_in_flight", &[]), 0.0, "{m1}");

    // The second pull comes from the cache: hits go up, misses and fills do not.
    pull_through(&b, &img, GOOD);
    let m2 = scrape(admin);
    assert!(
        d(&m1, &m2, "berth_cache_hits_total", &[("kind", "blob")]) >= blobs,
        "{m2}"
    );
    assert!(
        d(&m1, &m2, "berth_cache_hits_total", &[("kind", "manifest")]) >= 1.0,
        "{m2}"
    );
    assert_eq!(
        d(&m1, &m2, "berth_cache_misses_total", &[("kind", "blob")]),
        0.0,
        "{m2}"
    );
    assert_eq!(d(&m1, &m2, "berth_cache_fills_total", &[]), 0.0, "{m2}");
    assert!(
        d(&m1, &m2, "berth_pulls_total", &[("app", "acme")]) >= 1.0,
        "{m2}"
    );
    // Never license ids in labels (cardinality, and they are credentials).
    assert!(!m2.contains(GOOD), "a license id appears in /metrics");

    // /metrics is for operators only: not on the customer port.
    assert_ne!(http(b.port, "GET", "/metrics", &[]).status, 200);
}

/// Every request berth makes to the upstream is counted (by status) and timed: the counts
/// cover at least what the registry itself logged as answered during the pull.
#[test]
fn upstream_metrics_follow_requests_to_the_upstream() {
    let pw = secret("pw");
    let reg = htpasswd_registry(&pw);
    let img = push(&reg, Some(&pw), "acme/up", &[64 * 1024], 8);
    let cache = support::tempdir();
    let mut cfg = Cfg::new(cache.path(), reg.url());
    cfg.password = Some(pw.clone());
    let b = cfg.start();
    // The test's own push is in the registry's log too: count only what came after it.
    let before = reg.requests().len();
    pull_through(&b, &img, GOOD);
    let m = scrape(cfg.admin.unwrap());
    let up = [("upstream", "vendor-registry")];
    let upstream_2xx = reg
        .requests()
        .iter()
        .skip(before)
        .filter(|(_, p, s)| p.starts_with("/v2/acme/up/") && *s < 300)
        .count();
    assert!(upstream_2xx > 0, "the registry saw no successful pull");
    assert!(
        metric(&m, "berth_upstream_requests_total", &up) >= upstream_2xx as f64,
        "the registry answered {upstream_2xx} requests, berth_upstream_requests_total says:\n{m}"
    );
    assert!(
        metric(&m, "berth_upstream_request_duration_seconds_count", &up) >= upstream_2xx as f64,
        "no upstream latency observations:\n{m}"
    );
}

// ---- 2. health ------------------------------------------------------------------------

/// Undoes `chattr +i` even when an assertion fails, so the temp dir can be removed.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

fn readyz(admin: u16, query: &str) -> (u16, serde_json::Value) {
    let r = http(admin, "GET", &format!("/readyz{query}"), &[]);
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("/readyz{query} is not JSON ({e}): {}", r.text()));
    (r.status, v)
}

#[test]
fn readyz_fails_while_the_cache_is_not_writable() {
    let cache = support::tempdir();
    // Nothing listens on port 1: the upstream check must fail, the plain one must not care.
    let cfg = Cfg::new(cache.path(), "http://127.0.0.1:1".into());
    let b = cfg.start();
    let admin = cfg.admin.unwrap();
    let tmp = cache.path().join("tmp");
    assert!(tmp.is_dir(), "berth did not create {}", tmp.display());

    let (s, v) = readyz(admin, "");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["checks"]["cache"], "ok", "{v}");
    assert_eq!(http(admin, "GET", "/healthz", &[]).status, 200);
    let (s, v) = readyz(admin, "?upstreams=1");
    assert_eq!(
        s, 503,
        "an unreachable upstream must make ?upstreams=1 fail: {v}"
    );
    let up = &v["checks"]["upstreams"]["vendor-registry"];
    assert!(up.is_string() && up != "ok", "{v}");

    // Tests run as root, which ignores permission bits, so chmod cannot make the directory
    // unwritable. Replacing <cache.dir>/tmp with a regular file makes every create under it
    // fail with ENOTDIR whoever we are.
    let aside = cache.path().join("tmp.aside");
    std::fs::rename(&tmp, &aside).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let (s, v) = readyz(admin, "");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["status"], "not ready", "{v}");
    assert!(
        v["checks"]["cache"]
            .as_str()
            .is_some_and(|c| c.contains("not writable")),
        "{v}"
    );
    // Liveness is not readiness: the process still answers.
    assert_eq!(http(admin, "GET", "/healthz", &[]).status, 200);
    std::fs::remove_file(&tmp).unwrap();
    std::fs::rename(&aside, &tmp).unwrap();
    let (s, v) = readyz(admin, "");
    assert_eq!(s, 200, "ready again once the cache is writable: {v}");

    // Where the filesystem supports it, the immutable attribute is the real thing: it
    // stops root too (EPERM on create), unlike chmod.
    let set = Command::new("chattr")
        .arg("+i")
        .arg(&tmp)
        .stderr(Stdio::null())
        .status();
    if set.is_ok_and(|s| s.success()) {
        let guard = Immutable(tmp.clone());
        let (s, v) = readyz(admin, "");
        assert_eq!(s, 503, "immutable tmp dir: {v}");
        drop(guard);
        let (s, v) = readyz(admin, "");
        assert_eq!(s, 200, "{v}");
    } else {
        eprintln!("SKIP (part): chattr +i unsupported on this filesystem");
    }

    // Without an admin listener the probes answer on the customer port, /metrics does not.
    let cache2 = support::tempdir();
    let mut cfg2 = Cfg::new(cache2.path(), "http://127.0.0.1:1".into());
    cfg2.admin = None;
    let b2 = cfg2.start();
    assert_eq!(http(b2.port, "GET", "/healthz", &[]).status, 200);
    assert_eq!(http(b2.port, "GET", "/readyz", &[]).status, 200);
    assert_ne!(http(b2.port, "GET", "/metrics", &[]).status, 200);
    drop((b, b2));
}

// ---- 3. reload --------------------------------------------------------------------------

#[test]
fn sighup_during_a_large_pull_revokes_and_rotates_credentials() {
    let (pw1, pw2) = (secret("old"), secret("new"));
    let mut reg = htpasswd_registry(&pw1);
    let big = push(&reg, Some(&pw1), "acme/big", &[200 * MIB], 21);
    let small = push(&reg, Some(&pw1), "acme/small", &[256 * 1024], 22);
    let cache = support::tempdir();
    let mut cfg = Cfg::new(cache.path(), reg.url());
    cfg.password = Some(pw1.clone());
    let b = cfg.start();
    let (digest, size) = big.layers[0].clone();

    // The doomed license starts a 200 MiB pull and reads 8 MiB of it.
    let mut dl = Download::start(
        b.port,
        &format!("{}/blobs/{digest}", proxied("acme/big")),
        &license(DOOMED),
    );
    assert_eq!(dl.len, size);
    dl.read(8 * MIB);
    // The fill does not wait for this slow client: once the blob is in the cache the
    // upstream can go away without breaking the pull.
    let cached = cache.path().join("sha256").join(&digest["sha256:".len()..]);
    assert!(
        support::wait_until(Duration::from_secs(60), || cached.is_file()),
        "the 200 MiB fill did not complete while the client stalled; log:\n{}",
        tail(&b.logs(), 20)
    );

    // The vendor rotates the upstream password: the registry restarts on the same storage
    // with a new htpasswd, which refuses the old password.
    let out = Command::new("htpasswd")
        .args(["-Bbn", VENDOR, &pw2])
        .output()
        .expect("run htpasswd");
    assert!(out.status.success());
    let htpasswd = reg.config_path().parent().unwrap().join("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).unwrap();
    reg.restart();
    assert_eq!(
        http(
            reg.port,
            "GET",
            "/v2/",
            &[("Authorization", &basic(VENDOR, &pw1))]
        )
        .status,
        401
    );
    assert_eq!(
        http(
            reg.port,
            "GET",
            "/v2/",
            &[("Authorization", &basic(VENDOR, &pw2))]
        )
        .status,
        200
    );
    let restarted_at = reg.requests().len();

    // ...and the operator revokes a license and installs the new password, then SIGHUPs.
    // The file keeps its size and mtime, so this reload can only come from the signal.
    let reloaded = b.logs().matches("configuration reloaded").count();
    cfg.password = Some(pw2.clone());
    cfg.doomed_revoked = true;
    write_config_unseen(&b.config_path, &cfg.yaml());
    b.sighup();
    assert!(
        wait_log(
            &b,
            "configuration reloaded",
            reloaded,
            Duration::from_secs(10)
        ),
        "no reload logged; log:\n{}",
        tail(&b.logs(), 20)
    );
    assert!(
        dl.got < size,
        "the pull was not in flight during the reload"
    );

    // The pull in flight finishes whole, with the config it started with.
    let (got, got_digest) = dl.finish();
    assert_eq!(got, size, "short body after the reload");
    assert_eq!(got_digest, digest, "wrong bytes after the reload");

    // The revoked license is refused from now on, on every route.
    assert_eq!(
        http(
            b.port,
            "GET",
            "/v2/",
            &[("Authorization", &license(DOOMED))]
        )
        .status,
        401
    );
    let r = http(
        b.port,
        "GET",
        &format!("{}/manifests/v1", proxied("acme/small")),
        &[("Authorization", &license(DOOMED))],
    );
    assert_eq!(
        r.status,
        401,
        "revoked license got {}: {}",
        r.status,
        r.text()
    );

    // A new, uncached pull goes upstream with the new password: the restarted registry
    // refuses the old one, so only pw2 can have produced these 200s.
    pull_through(&b, &small, GOOD);
    let ok_after: Vec<_> = reg.requests()[restarted_at..]
        .iter()
        .filter(|(m, p, s)| m == "GET" && p.contains("/acme/small/") && *s == 200)
        .cloned()
        .collect();
    assert!(
        !ok_after.is_empty(),
        "registry saw no authorized request for acme/small after the rotation: {:?}",
        &reg.requests()[restarted_at..]
    );

    // An invalid file (unknown key) is refused with a log line; the running config stays:
    // the license it would un-revoke stays revoked and the good one keeps pulling.
    let refused = b.logs().matches("reload refused").count();
    cfg.doomed_revoked = false;
    let bad = cfg
        .yaml()
        .replacen("server:\n", "server:\n  no_such_key: 1\n", 1);
    write_config(&b.config_path, &bad);
    b.sighup();
    assert!(
        wait_log(&b, "reload refused", refused, Duration::from_secs(10)),
        "invalid config not refused in the log:\n{}",
        tail(&b.logs(), 20)
    );
    assert!(
        b.logs().contains("no_such_key"),
        "the refusal does not name the key"
    );
    assert_eq!(
        http(
            b.port,
            "GET",
            "/v2/",
            &[("Authorization", &license(DOOMED))]
        )
        .status,
        401
    );
    assert_eq!(
        http(b.port, "GET", "/v2/", &[("Authorization", &license(GOOD))]).status,
        200
    );
    let r = http(
        b.port,
        "GET",
        &format!("{}/manifests/v1", proxied("acme/small")),
        &[
            ("Authorization", &license(GOOD)),
            ("Accept", support::image::MANIFEST_MEDIA_TYPE),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---- 4. SIGTERM -------------------------------------------------------------------------

#[test]
fn sigterm_lets_the_pull_in_flight_finish_then_exits_0() {
    let reg = Registry::start(RegistryAuth::None);
    let img = push(&reg, None, "acme/mid", &[48 * MIB], 31);
    let (digest, size) = img.layers[0].clone();
    let cache = support::tempdir();
    let mut cfg = Cfg::new(cache.path(), reg.url());
    cfg.shutdown_timeout = "20s";
    let mut b = cfg.start();
    let admin = cfg.admin.unwrap();

    let mut dl = Download::start(
        b.port,
        &format!("{}/blobs/{digest}", proxied("acme/mid")),
        &license(GOOD),
    );
    dl.read(MIB);
    let t = Instant::now();
    b.sigterm();
    // New connections are refused once the listener is closed; the pull keeps going.
    let refused = support::wait_until(Duration::from_secs(5), || {
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], b.port)),
            Duration::from_millis(200),
        )
        .is_err()
    });
    assert!(refused, "berth still accepts connections 5 s after SIGTERM");
    assert!(
        b.wait_exit(Duration::ZERO).is_none(),
        "berth exited with a pull in flight"
    );
    assert!(
        try_http(admin, "GET", "/healthz", &[]).is_err(),
        "the admin listener still answers after SIGTERM"
    );
    let (got, got_digest) = dl.finish();
    assert_eq!(got, size, "pull cut short by SIGTERM");
    assert_eq!(got_digest, digest);
    let status = b
        .wait_exit(Duration::from_secs(10))
        .expect("berth did not exit after its last pull finished");
    assert!(status.success(), "berth exited with {status}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "exit took {:?}: berth waited for the deadline instead of the pull",
        t.elapsed()
    );
    assert!(b.logs().contains("SIGTERM received"), "{}", b.logs());
}

#[test]
fn sigterm_closes_a_stalled_pull_at_shutdown_timeout() {
    let reg = Registry::start(RegistryAuth::None);
    let img = push(&reg, None, "acme/stall", &[32 * MIB], 41);
    let (digest, _) = img.layers[0].clone();
    let cache = support::tempdir();
    let mut cfg = Cfg::new(cache.path(), reg.url());
    cfg.shutdown_timeout = "2s";
    let mut b = cfg.start();
    // A client that reads the head and then nothing: socket buffers fill, berth blocks.
    let dl = Download::start(
        b.port,
        &format!("{}/blobs/{digest}", proxied("acme/stall")),
        &license(GOOD),
    );
    let t = Instant::now();
    b.sigterm();
    let status = b
        .wait_exit(Duration::from_secs(15))
        .expect("berth did not exit after shutdown_timeout with a stalled client");
    let took = t.elapsed();
    assert!(status.success(), "berth exited with {status}");
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}: did not wait for the pull in flight"
    );
    assert!(
        b.logs().contains("shutdown deadline passed"),
        "{}",
        tail(&b.logs(), 10)
    );
    // The stalled client gets a cut body, never a complete-looking one.
    let (got, _) = dl.finish();
    assert!(got < 32 * MIB, "the stalled client got the whole blob");
}

// ---- 5. container image -----------------------------------------------------------------

fn run(secs: u32, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the container (with its anonymous cache volume) and the image, pass or fail.
struct DockerCleanup {
    container: String,
    image: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let _ = run(60, "docker", &["rm", "-f", "-v", &self.container]);
        let _ = run(60, "docker", &["rmi", "-f", &self.image]);
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn scratch_image_builds_offline_and_serves_health() {
    if !run(30, "docker", &["info"]).status.success() {
        eprintln!("SKIP: no Docker engine (docker info failed)");
        return;
    }
    let id = std::process::id();
    let cleanup = DockerCleanup {
        container: format!("berth-ops-test-{id}"),
        image: format!("berth-ops-test:{id}"),
    };
    // The test's own debug binary: same libraries as a release build, no second compile.
    let built = ok(
        &run(
            300,
            repo_root().join("docker/build-image.sh").to_str().unwrap(),
            &["-b", env!("CARGO_BIN_EXE_berth"), "-t", &cleanup.image],
        ),
        "docker/build-image.sh",
    );
    assert_eq!(built.lines().last(), Some(cleanup.image.as_str()));
    let inspect = ok(
        &run(
            30,
            "docker",
            &[
                "image",
                "inspect",
                "-f",
                "{{.Config.User}} {{json .Config.Entrypoint}}",
                &cleanup.image,
            ],
        ),
        "docker image inspect",
    );
    assert_eq!(inspect, "65532:65532 [\"/usr/local/bin/berth\"]");

    // The config directory is bind-mounted read-only like compose.yaml does; it must be
    // readable by uid 65532.
    let conf = support::tempdir();
    let (port, admin) = (support::free_port(), support::free_port());
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  shutdown_timeout: 5s\ncache: {{ dir: /var/lib/berth }}\nupstreams: [ {{ name: up, url: \"http://127.0.0.1:1\", host: {HOST} }} ]\napps: [ {{ slug: acme, upstreams: [up] }} ]\nlicenses: [ {{ id: {GOOD}, app: acme, customer: Good }} ]\n"
    );
    std::fs::write(conf.path().join("berth.yaml"), yaml).unwrap();
    Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(conf.path())
        .status()
        .unwrap();
    let mount = format!("{}:/etc/berth:ro", conf.path().display());
    ok(
        &run(
            60,
            "docker",
            &[
                "run",
                "-d",
                "--name",
                &cleanup.container,
                "--network",
                "host",
                "--read-only",
                "-v",
                &mount,
                &cleanup.image,
            ],
        ),
        "docker run",
    );
    let healthy = support::wait_until(Duration::from_secs(30), || {
        try_http(admin, "GET", "/healthz", &[]).is_ok_and(|r| r.status == 200)
    });
    let logs = || {
        let o = run(30, "docker", &["logs", &cleanup.container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(
        healthy,
        "/healthz never answered from the container; logs:\n{}",
        logs()
    );
    // Ready means the cache volume (seeded from the image, owned by 65532) is writable by
    // the non-root user on a read-only root filesystem.
    let r = http(admin, "GET", "/readyz", &[]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), logs());
    assert_eq!(http(port, "GET", "/v2/", &[]).status, 401);
    assert_eq!(
        http(port, "GET", "/v2/", &[("Authorization", &license(GOOD))]).status,
        200
    );
    // berth is PID 1 in the container: SIGTERM from `docker stop` must still end it cleanly.
    ok(
        &run(60, "docker", &["stop", "-t", "20", &cleanup.container]),
        "docker stop",
    );
    let code = ok(
        &run(
            30,
            "docker",
            &["inspect", "-f", "{{.State.ExitCode}}", &cleanup.container],
        ),
        "docker inspect",
    );
    assert_eq!(
        code,
        "0",
        "berth's exit code in the container; logs:\n{}",
        logs()
    );
}

// ---- 6. deployment files ----------------------------------------------------------------

fn yaml_docs(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.starts_with('#'),
        "{} has no comment header",
        path.display()
    );
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            Value::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {v:?}"))
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        s(k, "label key").to_string(),
                        s(v, "label value").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn subset(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
    !a.is_empty() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// Size in bytes of a Kubernetes quantity ("100Gi") or a berth size ("80GiB").
fn bytes(q: &str) -> u64 {
    let q = q.trim_end_matches('B');
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let mult = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => panic!("unit {other:?} in {q:?}"),
    };
    n.parse::<u64>().unwrap() * mult
}

fn seconds(d: &str) -> u64 {
    d.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("duration {d:?}"))
}

/// `berth check-config` on `yaml` (TLS files replaced by empty stand-ins: the check wants
/// them to exist), with `env` set.
fn check_config(yaml: &str, env: &[(&str, &str)]) {
    let dir = support::tempdir();
    let mut yaml = yaml.to_string();
    for line in yaml.clone().lines() {
        for key in ["cert:", "key:"] {
            if let Some(p) = line.trim().trim_start_matches("- ").strip_prefix(key) {
                let p = p.trim();
                let stand_in = dir.path().join(p.trim_start_matches('/').replace('/', "_"));
                std::fs::write(&stand_in, b"").unwrap();
                yaml = yaml.replace(p, stand_in.to_str().unwrap());
            }
        }
    }
    let path = dir.path().join("berth.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth check-config refused:\n{yaml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifests_match_the_api_schema_and_berth() {
    let dir = repo_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs: Vec<(String, Value)> = Vec::new();
    for f in &files {
        for d in yaml_docs(f) {
            docs.push((f.file_name().unwrap().to_string_lossy().into_owned(), d));
        }
    }
    let known: BTreeMap<&str, &str> = [
        ("Namespace", "v1"),
        ("ConfigMap", "v1"),
        ("Secret", "v1"),
        ("PersistentVolumeClaim", "v1"),
        ("Service", "v1"),
        ("Deployment", "apps/v1"),
        (
            "MutatingWebhookConfiguration",
            "admissionregistration.k8s.io/v1",
        ),
        ("Kustomization", "kustomize.config.k8s.io/v1beta1"),
    ]
    .into();
    let cluster_scoped = ["Namespace", "MutatingWebhookConfiguration", "Kustomization"];
    let mut by_kind: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for (file, d) in &docs {
        let kind = s(&d["kind"], &format!("{file}: kind"));
        let api = s(&d["apiVersion"], &format!("{file}: apiVersion"));
        assert_eq!(
            known.get(kind),
            Some(&api),
            "{file}: unexpected {api} {kind}"
        );
        if kind != "Kustomization" {
            let name = s(&d["metadata"]["name"], &format!("{file}: metadata.name"));
            assert!(
                !name.is_empty()
                    && name.len() <= 63
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{file}: metadata.name {name:?} is not a DNS label"
            );
            if !cluster_scoped.contains(&kind) {
                assert_eq!(
                    d["metadata"]["namespace"], "berth",
                    "{file}: {kind} {name} namespace"
                );
            }
        }
        by_kind.entry(kind.to_string()).or_default().push(d);
    }
    let one = |kind: &str| -> &Value {
        let v = by_kind.get(kind).unwrap_or_else(|| panic!("no {kind}"));
        assert_eq!(v.len(), 1, "expected one {kind}");
        v[0]
    };
    let names = |kind: &str| -> BTreeSet<String> {
        by_kind
            .get(kind)
            .map(|v| {
                v.iter()
                    .map(|d| s(&d["metadata"]["name"], "name").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };

    // The Kustomization lists exactly the other files.
    let kust = one("Kustomization");
    let listed: BTreeSet<String> = seq(&kust["resources"], "resources")
        .iter()
        .map(|r| s(r, "resource").to_string())
        .collect();
    let others: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, others, "kustomization.yaml resources");

    // The ConfigMap's berth.yaml is a config berth accepts, with the Secret's variables.
    let cm = one("ConfigMap");
    let berth_yaml = s(&cm["data"]["berth.yaml"], "ConfigMap data.berth.yaml");
    let secret = one("Secret");
    assert!(
        matches!(s(&secret["type"], "Secret type"), "Opaque"),
        "Secret type"
    );
    let secret_keys: BTreeSet<String> = secret["stringData"]
        .as_mapping()
        .or(secret["data"].as_mapping())
        .expect("Secret without data")
        .keys()
        .map(|k| s(k, "Secret key").to_string())
        .collect();
    let mut env: Vec<(&str, &str)> = Vec::new();
    for var in berth_yaml
        .split("${")
        .skip(1)
        .filter_map(|r| r.split_once('}'))
        .map(|(v, _)| v)
    {
        assert!(
            secret_keys.contains(var),
            "${{{var}}} in berth.yaml is not in the Secret"
        );
        env.push((var, "x"));
    }
    check_config(berth_yaml, &env);
    let config: Value = serde_yaml_ng::from_str(berth_yaml).unwrap();
    let port_of = |addr: &Value| -> u64 {
        s(addr, "address")
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };

    // Deployment: selector, probes, ports, security, volumes, grace period.
    let dep = one("Deployment");
    let spec = &dep["spec"];
    let selector = labels(&spec["selector"]["matchLabels"]);
    let pod_labels = labels(&spec["template"]["metadata"]["labels"]);
    assert!(
        subset(&selector, &pod_labels),
        "Deployment selector does not match the template labels"
    );
    let pod = &spec["template"]["spec"];
    let containers = seq(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    s(&c["name"], "container name");
    s(&c["image"], "container image");
    let ports: BTreeMap<String, u64> = seq(&c["ports"], "ports")
        .iter()
        .map(|p| {
            (
                s(&p["name"], "port name").to_string(),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect();
    assert_eq!(
        ports.get("registry"),
        Some(&port_of(&config["server"]["listen"])),
        "registry port vs server.listen"
    );
    assert_eq!(
        ports.get("admin"),
        Some(&port_of(&config["server"]["admin_listen"])),
        "admin port vs server.admin_listen"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(s(&get["path"], probe), path, "{probe} path");
        let port = s(&get["port"], probe);
        assert_eq!(port, "admin", "{probe} must use the admin listener");
        assert!(
            ports.contains_key(port),
            "{probe} port {port} is not a container port"
        );
    }
    let args: Vec<&str> = seq(&c["args"], "args")
        .iter()
        .map(|a| s(a, "arg"))
        .collect();
    let config_path = args[args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config")
        + 1];
    let mounts = seq(&c["volumeMounts"], "volumeMounts");
    let volumes: BTreeMap<&str, &Value> = seq(&pod["volumes"], "volumes")
        .iter()
        .map(|v| (s(&v["name"], "volume name"), v))
        .collect();
    let mut mount_of = BTreeMap::new();
    for m in mounts {
        let name = s(&m["name"], "mount name");
        assert!(volumes.contains_key(name), "mount {name} has no volume");
        mount_of.insert(name, s(&m["mountPath"], "mountPath"));
    }
    let cm_volume = volumes
        .values()
        .find(|v| v["configMap"]["name"] == cm["metadata"]["name"])
        .expect("ConfigMap not mounted");
    let cm_dir = mount_of[s(&cm_volume["name"], "name")];
    assert_eq!(
        config_path,
        format!("{cm_dir}/berth.yaml"),
        "--config is not the mounted ConfigMap"
    );
    assert!(
        mounts.iter().all(|m| m["subPath"].is_null()),
        "subPath mounts are never updated, so the config would not reload"
    );
    let pvc_volume = volumes
        .values()
        .find(|v| v["persistentVolumeClaim"].is_mapping())
        .expect("no PVC volume");
    let claim = s(
        &pvc_volume["persistentVolumeClaim"]["claimName"],
        "claimName",
    );
    assert!(
        names("PersistentVolumeClaim").contains(claim),
        "claim {claim} is not defined"
    );
    assert_eq!(
        mount_of[s(&pvc_volume["name"], "name")],
        s(&config["cache"]["dir"], "cache.dir"),
        "the cache volume is not at cache.dir"
    );
    for tls in seq(&config["server"]["tls"], "server.tls") {
        for f in ["cert", "key"] {
            let p = s(&tls[f], "tls file");
            assert!(
                mount_of.values().any(|m| p.starts_with(&format!("{m}/"))),
                "{p} is on no mounted volume"
            );
        }
    }
    let env_secret = s(&c["envFrom"][0]["secretRef"]["name"], "envFrom secret");
    assert!(
        names("Secret").contains(env_secret),
        "envFrom secret {env_secret} undefined"
    );
    // Security: non-root, read-only root filesystem, no privilege escalation.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"]
        .as_u64()
        .is_some_and(|u| u > 0));
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    // SIGTERM grace: preStop sleep + shutdown_timeout must fit before SIGKILL.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let shutdown = seconds(s(&config["server"]["shutdown_timeout"], "shutdown_timeout"));
    assert!(
        grace > pre_stop + shutdown,
        "grace {grace}s <= preStop {pre_stop}s + shutdown_timeout {shutdown}s"
    );

    // The PVC holds at least cache.max_size.
    let pvc = one("PersistentVolumeClaim");
    assert!(!seq(&pvc["spec"]["accessModes"], "accessModes").is_empty());
    let storage = bytes(s(
        &pvc["spec"]["resources"]["requests"]["storage"],
        "storage",
    ));
    assert!(
        storage > bytes(s(&config["cache"]["max_size"], "cache.max_size")),
        "PVC smaller than cache.max_size"
    );

    // Services select the pod and target ports it has.
    let services = by_kind.get("Service").expect("no Service");
    for svc in services {
        assert!(
            subset(&labels(&svc["spec"]["selector"]), &pod_labels),
            "Service selector matches no pod"
        );
        for p in seq(&svc["spec"]["ports"], "ports") {
            assert!(p["port"].as_u64().is_some());
            let t = s(&p["targetPort"], "targetPort");
            assert!(
                ports.contains_key(t),
                "targetPort {t} is not a container port"
            );
        }
    }

    // The webhook: the fields the v1 API requires, and berth's endpoint.
    let wh = one("MutatingWebhookConfiguration");
    for w in seq(&wh["webhooks"], "webhooks") {
        let name = s(&w["name"], "webhook name");
        assert!(
            name.split('.').count() >= 3,
            "webhook name {name} must be fully qualified"
        );
        assert_eq!(
            seq(&w["admissionReviewVersions"], "admissionReviewVersions"),
            &vec![Value::from("v1")]
        );
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["failurePolicy"], "Ignore");
        assert_eq!(w["reinvocationPolicy"], "IfNeeded");
        assert!(w["namespaceSelector"].is_mapping(), "no namespaceSelector");
        assert!(w["timeoutSeconds"]
            .as_u64()
            .is_some_and(|t| (1..=30).contains(&t)));
        let cc = &w["clientConfig"];
        assert!(
            cc["url"].is_null(),
            "clientConfig: service and url are exclusive"
        );
        STANDARD
            .decode(s(&cc["caBundle"], "caBundle"))
            .expect("caBundle is not base64");
        let svc_ref = &cc["service"];
        assert_eq!(svc_ref["path"], "/admission/rewrite");
        let svc = services
            .iter()
            .find(|d| {
                d["metadata"]["name"] == svc_ref["name"]
                    && d["metadata"]["namespace"] == svc_ref["namespace"]
            })
            .expect("webhook service is not defined");
        // /admission/rewrite is served only on server.webhook_listen: the Service port the
        // API server calls must lead to that container port, and no customer-facing port
        // may be that Service.
        let webhook_port = seq(&svc["spec"]["ports"], "ports")
            .iter()
            .find(|p| p["port"] == svc_ref["port"])
            .map(|p| s(&p["targetPort"], "targetPort"))
            .expect("the webhook's Service has no such port");
        assert_eq!(
            ports.get(webhook_port),
            Some(&port_of(&config["server"]["webhook_listen"])),
            "the webhook port {webhook_port} is not server.webhook_listen"
        );
        assert!(
            seq(&svc["spec"]["ports"], "ports")
                .iter()
                .all(|p| p["targetPort"] != "registry"),
            "the webhook Service also exposes the customer listener"
        );
        // Every resource is a kind berth knows where to find the pod spec in.
        let berth_kinds = [
            "pods",
            "deployments",
            "statefulsets",
            "daemonsets",
            "replicasets",
            "replicationcontrollers",
            "jobs",
            "cronjobs",
            "podtemplates",
        ];
        let mut resources = BTreeSet::new();
        for r in seq(&w["rules"], "rules") {
            for op in seq(&r["operations"], "operations") {
                assert!(["CREATE", "UPDATE", "DELETE", "CONNECT", "*"].contains(&s(op, "op")));
            }
            seq(&r["apiGroups"], "apiGroups");
            seq(&r["apiVersions"], "apiVersions");
            for res in seq(&r["resources"], "resources") {
                let res = s(res, "resource");
                assert!(berth_kinds.contains(&res), "berth cannot rewrite {res}");
                resources.insert(res);
            }
        }
        assert!(resources.contains("pods"), "pods are not rewritten");
    }
}

#[test]
fn compose_file_runs_the_image_as_documented() {
    let docker = repo_root().join("docker");
    let compose = &yaml_docs(&docker.join("compose.yaml"))[0];
    let svc = &compose["services"]["berth"];
    assert_eq!(svc["restart"], "unless-stopped");
    assert_eq!(svc["read_only"], true);
    let volumes: Vec<&str> = seq(&svc["volumes"], "volumes")
        .iter()
        .map(|v| s(v, "volume"))
        .collect();
    assert!(
        volumes.iter().any(|v| v.ends_with(":/etc/berth:ro")),
        "config not mounted read-only: {volumes:?}"
    );
    let cache_vol = volumes
        .iter()
        .find(|v| v.ends_with(":/var/lib/berth"))
        .expect("no cache volume");
    let named = cache_vol.split(':').next().unwrap();
    assert!(
        compose["volumes"][named].is_mapping(),
        "cache volume {named} is not a named volume"
    );
    let ports: Vec<&str> = seq(&svc["ports"], "ports")
        .iter()
        .map(|p| s(p, "port"))
        .collect();
    // docker/berth.yaml is what compose mounts: its listeners are the published ports and
    // berth accepts it.
    let text = std::fs::read_to_string(docker.join("berth.yaml")).unwrap();
    check_config(&text, &[("UPSTREAM_PASSWORD", "x")]);
    let config: Value = serde_yaml_ng::from_str(&text).unwrap();
    for key in ["listen", "admin_listen"] {
        let port = s(&config["server"][key], key)
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "{key} port {port} not published: {ports:?}"
        );
    }
    assert_eq!(config["cache"]["dir"], "/var/lib/berth");
    let grace = seconds(s(&svc["stop_grace_period"], "stop_grace_period"));
    let shutdown = seconds(s(&config["server"]["shutdown_timeout"], "shutdown_timeout"));
    assert!(
        grace > shutdown,
        "stop_grace_period {grace}s <= shutdown_timeout {shutdown}s"
    );
    // The image's default command reads the file compose mounts.
    let dockerfile = std::fs::read_to_string(docker.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("FROM scratch"));
    assert!(dockerfile.contains("\"/etc/berth/berth.yaml\""));
}

// ---- readiness: the upstream check's listener, a full cache disk ----------------------

/// `?upstreams=1` makes berth send requests, with its stored credentials, to every
/// upstream. Without an admin listener `/readyz` answers on the customer port, for anyone:
/// there the query is ignored and no upstream is contacted; the admin listener still runs
/// the check.
#[test]
fn readyz_upstream_check_runs_only_on_the_admin_listener() {
    let up = support::fake::FakeServer::start(|_| support::fake::FakeResponse::new(200));
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = |admin: Option<u16>| {
        let admin = admin
            .map(|a| format!(", admin_listen: \"127.0.0.1:{a}\""))
            .unwrap_or_default();
        // Offline: no warm-up requests at start, so every upstream request is a probe's.
        format!(
            "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\"{admin} }}\n\
             cache: {{ dir: \"{}\", offline: true }}\n\
             upstreams:\n  - {{ name: vendor-registry, url: \"{}\", host: {HOST}, username: {VENDOR}, password: readyz-secret-1 }}\n\
             apps:\n  - {{ slug: acme, upstreams: [vendor-registry] }}\n\
             licenses:\n  - {{ id: {GOOD}, app: acme, customer: Good }}\n",
            cache.path().display(),
            up.url()
        )
    };
    let b = Berth::start_on(port, &yaml(None), &[]);
    for query in ["?upstreams=1", "?upstreams=1&upstreams=1", ""] {
        let r = http(port, "GET", &format!("/readyz{query}"), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["checks"].get("upstreams").is_none(), "{v}");
    }
    assert_eq!(up.request_count(), 0, "{:?}", up.requests());
    drop(b);

    let admin = support::free_port();
    let _b = Berth::start_on(port, &yaml(Some(admin)), &[]);
    let (s, v) = readyz(admin, "?upstreams=1");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["checks"]["upstreams"]["vendor-registry"], "ok", "{v}");
    assert!(up.request_count() > 0);
}

/// A full cache disk makes berth not ready, naming the cause, even while a tiny probe
/// write still succeeds; freeing space makes it ready again. Needs a small filesystem of
/// its own: a 16 MiB tmpfs (root; skipped where mounting is not allowed).
#[test]
fn readyz_fails_while_the_cache_disk_is_full() {
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let mnt = support::tempdir();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(mnt.path())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _mount = Mounted(mnt.path().to_path_buf());
    let cache = mnt.path().join("cache");
    let cfg = Cfg::new(&cache, "http://127.0.0.1:1".into());
    let b = cfg.start();
    let admin = cfg.admin.unwrap();
    let (s, v) = readyz(admin, "");
    assert_eq!(s, 200, "{v}");

    // Fill the filesystem, then give back 64 KiB: room for a probe, not for a layer.
    let filler_path = mnt.path().join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    let full = filler.metadata().unwrap().len();
    filler.set_len(full - 64 * 1024).unwrap();
    let (s, v) = readyz(admin, "");
    assert_eq!(s, 503, "64 KiB free: {v}");
    let why = v["checks"]["cache"].as_str().unwrap_or("").to_string();
    assert!(why.contains("cache disk full"), "{v}");
    // Entirely full: the probe write itself fails (ENOSPC), same verdict.
    filler.set_len(full).unwrap();
    let _ = filler.write_all(&chunk);
    let (s, v) = readyz(admin, "");
    assert_eq!(s, 503, "{v}");
    assert!(
        v["checks"]["cache"]
            .as_str()
            .is_some_and(|c| c.contains("cache disk full")),
        "{v}"
    );
    assert_eq!(http(admin, "GET", "/healthz", &[]).status, 200);
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    let (s, v) = readyz(admin, "");
    assert_eq!(s, 200, "ready again with space: {v}");
    drop(b);
}
