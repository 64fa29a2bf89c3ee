//! The hosted registry's metadata, kept in the state store beside licenses and keys: the
//! repositories of each app, which blobs and manifests are linked to which repository, tags,
//! and what each manifest references (blobs, child manifests, its subject), which is what
//! garbage collection marks from and the referrers API lists. Bytes stay in the storage
//! seam; only this index says which repository may serve them. One database (SQLite, or
//! PostgreSQL shared by replicas) makes a push, a delete and a collection transactions that
//! every replica sees at once, and lets catalog and tag listings page by index, not by scan.
//!
//! Concurrency rule that makes collection safe next to pushes without a read-only mode:
//! every link a push relies on is *touched* (its `touched` time set to now) in the push's
//! own transaction, and collection deletes a link only if it was last touched before its
//! cutoff (`start - grace`), re-checked in the deleting statement. A push that starts after
//! collection planned either touches the row first (collection then skips it) or finds it
//! gone and is refused (the client uploads again).

use std::time::SystemTime;

use super::Fut;

/// A manifest as the index knows it (the bytes are in the manifest store, by digest).
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestRow {
    pub digest: String,
    pub media_type: String,
    /// The manifest's `artifactType`, or for an image its config's media type (what the
    /// referrers API reports).
    pub artifact_type: Option<String>,
    /// The digest of the manifest's `subject`.
    pub subject: Option<String>,
    pub size: u64,
    /// The manifest's `annotations` as a JSON object (for referrers descriptors), if any.
    pub annotations: Option<String>,
    pub touched: SystemTime,
}

/// A manifest being pushed, with what it references.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub row: ManifestRow,
    /// The config and layers (image manifests): each must be linked to the repository.
    pub blobs: Vec<String>,
    /// The child manifests (an index's): each must be a manifest of the repository.
    pub children: Vec<String>,
    /// The tag it is pushed to, if pushed by tag.
    pub tag: Option<String>,
    /// Whether the tag, if it exists and points elsewhere, may be moved (false for a tag
    /// an immutability rule covers).
    pub tag_mutable: bool,
}

/// What a manifest push came to.
#[derive(Debug, Clone, PartialEq)]
pub enum PutManifest {
    Stored,
    /// A referenced blob is not linked to the repository (or was collected meanwhile).
    BlobUnknown(String),
    /// A child manifest is not in the repository.
    ManifestUnknown(String),
    /// The tag exists, points at this other digest, and may not be moved.
    TagImmutable(String),
}

/// A repository as collection sees it: everything needed to mark.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcRepo {
    pub app: String,
    pub repo: String,
    pub manifests: Vec<GcManifest>,
    /// Tag → digest.
    pub tags: Vec<(String, String)>,
    /// Linked blobs: digest, size, last touched.
    pub blobs: Vec<(String, u64, SystemTime)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GcManifest {
    pub digest: String,
    pub size: u64,
    pub subject: Option<String>,
    pub touched: SystemTime,
    /// Blobs and child manifests it references.
    pub refs: Vec<String>,
}

/// What one collection step removed from the index (bytes are freed by the caller).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcDeleted {
    pub manifests: Vec<String>,
    pub blobs: Vec<String>,
}

/// The hosted registry's index. Names: `app` is the slug, `repo` the repository within it
/// (`worker`, `team/worker`); digests as `sha256:<hex>`. Lists are in byte order of the
/// name (the spec's lexical order), whatever the database's collation.
pub trait HostedIndex: Send + Sync {
    /// Links a blob to a repository (creating the repository), touching the link.
    fn link_blob<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        digest: &'a str,
        size: u64,
    ) -> Fut<'a, ()>;
    /// The size of a blob linked to the repository.
    fn blob<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, Option<u64>>;
    /// Whether any repository of the app links the blob (a quota counts it once per app).
    fn app_has_blob<'a>(&'a self, app: &'a str, digest: &'a str) -> Fut<'a, bool>;
    /// Unlinks a blob from a repository (releasing its digest); false when it was not
    /// linked.
    fn unlink_blob<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, bool>;
    /// Whether any repository of any app links the digest, as a blob or a manifest (asked
    /// before its bytes are deleted).
    fn linked_anywhere<'a>(&'a self, digest: &'a str) -> Fut<'a, bool>;
    /// Stores a manifest in one transaction: every referenced blob and child checked and
    /// touched, the manifest (re)written and touched, its references recorded, the tag set.
    fn put_manifest<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        m: &'a NewManifest,
    ) -> Fut<'a, PutManifest>;
    /// A manifest of the repository by digest.
    fn manifest<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        digest: &'a str,
    ) -> Fut<'a, Option<ManifestRow>>;
    /// The manifest a tag points at.
    fn tagged<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        tag: &'a str,
    ) -> Fut<'a, Option<ManifestRow>>;
    /// Whether the repository exists (it has had a blob or manifest linked).
    fn repo_exists<'a>(&'a self, app: &'a str, repo: &'a str) -> Fut<'a, bool>;
    /// The repository's tags after `after`, sorted, at most `limit`.
    fn tags<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> Fut<'a, Vec<String>>;
    /// The tags of the repository that point at `digest`, sorted.
    fn tags_of<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, Vec<String>>;
    /// Removes a manifest, the tags pointing at it and its references (releasing its
    /// digest); false when absent.
    fn delete_manifest<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str)
        -> Fut<'a, bool>;
    /// Removes a tag; false when absent.
    fn delete_tag<'a>(&'a self, app: &'a str, repo: &'a str, tag: &'a str) -> Fut<'a, bool>;
    /// The manifests of the repository whose subject is `subject`, by digest.
    fn referrers<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        subject: &'a str,
    ) -> Fut<'a, Vec<ManifestRow>>;
    /// Repositories as `<app>/<repo>`, sorted, after `after`, at most `limit`; only of
    /// `apps` when given.
    fn catalog<'a>(
        &'a self,
        apps: Option<&'a [String]>,
        after: Option<&'a str>,
        limit: usize,
    ) -> Fut<'a, Vec<String>>;
    /// Bytes an app's hosted content takes: its distinct blobs and its manifests.
    fn app_bytes<'a>(&'a self, app: &'a str) -> Fut<'a, u64>;
    /// Digests a delete released (`manifest`: a manifest, else a blob link) before
    /// `before`: collection frees their bytes if nothing links them any more.
    fn released<'a>(&'a self, before: SystemTime) -> Fut<'a, Vec<(String, bool)>>;
    /// Forgets released digests (collection dealt with them), if released before `before`.
    fn forget_released<'a>(&'a self, digests: &'a [String], before: SystemTime) -> Fut<'a, ()>;
    /// Every distinct blob digest linked anywhere, with its size (pinned at startup so the
    /// cache's eviction never takes a hosted blob).
    fn hosted_blobs(&self) -> Fut<'_, Vec<(String, u64)>>;
    /// Everything collection marks from, for one app or all.
    fn gc_repos<'a>(&'a self, app: Option<&'a str>) -> Fut<'a, Vec<GcRepo>>;
    /// Deletes the given manifests and blob links of one repository, each only if still
    /// last touched before `cutoff` and (manifests) untagged; returns what it deleted.
    fn gc_delete<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        manifests: &'a [String],
        blobs: &'a [String],
        cutoff: SystemTime,
    ) -> Fut<'a, GcDeleted>;
}
