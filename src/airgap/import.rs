//! `berth airgap import`: verifies a whole bundle into a staging directory inside the cache,
//! resolves every image to an upstream of the app, and only then seeds the cache: blobs
//! (renamed in, pinned), manifests, repository links, and tag answers last, so a tag never
//! points at something that is not there yet. A bundle that fails any check leaves the
//! cache as it was.
//!
//! An image exported from a hosted repository ([`super::ANN_HOSTED_REPO`]) seeds the hosted
//! repository of that name in the app instead of the proxy cache: what a vendor pushed into
//! one berth is then pushed, in effect, into this one, served under `<hostname>/<app>/<repo>`
//! like anything pushed here. It goes through the hosted registry's own API (blobs linked,
//! manifests stored children first, each checked as a push is, the tag last), so this
//! berth's quota and immutable tags hold for it too; both are checked for the whole bundle
//! before anything is seeded.
//!
//! Referrer entries ([`super::ANN_REFERRER`]) are seeded like images: a cosign tag gets its
//! tag answer, a referrer by digest its manifest and links, and the referrers list its
//! `sha256-<hex>` tag answer, which the proxy's referrers endpoint answers from when the
//! upstream cannot be asked. A hosted repository gets no such list tag: it answers
//! referrers from the manifests' `subject`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::bundle::Bundle;
use super::human;
use crate::cache;
use crate::config::{Config, Upstream};
use crate::content::{now_ms, Links, ManifestStore, RepoKey, TagEntry, TagKey, TagStore};
use crate::hosted::Hosted;
use crate::oci::reference::ImageRef;
use crate::oci::repo::Reference;
use crate::oci::{Digest, DEFAULT_MANIFEST_ACCEPT};
use crate::state::Store;
use crate::storage::fs::FsBackend;
use crate::storage::{layout, BlobBackend as _, ObjectStore};

#[derive(Debug, Default)]
pub struct ImportReport {
    pub images: Vec<String>,
    /// Every blob of the bundle imported, manifests included (as export and list count).
    pub blobs: usize,
    /// How many of `blobs` are manifests.
    pub manifests: usize,
    /// Bytes of the configs and layers.
    pub bytes: u64,
}

/// An import that failed after seeding began (a hosted repository refused a manifest the
/// checks beforehand could not foresee, or the state store failed): what is named in
/// `imported` is in; importing the bundle again completes it.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PartlyImported {
    pub imported: Vec<String>,
    pub error: String,
}

struct Planned {
    reference: ImageRef,
    target: Target,
    image: super::Image,
}

/// Where an image goes.
enum Target {
    /// The proxy cache of the upstream that serves the reference.
    Proxied(Arc<Upstream>),
    /// The app's hosted repository of this name.
    Hosted(String),
}

pub async fn import(
    config: &Config,
    bundle_path: &Path,
    app: Option<&str>,
) -> anyhow::Result<ImportReport> {
    // Before reading a byte of the bundle: which app the images go to is the operator's
    // choice (or the configuration's only app), never the bundle's.
    let app = target_app(config, app)?;
    let dir = config.cache.dir.clone();
    // Creates the directories only: a running server's temp files are not leftovers.
    FsBackend::create(&dir).map_err(|(d, e)| anyhow::anyhow!("{}: {e}", d.display()))?;
    let tmp = layout::tmp_dir(&dir);
    // Removed when the import ends, whatever the outcome; `Cache::open` removes one that a
    // killed import left, but never one an import still holds.
    let stop = interrupted();
    let stage = Stage::create(&tmp)?;
    let path = bundle_path.to_path_buf();
    let stage_dir = stage.path.clone();
    let scan = tokio::task::spawn_blocking(move || Bundle::scan(&path, Some(&stage_dir)));
    // Verifying a big bundle takes a while: ctrl-c or SIGTERM then stops the import and
    // removes what was staged. Seeding (renames, small writes) is short and not cut.
    let bundle = tokio::select! {
        r = scan => r??,
        s = stop => anyhow::bail!("interrupted by {s} while verifying the bundle"),
    };
    let report = seed(config, bundle_path, &app, bundle).await;
    drop(stage);
    report
}

