//! Liveness and readiness: `/healthz` says the process answers; `/readyz` says it can do
//! its job (config loaded, cache directory writable with space left on its filesystem,
//! listeners up) and, when asked with `?upstreams=1` on the admin listener, whether each
//! upstream answers and accepts berth's credentials.

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::Api;

/// Below this much free space (or 1% of the filesystem, if less) the cache disk counts as
/// full: a fill could not finish, so berth is not ready. A small probe write can still
/// succeed then, so free space is checked on its own.
const MIN_FREE: u64 = 64 * 1024 * 1024;

/// Why the cache cannot take writes, if it cannot.
fn cache_problem(dir: &Path) -> Option<String> {
    let probe = dir.join("tmp").join(".readyz");
    if let Err(e) = std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe)) {
        let _ = std::fs::remove_file(&probe);
        return Some(match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
                format!("cache disk full: {e}")
            }
            _ => format!("cache dir not writable: {e}"),
        });
    }
    let Ok(fs) = rustix::fs::statvfs(dir) else {
        // The write worked; a filesystem without statvfs is not a reason to stop serving.
        return None;
    };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    let total = fs.f_blocks.saturating_mul(fs.f_frsize);
    let reserve = MIN_FREE.min(total / 100);
    if free < reserve {
        return Some(format!(
            "cache disk full: {free} bytes free of {total} (needs {reserve})"
        ));
    }
    if fs.f_files > 0 && fs.f_favail == 0 {
        return Some("cache disk full: no free inodes".into());
    }
    None
}

/// Readiness with the reason for each check; `ready` is false when any check failed.
pub async fn readiness(api: &Api, check_upstreams: bool) -> (bool, Value) {
    let config = api.config.current();
    let mut ready = true;
    let cache = match cache_problem(&api.registry.cache().dir) {
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
