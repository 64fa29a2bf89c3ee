//! The admin edge: `/metrics` (Prometheus text), `/healthz`, `/readyz`. It sees the service
//! through narrow handles ([`Probes`]: the live config, the blob backend, the upstream
//! client; [`Admin`]: those plus the metrics registry), never the customer API; the listener
//! that serves it lives in `server`.

pub mod health;

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};

use prometheus_client::registry::Registry;

use crate::body::{full, Body};
use crate::config::Live;
use crate::storage::BlobBackend;
use crate::upstream;

/// What the probes read: built with the service, shared by the admin listener and (without
/// one) the customer port's probe fallback.
pub struct Probes {
    pub config: Arc<Live>,
    /// The cache's blob backend, whose writability `/readyz` checks.
    pub blobs: Arc<dyn BlobBackend>,
    pub upstream: Arc<upstream::Client>,
}

/// The admin listener's handle: the probes and the registry every component registered its
/// metric families into.
pub struct Admin {
    pub probes: Arc<Probes>,
    pub metrics: Arc<Registry>,
}

/// Answers one admin-listener request; never fails.
pub async fn handle<B>(admin: &Admin, req: Request<B>) -> Response<Body> {
    if req.uri().path() == "/metrics" {
        return text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(&admin.metrics),
        );
    }
    probe(&admin.probes, req).await
}

/// The text exposition of everything registered.
fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Answers `/healthz` and `/readyz` (`?upstreams=1` checks every upstream); anything else
/// is not found.
pub async fn probe<B>(probes: &Probes, req: Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let upstreams = req.uri().query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "upstreams" && v == "1")
    });
    match path {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let (ready, body) = health::readiness(probes, upstreams).await;
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
