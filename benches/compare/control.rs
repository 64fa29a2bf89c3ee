//! The `control` phase: what the control plane's state store costs a customer's pull. Three
//! berths in front of the same upstream, their customer's license in the config file (as in
//! the other phases, and as before the store), in berth's SQLite store and in a PostgreSQL
//! store, each store holding thousands of other licenses and keys; manifest load by tag
//! with Basic and with Bearer auth, and the latency of a login and a pull.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use berth::config::Config;
use berth::control::{Actor, Control, NewKey, NewLicense};

use crate::client::{connect, rps_load, Target};
use crate::report::{median, Goal};
use crate::rotated;
use crate::support::berth::Berth;
use crate::support::postgres::Postgres;
use crate::support::{free_port, tempdir};
use crate::systems::{berth_yaml, Licenses, BERTH_ENV, LICENSE};
use crate::{basic, berth_path, World, ACCEPT, REPO, TAG};

/// In the order of the report's rows; `config` is every other variant's reference.
const VARIANTS: [&str; 3] = ["config", "sqlite", "postgres"];

/// One of the three berths.
struct Variant {
    name: &'static str,
    berth: Berth,
    /// The customer's `Authorization` for Basic: the config license's id, or the stored
    /// license's secret.
    basic: String,
    _cache: tempfile::TempDir,
}

#[derive(Clone, Copy)]
enum Figure {
    Basic,
    Bearer,
    Login,
}

impl World {
    pub(crate) fn control(&mut self) -> anyhow::Result<()> {
        // Declared first, dropped last: the PostgreSQL berth goes before its database.
        let pg = Postgres::start();
        let variants = VARIANTS
            .iter()
            .map(|name| self.start_variant(name, &pg))
            .collect::<anyhow::Result<Vec<Variant>>>()?;
        for v in &variants {
            let want = self.index_size;
            let status = self.rt.block_on(async {
                let t = Target {
                    name: v.name,
                    port: v.berth.port,
                    tls: None,
                    auth: Some(v.basic.clone()),
                };
                let mut c = connect(&t).await?;
                // The tag is resolved at the upstream once, here: every figure is within
                // its TTL.
                c.get_exact(&manifest_path(), Some(ACCEPT), want).await?;
                let config_license = basic(LICENSE, LICENSE);
                let f = c
                    .get_as(&manifest_path(), Some(ACCEPT), &config_license, None)
                    .await?;
                anyhow::Ok(f.status)
            })?;
            // In the store variants the license really comes from the store: the config
            // file's is unknown there.
            let want_status = if v.name == "config" { 200 } else { 401 };
            anyhow::ensure!(
                status == want_status,
                "{}: the config file's license answered {status}, want {want_status}",
                v.name,
            );
        }
        let conns = self.s.clients;
        let n = self.s.logins;
        let dur = Duration::from_secs_f64(self.s.manifest_secs);
        let label = |fig: &str, v: &str| match fig {
            "basic" => format!("manifest GET by tag, Basic, {conns} conns, {v}"),
            "bearer" => format!("manifest GET by tag, Bearer, {conns} conns, {v}"),
            "median" => format!("login + pull, median of {n}, {v}"),
            _ => format!("login + pull, p99 of {n}, {v}"),
        };
        for run in 0..self.s.runs {
            // figures[variant] = (basic, bearer, median, p99) of this run.
            let mut figures = [[f64::NAN; 4]; VARIANTS.len()];
            for fig in [Figure::Basic, Figure::Bearer, Figure::Login] {
                for i in rotated(&[0, 1, 2], run) {
                    let v = &variants[i];
                    let origin = || self.upstream.requests().len();
                    let before = origin();
                    match fig {
                        Figure::Basic | Figure::Bearer => {
                            let auth = match fig {
                                Figure::Basic => v.basic.clone(),
                                _ => format!("Bearer {}", self.token(v)?),
                            };
                            let t = Target {
                                name: v.name,
                                port: v.berth.port,
                                tls: None,
                                auth: Some(auth),
                            };
                            let path = manifest_path();
                            let want = self.index_size;
                            let rps = self
                                .rt
                                .block_on(rps_load(&t, &path, ACCEPT, conns, dur, want))?;
                            let (what, slot) = match fig {
                                Figure::Basic => ("Basic", 0),
                                _ => ("Bearer", 1),
                            };
                            eprintln!(
                                "run {}: control: manifest by tag, {what}: {} {rps:.0} req/s \
                                 ({} upstream requests meanwhile)",
                                run + 1,
                                v.name,
                                origin() - before
                            );
                            figures[i][slot] = rps;
                        }
                        Figure::Login => {
                            let mut ms = Vec::with_capacity(n);
                            for _ in 0..n {
                                ms.push(self.login_pull(v)?.as_secs_f64() * 1e3);
                            }
                            let (med, p99) = (median(&ms), percentile(&ms, 0.99));
                            eprintln!(
                                "run {}: control: login + pull x{n}: {} median {med:.2} ms, \
                                 p99 {p99:.2} ms ({} upstream requests meanwhile)",
                                run + 1,
                                v.name,
                                origin() - before
                            );
                            figures[i][2] = med;
                            figures[i][3] = p99;
                        }
                    }
                }
            }
            // Added once the run is complete: each row's reference is the config variant's
            // figure of the same run, whichever variant went first.
            for (slot, (fig, unit)) in [
                ("basic", "req/s"),
                ("bearer", "req/s"),
                ("median", "ms"),
                ("p99", "ms"),
            ]
            .into_iter()
            .enumerate()
            {
                for (i, v) in VARIANTS.iter().enumerate() {
                    let row = label(fig, v);
                    self.report.add(&row, unit, "berth", figures[i][slot]);
                    if i > 0 {
                        self.report
                            .add_reference(&row, unit, VARIANTS[0], figures[0][slot]);
                    }
                }
            }
        }
        for v in VARIANTS {
            for fig in ["basic", "bearer"] {
                self.report.goal(&label(fig, v), Goal::AtLeast(20_000.0));
            }
        }
        Ok(())
    }

