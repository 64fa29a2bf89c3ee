//! Integration tests of berth's plain-HTTP connection handling (src/server/plain.rs): the
//! in-tree HTTP/1.1 loop that sends cached blobs with sendfile, keep-alive and pipelining,
//! malformed request heads, HTTP/1.0, and what it hands to hyper (chunked request bodies,
//! HTTP/2 with prior knowledge). The upstream is a real docker-registry.

mod support;
// Named apart from the `http` crate, which the h2 test uses.
#[path = "support/http.rs"]
mod raw_http;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

use raw_http::Resp;
use support::berth::Berth;
use support::fake::{FakeBody, FakeResponse, FakeServer};
use support::image::{push_image, ImageSpec, TestImage};
use support::registry::{Registry, RegistryAuth};

const VENDOR: &str = "vendor";
const VENDOR_PW: &str = "vendor-s3cret";
const LICENSE: &str = "LICENSE-conn-0001";
const MIB: u64 = 1 << 20;

struct Setup {
    _reg: Registry,
    _cache: tempfile::TempDir,
    berth: Berth,
    img: TestImage,
}

/// A real registry holding `acme/app:v1` with layers of these sizes.
fn registry_with(layer_sizes: &[u64], seed: u64) -> (Registry, TestImage) {
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
            layer_sizes: layer_sizes.to_vec(),
            seed,
        },
    );
    (reg, img)
}

/// An image whose big layer is larger than one sendfile call, pulled once so every blob is
/// cached.
fn setup() -> Setup {
    setup_with("")
}

/// `setup` with more keys for berth's `server:` map (as `start_berth_with`).
fn setup_with(server_extra: &str) -> Setup {
    let (reg, img) = registry_with(&[24 * MIB + 12345, 1000], 7);
    let cache = support::tempdir();
    let berth = start_berth_with(&reg.url(), cache.path(), server_extra);
    let s = Setup {
        _reg: reg,
        _cache: cache,
        berth,
        img,
    };
    for (digest, _) in &s.img.layers {
        let mut c = Conn::open(s.berth.port);
        let r = c.send_and_read(&get(&blob_path(digest), &[]), false);
        assert_eq!(r.status, 200, "warming {digest}: {}", r.text());
    }
    // A fill is published (fsync, rename) just after its last byte went out.
    let blobs = s._cache.path().join("sha256");
    let cached = support::wait_until(Duration::from_secs(10), || {
        std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0) == s.img.layers.len()
    });
    assert!(cached, "the layers were not cached");
    s
}

fn start_berth(upstream_url: &str, cache: &Path) -> Berth {
    start_berth_with(upstream_url, cache, "")
}

/// `server_extra`: more keys for the `server:` map, e.g. `, header_timeout: 1s`.
fn start_berth_with(upstream_url: &str, cache: &Path, server_extra: &str) -> Berth {
    let port = support::free_port();
    let yaml = format!(
        r#"server: {{ listen: "127.0.0.1:{port}", hostname: "127.0.0.1:{port}"{server_extra} }}
cache: {{ dir: "{cache}" }}
upstreams:
  - {{ name: up, url: "{upstream_url}", host: upstream.test, username: {VENDOR}, password: "${{UPSTREAM_PASSWORD}}", repositories: ["acme/*"] }}
apps: [ {{ slug: acme, upstreams: [up] }} ]
licenses: [ {{ id: {LICENSE}, app: acme, customer: A }} ]
"#,
        cache = cache.display(),
    );
    Berth::start(&yaml, &[("UPSTREAM_PASSWORD", VENDOR_PW)])
}

fn blob_path(digest: &str) -> String {
    format!("/v2/proxy/acme/upstream.test/acme/app/blobs/{digest}")
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{LICENSE}:{LICENSE}"))
    )
}

/// A GET with the license as Basic auth, keep-alive.
fn get(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    request("GET", path, extra)
}

fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: berth.test\r\nAuthorization: {}\r\n",
        basic()
    );
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One keep-alive connection read response by response, framing each body by its
/// Content-Length or chunked encoding (as a client must, to find the next response).
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).unwrap();
    }

    fn send_and_read(&mut self, bytes: &[u8], head_only: bool) -> Resp {
        self.send(bytes);
        self.read(head_only)
    }

    fn read(&mut self, head_only: bool) -> Resp {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only {
            return resp;
        }
        if let Some(len) = resp.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            self.r.read_exact(&mut body).unwrap();
            resp.body = body;
        } else if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let mut size = String::new();
                self.r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                resp.body.extend_from_slice(&chunk[..n]);
            }
        } else {
            self.r.read_to_end(&mut resp.body).unwrap();
        }
        resp
    }

    /// True once the server has closed its side (EOF within the read timeout).
    fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        self.r.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }
}

