//! berth's AWS credentials, for ECR: from the source the config chose (access keys with
//! an optional session token, IRSA's web identity through STS `AssumeRoleWithWebIdentity`,
//! EKS Pod Identity's container credentials endpoint, the instance metadata service with
//! IMDSv2's session token), optionally turned into a role's with STS `AssumeRole`
//! (`external_id` included). Temporary credentials are kept per upstream and renewed before
//! they expire (`lease`); every request they sign carries the session token.
//!
//! STS answers XML; only four text fields of its fixed response shape are read, so they
//! are picked out here rather than by a parser dependency.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::Full;
use serde::Deserialize;

use super::lease::Expiring;
use crate::settings::Secret;
use crate::tenancy::{AssumeRole, AwsIdentity, AwsSource};
use crate::upstream::{sigv4, HttpClient, UpstreamError, USER_AGENT_VALUE};

/// How long berth asks STS for (the default; a role's maximum may be higher).
const SESSION_SECONDS: u32 = 3600;
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";
const IMDS_TOKEN_TTL: &str = "21600";

/// AWS credentials: long-lived keys (no expiry) or a session's.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub expires_at: Option<SystemTime>,
    /// Where they came from, for `upstream test` and logs (never a secret).
    pub source: String,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expires_at", &self.expires_at)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Expiring for AwsCredentials {
    fn expires_at(&self) -> SystemTime {
        // Keys that never expire are kept until a reload clears them.
        self.expires_at
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(100 * 365 * 86_400))
    }
}

impl AwsCredentials {
    /// A SigV4-signed POST of `body` to `uri` for `service` in `region`, with the session
    /// token (signed too) when there is one.
    #[allow(clippy::too_many_arguments)]
    pub fn signed_post(
        &self,
        uri: &Uri,
        host: &str,
        extra: &[(&str, &str)],
        content_type: &str,
        body: Bytes,
        region: &str,
        service: &str,
        now: SystemTime,
    ) -> Result<Request<Full<Bytes>>, http::Error> {
        let amz_date = sigv4::amz_date(now);
        let mut signed: Vec<(&str, &str)> = vec![
            ("content-type", content_type),
            ("host", host),
            ("x-amz-date", amz_date.as_str()),
        ];
        if let Some(t) = &self.session_token {
            signed.push(("x-amz-security-token", t.expose()));
        }
        signed.extend_from_slice(extra);
        signed.sort_by(|a, b| a.0.cmp(b.0));
        let authorization = sigv4::authorization(
            &self.access_key_id,
            &self.secret_access_key,
            &sigv4::SignInput {
                method: "POST",
                path: uri.path(),
                query: "",
                headers: &signed,
                body: &body,
                region,
                service,
                amz_date: &amz_date,
            },
        );
        let mut auth = http::HeaderValue::try_from(authorization)?;
        auth.set_sensitive(true);
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(AUTHORIZATION, auth);
        for (name, value) in &signed {
            let mut v = http::HeaderValue::try_from(*value)?;
            if *name == "x-amz-security-token" {
                v.set_sensitive(true);
            }
            b = b.header(*name, v);
        }
        b.body(Full::new(body))
    }
}

/// Fetches credentials from `id`'s source, then assumes its role if it has one. Every
/// error names the step (`web identity`, `STS AssumeRole`, …) and never a secret.
pub(in crate::upstream) async fn fetch(
    http: &HttpClient,
    id: &AwsIdentity,
    region: &str,
    timeout: Duration,
    now: SystemTime,
) -> Result<AwsCredentials, UpstreamError> {
    let base = match &id.source {
        AwsSource::Keys {
            access_key_id,
            secret_access_key,
            session_token,
        } => AwsCredentials {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
            session_token: session_token.clone(),
            expires_at: None,
            source: id.source.describe(),
        },
        AwsSource::WebIdentity {
            token_file,
            role_arn,
        } => {
            let token = std::fs::read_to_string(token_file).map_err(|e| {
                step(
                    "web identity",
                    format!("cannot read the token file {}: {e}", token_file.display()),
                )
            })?;
            let form = form(&[
                ("Action", "AssumeRoleWithWebIdentity"),
                ("Version", "2011-06-15"),
                ("RoleArn", role_arn),
                ("RoleSessionName", &id.session_name),
                ("WebIdentityToken", token.trim()),
                ("DurationSeconds", &SESSION_SECONDS.to_string()),
            ]);
            let req = sts_request(&id.sts_endpoint, form, None)?;
            let mut c = sts(http, req, timeout, "STS AssumeRoleWithWebIdentity").await?;
            c.source = id.source.describe();
            c
        }
        AwsSource::Container {
            uri,
            token_file,
            token,
        } => container(http, uri, token_file.as_deref(), token.as_ref(), timeout).await?,
        AwsSource::InstanceMetadata { endpoint } => imds(http, endpoint, timeout).await?,
    };
    match &id.assume_role {
        None => Ok(base),
        Some(role) => assume_role(http, id, role, &base, region, timeout, now).await,
    }
}

