//! The hosted registry's routes (`/v2/<app>/<repository>/…`, `/v2/_catalog`): checks what
//! the caller may do (pull, push, delete) on that repository, reads the request's
//! parameters and delegates to `hosted::Hosted`. Bodies are read only after that check, and streamed: a blob goes to
//! staging chunk by chunk, never whole into memory.

use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::body::Served;
use super::{catalog_query, fetched_response, tag_query, Api, Client};
use crate::auth::Principal;
use crate::body::{self, Body, BoxError};
use crate::config::{Action, Config};
use crate::content::RepoKey;
use crate::error::Error;
use crate::hosted::{range_header, Visible, Writer};
use crate::oci::repo::HostedPath;
use crate::oci::Digest;
use crate::registry::ByteRange;
use crate::tenancy::HostedPolicy;

use super::route::Route;

pub(super) async fn handle<B>(
    api: &Api,
    config: &Config,
    req: Request<B>,
    route: Route,
    principal: &Principal,
    client: Client,
    served: &mut Option<Served>,
) -> Result<Response<Body>, Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Send,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    let hosted = &api.hosted;
    let method = req.method().clone();
    let head = method == Method::HEAD;
    let subject = principal.subject.id().to_string();
    let pull = method == Method::GET || head;
    let delete = method == Method::DELETE;
    match route {
        Route::Catalog => {
            if !pull {
                return Err(Error::Unsupported("the catalog takes GET".into()));
            }
            let (n, last) = catalog_query(req.uri().query())?;
            let apps = principal.subject.hosted_apps();
            // By the subject, not a token's scopes: a catalog token carries none for
            // repositories.
            let allows = |app: &str, repo: &str| principal.subject.may_list(app, repo);
            let visible = Visible {
                apps,
                allows: &allows,
            };
            Ok(fetched_response(
                hosted.catalog(&visible, n, last.as_deref()).await?,
            ))
        }
        Route::HostedReferrers { repo, digest } => {
            if !pull {
                return Err(Error::Unsupported("referrers take GET or HEAD".into()));
            }
            let (key, _) = check(config, principal, &repo, &method)?;
            let query = query(req.uri().query());
            let artifact_type = query
                .iter()
                .find(|(k, _)| k == "artifactType")
                .map(|(_, v)| v.as_str());
            let mut r = fetched_response(hosted.referrers(&key, &digest, artifact_type).await?);
            if artifact_type.is_some() {
                set(&mut r, "oci-filters-applied", "artifactType");
            }
            if head {
                *r.body_mut() = body::empty();
            }
            Ok(r)
        }
        Route::HostedManifest { repo, reference } => {
            if !pull && method != Method::PUT && !delete {
                return Err(Error::Unsupported(
                    "manifests take GET, HEAD, PUT or DELETE".into(),
                ));
            }
            let (key, policy) = check(config, principal, &repo, &method)?;
            if delete {
                hosted.delete_manifest(&key, &reference, policy).await?;
                return Ok(empty(StatusCode::ACCEPTED));
            }
            if method == Method::PUT {
                let content_type = req
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let limit = crate::oci::media::MAX_MANIFEST as usize;
                if http_body::Body::size_hint(req.body()).lower() > limit as u64 {
                    return Err(Error::ManifestInvalid(format!(
                        "manifests are limited to {limit} bytes"
                    )));
                }
                let bytes = http_body_util::Limited::new(req.into_body(), limit)
                    .collect()
                    .await
                    .map_err(|_| Error::ManifestInvalid("too large or unreadable".into()))?
                    .to_bytes();
                let pushed = hosted
                    .put_manifest(&key, &reference, content_type.as_deref(), bytes, policy)
                    .await?;
                let mut r = created(&format!("/v2/{}/manifests/{}", repo.name(), pushed.digest));
                set(&mut r, "docker-content-digest", pushed.digest.as_str());
                if let Some(s) = pushed.subject {
                    set(&mut r, "oci-subject", s.as_str());
                }
                return Ok(r);
            }
            let f = hosted.manifest(&key, &reference, head).await?;
            let image = Served::hosted(&config.server.hostname, &repo);
            let user_agent = req
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // Pulls of hosted images count like proxied ones (usage, metrics).
            let f = api
                .record_manifest(
                    &principal.subject,
                    &image,
                    &reference,
                    f,
                    client,
                    user_agent,
                )
                .await?;
            if !head {
                api.metrics.pull(&repo.app);
            }
            *served = Some(image);
            Ok(fetched_response(f))
        }
        Route::HostedBlob { repo, digest } => {
            if !pull && !delete {
                return Err(Error::Unsupported("blobs take GET, HEAD or DELETE".into()));
            }
            let (key, _) = check(config, principal, &repo, &method)?;
            if delete {
                hosted.delete_blob(&key, &digest).await?;
                return Ok(empty(StatusCode::ACCEPTED));
            }
            *served = Some(Served::hosted(&config.server.hostname, &repo));
            let range = match req.headers().get(RANGE) {
                None => None,
                Some(v) => {
                    Some(ByteRange::parse(v.to_str().map_err(|_| {
                        Error::RangeInvalid("Range is not ASCII".into())
                    })?)?)
                }
            };
            let mut r = fetched_response(hosted.blob(&key, &digest, range, head).await?);
            r.headers_mut().insert(
                http::header::ACCEPT_RANGES,
                HeaderValue::from_static("bytes"),
            );
            Ok(r)
        }
        Route::HostedTags { repo } => {
            if !pull {
                return Err(Error::Unsupported("tag lists take GET or HEAD".into()));
            }
            let (key, _) = check(config, principal, &repo, &method)?;
            let (n, last) = tag_query(req.uri().query())?;
            Ok(fetched_response(
                hosted.tags(&key, &repo.name(), n, last.as_deref()).await?,
            ))
        }
        Route::UploadStart { repo } => {
            if method != Method::POST {
                return Err(Error::Unsupported("use POST to begin an upload".into()));
            }
            let (key, policy) = check(config, principal, &repo, &method)?;
            let query = query(req.uri().query());
            let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
            if let (Some(mount), Some(from)) = (get("mount"), get("from")) {
                let digest: Digest = mount
                    .parse()
                    .map_err(|_| Error::DigestInvalid(format!("{mount:?}")))?;
                // Within the app only, and only from what the caller may read; anything
                // else falls back to an upload, as the spec says.
                if let Ok(from) = HostedPath::parse(from) {
                    if from.app == repo.app
                        && principal.may_hosted(&from, Action::Pull).is_ok()
                        && hosted
                            .mount(&key, &RepoKey::hosted(&from.app, &from.repository), &digest)
                            .await?
                    {
                        return Ok(blob_created(&repo, &digest));
                    }
                }
            }
            let state = hosted.begin(&key, &subject, policy).await?;
            if let Some(d) = get("digest") {
                let digest = digest_param(d)?;
                let w = hosted.writer(&key, &state.id, &subject, None).await?;
                if let Err(e) = stream(&w, req.into_body()).await {
                    let _ = hosted.cancel(&key, &state.id, &subject);
                    return Err(e);
                }
                hosted.finish(w, &state.id, &digest, policy).await?;
                return Ok(blob_created(&repo, &digest));
            }
            Ok(accepted(&repo, &state.id, state.offset))
        }
        Route::Upload { repo, id } => {
            // Every method on an upload is part of a push (its status too).
            let (key, policy) = check(config, principal, &repo, &Method::POST)?;
            match method {
                Method::GET => {
                    let state = hosted.status(&key, &id, &subject)?;
                    let mut r = accepted(&repo, &id, state.offset);
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    Ok(r)
                }
                Method::DELETE => {
                    hosted.cancel(&key, &id, &subject)?;
                    let mut r = empty(StatusCode::NO_CONTENT);
                    set(&mut r, "docker-upload-uuid", &id);
                    Ok(r)
                }
                Method::PATCH => {
                    let start = content_range_start(req.headers())?;
                    let w = hosted.writer(&key, &id, &subject, start).await?;
                    stream(&w, req.into_body()).await?;
                    Ok(accepted(&repo, &id, w.offset()))
                }
                Method::PUT => {
                    let query = query(req.uri().query());
                    let d = query
                        .iter()
                        .find(|(k, _)| k == "digest")
                        .map(|(_, v)| v.as_str())
                        .ok_or_else(|| {
                            Error::DigestInvalid("PUT needs ?digest= to finish an upload".into())
                        })?;
                    let digest = digest_param(d)?;
                    let start = content_range_start(req.headers())?;
                    let w = hosted.writer(&key, &id, &subject, start).await?;
                    if let Err(e) = stream(&w, req.into_body()).await {
                        let _ = hosted.cancel(&key, &id, &subject);
                        return Err(e);
                    }
                    hosted.finish(w, &id, &digest, policy).await?;
                    Ok(blob_created(&repo, &digest))
                }
                _ => Err(Error::Unsupported(
                    "uploads take PATCH, PUT, GET or DELETE".into(),
                )),
            }
        }
        _ => Err(Error::Internal("not a hosted route".into())),
    }
}

