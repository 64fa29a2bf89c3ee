//! The tenancy of a YAML config file (`upstreams`, `apps`, `licenses`): their raw serde
//! shape, validation into the model with errors naming the key, and `YamlTenants`, the
//! first `TenantStore`. A reload reads the file again and builds a new store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{
    fingerprint, App, AssumeRole, AwsIdentity, AwsSource, AzureIdentity, Credentials, EcrSettings,
    GcpIdentity, GcpKey, Glob, HostedPolicy, License, TenantStore, Upstream, UpstreamAuth,
    UpstreamKind, DOCKER_HUB_HOST,
};
use crate::settings::{
    interpolate, parse_duration, rate_limit, read_secret, resolve_path, valid_host, ConfigError,
    Env, RawRateLimit, Secret,
};

/// The tenant sections of the file, as read.
pub(crate) struct RawTenants {
    pub upstreams: Vec<RawUpstream>,
    pub apps: Vec<RawApp>,
    pub licenses: Vec<RawLicense>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
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
    aws_credentials: Option<String>,
    session_token: Option<String>,
    session_token_file: Option<PathBuf>,
    role_arn: Option<String>,
    external_id: Option<String>,
    role_session_name: Option<String>,
    web_identity_token_file: Option<PathBuf>,
    sts_endpoint: Option<String>,
    // gcr / gar
    gcp_credentials: Option<String>,
    // acr
    azure_credentials: Option<String>,
    client_id: Option<String>,
    service_account_key: Option<String>,
    service_account_key_file: Option<PathBuf>,
    repositories: Option<Vec<String>>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    slug: String,
    /// None for an app that only hosts what its vendor pushes.
    #[serde(default)]
    upstreams: Vec<String>,
    /// The app's hosted registry policy.
    #[serde(default)]
    hosted: RawHostedPolicy,
    /// Upstream image references `berth airgap export` bundles by default.
    #[serde(default)]
    images: Vec<String>,
}

/// `apps[].hosted`: a storage quota and tags that cannot be moved once pushed.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHostedPolicy {
    quota: Option<String>,
    #[serde(default)]
    immutable_tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLicense {
    id: String,
    app: String,
    customer: String,
    expires: Option<String>,
    #[serde(default)]
    revoked: bool,
    images: Option<Vec<String>>,
    rate_limit: Option<RawRateLimit>,
}

/// The tenants a config file names. `Debug` shows licenses as a count: the ids it keeps
/// are the customers' passwords.
#[derive(Clone, Default)]
pub struct YamlTenants {
    upstreams: Vec<Arc<Upstream>>,
    apps: HashMap<String, App>,
    /// By fingerprint: the id (the secret the customer presents) and the license.
    licenses: HashMap<String, (Secret, Arc<License>)>,
}

impl std::fmt::Debug for YamlTenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Upstream credentials are `Secret`s and print redacted; licenses only as a count.
        f.debug_struct("YamlTenants")
            .field("upstreams", &self.upstreams)
            .field("apps", &self.apps)
            .field(
                "licenses",
                &format_args!("<{} licenses>", self.licenses.len()),
            )
            .finish()
    }
}

impl TenantStore for YamlTenants {
    fn app(&self, slug: &str) -> Option<&App> {
        self.apps.get(slug)
    }

    fn apps(&self) -> Vec<&App> {
        self.apps.values().collect()
    }

    fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    fn license_by_secret(&self, secret: &str) -> Option<Arc<License>> {
        // The fingerprint is a hash of the id, so it is the index; the id still has to be
        // the one stored (a store of hashed secrets compares hashes here instead).
        let (id, license) = self.licenses.get(&fingerprint(secret))?;
        (id.expose() == secret).then(|| license.clone())
    }

    fn license(&self, fp: &str) -> Option<Arc<License>> {
        self.licenses.get(fp).map(|(_, l)| l.clone())
    }

    fn licenses(&self) -> Vec<Arc<License>> {
        self.licenses.values().map(|(_, l)| l.clone()).collect()
    }

