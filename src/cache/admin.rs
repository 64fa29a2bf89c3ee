//! Offline cache administration for the CLI: `berth cache stats` (read-only, safe while
//! berth serves) and `berth cache purge` (needs the cache to itself: running servers hold a
//! shared lock on `<cache.dir>/lock`, purge takes it exclusively).

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use crate::content::{Legacy, Links, RepoKey, TagStore};
use crate::storage::fs::FsBackend;
use crate::storage::{layout, ObjectKey, ObjectPrefix, Storage, StorageError};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub manifests: u64,
    pub tags: u64,
    pub links: u64,
    pub partial_files: u64,
}

/// Runs an offline operation on a runtime of its own (the CLI calls these outside one).
fn block_on<F: Future>(f: F) -> std::io::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f))
}

fn fs_storage(dir: &Path) -> (Arc<FsBackend>, Storage) {
    let fs = Arc::new(FsBackend::at(dir));
    let storage = Storage {
        blobs: fs.clone(),
        objects: fs.clone(),
    };
    (fs, storage)
}

pub fn stats(dir: &Path) -> std::io::Result<CacheStats> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a cache directory", dir.display()),
        ));
    }
    let (fs, storage) = fs_storage(dir);
    let mut s = block_on(stats_of(&storage))??;
    s.partial_files = fs.staged_files() as u64;
    Ok(s)
}

/// Counts what a store holds (staged writes are the backend's own business).
pub async fn stats_of(storage: &Storage) -> Result<CacheStats, StorageError> {
    let blobs = storage.blobs.list().await?;
    let manifests = storage.objects.list(&ObjectPrefix::Manifests).await?;
    let links = match storage.objects.get(&ObjectKey::Links).await {
        Ok(b) => String::from_utf8_lossy(&b)
            .lines()
            .collect::<HashSet<_>>()
            .len() as u64,
        Err(e) if e.is_not_found() => 0,
        Err(e) => return Err(e),
    };
    Ok(CacheStats {
        blobs: blobs.len() as u64,
        blob_bytes: blobs.iter().map(|(_, i)| i.size).sum(),
        manifests: manifests
            .iter()
            .filter(|k| matches!(k, ObjectKey::Manifest(_)))
            .count() as u64,
        tags: (storage.objects.list(&ObjectPrefix::Tags).await?.len()
            + storage.objects.list(&ObjectPrefix::LegacyTags).await?.len()) as u64,
        links,
        partial_files: 0,
    })
}

/// Takes a shared lock for a serving process; dropped with the returned file.
pub fn lock_shared(dir: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout::lock_file(dir))?;
    f.lock_shared()?;
    Ok(f)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub links: usize,
    pub tags: usize,
    pub blobs: usize,
    pub manifests: usize,
    pub bytes: u64,
}

/// What `cache purge` is asked about each repository: its app, and its repository (the
/// name without the host). The app is `None` for content stored before the content model
/// under an upstream no app lists any more.
pub type Matcher<'a> = &'a dyn Fn(Option<&str>, &str) -> bool;

/// Forgets the repositories `matches` selects, then deletes every blob and manifest no
/// remaining repository links to. `legacy` reads what was stored before the content model.
pub fn purge(dir: &Path, legacy: Legacy, matches: Matcher<'_>) -> Result<Purged, String> {
    let lock_path = layout::lock_file(dir);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        return Err("a running berth uses this cache; stop it before purging".into());
    }
    let (_, storage) = fs_storage(dir);
    let out = block_on(purge_in(&storage, legacy, matches)).map_err(|e| e.to_string())?;
    drop(lock);
    out
}

