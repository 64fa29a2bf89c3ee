//! OCI artifacts end to end: a Helm chart stored as OCI, a cosign signature by the tag
//! scheme (`sha256-<hex>.sig`), and OCI 1.1 referrers with a `subject` (an SBOM and a
//! sigstore-bundle signature) plus the `sha256-<hex>` referrers tag an OCI 1.1 client pushes
//! to a registry without the referrers API — all written by hand with the documented media
//! types into a real docker-registry (distribution 2.8, which has no referrers API), then
//! pulled through berth, exported, imported into a fresh berth with the upstream stopped,
//! and pushed into a second docker-registry, byte-identical at every step. And the same
//! for a hosted image, whose referrers come from berth's own referrers API.

#[path = "support/hosted.rs"]
mod hosted;
#[path = "support/http.rs"]
mod http;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;
use support::berth::Berth;
use support::image::{push_image, ImageSpec, TestImage};
use support::registry::{Registry, RegistryAuth};

const HOST: &str = "upstream.test";
const VENDOR: &str = "vendor";
const PASSWORD: &str = "vendor-secret-1234";
const LICENSE: &str = "LICENSE-good-0001";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const HELM_CHART: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const COSIGN_PAYLOAD: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SPDX: &str = "application/spdx+json";
const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// The Accept header helm 3 (oras-go v2) sends when it resolves a chart.
const HELM_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.oci.artifact.manifest.v1+json";

fn config_yaml(port: u16, cache: &Path, upstream_url: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams:\n  - name: up\n    url: \"{upstream_url}\"\n    host: {HOST}\n    username: {VENDOR}\n    password: \"${{UPSTREAM_PASSWORD}}\"\n\
         apps:\n  - {{ slug: acme, upstreams: [up] }}\n\
         licenses:\n  - {{ id: {LICENSE}, app: acme, customer: Big Bank }}\n",
        cache.display()
    )
}

/// Runs the real binary; returns (success, stdout, stderr).
fn berth(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("UPSTREAM_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("spawn berth");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().expect("wait berth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", support::sha256_hex(data))
}

/// Raw distribution-API pushes, as an artifact client (helm, cosign, oras) makes them.
struct Pusher<'a> {
    reg: &'a Registry,
    auth: String,
}

impl Pusher<'_> {
    /// POST an upload, PUT its bytes with the digest; returns the descriptor.
    fn blob(&self, repo: &str, media_type: &str, data: &[u8]) -> serde_json::Value {
        let digest = digest_of(data);
        let h = [("Authorization", self.auth.as_str())];
        let r = http::request(
            self.reg.port,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &h,
            b"",
        );
        assert_eq!(r.status, 202, "starting an upload: {}", r.text());
        let loc = r.header("location").expect("upload Location").to_string();
        let path = &loc[loc.find("/v2/").expect("a /v2/ Location")..];
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = http::request(
            self.reg.port,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[
                ("Authorization", self.auth.as_str()),
                ("Content-Type", "application/octet-stream"),
            ],
            data,
        );
        assert_eq!(r.status, 201, "finishing an upload: {}", r.text());
        json!({ "mediaType": media_type, "digest": digest, "size": data.len() })
    }

    /// PUT a manifest; returns (bytes, digest).
    fn manifest(
        &self,
        repo: &str,
        reference: Option<&str>,
        v: &serde_json::Value,
    ) -> (Vec<u8>, String) {
        let bytes = serde_json::to_vec_pretty(v).unwrap();
        let digest = digest_of(&bytes);
        let media_type = v["mediaType"].as_str().unwrap();
        let r = http::request(
            self.reg.port,
            "PUT",
            &format!("/v2/{repo}/manifests/{}", reference.unwrap_or(&digest)),
            &[
                ("Authorization", self.auth.as_str()),
                ("Content-Type", media_type),
            ],
            &bytes,
        );
        assert_eq!(r.status, 201, "PUT manifest: {}", r.text());
        (bytes, digest)
    }
}

/// One artifact as pushed: its manifest bytes and digest, and its blobs' bytes.
struct Artifact {
    repo: String,
    reference: String,
    manifest: Vec<u8>,
    digest: String,
    blobs: Vec<(String, Vec<u8>)>,
}

struct Fixture {
    reg: Registry,
    dir: tempfile::TempDir,
    config: PathBuf,
    image: TestImage,
    chart: Artifact,
    /// The cosign signature at `sha256-<hex>.sig`.
    sig: Artifact,
    /// OCI 1.1 referrers of the image (by `subject`).
    sbom: Artifact,
    bundle_sig: Artifact,
    /// The `sha256-<hex>` referrers tag listing both.
    fallback: Artifact,
}

