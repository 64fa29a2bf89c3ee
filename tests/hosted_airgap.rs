//! Hosted images through the rest of berth, with the real binary: images pushed into one
//! berth's hosted registry are exported into an airgap bundle from berth's own store,
//! imported into a fresh berth (seeding its hosted repositories) and pulled back there with
//! a license byte for byte; pushed from the bundle into a plain registry under the name
//! `berth rewrite --registry` gives them; and `berth rewrite` leaves a hosted image as it is,
//! adds the pull secret, and pins it from berth's own index.

#[path = "support/hosted.rs"]
mod hosted;
#[path = "support/http.rs"]
mod http;
mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use hosted::{digest_of, have, Fx, Pushed, INDEX};
use support::berth::{run_cli, CliRun};
use support::registry::{Registry, RegistryAuth};

const CLI: Duration = Duration::from_secs(120);

fn cli(args: &[&str]) -> CliRun {
    run_cli(args, &[], None, CLI)
}

fn ok(r: &CliRun) -> bool {
    r.code == Some(0)
}

fn cfg(fx: &Fx) -> &str {
    fx.berth.config_path.to_str().unwrap()
}

/// `acme/worker:1.0` (one image) and `acme/multi:2` (an index of two platform images), in
/// the first berth's hosted registry.
struct Content {
    worker: Pushed,
    children: Vec<Pushed>,
    index: Vec<u8>,
}

fn push_content(fx: &Fx) -> Content {
    push_content_seeded(fx, 1)
}

/// As [`push_content`], the bytes depending on `seed`.
fn push_content_seeded(fx: &Fx, seed: u64) -> Content {
    let key = fx.key("acme", &["push", "pull"]);
    let worker = fx.push_image("acme/worker", &["1.0"], &key, seed);
    let children = vec![
        fx.push_image("acme/multi", &[], &key, seed + 1),
        fx.push_image("acme/multi", &[], &key, seed + 2),
    ];
    let platforms = [("amd64", "linux"), ("arm64", "linux")];
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": children.iter().zip(platforms).map(|(c, (arch, os))| json!({
            "mediaType": hosted::MANIFEST,
            "digest": c.digest,
            "size": c.bytes.len(),
            "platform": { "architecture": arch, "os": os },
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let r = fx.put_manifest("acme/multi", "2", &key, &index);
    assert_eq!(r.status, 201, "index push: {}", r.text());
    Content {
        worker,
        children,
        index,
    }
}

