//! Tag answers: tag → digest per accepted media-type set (docker and OCI answers must not
//! collide), with the time the answer was last confirmed (the pull-through policy's TTL
//! reads it). Keyed by repository; an answer stored before the content model (keyed by
//! upstream) is found through [`Legacy`] and moved to every repository it stands for on
//! first use.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Legacy, RepoKey};
use crate::oci::Digest;
use crate::storage::{LegacyTagPath, ObjectKey, ObjectPrefix, ObjectStore, TagPath};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    pub length: u64,
    /// When the upstream last confirmed this answer (milliseconds since the epoch: whole
    /// seconds would make a short `tag_ttl` expire early at every second boundary).
    pub checked_ms: u64,
    /// Seeded by `berth airgap import`: the customer holds these bytes, so the answer is
    /// served whatever the upstream says when asked again (refusal, error, no answer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
}

impl TagEntry {
    pub fn age(&self, now: SystemTime) -> std::time::Duration {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        std::time::Duration::from_millis(now.saturating_sub(self.checked_ms))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct TagKey {
    pub repo: RepoKey,
    pub tag: String,
    /// Short hash of the normalized Accept set: docker and OCI answers must not collide.
    pub accept: String,
}

impl TagKey {
    /// `accept` is the client's Accept header (normalized here).
    pub fn new(repo: &RepoKey, tag: &str, accept: &str) -> TagKey {
        TagKey {
            repo: repo.clone(),
            tag: tag.to_string(),
            accept: accept_key(accept),
        }
    }

    fn object(&self) -> ObjectKey {
        ObjectKey::TagAnswer(TagPath {
            repo: self.repo.path(),
            tag: self.tag.clone(),
            accept: self.accept.clone(),
        })
    }
}

/// Normalizes an Accept header to a set (order, spacing and parameters ignored) and hashes
/// it. Clients send a handful of distinct headers, so results are remembered: this runs on
/// every manifest request.
pub fn accept_key(accept: &str) -> String {
    static KNOWN: std::sync::LazyLock<moka::sync::Cache<String, String>> =
        std::sync::LazyLock::new(|| moka::sync::Cache::new(1024));
    if let Some(k) = KNOWN.get(accept) {
        return k;
    }
    let k = compute_accept_key(accept);
    KNOWN.insert(accept.to_string(), k.clone());
    k
}

fn compute_accept_key(accept: &str) -> String {
    let mut types: Vec<String> = crate::oci::media::accept_types(accept)
        .map(str::to_ascii_lowercase)
        .filter(|t| !t.is_empty())
        .collect();
    types.sort();
    types.dedup();
    let d = Digest::sha256_of(types.join(",").as_bytes());
    d.hex()[..16].to_string()
}

pub struct TagStore {
    objects: Arc<dyn ObjectStore>,
    mem: moka::sync::Cache<TagKey, TagEntry>,
    legacy: Legacy,
}

impl TagStore {
    pub fn new(objects: Arc<dyn ObjectStore>, legacy: Legacy) -> TagStore {
        TagStore {
            objects,
            mem: moka::sync::Cache::new(100_000),
            legacy,
        }
    }

    pub async fn get(&self, k: &TagKey) -> Option<TagEntry> {
        if let Some(e) = self.mem.get(k) {
            return Some(e);
        }
        let e = match self.objects.get(&k.object()).await {
            Ok(text) => serde_json::from_slice::<TagEntry>(&text).ok()?,
            Err(_) => self.get_legacy(k).await?,
        };
        self.mem.insert(k.clone(), e.clone());
        Some(e)
    }

    /// An answer stored before the content model, moved to its repositories first.
    async fn get_legacy(&self, k: &TagKey) -> Option<TagEntry> {
        for (upstream, repository) in self.legacy.sources(&k.repo) {
            let old = LegacyTagPath {
                upstream,
                repository,
                tag: k.tag.clone(),
                accept: k.accept.clone(),
            };
            if let Some(e) = self.migrate(old).await {
                return Some(e);
            }
        }
        None
    }

    /// Moves an old-format answer to the answer of every repository it stands for (one
    /// per app of its upstream; a repository's own newer answer wins), then removes it,
    /// so a later removal of one repository's answer does not bring it back.
    async fn migrate(&self, old: LegacyTagPath) -> Option<TagEntry> {
        let old_key = ObjectKey::LegacyTagAnswer(old.clone());
        let text = self.objects.get(&old_key).await.ok()?;
        let e: TagEntry = serde_json::from_slice(&text).ok()?;
        for repo in self.legacy.repos(&old.upstream, &old.repository) {
            let key = TagKey {
                repo,
                tag: old.tag.clone(),
                accept: old.accept.clone(),
            };
            let new = key.object();
            if self.objects.get(&new).await.is_ok() {
                continue;
            }
            if let Err(err) = self.objects.put(&new, text.clone()).await {
                tracing::warn!(error = %err, "cannot move a tag answer to its repository; reading the old one");
                return Some(e);
            }
        }
        let _ = self.objects.delete(&old_key).await;
        Some(e)
    }

    /// Moves every old-format answer some configured upstream explains (before `cache
    /// purge` matches answers by repository). Returns how many moved.
    pub async fn migrate_all(&self) -> usize {
        let mut moved = 0;
        let keys = self
            .objects
            .list(&ObjectPrefix::LegacyTags)
            .await
            .unwrap_or_default();
        for key in keys {
            if let ObjectKey::LegacyTagAnswer(old) = key {
                if !self.legacy.repos(&old.upstream, &old.repository).is_empty()
                    && self.migrate(old).await.is_some()
                {
                    moved += 1;
                }
            }
        }
        moved
    }

    pub async fn put(&self, k: &TagKey, e: TagEntry) {
        self.mem.insert(k.clone(), e.clone());
        let bytes = match serde_json::to_vec(&e) {
            Ok(b) => b,
            Err(_) => return,
        };
        if let Err(err) = self.objects.put(&k.object(), Bytes::from(bytes)).await {
            tracing::warn!(error = %err, "cannot persist a tag answer; it holds until restart");
        }
    }

    /// Every stored answer for a tag, whatever Accept set it was recorded for (the fallback
    /// for a client whose Accept set has no entry of its own while the upstream is away).
    pub async fn entries(&self, repo: &RepoKey, tag: &str) -> Vec<TagEntry> {
        for (upstream, repository) in self.legacy.sources(repo) {
            let prefix = ObjectPrefix::LegacyTagAnswers {
                upstream,
                repository,
                tag: tag.to_string(),
            };
            for key in self.objects.list(&prefix).await.unwrap_or_default() {
                if let ObjectKey::LegacyTagAnswer(old) = key {
                    self.migrate(old).await;
                }
            }
        }
        let prefix = ObjectPrefix::TagAnswers {
            repo: repo.path(),
            tag: tag.to_string(),
        };
        // Listed in a stable order, so the same request gets the same answer every time.
        let Ok(keys) = self.objects.list(&prefix).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for key in keys {
            if let Ok(text) = self.objects.get(&key).await {
                if let Ok(e) = serde_json::from_slice::<TagEntry>(&text) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// The tags of `repo` recorded under the Accept key `accept` (a hosted repository keeps
    /// one record per tag). Lists every tag answer: fine for a first hosted registry, a
    /// per-repository prefix is the next step when repositories grow many.
    pub async fn tags_of(&self, repo: &RepoKey, accept: &str) -> Vec<String> {
        let path = repo.path();
        let Ok(keys) = self.objects.list(&ObjectPrefix::Tags).await else {
            return Vec::new();
        };
        keys.into_iter()
            .filter_map(|k| match k {
                ObjectKey::TagAnswer(t) if t.repo == path && t.accept == accept => Some(t.tag),
                _ => None,
            })
            .collect()
    }

    pub async fn remove(&self, k: &TagKey) {
        self.mem.invalidate(k);
        let _ = self.objects.delete(&k.object()).await;
    }

    pub fn clear_memory(&self) {
        self.mem.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_sets_are_order_insensitive() {
        let a = accept_key("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json");
        let b = accept_key("application/vnd.docker.distribution.manifest.v2+json;q=0.9,application/vnd.oci.image.index.v1+json");
        let c = accept_key("application/vnd.docker.distribution.manifest.v2+json");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    fn entry(c: &[u8]) -> TagEntry {
        TagEntry {
            imported: false,
            digest: Digest::sha256_of(c),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            length: c.len() as u64,
            checked_ms: 1,
        }
    }

    /// An answer as berth stored it under the upstream's name: found for each app of that
    /// upstream (moved to each), never for an app without it; removing one app's answer
    /// afterwards does not bring the old one back.
    #[tokio::test]
    async fn old_answers_move_to_each_app_of_their_upstream() {
        let objects: Arc<dyn ObjectStore> =
            Arc::new(crate::storage::memory::MemoryBackend::default());
        let accept = crate::oci::DEFAULT_MANIFEST_ACCEPT;
        let old = ObjectKey::LegacyTagAnswer(LegacyTagPath {
            upstream: "hub".into(),
            repository: "library/redis".into(),
            tag: "7".into(),
            accept: accept_key(accept),
        });
        let e = entry(b"m");
        objects
            .put(&old, Bytes::from(serde_json::to_vec(&e).unwrap()))
            .await
            .unwrap();
        let legacy = Legacy::new([
            ("hub".into(), "acme".into(), "docker.io".into()),
            ("hub".into(), "other".into(), "docker.io".into()),
        ]);
        let tags = TagStore::new(objects.clone(), legacy);
        let redis = |app| RepoKey::proxied(app, "docker.io", "library/redis");
        let third = TagKey::new(&redis("third"), "7", accept);
        assert!(tags.get(&third).await.is_none());
        let acme = TagKey::new(&redis("acme"), "7", accept);
        assert_eq!(tags.get(&acme).await.unwrap().digest, e.digest);
        assert!(objects.get(&old).await.unwrap_err().is_not_found(), "moved");
        tags.remove(&acme).await;
        tags.clear_memory();
        assert!(tags.get(&acme).await.is_none());
        let other = tags.entries(&redis("other"), "7").await;
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].digest, e.digest);
    }
}
