//! Amazon ECR: the registry password is an authorization token from the ECR API's
//! `GetAuthorizationToken` (SigV4-signed), valid 12 hours. berth keeps one per upstream,
//! fetches it once for all concurrent requests, and renews it well before it expires.
//! As a credential source it sends Basic from the first request (ECR never answers with a
//! token realm) and, when the registry refuses a login, fetches a new one once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::Uri;
use serde::Deserialize;

use super::aws::AwsCredentials;
use super::lease::{Expiring, Leases};
use super::{BasicLogin, BoxFuture, Context, CredentialSource};
use crate::settings::Secret;
use crate::tenancy::EcrSettings;
use crate::upstream::{basic_header, HttpClient, UpstreamError};

pub const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
pub const CONTENT_TYPE_JSON: &str = "application/x-amz-json-1.1";

/// A registry login derived from an ECR authorization token.
#[derive(Debug, Clone)]
pub struct EcrLogin {
    pub username: String,
    pub password: Secret,
    pub expires_at: SystemTime,
}

impl Expiring for EcrLogin {
    fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

/// Per-upstream ECR logins.
pub(in crate::upstream) type EcrTokens = Leases<EcrLogin>;

/// `kind: ecr`: Basic with the login `GetAuthorizationToken` gives.
pub(super) struct Ecr<'a>(pub(super) &'a EcrSettings);

impl CredentialSource for Ecr<'_> {
    fn basic<'a>(
        &'a self,
        cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<BasicLogin>, UpstreamError>> {
        Box::pin(async move {
            let login = cx.ecr_login(self.0).await?;
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
                cx.ecr
                    .invalidate_if(&cx.upstream.name, |l| &l.password == used)
                    .await;
            }
            true
        })
    }
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
    creds: &AwsCredentials,
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
    let req = creds
        .signed_post(
            &uri,
            &host,
            &[("x-amz-target", TARGET)],
            CONTENT_TYPE_JSON,
            Bytes::from(body),
            &settings.region,
            "ecr",
            now,
        )
        .map_err(|_| UpstreamError::Token("cannot form the ECR request".into()))?;
    let resp = crate::upstream::send(http, req, timeout)
        .await
        .map_err(|e| match e {
            UpstreamError::Connect(reason) => UpstreamError::Connect(format!(
                "ECR API {host} (region {}): {reason}",
                settings.region
            )),
            other => other,
        })?;
    let (status, body) =
        super::read_small(resp, timeout, &host, "ECR GetAuthorizationToken").await?;
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
