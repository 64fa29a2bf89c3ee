//! Upstream providers end to end: each `kind`'s authentication against a real
//! docker-registry behind an in-test token realm (or a fake ECR API) that checks the exact
//! request the provider's client sends, token single flight, redirects, Docker Hub quota
//! headers, and `berth upstream test`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use support::berth::Berth;
use support::fake::{FakeResponse, FakeServer, Recorded};
use support::image::{push_image, read_oci_layout, skopeo_copy_to_oci, ImageSpec, TestImage};
use support::registry::{Registry, RegistryAuth};
use support::token::{RealmOptions, TokenRealm};

const LICENSE: &str = "LICENSE-prov-0001";

fn canary() -> String {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    format!("CANARY-{}", support::hex(&b))
}

fn spec(seed: u64) -> ImageSpec {
    ImageSpec {
        layer_sizes: vec![40_000, 1000],
        seed,
    }
}

/// berth's YAML around `upstreams` (already indented list items); every upstream is in app
/// `acme`.
fn config_yaml(port: u16, cache: &Path, upstreams: &str, names: &[&str]) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams:\n{upstreams}\
         apps:\n  - {{ slug: acme, upstreams: [{}] }}\n\
         licenses:\n  - {{ id: {LICENSE}, app: acme, customer: Test }}\n",
        cache.display(),
        names.join(", ")
    )
}

struct Running {
    berth: Berth,
    _cache: tempfile::TempDir,
}

fn start(upstreams: &str, names: &[&str], env: &[(&str, &str)]) -> Running {
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = config_yaml(port, cache.path(), upstreams, names);
    Running {
        berth: Berth::start_on(port, &yaml, env),
        _cache: cache,
    }
}

