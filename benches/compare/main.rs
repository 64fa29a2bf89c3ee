//! `cargo bench --bench compare`: berth against distribution's proxy mode and nginx on
//! loopback (and berth's hosted registry against a local distribution: the `push` phase),
//! alternating systems run by run, printing medians, ranges and ratios.
//!
//! Sizes and run counts come from `BERTH_BENCH_*` environment variables (see
//! benches/README.md) so a quick iteration can use a small blob and few runs.

#[path = "../../tests/support/mod.rs"]
mod support;

mod client;
mod control;
mod push;
mod report;
mod systems;

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;

use client::{blob_load, connect, rps_load, tls_config, Target};
use report::{Goal, Report};
use support::image::{push_index, ImageSpec};
use support::registry::{Registry, RegistryAuth};
use support::{tempdir, wait_until};
use systems::VENDOR_PW;
use systems::{dist_blob_file, proc_kib, start_berth, Certs, Dist, Nginx, LICENSE, VENDOR};

const MIB: u64 = 1 << 20;
const REPO: &str = "acme/app";
const TAG: &str = "v1";
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
const PHASES: [&str; 7] = [
    "throughput",
    "cold",
    "herd",
    "manifest",
    "rss",
    "control",
    "push",
];

struct Settings {
    blob_mib: u64,
    runs: usize,
    only: Vec<String>,
    /// Concurrency of the "many clients" hit figure and of the manifest load.
    clients: usize,
    /// GETs in a row on the one connection of the single-client hit figure.
    single_gets: usize,
    herd: usize,
    rss_clients: usize,
    manifest_secs: f64,
    /// Sequential login + pull iterations per figure of the control phase.
    logins: usize,
    /// Licenses (besides the customer's) and API keys in the control phase's stores.
    store_licenses: usize,
    store_keys: usize,
    /// The push phase: layer size, chunk size of the chunked push, size and runs of the
    /// push whose peak RSS is measured.
    push_mib: u64,
    push_chunk_mib: u64,
    push_rss_mib: u64,
    push_rss_runs: usize,
    /// Repositories, and tags in one repository, seeded for the listing figures; requests
    /// in flight while seeding; GETs per listing figure.
    seed: usize,
    seed_conc: usize,
    list_gets: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let only = std::env::var("BERTH_BENCH_ONLY")
            .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_else(|_| PHASES.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        for p in &only {
            assert!(
                PHASES.contains(&p.as_str()),
                "BERTH_BENCH_ONLY: unknown phase {p:?}, known: {PHASES:?}"
            );
        }
        Settings {
            blob_mib: env_or("BERTH_BENCH_BLOB_MIB", 200),
            runs: env_or("BERTH_BENCH_RUNS", 5),
            only,
            clients: env_or("BERTH_BENCH_CLIENTS", 16),
            single_gets: env_or("BERTH_BENCH_SINGLE_GETS", 3),
            herd: env_or("BERTH_BENCH_HERD", 32),
            rss_clients: env_or("BERTH_BENCH_RSS_CLIENTS", 64),
            manifest_secs: env_or("BERTH_BENCH_MANIFEST_SECS", 2.0),
            logins: env_or("BERTH_BENCH_LOGINS", 200),
            store_licenses: env_or("BERTH_BENCH_STORE_LICENSES", 5000),
            store_keys: env_or("BERTH_BENCH_STORE_KEYS", 1000),
            push_mib: env_or("BERTH_BENCH_PUSH_MIB", 200),
            push_chunk_mib: env_or("BERTH_BENCH_PUSH_CHUNK_MIB", 8),
            push_rss_mib: env_or("BERTH_BENCH_PUSH_RSS_MIB", 1024),
            push_rss_runs: env_or("BERTH_BENCH_PUSH_RSS_RUNS", 3),
            seed: env_or("BERTH_BENCH_SEED", 10_000),
            seed_conc: env_or("BERTH_BENCH_SEED_CONC", 16),
            list_gets: env_or("BERTH_BENCH_LIST_GETS", 100),
        }
    }

    fn wants(&self, phase: &str) -> bool {
        self.only.iter().any(|p| p == phase)
    }
}

