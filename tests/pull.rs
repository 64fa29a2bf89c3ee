//! Integration tests of berth's core pull path against a real docker-registry, skopeo,
//! a token realm and fault-injecting fake origins.

#[path = "support/http.rs"]
mod http;
mod support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::digest::{Context, SHA256};

use http::Resp;

use support::berth::Berth;
use support::fake::{FakeResponse, FakeServer};
use support::image::{
    push_image, push_index, read_oci_layout, skopeo_copy_to_oci, ImageSpec, LayoutContents,
    TestImage, MANIFEST_MEDIA_TYPE,
};
use support::registry::{Registry, RegistryAuth};
use support::token::TokenRealm;

const GOOD: &str = "LICENSE-good-0001";
const OLD: &str = "LICENSE-old-0001";
const GONE: &str = "LICENSE-gone-0001";
const HOST: &str = "upstream.test";
const VENDOR: &str = "vendor";
const MIB: u64 = 1 << 20;
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

// ---- fixtures -------------------------------------------------------------------------

/// A fresh random secret per test, so a hit in a scan can only come from this run.
fn canary() -> String {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    format!("CANARY-{}", support::hex(&b))
}

fn basic(id: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{id}")))
}

/// One upstream entry of berth's config; `password` is YAML text (e.g. `${UPSTREAM_PASSWORD}`).
struct Up<'a> {
    name: &'a str,
    url: String,
    host: &'a str,
    password: Option<&'a str>,
    repositories: Option<&'a str>,
}

impl<'a> Up<'a> {
    fn new(name: &'a str, url: String, host: &'a str) -> Up<'a> {
        Up {
            name,
            url,
            host,
            password: Some("${UPSTREAM_PASSWORD}"),
            repositories: None,
        }
    }
}

fn config_yaml(port: u16, cache: &Path, ups: &[Up]) -> String {
    let mut y = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\ncache: {{ dir: \"{}\" }}\nupstreams:\n",
        cache.display()
    );
    for u in ups {
        y.push_str(&format!(
            "  - name: {}\n    url: \"{}\"\n    host: {}\n",
            u.name, u.url, u.host
        ));
        if let Some(p) = u.password {
            y.push_str(&format!("    username: {VENDOR}\n    password: \"{p}\"\n"));
        }
        if let Some(r) = u.repositories {
            y.push_str(&format!("    repositories: {r}\n"));
        }
    }
    let names: Vec<&str> = ups.iter().map(|u| u.name).collect();
    y.push_str(&format!(
        "apps:\n  - {{ slug: acme, upstreams: [{}] }}\n  - {{ slug: other, upstreams: [{}] }}\n",
        names.join(", "),
        names[0]
    ));
    y.push_str(&format!(
        "licenses:\n  - {{ id: {GOOD}, app: acme, customer: Big Bank }}\n  - {{ id: {OLD}, app: acme, customer: Old, expires: \"2020-01-01T00:00:00Z\" }}\n  - {{ id: {GONE}, app: acme, customer: Gone, revoked: true }}\n  - {{ id: LICENSE-other-0001, app: other, customer: Other }}\n"
    ));
    y
}

struct RunningBerth {
    berth: Berth,
    _cache: tempfile::TempDir,
}

impl std::ops::Deref for RunningBerth {
    type Target = Berth;
    fn deref(&self) -> &Berth {
        &self.berth
    }
}

impl std::ops::DerefMut for RunningBerth {
    fn deref_mut(&mut self) -> &mut Berth {
        &mut self.berth
    }
}

fn start_berth(ups: &[Up], canary: &str, extra_env: &[(&str, &str)]) -> RunningBerth {
    let cache = support::tempdir();
    let port = support::free_port();
    let yaml = config_yaml(port, cache.path(), ups);
    let mut env = vec![("UPSTREAM_PASSWORD", canary)];
    env.extend_from_slice(extra_env);
    RunningBerth {
        berth: Berth::start_on(port, &yaml, &env),
        _cache: cache,
    }
}

/// An htpasswd registry whose vendor password is the canary, and berth in front of it.
struct Fixture {
    canary: String,
    reg: Registry,
    berth: RunningBerth,
}

fn fixture() -> Fixture {
    let canary = canary();
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: canary.clone(),
    });
    let mut up = Up::new("up", reg.url(), HOST);
    up.repositories = Some("[\"acme/*\"]");
    let berth = start_berth(&[up], &canary, &[]);
    Fixture { canary, reg, berth }
}

impl Fixture {
    fn push(&self, repo: &str, tag: &str, spec: &ImageSpec) -> TestImage {
        push_image(&self.reg, Some((VENDOR, &self.canary)), repo, tag, spec)
    }
}

fn berth_ref(b: &Berth, repo: &str, tag: &str) -> String {
    format!(
        "docker://127.0.0.1:{}/proxy/acme/{HOST}/{repo}:{tag}",
        b.port
    )
}

fn berth_path(repo: &str) -> String {
    format!("/v2/proxy/acme/{HOST}/{repo}")
}

fn pull_to_oci(src: &str, creds: &str, extra: &[&str]) -> (LayoutContents, String) {
    let dest = support::tempdir();
    let mut args = vec!["--preserve-digests"];
    args.extend_from_slice(extra);
    let out = skopeo_copy_to_oci(src, Some(creds), dest.path(), &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "skopeo pull of {src} failed: {text}");
    (read_oci_layout(dest.path()), text)
}

fn expected_blobs(img: &TestImage) -> Vec<String> {
    let mut want: Vec<String> = img.layers.iter().map(|(d, _)| d.clone()).collect();
    want.push(img.config_digest.clone());
    want.push(img.manifest_digest.clone());
    want.sort();
    want.dedup();
    want
}

