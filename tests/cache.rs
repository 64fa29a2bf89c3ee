//! Integration tests of berth's cache against a real docker-registry, real skopeo and a
//! fault-injecting fake upstream: single-flight fills, verification, crash recovery,
//! isolation between apps, eviction, ranges, offline mode and tag revalidation.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ring::digest::{Context, SHA256};

use support::berth::Berth;
use support::fake::{FakeBody, FakeResponse, FakeServer};
use support::image::{
    hash_file, push_image, read_oci_layout, skopeo_copy_to_oci, ImageSpec, LayoutContents,
    TestImage, MANIFEST_MEDIA_TYPE,
};
use support::registry::{Registry, RegistryAuth};

const VENDOR: &str = "vendor";
const VENDOR_PW: &str = "vendor-s3cret";
const ACME: &str = "LICENSE-good-0001";
const OTHER: &str = "LICENSE-othr-0001";
const MIB: u64 = 1 << 20;

// ---- setup -----------------------------------------------------------------------------

fn registry() -> Registry {
    Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: VENDOR_PW.into(),
    })
}

fn push(reg: &Registry, repo: &str, tag: &str, layer_sizes: &[u64], seed: u64) -> TestImage {
    push_image(
        reg,
        Some((VENDOR, VENDOR_PW)),
        repo,
        tag,
        &ImageSpec {
            layer_sizes: layer_sizes.to_vec(),
            seed,
        },
    )
}

struct Opts {
    tag_ttl: &'static str,
    max_size: Option<&'static str>,
    offline: bool,
    /// The upstreams' `timeout:` (time to a response head and between body frames).
    timeout: Option<&'static str>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            tag_ttl: "5m",
            max_size: None,
            offline: false,
            timeout: None,
        }
    }
}

fn berth_yaml(port: u16, cache: &Path, upstream_url: &str, o: &Opts) -> String {
    let max = o
        .max_size
        .map(|m| format!(", max_size: {m}"))
        .unwrap_or_default();
    let timeout = o
        .timeout
        .map(|t| format!(", timeout: {t}"))
        .unwrap_or_default();
    format!(
        r#"server: {{ listen: "127.0.0.1:{port}", hostname: "127.0.0.1:{port}" }}
cache: {{ dir: "{cache}", tag_ttl: {ttl}, offline: {offline}{max} }}
upstreams:
  - {{ name: up, url: "{upstream_url}", host: upstream.test, username: {VENDOR}, password: "${{UPSTREAM_PASSWORD}}", repositories: ["acme/*"]{timeout} }}
  - {{ name: up2, url: "{upstream_url}", host: upstream.test, username: {VENDOR}, password: "${{UPSTREAM_PASSWORD}}", repositories: ["other/*"]{timeout} }}
apps: [ {{ slug: acme, upstreams: [up] }}, {{ slug: other, upstreams: [up2] }} ]
licenses: [ {{ id: {ACME}, app: acme, customer: A }}, {{ id: {OTHER}, app: other, customer: B }} ]
"#,
        cache = cache.display(),
        ttl = o.tag_ttl,
        offline = o.offline,
    )
}

fn start_berth(cache: &Path, upstream_url: &str, o: &Opts) -> Berth {
    let port = support::free_port();
    Berth::start(
        &berth_yaml(port, cache, upstream_url, o),
        &[("UPSTREAM_PASSWORD", VENDOR_PW)],
    )
}

/// The repository path berth serves for app `app` and upstream repository `repo`.
fn proxied(app: &str, repo: &str) -> String {
    format!("proxy/{app}/upstream.test/{repo}")
}

fn blob_url(app: &str, repo: &str, digest: &str) -> String {
    format!("/v2/{}/blobs/{digest}", proxied(app, repo))
}

fn manifest_url(app: &str, repo: &str, reference: &str) -> String {
    format!("/v2/{}/manifests/{reference}", proxied(app, repo))
}

