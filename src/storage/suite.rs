//! The backend test suite: what every storage backend must do, run against each of them
//! (`storage_suite!(name, { make a Harness })` in the backend's tests). A new backend (S3)
//! passes this before anything is built on it.

use std::sync::Arc;

use bytes::Bytes;

use super::{BlobBackend, ErrorKind, LegacyTagPath, ObjectKey, ObjectPrefix, ObjectStore, TagPath};
use crate::oci::Digest;

/// One backend under test.
pub struct Harness {
    pub blobs: Arc<dyn BlobBackend>,
    pub objects: Arc<dyn ObjectStore>,
    /// How many staged writes the backend still holds (files in `tmp/`, open buffers):
    /// after a commit, an abort or a refused commit, none may remain.
    pub staged_leftovers: Box<dyn Fn() -> usize + Send + Sync>,
}

/// Runs every suite case as its own test; `$make` evaluates to `(Harness, guard)`, the
/// guard living as long as the test (a temp directory).
macro_rules! storage_suite {
    ($name:ident, $make:block) => {
        mod $name {
            use super::*;
            use $crate::storage::suite as s;

            macro_rules! case {
                ($case:ident) => {
                    #[tokio::test]
                    async fn $case() {
                        let (h, _guard) = $make;
                        s::$case(&h).await;
                    }
                };
            }
            case!(write_commit_read);
            case!(staged_bytes_are_readable_while_and_after_committing);
            case!(abort_leaves_nothing);
            case!(a_wrong_digest_is_refused_and_nothing_is_left);
            case!(ranged_reads);
            case!(stat_and_delete);
            case!(list_blobs);
            case!(concurrent_commits_of_one_digest);
            case!(adopt_a_verified_file);
            case!(small_objects_put_get_delete);
            case!(small_objects_list_by_prefix);
            case!(small_objects_replace_atomically);
            case!(appends_stay_whole_and_are_read_from_an_offset);
        }
    };
}
pub(crate) use storage_suite;

/// Bytes that differ from position to position.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn put_blob(h: &Harness, data: &[u8]) -> Digest {
    let s = h.blobs.stage().unwrap();
    for c in data.chunks(7919) {
        s.append(c).unwrap();
    }
    let d = Digest::sha256_of(data);
    s.commit(&d).await.unwrap();
    d
}

pub async fn write_commit_read(h: &Harness) {
    let data = pattern(300_000, 1);
    let s = h.blobs.stage().unwrap();
    assert!(s.is_empty());
    for c in data.chunks(65_536) {
        s.append(c).unwrap();
    }
    assert_eq!(s.len(), data.len() as u64);
    let d = Digest::sha256_of(&data);
    assert_eq!(s.digest(), d, "the staged blob hashes what was appended");
    assert!(
        h.blobs.stat(&d).await.unwrap_err().is_not_found(),
        "visible before commit"
    );
    s.commit(&d).await.unwrap();
    assert_eq!(h.blobs.stat(&d).await.unwrap().size, data.len() as u64);
    assert_eq!(
        &h.blobs.read(&d, 0, data.len()).await.unwrap()[..],
        &data[..]
    );
    if let Some(f) = h.blobs.local_file(&d).await.unwrap() {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; data.len()];
        f.0.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, data, "the local file holds the blob");
    }
    drop(s);
    assert_eq!((h.staged_leftovers)(), 0);
}

pub async fn staged_bytes_are_readable_while_and_after_committing(h: &Harness) {
    let data = pattern(100_000, 2);
    let s = h.blobs.stage().unwrap();
    s.append(&data[..60_000]).unwrap();
    let mut buf = vec![0; 10_000];
    s.read_at(&mut buf, 50_000).unwrap();
    assert_eq!(buf, data[50_000..60_000]);
    assert!(
        s.read_at(&mut buf, 55_000).is_err(),
        "read past what was appended"
    );
    s.append(&data[60_000..]).unwrap();
    s.commit(&Digest::sha256_of(&data)).await.unwrap();
    // Followers of a fill finish from the staged blob after the commit.
    s.read_at(&mut buf, 90_000).unwrap();
    assert_eq!(buf, data[90_000..]);
}

