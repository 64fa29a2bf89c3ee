//! Integration tests of the PostgreSQL state store with several replicas: two real
//! `berth serve` processes on one database in front of a real registry, a license issued and
//! revoked through the control plane (the library, on the same database), each change in
//! force on both replicas within a second; and a berth whose database cannot be reached.

#[path = "support/http.rs"]
mod http;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use berth::control::{Actor, Control};
use berth::settings::Secret;
use berth::state::postgres::PostgresStore;
use support::berth::{run_cli, Berth};
use support::image::{push_image, ImageSpec, MANIFEST_MEDIA_TYPE};
use support::postgres::Postgres;
use support::registry::{Registry, RegistryAuth};

const HOST: &str = "upstream.test";
/// Both replicas answer as one registry: one hostname (the tokens' audience) and one token
/// key, as replicas behind a load balancer are configured.
const HOSTNAME: &str = "registry.berth.test";
/// A change made anywhere is in force everywhere within this.
const WITHIN: Duration = Duration::from_secs(1);

fn config_yaml(port: u16, dir: &Path, key_file: &Path, upstream: &str, state_url: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"{HOSTNAME}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         auth: {{ token_key_file: \"{}\" }}\n\
         state: {{ postgres: \"{state_url}\" }}\n\
         upstreams:\n  - {{ name: up, url: \"{upstream}\", host: {HOST} }}\n\
         apps:\n  - {{ slug: acme, upstreams: [up] }}\n",
        dir.display(),
        key_file.display(),
    )
}

fn basic(secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("customer:{secret}")))
}

const MANIFEST: &str = "/v2/proxy/acme/upstream.test/acme/api/manifests/v1";

fn pull(port: u16, authorization: &str) -> http::Resp {
    http::get(
        port,
        MANIFEST,
        &[
            ("Accept", MANIFEST_MEDIA_TYPE),
            ("Authorization", authorization),
        ],
    )
}

/// Polls `done` every `every` until it holds; how long that took, or `None` past `WITHIN`
/// from `since`.
fn within(since: Instant, every: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if done() {
            return Some(since.elapsed());
        }
        if since.elapsed() > WITHIN {
            return None;
        }
        std::thread::sleep(every);
    }
}

