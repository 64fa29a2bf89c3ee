//! The registry service: answers manifest, blob, tag and referrer requests for one upstream
//! repository by asking the upstream client, and checks what comes back (manifest digests,
//! blob digests and lengths) before a client relies on it.

mod verify;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, RANGE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::api::body::{self, Body};
use crate::config::Upstream;
use crate::error::{Error, Result};
use crate::oci::{Digest, DEFAULT_MANIFEST_ACCEPT};
use crate::upstream::{self, UpstreamError};

pub use verify::Verified;

/// distribution refuses manifests over 4 MiB; so does berth, which holds them in memory.
const MAX_MANIFEST: usize = 4 * 1024 * 1024;
const MAX_TAG_LIST: usize = 16 * 1024 * 1024;
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The repository a request is about, resolved to its upstream.
pub struct Target {
    pub upstream: Arc<Upstream>,
    /// The repository on the upstream (`acme/api`).
    pub repository: String,
    /// The name the customer uses (`proxy/acme/quay.io/acme/api`), for links and bodies.
    pub public_name: String,
}

impl Target {
    fn scope(&self) -> String {
        format!("repository:{}:pull", self.repository)
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
    upstream: upstream::Client,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            upstream: upstream::Client::new(),
        }
    }

    pub fn upstream_client(&self) -> &upstream::Client {
        &self.upstream
    }

    async fn fetch(
        &self,
        t: &Target,
        method: Method,
        path: String,
        query: Option<String>,
        headers: HeaderMap,
    ) -> Result<http::Response<Incoming>> {
        let req = upstream::Request {
            method,
            path,
            query,
            headers,
            scope: t.scope(),
        };
        self.upstream
            .fetch(&t.upstream, &req)
            .await
            .map_err(|e: UpstreamError| e.into_error(&t.upstream.name))
    }

    /// Fetches a manifest by tag or digest. `accept` is the client's `Accept`, forwarded so
    /// the upstream picks the same representation it would give the client directly.
    pub async fn manifest(
        &self,
        t: &Target,
        reference: &str,
        expected: Option<&Digest>,
        accept: Option<&str>,
        head: bool,
    ) -> Result<Fetched> {
        let mut headers = HeaderMap::new();
        let accept = accept
            .filter(|a| !a.trim().is_empty())
            .unwrap_or(DEFAULT_MANIFEST_ACCEPT);
        headers.insert(
            ACCEPT,
            HeaderValue::try_from(accept)
                .map_err(|_| Error::Unsupported("invalid Accept header".into()))?,
        );
        let method = if head { Method::HEAD } else { Method::GET };
        let path = format!("/v2/{}/manifests/{}", t.repository, reference);
        let resp = self.fetch(t, method, path, None, headers).await?;
        let what = || format!("{}:{}", t.public_name, reference);
        if resp.status() != StatusCode::OK {
            return Err(failure(&t.upstream, &resp, Error::ManifestUnknown(what())));
        }
        let media_type = header(resp.headers(), CONTENT_TYPE);
        let upstream_digest = header(resp.headers(), "docker-content-digest");
        if head {
            let length = header(resp.headers(), CONTENT_LENGTH).and_then(|l| l.parse().ok());
            return Ok(Fetched {
                partial: false,
                media_type,
                digest: upstream_digest.or_else(|| expected.map(|d| d.to_string())),
                length,
                content_range: None,
                link: None,
                body: body::empty(),
            });
        }
        let bytes = read_limited(&t.upstream, resp.into_body(), MAX_MANIFEST, "manifest").await?;
        let actual = Digest::sha256_of(&bytes);
        if let Some(want) = expected {
            // Only sha256 can be recomputed here; a sha512 reference is trusted as served.
            if want.algorithm() == crate::oci::digest::Algorithm::Sha256 && *want != actual {
                return Err(Error::Upstream {
                    upstream: t.upstream.name.clone(),
                    reason: format!("manifest content does not match {want}"),
                });
            }
        }
        let digest = match expected {
            Some(d) => d.to_string(),
            None => actual.to_string(),
        };
        if let Some(claimed) = &upstream_digest {
            if expected.is_none() && *claimed != digest {
                tracing::warn!(upstream = %t.upstream.name, %claimed, computed = %digest,
                    "upstream Docker-Content-Digest differs from the manifest bytes; serving the computed one");
            }
        }
        Ok(Fetched {
            partial: false,
            media_type,
            digest: Some(digest),
            length: Some(bytes.len() as u64),
            content_range: None,
            link: None,
            body: body::full(bytes),
        })
    }

    /// Streams a blob (or a range of it) from the upstream. Full bodies are verified
    /// against the digest as they pass; a mismatch cuts the client's connection.
    pub async fn blob(
        &self,
        t: &Target,
        digest: &Digest,
        range: Option<ByteRange>,
        head: bool,
    ) -> Result<Fetched> {
        let mut headers = HeaderMap::new();
        if let Some(r) = range {
            headers.insert(
                RANGE,
                HeaderValue::try_from(r.header_value())
                    .map_err(|_| Error::RangeInvalid("range not representable".into()))?,
            );
        }
        let method = if head { Method::HEAD } else { Method::GET };
        let path = format!("/v2/{}/blobs/{}", t.repository, digest);
        let resp = self.fetch(t, method, path, None, headers).await?;
        let status = resp.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(Error::RangeNotSatisfiable {
                content_range: header(resp.headers(), CONTENT_RANGE),
            });
        }
        if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
            return Err(failure(
                &t.upstream,
                &resp,
                Error::BlobUnknown(format!("{}@{}", t.public_name, digest)),
            ));
        }
        let partial = status == StatusCode::PARTIAL_CONTENT;
        let length: Option<u64> =
            header(resp.headers(), CONTENT_LENGTH).and_then(|l| l.parse().ok());
        let content_range = header(resp.headers(), CONTENT_RANGE);
        let body = if head {
            body::empty()
        } else if partial {
            body::from_incoming(resp.into_body())
        } else {
            Verified::new(
                body::from_incoming(resp.into_body()),
                digest.clone(),
                length,
            )
            .boxed()
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
        let q = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(l) = last {
                q.append_pair("last", l);
            }
            q.finish()
        };
        let query = (!q.is_empty()).then_some(q);
        let path = format!("/v2/{}/tags/list", t.repository);
        let resp = self
            .fetch(t, Method::GET, path, query, HeaderMap::new())
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(failure(
                &t.upstream,
                &resp,
                Error::NameUnknown(t.public_name.clone()),
            ));
        }
        let link = header(resp.headers(), LINK).and_then(|l| {
            let query = next_link_query(&l)?;
            Some(format!(
                "</v2/{}/tags/list?{}>; rel=\"next\"",
                t.public_name, query
            ))
        });
        let bytes = read_limited(&t.upstream, resp.into_body(), MAX_TAG_LIST, "tag list").await?;
        let mut v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| Error::Upstream {
                upstream: t.upstream.name.clone(),
                reason: "the tag list is not JSON".into(),
            })?;
        v["name"] = serde_json::Value::String(t.public_name.clone());
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

    /// The referrers API; an upstream without it gets the empty index the spec asks for.
    pub async fn referrers(
        &self,
        t: &Target,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Fetched> {
        let query = artifact_type.map(|a| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", a)
                .finish()
        });
        let path = format!("/v2/{}/referrers/{}", t.repository, digest);
        let resp = self
            .fetch(t, Method::GET, path, query, HeaderMap::new())
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let bytes = read_limited(
                    &t.upstream,
                    resp.into_body(),
                    MAX_MANIFEST,
                    "referrers index",
                )
                .await?;
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
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST => {
                let empty = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": []
                }))
                .map_err(|e| Error::Internal(e.to_string()))?;
                Ok(Fetched {
                    partial: false,
                    media_type: Some(OCI_INDEX.into()),
                    digest: None,
                    length: Some(empty.len() as u64),
                    content_range: None,
                    link: None,
                    body: body::full(empty),
                })
            }
            _ => Err(failure(
                &t.upstream,
                &resp,
                Error::NameUnknown(t.public_name.clone()),
            )),
        }
    }
}

