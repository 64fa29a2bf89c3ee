//! Upstreams that stall mid-response, against the real berth binary: every path that
//! forwards or collects an upstream body without caching it (ranged and HEAD blob requests,
//! sha512 blobs, the disk-full pass-through, manifests, tag lists, referrers) gives up after
//! `upstreams[].timeout` of silence, cuts the client (or answers 504 when nothing was sent
//! yet) and drops the upstream connection; and a response head goes out as soon as berth
//! has it, not once 64 KiB of body have gathered.

#[path = "support/http.rs"]
mod http;
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;

use support::berth::Berth;
use support::fake::{StallPlan, StallServer};

const LICENSE: &str = "LICENSE-good-0001";
const KIB: usize = 1024;
/// The blob the stalling upstream serves: large enough that what it sends before stalling
/// is a small part of it.
const BLOB_LEN: usize = 1024 * KIB;
/// What the upstream sends of a body before it goes silent: well under 64 KiB.
const FIRST: usize = 16 * KIB;
/// How long a client waits for berth to end a stalled response. berth should take about
/// the upstream timeout (2 s); without the fix it took many minutes.
const CLIENT_LIMIT: Duration = Duration::from_secs(15);

fn blob() -> Vec<u8> {
    // Not compressible, not all zeros: a stand-in for a layer.
    let mut x: u32 = 0x9e37_79b9;
    (0..BLOB_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", support::sha256_hex(data))
}

fn sha512(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA512, data);
    format!("sha512:{}", support::hex(d.as_ref()))
}

fn start_berth(cache: &Path, upstream: &str, timeout: &str) -> Berth {
    let port = support::free_port();
    Berth::start(
        &format!(
            r#"server: {{ listen: "127.0.0.1:{port}", hostname: "127.0.0.1:{port}" }}
cache: {{ dir: "{cache}" }}
upstreams:
  - {{ name: stally, url: "{upstream}", host: upstream.test, timeout: {timeout} }}
apps: [ {{ slug: acme, upstreams: [stally] }} ]
licenses: [ {{ id: {LICENSE}, app: acme, customer: A }} ]
"#,
            cache = cache.display()
        ),
        &[],
    )
}

fn path(kind: &str, reference: &str) -> String {
    format!("/v2/proxy/acme/upstream.test/acme/api/{kind}/{reference}")
}

/// A response head from the stalling upstream, always with `Connection: close` (it serves
/// one request per connection).
fn head(status: &str, headers: &[(&str, String)]) -> String {
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close");
    for (k, v) in headers {
        h.push_str(&format!("\r\n{k}: {v}"));
    }
    h
}

#[derive(Debug, PartialEq)]
enum End {
    /// The connection closed (cleanly or by reset).
    Closed,
    /// Still open when the client gave up.
    Open,
}

struct Seen {
    status: Option<u16>,
    headers: http::Headers,
    /// Body bytes after the head, as sent (not de-chunked).
    body: Vec<u8>,
    end: End,
    took: Duration,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request to berth and reads until the connection ends or `limit` passes;
/// `on_head` runs once, the moment the response head is complete.
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    limit: Duration,
    mut on_head: impl FnMut(u16),
) -> Seen {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{LICENSE}:{LICENSE}"));
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to berth");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send request");
    let started = Instant::now();
    let mut raw = Vec::new();
    let mut head: Option<(u16, http::Headers, usize)> = None;
    let mut buf = vec![0u8; 64 * KIB];
    let end = loop {
        if started.elapsed() > limit {
            break End::Open;
        }
        match s.read(&mut buf) {
            Ok(0) => break End::Closed,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break End::Closed,
        }
        if head.is_none() {
            head = http::parse_head(&raw);
            if let Some((status, _, _)) = &head {
                on_head(*status);
            }
        }
    };
    let took = started.elapsed();
    match head {
        Some((status, headers, split)) => Seen {
            status: Some(status),
            headers,
            body: raw[split..].to_vec(),
            end,
            took,
        },
        None => Seen {
            status: None,
            headers: Vec::new(),
            body: raw,
            end,
            took,
        },
    }
}

