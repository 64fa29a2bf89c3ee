//! The customer-facing registry API: parses each request into a route, authenticates the
//! license, checks the entitlement, delegates to the registry service and writes the
//! response (or the OCI error) with one access-log line per request; tells the usage
//! recorder of every manifest answered and every body served.

pub mod body;
pub mod client;
pub mod error;
mod hosted;
pub mod metrics;
pub mod route;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{
    ACCEPT, ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LINK, RANGE,
    USER_AGENT, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::audit::{AuditLog, PullRecord};
use crate::auth;
use crate::auth::ratelimit::{Limiter, LoginThrottle};
use crate::auth::token::Issuer;
use crate::body::{Body, BoxError};
use crate::config::{Config, Live};
use crate::control::usage::{ManifestRequest, Recorder};
use crate::error::Error;
use crate::oci::repo::{MirrorPath, Reference, RepoPath};
use crate::registry::{ByteRange, Fetched, Registry, Target};
use body::{LogLine, Logged, Served, Who};
use client::Client;
use route::Route;

pub struct Api {
    pub config: Arc<Live>,
    pub registry: Registry,
    /// The hosted registry: what vendors push, served from storage.
    pub hosted: Arc<crate::hosted::Hosted>,
    /// The admin edge's probe handle: answers probes here when there is no admin listener.
    pub probes: Arc<crate::admin::Probes>,
    pub metrics: Arc<metrics::ApiMetrics>,
    pub tokens: Issuer,
    /// The state store's licenses and keys, refreshed in the background.
    pub directory: Arc<crate::state::Directory>,
    /// Pulls, bytes served and key use, written to the state store in the background.
    pub usage: Arc<Recorder>,
    limiter: Limiter,
    logins: LoginThrottle,
    audit: Option<AuditLog>,
}

/// Why the API could not be built at startup.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Cache(#[from] crate::cache::OpenError),
    #[error(transparent)]
    Key(#[from] crate::auth::token::KeyError),
    #[error("auth.audit_log: cannot open {path}: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
}

/// Largest `POST /token` form accepted.
const MAX_FORM: usize = 64 * 1024;

impl Api {
    /// Opens the cache, the token key and the audit log and builds the service, registering
    /// each component's metric families into `registry`; call inside the runtime (eviction
    /// runs as a background task).
    pub fn new(
        config: Config,
        directory: Arc<crate::state::Directory>,
        usage: Arc<Recorder>,
        index: Arc<dyn crate::state::hosted::HostedIndex>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Api, BuildError> {
        let api_metrics = Arc::new(metrics::ApiMetrics::register(registry));
        let hosted_metrics = crate::hosted::metrics::HostedMetrics::register(registry);
        let upstream = crate::upstream::Client::with_metrics(
            crate::upstream::UpstreamMetrics::register(registry),
        );
        let cache_metrics = crate::cache::CacheMetrics::register(registry);
        let legacy = crate::cache::legacy_of(&*config.tenants);
        let cache = crate::cache::Cache::open(&config.cache, legacy, cache_metrics)?;
        cache.start_evictor();
        let tokens = Issuer::load_or_create(&config.auth.token_key_file, config.auth.token_ttl)?;
        let audit = match &config.auth.audit_log {
            Some(p) => Some(AuditLog::open(p).map_err(|source| BuildError::Audit {
                path: p.display().to_string(),
                source,
            })?),
            None => None,
        };
        let config = Arc::new(Live::new(config));
        let registry = Registry::new(cache, upstream);
        let hosted = Arc::new(crate::hosted::Hosted::new(
            registry.cache().clone(),
            index,
            config.current().hosted.upload_timeout,
        ));
        hosted.start_sweep();
        hosted_metrics.start(&hosted, config.clone());
        let probes = Arc::new(crate::admin::Probes {
            config: config.clone(),
            blobs: registry.cache().storage.blobs.clone(),
            upstream: registry.upstream_client().clone(),
        });
        Ok(Api {
            config,
            registry,
            hosted,
            probes,
            metrics: api_metrics,
            tokens,
            directory,
            usage,
            limiter: Limiter::default(),
            logins: LoginThrottle::default(),
            audit,
        })
    }

    /// Serves one request; never fails (errors become OCI error responses).
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>, remote: SocketAddr) -> Response<Logged>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send,
        B::Error: Into<BoxError> + std::fmt::Display,
    {
        let start = Instant::now();
        let config = self.config.current();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let client = client::client_of(
            remote,
            req.headers()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
            &config.server.trusted_proxies,
        );
        let mut who = None;
        let mut served = None;
        let result = self
            .dispatch(&config, req, client, &mut who, &mut served)
            .await;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                if e.is_transient() || matches!(e, Error::Upstream { .. } | Error::Internal(_)) {
                    tracing::warn!(path = %path, error = %e, "request failed");
                }
                let mut r = error::response(&e);
                if matches!(e, Error::Unauthorized | Error::LoginRefused(_)) {
                    if let Ok(v) =
                        HeaderValue::try_from(challenge(&config, &method, &path, query.as_deref()))
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
                    who,
                    served,
                    remote: client.to_string(),
                    start,
                },
                self.metrics.clone(),
                self.usage.clone(),
            )
        })
    }

    /// The licenses and keys requests are checked against: `config`'s and the store's.
    pub(crate) fn identities<'a>(&'a self, config: &'a Config) -> auth::Identities<'a> {
        auth::Identities {
            config,
            directory: &self.directory,
        }
    }

    async fn dispatch<B>(
        &self,
        config: &Config,
        req: Request<B>,
        client: Client,
        who: &mut Option<Who>,
        served: &mut Option<Served>,
    ) -> Result<Response<Body>, Error>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send,
        B::Error: Into<BoxError> + std::fmt::Display,
    {
        let path = req.uri().path();
        if path == "/token" {
            return token::handle(self, config, req, client, who).await;
        }
        if config.server.admin_listen.is_none() && (path == "/healthz" || path == "/readyz") {
            // Probes need an answer somewhere; without an admin listener it is here. Not
            // `?upstreams=1`: it sends credentialed requests to every upstream, for anyone.
            let probe = if path == "/healthz" {
                "/healthz"
            } else {
                "/readyz"
            };
            let mut req = req;
            *req.uri_mut() = http::Uri::from_static(probe);
            return Ok(crate::admin::probe(&self.probes, req).await);
        }
        if !path.starts_with("/v2") {
            return Err(Error::NameUnknown("not a registry path".into()));
        }
        let authorization = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let source = auth::Source {
            throttle: &self.logins,
            ip: client.ip,
        };
        let principal = match auth::authenticate(
            self.identities(config),
            &self.tokens,
            authorization,
            source,
            SystemTime::now(),
        ) {
            Ok(p) => p,
            Err(why) => {
                // Throttled attempts are logged once per source by the throttle.
                if !matches!(
                    why,
                    auth::Rejection::Missing | auth::Rejection::Throttled(_)
                ) {
                    tracing::info!(path, reason = why.as_str(), "authentication failed");
                }
                return Err(why.error());
            }
        };
        let subject = &principal.subject;
        *who = Some(Who::of(subject));
        let own_limit = subject.license().and_then(|l| l.rate_limit);
        if let Some(limit) = own_limit.or(config.auth.rate_limit) {
            if let Err(wait) = self.limiter.check(subject.id(), limit, Instant::now()) {
                return Err(Error::TooManyRequests {
                    retry_after: Some(wait.as_secs().max(1).to_string()),
                });
            }
        }
        let pull = matches!(*req.method(), Method::GET | Method::HEAD);
        let route = route::parse_request(pull, path, req.uri().query(), &spaces(config))?;
        // A mirror request is a proxied pull from the caller's app, answered like one.
        let (route, mirrored) = match route {
            Route::Mirror { mirror, op } => {
                let repo = auth::mirror_repo(config, subject, &mirror)?;
                (op.route(repo), Some(mirror))
            }
            r => (r, None),
        };
        let ns = mirrored
            .as_ref()
            .and_then(|_| route::ns_of(req.uri().query()));
        let mut resp = self
            .pull(
                config,
                req,
                route,
                &principal,
                mirrored.as_ref(),
                client,
                served,
            )
            .await?;
        if let Some(ns) = ns.and_then(|n| HeaderValue::try_from(n).ok()) {
            resp.headers_mut().insert("oci-namespace", ns);
        }
        Ok(resp)
    }

    /// Serves a parsed pull-side route (or hands a hosted one on).
    #[allow(clippy::too_many_arguments)]
    async fn pull<B>(
        &self,
        config: &Config,
        req: Request<B>,
        route: Route,
        principal: &auth::Principal,
        mirrored: Option<&MirrorPath>,
        client: Client,
        served: &mut Option<Served>,
    ) -> Result<Response<Body>, Error>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send,
        B::Error: Into<BoxError> + std::fmt::Display,
    {
        let subject = &principal.subject;
        if matches!(
            route,
            Route::HostedManifest { .. }
                | Route::HostedBlob { .. }
                | Route::HostedTags { .. }
                | Route::HostedReferrers { .. }
                | Route::Catalog
                | Route::UploadStart { .. }
                | Route::Upload { .. }
        ) {
            return hosted::handle(self, config, req, route, principal, client, served).await;
        }
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Err(Error::Unsupported("berth is a pull-only proxy".into())),
        };
        match route {
            Route::Base => Ok(json_response(b"{}")),
            Route::NotFound => Err(Error::NameUnknown("no such endpoint".into())),
            Route::Unsupported(why) => Err(Error::Unsupported(why.into())),
            Route::HostedManifest { .. }
            | Route::HostedBlob { .. }
            | Route::HostedTags { .. }
            | Route::HostedReferrers { .. }
            | Route::Catalog
            | Route::UploadStart { .. }
            | Route::Upload { .. }
            | Route::Mirror { .. } => Err(Error::Internal("route resolved before".into())),
            Route::Manifest { repo, reference } => {
                let target = resolve(config, principal, &repo, mirrored)?;
                *served = Some(Served::of(&target));
                let accept = joined_header(req.headers(), ACCEPT);
                let f = self
                    .registry
                    .manifest(&target, &reference, accept.as_deref(), head)
                    .await?;
                let user_agent = req
                    .headers()
                    .get(USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let f = self
                    .record_manifest(
                        subject,
                        &Served::of(&target),
                        &reference,
                        f,
                        client,
                        user_agent,
                    )
                    .await?;
                if !head {
                    self.metrics.pull(&repo.app);
                    if let Some(log) = &self.audit {
                        log.record(&PullRecord {
                            time: PullRecord::now_rfc3339(),
                            fingerprint: subject.id().to_string(),
                            legacy_id: None,
                            customer: subject.name().to_string(),
                            app: repo.app.clone(),
                            image: target.repo.name.clone(),
                            reference: reference.to_string(),
                            digest: f.digest.clone().unwrap_or_default(),
                            client: client.to_string(),
                            user_agent: user_agent.to_string(),
                        });
                    }
                }
                Ok(fetched_response(f))
            }
            Route::Blob { repo, digest } => {
                let target = resolve(config, principal, &repo, mirrored)?;
                *served = Some(Served::of(&target));
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
                let target = resolve(config, principal, &repo, mirrored)?;
                *served = Some(Served::of(&target));
                let (n, last) = tag_query(req.uri().query())?;
                let f = self.registry.tags(&target, n, last.as_deref()).await?;
                Ok(fetched_response(f))
            }
            Route::Referrers { repo, digest } => {
                let target = resolve(config, principal, &repo, mirrored)?;
                *served = Some(Served::of(&target));
                let artifact_type = req.uri().query().and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "artifactType")
                        .map(|(_, v)| v.into_owned())
                });
                let f = self
                    .registry
                    .referrers(&target, &digest, artifact_type.as_deref())
                    .await?;
                let mut r = fetched_response(f);
                if artifact_type.is_some() {
                    // The registry module filtered: say so, as the spec asks.
                    r.headers_mut().insert(
                        "oci-filters-applied",
                        HeaderValue::from_static("artifactType"),
                    );
                }
                Ok(r)
            }
        }
    }

    /// Tells the usage recorder of a manifest answered (GET or HEAD: clients resolve tags
    /// with either). When it asks for an index's children (once per pull), the index is
    /// read from memory (manifests are never streamed) and handed over.
    async fn record_manifest(
        &self,
        subject: &auth::Subject,
        served: &Served,
        reference: &Reference,
        mut f: Fetched,
        client: Client,
        user_agent: &str,
    ) -> Result<Fetched, Error> {
        let (id, image) = (subject.id(), served.image.as_str());
        let ip = client.ip.to_string();
        self.usage.manifest(
            &ManifestRequest {
                subject: id,
                app: &served.app,
                image,
                reference,
                digest: f.digest.as_deref(),
                client: &ip,
                user_agent,
            },
            SystemTime::now(),
        );
        let index = f
            .media_type
            .as_deref()
            .is_some_and(crate::oci::media::is_index_type);
        if let Some(d) = f.digest.as_deref().filter(|_| index) {
            if !http_body::Body::is_end_stream(&f.body) && self.usage.wants_children(id, image, d) {
                let b = http_body_util::BodyExt::collect(f.body)
                    .await
                    .map_err(|e| Error::Internal(format!("reading an index: {e}")))?
                    .to_bytes();
                self.usage.children(id, image, &b);
                f.body = crate::body::full(b);
            }
        }
        Ok(f)
    }
}

