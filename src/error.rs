//! `Error`: what can go wrong serving a pull, in domain terms. `api::error` is the one place
//! that turns it into an HTTP status and an OCI error code.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    #[error("invalid range: {0}")]
    RangeInvalid(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("invalid pagination: {0}")]
    PaginationInvalid(String),
    #[error("range not satisfiable")]
    RangeNotSatisfiable { content_range: Option<String> },
    #[error("blob upload unknown: {0}")]
    BlobUploadUnknown(String),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest references an unknown blob: {0}")]
    ManifestBlobUnknown(String),
    #[error("invalid size: {0}")]
    SizeInvalid(String),
    /// A chunk that does not start where the upload ends; `range` is the upload's `0-<end>`.
    #[error("chunk out of order: the upload holds {range}")]
    UploadRange { range: String },
    #[error("unknown repository: {0}")]
    NameUnknown(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    #[error("authentication required")]
    Unauthorized,
    /// A login whose secret is known but no longer in force (`license expired`, `license
    /// revoked`): a 401 like `Unauthorized`, telling the holder which, which leaks
    /// nothing since they hold the secret.
    #[error("authentication required: {0}")]
    LoginRefused(&'static str),
    #[error("access denied: {0}")]
    Denied(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("too many requests")]
    TooManyRequests { retry_after: Option<String> },
    /// The upstream answered badly, could not be reached or rejected berth's credentials.
    /// `reason` is written for operators and clients alike: it never carries a secret.
    #[error("upstream {upstream} failed: {reason}")]
    Upstream { upstream: String, reason: String },
    /// The upstream could not be reached or is failing (connect error, 5xx): the cases
    /// where a cached answer may stand in.
    #[error("upstream {upstream} unavailable: {reason}")]
    UpstreamUnavailable { upstream: String, reason: String },
    #[error("upstream {upstream} timed out after {after:?}")]
    UpstreamTimeout { upstream: String, after: Duration },
    #[error("not in the cache and the cache is offline: {0}")]
    Offline(String),
    /// A part of berth itself (the state store) cannot answer now: worth retrying.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Failures that say nothing about the content, only that the upstream cannot answer
    /// now: stale-if-error applies to these.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::UpstreamUnavailable { .. }
                | Error::UpstreamTimeout { .. }
                | Error::TooManyRequests { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
