//! Integration tests of customer authentication: the Docker token flow (skopeo over TLS,
//! containerd's POST grant), berth's JWTs and their verification, license image globs,
//! revocation on reload, rate limits, the audit log and the pull-secret CLI.

#[path = "support/http.rs"]
mod http;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::digest::{Context, SHA256};
use serde_json::{json, Value};

use http::Resp;
use support::berth::Berth;
use support::image::{push_image, read_oci_layout, ImageSpec, TestImage, MANIFEST_MEDIA_TYPE};
use support::registry::{Registry, RegistryAuth};

const GOOD: &str = "LICENSE-good-0001";
const OTHER: &str = "LICENSE-other-0001";
const NARROW: &str = "LICENSE-narrow-0001";
const HOST: &str = "upstream.test";
const VENDOR: &str = "vendor";
const UPSTREAM_PASSWORD: &str = "upstream-secret-7c1f";
const MIB: u64 = 1 << 20;

// ---- fixtures -------------------------------------------------------------------------

fn basic(id: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{id}")))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Knobs of berth's config that the tests vary; everything else is fixed.
#[derive(Default)]
struct Cfg {
    /// `hostname:` (defaults to `127.0.0.1:PORT`).
    hostname: Option<String>,
    /// `server.tls` entries, YAML flow list items.
    tls: Vec<(PathBuf, PathBuf)>,
    /// Extra keys under `auth:` as a YAML flow mapping body, e.g. `audit_log: x`.
    auth: String,
    /// Overrides for the GOOD license line (YAML flow mapping body after `id`).
    good_extra: String,
    /// Extra keys for the NARROW license.
    narrow_extra: String,
}

fn config_yaml(port: u16, cache: &Path, upstream_url: &str, c: &Cfg) -> String {
    let hostname = c
        .hostname
        .clone()
        .unwrap_or_else(|| format!("127.0.0.1:{port}"));
    let mut y = format!("server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"{hostname}\"\n");
    if !c.tls.is_empty() {
        y.push_str("  tls:\n");
        for (cert, key) in &c.tls {
            y.push_str(&format!(
                "    - {{ cert: \"{}\", key: \"{}\" }}\n",
                cert.display(),
                key.display()
            ));
        }
    }
    y.push_str(&format!(
        "cache: {{ dir: \"{}\" }}\n\
         auth: {{ {} }}\n\
         upstreams:\n  - {{ name: up, url: \"{upstream_url}\", host: {HOST}, username: {VENDOR}, password: \"{UPSTREAM_PASSWORD}\" }}\n\
         apps:\n  - {{ slug: acme, upstreams: [up] }}\n  - {{ slug: other, upstreams: [up] }}\n\
         licenses:\n\
         \x20 - {{ id: {GOOD}, app: acme, customer: Big Bank{} }}\n\
         \x20 - {{ id: {OTHER}, app: other, customer: Other Corp }}\n\
         \x20 - {{ id: {NARROW}, app: acme, customer: Narrow Inc, images: [\"{HOST}/acme/api*\"]{} }}\n",
        cache.display(),
        c.auth,
        c.good_extra,
        c.narrow_extra,
    ));
    y
}

/// A real upstream registry with images pushed, and berth in front of it.
struct Fixture {
    reg: Registry,
    berth: Berth,
    cache: tempfile::TempDir,
    port: u16,
    api: TestImage,
}

impl Fixture {
    fn start(c: Cfg) -> Fixture {
        let reg = Registry::start(RegistryAuth::Htpasswd {
            user: VENDOR.into(),
            password: UPSTREAM_PASSWORD.into(),
        });
        let api = push(&reg, "acme/api", &[1000, 20_000]);
        let cache = support::tempdir();
        let port = support::free_port();
        let berth = Berth::start_on(port, &config_yaml(port, cache.path(), &reg.url(), &c), &[]);
        Fixture {
            reg,
            berth,
            cache,
            port,
            api,
        }
    }

    fn push(&self, repo: &str, layers: &[u64]) -> TestImage {
        push(&self.reg, repo, layers)
    }

    /// Rewrites berth's config file (same port, cache and upstream) with new knobs.
    fn rewrite_config(&self, c: &Cfg) {
        let yaml = config_yaml(self.port, self.cache.path(), &self.reg.url(), c);
        std::fs::write(&self.berth.config_path, yaml).expect("rewrite berth config");
    }

    fn key_file(&self) -> PathBuf {
        self.cache.path().join("token.key")
    }

    fn get(&self, path: &str, auth: Option<&str>) -> Resp {
        let mut h = vec![("Accept", MANIFEST_MEDIA_TYPE)];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        http::get(self.port, path, &h)
    }

    /// `GET /token` with the license as Basic; panics unless 200.
    fn token(&self, license: &str, scopes: &[&str]) -> (String, Value) {
        let r = self.token_request(license, scopes);
        assert_eq!(r.status, 200, "token for {scopes:?}: {}", r.text());
        let v = r.json();
        let t = v["token"].as_str().expect("token field").to_string();
        let claims = claims(&t);
        (t, claims)
    }

    fn token_request(&self, license: &str, scopes: &[&str]) -> Resp {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("service", &format!("127.0.0.1:{}", self.port));
        for s in scopes {
            q.append_pair("scope", s);
        }
        http::get(
            self.port,
            &format!("/token?{}", q.finish()),
            &[("Authorization", &basic(license))],
        )
    }
}

fn push(reg: &Registry, repo: &str, layers: &[u64]) -> TestImage {
    push_image(
        reg,
        Some((VENDOR, UPSTREAM_PASSWORD)),
        repo,
        "v1",
        &ImageSpec {
            layer_sizes: layers.to_vec(),
            seed: layers.iter().sum::<u64>() ^ repo.len() as u64,
        },
    )
}

fn repo_name(app: &str, repo: &str) -> String {
    format!("proxy/{app}/{HOST}/{repo}")
}

fn pull_scope(app: &str, repo: &str) -> String {
    format!("repository:{}:pull", repo_name(app, repo))
}

fn manifest_path(app: &str, repo: &str, reference: &str) -> String {
    format!("/v2/{}/manifests/{reference}", repo_name(app, repo))
}

/// The JSON payload of a JWT, without checking anything.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
        .expect("JSON payload")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The fingerprint berth puts in `sub`: sha256 of the license id, first 32 hex digits.
fn fingerprint(id: &str) -> String {
    support::sha256_hex(id.as_bytes())[..32].to_string()
}

/// Claims berth would issue for `license` and these repositories, valid for five minutes.
fn good_claims(port: u16, license: &str, names: &[String]) -> Value {
    let now = now_secs();
    json!({
        "iss": "berth",
        "sub": fingerprint(license),
        "aud": format!("127.0.0.1:{port}"),
        "exp": now + 300,
        "nbf": now - 1,
        "iat": now,
        "jti": "forged-by-test",
        "access": names.iter().map(|n| json!({"type": "repository", "name": n, "actions": ["pull"]})).collect::<Vec<_>>(),
    })
}

fn sign(claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .expect("sign JWT")
}

fn assert_status(r: &Resp, status: u16, code: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    if let Some(c) = code {
        assert_eq!(r.code(), c, "{what}: {}", r.text());
    }
}

/// Runs the berth CLI to completion (bounded), returning (exit code, stdout, stderr).
fn run_berth(args: &[&str]) -> (Option<i32>, String, String) {
    let r = support::berth::run_cli(args, &[], None, Duration::from_secs(10));
    (r.code, r.stdout, r.stderr)
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---- 1. a real client, TLS, login then pull with the stored credentials ----------------

/// A CA, and leaves signed by it for `names`; PEM files in `dir`.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        Certs {
            dir: support::tempdir(),
        }
    }

    fn ca(&self) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "berth test CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        // skopeo --cert-dir trusts every *.crt in the directory as a CA.
        std::fs::write(self.dir.path().join("ca.crt"), cert.pem()).unwrap();
        (cert, key)
    }

    fn leaf(
        &self,
        name: &str,
        sans: &[&str],
        ca: &(rcgen::Certificate, rcgen::KeyPair),
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, sans[0]);
        let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
        // Outside the cert dir: skopeo would take a `.key` there for a client certificate.
        let files = self.dir.path().join("server");
        std::fs::create_dir_all(&files).unwrap();
        let (c, k) = (
            files.join(format!("{name}.pem")),
            files.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// The directory holding only `ca.crt`, for `--cert-dir`.
    fn client_dir(&self) -> PathBuf {
        let d = self.dir.path().join("client");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.dir.path().join("ca.crt"), d.join("ca.crt")).unwrap();
        d
    }
}

