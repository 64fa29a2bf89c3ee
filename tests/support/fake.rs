//! A programmable HTTP/1.1 origin for behaviour no real server gives on demand:
//! faults mid-body, redirects, token realms, or a recording proxy in front of one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};

const CHUNK: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path plus query, as sent on the request line.
    pub uri: String,
    /// Lower-case names; repeated headers are joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// All values of query parameter `name`, percent-decoded.
    pub fn query_all(&self, name: &str) -> Vec<String> {
        let q = self.uri.split_once('?').map(|(_, q)| q).unwrap_or("");
        form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    pub fn query(&self, name: &str) -> Option<String> {
        self.query_all(name).into_iter().next()
    }
}

#[derive(Clone, Debug)]
pub enum FakeBody {
    Bytes(Vec<u8>),
    /// Streamed in 64 KiB chunks with `Content-Length` of the whole file, so the
    /// faults below look like a broken transfer, not a short resource.
    File {
        path: PathBuf,
        /// Abort the connection after this many body bytes.
        drop_after: Option<u64>,
        /// Invert the byte at this offset.
        corrupt_at: Option<u64>,
        /// After this many bytes, go silent for the duration (then continue).
        stall_after: Option<(u64, Duration)>,
    },
}

#[derive(Clone, Debug)]
pub struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: FakeBody,
}

impl FakeResponse {
    pub fn new(status: u16) -> FakeResponse {
        FakeResponse {
            status,
            headers: Vec::new(),
            body: FakeBody::Bytes(Vec::new()),
        }
    }

    pub fn bytes(status: u16, body: impl Into<Vec<u8>>) -> FakeResponse {
        FakeResponse {
            body: FakeBody::Bytes(body.into()),
            ..FakeResponse::new(status)
        }
    }

    pub fn json(status: u16, v: &serde_json::Value) -> FakeResponse {
        FakeResponse::bytes(status, serde_json::to_vec(v).unwrap())
            .header("content-type", "application/json")
    }

    pub fn file(path: impl Into<PathBuf>) -> FakeResponse {
        FakeResponse {
            body: FakeBody::File {
                path: path.into(),
                drop_after: None,
                corrupt_at: None,
                stall_after: None,
            },
            ..FakeResponse::new(200)
        }
    }

    pub fn redirect(status: u16, location: &str) -> FakeResponse {
        FakeResponse::new(status).header("location", location)
    }

    pub fn header(mut self, name: &str, value: &str) -> FakeResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Forwards `req` to `origin` (`http://host:port`, plain HTTP only) and returns
    /// its answer, buffered. Blocking; fine inside a handler, which runs on a
    /// blocking thread.
    pub fn proxy_to(origin: &str, req: &Recorded) -> FakeResponse {
        let origin = origin.trim_end_matches('/').to_string();
        let req = req.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime")
                .block_on(proxy(&origin, &req))
        })
        .join()
        .expect("proxy thread panicked")
    }
}

