//! OCI protocol vocabulary: digests, repository names, references, media types.

pub mod digest;
pub mod media;
pub mod name;
pub mod reference;

pub use digest::Digest;
pub use media::DEFAULT_MANIFEST_ACCEPT;
