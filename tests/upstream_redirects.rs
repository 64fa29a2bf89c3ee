//! Where berth's upstream credentials may go once a request leaves the upstream's origin:
//! a CDN (a redirect target) that answers 401 with its own challenge must not learn berth's
//! password, nor teach berth a token realm for the whole upstream; a token realm that
//! redirects is not followed with the credentials; `berth airgap push` keeps the pusher's
//! credentials on the destination registry's origin. Every secret is a canary that no
//! response, log line or foreign server may see.

#[path = "support/http.rs"]
mod http;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use support::berth::Berth;
use support::fake::{FakeResponse, FakeServer, Recorded};
use support::image::{push_image, read_oci_layout, skopeo_copy_to_oci, ImageSpec, TestImage};
use support::registry::{Registry, RegistryAuth};
use support::token::TokenRealm;

const LICENSE: &str = "LICENSE-redir-0001";
const HOST: &str = "registry.local";

fn canary() -> String {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    format!("CANARY-{}", support::hex(&b))
}

fn spec(seed: u64) -> ImageSpec {
    ImageSpec {
        layer_sizes: vec![30_000, 1000],
        seed,
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A third party: answers everything with a token, as a hostile realm would, and records
/// who came.
fn evil_server() -> FakeServer {
    FakeServer::start(|_: &Recorded| {
        FakeResponse::json(
            200,
            &serde_json::json!({"token": "evil-token", "access_token": "evil-token", "expires_in": 300}),
        )
    })
}

/// A CDN that refuses whatever comes: `/deny/401` with a challenge naming `evil`'s realm
/// (plain http, which an http upstream's own challenge could name, so only the origin rule
/// stops it), `/deny/403` likewise but 403.
fn cdn_server(evil: &FakeServer) -> FakeServer {
    let challenge = format!(
        "Bearer realm=\"{}/token\",service=\"evil\",scope=\"repository:acme/app:pull\"",
        evil.url()
    );
    FakeServer::start(move |req: &Recorded| {
        let status = match req.path() {
            "/deny/401" => 401,
            "/deny/403" => 403,
            _ => 404,
        };
        FakeResponse::json(status, &serde_json::json!({"errors": [{"code": "DENIED"}]}))
            .header("www-authenticate", &challenge)
            .header("www-authenticate", "Basic realm=\"cdn\"")
    })
}

/// A real docker-registry behind a token realm, with `acme/app:v1` and `acme/other:v1`,
/// and a front that sends what `redirect` picks to the CDN (`Some(path)`) and proxies the rest.
struct World {
    realm: TokenRealm,
    _reg: Registry,
    evil: FakeServer,
    cdn: FakeServer,
    front: FakeServer,
    app: TestImage,
    other: TestImage,
}

fn world(
    user: &str,
    password: &str,
    redirect: impl Fn(&Recorded, &TestImage) -> Option<&'static str> + Send + Sync + 'static,
) -> World {
    let realm = TokenRealm::start(user, password, 300);
    let reg = Registry::start(realm.registry_auth());
    let app = push_image(&reg, Some((user, password)), "acme/app", "v1", &spec(1));
    let other = push_image(&reg, Some((user, password)), "acme/other", "v1", &spec(2));
    let evil = evil_server();
    let cdn = cdn_server(&evil);
    let (origin, cdn_url, img) = (reg.url(), cdn.url(), app.clone());
    let front = FakeServer::start(move |req: &Recorded| match redirect(req, &img) {
        Some(path) => FakeResponse::redirect(307, &format!("{cdn_url}{path}?sig=x")),
        None => FakeResponse::proxy_to(&origin, req),
    });
    World {
        realm,
        _reg: reg,
        evil,
        cdn,
        front,
        app,
        other,
    }
}

/// Blob GETs of `acme/app`: its first layer to a CDN that answers 401, the second to one
/// that answers 403. Everything else reaches the registry.
fn app_blobs_to_cdn(req: &Recorded, app: &TestImage) -> Option<&'static str> {
    if req.method != "GET" || !req.path().starts_with("/v2/acme/app/blobs/") {
        return None;
    }
    if req.path().ends_with(&app.layers[0].0) {
        Some("/deny/401")
    } else if req.path().ends_with(&app.layers[1].0) {
        Some("/deny/403")
    } else {
        None
    }
}

fn start_berth(upstream: &str, env: &[(&str, &str)]) -> (Berth, tempfile::TempDir) {
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams:\n  - {upstream}\n\
         apps:\n  - {{ slug: acme, upstreams: [up] }}\n\
         licenses:\n  - {{ id: {LICENSE}, app: acme, customer: Test }}\n",
        cache.path().display()
    );
    (Berth::start_on(port, &yaml, env), cache)
}

