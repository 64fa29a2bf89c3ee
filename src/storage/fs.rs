//! The filesystem backend: today's cache directory, unchanged (paths from [`layout`]).
//! Blobs are staged in `tmp/`, hashed as they are appended, and committed with fsync then
//! rename, so a name never points at missing or unverified bytes; committed blobs are
//! handed out as local files (sendfile). Small objects are replaced by write-then-rename
//! and the two logs appended with `O_APPEND`, which keeps another process's appends (an
//! airgap import next to a running server) whole.

use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::layout::{self, ObjectKey, ObjectPrefix};
use super::{
    BlobBackend, BlobInfo, BoxFut, LocalFile, ObjectStore, Result, StagedBlob, StorageError,
};
use crate::oci::Digest;

/// Below this much free space (or 1% of the filesystem, if less) the disk counts as full:
/// a fill could not finish. A small probe write can still succeed then, so free space is
/// checked on its own.
const MIN_FREE: u64 = 64 * 1024 * 1024;

/// A name no other temp file of this process or an earlier one can have.
pub fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}-{n}.part", std::process::id())
}

pub struct FsBackend {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
}

/// What opening a directory cleaned up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Temp files, abandoned import stages and junk names in the blob directory removed.
    pub leftovers: usize,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::io("storage task", std::io::Error::other(e)))?
}

impl FsBackend {
    /// Opens (or creates) a cache directory: creates the layout's directories, removes temp
    /// files a crash left behind, staging directories no import holds, and anything in the
    /// blob directory that is not a blob name. Only renamed-in files count as blobs, and
    /// those were verified before the rename. An error names the path that failed.
    pub fn open(
        root: &Path,
    ) -> std::result::Result<(FsBackend, Recovered), (PathBuf, std::io::Error)> {
        let b = FsBackend::create(root)?;
        let mut leftovers = 0;
        for e in std::fs::read_dir(&b.tmp)
            .map_err(|e| (b.tmp.clone(), e))?
            .flatten()
        {
            if std::fs::remove_file(e.path()).is_ok() {
                leftovers += 1;
            }
        }
        // Staging directories of airgap imports that were killed; a running import's is
        // locked and stays.
        leftovers += remove_abandoned_stages(&b.tmp);
        for e in std::fs::read_dir(&b.blobs)
            .map_err(|e| (b.blobs.clone(), e))?
            .flatten()
        {
            let name = e.file_name();
            let is_blob = layout::blob_from_name(&name.to_string_lossy()).is_some()
                && e.metadata().is_ok_and(|m| m.is_file());
            if !is_blob && std::fs::remove_file(e.path()).is_ok() {
                leftovers += 1;
            }
        }
        Ok((b, Recovered { leftovers }))
    }

    /// Creates the layout's directories but cleans nothing: for a process that writes into
    /// a directory a server may be using (`berth airgap import`), whose temp files are not
    /// leftovers.
    pub fn create(root: &Path) -> std::result::Result<FsBackend, (PathBuf, std::io::Error)> {
        for rel in layout::local_dirs() {
            let d = layout::local(root, rel);
            std::fs::create_dir_all(&d).map_err(|e| (d.clone(), e))?;
        }
        Ok(FsBackend::at(root))
    }

