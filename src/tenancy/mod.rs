//! Tenancy: who berth serves and from where — apps, their upstreams, licenses (and soon
//! API keys) — as a read-only model behind the `TenantStore` seam, and the one rule that
//! picks the upstream of an app for an image (`App::select`), used by serve, airgap
//! export and import, and digest pinning alike. The first store is the YAML file
//! (`YamlTenants`); process settings are `settings`.

mod glob;
pub mod yaml;

pub use glob::Glob;
pub use yaml::YamlTenants;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::oci::reference::is_docker_hub_host;
use crate::settings::{RateLimit, Secret};

/// Where berth's tenants come from as configured. Requests hold one store (through
/// `config::Config`) for their whole life, so a reload never changes the rules under a pull
/// in flight: a store is an immutable snapshot. Licenses and API keys managed at runtime
/// live in `state` (a database) beside it; the licenses here are the config file's,
/// read-only. Lookups are by the public id or by the presented secret; the secret itself
/// never leaves the store.
pub trait TenantStore: Send + Sync + std::panic::RefUnwindSafe + std::fmt::Debug {
    fn app(&self, slug: &str) -> Option<&App>;
    /// Every app, in no particular order.
    fn apps(&self) -> Vec<&App>;
    /// Every upstream, in the order they were configured.
    fn upstreams(&self) -> &[Arc<Upstream>];
    /// The license whose secret (the customer's password) is `secret`.
    fn license_by_secret(&self, secret: &str) -> Option<Arc<License>>;
    /// The license with this public id (what berth's tokens and logs carry).
    fn license(&self, id: &str) -> Option<Arc<License>>;
    /// Every license, in no particular order.
    fn licenses(&self) -> Vec<Arc<License>>;
    fn license_count(&self) -> usize;
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// `scheme://authority[/prefix]` without a trailing slash; requests append `/v2/...`.
    pub base_url: String,
    /// The registry name used in image references and in berth's proxy paths.
    pub host: String,
    pub kind: UpstreamKind,
    /// How berth proves itself to this upstream (`upstream::credentials` acts on it).
    pub auth: UpstreamAuth,
    pub repositories: Vec<Glob>,
    pub timeout: Duration,
}

/// An upstream kind's credentials, as configured. Each variant has its credential source
/// in `upstream::credentials`.
#[derive(Debug, Clone)]
pub enum UpstreamAuth {
    /// No stored credentials (`kind: public`, anonymous Docker Hub or custom registries).
    Anonymous,
    /// A username and password or token, for Basic and the token realm.
    Static(Credentials),
    /// GCR/GAR: the service account key (JSON), the password of user `_json_key`.
    GcpServiceAccount(Secret),
    /// ECR: AWS credentials; the registry password comes from `GetAuthorizationToken`.
    Ecr(EcrSettings),
    /// GCR/GAR: an OAuth2 access token, the password of user `oauth2accesstoken`.
    GcpToken(GcpIdentity),
    /// ACR: the Azure managed identity's AAD token, exchanged for an ACR refresh token.
    AzureManagedIdentity(AzureIdentity),
}

/// Where a Google registry's access token comes from.
#[derive(Debug, Clone)]
pub enum GcpIdentity {
    /// The metadata server (GKE workload identity, GCE): `endpoint` is
    /// `http://metadata.google.internal` unless `GCE_METADATA_HOST` says otherwise.
    Metadata { endpoint: String },
    /// A service account key, exchanged for an access token with a signed JWT (the key
    /// itself never leaves berth).
    KeyExchange(GcpKey),
}

/// The parts of a service account key the JWT bearer grant needs.
#[derive(Debug, Clone)]
pub struct GcpKey {
    pub client_email: String,
    pub private_key_id: Option<String>,
    /// The PKCS#8 DER of the key's `private_key` (checked to be an RSA key at load).
    pub private_key: Secret,
    pub token_uri: String,
}

/// An Azure managed identity, for ACR.
#[derive(Debug, Clone)]
pub struct AzureIdentity {
    /// A user-assigned identity's client id; none is the system-assigned identity.
    pub client_id: Option<String>,
    /// `scheme://authority` of the instance metadata service (`http://169.254.169.254`,
    /// or `AZURE_POD_IDENTITY_AUTHORITY_HOST`).
    pub imds: String,
}

/// Which registry service an upstream is; it decides the default URL and host, which
/// credential keys apply, and how berth authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    Dockerhub,
    Quay,
    Ghcr,
    Ecr,
    Acr,
    Gcr,
    Gar,
    #[default]
    Custom,
    Public,
}