    fn license_count(&self) -> usize {
        self.licenses.len()
    }
}

impl YamlTenants {
    /// Validates the tenant sections; relative paths resolve against `base`, `env` looks
    /// up `${VAR}`.
    pub(crate) fn validate(
        raw: RawTenants,
        base: &Path,
        env: Env<'_>,
    ) -> Result<YamlTenants, ConfigError> {
        let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
        for (i, u) in raw.upstreams.into_iter().enumerate() {
            let up = upstream(i, u, &upstreams, base, env)?;
            upstreams.push(Arc::new(up));
        }
        let mut apps = HashMap::new();
        for (i, a) in raw.apps.into_iter().enumerate() {
            let app = app(i, a, &upstreams, &apps)?;
            apps.insert(app.slug.clone(), app);
        }
        let mut licenses = HashMap::new();
        for (i, l) in raw.licenses.into_iter().enumerate() {
            let (id, license) = license(i, l, &apps, &licenses)?;
            licenses.insert(license.id.clone(), (id, Arc::new(license)));
        }
        Ok(YamlTenants {
            upstreams,
            apps,
            licenses,
        })
    }
}

// One record at a time, each checked against the ones before it, so that the same rules
// (and messages) can check a record that arrives some other way than in this file.

/// `upstreams[i]`, after the `earlier` ones.
fn upstream(
    i: usize,
    u: RawUpstream,
    earlier: &[Arc<Upstream>],
    base: &Path,
    env: Env<'_>,
) -> Result<Upstream, ConfigError> {
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
    if earlier.iter().any(|e| e.name == u.name) {
        return Err(ConfigError::new(
            k("name"),
            format!("duplicate upstream name {:?}", u.name),
        ));
    }
    let up = validate_upstream_auth(&u, base, env, &k)?;
    let mut repositories = Vec::new();
    for (j, p) in u.repositories.unwrap_or_default().iter().enumerate() {
        repositories.push(
            Glob::new(p)
                .map_err(|m| ConfigError::new(format!("upstreams[{i}].repositories[{j}]"), m))?,
        );
    }
    let timeout = match &u.timeout {
        Some(s) => parse_duration(&k("timeout"), s)?,
        None => Duration::from_secs(30),
    };
    Ok(Upstream {
        name: u.name,
        base_url: up.base_url,
        host: up.host,
        kind: u.kind,
        auth: up.auth,
        repositories,
        timeout,
    })
}