/// The app an import seeds: `--app`, else the configuration's only app.
fn target_app(config: &Config, app: Option<&str>) -> anyhow::Result<String> {
    match app {
        Some(a) if config.app(a).is_some() => Ok(a.to_string()),
        Some(a) => anyhow::bail!("--app: app {a} is not in the configuration"),
        None => {
            let mut slugs: Vec<&str> = config
                .tenants
                .apps()
                .iter()
                .map(|a| a.slug.as_str())
                .collect();
            slugs.sort_unstable();
            match slugs.as_slice() {
                [one] => Ok(one.to_string()),
                _ => anyhow::bail!(
                    "the configuration has {} apps ({}): pass --app to say which one the bundle is for",
                    slugs.len(),
                    slugs.join(", ")
                ),
            }
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM, naming it. The handlers are installed when
/// this is called, not when the future is first polled: call it before creating what the
/// signal must clean up, or a signal in between takes the default action (exit) and leaves
/// it behind.
pub(super) fn interrupted() -> impl std::future::Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            // Without handlers the default action (exit) stays; `Cache::open` cleans up then.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
}

/// An import's staging directory, `tmp/airgap-<unique>.part`, locked (flock) while the
/// import lives so a server starting meanwhile leaves it alone
/// ([`crate::storage::fs::remove_abandoned_stages`]), and removed on drop.
struct Stage {
    path: std::path::PathBuf,
    _lock: std::fs::File,
}

impl Stage {
    fn create(tmp: &Path) -> anyhow::Result<Stage> {
        let name = cache::temp_name();
        // Created and locked under a name the server's cleanup does not look at, then
        // renamed: there is no moment at which the directory is visible and unlocked.
        let hidden = tmp.join(format!(".{}{name}", layout::STAGE_PREFIX));
        let path = tmp.join(format!("{}{name}", layout::STAGE_PREFIX));
        let fail = |e: std::io::Error| anyhow::anyhow!("{}: {e}", hidden.display());
        std::fs::create_dir(&hidden).map_err(fail)?;
        let lock = std::fs::File::open(&hidden).map_err(fail)?;
        if let Err(e) = lock.lock().and_then(|_| std::fs::rename(&hidden, &path)) {
            let _ = std::fs::remove_dir_all(&hidden);
            return Err(fail(e));
        }
        Ok(Stage { path, _lock: lock })
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Seeds the cache from a verified bundle whose blobs are staged.
async fn seed(
    config: &Config,
    bundle_path: &Path,
    app: &str,
    bundle: Bundle,
) -> anyhow::Result<ImportReport> {
    let images = bundle.images()?;
    if images.is_empty() {
        anyhow::bail!("{}: the bundle holds no images", bundle_path.display());
    }
    let plan = plan(config, app, images)?;
    let hosted = if plan.iter().any(|p| matches!(p.target, Target::Hosted(_))) {
        let h = open_hosted(config).await?;
        check_hosted(config, app, &plan, &bundle, &*h.1).await?;
        Some(h)
    } else {
        None
    };
    let fs = Arc::new(FsBackend::at(&config.cache.dir));
    let objects: Arc<dyn ObjectStore> = fs.clone();

    // Everything is verified and every image has a home: now seed.
    let manifest_digests: BTreeSet<Digest> = plan
        .iter()
        .flat_map(|p| p.image.manifests.iter().map(|m| m.digest.clone()))
        .collect();
    let mut pins = Vec::new();
    let mut bytes = 0u64;
    for (digest, entry) in &bundle.blobs {
        let hex = digest.hex().to_string();
        let Some(staged) = &entry.staged else {
            continue;
        };
        if manifest_digests.contains(digest) {
            continue;
        }
        fs.adopt_verified(staged, digest).await?;
        bytes += entry.size;
        pins.push(hex);
    }
    cache::add_pins(&*objects, &pins).await?;
    let legacy = cache::legacy_of(&*config.tenants);
    let manifests = ManifestStore::new(objects.clone());
    let tags = TagStore::new(objects.clone(), legacy.clone());
    let links = Links::open(objects, legacy).await?;
    let manifests_in = bundle
        .blobs
        .keys()
        .filter(|d| manifest_digests.contains(*d))
        .count();
    let mut report = ImportReport {
        blobs: pins.len() + manifests_in,
        manifests: manifests_in,
        bytes,
        ..Default::default()
    };
    for p in &plan {
        for m in p
            .image
            .manifests
            .iter()
            .filter(|_| matches!(p.target, Target::Proxied(_)))
        {
            let body = std::fs::read(
                bundle.blobs[&m.digest]
                    .staged
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("{} was not staged", m.digest))?,
            )?;
            manifests
                .put(&m.digest, Bytes::from(body), &m.media_type)
                .await?;
        }
        let upstream = match &p.target {
            Target::Proxied(u) => u,
            Target::Hosted(repo) => {
                let Some((hosted, store)) = &hosted else {
                    anyhow::bail!("berth's hosted registry is not open");
                };
                if let Err(e) = seed_hosted(config, app, repo, p, &bundle, hosted, &**store).await {
                    return Err(PartlyImported {
                        imported: std::mem::take(&mut report.images),
                        error: format!("{e:#}"),
                    }
                    .into());
                }
                eprintln!(
                    "imported {} → hosted {app}/{repo} ({}, {})",
                    p.image.display_ref(),
                    p.image.top.digest,
                    human(p.image.blob_sizes.values().sum())
                );
                report.images.push(p.image.display_ref());
                continue;
            }
        };
        let digests: Vec<&Digest> = p
            .image
            .manifests
            .iter()
            .map(|m| &m.digest)
            .chain(p.image.blob_sizes.keys())
            .collect();
        // The app's repository, named as serving names it (the upstream's host and
        // repository), so every spelling a client pulls it by finds it.
        let repo = RepoKey::proxied(
            app,
            &upstream.host,
            &upstream.upstream_repository(&p.reference.repository),
        );
        links.add(&repo, digests).await;
        if let Some(tag) = &p.reference.tag {
            // One answer under berth's default Accept set; the registry falls back to it for
            // other Accept sets that admit its media type when the upstream is unreachable.
            tags.put(
                &TagKey::new(&repo, tag, DEFAULT_MANIFEST_ACCEPT),
                TagEntry {
                    digest: p.image.top.digest.clone(),
                    media_type: p.image.top.media_type.clone(),
                    length: p.image.top.size,
                    checked_ms: now_ms(),
                    imported: true,
                },
            )
            .await;
        }
        let line = format!(
            "imported {} → upstream {} ({}, {})",
            p.image.display_ref(),
            upstream.name,
            p.image.top.digest,
            human(p.image.blob_sizes.values().sum())
        );
        eprintln!("{line}");
        report.images.push(p.image.display_ref());
    }
    Ok(report)
}

/// Resolves every image to (upstream, repository, tag) of `slug` before anything is
/// written. An image the bundle records for another app is refused: importing it would
/// seed this app's tags with whatever the bundle says.
fn plan(config: &Config, slug: &str, images: Vec<super::Image>) -> anyhow::Result<Vec<Planned>> {
    let a = config
        .app(slug)
        .ok_or_else(|| anyhow::anyhow!("app {slug} is not in the configuration"))?;
    let mut out = Vec::new();
    for image in images {
        let what = image.display_ref();
        if let Some(other) = image.app.as_deref().filter(|o| *o != slug) {
            anyhow::bail!(
                "{what}: the bundle was exported for app {other}, not {slug}; refusing to import it into {slug}"
            );
        }
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
            if reference.tag.is_none()
                && *d != image.top.digest
                && original.map(String::as_str) != Some(d.as_str())
            {
                anyhow::bail!("{what}: the bundle holds {} instead", image.top.digest);
            }
        }
        if let Some(repo) = image.top.annotations.get(super::ANN_HOSTED_REPO) {
            // The bundle's word, so checked as a pushed name would be.
            let ok = repo.split('/').all(crate::oci::name::valid_component);
            if !ok {
                anyhow::bail!("{what}: {:?} is not a repository name", repo);
            }
            if is_referrers_index(&image) {
                // A hosted repository answers referrers from the manifests' `subject`
                // (which the referrers themselves bring): a tag of that list there would be
                // one more tag the vendor never pushed.
                continue;
            }
            out.push(Planned {
                reference,
                target: Target::Hosted(repo.clone()),
                image,
            });
            continue;
        }
        let upstream = a
            .select(&reference.registry, &reference.repository)
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
            target: Target::Proxied(upstream),
            image,
        });
    }
    Ok(out)
}

