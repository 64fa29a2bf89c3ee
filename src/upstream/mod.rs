//! The upstream client: sends berth's requests to a vendor registry with the stored
//! credentials (anonymous, Basic, or the Bearer challenge → token flow), caches tokens per
//! (upstream, scope), retries once on a 401, and follows redirects without leaking
//! `Authorization` to another origin. Only the upstream's own origin may teach berth how to
//! authenticate: a 401 or 403 from a redirect target fails that request and is never a new
//! place to send credentials. Credentials never appear in errors or logs.
//! How each upstream kind logs in (static, GCP, ECR) is a credential source in
//! `credentials`; the token-realm exchange is `token`. The distribution protocol's typed
//! operations on top of this transport are `distribution` (pull side: manifests, blobs,
//! tags, referrers) and `push` (uploads, mounts, manifest PUT).

pub mod challenge;
pub mod credentials;
pub mod distribution;
mod metrics;
pub mod probe;
pub mod push;
pub mod sigv4;
mod stall;
mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, LOCATION, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::Error;
use crate::settings::Secret;
use crate::tenancy::{Upstream, UpstreamAuth};
use credentials::{ecr, CredentialSource};

pub use metrics::UpstreamMetrics;
pub use stall::{Stall, UpstreamStalled};
pub use token::Token;

/// Redirect hops followed for one request (registries use one, CDNs sometimes two).
const MAX_REDIRECTS: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const USER_AGENT_VALUE: &str = concat!("berth/", env!("CARGO_PKG_VERSION"));

type HttpClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One request to an upstream registry, relative to its base URL.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: Method,
    /// Path starting with `/v2/`, appended to the base URL; or a `Location` the upstream
    /// gave (an upload URL), resolved against the base URL, possibly on another origin
    /// (which then gets no credentials, like a redirect target).
    pub path: String,
    pub query: Option<String>,
    /// Headers forwarded as they are (`Accept`, `Range`, `Content-Type`).
    pub headers: HeaderMap,
    /// Token scope, e.g. `repository:acme/api:pull`; several are separated by spaces
    /// (a cross-repository mount asks for push here and pull there in one token).
    pub scope: String,
    /// Sent with the request (push uploads); empty for pulls.
    pub body: Bytes,
    /// Return a redirect to the caller instead of following it: a push reads the
    /// registry's answers (upload `Location`s) itself and never resends a body elsewhere.
    pub redirects_to_caller: bool,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>, scope: impl Into<String>) -> Request {
        Request {
            method,
            path: path.into(),
            scope: scope.into(),
            ..Request::default()
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A TLS handshake met a peer that answered in plain HTTP (rustls saw no TLS record):
    /// the URL says `https://` where the port speaks HTTP. Retrying cannot help.
    #[error(
        "this looks like plain HTTP: use --insecure (airgap push) or an http:// URL (upstream url)"
    )]
    PlainHttp,
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("the upstream rejected berth's credentials")]
    Unauthorized,
    #[error("token service: {0}")]
    Token(String),
    /// Obtaining berth's cloud identity failed at a named step (STS, a metadata server, a
    /// token exchange).
    #[error("cloud identity: {0}")]
    Identity(String),
    /// The token realm answered with an error status (a 5xx or 429 may pass on a retry).
    #[error("token service: the realm answered {0}")]
    TokenStatus(StatusCode),
    #[error("more than {MAX_REDIRECTS} redirects")]
    Redirects,
    /// A redirect target on another origin (a CDN, a presigned URL) answered 401 or 403.
    /// Its challenge is not the upstream's: berth neither answers it nor learns from it.
    #[error(
        "redirect target {target} refused the request ({status}); berth sends no credentials there"
    )]
    RedirectRefused { target: String, status: StatusCode },
    #[error("{0}")]
    Protocol(String),
    /// The upstream answered, but not with what the operation wants (404, 429, 5xx …).
    /// The headers a caller maps it with travel along, and where read, the message of the
    /// upstream's OCI error body (`errors[0].message`: the registry's own explanation).
    #[error("the upstream answered {status}")]
    Status {
        status: StatusCode,
        retry_after: Option<String>,
        content_range: Option<String>,
        message: Option<String>,
    },
    /// A body went silent for longer than the upstream's timeout (`Stall`).
    #[error("the upstream stalled for {0:?}")]
    Stalled(Duration),
    /// A body (manifest, tag list, index) larger than berth reads into memory.
    #[error("{what} larger than {limit} bytes")]
    TooLarge { what: String, limit: usize },
    /// The connection broke while a body was read.
    #[error("reading the {what} failed: {reason}")]
    Body { what: String, reason: String },
    /// Content that does not hash to the digest it was asked for by.
    #[error("{what}: content is {got}, not {expected}")]
    Mismatch {
        what: String,
        expected: String,
        got: String,
    },
}

