//! `berth airgap export`: pulls images through berth's upstream client (same routing and
//! stored credentials as `berth serve`) into a staging OCI layout next to the output, one
//! verified file per blob, then tars that layout. Blobs stream to disk and are never held in
//! memory; a blob shared between images is fetched and stored once.
//!
//! An image of one of the app's hosted repositories (`<hostname>/<app>/<repo>:tag`, what
//! vendors push into berth) comes from berth's own store instead: its manifests through the
//! hosted index and the manifest store, its blobs streamed from storage, exactly what berth
//! serves for that name. Its `index.json` entry also carries [`ANN_HOSTED_REPO`], so an
//! import seeds the hosted repository of that name.
//!
//! Unless `--no-referrers`, each image's referrers come along, for its top digest and each
//! child manifest: the manifests the referrers API lists (or, where the upstream has none,
//! the OCI 1.1 referrers tag `sha256-<hex>`; for a hosted image, berth's own API), the
//! cosign tags `sha256-<hex>.sig`/`.att`/`.sbom`, and that list itself as the tag
//! `sha256-<hex>`. Each is an `index.json` entry of its own, named like an image (by digest
//! or by its tag) and marked with [`ANN_REFERRER`] and [`ANN_SUBJECT`], so import and push
//! handle it as they handle images, byte for byte.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::human;
use super::progress::Progress;
use super::{
    ANN_APP, ANN_ARTIFACT_TYPE, ANN_CONTAINERD_NAME, ANN_HOSTED_REPO, ANN_REFERRER, ANN_REF_NAME,
    ANN_SUBJECT, ANN_UPSTREAM_REF,
};
use crate::config::{Config, Upstream};
use crate::content::RepoKey;
use crate::hosted::Hosted;
use crate::oci::digest::Algorithm;
use crate::oci::manifest::{Descriptor, Manifest, Platform};
use crate::oci::media;
use crate::oci::reference::ImageRef;
use crate::oci::repo::Reference;
use crate::oci::{Digest, DEFAULT_MANIFEST_ACCEPT};
use crate::upstream::{distribution, Client, UpstreamError};

const ATTEMPTS: u32 = 3;

/// The cosign tag scheme: signatures, attestations and SBOMs of `sha256:<hex>` live at the
/// tag `sha256-<hex>` with these suffixes.
const COSIGN_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];

/// Says what a referrer entry is and whose: `kind` is `subject` (a manifest naming
/// `subject` in its `subject` field), `tag` (a cosign tag), `index-tag` (the upstream's
/// referrers tag) or `index-api` (the referrers API's answer, stored as that tag).
fn mark(desc: &mut Descriptor, kind: &str, subject: &Digest) {
    desc.annotations
        .insert(ANN_REFERRER.to_string(), kind.to_string());
    desc.annotations
        .insert(ANN_SUBJECT.to_string(), subject.to_string());
}

pub struct ExportOptions {
    pub app: String,
    /// Upstream references (`upstream.test/acme/api:1.2`).
    pub images: Vec<String>,
    /// Keep only these platforms of multi-platform images (empty: keep all).
    pub platforms: Vec<Platform>,
    pub output: PathBuf,
    /// Also export each image's referrers (signatures, attestations, SBOMs): the
    /// referrers API's answer or the OCI 1.1 referrers tag (`sha256-<hex>`), the manifests
    /// it lists, and the cosign tags `sha256-<hex>.sig`/`.att`/`.sbom`.
    pub referrers: bool,
}

/// What an export wrote, for the summary line and the tests' measurements.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub images: usize,
    /// Referrer entries (manifests by subject, cosign tags, referrers indexes).
    pub referrers: usize,
    pub blobs: usize,
    /// How many of `blobs` are manifests.
    pub manifests: usize,
    /// Bytes of distinct blobs (manifests included) in the bundle.
    pub stored: u64,
    /// Configs and layers summed over the images as if each were exported alone.
    pub referenced: u64,
    pub file_size: u64,
}