#[test]
fn a_license_issued_and_revoked_on_one_database_is_in_force_on_every_replica_within_a_second() {
    let pg = Postgres::start();
    let url = pg.fresh_database("replicas");
    let reg = Registry::start(RegistryAuth::None);
    let image = push_image(
        &reg,
        None,
        "acme/api",
        "v1",
        &ImageSpec {
            layer_sizes: vec![1000, 4000],
            seed: 7,
        },
    );
    let shared = support::tempdir();
    let key_file = shared.path().join("token.key");
    let (dir_a, dir_b) = (support::tempdir(), support::tempdir());
    let (port_a, port_b) = (support::free_port(), support::free_port());
    // A first: it creates the token key B then reads.
    let a = Berth::start_on(
        port_a,
        &config_yaml(port_a, dir_a.path(), &key_file, &reg.url(), &url),
        &[],
    );
    let b = Berth::start_on(
        port_b,
        &config_yaml(port_b, dir_b.path(), &key_file, &reg.url(), &url),
        &[],
    );

    // The control plane, as the admin API or the CLI runs it: the same config, the database.
    let config = berth::config::Config::parse(
        &config_yaml(0, dir_a.path(), &key_file, &reg.url(), &url),
        shared.path(),
        &|_| None,
    )
    .expect("the replicas' config parses");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(PostgresStore::open(&Secret::new(url.clone())))
        .expect("open the database");
    let control = Control::new(Arc::new(store));
    let actor = Actor("ops".into());

    let created_at = Instant::now();
    let created = rt
        .block_on(
            control.create_license(
                &config,
                &actor,
                serde_json::from_value(
                    serde_json::json!({ "app": "acme", "customer": "Big Bank" }),
                )
                .unwrap(),
            ),
        )
        .expect("create a license");
    let secret = created.secret.clone();
    let mut last = 0;
    // Every 100 ms: until B knows the license each try is a failed login, and more than
    // ten of those in a second from one address are throttled (429) whatever the secret.
    let took = within(created_at, Duration::from_millis(100), || {
        let r = pull(port_b, &basic(&secret));
        last = r.status;
        r.status == 200
    });
    let took = took.unwrap_or_else(|| {
        panic!(
            "replica B did not serve the new license within {WITHIN:?} (last {last});\n{}",
            b.logs()
        )
    });
    eprintln!("a new license served by replica B {took:?} after its creation");
    let r = pull(port_b, &basic(&secret));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    assert_eq!(pull(port_a, &basic(&secret)).status, 200, "replica A");

    // A token from B, before the revocation; B and A honour it (one key, one audience).
    let q = format!("/token?service={HOSTNAME}&scope=repository:proxy/acme/{HOST}/acme/api:pull");
    let t = http::get(port_b, &q, &[("Authorization", &basic(&secret))]);
    assert_eq!(t.status, 200, "{}", t.text());
    let bearer = format!("Bearer {}", t.json()["token"].as_str().expect("a token"));
    assert_eq!(pull(port_b, &bearer).status, 200, "the token at B");
    assert_eq!(pull(port_a, &bearer).status, 200, "the token at A");

    let revoked_at = Instant::now();
    let view = rt
        .block_on(control.revoke_license(&config, &actor, &created.license.id))
        .expect("revoke the license");
    assert_eq!(view.state, "revoked");
    let mut statuses = Vec::new();
    // The license logged in from here before, so its failures are not throttled: 401s.
    let took = within(revoked_at, Duration::from_millis(10), || {
        statuses = vec![
            pull(port_b, &basic(&secret)).status,
            pull(port_b, &bearer).status,
            pull(port_a, &basic(&secret)).status,
            pull(port_a, &bearer).status,
        ];
        statuses.iter().all(|s| *s == 401)
    });
    let took = took.unwrap_or_else(|| {
        panic!(
            "not refused everywhere within {WITHIN:?} of the revocation: [B basic, B token, \
             A basic, A token] = {statuses:?}"
        )
    });
    eprintln!("a revoked license refused by both replicas {took:?} after its revocation");

    // The secret and the database password are in no log line.
    for (name, logs) in [("A", a.logs()), ("B", b.logs())] {
        assert!(
            !logs.contains(&secret),
            "replica {name} logged the license secret"
        );
        assert!(
            !logs.contains(pg.password()),
            "replica {name} logged the database password"
        );
    }
}

#[test]
fn a_berth_whose_database_cannot_be_reached_exits_naming_state_and_the_server() {
    let dir = support::tempdir();
    // Nothing listens there.
    let port = support::free_port();
    let password = "pg-pass-canary-91b2";
    let url = format!("postgres://berth:{password}@127.0.0.1:{port}/berth?sslmode=disable");
    let listen = support::free_port();
    let config = dir.path().join("berth.yaml");
    std::fs::write(
        &config,
        config_yaml(
            listen,
            dir.path(),
            &dir.path().join("token.key"),
            "http://127.0.0.1:9",
            &url,
        ),
    )
    .unwrap();
    let run = run_cli(
        &["serve", "--config", config.to_str().unwrap()],
        &[],
        None,
        Duration::from_secs(30),
    );
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "exit {:?}:\n{output}",
        run.code
    );
    assert!(!output.contains(password), "the password leaked:\n{output}");
    let server = format!("127.0.0.1:{port}");
    let lines: Vec<&str> = output.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{output}");
    assert!(
        lines[0].contains("state") && lines[0].contains(&server),
        "the line names state and {server}: {}",
        lines[0]
    );
}
