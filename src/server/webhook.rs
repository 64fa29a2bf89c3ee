//! The admission webhook listener (`server.webhook_listen`): HTTPS for the Kubernetes API
//! server, apart from the customer port, serving only `POST /admission/rewrite` (and
//! `/healthz`). A review is read whole (at most `MAX_REVIEW`), a few at a time, and parsed
//! on the blocking pool one at a time: parsing a JSON document of megabytes takes a core
//! and many times its size in memory, which must not stall the workers serving pulls.

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
use crate::api::body::{full, Body};
use crate::api::Api;
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
        let timeouts = timeouts(&api);
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "webhook TLS handshake failed"),
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
            tracing::debug!(%remote, status = r.status().as_u16(), elapsed = ?start.elapsed(), "admission review");
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
async fn review(api: &Api, reviews: &Reviews, req: Request<Incoming>) -> Result<Response<Body>, Error> {
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
    let config = api.config.current();
    let out = tokio::task::spawn_blocking(move || {
        let review =
            crate::rewrite::review(&|ctx| crate::rewrite::admission_rules(&config, ctx), &bytes)
                .map_err(|e| Error::BadRequest(e.reason))?;
        serde_json::to_vec(&review).map_err(|e| Error::Internal(e.to_string()))
    })
    .await
    .map_err(|e| Error::Internal(format!("admission review task: {e}")))??;
    let len = out.len();
    let mut r = Response::new(full(out));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}