/// Everything the phases share: the upstream with its image, the open twin, certificates.
struct World {
    s: Settings,
    rt: tokio::runtime::Runtime,
    certs: Certs,
    tls: Arc<rustls::ClientConfig>,
    upstream: Registry,
    twin: Registry,
    digest: String,
    size: u64,
    index_size: u64,
    child_digest: String,
    child_size: u64,
    customer_auth: String,
    report: Report,
    /// Temporary directories removed only after the table is printed (see push.rs).
    leftovers: Vec<tempfile::TempDir>,
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn berth_path(kind: &str, reference: &str) -> String {
    format!("/v2/proxy/acme/upstream.test/{REPO}/{kind}/{reference}")
}

fn dist_path(kind: &str, reference: &str) -> String {
    format!("/v2/{REPO}/{kind}/{reference}")
}

/// Run `r` starts with a different system, so no system always goes first (or last).
fn rotated<T: Copy>(items: &[T], run: usize) -> Vec<T> {
    let mut v = items.to_vec();
    let n = v.len();
    v.rotate_left(run % n);
    v
}

impl World {
    fn setup(s: Settings) -> anyhow::Result<World> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let certs = Certs::generate();
        let tls = tls_config(&certs.ca_der);
        let upstream = Registry::start(RegistryAuth::Htpasswd {
            user: VENDOR.into(),
            password: VENDOR_PW.into(),
        });
        eprintln!(
            "setup: building and pushing a two-platform image with a {} MiB layer",
            s.blob_mib
        );
        let index = push_index(
            &upstream,
            Some((VENDOR, VENDOR_PW)),
            REPO,
            TAG,
            &[
                (
                    "linux",
                    "amd64",
                    ImageSpec {
                        layer_sizes: vec![s.blob_mib * MIB, 32 << 10, 256 << 10, MIB],
                        seed: 1,
                    },
                ),
                (
                    "linux",
                    "arm64",
                    ImageSpec {
                        layer_sizes: vec![48 << 10, 512 << 10],
                        seed: 2,
                    },
                ),
            ],
        );
        let child = &index.children[0];
        let (digest, size) = child.layers[0].clone();
        let twin = Registry::start_with_storage(upstream.storage_dir(), RegistryAuth::None);
        let customer_auth = basic(LICENSE, LICENSE);
        let mut w = World {
            rt,
            certs,
            tls,
            upstream,
            twin,
            digest,
            size,
            index_size: 0,
            child_digest: child.manifest_digest.clone(),
            child_size: child.manifest_size,
            customer_auth,
            report: Report::default(),
            leftovers: Vec::new(),
            s,
        };
        // The index's size is not kept by the image builder; ask the upstream once.
        let direct = w.direct();
        let path = dist_path("manifests", TAG);
        w.index_size = w.rt.block_on(async {
            let mut c = connect(&direct).await?;
            let f = c.get(&path, Some(ACCEPT)).await?;
            anyhow::ensure!(f.status == 200, "upstream index GET answered {}", f.status);
            anyhow::Ok(f.bytes)
        })?;
        Ok(w)
    }

    fn direct(&self) -> Target {
        Target {
            name: "upstream",
            port: self.upstream.port,
            tls: None,
            auth: Some(basic(VENDOR, VENDOR_PW)),
        }
    }

    fn target(&self, name: &'static str, port: u16, tls: bool, auth: bool) -> Target {
        Target {
            name,
            port,
            tls: tls.then(|| Arc::clone(&self.tls)),
            auth: auth.then(|| self.customer_auth.clone()),
        }
    }

    fn blob_path_for(&self, system: &str) -> String {
        match system {
            "berth" => berth_path("blobs", &self.digest),
            "nginx" => "/blob".to_string(),
            _ => dist_path("blobs", &self.digest),
        }
    }

    fn upstream_gets(&self) -> usize {
        blob_fetches(&self.upstream, &self.digest)
    }

    fn twin_gets(&self) -> usize {
        blob_fetches(&self.twin, &self.digest)
    }

    /// One GET so the blob is cached; for dist, also wait for its background store to land.
    fn warm(&self, t: &Target, dist_storage: Option<&Path>) -> anyhow::Result<()> {
        let path = self.blob_path_for(t.name);
        let size = self.size;
        self.rt.block_on(async {
            let mut c = connect(t).await?;
            c.get_exact(&path, None, size).await
        })?;
        if let Some(storage) = dist_storage {
            let file = dist_blob_file(storage, &self.digest);
            let stored = wait_until(Duration::from_secs(120), || {
                std::fs::metadata(&file).is_ok_and(|m| m.len() == size)
            });
            anyhow::ensure!(stored, "dist never stored the blob at {}", file.display());
        }
        Ok(())
    }

    fn gbps(bytes: u64, wall: Duration) -> f64 {
        bytes as f64 / 1e9 / wall.as_secs_f64()
    }

    // ---- phases ----------------------------------------------------------------------

