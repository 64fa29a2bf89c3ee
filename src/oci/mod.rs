//! OCI protocol vocabulary: digests, repository names, references, media types, and
//! berth's repository paths.

pub mod digest;
pub mod manifest;
pub mod media;
pub mod name;
pub mod reference;
pub mod repo;
pub mod scope;

pub use digest::Digest;
pub use media::DEFAULT_MANIFEST_ACCEPT;