fn header(h: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Maps an upstream's non-success answer: 404 → the caller's "unknown" error, 429 → 429
/// with its `Retry-After`, anything else → 502 naming the upstream and the status.
fn failure(up: &Upstream, resp: &http::Response<Incoming>, not_found: Error) -> Error {
    match resp.status() {
        StatusCode::NOT_FOUND => not_found,
        StatusCode::TOO_MANY_REQUESTS => Error::TooManyRequests {
            retry_after: header(resp.headers(), RETRY_AFTER),
        },
        StatusCode::FORBIDDEN => Error::Upstream {
            upstream: up.name.clone(),
            reason: "the upstream denied berth access (403); check the upstream's credentials and permissions".into(),
        },
        s => Error::Upstream {
            upstream: up.name.clone(),
            reason: format!("the upstream answered {s}"),
        },
    }
}

async fn read_limited(up: &Upstream, body: Incoming, limit: usize, what: &str) -> Result<Bytes> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(Error::Upstream {
            upstream: up.name.clone(),
            reason: if e.is::<http_body_util::LengthLimitError>() {
                format!("{what} larger than {limit} bytes")
            } else {
                format!("reading the {what} failed: {}", upstream::error_chain(&*e))
            },
        }),
    }
}

/// Extracts the query of a `Link: <...?last=x&n=2>; rel="next"` header.
fn next_link_query(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let part = part.trim();
        if !part.contains("rel=\"next\"") && !part.contains("rel=next") {
            return None;
        }
        let start = part.find('<')? + 1;
        let end = part[start..].find('>')? + start;
        let url = &part[start..end];
        let q = url.split_once('?')?.1;
        // Only the pagination parameters survive: nothing else from upstream is echoed.
        let kept: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == "n" || k == "last"),
            )
            .finish();
        (!kept.is_empty()).then_some(kept)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            next_link_query("</v2/acme/api/tags/list?last=b&n=2>; rel=\"next\"").unwrap(),
            "last=b&n=2"
        );
        assert_eq!(next_link_query("<x>; rel=\"prev\""), None);
    }
}
