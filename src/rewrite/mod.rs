//! Image rewriting: the mapping from upstream image references to berth (or an airgap registry), applied to single images, Kubernetes YAML and admission reviews.
//!
//! Pure library: no HTTP, no configuration types. The CLI (`berth rewrite`) and the
//! admission endpoint build a [`Rules`] and call into here.
//!
//! # Mapping
//!
//! An image matched by the rules becomes
//!
//! ```text
//! <hostname>/proxy/<app>/<upstream>/<repository>[:tag][@digest]      (berth)
//! <registry>[/<namespace>]/<upstream>/<repository>[:tag][@digest]    (Rules::registry)
//! ```
//!
//! `<upstream>` is the upstream host as configured in `Rules::upstream_hosts`
//! (so Docker Hub stays `docker.io` or `index.docker.io`, whichever the vendor wrote),
//! lowercased, with a port's `:` written as `_` (see [`upstream_component`]): a
//! colon inside the path would make the whole reference unparsable for kubelet and
//! containerd, whereas `_` can never occur in a host name, so the mapping stays
//! reversible. The airgap form keeps the whole upstream path for the same reason the
//! berth form does: two upstream images can never land on the same name.
//!
//! # berth's own images
//!
//! An image already at berth's hostname is left as written and counted as berth's (its pod
//! spec gets the pull secret): a hosted repository of the app (`<hostname>/<app>/<repo>`,
//! what vendors push) and a pull-through name (`<hostname>/proxy/...`). `--pin-digests`
//! pins a hosted image from berth's own index, a pull-through name through the upstream it
//! stands for ([`Decision::Own`]). With
//! `Rules::registry` (airgap) both move to the airgap registry by the same rule as any
//! image: a hosted one as if berth's hostname were its upstream host
//! (`<registry>/<hostname>/<app>/<repo>`, where `airgap push` puts it), a pull-through one
//! under the upstream component it already carries (`<registry>/<upstream>/<repo>`).

pub mod admission;
pub mod nodes;
pub mod secret;
mod workload;
mod yaml;

pub use crate::oci::reference::{ImageRef, ReferenceError};
pub use admission::{review, AdmissionContext, AdmissionError, AdmissionRules};
pub use secret::pull_secret_yaml;
pub use yaml::{rewrite_yaml, rewrite_yaml_for, PinFn, RewriteError};

use crate::oci::reference::{is_docker_hub_host, DOCKER_HUB};

/// What to rewrite and where to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// berth's public name, e.g. `images.acme.test` (may have `:port`).
    pub hostname: String,
    /// App slug, e.g. `acme`.
    pub app: String,
    /// The upstreams whose images are rewritten, as `HOST` (every repository of the host:
    /// `quay.io`, `index.docker.io`, `registry.example.com:5000`) or `HOST/GLOB` (only the
    /// repositories an upstream's `repositories` allow-list admits: `quay.io/acme/*`), one
    /// entry per glob. [`rules_for_app`] writes them from the app's upstreams, so the
    /// rewriter redirects exactly the images `App::select` would serve.
    pub upstream_hosts: Vec<String>,
    /// `imagePullSecrets` name to add to pod specs whose images were redirected.
    pub pull_secret: Option<String>,
    /// With `registry` (airgap): move every image there, not only the app's upstreams'.
    /// Without it this changes nothing: berth serves only its app's upstreams, so an image of
    /// any other host would be redirected to a name that answers 404.
    pub all: bool,
    /// Alternative target `REGISTRY[/NAMESPACE]` (airgap), used instead of berth.
    pub registry: Option<String>,
}

/// The outcome for one image: the new reference text and the parsed upstream image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not ours: leave the text alone and do not ask for a pull secret.
    Foreign,
    /// Already points at the target (idempotence): leave it, but it needs the secret.
    AlreadyTargeted,
    /// One of the app's own names at berth's hostname (a hosted repository, or a
    /// pull-through name under `/proxy/<app>/`): left as it is, needs the secret, and `pin`
    /// is what a digest pin resolves (the hosted image itself, registry = berth's hostname,
    /// or the upstream image the pull-through name stands for).
    Own { pin: ImageRef },
    /// Rewrite to `new`; `upstream` is the image it stands for (for digest pinning).
    Rewrite { new: String, upstream: ImageRef },
    /// Ours, but the rewritten reference would not be a valid one (longer than the
    /// 255-character name limit once the target prefix is added).
    Unrewritable { reason: String },
}