fn layer_bytes(img: &TestImage, i: usize) -> Vec<u8> {
    std::fs::read(img.blob_path(&img.layers[i].0)).unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let s = setup();
    let (big, small) = (&s.img.layers[0].0, &s.img.layers[1].0);
    let big_bytes = layer_bytes(&s.img, 0);
    let manifest = format!(
        "/v2/proxy/acme/upstream.test/acme/app/manifests/{}",
        s.img.manifest_digest
    );
    // Five requests in one write: the loop must parse each from the leftover bytes of the
    // previous one and keep the responses in order.
    let mut all = Vec::new();
    all.extend(get(&blob_path(big), &[]));
    all.extend(get(&blob_path(big), &[("Range", "bytes=1048570-2097160")]));
    all.extend(request("HEAD", &blob_path(big), &[]));
    all.extend(get(&manifest, &[]));
    all.extend(get(&blob_path(small), &[]));
    let mut c = Conn::open(s.berth.port);
    c.send(&all);

    let whole = c.read(false);
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(whole.body.len(), big_bytes.len());
    assert_eq!(format!("sha256:{}", sha256_hex(&whole.body)), *big);
    assert_eq!(whole.header("docker-content-digest"), Some(big.as_str()));

    let part = c.read(false);
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1048570-2097160/{}", big_bytes.len()).as_str())
    );
    assert_eq!(part.body, big_bytes[1048570..=2097160]);

    let head = c.read(true);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(big_bytes.len().to_string().as_str())
    );

    let m = c.read(false);
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(
        format!("sha256:{}", sha256_hex(&m.body)),
        s.img.manifest_digest
    );

    let tiny = c.read(false);
    assert_eq!(tiny.status, 200);
    assert_eq!(tiny.body, layer_bytes(&s.img, 1));

    // Still open and in step: one more request on the same connection.
    let again = c.send_and_read(&get("/v2/", &[]), false);
    assert_eq!(again.status, 200);
}

#[test]
fn malformed_heads_get_a_4xx_oci_error_and_the_server_carries_on() {
    let s = setup();
    let port = s.berth.port;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400),
        (
            "bad header name",
            b"GET /v2/ HTTP/1.1\r\nBad Header: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "conflicting lengths",
            b"POST /token HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            400,
        ),
        (
            "length not a number",
            b"POST /token HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
            400,
        ),
        (
            "signed length",
            b"POST /token HTTP/1.1\r\nContent-Length: +5\r\n\r\nabcde".to_vec(),
            400,
        ),
        (
            "length and chunked",
            b"POST /token HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            // Refused from its declared length, without waiting for any of it.
            "huge token form",
            b"POST /token HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n".to_vec(),
            400,
        ),
        (
            "too many headers",
            {
                let mut r = b"GET /v2/ HTTP/1.1\r\n".to_vec();
                for i in 0..200 {
                    r.extend(format!("X-H{i}: v\r\n").as_bytes());
                }
                r.extend(b"\r\n");
                r
            },
            431,
        ),
        (
            "head too large",
            {
                let mut r = b"GET /v2/ HTTP/1.1\r\nX-Big: ".to_vec();
                r.extend(std::iter::repeat_n(b'a', 70 * 1024));
                r.extend(b"\r\n\r\n");
                r
            },
            431,
        ),
    ];
    for (what, raw, want) in cases {
        let mut c = Conn::open(port);
        let _ = c.r.get_mut().write_all(&raw);
        let r = c.read(false);
        assert_eq!(r.status, want, "{what}: {}", r.text());
        assert_eq!(r.code(), "BAD_REQUEST", "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
    }
    // A malformed blob reference inside a well-formed request is the API's 4xx, too.
    let mut c = Conn::open(port);
    let r = c.send_and_read(&get(&blob_path("sha256:nothex"), &[]), false);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "DIGEST_INVALID");
    let r = c.send_and_read(&get("/v2/", &[]), false);
    assert_eq!(r.status, 200, "the server still answers after all that");
    assert!(
        !s.berth.logs().contains("panicked"),
        "berth panicked:\n{}",
        s.berth.logs()
    );
}

