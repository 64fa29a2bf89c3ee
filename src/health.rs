//! Liveness and readiness: `/healthz` says the process answers; `/readyz` says it can do
//! its job (config loaded, cache directory writable, listeners up) and, when asked with
//! `?upstreams=1`, whether each upstream answers and accepts berth's credentials.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::Api;

/// Readiness with the reason for each check; `ready` is false when any check failed.
pub async fn readiness(api: &Api, check_upstreams: bool) -> (bool, Value) {
    let config = api.config.current();
    let mut ready = true;
    let probe = api.registry.cache().dir.join("tmp").join(".readyz");
    let cache = match std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe)) {
        Ok(()) => json!("ok"),
        Err(e) => {
            ready = false;
            json!(format!("cache dir not writable: {e}"))
        }
    };
    let mut checks = json!({ "config": "ok", "cache": cache, "listeners": "ok" });
    if check_upstreams {
        let mut ups = serde_json::Map::new();
        for up in &config.upstreams {
            let scope = "";
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                api.registry.upstream_client().authenticate(up, scope),
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
