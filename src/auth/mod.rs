//! Customer authentication and entitlements: who is asking (a license or an API key, by
//! HTTP Basic with its secret as password, or by a berth-issued bearer token) and what it
//! may pull.

pub mod ratelimit;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;

use crate::config::{Action, ApiKey, Config, License, State};
use crate::error::Error;
use crate::oci::repo::{HostedPath, MirrorPath, RepoPath};
use crate::oci::scope::Access;
use crate::state::{Directory, Found};
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
    KeyExpired,
    KeyRevoked,
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
            Rejection::KeyExpired => "API key expired",
            Rejection::KeyRevoked => "API key revoked",
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
            // The secret matched: its holder may learn that it lapsed or was revoked.
            Rejection::Expired
            | Rejection::Revoked
            | Rejection::KeyExpired
            | Rejection::KeyRevoked => Error::LoginRefused(self.as_str()),
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

/// Who berth knows: the config file's licenses (`Config::tenants`) and the state store's
/// licenses and API keys (`Directory`). Both are snapshots; nothing here reaches a database.
#[derive(Clone, Copy)]
pub struct Identities<'a> {
    pub config: &'a Config,
    pub directory: &'a Directory,
}

impl Identities<'_> {
    /// The license or key whose secret `password` is.
    fn by_secret(&self, password: &str) -> Option<Subject> {
        match self.directory.by_secret(password) {
            Some(Found::Key(k)) => return Some(Subject::Key(k)),
            Some(Found::License(l)) => return Some(Subject::License(l)),
            None => {}
        }
        self.config
            .tenants
            .license_by_secret(password)
            .map(Subject::License)
    }

    /// The license or key with public id `id` (a token's subject).
    fn by_id(&self, id: &str) -> Option<Subject> {
        if let Some(l) = self.directory.license(id) {
            return Some(Subject::License(l));
        }
        if let Some(k) = self.directory.key(id) {
            return Some(Subject::Key(k));
        }
        self.config.tenants.license(id).map(Subject::License)
    }
}

/// Who a request comes from: a customer's license or a vendor's API key.
#[derive(Debug, Clone)]
pub enum Subject {
    License(Arc<License>),
    Key(Arc<ApiKey>),
}

impl Subject {
    /// The public id (`lic_…`, `key_…`, or a config license's fingerprint).
    pub fn id(&self) -> &str {
        match self {
            Subject::License(l) => &l.id,
            Subject::Key(k) => &k.id,
        }
    }

    /// The customer's name, or the key's.
    pub fn name(&self) -> &str {
        match self {
            Subject::License(l) => &l.customer,
            Subject::Key(k) => &k.name,
        }
    }

    /// The apps whose hosted repositories this subject may list (`/v2/_catalog`): a
    /// license's app, a key's apps.
    pub fn hosted_apps(&self) -> Vec<String> {
        match self {
            Subject::License(l) => vec![l.app.clone()],
            Subject::Key(k) => k.apps.clone(),
        }
    }

    /// Whether the catalog shows this subject a hosted repository: any of a key's apps
    /// (whatever its actions: a push-only CI key sees what it pushes to), a license's app
    /// narrowed by its image globs, as for pulls.
    pub fn may_list(&self, app: &str, repository: &str) -> bool {
        match self {
            Subject::License(l) => l.app == app && l.allows_image(app, repository),
            Subject::Key(k) => k.apps.iter().any(|a| a == app),
        }
    }

    pub fn license(&self) -> Option<&License> {
        match self {
            Subject::License(l) => Some(l),
            Subject::Key(_) => None,
        }
    }

    fn check_active(&self, now: SystemTime) -> Result<(), Rejection> {
        match self {
            Subject::License(l) => match l.state(now) {
                State::Active => Ok(()),
                State::Expired => Err(Rejection::Expired),
                State::Revoked => Err(Rejection::Revoked),
            },
            Subject::Key(k) => match k.state(now) {
                State::Active => Ok(()),
                State::Expired => Err(Rejection::KeyExpired),
                State::Revoked => Err(Rejection::KeyRevoked),
            },
        }
    }