/// The upstream connection serving `needle` was closed by berth (within a few seconds).
fn upstream_closed(up: &StallServer, needle: &str) -> bool {
    support::wait_until(Duration::from_secs(5), || {
        up.conns()
            .iter()
            .any(|c| c.request.contains(needle) && c.closed.is_some())
    })
}

fn stall_logged(b: &Berth, needle: &str) -> bool {
    support::wait_until(Duration::from_secs(5), || {
        b.logs().lines().any(|l| {
            l.contains("upstream stalled") && l.contains("upstream=stally") && l.contains(needle)
        })
    })
}

/// A stalled body after a head was sent: the client's connection ends short of the
/// declared length, the upstream connection is dropped, and the log names both.
fn assert_cut(b: &Berth, up: &StallServer, what: &str, needle: &str, seen: &Seen, want: u16) {
    eprintln!(
        "[figures] {what}: status {:?}, {} body bytes, end {:?} after {:?}",
        seen.status,
        seen.body.len(),
        seen.end,
        seen.took
    );
    assert_eq!(
        seen.end,
        End::Closed,
        "{what}: the client was still held after {CLIENT_LIMIT:?}"
    );
    assert_eq!(seen.status, Some(want), "{what}: status");
    let declared: usize = seen
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no content-length in {:?}", seen.headers));
    assert!(
        seen.body.len() < declared,
        "{what}: the client got all {declared} bytes of a stalled body"
    );
    assert!(
        upstream_closed(up, needle),
        "{what}: berth kept the stalled upstream connection open"
    );
    assert!(
        stall_logged(b, needle),
        "{what}: no log line names the upstream and the stall:\n{}",
        b.logs()
    );
}

#[test]
fn a_ranged_get_of_an_uncached_blob_is_cut_when_the_upstream_stalls() {
    let data = blob();
    let d = sha256(&data);
    let first = data[..FIRST].to_vec();
    let n = data.len();
    let up = StallServer::start(move |_| StallPlan {
        head: Some(head(
            "206 Partial Content",
            &[
                ("Content-Length", n.to_string()),
                ("Content-Range", format!("bytes 0-{}/{n}", n - 1)),
            ],
        )),
        first: first.clone(),
        rest: None,
    });
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &up.url(), "2s");
    let seen = exchange(
        b.port,
        "GET",
        &path("blobs", &d),
        &[("Range", "bytes=0-")],
        CLIENT_LIMIT,
        |_| {},
    );
    assert_cut(&b, &up, "ranged GET", &d, &seen, 206);
}

#[test]
fn a_sha512_blob_is_cut_when_the_upstream_stalls() {
    let data = blob();
    let d = sha512(&data);
    let first = data[..FIRST].to_vec();
    let n = data.len();
    let up = StallServer::start(move |_| StallPlan {
        head: Some(head("200 OK", &[("Content-Length", n.to_string())])),
        first: first.clone(),
        rest: None,
    });
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &up.url(), "2s");
    let seen = exchange(b.port, "GET", &path("blobs", &d), &[], CLIENT_LIMIT, |_| {});
    assert_cut(&b, &up, "sha512 GET", &d, &seen, 200);
}

#[test]
fn the_disk_full_pass_through_is_cut_when_the_upstream_stalls() {
    let data = blob();
    let d = sha256(&data);
    let first = data[..FIRST].to_vec();
    let n = data.len();
    let up = StallServer::start(move |_| StallPlan {
        head: Some(head("200 OK", &[("Content-Length", n.to_string())])),
        first: first.clone(),
        rest: None,
    });
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &up.url(), "2s");
    // A fill cannot create its temp file once `tmp` is no directory: berth degrades to
    // pass-through exactly as when the disk is full (same `Begin::PassThrough`). Tests run
    // as root, so taking permissions away would not stop it.
    let tmp = cache.path().join("tmp");
    std::fs::remove_dir_all(&tmp).expect("remove cache tmp dir");
    std::fs::write(&tmp, b"not a directory").expect("put a file in its place");
    let seen = exchange(b.port, "GET", &path("blobs", &d), &[], CLIENT_LIMIT, |_| {});
    assert!(
        b.logs().contains("serving pass-through"),
        "the request did not take the pass-through path:\n{}",
        b.logs()
    );
    assert_cut(&b, &up, "pass-through GET", &d, &seen, 200);
}

