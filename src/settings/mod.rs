//! Process settings: how this berth process runs (listeners, TLS, connection timeouts,
//! cache policy, berth's own token settings, admission rewrite rules), from their raw YAML
//! shape to the validated values, plus the config-file vocabulary every section shares
//! (`ConfigError` naming its key, `${ENV}` interpolation, `*_file` secrets, durations and
//! sizes). Who berth serves (apps, upstreams, licenses) is `tenancy`; the file as a whole
//! is read by `config`.

mod secret;

pub use secret::Secret;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, always phrased as `key: what is wrong`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Looks up `${NAME}` while a config file is read (the process environment, or a test's).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

// ---- raw YAML shape -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRewrite {
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
pub(crate) struct RawAuth {
    token_key_file: Option<PathBuf>,
    token_ttl: Option<String>,
    realm: Option<String>,
    audit_log: Option<PathBuf>,
    rate_limit: Option<RawRateLimit>,
    /// Admin API tokens, configured by their SHA-256 (`berth admin-token hash`).
    #[serde(default)]
    admin_tokens: Vec<RawAdminToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdminToken {
    name: String,
    sha256: String,
}

/// `state`: where licenses, API keys, admin tokens and usage are kept.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawState {
    sqlite: Option<PathBuf>,
    postgres: Option<String>,
    postgres_file: Option<PathBuf>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    per_second: f64,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
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
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    dir: PathBuf,
    max_size: Option<String>,
    tag_ttl: Option<String>,
    #[serde(default)]
    offline: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHosted {
    upload_timeout: Option<String>,
    #[serde(default)]
    gc: RawGc,
}

/// `hosted.gc`: the online garbage collection schedule.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGc {
    interval: Option<String>,
    grace: Option<String>,
    untagged: Option<String>,
}

/// The process-settings sections of the file, as read.
pub(crate) struct RawSettings {
    pub server: RawServer,
    pub cache: RawCache,
    pub auth: RawAuth,
    pub hosted: RawHosted,
    pub rewrite: Vec<RawRewrite>,
    pub state: RawState,
}

// ---- validated settings ---------------------------------------------------------------

/// The validated process settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub hosted: HostedConfig,
    /// Admission webhook rules, first match wins.
    pub rewrite: Vec<RewriteConfig>,
    pub state: StateConfig,
}

/// The hosted registry's settings.
#[derive(Debug, Clone)]
pub struct HostedConfig {
    /// `hosted.upload_timeout` (default 1h): an upload without a request for this long is
    /// aborted and its staged bytes dropped.
    pub upload_timeout: Duration,
    pub gc: GcConfig,
}

/// `hosted.gc`: when the server collects garbage by itself and what it keeps.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// `hosted.gc.interval`: none (the default) runs no collection by itself; `berth gc`
    /// always can.
    pub interval: Option<Duration>,
    /// `hosted.gc.grace` (default 1h): nothing pushed, mounted or referenced more recently
    /// is collected.
    pub grace: Duration,
    /// `hosted.gc.untagged: delete` collects manifests no tag reaches (default `keep`:
    /// customers may pull them by digest).
    pub delete_untagged: bool,
}

/// Where the control plane's state lives.
#[derive(Debug, Clone, PartialEq)]
pub enum StateConfig {
    /// An embedded database file (the default: `state.db` in `cache.dir`).
    Sqlite(PathBuf),
    /// A PostgreSQL server shared by several replicas (`postgres://user:pass@host/db`).
    Postgres(Secret),
}

/// An admin API token as configured: its name and the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminTokenHash {
    pub name: String,
    pub sha256: [u8; 32],
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
    /// Peers whose `X-Forwarded-For` is believed (load balancers, ingress controllers).
    pub trusted_proxies: Vec<Cidr>,
}