    /// A backend on a directory without creating or cleaning anything (offline tools).
    pub fn at(root: &Path) -> FsBackend {
        FsBackend {
            root: root.to_path_buf(),
            blobs: layout::local(root, layout::blob_dir()),
            tmp: layout::tmp_dir(root),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        layout::local(&self.root, &layout::blob(d))
    }

    fn object_path(&self, key: &ObjectKey) -> PathBuf {
        layout::local(&self.root, &key.path())
    }

    /// Every committed blob, read synchronously (startup, before the runtime serves).
    pub fn scan(&self) -> std::io::Result<Vec<(Digest, BlobInfo)>> {
        let mut out = Vec::new();
        // Listing what is not there yet is an empty list, as on an object store (`cache
        // stats` on a directory no server has opened).
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries.flatten() {
            let Some(d) = layout::blob_from_name(&e.file_name().to_string_lossy()) else {
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_file() {
                out.push((d, info(&meta)));
            }
        }
        Ok(out)
    }

    /// Reads a small object synchronously (startup and offline tools).
    pub fn get_sync(&self, key: &ObjectKey) -> Result<Vec<u8>> {
        std::fs::read(self.object_path(key)).map_err(|e| StorageError::io(key.path(), e))
    }

    /// Appends to a log synchronously (offline tools).
    pub fn append_sync(&self, key: &ObjectKey, bytes: &[u8], sync: bool) -> Result<()> {
        append_file(&self.object_path(key), bytes, sync)
            .map_err(|e| StorageError::io(key.path(), e))
    }

    /// Replaces a small object synchronously (offline tools).
    pub fn put_sync(&self, key: &ObjectKey, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.tmp, &self.object_path(key), bytes)
            .map_err(|e| StorageError::io(key.path(), e))
    }

    /// Files in the staging directory (an interrupted write or a running one).
    pub fn staged_files(&self) -> usize {
        let mut n = 0;
        walk(&self.tmp, &mut |_, _| n += 1);
        n
    }
}

fn info(meta: &std::fs::Metadata) -> BlobInfo {
    BlobInfo {
        size: meta.len(),
        used: meta
            .accessed()
            .or_else(|_| meta.modified())
            .unwrap_or(std::time::UNIX_EPOCH),
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            walk(&e.path(), f);
        } else {
            f(&e.path(), &meta);
        }
    }
}

