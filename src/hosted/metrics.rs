//! The hosted registry's gauges: `berth_hosted_bytes{app}` (what each app's pushed content
//! takes, each blob once) and `berth_hosted_quota_bytes{app}` (its `apps[].hosted.quota`),
//! read from the index every 30 s and after a collection, so an operator can alert before a
//! vendor's CI hits its quota. Labels are app slugs only.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Hosted;
use crate::config::Live;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

/// `default()` is registered nowhere (a throwaway for tests and commands).
#[derive(Default, Clone)]
pub struct HostedMetrics {
    bytes: Family<AppLabel, Gauge>,
    quota: Family<AppLabel, Gauge>,
}

/// How often the gauges are read from the index.
const EVERY: Duration = Duration::from_secs(30);

impl HostedMetrics {
    pub fn register(registry: &mut Registry) -> HostedMetrics {
        let m = HostedMetrics::default();
        registry.register(
            "hosted_bytes",
            "Bytes each app's hosted (pushed) content takes, each blob counted once",
            m.bytes.clone(),
        );
        registry.register(
            "hosted_quota_bytes",
            "Each app's hosted storage quota (apps[].hosted.quota), where one is set",
            m.quota.clone(),
        );
        m
    }

    /// Sets the gauges of every configured app; an app no longer configured drops out.
    pub async fn observe(&self, hosted: &Hosted, config: &Live) {
        let config = config.current();
        self.bytes.clear();
        self.quota.clear();
        for app in config.tenants.apps() {
            let label = AppLabel {
                app: app.slug.clone(),
            };
            match hosted.app_bytes(&app.slug).await {
                Ok(b) => {
                    self.bytes
                        .get_or_create(&label)
                        .set(b.min(i64::MAX as u64) as i64);
                }
                // The state store's failure is logged where it happened; the gauge is
                // left out rather than shown as zero.
                Err(_) => continue,
            }
            if let Some(q) = app.hosted.quota {
                self.quota
                    .get_or_create(&label)
                    .set(q.min(i64::MAX as u64) as i64);
            }
        }
    }

    /// Observes now and every 30 s; call inside the runtime.
    pub fn start(&self, hosted: &Arc<Hosted>, config: Arc<Live>) {
        let me = self.clone();
        let hosted = Arc::downgrade(hosted);
        tokio::spawn(async move {
            loop {
                let Some(h) = hosted.upgrade() else { return };
                me.observe(&h, &config).await;
                drop(h);
                tokio::time::sleep(EVERY).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::hosted::HostedIndex;

    #[tokio::test]
    async fn the_gauges_show_each_apps_bytes_and_quota() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::parse(
            &format!(
                "server: {{ listen: \"127.0.0.1:0\", hostname: images.acme.test }}\n\
                 cache: {{ dir: \"{}\" }}\n\
                 apps: [ {{ slug: acme, hosted: {{ quota: 1MiB }} }}, {{ slug: beta }} ]\n",
                dir.path().join("cache").display()
            ),
            std::path::Path::new("/"),
            &|_| None,
        )
        .unwrap();
        let store = Arc::new(
            crate::state::sqlite::SqliteStore::open(&dir.path().join("state.db"))
                .await
                .unwrap(),
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        store.link_blob("acme", "worker", &d, 4096).await.unwrap();
        let cache = crate::cache::Cache::open(
            &config.cache,
            crate::content::Legacy::default(),
            crate::cache::CacheMetrics::default(),
        )
        .unwrap();
        let hosted = Hosted::new(Arc::new(cache), store, Duration::from_secs(60));
        let mut registry = Registry::with_prefix("berth");
        let m = HostedMetrics::register(&mut registry);
        m.observe(&hosted, &Live::new(config)).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("berth_hosted_bytes{app=\"acme\"} 4096"),
            "{text}"
        );
        assert!(
            text.contains("berth_hosted_bytes{app=\"beta\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("berth_hosted_quota_bytes{app=\"acme\"} 1048576"),
            "{text}"
        );
        assert!(
            !text.contains("berth_hosted_quota_bytes{app=\"beta\"}"),
            "{text}"
        );
    }
}