/// An address block (`10.0.0.0/8`, `fd00::/8`, or one address), for `server.trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits cleared).
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address. Host bits are cleared (`10.1.2.3/8` is
    /// `10.0.0.0/8`), as most tools read it.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in the block; an IPv4 address seen as IPv6 (`::ffff:10.0.0.1`, a
    /// dual-stack listener) is compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
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
    /// Admin API tokens from the config file (more are created with `berth admin-token`).
    pub admin_tokens: Vec<AdminTokenHash>,
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

impl Settings {
    /// Validates the settings sections. `tenancy` validates the tenant sections and runs
    /// between `server` and the rest, so that a file with several mistakes reports the
    /// first one in the order berth always has; `has_app` then lets `rewrite[].app` be
    /// checked against the apps it produced.
    pub(crate) fn validate<T>(
        raw: RawSettings,
        base: &Path,
        env: Env<'_>,
        tenancy: impl FnOnce() -> Result<T, ConfigError>,
        has_app: impl Fn(&T, &str) -> bool,
    ) -> Result<(Settings, T), ConfigError> {
        let RawSettings {
            server: raw_server,
            cache: raw_cache,
            auth: raw_auth,
            hosted: raw_hosted,
            rewrite: raw_rewrite,
            state: raw_state,
        } = raw;
        let mut server = server(&raw_server, base)?;
        let tenants = tenancy()?;
        let cache_dir = resolve_path(base, &raw_cache.dir);
        let mut auth = auth(&raw_auth, &server, &cache_dir, base)?;
        let rewrite = rewrite_rules(raw_rewrite, |slug| has_app(&tenants, slug))?;
        auth.rate_limit = match raw_auth.rate_limit {
            Some(r) => Some(rate_limit("auth.rate_limit", r)?),
            None => None,
        };
        server.admin_listen = match &raw_server.admin_listen {
            Some(a) => Some(a.parse().map_err(|_| {
                ConfigError::new(
                    "server.admin_listen",
                    format!("invalid socket address {a:?} (expected e.g. 127.0.0.1:9090)"),
                )
            })?),
            None => None,
        };
        auth.admin_tokens = admin_tokens(&raw_auth.admin_tokens)?;
        let state = state(&raw_state, &cache_dir, base, env)?;
        let cache = cache(&raw_cache, cache_dir)?;
        let upload_timeout = match &raw_hosted.upload_timeout {
            None => Duration::from_secs(3600),
            Some(s) => match parse_duration("hosted.upload_timeout", s)? {
                d if d.is_zero() => {
                    return Err(ConfigError::new(
                        "hosted.upload_timeout",
                        "must be longer than 0s",
                    ))
                }
                d => d,
            },
        };
        let gc = gc_config(&raw_hosted.gc)?;
        Ok((
            Settings {
                server,
                cache,
                auth,
                hosted: HostedConfig { upload_timeout, gc },
                rewrite,
                state,
            },
            tenants,
        ))
    }
}

/// `server`, but for `admin_listen`, which is checked last.
fn server(raw: &RawServer, base: &Path) -> Result<ServerConfig, ConfigError> {
    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        ConfigError::new(
            "server.listen",
            format!(
                "invalid socket address {:?} (expected e.g. 0.0.0.0:443)",
                raw.listen
            ),
        )
    })?;
    if !valid_host(&raw.hostname) {
        return Err(ConfigError::new(
            "server.hostname",
            format!(
                "invalid hostname {:?} (lowercase DNS name, optional :port)",
                raw.hostname
            ),
        ));
    }
    let tls = tls_files(base, "server.tls", &raw.tls)?;
    let webhook_tls = match &raw.webhook_tls {
        Some(list) => tls_files(base, "server.webhook_tls", list)?,
        None => tls.clone(),
    };
    let shutdown_timeout = match &raw.shutdown_timeout {
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
    let header_timeout = positive("server.header_timeout", &raw.header_timeout, 30)?;
    let idle_timeout = positive("server.idle_timeout", &raw.idle_timeout, 75)?;
    let body_timeout = positive("server.body_timeout", &raw.body_timeout, 30)?;
    let send_timeout = positive("server.send_timeout", &raw.send_timeout, 60)?;
    let max_connections = match raw.max_connections {
        None => 4096,
        Some(0) => {
            return Err(ConfigError::new(
                "server.max_connections",
                "must be at least 1",
            ))
        }
        Some(n) => n,
    };
    let webhook_listen = match &raw.webhook_listen {
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
    let mut trusted_proxies = Vec::new();
    for (i, c) in raw.trusted_proxies.iter().enumerate() {
        trusted_proxies.push(
            Cidr::parse(c)
                .map_err(|m| ConfigError::new(format!("server.trusted_proxies[{i}]"), m))?,
        );
    }
    Ok(ServerConfig {
        listen,
        hostname: raw.hostname.clone(),
        tls,
        shutdown_timeout,
        header_timeout,
        idle_timeout,
        body_timeout,
        send_timeout,
        max_connections,
        admin_listen: None,
        webhook_listen,
        webhook_tls,
        trusted_proxies,
    })
}

/// Certificate and key files under `key` (`server.tls`, `server.webhook_tls`).
fn tls_files(base: &Path, key: &str, list: &[RawTls]) -> Result<Vec<TlsFiles>, ConfigError> {
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
}

/// `auth`, but for `rate_limit`, which is checked after `rewrite`.
fn auth(
    raw: &RawAuth,
    server: &ServerConfig,
    cache_dir: &Path,
    base: &Path,
) -> Result<AuthConfig, ConfigError> {
    let token_ttl = match &raw.token_ttl {
        Some(s) => parse_duration("auth.token_ttl", s)?,
        None => Duration::from_secs(300),
    };
    if token_ttl < Duration::from_secs(60) {
        return Err(ConfigError::new(
            "auth.token_ttl",
            "must be at least 60s (clients refresh tokens only on expiry)",
        ));
    }
    let scheme = if server.tls.is_empty() {
        "http"
    } else {
        "https"
    };
    let realm = match &raw.realm {
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
            r.clone()
        }
        None => format!("{scheme}://{}/token", server.hostname),
    };
    Ok(AuthConfig {
        token_key_file: match &raw.token_key_file {
            Some(p) => resolve_path(base, p),
            None => crate::storage::layout::token_key(cache_dir),
        },
        token_ttl,
        realm,
        audit_log: raw.audit_log.as_ref().map(|p| resolve_path(base, p)),
        rate_limit: None,
        admin_tokens: Vec::new(),
    })
}