#[derive(Clone)]
struct Resolved {
    input: String,
    r: ImageRef,
    source: Source,
}

/// Where an image's bytes come from.
#[derive(Clone)]
enum Source {
    Upstream(Arc<Upstream>),
    /// A hosted repository of the app, read from berth's own store.
    Hosted(RepoKey),
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Upstream(u) => &u.name,
            Source::Hosted(_) => "berth's hosted store",
        }
    }
}

/// Maps each reference to the upstream of `app` that serves it (as `berth serve` would).
fn resolve(config: &Config, app: &str, images: &[String]) -> anyhow::Result<Vec<Resolved>> {
    let a = config
        .app(app)
        .ok_or_else(|| anyhow::anyhow!("--app {app}: no such app in the configuration"))?;
    let mut out = Vec::new();
    for input in images {
        let mut r = ImageRef::parse(input).map_err(|e| anyhow::anyhow!("{input:?}: {e}"))?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some("latest".into());
        }
        if let Some(repo) = crate::rewrite::hosted_repository(&config.server.hostname, &a.slug, &r)
        {
            out.push(Resolved {
                input: input.clone(),
                r,
                source: Source::Hosted(RepoKey::hosted(&a.slug, &repo)),
            });
            continue;
        }
        let up = a.select(&r.registry, &r.repository);
        let upstream = up.cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "{input}: no upstream of app {app} serves {}/{}",
                r.registry,
                r.repository
            )
        })?;
        out.push(Resolved {
            input: input.clone(),
            r,
            source: Source::Upstream(upstream),
        });
    }
    Ok(out)
}

struct Exporter<'a> {
    client: Client,
    /// berth's hosted registry over its store and cache, when an image is hosted.
    hosted: Option<Hosted>,
    blobs_dir: PathBuf,
    progress: Progress,
    stored: BTreeMap<String, u64>,
    /// Which of `stored` are manifests (indexes, image and referrer manifests).
    manifests: std::collections::BTreeSet<String>,
    opts: &'a ExportOptions,
}

pub async fn export(config: &Config, opts: &ExportOptions) -> anyhow::Result<ExportReport> {
    let images = resolve(config, &opts.app, &opts.images)?;
    if images.is_empty() {
        anyhow::bail!("no images to export: give references, --images-file, or apps[].images");
    }
    let parent = opts
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Staging beside the output: same disk, and nothing in /tmp that may be a small tmpfs.
    let stop = super::import::interrupted();
    let hosted = if images.iter().any(|i| matches!(i.source, Source::Hosted(_))) {
        Some(open_hosted(config).await?)
    } else {
        None
    };
    let stage = tempfile_dir(parent)?;
    // ctrl-c or SIGTERM stops the export and removes what was staged (a big export takes
    // minutes; without this an interrupted one left its staging directory behind).
    let result = tokio::select! {
        r = export_into(&stage, images, hosted, opts) => r,
        s = stop => Err(anyhow::anyhow!("interrupted by {s}; no bundle was written")),
    };
    let _ = std::fs::remove_dir_all(&stage);
    result
}

/// The hosted registry as a server beside this command sees it: the state store's index and
/// the cache directory's bytes (both shared with a running `berth serve`, as `berth gc` is).
async fn open_hosted(config: &Config) -> anyhow::Result<Hosted> {
    let store = crate::state::open(&config.state)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (check state.sqlite or state.postgres)"))?;
    let cache = crate::cache::Cache::open(
        &config.cache,
        crate::cache::legacy_of(&*config.tenants),
        crate::cache::CacheMetrics::default(),
    )
    .map_err(|e| anyhow::anyhow!("cache.dir: {e}"))?;
    Ok(Hosted::new(
        Arc::new(cache),
        store,
        config.hosted.upload_timeout,
    ))
}

