//! The rewriter as users run it: the `berth rewrite` command line (files, stdin, single
//! images, --all, --registry, --pin-digests against a real registry, malformed input). The
//! admission webhook `berth serve` runs is tested in rewrite_admission.rs.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::image::{push_image, ImageSpec};
use support::registry::{Registry, RegistryAuth};

const HOSTNAME: &str = "images.acme.test";
const VENDOR: &str = "vendor";
const UPSTREAM_PASSWORD: &str = "upstream-secret-91ad";

/// berth's config: app `acme` over `upstream.test` (at `upstream_url`) and
/// `registry.example.com:5000`; `extra` is appended verbatim (e.g. `rewrite:` rules).
fn config_yaml(
    listen_port: u16,
    hostname: &str,
    cache: &Path,
    upstream_url: &str,
    extra: &str,
) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{listen_port}\", hostname: \"{hostname}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams:\n\
         \x20 - {{ name: up, url: \"{upstream_url}\", host: upstream.test, username: {VENDOR}, password: \"{UPSTREAM_PASSWORD}\" }}\n\
         \x20 - {{ name: ported, url: \"http://127.0.0.1:1\", host: \"registry.example.com:5000\" }}\n\
         apps:\n  - {{ slug: acme, upstreams: [up, ported] }}\n  - {{ slug: other, upstreams: [up] }}\n\
         licenses:\n  - {{ id: LICENSE-good-0001, app: acme, customer: Big Bank }}\n\
         {extra}",
        cache.display()
    )
}

