//! Reading what berth stored before the content model, when repository links and tag
//! answers were keyed by upstream name (`<upstream>\t<repository>\t<digest>` lines in
//! `links.log`, `tags/<upstream>/<repository>/…`). An upstream belongs to apps, so an old
//! key stands for the repository `<host>/<repository>` of every app that lists the
//! upstream — exactly who could read it then. The map is taken from the configuration at
//! start (`cache::legacy_of`); an old key no configured upstream explains is kept as it
//! is, serving nobody, until a purge drops it.

use std::collections::HashMap;

use super::RepoKey;

#[derive(Debug, Clone, Default)]
pub struct Legacy {
    /// Upstream name → the (app, host) pairs it serves, sorted.
    homes: HashMap<String, Vec<(String, String)>>,
}

impl Legacy {
    /// From (upstream name, app slug, upstream host) triples.
    pub fn new(entries: impl IntoIterator<Item = (String, String, String)>) -> Legacy {
        let mut homes: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (upstream, app, host) in entries {
            homes.entry(upstream).or_default().push((app, host));
        }
        for v in homes.values_mut() {
            v.sort();
            v.dedup();
        }
        Legacy { homes }
    }

    /// The repositories an old key `(upstream, repository)` stands for: one per app that
    /// lists the upstream; none when no configured upstream has that name.
    pub fn repos(&self, upstream: &str, repository: &str) -> Vec<RepoKey> {
        self.homes
            .get(upstream)
            .map(|homes| {
                homes
                    .iter()
                    .map(|(app, host)| RepoKey::proxied(app, host, repository))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The old keys `(upstream, repository)` that may hold content of `repo`, sorted.
    pub fn sources(&self, repo: &RepoKey) -> Vec<(String, String)> {
        // Before the content model there was proxied content only.
        if repo.space != super::Space::Proxy {
            return Vec::new();
        }
        let mut out: Vec<(String, String)> = self
            .homes
            .iter()
            .filter(|(_, homes)| {
                homes.iter().any(|(app, host)| {
                    *app == repo.app
                        && repo
                            .name
                            .strip_prefix(host.as_str())
                            .is_some_and(|r| r.starts_with('/'))
                })
            })
            .map(|(up, _)| (up.clone(), repo.repository().to_string()))
            .collect();
        out.sort();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.homes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(u: &str, a: &str, h: &str) -> (String, String, String) {
        (u.into(), a.into(), h.into())
    }

    #[test]
    fn an_upstream_of_two_apps_maps_to_both() {
        let l = Legacy::new([
            t("hub", "acme", "docker.io"),
            t("hub", "other", "docker.io"),
            t("quay", "acme", "quay.io"),
        ]);
        assert_eq!(
            l.repos("hub", "library/redis"),
            vec![
                RepoKey::proxied("acme", "docker.io", "library/redis"),
                RepoKey::proxied("other", "docker.io", "library/redis"),
            ]
        );
        assert!(l.repos("gone", "x/y").is_empty());
        let k = RepoKey::proxied("acme", "quay.io", "acme/api");
        assert_eq!(l.sources(&k), vec![("quay".into(), "acme/api".into())]);
        // Another app, or a host only sharing a prefix, has no old keys.
        assert!(l
            .sources(&RepoKey::proxied("third", "quay.io", "acme/api"))
            .is_empty());
        assert!(l
            .sources(&RepoKey::proxied("acme", "quay.iox", "acme/api"))
            .is_empty());
    }
}