fn basic(license: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{license}:{license}"))
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// skopeo pull through berth into a fresh OCI layout; the layout's blobs are re-hashed.
fn try_pull(b: &Berth, app: &str, repo: &str, tag: &str, license: &str) -> std::process::Output {
    let dest = support::tempdir();
    let out = skopeo_copy_to_oci(
        &format!("docker://127.0.0.1:{}/{}:{tag}", b.port, proxied(app, repo)),
        Some(&format!("{license}:{license}")),
        dest.path(),
        &["--preserve-digests"],
    );
    if out.status.success() {
        // Hashes every blob and panics on a mismatch.
        read_oci_layout(dest.path());
    }
    out
}

fn pull(b: &Berth, app: &str, repo: &str, tag: &str, license: &str) -> LayoutContents {
    let dest = support::tempdir();
    let out = skopeo_copy_to_oci(
        &format!("docker://127.0.0.1:{}/{}:{tag}", b.port, proxied(app, repo)),
        Some(&format!("{license}:{license}")),
        dest.path(),
        &["--preserve-digests"],
    );
    assert!(
        out.status.success(),
        "skopeo pull of {repo}:{tag} through berth failed: {}\nberth log tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&b.logs(), 30)
    );
    read_oci_layout(dest.path())
}

fn assert_pulled(got: &LayoutContents, img: &TestImage) {
    let mut want: Vec<String> = img.layers.iter().map(|(d, _)| d.clone()).collect();
    want.push(img.config_digest.clone());
    want.push(img.manifest_digest.clone());
    want.sort();
    want.dedup();
    assert_eq!(got.manifest_digest, img.manifest_digest);
    assert_eq!(got.blob_digests, want);
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn cached_path(cache: &Path, digest: &str) -> PathBuf {
    cache.join("sha256").join(hex_of(digest))
}

fn tmp_entries(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache.join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn blob_files(cache: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(cache.join("sha256"))
        .map(|rd| {
            rd.flatten()
                // A file evicted between listing and stat simply no longer counts.
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .collect()
        })
        .unwrap_or_default()
}

fn blob_total(cache: &Path) -> u64 {
    blob_files(cache).iter().map(|(_, l)| l).sum()
}

fn assert_every_cached_blob_hashes_to_its_name(cache: &Path) {
    let files = blob_files(cache);
    for (path, _) in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(hash_file(path), name, "{} is corrupt", path.display());
    }
}

// ---- raw HTTP --------------------------------------------------------------------------

/// One HTTP/1.1 exchange over a raw socket, so a cut connection shows exactly.
struct Resp {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    /// The body, when asked to keep it (big bodies are only hashed).
    body: Vec<u8>,
    received: u64,
    sha256: String,
    /// The declared length arrived in full (or the chunked body ended properly).
    complete: bool,
    started: Instant,
    first_byte: Option<Instant>,
    ended: Instant,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length").and_then(|l| l.parse().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    keep_body: bool,
) -> std::io::Result<Resp> {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    // Bounds every read: no test can hang on a silent berth.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;

    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let split = loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed before the head"));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head_text = String::from_utf8_lossy(&head[..split]).to_string();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let declared: Option<u64> = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok());

    let mut hash = Context::new(&SHA256);
    let mut body = Vec::new();
    let mut received = 0u64;
    let mut first_byte = None;
    let mut raw = Vec::new();
    let mut take = |data: &[u8], first_byte: &mut Option<Instant>| {
        if !data.is_empty() && first_byte.is_none() {
            *first_byte = Some(Instant::now());
        }
        if chunked {
            raw.extend_from_slice(data);
        } else {
            hash.update(data);
            received += data.len() as u64;
            if keep_body {
                body.extend_from_slice(data);
            }
        }
    };
    if method != "HEAD" && status != 304 && status != 204 {
        take(&head[split..], &mut first_byte);
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => take(&buf[..n], &mut first_byte),
            }
        }
    }
    let ended = Instant::now();
    let complete = if method == "HEAD" {
        true
    } else if chunked {
        let (decoded, ok) = dechunk(&raw);
        hash.update(&decoded);
        received = decoded.len() as u64;
        body = decoded;
        ok
    } else {
        declared.is_some_and(|d| d == received)
    };
    Ok(Resp {
        status,
        headers,
        body,
        received,
        sha256: support::hex(hash.finish().as_ref()),
        complete,
        started,
        first_byte,
        ended,
    })
}

