//! What anyone who can connect may make berth hold, before and without authenticating:
//! request bodies, HTTP/2 streams, admission reviews, connections, slow heads, idle h2c
//! connections. Runs the real berth binary (RSS read from /proc) against a real
//! docker-registry, with a licensed pull on the side that must still complete.

#[path = "support/http.rs"]
mod raw_http;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::json;

use support::berth::Berth;
use support::image::{push_image, ImageSpec, TestImage};
use support::registry::{Registry, RegistryAuth};

const VENDOR: &str = "vendor";
const VENDOR_PW: &str = "vendor-limits-pw";
const LICENSE: &str = "LICENSE-limits-0001";
const MIB: usize = 1 << 20;

fn registry() -> (Registry, TestImage) {
    let reg = Registry::start(RegistryAuth::Htpasswd {
        user: VENDOR.into(),
        password: VENDOR_PW.into(),
    });
    let img = push_image(
        &reg,
        Some((VENDOR, VENDOR_PW)),
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![3 * MIB as u64, 1000],
            seed: 21,
        },
    );
    (reg, img)
}

/// berth with a plain customer listener; `server_extra` is appended to the `server:` map.
fn start(upstream: &str, dir: &Path, server_extra: &str) -> Berth {
    let port = support::free_port();
    let yaml = format!(
        r#"server: {{ listen: "127.0.0.1:{port}", hostname: "127.0.0.1:{port}"{server_extra} }}
cache: {{ dir: "{cache}" }}
upstreams:
  - {{ name: up, url: "{upstream}", host: upstream.test, username: {VENDOR}, password: "${{UPSTREAM_PASSWORD}}", repositories: ["acme/*"] }}
apps: [ {{ slug: acme, upstreams: [up] }} ]
licenses: [ {{ id: {LICENSE}, app: acme, customer: A }} ]
rewrite: [ {{ app: acme, pull_secret: acme-pull }} ]
"#,
        cache = dir.join("cache").display(),
    );
    Berth::start(&yaml, &[("UPSTREAM_PASSWORD", VENDOR_PW)])
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{LICENSE}:{LICENSE}"))
    )
}

fn manifest_path(img: &TestImage) -> String {
    format!(
        "/v2/proxy/acme/upstream.test/acme/app/manifests/{}",
        img.tag
    )
}

fn blob_path(digest: &str) -> String {
    format!("/v2/proxy/acme/upstream.test/acme/app/blobs/{digest}")
}

/// The licensed pull: the manifest, then every layer, checked by digest.
fn pull(port: u16, img: &TestImage) {
    let auth = basic();
    let accept = img.manifest_media_type.as_str();
    let r = raw_http::get(
        port,
        &manifest_path(img),
        &[("Authorization", &auth), ("Accept", accept)],
    );
    assert_eq!(r.status, 200, "manifest: {}", r.text());
    assert_eq!(
        format!("sha256:{}", support::sha256_hex(&r.body)),
        img.manifest_digest
    );
    for (digest, size) in &img.layers {
        let r = raw_http::get(port, &blob_path(digest), &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "blob {digest}: {}", r.text());
        assert_eq!(r.body.len() as u64, *size);
        assert_eq!(format!("sha256:{}", support::sha256_hex(&r.body)), *digest);
    }
}

/// (VmRSS, VmHWM) of `pid`, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A self-signed certificate for `localhost`, written as PEM into `dir`; returns the DER
/// for the client's trust store.
fn webhook_cert(dir: &Path) -> (String, rustls_pki_types::CertificateDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (crt, key) = (dir.join("webhook.crt"), dir.join("webhook.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    let yaml = format!(
        "webhook_tls: [ {{ cert: \"{}\", key: \"{}\" }} ]",
        crt.display(),
        key.display()
    );
    (yaml, cert.cert.der().clone())
}

fn tls_connector(ca: rustls_pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// An AdmissionReview of about `size` bytes: a Pod whose container has many env vars
/// (what makes a real object megabytes large) and an image berth rewrites.
fn big_review(uid: &str, size: usize) -> Vec<u8> {
    let value = "v".repeat(100);
    let env: Vec<_> = (0..size / 130)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": value}))
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "prod",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "big", "namespace": "prod"},
                "spec": {"containers": [{"name": "c", "image": "upstream.test/acme/app:v1", "env": env}]},
            },
        }
    })
    .to_string()
    .into_bytes()
}

