//! Integration tests of the admin HTTP API (`/api/v1` on `server.admin_listen`): the real
//! berth binary with SQLite state in its data directory, a real `docker-registry` upstream
//! with images pushed by skopeo, licenses, keys and admin tokens managed over the API and
//! used for real pulls on the customer port. Every answer of the API is validated against
//! the schemas of the OpenAPI document berth serves, and every answer and log line is
//! scanned for the secrets in play.

#[path = "support/http.rs"]
mod http;
mod support;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use http::Resp;
use support::berth::Berth;
use support::image::{push_image, ImageSpec, MANIFEST_MEDIA_TYPE};
use support::registry::{Registry, RegistryAuth};

const HOST: &str = "upstream.test";
const VENDOR: &str = "vendor";
/// How long a change made over the API may take to be in force on the customer port (and
/// for admin tokens, on the admin port): the directory refreshes every 250 ms.
const IN_FORCE: Duration = Duration::from_secs(1);

fn canary(prefix: &str) -> String {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    format!("{prefix}{}", support::hex(&b))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One answer seen, for the secret scan: `allowed` is the one secret it may carry (the
/// create or rotate answer of that secret).
struct Seen {
    what: String,
    text: String,
    allowed: Option<String>,
}

/// A real upstream with an image for each of two apps, and berth in front of it with an
/// admin listener and one config-file admin token and license.
struct Fixture {
    _reg: Registry,
    berth: Berth,
    _data: tempfile::TempDir,
    port: u16,
    admin: u16,
    /// The config file's admin token (`ops`).
    token: String,
    /// The config file's license (its id is its secret).
    config_license: String,
    upstream_password: String,
    /// The served OpenAPI document, once fetched.
    doc: RefCell<Value>,
    seen: RefCell<Vec<Seen>>,
    /// (METHOD, path template) of every documented operation answered.
    covered: RefCell<BTreeSet<(String, String)>>,
}

impl Fixture {
    fn start() -> Fixture {
        let upstream_password = canary("upstream-pw-");
        let reg = Registry::start(RegistryAuth::Htpasswd {
            user: VENDOR.into(),
            password: upstream_password.clone(),
        });
        for (i, repo) in ["acme/api", "other/tool"].iter().enumerate() {
            push_image(
                &reg,
                Some((VENDOR, &upstream_password)),
                repo,
                "v1",
                &ImageSpec {
                    layer_sizes: vec![1500 + i as u64],
                    seed: 7 + i as u64,
                },
            );
        }
        let token = canary("berth_adm_canary");
        let config_license = canary("LICENSE-config-");
        let data = support::tempdir();
        let (port, admin) = (support::free_port(), support::free_port());
        let yaml = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
             cache: {{ dir: \"{data}/cache\" }}\n\
             state: {{ sqlite: \"{data}/state.db\" }}\n\
             auth:\n  admin_tokens:\n    - {{ name: ops, sha256: \"{sha}\" }}\n\
             upstreams:\n  - {{ name: up, url: \"{url}\", host: {HOST}, username: {VENDOR}, password: \"{upstream_password}\" }}\n\
             apps:\n  - {{ slug: acme, upstreams: [up], images: [\"{HOST}/acme/api:v1\"] }}\n  - {{ slug: other, upstreams: [up] }}\n\
             licenses:\n  - {{ id: {config_license}, app: acme, customer: Config Corp }}\n",
            data = data.path().display(),
            sha = support::sha256_hex(token.as_bytes()),
            url = reg.url(),
        );
        let berth = Berth::start_on(port, &yaml, &[]);
        assert!(
            support::wait_for_port(admin, Duration::from_secs(10)),
            "admin listener not up"
        );
        Fixture {
            _reg: reg,
            berth,
            _data: data,
            port,
            admin,
            token,
            config_license,
            upstream_password,
            doc: RefCell::new(Value::Null),
            seen: RefCell::new(Vec::new()),
            covered: RefCell::new(BTreeSet::new()),
        }
    }

    fn record(&self, what: String, r: &Resp, allowed: Option<String>) {
        let mut text = r.text();
        for (k, v) in &r.headers {
            text.push_str(&format!("\n{k}: {v}"));
        }
        self.seen.borrow_mut().push(Seen {
            what,
            text,
            allowed,
        });
    }

    /// A raw request to the admin listener, recorded but not validated.
    fn raw(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Resp {
        let mut h = Vec::new();
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        if let Some(c) = content_type {
            h.push(("Content-Type", c));
        }
        let r = http::request(self.admin, method, path, &h, body);
        self.record(format!("admin {method} {path}"), &r, None);
        r
    }

    /// `method` on the documented route `template` (its `{…}` filled from `args` in
    /// order, `query` appended), as `token`, with a JSON body: the answer is validated
    /// against the document's schema for its status and media type.
    #[allow(clippy::too_many_arguments)]
    fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        template: &str,
        args: &[&str],
        query: &str,
        body: Option<&Value>,
    ) -> Resp {
        let path = fill(template, args);
        let target = if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        };
        let auth = token.map(bearer);
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let r = self.raw(
            method,
            &target,
            auth.as_deref(),
            body.map(|_| "application/json"),
            &bytes,
        );
        self.check(method, template, &r);
        r
    }

    /// As the config file's admin token.
    fn call(&self, method: &str, template: &str, args: &[&str], body: Option<&Value>) -> Resp {
        self.call_as(Some(&self.token), method, template, args, "", body)
    }

    fn get(&self, template: &str, args: &[&str], query: &str) -> Resp {
        self.call_as(Some(&self.token), "GET", template, args, query, None)
    }

    /// The answer `r` to `method template` is what the document says for its status.
    fn check(&self, method: &str, template: &str, r: &Resp) {
        let doc = self.doc.borrow();
        assert!(
            doc.is_object(),
            "fetch the document before checking answers"
        );
        let op = &doc["paths"][template][method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{method} {template} is answered but not documented"
        );
        self.covered
            .borrow_mut()
            .insert((method.to_string(), template.to_string()));
        let status = r.status.to_string();
        let documented = &op["responses"][&status];
        assert!(
            documented.is_object(),
            "{method} {template} answered {status}, which its operation does not document: {}",
            r.text()
        );
        let response = resolve(&doc, documented);
        let media = r
            .header("content-type")
            .expect("an answer without Content-Type")
            .to_string();
        let schema = &response["content"][&media]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template} {status}: media type {media} not documented"
        );
        assert_valid(
            &doc,
            schema,
            &r.json(),
            &format!("{method} {template} {status}"),
        );
        for (name, h) in response["headers"].as_object().into_iter().flatten() {
            let value = r
                .header(name)
                .unwrap_or_else(|| panic!("{method} {template} {status}: no {name} header"));
            if let Some(c) = h["schema"]["const"].as_str() {
                assert_eq!(value, c, "{method} {template} {status}: {name}");
            }
        }
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }

    /// A problem answer from outside any operation (an unknown route, a wrong method).
    fn check_problem(&self, r: &Resp, status: u16) {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let doc = self.doc.borrow();
        assert_valid(
            &doc,
            &json!({"$ref": "#/components/schemas/Problem"}),
            &r.json(),
            &format!("problem {status}"),
        );
        assert_eq!(r.json()["status"], status);
    }

    /// A manifest GET on the customer port (recorded for the scan).
    fn pull(&self, app: &str, repo: &str, authorization: &str) -> Resp {
        let path = format!("/v2/proxy/{app}/{HOST}/{repo}/manifests/v1");
        let r = http::get(
            self.port,
            &path,
            &[
                ("Accept", MANIFEST_MEDIA_TYPE),
                ("Authorization", authorization),
            ],
        );
        self.record(format!("customer GET {path}"), &r, None);
        r
    }

    /// A bearer token for pulling `app/repo` from berth's token endpoint.
    fn customer_token(&self, secret: &str, app: &str, repo: &str) -> String {
        let scope = format!("repository:proxy/{app}/{HOST}/{repo}:pull");
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("service", &format!("127.0.0.1:{}", self.port));
        q.append_pair("scope", &scope);
        let r = http::get(
            self.port,
            &format!("/token?{}", q.finish()),
            &[("Authorization", &basic("anyone", secret))],
        );
        assert_eq!(r.status, 200, "GET /token: {}", r.text());
        let v = r.json();
        let t = v["token"].as_str().unwrap().to_string();
        // The token answer carries the token, which is no canary; nothing else may be in it.
        self.record("customer GET /token".into(), &r, None);
        t
    }

    /// Waits (at most [`IN_FORCE`]) until pulling with `authorization` answers `status`;
    /// returns how long it took.
    fn pull_until(&self, app: &str, repo: &str, authorization: &str, status: u16) -> Duration {
        let start = Instant::now();
        let mut last = None;
        let ok = support::wait_until(IN_FORCE, || {
            let r = self.pull(app, repo, authorization);
            let done = r.status == status;
            last = Some(r);
            done
        });
        let last = last.unwrap();
        assert!(
            ok,
            "pull of {app}/{repo} still answers {} after {IN_FORCE:?} (wanted {status}): {}",
            last.status,
            last.text()
        );
        start.elapsed()
    }
}