fn step(what: &str, reason: String) -> UpstreamError {
    UpstreamError::Identity(format!("AWS credentials, {what}: {reason}"))
}

fn form(pairs: &[(&str, &str)]) -> Bytes {
    let mut f = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    Bytes::from(f.finish())
}

fn endpoint_uri(endpoint: &str, path: &str, what: &str) -> Result<(Uri, String), UpstreamError> {
    let uri: Uri = format!("{endpoint}{path}")
        .parse()
        .map_err(|_| step(what, format!("{endpoint} is not a valid URL")))?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    Ok((uri, host))
}

/// An unsigned STS query-API POST (AssumeRoleWithWebIdentity needs no signature).
fn sts_request(
    endpoint: &str,
    body: Bytes,
    signed_by: Option<(&AwsCredentials, &str, SystemTime)>,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let (uri, host) = endpoint_uri(endpoint, "/", "STS")?;
    let built = match signed_by {
        Some((creds, region, now)) => {
            creds.signed_post(&uri, &host, &[], FORM, body, region, "sts", now)
        }
        None => Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(HOST, host.as_str())
            .header(CONTENT_TYPE, FORM)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Full::new(body)),
    };
    built.map_err(|_| step("STS", "cannot form the request".into()))
}

async fn assume_role(
    http: &HttpClient,
    id: &AwsIdentity,
    role: &AssumeRole,
    base: &AwsCredentials,
    region: &str,
    timeout: Duration,
    now: SystemTime,
) -> Result<AwsCredentials, UpstreamError> {
    let duration = SESSION_SECONDS.to_string();
    let mut pairs = vec![
        ("Action", "AssumeRole"),
        ("Version", "2011-06-15"),
        ("RoleArn", role.role_arn.as_str()),
        ("RoleSessionName", id.session_name.as_str()),
        ("DurationSeconds", duration.as_str()),
    ];
    if let Some(x) = &role.external_id {
        pairs.push(("ExternalId", x));
    }
    let req = sts_request(&id.sts_endpoint, form(&pairs), Some((base, region, now)))?;
    let mut c = sts(http, req, timeout, "STS AssumeRole").await?;
    c.source = format!("{} → role {}", base.source, role.role_arn);
    Ok(c)
}

/// Sends an STS request and reads the credentials of its answer.
async fn sts(
    http: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    what: &str,
) -> Result<AwsCredentials, UpstreamError> {
    let (status, body) =
        super::exchange(http, req, timeout, &format!("AWS credentials, {what}")).await?;
    let body = String::from_utf8_lossy(&body);
    if !status.is_success() {
        // AWS's error code names the problem (AccessDenied, InvalidIdentityToken,
        // ExpiredTokenException …) and carries no secret.
        let code = xml_text(&body, "Code")
            .filter(|c| c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.'))
            .unwrap_or_else(|| "no error code".into());
        tracing::warn!(%status, aws_error = %code, step = what, "AWS STS refused berth");
        return Err(step(what, format!("answered {status} ({code})")));
    }
    let field = |name: &str| {
        xml_text(&body, name).ok_or_else(|| step(what, format!("the answer has no {name}")))
    };
    Ok(AwsCredentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: Secret::new(field("SecretAccessKey")?),
        session_token: Some(Secret::new(field("SessionToken")?)),
        expires_at: Some(expiration(&field("Expiration")?, what)?),
        source: String::new(),
    })
}

/// The JSON the container endpoint and IMDS answer with.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Issued {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<String>,
    code: Option<String>,
}