#[test]
fn a_head_whose_upstream_never_answers_gets_a_504() {
    let data = blob();
    let d = sha256(&data);
    let up = StallServer::start(|_| StallPlan::default());
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &up.url(), "2s");
    let seen = exchange(
        b.port,
        "HEAD",
        &path("blobs", &d),
        &[],
        CLIENT_LIMIT,
        |_| {},
    );
    eprintln!(
        "[figures] HEAD: status {:?} after {:?}",
        seen.status, seen.took
    );
    assert_eq!(seen.status, Some(504), "HEAD of a silent upstream");
    assert_eq!(seen.end, End::Closed);
    assert!(
        upstream_closed(&up, &d),
        "berth kept the silent upstream connection open"
    );
}

/// Bodies berth collects in memory (manifests, tag lists, referrers) from an upstream that
/// stalls mid-body: nothing was sent yet, so the client gets a 504 naming the timeout.
#[test]
fn collected_bodies_answer_504_when_the_upstream_stalls() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}"#;
    let up = StallServer::start(move |_| StallPlan {
        head: Some(head(
            "200 OK",
            &[
                ("Content-Length", (manifest.len() + 1000).to_string()),
                ("Content-Type", "application/json".to_string()),
            ],
        )),
        first: manifest.to_vec(),
        rest: None,
    });
    let cache = support::tempdir();
    let b = start_berth(cache.path(), &up.url(), "2s");
    let referrer = sha256(b"subject");
    let logged_referrer = format!("acme/api@{referrer}");
    // (what, route, reference, how the log line names it)
    for (what, kind, reference, logged) in [
        ("manifest by tag", "manifests", "v1", "acme/api:v1"),
        ("tag list", "tags", "list", "tag list of acme/api"),
        (
            "referrers",
            "referrers",
            referrer.as_str(),
            logged_referrer.as_str(),
        ),
    ] {
        let p = path(kind, reference);
        let seen = exchange(b.port, "GET", &p, &[], CLIENT_LIMIT, |_| {});
        eprintln!(
            "[figures] {what}: status {:?} after {:?}",
            seen.status, seen.took
        );
        assert_eq!(
            seen.end,
            End::Closed,
            "{what}: the client was still held after {CLIENT_LIMIT:?}"
        );
        assert_eq!(seen.status, Some(504), "{what}: status");
        let body = String::from_utf8_lossy(&seen.body);
        assert!(
            body.contains("UNAVAILABLE") && body.contains("stally"),
            "{what}: not an OCI error naming the upstream: {body}"
        );
        let needle = format!("/{kind}/{reference}");
        assert!(
            upstream_closed(&up, &needle),
            "{what}: berth kept the stalled upstream connection open"
        );
        assert!(
            stall_logged(&b, logged),
            "{what}: no log line names the upstream and the stall:\n{}",
            b.logs()
        );
    }
}