/// The `WWW-Authenticate` challenge: the token endpoint, and for repository paths the scope
/// a client must ask for.
fn challenge(config: &Config, method: &Method, path: &str, query: Option<&str>) -> String {
    if path == "/token" {
        return format!("Basic realm=\"{}\"", config.server.hostname);
    }
    let mut c = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        config.auth.realm, config.server.hostname
    );
    let pull = matches!(*method, Method::GET | Method::HEAD);
    let route = route::parse_request(pull, path, query, &spaces(config));
    match &route {
        Ok(
            Route::Manifest { repo, .. }
            | Route::Blob { repo, .. }
            | Route::Tags { repo }
            | Route::Referrers { repo, .. },
        ) => c.push_str(&format!(",scope=\"repository:{}:pull\"", repo.name())),
        // The app is the caller's, unknown before it logs in: the scope names the image as
        // the node does, and the token endpoint finds the app.
        Ok(Route::Mirror { mirror, .. }) => {
            c.push_str(&format!(",scope=\"repository:{}:pull\"", mirror.name()))
        }
        _ => {}
    }
    match route {
        Ok(
            Route::HostedManifest { repo, .. }
            | Route::HostedBlob { repo, .. }
            | Route::HostedReferrers { repo, .. }
            | Route::HostedTags { repo },
        ) => {
            let actions = hosted::scope(method);
            c.push_str(&format!(",scope=\"repository:{}:{actions}\"", repo.name()));
        }
        // Every request of an upload needs push, its status GET included: a client that
        // got a pull-only token for that GET would be refused again.
        Ok(Route::UploadStart { repo } | Route::Upload { repo, .. }) => {
            c.push_str(&format!(",scope=\"repository:{}:pull,push", repo.name()));
            // A mount reads the source repository: the token must say so, or the mount
            // falls back to an upload (what distribution's challenge asks for too).
            let from = form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .find(|(k, _)| k == "from")
                .and_then(|(_, v)| crate::oci::repo::HostedPath::parse(&v).ok());
            if let Some(from) = from.filter(|f| f.name() != repo.name()) {
                c.push_str(&format!(" repository:{}:pull", from.name()));
            }
            c.push('"');
        }
        Ok(Route::Catalog) => c.push_str(",scope=\"registry:catalog:*\""),
        _ => {}
    }
    c
}

