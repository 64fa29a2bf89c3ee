//! `berth airgap push`: copies every image of a bundle into an OCI registry under the
//! rewriter's airgap names (`REGISTRY/NAMESPACE/<upstream-host>/<repository>`), with the
//! distribution push protocol: HEAD to skip blobs already there, a cross-repository mount
//! when this run already pushed the blob elsewhere, monolithic uploads for small blobs and
//! chunked ones (bounded memory) for big ones, retries, and Basic or Bearer auth. The
//! credentials follow the same rule as the upstream client's: they go only to the
//! destination's own origin (an upload `Location` elsewhere gets none, and its 401 is a
//! failure, not a challenge), and a token realm must pass `upstream::check_realm`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, USER_AGENT,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::bundle::Bundle;
use super::human;
use super::progress::Progress;
use crate::config::Secret;
use crate::oci::manifest::Descriptor;
use crate::oci::reference::ImageRef;
use crate::oci::{scope, Digest};
use crate::rewrite::{rewrite_image, Rules};
use crate::upstream::{
    basic_header, challenge, check_realm, error_chain, https_connector, resolve, Origin,
    USER_AGENT_VALUE,
};

/// Blobs up to this size go in one PUT; bigger ones in PATCH chunks of this size. Either
/// way at most this much of a blob is in memory.
pub const CHUNK: u64 = 8 * 1024 * 1024;
const ATTEMPTS: u32 = 4;
const TIMEOUT: Duration = Duration::from_secs(300);

type HttpClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct PushOptions {
    /// `REGISTRY[/NAMESPACE]`.
    pub to: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
}

