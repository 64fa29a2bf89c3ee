//! Integration tests of usage recording and the control plane's metrics: the real berth in
//! front of a real `docker-registry`, licenses and keys created through the library on the
//! server's own state file, pulls made with skopeo and by hand, usage read back with
//! `Control::usage` on the same file, gauges scraped from the admin listener.

#[path = "support/http.rs"]
mod http;
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use berth::config::Config;
use berth::control::usage::{SubjectUsage, UsageFilter};
use berth::control::{Actor, Control, NewKey, NewLicense};
use berth::settings::StateConfig;
use berth::state::{PullEvent, Store, UsageQuery};
use http::Resp;
use support::berth::Berth;
use support::image::{
    blob_path, push_image, push_index, skopeo_copy_to_oci, ImageSpec, TestImage, TestIndex,
};
use support::registry::{Registry, RegistryAuth};

const HOST: &str = "upstream.test";
/// A config-file license: counted in the gauges with the store's.
const CONFIG_LICENSE: &str = "LICENSE-config-usage-0001";
const WAIT: Duration = Duration::from_secs(10);

struct Fx {
    _reg: Registry,
    berth: Berth,
    admin: u16,
    _cache: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    control: Control,
    store: Arc<dyn Store>,
    multi: TestIndex,
    single: [TestImage; 2],
    yaml: String,
}

fn config_yaml(
    port: u16,
    admin: u16,
    cache: &std::path::Path,
    upstream: &str,
    trusted: &str,
) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{port}\"\n  hostname: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  trusted_proxies: {trusted}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams: [ {{ name: up, url: \"{upstream}\", host: {HOST} }} ]\n\
         apps: [ {{ slug: acme, upstreams: [up] }} ]\n\
         licenses: [ {{ id: {CONFIG_LICENSE}, app: acme, customer: Config Co }} ]\n",
        cache.display()
    )
}

fn spec(seed: u64, sizes: &[u64]) -> ImageSpec {
    ImageSpec {
        layer_sizes: sizes.to_vec(),
        seed,
    }
}

fn fixture(trusted: &str) -> Fx {
    let reg = Registry::start(RegistryAuth::None);
    let multi = push_index(
        &reg,
        None,
        "acme/multi",
        "1.0",
        &[
            ("linux", "amd64", spec(1, &[70_000, 30_000])),
            ("linux", "arm64", spec(2, &[50_000])),
        ],
    );
    let single = [
        push_image(&reg, None, "acme/single", "1.0", &spec(3, &[40_000])),
        push_image(&reg, None, "acme/single", "1.1", &spec(4, &[20_000])),
    ];
    let cache = support::tempdir();
    let port = support::free_port();
    let admin = support::free_port();
    let yaml = config_yaml(port, admin, cache.path(), &reg.url(), trusted);
    let berth = Berth::start_on(port, &yaml, &[]);
    assert!(support::wait_for_port(admin, WAIT), "admin listener");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = Config::load(&berth.config_path).expect("berth's config");
    let StateConfig::Sqlite(db) = &config.state else {
        panic!("expected the default SQLite state")
    };
    let store: Arc<dyn Store> = Arc::new(
        rt.block_on(berth::state::sqlite::SqliteStore::open(db))
            .expect("open the server's state.db"),
    );
    Fx {
        _reg: reg,
        berth,
        admin,
        _cache: cache,
        rt,
        control: Control::new(store.clone()),
        store,
        multi,
        single,
        yaml,
    }
}

fn basic(secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("x:{secret}")))
}

fn repo_path(repo: &str) -> String {
    format!("/v2/proxy/acme/{HOST}/{repo}")
}

impl Fx {
    fn config(&self) -> Config {
        Config::load(&self.berth.config_path).expect("berth's config")
    }

