//! Helpers of the hosted-registry gc and policy tests: a berth that only hosts (app `acme`),
//! API keys made with the real `berth apikey create`, `berth gc --json` runs, OCI layouts of
//! random blobs built on disk, pushed with skopeo or by raw HTTP (blobs streamed from their
//! files and hashed while read back, never held whole in memory), and the blob files under
//! `cache.dir/sha256/<hex>`.
//!
//! Included with `#[path = "support/push.rs"] mod push;` next to `mod support;` and
//! `#[path = "support/http.rs"] mod http;`, so the shared modules stay untouched.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::digest::{Context, SHA256};
use serde_json::json;

use crate::http::{self, Resp};
use crate::support;
use crate::support::berth::{run_cli, Berth};
use crate::support::image::{read_oci_layout, skopeo_copy_to_oci, SplitMix64};

pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MIB: u64 = 1 << 20;

const WAIT: Duration = Duration::from_secs(15);
const CLI_WAIT: Duration = Duration::from_secs(120);

/// A seed no other test run (nor another call in this one) uses: blobs are random per test.
pub fn fresh_seed() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 40) ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(20)
}

/// berth serving only hosted repositories of app `acme` (and `beta`), with its cache dir.
pub struct Fx {
    pub berth: Berth,
    pub cache: tempfile::TempDir,
    /// A key of acme with push, pull and delete.
    pub key: String,
}

impl Fx {
    /// `acme_extra` goes inside acme's app mapping (`, hosted: {...}`), `extra` at the top.
    pub fn start(acme_extra: &str, extra: &str) -> Fx {
        let cache = support::tempdir();
        let port = support::free_port();
        let yaml = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n\
             cache: {{ dir: \"{}\" }}\n\
             apps: [ {{ slug: acme{acme_extra} }}, {{ slug: beta }} ]\n{extra}",
            cache.path().display(),
        );
        let berth = Berth::start_on(port, &yaml, &[]);
        let mut fx = Fx {
            berth,
            cache,
            key: String::new(),
        };
        fx.key = fx.key_with("push,pull,delete");
        fx
    }

    pub fn config(&self) -> &str {
        self.berth.config_path.to_str().unwrap()
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.berth.port)
    }

