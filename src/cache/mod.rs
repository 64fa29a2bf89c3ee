//! The on-disk cache: blobs (content-addressed, single-flight fills, LRU eviction under a
//! size cap), manifests and tag answers, and the repository links that keep one app from
//! reading another's content. Storage only: it never sees an HTTP type.

pub mod admin;
pub mod blob;
pub mod index;
pub mod links;
pub mod manifest;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::CacheConfig;

pub use blob::{Begin, BlobStore, FillKey, Source};
pub use index::Index;
pub use links::Links;
pub use manifest::{ManifestStore, TagEntry, TagKey, TagStore};

pub struct Cache {
    pub dir: PathBuf,
    /// Shared lock held while serving, so `cache purge` cannot run underneath.
    _lock: std::fs::File,
    pub blobs: Arc<BlobStore>,
    pub manifests: ManifestStore,
    pub tags: TagStore,
    pub links: Links,
}

/// A name no other temp file of this process or an earlier one can have.
pub(crate) fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}-{n}.part", std::process::id())
}

/// Staging directories of airgap imports are `tmp/<STAGE_PREFIX>…` (created as
/// `tmp/.<STAGE_PREFIX>…`, locked, then renamed).
pub const STAGE_PREFIX: &str = "airgap-";

/// Removes staging directories that no import holds any more (one killed with SIGKILL, or
/// a crash); called when the cache opens. Returns how many went.
pub(crate) fn remove_abandoned_stages(tmp: &Path) -> usize {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        // The hidden name too: an import that died between creating and renaming it. One
        // caught before it is locked fails its rename and says so; nothing is lost.
        if !(name.starts_with(STAGE_PREFIX)
            || name
                .strip_prefix('.')
                .is_some_and(|n| n.starts_with(STAGE_PREFIX)))
            || !e.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let path = e.path();
        let Ok(dir) = std::fs::File::open(&path) else {
            continue;
        };
        match dir.try_lock() {
            Ok(()) => {
                if std::fs::remove_dir_all(&path).is_ok() {
                    removed += 1;
                }
            }
            // A running import holds it.
            Err(_) => continue,
        }
    }
    removed
}

#[derive(Debug, thiserror::Error)]
#[error("cache.dir: {path}: {source}")]
pub struct OpenError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError {
        path: path.to_path_buf(),
        source,
    }
}