impl Rules {
    /// The prefix that every rewritten image starts with, without the trailing `/`.
    pub fn target_prefix(&self) -> String {
        match &self.registry {
            Some(r) => r.trim_end_matches('/').to_string(),
            None => format!(
                "{}/proxy/{}",
                self.hostname.trim_end_matches('/'),
                self.app.trim_matches('/')
            ),
        }
    }

    fn target_host(&self) -> &str {
        let t = self.registry.as_deref().unwrap_or(&self.hostname);
        t.split('/').next().unwrap_or(t)
    }

    /// The configured upstream host that serves `r`, if any: an entry of `upstream_hosts`
    /// naming its host and, when the entry has a glob, admitting its repository.
    fn upstream_for(&self, r: &ImageRef) -> Option<String> {
        let configured = self.upstream_hosts.iter().find_map(|entry| {
            let entry = entry.trim_end_matches('/');
            let (h, glob) = match entry.split_once('/') {
                Some((h, g)) => (h, Some(g)),
                None => (entry, None),
            };
            let host_matches = if r.is_docker_hub() {
                is_docker_hub_host(h)
            } else {
                h.eq_ignore_ascii_case(&r.registry)
            };
            let repo_matches = match glob {
                None => true,
                // The same matcher the upstream's allow-list uses in `App::select`.
                Some(g) => crate::tenancy::Glob::new(g).is_ok_and(|g| g.matches(&r.repository)),
            };
            (host_matches && repo_matches).then(|| h.to_string())
        });
        match configured {
            Some(h) => Some(h),
            None if self.all && self.registry.is_some() => Some(if r.is_docker_hub() {
                DOCKER_HUB.to_string()
            } else {
                r.registry.clone()
            }),
            None => None,
        }
    }

    pub(crate) fn decide(&self, image: &str) -> Decision {
        let Ok(r) = ImageRef::parse(image) else {
            return Decision::Foreign;
        };
        let first = image.split('/').next().unwrap_or(image);
        let hostname = self.hostname.trim_end_matches('/');
        let at_berth = !hostname.is_empty()
            && (first.eq_ignore_ascii_case(hostname) || r.registry.eq_ignore_ascii_case(hostname));
        if at_berth {
            if let Some(d) = self.berths_own(&r) {
                return d;
            }
        }
        let target_host = self.target_host();
        if !target_host.is_empty()
            && (first.eq_ignore_ascii_case(target_host)
                || r.registry.eq_ignore_ascii_case(target_host))
        {
            return Decision::AlreadyTargeted;
        }
        let Some(host) = self.upstream_for(&r) else {
            return Decision::Foreign;
        };
        let new = format!(
            "{}/{}/{}{}",
            self.target_prefix(),
            upstream_component(&host),
            r.repository,
            r.suffix()
        );
        // Kubelet and containerd refuse what does not parse; writing it would trade a
        // working pull for a broken one.
        if let Err(e) = ImageRef::parse(&new) {
            return Decision::Unrewritable {
                reason: format!("rewritten to {new:?}, which is not a valid reference: {e}"),
            };
        }
        Decision::Rewrite { new, upstream: r }
    }
}

impl Rules {
    /// An image at berth's hostname that is this app's (hosted, or pulled through berth):
    /// left alone for berth, moved to the airgap registry with `registry`. `None` for
    /// anything else at that hostname (another app's, not a berth name), which the general
    /// rules then decide.
    fn berths_own(&self, r: &ImageRef) -> Option<Decision> {
        let hosted = hosted_repository(&self.hostname, &self.app, r).is_some();
        let Some(registry) = &self.registry else {
            return Some(if hosted {
                Decision::Own { pin: r.clone() }
            } else if let Some((_, upstream)) = self.proxied_upstream(r) {
                Decision::Own { pin: upstream }
            } else {
                Decision::AlreadyTargeted
            });
        };
        let prefix = registry.trim_end_matches('/');
        let (new, upstream) = if hosted {
            let new = format!(
                "{prefix}/{}/{}{}",
                upstream_component(self.hostname.trim_end_matches('/')),
                r.repository,
                r.suffix()
            );
            (new, r.clone())
        } else {
            let (rest, upstream) = self.proxied_upstream(r)?;
            (format!("{prefix}/{rest}{}", r.suffix()), upstream)
        };
        if let Err(e) = ImageRef::parse(&new) {
            return Some(Decision::Unrewritable {
                reason: format!("rewritten to {new:?}, which is not a valid reference: {e}"),
            });
        }
        Some(Decision::Rewrite { new, upstream })
    }
}

