//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, on an address of
//! its own so scrapers and probes never share the customer port.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{full, Body};
use crate::api::Api;

/// Connections at once: scrapers and probes, with room to spare.
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin listener until `stop` turns true, with the customer listener's
/// connection handling (accept backoff, timeouts, HTTP/2 limits) and a small connection
/// limit of its own.
pub async fn serve(api: Arc<Api>, listener: TcpListener, stop: watch::Receiver<bool>) {
    let mut limit = super::Limit::new(MAX_CONNECTIONS, "admin");
    let mut accept_errors = super::Throttled::new();
    let mut stopping = stop.clone();
    loop {
        let (stream, remote) = tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            a = super::accept(&listener, "admin", &mut accept_errors) => a,
        };
        let Some(permit) = limit.admit(remote) else {
            continue;
        };
        let api = api.clone();
        let timeouts = super::timeouts(&api);
        let closing = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handler = move |req: Request<Incoming>| {
                let api = api.clone();
                async move { handle(&api, req).await }
            };
            super::serve_hyper(stream, remote, timeouts, closing, handler).await
        });
    }
}

pub async fn handle<B>(api: &Api, req: Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let upstreams = req.uri().query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "upstreams" && v == "1")
    });
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::METRICS.render(api.registry.cache()),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, body) = crate::health::readiness(api, upstreams).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, "application/json", body.to_string())
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}