/// The app exists and the caller may do what `method` means on the repository: pull for
/// GET and HEAD, delete for DELETE, push for everything else (uploads pass POST: all of
/// it is pushing). Gives the repository's key and the app's hosted policy.
fn check<'c>(
    config: &'c Config,
    principal: &Principal,
    repo: &HostedPath,
    method: &Method,
) -> Result<(RepoKey, &'c HostedPolicy), Error> {
    let app = config
        .app(&repo.app)
        .ok_or_else(|| Error::NameUnknown(format!("unknown app {:?}", repo.app)))?;
    principal.may_hosted(repo, action(method))?;
    Ok((RepoKey::hosted(&repo.app, &repo.repository), &app.hosted))
}

fn action(method: &Method) -> Action {
    match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    }
}

/// The scope a client must ask for on a hosted path, for the challenge.
pub(super) fn scope(method: &Method) -> &'static str {
    match action(method) {
        Action::Pull => "pull",
        Action::Delete => "delete",
        Action::Push => "pull,push",
    }
}

/// Feeds a request body to an upload frame by frame.
async fn stream<B>(w: &Writer, body: B) -> Result<(), Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Send,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Error::BlobUploadInvalid(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            w.append(data).await?;
        }
    }
    Ok(())
}

/// The first offset of a chunk's `Content-Range` (`<start>-<end>`, also `bytes
/// <start>-<end>/<total>`), when it has one.
fn content_range_start(h: &http::HeaderMap) -> Result<Option<u64>, Error> {
    let Some(v) = h.get(CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || Error::RangeInvalid("Content-Range is not <start>-<end>".into());
    let v = v.to_str().map_err(|_| bad())?.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next().unwrap_or("");
    let (start, end) = v.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some(start))
}

fn digest_param(d: &str) -> Result<Digest, Error> {
    d.parse()
        .map_err(|_| Error::DigestInvalid(format!("{d:?} is not a valid digest")))
}

fn query(q: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn set(r: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::try_from(value) {
        r.headers_mut().insert(name, v);
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn created(location: &str) -> Response<Body> {
    let mut r = empty(StatusCode::CREATED);
    set(&mut r, LOCATION.as_str(), location);
    r
}

fn blob_created(repo: &HostedPath, digest: &Digest) -> Response<Body> {
    let mut r = created(&format!("/v2/{}/blobs/{digest}", repo.name()));
    set(&mut r, "docker-content-digest", digest.as_str());
    r
}

/// 202 for an upload in progress: where to send the next bytes and what it holds.
fn accepted(repo: &HostedPath, id: &str, offset: u64) -> Response<Body> {
    let mut r = empty(StatusCode::ACCEPTED);
    set(
        &mut r,
        LOCATION.as_str(),
        &format!("/v2/{}/blobs/uploads/{id}", repo.name()),
    );
    set(&mut r, RANGE.as_str(), &range_header(offset));
    set(&mut r, "docker-upload-uuid", id);
    r
}
