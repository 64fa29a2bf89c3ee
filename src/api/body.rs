//! Response bodies: one boxed type for bytes in memory and bytes streamed from an upstream
//! or the disk, and the wrapper that writes the per-request log line when a body ends.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn from_incoming(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}

/// A body fed by a channel of chunks: the shape every streamed blob takes (from the
/// upstream via a fill, or from disk). An `Err` item aborts the response.
pub fn from_channel(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> Body {
    ChannelBody { rx }.boxed()
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What the access log line says about a request besides the body's own numbers.
pub struct LogLine {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub license: Option<String>,
    pub remote: String,
    pub start: Instant,
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
                license = l.license.as_deref().unwrap_or("-"),
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