    /// A stored license (id, secret), once berth knows it.
    fn license(&self, expires: Option<&str>) -> (String, String) {
        let created = self
            .rt
            .block_on(self.control.create_license(
                &self.config(),
                &Actor("test".into()),
                NewLicense {
                    app: "acme".into(),
                    customer: "Usage Co".into(),
                    expires: expires.map(str::to_string),
                    images: vec![],
                },
            ))
            .expect("create a license");
        let secret = created.secret.clone();
        if expires.is_none() {
            self.until_known(&secret);
        }
        (created.license.id, secret)
    }

    fn key(&self) -> (String, String) {
        let created = self
            .rt
            .block_on(self.control.create_key(
                &self.config(),
                &Actor("test".into()),
                NewKey {
                    name: "ci".into(),
                    apps: vec!["acme".into()],
                    actions: vec!["pull".into()],
                    expires: None,
                },
            ))
            .expect("create a key");
        self.until_known(&created.key);
        (created.view.id, created.key)
    }

    fn until_known(&self, secret: &str) {
        let auth = basic(secret);
        assert!(
            support::wait_until(WAIT, || {
                http::get(self.berth.port, "/v2/", &[("Authorization", &auth)]).status == 200
            }),
            "berth does not know a new credential within {WAIT:?}"
        );
    }

    fn get(&self, method: &str, path: &str, secret: &str, extra: &[(&str, &str)]) -> Resp {
        let auth = basic(secret);
        let mut h = vec![
            ("Authorization", auth.as_str()),
            (
                "Accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
            ),
        ];
        h.extend_from_slice(extra);
        let r = http::request(self.berth.port, method, path, &h, b"");
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r
    }

    fn usage(&self, id: &str) -> Option<SubjectUsage> {
        let filter = UsageFilter {
            license: Some(id.into()),
            ..UsageFilter::default()
        };
        let report = self
            .rt
            .block_on(self.control.usage(&self.config(), &filter))
            .expect("usage report");
        assert!(report.subjects.len() <= 1, "{report:?}");
        report.subjects.into_iter().next()
    }

    fn pulls(&self, id: &str) -> Vec<PullEvent> {
        let q = UsageQuery {
            subject: Some(id.into()),
            ..UsageQuery::default()
        };
        self.rt.block_on(self.store.pulls(&q)).expect("pulls")
    }