/// `template` with its `{…}` segments replaced by `args` in order.
fn fill(template: &str, args: &[&str]) -> String {
    let mut args = args.iter();
    template
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                args.next()
                    .unwrap_or_else(|| panic!("no argument for {seg} of {template}"))
                    .to_string()
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Follows an OpenAPI `$ref` (`#/…`), once.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("a local $ref"))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

/// `instance` against `schema` (JSON Schema 2020-12, the dialect of OpenAPI 3.1), its
/// `$ref`s resolved within the document's components; formats are checked too.
fn assert_valid(doc: &Value, schema: &Value, instance: &Value, what: &str) {
    let validator = compile(doc, schema, what);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the answer does not fit its schema:\n  {}\nanswer: {instance}",
        errors.join("\n  ")
    );
}

/// `schema` as a validator, with the document's components beside it for its `$ref`s.
fn compile(doc: &Value, schema: &Value, what: &str) -> jsonschema::Validator {
    let mut root = schema.as_object().expect("a schema object").clone();
    root.insert("components".into(), doc["components"].clone());
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&Value::Object(root))
        .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"))
}

/// Every `$ref` in `v` points at something in `doc`.
fn refs_resolve(doc: &Value, v: &Value, at: &str) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                let p = r
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("{at}: remote $ref {r}"));
                assert!(doc.pointer(p).is_some(), "{at}: dangling $ref {r}");
            }
            for (k, x) in m {
                refs_resolve(doc, x, &format!("{at}/{k}"));
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs_resolve(doc, x, at)),
        _ => {}
    }
}

