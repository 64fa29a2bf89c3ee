//! Plain-TCP connections: HTTP/1.1 served in-tree so that a cached blob goes from the page
//! cache to the socket with sendfile(2), never through user space (hyper owns the socket
//! and can only write buffers). Request bodies are streamed to the handler as it reads them
//! (nothing is read before the handler authenticated and asked), so a body costs memory only
//! when a handler wants it. Whatever this loop does not handle itself (HTTP/2 with prior
//! knowledge, chunked or `Expect` request bodies) is handed, with the bytes already read, to
//! hyper for the rest of the connection.

use std::future::Future;
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
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::api::body::Logged;
use crate::api::Api;
use crate::body::FileRange;

/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// Most bytes one read of a request body takes from the socket: what a body costs in this
/// loop per connection, whatever its length (the handler decides what it keeps).
const BODY_CHUNK: usize = 64 * 1024;
/// Bodies up to this size must arrive whole within `server.body_timeout` (a token form is
/// tiny: trickling it is only a way to hold a connection); larger ones must keep making
/// progress, each read within `server.body_timeout`.
const SMALL_BODY: u64 = 64 * 1024;
/// Request bodies being read at once across all plain connections; with the handlers' own
/// limits (64 KiB for a token form) this bounds the memory bodies take in total.
pub const BODY_READERS: usize = 256;

/// The connection timeouts, as they were when the connection came.
#[derive(Clone, Copy)]
pub struct Timeouts {
    /// `server.idle_timeout`: between requests.
    pub idle: Duration,
    /// `server.header_timeout`: for a whole request head, from its first byte.
    pub head: Duration,
    /// `server.body_timeout`: for the next bytes of a request body.
    pub body: Duration,
    /// `server.send_timeout`: for the client to take the next bytes of a response.
    pub send: Duration,
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

/// The socket and the bytes read from it but not yet used, and how much of the current
/// request's body is still unread.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    body_left: u64,
    /// The body could not be read (timeout, early end): the connection is out of step.
    body_failed: bool,
}

/// Serves HTTP/1.1 requests on `stream` until the client closes, the connection idles out
/// or `closing` turns true; returns the connection when hyper must take it over.
pub async fn serve(
    api: Arc<Api>,
    stream: TcpStream,
    remote: SocketAddr,
    mut closing: watch::Receiver<bool>,
    timeouts: Timeouts,
    readers: Arc<Semaphore>,
) -> Option<Prefixed> {
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(8 * 1024),
        body_left: 0,
        body_failed: false,
    };
    loop {
        let head = match next_request(&mut conn.stream, &mut conn.buf, &mut closing, timeouts).await
        {
            Next::Request(h) => h,
            Next::HandOff => {
                return Some(Prefixed {
                    prefix: conn.buf.freeze(),
                    stream: conn.stream,
                })
            }
            Next::Close => return None,
            Next::Reject(status, why) => {
                tracing::debug!(%remote, %status, why, "bad request head");
                let _ = reject(&mut conn.stream, status, why, timeouts.send).await;
                return None;
            }
        };
        let is_head = head.request.method() == Method::HEAD;
        let http10 = head.request.version() == Version::HTTP_10;
        conn.body_left = head.body_len;
        conn.body_failed = false;
        let body = RequestBody::new(&mut conn, timeouts.body, readers.clone());
        let req = head.request.map(|()| body);
        let resp = api.clone().handle(req, remote).await;
        // A body the handler did not read (all of it) is still on the wire, ahead of the
        // next request: rather than read it for nothing, end the connection.
        let in_step = conn.body_left == 0 && !conn.body_failed;
        let keep_alive = head.keep_alive && in_step && !*closing.borrow();
        match write_response(
            &mut conn.stream,
            resp,
            is_head,
            http10,
            keep_alive,
            timeouts.send,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                let _ = conn.stream.shutdown().await;
                return None;
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "response not completed");
                return None;
            }
        }
    }
}

/// Waiting for one of the `BODY_READERS` permits.
type Acquiring =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

/// The request body as the handler reads it: straight from the connection, at most
/// `BODY_CHUNK` bytes at a time, never past the request's Content-Length. Reading holds one
/// of the `BODY_READERS` permits. A client that stops sending is cut after
/// `server.body_timeout` (the whole body, for a small one).
pub struct RequestBody<'a> {
    conn: &'a mut Conn,
    timer: Pin<Box<Sleep>>,
    progress: Option<Duration>,
    readers: Arc<Semaphore>,
    acquiring: Option<Acquiring>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<'a> RequestBody<'a> {
    fn new(conn: &'a mut Conn, timeout: Duration, readers: Arc<Semaphore>) -> Self {
        // A small body gets one deadline for all of it; a large one a deadline per read.
        let progress = (conn.body_left > SMALL_BODY).then_some(timeout);
        RequestBody {
            conn,
            timer: Box::pin(tokio::time::sleep(timeout)),
            progress,
            readers,
            acquiring: None,
            permit: None,
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn.body_failed = true;
        self.permit = None;
        Poll::Ready(Some(Err(e)))
    }

    fn data(&mut self, n: usize) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn.body_left -= n as u64;
        if let Some(t) = self.progress {
            self.timer.as_mut().reset(Instant::now() + t);
        }
        if self.conn.body_left == 0 {
            self.permit = None;
        }
        Poll::Ready(Some(Ok(Frame::data(self.conn.buf.split_to(n).freeze()))))
    }
}

