//! The hosted registry: repositories vendors push into berth (`/v2/<app>/<repository>`)
//! and their customers pull, served from storage only, never an upstream. Owns upload
//! sessions (staged, hashed as the bytes arrive, expired when idle), blob commits and
//! mounts, manifest validation on push, and hosted tags (authoritative: no TTL). Content is
//! `content::Space::Hosted`, so it never mixes with proxied repositories, and a digest is
//! served to a repository only when linked to it (knowing a digest of app A opens nothing
//! under app B). Who may do what is decided by the caller (`api` with `auth`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::body;
use crate::cache::Cache;
use crate::content::{RepoKey, TagEntry, TagKey};
use crate::error::Error;
use crate::oci::manifest::Manifest;
use crate::oci::media;
use crate::oci::repo::Reference;
use crate::oci::Digest;
use crate::registry::{ByteRange, Fetched};
use crate::storage::{ErrorKind, StagedBlob};

/// The tag record of a hosted repository: one per tag, whatever the client accepts (a
/// pushed manifest has one media type).
const HOSTED_TAG: &str = "hosted";

/// One upload session.
struct Upload {
    repo: RepoKey,
    /// The public id of the license or key that began it: nobody else may continue it.
    subject: String,
    staged: Arc<dyn StagedBlob>,
    last: Mutex<Instant>,
    /// One request at a time writes to an upload (a second concurrent PATCH waits, then
    /// finds the offset moved).
    busy: Arc<tokio::sync::Mutex<()>>,
}

pub struct Hosted {
    cache: Arc<Cache>,
    uploads: Mutex<HashMap<String, Arc<Upload>>>,
    timeout: Duration,
}

/// Where an upload stands: its id and the bytes it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    pub id: String,
    pub offset: u64,
}

/// A manifest stored by a push.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: Digest,
    /// The manifest's `subject`, for the `OCI-Subject` header.
    pub subject: Option<Digest>,
}

fn upload_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn storage_error(e: crate::storage::StorageError) -> Error {
    match e.kind() {
        ErrorKind::Full => Error::Denied(format!("storage full: {e}")),
        _ => Error::Internal(e.to_string()),
    }
}

