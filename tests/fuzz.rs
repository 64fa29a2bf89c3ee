//! Fuzz-style tests of berth's parsers and rewriters: seeded random and mutated inputs for a bounded time, no panics, and each target's own invariants (round trips, valid and idempotent rewriter output).
//!
//! Every target runs for `BERTH_FUZZ_SECS` seconds (default 2) and at least `MIN_CASES`
//! cases. Case `i` of seed `s` is generated from `(s, i)` alone, so a failure report
//! (`seed`, `case`, the input itself, shrunk) reproduces with
//! `BERTH_FUZZ_SEED=<s> BERTH_FUZZ_CASE=<i> cargo test --test fuzz <target>`.
//! Without `BERTH_FUZZ_SEED` the seed is fixed, unless `BERTH_FUZZ_SECS` is set (a
//! longer exploratory run), which draws a fresh one from the clock.
//!
//! No libFuzzer and no extra crates: a small PRNG, generators that build valid inputs
//! (routes, Range headers, references, real registries' `WWW-Authenticate` headers,
//! scopes, Kubernetes workloads in every style, AdmissionReviews, berth configs) and a
//! byte mutator that breaks them.

#[path = "support/jsonpatch.rs"]
mod jsonpatch;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use berth::api::route::{self, Route};
use berth::config::{Config, Glob};
use berth::oci::reference::ImageRef;
use berth::oci::scope;
use berth::registry::ByteRange;
use berth::rewrite::{review, rewrite_image, rewrite_yaml, RewriteError, Rules};
use berth::upstream::challenge;
use serde_json::{json, Value as Json};
use serde_yaml_ng::Value as Yaml;

// ---------------------------------------------------------------------------------------
// Harness

const MIN_CASES: u64 = 300;

struct Rng(u64);

impl Rng {
    /// splitmix64: every (seed, case) pair gets an independent, reproducible stream.
    fn new(seed: u64, case: u64) -> Rng {
        let mut r = Rng(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn seed() -> u64 {
    if let Some(s) = env_u64("BERTH_FUZZ_SEED") {
        return s;
    }
    if std::env::var_os("BERTH_FUZZ_SECS").is_some() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64;
    }
    0x0b3f_7a11_5eed_2026
}

fn budget() -> Duration {
    let secs = std::env::var("BERTH_FUZZ_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

thread_local! {
    /// Set while shrinking: the many expected panics would bury the report.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// Cases the target under test accepted (parsed, rewrote), reported at the end so
    /// a run shows it did not only feed the parser garbage.
    static ACCEPTED: Cell<u64> = const { Cell::new(0) };
}

fn accepted() {
    ACCEPTED.with(|a| a.set(a.get() + 1));
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".into()
    }
}

/// Inputs that can be made smaller while they still fail.
trait Input: Clone + Debug {
    fn len(&self) -> usize;
    /// `self` without the `n` units at `at`, if that is a valid input.
    fn without(&self, at: usize, n: usize) -> Option<Self>;
}

impl Input for String {
    fn len(&self) -> usize {
        str::len(self)
    }
    fn without(&self, at: usize, n: usize) -> Option<String> {
        let end = at.checked_add(n)?;
        if end > self.len() || !self.is_char_boundary(at) || !self.is_char_boundary(end) {
            return None;
        }
        Some(format!("{}{}", &self[..at], &self[end..]))
    }
}

/// A YAML case: a first line naming the rules and whether the text is a generated,
/// unmutated manifest, then the text. Shrinking keeps the first line.
#[derive(Clone, Debug)]
struct Marked(String);

impl Input for Marked {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn without(&self, at: usize, n: usize) -> Option<Marked> {
        let header = self.0.find('\n').map_or(self.0.len(), |i| i + 1);
        if at < header {
            return None;
        }
        self.0.without(at, n).map(Marked)
    }
}

fn fails<T>(check: &dyn Fn(&T), input: &T) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| check(input)))
        .err()
        .map(|p| panic_message(&*p))
}

/// Greedy delta debugging: drop ever smaller chunks while the input still fails.
fn shrink<T: Input>(check: &dyn Fn(&T), mut input: T, mut msg: String) -> (T, String) {
    QUIET.with(|q| q.set(true));
    let mut tries = 0;
    let mut chunk = input.len().max(1).next_power_of_two();
    while chunk > 0 && tries < 4000 {
        let mut at = 0;
        while at < input.len() && tries < 4000 {
            tries += 1;
            match input.without(at, chunk.min(input.len() - at)) {
                Some(smaller) => match fails(check, &smaller) {
                    Some(m) => {
                        input = smaller;
                        msg = m;
                    }
                    None => at += chunk,
                },
                None => at += 1,
            }
        }
        chunk /= 2;
    }
    QUIET.with(|q| q.set(false));
    (input, msg)
}

/// Runs `check` on generated inputs until the time budget and `MIN_CASES` are both
/// spent; a panic in `check` is a failure reported with the seed, case and input.
fn fuzz<T: Input>(target: &str, generate: impl Fn(&mut Rng) -> T, check: impl Fn(&T)) {
    install_quiet_hook();
    let seed = seed();
    let only = env_u64("BERTH_FUZZ_CASE");
    let deadline = Instant::now() + budget();
    let mut case = only.unwrap_or(0);
    ACCEPTED.with(|a| a.set(0));
    loop {
        let input = generate(&mut Rng::new(seed, case));
        if let Some(msg) = fails(&check, &input) {
            let len = input.len();
            let (small, small_msg) = shrink(&check, input.clone(), msg.clone());
            panic!(
                "fuzz target {target} failed: seed {seed:#x} case {case}\n\
                 reproduce: BERTH_FUZZ_SEED={seed:#x} BERTH_FUZZ_CASE={case} cargo test --test fuzz {target}\n\
                 panic: {msg}\ninput ({len} bytes): {input:?}\n\
                 shrunk ({} bytes): {small:?}\nshrunk panic: {small_msg}",
                small.len()
            );
        }
        case += 1;
        if only.is_some() || (case >= MIN_CASES && Instant::now() >= deadline) {
            break;
        }
    }
    let ok = ACCEPTED.with(Cell::get);
    eprintln!("fuzz {target}: {case} cases ({ok} accepted), seed {seed:#x}");
}

// ---------------------------------------------------------------------------------------
// Mutation

/// Random text over `alphabet` plus a few arbitrary characters.
fn random_text(rng: &mut Rng, alphabet: &[u8], max: usize) -> String {
    let n = rng.below(max + 1);
    let mut s = String::new();
    for _ in 0..n {
        match rng.below(20) {
            0 => s.push(char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}')),
            1 => s.push(*rng.pick(&['\0', '\t', '\n', '\r', ' ', '\u{7f}', 'é', '☃', '\u{feff}'])),
            _ => s.push(*rng.pick(alphabet) as char),
        }
    }
    s
}

