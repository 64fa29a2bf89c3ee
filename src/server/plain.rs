//! Plain-TCP connections: HTTP/1.1 served in-tree so that a cached blob goes from the page
//! cache to the socket with sendfile(2), never through user space (hyper owns the socket
//! and can only write buffers). Whatever this loop does not handle itself (HTTP/2 with prior
//! knowledge, chunked or `Expect` request bodies) is handed, with the bytes already read, to
//! hyper for the rest of the connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::api::body::{FileRange, Logged};
use crate::api::Api;

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Largest request body read here: an AdmissionReview (the API server's limit is 3 MiB) or
/// a token form; the handlers enforce their own, smaller limits.
const MAX_BODY: u64 = 4 * 1024 * 1024 + 64 * 1024;
/// `server.idle_timeout` and `server.header_timeout`, as they were when the connection came.
#[derive(Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
    pub head: Duration,
}
/// Bytes per sendfile call: large enough that the syscall cost vanishes, small enough that
/// one call cannot hold a worker thread for long when the page cache is cold.
const SENDFILE_CHUNK: usize = 1 << 20;
/// Response bytes gathered before a write: a whole manifest answer goes out in one syscall.
const COALESCE: usize = 64 * 1024;

/// The bytes of a connection that hyper must see first, then the socket.
pub struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One parsed request and what the connection does after it.
struct Head {
    request: Request<()>,
    body_len: u64,
    keep_alive: bool,
}

enum Next {
    Request(Box<Head>),
    /// Not for this loop: hyper takes the connection from here.
    HandOff,
    /// The client is done, idle too long, or shutdown began.
    Close,
    /// Malformed: answer with this status and close.
    Reject(StatusCode, &'static str),
}

/// Serves HTTP/1.1 requests on `stream` until the client closes, the connection idles out
/// or `closing` turns true; returns the connection when hyper must take it over.
pub async fn serve(
    api: Arc<Api>,
    mut stream: TcpStream,
    remote: SocketAddr,
    mut closing: watch::Receiver<bool>,
    timeouts: Timeouts,
) -> Option<Prefixed> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let head = match next_request(&mut stream, &mut buf, &mut closing, timeouts).await {
            Next::Request(h) => h,
            Next::HandOff => {
                return Some(Prefixed {
                    prefix: buf.freeze(),
                    stream,
                })
            }
            Next::Close => return None,
            Next::Reject(status, why) => {
                tracing::debug!(%remote, %status, why, "bad request head");
                let _ = reject(&mut stream, status, why).await;
                return None;
            }
        };
        let body = match read_body(&mut stream, &mut buf, head.body_len, timeouts.head).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "request body unreadable");
                return None;
            }
        };
        let is_head = head.request.method() == Method::HEAD;
        let http10 = head.request.version() == Version::HTTP_10;
        let req = head.request.map(|()| Full::new(body));
        let resp = api.clone().handle(req, remote).await;
        let keep_alive = head.keep_alive && !*closing.borrow();
        match write_response(&mut stream, resp, is_head, http10, keep_alive).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = stream.shutdown().await;
                return None;
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "response not completed");
                return None;
            }
        }
    }
}

/// Reads until `buf` holds a whole request head, then parses it (leaving any body or
/// pipelined bytes in `buf`).
async fn next_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    closing: &mut watch::Receiver<bool>,
    timeouts: Timeouts,
) -> Next {
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
    loop {
        if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
            return Next::HandOff;
        }
        let maybe_h2 = !buf.is_empty() && H2_PREFACE.starts_with(buf);
        if !buf.is_empty() && !maybe_h2 {
            if let Some(next) = parse(buf) {
                return next;
            }
            if buf.len() >= MAX_HEAD {
                return Next::Reject(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                );
            }
        }
        // Waiting for a new request, shutdown closes the connection; in the middle of one,
        // only the head timeout does.
        let idle = buf.is_empty();
        let limit = if idle { timeouts.idle } else { timeouts.head };
        if idle && *closing.borrow() {
            return Next::Close;
        }
        let read = tokio::time::timeout(limit, async {
            if idle {
                tokio::select! {
                    r = stream.read_buf(buf) => Some(r),
                    _ = closing.wait_for(|c| *c) => None,
                }
            } else {
                Some(stream.read_buf(buf).await)
            }
        });
        match read.await {
            Ok(Some(Ok(0))) | Ok(Some(Err(_))) | Ok(None) => return Next::Close,
            Ok(Some(Ok(_))) => {}
            Err(_) if idle => return Next::Close,
            Err(_) => return Next::Reject(StatusCode::REQUEST_TIMEOUT, "request head too slow"),
        }
    }
}

/// `None`: the head is not complete yet.
fn parse(buf: &mut BytesMut) -> Option<Next> {
    match parse_head(buf) {
        Ok(next) => next,
        Err(reject) => Some(reject),
    }
}

