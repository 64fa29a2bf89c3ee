//! Amazon ECR: the registry password is an authorization token from the ECR API's
//! `GetAuthorizationToken` (SigV4-signed), valid 12 hours. berth keeps one per upstream,
//! fetches it once for all concurrent requests, and renews it well before it expires.
//! As a credential source it sends Basic from the first request (ECR never answers with a
//! token realm) and, when the registry refuses a login, fetches a new one once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use super::{BasicLogin, BoxFuture, Context, CredentialSource};
use crate::settings::Secret;
use crate::tenancy::EcrSettings;
use crate::upstream::{basic_header, send, sigv4, HttpClient, UpstreamError, USER_AGENT_VALUE};

pub const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
pub const CONTENT_TYPE_JSON: &str = "application/x-amz-json-1.1";
const MAX_RESPONSE: usize = 256 * 1024;
/// Renew this long before expiry (ECR tokens live 12 h), or after half the lifetime for
/// a token issued with less.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 60);

/// The time source; tests substitute one they control.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// A registry login derived from an ECR authorization token.
#[derive(Debug, Clone)]
pub struct EcrLogin {
    pub username: String,
    pub password: Secret,
    pub expires_at: SystemTime,
}

struct Cached {
    login: EcrLogin,
    renew_at: SystemTime,
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Per-upstream ECR logins. Each upstream has a slot behind an async mutex: the first
/// caller that finds it empty or due fetches while holding it, and everyone queued
/// behind reads what it stored (single flight without a second cache layer).
pub(in crate::upstream) struct EcrTokens {
    slots: Mutex<HashMap<String, Slot>>,
    clock: Clock,
}

impl EcrTokens {
    pub(in crate::upstream) fn new(clock: Clock) -> Self {
        EcrTokens {
            slots: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn slot(&self, upstream: &str) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(upstream.to_string())
            .or_default()
            .clone()
    }

    /// Drops every cached login (credentials may have changed on reload).
    pub(in crate::upstream) fn clear(&self) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Drops one upstream's login after the registry refused it, unless another request
    /// has already replaced it.
    pub(in crate::upstream) async fn invalidate_if(&self, upstream: &str, used: &Secret) {
        let slot = self.slot(upstream);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|c| &c.login.password == used) {
            *guard = None;
        }
    }

    pub(in crate::upstream) async fn get<F, Fut>(
        &self,
        upstream: &str,
        fetch: F,
    ) -> Result<EcrLogin, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<EcrLogin, UpstreamError>>,
    {
        let slot = self.slot(upstream);
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            if (self.clock)() < c.renew_at {
                return Ok(c.login.clone());
            }
        }
        let login = fetch().await?;
        let now = (self.clock)();
        *guard = Some(Cached {
            renew_at: renew_at(now, login.expires_at),
            login: login.clone(),
        });
        Ok(login)
    }
}

/// `kind: ecr`: Basic with the login `GetAuthorizationToken` gives.
pub(super) struct Ecr<'a>(pub(super) &'a EcrSettings);

impl CredentialSource for Ecr<'_> {
    fn basic<'a>(
        &'a self,
        cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<BasicLogin>, UpstreamError>> {
        Box::pin(async move {
            let up = cx.upstream;
            let login = cx
                .ecr
                .get(&up.name, || fetch(cx.http, self.0, up.timeout, cx.now))
                .await?;
            Ok(Some(BasicLogin {
                header: basic_header(&login.username, &login.password),
                renewable: Some(login.password),
            }))
        })
    }

    // ECR always wants Basic: sending it up front saves an anonymous round trip.
    fn basic_up_front(&self) -> bool {
        true
    }

    // A token may have been revoked or expired early: drop the one refused (unless another
    // request already replaced it) and try again with a fresh one.
    fn refused<'a>(&'a self, cx: &'a Context<'a>, used: Option<&'a Secret>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if let Some(used) = used {
                cx.ecr.invalidate_if(&cx.upstream.name, used).await;
            }
            true
        })
    }
}

/// When to fetch a new token: 30 min before expiry, or halfway for short-lived tokens.
fn renew_at(now: SystemTime, expires_at: SystemTime) -> SystemTime {
    let life = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
    expires_at - RENEW_BEFORE.min(life / 2)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    authorization_data: Vec<AuthorizationData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationData {
    authorization_token: String,
    /// Epoch seconds (JSON 1.1 timestamps are numbers).
    expires_at: Option<f64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "__type")]
    kind: Option<String>,
}

/// The JSON body berth sends.
pub fn request_body(settings: &EcrSettings) -> String {
    match &settings.registry_id {
        Some(id) => serde_json::json!({ "registryIds": [id] }).to_string(),
        None => "{}".to_string(),
    }
}