/// One to four byte-level edits of `seed`: deletions, insertions of dictionary tokens,
/// duplications, replacements, truncation and arbitrary bytes (lossily re-read as UTF-8).
fn mutate(rng: &mut Rng, seed: &str, dict: &[&str]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for _ in 0..rng.range(1, 4) {
        let len = b.len();
        let at = rng.below(len + 1);
        let n = rng.range(1, 8).min(len - at);
        match rng.below(8) {
            0 => {
                b.drain(at..at + n);
            }
            1 | 2 => {
                let t = rng.pick(dict).as_bytes().to_vec();
                b.splice(at..at, t);
            }
            3 => {
                let t = rng.pick(dict).as_bytes().to_vec();
                b.splice(at..at + n, t);
            }
            4 => {
                let dup = b[at..at + n].to_vec();
                b.splice(at..at, dup);
            }
            5 => b.insert(at, rng.next() as u8),
            6 if at < len => b[at] = rng.next() as u8,
            _ => b.truncate(at),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// The usual mix: a tenth random text, the rest valid inputs of which most are mutated.
fn mixed(rng: &mut Rng, valid: String, dict: &[&str], alphabet: &[u8]) -> String {
    match rng.below(10) {
        0 => random_text(rng, alphabet, 80),
        1..=3 => valid,
        _ => mutate(rng, &valid, dict),
    }
}

const HEX: &[u8] = b"0123456789abcdef";

fn hex(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| *rng.pick(HEX) as char).collect()
}

fn digest(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => format!("sha512:{}", hex(rng, 128)),
        1 => {
            let n = rng.range(60, 66);
            format!("sha256:{}", hex(rng, n))
        }
        2 => format!("md5:{}", hex(rng, 32)),
        _ => format!("sha256:{}", hex(rng, 64)),
    }
}

fn component(rng: &mut Rng) -> String {
    let words = [
        "acme",
        "api",
        "redis",
        "library",
        "team",
        "a",
        "x-y",
        "a.b",
        "a__b",
        "nginx",
        "web",
        "blobs",
        "manifests",
        "tags",
        "uploads",
        "proxy",
        "v2",
        "A",
        "a-",
        "0",
    ];
    rng.pick(&words).to_string()
}

fn repository(rng: &mut Rng) -> String {
    let n = rng.range(1, 4);
    (0..n).map(|_| component(rng)).collect::<Vec<_>>().join("/")
}

fn tag(rng: &mut Rng) -> String {
    let tags = [
        "1.2",
        "latest",
        "7",
        "v1.0.0-rc.1",
        "a_b",
        "-x",
        "UPPER",
        ".x",
    ];
    match rng.below(8) {
        0 => "t".repeat(rng.range(120, 130)),
        _ => rng.pick(&tags).to_string(),
    }
}

fn host(rng: &mut Rng) -> String {
    let hosts = [
        "quay.io",
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "ghcr.io",
        "registry.example.com:5000",
        "registry.example.com_5000",
        "localhost",
        "localhost:5000",
        "[::1]:5000",
        "10.0.0.1:443",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "europe-west1-docker.pkg.dev",
        "acme.azurecr.io",
        "images.acme.test",
        "Quay.IO",
        "host:99999",
        "-bad.example",
    ];
    rng.pick(&hosts).to_string()
}

// ---------------------------------------------------------------------------------------
// Route parser

const ROUTE_DICT: &[&str] = &[
    "/",
    "//",
    "/v2/",
    "proxy/",
    "/manifests/",
    "/blobs/",
    "/blobs/uploads/",
    "/tags/list",
    "/referrers/",
    "sha256:",
    ":",
    "@",
    "..",
    "%2F",
    "_",
    "?",
    "#",
    "\0",
    "é",
];

fn route_seed(rng: &mut Rng) -> String {
    let repo = format!(
        "proxy/{}/{}/{}",
        rng.pick(&["acme", "a", "a-b", "A", "", "a_b"]),
        host(rng),
        repository(rng)
    );
    match rng.below(9) {
        0 => rng
            .pick(&["/v2/", "/v2", "/v2/_catalog", "/", "", "/v3/"])
            .to_string(),
        1 => format!("/v2/{repo}/tags/list"),
        2 => format!("/v2/{repo}/blobs/{}", digest(rng)),
        3 => format!("/v2/{repo}/referrers/{}", digest(rng)),
        4 => format!("/v2/{repo}/blobs/uploads/{}", hex(rng, 8)),
        5 => format!("/v2/{repo}/manifests/{}", digest(rng)),
        _ => format!("/v2/{repo}/manifests/{}", tag(rng)),
    }
}

/// A parsed route written back as a path must parse to the same route.
fn route_path(r: &Route) -> Option<String> {
    Some(match r {
        Route::Base => "/v2/".into(),
        Route::Manifest { repo, reference } => {
            format!("/v2/{}/manifests/{reference}", repo.name())
        }
        Route::Blob { repo, digest } => format!("/v2/{}/blobs/{digest}", repo.name()),
        Route::Tags { repo } => format!("/v2/{}/tags/list", repo.name()),
        Route::Referrers { repo, digest } => format!("/v2/{}/referrers/{digest}", repo.name()),
        Route::HostedManifest { repo, reference } => {
            format!("/v2/{}/manifests/{reference}", repo.name())
        }
        Route::HostedBlob { repo, digest } => format!("/v2/{}/blobs/{digest}", repo.name()),
        Route::HostedTags { repo } => format!("/v2/{}/tags/list", repo.name()),
        Route::HostedReferrers { repo, digest } => {
            format!("/v2/{}/referrers/{digest}", repo.name())
        }
        Route::Catalog => "/v2/_catalog".into(),
        Route::UploadStart { repo } => format!("/v2/{}/blobs/uploads/", repo.name()),
        Route::Upload { repo, id } => format!("/v2/{}/blobs/uploads/{id}", repo.name()),
        // `parse` reads a path only; mirror requests need the query (`parse_request`).
        Route::Unsupported(_) | Route::NotFound | Route::Mirror { .. } => return None,
    })
}

#[test]
fn fuzz_route_parser() {
    fuzz(
        "fuzz_route_parser",
        |rng| {
            let valid = route_seed(rng);
            mixed(
                rng,
                valid,
                ROUTE_DICT,
                b"/v2proxyacme.:_-@sha256abcdef0123456789",
            )
        },
        |path: &String| {
            if let Ok(r) = route::parse(path) {
                accepted();
                if let Some(p) = route_path(&r) {
                    let again = route::parse(&p);
                    assert!(
                        matches!(&again, Ok(x) if *x == r),
                        "{path:?} parsed to {r:?}, whose path {p:?} parses to {again:?}"
                    );
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Range

const RANGE_DICT: &[&str] = &[
    "bytes=",
    "-",
    ",",
    " ",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "=",
    "\t",
];

fn range_seed(rng: &mut Rng) -> String {
    let n = |rng: &mut Rng| match rng.below(4) {
        0 => rng.next().to_string(),
        1 => u64::MAX.to_string(),
        _ => rng.below(1000).to_string(),
    };
    match rng.below(6) {
        0 => format!("bytes={}-", n(rng)),
        1 => format!("bytes=-{}", n(rng)),
        2 => format!("bytes={}-{},{}-{}", n(rng), n(rng), n(rng), n(rng)),
        3 => format!(" bytes = {} - {} ", n(rng), n(rng)),
        _ => {
            let a = n(rng);
            format!("bytes={a}-{}", n(rng))
        }
    }
}

#[test]
fn range_regressions() {
    // Found by fuzz_range_header: a suffix range of an empty blob resolved to 0..0 and
    // was answered 206 `bytes 0-0/0`; it is unsatisfiable.
    let r = ByteRange::parse("bytes=-3").ok();
    assert_eq!(r.and_then(|r| r.resolve(0)), None);
    assert_eq!(r.and_then(|r| r.resolve(2)), Some((0, 2)));
}

#[test]
fn fuzz_range_header() {
    fuzz(
        "fuzz_range_header",
        |rng| {
            let valid = range_seed(rng);
            mixed(rng, valid, RANGE_DICT, b"bytes=-0123456789, ")
        },
        |h: &String| {
            let Ok(r) = ByteRange::parse(h) else { return };
            accepted();
            let again = ByteRange::parse(&r.header_value()).ok();
            assert_eq!(
                again,
                Some(r),
                "{h:?} → {:?} does not round-trip",
                r.header_value()
            );
            for size in [0, 1, 2, 99, 100, 1 << 40, u64::MAX - 1, u64::MAX] {
                if let Some((start, end)) = r.resolve(size) {
                    // A satisfiable range selects at least one byte inside the blob;
                    // Content-Range is written as start-(end-1)/size.
                    assert!(
                        start < end && end <= size,
                        "{h:?} on {size} bytes resolved to {start}..{end}"
                    );
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Image references and the single-image rewrite

const REF_DICT: &[&str] = &[
    "/",
    ":",
    "@",
    "sha256:",
    "docker.io/",
    "library/",
    ".",
    "-",
    "_",
    "__",
    "[",
    "]",
    "::",
    "localhost",
    "A",
    " ",
    "é",
];

fn reference_seed(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(60) {
        s.push_str(&host(rng));
        s.push('/');
    }
    s.push_str(&repository(rng));
    if rng.chance(20) {
        // Near the 255-character name limit, where a rewrite makes the name longer.
        s.push_str(&"/abcdefghij".repeat(rng.range(18, 25)));
    }
    if rng.chance(60) {
        s.push(':');
        s.push_str(&tag(rng));
    }
    if rng.chance(30) {
        s.push('@');
        s.push_str(&digest(rng));
    }
    s
}

fn some_rules(rng: &mut Rng) -> Rules {
    let mut upstream_hosts: Vec<String> = Vec::new();
    for _ in 0..rng.range(0, 4) {
        upstream_hosts.push(
            rng.pick(&[
                "quay.io",
                "docker.io",
                "index.docker.io",
                "registry.example.com:5000",
                "ghcr.io",
                "Quay.io/",
                "localhost:5000",
            ])
            .to_string(),
        );
    }
    Rules {
        hostname: rng
            .pick(&[
                "images.acme.test",
                "images.acme.test:8443",
                "localhost:5443",
                "10.1.2.3",
            ])
            .to_string(),
        app: rng.pick(&["acme", "a", "acme-2"]).to_string(),
        upstream_hosts,
        pull_secret: rng
            .pick(&[
                Some("berth-pull"),
                None,
                Some("123"),
                Some("a b"),
                Some("true"),
                Some("x\"y"),
            ])
            .map(str::to_string),
        all: rng.chance(30),
        registry: rng.chance(25).then(|| {
            rng.pick(&[
                "registry.customer.example/vendor-mirror",
                "reg.local:5000",
                "reg.local/a/b/",
            ])
            .to_string()
        }),
    }
}

#[test]
fn reference_regressions() {
    // Found by fuzz_image_references: names within 255 characters as written but not
    // once normalised parsed, and printed as references that do not parse.
    for long in [format!("a/{}", "b".repeat(244)), "x".repeat(250)] {
        assert!(ImageRef::parse(&long).is_err(), "{long}");
    }
    assert!(ImageRef::parse(&format!("a/{}", "b".repeat(243))).is_ok());
}

#[test]
fn fuzz_image_references() {
    fuzz(
        "fuzz_image_references",
        |rng| {
            let valid = reference_seed(rng);
            mixed(rng, valid, REF_DICT, b"abcdefz019.-_/:@[]")
        },
        |s: &String| {
            if let Ok(r) = ImageRef::parse(s) {
                accepted();
                let again = ImageRef::parse(&r.to_string());
                assert_eq!(again.as_ref(), Ok(&r), "{s:?} → {r} does not round-trip");
            }
            let mut rng = Rng::new(s.len() as u64, 7);
            for _ in 0..4 {
                let rules = some_rules(&mut rng);
                if let Some(new) = rewrite_image(&rules, s) {
                    assert!(
                        ImageRef::parse(&new).is_ok(),
                        "{s:?} rewritten to the invalid reference {new:?} ({rules:?})"
                    );
                    assert_eq!(
                        rewrite_image(&rules, &new),
                        None,
                        "{s:?} → {new:?} not idempotent"
                    );
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// WWW-Authenticate

/// Headers as the registries send them.
const CHALLENGES: &[&str] = &[
    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull""#,
    r#"Bearer realm="https://quay.io/v2/auth",service="quay.io",scope="repository:acme/api:pull""#,
    r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:acme/api:pull""#,
    r#"Basic realm="https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/",service="ecr.amazonaws.com""#,
    r#"Bearer realm="https://gcr.io/v2/token",service="gcr.io",scope="repository:proj/img:pull""#,
    r#"Bearer realm="https://europe-west1-docker.pkg.dev/v2/token",service="europe-west1-docker.pkg.dev""#,
    r#"Bearer realm="https://acme.azurecr.io/oauth2/token",service="acme.azurecr.io",scope="repository:api:pull""#,
    r#"Basic realm="Registry Realm""#,
    r#"Bearer realm="https://harbor.example/service/token",service="harbor-registry""#,
    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull",error="insufficient_scope""#,
    r#"Basic realm="x", Bearer realm="https://y/token" , service=y.io"#,
    r#"Negotiate, Basic realm="a\"b\\c""#,
    "Basic dXNlcjpwYXNz==",
];

const CHALLENGE_DICT: &[&str] = &[
    "\"", "\\", ",", "=", " ", "\t", "Bearer ", "Basic ", "realm=", "\"\"", ", ,", "é",
];

/// A header built from known parameters, with the parameters it must parse back to.
/// Schemes with their parameters, as a parsed header should yield them.
type Challenges = Vec<(String, BTreeMap<String, String>)>;

fn built_challenge(rng: &mut Rng) -> (String, Challenges) {
    let mut header = Vec::new();
    let mut want = Vec::new();
    for _ in 0..rng.range(1, 3) {
        let scheme = rng
            .pick(&["Bearer", "Basic", "bearer", "Digest", "X-Custom"])
            .to_string();
        let mut params = BTreeMap::new();
        let mut text = Vec::new();
        for _ in 0..rng.range(0, 4) {
            let key = rng
                .pick(&["realm", "service", "scope", "error", "Realm2"])
                .to_string();
            if params.contains_key(&key.to_ascii_lowercase()) {
                continue;
            }
            let value = rng
                .pick(&[
                    "https://auth.example/token",
                    "a b",
                    "x\"y",
                    "back\\slash",
                    "",
                    "repository:a/b:pull,push",
                    "é",
                ])
                .to_string();
            let quoted = value.is_empty()
                || !value
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"/:.,-".contains(&c))
                || value.contains(',')
                || rng.chance(70);
            let written = if quoted {
                format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                value.clone()
            };
            let sep = rng.pick(&["=", "=", " = "]);
            text.push(format!("{key}{sep}{written}"));
            params.insert(key.to_ascii_lowercase(), value);
        }
        let joined = text.join(*rng.pick(&[",", ", ", " ,"]));
        header.push(if joined.is_empty() {
            scheme.clone()
        } else {
            format!("{scheme} {joined}")
        });
        want.push((scheme.to_ascii_lowercase(), params));
    }
    (header.join(", "), want)
}

#[test]
fn fuzz_www_authenticate() {
    fuzz(
        "fuzz_www_authenticate",
        |rng| {
            let valid = if rng.chance(50) {
                rng.pick(CHALLENGES).to_string()
            } else {
                built_challenge(rng).0
            };
            mixed(
                rng,
                valid,
                CHALLENGE_DICT,
                b"Bearer realm=\"https://a/t\",service scope:",
            )
        },
        |h: &String| {
            if !challenge::parse(h).is_empty() {
                accepted();
            }
        },
    );
    // Built headers parse back to exactly the parameters they were built from.
    for case in 0..2000 {
        let (header, want) = built_challenge(&mut Rng::new(seed(), case));
        let got: Challenges = challenge::parse(&header)
            .into_iter()
            .map(|c| (c.scheme, c.params.into_iter().collect()))
            .collect();
        assert_eq!(got, want, "case {case}: {header:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Token scopes

const SCOPE_DICT: &[&str] = &[
    ":",
    ",",
    " ",
    "*",
    "repository:",
    "pull",
    "push",
    "::",
    "é",
    "\t",
];

fn scope_seed(rng: &mut Rng) -> String {
    let one = |rng: &mut Rng| {
        let name = match rng.below(4) {
            0 => format!("proxy/acme/{}/{}", host(rng), repository(rng)),
            1 => "catalog".to_string(),
            2 => "n".repeat(rng.range(500, 520)),
            _ => repository(rng),
        };
        format!(
            "{}:{name}:{}",
            rng.pick(&["repository", "registry", "repository(plugin)", ""]),
            rng.pick(&["pull", "pull,push", "*", "", " pull , push ", "delete"])
        )
    };
    (0..rng.range(1, 3))
        .map(|_| one(rng))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn fuzz_scopes() {
    fuzz(
        "fuzz_scopes",
        |rng| {
            let valid = scope_seed(rng);
            mixed(rng, valid, SCOPE_DICT, b"repository:acme/api:pull,push* ")
        },
        |s: &String| {
            for one in s.split(' ') {
                if let Some(a) = scope::parse_one(one) {
                    let written = format!("{}:{}:{}", a.kind, a.name, a.actions.join(","));
                    assert_eq!(scope::parse_one(&written).as_ref(), Some(&a), "{one:?}");
                    assert!(a.actions.iter().all(|x| !x.is_empty() && !x.contains(',')));
                }
            }
            let all = scope::parse_all([s.as_str()]);
            if !all.is_empty() {
                accepted();
            }
            let each = s.split(' ').filter_map(scope::parse_one).count();
            assert_eq!(all.len(), each, "{s:?}");
        },
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes workloads (YAML) and the YAML rewriter

/// A generated YAML node, emitted in block or flow style at random.
#[derive(Clone, Debug)]
enum G {
    /// A scalar's value (the emitter picks plain or a quoting style that can hold it).
    S(String),
    /// Written as is (`~`, `null`, `!!str x`).
    Raw(String),
    M(Vec<(String, G)>),
    L(Vec<G>),
    Alias(String),
    Anchor(String, Box<G>),
}

fn m(entries: Vec<(&str, G)>) -> G {
    G::M(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn s(v: &str) -> G {
    G::S(v.to_string())
}

struct Emitter<'r> {
    rng: &'r mut Rng,
    ind: usize,
    dash: usize,
}

fn plain_ok(v: &str, flow: bool) -> bool {
    !v.is_empty()
        && !v.starts_with(|c: char| " -?:,[]{}#&*!|>'\"%@`~".contains(c))
        && !v.ends_with([' ', ':'])
        && !v.contains(": ")
        && !v.contains(" #")
        && !v.contains(['\n', '\r', '\t'])
        && !(flow && v.contains([',', '[', ']', '{', '}']))
        && serde_yaml_ng::from_str::<Yaml>(v).ok() == Some(Yaml::String(v.to_string()))
}

impl Emitter<'_> {
    fn scalar(&mut self, v: &str, flow: bool) -> String {
        let single_ok = !v.contains(['\n', '\r']);
        match self.rng.below(4) {
            0 if single_ok => format!("'{}'", v.replace('\'', "''")),
            1 => serde_json::to_string(v).unwrap_or_default(),
            _ if plain_ok(v, flow) => v.to_string(),
            _ => serde_json::to_string(v).unwrap_or_default(),
        }
    }

    fn flow(&mut self, g: &G) -> String {
        match g {
            G::S(v) => self.scalar(v, true),
            G::Raw(r) => r.clone(),
            G::Alias(a) => format!("*{a}"),
            G::Anchor(a, inner) => format!("&{a} {}", self.flow(inner)),
            G::M(entries) => {
                let items: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| {
                        let k = if k == "<<" {
                            k.clone()
                        } else {
                            self.scalar(k, true)
                        };
                        format!("{k}: {}", self.flow(v))
                    })
                    .collect();
                let comma = if !items.is_empty() && self.rng.chance(15) {
                    ","
                } else {
                    ""
                };
                format!("{{{}{comma}}}", items.join(", "))
            }
            G::L(items) => {
                let items: Vec<String> = items.iter().map(|v| self.flow(v)).collect();
                let comma = if !items.is_empty() && self.rng.chance(15) {
                    ","
                } else {
                    ""
                };
                format!("[{}{comma}]", items.join(", "))
            }
        }
    }

    /// The text after `key:` or `- `: inline for scalars and flow collections, else a
    /// newline and the block at `indent`.
    fn value(&mut self, g: &G, indent: usize, out: &mut String) {
        let flow = self.rng.chance(15);
        match g {
            G::M(e) if !e.is_empty() && !flow => {
                out.push('\n');
                self.block_map(e, indent + self.ind, out);
            }
            G::L(items) if !items.is_empty() && !flow => {
                out.push('\n');
                self.block_list(items, indent + self.dash, out);
            }
            G::Anchor(a, inner) if matches!(**inner, G::M(_) | G::L(_)) && !flow => {
                out.push_str(&format!(" &{a}"));
                match &**inner {
                    G::M(e) if !e.is_empty() => {
                        out.push('\n');
                        self.block_map(e, indent + self.ind, out);
                    }
                    G::L(items) if !items.is_empty() => {
                        out.push('\n');
                        self.block_list(items, indent + self.dash, out);
                    }
                    other => {
                        let f = self.flow(other);
                        out.push_str(&format!(" {f}\n"));
                    }
                }
            }
            other => {
                let f = self.flow(other);
                out.push(' ');
                out.push_str(&f);
                if self.rng.chance(5) {
                    out.push_str("  # note");
                }
                out.push('\n');
            }
        }
    }

    fn block_map(&mut self, entries: &[(String, G)], indent: usize, out: &mut String) {
        for (i, (k, v)) in entries.iter().enumerate() {
            if i > 0 || !out.ends_with("- ") {
                out.push_str(&" ".repeat(indent));
            }
            if self.rng.chance(3) {
                out.push_str(&format!("# about {k}\n{}", " ".repeat(indent)));
            }
            // Only a plain `<<` is a merge key.
            let k = if k == "<<" {
                k.clone()
            } else {
                self.scalar(k, false)
            };
            out.push_str(&k);
            out.push(':');
            self.value(v, indent, out);
        }
    }

    fn block_list(&mut self, items: &[G], indent: usize, out: &mut String) {
        for item in items {
            out.push_str(&" ".repeat(indent));
            out.push_str("- ");
            match item {
                G::M(e) if !e.is_empty() && self.rng.chance(80) => {
                    self.block_map(e, indent + 2, out)
                }
                G::Anchor(a, inner) if matches!(&**inner, G::M(e) if !e.is_empty()) => {
                    out.push_str(&format!("&{a}\n"));
                    if let G::M(e) = &**inner {
                        self.block_map(e, indent + 2, out);
                    }
                }
                other => {
                    let f = self.flow(other);
                    out.push_str(&f);
                    out.push('\n');
                }
            }
        }
    }

    fn document(&mut self, g: &G) -> String {
        let mut out = String::new();
        match g {
            G::M(e) if !e.is_empty() && self.rng.chance(90) => self.block_map(e, 0, &mut out),
            other => {
                out.push_str(&self.flow(other));
                out.push('\n');
            }
        }
        out
    }
}

const OURS: &[&str] = &[
    "quay.io/acme/api:1.2",
    "redis",
    "library/redis:7",
    "docker.io/bitnami/redis:7.2",
    "index.docker.io/library/nginx@sha256:4a5b8e5e3f3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e",
    "registry.example.com:5000/team/app:1",
    "images.acme.test/proxy/acme/quay.io/acme/x:1",
    " quay.io/acme/spaced:1 ",
];
const FOREIGN: &[&str] = &[
    "ghcr.io/other/tool:1",
    "registry.k8s.io/pause:3.9",
    "Not/A Valid:Ref",
    "",
    "quay.io/UPPER/x",
];

struct Doc {
    g: G,
    /// Anchors defined so far in this document, for aliases to use.
    anchors: Vec<String>,
    /// Whether a key was deliberately written twice (the rewriter must refuse it).
    duplicate: bool,
}

impl Doc {
    fn anchor(&mut self, rng: &mut Rng, g: G) -> G {
        if rng.chance(12) {
            let name = format!("a{}", self.anchors.len());
            self.anchors.push(name.clone());
            G::Anchor(name, Box::new(g))
        } else {
            g
        }
    }
}

fn image(rng: &mut Rng) -> String {
    if rng.chance(65) {
        rng.pick(OURS).to_string()
    } else {
        rng.pick(FOREIGN).to_string()
    }
}

fn container(rng: &mut Rng, doc: &mut Doc, i: usize, defaults: Option<&str>) -> G {
    let mut e: Vec<(String, G)> = vec![("name".into(), s(&format!("c{i}")))];
    if let Some(d) = defaults.filter(|_| rng.chance(50)) {
        // A container merged from defaults, maybe overriding their image.
        e.insert(0, ("<<".into(), G::Alias(d.to_string())));
        if rng.chance(40) {
            e.push(("image".into(), G::S(image(rng))));
        }
    } else {
        let img = match rng.below(12) {
            0 => G::Raw(format!("!!str {}", rng.pick(OURS))),
            1 => G::Raw("~".into()),
            _ => G::S(image(rng)),
        };
        let img = doc.anchor(rng, img);
        e.push(("image".into(), img));
    }
    if rng.chance(25) {
        e.push((
            "ports".into(),
            G::L(vec![m(vec![("containerPort", G::Raw("8080".into()))])]),
        ));
    }
    if rng.chance(2) {
        e.push(("image".into(), G::S(image(rng))));
        doc.duplicate = true;
    }
    doc.anchor(rng, G::M(e))
}

fn pull_secrets(rng: &mut Rng) -> Option<G> {
    Some(match rng.below(9) {
        0 => G::Raw("~".into()),
        1 => G::Raw(String::new()),
        2 => G::L(vec![]),
        3 => G::L(vec![m(vec![("name", s("berth-pull"))])]),
        4 => G::L(vec![
            m(vec![("name", s("legacy"))]),
            m(vec![("name", s("other"))]),
        ]),
        _ => return None,
    })
}

fn pod_spec(rng: &mut Rng, doc: &mut Doc) -> G {
    let defaults = rng.chance(20).then(|| {
        let name = format!("d{}", doc.anchors.len());
        doc.anchors.push(name.clone());
        name
    });
    let mut e: Vec<(String, G)> = Vec::new();
    if let Some(d) = &defaults {
        // Defined where no rewriter looks; containers merge it in.
        e.push((
            "x-defaults".into(),
            G::Anchor(
                d.clone(),
                Box::new(m(vec![
                    ("image", G::S(image(rng))),
                    ("imagePullPolicy", s("Always")),
                ])),
            ),
        ));
    }
    if let Some(p) = pull_secrets(rng) {
        e.push(("imagePullSecrets".into(), p));
    }
    if rng.chance(40) {
        e.push(("restartPolicy".into(), s("Never")));
    }
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        if key != "containers" && rng.chance(70) {
            continue;
        }
        let items: Vec<G> = (0..rng.range(0, 3))
            .map(|i| container(rng, doc, i, defaults.as_deref()))
            .collect();
        let list = doc.anchor(rng, G::L(items));
        e.push((key.into(), list));
    }
    if rng.chance(3) {
        e.push(("containers".into(), G::L(vec![])));
        doc.duplicate = true;
    }
    if rng.chance(10) {
        e.reverse();
    }
    doc.anchor(rng, G::M(e))
}

fn nest(path: &[&str], inner: G) -> G {
    path.iter().rev().fold(inner, |acc, k| m(vec![(k, acc)]))
}

/// One Kubernetes object of any workload kind (or a List of them, or not a workload).
fn object(rng: &mut Rng, doc: &mut Doc, depth: usize) -> G {
    let kinds: &[(&str, &[&str])] = &[
        ("Pod", &["spec"]),
        ("PodTemplate", &["template", "spec"]),
        ("Deployment", &["spec", "template", "spec"]),
        ("StatefulSet", &["spec", "template", "spec"]),
        ("DaemonSet", &["spec", "template", "spec"]),
        ("ReplicaSet", &["spec", "template", "spec"]),
        ("ReplicationController", &["spec", "template", "spec"]),
        ("Job", &["spec", "template", "spec"]),
        (
            "CronJob",
            &["spec", "jobTemplate", "spec", "template", "spec"],
        ),
        ("Rollout", &["spec", "template", "spec"]),
        ("ConfigMap", &["data"]),
        ("List", &[]),
    ];
    let (kind, path) = *rng.pick(kinds);
    let mut e = vec![
        ("apiVersion".to_string(), s("v1")),
        ("kind".to_string(), s(kind)),
        (
            "metadata".to_string(),
            m(vec![
                ("name", s("x-é")),
                ("labels", m(vec![("app", s("a"))])),
            ]),
        ),
    ];
    if kind == "List" {
        let n = if depth < 2 { rng.range(0, 3) } else { 0 };
        let mut items: Vec<G> = (0..n).map(|_| object(rng, doc, depth + 1)).collect();
        if rng.chance(30) {
            if let Some(a) = doc.anchors.last() {
                items.push(G::Alias(a.clone()));
            }
        }
        e.push(("items".into(), G::L(items)));
    } else if kind == "ConfigMap" {
        e.push((
            "data".into(),
            m(vec![("image", s("quay.io/acme/not-a-container:1"))]),
        ));
    } else {
        let spec = if rng.chance(10) && !doc.anchors.is_empty() {
            // Reuse an earlier anchored node (maybe a pod spec) for this one.
            G::Alias(doc.anchors[rng.below(doc.anchors.len())].clone())
        } else {
            pod_spec(rng, doc)
        };
        let (last, parents) = path.split_last().unwrap_or((&"spec", &[]));
        let spec_entry = if rng.chance(10) {
            // The pod spec merged in from an anchored mapping.
            let name = format!("p{}", doc.anchors.len());
            doc.anchors.push(name.clone());
            e.insert(0, ("x-pod".into(), G::Anchor(name.clone(), Box::new(spec))));
            m(vec![("<<", G::Alias(name))])
        } else {
            spec
        };
        let inner = m(vec![(last, spec_entry)]);
        let tree = nest(parents, inner);
        if let G::M(top) = tree {
            e.extend(top);
        }
    }
    G::M(e)
}

/// A stream of one to three documents in a random style.
fn workload_stream(rng: &mut Rng) -> (String, bool) {
    let mut out = String::new();
    let mut duplicate = false;
    let ind = *rng.pick(&[2, 4]);
    let dash = *rng.pick(&[0, 2]);
    for i in 0..rng.range(1, 3) {
        let mut doc = Doc {
            g: G::Raw(String::new()),
            anchors: Vec::new(),
            duplicate: false,
        };
        doc.g = object(rng, &mut doc, 0);
        duplicate |= doc.duplicate;
        if i > 0 || rng.chance(30) {
            let marker = ["---\n", "--- # next\n"][rng.below(2)];
            out.push_str(marker);
        }
        if rng.chance(20) {
            out.push_str("# Source: chart/templates/x.yaml\n");
        }
        let mut em = Emitter { rng, ind, dash };
        let g = doc.g.clone();
        out.push_str(&em.document(&g));
        if rng.chance(10) {
            out.push_str("...\n");
        }
    }
    if rng.chance(15) {
        out = out.replace('\n', "\r\n");
    }
    (out, duplicate)
}

const YAML_DICT: &[&str] = &[
    ":",
    ": ",
    "- ",
    "-",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: ",
    "<<: *a0\n",
    "\n",
    "  ",
    "#",
    "'",
    "\"",
    "!!str ",
    "---\n",
    "...\n",
    "? ",
    "|",
    ">",
    "\t",
    "\r\n",
    "é",
    "☃",
    "~",
    "image: ",
    "image: redis\n",
    "imagePullSecrets: ",
    "containers:\n",
    "{name: x,}",
    "\\",
];

fn yaml_docs(text: &str) -> Option<Vec<Yaml>> {
    let mut out = Vec::new();
    // The iterator repeats a syntax error forever: stop at the first.
    for d in serde_yaml_ng::Deserializer::from_str(text) {
        let mut v: Yaml = serde::Deserialize::deserialize(d).ok()?;
        v.apply_merge().ok()?;
        out.push(v);
        if out.len() > 64 {
            return None;
        }
    }
    Some(out)
}

fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "PodTemplate" => &["template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template", "spec"],
        _ => return None,
    })
}

/// Whether `image` already points at the rules' target (what the rewriter leaves alone
/// but still adds the pull secret for).
fn targeted(rules: &Rules, image: &str) -> bool {
    let target = rules.registry.as_deref().unwrap_or(&rules.hostname);
    let host = target.split('/').next().unwrap_or(target);
    let Ok(r) = ImageRef::parse(image) else {
        return false;
    };
    let first = image.split('/').next().unwrap_or(image);
    !host.is_empty() && (first.eq_ignore_ascii_case(host) || r.registry.eq_ignore_ascii_case(host))
}

/// Every pod spec of an object (through Lists), as Kubernetes reads the document.
fn pod_specs<'v>(obj: &'v Yaml, out: &mut Vec<&'v Yaml>, depth: usize) {
    let kind = obj.get("kind").and_then(Yaml::as_str).unwrap_or("");
    if kind.ends_with("List") {
        if let (Some(items), true) = (obj.get("items").and_then(Yaml::as_sequence), depth < 8) {
            for item in items {
                pod_specs(item, out, depth + 1);
            }
        }
        return;
    }
    let path = pod_spec_path(kind).unwrap_or(&["spec", "template", "spec"]);
    let spec = path.iter().try_fold(obj, |v, k| v.get(k));
    if let Some(spec @ Yaml::Mapping(_)) = spec {
        if pod_spec_path(kind).is_some() || spec.get("containers").is_some_and(Yaml::is_sequence) {
            out.push(spec);
        }
    }
}

/// What remains to be done to a document: images still to rewrite, and pod specs with
/// targeted images but no pull secret.
fn work_left(rules: &Rules, docs: &[Yaml]) -> Vec<String> {
    let mut left = Vec::new();
    for doc in docs {
        let mut specs = Vec::new();
        pod_specs(doc, &mut specs, 0);
        for spec in specs {
            let mut any_targeted = false;
            for key in ["containers", "initContainers", "ephemeralContainers"] {
                for c in spec
                    .get(key)
                    .and_then(Yaml::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    let Some(img) = c.get("image").and_then(Yaml::as_str) else {
                        continue;
                    };
                    if let Some(new) = rewrite_image(rules, img.trim()) {
                        left.push(format!("{key}: {img:?} should be {new:?}"));
                    }
                    any_targeted |= targeted(rules, img.trim());
                }
            }
            if let (true, Some(secret)) = (any_targeted, &rules.pull_secret) {
                let present = match spec.get("imagePullSecrets") {
                    Some(Yaml::Sequence(items)) => items
                        .iter()
                        .any(|i| i.get("name").and_then(Yaml::as_str) == Some(secret)),
                    Some(Yaml::Null) | None => false,
                    // Not a list: not a valid pod spec, left alone.
                    Some(_) => true,
                };
                if !present {
                    left.push(format!("pull secret {secret:?} missing"));
                }
            }
        }
    }
    left
}

/// Output equals input except for images and the pull secret. With anchors, other uses
/// of a rewritten anchored image change with it: any other changed string must be the
/// rewrite of what it was.
fn same_but_rewritten(rules: &Rules, anchors: bool, path: &str, a: &Yaml, b: &Yaml) {
    match (a, b) {
        (Yaml::Mapping(ma), Yaml::Mapping(mb)) => {
            for (k, vb) in mb {
                let key = k.as_str().unwrap_or("?");
                let p = format!("{path}.{key}");
                match ma.get(k) {
                    Some(_) if key == "image" || key == "imagePullSecrets" => {}
                    Some(va) => same_but_rewritten(rules, anchors, &p, va, vb),
                    None => assert_eq!(key, "imagePullSecrets", "{p}: key added"),
                }
            }
            for k in ma.keys() {
                assert!(mb.contains_key(k), "{path}: key {k:?} removed");
            }
        }
        (Yaml::Sequence(sa), Yaml::Sequence(sb)) => {
            assert_eq!(sa.len(), sb.len(), "{path}: length changed");
            for (i, (x, y)) in sa.iter().zip(sb).enumerate() {
                same_but_rewritten(rules, anchors, &format!("{path}[{i}]"), x, y);
            }
        }
        (Yaml::Tagged(ta), Yaml::Tagged(tb)) => {
            assert_eq!(ta.tag, tb.tag, "{path}");
            same_but_rewritten(rules, anchors, path, &ta.value, &tb.value);
        }
        (Yaml::String(x), Yaml::String(y)) if anchors && x != y => {
            let want = rewrite_image(rules, x.trim());
            let ok = want.as_deref().is_some_and(|w| {
                y == w || y.strip_prefix(w).is_some_and(|d| d.starts_with("@sha256:"))
            });
            assert!(ok, "{path}: {x:?} became {y:?}");
        }
        _ => assert_eq!(a, b, "{path} changed"),
    }
}

fn fake_pin(r: &ImageRef) -> Result<String, String> {
    if r.repository.contains("fail") {
        return Err("manifest unknown".into());
    }
    let h = r
        .to_string()
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    Ok(format!("sha256:{h:016x}{h:016x}{h:016x}{h:016x}"))
}

/// The rewriter's contract, for any input.
fn check_rewrite(rules: &Rules, pin: bool, input: &str, must_succeed: bool) {
    let f: &dyn Fn(&ImageRef) -> Result<String, String> = &fake_pin;
    let pin = pin.then_some(f);
    let out = match rewrite_yaml(rules, input, pin) {
        Ok(out) => {
            if out != input {
                accepted();
            }
            out
        }
        Err(e) => {
            assert!(!must_succeed, "a valid manifest was refused: {e}");
            if let RewriteError::Unsupported { line, .. } | RewriteError::Pin { line, .. } = &e {
                assert!(*line >= 1, "error without a line: {e}");
            }
            return;
        }
    };
    // Idempotent (which also means the output is YAML the rewriter reads).
    match rewrite_yaml(rules, &out, pin) {
        Ok(again) => assert_eq!(again, out, "second rewrite changed the output"),
        Err(e) => panic!("rewriting the output failed: {e}\noutput:\n{out}"),
    }
    let Some(before) = yaml_docs(input) else {
        return;
    };
    // serde_yaml_ng merges a quoted "<<" too; YAML (and the rewriter) only a plain one.
    if input.contains("'<<'") || input.contains("\"<<\"") {
        return;
    }
    let after = yaml_docs(&out).unwrap_or_else(|| panic!("output is not valid YAML:\n{out}"));
    assert_eq!(before.len(), after.len(), "document count changed:\n{out}");
    let anchors = input.contains('&');
    for (a, b) in before.iter().zip(&after) {
        same_but_rewritten(rules, anchors, "", a, b);
    }
    let left = work_left(rules, &after);
    assert!(
        left.is_empty(),
        "silently skipped: {left:?}\noutput:\n{out}"
    );
    if work_left(rules, &before).is_empty() {
        assert_eq!(out, input, "nothing to do, yet the text changed");
    }
}

fn yaml_rules(rng: &mut Rng) -> Rules {
    let mut r = some_rules(rng);
    r.upstream_hosts = vec![
        "quay.io".into(),
        "docker.io".into(),
        "registry.example.com:5000".into(),
    ];
    r
}

#[test]
fn fuzz_yaml_rewriter() {
    fuzz(
        "fuzz_yaml_rewriter",
        |rng| {
            let (valid, duplicate) = workload_stream(rng);
            // A marker line tells the check which rules to use and whether the input
            // is a generated valid manifest (which must not be refused).
            let pristine = !duplicate && rng.chance(35);
            let text = if pristine {
                valid
            } else {
                match rng.below(12) {
                    0 => random_text(rng, b"kind: Pod\nspec:- image{}[],&*<>|#'\"", 200),
                    _ => mutate(rng, &valid, YAML_DICT),
                }
            };
            Marked(format!(
                "# fuzz {} {}\n{text}",
                rng.next() % 1000,
                u8::from(pristine)
            ))
        },
        |Marked(input): &Marked| {
            let mut words = input.lines().next().unwrap_or("").split(' ').skip(2);
            let n: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let pristine = words.next() == Some("1");
            let rules = yaml_rules(&mut Rng::new(n, 1));
            // A shrunk case is no longer a generated manifest; one that is not even
            // YAML any more may be refused.
            let pristine = pristine && yaml_docs(input).is_some();
            check_rewrite(&rules, n.is_multiple_of(4), input, pristine);
        },
    );
}

/// Inputs the fuzzer found or the issue named, kept as fixed regression cases.
#[test]
fn fuzz_yaml_rewriter_regressions() {
    let rules = Rules {
        hostname: "images.acme.test".into(),
        app: "acme".into(),
        upstream_hosts: vec!["quay.io".into(), "docker.io".into()],
        pull_secret: Some("berth-pull".into()),
        all: false,
        registry: None,
    };
    let valid = [
        // A trailing comma in a flow mapping inside a flow sequence.
        "kind: Pod\nspec:\n  imagePullSecrets: [{name: x,}]\n  containers: [{name: a, image: redis}]\n",
        "kind: Pod\nspec: {containers: [{image: redis,},], imagePullSecrets: [{name: x, },],}\n",
        // `<<:` merge keys, for the pod spec and for a container.
        "base: &base\n  containers:\n  - name: a\n    image: redis\nkind: Deployment\nspec:\n  template:\n    spec:\n      <<: *base\n",
        "kind: Pod\nd: &d {image: redis}\nspec:\n  containers:\n  - <<: *d\n    name: a\n",
        "kind: Pod\nd: &d {image: redis}\nspec:\n  containers:\n  - <<: [*d]\n    name: a\n",
        // An aliased image, containers list and pod spec.
        "kind: Pod\nx: &i redis\nspec:\n  containers:\n  - image: *i\n",
        "kind: List\nitems:\n- kind: Pod\n  spec: &s\n    containers: [{image: redis}]\n- kind: Pod\n  spec: *s\n",
        // An anchored first item of imagePullSecrets.
        "kind: Pod\nspec:\n  imagePullSecrets:\n  - &l name: legacy\n  containers:\n  - image: redis\n",
        // Found by the fuzzer: a comment after the first item's dash hid the new item
        // inside the comment.
        "kind: Pod\nspec:\n  imagePullSecrets:\n  - # about name\n    name: legacy\n  containers:\n  - image: redis\n",
        "kind: Pod\nspec:\n  imagePullSecrets:\n  -   # about name\n    # more\n\n    name: legacy\n  containers:\n  - image: redis\n",
        // Found by the fuzzer: an indentless list whose first item is itself a list got
        // the secret inside that inner list.
        "kind: Pod\nspec:\n  imagePullSecrets:\n  - - x\n  containers:\n  - image: redis\n",
        "kind: Pod\nspec:\n  imagePullSecrets:\n    - - x\n  containers:\n  - image: redis\n",
        // Found by the fuzzer: a pod spec whose first key is explicit (`? n`) got
        // `imagePullSecrets` inside that key.
        "kind: Pod\nspec:\n  ? n\n  containers:\n  - image: redis\n",
        "kind: Pod\nspec:\n  ?\n    n\n  : v\n  containers:\n  - image: redis\n",
        "kind: Pod\nspec: {? a : b, containers: [{image: redis}]}\n",
        // Found by the fuzzer: a mapping first met as a List item, later as a pod spec,
        // was skipped the second time.
        "kind: List\nitems:\n- &p {containers: [{image: redis}]}\n- kind: Deployment\n  spec: {template: {spec: *p}}\n",
        // An anchored null imagePullSecrets keeps its anchor.
        "kind: Pod\nspec:\n  imagePullSecrets: &n ~\n  containers:\n  - image: redis\n",
    ];
    for input in valid {
        check_rewrite(&rules, false, input, true);
    }
    // Found by the fuzzer: `&i:` is anchor `i:` to saphyr but anchor `i` and a `:` to
    // libyaml and go-yaml (Kubernetes); such names are refused.
    let odd = "kind: Pod\nd: &d0 {image: s}\nspec: {containers: [&i:{<<: *d0}]}\n";
    let err = rewrite_yaml(&rules, odd, None);
    assert!(
        matches!(&err, Err(RewriteError::Unsupported { line: 3, reason, .. }) if reason.contains("\"i:\"")),
        "{err:?}"
    );
    // A name that would be too long once rewritten is refused, not written broken.
    let long = format!(
        "kind: Pod\nspec:\n  containers:\n  - image: quay.io/{}/x:1\n",
        "a".repeat(240)
    );
    let err = rewrite_yaml(&rules, &long, None);
    assert!(
        matches!(&err, Err(RewriteError::Unsupported { line: 4, reason, .. }) if reason.contains("not a valid reference")),
        "{err:?}"
    );
    assert_eq!(
        rewrite_image(&rules, &format!("quay.io/{}/x:1", "a".repeat(240))),
        None
    );
    // A duplicate `image:` key is refused, naming the line, never silently skipped.
    let dup =
        "kind: Pod\nspec:\n  containers:\n  - name: a\n    image: ghcr.io/x/y\n    image: redis\n";
    let err = rewrite_yaml(&rules, dup, None);
    assert!(
        matches!(&err, Err(RewriteError::Unsupported { line: 6, .. })),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// AdmissionReview

fn admission_body(rng: &mut Rng) -> String {
    let (yaml, _) = workload_stream(rng);
    let object = yaml_docs(&yaml)
        .and_then(|d| d.into_iter().next())
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or(Json::Null);
    let kind = object
        .get("kind")
        .and_then(Json::as_str)
        .unwrap_or("Pod")
        .to_string();
    let mut request = json!({
        "uid": format!("uid-{}", rng.below(1000)),
        "kind": {"group": "", "version": "v1", "kind": kind},
        "operation": rng.pick(&["CREATE", "CREATE", "UPDATE", "DELETE", "CONNECT"]),
        "namespace": rng.pick(&["acme", "kube-system", "other"]),
        "object": object,
    });
    if rng.chance(5) {
        request["subResource"] = json!("status");
    }
    let review = json!({
        "apiVersion": rng.pick(&["admission.k8s.io/v1", "admission.k8s.io/v1beta1", "v1"]),
        "kind": "AdmissionReview",
        "request": request,
    });
    let text = if rng.chance(50) {
        serde_json::to_string_pretty(&review)
    } else {
        serde_json::to_string(&review)
    }
    .unwrap_or_default();
    let dict = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "null",
        "true",
        "1e999",
        "-0",
        "\\u0000",
        "\\ud800",
        "\"image\":\"redis\"",
        "\"containers\":[]",
        "[[[[[[[[[[[[",
    ];
    mixed(rng, text, dict, b"{}[]\":,admission")
}

fn admission_rules(ctx: &berth::rewrite::AdmissionContext) -> Option<Rules> {
    (ctx.namespace != "kube-system").then(|| Rules {
        hostname: "images.acme.test".into(),
        app: "acme".into(),
        upstream_hosts: vec![
            "quay.io".into(),
            "docker.io".into(),
            "registry.example.com:5000".into(),
        ],
        pull_secret: Some("berth-pull".into()),
        all: false,
        registry: None,
    })
}

/// Images of the object's pod spec that the rules would still rewrite, untrimmed as the
/// API server stores them.
fn admission_left(object: &Json, rules: &Rules) -> Vec<String> {
    let kind = object.get("kind").and_then(Json::as_str).unwrap_or("");
    let Some(path) = pod_spec_path(kind) else {
        return Vec::new();
    };
    let Some(spec) = path.iter().try_fold(object, |v, k| v.get(k)) else {
        return Vec::new();
    };
    let mut left = Vec::new();
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec.get(key).and_then(Json::as_array).into_iter().flatten() {
            if let Some(img) = c.get("image").and_then(Json::as_str) {
                if let Some(new) = rewrite_image(rules, img) {
                    left.push(format!("{img} should be {new}"));
                }
            }
        }
    }
    left
}

#[test]
fn fuzz_admission_review() {
    fuzz("fuzz_admission_review", admission_body, |body: &String| {
        let Ok(resp) = review(&admission_rules, body.as_bytes()) else {
            return;
        };
        let req: Json = serde_json::from_str(body).unwrap_or(Json::Null);
        let r = &resp["response"];
        assert_eq!(r["uid"], req["request"]["uid"], "uid not echoed");
        assert_eq!(r["allowed"], json!(true));
        assert_eq!(resp["apiVersion"], req["apiVersion"]);
        let Some(patch) = r.get("patch") else { return };
        accepted();
        assert_eq!(r["patchType"], json!("JSONPatch"));
        let raw = STANDARD
            .decode(patch.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("patch is not base64: {e}"));
        let ops: Json =
            serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("patch is not JSON: {e}"));
        assert!(
            ops.as_array().is_some_and(|a| !a.is_empty()),
            "empty patch sent"
        );
        let mut object = req["request"]["object"].clone();
        jsonpatch::apply_patch(&mut object, &ops);
        let ns = req["request"]["namespace"].as_str().unwrap_or("");
        let ctx = berth::rewrite::AdmissionContext {
            namespace: ns.into(),
            ..Default::default()
        };
        if let Some(rules) = admission_rules(&ctx) {
            let left = admission_left(&object, &rules);
            assert!(left.is_empty(), "patched object still has {left:?}");
        }
        // The patched object needs no further patch.
        let mut again = req.clone();
        again["request"]["object"] = object;
        let again = review(&admission_rules, again.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("patched review refused: {e}"));
        assert!(
            again["response"].get("patch").is_none(),
            "not idempotent: {again}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// berth config

const CONFIGS: &[&str] = &[
    include_str!("../config.example.yaml"),
    r#"server:
  listen: 127.0.0.1:5443
  hostname: images.acme.test:8443
  shutdown_timeout: 1s
  header_timeout: 2s
  idle_timeout: 3s
  admin_listen: "[::1]:9090"
cache:
  dir: ./data
  max_size: 1.5GiB
  tag_ttl: 1m
  offline: false
upstreams:
  - {name: q, kind: quay, username: u, password: "${TOKEN}", repositories: ["acme/*", "x/**"], timeout: 5s}
  - {name: hub, kind: dockerhub}
  - {name: gh, kind: ghcr, username: u, password: p}
  - name: ecr
    kind: ecr
    region: eu-west-1
    registry_id: "123456789012"
    access_key_id: AKIAEXAMPLE
    secret_access_key: $${literal}
    ecr_endpoint: http://127.0.0.1:1
  - {name: acr, kind: acr, url: "https://acme.azurecr.io", username: app, password: s}
  - {name: gcr, kind: gcr, service_account_key: "{}"}
  - {name: gar, kind: gar, region: europe-west1, service_account_key: "${SA}"}
  - {name: k8s, kind: public, url: "https://registry.k8s.io/v2"}
  - {name: own, url: "http://127.0.0.1:5000", host: "registry.example.com:5000"}
apps:
  - {slug: acme, upstreams: [q, hub, own], images: ["quay.io/acme/api:1.2"]}
  - {slug: two, upstreams: [gh]}
licenses:
  - {id: 2aPXSl9pLCbkgRKQ, app: acme, customer: Big Bank, expires: 2027-06-30T00:00:00Z, images: ["quay.io/acme/api*"], rate_limit: {per_second: 2, burst: 3}}
  - {id: second-license, app: two, customer: B, revoked: true}
auth:
  token_ttl: 5m
  realm: https://images.acme.test/token
  rate_limit: {per_second: 50, burst: 200}
rewrite:
  - {app: acme, pull_secret: acme-pull, namespaces: [a], exclude_namespaces: [kube-system], labels: {x: y}}
"#,
];

const CONFIG_DICT: &[&str] = &[
    ":",
    ": ",
    "- ",
    "\n",
    "  ",
    "${",
    "}",
    "$$",
    "${X}",
    "${UNSET}",
    "0",
    "-1",
    "1e99",
    "18446744073709551616",
    "999999999999d",
    "0s",
    "GiB",
    "[",
    "]",
    "{",
    "}",
    "~",
    "\"",
    "kind: ",
    "ecr",
    "acr",
    "gcr",
    "gar",
    "public",
    "custom",
    "url: ",
    "http://",
    "https://",
    "[::1]",
    ":0",
    ":65536",
    "**",
    "*",
    "?",
    "//",
    "é",
    "\t",
];

#[test]
fn fuzz_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().to_path_buf();
    fuzz(
        "fuzz_config",
        |rng| {
            let valid = rng.pick(CONFIGS).to_string();
            // Uncomment the example's optional lines now and then.
            let valid = if rng.chance(30) {
                valid.replace("\n  # ", "\n  ").replace("\n# ", "\n")
            } else {
                valid
            };
            match rng.below(10) {
                0 => random_text(rng, b"server:\n cache upstreams- name{}[]", 200),
                1 => valid,
                _ => mutate(rng, &valid, CONFIG_DICT),
            }
        },
        |text: &String| {
            let env = |name: &str| (name != "UNSET").then(|| format!("v-{name}"));
            if let Ok(config) = Config::parse(text, Path::new(&base), &env) {
                accepted();
                for app in config.tenants.apps() {
                    let slug = &app.slug;
                    let rules = berth::rewrite::rules_for_app(&config, slug)
                        .unwrap_or_else(|e| panic!("app {slug} from a valid config: {e}"));
                    let _ = rewrite_image(&rules, "quay.io/acme/api:1");
                }
            }
        },
    );
}

#[test]
fn fuzz_globs_and_sizes() {
    fuzz(
        "fuzz_globs_and_sizes",
        |rng| {
            let pat = *rng.pick(&["acme/*", "acme/**", "acme/ap?", "**", "a*b*c"]);
            let pat = mutate(rng, pat, &["*", "?", "/", "a", "**"]);
            let name = repository(rng);
            let name = mutate(rng, &name, &["/", "a", "b", "c"]);
            let size = *rng.pick(&["1.5GiB", "10MB", "0", "7TiB", "12 KiB"]);
            let size = mutate(rng, size, &["i", "B", ".", "9", " "]);
            format!("{pat}\n{name}\n{size}")
        },
        |s: &String| {
            let mut parts = s.split('\n');
            let (pat, name, size) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            // The matcher backtracks per star; keep patterns to the few stars configs have.
            if pat.matches('*').count() <= 6 {
                if let Ok(g) = Glob::new(pat) {
                    if g.matches(name) {
                        accepted();
                    }
                    let _ = g.literal_len();
                }
            }
            let _ = berth::config::parse_size(size);
        },
    );
}