// ---- a raw HTTP/1.1 client that keeps every response --------------------------------

/// Every response any test gets goes through here, so the canary scan sees all of them.
struct Client {
    port: u16,
    seen: RefCell<Vec<Resp>>,
}

impl Client {
    fn new(port: u16) -> Client {
        Client {
            port,
            seen: RefCell::new(Vec::new()),
        }
    }

    fn get(&self, path: &str, auth: Option<&str>) -> Resp {
        self.req("GET", path, auth, &[])
    }

    fn req(&self, method: &str, path: &str, auth: Option<&str>, headers: &[(&str, &str)]) -> Resp {
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        let r = http::request(self.port, method, path, &h, b"");
        self.seen.borrow_mut().push(r.clone());
        r
    }
}

fn assert_api_version(r: &Resp, what: &str) {
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{what}: missing API version header: {:?}",
        r.headers
    );
}

fn assert_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        (r.status, r.code().as_str()),
        (status, code),
        "{what}: {} {}",
        r.status,
        r.text()
    );
    assert_api_version(r, what);
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ---- 1. good license, byte-exact pulls ------------------------------------------------

#[test]
fn good_license_pull_matches_push_and_direct_pull() {
    let t = Instant::now();
    let f = fixture();
    let spec = ImageSpec {
        layer_sizes: vec![3 * MIB, 5 * MIB, 72 * MIB, 1000],
        seed: 11,
    };
    let img = f.push("acme/app", "v1", &spec);
    let (via_berth, _) = pull_to_oci(
        &berth_ref(&f.berth, "acme/app", "v1"),
        &format!("{GOOD}:{GOOD}"),
        &[],
    );
    assert_eq!(via_berth.manifest_digest, img.manifest_digest);
    assert_eq!(via_berth.blob_digests, expected_blobs(&img));
    let (direct, _) = pull_to_oci(
        &img.docker_ref(&f.reg),
        &format!("{VENDOR}:{}", f.canary),
        &[],
    );
    assert_eq!(via_berth, direct, "berth and the upstream disagree");
    // The big layer really went through berth, not around it.
    let big = &img.layers[2].0;
    assert!(f.reg.count_requests("GET", &format!("/blobs/{big}")) >= 2);

    let amd = ImageSpec {
        layer_sizes: vec![40_000, 9_000],
        seed: 12,
    };
    let arm = ImageSpec {
        layer_sizes: vec![40_000, 7_000],
        seed: 12,
    };
    let idx = push_index(
        &f.reg,
        Some((VENDOR, &f.canary)),
        "acme/multi",
        "v2",
        &[("linux", "amd64", amd), ("linux", "arm64", arm)],
    );
    let (multi, _) = pull_to_oci(
        &berth_ref(&f.berth, "acme/multi", "v2"),
        &format!("{GOOD}:{GOOD}"),
        &["--all"],
    );
    assert_eq!(multi.manifest_digest, idx.index_digest);
    for child in &idx.children {
        for d in expected_blobs(child) {
            assert!(
                multi.blob_digests.contains(&d),
                "{d} missing from --all pull"
            );
        }
    }
    eprintln!("good_license pull test took {:?}", t.elapsed());
}

// ---- 2. authentication and entitlement matrix ----------------------------------------

#[test]
fn auth_matrix() {
    let f = fixture();
    let img = f.push(
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![1000],
            seed: 2,
        },
    );
    let c = Client::new(f.berth.port);
    let manifest = format!("{}/manifests/v1", berth_path("acme/app"));
    let wrong_password = format!("Basic {}", STANDARD.encode(format!("{GOOD}:not-it-0001")));
    let unauthenticated: Vec<(&str, Option<String>)> = vec![
        ("no credentials", None),
        ("unknown license", Some(basic("LICENSE-nope-0001"))),
        ("wrong password", Some(wrong_password)),
        ("expired", Some(basic(OLD))),
        ("revoked", Some(basic(GONE))),
        ("bearer", Some(format!("Bearer {GOOD}"))),
        ("garbage", Some("Basic !!!notbase64".into())),
    ];
    for (what, auth) in &unauthenticated {
        for path in ["/v2/", manifest.as_str()] {
            let r = c.get(path, auth.as_deref());
            assert_error(&r, 401, "UNAUTHORIZED", &format!("{what} {path}"));
            // The Docker token challenge: realm and service are berth's own name, and on a
            // repository path the scope a client must ask for.
            let host = format!("127.0.0.1:{}", f.berth.port);
            let mut want = format!("Bearer realm=\"http://{host}/token\",service=\"{host}\"");
            if path != "/v2/" {
                want.push_str(&format!(
                    ",scope=\"repository:{}:pull\"",
                    berth_path("acme/app").trim_start_matches("/v2/")
                ));
            }
            assert_eq!(r.header("www-authenticate"), Some(want.as_str()), "{what}");
        }
    }
    let good = basic(GOOD);
    let r = c.get("/v2/", Some(&good));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_api_version(&r, "/v2/");

    let upstream_before = f.reg.requests().len();
    let r = c.get(
        &format!("/v2/proxy/other/{HOST}/acme/app/manifests/v1"),
        Some(&good),
    );
    assert_error(&r, 403, "DENIED", "other app");
    // ... and the other app's own license is denied on acme's path.
    let r = c.get(&manifest, Some(&basic("LICENSE-other-0001")));
    assert_error(&r, 403, "DENIED", "acme path with other's license");
    let r = c.get(
        &format!("/v2/proxy/nope/{HOST}/acme/app/manifests/v1"),
        Some(&good),
    );
    assert_error(&r, 404, "NAME_UNKNOWN", "unknown app");
    let r = c.get(
        "/v2/proxy/acme/nowhere.test/acme/app/manifests/v1",
        Some(&good),
    );
    assert_error(&r, 404, "NAME_UNKNOWN", "unknown host");
    let r = c.get(
        &format!("{}/manifests/v1", berth_path("evil/app")),
        Some(&good),
    );
    assert_error(&r, 404, "NAME_UNKNOWN", "repository outside the allow-list");
    // Refused customers never cost an upstream request.
    assert_eq!(
        f.reg.requests().len(),
        upstream_before,
        "refused requests reached the upstream: {:?}",
        f.reg.requests()
    );

    let r = c.get(&manifest, Some(&good));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest_digest.as_str())
    );
    // One access-log line per request, naming the license (or "-").
    let logged = support::wait_until(Duration::from_secs(5), || {
        f.berth.logs().matches(" request ").count() >= c.seen.borrow().len()
    });
    let log = f.berth.logs();
    assert!(
        logged,
        "expected {} request lines in:\n{log}",
        c.seen.borrow().len()
    );
    // Lines name the license by fingerprint, never by its id (the customer's password).
    let fp = &support::sha256_hex(GOOD.as_bytes())[..32];
    assert!(log.contains(&format!("license=\"{fp}\"")), "{log}");
    assert!(log.contains("status=403"), "{log}");
}