/// `apps[i]`, over `upstreams`, after the `earlier` apps.
fn app(
    i: usize,
    a: RawApp,
    upstreams: &[Arc<Upstream>],
    earlier: &HashMap<String, App>,
) -> Result<App, ConfigError> {
    if !valid_slug(&a.slug) {
        return Err(ConfigError::new(
            format!("apps[{i}].slug"),
            format!(
                "invalid slug {:?} (lowercase letters, digits, . _ -)",
                a.slug
            ),
        ));
    }
    let mut listed = Vec::new();
    for name in &a.upstreams {
        let up = upstreams.iter().find(|u| &u.name == name).ok_or_else(|| {
            ConfigError::new(
                format!("apps[{i}].upstreams"),
                format!("unknown upstream {name:?}"),
            )
        })?;
        listed.push(up.clone());
    }
    // `/v2/proxy/…` is the pull-through namespace; `/v2/<app>/…` an app's hosted one.
    if a.slug == "proxy" {
        return Err(ConfigError::new(
            format!("apps[{i}].slug"),
            "\"proxy\" is reserved (/v2/proxy/… is the pull-through namespace) and cannot be an app slug",
        ));
    }
    if earlier.contains_key(&a.slug) {
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
    let quota = match &a.hosted.quota {
        None => None,
        Some(q) => Some(
            crate::settings::parse_size(q)
                .map_err(|m| ConfigError::new(format!("apps[{i}].hosted.quota"), m))?,
        ),
    };
    let mut immutable_tags = Vec::new();
    for (j, g) in a.hosted.immutable_tags.iter().enumerate() {
        immutable_tags.push(
            Glob::new(g).map_err(|m| {
                ConfigError::new(format!("apps[{i}].hosted.immutable_tags[{j}]"), m)
            })?,
        );
    }
    Ok(App {
        slug: a.slug,
        upstreams: listed,
        images: a.images,
        hosted: HostedPolicy {
            quota,
            immutable_tags,
        },
    })
}

/// `licenses[i]` of one of `apps`, after the `earlier` licenses (by fingerprint): its id
/// and the license.
fn license(
    i: usize,
    l: RawLicense,
    apps: &HashMap<String, App>,
    earlier: &HashMap<String, (Secret, Arc<License>)>,
) -> Result<(Secret, License), ConfigError> {
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
    let fingerprint = fingerprint(&l.id);
    if earlier.contains_key(&fingerprint) {
        return Err(ConfigError::new(k("id"), "duplicate license id"));
    }
    let mut images = Vec::new();
    for (j, p) in l.images.unwrap_or_default().iter().enumerate() {
        images.push(
            Glob::new(p).map_err(|m| ConfigError::new(format!("licenses[{i}].images[{j}]"), m))?,
        );
    }
    let rate_limit = match l.rate_limit {
        Some(r) => Some(rate_limit(&k("rate_limit"), r)?),
        None => None,
    };
    Ok((
        Secret::new(l.id),
        License {
            id: fingerprint,
            app: l.app,
            customer: l.customer,
            expires,
            revoked: l.revoked,
            images,
            rate_limit,
            origin: super::Origin::Config,
            rotated: None,
        },
    ))
}

fn valid_slug(s: &str) -> bool {
    crate::oci::name::valid_component(s)
}

/// The URL, host and credentials of one upstream, checked against what its kind needs.
struct Checked {
    base_url: String,
    host: String,
    auth: UpstreamAuth,
}

fn validate_upstream_auth(
    u: &RawUpstream,
    base: &Path,
    env: Env<'_>,
    k: &dyn Fn(&str) -> String,
) -> Result<Checked, ConfigError> {
    use UpstreamKind as K;
    let kind = u.kind;
    let required =
        |field: &str| ConfigError::new(k(field), format!("required for kind {}", kind.as_str()));
    let not_used =
        |field: &str| ConfigError::new(k(field), format!("not used by kind {}", kind.as_str()));
    // Keys that belong to other kinds are errors, so a typo'd kind cannot silently
    // ignore the credentials meant for it.
    let ecr_keys: [(&str, bool); 14] = [
        ("access_key_id", u.access_key_id.is_some()),
        ("secret_access_key", u.secret_access_key.is_some()),
        ("secret_access_key_file", u.secret_access_key_file.is_some()),
        ("registry_id", u.registry_id.is_some()),
        ("ecr_endpoint", u.ecr_endpoint.is_some()),
        ("region", u.region.is_some()),
        ("aws_credentials", u.aws_credentials.is_some()),
        ("session_token", u.session_token.is_some()),
        ("session_token_file", u.session_token_file.is_some()),
        ("role_arn", u.role_arn.is_some()),
        ("external_id", u.external_id.is_some()),
        ("role_session_name", u.role_session_name.is_some()),
        (
            "web_identity_token_file",
            u.web_identity_token_file.is_some(),
        ),
        ("sts_endpoint", u.sts_endpoint.is_some()),
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
        ("gcp_credentials", u.gcp_credentials.is_some()),
    ] {
        if set && !gcp {
            return Err(not_used(field));
        }
    }
    for (field, set) in [
        ("azure_credentials", u.azure_credentials.is_some()),
        ("client_id", u.client_id.is_some()),
    ] {
        if set && kind != K::Acr {
            return Err(not_used(field));
        }
    }
    let managed_identity = match &u.azure_credentials {
        None => false,
        Some(c) => match interpolate(&k("azure_credentials"), c, env)?.as_str() {
            "password" => false,
            "managed_identity" => true,
            other => {
                return Err(ConfigError::new(
                    k("azure_credentials"),
                    format!("unknown source {other:?} (password, managed_identity)"),
                ))
            }
        },
    };
    if managed_identity {
        for (field, set) in [
            ("username", u.username.is_some()),
            ("password", u.password.is_some()),
            ("password_file", u.password_file.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    k(field),
                    "not used with azure_credentials: managed_identity",
                ));
            }
        }
    } else if u.client_id.is_some() {
        return Err(ConfigError::new(
            k("client_id"),
            "used with azure_credentials: managed_identity only",
        ));
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
    let default_url = kind.default_url(region.as_deref(), registry_id.as_deref());
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
    let credentials = match (&u.username, password) {
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
    if matches!(kind, K::Quay | K::Ghcr | K::Acr) && credentials.is_none() && !managed_identity {
        // Anonymous pulls are what `kind: public` is for. Docker Hub is the exception:
        // anonymous Hub pulls (public images such as `redis`, within Hub's per-address
        // rate limit) still need its routing (`docker.io`, `library/`).
        return Err(required("username"));
    }

    let auth = match kind {
        K::Ecr => UpstreamAuth::Ecr(ecr(u, region, registry_id, base, env, k)?),
        K::Gcr | K::Gar => gcp_auth(u, base, env, k)?,
        K::Acr if managed_identity => UpstreamAuth::AzureManagedIdentity(AzureIdentity {
            client_id: match &u.client_id {
                Some(c) => Some(interpolate(&k("client_id"), c, env)?),
                None => None,
            },
            imds: match env("AZURE_POD_IDENTITY_AUTHORITY_HOST").filter(|v| !v.is_empty()) {
                Some(e) => {
                    parse_base_url(&e)
                        .map_err(|m| {
                            ConfigError::new(
                                k("azure_credentials"),
                                format!("AZURE_POD_IDENTITY_AUTHORITY_HOST: {m}"),
                            )
                        })?
                        .0
                }
                None => "http://169.254.169.254".into(),
            },
        }),
        _ => match credentials {
            Some(c) => UpstreamAuth::Static(c),
            None => UpstreamAuth::Anonymous,
        },
    };
    Ok(Checked {
        base_url,
        host,
        auth,
    })
}

/// `kind: ecr`: berth's AWS identity and the API endpoint `GetAuthorizationToken` is asked
/// with.
fn ecr(
    u: &RawUpstream,
    region: Option<String>,
    registry_id: Option<String>,
    base: &Path,
    env: Env<'_>,
    k: &dyn Fn(&str) -> String,
) -> Result<EcrSettings, ConfigError> {
    let region = region.ok_or_else(|| ConfigError::new(k("region"), "required for kind ecr"))?;
    let endpoint = match &u.ecr_endpoint {
        Some(e) => url_key("ecr_endpoint", e, env, k)?,
        None => format!("https://api.ecr.{region}.amazonaws.com"),
    };
    Ok(EcrSettings {
        aws: aws_identity(u, &region, base, env, k)?,
        region,
        registry_id,
        endpoint,
    })
}

/// An endpoint key: an http(s) base URL, normalized.
fn url_key(
    key: &str,
    value: &str,
    env: Env<'_>,
    k: &dyn Fn(&str) -> String,
) -> Result<String, ConfigError> {
    let v = interpolate(&k(key), value, env)?;
    Ok(parse_base_url(&v)
        .map_err(|m| ConfigError::new(k(key), m))?
        .0)
}

/// The AWS credential chain's environment, as the SDKs read it.
const AWS_ENV: [&str; 4] = [
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_ACCESS_KEY_ID",
];

/// `aws_credentials`: `keys` (the default when `access_key_id` is set), `chain` (the
/// default otherwise: the environment's keys, web identity, container credentials, then
/// instance metadata — the AWS SDKs' order), `web_identity`, `pod_identity` or
/// `instance_metadata`; `role_arn` (with `external_id`) is assumed on top, except for
/// web identity, whose role it is. A key the chosen source does not use is an error.
fn aws_identity(
    u: &RawUpstream,
    region: &str,
    base: &Path,
    env: Env<'_>,
    k: &dyn Fn(&str) -> String,
) -> Result<AwsIdentity, ConfigError> {
    let env_var = |name: &str| env(name).filter(|v| !v.is_empty());
    let chosen = match &u.aws_credentials {
        Some(c) => interpolate(&k("aws_credentials"), c, env)?,
        None if u.access_key_id.is_some() => "keys".into(),
        None => "chain".into(),
    };
    let source = match chosen.as_str() {
        "chain" => {
            if env_var("AWS_ACCESS_KEY_ID").is_some() {
                "keys_env"
            } else if env_var(AWS_ENV[0]).is_some() {
                "web_identity"
            } else if env_var(AWS_ENV[1]).is_some() || env_var(AWS_ENV[2]).is_some() {
                "pod_identity"
            } else {
                "instance_metadata"
            }
        }
        "keys" => "keys",
        "web_identity" => "web_identity",
        "pod_identity" => "pod_identity",
        "instance_metadata" => "instance_metadata",
        other => {
            return Err(ConfigError::new(
                k("aws_credentials"),
                format!(
                    "unknown source {other:?} (keys, chain, web_identity, pod_identity, instance_metadata)"
                ),
            ))
        }
    };
    let not_used = |field: &str| {
        ConfigError::new(
            k(field),
            format!("not used with aws_credentials: {chosen} (source {source})"),
        )
    };
    let key_fields = [
        ("access_key_id", u.access_key_id.is_some()),
        ("secret_access_key", u.secret_access_key.is_some()),
        ("secret_access_key_file", u.secret_access_key_file.is_some()),
        ("session_token", u.session_token.is_some()),
        ("session_token_file", u.session_token_file.is_some()),
    ];
    if source != "keys" {
        if let Some((f, _)) = key_fields.iter().find(|(_, set)| *set) {
            return Err(not_used(f));
        }
    }
    if source != "web_identity" && u.web_identity_token_file.is_some() {
        return Err(not_used("web_identity_token_file"));
    }
    let role_arn = match &u.role_arn {
        Some(r) => Some(arn(&interpolate(&k("role_arn"), r, env)?, k)?),
        None => None,
    };
    let external_id = match &u.external_id {
        Some(e) => Some(interpolate(&k("external_id"), e, env)?),
        None => None,
    };
    let required = |field: &str, why: &str| ConfigError::new(k(field), why.to_string());
    let (source, assume_role) = match source {
        "keys" => {
            let access_key_id = match &u.access_key_id {
                Some(a) => interpolate(&k("access_key_id"), a, env)?,
                None => return Err(required("access_key_id", "required for kind ecr")),
            };
            let secret_access_key = read_secret(
                "secret_access_key",
                u.secret_access_key.as_ref(),
                u.secret_access_key_file.as_ref(),
                base,
                env,
                k,
            )?
            .ok_or_else(|| required("secret_access_key", "required for kind ecr"))?;
            let session_token = read_secret(
                "session_token",
                u.session_token.as_ref(),
                u.session_token_file.as_ref(),
                base,
                env,
                k,
            )?;
            (
                AwsSource::Keys {
                    access_key_id,
                    secret_access_key,
                    session_token,
                },
                role_arn,
            )
        }
        "keys_env" => (
            AwsSource::Keys {
                access_key_id: env_var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
                secret_access_key: Secret::new(env_var("AWS_SECRET_ACCESS_KEY").ok_or_else(
                    || {
                        required(
                            "aws_credentials",
                            "the chain found AWS_ACCESS_KEY_ID but no AWS_SECRET_ACCESS_KEY",
                        )
                    },
                )?),
                session_token: env_var("AWS_SESSION_TOKEN").map(Secret::new),
            },
            role_arn,
        ),
        "web_identity" => {
            let token_file = match &u.web_identity_token_file {
                Some(f) => resolve_path(base, f),
                None => PathBuf::from(env_var(AWS_ENV[0]).ok_or_else(|| {
                    required(
                        "web_identity_token_file",
                        "required for web_identity (or AWS_WEB_IDENTITY_TOKEN_FILE, which EKS sets for IRSA)",
                    )
                })?),
            };
            if external_id.is_some() {
                return Err(not_used("external_id"));
            }
            let role_arn = match role_arn {
                Some(r) => r,
                None => arn(
                    &env_var("AWS_ROLE_ARN").ok_or_else(|| {
                        required(
                            "role_arn",
                            "required for web_identity (or AWS_ROLE_ARN, which EKS sets for IRSA)",
                        )
                    })?,
                    k,
                )?,
            };
            (
                AwsSource::WebIdentity {
                    token_file,
                    role_arn,
                },
                None,
            )
        }
        "pod_identity" => {
            let uri = match (env_var(AWS_ENV[1]), env_var(AWS_ENV[2])) {
                (Some(full), _) => full,
                (None, Some(rel)) => format!("http://169.254.170.2{rel}"),
                (None, None) => {
                    return Err(required(
                        "aws_credentials",
                        "pod_identity needs AWS_CONTAINER_CREDENTIALS_FULL_URI (set by EKS Pod Identity) in berth's environment",
                    ))
                }
            };
            if !uri.starts_with("http://") && !uri.starts_with("https://") {
                return Err(required(
                    "aws_credentials",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI is not an http(s) URL",
                ));
            }
            (
                AwsSource::Container {
                    uri,
                    token_file: env_var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                        .map(PathBuf::from),
                    token: env_var("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(Secret::new),
                },
                role_arn,
            )
        }
        _ => {
            let endpoint = match env_var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
                Some(e) => {
                    parse_base_url(&e)
                        .map_err(|m| {
                            required(
                                "aws_credentials",
                                &format!("AWS_EC2_METADATA_SERVICE_ENDPOINT: {m}"),
                            )
                        })?
                        .0
                }
                None => "http://169.254.169.254".into(),
            };
            (AwsSource::InstanceMetadata { endpoint }, role_arn)
        }
    };
    if assume_role.is_none()
        && external_id.is_some()
        && !matches!(source, AwsSource::WebIdentity { .. })
    {
        return Err(not_used("external_id"));
    }
    let uses_sts = assume_role.is_some() || matches!(source, AwsSource::WebIdentity { .. });
    if !uses_sts {
        for (f, set) in [
            ("sts_endpoint", u.sts_endpoint.is_some()),
            ("role_session_name", u.role_session_name.is_some()),
        ] {
            if set {
                return Err(not_used(f));
            }
        }
    }
    let sts_endpoint = match (&u.sts_endpoint, env_var("AWS_ENDPOINT_URL_STS")) {
        (Some(e), _) => url_key("sts_endpoint", e, env, k)?,
        (None, Some(e)) => {
            parse_base_url(&e)
                .map_err(|m| required("sts_endpoint", &format!("AWS_ENDPOINT_URL_STS: {m}")))?
                .0
        }
        (None, None) => format!("https://sts.{region}.amazonaws.com"),
    };
    let session_name = match &u.role_session_name {
        Some(n) => {
            let n = interpolate(&k("role_session_name"), n, env)?;
            let ok = (2..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@-_".contains(&b));
            if !ok {
                return Err(ConfigError::new(
                    k("role_session_name"),
                    "2 to 64 characters of letters, digits and +=,.@-_",
                ));
            }
            n
        }
        None => "berth".into(),
    };
    Ok(AwsIdentity {
        source,
        assume_role: assume_role.map(|role_arn| AssumeRole {
            role_arn,
            external_id,
        }),
        sts_endpoint,
        session_name,
    })
}

/// An IAM role ARN, checked for its shape so a typo fails at check-config.
fn arn(s: &str, k: &dyn Fn(&str) -> String) -> Result<String, ConfigError> {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "iam"
        && parts[5].starts_with("role/")
        && parts[5].len() > "role/".len();
    if ok {
        Ok(s.to_string())
    } else {
        Err(ConfigError::new(
            k("role_arn"),
            format!("{s:?} is no IAM role ARN (arn:aws:iam::<account>:role/<name>)"),
        ))
    }
}

/// `kind: gcr` and `kind: gar`: `gcp_credentials: json_key` (the default with a key: the
/// key is the password of `_json_key`), `access_token` (the key signs a JWT exchanged for
/// an access token; the key never leaves berth) or `metadata` (the default without a key:
/// the metadata server's token, GKE workload identity or GCE).
fn gcp_auth(
    u: &RawUpstream,
    base: &Path,
    env: Env<'_>,
    k: &dyn Fn(&str) -> String,
) -> Result<UpstreamAuth, ConfigError> {
    let has_key = u.service_account_key.is_some() || u.service_account_key_file.is_some();
    let chosen = match &u.gcp_credentials {
        Some(c) => interpolate(&k("gcp_credentials"), c, env)?,
        None if has_key => "json_key".into(),
        None => "metadata".into(),
    };
    match chosen.as_str() {
        "json_key" => Ok(UpstreamAuth::GcpServiceAccount(gcp_service_account(
            u, base, env, k,
        )?)),
        "access_token" => {
            let key = gcp_service_account(u, base, env, k)?;
            Ok(UpstreamAuth::GcpToken(GcpIdentity::KeyExchange(gcp_key(
                &key, k,
            )?)))
        }
        "metadata" => {
            if has_key {
                let f = if u.service_account_key.is_some() {
                    "service_account_key"
                } else {
                    "service_account_key_file"
                };
                return Err(ConfigError::new(
                    k(f),
                    "not used with gcp_credentials: metadata",
                ));
            }
            let endpoint = match env("GCE_METADATA_HOST").filter(|v| !v.is_empty()) {
                Some(h) if h.contains("://") => h,
                Some(h) => format!("http://{h}"),
                None => "http://metadata.google.internal".into(),
            };
            let endpoint = parse_base_url(&endpoint)
                .map_err(|m| {
                    ConfigError::new(k("gcp_credentials"), format!("GCE_METADATA_HOST: {m}"))
                })?
                .0;
            Ok(UpstreamAuth::GcpToken(GcpIdentity::Metadata { endpoint }))
        }
        other => Err(ConfigError::new(
            k("gcp_credentials"),
            format!("unknown source {other:?} (json_key, access_token, metadata)"),
        )),
    }
}

/// The fields of a service account key the JWT grant needs; the private key must be an
/// RSA key in PKCS#8 PEM, as Google issues them. Errors never quote the key.
fn gcp_key(key: &Secret, k: &dyn Fn(&str) -> String) -> Result<GcpKey, ConfigError> {
    let bad = |m: &str| ConfigError::new(k("service_account_key"), m.to_string());
    let v: serde_json::Value = serde_json::from_str(key.expose()).map_err(|_| bad("not JSON"))?;
    let field = |name: &str| v.get(name).and_then(|x| x.as_str()).map(str::to_string);
    let client_email = field("client_email").ok_or_else(|| bad("no client_email"))?;
    let pem = field("private_key").ok_or_else(|| bad("no private_key"))?;
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body)
        .map_err(|_| bad("private_key is not PEM"))?;
    if ring::signature::RsaKeyPair::from_pkcs8(&der).is_err() {
        return Err(bad("private_key is not an RSA key in PKCS#8"));
    }
    let token_uri =
        field("token_uri").unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
    if !token_uri.starts_with("https://") && !token_uri.starts_with("http://") {
        return Err(bad("token_uri is not an http(s) URL"));
    }
    Ok(GcpKey {
        client_email,
        private_key_id: field("private_key_id"),
        private_key: Secret::new(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            der,
        )),
        token_uri,
    })
}

