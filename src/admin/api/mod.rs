//! The control plane's HTTP API, `/api/v1/…`, served on the admin listener only: the
//! route table (`routes.rs`), admin-token authentication before any body is read, bounded
//! JSON bodies, pages, problem answers (`problem.rs`), and handlers that parse and delegate
//! to `control::Control` (one file per resource). Its contract is the OpenAPI document
//! `openapi.json`, served at `/api/v1/openapi.json`.

mod catalog;
mod gc;
mod keys;
mod licenses;
mod problem;
mod reports;
mod routes;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Digest as _;

use super::Admin;
use crate::body::{full, Body, BoxError};
use crate::config::Config;
use crate::control::{Actor, Control};
use problem::Kind;
pub use problem::Problem;
use routes::Op;

/// The OpenAPI 3.1 document of this API, as served.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Largest request body accepted: requests are small JSON objects.
pub const MAX_BODY: usize = 64 * 1024;

/// The realm of the `WWW-Authenticate` challenge on a 401.
const REALM: &str = "Bearer realm=\"berth-admin\"";

/// Answers one `/api/…` request on the admin listener; never fails (errors are problems).
pub async fn handle<B>(admin: &Admin, req: Request<B>, remote: SocketAddr) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let start = Instant::now();
    let method = req.method().clone();
    let path = loggable(req.uri().path(), &admin.probes.config.current());
    let mut actor = None;
    let resp = match serve(admin, req, remote.ip(), &mut actor).await {
        Ok(reply) => reply.response(),
        Err(p) => problem_response(&p),
    };
    // Paths carry public ids (a secret pasted as one is masked); the query and the body
    // are not logged.
    tracing::info!(
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        actor = actor.as_ref().map(|a: &Actor| a.0.as_str()).unwrap_or("-"),
        remote = %remote,
        ms = start.elapsed().as_millis() as u64,
        "admin request"
    );
    resp
}

