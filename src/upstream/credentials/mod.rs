//! Credential sources: how each kind of upstream proves berth's identity, behind one
//! trait the client asks for the `Authorization` of a scheme. A new upstream kind is a
//! file here implementing [`CredentialSource`] and one arm in [`for_upstream`], plus its
//! config side: an `UpstreamKind` and, for a new credential flow, a `tenancy::UpstreamAuth`
//! variant with its validator in `tenancy/yaml.rs`. The token-realm exchange itself
//! (Bearer) is `upstream::token`, which takes the realm login from the source.

pub mod aws;
pub mod cloud;
pub mod ecr;
mod gcp;
pub mod lease;
mod static_basic;

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use http::HeaderValue;

use super::{HttpClient, UpstreamError};
use crate::settings::Secret;
use crate::tenancy::{Upstream, UpstreamAuth};

pub(super) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a source may use to log in: the upstream, the client's connections and its
/// shared caches (sources themselves hold no state, so a reload only swaps settings).
pub(super) struct Context<'a> {
    pub upstream: &'a Upstream,
    pub http: &'a HttpClient,
    pub ecr: &'a ecr::EcrTokens,
    pub aws: &'a lease::Leases<aws::AwsCredentials>,
    pub cloud: &'a lease::Leases<cloud::CloudToken>,
    pub now: SystemTime,
}

impl Context<'_> {
    /// The upstream's ECR registry login, held until shortly before it expires (fetched
    /// with its AWS credentials, held likewise).
    pub(super) async fn ecr_login(
        &self,
        settings: &crate::tenancy::EcrSettings,
    ) -> Result<ecr::EcrLogin, UpstreamError> {
        let up = self.upstream;
        self.ecr
            .get(&up.name, || async {
                let creds = self.aws_credentials(settings).await?;
                ecr::fetch(self.http, settings, &creds, up.timeout, self.now).await
            })
            .await
    }

    /// The upstream's AWS credentials, held until shortly before they expire.
    pub(super) async fn aws_credentials(
        &self,
        settings: &crate::tenancy::EcrSettings,
    ) -> Result<aws::AwsCredentials, UpstreamError> {
        let up = self.upstream;
        self.aws
            .get(&up.name, || {
                aws::fetch(
                    self.http,
                    &settings.aws,
                    &settings.region,
                    up.timeout,
                    self.now,
                )
            })
            .await
    }
}

/// Sends a request to a credential service (STS, a metadata server, a token endpoint) and
/// reads its answer; failing to get one is an `Identity` error naming `what`.
pub(super) async fn exchange(
    http: &HttpClient,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
    timeout: std::time::Duration,
    what: &str,
) -> Result<(http::StatusCode, bytes::Bytes), UpstreamError> {
    let host = req.uri().host().unwrap_or("").to_string();
    let resp = crate::upstream::send(http, req, timeout)
        .await
        .map_err(|e| UpstreamError::Identity(format!("{what}: {e}")))?;
    read_small(resp, timeout, &host, what).await
}

/// Largest answer a credential service may give (tokens, credentials, small JSON or XML).
const MAX_RESPONSE: usize = 256 * 1024;

/// Reads a credential service's answer: its status and at most [`MAX_RESPONSE`] bytes of
/// body, under the stall guard.
pub(super) async fn read_small(
    resp: http::Response<hyper::body::Incoming>,
    timeout: std::time::Duration,
    host: &str,
    what: &str,
) -> Result<(http::StatusCode, bytes::Bytes), UpstreamError> {
    use http_body_util::BodyExt as _;
    let status = resp.status();
    let body = crate::upstream::Stall::new(resp.into_body(), timeout, host, "a credential service");
    let body = http_body_util::Limited::new(body, MAX_RESPONSE)
        .collect()
        .await
        .map_err(|_| UpstreamError::Identity(format!("{what}: reading the answer failed")))?
        .to_bytes();
    Ok((status, body))
}

/// A Basic `Authorization` for one attempt.
pub(super) struct BasicLogin {
    pub header: HeaderValue,
    /// For a login the source can renew (ECR's), the password sent, so that a refusal
    /// drops exactly that login and not one another request has fetched since.
    pub renewable: Option<Secret>,
}

/// One upstream kind's credential flow.
pub(super) trait CredentialSource: Send + Sync {
    /// The Basic `Authorization` to send; `None` sends none.
    fn basic<'a>(
        &'a self,
        cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<BasicLogin>, UpstreamError>>;

    /// The Basic `Authorization` a token realm is asked with; `None` asks anonymously.
    fn realm_authorization(&self) -> Option<HeaderValue> {
        None
    }

    /// The `Authorization` a token realm is asked with, for a source that must fetch it
    /// first (a cloud identity's token); by default [`CredentialSource::realm_authorization`].
    fn realm_login<'a>(
        &'a self,
        _cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<HeaderValue>, UpstreamError>> {
        Box::pin(std::future::ready(Ok(self.realm_authorization())))
    }

    /// Whether to send Basic before any challenge was seen.
    fn basic_up_front(&self) -> bool {
        false
    }

    /// Whether the source has nothing to offer: a Basic challenge then fails at once.
    fn is_anonymous(&self) -> bool {
        false
    }

    /// The registry refused Basic sent with `used` (the `renewable` password): whether
    /// another attempt may succeed.
    fn refused<'a>(
        &'a self,
        _cx: &'a Context<'a>,
        _used: Option<&'a Secret>,
    ) -> BoxFuture<'a, bool> {
        Box::pin(std::future::ready(false))
    }
}

/// The source for `up`'s kind, borrowing its settings.
pub(super) fn for_upstream(up: &Upstream) -> Box<dyn CredentialSource + '_> {
    match &up.auth {
        UpstreamAuth::Anonymous => Box::new(Anonymous),
        UpstreamAuth::Static(c) => Box::new(static_basic::StaticBasic(c)),
        UpstreamAuth::GcpServiceAccount(key) => Box::new(gcp::ServiceAccount(key)),
        UpstreamAuth::Ecr(settings) => Box::new(ecr::Ecr(settings)),
        UpstreamAuth::GcpToken(id) => Box::new(cloud::TokenLogin::Gcp(id)),
        UpstreamAuth::AzureManagedIdentity(id) => Box::new(cloud::TokenLogin::Azure(id)),
    }
}

/// No stored credentials: anonymous pulls, and anonymous tokens from a realm.
struct Anonymous;

impl CredentialSource for Anonymous {
    fn basic<'a>(
        &'a self,
        _cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<BasicLogin>, UpstreamError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn is_anonymous(&self) -> bool {
        true
    }
}
