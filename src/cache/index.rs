//! The blob index: sizes and recency of every cached blob, reader counts, pins, and the
//! background evictor that keeps the total under `cache.max_size` without ever blocking a
//! request or removing a blob that is being read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::CacheMetrics;
use crate::storage::{layout, BlobBackend};

#[derive(Debug)]
struct Entry {
    size: u64,
    last_use: u64,
    readers: u32,
    pinned: bool,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
}

pub struct Index {
    inner: Mutex<Inner>,
    max: Option<u64>,
    wake: Notify,
    metrics: CacheMetrics,
}

/// Holds a blob in place while a response reads it.
pub struct ReadGuard {
    index: Arc<Index>,
    hex: String,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut g = self.index.lock();
        if let Some(e) = g.entries.get_mut(&self.hex) {
            e.readers = e.readers.saturating_sub(1);
        }
    }
}

impl Index {
    pub fn new(max: Option<u64>, metrics: CacheMetrics) -> Index {
        Index {
            inner: Mutex::new(Inner::default()),
            max,
            wake: Notify::new(),
            metrics,
        }
    }

    /// The families the blob store counts fills in (shared with the index's gauges).
    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    /// Publishes the totals; called with the lock held, so gauges never go backwards in
    /// time against the index.
    fn publish(&self, g: &Inner) {
        self.metrics.set_size(g.total, g.entries.len());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a blob; `age_rank` orders blobs found at startup (older first).
    pub fn insert(&self, hex: &str, size: u64, pinned: bool) {
        let mut g = self.lock();
        g.clock += 1;
        let now = g.clock;
        let old = g.entries.insert(
            hex.to_string(),
            Entry {
                size,
                last_use: now,
                readers: 0,
                pinned,
            },
        );
        if let Some(old) = old {
            g.total -= old.size;
            if let Some(e) = g.entries.get_mut(hex) {
                e.readers = old.readers;
                e.pinned |= old.pinned;
            }
        }
        g.total += size;
        self.publish(&g);
        let over = self.max.is_some_and(|m| g.total > m);
        drop(g);
        if over {
            self.wake.notify_one();
        }
    }

    /// Marks a blob as in use and returns its size, or `None` when it is not cached.
    pub fn acquire(self: &Arc<Self>, hex: &str) -> Option<(u64, ReadGuard)> {
        let mut g = self.lock();
        g.clock += 1;
        let now = g.clock;
        let e = g.entries.get_mut(hex)?;
        e.last_use = now;
        e.readers += 1;
        let size = e.size;
        Some((
            size,
            ReadGuard {
                index: self.clone(),
                hex: hex.to_string(),
            },
        ))
    }

    pub fn contains(&self, hex: &str) -> bool {
        self.lock().entries.contains_key(hex)
    }

    /// Whether eviction must leave this blob alone (imported from an airgap bundle).
    pub fn is_pinned(&self, hex: &str) -> bool {
        self.lock().entries.get(hex).is_some_and(|e| e.pinned)
    }

    /// Pins or unpins a blob the index knows (the hosted registry pins what it holds in
    /// memory, from its own index at every start, and unpins what collection releases).
    pub fn set_pinned(&self, hex: &str, pinned: bool) {
        if let Some(e) = self.lock().entries.get_mut(hex) {
            e.pinned = pinned;
        }
    }

    pub fn forget(&self, hex: &str) {
        let mut g = self.lock();
        if let Some(e) = g.entries.remove(hex) {
            g.total -= e.size;
            self.publish(&g);
        }
    }

    pub fn total(&self) -> u64 {
        self.lock().total
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Picks least recently used, unpinned, unread blobs until the total drops to 90 % of
    /// the cap (the margin avoids evicting on every insert), and forgets them.
    fn choose_victims(&self) -> Vec<(String, u64)> {
        let Some(max) = self.max else {
            return Vec::new();
        };
        let mut g = self.lock();
        if g.total <= max {
            return Vec::new();
        }
        let target = max / 10 * 9;
        let mut candidates: Vec<(u64, String, u64)> = g
            .entries
            .iter()
            .filter(|(_, e)| e.readers == 0 && !e.pinned)
            .map(|(h, e)| (e.last_use, h.clone(), e.size))
            .collect();
        candidates.sort_unstable();
        let mut victims = Vec::new();
        for (_, hex, size) in candidates {
            if g.total <= target {
                break;
            }
            g.entries.remove(&hex);
            g.total -= size;
            victims.push((hex, size));
        }
        self.publish(&g);
        victims
    }

    /// Runs forever: wakes when an insert passes the cap and deletes victims off the
    /// request path.
    pub async fn run_evictor(self: Arc<Self>, blobs: Arc<dyn BlobBackend>) {
        loop {
            self.wake.notified().await;
            let victims = self.choose_victims();
            if victims.is_empty() {
                continue;
            }
            let mut n = 0u64;
            let mut bytes = 0u64;
            for (hex, size) in victims {
                let Some(d) = layout::blob_from_name(&hex) else {
                    continue;
                };
                match blobs.delete(&d).await {
                    Ok(()) => {
                        n += 1;
                        bytes += size;
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!(blob = %hex, error = %e, "evicting a blob failed"),
                }
            }
            self.metrics.evicted(n, bytes);
            tracing::info!(
                blobs = n,
                bytes,
                total = self.total(),
                "evicted least recently used blobs"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_lru_but_not_readers_or_pins() {
        let idx = Arc::new(Index::new(Some(100), CacheMetrics::default()));
        idx.insert("a", 40, false);
        idx.insert("b", 40, false);
        idx.insert("p", 10, true);
        let (_, guard) = idx.acquire("a").unwrap();
        idx.insert("c", 40, false);
        assert_eq!(idx.total(), 130);
        let victims = idx.choose_victims();
        // "a" is being read and "p" is pinned: "b", the least recent, goes first, and
        // that brings the total to 90 % of the cap.
        assert_eq!(
            victims.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        assert_eq!(idx.total(), 90);
        idx.insert("d", 40, false);
        let victims = idx.choose_victims();
        // Still reading "a": "c" and then "d" are next in line.
        assert_eq!(
            victims.iter().map(|v| v.0.as_str()).collect::<Vec<_>>(),
            vec!["c"]
        );
        drop(guard);
        assert!(idx.contains("a"));
    }

    /// The size and count gauges follow the index as it changes (nobody reads the index at
    /// scrape time any more).
    #[test]
    fn the_gauges_follow_inserts_forgets_and_evictions() {
        use crate::cache::metrics::value_in;
        let mut registry = prometheus_client::registry::Registry::default();
        let idx = Index::new(Some(100), CacheMetrics::register(&mut registry));
        let gauges = |r: &prometheus_client::registry::Registry| {
            (value_in(r, "cache_size_bytes"), value_in(r, "cache_blobs"))
        };
        idx.insert("a", 40, false);
        idx.insert("b", 40, false);
        idx.insert("c", 40, false);
        assert_eq!(gauges(&registry), (120.0, 3.0));
        idx.forget("a");
        assert_eq!(gauges(&registry), (80.0, 2.0));
        idx.insert("d", 50, false);
        assert_eq!(gauges(&registry), (130.0, 3.0));
        // Over the cap: "b" goes, and 90 bytes in two blobs are left.
        assert_eq!(idx.choose_victims().len(), 1);
        assert_eq!(gauges(&registry), (90.0, 2.0));
    }
}
