//! Liveness and readiness: `/healthz` says the process answers; `/readyz` says it can do
//! its job (config loaded, cache directory writable with space left on its filesystem,
//! listeners up) and, when asked with `?upstreams=1` on the admin listener, whether each
//! upstream answers and accepts berth's credentials.

use std::time::Duration;

use serde_json::{json, Value};

use super::Probes;
use crate::storage::{BlobBackend, StorageError};

/// Why the cache cannot take writes, if it cannot (a probe write, free space and inodes:
/// the backend's check).
async fn cache_problem(blobs: &dyn BlobBackend) -> Option<String> {
    match blobs.check_writable().await {
        Ok(()) => None,
        Err(StorageError::Full(why)) => Some(format!("cache disk full: {why}")),
        Err(StorageError::Io { source, .. }) => Some(format!("cache dir not writable: {source}")),
        Err(e) => Some(format!("cache dir not writable: {e}")),
    }
}

/// Readiness with the reason for each check; `ready` is false when any check failed.
pub async fn readiness(probes: &Probes, check_upstreams: bool) -> (bool, Value) {
    let config = probes.config.current();
    let mut ready = true;
    let cache = match cache_problem(&*probes.blobs).await {
        None => json!("ok"),
        Some(why) => {
            ready = false;
            json!(why)
        }
    };
    let mut checks = json!({ "config": "ok", "cache": cache, "listeners": "ok" });
    if check_upstreams {
        let mut ups = serde_json::Map::new();
        for up in config.tenants.upstreams() {
            let scope = "";
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                probes.upstream.authenticate(up, scope),
            )
            .await;
            let v = match r {
                Ok(Ok(())) => json!("ok"),
                Ok(Err(e)) => {
                    ready = false;
                    json!(e.to_string())
                }
                Err(_) => {
                    ready = false;
                    json!("timed out after 10s")
                }
            };
            ups.insert(up.name.clone(), v);
        }
        checks["upstreams"] = Value::Object(ups);
    }
    (
        ready,
        json!({ "status": if ready { "ready" } else { "not ready" }, "checks": checks }),
    )
}
