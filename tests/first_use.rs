//! What a new user meets first (issue 19): errors that say what to do (TLS against a
//! plain-HTTP port, a wrong upstream password found at start, an expired or revoked
//! license named in the 401), `Accept: */*`, one reload line that says what changed,
//! a prompt exit after SIGTERM, and airgap summaries that count the same way. Against the
//! real berth binary and Debian's docker-registry.

#[path = "support/http.rs"]
mod http;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use support::berth::{run_cli, Berth, CliRun};
use support::image::{push_image, ImageSpec};
use support::registry::{Registry, RegistryAuth};

const GOOD: &str = "LICENSE-good-0001";
const OLD: &str = "LICENSE-old-0001";
const GONE: &str = "LICENSE-gone-0001";
const HOST: &str = "upstream.test";
const WAIT: Duration = Duration::from_secs(20);

fn basic(secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("x:{secret}")))
}

/// berth's config: one upstream `up` at `url` (with `creds` if any), app `acme`, three
/// licenses (good, expired, revoked), an admin listener.
fn config(port: u16, admin: u16, cache: &Path, url: &str, creds: Option<(&str, &str)>) -> String {
    let creds = creds
        .map(|(u, p)| format!(", username: {u}, password: \"{p}\""))
        .unwrap_or_default();
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams:\n  - {{ name: up, url: \"{url}\", host: {HOST}{creds} }}\n\
         apps:\n  - {{ slug: acme, upstreams: [up] }}\n\
         licenses:\n  - {{ id: {GOOD}, app: acme, customer: Good }}\n  - {{ id: {OLD}, app: acme, customer: Old, expires: \"2020-01-01T00:00:00Z\" }}\n  - {{ id: {GONE}, app: acme, customer: Gone, revoked: true }}\n",
        cache.display()
    )
}

fn cli(args: &[&str]) -> CliRun {
    run_cli(args, &[], None, Duration::from_secs(120))
}

fn write_config(dir: &Path, yaml: &str) -> String {
    let p = dir.join("berth.yaml");
    std::fs::write(&p, yaml).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn tls_against_a_plain_http_port_says_so_and_is_not_retried() {
    let reg = Registry::start(RegistryAuth::None);
    push_image(
        &reg,
        None,
        "acme/api",
        "1.0",
        &ImageSpec {
            layer_sizes: vec![1000],
            seed: 7,
        },
    );
    let dir = support::tempdir();
    let cache = dir.path().join("cache");
    let yaml = config(
        support::free_port(),
        support::free_port(),
        &cache,
        &format!("http://127.0.0.1:{}", reg.port),
        None,
    );
    let cfg = write_config(dir.path(), &yaml);
    let bundle = dir.path().join("b.tar");
    let r = cli(&[
        "airgap",
        "export",
        "--config",
        &cfg,
        "--app",
        "acme",
        "-o",
        bundle.to_str().unwrap(),
        &format!("{HOST}/acme/api:1.0"),
    ]);
    assert_eq!(r.code, Some(0), "export: {}\n{}", r.stdout, r.stderr);

    // airgap push without --insecure to the plain-HTTP registry.
    let started = Instant::now();
    let to = format!("127.0.0.1:{}/x", reg.port);
    let r = cli(&["airgap", "push", bundle.to_str().unwrap(), "--to", &to]);
    assert_ne!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("this looks like plain HTTP") && r.stderr.contains("--insecure"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("retrying"), "{}", r.stderr);
    assert!(!r.stderr.contains("InvalidContentType"), "{}", r.stderr);
    // The retries used to sleep 1 s, 2 s, …: none now.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // With --insecure the same push works.
    let r = cli(&[
        "airgap",
        "push",
        bundle.to_str().unwrap(),
        "--to",
        &to,
        "--insecure",
    ]);
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);

    // upstream test of an https:// URL on the plain port.
    let yaml = config(
        support::free_port(),
        support::free_port(),
        &cache,
        &format!("https://127.0.0.1:{}", reg.port),
        None,
    );
    let cfg = write_config(dir.path(), &yaml);
    let r = cli(&["upstream", "test", "up", "--config", &cfg]);
    assert_ne!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("this looks like plain HTTP") && all.contains("http:// URL"),
        "{all}"
    );
}