    /// The subject's usage once its bytes reach `bytes`: events are written in order, so
    /// every pull before the last body is written too. Then a little longer, to see that
    /// nothing more arrives.
    fn usage_at(&self, id: &str, bytes: u64) -> SubjectUsage {
        let mut last = None;
        let reached = support::wait_until(WAIT, || {
            last = self.usage(id);
            last.as_ref().is_some_and(|u| u.bytes >= bytes)
        });
        assert!(
            reached,
            "usage of {id} did not reach {bytes} bytes: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(1500));
        self.usage(id).expect("usage")
    }

    fn scrape(&self) -> String {
        let r = http::get(self.admin, "/metrics", &[]);
        assert_eq!(r.status, 200);
        r.text()
    }
}

/// The value of the sample `name{labels}` (labels as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn file_len(p: PathBuf) -> u64 {
    std::fs::metadata(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

/// Body bytes berth sent for images (every route but the base and the token endpoint).
fn image_bytes(metrics: &str) -> f64 {
    ["manifest", "blob", "tags", "referrers"]
        .iter()
        .filter_map(|r| {
            sample(
                metrics,
                &format!("berth_http_response_bytes_total{{route=\"{r}\"}}"),
            )
        })
        .sum()
}

#[test]
fn a_multi_arch_skopeo_copy_is_one_pull_with_its_bytes() {
    let fx = fixture("[]");
    let (id, secret) = fx.license(None);
    let before = fx.scrape();
    let dest = support::tempdir();
    let src = format!(
        "docker://127.0.0.1:{}/proxy/acme/{HOST}/acme/multi:1.0",
        fx.berth.port
    );
    let out = skopeo_copy_to_oci(
        &src,
        Some(&format!("x:{secret}")),
        dest.path(),
        &[
            "--preserve-digests",
            "--override-os",
            "linux",
            "--override-arch",
            "amd64",
        ],
    );
    assert!(
        out.status.success(),
        "skopeo copy: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fx.berth.logs()
    );
    // What skopeo had to fetch: the index, the amd64 manifest, its config and layers.
    let child = &fx.multi.children[0];
    let layout = &fx.multi.layout_dir;
    let fetched = file_len(blob_path(layout, &fx.multi.index_digest))
        + child.manifest_size
        + file_len(blob_path(layout, &child.config_digest))
        + child.layers.iter().map(|(_, s)| s).sum::<u64>();
    let u = fx.usage_at(&id, fetched);
    assert_eq!(u.pulls, 1, "{u:?}\n{:?}", fx.pulls(&id));
    assert_eq!(u.kind, "license");
    assert_eq!(u.app, "acme");
    assert_eq!(u.images.len(), 1, "{u:?}");
    let i = &u.images[0];
    assert_eq!(i.image, format!("{HOST}/acme/multi"));
    assert_eq!(i.reference, "1.0");
    assert_eq!(i.digest, fx.multi.index_digest);
    // Every byte berth sent for an image went to this license, and they are what skopeo
    // fetched.
    let sent = image_bytes(&fx.scrape()) - image_bytes(&before);
    assert_eq!(
        u.bytes as f64, sent,
        "usage bytes vs berth_http_response_bytes_total"
    );
    assert_eq!(u.bytes, fetched, "usage bytes vs the blobs skopeo fetched");
    let p = &fx.pulls(&id)[0];
    assert_eq!(p.client, "127.0.0.1");
    assert!(!p.user_agent.is_empty(), "{p:?}");
}

#[test]
fn head_then_get_by_digest_is_one_pull_and_two_tags_are_two() {
    let fx = fixture("[]");
    let (id, secret) = fx.license(None);
    let start = SystemTime::now();
    let mut sent = 0u64;
    // docker pull of a multi-arch tag: HEAD the tag, GET the index and a child by digest,
    // then the child's blobs.
    let multi = repo_path("acme/multi");
    let head = fx.get("HEAD", &format!("{multi}/manifests/1.0"), &secret, &[]);
    let index = head
        .header("docker-content-digest")
        .expect("digest")
        .to_string();
    assert_eq!(index, fx.multi.index_digest);
    sent += fx
        .get("GET", &format!("{multi}/manifests/{index}"), &secret, &[])
        .body
        .len() as u64;
    let child = &fx.multi.children[0];
    sent += fx
        .get(
            "GET",
            &format!("{multi}/manifests/{}", child.manifest_digest),
            &secret,
            &[],
        )
        .body
        .len() as u64;
    for (d, _) in &child.layers {
        sent += fx
            .get("GET", &format!("{multi}/blobs/{d}"), &secret, &[])
            .body
            .len() as u64;
    }
    // Two tags of one image: two pulls (each a GET by tag and its blobs).
    let single = repo_path("acme/single");
    for img in &fx.single {
        sent += fx
            .get(
                "GET",
                &format!("{single}/manifests/{}", img.tag),
                &secret,
                &[],
            )
            .body
            .len() as u64;
        sent += fx
            .get(
                "GET",
                &format!("{single}/blobs/{}", img.layers[0].0),
                &secret,
                &[],
            )
            .body
            .len() as u64;
    }
    // A tag that is not there is neither a pull nor bytes served (its error body aside).
    let auth = basic(&secret);
    let missing = http::get(
        fx.berth.port,
        &format!("{single}/manifests/missing"),
        &[("Authorization", &auth)],
    );
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(!missing.body.is_empty());
    let u = fx.usage_at(&id, sent);
    assert_eq!(u.bytes, sent, "{u:?}");
    assert_eq!(u.pulls, 3, "{u:?}");
    let mut seen: Vec<(String, String, String)> = u
        .images
        .iter()
        .map(|i| (i.image.clone(), i.reference.clone(), i.digest.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (format!("{HOST}/acme/multi"), "1.0".into(), index.clone()),
            (
                format!("{HOST}/acme/single"),
                "1.0".into(),
                fx.single[0].manifest_digest.clone()
            ),
            (
                format!("{HOST}/acme/single"),
                "1.1".into(),
                fx.single[1].manifest_digest.clone()
            ),
        ]
    );
    assert!(u.images.iter().all(|i| i.pulls == 1), "{u:?}");

    // `docker pull img@sha256:<index>` by another license: one pull, by digest.
    let (other, other_secret) = fx.license(None);
    let mut other_sent = 0u64;
    other_sent += fx
        .get(
            "GET",
            &format!("{multi}/manifests/{index}"),
            &other_secret,
            &[],
        )
        .body
        .len() as u64;
    other_sent += fx
        .get(
            "GET",
            &format!("{multi}/manifests/{}", child.manifest_digest),
            &other_secret,
            &[],
        )
        .body
        .len() as u64;
    let u = fx.usage_at(&other, other_sent);
    assert_eq!(u.pulls, 1, "{u:?}");
    assert_eq!(u.images[0].reference, index);

    // An API key's last use moves with each request.
    let (key, key_secret) = fx.key();
    let last_used = || {
        let contents = fx.rt.block_on(fx.store.load()).expect("load");
        contents
            .keys
            .iter()
            .find(|k| k.key.id == key)
            .and_then(|k| k.last_used)
    };
    assert_eq!(last_used(), None);
    fx.get("GET", &format!("{single}/manifests/1.0"), &key_secret, &[]);
    let mut first = None;
    assert!(
        support::wait_until(WAIT, || {
            first = last_used();
            first.is_some()
        }),
        "the key's last use was never recorded"
    );
    let first = first.unwrap();
    assert!(first >= start - Duration::from_secs(1), "{first:?}");
    std::thread::sleep(Duration::from_millis(50));
    fx.get("GET", "/v2/", &key_secret, &[]);
    assert!(
        support::wait_until(WAIT, || last_used().is_some_and(|t| t > first)),
        "the key's last use did not move: {first:?} → {:?}",
        last_used()
    );
    let view = fx.rt.block_on(fx.control.key(&key)).expect("key view");
    assert!(view.last_used.is_some(), "{view:?}");
    // The key's pull is usage too.
    assert_eq!(fx.usage_at(&key, 1).pulls, 1);
}

#[test]
fn gauges_follow_licenses_keys_expiry_and_reloads() {
    let fx = fixture("[]");
    let (_active, active_secret) = fx.license(None);
    let (revoked, _) = fx.license(None);
    fx.rt
        .block_on(
            fx.control
                .revoke_license(&fx.config(), &Actor("test".into()), &revoked),
        )
        .expect("revoke");
    let (_key, key_secret) = fx.key();
    let (soon, soon_secret) = fx.license(Some("3s"));
    let want = |m: &str, active: f64, expired: f64, revoked: f64| {
        sample(m, "berth_licenses{state=\"active\"}") == Some(active)
            && sample(m, "berth_licenses{state=\"expired\"}") == Some(expired)
            && sample(m, "berth_licenses{state=\"revoked\"}") == Some(revoked)
    };
    // The config file's license, the two stored active ones, the revoked one.
    let mut m = String::new();
    assert!(
        support::wait_until(WAIT, || {
            m = fx.scrape();
            want(&m, 3.0, 0.0, 1.0)
        }),
        "license gauges:\n{m}"
    );
    let app = "acme";
    let expiry = sample(
        &m,
        &format!("berth_license_expiry_seconds{{app=\"{app}\",license=\"{soon}\"}}"),
    )
    .unwrap_or_else(|| panic!("no expiry series for {soon}:\n{m}"));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 1.0..now + 5.0).contains(&expiry),
        "{expiry} vs now {now}"
    );
    assert_eq!(m.matches("berth_license_expiry_seconds{").count(), 1, "{m}");
    assert_eq!(
        sample(&m, "berth_api_keys{state=\"active\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!(
                "berth_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "berth_usage_dropped_total"), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, "berth_config_reload_failures_total"),
        Some(0.0),
        "{m}"
    );
    // Expiry alone moves a license from active to expired: no store change.
    assert!(
        support::wait_until(WAIT, || {
            m = fx.scrape();
            want(&m, 2.0, 1.0, 1.0)
        }),
        "after the expiry:\n{m}"
    );
    assert!(!m.contains("berth_license_expiry_seconds{"), "{m}");
    // A refused reload is counted; the running config keeps serving.
    std::fs::write(&fx.berth.config_path, "server: [not, a, mapping\n").unwrap();
    fx.berth.sighup();
    assert!(
        support::wait_until(WAIT, || {
            m = fx.scrape();
            sample(&m, "berth_config_reload_failures_total").is_some_and(|n| n >= 1.0)
        }),
        "reload failures:\n{m}"
    );
    fx.get("GET", "/v2/", &active_secret, &[]);
    // No secret is a label or a value anywhere in the metrics.
    for s in [
        &active_secret,
        &soon_secret,
        &key_secret,
        &CONFIG_LICENSE.to_string(),
    ] {
        assert!(!m.contains(s.as_str()), "a secret in /metrics");
    }
    std::fs::write(&fx.berth.config_path, &fx.yaml).unwrap();
}

#[test]
fn forwarded_for_is_believed_only_from_a_trusted_peer() {
    // 127.0.0.1 (every test connection) is not trusted at first.
    let mut fx = fixture("[\"10.0.0.0/8\"]");
    let (id, secret) = fx.license(None);
    let single = repo_path("acme/single");
    let xff = [("X-Forwarded-For", "203.0.113.9, 198.51.100.7")];
    let n = fx
        .get("GET", &format!("{single}/manifests/1.0"), &secret, &xff)
        .body
        .len();
    fx.usage_at(&id, n as u64);
    // Now it is: the right-most address it did not add is the client.
    let yaml = fx.yaml.replace(
        "trusted_proxies: [\"10.0.0.0/8\"]",
        "trusted_proxies: [\"10.0.0.0/8\", 127.0.0.1]",
    );
    assert_ne!(yaml, fx.yaml);
    std::fs::write(&fx.berth.config_path, &yaml).unwrap();
    let reloads = fx.berth.logs().matches("configuration reloaded").count();
    fx.berth.sighup();
    assert!(
        support::wait_until(WAIT, || fx
            .berth
            .logs()
            .matches("configuration reloaded")
            .count()
            > reloads),
        "no reload: {}",
        fx.berth.logs()
    );
    let m = fx
        .get("GET", &format!("{single}/manifests/1.1"), &secret, &xff)
        .body
        .len();
    fx.usage_at(&id, (n + m) as u64);
    let clients: Vec<(String, String)> = fx
        .pulls(&id)
        .into_iter()
        .map(|p| (p.reference, p.client))
        .collect();
    assert_eq!(
        clients,
        [
            ("1.0".to_string(), "127.0.0.1".to_string()),
            ("1.1".to_string(), "198.51.100.7".to_string()),
        ]
    );
    // The access log names the same client.
    let logs = fx.berth.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("manifests/1.1") && l.contains("request"))
        .unwrap_or_else(|| panic!("no access-log line:\n{logs}"));
    assert!(line.contains("remote=198.51.100.7"), "{line}");
    assert!(!logs.contains(&secret), "the license secret in the log");

    // A pull just before SIGTERM is written on the way out, not lost with the batch.
    let (late, late_secret) = fx.license(None);
    fx.get("GET", &format!("{single}/manifests/1.0"), &late_secret, &[]);
    fx.berth.stop();
    assert_eq!(fx.pulls(&late).len(), 1, "{}", fx.berth.logs());
}
