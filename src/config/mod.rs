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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    hostname: String,
    #[serde(default)]
    tls: Vec<RawTls>,
    shutdown_timeout: Option<String>,
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
    url: String,
    host: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
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
}

// ---- validated configuration ----------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub upstreams: Vec<Arc<Upstream>>,
    pub apps: HashMap<String, App>,
    pub licenses: Licenses,
    /// Where the file was read from, so relative paths and reloads resolve against it.
    pub source: Option<PathBuf>,
}

/// Licenses by id. The id is the customer's password, so `Debug` prints only the count.
#[derive(Clone, Default)]
pub struct Licenses(HashMap<String, License>);

impl std::fmt::Debug for Licenses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} licenses>", self.0.len())
    }
}

impl Licenses {
    pub fn get(&self, id: &str) -> Option<&License> {
        self.0.get(id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub hostname: String,
    pub tls: Vec<TlsFiles>,
    pub shutdown_timeout: Duration,
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
    pub credentials: Option<Credentials>,
    pub repositories: Vec<Glob>,
    pub timeout: Duration,
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
    pub app: String,
    pub customer: String,
    pub expires: Option<SystemTime>,
    pub revoked: bool,
}

impl License {
    pub fn is_active(&self, now: SystemTime) -> bool {
        !self.revoked && self.expires.is_none_or(|t| now < t)
    }
}

impl Upstream {
    /// Whether this upstream may serve `repository`; returns how specific the match is
    /// (longer literal prefix wins) or `None` when the allow-list excludes it.
    pub fn match_score(&self, repository: &str) -> Option<usize> {
        if self.repositories.is_empty() {
            return Some(0);
        }
        self.repositories
            .iter()
            .filter(|g| g.matches(repository))
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
            .filter(|u| u.host == host)
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
    let mut tls = Vec::new();
    for (i, t) in raw.server.tls.iter().enumerate() {
        let cert = resolve_path(base, &t.cert);
        let key = resolve_path(base, &t.key);
        for (field, p) in [("cert", &cert), ("key", &key)] {
            if !p.is_file() {
                return Err(ConfigError::new(
                    format!("server.tls[{i}].{field}"),
                    format!("file not found: {}", p.display()),
                ));
            }
        }
        tls.push(TlsFiles { cert, key });
    }
    let shutdown_timeout = match &raw.server.shutdown_timeout {
        Some(s) => parse_duration("server.shutdown_timeout", s)?,
        None => Duration::from_secs(30),
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
        let url = interpolate(&k("url"), &u.url, env)?;
        let (base_url, url_host) =
            parse_base_url(&url).map_err(|m| ConfigError::new(k("url"), m))?;
        let host = match u.host {
            Some(h) => interpolate(&k("host"), &h, env)?,
            None => url_host,
        };
        if !valid_host(&host) {
            return Err(ConfigError::new(
                k("host"),
                format!("invalid registry host {host:?} (lowercase DNS name, optional :port)"),
            ));
        }
        let password = match (&u.password, &u.password_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    k("password_file"),
                    "set either password or password_file, not both",
                ))
            }
            (Some(p), None) => Some(Secret::new(interpolate(&k("password"), p, env)?)),
            (None, Some(f)) => {
                let path = resolve_path(base, f);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(
                        k("password_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(Secret::new(text.trim_end_matches(['\r', '\n'])))
            }
            (None, None) => None,
        };
        let credentials = match (u.username, password) {
            (Some(user), Some(password)) => Some(Credentials {
                username: interpolate(&k("username"), &user, env)?,
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
            base_url,
            host,
            credentials,
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
        licenses.insert(
            l.id.clone(),
            License {
                id: Secret::new(l.id),
                app: l.app,
                customer: l.customer,
                expires,
                revoked: l.revoked,
            },
        );
    }

    Ok(Config {
        server: ServerConfig {
            listen,
            hostname: raw.server.hostname,
            tls,
            shutdown_timeout,
        },
        cache: CacheConfig {
            dir: resolve_path(base, &raw.cache.dir),
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
        licenses: Licenses(licenses),
        source: None,
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

    #[test]
    fn base_url_normalization() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:5000/v2/").unwrap(),
            ("http://127.0.0.1:5000".into(), "127.0.0.1".into())
        );
        assert!(parse_base_url("ftp://x").is_err());
    }
}