#[test]
fn http10_and_connection_close_end_the_connection_after_the_answer() {
    let s = setup();
    let mut c = Conn::open(s.berth.port);
    let r = c.send_and_read(
        format!("GET /v2/ HTTP/1.0\r\nAuthorization: {}\r\n\r\n", basic()).as_bytes(),
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed_by_server(),
        "HTTP/1.0 without keep-alive must close"
    );

    let mut c = Conn::open(s.berth.port);
    let big = &s.img.layers[0].0;
    let r = c.send_and_read(&get(&blob_path(big), &[("Connection", "close")]), false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, layer_bytes(&s.img, 0));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());

    // HTTP/1.0 asking for keep-alive stays open.
    let mut c = Conn::open(s.berth.port);
    let ka = format!(
        "GET /v2/ HTTP/1.0\r\nConnection: keep-alive\r\nAuthorization: {}\r\n\r\n",
        basic()
    );
    assert_eq!(c.send_and_read(ka.as_bytes(), false).status, 200);
    assert_eq!(c.send_and_read(ka.as_bytes(), false).status, 200);
}

#[test]
fn a_chunked_token_request_is_handed_to_hyper_and_the_connection_keeps_working() {
    let s = setup();
    let form = format!(
        "grant_type=password&username={LICENSE}&password={LICENSE}&service=127.0.0.1&scope=repository:proxy/acme/upstream.test/acme/app:pull"
    );
    let (a, b) = form.split_at(20);
    let body = format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len());
    let mut c = Conn::open(s.berth.port);
    let r = c.send_and_read(
        format!(
            "POST /token HTTP/1.1\r\nHost: berth.test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        )
        .as_bytes(),
        false,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let token = v["token"].as_str().expect("a token").to_string();
    // The same connection, now served by hyper, carries the pull.
    let big = &s.img.layers[0].0;
    let r = c.send_and_read(
        format!(
            "GET {} HTTP/1.1\r\nHost: berth.test\r\nAuthorization: Bearer {token}\r\n\r\n",
            blob_path(big)
        )
        .as_bytes(),
        false,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), *big);

    // A Content-Length form stays in berth's own loop and works the same.
    let mut c = Conn::open(s.berth.port);
    let r = c.send_and_read(
        format!(
            "POST /token HTTP/1.1\r\nHost: berth.test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
        .as_bytes(),
        false,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // A chunked form over the limit is the client's fault: 400 with an OCI body, not 405.
    let chunk = "a".repeat(16 * 1024);
    let mut big = String::new();
    for _ in 0..5 {
        big.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    big.push_str("0\r\n\r\n");
    let mut c = Conn::open(s.berth.port);
    let r = c.send_and_read(
        format!(
            "POST /token HTTP/1.1\r\nHost: berth.test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{big}"
        )
        .as_bytes(),
        false,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("BAD_REQUEST"), "{}", r.text());
}

#[test]
fn http2_with_prior_knowledge_is_served() {
    let s = setup();
    let port = s.berth.port;
    let big = s.img.layers[0].0.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = rt.block_on(async move {
        use http_body_util::BodyExt as _;
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://127.0.0.1:{port}{}", blob_path(&big)))
            .header("authorization", basic())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    assert_eq!(
        format!("sha256:{}", sha256_hex(&body)),
        s.img.layers[0].0,
        "the blob over h2"
    );
}

#[test]
fn a_client_that_leaves_mid_blob_is_logged_incomplete_and_others_are_unaffected() {
    let s = setup();
    let big = &s.img.layers[0].0;
    {
        let mut c = Conn::open(s.berth.port);
        c.send(&get(&blob_path(big), &[]));
        let mut first = [0u8; 4096];
        c.r.read_exact(&mut first).unwrap();
        // Dropped here with most of the 24 MiB unread: the kernel resets the connection.
    }
    let mut c = Conn::open(s.berth.port);
    let r = c.send_and_read(&get(&blob_path(big), &[]), false);
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), *big);
    let blob = blob_path(big);
    let logged = support::wait_until(Duration::from_secs(10), || {
        s.berth
            .logs()
            .lines()
            .any(|l| l.contains(&blob) && l.contains("complete=false"))
    });
    assert!(
        logged,
        "no incomplete access-log line for the abandoned GET:\n{}",
        s.berth.logs()
    );
    assert!(
        cache_dir_is_clean(s._cache.path()),
        "a client leaving must not touch the cache"
    );
}

fn cache_dir_is_clean(cache: &Path) -> bool {
    std::fs::read_dir(cache.join("tmp"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[test]
fn a_body_of_unknown_length_is_chunked_for_http11_and_ends_the_connection_for_http10() {
    let (reg, img) = registry_with(&[2 * MIB + 1, 300 * 1024], 11);
    // An upstream that sends blobs without a length (chunked), the rest as the registry
    // does: berth's answer to a cold GET then has no length either.
    let origin = reg.url();
    let files: Vec<(String, std::path::PathBuf)> = img
        .layers
        .iter()
        .map(|(d, _)| (d.clone(), img.blob_path(d)))
        .collect();
    let fake = FakeServer::start(move |req| {
        match files
            .iter()
            .find(|(d, _)| req.method == "GET" && req.path().ends_with(&format!("/blobs/{d}")))
        {
            Some((_, path)) => FakeResponse {
                status: 200,
                headers: vec![("transfer-encoding".into(), "chunked".into())],
                body: FakeBody::File {
                    path: path.clone(),
                    drop_after: None,
                    corrupt_at: None,
                    stall_after: None,
                },
            },
            None => FakeResponse::proxy_to(&origin, req),
        }
    });
    let cache = support::tempdir();
    let b = start_berth(&fake.url(), cache.path());

    let (first, second) = (&img.layers[0].0, &img.layers[1].0);
    let mut c = Conn::open(b.port);
    let r = c.send_and_read(&get(&blob_path(first), &[]), false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), *first);
    // The chunked body ended cleanly: the connection is in step for the next request.
    assert_eq!(c.send_and_read(&get("/v2/", &[]), false).status, 200);

    let mut c = Conn::open(b.port);
    let r = c.send_and_read(
        format!(
            "GET {} HTTP/1.0\r\nConnection: keep-alive\r\nAuthorization: {}\r\n\r\n",
            blob_path(second),
            basic()
        )
        .as_bytes(),
        false,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("transfer-encoding"),
        None,
        "HTTP/1.0 has no chunks"
    );
    assert_eq!(r.header("connection"), Some("close"));
    // Read to the end of the connection: the body is exactly the blob.
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), *second);
    assert_eq!(fake.count("GET", "/blobs/"), 2);
}

#[test]
fn slow_heads_and_idle_connections_are_cut_after_their_timeouts() {
    let (reg, _img) = registry_with(&[1000], 3);
    let cache = support::tempdir();
    let b = start_berth_with(
        &reg.url(),
        cache.path(),
        ", header_timeout: 1s, idle_timeout: 2s",
    );
    // A head begun and never finished: 408 with an OCI body, then the connection closes.
    let mut c = Conn::open(b.port);
    c.send(b"GET /v2/ HTTP/1.1\r\nHost: berth.test\r\n");
    let started = std::time::Instant::now();
    let r = c.read(false);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.code(), "BAD_REQUEST");
    assert!(c.closed_by_server());
    assert!(started.elapsed() < Duration::from_secs(10));

    // An idle keep-alive connection is closed after idle_timeout, not before.
    let mut c = Conn::open(b.port);
    assert_eq!(c.send_and_read(&get("/v2/", &[]), false).status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.send_and_read(&get("/v2/", &[]), false).status,
        200,
        "closed before idle_timeout"
    );
    let idle_from = std::time::Instant::now();
    assert!(c.closed_by_server());
    let idled = idle_from.elapsed();
    assert!(
        idled >= Duration::from_millis(1500) && idled < Duration::from_secs(10),
        "closed after {idled:?} idle"
    );
}

#[test]
fn over_tls_a_slow_head_is_cut_after_header_timeout() {
    let (reg, _img) = registry_with(&[1000], 4);
    let dir = support::tempdir();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    let b = start_berth_with(
        &reg.url(),
        dir.path(),
        &format!(
            ", header_timeout: 1s, tls: [ {{ cert: \"{}\", key: \"{}\" }} ]",
            crt.display(),
            key.display()
        ),
    );
    // openssl as the TLS client: handshake, half a request head, then nothing.
    let mut client = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{}", b.port))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = client.stdin.take().unwrap();
    stdin
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    stdin.flush().unwrap();
    // stdin stays open: only the server closing the connection ends s_client.
    let ended = support::wait_until(Duration::from_secs(15), || {
        client.try_wait().ok().flatten().is_some()
    });
    let _ = client.kill();
    drop(stdin);
    assert!(
        ended,
        "berth kept a stalled TLS request head open past header_timeout"
    );
}

#[test]
fn transfer_codings_other_than_chunked_get_an_oci_error() {
    let (reg, _img) = registry_with(&[1000], 5);
    let cache = support::tempdir();
    let b = start_berth(&reg.url(), cache.path());
    for coding in ["xchunked", "gzip, chunked", "chunked, chunked"] {
        let mut c = Conn::open(b.port);
        c.send(
            format!(
                "POST /token HTTP/1.1\r\nHost: berth.test\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n"
            )
            .as_bytes(),
        );
        let r = c.read(false);
        assert_eq!(r.status, 501, "Transfer-Encoding: {coding}: {}", r.text());
        assert_eq!(r.code(), "UNSUPPORTED", "Transfer-Encoding: {coding}");
        assert!(c.closed_by_server(), "Transfer-Encoding: {coding}");
    }
}

#[test]
fn a_client_that_stops_reading_a_blob_is_cut_after_send_timeout() {
    let s = setup_with(", send_timeout: 1s");
    let (big, size) = s.img.layers[0].clone();
    let blob = blob_path(&big);
    // berth's own loop (sendfile), and a connection hyper serves (handed over for its
    // chunked request body): each asks for the 24 MiB blob and then reads nothing.
    let mut plain = TcpStream::connect(("127.0.0.1", s.berth.port)).unwrap();
    plain.write_all(&get(&blob, &[])).unwrap();
    let mut handed = TcpStream::connect(("127.0.0.1", s.berth.port)).unwrap();
    handed
        .write_all(
            format!(
                "GET {blob} HTTP/1.1\r\nHost: berth.test\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                basic()
            )
            .as_bytes(),
        )
        .unwrap();
    // Well past send_timeout, the client starts reading: it finds what the socket buffers
    // held when berth gave up, then the end of the connection, not the rest of the blob.
    std::thread::sleep(Duration::from_secs(4));
    for (what, mut conn) in [("sendfile loop", plain), ("hyper", handed)] {
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = Vec::new();
        let ended = conn.read_to_end(&mut got);
        assert!(
            (got.len() as u64) < size,
            "{what}: a client that stopped reading for 4 s still got all {size} bytes (send_timeout 1s)"
        );
        assert!(ended.is_ok(), "{what}: {ended:?}");
    }
    // berth has let go, and serves the blob to others.
    let mut c = Conn::open(s.berth.port);
    let r = c.send_and_read(&get(&blob, &[]), false);
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), big);
}

