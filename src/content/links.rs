//! Repository membership: which digests belong to which repository of which app. A stored
//! blob or manifest is served to a request only when its repository is linked to it, so
//! knowing a digest never opens another app's content (nor another repository's). Persisted
//! as an append-only log, replayed at startup and caught up on a miss (`berth airgap
//! import` appends to it while a server runs).
//!
//! A line is `<space>\t<app>\t<name>\t<digest>`. Lines of the format before the content
//! model (`<upstream>\t<repository>\t<digest>`, three fields; berth before it skips four)
//! are read alongside, each standing for the repository of every app that lists that
//! upstream ([`Legacy`]); a purge's compaction rewrites them in the new format.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::{Legacy, RepoKey, Space};
use crate::oci::Digest;
use crate::storage::{ObjectKey, ObjectStore, StorageError};

pub struct Links {
    /// Lines of the current format (without the newline).
    set: RwLock<HashSet<String>>,
    /// Old-format lines no configured upstream explains (an upstream since removed): they
    /// serve nobody, but a compaction keeps them and their digests count as linked, as
    /// they did before.
    unmapped: RwLock<HashSet<String>>,
    legacy: Legacy,
    objects: Arc<dyn ObjectStore>,
    /// How far into the log the set reflects (whole lines only). Held across a catch-up,
    /// so concurrent misses read the tail once, in order.
    read_to: tokio::sync::Mutex<u64>,
}

fn key(repo: &RepoKey, digest: &str) -> String {
    format!(
        "{}\t{}\t{}\t{digest}",
        repo.space.as_str(),
        repo.app,
        repo.name
    )
}

/// The repository and digest of a current-format line.
fn parse_key(line: &str) -> Option<(RepoKey, &str)> {
    let mut it = line.split('\t');
    let (space, app, name, digest) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || app.is_empty() || name.is_empty() || !digest.contains(':') {
        return None;
    }
    let repo = RepoKey {
        space: Space::parse(space)?,
        app: app.to_string(),
        name: name.to_string(),
    };
    Some((repo, digest))
}