/// The routes this test exercises: the document must describe exactly these, so a route
/// added without its documentation (or documented and never tried) fails here.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/licenses"),
    ("POST", "/api/v1/licenses"),
    ("GET", "/api/v1/licenses/{id}"),
    ("PATCH", "/api/v1/licenses/{id}"),
    ("POST", "/api/v1/licenses/{id}/revoke"),
    ("POST", "/api/v1/licenses/{id}/rotate"),
    ("GET", "/api/v1/apikeys"),
    ("POST", "/api/v1/apikeys"),
    ("GET", "/api/v1/apikeys/{id}"),
    ("DELETE", "/api/v1/apikeys/{id}"),
    ("POST", "/api/v1/apikeys/{id}/revoke"),
    ("GET", "/api/v1/admin-tokens"),
    ("POST", "/api/v1/admin-tokens"),
    ("POST", "/api/v1/admin-tokens/{id}/revoke"),
    ("GET", "/api/v1/apps"),
    ("GET", "/api/v1/upstreams"),
    ("POST", "/api/v1/upstreams/{name}/test"),
    ("GET", "/api/v1/usage"),
    ("GET", "/api/v1/audit"),
    ("POST", "/api/v1/gc"),
    ("GET", "/api/v1/openapi.json"),
];

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

#[test]
fn admin_api_end_to_end() {
    let f = Fixture::start();
    let mut secrets: Vec<String> = vec![
        f.token.clone(),
        f.config_license.clone(),
        f.upstream_password.clone(),
    ];

    the_document_is_openapi_3_1(&f);
    refusals(&f);
    secrets.extend(licenses(&f));
    secrets.extend(api_keys(&f));
    secrets.extend(admin_tokens(&f));
    catalog(&f);
    reports(&f);
    gc(&f);

    // Every route of the table was answered (and so checked against its schemas).
    let covered = f.covered.borrow().clone();
    let exercised: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(covered, exercised, "routes answered vs routes exercised");

    no_secret_leaks(&f, &secrets);
}

/// The served document is OpenAPI 3.1, documents exactly the routes exercised here, its
/// `$ref`s resolve, each schema compiles, and each operation says how it refuses.
fn the_document_is_openapi_3_1(f: &Fixture) {
    let r = f.raw(
        "GET",
        "/api/v1/openapi.json",
        Some(&bearer(&f.token)),
        None,
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    *f.doc.borrow_mut() = doc.clone();
    f.check("GET", "/api/v1/openapi.json", &r);

    let version = str_of(&doc, "openapi");
    assert!(version.starts_with("3.1."), "openapi: {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    refs_resolve(&doc, &doc, "#");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let (scheme_name, scheme) = schemes
        .iter()
        .find(|(_, s)| s["type"] == "http" && s["scheme"] == "bearer")
        .expect("a bearer security scheme");
    assert!(
        doc["security"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.get(scheme_name).is_some()),
        "the bearer scheme {scheme} is not required by default"
    );
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        compile(&doc, schema, name);
    }

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            documented.insert((method.to_ascii_uppercase(), path.clone()));
            let responses = op["responses"].as_object().unwrap();
            for status in ["401", "429", "500", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} does not document {status}"
                );
            }
            for (status, resp) in responses {
                let resp = resolve(&doc, resp);
                let media = if status.starts_with('2') {
                    "application/json"
                } else {
                    "application/problem+json"
                };
                assert!(
                    resp["content"][media]["schema"].is_object(),
                    "{method} {path} {status}: no {media} schema"
                );
            }
            if let Some(body) = op.get("requestBody") {
                assert!(body["content"]["application/json"]["schema"].is_object());
            }
        }
    }
    let exercised: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, exercised,
        "documented routes vs routes exercised"
    );
}