/// What a path without `proxy/` may name: the configured apps' hosted content, or a
/// mirrored registry (see [`route::parse_request`]).
fn spaces(config: &Config) -> route::Spaces<'_, impl Fn(&str) -> bool + '_> {
    route::Spaces {
        own_host: &config.server.hostname,
        is_app: |slug: &str| config.app(slug).is_some(),
    }
}

/// Maps a customer path (or the mirror request resolved to it) to its upstream after
/// checking that the license may see it.
fn resolve(
    config: &Config,
    principal: &auth::Principal,
    repo: &RepoPath,
    mirrored: Option<&MirrorPath>,
) -> Result<Target, Error> {
    let app = config
        .app(&repo.app)
        .ok_or_else(|| Error::NameUnknown(format!("unknown app {:?}", repo.app)))?;
    match mirrored {
        Some(m) => principal.may_pull_mirrored(repo, m)?,
        None => principal.may_pull(repo)?,
    }
    let upstream = app
        .select(&repo.host, &repo.repository)
        .ok_or_else(|| Error::NameUnknown(repo.name()))?;
    // Docker Hub's `redis` is `library/redis` upstream.
    let repository = upstream.upstream_repository(&repo.repository).into_owned();
    Ok(Target {
        // Every spelling of the host (Hub's aliases, `host_port`) is the one repository.
        repo: crate::content::RepoKey::proxied(&repo.app, &upstream.host, &repository),
        upstream: upstream.clone(),
        repository,
        // A mirrored repository is named as the node asked for it (links, bodies, errors).
        public_name: mirrored.map_or_else(|| repo.name(), |m| m.repository.clone()),
        // A mirrored repository's next page is a mirror request too.
        link_query: mirrored.map_or_else(String::new, |m| {
            let host: String = form_urlencoded::byte_serialize(m.host.as_bytes()).collect();
            format!("&ns={host}")
        }),
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
    page_query(query, |last| {
        if crate::oci::name::valid_tag(last) {
            Ok(())
        } else {
            Err(Error::TagInvalid(format!("invalid last={last:?}")))
        }
    })
}

/// `n` and `last` of `/v2/_catalog`: `last` is a repository name (`<app>/<repository>`).
fn catalog_query(query: Option<&str>) -> Result<(Option<u32>, Option<String>), Error> {
    page_query(query, |last| {
        if crate::oci::repo::HostedPath::parse(last).is_ok() {
            Ok(())
        } else {
            Err(Error::PaginationInvalid(format!("invalid last={last:?}")))
        }
    })
}

fn page_query(
    query: Option<&str>,
    check_last: impl Fn(&str) -> Result<(), Error>,
) -> Result<(Option<u32>, Option<String>), Error> {
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
                check_last(&v)?;
                last = Some(v.into_owned())
            }
            _ => {}
        }
    }
    Ok((n, last))
}

