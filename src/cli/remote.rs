//! The admin API's client for `--server`: HTTP or HTTPS (the webpki roots and ring provider
//! the upstream client uses), the admin token as `Authorization: Bearer`, JSON in and out,
//! and `application/problem+json` answers turned into the one line the command prints. The
//! token is never printed: not in an error, not in a `Debug`.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::plane::Failure;
use crate::config::Secret;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole call, answer read included.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read (a usage report over many licenses is the big one).
const MAX_ANSWER: usize = 64 << 20;

pub(super) struct Remote {
    /// `scheme://authority[/prefix]` without a trailing slash; calls append `/api/v1/…`.
    base: String,
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("base", &self.base).finish()
    }
}

/// The part of a problem document the command prints.
#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

impl Remote {
    /// `server` is what `--server` said; `token` the admin token.
    pub fn new(server: &str, token: Option<&Secret>) -> Result<Remote, Failure> {
        let bad_url = || {
            Failure::usage(
                "--server: expected the admin listener's URL, e.g. http://127.0.0.1:9090 or https://berth-admin.acme.test",
            )
        };
        let uri: Uri = server.trim().parse().map_err(|_| bad_url())?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
            return Err(bad_url());
        }
        let Some(authority) = uri.authority() else {
            return Err(bad_url());
        };
        // Credentials in the URL would be printed in every error naming the server.
        if authority.as_str().contains('@') {
            return Err(Failure::usage(
                "--server: no credentials in the URL; give the admin token with BERTH_ADMIN_TOKEN or --token",
            ));
        }
        if uri.query().is_some() {
            return Err(bad_url());
        }
        let base = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            authority,
            uri.path().trim_end_matches('/')
        );
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Failure::usage(
                "--server needs an admin token: set BERTH_ADMIN_TOKEN (or give --token)",
            ));
        };
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| {
                Failure::usage("the admin token holds characters a header cannot carry")
            })?;
        authorization.set_sensitive(true);
        let https = crate::upstream::https_connector(HttpConnector::new(), CONNECT_TIMEOUT);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Remote {
            base,
            authorization,
            client,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, Failure> {
        self.call(Method::POST, path, Some(json(body)?)).await
    }

    /// A POST without a body (revoke, rotate).
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.call(Method::POST, path, None).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, Failure> {
        self.call(Method::PATCH, path, Some(json(body)?)).await
    }

    /// `path` starts with `/api/v1/` and carries its query, its segments already encoded.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::ACCEPT, "application/json, application/problem+json")
            .header(
                header::USER_AGENT,
                concat!("berth/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| Failure::usage(format!("--server: cannot make a request to {url}")))?;
        let answer = async {
            let resp = self.client.request(req).await.map_err(|e| {
                Failure::refused(format!(
                    "cannot reach the admin API at {}: {}",
                    self.base,
                    crate::upstream::error_chain(&e)
                ))
            })?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| {
                    Failure::refused(format!(
                        "reading the admin API's answer from {}: {e}",
                        self.base
                    ))
                })?
                .to_bytes();
            Ok::<_, Failure>((status, bytes))
        };
        let (status, bytes) =
            tokio::time::timeout(CALL_TIMEOUT, answer)
                .await
                .map_err(|_| {
                    Failure::refused(format!(
                        "the admin API at {} did not answer within {CALL_TIMEOUT:?}",
                        self.base
                    ))
                })??;
        if status.is_success() {
            // A serde message can quote the answer (which may hold a new secret): say where
            // it broke, not what it read.
            return serde_json::from_slice(&bytes).map_err(|e| {
                Failure::refused(format!(
                    "the admin API at {} answered {status} with JSON this berth does not read ({:?} error at line {} column {}); is it the same version?",
                    self.base,
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            });
        }
        Err(Failure::refused(self.problem(status, &bytes)))
    }

    /// The line to print for a refusal: the problem's `detail` (or `title`).
    fn problem(&self, status: StatusCode, body: &[u8]) -> String {
        let p = serde_json::from_slice::<Problem>(body).ok();
        let text = p.and_then(|p| {
            p.detail
                .filter(|d| !d.trim().is_empty())
                .or(p.title.filter(|t| !t.trim().is_empty()))
        });
        match text {
            Some(t) => t,
            None => format!(
                "{} answered {status}: is it the admin listener (server.admin_listen) of a berth with the admin API?",
                self.base
            ),
        }
    }
}

fn json(body: &impl Serialize) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(body).map_err(|e| Failure::usage(format!("cannot encode the request: {e}")))
}

/// One path segment (an id) percent-encoded: ids are made of safe characters, but a config
/// admin token's `config:<name>` may hold anything.
pub(super) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&…` of the pairs whose value is given (empty when none is).
pub(super) fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
            any = true;
        }
    }
    if any {
        format!("?{}", q.finish())
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_queries_are_encoded() {
        assert_eq!(segment("lic_abc234"), "lic_abc234");
        assert_eq!(segment("config:ops team/1"), "config:ops%20team%2F1");
        assert_eq!(query(&[("app", None), ("state", None)]), "");
        assert_eq!(
            query(&[
                ("app", Some("a&b")),
                ("state", None),
                ("limit", Some("500"))
            ]),
            "?app=a%26b&limit=500"
        );
    }

    #[test]
    fn server_urls_are_checked_and_never_carry_credentials() {
        let t = Secret::new("berth_adm_canary");
        let r = Remote::new("http://127.0.0.1:9090/", Some(&t)).unwrap();
        assert_eq!(r.base, "http://127.0.0.1:9090");
        assert!(!format!("{r:?}").contains("canary"));
        let r = Remote::new("https://admin.acme.test/berth/", Some(&t)).unwrap();
        assert_eq!(r.base, "https://admin.acme.test/berth");
        for bad in ["127.0.0.1:9090", "ftp://x", "http://u:p@host", "not a url"] {
            assert!(Remote::new(bad, Some(&t)).is_err(), "{bad}");
        }
        assert!(Remote::new("http://127.0.0.1:9090", None).is_err());
    }
}