/// The head of a streamed response goes to the client as soon as berth has it: here the
/// upstream sends 16 KiB, then waits for the test to have seen the head (or 10 s) before
/// sending the rest, so a head held back for more body arrives only after that.
#[test]
fn the_head_goes_out_before_64_kib_of_body_arrived() {
    let data = blob();
    let n = data.len();
    let (d256, d512) = (sha256(&data), sha512(&data));
    let body = data.clone();
    let up = StallServer::start(move |req| {
        let range = req.to_ascii_lowercase().contains("\r\nrange:");
        let mut headers = vec![("Content-Length", n.to_string())];
        if range {
            headers.push(("Content-Range", format!("bytes 0-{}/{n}", n - 1)));
        }
        StallPlan {
            head: Some(head(
                if range {
                    "206 Partial Content"
                } else {
                    "200 OK"
                },
                &headers,
            )),
            first: body[..FIRST].to_vec(),
            rest: Some(body[FIRST..].to_vec()),
        }
    });
    let cache = support::tempdir();
    // Long enough that no stall timeout can be what pushes the head out.
    let b = start_berth(cache.path(), &up.url(), "30s");
    for (what, digest, range) in [
        ("ranged pass-through", &d256, true),
        ("sha512 pass-through", &d512, false),
        ("cache fill", &d256, false),
    ] {
        let before = up.conns().len();
        let mut sent_at_head = None;
        let extra: &[(&str, &str)] = if range { &[("Range", "bytes=0-")] } else { &[] };
        let seen = exchange(
            b.port,
            "GET",
            &path("blobs", digest),
            extra,
            CLIENT_LIMIT,
            |_| {
                // (berth's startup probe of /v2/ is no blob request and does not count)
                let conns = up.conns();
                let blob_conns = conns[before..]
                    .iter()
                    .filter(|c| c.request.contains("/blobs/"));
                sent_at_head = Some(blob_conns.map(|c| c.sent).sum::<u64>());
                up.release();
            },
        );
        eprintln!(
            "[figures] {what}: head after the upstream sent {sent_at_head:?} bytes; {} body bytes in {:?}",
            seen.body.len(),
            seen.took
        );
        let sent = sent_at_head.unwrap_or_else(|| panic!("{what}: no response head"));
        assert!(
            sent < 64 * KIB as u64,
            "{what}: the head waited until the upstream had sent {sent} bytes"
        );
        assert_eq!(seen.status, Some(if range { 206 } else { 200 }), "{what}");
        assert_eq!(
            seen.body, data,
            "{what}: the body arrived intact after the head"
        );
    }
}

/// `berth airgap export` decides retries by the kind of failure, not by its message: a
/// manifest whose body stalls once (an `UpstreamStalled` inside the body error, whose text
/// none of the old message patterns matched) is fetched again and the export completes.
#[test]
fn export_retries_a_manifest_whose_body_stalls() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let layer = blob();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let manifest_gets = Arc::new(AtomicUsize::new(0));
    let (m, gets) = (manifest.clone(), manifest_gets.clone());
    let (config_path, layer_path) = (
        format!("/blobs/{} ", sha256(&config)),
        format!("/blobs/{} ", sha256(&layer)),
    );
    let up = StallServer::start(move |req| {
        let whole = |ty: &str, body: &[u8]| StallPlan {
            head: Some(head(
                "200 OK",
                &[
                    ("Content-Type", ty.to_string()),
                    ("Content-Length", body.len().to_string()),
                ],
            )),
            first: body.to_vec(),
            rest: None,
        };
        if req.contains("/manifests/v1 ") {
            let mut plan = whole("application/vnd.oci.image.manifest.v1+json", &m);
            if gets.fetch_add(1, Ordering::SeqCst) == 0 {
                // Half the manifest, then silence.
                plan.first.truncate(m.len() / 2);
            }
            plan
        } else if req.contains(&config_path) {
            whole("application/octet-stream", &config)
        } else if req.contains(&layer_path) {
            whole("application/octet-stream", &layer)
        } else {
            StallPlan {
                head: Some(head("404 Not Found", &[("Content-Length", "0".into())])),
                ..StallPlan::default()
            }
        }
    });
    let dir = support::tempdir();
    let cfg = dir.path().join("export.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server: {{ listen: \"127.0.0.1:{}\", hostname: h }}\n\
             cache: {{ dir: \"{}\" }}\n\
             upstreams:\n  - {{ name: stally, url: \"{}\", host: upstream.test, timeout: 1s }}\n\
             apps: [ {{ slug: acme, upstreams: [stally] }} ]\n\
             licenses: [ {{ id: {LICENSE}, app: acme, customer: A }} ]\n",
            support::free_port(),
            dir.path().join("cache").display(),
            up.url()
        ),
    )
    .unwrap();
    let out = dir.path().join("bundle.tar");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["airgap", "export", "--config"])
        .arg(&cfg)
        .args(["--app", "acme", "-o"])
        .arg(&out)
        .arg("upstream.test/acme/api:v1")
        .output()
        .expect("run berth airgap export");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "export failed:\n{stderr}");
    assert_eq!(
        manifest_gets.load(Ordering::SeqCst),
        2,
        "the stalled manifest was fetched again, once:\n{stderr}"
    );
    assert!(stderr.contains("retrying"), "{stderr}");
    assert!(out.exists());
}