fn license() -> String {
    basic(LICENSE, LICENSE)
}

fn get_blob(b: &Berth, host: &str, repo: &str, digest: &str) -> http::Resp {
    http::get(
        b.port,
        &format!("/v2/proxy/acme/{host}/{repo}/blobs/{digest}"),
        &[("Authorization", &license())],
    )
}

fn pull(b: &Berth, host: &str, img: &TestImage) {
    let dest = support::tempdir();
    let src = format!(
        "docker://127.0.0.1:{}/proxy/acme/{host}/{}:{}",
        b.port, img.repo, img.tag
    );
    let out = skopeo_copy_to_oci(
        &src,
        Some(&format!("{LICENSE}:{LICENSE}")),
        dest.path(),
        &["--preserve-digests"],
    );
    assert!(
        out.status.success(),
        "pull of {src} failed: {}{}\nberth log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        b.logs()
    );
    assert_eq!(
        read_oci_layout(dest.path()).manifest_digest,
        img.manifest_digest
    );
}

/// Nothing reached the third party, the CDN never saw an Authorization, and the secret is
/// in no log line.
fn assert_nothing_leaked(w: &World, b: &Berth, secret: &str) {
    assert_eq!(
        w.evil.requests().len(),
        0,
        "the CDN's realm was contacted: {:?}",
        w.evil.requests()
    );
    let leaked: Vec<_> = w
        .cdn
        .requests()
        .into_iter()
        .filter(|r| r.header("authorization").is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "Authorization sent to the CDN: {leaked:?}"
    );
    assert!(!b.logs().contains(secret), "the secret is in berth's log");
}

/// The answer berth gives for a request a redirect target refused: a prompt OCI error
/// naming the refusal, without the secret.
fn assert_refused(r: &http::Resp, cdn: &FakeServer, secret: &str) {
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.code(), "UNAVAILABLE");
    let text = r.text();
    assert!(
        text.contains(&format!("redirect target 127.0.0.1:{} refused", cdn.port)),
        "{text}"
    );
    assert!(!text.contains(secret));
}

/// Token requests that reached the upstream's real realm from berth, each with the
/// upstream's credentials.
fn assert_real_realm_used(w: &World, user: &str, password: &str) {
    let reqs: Vec<_> = w
        .realm
        .requests()
        .into_iter()
        .filter(|r| {
            r.header("user-agent")
                .is_some_and(|u| u.starts_with("berth/"))
        })
        .collect();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(basic(user, password).as_str())
        );
    }
    assert!(
        reqs.iter()
            .any(|r| r.query_all("scope") == ["repository:acme/other:pull"]),
        "no token for acme/other from the real realm: {reqs:?}"
    );
}

#[test]
fn a_cdn_challenge_gets_no_credentials_and_does_not_poison_the_upstream() {
    let pw = canary();
    let w = world("vendor", &pw, app_blobs_to_cdn);
    let up = format!(
        "{{ name: up, url: \"{}\", host: {HOST}, username: vendor, password: \"${{PW}}\" }}",
        w.front.url()
    );
    let (b, _cache) = start_berth(&up, &[("PW", &pw)]);

    let r401 = get_blob(&b, HOST, "acme/app", &w.app.layers[0].0);
    let r403 = get_blob(&b, HOST, "acme/app", &w.app.layers[1].0);
    assert_nothing_leaked(&w, &b, &pw);
    assert_refused(&r401, &w.cdn, &pw);
    assert_refused(&r403, &w.cdn, &pw);
    // Each refusal is one request to the CDN: no retry with other credentials.
    assert_eq!(w.cdn.request_count(), 2, "{:?}", w.cdn.requests());

    // Another repository of the same upstream still authenticates at the real realm.
    pull(&b, HOST, &w.other);
    assert_real_realm_used(&w, "vendor", &pw);
    assert_nothing_leaked(&w, &b, &pw);
}