#[test]
fn skopeo_login_then_copy_over_tls_uses_berth_tokens() {
    let certs = Certs::new();
    let ca = certs.ca();
    // The first certificate is for another name: berth must pick the second one by SNI,
    // or skopeo rejects the handshake.
    let decoy = certs.leaf("decoy", &["decoy.invalid"], &ca);
    let real = certs.leaf("localhost", &["localhost", "127.0.0.1"], &ca);
    let port = support::free_port();
    let hostname = format!("localhost:{port}");
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: UPSTREAM_PASSWORD.into(),
    });
    let img = push(&reg, "acme/api", &[3 * MIB, 1000]);
    let cache = support::tempdir();
    let c = Cfg {
        hostname: Some(hostname.clone()),
        tls: vec![decoy, real],
        ..Cfg::default()
    };
    let berth = Berth::start_on(port, &config_yaml(port, cache.path(), &reg.url(), &c), &[]);
    let cert_dir = certs.client_dir();
    let home = support::tempdir();
    let authfile = home.path().join("auth.json");

    let login = |password: &str| {
        Command::new("skopeo")
            .args(["login", "--tls-verify=true", "--cert-dir"])
            .arg(&cert_dir)
            .arg("--authfile")
            .arg(&authfile)
            .args(["-u", GOOD, "-p", password, &hostname])
            .env("REGISTRY_AUTH_FILE", &authfile)
            .output()
            .expect("run skopeo login")
    };
    let bad = login("not-the-license");
    assert!(
        !bad.status.success(),
        "login with a wrong password succeeded: {}",
        output_text(&bad)
    );
    let ok = login(GOOD);
    assert!(
        ok.status.success(),
        "skopeo login failed: {}\nberth log:\n{}",
        output_text(&ok),
        berth.logs()
    );
    let stored: Value = serde_json::from_slice(&std::fs::read(&authfile).unwrap()).unwrap();
    assert!(
        stored["auths"][&hostname]["auth"].is_string(),
        "login stored nothing for {hostname}: {stored}"
    );

    let dest = support::tempdir();
    let copy = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--preserve-digests"])
        .args(["--src-tls-verify=true", "--src-cert-dir"])
        .arg(&cert_dir)
        .arg("--src-authfile")
        .arg(&authfile)
        .env("REGISTRY_AUTH_FILE", &authfile)
        .arg(format!("docker://{hostname}/proxy/acme/{HOST}/acme/api:v1"))
        .arg(format!("oci:{}", dest.path().display()))
        .output()
        .expect("run skopeo copy");
    assert!(
        copy.status.success(),
        "skopeo copy without --creds failed: {}\nberth log:\n{}",
        output_text(&copy),
        berth.logs()
    );
    let got = read_oci_layout(dest.path());
    assert_eq!(got.manifest_digest, img.manifest_digest);
    let mut want: Vec<String> = img.layers.iter().map(|(d, _)| d.clone()).collect();
    want.push(img.config_digest.clone());
    want.push(img.manifest_digest.clone());
    want.sort();
    assert_eq!(got.blob_digests, want);

    // The pull went through the token endpoint: berth logged issued tokens, and the
    // registry requests it served were authenticated (logged with the license).
    let logs = berth.logs();
    let token_lines = logs
        .lines()
        .filter(|l| l.contains("path=/token") && l.contains("status=200"))
        .count();
    assert!(token_lines >= 2, "expected /token requests:\n{logs}");
    assert!(
        logs.lines().any(|l| l.contains("/manifests/v1")
            && l.contains("status=200")
            && l.contains(&format!("license=\"{}\"", fingerprint(GOOD)))),
        "no authenticated manifest GET in:\n{logs}"
    );
}

