//! Customer authentication and entitlements: who is asking (a license, by HTTP Basic with
//! the license id, or by a berth-issued bearer token) and what that license may pull.

pub mod ratelimit;
pub mod token;

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;

use crate::config::{Config, License};
use crate::error::Error;
use crate::oci::repo::RepoPath;
use crate::oci::scope::Access;
use ratelimit::LoginThrottle;
use token::{Claims, Issuer};

/// Why a request was not authenticated; logged for operators, never sent to clients
/// beyond a plain 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Malformed,
    Unknown,
    Expired,
    Revoked,
    BadToken,
    /// Too many failed logins from this source; try again after this long.
    Throttled(Duration),
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "no credentials",
            Rejection::Malformed => "malformed credentials",
            Rejection::Unknown => "unknown license",
            Rejection::Expired => "license expired",
            Rejection::Revoked => "license revoked",
            Rejection::BadToken => "invalid, expired or foreign token",
            Rejection::Throttled(_) => "too many failed logins from this source",
        }
    }

    /// What the client is told: 429 with `Retry-After` when throttled, else a plain 401.
    pub fn error(self) -> Error {
        match self {
            Rejection::Throttled(wait) => Error::TooManyRequests {
                retry_after: Some(wait.as_secs_f64().ceil().max(1.0).to_string()),
            },
            _ => Error::Unauthorized,
        }
    }
}

/// Where a login comes from, for the failed-login throttle.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub throttle: &'a LoginThrottle,
    pub ip: IpAddr,
}

/// An authenticated caller: the license, and the token it came with (a token narrows
/// what the license may do to the token's scopes).
pub struct Principal<'c> {
    pub license: &'c License,
    pub token: Option<Claims>,
}

impl Principal<'_> {
    /// Whether this caller may pull `repo`: the license's app and image globs, and for a
    /// token, its scopes. Runs on every request, so a reload that narrows a license or a
    /// token for another repository is refused at once.
    pub fn may_pull(&self, repo: &RepoPath) -> Result<(), Error> {
        if self.license.app != repo.app {
            return Err(Error::Denied(format!(
                "this license is not entitled to app {:?}",
                repo.app
            )));
        }
        if !self.license.allows_image(&repo.host, &repo.repository) {
            return Err(Error::Denied(format!(
                "this license is not entitled to {}/{}",
                repo.host, repo.repository
            )));
        }
        if let Some(claims) = &self.token {
            if !claims.allows_pull(&repo.name()) {
                return Err(Error::Unauthorized);
            }
        }
        Ok(())
    }
}

/// Checks an `Authorization` header value: Basic with username = password = license id
/// (throttled per source), or a bearer token issued by berth for this hostname.
pub fn authenticate<'c>(
    config: &'c Config,
    issuer: &Issuer,
    authorization: Option<&str>,
    source: Source<'_>,
    now: SystemTime,
) -> Result<Principal<'c>, Rejection> {
    let value = authorization.ok_or(Rejection::Missing)?;
    let (scheme, rest) = value.split_once(' ').ok_or(Rejection::Malformed)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let claims = issuer
            .verify(rest.trim(), &config.server.hostname)
            .ok_or(Rejection::BadToken)?;
        let license = config
            .tenants
            .license_by_fingerprint(&claims.sub)
            .ok_or(Rejection::Unknown)?;
        check_active(license, now)?;
        return Ok(Principal {
            license,
            token: Some(claims),
        });
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Rejection::Malformed);
    }
    let (user, password) = decode_basic(rest).ok_or(Rejection::Malformed)?;
    let license = throttled_login(config, source, &user, &password, now)?;
    Ok(Principal {
        license,
        token: None,
    })
}

/// Splits a Basic credential (the part after `Basic `).
pub fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// [`license_login`] behind the failed-login throttle of `source`: a throttled source is
/// refused before its credentials are looked at; a wrong id counts against it.
pub fn throttled_login<'c>(
    config: &'c Config,
    source: Source<'_>,
    user: &str,
    password: &str,
    now: SystemTime,
) -> Result<&'c License, Rejection> {
    let at = Instant::now();
    source
        .throttle
        .admit(source.ip, || crate::config::fingerprint(user), at)
        .map_err(Rejection::Throttled)?;
    match license_login(config, user, password, now) {
        Ok(l) => {
            source.throttle.succeeded(source.ip, &l.fingerprint, at);
            Ok(l)
        }
        Err(Rejection::Unknown) => {
            source.throttle.failed(source.ip, at);
            Err(Rejection::Unknown)
        }
        // Expired and revoked licenses are real ids: nothing was guessed.
        Err(e) => Err(e),
    }
}

