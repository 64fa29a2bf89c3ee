//! The registry service: answers manifest, blob, tag and referrer requests for one upstream
//! repository by asking the upstream client, and checks what comes back (manifest digests,
//! blob digests and lengths) before a client relies on it. This is the pull-through policy
//! (tag TTL, HEAD revalidation, stale-if-error, fills) over the content model, whose keys
//! are the app's repository ([`RepoKey`]), never the upstream.

mod verify;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;

use crate::body::{self, Body};
use crate::cache::{blob, Begin, Cache, FillKey, Source};
use crate::config::Upstream;
use crate::content::{self, RepoKey, StoredManifest, TagEntry, TagKey};
use crate::error::{Error, Result};
use crate::oci::digest::Algorithm;
use crate::oci::media::{accepts, OCI_INDEX, OCI_MANIFEST};
use crate::oci::repo::Reference;
use crate::oci::Digest;
use crate::upstream::{self, UpstreamError, UpstreamStalled};

pub use verify::Verified;

/// The repository a request is about, resolved to its upstream, with the cache policy in
/// force for this request.
pub struct Target {
    /// The app's repository: what links, tag answers and fills are keyed by.
    pub repo: RepoKey,
    /// Where its content comes from (pull-through only: a hosted repository has none).
    pub upstream: Arc<Upstream>,
    /// The repository on the upstream (`acme/api`).
    pub repository: String,
    /// The name the customer uses (`proxy/acme/quay.io/acme/api`), for links and bodies.
    pub public_name: String,
    /// What every link to this repository carries after its own query (`&ns=quay.io` for
    /// a mirror request, so the next page is asked for the same way); usually empty.
    pub link_query: String,
    pub tag_ttl: Duration,
    pub offline: bool,
}

impl Target {
    /// The `Link` to the next page of this repository's tag list.
    fn next_tags_link(&self, query: &str) -> String {
        format!(
            "</v2/{}/tags/list?{query}{}>; rel=\"next\"",
            self.public_name, self.link_query
        )
    }