fn issued(body: &[u8], what: &str, source: String) -> Result<AwsCredentials, UpstreamError> {
    let i: Issued = serde_json::from_slice(body)
        .map_err(|_| step(what, "the answer is not the expected JSON".into()))?;
    if let Some(code) = i.code.filter(|c| c != "Success") {
        return Err(step(what, format!("answered code {code}")));
    }
    Ok(AwsCredentials {
        access_key_id: i.access_key_id,
        secret_access_key: Secret::new(i.secret_access_key),
        session_token: i.token.map(Secret::new),
        expires_at: match i.expiration {
            Some(e) => Some(expiration(&e, what)?),
            None => None,
        },
        source,
    })
}

async fn get(
    http: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    what: &str,
) -> Result<Bytes, UpstreamError> {
    let (status, body) =
        super::exchange(http, req, timeout, &format!("AWS credentials, {what}")).await?;
    if !status.is_success() {
        return Err(step(what, format!("answered {status}")));
    }
    Ok(body)
}

/// EKS Pod Identity (and ECS): GET the endpoint with the authorization token.
async fn container(
    http: &HttpClient,
    uri: &str,
    token_file: Option<&std::path::Path>,
    token: Option<&Secret>,
    timeout: Duration,
) -> Result<AwsCredentials, UpstreamError> {
    const WHAT: &str = "container credentials endpoint";
    let token = match (token_file, token) {
        (Some(f), _) => Some(Secret::new(
            std::fs::read_to_string(f)
                .map_err(|e| step(WHAT, format!("cannot read {}: {e}", f.display())))?
                .trim()
                .to_string(),
        )),
        (None, t) => t.cloned(),
    };
    let mut b = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE);
    if let Some(t) = &token {
        let mut v = http::HeaderValue::try_from(t.expose())
            .map_err(|_| step(WHAT, "the authorization token is not a header value".into()))?;
        v.set_sensitive(true);
        b = b.header(AUTHORIZATION, v);
    }
    let req = b
        .body(Full::new(Bytes::new()))
        .map_err(|_| step(WHAT, format!("{uri} is not a valid URL")))?;
    let body = get(http, req, timeout, WHAT).await?;
    issued(&body, WHAT, format!("container credentials from {uri}"))
}

/// IMDSv2: a session token (PUT), the instance profile's role name, its credentials.
async fn imds(
    http: &HttpClient,
    endpoint: &str,
    timeout: Duration,
) -> Result<AwsCredentials, UpstreamError> {
    let (uri, _) = endpoint_uri(endpoint, "/latest/api/token", "IMDSv2 session token")?;
    let req = Request::builder()
        .method(Method::PUT)
        .uri(uri)
        .header("x-aws-ec2-metadata-token-ttl-seconds", IMDS_TOKEN_TTL)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Full::new(Bytes::new()))
        .map_err(|_| step("IMDSv2 session token", "cannot form the request".into()))?;
    let token = get(http, req, timeout, "IMDSv2 session token").await?;
    let mut token = http::HeaderValue::from_maybe_shared(token)
        .map_err(|_| step("IMDSv2 session token", "not a header value".into()))?;
    token.set_sensitive(true);
    let meta = |path: &str, what: &'static str| -> Result<Request<Full<Bytes>>, UpstreamError> {
        let (uri, _) = endpoint_uri(endpoint, path, what)?;
        Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header("x-aws-ec2-metadata-token", token.clone())
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Full::new(Bytes::new()))
            .map_err(|_| step(what, "cannot form the request".into()))
    };
    const ROLE: &str = "IMDS instance profile";
    let base = "/latest/meta-data/iam/security-credentials/";
    let roles = get(http, meta(base, ROLE)?, timeout, ROLE).await?;
    let role = String::from_utf8_lossy(&roles)
        .lines()
        .next()
        .map(str::trim)
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .map(str::to_string)
        .ok_or_else(|| step(ROLE, "the instance has no IAM role".into()))?;
    const CREDS: &str = "IMDS role credentials";
    let body = get(http, meta(&format!("{base}{role}"), CREDS)?, timeout, CREDS).await?;
    issued(
        &body,
        CREDS,
        format!("instance metadata (IMDSv2) role {role}"),
    )
}

