//! The access-log wrapper around a response body: counts what was sent and writes one log
//! line, the request metrics and the usage record (bytes served, key use) when the body
//! ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::metrics::{route_class, ApiMetrics};
use crate::body::{Body, BoxError, FileRange};
use crate::control::usage::Recorder;

/// What the access log line says about a request besides the body's own numbers.
pub struct LogLine {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The authenticated caller, if any.
    pub who: Option<Who>,
    /// The image whose content this is, once the request was resolved to one.
    pub served: Option<Served>,
    /// The client (`api::client`): the peer, or who a trusted proxy forwarded for.
    pub remote: String,
    pub start: Instant,
}

/// How log lines name a caller: the license's or key's public id and its customer's (or
/// key's) name, never its secret.
#[derive(Debug, Clone)]
pub struct Who {
    pub id: String,
    pub name: String,
    pub is_key: bool,
}

impl Who {
    pub fn of(subject: &crate::auth::Subject) -> Who {
        Who {
            id: subject.id().to_string(),
            name: subject.name().to_string(),
            is_key: matches!(subject, crate::auth::Subject::Key(_)),
        }
    }
}

/// The image a response carries content of, for usage: the app and `host/repository` as
/// the upstream names it.
#[derive(Debug, Clone)]
pub struct Served {
    pub app: String,
    pub image: String,
}

impl Served {
    pub fn of(target: &crate::registry::Target) -> Served {
        Served {
            app: target.repo.app.clone(),
            image: target.repo.name.clone(),
        }
    }

    /// A hosted repository, named as customers pull it: `<hostname>/<app>/<repository>`
    /// (never mistaken for a proxied `host/repository`).
    pub fn hosted(hostname: &str, repo: &crate::oci::repo::HostedPath) -> Served {
        Served {
            app: repo.app.clone(),
            image: format!("{hostname}/{}", repo.name()),
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
        metrics: Arc<ApiMetrics>,
        usage: Arc<Recorder>,
        bytes: u64,
        failed: bool,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let l = &this.line;
            let complete = !*this.failed;
            let route = route_class(&l.path);
            this.metrics.request(route, l.status);
            this.metrics.response_bytes(route, *this.bytes);
            if let Some(w) = &l.who {
                // Content served: an error's body is not an image's bytes.
                let image = l
                    .served
                    .as_ref()
                    .filter(|_| (200..300).contains(&l.status))
                    .map(|s| (s.app.as_str(), s.image.as_str()));
                this.usage.served(&w.id, w.is_key, image, *this.bytes);
            }
            tracing::info!(
                method = %l.method,
                path = %l.path,
                status = l.status,
                bytes = *this.bytes,
                ms = l.start.elapsed().as_millis() as u64,
                license = l.who.as_ref().filter(|w| !w.is_key).map_or("-", |w| w.id.as_str()),
                key = l.who.as_ref().filter(|w| w.is_key).map_or("-", |w| w.id.as_str()),
                customer = l.who.as_ref().map_or("-", |w| w.name.as_str()),
                remote = %l.remote,
                complete,
                "request"
            );
        }
    }
}

impl Logged {
    pub fn new(
        inner: Body,
        line: LogLine,
        metrics: Arc<ApiMetrics>,
        usage: Arc<Recorder>,
    ) -> Logged {
        Logged {
            inner,
            line,
            metrics,
            usage,
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
