//! The pull side of the distribution protocol as typed operations on one upstream
//! repository: manifest GET/HEAD (verified when the digest is known), blob GET/HEAD with a
//! range and resume from an offset, a tag page with its `Link: rel="next"`, the referrers
//! index. Every call goes through the authenticated transport (`Client::fetch`: token flow,
//! redirects without credentials to other origins) and every body through the `Stall`
//! guard. Answers the operation does not want become `UpstreamError::Status`, so callers
//! decide by kind (`is_retryable`, the status), never by message text.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, RANGE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{error_chain, Client, Request, Stall, UpstreamError, UpstreamStalled};
use crate::config::Upstream;
use crate::oci::digest::Algorithm;
use crate::oci::Digest;

/// The largest tag list page berth reads into memory.
pub const MAX_TAG_LIST: usize = 16 * 1024 * 1024;
const MAX_MANIFEST: usize = crate::oci::media::MAX_MANIFEST as usize;

/// One repository on one upstream, with the pull scope its requests are authorized for.
pub struct Repo<'a> {
    client: &'a Client,
    up: &'a Upstream,
    name: &'a str,
    scope: String,
}

/// What a manifest HEAD says.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// `Content-Type` as sent.
    pub content_type: Option<String>,
    /// `Docker-Content-Digest` as sent (not checked: there are no bytes to check it by).
    pub digest: Option<String>,
    pub length: Option<u64>,
}

/// A manifest's bytes and what they are.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    /// `Content-Type` as sent; callers pick their own default.
    pub content_type: Option<String>,
    /// `Docker-Content-Digest` as sent.
    pub claimed: Option<String>,
    /// The sha256 of `bytes`: the digest berth knows it by.
    pub digest: Digest,
}

/// A blob answer (200 or 206) whose body is still to be read.
pub struct Blob {
    pub partial: bool,
    pub length: Option<u64>,
    pub content_range: Option<String>,
    /// Guarded by the upstream's timeout as its longest stall.
    pub body: Stall<Incoming>,
}

/// One page of a tag list.
#[derive(Debug, Clone)]
pub struct TagPage {
    /// The upstream's JSON as sent (`{"name": …, "tags": […]}`).
    pub bytes: Bytes,
    /// The query of the `Link: <…?last=x&n=2>; rel="next"` header, when there is a next page.
    pub next: Option<String>,
}

impl Client {
    /// The typed operations on `name` (a repository on `up`), with its pull scope.
    pub fn repo<'a>(&'a self, up: &'a Upstream, name: &'a str) -> Repo<'a> {
        Repo {
            client: self,
            up,
            name,
            scope: crate::oci::scope::pull(name),
        }
    }
}