/// Pulls `host/repo:tag` through berth with skopeo and checks the digest.
fn pull(b: &Berth, host: &str, repo: &str, tag: &str, img: &TestImage) {
    let dest = support::tempdir();
    let src = format!(
        "docker://127.0.0.1:{}/proxy/acme/{host}/{repo}:{tag}",
        b.port
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

fn berth_requests(reqs: Vec<Recorded>) -> Vec<Recorded> {
    reqs.into_iter()
        .filter(|r| {
            r.header("user-agent")
                .is_some_and(|u| u.starts_with("berth/"))
        })
        // berth checks its credentials once at start with a token of no scope (the
        // startup check, `app::warm_up`); the pulls' tokens all have one.
        .filter(|r| !r.query_all("scope").is_empty())
        .collect()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A bare HTTP/1.1 GET; returns the status and the whole response text.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to berth");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = STANDARD.encode(format!("{LICENSE}:{LICENSE}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read berth's answer");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn run_berth(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let r = support::berth::run_cli(args, env, None, Duration::from_secs(30));
    (r.code, r.stdout + &r.stderr)
}

// ---- kinds ----------------------------------------------------------------------------

#[test]
fn dockerhub_uses_hub_service_and_library_prefix() {
    let pw = canary();
    let realm = TokenRealm::start_with(
        "hubuser",
        &pw,
        300,
        RealmOptions {
            service: "registry.docker.io".into(),
            ..RealmOptions::default()
        },
    );
    let reg = Registry::start(realm.registry_auth());
    let img = push_image(&reg, Some(("hubuser", &pw)), "library/redis", "7", &spec(1));
    // No host: references say docker.io / index.docker.io whatever URL serves them.
    let ups = format!(
        "  - {{ name: hub, kind: dockerhub, url: \"{}\", username: hubuser, password: \"${{HUB_TOKEN}}\" }}\n",
        reg.url()
    );
    let b = start(&ups, &["hub"], &[("HUB_TOKEN", &pw)]);
    pull(&b.berth, "docker.io", "redis", "7", &img);
    pull(&b.berth, "index.docker.io", "library/redis", "7", &img);

    let reqs = berth_requests(realm.requests());
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(r.method, "GET");
        assert_eq!(r.query("service").as_deref(), Some("registry.docker.io"));
        assert_eq!(r.query_all("scope"), ["repository:library/redis:pull"]);
        assert_eq!(
            r.header("authorization"),
            Some(basic("hubuser", &pw).as_str())
        );
    }
    assert!(!b.berth.logs().contains(&pw));
}

#[test]
fn anonymous_dockerhub_keeps_hub_routing() {
    // Public Hub images (redis, postgres) without a Hub account: no credentials, but still
    // docker.io names and the library/ prefix.
    let reg = Registry::start(RegistryAuth::None);
    let img = push_image(&reg, None, "library/redis", "7", &spec(12));
    let ups = format!(
        "  - {{ name: hub, kind: dockerhub, url: \"{}\" }}\n",
        reg.url()
    );
    let b = start(&ups, &["hub"], &[]);
    pull(&b.berth, "docker.io", "redis", "7", &img);
    assert!(
        reg.requests()
            .iter()
            .any(|(m, p, _)| m == "GET" && p.contains("/v2/library/redis/manifests/7")),
        "berth did not ask the upstream for library/redis"
    );
    assert!(
        reg.requests()
            .iter()
            .all(|(_, p, _)| !p.starts_with("/v2/redis/")),
        "a one-part Hub name reached the upstream without library/"
    );
}

#[test]
fn gcr_and_gar_send_the_json_key() {
    let secret = canary();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "0123",
        "private_key": format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
        "client_email": "berth@acme-prod.iam.gserviceaccount.com",
    })
    .to_string();
    let realm = TokenRealm::start("_json_key", &key, 300);
    let reg = Registry::start(realm.registry_auth());
    let img = push_image(
        &reg,
        Some(("_json_key", &key)),
        "acme-prod/app",
        "v1",
        &spec(2),
    );
    let dir = support::tempdir();
    let key_file = dir.path().join("sa.json");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let ups = format!(
        "  - {{ name: gcr, kind: gcr, url: \"{url}\", host: gcr.io, service_account_key_file: \"{}\" }}\n\
         \x20 - {{ name: gar, kind: gar, url: \"{url}\", region: europe-west1, host: europe-west1-docker.pkg.dev, service_account_key: \"${{GCP_KEY}}\" }}\n",
        key_file.display(),
        url = reg.url()
    );
    let b = start(&ups, &["gcr", "gar"], &[("GCP_KEY", &key)]);
    pull(&b.berth, "gcr.io", "acme-prod/app", "v1", &img);
    pull(
        &b.berth,
        "europe-west1-docker.pkg.dev",
        "acme-prod/app",
        "v1",
        &img,
    );
    let reqs = berth_requests(realm.requests());
    // One token per upstream: the cache is per (upstream, scope).
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    for r in &reqs {
        assert_eq!(
            r.header("authorization"),
            Some(basic("_json_key", &key).as_str())
        );
    }
    assert!(!b.berth.logs().contains(&secret));
}

#[test]
fn acr_fetches_tokens_with_get_and_basic() {
    let pw = canary();
    let realm = TokenRealm::start_with(
        "00000000-0000-0000-0000-000000000000",
        &pw,
        300,
        RealmOptions {
            path: "/oauth2/token".into(),
            // ACR answers the OAuth2 password POST with 400.
            post_status: Some(400),
            ..RealmOptions::default()
        },
    );
    let reg = Registry::start(realm.registry_auth());
    let sp = "00000000-0000-0000-0000-000000000000";
    let img = push_image(&reg, Some((sp, &pw)), "acme/app", "v1", &spec(3));
    let ups = format!(
        "  - {{ name: acr, kind: acr, url: \"{}\", host: acme.azurecr.io, username: \"{sp}\", password: \"${{ACR_PASSWORD}}\" }}\n",
        reg.url()
    );
    let b = start(&ups, &["acr"], &[("ACR_PASSWORD", &pw)]);
    pull(&b.berth, "acme.azurecr.io", "acme/app", "v1", &img);
    let reqs = berth_requests(realm.requests());
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path(), "/oauth2/token");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(basic(sp, &pw).as_str())
    );
}