impl Cache {
    /// Opens (or creates) the cache: deletes temp files a crash left behind and rebuilds the
    /// blob index from what is on disk. Only renamed-in files count, and those were verified
    /// before the rename.
    pub fn open(cfg: &CacheConfig) -> Result<Cache, OpenError> {
        let dir = cfg.dir.clone();
        let blobs_dir = dir.join("sha256");
        let tmp = dir.join("tmp");
        let manifests_dir = dir.join("manifests").join("sha256");
        let tags_dir = dir.join("tags");
        for d in [&blobs_dir, &tmp, &manifests_dir, &tags_dir] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let mut leftovers = 0;
        for e in std::fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                leftovers += 1;
            }
        }
        // Staging directories of airgap imports that were killed; a running import's is
        // locked and stays.
        leftovers += remove_abandoned_stages(&tmp);
        let index = Arc::new(Index::new(cfg.max_size));
        let mut found: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        for e in std::fs::read_dir(&blobs_dir)
            .map_err(io_err(&blobs_dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let valid = crate::oci::Digest::from_sha256_hex(&name).is_some();
            let Ok(meta) = e.metadata() else { continue };
            if !valid || !meta.is_file() {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let used = meta
                .accessed()
                .or_else(|_| meta.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((used, name, meta.len()));
        }
        // Oldest first, so recency survives a restart as well as file times allow.
        found.sort();
        let pins = read_pins(&dir);
        for (_, hex, size) in &found {
            index.insert(hex, *size, pins.contains(hex.as_str()));
        }
        let lock = admin::lock_shared(&dir).map_err(io_err(&dir))?;
        let links_path = dir.join("links.log");
        let links = Links::open(&links_path).map_err(io_err(&links_path))?;
        if leftovers > 0 {
            tracing::info!(
                leftovers,
                "removed unfinished cache files from an earlier run"
            );
        }
        tracing::info!(
            blobs = index.len(),
            bytes = index.total(),
            links = links.len(),
            dir = %dir.display(),
            "cache opened"
        );
        Ok(Cache {
            blobs: Arc::new(BlobStore::new(blobs_dir, tmp.clone(), index)),
            manifests: ManifestStore::new(manifests_dir, tmp.clone()),
            tags: TagStore::new(tags_dir, tmp),
            links,
            _lock: lock,
            dir,
        })
    }

    /// Records blobs as pinned (imported from an airgap bundle): eviction never removes
    /// them, in this run or a later one.
    pub fn pin(&self, hexes: &[String]) -> std::io::Result<()> {
        add_pins(&self.dir, hexes)?;
        for hex in hexes {
            if let Some((size, _guard)) = self.blobs.index().acquire(hex) {
                self.blobs.index().insert(hex, size, true);
            }
        }
        Ok(())
    }

    /// Whether the blob is cached. A blob the index does not know may still have been put
    /// on disk by `berth airgap import` while this server runs: files under `sha256/` are
    /// renamed in only once verified, so such a file is adopted as it is. A miss costs one
    /// stat(2), next to the upstream fetch that follows it.
    pub fn has_blob(&self, d: &crate::oci::Digest) -> bool {
        if self.blobs.is_cached(d) {
            return true;
        }
        let path = self.blobs.path(d);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                let hex = d.hex();
                let pinned = read_pins(&self.dir).contains(hex);
                self.blobs.index().insert(hex, meta.len(), pinned);
                tracing::info!(digest = %d, pinned, "adopted a blob put in the cache by another process");
                true
            }
            _ => false,
        }
    }

    /// Starts background eviction; call from inside the runtime.
    pub fn start_evictor(&self) {
        let index = self.blobs.index().clone();
        let root = self.dir.join("sha256");
        tokio::spawn(index.run_evictor(root));
    }
}

/// The file that lists pinned blobs (one hex digest a line), kept across restarts.
pub fn pins_path(dir: &Path) -> PathBuf {
    dir.join("pins")
}

/// Reads the pinned blobs; a missing file pins nothing and a torn last line is ignored.
pub fn read_pins(dir: &Path) -> std::collections::HashSet<String> {
    std::fs::read_to_string(pins_path(dir))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

/// Appends blobs to the pins file (without a running `Cache`: `berth airgap import` seeds a
/// cache directory that a later `berth serve` opens).
pub fn add_pins(dir: &Path, hexes: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    let known = read_pins(dir);
    let mut fresh = String::new();
    for h in hexes {
        if !known.contains(h) && !fresh.contains(h.as_str()) {
            fresh.push_str(h);
            fresh.push('\n');
        }
    }
    if fresh.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pins_path(dir))?;
    // One write: O_APPEND keeps it whole next to another writer's.
    f.write_all(fresh.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CacheConfig {
            dir: dir.path().to_path_buf(),
            max_size: Some(1),
            tag_ttl: std::time::Duration::from_secs(300),
            offline: false,
        };
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let c = Cache::open(&cfg).unwrap();
        std::fs::write(dir.path().join("sha256").join(&a), b"aa").unwrap();
        std::fs::write(dir.path().join("sha256").join(&b), b"bb").unwrap();
        drop(c);
        add_pins(dir.path(), std::slice::from_ref(&a)).unwrap();
        add_pins(dir.path(), std::slice::from_ref(&a)).unwrap();
        assert_eq!(
            std::fs::read_to_string(pins_path(dir.path())).unwrap(),
            format!("{a}\n")
        );
        let c = Cache::open(&cfg).unwrap();
        assert!(c.blobs.index().is_pinned(&a));
        assert!(!c.blobs.index().is_pinned(&b));
        c.pin(std::slice::from_ref(&b)).unwrap();
        drop(c);
        let c = Cache::open(&cfg).unwrap();
        assert!(c.blobs.index().is_pinned(&b));
    }
}