/// A bundle entry that is the list of an image's referrers (the `sha256-<hex>` tag).
fn is_referrers_index(image: &super::Image) -> bool {
    image
        .top
        .annotations
        .get(super::ANN_REFERRER)
        .is_some_and(|k| k.starts_with("index-"))
}

/// The hosted registry beside a running server: the state store's index over the cache
/// directory's bytes (as `berth gc` opens them).
async fn open_hosted(config: &Config) -> anyhow::Result<(Hosted, Arc<dyn Store>)> {
    let store = crate::state::open(&config.state)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (check state.sqlite or state.postgres)"))?;
    let cache = cache::Cache::open(
        &config.cache,
        cache::legacy_of(&*config.tenants),
        cache::CacheMetrics::default(),
    )
    .map_err(|e| anyhow::anyhow!("cache.dir: {e}"))?;
    let hosted = Hosted::new(Arc::new(cache), store.clone(), config.hosted.upload_timeout);
    Ok((hosted, store))
}

/// Before anything is seeded: no tag the bundle sets is an immutable one that points
/// elsewhere, and the app's quota holds what the bundle adds (blobs the repository does not
/// link yet, and manifests), so a refused import changes nothing.
async fn check_hosted(
    config: &Config,
    app: &str,
    plan: &[Planned],
    bundle: &Bundle,
    store: &dyn Store,
) -> anyhow::Result<()> {
    let policy = &config
        .app(app)
        .ok_or_else(|| anyhow::anyhow!("app {app} is not in the configuration"))?
        .hosted;
    let mut adding = 0u64;
    let mut counted = BTreeSet::new();
    for p in plan {
        let Target::Hosted(repo) = &p.target else {
            continue;
        };
        if let Some(tag) = &p.reference.tag {
            if let Some(row) = store.tagged(app, repo, tag).await? {
                if row.digest != p.image.top.digest.as_str() && policy.is_immutable(tag) {
                    anyhow::bail!(
                        "{}: tag {tag} of {app}/{repo} is immutable (apps[].hosted.immutable_tags) and points at {}",
                        p.image.display_ref(),
                        row.digest
                    );
                }
            }
        }
        for (d, size) in &p.image.blob_sizes {
            if store.blob(app, repo, d.as_str()).await?.is_none() && counted.insert(d.clone()) {
                adding += size;
            }
        }
        for m in &p.image.manifests {
            if store
                .manifest(app, repo, m.digest.as_str())
                .await?
                .is_none()
            {
                adding += bundle.blobs.get(&m.digest).map_or(m.size, |e| e.size);
            }
        }
    }
    if let Some(quota) = policy.quota {
        let used = store.app_bytes(app).await?;
        if used.saturating_add(adding) > quota {
            anyhow::bail!(
                "app {app} holds {} of its hosted quota of {} (apps[].hosted.quota); the bundle adds {}",
                human(used),
                human(quota),
                human(adding)
            );
        }
    }
    Ok(())
}

