//! Cached manifests (by digest, immutable, byte-exact with their media type) and tag
//! answers (tag → digest per accepted media-type set, with the time they were last
//! confirmed by the upstream). Both live on disk and in a small memory cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::oci::Digest;

#[derive(Debug)]
pub struct StoredManifest {
    pub bytes: Bytes,
    pub media_type: String,
}

pub struct ManifestStore {
    root: PathBuf,
    tmp: PathBuf,
    mem: moka::sync::Cache<Digest, Arc<StoredManifest>>,
}

/// Writes a file so that readers see either nothing or the whole of it.
pub(crate) async fn write_atomic(
    tmp_dir: &Path,
    dest: &Path,
    bytes: Vec<u8>,
) -> std::io::Result<()> {
    let tmp = tmp_dir.join(super::temp_name());
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &dest).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

impl ManifestStore {
    pub fn new(root: PathBuf, tmp: PathBuf) -> ManifestStore {
        ManifestStore {
            root,
            tmp,
            mem: moka::sync::Cache::builder()
                .weigher(|_, m: &Arc<StoredManifest>| m.bytes.len().min(u32::MAX as usize) as u32)
                .max_capacity(64 * 1024 * 1024)
                .build(),
        }
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.root.join(d.hex())
    }

    pub async fn get(&self, d: &Digest) -> Option<Arc<StoredManifest>> {
        if let Some(m) = self.mem.get(d) {
            return Some(m);
        }
        let path = self.path(d);
        let bytes = tokio::fs::read(&path).await.ok()?;
        let media_type = tokio::fs::read_to_string(path.with_extension("type"))
            .await
            .ok()?;
        // Files are renamed in only after verification, but a re-check costs little for
        // something this small and guards against a damaged disk.
        if Digest::sha256_of(&bytes) != *d {
            tracing::warn!(digest = %d, "cached manifest is damaged; ignoring it");
            return None;
        }
        let m = Arc::new(StoredManifest {
            bytes: Bytes::from(bytes),
            media_type,
        });
        self.mem.insert(d.clone(), m.clone());
        Some(m)
    }

    /// Stores a manifest whose bytes the caller has verified against `d`.
    pub async fn put(&self, d: &Digest, bytes: Bytes, media_type: &str) -> std::io::Result<()> {
        let path = self.path(d);
        write_atomic(
            &self.tmp,
            &path.with_extension("type"),
            media_type.as_bytes().to_vec(),
        )
        .await?;
        write_atomic(&self.tmp, &path, bytes.to_vec()).await?;
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
    root: PathBuf,
    tmp: PathBuf,
    mem: moka::sync::Cache<TagKey, TagEntry>,
}

impl TagStore {
    pub fn new(root: PathBuf, tmp: PathBuf) -> TagStore {
        TagStore {
            root,
            tmp,
            mem: moka::sync::Cache::new(100_000),
        }
    }

    fn path(&self, k: &TagKey) -> PathBuf {
        // Every part was validated by the route parser (no "..", no empty components).
        self.root
            .join(&k.upstream)
            .join(&k.repository)
            .join(&k.tag)
            .join(format!("{}.json", k.accept))
    }

    pub async fn get(&self, k: &TagKey) -> Option<TagEntry> {
        if let Some(e) = self.mem.get(k) {
            return Some(e);
        }
        let text = tokio::fs::read(self.path(k)).await.ok()?;
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
        if let Err(err) = write_atomic(&self.tmp, &self.path(k), bytes).await {
            tracing::warn!(error = %err, "cannot persist a tag answer; it holds until restart");
        }
    }

    /// Every stored answer for a tag, whatever Accept set it was recorded for (the fallback
    /// for a client whose Accept set has no entry of its own while the upstream is away).
    pub async fn entries(&self, upstream: &str, repository: &str, tag: &str) -> Vec<TagEntry> {
        let dir = self.root.join(upstream).join(repository).join(tag);
        let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
            return Vec::new();
        };
        let mut names = Vec::new();
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") {
                names.push(name);
            }
        }
        // Stable order, so the same request gets the same answer every time.
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Ok(text) = tokio::fs::read(dir.join(&name)).await {
                if let Ok(e) = serde_json::from_slice::<TagEntry>(&text) {
                    out.push(e);
                }
            }
        }
        out
    }

    pub async fn remove(&self, k: &TagKey) {
        self.mem.invalidate(k);
        let _ = tokio::fs::remove_file(self.path(k)).await;
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