/// `path` with any segment that looks like one of berth's secrets, or is the password of one
/// of the config file's licenses, masked: an operator who pastes a secret where an id goes
/// must not find it in the log.
fn loggable(path: &str, config: &Config) -> String {
    let secret = |s: &str| looks_secret(s) || config.tenants.license_by_secret(s).is_some();
    path.split('/')
        .map(|seg| {
            let decoded = routes::percent_decode(seg);
            if secret(seg) || decoded.is_some_and(|d| secret(&d)) {
                "<redacted>"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `s` has the prefix every secret berth hands out has (`berth_lic_`, `berth_key_`,
/// `berth_adm_`).
fn looks_secret(s: &str) -> bool {
    s.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("berth_"))
}

async fn serve<B>(
    admin: &Admin,
    req: Request<B>,
    ip: IpAddr,
    who: &mut Option<Actor>,
) -> Result<Reply, Problem>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let config = admin.probes.config.current();
    // Who is asking comes first: an unauthenticated caller learns nothing, not even
    // which routes exist, and no byte of its body is read.
    let actor = authenticate(admin, &config, req.headers(), ip)?;
    *who = Some(actor.clone());
    let (op, params) =
        routes::find(req.method().as_str(), req.uri().path()).map_err(|m| match m {
            routes::Miss::NotFound => Problem::new(Kind::NotFound, "no such API route"),
            routes::Miss::Method(allowed) => {
                let allow = allowed.join(", ");
                let mut p = Problem::new(
                    Kind::MethodNotAllowed,
                    format!("this route answers {allow}"),
                );
                p.allow = Some(allow);
                p
            }
        })?;
    if params.iter().any(|p| looks_secret(p)) {
        // Not echoed back either: the answer would carry it.
        return Err(Problem::new(
            Kind::NotFound,
            "that is a secret, not an id: ids start with lic_, key_ or adm_",
        ));
    }
    let query = Query::parse(req.uri().query())?;
    let body = read_body(op.body(), &config, req).await?;
    let call = Call {
        admin,
        config,
        actor,
        params,
        query,
        body,
    };
    dispatch(op, &call).await
}

async fn dispatch(op: Op, c: &Call<'_>) -> Result<Reply, Problem> {
    match op {
        Op::ListLicenses => licenses::list(c).await,
        Op::CreateLicense => licenses::create(c).await,
        Op::GetLicense => licenses::get(c).await,
        Op::PatchLicense => licenses::patch(c).await,
        Op::RevokeLicense => licenses::revoke(c).await,
        Op::RotateLicense => licenses::rotate(c).await,
        Op::ListKeys => keys::list(c).await,
        Op::CreateKey => keys::create(c).await,
        Op::GetKey => keys::get(c).await,
        Op::RevokeKey => keys::revoke(c).await,
        Op::ListAdminTokens => keys::list_admin_tokens(c).await,
        Op::CreateAdminToken => keys::create_admin_token(c).await,
        Op::RevokeAdminToken => keys::revoke_admin_token(c).await,
        Op::ListApps => catalog::apps(c).await,
        Op::ListUpstreams => catalog::upstreams(c),
        Op::TestUpstream => catalog::test_upstream(c).await,
        Op::Usage => reports::usage(c).await,
        Op::Audit => reports::audit(c).await,
        Op::Gc => gc::run(c).await,
        Op::OpenApi => {
            c.query.only(&[])?;
            Ok(Reply {
                status: StatusCode::OK,
                body: OPENAPI.as_bytes().to_vec(),
            })
        }
    }
}

// ---- authentication ------------------------------------------------------------------

/// The admin token of `Authorization: Bearer <token>`: one of the config file's
/// (`auth.admin_tokens`, by SHA-256) or a stored one not revoked (the directory, so a
/// revocation anywhere is in force within its refresh). Failed attempts count against the
/// source's failed-login throttle.
fn authenticate(
    admin: &Admin,
    config: &Config,
    headers: &HeaderMap,
    ip: IpAddr,
) -> Result<Actor, Problem> {
    let unauthorized = |detail: &str| Problem::new(Kind::Unauthorized, detail);
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(unauthorized(
            "an admin token is required: Authorization: Bearer <token>",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let found = token.and_then(|t| identify(admin, config, t));
    let at = Instant::now();
    let admitted = admin.logins.admit(
        ip,
        || match (&found, token) {
            (Some((_, id)), _) => id.clone(),
            (None, Some(t)) => crate::config::fingerprint(t),
            (None, None) => String::new(),
        },
        at,
    );
    if let Err(wait) = admitted {
        let mut p = Problem::new(
            Kind::TooManyRequests,
            "too many failed admin logins from this address; try again later",
        );
        p.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        return Err(p);
    }
    match found {
        Some((actor, id)) => {
            admin.logins.succeeded(ip, &id, at);
            Ok(actor)
        }
        None => {
            admin.logins.failed(ip, at);
            tracing::info!(source = %ip, "admin API: unknown or revoked admin token");
            Err(unauthorized("unknown or revoked admin token"))
        }
    }
}

/// The actor a token is (for the audit trail) and its public id (for the throttle's
/// known-good list).
fn identify(admin: &Admin, config: &Config, token: &str) -> Option<(Actor, String)> {
    let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    // Every configured hash is compared, each in constant time, so the time taken says
    // nothing about which (or how much of one) matched.
    let mut matched = None;
    for t in &config.auth.admin_tokens {
        if constant_time_eq(&digest, &t.sha256) && matched.is_none() {
            matched = Some(t);
        }
    }
    if let Some(t) = matched {
        return Some((Actor(t.name.clone()), format!("config:{}", t.name)));
    }
    admin
        .directory
        .admin_by_secret(token)
        .map(|row| (Actor(format!("{} ({})", row.name, row.id)), row.id.clone()))
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

// ---- requests ------------------------------------------------------------------------

/// One authenticated call, as the handlers see it.
pub(super) struct Call<'a> {
    pub admin: &'a Admin,
    pub config: Arc<Config>,
    pub actor: Actor,
    /// The path's `{…}` parameters, in order.
    pub params: Vec<String>,
    pub query: Query,
    /// The body read for the operations that take one (`None`: none was sent).
    pub body: Option<Bytes>,
}

impl Call<'_> {
    pub fn control(&self) -> &Control {
        &self.admin.control
    }

    /// The first path parameter (`{id}`, `{name}`).
    pub fn param(&self) -> &str {
        self.params.first().map(String::as_str).unwrap_or("")
    }

    /// The body as `T`: 400 for malformed JSON, a field of the wrong type or an unknown
    /// field (naming it when the parser says which).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        let Some(bytes) = &self.body else {
            return Err(Problem::bad_request("a JSON body is required"));
        };
        decode(bytes)
    }
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let malformed =
        |e: &serde_json::Error| Problem::bad_request(format!("the body is not valid JSON: {e}"));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            // The path is the parser's, not text read out of its message.
            serde_json::error::Category::Data if path != "." => {
                Problem::bad_request(format!("{path}: {inner}")).with_field(path)
            }
            serde_json::error::Category::Data => {
                Problem::bad_request(format!("the body does not fit: {inner}"))
            }
            _ => malformed(&inner),
        }
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

/// Reads the body an operation takes: JSON only (415 otherwise), at most [`MAX_BODY`]
/// (413, refused before reading when the length is declared), within the server's body
/// timeout. Operations without a body never read one.
async fn read_body<B>(
    wanted: routes::Body,
    config: &Config,
    req: Request<B>,
) -> Result<Option<Bytes>, Problem>
where
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        Problem::new(
            Kind::PayloadTooLarge,
            format!("request bodies are at most {} KiB", MAX_BODY / 1024),
        )
    };
    let hint = http_body::Body::size_hint(req.body());
    if hint.lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    let empty = hint.exact() == Some(0);
    match wanted {
        routes::Body::None => return Ok(None),
        routes::Body::Optional if empty => return Ok(None),
        _ => {}
    }
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Problem::new(
            Kind::UnsupportedMediaType,
            "request bodies are JSON: Content-Type: application/json",
        ));
    }
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    let bytes = match tokio::time::timeout(config.server.body_timeout, read).await {
        Err(_) => {
            return Err(Problem::new(
                Kind::RequestTimeout,
                "the request body did not arrive in time",
            ))
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(_)) => return Err(Problem::bad_request("the request body could not be read")),
        Ok(Ok(c)) => c.to_bytes(),
    };
    Ok((!bytes.is_empty()).then_some(bytes))
}