/// `kind: gcr` and `kind: gar`: the service account key, checked to be a JSON object.
fn gcp_service_account(
    u: &RawUpstream,
    base: &Path,
    env: Env<'_>,
    k: &dyn Fn(&str) -> String,
) -> Result<Secret, ConfigError> {
    let required =
        |field: &str| ConfigError::new(k(field), format!("required for kind {}", u.kind.as_str()));
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
    Ok(key)
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

    fn tenants(upstreams: &str, apps: &str, licenses: &str) -> Result<YamlTenants, ConfigError> {
        let raw = RawTenants {
            upstreams: serde_yaml_ng::from_str(upstreams).unwrap(),
            apps: serde_yaml_ng::from_str(apps).unwrap(),
            licenses: serde_yaml_ng::from_str(licenses).unwrap(),
        };
        YamlTenants::validate(raw, Path::new("/etc/berth"), &|_| None)
    }

    fn acme() -> YamlTenants {
        tenants(
            "[{name: q, url: \"https://quay.io\", username: u, password: p}]",
            "[{slug: acme, upstreams: [q]}]",
            "[{id: LICENSE-good-0001, app: acme, customer: Big Bank}]",
        )
        .unwrap()
    }

    /// The store finds a license by the secret the customer presents or by its public
    /// fingerprint; nothing else, and its `Debug` shows no id.
    #[test]
    fn licenses_by_secret_and_by_fingerprint() {
        let t = acme();
        let l = t.license_by_secret("LICENSE-good-0001").unwrap();
        assert_eq!(l.customer, "Big Bank");
        assert_eq!(l.id, fingerprint("LICENSE-good-0001"));
        assert_eq!(t.license(&l.id).unwrap().customer, "Big Bank");
        assert!(t.license_by_secret("LICENSE-good-0002").is_none());
        // The fingerprint names a license; it is not a password for it.
        assert!(t.license_by_secret(&l.id).is_none());
        assert!(t.license("LICENSE-good-0001").is_none());
        assert_eq!(t.license_count(), 1);
        let dump = format!("{t:?} {l:?}");
        assert!(!dump.contains("LICENSE-good-0001"), "{dump}");
    }

    /// An app holds its upstreams themselves, in the order it lists them.
    #[test]
    fn apps_hold_their_upstreams() {
        let t = tenants(
            "[{name: a, url: \"https://a.example\"}, {name: b, url: \"https://b.example\"}]",
            "[{slug: x, upstreams: [b, a]}, {slug: y, upstreams: [a]}]",
            "[]",
        )
        .unwrap();
        let names = |slug: &str| -> Vec<String> {
            t.app(slug)
                .unwrap()
                .upstreams
                .iter()
                .map(|u| u.name.clone())
                .collect()
        };
        assert_eq!(names("x"), ["b", "a"]);
        assert_eq!(names("y"), ["a"]);
        assert!(Arc::ptr_eq(
            &t.app("x").unwrap().upstreams[1],
            &t.upstreams()[0]
        ));
        let mut slugs: Vec<&str> = t.apps().iter().map(|a| a.slug.as_str()).collect();
        slugs.sort_unstable();
        assert_eq!(slugs, ["x", "y"]);
        assert_eq!(
            tenants(
                "[{name: a, url: \"https://a.example\"}, {name: a, url: \"https://b.example\"}]",
                "[]",
                "[]"
            )
            .unwrap_err()
            .to_string(),
            "upstreams[1].name: duplicate upstream name \"a\""
        );
        assert_eq!(
            tenants(
                "[]",
                "[]",
                "[{id: LICENSE-good-0001, app: acme, customer: c}]"
            )
            .unwrap_err()
            .to_string(),
            "licenses[0].app: unknown app \"acme\""
        );
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
