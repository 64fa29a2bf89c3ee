//! The content model proxied and hosted content share: which repository of which app a
//! digest belongs to (`links`), manifests by digest (`manifest`) and tag answers (`tags`),
//! all keyed by repository ([`RepoKey`]: space, app, name), never by upstream. Kept in
//! the small-object store of the storage seam. The pull-through policy on top — fills,
//! TTL, revalidation, stale-if-error, eviction — is `cache/` and `registry/`; `legacy`
//! reads what berth stored before, keyed by upstream.

pub mod legacy;
pub mod links;
pub mod manifest;
pub mod tags;

pub use legacy::Legacy;
pub use links::Links;
pub use manifest::{ManifestStore, StoredManifest};
pub use tags::{accept_key, now_ms, TagEntry, TagKey, TagStore};

/// Which of berth's repository spaces a repository lives in. An app's proxied repository
/// `quay.io/acme/api` and a repository of the same name that a vendor pushes into the app
/// (the hosted registry, next) are different repositories: their links and tags must not
/// mix, so the space is part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Pull-through content: `/v2/proxy/<app>/<host>/<repository>`.
    Proxy,
    /// Content vendors push: `/v2/<app>/<repository>`; `name` is the repository.
    Hosted,
}

impl Space {
    pub fn as_str(self) -> &'static str {
        match self {
            Space::Proxy => "proxy",
            Space::Hosted => "hosted",
        }
    }

    pub fn parse(s: &str) -> Option<Space> {
        match s {
            "proxy" => Some(Space::Proxy),
            "hosted" => Some(Space::Hosted),
            _ => None,
        }
    }
}

/// A repository of an app: what membership, manifests and tags are keyed by.
///
/// For proxied content `name` is `<host>/<repository>` in canonical form: the host as the
/// app's upstream is configured (`docker.io`, `reg.example:5000`), the repository as the
/// upstream knows it (`library/redis`). Every spelling a client may use for one upstream
/// repository (`index.docker.io/redis`, `reg.example_5000/…`) is one repository, as it
/// was when links were keyed by upstream; the upstream's *name* is not part of the key, so
/// a repository is the same whether an upstream, a bundle or (later) a push filled it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoKey {
    pub space: Space,
    /// The app's slug.
    pub app: String,
    /// The repository's name within the app and space.
    pub name: String,
}

impl RepoKey {
    /// A proxied repository: `host` as the upstream is configured, `repository` as the
    /// upstream knows it.
    pub fn proxied(app: &str, host: &str, repository: &str) -> RepoKey {
        RepoKey {
            space: Space::Proxy,
            app: app.to_string(),
            name: format!("{host}/{repository}"),
        }
    }

    /// A hosted repository of an app (what vendors push).
    pub fn hosted(app: &str, repository: &str) -> RepoKey {
        RepoKey {
            space: Space::Hosted,
            app: app.to_string(),
            name: repository.to_string(),
        }
    }

    /// The repository part of a proxied name (without the host).
    pub fn repository(&self) -> &str {
        match self.space {
            Space::Proxy => self.name.split_once('/').map_or(&self.name, |(_, r)| r),
            Space::Hosted => &self.name,
        }
    }

    /// `<space>/<app>/<name>`: the repository's path in storage (and in logs).
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.space.as_str(), self.app, self.name)
    }

    /// The key a [`RepoKey::path`] stands for.
    pub fn from_path(path: &str) -> Option<RepoKey> {
        let mut it = path.splitn(3, '/');
        let space = Space::parse(it.next()?)?;
        let (app, name) = (it.next()?, it.next()?);
        if app.is_empty() || name.is_empty() {
            return None;
        }
        Some(RepoKey {
            space,
            app: app.to_string(),
            name: name.to_string(),
        })
    }
}

impl std::fmt::Display for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.space.as_str(), self.app, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_keys_round_trip_through_their_path() {
        let k = RepoKey::proxied("acme", "reg.example:5000", "acme/api");
        assert_eq!(k.path(), "proxy/acme/reg.example:5000/acme/api");
        assert_eq!(k.repository(), "acme/api");
        assert_eq!(RepoKey::from_path(&k.path()), Some(k));
        let h = RepoKey::hosted("acme", "acme/api");
        assert_eq!(h.path(), "hosted/acme/acme/api");
        assert_eq!(RepoKey::from_path(&h.path()), Some(h.clone()));
        assert_ne!(h, RepoKey::proxied("acme", "acme", "api"));
        assert_eq!(RepoKey::from_path("other/acme/x"), None);
        assert_eq!(RepoKey::from_path("proxy/acme"), None);
    }
}
