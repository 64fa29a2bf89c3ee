//! The control plane's canary: one real berth in front of a real `docker-registry` (with
//! htpasswd, so berth holds an upstream password), the whole vendor and customer workflow
//! driven through the real surfaces — the CLI on the state file and with `--server`, the
//! admin API, skopeo and hand-made pulls, a reload, a graceful stop — and then every byte berth
//! wrote or answered scanned for every secret of the run: its log at the most verbose level,
//! the audit log, every `/metrics` scrape, every admin and customer answer, every CLI output,
//! and the raw SQLite state file with its journal. A secret may appear only in the one
//! create/rotate answer that hands it out; the state file holds the secrets' keyed hashes.
//!
//! Each secret is looked for in clear, hex, base64 (standard and URL-safe, at every
//! alignment, so `Basic base64(user:secret)` and any longer encoded blob count) and
//! percent-encoded (form style and every-byte style, either hex case).

#[path = "support/http.rs"]
mod http;
mod support;

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use serde_json::{json, Value};

use http::Resp;
use support::berth::{run_cli, Berth, CliRun};
use support::image::{push_image, read_oci_layout, skopeo_copy_to_oci, ImageSpec};
use support::registry::{Registry, RegistryAuth};

const HOST: &str = "upstream.test";
const VENDOR: &str = "vendor";
const CUSTOMER: &str = "Canary Bank";
const REVOKED_CUSTOMER: &str = "Gone Ltd";
const CONFIG_CUSTOMER: &str = "Config Corp";
const REPO: &str = "acme/api";
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// A change on the command line or the API is in force on the server within a second
/// (the directory refreshes every 250 ms); waits give it a little more.
const IN_FORCE: Duration = Duration::from_secs(3);
/// Polls of the customer port are this far apart: every refused poll costs the source one
/// of the 10 failed logins the throttle allows at once.
const POLL: Duration = Duration::from_millis(120);

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b
}

/// A made-up secret shaped like berth's own (`berth_adm_` + 40 base32 characters).
fn shaped(prefix: &str) -> String {
    let tail: String = random_bytes(40)
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    format!("{prefix}{tail}")
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

// ---- the scan ---------------------------------------------------------------------------

/// Every encoding of `secret` the scan looks for, named.
fn forms(secret: &str) -> Vec<(String, String)> {
    let bytes = secret.as_bytes();
    let mut out = vec![
        ("clear".to_string(), secret.to_string()),
        ("hex".into(), support::hex(bytes)),
        ("HEX".into(), support::hex(bytes).to_uppercase()),
    ];
    // Base64 of the secret inside a longer input (`user:secret`, a JSON blob) depends on
    // its offset modulo 3: encode it after 0, 1 and 2 bytes and keep only the characters
    // made of the secret's bits alone.
    for (name, engine) in [("base64", &STANDARD), ("base64url", &URL_SAFE)] {
        for k in 0..3 {
            let mut input = vec![0u8; k];
            input.extend_from_slice(bytes);
            let enc = engine.encode(&input);
            let (start, end) = ((8 * k).div_ceil(6), 8 * input.len() / 6);
            out.push((format!("{name}@{k}"), enc[start..end].to_string()));
        }
    }
    out.push((
        "form-urlencoded".into(),
        form_urlencoded::byte_serialize(bytes).collect(),
    ));
    // Lowercase: percent forms are matched against the lowercased text (either hex case).
    let percent = |keep: fn(u8) -> bool| -> String {
        bytes
            .iter()
            .map(|&b| match keep(b) {
                true => (b.to_ascii_lowercase() as char).to_string(),
                false => format!("%{b:02x}"),
            })
            .collect()
    };
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    for (name, keep) in [
        ("percent", unreserved as fn(u8) -> bool),
        ("percent-all", alnum),
    ] {
        out.push((name.to_string(), percent(keep)));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, f)| seen.insert(f.clone()));
    out
}

/// Every `berth_lic_…`, `berth_key_…`, `berth_adm_…` (40 base32 characters) in `text`:
/// catches a secret of the run the test did not know to look for.
fn shaped_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["berth_lic_", "berth_key_", "berth_adm_"] {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text.as_bytes()[at + prefix.len()..];
            let n = rest.iter().take_while(|b| ALPHABET.contains(b)).count();
            if n >= 40 {
                out.push(format!(
                    "{prefix}{}",
                    std::str::from_utf8(&rest[..40]).unwrap()
                ));
            }
        }
    }
    out
}

/// One thing berth wrote or answered, and the secrets it may carry (a create's answer,
/// its own).
struct Seen {
    what: String,
    text: String,
    allowed: Vec<String>,
}

