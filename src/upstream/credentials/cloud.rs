//! Google's and Azure's registries with the platform's own identity, no stored password:
//! GCR/GAR with an OAuth2 access token (from the metadata server — GKE workload identity,
//! GCE — or from a service account key that signs a JWT bearer grant, so the key itself
//! never leaves berth) sent as user `oauth2accesstoken`; ACR with the managed identity's
//! AAD token from IMDS, exchanged at the registry's `/oauth2/exchange` for an ACR refresh
//! token, the password of the null-GUID user. Tokens are held per upstream and renewed
//! before they expire (`lease`); a login the registry refuses is dropped and fetched again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use serde::Deserialize;

use super::lease::Expiring;
use super::{BasicLogin, BoxFuture, Context, CredentialSource};
use crate::settings::Secret;
use crate::tenancy::{AzureIdentity, GcpIdentity, GcpKey, UpstreamAuth};
use crate::upstream::{basic_header, HttpClient, UpstreamError, USER_AGENT_VALUE};

/// The user Google's registries take an access token with.
pub const GCP_TOKEN_USER: &str = "oauth2accesstoken";
/// The user ACR takes a refresh token with.
pub const ACR_TOKEN_USER: &str = "00000000-0000-0000-0000-000000000000";
/// What berth's access tokens are for: pulls from GCR and Artifact Registry.
const GCP_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform.read-only";
/// The resource an AAD token for ACR's exchange is issued for.
const AZURE_RESOURCE: &str = "https://management.azure.com/";
const FORM: &str = "application/x-www-form-urlencoded";

/// A bearer credential for a registry login, with its expiry.
#[derive(Clone)]
pub struct CloudToken {
    pub value: Secret,
    pub expires_at: SystemTime,
    /// Where it came from, for `upstream test` (never a secret).
    pub source: String,
}

impl Expiring for CloudToken {
    fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

fn step(what: &str, reason: String) -> UpstreamError {
    UpstreamError::Identity(format!("{what}: {reason}"))
}

/// `kind: gcr|gar` with `gcp_credentials: metadata | access_token`, and `kind: acr` with
/// `azure_credentials: managed_identity`: a token from the platform, sent as the password
/// of the registry's token user, to the registry and its token realm alike.
pub(in crate::upstream) enum TokenLogin<'a> {
    Gcp(&'a GcpIdentity),
    Azure(&'a AzureIdentity),
}

impl TokenLogin<'_> {
    /// The token source of an upstream with a cloud identity; `None` for other kinds.
    pub(in crate::upstream) fn of(auth: &UpstreamAuth) -> Option<TokenLogin<'_>> {
        match auth {
            UpstreamAuth::GcpToken(id) => Some(TokenLogin::Gcp(id)),
            UpstreamAuth::AzureManagedIdentity(id) => Some(TokenLogin::Azure(id)),
            _ => None,
        }
    }

    /// The upstream's token, held until shortly before it expires.
    pub(in crate::upstream) async fn token(
        &self,
        cx: &Context<'_>,
    ) -> Result<CloudToken, UpstreamError> {
        cx.cloud.get(&cx.upstream.name, || self.fetch(cx)).await
    }

    fn user(&self) -> &'static str {
        match self {
            TokenLogin::Gcp(_) => GCP_TOKEN_USER,
            TokenLogin::Azure(_) => ACR_TOKEN_USER,
        }
    }

    async fn fetch(&self, cx: &Context<'_>) -> Result<CloudToken, UpstreamError> {
        let up = cx.upstream;
        match self {
            TokenLogin::Gcp(id) => gcp_token(cx.http, id, up.timeout, cx.now).await,
            TokenLogin::Azure(id) => {
                acr_refresh_token(cx.http, id, &up.base_url, up.timeout, cx.now).await
            }
        }
    }
}