/// A config file for CLI runs that never reach an upstream.
struct CliConfig {
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn cli_config(upstream_url: &str) -> CliConfig {
    let dir = support::tempdir();
    let path = dir.path().join("berth.yaml");
    std::fs::write(
        &path,
        config_yaml(5443, HOSTNAME, &dir.path().join("cache"), upstream_url, ""),
    )
    .unwrap();
    CliConfig { dir, path }
}

/// Runs `berth ARGS` with `stdin`, bounded; (exit code, stdout, stderr).
fn berth(args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let r = support::berth::run_cli(args, &[], Some(stdin), Duration::from_secs(20));
    (r.code, r.stdout, r.stderr)
}

fn rewrite(cfg: &Path, extra: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut args = vec![
        "rewrite",
        "--config",
        cfg.to_str().unwrap(),
        "--app",
        "acme",
    ];
    args.extend_from_slice(extra);
    berth(&args, stdin)
}

/// Runs a rewrite that must succeed and returns stdout.
fn rewrite_ok(cfg: &Path, extra: &[&str], stdin: &str) -> String {
    let (code, out, err) = rewrite(cfg, extra, stdin);
    assert_eq!(code, Some(0), "berth rewrite {extra:?} failed: {err}");
    out
}

const DEPLOYMENT: &str = "\
# Vendor manifest: comments, quoting and order must survive.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api   # keep me
spec:
  template:
    spec:
      containers:
        - name: api
          image: upstream.test/acme/api:v1
        - name: side
          image: \"registry.example.com:5000/team/app:1\"
        - name: foreign
          image: ghcr.io/elsewhere/tool:1
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: not-a-workload
data:
  image: upstream.test/acme/api:v1
";

const DEPLOYMENT_REWRITTEN: &str = "\
# Vendor manifest: comments, quoting and order must survive.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api   # keep me
spec:
  template:
    spec:
      imagePullSecrets:
        - name: acme-pull
      containers:
        - name: api
          image: images.acme.test/proxy/acme/upstream.test/acme/api:v1
        - name: side
          image: \"images.acme.test/proxy/acme/registry.example.com_5000/team/app:1\"
        - name: foreign
          image: ghcr.io/elsewhere/tool:1
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: not-a-workload
data:
  image: upstream.test/acme/api:v1
";

#[test]
fn rewrite_file_and_stdin_with_pull_secret() {
    let c = cli_config("http://127.0.0.1:1");
    let input = c.dir.path().join("deploy.yaml");
    std::fs::write(&input, DEPLOYMENT).unwrap();
    let from_file = rewrite_ok(
        &c.path,
        &["-f", input.to_str().unwrap(), "--pull-secret", "acme-pull"],
        "",
    );
    assert_eq!(from_file, DEPLOYMENT_REWRITTEN);
    let from_stdin = rewrite_ok(
        &c.path,
        &["-f", "-", "--pull-secret", "acme-pull"],
        DEPLOYMENT,
    );
    assert_eq!(from_stdin, DEPLOYMENT_REWRITTEN);
    // Idempotent: rewriting the output changes nothing.
    let again = rewrite_ok(&c.path, &["--pull-secret", "acme-pull"], &from_file);
    assert_eq!(again, DEPLOYMENT_REWRITTEN);
    // Without --pull-secret no imagePullSecrets appear.
    let plain = rewrite_ok(&c.path, &["-f", input.to_str().unwrap()], "");
    assert!(!plain.contains("imagePullSecrets"), "{plain}");
    assert!(
        plain.contains("image: images.acme.test/proxy/acme/upstream.test/acme/api:v1"),
        "{plain}"
    );
}

#[test]
fn rewrite_all_and_registry_targets() {
    let c = cli_config("http://127.0.0.1:1");
    // berth serves only the app's upstreams: --all without --registry would redirect
    // images to names that answer 404, so it rewrites what the app serves, and says so.
    let (code, all, err) = rewrite(&c.path, &["--all"], DEPLOYMENT);
    assert_eq!(code, Some(0), "{err}");
    assert!(all.contains("image: ghcr.io/elsewhere/tool:1"), "{all}");
    assert!(err.contains("--all only applies with --registry"), "{err}");
    assert_eq!(all, rewrite_ok(&c.path, &[], DEPLOYMENT));
    let all = rewrite_ok(
        &c.path,
        &["--all", "--registry", "mirror.customer.example/vendor"],
        DEPLOYMENT,
    );
    assert!(
        all.contains("image: mirror.customer.example/vendor/ghcr.io/elsewhere/tool:1"),
        "--all left a foreign image: {all}"
    );
    assert!(
        all.contains("image: mirror.customer.example/vendor/upstream.test/acme/api:v1"),
        "{all}"
    );
    // ConfigMaps are data, not workloads, even with --all.
    assert!(
        all.ends_with("data:\n  image: upstream.test/acme/api:v1\n"),
        "{all}"
    );

    let mirror = rewrite_ok(
        &c.path,
        &["--registry", "mirror.customer.example/vendor"],
        DEPLOYMENT,
    );
    assert!(
        mirror.contains("image: mirror.customer.example/vendor/upstream.test/acme/api:v1"),
        "{mirror}"
    );
    assert!(
        mirror.contains(
            "image: \"mirror.customer.example/vendor/registry.example.com_5000/team/app:1\""
        ),
        "{mirror}"
    );
    assert!(
        mirror.contains("image: ghcr.io/elsewhere/tool:1"),
        "{mirror}"
    );
    assert!(!mirror.contains(HOSTNAME), "{mirror}");
}

#[test]
fn rewrite_single_images() {
    let c = cli_config("http://127.0.0.1:1");
    let digest = format!("sha256:{}", "ab".repeat(32));
    let cases: Vec<(Vec<&str>, String, String)> = vec![
        (
            vec![],
            "upstream.test/acme/api:v1".into(),
            "images.acme.test/proxy/acme/upstream.test/acme/api:v1".into(),
        ),
        (
            vec![],
            format!("upstream.test/acme/api:v1@{digest}"),
            format!("images.acme.test/proxy/acme/upstream.test/acme/api:v1@{digest}"),
        ),
        (
            vec![],
            "registry.example.com:5000/team/app".into(),
            "images.acme.test/proxy/acme/registry.example.com_5000/team/app".into(),
        ),
        // Not one of the app's upstreams: unchanged.
        (
            vec![],
            "ghcr.io/elsewhere/tool:1".into(),
            "ghcr.io/elsewhere/tool:1".into(),
        ),
        // Already rewritten: unchanged.
        (
            vec![],
            "images.acme.test/proxy/acme/upstream.test/acme/api:v1".into(),
            "images.acme.test/proxy/acme/upstream.test/acme/api:v1".into(),
        ),
        // --all moves foreign images only to an airgap registry.
        (
            vec!["--all"],
            "ghcr.io/elsewhere/tool:1".into(),
            "ghcr.io/elsewhere/tool:1".into(),
        ),
        (
            vec!["--all", "--registry", "mirror.example/ns"],
            "ghcr.io/elsewhere/tool:1".into(),
            "mirror.example/ns/ghcr.io/elsewhere/tool:1".into(),
        ),
        (
            vec!["--registry", "mirror.example/ns"],
            "upstream.test/acme/api:v1".into(),
            "mirror.example/ns/upstream.test/acme/api:v1".into(),
        ),
    ];
    for (flags, image, want) in cases {
        let mut args = flags.clone();
        args.extend_from_slice(&["--image", &image]);
        let out = rewrite_ok(&c.path, &args, "");
        assert_eq!(out, format!("{want}\n"), "--image {image} {flags:?}");
    }
    // --image and -f together are refused.
    let (code, out, _) = rewrite(&c.path, &["--image", "a/b:1", "-f", "x.yaml"], "");
    assert_ne!(code, Some(0));
    assert!(out.is_empty(), "{out}");
    // An unknown app is a usage error.
    let (code, out, err) = berth(
        &[
            "rewrite",
            "--config",
            c.path.to_str().unwrap(),
            "--app",
            "nope",
            "--image",
            "upstream.test/acme/api:v1",
        ],
        "",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn trailing_commas_merge_keys_and_duplicate_keys_through_the_cli() {
    let c = cli_config("http://127.0.0.1:1");
    // A trailing comma in a flow mapping: the output must be YAML that parses.
    let flow = "kind: Pod\nspec:\n  imagePullSecrets: [{name: x,}]\n  containers: [{name: a, image: upstream.test/acme/api:v1}]\n";
    let out = rewrite_ok(&c.path, &["--pull-secret", "acme-pull"], flow);
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&out).unwrap_or_else(|e| panic!("invalid output ({e}):\n{out}"));
    assert_eq!(
        v["spec"]["imagePullSecrets"][1]["name"].as_str(),
        Some("acme-pull"),
        "{out}"
    );
    // A pod spec merged in with `<<:` is rewritten, not skipped.
    let merged = "base: &base\n  containers:\n  - name: a\n    image: upstream.test/acme/api:v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      <<: *base\n";
    let out = rewrite_ok(&c.path, &["--pull-secret", "acme-pull"], merged);
    assert!(
        out.contains("image: images.acme.test/proxy/acme/upstream.test/acme/api:v1")
            && out.contains("- name: acme-pull"),
        "{out}"
    );
    // `image:` twice: refused with the line, nothing printed.
    let dup = "kind: Pod\nspec:\n  containers:\n  - name: a\n    image: ghcr.io/x/y:1\n    image: upstream.test/acme/api:v1\n";
    let (code, out, err) = rewrite(&c.path, &[], dup);
    assert_eq!(code, Some(1), "duplicate key accepted: {out}");
    assert!(out.is_empty(), "stdout on failure: {out:?}");
    assert!(
        err.contains("line 6") && err.contains("duplicate key \"image\""),
        "{err}"
    );
}

#[test]
fn malformed_yaml_fails_with_position_and_no_output() {
    let c = cli_config("http://127.0.0.1:1");
    // Line 6 has an unclosed quote; the first document is fine and must not be printed.
    let bad = "\
apiVersion: v1
kind: Pod
spec:
  containers:
    - name: a
      image: \"upstream.test/acme/api:v1
---
kind: Pod
";
    let (code, out, err) = rewrite(&c.path, &["--pull-secret", "s"], bad);
    assert_ne!(code, Some(0), "malformed YAML accepted: {out}");
    assert!(out.is_empty(), "stdout on failure: {out:?}");
    assert!(
        err.contains("line ") && err.contains("column "),
        "no position in: {err}"
    );
    // A tab indentation error on a known line: the line number is the one at fault.
    let tabbed = "apiVersion: v1\nkind: Pod\nspec:\n\tcontainers: []\n";
    let (code, out, err) = rewrite(&c.path, &[], tabbed);
    assert_ne!(code, Some(0));
    assert!(out.is_empty(), "stdout on failure: {out:?}");
    assert!(err.contains("line 4"), "wrong or no line in: {err}");
    // A missing file is an error too, naming it.
    let (code, out, err) = rewrite(&c.path, &["-f", "/nonexistent/deploy.yaml"], "");
    assert_ne!(code, Some(0));
    assert!(out.is_empty());
    assert!(err.contains("/nonexistent/deploy.yaml"), "{err}");
}

/// `--pin-digests` asks the upstream `berth serve` would pull the image from: of two
/// upstreams on one host, the one with the more specific repository glob, even when the
/// broader one comes first in the file (pinning once took the first that matched, so the
/// digest could come from another registry than the pulls).
#[test]
fn pin_digests_asks_the_upstream_serve_would_pick() {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: UPSTREAM_PASSWORD.into(),
    });
    let img = push_image(
        &reg,
        Some((VENDOR, UPSTREAM_PASSWORD)),
        "acme/api",
        "v1",
        &ImageSpec {
            layer_sizes: vec![1500],
            seed: 78,
        },
    );
    let dir = support::tempdir();
    let path = dir.path().join("berth.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: \"127.0.0.1:5443\", hostname: \"{HOSTNAME}\" }}\n\
             cache: {{ dir: \"{}\" }}\n\
             upstreams:\n\
             \x20 - {{ name: broad, url: \"http://127.0.0.1:1\", host: upstream.test, repositories: [\"acme/*\"] }}\n\
             \x20 - {{ name: exact, url: \"{}\", host: upstream.test, username: {VENDOR}, password: \"{UPSTREAM_PASSWORD}\", repositories: [\"acme/api\"] }}\n\
             apps:\n  - {{ slug: acme, upstreams: [broad, exact] }}\n",
            dir.path().join("cache").display(),
            reg.url()
        ),
    )
    .unwrap();
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n    - name: api\n      image: upstream.test/acme/api:v1\n";
    let out = rewrite_ok(&path, &["--pin-digests"], input);
    let want = input.replace(
        "image: upstream.test/acme/api:v1",
        &format!(
            "image: images.acme.test/proxy/acme/upstream.test/acme/api:v1@{}",
            img.manifest_digest
        ),
    );
    assert_eq!(out, want);
}

