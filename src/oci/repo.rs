//! Berth's repository vocabulary: the customer-facing repository path
//! (`proxy/<app>/<host>/<repository>`) and a manifest reference (tag or digest), parsed
//! from a request path by `api::route` and from a token scope by `auth`. Errors are the
//! domain's client errors (name, tag or digest invalid).

use crate::error::Error;
use crate::oci::name::{
    valid_component, valid_host_in_path, valid_repository, valid_tag, NAME_MAX,
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
