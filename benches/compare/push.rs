//! The `push` phase: berth's hosted registry against a plain local distribution 2.8
//! (filesystem storage, no auth, deletes enabled) on the same machine: push throughput of a
//! big layer monolithic and chunked, the server's CPU per pushed GiB, its peak RSS during a
//! 1 GiB push, and catalog and tag-list latency over 10,000 repositories and 10,000 tags
//! (with the seeding rate). Owns its uploading client: the shared one only GETs.

use std::fs::File;
use std::io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use berth::config::Config;
use berth::control::{Actor, Control, NewKey};

use crate::report::median;
use crate::support::berth::Berth;
use crate::support::{free_port, tempdir};
use crate::systems::{proc_kib, Dist};
use crate::{basic, rotated, World, MIB};

const SYSTEMS: [&str; 2] = ["berth", "dist"];
const GIB: f64 = (1u64 << 30) as f64;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The seeded image's config blob, shared by every seeded manifest.
const SEED_CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
/// Frames of a streamed upload body: the bench client never holds a layer in memory.
const FRAME: usize = 256 << 10;
/// Time after which a listing figure stops sending GETs (see `list_latency`).
const LIST_BUDGET: Duration = Duration::from_secs(3);

// ---- the servers -------------------------------------------------------------------------

/// One server of the phase: berth with app `acme` and an API key that may push and pull
/// (made in its state store before it starts, as `berth apikey create` does), or a local
/// distribution. Both serve `/v2/acme/<repository>`.
enum Server {
    Berth {
        berth: Berth,
        _dir: tempfile::TempDir,
    },
    Dist {
        dist: Dist,
        _dir: tempfile::TempDir,
    },
}

impl Server {
    fn start(w: &World, system: &str) -> anyhow::Result<(Server, Client)> {
        let dir = tempdir();
        if system == "dist" {
            let dist = Dist::local(dir.path())?;
            let c = Client {
                name: "dist",
                port: dist.port,
                auth: None,
            };
            return Ok((Server::Dist { dist, _dir: dir }, c));
        }
        let port = free_port();
        let yaml = format!(
            "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\n\
             cache: {{ dir: \"{}\" }}\n\
             upstreams: [ {{ name: up, url: \"{}\", host: upstream.test }} ]\n\
             apps: [ {{ slug: acme, upstreams: [up] }} ]\n",
            dir.path().display(),
            w.upstream.url()
        );
        let config = Config::parse(&yaml, dir.path(), &|_: &str| None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = w.rt.block_on(async {
            let store = berth::state::open(&config.state)
                .await
                .context("open berth's state store")?;
            let created = Control::new(store)
                .create_key(
                    &config,
                    &Actor("bench".into()),
                    NewKey {
                        name: "bench-push".into(),
                        apps: vec!["acme".into()],
                        actions: vec!["push".into(), "pull".into()],
                        expires: None,
                    },
                )
                .await?;
            anyhow::Ok(created.key)
        })?;
        let berth = Berth::start_on(port, &yaml, &[]);
        let c = Client {
            name: "berth",
            port,
            auth: Some(basic("api", &key)),
        };
        Ok((Server::Berth { berth, _dir: dir }, c))
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Berth { berth, .. } => berth.pid(),
            Server::Dist { dist, .. } => dist.pid(),
        }
    }

    /// Stops the server and hands back its storage, to be removed once the table is out:
    /// removing 10,000 seeded repositories takes minutes on a disk that discards.
    fn into_dir(self) -> tempfile::TempDir {
        match self {
            Server::Berth { berth, _dir } => {
                drop(berth);
                _dir
            }
            Server::Dist { dist, _dir } => {
                drop(dist);
                _dir
            }
        }
    }

    /// A fresh process over the same storage, so VmHWM covers what comes next only.
    fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            Server::Berth { berth, .. } => berth.restart(),
            Server::Dist { dist, .. } => dist.restart()?,
        }
        Ok(())
    }
}