fn expiration(s: &str, what: &str) -> Result<SystemTime, UpstreamError> {
    humantime::parse_rfc3339_weak(s.trim().trim_end_matches('Z'))
        .map_err(|_| step(what, format!("unreadable expiration {s:?}")))
}

/// The text of the first `<name>` element (AWS's responses have no attributes or nesting
/// of the same name), with XML's escapes undone.
fn xml_text(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{name}>"))?;
    let raw = body[start..end].trim();
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let semi = tail.find(';')?;
        let entity = &tail[1..semi];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") => char::from_u32(u32::from_str_radix(&e[2..], 16).ok()?)?,
            e if e.starts_with('#') => char::from_u32(e[1..].parse().ok()?)?,
            _ => return None,
        };
        out.push(c);
        rest = &tail[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The response shape of AWS's documentation for AssumeRoleWithWebIdentity.
    const STS_OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:berth:berth</SubjectFromWebIdentityToken>
    <Credentials>
      <SessionToken>AQoDYXdzEE0a8ANXXXXXXXXNO1ewxE5TijQyp+IEXAMPLE&#x2F;x</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>
      <Expiration>2014-10-24T23:00:23Z</Expiration>
      <AccessKeyId>ASgeIAIOSFODNN7EXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn reads_sts_answers_and_their_escapes() {
        assert_eq!(
            xml_text(STS_OK, "AccessKeyId").as_deref(),
            Some("ASgeIAIOSFODNN7EXAMPLE")
        );
        assert_eq!(
            xml_text(STS_OK, "SessionToken").as_deref(),
            Some("AQoDYXdzEE0a8ANXXXXXXXXNO1ewxE5TijQyp+IEXAMPLE/x")
        );
        let t = expiration(&xml_text(STS_OK, "Expiration").unwrap(), "t").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_414_191_623
        );
        assert_eq!(
            xml_text("<a>x &amp; &lt;y&gt;</a>", "a").as_deref(),
            Some("x & <y>")
        );
        assert_eq!(xml_text("<a>x &bogus; y</a>", "a"), None);
        assert_eq!(xml_text(STS_OK, "Missing"), None);
        let err = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>\
                   <Message>No OpenIDConnect provider found</Message></Error></ErrorResponse>";
        assert_eq!(
            xml_text(err, "Code").as_deref(),
            Some("InvalidIdentityToken")
        );
    }

    #[test]
    fn reads_container_and_imds_json() {
        let body = br#"{"Code":"Success","AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2030-01-01T00:00:00Z","LastUpdated":"x","Type":"AWS-HMAC"}"#;
        let c = issued(body, "t", "imds".into()).unwrap();
        assert_eq!(c.access_key_id, "ASIA1");
        assert_eq!(c.session_token.unwrap().expose(), "t");
        assert!(c.expires_at.is_some());
        let failed =
            br#"{"Code":"AssumeRoleUnauthorizedAccess","AccessKeyId":"","SecretAccessKey":""}"#;
        let e = issued(failed, "IMDS role credentials", "imds".into()).unwrap_err();
        assert!(
            e.to_string().contains("AssumeRoleUnauthorizedAccess"),
            "{e}"
        );
        let c = AwsCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: Secret::new("SECRET-CANARY"),
            session_token: Some(Secret::new("TOKEN-CANARY")),
            expires_at: None,
            source: "x".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("CANARY"), "{shown}");
    }

    /// The session token is signed and sent; the signature is AWS's SigV4 (checked against
    /// its published vectors in `sigv4`).
    #[test]
    fn signed_requests_carry_the_session_token() {
        let c = AwsCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("secret"),
            session_token: Some(Secret::new("session-token")),
            expires_at: None,
            source: "x".into(),
        };
        let uri: Uri = "https://sts.eu-west-1.amazonaws.com/".parse().unwrap();
        let req = c
            .signed_post(
                &uri,
                "sts.eu-west-1.amazonaws.com",
                &[],
                FORM,
                Bytes::from_static(b"Action=AssumeRole"),
                "eu-west-1",
                "sts",
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )
            .unwrap();
        let auth = req.headers()[AUTHORIZATION].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20231114/eu-west-1/sts/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="
            ),
            "{auth}"
        );
        assert_eq!(req.headers()["x-amz-security-token"], "session-token");
        assert!(req.headers()["x-amz-security-token"].is_sensitive());
    }
}