pub async fn abort_leaves_nothing(h: &Harness) {
    let data = pattern(5000, 3);
    let s = h.blobs.stage().unwrap();
    s.append(&data).unwrap();
    assert_eq!((h.staged_leftovers)(), 1);
    s.abort();
    s.abort();
    assert_eq!((h.staged_leftovers)(), 0);
    let d = Digest::sha256_of(&data);
    assert!(h.blobs.stat(&d).await.unwrap_err().is_not_found());
    // An unfinished staged blob that is dropped goes too (a cancelled fill).
    let s = h.blobs.stage().unwrap();
    s.append(&data).unwrap();
    drop(s);
    assert_eq!((h.staged_leftovers)(), 0);
    assert!(h.blobs.list().await.unwrap().is_empty());
}

pub async fn a_wrong_digest_is_refused_and_nothing_is_left(h: &Harness) {
    let real = pattern(20_000, 4);
    let mut fake = real.clone();
    fake[10_000] ^= 1;
    let want = Digest::sha256_of(&real);
    let s = h.blobs.stage().unwrap();
    s.append(&fake).unwrap();
    let err = s.commit(&want).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
    assert_eq!((h.staged_leftovers)(), 0);
    assert!(h.blobs.stat(&want).await.unwrap_err().is_not_found());
    assert!(h
        .blobs
        .stat(&Digest::sha256_of(&fake))
        .await
        .unwrap_err()
        .is_not_found());
    assert!(h.blobs.list().await.unwrap().is_empty());
    // Nor is a digest berth does not store (only sha256 blobs are).
    let s = h.blobs.stage().unwrap();
    s.append(&real).unwrap();
    let sha512: Digest = format!("sha512:{}", "a".repeat(128)).parse().unwrap();
    assert!(s.commit(&sha512).await.is_err());
    assert_eq!((h.staged_leftovers)(), 0);
}

pub async fn ranged_reads(h: &Harness) {
    let data = pattern(1_000_000, 5);
    let d = put_blob(h, &data).await;
    for (off, len) in [
        (0, 1),
        (1, 262_144),
        (999_999, 1),
        (500_000, 500_000),
        (7, 0),
    ] {
        let got = h.blobs.read(&d, off as u64, len).await.unwrap();
        assert_eq!(&got[..], &data[off..off + len], "read({off}, {len})");
    }
    let err = h.blobs.read(&d, 999_990, 11).await.unwrap_err();
    assert!(
        !err.is_not_found(),
        "a short read is not a missing blob: {err}"
    );
    let missing = Digest::sha256_of(b"missing");
    assert!(h
        .blobs
        .read(&missing, 0, 1)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(h
        .blobs
        .local_file(&missing)
        .await
        .unwrap_err()
        .is_not_found());
}

pub async fn stat_and_delete(h: &Harness) {
    let data = pattern(4096, 6);
    let d = put_blob(h, &data).await;
    let info = h.blobs.stat(&d).await.unwrap();
    assert_eq!(info.size, 4096);
    h.blobs.delete(&d).await.unwrap();
    assert!(h.blobs.stat(&d).await.unwrap_err().is_not_found());
    assert!(h.blobs.read(&d, 0, 1).await.unwrap_err().is_not_found());
    assert_eq!(
        h.blobs.delete(&d).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Gone means gone for a new commit too: it comes back whole.
    let again = put_blob(h, &data).await;
    assert_eq!(h.blobs.stat(&again).await.unwrap().size, 4096);
}

pub async fn list_blobs(h: &Harness) {
    let mut want = Vec::new();
    for i in 0..3 {
        let data = pattern(1000 + i, 10 + i as u32);
        want.push((put_blob(h, &data).await, data.len() as u64));
    }
    let mut got: Vec<(Digest, u64)> = h
        .blobs
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(d, i)| (d, i.size))
        .collect();
    got.sort_by_key(|a| a.0.to_string());
    want.sort_by_key(|a| a.0.to_string());
    assert_eq!(got, want);
}

pub async fn concurrent_commits_of_one_digest(h: &Harness) {
    let data = Arc::new(pattern(200_000, 7));
    let d = Digest::sha256_of(&data);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let blobs = h.blobs.clone();
        let data = data.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let s = blobs.stage().unwrap();
            for c in data.chunks(16_384) {
                s.append(c).unwrap();
            }
            s.commit(&d).await
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("committing a digest that is already stored is fine");
    }
    assert_eq!(
        &h.blobs.read(&d, 0, data.len()).await.unwrap()[..],
        &data[..]
    );
    assert_eq!(h.blobs.list().await.unwrap().len(), 1);
    assert_eq!((h.staged_leftovers)(), 0);
}