impl Hosted {
    /// `timeout` is `hosted.upload_timeout` (default an hour: distribution keeps uploads a
    /// week, but an hour is ample between two chunks of a client still there, and bounds
    /// the staging space abandoned pushes hold). Read at start; a reload keeps it.
    pub fn new(cache: Arc<Cache>, timeout: Duration) -> Hosted {
        Hosted {
            cache,
            uploads: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Aborts uploads idle for longer than the timeout, every tenth of it; call inside the
    /// runtime.
    pub fn start_sweep(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let every = (self.timeout / 10).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = me.upgrade() else { return };
                me.sweep(Instant::now());
            }
        });
    }

    /// Aborts every upload idle since before `now - timeout`; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        let before = uploads.len();
        uploads.retain(|_, u| {
            let idle =
                now.saturating_duration_since(*u.last.lock().unwrap_or_else(|e| e.into_inner()));
            let keep = idle < self.timeout;
            if !keep {
                u.staged.abort();
            }
            keep
        });
        before - uploads.len()
    }

    pub fn uploads_in_progress(&self) -> usize {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Begins an upload into `repo` for `subject`.
    pub fn begin(&self, repo: &RepoKey, subject: &str) -> Result<UploadState, Error> {
        let staged = self.cache.storage.blobs.stage().map_err(storage_error)?;
        let id = upload_id();
        let u = Arc::new(Upload {
            repo: repo.clone(),
            subject: subject.to_string(),
            staged,
            last: Mutex::new(Instant::now()),
            busy: Arc::new(tokio::sync::Mutex::new(())),
        });
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), u);
        Ok(UploadState { id, offset: 0 })
    }

    /// The upload `id` of `repo`, when `subject` began it. Another repository's or another
    /// subject's upload is unknown here (its id says nothing to them).
    fn upload(&self, repo: &RepoKey, id: &str, subject: &str) -> Result<Arc<Upload>, Error> {
        let uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        match uploads.get(id) {
            Some(u) if u.repo == *repo && u.subject == subject => {
                *u.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                Ok(u.clone())
            }
            _ => Err(Error::BlobUploadUnknown(format!("no upload {id}"))),
        }
    }

    pub fn status(&self, repo: &RepoKey, id: &str, subject: &str) -> Result<UploadState, Error> {
        let u = self.upload(repo, id, subject)?;
        Ok(UploadState {
            id: id.to_string(),
            offset: u.staged.len(),
        })
    }

    /// Cancels an upload; its staged bytes are dropped.
    pub fn cancel(&self, repo: &RepoKey, id: &str, subject: &str) -> Result<(), Error> {
        let u = self.upload(repo, id, subject)?;
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        u.staged.abort();
        Ok(())
    }

    /// A writer for the next bytes of an upload; `start` is the first offset of a chunk
    /// (`Content-Range`), which must be where the upload ends.
    pub async fn writer(
        &self,
        repo: &RepoKey,
        id: &str,
        subject: &str,
        start: Option<u64>,
    ) -> Result<Writer, Error> {
        let u = self.upload(repo, id, subject)?;
        let guard = u.busy.clone().lock_owned().await;
        let offset = u.staged.len();
        if let Some(start) = start {
            if start != offset {
                return Err(Error::UploadRange {
                    range: range_header(offset),
                });
            }
        }
        Ok(Writer {
            upload: u,
            _guard: guard,
        })
    }

    /// Makes a written upload the blob `digest` of its repository: refused (and the upload
    /// ended, nothing kept) when the bytes do not hash to it.
    pub async fn finish(&self, w: Writer, id: &str, digest: &Digest) -> Result<(), Error> {
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let u = &w.upload;
        if !crate::storage::layout::is_storable(digest) {
            u.staged.abort();
            return Err(Error::DigestInvalid(format!(
                "{digest}: berth stores sha256 blobs only"
            )));
        }
        match u.staged.commit(digest).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::DigestMismatch => {
                u.staged.abort();
                return Err(Error::DigestInvalid(format!(
                    "the uploaded bytes do not hash to {digest}"
                )));
            }
            Err(e) => {
                u.staged.abort();
                return Err(storage_error(e));
            }
        }
        self.adopt(&u.repo, digest, u.staged.len()).await
    }

    /// Records a committed blob: pinned (hosted blobs are never evicted; garbage collection
    /// will remove unreferenced ones) and linked to the repository.
    async fn adopt(&self, repo: &RepoKey, digest: &Digest, size: u64) -> Result<(), Error> {
        let hex = digest.hex().to_string();
        self.cache.blobs.index().insert(&hex, size, true);
        self.cache
            .pin(std::slice::from_ref(&hex))
            .await
            .map_err(storage_error)?;
        self.cache.links.add(repo, [digest]).await;
        Ok(())
    }

    /// Mounts `digest` from `from` into `repo` (the caller checked both are of one app and
    /// that the subject may pull `from`): true when it is linked there and stored.
    pub async fn mount(&self, repo: &RepoKey, from: &RepoKey, digest: &Digest) -> bool {
        if repo.app != from.app || !self.cache.links.contains(from, digest).await {
            return false;
        }
        if !self.cache.has_blob(digest).await {
            return false;
        }
        self.cache.links.add(repo, [digest]).await;
        true
    }

    /// Whether `digest` is a blob of `repo`, and its size.
    pub async fn blob_size(&self, repo: &RepoKey, digest: &Digest) -> Option<u64> {
        if !self.cache.links.contains(repo, digest).await {
            return None;
        }
        self.cache
            .storage
            .blobs
            .stat(digest)
            .await
            .ok()
            .map(|i| i.size)
    }

    /// A blob of `repo` (whole or a range), from storage; unknown unless linked there.
    pub async fn blob(
        &self,
        repo: &RepoKey,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<Fetched, Error> {
        let unknown = || Error::BlobUnknown(format!("{digest} in {}", repo.name));
        if !self.cache.links.contains(repo, digest).await || !self.cache.has_blob(digest).await {
            return Err(unknown());
        }
        let opened = self.cache.blobs.open(digest).await.ok_or_else(unknown)?;
        crate::registry::cached_blob(&self.cache, digest, opened, range, head)
    }

    /// Stores a pushed manifest after checking it: size, media type against the body's,
    /// every blob it references linked in `repo` and every child manifest present there.
    pub async fn put_manifest(
        &self,
        repo: &RepoKey,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<Pushed, Error> {
        if bytes.len() as u64 > media::MAX_MANIFEST {
            return Err(Error::ManifestInvalid(format!(
                "manifests are limited to {} bytes",
                media::MAX_MANIFEST
            )));
        }
        let m = Manifest::parse(&bytes)
            .ok_or_else(|| Error::ManifestInvalid("not a manifest".into()))?;
        let declared = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .filter(|c| !c.is_empty());
        let media_type = match (&declared, &m.media_type) {
            (Some(c), Some(b)) if c != b => {
                return Err(Error::ManifestInvalid(format!(
                    "Content-Type {c:?} is not the manifest's mediaType {b:?}"
                )))
            }
            (Some(c), _) => c.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => {
                return Err(Error::ManifestInvalid(
                    "neither Content-Type nor mediaType says what this is".into(),
                ))
            }
        };
        let digest = Digest::sha256_of(&bytes);
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(Error::DigestInvalid(format!(
                    "the manifest's digest is {digest}, not {d}"
                )));
            }
        }
        let mut linked = vec![digest.clone()];
        if m.is_index(&media_type) {
            for child in &m.manifests {
                let d = child.digest.clone();
                if !self.cache.links.contains(repo, &d).await
                    || self.cache.manifests.get(&d).await.is_none()
                {
                    return Err(Error::ManifestBlobUnknown(format!(
                        "child manifest {d} is not in {}",
                        repo.name
                    )));
                }
                linked.push(d);
            }
        } else {
            if m.config.is_none() && m.layers.is_empty() {
                return Err(Error::ManifestInvalid(
                    "an image manifest needs a config".into(),
                ));
            }
            for b in m.blobs() {
                let d = b.digest.clone();
                match self.blob_size(repo, &d).await {
                    Some(size) if size == b.size => {}
                    Some(size) => {
                        return Err(Error::ManifestInvalid(format!(
                            "{d} is {size} bytes, the manifest says {}",
                            b.size
                        )))
                    }
                    None => {
                        return Err(Error::ManifestBlobUnknown(format!(
                            "{d} is not in {}",
                            repo.name
                        )))
                    }
                }
            }
        }
        let subject = subject_of(&bytes);
        self.cache
            .manifests
            .put(&digest, bytes.clone(), &media_type)
            .await
            .map_err(storage_error)?;
        self.cache.links.add(repo, &linked).await;
        if let Reference::Tag(tag) = reference {
            self.cache
                .tags
                .put(
                    &tag_key(repo, tag),
                    TagEntry {
                        digest: digest.clone(),
                        media_type,
                        length: bytes.len() as u64,
                        checked_ms: crate::content::now_ms(),
                    },
                )
                .await;
        }
        Ok(Pushed { digest, subject })
    }

    /// A manifest of `repo` by tag or digest; unknown unless linked there.
    pub async fn manifest(
        &self,
        repo: &RepoKey,
        reference: &Reference,
        head: bool,
    ) -> Result<Fetched, Error> {
        let unknown = || Error::ManifestUnknown(format!("{}:{reference}", repo.name));
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => {
                self.cache
                    .tags
                    .get(&tag_key(repo, t))
                    .await
                    .ok_or_else(unknown)?
                    .digest
            }
        };
        if !self.cache.links.contains(repo, &digest).await {
            return Err(unknown());
        }
        let m = self
            .cache
            .manifests
            .get(&digest)
            .await
            .ok_or_else(unknown)?;
        Ok(Fetched {
            partial: false,
            media_type: Some(m.media_type.clone()),
            digest: Some(digest.to_string()),
            length: Some(m.bytes.len() as u64),
            content_range: None,
            link: None,
            body: if head {
                body::empty()
            } else {
                body::full(m.bytes.clone())
            },
        })
    }

    /// The tags of `repo`, sorted, `n` at most after `last`, with a `Link` to the next page.
    pub async fn tags(
        &self,
        repo: &RepoKey,
        public_name: &str,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Fetched, Error> {
        let mut tags = self.cache.tags.tags_of(repo, HOSTED_TAG).await;
        if tags.is_empty() {
            return Err(Error::NameUnknown(public_name.to_string()));
        }
        tags.sort();
        tags.dedup();
        if let Some(last) = last {
            tags.retain(|t| t.as_str() > last);
        }
        let mut link = None;
        if let Some(n) = n {
            let n = n as usize;
            if tags.len() > n {
                tags.truncate(n);
                if let Some(l) = tags.last() {
                    link = Some(format!(
                        "</v2/{public_name}/tags/list?n={n}&last={l}>; rel=\"next\""
                    ));
                }
            }
        }
        let body = serde_json::to_vec(&serde_json::json!({ "name": public_name, "tags": tags }))
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Fetched {
            partial: false,
            media_type: Some("application/json".into()),
            digest: None,
            length: Some(body.len() as u64),
            content_range: None,
            link,
            body: body::full(body),
        })
    }
}

