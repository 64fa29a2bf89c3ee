//! Cached manifests (by digest, immutable, byte-exact with their media type) and tag
//! answers (tag → digest per accepted media-type set, with the time they were last
//! confirmed by the upstream). Both live in the small-object store and in a small memory
//! cache.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::Digest;
use crate::storage::{ObjectKey, ObjectPrefix, ObjectStore, TagPath};

#[derive(Debug)]
pub struct StoredManifest {
    pub bytes: Bytes,
    pub media_type: String,
}

pub struct ManifestStore {
    objects: Arc<dyn ObjectStore>,
    mem: moka::sync::Cache<Digest, Arc<StoredManifest>>,
}

impl ManifestStore {
    pub fn new(objects: Arc<dyn ObjectStore>) -> ManifestStore {
        ManifestStore {
            objects,
            mem: moka::sync::Cache::builder()
                .weigher(|_, m: &Arc<StoredManifest>| m.bytes.len().min(u32::MAX as usize) as u32)
                .max_capacity(64 * 1024 * 1024)
                .build(),
        }
    }

    pub async fn get(&self, d: &Digest) -> Option<Arc<StoredManifest>> {
        if let Some(m) = self.mem.get(d) {
            return Some(m);
        }
        let bytes = self
            .objects
            .get(&ObjectKey::Manifest(d.clone()))
            .await
            .ok()?;
        let media_type = self
            .objects
            .get(&ObjectKey::ManifestMediaType(d.clone()))
            .await
            .ok()?;
        let media_type = String::from_utf8(media_type.to_vec()).ok()?;
        // Files are renamed in only after verification, but a re-check costs little for
        // something this small and guards against a damaged disk.
        if Digest::sha256_of(&bytes) != *d {
            tracing::warn!(digest = %d, "cached manifest is damaged; ignoring it");
            return None;
        }
        let m = Arc::new(StoredManifest { bytes, media_type });
        self.mem.insert(d.clone(), m.clone());
        Some(m)
    }

    /// Stores a manifest whose bytes the caller has verified against `d`.
    pub async fn put(
        &self,
        d: &Digest,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<(), crate::storage::StorageError> {
        // The media type first: bytes without one are not served.
        self.objects
            .put(
                &ObjectKey::ManifestMediaType(d.clone()),
                Bytes::copy_from_slice(media_type.as_bytes()),
            )
            .await?;
        self.objects
            .put(&ObjectKey::Manifest(d.clone()), bytes.clone())
            .await?;
        self.mem.insert(
            d.clone(),
            Arc::new(StoredManifest {
                bytes,
                media_type: media_type.to_string(),
            }),
        );
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagEntry {
    pub digest: Digest,
    pub media_type: String,
    pub length: u64,
    /// When the upstream last confirmed this answer (milliseconds since the epoch: whole
    /// seconds would make a short `tag_ttl` expire early at every second boundary).
    pub checked_ms: u64,
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
    pub upstream: String,
    pub repository: String,
    pub tag: String,
    /// Short hash of the normalized Accept set: docker and OCI answers must not collide.
    pub accept: String,
}

impl TagKey {
    pub fn new(upstream: &str, repository: &str, tag: &str, accept: &str) -> TagKey {
        TagKey {
            upstream: upstream.to_string(),
            repository: repository.to_string(),
            tag: tag.to_string(),
            accept: accept_key(accept),
        }
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
}

impl TagStore {
    pub fn new(objects: Arc<dyn ObjectStore>) -> TagStore {
        TagStore {
            objects,
            mem: moka::sync::Cache::new(100_000),
        }
    }

    fn key(k: &TagKey) -> ObjectKey {
        ObjectKey::TagAnswer(TagPath {
            upstream: k.upstream.clone(),
            repository: k.repository.clone(),
            tag: k.tag.clone(),
            accept: k.accept.clone(),
        })
    }

    pub async fn get(&self, k: &TagKey) -> Option<TagEntry> {
        if let Some(e) = self.mem.get(k) {
            return Some(e);
        }
        let text = self.objects.get(&Self::key(k)).await.ok()?;
        let e: TagEntry = serde_json::from_slice(&text).ok()?;
        self.mem.insert(k.clone(), e.clone());
        Some(e)
    }

    pub async fn put(&self, k: &TagKey, e: TagEntry) {
        self.mem.insert(k.clone(), e.clone());
        let bytes = match serde_json::to_vec(&e) {
            Ok(b) => b,
            Err(_) => return,
        };
        if let Err(err) = self.objects.put(&Self::key(k), Bytes::from(bytes)).await {
            tracing::warn!(error = %err, "cannot persist a tag answer; it holds until restart");
        }
    }

    /// Every stored answer for a tag, whatever Accept set it was recorded for (the fallback
    /// for a client whose Accept set has no entry of its own while the upstream is away).
    pub async fn entries(&self, upstream: &str, repository: &str, tag: &str) -> Vec<TagEntry> {
        let prefix = ObjectPrefix::TagAnswers {
            upstream: upstream.to_string(),
            repository: repository.to_string(),
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

    pub async fn remove(&self, k: &TagKey) {
        self.mem.invalidate(k);
        let _ = self.objects.delete(&Self::key(k)).await;
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
}
