//! The guard on every upstream body berth reads: a body that goes silent for longer than
//! the upstream's timeout fails instead of holding a client and a connection forever.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream sent no body frame for `after` while one was wanted.
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream} stalled: no body bytes for {after:?}")]
pub struct UpstreamStalled {
    pub upstream: String,
    pub after: Duration,
}

pin_project_lite::pin_project! {
    /// Every upstream body berth reads (forwarded to a client, collected in memory, or
    /// written to the cache) goes through this: when no frame arrives within `limit` of
    /// asking for one, the body fails with [`UpstreamStalled`] and drops the upstream body,
    /// which closes that connection (a half-read HTTP/1.1 response cannot be reused). The
    /// clock runs only while berth waits on the upstream, so a slow client that leaves
    /// bytes unread is not mistaken for a stalled upstream.
    pub struct Stall<B> {
        #[pin]
        inner: Option<B>,
        // Boxed so the guard is Unpin whenever the body is (a fill loop awaits it in place).
        timer: Pin<Box<Sleep>>,
        waiting: bool,
        limit: Duration,
        upstream: String,
        what: String,
        received: u64,
    }
}

impl<B> Stall<B> {
    /// `what` names the resource in the log line (an upstream path, never a URL with
    /// credentials).
    pub fn new(inner: B, limit: Duration, upstream: &str, what: impl Into<String>) -> Stall<B> {
        Stall {
            inner: Some(inner),
            timer: Box::pin(tokio::time::sleep(limit)),
            waiting: false,
            limit,
            upstream: upstream.to_string(),
            what: what.into(),
            received: 0,
        }
    }
}

impl<B> http_body::Body for Stall<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_frame(cx) {
            Poll::Ready(r) => {
                *this.waiting = false;
                if let Some(Ok(f)) = &r {
                    if let Some(d) = f.data_ref() {
                        *this.received += d.len() as u64;
                    }
                }
                if !matches!(r, Some(Ok(_))) {
                    // Ended or failed: the connection goes back to the pool (or is closed
                    // by hyper); nothing more is read from it.
                    this.inner.set(None);
                }
                Poll::Ready(r.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if !*this.waiting {
                    *this.waiting = true;
                    let deadline = tokio::time::Instant::now() + *this.limit;
                    this.timer.as_mut().reset(deadline);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.inner.set(None);
                tracing::warn!(upstream = %this.upstream, what = %this.what,
                    received = *this.received, after = ?*this.limit,
                    "upstream stalled mid-body: dropped its connection");
                Poll::Ready(Some(Err(Box::new(UpstreamStalled {
                    upstream: this.upstream.clone(),
                    after: *this.limit,
                }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