// ---- 3. tag list paging ---------------------------------------------------------------

#[test]
fn tags_list_paging_rewrites_link_and_name() {
    let f = fixture();
    let spec = ImageSpec {
        layer_sizes: vec![500],
        seed: 3,
    };
    for tag in ["t1", "t2", "t3"] {
        f.push("acme/app", tag, &spec);
    }
    let c = Client::new(f.berth.port);
    let good = basic(GOOD);
    let name = format!("proxy/acme/{HOST}/acme/app");

    let all = c.get(&format!("/v2/{name}/tags/list"), Some(&good));
    assert_eq!(all.status, 200, "{}", all.text());
    assert_eq!(all.json()["name"], name.as_str());
    // distribution's list is in storage order; berth sorts it.
    assert_eq!(all.json()["tags"], serde_json::json!(["t1", "t2", "t3"]));
    assert!(all.header("link").is_none());

    // distribution 2.8 ignores n/last (pagination arrived in v3): berth pages itself.
    let first = c.get(&format!("/v2/{name}/tags/list?n=2"), Some(&good));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["tags"], serde_json::json!(["t1", "t2"]));
    assert_eq!(
        first.header("link"),
        Some(format!("</v2/{name}/tags/list?n=2&last=t2>; rel=\"next\"").as_str())
    );
    let rest = c.get(&format!("/v2/{name}/tags/list?n=2&last=t2"), Some(&good));
    assert_eq!(rest.json()["tags"], serde_json::json!(["t3"]));
    assert!(rest.header("link").is_none(), "a next page after the last");

    // An upstream that pages (like distribution v3) is followed, its Link rewritten.
    let tags_all = ["t1", "t2", "t3"];
    let pager = FakeServer::start(move |req| {
        if req.path() != "/v2/acme/app/tags/list" {
            return FakeResponse::bytes(404, "");
        }
        let n: usize = req.query("n").map_or(100, |n| n.parse().unwrap());
        let last = req.query("last").unwrap_or_default();
        let rest: Vec<&str> = tags_all
            .into_iter()
            .filter(|t| *t > last.as_str())
            .collect();
        let page = &rest[..n.min(rest.len())];
        let mut r = FakeResponse::json(200, &serde_json::json!({"name": "acme/app", "tags": page}));
        if page.len() < rest.len() {
            let link = format!(
                "</v2/acme/app/tags/list?last={}&n={n}&sig=upstream-only>; rel=\"next\"",
                page[page.len() - 1]
            );
            r = r.header("link", &link);
        }
        r
    });
    let paged = start_berth(&[Up::new("up", pager.url(), HOST)], &f.canary, &[]);
    let pc = Client::new(paged.port);
    let mut next = Some(format!("/v2/{name}/tags/list?n=1"));
    let mut tags = Vec::new();
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages <= 5, "paging does not end: {tags:?}");
        let r = pc.get(&path, Some(&good));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["name"], name.as_str(), "{path}");
        let page: Vec<String> = v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert!(page.len() <= 1, "n=1 returned {page:?}");
        tags.extend(page);
        if let Some(link) = r.header("link") {
            let target = link
                .split_once('<')
                .and_then(|(_, r)| r.split_once('>'))
                .map(|(u, _)| u.to_string())
                .unwrap_or_else(|| panic!("bad Link {link:?}"));
            assert!(
                target.starts_with(&format!("/v2/{name}/tags/list?")),
                "Link not rewritten to berth's path: {link}"
            );
            assert!(link.contains("rel=\"next\""), "{link}");
            assert!(target.contains("n=1"), "{link}");
            assert!(
                !target.contains("sig="),
                "upstream-only parameter echoed: {link}"
            );
            next = Some(target);
        }
    }
    assert_eq!(tags, ["t1", "t2", "t3"]);

    assert_eq!(pages, 3, "expected three pages of one tag");
    // berth also asks /v2/ once at start to learn the auth scheme: only tag lists count.
    let forwarded: Vec<(Option<String>, Option<String>)> = pager
        .requests()
        .iter()
        .filter(|r| r.path().ends_with("/tags/list"))
        .map(|r| (r.query("n"), r.query("last")))
        .collect();
    assert_eq!(
        forwarded,
        [
            (Some("1".into()), None),
            (Some("1".into()), Some("t1".into())),
            (Some("1".into()), Some("t2".into())),
        ]
    );

    let r = pc.get(&format!("/v2/{name}/tags/list?last=t1"), Some(&good));
    assert_eq!(r.json()["tags"], serde_json::json!(["t2", "t3"]));
    assert!(r.header("link").is_none());
}