/// Decodes a chunked body; `true` when it ended with the last (empty) chunk.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
        else {
            return (out, false);
        };
        raw = &raw[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        if raw.len() < size + 2 {
            out.extend_from_slice(&raw[..raw.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn get(port: u16, path: &str, license: &str, extra: &[(&str, &str)], keep: bool) -> Resp {
    let auth = basic(license);
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    http(port, "GET", path, &headers, keep)
        .unwrap_or_else(|e| panic!("GET {path} through berth failed before a response: {e}"))
}

fn get_manifest(port: u16, app: &str, repo: &str, reference: &str, license: &str) -> Resp {
    get(
        port,
        &manifest_url(app, repo, reference),
        license,
        &[("Accept", MANIFEST_MEDIA_TYPE)],
        true,
    )
}

// ---- 1. stale-if-error -----------------------------------------------------------------

#[test]
fn second_pull_with_upstream_stopped_is_served_from_cache() {
    let mut reg = registry();
    let img = push(&reg, "acme/app", "1", &[2 * MIB, 300_000], 11);

    // Within the TTL: the tag answer comes from the cache, the upstream is never asked.
    let cache_long = support::tempdir();
    let long = start_berth(cache_long.path(), &reg.url(), &Opts::default());
    // Past the TTL: revalidation fails, the last known manifest is served.
    let cache_short = support::tempdir();
    let short = start_berth(
        cache_short.path(),
        &reg.url(),
        &Opts {
            tag_ttl: "1s",
            ..Opts::default()
        },
    );
    assert_pulled(&pull(&long, "acme", "acme/app", "1", ACME), &img);
    assert_pulled(&pull(&short, "acme", "acme/app", "1", ACME), &img);
    let pulled_at = Instant::now();

    reg.stop();
    assert_pulled(&pull(&long, "acme", "acme/app", "1", ACME), &img);
    assert!(
        !long.logs().contains("serving the last known manifest"),
        "within the TTL berth should not even have tried the upstream:\n{}",
        tail(&long.logs(), 20)
    );

    let wait = Duration::from_millis(1300).saturating_sub(pulled_at.elapsed());
    std::thread::sleep(wait);
    assert_pulled(&pull(&short, "acme", "acme/app", "1", ACME), &img);
    let logs = short.logs();
    let stale = logs
        .lines()
        .filter(|l| l.contains("serving the last known manifest"))
        .collect::<Vec<_>>();
    assert!(
        !stale.is_empty(),
        "no stale-if-error line in berth's log:\n{}",
        tail(&logs, 30)
    );
    assert!(
        stale
            .iter()
            .any(|l| l.contains("WARN") || l.contains("warn")),
        "the stale line is not a warning: {stale:?}"
    );
}

// ---- 2. single flight ------------------------------------------------------------------

/// `n` concurrent GETs of one blob through berth, started together; bodies are hashed.
fn concurrent_gets(port: u16, path: &str, n: usize) -> Vec<Resp> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    get(port, path, ACME, &[], false)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_cold_requests_fetch_the_blob_once_and_stream_early() {
    let reg = registry();
    let img = push(&reg, "acme/big", "1", &[64 * MIB + 12_345], 21);
    let (digest, size) = img.layers[0].clone();
    let path = blob_url("acme", "acme/big", &digest);

    // Straight to the real registry: one upstream GET for 16 clients.
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &reg.url(), &Opts::default());
    // The manifest first, as a client would: berth learns the upstream's auth scheme, so
    // the blob GET below is not preceded by a 401 round.
    assert_eq!(
        get_manifest(b.port, "acme", "acme/big", "1", ACME).status,
        200
    );
    let blob_path = format!("/blobs/{digest}");
    let before = reg.count_requests("GET", &blob_path);
    let t = Instant::now();
    let resps = concurrent_gets(b.port, &path, 16);
    let cold_wall = t.elapsed();
    let fetches = reg.count_requests("GET", &blob_path) - before;
    eprintln!(
        "[figures] 16 concurrent cold GETs of a {} MiB blob: upstream blob GETs = {fetches}, wall {cold_wall:?}",
        size / MIB
    );
    for (i, r) in resps.iter().enumerate() {
        assert_eq!(r.status, 200, "client {i}");
        assert!(r.complete, "client {i} got {} of {size} bytes", r.received);
        assert_eq!(r.sha256, hex_of(&digest), "client {i} got wrong bytes");
    }
    assert_eq!(
        fetches,
        1,
        "the upstream served the blob {fetches} times: {:?}",
        reg.requests()
    );
    let ttfb_cold: Vec<Duration> = resps
        .iter()
        .map(|r| r.first_byte.unwrap() - r.started)
        .collect();
    assert!(
        support::wait_until(Duration::from_secs(10), || cached_path(
            cache.path(),
            &digest
        )
        .exists()),
        "verified blob never renamed into sha256/"
    );
    let warm = get(b.port, &path, ACME, &[], false);
    assert!(warm.complete && warm.sha256 == hex_of(&digest));
    assert_eq!(reg.count_requests("GET", &blob_path) - before, 1);
    eprintln!(
        "[figures] time to first byte: cold min {:?} / max {:?} (16 clients), warm {:?}",
        ttfb_cold.iter().min().unwrap(),
        ttfb_cold.iter().max().unwrap(),
        warm.first_byte.unwrap() - warm.started
    );

    // Through a fake that stalls the blob for 2 s after 8 MiB: clients must get bytes
    // while the upstream is stalled, not only once the whole blob is in.
    let stall = Duration::from_secs(2);
    let origin = reg.url();
    let file = img.blob_path(&digest);
    let d = digest.clone();
    let fake = FakeServer::start(move |req| {
        if req.method == "GET" && req.path().ends_with(&format!("/blobs/{d}")) {
            FakeResponse {
                status: 200,
                headers: vec![("content-type".into(), "application/octet-stream".into())],
                body: FakeBody::File {
                    path: file.clone(),
                    drop_after: None,
                    corrupt_at: None,
                    stall_after: Some((8 * MIB, stall)),
                },
            }
        } else {
            FakeResponse::proxy_to(&origin, req)
        }
    });
    let cache2 = support::tempdir();
    let b2 = start_berth(cache2.path(), &fake.url(), &Opts::default());
    assert_eq!(
        get_manifest(b2.port, "acme", "acme/big", "1", ACME).status,
        200
    );
    let resps = concurrent_gets(b2.port, &path, 16);
    assert_eq!(fake.count("GET", &blob_path), 1, "{:?}", fake.requests());
    for (i, r) in resps.iter().enumerate() {
        assert!(r.complete && r.sha256 == hex_of(&digest), "client {i}");
        let first = r.first_byte.unwrap();
        // The stall sits between the first 8 MiB and the rest, so a client that streams
        // along got its first byte at least ~2 s before its response ended.
        assert!(
            r.ended - first >= stall - Duration::from_millis(300),
            "client {i}: first byte only {:?} before the end: berth buffered the stalled fill",
            r.ended - first
        );
    }
}

// ---- 3. faults -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Healthy,
    Drop,
    Corrupt,
    Stall,
}

#[test]
fn broken_upstream_blobs_are_never_served_whole_nor_cached() {
    let reg = registry();
    // One layer per fault, so each fault meets a cold cache.
    let img = push(
        &reg,
        "acme/faulty",
        "1",
        &[3 * MIB + 1, 3 * MIB + 2, 3 * MIB + 3],
        31,
    );
    let mode = Arc::new(Mutex::new(Fault::Healthy));
    let origin = reg.url();
    let layers: Vec<(String, PathBuf)> = img
        .layers
        .iter()
        .map(|(d, _)| (d.clone(), img.blob_path(d)))
        .collect();
    let m = mode.clone();
    let fake = FakeServer::start(move |req| {
        let layer = layers
            .iter()
            .find(|(d, _)| req.path().ends_with(&format!("/blobs/{d}")));
        match layer {
            Some((_, file)) if req.method == "GET" => {
                let fault = *m.lock().unwrap();
                FakeResponse {
                    status: 200,
                    headers: vec![],
                    body: FakeBody::File {
                        path: file.clone(),
                        drop_after: (fault == Fault::Drop).then_some(MIB),
                        corrupt_at: (fault == Fault::Corrupt).then_some(2 * MIB + 5),
                        // Longer than the upstream timeout of 2 s below.
                        stall_after: (fault == Fault::Stall)
                            .then_some((MIB, Duration::from_secs(6))),
                    },
                }
            }
            _ => FakeResponse::proxy_to(&origin, req),
        }
    });
    let cache = support::tempdir();
    let b = start_berth(
        cache.path(),
        &fake.url(),
        &Opts {
            timeout: Some("2s"),
            ..Opts::default()
        },
    );
    assert_eq!(
        get_manifest(b.port, "acme", "acme/faulty", "1", ACME).status,
        200
    );
    let mut failures = Vec::new();
    let faults = [Fault::Drop, Fault::Corrupt, Fault::Stall];
    for (fault, (digest, size)) in faults.into_iter().zip(img.layers.clone()) {
        let path = blob_url("acme", "acme/faulty", &digest);
        *mode.lock().unwrap() = fault;
        let fetches = full_gets(&fake, &digest);
        let r = get(b.port, &path, ACME, &[], false);
        assert_eq!(
            full_gets(&fake, &digest),
            fetches + 1,
            "{fault:?}: not exactly one upstream fetch"
        );
        if fault != Fault::Corrupt {
            // A broken connection is resumed with a range request; this fake ignores
            // ranges (answers 200), so the resume fails and the fill with it.
            assert!(
                range_gets(&fake, &digest) >= 1,
                "{fault:?}: no resume was tried"
            );
        }
        eprintln!(
            "[figures] {fault:?}: status {}, {} of {size} bytes, complete={}, after {:?}",
            r.status,
            r.received,
            r.complete,
            r.ended - r.started
        );
        // A client must never see a full-length body that is wrong: it would have no way
        // to tell (short of hashing) that the transfer failed.
        if r.complete || r.received >= size {
            failures.push(format!(
                "{fault:?}: status {} and all {} declared bytes reached the client (sha256 matches: {})",
                r.status,
                r.received,
                r.sha256 == hex_of(&digest)
            ));
        }
        assert!(
            !cached_path(cache.path(), &digest).exists(),
            "{fault:?}: the broken blob was cached"
        );
        assert!(
            support::wait_until(Duration::from_secs(5), || tmp_entries(cache.path())
                .is_empty()),
            "{fault:?}: temp files left: {:?}",
            tmp_entries(cache.path())
        );
        // Back to healthy: the next request fills again and gets the right bytes.
        *mode.lock().unwrap() = Fault::Healthy;
        let ok = get(b.port, &path, ACME, &[], false);
        assert!(
            ok.status == 200 && ok.complete && ok.sha256 == hex_of(&digest),
            "{fault:?}: the healthy retry failed: status {} received {}",
            ok.status,
            ok.received
        );
        assert_eq!(full_gets(&fake, &digest), fetches + 2);
        assert!(support::wait_until(Duration::from_secs(5), || cached_path(
            cache.path(),
            &digest
        )
        .exists()));
    }
    // The whole image pulls correctly once the upstream is healthy.
    assert_pulled(&pull(&b, "acme", "acme/faulty", "1", ACME), &img);
    assert_every_cached_blob_hashes_to_its_name(cache.path());
    assert!(
        failures.is_empty(),
        "berth let clients receive complete bodies of failed fills:\n{}",
        failures.join("\n")
    );
}

/// Blob GETs the fake saw without a `Range` header (full fetches).
fn full_gets(fake: &FakeServer, digest: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path().ends_with(&format!("/blobs/{digest}")))
        .filter(|r| r.header("range").is_none())
        .count()
}

fn range_gets(fake: &FakeServer, digest: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path().ends_with(&format!("/blobs/{digest}")))
        .filter(|r| r.header("range").is_some())
        .count()
}

