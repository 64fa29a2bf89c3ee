//! Integration tests of `berth airgap`: export from a real docker-registry, read back with
//! skopeo, import into a cache that serves with the upstream stopped, push into a second
//! registry with htpasswd auth, and refusal of damaged or hostile bundles.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use support::berth::Berth;
use support::image::{
    push_image, push_index, read_oci_layout, skopeo_copy_to_oci, ImageSpec, TestImage, TestIndex,
};
use support::registry::{Registry, RegistryAuth};

const HOST: &str = "upstream.test";
const VENDOR: &str = "vendor";
const PASSWORD: &str = "vendor-secret-1234";
const LICENSE: &str = "LICENSE-good-0001";
const MIB: u64 = 1 << 20;

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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args)
        .env("UPSTREAM_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("spawn berth");
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

struct Upstream {
    reg: Registry,
    index: TestIndex,
    worker: TestImage,
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// An htpasswd upstream with a two-platform index (`acme/api:1.2`) and an image
/// (`acme/worker:3`) that share a 1 MiB layer; the worker has a 9 MiB layer, bigger than
/// one push chunk.
fn upstream() -> Upstream {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: PASSWORD.into(),
    });
    let creds = Some((VENDOR, PASSWORD));
    let index = push_index(
        &reg,
        creds,
        "acme/api",
        "1.2",
        &[
            (
                "linux",
                "amd64",
                ImageSpec {
                    layer_sizes: vec![MIB, 200 * 1024],
                    seed: 7,
                },
            ),
            (
                "linux",
                "arm64",
                ImageSpec {
                    layer_sizes: vec![MIB, 300 * 1024],
                    seed: 7,
                },
            ),
        ],
    );
    let worker = push_image(
        &reg,
        creds,
        "acme/worker",
        "3",
        &ImageSpec {
            layer_sizes: vec![MIB, 9 * MIB],
            seed: 7,
        },
    );
    let dir = support::tempdir();
    let config = dir.path().join("export.yaml");
    std::fs::write(
        &config,
        config_yaml(
            support::free_port(),
            &dir.path().join("unused-cache"),
            &reg.url(),
        ),
    )
    .unwrap();
    Upstream {
        reg,
        index,
        worker,
        dir,
        config,
    }
}

fn api_ref() -> String {
    format!("{HOST}/acme/api:1.2")
}

fn worker_ref() -> String {
    format!("{HOST}/acme/worker:3")
}

impl Upstream {
    fn export(&self, name: &str, extra: &[&str]) -> (PathBuf, f64) {
        let out = self.dir.path().join(name);
        let started = Instant::now();
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
        let (ok, stdout, stderr) = berth(&args, None);
        assert!(ok, "export failed:\n{stdout}\n{stderr}");
        assert!(!stderr.contains(PASSWORD) && !stdout.contains(PASSWORD));
        (out, started.elapsed().as_secs_f64())
    }

    fn export_all(&self) -> (PathBuf, f64) {
        let refs = self.dir.path().join("images.txt");
        std::fs::write(
            &refs,
            format!("# the app\n{}\n\n{}\n", api_ref(), worker_ref()),
        )
        .unwrap();
        self.export("bundle.tar", &["--images-file", refs.to_str().unwrap()])
    }

    /// Every layer of every image, counted once per image (what separate exports would hold).
    fn layer_sum(&self) -> u64 {
        self.index
            .children
            .iter()
            .chain([&self.worker])
            .flat_map(|i| i.layers.iter().map(|(_, s)| *s))
            .sum()
    }
}

fn tar_entries(path: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("tf").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo")
}

fn raw_digest(out: &Output) -> String {
    assert!(
        out.status.success(),
        "skopeo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256:{}", support::sha256_hex(&out.stdout))
}