/// A stand-in for the ECR API: checks the target, content type and body, recomputes the
/// SigV4 signature with the secret it knows for the access key, and answers like ECR.
fn fake_ecr(keys: Vec<(String, String)>, registry_password: String) -> FakeServer {
    FakeServer::start(move |req: &Recorded| {
        let fail =
            |t: &str| FakeResponse::json(400, &serde_json::json!({"__type": t, "message": "test"}));
        if req.method != "POST"
            || req.path() != "/"
            || req.header("x-amz-target")
                != Some("AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken")
            || req.header("content-type") != Some("application/x-amz-json-1.1")
        {
            return fail("UnknownOperationException");
        }
        if req.body != br#"{"registryIds":["123456789012"]}"# {
            return fail("InvalidParameterException");
        }
        let Some(auth) = req.header("authorization") else {
            return fail("MissingAuthenticationTokenException");
        };
        let field = |name: &str| {
            auth.split([' ', ','])
                .find_map(|p| p.strip_prefix(name))
                .unwrap_or("")
                .to_string()
        };
        let credential = field("Credential=");
        let mut parts = credential.split('/');
        let (akid, date, region, service) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let Some((_, secret)) = keys.iter().find(|(k, _)| k == akid) else {
            return fail("UnrecognizedClientException");
        };
        let amz_date = req.header("x-amz-date").unwrap_or("");
        if service != "ecr" || region != "eu-west-1" || !amz_date.starts_with(date) {
            return fail("InvalidSignatureException");
        }
        let signed = field("SignedHeaders=");
        let names: Vec<&str> = signed.split(';').collect();
        for required in ["content-type", "host", "x-amz-date", "x-amz-target"] {
            if !names.contains(&required) {
                return fail("InvalidSignatureException");
            }
        }
        let values: Vec<(&str, &str)> = names
            .iter()
            .map(|n| (*n, req.header(n).unwrap_or("")))
            .collect();
        let expected = berth::upstream::sigv4::authorization(
            akid,
            &berth::config::Secret::new(secret.clone()),
            &berth::upstream::sigv4::SignInput {
                method: &req.method,
                path: req.path(),
                query: "",
                headers: &values,
                body: &req.body,
                region,
                service,
                amz_date,
            },
        );
        if expected != auth {
            return fail("InvalidSignatureException");
        }
        let expires = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 12 * 3600;
        FakeResponse::json(
            200,
            &serde_json::json!({"authorizationData": [{
                "authorizationToken": STANDARD.encode(format!("AWS:{registry_password}")),
                "expiresAt": expires as f64 + 0.25,
                "proxyEndpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            }]}),
        )
    })
}

#[test]
fn ecr_signs_get_authorization_token_and_reloads_credentials() {
    let registry_pw = canary();
    let (secret1, secret2) = (canary(), canary());
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "AWS".into(),
        password: registry_pw.clone(),
    });
    let img = push_image(
        &reg,
        Some(("AWS", &registry_pw)),
        "acme/app",
        "v1",
        &spec(4),
    );
    let img2 = push_image(
        &reg,
        Some(("AWS", &registry_pw)),
        "acme/app",
        "v2",
        &spec(5),
    );
    let ecr = fake_ecr(
        vec![
            ("AKIDBERTHTEST1".into(), secret1.clone()),
            ("AKIDBERTHTEST2".into(), secret2.clone()),
        ],
        registry_pw.clone(),
    );
    let host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    let ups = |akid: &str| {
        format!(
            "  - name: ecr\n    kind: ecr\n    url: \"{}\"\n    host: {host}\n    region: eu-west-1\n    registry_id: \"123456789012\"\n    access_key_id: {akid}\n    secret_access_key: \"${{AWS_SECRET_{}}}\"\n    ecr_endpoint: \"{}\"\n",
            reg.url(),
            &akid[akid.len() - 1..],
            ecr.url()
        )
    };
    let env = [
        ("AWS_SECRET_1", secret1.as_str()),
        ("AWS_SECRET_2", secret2.as_str()),
    ];
    let mut b = start(&ups("AKIDBERTHTEST1"), &["ecr"], &env);
    pull(&b.berth, host, "acme/app", "v1", &img);
    let calls = ecr.requests();
    assert_eq!(
        calls.len(),
        1,
        "one GetAuthorizationToken for a whole pull: {calls:?}"
    );
    assert!(calls[0]
        .header("authorization")
        .unwrap()
        .contains("Credential=AKIDBERTHTEST1/"));

    // `upstream test` goes through the same token call.
    let (code, out) = run_berth(
        &[
            "upstream",
            "test",
            "--config",
            b.berth.config_path.to_str().unwrap(),
            "ecr",
            "--image",
            "acme/app:v1",
        ],
        &env,
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("✓ ecr token: authorization token from"),
        "{out}"
    );
    assert!(out.contains("✓ manifest: acme/app:v1 → sha256:"), "{out}");
    for s in [&secret1, &secret2, &registry_pw] {
        assert!(!out.contains(s.as_str()));
    }

    // New credentials on reload: the cached ECR login goes with the old ones.
    let yaml = std::fs::read_to_string(&b.berth.config_path).unwrap();
    std::fs::write(
        &b.berth.config_path,
        yaml.replace("AKIDBERTHTEST1", "AKIDBERTHTEST2")
            .replace("AWS_SECRET_1", "AWS_SECRET_2"),
    )
    .unwrap();
    b.berth.sighup();
    assert!(support::wait_until(Duration::from_secs(10), || b
        .berth
        .logs()
        .contains("configuration reloaded")));
    pull(&b.berth, host, "acme/app", "v2", &img2);
    let calls = ecr.requests();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[2]
        .header("authorization")
        .unwrap()
        .contains("Credential=AKIDBERTHTEST2/"));
    let logs = b.berth.logs();
    for s in [&secret1, &secret2, &registry_pw] {
        assert!(!logs.contains(s.as_str()));
    }
    b.berth.stop();
}