// ---- 2. the challenge, the token endpoint, containerd's POST grant --------------------

#[test]
fn challenge_and_token_endpoint_get_and_post() {
    let f = Fixture::start(Cfg::default());
    let host = format!("127.0.0.1:{}", f.port);
    let realm = format!("http://{host}/token");

    // The challenges point at the token endpoint with the right service and scope.
    let r = f.get("/v2/", None);
    assert_status(&r, 401, Some("UNAUTHORIZED"), "/v2/ without auth");
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer realm=\"{realm}\",service=\"{host}\"").as_str())
    );
    let r = f.get(&manifest_path("acme", "acme/api", "v1"), None);
    assert_status(&r, 401, Some("UNAUTHORIZED"), "manifest without auth");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{realm}\",service=\"{host}\",scope=\"{}\"",
                pull_scope("acme", "acme/api")
            )
            .as_str()
        )
    );

    // GET /token with Basic.
    let scope = pull_scope("acme", "acme/api");
    let r = f.token_request(GOOD, &[&scope]);
    assert_status(&r, 200, None, "GET /token");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["token"], v["access_token"], "{v}");
    assert_eq!(v["expires_in"], json!(300), "{v}");
    let issued = v["issued_at"].as_str().expect("issued_at");
    assert!(
        humantime::parse_rfc3339(issued).is_ok(),
        "issued_at {issued:?} is not RFC 3339"
    );
    let get_token = v["token"].as_str().unwrap().to_string();
    let c = claims(&get_token);
    assert_eq!(c["iss"], "berth");
    assert_eq!(c["aud"], json!(host));
    assert_eq!(c["sub"], json!(fingerprint(GOOD)));
    assert!(
        !get_token.contains(GOOD) && !c.to_string().contains(GOOD),
        "the license id is in the token: {c}"
    );
    let m = f.get(
        &manifest_path("acme", "acme/api", "v1"),
        Some(&bearer(&get_token)),
    );
    assert_status(&m, 200, None, "manifest with the GET token");
    assert_eq!(
        m.header("docker-content-digest"),
        Some(f.api.manifest_digest.as_str())
    );

    // containerd: POST with the OAuth2 password grant.
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "password")
        .append_pair("username", GOOD)
        .append_pair("password", GOOD)
        .append_pair("service", &host)
        .append_pair("client_id", "containerd-client")
        .append_pair("scope", &scope)
        .finish();
    let post = |body: &str| {
        http::request(
            f.port,
            "POST",
            "/token",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
        )
    };
    let r = post(&form);
    assert_status(&r, 200, None, "POST /token password grant");
    let v = r.json();
    let post_token = v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    assert_eq!(v["token"].as_str(), Some(post_token.as_str()));
    assert_eq!(
        claims(&post_token)["access"],
        json!([{"type": "repository", "name": repo_name("acme", "acme/api"), "actions": ["pull"]}])
    );
    let m = f.get(
        &manifest_path("acme", "acme/api", "v1"),
        Some(&bearer(&post_token)),
    );
    assert_status(&m, 200, None, "manifest with the POST token");
    assert_eq!(
        m.header("docker-content-digest"),
        Some(f.api.manifest_digest.as_str())
    );

    // No refresh tokens, and a wrong password is a 401.
    let r = post(&format!(
        "grant_type=refresh_token&refresh_token=x&service={host}&client_id=c&scope={scope}"
    ));
    assert!(
        (400..500).contains(&r.status),
        "refresh_token grant: {} {}",
        r.status,
        r.text()
    );
    assert!(
        r.json().get("token").is_none(),
        "refresh grant gave a token"
    );
    let r = post(&form.replace(&format!("password={GOOD}"), "password=wrong-password"));
    assert_status(&r, 401, Some("UNAUTHORIZED"), "POST /token wrong password");

    // GET /token without Basic, or with an unknown license.
    let r = http::get(f.port, &format!("/token?service={host}&scope={scope}"), &[]);
    assert_status(&r, 401, Some("UNAUTHORIZED"), "GET /token without Basic");
    let r = f.token_request("LICENSE-nobody-0001", &[&scope]);
    assert_status(&r, 401, Some("UNAUTHORIZED"), "GET /token unknown license");

    // An empty scope (docker login) still gets a token, good for /v2/ only.
    let (t, c) = f.token(GOOD, &[]);
    assert_eq!(c["access"], json!([]), "{c}");
    assert_status(&f.get("/v2/", Some(&bearer(&t))), 200, None, "/v2/ token");
    assert_status(
        &f.get(&manifest_path("acme", "acme/api", "v1"), Some(&bearer(&t))),
        401,
        Some("UNAUTHORIZED"),
        "manifest with a scope-less token",
    );

    // Basic keeps working on registry endpoints.
    let m = f.get(&manifest_path("acme", "acme/api", "v1"), Some(&basic(GOOD)));
    assert_status(&m, 200, None, "manifest with Basic");
}

// ---- 3. token verification and scope escalation ---------------------------------------

/// Control for the forgery tests below: a token the test signs with the key file is
/// accepted, so their 401s come from the one thing each of them changes.
#[test]
fn token_signed_with_the_key_file_is_accepted() {
    let f = Fixture::start(Cfg::default());
    let key = std::fs::read(f.key_file()).expect("read token key");
    let t = sign(
        &good_claims(f.port, GOOD, &[repo_name("acme", "acme/api")]),
        &key,
    );
    let r = f.get(&manifest_path("acme", "acme/api", "v1"), Some(&bearer(&t)));
    assert_status(&r, 200, None, "forged good token");
}

#[test]
fn expired_token_is_refused() {
    let f = Fixture::start(Cfg::default());
    let key = std::fs::read(f.key_file()).unwrap();
    let mut c = good_claims(f.port, GOOD, &[repo_name("acme", "acme/api")]);
    // Past berth's 5 s leeway.
    c["exp"] = json!(now_secs() - 60);
    c["iat"] = json!(now_secs() - 400);
    c["nbf"] = json!(now_secs() - 400);
    let r = f.get(
        &manifest_path("acme", "acme/api", "v1"),
        Some(&bearer(&sign(&c, &key))),
    );
    assert_status(&r, 401, Some("UNAUTHORIZED"), "expired token");
    assert!(r.header("www-authenticate").is_some());
}

