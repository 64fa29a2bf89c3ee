//! The in-memory backend: blobs and small objects in maps, for unit tests of what sits on
//! the seam. It keeps the seam's promises (verify at commit, atomic replace, whole appends)
//! but has no local files: blobs are read back as bytes, never sent with sendfile.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::layout::{self, ObjectKey, ObjectPrefix};
use super::{
    BlobBackend, BlobInfo, BoxFut, LocalFile, ObjectStore, Result, StagedBlob, StorageError,
};
use crate::oci::Digest;

#[derive(Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
    objects: Mutex<BTreeMap<String, Bytes>>,
}

#[derive(Default)]
struct Shared {
    blobs: Mutex<HashMap<Digest, (Bytes, SystemTime)>>,
    /// Staged blobs neither committed nor aborted.
    staged: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryBackend {
    /// Staged writes still open (for the backend suite).
    pub fn staged_count(&self) -> usize {
        self.shared.staged.load(Ordering::Acquire)
    }

    fn blob(&self, d: &Digest) -> Result<Bytes> {
        lock(&self.shared.blobs)
            .get(d)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StorageError::NotFound(d.to_string()))
    }
}

struct MemStaged {
    shared: Arc<Shared>,
    data: RwLock<Vec<u8>>,
    hasher: Mutex<Sha256>,
    finished: AtomicBool,
}

impl MemStaged {
    fn finish(&self) -> bool {
        let first = !self.finished.swap(true, Ordering::AcqRel);
        if first {
            self.shared.staged.fetch_sub(1, Ordering::AcqRel);
        }
        first
    }
}

impl Drop for MemStaged {
    fn drop(&mut self) {
        self.finish();
    }
}

impl StagedBlob for MemStaged {
    fn append(&self, bytes: &[u8]) -> Result<()> {
        lock(&self.hasher).update(bytes);
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let from = offset as usize;
        let src = data.get(from..from + buf.len()).ok_or_else(|| {
            StorageError::io("staged blob", std::io::ErrorKind::UnexpectedEof.into())
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn digest(&self) -> Digest {
        Digest::from_sha256(&lock(&self.hasher).clone().finalize())
    }

    fn commit<'a>(&'a self, expected: &'a Digest) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let got = self.digest();
            if got != *expected || !layout::is_storable(expected) {
                self.finish();
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    got,
                });
            }
            if !self.finish() {
                return Err(StorageError::NotFound(
                    "staged blob (already finished)".into(),
                ));
            }
            // Followers may still read the staged bytes: they are copied, not taken.
            let bytes = Bytes::from(self.data.read().unwrap_or_else(|e| e.into_inner()).clone());
            lock(&self.shared.blobs).insert(expected.clone(), (bytes, SystemTime::now()));
            Ok(())
        })
    }

    fn abort(&self) {
        self.finish();
    }
}

impl BlobBackend for MemoryBackend {
    fn stage(&self) -> Result<Arc<dyn StagedBlob>> {
        self.shared.staged.fetch_add(1, Ordering::AcqRel);
        Ok(Arc::new(MemStaged {
            shared: self.shared.clone(),
            data: RwLock::new(Vec::new()),
            hasher: Mutex::new(Sha256::new()),
            finished: AtomicBool::new(false),
        }))
    }

    fn stat<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<BlobInfo>> {
        Box::pin(async move {
            lock(&self.shared.blobs)
                .get(d)
                .map(|(b, used)| BlobInfo {
                    size: b.len() as u64,
                    used: *used,
                })
                .ok_or_else(|| StorageError::NotFound(d.to_string()))
        })
    }

    fn local_file<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<Option<LocalFile>>> {
        Box::pin(async move { self.blob(d).map(|_| None) })
    }

    fn read<'a>(&'a self, d: &'a Digest, offset: u64, len: usize) -> BoxFut<'a, Result<Bytes>> {
        Box::pin(async move {
            let b = self.blob(d)?;
            let from = offset as usize;
            if from.checked_add(len).is_none_or(|end| end > b.len()) {
                return Err(StorageError::io(
                    d.to_string(),
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            Ok(b.slice(from..from + len))
        })
    }

    fn delete<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            lock(&self.shared.blobs)
                .remove(d)
                .map(|_| ())
                .ok_or_else(|| StorageError::NotFound(d.to_string()))
        })
    }

    fn list(&self) -> BoxFut<'_, Result<Vec<(Digest, BlobInfo)>>> {
        Box::pin(async move {
            Ok(lock(&self.shared.blobs)
                .iter()
                .map(|(d, (b, used))| {
                    (
                        d.clone(),
                        BlobInfo {
                            size: b.len() as u64,
                            used: *used,
                        },
                    )
                })
                .collect())
        })
    }

    fn adopt_verified<'a>(&'a self, file: &'a Path, d: &'a Digest) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let what = || file.display().to_string();
            let bytes = tokio::fs::read(file)
                .await
                .map_err(|e| StorageError::io(what(), e))?;
            lock(&self.shared.blobs).insert(d.clone(), (Bytes::from(bytes), SystemTime::now()));
            tokio::fs::remove_file(file)
                .await
                .map_err(|e| StorageError::io(what(), e))
        })
    }

    fn check_writable(&self) -> BoxFut<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

impl ObjectStore for MemoryBackend {
    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<Bytes>> {
        Box::pin(async move {
            lock(&self.objects)
                .get(&key.path())
                .cloned()
                .ok_or_else(|| StorageError::NotFound(key.path()))
        })
    }

    fn put<'a>(&'a self, key: &'a ObjectKey, bytes: Bytes) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            lock(&self.objects).insert(key.path(), bytes);
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            lock(&self.objects)
                .remove(&key.path())
                .map(|_| ())
                .ok_or_else(|| StorageError::NotFound(key.path()))
        })
    }

    fn list<'a>(&'a self, prefix: &'a ObjectPrefix) -> BoxFut<'a, Result<Vec<ObjectKey>>> {
        Box::pin(async move {
            Ok(lock(&self.objects)
                .keys()
                .filter_map(|p| ObjectKey::parse(p))
                .filter(|k| prefix.contains(k))
                .collect())
        })
    }

    fn append<'a>(
        &'a self,
        key: &'a ObjectKey,
        bytes: Bytes,
        _sync: bool,
    ) -> BoxFut<'a, Result<()>> {
        Box::pin(async move {
            let mut objects = lock(&self.objects);
            let entry = objects.entry(key.path()).or_default();
            let mut grown = Vec::with_capacity(entry.len() + bytes.len());
            grown.extend_from_slice(entry);
            grown.extend_from_slice(&bytes);
            *entry = Bytes::from(grown);
            Ok(())
        })
    }

    fn get_from<'a>(&'a self, key: &'a ObjectKey, offset: u64) -> BoxFut<'a, Result<Bytes>> {
        Box::pin(async move {
            let b = lock(&self.objects)
                .get(&key.path())
                .cloned()
                .ok_or_else(|| StorageError::NotFound(key.path()))?;
            Ok(b.slice((offset as usize).min(b.len())..))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Arc<MemoryBackend> {
        Arc::new(MemoryBackend::default())
    }

    fn harness(b: &Arc<MemoryBackend>) -> super::super::suite::Harness {
        let leftovers = b.clone();
        super::super::suite::Harness {
            blobs: b.clone(),
            objects: b.clone(),
            staged_leftovers: Box::new(move || leftovers.staged_count()),
        }
    }

    crate::storage::suite::storage_suite!(memory_backend, {
        let b = backend();
        (harness(&b), ())
    });
}