impl Rules {
    /// For a pull-through name of this app (`<hostname>/proxy/<app>/<upstream>/<repo>`):
    /// `<upstream>/<repo>` as written, and the upstream image it stands for (the host's
    /// `_` back to `:`), which is what a pin asks.
    fn proxied_upstream<'r>(&self, r: &'r ImageRef) -> Option<(&'r str, ImageRef)> {
        let rest = r
            .repository
            .strip_prefix("proxy/")?
            .strip_prefix(self.app.trim_matches('/'))?
            .strip_prefix('/')?;
        let (component, path) = rest
            .split_once('/')
            .filter(|(h, p)| !h.is_empty() && !p.is_empty())?;
        let upstream = ImageRef {
            registry: component.replace('_', ":"),
            repository: path.to_string(),
            tag: r.tag.clone(),
            digest: r.digest.clone(),
        };
        Some((rest, upstream))
    }
}

/// The repository within `app` that `r` names when it is one of berth's hosted images:
/// at berth's `hostname`, under `<app>/` (`proxy/` is the pull-through namespace, never an
/// app's).
pub fn hosted_repository(hostname: &str, app: &str, r: &ImageRef) -> Option<String> {
    let hostname = hostname.trim_end_matches('/');
    let app = app.trim_matches('/');
    if hostname.is_empty() || app.is_empty() || app == "proxy" {
        return None;
    }
    if !r.registry.eq_ignore_ascii_case(hostname) {
        return None;
    }
    let repo = r.repository.strip_prefix(app)?.strip_prefix('/')?;
    (!repo.is_empty()).then(|| repo.to_string())
}

/// How an upstream host appears as one path component of a rewritten image:
/// lowercased, `:` (port) as `_`. `registry.example.com:5000` → `registry.example.com_5000`.
pub fn upstream_component(host: &str) -> String {
    host.to_ascii_lowercase().replace(':', "_")
}

/// Rewrites one image reference; `None` means leave it unchanged (not an upstream
/// image, already rewritten, or not a valid reference).
pub fn rewrite_image(rules: &Rules, image: &str) -> Option<String> {
    match rules.decide(image) {
        Decision::Rewrite { new, .. } => Some(new),
        _ => None,
    }
}

/// The rules for one app of a berth config: berth's hostname and, per upstream of the app,
/// its host with each glob of its `repositories` allow-list (no pull secret).
pub fn rules_for_app(config: &crate::config::Config, app: &str) -> Result<Rules, String> {
    let a = config
        .app(app)
        .ok_or_else(|| format!("unknown app {app:?}"))?;
    let mut upstream_hosts = Vec::new();
    for u in &a.upstreams {
        // A `kind: dockerhub` upstream serves every name of Hub whatever host it was given.
        let host = if u.registry() == DOCKER_HUB && !is_docker_hub_host(&u.host) {
            DOCKER_HUB.to_string()
        } else {
            u.host.clone()
        };
        if u.repositories.is_empty() {
            upstream_hosts.push(host);
        } else {
            upstream_hosts.extend(
                u.repositories
                    .iter()
                    .map(|g| format!("{host}/{}", g.as_str())),
            );
        }
    }
    Ok(Rules {
        hostname: config.server.hostname.clone(),
        app: a.slug.clone(),
        upstream_hosts,
        pull_secret: None,
        all: false,
        registry: None,
    })
}

/// The config's `rewrite:` rule that decides an object: the first whose selector matches.
fn matching_rule<'c>(
    config: &'c crate::config::Config,
    ctx: &AdmissionContext,
) -> Option<&'c crate::settings::RewriteConfig> {
    config.rewrite.iter().find(|r| {
        AdmissionRules {
            namespaces: r.namespaces.clone(),
            exclude_namespaces: r.exclude_namespaces.clone(),
            labels: r.labels.clone(),
        }
        .matches(ctx)
    })
}