#[test]
fn token_signed_with_another_key_is_refused() {
    let f = Fixture::start(Cfg::default());
    let mut key = std::fs::read(f.key_file()).unwrap();
    key[0] ^= 1;
    let t = sign(
        &good_claims(f.port, GOOD, &[repo_name("acme", "acme/api")]),
        &key,
    );
    let r = f.get(&manifest_path("acme", "acme/api", "v1"), Some(&bearer(&t)));
    assert_status(&r, 401, Some("UNAUTHORIZED"), "token with a wrong key");
}

#[test]
fn alg_none_token_is_refused() {
    let f = Fixture::start(Cfg::default());
    let c = good_claims(f.port, GOOD, &[repo_name("acme", "acme/api")]);
    let path = manifest_path("acme", "acme/api", "v1");
    for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#] {
        let t = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(c.to_string())
        );
        let r = f.get(&path, Some(&bearer(&t)));
        assert_status(&r, 401, Some("UNAUTHORIZED"), header);
    }
    // A real token's payload swapped into an unsigned one: no better.
    let (real, _) = f.token(GOOD, &[&pull_scope("acme", "acme/api")]);
    let payload = real.split('.').nth(1).unwrap();
    let t = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
    assert_status(
        &f.get(&path, Some(&bearer(&t))),
        401,
        Some("UNAUTHORIZED"),
        "alg none with a real payload",
    );
}

#[test]
fn token_for_another_repository_is_refused() {
    let f = Fixture::start(Cfg::default());
    f.push("acme/other", &[500]);
    let (t, c) = f.token(GOOD, &[&pull_scope("acme", "acme/api")]);
    assert_eq!(
        c["access"],
        json!([{"type": "repository", "name": repo_name("acme", "acme/api"), "actions": ["pull"]}])
    );
    assert_status(
        &f.get(&manifest_path("acme", "acme/api", "v1"), Some(&bearer(&t))),
        200,
        None,
        "the token's own repository",
    );
    assert_status(
        &f.get(
            &manifest_path("acme", "acme/other", "v1"),
            Some(&bearer(&t)),
        ),
        401,
        Some("UNAUTHORIZED"),
        "another repository of the same app",
    );
    // The license itself may pull it: only the token's scope stood in the way.
    assert_status(
        &f.get(
            &manifest_path("acme", "acme/other", "v1"),
            Some(&basic(GOOD)),
        ),
        200,
        None,
        "same repository with Basic",
    );
}

/// Asking for push along with pull is answered with pull only.
#[test]
fn scope_push_is_not_granted() {
    let f = Fixture::start(Cfg::default());
    let name = repo_name("acme", "acme/api");
    let (t, c) = f.token(GOOD, &[&format!("repository:{name}:pull,push")]);
    assert_eq!(
        c["access"],
        json!([{"type": "repository", "name": name, "actions": ["pull"]}])
    );
    let (only_push, c) = f.token(GOOD, &[&format!("repository:{name}:push")]);
    assert_eq!(c["access"], json!([]), "push alone granted something: {c}");
    assert_status(
        &f.get(&manifest_path("acme", "acme/api", "v1"), Some(&bearer(&t))),
        200,
        None,
        "pull with the pull,push token",
    );
    assert_status(
        &f.get(
            &manifest_path("acme", "acme/api", "v1"),
            Some(&bearer(&only_push)),
        ),
        401,
        Some("UNAUTHORIZED"),
        "pull with the push-only token",
    );
    // And the pull token does not open pushes.
    let r = http::request(
        f.port,
        "POST",
        &format!("/v2/{name}/blobs/uploads/"),
        &[("Authorization", &bearer(&t))],
        b"",
    );
    assert!(
        r.status == 405 || r.status == 401 || r.status == 403,
        "upload with a pull token: {} {}",
        r.status,
        r.text()
    );
}

#[test]
fn scope_for_another_apps_repository_is_not_granted() {
    let f = Fixture::start(Cfg::default());
    let other = repo_name("other", "acme/api");
    let (t, c) = f.token(GOOD, &[&format!("repository:{other}:pull")]);
    assert_eq!(c["access"], json!([]), "{c}");
    let r = f.get(&manifest_path("other", "acme/api", "v1"), Some(&bearer(&t)));
    assert!(
        r.status == 401 || r.status == 403,
        "another app's image with an empty token: {} {}",
        r.status,
        r.text()
    );
    // The other app's own license gets it, so the refusal above is about GOOD.
    let (t, c) = f.token(OTHER, &[&format!("repository:{other}:pull")]);
    assert_eq!(c["access"][0]["name"], json!(other), "{c}");
    assert_status(
        &f.get(&manifest_path("other", "acme/api", "v1"), Some(&bearer(&t))),
        200,
        None,
        "OTHER's token on its app",
    );
}

/// `*` as the actions (all of them) must never yield more than pull.
#[test]
fn scope_wildcard_actions_grant_at_most_pull() {
    let f = Fixture::start(Cfg::default());
    let name = repo_name("acme", "acme/api");
    let (t, c) = f.token(GOOD, &[&format!("repository:{name}:*")]);
    let access = c["access"].as_array().expect("access list").clone();
    for a in &access {
        assert_eq!(a["name"], json!(name), "{c}");
        assert_eq!(a["actions"], json!(["pull"]), "{c}");
    }
    // Whatever was granted, berth honours exactly that.
    let want = if access.is_empty() { 401 } else { 200 };
    assert_status(
        &f.get(&manifest_path("acme", "acme/api", "v1"), Some(&bearer(&t))),
        want,
        None,
        &format!("pull with the `*` token (access {access:?})"),
    );
    // A name wildcard is not a repository.
    let (_, c) = f.token(GOOD, &["repository:*:*", "repository:proxy/acme/*:pull"]);
    assert_eq!(c["access"], json!([]), "{c}");
}

