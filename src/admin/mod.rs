//! The admin edge: `/metrics` (Prometheus text), `/healthz`, `/readyz`, and the control
//! plane's API `/api/v1/…` (`api/`). It sees the service through narrow handles
//! ([`Probes`]: the live config, the blob backend, the upstream client; [`Admin`]: those
//! plus the metrics registry, the control plane and the directory of stored admin tokens),
//! never the customer API; the listener that serves it lives in `server`.

pub mod api;
pub mod health;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};

use prometheus_client::registry::Registry;

use crate::auth::ratelimit::LoginThrottle;
use crate::body::{full, Body, BoxError};
use crate::config::Live;
use crate::control::Control;
use crate::state::Directory;
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

/// The admin listener's handle: the probes, the registry every component registered its
/// metric families into, and what `/api/v1` needs.
pub struct Admin {
    pub probes: Arc<Probes>,
    pub metrics: Arc<Registry>,
    /// The control plane's operations over the state store.
    pub control: Control,
    /// The stored admin tokens `/api/v1` accepts (a revocation is in force within the
    /// directory's refresh).
    pub directory: Arc<Directory>,
    /// The hosted registry, for garbage collection run by the server.
    pub hosted: Arc<crate::hosted::Hosted>,
    /// Failed admin logins per source, apart from customers' failed logins.
    logins: LoginThrottle,
}

impl Admin {
    pub fn new(
        probes: Arc<Probes>,
        metrics: Arc<Registry>,
        control: Control,
        directory: Arc<Directory>,
        hosted: Arc<crate::hosted::Hosted>,
    ) -> Admin {
        Admin {
            probes,
            metrics,
            control,
            directory,
            hosted,
            logins: LoginThrottle::default(),
        }
    }
}

/// Answers one admin-listener request from `remote`; never fails.
pub async fn handle<B>(admin: &Admin, req: Request<B>, remote: SocketAddr) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let path = req.uri().path();
    if path == "/api" || path.starts_with("/api/") {
        return api::handle(admin, req, remote).await;
    }
    if path == "/metrics" {
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