#[test]
fn a_wrong_upstream_password_is_reported_at_start_and_in_readyz() {
    let secret = "right-password-9f3c";
    let wrong = "wrong-password-71ab";
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "vendor".into(),
        password: secret.into(),
    });
    let dir = support::tempdir();
    let (port, admin) = (support::free_port(), support::free_port());
    let yaml = config(
        port,
        admin,
        &dir.path().join("cache"),
        &format!("http://127.0.0.1:{}", reg.port),
        Some(("vendor", wrong)),
    );
    let b = Berth::start(&yaml, &[]);
    // It serves regardless: the check never holds up the start.
    assert_eq!(http::get(port, "/v2/", &[]).status, 401);
    assert!(
        support::wait_until(Duration::from_secs(10), || b
            .logs()
            .contains("upstream check at start failed")),
        "no warning; log:\n{}",
        b.logs()
    );
    let logs = b.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("upstream check at start failed"))
        .unwrap();
    assert!(
        line.contains("up") && line.contains("berth upstream test up"),
        "{line}"
    );
    assert!(line.contains("rejected"), "{line}");
    assert_eq!(logs.matches("upstream check at start").count(), 1, "{logs}");
    assert!(!logs.contains(wrong) && !logs.contains(secret), "{logs}");
    let r = http::get(admin, "/readyz?upstreams=1", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    let up = v["checks"]["upstreams"]["up"].as_str().unwrap_or_default();
    assert!(up.contains("rejected"), "{v}");
    assert!(!r.text().contains(wrong), "{}", r.text());
}

#[test]
fn the_401_tells_the_holder_of_an_expired_or_revoked_license_which() {
    let dir = support::tempdir();
    let (port, admin) = (support::free_port(), support::free_port());
    let yaml = config(
        port,
        admin,
        &dir.path().join("cache"),
        "http://127.0.0.1:1",
        None,
    );
    let _b = Berth::start(&yaml, &[]);
    let path = format!("/v2/proxy/acme/{HOST}/acme/api/manifests/1.0");
    for (secret, want) in [
        (OLD, "authentication required: license expired"),
        (GONE, "authentication required: license revoked"),
        ("LICENSE-nobody-0001", "authentication required"),
    ] {
        for p in [path.as_str(), "/token?scope=repository:x:pull"] {
            let r = http::get(port, p, &[("Authorization", &basic(secret))]);
            assert_eq!(r.status, 401, "{p}: {}", r.text());
            assert_eq!(r.code(), "UNAUTHORIZED");
            assert_eq!(r.json()["errors"][0]["message"], want, "{p}");
            if p == path {
                assert!(r.header("www-authenticate").is_some(), "{:?}", r.headers);
            }
        }
    }
}

