//! Configuration: the YAML contract (raw serde structs), `${ENV}` and `*_file` secrets, and
//! validation into the `Config` the rest of berth uses. Every error names the key it is about.

mod glob;
mod secret;

pub use glob::Glob;
pub use secret::Secret;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// A configuration problem, always phrased as `key: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

// ---- raw YAML shape -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    cache: RawCache,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    apps: Vec<RawApp>,
    #[serde(default)]
    licenses: Vec<RawLicense>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    rewrite: Vec<RawRewrite>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    app: String,
    pull_secret: Option<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    exclude_namespaces: Vec<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    token_key_file: Option<PathBuf>,
    token_ttl: Option<String>,
    realm: Option<String>,
    audit_log: Option<PathBuf>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: f64,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    hostname: String,
    #[serde(default)]
    tls: Vec<RawTls>,
    webhook_tls: Option<Vec<RawTls>>,
    shutdown_timeout: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_timeout: Option<String>,
    send_timeout: Option<String>,
    max_connections: Option<usize>,
    admin_listen: Option<String>,
    webhook_listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    dir: PathBuf,
    max_size: Option<String>,
    tag_ttl: Option<String>,
    #[serde(default)]
    offline: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    #[serde(default)]
    kind: UpstreamKind,
    url: Option<String>,
    host: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    // ecr
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    region: Option<String>,
    registry_id: Option<String>,
    ecr_endpoint: Option<String>,
    // gcr / gar
    service_account_key: Option<String>,
    service_account_key_file: Option<PathBuf>,
    repositories: Option<Vec<String>>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    slug: String,
    upstreams: Vec<String>,
    /// Upstream image references `berth airgap export` bundles by default.
    #[serde(default)]
    images: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLicense {
    id: String,
    app: String,
    customer: String,
    expires: Option<String>,
    #[serde(default)]
    revoked: bool,
    images: Option<Vec<String>>,
    rate_limit: Option<RawRateLimit>,
}

// ---- validated configuration ----------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub upstreams: Vec<Arc<Upstream>>,
    pub apps: HashMap<String, App>,
    pub licenses: Licenses,
    pub auth: AuthConfig,
    /// Admission webhook rules, first match wins.
    pub rewrite: Vec<RewriteConfig>,
    /// Where the file was read from, so relative paths and reloads resolve against it.
    pub source: Option<PathBuf>,
}

/// Licenses by id. The id is the customer's password, so `Debug` prints only the count.
#[derive(Clone, Default)]
pub struct Licenses {
    by_id: HashMap<String, License>,
    by_fingerprint: HashMap<String, String>,
}

impl std::fmt::Debug for Licenses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} licenses>", self.by_id.len())
    }
}

impl Licenses {
    pub fn get(&self, id: &str) -> Option<&License> {
        self.by_id.get(id)
    }

