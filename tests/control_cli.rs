//! The control plane's command line, run as the real binary on a real SQLite state file:
//! `berth license|apikey|admin-token|usage`, their `--json` shapes and exit codes, changes
//! made on the command line taking effect on a running `berth serve` within a second, and
//! the canary every test ends with: no secret in any output but the create/rotate answers
//! that hand it out. `--server` (the admin API) is exercised end to end at the bottom.

#[path = "support/http.rs"]
mod http;
mod support;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;

use support::berth::{run_cli, Berth, CliRun};
use support::image::{push_image, ImageSpec, MANIFEST_MEDIA_TYPE};
use support::registry::{Registry, RegistryAuth};

const TIMEOUT: Duration = Duration::from_secs(30);
/// The password of the config file's license: a secret like any other.
const CONFIG_LICENSE: &str = "LICENSE-config-canary-0001";
const HOST: &str = "upstream.test";
const VENDOR: &str = "vendor";
const UPSTREAM_PASSWORD: &str = "upstream-canary-5e2a";
/// How soon a change made on the command line is in force on a running berth.
const IN_FORCE_WITHIN: Duration = Duration::from_secs(1);

// ---- fixtures -------------------------------------------------------------------------

/// A berth config (and its state, SQLite in `cache.dir`), and every command run against
/// it, so that each test can end by scanning all of them for secrets.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// (command, stdout + stderr) of every run that must not show a secret.
    shown: RefCell<Vec<(String, String)>>,
    /// Every secret handed out (and the config license's password).
    secrets: RefCell<Vec<String>>,
    /// Given to every run (BERTH_ADMIN_TOKEN for --server).
    env: Vec<(String, String)>,
    /// `--server URL` for every run while set.
    server: RefCell<Option<String>>,
}

/// The YAML of a site's config: `listen` and the upstream's URL vary, `extra` is appended
/// under `server:`, `auth` is the `auth:` mapping's body.
fn config_yaml(
    listen: &str,
    cache: &Path,
    upstream_url: &str,
    server_extra: &str,
    auth: &str,
) -> String {
    format!(
        "server: {{ listen: \"{listen}\", hostname: \"{listen}\"{server_extra} }}\n\
         cache: {{ dir: \"{}\" }}\n\
         auth: {{ {auth} }}\n\
         upstreams:\n\
         \x20 - {{ name: up, url: \"{upstream_url}\", host: {HOST}, username: {VENDOR}, password: \"{UPSTREAM_PASSWORD}\" }}\n\
         apps:\n\
         \x20 - {{ slug: acme, upstreams: [up] }}\n\
         \x20 - {{ slug: other, upstreams: [up] }}\n\
         licenses:\n\
         \x20 - {{ id: {CONFIG_LICENSE}, app: acme, customer: Config Corp }}\n",
        cache.display()
    )
}

impl Site {
    /// A config of its own whose upstream is never contacted.
    fn new() -> Site {
        let dir = support::tempdir();
        let yaml = config_yaml(
            "127.0.0.1:1",
            &dir.path().join("cache"),
            "http://127.0.0.1:1",
            "",
            "",
        );
        Site::with_config(dir, yaml)
    }

    fn with_config(dir: tempfile::TempDir, yaml: String) -> Site {
        let config = dir.path().join("berth.yaml");
        std::fs::write(&config, yaml).expect("write config");
        Site::at(dir, config)
    }

    /// Commands against an existing config file (a running berth's).
    fn at(dir: tempfile::TempDir, config: PathBuf) -> Site {
        Site {
            dir,
            config,
            shown: RefCell::new(Vec::new()),
            secrets: RefCell::new(vec![CONFIG_LICENSE.to_string(), UPSTREAM_PASSWORD.into()]),
            env: Vec::new(),
            server: RefCell::new(None),
        }
    }

    fn state_db(&self) -> PathBuf {
        self.dir.path().join("cache").join("state.db")
    }

    fn exec(&self, args: &[&str], stdin: Option<&str>) -> CliRun {
        let config = self.config.to_str().expect("utf-8 path");
        let server = self.server.borrow().clone();
        let mut all = vec!["--config", config];
        if let Some(url) = &server {
            all.extend(["--server", url.as_str()]);
        }
        all.extend_from_slice(args);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        run_cli(&all, &env, stdin, TIMEOUT)
    }

    /// A command whose output must not hold any secret.
    fn run(&self, args: &[&str]) -> CliRun {
        let r = self.exec(args, None);
        self.shown
            .borrow_mut()
            .push((args.join(" "), format!("{}{}", r.stdout, r.stderr)));
        r
    }

    /// `run` with `--json`, which must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let r = self.run(&a);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", r.stdout))
    }

    /// A command that hands out a secret (create, rotate): it must succeed; every secret in
    /// its output is remembered for the canary, and its stderr must hold none.
    fn hand_out(&self, args: &[&str]) -> CliRun {
        let r = self.exec(args, None);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        let found = secrets_in(&r.stdout);
        assert!(
            !found.is_empty(),
            "{args:?} printed no secret: {}",
            r.stdout
        );
        self.secrets.borrow_mut().extend(found);
        self.shown
            .borrow_mut()
            .push((format!("{} (stderr)", args.join(" ")), r.stderr.clone()));
        r
    }

    /// `hand_out` with `--json`.
    fn hand_out_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let r = self.hand_out(&a);
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", r.stdout))
    }

    /// Remembers a secret that did not come from a create (the admin token a test made up).
    fn secret(&self, s: &str) {
        self.secrets.borrow_mut().push(s.to_string());
    }

    /// Records text produced elsewhere (a server log) for the canary.
    fn also_scan(&self, what: &str, text: String) {
        self.shown.borrow_mut().push((what.to_string(), text));
    }

    /// The canary: no remembered secret, in clear or base64, and nothing shaped like one,
    /// in any output but the create/rotate answers.
    fn assert_no_secret_shown(&self) {
        let secrets = self.secrets.borrow();
        assert!(
            secrets.len() > 2,
            "the test handed out no secret to look for"
        );
        for (what, text) in self.shown.borrow().iter() {
            for s in secrets.iter() {
                assert!(
                    !text.contains(s.as_str()),
                    "`{what}` shows the secret {s}:\n{text}"
                );
                let b64 = STANDARD.encode(s);
                assert!(
                    !text.contains(&b64),
                    "`{what}` shows the secret {s} in base64:\n{text}"
                );
            }
            let shaped = secrets_in(text);
            assert!(
                shaped.is_empty(),
                "`{what}` shows secrets {shaped:?}:\n{text}"
            );
        }
    }
}