pub async fn adopt_a_verified_file(h: &Harness) {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(3000, 8);
    let d = Digest::sha256_of(&data);
    let path = dir.path().join("staged");
    std::fs::write(&path, &data).unwrap();
    h.blobs.adopt_verified(&path, &d).await.unwrap();
    assert!(!path.exists(), "the adopted file is taken, not copied");
    assert_eq!(&h.blobs.read(&d, 0, 3000).await.unwrap()[..], &data[..]);
}

/// A tag answer of repository `proxy/<app>/<name>`.
fn tag(app: &str, name: &str, tag: &str, accept: &str) -> ObjectKey {
    ObjectKey::TagAnswer(TagPath {
        repo: format!("proxy/{app}/{name}"),
        tag: tag.into(),
        accept: accept.into(),
    })
}

fn legacy_tag(upstream: &str, repository: &str, tag: &str, accept: &str) -> ObjectKey {
    ObjectKey::LegacyTagAnswer(LegacyTagPath {
        upstream: upstream.into(),
        repository: repository.into(),
        tag: tag.into(),
        accept: accept.into(),
    })
}

pub async fn small_objects_put_get_delete(h: &Harness) {
    let d = Digest::sha256_of(b"manifest");
    let keys = [
        ObjectKey::Manifest(d.clone()),
        ObjectKey::ManifestMediaType(d.clone()),
        tag("hub", "library/nginx", "latest", "k1"),
        legacy_tag("hub", "library/nginx", "latest", "k1"),
        ObjectKey::Pins,
        ObjectKey::Links,
    ];
    for k in &keys {
        assert!(h.objects.get(k).await.unwrap_err().is_not_found(), "{k:?}");
    }
    for (i, k) in keys.iter().enumerate() {
        h.objects
            .put(k, Bytes::from(format!("object {i}")))
            .await
            .unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(h.objects.get(k).await.unwrap(), format!("object {i}"));
    }
    h.objects.delete(&keys[2]).await.unwrap();
    assert!(h.objects.get(&keys[2]).await.unwrap_err().is_not_found());
    assert!(h.objects.delete(&keys[2]).await.unwrap_err().is_not_found());
    // The others are untouched.
    assert_eq!(h.objects.get(&keys[0]).await.unwrap(), "object 0");
}

