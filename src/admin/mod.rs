//! The admin edge: `/metrics` (Prometheus text), `/healthz`, `/readyz`. It sees the service
//! through a narrow handle ([`Admin`]: the live config, the cache, the upstream client), never
//! the customer API; the listener that serves it lives in `server`.

pub mod health;

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};

use crate::body::{full, Body};
use crate::cache::Cache;
use crate::config::Live;
use crate::upstream;

/// What the admin endpoints read: built once by whoever builds the service, shared by the
/// admin listener and (without one) the customer port's probe fallback.
pub struct Admin {
    pub config: Arc<Live>,
    pub cache: Arc<Cache>,
    pub upstream: Arc<upstream::Client>,
}

/// Answers one admin request; never fails.
pub async fn handle<B>(admin: &Admin, req: Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let upstreams = req.uri().query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "upstreams" && v == "1")
    });
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::METRICS.render(&admin.cache),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, body) = health::readiness(admin, upstreams).await;
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