#[test]
fn export_writes_an_oci_layout_skopeo_reads_with_shared_layers_once() {
    let up = upstream();
    let (bundle, secs) = up.export_all();
    let size = std::fs::metadata(&bundle).unwrap().len();
    eprintln!(
        "MEASURE export: {secs:.2}s; bundle {size} bytes; layers summed over images {} bytes",
        up.layer_sum()
    );
    let archive = |r: &str| format!("oci-archive:{}:{r}", bundle.display());
    // The index is kept whole, byte for byte.
    let idx = skopeo(&["inspect", "--raw", &archive(&api_ref())]);
    assert_eq!(raw_digest(&idx), up.index.index_digest);
    let w = skopeo(&["inspect", "--raw", &archive(&worker_ref())]);
    assert_eq!(raw_digest(&w), up.worker.manifest_digest);
    // A full copy out of the bundle re-hashes every blob.
    let dest = support::tempdir();
    let out = skopeo_copy_to_oci(
        &archive(&worker_ref()),
        None,
        dest.path(),
        &["--preserve-digests"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layout = read_oci_layout(dest.path());
    assert_eq!(layout.manifest_digest, up.worker.manifest_digest);
    for (d, _) in &up.worker.layers {
        assert!(layout.blob_digests.contains(d));
    }
    let dest = support::tempdir();
    let out = skopeo_copy_to_oci(
        &archive(&api_ref()),
        None,
        dest.path(),
        &["--preserve-digests", "--all"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        read_oci_layout(dest.path()).manifest_digest,
        up.index.index_digest
    );
    // The layer all three manifests share is stored once.
    let shared = &up.worker.layers[0].0;
    assert_eq!(&up.index.children[0].layers[0].0, shared);
    let entries = tar_entries(&bundle);
    let name = format!("blobs/sha256/{}", shared.trim_start_matches("sha256:"));
    assert_eq!(entries.iter().filter(|e| **e == name).count(), 1);
    assert!(size < up.layer_sum(), "dedup: {size} >= {}", up.layer_sum());
    // `list` names the images and platforms.
    let (ok, stdout, stderr) = berth(&["airgap", "list", bundle.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&api_ref()) && stdout.contains(&worker_ref()));
    assert!(stdout.contains("linux/amd64,linux/arm64"), "{stdout}");
    assert!(stdout.contains("2 images"), "{stdout}");
}

#[test]
fn export_filters_platforms_and_rewrites_the_index() {
    let up = upstream();
    let (bundle, _) = up.export("arm.tar", &["--platform", "linux/arm64", &api_ref()]);
    let out = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}:{}", bundle.display(), api_ref()),
    ]);
    assert!(out.status.success());
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = index["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0]["digest"],
        up.index.children[1].manifest_digest.as_str()
    );
    let amd_only_layer = &up.index.children[0].layers[1].0;
    assert!(!tar_entries(&bundle)
        .iter()
        .any(|e| e.ends_with(amd_only_layer.trim_start_matches("sha256:"))));
}

struct Served {
    berth: Berth,
    _cache: tempfile::TempDir,
    cache_dir: PathBuf,
}

/// `berth airgap import --config CFG BUNDLE`; returns (success, stdout, stderr).
fn import(cfg: &Path, bundle: &Path) -> (bool, String, String) {
    berth(
        &[
            "airgap",
            "import",
            "--config",
            cfg.to_str().unwrap(),
            bundle.to_str().unwrap(),
        ],
        None,
    )
}