#[test]
fn an_h2c_client_that_grants_no_window_is_cut_after_send_timeout() {
    let s = setup_with(", send_timeout: 1s");
    let port = s.berth.port;
    let big = s.img.layers[0].0.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2 handshake");
        // The client's connection keeps reading the socket (so TCP never stalls), but the
        // body is never read, so the stream's flow-control window is never given back.
        let conn = tokio::spawn(conn);
        let req = http::Request::get(format!("http://127.0.0.1:{port}{}", blob_path(&big)))
            .header("authorization", basic())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), 200);
        let ended = tokio::time::timeout(Duration::from_secs(15), conn)
            .await
            .is_ok();
        drop(resp);
        ended
    });
    assert!(
        ended,
        "berth kept an h2 stream the client stopped taking open past send_timeout:\n{}",
        s.berth.logs()
    );
    // The line is written by the log thread a moment after the connection ends.
    assert!(
        support::wait_until(Duration::from_secs(5), || s
            .berth
            .logs()
            .contains("client stopped taking a response")),
        "no send-timeout line:\n{}",
        s.berth.logs()
    );
    // And the blob still goes to a client that reads.
    let mut c = Conn::open(s.berth.port);
    let r = c.send_and_read(&get(&blob_path(&s.img.layers[0].0), &[]), false);
    assert_eq!(format!("sha256:{}", sha256_hex(&r.body)), s.img.layers[0].0);
}