impl UpstreamError {
    /// Whether another attempt may succeed: network trouble (cannot connect, no answer,
    /// a stalled or broken body) and the upstream's own "later" answers (5xx, 429). A
    /// refusal, a 404, a protocol violation or wrong content stays wrong on a retry.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Connect(_)
            | UpstreamError::Timeout(_)
            | UpstreamError::Stalled(_)
            | UpstreamError::Body { .. } => true,
            UpstreamError::Status { status, .. } | UpstreamError::TokenStatus(status) => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            UpstreamError::Unauthorized
            | UpstreamError::Token(_)
            | UpstreamError::Identity(_)
            | UpstreamError::PlainHttp
            | UpstreamError::Redirects
            | UpstreamError::RedirectRefused { .. }
            | UpstreamError::Protocol(_)
            | UpstreamError::TooLarge { .. }
            | UpstreamError::Mismatch { .. } => false,
        }
    }

    pub fn into_error(self, upstream: &str) -> Error {
        match self {
            UpstreamError::Timeout(after) => Error::UpstreamTimeout {
                upstream: upstream.to_string(),
                after,
            },
            UpstreamError::Stalled(after) => Error::UpstreamTimeout {
                upstream: upstream.to_string(),
                after,
            },
            UpstreamError::Connect(reason) => Error::UpstreamUnavailable {
                upstream: upstream.to_string(),
                reason: format!("cannot connect: {reason}"),
            },
            UpstreamError::Status { status, .. } if status.is_server_error() => {
                Error::UpstreamUnavailable {
                    upstream: upstream.to_string(),
                    reason: format!("the upstream answered {status}"),
                }
            }
            UpstreamError::Status {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after,
                ..
            } => Error::TooManyRequests { retry_after },
            other => Error::Upstream {
                upstream: upstream.to_string(),
                reason: other.to_string(),
            },
        }
    }
}

/// What one attempt sent, so a 401 can drop exactly the token or login it refused.
#[derive(Default)]
struct Auth {
    header: Option<HeaderValue>,
    token: Option<Arc<Token>>,
    /// The password of a login the source can renew (ECR's), to drop it when refused.
    renewable: Option<Secret>,
}

/// How an upstream wants to be authenticated, learned from its first 401.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

pub struct Client {
    http: HttpClient,
    tokens: token::TokenCache,
    ecr: ecr::EcrTokens,
    aws: credentials::lease::Leases<credentials::aws::AwsCredentials>,
    cloud: credentials::lease::Leases<credentials::cloud::CloudToken>,
    /// Keyed by (upstream name, base URL): a scheme is only ever the answer of that URL's
    /// origin, so a request still in flight across a reload that changed the URL cannot
    /// hand the old origin's realm to the new one.
    schemes: Mutex<HashMap<(String, String), Scheme>>,
    /// Last `ratelimit-remaining` seen per upstream (Docker Hub's pull quota).
    ratelimits: Mutex<HashMap<String, u64>>,
    clock: credentials::lease::Clock,
    metrics: UpstreamMetrics,
}