#[test]
fn a_connection_broken_mid_blob_is_resumed_with_a_range_request() {
    let reg = registry();
    let img = push(&reg, "acme/resume", "1", &[4 * MIB + 7], 57);
    let (digest, size) = img.layers[0].clone();
    let file = img.blob_path(&digest);
    let origin = reg.url();
    let d = digest.clone();
    let fake = FakeServer::start(move |req| {
        if req.method == "GET" && req.path().ends_with(&format!("/blobs/{d}")) {
            return match req.header("range") {
                // The first, full GET breaks after 1 MiB.
                None => FakeResponse {
                    status: 200,
                    headers: vec![],
                    body: FakeBody::File {
                        path: file.clone(),
                        drop_after: Some(MIB),
                        corrupt_at: None,
                        stall_after: None,
                    },
                },
                Some(r) => {
                    let from: usize = r
                        .strip_prefix("bytes=")
                        .and_then(|x| x.strip_suffix('-'))
                        .and_then(|x| x.parse().ok())
                        .expect("berth asks for an open-ended range");
                    let all = std::fs::read(&file).unwrap();
                    FakeResponse::bytes(206, all[from..].to_vec()).header(
                        "Content-Range",
                        &format!("bytes {from}-{}/{}", all.len() - 1, all.len()),
                    )
                }
            };
        }
        FakeResponse::proxy_to(&origin, req)
    });
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &fake.url(), &Opts::default());
    assert_eq!(
        get_manifest(b.port, "acme", "acme/resume", "1", ACME).status,
        200
    );
    let r = get(
        b.port,
        &blob_url("acme", "acme/resume", &digest),
        ACME,
        &[],
        false,
    );
    assert!(
        r.status == 200 && r.complete && r.received == size,
        "status {} received {} of {size}, complete={}",
        r.status,
        r.received,
        r.complete
    );
    assert_eq!(
        r.sha256,
        hex_of(&digest),
        "the resumed body is not the blob"
    );
    assert_eq!(full_gets(&fake, &digest), 1);
    let ranges: Vec<String> = fake
        .requests()
        .iter()
        .filter_map(|q| q.header("range").map(str::to_string))
        .collect();
    assert_eq!(
        ranges,
        vec![format!("bytes={MIB}-")],
        "one resume, at the break"
    );
    assert!(support::wait_until(Duration::from_secs(5), || cached_path(
        cache.path(),
        &digest
    )
    .exists()));
    assert_every_cached_blob_hashes_to_its_name(cache.path());
    assert!(
        b.logs().contains("resuming with a range request"),
        "{}",
        b.logs()
    );
}