/// An upstream that does not filter referrers by `artifactType` (or does not say it did):
/// berth filters and says so in `OCI-Filters-Applied`. distribution 2.8 has no referrers
/// API, so the upstream is a small fake that answers every descriptor.
#[test]
fn referrers_are_filtered_by_berth_when_the_upstream_does_not() {
    let f = fixture();
    let subject = format!("sha256:{}", "ab".repeat(32));
    let path = format!("/v2/acme/app/referrers/{subject}");
    let upstream = FakeServer::start(move |req| {
        if req.path() != path {
            return FakeResponse::bytes(404, "");
        }
        FakeResponse::json(
            200,
            &serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "digest": format!("sha256:{}", "01".repeat(32)), "size": 10,
                     "artifactType": "application/vnd.example.sig.v1"},
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "digest": format!("sha256:{}", "02".repeat(32)), "size": 20,
                     "artifactType": "application/spdx+json"}
                ]
            }),
        )
    });
    let berth = start_berth(&[Up::new("up", upstream.url(), HOST)], &f.canary, &[]);
    let c = Client::new(berth.port);
    let good = basic(GOOD);
    let base = format!("/v2/proxy/acme/{HOST}/acme/app/referrers/{subject}");
    let all = c.get(&base, Some(&good));
    assert_eq!(all.status, 200, "{}", all.text());
    assert_eq!(all.json()["manifests"].as_array().unwrap().len(), 2);
    assert!(all.header("oci-filters-applied").is_none());
    let sig = c.get(
        &format!("{base}?artifactType=application/vnd.example.sig.v1"),
        Some(&good),
    );
    assert_eq!(sig.status, 200, "{}", sig.text());
    let m = sig.json()["manifests"].clone();
    assert_eq!(m.as_array().unwrap().len(), 1, "{m}");
    assert_eq!(m[0]["artifactType"], "application/vnd.example.sig.v1");
    assert_eq!(sig.header("oci-filters-applied"), Some("artifactType"));
    let none = c.get(&format!("{base}?artifactType=text/plain"), Some(&good));
    assert_eq!(none.json()["manifests"], serde_json::json!([]));
    assert_eq!(none.header("oci-filters-applied"), Some("artifactType"));
}

/// distribution answers a non-numeric `n` with 400 PAGINATION_NUMBER_INVALID; 405 ("method
/// not allowed") would tell a client its GET is the problem.
#[test]
fn tags_list_bad_page_size_is_400() {
    let f = fixture();
    let c = Client::new(f.berth.port);
    let r = c.get(
        &format!("{}/tags/list?n=abc", berth_path("acme/app")),
        Some(&basic(GOOD)),
    );
    assert_eq!(r.status, 400, "n=abc: {} {}", r.status, r.text());
}

// ---- 4. HEAD equals GET minus the body ------------------------------------------------

#[test]
fn head_manifest_and_blob_match_get() {
    let f = fixture();
    let img = f.push(
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![200_000, 3000],
            seed: 4,
        },
    );
    let c = Client::new(f.berth.port);
    let good = basic(GOOD);
    let accept = [("Accept", MANIFEST_MEDIA_TYPE)];
    let base = berth_path("acme/app");
    let paths = [
        format!("{base}/manifests/v1"),
        format!("{base}/manifests/{}", img.manifest_digest),
        format!("{base}/blobs/{}", img.layers[0].0),
        format!("{base}/blobs/{}", img.config_digest),
    ];
    for path in &paths {
        let get = c.req("GET", path, Some(&good), &accept);
        let head = c.req("HEAD", path, Some(&good), &accept);
        assert_eq!(
            (get.status, head.status),
            (200, 200),
            "{path}: {}",
            get.text()
        );
        for h in ["content-length", "docker-content-digest", "content-type"] {
            assert!(get.header(h).is_some(), "{path}: GET lacks {h}");
            assert_eq!(get.header(h), head.header(h), "{path}: {h}");
        }
        assert_eq!(
            get.header("content-length").unwrap(),
            get.body.len().to_string(),
            "{path}"
        );
        assert!(head.body.is_empty(), "{path}: HEAD had a body");
        let digest = get.header("docker-content-digest").unwrap();
        assert_eq!(format!("sha256:{}", support::sha256_hex(&get.body)), digest);
    }
    let m = c.req("GET", &paths[0], Some(&good), &accept);
    assert_eq!(m.header("content-type"), Some(MANIFEST_MEDIA_TYPE));
    assert_eq!(m.body, file_bytes(&img.blob_path(&img.manifest_digest)));
}

// ---- 5. Range requests ----------------------------------------------------------------