fn tempfile_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!(".berth-export-{}", crate::cache::temp_name()));
    std::fs::create_dir_all(dir.join("blobs").join("sha256"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    Ok(dir)
}

async fn export_into(
    stage: &Path,
    images: Vec<Resolved>,
    hosted: Option<Hosted>,
    opts: &ExportOptions,
) -> anyhow::Result<ExportReport> {
    let mut ex = Exporter {
        client: Client::new(),
        hosted,
        blobs_dir: stage.join("blobs").join("sha256"),
        progress: Progress::new(),
        stored: BTreeMap::new(),
        manifests: Default::default(),
        opts,
    };
    let mut index = Vec::new();
    let mut referenced = 0u64;
    let mut seen = HashSet::new();
    let mut referrers = 0;
    for img in &images {
        let (desc, layer_bytes, subjects) = ex.image(img, true).await?;
        referenced += layer_bytes;
        index.push(desc);
        if opts.referrers {
            for subject in &subjects {
                let found = ex.referrers(img, subject, &mut seen).await?;
                referrers += found.len();
                index.extend(found);
            }
        }
    }
    ex.progress.finish();
    let index_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": index,
    });
    std::fs::write(
        stage.join("index.json"),
        serde_json::to_vec_pretty(&index_json)?,
    )?;
    std::fs::write(
        stage.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let out = opts.output.clone();
    let stage_owned = stage.to_path_buf();
    let names: Vec<String> = ex.stored.keys().cloned().collect();
    let file_size =
        tokio::task::spawn_blocking(move || write_tar(&stage_owned, &names, &out)).await??;
    Ok(ExportReport {
        images: images.len(),
        referrers,
        blobs: ex.stored.len(),
        manifests: ex.manifests.len(),
        stored: ex.stored.values().sum(),
        referenced,
        file_size,
    })
}

