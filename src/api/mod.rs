//! The customer-facing registry API: parses each request into a route, authenticates the
//! license, checks the entitlement, delegates to the registry service and writes the
//! response (or the OCI error) with one access-log line per request.

pub mod body;
pub mod error;
pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{
    ACCEPT, ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, RANGE,
    WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::auth;
use crate::config::{Config, Live};
use crate::error::Error;
use crate::registry::{ByteRange, Fetched, Registry, Target};
use body::{Body, LogLine, Logged};
use route::{RepoPath, Route};

pub struct Api {
    pub config: Live,
    pub registry: Registry,
}

impl Api {
    /// Opens the cache and builds the service; call inside the runtime (eviction runs as a
    /// background task).
    pub fn new(config: Config) -> Result<Api, crate::cache::OpenError> {
        let cache = crate::cache::Cache::open(&config.cache)?;
        cache.start_evictor();
        Ok(Api {
            config: Live::new(config),
            registry: Registry::new(cache),
        })
    }

    /// Serves one request; never fails (errors become OCI error responses).
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
        remote: SocketAddr,
    ) -> Response<Logged> {
        let start = Instant::now();
        let config = self.config.current();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut license_id = None;
        let result = self.dispatch(&config, &req, &mut license_id).await;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                if e.is_transient() || matches!(e, Error::Upstream { .. } | Error::Internal(_)) {
                    tracing::warn!(path = %path, error = %e, "request failed");
                }
                let mut r = error::response(&e);
                if matches!(e, Error::Unauthorized) {
                    if let Ok(v) =
                        HeaderValue::try_from(format!("Basic realm=\"{}\"", config.server.hostname))
                    {
                        r.headers_mut().insert(WWW_AUTHENTICATE, v);
                    }
                }
                r
            }
        };
        resp.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        let status = resp.status().as_u16();
        resp.map(|b| {
            Logged::new(
                b,
                LogLine {
                    method: method.to_string(),
                    path,
                    status,
                    license: license_id,
                    remote: remote.to_string(),
                    start,
                },
            )
        })
    }

    async fn dispatch<B>(
        &self,
        config: &Config,
        req: &Request<B>,
        license_id: &mut Option<String>,
    ) -> Result<Response<Body>, Error> {
        let path = req.uri().path();
        if !path.starts_with("/v2") {
            return Err(Error::NameUnknown("not a registry path".into()));
        }
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let license = match auth::authenticate(config, authorization, SystemTime::now()) {
            Ok(l) => l,
            Err(why) => {
                if why != auth::Rejection::Missing {
                    tracing::info!(path, reason = why.as_str(), "authentication failed");
                }
                return Err(Error::Unauthorized);
            }
        };
        *license_id = Some(license.id.expose().to_string());
        let route = route::parse(path)?;
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Err(Error::Unsupported("berth is a pull-only proxy".into())),
        };
        match route {
            Route::Base => Ok(json_response(b"{}")),
            Route::NotFound => Err(Error::NameUnknown("no such endpoint".into())),
            Route::Unsupported(why) => Err(Error::Unsupported(why.into())),
            Route::Manifest { repo, reference } => {
                let target = resolve(config, license, &repo)?;
                let accept = joined_header(req.headers(), ACCEPT);
                let f = self
                    .registry
                    .manifest(&target, &reference, accept.as_deref(), head)
                    .await?;
                Ok(fetched_response(f))
            }
            Route::Blob { repo, digest } => {
                let target = resolve(config, license, &repo)?;
                let range = match req.headers().get(RANGE) {
                    None => None,
                    Some(v) => {
                        Some(ByteRange::parse(v.to_str().map_err(|_| {
                            Error::RangeInvalid("Range is not ASCII".into())
                        })?)?)
                    }
                };
                let f = self.registry.blob(&target, &digest, range, head).await?;
                let mut r = fetched_response(f);
                r.headers_mut()
                    .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                Ok(r)
            }
            Route::Tags { repo } => {
                let target = resolve(config, license, &repo)?;
                let (n, last) = tag_query(req.uri().query())?;
                let f = self.registry.tags(&target, n, last.as_deref()).await?;
                Ok(fetched_response(f))
            }
            Route::Referrers { repo, digest } => {
                let target = resolve(config, license, &repo)?;
                let artifact_type = req.uri().query().and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "artifactType")
                        .map(|(_, v)| v.into_owned())
                });
                let f = self
                    .registry
                    .referrers(&target, &digest, artifact_type.as_deref())
                    .await?;
                Ok(fetched_response(f))
            }
        }
    }
}

/// Maps a customer path to its upstream after checking that the license may see it.
fn resolve(
    config: &Config,
    license: &crate::config::License,
    repo: &RepoPath,
) -> Result<Target, Error> {
    let app = config
        .app(&repo.app)
        .ok_or_else(|| Error::NameUnknown(format!("unknown app {:?}", repo.app)))?;
    auth::authorize(license, &app.slug)?;
    let upstream = config
        .upstream_for(app, &repo.host, &repo.repository)
        .ok_or_else(|| Error::NameUnknown(repo.name()))?;
    Ok(Target {
        upstream: upstream.clone(),
        // Docker Hub's `redis` is `library/redis` upstream.
        repository: upstream.upstream_repository(&repo.repository).into_owned(),
        public_name: repo.name(),
        tag_ttl: config.cache.tag_ttl,
        offline: config.cache.offline,
    })
}

fn joined_header(h: &http::HeaderMap, name: http::header::HeaderName) -> Option<String> {
    let parts: Vec<&str> = h
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn tag_query(query: Option<&str>) -> Result<(Option<u32>, Option<String>), Error> {
    let mut n = None;
    let mut last = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "n" => {
                n =
                    Some(v.parse::<u32>().map_err(|_| {
                        Error::PaginationInvalid(format!("invalid page size n={v:?}"))
                    })?)
            }
            "last" => {
                if !crate::oci::name::valid_tag(&v) {
                    return Err(Error::TagInvalid(format!("invalid last={v:?}")));
                }
                last = Some(v.into_owned())
            }
            _ => {}
        }
    }
    Ok((n, last))
}

fn json_response(body: &'static [u8]) -> Response<Body> {
    let mut r = Response::new(body::full(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

fn fetched_response(f: Fetched) -> Response<Body> {
    let mut r = Response::new(f.body);
    *r.status_mut() = if f.partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = r.headers_mut();
    let mut set = |name: &'static str, v: Option<String>| {
        if let Some(v) = v.and_then(|v| HeaderValue::try_from(v).ok()) {
            h.insert(name, v);
        }
    };
    set(CONTENT_TYPE.as_str(), f.media_type);
    set("docker-content-digest", f.digest);
    set(CONTENT_LENGTH.as_str(), f.length.map(|l| l.to_string()));
    set(CONTENT_RANGE.as_str(), f.content_range);
    set(LINK.as_str(), f.link);
    r
}
