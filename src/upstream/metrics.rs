//! The upstream client's metric families (`berth_upstream_*`), registered into the registry
//! the composition root passes in. Labels are upstream names and status classes, never
//! repositories.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamStatus {
    upstream: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamOnly {
    pub upstream: String,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Cheap to clone: every family is shared. `default()` is registered nowhere (a throwaway
/// for tools and tests that export no metrics).
#[derive(Clone)]
pub struct UpstreamMetrics {
    requests: Family<UpstreamStatus, Counter>,
    latency: Family<UpstreamOnly, Histogram>,
    pub(super) token_fetches: Family<UpstreamOnly, Counter>,
    ratelimit_remaining: Family<UpstreamOnly, Gauge>,
}

impl Default for UpstreamMetrics {
    fn default() -> UpstreamMetrics {
        UpstreamMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            token_fetches: Family::default(),
            ratelimit_remaining: Family::default(),
        }
    }
}

impl UpstreamMetrics {
    pub fn register(registry: &mut Registry) -> UpstreamMetrics {
        let m = UpstreamMetrics::default();
        registry.register(
            "upstream_requests",
            "Requests to upstreams by status",
            m.requests.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Time to an upstream's response head",
            m.latency.clone(),
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
        m
    }

    pub(super) fn observe(&self, upstream: &str, status: &str, latency: Duration) {
        self.requests
            .get_or_create(&UpstreamStatus {
                upstream: upstream.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&UpstreamOnly {
                upstream: upstream.to_string(),
            })
            .observe(latency.as_secs_f64());
    }

    pub(super) fn ratelimit_remaining(&self, upstream: &str, remaining: u64) {
        self.ratelimit_remaining
            .get_or_create(&UpstreamOnly {
                upstream: upstream.to_string(),
            })
            .set(remaining.min(i64::MAX as u64) as i64);
    }
}