    /// Whether this license or key may pull `repo` (before any token narrows it).
    fn may_pull(&self, repo: &RepoPath) -> Result<(), Error> {
        match self {
            Subject::License(license) => {
                if license.app != repo.app {
                    return Err(Error::Denied(format!(
                        "this license is not entitled to app {:?}",
                        repo.app
                    )));
                }
                if !license.allows_image(&repo.host, &repo.repository) {
                    return Err(Error::Denied(format!(
                        "this license is not entitled to {}/{}",
                        repo.host, repo.repository
                    )));
                }
                Ok(())
            }
            Subject::Key(key) => {
                if !key.allows(&repo.app, Action::Pull) {
                    return Err(Error::Denied(format!(
                        "this API key may not pull from app {:?}",
                        repo.app
                    )));
                }
                Ok(())
            }
        }
    }
}

impl Subject {
    /// Whether this license or key may do `action` on the hosted repository `repo`. A key:
    /// its apps and actions. A license: pull only, of its own app, narrowed by its image
    /// globs, which for a hosted repository are matched against `<app>/<repository>` (the
    /// name the customer pulls at berth, e.g. `acme/worker`), as for a proxied one against
    /// `<host>/<repository>`: a license limited to `quay.io/acme/*` sees no hosted image
    /// unless a glob such as `acme/*` names it.
    pub fn may_hosted(&self, repo: &HostedPath, action: Action) -> Result<(), Error> {
        match self {
            Subject::License(license) => {
                if action != Action::Pull {
                    return Err(Error::Denied(format!(
                        "a license may not {} images",
                        action.as_str()
                    )));
                }
                if license.app != repo.app {
                    return Err(Error::Denied(format!(
                        "this license is not entitled to app {:?}",
                        repo.app
                    )));
                }
                if !license.allows_image(&repo.app, &repo.repository) {
                    return Err(Error::Denied(format!(
                        "this license is not entitled to {}",
                        repo.name()
                    )));
                }
                Ok(())
            }
            Subject::Key(key) => {
                if !key.allows(&repo.app, action) {
                    return Err(Error::Denied(format!(
                        "this API key may not {} in app {:?}",
                        action.as_str(),
                        repo.app
                    )));
                }
                Ok(())
            }
        }
    }
}

/// An authenticated caller: the license or key, and the token it came with (a token
/// narrows what the subject may do to the token's scopes).
pub struct Principal {
    pub subject: Subject,
    pub token: Option<Claims>,
}

impl Principal {
    /// Whether this caller may pull `repo`: the license's app and image globs (or the key's
    /// apps and actions), and for a token, its scopes. Runs on every request against the
    /// current snapshot, so a revocation or a narrowed license is refused at once.
    pub fn may_pull(&self, repo: &RepoPath) -> Result<(), Error> {
        self.subject.may_pull(repo)?;
        if let Some(claims) = &self.token {
            if !claims.allows_pull(&repo.name()) {
                return Err(Error::Unauthorized);
            }
        }
        Ok(())
    }
}

impl Principal {
    /// As [`Principal::may_pull`] for a mirror request resolved to `repo`: a token may name
    /// it as berth's challenge did (`<host>/<repository>`), as the node's runtime did
    /// (Docker's daemon: `library/redis`) or by berth's own path.
    pub fn may_pull_mirrored(&self, repo: &RepoPath, mirror: &MirrorPath) -> Result<(), Error> {
        self.subject.may_pull(repo)?;
        if let Some(claims) = &self.token {
            let named = claims.access.iter().any(|a| {
                a.kind == "repository"
                    && a.actions.iter().any(|x| x == "pull")
                    && (a.name == repo.name() || mirror.is_named(&a.name))
            });
            if !named {
                return Err(Error::Unauthorized);
            }
        }
        Ok(())
    }
}

