//! Listeners: accepts TCP connections (up to `server.max_connections`, backing off when
//! accept fails), terminates TLS when configured, serves HTTP/1.1 and HTTP/2 (hyper over
//! TLS, berth's own HTTP/1.1 loop with sendfile on plain TCP) with limits on what one
//! connection may hold, and shuts down gracefully (stop accepting, let pulls in flight finish
//! up to a deadline).

pub mod admin;
pub mod plain;
pub mod tls;
pub mod webhook;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::api::Api;

/// Time a client gets to finish the TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 limits: streams one connection may have open, and the flow-control windows that
/// bound what a client can make berth buffer (per stream, and for the whole connection)
/// before a handler reads it.
const H2_MAX_STREAMS: u32 = 100;
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONN_WINDOW: u32 = 1024 * 1024;
/// Largest request head, HTTP/1.1 (hyper's read buffer) and HTTP/2 (decoded header list).
const MAX_HEAD: u32 = 64 * 1024;
/// Pings find peers that vanished without closing (a NAT dropped the flow).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// At most one log line per this interval for connections refused at the limit and for
/// failed accepts: under a flood, a line per event would be a second flood.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts events and says when to log them: the first at once, later ones at most once per
/// `LOG_INTERVAL`, with how many there were since.
struct Throttled {
    last: Option<Instant>,
    count: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: None,
            count: 0,
        }
    }

    /// `Some(n)`: log now, `n` events since the last line.
    fn hit(&mut self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|l| now < l + LOG_INTERVAL) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// Accepts the next connection, backing off exponentially (5 ms up to 1 s) while accept