/// POSTs `body` to the webhook listener over TLS (HTTP/1.1); (status, response body).
async fn post_review(
    port: u16,
    connector: &tokio_rustls::TlsConnector,
    body: Vec<u8>,
) -> (u16, Bytes) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("webhook TLS handshake");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/admission/rewrite")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.expect("webhook request");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// An h2c (HTTP/2 with prior knowledge) connection to the customer port.
async fn h2c(
    port: u16,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The bound asserted on berth's peak RSS (VmHWM) under the load below. Measured on a
/// debug build: 56-59 MiB with the limits; the same load before them (reviews then on the
/// customer port) peaked at 840 MiB, the 100 trickled bodies alone at 417 MiB and the h2c
/// streams alone at 433 MiB.
const RSS_BOUND: u64 = 128 * MIB as u64;

#[test]
fn unauthenticated_bodies_h2c_streams_and_webhook_reviews_leave_memory_bounded() {
    let (reg, img) = registry();
    let dir = support::tempdir();
    let webhook_port = support::free_port();
    let (tls_yaml, ca) = webhook_cert(dir.path());
    let b = start(
        &reg.url(),
        dir.path(),
        &format!(", webhook_listen: \"127.0.0.1:{webhook_port}\", {tls_yaml}"),
    );
    let (port, pid) = (b.port, b.pid());
    let (rss_start, _) = memory(pid);

    let peak_rss = Arc::new(AtomicU64::new(0));
    let rt = runtime();
    let stats = rt.block_on(async {
        let done = Arc::new(tokio::sync::Notify::new());
        let sampler = {
            let (peak, done) = (peak_rss.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(memory(pid).0, Ordering::Relaxed);
                    tokio::select! {
                        _ = done.notified() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            })
        };

        // 100 connections, each declaring a 4 MiB body to an authenticated path and
        // trickling it (64 KiB every 50 ms) without credentials.
        let mut bodies = Vec::new();
        for _ in 0..100 {
            bodies.push(tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let head = format!(
                    "POST /v2/ HTTP/1.1\r\nHost: berth\r\nContent-Length: {}\r\n\r\n",
                    4 * MIB
                );
                s.write_all(head.as_bytes()).await.unwrap();
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..64 {
                    if s.write_all(&chunk).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let mut answer = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await;
                answer.starts_with(b"HTTP/1.1 401")
            }));
        }

        // 3 h2c connections × 50 streams, each POSTing 4 MiB where the webhook used to be.
        let mut streams = Vec::new();
        let mut h2_conns = Vec::new();
        for _ in 0..3 {
            let (send, task) = h2c(port).await;
            h2_conns.push(task);
            for _ in 0..50 {
                let mut send = send.clone();
                streams.push(tokio::spawn(async move {
                    let req =
                        http::Request::post(format!("http://127.0.0.1:{port}/admission/rewrite"))
                            .body(Full::new(Bytes::from(vec![b'{'; 4 * MIB])))
                            .unwrap();
                    match send.send_request(req).await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    }
                }));
            }
        }

        // Reviews of ~3 MiB, 4 clients at once, 2 each, on the webhook listener.
        let connector = tls_connector(ca);
        let mut reviews = Vec::new();
        for c in 0..4 {
            let connector = connector.clone();
            reviews.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..2 {
                    let uid = format!("uid-{c}-{i}");
                    let (status, body) =
                        post_review(webhook_port, &connector, big_review(&uid, 3 * MIB)).await;
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let patched =
                        v["response"]["uid"] == uid.as_str() && v["response"]["patch"].is_string();
                    statuses.push((status, patched));
                }
                statuses
            }));
        }

        // Meanwhile a licensed pull on a connection of its own completes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::spawn_blocking(move || pull(port, &img))
            .await
            .expect("the licensed pull under load");

        let mut answered_401 = 0;
        for t in bodies {
            answered_401 += t.await.unwrap() as usize;
        }
        let mut stream_statuses = Vec::new();
        for t in streams {
            stream_statuses.push(t.await.unwrap());
        }
        let mut review_results = Vec::new();
        for t in reviews {
            review_results.extend(t.await.unwrap());
        }
        done.notify_one();
        let _ = sampler.await;
        for t in h2_conns {
            t.abort();
        }
        (answered_401, stream_statuses, review_results)
    });
    let (answered_401, stream_statuses, review_results) = stats;
    let (rss_end, hwm) = memory(pid);
    let peak = peak_rss.load(Ordering::Relaxed).max(hwm);
    eprintln!(
        "berth RSS: {} MiB at start, peak {} MiB (VmHWM {} MiB), {} MiB at the end",
        rss_start >> 20,
        peak >> 20,
        hwm >> 20,
        rss_end >> 20
    );
    assert_eq!(
        answered_401, 100,
        "every unauthenticated POST is answered 401"
    );
    assert!(
        stream_statuses.iter().all(|s| *s == 404),
        "h2c /admission/rewrite on the customer port must be 404: {stream_statuses:?}"
    );
    assert!(
        review_results
            .iter()
            .all(|(s, patched)| *s == 200 && *patched),
        "webhook reviews: {review_results:?}\n{}",
        b.logs()
    );
    assert!(
        hwm < RSS_BOUND,
        "berth's peak RSS {} MiB is over the {} MiB bound",
        hwm >> 20,
        RSS_BOUND >> 20
    );
    drop(reg);
}