fn export(fx: &Fx, out: &Path, refs: &[String]) -> CliRun {
    let mut args = vec![
        "airgap",
        "export",
        "--config",
        cfg(fx),
        "--app",
        "acme",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(refs.iter().map(String::as_str));
    cli(&args)
}

fn get(fx: &Fx, path: &str, secret: &str, accept: &str) -> http::Resp {
    fx.req("GET", path, secret, &[("Accept", accept)], b"")
}

#[test]
fn a_hosted_image_exported_and_imported_is_pulled_byte_identical_from_the_other_berth() {
    let one = hosted::fixture();
    let content = push_content(&one);
    let dir = support::tempdir();
    let bundle = dir.path().join("hosted.tar");
    let refs = [
        format!("{}/acme/worker:1.0", one.host()),
        format!("{}/acme/multi:2", one.host()),
    ];
    let run = export(&one, &bundle, &refs);
    assert!(ok(&run), "export:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("2 images"), "{}", run.stdout);

    // The bundle is a plain OCI layout naming the images as berth serves them.
    let list = cli(&["airgap", "list", bundle.to_str().unwrap()]);
    assert!(ok(&list), "{}", list.stderr);
    assert!(
        list.stdout
            .contains(&format!("{}\t{}", refs[0], content.worker.digest)),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout
            .contains(&format!("{}\t{}", refs[1], digest_of(&content.index)))
            && list.stdout.contains("linux/amd64,linux/arm64"),
        "{}",
        list.stdout
    );

    // A fresh berth: nothing hosted yet, then the import seeds its hosted repositories.
    let two = hosted::fixture();
    let license = two.license("acme", &[]);
    let before = get(
        &two,
        "/v2/acme/worker/manifests/1.0",
        &license,
        hosted::MANIFEST,
    );
    assert_eq!(before.status, 404, "{}", before.text());
    let run = cli(&[
        "airgap",
        "import",
        "--config",
        cfg(&two),
        "--app",
        "acme",
        bundle.to_str().unwrap(),
    ]);
    assert!(ok(&run), "import:\n{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("→ hosted acme/worker") && run.stderr.contains("→ hosted acme/multi"),
        "{}",
        run.stderr
    );

    let m = get(
        &two,
        "/v2/acme/worker/manifests/1.0",
        &license,
        hosted::MANIFEST,
    );
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, content.worker.bytes, "the manifest, byte for byte");
    assert_eq!(
        m.header("docker-content-digest"),
        Some(content.worker.digest.as_str())
    );
    for blob in [&content.worker.layer, &content.worker.config] {
        let b = get(
            &two,
            &format!("/v2/acme/worker/blobs/{blob}"),
            &license,
            "*/*",
        );
        assert_eq!(b.status, 200, "{blob}: {}", b.text());
        assert_eq!(&digest_of(&b.body), blob, "blob bytes hash to their digest");
    }
    let ix = get(&two, "/v2/acme/multi/manifests/2", &license, INDEX);
    assert_eq!(ix.status, 200, "{}", ix.text());
    assert_eq!(ix.body, content.index);
    for c in &content.children {
        let r = get(
            &two,
            &format!("/v2/acme/multi/manifests/{}", c.digest),
            &license,
            hosted::MANIFEST,
        );
        assert_eq!(r.status, 200, "child {}: {}", c.digest, r.text());
        assert_eq!(r.body, c.bytes);
        let l = get(
            &two,
            &format!("/v2/acme/multi/blobs/{}", c.layer),
            &license,
            "*/*",
        );
        assert_eq!(digest_of(&l.body), c.layer);
    }
    let tags = get(
        &two,
        "/v2/acme/worker/tags/list",
        &license,
        "application/json",
    );
    assert_eq!(tags.json()["tags"], json!(["1.0"]), "{}", tags.text());
    // Seeded into app acme only: another app's license sees nothing of it.
    let beta = two.license("beta", &[]);
    let other = get(
        &two,
        "/v2/acme/worker/manifests/1.0",
        &beta,
        hosted::MANIFEST,
    );
    assert_ne!(other.status, 200, "{}", other.text());

    // A real client pulls the whole index with the license, digests preserved.
    if have("skopeo") {
        let dest = support::tempdir();
        let out = support::image::skopeo_copy_to_oci(
            &format!("docker://{}/acme/multi:2", two.host()),
            Some(&format!("{license}:{license}")),
            dest.path(),
            &["--all", "--preserve-digests"],
        );
        assert!(
            out.status.success(),
            "skopeo: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            two.berth.logs()
        );
        let layout = support::image::read_oci_layout(dest.path());
        assert_eq!(layout.manifest_digest, digest_of(&content.index));
    } else {
        eprintln!("SKIP skopeo pull: skopeo is not installed");
    }

    // Importing the same bundle again changes nothing and succeeds (idempotent).
    let again = cli(&[
        "airgap",
        "import",
        "--config",
        cfg(&two),
        "--app",
        "acme",
        bundle.to_str().unwrap(),
    ]);
    assert!(ok(&again), "re-import:\n{}", again.stderr);
}

#[test]
fn export_of_a_hosted_tag_that_does_not_exist_fails_and_writes_nothing() {
    let one = hosted::fixture();
    push_content(&one);
    let dir = support::tempdir();
    let bundle = dir.path().join("none.tar");
    let run = export(&one, &bundle, &[format!("{}/acme/worker:9.9", one.host())]);
    assert!(!ok(&run), "{}", run.stdout);
    assert!(run.stderr.contains("acme/worker:9.9"), "{}", run.stderr);
    assert!(!bundle.exists());
    // Another app's hosted repository is not this app's: it is no hosted image of acme.
    let run = export(&one, &bundle, &[format!("{}/beta/worker:1.0", one.host())]);
    assert!(!ok(&run));
    assert!(
        run.stderr.contains("no upstream of app acme"),
        "{}",
        run.stderr
    );
}

#[test]
fn airgap_push_puts_hosted_images_where_rewrite_registry_points() {
    let one = hosted::fixture();
    let content = push_content(&one);
    let dir = support::tempdir();
    let bundle = dir.path().join("hosted.tar");
    let worker = format!("{}/acme/worker:1.0", one.host());
    // Named in the app's `images:` (the default list of an export), not on the command line:
    // the same config with that list, beside the server's so it opens the same state.
    let yaml = std::fs::read_to_string(&one.berth.config_path).unwrap();
    let listed = yaml.replace(
        "{ slug: acme, upstreams: [up] }",
        &format!("{{ slug: acme, upstreams: [up], images: [\"{worker}\"] }}"),
    );
    assert_ne!(
        listed, yaml,
        "the fixture's app line changed; update this test"
    );
    let listed_path = one.berth.config_path.with_file_name("listed.yaml");
    std::fs::write(&listed_path, listed).unwrap();
    let run = cli(&[
        "airgap",
        "export",
        "--config",
        listed_path.to_str().unwrap(),
        "--app",
        "acme",
        "-o",
        bundle.to_str().unwrap(),
    ]);
    assert!(ok(&run), "export: {}", run.stderr);
    assert!(run.stdout.contains(": 1 image, "), "{}", run.stdout);
    let target = Registry::start(RegistryAuth::None);
    let to = format!("{}/mirror", target.host());
    let run = cli(&[
        "airgap",
        "push",
        bundle.to_str().unwrap(),
        "--to",
        &to,
        "--insecure",
    ]);
    assert!(ok(&run), "push:\n{}\n{}", run.stdout, run.stderr);
    let mapped = cli(&[
        "rewrite",
        "--config",
        cfg(&one),
        "--app",
        "acme",
        "--registry",
        &to,
        "--image",
        &worker,
    ]);
    assert!(ok(&mapped), "{}", mapped.stderr);
    let new = mapped.stdout.trim().to_string();
    assert_eq!(
        new,
        format!("{to}/127.0.0.1_{}/acme/worker:1.0", one.berth.port)
    );
    assert!(
        run.stdout.contains(&format!("{worker} {new}")),
        "push and rewrite agree: {}",
        run.stdout
    );
    // The image is really there under that name, the same bytes.
    let repo = new
        .strip_prefix(&format!("{}/", target.host()))
        .and_then(|r| r.strip_suffix(":1.0"))
        .unwrap()
        .to_string();
    let m = http::request(
        target.host().rsplit(':').next().unwrap().parse().unwrap(),
        "GET",
        &format!("/v2/{repo}/manifests/1.0"),
        &[("Accept", hosted::MANIFEST)],
        b"",
    );
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(m.body, content.worker.bytes);
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: worker
spec:
  template:
    spec:
      containers:
        - name: worker
          image: HOSTED
";

/// `doc` (one Deployment as above) as the rewriter writes it with the pull secret added.
fn with_secret(doc: &str) -> String {
    doc.replace(
        "    spec:\n      containers:",
        "    spec:\n      imagePullSecrets:\n        - name: berth-pull\n      containers:",
    )
}

fn rewrite(fx: &Fx, input: &str, extra: &[&str]) -> CliRun {
    let dir = support::tempdir();
    let f = dir.path().join("in.yaml");
    std::fs::write(&f, input).unwrap();
    let mut args = vec![
        "rewrite",
        "--config",
        cfg(fx),
        "--app",
        "acme",
        "--pull-secret",
        "berth-pull",
        "-f",
        f.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

#[test]
fn rewrite_leaves_hosted_images_adds_the_secret_and_pins_from_the_index() {
    let one = hosted::fixture();
    let content = push_content(&one);
    let hosted = format!("{}/acme/worker:1.0", one.host());
    let input = DEPLOYMENT.replace("HOSTED", &hosted);

    let run = rewrite(&one, &input, &[]);
    assert!(ok(&run), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        with_secret(&input),
        "image left as is, the secret added"
    );

    let run = rewrite(&one, &input, &["--pin-digests"]);
    assert!(ok(&run), "{}", run.stderr);
    let pinned = format!("{hosted}@{}", content.worker.digest);
    assert_eq!(
        run.stdout,
        with_secret(&DEPLOYMENT.replace("HOSTED", &pinned)),
    );
    // An index is pinned to the index's digest.
    let multi = DEPLOYMENT.replace("HOSTED", &format!("{}/acme/multi:2", one.host()));
    let run = rewrite(&one, &multi, &["--pin-digests"]);
    assert!(ok(&run), "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("acme/multi:2@{}", digest_of(&content.index))),
        "{}",
        run.stdout
    );
    // Pinning is idempotent: an image with a digest is not pinned again.
    let again = rewrite(&one, &run.stdout, &["--pin-digests"]);
    assert!(ok(&again), "{}", again.stderr);
    assert_eq!(again.stdout, run.stdout);

    // A tag berth does not have cannot be pinned: the rewrite fails and says which.
    let missing = DEPLOYMENT.replace("HOSTED", &format!("{}/acme/worker:7", one.host()));
    let run = rewrite(&one, &missing, &["--pin-digests"]);
    assert!(!ok(&run), "{}", run.stdout);
    assert!(
        run.stderr.contains("acme/worker has no tag \"7\""),
        "{}",
        run.stderr
    );

    // berth's pull-through names and upstream images side by side: the upstream one is
    // mapped, the /proxy/ one left alone, both pod specs get the secret.
    let proxied = format!("{}/proxy/acme/upstream.test/acme/api:1", one.host());
    let mixed = format!(
        "{}---\n{}",
        DEPLOYMENT.replace("HOSTED", &proxied),
        DEPLOYMENT.replace("HOSTED", "upstream.test/acme/api:1")
    );
    let run = rewrite(&one, &mixed, &[]);
    assert!(ok(&run), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "{}---\n{}",
            with_secret(&DEPLOYMENT.replace("HOSTED", &proxied)),
            with_secret(&DEPLOYMENT.replace("HOSTED", &proxied))
        ),
    );
}

const LICENSE: &str = "LICENSE-good-0001";

/// A berth that only hosts (no upstreams), app acme with `hosted` as its policy, and a
/// license from the config file.
fn hosting_berth(hosted: &str) -> (support::berth::Berth, tempfile::TempDir) {
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         apps:\n  - {{ slug: acme, hosted: {hosted} }}\n\
         licenses:\n  - {{ id: {LICENSE}, app: acme, customer: Big Bank }}\n",
        cache.path().display()
    );
    (support::berth::Berth::start_on(port, &yaml, &[]), cache)
}

fn import_into(b: &support::berth::Berth, bundle: &Path) -> CliRun {
    cli(&[
        "airgap",
        "import",
        "--config",
        b.config_path.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ])
}

fn status_of(b: &support::berth::Berth, path: &str) -> (u16, Option<String>) {
    let auth = hosted::basic(LICENSE);
    let r = http::request(
        b.port,
        "GET",
        path,
        &[
            ("Authorization", &auth),
            ("Accept", &format!("{},{INDEX}", hosted::MANIFEST)),
        ],
        b"",
    );
    (
        r.status,
        r.header("docker-content-digest").map(str::to_string),
    )
}

#[test]
fn import_keeps_the_target_berths_quota_and_immutable_tags_and_then_changes_nothing() {
    let dir = support::tempdir();
    let bundle = |fx: &Fx, name: &str| {
        let out = dir.path().join(name);
        let refs = [
            format!("{}/acme/worker:1.0", fx.host()),
            format!("{}/acme/multi:2", fx.host()),
        ];
        let run = export(fx, &out, &refs);
        assert!(ok(&run), "export: {}", run.stderr);
        out
    };
    let one = hosted::fixture();
    let a = push_content_seeded(&one, 1);
    let bundle_a = bundle(&one, "a.tar");
    let three = hosted::fixture();
    let b = push_content_seeded(&three, 11);
    let bundle_b = bundle(&three, "b.tar");
    assert_ne!(a.worker.digest, b.worker.digest);

    // Over the quota: refused before anything is seeded.
    let (small, _c1) = hosting_berth("{ quota: 2KiB }");
    let run = import_into(&small, &bundle_a);
    assert!(!ok(&run), "{}", run.stderr);
    assert!(run.stderr.contains("hosted quota"), "{}", run.stderr);
    assert!(
        run.stderr.contains("nothing was imported"),
        "{}",
        run.stderr
    );
    assert_eq!(status_of(&small, "/v2/acme/worker/manifests/1.0").0, 404);
    assert_eq!(status_of(&small, "/v2/acme/multi/manifests/2").0, 404);

    // An immutable tag already pointing elsewhere: the whole bundle is refused.
    let (strict, _c2) = hosting_berth("{ immutable_tags: [\"1.*\"] }");
    let run = import_into(&strict, &bundle_a);
    assert!(ok(&run), "{}", run.stderr);
    assert_eq!(
        status_of(&strict, "/v2/acme/worker/manifests/1.0"),
        (200, Some(a.worker.digest.clone()))
    );
    let index_a = digest_of(&a.index);
    let run = import_into(&strict, &bundle_b);
    assert!(!ok(&run), "{}", run.stderr);
    assert!(
        run.stderr.contains("tag 1.0 of acme/worker is immutable"),
        "{}",
        run.stderr
    );
    assert_eq!(
        status_of(&strict, "/v2/acme/worker/manifests/1.0"),
        (200, Some(a.worker.digest.clone())),
        "the tag still points at what the first import set"
    );
    assert_eq!(
        status_of(&strict, "/v2/acme/multi/manifests/2"),
        (200, Some(index_a)),
        "nothing of the refused bundle was seeded"
    );
    let child_b = &b.children[0].digest;
    assert_eq!(
        status_of(&strict, &format!("/v2/acme/multi/manifests/{child_b}")).0,
        404
    );
}

/// A hosted layer much bigger than the exporter may hold is streamed: the export's peak
/// resident memory stays well under the layer's size (measured with `/usr/bin/time`).
#[test]
fn a_big_hosted_layer_is_exported_without_holding_it_in_memory() {
    if !Path::new("/usr/bin/time").exists() {
        eprintln!("SKIP: /usr/bin/time is not installed");
        return;
    }
    const LAYER: usize = 128 << 20;
    let one = hosted::fixture();
    let key = one.key("acme", &["push", "pull"]);
    let layer = hosted::pseudo_random(5, LAYER);
    let layer_digest = one.push_blob("acme/big", &key, &layer);
    drop(layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))
    .unwrap();
    let config_digest = one.push_blob("acme/big", &key, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": hosted::MANIFEST,
        "config": { "mediaType": hosted::CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [ { "mediaType": hosted::LAYER, "digest": layer_digest, "size": LAYER } ],
    }))
    .unwrap();
    let r = one.put_manifest("acme/big", "1", &key, &manifest);
    assert_eq!(r.status, 201, "{}", r.text());
    let dir = support::tempdir();
    let bundle = dir.path().join("big.tar");
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "MAXRSS_KIB=%M", env!("CARGO_BIN_EXE_berth")])
        .args([
            "airgap",
            "export",
            "--config",
            cfg(&one),
            "--app",
            "acme",
            "-o",
        ])
        .arg(&bundle)
        .arg(format!("{}/acme/big:1", one.host()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let kib: u64 = stderr
        .rsplit("MAXRSS_KIB=")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MAXRSS in {stderr}"));
    eprintln!(
        "MEASURE export of a {} MiB hosted layer: peak RSS {} MiB",
        LAYER >> 20,
        kib >> 10
    );
    assert!(
        kib * 1024 < (LAYER as u64) / 2,
        "peak RSS {kib} KiB for a {LAYER}-byte layer"
    );
    let size = std::fs::metadata(&bundle).unwrap().len();
    assert!(
        size > LAYER as u64,
        "the bundle holds the layer: {size} bytes"
    );
}