/// A catalog token grants no repository, and the catalog (of hosted repositories, by the
/// caller's own entitlement) never lists proxied content.
#[test]
fn scope_registry_catalog_grants_no_repository_and_lists_no_proxied_content() {
    let f = Fixture::start(Cfg::default());
    let (t, c) = f.token(GOOD, &["registry:catalog:*"]);
    assert_eq!(c["access"], json!([]), "{c}");
    // The license has pulled a proxied image: it is still not in the catalog.
    let _ = f.get(&manifest_path("acme", "acme/api", "v1"), Some(&basic(GOOD)));
    let r = f.get("/v2/_catalog", Some(&bearer(&t)));
    assert_eq!(r.status, 200, "catalog with a catalog token: {}", r.text());
    assert_eq!(r.json()["repositories"], json!([]), "{}", r.text());
    // Nor does the token open a repository.
    assert_status(
        &f.get(&manifest_path("acme", "acme/api", "v1"), Some(&bearer(&t))),
        401,
        None,
        "a pull with a catalog token",
    );
}

// ---- 4. licenses[].images narrows the app ---------------------------------------------

#[test]
fn license_image_globs_narrow_the_app() {
    let f = Fixture::start(Cfg::default());
    f.push("acme/other", &[700]);
    let api = manifest_path("acme", "acme/api", "v1");
    let other = manifest_path("acme", "acme/other", "v1");
    assert_status(&f.get(&api, Some(&basic(NARROW))), 200, None, "api, Basic");
    assert_status(
        &f.get(&other, Some(&basic(NARROW))),
        403,
        Some("DENIED"),
        "other, Basic",
    );
    // The app-wide license sees both, so the 403 is the glob's doing.
    assert_status(&f.get(&other, Some(&basic(GOOD))), 200, None, "other, GOOD");

    let (t, c) = f.token(
        NARROW,
        &[
            &pull_scope("acme", "acme/api"),
            &pull_scope("acme", "acme/other"),
        ],
    );
    assert_eq!(
        c["access"],
        json!([{"type": "repository", "name": repo_name("acme", "acme/api"), "actions": ["pull"]}])
    );
    assert_status(&f.get(&api, Some(&bearer(&t))), 200, None, "api, token");
    let r = f.get(&other, Some(&bearer(&t)));
    assert!(
        r.status == 401 || r.status == 403,
        "other with NARROW's token: {} {}",
        r.status,
        r.text()
    );

    // A real client with --creds (Basic, then berth's token flow) gets the allowed image.
    let dest = support::tempdir();
    let out = support::image::skopeo_copy_to_oci(
        &format!(
            "docker://127.0.0.1:{}/proxy/acme/{HOST}/acme/api:v1",
            f.port
        ),
        Some(&format!("{NARROW}:{NARROW}")),
        dest.path(),
        &["--preserve-digests"],
    );
    assert!(out.status.success(), "skopeo: {}", output_text(&out));
    assert_eq!(
        read_oci_layout(dest.path()).manifest_digest,
        f.api.manifest_digest
    );
    let dest = support::tempdir();
    let out = support::image::skopeo_copy_to_oci(
        &format!(
            "docker://127.0.0.1:{}/proxy/acme/{HOST}/acme/other:v1",
            f.port
        ),
        Some(&format!("{NARROW}:{NARROW}")),
        dest.path(),
        &["--preserve-digests"],
    );
    assert!(
        !out.status.success(),
        "skopeo pulled an image outside the license's globs"
    );
}

// ---- 5. revocation on reload ----------------------------------------------------------

/// Starts a blob GET and reads only its head and the first `first` body bytes.
fn start_slow_blob(port: u16, path: &str, auth: &str, first: usize) -> (TcpStream, Context, u64) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(http::TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut hash = Context::new(&SHA256);
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).expect("read blob head");
        assert!(n > 0, "connection closed before the body");
        head.extend_from_slice(&buf[..n]);
        if let Some((status, _, split)) = http::parse_head(&head) {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&head));
            hash.update(&head[split..]);
            got += (head.len() - split) as u64;
            break;
        }
    }
    while got < first as u64 {
        let n = s.read(&mut buf).expect("read blob start");
        assert!(n > 0, "blob ended early");
        hash.update(&buf[..n]);
        got += n as u64;
    }
    (s, hash, got)
}

fn finish_blob(mut s: TcpStream, mut hash: Context, mut got: u64) -> (String, u64) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s.read(&mut buf).expect("read rest of blob");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        got += n as u64;
    }
    (
        format!("sha256:{}", support::hex(hash.finish().as_ref())),
        got,
    )
}

#[test]
fn revoked_license_token_stops_working_but_pull_in_flight_completes() {
    let f = Fixture::start(Cfg::default());
    let big = f.push("acme/big", &[96 * MIB]);
    let (digest, size) = big.layers[0].clone();
    let (t, _) = f.token(GOOD, &[&pull_scope("acme", "acme/big")]);
    let auth = bearer(&t);
    let manifest = manifest_path("acme", "acme/big", "v1");
    assert_status(
        &f.get(&manifest, Some(&auth)),
        200,
        None,
        "before revocation",
    );

    // A pull in flight: far more than socket buffers hold is still unread.
    let blob = format!("/v2/{}/blobs/{digest}", repo_name("acme", "acme/big"));
    let (s, hash, got) = start_slow_blob(f.port, &blob, &auth, MIB as usize);

    f.rewrite_config(&Cfg {
        good_extra: ", revoked: true".into(),
        ..Cfg::default()
    });
    f.berth.sighup();
    let mut last = 0;
    let revoked = support::wait_until(Duration::from_secs(10), || {
        last = f.get(&manifest, Some(&auth)).status;
        last == 401
    });
    assert!(
        revoked,
        "token still answered {last} 10 s after revocation; log:\n{}",
        f.berth.logs()
    );
    assert_status(
        &f.get(&manifest, Some(&basic(GOOD))),
        401,
        Some("UNAUTHORIZED"),
        "Basic after revocation",
    );
    assert_eq!(
        f.token_request(GOOD, &[&pull_scope("acme", "acme/big")])
            .status,
        401,
        "a revoked license got a new token"
    );

    let (got_digest, total) = finish_blob(s, hash, got);
    assert_eq!(total, size, "the pull in flight was cut");
    assert_eq!(got_digest, digest);
}