/// The admission rules of the config that match a review, first match wins. The webhook
/// asks this for every object, `berth rewrite` through [`rules_for_object`].
pub fn admission_rules(config: &crate::config::Config, ctx: &AdmissionContext) -> Option<Rules> {
    let r = matching_rule(config, ctx)?;
    let mut rules = rules_for_app(config, &r.app).ok()?;
    rules.pull_secret = r.pull_secret.clone();
    Some(rules)
}

/// What `berth rewrite --app APP` does with one object: when the config has `rewrite:` rules
/// for the app, exactly what the webhook would (`Decided::Rules` from [`admission_rules`],
/// or `Skipped` when no rule selects it, or `OtherApp` when the rule selecting it is
/// another app's); without rules for the app, every object is the app's with no pull
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    Rules(Rules),
    Skipped,
    OtherApp(String),
}

pub fn rules_for_object(
    config: &crate::config::Config,
    app: &str,
    ctx: &AdmissionContext,
) -> Decided {
    if !config.rewrite.iter().any(|r| r.app == app) {
        return match rules_for_app(config, app) {
            Ok(r) => Decided::Rules(r),
            Err(_) => Decided::Skipped,
        };
    }
    match matching_rule(config, ctx) {
        Some(r) if r.app != app => Decided::OtherApp(r.app.clone()),
        Some(_) => admission_rules(config, ctx).map_or(Decided::Skipped, Decided::Rules),
        None => Decided::Skipped,
    }
}

/// The pull secret name the config's `rewrite:` rules give `app` (its first rule naming
/// one): what `berth pull-secret` names the Secret by default.
pub fn configured_pull_secret(config: &crate::config::Config, app: &str) -> Option<String> {
    config
        .rewrite
        .iter()
        .filter(|r| r.app == app)
        .find_map(|r| r.pull_secret.clone())
}

/// The apps of `config` one of whose upstreams serves `image` (by `App::select`), sorted:
/// what `berth rewrite --image` infers `--app` from.
/// An image already at berth's hostname is the app its path names (`<app>/…` hosted,
/// `proxy/<app>/…` pulled through).
pub fn apps_serving(config: &crate::config::Config, image: &ImageRef) -> Vec<String> {
    let at_berth = image
        .registry
        .eq_ignore_ascii_case(config.server.hostname.trim_end_matches('/'));
    let named = image
        .repository
        .strip_prefix("proxy/")
        .unwrap_or(&image.repository);
    let named = named.split('/').next().unwrap_or_default();
    let mut apps: Vec<String> = config
        .tenants
        .apps()
        .into_iter()
        .filter(|a| {
            if at_berth {
                a.slug == named
            } else {
                a.select(&image.registry, &image.repository).is_some()
            }
        })
        .map(|a| a.slug.clone())
        .collect();
    apps.sort();
    apps
}