/// A fresh cache: imports `bundle` (expecting `ok`), then starts berth on it.
fn import_and_serve(upstream_url: &str, bundle: &Path, ok: bool) -> (Served, String) {
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = config_yaml(port, cache.path(), upstream_url);
    let cfg = cache.path().join("berth.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let cache_dir = cache.path().to_path_buf();
    let started = Instant::now();
    let (success, stdout, stderr) = import(&cfg, bundle);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(success, ok, "import:\n{stdout}\n{stderr}");
    if ok {
        eprintln!("MEASURE import: {secs:.2}s");
    }
    let berth = Berth::start_on(port, &yaml, &[("UPSTREAM_PASSWORD", PASSWORD)]);
    (
        Served {
            berth,
            _cache: cache,
            cache_dir,
        },
        stderr,
    )
}

fn pull(b: &Berth, reference: &str, all: bool) -> String {
    let dest = support::tempdir();
    let src = format!("docker://127.0.0.1:{}/proxy/acme/{reference}", b.port);
    let mut extra = vec!["--preserve-digests"];
    if all {
        extra.push("--all");
    }
    let creds = format!("{LICENSE}:{LICENSE}");
    let out = skopeo_copy_to_oci(&src, Some(&creds), dest.path(), &extra);
    assert!(
        out.status.success(),
        "pull {src}: {}\nberth log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.logs()
    );
    read_oci_layout(dest.path()).manifest_digest
}

#[test]
fn import_serves_by_tag_and_digest_with_the_upstream_stopped() {
    let mut up = upstream();
    let (bundle, _) = up.export_all();
    let url = up.reg.url();
    up.reg.stop();
    let (served, _) = import_and_serve(&url, &bundle, true);
    let b = &served.berth;
    assert_eq!(pull(b, &api_ref(), true), up.index.index_digest);
    assert_eq!(pull(b, &worker_ref(), false), up.worker.manifest_digest);
    assert_eq!(
        pull(
            b,
            &format!("{HOST}/acme/api@{}", up.index.index_digest),
            true
        ),
        up.index.index_digest
    );
    assert_eq!(
        pull(
            b,
            &format!("{HOST}/acme/worker@{}", up.worker.manifest_digest),
            false
        ),
        up.worker.manifest_digest
    );
    // skopeo's Accept set is not berth's default one the import seeded: the tag answers
    // came from the registry's fallback to a stored answer of another Accept set, served
    // as stale when the upstream cannot be reached.
    assert!(
        b.logs()
            .contains("upstream unavailable: serving the last known manifest"),
        "{}",
        b.logs()
    );
    // Imported blobs are pinned, in a file the next start reads.
    let pins = std::fs::read_to_string(served.cache_dir.join("pins")).unwrap();
    for (d, _) in &up.worker.layers {
        assert!(pins.contains(d.trim_start_matches("sha256:")));
    }
}

/// An airgap site whose upstream answers but refuses berth (the credentials there are
/// old or none): imported tags are served all the same, with the stale line; a tag that
/// was never imported is the upstream's refusal.
#[test]
fn imported_tags_are_served_when_the_upstream_refuses() {
    let up = upstream();
    let (bundle, _) = up.export_all();
    let cache = support::tempdir();
    let port = support::free_port();
    // A tag_ttl of zero: every pull asks the upstream again.
    let yaml =
        config_yaml(port, cache.path(), &up.reg.url()).replace("cache: {", "cache: { tag_ttl: 0s,");
    let cfg = cache.path().join("berth.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let (ok, stdout, stderr) = import(&cfg, &bundle);
    assert!(ok, "import:\n{stdout}\n{stderr}");
    let b = Berth::start_on(port, &yaml, &[("UPSTREAM_PASSWORD", "not-the-password")]);
    for _ in 0..2 {
        assert_eq!(pull(&b, &api_ref(), true), up.index.index_digest);
        assert_eq!(pull(&b, &worker_ref(), false), up.worker.manifest_digest);
    }
    let log = b.logs();
    assert!(
        log.contains("upstream refused: serving the manifest imported from an airgap bundle"),
        "{log}"
    );
    assert!(
        up.reg.count_requests("GET", "/manifests/1.2")
            + up.reg.count_requests("HEAD", "/manifests/1.2")
            > 0,
        "berth did not ask the upstream at all"
    );
    // Never imported: the upstream's refusal stands (berth's own credentials failed).
    let out = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("{LICENSE}:{LICENSE}"),
        &format!("docker://127.0.0.1:{port}/proxy/acme/{HOST}/acme/api:not-imported"),
    ]);
    assert!(!out.status.success(), "a tag never imported was served");
}