/// fails: out of descriptors (EMFILE), retrying at once would spin a core and log a line
/// per attempt while the clients that hold the descriptors are the ones to wait for.
async fn accept(
    listener: &TcpListener,
    what: &'static str,
    errors: &mut Throttled,
) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(a) => return a,
            Err(e) => {
                if let Some(n) = errors.hit() {
                    tracing::warn!(listener = what, error = %e, failures = n, "accept failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The connection limit of one listener: a permit per connection, and a throttled log line
/// when a connection is refused for want of one.
pub(crate) struct Limit {
    permits: Arc<Semaphore>,
    max: usize,
    what: &'static str,
    refused: Throttled,
}

impl Limit {
    pub(crate) fn new(max: usize, what: &'static str) -> Self {
        Limit {
            permits: Arc::new(Semaphore::new(max)),
            max,
            what,
            refused: Throttled::new(),
        }
    }

    /// A permit held for the life of the connection, or `None`: the connection is closed
    /// at once (the client sees the close, rather than hanging in the backlog).
    fn admit(&mut self, remote: SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                if let Some(n) = self.refused.hit() {
                    tracing::warn!(
                        listener = self.what,
                        max_connections = self.max,
                        refused = n,
                        %remote,
                        "connection limit reached; refusing new connections"
                    );
                }
                None
            }
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then waits up to `grace` for open
/// connections to finish their requests.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Tells every connection that shutdown began; their hyper watcher (held until they
    // end) is what `graceful.shutdown()` waits for.
    let (closing, _) = watch::channel(false);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut limit = Limit::new(api.config.current().server.max_connections, "customer");
    let mut accept_errors = Throttled::new();
    let readers = Arc::new(Semaphore::new(plain::BODY_READERS));
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            a = accept(&listener, "customer", &mut accept_errors) => a,
        };
        let Some(permit) = limit.admit(remote) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let closing = closing.subscribe();
        let readers = readers.clone();
        let timeouts = timeouts(&api.config.current());
        tokio::spawn(async move {
            let _permit = permit;
            let _watcher = watcher;
            let handler = {
                let api = api.clone();
                move |req: Request<Incoming>| {
                    let api = api.clone();
                    async move { api.handle(req, remote).await }
                }
            };
            match acceptor {
                None => {
                    let rest =
                        plain::serve(api, stream, remote, closing.clone(), timeouts, readers).await;
                    if let Some(rest) = rest {
                        serve_hyper(rest, remote, timeouts, closing, handler).await
                    }
                }
                Some(acc) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acc.accept(stream)).await {
                        Ok(Ok(tls)) => serve_hyper(tls, remote, timeouts, closing, handler).await,
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    closing.send_replace(true);
    tracing::info!("shutting down: waiting for requests in flight");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown deadline passed; closing remaining connections"),
    }
}

/// The `server.*` timeouts as they are now; a connection keeps them for its life.
pub(crate) fn timeouts(c: &crate::config::Config) -> plain::Timeouts {
    plain::Timeouts {
        idle: c.server.idle_timeout,
        head: c.server.header_timeout,
        body: c.server.body_timeout,
        send: c.server.send_timeout,
    }
}

/// Serves one connection with hyper (HTTP/1.1 or HTTP/2 by what the client speaks) until
/// it ends, shutdown begins (`closing`), or it has had no request open for
/// `server.idle_timeout`; the last two close it gracefully (HTTP/2: GOAWAY).
pub(crate) async fn serve_hyper<I, H, F, B>(
    io: I,
    remote: SocketAddr,
    timeouts: plain::Timeouts,
    mut closing: watch::Receiver<bool>,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::default());
    let handler = Arc::new(handler);
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let open = Open::new(activity.clone());
            let resp = handler(req);
            async move {
                let resp = resp.await;
                Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked { body, _open: open }))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The same slow-loris limit as the plain loop: a head begun must arrive in time.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.head)
        .max_buf_size(2 * MAX_HEAD as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_header_list_size(MAX_HEAD)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    // Writes the client does not take within `send_timeout` fail the connection.
    let io = Stalled::new(io, timeouts.send);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = closing.wait_for(|c| *c), if !closing_down => {
                closing_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.idle_for(timeouts.idle), if !closing_down => {
                tracing::debug!(%remote, "idle connection closed");
                closing_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.stalled(timeouts.send) => {
                // An HTTP/2 client can stop a stream without stalling the socket (it
                // just grants no flow-control window): the response, and the cached blob
                // it holds, would wait forever. The connection goes.
                tracing::info!(%remote, send_timeout = ?timeouts.send, "client stopped taking a response; connection closed");
                return;
            }
        }
    }
}

/// Requests open on one hyper connection (from the request's arrival until its response
/// body is done or dropped).
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    changed: Notify,
    /// Responses that handed hyper a frame and have not been asked for the next one yet,
    /// by request number, since when.
    waiting: std::sync::Mutex<std::collections::HashMap<u64, Instant>>,
    next: std::sync::atomic::AtomicU64,
}

impl Activity {
    /// Resolves once some response has waited longer than `limit` for hyper to take its
    /// next frame: the client is not taking it. Checked every `limit / 2`, so it costs a
    /// connection a timer tick now and then, not a wake-up per frame.
    async fn stalled(&self, limit: Duration) {
        let mut tick = tokio::time::interval((limit / 2).max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if waiting
                .values()
                .any(|since| now.duration_since(*since) > limit)
            {
                return;
            }
        }
    }

    fn set_waiting(&self, id: u64, waiting: bool) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting {
            w.insert(id, Instant::now());
        } else {
            w.remove(&id);
        }
    }

    /// Resolves once no request has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(idle) => return,
                    _ = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

/// One open request, counted until dropped.
struct Open(Arc<Activity>, u64);

impl Open {
    fn new(a: Arc<Activity>) -> Self {
        a.open.fetch_add(1, Ordering::AcqRel);
        a.changed.notify_waiters();
        let id = a.next.fetch_add(1, Ordering::Relaxed);
        Open(a, id)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set_waiting(self.1, false);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as open until it is done.
    struct Tracked<B> {
        #[pin]
        body: B,
        _open: Open,
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let (activity, id) = (&this._open.0, this._open.1);
        activity.set_waiting(id, false);
        let polled = this.body.poll_frame(cx);
        if matches!(&polled, Poll::Ready(Some(Ok(_)))) {
            activity.set_waiting(id, true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A connection whose writes must make progress: a write (or flush) that stays pending
    /// for `limit` fails with `TimedOut`, so a client that stops reading cannot hold the
    /// connection, and the cached blob being sent to it, forever.
    pub struct Stalled<I> {
        #[pin]
        io: I,
        limit: Duration,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<I> Stalled<I> {
    pub fn new(io: I, limit: Duration) -> Self {
        Stalled {
            io,
            limit,
            timer: None,
        }
    }
}

/// What a pending write returns: still pending, or an error once it waited `limit`.
fn pending_write<T>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    cx: &mut Context<'_>,
    polled: Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    if polled.is_ready() {
        *timer = None;
        return polled;
    }
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
    match t.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client stopped reading the response",
        ))),
        Poll::Pending => Poll::Pending,
    }
}

impl<I: AsyncRead> AsyncRead for Stalled<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Stalled<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        pending_write(this.timer, *this.limit, cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        pending_write(this.timer, *this.limit, cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.io.poll_flush(cx);
        pending_write(this.timer, *this.limit, cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.io.poll_shutdown(cx);
        pending_write(this.timer, *this.limit, cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_logs_the_first_event_then_once_per_interval_with_the_count() {
        let start = Instant::now();
        let mut t = Throttled::new();
        assert_eq!(t.hit_at(start), Some(1));
        assert_eq!(t.hit_at(start + Duration::from_secs(1)), None);
        assert_eq!(t.hit_at(start + Duration::from_secs(2)), None);
        assert_eq!(t.hit_at(start + LOG_INTERVAL), Some(3));
    }
}
