//! berth as the registry mirror of a customer's nodes, with nothing rewritten: containerd's
//! `?ns=` requests and `override_path` hosts (the `hosts.toml` files `berth mirror-config`
//! writes, read by the real `ctr` against a containerd of the test's own), podman with the
//! generated `registries.conf`, and Docker's `registry-mirrors` form (Docker Hub without
//! `ns`). Upstreams are a real `docker-registry`; every pull is checked by digest and in the
//! usage report. Client tests skip, saying so, only when their client is missing.

#[path = "support/http.rs"]
mod http;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use support::berth::{run_cli, Berth};
use support::image::{push_image, ImageSpec, TestImage, MANIFEST_MEDIA_TYPE};
use support::registry::{Registry, RegistryAuth};

const GOOD: &str = "LICENSE-mirror-good-0001";
const OTHER: &str = "LICENSE-mirror-other-001";
const VENDOR: &str = "vendor";
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn basic(secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{secret}:{secret}")))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether a daemon of the test's own can run: its programs are installed and this is root
/// (both daemons need it). Says why not in a SKIP line.
fn can_run(programs: &[&str], what: &str) -> bool {
    if !programs.iter().all(|p| have(p)) {
        eprintln!("SKIP: {what} is not installed");
        return false;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        eprintln!("SKIP: {what} needs root");
    }
    root
}

/// An upstream registry with the vendor's images, and berth serving app `acme` from it as
/// `quay.io` and as Docker Hub, and app `other` from a registry that is no `quay.io`.
struct Site {
    reg: Registry,
    password: String,
    berth: Berth,
    _cache: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let password = format!("vendor-pw-{}", std::process::id());
        let reg = Registry::start(RegistryAuth::Htpasswd {
            user: VENDOR.into(),
            password: password.clone(),
        });
        let cache = support::tempdir();
        let port = support::free_port();
        let config = format!(
            "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}
cache: {{ dir: \"{cache}\" }}
upstreams:
  - {{ name: quay, url: \"{url}\", host: quay.io, username: {VENDOR}, password: \"${{UPSTREAM_PASSWORD}}\" }}
  - {{ name: hub, kind: dockerhub, url: \"{url}\", username: {VENDOR}, password: \"${{UPSTREAM_PASSWORD}}\" }}
  - {{ name: elsewhere, url: \"{url}\", host: registry.other.test, username: {VENDOR}, password: \"${{UPSTREAM_PASSWORD}}\" }}
apps:
  - {{ slug: acme, upstreams: [quay, hub] }}
  - {{ slug: other, upstreams: [elsewhere] }}
licenses:
  - {{ id: {GOOD}, app: acme, customer: Mirror Customer }}
  - {{ id: {OTHER}, app: other, customer: Other Customer }}
",
            cache = cache.path().display(),
            url = reg.url(),
        );
        let berth = Berth::start_on(port, &config, &[("UPSTREAM_PASSWORD", &password)]);
        Site {
            reg,
            password,
            berth,
            _cache: cache,
        }
    }

    fn push(&self, repo: &str, tag: &str, seed: u64) -> TestImage {
        push_image(
            &self.reg,
            Some((VENDOR, &self.password)),
            repo,
            tag,
            &ImageSpec {
                layer_sizes: vec![40_000, 3_000],
                seed,
            },
        )
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.berth.port)
    }

    fn get(&self, path: &str, auth: Option<&str>) -> http::Resp {
        self.req("GET", path, auth)
    }

    fn req(&self, method: &str, path: &str, auth: Option<&str>) -> http::Resp {
        let mut h = vec![("Accept", MANIFEST_MEDIA_TYPE)];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        http::request(self.berth.port, method, path, &h, b"")
    }

    /// The berth CLI on this site's config (which names the upstream password's variable).
    fn cli(&self, args: &[&str]) -> support::berth::CliRun {
        run_cli(
            args,
            &[("UPSTREAM_PASSWORD", &self.password)],
            None,
            CLI_TIMEOUT,
        )
    }

    /// `berth mirror-config` with these arguments into a fresh directory.
    fn mirror_config(&self, args: &[&str]) -> tempfile::TempDir {
        let out = support::tempdir();
        let config = self.berth.config_path.to_str().unwrap().to_string();
        let url = self.url();
        let mut all = vec![
            "--config",
            &config,
            "mirror-config",
            "--url",
            &url,
            "--out",
            out.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let r = self.cli(&all);
        assert_eq!(r.code, Some(0), "mirror-config {args:?}: {}", r.stderr);
        out
    }

    /// The usage report's pulls of `image` by the customer named `customer`, once its
    /// batched writes have reached at least `at_least`.
    fn pulls(&self, customer: &str, image: &str, at_least: u64) -> u64 {
        let config = self.berth.config_path.to_str().unwrap().to_string();
        let mut seen = 0;
        let mut last = String::new();
        support::wait_until(Duration::from_secs(15), || {
            let r = self.cli(&["--config", &config, "--json", "usage"]);
            last = format!("{}{}", r.stdout, r.stderr);
            let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
            seen = v["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["name"] == customer)
                .flat_map(|s| s["images"].as_array().cloned().unwrap_or_default())
                .filter(|i| i["image"] == image)
                .filter_map(|i| i["pulls"].as_u64())
                .sum();
            seen >= at_least
        });
        assert!(
            seen >= at_least,
            "{customer} pulled {image} {seen} times, not {at_least}: {last}"
        );
        seen
    }
}

#[test]
fn ns_requests_pull_from_the_callers_app_and_say_which_registry() {
    let site = Site::new();
    let api = site.push("acme/api", "1.2", 101);
    site.push("acme/api", "1.3", 102);
    let redis = site.push("library/redis", "7", 103);
    let good = basic(GOOD);

    // containerd's form: the registry in ns, the repository as the image names it. The
    // first component is an app's slug, but ns says it is quay.io's acme/api.
    let r = site.get("/v2/acme/api/manifests/1.2?ns=quay.io", Some(&good));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(api.manifest_digest.as_str())
    );
    assert_eq!(r.header("oci-namespace"), Some("quay.io"));
    let h = site.req("HEAD", "/v2/acme/api/manifests/1.2?ns=quay.io", Some(&good));
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("docker-content-digest"),
        Some(api.manifest_digest.as_str())
    );
    let (layer, size) = &api.layers[0];
    let b = site.get(
        &format!("/v2/acme/api/blobs/{layer}?ns=quay.io"),
        Some(&good),
    );
    assert_eq!(b.status, 200);
    assert_eq!(b.body.len() as u64, *size);
    assert_eq!(format!("sha256:{}", support::sha256_hex(&b.body)), *layer);
    // The same repository of the same app as the proxy path: one cache, one fill.
    let p = site.get(
        &format!("/v2/proxy/acme/quay.io/acme/api/blobs/{layer}"),
        Some(&good),
    );
    assert_eq!(p.body, b.body);
    assert_eq!(
        site.reg.count_requests("GET", &format!("/blobs/{layer}")),
        1,
        "the proxy path filled again what the mirror request had cached"
    );

    // Tag lists page with a Link that keeps ns.
    let t = site.get("/v2/acme/api/tags/list?n=1&ns=quay.io", Some(&good));
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["tags"], serde_json::json!(["1.2"]));
    let link = t.header("link").expect("a next link").to_string();
    assert!(
        link.contains("ns=quay.io") && link.contains("last=1.2"),
        "{link}"
    );
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let t2 = site.get(next, Some(&good));
    assert_eq!(t2.json()["tags"], serde_json::json!(["1.3"]), "{next}");

    // Docker's registry-mirrors: Docker Hub, no ns, a first component that is no app.
    let hub = site.get("/v2/library/redis/manifests/7", Some(&good));
    assert_eq!(hub.status, 200, "{}", hub.text());
    assert_eq!(
        hub.header("docker-content-digest"),
        Some(redis.manifest_digest.as_str())
    );
    assert_eq!(hub.header("oci-namespace"), None);
    for ns in ["docker.io", "index.docker.io"] {
        let r = site.get(
            &format!("/v2/library/redis/manifests/7?ns={ns}"),
            Some(&good),
        );
        assert_eq!(r.status, 200, "{ns}");
        assert_eq!(r.header("oci-namespace"), Some(ns));
    }
    // Without ns, an app's slug first is the app's hosted registry (nothing pushed there).
    let hosted = site.get("/v2/acme/api/manifests/1.2", Some(&good));
    assert_eq!(hosted.status, 404, "{}", hosted.text());

    // A registry the caller's app does not serve: 404 naming it; another customer's app
    // is not reached through the shared name.
    let r = site.get("/v2/acme/api/manifests/1.2?ns=ghcr.io", Some(&good));
    assert_eq!((r.status, r.code()), (404, "NAME_UNKNOWN".to_string()));
    assert!(r.text().contains("ghcr.io"), "{}", r.text());
    let r = site.get("/v2/acme/api/manifests/1.2?ns=quay.io", Some(&basic(OTHER)));
    assert_eq!((r.status, r.code()), (404, "NAME_UNKNOWN".to_string()));
    assert!(r.text().contains("quay.io"), "{}", r.text());
    let r = site.get(
        "/v2/acme/api/manifests/1.2?ns=registry.other.test",
        Some(&basic(OTHER)),
    );
    assert_eq!(
        r.status,
        200,
        "app other serves its own registry: {}",
        r.text()
    );
    // Bad input is a 4xx.
    let r = site.get("/v2/acme/api/manifests/1.2?ns=Not%20A%20Host", Some(&good));
    assert_eq!((r.status, r.code()), (400, "NAME_INVALID".to_string()));

    // Unauthenticated: a challenge for the image as the node names it, and the token the
    // realm hands out for that scope pulls, for this repository only.
    let r = site.get("/v2/acme/api/manifests/1.2?ns=quay.io", None);
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
    assert!(
        challenge.contains("scope=\"repository:quay.io/acme/api:pull\""),
        "{challenge}"
    );
    let token = |scope: &str| {
        let t = site.get(
            &format!("/token?service=127.0.0.1:{}&scope={scope}", site.berth.port),
            Some(&good),
        );
        assert_eq!(t.status, 200, "{}", t.text());
        format!("Bearer {}", t.json()["token"].as_str().unwrap())
    };
    let bearer = token("repository:quay.io/acme/api:pull");
    let r = site.get("/v2/acme/api/manifests/1.2?ns=quay.io", Some(&bearer));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = site.get("/v2/library/redis/manifests/7", Some(&bearer));
    assert_eq!(
        r.status, 401,
        "a token for quay.io/acme/api pulled library/redis"
    );
    // Docker's daemon asks for Hub's name without the host, whatever the challenge said.
    let hub_bearer = token("repository:library/redis:pull");
    let r = site.get("/v2/library/redis/manifests/7", Some(&hub_bearer));
    assert_eq!(r.status, 200, "{}", r.text());

    // Counted as pulls of the app's image, like the proxy path's.
    site.pulls("Mirror Customer", "quay.io/acme/api", 1);
    // (Docker Hub's repositories are keyed by the hub upstream's host, as on the proxy path.)
    site.pulls("Mirror Customer", "index.docker.io/library/redis", 1);
}

/// A containerd of the test's own: its root, state and socket under a temp dir, the CRI
/// plugin off, so nothing touches the machine's containerd or Docker's.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Option<Containerd> {
        let dir = support::tempdir();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .ok()?;
        let c = Containerd { dir, child };
        let up = support::wait_until(Duration::from_secs(20), || {
            c.ctr(&["version"]).status.success()
        });
        if !up {
            eprintln!(
                "containerd did not start:\n{}",
                std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
            );
            return None;
        }
        Some(c)
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let sock = self.dir.path().join("c.sock");
        let mut all = vec![
            "60",
            "ctr",
            "--address",
            sock.to_str().unwrap(),
            "-n",
            "berth-test",
        ];
        all.extend_from_slice(args);
        Command::new("timeout")
            .args(&all)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Pulls `image` with the hosts files in `hosts` (and `extra` flags), unpacked with the
    /// native snapshotter (no mounts needed), and returns the digest containerd recorded.
    fn pull(&self, hosts: &Path, image: &str, extra: &[&str], berth: &Berth) -> String {
        let mut args = vec![
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            hosts.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(image);
        let out = self.ctr(&args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}\nberth log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            berth.logs()
        );
        let ls = self.ctr(&["images", "ls"]);
        let ls = String::from_utf8_lossy(&ls.stdout).to_string();
        ls.lines()
            .find(|l| l.starts_with(&format!("{image} ")))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
            .unwrap_or_else(|| panic!("{image} not in ctr images ls:\n{ls}"))
            .to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The native snapshotter leaves read-only trees; make them removable.
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.dir.path())
            .status();
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

#[test]
fn containerd_pulls_through_the_generated_hosts_files_in_both_styles() {
    if !can_run(
        &["containerd", "ctr"],
        "containerd (apt-get install -y containerd)",
    ) {
        return;
    }
    let site = Site::new();
    let ns_image = site.push("acme/api", "1.2", 201);
    let op_image = site.push("acme/api", "1.3", 202);
    let c = Containerd::start().expect("containerd starts");

    // ns style, with the license in the generated Authorization header.
    let hosts = site.mirror_config(&["--runtime", "containerd", "--license", GOOD]);
    let files = files_under(hosts.path());
    assert_eq!(
        files,
        vec![
            hosts.path().join("docker.io/hosts.toml"),
            hosts.path().join("quay.io/hosts.toml")
        ]
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&files[1]).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "a hosts.toml with the license is readable by others"
    );
    let digest = c.pull(hosts.path(), "quay.io/acme/api:1.2", &[], &site.berth);
    assert_eq!(digest, ns_image.manifest_digest);
    let log = site.berth.logs();
    assert!(
        log.lines()
            .any(|l| l.contains("/v2/acme/api/manifests/1.2") && l.contains("status=200")),
        "containerd did not come through berth's mirror path:\n{log}"
    );

    // override_path, with no login in the files: the credentials come the way a kubelet
    // pull secret brings them (here ctr --user), through berth's token realm.
    let hosts = site.mirror_config(&[
        "--runtime",
        "containerd",
        "--app",
        "acme",
        "--style",
        "override-path",
    ]);
    let toml = std::fs::read_to_string(hosts.path().join("quay.io/hosts.toml")).unwrap();
    assert!(
        toml.contains("override_path = true") && !toml.contains("Authorization"),
        "{toml}"
    );
    let user = format!("{GOOD}:{GOOD}");
    let digest = c.pull(
        hosts.path(),
        "quay.io/acme/api:1.3",
        &["--user", &user],
        &site.berth,
    );
    assert_eq!(digest, op_image.manifest_digest);
    let log = site.berth.logs();
    assert!(
        log.lines().any(
            |l| l.contains("/v2/proxy/acme/quay.io/acme/api/manifests/1.3")
                && l.contains("status=200")
        ),
        "containerd did not come through berth's proxy path:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("/token") && l.contains("status=200")),
        "containerd did not log in at berth's realm:\n{log}"
    );
    site.pulls("Mirror Customer", "quay.io/acme/api", 2);
}

#[test]
fn podman_pulls_through_the_generated_registries_conf() {
    if !have("podman") {
        eprintln!("SKIP: podman is not installed (apt-get install -y podman)");
        return;
    }
    let site = Site::new();
    let img = site.push("acme/api", "2.0", 301);
    let conf = site.mirror_config(&["--runtime", "cri-o", "--license", GOOD]);
    let store = support::tempdir();
    let s = store.path();
    std::fs::create_dir_all(s.join("tmp")).unwrap();
    let podman = |args: &[&str]| {
        let mut all: Vec<String> = [
            "300",
            "podman",
            "--root",
            &s.join("root").display().to_string(),
            "--runroot",
            &s.join("run").display().to_string(),
            "--storage-driver",
            "vfs",
            "--tmpdir",
            &s.join("tmp").display().to_string(),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        all.extend(args.iter().map(|a| a.to_string()));
        Command::new("timeout")
            .args(&all)
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                conf.path().join("registries.conf"),
            )
            .env("TMPDIR", s.join("tmp"))
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    };
    let auth = conf.path().join("auth.json");
    let out = podman(&[
        "pull",
        "--authfile",
        auth.to_str().unwrap(),
        "quay.io/acme/api:2.0",
    ]);
    assert!(
        out.status.success(),
        "podman pull: {}\nberth log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        site.berth.logs()
    );
    let out = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        "quay.io/acme/api:2.0",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        img.manifest_digest
    );
    let log = site.berth.logs();
    assert!(
        log.lines().any(
            |l| l.contains("/v2/proxy/acme/quay.io/acme/api/manifests/2.0")
                && l.contains("status=200")
        ),
        "podman did not come through berth:\n{log}"
    );
    site.pulls("Mirror Customer", "quay.io/acme/api", 1);
}

#[test]
fn mirror_config_refuses_what_cannot_work() {
    let site = Site::new();
    let config = site.berth.config_path.to_str().unwrap().to_string();
    let out = support::tempdir();
    let run = |args: &[&str]| {
        let mut all = vec![
            "--config",
            &config,
            "mirror-config",
            "--out",
            out.path().to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        site.cli(&all)
    };
    // Docker's registry-mirrors mirrors Docker Hub only: app other has none.
    let r = run(&["--runtime", "docker", "--app", "other"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("Docker Hub"), "{}", r.stderr);
    let r = run(&["--runtime", "containerd", "--license", "no-such-secret"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--license"), "{}", r.stderr);
    let r = run(&["--runtime", "containerd", "--app", "nope"]);
    assert_eq!(r.code, Some(2));
    let r = run(&["--runtime", "zos", "--app", "acme"]);
    assert_eq!(r.code, Some(2));
    assert!(
        files_under(out.path()).is_empty(),
        "a refused run wrote files"
    );
    // The docker form: daemon.json for the mirror, the Hub login the daemon sends to it.
    let r = run(&[
        "--runtime",
        "docker",
        "--license",
        GOOD,
        "--url",
        &site.url(),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let daemon: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("daemon.json")).unwrap()).unwrap();
    assert_eq!(daemon["registry-mirrors"], serde_json::json!([site.url()]));
    let login: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(
        login["auths"]["https://index.docker.io/v1/"]["auth"],
        STANDARD.encode(format!("{GOOD}:{GOOD}"))
    );
    // check-config says where Docker Hub mirror requests meet an app's hosted namespace.
    let r = site.cli(&["--config", &config, "check-config"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("warning") && r.stderr.contains("docker.io/acme/"),
        "{}",
        r.stderr
    );
}

/// A Docker daemon of the test's own (its data, exec root and socket under a temp dir, vfs
/// storage, a bridge of its own and no iptables), started with a generated `daemon.json`,
/// so the machine's engine and its configuration stay untouched. Not `--bridge none`:
/// dockerd then deletes the host's `docker0`, which the machine's engine needs.
struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
    bridge: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Dockerd {
    fn start(daemon_json: &Path) -> Option<Dockerd> {
        let dir = support::tempdir();
        let d = dir.path();
        let bridge = format!("brt{}", std::process::id() % 100_000);
        let subnet = format!("10.211.{}.1/24", std::process::id() % 250);
        if !(ip(&["link", "add", "name", &bridge, "type", "bridge"])
            && ip(&["addr", "add", &subnet, "dev", &bridge])
            && ip(&["link", "set", &bridge, "up"]))
        {
            ip(&["link", "del", &bridge]);
            eprintln!("cannot create the bridge {bridge} for a second dockerd");
            return None;
        }
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(daemon_json)
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("sock").display()))
            .args(["--storage-driver", "vfs", "--bridge", &bridge])
            .args(["--iptables=false", "--ip-masq=false"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        let Ok(child) = child else {
            ip(&["link", "del", &bridge]);
            return None;
        };
        let c = Dockerd { dir, child, bridge };
        let up = support::wait_until(Duration::from_secs(30), || {
            c.docker(None, &["info"]).status.success()
        });
        if !up {
            eprintln!(
                "dockerd did not start:\n{}",
                std::fs::read_to_string(c.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            return None;
        }
        Some(c)
    }

    fn docker(&self, config: Option<&Path>, args: &[&str]) -> Output {
        let host = format!("unix://{}", self.dir.path().join("sock").display());
        let mut c = Command::new("timeout");
        c.args(["120", "docker", "-H", &host]);
        if let Some(dir) = config {
            c.arg("--config").arg(dir);
        }
        c.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets it stop its containerd; then make sure.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let stopped = support::wait_until(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        ip(&["link", "del", &self.bridge]);
    }
}

#[test]
fn docker_pulls_docker_hub_images_through_registry_mirrors() {
    if !can_run(
        &["dockerd", "docker", "ip"],
        "a Docker engine (dockerd, docker, ip)",
    ) {
        return;
    }
    let had_docker0 = ip(&["link", "show", "docker0"]);
    let site = Site::new();
    let img = site.push("library/mirrored", "1", 401);
    // daemon.json for the daemon, config.json (the Docker Hub login it sends the mirror)
    // for the client: both as `berth mirror-config` writes them.
    let files = site.mirror_config(&["--runtime", "docker", "--license", GOOD]);
    let Some(d) = Dockerd::start(&files.path().join("daemon.json")) else {
        panic!("dockerd did not start with the generated daemon.json");
    };
    let out = d.docker(Some(files.path()), &["pull", "mirrored:1"]);
    assert!(
        out.status.success(),
        "docker pull mirrored:1: {}{}\nberth log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        site.berth.logs()
    );
    let out = d.docker(
        None,
        &[
            "image",
            "inspect",
            "--format",
            "{{index .RepoDigests 0}}",
            "mirrored:1",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("mirrored@{}", img.manifest_digest)
    );
    let log = site.berth.logs();
    let fp = &support::sha256_hex(GOOD.as_bytes())[..32];
    assert!(
        log.lines()
            .any(|l| l.contains("/v2/library/mirrored/manifests/1")
                && l.contains("status=200")
                && l.contains(fp)),
        "dockerd did not pull through berth with the license:\n{log}"
    );
    site.pulls("Mirror Customer", "index.docker.io/library/mirrored", 1);
    drop(d);
    assert!(
        !had_docker0 || ip(&["link", "show", "docker0"]),
        "the second dockerd removed the machine's docker0"
    );
}
