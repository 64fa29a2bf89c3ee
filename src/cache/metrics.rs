//! The cache's metric families (`berth_cache_*`), registered into the registry the
//! composition root passes in. The size, blob-count and fills-in-flight gauges are set
//! where those numbers change (index insert/forget/evict, fill start/end), so nobody reads
//! the cache's internals at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Cheap to clone: every family and gauge is shared. `default()` is registered nowhere
/// (a throwaway for tests and tools that export no metrics).
#[derive(Clone, Default)]
pub struct CacheMetrics {
    hits: Family<KindLabels, Counter>,
    misses: Family<KindLabels, Counter>,
    stale_serves: Counter,
    bytes: Gauge,
    blobs: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
    fills: Counter,
    fills_in_flight: Gauge,
}

impl CacheMetrics {
    pub fn register(registry: &mut Registry) -> CacheMetrics {
        let m = CacheMetrics::default();
        registry.register(
            "cache_hits",
            "Requests answered from the cache",
            m.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Requests that went upstream",
            m.misses.clone(),
        );
        registry.register(
            "cache_stale_serves",
            "Manifests served stale because the upstream failed",
            m.stale_serves.clone(),
        );
        registry.register("cache_size_bytes", "Bytes of cached blobs", m.bytes.clone());
        registry.register("cache_blobs", "Cached blobs", m.blobs.clone());
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
        m
    }

    /// A request answered from the cache (`kind`: blob or manifest).
    pub fn hit(&self, kind: &'static str) {
        self.hits.get_or_create(&KindLabels { kind }).inc();
    }

    /// A request that had to go upstream.
    pub fn miss(&self, kind: &'static str) {
        self.misses.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn stale_serve(&self) {
        self.stale_serves.inc();
    }

    pub fn fill_started(&self) {
        self.fills.inc();
    }

    pub(crate) fn evicted(&self, blobs: u64, bytes: u64) {
        self.evictions.inc_by(blobs);
        self.evicted_bytes.inc_by(bytes);
    }

    /// The index's totals, set by the index whenever they change.
    pub(crate) fn set_size(&self, bytes: u64, blobs: usize) {
        self.bytes.set(bytes.min(i64::MAX as u64) as i64);
        self.blobs.set(blobs as i64);
    }

    pub(crate) fn set_fills_in_flight(&self, n: usize) {
        self.fills_in_flight.set(n as i64);
    }
}

/// The value of an unlabelled metric in `registry`'s text exposition (tests only).
#[cfg(test)]
pub(crate) fn value_in(registry: &Registry, name: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}