fn fixture() -> Fixture {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: PASSWORD.into(),
    });
    let image = push_image(
        &reg,
        Some((VENDOR, PASSWORD)),
        "acme/api",
        "1.0",
        &ImageSpec {
            layer_sizes: vec![256 * 1024],
            seed: 17,
        },
    );
    let p = Pusher {
        reg: &reg,
        auth: basic(VENDOR, PASSWORD),
    };
    let subject_hex = image.manifest_digest.strip_prefix("sha256:").unwrap();
    let subject = json!({
        "mediaType": image.manifest_media_type,
        "digest": image.manifest_digest,
        "size": image.manifest_size,
    });

    // A Helm chart as `helm push` stores it.
    let chart_repo = "acme/charts/api";
    let chart_config =
        br#"{"name":"api","version":"0.1.0","apiVersion":"v2","description":"the api"}"#.to_vec();
    let chart_tgz = support::image::pseudo_random_bytes(23, 40 * 1024);
    let cd = p.blob(chart_repo, HELM_CONFIG, &chart_config);
    let ld = p.blob(chart_repo, HELM_CHART, &chart_tgz);
    let (manifest, digest) = p.manifest(
        chart_repo,
        Some("0.1.0"),
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": cd,
            "layers": [ld],
            "annotations": { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
        }),
    );
    let chart = Artifact {
        repo: chart_repo.into(),
        reference: "0.1.0".into(),
        manifest,
        digest,
        blobs: vec![
            (cd["digest"].as_str().unwrap().into(), chart_config),
            (ld["digest"].as_str().unwrap().into(), chart_tgz),
        ],
    };

    // A cosign signature by the tag scheme.
    let payload = serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": format!("{HOST}/acme/api") },
            "image": { "docker-manifest-digest": image.manifest_digest },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .unwrap();
    let sig_config =
        br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let scd = p.blob(
        "acme/api",
        "application/vnd.oci.image.config.v1+json",
        &sig_config,
    );
    let mut sld = p.blob("acme/api", COSIGN_PAYLOAD, &payload);
    sld["annotations"] =
        json!({ "dev.cosignproject.cosign/signature": STANDARD.encode(b"not-a-real-signature") });
    let sig_tag = format!("sha256-{subject_hex}.sig");
    let (manifest, digest) = p.manifest(
        "acme/api",
        Some(&sig_tag),
        &json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": scd, "layers": [sld] }),
    );
    let sig = Artifact {
        repo: "acme/api".into(),
        reference: sig_tag,
        manifest,
        digest,
        blobs: vec![
            (scd["digest"].as_str().unwrap().into(), sig_config),
            (sld["digest"].as_str().unwrap().into(), payload),
        ],
    };

    // OCI 1.1 referrers: an SBOM and a sigstore bundle, each with the image as `subject`.
    let empty = p.blob("acme/api", EMPTY_CONFIG, b"{}");
    let referrer = |artifact_type: &str, data: Vec<u8>| {
        let layer = p.blob("acme/api", artifact_type, &data);
        let (manifest, digest) = p.manifest(
            "acme/api",
            None,
            &json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": empty,
                "layers": [layer],
                "subject": subject,
                "annotations": { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
            }),
        );
        Artifact {
            repo: "acme/api".into(),
            reference: digest.clone(),
            manifest,
            digest,
            blobs: vec![
                (
                    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
                        .into(),
                    b"{}".to_vec(),
                ),
                (layer["digest"].as_str().unwrap().into(), data),
            ],
        }
    };
    let sbom = referrer(
        SPDX,
        serde_json::to_vec(&json!({ "spdxVersion": "SPDX-2.3", "name": "api", "packages": [] }))
            .unwrap(),
    );
    let bundle_sig = referrer(
        SIGSTORE_BUNDLE,
        br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#.to_vec(),
    );
    assert_eq!(sbom.blobs[0].0, digest_of(b"{}"));
    // What an OCI 1.1 client pushes where the registry has no referrers API.
    let fallback_tag = format!("sha256-{subject_hex}");
    let listed = |a: &Artifact, t: &str| json!({ "mediaType": OCI_MANIFEST, "digest": a.digest, "size": a.manifest.len(), "artifactType": t });
    let (manifest, digest) = p.manifest(
        "acme/api",
        Some(&fallback_tag),
        &json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [listed(&sbom, SPDX), listed(&bundle_sig, SIGSTORE_BUNDLE)],
        }),
    );
    let fallback = Artifact {
        repo: "acme/api".into(),
        reference: fallback_tag,
        manifest,
        digest,
        blobs: Vec::new(),
    };

    let dir = support::tempdir();
    let config = dir.path().join("export.yaml");
    std::fs::write(
        &config,
        config_yaml(
            support::free_port(),
            &dir.path().join("export-cache"),
            &reg.url(),
        ),
    )
    .unwrap();
    Fixture {
        reg,
        dir,
        config,
        image,
        chart,
        sig,
        sbom,
        bundle_sig,
        fallback,
    }
}