/// HTTPS (webpki roots, ring) or plain HTTP, HTTP/1.1 and HTTP/2, over `http`: the one
/// connector berth talks to registries with, for pulls and for airgap pushes alike.
pub fn https_connector(
    mut http: HttpConnector,
    connect_timeout: Duration,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .expect("the ring provider supports the default protocol versions")
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client whose metrics are registered nowhere (tools: export, pin, `upstream test`).
    pub fn new() -> Client {
        Client::with_metrics(UpstreamMetrics::default())
    }

    /// A client that counts its requests, latencies, token fetches and quota in `metrics`.
    pub fn with_metrics(metrics: UpstreamMetrics) -> Client {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let https = https_connector(http, CONNECT_TIMEOUT);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        let clock: credentials::lease::Clock = Arc::new(SystemTime::now);
        Client {
            http,
            tokens: token::TokenCache::new(metrics.token_fetches.clone()),
            ecr: ecr::EcrTokens::new(clock.clone()),
            aws: credentials::lease::Leases::new(clock.clone()),
            cloud: credentials::lease::Leases::new(clock.clone()),
            schemes: Mutex::new(HashMap::new()),
            ratelimits: Mutex::new(HashMap::new()),
            clock,
            metrics,
        }
    }

    /// The last `ratelimit-remaining` an upstream reported (Docker Hub sends it on
    /// manifest requests), for metrics and `upstream test`.
    pub fn ratelimit_remaining(&self, upstream: &str) -> Option<u64> {
        self.ratelimits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(upstream)
            .copied()
    }

    /// Records Docker Hub's quota headers and says so in the log when few pulls are left.
    fn note_ratelimit(&self, up: &Upstream, headers: &HeaderMap) {
        let Some(remaining) = ratelimit_value(headers, "ratelimit-remaining") else {
            return;
        };
        self.metrics.ratelimit_remaining(&up.name, remaining);
        let limit = ratelimit_value(headers, "ratelimit-limit");
        let previous = self
            .ratelimits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(up.name.clone(), remaining);
        if previous != Some(remaining) && ratelimit_low(remaining, limit) {
            tracing::info!(upstream = %up.name, remaining, limit = ?limit,
                "upstream pull quota is running low");
        }
    }

    /// The ECR registry login for `up`, cached and renewed before it expires.
    pub async fn ecr_login(&self, up: &Upstream) -> Result<ecr::EcrLogin, UpstreamError> {
        let UpstreamAuth::Ecr(settings) = &up.auth else {
            return Err(UpstreamError::Protocol("not an ECR upstream".into()));
        };
        self.context(up).ecr_login(settings).await
    }

    /// The access token (GCP) or ACR refresh token (Azure) of an upstream with a cloud
    /// identity, held and renewed like every login, for `upstream test` to say where it
    /// came from. `None` for other kinds.
    pub async fn cloud_token(
        &self,
        up: &Upstream,
    ) -> Option<Result<credentials::cloud::CloudToken, UpstreamError>> {
        let login = credentials::cloud::TokenLogin::of(&up.auth)?;
        Some(login.token(&self.context(up)).await)
    }

    /// The AWS credentials an ECR upstream signs with (held and renewed like its login),
    /// for `upstream test` to say where they came from.
    pub async fn aws_credentials(
        &self,
        up: &Upstream,
    ) -> Result<credentials::aws::AwsCredentials, UpstreamError> {
        let UpstreamAuth::Ecr(settings) = &up.auth else {
            return Err(UpstreamError::Protocol("not an ECR upstream".into()));
        };
        self.context(up).aws_credentials(settings).await
    }

    /// Forgets learned schemes and cached tokens, e.g. after credentials changed on reload.
    pub fn forget_credentials(&self) {
        self.schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.tokens.clear();
        self.ecr.clear();
        self.aws.clear();
        self.cloud.clear();
    }

    /// Sends `req`, authenticating as the upstream asks. Any status other than 401 is
    /// returned to the caller to interpret; a 401 that survives one re-authentication
    /// becomes `UpstreamError::Unauthorized`.
    pub async fn fetch(
        &self,
        up: &Upstream,
        req: &Request,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let source = credentials::for_upstream(up);
        let mut retried = false;
        loop {
            let scheme = self.scheme_for(up, &*source);
            let auth = self
                .authorization(up, &*source, scheme.as_ref(), &req.scope)
                .await?;
            let started = std::time::Instant::now();
            let sent = self.send_following(up, req, auth.header.as_ref()).await;
            let status = match &sent {
                Ok(r) => r.resp.status().as_u16().to_string(),
                Err(UpstreamError::Timeout(_)) => "timeout".to_string(),
                Err(UpstreamError::RedirectRefused { .. }) => "redirect_refused".to_string(),
                Err(_) => "error".to_string(),
            };
            self.metrics.observe(&up.name, &status, started.elapsed());
            let answer = sent?;
            if answer.resp.status() != StatusCode::UNAUTHORIZED {
                // A CDN's headers say nothing about the registry's pull quota.
                if answer.own_origin {
                    self.note_ratelimit(up, answer.resp.headers());
                }
                return Ok(answer.resp);
            }
            if retried {
                return Err(UpstreamError::Unauthorized);
            }
            retried = true;
            let learned = answer.challenge();
            drop(answer);
            match (&learned, &scheme) {
                (None, _) => return Err(UpstreamError::Unauthorized),
                // Basic was already sent and refused: the credentials are wrong, unless
                // the source can log in afresh (an ECR token revoked or expired early).
                (Some(Scheme::Basic), Some(Scheme::Basic)) => {
                    if source
                        .refused(&self.context(up), auth.renewable.as_ref())
                        .await
                    {
                        continue;
                    }
                    return Err(UpstreamError::Unauthorized);
                }
                (Some(Scheme::Basic), _) if source.is_anonymous() => {
                    return Err(UpstreamError::Unauthorized)
                }
                _ => {}
            }
            if let Some(s) = learned {
                self.learn(up, s)?;
            }
            // Only the token this request was refused with goes: a 401 to an anonymous
            // first contact, or to a token another request has already replaced, must not
            // drop a good one (a burst of first pulls would otherwise fetch one each).
            if let Some(used) = &auth.token {
                self.tokens.invalidate_if(&up.name, &req.scope, used).await;
            }
        }
    }

    /// Asks the upstream's `/v2/` without credentials and remembers the challenge, so the
    /// first real request goes out authenticated instead of paying for a 401 round trip.
    /// Sends no credentials and fetches no token.
    pub async fn learn_scheme(&self, up: &Upstream) -> Result<(), UpstreamError> {
        if self.scheme(up).is_some() {
            return Ok(());
        }
        let req = Request::new(Method::GET, "/v2/", "");
        let answer = self.send_following(up, &req, None).await?;
        if answer.resp.status() == StatusCode::UNAUTHORIZED {
            if let Some(s) = answer.challenge() {
                self.learn(up, s)?;
            }
        }
        Ok(())
    }

    /// Remembers how `up` authenticates, from a challenge of its own origin. A token realm
    /// is where the stored password goes, so it must pass `check_realm` first.
    fn learn(&self, up: &Upstream, s: Scheme) -> Result<(), UpstreamError> {
        if let Scheme::Bearer { realm, .. } = &s {
            check_realm(&up.base_url, realm)?;
        }
        self.set_scheme(up, s);
        Ok(())
    }

    /// Whether a token or Basic header is ready for this upstream (for `upstream test`).
    pub async fn authenticate(&self, up: &Upstream, scope: &str) -> Result<(), UpstreamError> {
        let req = Request::new(Method::GET, "/v2/", scope);
        let resp = self.fetch(up, &req).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(UpstreamError::Protocol(format!(
                "GET /v2/ answered {}",
                resp.status()
            )))
        }
    }

    fn scheme(&self, up: &Upstream) -> Option<Scheme> {
        self.scheme_for(up, &*credentials::for_upstream(up))
    }

    /// The scheme learned from `up`, else Basic when its source sends Basic up front.
    fn scheme_for(&self, up: &Upstream, source: &dyn CredentialSource) -> Option<Scheme> {
        let learned = self
            .schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(up.name.clone(), up.base_url.clone()))
            .cloned();
        learned.or_else(|| source.basic_up_front().then_some(Scheme::Basic))
    }

    fn context<'a>(&'a self, up: &'a Upstream) -> credentials::Context<'a> {
        credentials::Context {
            upstream: up,
            http: &self.http,
            ecr: &self.ecr,
            aws: &self.aws,
            cloud: &self.cloud,
            now: (self.clock)(),
        }
    }

    fn set_scheme(&self, up: &Upstream, s: Scheme) {
        self.schemes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((up.name.clone(), up.base_url.clone()), s);
    }

    async fn authorization(
        &self,
        up: &Upstream,
        source: &dyn CredentialSource,
        scheme: Option<&Scheme>,
        scope: &str,
    ) -> Result<Auth, UpstreamError> {
        match scheme {
            None => Ok(Auth::default()),
            Some(Scheme::Basic) => Ok(match source.basic(&self.context(up)).await? {
                Some(login) => Auth {
                    header: Some(login.header),
                    renewable: login.renewable,
                    token: None,
                },
                None => Auth::default(),
            }),
            Some(Scheme::Bearer { realm, service }) => {
                let login = source.realm_login(&self.context(up)).await?;
                let token = self
                    .tokens
                    .get(up, &self.http, login, realm, service.as_deref(), scope)
                    .await?;
                let mut v = HeaderValue::try_from(format!("Bearer {}", token.value.expose()))
                    .map_err(|_| {
                        UpstreamError::Token("token is not a valid header value".into())
                    })?;
                v.set_sensitive(true);
                Ok(Auth {
                    header: Some(v),
                    token: Some(token),
                    renewable: None,
                })
            }
        }
    }

    /// Sends `req` to the upstream and follows its redirects, with `auth` on the upstream's
    /// own origin only. A 401 or 403 from another origin is `RedirectRefused`: that origin
    /// is not the upstream, so its refusal is this request's failure, not a challenge.
    async fn send_following(
        &self,
        up: &Upstream,
        req: &Request,
        auth: Option<&HeaderValue>,
    ) -> Result<Answer, UpstreamError> {
        let (mut uri, home) = target(&up.base_url, &req.path, req.query.as_deref())
            .ok_or_else(|| UpstreamError::Protocol("cannot form the upstream URL".into()))?;
        let mut method = req.method.clone();
        let mut body = req.body.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut builder = http::Request::builder()
                .method(method.clone())
                .uri(uri.clone());
            for (k, v) in &req.headers {
                builder = builder.header(k, v);
            }
            builder = builder.header(USER_AGENT, USER_AGENT_VALUE);
            // Credentials go only to the registry's own origin: a CDN or presigned URL must
            // never see them (and S3 rejects a request that carries both).
            let own_origin = Origin::of(&uri) == home;
            if own_origin {
                if let Some(a) = auth {
                    builder = builder.header(AUTHORIZATION, a.clone());
                }
            }
            let request = builder
                .body(Full::new(body.clone()))
                .map_err(|_| UpstreamError::Protocol("cannot form the upstream request".into()))?;
            let resp = send(&self.http, request, up.timeout).await?;
            if !resp.status().is_redirection()
                || resp.status() == StatusCode::NOT_MODIFIED
                || req.redirects_to_caller
            {
                let status = resp.status();
                if !own_origin
                    && (status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN)
                {
                    return Err(UpstreamError::RedirectRefused {
                        target: Origin::of(&uri).authority(),
                        status,
                    });
                }
                return Ok(Answer { resp, own_origin });
            }
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    UpstreamError::Protocol(format!("{} without a Location", resp.status()))
                })?;
            uri = resolve(&uri, location)
                .ok_or_else(|| UpstreamError::Protocol("redirect to an invalid location".into()))?;
            if resp.status() == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
                body = Bytes::new();
            }
            tracing::debug!(upstream = %up.name, to = %Origin::of(&uri).authority(), "following redirect");
        }
        Err(UpstreamError::Redirects)
    }
}