impl Repo<'_> {
    fn request(&self, method: Method, path: String) -> Request {
        Request::new(method, path, self.scope.clone())
    }

    async fn send(&self, req: &Request) -> Result<http::Response<Incoming>, UpstreamError> {
        self.client.fetch(self.up, req).await
    }

    fn manifest_request(
        &self,
        method: Method,
        reference: &str,
        accept: &str,
    ) -> Result<Request, UpstreamError> {
        let mut req = self.request(method, format!("/v2/{}/manifests/{reference}", self.name));
        let accept = HeaderValue::try_from(accept)
            .map_err(|_| UpstreamError::Protocol("invalid Accept header".into()))?;
        req.headers.insert(ACCEPT, accept);
        Ok(req)
    }

    /// HEADs a manifest by tag or digest (Docker Hub does not count it against the quota).
    pub async fn manifest_head(
        &self,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestHead, UpstreamError> {
        let req = self.manifest_request(Method::HEAD, reference, accept)?;
        let resp = self.send(&req).await?;
        expect(&resp, &[StatusCode::OK])?;
        let h = resp.headers();
        Ok(ManifestHead {
            content_type: header(h, CONTENT_TYPE),
            digest: header(h, "docker-content-digest"),
            length: header(h, CONTENT_LENGTH).and_then(|l| l.parse().ok()),
        })
    }

    /// GETs a manifest by tag or digest. With `expected` (the digest it was asked by) the
    /// bytes must hash to it; only sha256 can be recomputed, another algorithm is trusted
    /// as served.
    pub async fn manifest(
        &self,
        reference: &str,
        accept: &str,
        expected: Option<&Digest>,
    ) -> Result<Manifest, UpstreamError> {
        let req = self.manifest_request(Method::GET, reference, accept)?;
        let resp = self.send(&req).await?;
        if resp.status() != StatusCode::OK {
            return Err(refusal(self.up, resp).await);
        }
        let content_type = header(resp.headers(), CONTENT_TYPE);
        let claimed = header(resp.headers(), "docker-content-digest");
        let what = format!("manifest {}:{reference}", self.name);
        let bytes = read(self.up, resp.into_body(), MAX_MANIFEST, &what).await?;
        let digest = Digest::sha256_of(&bytes);
        if let Some(want) = expected {
            if want.algorithm() == Algorithm::Sha256 && *want != digest {
                return Err(UpstreamError::Mismatch {
                    what,
                    expected: want.to_string(),
                    got: digest.to_string(),
                });
            }
        }
        Ok(Manifest {
            bytes,
            content_type,
            claimed,
            digest,
        })
    }

    /// GETs (or HEADs) a blob, whole or the `range` asked for (a `Range` header value).
    /// 416 is `Status` with the upstream's `Content-Range`.
    pub async fn blob(
        &self,
        digest: &Digest,
        head: bool,
        range: Option<HeaderValue>,
    ) -> Result<Blob, UpstreamError> {
        let method = if head { Method::HEAD } else { Method::GET };
        let mut req = self.request(method, self.blob_path(digest));
        if let Some(r) = range {
            req.headers.insert(RANGE, r);
        }
        let resp = self.send(&req).await?;
        expect(&resp, &[StatusCode::OK, StatusCode::PARTIAL_CONTENT])?;
        Ok(self.blob_answer(resp, &req.path))
    }

    /// The rest of a blob from byte `from`, after a connection broke mid-blob: only a 206
    /// that starts there will do (a 200 would mean starting over).
    pub async fn blob_from(&self, digest: &Digest, from: u64) -> Result<Blob, UpstreamError> {
        let range = HeaderValue::try_from(format!("bytes={from}-"))
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        let mut req = self.request(Method::GET, self.blob_path(digest));
        req.headers.insert(RANGE, range);
        let resp = self.send(&req).await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(UpstreamError::Protocol(format!(
                "the upstream answered {} to a range request",
                resp.status()
            )));
        }
        let starts_right = header(resp.headers(), CONTENT_RANGE)
            .is_some_and(|c| c.starts_with(&format!("bytes {from}-")));
        if !starts_right {
            return Err(UpstreamError::Protocol(
                "the upstream's Content-Range does not start where asked".into(),
            ));
        }
        Ok(self.blob_answer(resp, &req.path))
    }

    fn blob_path(&self, digest: &Digest) -> String {
        format!("/v2/{}/blobs/{digest}", self.name)
    }

    fn blob_answer(&self, resp: http::Response<Incoming>, path: &str) -> Blob {
        let h = resp.headers();
        Blob {
            partial: resp.status() == StatusCode::PARTIAL_CONTENT,
            length: header(h, CONTENT_LENGTH).and_then(|l| l.parse().ok()),
            content_range: header(h, CONTENT_RANGE),
            body: Stall::new(resp.into_body(), self.up.timeout, &self.up.name, path),
        }
    }

    /// One page of the tag list (`n`, `last` as the client gave them).
    pub async fn tags(&self, n: Option<u32>, last: Option<&str>) -> Result<TagPage, UpstreamError> {
        // Built in a block: the serializer is not Send and must not live across an await.
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
        let mut req = self.request(Method::GET, format!("/v2/{}/tags/list", self.name));
        req.query = (!q.is_empty()).then_some(q);
        let resp = self.send(&req).await?;
        expect(&resp, &[StatusCode::OK])?;
        let next = header(resp.headers(), LINK).and_then(|l| next_link_query(&l));
        let what = format!("tag list of {}", self.name);
        let bytes = read(self.up, resp.into_body(), MAX_TAG_LIST, &what).await?;
        Ok(TagPage { bytes, next })
    }

    /// The referrers index of `digest` (filtered by `artifact_type` when given), or `None`
    /// when the upstream does not support the API (404, 405, 400).
    pub async fn referrers(
        &self,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Bytes>, UpstreamError> {
        let mut req = self.request(Method::GET, format!("/v2/{}/referrers/{digest}", self.name));
        req.query = artifact_type.map(|a| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", a)
                .finish()
        });
        let resp = self.send(&req).await?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST => {
                return Ok(None)
            }
            _ => expect(&resp, &[StatusCode::OK])?,
        }
        let what = format!("referrers index of {}@{digest}", self.name);
        read(self.up, resp.into_body(), MAX_MANIFEST, &what)
            .await
            .map(Some)
    }
}

