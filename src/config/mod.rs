//! The config file: reads the YAML (one contract, documented in config.example.yaml),
//! hands its sections to `settings` (process settings) and `tenancy` (who is served), and
//! keeps both in `Config`, the aggregate the rest of berth takes a snapshot of. Every error
//! names the key it is about.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use crate::settings::{
    parse_size, AdminTokenHash, AuthConfig, CacheConfig, ConfigError, HostedConfig, RateLimit,
    RewriteConfig, Secret, ServerConfig, Settings, StateConfig, TlsFiles,
};
pub use crate::tenancy::{
    fingerprint, Action, ApiKey, App, Credentials, EcrSettings, Glob, License, Origin, State,
    TenantStore, Upstream, UpstreamAuth, UpstreamKind, YamlTenants, DOCKER_HUB_HOST,
    DOCKER_HUB_URL,
};

use crate::settings::{RawAuth, RawCache, RawHosted, RawRewrite, RawServer, RawSettings, RawState};
use crate::tenancy::yaml::{RawApp, RawLicense, RawTenants, RawUpstream};

/// The whole file, as read. Sections keep their YAML names so serde's error paths are
/// the keys an operator sees (`upstreams[0].pasword`).
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
    hosted: RawHosted,
    #[serde(default)]
    rewrite: Vec<RawRewrite>,
    #[serde(default)]
    state: RawState,
}