async fn proxy(origin: &str, req: &Recorded) -> FakeResponse {
    let authority = origin
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("proxy_to supports http:// origins only, got {origin}"));
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .unwrap_or_else(|e| panic!("proxy_to connect {authority}: {e}"));
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("proxy handshake");
    tokio::spawn(conn);
    let mut builder = Request::builder().method(req.method.as_str()).uri(&req.uri);
    for (k, v) in &req.headers {
        if !matches!(k.as_str(), "host" | "connection" | "transfer-encoding") {
            builder = builder.header(k, v);
        }
    }
    let out = builder
        .header("host", authority)
        .body(Full::new(Bytes::from(req.body.clone())))
        .expect("proxy request");
    let resp = tokio::time::timeout(Duration::from_secs(60), send.send_request(out))
        .await
        .expect("proxy_to: upstream timed out")
        .expect("proxy_to: upstream request failed");
    let status = resp.status().as_u16();
    let is_head = req.method == "HEAD";
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            // Hyper recomputes framing for the buffered body, except for HEAD
            // where the upstream Content-Length is the only truth.
            !matches!(k.as_str(), "connection" | "transfer-encoding")
                && (is_head || k.as_str() != "content-length")
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("proxy_to: upstream body")
        .to_bytes();
    FakeResponse {
        status,
        headers,
        body: FakeBody::Bytes(body.to_vec()),
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> FakeResponse + Send + Sync + 'static>;

pub struct FakeServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    pub fn start<F>(handler: F) -> FakeServer
    where
        F: Fn(&Recorded) -> FakeResponse + Send + Sync + 'static,
    {
        // Bound here, before returning, so the port is live without any wait.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake server");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel();
        let handler: Handler = Arc::new(handler);
        let recs = Arc::clone(&requests);
        let thread = std::thread::Builder::new()
            .name(format!("fake-server-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fake server runtime");
                rt.block_on(serve(listener, handler, recs, rx));
                // Stalled connections must not keep a test from finishing.
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .expect("spawn fake server thread");
        FakeServer {
            port,
            requests,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.uri.contains(path_contains))
            .count()
    }

    pub fn clear_requests(&self) {
        self.requests.lock().unwrap().clear();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    handler: Handler,
    requests: Arc<Mutex<Vec<Recorded>>>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let handler = Arc::clone(&handler);
        let requests = Arc::clone(&requests);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                handle(req, Arc::clone(&handler), Arc::clone(&requests))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

type RespBody = BoxBody<Bytes, std::io::Error>;

async fn handle(
    req: Request<Incoming>,
    handler: Handler,
    requests: Arc<Mutex<Vec<Recorded>>>,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
        headers,
        body,
    };
    requests.lock().unwrap().push(rec.clone());
    // Handlers are plain blocking closures (proxy_to does network I/O).
    let resp = tokio::task::spawn_blocking(move || handler(&rec)).await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => FakeResponse::bytes(500, format!("fake handler panicked: {e}")),
    };
    Ok(build_response(resp).await)
}

async fn build_response(resp: FakeResponse) -> Response<RespBody> {
    let mut builder = Response::builder().status(resp.status);
    // A response that names its own length or transfer-encoding gets no Content-Length
    // (so a test can have a body of unknown length, sent chunked).
    let has_len = resp.headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    for (k, v) in &resp.headers {
        builder = builder.header(k, v);
    }
    let body: RespBody = match resp.body {
        FakeBody::Bytes(b) => Full::new(Bytes::from(b)).map_err(|e| match e {}).boxed(),
        FakeBody::File {
            path,
            drop_after,
            corrupt_at,
            stall_after,
        } => {
            let len = std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("fake file body {}: {e}", path.display()))
                .len();
            if !has_len {
                builder = builder.header("content-length", len.to_string());
            }
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(stream_file(path, tx, drop_after, corrupt_at, stall_after));
            ChanBody { rx }.boxed()
        }
    };
    builder.body(body).expect("fake response")
}

async fn stream_file(
    path: PathBuf,
    tx: mpsc::Sender<std::io::Result<Frame<Bytes>>>,
    drop_after: Option<u64>,
    corrupt_at: Option<u64>,
    stall_after: Option<(u64, Duration)>,
) {
    let Ok(mut f) = tokio::fs::File::open(&path).await else {
        let _ = tx.send(Err(std::io::Error::other("open failed"))).await;
        return;
    };
    let _ = f.seek(SeekFrom::Start(0)).await;
    let mut pos: u64 = 0;
    let mut stalled = false;
    loop {
        // Chunk boundaries are cut at fault offsets so each fault is exact.
        let mut want = CHUNK as u64;
        for limit in [drop_after, stall_after.filter(|_| !stalled).map(|s| s.0)]
            .into_iter()
            .flatten()
        {
            if limit > pos {
                want = want.min(limit - pos);
            }
        }
        if let Some((at, dur)) = stall_after {
            if !stalled && pos >= at {
                stalled = true;
                tokio::time::sleep(dur).await;
            }
        }
        if drop_after.is_some_and(|d| pos >= d) {
            // Let hyper flush what it has, then fail the body: hyper aborts the
            // connection, so the client sees a short body, not a clean end.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(Err(std::io::Error::other("drop_after"))).await;
            return;
        }
        let mut buf = vec![0u8; want as usize];
        let n = match f.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        buf.truncate(n);
        if let Some(c) = corrupt_at {
            if c >= pos && c < pos + n as u64 {
                buf[(c - pos) as usize] ^= 0xff;
            }
        }
        pos += n as u64;
        if tx.send(Ok(Frame::data(Bytes::from(buf)))).await.is_err() {
            return;
        }
    }
}

