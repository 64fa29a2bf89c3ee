//! Berth's repository vocabulary: the customer-facing repository path
//! (`proxy/<app>/<host>/<repository>`) and a manifest reference (tag or digest), parsed
//! from a request path by `api::route` and from a token scope by `auth`. Errors are the
//! domain's client errors (name, tag or digest invalid).

use crate::error::Error;
use crate::oci::name::{
    is_docker_hub_host, looks_like_host, valid_component, valid_host, valid_host_in_path,
    valid_repository, valid_tag, DOCKER_HUB, NAME_MAX,
};
use crate::oci::Digest;

/// `proxy/<app>/<host>/<repository>`: the customer-facing repository name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPath {
    pub app: String,
    pub host: String,
    pub repository: String,
}

impl RepoPath {
    /// The name as the customer sees it (without `/v2/`).
    pub fn name(&self) -> String {
        format!("proxy/{}/{}/{}", self.app, self.host, self.repository)
    }

    /// Parses a customer-facing repository name (`proxy/<app>/<host>/<repository>`, as in
    /// a request path after `/v2/` or in a token scope).
    pub fn parse(name: &str) -> Result<RepoPath, Error> {
        if name.len() > NAME_MAX + "proxy/".len() + 64 {
            return Err(Error::NameInvalid("repository name too long".into()));
        }
        let rest = name.strip_prefix("proxy/").ok_or_else(|| {
            Error::NameUnknown(
                "repositories live under /v2/proxy/<app>/<registry>/<repository>".into(),
            )
        })?;
        let mut parts = rest.splitn(3, '/');
        let (Some(app), Some(host), Some(repository)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::NameInvalid(
                "expected proxy/<app>/<registry>/<repository>".into(),
            ));
        };
        if !valid_component(app) {
            return Err(Error::NameInvalid(format!("invalid app {app:?}")));
        }
        // The rewriter writes `host:port` as `host_port` (a colon cannot appear in a
        // repository path); both spellings are accepted.
        if !valid_host_in_path(host) {
            return Err(Error::NameInvalid(format!(
                "invalid registry host {host:?}"
            )));
        }
        if !valid_repository(repository) {
            return Err(Error::NameInvalid(format!(
                "invalid repository {repository:?}"
            )));
        }
        Ok(RepoPath {
            app: app.to_string(),
            host: host.to_string(),
            repository: repository.to_string(),
        })
    }
}

/// `<app>/<repository>`: a hosted repository, what a vendor pushes and its customers pull.
/// The first component is the app's slug; `proxy` is not one (it is the pull-through
/// namespace, and config validation refuses an app of that name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedPath {
    pub app: String,
    pub repository: String,
}

impl HostedPath {
    /// The name as clients see it (without `/v2/`), also the name of its token scopes.
    pub fn name(&self) -> String {
        format!("{}/{}", self.app, self.repository)
    }

    /// Parses `<app>/<repository>` (a request path after `/v2/` or a token scope).
    pub fn parse(name: &str) -> Result<HostedPath, Error> {
        if name.len() > NAME_MAX {
            return Err(Error::NameInvalid("repository name too long".into()));
        }
        let Some((app, repository)) = name.split_once('/') else {
            return Err(Error::NameUnknown(
                "hosted repositories live under /v2/<app>/<repository>".into(),
            ));
        };
        if app == "proxy" {
            return Err(Error::NameInvalid(
                "proxy/ names are proxied repositories".into(),
            ));
        }
        if !valid_component(app) {
            return Err(Error::NameInvalid(format!("invalid app {app:?}")));
        }
        if !valid_repository(repository) {
            return Err(Error::NameInvalid(format!(
                "invalid repository {repository:?}"
            )));
        }
        Ok(HostedPath {
            app: app.to_string(),
            repository: repository.to_string(),
        })
    }
}

/// A repository as a node's container runtime names it when berth is its registry mirror:
/// the registry the image reference names (containerd's `?ns=<host>`, or Docker Hub for
/// Docker's `registry-mirrors`, which sends no `ns`) and the repository there. Which app
/// serves it is the caller's: a license has one app, and the same request by two
/// customers reaches two apps' upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPath {
    /// Lowercase, and `docker.io` for every name of Docker Hub.
    pub host: String,
    pub repository: String,
}