#[test]
fn accept_any_gets_the_manifest_and_the_upstreams_reason_reaches_the_client() {
    let reg = Registry::start(RegistryAuth::None);
    let img = push_image(
        &reg,
        None,
        "acme/api",
        "1.0",
        &ImageSpec {
            layer_sizes: vec![1000],
            seed: 3,
        },
    );
    let dir = support::tempdir();
    let (port, admin) = (support::free_port(), support::free_port());
    let yaml = config(
        port,
        admin,
        &dir.path().join("cache"),
        &format!("http://127.0.0.1:{}", reg.port),
        None,
    );
    let _b = Berth::start(&yaml, &[]);
    let auth = basic(GOOD);
    let path = format!("/v2/proxy/acme/{HOST}/acme/api/manifests/1.0");
    let r = http::get(port, &path, &[("Authorization", &auth), ("Accept", "*/*")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest_digest.as_str())
    );
    // Only Docker's schema 2 accepted: distribution will not send the OCI manifest, and says why.
    let path = format!(
        "/v2/proxy/acme/{HOST}/acme/api/manifests/{}",
        img.manifest_digest
    );
    let r = http::get(
        port,
        &path,
        &[
            ("Authorization", &auth),
            (
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
        ],
    );
    // By digest it is cached from the pull above: served whatever the Accept.
    assert_eq!(r.status, 200, "{}", r.text());
    let path = format!("/v2/proxy/acme/{HOST}/acme/api/manifests/2.0");
    push_image(
        &reg,
        None,
        "acme/api",
        "2.0",
        &ImageSpec {
            layer_sizes: vec![900],
            seed: 4,
        },
    );
    let r = http::get(
        port,
        &path,
        &[
            ("Authorization", &auth),
            (
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
        ],
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let m = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        m.contains("the upstream says") && m.contains("accept header"),
        "{m}"
    );
}

#[test]
fn sighup_after_an_edit_is_one_reload_that_says_what_changed() {
    let dir = support::tempdir();
    let (port, admin) = (support::free_port(), support::free_port());
    let cache = dir.path().join("cache");
    let yaml = config(port, admin, &cache, "http://127.0.0.1:1", None);
    let b = Berth::start(&yaml, &[]);
    let edited = yaml
        .replace(
            "apps:\n",
            "  - { name: more, url: \"http://127.0.0.1:2\", host: more.test, username: u, password: \"p4ss-canary\" }\napps:\n",
        )
        .replace(&format!("dir: \"{}\" }}", cache.display()), &format!("dir: \"{}\", tag_ttl: 9m }}", cache.display()));
    assert_ne!(edited, yaml);
    std::fs::write(&b.config_path, &edited).unwrap();
    b.sighup();
    assert!(
        support::wait_until(WAIT, || b.logs().contains("configuration reloaded")),
        "{}",
        b.logs()
    );
    // The watcher polls every 2 s: give it time to (not) reload the same version again.
    std::thread::sleep(Duration::from_secs(5));
    let logs = b.logs();
    assert_eq!(logs.matches("configuration reloaded").count(), 1, "{logs}");
    let line = logs
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    assert!(line.contains("upstreams: +1 -0 changed 0"), "{line}");
    assert!(line.contains("settings: cache.tag_ttl"), "{line}");
    assert!(!logs.contains("p4ss-canary"), "{logs}");
}

#[test]
fn sigterm_exits_promptly_after_the_last_connection() {
    let reg = Registry::start(RegistryAuth::None);
    push_image(
        &reg,
        None,
        "acme/api",
        "1.0",
        &ImageSpec {
            layer_sizes: vec![1000],
            seed: 5,
        },
    );
    let dir = support::tempdir();
    let (port, admin) = (support::free_port(), support::free_port());
    let yaml = config(
        port,
        admin,
        &dir.path().join("cache"),
        &format!("http://127.0.0.1:{}", reg.port),
        None,
    );
    let mut b = Berth::start(&yaml, &[]);
    // A pull first: usage to write at shutdown, the directory and usage tasks running.
    let path = format!("/v2/proxy/acme/{HOST}/acme/api/manifests/1.0");
    let r = http::get(port, &path, &[("Authorization", &basic(GOOD))]);
    assert_eq!(r.status, 200, "{}", r.text());
    // And a real client's pull (skopeo: the token endpoint, keep-alive connections).
    let out = dir.path().join("pulled");
    let o = support::image::skopeo_copy_to_oci(
        &format!("docker://127.0.0.1:{port}/proxy/acme/{HOST}/acme/api:1.0"),
        Some(&format!("x:{GOOD}")),
        &out,
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    b.sigterm();
    let status = b.wait_exit(Duration::from_secs(10));
    let took = started.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(b.logs().contains("all connections closed"), "{}", b.logs());
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(took < Duration::from_millis(900), "{took:?}\n{}", b.logs());
}

#[test]
fn airgap_export_list_and_import_count_alike() {
    let reg = Registry::start(RegistryAuth::None);
    push_image(
        &reg,
        None,
        "acme/api",
        "1.0",
        &ImageSpec {
            layer_sizes: vec![2000, 3000],
            seed: 11,
        },
    );
    let dir = support::tempdir();
    let yaml = config(
        support::free_port(),
        support::free_port(),
        &dir.path().join("cache"),
        &format!("http://127.0.0.1:{}", reg.port),
        None,
    );
    let cfg = write_config(dir.path(), &yaml);
    let bundle = dir.path().join("b.tar");
    let r = cli(&[
        "airgap",
        "export",
        "--config",
        &cfg,
        "--app",
        "acme",
        "-o",
        bundle.to_str().unwrap(),
        &format!("{HOST}/acme/api:1.0"),
    ]);
    assert_eq!(r.code, Some(0), "export: {}\n{}", r.stdout, r.stderr);
    // One manifest, one config, two layers.
    let blobs = "4 blobs (1 manifest, 3 configs and layers)";
    assert!(r.stdout.contains("1 image, 0 referrers, "), "{}", r.stdout);
    assert!(r.stdout.contains(blobs), "{}", r.stdout);
    assert!(
        !r.stdout.contains(" bytes"),
        "sizes are human: {}",
        r.stdout
    );

    let l = cli(&["airgap", "list", bundle.to_str().unwrap()]);
    assert_eq!(l.code, Some(0), "{}", l.stderr);
    assert!(l.stdout.contains(blobs), "{}", l.stdout);
    assert!(l.stdout.contains("1 image, 0 referrers"), "{}", l.stdout);
    let row = l.stdout.lines().next().unwrap();
    assert!(
        row.contains("\tlinux/amd64\t"),
        "single-arch platform: {row}"
    );

    let yaml2 = yaml.replace("cache\"", "cache2\"");
    assert_ne!(yaml2, yaml);
    let d2 = support::tempdir();
    let cfg2 = write_config(d2.path(), &yaml2);
    let i = cli(&[
        "airgap",
        "import",
        "--config",
        &cfg2,
        bundle.to_str().unwrap(),
    ]);
    assert_eq!(i.code, Some(0), "{}\n{}", i.stdout, i.stderr);
    assert!(i.stdout.contains("imported 1 image, "), "{}", i.stdout);
    assert!(i.stdout.contains(blobs), "{}", i.stdout);
}
