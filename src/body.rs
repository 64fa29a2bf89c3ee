//! The neutral response body: bytes in memory, bytes streamed from an upstream or a fill,
//! and local file ranges of cached blobs (the capability the plain-HTTP server sends with
//! sendfile). Services below the edges return it; the HTTP edges only wrap it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

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