    pub fn by_fingerprint(&self, fp: &str) -> Option<&License> {
        self.by_fingerprint
            .get(fp)
            .and_then(|id| self.by_id.get(id))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub hostname: String,
    pub tls: Vec<TlsFiles>,
    pub shutdown_timeout: Duration,
    /// Longest a client may take to send a request head once it started (slow-loris).
    pub header_timeout: Duration,
    /// Longest a plain-HTTP keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a request body (for a small one, all of it).
    pub body_timeout: Duration,
    /// Longest a response write waits for the client to take bytes.
    pub send_timeout: Duration,
    /// Connections served at once on the customer listener; more are closed at accept.
    pub max_connections: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, apart from customers.
    pub admin_listen: Option<SocketAddr>,
    /// Where the admission webhook (`/admission/rewrite`) is served, over TLS with the
    /// `server.tls` certificates; never on the customer listener.
    pub webhook_listen: Option<SocketAddr>,
    /// The webhook listener's certificates (picked by SNI); `server.tls` when not given.
    pub webhook_tls: Vec<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// HMAC key for berth-issued bearer tokens; generated on first start when absent.
    pub token_key_file: PathBuf,
    pub token_ttl: Duration,
    /// The token endpoint advertised in challenges (`https://<hostname>/token` by default).
    pub realm: String,
    /// One JSON line per manifest pull, when set.
    pub audit_log: Option<PathBuf>,
    /// Default per-license request rate; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone)]
pub struct RewriteConfig {
    pub app: String,
    pub pull_secret: Option<String>,
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Cap on cached blob bytes; least recently used blobs go first. `None`: unbounded.
    pub max_size: Option<u64>,
    /// How long a tag → digest answer is trusted before it is revalidated with a HEAD.
    pub tag_ttl: Duration,
    /// Serve from the cache only; never contact an upstream.
    pub offline: bool,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// `scheme://authority[/prefix]` without a trailing slash; requests append `/v2/...`.
    pub base_url: String,
    /// The registry name used in image references and in berth's proxy paths.
    pub host: String,
    pub kind: UpstreamKind,
    /// Username and password (or token) for Basic and the token realm. GCR/GAR hold
    /// `_json_key` and the service account JSON here.
    pub credentials: Option<Credentials>,
    /// Set for `kind: ecr`: the registry password comes from `GetAuthorizationToken`.
    pub ecr: Option<EcrSettings>,
    pub repositories: Vec<Glob>,
    pub timeout: Duration,
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
}

/// Docker Hub's names: references say `docker.io` or `index.docker.io`, the API is elsewhere.
pub const DOCKER_HUB_HOST: &str = "index.docker.io";
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// AWS credentials for ECR's `GetAuthorizationToken`; the registry password is derived.
#[derive(Debug, Clone)]
pub struct EcrSettings {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub region: String,
    pub registry_id: Option<String>,
    /// `scheme://authority` of the ECR API (`https://api.ecr.<region>.amazonaws.com`).
    pub endpoint: String,
}

#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct App {
    pub slug: String,
    /// Indexes into `Config::upstreams`.
    pub upstreams: Vec<usize>,
    /// Upstream image references (`host/repository:tag`) for `berth airgap export`.
    pub images: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct License {
    pub id: Secret,
    /// A stable, non-secret name for the license (a hash of the id), carried in tokens.
    pub fingerprint: String,
    pub app: String,
    pub customer: String,
    pub expires: Option<SystemTime>,
    pub revoked: bool,
    /// Optional narrowing of the app's images: globs over `host/repository`.
    pub images: Vec<Glob>,
    pub rate_limit: Option<RateLimit>,
}

impl License {
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

/// The non-secret name of a license id.
pub fn fingerprint(id: &str) -> String {
    crate::oci::Digest::sha256_of(id.as_bytes()).hex()[..32].to_string()
}

impl Upstream {
    /// Whether image references naming `host` belong to this upstream. Docker Hub is known
    /// by several names; the rest by the configured host only.
    pub fn serves_host(&self, host: &str) -> bool {
        self.host == host
            // The rewriter spells host:port as host_port inside a repository path.
            || self.host.replace(':', "_") == host
            || (self.kind == UpstreamKind::Dockerhub
                && crate::oci::name::DOCKER_HUB_ALIASES.contains(&host))
    }

    /// The repository name the upstream knows: Docker Hub's official images live under
    /// `library/`, but references spell them `redis`.
    pub fn upstream_repository<'a>(&self, repository: &'a str) -> std::borrow::Cow<'a, str> {
        if self.kind == UpstreamKind::Dockerhub {
            crate::oci::name::docker_hub_repository(repository)
        } else {
            std::borrow::Cow::Borrowed(repository)
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

impl Config {
    /// Reads, interpolates and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                path.display().to_string(),
                format!("cannot read config file: {e}"),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, base, &|name| std::env::var(name).ok())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses YAML text; relative paths resolve against `base`; `env` looks up `${VAR}`.
    pub fn parse(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "config".to_string()
            } else {
                key
            };
            ConfigError::new(key, e.into_inner().to_string())
        })?;
        validate(raw, base, env)
    }

    pub fn app(&self, slug: &str) -> Option<&App> {
        self.apps.get(slug)
    }

    pub fn license(&self, id: &str) -> Option<&License> {
        self.licenses.get(id)
    }

    /// Picks the upstream of `app` that serves `host/repository`: the host must match and
    /// the most specific repository glob wins.
    pub fn upstream_for(&self, app: &App, host: &str, repository: &str) -> Option<&Arc<Upstream>> {
        app.upstreams
            .iter()
            .map(|&i| &self.upstreams[i])
            .filter(|u| u.serves_host(host))
            .filter_map(|u| u.match_score(repository).map(|s| (s, u)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, u)| u)
    }
}

/// The configuration in force. Requests take a snapshot (`current`) and keep it for their
/// whole life, so a reload never changes the rules under a pull in flight.
pub struct Live(std::sync::RwLock<Arc<Config>>);

impl Live {
    pub fn new(config: Config) -> Live {
        Live(std::sync::RwLock::new(Arc::new(config)))
    }

    pub fn current(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, config: Config) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Expands `${NAME}` from the environment; `$$` is a literal `$`.
fn interpolate(
    key: &str,
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| ConfigError::new(key, "unterminated ${...}"))?;
            let name = &inner[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::new(
                    key,
                    format!("invalid environment variable name {name:?}"),
                ));
            }
            let v = env(name).ok_or_else(|| {
                ConfigError::new(key, format!("environment variable {name} is not set"))
            })?;
            out.push_str(&v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| ConfigError::new(key, format!("invalid duration {s:?}: {e}")))
}

fn valid_host(h: &str) -> bool {
    crate::oci::name::valid_host(h)
}

fn valid_slug(s: &str) -> bool {
    crate::oci::name::valid_component(s)
}

/// The URL, host and credentials of one upstream, checked against what its kind needs.
struct UpstreamAuth {
    base_url: String,
    host: String,
    credentials: Option<Credentials>,
    ecr: Option<EcrSettings>,
}

/// Reads a secret given inline (`key`, with `${ENV}`) or as a file (`key_file`, trailing
/// newlines dropped); both at once is an error.
fn read_secret(
    key: &str,
    inline: Option<&String>,
    file: Option<&PathBuf>,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    k: &dyn Fn(&str) -> String,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            k(&format!("{key}_file")),
            format!("set either {key} or {key}_file, not both"),
        )),
        (Some(v), None) => Ok(Some(Secret::new(interpolate(&k(key), v, env)?))),
        (None, Some(f)) => {
            let path = resolve_path(base, f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(
                    k(&format!("{key}_file")),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
        }
        (None, None) => Ok(None),
    }
}