#[test]
fn a_gcr_json_key_is_not_sent_to_a_cdn_challenge() {
    let secret = canary();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key": format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
        "client_email": "berth@acme-prod.iam.gserviceaccount.com",
    })
    .to_string();
    let w = world("_json_key", &key, app_blobs_to_cdn);
    let up = format!(
        "{{ name: up, kind: gcr, url: \"{}\", host: gcr.io, service_account_key: \"${{GCP_KEY}}\" }}",
        w.front.url()
    );
    let (b, _cache) = start_berth(&up, &[("GCP_KEY", &key)]);
    let r = get_blob(&b, "gcr.io", "acme/app", &w.app.layers[0].0);
    assert_nothing_leaked(&w, &b, &secret);
    assert_refused(&r, &w.cdn, &secret);
    pull(&b, "gcr.io", &w.other);
    assert_real_realm_used(&w, "_json_key", &key);
    assert_nothing_leaked(&w, &b, &secret);
}

#[test]
fn a_challenge_from_a_redirected_v2_teaches_neither_warm_up_nor_upstream_test() {
    let pw = canary();
    // The upstream's `/v2/` is redirected to the CDN: the start-up warm-up and
    // `berth upstream test` both ask it.
    let w = world("vendor", &pw, |req: &Recorded, _: &TestImage| {
        (req.path() == "/v2/").then_some("/deny/401")
    });
    let up = format!(
        "{{ name: up, url: \"{}\", host: {HOST}, username: vendor, password: \"${{PW}}\" }}",
        w.front.url()
    );
    let (b, _cache) = start_berth(&up, &[("PW", &pw)]);
    // The warm-up has had its answer from the CDN.
    assert!(support::wait_until(Duration::from_secs(10), || w
        .cdn
        .request_count()
        >= 1));
    pull(&b, HOST, &w.other);
    assert_nothing_leaked(&w, &b, &pw);
    assert_real_realm_used(&w, "vendor", &pw);
    assert!(
        support::wait_until(Duration::from_secs(10), || b
            .logs()
            .contains("upstream check at start failed")),
        "{}",
        b.logs()
    );
    assert!(b.logs().contains("refused"), "{}", b.logs());

    let r = support::berth::run_cli(
        &[
            "upstream",
            "test",
            "--config",
            b.config_path.to_str().unwrap(),
            "up",
            "--image",
            "acme/other:v1",
        ],
        &[("PW", &pw)],
        None,
        Duration::from_secs(30),
    );
    let out = r.stdout + &r.stderr;
    assert_eq!(r.code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "✗ auth: redirect target 127.0.0.1:{} refused",
            w.cdn.port
        )),
        "{out}"
    );
    assert!(!out.contains(&pw));
    assert_nothing_leaked(&w, &b, &pw);
}

#[test]
fn a_token_realm_that_redirects_is_not_followed_with_the_credentials() {
    let pw = canary();
    let evil = evil_server();
    let evil_url = evil.url();
    let realm = FakeServer::start(move |_: &Recorded| {
        FakeResponse::redirect(307, &format!("{evil_url}/token"))
    });
    let challenge = format!("Bearer realm=\"{}/token\",service=\"reg\"", realm.url());
    let upstream = FakeServer::start(move |_: &Recorded| {
        FakeResponse::json(
            401,
            &serde_json::json!({"errors": [{"code": "UNAUTHORIZED"}]}),
        )
        .header("www-authenticate", &challenge)
    });
    let up = format!(
        "{{ name: up, url: \"{}\", host: {HOST}, username: vendor, password: \"${{PW}}\" }}",
        upstream.url()
    );
    let (b, _cache) = start_berth(&up, &[("PW", &pw)]);
    let r = http::get(
        b.port,
        &format!("/v2/proxy/acme/{HOST}/acme/app/manifests/v1"),
        &[("Authorization", &license())],
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("307"), "{}", r.text());
    assert!(realm.request_count() >= 1);
    assert_eq!(evil.request_count(), 0, "{:?}", evil.requests());
    assert!(!b.logs().contains(&pw) && !r.text().contains(&pw));
}