/// GETs `path` from berth with the license.
fn get(b: &Berth, path: &str, accept: Option<&str>) -> http::Resp {
    let auth = basic(LICENSE, LICENSE);
    let mut h = vec![("Authorization", auth.as_str())];
    if let Some(a) = accept {
        h.push(("Accept", a));
    }
    http::get(b.port, path, &h)
}

/// Every artifact is served by berth byte for byte: manifests by their tag (or digest),
/// with the digest berth names, and every blob they reference.
fn assert_pulls(b: &Berth, fx: &Fixture, label: &str) {
    let image = Artifact {
        repo: "acme/api".into(),
        reference: "1.0".into(),
        manifest: std::fs::read(fx.image.blob_path(&fx.image.manifest_digest)).unwrap(),
        digest: fx.image.manifest_digest.clone(),
        blobs: Vec::new(),
    };
    let all = [&fx.chart, &fx.sig, &fx.sbom, &fx.bundle_sig, &fx.fallback];
    for a in std::iter::once(&image).chain(all) {
        // The chart as helm resolves it; the rest with berth's default Accept set.
        let accept = (a.repo == fx.chart.repo).then_some(HELM_ACCEPT);
        let (repo, reference, bytes, digest) = (&a.repo, &a.reference, &a.manifest, &a.digest);
        let path = format!("/v2/proxy/acme/{HOST}/{repo}/manifests/{reference}");
        let r = get(b, &path, accept);
        assert_eq!(r.status, 200, "{label}: {path}: {}\n{}", r.text(), b.logs());
        assert!(
            r.body == *bytes,
            "{label}: {path}: other bytes: {}",
            r.text()
        );
        assert_eq!(
            r.header("docker-content-digest"),
            Some(digest.as_str()),
            "{label}: {path}"
        );
    }
    for a in all {
        for (d, data) in &a.blobs {
            let path = format!("/v2/proxy/acme/{HOST}/{}/blobs/{d}", a.repo);
            let r = get(b, &path, None);
            assert_eq!(r.status, 200, "{label}: {path}: {}", r.text());
            assert!(r.body == *data, "{label}: {path}: other bytes");
        }
    }
    // The chart's content type is what helm checks.
    let r = get(
        b,
        &format!("/v2/proxy/acme/{HOST}/acme/charts/api/manifests/0.1.0"),
        Some(HELM_ACCEPT),
    );
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST), "{label}");
    assert_eq!(r.json()["config"]["mediaType"], HELM_CONFIG);
}

/// berth's referrers endpoint answers from the `sha256-<hex>` tag (the upstream has no
/// API): the tag's index byte for byte, and filtered by artifactType.
fn assert_referrers(b: &Berth, fx: &Fixture, label: &str) {
    let path = format!(
        "/v2/proxy/acme/{HOST}/acme/api/referrers/{}",
        fx.image.manifest_digest
    );
    let r = get(b, &path, None);
    assert_eq!(r.status, 200, "{label}: {}\n{}", r.text(), b.logs());
    assert_eq!(r.header("content-type"), Some(OCI_INDEX), "{label}");
    assert!(
        r.body == fx.fallback.manifest,
        "{label}: referrers answer is not the tag's index: {}",
        r.text()
    );
    // Encoded as clients do: a bare `+` in a query is a space.
    let r = get(
        b,
        &format!("{path}?artifactType=application%2Fspdx%2Bjson"),
        None,
    );
    assert_eq!(r.status, 200, "{label}: {}", r.text());
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let listed: Vec<String> = r.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, vec![fx.sbom.digest.clone()], "{label}");
    // A manifest nobody refers to has none (the empty index, not an error).
    let r = get(
        b,
        &format!(
            "/v2/proxy/acme/{HOST}/acme/api/referrers/{}",
            fx.sbom.digest
        ),
        None,
    );
    assert_eq!(r.status, 200, "{label}: {}", r.text());
    assert_eq!(r.json()["manifests"], json!([]), "{label}");
}

