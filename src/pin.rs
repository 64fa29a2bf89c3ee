//! Tag → digest resolution for `berth rewrite --pin-digests`: asks the app's upstream (with
//! the stored credentials) what a tag points at, with a HEAD so Docker Hub does not count it.

use crate::config::{Config, Upstream};
use crate::oci::reference::ImageRef;
use crate::oci::{Digest, DEFAULT_MANIFEST_ACCEPT};
use crate::upstream::{self, UpstreamError};

pub struct Pinner {
    rt: tokio::runtime::Runtime,
    client: upstream::Client,
    config: Config,
    app: String,
}

impl Pinner {
    pub fn new(config: &Config, app: &str) -> Result<Pinner, String> {
        if config.app(app).is_none() {
            return Err(format!("--app: unknown app {app:?}"));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        Ok(Pinner {
            rt,
            client: upstream::Client::new(),
            config: config.clone(),
            app: app.to_string(),
        })
    }

    /// The digest the image's tag (or `latest`) points at now.
    pub fn resolve(&self, r: &ImageRef) -> Result<String, String> {
        let app = self
            .config
            .app(&self.app)
            .ok_or_else(|| format!("unknown app {:?}", self.app))?;
        let up = app
            .select(&r.registry, &r.repository)
            .ok_or_else(|| format!("{r}: no upstream of app {} serves it", self.app))?
            .clone();
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        self.rt.block_on(digest_of(&self.client, &up, r, &tag))
    }
}

/// What `tag` of `r` points at on `up`: the HEAD's `Docker-Content-Digest`, or, from a
/// registry that sends none, the sha256 of the manifest a GET returns.
async fn digest_of(
    client: &upstream::Client,
    up: &Upstream,
    r: &ImageRef,
    tag: &str,
) -> Result<String, String> {
    let repo = client.repo(up, &r.repository);
    let failed = |e: UpstreamError| match e {
        UpstreamError::Status { status, .. } => {
            format!("{r}: upstream {} answered {status}", up.name)
        }
        e => format!("{r}: upstream {}: {e}", up.name),
    };
    let head = repo
        .manifest_head(tag, DEFAULT_MANIFEST_ACCEPT)
        .await
        .map_err(failed)?;
    if let Some(d) = head.digest.and_then(|v| v.parse::<Digest>().ok()) {
        return Ok(d.to_string());
    }
    let m = repo
        .manifest(tag, DEFAULT_MANIFEST_ACCEPT, None)
        .await
        .map_err(failed)?;
    Ok(m.digest.to_string())
}