#[test]
fn pin_digests_resolves_tags_through_the_real_upstream() {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: UPSTREAM_PASSWORD.into(),
    });
    let img = push_image(
        &reg,
        Some((VENDOR, UPSTREAM_PASSWORD)),
        "acme/api",
        "v1",
        &ImageSpec {
            layer_sizes: vec![2000],
            seed: 77,
        },
    );
    let c = cli_config(&reg.url());
    let input = "\
apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
    - name: api
      image: upstream.test/acme/api:v1
    - name: foreign
      image: ghcr.io/elsewhere/tool:1
";
    let heads_before = reg.count_requests("HEAD", "/v2/acme/api/manifests/v1");
    let out = rewrite_ok(&c.path, &["--pin-digests"], input);
    let want = input.replace(
        "image: upstream.test/acme/api:v1",
        &format!(
            "image: images.acme.test/proxy/acme/upstream.test/acme/api:v1@{}",
            img.manifest_digest
        ),
    );
    assert_eq!(out, want);
    assert!(
        reg.count_requests("HEAD", "/v2/acme/api/manifests/v1") > heads_before,
        "the digest did not come from the upstream"
    );

    // A manifest already naming berth's pull-through name is left as written and pinned
    // through the upstream that name stands for.
    let proxied = input.replace(
        "image: upstream.test/acme/api:v1",
        "image: images.acme.test/proxy/acme/upstream.test/acme/api:v1",
    );
    let out = rewrite_ok(&c.path, &["--pin-digests"], &proxied);
    assert_eq!(out, want, "the /proxy/ name pinned like the upstream one");

    // A tag the upstream does not have: an error naming the image, nothing printed.
    let missing = input.replace("api:v1", "api:nope");
    let (code, out, err) = rewrite(&c.path, &["--pin-digests"], &missing);
    assert_ne!(code, Some(0), "pinned a missing tag: {out}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("upstream.test/acme/api:nope"), "{err}");
}

