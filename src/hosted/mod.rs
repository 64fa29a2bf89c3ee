//! The hosted registry: repositories vendors push into berth (`/v2/<app>/<repository>`)
//! and their customers pull, served from storage only, never an upstream. Owns upload
//! sessions (staged, hashed as the bytes arrive, expired when idle), blob commits and
//! mounts, manifest validation on push, deletes, referrers, the catalog, quotas and tag
//! immutability, and garbage collection (`gc`). What belongs to which repository is the
//! state store's hosted index (`state::hosted`), so a digest is served to a repository
//! only when linked to it there (knowing a digest of app A opens nothing under app B);
//! the bytes are in the storage seam, shared with proxied content by digest. Who may do
//! what is decided by the caller (`api` with `auth`).

pub mod gc;
pub mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::body;
use crate::cache::Cache;
use crate::content::RepoKey;
use crate::error::Error;
use crate::oci::manifest::Manifest;
use crate::oci::media;
use crate::oci::repo::Reference;
use crate::oci::Digest;
use crate::registry::{ByteRange, Fetched};
use crate::state::hosted::{HostedIndex, ManifestRow, NewManifest, PutManifest};
use crate::state::StateError;
use crate::storage::{ErrorKind, StagedBlob};
use crate::tenancy::HostedPolicy;

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
    index: Arc<dyn HostedIndex>,
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

/// Who a catalog listing is for: the apps whose repositories it may show, and for a
/// license, which of them its image globs allow.
pub struct Visible<'a> {
    pub apps: Vec<String>,
    pub allows: &'a (dyn Fn(&str, &str) -> bool + Sync),
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

/// The state store failing is berth's problem, not the client's: 503, and a log line.
fn state_error(e: StateError) -> Error {
    tracing::error!(error = %e, "hosted registry: the state store failed");
    Error::Unavailable("the registry's index cannot be read; try again".into())
}

/// Bytes for people: `1.5 GiB`.
pub use crate::settings::human_size as human;