#[test]
fn a_head_trickled_byte_by_byte_is_cut_at_the_whole_head_deadline() {
    let (reg, _img) = registry();
    let dir = support::tempdir();
    let b = start(&reg.url(), dir.path(), ", header_timeout: 2s");
    let mut s = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let head = b"GET /v2/ HTTP/1.1\r\nHost: berth.test\r\nX-Padding: ".to_vec();
    let started = Instant::now();
    let mut answer = Vec::new();
    // One byte every 300 ms: each read is well within header_timeout, the whole head is not.
    let mut bytes = head.into_iter().chain(std::iter::repeat(b'a'));
    while started.elapsed() < Duration::from_secs(12) {
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(100));
        if s.write_all(&[bytes.next().unwrap()]).is_err() {
            break;
        }
    }
    let cut_after = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "no 408 for a trickled head within {cut_after:?}: {text:?}"
    );
    assert!(
        cut_after < Duration::from_secs(8),
        "the trickled head held the connection for {cut_after:?} (header_timeout 2s)"
    );
}

#[test]
fn idle_h2c_connections_are_closed_after_idle_timeout() {
    let (reg, _img) = registry();
    let dir = support::tempdir();
    let b = start(&reg.url(), dir.path(), ", idle_timeout: 2s");
    let port = b.port;
    let rt = runtime();
    let (statuses, closed) = rt.block_on(async move {
        let mut conns = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let (mut send, task) = h2c(port).await;
            let req = http::Request::get(format!("http://127.0.0.1:{port}/v2/"))
                .header("authorization", basic())
                .body(Full::new(Bytes::new()))
                .unwrap();
            let r = send.send_request(req).await.expect("h2c request");
            statuses.push(r.status().as_u16());
            let _ = r.into_body().collect().await;
            conns.push((send, task));
        }
        // Nothing more is sent: berth must end each connection (GOAWAY, then close).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut closed = 0;
        for (_send, task) in conns {
            if tokio::time::timeout_at(deadline, task).await.is_ok() {
                closed += 1;
            }
        }
        (statuses, closed)
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        closed, 20,
        "idle h2c connections still open after 10 s (idle_timeout 2s)"
    );
}