impl UpstreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Dockerhub => "dockerhub",
            UpstreamKind::Quay => "quay",
            UpstreamKind::Ghcr => "ghcr",
            UpstreamKind::Ecr => "ecr",
            UpstreamKind::Acr => "acr",
            UpstreamKind::Gcr => "gcr",
            UpstreamKind::Gar => "gar",
            UpstreamKind::Custom => "custom",
            UpstreamKind::Public => "public",
        }
    }

    /// The URL of the kind's well-known service, when it has one (GAR needs the region,
    /// ECR the region and registry id).
    pub fn default_url(self, region: Option<&str>, registry_id: Option<&str>) -> Option<String> {
        match self {
            UpstreamKind::Dockerhub => Some(DOCKER_HUB_URL.to_string()),
            UpstreamKind::Quay => Some("https://quay.io".to_string()),
            UpstreamKind::Ghcr => Some("https://ghcr.io".to_string()),
            UpstreamKind::Gcr => Some("https://gcr.io".to_string()),
            UpstreamKind::Gar => region.map(|r| format!("https://{r}-docker.pkg.dev")),
            UpstreamKind::Ecr => match (registry_id, region) {
                (Some(id), Some(r)) => Some(format!("https://{id}.dkr.ecr.{r}.amazonaws.com")),
                _ => None,
            },
            UpstreamKind::Acr | UpstreamKind::Custom | UpstreamKind::Public => None,
        }
    }
}

/// Docker Hub's names: references say `docker.io` or `index.docker.io`, the API is elsewhere.
pub const DOCKER_HUB_HOST: &str = "index.docker.io";
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// AWS credentials for ECR's `GetAuthorizationToken`; the registry password is derived.
#[derive(Debug, Clone)]
pub struct EcrSettings {
    /// Where berth's AWS credentials come from, and a role to assume with them.
    pub aws: AwsIdentity,
    pub region: String,
    pub registry_id: Option<String>,
    /// `scheme://authority` of the ECR API (`https://api.ecr.<region>.amazonaws.com`).
    pub endpoint: String,
}

/// berth's AWS identity (an ECR upstream's `aws_credentials`): the source of the base
/// credentials and, optionally, a role assumed with them. Resolved from the config and
/// the process environment when the config is read (so `check-config` says which source
/// the chain picked); the credentials themselves are fetched, cached and renewed by
/// `upstream::credentials::aws`.
#[derive(Debug, Clone)]
pub struct AwsIdentity {
    pub source: AwsSource,
    /// `sts:AssumeRole` on top of the source's credentials (`role_arn`, `external_id`).
    pub assume_role: Option<AssumeRole>,
    /// `scheme://authority` of STS (`https://sts.<region>.amazonaws.com`).
    pub sts_endpoint: String,
    /// The session name berth's assumed-role sessions carry (CloudTrail shows it).
    pub session_name: String,
}

#[derive(Debug, Clone)]
pub enum AwsSource {
    /// Access keys in the config or the environment, with a session token for temporary ones.
    Keys {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
    /// IRSA (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`): the projected service-account
    /// token, read at every refresh (kubelet rotates it), exchanged with
    /// `sts:AssumeRoleWithWebIdentity`.
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
    },
    /// EKS Pod Identity (and ECS): the container credentials endpoint, with the
    /// authorization token read from its file at every refresh.
    Container {
        uri: String,
        token_file: Option<PathBuf>,
        token: Option<Secret>,
    },
    /// The EC2 instance metadata service, IMDSv2 (a session token first).
    InstanceMetadata { endpoint: String },
}