/// No token, a wrong one, the customer port, oversized, malformed and unknown bodies, a
/// wrong content type, an unknown app, a wrong method.
fn refusals(f: &Fixture) {
    let lic = "/api/v1/licenses";
    for (auth, what) in [
        (None, "no token"),
        (Some(bearer("berth_adm_wrong")), "a wrong token"),
        (Some(basic("ops", &f.token)), "the token as Basic"),
    ] {
        let r = f.raw("GET", lic, auth.as_deref(), None, b"");
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        f.check("GET", lic, &r);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"berth-admin\""),
            "{what}"
        );
    }
    // A refused caller learns nothing about routes, and its body is not read.
    let r = f.raw("GET", "/api/v1/nothing", None, None, b"");
    f.check_problem(&r, 401);
    let r = f.raw(
        "POST",
        lic,
        None,
        Some("application/json"),
        &vec![b' '; 200 * 1024],
    );
    f.check_problem(&r, 401);

    // The customer port never serves the API, whatever the credentials.
    for path in [lic, "/api/v1/openapi.json", "/api/v1/admin-tokens"] {
        let r = http::get(f.port, path, &[("Authorization", &bearer(&f.token))]);
        f.record(format!("customer GET {path}"), &r, None);
        assert_eq!(r.status, 404, "customer port {path}: {}", r.text());
        assert_eq!(r.code(), "NAME_UNKNOWN");
    }
    let r = http::request(
        f.port,
        "POST",
        lic,
        &[
            ("Authorization", &bearer(&f.token)),
            ("Content-Type", "application/json"),
        ],
        br#"{"app":"acme","customer":"Sneaky"}"#,
    );
    f.record("customer POST".into(), &r, None);
    assert_eq!(r.status, 404, "customer port POST: {}", r.text());

    // The admin listener's probes and metrics are as they were.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = http::get(f.admin, path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }

    let auth = bearer(&f.token);
    let post = |body: &[u8], ct: Option<&str>| {
        let r = f.raw("POST", lic, Some(&auth), ct, body);
        f.check("POST", lic, &r);
        r
    };
    // Over 64 KiB, declared: refused before reading.
    let big =
        serde_json::to_vec(&json!({"app": "acme", "customer": "x".repeat(70 * 1024)})).unwrap();
    assert_eq!(post(&big, Some("application/json")).status, 413);
    // Over 64 KiB, chunked: refused when the limit is crossed.
    let r = chunked(f.admin, lic, &auth, &big);
    f.record("admin chunked POST".into(), &r, None);
    f.check("POST", lic, &r);
    assert_eq!(r.status, 413);
    let r = post(
        b"{\"app\": \"acme\", \"customer\":",
        Some("application/json"),
    );
    assert_eq!(r.status, 400, "malformed JSON");
    let r = post(
        br#"{"app":"acme","customer":"A","bogus":true}"#,
        Some("application/json"),
    );
    assert_eq!(r.status, 400, "unknown field: {}", r.text());
    assert_eq!(r.json()["field"], "bogus");
    let r = post(br#"{"app":"acme","customer":7}"#, Some("application/json"));
    assert_eq!(r.status, 400, "wrong type: {}", r.text());
    assert_eq!(r.json()["field"], "customer");
    let r = post(br#"{"app":"acme","customer":"A"}"#, Some("text/plain"));
    assert_eq!(r.status, 415);
    let r = post(br#"{"app":"acme","customer":"A"}"#, None);
    assert_eq!(r.status, 415);
    let r = post(b"", Some("application/json"));
    assert_eq!(r.status, 400, "no body");
    let r = f.call(
        "POST",
        lic,
        &[],
        Some(&json!({"app": "nope", "customer": "A"})),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["field"], "app");
    assert!(str_of(&r.json(), "detail").contains("nope"));

    for q in [
        "limit=0",
        "limit=501",
        "limit=ten",
        "state=gone",
        "color=blue",
    ] {
        let r = f.get(lic, &[], q);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.json()["field"].is_string(), "{q}");
    }

    // A method the route does not answer; a route that does not exist.
    let r = f.raw("DELETE", lic, Some(&auth), None, b"");
    f.check_problem(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let r = f.raw("PUT", "/api/v1/licenses/lic_x", Some(&auth), None, b"");
    f.check_problem(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, PATCH"));
    let r = f.raw("GET", "/api/v1/nothing", Some(&auth), None, b"");
    f.check_problem(&r, 404);
    let r = f.raw("GET", "/api/v2/licenses", Some(&auth), None, b"");
    f.check_problem(&r, 404);
}

/// A chunked POST (no declared length) of `body`.
fn chunked(port: u16, path: &str, auth: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(http::TIMEOUT)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    for c in body.chunks(8192) {
        // The server may answer and close once the limit is crossed.
        if s.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .is_err()
            || s.write_all(c).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let (status, headers, split) = http::parse_head(&all).expect("a response head");
    let mut r = Resp {
        status,
        headers,
        body: all[split..].to_vec(),
    };
    if r.header("transfer-encoding").is_some() {
        panic!("unexpected chunked answer");
    }
    r.body.truncate(
        r.header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(r.body.len()),
    );
    r
}

/// Licenses over the API, in force on the customer port within a second: create, pull,
/// extend (also into the past and back), rotate, revoke (tokens issued before included);
/// config-file licenses are listed and read-only; pages follow on.
fn licenses(f: &Fixture) -> Vec<String> {
    let mut secrets = Vec::new();
    let lic = "/api/v1/licenses";
    let one = "/api/v1/licenses/{id}";

    // The config file's license: listed by its fingerprint, origin config, read-only.
    let r = f.get(lic, &[], "");
    assert_eq!(r.status, 200);
    let listed = r.json();
    let config = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["origin"] == "config")
        .unwrap_or_else(|| panic!("no config license in {listed}"))
        .clone();
    assert_eq!(config["customer"], "Config Corp");
    let config_id = str_of(&config, "id").to_string();
    assert_ne!(config_id, f.config_license);
    let r = f.call(
        "PATCH",
        one,
        &[&config_id],
        Some(&json!({"expires": "30d"})),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    for action in ["revoke", "rotate"] {
        let r = f.call("POST", &format!("{one}/{action}"), &[&config_id], None);
        assert_eq!(r.status, 409, "{action} of a config license: {}", r.text());
    }
    let r = f.get(one, &[&config_id], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "active");
    f.pull_until("acme", "acme/api", &basic("x", &f.config_license), 200);

    // Create: the secret pulls within a second.
    let r = f.call(
        "POST",
        lic,
        &[],
        Some(&json!({"app": "acme", "customer": "Canary Bank", "expires": "2031-06-30"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let id = str_of(&created, "id").to_string();
    let secret = str_of(&created, "secret").to_string();
    mark_allowed(f, &secret);
    secrets.push(secret.clone());
    assert!(id.starts_with("lic_") && secret.starts_with("berth_lic_"));
    assert_eq!(created["expires"], "2031-07-01T00:00:00Z");
    assert_eq!(created["origin"], "store");
    assert!(str_of(&created, "docker_login").contains(&secret));
    let took = f.pull_until("acme", "acme/api", &basic(&id, &secret), 200);
    eprintln!("created license pulls after {took:?}");
    // Entitled to its app only.
    let r = f.pull("other", "other/tool", &basic(&id, &secret));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = f.get(one, &[&id], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["customer"], "Canary Bank");
    let r = f.get(one, &["lic_doesnotexist"], "");
    assert_eq!(r.status, 404);
    // A secret pasted where the id goes is neither echoed nor logged (the scan checks).
    let r = f.get(one, &[&secret], "");
    assert_eq!(r.status, 404);

    // Extend: a new expiry; into the past refuses pulls, null makes it eternal again.
    let r = f.call(
        "PATCH",
        one,
        &[&id],
        Some(&json!({"expires": "2032-01-31T12:00:00Z"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["expires"], "2032-01-31T12:00:00Z");
    let r = f.call(
        "PATCH",
        one,
        &[&id],
        Some(&json!({"expires": "2020-01-01T00:00:00Z"})),
    );
    assert_eq!(r.json()["state"], "expired");
    f.pull_until("acme", "acme/api", &basic(&id, &secret), 401);
    let r = f.call("PATCH", one, &[&id], Some(&json!({"expires": null})));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["expires"], Value::Null);
    assert_eq!(r.json()["state"], "active");
    f.pull_until("acme", "acme/api", &basic(&id, &secret), 200);
    // `expires` must be said: leaving it out is not "never".
    let r = f.call("PATCH", one, &[&id], Some(&json!({})));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["field"], "expires");
    let r = f.call("PATCH", one, &[&id], Some(&json!({"expires": "someday"})));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["field"], "expires");
    let r = f.call(
        "PATCH",
        one,
        &["lic_doesnotexist"],
        Some(&json!({"expires": "1d"})),
    );
    assert_eq!(r.status, 404);

    // Rotate: the old secret stops, the new one works.
    let r = f.call("POST", "/api/v1/licenses/{id}/rotate", &[&id], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let rotated = str_of(&r.json(), "secret").to_string();
    mark_allowed(f, &rotated);
    secrets.push(rotated.clone());
    assert_ne!(rotated, secret);
    assert_eq!(r.json()["id"], id.as_str());
    f.pull_until("acme", "acme/api", &basic(&id, &secret), 401);
    f.pull_until("acme", "acme/api", &basic(&id, &rotated), 200);

    // Revoke: the secret and a token issued before are refused within a second.
    let token = f.customer_token(&rotated, "acme", "acme/api");
    f.pull_until("acme", "acme/api", &bearer(&token), 200);
    let r = f.call("POST", "/api/v1/licenses/{id}/revoke", &[&id], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "revoked");
    let revoked_at = Instant::now();
    f.pull_until("acme", "acme/api", &basic(&id, &rotated), 401);
    f.pull_until("acme", "acme/api", &bearer(&token), 401);
    assert!(revoked_at.elapsed() < IN_FORCE * 2);
    let r = f.call(
        "POST",
        "/api/v1/licenses/{id}/revoke",
        &["lic_doesnotexist"],
        None,
    );
    assert_eq!(r.status, 404);

    // Filters and pages.
    for customer in ["Page One", "Page Two"] {
        let r = f.call("POST", lic, &[], Some(&json!({"app": "other", "customer": customer, "images": [format!("{HOST}/other/*")]})));
        assert_eq!(r.status, 201, "{}", r.text());
        let s = str_of(&r.json(), "secret").to_string();
        mark_allowed(f, &s);
        secrets.push(s);
    }
    let all: Vec<String> = f.get(lic, &[], "").json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| str_of(l, "id").to_string())
        .collect();
    assert_eq!(all.len(), 4, "{all:?}");
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "limit=1".to_string()
        } else {
            format!("limit=1&after={after}")
        };
        let page = f.get(lic, &[], &q).json();
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
        paged.push(str_of(&page["items"][0], "id").to_string());
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(paged, all, "pages follow on without gaps or repeats");
    let other = f.get(lic, &[], "app=other").json();
    assert_eq!(other["items"].as_array().unwrap().len(), 2);
    assert!(other["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["app"] == "other"));
    let revoked = f.get(lic, &[], "state=revoked").json();
    assert_eq!(revoked["items"].as_array().unwrap().len(), 1);
    assert_eq!(revoked["items"][0]["id"], id.as_str());
    secrets
}

/// API keys: scoped to their apps, revoked by POST or DELETE.
fn api_keys(f: &Fixture) -> Vec<String> {
    let mut secrets = Vec::new();
    let keys = "/api/v1/apikeys";
    let r = f.call(
        "POST",
        keys,
        &[],
        Some(&json!({"name": "ci-acme", "apps": ["acme"], "actions": ["pull"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let key_id = str_of(&r.json(), "id").to_string();
    let key = str_of(&r.json(), "key").to_string();
    mark_allowed(f, &key);
    secrets.push(key.clone());
    assert!(key.starts_with("berth_key_"));
    f.pull_until("acme", "acme/api", &basic("api", &key), 200);
    let r = f.pull("other", "other/tool", &basic("api", &key));
    assert!(
        r.status == 403 && r.code() == "DENIED" || r.status == 401,
        "a key for acme on other: {} {}",
        r.status,
        r.text()
    );

    let r = f.call(
        "POST",
        keys,
        &[],
        Some(&json!({"name": "ci-both", "apps": ["acme", "ghost"], "actions": ["pull"]})),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["field"], "apps[1]");
    let r = f.call(
        "POST",
        keys,
        &[],
        Some(&json!({"name": "ci-both", "apps": ["acme"], "actions": ["fly"]})),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["field"], "actions[0]");
    let r = f.call(
        "POST",
        keys,
        &[],
        Some(
            &json!({"name": "ci-other", "apps": ["other"], "actions": ["pull"], "expires": "90d"}),
        ),
    );
    assert_eq!(r.status, 201);
    let other_id = str_of(&r.json(), "id").to_string();
    let other_key = str_of(&r.json(), "key").to_string();
    mark_allowed(f, &other_key);
    secrets.push(other_key.clone());
    f.pull_until("other", "other/tool", &basic("api", &other_key), 200);

    let r = f.get("/api/v1/apikeys/{id}", &[&key_id], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["apps"], json!(["acme"]));
    assert_eq!(r.json()["actions"], json!(["pull"]));
    let r = f.get("/api/v1/apikeys/{id}", &["key_doesnotexist"], "");
    assert_eq!(r.status, 404);
    let listed = f.get(keys, &[], "app=acme").json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let listed = f.get(keys, &[], "limit=1").json();
    assert!(listed["next"].is_string(), "{listed}");

    let r = f.call("DELETE", "/api/v1/apikeys/{id}", &[&key_id], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "revoked");
    f.pull_until("acme", "acme/api", &basic("api", &key), 401);
    let r = f.call("POST", "/api/v1/apikeys/{id}/revoke", &[&other_id], None);
    assert_eq!(r.status, 200);
    f.pull_until("other", "other/tool", &basic("api", &other_key), 401);
    let r = f.call(
        "POST",
        "/api/v1/apikeys/{id}/revoke",
        &["key_doesnotexist"],
        None,
    );
    assert_eq!(r.status, 404);
    let r = f.call(
        "DELETE",
        "/api/v1/apikeys/{id}",
        &["key_doesnotexist"],
        None,
    );
    assert_eq!(r.status, 404);
    let revoked = f.get(keys, &[], "state=revoked").json();
    assert_eq!(revoked["items"].as_array().unwrap().len(), 2);
    secrets
}

/// Admin tokens created over the API work on the admin listener within a second and stop
/// within a second of their revocation; the config file's are listed and read-only.
fn admin_tokens(f: &Fixture) -> Vec<String> {
    let tokens = "/api/v1/admin-tokens";
    let r = f.call("POST", tokens, &[], Some(&json!({"name": "robot"})));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = str_of(&r.json(), "id").to_string();
    let robot = str_of(&r.json(), "token").to_string();
    mark_allowed(f, &robot);
    assert!(robot.starts_with("berth_adm_"));
    let r = f.call("POST", tokens, &[], Some(&json!({"name": ""})));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["field"], "name");

    // The new token works (and acts as itself in the audit trail).
    let start = Instant::now();
    let works = support::wait_until(IN_FORCE, || {
        f.call_as(Some(&robot), "GET", tokens, &[], "", None).status == 200
    });
    assert!(
        works,
        "a created admin token is not accepted within {IN_FORCE:?}"
    );
    eprintln!("created admin token accepted after {:?}", start.elapsed());
    let r = f.call_as(
        Some(&robot),
        "POST",
        "/api/v1/licenses",
        &[],
        "",
        Some(&json!({"app": "other", "customer": "Robot Made"})),
    );
    assert_eq!(r.status, 201);
    let s = str_of(&r.json(), "secret").to_string();
    mark_allowed(f, &s);
    let robot_license = str_of(&r.json(), "id").to_string();

    let listed = f.get(tokens, &[], "").json();
    let items = listed["items"].as_array().unwrap();
    assert!(listed["next"].is_null());
    assert!(items
        .iter()
        .any(|t| t["id"] == "config:ops" && t["origin"] == "config"));
    assert!(items
        .iter()
        .any(|t| t["id"] == id.as_str() && t["state"] == "active"));
    let r = f.call(
        "POST",
        "/api/v1/admin-tokens/{id}/revoke",
        &["config:ops"],
        None,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let r = f.call(
        "POST",
        "/api/v1/admin-tokens/{id}/revoke",
        &["adm_doesnotexist"],
        None,
    );
    assert_eq!(r.status, 404);

    let r = f.call("POST", "/api/v1/admin-tokens/{id}/revoke", &[&id], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "revoked");
    let start = Instant::now();
    let refused = support::wait_until(IN_FORCE, || {
        f.call_as(Some(&robot), "GET", tokens, &[], "", None).status == 401
    });
    assert!(
        refused,
        "a revoked admin token still works after {IN_FORCE:?}"
    );
    eprintln!("revoked admin token refused after {:?}", start.elapsed());

    let trail = f.get("/api/v1/audit", &[], "limit=500").json();
    let by_robot = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == robot_license.as_str())
        .unwrap_or_else(|| panic!("no audit entry for {robot_license}: {trail}"))
        .clone();
    assert_eq!(by_robot["action"], "license.create");
    assert_eq!(by_robot["actor"], format!("robot ({id})"));
    vec![robot, s]
}

/// Apps and upstreams as configured (never a credential); the upstream test.
fn catalog(f: &Fixture) {
    let apps = f.get("/api/v1/apps", &[], "").json();
    assert_eq!(
        apps["items"],
        json!([
            {"slug": "acme", "upstreams": ["up"], "images": [format!("{HOST}/acme/api:v1")],
             "hosted": {"quota_bytes": null, "used_bytes": 0, "immutable_tags": []}},
            {"slug": "other", "upstreams": ["up"], "images": [],
             "hosted": {"quota_bytes": null, "used_bytes": 0, "immutable_tags": []}},
        ])
    );
    let first = f.get("/api/v1/apps", &[], "limit=1").json();
    assert_eq!(first["next"], "acme");
    let second = f.get("/api/v1/apps", &[], "limit=1&after=acme").json();
    assert_eq!(second["items"][0]["slug"], "other");
    assert!(second["next"].is_null());

    let ups = f.get("/api/v1/upstreams", &[], "").json();
    assert_eq!(ups["items"].as_array().unwrap().len(), 1);
    let up = &ups["items"][0];
    assert_eq!(up["name"], "up");
    assert_eq!(up["host"], HOST);
    assert_eq!(up["credentials"], "static");
    assert_eq!(up["kind"], "custom");
    let r = f.get("/api/v1/upstreams", &[], "after=up");
    assert_eq!(r.json()["items"], json!([]));

    let test = "/api/v1/upstreams/{name}/test";
    let r = f.call("POST", test, &["up"], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["ok"], true, "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| str_of(s, "step"))
        .collect();
    assert_eq!(steps, ["dns", "connect", "tls", "auth"], "{report}");
    let r = f.call(
        "POST",
        test,
        &["up"],
        Some(&json!({"image": "acme/api:v1"})),
    );
    assert_eq!(r.status, 200);
    let last = r.json()["steps"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["step"], "manifest");
    assert_eq!(last["outcome"], "ok", "{last}");
    let r = f.call(
        "POST",
        test,
        &["up"],
        Some(&json!({"image": "acme/missing:v1"})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ok"], false);
    let r = f.call("POST", test, &["up"], Some(&json!({"image": "Not A Name"})));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["field"], "image");
    let r = f.call("POST", test, &["up"], Some(&json!({"imag": "acme/api:v1"})));
    assert_eq!(r.status, 400);
    let r = f.call("POST", test, &["nope"], None);
    assert_eq!(r.status, 404);
}

/// Usage reports and the audit trail: who changed what, when, paged.
/// A garbage collection run by the server: a dry run, a real one (in the audit trail),
/// bad parameters refused.
fn gc(f: &Fixture) {
    let post = |q: &str| f.call_as(Some(&f.token), "POST", "/api/v1/gc", &[], q, None);
    let r = post("dry_run=true&grace=0s");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["dry_run"], true);
    let r = post("app=acme&grace=0s&delete_untagged=true");
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["bytes_freed"], 0, "nothing was pushed: {report}");
    for (q, field) in [
        ("app=nope", "app"),
        ("grace=soon", "grace"),
        ("dry_run=maybe", "dry_run"),
    ] {
        let r = post(q);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.text().contains(field), "{q}: {}", r.text());
    }
    let trail = f.get("/api/v1/audit", &[], "limit=500").json();
    assert!(
        trail["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "hosted.gc" && e["target"] == "acme"),
        "no hosted.gc in the trail: {trail}"
    );
}

fn reports(f: &Fixture) {
    for q in [
        "",
        "since=30d",
        "since=2026-01-01",
        "since=2026-01-01T00:00:00Z&app=acme",
        "license=lic_x",
    ] {
        let r = f.get("/api/v1/usage", &[], q);
        assert_eq!(r.status, 200, "usage?{q}: {}", r.text());
        assert!(r.json()["subjects"].is_array());
    }
    let r = f.get("/api/v1/usage", &[], "since=30d");
    assert!(r.json()["since"].is_string());
    let r = f.get("/api/v1/usage", &[], "since=lately");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "since");

    let trail = f.get("/api/v1/audit", &[], "limit=500").json();
    let items = trail["items"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = items
        .iter()
        .map(|e| (str_of(e, "action"), str_of(e, "actor")))
        .collect();
    let ops: Vec<&str> = actions
        .iter()
        .filter(|(_, who)| *who == "ops")
        .map(|(a, _)| *a)
        .collect();
    assert_eq!(
        ops,
        [
            "license.create",
            "license.extend",
            "license.extend",
            "license.extend",
            "license.rotate",
            "license.revoke",
            "license.create",
            "license.create",
            "apikey.create",
            "apikey.create",
            "apikey.revoke",
            "apikey.revoke",
            "admin_token.create",
            "admin_token.revoke",
        ],
        "the changes made as ops, in order"
    );
    for e in items {
        assert!(e["time"].as_str().is_some_and(|t| t.starts_with("20")));
        assert!(str_of(e, "target").len() > 4);
    }
    // Pages of two follow on.
    let mut seqs = Vec::new();
    let mut after = String::from("0");
    loop {
        let page = f
            .get("/api/v1/audit", &[], &format!("limit=2&after={after}"))
            .json();
        for e in page["items"].as_array().unwrap() {
            seqs.push(e["seq"].as_i64().unwrap());
        }
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    let all: Vec<i64> = items.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, all);
    let r = f.get("/api/v1/audit", &[], "after=yesterday");
    assert_eq!(r.status, 400);
}

/// The answers seen so far that contain `secret` are the one that created it.
fn mark_allowed(f: &Fixture, secret: &str) {
    let mut seen = f.seen.borrow_mut();
    let last = seen.last_mut().expect("an answer");
    assert!(last.text.contains(secret));
    last.allowed = Some(secret.to_string());
}

/// No answer carries a secret but the one that created it, and berth's log carries none.
fn no_secret_leaks(f: &Fixture, secrets: &[String]) {
    let seen = f.seen.borrow();
    assert!(seen.len() > 100, "only {} answers scanned", seen.len());
    for s in secrets {
        assert!(s.len() >= 20, "weak canary {s}");
        for answer in seen.iter() {
            if answer.text.contains(s.as_str()) {
                assert_eq!(
                    answer.allowed.as_deref(),
                    Some(s.as_str()),
                    "a secret in the answer to {}: {}",
                    answer.what,
                    answer.text
                );
            }
        }
    }
    let log = f.berth.logs();
    assert!(
        log.contains("admin request"),
        "no admin access lines:\n{log}"
    );
    for s in secrets {
        assert!(!log.contains(s.as_str()), "a secret in berth's log:\n{log}");
    }
}

/// Guessed admin tokens are throttled per source after 10 failures; a token that logged in
/// from the source before still passes.
#[test]
fn failed_admin_logins_are_throttled() {
    let data = support::tempdir();
    let token = canary("berth_adm_canary");
    let (port, admin) = (support::free_port(), support::free_port());
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cache: {{ dir: \"{d}/cache\" }}\nstate: {{ sqlite: \"{d}/state.db\" }}\n\
         auth:\n  admin_tokens:\n    - {{ name: ops, sha256: \"{sha}\" }}\n\
         upstreams: [ {{ name: up, url: \"http://127.0.0.1:1\", host: {HOST} }} ]\napps: [ {{ slug: acme, upstreams: [up] }} ]\n",
        d = data.path().display(),
        sha = support::sha256_hex(token.as_bytes()),
    );
    let berth = Berth::start_on(port, &yaml, &[]);
    assert!(support::wait_for_port(admin, Duration::from_secs(10)));
    let get = |t: &str| http::get(admin, "/api/v1/apps", &[("Authorization", &bearer(t))]);
    assert_eq!(get(&token).status, 200);
    for i in 0..10 {
        let r = get(&format!("berth_adm_guess{i}"));
        assert_eq!(r.status, 401, "guess {i}: {}", r.text());
    }
    let r = get("berth_adm_guess-again");
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(get(&token).status, 200, "the known token still passes");
    let log = berth.logs();
    assert!(!log.contains(&token));
}
