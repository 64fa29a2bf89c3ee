//! `berth airgap import`: verifies a whole bundle into a staging directory inside the cache,
//! resolves every image to an upstream of the app, and only then seeds the cache: blobs
//! (renamed in, pinned), manifests, repository links, and tag answers last, so a tag never
//! points at something that is not there yet. A bundle that fails any check leaves the
//! cache as it was.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::bundle::Bundle;
use super::human;
use crate::cache::manifest::now_ms;
use crate::cache::{self, Links, ManifestStore, TagEntry, TagKey, TagStore};
use crate::config::{Config, Upstream};
use crate::oci::reference::ImageRef;
use crate::oci::{Digest, DEFAULT_MANIFEST_ACCEPT};

#[derive(Debug, Default)]
pub struct ImportReport {
    pub images: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
}

struct Planned {
    reference: ImageRef,
    upstream: Arc<Upstream>,
    image: super::Image,
}

pub async fn import(
    config: &Config,
    bundle_path: &Path,
    app: Option<&str>,
) -> anyhow::Result<ImportReport> {
    let dir = config.cache.dir.clone();
    let tmp = dir.join("tmp");
    for d in [
        dir.join("sha256"),
        tmp.clone(),
        dir.join("manifests").join("sha256"),
        dir.join("tags"),
    ] {
        std::fs::create_dir_all(&d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
    }
    // A directory, not a file: `Cache::open` clears loose temp files only, so a server
    // starting meanwhile does not pull the staged blobs from under the import.
    let stage = tmp.join(format!("airgap-{}", cache::temp_name()));
    std::fs::create_dir_all(&stage)?;
    let result = import_staged(config, bundle_path, app, &stage).await;
    let _ = std::fs::remove_dir_all(&stage);
    result
}

async fn import_staged(
    config: &Config,
    bundle_path: &Path,
    app: Option<&str>,
    stage: &Path,
) -> anyhow::Result<ImportReport> {
    let path = bundle_path.to_path_buf();
    let stage_owned = stage.to_path_buf();
    let bundle =
        tokio::task::spawn_blocking(move || Bundle::scan(&path, Some(&stage_owned))).await??;
    let images = bundle.images()?;
    if images.is_empty() {
        anyhow::bail!("{}: the bundle holds no images", bundle_path.display());
    }
    let plan = plan(config, app, images)?;
    let dir = &config.cache.dir;
    let tmp = dir.join("tmp");

    // Everything is verified and every image has a home: now seed.
    let manifest_digests: BTreeSet<String> = plan
        .iter()
        .flat_map(|p| p.image.manifests.iter().map(|m| m.digest.clone()))
        .collect();
    let mut pins = Vec::new();
    let mut bytes = 0u64;
    for (digest, entry) in &bundle.blobs {
        let hex = digest.trim_start_matches("sha256:").to_string();
        let Some(staged) = &entry.staged else {
            continue;
        };
        if manifest_digests.contains(digest) {
            continue;
        }
        let dest = dir.join("sha256").join(&hex);
        std::fs::rename(staged, &dest).map_err(|e| anyhow::anyhow!("{}: {e}", dest.display()))?;
        bytes += entry.size;
        pins.push(hex);
    }
    cache::add_pins(dir, &pins)?;
    let manifests = ManifestStore::new(dir.join("manifests").join("sha256"), tmp.clone());
    let tags = TagStore::new(dir.join("tags"), tmp);
    let links = Links::open(&dir.join("links.log"))?;
    let mut report = ImportReport {
        blobs: pins.len(),
        bytes,
        ..Default::default()
    };
    for p in &plan {
        for m in &p.image.manifests {
            let body = std::fs::read(
                bundle.blobs[&m.digest]
                    .staged
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("{} was not staged", m.digest))?,
            )?;
            let d: Digest = m
                .digest
                .parse()
                .map_err(|_| anyhow::anyhow!("bad digest {}", m.digest))?;
            manifests.put(&d, Bytes::from(body), &m.media_type).await?;
        }
        let digests: Vec<&str> = p
            .image
            .manifests
            .iter()
            .map(|m| m.digest.as_str())
            .chain(p.image.blob_sizes.keys().map(String::as_str))
            .collect();
        links.add(&p.upstream.name, &p.reference.repository, digests);
        if let Some(tag) = &p.reference.tag {
            // One answer under berth's default Accept set; the registry falls back to it for
            // other Accept sets that admit its media type when the upstream is unreachable.
            tags.put(
                &TagKey::new(
                    &p.upstream.name,
                    &p.reference.repository,
                    tag,
                    DEFAULT_MANIFEST_ACCEPT,
                ),
                TagEntry {
                    digest: p.image.top.digest.clone(),
                    media_type: p.image.top.media_type.clone(),
                    length: p.image.top.size,
                    checked_ms: now_ms(),
                },
            )
            .await;
        }
        let line = format!(
            "imported {} → upstream {} ({}, {})",
            p.image.display_ref(),
            p.upstream.name,
            p.image.top.digest,
            human(p.image.blob_sizes.values().sum())
        );
        eprintln!("{line}");
        report.images.push(p.image.display_ref());
    }
    Ok(report)
}

/// Resolves every image to (app, upstream, repository, tag) before anything is written.
fn plan(
    config: &Config,
    app: Option<&str>,
    images: Vec<super::Image>,
) -> anyhow::Result<Vec<Planned>> {
    let mut out = Vec::new();
    for image in images {
        let what = image.display_ref();
        let slug = app
            .map(str::to_string)
            .or_else(|| image.app.clone())
            .ok_or_else(|| anyhow::anyhow!("{what}: the bundle names no app; pass --app"))?;
        let a = config
            .app(&slug)
            .ok_or_else(|| anyhow::anyhow!("{what}: app {slug} is not in the configuration"))?;
        let text = image
            .upstream_ref
            .clone()
            .or_else(|| image.ref_name.clone())
            .ok_or_else(|| anyhow::anyhow!("{what}: no upstream reference annotation"))?;
        let reference = ImageRef::parse(&text)
            .map_err(|e| anyhow::anyhow!("{what}: bad upstream reference: {e}"))?;
        if let Some(d) = &reference.digest {
            // A platform-filtered index has a digest of its own; the original is annotated.
            let original = image.top.annotations.get("io.berth.upstream.digest");
            if reference.tag.is_none() && *d != image.top.digest && original != Some(d) {
                anyhow::bail!("{what}: the bundle holds {} instead", image.top.digest);
            }
        }
        let upstream = config
            .upstream_for(a, &reference.registry, &reference.repository)
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{what}: no upstream of app {slug} serves {}/{}",
                    reference.registry,
                    reference.repository
                )
            })?;
        out.push(Planned {
            reference,
            upstream,
            image,
        });
    }
    Ok(out)
}
