//! OCI protocol vocabulary: digests, repository names, references, media types.

pub mod reference;