/// Which of the subject's apps serves a mirror request: the first (a license has one, a
/// key lists its apps in order) with an upstream for the registry and repository. None
/// → 404 `NAME_UNKNOWN` naming the registry, so the operator sees which host is missing.
pub fn mirror_repo(config: &Config, subject: &Subject, m: &MirrorPath) -> Result<RepoPath, Error> {
    let apps: Vec<&str> = match subject {
        Subject::License(l) => vec![l.app.as_str()],
        Subject::Key(k) => k
            .apps
            .iter()
            .filter(|a| k.allows(a, Action::Pull))
            .map(String::as_str)
            .collect(),
    };
    let serving = apps.iter().find(|slug| {
        config
            .app(slug)
            .is_some_and(|a| a.select(&m.host, &m.repository).is_some())
    });
    match serving {
        Some(app) => Ok(RepoPath {
            app: app.to_string(),
            host: m.host.clone(),
            repository: m.repository.clone(),
        }),
        None => Err(Error::NameUnknown(format!(
            "{}: no upstream of app {} serves registry {}",
            m.name(),
            apps.join(", "),
            m.host
        ))),
    }
}

impl Principal {
    /// Whether this caller may do `action` on a hosted repository: the subject as it is in
    /// the current snapshot (a revoked key is refused at its next request, also in the
    /// middle of an upload), and for a token, its scopes.
    pub fn may_hosted(&self, repo: &HostedPath, action: Action) -> Result<(), Error> {
        self.subject.may_hosted(repo, action)?;
        if let Some(claims) = &self.token {
            if !claims.allows(&repo.name(), action.as_str()) {
                return Err(Error::Unauthorized);
            }
        }
        Ok(())
    }
}