fn append_file(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write: O_APPEND keeps it whole next to another writer's.
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// Writes a file so that readers see either nothing or the whole of it.
fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_dir.join(temp_name());
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes staging directories that no import holds any more (one killed with SIGKILL, or
/// a crash). Returns how many went.
pub fn remove_abandoned_stages(tmp: &Path) -> usize {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        // The hidden name too: an import that died between creating and renaming it. One
        // caught before it is locked fails its rename and says so; nothing is lost.
        if !(name.starts_with(layout::STAGE_PREFIX)
            || name
                .strip_prefix('.')
                .is_some_and(|n| n.starts_with(layout::STAGE_PREFIX)))
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

/// A staged blob: a temp file in `tmp/`, written at its end and read anywhere.
struct FsStaged {
    inner: Arc<StagedInner>,
}

struct StagedInner {
    file: std::fs::File,
    path: PathBuf,
    blobs: PathBuf,
    hasher: Mutex<Sha256>,
    len: AtomicU64,
    /// Committed or aborted: the temp name is no longer ours to remove.
    finished: AtomicBool,
}

impl StagedInner {
    fn hasher(&self) -> std::sync::MutexGuard<'_, Sha256> {
        self.hasher.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remove(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for StagedInner {
    fn drop(&mut self) {
        self.remove();
    }
}

impl StagedBlob for FsStaged {
    fn append(&self, bytes: &[u8]) -> Result<()> {
        let mut h = self.inner.hasher();
        // Each chunk is written right after it is hashed, while it is still in the CPU's
        // cache.
        h.update(bytes);
        let at = self.inner.len.load(Ordering::Acquire);
        self.inner
            .file
            .write_all_at(bytes, at)
            .map_err(|e| StorageError::io("writing a staged blob", e))?;
        self.inner
            .len
            .store(at + bytes.len() as u64, Ordering::Release);
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner
            .file
            .read_exact_at(buf, offset)
            .map_err(|e| StorageError::io("reading a staged blob", e))
    }

    fn len(&self) -> u64 {
        self.inner.len.load(Ordering::Acquire)
    }

    fn digest(&self) -> Digest {
        Digest::from_sha256(&self.inner.hasher().clone().finalize())
    }

    fn commit<'a>(&'a self, expected: &'a Digest) -> BoxFut<'a, Result<()>> {
        let inner = self.inner.clone();
        let expected = expected.clone();
        Box::pin(blocking(move || {
            let got = Digest::from_sha256(&inner.hasher().clone().finalize());
            if got != expected || !layout::is_storable(&expected) {
                inner.remove();
                return Err(StorageError::DigestMismatch { expected, got });
            }
            if inner.finished.load(Ordering::Acquire) {
                return Err(StorageError::NotFound(
                    "staged blob (already finished)".into(),
                ));
            }
            let dest = inner.blobs.join(expected.hex());
            // fsync before rename: after a power cut the name must never point at missing
            // bytes.
            let published = inner
                .file
                .sync_data()
                .and_then(|_| std::fs::rename(&inner.path, &dest));
            match published {
                Ok(()) => {
                    inner.finished.store(true, Ordering::Release);
                    Ok(())
                }
                Err(e) => {
                    inner.remove();
                    Err(StorageError::io(
                        format!("publishing {}", dest.display()),
                        e,
                    ))
                }
            }
        }))
    }

    fn abort(&self) {
        self.inner.remove();
    }
}

impl BlobBackend for FsBackend {
    fn stage(&self) -> Result<Arc<dyn StagedBlob>> {
        let path = self.tmp.join(temp_name());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StorageError::io(path.display().to_string(), e))?;
        Ok(Arc::new(FsStaged {
            inner: Arc::new(StagedInner {
                file,
                path,
                blobs: self.blobs.clone(),
                hasher: Mutex::new(Sha256::new()),
                len: AtomicU64::new(0),
                finished: AtomicBool::new(false),
            }),
        }))
    }

    fn stat<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<BlobInfo>> {
        // One stat(2), inline: cheaper than a trip to the blocking pool.
        Box::pin(async move {
            let p = self.blob_path(d);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() => Ok(info(&m)),
                Ok(_) => Err(StorageError::NotFound(d.to_string())),
                Err(e) => Err(StorageError::io(d.to_string(), e)),
            }
        })
    }

    fn local_file<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<Option<LocalFile>>> {
        // open(2) inline, as the serving path always did.
        Box::pin(async move {
            std::fs::File::open(self.blob_path(d))
                .map(|f| Some(LocalFile(Arc::new(f))))
                .map_err(|e| StorageError::io(d.to_string(), e))
        })
    }

    fn read<'a>(&'a self, d: &'a Digest, offset: u64, len: usize) -> BoxFut<'a, Result<Bytes>> {
        let path = self.blob_path(d);
        let what = d.to_string();
        Box::pin(blocking(move || {
            let f = std::fs::File::open(&path).map_err(|e| StorageError::io(&what, e))?;
            let mut buf = vec![0; len];
            f.read_exact_at(&mut buf, offset)
                .map_err(|e| StorageError::io(&what, e))?;
            Ok(Bytes::from(buf))
        }))
    }

    fn delete<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<()>> {
        let path = self.blob_path(d);
        let what = d.to_string();
        Box::pin(blocking(move || {
            std::fs::remove_file(&path).map_err(|e| StorageError::io(what, e))
        }))
    }

    fn list(&self) -> BoxFut<'_, Result<Vec<(Digest, BlobInfo)>>> {
        let b = FsBackend::at(&self.root);
        Box::pin(blocking(move || {
            b.scan()
                .map_err(|e| StorageError::io(b.blobs.display().to_string(), e))
        }))
    }

    fn adopt_verified<'a>(&'a self, file: &'a Path, d: &'a Digest) -> BoxFut<'a, Result<()>> {
        let dest = self.blob_path(d);
        let file = file.to_path_buf();
        Box::pin(blocking(move || {
            std::fs::rename(&file, &dest)
                .map_err(|e| StorageError::io(dest.display().to_string(), e))
        }))
    }

    fn check_writable(&self) -> BoxFut<'_, Result<()>> {
        let root = self.root.clone();
        Box::pin(blocking(move || check_writable(&root)))
    }

    fn describe(&self) -> String {
        self.blobs.display().to_string()
    }
}