#[test]
fn at_max_connections_extras_are_refused_and_a_client_gets_through_after_they_go() {
    let (reg, _img) = registry();
    let dir = support::tempdir();
    let b = start(&reg.url(), dir.path(), ", max_connections: 10");
    // Ten keep-alive connections, each answered once, so each surely holds its permit
    // (the harness's own readiness probes may still have held some a moment ago).
    let auth = basic();
    let hogs: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(
                format!("GET /v2/ HTTP/1.1\r\nHost: berth\r\nAuthorization: {auth}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !(got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"{}")) {
                let n = s.read(&mut buf).expect("a hog's answer");
                assert!(
                    n > 0,
                    "a hog was closed: {:?}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
            s
        })
        .collect();
    for _ in 0..5 {
        let mut extra = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = extra.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n");
        let mut buf = [0u8; 64];
        // Closed at once: EOF or a reset, never an answer, never a hang.
        match extra.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "an extra connection was served"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "an extra connection was left hanging: {e}"
            ),
        }
    }
    let refusals = || {
        b.logs()
            .lines()
            .filter(|l| l.contains("connection limit reached"))
            .count()
    };
    // The line may reach the log file a moment after the refusal reached the client.
    support::wait_until(Duration::from_secs(5), || refusals() > 0);
    let refusals = refusals();
    assert_eq!(
        refusals,
        1,
        "one rate-limited line, not one per refusal:\n{}",
        b.logs()
    );
    drop(hogs);
    let through = support::wait_until(Duration::from_secs(5), || {
        std::panic::catch_unwind(|| raw_http::get(b.port, "/v2/", &[("Authorization", &auth)]))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(through, "no client got through after the hogs left");
}

#[test]
fn a_trickled_token_form_is_cut_at_body_timeout() {
    let (reg, _img) = registry();
    let dir = support::tempdir();
    let b = start(&reg.url(), dir.path(), ", body_timeout: 2s");
    let mut s = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(
        b"POST /token HTTP/1.1\r\nHost: berth.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\n",
    )
    .unwrap();
    // One byte of the form every 300 ms: each in time for a per-read limit, the whole
    // small body not in time for body_timeout.
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(12) {
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(100));
        if sent < 199 {
            if s.write_all(b"a").is_err() {
                break;
            }
            sent += 1;
        }
    }
    let cut_after = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 4"),
        "no 4xx for a trickled form within {cut_after:?}: {text:?}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        cut_after < Duration::from_secs(8),
        "the trickled form held the connection for {cut_after:?} (body_timeout 2s)"
    );
}

#[test]
fn out_of_descriptors_accept_backs_off_logs_once_and_recovers() {
    let (reg, _img) = registry();
    let dir = support::tempdir();
    let port = support::free_port();
    let config = dir.path().join("berth.yaml");
    std::fs::write(
        &config,
        format!(
            r#"server: {{ listen: "127.0.0.1:{port}", hostname: "127.0.0.1:{port}" }}
cache: {{ dir: "{cache}" }}
upstreams: [ {{ name: up, url: "{url}", host: upstream.test, repositories: ["acme/*"] }} ]
apps: [ {{ slug: acme, upstreams: [up] }} ]
licenses: [ {{ id: {LICENSE}, app: acme, customer: A }} ]
"#,
            cache = dir.path().join("cache").display(),
            url = reg.url(),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("berth.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // A descriptor limit far below max_connections (4096): accept fails with EMFILE.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 48 && exec \"{}\" serve --config \"{}\"",
            env!("CARGO_BIN_EXE_berth"),
            config.display()
        ))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        support::wait_for_port(port, Duration::from_secs(20)),
        "{}",
        logs()
    );
    let hogs: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let failures = logs()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    drop(hogs);
    let auth = basic();
    let through = support::wait_until(Duration::from_secs(10), || {
        std::panic::catch_unwind(|| raw_http::get(port, "/v2/", &[("Authorization", &auth)]))
            .is_ok_and(|r| r.status == 200)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        (1..=2).contains(&failures),
        "{failures} 'accept failed' lines in 3 s (want one per 10 s):\n{}",
        logs()
    );
    assert!(
        through,
        "no client got through after the descriptors came back:\n{}",
        logs()
    );
}
