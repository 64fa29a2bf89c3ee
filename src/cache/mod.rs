//! The pull-through cache: blobs (content-addressed, single-flight fills, LRU eviction
//! under a size cap, pins that eviction never removes) on top of the content model
//! (`content/`: repository links, manifests, tag answers) and the storage seam. It never
//! sees an HTTP type.

pub mod admin;
pub mod blob;
pub mod index;
pub mod metrics;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::CacheConfig;
use crate::content::{Legacy, Links, ManifestStore, TagStore};
use crate::storage::fs::FsBackend;
use crate::storage::{ObjectKey, ObjectStore, Storage, StorageError};

pub use blob::{Begin, BlobStore, FillKey, Source};
pub use index::Index;
pub use metrics::CacheMetrics;

/// Kept here for the callers that name temp files outside the cache (airgap export).
pub(crate) use crate::storage::fs::temp_name;

pub struct Cache {
    pub dir: PathBuf,
    /// Shared lock held while serving a cache directory, so `cache purge` cannot run
    /// underneath.
    _lock: Option<std::fs::File>,
    pub storage: Storage,
    pub blobs: Arc<BlobStore>,
    pub manifests: ManifestStore,
    pub tags: TagStore,
    pub links: Links,
    /// `berth_cache_*`: counted by the registry service, gauges set by the index and fills.
    pub metrics: CacheMetrics,
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

fn storage_err(path: &Path) -> impl FnOnce(StorageError) -> OpenError + '_ {
    move |e| OpenError {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

impl Cache {
    /// Opens (or creates) the cache directory: the filesystem backend removes what a crash
    /// left behind, and the blob index is rebuilt from what is stored. Only committed blobs
    /// count, and those were verified before they were committed.
    /// `legacy` reads links and tag answers stored before the content model
    /// ([`legacy_of`] the configuration).
    pub fn open(
        cfg: &CacheConfig,
        legacy: Legacy,
        metrics: CacheMetrics,
    ) -> Result<Cache, OpenError> {
        Self::open_with(cfg, legacy, metrics, true)
    }

    /// As [`Cache::open`], but for a process beside a running server (`berth gc`): nothing
    /// is cleaned up, since the unfinished files are the server's uploads in progress.
    pub fn open_beside(
        cfg: &CacheConfig,
        legacy: Legacy,
        metrics: CacheMetrics,
    ) -> Result<Cache, OpenError> {
        Self::open_with(cfg, legacy, metrics, false)
    }

    fn open_with(
        cfg: &CacheConfig,
        legacy: Legacy,
        metrics: CacheMetrics,
        clean: bool,
    ) -> Result<Cache, OpenError> {
        let dir = cfg.dir.clone();
        let (fs, recovered) = if clean {
            FsBackend::open(&dir).map_err(|(path, source)| OpenError { path, source })?
        } else {
            let fs =
                FsBackend::create(&dir).map_err(|(path, source)| OpenError { path, source })?;
            (fs, crate::storage::fs::Recovered::default())
        };
        let found = fs.scan().map_err(io_err(&dir))?;
        let pins = fs.get_sync(&ObjectKey::Pins).unwrap_or_default();
        let lock = admin::lock_shared(&dir).map_err(io_err(&dir))?;
        let links_log = match fs.get_sync(&ObjectKey::Links) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(storage_err(&dir)(e)),
        };
        if recovered.leftovers > 0 {
            tracing::info!(
                leftovers = recovered.leftovers,
                "removed unfinished cache files from an earlier run"
            );
        }
        let fs = Arc::new(fs);
        let storage = Storage {
            blobs: fs.clone(),
            objects: fs,
        };
        let links = Links::from_log(storage.objects.clone(), legacy, &links_log);
        Ok(Cache::assemble(
            cfg,
            storage,
            found,
            &pins,
            links,
            Some(lock),
            metrics,
        ))
    }

    /// A cache on any storage backend (the in-memory one in tests; an object store next):
    /// the index is rebuilt from the backend's list of blobs. No local lock: `cache purge`
    /// is a tool for a cache directory.
    pub async fn on(
        cfg: &CacheConfig,
        storage: Storage,
        legacy: Legacy,
        metrics: CacheMetrics,
    ) -> Result<Cache, StorageError> {
        let found = storage.blobs.list().await?;
        let pins = match storage.objects.get(&ObjectKey::Pins).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => Bytes::new(),
            Err(e) => return Err(e),
        };
        let links_log = match storage.objects.get(&ObjectKey::Links).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => Bytes::new(),
            Err(e) => return Err(e),
        };
        let links = Links::from_log(storage.objects.clone(), legacy, &links_log);
        Ok(Cache::assemble(
            cfg, storage, found, &pins, links, None, metrics,
        ))
    }

    fn assemble(
        cfg: &CacheConfig,
        storage: Storage,
        found: Vec<(crate::oci::Digest, crate::storage::BlobInfo)>,
        pins: &[u8],
        links: Links,
        lock: Option<std::fs::File>,
        metrics: CacheMetrics,
    ) -> Cache {
        let index = Arc::new(Index::new(cfg.max_size, metrics.clone()));
        let mut found: Vec<(std::time::SystemTime, String, u64)> = found
            .into_iter()
            .map(|(d, info)| (info.used, d.hex().to_string(), info.size))
            .collect();
        // Oldest first, so recency survives a restart as well as file times allow.
        found.sort();
        let pins = parse_pins(pins);
        for (_, hex, size) in &found {
            index.insert(hex, *size, pins.contains(hex.as_str()));
        }
        tracing::info!(
            blobs = index.len(),
            bytes = index.total(),
            links = links.len(),
            dir = %cfg.dir.display(),
            "cache opened"
        );
        Cache {
            blobs: Arc::new(BlobStore::new(storage.blobs.clone(), index)),
            manifests: ManifestStore::new(storage.objects.clone()),
            tags: TagStore::new(storage.objects.clone(), links.legacy().clone()),
            links,
            storage,
            _lock: lock,
            dir: cfg.dir.clone(),
            metrics,
        }
    }

    /// Records blobs as pinned (imported from an airgap bundle): eviction never removes
    /// them, in this run or a later one.
    pub async fn pin(&self, hexes: &[String]) -> Result<(), StorageError> {
        add_pins(&*self.storage.objects, hexes).await?;
        for hex in hexes {
            if let Some((size, _guard)) = self.blobs.index().acquire(hex) {
                self.blobs.index().insert(hex, size, true);
            }
        }
        Ok(())
    }

    /// Whether the blob is cached. A blob the index does not know may still have been
    /// stored by `berth airgap import` while this server runs: blobs are committed only
    /// once verified, so such a blob is adopted as it is. A miss costs one stat, next to
    /// the upstream fetch that follows it.
    pub async fn has_blob(&self, d: &crate::oci::Digest) -> bool {
        if self.blobs.is_cached(d) {
            return true;
        }
        match self.storage.blobs.stat(d).await {
            Ok(info) => {
                let hex = d.hex();
                let pinned = read_pins(&*self.storage.objects).await.contains(hex);
                self.blobs.index().insert(hex, info.size, pinned);
                tracing::info!(digest = %d, pinned, "adopted a blob put in the cache by another process");
                true
            }
            Err(_) => false,
        }
    }

    /// Starts background eviction; call from inside the runtime.
    pub fn start_evictor(&self) {
        let index = self.blobs.index().clone();
        tokio::spawn(index.run_evictor(self.storage.blobs.clone()));
    }
}