// ---- airgap push ----------------------------------------------------------------------

/// Runs the real binary with `stdin`; returns (success, stdout + stderr).
fn berth_cli(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("wait berth");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A bundle of one small image, exported from an anonymous registry.
fn bundle(dir: &Path) -> (PathBuf, Registry) {
    let reg = Registry::start(RegistryAuth::None);
    push_image(&reg, None, "acme/app", "v1", &spec(3));
    let config = dir.join("export.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:{}\", hostname: h }}\n\
             cache: {{ dir: \"{}\" }}\n\
             upstreams:\n  - {{ name: up, url: \"{}\", host: {HOST} }}\n\
             apps:\n  - {{ slug: acme, upstreams: [up] }}\n\
             licenses:\n  - {{ id: {LICENSE}, app: acme, customer: Test }}\n",
            support::free_port(),
            dir.join("cache").display(),
            reg.url()
        ),
    )
    .unwrap();
    let out = dir.join("bundle.tar");
    let (ok, text) = berth_cli(
        &[
            "airgap",
            "export",
            "--config",
            config.to_str().unwrap(),
            "--app",
            "acme",
            "-o",
            out.to_str().unwrap(),
            &format!("{HOST}/acme/app:v1"),
        ],
        "",
    );
    assert!(ok, "export failed: {text}");
    (out, reg)
}

#[test]
fn airgap_push_keeps_credentials_on_the_destination_origin() {
    let pw = canary();
    let dir = support::tempdir();
    let (bundle, _source) = bundle(dir.path());
    let target = Registry::start(RegistryAuth::Htpasswd {
        user: "pusher".into(),
        password: pw.clone(),
    });
    let evil = evil_server();
    // An upload "location" on another origin that challenges, naming its own realm.
    let challenge = format!("Bearer realm=\"{}/token\",service=\"evil\"", evil.url());
    let elsewhere = FakeServer::start(move |_: &Recorded| {
        FakeResponse::new(401)
            .header("www-authenticate", &challenge)
            .header("www-authenticate", "Basic realm=\"elsewhere\"")
    });
    let (origin, elsewhere_url) = (target.url(), elsewhere.url());
    let front = FakeServer::start(move |req: &Recorded| {
        let mut resp = FakeResponse::proxy_to(&origin, req);
        if req.method == "POST" && req.path().ends_with("/blobs/uploads/") && resp.status == 202 {
            for (k, v) in resp.headers.iter_mut() {
                if k.eq_ignore_ascii_case("location") {
                    let path = v
                        .find("/v2/")
                        .map(|i| v[i..].to_string())
                        .unwrap_or_default();
                    *v = format!("{elsewhere_url}{path}");
                }
            }
        }
        resp
    });
    let to = format!("127.0.0.1:{}/mirror", front.port);
    let (ok, out) = berth_cli(
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
        &format!("{pw}\n"),
    );
    assert!(elsewhere.request_count() >= 1, "{out}");
    let leaked: Vec<_> = elsewhere
        .requests()
        .into_iter()
        .filter(|r| r.header("authorization").is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "credentials sent to another origin: {leaked:?}"
    );
    assert_eq!(evil.request_count(), 0, "{:?}", evil.requests());
    assert!(
        !ok,
        "the push succeeded through a refusing upload location: {out}"
    );
    assert!(
        out.contains(&format!("127.0.0.1:{} refused", elsewhere.port)),
        "{out}"
    );
    assert!(!out.contains(&pw));
    // The registry itself did get the credentials (the push went that far).
    assert!(front
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some(basic("pusher", &pw).as_str())));
}