/// Where each canary shows, in what encoding: empty when the run is clean.
fn leaks(canaries: &[(String, String)], seen: &[Seen]) -> Vec<String> {
    let mut found = Vec::new();
    for s in seen {
        // Same byte offsets as the text: only ASCII letters change.
        let lower = s.text.to_ascii_lowercase();
        for (name, secret) in canaries {
            if s.allowed.contains(secret) {
                continue;
            }
            for (form, needle) in forms(secret) {
                let haystack = if form.starts_with("percent") {
                    &lower
                } else {
                    &s.text
                };
                if let Some(at) = haystack.find(&needle) {
                    let mut from = at.saturating_sub(120);
                    while !s.text.is_char_boundary(from) {
                        from -= 1;
                    }
                    let mut to = (at + needle.len() + 120).min(s.text.len());
                    while !s.text.is_char_boundary(to) {
                        to += 1;
                    }
                    found.push(format!(
                        "{name} ({form}) in {}: …{}…",
                        s.what,
                        &s.text[from..to]
                    ));
                }
            }
        }
        for shape in shaped_in(&s.text) {
            if !s.allowed.contains(&shape) {
                found.push(format!("a secret-shaped {shape} in {}", s.what));
            }
        }
    }
    found
}

#[test]
fn the_scan_finds_each_encoding_of_a_secret() {
    let secret = "LICENSE-cfg+canary/0a1b=";
    let key = shaped("berth_key_");
    let canaries = vec![
        ("config license".to_string(), secret.to_string()),
        ("key".to_string(), key.clone()),
    ];
    let seen = |text: String| Seen {
        what: "sample".into(),
        text,
        allowed: Vec::new(),
    };
    for (label, text) in [
        ("clear", format!("password={secret} ")),
        (
            "Basic",
            format!("authorization: {}", basic("lic_x", secret)),
        ),
        (
            "Basic, other alignment",
            format!("authorization: {}", basic("ab", secret)),
        ),
        (
            "url-safe",
            URL_SAFE.encode(format!("{{\"p\":\"{secret}\"}}")),
        ),
        (
            "form",
            format!(
                "password={}",
                form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
            ),
        ),
        ("percent", "LICENSE-cfg%2Bcanary%2F0a1b%3d".to_string()),
        ("hex", format!("bytes {}", support::hex(secret.as_bytes()))),
        ("shaped", format!("key {key} here")),
        ("shaped unknown", shaped("berth_adm_")),
    ] {
        assert!(
            !leaks(&canaries, &[seen(text.clone())]).is_empty(),
            "the {label} form is not found in {text}"
        );
    }
    assert!(leaks(
        &canaries,
        &[seen(format!("LICENSE-cfg canary key_{}", &key[10..20]))]
    )
    .is_empty());
    let allowed = Seen {
        what: "its create".into(),
        text: format!("here is {key}"),
        allowed: vec![key.clone()],
    };
    assert!(leaks(&canaries, &[allowed]).is_empty());
}

// ---- the run ----------------------------------------------------------------------------

struct Run {
    _reg: Registry,
    /// The pushed image's manifest digest.
    digest: String,
    berth: Berth,
    data: tempfile::TempDir,
    port: u16,
    admin: u16,
    /// (name, secret) of every secret in play.
    canaries: RefCell<Vec<(String, String)>>,
    seen: RefCell<Vec<Seen>>,
    /// How many outputs of each surface were recorded, so no surface is scanned empty.
    scrapes: RefCell<usize>,
}

impl Run {
    fn canary(&self, name: &str, secret: &str) {
        assert!(secret.len() >= 20, "weak canary {name}: {secret}");
        self.canaries
            .borrow_mut()
            .push((name.to_string(), secret.to_string()));
    }

    fn see(&self, what: impl Into<String>, text: impl Into<String>, allowed: &[&str]) {
        self.seen.borrow_mut().push(Seen {
            what: what.into(),
            text: text.into(),
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
        });
    }

    fn see_resp(&self, what: String, r: &Resp, allowed: &[&str]) {
        let mut text = format!("{}\n", r.status);
        for (k, v) in &r.headers {
            text.push_str(&format!("{k}: {v}\n"));
        }
        text.push_str(&r.text());
        self.see(what, text, allowed);
    }

    fn config(&self) -> String {
        self.berth.config_path.display().to_string()
    }

    fn state_db(&self) -> PathBuf {
        self.data.path().join("state.db")
    }

    fn audit_log(&self) -> PathBuf {
        self.data.path().join("audit.log")
    }

    fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin)
    }

    /// The CLI (local unless `server` gives a token for `--server`), logging at `trace`.
    fn exec(&self, args: &[&str], token: Option<&str>) -> CliRun {
        let config = self.config();
        let url = self.admin_url();
        let mut all = vec!["--config", config.as_str()];
        let mut env = vec![("BERTH_LOG", "trace")];
        if let Some(t) = token {
            all.extend(["--server", url.as_str()]);
            env.push(("BERTH_ADMIN_TOKEN", t));
        }
        all.extend_from_slice(args);
        run_cli(&all, &env, None, CLI_TIMEOUT)
    }

    /// A command whose output holds no secret; returns it for the positive checks.
    fn cli(&self, args: &[&str], token: Option<&str>) -> CliRun {
        let r = self.exec(args, token);
        let mode = if token.is_some() { " --server" } else { "" };
        let what = format!("berth{mode} {}", args.join(" "));
        self.see(format!("{what} (stdout)"), r.stdout.clone(), &[]);
        self.see(format!("{what} (stderr)"), r.stderr.clone(), &[]);
        r
    }

    /// `cli` that must exit 0.
    fn ok(&self, args: &[&str], token: Option<&str>) -> String {
        let r = self.cli(args, token);
        assert_eq!(r.code, Some(0), "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(!r.stdout.is_empty(), "{args:?} printed nothing");
        r.stdout
    }

    fn ok_json(&self, args: &[&str], token: Option<&str>) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a, token);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{a:?}: not JSON ({e}): {out}"))
    }

    /// A command refused (exit 1, or 2 for a secret where an id belongs) in a `berth: …` line.
    fn refused(&self, args: &[&str], token: Option<&str>) -> String {
        let r = self.cli(args, token);
        assert!(
            matches!(r.code, Some(1 | 2)),
            "{args:?} exited {:?}: {}{}",
            r.code,
            r.stdout,
            r.stderr
        );
        assert!(r.stderr.contains("berth: "), "{args:?}: {}", r.stderr);
        r.stderr
    }

    /// A command that hands out one secret (create, rotate): its stdout shows it (and only
    /// it), its stderr nothing. Returns the stdout and the secret.
    fn hand_out(&self, name: &str, args: &[&str]) -> (String, String) {
        let r = self.exec(args, None);
        assert_eq!(r.code, Some(0), "{args:?}: {}{}", r.stdout, r.stderr);
        let mut found = shaped_in(&r.stdout);
        found.sort();
        found.dedup();
        assert_eq!(found.len(), 1, "{args:?} printed {found:?}: {}", r.stdout);
        let secret = found.remove(0);
        self.canary(name, &secret);
        let what = format!("berth {}", args.join(" "));
        self.see(format!("{what} (stdout)"), r.stdout.clone(), &[&secret]);
        self.see(format!("{what} (stderr)"), r.stderr, &[]);
        (r.stdout, secret)
    }

    /// A command whose output hands out a secret already known (`pull-secret`): its stdout
    /// must carry it (in some encoding) and may carry nothing else, its stderr nothing.
    fn handed(&self, args: &[&str], secret: &str) -> String {
        let r = self.exec(args, None);
        assert_eq!(r.code, Some(0), "{args:?}: {}{}", r.stdout, r.stderr);
        let alone = Seen {
            what: "its own output".into(),
            text: r.stdout.clone(),
            allowed: Vec::new(),
        };
        assert!(
            !leaks(&[("it".into(), secret.into())], &[alone]).is_empty(),
            "{args:?} does not hand out the secret: {}",
            r.stdout
        );
        let what = format!("berth {}", args.join(" "));
        self.see(format!("{what} (stdout)"), r.stdout.clone(), &[secret]);
        self.see(format!("{what} (stderr)"), r.stderr, &[]);
        r.stdout
    }

    /// A request to the admin listener; its answer holds no secret but `allowed`.
    fn admin_req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        allowed: &[&str],
    ) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h = Vec::new();
        if let Some(a) = &auth {
            h.push(("Authorization", a.as_str()));
        }
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        if body.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        let r = http::request(self.admin, method, path, &h, &bytes);
        self.see_resp(format!("admin {method} {path}"), &r, allowed);
        r
    }

    fn admin_get(&self, path: &str, token: &str) -> Value {
        let r = self.admin_req("GET", path, Some(token), None, &[]);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    fn metrics(&self) -> String {
        let r = http::get(self.admin, "/metrics", &[]);
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        *self.scrapes.borrow_mut() += 1;
        let n = *self.scrapes.borrow();
        self.see_resp(format!("/metrics scrape {n}"), &r, &[]);
        r.text()
    }

    /// A request to the customer port; its answer holds no secret but `allowed`.
    fn customer(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut h = vec![
            ("Accept", support::image::MANIFEST_MEDIA_TYPE),
            ("User-Agent", "canary-test/1"),
        ];
        h.extend_from_slice(headers);
        let r = http::request(self.port, method, path, &h, body);
        self.see_resp(format!("customer {method} {path}"), &r, &[]);
        r
    }

    fn manifest(&self, authorization: &str) -> Resp {
        self.customer(
            "GET",
            &format!("/v2/proxy/acme/{HOST}/{REPO}/manifests/v1"),
            &[("Authorization", authorization)],
            b"",
        )
    }

    /// Polls a manifest GET until it answers `want` (a change reaching the directory).
    fn manifest_until(&self, authorization: &str, want: u16) -> Resp {
        let start = Instant::now();
        loop {
            let r = self.manifest(authorization);
            if r.status == want {
                return r;
            }
            assert!(
                start.elapsed() < IN_FORCE,
                "manifest still {} (want {want}) after {IN_FORCE:?}: {}",
                r.status,
                r.text()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Records the raw bytes of the state file and its journal; how many files exist.
    fn at_rest(&self, when: &str) -> usize {
        let mut files = 0;
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", self.state_db().display()));
            if let Ok(bytes) = std::fs::read(&path) {
                files += 1;
                self.see(
                    format!("{} ({when})", path.display()),
                    String::from_utf8_lossy(&bytes).into_owned(),
                    &[],
                );
            }
        }
        files
    }

    fn skopeo(&self, creds: &str) -> PathBuf {
        let dest = self
            .data
            .path()
            .join(format!("pulled-{}", self.seen.borrow().len()));
        let src = format!(
            "docker://127.0.0.1:{}/proxy/acme/{HOST}/{REPO}:v1",
            self.port
        );
        let out = skopeo_copy_to_oci(&src, Some(creds), &dest, &["--preserve-digests"]);
        assert!(
            out.status.success(),
            "skopeo copy through berth failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dest
    }
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no string {k:?} in {v}"))
}

fn find<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

/// The fingerprint berth names a config file's license by.
fn fingerprint(secret: &str) -> String {
    support::sha256_hex(secret.as_bytes())[..32].to_string()
}

fn start() -> Run {
    let upstream_password = format!("up+pw/{}=", support::hex(&random_bytes(12)));
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: upstream_password.clone(),
    });
    let image = push_image(
        &reg,
        Some((VENDOR, &upstream_password)),
        REPO,
        "v1",
        &ImageSpec {
            layer_sizes: vec![3000, 1200],
            seed: 41,
        },
    );
    let admin_token = shaped("berth_adm_");
    let config_license = format!("LICENSE-cfg+{}/=", support::hex(&random_bytes(12)));
    let data = support::tempdir();
    let (port, admin) = (support::free_port(), support::free_port());
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cache: {{ dir: \"{d}/cache\" }}\n\
         state: {{ sqlite: \"{d}/state.db\" }}\n\
         auth:\n  audit_log: \"{d}/audit.log\"\n  admin_tokens:\n    - {{ name: ops, sha256: \"{sha}\" }}\n\
         upstreams:\n  - {{ name: up, url: \"{url}\", host: {HOST}, username: {VENDOR}, password: \"{upstream_password}\" }}\n\
         apps:\n  - {{ slug: acme, upstreams: [up], images: [\"{HOST}/{REPO}:v1\"] }}\n\
         licenses:\n  - {{ id: \"{config_license}\", app: acme, customer: {CONFIG_CUSTOMER}, expires: \"2099-12-31T00:00:00Z\" }}\n",
        d = data.path().display(),
        sha = support::sha256_hex(admin_token.as_bytes()),
        url = reg.url(),
    );
    let berth = Berth::start_on(port, &yaml, &[("BERTH_LOG", "trace")]);
    assert!(
        support::wait_for_port(admin, Duration::from_secs(10)),
        "admin listener not up"
    );
    let run = Run {
        _reg: reg,
        digest: image.manifest_digest,
        berth,
        data,
        port,
        admin,
        canaries: RefCell::new(Vec::new()),
        seen: RefCell::new(Vec::new()),
        scrapes: RefCell::new(0),
    };
    run.canary("upstream password", &upstream_password);
    run.canary("config admin token", &admin_token);
    run.canary("config license id", &config_license);
    // The config file holds the upstream password and the license id by design, and the
    // admin token only as its hash.
    let file = std::fs::read_to_string(&run.berth.config_path).unwrap();
    assert!(file.contains(&support::sha256_hex(admin_token.as_bytes())));
    run.see("berth.yaml", file, &[&upstream_password, &config_license]);
    run
}

#[test]
fn no_secret_in_any_log_audit_line_metric_answer_or_output_and_hashes_only_at_rest() {
    let t0 = Instant::now();
    let mut run = start();
    let canary = |name: &str| -> String {
        run.canaries
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no canary {name}"))
            .1
            .clone()
    };
    let config_token = canary("config admin token");
    let config_license = canary("config license id");
    let config_fp = fingerprint(&config_license);
    let first_scrape = run.metrics();
    assert!(first_scrape.contains("berth_licenses"), "{first_scrape}");

    // ---- the vendor, on the server's machine ------------------------------------------
    let (human, lic_secret) = run.hand_out(
        "license secret",
        &[
            "license",
            "create",
            "--app",
            "acme",
            "--customer",
            CUSTOMER,
            "--expires",
            "90d",
        ],
    );
    let lic_id = human
        .split_whitespace()
        .find(|w| w.starts_with("lic_"))
        .unwrap_or_else(|| panic!("no license id in {human}"))
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    assert!(human.contains(&format!("-p {lic_secret}")), "{human}");
    let (out, gone_secret) = run.hand_out(
        "revoked license secret",
        &[
            "license",
            "create",
            "--app",
            "acme",
            "--customer",
            REVOKED_CUSTOMER,
            "--json",
        ],
    );
    let gone: Value = serde_json::from_str(&out).unwrap();
    let gone_id = str_of(&gone, "id").to_string();
    assert_eq!(str_of(&gone, "secret"), gone_secret);
    let (out, key) = run.hand_out(
        "API key",
        &[
            "apikey",
            "create",
            "--app",
            "acme",
            "--name",
            "ci-main",
            "--actions",
            "pull",
        ],
    );
    let key_id = out
        .split_whitespace()
        .find(|w| w.starts_with("key_"))
        .unwrap_or_else(|| panic!("no key id in {out}"))
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    let (_, cli_admin) = run.hand_out(
        "stored admin token (cli)",
        &["admin-token", "create", "--name", "cli-ops"],
    );

    let list = run.ok(&["license", "list"], None);
    assert!(
        list.contains(&lic_id) && list.contains(CUSTOMER) && list.contains(&config_fp),
        "{list}"
    );
    let listed = run.ok_json(&["license", "list"], None);
    assert_eq!(find(&listed, &lic_id)["customer"], CUSTOMER);
    assert_eq!(find(&listed, &config_fp)["origin"], "config");
    let shown = run.ok(&["license", "show", &lic_id], None);
    assert!(shown.contains(CUSTOMER), "{shown}");
    assert_eq!(
        run.ok_json(&["license", "show", &lic_id], None)["id"],
        lic_id.as_str()
    );
    let keys = run.ok(&["apikey", "list"], None);
    assert!(keys.contains(&key_id) && keys.contains("ci-main"), "{keys}");
    assert_eq!(
        find(&run.ok_json(&["apikey", "list"], None), &key_id)["name"],
        "ci-main"
    );
    assert!(run
        .ok(&["apikey", "show", &key_id], None)
        .contains("ci-main"));
    let tokens = run.ok_json(&["admin-token", "list"], None);
    assert!(tokens.to_string().contains("cli-ops"), "{tokens}");
    run.ok(&["admin-token", "list"], None);
    // Secrets pasted where ids belong are refused without being repeated (the scan checks).
    for pasted in [&lic_secret, &key, &config_license, &cli_admin] {
        run.refused(&["license", "show", pasted], None);
        run.refused(&["apikey", "show", pasted], None);
    }
    run.refused(&["license", "revoke", &gone_secret], None);
    run.refused(&["license", "revoke", &config_fp], None);
    run.ok(&["check-config"], None);
    // The pull secret for a license is asked for by its secret and carries it.
    let yaml = run.handed(&["pull-secret", "--license", &lic_secret], &lic_secret);
    assert!(yaml.contains("kubernetes.io/dockerconfigjson"), "{yaml}");
    run.handed(
        &["pull-secret", "--license", &config_license],
        &config_license,
    );

    // ---- the customers ------------------------------------------------------------------
    // The last create is in force once this key pulls.
    run.manifest_until(&basic("api", &key), 200);
    let pulled = read_oci_layout(&run.skopeo(&format!("{lic_id}:{lic_secret}")));
    let by_key = read_oci_layout(&run.skopeo(&format!("api:{key}")));
    assert_eq!(pulled.manifest_digest, run.digest);
    assert_eq!(pulled, by_key);
    let r = run.manifest(&basic(&lic_id, &lic_secret));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(pulled.manifest_digest.as_str())
    );
    assert_eq!(run.manifest(&basic("x", &gone_secret)).status, 200);
    assert_eq!(run.manifest(&basic("anyone", &config_license)).status, 200);
    // Failed logins: a wrong secret shaped like a real one, one a character off, a wrong key.
    let wrong = shaped("berth_lic_");
    run.canary("wrong license secret", &wrong);
    // One character off in the middle (at the end, base64 fragments of the two could agree).
    let mid = &lic_secret[30..31];
    let typo = format!(
        "{}{}{}",
        &lic_secret[..30],
        if mid == "a" { "b" } else { "a" },
        &lic_secret[31..]
    );
    run.canary("mistyped license secret", &typo);
    let wrong_key = shaped("berth_key_");
    run.canary("wrong API key", &wrong_key);
    run.refused(&["pull-secret", "--license", &wrong], None);
    for bad in [&wrong, &typo, &wrong_key] {
        let r = run.manifest(&basic(&lic_id, bad));
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // A berth token: GET /token with Basic, then the manifest with it.
    let scope = format!("repository:proxy/acme/{HOST}/{REPO}:pull");
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("service", &format!("127.0.0.1:{}", run.port))
        .append_pair("scope", &scope)
        .finish();
    let r = http::get(
        run.port,
        &format!("/token?{q}"),
        &[("Authorization", &basic(&lic_id, &lic_secret))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let bearer = str_of(&r.json(), "token").to_string();
    run.canary("bearer token", &bearer);
    run.see_resp("customer GET /token".into(), &r, &[&bearer]);
    let r = run.manifest(&format!("Bearer {bearer}"));
    assert_eq!(r.status, 200, "{}", r.text());
    // The password grant, the config license's `+/=` percent-encoded in the form.
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "password")
        .append_pair("username", "anyone")
        .append_pair("password", &config_license)
        .append_pair("service", &format!("127.0.0.1:{}", run.port))
        .append_pair("client_id", "canary")
        .append_pair("scope", &scope)
        .finish();
    assert!(form.contains("%2B"), "{form}");
    let r = http::request(
        run.port,
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let config_bearer = str_of(&r.json(), "access_token").to_string();
    run.canary("bearer token (config license)", &config_bearer);
    run.see_resp("customer POST /token".into(), &r, &[&config_bearer]);
    let r = run.manifest(&format!("Bearer {config_bearer}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = run.customer(
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.replace(
            &form_urlencoded::byte_serialize(config_license.as_bytes()).collect::<String>(),
            &wrong,
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.text());

    let scrape = run.metrics();
    assert!(
        scrape.contains("berth_api_keys{state=\"active\"} 1"),
        "{scrape}"
    );

    // ---- the admin API ------------------------------------------------------------------
    let r = run.admin_req(
        "POST",
        "/api/v1/admin-tokens",
        Some(&config_token),
        Some(&json!({"name": "robot"})),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let robot = str_of(&r.json(), "token").to_string();
    run.canary("stored admin token (api)", &robot);
    run.seen
        .borrow_mut()
        .last_mut()
        .unwrap()
        .allowed
        .push(robot.clone());
    let r = run.admin_req(
        "POST",
        "/api/v1/apikeys",
        Some(&config_token),
        Some(&json!({"name": "robot-key", "apps": ["acme"], "actions": ["pull"]})),
        &[],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let robot_key = str_of(&r.json(), "key").to_string();
    let robot_key_id = str_of(&r.json(), "id").to_string();
    run.canary("API key (api)", &robot_key);
    run.seen
        .borrow_mut()
        .last_mut()
        .unwrap()
        .allowed
        .push(robot_key.clone());
    let start = Instant::now();
    while run
        .admin_req("GET", "/api/v1/licenses", Some(&robot), None, &[])
        .status
        != 200
    {
        assert!(
            start.elapsed() < IN_FORCE,
            "the created admin token never works"
        );
        std::thread::sleep(POLL);
    }
    for t in [&config_token, &robot, &cli_admin] {
        let page = run.admin_get("/api/v1/licenses", t);
        assert!(page.to_string().contains(&lic_id), "{page}");
    }
    let page = run.admin_get("/api/v1/apikeys", &robot);
    assert!(page.to_string().contains(&robot_key_id), "{page}");
    run.admin_get(&format!("/api/v1/apikeys/{key_id}"), &robot);
    run.admin_get(&format!("/api/v1/licenses/{lic_id}"), &robot);
    let page = run.admin_get("/api/v1/admin-tokens", &robot);
    assert!(page.to_string().contains("robot"), "{page}");
    run.admin_get("/api/v1/apps", &robot);
    let ups = run.admin_get("/api/v1/upstreams", &robot);
    assert_eq!(ups["items"][0]["credentials"], "static", "{ups}");
    let r = run.admin_req("POST", "/api/v1/upstreams/up/test", Some(&robot), None, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    run.admin_get("/api/v1/openapi.json", &robot);
    // Secrets pasted into paths and queries, and wrong or missing tokens.
    let encoded: String = form_urlencoded::byte_serialize(config_license.as_bytes()).collect();
    for path in [
        format!("/api/v1/licenses/{lic_secret}"),
        format!("/api/v1/licenses/{encoded}"),
        format!("/api/v1/apikeys/{key}"),
        format!("/api/v1/usage?license={lic_secret}"),
        format!("/api/v1/licenses?app={encoded}"),
    ] {
        let r = run.admin_req("GET", &path, Some(&robot), None, &[]);
        assert!(
            (400..500).contains(&r.status) || r.status == 200,
            "{path}: {}",
            r.status
        );
    }
    let wrong_admin = shaped("berth_adm_");
    run.canary("wrong admin token", &wrong_admin);
    for t in [Some(wrong_admin.as_str()), Some(lic_secret.as_str()), None] {
        let r = run.admin_req("GET", "/api/v1/licenses", t, None, &[]);
        assert_eq!(r.status, 401, "{}", r.text());
    }

    // ---- the CLI over the admin API -----------------------------------------------------
    let remote = Some(config_token.as_str());
    assert!(run.ok(&["license", "list"], remote).contains(&lic_id));
    assert_eq!(
        find(&run.ok_json(&["license", "list"], remote), &lic_id)["customer"],
        CUSTOMER
    );
    assert!(run
        .ok(&["license", "show", &lic_id], remote)
        .contains(CUSTOMER));
    run.ok_json(&["license", "show", &lic_id], remote);
    assert!(run.ok(&["apikey", "list"], remote).contains("robot-key"));
    run.ok_json(&["admin-token", "list"], remote);
    for pasted in [&lic_secret, &config_license] {
        run.refused(&["license", "show", pasted], remote);
        run.refused(&["apikey", "show", pasted], remote);
    }
    run.refused(&["apikey", "show", &robot_key], remote);
    run.refused(&["license", "list"], Some(&wrong_admin));

    // ---- usage (the recorder writes once a second) --------------------------------------
    let start = Instant::now();
    loop {
        let u = run.ok_json(&["usage"], None);
        let subjects = u["subjects"].as_array().unwrap();
        let pulls = |id: &str| {
            subjects
                .iter()
                .find(|s| s["id"] == id)
                .map_or(0, |s| s["pulls"].as_u64().unwrap_or(0))
        };
        if pulls(&lic_id) >= 1 && pulls(&key_id) >= 1 && pulls(&config_fp) >= 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "usage never shows the pulls: {u}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let u = run.ok(&["usage"], None);
    assert!(u.contains(&lic_id) && u.contains(CUSTOMER), "{u}");
    let u = run.ok_json(&["usage", "--license", &lic_id], remote);
    assert_eq!(u["subjects"][0]["id"], lic_id.as_str(), "{u}");
    run.ok(&["usage"], remote);
    let usage = run.admin_get("/api/v1/usage", &robot);
    assert!(usage.to_string().contains(&lic_id), "{usage}");
    let audit_cli = run.ok(&["audit"], None);
    assert!(audit_cli.contains(CUSTOMER), "{audit_cli}");
    // One JSON record per line.
    for line in run.ok(&["audit", "--json"], None).lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("audit --json {line}: {e}"));
    }
    let probe = run.cli(
        &["upstream", "test", "--image", &format!("{REPO}:v1")],
        None,
    );
    assert_eq!(probe.code, Some(0), "{}{}", probe.stdout, probe.stderr);

    // ---- rotate and revoke --------------------------------------------------------------
    // `iat` has whole seconds and a token of the rotation's own second is let be: rotate
    // in a later second than the token's, so its refusal below is owed.
    let payload = bearer.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("JWT payload"),
    )
    .unwrap();
    let iat = claims["iat"].as_u64().expect("iat");
    let now_s = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    assert!(support::wait_until(Duration::from_secs(2), || now_s() > iat));
    let (_, rotated) = run.hand_out("rotated license secret", &["license", "rotate", &lic_id]);
    assert_ne!(rotated, lic_secret);
    run.ok(&["license", "revoke", &gone_id], None);
    run.manifest_until(&basic(&lic_id, &rotated), 200);
    run.manifest_until(&basic("x", &gone_secret), 401);
    assert_eq!(run.manifest(&basic(&lic_id, &lic_secret)).status, 401);
    assert_eq!(
        run.manifest(&format!("Bearer {bearer}")).status,
        401,
        "a token of the old secret"
    );
    run.skopeo(&format!("{lic_id}:{rotated}"));
    let listed = run.ok_json(&["license", "list", "--state", "revoked"], None);
    assert_eq!(find(&listed, &gone_id)["state"], "revoked");

    // ---- the audit trail, metrics, a reload, the stop -----------------------------------
    let trail = run.admin_get("/api/v1/audit?limit=500", &robot);
    let trail_text = trail.to_string();
    for action in [
        "license.create",
        "license.rotate",
        "license.revoke",
        "apikey.create",
        "admin_token.create",
    ] {
        assert!(trail_text.contains(action), "no {action} in {trail}");
    }
    let scrape = run.metrics();
    for want in [
        "berth_licenses{state=\"active\"}",
        "berth_licenses{state=\"revoked\"} 1",
        "berth_api_keys",
        &config_fp,
        &lic_id,
    ] {
        assert!(scrape.contains(want), "no {want} in /metrics:\n{scrape}");
    }
    run.berth.sighup();
    assert!(
        support::wait_until(Duration::from_secs(5), || run
            .berth
            .logs()
            .contains("configuration reloaded")),
        "no reload line"
    );
    assert_eq!(run.manifest(&basic("x", &config_license)).status, 200);
    run.manifest_until(&basic(&lic_id, &rotated), 200);
    run.metrics();

    // The raw state (and its journal) while berth runs.
    assert!(
        run.at_rest("running") >= 2,
        "no state.db and journal to scan"
    );

    run.berth.sigterm();
    let status = run
        .berth
        .wait_exit(Duration::from_secs(10))
        .expect("berth did not stop");
    assert!(status.success(), "{status}");
    let log = run.berth.logs();
    for want in [
        "SIGTERM received",
        "shutting down",
        "configuration reloaded",
        "authentication failed",
        "admin request",
    ] {
        assert!(log.contains(want), "no {want:?} in berth's log:\n{log}");
    }
    assert!(
        log.contains(" DEBUG ") || log.contains(" TRACE "),
        "not logging below info:\n{log}"
    );
    // The pull lines name the license by its public id and its customer.
    let pull_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("manifests/v1") && l.contains("status=200"))
        .collect();
    assert!(
        pull_lines
            .iter()
            .any(|l| l.contains(&lic_id) && l.contains(CUSTOMER)),
        "no pull line with {lic_id} and {CUSTOMER}:\n{log}"
    );
    assert!(
        pull_lines.iter().any(|l| l.contains(&key_id)),
        "no pull line with {key_id}"
    );
    assert!(
        pull_lines.iter().any(|l| l.contains(&config_fp)),
        "no pull line with {config_fp}"
    );
    // skopeo went through the token endpoint, logged by who it gave tokens to.
    assert!(
        log.lines()
            .any(|l| l.contains("path=/token") && l.contains("status=200") && l.contains(CUSTOMER)),
        "no token request of {CUSTOMER}:\n{log}"
    );
    run.see("berth serve's log", log, &[]);
    let audit = std::fs::read_to_string(run.audit_log()).expect("audit.log");
    let records: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l}: {e}")))
        .collect();
    let of = |id: &str| records.iter().filter(|r| r["fingerprint"] == id).count();
    assert!(of(&lic_id) >= 3, "{audit}");
    assert!(of(&key_id) >= 1 && of(&config_fp) >= 1, "{audit}");
    assert!(records
        .iter()
        .any(|r| r["customer"] == CUSTOMER && r["image"] == format!("{HOST}/{REPO}")));
    run.see("audit.log", audit, &[]);
    run.at_rest("stopped");

    // ---- the scan ---------------------------------------------------------------------------
    let canaries = run.canaries.borrow().clone();
    let seen = run.seen.borrow();
    assert!(canaries.len() >= 14, "{} canaries", canaries.len());
    assert!(*run.scrapes.borrow() >= 4);
    assert!(seen.len() > 100, "only {} outputs scanned", seen.len());
    let found = leaks(&canaries, &seen);
    assert!(
        found.is_empty(),
        "{} leaks:\n{}",
        found.len(),
        found.join("\n\n")
    );

    // ---- at rest: keyed hashes of the live secrets --------------------------------------
    let db = rusqlite::Connection::open_with_flags(
        run.state_db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open state.db");
    let key_hex: String = db
        .query_row("SELECT value FROM meta WHERE key = 'hash_key'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let hash_key = (0..32)
        .map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &hash_key);
    let hashed = |s: &str| support::hex(ring::hmac::sign(&hmac, s.as_bytes()).as_ref());
    let stored = |sql: &str, id: &str| -> String {
        db.query_row(sql, [id], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql} {id}: {e}"))
    };
    let lic_sql = "SELECT secret_hash FROM licenses WHERE id = ?1";
    assert_eq!(stored(lic_sql, &lic_id), hashed(&rotated));
    assert_eq!(stored(lic_sql, &gone_id), hashed(&gone_secret));
    let key_sql = "SELECT key_hash FROM api_keys WHERE id = ?1";
    assert_eq!(stored(key_sql, &key_id), hashed(&key));
    assert_eq!(stored(key_sql, &robot_key_id), hashed(&robot_key));
    let tokens: Vec<String> = db
        .prepare("SELECT token_hash FROM admin_tokens")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut want = vec![hashed(&cli_admin), hashed(&robot)];
    let mut tokens = tokens;
    tokens.sort();
    want.sort();
    assert_eq!(tokens, want);
    drop(seen);
    let elapsed = t0.elapsed();
    eprintln!(
        "canary: {} canaries × {} outputs scanned, clean, in {elapsed:?}",
        canaries.len(),
        run.seen.borrow().len()
    );
}