/// One image as `berth rewrite --image` prints it: rewritten (and, with `pin`, pinned to a
/// digest) exactly as the same image in a manifest would be, or `None` when it stays as it
/// is.
pub fn rewrite_one(
    rules: &Rules,
    image: &str,
    pin: Option<&PinFn<'_>>,
) -> Result<Option<String>, String> {
    match yaml::target(rules, image, pin).map_err(|e| e.reason())? {
        yaml::Target::New(new) => Ok(Some(new)),
        yaml::Target::Foreign | yaml::Target::Ours => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            hostname: "images.acme.test".into(),
            app: "acme".into(),
            upstream_hosts: vec![
                "quay.io".into(),
                "index.docker.io".into(),
                "registry.example.com:5000".into(),
            ],
            pull_secret: Some("berth-pull".into()),
            all: false,
            registry: None,
        }
    }

    #[test]
    fn maps_upstreams_to_berth() {
        let r = rules();
        let cases = [
            (
                "quay.io/acme/api:1.2",
                "images.acme.test/proxy/acme/quay.io/acme/api:1.2",
            ),
            (
                "redis",
                "images.acme.test/proxy/acme/index.docker.io/library/redis",
            ),
            (
                "library/redis:7",
                "images.acme.test/proxy/acme/index.docker.io/library/redis:7",
            ),
            (
                "docker.io/bitnami/redis",
                "images.acme.test/proxy/acme/index.docker.io/bitnami/redis",
            ),
            (
                "registry.example.com:5000/team/app:1",
                "images.acme.test/proxy/acme/registry.example.com_5000/team/app:1",
            ),
        ];
        for (i, o) in cases {
            assert_eq!(rewrite_image(&r, i).as_deref(), Some(o), "{i}");
            assert_eq!(rewrite_image(&r, o), None, "idempotent: {o}");
            assert!(
                ImageRef::parse(o).is_ok(),
                "output must be a valid reference: {o}"
            );
        }
        assert_eq!(rewrite_image(&r, "ghcr.io/other/x:1"), None);
        assert_eq!(rewrite_image(&r, "not a ref"), None);
    }

    #[test]
    fn all_and_airgap_registry() {
        let mut r = rules();
        // berth serves only the app's upstreams: `all` without a registry changes nothing.
        r.all = true;
        assert_eq!(rewrite_image(&r, "ghcr.io/other/x:1"), None);
        r.registry = Some("reg.customer.example/mirror".into());
        assert_eq!(
            rewrite_image(&r, "ghcr.io/other/x:1").as_deref(),
            Some("reg.customer.example/mirror/ghcr.io/other/x:1")
        );
        r.upstream_hosts.clear();
        assert_eq!(
            rewrite_image(&r, "redis:7").as_deref(),
            Some("reg.customer.example/mirror/docker.io/library/redis:7")
        );
        r.all = false;
        r.upstream_hosts = vec!["quay.io".into()];
        r.registry = Some("reg.customer.example/mirror/".into());
        let out = rewrite_image(&r, "quay.io/acme/api:1.2");
        assert_eq!(
            out.as_deref(),
            Some("reg.customer.example/mirror/quay.io/acme/api:1.2")
        );
        assert_eq!(rewrite_image(&r, out.as_deref().unwrap_or_default()), None);
    }

    #[test]
    fn berths_own_images_stay_and_count_as_berths() {
        let r = rules();
        let pinned = format!(
            "images.acme.test/acme/team/worker@sha256:{}",
            "a".repeat(64)
        );
        for image in [
            "images.acme.test/acme/worker:1.0",
            pinned.as_str(),
            "images.acme.test/proxy/acme/quay.io/acme/api:1.2",
        ] {
            assert!(ImageRef::parse(image).is_ok(), "{image}");
            assert_eq!(rewrite_image(&r, image), None, "{image}");
        }
        assert!(matches!(r.decide(&pinned), Decision::Own { pin } if pin.digest.is_some()));
        match r.decide("images.acme.test/acme/team/worker:2") {
            Decision::Own { pin: image } => {
                assert_eq!(image.repository, "acme/team/worker");
                assert_eq!(
                    hosted_repository(&r.hostname, &r.app, &image).as_deref(),
                    Some("team/worker")
                );
            }
            d => panic!("{d:?}"),
        }
        // A pull-through name is pinned through the upstream it stands for.
        match r.decide("images.acme.test/proxy/acme/registry.example.com_5000/team/app:1") {
            Decision::Own { pin } => {
                assert_eq!(pin.to_string(), "registry.example.com:5000/team/app:1")
            }
            d => panic!("{d:?}"),
        }
        // Another app's repositories and names that are no berth name are not acme's, but
        // still at berth (they get the secret, are never re-mapped or pinned).
        for image in [
            "images.acme.test/proxy/beta/quay.io/acme/api:1.2",
            "images.acme.test/proxy/acme/quay.io",
            "images.acme.test/beta/worker:1",
            "IMAGES.acme.test/acme",
        ] {
            assert_eq!(r.decide(image), Decision::AlreadyTargeted, "{image}");
        }
        let proxy = ImageRef::parse("images.acme.test/proxy/x").unwrap();
        assert_eq!(hosted_repository("images.acme.test", "proxy", &proxy), None);
        let other = ImageRef::parse("quay.io/acme/worker").unwrap();
        assert_eq!(hosted_repository("images.acme.test", "acme", &other), None);
    }

    #[test]
    fn berths_own_images_move_to_the_airgap_registry() {
        let mut r = rules();
        r.hostname = "images.acme.test:8443".into();
        r.registry = Some("reg.customer.example/mirror".into());
        assert_eq!(
            rewrite_image(&r, "images.acme.test:8443/acme/worker:1.0").as_deref(),
            Some("reg.customer.example/mirror/images.acme.test_8443/acme/worker:1.0")
        );
        assert_eq!(
            rewrite_image(
                &r,
                "images.acme.test:8443/proxy/acme/registry.example.com_5000/team/app:1"
            )
            .as_deref(),
            Some("reg.customer.example/mirror/registry.example.com_5000/team/app:1")
        );
        // Same name as the upstream image itself maps to: one home per image.
        assert_eq!(
            rewrite_image(&r, "registry.example.com:5000/team/app:1").as_deref(),
            Some("reg.customer.example/mirror/registry.example.com_5000/team/app:1")
        );
        match r.decide("images.acme.test:8443/proxy/acme/registry.example.com_5000/team/app:1") {
            Decision::Rewrite { upstream, .. } => {
                assert_eq!(upstream.registry, "registry.example.com:5000");
                assert_eq!(upstream.repository, "team/app");
            }
            d => panic!("{d:?}"),
        }
        // Another app's pull-through name is not acme's to move.
        assert_eq!(
            rewrite_image(&r, "images.acme.test:8443/proxy/beta/quay.io/x:1"),
            None
        );
    }

    #[test]
    fn allow_list_entries_rewrite_only_admitted_repositories() {
        let mut r = rules();
        r.upstream_hosts = vec![
            "registry.vendor.test/acme/*".into(),
            "registry.vendor.test/tools/**".into(),
            "index.docker.io/library/redis".into(),
        ];
        for (image, rewritten) in [
            ("registry.vendor.test/acme/api:1", true),
            ("registry.vendor.test/acme/team/api:1", false),
            ("registry.vendor.test/tools/a/b:1", true),
            ("registry.vendor.test/other/x:1", false),
            ("redis:7", true),
            ("docker.io/library/redis", true),
            ("postgres:16", false),
        ] {
            assert_eq!(rewrite_image(&r, image).is_some(), rewritten, "{image}");
        }
        assert_eq!(
            rewrite_image(&r, "registry.vendor.test/acme/api:1").as_deref(),
            Some("images.acme.test/proxy/acme/registry.vendor.test/acme/api:1")
        );
    }

    /// The rules `rules_for_app` writes rewrite exactly the images `App::select` serves.
    #[test]
    fn rules_for_app_agrees_with_the_selector() {
        let text = "server: { listen: \"127.0.0.1:5443\", hostname: images.acme.test }\n\
            cache: { dir: /tmp/berth-rewrite-unit }\n\
            upstreams:\n\
            \x20 - { name: v, url: \"http://127.0.0.1:1\", host: registry.vendor.test, repositories: [\"acme/*\", \"tools/**\"] }\n\
            \x20 - { name: w, url: \"http://127.0.0.1:1\", host: registry.vendor.test, repositories: [\"acme/special/*\"] }\n\
            \x20 - { name: hub, url: \"http://127.0.0.1:1\", kind: dockerhub, repositories: [library/redis, \"bitnami/*\"] }\n\
            \x20 - { name: p, url: \"http://127.0.0.1:1\", host: \"registry.example.com:5000\" }\n\
            apps:\n  - { slug: acme, upstreams: [v, w, hub, p] }\n";
        let config =
            crate::config::Config::parse(text, std::path::Path::new("/tmp"), &|_| None).unwrap();
        let rules = rules_for_app(&config, "acme").unwrap();
        let app = config.app("acme").unwrap();
        let images = [
            "registry.vendor.test/acme/api:1",
            "registry.vendor.test/acme/special/x:1",
            "registry.vendor.test/acme/a/b:1",
            "registry.vendor.test/tools/a/b/c",
            "registry.vendor.test/other/x:1",
            "redis:7",
            "docker.io/redis",
            "index.docker.io/library/redis:7",
            "bitnami/redis:7",
            "postgres",
            "registry.example.com:5000/any/thing:1",
            "quay.io/acme/api:1",
        ];
        let mut rewritten = 0;
        for image in images {
            let r = ImageRef::parse(image).unwrap();
            let served = app.select(&r.registry, &r.repository).is_some();
            assert_eq!(rewrite_image(&rules, image).is_some(), served, "{image}");
            rewritten += usize::from(served);
        }
        assert!(rewritten >= 6 && rewritten < images.len(), "{rewritten}");
    }
}
