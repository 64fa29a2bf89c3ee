//! `berth upstream test`: checks one upstream step by step (DNS, TCP, TLS, ECR token,
//! authentication, allow-list, manifest) and says which step failed and why, so a
//! vendor can tell bad credentials from a wrong region or a firewall. Nothing secret is
//! ever part of a step's text.

use std::sync::Arc;
use std::time::Duration;

use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use super::{Client, Scheme, UpstreamError};
use crate::tenancy::{Upstream, UpstreamAuth};

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub outcome: Outcome,
    pub what: &'static str,
    pub detail: String,
}

impl Step {
    fn ok(what: &'static str, detail: impl Into<String>) -> Step {
        Step {
            outcome: Outcome::Ok,
            what,
            detail: detail.into(),
        }
    }

    fn failed(what: &'static str, detail: impl Into<String>) -> Step {
        Step {
            outcome: Outcome::Failed,
            what,
            detail: detail.into(),
        }
    }

    pub fn mark(&self) -> &'static str {
        match self.outcome {
            Outcome::Ok => "✓",
            Outcome::Failed => "✗",
            Outcome::Skipped => "-",
        }
    }
}

/// Splits `repo:tag` or `repo@digest` (a missing reference means `latest`).
pub fn parse_image(image: &str) -> Result<(String, String), String> {
    let (repo, reference) = if let Some((r, d)) = image.split_once('@') {
        (r, d)
    } else {
        match image.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (image, "latest"),
        }
    };
    if !crate::oci::name::valid_repository(repo) {
        return Err(format!("invalid repository {repo:?}"));
    }
    Ok((repo.to_string(), reference.to_string()))
}