/// `auth.admin_tokens`: names and SHA-256 digests (64 hex digits) of admin API tokens.
fn admin_tokens(raw: &[RawAdminToken]) -> Result<Vec<AdminTokenHash>, ConfigError> {
    let mut out: Vec<AdminTokenHash> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let k = |f: &str| format!("auth.admin_tokens[{i}].{f}");
        if t.name.trim().is_empty() {
            return Err(ConfigError::new(k("name"), "a name is required"));
        }
        if out.iter().any(|o| o.name == t.name) {
            return Err(ConfigError::new(k("name"), "duplicate admin token name"));
        }
        let hex = t
            .sha256
            .trim()
            .strip_prefix("sha256:")
            .unwrap_or(t.sha256.trim());
        let mut sha256 = [0u8; 32];
        let ok = hex.len() == 64
            && hex.is_ascii()
            && (0..32).all(|j| {
                u8::from_str_radix(&hex[2 * j..2 * j + 2], 16)
                    .map(|b| sha256[j] = b)
                    .is_ok()
            });
        if !ok {
            return Err(ConfigError::new(
                k("sha256"),
                "expected the token's SHA-256 as 64 hex digits (berth admin-token hash prints it)",
            ));
        }
        out.push(AdminTokenHash {
            name: t.name.clone(),
            sha256,
        });
    }
    Ok(out)
}