/// Seeds one hosted image: its blobs (already in storage) linked to the repository, then
/// its manifests stored children first, the top one last under its tag (or digest).
async fn seed_hosted(
    config: &Config,
    app: &str,
    repo: &str,
    p: &Planned,
    bundle: &Bundle,
    hosted: &Hosted,
    store: &dyn Store,
) -> anyhow::Result<()> {
    let policy = &config
        .app(app)
        .ok_or_else(|| anyhow::anyhow!("app {app} is not in the configuration"))?
        .hosted;
    for (d, size) in &p.image.blob_sizes {
        store.link_blob(app, repo, d.as_str(), *size).await?;
    }
    let key = RepoKey::hosted(app, repo);
    // The top manifest last: an index's children are then in the repository by the time
    // the index naming them is checked (export writes no nested indexes).
    let (top, children): (Vec<_>, Vec<_>) = p
        .image
        .manifests
        .iter()
        .partition(|m| m.digest == p.image.top.digest);
    for m in children.into_iter().chain(top) {
        let staged = bundle.blobs[&m.digest]
            .staged
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{} was not staged", m.digest))?;
        let body = Bytes::from(std::fs::read(staged)?);
        let reference = match (&p.reference.tag, m.digest == p.image.top.digest) {
            (Some(tag), true) => Reference::Tag(tag.clone()),
            _ => Reference::Digest(m.digest.clone()),
        };
        hosted
            .put_manifest(&key, &reference, Some(&m.media_type), body, policy)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: storing manifest {} in {app}/{repo}: {e}",
                    p.image.display_ref(),
                    m.digest
                )
            })?;
    }
    Ok(())
}