impl CredentialSource for TokenLogin<'_> {
    fn basic<'a>(
        &'a self,
        cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<BasicLogin>, UpstreamError>> {
        Box::pin(async move {
            let t = self.token(cx).await?;
            Ok(Some(BasicLogin {
                header: basic_header(self.user(), &t.value),
                renewable: Some(t.value),
            }))
        })
    }

    fn realm_login<'a>(
        &'a self,
        cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<HeaderValue>, UpstreamError>> {
        Box::pin(async move { Ok(self.basic(cx).await?.map(|l| l.header)) })
    }

    /// A refused login: drop exactly that token (unless another request replaced it), so
    /// the next attempt fetches a new one.
    fn refused<'a>(&'a self, cx: &'a Context<'a>, used: Option<&'a Secret>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if let Some(used) = used {
                cx.cloud
                    .invalidate_if(&cx.upstream.name, |t| &t.value == used)
                    .await;
            }
            true
        })
    }
}

/// The access token of a Google identity.
pub(in crate::upstream) async fn gcp_token(
    http: &HttpClient,
    id: &GcpIdentity,
    timeout: Duration,
    now: SystemTime,
) -> Result<CloudToken, UpstreamError> {
    match id {
        GcpIdentity::Metadata { endpoint } => {
            const WHAT: &str = "GCP metadata server token";
            let uri =
                format!("{endpoint}/computeMetadata/v1/instance/service-accounts/default/token");
            let req = Request::builder()
                .method(Method::GET)
                .uri(&uri)
                .header("metadata-flavor", "Google")
                .header(ACCEPT, "application/json")
                .header(USER_AGENT, USER_AGENT_VALUE)
                .body(Full::new(Bytes::new()))
                .map_err(|_| step(WHAT, format!("{uri} is not a valid URL")))?;
            let t = access_token(call(http, req, timeout, WHAT).await?, WHAT, now)?;
            Ok(CloudToken {
                source: format!("GCP metadata server at {endpoint} (default service account)"),
                ..t
            })
        }
        GcpIdentity::KeyExchange(key) => {
            const WHAT: &str = "GCP token endpoint (JWT bearer grant)";
            let assertion = jwt(key, now).map_err(|e| step(WHAT, e))?;
            let body = form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
                .append_pair("assertion", &assertion)
                .finish();
            let req = Request::builder()
                .method(Method::POST)
                .uri(&key.token_uri)
                .header(CONTENT_TYPE, FORM)
                .header(ACCEPT, "application/json")
                .header(USER_AGENT, USER_AGENT_VALUE)
                .body(Full::new(Bytes::from(body)))
                .map_err(|_| step(WHAT, "token_uri is not a valid URL".into()))?;
            let t = access_token(call(http, req, timeout, WHAT).await?, WHAT, now)?;
            Ok(CloudToken {
                source: format!(
                    "service account {} exchanged at {}",
                    key.client_email, key.token_uri
                ),
                ..t
            })
        }
    }
}

