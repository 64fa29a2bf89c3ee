//! Prometheus metrics: the families berth exports on the admin listener's `/metrics`.
//! Labels stay low-cardinality: route classes, status codes, upstream and app names; never
//! license ids or repository names.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cache::Cache;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamStatus {
    pub upstream: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOnly {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    pub response_bytes: Family<RouteOnly, Counter>,
    pub upstream_requests: Family<UpstreamStatus, Counter>,
    pub upstream_latency: Family<UpstreamOnly, Histogram>,
    pub token_fetches: Family<UpstreamOnly, Counter>,
    pub ratelimit_remaining: Family<UpstreamOnly, Gauge>,
    pub pulls: Family<AppLabels, Counter>,
    cache_hits: Family<KindLabels, Counter>,
    cache_misses: Family<KindLabels, Counter>,
    stale_serves: Counter,
    cache_bytes: Gauge,
    cache_blobs: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
    fills: Counter,
    fills_in_flight: Gauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let m = Metrics {
            requests: Family::default(),
            response_bytes: Family::default(),
            upstream_requests: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_buckets),
            token_fetches: Family::default(),
            ratelimit_remaining: Family::default(),
            pulls: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            stale_serves: Counter::default(),
            cache_bytes: Gauge::default(),
            cache_blobs: Gauge::default(),
            evictions: Counter::default(),
            evicted_bytes: Counter::default(),
            fills: Counter::default(),
            fills_in_flight: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "Requests by route class and status",
            m.requests.clone(),
        );
        registry.register(
            "http_response_bytes",
            "Body bytes sent by route class",
            m.response_bytes.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests to upstreams by status",
            m.upstream_requests.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time to an upstream's response head",
            m.upstream_latency.clone(),
        );
        registry.register(
            "upstream_token_fetches",
            "Tokens fetched from upstream realms",
            m.token_fetches.clone(),
        );
        registry.register(
            "upstream_ratelimit_remaining",
            "Last ratelimit-remaining an upstream reported (Docker Hub)",
            m.ratelimit_remaining.clone(),
        );
        registry.register("pulls", "Manifest pulls by app", m.pulls.clone());
        registry.register(
            "cache_hits",
            "Requests answered from the cache",
            m.cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Requests that went upstream",
            m.cache_misses.clone(),
        );
        registry.register(
            "cache_stale_serves",
            "Manifests served stale because the upstream failed",
            m.stale_serves.clone(),
        );
        registry.register(
            "cache_size_bytes",
            "Bytes of cached blobs",
            m.cache_bytes.clone(),
        );
        registry.register("cache_blobs", "Cached blobs", m.cache_blobs.clone());
        registry.register("cache_evictions", "Blobs evicted", m.evictions.clone());
        registry.register(
            "cache_evicted_bytes",
            "Bytes evicted",
            m.evicted_bytes.clone(),
        );
        registry.register(
            "cache_fills",
            "Blob fills started (upstream fetches)",
            m.fills.clone(),
        );
        registry.register(
            "cache_fills_in_flight",
            "Blob fills running now",
            m.fills_in_flight.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn observe_upstream(&self, upstream: &str, status: &str, latency: Duration) {
        self.upstream_requests
            .get_or_create(&UpstreamStatus {
                upstream: upstream.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.upstream_latency
            .get_or_create(&UpstreamOnly {
                upstream: upstream.to_string(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A request answered from the cache (`kind`: blob or manifest).
    pub fn cache_hit(&self, kind: &'static str) {
        self.cache_hits.get_or_create(&KindLabels { kind }).inc();
    }

    /// A request that had to go upstream.
    pub fn cache_miss(&self, kind: &'static str) {
        self.cache_misses.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn stale_serve(&self) {
        self.stale_serves.inc();
    }

    pub fn fill_started(&self) {
        self.fills.inc();
    }

    pub fn evicted(&self, blobs: u64, bytes: u64) {
        self.evictions.inc_by(blobs);
        self.evicted_bytes.inc_by(bytes);
    }

    /// Renders the text exposition, reading the cache's size at scrape time.
    pub fn render(&self, cache: &Cache) -> String {
        let index = cache.blobs.index();
        self.cache_bytes.set(index.total() as i64);
        self.cache_blobs.set(index.len() as i64);
        self.fills_in_flight
            .set(cache.blobs.fills_in_flight() as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The route class of a request path, for metric labels.
pub fn route_class(path: &str) -> &'static str {
    if path == "/token" {
        "token"
    } else if path == "/v2" || path == "/v2/" {
        "base"
    } else if path.starts_with("/v2/") {
        if path.contains("/manifests/") {
            "manifest"
        } else if path.contains("/blobs/") {
            "blob"
        } else if path.ends_with("/tags/list") {
            "tags"
        } else if path.contains("/referrers/") {
            "referrers"
        } else {
            "other"
        }
    } else if path.starts_with("/admission/") {
        "admission"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(route_class("/v2/proxy/a/h/r/blobs/sha256:x"), "blob");
        assert_eq!(route_class("/v2/proxy/a/h/r/manifests/1"), "manifest");
        assert_eq!(route_class("/v2/"), "base");
        assert_eq!(route_class("/token"), "token");
        assert_eq!(route_class("/x"), "other");
    }
}