#[test]
fn blob_ranges() {
    let f = fixture();
    let img = f.push(
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![100_000],
            seed: 5,
        },
    );
    let (digest, size) = img.layers[0].clone();
    let data = file_bytes(&img.blob_path(&digest));
    assert_eq!(data.len() as u64, size);
    let c = Client::new(f.berth.port);
    let good = basic(GOOD);
    let path = format!("{}/blobs/{digest}", berth_path("acme/app"));
    let n = data.len();
    let cases: [(&str, usize, usize); 4] = [
        ("bytes=0-99", 0, 100),
        ("bytes=100-", 100, n),
        ("bytes=-50", n - 50, n),
        ("bytes=1000-1000", 1000, 1001),
    ];
    for (range, from, to) in cases {
        let r = c.req("GET", &path, Some(&good), &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {from}-{}/{n}", to - 1).as_str()),
            "{range}"
        );
        assert_eq!(r.body.len(), to - from, "{range}");
        assert!(r.body == data[from..to], "{range}: wrong bytes");
        assert_api_version(&r, range);
    }
    for bad in [
        "bytes=abc",
        "bytes=5-1",
        "items=0-1",
        "bytes=0-1,3-4",
        "bytes=-",
        "0-99",
    ] {
        let r = c.req("GET", &path, Some(&good), &[("Range", bad)]);
        assert_error(&r, 400, "RANGE_INVALID", bad);
    }
    // Past the end: the upstream's 416 comes through with its Content-Range.
    let r = c.req("GET", &path, Some(&good), &[("Range", "bytes=999999999-")]);
    assert_error(&r, 416, "RANGE_INVALID", "range past the end");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{n}").as_str())
    );
    let whole = c.get(&path, Some(&good));
    assert_eq!(whole.status, 200);
    assert!(whole.body == data);
}

// ---- 6. hostile input -----------------------------------------------------------------

#[test]
fn bad_input_gets_4xx_and_berth_survives() {
    let mut f = fixture();
    f.push(
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![700],
            seed: 6,
        },
    );
    let c = Client::new(f.berth.port);
    let good = basic(GOOD);
    let p = |rest: &str| format!("/v2/proxy/acme/{HOST}/{rest}");
    let d0 = format!("sha256:{}", "0".repeat(64));
    let long_repo = format!("acme/{}", "a".repeat(300));
    let huge_repo = format!("acme/{}", "b/".repeat(2500) + "c");
    let cases: Vec<(String, u16, &str)> = vec![
        (p("../x/manifests/v1"), 400, "NAME_INVALID"),
        (p("acme/../../etc/manifests/v1"), 400, "NAME_INVALID"),
        (p("acme//app/manifests/v1"), 400, "NAME_INVALID"),
        (p("/acme/app/manifests/v1"), 400, "NAME_INVALID"),
        (
            format!("/v2/proxy//{HOST}/acme/app/manifests/v1"),
            400,
            "NAME_INVALID",
        ),
        (p("Acme/App/manifests/v1"), 400, "NAME_INVALID"),
        (
            format!("/v2/proxy/ACME/{HOST}/acme/app/manifests/v1"),
            400,
            "NAME_INVALID",
        ),
        (p(&format!("{long_repo}/manifests/v1")), 400, "NAME_INVALID"),
        (p(&format!("{huge_repo}/manifests/v1")), 400, "NAME_INVALID"),
        (p("acme/%2e%2e/manifests/v1"), 400, "NAME_INVALID"),
        (p("acme/%2E%2E/%2e%2e/manifests/v1"), 400, "NAME_INVALID"),
        (p("acme/app%00/manifests/v1"), 400, "NAME_INVALID"),
        (p("acme/app%ff/manifests/v1"), 400, "NAME_INVALID"),
        (p("acme/app/blobs/sha256:abc"), 400, "DIGEST_INVALID"),
        (
            p(&format!("acme/app/blobs/{}", d0.to_uppercase())),
            400,
            "DIGEST_INVALID",
        ),
        (
            p(&format!("acme/app/blobs/sha256:{}", "g".repeat(64))),
            400,
            "DIGEST_INVALID",
        ),
        (
            p(&format!("acme/app/blobs/md5:{}", "0".repeat(32))),
            400,
            "DIGEST_INVALID",
        ),
        (p("acme/app/blobs/"), 400, "DIGEST_INVALID"),
        (p("acme/app/manifests/sha256:zz"), 400, "DIGEST_INVALID"),
        // A reference that is no valid tag names no manifest: 404 on a pull, as the
        // distribution spec (and its conformance suite) says.
        (p("acme/app/manifests/-bad"), 404, "MANIFEST_UNKNOWN"),
        (p("acme/app/manifests/.hidden"), 404, "MANIFEST_UNKNOWN"),
        (
            p(&format!("acme/app/manifests/{}", "t".repeat(129))),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (p("acme/app/manifests/a%20b"), 404, "MANIFEST_UNKNOWN"),
        (p("acme/app/tags/list?last=%2e%2e"), 400, "TAG_INVALID"),
    ];
    for (path, status, code) in &cases {
        let r = c.get(path, Some(&good));
        assert_error(&r, *status, code, &path[..path.len().min(120)]);
    }
    let manifest = p("acme/app/manifests/v1");
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = c.req(method, &manifest, Some(&good), &[]);
        assert_error(&r, 405, "UNSUPPORTED", method);
    }
    let uploads = p("acme/app/blobs/uploads/");
    for (method, path) in [
        ("POST", &uploads),
        ("GET", &uploads),
        ("POST", &"/v2/_catalog".to_string()),
    ] {
        let r = c.req(method, path, Some(&good), &[]);
        assert_error(&r, 405, "UNSUPPORTED", path);
    }
    // A request line with no HTTP semantics at all must not take the server down either.
    let mut s = TcpStream::connect(("127.0.0.1", f.berth.port)).unwrap();
    s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    s.write_all(b"\x00\xffGARBAGE\r\n\r\n").unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);

    assert!(
        f.berth.wait_exit(Duration::ZERO).is_none(),
        "berth exited:\n{}",
        f.berth.logs()
    );
    let r = c.get(&manifest, Some(&good));
    assert_eq!(r.status, 200, "berth stopped serving: {}", r.text());
    let log = f.berth.logs();
    assert!(!log.contains("panicked"), "berth panicked:\n{log}");
    // Refused names never turn into upstream requests.
    assert!(
        !f.reg
            .requests()
            .iter()
            .any(|(_, p, _)| p.contains("..") || p.contains("%2e") || p.contains("/Acme")),
        "{:?}",
        f.reg.requests()
    );
}

