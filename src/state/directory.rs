//! `Directory`: the in-memory snapshot of the store's licenses, keys and admin tokens that
//! requests authenticate against (a hash lookup, no database round trip on the pull path),
//! and the task that refreshes it whenever the store's generation moves.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::{AdminTokenRow, Contents, KeyRow, SecretHash, SecretHasher, Store, REFRESH_EVERY};
use crate::tenancy::{ApiKey, License};

/// One generation of the store, indexed for lookups by id and by secret hash.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: i64,
    licenses: HashMap<String, Arc<License>>,
    license_by_hash: HashMap<SecretHash, String>,
    keys: HashMap<String, Arc<ApiKey>>,
    key_by_hash: HashMap<SecretHash, String>,
    admin_by_hash: HashMap<SecretHash, Arc<AdminTokenRow>>,
}

impl Snapshot {
    pub fn of(contents: Contents) -> Snapshot {
        let mut s = Snapshot {
            generation: contents.generation,
            ..Snapshot::default()
        };
        for row in contents.licenses {
            s.license_by_hash
                .insert(row.secret_hash, row.license.id.clone());
            s.licenses
                .insert(row.license.id.clone(), Arc::new(row.license));
        }
        for KeyRow { key, key_hash, .. } in contents.keys {
            s.key_by_hash.insert(key_hash, key.id.clone());
            s.keys.insert(key.id.clone(), Arc::new(key));
        }
        for t in contents.admin_tokens {
            s.admin_by_hash.insert(t.token_hash, Arc::new(t));
        }
        s
    }

    pub fn licenses(&self) -> impl Iterator<Item = &Arc<License>> {
        self.licenses.values()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<ApiKey>> {
        self.keys.values()
    }
}

/// What a secret turned out to be.
#[derive(Debug, Clone)]
pub enum Found {
    License(Arc<License>),
    Key(Arc<ApiKey>),
}

/// The live snapshot. Lookups hash the presented secret once and read a map.
#[derive(Debug)]
pub struct Directory {
    hasher: SecretHasher,
    current: RwLock<Arc<Snapshot>>,
}

impl Directory {
    /// A directory holding what `store` holds now.
    pub async fn load(store: &dyn Store) -> Result<Directory, super::StateError> {
        let contents = store.load().await?;
        Ok(Directory {
            hasher: store.hasher().clone(),
            current: RwLock::new(Arc::new(Snapshot::of(contents))),
        })
    }

    /// A directory with nothing in it (for processes without a store).
    pub fn empty(hasher: SecretHasher) -> Directory {
        Directory {
            hasher,
            current: RwLock::new(Arc::new(Snapshot::default())),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, s: Snapshot) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// The license or key whose secret `secret` is: one hash, two map reads (the login
    /// path of every Basic-authenticated request).
    pub fn by_secret(&self, secret: &str) -> Option<Found> {
        let h = self.hasher.hash(secret);
        let s = self.snapshot();
        if let Some(k) = s.key_by_hash.get(&h).and_then(|id| s.keys.get(id)) {
            return Some(Found::Key(k.clone()));
        }
        s.license_by_hash
            .get(&h)
            .and_then(|id| s.licenses.get(id))
            .map(|l| Found::License(l.clone()))
    }

    pub fn license_by_secret(&self, secret: &str) -> Option<Arc<License>> {
        let h = self.hasher.hash(secret);
        let s = self.snapshot();
        s.license_by_hash
            .get(&h)
            .and_then(|id| s.licenses.get(id))
            .cloned()
    }

    pub fn license(&self, id: &str) -> Option<Arc<License>> {
        self.snapshot().licenses.get(id).cloned()
    }

    pub fn key_by_secret(&self, secret: &str) -> Option<Arc<ApiKey>> {
        let h = self.hasher.hash(secret);
        let s = self.snapshot();
        s.key_by_hash.get(&h).and_then(|id| s.keys.get(id)).cloned()
    }

    pub fn key(&self, id: &str) -> Option<Arc<ApiKey>> {
        self.snapshot().keys.get(id).cloned()
    }

    /// The stored admin token `secret` is, if it is one and not revoked.
    pub fn admin_by_secret(&self, secret: &str) -> Option<Arc<AdminTokenRow>> {
        let h = self.hasher.hash(secret);
        self.snapshot()
            .admin_by_hash
            .get(&h)
            .filter(|t| !t.revoked)
            .cloned()
    }

    /// Reloads when the store's generation moved; returns whether it did.
    pub async fn refresh(&self, store: &dyn Store) -> Result<bool, super::StateError> {
        let generation = store.generation().await?;
        if generation == self.snapshot().generation {
            return Ok(false);
        }
        let contents = store.load().await?;
        self.replace(Snapshot::of(contents));
        Ok(true)
    }

    /// Refreshes every [`REFRESH_EVERY`] for as long as the process runs; `changed` is
    /// told each new snapshot (metrics). A store that cannot be reached keeps the last
    /// snapshot in force and is logged once per outage.
    pub async fn follow(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        changed: impl Fn(&Snapshot, SystemTime) + Send + 'static,
    ) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        // Expiry moves states without a store change: tell `changed` once a second anyway.
        let mut since_told = 0u32;
        loop {
            tick.tick().await;
            match self.refresh(&*store).await {
                Ok(moved) => {
                    if failing {
                        tracing::info!("state store reachable again");
                        failing = false;
                    }
                    since_told += 1;
                    if moved || since_told >= 4 {
                        since_told = 0;
                        changed(&self.snapshot(), SystemTime::now());
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "cannot refresh licenses and keys from the state store; serving the last ones read");
                        failing = true;
                    }
                }
            }
        }
    }
}
