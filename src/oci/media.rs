//! Media types of manifests and indexes, and the size limit on manifests: named once for
//! the proxy, the cache, digest pinning and airgap bundles.

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's schema 1 manifests (`…manifest.v1+json` and `…manifest.v1+prettyjws`): a
/// prefix, because they come in two spellings.
pub const DOCKER_MANIFEST_V1_PREFIX: &str = "application/vnd.docker.distribution.manifest.v1";

/// Manifest media types a client may ask for when it sends no `Accept` (docker's defaults,
/// plus OCI), so upstreams never fall back to schema 1.
pub const DEFAULT_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// distribution refuses manifests over 4 MiB; so does berth, which holds them in memory
/// (blobs never are).
pub const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// The media types an `Accept` header lists, in order, parameters (`;q=…`) dropped and
/// spaces trimmed (an empty entry stays empty).
pub fn accept_types(accept: &str) -> impl Iterator<Item = &str> {
    accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or("").trim())
}

/// Whether an `Accept` header admits `media_type` (parameters ignored; `*/*` admits all).
pub fn accepts(accept: &str, media_type: &str) -> bool {
    let want = media_type.split(';').next().unwrap_or("").trim();
    accept_types(accept).any(|t| t == "*/*" || t.eq_ignore_ascii_case(want))
}

/// The `Accept` berth forwards for a client's: a wildcard (`*/*`, `application/*`) means
/// "whatever you have", but registries match manifest types literally (distribution
/// answers `*/*` with a 404, finding no type it may send), so a wildcard becomes the four
/// manifest types. An empty or absent header is the same as the defaults.
pub fn manifest_accept(accept: Option<&str>) -> std::borrow::Cow<'_, str> {
    match accept.filter(|a| !a.trim().is_empty()) {
        None => DEFAULT_MANIFEST_ACCEPT.into(),
        Some(a)
            if accept_types(a).any(|t| t == "*/*" || t.eq_ignore_ascii_case("application/*")) =>
        {
            DEFAULT_MANIFEST_ACCEPT.into()
        }
        Some(a) => a.into(),
    }
}

/// Whether a media type names an index (OCI image index or docker manifest list).
pub fn is_index_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_accept_lists_the_four_types() {
        for t in [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST] {
            assert!(DEFAULT_MANIFEST_ACCEPT.split(", ").any(|a| a == t), "{t}");
        }
        assert!(is_index_type(OCI_INDEX) && is_index_type(DOCKER_LIST));
        assert!(!is_index_type(OCI_MANIFEST) && !is_index_type(DOCKER_MANIFEST));
        assert_eq!(
            accept_types(" a/b ;q=0.5,c/d,, e/f;x=y").collect::<Vec<_>>(),
            ["a/b", "c/d", "", "e/f"]
        );
    }

    #[test]
    fn wildcards_ask_for_the_manifest_types() {
        assert_eq!(manifest_accept(None), DEFAULT_MANIFEST_ACCEPT);
        assert_eq!(manifest_accept(Some(" ")), DEFAULT_MANIFEST_ACCEPT);
        assert_eq!(manifest_accept(Some("*/*")), DEFAULT_MANIFEST_ACCEPT);
        assert_eq!(
            manifest_accept(Some("text/html, application/*;q=0.8")),
            DEFAULT_MANIFEST_ACCEPT
        );
        assert_eq!(manifest_accept(Some(OCI_MANIFEST)), OCI_MANIFEST);
    }
}