impl http_body::Body for RequestBody<'_> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.conn.body_left == 0 {
            return Poll::Ready(None);
        }
        if this.conn.body_failed {
            return this.fail(io::Error::other("request body already failed"));
        }
        let timed_out = |what| io::Error::new(io::ErrorKind::TimedOut, what);
        if this.permit.is_none() {
            let readers = this.readers.clone();
            let acquiring = this
                .acquiring
                .get_or_insert_with(|| Box::pin(readers.acquire_owned()));
            match acquiring.as_mut().poll(cx) {
                Poll::Ready(Ok(p)) => {
                    this.acquiring = None;
                    this.permit = Some(p);
                }
                Poll::Ready(Err(_)) => return this.fail(io::Error::other("server closing")),
                Poll::Pending => {
                    if this.timer.as_mut().poll(cx).is_ready() {
                        return this.fail(timed_out("no capacity to read the request body"));
                    }
                    return Poll::Pending;
                }
            }
        }
        let left = this.conn.body_left.min(BODY_CHUNK as u64) as usize;
        if !this.conn.buf.is_empty() {
            let n = this.conn.buf.len().min(left);
            return this.data(n);
        }
        // The buffer is empty: read into it, at most what is left of the body.
        this.conn.buf.resize(left, 0);
        let mut rb = ReadBuf::new(&mut this.conn.buf[..]);
        let polled = Pin::new(&mut this.conn.stream).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        this.conn.buf.truncate(n);
        match polled {
            Poll::Ready(Ok(())) if n == 0 => this.fail(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request body cut short",
            )),
            Poll::Ready(Ok(())) => this.data(n),
            Poll::Ready(Err(e)) => this.fail(e),
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    return this.fail(timed_out("request body too slow"));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.body_left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.conn.body_left)
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
    // The whole head must arrive within `header_timeout` of its first byte: a deadline per
    // read would let one byte every few seconds hold the connection forever.
    let mut deadline = (!buf.is_empty()).then(|| Instant::now() + timeouts.head);
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
        let limit = if idle {
            Instant::now() + timeouts.idle
        } else {
            *deadline.get_or_insert_with(|| Instant::now() + timeouts.head)
        };
        if idle && *closing.borrow() {
            return Next::Close;
        }
        let read = tokio::time::timeout_at(limit, async {
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
    if map.contains_key(TRANSFER_ENCODING) {
        // Only plain `chunked` is understood; anything else (`xchunked`, `gzip, chunked`)
        // would leave the body's end unknown, and with a Content-Length as well the two
        // framings could disagree (request smuggling).
        let mut codings = map.get_all(TRANSFER_ENCODING).iter();
        let only_chunked = codings
            .next()
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !only_chunked {
            return Err(Next::Reject(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported Transfer-Encoding",
            ));
        }
        if map.contains_key(CONTENT_LENGTH) {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
    }
    if map.contains_key(TRANSFER_ENCODING) || map.contains_key(EXPECT) {
        // Chunked uploads and 100-continue are hyper's job; the bytes stay in `buf`.
        return Ok(Some(Next::HandOff));
    }
    let mut body_len = 0u64;
    let mut lengths = map.get_all(CONTENT_LENGTH).iter();
    if let Some(v) = lengths.next() {
        body_len = content_length(v.as_bytes()).ok_or_else(|| bad("bad Content-Length"))?;
        if lengths.any(|other| other != v) {
            return Err(bad("conflicting Content-Length"));
        }
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

/// `Content-Length = 1*DIGIT` (RFC 9110): no sign, no spaces inside, no hex; Rust's integer
/// parser alone would take `+5`.
fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
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

/// Answers a request that never reached the API with an OCI error body, then closes.
async fn reject(
    stream: &mut TcpStream,
    status: StatusCode,
    why: &str,
    send: Duration,
) -> io::Result<()> {
    let e = if status == StatusCode::NOT_IMPLEMENTED {
        crate::error::Error::Unsupported(why.into())
    } else {
        crate::error::Error::BadRequest(why.into())
    };
    let resp = crate::api::error::response(&e);
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
    write_all(stream, &out, send).await?;
    stream.shutdown().await
}

/// `write_all`, but each write must make progress within `send`: a client that stops
/// reading does not hold the connection (and the cached blob it was sent) forever.
async fn write_all(stream: &mut TcpStream, mut data: &[u8], send: Duration) -> io::Result<()> {
    while !data.is_empty() {
        let n = tokio::time::timeout(send, stream.write(data))
            .await
            .map_err(|_| stalled())??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

fn stalled() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "client stopped reading the response",
    )
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
    send: Duration,
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
        write_all(stream, &out, send).await?;
        return Ok(keep_alive);
    }
    if let Some(range) = body.take_file() {
        write_all(stream, &out, send).await?;
        let want = range.end - range.start;
        let sent = send_file(stream, &range, send).await;
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
                    write_all(stream, &out, send).await?;
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
            write_all(stream, &out, send).await?;
            return Err(io::Error::other("body longer than its Content-Length"));
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            write_all(stream, &out, send).await?;
            out.clear();
            write_all(stream, &data, send).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        write_all(stream, &out, send).await?;
    }
    Ok(keep_alive && declared.is_none_or(|d| d == sent))
}

/// Sends the range with sendfile(2); returns the bytes sent.
async fn send_file(stream: &TcpStream, range: &FileRange, send: Duration) -> io::Result<u64> {
    let mut offset = range.start;
    while offset < range.end {
        let want = ((range.end - offset) as usize).min(SENDFILE_CHUNK);
        let n = tokio::time::timeout(
            send,
            stream.async_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, &*range.file, Some(&mut offset), want)
                    .map_err(io::Error::from)
            }),
        )
        .await
        .map_err(|_| stalled())??;
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
