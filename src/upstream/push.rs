//! The push side of the distribution protocol against one destination registry: HEAD a
//! blob to skip it, a cross-repository mount, monolithic uploads for small blobs and
//! chunked ones (PATCH, at most [`CHUNK`] in memory) for big ones, manifest PUT. It runs on
//! the same authenticated transport as pulls (`Client::fetch`: the challenge → Basic or
//! token flow, tokens per scope, one retry on a 401, `check_realm` on every realm), so the
//! credentials follow the same rule: they go only to the destination's own origin; an
//! upload `Location` elsewhere gets none, and its 401 or 403 is `RedirectRefused`, not a
//! challenge. Redirects are not followed: a push never resends a body somewhere else.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;

use super::distribution::expect;
use super::{Client, Request, UpstreamError};
use crate::oci::{scope, Digest};
use crate::settings::Secret;
use crate::tenancy::{Credentials, Upstream, UpstreamAuth, UpstreamKind};

/// Blobs up to this size go in one PUT; bigger ones in PATCH chunks of this size. Either
/// way at most this much of a blob is in memory.
pub const CHUNK: u64 = 8 * 1024 * 1024;

/// What pushing one blob took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The repository already had it.
    Present,
    /// Mounted from another repository of the same registry.
    Mounted,
    Uploaded,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A step of the protocol failed; `step` says which.
    #[error("{step}: {source}")]
    Upstream {
        step: String,
        #[source]
        source: UpstreamError,
    },
    /// The content to push could not be read (reading again would give the same).
    #[error("{0}")]
    Source(String),
}

impl PushError {
    /// Whether another attempt may succeed, by the kind of failure.
    pub fn is_retryable(&self) -> bool {
        match self {
            PushError::Upstream { source, .. } => source.is_retryable(),
            PushError::Source(_) => false,
        }
    }

    /// The destination refused berth's credentials, or wanted some and had none.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            PushError::Upstream {
                source: UpstreamError::Unauthorized,
                ..
            }
        )
    }
}

fn step(what: impl Into<String>) -> impl FnOnce(UpstreamError) -> PushError {
    let step = what.into();
    move |source| PushError::Upstream { step, source }
}

/// One destination registry and the credentials for it.
pub struct Destination {
    client: Client,
    up: Upstream,
}

impl Destination {
    /// `base_url` is `scheme://host[:port]`; `timeout` bounds each answer's head (and any
    /// silence in a body).
    pub fn new(
        base_url: &str,
        username: Option<String>,
        password: Option<Secret>,
        timeout: Duration,
    ) -> Result<Destination, UpstreamError> {
        let uri: http::Uri = base_url
            .parse()
            .map_err(|_| UpstreamError::Protocol(format!("{base_url} is not a valid URL")))?;
        let host = uri
            .authority()
            .map(|a| a.to_string())
            .ok_or_else(|| UpstreamError::Protocol(format!("{base_url} has no host")))?;
        // Basic and the token realm get the credentials only when both were given.
        let auth = match (username, password) {
            (Some(username), Some(password)) => {
                UpstreamAuth::Static(Credentials { username, password })
            }
            _ => UpstreamAuth::Anonymous,
        };
        Ok(Destination {
            client: Client::new(),
            up: Upstream {
                name: "destination".into(),
                base_url: base_url.trim_end_matches('/').to_string(),
                host,
                kind: UpstreamKind::Custom,
                auth,
                repositories: Vec::new(),
                timeout,
            },
        })
    }

    async fn call(
        &self,
        method: Method,
        target: String,
        headers: &[(http::HeaderName, String)],
        body: Bytes,
        scope: &str,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        for (k, v) in headers {
            let v = HeaderValue::try_from(v.as_str())
                .map_err(|_| UpstreamError::Protocol(format!("invalid {k} header")))?;
            h.insert(k.clone(), v);
        }
        let req = Request {
            headers: h,
            body,
            redirects_to_caller: true,
            ..Request::new(method, target, scope)
        };
        self.client.fetch(&self.up, &req).await
    }