fn parse_head(buf: &mut BytesMut) -> Result<Option<Next>, Next> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Next::Reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many headers",
            ))
        }
        Err(_) => return Err(Next::Reject(StatusCode::BAD_REQUEST, "malformed request")),
    };
    let bad = |why| Next::Reject(StatusCode::BAD_REQUEST, why);
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("malformed method"))?;
    let uri: http::Uri = req
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| bad("malformed request target"))?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("bad header name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad("bad header value"))?;
        map.append(name, value);
    }
    if map.contains_key(TRANSFER_ENCODING) || map.contains_key(EXPECT) {
        // Chunked uploads and 100-continue are hyper's job; the bytes stay in `buf`.
        return Ok(Some(Next::HandOff));
    }
    let mut body_len = 0u64;
    let mut lengths = map.get_all(CONTENT_LENGTH).iter();
    if let Some(v) = lengths.next() {
        body_len = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad("bad Content-Length"))?;
        if lengths.any(|other| other != v) {
            return Err(bad("conflicting Content-Length"));
        }
    }
    if body_len > MAX_BODY {
        return Err(Next::Reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ));
    }
    let keep_alive = keep_alive(version, &map);
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = map;
    buf.advance(n);
    Ok(Some(Next::Request(Box::new(Head {
        request,
        body_len,
        keep_alive,
    }))))
}

fn keep_alive(version: Version, h: &HeaderMap) -> bool {
    let has = |token: &str| {
        h.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    match version {
        Version::HTTP_11 => !has("close"),
        _ => has("keep-alive"),
    }
}

async fn read_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    len: u64,
    limit: Duration,
) -> io::Result<Bytes> {
    let len = len as usize;
    while buf.len() < len {
        let n = tokio::time::timeout(limit, stream.read_buf(buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request body too slow"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.split_to(len).freeze())
}

/// Answers a request that never reached the API with an OCI error body, then closes.
async fn reject(stream: &mut TcpStream, status: StatusCode, why: &str) -> io::Result<()> {
    let resp = crate::api::error::response(&crate::error::Error::BadRequest(why.into()));
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = BytesMut::with_capacity(256 + body.len());
    status_line(&mut out, status);
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    stream.write_all(&out).await?;
    stream.shutdown().await
}

fn status_line(out: &mut BytesMut, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes one response; `Ok(true)` when the connection may carry another request (kept
/// alive, and every declared byte sent).
async fn write_response(
    stream: &mut TcpStream,
    resp: Response<Logged>,
    is_head: bool,
    http10: bool,
    keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let bodyless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared: Option<u64> = match parts.headers.get(CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|s| s.parse().ok()),
        None => body.size_hint().exact(),
    };
    // Without a length, HTTP/1.1 frames the body in chunks; HTTP/1.0 knows no chunks, so
    // there the end of the body is the end of the connection.
    let unframed = !bodyless && declared.is_none();
    let chunked = unframed && !http10;
    let keep_alive = keep_alive && !(unframed && http10);
    let mut out = BytesMut::with_capacity(1024);
    status_line(&mut out, status);
    for (name, value) in &parts.headers {
        if name == CONNECTION || name == TRANSFER_ENCODING || name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match declared {
        Some(len) if status != StatusCode::NO_CONTENT && !status.is_informational() => {
            out.extend_from_slice(format!("content-length: {len}\r\n").as_bytes())
        }
        _ if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if bodyless {
        stream.write_all(&out).await?;
        return Ok(keep_alive);
    }
    if let Some(range) = body.take_file() {
        stream.write_all(&out).await?;
        let want = range.end - range.start;
        let sent = send_file(stream, &range).await;
        let n = *sent.as_ref().unwrap_or(&0);
        body.sent(n, sent.is_ok());
        sent?;
        drop(range);
        return Ok(keep_alive && n == want);
    }
    let mut sent = 0u64;
    let mut body = std::pin::pin!(body);
    loop {
        // Coalesce only what is ready: when the body has nothing yet (an upstream still
        // sending, or stalled), what is gathered (the head first of all) goes out now.
        let next = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
        let next = match next {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        let frame = match next {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                // Cut the connection: the client sees a short body, never a clean end.
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                }
                return Err(io::Error::other(e.to_string()));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if declared.is_some_and(|d| sent > d) {
            stream.write_all(&out).await?;
            return Err(io::Error::other("body longer than its Content-Length"));
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            stream.write_all(&out).await?;
            out.clear();
            stream.write_all(&data).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        stream.write_all(&out).await?;
    }
    Ok(keep_alive && declared.is_none_or(|d| d == sent))
}

/// Sends the range with sendfile(2); returns the bytes sent.
async fn send_file(stream: &TcpStream, range: &FileRange) -> io::Result<u64> {
    let mut offset = range.start;
    while offset < range.end {
        let want = ((range.end - offset) as usize).min(SENDFILE_CHUNK);
        let n = stream
            .async_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, &*range.file, Some(&mut offset), want)
                    .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "cached blob is shorter than its index entry",
            ));
        }
        // A fast client on loopback never makes the socket wait: yield now and then so one
        // large blob cannot starve the other connections on this worker.
        tokio::task::consume_budget().await;
    }
    Ok(offset - range.start)
}