/// A config with `rewrite:` rules and an allow-list; `apps` is the `apps:` section.
fn rules_config(dir: &Path, upstream_url: &str, apps: &str) -> PathBuf {
    let path = dir.join("berth.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: \"127.0.0.1:5443\", hostname: \"{HOSTNAME}\" }}\n\
             cache: {{ dir: \"{}\" }}\n\
             upstreams:\n\
             \x20 - {{ name: up, url: \"{upstream_url}\", host: upstream.test, username: {VENDOR}, password: \"{UPSTREAM_PASSWORD}\", repositories: [\"acme/*\"] }}\n\
             \x20 - {{ name: q, url: \"http://127.0.0.1:1\", host: quay.io }}\n\
             {apps}\
             licenses:\n  - {{ id: LICENSE-good-0001, app: acme, customer: Big Bank }}\n\
             rewrite:\n  - {{ app: acme, pull_secret: acme-pull, exclude_namespaces: [kube-system] }}\n",
            dir.join("cache").display()
        ),
    )
    .unwrap();
    path
}

const PODS: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: app
spec:
  containers:
  - name: a
    image: upstream.test/acme/api:v1
  - name: b
    image: upstream.test/other/x:1
---
apiVersion: v1
kind: Pod
metadata:
  name: system
  namespace: kube-system
spec:
  containers:
  - name: a
    image: upstream.test/acme/api:v1
";