    /// `berth apikey create --app acme --actions <actions> --json`: the key, once berth knows it.
    pub fn key_with(&self, actions: &str) -> String {
        let name = format!("ci-{}", fresh_seed() % 1_000_000);
        let run = run_cli(
            &[
                "--config",
                self.config(),
                "--json",
                "apikey",
                "create",
                "--app",
                "acme",
                "--name",
                &name,
                "--actions",
                actions,
            ],
            &[],
            None,
            CLI_WAIT,
        );
        assert_eq!(
            run.code,
            Some(0),
            "apikey create: {}{}",
            run.stdout,
            run.stderr
        );
        let v: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("apikey create --json: {e}: {}", run.stdout));
        let key = v["key"].as_str().expect("a key in the JSON").to_string();
        let auth = basic(&key);
        assert!(
            support::wait_until(WAIT, || {
                http::get(self.berth.port, "/v2/", &[("Authorization", &auth)]).status == 200
            }),
            "berth does not know the new key within {WAIT:?}"
        );
        key
    }

    /// `berth gc --json <args>` beside the running server: the report.
    pub fn gc(&self, args: &[&str]) -> serde_json::Value {
        let run = self.gc_json(args);
        assert_eq!(
            run.code,
            Some(0),
            "berth gc --json {args:?}: {}\n{}",
            run.stdout,
            run.stderr
        );
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("berth gc --json: {e}: {:?}", run.stdout))
    }

    /// `berth gc --json <args>`, as the CLI documents it.
    pub fn gc_json(&self, args: &[&str]) -> support::berth::CliRun {
        let mut a = vec!["--config", self.config(), "gc", "--json"];
        a.extend_from_slice(args);
        run_cli(&a, &[], None, CLI_WAIT)
    }

    /// A request with `secret` as the password of `api`.
    pub fn req(
        &self,
        method: &str,
        path: &str,
        secret: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let auth = basic(secret);
        let mut h = vec![("Authorization", auth.as_str())];
        h.extend_from_slice(extra);
        http::request(self.berth.port, method, path, &h, body)
    }

    /// The file holding a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        self.cache
            .path()
            .join("sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    pub fn manifest_file(&self, digest: &str) -> PathBuf {
        self.cache
            .path()
            .join("manifests/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Every blob stored under `cache.dir/sha256`, as `sha256:<hex>`, sorted.
    pub fn stored_blobs(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.cache.path().join("sha256"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.len() == 64)
                    .map(|n| format!("sha256:{n}"))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Uploads a file as a blob of `repo` in one POST (`?digest=`), streamed from disk.
    pub fn upload_file(&self, repo: &str, secret: &str, path: &Path, digest: &str) -> Resp {
        stream_request(
            self.berth.port,
            "POST",
            &format!("/v2/acme/{repo}/blobs/uploads/?digest={digest}"),
            &basic(secret),
            &[],
            path,
        )
    }

    /// Pushes every blob of `img` by raw HTTP, then its manifest to `reference`.
    pub fn push_raw(&self, repo: &str, img: &Img, reference: &str) {
        for (d, _) in img.blobs() {
            let r = self.upload_file(repo, &self.key, &img.blob_path(&d), &d);
            assert_eq!(r.status, 201, "upload {d} into {repo}: {}", r.text());
        }
        let r = self.put_manifest(repo, img, reference);
        assert_eq!(r.status, 201, "manifest {repo}:{reference}: {}", r.text());
    }

    pub fn put_manifest(&self, repo: &str, img: &Img, reference: &str) -> Resp {
        self.req(
            "PUT",
            &format!("/v2/acme/{repo}/manifests/{reference}"),
            &self.key,
            &[("Content-Type", MANIFEST)],
            &img.manifest_bytes,
        )
    }

    /// `skopeo copy --preserve-digests oci:<layout>:<tag> docker://berth/acme/<repo>:<tag>`.
    pub fn push_skopeo(&self, repo: &str, img: &Img) -> std::process::Output {
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("api:{}", self.key),
            ])
            .arg(format!("oci:{}:{}", img.dir.path().display(), img.tag))
            .arg(format!("docker://{}/acme/{repo}:{}", self.host(), img.tag))
            .output()
            .expect("run skopeo")
    }

    pub fn push_skopeo_ok(&self, repo: &str, img: &Img) {
        let out = self.push_skopeo(repo, img);
        assert!(
            out.status.success(),
            "skopeo push of acme/{repo}:{}: {}\nberth log tail:\n{}",
            img.tag,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.berth.logs(), 30)
        );
    }

    /// Pulls `acme/<repo>:<reference>` with skopeo into an oci: dir: Ok when the manifest and
    /// every blob came back and hash to what `img` holds.
    pub fn pull_skopeo(&self, repo: &str, reference: &str, img: &Img) -> Result<(), String> {
        let dir = support::tempdir();
        let sep = if reference.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        let out = skopeo_copy_to_oci(
            &format!("docker://{}/acme/{repo}{sep}{reference}", self.host()),
            Some(&format!("api:{}", self.key)),
            dir.path(),
            &["--preserve-digests"],
        );
        if !out.status.success() {
            return Err(format!(
                "skopeo pull of acme/{repo}{sep}{reference}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // read_oci_layout re-hashes every blob it wrote.
        let back = read_oci_layout(dir.path());
        let mut want: Vec<String> = img.blobs().into_iter().map(|(d, _)| d).collect();
        want.push(img.manifest.clone());
        want.sort();
        want.dedup();
        if back.manifest_digest != img.manifest || back.blob_digests != want {
            return Err(format!(
                "acme/{repo}{sep}{reference} came back as {back:?}, want {} with {want:?}",
                img.manifest
            ));
        }
        Ok(())
    }

    pub fn pull_skopeo_ok(&self, repo: &str, reference: &str, img: &Img) {
        if let Err(e) = self.pull_skopeo(repo, reference, img) {
            panic!("{e}\nberth log tail:\n{}", tail(&self.berth.logs(), 30));
        }
    }

    /// GETs a blob of `repo`: (status, sha256 of the body, its length), hashed as it arrives.
    pub fn get_blob(&self, repo: &str, digest: &str) -> (u16, String, u64) {
        get_hashed(
            self.berth.port,
            &format!("/v2/acme/{repo}/blobs/{digest}"),
            &basic(&self.key),
        )
    }

    /// Whether `repo` serves the blob whole and intact.
    pub fn blob_pulls(&self, repo: &str, digest: &str, size: u64) -> bool {
        let (status, hash, len) = self.get_blob(repo, digest);
        status == 200 && format!("sha256:{hash}") == digest && len == size
    }

    /// Raw pull of an image: its manifest by `reference` is `img`'s, every blob comes whole.
    pub fn pull_raw(&self, repo: &str, reference: &str, img: &Img) -> Result<(), String> {
        let r = self.req(
            "GET",
            &format!("/v2/acme/{repo}/manifests/{reference}"),
            &self.key,
            &[("Accept", MANIFEST)],
            b"",
        );
        if r.status != 200 || r.body != img.manifest_bytes {
            return Err(format!(
                "manifest acme/{repo}:{reference}: {} {}",
                r.status,
                r.text()
            ));
        }
        for (d, size) in img.blobs() {
            let (status, hash, len) = self.get_blob(repo, &d);
            if status != 200 || format!("sha256:{hash}") != d || len != size {
                return Err(format!(
                    "blob {d} of acme/{repo}: {status}, {len} of {size} bytes hashing to {hash}"
                ));
            }
        }
        Ok(())
    }
}

pub fn basic(secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("api:{secret}")))
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// An image in an OCI layout on disk: a config unique to it and layers of random bytes.
pub struct Img {
    pub dir: tempfile::TempDir,
    pub tag: String,
    pub manifest: String,
    pub manifest_bytes: Vec<u8>,
    pub config: (String, u64),
    pub layers: Vec<(String, u64)>,
}

impl Img {
    /// `layers` are (seed, size): equal pairs give byte-identical (shared) layers.
    pub fn build(tag: &str, layers: &[(u64, u64)]) -> Img {
        let dir = support::tempdir();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let layers: Vec<(String, u64)> = layers
            .iter()
            .map(|&(seed, size)| write_random(dir.path(), seed, size))
            .collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": { "nonce": fresh_seed().to_string() } },
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|(d, _)| d).collect::<Vec<_>>() },
        }))
        .unwrap();
        let config = write_bytes(dir.path(), &config);
        let manifest_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": { "mediaType": CONFIG, "digest": config.0, "size": config.1 },
            "layers": layers.iter().map(|(d, s)| json!({ "mediaType": LAYER, "digest": d, "size": s })).collect::<Vec<_>>(),
        }))
        .unwrap();
        let (manifest, msize) = write_bytes(dir.path(), &manifest_bytes);
        let index = json!({ "schemaVersion": 2, "manifests": [ {
            "mediaType": MANIFEST, "digest": manifest, "size": msize,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        } ] });
        std::fs::write(
            dir.path().join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
        Img {
            dir,
            tag: tag.to_string(),
            manifest,
            manifest_bytes,
            config,
            layers,
        }
    }

    /// The config and the layers: every blob the manifest references.
    pub fn blobs(&self) -> Vec<(String, u64)> {
        let mut v = vec![self.config.clone()];
        v.extend(self.layers.iter().cloned());
        v
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }
}