    /// Pushes one blob into `repo`: nothing when it is there already, a mount when
    /// `mount_from` (another repository of this registry) has it, else an upload of what
    /// `open` reads (`size` bytes).
    pub async fn push_blob<R: Read>(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        mount_from: Option<&str>,
        open: impl FnOnce() -> std::io::Result<R>,
    ) -> Result<BlobOutcome, PushError> {
        let mut scopes = scope::pull_push(repo);
        let head = self
            .call(
                Method::HEAD,
                format!("/v2/{repo}/blobs/{digest}"),
                &[],
                Bytes::new(),
                &scopes,
            )
            .await
            .map_err(step(format!("checking for {digest}")))?;
        if head.status() == StatusCode::OK {
            return Ok(BlobOutcome::Present);
        }
        let mut start = format!("/v2/{repo}/blobs/uploads/");
        if let Some(from) = mount_from.filter(|f| *f != repo) {
            // One token for both: push here, pull there.
            scopes = format!("{scopes} {}", scope::pull(from));
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("mount", digest.as_str())
                .append_pair("from", from)
                .finish();
            start = format!("{start}?{q}");
        }
        let resp = self
            .call(Method::POST, start, &[], Bytes::new(), &scopes)
            .await
            .map_err(step("starting an upload"))?;
        if resp.status() == StatusCode::CREATED && mount_from.is_some() {
            return Ok(BlobOutcome::Mounted);
        }
        expect(&resp, &[StatusCode::ACCEPTED]).map_err(step("starting an upload"))?;
        let mut location = location_of(&resp).ok_or_else(|| PushError::Upstream {
            step: "starting an upload".into(),
            source: UpstreamError::Protocol("the registry gave no upload Location".into()),
        })?;
        let unreadable = |e: std::io::Error| PushError::Source(format!("reading {digest}: {e}"));
        let mut reader = open().map_err(unreadable)?;
        let mut read_chunk = |n: u64| -> Result<Bytes, PushError> {
            let mut buf = Vec::with_capacity(n as usize);
            (&mut reader)
                .take(n)
                .read_to_end(&mut buf)
                .map_err(unreadable)?;
            if buf.len() as u64 != n {
                return Err(PushError::Source(format!(
                    "{digest}: the content ended early"
                )));
            }
            Ok(Bytes::from(buf))
        };
        let octet = (CONTENT_TYPE, "application/octet-stream".to_string());
        let final_body = if size <= CHUNK {
            read_chunk(size)?
        } else {
            let mut sent = 0u64;
            while sent < size {
                let n = CHUNK.min(size - sent);
                let chunk = read_chunk(n)?;
                let range = (CONTENT_RANGE, format!("{}-{}", sent, sent + n - 1));
                let resp = self
                    .call(
                        Method::PATCH,
                        location.clone(),
                        &[octet.clone(), range],
                        chunk,
                        &scopes,
                    )
                    .await
                    .map_err(step("uploading a chunk"))?;
                expect(&resp, &[StatusCode::ACCEPTED]).map_err(step("uploading a chunk"))?;
                if let Some(next) = location_of(&resp) {
                    location = next;
                }
                sent += n;
            }
            Bytes::new()
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!(
            "{location}{sep}{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("digest", digest.as_str())
                .finish()
        );
        let resp = self
            .call(Method::PUT, put, &[octet], final_body, &scopes)
            .await
            .map_err(step("finishing an upload"))?;
        expect(&resp, &[StatusCode::CREATED]).map_err(step("finishing an upload"))?;
        Ok(BlobOutcome::Uploaded)
    }

    /// PUTs a manifest under `reference` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<(), PushError> {
        let what = format!("putting manifest {reference}");
        let resp = self
            .call(
                Method::PUT,
                format!("/v2/{repo}/manifests/{reference}"),
                &[(CONTENT_TYPE, media_type.to_string())],
                body,
                &scope::pull_push(repo),
            )
            .await
            .map_err(step(what.clone()))?;
        expect(&resp, &[StatusCode::CREATED]).map_err(step(what))?;
        Ok(())
    }
}

fn location_of(resp: &http::Response<Incoming>) -> Option<String> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