/// Where a request goes and the upstream's own origin (its base URL's, the one that gets
/// credentials). A `/v2/` path is appended to the base URL (which may carry a prefix); any
/// other target is a `Location` the upstream gave, resolved, not concatenated: `base` +
/// `.evil.example/x` must not become another host.
fn target(base_url: &str, path: &str, query: Option<&str>) -> Option<(Uri, Origin)> {
    let base: Uri = base_url.parse().ok()?;
    let home = Origin::of(&base);
    let uri = if path.starts_with("/v2/") || path == "/v2" {
        match query {
            Some(q) => format!("{base_url}{path}?{q}"),
            None => format!("{base_url}{path}"),
        }
        .parse()
        .ok()?
    } else {
        let location = match query {
            Some(q) if path.contains('?') => format!("{path}&{q}"),
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let root: Uri = format!("{base_url}/").parse().ok()?;
        resolve(&root, &location)?
    };
    Some((uri, home))
}

/// A final (non-redirect) response and whether the upstream's own origin gave it.
struct Answer {
    resp: http::Response<Incoming>,
    own_origin: bool,
}

impl Answer {
    /// The scheme a 401 asks for, when the upstream's own origin sent it; a challenge from
    /// anywhere else teaches nothing (`send_following` already refuses those, this keeps
    /// the rule where the learning happens).
    fn challenge(&self) -> Option<Scheme> {
        learnable(self.own_origin, self.resp.status(), self.resp.headers())
    }
}

fn learnable(own_origin: bool, status: StatusCode, headers: &HeaderMap) -> Option<Scheme> {
    if !own_origin || status != StatusCode::UNAUTHORIZED {
        return None;
    }
    pick_scheme(headers)
}

/// Sends one request with a bound on the time to the response head.
pub(crate) async fn send(
    http: &HttpClient,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<http::Response<Incoming>, UpstreamError> {
    match tokio::time::timeout(timeout, http.request(request)).await {
        Err(_) => Err(UpstreamError::Timeout(timeout)),
        Ok(Err(e)) if speaks_plain_http(&e) => Err(UpstreamError::PlainHttp),
        Ok(Err(e)) => Err(UpstreamError::Connect(error_chain(&e))),
        Ok(Ok(r)) => Ok(r),
    }
}

/// Whether an error (or one of its causes) is rustls finding no TLS record where the
/// server hello should be: the peer answered in plain HTTP. Decided by the error's kind,
/// never its text. `io::Error::source` skips the error it wraps, so those are opened too.
pub(crate) fn speaks_plain_http(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            if matches!(
                r,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            ) {
                return true;
            }
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if speaks_plain_http(inner) {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

/// Flattens an error and its sources into one line. hyper's errors carry no URLs, so
/// nothing secret can ride along.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

pub(crate) fn basic_header(user: &str, password: &Secret) -> HeaderValue {
    let raw = format!("{user}:{}", password.expose());
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut v = HeaderValue::try_from(format!("Basic {encoded}"))
        .expect("base64 is always a valid header value");
    v.set_sensitive(true);
    v
}

/// Docker Hub's `ratelimit-remaining: 76;w=21600`: the count before the `;`.
fn ratelimit_value(headers: &HeaderMap, name: &str) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    v.split(';').next()?.trim().parse().ok()
}

/// Low means a tenth of the window's quota or less (10 when the limit is unknown).
fn ratelimit_low(remaining: u64, limit: Option<u64>) -> bool {
    remaining <= limit.map_or(10, |l| (l / 10).max(1))
}

/// Prefers Bearer (it scopes access) over Basic when an upstream offers both.
fn pick_scheme(headers: &HeaderMap) -> Option<Scheme> {
    let challenges: Vec<_> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(challenge::parse)
        .collect();
    if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
        if let Some(realm) = b.param("realm") {
            return Some(Scheme::Bearer {
                realm: realm.to_string(),
                service: b.param("service").map(str::to_string),
            });
        }
    }
    challenges
        .iter()
        .any(|c| c.scheme == "basic")
        .then_some(Scheme::Basic)
}

/// A realm is where berth sends the stored password: it must be an absolute URL with a
/// host, and only a plain-HTTP registry may name a plain-HTTP realm (an HTTPS one would
/// otherwise downgrade the password to cleartext). Callers check that the challenge came
/// from the registry's own origin; this checks where it points. Shared with airgap push.
pub(crate) fn check_realm(base_url: &str, realm: &str) -> Result<(), UpstreamError> {
    let refuse = |why: &str| UpstreamError::Token(format!("{why}; refusing to send credentials"));
    let uri: Uri = realm
        .parse()
        .map_err(|_| refuse("the challenge's realm is not a URL"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(refuse("the challenge's realm has no host"));
    }
    let base_scheme = base_url
        .parse::<Uri>()
        .ok()
        .and_then(|b| b.scheme_str().map(str::to_ascii_lowercase));
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => Ok(()),
        Some("http") if base_scheme.as_deref() == Some("http") => Ok(()),
        Some("http") => Err(refuse(
            "the challenge's realm is plain http for an https registry",
        )),
        _ => Err(refuse("the challenge's realm is not an http(s) URL")),
    }
}

/// Scheme, host and port: what credentials are bound to. Two URLs share an origin only
/// when all three match (default ports filled in, names compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    pub(crate) fn of(uri: &Uri) -> Origin {
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let host = uri.host().unwrap_or("").to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Origin { scheme, host, port }
    }

    /// `host:port`, for messages: never the path or query, where a presigned URL keeps
    /// its signature.
    pub(crate) fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Resolves a `Location` against the URL that answered with it.
pub(crate) fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let scheme = base.scheme_str()?;
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().ok();
    }
    let authority = base.authority()?.as_str();
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}").parse().ok();
    }
    let dir = match base.path().rfind('/') {
        Some(i) => &base.path()[..=i],
        None => "/",
    };
    format!("{scheme}://{authority}{dir}{location}")
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_locations() {
        let base: Uri = "https://r.example:5000/v2/a/blobs/sha256:x"
            .parse()
            .unwrap();
        assert_eq!(
            resolve(&base, "https://cdn.example/b?sig=1")
                .unwrap()
                .to_string(),
            "https://cdn.example/b?sig=1"
        );
        assert_eq!(
            resolve(&base, "/other").unwrap().to_string(),
            "https://r.example:5000/other"
        );
        assert_eq!(
            resolve(&base, "//cdn.example/x").unwrap().to_string(),
            "https://cdn.example/x"
        );
        assert_eq!(
            resolve(&base, "y").unwrap().to_string(),
            "https://r.example:5000/v2/a/blobs/y"
        );
    }

    /// Moved from airgap push (which now sends through `fetch`): upload `Location`s
    /// resolve against the registry, paths are appended to its base URL.
    #[test]
    fn targets_resolve_against_the_registry() {
        let url =
            |p: &str| target("https://reg.example", p, None).map(|(u, home)| (u.to_string(), home));
        let home = Origin::of(&"https://reg.example/".parse().unwrap());
        assert_eq!(
            url("/v2/a/blobs/uploads/"),
            Some((
                "https://reg.example/v2/a/blobs/uploads/".into(),
                home.clone()
            ))
        );
        assert_eq!(
            url("https://up.example/u?x=1").unwrap().0,
            "https://up.example/u?x=1"
        );
        // Relative: a path under the registry, never a longer host name.
        assert_eq!(
            url(".evil.example/x").unwrap().0,
            "https://reg.example/.evil.example/x"
        );
        assert_eq!(url("//cdn.example/u").unwrap().0, "https://cdn.example/u");
        // The home origin is the base URL's, also for a Location elsewhere.
        assert_eq!(url("//cdn.example/u").unwrap().1, home);
        // A base URL's prefix stays in front of /v2/ paths.
        assert_eq!(
            target("https://r.example/mirror", "/v2/a/tags/list", Some("n=1"))
                .unwrap()
                .0
                .to_string(),
            "https://r.example/mirror/v2/a/tags/list?n=1"
        );
    }

    #[test]
    fn origins_compare_scheme_host_port() {
        let a: Uri = "https://r.example/v2/".parse().unwrap();
        let b: Uri = "https://R.example:443/x".parse().unwrap();
        let c: Uri = "http://r.example/x".parse().unwrap();
        assert_eq!(Origin::of(&a), Origin::of(&b));
        assert_ne!(Origin::of(&a), Origin::of(&c));
        assert_eq!(Origin::of(&b).authority(), "r.example:443");
    }

    #[test]
    fn prefers_bearer() {
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"x\""),
        );
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"https://auth/token\",service=\"reg\""),
        );
        assert_eq!(
            pick_scheme(&h),
            Some(Scheme::Bearer {
                realm: "https://auth/token".into(),
                service: Some("reg".into())
            })
        );
    }

    #[test]
    fn realm_must_not_downgrade() {
        assert!(check_realm("https://quay.io", "http://evil/token").is_err());
        assert!(check_realm("https://quay.io", "HTTP://evil/token").is_err());
        assert!(check_realm("HTTPS://quay.io", "http://evil/token").is_err());
        assert!(check_realm("https://quay.io", "https://quay.io/v2/auth").is_ok());
        assert!(check_realm("https://quay.io", "https://auth.quay.io/token").is_ok());
        assert!(check_realm("http://127.0.0.1:5000", "http://127.0.0.1:9/token").is_ok());
        assert!(check_realm("http://127.0.0.1:5000", "https://auth.example/token").is_ok());
        assert!(check_realm("https://quay.io", "file:///etc/passwd").is_err());
        assert!(check_realm("http://127.0.0.1:5000", "ftp://127.0.0.1/token").is_err());
        assert!(check_realm("https://quay.io", "/token").is_err());
    }

    /// A challenge teaches a scheme only from the upstream's own origin, and only on a 401.
    #[test]
    fn only_an_own_origin_401_teaches() {
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"https://evil.example/token\""),
        );
        let bearer = Some(Scheme::Bearer {
            realm: "https://evil.example/token".into(),
            service: None,
        });
        assert_eq!(learnable(true, StatusCode::UNAUTHORIZED, &h), bearer);
        assert_eq!(learnable(false, StatusCode::UNAUTHORIZED, &h), None);
        assert_eq!(learnable(true, StatusCode::FORBIDDEN, &h), None);
    }

    fn upstream(url: &str) -> Arc<Upstream> {
        upstream_of(&format!("url: \"{url}\", username: u, password: p"))
    }

    /// A realm learned from one URL's origin is not used for the same upstream name once
    /// its URL is another (a reload that raced a request still in flight).
    #[test]
    fn learned_schemes_belong_to_the_url_that_taught_them() {
        let client = Client::new();
        let old = upstream("https://old.example");
        let new = upstream("https://new.example");
        client
            .learn(
                &old,
                Scheme::Bearer {
                    realm: "https://auth.old.example/token".into(),
                    service: None,
                },
            )
            .unwrap();
        assert!(client.scheme(&old).is_some());
        assert_eq!(client.scheme(&new), None);
        // And a realm that may not have the password is never remembered.
        let refused = Scheme::Bearer {
            realm: "http://auth.new.example/token".into(),
            service: None,
        };
        assert!(client.learn(&new, refused).is_err());
        assert_eq!(client.scheme(&new), None);
    }

    #[test]
    fn ratelimit_headers() {
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", HeaderValue::from_static("100;w=21600"));
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from_static("76;w=21600"),
        );
        assert_eq!(ratelimit_value(&h, "ratelimit-remaining"), Some(76));
        assert_eq!(ratelimit_value(&h, "ratelimit-limit"), Some(100));
        assert_eq!(ratelimit_value(&h, "ratelimit-reset"), None);
        assert!(!ratelimit_low(76, Some(100)));
        assert!(ratelimit_low(10, Some(100)));
        assert!(ratelimit_low(3, None));
        assert!(!ratelimit_low(11, None));
        assert!(ratelimit_low(0, Some(5)));

        let client = Client::new();
        let up = upstream_of("kind: public, url: \"https://r.example\"");
        assert_eq!(client.ratelimit_remaining("up"), None);
        client.note_ratelimit(&up, &h);
        assert_eq!(client.ratelimit_remaining("up"), Some(76));
    }

    fn upstream_of(entry: &str) -> Arc<Upstream> {
        crate::config::Config::parse(
            &format!("server: {{listen: \"127.0.0.1:1\", hostname: h}}\ncache: {{dir: d}}\nupstreams: [{{name: up, {entry}}}]\n"),
            std::path::Path::new("/"),
            &|_| None,
        )
        .unwrap()
        .tenants
        .upstreams()[0]
            .clone()
    }

    async fn login_of(
        client: &Client,
        up: &Upstream,
    ) -> (Option<String>, Option<String>, bool, bool) {
        let source = credentials::for_upstream(up);
        let cx = client.context(up);
        let login = source.basic(&cx).await.unwrap();
        (
            login.map(|l| l.header.to_str().unwrap().to_string()),
            source
                .realm_authorization()
                .map(|h| h.to_str().unwrap().to_string()),
            source.basic_up_front(),
            source.is_anonymous(),
        )
    }

    /// Each kind's credential source: what Basic and a token realm get, and whether Basic
    /// goes out before any challenge.
    #[tokio::test]
    async fn each_kind_logs_in_its_own_way() {
        let client = Client::new();
        let u_p = Some("Basic dTpw".to_string());
        let up = upstream_of("url: \"https://r.example\", username: u, password: p");
        assert_eq!(
            login_of(&client, &up).await,
            (u_p.clone(), u_p, false, false)
        );
        let key = "{\"type\":\"service_account\"}";
        let up = upstream_of(&format!("kind: gcr, service_account_key: '{key}'"));
        let json_key = Some(
            basic_header("_json_key", &Secret::new(key))
                .to_str()
                .unwrap()
                .to_string(),
        );
        assert_eq!(
            login_of(&client, &up).await,
            (json_key.clone(), json_key, false, false)
        );
        let up = upstream_of("kind: public, url: \"https://r.example\"");
        assert_eq!(login_of(&client, &up).await, (None, None, false, true));
        let up = upstream_of("kind: ecr, region: eu-west-1, registry_id: '123456789012', access_key_id: A, secret_access_key: S");
        let source = credentials::for_upstream(&up);
        assert!(source.basic_up_front() && source.realm_authorization().is_none());
        assert_eq!(client.scheme(&up), Some(Scheme::Basic));
    }

    #[test]
    fn basic_header_is_sensitive() {
        let v = basic_header("u", &Secret::new("p"));
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "Basic dTpw");
    }
}