struct ChanBody {
    rx: mpsc::Receiver<std::io::Result<Frame<Bytes>>>,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx)
    }
}

/// What [`StallServer`] does with one request.
#[derive(Clone, Debug, Default)]
pub struct StallPlan {
    /// The response head without the blank line (`HTTP/1.1 200 OK\r\nContent-Length: 9`);
    /// `None`: never answer.
    pub head: Option<String>,
    /// Body bytes sent right after the head.
    pub first: Vec<u8>,
    /// Sent once [`StallServer::release`] is called after this request came (or after
    /// 10 s); without it the connection stays silent until the peer closes it.
    pub rest: Option<Vec<u8>>,
}

/// One connection [`StallServer`] saw.
#[derive(Clone, Debug)]
pub struct StallConn {
    /// The request line (`GET /v2/... HTTP/1.1`).
    pub request: String,
    /// Body bytes written so far.
    pub sent: u64,
    /// When the peer closed the connection (read returned 0 or failed).
    pub closed: Option<std::time::Instant>,
}

/// A raw-socket origin that sends a response head and part of a body and then goes silent,
/// recording when the other side gives up on the connection: what no real server does on
/// demand. One request per connection; every head should say `Connection: close`.
pub struct StallServer {
    pub port: u16,
    conns: Arc<Mutex<Vec<StallConn>>>,
    /// Bumped by every `release`.
    release: Arc<(Mutex<u64>, std::sync::Condvar)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl StallServer {
    /// `plan` gets the request head (request line and headers) as text.
    pub fn start<F>(plan: F) -> StallServer
    where
        F: Fn(&str) -> StallPlan + Send + Sync + 'static,
    {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind stall server");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<StallConn>>> = Arc::default();
        let release: Arc<(Mutex<u64>, std::sync::Condvar)> = Arc::default();
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let plan = Arc::new(plan);
        let (c, r, s) = (conns.clone(), release.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let mut stream = match listener.accept() {
                    Ok((st, _)) => st,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let (conns, release, plan) = (c.clone(), r.clone(), plan.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&b[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let line = text.lines().next().unwrap_or("").to_string();
                    let generation = *release.0.lock().unwrap();
                    let p = plan(&text);
                    let i = {
                        let mut g = conns.lock().unwrap();
                        g.push(StallConn {
                            request: line,
                            sent: 0,
                            closed: None,
                        });
                        g.len() - 1
                    };
                    let sent = |n: usize| conns.lock().unwrap()[i].sent += n as u64;
                    if let Some(head) = &p.head {
                        let _ = stream.write_all(format!("{head}\r\n\r\n").as_bytes());
                        if stream.write_all(&p.first).is_ok() {
                            sent(p.first.len());
                        }
                        if let Some(rest) = &p.rest {
                            let (lock, cv) = &*release;
                            let g = lock.lock().unwrap();
                            let _ = cv
                                .wait_timeout_while(g, Duration::from_secs(10), |r| {
                                    *r == generation
                                })
                                .unwrap();
                            if stream.write_all(rest).is_ok() {
                                sent(rest.len());
                            }
                        }
                    }
                    // Silent from here on; a read ends when the peer closes.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
                    loop {
                        match stream.read(&mut b) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    conns.lock().unwrap()[i].closed = Some(std::time::Instant::now());
                });
            }
        });
        StallServer {
            port,
            conns,
            release,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn conns(&self) -> Vec<StallConn> {
        self.conns.lock().unwrap().clone()
    }

    /// Lets every connection that came before this call and has a `rest` send it.
    pub fn release(&self) {
        let (lock, cv) = &*self.release;
        *lock.lock().unwrap() += 1;
        cv.notify_all();
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.release();
    }
}
