//! Offline cache administration for the CLI: `berth cache stats` (read-only, safe while
//! berth serves) and `berth cache purge` (needs the cache to itself: running servers hold a
//! shared lock on `<cache.dir>/lock`, purge takes it exclusively).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::links::Links;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub manifests: u64,
    pub tags: u64,
    pub links: u64,
    pub partial_files: u64,
}

fn walk_files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            walk_files(&e.path(), out);
        } else {
            out.push((e.path(), meta.len()));
        }
    }
}

pub fn stats(dir: &Path) -> std::io::Result<CacheStats> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a cache directory", dir.display()),
        ));
    }
    let mut s = CacheStats::default();
    let mut files = Vec::new();
    walk_files(&dir.join("sha256"), &mut files);
    s.blobs = files.len() as u64;
    s.blob_bytes = files.iter().map(|f| f.1).sum();
    files.clear();
    walk_files(&dir.join("manifests"), &mut files);
    s.manifests = files.iter().filter(|f| f.0.extension().is_none()).count() as u64;
    files.clear();
    walk_files(&dir.join("tags"), &mut files);
    s.tags = files.len() as u64;
    files.clear();
    walk_files(&dir.join("tmp"), &mut files);
    s.partial_files = files.len() as u64;
    if let Ok(text) = std::fs::read_to_string(dir.join("links.log")) {
        s.links = text.lines().collect::<HashSet<_>>().len() as u64;
    }
    Ok(s)
}

/// Takes a shared lock for a serving process; dropped with the returned file.
pub fn lock_shared(dir: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
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

/// Forgets the repositories `matches(upstream, repository)` selects, then deletes every
/// blob and manifest no remaining repository links to.
pub fn purge(dir: &Path, matches: &dyn Fn(&str, &str) -> bool) -> Result<Purged, String> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| format!("cannot open {}: {e}", dir.join("lock").display()))?;
    if lock.try_lock().is_err() {
        return Err("a running berth uses this cache; stop it before purging".into());
    }
    let links_path = dir.join("links.log");
    let links = Links::open(&links_path).map_err(|e| format!("links.log: {e}"))?;
    let mut out = Purged {
        links: links.retain(|u, r| !matches(u, r)),
        ..Purged::default()
    };
    links
        .compact(&links_path)
        .map_err(|e| format!("rewriting links.log: {e}"))?;
    // Tag answers live at tags/<upstream>/<repository>/<tag>/<accept>.json.
    let tags = dir.join("tags");
    if let Ok(ups) = std::fs::read_dir(&tags) {
        for up in ups.flatten() {
            let upstream = up.file_name().to_string_lossy().to_string();
            let mut files = Vec::new();
            walk_files(&up.path(), &mut files);
            for (path, _) in files {
                let Ok(rel) = path.strip_prefix(up.path()) else {
                    continue;
                };
                let parts: Vec<_> = rel
                    .iter()
                    .map(|p| p.to_string_lossy().to_string())
                    .collect();
                if parts.len() < 3 {
                    continue;
                }
                let repository = parts[..parts.len() - 2].join("/");
                if matches(&upstream, &repository) && std::fs::remove_file(&path).is_ok() {
                    out.tags += 1;
                }
            }
        }
    }
    let keep = links.digests();
    let kept = |hex: &str| keep.contains(&format!("sha256:{hex}"));
    if let Ok(rd) = std::fs::read_dir(dir.join("sha256")) {
        for e in rd.flatten() {
            let hex = e.file_name().to_string_lossy().to_string();
            if !kept(&hex) {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                if std::fs::remove_file(e.path()).is_ok() {
                    out.blobs += 1;
                    out.bytes += size;
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("manifests").join("sha256")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let hex = name.trim_end_matches(".type");
            if !kept(hex) && std::fs::remove_file(e.path()).is_ok() && !name.ends_with(".type") {
                out.manifests += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_removes_only_unlinked_content() {
        let dir = std::env::temp_dir().join(format!("berth-purge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in [
            "sha256",
            "tmp",
            "manifests/sha256",
            "tags/up/acme/api/1",
            "tags/up/acme/web/1",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        std::fs::write(dir.join("sha256").join(&a), b"shared").unwrap();
        std::fs::write(dir.join("sha256").join(&b), b"api only").unwrap();
        std::fs::write(dir.join("tags/up/acme/api/1/k.json"), b"{}").unwrap();
        std::fs::write(dir.join("tags/up/acme/web/1/k.json"), b"{}").unwrap();
        {
            let l = Links::open(&dir.join("links.log")).unwrap();
            let da: crate::oci::Digest = format!("sha256:{a}").parse().unwrap();
            let db: crate::oci::Digest = format!("sha256:{b}").parse().unwrap();
            l.add("up", "acme/api", [&da, &db]);
            l.add("up", "acme/web", [&da]);
        }
        let st = stats(&dir).unwrap();
        assert_eq!((st.blobs, st.tags, st.links), (2, 2, 3));
        {
            // A serving process holds the cache: purge must refuse.
            let _held = lock_shared(&dir).unwrap();
            assert!(purge(&dir, &|_, r| r == "acme/api").is_err());
        }
        let p = purge(&dir, &|_, r| r == "acme/api").unwrap();
        assert_eq!((p.links, p.tags, p.blobs), (2, 1, 1));
        assert!(
            dir.join("sha256").join(&a).exists(),
            "still linked from acme/web"
        );
        assert!(!dir.join("sha256").join(&b).exists());
        assert!(dir.join("tags/up/acme/web/1/k.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