/// The config's `rewrite:` rules decide as they do for the webhook: the rule's pull secret
/// without `--pull-secret`, its excluded namespace untouched, the allow-list honoured;
/// `--app` inferred when one app is left.
#[test]
fn the_configs_rules_apply_and_the_app_is_inferred() {
    let dir = support::tempdir();
    let one = rules_config(
        dir.path(),
        "http://127.0.0.1:1",
        "apps:\n  - { slug: acme, upstreams: [up] }\n",
    );
    let (code, out, err) = berth(&["rewrite", "--config", one.to_str().unwrap()], PODS);
    assert_eq!(code, Some(0), "{err}");
    let want = PODS.replacen(
        "spec:\n  containers:\n  - name: a\n    image: upstream.test/acme/api:v1",
        "spec:\n  imagePullSecrets:\n  - name: acme-pull\n  containers:\n  - name: a\n    image: images.acme.test/proxy/acme/upstream.test/acme/api:v1",
        1,
    );
    assert_eq!(out, want, "{err}");
    // -n: objects without a namespace go there (as with kubectl apply -n).
    let (_, out, _) = berth(
        &[
            "rewrite",
            "--config",
            one.to_str().unwrap(),
            "-n",
            "kube-system",
        ],
        PODS,
    );
    assert_eq!(out, PODS);
    // Outside the allow-list: unchanged as a single image too.
    let (code, out, _) = berth(
        &[
            "rewrite",
            "--config",
            one.to_str().unwrap(),
            "--image",
            "upstream.test/other/x:1",
        ],
        "",
    );
    assert_eq!((code, out.as_str()), (Some(0), "upstream.test/other/x:1\n"));

    // Two apps: --image names the one serving it; ambiguity and no --app are usage errors
    // naming the candidates.
    let two = rules_config(
        dir.path(),
        "http://127.0.0.1:1",
        "apps:\n  - { slug: acme, upstreams: [up] }\n  - { slug: beta, upstreams: [q] }\n  - { slug: gamma, upstreams: [q] }\n",
    );
    let cfg = two.to_str().unwrap();
    let (code, out, err) = berth(
        &[
            "rewrite",
            "--config",
            cfg,
            "--image",
            "upstream.test/acme/api:v1",
        ],
        "",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "images.acme.test/proxy/acme/upstream.test/acme/api:v1\n"
    );
    let (code, _, err) = berth(
        &["rewrite", "--config", cfg, "--image", "quay.io/x/y:1"],
        "",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("beta") && err.contains("gamma"), "{err}");
    let (code, _, err) = berth(
        &["rewrite", "--config", cfg, "--image", "ghcr.io/x/y:1"],
        "",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("no app serves"), "{err}");
    // The rules name only acme: a file needs no --app either.
    let (code, out, err) = berth(&["rewrite", "--config", cfg], PODS);
    assert_eq!((code, out.as_str()), (Some(0), want.as_str()), "{err}");

    // berth pull-secret names the Secret as the rules reference it.
    let (code, out, err) = berth(
        &[
            "pull-secret",
            "--config",
            cfg,
            "--license",
            "LICENSE-good-0001",
        ],
        "",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("  name: acme-pull\n"), "{out}");
}

/// `--image X --pin-digests` pins exactly as the same image in a file is pinned.
#[test]
fn a_single_image_is_pinned_like_a_file() {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: UPSTREAM_PASSWORD.into(),
    });
    let img = push_image(
        &reg,
        Some((VENDOR, UPSTREAM_PASSWORD)),
        "acme/api",
        "v1",
        &ImageSpec {
            layer_sizes: vec![1200],
            seed: 79,
        },
    );
    let dir = support::tempdir();
    let cfg = rules_config(
        dir.path(),
        &reg.url(),
        "apps:\n  - { slug: acme, upstreams: [up] }\n",
    );
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = berth(
        &[
            "rewrite",
            "--config",
            cfg,
            "--pin-digests",
            "--image",
            "upstream.test/acme/api:v1",
        ],
        "",
    );
    assert_eq!(code, Some(0), "{err}");
    let want = format!(
        "images.acme.test/proxy/acme/upstream.test/acme/api:v1@{}",
        img.manifest_digest
    );
    assert_eq!(out, format!("{want}\n"));
    let (_, file, _) = berth(&["rewrite", "--config", cfg, "--pin-digests"], PODS);
    assert!(file.contains(&format!("image: {want}\n")), "{file}");
    // A tag the upstream lacks: an error, not the unpinned name.
    let (code, out, err) = berth(
        &[
            "rewrite",
            "--config",
            cfg,
            "--pin-digests",
            "--image",
            "upstream.test/acme/api:nope",
        ],
        "",
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.is_empty() && err.contains("pin"), "{err}");
}