/// A probe write, then free space and inodes.
fn check_writable(root: &Path) -> Result<()> {
    use std::io::ErrorKind;
    let probe = layout::readyz_probe(root);
    if let Err(e) = std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe)) {
        let _ = std::fs::remove_file(&probe);
        return Err(match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => StorageError::Full(e.to_string()),
            _ => StorageError::Io {
                what: probe.display().to_string(),
                source: e,
            },
        });
    }
    let Ok(fs) = rustix::fs::statvfs(root) else {
        // The write worked; a filesystem without statvfs is not a reason to stop serving.
        return Ok(());
    };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    let total = fs.f_blocks.saturating_mul(fs.f_frsize);
    let reserve = MIN_FREE.min(total / 100);
    if free < reserve {
        return Err(StorageError::Full(format!(
            "{free} bytes free of {total} (needs {reserve})"
        )));
    }
    if fs.f_files > 0 && fs.f_favail == 0 {
        return Err(StorageError::Full("no free inodes".into()));
    }
    Ok(())
}

impl ObjectStore for FsBackend {
    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<Bytes>> {
        Box::pin(async move {
            tokio::fs::read(self.object_path(key))
                .await
                .map(Bytes::from)
                .map_err(|e| StorageError::io(key.path(), e))
        })
    }