// ---- 4. crash ----------------------------------------------------------------------------

#[test]
fn kill9_mid_fill_leaves_no_partial_or_corrupt_blobs() {
    let reg = registry();
    let sizes: Vec<u64> = (0..20).map(|i| 4 * MIB + i * 4096).collect();
    let img = push(&reg, "acme/many", "1", &sizes, 41);
    let cache = support::tempdir();
    let mut b = start_berth(cache.path(), &reg.url(), &Opts::default());
    assert_eq!(
        get_manifest(b.port, "acme", "acme/many", "1", ACME).status,
        200
    );

    let port = b.port;
    let started = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = img
        .layers
        .iter()
        .map(|(d, _)| {
            let path = blob_url("acme", "acme/many", d);
            let started = started.clone();
            std::thread::spawn(move || {
                started.fetch_add(1, Ordering::SeqCst);
                // Errors are expected: berth dies under these requests.
                http(
                    port,
                    "GET",
                    &path,
                    &[("Authorization", &basic(ACME))],
                    false,
                )
                .ok()
            })
        })
        .collect();
    let mid_fill = support::wait_until(Duration::from_secs(20), || {
        tmp_entries(cache.path())
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    });
    b.kill9();
    let parts_at_kill = tmp_entries(cache.path()).len();
    assert!(mid_fill, "no fill was ever in progress");
    assert!(
        b.wait_exit(Duration::from_secs(10)).is_some(),
        "berth survived kill -9"
    );
    let mut wrong = 0;
    for (t, (d, _)) in threads.into_iter().zip(&img.layers) {
        if let Some(r) = t.join().unwrap() {
            if r.complete && r.status == 200 && r.sha256 != hex_of(d) {
                wrong += 1;
            }
        }
    }
    assert_eq!(
        wrong, 0,
        "complete bodies with wrong bytes before the crash"
    );
    eprintln!(
        "[figures] kill -9 with {parts_at_kill} fills in flight, {} blobs already cached",
        blob_files(cache.path()).len()
    );

    b.restart();
    assert_eq!(
        tmp_entries(cache.path()),
        Vec::<PathBuf>::new(),
        "startup left temp files"
    );
    assert_every_cached_blob_hashes_to_its_name(cache.path());
    assert_pulled(&pull(&b, "acme", "acme/many", "1", ACME), &img);
    assert!(tmp_entries(cache.path()).is_empty());
    assert_every_cached_blob_hashes_to_its_name(cache.path());
    for (d, _) in &img.layers {
        assert!(support::wait_until(Duration::from_secs(5), || cached_path(
            cache.path(),
            d
        )
        .exists()));
    }
}

// ---- 5. isolation ----------------------------------------------------------------------

#[test]
fn another_apps_license_cannot_read_cached_content_by_digest() {
    let reg = registry();
    let acme = push(&reg, "acme/app", "1", &[200_000, 5_000], 51);
    let other = push(&reg, "other/x", "1", &[100_000], 52);
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &reg.url(), &Opts::default());
    assert_pulled(&pull(&b, "acme", "acme/app", "1", ACME), &acme);
    assert_pulled(&pull(&b, "other", "other/x", "1", OTHER), &other);
    let (layer, _) = &acme.layers[0];
    assert!(cached_path(cache.path(), layer).exists());
    let layer_bytes = std::fs::read(acme.blob_path(layer)).unwrap();

    // Control: the owner reads it.
    let own = get(
        b.port,
        &blob_url("acme", "acme/app", layer),
        ACME,
        &[],
        true,
    );
    assert_eq!(own.status, 200);
    assert_eq!(own.body, layer_bytes);

    let heads = reg.count_requests("HEAD", &format!("/v2/other/x/blobs/{layer}"));
    let r = get(
        b.port,
        &blob_url("other", "other/x", layer),
        OTHER,
        &[],
        true,
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("BLOB_UNKNOWN"), "{}", r.text());
    assert!(
        !r.body.windows(64).any(|w| w == &layer_bytes[512..576]),
        "the 404 body carries the blob's bytes"
    );
    assert!(r.body.len() < 4096, "a {} byte error body", r.body.len());
    // berth asked the upstream, as other/x, rather than trusting the cache.
    assert_eq!(
        reg.count_requests("HEAD", &format!("/v2/other/x/blobs/{layer}")),
        heads + 1
    );

    let m = get_manifest(b.port, "other", "other/x", &acme.manifest_digest, OTHER);
    assert_eq!(m.status, 404, "{}", m.text());
    assert!(!m.text().contains(&acme.config_digest), "{}", m.text());
    // Control: acme's own manifest by digest is served.
    let own = get_manifest(b.port, "acme", "acme/app", &acme.manifest_digest, ACME);
    assert_eq!(own.status, 200);
    assert_eq!(
        support::sha256_hex(&own.body),
        hex_of(&acme.manifest_digest)
    );
    // And the other license may not use acme's path at all.
    let denied = get(
        b.port,
        &blob_url("acme", "acme/app", layer),
        OTHER,
        &[],
        true,
    );
    assert!(
        denied.status == 401 || denied.status == 403,
        "{}",
        denied.status
    );
}