/// Process settings and the tenancy snapshot they were loaded with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub hosted: HostedConfig,
    /// Admission webhook rules, first match wins.
    pub rewrite: Vec<RewriteConfig>,
    /// Where licenses, API keys and usage managed at runtime are kept.
    pub state: StateConfig,
    /// Apps, upstreams and licenses (the config file's, for now).
    pub tenants: Arc<dyn TenantStore>,
    /// Where the file was read from, so relative paths and reloads resolve against it.
    pub source: Option<PathBuf>,
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
        let tenants = RawTenants {
            upstreams: raw.upstreams,
            apps: raw.apps,
            licenses: raw.licenses,
        };
        let settings = RawSettings {
            server: raw.server,
            cache: raw.cache,
            auth: raw.auth,
            hosted: raw.hosted,
            rewrite: raw.rewrite,
            state: raw.state,
        };
        let (settings, tenants) = Settings::validate(
            settings,
            base,
            env,
            || YamlTenants::validate(tenants, base, env),
            |t, slug| t.app(slug).is_some(),
        )?;
        Ok(Config {
            server: settings.server,
            cache: settings.cache,
            auth: settings.auth,
            hosted: settings.hosted,
            rewrite: settings.rewrite,
            state: settings.state,
            tenants: Arc::new(tenants),
            source: None,
        })
    }

    pub fn app(&self, slug: &str) -> Option<&App> {
        self.tenants.app(slug)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

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
        let u = &c.tenants.upstreams()[0];
        assert_eq!(u.host, "quay.io");
        assert_eq!(u.base_url, "https://quay.io");
        let UpstreamAuth::Static(creds) = &u.auth else {
            panic!("{:?}", u.auth)
        };
        assert_eq!(creds.password.expose(), "s3cr3t");
        let l = c.tenants.license_by_secret("2aPXSl9pLCbkgRKQ").unwrap();
        assert!(l.is_active(SystemTime::UNIX_EPOCH));
        assert!(!l.is_active(humantime::parse_rfc3339("2027-07-01T00:00:00Z").unwrap()));
    }

    #[test]
    fn most_specific_glob_picks_the_upstream() {
        let c = parse(GOOD).unwrap();
        let app = c.app("acme").unwrap();
        assert_eq!(app.select("quay.io", "acme/api").unwrap().name, "acme-quay");
        assert_eq!(
            app.select("quay.io", "acme/team-x").unwrap().name,
            "acme-quay-team"
        );
        assert!(app.select("quay.io", "other/api").is_none());
        assert!(app.select("ghcr.io", "acme/api").is_none());
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

    /// With several mistakes, the one reported first is the same as before settings and
    /// tenancy were validated apart: server, then tenants, then auth, rewrite, the rest.
    #[test]
    fn several_mistakes_report_in_the_usual_order() {
        let bad_app = |t: &str| {
            t.replace(
                "upstreams: [acme-quay, acme-quay-team]",
                "upstreams: [acme-qay]",
            )
        };
        let tail = |extra: &str| format!("{GOOD}{extra}");
        let cases = [
            (
                bad_app(GOOD).replace("127.0.0.1:5443", "nowhere"),
                "server.listen",
            ),
            (
                bad_app(&tail("auth: { token_ttl: 1s }\n")),
                "apps[0].upstreams",
            ),
            (
                tail("auth: { token_ttl: 1s, rate_limit: { per_second: 0 } }\nrewrite: [ { app: nope } ]\n"),
                "auth.token_ttl",
            ),
            (
                tail("auth: { rate_limit: { per_second: 0 } }\nrewrite: [ { app: nope } ]\n"),
                "rewrite[0].app",
            ),
            (
                tail("auth: { rate_limit: { per_second: 0 } }\n").replace(
                    "  hostname: images.acme.test\n",
                    "  hostname: images.acme.test\n  admin_listen: nowhere\n",
                ),
                "auth.rate_limit.per_second",
            ),
            (
                GOOD.replace(
                    "  hostname: images.acme.test\n",
                    "  hostname: images.acme.test\n  admin_listen: nowhere\n",
                )
                .replace("dir: ./berth-data", "dir: ./berth-data\n  max_size: lots"),
                "server.admin_listen",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(parse(&text).unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn secrets_do_not_appear_in_debug() {
        let c = parse(GOOD).unwrap();
        let dump = format!("{c:?}");
        assert!(!dump.contains("s3cr3t"));
        assert!(!dump.contains("2aPXSl9pLCbkgRKQ"));
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../config.example.yaml");
        let c = parse(text).unwrap();
        assert_eq!(c.tenants.upstreams()[0].host, "quay.io");
        assert_eq!(c.cache.tag_ttl, Duration::from_secs(300));
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
        let u = &u.tenants.upstreams()[0];
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
        assert_eq!(c.tenants.upstreams()[0].host, "index.docker.io");
        assert_eq!(c.tenants.upstreams()[0].base_url, "http://127.0.0.1:5000");

        for (kind, url) in [("quay", "https://quay.io"), ("ghcr", "https://ghcr.io")] {
            let c = one_upstream(&format!("kind: {kind}, username: a, password: b")).unwrap();
            assert_eq!(c.tenants.upstreams()[0].base_url, url);
        }
        let c = one_upstream("kind: gar, region: europe-west1, service_account_key: '{\"type\":\"service_account\"}'").unwrap();
        let u = &c.tenants.upstreams()[0];
        assert_eq!(u.base_url, "https://europe-west1-docker.pkg.dev");
        assert_eq!(u.host, "europe-west1-docker.pkg.dev");
        let UpstreamAuth::GcpServiceAccount(key) = &u.auth else {
            panic!("{:?}", u.auth)
        };
        assert_eq!(key.expose(), "{\"type\":\"service_account\"}");
        assert!(!format!("{c:?}").contains("service_account\""));

        let c = one_upstream("kind: ecr, region: eu-west-1, registry_id: '123456789012', access_key_id: AKID, secret_access_key: '${ACME_QUAY_TOKEN}'").unwrap();
        let u = &c.tenants.upstreams()[0];
        assert_eq!(
            u.base_url,
            "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"
        );
        let UpstreamAuth::Ecr(e) = &u.auth else {
            panic!("{:?}", u.auth)
        };
        assert_eq!(e.endpoint, "https://api.ecr.eu-west-1.amazonaws.com");
        let crate::tenancy::AwsSource::Keys {
            secret_access_key, ..
        } = &e.aws.source
        else {
            panic!("{:?}", e.aws.source)
        };
        assert_eq!(secret_access_key.expose(), "s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));

        let c = one_upstream("kind: public, url: \"https://registry.k8s.io\"").unwrap();
        assert!(matches!(
            c.tenants.upstreams()[0].auth,
            UpstreamAuth::Anonymous
        ));
        // Without a kind, today's configs keep working (anonymous custom upstreams too).
        let c = one_upstream("url: \"https://r.example\"").unwrap();
        assert_eq!(c.tenants.upstreams()[0].kind, UpstreamKind::Custom);
    }

    #[test]
    fn each_kind_names_its_missing_field() {
        let ecr = "kind: ecr, url: \"https://x.example\"";
        assert_eq!(err(ecr), "upstreams[0].region: required for kind ecr");
        let ecr = "kind: ecr, url: \"https://x.example\", region: eu-west-1";
        assert_eq!(
            err(&format!("{ecr}, aws_credentials: keys")),
            "upstreams[0].access_key_id: required for kind ecr"
        );
        assert_eq!(
            err(&format!("{ecr}, access_key_id: A")),
            "upstreams[0].secret_access_key: required for kind ecr"
        );
        // Keys a source does not use are errors naming them.
        assert_eq!(
            err(&format!("{ecr}, aws_credentials: instance_metadata, access_key_id: A")),
            "upstreams[0].access_key_id: not used with aws_credentials: instance_metadata (source instance_metadata)"
        );
        assert_eq!(
            err(&format!("{ecr}, aws_credentials: instance_metadata, sts_endpoint: \"http://s\"")),
            "upstreams[0].sts_endpoint: not used with aws_credentials: instance_metadata (source instance_metadata)"
        );
        assert_eq!(
            err(&format!("{ecr}, aws_credentials: web_identity")),
            "upstreams[0].web_identity_token_file: required for web_identity (or AWS_WEB_IDENTITY_TOKEN_FILE, which EKS sets for IRSA)"
        );
        assert_eq!(
            err(&format!(
                "{ecr}, aws_credentials: web_identity, web_identity_token_file: /t, role_arn: x"
            )),
            "upstreams[0].role_arn: \"x\" is no IAM role ARN (arn:aws:iam::<account>:role/<name>)"
        );
        assert_eq!(
            err(&format!("{ecr}, aws_credentials: web_identity, web_identity_token_file: /t, role_arn: \"arn:aws:iam::123456789012:role/r\", external_id: e")),
            "upstreams[0].external_id: not used with aws_credentials: web_identity (source web_identity)"
        );
        assert_eq!(
            err(&format!("{ecr}, aws_credentials: pod_identity")),
            "upstreams[0].aws_credentials: pod_identity needs AWS_CONTAINER_CREDENTIALS_FULL_URI (set by EKS Pod Identity) in berth's environment"
        );
        assert_eq!(
            err("kind: gcr, gcp_credentials: metadata, service_account_key: '{}'"),
            "upstreams[0].service_account_key: not used with gcp_credentials: metadata"
        );
        assert_eq!(
            err("kind: gcr, gcp_credentials: access_token, service_account_key: '{\"client_email\":\"a@b\",\"private_key\":\"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"}'"),
            "upstreams[0].service_account_key: private_key is not an RSA key in PKCS#8"
        );
        assert_eq!(
            err("kind: gcr, gcp_credentials: oidc"),
            "upstreams[0].gcp_credentials: unknown source \"oidc\" (json_key, access_token, metadata)"
        );
        let acr = "kind: acr, url: \"https://a.azurecr.io\"";
        assert_eq!(
            err(&format!(
                "{acr}, azure_credentials: managed_identity, username: a, password: b"
            )),
            "upstreams[0].username: not used with azure_credentials: managed_identity"
        );
        assert_eq!(
            err(&format!("{acr}, username: a, password: b, client_id: c")),
            "upstreams[0].client_id: used with azure_credentials: managed_identity only"
        );
        assert_eq!(
            err("kind: quay, username: a, password: b, client_id: c"),
            "upstreams[0].client_id: not used by kind quay"
        );
        assert_eq!(
            err("kind: quay, username: a, password: b, aws_credentials: chain"),
            "upstreams[0].aws_credentials: not used by kind quay"
        );
        assert_eq!(
            err(&format!("{ecr}, aws_credentials: magic")),
            "upstreams[0].aws_credentials: unknown source \"magic\" (keys, chain, web_identity, pod_identity, instance_metadata)"
        );
        assert_eq!(
            err("kind: ecr, region: eu-west-1, access_key_id: A, secret_access_key: S"),
            "upstreams[0].url: required for kind ecr unless registry_id is set"
        );
        assert_eq!(
            err("kind: ecr, region: eu-west-1, registry_id: '12', access_key_id: A, secret_access_key: S"),
            "upstreams[0].registry_id: an AWS account id is 12 digits"
        );
        // Without a key a Google registry is asked with the metadata server's token.
        assert!(matches!(
            one_upstream("kind: gcr").unwrap().tenants.upstreams()[0].auth,
            UpstreamAuth::GcpToken(crate::tenancy::GcpIdentity::Metadata { .. })
        ));
        assert_eq!(
            err("kind: gcr, gcp_credentials: json_key"),
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
            hub.tenants.upstreams()[0].upstream_repository("redis"),
            "library/redis"
        );
        assert!(hub.tenants.upstreams()[0].serves_host("docker.io"));
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
}