// ---- 7. the upstream password never leaks ---------------------------------------------

#[test]
fn upstream_password_never_leaks() {
    let canary = canary();
    let mut reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: canary.clone(),
    });
    // This upstream expects a different password, so berth's (the canary) is rejected.
    let wrong = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: "not-the-canary".into(),
    });
    let img = push_image(
        &reg,
        Some((VENDOR, &canary)),
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![50_000, 1000],
            seed: 7,
        },
    );
    let berth = start_berth(
        &[
            Up::new("up", reg.url(), HOST),
            Up::new("bad", wrong.url(), "bad.test"),
        ],
        &canary,
        // Debug logging widens the net: more of berth's internals get a chance to leak.
        &[("BERTH_LOG", "debug")],
    );
    let c = Client::new(berth.port);
    let good = basic(GOOD);
    let mut tool_output = Vec::new();

    let (pulled, text) = pull_to_oci(
        &berth_ref(&berth, "acme/app", "v1"),
        &format!("{GOOD}:{GOOD}"),
        &[],
    );
    tool_output.push(text);
    assert_eq!(pulled.manifest_digest, img.manifest_digest);

    let base = berth_path("acme/app");
    for path in [
        "/v2/".to_string(),
        format!("{base}/manifests/v1"),
        format!("{base}/manifests/nope"),
        format!("{base}/blobs/{}", img.layers[0].0),
        format!("{base}/tags/list?n=1"),
        "/v2/proxy/acme/bad.test/acme/app/manifests/v1".to_string(),
        format!("/v2/proxy/acme/bad.test/acme/app/blobs/{}", img.layers[0].0),
        "/v2/proxy/acme/bad.test/acme/app/tags/list".to_string(),
    ] {
        c.get(&path, Some(&good));
        c.req("HEAD", &path, Some(&good), &[]);
        c.get(&path, None);
    }
    let bad = c.get("/v2/proxy/acme/bad.test/acme/app/manifests/v1", Some(&good));
    assert_error(
        &bad,
        502,
        "UNAVAILABLE",
        "upstream rejecting berth's credentials",
    );
    assert!(bad.text().contains("bad"), "{}", bad.text());
    let out = skopeo_copy_to_oci(
        &format!(
            "docker://127.0.0.1:{}/proxy/acme/bad.test/acme/app:v1",
            berth.port
        ),
        Some(&format!("{GOOD}:{GOOD}")),
        support::tempdir().path(),
        &["--preserve-digests"],
    );
    assert!(!out.status.success());
    tool_output.push(String::from_utf8_lossy(&out.stderr).into_owned());

    reg.stop();
    // v1 is cached by now (and would be served stale); a tag never pulled must fail.
    let down = c.get(&format!("{base}/manifests/never-pulled"), Some(&good));
    assert_error(&down, 502, "UNAVAILABLE", "upstream stopped");
    c.get(&format!("{base}/blobs/{}", img.layers[0].0), Some(&good));

    // The log line for the last request is written when its body ends.
    let expected_lines = c.seen.borrow().len();
    support::wait_until(Duration::from_secs(5), || {
        berth.logs().matches(" request ").count() >= expected_lines
    });
    let needles = [
        canary.clone(),
        STANDARD.encode(format!("{VENDOR}:{canary}")),
        STANDARD.encode(&canary),
    ];
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for (i, r) in c.seen.borrow().iter().enumerate() {
        for (k, v) in &r.headers {
            haystacks.push((format!("response {i} header {k}"), v.clone()));
        }
        haystacks.push((format!("response {i} body"), r.text()));
    }
    for (i, t) in tool_output.iter().enumerate() {
        haystacks.push((format!("skopeo output {i}"), t.clone()));
    }
    haystacks.push(("berth log".into(), berth.logs()));
    assert!(c.seen.borrow().len() >= 24, "too few responses collected");
    for (where_, text) in &haystacks {
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "canary leaked in {where_}: {text}"
            );
        }
    }
    // Sanity: the scan would have caught it; berth did authenticate to the good upstream.
    let fp = &support::sha256_hex(b"LICENSE-good-0001")[..32];
    assert!(berth.logs().contains(&format!("license=\"{fp}\"")));
}

// ---- 8. upstream error mapping --------------------------------------------------------