/// One upstream (`up`) that two apps pull through, and an app (`third`) with an upstream
/// of its own for the same repositories.
fn shared_upstream_yaml(port: u16, cache: &Path, upstream_url: &str, offline: bool) -> String {
    format!(
        r#"server: {{ listen: "127.0.0.1:{port}", hostname: "127.0.0.1:{port}" }}
cache: {{ dir: "{cache}", tag_ttl: 5m, offline: {offline} }}
upstreams:
  - {{ name: up, url: "{upstream_url}", host: upstream.test, username: {VENDOR}, password: "${{UPSTREAM_PASSWORD}}", repositories: ["acme/*"] }}
  - {{ name: own, url: "{upstream_url}", host: upstream.test, username: {VENDOR}, password: "${{UPSTREAM_PASSWORD}}", repositories: ["acme/*"] }}
apps: [ {{ slug: acme, upstreams: [up] }}, {{ slug: other, upstreams: [up] }}, {{ slug: third, upstreams: [own] }} ]
licenses: [ {{ id: {ACME}, app: acme, customer: A }}, {{ id: {OTHER}, app: other, customer: B }}, {{ id: {THIRD}, app: third, customer: C }} ]
"#,
        cache = cache.display(),
    )
}

const THIRD: &str = "LICENSE-thrd-0001";

/// Two apps pulling the same repository through one upstream: what one app's pull cached
/// is served to the other only after the upstream confirms it, as for any repository not
/// linked yet (content is the app's own, not the upstream's).
#[test]
fn two_apps_sharing_an_upstream_are_each_confirmed_by_it() {
    let reg = registry();
    let img = push(&reg, "acme/shared", "1", &[150_000], 53);
    let cache = support::tempdir();
    let port = support::free_port();
    let b = Berth::start(
        &shared_upstream_yaml(port, cache.path(), &reg.url(), false),
        &[("UPSTREAM_PASSWORD", VENDOR_PW)],
    );
    assert_pulled(&pull(&b, "acme", "acme/shared", "1", ACME), &img);
    let (layer, _) = &img.layers[0];
    assert!(cached_path(cache.path(), layer).exists());
    let head_path = format!("/v2/acme/shared/blobs/{layer}");
    let gets_path = head_path.clone();
    let (heads, gets) = (
        reg.count_requests("HEAD", &head_path),
        reg.count_requests("GET", &gets_path),
    );
    let r = get(
        b.port,
        &blob_url("other", "acme/shared", layer),
        OTHER,
        &[],
        true,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, std::fs::read(img.blob_path(layer)).unwrap());
    assert_eq!(
        reg.count_requests("HEAD", &head_path),
        heads + 1,
        "the other app's first read is confirmed upstream"
    );
    assert_eq!(
        reg.count_requests("GET", &gets_path),
        gets,
        "and served from the cache"
    );
    // Confirmed once: linked to the other app's repository from then on.
    let r = get(
        b.port,
        &blob_url("other", "acme/shared", layer),
        OTHER,
        &[],
        true,
    );
    assert_eq!(r.status, 200);
    assert_eq!(reg.count_requests("HEAD", &head_path), heads + 1);
}