impl MirrorPath {
    /// A mirrored repository from the `ns` a client sent (any case, any of Hub's names) and
    /// the repository of the request path.
    pub fn new(ns: &str, repository: &str) -> Result<MirrorPath, Error> {
        let host = if is_docker_hub_host(ns) {
            DOCKER_HUB.to_string()
        } else {
            ns.to_ascii_lowercase()
        };
        if !valid_host(&host) {
            return Err(Error::NameInvalid(format!("ns={ns:?} is no registry host")));
        }
        if host.len() + 1 + repository.len() > NAME_MAX || !valid_repository(repository) {
            return Err(Error::NameInvalid(format!(
                "invalid repository {repository:?}"
            )));
        }
        Ok(MirrorPath {
            host,
            repository: repository.to_string(),
        })
    }

    /// `<host>/<repository>`, the image as the node names it: the scope berth's challenge
    /// asks for.
    pub fn name(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }

    /// Reads a token scope's name as a mirrored repository: `<host>/<repository>` when the
    /// first component is a registry host (distribution's rule), else a Docker Hub
    /// repository (Docker's daemon asks for `repository:library/redis:pull` whatever the
    /// challenge named).
    pub fn from_scope(name: &str) -> Option<MirrorPath> {
        match name.split_once('/') {
            Some((first, rest)) if looks_like_host(first) => MirrorPath::new(first, rest).ok(),
            _ => MirrorPath::new(DOCKER_HUB, name).ok(),
        }
    }

    /// Whether a token's scope `name` is this repository, in any spelling
    /// [`MirrorPath::from_scope`] reads.
    pub fn is_named(&self, name: &str) -> bool {
        MirrorPath::from_scope(name).is_some_and(|m| m == *self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Error> {
        if s.contains(':') {
            s.parse()
                .map(Reference::Digest)
                .map_err(|_| Error::DigestInvalid(format!("{s:?} is not a valid digest")))
        } else if valid_tag(s) {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(Error::TagInvalid(format!("{s:?} is not a valid tag")))
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_paths_parse_from_a_scope_name() {
        let r = RepoPath::parse("proxy/acme/reg.example:5000/acme/api").unwrap();
        assert_eq!(
            (r.app.as_str(), r.host.as_str(), r.repository.as_str()),
            ("acme", "reg.example:5000", "acme/api")
        );
        assert_eq!(r.name(), "proxy/acme/reg.example:5000/acme/api");
        assert!(RepoPath::parse("proxy/acme/reg.example_5000/a").is_ok());
        assert!(matches!(
            RepoPath::parse("library/redis"),
            Err(Error::NameUnknown(_))
        ));
        for bad in [
            "proxy/acme/quay.io",
            "proxy/acme/Quay.io/a",
            "proxy/Acme/quay.io/a",
            "proxy/acme/quay.io/../etc",
        ] {
            assert!(
                matches!(RepoPath::parse(bad), Err(Error::NameInvalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn mirrored_names_are_read_in_every_spelling() {
        let m = MirrorPath::new("Quay.IO", "acme/api").unwrap();
        assert_eq!(m.name(), "quay.io/acme/api");
        assert!(m.is_named("quay.io/acme/api"));
        assert!(!m.is_named("acme/api"));
        let hub = MirrorPath::new("registry-1.docker.io", "library/redis").unwrap();
        assert_eq!(hub.host, "docker.io");
        for n in [
            "library/redis",
            "docker.io/library/redis",
            "index.docker.io/library/redis",
        ] {
            assert!(hub.is_named(n), "{n}");
        }
        assert_eq!(
            MirrorPath::from_scope("localhost:5000/x").unwrap(),
            MirrorPath::new("localhost:5000", "x").unwrap()
        );
        for (ns, r) in [
            ("quay.io/x", "a"),
            ("quay.io", "A"),
            ("quay.io", "a//b"),
            ("", "a"),
        ] {
            assert!(
                matches!(MirrorPath::new(ns, r), Err(Error::NameInvalid(_))),
                "{ns} {r}"
            );
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Reference::parse(&d).unwrap().to_string(), d);
        assert_eq!(
            Reference::parse("1.2").unwrap(),
            Reference::Tag("1.2".into())
        );
        assert!(matches!(
            Reference::parse("sha256:zz"),
            Err(Error::DigestInvalid(_))
        ));
        assert!(matches!(Reference::parse("-x"), Err(Error::TagInvalid(_))));
    }
}