impl AwsSource {
    /// What `berth upstream test` and the logs call it (never a secret).
    pub fn describe(&self) -> String {
        match self {
            AwsSource::Keys {
                access_key_id,
                session_token,
                ..
            } => format!(
                "access key {access_key_id}{}",
                if session_token.is_some() {
                    " with a session token"
                } else {
                    ""
                }
            ),
            AwsSource::WebIdentity { role_arn, .. } => format!("web identity as {role_arn}"),
            AwsSource::Container { uri, .. } => format!("container credentials from {uri}"),
            AwsSource::InstanceMetadata { endpoint } => {
                format!("instance metadata (IMDSv2) at {endpoint}")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct AssumeRole {
    pub role_arn: String,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct App {
    pub slug: String,
    /// The upstreams the app pulls from, in the order the app lists them.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Upstream image references (`host/repository:tag`) for `berth airgap export`.
    pub images: Vec<String>,
    pub hosted: HostedPolicy,
}

/// What an app's hosted registry allows (`apps[].hosted`).
#[derive(Debug, Clone, Default)]
pub struct HostedPolicy {
    /// Bytes the app's pushed content may take (each blob counted once).
    pub quota: Option<u64>,
    /// Tags that, once pushed, cannot be moved to another manifest or deleted.
    pub immutable_tags: Vec<Glob>,
}

impl HostedPolicy {
    pub fn is_immutable(&self, tag: &str) -> bool {
        self.immutable_tags.iter().any(|g| g.matches(tag))
    }
}

impl App {
    /// The one upstream selector: picks the upstream of this app that serves
    /// `host/repository`. The host must be served (see [`Upstream::serves_host`]) and the
    /// allow-list must admit the repository; the most specific glob wins, and of equally
    /// specific ones the app's later one. Serve, airgap export and import, and digest
    /// pinning all ask this, so they agree on which upstream an image comes from.
    pub fn select(&self, host: &str, repository: &str) -> Option<&Arc<Upstream>> {
        self.upstreams
            .iter()
            .filter(|u| u.serves_host(host))
            .filter_map(|u| u.match_score(repository).map(|s| (s, u)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, u)| u)
    }
}

/// A license: the public part. Its secret (the customer's password) stays in the store,
/// which finds a license by it; everything else — tokens, logs, metrics, listings — names
/// the public id.
#[derive(Debug, Clone)]
pub struct License {
    /// The public, stable name of the license, carried in tokens and logs: `lic_…` for a
    /// license in the state store, the fingerprint of the secret for one in the config file
    /// (whose `id` is its password).
    pub id: String,
    pub app: String,
    pub customer: String,
    pub expires: Option<SystemTime>,
    pub revoked: bool,
    /// Optional narrowing of the app's images: globs over `host/repository`.
    pub images: Vec<Glob>,
    pub rate_limit: Option<RateLimit>,
    pub origin: Origin,
    /// When the secret was last rotated: tokens issued before then are refused, so a
    /// rotation after a leak also ends what the leaked secret obtained.
    pub rotated: Option<SystemTime>,
}

/// Where a license or key is kept: the config file's are read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Config,
    Store,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Store => "store",
        }
    }
}

/// What a license, key or token may be: the states listings show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Active,
    Expired,
    Revoked,
}

impl State {
    pub fn of(revoked: bool, expires: Option<SystemTime>, now: SystemTime) -> State {
        if revoked {
            State::Revoked
        } else if expires.is_some_and(|t| now >= t) {
            State::Expired
        } else {
            State::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Expired => "expired",
            State::Revoked => "revoked",
        }
    }
}

/// What an API key may do in its apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// An API key (`docker login -u api -p berth_…`): the public part. Scoped to apps and
/// actions; the key itself is kept only as a hash.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The public id (`key_…`), carried in tokens and logs.
    pub id: String,
    /// What the vendor calls it (`ci-main`).
    pub name: String,
    pub apps: Vec<String>,
    pub actions: Vec<Action>,
    pub expires: Option<SystemTime>,
    pub revoked: bool,
}

impl ApiKey {
    pub fn state(&self, now: SystemTime) -> State {
        State::of(self.revoked, self.expires, now)
    }

    /// Whether the key may do `action` in `app`.
    pub fn allows(&self, app: &str, action: Action) -> bool {
        self.apps.iter().any(|a| a == app) && self.actions.contains(&action)
    }
}

impl License {
    pub fn state(&self, now: SystemTime) -> State {
        State::of(self.revoked, self.expires, now)
    }

    pub fn is_active(&self, now: SystemTime) -> bool {
        !self.revoked && self.expires.is_none_or(|t| now < t)
    }

    /// Whether the license may pull `host/repository` (its app was checked by the caller).
    pub fn allows_image(&self, host: &str, repository: &str) -> bool {
        if self.images.is_empty() {
            return true;
        }
        let image = format!("{host}/{repository}");
        self.images.iter().any(|g| g.matches(&image))
    }
}

/// The public id of a config-file license, whose `id` is its secret.
pub fn fingerprint(id: &str) -> String {
    crate::oci::Digest::sha256_of(id.as_bytes()).hex()[..32].to_string()
}

impl Upstream {
    /// Whether image references naming `host` belong to this upstream: its configured
    /// host, that host as the rewriter spells it inside a path (`host_port`), and for Docker
    /// Hub — `kind: dockerhub`, or a host that is one of Hub's names — every name of Hub
    /// (a parsed reference always says `docker.io`, a vendor may write `index.docker.io`).
    pub fn serves_host(&self, host: &str) -> bool {
        self.host == host
            // The rewriter spells host:port as host_port inside a repository path.
            || self.host.replace(':', "_") == host
            || (self.is_docker_hub() && is_docker_hub_host(host))
    }

    /// The registry image references name for this upstream: `docker.io` for Docker Hub
    /// (however its host is written), else its host.
    pub fn registry(&self) -> &str {
        if self.is_docker_hub() {
            crate::oci::name::DOCKER_HUB
        } else {
            &self.host
        }
    }

    fn is_docker_hub(&self) -> bool {
        self.kind == UpstreamKind::Dockerhub || is_docker_hub_host(&self.host)
    }

