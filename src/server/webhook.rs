//! The admission webhook listener (`server.webhook_listen`): HTTPS for the Kubernetes API
//! server, apart from the customer port, serving only `POST /admission/rewrite` (and
//! `/healthz`). A review is read whole (at most `MAX_REVIEW`), a few at a time, and parsed
//! on a thread of its own, one at a time: parsing a JSON document of megabytes takes a core
//! and many times its size in memory, which must not stall the workers serving pulls. One
//! long-lived thread (not the blocking pool) because the allocator keeps memory per thread:
//! parses spread over many pool threads would each leave a parse's worth behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::{accept, serve_hyper, timeouts, Limit, Throttled, HANDSHAKE_TIMEOUT};
use crate::api::Api;
use crate::body::{full, Body};
use crate::error::Error;

/// Largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_REVIEW: usize = 4 * 1024 * 1024;
/// Connections at once: the API servers of one cluster, with room to spare.
const MAX_CONNECTIONS: usize = 64;
/// Reviews being received at once (each up to `MAX_REVIEW` in memory), and parsed at once.
const RECEIVING: usize = 4;
const PARSING: usize = 1;
/// The API server gives up on a webhook after at most 30 s (`timeoutSeconds`); a review
/// that waits or arrives slower than this is not wanted any more.
const REVIEW_DEADLINE: Duration = Duration::from_secs(30);

struct Reviews {
    receiving: Semaphore,
    parsing: Semaphore,
    parser: std::sync::mpsc::Sender<Job>,
}

/// A review to parse, with the config it is judged by and where the answer goes.
struct Job {
    body: bytes::Bytes,
    config: Arc<crate::config::Config>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, Error>>,
}

/// The parser thread: reviews in, response bodies out, until the listener goes.
fn start_parser() -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("berth-webhook".into())
        .spawn(move || {
            for job in rx {
                let config = job.config;
                let body = job.body;
                let out = std::panic::catch_unwind(move || {
                    let review = crate::rewrite::review(
                        &|ctx| crate::rewrite::admission_rules(&config, ctx),
                        &body,
                    )
                    .map_err(|e| Error::BadRequest(e.reason))?;
                    serde_json::to_vec(&review).map_err(|e| Error::Internal(e.to_string()))
                })
                .unwrap_or_else(|_| Err(Error::Internal("admission review panicked".into())));
                let _ = job.reply.send(out);
            }
        });
    if let Err(e) = spawned {
        // Without the thread every review is answered with an internal error (and the
        // API server, with failurePolicy Ignore, admits the object unrewritten).
        tracing::error!(error = %e, "cannot start the admission review thread");
    }
    tx
}

/// Serves the webhook listener until `stop` turns true; connections in flight are closed
/// gracefully.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut limit = Limit::new(MAX_CONNECTIONS, "webhook");
    let mut accept_errors = Throttled::new();
    let reviews = Arc::new(Reviews {
        receiving: Semaphore::new(RECEIVING),
        parsing: Semaphore::new(PARSING),
        parser: start_parser(),
    });
    let mut stopping = stop.clone();
    loop {
        let (stream, remote) = tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            a = accept(&listener, "webhook", &mut accept_errors) => a,
        };
        let Some(permit) = limit.admit(remote) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (api, acceptor, reviews, closing) =
            (api.clone(), acceptor.clone(), reviews.clone(), stop.clone());
        let timeouts = timeouts(&api.config.current());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return tracing::debug!(%remote, error = %e, "webhook TLS handshake failed")
                }
                Err(_) => return tracing::debug!(%remote, "webhook TLS handshake timed out"),
            };
            let handler = move |req: Request<Incoming>| {
                let (api, reviews) = (api.clone(), reviews.clone());
                async move { handle(&api, &reviews, req, remote).await }
            };
            serve_hyper(tls, remote, timeouts, closing, handler).await
        });
    }
}

async fn handle(
    api: &Api,
    reviews: &Reviews,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (_, "/healthz") => {
            let mut r = Response::new(full("ok\n"));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        (&Method::POST, "/admission/rewrite") => {
            let start = std::time::Instant::now();
            let r = tokio::time::timeout(REVIEW_DEADLINE, review(api, reviews, req))
                .await
                .unwrap_or_else(|_| Err(Error::BadRequest("AdmissionReview too slow".into())));
            let r = r.unwrap_or_else(|e| {
                tracing::info!(%remote, error = %e, "admission review refused");
                crate::api::error::response(&e)
            });
            let status = r.status().as_u16();
            tracing::debug!(%remote, status, elapsed = ?start.elapsed(), "admission review");
            // Counted as before, when reviews came through the customer port's access log.
            api.metrics.request("admission", status);
            r
        }
        (_, "/admission/rewrite") => {
            crate::api::error::response(&Error::Unsupported("POST an AdmissionReview".into()))
        }
        _ => {
            let mut r = Response::new(full("not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// The mutating admission webhook: rewrites images of matching workloads to pull through
/// berth and adds the pull secret, per the config's `rewrite:` rules.
async fn review(
    api: &Api,
    reviews: &Reviews,
    req: Request<Incoming>,
) -> Result<Response<Body>, Error> {
    let too_large = || Error::BadRequest(format!("AdmissionReview larger than {MAX_REVIEW} bytes"));
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REVIEW as u64) {
        return Err(too_large());
    }
    let receiving = reviews
        .receiving
        .acquire()
        .await
        .map_err(|_| Error::Internal("webhook closed".into()))?;
    let bytes = Limited::new(req.into_body(), MAX_REVIEW)
        .collect()
        .await
        .map_err(|_| Error::BadRequest("AdmissionReview too large or unreadable".into()))?
        .to_bytes();
    let _parsing = reviews
        .parsing
        .acquire()
        .await
        .map_err(|_| Error::Internal("webhook closed".into()))?;
    drop(receiving);
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job {
        body: bytes,
        config: api.config.current(),
        reply,
    };
    let gone = || Error::Internal("the admission review thread is gone".into());
    reviews.parser.send(job).map_err(|_| gone())?;
    let out = answer.await.map_err(|_| gone())??;
    let len = out.len();
    let mut r = Response::new(full(out));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}