/// utime + stime of the whole process (every thread), in seconds.
fn cpu_secs(pid: u32, tick: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it do not. utime and stime are
    // fields 14 and 15, the 12th and 13th after the name's ')'.
    let rest = &stat[stat.rfind(')').context("no ) in /proc/pid/stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / tick)
}

fn clock_tick() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---- the uploading client ------------------------------------------------------------------

#[derive(Clone)]
struct Client {
    name: &'static str,
    port: u16,
    auth: Option<String>,
}

type Out = BoxBody<Bytes, std::io::Error>;

/// `len` bytes of a file from `offset`, read frame by frame as hyper asks for them (from
/// the page cache: the file was just written).
struct FileBody {
    file: File,
    left: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = (self.left as usize).min(FRAME);
        let mut buf = vec![0u8; n];
        if let Err(e) = self.file.read_exact(&mut buf) {
            return Poll::Ready(Some(Err(e)));
        }
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

fn file_body(path: &Path, offset: u64, len: u64) -> anyhow::Result<Out> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(FileBody { file, left: len }.boxed())
}

fn bytes_body(b: impl Into<Bytes>) -> Out {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

struct Answer {
    status: u16,
    location: Option<String>,
    length: Option<u64>,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(400)]).into_owned()
    }
}

struct Conn {
    sender: SendRequest<Out>,
    c: Client,
}

impl Client {
    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .with_context(|| format!("{}: connect", self.name))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            c: self.clone(),
        })
    }
}

impl Conn {
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Out,
    ) -> anyhow::Result<Answer> {
        let len = http_body::Body::size_hint(&body).exact().unwrap_or(0);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.c.port))
            .header("content-length", len.to_string());
        if let Some(a) = &self.c.auth {
            req = req.header("authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.sender.ready().await?;
        let resp = self
            .sender
            .send_request(req.body(body)?)
            .await
            .with_context(|| format!("{}: {method} {path}", self.c.name))?;
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // Distribution answers absolute URLs, berth paths: keep the path and query.
        let location = header("location").map(|l| match l.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/".into(), |i| rest[i..].to_string()),
            None => l,
        });
        let length = header("content-length").and_then(|v| v.parse().ok());
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok(Answer {
            status,
            location,
            length,
            body,
        })
    }

    async fn expect(
        &mut self,
        want: u16,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Out,
    ) -> anyhow::Result<Answer> {
        let a = self.send(method, path, headers, body).await?;
        if a.status != want {
            bail!(
                "{}: {method} {path} answered {}, want {want}: {}",
                self.c.name,
                a.status,
                a.text()
            );
        }
        Ok(a)
    }

    /// POST …/blobs/uploads/: where the upload's bytes go.
    async fn begin(&mut self, repo: &str) -> anyhow::Result<String> {
        let path = format!("/v2/{repo}/blobs/uploads/");
        let a = self.expect(202, "POST", &path, &[], bytes_body("")).await?;
        a.location
            .with_context(|| format!("{}: POST {path} without a Location", self.c.name))
    }

    /// POST, then one PUT ?digest= with all of `file`.
    async fn push_monolithic(
        &mut self,
        repo: &str,
        file: &Path,
        size: u64,
        digest: &str,
    ) -> anyhow::Result<()> {
        let loc = self.begin(repo).await?;
        let put = with_digest(&loc, digest);
        let body = file_body(file, 0, size)?;
        let octets = [("content-type", "application/octet-stream")];
        self.expect(201, "PUT", &put, &octets, body).await?;
        Ok(())
    }

    /// POST, a PATCH with Content-Range per `chunk` bytes of `file`, then PUT ?digest=.
    async fn push_chunked(
        &mut self,
        repo: &str,
        file: &Path,
        size: u64,
        chunk: u64,
        digest: &str,
    ) -> anyhow::Result<()> {
        let mut loc = self.begin(repo).await?;
        let mut offset = 0;
        while offset < size {
            let n = chunk.min(size - offset);
            let range = format!("{offset}-{}", offset + n - 1);
            let headers = [
                ("content-type", "application/octet-stream"),
                ("content-range", range.as_str()),
            ];
            let body = file_body(file, offset, n)?;
            let a = self.expect(202, "PATCH", &loc, &headers, body).await?;
            // Distribution's next Location carries the upload's new state.
            loc = a.location.context("PATCH answered without a Location")?;
            offset += n;
        }
        let put = with_digest(&loc, digest);
        self.expect(201, "PUT", &put, &[], bytes_body("")).await?;
        Ok(())
    }

    /// The pushed blob is there, whole: HEAD answers 200 with its size.
    async fn check_blob(&mut self, repo: &str, digest: &str, size: u64) -> anyhow::Result<()> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let a = self.expect(200, "HEAD", &path, &[], bytes_body("")).await?;
        ensure!(
            a.length == Some(size),
            "{}: HEAD {path}: Content-Length {:?}, want {size}",
            self.c.name,
            a.length
        );
        Ok(())
    }

    /// The config blob for seeded manifests in `to`: mounted from `from` when the server
    /// does (201), else put again.
    async fn mount_config(&mut self, to: &str, from: &str, digest: &str) -> anyhow::Result<()> {
        let path = format!("/v2/{to}/blobs/uploads/?mount={digest}&from={from}");
        let a = self.send("POST", &path, &[], bytes_body("")).await?;
        match (a.status, a.location) {
            (201, _) => Ok(()),
            (202, Some(loc)) => {
                let put = with_digest(&loc, digest);
                self.expect(201, "PUT", &put, &[], bytes_body(SEED_CONFIG))
                    .await?;
                Ok(())
            }
            (s, _) => bail!("{}: POST {path} answered {s}", self.c.name),
        }
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// `size` bytes of fresh xorshift noise in a file (no server can dedup them against an
/// earlier run), written and hashed 1 MiB at a time; returns the digest.
fn noise_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<String> {
    let mut out = BufWriter::with_capacity(MIB as usize, File::create(path)?);
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut x = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(format!(
        "sha256:{}",
        crate::support::hex(hash.finish().as_ref())
    ))
}

fn fresh_seed(run: usize, which: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ ((run as u64) << 40) ^ (which << 56)
}

fn seed_manifest(config_digest: &str, i: usize) -> String {
    // An annotation makes every seeded manifest a different one, as different images are.
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": SEED_CONFIG.len() },
        "layers": [],
        "annotations": { "org.example.seq": i.to_string() },
    })
    .to_string()
}