    fn throughput(&mut self) -> anyhow::Result<()> {
        let (c1, c2, s1, s2) = (tempdir(), tempdir(), tempdir(), tempdir());
        let b_http = start_berth(c1.path(), &self.upstream.url(), None);
        let b_tls = start_berth(c2.path(), &self.upstream.url(), Some(&self.certs));
        let d_http = Dist::start(s1.path(), &self.twin.url(), None, true)?;
        let d_tls = Dist::start(s2.path(), &self.twin.url(), Some(&self.certs), true)?;
        let blob_file = dist_blob_file(self.upstream.storage_dir(), &self.digest);
        let nginx = Nginx::start(&blob_file, &self.certs)?;
        let http = [
            self.target("berth", b_http.port, false, true),
            self.target("dist", d_http.port, false, true),
            self.target("nginx", nginx.port, false, false),
        ];
        let tls = [
            self.target("berth", b_tls.port, true, true),
            self.target("dist", d_tls.port, true, true),
            self.target("nginx", nginx.tls_port, true, false),
        ];
        self.warm(&http[0], None)?;
        self.warm(&tls[0], None)?;
        self.warm(&http[1], Some(s1.path()))?;
        self.warm(&tls[1], Some(s2.path()))?;
        let (up0, twin0) = (self.upstream_gets(), self.twin_gets());
        let shapes = [(1, self.s.single_gets), (self.s.clients, 1)];
        for run in 0..self.s.runs {
            for (proto, targets) in [("http", &http), ("tls", &tls)] {
                for &(clients, gets) in &shapes {
                    let row = format!("hit GET, {clients} client(s), {proto}");
                    for i in rotated(&[0, 1, 2], run) {
                        let t = &targets[i];
                        let path = self.blob_path_for(t.name);
                        let (bytes, wall) = self
                            .rt
                            .block_on(blob_load(t, &path, clients, gets, self.size))?;
                        let v = Self::gbps(bytes, wall);
                        eprintln!("run {}: {row}: {} {v:.3} GB/s", run + 1, t.name);
                        self.report.add(&row, "GB/s", t.name, v);
                    }
                }
            }
        }
        let (up1, twin1) = (self.upstream_gets(), self.twin_gets());
        // A "hit" that went upstream would flatter nobody, but it must be visible.
        anyhow::ensure!(
            up1 == up0 && twin1 == twin0,
            "cache-hit phase fetched upstream: berth {} times, dist {} times",
            up1 - up0,
            twin1 - twin0
        );
        for p in ["http", "tls"] {
            let goal = if p == "http" { 0.95 } else { 1.0 };
            for clients in [1, self.s.clients] {
                self.report.goal(
                    &format!("hit GET, {clients} client(s), {p}"),
                    Goal::RatioAtLeast("nginx", goal),
                );
            }
        }
        Ok(())
    }

    fn cold(&mut self) -> anyhow::Result<()> {
        let wall_row = "cold GET of the blob, wall";
        let ttfb_row = "cold GET of the blob, time to first byte";
        for run in 0..self.s.runs {
            for sys in rotated(&["berth", "dist", "upstream"], run) {
                let dir = tempdir();
                // The server lives only for this GET: every run starts with an empty cache.
                let (_berth, _dist, target) = match sys {
                    "berth" => {
                        let b = start_berth(dir.path(), &self.upstream.url(), None);
                        let t = self.target("berth", b.port, false, true);
                        (Some(b), None, t)
                    }
                    "dist" => {
                        let d = Dist::start(dir.path(), &self.twin.url(), None, true)?;
                        let t = self.target("dist", d.port, false, true);
                        (None, Some(d), t)
                    }
                    _ => (None, None, self.direct()),
                };
                let path = self.blob_path_for(target.name);
                let size = self.size;
                let origin = if sys == "dist" {
                    &self.twin
                } else {
                    &self.upstream
                };
                let seen = origin.requests().len();
                let f = self.rt.block_on(async {
                    let mut c = connect(&target).await?;
                    c.get_exact(&path, None, size).await
                })?;
                let (wall, ttfb) = (f.total.as_secs_f64(), f.ttfb.as_secs_f64() * 1e3);
                // What the proxy asked of its origin explains much of its time to first byte.
                let asked: Vec<String> = origin.requests()[seen..]
                    .iter()
                    .map(|(m, p, st)| format!("{m} {} {st}", short_path(p)))
                    .collect();
                eprintln!(
                    "run {}: cold GET: {sys} wall {wall:.3} s, ttfb {ttfb:.1} ms; origin saw: {}",
                    run + 1,
                    asked.join(", ")
                );
                self.report.add(wall_row, "s", sys, wall);
                self.report.add(ttfb_row, "ms", sys, ttfb);
            }
        }
        self.report
            .goal(wall_row, Goal::RatioAtMost("upstream", 1.10));
        Ok(())
    }

