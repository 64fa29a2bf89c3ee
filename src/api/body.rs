//! Response bodies: one type for bytes in memory, bytes streamed from an upstream or a
//! fill, and cached blob ranges (which the plain-HTTP server sends with sendfile), plus the
//! wrapper that writes the per-request log line when a body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

use crate::cache::blob::{self, Source};
use crate::cache::index::ReadGuard;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest a cached-blob reader waits on a client that reads nothing.
const FILE_IDLE: Duration = Duration::from_secs(60);

pub struct Body {
    inner: Inner,
}

enum Inner {
    Boxed(BoxBody<Bytes, BoxError>),
    /// A cached blob range nobody has started reading: the plain-HTTP server takes it
    /// whole (`take_file`), anything else reads it on the first poll.
    File(Option<FileRange>),
    Channel(mpsc::Receiver<std::io::Result<Bytes>>, Option<u64>),
}

/// `[start, end)` of a cached blob; the guard keeps eviction away while it is sent.
pub struct FileRange {
    pub file: Arc<std::fs::File>,
    pub start: u64,
    pub end: u64,
    pub size: u64,
    pub guard: ReadGuard,
}

impl Body {
    pub fn boxed<B>(b: B) -> Body
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        Body {
            inner: Inner::Boxed(BoxBody::new(b)),
        }
    }

    /// The cached range behind this body, when it is one and no byte of it was read yet.
    pub fn take_file(&mut self) -> Option<FileRange> {
        match &mut self.inner {
            Inner::File(f) => f.take(),
            _ => None,
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::boxed(Full::new(bytes.into()).map_err(|never| match never {}))
}

pub fn empty() -> Body {
    Body::boxed(Empty::new().map_err(|never| match never {}))
}

/// An upstream body forwarded to a client, cut when the upstream stalls (see
/// [`Stall`](crate::upstream::Stall)).
pub fn from_upstream(body: crate::upstream::Stall<hyper::body::Incoming>) -> Body {
    Body::boxed(body)
}

/// A body fed by a channel of chunks: the shape every streamed blob takes (from the
/// upstream via a fill, or from disk). An `Err` item aborts the response.
pub fn from_channel(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> Body {
    Body {
        inner: Inner::Channel(rx, None),
    }
}

/// `[start, end)` of a cached blob.
pub fn from_file(range: FileRange) -> Body {
    Body {
        inner: Inner::File(Some(range)),
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            match &mut self.inner {
                Inner::Boxed(b) => return Pin::new(b).poll_frame(cx),
                Inner::File(range) => {
                    let Some(r) = range.take() else {
                        return Poll::Ready(None);
                    };
                    let left = r.end - r.start;
                    let rx = blob::read(
                        Source::Cached {
                            file: r.file,
                            size: r.size,
                            guard: r.guard,
                        },
                        r.start,
                        Some(r.end),
                        FILE_IDLE,
                    );
                    self.inner = Inner::Channel(rx, Some(left));
                }
                Inner::Channel(rx, left) => {
                    return match rx.poll_recv(cx) {
                        Poll::Ready(Some(Ok(b))) => {
                            if let Some(l) = left {
                                *l = l.saturating_sub(b.len() as u64);
                            }
                            Poll::Ready(Some(Ok(Frame::data(b))))
                        }
                        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                        Poll::Ready(None) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Boxed(b) => b.is_end_stream(),
            Inner::File(r) => r.as_ref().is_none_or(|r| r.start == r.end),
            Inner::Channel(..) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Boxed(b) => b.size_hint(),
            Inner::File(Some(r)) => SizeHint::with_exact(r.end - r.start),
            Inner::File(None) => SizeHint::with_exact(0),
            Inner::Channel(_, Some(left)) => SizeHint::with_exact(*left),
            Inner::Channel(_, None) => SizeHint::default(),
        }
    }
}

/// What the access log line says about a request besides the body's own numbers.
pub struct LogLine {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The authenticated caller, if any.
    pub who: Option<Who>,
    pub remote: String,
    pub start: Instant,
}

/// How log lines name a license: its fingerprint and customer, never its id (the id is the
/// customer's password).
#[derive(Debug, Clone)]
pub struct Who {
    pub fingerprint: String,
    pub customer: String,
}

impl Who {
    pub fn of(license: &crate::config::License) -> Who {
        Who {
            fingerprint: license.fingerprint.clone(),
            customer: license.customer.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts the bytes actually sent and logs one line when the body is done or dropped
    /// (a client that disconnects mid-blob is logged with what it got).
    pub struct Logged {
        #[pin]
        inner: Body,
        line: LogLine,
        bytes: u64,
        failed: bool,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let l = &this.line;
            let complete = !*this.failed;
            let route = crate::metrics::route_class(&l.path);
            let m = &crate::metrics::METRICS;
            m.requests
                .get_or_create(&crate::metrics::RouteLabels { route, status: l.status })
                .inc();
            m.response_bytes
                .get_or_create(&crate::metrics::RouteOnly { route })
                .inc_by(*this.bytes);
            tracing::info!(
                method = %l.method,
                path = %l.path,
                status = l.status,
                bytes = *this.bytes,
                ms = l.start.elapsed().as_millis() as u64,
                license = l.who.as_ref().map_or("-", |w| w.fingerprint.as_str()),
                customer = l.who.as_ref().map_or("-", |w| w.customer.as_str()),
                remote = %l.remote,
                complete,
                "request"
            );
        }
    }
}

impl Logged {
    pub fn new(inner: Body, line: LogLine) -> Logged {
        Logged {
            inner,
            line,
            bytes: 0,
            failed: false,
        }
    }

    /// See [`Body::take_file`]; whoever takes the range reports what it sent with
    /// [`Logged::sent`].
    pub fn take_file(&mut self) -> Option<FileRange> {
        self.inner.take_file()
    }

    /// Bytes of this body that went out without passing through `poll_frame` (sendfile).
    pub fn sent(&mut self, bytes: u64, complete: bool) {
        self.bytes += bytes;
        self.failed |= !complete;
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                *this.failed = true;
                tracing::warn!(path = %this.line.path, error = %e, "response body aborted");
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Stall, UpstreamStalled};

    #[tokio::test]
    async fn a_stalled_upstream_body_fails_but_a_slow_reader_does_not() {
        let limit = Duration::from_millis(100);
        let (tx, rx) = mpsc::channel(4);
        let mut b = Stall::new(from_channel(rx), limit, "up", "blob");
        tx.send(Ok(Bytes::from_static(b"ab"))).await.unwrap();
        tx.send(Ok(Bytes::from_static(b"cd"))).await.unwrap();
        // Bytes that were ready all along are no stall, however late they are read.
        tokio::time::sleep(limit * 3).await;
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "ab");
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "cd");
        // Nothing more comes while the sender stays open: the body fails as a stall, once.
        let err = b.frame().await.unwrap().unwrap_err();
        let stalled = err
            .downcast_ref::<UpstreamStalled>()
            .expect("a stall error");
        assert_eq!((stalled.upstream.as_str(), stalled.after), ("up", limit));
        assert!(b.frame().await.is_none());
        assert!(tx.is_closed(), "the upstream body was not dropped");
    }
}