#[derive(Debug, Default)]
pub struct PushReport {
    /// (old reference, new reference).
    pub mapping: Vec<(String, String)>,
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub skipped: usize,
    pub mounted: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Auth {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct Pusher {
    http: HttpClient,
    base: String,
    /// The destination's origin: the only one that gets the credentials or may challenge.
    home: Origin,
    username: Option<String>,
    password: Option<Secret>,
    auth: Mutex<Auth>,
    tokens: Mutex<HashMap<String, Secret>>,
}

#[derive(Debug)]
struct Failure {
    msg: String,
    retry: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

fn fatal(msg: impl Into<String>) -> Failure {
    Failure {
        msg: msg.into(),
        retry: false,
    }
}

type Resp = http::Response<hyper::body::Incoming>;

/// The push target of one image: its new reference, repository and tag-or-digest.
pub fn target_of(to: &str, upstream_ref: &str) -> anyhow::Result<(String, String, String)> {
    let r = ImageRef::parse(upstream_ref).map_err(|e| anyhow::anyhow!("{upstream_ref:?}: {e}"))?;
    let rules = Rules {
        registry: Some(to.to_string()),
        upstream_hosts: vec![r.registry.clone()],
        ..Rules::default()
    };
    let new = rewrite_image(&rules, upstream_ref)
        .ok_or_else(|| anyhow::anyhow!("{upstream_ref}: cannot map it under {to}"))?;
    let host = to.split('/').next().unwrap_or(to);
    let rest = new
        .strip_prefix(host)
        .and_then(|s| s.strip_prefix('/'))
        .ok_or_else(|| anyhow::anyhow!("{new}: does not start with {host}/"))?;
    let name_end = rest.find('@').unwrap_or(rest.len()).min(
        rest.rfind(':')
            .filter(|&i| !rest[i..].contains('/'))
            .unwrap_or(rest.len()),
    );
    let repository = rest[..name_end].to_string();
    let reference = r
        .tag
        .clone()
        .or(r.digest.as_ref().map(Digest::to_string))
        .unwrap_or_else(|| "latest".into());
    Ok((new, repository, reference))
}

pub async fn push(bundle: &Bundle, opts: &PushOptions) -> anyhow::Result<PushReport> {
    let host = opts.to.split('/').next().unwrap_or(&opts.to);
    if host.is_empty() {
        anyhow::bail!("--to: give REGISTRY[/NAMESPACE]");
    }
    let scheme = if opts.insecure { "http" } else { "https" };
    let p = Pusher::new(format!("{scheme}://{host}"), opts)?;
    let images = bundle.images()?;
    let mut report = PushReport::default();
    let mut progress = Progress::new();
    // Where this run has put each blob, for cross-repository mounts.
    let mut placed: HashMap<Digest, String> = HashMap::new();
    for img in &images {
        let old = img
            .upstream_ref
            .clone()
            .or_else(|| img.ref_name.clone())
            .ok_or_else(|| {
                anyhow::anyhow!("{}: no reference annotation to name it by", img.top.digest)
            })?;
        let (new, repo, reference) = target_of(&opts.to, &old)?;
        for (digest, size) in &img.blob_sizes {
            let outcome = retry(&mut progress, &format!("{digest} → {repo}"), || {
                p.blob(
                    bundle,
                    &repo,
                    digest,
                    *size,
                    placed.get(digest).map(String::as_str),
                )
            })
            .await?;
            match outcome {
                Outcome::Present => report.skipped += 1,
                Outcome::Mounted => report.mounted += 1,
                Outcome::Uploaded => {
                    report.uploaded += 1;
                    report.uploaded_bytes += size;
                }
            }
            progress.line(&format!(
                "{} {digest} ({}) in {repo}",
                outcome.verb(),
                human(*size)
            ));
            placed.insert(digest.clone(), repo.clone());
        }
        for m in &img.manifests {
            let is_top = m.digest == img.top.digest;
            let r = if is_top && !reference.starts_with("sha256:") {
                reference.clone()
            } else {
                m.digest.to_string()
            };
            let body = Bytes::from(bundle.read_manifest(m, &old)?);
            retry(&mut progress, &format!("manifest {r} → {repo}"), || {
                p.manifest(&repo, &r, m, body.clone())
            })
            .await?;
        }
        progress.line(&format!("pushed {old} → {new}"));
        report.mapping.push((old, new));
    }
    Ok(report)
}

enum Outcome {
    Present,
    Mounted,
    Uploaded,
}

impl Outcome {
    fn verb(&self) -> &'static str {
        match self {
            Outcome::Present => "present",
            Outcome::Mounted => "mounted",
            Outcome::Uploaded => "uploaded",
        }
    }
}

async fn retry<T, F, Fut>(progress: &mut Progress, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retry && attempt < ATTEMPTS => {
                progress.line(&format!("{what}: {e}; retrying"));
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            Err(e) => anyhow::bail!("{what}: {e}"),
        }
    }
}

fn status_failure(what: &str, status: StatusCode) -> Failure {
    Failure {
        msg: format!("{what}: the registry answered {status}"),
        retry: status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
    }
}

impl Pusher {
    fn new(base: String, opts: &PushOptions) -> anyhow::Result<Pusher> {
        let uri: Uri = base
            .parse()
            .map_err(|_| anyhow::anyhow!("--to: {base} is not a valid registry address"))?;
        let https = https_connector(HttpConnector::new(), Duration::from_secs(10));
        Ok(Pusher {
            http: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https),
            home: Origin::of(&uri),
            base,
            username: opts.username.clone(),
            password: opts.password.clone(),
            auth: Mutex::new(Auth::None),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// A path on the registry, or a `Location` it gave (absolute, scheme-relative or
    /// relative), as a URL. Resolved, not concatenated: `base` + `.evil.example/x` must not
    /// become another host.
    fn url(&self, path_or_location: &str) -> Option<Uri> {
        let root: Uri = format!("{}/", self.base).parse().ok()?;
        resolve(&root, path_or_location)
    }

    fn basic(&self) -> Option<HeaderValue> {
        let (u, p) = (self.username.as_ref()?, self.password.as_ref()?);
        Some(basic_header(u, p))
    }

    async fn authorization(&self, scopes: &[String]) -> Result<Option<HeaderValue>, Failure> {
        let auth = self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match auth {
            Auth::None => Ok(None),
            Auth::Basic => Ok(self.basic()),
            Auth::Bearer { realm, service } => {
                let key = scopes.join(" ");
                let cached = self
                    .tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .cloned();
                let token = match cached {
                    Some(t) => t,
                    None => {
                        let t = self.token(&realm, service.as_deref(), scopes).await?;
                        self.tokens
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key, t.clone());
                        t
                    }
                };
                let mut v = HeaderValue::try_from(format!("Bearer {}", token.expose()))
                    .map_err(|_| fatal("the token is not a valid header value"))?;
                v.set_sensitive(true);
                Ok(Some(v))
            }
        }
    }

    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Secret, Failure> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = service {
            q.append_pair("service", s);
        }
        for s in scopes {
            q.append_pair("scope", s);
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{sep}{}", q.finish());
        let mut b = http::Request::get(&url).header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(v) = self.basic() {
            b = b.header(AUTHORIZATION, v);
        }
        let req = b
            .body(Full::new(Bytes::new()))
            .map_err(|_| fatal("cannot form the token request"))?;
        // Not followed if it redirects (the client follows nothing by itself): the request
        // carries the password, and a redirect would take it wherever it points.
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(status_failure("token service", resp.status()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| Failure {
                msg: format!("token service: {e}"),
                retry: true,
            })?
            .to_bytes();
        #[derive(serde::Deserialize)]
        struct T {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: T = serde_json::from_slice(&body).map_err(|_| fatal("token service: not JSON"))?;
        t.token
            .or(t.access_token)
            .map(Secret::new)
            .ok_or_else(|| fatal("token service: no token in the answer"))
    }

    async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Resp, Failure> {
        match tokio::time::timeout(TIMEOUT, self.http.request(req)).await {
            Err(_) => Err(Failure {
                msg: format!("no answer within {TIMEOUT:?}"),
                retry: true,
            }),
            Ok(Err(e)) => Err(Failure {
                msg: format!("cannot connect: {}", error_chain(&e)),
                retry: true,
            }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Sends a request, answering the registry's challenge once. `target` is a path on the
    /// registry or a `Location` it gave, which may be on another origin: that one gets no
    /// credentials, and its 401 fails the request.
    async fn call(
        &self,
        method: Method,
        target: &str,
        headers: &[(http::HeaderName, String)],
        body: Bytes,
        scopes: &[String],
    ) -> Result<Resp, Failure> {
        let shown = target.split('?').next().unwrap_or(target);
        let uri = self
            .url(target)
            .ok_or_else(|| fatal(format!("{method} {shown}: not a valid URL")))?;
        let target_origin = Origin::of(&uri);
        let own_origin = target_origin == self.home;
        let mut retried = false;
        loop {
            let mut b = http::Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .header(USER_AGENT, USER_AGENT_VALUE)
                .header(CONTENT_LENGTH, body.len());
            for (k, v) in headers {
                b = b.header(k, v);
            }
            if own_origin {
                if let Some(a) = self.authorization(scopes).await? {
                    b = b.header(AUTHORIZATION, a);
                }
            }
            let req = b
                .body(Full::new(body.clone()))
                .map_err(|_| fatal("cannot form the request"))?;
            let resp = self.send(req).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if !own_origin {
                return Err(fatal(format!(
                    "{method} {shown}: upload location on {} refused the request (401); \
                     berth sends credentials only to the registry's own origin",
                    target_origin.authority()
                )));
            }
            if retried {
                return Err(fatal(format!(
                    "{method} {shown}: the registry refused the credentials"
                )));
            }
            retried = true;
            let learned = learn(&self.base, resp.headers(), self.username.is_some())
                .map_err(|m| fatal(format!("{method} {shown}: {m}")))?;
            *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = learned;
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&scopes.join(" "));
        }
    }

    async fn blob(
        &self,
        bundle: &Bundle,
        repo: &str,
        digest: &Digest,
        size: u64,
        mount_from: Option<&str>,
    ) -> Result<Outcome, Failure> {
        let mut scopes = vec![scope::pull_push(repo)];
        let head = self
            .call(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                Bytes::new(),
                &scopes,
            )
            .await?;
        if head.status() == StatusCode::OK {
            return Ok(Outcome::Present);
        }
        let mut start = format!("/v2/{repo}/blobs/uploads/");
        if let Some(from) = mount_from.filter(|f| *f != repo) {
            scopes.push(scope::pull(from));
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("mount", digest.as_str())
                .append_pair("from", from)
                .finish();
            start = format!("{start}?{q}");
        }
        let resp = self
            .call(Method::POST, &start, &[], Bytes::new(), &scopes)
            .await?;
        if resp.status() == StatusCode::CREATED && mount_from.is_some() {
            return Ok(Outcome::Mounted);
        }
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_failure("starting an upload", resp.status()));
        }
        let mut location = location(&resp)?;
        let mut reader = bundle
            .open_blob(digest)
            .map_err(|e| fatal(format!("reading {digest} from the bundle: {e}")))?;
        let mut read_chunk = |n: u64| -> Result<Bytes, Failure> {
            let mut buf = Vec::with_capacity(n as usize);
            (&mut reader)
                .take(n)
                .read_to_end(&mut buf)
                .map_err(|e| fatal(format!("reading {digest} from the bundle: {e}")))?;
            if buf.len() as u64 != n {
                return Err(fatal(format!("{digest}: the bundle ended early")));
            }
            Ok(Bytes::from(buf))
        };
        let octet = (CONTENT_TYPE, "application/octet-stream".to_string());
        let final_body = if size <= CHUNK {
            read_chunk(size)?
        } else {
            let mut sent = 0u64;
            while sent < size {
                let n = CHUNK.min(size - sent);
                let chunk = read_chunk(n)?;
                let range = (CONTENT_RANGE, format!("{}-{}", sent, sent + n - 1));
                let resp = self
                    .call(
                        Method::PATCH,
                        &location,
                        &[octet.clone(), range],
                        chunk,
                        &scopes,
                    )
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(status_failure("uploading a chunk", resp.status()));
                }
                location = location_or(&resp, location);
                sent += n;
            }
            Bytes::new()
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!(
            "{location}{sep}{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("digest", digest.as_str())
                .finish()
        );
        let resp = self
            .call(Method::PUT, &put, &[octet], final_body, &scopes)
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_failure("finishing an upload", resp.status()));
        }
        Ok(Outcome::Uploaded)
    }

    async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        m: &Descriptor,
        body: Bytes,
    ) -> Result<(), Failure> {
        let scopes = vec![scope::pull_push(repo)];
        let resp = self
            .call(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[(CONTENT_TYPE, m.media_type.clone())],
                body,
                &scopes,
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_failure(
                &format!("putting manifest {reference}"),
                resp.status(),
            ));
        }
        Ok(())
    }
}