#[test]
fn import_into_a_running_server_is_served_without_a_restart() {
    let mut up = upstream();
    let (bundle, _) = up.export_all();
    let url = up.reg.url();
    up.reg.stop();
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = config_yaml(port, cache.path(), &url);
    let cfg = cache.path().join("berth.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let b = Berth::start_on(port, &yaml, &[("UPSTREAM_PASSWORD", PASSWORD)]);
    // Nothing cached and the upstream gone: the pull fails.
    let dest = support::tempdir();
    let src = format!("docker://127.0.0.1:{port}/proxy/acme/{}", worker_ref());
    let creds = format!("{LICENSE}:{LICENSE}");
    let out = skopeo_copy_to_oci(&src, Some(&creds), dest.path(), &[]);
    assert!(
        !out.status.success(),
        "pulled with nothing cached and no upstream"
    );

    let (ok, stdout, stderr) = import(&cfg, &bundle);
    assert!(ok, "import next to a running server:\n{stdout}\n{stderr}");
    // The same server, not restarted, now serves the images, by tag and by digest.
    assert_eq!(pull(&b, &worker_ref(), false), up.worker.manifest_digest);
    assert_eq!(pull(&b, &api_ref(), true), up.index.index_digest);
    assert_eq!(
        pull(
            &b,
            &format!("{HOST}/acme/worker@{}", up.worker.manifest_digest),
            false
        ),
        up.worker.manifest_digest
    );
    assert!(b.logs().contains("adopted a blob"), "{}", b.logs());
}

#[test]
fn push_into_an_htpasswd_registry_then_again_skips_present_blobs() {
    let up = upstream();
    let (bundle, _) = up.export_all();
    let target = Registry::start(RegistryAuth::Htpasswd {
        user: "pusher".into(),
        password: "pusher-pw-5678".into(),
    });
    let to = format!("{}/mirror", target.host());
    let push = || {
        berth(
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
        )
    };
    let (ok, stdout, stderr) = push();
    assert!(ok, "push:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("pusher-pw-5678") && !stderr.contains("pusher-pw-5678"));
    let new_api = format!("{to}/{HOST}/acme/api:1.2");
    assert!(
        stdout.contains(&format!("{} {new_api}", api_ref())),
        "{stdout}"
    );
    let inspect = |r: &str| {
        skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "pusher:pusher-pw-5678",
            &format!("docker://{r}"),
        ])
    };
    assert_eq!(raw_digest(&inspect(&new_api)), up.index.index_digest);
    assert_eq!(
        raw_digest(&inspect(&format!("{to}/{HOST}/acme/worker:3"))),
        up.worker.manifest_digest
    );
    // The 9 MiB layer went up in chunks.
    assert!(target.count_requests("PATCH", "/blobs/uploads") >= 2);
    let puts = target.count_requests("PUT", "/blobs/uploads");
    eprintln!(
        "MEASURE first push: {}",
        stderr.lines().last().unwrap_or("")
    );
    let (ok, stdout, stderr) = push();
    assert!(ok, "second push:\n{stdout}\n{stderr}");
    assert_eq!(target.count_requests("PUT", "/blobs/uploads"), puts);
    assert!(stderr.contains("0 blobs uploaded"), "{stderr}");
    eprintln!(
        "MEASURE second push: {}",
        stderr.lines().last().unwrap_or("")
    );
}

/// A push into a registry behind a token realm: the destination's challenge is answered
/// by the same token code as pulls, and the layer the two images share is mounted from
/// the repository this run pushed it to, with one token for push here and pull there.
#[test]
fn push_into_a_token_registry_mounts_shared_blobs() {
    let up = upstream();
    let (bundle, _) = up.export_all();
    let realm = support::token::TokenRealm::start("pusher", "pusher-pw-9876", 300);
    let target = Registry::start(realm.registry_auth());
    let to = format!("{}/mirror", target.host());
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
        Some("pusher-pw-9876\n"),
    );
    assert!(ok, "push:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("pusher-pw-9876") && !stderr.contains("pusher-pw-9876"));
    let summary = stderr.lines().last().unwrap_or("");
    assert!(
        summary.contains(" mounted") && !summary.contains(" 0 mounted"),
        "{stderr}"
    );
    // The mount asked one token for both repositories, as two scope parameters.
    let api = format!("repository:mirror/{HOST}/acme/api:pull");
    let worker = format!("repository:mirror/{HOST}/acme/worker:pull,push");
    assert!(
        realm.requests().iter().any(|r| {
            let scopes = r.query_all("scope");
            scopes.contains(&api) && scopes.contains(&worker)
        }),
        "{:?}",
        realm
            .requests()
            .iter()
            .map(|r| r.query_all("scope"))
            .collect::<Vec<_>>()
    );
    let creds = "--creds=pusher:pusher-pw-9876";
    let worker_ref = format!("docker://{to}/{HOST}/acme/worker:3");
    let out = skopeo(&["inspect", "--raw", "--tls-verify=false", creds, &worker_ref]);
    assert_eq!(raw_digest(&out), up.worker.manifest_digest);
}

/// Rewrites a bundle entry by entry: `edit` may change an entry's bytes or drop it
/// (None); `extra` entries are appended with raw names (no sanitizing).
fn rewrite_bundle(
    src: &Path,
    dest: &Path,
    mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>,
    extra: &[(&str, tar::EntryType, &[u8])],
) {
    let mut a = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(dest).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if let Some(data) = edit(&name, data) {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, &name, &data[..]).unwrap();
        }
    }
    for (name, kind, data) in extra {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        if *kind == tar::EntryType::Symlink {
            h.set_size(0);
            h.set_link_name("/etc/passwd").unwrap();
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
    }
    b.finish().unwrap();
}