fn validate_upstream_auth(
    u: &RawUpstream,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    k: &dyn Fn(&str) -> String,
) -> Result<UpstreamAuth, ConfigError> {
    use UpstreamKind as K;
    let kind = u.kind;
    let required =
        |field: &str| ConfigError::new(k(field), format!("required for kind {}", kind.as_str()));
    let not_used =
        |field: &str| ConfigError::new(k(field), format!("not used by kind {}", kind.as_str()));
    // Keys that belong to other kinds are errors, so a typo'd kind cannot silently
    // ignore the credentials meant for it.
    let ecr_keys: [(&str, bool); 6] = [
        ("access_key_id", u.access_key_id.is_some()),
        ("secret_access_key", u.secret_access_key.is_some()),
        ("secret_access_key_file", u.secret_access_key_file.is_some()),
        ("registry_id", u.registry_id.is_some()),
        ("ecr_endpoint", u.ecr_endpoint.is_some()),
        ("region", u.region.is_some()),
    ];
    for (field, set) in ecr_keys {
        let used = kind == K::Ecr || (kind == K::Gar && field == "region");
        if set && !used {
            return Err(not_used(field));
        }
    }
    let gcp = matches!(kind, K::Gcr | K::Gar);
    for (field, set) in [
        ("service_account_key", u.service_account_key.is_some()),
        (
            "service_account_key_file",
            u.service_account_key_file.is_some(),
        ),
    ] {
        if set && !gcp {
            return Err(not_used(field));
        }
    }
    if matches!(kind, K::Ecr | K::Gcr | K::Gar | K::Public) {
        for (field, set) in [
            ("username", u.username.is_some()),
            ("password", u.password.is_some()),
            ("password_file", u.password_file.is_some()),
        ] {
            if set {
                return Err(not_used(field));
            }
        }
    }
    let region = match &u.region {
        Some(r) => {
            let r = interpolate(&k("region"), r, env)?;
            if r.is_empty()
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(ConfigError::new(
                    k("region"),
                    format!("invalid region {r:?} (e.g. eu-west-1)"),
                ));
            }
            Some(r)
        }
        None => None,
    };
    let registry_id = match &u.registry_id {
        Some(id) => {
            let id = interpolate(&k("registry_id"), id, env)?;
            if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConfigError::new(
                    k("registry_id"),
                    "an AWS account id is 12 digits",
                ));
            }
            Some(id)
        }
        None => None,
    };

    // URL: explicit, else the kind's well-known service.
    let default_url = match kind {
        K::Dockerhub => Some(DOCKER_HUB_URL.to_string()),
        K::Quay => Some("https://quay.io".to_string()),
        K::Ghcr => Some("https://ghcr.io".to_string()),
        K::Gcr => Some("https://gcr.io".to_string()),
        K::Gar => region
            .as_ref()
            .map(|r| format!("https://{r}-docker.pkg.dev")),
        K::Ecr => match (&registry_id, &region) {
            (Some(id), Some(r)) => Some(format!("https://{id}.dkr.ecr.{r}.amazonaws.com")),
            _ => None,
        },
        K::Acr | K::Custom | K::Public => None,
    };
    let url = match (&u.url, default_url) {
        (Some(url), _) => interpolate(&k("url"), url, env)?,
        (None, Some(d)) => d,
        (None, None) if kind == K::Gar => return Err(required("region")),
        (None, None) if kind == K::Ecr && region.is_some() => {
            return Err(ConfigError::new(
                k("url"),
                "required for kind ecr unless registry_id is set",
            ))
        }
        (None, None) if kind == K::Ecr => return Err(required("region")),
        (None, None) => return Err(required("url")),
    };
    let (base_url, url_host) = parse_base_url(&url).map_err(|m| ConfigError::new(k("url"), m))?;
    let host = match &u.host {
        Some(h) => interpolate(&k("host"), h, env)?,
        // Hub images are referenced as docker.io/..., whatever URL serves them.
        None if kind == K::Dockerhub => DOCKER_HUB_HOST.to_string(),
        None => url_host,
    };
    if !valid_host(&host) {
        return Err(ConfigError::new(
            k("host"),
            format!("invalid registry host {host:?} (lowercase DNS name, optional :port)"),
        ));
    }

    let password = read_secret(
        "password",
        u.password.as_ref(),
        u.password_file.as_ref(),
        base,
        env,
        k,
    )?;
    let mut credentials = match (&u.username, password) {
        (Some(user), Some(password)) => Some(Credentials {
            username: interpolate(&k("username"), user, env)?,
            password,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                k("password"),
                "username is set but neither password nor password_file is",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                k("username"),
                "a password is set but no username",
            ))
        }
    };
    if matches!(kind, K::Quay | K::Ghcr | K::Acr) && credentials.is_none() {
        // Anonymous pulls are what `kind: public` is for. Docker Hub is the exception:
        // anonymous Hub pulls (public images such as `redis`, within Hub's per-address
        // rate limit) still need its routing (`docker.io`, `library/`).
        return Err(required("username"));
    }

    let mut ecr = None;
    match kind {
        K::Ecr => {
            let access_key_id = match &u.access_key_id {
                Some(a) => interpolate(&k("access_key_id"), a, env)?,
                None => return Err(required("access_key_id")),
            };
            let secret_access_key = read_secret(
                "secret_access_key",
                u.secret_access_key.as_ref(),
                u.secret_access_key_file.as_ref(),
                base,
                env,
                k,
            )?
            .ok_or_else(|| required("secret_access_key"))?;
            let region = region.ok_or_else(|| required("region"))?;
            let endpoint = match &u.ecr_endpoint {
                Some(e) => {
                    let e = interpolate(&k("ecr_endpoint"), e, env)?;
                    parse_base_url(&e)
                        .map_err(|m| ConfigError::new(k("ecr_endpoint"), m))?
                        .0
                }
                None => format!("https://api.ecr.{region}.amazonaws.com"),
            };
            ecr = Some(EcrSettings {
                access_key_id,
                secret_access_key,
                region,
                registry_id,
                endpoint,
            });
        }
        K::Gcr | K::Gar => {
            let key = read_secret(
                "service_account_key",
                u.service_account_key.as_ref(),
                u.service_account_key_file.as_ref(),
                base,
                env,
                k,
            )?
            .ok_or_else(|| required("service_account_key"))?;
            // Checked here so a truncated paste fails at check-config, not at the first
            // pull. The error never quotes the key.
            let is_object = serde_json::from_str::<serde_json::Value>(key.expose())
                .map(|v| v.is_object())
                .unwrap_or(false);
            if !is_object {
                return Err(ConfigError::new(
                    k("service_account_key"),
                    "not a JSON object (expected the service account key file's contents)",
                ));
            }
            // Google's registries take the key itself as the password of user _json_key.
            credentials = Some(Credentials {
                username: "_json_key".into(),
                password: key,
            });
        }
        _ => {}
    }
    Ok(UpstreamAuth {
        base_url,
        host,
        credentials,
        ecr,
    })
}