fn write_bytes(layout: &Path, data: &[u8]) -> (String, u64) {
    let digest = format!("sha256:{}", support::sha256_hex(data));
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), data).unwrap();
    (digest, data.len() as u64)
}

/// `size` random bytes from `seed`, written in 64 KiB pieces and hashed on the way.
pub fn write_random(layout: &Path, seed: u64, size: u64) -> (String, u64) {
    let tmp = layout.join(format!("blobs/sha256/.tmp-{seed}-{size}"));
    let mut out = BufWriter::new(File::create(&tmp).unwrap());
    let mut hash = Context::new(&SHA256);
    let mut rng = SplitMix64(seed ^ size.rotate_left(29));
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    out.flush().unwrap();
    let digest = format!("sha256:{}", support::hex(hash.finish().as_ref()));
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    (digest, size)
}

/// One request whose body is streamed from `body`; the (small) response read whole.
pub fn stream_request(
    port: u16,
    method: &str,
    path: &str,
    auth: &str,
    extra: &[(&str, &str)],
    body: &Path,
) -> Resp {
    let len = std::fs::metadata(body).unwrap().len();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(http::TIMEOUT)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Authorization: {auth}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n"
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut f = File::open(body).unwrap();
    std::io::copy(&mut f, &mut s).unwrap_or_else(|e| panic!("{method} {path}: sending: {e}"));
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let (status, headers, split) = http::parse_head(&all)
        .unwrap_or_else(|| panic!("{method} {path}: {:?}", String::from_utf8_lossy(&all)));
    Resp {
        status,
        headers,
        body: all[split..].to_vec(),
    }
}

/// GET `path`: (status, sha256 hex of the body, body length), the body hashed as it arrives
/// (berth answers blobs with a Content-Length, so the body is what follows the head).
pub fn get_hashed(port: u16, path: &str, auth: &str) -> (u16, String, u64) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(http::TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAuthorization: {auth}\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut head = Vec::new();
    let (status, headers, split) = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "GET {path}: connection closed in the head");
        head.extend_from_slice(&buf[..n]);
        if let Some(h) = http::parse_head(&head) {
            break h;
        }
    };
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")),
        "GET {path}: a chunked blob answer (this helper reads Content-Length bodies)"
    );
    let mut hash = Context::new(&SHA256);
    hash.update(&head[split..]);
    let mut len = (head.len() - split) as u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) => panic!("GET {path}: reading the body: {e}"),
        }
    }
    (status, support::hex(hash.finish().as_ref()), len)
}
