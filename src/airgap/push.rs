//! `berth airgap push`: copies every image of a bundle into an OCI registry under the
//! rewriter's airgap names (`REGISTRY/NAMESPACE/<upstream-host>/<repository>`), with the
//! push client of `upstream::push` (HEAD to skip blobs already there, a cross-repository
//! mount when this run already pushed the blob elsewhere, monolithic or chunked uploads,
//! Basic or Bearer auth on the pull side's transport, credentials only to the
//! destination's own origin), retrying what the failure's kind says may succeed.
//!
//! A hosted image (exported from `<hostname>/<app>/<repo>`) lands at
//! `REGISTRY/NAMESPACE/<hostname>/<app>/<repo>`: berth's hostname stands where an upstream
//! host would, which is what `berth rewrite --registry` maps such an image to, and it can
//! never collide with an upstream image's name.
//!
//! Referrer entries go like images (by digest, or under their cosign or `sha256-<hex>`
//! tag). A referrers list the source answered through its referrers API (`index-api`) is
//! pushed as the `sha256-<hex>` tag only where the destination has no referrers API, as an
//! OCI 1.1 client does; one that was a tag at the source always is.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::bundle::Bundle;
use super::human;
use super::progress::Progress;
use crate::config::Secret;
use crate::oci::reference::ImageRef;
use crate::oci::Digest;
use crate::rewrite::{rewrite_image, Rules};
use crate::upstream::push::{BlobOutcome, Destination, PushError};

pub use crate::upstream::push::CHUNK;

const ATTEMPTS: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(300);

pub struct PushOptions {
    /// `REGISTRY[/NAMESPACE]`.
    pub to: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
}

#[derive(Debug, Default)]
pub struct PushReport {
    /// (old reference, new reference).
    pub mapping: Vec<(String, String)>,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub skipped: usize,
    pub mounted: usize,
}

/// The push target of one image: its new reference, repository and tag-or-digest.
pub fn target_of(to: &str, upstream_ref: &str) -> anyhow::Result<(String, String, String)> {
    let r = ImageRef::parse(upstream_ref).map_err(|e| anyhow::anyhow!("{upstream_ref:?}: {e}"))?;
    let rules = Rules {
        registry: Some(to.to_string()),
        upstream_hosts: vec![r.registry.clone()],
        ..Rules::default()
    };
    let new = rewrite_image(&rules, upstream_ref)
        .ok_or_else(|| anyhow::anyhow!("{upstream_ref}: cannot map it under {to}"))?;
    let host = to.split('/').next().unwrap_or(to);
    let rest = new
        .strip_prefix(host)
        .and_then(|s| s.strip_prefix('/'))
        .ok_or_else(|| anyhow::anyhow!("{new}: does not start with {host}/"))?;
    let name_end = rest.find('@').unwrap_or(rest.len()).min(
        rest.rfind(':')
            .filter(|&i| !rest[i..].contains('/'))
            .unwrap_or(rest.len()),
    );
    let repository = rest[..name_end].to_string();
    let reference = r
        .tag
        .clone()
        .or(r.digest.as_ref().map(Digest::to_string))
        .unwrap_or_else(|| "latest".into());
    Ok((new, repository, reference))
}

pub async fn push(bundle: &Bundle, opts: &PushOptions) -> anyhow::Result<PushReport> {
    let host = opts.to.split('/').next().unwrap_or(&opts.to);
    if host.is_empty() {
        anyhow::bail!("--to: give REGISTRY[/NAMESPACE]");
    }
    let scheme = if opts.insecure { "http" } else { "https" };
    let base = format!("{scheme}://{host}");
    let dest = Destination::new(&base, opts.username.clone(), opts.password.clone(), TIMEOUT)
        .map_err(|_| anyhow::anyhow!("--to: {base} is not a valid registry address"))?;
    let images = bundle.images()?;
    let probe = Probe {
        client: crate::upstream::Client::new(),
        up: destination(&base, opts)?,
    };
    let mut report = PushReport::default();
    let mut progress = Progress::new();
    // Where this run has put each blob, for cross-repository mounts.
    let mut placed: HashMap<Digest, String> = HashMap::new();
    for img in &images {
        let old = img
            .upstream_ref
            .clone()
            .or_else(|| img.ref_name.clone())
            .ok_or_else(|| {
                anyhow::anyhow!("{}: no reference annotation to name it by", img.top.digest)
            })?;
        let (new, repo, reference) = target_of(&opts.to, &old)?;
        if img
            .top
            .annotations
            .get(super::ANN_REFERRER)
            .map(String::as_str)
            == Some("index-api")
            && has_referrers_api(&probe, &repo, img).await
        {
            // The source answered through the referrers API and so does the destination,
            // which lists the referrers just pushed from their `subject`: the tag the
            // schema uses where there is no API would be a tag nobody pushed.
            progress.line(&format!(
                "{new}: the registry has the referrers API; tag not pushed"
            ));
            continue;
        }
        for (digest, size) in &img.blob_sizes {
            let outcome = retry(&mut progress, opts, &format!("{digest} → {repo}"), || {
                dest.push_blob(
                    &repo,
                    digest,
                    *size,
                    placed.get(digest).map(String::as_str),
                    || bundle.open_blob(digest),
                )
            })
            .await?;
            match outcome {
                BlobOutcome::Present => report.skipped += 1,
                BlobOutcome::Mounted => report.mounted += 1,
                BlobOutcome::Uploaded => {
                    report.uploaded += 1;
                    report.uploaded_bytes += size;
                }
            }
            progress.line(&format!(
                "{} {digest} ({}) in {repo}",
                verb(outcome),
                human(*size)
            ));
            placed.insert(digest.clone(), repo.clone());
        }
        for m in &img.manifests {
            let is_top = m.digest == img.top.digest;
            let r = if is_top && !reference.starts_with("sha256:") {
                reference.clone()
            } else {
                m.digest.to_string()
            };
            let body = Bytes::from(bundle.read_manifest(m, &old)?);
            retry(
                &mut progress,
                opts,
                &format!("manifest {r} → {repo}"),
                || dest.put_manifest(&repo, &r, &m.media_type, body.clone()),
            )
            .await?;
        }
        progress.line(&format!("pushed {old} → {new}"));
        report.mapping.push((old, new));
    }
    Ok(report)
}

