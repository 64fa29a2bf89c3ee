//! The storage seam: where berth keeps blobs (large, content-addressed, staged while they
//! arrive and committed under their digest only when the bytes hash to it) and small
//! objects (manifests, tag answers, repository links, pins). Keys come from
//! [`layout`], the only module that names a path. Backends: [`fs`] (today's cache
//! directory, with the local-file capability plain HTTP sends with sendfile) and
//! [`memory`] (tests); every backend passes the one suite in `suite.rs`. No HTTP type
//! and no cache policy here: repository links, manifests and tags sit on top in `content/`,
//! single flight and eviction in `cache/`.

pub mod fs;
pub mod layout;
pub mod memory;
#[cfg(test)]
pub(crate) mod suite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::oci::Digest;
pub use layout::{LegacyTagPath, ObjectKey, ObjectPrefix, TagPath};

/// The future a backend method returns (boxed, so the traits stay object-safe and a
/// backend is an `Arc<dyn …>` chosen at start).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What went wrong, by kind; callers decide on the variant, never on the message.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// A commit whose bytes do not hash to the digest it was asked for; nothing was kept.
    #[error("content does not match {expected}")]
    DigestMismatch { expected: Digest, got: Digest },
    /// No space (or quota) left; the detail says what ran out.
    #[error("storage full: {0}")]
    Full(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The kind of a [`StorageError`], for callers that only branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    DigestMismatch,
    Full,
    Io,
}

impl StorageError {
    /// Classifies an I/O error about `what`.
    pub fn io(what: impl Into<String>, e: std::io::Error) -> StorageError {
        use std::io::ErrorKind as K;
        let what = what.into();
        match e.kind() {
            K::NotFound => StorageError::NotFound(what),
            K::AlreadyExists => StorageError::AlreadyExists(what),
            K::StorageFull | K::QuotaExceeded => StorageError::Full(e.to_string()),
            _ => StorageError::Io { what, source: e },
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::NotFound(_) => ErrorKind::NotFound,
            StorageError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            StorageError::DigestMismatch { .. } => ErrorKind::DigestMismatch,
            StorageError::Full(_) => ErrorKind::Full,
            StorageError::Io { .. } => ErrorKind::Io,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> std::io::Error {
        use std::io::ErrorKind as K;
        match e {
            StorageError::Io { source, .. } => source,
            StorageError::NotFound(_) => std::io::Error::new(K::NotFound, e.to_string()),
            StorageError::AlreadyExists(_) => std::io::Error::new(K::AlreadyExists, e.to_string()),
            StorageError::Full(_) => std::io::Error::new(K::StorageFull, e.to_string()),
            StorageError::DigestMismatch { .. } => std::io::Error::other(e.to_string()),
        }
    }
}

/// What a backend knows about a committed blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    pub size: u64,
    /// When it was last read (or, failing that, written): orders eviction after a restart.
    pub used: SystemTime,
}

/// A committed blob as a file of the local filesystem: the capability the plain-HTTP
/// server needs for sendfile(2). Backends that keep blobs elsewhere return none (or, for
/// a read-through cache, one for a blob they hold locally).
#[derive(Debug, Clone)]
pub struct LocalFile(pub Arc<std::fs::File>);

/// Blobs: content-addressed, immutable once committed.
pub trait BlobBackend: Send + Sync {
    /// Starts a staged write. Cheap and synchronous (the fill engine calls it under its
    /// single-flight lock): a backend that uploads does so at commit.
    fn stage(&self) -> Result<Arc<dyn StagedBlob>>;

    fn stat<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<BlobInfo>>;

    /// The blob as a local file, when the backend has one; `NotFound` when there is no
    /// such blob.
    fn local_file<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<Option<LocalFile>>>;

    /// Reads exactly `len` bytes at `offset` (a ranged read: one GET with `Range` for an
    /// object store).
    fn read<'a>(&'a self, d: &'a Digest, offset: u64, len: usize) -> BoxFut<'a, Result<Bytes>>;

    /// Removes a blob; `NotFound` when there was none.
    fn delete<'a>(&'a self, d: &'a Digest) -> BoxFut<'a, Result<()>>;

    /// Every committed blob.
    fn list(&self) -> BoxFut<'_, Result<Vec<(Digest, BlobInfo)>>>;

    /// Takes in a local file whose content the caller has verified to be `d` (an airgap
    /// import's staged blobs): the filesystem renames it, others upload it. The file is
    /// gone afterwards either way.
    fn adopt_verified<'a>(
        &'a self,
        file: &'a std::path::Path,
        d: &'a Digest,
    ) -> BoxFut<'a, Result<()>>;

    /// Whether writes can succeed now (readiness): `Full` when space ran out.
    fn check_writable(&self) -> BoxFut<'_, Result<()>>;

    /// Where the blobs are, for logs.
    fn describe(&self) -> String;
}

/// A blob being written. Shared (`Arc`) between the writer, which appends, and the readers
/// that follow the write as it grows. `append` and `read_at` block: call them off the async
/// threads.
pub trait StagedBlob: Send + Sync {
    /// Appends bytes, hashing them on the way.
    fn append(&self, bytes: &[u8]) -> Result<()>;

    /// Reads exactly `buf.len()` staged bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Bytes appended so far.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The digest of the bytes appended so far.
    fn digest(&self) -> Digest;

    /// Makes the staged bytes the blob `expected`, durably: refused with `DigestMismatch`
    /// (and the staged bytes dropped) unless they hash to it. Committing a digest that is
    /// already stored is fine (same bytes). Readers of the staged blob may go on reading.
    fn commit<'a>(&'a self, expected: &'a Digest) -> BoxFut<'a, Result<()>>;

    /// Drops the staged bytes. Idempotent.
    fn abort(&self);
}

/// Small objects: read and replaced whole (atomically: a reader sees the old or the new
/// object, never part of one), plus appends for the two logs.
pub trait ObjectStore: Send + Sync {
    fn get<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<Bytes>>;

    /// Creates or atomically replaces an object.
    fn put<'a>(&'a self, key: &'a ObjectKey, bytes: Bytes) -> BoxFut<'a, Result<()>>;

    /// Removes an object; `NotFound` when there was none.
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<()>>;

    /// The keys under a prefix, sorted by path.
    fn list<'a>(&'a self, prefix: &'a ObjectPrefix) -> BoxFut<'a, Result<Vec<ObjectKey>>>;

    /// Appends to an object (created if missing) in one piece: concurrent appends, from this
    /// process or another, never interleave. With `sync` the bytes are durable on return.
    fn append<'a>(&'a self, key: &'a ObjectKey, bytes: Bytes, sync: bool)
        -> BoxFut<'a, Result<()>>;

    /// The object's bytes from `offset` on (empty when there are none): how a log is caught
    /// up with what others appended.
    fn get_from<'a>(&'a self, key: &'a ObjectKey, offset: u64) -> BoxFut<'a, Result<Bytes>>;
}

/// Both seams of one backend.
#[derive(Clone)]
pub struct Storage {
    pub blobs: Arc<dyn BlobBackend>,
    pub objects: Arc<dyn ObjectStore>,
}

impl Storage {
    pub fn memory() -> Storage {
        let m = Arc::new(memory::MemoryBackend::default());
        Storage {
            blobs: m.clone(),
            objects: m,
        }
    }
}