#[test]
fn quay_ghcr_custom_and_public_pull_through() {
    let pw = canary();
    let private = Registry::start(RegistryAuth::Htpasswd {
        user: "robot".into(),
        password: pw.clone(),
    });
    let public = Registry::start(RegistryAuth::None);
    let img = push_image(&private, Some(("robot", &pw)), "acme/app", "v1", &spec(6));
    let pub_img = push_image(&public, None, "acme/tool", "v1", &spec(7));
    let mut ups = String::new();
    for (name, kind, host) in [
        ("q", "quay", "quay.io"),
        ("g", "ghcr", "ghcr.io"),
        ("c", "custom", "registry.local"),
    ] {
        ups.push_str(&format!(
            "  - {{ name: {name}, kind: {kind}, url: \"{}\", host: {host}, username: robot, password: \"${{PW}}\" }}\n",
            private.url()
        ));
    }
    ups.push_str(&format!(
        "  - {{ name: p, kind: public, url: \"{}\", host: public.local }}\n",
        public.url()
    ));
    let b = start(&ups, &["q", "g", "c", "p"], &[("PW", &pw)]);
    pull(&b.berth, "quay.io", "acme/app", "v1", &img);
    pull(&b.berth, "ghcr.io", "acme/app", "v1", &img);
    pull(&b.berth, "registry.local", "acme/app", "v1", &img);
    pull(&b.berth, "public.local", "acme/tool", "v1", &pub_img);
}

// ---- tokens, redirects, quota ---------------------------------------------------------

#[test]
fn burst_of_twenty_requests_fetches_one_token() {
    let pw = canary();
    let realm = TokenRealm::start("vendor", &pw, 300);
    let reg = Registry::start(realm.registry_auth());
    push_image(&reg, Some(("vendor", &pw)), "acme/app", "v1", &spec(8));
    let before = berth_requests(realm.requests()).len();
    assert_eq!(before, 0);
    let ups = format!(
        "  - {{ name: up, url: \"{}\", host: registry.local, username: vendor, password: \"${{PW}}\" }}\n",
        reg.url()
    );
    let b = Arc::new(start(&ups, &["up"], &[("PW", &pw)]));
    let barrier = Arc::new(std::sync::Barrier::new(20));
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (b, barrier) = (b.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // Tag lists are never cached: every one of these reaches the upstream.
                http_get(
                    b.berth.port,
                    "/v2/proxy/acme/registry.local/acme/app/tags/list",
                )
            })
        })
        .collect();
    for t in threads {
        let (status, text) = t.join().unwrap();
        assert_eq!(status, 200, "{text}");
    }
    let reqs = berth_requests(realm.requests());
    assert_eq!(
        reqs.len(),
        1,
        "a burst must share one token request: {reqs:?}"
    );
}