/// Calls `GetAuthorizationToken` and decodes the first authorization (`AWS:<password>`).
pub(in crate::upstream) async fn fetch(
    http: &HttpClient,
    settings: &EcrSettings,
    timeout: Duration,
    now: SystemTime,
) -> Result<EcrLogin, UpstreamError> {
    let uri: Uri = format!("{}/", settings.endpoint)
        .parse()
        .map_err(|_| UpstreamError::Token("ecr_endpoint is not a valid URL".into()))?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let body = request_body(settings);
    let amz_date = sigv4::amz_date(now);
    let signed = [
        ("content-type", CONTENT_TYPE_JSON),
        ("host", host.as_str()),
        ("x-amz-date", amz_date.as_str()),
        ("x-amz-target", TARGET),
    ];
    let authorization = sigv4::authorization(
        &settings.access_key_id,
        &settings.secret_access_key,
        &sigv4::SignInput {
            method: "POST",
            path: "/",
            query: "",
            headers: &signed,
            body: body.as_bytes(),
            region: &settings.region,
            service: "ecr",
            amz_date: &amz_date,
        },
    );
    let mut auth_value = http::HeaderValue::try_from(authorization)
        .map_err(|_| UpstreamError::Token("access_key_id is not a valid header value".into()))?;
    auth_value.set_sensitive(true);
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(HOST, host.as_str())
        .header(CONTENT_TYPE, CONTENT_TYPE_JSON)
        .header("x-amz-date", amz_date.as_str())
        .header("x-amz-target", TARGET)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(http::header::AUTHORIZATION, auth_value)
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| UpstreamError::Token("cannot form the ECR request".into()))?;
    let resp = send(http, req, timeout).await.map_err(|e| match e {
        UpstreamError::Connect(reason) => UpstreamError::Connect(format!(
            "ECR API {host} (region {}): {reason}",
            settings.region
        )),
        other => other,
    })?;
    let status = resp.status();
    let body = crate::upstream::Stall::new(
        resp.into_body(),
        timeout,
        &host,
        "ECR GetAuthorizationToken",
    );
    let body = Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|_| UpstreamError::Token("reading the ECR response failed".into()))?
        .to_bytes();
    if !status.is_success() {
        // Only AWS's error type is repeated: it names the problem and carries no secret.
        let kind = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .and_then(|e| e.kind)
            .map(|k| k.rsplit('#').next().unwrap_or(&k).to_string())
            .filter(|k| k.bytes().all(|b| b.is_ascii_alphanumeric()))
            .unwrap_or_else(|| "no error type".into());
        let err = match kind.as_str() {
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "AccessDeniedException"
            | "ExpiredTokenException" => UpstreamError::Unauthorized,
            _ => UpstreamError::Token(format!(
                "ECR GetAuthorizationToken answered {status} ({kind})"
            )),
        };
        tracing::warn!(region = %settings.region, %status, aws_error = %kind,
            "ECR GetAuthorizationToken failed");
        return Err(err);
    }
    let parsed: Response = serde_json::from_slice(&body)
        .map_err(|_| UpstreamError::Token("the ECR response is not the expected JSON".into()))?;
    let data = parsed
        .authorization_data
        .into_iter()
        .next()
        .ok_or_else(|| UpstreamError::Token("the ECR response has no authorizationData".into()))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data.authorization_token.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| UpstreamError::Token("the ECR authorization token is not base64".into()))?;
    let (username, password) = decoded.split_once(':').ok_or_else(|| {
        UpstreamError::Token("the ECR authorization token is not user:password".into())
    })?;
    let expires_at = data
        .expires_at
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| UNIX_EPOCH + Duration::from_secs_f64(s))
        // ECR documents 12 hours; assume it when the field is missing.
        .unwrap_or(now + Duration::from_secs(12 * 3600));
    Ok(EcrLogin {
        username: username.to_string(),
        password: Secret::new(password),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    fn login(expires_at: SystemTime, n: usize) -> EcrLogin {
        EcrLogin {
            username: "AWS".into(),
            password: Secret::new(format!("pw{n}")),
            expires_at,
        }
    }

    #[tokio::test]
    async fn renews_before_expiry_with_a_controlled_clock() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let offset = Arc::new(AtomicU64::new(0));
        let o = offset.clone();
        let clock: Clock = Arc::new(move || t0 + Duration::from_secs(o.load(Ordering::SeqCst)));
        let tokens = EcrTokens::new(clock);
        let fetches = AtomicUsize::new(0);
        let get = || async {
            tokens
                .get("ecr", || async {
                    let n = fetches.fetch_add(1, Ordering::SeqCst);
                    let now = t0 + Duration::from_secs(offset.load(Ordering::SeqCst));
                    Ok(login(now + Duration::from_secs(12 * 3600), n))
                })
                .await
                .unwrap()
        };
        assert_eq!(get().await.password.expose(), "pw0");
        // 11 h later: still more than 30 min left, so the cached token serves.
        offset.store(11 * 3600, Ordering::SeqCst);
        assert_eq!(get().await.password.expose(), "pw0");
        // 11 h 31 min: inside the renewal window, one new fetch.
        offset.store(11 * 3600 + 31 * 60, Ordering::SeqCst);
        assert_eq!(get().await.password.expose(), "pw1");
        assert_eq!(get().await.password.expose(), "pw1");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // A refused token is dropped; a reload clears everything.
        tokens.invalidate_if("ecr", &Secret::new("pw0")).await;
        assert_eq!(
            get().await.password.expose(),
            "pw1",
            "a stale login is no reason"
        );
        tokens.invalidate_if("ecr", &Secret::new("pw1")).await;
        assert_eq!(get().await.password.expose(), "pw2");
        tokens.clear();
        assert_eq!(get().await.password.expose(), "pw3");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch() {
        let tokens = Arc::new(EcrTokens::new(Arc::new(SystemTime::now)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (tokens, fetches) = (tokens.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                tokens
                    .get("ecr", || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(login(SystemTime::now() + Duration::from_secs(43_200), 0))
                    })
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn renewal_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let exp = now + Duration::from_secs(12 * 3600);
        assert_eq!(renew_at(now, exp), exp - Duration::from_secs(1800));
        let short = now + Duration::from_secs(600);
        assert_eq!(renew_at(now, short), now + Duration::from_secs(300));
        assert_eq!(
            renew_at(now, now - Duration::from_secs(5)),
            now - Duration::from_secs(5)
        );
    }
}