    fn put<'a>(&'a self, key: &'a ObjectKey, bytes: Bytes) -> BoxFut<'a, Result<()>> {
        let tmp = self.tmp.clone();
        let dest = self.object_path(key);
        let what = key.path();
        Box::pin(blocking(move || {
            write_atomic(&tmp, &dest, &bytes).map_err(|e| StorageError::io(what, e))
        }))
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            tokio::fs::remove_file(self.object_path(key))
                .await
                .map_err(|e| StorageError::io(key.path(), e))
        })
    }

    fn list<'a>(&'a self, prefix: &'a ObjectPrefix) -> BoxFut<'a, Result<Vec<ObjectKey>>> {
        let root = self.root.clone();
        let prefix = prefix.clone();
        Box::pin(blocking(move || {
            let dir = layout::local(&root, &prefix.path());
            let mut found = Vec::new();
            // One tag's answers sit side by side; deeper directories there belong to other
            // repositories, so they are not walked.
            let flat = matches!(
                prefix,
                ObjectPrefix::TagAnswers { .. } | ObjectPrefix::LegacyTagAnswers { .. }
            );
            let mut add = |p: &Path| {
                let Ok(rel) = p.strip_prefix(&root) else {
                    return;
                };
                let rel: Vec<_> = rel.iter().map(|c| c.to_string_lossy()).collect();
                if let Some(k) = ObjectKey::parse(&rel.join("/")) {
                    if prefix.contains(&k) {
                        found.push(k);
                    }
                }
            };
            if flat {
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_file()) {
                            add(&e.path());
                        }
                    }
                }
            } else {
                walk(&dir, &mut |p, _| add(p));
            }
            found.sort_by_key(|k| k.path());
            Ok(found)
        }))
    }

    fn append<'a>(
        &'a self,
        key: &'a ObjectKey,
        bytes: Bytes,
        sync: bool,
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let path = self.object_path(key);
            if sync {
                let what = key.path();
                blocking(move || {
                    append_file(&path, &bytes, true).map_err(|e| StorageError::io(what, e))
                })
                .await
            } else {
                // An unsynced append is one write(2), as cheap as a trip to the pool.
                append_file(&path, &bytes, false).map_err(|e| StorageError::io(key.path(), e))
            }
        })
    }

    fn get_from<'a>(&'a self, key: &'a ObjectKey, offset: u64) -> BoxFut<'a, Result<Bytes>> {
        Box::pin(async move {
            use std::io::{Read, Seek, SeekFrom};
            let what = || key.path();
            let mut f = std::fs::File::open(self.object_path(key))
                .map_err(|e| StorageError::io(what(), e))?;
            let len = f.metadata().map_err(|e| StorageError::io(what(), e))?.len();
            if len <= offset {
                return Ok(Bytes::new());
            }
            let mut tail = Vec::new();
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| f.read_to_end(&mut tail))
                .map_err(|e| StorageError::io(what(), e))?;
            Ok(Bytes::from(tail))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> (tempfile::TempDir, Arc<FsBackend>) {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = FsBackend::open(dir.path()).unwrap();
        (dir, Arc::new(b))
    }

    fn harness(b: &Arc<FsBackend>) -> super::super::suite::Harness {
        let leftovers = b.clone();
        super::super::suite::Harness {
            blobs: b.clone(),
            objects: b.clone(),
            staged_leftovers: Box::new(move || leftovers.staged_files()),
        }
    }

    crate::storage::suite::storage_suite!(fs_backend, {
        let (dir, b) = backend();
        (harness(&b), dir)
    });

    #[tokio::test]
    async fn committed_blobs_are_local_files() {
        let (_dir, b) = backend();
        let s = b.stage().unwrap();
        s.append(b"bytes").unwrap();
        let d = Digest::sha256_of(b"bytes");
        s.commit(&d).await.unwrap();
        let f = b.local_file(&d).await.unwrap().expect("a local file");
        let mut buf = [0; 5];
        f.0.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"bytes");
    }

    /// A directory as the code before the storage seam wrote it (the literal paths are the
    /// point: they pin the on-disk format), opened and read through the seam.
    #[tokio::test]
    async fn a_cache_directory_of_the_old_layout_is_read_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let blob = b"layer bytes";
        let d = Digest::sha256_of(blob);
        let m = b"{\"schemaVersion\":2}";
        let md = Digest::sha256_of(m);
        for sub in [
            "sha256",
            "tmp",
            "manifests/sha256",
            "tags/hub/library/nginx/latest",
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("sha256").join(d.hex()), blob).unwrap();
        std::fs::write(root.join("sha256").join("not-a-blob"), b"junk").unwrap();
        std::fs::write(root.join("tmp").join("1-2-3.part"), b"half").unwrap();
        std::fs::write(root.join("manifests/sha256").join(md.hex()), m).unwrap();
        std::fs::write(
            root.join("manifests/sha256")
                .join(format!("{}.type", md.hex())),
            b"application/vnd.oci.image.manifest.v1+json",
        )
        .unwrap();
        std::fs::write(
            root.join("tags/hub/library/nginx/latest/0123456789abcdef.json"),
            b"{}",
        )
        .unwrap();
        std::fs::write(root.join("links.log"), format!("hub\tlibrary/nginx\t{d}\n")).unwrap();
        std::fs::write(root.join("pins"), format!("{}\n", d.hex())).unwrap();

        let (b, rec) = FsBackend::open(root).unwrap();
        assert_eq!(rec.leftovers, 2, "the temp file and the junk name go");
        let listed = BlobBackend::list(&b).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, d);
        assert_eq!(listed[0].1.size, blob.len() as u64);
        assert_eq!(&b.read(&d, 6, 5).await.unwrap()[..], b"bytes");
        assert_eq!(
            &b.get(&ObjectKey::Manifest(md.clone())).await.unwrap()[..],
            m
        );
        assert_eq!(
            &b.get(&ObjectKey::ManifestMediaType(md.clone()))
                .await
                .unwrap()[..],
            b"application/vnd.oci.image.manifest.v1+json"
        );
        let tags = ObjectStore::list(
            &b,
            &ObjectPrefix::LegacyTagAnswers {
                upstream: "hub".into(),
                repository: "library/nginx".into(),
                tag: "latest".into(),
            },
        )
        .await
        .unwrap();
        assert_eq!(tags.len(), 1);
        assert_eq!(
            b.get(&ObjectKey::Links).await.unwrap(),
            format!("hub\tlibrary/nginx\t{d}\n")
        );
        assert_eq!(
            b.get(&ObjectKey::Pins).await.unwrap(),
            format!("{}\n", d.hex())
        );
        // And what the seam writes lands where the old code looks.
        let s = b.stage().unwrap();
        s.append(b"new").unwrap();
        let nd = Digest::sha256_of(b"new");
        s.commit(&nd).await.unwrap();
        assert_eq!(
            std::fs::read(root.join("sha256").join(nd.hex())).unwrap(),
            b"new"
        );
    }
}
