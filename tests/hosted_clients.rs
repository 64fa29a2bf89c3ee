//! Real clients against berth's hosted registry: podman and buildah push (and pull) images
//! they built themselves, skopeo round-trips a hand-made two-platform OCI index byte for
//! byte, and the Docker engine pushes across repositories of one app (mounts) and pulls with
//! the vendor's own key. Each test skips, saying so, only when its client is missing.
//!
//! podman and buildah run rootful with their own storage under a temp dir (`--root`,
//! `--runroot`, vfs) so nothing leaks into the host's image store.

#[path = "support/hosted.rs"]
mod hosted;
#[path = "support/http.rs"]
mod http;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::json;

use hosted::MANIFEST;
use hosted::{digest_of, fixture, have, pseudo_random, tar_with_file, Fx, CONFIG, INDEX, LAYER};
use support::docker::{ok, Cleanup};

/// Runs `program` under coreutils `timeout` with `env`, so a hung client fails the test.
fn run_env(secs: u32, program: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new("timeout");
    c.arg(secs.to_string()).arg(program).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// podman or buildah with storage of its own: every image, layer, lock and temp file of the
/// test lives under `dir` and goes with it.
struct Store {
    program: &'static str,
    dir: tempfile::TempDir,
}

impl Store {
    fn new(program: &'static str) -> Store {
        let dir = support::tempdir();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        Store { program, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        let root = self.path("root");
        let runroot = self.path("run");
        let tmp = self.path("tmp");
        let mut all: Vec<&str> = vec![
            "--root",
            root.to_str().unwrap(),
            "--runroot",
            runroot.to_str().unwrap(),
            // vfs: no overlay mounts to leak or to need privileges for.
            "--storage-driver",
            "vfs",
        ];
        if self.program == "podman" {
            all.extend([
                "--tmpdir",
                tmp.to_str().unwrap(),
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        }
        all.extend_from_slice(args);
        // Both write big temporary files (layer diffs, compressed blobs) under $TMPDIR.
        run_env(300, self.program, &all, &[("TMPDIR", &tmp)])
    }

    fn ok(&self, args: &[&str], fx: &Fx) -> String {
        let what = format!(
            "{} {}\nberth log:\n{}",
            self.program,
            args.join(" "),
            tail(&fx.berth.logs(), 40)
        );
        ok(&self.run(args), &what).trim().to_string()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn skopeo(args: &[&str]) -> Output {
    let mut all = vec!["--insecure-policy"];
    all.extend_from_slice(args);
    run_env(300, "skopeo", &all, &[])
}

/// The manifest bytes berth serves for `reference`, fetched by skopeo with `creds`.
fn raw_manifest(image: &str, creds: &str) -> Vec<u8> {
    let out = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        creds,
        &format!("docker://{image}"),
    ]);
    assert!(
        out.status.success(),
        "skopeo inspect --raw {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A build context with two files, so the image has content of its own.
fn context(seed: u64) -> tempfile::TempDir {
    let ctx = support::tempdir();
    std::fs::write(ctx.path().join("payload"), pseudo_random(seed, 300_000)).unwrap();
    std::fs::write(ctx.path().join("note"), format!("seed {seed}\n")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY payload /payload\nCOPY note /note\nCMD [\"/payload\"]\n",
    )
    .unwrap();
    ctx
}

#[test]
fn podman_pushes_with_a_key_and_a_license_pulls_the_same_image_back() {
    if !have("podman") || !have("skopeo") {
        eprintln!("SKIP: podman or skopeo is not installed (apt-get install -y podman skopeo)");
        return;
    }
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull"]);
    let license = fx.license("acme", &[]);
    let podman = Store::new("podman");
    let ctx = context(21);
    let image = format!("{}/acme/tools/podman:1", fx.host());

    podman.ok(
        &["build", "-q", "-t", &image, ctx.path().to_str().unwrap()],
        &fx,
    );
    let id = podman.ok(&["image", "inspect", "--format", "{{.Id}}", &image], &fx);

    let vendor = podman.path("vendor-auth.json");
    let vendor = vendor.to_str().unwrap();
    podman.ok(
        &[
            "login",
            "--tls-verify=false",
            "--authfile",
            vendor,
            "-u",
            "api",
            "-p",
            &key,
            &fx.host(),
        ],
        &fx,
    );
    let digest_file = podman.path("digest");
    podman.ok(
        &[
            "push",
            "--tls-verify=false",
            "--authfile",
            vendor,
            "--digestfile",
            digest_file.to_str().unwrap(),
            &image,
        ],
        &fx,
    );
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    let digest = digest.trim();
    assert!(digest.starts_with("sha256:"), "{digest:?}");
    // What berth serves under the tag is exactly what podman pushed.
    let raw = raw_manifest(&image, &format!("x:{license}"));
    assert_eq!(digest_of(&raw), digest);

    podman.ok(&["rmi", &image], &fx);
    assert!(
        !podman.run(&["image", "exists", &image]).status.success(),
        "the image is still in podman's store"
    );
    let customer = podman.path("customer-auth.json");
    let customer = customer.to_str().unwrap();
    podman.ok(
        &[
            "login",
            "--tls-verify=false",
            "--authfile",
            customer,
            "-u",
            "customer",
            "-p",
            &license,
            &fx.host(),
        ],
        &fx,
    );
    podman.ok(
        &[
            "pull",
            "-q",
            "--tls-verify=false",
            "--authfile",
            customer,
            &image,
        ],
        &fx,
    );
    // The same config (the image id) and the pushed manifest digest.
    assert_eq!(
        podman.ok(&["image", "inspect", "--format", "{{.Id}}", &image], &fx),
        id
    );
    let repo_digests = podman.ok(
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image,
        ],
        &fx,
    );
    let want = format!("{}/acme/tools/podman@{digest}", fx.host());
    assert!(repo_digests.contains(&want), "{repo_digests} lacks {want}");

    // The customer's login cannot push, not even a new tag of what it pulled.
    let other = format!("{}/acme/tools/podman:2", fx.host());
    podman.ok(&["tag", &image, &other], &fx);
    let denied = podman.run(&["push", "--tls-verify=false", "--authfile", customer, &other]);
    assert!(!denied.status.success(), "a license pushed with podman");
    let r = fx.req(
        "GET",
        "/v2/acme/tools/podman/manifests/2",
        &key,
        &[("Accept", MANIFEST)],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn buildah_pushes_a_from_scratch_image_and_pulls_it_into_another_store() {
    if !have("buildah") {
        eprintln!("SKIP: buildah is not installed (apt-get install -y buildah)");
        return;
    }
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull"]);
    let license = fx.license("acme", &[]);
    let buildah = Store::new("buildah");
    let ctx = context(22);
    let payload = ctx.path().join("payload");

    let ctr = buildah.ok(&["from", "scratch"], &fx);
    buildah.ok(&["copy", &ctr, payload.to_str().unwrap(), "/payload"], &fx);
    buildah.ok(
        &[
            "config",
            "--cmd",
            "/payload",
            "--os",
            "linux",
            "--arch",
            "amd64",
            "--label",
            "berth.test=buildah",
            &ctr,
        ],
        &fx,
    );
    buildah.ok(&["commit", "-q", &ctr, "localhost/bb:1"], &fx);
    let id = buildah.ok(
        &[
            "images",
            "--no-trunc",
            "--format",
            "{{.ID}}",
            "localhost/bb:1",
        ],
        &fx,
    );

    let dest = format!("{}/acme/tools/buildah:1", fx.host());
    let digest_file = buildah.path("digest");
    buildah.ok(
        &[
            "push",
            "--tls-verify=false",
            "--creds",
            &format!("api:{key}"),
            "--digestfile",
            digest_file.to_str().unwrap(),
            "localhost/bb:1",
            &format!("docker://{dest}"),
        ],
        &fx,
    );
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    let digest = digest.trim().to_string();

    // Over raw HTTP with the license: the manifest by tag is the pushed one, served with its
    // own media type, and every blob it names is there at its size.
    let r = fx.req(
        "GET",
        "/v2/acme/tools/buildah/manifests/1",
        &license,
        &[(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(digest_of(&r.body), digest);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let m = r.json();
    assert_eq!(r.header("content-type"), m["mediaType"].as_str());
    let layers = m["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{m}");
    for d in layers.iter().chain([&m["config"]]) {
        let r = fx.req(
            "HEAD",
            &format!(
                "/v2/acme/tools/buildah/blobs/{}",
                d["digest"].as_str().unwrap()
            ),
            &license,
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{d}");
        assert_eq!(
            r.header("content-length"),
            Some(d["size"].to_string().as_str()),
            "{d}"
        );
    }
    let r = fx.req(
        "GET",
        &format!(
            "/v2/acme/tools/buildah/blobs/{}",
            m["config"]["digest"].as_str().unwrap()
        ),
        &license,
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let config = r.json();
    assert_eq!(
        config["config"]["Labels"]["berth.test"], "buildah",
        "{config}"
    );
    assert_eq!(config["architecture"], "amd64");

    // A customer's buildah, with storage of its own, pulls the same image.
    let customer = Store::new("buildah");
    customer.ok(
        &[
            "pull",
            "-q",
            "--tls-verify=false",
            "--creds",
            &format!("x:{license}"),
            &format!("docker://{dest}"),
        ],
        &fx,
    );
    assert_eq!(
        customer.ok(&["images", "--no-trunc", "--format", "{{.ID}}", &dest], &fx),
        id
    );
}

/// A manifest's digest and bytes.
type Blob = (String, Vec<u8>);

/// A two-platform OCI layout written by hand: (the index, each child manifest keyed by
/// architecture).
fn write_multi_arch_layout(dir: &Path, tag: &str) -> (Blob, BTreeMap<String, Blob>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |data: &[u8]| -> String {
        let d = digest_of(data);
        std::fs::write(blobs.join(d.strip_prefix("sha256:").unwrap()), data).unwrap();
        d
    };
    let mut children = BTreeMap::new();
    let mut descriptors = Vec::new();
    for (arch, seed) in [("amd64", 31u64), ("arm64", 32)] {
        let layer = tar_with_file(&format!("bin-{arch}"), &pseudo_random(seed, 70_000));
        let layer_digest = put(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Cmd": [format!("/bin-{arch}")] },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))
        .unwrap();
        let config_digest = put(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": { "mediaType": CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [ { "mediaType": LAYER, "digest": layer_digest, "size": layer.len() } ],
        }))
        .unwrap();
        let digest = put(&manifest);
        descriptors.push(json!({
            "mediaType": MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
        }));
        children.insert(arch.to_string(), (digest, manifest));
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": descriptors,
    }))
    .unwrap();
    let index_digest = put(&index);
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [ {
                "mediaType": INDEX,
                "digest": index_digest,
                "size": index.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            } ],
        }))
        .unwrap(),
    )
    .unwrap();
    ((index_digest, index), children)
}

/// Every blob of a layout by digest, its bytes re-hashed.
fn layout_blobs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).expect("blobs/sha256") {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = format!("sha256:{}", path.file_name().unwrap().to_string_lossy());
        assert_eq!(digest_of(&data), name, "{} is corrupt", path.display());
        out.insert(name, data);
    }
    out
}

#[test]
fn skopeo_round_trips_a_two_platform_index_byte_for_byte() {
    if !have("skopeo") {
        eprintln!("SKIP: skopeo is not installed (apt-get install -y skopeo)");
        return;
    }
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull"]);
    let license = fx.license("acme", &[]);
    let src = support::tempdir();
    let ((index_digest, index), children) = write_multi_arch_layout(src.path(), "multi");
    let image = format!("{}/acme/multi:1", fx.host());

    let out = skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("api:{key}"),
        &format!("oci:{}:multi", src.path().display()),
        &format!("docker://{image}"),
    ]);
    assert!(
        out.status.success(),
        "skopeo copy --all into berth: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&fx.berth.logs(), 40)
    );

    let back = support::tempdir();
    let out = skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &format!("x:{license}"),
        &format!("docker://{image}"),
        &format!("oci:{}:multi", back.path().display()),
    ]);
    assert!(
        out.status.success(),
        "skopeo copy --all out of berth: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(
        layout["manifests"][0]["digest"],
        index_digest.as_str(),
        "{layout}"
    );
    let sent = layout_blobs(src.path());
    let got = layout_blobs(back.path());
    assert_eq!(
        got.get(&index_digest),
        Some(&index),
        "the index came back changed"
    );
    for (arch, (digest, bytes)) in &children {
        assert_eq!(
            got.get(digest),
            Some(bytes),
            "the {arch} manifest came back changed"
        );
    }
    // Configs and layers too: the same set of blobs, the same bytes.
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        sent.keys().collect::<Vec<_>>()
    );
    assert!(got == sent, "some blob came back with other bytes");

    // skopeo sees the index exactly as pushed, each child by digest exactly too.
    let creds = format!("x:{license}");
    assert!(
        raw_manifest(&image, &creds) == index,
        "inspect --raw differs from the index"
    );
    for (digest, bytes) in children.values() {
        let by_digest = format!("{}/acme/multi@{digest}", fx.host());
        assert!(raw_manifest(&by_digest, &creds) == *bytes, "{digest}");
    }
    // A platform-resolving client gets the arm64 child for arm64.
    let out = skopeo(&[
        "--override-arch",
        "arm64",
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("docker://{image}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // skopeo names the digest of what the tag points at (the index) and the layers and
    // platform of the child it chose.
    assert_eq!(inspected["Digest"], index_digest.as_str(), "{inspected}");
    assert_eq!(inspected["Architecture"], "arm64", "{inspected}");
    let arm64: serde_json::Value = serde_json::from_slice(&children["arm64"].1).unwrap();
    assert_eq!(
        inspected["Layers"],
        json!([arm64["layers"][0]["digest"]]),
        "{inspected}"
    );
}

// ---- the Docker engine (skips without one) -------------------------------------------

/// `digest: sha256:… size: N` from `docker push` output.
fn pushed_digest(out: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"))
        .to_string()
}

fn docker(secs: u32, args: &[&str], config: Option<&Path>) -> Output {
    support::docker::run(secs, "docker", args, config)
}

/// What tests/hosted.rs does not do with Docker: push a second repository of the same app
/// (the engine mounts the layers instead of uploading them again), push again (nothing to
/// upload), pull with the vendor's own key, and a pull-only key refused a push.
#[test]
fn docker_mounts_across_repositories_of_an_app_and_pulls_with_the_key() {
    if !have("docker") || !docker(30, &["info"], None).status.success() {
        eprintln!("SKIP: no Docker engine");
        return;
    }
    if !have("skopeo") {
        eprintln!("SKIP: skopeo is not installed (apt-get install -y skopeo)");
        return;
    }
    let fx = fixture();
    let key = fx.key("acme", &["push", "pull"]);
    let pull_only = fx.key("acme", &["pull"]);
    let pid = std::process::id();
    let a = format!("{}/acme/dock/a:{pid}", fx.host());
    let b = format!("{}/acme/dock/b:{pid}", fx.host());
    let c = format!("{}/acme/dock/c:{pid}", fx.host());
    let _cleanup = Cleanup(vec![a.clone(), b.clone(), c.clone()]);
    let ctx = context(41);
    ok(
        &docker(
            300,
            &["build", "-q", "-t", &a, ctx.path().to_str().unwrap()],
            None,
        ),
        "docker build",
    );
    ok(&docker(30, &["tag", &a, &b], None), "docker tag");
    let id = ok(
        &docker(30, &["image", "inspect", "--format", "{{.Id}}", &a], None),
        "docker inspect",
    );

    let vendor = support::tempdir();
    let vc = Some(vendor.path());
    ok(
        &docker(60, &["login", &fx.host(), "-u", "api", "-p", &key], vc),
        "docker login with the key",
    );
    let logs = || tail(&fx.berth.logs(), 40);
    let out = ok(
        &docker(300, &["push", &a], vc),
        &format!("docker push a\nberth log:\n{}", logs()),
    );
    let digest = pushed_digest(&out);
    let out = ok(
        &docker(300, &["push", &b], vc),
        &format!("docker push b\nberth log:\n{}", logs()),
    );
    // Two layers (two COPYs), both mounted from the first repository.
    assert_eq!(
        out.matches("Mounted from acme/dock/a").count(),
        2,
        "the layers were not mounted within the app:\n{out}"
    );
    assert_eq!(pushed_digest(&out), digest);
    let out = ok(
        &docker(300, &["push", &a], vc),
        &format!("docker push a again\nberth log:\n{}", logs()),
    );
    assert_eq!(
        out.matches("Layer already exists").count(),
        2,
        "a second push uploaded again:\n{out}"
    );
    let raw = raw_manifest(&b, &format!("api:{key}"));
    assert_eq!(digest_of(&raw), digest);

    ok(&docker(60, &["rmi", "-f", &a, &b], None), "docker rmi");
    ok(
        &docker(180, &["pull", &b], vc),
        &format!("docker pull with the key\nberth log:\n{}", logs()),
    );
    assert_eq!(
        ok(
            &docker(30, &["image", "inspect", "--format", "{{.Id}}", &b], None),
            "docker inspect"
        ),
        id
    );

    // A pull-only key logs in, but pushes nothing.
    ok(&docker(30, &["tag", &b, &c], None), "docker tag");
    let reader = support::tempdir();
    let rc = Some(reader.path());
    ok(
        &docker(
            60,
            &["login", &fx.host(), "-u", "api", "-p", &pull_only],
            rc,
        ),
        "docker login with the pull-only key",
    );
    let denied = docker(120, &["push", &c], rc);
    assert!(!denied.status.success(), "a pull-only key pushed");
    let r = fx.req(
        "GET",
        &format!("/v2/acme/dock/c/manifests/{pid}"),
        &key,
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
}