/// Runs the checks in order and stops at the first failure: later steps would only fail
/// for the same reason.
pub async fn probe(client: &Client, up: &Upstream, image: Option<(&str, &str)>) -> Vec<Step> {
    let mut steps = Vec::new();
    macro_rules! step {
        ($s:expr) => {{
            let s: Step = $s;
            let failed = s.outcome == Outcome::Failed;
            steps.push(s);
            if failed {
                return steps;
            }
        }};
    }
    let Ok(uri) = up.base_url.parse::<Uri>() else {
        step!(Step::failed("url", "not a valid URL"));
        return steps;
    };
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or("").to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });

    let addrs =
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
            .await
        {
            Ok(Ok(a)) => a.collect::<Vec<_>>(),
            Ok(Err(e)) => {
                step!(Step::failed(
                    "dns",
                    format!("unreachable: cannot resolve {host}: {e}")
                ));
                unreachable!()
            }
            Err(_) => {
                step!(Step::failed(
                    "dns",
                    format!("unreachable: resolving {host} took over {STEP_TIMEOUT:?}")
                ));
                unreachable!()
            }
        };
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    step!(Step::ok("dns", format!("{host} → {}", shown.join(", "))));

    let mut stream = None;
    let mut last_err = String::from("no addresses");
    for a in &addrs {
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                stream = Some((s, *a));
                break;
            }
            Ok(Err(e)) => last_err = format!("{a}: {e}"),
            Err(_) => last_err = format!("{a}: no answer within {STEP_TIMEOUT:?}"),
        }
    }
    let Some((stream, addr)) = stream else {
        step!(Step::failed("connect", format!("unreachable: {last_err}")));
        return steps;
    };
    step!(Step::ok("connect", format!("TCP {addr}")));

    if https {
        step!(match tls_handshake(stream, &host).await {
            Ok(v) => Step::ok("tls", v),
            Err(e) => Step::failed("tls", format!("TLS error: {e}")),
        });
    } else {
        drop(stream);
        steps.push(Step {
            outcome: Outcome::Skipped,
            what: "tls",
            detail: "plain HTTP".into(),
        });
    }

    if let UpstreamAuth::Ecr(settings) = &up.auth {
        // Where berth's AWS identity comes from, and that it works, before ECR is asked.
        let creds = client.aws_credentials(up).await;
        step!(match &creds {
            Ok(c) => Step::ok(
                "aws credentials",
                match c.expires_at {
                    Some(t) => format!(
                        "{} (access key {}, expires {})",
                        c.source,
                        c.access_key_id,
                        humantime::format_rfc3339_seconds(t)
                    ),
                    None => c.source.clone(),
                },
            ),
            Err(e) => Step::failed("aws credentials", reason(e)),
        });
        let akid = creds.map(|c| c.access_key_id).unwrap_or_default();
        step!(match client.ecr_login(up).await {
            Ok(login) => Step::ok(
                "ecr token",
                format!(
                    "authorization token from {} (region {}), expires {}",
                    settings.endpoint,
                    settings.region,
                    humantime::format_rfc3339_seconds(login.expires_at)
                ),
            ),
            Err(UpstreamError::Unauthorized) => Step::failed(
                "ecr token",
                format!(
                    "bad credentials: AWS rejected access key {akid} (region {})",
                    settings.region
                ),
            ),
            Err(UpstreamError::Connect(r)) => Step::failed(
                "ecr token",
                format!("unreachable ECR API (wrong region?): {r}"),
            ),
            Err(e) => Step::failed("ecr token", reason(&e)),
        });
    }

    if let Some(t) = client.cloud_token(up).await {
        step!(match t {
            Ok(t) => Step::ok(
                "cloud identity",
                format!(
                    "{}, token expires {}",
                    t.source,
                    humantime::format_rfc3339_seconds(t.expires_at)
                ),
            ),
            Err(e) => Step::failed("cloud identity", reason(&e)),
        });
    }

    let allowed = image.filter(|(repo, _)| up.match_score(repo).is_some());
    let scope = allowed
        .map(|(repo, _)| crate::oci::scope::pull(&up.upstream_repository(repo)))
        .unwrap_or_default();
    step!(match client.authenticate(up, &scope).await {
        Ok(()) => Step::ok(
            "auth",
            match client.scheme(up) {
                None => "anonymous access accepted".to_string(),
                Some(Scheme::Basic) => "Basic credentials accepted".to_string(),
                Some(Scheme::Bearer { realm, .. }) => format!("token obtained from {realm}"),
            }
        ),
        Err(e) => Step::failed("auth", reason(&e)),
    });

    let Some((repo, reference)) = image else {
        return steps;
    };
    if allowed.is_none() {
        let globs: Vec<&str> = up.repositories.iter().map(|g| g.as_str()).collect();
        step!(Step::failed(
            "allow-list",
            format!(
                "repository {repo} is outside the allow-list [{}]",
                globs.join(", ")
            )
        ));
    }
    let upstream_repo = up.upstream_repository(repo);
    let mut headers = HeaderMap::new();
    headers.insert(
        ACCEPT,
        HeaderValue::from_static(crate::oci::DEFAULT_MANIFEST_ACCEPT),
    );
    let req = super::Request {
        headers,
        ..super::Request::new(
            Method::HEAD,
            format!("/v2/{upstream_repo}/manifests/{reference}"),
            scope,
        )
    };
    let what = format!("{upstream_repo}:{reference}");
    step!(match client.fetch(up, &req).await {
        Ok(resp) => match resp.status() {
            s if s.is_success() => {
                let digest = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no digest header")
                    .to_string();
                let quota = client
                    .ratelimit_remaining(&up.name)
                    .map(|n| format!(", ratelimit-remaining {n}"))
                    .unwrap_or_default();
                Step::ok("manifest", format!("{what} → {digest}{quota}"))
            }
            StatusCode::NOT_FOUND => Step::failed("manifest", format!("{what}: not found")),
            StatusCode::FORBIDDEN => Step::failed(
                "manifest",
                format!("{what}: access denied (403): the credentials may not pull it"),
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                Step::failed("manifest", format!("{what}: rate limited (429)"))
            }
            s => Step::failed("manifest", format!("{what}: the upstream answered {s}")),
        },
        Err(e) => Step::failed("manifest", format!("{what}: {}", reason(&e))),
    });
    steps
}

/// The reason a vendor can act on, from an upstream error.
fn reason(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Unauthorized => {
            "bad credentials: the upstream rejected berth's credentials".into()
        }
        UpstreamError::Connect(r) => format!("unreachable: {r}"),
        UpstreamError::Timeout(d) => format!("unreachable: no response within {d:?}"),
        other => other.to_string(),
    }
}

async fn tls_handshake(stream: tokio::net::TcpStream, host: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, stream)).await {
        Err(_) => Err(format!("no handshake within {STEP_TIMEOUT:?}")),
        Ok(Err(e)) if super::speaks_plain_http(&e) => Err(UpstreamError::PlainHttp.to_string()),
        Ok(Err(e)) => Err(super::error_chain(&e)),
        Ok(Ok(tls)) => {
            let version = tls
                .get_ref()
                .1
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|| "TLS".into());
            Ok(format!("{version}, certificate valid for {host}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        assert_eq!(
            parse_image("acme/api:1.2").unwrap(),
            ("acme/api".into(), "1.2".into())
        );
        assert_eq!(
            parse_image("redis").unwrap(),
            ("redis".into(), "latest".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_image(&format!("acme/api@{d}")).unwrap(),
            ("acme/api".into(), d)
        );
        assert!(parse_image("Bad Name:1").is_err());
    }
}