impl Links {
    /// Loads the log; a torn last line (a crash mid-append) is ignored.
    pub async fn open(
        objects: Arc<dyn ObjectStore>,
        legacy: Legacy,
    ) -> Result<Links, StorageError> {
        let bytes = match objects.get(&ObjectKey::Links).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => Bytes::new(),
            Err(e) => return Err(e),
        };
        Ok(Links::from_log(objects, legacy, &bytes))
    }

    /// Builds the set from the log's bytes, already read (startup reads them synchronously).
    pub fn from_log(objects: Arc<dyn ObjectStore>, legacy: Legacy, bytes: &[u8]) -> Links {
        let mut set = HashSet::new();
        let mut unmapped = HashSet::new();
        let read_to = replay(bytes, &legacy, &mut set, &mut unmapped);
        Links {
            set: RwLock::new(set),
            unmapped: RwLock::new(unmapped),
            legacy,
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

    pub async fn contains(&self, repo: &RepoKey, digest: &Digest) -> bool {
        let k = key(repo, digest.as_str());
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
        let mut unmapped = self.unmapped.write().unwrap_or_else(|e| e.into_inner());
        *read_to += replay(&tail, &self.legacy, &mut set, &mut unmapped) as u64;
    }

    /// Links digests to a repository; only new links are written to the log.
    pub async fn add<'a>(&self, repo: &RepoKey, digests: impl IntoIterator<Item = &'a Digest>) {
        let mut fresh = String::new();
        {
            let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
            for d in digests {
                let k = key(repo, d.as_str());
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

    /// Drops every link `drop` selects (used by `cache purge`): it is asked with the app
    /// and the repository (the name without its host) of each link, and with no app for
    /// an old-format line no configured upstream explains.
    pub fn remove_matching(&self, drop: impl Fn(Option<&str>, &str) -> bool) -> usize {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        let mut unmapped = self.unmapped.write().unwrap_or_else(|e| e.into_inner());
        let before = set.len() + unmapped.len();
        set.retain(|k| match parse_key(k) {
            Some((repo, _)) => !drop(Some(repo.app.as_str()), repo.repository()),
            None => true,
        });
        unmapped.retain(|k| !drop(None, k.split('\t').nth(1).unwrap_or("")));
        before - set.len() - unmapped.len()
    }

    /// How this log reads old-format lines (the tag store reads old answers the same way).
    pub fn legacy(&self) -> &Legacy {
        &self.legacy
    }

    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|e| e.into_inner()).len()
            + self
                .unmapped
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every digest linked anywhere (to find blobs no repository refers to any more).
    pub fn digests(&self) -> HashSet<String> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        let unmapped = self.unmapped.read().unwrap_or_else(|e| e.into_inner());
        set.iter()
            .chain(unmapped.iter())
            .filter_map(|k| k.rsplit('\t').next().map(str::to_string))
            .collect()
    }

    /// Rewrites the log from the in-memory set (after a purge), replacing it whole: old
    /// lines that map to repositories are written in the new format from then on.
    pub async fn compact(&self) -> Result<(), StorageError> {
        let text = {
            let set = self.set.read().unwrap_or_else(|e| e.into_inner());
            let unmapped = self.unmapped.read().unwrap_or_else(|e| e.into_inner());
            let mut lines: Vec<&String> = set.iter().chain(unmapped.iter()).collect();
            lines.sort();
            let mut text = String::new();
            for k in lines {
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

/// Adds the log's whole lines to `set` (old-format lines mapped through `legacy`, or to
/// `unmapped`); returns how many bytes they took (a torn last line, a crash or a writer
/// mid-append, is left for the next look).
fn replay(
    bytes: &[u8],
    legacy: &Legacy,
    set: &mut HashSet<String>,
    unmapped: &mut HashSet<String>,
) -> usize {
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in String::from_utf8_lossy(&bytes[..whole]).lines() {
        if parse_key(line).is_some() {
            set.insert(line.to_string());
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if let [upstream, repository, digest] = fields[..] {
            if !digest.contains(':') {
                continue;
            }
            let repos = legacy.repos(upstream, repository);
            if repos.is_empty() {
                unmapped.insert(line.to_string());
            }
            for r in repos {
                set.insert(key(&r, digest));
            }
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

    fn r(app: &str, repository: &str) -> RepoKey {
        RepoKey::proxied(app, "quay.io", repository)
    }

    #[tokio::test]
    async fn persists_and_survives_a_torn_line() {
        let (_dir, b) = fs();
        let l = Links::open(b.clone(), Legacy::default()).await.unwrap();
        l.add(&r("acme", "acme/api"), [&d('a'), &d('b')]).await;
        l.add(&r("acme", "acme/api"), [&d('a')]).await;
        assert!(l.contains(&r("acme", "acme/api"), &d('a')).await);
        assert!(!l.contains(&r("acme", "other/api"), &d('a')).await);
        assert!(!l.contains(&r("other", "acme/api"), &d('a')).await);
        drop(l);
        append_raw(&b, &b"proxy\tacme\tquay.io/acme/x"[..]).await;
        let l = Links::open(b.clone(), Legacy::default()).await.unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.contains(&r("acme", "acme/api"), &d('b')).await);
    }

    #[tokio::test]
    async fn links_another_process_appends_are_seen_on_a_miss() {
        let (dir, b) = fs();
        let server = Links::open(b.clone(), Legacy::default()).await.unwrap();
        server.add(&r("acme", "acme/api"), [&d('a')]).await;
        // `berth airgap import` while the server runs: its own backend on the same directory.
        let other = Arc::new(FsBackend::at(dir.path()));
        let import = Links::open(other.clone(), Legacy::default()).await.unwrap();
        import
            .add(&r("acme", "acme/worker"), [&d('b'), &d('c')])
            .await;
        // Half a line, as a writer mid-append leaves it: not taken, and not lost later.
        append_raw(&other, &b"proxy\tacme\tquay.io/acme/db\tsha2"[..]).await;
        assert!(server.contains(&r("acme", "acme/worker"), &d('c')).await);
        assert!(!server.contains(&r("acme", "acme/db"), &d('d')).await);
        append_raw(&other, format!("56:{}\n", "d".repeat(64)).into_bytes()).await;
        assert!(server.contains(&r("acme", "acme/db"), &d('d')).await);
        assert!(!server.contains(&r("acme", "acme/db"), &d('a')).await);
    }

    /// A log as berth wrote it before the content model (the literal lines are the format
    /// being read): each line links the repository for every app that lists its upstream,
    /// and no other; a line of an upstream no app lists links nothing but is kept.
    #[tokio::test]
    async fn old_lines_link_each_app_of_their_upstream() {
        let (_dir, b) = fs();
        append_raw(
            &b,
            format!(
                "hub\tlibrary/redis\t{}\nquay\tacme/api\t{}\ngone\tx/y\t{}\n",
                d('a'),
                d('b'),
                d('c')
            )
            .into_bytes(),
        )
        .await;
        let legacy = Legacy::new([
            ("hub".into(), "acme".into(), "docker.io".into()),
            ("hub".into(), "other".into(), "docker.io".into()),
            ("quay".into(), "acme".into(), "quay.io".into()),
        ]);
        let l = Links::open(b.clone(), legacy.clone()).await.unwrap();
        let redis = |app| RepoKey::proxied(app, "docker.io", "library/redis");
        assert!(l.contains(&redis("acme"), &d('a')).await);
        assert!(l.contains(&redis("other"), &d('a')).await);
        assert!(l.contains(&r("acme", "acme/api"), &d('b')).await);
        assert!(!l.contains(&r("other", "acme/api"), &d('b')).await);
        assert!(!l.contains(&redis("acme"), &d('b')).await);
        assert!(l.digests().contains(d('c').as_str()), "kept, not served");
        // Compaction writes them in the new format (and keeps the unexplained one).
        l.compact().await.unwrap();
        drop(l);
        let text = String::from_utf8(b.get(&ObjectKey::Links).await.unwrap().to_vec()).unwrap();
        assert!(text.contains(&format!(
            "proxy\tother\tdocker.io/library/redis\t{}\n",
            d('a')
        )));
        assert!(text.contains(&format!("gone\tx/y\t{}\n", d('c'))));
        let l = Links::open(b.clone(), Legacy::default()).await.unwrap();
        assert!(l.contains(&redis("other"), &d('a')).await);
        assert!(!l.contains(&r("other", "acme/api"), &d('b')).await);
    }
}