/// Writes `oci-layout`, `index.json`, then the blobs, into `out` via a temp file and a
/// rename: a crash never leaves a bundle that looks complete. Headers are normalized
/// (mode 0644, owner 0, mtime 0) so the same images give the same bytes.
fn write_tar(stage: &Path, hexes: &[String], out: &Path) -> anyhow::Result<u64> {
    let tmp = out.with_file_name(format!(
        ".{}.{}",
        out.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        crate::cache::temp_name()
    ));
    let write = || -> anyhow::Result<u64> {
        let f =
            std::fs::File::create(&tmp).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
        let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, f));
        let mut add = |name: &str, path: &Path| -> anyhow::Result<()> {
            let file = std::fs::File::open(path)?;
            let mut h = tar::Header::new_ustar();
            h.set_size(file.metadata()?.len());
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, file)?;
            Ok(())
        };
        add("oci-layout", &stage.join("oci-layout"))?;
        add("index.json", &stage.join("index.json"))?;
        for hex in hexes {
            add(
                &format!("blobs/sha256/{hex}"),
                &stage.join("blobs").join("sha256").join(hex),
            )?;
        }
        let w = b.into_inner()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(f.metadata()?.len())
    };
    match write() {
        Ok(n) => {
            std::fs::rename(&tmp, out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            Ok(n)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn hex_of(digest: &Digest) -> anyhow::Result<&str> {
    if digest.algorithm() != Algorithm::Sha256 {
        anyhow::bail!("unsupported digest {:?} (sha256 only)", digest.as_str());
    }
    Ok(digest.hex())
}

impl Exporter<'_> {
    /// Exports one image; returns its `index.json` descriptor, its config+layer bytes and
    /// the digests its referrers name as their subject (the upstream's top digest, before
    /// any platform filtering, and each child kept). `platforms`: apply `--platform`
    /// (never to a referrer, whose index has no platforms to choose by).
    async fn image(
        &mut self,
        img: &Resolved,
        platforms: bool,
    ) -> anyhow::Result<(Descriptor, u64, Vec<Digest>)> {
        let reference = img
            .r
            .digest
            .as_ref()
            .map(Digest::to_string)
            .or_else(|| img.r.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let expected = img.r.digest.as_ref();
        let (mut bytes, media_type) = self.get_manifest(img, &reference, expected).await?;
        let m = Manifest::parse(&bytes)
            .ok_or_else(|| anyhow::anyhow!("{}: the manifest is not JSON", img.input))?;
        let mut layer_bytes = 0u64;
        let original = Digest::sha256_of(&bytes).to_string();
        let mut subjects = vec![Digest::sha256_of(&bytes)];
        if m.is_index(&media_type) {
            let mut value: serde_json::Value = serde_json::from_slice(&bytes)?;
            let mut kept = Vec::new();
            for child in &m.manifests {
                let wanted = !platforms
                    || self.opts.platforms.is_empty()
                    || child
                        .platform
                        .as_ref()
                        .is_some_and(|p| self.opts.platforms.iter().any(|f| p.selected_by(f)));
                if wanted {
                    kept.push(child.clone());
                }
            }
            if kept.is_empty() {
                anyhow::bail!(
                    "{}: no manifest for the platforms {}",
                    img.input,
                    self.opts
                        .platforms
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            if kept.len() != m.manifests.len() {
                // The index is rewritten to list only what the bundle carries, so it stays
                // a complete, valid layout (and gets a digest of its own).
                let keep: Vec<&str> = kept.iter().map(|d| d.digest.as_str()).collect();
                if let Some(arr) = value.get_mut("manifests").and_then(|v| v.as_array_mut()) {
                    arr.retain(|c| c["digest"].as_str().is_some_and(|d| keep.contains(&d)));
                }
                bytes = serde_json::to_vec(&value)?.into();
            }
            for child in &kept {
                let (cb, cmt) = self
                    .get_manifest(img, child.digest.as_str(), Some(&child.digest))
                    .await?;
                let cm = Manifest::parse(&cb).ok_or_else(|| {
                    anyhow::anyhow!("{}: manifest {} is not JSON", img.input, child.digest)
                })?;
                if cm.is_index(&cmt) {
                    anyhow::bail!("{}: nested indexes are not supported", img.input);
                }
                layer_bytes += self.image_blobs(img, &cm).await?;
                self.store_small(&child.digest, &cb)?;
                subjects.push(child.digest.clone());
            }
        } else {
            layer_bytes += self.image_blobs(img, &m).await?;
        }
        let digest = Digest::sha256_of(&bytes);
        self.store_small(&digest, &bytes)?;
        let full = format!("{}/{}{}", img.r.registry, img.r.repository, img.r.suffix());
        let mut annotations = BTreeMap::new();
        annotations.insert(ANN_REF_NAME.to_string(), full.clone());
        annotations.insert(ANN_CONTAINERD_NAME.to_string(), full.clone());
        annotations.insert(ANN_UPSTREAM_REF.to_string(), full.clone());
        annotations.insert(ANN_APP.to_string(), self.opts.app.clone());
        if let Source::Hosted(repo) = &img.source {
            annotations.insert(ANN_HOSTED_REPO.to_string(), repo.name.clone());
        }
        if digest.as_str() != original {
            annotations.insert("io.berth.upstream.digest".into(), original);
        }
        self.progress.line(&format!(
            "exported {full} ({digest}, {})",
            human(layer_bytes)
        ));
        Ok((
            Descriptor {
                media_type,
                digest,
                size: bytes.len() as u64,
                platform: None,
                annotations,
            },
            layer_bytes,
            subjects,
        ))
    }

    /// The referrers of `subject` in `img`'s repository as `index.json` entries, each
    /// named by what it is ([`ANN_REFERRER`], [`ANN_SUBJECT`]): every manifest the
    /// referrers list names (by digest, with its blobs), the cosign tags of `subject`, and
    /// last the list itself as the referrers tag `sha256-<hex>` (an index of them), which
    /// `import` seeds as the tag answer berth falls back to and `push` restores for
    /// registries without the referrers API. Entries already in `seen` are skipped. A
    /// referrer that cannot be exported is left out with a warning (and so is the list,
    /// which would then name what the bundle lacks): the image itself was exported.
    async fn referrers(
        &mut self,
        img: &Resolved,
        subject: &Digest,
        seen: &mut HashSet<String>,
    ) -> anyhow::Result<Vec<Descriptor>> {
        let base = format!("{}/{}", img.r.registry, img.r.repository);
        let mut out = Vec::new();
        let tag = subject.as_str().replacen(':', "-", 1);
        let list = self.referrers_list(img, subject, &tag).await;
        let mut complete = true;
        if let Some((bytes, m, _, _)) = &list {
            // `artifactType` of each listed descriptor, for the entry (and `airgap list`).
            let types: BTreeMap<String, String> =
                serde_json::from_slice::<serde_json::Value>(bytes)
                    .ok()
                    .and_then(|v| v.get("manifests").and_then(|a| a.as_array()).cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|d| {
                        Some((
                            d.get("digest")?.as_str()?.to_string(),
                            d.get("artifactType")?.as_str()?.to_string(),
                        ))
                    })
                    .collect();
            for d in &m.manifests {
                let mut r = img.r.clone();
                r.tag = None;
                r.digest = Some(d.digest.clone());
                let full = format!("{base}@{}", d.digest);
                if !seen.insert(full.clone()) {
                    continue;
                }
                let rimg = Resolved {
                    input: full.clone(),
                    r,
                    source: img.source.clone(),
                };
                match self.image(&rimg, false).await {
                    Ok((mut desc, _, _)) => {
                        mark(&mut desc, "subject", subject);
                        if let Some(a) = types.get(d.digest.as_str()) {
                            desc.annotations.insert(ANN_ARTIFACT_TYPE.into(), a.clone());
                        }
                        out.push(desc);
                    }
                    Err(e) => {
                        complete = false;
                        seen.remove(&full);
                        self.progress
                            .line(&format!("warning: referrer {full} left out: {e:#}"));
                    }
                }
            }
        }
        for suffix in COSIGN_SUFFIXES {
            let t = format!("{tag}{suffix}");
            let full = format!("{base}:{t}");
            if seen.contains(&full) || !self.tag_exists(img, &t).await? {
                continue;
            }
            let mut r = img.r.clone();
            r.tag = Some(t);
            r.digest = None;
            let rimg = Resolved {
                input: full.clone(),
                r,
                source: img.source.clone(),
            };
            match self.image(&rimg, false).await {
                Ok((mut desc, _, _)) => {
                    seen.insert(full);
                    mark(&mut desc, "tag", subject);
                    out.push(desc);
                }
                Err(e) => self
                    .progress
                    .line(&format!("warning: {full} left out: {e:#}")),
            }
        }
        if let Some((bytes, m, media_type, from_tag)) = list {
            let full = format!("{base}:{tag}");
            if complete && !m.manifests.is_empty() && seen.insert(full.clone()) {
                let digest = Digest::sha256_of(&bytes);
                self.store_small(&digest, &bytes)?;
                let mut desc = Descriptor {
                    media_type,
                    digest,
                    size: bytes.len() as u64,
                    platform: None,
                    annotations: self.names(img, &full),
                };
                mark(
                    &mut desc,
                    if from_tag { "index-tag" } else { "index-api" },
                    subject,
                );
                out.push(desc);
            }
        }
        Ok(out)
    }

    /// The `index.json` annotations naming `full`.
    fn names(&self, img: &Resolved, full: &str) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        for k in [ANN_REF_NAME, ANN_CONTAINERD_NAME, ANN_UPSTREAM_REF] {
            a.insert(k.to_string(), full.to_string());
        }
        a.insert(ANN_APP.to_string(), self.opts.app.clone());
        if let Source::Hosted(repo) = &img.source {
            a.insert(ANN_HOSTED_REPO.to_string(), repo.name.clone());
        }
        a
    }

    /// The referrers of `subject`: (index bytes, parsed, media type, whether it came from
    /// the referrers tag rather than the API). `None`: no referrers known, or the source
    /// could not be asked (a warning says so).
    async fn referrers_list(
        &mut self,
        img: &Resolved,
        subject: &Digest,
        tag: &str,
    ) -> Option<(bytes::Bytes, Manifest, String, bool)> {
        let what = format!(
            "referrers of {}/{}@{subject}",
            img.r.registry, img.r.repository
        );
        let found: anyhow::Result<Option<(bytes::Bytes, String, bool)>> = async {
            match &img.source {
                Source::Hosted(repo) => {
                    let f = self
                        .hosted()?
                        .referrers(repo, subject, None)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let b = f
                        .body
                        .collect()
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .to_bytes();
                    Ok(Some((b, media::OCI_INDEX.to_string(), false)))
                }
                Source::Upstream(up) => {
                    let repo = self.client.repo(up, &img.r.repository);
                    match repo.referrers(subject, None).await {
                        Ok(Some(b)) => return Ok(Some((b, media::OCI_INDEX.to_string(), false))),
                        Ok(None) => {}
                        Err(e) => {
                            // Some registries refuse the API's path outright; the tag
                            // schema may still hold them.
                            self.progress.line(&format!(
                                "warning: {what}: the referrers API failed ({}); trying the tag {tag}",
                                upstream_failed(&what, &up.name, e).reason
                            ));
                        }
                    }
                    match repo.manifest(tag, DEFAULT_MANIFEST_ACCEPT, None).await {
                        Ok(m) => {
                            let mt = m
                                .content_type
                                .as_deref()
                                .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
                                .unwrap_or_default();
                            Ok(Some((m.bytes, mt, true)))
                        }
                        Err(UpstreamError::Status { status, .. })
                            if status == http::StatusCode::NOT_FOUND =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(upstream_failed(&what, &up.name, e).into()),
                    }
                }
            }
        }
        .await;
        let (bytes, media_type, from_tag) = match found {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => {
                self.progress.line(&format!("warning: {what}: {e:#}"));
                return None;
            }
        };
        let m = Manifest::parse(&bytes)?;
        let media_type = if media_type.is_empty() {
            m.media_type
                .clone()
                .unwrap_or_else(|| media::OCI_INDEX.into())
        } else {
            media_type
        };
        if !m.is_index(&media_type) {
            // A tag of that name that is no index is not the schema's.
            return None;
        }
        Some((bytes, m, media_type, from_tag))
    }

    /// Whether `tag` exists in `img`'s repository (a HEAD upstream; a 404 is no).
    async fn tag_exists(&mut self, img: &Resolved, tag: &str) -> anyhow::Result<bool> {
        let what = format!("{}/{}:{tag}", img.r.registry, img.r.repository);
        match &img.source {
            Source::Hosted(repo) => {
                match self
                    .hosted()?
                    .manifest(repo, &Reference::Tag(tag.to_string()), true)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(
                        crate::error::Error::ManifestUnknown(_)
                        | crate::error::Error::NameUnknown(_),
                    ) => Ok(false),
                    Err(e) => anyhow::bail!("{what}: {e}"),
                }
            }
            Source::Upstream(up) => {
                match self
                    .client
                    .repo(up, &img.r.repository)
                    .manifest_head(tag, DEFAULT_MANIFEST_ACCEPT)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(UpstreamError::Status { status, .. })
                        if status == http::StatusCode::NOT_FOUND =>
                    {
                        Ok(false)
                    }
                    Err(e) => {
                        let e = upstream_failed(&what, &up.name, e);
                        self.progress.line(&format!("warning: {e}"));
                        Ok(false)
                    }
                }
            }
        }
    }

    async fn image_blobs(&mut self, img: &Resolved, m: &Manifest) -> anyhow::Result<u64> {
        let mut total = 0;
        for d in m.config.iter().chain(&m.layers) {
            total += d.size;
            self.blob(img, d).await?;
        }
        Ok(total)
    }

    fn store_small(&mut self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        let hex = hex_of(digest)?.to_string();
        std::fs::write(self.blobs_dir.join(&hex), bytes)?;
        self.stored.insert(hex.clone(), bytes.len() as u64);
        self.manifests.insert(hex);
        Ok(())
    }

    async fn get_manifest(
        &mut self,
        img: &Resolved,
        reference: &str,
        expected: Option<&Digest>,
    ) -> anyhow::Result<(bytes::Bytes, String)> {
        let upstream = match &img.source {
            Source::Upstream(u) => u,
            Source::Hosted(repo) => {
                return self.hosted_manifest(img, repo, reference, expected).await
            }
        };
        let repo = self.client.repo(upstream, &img.r.repository);
        let what = format!("{}/{}:{reference}", img.r.registry, img.r.repository);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match repo
                .manifest(reference, DEFAULT_MANIFEST_ACCEPT, expected)
                .await
            {
                Ok(m) => {
                    let media_type = m
                        .content_type
                        .as_deref()
                        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
                        .filter(|s| !s.is_empty())
                        .or_else(|| Manifest::parse(&m.bytes).and_then(|m| m.media_type))
                        .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
                    if media_type.starts_with(media::DOCKER_MANIFEST_V1_PREFIX) {
                        anyhow::bail!("{what}: schema 1 manifests are not supported");
                    }
                    return Ok((m.bytes, media_type));
                }
                Err(UpstreamError::Mismatch { expected, got, .. }) => {
                    anyhow::bail!("{what}: manifest content is {got}, not {expected}")
                }
                Err(e) if attempt < ATTEMPTS && e.is_retryable() => {
                    let e = upstream_failed(&what, &upstream.name, e);
                    self.progress.line(&format!("retrying: {e}"));
                    tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
                }
                Err(e) => return Err(upstream_failed(&what, &upstream.name, e).into()),
            }
        }
    }

    /// Streams a blob into the staging layout, verifying digest and size; a blob already
    /// there (shared with an earlier image) is not fetched again.
    async fn blob(&mut self, img: &Resolved, d: &Descriptor) -> anyhow::Result<()> {
        let hex = hex_of(&d.digest)?.to_string();
        if self.stored.contains_key(&hex) {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch_blob(img, d, &hex).await {
                Ok(()) => break,
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    self.progress.line(&format!("retrying: {e}"));
                    tokio::time::sleep(Duration::from_secs(attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.stored.insert(hex, d.size);
        self.progress.line(&format!(
            "fetched {} ({}) from {}",
            d.digest,
            human(d.size),
            img.source.name()
        ));
        Ok(())
    }

    async fn fetch_blob(
        &mut self,
        img: &Resolved,
        d: &Descriptor,
        hex: &str,
    ) -> anyhow::Result<()> {
        let what = format!("{}/{}@{}", img.r.registry, img.r.repository, d.digest);
        let part = self.blobs_dir.join(format!("{hex}.part"));
        let up = match &img.source {
            Source::Upstream(u) => u,
            Source::Hosted(repo) => {
                return self.hosted_blob(repo, d, hex, &part, what).await;
            }
        };
        let blob = self
            .client
            .repo(up, &img.r.repository)
            .blob(&d.digest, false, None)
            .await
            .map_err(|e| upstream_failed(&what, &up.name, e))?;
        if blob.partial {
            anyhow::bail!(
                "{what}: upstream {} answered 206 to a whole-blob GET",
                up.name
            );
        }
        let mut file = tokio::fs::File::create(&part).await?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut body = blob.body;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    let e = distribution::body_error(up, &*e, &what, None);
                    return Err(upstream_failed(&what, &up.name, e).into());
                }
                Some(Ok(f)) => f,
            };
            if let Ok(data) = frame.into_data() {
                h.update(&data);
                file.write_all(&data).await?;
                n += data.len() as u64;
                self.progress.status(&format!(
                    "fetching {}: {} of {}",
                    d.digest,
                    human(n),
                    human(d.size)
                ));
            }
        }
        file.flush().await?;
        drop(file);
        let got = Digest::from_sha256(&h.finalize());
        if got != d.digest || n != d.size {
            let _ = tokio::fs::remove_file(&part).await;
            // A transfer that came out short or garbled is worth another try (a proxy on
            // the way may have cut it); a manifest naming the wrong digest is not, but
            // that shows the same way every time and the attempts run out.
            return Err(Failed {
                what,
                reason: format!(
                    "received {n} bytes hashing to {got}; expected {} bytes",
                    d.size
                ),
                retry: true,
            }
            .into());
        }
        tokio::fs::rename(&part, self.blobs_dir.join(hex)).await?;
        Ok(())
    }
}

impl Exporter<'_> {
    fn hosted(&self) -> anyhow::Result<&Hosted> {
        self.hosted
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("berth's hosted store is not open"))
    }

    /// A manifest of a hosted repository as berth serves it (by tag or digest), checked
    /// against `expected`.
    async fn hosted_manifest(
        &self,
        img: &Resolved,
        repo: &RepoKey,
        reference: &str,
        expected: Option<&Digest>,
    ) -> anyhow::Result<(bytes::Bytes, String)> {
        let what = format!("{}/{}:{reference}", img.r.registry, img.r.repository);
        let r = match reference.parse::<Digest>() {
            Ok(d) => Reference::Digest(d),
            Err(_) => Reference::Tag(reference.to_string()),
        };
        let fetched = self
            .hosted()?
            .manifest(repo, &r, false)
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let bytes = fetched
            .body
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?
            .to_bytes();
        let got = Digest::sha256_of(&bytes);
        if let Some(expected) = expected.filter(|e| **e != got) {
            anyhow::bail!("{what}: manifest content is {got}, not {expected}");
        }
        let media_type = fetched
            .media_type
            .or_else(|| Manifest::parse(&bytes).and_then(|m| m.media_type))
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        Ok((bytes, media_type))
    }

    /// Streams a hosted blob from berth's storage into the staging layout, verified.
    async fn hosted_blob(
        &self,
        repo: &RepoKey,
        d: &Descriptor,
        hex: &str,
        part: &Path,
        what: String,
    ) -> anyhow::Result<()> {
        let fetched = self
            .hosted()?
            .blob(repo, &d.digest, None, false)
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let mut body = fetched.body;
        let mut file = tokio::fs::File::create(part).await?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| anyhow::anyhow!("{what}: reading berth's storage: {e}"))?;
            if let Ok(data) = frame.into_data() {
                h.update(&data);
                file.write_all(&data).await?;
                n += data.len() as u64;
            }
        }
        file.flush().await?;
        drop(file);
        let got = Digest::from_sha256(&h.finalize());
        if got != d.digest || n != d.size {
            let _ = tokio::fs::remove_file(part).await;
            // Stored bytes that do not hash right will not on a second read either.
            return Err(Failed {
                what,
                reason: format!(
                    "berth's storage holds {n} bytes hashing to {got}; expected {} bytes",
                    d.size
                ),
                retry: false,
            }
            .into());
        }
        tokio::fs::rename(part, self.blobs_dir.join(hex)).await?;
        Ok(())
    }
}

/// One failed step of an export, with whether another attempt may succeed: decided by
/// the kind of failure when it is made (`UpstreamError::is_retryable`), never by its text.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
struct Failed {
    what: String,
    reason: String,
    retry: bool,
}

fn upstream_failed(what: &str, upstream: &str, e: UpstreamError) -> Failed {
    let reason = match &e {
        UpstreamError::Status { status, .. } => format!("upstream {upstream} answered {status}"),
        e => format!("upstream {upstream}: {e}"),
    };
    Failed {
        what: what.to_string(),
        reason,
        retry: e.is_retryable(),
    }
}

/// Network trouble, 5xx/429 and a garbled transfer are worth another try; a 404 or a
/// refusal is not.
fn retryable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Failed>().is_some_and(|f| f.retry)
}