/// Without a signal: berth notices the edited file by itself (it polls every 2 s).
#[test]
fn config_edit_without_signal_is_picked_up() {
    let f = Fixture::start(Cfg::default());
    let (t, _) = f.token(GOOD, &[&pull_scope("acme", "acme/api")]);
    let manifest = manifest_path("acme", "acme/api", "v1");
    assert_status(&f.get(&manifest, Some(&bearer(&t))), 200, None, "before");
    f.rewrite_config(&Cfg {
        good_extra: ", revoked: true".into(),
        ..Cfg::default()
    });
    let start = Instant::now();
    let revoked = support::wait_until(Duration::from_secs(10), || {
        f.get(&manifest, Some(&bearer(&t))).status == 401
    });
    assert!(revoked, "no reload within 10 s; log:\n{}", f.berth.logs());
    eprintln!("reload noticed after {:?}", start.elapsed());
    // And back: un-revoking restores the same token (nothing was cached as refused).
    f.rewrite_config(&Cfg::default());
    let back = support::wait_until(Duration::from_secs(10), || {
        f.get(&manifest, Some(&bearer(&t))).status == 200
    });
    assert!(back, "un-revocation not picked up within 10 s");
}

// ---- 6. audit log ---------------------------------------------------------------------

#[test]
fn audit_log_records_manifest_pulls_and_cli_reads_them() {
    let audit = support::tempdir();
    let log = audit.path().join("audit.log");
    let f = Fixture::start(Cfg {
        auth: format!("audit_log: \"{}\"", log.display()),
        ..Cfg::default()
    });
    let g = basic(GOOD);
    let o = basic(OTHER);
    let get_ua = |path: &str, auth: &str, ua: &str| {
        http::get(
            f.port,
            path,
            &[
                ("Accept", MANIFEST_MEDIA_TYPE),
                ("User-Agent", ua),
                ("Authorization", auth),
            ],
        )
    };
    let r = get_ua(
        &manifest_path("acme", "acme/api", "v1"),
        &g,
        "audit-test/1.0",
    );
    assert_status(&r, 200, None, "GOOD by tag");
    let digest = f.api.manifest_digest.clone();
    let r = get_ua(
        &manifest_path("acme", "acme/api", &digest),
        &g,
        "audit-test/2.0",
    );
    assert_status(&r, 200, None, "GOOD by digest");
    let r = get_ua(
        &manifest_path("other", "acme/api", "v1"),
        &o,
        "other-client",
    );
    assert_status(&r, 200, None, "OTHER by tag");
    // Not pulls: a HEAD, a refused request, a blob.
    let r = http::request(
        f.port,
        "HEAD",
        &manifest_path("acme", "acme/api", "v1"),
        &[("Authorization", g.as_str()), ("User-Agent", "head")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        f.get(&manifest_path("acme", "acme/api", "v1"), None).status,
        401
    );
    let r = f.get(
        &format!(
            "/v2/{}/blobs/{}",
            repo_name("acme", "acme/api"),
            f.api.config_digest
        ),
        Some(&g),
    );
    assert_eq!(r.status, 200);

    let text = std::fs::read_to_string(&log).expect("audit log written");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let l = &lines[0];
    assert_eq!(l["fingerprint"], fingerprint(GOOD));
    assert!(l.get("license").is_none(), "{l}");
    assert_eq!(l["customer"], "Big Bank");
    assert_eq!(l["app"], "acme");
    assert_eq!(l["image"], format!("{HOST}/acme/api"));
    assert_eq!(l["reference"], "v1");
    assert_eq!(l["digest"], json!(digest));
    assert_eq!(l["user_agent"], "audit-test/1.0");
    assert!(
        l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{l}"
    );
    assert!(
        humantime::parse_rfc3339(l["time"].as_str().unwrap()).is_ok(),
        "{l}"
    );
    assert_eq!(lines[1]["reference"], json!(digest));
    assert_eq!(lines[2]["fingerprint"], fingerprint(OTHER));
    assert_eq!(lines[2]["app"], "other");

    let cfg = f.berth.config_path.to_str().unwrap();
    let json_lines = |args: &[&str]| -> Vec<Value> {
        let mut a = vec!["audit", "--config", cfg, "--json"];
        a.extend_from_slice(args);
        let (code, out, err) = run_berth(&a);
        assert_eq!(code, Some(0), "berth audit {args:?}: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mine = json_lines(&["--license", GOOD]);
    assert_eq!(mine.len(), 2);
    assert!(mine.iter().all(|r| r["fingerprint"] == fingerprint(GOOD)));
    // The fingerprint selects the same records as the id.
    assert_eq!(json_lines(&["--license", &fingerprint(GOOD)]), mine);
    assert_eq!(mine[0], lines[0], "the CLI changed the record");
    let v1 = json_lines(&["--image", &format!("{HOST}/acme/api:v1")]);
    assert_eq!(
        v1.iter()
            .map(|r| r["fingerprint"].clone())
            .collect::<Vec<_>>(),
        vec![json!(fingerprint(GOOD)), json!(fingerprint(OTHER))]
    );
    assert_eq!(
        json_lines(&["--image", &format!("{HOST}/acme/api")]).len(),
        3
    );
    assert!(json_lines(&["--image", &format!("{HOST}/acme/nothing")]).is_empty());
    assert_eq!(
        json_lines(&[
            "--license",
            OTHER,
            "--image",
            &format!("{HOST}/acme/api:v1")
        ])
        .len(),
        1
    );
    // The human format names customer and image.
    let (code, out, _) = run_berth(&["audit", "--config", cfg, "--license", OTHER]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("Other Corp") && out.contains(&format!("{HOST}/acme/api:v1")),
        "{out}"
    );
}

/// License ids are customers' passwords: no access-log line, audit record or `berth audit`
/// output may carry one, whether the pull came with Basic or a token, succeeded or failed.
/// Lines name the license's fingerprint and customer instead, and the audit file is 0600
/// (also when an older berth had left it 0644).
#[test]
fn license_ids_never_reach_logs_audit_or_cli() {
    use std::os::unix::fs::PermissionsExt;
    let audit = support::tempdir();
    let log = audit.path().join("audit.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = Fixture::start(Cfg {
        auth: format!("audit_log: \"{}\"", log.display()),
        ..Cfg::default()
    });
    let manifest = manifest_path("acme", "acme/api", "v1");
    let g = basic(GOOD);
    // Basic: a pull, a pull of another app (denied), a wrong password.
    assert_status(&f.get(&manifest, Some(&g)), 200, None, "Basic pull");
    assert_status(
        &f.get(&manifest_path("other", "acme/api", "v1"), Some(&g)),
        403,
        Some("DENIED"),
        "Basic, other app",
    );
    let wrong = format!("Basic {}", STANDARD.encode(format!("{GOOD}:nope")));
    assert_status(&f.get(&manifest, Some(&wrong)), 401, None, "wrong password");
    // Tokens: GET with Basic, POST password grant, then pulls with both.
    let (t, _) = f.token(GOOD, &[&pull_scope("acme", "acme/api")]);
    assert_status(
        &f.get(&manifest, Some(&bearer(&t))),
        200,
        None,
        "token pull",
    );
    let form = format!(
        "grant_type=password&service=127.0.0.1:{}&client_id=test&username={GOOD}&password={GOOD}&scope={}",
        f.port,
        pull_scope("acme", "acme/api")
    );
    let r = http::request(
        f.port,
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_status(&r, 200, None, "password grant");
    let t2 = r.json()["access_token"].as_str().unwrap().to_string();
    assert_status(
        &f.get(&manifest, Some(&bearer(&t2))),
        200,
        None,
        "token 2 pull",
    );
    assert_status(
        &f.get(&manifest_path("acme", "acme/web", "v1"), Some(&bearer(&t2))),
        401,
        None,
        "token for another repository",
    );
    assert_status(
        &f.token_request(OTHER, &["repository:proxy/acme/x/y:pull"]),
        200,
        None,
        "OTHER token",
    );
    let cfg = f.berth.config_path.to_str().unwrap();
    let mut cli = String::new();
    for args in [
        vec!["audit", "--config", cfg],
        vec!["audit", "--config", cfg, "--json"],
        vec!["audit", "--config", cfg, "--license", GOOD],
        vec!["audit", "--config", cfg, "--license", GOOD, "--json"],
    ] {
        let (code, out, err) = run_berth(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        cli.push_str(&out);
        cli.push_str(&err);
    }
    // Access-log lines are written when a body ends; give the last ones a moment.
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            f.berth.logs().matches("status=").count() >= 9
        }),
        "{}",
        f.berth.logs()
    );
    let logs = f.berth.logs();
    let audit_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(audit_text.lines().count(), 3, "{audit_text}");
    for (what, text) in [("log", &logs), ("audit file", &audit_text), ("CLI", &cli)] {
        for id in [GOOD, OTHER] {
            assert!(!text.contains(id), "{what} names license id {id}:\n{text}");
        }
    }
    // What they name instead.
    let fp = fingerprint(GOOD);
    assert!(
        logs.lines()
            .any(|l| l.contains("status=200") && l.contains(&fp) && l.contains("Big Bank")),
        "{logs}"
    );
    assert!(cli.contains(&fp) && cli.contains("Big Bank"), "{cli}");
    assert_eq!(
        cli.lines().filter(|l| l.contains(&fp)).count(),
        3 * 4,
        "{cli}"
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "audit log mode {mode:o}");
}

// ---- 7. rate limits -------------------------------------------------------------------

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let f = Fixture::start(Cfg {
        auth: "rate_limit: { per_second: 2, burst: 3 }".into(),
        narrow_extra: ", rate_limit: { per_second: 1, burst: 1 }".into(),
        ..Cfg::default()
    });
    let g = basic(GOOD);
    let statuses: Vec<Resp> = (0..4).map(|_| f.get("/v2/", Some(&g))).collect();
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [200, 200, 200, 429], "burst of 3 then refused");
    let r = &statuses[3];
    assert_eq!(r.code(), "TOOMANYREQUESTS");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");

    // Limits are per license: OTHER has its own bucket.
    assert_status(&f.get("/v2/", Some(&basic(OTHER))), 200, None, "OTHER");
    // A license's own limit overrides the default (burst 1 instead of 3).
    let n = basic(NARROW);
    assert_status(&f.get("/v2/", Some(&n)), 200, None, "NARROW 1st");
    assert_status(
        &f.get("/v2/", Some(&n)),
        429,
        Some("TOOMANYREQUESTS"),
        "NARROW 2nd",
    );

    // After waiting as told, GOOD is served again.
    std::thread::sleep(Duration::from_secs(retry));
    assert_status(&f.get("/v2/", Some(&g)), 200, None, "after Retry-After");
}