    fn herd(&mut self) -> anyhow::Result<()> {
        let n = self.s.herd;
        let fetch_row = format!("{n} concurrent cold clients, upstream GETs");
        let wall_row = format!("{n} concurrent cold clients, wall");
        for run in 0..self.s.runs {
            for sys in rotated(&["berth", "dist"], run) {
                let dir = tempdir();
                let (_berth, _dist, target) = match sys {
                    "berth" => {
                        let b = start_berth(dir.path(), &self.upstream.url(), None);
                        let t = self.target("berth", b.port, false, true);
                        (Some(b), None, t)
                    }
                    _ => {
                        let d = Dist::start(dir.path(), &self.twin.url(), None, true)?;
                        let t = self.target("dist", d.port, false, true);
                        (None, Some(d), t)
                    }
                };
                let count = |w: &World| {
                    if sys == "berth" {
                        w.upstream_gets()
                    } else {
                        w.twin_gets()
                    }
                };
                let before = count(self);
                let path = self.blob_path_for(sys);
                let (_, wall) = self
                    .rt
                    .block_on(blob_load(&target, &path, n, 1, self.size))?;
                // Access-log lines appear when an upstream response completes; a background
                // fill may finish a little after the last client.
                let mut last = count(self);
                wait_until(Duration::from_secs(10), || {
                    std::thread::sleep(Duration::from_millis(500));
                    let now = count(self);
                    std::mem::replace(&mut last, now) == now
                });
                let fetches = last - before;
                eprintln!(
                    "run {}: {n} cold clients: {sys} {fetches} upstream GETs, wall {:.3} s",
                    run + 1,
                    wall.as_secs_f64()
                );
                self.report.add(&fetch_row, "GETs", sys, fetches as f64);
                self.report.add(&wall_row, "s", sys, wall.as_secs_f64());
            }
        }
        self.report.goal(&fetch_row, Goal::AtMost(1.0));
        Ok(())
    }

    fn manifest(&mut self) -> anyhow::Result<()> {
        let (c, s1, s2) = (tempdir(), tempdir(), tempdir());
        let b = start_berth(c.path(), &self.upstream.url(), None);
        let d = Dist::start(s1.path(), &self.twin.url(), None, true)?;
        let open = Dist::start(s2.path(), &self.twin.url(), None, false)?;
        let targets = [
            self.target("berth", b.port, false, true),
            self.target("dist", d.port, false, true),
            self.target("dist-noauth", open.port, false, false),
        ];
        let refs = [
            ("tag", TAG.to_string(), self.index_size),
            ("digest", self.child_digest.clone(), self.child_size),
        ];
        let conns = self.s.clients;
        let dur = Duration::from_secs_f64(self.s.manifest_secs);
        for run in 0..self.s.runs {
            for (kind, reference, want) in &refs {
                let row = format!("manifest GET by {kind}, {conns} conns");
                for i in rotated(&[0, 1, 2], run) {
                    let t = &targets[i];
                    let path = if t.name == "berth" {
                        berth_path("manifests", reference)
                    } else {
                        dist_path("manifests", reference)
                    };
                    // Upstream traffic caused by the load tells why a figure is what it is.
                    let origin = || self.upstream.requests().len() + self.twin.requests().len();
                    let before = origin();
                    let v = self
                        .rt
                        .block_on(rps_load(t, &path, ACCEPT, conns, dur, *want))?;
                    let sent = origin() - before;
                    eprintln!(
                        "run {}: {row}: {} {v:.0} req/s ({sent} upstream requests meanwhile)",
                        run + 1,
                        t.name
                    );
                    self.report.add(&row, "req/s", t.name, v);
                }
            }
        }
        self.report.goal(
            &format!("manifest GET by tag, {conns} conns"),
            Goal::AtLeast(20_000.0),
        );
        Ok(())
    }