    /// The repository name the upstream knows: Docker Hub's official images live under
    /// `library/`, but references spell them `redis`.
    pub fn upstream_repository<'a>(&self, repository: &'a str) -> Cow<'a, str> {
        // Whatever the kind: an upstream that serves Hub's names is Hub, as `serves_host`
        // says (a `kind: custom` at `registry-1.docker.io` has official images too).
        if self.is_docker_hub() {
            crate::oci::name::docker_hub_repository(repository)
        } else {
            Cow::Borrowed(repository)
        }
    }

    /// Whether this upstream may serve `repository`; returns how specific the match is
    /// (longer literal prefix wins) or `None` when the allow-list excludes it.
    pub fn match_score(&self, repository: &str) -> Option<usize> {
        if self.repositories.is_empty() {
            return Some(0);
        }
        let repository = self.upstream_repository(repository);
        self.repositories
            .iter()
            .filter(|g| g.matches(&repository))
            .map(|g| g.literal_len() + 1)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, kind: UpstreamKind, host: &str, globs: &[&str]) -> Arc<Upstream> {
        Arc::new(Upstream {
            name: name.into(),
            base_url: "https://r.example".into(),
            host: host.into(),
            kind,
            auth: UpstreamAuth::Anonymous,
            repositories: globs.iter().map(|g| Glob::new(g).unwrap()).collect(),
            timeout: Duration::from_secs(1),
        })
    }

    fn app(upstreams: Vec<Arc<Upstream>>) -> App {
        App {
            slug: "acme".into(),
            upstreams,
            images: vec![],
            hosted: HostedPolicy::default(),
        }
    }

    fn picked(app: &App, host: &str, repository: &str) -> Option<String> {
        app.select(host, repository).map(|u| u.name.clone())
    }

    /// The most specific glob wins wherever it is listed; equal ones go to the later.
    #[test]
    fn an_upstream_at_a_hub_host_reads_hub_names_whatever_its_kind() {
        for kind in [UpstreamKind::Dockerhub, UpstreamKind::Custom] {
            let u = upstream("hub", kind, "docker.io", &[]);
            assert_eq!(u.upstream_repository("redis"), "library/redis", "{kind:?}");
            assert_eq!(u.upstream_repository("acme/api"), "acme/api");
        }
        let u = upstream("q", UpstreamKind::Custom, "quay.io", &[]);
        assert_eq!(u.upstream_repository("redis"), "redis");
    }

    #[test]
    fn the_most_specific_glob_wins() {
        let a = app(vec![
            upstream("broad", UpstreamKind::Custom, "quay.io", &["acme/*"]),
            upstream("team", UpstreamKind::Custom, "quay.io", &["acme/team-*"]),
            upstream("all", UpstreamKind::Custom, "quay.io", &[]),
        ]);
        assert_eq!(
            picked(&a, "quay.io", "acme/team-x").as_deref(),
            Some("team")
        );
        assert_eq!(picked(&a, "quay.io", "acme/api").as_deref(), Some("broad"));
        assert_eq!(picked(&a, "quay.io", "other/api").as_deref(), Some("all"));
        assert_eq!(picked(&a, "ghcr.io", "acme/api"), None);
        let tie = app(vec![
            upstream("first", UpstreamKind::Custom, "quay.io", &[]),
            upstream("second", UpstreamKind::Custom, "quay.io", &[]),
        ]);
        assert_eq!(picked(&tie, "quay.io", "x/y").as_deref(), Some("second"));
    }

    /// Docker Hub answers to all its names, whether the upstream says `kind: dockerhub` or
    /// only names Hub as its host (as a parsed reference says `docker.io` whatever the
    /// vendor wrote); other hosts match as configured or in the rewriter's `host_port`.
    #[test]
    fn hosts_and_docker_hub_names() {
        let hub = app(vec![upstream(
            "hub",
            UpstreamKind::Dockerhub,
            DOCKER_HUB_HOST,
            &["library/*"],
        )]);
        for host in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                picked(&hub, host, "redis").as_deref(),
                Some("hub"),
                "{host}"
            );
        }
        assert_eq!(picked(&hub, "quay.io", "redis"), None);
        let named = app(vec![upstream(
            "named",
            UpstreamKind::Custom,
            "index.docker.io",
            &[],
        )]);
        assert_eq!(
            picked(&named, "docker.io", "acme/api").as_deref(),
            Some("named")
        );
        let ported = app(vec![upstream(
            "ported",
            UpstreamKind::Custom,
            "registry.example.com:5000",
            &[],
        )]);
        for host in ["registry.example.com:5000", "registry.example.com_5000"] {
            assert_eq!(picked(&ported, host, "a/b").as_deref(), Some("ported"));
        }
        assert_eq!(picked(&ported, "registry.example.com", "a/b"), None);
    }
}
