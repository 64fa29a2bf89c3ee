//! The hosted-registry fixture shared by tests/hosted_clients.rs and tests/hosted_content.rs:
//! the real berth with apps `acme` and `beta`, API keys and licenses created through the
//! library on the server's own state file, Basic-authenticated raw requests, and pushes by
//! hand (blobs, images, artifacts) so a test can set up content without a client tool.
//!
//! Included with `#[path = "support/hosted.rs"] mod hosted;` next to `mod support;` and
//! `#[path = "support/http.rs"] mod http;`, so the shared `support` module stays untouched.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

use berth::config::Config;
use berth::control::{Actor, Control, NewKey, NewLicense};
use berth::settings::StateConfig;

use crate::http::{self, Resp};
use crate::support;
use crate::support::berth::Berth;
use crate::support::registry::{Registry, RegistryAuth};

pub const WAIT: Duration = Duration::from_secs(10);

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The OCI empty descriptor's content `{}`, its digest and size (image-spec 1.1).
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

pub struct Fx {
    // Berth needs an upstream in its config; the hosted registry never talks to it.
    _reg: Registry,
    pub berth: Berth,
    _cache: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    control: Control,
}

pub fn fixture() -> Fx {
    let reg = Registry::start(RegistryAuth::None);
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams: [ {{ name: up, url: \"{}\", host: upstream.test }} ]\n\
         apps: [ {{ slug: acme, upstreams: [up] }}, {{ slug: beta, upstreams: [up] }} ]\n",
        cache.path().display(),
        reg.url()
    );
    let berth = Berth::start_on(port, &yaml, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = Config::load(&berth.config_path).expect("berth's config");
    let StateConfig::Sqlite(db) = &config.state else {
        panic!("expected the default SQLite state")
    };
    let store: Arc<dyn berth::state::Store> = Arc::new(
        rt.block_on(berth::state::sqlite::SqliteStore::open(db))
            .expect("open the server's state.db"),
    );
    Fx {
        _reg: reg,
        berth,
        _cache: cache,
        rt,
        control: Control::new(store),
    }
}

pub fn basic(secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("api:{secret}")))
}

/// True when `tool --version` runs: the tests that need a client skip without it.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", support::sha256_hex(data))
}

/// What `push_image` put into a repository.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub config: String,
    pub layer: String,
}

impl Pushed {
    /// The descriptor an artifact names as its `subject`.
    pub fn descriptor(&self) -> serde_json::Value {
        json!({ "mediaType": MANIFEST, "digest": self.digest, "size": self.bytes.len() })
    }
}

impl Fx {
    fn config(&self) -> Config {
        Config::load(&self.berth.config_path).expect("berth's config")
    }

    /// An API key of `app` with `actions`, once berth knows it.
    pub fn key(&self, app: &str, actions: &[&str]) -> String {
        let created = self
            .rt
            .block_on(self.control.create_key(
                &self.config(),
                &Actor("test".into()),
                NewKey {
                    name: format!("ci-{app}"),
                    apps: vec![app.into()],
                    actions: actions.iter().map(|a| a.to_string()).collect(),
                    expires: None,
                },
            ))
            .expect("create a key");
        self.until_known(&created.key);
        created.key
    }

    /// A license of `app`, narrowed to `images` (globs over `<app>/<repository>`) if any.
    pub fn license(&self, app: &str, images: &[&str]) -> String {
        let created = self
            .rt
            .block_on(self.control.create_license(
                &self.config(),
                &Actor("test".into()),
                NewLicense {
                    app: app.into(),
                    customer: format!("{app} customer"),
                    expires: None,
                    images: images.iter().map(|i| i.to_string()).collect(),
                },
            ))
            .expect("create a license");
        self.until_known(&created.secret);
        created.secret
    }

