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

use serde::{Deserialize, Serialize};

pub use bundle::{Bundle, BundleError, Image};

/// The full upstream reference an image was exported from.
pub const ANN_UPSTREAM_REF: &str = "io.berth.upstream.ref";
/// The app slug the bundle was exported for.
pub const ANN_APP: &str = "io.berth.app";
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's `ctr image import` names images after this one.
pub const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

use crate::oci::media::is_index_type;

/// An OCI descriptor, with the fields berth reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "invalid platform {s:?} (expected os/arch[/variant])"
            )),
        }
    }

    /// Whether a manifest for `self` is wanted by a filter entry: a filter without a
    /// variant takes every variant.
    pub fn selected_by(&self, filter: &Platform) -> bool {
        self.os == filter.os
            && self.architecture == filter.architecture
            && (filter.variant.is_none() || filter.variant == self.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The parts of any manifest or index berth needs to walk it.
#[derive(Debug, Deserialize)]
pub struct AnyManifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl AnyManifest {
    pub fn parse(bytes: &[u8]) -> Option<AnyManifest> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn is_index(&self, declared: &str) -> bool {
        is_index_type(declared)
            || self.media_type.as_deref().is_some_and(is_index_type)
            || (!self.manifests.is_empty() && self.config.is_none())
    }
}

/// Human-readable byte counts for progress and summaries.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `berth airgap list`: images, their platforms and sizes, and the bundle's totals.
pub fn list(path: &Path, out: &mut dyn std::io::Write) -> Result<(), BundleError> {
    let b = Bundle::scan(path, None)?;
    let images = b.images()?;
    let mut layer_sum = 0u64;
    for img in &images {
        let platforms = if img.platforms.is_empty() {
            "-".to_string()
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
    let unique: HashSet<&String> = images.iter().flat_map(|i| i.blob_sizes.keys()).collect();
    let _ = writeln!(
        out,
        "{} images, {} blobs, {} stored ({} referenced by the images; shared blobs stored once); file {}",
        images.len(),
        b.blobs.len(),
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
    fn platforms_parse_and_filter() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.selected_by(&Platform::parse("linux/arm64").unwrap()));
        assert!(!p.selected_by(&Platform::parse("linux/arm64/v7").unwrap()));
        assert!(!p.selected_by(&Platform::parse("linux/amd64").unwrap()));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * 1024 * 1024), "3.0 MiB");
    }
}