/// A request's query parameters.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Result<Query, Problem> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (i, (k, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(e, _)| e == k) {
                return Err(Problem::bad_parameter(k, "given more than once"));
            }
        }
        Ok(Query(pairs))
    }

    /// Refuses parameters this operation does not know (a typo would otherwise widen a
    /// listing silently).
    pub fn only(&self, known: &[&str]) -> Result<(), Problem> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some((k, _)) if known.is_empty() => {
                Err(Problem::bad_parameter(k, "this route takes no parameters"))
            }
            Some((k, _)) => Err(Problem::bad_parameter(
                k,
                format!("unknown; this route takes {}", known.join(", ")),
            )),
        }
    }

    /// A parameter's value; an empty one counts as absent.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    }

    /// `limit`: 1 to 500 (default 100).
    pub fn limit(&self) -> Result<Option<usize>, Problem> {
        let Some(v) = self.get("limit") else {
            return Ok(None);
        };
        match v.parse::<usize>() {
            Ok(n) if (1..=crate::control::MAX_PAGE).contains(&n) => Ok(Some(n)),
            _ => Err(Problem::bad_parameter(
                "limit",
                format!(
                    "{v:?} is not a page size from 1 to {}",
                    crate::control::MAX_PAGE
                ),
            )),
        }
    }

    /// `state`: active, expired or revoked.
    pub fn state(&self) -> Result<Option<String>, Problem> {
        match self.get("state") {
            None => Ok(None),
            Some(s) if ["active", "expired", "revoked"].contains(&s.as_str()) => Ok(Some(s)),
            Some(s) => Err(Problem::bad_parameter(
                "state",
                format!("{s:?} is not active, expired or revoked"),
            )),
        }
    }
}

// ---- answers -------------------------------------------------------------------------

/// A JSON answer.
pub(super) struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    fn response(self) -> Response<Body> {
        respond(self.status, "application/json", self.body)
    }
}

pub(super) fn ok<T: Serialize>(v: &T) -> Result<Reply, Problem> {
    reply(StatusCode::OK, v)
}