/// Guessing license ids is throttled per source: after 10 failures, /v2/ Basic, GET /token
/// and the password grant answer 429 with Retry-After without looking at the credentials,
/// with one log line for the source however many attempts follow. A license that logged in
/// from the same address before keeps working; a new one waits at most Retry-After.
#[test]
fn failed_logins_are_throttled_per_source_with_retry_after() {
    let f = Fixture::start(Cfg::default());
    // GOOD logs in once before anyone guesses.
    f.token(GOOD, &[]);
    let started = Instant::now();
    let guesses = 300;
    let mut statuses = Vec::new();
    for n in 0..guesses {
        let id = format!("GUESS-{n:06}");
        statuses.push(f.get("/v2/", Some(&basic(&id))).status);
    }
    let secs = started.elapsed().as_secs_f64();
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    let throttled = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!("MEASURE {guesses} guesses in {secs:.2}s: {checked} checked, {throttled} throttled");
    assert_eq!(checked + throttled, guesses, "{statuses:?}");
    assert_eq!(
        &statuses[..10],
        &[401; 10],
        "the first 10 failures are plain 401s"
    );
    // One more guess per second after the burst, whatever the machine's speed.
    assert!(
        checked <= 10 + secs.ceil() as usize + 1,
        "{checked} guesses checked in {secs:.2}s"
    );
    let r = f.get("/v2/", Some(&basic("GUESS-last-1")));
    assert_status(&r, 429, Some("TOOMANYREQUESTS"), "throttled /v2/");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert_eq!(retry, 1, "one failure's worth of wait");
    // The token endpoint, both ways, is the same door.
    assert_status(
        &f.token_request("GUESS-token-1", &[]),
        429,
        None,
        "GET /token",
    );
    let r = http::request(
        f.port,
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"grant_type=password&username=GUESS-form-1&password=GUESS-form-1&service=x",
    );
    assert_status(&r, 429, None, "password grant");
    assert!(r.header("retry-after").is_some());
    // GOOD logged in from here before: it passes, by Basic and at /token.
    assert_status(&f.get("/v2/", Some(&basic(GOOD))), 200, None, "known good");
    f.token(GOOD, &[]);
    // OTHER never did: it waits for Retry-After, then is served.
    assert_status(
        &f.get("/v2/", Some(&basic(OTHER))),
        429,
        None,
        "OTHER throttled",
    );
    std::thread::sleep(Duration::from_secs(retry));
    assert_status(
        &f.get("/v2/", Some(&basic(OTHER))),
        200,
        None,
        "OTHER after wait",
    );
    let logs = f.berth.logs();
    let lines = logs.matches("too many failed logins").count();
    assert_eq!(lines, 1, "one line per throttled source:\n{logs}");
}