#[test]
fn more_than_five_redirects_is_a_clean_502() {
    let origin = FakeServer::start(|req: &Recorded| {
        if req.path() == "/v2/" {
            return FakeResponse::json(200, &serde_json::json!({}));
        }
        let n: u32 = req.query("hop").and_then(|h| h.parse().ok()).unwrap_or(0);
        FakeResponse::redirect(307, &format!("{}?hop={}", req.path(), n + 1))
    });
    let ups = format!(
        "  - {{ name: loop, url: \"{}\", host: loop.local }}\n",
        origin.url()
    );
    let b = start(&ups, &["loop"], &[]);
    let (status, text) = http_get(
        b.berth.port,
        "/v2/proxy/acme/loop.local/acme/app/manifests/v1",
    );
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("more than 5 redirects"), "{text}");
    let hops = origin.count("GET", "/manifests/v1");
    assert_eq!(hops, 6, "the first request and five redirects");
    // berth is still fine afterwards.
    let (status, _) = http_get(b.berth.port, "/v2/");
    assert_eq!(status, 200);
}

#[test]
fn docker_hub_quota_headers_are_logged() {
    let reg = Registry::start(RegistryAuth::None);
    let img = push_image(&reg, None, "library/alpine", "3", &spec(9));
    let origin = reg.url();
    let front = FakeServer::start(move |req: &Recorded| {
        FakeResponse::proxy_to(&origin, req)
            .header("ratelimit-limit", "100;w=21600")
            .header("ratelimit-remaining", "3;w=21600")
    });
    let ups = format!(
        "  - {{ name: hub, kind: public, url: \"{}\", host: hub.local }}\n",
        front.url()
    );
    let b = start(&ups, &["hub"], &[]);
    pull(&b.berth, "hub.local", "library/alpine", "3", &img);
    let logs = b.berth.logs();
    assert!(
        logs.contains("upstream pull quota is running low") && logs.contains("remaining=3"),
        "{logs}"
    );
}

// ---- berth upstream test --------------------------------------------------------------

#[test]
fn upstream_test_reports_each_step() {
    let pw = canary();
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: "vendor".into(),
        password: pw.clone(),
    });
    push_image(&reg, Some(("vendor", &pw)), "acme/app", "v1", &spec(10));
    let dead = support::free_port();
    let dir = support::tempdir();
    let ups = format!(
        "  - {{ name: good, url: \"{url}\", host: registry.local, username: vendor, password: \"${{PW}}\", repositories: [\"acme/*\"] }}\n\
         \x20 - {{ name: badpw, url: \"{url}\", host: registry.local, username: vendor, password: \"${{WRONG}}\" }}\n\
         \x20 - {{ name: down, url: \"http://127.0.0.1:{dead}\", host: down.local }}\n",
        url = reg.url()
    );
    let config = dir.path().join("berth.yaml");
    std::fs::write(
        &config,
        config_yaml(
            support::free_port(),
            dir.path(),
            &ups,
            &["good", "badpw", "down"],
        ),
    )
    .unwrap();
    let wrong = canary();
    let env = [("PW", pw.as_str()), ("WRONG", wrong.as_str())];
    let test = |args: &[&str]| {
        let mut all = vec!["upstream", "test", "--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        let (code, out) = run_berth(&all, &env);
        assert!(
            !out.contains(&pw) && !out.contains(&wrong),
            "a password leaked:\n{out}"
        );
        (code, out)
    };

    let (code, out) = test(&["good", "--image", "acme/app:v1"]);
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "✓ dns: 127.0.0.1 → 127.0.0.1",
        "✓ connect: TCP 127.0.0.1:",
        "- tls: plain HTTP",
        "✓ auth: Basic credentials accepted",
        "✓ manifest: acme/app:v1 → sha256:",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains('✗'), "{out}");

    let (code, out) = test(&["badpw"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("✗ auth: bad credentials: the upstream rejected berth's credentials"),
        "{out}"
    );

    let (code, out) = test(&["down"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("✗ connect: unreachable: 127.0.0.1:"), "{out}");

    let (code, out) = test(&["good", "--image", "other/app:v1"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("✗ allow-list: repository other/app is outside the allow-list [acme/*]"),
        "{out}"
    );

    // All upstreams at once: one failure is enough for a non-zero exit.
    let (code, out) = test(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("good (custom, ") && out.contains("down (custom, "),
        "{out}"
    );
}