/// `state`: SQLite in the data directory unless PostgreSQL is named.
fn state(
    raw: &RawState,
    cache_dir: &Path,
    base: &Path,
    env: Env<'_>,
) -> Result<StateConfig, ConfigError> {
    let k = |f: &str| format!("state.{f}");
    let postgres = read_secret(
        "postgres",
        raw.postgres.as_ref(),
        raw.postgres_file.as_ref(),
        base,
        env,
        &k,
    )?;
    match (postgres, &raw.sqlite) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            "state.sqlite",
            "set either state.sqlite or state.postgres, not both",
        )),
        (Some(url), None) => {
            let u = url.expose();
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                return Err(ConfigError::new(
                    "state.postgres",
                    "expected a URL postgres://user:password@host:port/database",
                ));
            }
            Ok(StateConfig::Postgres(url))
        }
        (None, Some(p)) => Ok(StateConfig::Sqlite(resolve_path(base, p))),
        (None, None) => Ok(StateConfig::Sqlite(crate::storage::layout::state_db(
            cache_dir,
        ))),
    }
}

/// `rewrite`: admission rules, each for an app `has_app` knows.
fn rewrite_rules(
    raw: Vec<RawRewrite>,
    has_app: impl Fn(&str) -> bool,
) -> Result<Vec<RewriteConfig>, ConfigError> {
    let mut rewrite = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        if !has_app(&r.app) {
            return Err(ConfigError::new(
                format!("rewrite[{i}].app"),
                format!("unknown app {:?}", r.app),
            ));
        }
        if let Some(s) = &r.pull_secret {
            if !crate::oci::name::valid_component(s) {
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
    Ok(rewrite)
}

/// `cache`: the directory (already resolved) and the cache policy.
fn cache(raw: &RawCache, dir: PathBuf) -> Result<CacheConfig, ConfigError> {
    Ok(CacheConfig {
        dir,
        max_size: match &raw.max_size {
            Some(s) => Some(parse_size(s).map_err(|m| ConfigError::new("cache.max_size", m))?),
            None => None,
        },
        tag_ttl: match &raw.tag_ttl {
            Some(s) => parse_duration("cache.tag_ttl", s)?,
            None => Duration::from_secs(300),
        },
        offline: raw.offline,
    })
}

// ---- the config-file vocabulary -------------------------------------------------------

pub(crate) fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Expands `${NAME}` from the environment; `$$` is a literal `$`.
pub(crate) fn interpolate(key: &str, value: &str, env: Env<'_>) -> Result<String, ConfigError> {
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

/// Reads a secret given inline (`key`, with `${ENV}`) or as a file (`key_file`, trailing
/// newlines dropped); both at once is an error. `k` turns a field into its full key.
pub(crate) fn read_secret(
    key: &str,
    inline: Option<&String>,
    file: Option<&PathBuf>,
    base: &Path,
    env: Env<'_>,
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

pub(crate) fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| ConfigError::new(key, format!("invalid duration {s:?}: {e}")))
}

pub(crate) fn valid_host(h: &str) -> bool {
    crate::oci::name::valid_host(h)
}

pub(crate) fn rate_limit(key: &str, r: RawRateLimit) -> Result<RateLimit, ConfigError> {
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
fn gc_config(raw: &RawGc) -> Result<GcConfig, ConfigError> {
    let interval = match &raw.interval {
        None => None,
        Some(s) => match parse_duration("hosted.gc.interval", s)? {
            d if d < Duration::from_secs(60) => {
                return Err(ConfigError::new(
                    "hosted.gc.interval",
                    "must be at least 1m (a collection reads the whole hosted index)",
                ))
            }
            d => Some(d),
        },
    };
    let grace = match &raw.grace {
        None => Duration::from_secs(3600),
        Some(s) => parse_duration("hosted.gc.grace", s)?,
    };
    let delete_untagged = match raw.untagged.as_deref() {
        None | Some("keep") => false,
        Some("delete") => true,
        Some(other) => {
            return Err(ConfigError::new(
                "hosted.gc.untagged",
                format!("{other:?}: use keep or delete"),
            ))
        }
    };
    Ok(GcConfig {
        interval,
        grace,
        delete_untagged,
    })
}

/// Bytes for people, in the units [`parse_size`] reads: `1.5 GiB`, `512 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cidr_blocks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses.
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("::1")));
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap(), c, "host bits cleared");
        let one = Cidr::parse(" 192.0.2.7 ").unwrap();
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        assert_eq!(one.to_string(), "192.0.2.7/32");
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.9")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "example.com",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
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
}
