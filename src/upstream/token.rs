//! Upstream bearer tokens: fetched from the challenge's realm with the stored credentials,
//! cached per (upstream, scope) until shortly before they expire, one fetch per key at a time.
//! The realm is one the upstream's own origin named (checked by `check_realm`); its
//! redirects are never followed, since the request carries the stored password.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::metrics::UpstreamOnly;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use super::{send, HttpClient, UpstreamError, USER_AGENT_VALUE};
use crate::settings::Secret;
use crate::tenancy::Upstream;

/// Tokens without `expires_in` live 60 s (the Docker token spec's default).
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// A token response is a few KiB; anything far larger is not one.
const MAX_TOKEN_RESPONSE: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct Token {
    pub value: Secret,
    /// How long berth keeps using it: the lifetime less a margin for clock skew and
    /// requests in flight.
    pub ttl: Duration,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    upstream: String,
    scope: String,
}

struct Expiry;

impl moka::Expiry<Key, Arc<Token>> for Expiry {
    fn expire_after_create(&self, _: &Key, t: &Arc<Token>, _: Instant) -> Option<Duration> {
        Some(t.ttl)
    }
}

pub(super) struct TokenCache {
    cache: moka::future::Cache<Key, Arc<Token>>,
    /// `berth_upstream_token_fetches`: one per request to a realm.
    fetches: Family<UpstreamOnly, Counter>,
}

impl TokenCache {
    pub(super) fn new(fetches: Family<UpstreamOnly, Counter>) -> Self {
        TokenCache {
            fetches,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(Expiry)
                .build(),
        }
    }

    pub(super) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Drops the cached token for (upstream, scope) if it is still `used`.
    pub(super) async fn invalidate_if(&self, upstream: &str, scope: &str, used: &Arc<Token>) {
        let key = Key {
            upstream: upstream.to_string(),
            scope: scope.to_string(),
        };
        if self
            .cache
            .get(&key)
            .await
            .is_some_and(|t| Arc::ptr_eq(&t, used))
        {
            self.cache.invalidate(&key).await;
        }
    }

    /// Returns a cached token or fetches one; concurrent callers for the same key share
    /// one fetch (moka's `try_get_with` is single-flight).
    pub(super) async fn get(
        &self,
        up: &Upstream,
        http: &HttpClient,
        login: Option<HeaderValue>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Arc<Token>, UpstreamError> {
        let key = Key {
            upstream: up.name.clone(),
            scope: scope.to_string(),
        };
        self.cache
            .try_get_with(key, async {
                fetch(up, http, login, realm, service, scope, &self.fetches)
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())
    }
}

/// Asks `realm` for a token, with the credential source's realm `login` (Basic) if any.
async fn fetch(
    up: &Upstream,
    http: &HttpClient,
    login: Option<HeaderValue>,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    fetches: &Family<UpstreamOnly, Counter>,
) -> Result<Token, UpstreamError> {
    let query = {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = service {
            q.append_pair("service", s);
        }
        // Several scopes (a push that mounts from another repository) go as several
        // `scope` parameters, as the token spec has it.
        for one in scope.split(' ').filter(|s| !s.is_empty()) {
            q.append_pair("scope", one);
        }
        q.finish()
    };
    let sep = if realm.contains('?') { '&' } else { '?' };
    let uri: Uri = format!("{realm}{sep}{query}")
        .parse()
        .map_err(|_| UpstreamError::Token("the realm is not a valid URL".into()))?;
    let mut req = http::Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(ACCEPT, "application/json");
    if let Some(login) = login {
        req = req.header(AUTHORIZATION, login);
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|_| UpstreamError::Token("cannot form the token request".into()))?;
    fetches
        .get_or_create(&UpstreamOnly {
            upstream: up.name.clone(),
        })
        .inc();
    // One request, no redirects followed (the client follows none by itself): a realm that
    // points elsewhere would take the Basic credentials along to wherever it points.
    let resp = send(http, req, up.timeout).await?;
    match resp.status() {
        StatusCode::OK => {}
        s if s.is_redirection() => {
            return Err(UpstreamError::Token(format!(
                "the realm answered {s}; berth does not follow a token realm's redirects with credentials"
            )))
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            return Err(UpstreamError::Unauthorized)
        }
        s => return Err(UpstreamError::TokenStatus(s)),
    }
    // A realm that goes silent mid-body fails like one that never answers.
    let body = super::Stall::new(resp.into_body(), up.timeout, &up.name, "token response");
    let body = Limited::new(body, MAX_TOKEN_RESPONSE)
        .collect()
        .await
        .map_err(|_| UpstreamError::Token("reading the token response failed".into()))?
        .to_bytes();
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|_| UpstreamError::Token("the token response is not JSON".into()))?;
    let value = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| UpstreamError::Token("the token response has no token".into()))?;
    let lifetime = parsed
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TTL);
    Ok(Token {
        value: Secret::new(value),
        ttl: usable_ttl(lifetime),
    })
}

/// Keeps a token for 90 % of its life, at most until 10 s before expiry, at least 1 s.
fn usable_ttl(lifetime: Duration) -> Duration {
    let by_fraction = lifetime.mul_f64(0.9);
    let by_margin = lifetime.saturating_sub(Duration::from_secs(10));
    by_fraction.min(by_margin).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_margin() {
        assert_eq!(
            usable_ttl(Duration::from_secs(300)),
            Duration::from_secs(270)
        );
        assert_eq!(usable_ttl(Duration::from_secs(60)), Duration::from_secs(50));
        assert_eq!(usable_ttl(Duration::from_secs(5)), Duration::from_secs(1));
    }
}