/// Every `berth_lic_…`, `berth_key_…`, `berth_adm_…` (40 base32 characters) in `text`.
fn secrets_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["berth_lic_", "berth_key_", "berth_adm_"] {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            let n = rest
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(b))
                .count();
            if n >= 40 {
                out.push(format!("{prefix}{}", &rest[..40]));
            }
        }
    }
    out
}

fn code(r: &CliRun) -> Option<i32> {
    r.code
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no string {k:?} in {v}"))
}

/// The licenses of a `list --json`, by id.
fn by_id<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("list --json is not an array: {list}"))
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list}"))
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|v| v["id"].as_str().expect("id"))
        .collect()
}

/// The fingerprint berth uses as the public id of a config file's license.
fn fingerprint(secret: &str) -> String {
    support::sha256_hex(secret.as_bytes())[..32].to_string()
}

// ---- licenses, locally ----------------------------------------------------------------

#[test]
fn license_create_list_extend_revoke_rotate_and_their_json() {
    let site = Site::new();

    // create --json: the view, the secret once, what to send the customer.
    let c = site.hand_out_json(&[
        "license",
        "create",
        "--app",
        "acme",
        "--customer",
        "Big Bank",
        "--expires",
        "2099-06-30",
        "--images",
        "upstream.test/acme/*",
        "upstream.test/tools/*",
    ]);
    let id = s(&c, "id").to_string();
    let secret = s(&c, "secret").to_string();
    assert!(id.starts_with("lic_") && id.len() == 20, "{c}");
    assert!(
        secret.starts_with("berth_lic_") && secret.len() == 50,
        "{c}"
    );
    assert_eq!(s(&c, "state"), "active");
    assert_eq!(s(&c, "origin"), "store");
    assert_eq!(s(&c, "app"), "acme");
    assert_eq!(s(&c, "customer"), "Big Bank");
    assert_eq!(
        s(&c, "expires"),
        "2099-07-01T00:00:00Z",
        "valid through the day given"
    );
    assert_eq!(
        c["images"],
        serde_json::json!(["upstream.test/acme/*", "upstream.test/tools/*"])
    );
    assert!(c["created"].is_string() && c["last_pull"].is_null(), "{c}");
    assert_eq!(
        s(&c, "docker_login"),
        format!("docker login 127.0.0.1:1 -u {id} -p {secret}")
    );
    let ps = s(&c, "pull_secret");
    assert!(ps.contains("type: kubernetes.io/dockerconfigjson"), "{ps}");
    let encoded = ps
        .lines()
        .find_map(|l| l.trim().strip_prefix(".dockerconfigjson: "))
        .unwrap_or_else(|| panic!("no .dockerconfigjson in {ps}"));
    let docker_config: Value = serde_json::from_slice(&STANDARD.decode(encoded).unwrap()).unwrap();
    assert_eq!(
        docker_config["auths"]["127.0.0.1:1"]["password"],
        secret.as_str()
    );

    // The human create prints the same three things.
    let human = site.hand_out(&[
        "license",
        "create",
        "--app",
        "acme",
        "--customer",
        "Small Shop",
    ]);
    let small_secret = secrets_in(&human.stdout)[0].clone();
    assert!(
        human.stdout.contains(&format!("-p {small_secret}")),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("kubernetes.io/dockerconfigjson"),
        "{}",
        human.stdout
    );
    let small = site.json(&["license", "list", "--app", "acme"]);
    let small_id = ids(&small)
        .into_iter()
        .find(|i| by_id(&small, i)["customer"] == "Small Shop")
        .expect("Small Shop listed")
        .to_string();

    let third = site.hand_out_json(&[
        "license",
        "create",
        "--app",
        "other",
        "--customer",
        "Third",
        "--expires",
        "30d",
    ]);
    let third_id = s(&third, "id").to_string();

    // list --json: an array of views, the config file's license among them.
    let list = site.json(&["license", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    let config_id = fingerprint(CONFIG_LICENSE);
    assert_eq!(by_id(&list, &config_id)["origin"], "config");
    assert_eq!(by_id(&list, &config_id)["customer"], "Config Corp");
    for i in [&id, &small_id, &third_id] {
        assert_eq!(by_id(&list, i)["state"], "active", "{list}");
        assert_eq!(by_id(&list, i)["origin"], "store", "{list}");
        assert!(by_id(&list, i).get("secret").is_none(), "{list}");
    }
    let mut sorted = ids(&list);
    sorted.sort();
    assert_eq!(ids(&list), sorted, "listed by id");

    // Extending to the past ends a license now; revoking ends one for good.
    let e = site.json(&["license", "extend", &small_id, "--expires", "2020-01-01"]);
    assert_eq!(
        (s(&e, "state"), s(&e, "expires")),
        ("expired", "2020-01-02T00:00:00Z")
    );
    let r = site.json(&["license", "revoke", &third_id]);
    assert_eq!(s(&r, "state"), "revoked");
    let list = site.json(&["license", "list"]);
    assert_eq!(by_id(&list, &id)["state"], "active");
    assert_eq!(by_id(&list, &small_id)["state"], "expired");
    assert_eq!(by_id(&list, &third_id)["state"], "revoked");
    for (state, want) in [
        ("active", vec![config_id.as_str(), id.as_str()]),
        ("expired", vec![small_id.as_str()]),
        ("revoked", vec![third_id.as_str()]),
    ] {
        let mut want = want;
        want.sort();
        assert_eq!(
            ids(&site.json(&["license", "list", "--state", state])),
            want,
            "--state {state}"
        );
    }
    assert_eq!(
        ids(&site.json(&["license", "list", "--app", "other"])),
        [third_id.as_str()]
    );

    // --never takes the expiry away again; show reads back what list does.
    let e = site.json(&["license", "extend", &small_id, "--never"]);
    assert_eq!(s(&e, "state"), "active");
    assert!(e["expires"].is_null(), "{e}");
    let e = site.json(&[
        "license",
        "extend",
        &id,
        "--expires",
        "2100-01-01T12:00:00Z",
    ]);
    assert_eq!(s(&e, "expires"), "2100-01-01T12:00:00Z");
    assert_eq!(site.json(&["license", "show", &id]), e);

    // rotate: a new secret, the same license.
    let rot = site.hand_out_json(&["license", "rotate", &id]);
    assert_eq!(s(&rot, "id"), id);
    let new_secret = s(&rot, "secret");
    assert!(
        new_secret.starts_with("berth_lic_") && new_secret != secret,
        "{rot}"
    );
    assert!(s(&rot, "docker_login").ends_with(new_secret), "{rot}");

    // The human listing: an aligned table, one line per license.
    let t = site.run(&["license", "list"]);
    assert_eq!(t.code, Some(0), "{}", t.stderr);
    let lines: Vec<&str> = t.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", t.stdout);
    for col in [
        "ID",
        "CUSTOMER",
        "APP",
        "EXPIRES",
        "STATE",
        "ORIGIN",
        "LAST PULL",
    ] {
        assert!(lines[0].contains(col), "{}", t.stdout);
    }
    let state_col = lines[0].find("STATE").unwrap();
    for l in &lines[1..] {
        let state = l[state_col..].split_whitespace().next().unwrap();
        assert!(
            ["active", "expired", "revoked"].contains(&state),
            "column misaligned: {}",
            t.stdout
        );
    }
    assert!(
        t.stdout.contains(&third_id) && t.stdout.contains("Big Bank"),
        "{}",
        t.stdout
    );
    let shown = site.run(&["license", "show", &id]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    assert!(
        shown.stdout.contains("Big Bank") && shown.stdout.contains("2100-01-01T12:00:00Z"),
        "{}",
        shown.stdout
    );

    site.assert_no_secret_shown();
}

#[test]
fn the_config_files_licenses_are_listed_and_changed_only_in_the_file() {
    let site = Site::new();
    site.hand_out(&["license", "create", "--app", "acme", "--customer", "Stored"]);
    let id = fingerprint(CONFIG_LICENSE);
    let v = site.json(&["license", "show", &id]);
    assert_eq!((s(&v, "origin"), s(&v, "state")), ("config", "active"));
    for args in [
        vec!["license", "revoke", id.as_str()],
        vec!["license", "extend", id.as_str(), "--expires", "90d"],
        vec!["license", "rotate", id.as_str()],
    ] {
        let r = site.run(&args);
        assert_eq!(code(&r), Some(1), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        assert!(
            r.stderr.starts_with("berth: ")
                && r.stderr.contains("config file")
                && r.stderr.contains(&id),
            "{args:?}: {}",
            r.stderr
        );
    }
    // Its password where the id belongs: refused, naming the id, not repeating the password.
    let r = site.run(&["license", "revoke", CONFIG_LICENSE]);
    assert_eq!(code(&r), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains(&id), "{}", r.stderr);
    assert_eq!(site.json(&["license", "show", &id])["state"], "active");
    site.assert_no_secret_shown();
}

#[test]
fn bad_input_exits_1_naming_the_field_and_bad_usage_exits_2() {
    let site = Site::new();
    let c = site.hand_out_json(&[
        "license",
        "create",
        "--app",
        "acme",
        "--customer",
        "Big Bank",
    ]);
    let id = s(&c, "id").to_string();
    let secret = s(&c, "secret").to_string();

    let refused = |args: &[&str], naming: &str| {
        let r = site.run(args);
        assert_eq!(code(&r), Some(1), "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "{args:?}: one line: {}",
            r.stderr
        );
        assert!(
            r.stderr.starts_with(&format!("berth: {naming}")),
            "{args:?}: want `berth: {naming}…`, got {}",
            r.stderr
        );
    };
    refused(
        &[
            "license",
            "create",
            "--app",
            "acme",
            "--customer",
            "X",
            "--expires",
            "soon",
        ],
        "expires",
    );
    refused(
        &[
            "license",
            "create",
            "--app",
            "acme",
            "--customer",
            "X",
            "--expires",
            "2020-01-01",
        ],
        "expires",
    );
    refused(
        &["license", "create", "--app", "nope", "--customer", "X"],
        "app",
    );
    refused(
        &["license", "create", "--app", "acme", "--customer", " "],
        "customer",
    );
    refused(
        &[
            "license",
            "create",
            "--app",
            "acme",
            "--customer",
            "X",
            "--images",
            "a//b",
        ],
        "images[0]",
    );
    refused(&["license", "extend", &id, "--expires", "soon"], "expires");
    refused(
        &["license", "show", "lic_aaaaaaaaaaaaaaaa"],
        "license lic_aaaaaaaaaaaaaaaa not found",
    );
    refused(
        &["license", "revoke", "lic_aaaaaaaaaaaaaaaa"],
        "license lic_aaaaaaaaaaaaaaaa not found",
    );
    refused(
        &[
            "apikey",
            "create",
            "--app",
            "nope",
            "--name",
            "ci",
            "--actions",
            "pull",
        ],
        "apps[0]",
    );
    refused(
        &[
            "apikey",
            "create",
            "--app",
            "acme",
            "--name",
            "ci",
            "--actions",
            "fly",
        ],
        "actions[0]",
    );
    refused(
        &[
            "apikey",
            "create",
            "--app",
            "acme",
            "--name",
            "c i",
            "--actions",
            "pull",
        ],
        "name",
    );
    refused(
        &[
            "apikey",
            "create",
            "--app",
            "acme",
            "--name",
            "ci",
            "--actions",
            "pull",
            "--expires",
            "soon",
        ],
        "expires",
    );
    refused(
        &["apikey", "show", "key_aaaaaaaaaaaaaaaa"],
        "API key key_aaaaaaaaaaaaaaaa not found",
    );
    refused(&["usage", "--since", "lately"], "since");
    // Nothing was created by the refused commands.
    assert_eq!(ids(&site.json(&["license", "list"])).len(), 2);
    assert_eq!(site.json(&["apikey", "list"]), serde_json::json!([]));

    // A secret where an id belongs is refused without being repeated.
    for args in [
        vec!["license", "show", secret.as_str()],
        vec!["license", "revoke", secret.as_str()],
        vec!["usage", "--license", secret.as_str()],
    ] {
        let r = site.run(&args);
        assert_eq!(code(&r), Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("secret"), "{}", r.stderr);
    }
    assert_eq!(site.json(&["license", "show", &id])["state"], "active");

    // Usage errors: clap's for flags, 2 for the config.
    for args in [
        vec!["license", "list", "--state", "gone"],
        vec!["license", "extend", id.as_str()],
        vec!["license", "create", "--app", "acme"],
        vec!["apikey", "create", "--app", "acme", "--name", "ci"],
    ] {
        let r = site.run(&args);
        assert_eq!(code(&r), Some(2), "{args:?}: {}", r.stderr);
    }
    let r = run_cli(
        &["--config", "/nonexistent/berth.yaml", "license", "list"],
        &[],
        None,
        TIMEOUT,
    );
    assert_eq!(code(&r), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.starts_with("berth: invalid configuration"),
        "{}",
        r.stderr
    );
    let bad = site.dir.path().join("bad.yaml");
    let yaml = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &bad,
        format!("{yaml}state: {{ sqlite: x, postgres: \"postgres://h/db\" }}\n"),
    )
    .unwrap();
    let r = run_cli(
        &["--config", bad.to_str().unwrap(), "license", "list"],
        &[],
        None,
        TIMEOUT,
    );
    assert_eq!(code(&r), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("state.sqlite"), "{}", r.stderr);

    // A store that cannot be opened: one clear line, exit 1.
    let not_a_db = site.dir.path().join("not-a-db");
    std::fs::write(&not_a_db, "this is not SQLite\n".repeat(100)).unwrap();
    let cfg = site.dir.path().join("broken.yaml");
    std::fs::write(
        &cfg,
        format!("{yaml}state: {{ sqlite: \"{}\" }}\n", not_a_db.display()),
    )
    .unwrap();
    for args in [
        vec!["license", "list"],
        vec!["apikey", "list"],
        vec!["usage"],
    ] {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend(args.iter().copied());
        let r = run_cli(&all, &[], None, TIMEOUT);
        assert_eq!(code(&r), Some(1), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(
            r.stderr.starts_with("berth: state store unavailable: ")
                && r.stderr.contains("state.sqlite"),
            "{}",
            r.stderr
        );
    }

    // --server and --token belong to the control plane's commands only.
    let r = site.run(&["check-config", "--server", "http://127.0.0.1:1"]);
    assert_eq!(code(&r), Some(2), "{}", r.stderr);
    site.assert_no_secret_shown();
}

// ---- API keys and admin tokens, locally -----------------------------------------------

#[test]
fn apikeys_are_created_once_listed_shown_and_revoked() {
    let site = Site::new();
    let k = site.hand_out_json(&[
        "apikey",
        "create",
        "--app",
        "acme",
        "--app",
        "other",
        "--name",
        "ci-main",
        "--actions",
        "push,pull",
        "--expires",
        "90d",
    ]);
    let id = s(&k, "id").to_string();
    let key = s(&k, "key").to_string();
    assert!(id.starts_with("key_"), "{k}");
    assert!(key.starts_with("berth_key_") && key.len() == 50, "{k}");
    assert_eq!(k["apps"], serde_json::json!(["acme", "other"]));
    assert_eq!(
        k["actions"],
        serde_json::json!(["pull", "push"]),
        "sorted, deduplicated"
    );
    assert_eq!(s(&k, "state"), "active");
    let human = site.hand_out(&[
        "apikey",
        "create",
        "--app",
        "acme",
        "--name",
        "deploy",
        "--actions",
        "pull",
    ]);
    assert!(
        human.stdout.contains("docker login 127.0.0.1:1 -u api"),
        "{}",
        human.stdout
    );

    let list = site.json(&["apikey", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(by_id(&list, &id)["name"], "ci-main");
    assert!(by_id(&list, &id).get("key").is_none(), "{list}");
    assert_eq!(
        ids(&site.json(&["apikey", "list", "--app", "other"])),
        [id.as_str()]
    );
    assert_eq!(site.json(&["apikey", "show", &id]), *by_id(&list, &id));

    let r = site.json(&["apikey", "revoke", &id]);
    assert_eq!(s(&r, "state"), "revoked");
    assert_eq!(
        ids(&site.json(&["apikey", "list", "--state", "revoked"])),
        [id.as_str()]
    );
    assert_eq!(
        site.json(&["apikey", "list", "--state", "active"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let t = site.run(&["apikey", "list"]);
    assert_eq!(t.code, Some(0));
    assert!(
        t.stdout.starts_with("ID ")
            && t.stdout.contains("LAST USED")
            && t.stdout.contains("ci-main"),
        "{}",
        t.stdout
    );
    for args in [
        vec!["apikey", "show", id.as_str()],
        vec!["apikey", "revoke", id.as_str()],
    ] {
        let r = site.run(&args);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
    }
    site.assert_no_secret_shown();
}

#[test]
fn admin_token_hash_prints_the_sha256_the_config_takes() {
    let site = Site::new();
    let token = "berth_adm_thisisamadeuptokenforthehashtest234567";
    site.secret(token);
    for input in [
        token.to_string(),
        format!("{token}\n"),
        format!("{token}\r\n"),
    ] {
        let r = site.exec(&["admin-token", "hash"], Some(&input));
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(
            r.stdout,
            format!("{}\n", support::sha256_hex(token.as_bytes()))
        );
        site.also_scan("admin-token hash", format!("{}{}", r.stdout, r.stderr));
    }
    let r = site.exec(&["admin-token", "hash"], Some("\n"));
    assert_eq!(r.code, Some(2), "{}", r.stderr);

    // The printed hash is what auth.admin_tokens takes: the config's token is then listed.
    let hex = support::sha256_hex(token.as_bytes());
    let dir = support::tempdir();
    let yaml = config_yaml(
        "127.0.0.1:1",
        &dir.path().join("cache"),
        "http://127.0.0.1:1",
        "",
        &format!("admin_tokens: [ {{ name: ops, sha256: \"{hex}\" }} ]"),
    );
    let with = Site::with_config(dir, yaml);
    let check = with.run(&["check-config"]);
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    let created = with.hand_out_json(&["admin-token", "create", "--name", "ci-bot"]);
    assert!(s(&created, "token").starts_with("berth_adm_"), "{created}");
    let list = with.json(&["admin-token", "list"]);
    assert_eq!(by_id(&list, "config:ops")["origin"], "config");
    assert_eq!(by_id(&list, s(&created, "id"))["state"], "active");
    let r = with.run(&["admin-token", "revoke", "config:ops"]);
    assert_eq!(code(&r), Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("config file"), "{}", r.stderr);
    let r = with.json(&["admin-token", "revoke", s(&created, "id")]);
    assert_eq!(s(&r, "state"), "revoked");
    with.secret(token);
    with.assert_no_secret_shown();
    site.assert_no_secret_shown();
}

// ---- usage ----------------------------------------------------------------------------

/// Pull records as `berth serve` writes them (the store's `pulls` and `transfer` tables).
fn record_pulls(
    db: &Path,
    rows: &[(&str, &str, &str, &str, &str, i64)],
    bytes: &[(&str, &str, u64)],
) {
    let conn = rusqlite::Connection::open(db).expect("open state.db");
    for (subject, app, image, reference, digest, ago_s) in rows {
        let t = SystemTime::now() - Duration::from_secs(*ago_s as u64);
        let ms = t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        conn.execute(
            "INSERT INTO pulls (time_ms, subject, app, image, reference, digest, client, user_agent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, '127.0.0.1', 'test')",
            rusqlite::params![ms, subject, app, image, reference, digest],
        )
        .expect("insert pull");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (subject, app, n) in bytes {
        conn.execute(
            "INSERT INTO transfer (subject, app, image, day_ms, bytes) VALUES (?1, ?2, 'upstream.test/acme/api', ?3, ?4)",
            rusqlite::params![subject, app, now - now % 86_400_000, *n as i64],
        )
        .expect("insert transfer");
    }
}

#[test]
fn usage_reports_pulls_per_license_and_key() {
    let site = Site::new();
    let l = site.hand_out_json(&[
        "license",
        "create",
        "--app",
        "acme",
        "--customer",
        "Big Bank",
    ]);
    let k = site.hand_out_json(&[
        "apikey",
        "create",
        "--app",
        "acme",
        "--name",
        "ci-main",
        "--actions",
        "pull",
    ]);
    let (lid, kid) = (s(&l, "id").to_string(), s(&k, "id").to_string());
    let d1 = format!("sha256:{}", "1".repeat(64));
    let d2 = format!("sha256:{}", "2".repeat(64));
    let day = 86_400;
    record_pulls(
        &site.state_db(),
        &[
            (&lid, "acme", "upstream.test/acme/api", "1.0", &d1, 40 * day),
            (&lid, "acme", "upstream.test/acme/api", "1.0", &d1, 3 * day),
            (&lid, "acme", "upstream.test/acme/api", "1.0", &d2, 60),
            (&lid, "acme", "upstream.test/acme/web", "2.0", &d1, 120),
            (&kid, "acme", "upstream.test/acme/api", "1.0", &d2, 30),
        ],
        &[(&lid, "acme", 5 << 20), (&kid, "acme", 1000)],
    );

    // Default: the last 30 days.
    let u = site.json(&["usage"]);
    assert!(u["since"].is_string(), "{u}");
    let subjects = u["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 2, "{u}");
    let lic = subjects
        .iter()
        .find(|v| v["id"] == lid.as_str())
        .expect("license");
    assert_eq!(
        (s(lic, "kind"), s(lic, "name"), s(lic, "app")),
        ("license", "Big Bank", "acme")
    );
    assert_eq!(lic["pulls"], 3, "the 40-day-old pull is outside 30d: {u}");
    assert_eq!(lic["bytes"], 5 << 20);
    let api = lic["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == "upstream.test/acme/api")
        .expect("api image");
    assert_eq!(
        (api["pulls"].as_u64(), s(api, "digest")),
        (Some(2), d2.as_str()),
        "last digest wins"
    );
    let key = subjects
        .iter()
        .find(|v| v["id"] == kid.as_str())
        .expect("key");
    assert_eq!(
        (s(key, "kind"), s(key, "name"), key["pulls"].as_u64()),
        ("apikey", "ci-main", Some(1))
    );

    let u = site.json(&["usage", "--since", "60d", "--license", &lid]);
    let subjects = u["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1, "{u}");
    assert_eq!(subjects[0]["pulls"], 4);
    assert_eq!(
        site.json(&["usage", "--app", "other"])["subjects"],
        serde_json::json!([])
    );

    // The listing shows the last pull; the human report names customer and images.
    let list = site.json(&["license", "list"]);
    assert!(by_id(&list, &lid)["last_pull"].is_string(), "{list}");
    let h = site.run(&["usage"]);
    assert_eq!(h.code, Some(0), "{}", h.stderr);
    for want in [
        "Big Bank",
        "ci-main",
        "upstream.test/acme/web",
        "5.0 MiB",
        &d2,
    ] {
        assert!(h.stdout.contains(want), "{want}: {}", h.stdout);
    }
    site.assert_no_secret_shown();
}

// ---- end to end with a running berth --------------------------------------------------

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A real upstream with `acme/api:v1`, and berth in front of it on SQLite state that the
/// command line writes while berth serves.
struct Running {
    _reg: Registry,
    berth: Berth,
    site: Site,
}

impl Running {
    fn start(server_extra: &str, auth: &str) -> Running {
        let reg = Registry::start(RegistryAuth::Htpasswd {
            user: VENDOR.into(),
            password: UPSTREAM_PASSWORD.into(),
        });
        push_image(
            &reg,
            Some((VENDOR, UPSTREAM_PASSWORD)),
            "acme/api",
            "v1",
            &ImageSpec {
                layer_sizes: vec![1000, 3000],
                seed: 17,
            },
        );
        let dir = support::tempdir();
        let port = support::free_port();
        let yaml = config_yaml(
            &format!("127.0.0.1:{port}"),
            &dir.path().join("cache"),
            &reg.url(),
            server_extra,
            auth,
        );
        let berth = Berth::start_on(port, &yaml, &[]);
        let site = Site::at(dir, berth.config_path.clone());
        Running {
            _reg: reg,
            berth,
            site,
        }
    }

    /// The status of a manifest GET of `acme/api:v1` through `app` with Basic `user:password`.
    fn pull(&self, app: &str, user: &str, password: &str) -> u16 {
        http::get(
            self.berth.port,
            &format!("/v2/proxy/{app}/{HOST}/acme/api/manifests/v1"),
            &[
                ("Accept", MANIFEST_MEDIA_TYPE),
                ("Authorization", &basic(user, password)),
            ],
        )
        .status
    }

    /// How long until `pull` answers `want`; every 100 ms (slower polls than the failed-login
    /// throttle's 10 a burst while an unknown secret is refused), at most 5 s.
    fn until(&self, want: u16, pull: impl Fn() -> u16) -> Duration {
        let started = Instant::now();
        loop {
            let got = pull();
            if got == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "still {got}, not {want}, after 5 s; berth log:\n{}",
                self.berth.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn licenses_and_keys_made_on_the_cli_are_in_force_on_a_running_berth_within_a_second() {
    let run = Running::start("", "");
    let site = &run.site;

    // A new license pulls within a second of `license create` returning.
    let c = site.hand_out_json(&[
        "license",
        "create",
        "--app",
        "acme",
        "--customer",
        "Big Bank",
    ]);
    let (id, secret) = (s(&c, "id").to_string(), s(&c, "secret").to_string());
    let took = run.until(200, || run.pull("acme", &id, &secret));
    assert!(
        took <= IN_FORCE_WITHIN,
        "created license pulled after {took:?}"
    );
    eprintln!("license create → first pull: {took:?}");
    assert_eq!(run.pull("other", &id, &secret), 403, "another app's images");

    // Revoked: refused within a second.
    let r = site.json(&["license", "revoke", &id]);
    assert_eq!(s(&r, "state"), "revoked");
    let took = run.until(401, || run.pull("acme", &id, &secret));
    assert!(
        took <= IN_FORCE_WITHIN,
        "revoked license refused after {took:?}"
    );
    eprintln!("license revoke → refused: {took:?}");

    // Rotated: the new secret pulls, the old one is refused.
    let c2 = site.hand_out_json(&[
        "license",
        "create",
        "--app",
        "acme",
        "--customer",
        "Rotating",
    ]);
    let (id2, old) = (s(&c2, "id").to_string(), s(&c2, "secret").to_string());
    run.until(200, || run.pull("acme", "x", &old));
    let rot = site.hand_out_json(&["license", "rotate", &id2]);
    let new = s(&rot, "secret").to_string();
    let took = run.until(200, || run.pull("acme", "x", &new));
    assert!(
        took <= IN_FORCE_WITHIN,
        "rotated secret pulled after {took:?}"
    );
    assert_eq!(
        run.pull("acme", "x", &old),
        401,
        "the old secret after rotate"
    );

    // An API key for acme pulls acme (any username, `api` by convention), nothing else.
    let k = site.hand_out_json(&[
        "apikey",
        "create",
        "--app",
        "acme",
        "--name",
        "ci-main",
        "--actions",
        "pull",
    ]);
    let (kid, key) = (s(&k, "id").to_string(), s(&k, "key").to_string());
    let took = run.until(200, || run.pull("acme", "api", &key));
    assert!(took <= IN_FORCE_WITHIN, "new key pulled after {took:?}");
    assert_eq!(
        run.pull("other", "api", &key),
        403,
        "a key for acme on another app"
    );
    site.json(&["apikey", "revoke", &kid]);
    let took = run.until(401, || run.pull("acme", "api", &key));
    assert!(
        took <= IN_FORCE_WITHIN,
        "revoked key refused after {took:?}"
    );

    // The config file's license still works beside the stored ones.
    assert_eq!(run.pull("acme", "x", CONFIG_LICENSE), 200);
    site.run(&["license", "list"]);
    site.run(&["apikey", "list"]);
    site.run(&["usage"]);
    site.also_scan("berth serve's log", run.berth.logs());
    site.assert_no_secret_shown();
}

/// How long until `command` exits with `want`; every 100 ms, at most 5 s.
fn until_exit(want: i32, command: impl Fn() -> Option<i32>) -> Duration {
    let started = Instant::now();
    loop {
        let got = command();
        if got == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still exit {got:?}, not {want}, after 5 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- --server: the admin API ----------------------------------------------------------

/// A running berth with its admin listener and one configured admin token (made up here,
/// its hash from `admin-token hash`), and the CLI pointed at it with BERTH_ADMIN_TOKEN.
struct Admin {
    run: Running,
    url: String,
    token: String,
}

impl Admin {
    fn start() -> Admin {
        let token = "berth_adm_madeupforthetestsofthecliremotemode2345";
        let r = run_cli(&["admin-token", "hash"], &[], Some(token), TIMEOUT);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let hash = r.stdout.trim().to_string();
        let admin_port = support::free_port();
        let mut run = Running::start(
            &format!(", admin_listen: \"127.0.0.1:{admin_port}\""),
            &format!("admin_tokens: [ {{ name: ops, sha256: \"{hash}\" }} ]"),
        );
        assert!(
            support::wait_for_port(admin_port, Duration::from_secs(10)),
            "admin listener"
        );
        run.site.secret(token);
        run.site
            .env
            .push(("BERTH_ADMIN_TOKEN".into(), token.into()));
        Admin {
            run,
            url: format!("http://127.0.0.1:{admin_port}"),
            token: token.into(),
        }
    }

    /// From now on the site's commands go to the admin API (`true`) or the store.
    fn remote(&self, on: bool) {
        *self.run.site.server.borrow_mut() = on.then(|| self.url.clone());
    }
}

#[test]
fn remote_mode_does_what_local_mode_does_through_the_admin_api() {
    let admin = Admin::start();
    let (run, site) = (&admin.run, &admin.run.site);
    admin.remote(true);

    // create over the API: the same shape as locally, and in force on the server.
    let c = site.hand_out_json(&[
        "license",
        "create",
        "--app",
        "acme",
        "--customer",
        "Remote Bank",
        "--expires",
        "90d",
    ]);
    let (id, secret) = (s(&c, "id").to_string(), s(&c, "secret").to_string());
    assert_eq!(
        (s(&c, "state"), s(&c, "origin")),
        ("active", "store"),
        "{c}"
    );
    assert!(s(&c, "docker_login").ends_with(&secret), "{c}");
    assert!(
        s(&c, "pull_secret").contains("kubernetes.io/dockerconfigjson"),
        "{c}"
    );
    let took = run.until(200, || run.pull("acme", &id, &secret));
    assert!(took <= IN_FORCE_WITHIN, "{took:?}");

    // The API's listing is the store's: the same JSON either way.
    let remote_list = site.json(&["license", "list"]);
    admin.remote(false);
    let local_list = site.json(&["license", "list"]);
    admin.remote(true);
    assert_eq!(remote_list, local_list);
    let remote_table = site.run(&["license", "list"]).stdout;
    admin.remote(false);
    let local_table = site.run(&["license", "list"]).stdout;
    admin.remote(true);
    assert_eq!(remote_table, local_table, "the human listing too");
    assert!(remote_table.contains("Remote Bank"), "{remote_table}");
    assert_eq!(by_id(&remote_list, &id)["state"], "active");
    assert_eq!(
        site.json(&["license", "show", &id]),
        *by_id(&local_list, &id)
    );

    // extend, rotate, revoke over the API.
    let e = site.json(&["license", "extend", &id, "--expires", "2020-01-01"]);
    assert_eq!(s(&e, "state"), "expired");
    let e = site.json(&["license", "extend", &id, "--never"]);
    assert_eq!(s(&e, "state"), "active");
    let rot = site.hand_out_json(&["license", "rotate", &id]);
    let rotated = s(&rot, "secret").to_string();
    assert_ne!(rotated, secret);
    let rv = site.json(&["license", "revoke", &id]);
    assert_eq!(s(&rv, "state"), "revoked");
    let took = run.until(401, || run.pull("acme", &id, &rotated));
    assert!(took <= IN_FORCE_WITHIN, "{took:?}");
    assert_eq!(
        ids(&site.json(&["license", "list", "--state", "revoked"])),
        [id.as_str()]
    );

    // Refusals print the problem's detail and exit 1.
    let config_id = fingerprint(CONFIG_LICENSE);
    for (args, naming) in [
        (
            vec!["license", "create", "--app", "nope", "--customer", "X"],
            "app",
        ),
        (
            vec![
                "license",
                "create",
                "--app",
                "acme",
                "--customer",
                "X",
                "--expires",
                "soon",
            ],
            "expires",
        ),
        (
            vec!["license", "show", "lic_aaaaaaaaaaaaaaaa"],
            "license lic_aaaaaaaaaaaaaaaa not found",
        ),
        (vec!["license", "revoke", config_id.as_str()], "license"),
        (
            vec![
                "apikey",
                "create",
                "--app",
                "acme",
                "--name",
                "ci",
                "--actions",
                "fly",
            ],
            "actions[0]",
        ),
    ] {
        let out = site.run(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with(&format!("berth: {naming}")),
            "{args:?}: {}",
            out.stderr
        );
    }

    // API keys, usage and admin tokens over the API.
    let k = site.hand_out_json(&[
        "apikey",
        "create",
        "--app",
        "acme",
        "--name",
        "ci",
        "--actions",
        "pull",
    ]);
    let key = s(&k, "key").to_string();
    let took = run.until(200, || run.pull("acme", "api", &key));
    assert!(took <= IN_FORCE_WITHIN, "{took:?}");
    let remote_keys = site.json(&["apikey", "list"]);
    admin.remote(false);
    assert_eq!(remote_keys, site.json(&["apikey", "list"]));
    admin.remote(true);
    assert_eq!(
        s(&site.json(&["apikey", "revoke", s(&k, "id")]), "state"),
        "revoked"
    );
    let u = site.json(&["usage", "--since", "7d"]);
    assert!(u["subjects"].is_array() && u["since"].is_string(), "{u}");
    let t = site.hand_out_json(&["admin-token", "create", "--name", "second"]);
    let tokens = site.json(&["admin-token", "list"]);
    assert_eq!(by_id(&tokens, "config:ops")["origin"], "config");
    assert_eq!(by_id(&tokens, s(&t, "id"))["state"], "active");
    // The new stored token opens the API too (given with --token this time) once the
    // server's directory has it, and is refused once revoked.
    let second = s(&t, "token").to_string();
    let with_second = || {
        site.run(&["--token", &second, "admin-token", "list", "--json"])
            .code
    };
    let took = until_exit(0, with_second);
    assert!(
        took <= IN_FORCE_WITHIN,
        "new admin token accepted after {took:?}"
    );
    let rv = site.json(&["admin-token", "revoke", s(&t, "id")]);
    assert_eq!(s(&rv, "state"), "revoked");
    let took = until_exit(1, with_second);
    assert!(
        took <= IN_FORCE_WITHIN,
        "revoked admin token refused after {took:?}"
    );
    let h = site.run(&["license", "list"]);
    assert_eq!(h.code, Some(0), "{}", h.stderr);
    assert!(
        h.stdout.contains("Remote Bank") && h.stdout.contains("revoked"),
        "{}",
        h.stdout
    );

    // A wrong token: exit 1 with the API's word, never the token.
    let wrong = "berth_adm_wrongwrongwrongwrongwrongwrongwrongwron";
    site.secret(wrong);
    let out = site.run(&["--token", wrong, "license", "list"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.starts_with("berth: "), "{}", out.stderr);
    site.also_scan("berth serve's log", run.berth.logs());
    assert!(!run.berth.logs().contains(&admin.token));
    site.assert_no_secret_shown();
}

#[test]
fn remote_mode_without_a_reachable_server_or_token_fails_in_one_line_without_the_token() {
    let token = "berth_adm_unreachableunreachableunreachable2345";
    let mut site = Site::new();
    site.env.push(("BERTH_ADMIN_TOKEN".into(), token.into()));
    site.secret(token);
    let url = format!("http://127.0.0.1:{}", support::free_port());
    *site.server.borrow_mut() = Some(url.clone());
    for args in [
        vec!["license", "list"],
        vec!["license", "create", "--app", "acme", "--customer", "X"],
        vec!["apikey", "revoke", "key_aaaaaaaaaaaaaaaa"],
        vec!["usage"],
    ] {
        let r = site.run(&args);
        assert_eq!(r.code, Some(1), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        let want = format!("berth: cannot reach the admin API at {url}");
        assert!(r.stderr.starts_with(&want), "{}", r.stderr);
    }
    *site.server.borrow_mut() = None;
    for bad in [
        "127.0.0.1:9090",
        "http://ops:pw@127.0.0.1:9090",
        "ftp://127.0.0.1",
    ] {
        let r = site.run(&["--server", bad, "license", "list"]);
        assert_eq!(r.code, Some(2), "{bad}: {}", r.stderr);
        assert!(!r.stderr.contains("pw@"), "{}", r.stderr);
    }
    // No token at all: a usage error naming where it goes.
    let r = run_cli(
        &[
            "--config",
            site.config.to_str().unwrap(),
            "--server",
            &url,
            "license",
            "list",
        ],
        &[],
        None,
        TIMEOUT,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("BERTH_ADMIN_TOKEN"), "{}", r.stderr);
    site.assert_no_secret_shown();
}

// ---- PostgreSQL: several replicas -----------------------------------------------------

#[test]
fn on_postgresql_a_license_made_on_the_cli_is_in_force_on_every_replica_within_a_second() {
    let pg = support::postgres::Postgres::start();
    let url = pg.fresh_database("cli");
    let state = format!("state: {{ postgres: \"{url}\" }}\n");
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: UPSTREAM_PASSWORD.into(),
    });
    push_image(
        &reg,
        Some((VENDOR, UPSTREAM_PASSWORD)),
        "acme/api",
        "v1",
        &ImageSpec {
            layer_sizes: vec![1000],
            seed: 23,
        },
    );
    let replica = |dir: &Path| {
        let port = support::free_port();
        let yaml = config_yaml(&format!("127.0.0.1:{port}"), dir, &reg.url(), "", "") + &state;
        Berth::start_on(port, &yaml, &[])
    };
    let (dir_a, dir_b) = (support::tempdir(), support::tempdir());
    let (a, b) = (replica(dir_a.path()), replica(dir_b.path()));
    // The command line on a machine of its own: the config and the database, no replica's files.
    let dir = support::tempdir();
    let yaml = config_yaml("127.0.0.1:1", &dir.path().join("cache"), &reg.url(), "", "") + &state;
    let site = Site::with_config(dir, yaml);
    site.secret(pg.password());

    let pull = |b: &Berth, secret: &str| {
        http::get(
            b.port,
            &format!("/v2/proxy/acme/{HOST}/acme/api/manifests/v1"),
            &[
                ("Accept", MANIFEST_MEDIA_TYPE),
                ("Authorization", &basic("x", secret)),
            ],
        )
        .status
    };
    let until = |want: u16, secret: &str| {
        let started = Instant::now();
        loop {
            let got = [pull(&a, secret), pull(&b, secret)];
            if got == [want, want] {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "[A, B] = {got:?}, not {want}, after 5 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let c = site.hand_out_json(&[
        "license",
        "create",
        "--app",
        "acme",
        "--customer",
        "Big Bank",
    ]);
    let (id, secret) = (s(&c, "id").to_string(), s(&c, "secret").to_string());
    let took = until(200, &secret);
    assert!(
        took <= IN_FORCE_WITHIN,
        "served by both replicas after {took:?}"
    );
    eprintln!("postgres: license create → both replicas pull: {took:?}");
    assert_eq!(
        by_id(&site.json(&["license", "list"]), &id)["state"],
        "active"
    );
    site.json(&["license", "revoke", &id]);
    let took = until(401, &secret);
    assert!(
        took <= IN_FORCE_WITHIN,
        "refused by both replicas after {took:?}"
    );
    eprintln!("postgres: license revoke → both replicas refuse: {took:?}");

    // A database that cannot be reached: one line naming the store, never its password.
    let password = "pg-pass-canary-3f7d";
    site.secret(password);
    let gone = format!(
        "postgres://berth:{password}@127.0.0.1:{}/berth?sslmode=disable",
        support::free_port()
    );
    let dir = support::tempdir();
    let yaml = config_yaml("127.0.0.1:1", &dir.path().join("cache"), &reg.url(), "", "")
        + &format!("state: {{ postgres: \"{gone}\" }}\n");
    let unreachable = Site::with_config(dir, yaml);
    let r = unreachable.run(&["license", "list"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("berth: state store unavailable")
            && r.stderr.contains("state.postgres"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(password), "{}", r.stderr);
    for (name, log) in [("A", a.logs()), ("B", b.logs())] {
        site.also_scan(&format!("replica {name}'s log"), log);
    }
    site.assert_no_secret_shown();
}