    /// A berth whose customer's license is where `name` says; a store is filled before
    /// berth starts, so it serves the whole directory from its first request.
    fn start_variant(&self, name: &'static str, pg: &Postgres) -> anyhow::Result<Variant> {
        let cache = tempdir();
        let port = free_port();
        let state = match name {
            "config" => None,
            "sqlite" => Some(format!(
                "{{ sqlite: \"{}\" }}",
                cache.path().join("state.db").display()
            )),
            _ => Some(format!("{{ postgres: \"{}\" }}", pg.url())),
        };
        let licenses = state
            .as_deref()
            .map_or(Licenses::ConfigFile, Licenses::Store);
        let yaml = berth_yaml(port, cache.path(), &self.upstream.url(), None, &licenses);
        let basic = match state {
            None => basic(LICENSE, LICENSE),
            Some(_) => {
                let started = Instant::now();
                let secret = self.fill_store(&yaml, cache.path())?;
                eprintln!(
                    "setup: control: {name} store filled with {} licenses and {} API keys in {:.1} s",
                    self.s.store_licenses + 1,
                    self.s.store_keys,
                    started.elapsed().as_secs_f64()
                );
                basic("customer", &secret)
            }
        };
        let berth = Berth::start_on(port, &yaml, &BERTH_ENV);
        Ok(Variant {
            name,
            berth,
            basic,
            _cache: cache,
        })
    }

    /// Creates the customer's license, between `store_licenses` others, and `store_keys`
    /// API keys in the store berth's `yaml` names, through the control plane as the admin
    /// API and the CLI do; returns the customer's secret.
    fn fill_store(&self, yaml: &str, base: &std::path::Path) -> anyhow::Result<String> {
        let env = |name: &str| {
            BERTH_ENV
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let config = Config::parse(yaml, base, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
        let (others, keys) = (self.s.store_licenses, self.s.store_keys);
        self.rt.block_on(async {
            let store = berth::state::open(&config.state)
                .await
                .context("open the state store")?;
            let control = Control::new(store);
            let actor = Actor("bench".into());
            let license = |customer: String, expires: Option<String>| NewLicense {
                app: "acme".into(),
                customer,
                expires,
                images: vec![],
            };
            let mut secret = None;
            for i in 0..=others {
                let req = if i == others / 2 {
                    license("Bench".into(), None)
                } else {
                    // Some expire, as real licenses do; none before the bench ends.
                    license(
                        format!("Customer {i:05}"),
                        (i % 3 == 0).then(|| "365d".into()),
                    )
                };
                let created = control.create_license(&config, &actor, req).await?;
                if i == others / 2 {
                    secret = Some(created.secret);
                }
            }
            for i in 0..keys {
                let req = NewKey {
                    name: format!("ci-{i:05}"),
                    apps: vec!["acme".into()],
                    actions: vec!["pull".into()],
                    expires: None,
                };
                control.create_key(&config, &actor, req).await?;
            }
            anyhow::Ok(secret.expect("the loop creates the customer's license"))
        })
    }

    /// A token for pulling the image, from `/token` with the variant's Basic credentials.
    fn token(&self, v: &Variant) -> anyhow::Result<String> {
        self.rt.block_on(async {
            let t = Target {
                name: v.name,
                port: v.berth.port,
                tls: None,
                auth: None,
            };
            let mut c = connect(&t).await?;
            fetch_token(&mut c, v).await
        })
    }

    /// One login and pull as a client does it: a fresh connection, `GET /token` with
    /// Basic, then the manifest by tag with the token; the time from connect to its last byte.
    fn login_pull(&self, v: &Variant) -> anyhow::Result<Duration> {
        let want = self.index_size;
        self.rt.block_on(async {
            let t = Target {
                name: v.name,
                port: v.berth.port,
                tls: None,
                auth: None,
            };
            let start = Instant::now();
            let mut c = connect(&t).await?;
            let token = fetch_token(&mut c, v).await?;
            let path = manifest_path();
            let f = c
                .get_as(&path, Some(ACCEPT), &format!("Bearer {token}"), None)
                .await?;
            anyhow::ensure!(
                f.status == 200 && f.bytes == want,
                "{}: GET {path} with a token answered {} with {} bytes, want 200 with {want}",
                v.name,
                f.status,
                f.bytes
            );
            Ok(start.elapsed())
        })
    }
}

async fn fetch_token(c: &mut crate::client::Conn, v: &Variant) -> anyhow::Result<String> {
    let path = format!(
        "/token?service=127.0.0.1:{}&scope=repository:proxy/acme/upstream.test/{REPO}:pull",
        v.berth.port
    );
    let mut body = Vec::new();
    let f = c.get_as(&path, None, &v.basic, Some(&mut body)).await?;
    anyhow::ensure!(
        f.status == 200,
        "{}: GET /token answered {}: {}",
        v.name,
        f.status,
        String::from_utf8_lossy(&body)
    );
    let json: serde_json::Value = serde_json::from_slice(&body).context("token answer")?;
    json["token"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{}: no token in the /token answer", v.name))
}

fn manifest_path() -> String {
    berth_path("manifests", TAG)
}

/// The nearest-rank percentile `p` (0..1] of `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = (p * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}
