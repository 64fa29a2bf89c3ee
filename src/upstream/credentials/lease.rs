//! Short-lived credentials kept per upstream: an ECR registry login, AWS session
//! credentials, a cloud access token. Each upstream has a slot behind an async mutex: the
//! first caller that finds it empty or due fetches while holding it, and everyone queued
//! behind reads what it stored (single flight without a second cache layer); a value is
//! renewed 30 minutes before it expires, or halfway through a shorter life.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::upstream::UpstreamError;

/// Renew this long before expiry, or after half the lifetime for one issued with less.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 60);

/// The time source; tests substitute one they control.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A credential that expires.
pub trait Expiring: Clone {
    fn expires_at(&self) -> SystemTime;
}

struct Held<T> {
    value: T,
    renew_at: SystemTime,
}

type Slot<T> = Arc<tokio::sync::Mutex<Option<Held<T>>>>;

/// One kind of credential, per upstream.
pub struct Leases<T> {
    slots: Mutex<HashMap<String, Slot<T>>>,
    clock: Clock,
}

impl<T: Expiring> Leases<T> {
    pub fn new(clock: Clock) -> Self {
        Leases {
            slots: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn slot(&self, upstream: &str) -> Slot<T> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(upstream.to_string())
            .or_default()
            .clone()
    }

    /// Drops everything held (credentials may have changed on reload).
    pub fn clear(&self) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Drops one upstream's value if `stale` says it is the one that was refused, so a
    /// value another request has fetched since stays.
    pub async fn invalidate_if(&self, upstream: &str, stale: impl Fn(&T) -> bool) {
        let slot = self.slot(upstream);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|h| stale(&h.value)) {
            *guard = None;
        }
    }

    /// The upstream's value, fetched when there is none or it is due.
    pub async fn get<F, Fut>(&self, upstream: &str, fetch: F) -> Result<T, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let slot = self.slot(upstream);
        let mut guard = slot.lock().await;
        if let Some(h) = guard.as_ref() {
            if (self.clock)() < h.renew_at {
                return Ok(h.value.clone());
            }
        }
        let value = fetch().await?;
        let now = (self.clock)();
        *guard = Some(Held {
            renew_at: renew_at(now, value.expires_at()),
            value: value.clone(),
        });
        Ok(value)
    }
}

/// When to fetch anew: 30 min before expiry, or halfway for short-lived values.
pub fn renew_at(now: SystemTime, expires_at: SystemTime) -> SystemTime {
    let life = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
    expires_at - RENEW_BEFORE.min(life / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::UNIX_EPOCH;

    #[derive(Clone, Debug, PartialEq)]
    struct V(usize, SystemTime);

    impl Expiring for V {
        fn expires_at(&self) -> SystemTime {
            self.1
        }
    }

    #[tokio::test]
    async fn renews_before_expiry_with_a_controlled_clock() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let offset = Arc::new(AtomicU64::new(0));
        let o = offset.clone();
        let clock: Clock = Arc::new(move || t0 + Duration::from_secs(o.load(Ordering::SeqCst)));
        let leases = Leases::new(clock);
        let fetches = AtomicUsize::new(0);
        let get = || async {
            leases
                .get("u", || async {
                    let n = fetches.fetch_add(1, Ordering::SeqCst);
                    let now = t0 + Duration::from_secs(offset.load(Ordering::SeqCst));
                    Ok(V(n, now + Duration::from_secs(12 * 3600)))
                })
                .await
                .unwrap()
                .0
        };
        assert_eq!(get().await, 0);
        // 11 h later: more than 30 min left, so the held value serves.
        offset.store(11 * 3600, Ordering::SeqCst);
        assert_eq!(get().await, 0);
        // 11 h 31 min: inside the renewal window, one new fetch.
        offset.store(11 * 3600 + 31 * 60, Ordering::SeqCst);
        assert_eq!(get().await, 1);
        assert_eq!(get().await, 1);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // A refused value is dropped only if it is still the one held; clear drops all.
        leases.invalidate_if("u", |v| v.0 == 0).await;
        assert_eq!(get().await, 1, "a stale refusal is no reason");
        leases.invalidate_if("u", |v| v.0 == 1).await;
        assert_eq!(get().await, 2);
        leases.clear();
        assert_eq!(get().await, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch() {
        let leases = Arc::new(Leases::new(Arc::new(SystemTime::now)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (leases, fetches) = (leases.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                leases
                    .get("u", || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(V(0, SystemTime::now() + Duration::from_secs(43_200)))
                    })
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn renewal_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let exp = now + Duration::from_secs(12 * 3600);
        assert_eq!(renew_at(now, exp), exp - Duration::from_secs(1800));
        let short = now + Duration::from_secs(600);
        assert_eq!(renew_at(now, short), now + Duration::from_secs(300));
        assert_eq!(
            renew_at(now, now - Duration::from_secs(5)),
            now - Duration::from_secs(5)
        );
    }
}
