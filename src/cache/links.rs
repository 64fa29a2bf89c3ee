//! Which digests belong to which upstream repository. A cached blob or manifest is served
//! to a request only when its repository is linked to it, so knowing a digest never opens
//! another app's content. Persisted as an append-only log, replayed at startup and caught
//! up on a miss (`berth airgap import` appends to it while a server runs).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::oci::Digest;
use crate::storage::{ObjectKey, ObjectStore, StorageError};

pub struct Links {
    set: RwLock<HashSet<String>>,
    objects: Arc<dyn ObjectStore>,
    /// How far into the log the set reflects (whole lines only). Held across a catch-up,
    /// so concurrent misses read the tail once, in order.
    read_to: tokio::sync::Mutex<u64>,
}

fn key(upstream: &str, repository: &str, digest: &str) -> String {
    format!("{upstream}\t{repository}\t{digest}")
}

impl Links {
    /// Loads the log; a torn last line (a crash mid-append) is ignored.
    pub async fn open(objects: Arc<dyn ObjectStore>) -> Result<Links, StorageError> {
        let bytes = match objects.get(&ObjectKey::Links).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => Bytes::new(),
            Err(e) => return Err(e),
        };
        Ok(Links::from_log(objects, &bytes))
    }

    /// Builds the set from the log's bytes, already read (startup reads them synchronously).
    pub fn from_log(objects: Arc<dyn ObjectStore>, bytes: &[u8]) -> Links {
        let mut set = HashSet::new();
        let read_to = replay(bytes, &mut set);
        Links {
            set: RwLock::new(set),
            objects,
            read_to: tokio::sync::Mutex::new(read_to as u64),
        }
    }

    fn known(&self, k: &str) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(k)
    }

    pub async fn contains(&self, upstream: &str, repository: &str, digest: &Digest) -> bool {
        let k = key(upstream, repository, digest.as_str());
        if self.known(&k) {
            return true;
        }
        self.catch_up().await;
        self.known(&k)
    }

    /// Reads what other processes appended to the log since the last look (berth's own
    /// appends come along too, and are already in the set).
    async fn catch_up(&self) {
        let mut read_to = self.read_to.lock().await;
        let Ok(tail) = self.objects.get_from(&ObjectKey::Links, *read_to).await else {
            return;
        };
        if tail.is_empty() {
            return;
        }
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        *read_to += replay(&tail, &mut set) as u64;
    }

    /// Links digests to a repository; only new links are written to the log.
    pub async fn add<'a>(
        &self,
        upstream: &str,
        repository: &str,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) {
        let mut fresh = String::new();
        {
            let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
            for d in digests {
                let k = key(upstream, repository, d.as_str());
                if set.insert(k.clone()) {
                    fresh.push_str(&k);
                    fresh.push('\n');
                }
            }
        }
        if fresh.is_empty() {
            return;
        }
        // One append per batch: concurrent batches do not interleave.
        if let Err(e) = self
            .objects
            .append(&ObjectKey::Links, Bytes::from(fresh), false)
            .await
        {
            tracing::warn!(error = %e, "cannot persist repository links; they hold until restart");
        }
    }

    /// Drops every link of repositories matching `pred` (used by `cache purge`).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) -> usize {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        let before = set.len();
        set.retain(|k| {
            let mut it = k.split('\t');
            let (u, r) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
            keep(u, r)
        });
        before - set.len()
    }

    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every digest linked anywhere (to find blobs no repository refers to any more).
    pub fn digests(&self) -> HashSet<String> {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|k| k.rsplit('\t').next().map(str::to_string))
            .collect()
    }

    /// Rewrites the log from the in-memory set (after a purge), replacing it whole.
    pub async fn compact(&self) -> Result<(), StorageError> {
        let text = {
            let set = self.set.read().unwrap_or_else(|e| e.into_inner());
            let mut text = String::new();
            for k in set.iter() {
                text.push_str(k);
                text.push('\n');
            }
            text
        };
        let len = text.len() as u64;
        self.objects
            .put(&ObjectKey::Links, Bytes::from(text))
            .await?;
        *self.read_to.lock().await = len;
        Ok(())
    }
}

/// Adds the log's whole lines to `set`; returns how many bytes they took (a torn last
/// line, a crash or a writer mid-append, is left for the next look).
fn replay(bytes: &[u8], set: &mut HashSet<String>) -> usize {
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in String::from_utf8_lossy(&bytes[..whole]).lines() {
        if line.split('\t').count() == 3 && line.contains(':') {
            set.insert(line.to_string());
        }
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsBackend;

    fn fs() -> (tempfile::TempDir, Arc<FsBackend>) {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = FsBackend::open(dir.path()).unwrap();
        (dir, Arc::new(b))
    }

    async fn append_raw(objects: &Arc<FsBackend>, bytes: impl Into<Bytes>) {
        objects
            .append(&ObjectKey::Links, bytes.into(), false)
            .await
            .unwrap();
    }

    /// `sha256:` and 64 times `c`.
    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn persists_and_survives_a_torn_line() {
        let (_dir, b) = fs();
        let l = Links::open(b.clone()).await.unwrap();
        l.add("up", "acme/api", [&d('a'), &d('b')]).await;
        l.add("up", "acme/api", [&d('a')]).await;
        assert!(l.contains("up", "acme/api", &d('a')).await);
        assert!(!l.contains("up", "other/api", &d('a')).await);
        drop(l);
        append_raw(&b, &b"up\tacme/x"[..]).await;
        let l = Links::open(b.clone()).await.unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.contains("up", "acme/api", &d('b')).await);
    }

    #[tokio::test]
    async fn links_another_process_appends_are_seen_on_a_miss() {
        let (dir, b) = fs();
        let server = Links::open(b.clone()).await.unwrap();
        server.add("up", "acme/api", [&d('a')]).await;
        // `berth airgap import` while the server runs: its own backend on the same directory.
        let other = Arc::new(FsBackend::at(dir.path()));
        let import = Links::open(other.clone()).await.unwrap();
        import.add("up", "acme/worker", [&d('b'), &d('c')]).await;
        // Half a line, as a writer mid-append leaves it: not taken, and not lost later.
        append_raw(&other, &b"up\tacme/db\tsha2"[..]).await;
        assert!(server.contains("up", "acme/worker", &d('c')).await);
        assert!(!server.contains("up", "acme/db", &d('d')).await);
        append_raw(&other, format!("56:{}\n", "d".repeat(64)).into_bytes()).await;
        assert!(server.contains("up", "acme/db", &d('d')).await);
        assert!(!server.contains("up", "acme/db", &d('a')).await);
    }
}