    fn rss(&mut self) -> anyhow::Result<()> {
        let n = self.s.rss_clients;
        let (c, s1) = (tempdir(), tempdir());
        let mut b = start_berth(c.path(), &self.upstream.url(), None);
        let mut d = Dist::start(s1.path(), &self.twin.url(), None, true)?;
        let bt = self.target("berth", b.port, false, true);
        let dt = self.target("dist", d.port, false, true);
        self.warm(&bt, None)?;
        self.warm(&dt, Some(s1.path()))?;
        let rss_row = format!("peak RSS, {n} concurrent cached GETs");
        let tput_row = format!("hit GET, {n} clients, http");
        for run in 0..self.s.runs {
            for sys in rotated(&["berth", "dist"], run) {
                // A fresh process, so VmHWM covers this run only.
                let (pid, t) = if sys == "berth" {
                    b.restart();
                    (b.pid(), &bt)
                } else {
                    d.restart()?;
                    (d.pid(), &dt)
                };
                let stop = Arc::new(AtomicBool::new(false));
                let peak = Arc::new(AtomicU64::new(0));
                let sampler = {
                    let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            if let Some(kib) = proc_kib(pid, "VmRSS") {
                                peak.fetch_max(kib, Ordering::Relaxed);
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    })
                };
                let path = self.blob_path_for(sys);
                let res = self.rt.block_on(blob_load(t, &path, n, 1, self.size));
                stop.store(true, Ordering::Relaxed);
                let _ = sampler.join();
                let (bytes, wall) = res?;
                let hwm = proc_kib(pid, "VmHWM").context("read VmHWM")?;
                let mib = hwm.max(peak.load(Ordering::Relaxed)) as f64 / 1024.0;
                let gbps = Self::gbps(bytes, wall);
                eprintln!(
                    "run {}: {n} cached GETs: {sys} peak RSS {mib:.1} MiB, {gbps:.3} GB/s",
                    run + 1
                );
                self.report.add(&rss_row, "MiB", sys, mib);
                self.report.add(&tput_row, "GB/s", sys, gbps);
            }
        }
        self.report.goal(&rss_row, Goal::AtMost(64.0));
        Ok(())
    }
}

/// `/v2/acme/app/blobs/sha256:0123456789ab…` shortened to `…/blobs/sha256:01234567`.
fn short_path(p: &str) -> String {
    match p.rfind("/blobs/").or_else(|| p.rfind("/manifests/")) {
        Some(i) => format!("…{}", &p[i..(i + 22).min(p.len())]),
        None => p.to_string(),
    }
}

/// GETs of the blob that moved bytes: a 401 challenge before the authenticated retry is
/// not a fetch.
fn blob_fetches(reg: &Registry, digest: &str) -> usize {
    let needle = format!("/blobs/{digest}");
    reg.requests()
        .iter()
        .filter(|(m, p, status)| m == "GET" && p.contains(&needle) && (200..300).contains(status))
        .count()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let ram_gib = systems::read_to_string(Path::new("/proc/meminfo"))
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = systems::read_to_string(Path::new("/proc/loadavg"));
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "nproc {cpus}, {cpu}, {ram_gib:.1} GiB RAM, load average at start {}",
        load.join(" ")
    )
}

fn run() -> anyhow::Result<()> {
    let s = Settings::from_env();
    let started = std::time::Instant::now();
    let mut header = format!(
        "machine: {}\nblob {} MiB, {} runs, {} clients, herd {}, RSS clients {}, manifest {} s per figure",
        machine(),
        s.blob_mib,
        s.runs,
        s.clients,
        s.herd,
        s.rss_clients,
        s.manifest_secs
    );
    if s.wants("control") {
        header.push_str(&format!(
            "\ncontrol: {} logins + pulls per figure, {} licenses and {} API keys in each store",
            s.logins,
            s.store_licenses + 1,
            s.store_keys
        ));
    }
    if s.wants("push") {
        header.push_str(&format!(
            "\npush: {} MiB layer ({} MiB chunks), {} MiB RSS push x{}, {} repos and {} tags \
             seeded {} in flight, {} GETs per listing figure",
            s.push_mib,
            s.push_chunk_mib,
            s.push_rss_mib,
            s.push_rss_runs,
            s.seed,
            s.seed,
            s.seed_conc,
            s.list_gets
        ));
    }
    eprintln!("{header}");
    let mut w = World::setup(s)?;
    for phase in PHASES {
        if !w.s.wants(phase) {
            continue;
        }
        eprintln!("== {phase}");
        match phase {
            "throughput" => w.throughput()?,
            "cold" => w.cold()?,
            "herd" => w.herd()?,
            "manifest" => w.manifest()?,
            "control" => w.control()?,
            "push" => w.push()?,
            _ => w.rss()?,
        }
    }
    println!("\n{header}");
    println!("{}", w.report.render());
    println!("total bench time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    // Errors return through run() so every server is dropped (and killed) before we exit.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