impl Hosted {
    /// `timeout` is `hosted.upload_timeout` (default an hour: distribution keeps uploads a
    /// week, but an hour is ample between two chunks of a client still there, and bounds
    /// the staging space abandoned pushes hold). Read at start; a reload keeps it.
    pub fn new(cache: Arc<Cache>, index: Arc<dyn HostedIndex>, timeout: Duration) -> Hosted {
        Hosted {
            cache,
            index,
            uploads: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Pins every hosted blob in the cache's index, so eviction (which only knows the
    /// proxied LRU and airgap pins) never takes one; call once at start.
    pub async fn pin_hosted(&self) -> Result<usize, StateError> {
        let blobs = self.index.hosted_blobs().await?;
        let index = self.cache.blobs.index();
        for (d, _) in &blobs {
            if let Ok(d) = d.parse::<Digest>() {
                index.set_pinned(d.hex(), true);
            }
        }
        Ok(blobs.len())
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

    /// Refuses a push into an app already at its quota (before the client sends a byte).
    async fn check_quota(
        &self,
        app: &str,
        policy: &HostedPolicy,
        adding: u64,
    ) -> Result<(), Error> {
        let Some(quota) = policy.quota else {
            return Ok(());
        };
        let used = self.index.app_bytes(app).await.map_err(state_error)?;
        if used.saturating_add(adding) > quota || (adding == 0 && used >= quota) {
            return Err(Error::Denied(format!(
                "app {app:?} is over its hosted storage quota: it holds {} of {} (apps[].hosted.quota){}",
                human(used),
                human(quota),
                if adding > 0 {
                    format!(", and this push adds {}", human(adding))
                } else {
                    String::new()
                }
            )));
        }
        Ok(())
    }

    /// Begins an upload into `repo` for `subject`.
    pub async fn begin(
        &self,
        repo: &RepoKey,
        subject: &str,
        policy: &HostedPolicy,
    ) -> Result<UploadState, Error> {
        self.check_quota(&repo.app, policy, 0).await?;
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
    /// ended, nothing kept) when the bytes do not hash to it or the app's quota would be
    /// passed.
    pub async fn finish(
        &self,
        w: Writer,
        id: &str,
        digest: &Digest,
        policy: &HostedPolicy,
    ) -> Result<(), Error> {
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
        if u.staged.digest() != *digest {
            u.staged.abort();
            return Err(Error::DigestInvalid(format!(
                "the uploaded bytes do not hash to {digest}"
            )));
        }
        let size = u.staged.len();
        // A blob the app already holds (in any of its repositories) takes no more room.
        let adding = match self.index.app_has_blob(&u.repo.app, digest.as_str()).await {
            Ok(true) => 0,
            Ok(false) => size,
            Err(e) => {
                u.staged.abort();
                return Err(state_error(e));
            }
        };
        if adding > 0 {
            if let Err(e) = self.check_quota(&u.repo.app, policy, adding).await {
                u.staged.abort();
                return Err(e);
            }
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
        self.adopt(&u.repo, digest, size).await
    }

    /// Records a committed blob: linked to the repository in the index (which touches the
    /// link, so a collection running now keeps it) and pinned in the cache's memory.
    async fn adopt(&self, repo: &RepoKey, digest: &Digest, size: u64) -> Result<(), Error> {
        self.index
            .link_blob(&repo.app, &repo.name, digest.as_str(), size)
            .await
            .map_err(state_error)?;
        self.cache.blobs.index().insert(digest.hex(), size, true);
        Ok(())
    }

    /// Mounts `digest` from `from` into `repo` (the caller checked both are of one app and
    /// that the subject may pull `from`): true when it is linked there and stored.
    pub async fn mount(
        &self,
        repo: &RepoKey,
        from: &RepoKey,
        digest: &Digest,
    ) -> Result<bool, Error> {
        if repo.app != from.app {
            return Ok(false);
        }
        let Some(size) = self
            .index
            .blob(&from.app, &from.name, digest.as_str())
            .await
            .map_err(state_error)?
        else {
            return Ok(false);
        };
        if !self.cache.has_blob(digest).await {
            return Ok(false);
        }
        self.adopt(repo, digest, size).await?;
        Ok(true)
    }

    /// Whether `digest` is a blob of `repo`, and its size.
    pub async fn blob_size(&self, repo: &RepoKey, digest: &Digest) -> Result<Option<u64>, Error> {
        self.index
            .blob(&repo.app, &repo.name, digest.as_str())
            .await
            .map_err(state_error)
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
        let Some(size) = self.blob_size(repo, digest).await? else {
            return Err(unknown());
        };
        if !self.cache.has_blob(digest).await {
            return Err(unknown());
        }
        // Pushed by another replica or process: pinned here too.
        self.cache.blobs.index().set_pinned(digest.hex(), true);
        let opened = self.cache.blobs.open(digest).await.ok_or_else(unknown)?;
        if opened.size != size {
            tracing::warn!(%digest, "a hosted blob's stored size differs from its index entry");
        }
        crate::registry::cached_blob(&self.cache, digest, opened, range, head)
    }

    /// Unlinks a blob from `repo` (its bytes go at the next collection if nothing else
    /// links them).
    pub async fn delete_blob(&self, repo: &RepoKey, digest: &Digest) -> Result<(), Error> {
        if self
            .index
            .unlink_blob(&repo.app, &repo.name, digest.as_str())
            .await
            .map_err(state_error)?
        {
            Ok(())
        } else {
            Err(Error::BlobUnknown(format!("{digest} in {}", repo.name)))
        }
    }

    /// Stores a pushed manifest after checking it: size, media type against the body's,
    /// every blob it references linked in `repo`, every child manifest present there, the
    /// app's quota and tag immutability.
    pub async fn put_manifest(
        &self,
        repo: &RepoKey,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        policy: &HostedPolicy,
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
        let extra = Extra::of(&bytes);
        let (mut blobs, mut children) = (Vec::new(), Vec::new());
        if m.is_index(&media_type) {
            children = m.manifests.iter().map(|c| c.digest.to_string()).collect();
        } else {
            if m.config.is_none() && m.layers.is_empty() {
                return Err(Error::ManifestInvalid(
                    "an image manifest needs a config".into(),
                ));
            }
            for b in m.blobs() {
                let d = b.digest.clone();
                match self.blob_size(repo, &d).await? {
                    Some(size) if size == b.size => blobs.push(d.to_string()),
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
        blobs.sort();
        blobs.dedup();
        children.sort();
        children.dedup();
        let tag = match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        };
        if self
            .index
            .manifest(&repo.app, &repo.name, digest.as_str())
            .await
            .map_err(state_error)?
            .is_none()
        {
            self.check_quota(&repo.app, policy, bytes.len() as u64)
                .await?;
        }
        let artifact_type = extra
            .artifact_type
            .clone()
            .or_else(|| m.config.as_ref().map(|c| c.media_type.clone()))
            .filter(|t| !t.is_empty());
        let new = NewManifest {
            row: ManifestRow {
                digest: digest.to_string(),
                media_type: media_type.clone(),
                artifact_type,
                subject: extra.subject.as_ref().map(|s| s.to_string()),
                size: bytes.len() as u64,
                annotations: extra.annotations.clone(),
                touched: std::time::SystemTime::now(),
            },
            blobs,
            children,
            tag_mutable: tag.as_deref().is_none_or(|t| !policy.is_immutable(t)),
            tag,
        };
        // The bytes first: an index entry never points at a manifest that is not stored.
        self.cache
            .manifests
            .put(&digest, bytes.clone(), &media_type)
            .await
            .map_err(storage_error)?;
        match self
            .index
            .put_manifest(&repo.app, &repo.name, &new)
            .await
            .map_err(state_error)?
        {
            PutManifest::Stored => {}
            PutManifest::BlobUnknown(d) => {
                return Err(Error::ManifestBlobUnknown(format!(
                    "{d} is not in {}",
                    repo.name
                )))
            }
            PutManifest::ManifestUnknown(d) => {
                return Err(Error::ManifestBlobUnknown(format!(
                    "child manifest {d} is not in {}",
                    repo.name
                )))
            }
            PutManifest::TagImmutable(current) => {
                return Err(Error::Denied(format!(
                "tag {} of {} is immutable (apps[].hosted.immutable_tags) and points at {current}",
                new.tag.as_deref().unwrap_or(""),
                repo.name
            )))
            }
        }
        Ok(Pushed {
            digest,
            subject: extra.subject,
        })
    }

    /// A manifest of `repo` by tag or digest; unknown unless linked there.
    pub async fn manifest(
        &self,
        repo: &RepoKey,
        reference: &Reference,
        head: bool,
    ) -> Result<Fetched, Error> {
        let unknown = || Error::ManifestUnknown(format!("{}:{reference}", repo.name));
        let row = match reference {
            Reference::Digest(d) => self.index.manifest(&repo.app, &repo.name, d.as_str()).await,
            Reference::Tag(t) => self.index.tagged(&repo.app, &repo.name, t).await,
        }
        .map_err(state_error)?
        .ok_or_else(unknown)?;
        let digest: Digest = row.digest.parse().map_err(|_| unknown())?;
        let m = self
            .cache
            .manifests
            .get(&digest)
            .await
            .ok_or_else(unknown)?;
        Ok(Fetched {
            partial: false,
            media_type: Some(row.media_type),
            digest: Some(row.digest),
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

    /// Deletes a manifest (by digest: with the tags that point at it) or a tag (by tag:
    /// the manifest stays). An immutable tag is not deleted, nor a manifest one points at.
    pub async fn delete_manifest(
        &self,
        repo: &RepoKey,
        reference: &Reference,
        policy: &HostedPolicy,
    ) -> Result<(), Error> {
        let unknown = || Error::ManifestUnknown(format!("{}:{reference}", repo.name));
        let (app, name) = (&repo.app, &repo.name);
        let deleted = match reference {
            Reference::Tag(t) => {
                if policy.is_immutable(t)
                    && self
                        .index
                        .tagged(app, name, t)
                        .await
                        .map_err(state_error)?
                        .is_some()
                {
                    return Err(Error::Denied(format!(
                        "tag {t} of {name} is immutable (apps[].hosted.immutable_tags)"
                    )));
                }
                self.index.delete_tag(app, name, t).await
            }
            Reference::Digest(d) => {
                if !policy.immutable_tags.is_empty() {
                    let tags = self
                        .index
                        .tags_of(app, name, d.as_str())
                        .await
                        .map_err(state_error)?;
                    if let Some(t) = tags.iter().find(|t| policy.is_immutable(t)) {
                        return Err(Error::Denied(format!(
                            "{d} is tagged {t}, an immutable tag (apps[].hosted.immutable_tags)"
                        )));
                    }
                }
                self.index.delete_manifest(app, name, d.as_str()).await
            }
        }
        .map_err(state_error)?;
        if deleted {
            Ok(())
        } else {
            Err(unknown())
        }
    }

    /// The tags of `repo`, sorted, `n` at most after `last`, with a `Link` to the next page.
    pub async fn tags(
        &self,
        repo: &RepoKey,
        public_name: &str,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Fetched, Error> {
        if !self
            .index
            .repo_exists(&repo.app, &repo.name)
            .await
            .map_err(state_error)?
        {
            return Err(Error::NameUnknown(public_name.to_string()));
        }
        // One more than asked tells whether there is a next page.
        let limit = n.map_or(usize::MAX, |n| n as usize + 1);
        let mut tags = self
            .index
            .tags(&repo.app, &repo.name, last, limit)
            .await
            .map_err(state_error)?;
        let link = page(&mut tags, n, |l| {
            format!("/v2/{public_name}/tags/list?n={}&last={l}", n.unwrap_or(0))
        });
        json(
            &serde_json::json!({ "name": public_name, "tags": tags }),
            link,
        )
    }

    /// The manifests whose subject is `digest`, as an image index, optionally only those
    /// of one artifact type (then `filtered` is true and the caller says so in
    /// `OCI-Filters-Applied`).
    pub async fn referrers(
        &self,
        repo: &RepoKey,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Fetched, Error> {
        let rows = self
            .index
            .referrers(&repo.app, &repo.name, digest.as_str())
            .await
            .map_err(state_error)?;
        let manifests: Vec<serde_json::Value> = rows
            .into_iter()
            .filter(|r| artifact_type.is_none_or(|a| r.artifact_type.as_deref() == Some(a)))
            .map(|r| {
                let mut d = serde_json::json!({
                    "mediaType": r.media_type,
                    "digest": r.digest,
                    "size": r.size,
                });
                if let Some(a) = r.artifact_type {
                    d["artifactType"] = a.into();
                }
                if let Some(v) = r
                    .annotations
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
                {
                    d["annotations"] = v;
                }
                d
            })
            .collect();
        let mut f = json(
            &serde_json::json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_INDEX,
                "manifests": manifests,
            }),
            None,
        )?;
        f.media_type = Some(media::OCI_INDEX.into());
        Ok(f)
    }

    /// Hosted repositories `visible` may see, as `<app>/<repository>`, sorted, `n` at most
    /// after `last`, with a `Link` to the next page.
    pub async fn catalog(
        &self,
        visible: &Visible<'_>,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Fetched, Error> {
        let want = n.map_or(usize::MAX, |n| n as usize + 1);
        let mut out: Vec<String> = Vec::new();
        let mut after = last.map(str::to_string);
        // Pages of the index, filtered by the globs of a license, until enough are found.
        const BATCH: usize = 1000;
        loop {
            let batch = self
                .index
                .catalog(Some(&visible.apps), after.as_deref(), BATCH)
                .await
                .map_err(state_error)?;
            let done = batch.len() < BATCH;
            after = batch.last().cloned();
            for name in batch {
                let (app, repo) = name.split_once('/').unwrap_or((&name, ""));
                if (visible.allows)(app, repo) {
                    out.push(name);
                    if out.len() >= want {
                        break;
                    }
                }
            }
            if done || out.len() >= want {
                break;
            }
        }
        let link = page(&mut out, n, |l| {
            format!("/v2/_catalog?n={}&last={l}", n.unwrap_or(0))
        });
        json(&serde_json::json!({ "repositories": out }), link)
    }

    /// The bytes an app's hosted content takes (for usage and the admin API).
    pub async fn app_bytes(&self, app: &str) -> Result<u64, Error> {
        self.index.app_bytes(app).await.map_err(state_error)
    }
}

/// Cuts a listing fetched with one extra entry to `n`, and returns the `Link` header
/// value to the next page when there is one.
fn page(items: &mut Vec<String>, n: Option<u32>, next: impl Fn(&str) -> String) -> Option<String> {
    let n = n? as usize;
    if items.len() <= n {
        return None;
    }
    items.truncate(n);
    let last = items.last()?;
    let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
    Some(format!("<{}>; rel=\"next\"", next(&last)))
}

fn json(v: &serde_json::Value, link: Option<String>) -> Result<Fetched, Error> {
    let body = serde_json::to_vec(v).map_err(|e| Error::Internal(e.to_string()))?;
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

/// What the index keeps of a manifest beyond the common model: its `subject`,
/// `artifactType` and `annotations` (for the referrers API).
struct Extra {
    subject: Option<Digest>,
    artifact_type: Option<String>,
    annotations: Option<String>,
}

impl Extra {
    fn of(bytes: &[u8]) -> Extra {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct S {
            subject: Option<D>,
            artifact_type: Option<String>,
            annotations: Option<serde_json::Map<String, serde_json::Value>>,
        }
        #[derive(serde::Deserialize)]
        struct D {
            digest: String,
        }
        let Ok(s) = serde_json::from_slice::<S>(bytes) else {
            return Extra {
                subject: None,
                artifact_type: None,
                annotations: None,
            };
        };
        Extra {
            subject: s.subject.and_then(|d| d.digest.parse().ok()),
            artifact_type: s.artifact_type,
            annotations: s
                .annotations
                .filter(|a| !a.is_empty())
                .and_then(|a| serde_json::to_string(&a).ok()),
        }
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