    fn until_known(&self, secret: &str) {
        let auth = basic(secret);
        assert!(
            support::wait_until(WAIT, || {
                http::get(self.berth.port, "/v2/", &[("Authorization", &auth)]).status == 200
            }),
            "berth does not know a new credential within {WAIT:?}"
        );
    }

    /// One request with Basic `api:<secret>`.
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

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.berth.port)
    }

    /// A monolithic upload (`POST ?digest=`) of `data` into `repo` (`<app>/<repository>`).
    pub fn push_blob(&self, repo: &str, secret: &str, data: &[u8]) -> String {
        let digest = digest_of(data);
        let r = self.req(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            secret,
            &[],
            data,
        );
        assert_eq!(r.status, 201, "blob upload into {repo}: {}", r.text());
        digest
    }

    pub fn put_manifest(&self, repo: &str, reference: &str, secret: &str, body: &[u8]) -> Resp {
        let media_type = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            .unwrap_or_else(|| MANIFEST.to_string());
        self.req(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            secret,
            &[("Content-Type", &media_type)],
            body,
        )
    }

    /// A one-layer OCI image whose bytes depend on `seed`, tagged with each of `tags` (or
    /// pushed by digest when there are none).
    pub fn push_image(&self, repo: &str, tags: &[&str], secret: &str, seed: u64) -> Pushed {
        let layer = tar_with_file(&format!("file-{seed}"), &pseudo_random(seed, 4096));
        let layer_digest = self.push_blob(repo, secret, &layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))
        .unwrap();
        let config_digest = self.push_blob(repo, secret, &config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": { "mediaType": CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [ { "mediaType": LAYER, "digest": layer_digest, "size": layer.len() } ],
        }))
        .unwrap();
        let digest = digest_of(&manifest);
        let refs: Vec<&str> = if tags.is_empty() {
            vec![digest.as_str()]
        } else {
            tags.to_vec()
        };
        for reference in refs {
            let r = self.put_manifest(repo, reference, secret, &manifest);
            assert_eq!(r.status, 201, "manifest {repo}:{reference}: {}", r.text());
            assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        }
        Pushed {
            digest,
            bytes: manifest,
            config: config_digest,
            layer: layer_digest,
        }
    }

    /// An OCI artifact (an image manifest with `artifactType`, the empty config and one
    /// layer) whose `subject` is `subject`, pushed by digest. Returns (digest, bytes, the
    /// PUT's response).
    pub fn push_artifact(
        &self,
        repo: &str,
        secret: &str,
        artifact_type: &str,
        subject: &Pushed,
        payload: &[u8],
    ) -> (String, Vec<u8>, Resp) {
        let empty = self.push_blob(repo, secret, b"{}");
        assert_eq!(empty, EMPTY_DIGEST, "the empty descriptor's digest");
        let layer = self.push_blob(repo, secret, payload);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": artifact_type,
            "config": { "mediaType": EMPTY, "digest": EMPTY_DIGEST, "size": 2 },
            "layers": [ {
                "mediaType": "application/octet-stream",
                "digest": layer,
                "size": payload.len(),
            } ],
            "subject": subject.descriptor(),
        }))
        .unwrap();
        let digest = digest_of(&manifest);
        let r = self.put_manifest(repo, &digest, secret, &manifest);
        (digest, manifest, r)
    }
}

/// Deterministic bytes: two seeds give different content, one seed the same on every run.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = support::image::SplitMix64(seed);
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    out
}

/// A ustar archive with one regular file: a real layer for the clients that look inside.
pub fn tar_with_file(name: &str, data: &[u8]) -> Vec<u8> {
    assert!(name.len() < 100);
    let mut h = [0u8; 512];
    let mut put = |off: usize, val: &[u8]| h[off..off + val.len()].copy_from_slice(val);
    put(0, name.as_bytes());
    put(100, b"0000644\0");
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{:011o}\0", data.len()).as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, b"0");
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len() + (512 - data.len() % 512) % 512 + 1024, 0);
    out
}
