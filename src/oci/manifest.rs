//! The manifest and index model: descriptors, platforms, and the one reading of a
//! manifest's JSON that the proxy, the cache and airgap bundles share, including the list
//! of digests a manifest refers to.

use serde::{Deserialize, Serialize};

use super::media::is_index_type;
use super::Digest;

/// An OCI descriptor, with the fields berth reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
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

/// The parts of any manifest or index berth needs to walk it: an image's config and
/// layers, an index's child manifests. Descriptors are read strictly (digest and size).
#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Option<Manifest> {
        serde_json::from_slice(bytes).ok()
    }

    /// An image's blobs: its config, then its layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(&self.layers)
    }

    pub fn is_index(&self, declared: &str) -> bool {
        is_index_type(declared)
            || self.media_type.as_deref().is_some_and(is_index_type)
            || (!self.manifests.is_empty() && self.config.is_none())
    }
}

/// The digests a manifest refers to: config and layers of an image, child manifests of an
/// index, its subject, and a schema 1 manifest's `fsLayers`; in that order, invalid digests
/// left out. Unparseable manifests refer to nothing.
///
/// This reading is deliberately laxer than [`Manifest`]: it decides which digests a
/// repository may serve once the manifest is cached, so a descriptor missing a field that
/// is not read here (a size, a media type) must not unlink the rest.
pub fn referenced_digests(bytes: &[u8]) -> Vec<Digest> {
    #[derive(Deserialize)]
    struct Desc {
        digest: String,
    }
    #[derive(Deserialize)]
    struct Any {
        config: Option<Desc>,
        #[serde(default)]
        layers: Vec<Desc>,
        #[serde(default)]
        manifests: Vec<Desc>,
        subject: Option<Desc>,
        #[serde(default, rename = "fsLayers")]
        fs_layers: Vec<V1Layer>,
    }
    #[derive(Deserialize)]
    struct V1Layer {
        #[serde(rename = "blobSum")]
        blob_sum: String,
    }
    let Ok(m) = serde_json::from_slice::<Any>(bytes) else {
        return Vec::new();
    };
    m.config
        .into_iter()
        .chain(m.layers)
        .chain(m.manifests)
        .chain(m.subject)
        .map(|d| d.digest)
        .chain(m.fs_layers.into_iter().map(|l| l.blob_sum))
        .filter_map(|d| d.parse::<Digest>().ok())
        .collect()
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
    fn finds_children() {
        let d1: Digest = format!("sha256:{}", "1".repeat(64)).parse().unwrap();
        let d2: Digest = format!("sha256:{}", "2".repeat(64)).parse().unwrap();
        let m = format!(
            r#"{{"config":{{"digest":"{d1}"}},"layers":[{{"digest":"{d2}"}},{{"digest":"bogus"}}]}}"#
        );
        assert_eq!(
            referenced_digests(m.as_bytes()),
            vec![d1.clone(), d2.clone()]
        );
        let i = format!(r#"{{"manifests":[{{"digest":"{d1}"}}]}}"#);
        assert_eq!(referenced_digests(i.as_bytes()), vec![d1.clone()]);
        assert!(referenced_digests(b"not json").is_empty());
        let v1 = format!(r#"{{"fsLayers":[{{"blobSum":"{d2}"}}],"subject":{{"digest":"{d1}"}}}}"#);
        assert_eq!(referenced_digests(v1.as_bytes()), vec![d1, d2]);
    }

    #[test]
    fn descriptors_keep_their_json() {
        let text = format!(
            r#"{{"mediaType":"{}","digest":"sha256:{}","size":3,"annotations":{{"a":"b"}}}}"#,
            super::super::media::OCI_MANIFEST,
            "a".repeat(64)
        );
        let d: Descriptor = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), text);
        let m = Manifest::parse(format!(r#"{{"manifests":[{text}]}}"#).as_bytes()).unwrap();
        assert!(m.is_index(""));
        assert!(Manifest::parse(br#"{"layers":[{"digest":"sha256:zz","size":1}]}"#).is_none());
    }
}