/// A cache directory as berth wrote it before the content model — links and tag answers
/// keyed by the upstream's name, written here literally — is served: to both apps of that
/// upstream, offline, and to no app pulling through another upstream.
#[test]
fn a_cache_directory_keyed_by_upstream_is_served_to_its_apps() {
    let mut reg = registry();
    let img = push(&reg, "acme/app", "1", &[120_000, 3_000], 54);
    let cache = support::tempdir();
    let root = cache.path();
    for sub in ["sha256", "tmp", "manifests/sha256", "tags/up/acme/app/1"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let mut blobs: Vec<&str> = img.layers.iter().map(|(d, _)| d.as_str()).collect();
    blobs.push(&img.config_digest);
    let mut links = String::new();
    for d in &blobs {
        std::fs::copy(img.blob_path(d), root.join("sha256").join(hex_of(d))).unwrap();
        links.push_str(&format!("up\tacme/app\t{d}\n"));
    }
    let m = &img.manifest_digest;
    std::fs::copy(
        img.blob_path(m),
        root.join("manifests/sha256").join(hex_of(m)),
    )
    .unwrap();
    std::fs::write(
        root.join(format!("manifests/sha256/{}.type", hex_of(m))),
        MANIFEST_MEDIA_TYPE,
    )
    .unwrap();
    links.push_str(&format!("up\tacme/app\t{m}\n"));
    std::fs::write(root.join("links.log"), &links).unwrap();
    // The answer for `Accept: <OCI manifest>` (the key hashes the sorted Accept set).
    let accept = &support::sha256_hex(MANIFEST_MEDIA_TYPE.as_bytes())[..16];
    std::fs::write(
        root.join(format!("tags/up/acme/app/1/{accept}.json")),
        format!(
            r#"{{"digest":"{m}","media_type":"{MANIFEST_MEDIA_TYPE}","length":{},"checked_ms":1}}"#,
            img.manifest_size
        ),
    )
    .unwrap();

    let port = support::free_port();
    let b = Berth::start(
        &shared_upstream_yaml(port, root, &reg.url(), true),
        &[("UPSTREAM_PASSWORD", VENDOR_PW)],
    );
    reg.stop();
    let by_tag = get_manifest(b.port, "acme", "acme/app", "1", ACME);
    assert_eq!(by_tag.status, 200, "{}", by_tag.text());
    assert_eq!(support::sha256_hex(&by_tag.body), hex_of(m));
    assert_pulled(&pull(&b, "acme", "acme/app", "1", ACME), &img);
    assert_pulled(&pull(&b, "other", "acme/app", "1", OTHER), &img);

    // `third` pulls the same repository through its own upstream: nothing is linked to it.
    let (layer, _) = &img.layers[0];
    let r = get(
        b.port,
        &blob_url("third", "acme/app", layer),
        THIRD,
        &[],
        true,
    );
    assert_ne!(r.status, 200);
    assert!(r.body.len() < 4096, "a {} byte error body", r.body.len());
    assert_ne!(
        get_manifest(b.port, "third", "acme/app", m, THIRD).status,
        200
    );
    assert_ne!(
        get_manifest(b.port, "third", "acme/app", "1", THIRD).status,
        200
    );
    // Read alongside, not rewritten: the log still holds the old lines.
    assert!(std::fs::read_to_string(root.join("links.log"))
        .unwrap()
        .starts_with(&links));
}

// ---- 6. eviction -----------------------------------------------------------------------

#[test]
fn eviction_keeps_the_cache_under_max_size_and_refetches() {
    let reg = registry();
    let imgs: Vec<TestImage> = (0..6)
        .map(|i| {
            push(
                &reg,
                &format!("acme/e{i}"),
                "1",
                &[6 * MIB, 6 * MIB + 1],
                60 + i,
            )
        })
        .collect();
    let cache = support::tempdir();
    let b = start_berth(
        cache.path(),
        &reg.url(),
        &Opts {
            max_size: Some("40MiB"),
            ..Opts::default()
        },
    );
    let cap = 40 * MIB;
    // skopeo fetches one image's layers in parallel, so at most that much can land
    // between two evictor runs.
    let in_flight = 12 * MIB + 4096;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let monitor = {
        let (stop, peak, dir) = (stop.clone(), peak.clone(), cache.path().to_path_buf());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(blob_total(&dir), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    for img in &imgs {
        assert_pulled(&pull(&b, "acme", &img.repo, "1", ACME), img);
        let now = blob_total(cache.path());
        assert!(
            now <= cap + in_flight,
            "{now} bytes cached after pulling {}",
            img.repo
        );
        assert!(
            support::wait_until(Duration::from_secs(5), || blob_total(cache.path()) <= cap),
            "still {} bytes cached 5 s after pulling {}",
            blob_total(cache.path()),
            img.repo
        );
    }
    stop.store(true, Ordering::SeqCst);
    monitor.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "[figures] eviction: peak {:.1} MiB in sha256/ with max_size 40 MiB, end {:.1} MiB",
        peak as f64 / MIB as f64,
        blob_total(cache.path()) as f64 / MIB as f64
    );
    assert!(peak <= cap + in_flight, "peak {peak} bytes");
    assert!(blob_total(cache.path()) <= cap);
    // The first image's layers were the least recently used: they are gone ...
    let first = &imgs[0];
    let evicted: Vec<&String> = first
        .layers
        .iter()
        .map(|(d, _)| d)
        .filter(|d| !cached_path(cache.path(), d).exists())
        .collect();
    assert!(!evicted.is_empty(), "nothing of {} was evicted", first.repo);
    // ... and come back, correctly, from the upstream.
    let gets: Vec<usize> = evicted
        .iter()
        .map(|d| reg.count_requests("GET", &format!("/blobs/{d}")))
        .collect();
    assert_pulled(&pull(&b, "acme", &first.repo, "1", ACME), first);
    for (d, before) in evicted.iter().zip(gets) {
        assert_eq!(
            reg.count_requests("GET", &format!("/blobs/{d}")),
            before + 1,
            "{d} was not fetched again"
        );
    }
    assert_every_cached_blob_hashes_to_its_name(cache.path());
}

// ---- 7. ranges and hit throughput --------------------------------------------------------

#[test]
fn ranges_on_cached_blobs_come_from_disk() {
    let reg = registry();
    let img = push(&reg, "acme/huge", "1", &[200 * MIB], 71);
    let (digest, size) = img.layers[0].clone();
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &reg.url(), &Opts::default());
    assert_eq!(
        get_manifest(b.port, "acme", "acme/huge", "1", ACME).status,
        200
    );
    let path = blob_url("acme", "acme/huge", &digest);
    let blob_get = format!("/blobs/{digest}");

    let t = Instant::now();
    let cold = get(b.port, &path, ACME, &[], false);
    let cold_time = t.elapsed();
    assert!(cold.complete && cold.sha256 == hex_of(&digest));
    assert!(support::wait_until(Duration::from_secs(10), || {
        cached_path(cache.path(), &digest).exists()
    }));
    let gets = reg.count_requests("GET", &blob_get);

    let warm = get(b.port, &path, ACME, &[], false);
    assert!(warm.complete && warm.sha256 == hex_of(&digest));
    let secs = (warm.ended - warm.started).as_secs_f64();
    eprintln!(
        "[figures] 200 MiB blob: cold (fill) {:.1} MB/s in {cold_time:?}; cache hit {:.1} MB/s in {secs:.2} s (raw HTTP, client hashing)",
        size as f64 / 1e6 / cold_time.as_secs_f64(),
        size as f64 / 1e6 / secs
    );

    let r = get(b.port, &path, ACME, &[("Range", "bytes=10-19")], true);
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{size}").as_str())
    );
    assert_eq!(r.content_length(), Some(10));
    let mut want = [0u8; 10];
    std::fs::File::open(img.blob_path(&digest))
        .and_then(|mut f| {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(10))?;
            f.read_exact(&mut want)
        })
        .unwrap();
    assert_eq!(r.body, want);

    let past = format!("bytes={size}-");
    let r = get(b.port, &path, ACME, &[("Range", past.as_str())], true);
    assert_eq!(r.status, 416, "{}", r.text());

    assert_eq!(
        reg.count_requests("GET", &blob_get),
        gets,
        "a cached blob (or a range of it) was fetched from the upstream again"
    );
}