#[test]
fn upstream_errors_map_to_oci_errors() {
    let mut f = fixture();
    let img = f.push(
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![900],
            seed: 8,
        },
    );
    let c = Client::new(f.berth.port);
    let good = basic(GOOD);
    let base = berth_path("acme/app");
    let r = c.get(&format!("{base}/manifests/nope"), Some(&good));
    assert_error(&r, 404, "MANIFEST_UNKNOWN", "unknown tag");
    let r = c.get(
        &format!("{}/manifests/v1", berth_path("acme/missing")),
        Some(&good),
    );
    assert_error(&r, 404, "MANIFEST_UNKNOWN", "unknown upstream repository");
    let r = c.get(
        &format!("{base}/blobs/sha256:{}", "0".repeat(64)),
        Some(&good),
    );
    assert_error(&r, 404, "BLOB_UNKNOWN", "unknown blob");

    let limited = FakeServer::start(|_| {
        FakeResponse::json(
            429,
            &serde_json::json!({"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}),
        )
        .header("retry-after", "7")
    });
    let berth429 = start_berth(&[Up::new("up", limited.url(), HOST)], &f.canary, &[]);
    let c429 = Client::new(berth429.port);
    for path in [
        format!("{base}/manifests/v1"),
        format!("{base}/blobs/{}", img.layers[0].0),
        format!("{base}/tags/list"),
    ] {
        let r = c429.get(&path, Some(&good));
        assert_eq!(r.status, 429, "{path}: {}", r.text());
        assert_eq!(r.header("retry-after"), Some("7"), "{path}");
        assert_api_version(&r, &path);
    }
    assert!(limited.request_count() >= 3);

    f.reg.stop();
    let r = c.get(&format!("{base}/manifests/v1"), Some(&good));
    assert_error(&r, 502, "UNAVAILABLE", "upstream stopped");
    let msg = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("upstream up "),
        "message does not name the upstream: {msg}"
    );
    let r = c.get(&format!("{base}/blobs/{}", img.layers[0].0), Some(&good));
    assert_error(&r, 502, "UNAVAILABLE", "upstream stopped (blob)");
}

// ---- 9. Bearer token flow -------------------------------------------------------------

fn berth_token_requests(realm: &TokenRealm) -> Vec<support::fake::Recorded> {
    realm
        .requests()
        .into_iter()
        .filter(|r| {
            r.header("user-agent")
                .is_some_and(|u| u.starts_with("berth/"))
        })
        // berth checks its credentials once at start with a token of no scope (the
        // startup check, `app::warm_up`); the pulls' tokens all have one.
        .filter(|r| !r.query_all("scope").is_empty())
        .collect()
}

#[test]
fn bearer_upstream_tokens_are_cached_and_refreshed() {
    let canary = canary();
    let realm = TokenRealm::start(VENDOR, &canary, 300);
    let reg = Registry::start(realm.registry_auth());
    let img = push_image(
        &reg,
        Some((VENDOR, &canary)),
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![300_000, 2000],
            seed: 9,
        },
    );
    // A front that can make the registry "forget" a token once, as after a key rotation.
    let reject_next = Arc::new(AtomicBool::new(false));
    let (origin, flag) = (reg.url(), Arc::clone(&reject_next));
    let challenge = format!(
        "Bearer realm=\"{}\",service=\"{}\",scope=\"repository:acme/app:pull\"",
        realm.realm_url(),
        realm.service
    );
    let front = FakeServer::start(move |req| {
        let bearer = req
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer "));
        if bearer && flag.swap(false, Ordering::SeqCst) {
            return FakeResponse::json(
                401,
                &serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"token revoked"}]}),
            )
            .header("www-authenticate", &challenge);
        }
        FakeResponse::proxy_to(&origin, req)
    });
    let berth = start_berth(&[Up::new("up", front.url(), HOST)], &canary, &[]);
    let creds = format!("{GOOD}:{GOOD}");

    let (pulled, _) = pull_to_oci(&berth_ref(&berth, "acme/app", "v1"), &creds, &[]);
    assert_eq!(pulled.blob_digests, expected_blobs(&img));
    let reqs = berth_token_requests(&realm);
    assert_eq!(reqs.len(), 1, "one token for one scope expected: {reqs:?}");
    let want_basic = format!("Basic {}", STANDARD.encode(format!("{VENDOR}:{canary}")));
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some(want_basic.as_str()));
        assert_eq!(r.query("service").as_deref(), Some(realm.service.as_str()));
        assert_eq!(r.query_all("scope"), ["repository:acme/app:pull"]);
    }

    let (again, _) = pull_to_oci(&berth_ref(&berth, "acme/app", "v1"), &creds, &[]);
    assert_eq!(again, pulled);
    assert_eq!(
        berth_token_requests(&realm).len(),
        1,
        "second pull did not reuse the cached token"
    );

    // The upstream refuses the cached token once: berth must drop it, fetch a new one
    // and retry, and the customer sees a plain success.
    reject_next.store(true, Ordering::SeqCst);
    let c = Client::new(berth.port);
    let r = c.get(
        &format!("{}/manifests/v1", berth_path("acme/app")),
        Some(&basic(GOOD)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !reject_next.load(Ordering::SeqCst),
        "the fault was never injected"
    );
    assert_eq!(
        berth_token_requests(&realm).len(),
        2,
        "no fresh token after a 401"
    );
    let (third, _) = pull_to_oci(&berth_ref(&berth, "acme/app", "v1"), &creds, &[]);
    assert_eq!(third, pulled);
    assert_eq!(berth_token_requests(&realm).len(), 2);
}

// ---- 10. redirects to another origin --------------------------------------------------

#[test]
fn blob_redirect_to_other_origin_drops_authorization() {
    let f = fixture();
    let img = f.push(
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![2 * MIB, 30_000],
            seed: 10,
        },
    );
    let layout = img.layout_dir.clone();
    let cdn = FakeServer::start(move |req| match req.path().strip_prefix("/cdn/") {
        Some(digest) => FakeResponse::file(support::image::blob_path(&layout, digest))
            .header("content-type", "application/octet-stream"),
        None => FakeResponse::bytes(404, "no"),
    });
    let (origin, cdn_url) = (f.reg.url(), cdn.url());
    let front = FakeServer::start(move |req| {
        let is_blob_get = req.method == "GET" && req.path().contains("/blobs/sha256:");
        if is_blob_get && req.header("authorization").is_some() {
            let digest = req.path().rsplit('/').next().unwrap();
            return FakeResponse::redirect(307, &format!("{cdn_url}/cdn/{digest}?sig=x"));
        }
        FakeResponse::proxy_to(&origin, req)
    });
    let berth = start_berth(&[Up::new("up", front.url(), HOST)], &f.canary, &[]);
    let (pulled, _) = pull_to_oci(
        &berth_ref(&berth, "acme/app", "v1"),
        &format!("{GOOD}:{GOOD}"),
        &[],
    );
    assert_eq!(pulled.blob_digests, expected_blobs(&img));
    for (d, _) in &img.layers {
        assert!(
            cdn.count("GET", d) >= 1,
            "layer {d} was not served by the CDN"
        );
        assert!(
            front
                .requests()
                .iter()
                .any(|r| r.path().ends_with(d.as_str()) && r.header("authorization").is_some()),
            "front never saw an authorized GET for {d}"
        );
    }
    let leaked: Vec<_> = cdn
        .requests()
        .into_iter()
        .filter(|r| r.header("authorization").is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "Authorization sent to another origin: {leaked:?}"
    );
}