fn tar_entries(path: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("tf").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn has_blob(entries: &[String], digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").unwrap();
    entries.iter().any(|e| e == &format!("blobs/sha256/{hex}"))
}

impl Fixture {
    fn export(&self, name: &str, extra: &[&str]) -> (PathBuf, String) {
        let out = self.dir.path().join(name);
        let chart = format!("{HOST}/acme/charts/api:0.1.0");
        let api = format!("{HOST}/acme/api:1.0");
        let mut args = vec![
            "airgap",
            "export",
            "--config",
            self.config.to_str().unwrap(),
            "--app",
            "acme",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend([api.as_str(), chart.as_str()]);
        let started = Instant::now();
        let (ok, stdout, stderr) = berth(&args, None);
        assert!(ok, "export failed:\n{stdout}\n{stderr}");
        eprintln!(
            "MEASURE export {name}: {:.2}s, {} bytes",
            started.elapsed().as_secs_f64(),
            std::fs::metadata(&out).unwrap().len()
        );
        (out, stdout)
    }
}

#[test]
fn artifacts_and_referrers_round_trip_through_the_proxy_and_airgap_bundles() {
    let started = Instant::now();
    let mut fx = fixture();

    // 1. Pulled through berth from the live upstream.
    let port = support::free_port();
    let live_cache = support::tempdir();
    let live = Berth::start_on(
        port,
        &config_yaml(port, live_cache.path(), &fx.reg.url()),
        &[("UPSTREAM_PASSWORD", PASSWORD)],
    );
    assert_pulls(&live, &fx, "live");
    assert_referrers(&live, &fx, "live");
    drop(live);

    // 2. Exported with the referrers (default) and without.
    let (bundle, stdout) = fx.export("bundle.tar", &[]);
    assert!(stdout.contains("2 images, 4 referrers"), "{stdout}");
    let entries = tar_entries(&bundle);
    for a in [&fx.chart, &fx.sig, &fx.sbom, &fx.bundle_sig, &fx.fallback] {
        assert!(has_blob(&entries, &a.digest), "{} missing", a.reference);
        for (d, _) in &a.blobs {
            assert!(has_blob(&entries, d), "blob {d} of {} missing", a.reference);
        }
    }
    let index: serde_json::Value = {
        let out = Command::new("tar")
            .args(["xOf", bundle.to_str().unwrap(), "index.json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let kinds: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| {
            let a = &d["annotations"];
            Some((
                a["io.berth.referrer"].as_str()?.to_string(),
                a["io.berth.upstream.ref"].as_str()?.to_string(),
            ))
        })
        .collect();
    let hex = fx.image.manifest_digest.strip_prefix("sha256:").unwrap();
    assert_eq!(
        kinds,
        vec![
            (
                "subject".into(),
                format!("{HOST}/acme/api@{}", fx.sbom.digest)
            ),
            (
                "subject".into(),
                format!("{HOST}/acme/api@{}", fx.bundle_sig.digest)
            ),
            ("tag".into(), format!("{HOST}/acme/api:sha256-{hex}.sig")),
            ("index-tag".into(), format!("{HOST}/acme/api:sha256-{hex}")),
        ]
    );
    let (ok, listed, stderr) = berth(&["airgap", "list", bundle.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    assert!(listed.contains("2 images, 4 referrers"), "{listed}");
    assert!(
        listed.contains(&format!(
            "{HOST}/acme/api:sha256-{hex}.sig\t{}",
            fx.sig.digest
        )),
        "{listed}"
    );
    let (bare, stdout) = fx.export("bare.tar", &["--no-referrers"]);
    assert!(stdout.contains("2 images, 0 referrers"), "{stdout}");
    let bare_entries = tar_entries(&bare);
    for a in [&fx.sig, &fx.sbom, &fx.bundle_sig, &fx.fallback] {
        assert!(
            !has_blob(&bare_entries, &a.digest),
            "{} exported",
            a.reference
        );
    }
    assert!(has_blob(&bare_entries, &fx.chart.digest));
    eprintln!(
        "MEASURE bundle {} bytes with referrers, {} without",
        std::fs::metadata(&bundle).unwrap().len(),
        std::fs::metadata(&bare).unwrap().len()
    );

    // 3. Imported into a fresh berth; the upstream is gone.
    let upstream_url = fx.reg.url();
    fx.reg.stop();
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = config_yaml(port, cache.path(), &upstream_url);
    let cfg = cache.path().join("berth.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let t = Instant::now();
    let (ok, stdout, stderr) = berth(
        &[
            "airgap",
            "import",
            "--config",
            cfg.to_str().unwrap(),
            bundle.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "import:\n{stdout}\n{stderr}");
    eprintln!("MEASURE import: {:.2}s", t.elapsed().as_secs_f64());
    let site = Berth::start_on(port, &yaml, &[("UPSTREAM_PASSWORD", PASSWORD)]);
    assert_pulls(&site, &fx, "airgap site");
    assert_referrers(&site, &fx, "airgap site");
    drop(site);
    // The upstream back but refusing berth (the airgap site's credentials are not the
    // vendor's): the imported answers stand.
    fx.reg.restart();
    let refused = Berth::start_on(port, &yaml, &[("UPSTREAM_PASSWORD", "not-the-password")]);
    assert_pulls(&refused, &fx, "upstream refusing");
    assert_referrers(&refused, &fx, "upstream refusing");
    drop(refused);
    fx.reg.stop();

    // 4. Pushed into another registry (no referrers API either): tags, referrers by digest
    // and the referrers tag are there, byte for byte.
    let target = Registry::start(RegistryAuth::Htpasswd {
        user: "pusher".into(),
        password: "pusher-pw-5678".into(),
    });
    let to = format!("{}/mirror", target.host());
    let t = Instant::now();
    let (ok, stdout, stderr) = berth(
        &[
            "airgap",
            "push",
            bundle.to_str().unwrap(),
            "--to",
            &to,
            "--username",
            "pusher",
            "--password-stdin",
            "--insecure",
        ],
        Some("pusher-pw-5678\n"),
    );
    assert!(ok, "push:\n{stdout}\n{stderr}");
    eprintln!("MEASURE push: {:.2}s", t.elapsed().as_secs_f64());
    let auth = basic("pusher", "pusher-pw-5678");
    let all = [&fx.chart, &fx.sig, &fx.sbom, &fx.bundle_sig, &fx.fallback];
    for a in all {
        let path = format!("/v2/mirror/{HOST}/{}/manifests/{}", a.repo, a.reference);
        let r = http::get(
            target.port,
            &path,
            &[
                ("Authorization", auth.as_str()),
                ("Accept", &format!("{OCI_MANIFEST}, {OCI_INDEX}")),
            ],
        );
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.body == a.manifest, "{path}: other bytes: {}", r.text());
        for (d, data) in &a.blobs {
            let path = format!("/v2/mirror/{HOST}/{}/blobs/{d}", a.repo);
            let r = http::get(target.port, &path, &[("Authorization", auth.as_str())]);
            assert_eq!(r.status, 200, "{path}");
            assert!(r.body == *data, "{path}: other bytes");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("MEASURE whole test: {secs:.1}s");
}

/// A hosted image's referrers (berth's own referrers API: the `index-api` entry) go along:
/// into the other berth's hosted repository (answered there from the referrers' `subject`,
/// no extra tag), and into a registry without the API with the `sha256-<hex>` tag pushed
/// for them, byte for byte what the first berth's API answered.
#[test]
fn hosted_referrers_go_with_a_hosted_image() {
    let one = hosted::fixture();
    let key = one.key("acme", &["push", "pull"]);
    let img = one.push_image("acme/api", &["1.0"], &key, 41);
    let (sbom, sbom_bytes, r) = one.push_artifact(
        "acme/api",
        &key,
        SPDX,
        &img,
        br#"{"spdxVersion":"SPDX-2.3"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // A cosign signature by tag, pushed as cosign does.
    let hex = img.digest.strip_prefix("sha256:").unwrap();
    let payload = br#"{"critical":{"type":"cosign container image signature"},"optional":null}"#;
    let config = one.push_blob("acme/api", &key, b"{}");
    let layer = one.push_blob("acme/api", &key, payload);
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": EMPTY_CONFIG, "digest": config, "size": 2 },
        "layers": [{
            "mediaType": COSIGN_PAYLOAD, "digest": layer, "size": payload.len(),
            "annotations": { "dev.cosignproject.cosign/signature": "c2ln" },
        }],
    }))
    .unwrap();
    let sig_tag = format!("sha256-{hex}.sig");
    let r = one.put_manifest("acme/api", &sig_tag, &key, &sig);
    assert_eq!(r.status, 201, "{}", r.text());
    let referrers_path = format!("/v2/acme/api/referrers/{}", img.digest);
    let listed = one.req("GET", &referrers_path, &key, &[], b"");
    assert_eq!(listed.status, 200, "{}", listed.text());

    let dir = support::tempdir();
    let bundle = dir.path().join("hosted.tar");
    let reference = format!("{}/acme/api:1.0", one.host());
    let run = support::berth::run_cli(
        &[
            "airgap",
            "export",
            "--config",
            one.berth.config_path.to_str().unwrap(),
            "--app",
            "acme",
            "-o",
            bundle.to_str().unwrap(),
            &reference,
        ],
        &[],
        None,
        std::time::Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(0), "export:\n{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("1 image, 3 referrers"),
        "{}",
        run.stdout
    );

    // Into another berth's hosted registry: the referrers API there lists the SBOM, the
    // signature tag is there, and the referrers list became no tag.
    let two = hosted::fixture();
    let run = support::berth::run_cli(
        &[
            "airgap",
            "import",
            "--config",
            two.berth.config_path.to_str().unwrap(),
            "--app",
            "acme",
            bundle.to_str().unwrap(),
        ],
        &[],
        None,
        std::time::Duration::from_secs(60),
    );
    assert_eq!(run.code, Some(0), "import:\n{}\n{}", run.stdout, run.stderr);
    let key2 = two.key("acme", &["pull"]);
    let r = two.req("GET", &referrers_path, &key2, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let digests: Vec<String> = r.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(digests, vec![sbom.clone()]);
    for (reference, bytes) in [(sbom.as_str(), &sbom_bytes), (sig_tag.as_str(), &sig)] {
        let r = two.req(
            "GET",
            &format!("/v2/acme/api/manifests/{reference}"),
            &key2,
            &[("Accept", OCI_MANIFEST)],
            b"",
        );
        assert_eq!(r.status, 200, "{reference}: {}", r.text());
        assert!(r.body == *bytes, "{reference}: other bytes");
    }
    let tags = two
        .req("GET", "/v2/acme/api/tags/list", &key2, &[], b"")
        .json();
    assert_eq!(tags["tags"], json!(["1.0", sig_tag]), "{tags}");

    // Into a registry without the referrers API: the list goes as the referrers tag.
    let target = Registry::start(RegistryAuth::None);
    let to = format!("{}/mirror", target.host());
    let (ok, stdout, stderr) = berth(
        &[
            "airgap",
            "push",
            bundle.to_str().unwrap(),
            "--to",
            &to,
            "--insecure",
        ],
        None,
    );
    assert!(ok, "push:\n{stdout}\n{stderr}");
    // `berth rewrite --registry`'s name for a hosted image: the host with `_` for `:`.
    let base = format!("/v2/mirror/127.0.0.1_{}/acme/api/manifests", one.berth.port);
    let accept = format!("{OCI_MANIFEST}, {OCI_INDEX}");
    for (reference, bytes) in [
        (sbom.clone(), sbom_bytes.clone()),
        (sig_tag.clone(), sig.clone()),
        (format!("sha256-{hex}"), listed.body.clone()),
    ] {
        let r = http::get(
            target.port,
            &format!("{base}/{reference}"),
            &[("Accept", accept.as_str())],
        );
        assert_eq!(r.status, 200, "{reference}: {}", r.text());
        assert!(r.body == bytes, "{reference}: other bytes: {}", r.text());
    }

    // Into a registry with the referrers API (the other berth's hosted registry): the
    // referrers go, the tag of the list does not; the API lists them from their subject.
    let pusher = two.key("acme", &["push", "pull"]);
    let to = format!("{}/acme", two.host());
    let (ok, stdout, stderr) = berth(
        &[
            "airgap",
            "push",
            bundle.to_str().unwrap(),
            "--to",
            &to,
            "--username",
            "api",
            "--password-stdin",
            "--insecure",
        ],
        Some(&format!("{pusher}\n")),
    );
    assert!(ok, "push:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("the registry has the referrers API; tag not pushed"),
        "{stderr}"
    );
    let repo = format!("/v2/acme/127.0.0.1_{}/acme/api", one.berth.port);
    let tags = two
        .req("GET", &format!("{repo}/tags/list"), &key2, &[], b"")
        .json();
    assert_eq!(tags["tags"], json!(["1.0", sig_tag]), "{tags}");
    let r = two.req(
        "GET",
        &format!("{repo}/referrers/{}", img.digest),
        &key2,
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["manifests"][0]["digest"], json!(sbom));
}