/// The signed JWT of Google's service-account flow (RS256 over header.claims).
fn jwt(key: &GcpKey, now: SystemTime) -> Result<String, String> {
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_string())?
        .as_secs();
    let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
    if let Some(kid) = &key.private_key_id {
        header["kid"] = serde_json::Value::String(kid.clone());
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": GCP_SCOPE,
        "aud": key.token_uri,
        "iat": iat,
        "exp": iat + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let der = STANDARD
        .decode(key.private_key.expose())
        .map_err(|_| "the private key is unreadable".to_string())?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| "the private key is not an RSA key".to_string())?;
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "signing the JWT failed".to_string())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// An ACR refresh token for a managed identity: its AAD token from IMDS, exchanged at the
/// registry.
pub(in crate::upstream) async fn acr_refresh_token(
    http: &HttpClient,
    id: &AzureIdentity,
    registry: &str,
    timeout: Duration,
    now: SystemTime,
) -> Result<CloudToken, UpstreamError> {
    const IMDS: &str = "Azure IMDS managed identity token";
    let query = {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("api-version", "2018-02-01")
            .append_pair("resource", AZURE_RESOURCE);
        if let Some(c) = &id.client_id {
            q.append_pair("client_id", c);
        }
        q.finish()
    };
    let uri = format!("{}/metadata/identity/oauth2/token?{query}", id.imds);
    let req = Request::builder()
        .method(Method::GET)
        .uri(&uri)
        .header("metadata", "true")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Full::new(Bytes::new()))
        .map_err(|_| step(IMDS, "not a valid URL".into()))?;
    let aad = access_token(call(http, req, timeout, IMDS).await?, IMDS, now)?;

    const EXCHANGE: &str = "ACR /oauth2/exchange";
    let origin = registry
        .split_once("://")
        .map(|(s, rest)| format!("{s}://{}", rest.split('/').next().unwrap_or(rest)))
        .ok_or_else(|| step(EXCHANGE, "the upstream URL has no origin".into()))?;
    let service = origin.split_once("://").map_or("", |(_, a)| a).to_string();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "access_token")
        .append_pair("service", &service)
        .append_pair("access_token", aad.value.expose())
        .finish();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("{origin}/oauth2/exchange"))
        .header(CONTENT_TYPE, FORM)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| step(EXCHANGE, "cannot form the request".into()))?;
    #[derive(Deserialize)]
    struct Exchanged {
        refresh_token: String,
    }
    let body = call(http, req, timeout, EXCHANGE).await?;
    let e: Exchanged = serde_json::from_slice(&body)
        .map_err(|_| step(EXCHANGE, "the answer has no refresh_token".into()))?;
    // ACR's refresh token is a JWT whose `exp` says how long it lasts; the AAD token's
    // expiry bounds it where it cannot be read.
    let expires_at = jwt_exp(&e.refresh_token).unwrap_or(aad.expires_at);
    Ok(CloudToken {
        value: Secret::new(e.refresh_token),
        expires_at,
        source: format!(
            "Azure managed identity ({}) via IMDS at {}, exchanged at {origin}",
            id.client_id.as_deref().unwrap_or("system-assigned"),
            id.imds
        ),
    })
}

/// The `exp` claim of a JWT, unverified (berth only schedules its renewal by it).
fn jwt_exp(token: &str) -> Option<SystemTime> {
    let claims = token.split('.').nth(1)?;
    let v: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(v.get("exp")?.as_u64()?))
}

/// Sends a request to a credential service; a non-2xx answer is an error naming the step
/// and the status (and OAuth2's `error` code when there is one, never a token).
async fn call(
    http: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    what: &str,
) -> Result<Bytes, UpstreamError> {
    let (status, body) = super::exchange(http, req, timeout, what).await?;
    if !status.is_success() {
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .filter(|c| c.len() < 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        tracing::warn!(%status, step = what, "a cloud credential service refused berth");
        return Err(step(what, format!("answered {status}{code}")));
    }
    Ok(body)
}

/// An OAuth2 token answer: `access_token` and `expires_in` (a number, or IMDS's string).
fn access_token(body: Bytes, what: &str, now: SystemTime) -> Result<CloudToken, UpstreamError> {
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| step(what, "the answer is not JSON".into()))?;
    let value = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| step(what, "the answer has no access_token".into()))?;
    let expires_in = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(300);
    Ok(CloudToken {
        value: Secret::new(value),
        expires_at: now + Duration::from_secs(expires_in),
        source: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_with_number_or_string_lifetimes() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let t = access_token(
            Bytes::from_static(
                br#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#,
            ),
            "t",
            now,
        )
        .unwrap();
        assert_eq!(t.value.expose(), "ya29.x");
        assert_eq!(t.expires_at, now + Duration::from_secs(3599));
        // IMDS writes numbers as strings.
        let t = access_token(
            Bytes::from_static(br#"{"access_token":"eyJ0","expires_in":"86399","resource":"https://management.azure.com/"}"#),
            "t",
            now,
        )
        .unwrap();
        assert_eq!(t.expires_at, now + Duration::from_secs(86399));
        assert!(access_token(Bytes::from_static(b"{}"), "t", now).is_err());
        let claims = URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000,"grant_type":"refresh_token"}"#);
        assert_eq!(
            jwt_exp(&format!("e30.{claims}.sig")),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(jwt_exp("opaque"), None);
    }
}
