//! The admin listener: serves the admin edge (`crate::admin`: metrics, probes, the control
//! plane's `/api/v1`) on an address of its own, so scrapers, probes and administrators
//! never share the customer port.

use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;

/// Connections at once: scrapers and probes, with room to spare.
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin listener until `stop` turns true, with the customer listener's
/// connection handling (accept backoff, timeouts, HTTP/2 limits) and a small connection
/// limit of its own.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, stop: watch::Receiver<bool>) {
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
        let admin = admin.clone();
        let timeouts = super::timeouts(&admin.probes.config.current());
        let closing = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handler = move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move { crate::admin::handle(&admin, req, remote).await }
            };
            super::serve_hyper(stream, remote, timeouts, closing, handler).await
        });
    }
}