// ---- 11. streaming, not buffering -----------------------------------------------------

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[test]
fn large_blob_is_streamed_with_bounded_memory() {
    const BLOB_MIB: u64 = 200;
    let f = fixture();
    let img = f.push(
        "acme/big",
        "v1",
        &ImageSpec {
            layer_sizes: vec![BLOB_MIB * MIB],
            seed: 13,
        },
    );
    let (digest, size) = img.layers[0].clone();
    let pid = f.berth.pid();
    let before = proc_status_kib(pid, "VmRSS").expect("read berth VmRSS");

    let peak_rss = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak_rss), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(v) = proc_status_kib(pid, "VmRSS") {
                    peak.fetch_max(v, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    // A slow reader: a proxy that buffered would have read the whole blob from the
    // fast local upstream long before this client took it.
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", f.berth.port)).unwrap();
    s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {}/blobs/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        berth_path("acme/big"),
        basic(GOOD)
    )
    .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut hash = Context::new(&SHA256);
    let mut got: u64 = 0;
    let mut body_started = false;
    let mut since_pause = 0usize;
    loop {
        let n = s.read(&mut buf).expect("read blob");
        if n == 0 {
            break;
        }
        if body_started {
            hash.update(&buf[..n]);
            got += n as u64;
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some((status, _, split)) = http::parse_head(&head) {
                assert_eq!(status, 200);
                hash.update(&head[split..]);
                got += (head.len() - split) as u64;
                body_started = true;
            }
        }
        since_pause += n;
        // ~80 MiB/s at most, so the transfer lasts seconds and the sampler sees it.
        if since_pause >= 8 << 20 {
            since_pause = 0;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let elapsed = t.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    assert_eq!(got, size, "short body");
    assert_eq!(
        format!("sha256:{}", support::hex(hash.finish().as_ref())),
        digest
    );

    let hwm = proc_status_kib(pid, "VmHWM").expect("read berth VmHWM");
    let peak = peak_rss.load(Ordering::SeqCst);
    eprintln!(
        "MEMORY: berth served a {BLOB_MIB} MiB blob in {elapsed:?}: VmRSS before {} MiB, \
         sampled peak VmRSS {} MiB, VmHWM {} MiB",
        before / 1024,
        peak / 1024,
        hwm / 1024
    );
    assert!(
        hwm < 64 * 1024,
        "berth's peak RSS {} MiB suggests it buffered the {BLOB_MIB} MiB blob",
        hwm / 1024
    );
}

// ---- 12. bad configuration ------------------------------------------------------------

fn run_berth(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let r = support::berth::run_cli(args, env, None, Duration::from_secs(10));
    (r.code, r.stdout + &r.stderr)
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let canary = canary();
    let dir = support::tempdir();
    let cache = dir.path().join("cache");
    let port = support::free_port();
    let good = config_yaml(
        port,
        &cache,
        &[Up::new("up", "http://127.0.0.1:9".into(), HOST)],
    );
    let unknown_upstream = good.replace("upstreams: [up]", "upstreams: [up, nope]");
    let missing_env = good.replace("${UPSTREAM_PASSWORD}", "${BERTH_TEST_UNSET_VAR}");
    let unknown_field = good.replace("    username:", "    pasword: x\n    username:");
    let env = [("UPSTREAM_PASSWORD", canary.as_str())];

    let path = dir.path().join("good.yaml");
    std::fs::write(&path, &good).unwrap();
    let (code, out) = run_berth(&["check-config", "--config", path.to_str().unwrap()], &env);
    assert_eq!(code, Some(0), "good config refused: {out}");
    assert!(
        !out.contains(&canary),
        "canary in check-config output: {out}"
    );

    for (name, yaml, must_mention) in [
        (
            "unknown-upstream",
            &unknown_upstream,
            &["apps[0].upstreams", "nope"][..],
        ),
        (
            "missing-env",
            &missing_env,
            &["upstreams[0].password", "BERTH_TEST_UNSET_VAR"][..],
        ),
        (
            "unknown-field",
            &unknown_field,
            &["upstreams[0]", "pasword"][..],
        ),
    ] {
        assert_ne!(yaml, &good, "{name}: the mutation did not apply");
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let p = path.to_str().unwrap();
        for sub in ["check-config", "serve"] {
            let (code, out) = run_berth(&[sub, "--config", p], &env);
            assert!(
                code.is_some_and(|c| c != 0),
                "{sub} {name}: exit {code:?}: {out}"
            );
            for m in must_mention {
                assert!(
                    out.contains(m),
                    "{sub} {name}: output does not name {m:?}: {out}"
                );
            }
            assert!(!out.contains(&canary), "{sub} {name}: canary leaked: {out}");
        }
    }
}
