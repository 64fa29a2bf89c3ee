//! The control plane's gauges (`berth_licenses`, `berth_license_expiry_seconds`,
//! `berth_api_keys`): set from the config file's licenses and the directory's snapshot
//! whenever the directory moves and once a second (expiry changes states without any
//! write). Labels are states, app slugs and public license ids; never a secret.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::Snapshot;
use crate::tenancy::{License, State};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LicenseLabels {
    app: String,
    /// The public id (`lic_…`, or a config license's fingerprint).
    license: String,
}

/// `default()` is registered nowhere (a throwaway for tests).
#[derive(Default)]
pub struct ControlMetrics {
    licenses: Family<StateLabels, Gauge>,
    expiry: Family<LicenseLabels, Gauge>,
    keys: Family<StateLabels, Gauge>,
    /// The expiry series set last time, to remove the ones that went away.
    shown: Mutex<HashSet<LicenseLabels>>,
}

const STATES: [State; 3] = [State::Active, State::Expired, State::Revoked];

impl ControlMetrics {
    pub fn register(registry: &mut Registry) -> ControlMetrics {
        let m = ControlMetrics::default();
        registry.register(
            "licenses",
            "Licenses (the config file's and the state store's) by state",
            m.licenses.clone(),
        );
        registry.register(
            "license_expiry_seconds",
            "When each active license with an expiry expires, as a Unix timestamp",
            m.expiry.clone(),
        );
        registry.register("api_keys", "API keys by state", m.keys.clone());
        m
    }

    /// Sets every gauge from `config_licenses` and `snapshot` as of `now`.
    pub fn observe(
        &self,
        config_licenses: &[std::sync::Arc<License>],
        snapshot: &Snapshot,
        now: SystemTime,
    ) {
        let mut licenses = [0i64; 3];
        let mut expiring = HashSet::new();
        for l in config_licenses.iter().chain(snapshot.licenses()) {
            let state = l.state(now);
            licenses[index(state)] += 1;
            if let (State::Active, Some(at)) = (state, l.expires) {
                let secs = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let labels = LicenseLabels {
                    app: l.app.clone(),
                    license: l.id.clone(),
                };
                self.expiry.get_or_create(&labels).set(secs);
                expiring.insert(labels);
            }
        }
        let mut keys = [0i64; 3];
        for k in snapshot.keys() {
            keys[index(k.state(now))] += 1;
        }
        for s in STATES {
            let labels = StateLabels { state: s.as_str() };
            self.licenses.get_or_create(&labels).set(licenses[index(s)]);
            self.keys.get_or_create(&labels).set(keys[index(s)]);
        }
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        for gone in shown.difference(&expiring) {
            self.expiry.remove(gone);
        }
        *shown = expiring;
    }
}

fn index(s: State) -> usize {
    match s {
        State::Active => 0,
        State::Expired => 1,
        State::Revoked => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Contents, KeyRow, LicenseRow, SecretHasher};
    use crate::tenancy::{ApiKey, Origin};
    use prometheus_client::encoding::text::encode;
    use std::sync::Arc;
    use std::time::Duration;

    fn license(id: &str, expires: Option<SystemTime>, revoked: bool, origin: Origin) -> License {
        License {
            id: id.into(),
            app: "acme".into(),
            customer: "C".into(),
            expires,
            revoked,
            images: vec![],
            rate_limit: None,
            origin,
            rotated: None,
        }
    }

    fn scrape(r: &Registry) -> String {
        let mut s = String::new();
        encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn states_and_expiries_follow_the_clock_and_the_snapshot() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hasher = SecretHasher::new(&[7; 32]);
        let row = |l: License| LicenseRow {
            secret_hash: hasher.hash(&l.id),
            license: l,
            created: now,
        };
        let soon = now + Duration::from_secs(2);
        let contents = Contents {
            generation: 1,
            licenses: vec![
                row(license("lic_soon", Some(soon), false, Origin::Store)),
                row(license("lic_gone", None, true, Origin::Store)),
            ],
            keys: vec![KeyRow {
                key: ApiKey {
                    id: "key_1".into(),
                    name: "ci".into(),
                    apps: vec!["acme".into()],
                    actions: vec![],
                    expires: None,
                    revoked: false,
                },
                key_hash: hasher.hash("k"),
                created: now,
                last_used: None,
            }],
            admin_tokens: vec![],
        };
        let snap = Snapshot::of(contents);
        let config = vec![Arc::new(license("fp_config", None, false, Origin::Config))];
        let mut r = Registry::with_prefix("berth");
        let m = ControlMetrics::register(&mut r);
        m.observe(&config, &snap, now);
        let text = scrape(&r);
        assert!(
            text.contains("berth_licenses{state=\"active\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("berth_licenses{state=\"revoked\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_licenses{state=\"expired\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("berth_api_keys{state=\"active\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_license_expiry_seconds{app=\"acme\",license=\"lic_soon\"} 1000002"
            ),
            "{text}"
        );
        // Three seconds on: expired without any store change, its expiry series gone.
        m.observe(&config, &snap, now + Duration::from_secs(3));
        let text = scrape(&r);
        assert!(
            text.contains("berth_licenses{state=\"active\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_licenses{state=\"expired\"} 1"),
            "{text}"
        );
        assert!(!text.contains("lic_soon"), "{text}");
    }
}