#[test]
fn damaged_and_hostile_bundles_are_refused_and_nothing_is_served() {
    let mut up = upstream();
    let (bundle, _) = up.export_all();
    let url = up.reg.url();
    up.reg.stop();
    let dir = support::tempdir();
    let layer = up.worker.layers[1]
        .0
        .trim_start_matches("sha256:")
        .to_string();
    let layer_entry = format!("blobs/sha256/{layer}");

    let flipped = dir.path().join("flipped.tar");
    rewrite_bundle(
        &bundle,
        &flipped,
        |n, mut d| {
            if n == layer_entry {
                d[4096] ^= 1;
            }
            Some(d)
        },
        &[],
    );
    let missing = dir.path().join("missing.tar");
    rewrite_bundle(
        &bundle,
        &missing,
        |n, d| (n != layer_entry).then_some(d),
        &[],
    );
    let escape = dir.path().join("escape.tar");
    rewrite_bundle(
        &bundle,
        &escape,
        |_, d| Some(d),
        &[("../evil", tar::EntryType::Regular, b"x")],
    );
    let absolute = dir.path().join("absolute.tar");
    rewrite_bundle(
        &bundle,
        &absolute,
        |_, d| Some(d),
        &[("/tmp/evil", tar::EntryType::Regular, b"x")],
    );
    let symlink = dir.path().join("symlink.tar");
    rewrite_bundle(
        &bundle,
        &symlink,
        |_, d| Some(d),
        &[("blobs/sha256/link", tar::EntryType::Symlink, b"")],
    );
    // A second index.json after the first: whoever extracts the tar sees the last one.
    let dup_index = dir.path().join("dup-index.tar");
    let mut index_copy = Vec::new();
    rewrite_bundle(
        &bundle,
        &dup_index,
        |n, d| {
            if n == "index.json" {
                index_copy = d.clone();
            }
            Some(d)
        },
        &[],
    );
    let with_dup = dir.path().join("dup-index2.tar");
    rewrite_bundle(
        &dup_index,
        &with_dup,
        |_, d| Some(d),
        &[("./index.json", tar::EntryType::Regular, &index_copy)],
    );
    // index.json naming the api's reference twice: once for the api, once for the worker.
    let dup_ref = dir.path().join("dup-ref.tar");
    rewrite_bundle(
        &bundle,
        &dup_ref,
        |n, d| {
            if n != "index.json" {
                return Some(d);
            }
            let mut v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            let m = v["manifests"].as_array_mut().unwrap();
            let api = m
                .iter()
                .find(|e| e["annotations"]["io.berth.upstream.ref"] == api_ref().as_str())
                .unwrap()
                .clone();
            let mut worker = m
                .iter()
                .find(|e| e["annotations"]["io.berth.upstream.ref"] == worker_ref().as_str())
                .unwrap()
                .clone();
            worker["annotations"] = api["annotations"].clone();
            m.push(worker);
            Some(serde_json::to_vec(&v).unwrap())
        },
        &[],
    );
    // Cut in the middle of the 9 MiB layer's data.
    let truncated = dir.path().join("truncated.tar");
    let full = std::fs::read(&bundle).unwrap();
    let at = {
        let mut a = tar::Archive::new(&full[..]);
        let mut pos = None;
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            if e.path().unwrap().to_string_lossy() == layer_entry {
                pos = Some(e.raw_file_position() as usize + 4 * MIB as usize);
            }
        }
        pos.unwrap()
    };
    std::fs::write(&truncated, &full[..at]).unwrap();

    for (path, expect) in [
        (&flipped, layer_entry.as_str()),
        (&missing, layer.as_str()),
        (&escape, "../evil"),
        (&absolute, "/tmp/evil"),
        (&symlink, "blobs/sha256/link"),
        (&truncated, layer_entry.as_str()),
        (&with_dup, "\"./index.json\": appears twice"),
        (&dup_ref, &format!("{} appears twice", api_ref())),
    ] {
        let (served, stderr) = import_and_serve(&url, path, false);
        assert!(
            stderr.contains(expect),
            "{}: message should name {expect}: {stderr}",
            path.display()
        );
        assert!(stderr.contains("nothing was imported"), "{stderr}");
        let blobs = std::fs::read_dir(served.cache_dir.join("sha256"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(blobs, 0, "{}: blobs were seeded", path.display());
        let out = skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{LICENSE}:{LICENSE}"),
            &format!(
                "docker://127.0.0.1:{}/proxy/acme/{}",
                served.berth.port,
                worker_ref()
            ),
        ]);
        assert!(!out.status.success(), "{}: served", path.display());
        eprintln!("refused {}: {}", path.display(), stderr.trim());
    }
}

