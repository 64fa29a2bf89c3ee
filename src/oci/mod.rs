//! OCI protocol vocabulary: digests, repository names, references, media types.

pub mod digest;
pub mod name;
pub mod reference;

pub use digest::Digest;

/// Manifest media types a client may ask for when it sends no `Accept` (docker's defaults,
/// plus OCI), so upstreams never fall back to schema 1.
pub const DEFAULT_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