/// `Status` unless the answer is one of `wanted`.
pub(crate) fn expect(
    resp: &http::Response<Incoming>,
    wanted: &[StatusCode],
) -> Result<(), UpstreamError> {
    if wanted.contains(&resp.status()) {
        return Ok(());
    }
    Err(UpstreamError::Status {
        status: resp.status(),
        retry_after: header(resp.headers(), RETRY_AFTER),
        content_range: header(resp.headers(), CONTENT_RANGE),
        message: None,
    })
}

/// The longest upstream error message passed on; the body read for it is bounded too.
const MAX_MESSAGE: usize = 300;

/// `Status` for an answer that is not the one wanted, with the message of its OCI error
/// body (`{"errors":[{"message":…}]}`, read up to 16 KiB) so the client learns why, e.g.
/// distribution's "OCI manifest found, but accept header does not support OCI manifests".
/// The message is the upstream's own text about the request; berth's credentials are
/// never in it (they go in a header the upstream does not echo).
pub(crate) async fn refusal(up: &Upstream, resp: http::Response<Incoming>) -> UpstreamError {
    let mut e = match expect(&resp, &[]) {
        Err(e) => e,
        Ok(()) => unreachable!("no status is wanted"),
    };
    let body = read(up, resp.into_body(), 16 * 1024, "error body").await;
    if let (UpstreamError::Status { message, .. }, Ok(bytes)) = (&mut e, body) {
        *message = oci_error_message(&bytes);
    }
    e
}

fn oci_error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let m = v["errors"][0]["message"].as_str()?.trim();
    let m: String = m
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE)
        .collect();
    (!m.is_empty()).then_some(m)
}

/// Collects an upstream body of at most `limit` bytes through the stall guard.
pub async fn read(
    up: &Upstream,
    body: Incoming,
    limit: usize,
    what: &str,
) -> Result<Bytes, UpstreamError> {
    let guarded = Stall::new(body, up.timeout, &up.name, what);
    match Limited::new(guarded, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(body_error(up, &*e, what, Some(limit))),
    }
}

/// The kind of a failed body read: a stall, an oversized body, or a broken connection.
pub fn body_error(
    up: &Upstream,
    e: &(dyn std::error::Error + 'static),
    what: &str,
    limit: Option<usize>,
) -> UpstreamError {
    if e.is::<UpstreamStalled>() {
        return UpstreamError::Stalled(up.timeout);
    }
    match limit {
        Some(limit) if e.is::<http_body_util::LengthLimitError>() => UpstreamError::TooLarge {
            what: what.to_string(),
            limit,
        },
        _ => UpstreamError::Body {
            what: what.to_string(),
            reason: error_chain(e),
        },
    }
}

fn header(h: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Extracts the query of a `Link: <...?last=x&n=2>; rel="next"` header.
pub fn next_link_query(link: &str) -> Option<String> {
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
    fn retryable_by_kind() {
        let status = |s: u16| UpstreamError::Status {
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: None,
            content_range: None,
            message: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!status(403).is_retryable());
        assert!(UpstreamError::Connect("refused".into()).is_retryable());
        assert!(UpstreamError::Timeout(std::time::Duration::from_secs(1)).is_retryable());
        assert!(UpstreamError::Stalled(std::time::Duration::from_secs(1)).is_retryable());
        assert!(!UpstreamError::Unauthorized.is_retryable());
        assert!(UpstreamError::TokenStatus(StatusCode::BAD_GATEWAY).is_retryable());
        assert!(!UpstreamError::TokenStatus(StatusCode::NOT_FOUND).is_retryable());
        assert!(!UpstreamError::Mismatch {
            what: "m".into(),
            expected: "a".into(),
            got: "b".into()
        }
        .is_retryable());
        // The message says nothing about the decision: a 404 whose text mentions a 5xx
        // is still a 404.
        assert!(!UpstreamError::Protocol("answered 503".into()).is_retryable());
    }

    #[test]
    fn link_pagination_keeps_only_n_and_last() {
        assert_eq!(
            next_link_query("</v2/acme/api/tags/list?last=b&n=2>; rel=\"next\"").unwrap(),
            "last=b&n=2"
        );
        assert_eq!(
            next_link_query("</v2/a/tags/list?last=b&secret=x>; rel=\"next\"").unwrap(),
            "last=b"
        );
        assert_eq!(next_link_query("<x>; rel=\"prev\""), None);
    }
}
