//! Which digests belong to which upstream repository. A cached blob or manifest is served
//! to a request only when its repository is linked to it, so knowing a digest never opens
//! another app's content. Persisted as an append-only log, replayed at startup and caught
//! up on a miss (`berth airgap import` appends to it while a server runs).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use crate::oci::Digest;

pub struct Links {
    set: RwLock<HashSet<String>>,
    log: Mutex<std::fs::File>,
    path: std::path::PathBuf,
    /// How far into the log the set reflects (whole lines only).
    read_to: Mutex<u64>,
}

fn key(upstream: &str, repository: &str, digest: &str) -> String {
    format!("{upstream}\t{repository}\t{digest}")
}

impl Links {
    /// Loads the log; a torn last line (a crash mid-append) is ignored.
    pub fn open(path: &Path) -> std::io::Result<Links> {
        let mut set = HashSet::new();
        let read_to = match std::fs::read(path) {
            Ok(bytes) => replay(&bytes, &mut set),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Links {
            set: RwLock::new(set),
            log: Mutex::new(log),
            path: path.to_path_buf(),
            read_to: Mutex::new(read_to as u64),
        })
    }

    pub fn contains(&self, upstream: &str, repository: &str, digest: &Digest) -> bool {
        let k = key(upstream, repository, digest.as_str());
        if self
            .set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&k)
        {
            return true;
        }
        self.catch_up();
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&k)
    }

    /// Reads what other processes appended to the log since the last look (berth's own
    /// appends come along too, and are already in the set).
    fn catch_up(&self) {
        use std::io::{Read, Seek, SeekFrom};
        let mut read_to = self.read_to.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len <= *read_to {
            return;
        }
        let mut tail = Vec::new();
        if f.seek(SeekFrom::Start(*read_to)).is_err() || f.read_to_end(&mut tail).is_err() {
            return;
        }
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        *read_to += replay(&tail, &mut set) as u64;
    }

    /// Links digests to a repository; only new links are written to the log.
    pub fn add<'a>(
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
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        // One write per batch: O_APPEND keeps concurrent batches from interleaving.
        if let Err(e) = log.write_all(fresh.as_bytes()) {
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

    /// Rewrites the log from the in-memory set (after a purge).
    pub fn compact(&self, path: &Path) -> std::io::Result<()> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        for k in set.iter() {
            text.push_str(k);
            text.push('\n');
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, path)?;
        let log = std::fs::OpenOptions::new().append(true).open(path)?;
        *self.read_to.lock().unwrap_or_else(|e| e.into_inner()) = text.len() as u64;
        *self.log.lock().unwrap_or_else(|e| e.into_inner()) = log;
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

    /// `sha256:` and 64 times `c`.
    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn persists_and_survives_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("berth-links-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("links");
        let _ = std::fs::remove_file(&path);
        let l = Links::open(&path).unwrap();
        l.add("up", "acme/api", [&d('a'), &d('b')]);
        l.add("up", "acme/api", [&d('a')]);
        assert!(l.contains("up", "acme/api", &d('a')));
        assert!(!l.contains("up", "other/api", &d('a')));
        drop(l);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"up\tacme/x")
            .unwrap();
        let l = Links::open(&path).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.contains("up", "acme/api", &d('b')));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_another_process_appends_are_seen_on_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("links.log");
        let server = Links::open(&path).unwrap();
        server.add("up", "acme/api", [&d('a')]);
        // `berth airgap import` while the server runs: its own Links on the same file.
        let import = Links::open(&path).unwrap();
        import.add("up", "acme/worker", [&d('b'), &d('c')]);
        // Half a line, as a writer mid-append leaves it: not taken, and not lost later.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"up\tacme/db\tsha2")
            .unwrap();
        assert!(server.contains("up", "acme/worker", &d('c')));
        assert!(!server.contains("up", "acme/db", &d('d')));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(format!("56:{}\n", "d".repeat(64)).as_bytes())
            .unwrap();
        assert!(server.contains("up", "acme/db", &d('d')));
        assert!(!server.contains("up", "acme/db", &d('a')));
    }
}