    async fn linked(&self, cache: &Cache, digest: &Digest) -> bool {
        cache.links.contains(&self.repo, digest).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=start-` or `bytes=start-end` (inclusive).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a single-range `Range` header; multiple ranges are refused (registries and
    /// their clients never use them).
    pub fn parse(value: &str) -> Result<ByteRange> {
        let bad = || Error::RangeInvalid(format!("unsupported Range {value:?}"));
        let spec = value.trim().strip_prefix("bytes=").ok_or_else(bad)?;
        if spec.contains(',') {
            return Err(bad());
        }
        let (a, b) = spec.split_once('-').ok_or_else(bad)?;
        let num = |s: &str| -> Result<u64> {
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        match (a.trim(), b.trim()) {
            ("", n) => Ok(ByteRange::Suffix(num(n)?)),
            (s, "") => Ok(ByteRange::From {
                start: num(s)?,
                end: None,
            }),
            (s, e) => {
                let (start, end) = (num(s)?, num(e)?);
                if end < start {
                    return Err(bad());
                }
                Ok(ByteRange::From {
                    start,
                    end: Some(end),
                })
            }
        }
    }

    /// The half-open byte interval this range selects in a blob of `size` bytes, or `None`
    /// when it selects nothing (416).
    pub fn resolve(&self, size: u64) -> Option<(u64, u64)> {
        match *self {
            ByteRange::From { start, end } => {
                if start >= size {
                    return None;
                }
                let end = end.map_or(size, |e| e.saturating_add(1).min(size));
                Some((start, end))
            }
            // Of an empty blob no suffix is satisfiable (RFC 9110 14.1.2): `(0, 0)`
            // would be answered 206 with a Content-Range of `bytes 0-0/0`.
            ByteRange::Suffix(n) if n == 0 || size == 0 => None,
            ByteRange::Suffix(n) => Some((size.saturating_sub(n), size)),
        }
    }

    pub fn header_value(&self) -> String {
        match self {
            ByteRange::From { start, end: None } => format!("bytes={start}-"),
            ByteRange::From {
                start,
                end: Some(e),
            } => format!("bytes={start}-{e}"),
            ByteRange::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

/// What the service hands back to the handler: metadata in domain terms plus the body.
pub struct Fetched {
    pub partial: bool,
    pub media_type: Option<String>,
    pub digest: Option<String>,
    pub length: Option<u64>,
    pub content_range: Option<String>,
    /// Pagination of tag lists, already rewritten to berth's path.
    pub link: Option<String>,
    pub body: Body,
}

pub struct Registry {
    upstream: Arc<upstream::Client>,
    cache: Arc<Cache>,
}

impl Registry {
    pub fn new(cache: Cache, upstream: upstream::Client) -> Registry {
        Registry {
            upstream: Arc::new(upstream),
            cache: Arc::new(cache),
        }
    }

    pub fn upstream_client(&self) -> &Arc<upstream::Client> {
        &self.upstream
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The upstream repository of `t`, for the distribution operations.
    fn repo<'a>(&'a self, t: &'a Target) -> upstream::distribution::Repo<'a> {
        self.upstream.repo(&t.upstream, &t.repository)
    }

    /// Fetches a manifest by tag or digest. `accept` is the client's `Accept`, forwarded so
    /// the upstream picks the representation it would give the client directly.
    pub async fn manifest(
        &self,
        t: &Target,
        reference: &Reference,
        accept: Option<&str>,
        head: bool,
    ) -> Result<Fetched> {
        let accept = crate::oci::media::manifest_accept(accept);
        let accept = accept.as_ref();
        match reference {
            Reference::Digest(d) => self.manifest_by_digest(t, d, accept, head).await,
            Reference::Tag(tag) => self.manifest_by_tag(t, tag, accept, head).await,
        }
    }

    /// Manifests by digest are immutable: once cached (and linked to this repository)
    /// they are served without asking the upstream again.
    async fn manifest_by_digest(
        &self,
        t: &Target,
        d: &Digest,
        accept: &str,
        head: bool,
    ) -> Result<Fetched> {
        let ds = d.to_string();
        if t.linked(&self.cache, d).await {
            if let Some(m) = self.cache.manifests.get(d).await {
                self.cache.metrics.hit("manifest");
                return Ok(stored_manifest(&m, d, head));
            }
        }
        if t.offline {
            return Err(Error::Offline(format!("{}@{ds}", t.public_name)));
        }
        self.cache.metrics.miss("manifest");
        if head {
            return self.head_manifest(t, &ds, Some(d), accept).await;
        }
        let (bytes, media_type) = self.get_manifest(t, &ds, Some(d), accept).await?;
        self.store_manifest(t, d, &bytes, &media_type).await;
        Ok(manifest_fetched(bytes, media_type, d, false))
    }

    /// Tags move: the tag → digest answer is trusted for `tag_ttl`, then revalidated with a
    /// HEAD (free on Docker Hub) and fetched again only when the digest changed. When the
    /// upstream is down or rate-limited, the last known answer is served.
    async fn manifest_by_tag(
        &self,
        t: &Target,
        tag: &str,
        accept: &str,
        head: bool,
    ) -> Result<Fetched> {
        let key = TagKey::new(&t.repo, tag, accept);
        let mut cached = None;
        if let Some(e) = self.cache.tags.get(&key).await {
            if let Some(m) = self.cache.manifests.get(&e.digest).await {
                cached = Some((e, m));
            }
        }
        let what = format!("{}:{tag}", t.public_name);
        if let Some((e, m)) = &cached {
            if t.offline || e.age(SystemTime::now()) < t.tag_ttl {
                self.cache.metrics.hit("manifest");
                return Ok(stored_manifest(m, &e.digest, head));
            }
            match self.head_manifest(t, tag, None, accept).await {
                Ok(f) if f.digest.as_deref() == Some(e.digest.as_str()) => {
                    let mut fresh = e.clone();
                    fresh.checked_ms = content::now_ms();
                    self.cache.tags.put(&key, fresh).await;
                    self.cache.metrics.hit("manifest");
                    return Ok(stored_manifest(m, &e.digest, head));
                }
                Ok(_) => {}
                // An imported answer stands whatever the upstream says: an airgap site's
                // upstream often answers but refuses (no or old credentials there).
                Err(err) if err.is_transient() || e.imported => {
                    return Ok(self.stale(t, &what, &err, m, &e.digest, head));
                }
                Err(err @ Error::ManifestUnknown(_)) => {
                    self.cache.tags.remove(&key).await;
                    return Err(err);
                }
                Err(err) => return Err(err),
            }
        } else if t.offline {
            if let Some(f) = self.seeded_tag(t, tag, accept, head, None).await {
                return Ok(f);
            }
            return Err(Error::Offline(what));
        }
        self.cache.metrics.miss("manifest");
        if head && cached.is_none() {
            return match self.head_manifest(t, tag, None, accept).await {
                Err(err) => match self.seeded_tag(t, tag, accept, head, Some(&err)).await {
                    Some(f) => Ok(f),
                    None => Err(err),
                },
                ok => ok,
            };
        }
        match self.get_manifest(t, tag, None, accept).await {
            Ok((bytes, media_type)) => {
                let d = Digest::sha256_of(&bytes);
                self.store_manifest(t, &d, &bytes, &media_type).await;
                self.cache
                    .tags
                    .put(
                        &key,
                        TagEntry {
                            digest: d.clone(),
                            media_type: media_type.clone(),
                            length: bytes.len() as u64,
                            checked_ms: content::now_ms(),
                            imported: false,
                        },
                    )
                    .await;
                Ok(manifest_fetched(bytes, media_type, &d, head))
            }
            Err(err) => match &cached {
                Some((e, m)) if err.is_transient() || e.imported => {
                    Ok(self.stale(t, &what, &err, m, &e.digest, head))
                }
                Some(_) => Err(err),
                None => match self.seeded_tag(t, tag, accept, head, Some(&err)).await {
                    Some(f) => Ok(f),
                    None => Err(err),
                },
            },
        }
    }

    /// A tag answer recorded for another Accept set (an airgap import seeds one) whose media
    /// type this client accepts, for when the upstream cannot be asked (`failed`: `None`
    /// offline, else the error it answered). After a refusal or any other lasting error
    /// only an imported answer qualifies; after an outage any. Only manifests linked to
    /// this repository qualify.
    async fn seeded_tag(
        &self,
        t: &Target,
        tag: &str,
        accept: &str,
        head: bool,
        failed: Option<&Error>,
    ) -> Option<Fetched> {
        let any = failed.is_none_or(Error::is_transient);
        for e in self.cache.tags.entries(&t.repo, tag).await {
            if !(any || e.imported)
                || !accepts(accept, &e.media_type)
                || !t.linked(&self.cache, &e.digest).await
            {
                continue;
            }
            if let Some(m) = self.cache.manifests.get(&e.digest).await {
                let what = format!("{}:{tag}", t.public_name);
                return Some(match failed {
                    Some(err) => self.stale(t, &what, err, &m, &e.digest, head),
                    None => {
                        self.cache.metrics.hit("manifest");
                        // Every pull of an imported tag takes this path at an airgap site:
                        // a debug line, not an INFO line per pull.
                        tracing::debug!(upstream = %t.upstream.name, image = %what, digest = %e.digest,
                            "serving a stored tag answer recorded for another Accept set");
                        stored_manifest(&m, &e.digest, head)
                    }
                });
            }
        }
        None
    }

    fn stale(
        &self,
        t: &Target,
        what: &str,
        err: &Error,
        m: &StoredManifest,
        digest: &Digest,
        head: bool,
    ) -> Fetched {
        self.cache.metrics.stale_serve();
        if err.is_transient() {
            tracing::warn!(upstream = %t.upstream.name, image = %what, error = %err,
                "upstream unavailable: serving the last known manifest");
        } else {
            tracing::warn!(upstream = %t.upstream.name, image = %what, error = %err,
                "upstream refused: serving the manifest imported from an airgap bundle");
        }
        stored_manifest(m, digest, head)
    }

    async fn store_manifest(&self, t: &Target, d: &Digest, bytes: &Bytes, media_type: &str) {
        if d.algorithm() != Algorithm::Sha256 {
            return;
        }
        if let Err(e) = self.cache.manifests.put(d, bytes.clone(), media_type).await {
            tracing::warn!(error = %e, digest = %d, "cannot cache a manifest");
            return;
        }
        let children = crate::oci::manifest::referenced_digests(bytes);
        self.cache
            .links
            .add(&t.repo, std::iter::once(d).chain(children.iter()))
            .await;
    }

    fn manifest_unknown(t: &Target, reference: &str) -> Error {
        Error::ManifestUnknown(format!("{}:{}", t.public_name, reference))
    }

    async fn head_manifest(
        &self,
        t: &Target,
        reference: &str,
        expected: Option<&Digest>,
        accept: &str,
    ) -> Result<Fetched> {
        check_accept(accept)?;
        let head = self
            .repo(t)
            .manifest_head(reference, accept)
            .await
            .map_err(|e| failure(&t.upstream, e, Self::manifest_unknown(t, reference)))?;
        Ok(Fetched {
            partial: false,
            media_type: head.content_type,
            digest: head.digest.or_else(|| expected.map(|d| d.to_string())),
            length: head.length,
            content_range: None,
            link: None,
            body: body::empty(),
        })
    }

    /// GETs a manifest and checks it: by digest the bytes must hash to it.
    async fn get_manifest(
        &self,
        t: &Target,
        reference: &str,
        expected: Option<&Digest>,
        accept: &str,
    ) -> Result<(Bytes, String)> {
        check_accept(accept)?;
        let m = self
            .repo(t)
            .manifest(reference, accept, expected)
            .await
            .map_err(|e| failure(&t.upstream, e, Self::manifest_unknown(t, reference)))?;
        if expected.is_none() && m.claimed.as_deref().is_some_and(|c| c != m.digest.as_str()) {
            tracing::warn!(upstream = %t.upstream.name, claimed = ?m.claimed, computed = %m.digest,
                "upstream Docker-Content-Digest differs from the manifest bytes; serving the computed one");
        }
        let media_type = m.content_type.unwrap_or_else(|| OCI_MANIFEST.into());
        Ok((m.bytes, media_type))
    }

    /// Serves a blob: from disk when cached and linked to this repository; otherwise one
    /// upstream fetch fills the cache while every concurrent request for it streams along.
    pub async fn blob(
        &self,
        t: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<Fetched> {
        let ds = digest.to_string();
        let cacheable = digest.algorithm() == Algorithm::Sha256;
        if cacheable && self.cache.has_blob(digest).await {
            if !t.linked(&self.cache, digest).await {
                if t.offline {
                    return Err(Error::BlobUnknown(format!("{}@{ds}", t.public_name)));
                }
                // Knowing a digest is no entitlement: the upstream must confirm that this
                // repository has the blob, with this repository's credentials.
                self.confirm_blob(t, digest).await?;
            }
            if let Some(opened) = self.cache.blobs.open(digest).await {
                self.cache.metrics.hit("blob");
                return cached_blob(&self.cache, digest, opened, range, head);
            }
        }
        if t.offline {
            return Err(Error::Offline(format!("{}@{ds}", t.public_name)));
        }
        self.cache.metrics.miss("blob");
        if head || range.is_some() || !cacheable {
            return self.blob_pass_through(t, digest, range, head).await;
        }
        let key = FillKey {
            repo: t.repo.clone(),
            digest: digest.clone(),
        };
        let fill = match self.cache.blobs.begin(key) {
            Begin::PassThrough => return self.blob_pass_through(t, digest, None, false).await,
            Begin::Follower(f) => f,
            Begin::Leader(w) => {
                let f = w.fill();
                self.spawn_fill(t, digest.clone(), *w);
                f
            }
        };
        let wait = t.upstream.timeout + Duration::from_secs(5);
        let total = blob::wait_head(&fill, wait).await?;
        let rx = blob::read(Source::Filling(fill), 0, None, wait);
        Ok(Fetched {
            partial: false,
            media_type: Some("application/octet-stream".into()),
            digest: Some(ds),
            length: total,
            content_range: None,
            link: None,
            body: body::from_channel(rx),
        })
    }

    async fn confirm_blob(&self, t: &Target, digest: &Digest) -> Result<()> {
        self.repo(t)
            .blob(digest, true, None)
            .await
            .map_err(|e| failure(&t.upstream, e, Self::blob_unknown(t, digest)))?;
        self.cache.links.add(&t.repo, [digest]).await;
        Ok(())
    }

    fn blob_unknown(t: &Target, digest: &Digest) -> Error {
        Error::BlobUnknown(format!("{}@{}", t.public_name, digest))
    }

    /// Fetches the blob in a task of its own, so a client that disconnects does not stop
    /// the fill other clients (and the cache) are waiting for.
    fn spawn_fill(&self, t: &Target, digest: Digest, mut w: blob::FillWriter) {
        self.cache.metrics.fill_started();
        let client = self.upstream.clone();
        let cache = self.cache.clone();
        let up = t.upstream.clone();
        let repository = t.repository.clone();
        let key = t.repo.clone();
        let public = t.public_name.clone();
        tokio::spawn(async move {
            let repo = client.repo(&up, &repository);
            let unknown = || Error::BlobUnknown(format!("{public}@{digest}"));
            let answer = match repo.blob(&digest, false, None).await {
                Ok(b) if b.partial => {
                    let e = UpstreamError::Status {
                        status: StatusCode::PARTIAL_CONTENT,
                        retry_after: None,
                        content_range: None,
                        message: None,
                    };
                    return w.head_failed(failure(&up, e, unknown()));
                }
                Ok(b) => b,
                Err(e) => return w.head_failed(failure(&up, e, unknown())),
            };
            w.head(answer.length);
            let mut body = answer.body;
            let mut resumes = 0;
            loop {
                let broken = match body.frame().await {
                    None => break,
                    Some(Err(e)) if e.is::<UpstreamStalled>() => {
                        format!("the upstream stalled for {:?}", up.timeout)
                    }
                    Some(Err(e)) => format!(
                        "the upstream connection failed: {}",
                        upstream::error_chain(&*e)
                    ),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            if let Err(reason) = w.write(data).await {
                                tracing::warn!(upstream = %up.name, %digest, "blob fill failed: {reason}");
                                return w.fail(reason);
                            }
                        }
                        continue;
                    }
                };
                // A connection that breaks mid-blob is picked up where it stopped with a
                // range request, so the clients following this fill never notice; the hash
                // still covers every byte.
                if resumes < MAX_RESUMES && w.total().is_some_and(|t| w.received() < t) {
                    resumes += 1;
                    let from = w.received();
                    match repo.blob_from(&digest, from).await {
                        Ok(b) => {
                            tracing::info!(upstream = %up.name, %digest, from, reason = %broken,
                                "upstream broke mid-blob; resuming with a range request");
                            body = b.body;
                            continue;
                        }
                        Err(why) => {
                            let reason = format!("{broken}; resuming failed: {why}");
                            tracing::warn!(upstream = %up.name, %digest, "blob fill failed: {reason}");
                            return w.fail(reason);
                        }
                    }
                }
                tracing::warn!(upstream = %up.name, %digest, "blob fill failed: {broken}");
                return w.fail(broken);
            }
            match w.finish().await {
                Ok(()) => {
                    cache.links.add(&key, [&digest]).await;
                    tracing::debug!(upstream = %up.name, %digest, "blob cached");
                }
                Err(reason) => {
                    tracing::warn!(upstream = %up.name, %digest, "blob fill failed: {reason}")
                }
            }
        });
    }

    /// Streams a blob (or a range of it) from the upstream without caching. Full bodies are
    /// verified against the digest as they pass; a mismatch cuts the client's connection.
    async fn blob_pass_through(
        &self,
        t: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<Fetched> {
        let range = range
            .map(|r| {
                HeaderValue::try_from(r.header_value())
                    .map_err(|_| Error::RangeInvalid("range not representable".into()))
            })
            .transpose()?;
        let answer = match self.repo(t).blob(digest, head, range).await {
            Ok(a) => a,
            Err(UpstreamError::Status {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                content_range,
                ..
            }) => return Err(Error::RangeNotSatisfiable { content_range }),
            Err(e) => return Err(failure(&t.upstream, e, Self::blob_unknown(t, digest))),
        };
        let (partial, length, content_range) =
            (answer.partial, answer.length, answer.content_range);
        let body = if head {
            body::empty()
        } else {
            let streamed = body::from_upstream(answer.body);
            if partial {
                streamed
            } else {
                Body::boxed(Verified::new(streamed, digest.clone(), length))
            }
        };
        Ok(Fetched {
            partial,
            media_type: Some("application/octet-stream".into()),
            digest: Some(digest.to_string()),
            length,
            content_range,
            link: None,
            body,
        })
    }

    /// Lists tags, renaming the repository and the pagination link to berth's name.
    pub async fn tags(&self, t: &Target, n: Option<u32>, last: Option<&str>) -> Result<Fetched> {
        let page = self
            .repo(t)
            .tags(n, last)
            .await
            .map_err(|e| failure(&t.upstream, e, Error::NameUnknown(t.public_name.clone())))?;
        let mut link = page.next.map(|query| t.next_tags_link(&query));
        let bytes = page.bytes;
        let mut v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| Error::Upstream {
                upstream: t.upstream.name.clone(),
                reason: "the tag list is not JSON".into(),
            })?;
        v["name"] = serde_json::Value::String(t.public_name.clone());
        if let Some(tags) = v["tags"].as_array() {
            let tags: Vec<String> = tags
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            if let Some((tags, paged)) = self_paged(tags, n, last) {
                // The upstream ignored n/last (distribution 2.8 does): berth pages itself,
                // so clients always get the spec's sorted pages and a Link that works.
                if let Some(next) = paged {
                    link = next.map(|l| {
                        let l: String = form_urlencoded::byte_serialize(l.as_bytes()).collect();
                        t.next_tags_link(&format!("n={}&last={l}", n.unwrap_or(0)))
                    });
                }
                v["tags"] = serde_json::json!(tags);
            }
        }
        let out = serde_json::to_vec(&v).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Fetched {
            partial: false,
            media_type: Some("application/json".into()),
            digest: None,
            length: Some(out.len() as u64),
            content_range: None,
            link,
            body: body::full(out),
        })
    }

    /// The referrers of `digest`: the upstream's referrers API, else (an upstream without
    /// it, distribution 2.8) the OCI 1.1 referrers tag schema, the tag `sha256-<hex>` holding
    /// an image index of the referrers, which is what OCI 1.1 clients push to such a
    /// registry. Answering an empty index there would hide them: a 200 here tells a client
    /// the API exists, so it never tries the tag itself. When the upstream cannot be asked
    /// or refuses, the stored answer of that tag stands (an airgap import seeds one).
    pub async fn referrers(
        &self,
        t: &Target,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Fetched> {
        let bytes = self.referrers_index(t, digest, artifact_type).await?;
        // Filtered here whatever the upstream did (it may not filter, or not say so), so
        // the answer always means what `OCI-Filters-Applied` will say.
        let bytes = match artifact_type {
            Some(a) => filter_referrers(&bytes, a).ok_or_else(|| Error::Upstream {
                upstream: t.upstream.name.clone(),
                reason: "the referrers answer is not an image index".into(),
            })?,
            None => bytes,
        };
        Ok(Fetched {
            partial: false,
            media_type: Some(OCI_INDEX.into()),
            digest: None,
            length: Some(bytes.len() as u64),
            content_range: None,
            link: None,
            body: body::full(bytes),
        })
    }

    /// The unfiltered-by-berth referrers index of `digest` (the API's answer may already be
    /// filtered by the upstream), with the tag-schema fallbacks of [`Self::referrers`].
    async fn referrers_index(
        &self,
        t: &Target,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Bytes> {
        let tag = referrers_tag(digest);
        if t.offline {
            return self.referrers_by_tag(t, &tag).await;
        }
        let err = match self.repo(t).referrers(digest, artifact_type).await {
            Ok(Some(bytes)) => return Ok(bytes),
            // The tag path has the manifest path's stale and imported answers.
            Ok(None) => match self.referrers_by_tag(t, &tag).await {
                Ok(bytes) => return Ok(bytes),
                Err(err) => err,
            },
            Err(e) => {
                let err = failure(&t.upstream, e, Error::NameUnknown(t.public_name.clone()));
                if let Some(bytes) = self.stored_referrers(t, &tag, &err).await {
                    return Ok(bytes);
                }
                err
            }
        };
        // A manifest this repository holds (pulled or imported) with no stored referrers
        // list: what berth knows is that it has none, as it serves what it has of
        // manifests when the upstream fails.
        if t.linked(&self.cache, digest).await {
            tracing::warn!(upstream = %t.upstream.name, repository = %t.public_name, error = %err,
                "cannot ask the upstream for the referrers of {digest} and none are stored: answering none");
            return Ok(empty_index());
        }
        Err(err)
    }

    /// The referrers tag schema through the manifest path (tag TTL, stale-if-error, the
    /// imported answers an airgap site serves); no such tag is no referrers.
    async fn referrers_by_tag(&self, t: &Target, tag: &str) -> Result<Bytes> {
        let fetched = match self
            .manifest(t, &Reference::Tag(tag.to_string()), None, false)
            .await
        {
            Ok(f) => f,
            Err(Error::ManifestUnknown(_) | Error::NameUnknown(_) | Error::Offline(_)) => {
                return Ok(empty_index())
            }
            Err(e) => return Err(e),
        };
        let is_index = fetched
            .media_type
            .as_deref()
            .is_some_and(crate::oci::media::is_index_type);
        let bytes = fetched
            .body
            .collect()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .to_bytes();
        // A tag of that name that is no index is not the schema's: no referrers.
        Ok(if is_index { bytes } else { empty_index() })
    }

    /// The stored answer of the referrers tag when the upstream's API failed with `failed`:
    /// after an outage any stored answer, after a refusal only an imported one (as for
    /// tags). Only an index linked to this repository qualifies.
    async fn stored_referrers(&self, t: &Target, tag: &str, failed: &Error) -> Option<Bytes> {
        let any = failed.is_transient();
        for e in self.cache.tags.entries(&t.repo, tag).await {
            if !(any || e.imported)
                || !crate::oci::media::is_index_type(&e.media_type)
                || !t.linked(&self.cache, &e.digest).await
            {
                continue;
            }
            if let Some(m) = self.cache.manifests.get(&e.digest).await {
                tracing::warn!(upstream = %t.upstream.name, repository = %t.public_name, error = %failed,
                    "upstream's referrers API failed: serving the stored referrers tag {tag}");
                return Some(m.bytes.clone());
            }
        }
        None
    }
}

/// The OCI 1.1 referrers tag schema's tag for `digest`: `<alg>-<hex>`.
fn referrers_tag(digest: &Digest) -> String {
    digest.as_str().replacen(':', "-", 1)
}

/// The empty referrers index the spec asks for when there are none.
fn empty_index() -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#
    ))
}

/// The descriptors of a referrers index whose `artifactType` is `artifact_type`.
fn filter_referrers(index: &[u8], artifact_type: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(index).ok()?;
    v.get_mut("manifests")?
        .as_array_mut()?
        .retain(|d| d.get("artifactType").and_then(|a| a.as_str()) == Some(artifact_type));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// An upstream's tag list as the spec wants it: sorted (byte order), after `last`, at most
/// `n`. `None` when the upstream already answered that way. `Some((tags, None))` when it
/// only had to be sorted (the upstream's own `Link` stands); `Some((tags, Some(next)))`
/// when the upstream ignored `n`/`last` and berth paged: `next` is the page's last tag when
/// there is a next page.
#[allow(clippy::type_complexity)]
fn self_paged(
    mut tags: Vec<String>,
    n: Option<u32>,
    last: Option<&str>,
) -> Option<(Vec<String>, Option<Option<String>>)> {
    let sorted = tags.windows(2).all(|w| w[0] < w[1]);
    let after = last.is_none_or(|l| tags.iter().all(|t| t.as_str() > l));
    let within = n.is_none_or(|n| tags.len() <= n as usize);
    if sorted && after && within {
        return None;
    }
    tags.sort();
    tags.dedup();
    if after && within {
        return Some((tags, None));
    }
    if let Some(l) = last {
        tags.retain(|t| t.as_str() > l);
    }
    let mut next = None;
    if let Some(n) = n {
        if tags.len() > n as usize {
            tags.truncate(n as usize);
            next = tags.last().cloned();
        }
    }
    Some((tags, Some(next)))
}

/// Range requests a fill may make after its upstream connection breaks.
const MAX_RESUMES: u32 = 2;

/// A client's `Accept` that cannot go upstream is the client's error, not the upstream's.
fn check_accept(accept: &str) -> Result<()> {
    HeaderValue::try_from(accept)
        .map(drop)
        .map_err(|_| Error::Unsupported("invalid Accept header".into()))
}

fn stored_manifest(m: &StoredManifest, digest: &Digest, head: bool) -> Fetched {
    manifest_fetched(m.bytes.clone(), m.media_type.clone(), digest, head)
}

fn manifest_fetched(bytes: Bytes, media_type: String, digest: &Digest, head: bool) -> Fetched {
    Fetched {
        partial: false,
        media_type: Some(media_type),
        digest: Some(digest.to_string()),
        length: Some(bytes.len() as u64),
        content_range: None,
        link: None,
        body: if head {
            body::empty()
        } else {
            body::full(bytes)
        },
    }
}

/// Serves a cached blob, whole or a range of it: a local file (sent with sendfile on
/// plain HTTP) when the backend has one, else ranged reads from the backend. Also how
/// `hosted` serves its blobs.
pub fn cached_blob(
    cache: &Cache,
    d: &Digest,
    opened: blob::Opened,
    range: Option<ByteRange>,
    head: bool,
) -> Result<Fetched> {
    let blob::Opened { size, local, guard } = opened;
    let digest = d.to_string();
    let (start, end) = match range {
        None => (0, size),
        Some(r) => r.resolve(size).ok_or(Error::RangeNotSatisfiable {
            content_range: Some(format!("bytes */{size}")),
        })?,
    };
    let body = match local {
        _ if head => body::empty(),
        Some(file) => body::from_file(body::FileRange {
            file: file.0,
            start,
            end,
            size,
            guard,
        }),
        None => body::from_channel(blob::read(
            Source::Stored {
                backend: cache.storage.blobs.clone(),
                digest: d.clone(),
                size,
                guard,
            },
            start,
            Some(end),
            // Only a fill's followers wait on progress; a stored blob is read at once.
            Duration::from_secs(60),
        )),
    };
    Ok(Fetched {
        partial: range.is_some(),
        media_type: Some("application/octet-stream".into()),
        digest: Some(digest),
        length: Some(end - start),
        content_range: range.map(|_| format!("bytes {start}-{}/{size}", end.saturating_sub(1))),
        link: None,
        body,
    })
}

/// Maps an upstream failure: 404 → the caller's "unknown" error, 429 → 429 with its
/// `Retry-After`, anything else → 502 naming the upstream and the status (503 for 5xx and
/// network trouble, 504 for a timeout or stall, so stale-if-error applies).
fn failure(up: &Upstream, e: UpstreamError, not_found: Error) -> Error {
    let (status, message) = match e {
        UpstreamError::Status {
            status,
            retry_after,
            message,
            ..
        } => match status {
            StatusCode::NOT_FOUND => return with_upstream_message(not_found, message),
            StatusCode::TOO_MANY_REQUESTS => return Error::TooManyRequests { retry_after },
            s => (s, message),
        },
        UpstreamError::Mismatch { expected, .. } => {
            return Error::Upstream {
                upstream: up.name.clone(),
                reason: format!("manifest content does not match {expected}"),
            }
        }
        e => return e.into_error(&up.name),
    };
    let says = message.map(|m| format!(": {m}")).unwrap_or_default();
    match status {
        StatusCode::FORBIDDEN => Error::Upstream {
            upstream: up.name.clone(),
            reason: format!("the upstream denied berth access (403){says}; check the upstream's credentials and permissions"),
        },
        s if s.is_server_error() => Error::UpstreamUnavailable {
            upstream: up.name.clone(),
            reason: format!("the upstream answered {s}{says}"),
        },
        s => Error::Upstream {
            upstream: up.name.clone(),
            reason: format!("the upstream answered {s}{says}"),
        },
    }
}

/// A 404's "unknown" error with the upstream's own explanation, when it gave one (a
/// manifest it has but will not send for this `Accept`, say).
fn with_upstream_message(not_found: Error, message: Option<String>) -> Error {
    // distribution's stock texts say no more than berth's own error does.
    let generic = [
        "manifest unknown",
        "blob unknown",
        "repository name not known to registry",
    ];
    let Some(m) = message.filter(|m| !generic.iter().any(|g| m.eq_ignore_ascii_case(g))) else {
        return not_found;
    };
    let says = |s: String| format!("{s} (the upstream says: {m})");
    match not_found {
        Error::ManifestUnknown(s) => Error::ManifestUnknown(says(s)),
        Error::BlobUnknown(s) => Error::BlobUnknown(says(s)),
        Error::NameUnknown(s) => Error::NameUnknown(says(s)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_referrers_tag_schema_names_and_the_empty_answer() {
        let d: crate::oci::Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(
            super::referrers_tag(&d),
            format!("sha256-{}", "ab".repeat(32))
        );
        let v: serde_json::Value = serde_json::from_slice(&super::empty_index()).unwrap();
        assert_eq!(v["manifests"], serde_json::json!([]));
        assert_eq!(v["mediaType"], super::OCI_INDEX);
        assert_eq!(v["schemaVersion"], 2);
    }

    #[test]
    fn referrers_are_filtered_by_artifact_type() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": "sha256:aa", "artifactType": "application/vnd.example.sig"},
                {"digest": "sha256:bb", "artifactType": "application/spdx+json"},
                {"digest": "sha256:cc"}
            ]
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let out = super::filter_referrers(&bytes, "application/spdx+json").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["manifests"],
            serde_json::json!([{"digest": "sha256:bb", "artifactType": "application/spdx+json"}])
        );
        assert_eq!(v["schemaVersion"], 2);
        assert!(super::filter_referrers(b"not json", "x").is_none());
        assert!(super::filter_referrers(b"{}", "x").is_none());
    }

    #[test]
    fn tag_lists_are_paged_where_the_upstream_ignores_n_and_last() {
        let tags = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        // Paged and sorted by the upstream: left alone.
        assert_eq!(super::self_paged(tags(&["a", "b"]), Some(2), None), None);
        // Only unsorted: sorted, the upstream's Link stands.
        assert_eq!(
            super::self_paged(tags(&["b", "a"]), Some(2), None),
            Some((tags(&["a", "b"]), None))
        );
        // n ignored: the first page and where the next starts.
        assert_eq!(
            super::self_paged(tags(&["t3", "t1", "t2"]), Some(2), None),
            Some((tags(&["t1", "t2"]), Some(Some("t2".into()))))
        );
        // last ignored: what follows it, no next page.
        assert_eq!(
            super::self_paged(tags(&["t3", "t1", "t2"]), Some(2), Some("t2")),
            Some((tags(&["t3"]), Some(None)))
        );
        // Byte order: upper case first.
        assert_eq!(
            super::self_paged(tags(&["a", "B"]), None, None),
            Some((tags(&["B", "a"]), None))
        );
    }

    use super::*;
    use crate::oci::media::DEFAULT_MANIFEST_ACCEPT;

    #[test]
    fn accept_matching_ignores_parameters_and_honours_wildcards() {
        let oci = "application/vnd.oci.image.index.v1+json";
        assert!(accepts(DEFAULT_MANIFEST_ACCEPT, oci));
        assert!(accepts(
            "application/vnd.oci.image.index.v1+json; q=0.5",
            oci
        ));
        assert!(accepts("*/*", oci));
        assert!(!accepts(
            "application/vnd.docker.distribution.manifest.v2+json",
            oci
        ));
    }

    #[test]
    fn ranges() {
        assert_eq!(
            ByteRange::parse("bytes=0-99").unwrap(),
            ByteRange::From {
                start: 0,
                end: Some(99)
            }
        );
        assert_eq!(
            ByteRange::parse("bytes=100-").unwrap(),
            ByteRange::From {
                start: 100,
                end: None
            }
        );
        assert_eq!(ByteRange::parse("bytes=-5").unwrap(), ByteRange::Suffix(5));
        for bad in [
            "bytes=5-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=-",
            "bytes=99999999999999999999-",
            "",
        ] {
            assert!(ByteRange::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ByteRange::parse("bytes=3-7").unwrap().header_value(),
            "bytes=3-7"
        );
    }

    #[test]
    fn link_pagination_is_rewritten() {
        assert_eq!(
            upstream::distribution::next_link_query(
                "</v2/acme/api/tags/list?last=b&n=2>; rel=\"next\""
            )
            .unwrap(),
            "last=b&n=2"
        );
        assert_eq!(
            upstream::distribution::next_link_query("<x>; rel=\"prev\""),
            None
        );
    }
}