// ---- 8. offline ------------------------------------------------------------------------

#[test]
fn offline_mode_serves_the_cache_and_refuses_misses() {
    let mut reg = registry();
    let img = push(&reg, "acme/off", "1", &[1_000_000, 20_000], 81);
    push(&reg, "acme/off", "2", &[30_000], 82);
    let cache = support::tempdir();
    let mut online = start_berth(cache.path(), &reg.url(), &Opts::default());
    assert_pulled(&pull(&online, "acme", "acme/off", "1", ACME), &img);
    online.stop();

    let offline = start_berth(
        cache.path(),
        &reg.url(),
        &Opts {
            offline: true,
            ..Opts::default()
        },
    );
    reg.stop();
    assert_pulled(&pull(&offline, "acme", "acme/off", "1", ACME), &img);
    let miss = get_manifest(offline.port, "acme", "acme/off", "2", ACME);
    assert_eq!(miss.status, 503, "{}", miss.text());
    // Offline also covers "never contact the upstream": a fresh request must not hang or
    // 502 on the stopped registry, and the cached tag still answers by digest.
    let by_digest = get_manifest(offline.port, "acme", "acme/off", &img.manifest_digest, ACME);
    assert_eq!(by_digest.status, 200);
    let out = try_pull(&offline, "acme", "acme/off", "2", ACME);
    assert!(
        !out.status.success(),
        "an uncached tag pulled while offline"
    );
}

// ---- 9. tag revalidation ---------------------------------------------------------------

#[test]
fn tags_are_revalidated_with_head_after_the_ttl() {
    let reg = registry();
    let v1 = push(&reg, "acme/moving", "1", &[40_000], 91);
    let short_cache = support::tempdir();
    let short = start_berth(
        short_cache.path(),
        &reg.url(),
        &Opts {
            tag_ttl: "1s",
            ..Opts::default()
        },
    );
    let long_cache = support::tempdir();
    let long = start_berth(long_cache.path(), &reg.url(), &Opts::default());
    let digest_of = |b: &Berth| {
        let r = get_manifest(b.port, "acme", "acme/moving", "1", ACME);
        assert_eq!(r.status, 200, "{}", r.text());
        let body = support::sha256_hex(&r.body);
        assert_eq!(
            r.header("docker-content-digest"),
            Some(format!("sha256:{body}").as_str())
        );
        format!("sha256:{body}")
    };
    assert_eq!(digest_of(&short), v1.manifest_digest);
    assert_eq!(digest_of(&long), v1.manifest_digest);
    let cached_at = Instant::now();

    let v2 = push(&reg, "acme/moving", "1", &[40_000], 92);
    assert_ne!(v1.manifest_digest, v2.manifest_digest);
    // Within its 5 min TTL the long berth still answers the old digest.
    assert_eq!(digest_of(&long), v1.manifest_digest);

    std::thread::sleep(Duration::from_millis(1300).saturating_sub(cached_at.elapsed()));
    let heads = reg.count_requests("HEAD", "/v2/acme/moving/manifests/1");
    let gets = reg.count_requests("GET", "/v2/acme/moving/manifests/1");
    assert_eq!(digest_of(&short), v2.manifest_digest);
    assert!(
        reg.count_requests("HEAD", "/v2/acme/moving/manifests/1") > heads,
        "the expired tag was not revalidated with a HEAD: {:?}",
        &reg.requests()[reg.requests().len().saturating_sub(6)..]
    );
    // The digest changed, so exactly one GET followed.
    assert_eq!(
        reg.count_requests("GET", "/v2/acme/moving/manifests/1"),
        gets + 1
    );
    // Fresh again: no upstream request at all within the TTL.
    let heads = reg.count_requests("HEAD", "/v2/acme/moving/manifests/");
    assert_eq!(digest_of(&short), v2.manifest_digest);
    assert_eq!(
        reg.count_requests("HEAD", "/v2/acme/moving/manifests/"),
        heads
    );
}