/// The bytes of one request into an upload; holds the upload while they arrive.
pub struct Writer {
    upload: Arc<Upload>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Writer {
    /// Appends a chunk of the request body (hashed on the way, off the async threads).
    pub async fn append(&self, bytes: Bytes) -> Result<(), Error> {
        if bytes.is_empty() {
            return Ok(());
        }
        let staged = self.upload.staged.clone();
        tokio::task::spawn_blocking(move || staged.append(&bytes))
            .await
            .map_err(|e| Error::Internal(format!("staging: {e}")))?
            .map_err(storage_error)?;
        *self.upload.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    pub fn offset(&self) -> u64 {
        self.upload.staged.len()
    }
}

/// `Range: 0-<offset-1>` of an upload holding `offset` bytes (`0-0` for none, as
/// distribution answers).
pub fn range_header(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn tag_key(repo: &RepoKey, tag: &str) -> TagKey {
    TagKey {
        repo: repo.clone(),
        tag: tag.to_string(),
        accept: HOSTED_TAG.to_string(),
    }
}

fn subject_of(bytes: &[u8]) -> Option<Digest> {
    #[derive(serde::Deserialize)]
    struct S {
        subject: Option<D>,
    }
    #[derive(serde::Deserialize)]
    struct D {
        digest: String,
    }
    serde_json::from_slice::<S>(bytes)
        .ok()?
        .subject?
        .digest
        .parse()
        .ok()
}