/// How links and tag answers stored before the content model (keyed by upstream name)
/// map to repositories: an upstream's content is its apps' content, as the configuration
/// says now.
pub fn legacy_of(tenants: &dyn crate::tenancy::TenantStore) -> Legacy {
    Legacy::new(tenants.apps().into_iter().flat_map(|app| {
        app.upstreams
            .iter()
            .map(move |u| (u.name.clone(), app.slug.clone(), u.host.clone()))
    }))
}

/// The pinned blobs in a pins log (one hex digest a line); a torn last line is ignored.
pub fn parse_pins(bytes: &[u8]) -> HashSet<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

/// Reads the pinned blobs; a missing log pins nothing.
pub async fn read_pins(objects: &dyn ObjectStore) -> HashSet<String> {
    parse_pins(&objects.get(&ObjectKey::Pins).await.unwrap_or_default())
}

/// Appends blobs to the pins log, durably (without a running `Cache`: `berth airgap
/// import` seeds a cache directory that a later `berth serve` opens).
pub async fn add_pins(objects: &dyn ObjectStore, hexes: &[String]) -> Result<(), StorageError> {
    let known = read_pins(objects).await;
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
    objects
        .append(&ObjectKey::Pins, Bytes::from(fresh), true)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{accept_key, RepoKey, TagKey};
    use crate::oci::Digest;
    use crate::storage::layout;

    fn cfg(dir: &Path) -> CacheConfig {
        CacheConfig {
            dir: dir.to_path_buf(),
            max_size: Some(1),
            tag_ttl: std::time::Duration::from_secs(300),
            offline: false,
        }
    }

    async fn put_blob(c: &Cache, data: &[u8]) -> String {
        let s = c.storage.blobs.stage().unwrap();
        s.append(data).unwrap();
        let d = Digest::sha256_of(data);
        s.commit(&d).await.unwrap();
        d.hex().to_string()
    }

    #[tokio::test]
    async fn pins_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let c = Cache::open(&cfg, Legacy::default(), CacheMetrics::default()).unwrap();
        let a = put_blob(&c, b"aa").await;
        let b = put_blob(&c, b"bb").await;
        let objects = c.storage.objects.clone();
        drop(c);
        add_pins(&*objects, std::slice::from_ref(&a)).await.unwrap();
        add_pins(&*objects, std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(
            objects.get(&ObjectKey::Pins).await.unwrap(),
            format!("{a}\n")
        );
        let c = Cache::open(&cfg, Legacy::default(), CacheMetrics::default()).unwrap();
        assert!(c.blobs.index().is_pinned(&a));
        assert!(!c.blobs.index().is_pinned(&b));
        c.pin(std::slice::from_ref(&b)).await.unwrap();
        drop(c);
        let c = Cache::open(&cfg, Legacy::default(), CacheMetrics::default()).unwrap();
        assert!(c.blobs.index().is_pinned(&b));
    }

    /// The cache on the in-memory backend: what one instance stores, pins and links, the
    /// next one on the same storage (a restart, or another replica) finds.
    #[tokio::test]
    async fn a_cache_on_another_backend_keeps_blobs_pins_and_links() {
        let storage = Storage::memory();
        let cfg = cfg(Path::new("/nonexistent"));
        let c = Cache::on(
            &cfg,
            storage.clone(),
            Legacy::default(),
            CacheMetrics::default(),
        )
        .await
        .unwrap();
        let a = put_blob(&c, b"pinned").await;
        let b = put_blob(&c, b"linked").await;
        c.pin(std::slice::from_ref(&a)).await.unwrap();
        let d: Digest = format!("sha256:{b}").parse().unwrap();
        let api = RepoKey::proxied("acme", "quay.io", "acme/api");
        c.links.add(&api, [&d]).await;
        // Stored by someone else: the index learns of it on the first request.
        assert!(!c.blobs.is_cached(&d));
        assert!(c.has_blob(&d).await);
        drop(c);
        let c = Cache::on(&cfg, storage, Legacy::default(), CacheMetrics::default())
            .await
            .unwrap();
        assert_eq!(c.blobs.index().len(), 2);
        assert!(c.blobs.index().is_pinned(&a));
        assert!(!c.blobs.index().is_pinned(&b));
        assert!(c.links.contains(&api, &d).await);
        let opened = c.blobs.open(&d).await.unwrap();
        assert!(opened.local.is_none(), "memory has no local files");
        assert_eq!(opened.size, 6);
    }

    /// A cache directory as the code before the content model left it (written here with
    /// literal paths: they are the on-disk format being read) is served: blobs indexed and
    /// pinned, manifests found, and links and tag answers keyed by upstream found for each
    /// app that lists the upstream — for no other app, nor another repository.
    #[tokio::test]
    async fn an_existing_cache_directory_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let blob = b"a layer".to_vec();
        let bd = Digest::sha256_of(&blob);
        let manifest = format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{bd}"}}]}}"#);
        let md = Digest::sha256_of(manifest.as_bytes());
        let accept = accept_key(crate::oci::DEFAULT_MANIFEST_ACCEPT);
        for sub in ["sha256", "tmp", "manifests/sha256", "tags/hub/acme/api/v1"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("sha256").join(bd.hex()), &blob).unwrap();
        std::fs::write(root.join("manifests/sha256").join(md.hex()), &manifest).unwrap();
        std::fs::write(
            root.join("manifests/sha256")
                .join(format!("{}.type", md.hex())),
            "application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
        std::fs::write(
            root.join(format!("tags/hub/acme/api/v1/{accept}.json")),
            format!(
                r#"{{"digest":"{md}","media_type":"application/vnd.oci.image.manifest.v1+json","length":{},"checked_ms":1}}"#,
                manifest.len()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("links.log"),
            format!("hub\tacme/api\t{md}\nhub\tacme/api\t{bd}\n"),
        )
        .unwrap();
        std::fs::write(root.join("pins"), format!("{}\n", bd.hex())).unwrap();
        std::fs::write(root.join("tmp").join("9-9-9.part"), b"half a fill").unwrap();

        let mut cfg = cfg(root);
        cfg.max_size = None;
        // `hub` serves two apps; `third` has an upstream of its own.
        let legacy = Legacy::new([
            ("hub".into(), "acme".into(), "docker.io".into()),
            ("hub".into(), "other".into(), "docker.io".into()),
            ("own".into(), "third".into(), "docker.io".into()),
        ]);
        let c = Cache::open(&cfg, legacy, CacheMetrics::default()).unwrap();
        let api = |app| RepoKey::proxied(app, "docker.io", "acme/api");
        assert!(c.has_blob(&bd).await);
        assert!(c.blobs.index().is_pinned(bd.hex()));
        let opened = c.blobs.open(&bd).await.expect("the blob is served");
        assert_eq!(opened.size, blob.len() as u64);
        assert!(opened.local.is_some(), "and sent as a local file");
        let m = c.manifests.get(&md).await.expect("the manifest is served");
        assert_eq!(m.bytes, manifest.as_bytes());
        assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
        let tag = |app| TagKey::new(&api(app), "v1", crate::oci::DEFAULT_MANIFEST_ACCEPT);
        assert!(c.tags.get(&tag("third")).await.is_none());
        let t = c
            .tags
            .get(&tag("acme"))
            .await
            .expect("the tag answer is served");
        assert_eq!(t.digest, md);
        let t = c.tags.get(&tag("other")).await.expect("to each app of hub");
        assert_eq!(t.digest, md);
        for app in ["acme", "other"] {
            assert!(c.links.contains(&api(app), &bd).await);
            assert!(c.links.contains(&api(app), &md).await);
        }
        assert!(!c.links.contains(&api("third"), &bd).await);
        assert!(!c.links.contains(&api("third"), &md).await);
        let web = RepoKey::proxied("acme", "docker.io", "acme/web");
        assert!(!c.links.contains(&web, &bd).await);
        assert!(!layout::tmp_dir(root).join("9-9-9.part").exists());
    }
}