/// How the registry's own 401 asks to authenticate (Bearer preferred), or why berth will
/// not: no realm, a realm `check_realm` refuses, or credentials the user did not give.
fn learn(base: &str, headers: &HeaderMap, has_username: bool) -> Result<Auth, String> {
    let challenges: Vec<_> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(challenge::parse)
        .collect();
    if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
        let realm = c
            .param("realm")
            .ok_or_else(|| "Bearer challenge without a realm".to_string())?;
        check_realm(base, realm).map_err(|e| e.to_string())?;
        return Ok(Auth::Bearer {
            realm: realm.to_string(),
            service: c.param("service").map(str::to_string),
        });
    }
    if challenges.iter().any(|c| c.scheme == "basic") && has_username {
        return Ok(Auth::Basic);
    }
    Err("the registry wants credentials (--username, --password-stdin)".into())
}

fn location(resp: &Resp) -> Result<String, Failure> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| fatal("the registry gave no upload Location"))
}

fn location_or(resp: &Resp, old: String) -> String {
    location(resp).unwrap_or(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn realms_follow_the_upstream_rule() {
        let https = challenge("Bearer realm=\"https://auth.example/token\",service=\"r\"");
        let http = challenge("Bearer realm=\"http://auth.example/token\"");
        assert_eq!(
            learn("https://reg.example", &https, true),
            Ok(Auth::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("r".into())
            })
        );
        // No downgrade of the password to plain HTTP from an HTTPS registry.
        let refused = learn("https://reg.example", &http, true).unwrap_err();
        assert!(refused.contains("plain http"), "{refused}");
        assert!(learn("http://127.0.0.1:5000", &http, true).is_ok());
        assert!(learn(
            "https://reg.example",
            &challenge("Bearer realm=\"/token\""),
            true
        )
        .is_err());
        assert_eq!(
            learn("https://reg.example", &challenge("Basic realm=\"r\""), true),
            Ok(Auth::Basic)
        );
        assert!(learn(
            "https://reg.example",
            &challenge("Basic realm=\"r\""),
            false
        )
        .is_err());
    }

    #[test]
    fn locations_resolve_against_the_registry() {
        let opts = PushOptions {
            to: "reg.example".into(),
            username: None,
            password: None,
            insecure: false,
        };
        let p = Pusher::new("https://reg.example".into(), &opts).unwrap();
        let url = |t: &str| p.url(t).map(|u| u.to_string());
        assert_eq!(
            url("/v2/a/blobs/uploads/").as_deref(),
            Some("https://reg.example/v2/a/blobs/uploads/")
        );
        assert_eq!(
            url("https://up.example/u?x=1").as_deref(),
            Some("https://up.example/u?x=1")
        );
        // Relative: a path under the registry, never a longer host name.
        assert_eq!(
            url(".evil.example/x").as_deref(),
            Some("https://reg.example/.evil.example/x")
        );
        assert_eq!(
            url("//cdn.example/u").as_deref(),
            Some("https://cdn.example/u")
        );
        assert_eq!(
            Origin::of(&p.url("/v2/").unwrap()),
            p.home,
            "the registry's own paths are its origin"
        );
    }

    #[test]
    fn targets_follow_the_rewriter() {
        let (new, repo, r) = target_of("reg.local:5000/ns", "upstream.test/acme/api:1.2").unwrap();
        assert_eq!(new, "reg.local:5000/ns/upstream.test/acme/api:1.2");
        assert_eq!(repo, "ns/upstream.test/acme/api");
        assert_eq!(r, "1.2");
        let d = format!("sha256:{}", "a".repeat(64));
        let (new, repo, r) =
            target_of("reg.local", &format!("upstream.test/acme/api@{d}")).unwrap();
        assert_eq!(new, format!("reg.local/upstream.test/acme/api@{d}"));
        assert_eq!(repo, "upstream.test/acme/api");
        assert_eq!(r, d);
    }
}