/// A pull-side view of the destination, to ask whether it has the referrers API.
struct Probe {
    client: crate::upstream::Client,
    up: crate::tenancy::Upstream,
}

/// The destination as an upstream (same credentials, own origin only).
fn destination(base: &str, opts: &PushOptions) -> anyhow::Result<crate::tenancy::Upstream> {
    use crate::tenancy::{Credentials, Upstream, UpstreamAuth, UpstreamKind};
    let uri: http::Uri = base
        .parse()
        .map_err(|_| anyhow::anyhow!("--to: {base} is not a valid registry address"))?;
    let host = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| anyhow::anyhow!("--to: {base} has no host"))?;
    let auth = match (&opts.username, &opts.password) {
        (Some(username), Some(password)) => UpstreamAuth::Static(Credentials {
            username: username.clone(),
            password: password.clone(),
        }),
        _ => UpstreamAuth::Anonymous,
    };
    Ok(Upstream {
        name: "destination".into(),
        base_url: base.trim_end_matches('/').to_string(),
        host,
        kind: UpstreamKind::Custom,
        auth,
        repositories: Vec::new(),
        timeout: TIMEOUT,
    })
}

/// Whether the destination answers the referrers API for the subject of `img` (a
/// referrers list entry) in `repo`. Any failure counts as no: pushing the tag then is
/// what an OCI 1.1 client does, and harmless where the API exists after all.
async fn has_referrers_api(probe: &Probe, repo: &str, img: &super::Image) -> bool {
    let Some(subject) = img
        .top
        .annotations
        .get(super::ANN_SUBJECT)
        .and_then(|s| s.parse::<Digest>().ok())
    else {
        return false;
    };
    matches!(
        probe
            .client
            .repo(&probe.up, repo)
            .referrers(&subject, None)
            .await,
        Ok(Some(_))
    )
}

fn verb(o: BlobOutcome) -> &'static str {
    match o {
        BlobOutcome::Present => "present",
        BlobOutcome::Mounted => "mounted",
        BlobOutcome::Uploaded => "uploaded",
    }
}

/// Runs one step up to `ATTEMPTS` times while its failure is of a kind that may pass.
async fn retry<T, F, Fut>(
    progress: &mut Progress,
    opts: &PushOptions,
    what: &str,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PushError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                progress.line(&format!("{what}: {e}; retrying"));
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            Err(e) if e.is_unauthorized() && opts.username.is_none() => anyhow::bail!(
                "{what}: {e}; the registry wants credentials (--username, --password-stdin)"
            ),
            Err(e) => anyhow::bail!("{what}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_rewriter() {
        let (new, repo, r) = target_of("reg.local:5000/ns", "upstream.test/acme/api:1.2").unwrap();
        assert_eq!(new, "reg.local:5000/ns/upstream.test/acme/api:1.2");
        assert_eq!(repo, "ns/upstream.test/acme/api");
        assert_eq!(r, "1.2");
        let d = format!("sha256:{}", "a".repeat(64));
        let (new, repo, r) =
            target_of("reg.local", &format!("upstream.test/acme/api@{d}")).unwrap();
        assert_eq!(new, format!("reg.local/upstream.test/acme/api@{d}"));
        assert_eq!(repo, "upstream.test/acme/api");
        assert_eq!(r, d);
    }
}