fn validate(
    raw: RawConfig,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
        ConfigError::new(
            "server.listen",
            format!(
                "invalid socket address {:?} (expected e.g. 0.0.0.0:443)",
                raw.server.listen
            ),
        )
    })?;
    if !valid_host(&raw.server.hostname) {
        return Err(ConfigError::new(
            "server.hostname",
            format!(
                "invalid hostname {:?} (lowercase DNS name, optional :port)",
                raw.server.hostname
            ),
        ));
    }
    let tls_files = |key: &str, list: &[RawTls]| -> Result<Vec<TlsFiles>, ConfigError> {
        let mut files = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let cert = resolve_path(base, &t.cert);
            let key_file = resolve_path(base, &t.key);
            for (field, p) in [("cert", &cert), ("key", &key_file)] {
                if !p.is_file() {
                    return Err(ConfigError::new(
                        format!("{key}[{i}].{field}"),
                        format!("file not found: {}", p.display()),
                    ));
                }
            }
            files.push(TlsFiles {
                cert,
                key: key_file,
            });
        }
        Ok(files)
    };
    let tls = tls_files("server.tls", &raw.server.tls)?;
    let webhook_tls = match &raw.server.webhook_tls {
        Some(list) => tls_files("server.webhook_tls", list)?,
        None => tls.clone(),
    };
    let shutdown_timeout = match &raw.server.shutdown_timeout {
        Some(s) => parse_duration("server.shutdown_timeout", s)?,
        None => Duration::from_secs(30),
    };
    let positive = |key: &str, v: &Option<String>, default: u64| match v {
        None => Ok(Duration::from_secs(default)),
        Some(s) => match parse_duration(key, s)? {
            d if d.is_zero() => Err(ConfigError::new(key, "must be longer than 0s")),
            d => Ok(d),
        },
    };
    let header_timeout = positive("server.header_timeout", &raw.server.header_timeout, 30)?;
    let idle_timeout = positive("server.idle_timeout", &raw.server.idle_timeout, 75)?;
    let body_timeout = positive("server.body_timeout", &raw.server.body_timeout, 30)?;
    let send_timeout = positive("server.send_timeout", &raw.server.send_timeout, 60)?;
    let max_connections = match raw.server.max_connections {
        None => 4096,
        Some(0) => {
            return Err(ConfigError::new(
                "server.max_connections",
                "must be at least 1",
            ))
        }
        Some(n) => n,
    };
    let webhook_listen = match &raw.server.webhook_listen {
        None => None,
        Some(a) => {
            let addr: SocketAddr = a.parse().map_err(|_| {
                ConfigError::new(
                    "server.webhook_listen",
                    format!("invalid socket address {a:?} (expected e.g. 0.0.0.0:8443)"),
                )
            })?;
            if webhook_tls.is_empty() {
                return Err(ConfigError::new(
                    "server.webhook_listen",
                    "needs server.webhook_tls or server.tls: the API server calls admission webhooks over HTTPS only",
                ));
            }
            if addr == listen {
                return Err(ConfigError::new(
                    "server.webhook_listen",
                    "must differ from server.listen",
                ));
            }
            Some(addr)
        }
    };

    let mut upstreams = Vec::new();
    let mut upstream_index = HashMap::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let k = |f: &str| format!("upstreams[{i}].{f}");
        if !valid_slug(&u.name) {
            return Err(ConfigError::new(
                k("name"),
                format!(
                    "invalid name {:?} (lowercase letters, digits, . _ -)",
                    u.name
                ),
            ));
        }
        if upstream_index.insert(u.name.clone(), i).is_some() {
            return Err(ConfigError::new(
                k("name"),
                format!("duplicate upstream name {:?}", u.name),
            ));
        }
        let up = validate_upstream_auth(&u, base, env, &k)?;
        let mut repositories = Vec::new();
        for (j, p) in u.repositories.unwrap_or_default().iter().enumerate() {
            repositories.push(
                Glob::new(p).map_err(|m| {
                    ConfigError::new(format!("upstreams[{i}].repositories[{j}]"), m)
                })?,
            );
        }
        let timeout = match &u.timeout {
            Some(s) => parse_duration(&k("timeout"), s)?,
            None => Duration::from_secs(30),
        };
        upstreams.push(Arc::new(Upstream {
            name: u.name,
            base_url: up.base_url,
            host: up.host,
            kind: u.kind,
            credentials: up.credentials,
            ecr: up.ecr,
            repositories,
            timeout,
        }));
    }

    let mut apps = HashMap::new();
    for (i, a) in raw.apps.into_iter().enumerate() {
        if !valid_slug(&a.slug) {
            return Err(ConfigError::new(
                format!("apps[{i}].slug"),
                format!(
                    "invalid slug {:?} (lowercase letters, digits, . _ -)",
                    a.slug
                ),
            ));
        }
        if a.upstreams.is_empty() {
            return Err(ConfigError::new(
                format!("apps[{i}].upstreams"),
                "an app needs at least one upstream",
            ));
        }
        let mut idx = Vec::new();
        for name in &a.upstreams {
            let n = upstream_index.get(name).ok_or_else(|| {
                ConfigError::new(
                    format!("apps[{i}].upstreams"),
                    format!("unknown upstream {name:?}"),
                )
            })?;
            idx.push(*n);
        }
        if apps.contains_key(&a.slug) {
            return Err(ConfigError::new(
                format!("apps[{i}].slug"),
                format!("duplicate app slug {:?}", a.slug),
            ));
        }
        for (j, image) in a.images.iter().enumerate() {
            if let Err(e) = crate::oci::reference::ImageRef::parse(image) {
                return Err(ConfigError::new(
                    format!("apps[{i}].images[{j}]"),
                    format!("{image:?}: {e}"),
                ));
            }
        }
        apps.insert(
            a.slug.clone(),
            App {
                slug: a.slug,
                upstreams: idx,
                images: a.images,
            },
        );
    }

    let mut licenses = HashMap::new();
    let mut fingerprints = HashMap::new();
    for (i, l) in raw.licenses.into_iter().enumerate() {
        let k = |f: &str| format!("licenses[{i}].{f}");
        // The id doubles as the customer's password: demand enough of it to resist guessing.
        if l.id.len() < 8 || !l.id.bytes().all(|b| b.is_ascii_graphic()) || l.id.contains(':') {
            return Err(ConfigError::new(
                k("id"),
                "a license id needs at least 8 printable characters and no ':'",
            ));
        }
        if !apps.contains_key(&l.app) {
            return Err(ConfigError::new(
                k("app"),
                format!("unknown app {:?}", l.app),
            ));
        }
        let expires = match &l.expires {
            Some(s) => Some(humantime::parse_rfc3339_weak(s.trim()).map_err(|e| {
                ConfigError::new(
                    k("expires"),
                    format!("invalid timestamp {s:?} (RFC 3339, e.g. 2027-06-30T00:00:00Z): {e}"),
                )
            })?),
            None => None,
        };
        if licenses.contains_key(&l.id) {
            return Err(ConfigError::new(k("id"), "duplicate license id"));
        }
        let mut images = Vec::new();
        for (j, p) in l.images.unwrap_or_default().iter().enumerate() {
            images.push(
                Glob::new(p)
                    .map_err(|m| ConfigError::new(format!("licenses[{i}].images[{j}]"), m))?,
            );
        }
        let rate_limit = match l.rate_limit {
            Some(r) => Some(rate_limit(&k("rate_limit"), r)?),
            None => None,
        };
        fingerprints.insert(fingerprint(&l.id), l.id.clone());
        licenses.insert(
            l.id.clone(),
            License {
                fingerprint: fingerprint(&l.id),
                id: Secret::new(l.id),
                app: l.app,
                customer: l.customer,
                expires,
                revoked: l.revoked,
                images,
                rate_limit,
            },
        );
    }

    let cache_dir = resolve_path(base, &raw.cache.dir);
    let token_ttl = match &raw.auth.token_ttl {
        Some(s) => parse_duration("auth.token_ttl", s)?,
        None => Duration::from_secs(300),
    };
    if token_ttl < Duration::from_secs(60) {
        return Err(ConfigError::new(
            "auth.token_ttl",
            "must be at least 60s (clients refresh tokens only on expiry)",
        ));
    }
    let scheme = if tls.is_empty() { "http" } else { "https" };
    let realm = match raw.auth.realm {
        Some(r) => {
            let uri: http::Uri = r
                .parse()
                .map_err(|_| ConfigError::new("auth.realm", format!("invalid URL {r:?}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(ConfigError::new(
                    "auth.realm",
                    format!("{r:?} must be an absolute http(s) URL"),
                ));
            }
            r
        }
        None => format!("{scheme}://{}/token", raw.server.hostname),
    };
    let mut rewrite = Vec::new();
    for (i, r) in raw.rewrite.into_iter().enumerate() {
        if !apps.contains_key(&r.app) {
            return Err(ConfigError::new(
                format!("rewrite[{i}].app"),
                format!("unknown app {:?}", r.app),
            ));
        }
        if let Some(s) = &r.pull_secret {
            if !valid_slug(s) {
                return Err(ConfigError::new(
                    format!("rewrite[{i}].pull_secret"),
                    format!("{s:?} is not a valid Kubernetes object name"),
                ));
            }
        }
        rewrite.push(RewriteConfig {
            app: r.app,
            pull_secret: r.pull_secret,
            namespaces: r.namespaces,
            exclude_namespaces: r.exclude_namespaces,
            labels: r.labels,
        });
    }
    let auth = AuthConfig {
        token_key_file: match &raw.auth.token_key_file {
            Some(p) => resolve_path(base, p),
            None => crate::storage::layout::token_key(&cache_dir),
        },
        token_ttl,
        realm,
        audit_log: raw.auth.audit_log.as_ref().map(|p| resolve_path(base, p)),
        rate_limit: match raw.auth.rate_limit {
            Some(r) => Some(rate_limit("auth.rate_limit", r)?),
            None => None,
        },
    };

    Ok(Config {
        server: ServerConfig {
            listen,
            hostname: raw.server.hostname,
            tls,
            shutdown_timeout,
            header_timeout,
            idle_timeout,
            body_timeout,
            send_timeout,
            max_connections,
            webhook_listen,
            webhook_tls,
            admin_listen: match &raw.server.admin_listen {
                Some(a) => Some(a.parse().map_err(|_| {
                    ConfigError::new(
                        "server.admin_listen",
                        format!("invalid socket address {a:?} (expected e.g. 127.0.0.1:9090)"),
                    )
                })?),
                None => None,
            },
        },
        cache: CacheConfig {
            dir: cache_dir,
            max_size: match &raw.cache.max_size {
                Some(s) => Some(parse_size(s).map_err(|m| ConfigError::new("cache.max_size", m))?),
                None => None,
            },
            tag_ttl: match &raw.cache.tag_ttl {
                Some(s) => parse_duration("cache.tag_ttl", s)?,
                None => Duration::from_secs(300),
            },
            offline: raw.cache.offline,
        },
        upstreams,
        apps,
        licenses: Licenses {
            by_id: licenses,
            by_fingerprint: fingerprints,
        },
        auth,
        rewrite,
        source: None,
    })
}