pub(super) fn created<T: Serialize>(v: &T) -> Result<Reply, Problem> {
    reply(StatusCode::CREATED, v)
}

fn reply<T: Serialize>(status: StatusCode, v: &T) -> Result<Reply, Problem> {
    let body = serde_json::to_vec(v).map_err(|e| {
        tracing::error!(error = %e, "admin API: cannot serialize an answer");
        Problem::new(Kind::Internal, "internal error (see berth's log)")
    })?;
    Ok(Reply { status, body })
}

fn problem_response(p: &Problem) -> Response<Body> {
    let mut r = respond(p.status(), "application/problem+json", p.body());
    let h = r.headers_mut();
    if p.kind == Kind::Unauthorized {
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
    }
    if let Some(v) = p
        .allow
        .as_deref()
        .and_then(|a| HeaderValue::try_from(a).ok())
    {
        h.insert(ALLOW, v);
    }
    if let Some(s) = p.retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    // Create and rotate answers carry secrets: no cache anywhere keeps any answer.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_field_at_fault() {
        let p = decode::<crate::control::NewAdminToken>(br#"{"name":"x","bogus":1}"#).unwrap_err();
        assert_eq!(p.status(), StatusCode::BAD_REQUEST);
        assert_eq!(p.field.as_deref(), Some("bogus"), "{p:?}");
        let p = decode::<crate::control::NewKey>(br#"{"name":"x","apps":"a","actions":[]}"#)
            .unwrap_err();
        assert_eq!(p.field.as_deref(), Some("apps"), "{p:?}");
        let p = decode::<crate::control::NewAdminToken>(b"{\"name\":").unwrap_err();
        assert_eq!(p.status(), StatusCode::BAD_REQUEST);
        assert!(p.detail.contains("not valid JSON"), "{p:?}");
        let p = decode::<crate::control::NewAdminToken>(br#"{"name":"x"} {}"#).unwrap_err();
        assert!(p.detail.contains("not valid JSON"), "{p:?}");
        assert!(decode::<crate::control::NewAdminToken>(br#" {"name":"x"} "#).is_ok());
    }

    #[test]
    fn page_sizes_and_states_are_checked() {
        let q = |s| Query::parse(Some(s)).unwrap();
        assert_eq!(q("limit=500").limit().unwrap(), Some(500));
        assert_eq!(q("limit=").limit().unwrap(), None);
        for bad in ["limit=0", "limit=501", "limit=x", "limit=-1"] {
            let p = q(bad).limit().unwrap_err();
            assert_eq!(p.field.as_deref(), Some("limit"));
        }
        assert!(q("state=gone").state().is_err());
        assert!(q("a=1&b=2").only(&["a"]).is_err());
        assert!(Query::parse(Some("a=1&a=2")).is_err());
    }

    #[test]
    fn secrets_in_paths_are_not_logged() {
        let config = Config::parse(
            "server: { listen: \"127.0.0.1:0\", hostname: h.test }\n\
             cache: { dir: /tmp/x }\n\
             upstreams: [ { name: u, url: \"http://127.0.0.1:1\" } ]\n\
             apps: [ { slug: acme, upstreams: [u] } ]\n\
             licenses: [ { id: \"LICENSE+a/b=\", app: acme, customer: A } ]\n",
            std::path::Path::new("/"),
            &|_| None,
        )
        .unwrap();
        let loggable = |p| loggable(p, &config);
        assert_eq!(
            loggable("/api/v1/licenses/berth_lic_abc/revoke"),
            "/api/v1/licenses/<redacted>/revoke"
        );
        assert_eq!(
            loggable("/api/v1/licenses/berth%5Flic_abc"),
            "/api/v1/licenses/<redacted>"
        );
        assert_eq!(
            loggable("/api/v1/licenses/lic_abc"),
            "/api/v1/licenses/lic_abc"
        );
        // A config license's password has no telling prefix: it is known by being one.
        assert_eq!(
            loggable("/api/v1/licenses/LICENSE%2Ba%2Fb%3D"),
            "/api/v1/licenses/<redacted>"
        );
    }

    #[test]
    fn hashes_compare_whole() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] ^= 1;
        assert!(!constant_time_eq(&a, &b));
    }
}
