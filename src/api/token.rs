//! The token endpoint customers' clients call after a Bearer challenge: `GET /token` with the
//! license as HTTP Basic (docker, podman, skopeo) and `POST /token` with an OAuth2 password
//! grant form (containerd). Tokens carry only entitled pulls. No refresh tokens are issued,
//! so the refresh grant is refused.

use std::time::SystemTime;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};

use super::body::Who;
use super::client::Client;
use super::{Api, MAX_FORM};
use crate::auth;
use crate::body::{self, Body, BoxError};
use crate::config::Config;
use crate::error::Error;
use crate::oci::scope;

pub(super) async fn handle<B>(
    api: &Api,
    config: &Config,
    req: Request<B>,
    client: Client,
    who: &mut Option<Who>,
) -> Result<Response<Body>, Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Send,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    let now = SystemTime::now();
    let (license, scopes) = match *req.method() {
        Method::GET => {
            let query = req.uri().query().unwrap_or("").to_string();
            let basic = req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(s, _)| s.eq_ignore_ascii_case("basic"))
                .and_then(|(_, c)| auth::decode_basic(c));
            let Some((user, password)) = basic else {
                return Err(Error::Unauthorized);
            };
            let _ = user;
            let license = login(api, config, client, &password, now)?;
            let values: Vec<String> = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.into_owned())
                .collect();
            (license, scope::parse_all(values.iter().map(String::as_str)))
        }
        Method::POST => {
            // Refused before a byte is read: the form is the login, so nothing is known
            // about the client yet.
            if http_body::Body::size_hint(req.body()).lower() > MAX_FORM as u64 {
                return Err(Error::BadRequest("token form too large".into()));
            }
            let bytes = Limited::new(req.into_body(), MAX_FORM)
                .collect()
                .await
                .map_err(|_| Error::BadRequest("token form too large or unreadable".into()))?
                .to_bytes();
            let form: Vec<(String, String)> = form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let get = |k: &str| {
                form.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            match get("grant_type") {
                Some("password") => {}
                Some("refresh_token") => {
                    return Err(Error::Unsupported(
                        "berth issues no refresh tokens; use grant_type=password".into(),
                    ))
                }
                _ => return Err(Error::Unsupported("unsupported grant_type".into())),
            }
            let (Some(_user), Some(password)) = (get("username"), get("password")) else {
                return Err(Error::Unauthorized);
            };
            let license = login(api, config, client, password, now)?;
            let values: Vec<&str> = form
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str())
                .collect();
            (license, scope::parse_all(values))
        }
        _ => return Err(Error::Unsupported("use GET or POST".into())),
    };
    *who = Some(Who::of(&license));
    let granted = auth::grant_with_mirrors(config, &license, &scopes);
    let issued = api
        .tokens
        .issue(license.id(), &config.server.hostname, granted);
    let body = serde_json::to_vec(&serde_json::json!({
        "token": issued.token.expose(),
        "access_token": issued.token.expose(),
        "expires_in": issued.expires_in,
        "issued_at": humantime::format_rfc3339_seconds(issued.issued_at).to_string(),
    }))
    .map_err(|e| Error::Internal(e.to_string()))?;
    let mut r = Response::new(body::full(body.clone()));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    // Tokens are credentials: no intermediary may keep one.
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(r)
}

fn login(
    api: &Api,
    config: &Config,
    client: Client,
    password: &str,
    now: SystemTime,
) -> Result<auth::Subject, Error> {
    let source = auth::Source {
        throttle: &api.logins,
        ip: client.ip,
    };
    auth::throttled_login(api.identities(config), source, password, now).map_err(|why| {
        if !matches!(why, auth::Rejection::Throttled(_)) {
            tracing::info!(reason = why.as_str(), "token request refused");
        }
        why.error()
    })
}