/// `count` jobs over `conc` connections, each taking the next job when its last is done;
/// returns the wall time.
async fn fan_out<F, Fut>(c: &Client, count: usize, conc: usize, job: F) -> anyhow::Result<Duration>
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Conn>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc {
        let (c, next, job) = (c.clone(), Arc::clone(&next), job.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = c.connect().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return anyhow::Ok(());
                }
                conn = job(conn, i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

/// Names of the seeded repositories, zero-padded so their order is their number.
fn seeded_repo(i: usize) -> String {
    format!("acme/r{i:05}")
}

const TAGGED: &str = "acme/tagged";

fn seeded_tag(i: usize) -> String {
    format!("t{i:05}")
}

impl World {
    pub(crate) fn push(&mut self) -> anyhow::Result<()> {
        let tick = clock_tick();
        let work = tempdir();
        self.push_throughput(work.path(), tick)?;
        self.push_rss(work.path())?;
        self.listings()?;
        Ok(())
    }

    /// Per run a fresh server of each kind (storage bounded to one run) and two fresh
    /// files, one pushed monolithic, one chunked, to both.
    fn push_throughput(&mut self, work: &Path, tick: f64) -> anyhow::Result<()> {
        let size = self.s.push_mib * MIB;
        let chunk = self.s.push_chunk_mib * MIB;
        let mib = self.s.push_mib;
        let chunk_mib = self.s.push_chunk_mib;
        let row_mono = format!("push {mib} MiB, monolithic");
        let row_chunked = format!("push {mib} MiB, chunked {chunk_mib} MiB");
        let cpu_mono = "server CPU per pushed GiB, monolithic".to_string();
        let cpu_chunked = format!("server CPU per pushed GiB, chunked {chunk_mib} MiB");
        for run in 0..self.s.runs {
            let files: Vec<(PathBuf, String)> = (0..2)
                .map(|which| {
                    let p = work.join(format!("layer-{which}"));
                    let d = noise_file(&p, size, fresh_seed(run, which))?;
                    anyhow::Ok((p, d))
                })
                .collect::<anyhow::Result<_>>()?;
            for sys in rotated(&SYSTEMS, run) {
                let (server, client) = Server::start(self, sys)?;
                let pid = server.pid();
                for (which, (file, digest)) in files.iter().enumerate() {
                    let repo = format!("acme/push{which}");
                    // Let the start's work (and a Go GC) settle before the CPU reading.
                    std::thread::sleep(Duration::from_millis(200));
                    let cpu0 = cpu_secs(pid, tick)?;
                    let t0 = Instant::now();
                    self.rt.block_on(async {
                        let mut c = client.connect().await?;
                        if which == 0 {
                            c.push_monolithic(&repo, file, size, digest).await
                        } else {
                            c.push_chunked(&repo, file, size, chunk, digest).await
                        }
                    })?;
                    let wall = t0.elapsed().as_secs_f64();
                    std::thread::sleep(Duration::from_millis(200));
                    let cpu = cpu_secs(pid, tick)? - cpu0;
                    self.rt.block_on(async {
                        client
                            .connect()
                            .await?
                            .check_blob(&repo, digest, size)
                            .await
                    })?;
                    let mibps = mib as f64 / wall;
                    let per_gib = cpu * GIB / size as f64;
                    let (row, cpu_row) = if which == 0 {
                        (&row_mono, &cpu_mono)
                    } else {
                        (&row_chunked, &cpu_chunked)
                    };
                    eprintln!(
                        "run {}: {row}: {sys} {mibps:.0} MiB/s, server CPU {cpu:.2} s \
                         ({per_gib:.2} s/GiB)",
                        run + 1
                    );
                    self.report.add(row, "MiB/s", sys, mibps);
                    self.report.add(cpu_row, "s", sys, per_gib);
                }
            }
        }
        Ok(())
    }

    /// Per run a fresh server of each kind and a fresh 1 GiB file pushed monolithic; the
    /// figure is max(VmHWM at the end, VmRSS sampled every 20 ms) of the server process.
    fn push_rss(&mut self, work: &Path) -> anyhow::Result<()> {
        let size = self.s.push_rss_mib * MIB;
        let row = format!("peak RSS, {} MiB monolithic push", self.s.push_rss_mib);
        let tput = format!("push {} MiB, monolithic", self.s.push_rss_mib);
        for run in 0..self.s.push_rss_runs {
            let file = work.join("big");
            let digest = noise_file(&file, size, fresh_seed(run, 7))?;
            for sys in rotated(&SYSTEMS, run) {
                let (mut server, client) = Server::start(self, sys)?;
                // What the key's creation and the start cost is not the push's.
                server.restart()?;
                let pid = server.pid();
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
                let t0 = Instant::now();
                let res = self.rt.block_on(async {
                    let mut c = client.connect().await?;
                    c.push_monolithic("acme/big", &file, size, &digest).await
                });
                let wall = t0.elapsed().as_secs_f64();
                stop.store(true, Ordering::Relaxed);
                let _ = sampler.join();
                res?;
                let hwm = proc_kib(pid, "VmHWM").context("read VmHWM")?;
                let rss = hwm.max(peak.load(Ordering::Relaxed)) as f64 / 1024.0;
                self.rt.block_on(async {
                    client
                        .connect()
                        .await?
                        .check_blob("acme/big", &digest, size)
                        .await
                })?;
                let mibps = self.s.push_rss_mib as f64 / wall;
                eprintln!(
                    "run {}: {row}: {sys} {rss:.1} MiB, {mibps:.0} MiB/s",
                    run + 1
                );
                self.report.add(&row, "MiB", sys, rss);
                self.report.add(&tput, "MiB/s", sys, mibps);
            }
        }
        Ok(())
    }

    /// Seeds one server of each kind with `seed` repositories (one tagged manifest each)
    /// and one repository with `seed` tags, then times the catalog and tag lists.
    fn listings(&mut self) -> anyhow::Result<()> {
        let n = self.s.seed;
        let conc = self.s.seed_conc;
        let mut servers = Vec::new();
        for sys in SYSTEMS {
            let (server, client) = Server::start(self, sys)?;
            self.seed(&client, n, conc)?;
            servers.push((server, client));
        }
        let middle = n / 2;
        // What a page after the middle holds: the rest of the seeded names, and in the
        // catalog `acme/seed` and `acme/tagged` (after `acme/r…`), 100 at most.
        let after = n - middle - 1;
        let figures = [
            (
                format!("catalog ?n=100, first page, {n} repos"),
                "/v2/_catalog?n=100".to_string(),
                (n + 2).min(100),
                true,
            ),
            (
                format!("catalog ?n=100&last=<middle>, {n} repos"),
                format!("/v2/_catalog?n=100&last={}", seeded_repo(middle)),
                (after + 2).min(100),
                true,
            ),
            (
                format!("tags/list, full, {n} tags"),
                format!("/v2/{TAGGED}/tags/list"),
                n,
                false,
            ),
            (
                format!("tags/list ?n=100&last=<middle>, {n} tags"),
                format!("/v2/{TAGGED}/tags/list?n=100&last={}", seeded_tag(middle)),
                after.min(100),
                false,
            ),
            (
                format!("tags/list of a 1-tag repo, {n} repos beside"),
                format!("/v2/{}/tags/list", seeded_repo(middle)),
                1,
                false,
            ),
        ];
        let gets = self.s.list_gets;
        for run in 0..self.s.runs {
            for (row, path, want, catalog) in &figures {
                for i in rotated(&[0, 1], run) {
                    let client = &servers[i].1;
                    let got = self
                        .rt
                        .block_on(list_latency(client, path, *want, *catalog, gets))?;
                    match got {
                        Listed::Ms(ms) => {
                            eprintln!(
                                "run {}: {row}: {} median {ms:.2} ms (of up to {gets} GETs)",
                                run + 1,
                                client.name
                            );
                            self.report.add(row, "ms", client.name, ms);
                        }
                        Listed::Unpaged { ms, got } => {
                            eprintln!(
                                "run {}: {row}: {} ignores n/last: lists {got}, median \
                                 {ms:.2} ms (of up to {gets} GETs)",
                                run + 1,
                                client.name
                            );
                            // Not the same work: shown as a reference, never as `dist`.
                            let note = format!("no paging (lists {got})");
                            self.report.note(row, "ms", client.name, &note);
                            let name = format!("{}-unpaged", client.name);
                            self.report.add(row, "ms", &name, ms);
                        }
                        Listed::Not(why) => {
                            eprintln!("run {}: {row}: {} {why}", run + 1, client.name);
                            self.report.note(row, "ms", client.name, &why);
                        }
                    }
                }
            }
        }
        for (server, _) in servers {
            self.leftovers.push(server.into_dir());
        }
        Ok(())
    }

    fn seed(&mut self, c: &Client, n: usize, conc: usize) -> anyhow::Result<()> {
        let config_digest = format!("sha256:{}", crate::support::sha256_hex(SEED_CONFIG));
        let from = "acme/seed";
        self.rt.block_on(async {
            let mut conn = c.connect().await?;
            let loc = conn.begin(from).await?;
            conn.expect(
                201,
                "PUT",
                &with_digest(&loc, &config_digest),
                &[],
                bytes_body(SEED_CONFIG),
            )
            .await?;
            conn.mount_config(TAGGED, from, &config_digest).await
        })?;
        let put = |repo: String, tag: String, body: String| {
            move |mut conn: Conn| async move {
                let path = format!("/v2/{repo}/manifests/{tag}");
                conn.expect(
                    201,
                    "PUT",
                    &path,
                    &[("content-type", OCI_MANIFEST)],
                    bytes_body(body),
                )
                .await?;
                anyhow::Ok(conn)
            }
        };
        let cd = config_digest.clone();
        let wall = self.rt.block_on(fan_out(c, n, conc, move |mut conn, i| {
            let (repo, cd) = (seeded_repo(i), cd.clone());
            async move {
                conn.mount_config(&repo, from, &cd).await?;
                let body = seed_manifest(&cd, i);
                put(repo, "v1".into(), body)(conn).await
            }
        }))?;
        let rate = n as f64 / wall.as_secs_f64();
        eprintln!(
            "seed: {}: {n} repositories (mount + manifest PUT, {conc} in flight) in {:.1} s, {rate:.0}/s",
            c.name,
            wall.as_secs_f64()
        );
        self.report.add(
            &format!("seed {n} repos: mount + manifest PUT, {conc} in flight"),
            "repo/s",
            c.name,
            rate,
        );
        let cd = config_digest.clone();
        let wall = self.rt.block_on(fan_out(c, n, conc, move |conn, i| {
            put(TAGGED.into(), seeded_tag(i), seed_manifest(&cd, n + i))(conn)
        }))?;
        let rate = n as f64 / wall.as_secs_f64();
        eprintln!(
            "seed: {}: {n} tags in {TAGGED} (manifest PUT, {conc} in flight) in {:.1} s, {rate:.0}/s",
            c.name,
            wall.as_secs_f64()
        );
        self.report.add(
            &format!("seed {n} tags in one repo: manifest PUT, {conc} in flight"),
            "req/s",
            c.name,
            rate,
        );
        Ok(())
    }
}

/// What a listing figure came to.
enum Listed {
    /// The median latency in ms.
    Ms(f64),
    /// A paged request answered with more than a page (distribution 2.8 ignores `n` and
    /// `last` on tags lists): its latency, and how many it listed.
    Unpaged { ms: f64, got: usize },
    /// Why there is no figure: a catalog that answers anything but 200 (berth's is not
    /// there yet).
    Not(String),
}

/// The median latency in ms of `gets` sequential GETs of `path` on one connection (after
/// one warm-up GET; fewer, but at least 5, once they took `LIST_BUDGET`: a list that takes
/// a second per GET would otherwise hold the phase for minutes), checked: 200 and `want` entries in the list (on the warm-up and the
/// last answer: parsing 10,000 names each time would put the client's cost in the figure).
async fn list_latency(
    c: &Client,
    path: &str,
    want: usize,
    catalog: bool,
    gets: usize,
) -> anyhow::Result<Listed> {
    let mut conn = c.connect().await?;
    let field = if catalog { "repositories" } else { "tags" };
    let mut ms = Vec::with_capacity(gets);
    let mut unpaged = None;
    let start = Instant::now();
    let mut i = 0;
    while i <= gets {
        let last = i == gets || (i >= 5 && start.elapsed() > LIST_BUDGET);
        let t0 = Instant::now();
        let a = conn.send("GET", path, &[], bytes_body("")).await?;
        let took = t0.elapsed().as_secs_f64() * 1e3;
        if a.status != 200 {
            if catalog {
                return Ok(Listed::Not(format!("unsupported (status {})", a.status)));
            }
            bail!("{}: GET {path} answered {}: {}", c.name, a.status, a.text());
        }
        if i == 0 || last {
            let json: serde_json::Value =
                serde_json::from_slice(&a.body).with_context(|| format!("{}: {path}", c.name))?;
            let got = json[field].as_array().map_or(0, |v| v.len());
            if path.contains("n=100") && got > want {
                unpaged = Some(got);
            } else {
                ensure!(
                    got == want,
                    "{}: GET {path} listed {got} {field}, want {want}",
                    c.name
                );
            }
        }
        if i > 0 {
            ms.push(took);
        }
        if last {
            break;
        }
        i += 1;
    }
    let ms = median(&ms);
    Ok(match unpaged {
        Some(got) => Listed::Unpaged { ms, got },
        None => Listed::Ms(ms),
    })
}