/// A config with two apps, each with its own upstream on the same host: `acme` (LICENSE)
/// and `other` (OTHER_LICENSE).
fn two_app_yaml(port: u16, cache: &Path, upstream_url: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams:\n  - {{ name: up, url: \"{upstream_url}\", host: {HOST}, username: {VENDOR}, password: \"${{UPSTREAM_PASSWORD}}\" }}\n\
         \x20 - {{ name: up2, url: \"{upstream_url}\", host: {HOST}, username: {VENDOR}, password: \"${{UPSTREAM_PASSWORD}}\" }}\n\
         apps:\n  - {{ slug: acme, upstreams: [up] }}\n  - {{ slug: other, upstreams: [up2] }}\n\
         licenses:\n  - {{ id: {LICENSE}, app: acme, customer: Big Bank }}\n\
         \x20 - {{ id: {OTHER_LICENSE}, app: other, customer: Other Corp }}\n",
        cache.display()
    )
}

const OTHER_LICENSE: &str = "LICENSE-other-0001";

/// Files under `dir` (recursively), for "nothing was written" checks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The bundle does not choose the app it is imported into: one whose index names another
/// app is refused (without `--app` when the config has several apps, and with an `--app`
/// it does not match), and nothing of it reaches the cache, so the other app's tags are
/// not seeded with these manifests.
#[test]
fn import_refuses_a_bundle_that_names_another_app() {
    let mut up = upstream();
    let (bundle, _) = up.export_all();
    let url = up.reg.url();
    up.reg.stop();
    let dir = support::tempdir();
    let retargeted = dir.path().join("other-app.tar");
    rewrite_bundle(
        &bundle,
        &retargeted,
        |n, d| {
            if n != "index.json" {
                return Some(d);
            }
            let mut v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            for m in v["manifests"].as_array_mut().unwrap() {
                m["annotations"]["io.berth.app"] = "other".into();
            }
            Some(serde_json::to_vec(&v).unwrap())
        },
        &[],
    );
    let cache = support::tempdir();
    let port = support::free_port();
    let cfg = cache.path().join("berth.yaml");
    std::fs::write(&cfg, two_app_yaml(port, &cache.path().join("c"), &url)).unwrap();
    // Tag answers live under the app's repositories (`repositories/proxy/<app>/…`).
    let tags = cache.path().join("c").join("repositories").join("proxy");

    let (ok, _, stderr) = import(&cfg, &retargeted);
    assert!(!ok, "imported into the app the bundle named: {stderr}");
    assert!(stderr.contains("--app"), "{stderr}");
    assert!(files_under(&tags).is_empty(), "{:?}", files_under(&tags));

    let with_app = |app: &str, b: &Path| {
        berth(
            &[
                "airgap",
                "import",
                "--config",
                cfg.to_str().unwrap(),
                "--app",
                app,
                b.to_str().unwrap(),
            ],
            None,
        )
    };
    let (ok, _, stderr) = with_app("acme", &retargeted);
    assert!(!ok, "--app acme took a bundle for other: {stderr}");
    assert!(
        stderr.contains("exported for app other, not acme"),
        "{stderr}"
    );
    assert!(files_under(&tags).is_empty());
    assert!(files_under(&cache.path().join("c").join("sha256")).is_empty());

    // The genuine bundle, named app and --app agreeing, is imported into acme's repositories.
    let (ok, _, stderr) = with_app("acme", &bundle);
    assert!(ok, "{stderr}");
    let seeded = files_under(&tags);
    assert!(!seeded.is_empty());
    assert!(
        seeded
            .iter()
            .all(|p| p.strip_prefix(&tags).unwrap().starts_with("acme")),
        "{seeded:?}"
    );
}

/// Staging directories of imports under `tmp`: (path, number of files in it).
fn stages(tmp: &Path) -> Vec<(PathBuf, usize)> {
    std::fs::read_dir(tmp)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("airgap-"))
                .map(|e| (e.path(), files_under(&e.path()).len()))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends SIGINT to a running berth, waits for it, and returns how it ended and its stderr.
fn interrupt(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_child(child);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

/// Starts `berth airgap import` reading the bundle through a FIFO that the test feeds with
/// the first half of `bundle` and then holds open, so the import is caught mid-verify with
/// blobs staged. Returns the child and the FIFO's writing end.
fn import_stuck_mid_bundle(
    cfg: &Path,
    bundle: &Path,
    dir: &Path,
    tmp: &Path,
) -> (std::process::Child, std::fs::File) {
    let fifo = dir.join("bundle.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["airgap", "import", "--config", cfg.to_str().unwrap()])
        .arg(&fifo)
        .env("UPSTREAM_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let data = std::fs::read(bundle).unwrap();
    // Blocks until berth opens the FIFO, then until it has read all but a pipe's worth.
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&data[..data.len() / 2]).unwrap();
    assert!(
        support::wait_until(std::time::Duration::from_secs(10), || stages(tmp)
            .iter()
            .any(|(_, n)| *n > 0)),
        "no staged blobs: {:?}",
        stages(tmp)
    );
    (child, w)
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth airgap import did not exit within 10s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An import stopped with ctrl-c (SIGINT) removes its staging directory; one killed outright
/// (SIGKILL) leaves it, and the next `berth serve` removes it, but not the staging directory
/// of an import that is still running (it holds a lock on it).
#[test]
fn interrupted_imports_leave_no_staging_behind() {
    let mut up = upstream();
    let (bundle, _) = up.export_all();
    let url = up.reg.url();
    up.reg.stop();
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = config_yaml(port, &cache.path().join("c"), &url);
    let cfg = cache.path().join("berth.yaml");
    std::fs::write(&cfg, &yaml).unwrap();
    let tmp = cache.path().join("c").join("tmp");

    let work = support::tempdir();
    let (mut child, w) = import_stuck_mid_bundle(&cfg, &bundle, work.path(), &tmp);
    let (status, stderr) = interrupt(&mut child);
    drop(w);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert!(stages(&tmp).is_empty(), "left behind: {:?}", stages(&tmp));

    // SIGKILL: nothing runs in berth, the staging stays for the server to clean.
    let work = support::tempdir();
    let (mut child, w) = import_stuck_mid_bundle(&cfg, &bundle, work.path(), &tmp);
    child.kill().unwrap();
    wait_child(&mut child);
    drop(w);
    let abandoned = stages(&tmp);
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    // And one that a running import holds (here: this test holds its lock).
    let live = tmp.join("airgap-live-0-0.part");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(live.join("blob"), b"x").unwrap();
    let lock = std::fs::File::open(&live).unwrap();
    lock.lock().unwrap();
    let b = Berth::start_on(port, &yaml, &[("UPSTREAM_PASSWORD", PASSWORD)]);
    let left: Vec<PathBuf> = stages(&tmp).into_iter().map(|(p, _)| p).collect();
    assert_eq!(left, vec![live.clone()], "{}", b.logs());
    assert!(live.join("blob").exists());
    assert!(
        b.logs().contains("removed unfinished cache files"),
        "{}",
        b.logs()
    );
}

/// ctrl-c during an export removes the staging directory beside the output and writes no
/// bundle (the upstream here accepts connections and never answers, so the export is held
/// mid-run until the signal).
#[test]
fn an_interrupted_export_leaves_no_staging_behind() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let work = support::tempdir();
    let cfg = work.path().join("berth.yaml");
    std::fs::write(
        &cfg,
        config_yaml(support::free_port(), &work.path().join("cache"), &url),
    )
    .unwrap();
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let staging = || -> Vec<String> {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["airgap", "export", "--config", cfg.to_str().unwrap()])
        .args(["--app", "acme", "-o"])
        .arg(out_dir.join("acme.tar"))
        .arg(format!("{HOST}/acme/api:1.2"))
        .env("UPSTREAM_PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    assert!(
        support::wait_until(std::time::Duration::from_secs(10), || !staging().is_empty()),
        "the export never staged anything"
    );
    let (status, stderr) = interrupt(&mut child);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert!(staging().is_empty(), "left behind: {:?}", staging());
}