/// Checks an `Authorization` header value: Basic with the license secret or API key as
/// password (throttled per source), or a bearer token issued by berth for this hostname
/// whose subject is still active in the current snapshot.
pub fn authenticate(
    ids: Identities<'_>,
    issuer: &Issuer,
    authorization: Option<&str>,
    source: Source<'_>,
    now: SystemTime,
) -> Result<Principal, Rejection> {
    let value = authorization.ok_or(Rejection::Missing)?;
    let (scheme, rest) = value.split_once(' ').ok_or(Rejection::Malformed)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let claims = issuer
            .verify(rest.trim(), &ids.config.server.hostname)
            .ok_or(Rejection::BadToken)?;
        let subject = ids.by_id(&claims.sub).ok_or(Rejection::Unknown)?;
        subject.check_active(now)?;
        // A token from before the license's secret was rotated came from the old secret.
        // (`iat` has whole seconds: one issued in the rotation's own second is let be.)
        if let Some(rotated) = subject.license().and_then(|l| l.rotated) {
            let rotated_s = rotated
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if claims.iat < rotated_s {
                return Err(Rejection::BadToken);
            }
        }
        return Ok(Principal {
            subject,
            token: Some(claims),
        });
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Rejection::Malformed);
    }
    let (_user, password) = decode_basic(rest).ok_or(Rejection::Malformed)?;
    let subject = throttled_login(ids, source, &password, now)?;
    Ok(Principal {
        subject,
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

/// A login by secret (the username is not checked: `-u <license id or anything>`, `-u api`
/// for keys) behind the failed-login throttle of `source`: a throttled source is refused
/// whatever it presents, unless it logged in with this same license or key before; an
/// unknown secret counts against it.
pub fn throttled_login(
    ids: Identities<'_>,
    source: Source<'_>,
    password: &str,
    now: SystemTime,
) -> Result<Subject, Rejection> {
    let at = Instant::now();
    let found = ids.by_secret(password);
    source
        .throttle
        .admit(
            source.ip,
            || match &found {
                Some(s) => s.id().to_string(),
                None => crate::config::fingerprint(password),
            },
            at,
        )
        .map_err(Rejection::Throttled)?;
    let Some(subject) = found else {
        source.throttle.failed(source.ip, at);
        return Err(Rejection::Unknown);
    };
    // Expired and revoked secrets are real: nothing was guessed.
    subject.check_active(now)?;
    source.throttle.succeeded(source.ip, subject.id(), at);
    Ok(subject)
}

/// What a token for `subject` may carry: of the requested scopes, only `pull` on
/// repositories the license (or key) is entitled to. Everything else (push, `*`, the
/// catalog, other apps) is silently left out, as the token spec asks.
pub fn grant(subject: &Subject, requested: &[Access]) -> Vec<Access> {
    let mut out: Vec<Access> = Vec::new();
    for a in requested {
        // A hosted repository (`<app>/<repository>`): each requested action the subject
        // may do (`*` is all three); licenses never get push or delete.
        if a.kind == "repository" && !a.name.starts_with("proxy/") {
            let Ok(repo) = HostedPath::parse(&a.name) else {
                continue;
            };
            let actions: Vec<String> = Action::ALL
                .into_iter()
                .filter(|act| {
                    a.actions.iter().any(|x| x == act.as_str() || x == "*")
                        && subject.may_hosted(&repo, *act).is_ok()
                })
                .map(|act| act.as_str().to_string())
                .collect();
            if actions.is_empty() {
                continue;
            }
            match out.iter_mut().find(|o| o.name == a.name) {
                Some(o) => {
                    for x in actions {
                        if !o.actions.contains(&x) {
                            o.actions.push(x);
                        }
                    }
                }
                None => out.push(Access {
                    kind: "repository".into(),
                    name: a.name.clone(),
                    actions,
                }),
            }
            continue;
        }
        // `*` means every action (as distribution reads it); the only one berth grants is pull.
        if a.kind != "repository" || !a.actions.iter().any(|x| x == "pull" || x == "*") {
            continue;
        }
        let Ok(repo) = RepoPath::parse(&a.name) else {
            continue;
        };
        if subject.may_pull(&repo).is_err() {
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

/// As [`grant`], for a token endpoint that also serves mirror requests: a requested
/// repository that is none of the subject's hosted ones is read as a mirrored name
/// (`quay.io/acme/api`, or Docker Hub's `library/redis`) and granted pull when one of the
/// subject's apps serves it and the subject may pull it there.
pub fn grant_with_mirrors(config: &Config, subject: &Subject, requested: &[Access]) -> Vec<Access> {
    let mut out = grant(subject, requested);
    for a in requested {
        if a.kind != "repository"
            || a.name.starts_with("proxy/")
            || !a.actions.iter().any(|x| x == "pull" || x == "*")
            || out.iter().any(|o| o.name == a.name)
        {
            continue;
        }
        let Some(m) = MirrorPath::from_scope(&a.name) else {
            continue;
        };
        let Ok(repo) = mirror_repo(config, subject, &m) else {
            continue;
        };
        if subject.may_pull(&repo).is_ok() {
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

    fn directory() -> Directory {
        Directory::empty(crate::state::SecretHasher::new(&[7; 32]))
    }

    fn ids<'a>(config: &'a Config, directory: &'a Directory) -> Identities<'a> {
        Identities { config, directory }
    }

    fn authenticate(
        config: &Config,
        issuer: &Issuer,
        authorization: Option<&str>,
        now: SystemTime,
    ) -> Result<Principal, Rejection> {
        let throttle = LoginThrottle::default();
        let source = Source {
            throttle: &throttle,
            ip: [127, 0, 0, 1].into(),
        };
        let d = directory();
        super::authenticate(ids(config, &d), issuer, authorization, source, now)
    }

    fn config_license(c: &Config, secret: &str) -> Subject {
        Subject::License(c.tenants.license_by_secret(secret).unwrap())
    }

    #[test]
    fn wrong_ids_throttle_the_source_before_credentials_are_checked() {
        let c = config();
        let d = directory();
        let c = ids(&c, &d);
        let i = issuer();
        let now = SystemTime::now();
        let throttle = LoginThrottle::default();
        let at = |ip: [u8; 4]| Source {
            throttle: &throttle,
            ip: ip.into(),
        };
        let good = basic("good-license-1", "good-license-1");
        assert!(super::authenticate(c, &i, Some(&good), at([10, 0, 0, 1]), now).is_ok());
        for n in 0..ratelimit::LOGIN_FAILURE_BURST {
            let h = basic(&format!("guess-{n:04}"), &format!("guess-{n:04}"));
            assert_eq!(
                super::authenticate(c, &i, Some(&h), at([10, 0, 0, 1]), now).err(),
                Some(Rejection::Unknown)
            );
        }
        // One guess more is throttled.
        let h = basic("guess-last", "guess-last");
        let Some(Rejection::Throttled(wait)) =
            super::authenticate(c, &i, Some(&h), at([10, 0, 0, 1]), now).err()
        else {
            panic!("not throttled");
        };
        assert!(matches!(
            Rejection::Throttled(wait).error(),
            Error::TooManyRequests { retry_after: Some(ref s) } if s == "1"
        ));
        // The license that logged in from there before keeps working; others' sources too.
        assert!(super::authenticate(c, &i, Some(&good), at([10, 0, 0, 1]), now).is_ok());
        assert_eq!(
            super::authenticate(c, &i, Some(&h), at([10, 0, 0, 2]), now).err(),
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
            authenticate(&c, &i, Some(&h), now).unwrap().subject.name(),
            "A"
        );
        let cases = [
            (None, Rejection::Missing),
            (Some("Bearer x".to_string()), Rejection::BadToken),
            (Some("Digest x".to_string()), Rejection::Malformed),
            (Some("Basic !!!".to_string()), Rejection::Malformed),
            (Some(basic("good-license-1", "wrong")), Rejection::Unknown),
            // Any username goes with the secret.
            (Some(basic("anything", "old-license-1")), Rejection::Expired),
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
        let p = Principal {
            subject: config_license(&c, "good-license-1"),
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
        let l = config_license(&c, "good-license-1");
        let req = scope::parse_all([
            "repository:proxy/acme/q.io/acme/api:pull,push",
            "repository:proxy/other/q.io/acme/api:pull",
            "repository:proxy/acme/q.io/acme/api:*",
            "registry:catalog:*",
            "repository:../etc:pull",
        ]);
        let g = grant(&l, &req);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].name, "proxy/acme/q.io/acme/api");
        assert_eq!(g[0].actions, vec!["pull"]);
        let star = grant(
            &l,
            &scope::parse_all(["repository:proxy/acme/q.io/acme/web:*"]),
        );
        assert_eq!(star.len(), 1);
        assert_eq!(star[0].actions, vec!["pull"]);
    }

    #[test]
    fn grants_hosted_actions_by_key_and_only_pulls_to_licenses() {
        let c = config();
        let key = Subject::Key(Arc::new(ApiKey {
            id: "key_1".into(),
            name: "ci".into(),
            apps: vec!["acme".into()],
            actions: vec![Action::Push, Action::Pull],
            expires: None,
            revoked: false,
        }));
        let req = scope::parse_all([
            "repository:acme/worker:pull,push,delete",
            "repository:other/worker:pull,push",
            "repository:proxy/x:push",
        ]);
        let g = grant(&key, &req);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(g[0].name, "acme/worker");
        assert_eq!(g[0].actions, vec!["pull", "push"]);
        let l = config_license(&c, "good-license-1");
        let g = grant(&l, &scope::parse_all(["repository:acme/worker:*"]));
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].actions, vec!["pull"]);
        assert!(grant(&l, &scope::parse_all(["repository:other/worker:pull"])).is_empty());
        let repo = HostedPath::parse("acme/worker").unwrap();
        assert!(l.may_hosted(&repo, Action::Push).is_err());
        assert!(key.may_hosted(&repo, Action::Delete).is_err());
        assert!(key.may_hosted(&repo, Action::Push).is_ok());
    }

    #[test]
    fn tokens_follow_revocation_and_scope() {
        let c = config();
        let i = issuer();
        let now = SystemTime::now();
        let l = config_license(&c, "good-license-1");
        let t = i.issue(
            l.id(),
            "images.acme.test",
            grant(
                &l,
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
        let gone = config_license(&c, "gone-license-1");
        let t = i.issue(gone.id(), "images.acme.test", vec![]);
        let h = format!("Bearer {}", t.token.expose());
        assert_eq!(
            authenticate(&c, &i, Some(&h), now).err(),
            Some(Rejection::Revoked)
        );
    }

    /// Stored licenses and keys log in by secret alone; a key pulls only its apps, a
    /// revoked one (and its tokens) is refused at the next refresh.
    #[tokio::test]
    async fn stored_licenses_and_keys() {
        use crate::state::{sqlite::SqliteStore, suite, LicenseChange, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db"))
            .await
            .unwrap();
        store
            .insert_license(&suite::license("lic_s", store.hasher(), "berth_lic_s"))
            .await
            .unwrap();
        store
            .insert_key(&suite::key("key_s", store.hasher(), "berth_key_s"))
            .await
            .unwrap();
        let d = Directory::load(&store).await.unwrap();
        let c = config();
        let i = issuer();
        let now = SystemTime::now();
        let throttle = LoginThrottle::default();
        let source = Source {
            throttle: &throttle,
            ip: [127, 0, 0, 1].into(),
        };
        let login = |u: &str, p: &str| {
            super::authenticate(ids(&c, &d), &i, Some(&basic(u, p)), source, now)
        };
        let l = login("lic_s", "berth_lic_s").unwrap();
        assert_eq!(l.subject.id(), "lic_s");
        // The suite's license is narrowed to quay.io/acme/*.
        let quay = RepoPath {
            app: "acme".into(),
            host: "quay.io".into(),
            repository: "acme/api".into(),
        };
        assert!(l.may_pull(&quay).is_ok());
        assert!(matches!(
            l.may_pull(&repo("acme", "acme/api")),
            Err(Error::Denied(_))
        ));
        let k = login("api", "berth_key_s").unwrap();
        assert_eq!(k.subject.id(), "key_s");
        assert!(k.may_pull(&repo("acme", "acme/api")).is_ok());
        assert!(k.may_pull(&repo("beta", "x/y")).is_ok());
        assert!(matches!(
            k.may_pull(&repo("other", "x/y")),
            Err(Error::Denied(_))
        ));
        // The id is not a password.
        assert_eq!(login("api", "key_s").err(), Some(Rejection::Unknown));
        // A token for the key names it; revoking the key refuses the token.
        let t = i.issue(
            k.subject.id(),
            "images.acme.test",
            grant(
                &k.subject,
                &scope::parse_all(["repository:proxy/beta/q.io/x/y:pull,push"]),
            ),
        );
        let bearer = format!("Bearer {}", t.token.expose());
        let p = super::authenticate(ids(&c, &d), &i, Some(&bearer), source, now).unwrap();
        assert!(p.may_pull(&repo("beta", "x/y")).is_ok());
        // A license's token from before its secret was rotated is refused; a later one not.
        let before = i.issue("lic_s", "images.acme.test", vec![]);
        let before = format!("Bearer {}", before.token.expose());
        assert!(super::authenticate(ids(&c, &d), &i, Some(&before), source, now).is_ok());
        store
            .update_license(
                "lic_s",
                &LicenseChange {
                    rotated: Some(SystemTime::now() + Duration::from_secs(2)),
                    ..LicenseChange::default()
                },
            )
            .await
            .unwrap();
        assert!(d.refresh(&store).await.unwrap());
        assert_eq!(
            super::authenticate(ids(&c, &d), &i, Some(&before), source, now).err(),
            Some(Rejection::BadToken)
        );
        store.revoke_key("key_s").await.unwrap();
        store
            .update_license(
                "lic_s",
                &LicenseChange {
                    revoked: Some(true),
                    ..LicenseChange::default()
                },
            )
            .await
            .unwrap();
        assert!(d.refresh(&store).await.unwrap());
        assert_eq!(
            super::authenticate(ids(&c, &d), &i, Some(&bearer), source, now).err(),
            Some(Rejection::KeyRevoked)
        );
        assert_eq!(
            login("api", "berth_key_s").err(),
            Some(Rejection::KeyRevoked)
        );
        assert_eq!(login("x", "berth_lic_s").err(), Some(Rejection::Revoked));
    }
}