fn rate_limit(key: &str, r: RawRateLimit) -> Result<RateLimit, ConfigError> {
    if !(r.per_second.is_finite() && r.per_second > 0.0) {
        return Err(ConfigError::new(
            format!("{key}.per_second"),
            "must be a positive number",
        ));
    }
    let burst = r
        .burst
        .unwrap_or_else(|| (r.per_second.ceil() as u32).max(1));
    if burst == 0 {
        return Err(ConfigError::new(
            format!("{key}.burst"),
            "must be at least 1",
        ));
    }
    Ok(RateLimit {
        per_second: r.per_second,
        burst,
    })
}

/// Parses `50GiB`, `512MiB`, `10GB`, `1048576` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 50GiB, 500MB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("size {s:?} out of range"));
    }
    Ok(bytes as u64)
}

/// Splits an upstream URL into a normalized base (`scheme://authority[/prefix]`) and the
/// host part used as the default reference name.
fn parse_base_url(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("invalid URL {url:?}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("URL {url:?} must start with http:// or https://")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    if authority.as_str().contains('@') {
        // Credentials belong in username/password, where they are redacted.
        return Err("credentials in the URL are not allowed; use username and password".into());
    }
    if uri.query().is_some() {
        return Err(format!("URL {url:?} must not have a query"));
    }
    let path = uri.path().trim_end_matches('/');
    let path = path.strip_suffix("/v2").unwrap_or(path);
    let base = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        authority.as_str().to_ascii_lowercase(),
        path
    );
    Ok((base, authority.host().to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server:
  listen: 127.0.0.1:5443
  hostname: images.acme.test
cache:
  dir: ./berth-data
upstreams:
  - name: acme-quay
    url: https://quay.io
    username: acme+robot
    password: ${ACME_QUAY_TOKEN}
    repositories: ["acme/*"]
  - name: acme-quay-team
    url: https://quay.io
    username: acme+team
    password: x
    repositories: ["acme/team-*"]
apps:
  - slug: acme
    upstreams: [acme-quay, acme-quay-team]
licenses:
  - id: 2aPXSl9pLCbkgRKQ
    app: acme
    customer: Big Bank
    expires: 2027-06-30T00:00:00Z
"#;

    fn env(name: &str) -> Option<String> {
        (name == "ACME_QUAY_TOKEN").then(|| "s3cr3t".to_string())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/berth"), &env)
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.hostname, "images.acme.test");
        assert_eq!(c.cache.dir, PathBuf::from("/etc/berth/./berth-data"));
        let u = &c.upstreams[0];
        assert_eq!(u.host, "quay.io");
        assert_eq!(u.base_url, "https://quay.io");
        assert_eq!(u.credentials.as_ref().unwrap().password.expose(), "s3cr3t");
        let l = c.license("2aPXSl9pLCbkgRKQ").unwrap();
        assert!(l.is_active(SystemTime::UNIX_EPOCH));
        assert!(!l.is_active(humantime::parse_rfc3339("2027-07-01T00:00:00Z").unwrap()));
    }

    #[test]
    fn most_specific_glob_picks_the_upstream() {
        let c = parse(GOOD).unwrap();
        let app = c.app("acme").unwrap();
        assert_eq!(
            c.upstream_for(app, "quay.io", "acme/api").unwrap().name,
            "acme-quay"
        );
        assert_eq!(
            c.upstream_for(app, "quay.io", "acme/team-x").unwrap().name,
            "acme-quay-team"
        );
        assert!(c.upstream_for(app, "quay.io", "other/api").is_none());
        assert!(c.upstream_for(app, "ghcr.io", "acme/api").is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let bad = GOOD.replace(
            "upstreams: [acme-quay, acme-quay-team]",
            "upstreams: [acme-qay]",
        );
        assert_eq!(
            parse(&bad).unwrap_err().to_string(),
            "apps[0].upstreams: unknown upstream \"acme-qay\""
        );
        let bad = GOOD.replace(
            "    username: acme+robot\n",
            "    username: acme+robot\n    pasword: x\n",
        );
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.key, "upstreams[0].pasword");
        assert!(e.message.contains("unknown field `pasword`"), "{e}");
        let bad = GOOD.replace("${ACME_QUAY_TOKEN}", "${MISSING_VAR}");
        assert_eq!(
            parse(&bad).unwrap_err().to_string(),
            "upstreams[0].password: environment variable MISSING_VAR is not set"
        );
        let bad = GOOD.replace("2027-06-30T00:00:00Z", "next tuesday");
        assert_eq!(parse(&bad).unwrap_err().key, "licenses[0].expires");
        let bad = GOOD.replace("127.0.0.1:5443", "nowhere");
        assert_eq!(parse(&bad).unwrap_err().key, "server.listen");
        let bad = GOOD.replace(
            "https://quay.io\n    username: acme+robot",
            "https://u:p@quay.io\n    username: acme+robot",
        );
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.key, "upstreams[0].url");
        assert!(!e.to_string().contains("u:p"));
    }

    #[test]
    fn secrets_do_not_appear_in_debug() {
        let c = parse(GOOD).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("s3cr3t"));
        assert!(!dump.contains("2aPXSl9pLCbkgRKQ"));
    }

    #[test]
    fn interpolation() {
        let e = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(
            interpolate("k", "a${A}b$$c$d", &e).unwrap(),
            "ax b$c$d".replace(' ', "")
        );
        assert!(interpolate("k", "${A", &e).is_err());
        assert!(interpolate("k", "${}", &e).is_err());
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../config.example.yaml");
        let c = parse(text).unwrap();
        assert_eq!(c.upstreams[0].host, "quay.io");
        assert_eq!(c.cache.tag_ttl, Duration::from_secs(300));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("50GiB").unwrap(), 50 << 30);
        assert_eq!(parse_size("1.5 MB").unwrap(), 1_500_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("ten gigs").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("5XB").is_err());
    }

    /// GOOD with its upstreams replaced by one entry (a YAML flow mapping's inside).
    fn one_upstream(entry: &str) -> Result<Config, ConfigError> {
        let start = GOOD.find("upstreams:\n").unwrap();
        let end = GOOD.find("apps:").unwrap();
        let text = format!(
            "{}upstreams:\n  - {{ name: u, {entry} }}\n{}",
            &GOOD[..start],
            GOOD[end..].replace("[acme-quay, acme-quay-team]", "[u]")
        );
        parse(&text)
    }

    fn err(entry: &str) -> String {
        one_upstream(entry).unwrap_err().to_string()
    }

    #[test]
    fn connection_timeouts_default_and_refuse_zero() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.header_timeout, Duration::from_secs(30));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(75));
        let with = |extra: &str| {
            parse(&GOOD.replace(
                "  hostname: images.acme.test\n",
                &format!("  hostname: images.acme.test\n  {extra}\n"),
            ))
        };
        assert_eq!(
            with("idle_timeout: 5m").unwrap().server.idle_timeout,
            Duration::from_secs(300)
        );
        assert_eq!(
            with("header_timeout: 0s").unwrap_err().to_string(),
            "server.header_timeout: must be longer than 0s"
        );
        assert!(with("idle_timeout: soon")
            .unwrap_err()
            .to_string()
            .starts_with("server.idle_timeout: invalid duration"));
        assert_eq!(c.server.body_timeout, Duration::from_secs(30));
        assert_eq!(c.server.send_timeout, Duration::from_secs(60));
        assert_eq!(c.server.max_connections, 4096);
        assert_eq!(c.server.webhook_listen, None);
        assert_eq!(
            with("send_timeout: 0s").unwrap_err().to_string(),
            "server.send_timeout: must be longer than 0s"
        );
        assert_eq!(
            with("max_connections: 0").unwrap_err().key,
            "server.max_connections"
        );
        // The API server speaks only HTTPS to webhooks.
        let e = with("webhook_listen: 127.0.0.1:8443").unwrap_err();
        assert_eq!(e.key, "server.webhook_listen");
        assert!(e.to_string().contains("server.tls"), "{e}");
        assert_eq!(
            with("webhook_listen: nowhere").unwrap_err().key,
            "server.webhook_listen"
        );
        assert_eq!(
            with("webhook_tls: [ { cert: /nonexistent.crt, key: /nonexistent.key } ]")
                .unwrap_err()
                .key,
            "server.webhook_tls[0].cert"
        );
    }

    #[test]
    fn kinds_fill_in_their_defaults() {
        let u = one_upstream("kind: dockerhub, username: a, password: b").unwrap();
        let u = &u.upstreams[0];
        assert_eq!(u.base_url, "https://registry-1.docker.io");
        assert_eq!(u.host, "index.docker.io");
        assert!(u.serves_host("docker.io") && u.serves_host("index.docker.io"));
        assert_eq!(u.upstream_repository("redis"), "library/redis");
        assert_eq!(u.upstream_repository("bitnami/redis"), "bitnami/redis");
        // A test URL keeps Hub's names and rules.
        let c = one_upstream(
            "kind: dockerhub, url: \"http://127.0.0.1:5000\", username: a, password: b",
        )
        .unwrap();
        assert_eq!(c.upstreams[0].host, "index.docker.io");
        assert_eq!(c.upstreams[0].base_url, "http://127.0.0.1:5000");

        for (kind, url) in [("quay", "https://quay.io"), ("ghcr", "https://ghcr.io")] {
            let c = one_upstream(&format!("kind: {kind}, username: a, password: b")).unwrap();
            assert_eq!(c.upstreams[0].base_url, url);
        }
        let c = one_upstream("kind: gar, region: europe-west1, service_account_key: '{\"type\":\"service_account\"}'").unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.base_url, "https://europe-west1-docker.pkg.dev");
        assert_eq!(u.host, "europe-west1-docker.pkg.dev");
        assert_eq!(u.credentials.as_ref().unwrap().username, "_json_key");
        assert!(!format!("{c:?}").contains("service_account\""));

        let c = one_upstream("kind: ecr, region: eu-west-1, registry_id: '123456789012', access_key_id: AKID, secret_access_key: '${ACME_QUAY_TOKEN}'").unwrap();
        let u = &c.upstreams[0];
        assert_eq!(
            u.base_url,
            "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"
        );
        let e = u.ecr.as_ref().unwrap();
        assert_eq!(e.endpoint, "https://api.ecr.eu-west-1.amazonaws.com");
        assert_eq!(e.secret_access_key.expose(), "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));

        let c = one_upstream("kind: public, url: \"https://registry.k8s.io\"").unwrap();
        assert!(c.upstreams[0].credentials.is_none());
        // Without a kind, today's configs keep working (anonymous custom upstreams too).
        let c = one_upstream("url: \"https://r.example\"").unwrap();
        assert_eq!(c.upstreams[0].kind, UpstreamKind::Custom);
    }

    #[test]
    fn each_kind_names_its_missing_field() {
        let ecr = "kind: ecr, url: \"https://x.example\"";
        assert_eq!(
            err(ecr),
            "upstreams[0].access_key_id: required for kind ecr"
        );
        assert_eq!(
            err(&format!("{ecr}, access_key_id: A")),
            "upstreams[0].secret_access_key: required for kind ecr"
        );
        assert_eq!(
            err(&format!("{ecr}, access_key_id: A, secret_access_key: S")),
            "upstreams[0].region: required for kind ecr"
        );
        assert_eq!(
            err("kind: ecr, region: eu-west-1, access_key_id: A, secret_access_key: S"),
            "upstreams[0].url: required for kind ecr unless registry_id is set"
        );
        assert_eq!(
            err("kind: ecr, region: eu-west-1, registry_id: '12', access_key_id: A, secret_access_key: S"),
            "upstreams[0].registry_id: an AWS account id is 12 digits"
        );
        assert_eq!(
            err("kind: gcr"),
            "upstreams[0].service_account_key: required for kind gcr"
        );
        assert_eq!(
            err("kind: gcr, service_account_key: '{truncated'"),
            "upstreams[0].service_account_key: not a JSON object (expected the service account key file's contents)"
        );
        assert_eq!(
            err("kind: gar"),
            "upstreams[0].region: required for kind gar"
        );
        assert_eq!(err("kind: acr"), "upstreams[0].url: required for kind acr");
        assert_eq!(
            err("kind: acr, url: \"https://a.azurecr.io\""),
            "upstreams[0].username: required for kind acr"
        );
        // Anonymous Docker Hub keeps Hub's routing.
        let hub = one_upstream("kind: dockerhub").unwrap();
        assert_eq!(
            hub.upstreams[0].upstream_repository("redis"),
            "library/redis"
        );
        assert!(hub.upstreams[0].serves_host("docker.io"));
        assert_eq!(
            err("kind: custom"),
            "upstreams[0].url: required for kind custom"
        );
        assert_eq!(
            err("kind: public, url: \"https://r.example\", username: a, password: b"),
            "upstreams[0].username: not used by kind public"
        );
        assert_eq!(
            err("kind: quay, username: a, password: b, region: eu-west-1"),
            "upstreams[0].region: not used by kind quay"
        );
        assert_eq!(
            err("kind: gcr, service_account_key: '{}', username: a"),
            "upstreams[0].username: not used by kind gcr"
        );
        let e = one_upstream("kind: quya").unwrap_err();
        assert_eq!(e.key, "upstreams[0].kind");
        assert!(e.message.contains("unknown variant `quya`"), "{e}");
    }

    #[test]
    fn base_url_normalization() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:5000/v2/").unwrap(),
            ("http://127.0.0.1:5000".into(), "127.0.0.1".into())
        );
        assert!(parse_base_url("ftp://x").is_err());
    }
}