// ---- 8. pull-secret -------------------------------------------------------------------

#[test]
fn pull_secret_cli_prints_a_dockerconfigjson_secret() {
    let dir = support::tempdir();
    let cfg = dir.path().join("berth.yaml");
    let yaml = config_yaml(
        5443,
        &dir.path().join("cache"),
        "http://127.0.0.1:1",
        &Cfg {
            hostname: Some("images.acme.test".into()),
            ..Cfg::default()
        },
    );
    std::fs::write(&cfg, yaml).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = run_berth(&[
        "pull-secret",
        "--config",
        cfg,
        "--license",
        GOOD,
        "--namespace",
        "prod",
        "--name",
        "acme-pull",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).expect("YAML Secret");
    assert_eq!(doc["apiVersion"].as_str(), Some("v1"), "{out}");
    assert_eq!(doc["kind"].as_str(), Some("Secret"));
    assert_eq!(doc["type"].as_str(), Some("kubernetes.io/dockerconfigjson"));
    assert_eq!(doc["metadata"]["name"].as_str(), Some("acme-pull"));
    assert_eq!(doc["metadata"]["namespace"].as_str(), Some("prod"));
    let data = doc["data"][".dockerconfigjson"]
        .as_str()
        .expect("data..dockerconfigjson");
    let cfg_json: Value = serde_json::from_slice(&STANDARD.decode(data).expect("base64")).unwrap();
    let auths = cfg_json["auths"].as_object().expect("auths");
    assert_eq!(auths.len(), 1, "{cfg_json}");
    let a = &auths["images.acme.test"];
    assert_eq!(a["username"], GOOD);
    assert_eq!(a["password"], GOOD);
    assert_eq!(
        STANDARD.decode(a["auth"].as_str().unwrap()).unwrap(),
        format!("{GOOD}:{GOOD}").as_bytes()
    );

    // Without --namespace there is no namespace; an unknown license prints nothing.
    let (code, out, _) = run_berth(&["pull-secret", "--config", cfg, "--license", GOOD]);
    assert_eq!(code, Some(0));
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
    assert!(doc["metadata"].get("namespace").is_none(), "{out}");
    let (code, out, err) = run_berth(&[
        "pull-secret",
        "--config",
        cfg,
        "--license",
        "LICENSE-nobody-0001",
    ]);
    assert_ne!(code, Some(0));
    assert!(out.is_empty(), "stdout for an unknown license: {out}");
    assert!(err.contains("--license"), "{err}");

    // A license issued at runtime (in the state store) too: its public id is the username.
    let (code, out, err) = run_berth(&[
        "license",
        "create",
        "--config",
        cfg,
        "--app",
        "acme",
        "--customer",
        "Store Co",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap(),
        created["secret"].as_str().unwrap(),
    );
    let (code, out, err) = run_berth(&["pull-secret", "--config", cfg, "--license", secret]);
    assert_eq!(code, Some(0), "{err}");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
    let data = doc["data"][".dockerconfigjson"].as_str().unwrap();
    let cfg_json: Value = serde_json::from_slice(&STANDARD.decode(data).unwrap()).unwrap();
    let a = &cfg_json["auths"]["images.acme.test"];
    assert_eq!(a["username"], id);
    assert_eq!(a["password"], secret);
    // The id is not the secret.
    let (code, _, _) = run_berth(&["pull-secret", "--config", cfg, "--license", id]);
    assert_eq!(code, Some(2));
}

// ---- 9. the token key file ------------------------------------------------------------

#[test]
fn token_key_file_is_private_and_survives_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let mut f = Fixture::start(Cfg::default());
    let path = f.key_file();
    let meta = std::fs::metadata(&path).expect("token key created at <cache.dir>/token.key");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read(&path).unwrap();
    assert_eq!(key.len(), 32);
    assert!(
        key.iter().any(|&b| b != key[0]),
        "the key is not random: {key:?}"
    );

    let (t, _) = f.token(GOOD, &[&pull_scope("acme", "acme/api")]);
    let manifest = manifest_path("acme", "acme/api", "v1");
    assert_status(&f.get(&manifest, Some(&bearer(&t))), 200, None, "before");
    f.berth.restart();
    assert_eq!(std::fs::read(&path).unwrap(), key, "the key changed");
    assert_status(
        &f.get(&manifest, Some(&bearer(&t))),
        200,
        None,
        "token from before the restart",
    );

    // A new key (the file deleted) invalidates old tokens: the check above is real.
    f.berth.stop();
    std::fs::remove_file(&path).unwrap();
    f.berth.restart();
    assert_ne!(std::fs::read(&path).unwrap(), key);
    assert_status(
        &f.get(&manifest, Some(&bearer(&t))),
        401,
        Some("UNAUTHORIZED"),
        "token signed with the old key",
    );
}