/// A license login: username and password are both the license id.
pub fn license_login<'c>(
    config: &'c Config,
    user: &str,
    password: &str,
    now: SystemTime,
) -> Result<&'c License, Rejection> {
    let license = config
        .tenants
        .license_by_secret(user)
        .ok_or(Rejection::Unknown)?;
    if !constant_time_eq(user.as_bytes(), password.as_bytes()) {
        return Err(Rejection::Unknown);
    }
    check_active(license, now)?;
    Ok(license)
}

fn check_active(license: &License, now: SystemTime) -> Result<(), Rejection> {
    if license.revoked {
        return Err(Rejection::Revoked);
    }
    if !license.is_active(now) {
        return Err(Rejection::Expired);
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a token for `license` may carry: of the requested scopes, only `pull` on
/// repositories the license is entitled to. Everything else (push, `*`, the catalog,
/// other apps) is silently left out, as the token spec asks.
pub fn grant(license: &License, requested: &[Access]) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for a in requested {
        // `*` means every action (as distribution reads it); the only one berth grants is pull.
        if a.kind != "repository" || !a.actions.iter().any(|x| x == "pull" || x == "*") {
            continue;
        }
        let Ok(repo) = RepoPath::parse(&a.name) else {
            continue;
        };
        let who = Principal {
            license,
            token: None,
        };
        if who.may_pull(&repo).is_err() {
            continue;
        }
        if !out.iter().any(|o| o.name == a.name) {
            out.push(Access {
                kind: "repository".into(),
                name: a.name.clone(),
                actions: vec!["pull".into()],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::scope;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            r#"
server: { listen: "127.0.0.1:0", hostname: images.acme.test }
cache: { dir: /tmp/x }
upstreams: [ { name: u, url: "http://127.0.0.1:1" } ]
apps: [ { slug: acme, upstreams: [u] }, { slug: other, upstreams: [u] } ]
licenses:
  - { id: good-license-1, app: acme, customer: A }
  - { id: old-license-1, app: acme, customer: B, expires: "2020-01-01T00:00:00Z" }
  - { id: gone-license-1, app: acme, customer: C, revoked: true }
"#,
            Path::new("/"),
            &|_| None,
        )
        .unwrap()
    }

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    fn issuer() -> Issuer {
        Issuer::from_key(&[1u8; 32], std::time::Duration::from_secs(300))
    }

    fn authenticate<'c>(
        config: &'c Config,
        issuer: &Issuer,
        authorization: Option<&str>,
        now: SystemTime,
    ) -> Result<Principal<'c>, Rejection> {
        let throttle = LoginThrottle::default();
        let source = Source {
            throttle: &throttle,
            ip: [127, 0, 0, 1].into(),
        };
        super::authenticate(config, issuer, authorization, source, now)
    }

    #[test]
    fn wrong_ids_throttle_the_source_before_credentials_are_checked() {
        let c = config();
        let i = issuer();
        let now = SystemTime::now();
        let throttle = LoginThrottle::default();
        let at = |ip: [u8; 4]| Source {
            throttle: &throttle,
            ip: ip.into(),
        };
        let good = basic("good-license-1", "good-license-1");
        assert!(super::authenticate(&c, &i, Some(&good), at([10, 0, 0, 1]), now).is_ok());
        for n in 0..ratelimit::LOGIN_FAILURE_BURST {
            let h = basic(&format!("guess-{n:04}"), &format!("guess-{n:04}"));
            assert_eq!(
                super::authenticate(&c, &i, Some(&h), at([10, 0, 0, 1]), now).err(),
                Some(Rejection::Unknown)
            );
        }
        // One guess more is throttled.
        let h = basic("guess-last", "guess-last");
        let Some(Rejection::Throttled(wait)) =
            super::authenticate(&c, &i, Some(&h), at([10, 0, 0, 1]), now).err()
        else {
            panic!("not throttled");
        };
        assert!(matches!(
            Rejection::Throttled(wait).error(),
            Error::TooManyRequests { retry_after: Some(ref s) } if s == "1"
        ));
        // The license that logged in from there before keeps working; others' sources too.
        assert!(super::authenticate(&c, &i, Some(&good), at([10, 0, 0, 1]), now).is_ok());
        assert_eq!(
            super::authenticate(&c, &i, Some(&h), at([10, 0, 0, 2]), now).err(),
            Some(Rejection::Unknown)
        );
    }

    #[test]
    fn basic_license_login() {
        let c = config();
        let i = issuer();
        let now = SystemTime::now();
        let h = basic("good-license-1", "good-license-1");
        assert_eq!(
            authenticate(&c, &i, Some(&h), now)
                .unwrap()
                .license
                .customer,
            "A"
        );
        let cases = [
            (None, Rejection::Missing),
            (Some("Bearer x".to_string()), Rejection::BadToken),
            (Some("Digest x".to_string()), Rejection::Malformed),
            (Some("Basic !!!".to_string()), Rejection::Malformed),
            (Some(basic("good-license-1", "wrong")), Rejection::Unknown),
            (
                Some(basic("nobody-at-all", "nobody-at-all")),
                Rejection::Unknown,
            ),
            (
                Some(basic("old-license-1", "old-license-1")),
                Rejection::Expired,
            ),
            (
                Some(basic("gone-license-1", "gone-license-1")),
                Rejection::Revoked,
            ),
        ];
        for (h, want) in cases {
            assert_eq!(
                authenticate(&c, &i, h.as_deref(), now).err(),
                Some(want),
                "{h:?}"
            );
        }
    }

    fn repo(app: &str, repository: &str) -> RepoPath {
        RepoPath {
            app: app.into(),
            host: "q.io".into(),
            repository: repository.into(),
        }
    }

    #[test]
    fn other_apps_are_denied() {
        let c = config();
        let l = c.tenants.license_by_secret("good-license-1").unwrap();
        let p = Principal {
            license: l,
            token: None,
        };
        assert!(p.may_pull(&repo("acme", "acme/api")).is_ok());
        assert!(matches!(
            p.may_pull(&repo("other", "acme/api")),
            Err(Error::Denied(_))
        ));
    }

    #[test]
    fn grants_only_entitled_pulls() {
        let c = config();
        let l = c.tenants.license_by_secret("good-license-1").unwrap();
        let req = scope::parse_all([
            "repository:proxy/acme/q.io/acme/api:pull,push",
            "repository:proxy/other/q.io/acme/api:pull",
            "repository:proxy/acme/q.io/acme/api:*",
            "registry:catalog:*",
            "repository:../etc:pull",
        ]);
        let g = grant(l, &req);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].name, "proxy/acme/q.io/acme/api");
        assert_eq!(g[0].actions, vec!["pull"]);
        let star = grant(
            l,
            &scope::parse_all(["repository:proxy/acme/q.io/acme/web:*"]),
        );
        assert_eq!(star.len(), 1);
        assert_eq!(star[0].actions, vec!["pull"]);
    }

    #[test]
    fn tokens_follow_revocation_and_scope() {
        let c = config();
        let i = issuer();
        let now = SystemTime::now();
        let l = c.tenants.license_by_secret("good-license-1").unwrap();
        let t = i.issue(
            &l.fingerprint,
            "images.acme.test",
            grant(
                l,
                &scope::parse_all(["repository:proxy/acme/q.io/acme/api:pull"]),
            ),
        );
        let h = format!("Bearer {}", t.token.expose());
        let p = authenticate(&c, &i, Some(&h), now).unwrap();
        assert!(p.may_pull(&repo("acme", "acme/api")).is_ok());
        assert!(matches!(
            p.may_pull(&repo("acme", "acme/other")),
            Err(Error::Unauthorized)
        ));
        let gone = c.tenants.license_by_secret("gone-license-1").unwrap();
        let t = i.issue(&gone.fingerprint, "images.acme.test", vec![]);
        let h = format!("Bearer {}", t.token.expose());
        assert_eq!(
            authenticate(&c, &i, Some(&h), now).err(),
            Some(Rejection::Revoked)
        );
    }
}
