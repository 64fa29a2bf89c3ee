//! Airgap bundles: `berth airgap export` writes an app's images as one OCI image layout in
//! a tar, `import` verifies such a bundle and seeds berth's cache with it (pinned), `push`
//! copies it into any registry, and `list` describes it.
//!
//! A bundle is a plain OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), so
//! `skopeo`, `crane` and containerd read it too. Each `index.json` entry carries the image's
//! upstream reference (`org.opencontainers.image.ref.name` and [`ANN_UPSTREAM_REF`]) and the
//! app it was exported for ([`ANN_APP`]).

pub mod bundle;
pub mod export;
pub mod import;
mod progress;
pub mod push;

use std::collections::HashSet;
use std::path::Path;

/// `berth airgap export --platform` parses these.
pub use crate::oci::manifest::Platform;
use crate::oci::Digest;
pub use bundle::{Bundle, BundleError, Image};

/// The full upstream reference an image was exported from.
pub const ANN_UPSTREAM_REF: &str = "io.berth.upstream.ref";
/// On an image exported from one of the app's hosted repositories: that repository's name
/// within the app (`worker`, `team/worker`). An import seeds the hosted repository of this
/// name; an image without it seeds the proxy cache of the upstream its reference names.
pub const ANN_HOSTED_REPO: &str = "io.berth.hosted.repository";
/// The app slug the bundle was exported for.
pub const ANN_APP: &str = "io.berth.app";
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's `ctr image import` names images after this one.
pub const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// On a referrer's entry (a signature, attestation, SBOM, or the list of them): what it
/// is — `subject`, `tag`, `index-tag` or `index-api` (see `export`).
pub const ANN_REFERRER: &str = "io.berth.referrer";
/// On a referrer's entry: the digest of the manifest it refers to.
pub const ANN_SUBJECT: &str = "io.berth.referrer.subject";
/// On a referrer's entry: the `artifactType` the referrers list gave it.
pub const ANN_ARTIFACT_TYPE: &str = "io.berth.referrer.artifact-type";

/// Human-readable byte counts for progress and summaries.
pub use crate::settings::human_size as human;

/// `1 image`, `2 images`: a count and its noun, singular or plural.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The one way export, import and list count a bundle's blobs: every blob file, manifests
/// included, and how many of them are manifests (`10 blobs (4 manifests, 6 configs and
/// layers)`), so the three say the same number for the same bundle.
pub fn blob_count(total: usize, manifests: usize) -> String {
    format!(
        "{} ({}, {})",
        count(total, "blob", "blobs"),
        count(manifests, "manifest", "manifests"),
        count(
            total.saturating_sub(manifests),
            "config or layer",
            "configs and layers"
        ),
    )
}

/// The platform of a single-platform image, from its config's `os` and `architecture`
/// (an index lists its children's in the index instead). `None` for an artifact whose
/// config is no image config.
fn config_platform(b: &Bundle, img: &Image) -> Option<Platform> {
    use std::io::Read;
    let bytes = b.read_manifest(&img.top, &img.display_ref()).ok()?;
    let config = crate::oci::manifest::Manifest::parse(&bytes)?.config?;
    if config.size > crate::oci::media::MAX_MANIFEST {
        return None;
    }
    let mut buf = Vec::new();
    b.open_blob(&config.digest)
        .ok()?
        .take(config.size)
        .read_to_end(&mut buf)
        .ok()?;
    let p: Platform = serde_json::from_slice(&buf).ok()?;
    (!p.os.is_empty() && !p.architecture.is_empty()).then_some(p)
}

/// `berth airgap list`: images, their platforms and sizes, and the bundle's totals.
pub fn list(path: &Path, out: &mut dyn std::io::Write) -> Result<(), BundleError> {
    let b = Bundle::scan(path, None)?;
    let images = b.images()?;
    let mut layer_sum = 0u64;
    for img in &images {
        let platforms = if img.platforms.is_empty() {
            config_platform(&b, img).map_or_else(|| "-".to_string(), |p| p.to_string())
        } else {
            img.platforms
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let size: u64 = img.blob_sizes.values().sum();
        layer_sum += size;
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}",
            img.display_ref(),
            img.top.digest,
            platforms,
            human(size)
        );
    }
    let stored: u64 = b.blobs.values().map(|e| e.size).sum();
    let unique: HashSet<&Digest> = images.iter().flat_map(|i| i.blob_sizes.keys()).collect();
    let referrers = images
        .iter()
        .filter(|i| i.top.annotations.contains_key(ANN_REFERRER))
        .count();
    let manifests = b.blobs.keys().filter(|d| !unique.contains(d)).count();
    let _ = writeln!(
        out,
        "{}, {}, {}, {} stored ({} referenced by the images; shared blobs stored once); file {}",
        count(images.len() - referrers, "image", "images"),
        count(referrers, "referrer", "referrers"),
        blob_count(b.blobs.len(), manifests),
        human(stored),
        human(layer_sum),
        human(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)),
    );
    debug_assert!(unique.len() <= b.blobs.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn counts_agree_and_pluralize() {
        assert_eq!(count(1, "image", "images"), "1 image");
        assert_eq!(count(0, "image", "images"), "0 images");
        assert_eq!(
            blob_count(10, 4),
            "10 blobs (4 manifests, 6 configs and layers)"
        );
        assert_eq!(blob_count(2, 1), "2 blobs (1 manifest, 1 config or layer)");
    }
}
