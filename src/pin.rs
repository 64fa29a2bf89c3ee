//! Tag → digest resolution for `berth rewrite --pin-digests`: asks the app's upstream (with
//! the stored credentials) what a tag points at, with a HEAD so Docker Hub does not count it;
//! for one of berth's hosted images (`<hostname>/<app>/<repo>`) berth's own hosted index in
//! the state store says it, as berth itself would answer a pull (no upstream has it).

use std::sync::Arc;

use crate::config::{Config, Upstream};
use crate::oci::reference::ImageRef;
use crate::oci::{Digest, DEFAULT_MANIFEST_ACCEPT};
use crate::upstream::{self, UpstreamError};

pub struct Pinner {
    rt: tokio::runtime::Runtime,
    client: upstream::Client,
    config: Config,
    app: String,
    /// Opened at the first hosted image: a rewrite of only upstream images needs no store.
    store: std::cell::OnceCell<Arc<dyn crate::state::Store>>,
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
            store: std::cell::OnceCell::new(),
        })
    }

    /// The digest the image's tag (or `latest`) points at now.
    pub fn resolve(&self, r: &ImageRef) -> Result<String, String> {
        let app = self
            .config
            .app(&self.app)
            .ok_or_else(|| format!("unknown app {:?}", self.app))?;
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        if let Some(repo) =
            crate::rewrite::hosted_repository(&self.config.server.hostname, &app.slug, r)
        {
            return self.hosted(r, &repo, &tag);
        }
        let up = app
            .select(&r.registry, &r.repository)
            .ok_or_else(|| format!("{r}: no upstream of app {} serves it", self.app))?
            .clone();
        self.rt.block_on(digest_of(&self.client, &up, r, &tag))
    }
}

impl Pinner {
    /// What `tag` of the app's hosted repository `repo` points at in berth's index.
    fn hosted(&self, r: &ImageRef, repo: &str, tag: &str) -> Result<String, String> {
        let store = match self.store.get() {
            Some(s) => s.clone(),
            None => {
                let s = self
                    .rt
                    .block_on(crate::state::open(&self.config.state))
                    .map_err(|e| {
                        format!(
                            "{r}: berth's state store: {e} (check state.sqlite or state.postgres)"
                        )
                    })?;
                self.store.get_or_init(|| s).clone()
            }
        };
        let row = self
            .rt
            .block_on(store.tagged(&self.app, repo, tag))
            .map_err(|e| format!("{r}: berth's hosted index: {e}"))?
            .ok_or_else(|| {
                format!(
                    "{r}: hosted repository {}/{repo} has no tag {tag:?}",
                    self.app
                )
            })?;
        Ok(row.digest)
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