fn json_response(body: &'static [u8]) -> Response<Body> {
    let mut r = Response::new(crate::body::full(body));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The challenge names the scope the request needs: pull to read, pull,push for any
    /// request of an upload (its status GET too, or a client fetches a pull-only token
    /// for it and is refused again).
    #[test]
    fn challenges_ask_for_the_scope_the_request_needs() {
        let config = Config::parse(
            "server: { listen: \"127.0.0.1:0\", hostname: images.acme.test }\n\
             cache: { dir: /tmp/x }\n\
             upstreams: [ { name: u, url: \"http://127.0.0.1:1\" } ]\n\
             apps: [ { slug: acme, upstreams: [u] } ]\n",
            std::path::Path::new("/"),
            &|_| None,
        )
        .unwrap();
        let scope = |m: Method, p: &str| {
            let (p, q) = p.split_once('?').map_or((p, None), |(p, q)| (p, Some(q)));
            let c = challenge(&config, &m, p, q);
            c.split("scope=\"")
                .nth(1)
                .map(|s| s.trim_end_matches('"').to_string())
        };
        assert_eq!(
            scope(Method::GET, "/v2/acme/app/manifests/1.0").as_deref(),
            Some("repository:acme/app:pull")
        );
        assert_eq!(
            scope(Method::PUT, "/v2/acme/app/manifests/1.0").as_deref(),
            Some("repository:acme/app:pull,push")
        );
        for m in [Method::GET, Method::PATCH, Method::PUT, Method::DELETE] {
            assert_eq!(
                scope(
                    m.clone(),
                    "/v2/acme/app/blobs/uploads/0b5c3c5e-1b7a-4f5e-9c3e-1a2b3c4d5e6f"
                )
                .as_deref(),
                Some("repository:acme/app:pull,push"),
                "{m}"
            );
        }
        assert_eq!(
            scope(Method::POST, "/v2/acme/app/blobs/uploads/").as_deref(),
            Some("repository:acme/app:pull,push")
        );
        assert_eq!(
            scope(
                Method::POST,
                "/v2/acme/app/blobs/uploads/?mount=sha256:00&from=acme/base"
            )
            .as_deref(),
            Some("repository:acme/app:pull,push repository:acme/base:pull")
        );
        assert_eq!(
            scope(Method::DELETE, "/v2/acme/app/manifests/1.0").as_deref(),
            Some("repository:acme/app:delete")
        );
        assert_eq!(
            scope(Method::GET, "/v2/_catalog").as_deref(),
            Some("registry:catalog:*")
        );
        assert_eq!(
            scope(Method::GET, "/v2/proxy/acme/q.io/a/b/manifests/1").as_deref(),
            Some("repository:proxy/acme/q.io/a/b:pull")
        );
    }
}