/// [`purge`] on a store nobody else writes to meanwhile.
pub async fn purge_in(
    storage: &Storage,
    legacy: Legacy,
    matches: Matcher<'_>,
) -> Result<Purged, String> {
    let links = Links::open(storage.objects.clone(), legacy.clone())
        .await
        .map_err(|e| format!("links.log: {e}"))?;
    // Old tag answers first become each repository's own, so they are matched like the
    // rest (one upstream's answer may serve an app that is purged and one that is not).
    TagStore::new(storage.objects.clone(), legacy)
        .migrate_all()
        .await;
    let mut out = Purged {
        links: links.remove_matching(matches),
        ..Purged::default()
    };
    links
        .compact()
        .await
        .map_err(|e| format!("rewriting links.log: {e}"))?;
    let objects = &storage.objects;
    for key in objects.list(&ObjectPrefix::Tags).await.unwrap_or_default() {
        if let ObjectKey::TagAnswer(t) = &key {
            let Some(repo) = RepoKey::from_path(&t.repo) else {
                continue;
            };
            if matches(Some(repo.app.as_str()), repo.repository())
                && objects.delete(&key).await.is_ok()
            {
                out.tags += 1;
            }
        }
    }
    // Those no configured upstream explains are left in the old format.
    for key in objects
        .list(&ObjectPrefix::LegacyTags)
        .await
        .unwrap_or_default()
    {
        if let ObjectKey::LegacyTagAnswer(t) = &key {
            if matches(None, &t.repository) && objects.delete(&key).await.is_ok() {
                out.tags += 1;
            }
        }
    }
    let keep = links.digests();
    let kept = |d: &crate::oci::Digest| keep.contains(&d.to_string());
    for (d, info) in storage.blobs.list().await.unwrap_or_default() {
        if !kept(&d) && storage.blobs.delete(&d).await.is_ok() {
            out.blobs += 1;
            out.bytes += info.size;
        }
    }
    for key in objects
        .list(&ObjectPrefix::Manifests)
        .await
        .unwrap_or_default()
    {
        let (d, counts) = match &key {
            ObjectKey::Manifest(d) => (d, true),
            ObjectKey::ManifestMediaType(d) => (d, false),
            _ => continue,
        };
        if !kept(d) && objects.delete(&key).await.is_ok() && counts {
            out.manifests += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use crate::storage::{BlobBackend, LegacyTagPath, ObjectStore, TagPath};
    use bytes::Bytes;

    fn repo(repository: &str) -> RepoKey {
        RepoKey::proxied("acme", "quay.io", repository)
    }

    fn tag(repository: &str) -> ObjectKey {
        ObjectKey::TagAnswer(TagPath {
            repo: repo(repository).path(),
            tag: "1".into(),
            accept: "k".into(),
        })
    }

    /// `--app acme --repo acme/api`, as the CLI builds it.
    fn api(app: Option<&str>, r: &str) -> bool {
        app == Some("acme") && r == "acme/api"
    }

    #[test]
    fn purge_removes_only_unlinked_content() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (fs, _) = FsBackend::open(dir).unwrap();
        let (a, b) = (Digest::sha256_of(b"shared"), Digest::sha256_of(b"api only"));
        block_on(async {
            for data in [&b"shared"[..], b"api only"] {
                let s = fs.stage().unwrap();
                s.append(data).unwrap();
                s.commit(&Digest::sha256_of(data)).await.unwrap();
            }
            fs.put(&tag("acme/api"), Bytes::from_static(b"{}"))
                .await
                .unwrap();
            fs.put(&tag("acme/web"), Bytes::from_static(b"{}"))
                .await
                .unwrap();
            let l = Links::open(Arc::new(FsBackend::at(dir)), Legacy::default())
                .await
                .unwrap();
            l.add(&repo("acme/api"), [&a, &b]).await;
            l.add(&repo("acme/web"), [&a]).await;
        })
        .unwrap();
        let st = stats(dir).unwrap();
        assert_eq!((st.blobs, st.tags, st.links), (2, 2, 3));
        {
            // A serving process holds the cache: purge must refuse.
            let _held = lock_shared(dir).unwrap();
            assert!(purge(dir, Legacy::default(), &api).is_err());
        }
        let p = purge(dir, Legacy::default(), &api).unwrap();
        assert_eq!((p.links, p.tags, p.blobs), (2, 1, 1));
        block_on(async {
            assert!(fs.stat(&a).await.is_ok(), "still linked from acme/web");
            assert!(fs.stat(&b).await.unwrap_err().is_not_found());
            assert!(fs.get(&tag("acme/web")).await.is_ok());
            assert!(fs.get(&tag("acme/api")).await.is_err());
        })
        .unwrap();
    }

    /// A cache of the format before the content model, where upstream `up` serves apps
    /// `acme` and `other`: purging acme's repository leaves other's links and tag answer.
    #[test]
    fn purge_of_one_app_keeps_anothers_old_content() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (fs, _) = FsBackend::open(dir).unwrap();
        let d = Digest::sha256_of(b"shared");
        let old_tag = ObjectKey::LegacyTagAnswer(LegacyTagPath {
            upstream: "up".into(),
            repository: "acme/api".into(),
            tag: "1".into(),
            accept: "k".into(),
        });
        block_on(async {
            let s = fs.stage().unwrap();
            s.append(b"shared").unwrap();
            s.commit(&d).await.unwrap();
            let entry = format!(
                r#"{{"digest":"{d}","media_type":"application/vnd.oci.image.manifest.v1+json","length":6,"checked_ms":1}}"#
            );
            fs.put(&old_tag, Bytes::from(entry)).await.unwrap();
            fs.append(&ObjectKey::Links, Bytes::from(format!("up	acme/api	{d}
")), true)
                .await
                .unwrap();
        })
        .unwrap();
        let legacy = || {
            Legacy::new([
                ("up".into(), "acme".into(), "quay.io".into()),
                ("up".into(), "other".into(), "quay.io".into()),
            ])
        };
        let p = purge(dir, legacy(), &api).unwrap();
        assert_eq!((p.links, p.tags, p.blobs), (1, 1, 0));
        block_on(async {
            assert!(fs.stat(&d).await.is_ok(), "still linked from other");
            let other = RepoKey::proxied("other", "quay.io", "acme/api");
            let l = Links::open(Arc::new(FsBackend::at(dir)), Legacy::default())
                .await
                .unwrap();
            assert!(l.contains(&other, &d).await);
            assert!(!l.contains(&repo("acme/api"), &d).await);
            let tags = TagStore::new(Arc::new(FsBackend::at(dir)), Legacy::default());
            assert_eq!(tags.entries(&other, "1").await.len(), 1);
            assert!(tags.entries(&repo("acme/api"), "1").await.is_empty());
        })
        .unwrap();
    }
}
