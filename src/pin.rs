//! Tag → digest resolution for `berth rewrite --pin-digests`: asks the app's upstream (with
//! the stored credentials) what a tag points at, with a HEAD so Docker Hub does not count it.

use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use crate::config::Config;
use crate::oci::reference::ImageRef;
use crate::oci::{Digest, DEFAULT_MANIFEST_ACCEPT};
use crate::upstream;

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
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(DEFAULT_MANIFEST_ACCEPT));
        let mut req = upstream::Request {
            method: Method::HEAD,
            path: format!("/v2/{}/manifests/{tag}", r.repository),
            query: None,
            headers,
            scope: crate::oci::scope::pull(&r.repository),
        };
        self.rt.block_on(async {
            let resp = self
                .client
                .fetch(&up, &req)
                .await
                .map_err(|e| format!("{r}: upstream {}: {e}", up.name))?;
            if resp.status() != StatusCode::OK {
                return Err(format!(
                    "{r}: upstream {} answered {}",
                    up.name,
                    resp.status()
                ));
            }
            if let Some(d) = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok())
            {
                return Ok(d.to_string());
            }
            // No digest header: fetch the manifest and hash it.
            req.method = Method::GET;
            let resp = self
                .client
                .fetch(&up, &req)
                .await
                .map_err(|e| format!("{r}: upstream {}: {e}", up.name))?;
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{r}: reading the manifest failed: {e}"))?
                .to_bytes();
            Ok(Digest::sha256_of(&bytes).to_string())
        })
    }
}