pub async fn small_objects_list_by_prefix(h: &Harness) {
    let d1 = Digest::sha256_of(b"one");
    let d2 = Digest::sha256_of(b"two");
    let keys = [
        ObjectKey::Manifest(d1.clone()),
        ObjectKey::ManifestMediaType(d1.clone()),
        ObjectKey::Manifest(d2.clone()),
        tag("hub", "library/nginx", "latest", "k2"),
        tag("hub", "library/nginx", "latest", "k1"),
        tag("hub", "library/nginx", "1.27", "k1"),
        // A repository whose name continues the other's tag: not one of its answers.
        tag("hub", "library/nginx/latest", "x", "k1"),
        tag("ghcr", "library/nginx", "latest", "k1"),
        legacy_tag("hub", "library/nginx", "latest", "k1"),
        legacy_tag("hub", "library/nginx/latest", "x", "k1"),
        ObjectKey::Links,
    ];
    for k in &keys {
        h.objects.put(k, Bytes::from_static(b"{}")).await.unwrap();
    }
    let answers = h
        .objects
        .list(&ObjectPrefix::TagAnswers {
            repo: "proxy/hub/library/nginx".into(),
            tag: "latest".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![
            tag("hub", "library/nginx", "latest", "k1"),
            tag("hub", "library/nginx", "latest", "k2")
        ],
        "sorted, and only that tag's"
    );
    let manifests = h.objects.list(&ObjectPrefix::Manifests).await.unwrap();
    assert_eq!(manifests.len(), 3);
    assert!(manifests.contains(&ObjectKey::ManifestMediaType(d1)));
    assert_eq!(h.objects.list(&ObjectPrefix::Tags).await.unwrap().len(), 5);
    assert_eq!(
        h.objects
            .list(&ObjectPrefix::LegacyTags)
            .await
            .unwrap()
            .len(),
        2
    );
    let legacy = h
        .objects
        .list(&ObjectPrefix::LegacyTagAnswers {
            upstream: "hub".into(),
            repository: "library/nginx".into(),
            tag: "latest".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        legacy,
        vec![legacy_tag("hub", "library/nginx", "latest", "k1")]
    );
    let none = h
        .objects
        .list(&ObjectPrefix::TagAnswers {
            repo: "proxy/nobody/x".into(),
            tag: "y".into(),
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

pub async fn small_objects_replace_atomically(h: &Harness) {
    let key = tag("hub", "library/nginx", "latest", "atomic");
    let a = Bytes::from(vec![b'a'; 64 * 1024]);
    let b = Bytes::from(vec![b'b'; 32 * 1024]);
    h.objects.put(&key, a.clone()).await.unwrap();
    let writer = {
        let objects = h.objects.clone();
        let key = key.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let next = if i % 2 == 0 { b.clone() } else { a.clone() };
                objects.put(&key, next).await.unwrap();
            }
        })
    };
    while !writer.is_finished() {
        let got = h.objects.get(&key).await.unwrap();
        assert!(
            got == a || got == b,
            "a reader saw a torn object of {} bytes",
            got.len()
        );
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert_eq!(h.objects.get(&key).await.unwrap(), a, "the last put wins");
}

pub async fn appends_stay_whole_and_are_read_from_an_offset(h: &Harness) {
    let key = ObjectKey::Links;
    assert!(h
        .objects
        .get_from(&key, 0)
        .await
        .unwrap_err()
        .is_not_found());
    h.objects
        .append(&key, Bytes::from_static(b"first\n"), false)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let objects = h.objects.clone();
        tasks.push(tokio::spawn(async move {
            let mut line = vec![b'a' + i; 5000];
            line.push(b'\n');
            objects
                .append(&ObjectKey::Links, Bytes::from(line), i % 2 == 0)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let all = h.objects.get(&key).await.unwrap();
    let lines: Vec<&[u8]> = all
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 17);
    assert_eq!(lines[0], b"first");
    for l in &lines[1..] {
        assert!(
            l.len() == 5000 && l.iter().all(|&b| b == l[0]),
            "an interleaved append"
        );
    }
    assert_eq!(h.objects.get_from(&key, 6).await.unwrap(), all.slice(6..));
    assert!(h
        .objects
        .get_from(&key, all.len() as u64)
        .await
        .unwrap()
        .is_empty());
    assert!(h.objects.get_from(&key, 1 << 40).await.unwrap().is_empty());
    // A put replaces a log whole (compaction), and appends continue after it.
    h.objects
        .put(&key, Bytes::from_static(b"x\n"))
        .await
        .unwrap();
    h.objects
        .append(&key, Bytes::from_static(b"y\n"), true)
        .await
        .unwrap();
    assert_eq!(h.objects.get(&key).await.unwrap(), "x\ny\n");
}
