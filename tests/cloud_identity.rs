//! ECR upstreams with the platform's own AWS identity and no long-lived secret: IRSA's web
//! identity (STS `AssumeRoleWithWebIdentity`), EKS Pod Identity's container credentials
//! endpoint, the instance metadata service (IMDSv2), and a role assumed with `AssumeRole`
//! and an external id on top of temporary keys. One in-test fake plays STS, IMDS, the Pod
//! Identity agent and the ECR API (no real one exists offline); it issues short-lived
//! credentials, checks every SigV4 signature and session token against what it issued, and
//! hands out the password of a real `docker-registry` upstream. Every pull is checked by
//! digest; no issued secret may appear in any log line or `upstream test` output.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use support::berth::{run_cli, Berth, CliRun};
use support::fake::{FakeResponse, FakeServer, Recorded};
use support::image::{push_image, read_oci_layout, skopeo_copy_to_oci, ImageSpec, TestImage};
use support::registry::{Registry, RegistryAuth};

const LICENSE: &str = "LICENSE-cloud-0001";
const ACCOUNT: &str = "123456789012";
const ROLE: &str = "arn:aws:iam::123456789012:role/berth-pull";
const CROSS_ROLE: &str = "arn:aws:iam::210987654321:role/vendor-ecr-read";
const EXTERNAL_ID: &str = "vendor-external-7";

fn canary(tag: &str) -> String {
    let mut b = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    format!("CANARY{tag}{}", support::hex(&b))
}

/// Credentials the fake handed out: the secret and session token it expects with the key.
#[derive(Clone)]
struct Issued {
    secret: String,
    token: Option<String>,
    expires: u64,
}

/// What the fake knows and counts.
struct Aws {
    registry_password: String,
    web_identity_token: String,
    pod_token: String,
    imds_session: String,
    /// Long-lived keys the test configures (access key → secret, session token).
    static_keys: HashMap<String, Issued>,
    lifetime: Duration,
    issued: Mutex<HashMap<String, Issued>>,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn iso(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

impl Aws {
    fn issue(&self, prefix: &str) -> (String, Issued) {
        let akid = format!("ASIA{prefix}{}", &canary("")[6..18]).to_uppercase();
        let i = Issued {
            secret: canary("SECRET"),
            token: Some(canary("SESSION")),
            expires: now_s() + self.lifetime.as_secs(),
        };
        self.issued.lock().unwrap().insert(akid.clone(), i.clone());
        (akid, i)
    }

    /// Checks a SigV4 `Authorization` against the credentials issued for its key: the
    /// signature over the signed headers and body, the session token, the expiry.
    fn verify(&self, req: &Recorded, service: &str) -> Result<String, &'static str> {
        let auth = req
            .header("authorization")
            .ok_or("MissingAuthenticationToken")?;
        let field = |name: &str| {
            auth.split([' ', ','])
                .find_map(|p| p.strip_prefix(name))
                .unwrap_or("")
                .to_string()
        };
        let credential = field("Credential=");
        let mut parts = credential.split('/');
        let (akid, _date, region, svc) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let known = self
            .issued
            .lock()
            .unwrap()
            .get(akid)
            .cloned()
            .or_else(|| self.static_keys.get(akid).cloned())
            .ok_or("UnrecognizedClientException")?;
        if svc != service || region != "eu-west-1" {
            return Err("InvalidSignatureException");
        }
        if known.expires < now_s() {
            return Err("ExpiredTokenException");
        }
        if req.header("x-amz-security-token") != known.token.as_deref() {
            return Err("InvalidClientTokenId");
        }
        let signed = field("SignedHeaders=");
        let names: Vec<&str> = signed.split(';').collect();
        if known.token.is_some() && !names.contains(&"x-amz-security-token") {
            return Err("InvalidSignatureException");
        }
        let values: Vec<(&str, &str)> = names
            .iter()
            .map(|n| (*n, req.header(n).unwrap_or("")))
            .collect();
        let expected = berth::upstream::sigv4::authorization(
            akid,
            &berth::config::Secret::new(known.secret.clone()),
            &berth::upstream::sigv4::SignInput {
                method: &req.method,
                path: req.path(),
                query: "",
                headers: &values,
                body: &req.body,
                region,
                service,
                amz_date: req.header("x-amz-date").unwrap_or(""),
            },
        );
        if expected != auth {
            return Err("InvalidSignatureException");
        }
        Ok(akid.to_string())
    }

    fn handle(&self, req: &Recorded) -> FakeResponse {
        let sts_error = |status: u16, code: &str| {
            FakeResponse::bytes(
                status,
                format!("<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>test</Message></Error></ErrorResponse>"),
            )
        };
        let credentials_xml = |action: &str, akid: &str, i: &Issued| {
            FakeResponse::bytes(
                200,
                format!(
                    "<{action}Response><{action}Result><Credentials>\
                     <AccessKeyId>{akid}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
                     <SessionToken>{}</SessionToken><Expiration>{}</Expiration>\
                     </Credentials></{action}Result></{action}Response>",
                    i.secret,
                    i.token.as_deref().unwrap_or(""),
                    iso(i.expires)
                ),
            )
        };
        let json_credentials = |akid: &str, i: &Issued| {
            FakeResponse::json(
                200,
                &serde_json::json!({
                    "Code": "Success", "Type": "AWS-HMAC",
                    "AccessKeyId": akid, "SecretAccessKey": i.secret,
                    "Token": i.token, "Expiration": iso(i.expires),
                }),
            )
        };
        match (req.method.as_str(), req.path()) {
            // ECR's API.
            ("POST", "/")
                if req.header("x-amz-target")
                    == Some("AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken") =>
            {
                let akid = match self.verify(req, "ecr") {
                    Ok(a) => a,
                    Err(t) => return FakeResponse::json(400, &serde_json::json!({ "__type": t })),
                };
                let expires = self
                    .issued
                    .lock()
                    .unwrap()
                    .get(&akid)
                    .map_or(now_s() + 12 * 3600, |i| i.expires);
                FakeResponse::json(
                    200,
                    &serde_json::json!({"authorizationData": [{
                        "authorizationToken": STANDARD.encode(format!("AWS:{}", self.registry_password)),
                        "expiresAt": expires as f64,
                    }]}),
                )
            }
            // STS's query API.
            ("POST", "/") => {
                let form: HashMap<String, String> = form_urlencoded::parse(&req.body)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
                match get("Action") {
                    "AssumeRoleWithWebIdentity" => {
                        if get("WebIdentityToken") != self.web_identity_token {
                            return sts_error(400, "InvalidIdentityToken");
                        }
                        if get("RoleArn") != ROLE || get("RoleSessionName").is_empty() {
                            return sts_error(403, "AccessDenied");
                        }
                        let (akid, i) = self.issue("WEB");
                        credentials_xml("AssumeRoleWithWebIdentity", &akid, &i)
                    }
                    "AssumeRole" => {
                        if let Err(code) = self.verify(req, "sts") {
                            return sts_error(403, code);
                        }
                        if get("RoleArn") != CROSS_ROLE || get("ExternalId") != EXTERNAL_ID {
                            return sts_error(403, "AccessDenied");
                        }
                        let (akid, i) = self.issue("ROLE");
                        credentials_xml("AssumeRole", &akid, &i)
                    }
                    _ => sts_error(400, "InvalidAction"),
                }
            }
            // IMDSv2.
            ("PUT", "/latest/api/token") => {
                if req.header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                    return FakeResponse::new(400);
                }
                FakeResponse::bytes(200, self.imds_session.clone())
            }
            ("GET", p) if p.starts_with("/latest/meta-data/iam/security-credentials/") => {
                if req.header("x-aws-ec2-metadata-token") != Some(self.imds_session.as_str()) {
                    return FakeResponse::new(401);
                }
                match p.trim_start_matches("/latest/meta-data/iam/security-credentials/") {
                    "" => FakeResponse::bytes(200, "berth-node-role\n"),
                    "berth-node-role" => {
                        let (akid, i) = self.issue("IMDS");
                        json_credentials(&akid, &i)
                    }
                    _ => FakeResponse::new(404),
                }
            }
            // The EKS Pod Identity agent.
            ("GET", "/v1/credentials") => {
                if req.header("authorization") != Some(self.pod_token.as_str()) {
                    return FakeResponse::json(401, &serde_json::json!({"message": "denied"}));
                }
                let (akid, i) = self.issue("POD");
                json_credentials(&akid, &i)
            }
            _ => FakeResponse::new(404),
        }
    }
}

struct Site {
    reg: Registry,
    aws: Arc<Aws>,
    fake: FakeServer,
    image: TestImage,
    dir: tempfile::TempDir,
    /// The static keys' secret and session token (AssumeRole's source credentials).
    key_secret: String,
    key_token: String,
}

impl Site {
    fn new(lifetime: Duration) -> Site {
        let registry_password = canary("REGISTRY");
        let reg = Registry::start(RegistryAuth::Htpasswd {
            user: "AWS".into(),
            password: registry_password.clone(),
        });
        let image = push_image(
            &reg,
            Some(("AWS", &registry_password)),
            "acme/app",
            "v1",
            &ImageSpec {
                layer_sizes: vec![30_000, 1_000],
                seed: 71,
            },
        );
        let (key_secret, key_token) = (canary("KEYSECRET"), canary("KEYTOKEN"));
        let aws = Arc::new(Aws {
            registry_password,
            web_identity_token: canary("WEBID"),
            pod_token: canary("PODTOKEN"),
            imds_session: canary("IMDS"),
            static_keys: HashMap::from([(
                "ASIASTATICKEY1".to_string(),
                Issued {
                    secret: key_secret.clone(),
                    token: Some(key_token.clone()),
                    expires: u64::MAX,
                },
            )]),
            lifetime,
            issued: Mutex::new(HashMap::new()),
        });
        let a = aws.clone();
        let fake = FakeServer::start(move |req| a.handle(req));
        let dir = support::tempdir();
        std::fs::write(
            dir.path().join("web-identity-token"),
            &aws.web_identity_token,
        )
        .unwrap();
        std::fs::write(dir.path().join("pod-token"), &aws.pod_token).unwrap();
        Site {
            reg,
            aws,
            fake,
            image,
            dir,
            key_secret,
            key_token,
        }
    }

    /// One ECR upstream per identity source, all in front of the same registry under
    /// their own host names.
    fn config(&self, port: u16) -> String {
        let common = |name: &str, extra: &str| {
            format!(
                "  - {{ name: {name}, kind: ecr, url: \"{reg}\", host: {name}.dkr.ecr.test, region: eu-west-1, \
                 registry_id: \"{ACCOUNT}\", ecr_endpoint: \"{fake}\", {extra} }}\n",
                reg = self.reg.url(),
                fake = self.fake.url(),
            )
        };
        let fake = self.fake.url();
        let upstreams = [
            common(
                "irsa",
                &format!(
                    "aws_credentials: web_identity, role_arn: \"{ROLE}\", sts_endpoint: \"{fake}\""
                ),
            ),
            common("pod", "aws_credentials: pod_identity"),
            common("imds", "aws_credentials: instance_metadata"),
            common(
                "cross",
                &format!(
                    "access_key_id: ASIASTATICKEY1, secret_access_key: \"${{KEY_SECRET}}\", \
                     session_token: \"${{KEY_TOKEN}}\", role_arn: \"{CROSS_ROLE}\", \
                     external_id: {EXTERNAL_ID}, sts_endpoint: \"{fake}\""
                ),
            ),
        ]
        .concat();
        format!(
            "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\n\
             cache: {{ dir: \"{}\" }}\n\
             upstreams:\n{upstreams}\
             apps:\n  - {{ slug: acme, upstreams: [irsa, pod, imds, cross] }}\n\
             licenses:\n  - {{ id: {LICENSE}, app: acme, customer: Cloud }}\n",
            self.dir.path().join("cache").display()
        )
    }

    /// The process environment EKS (IRSA, Pod Identity) and EC2 give berth.
    fn env(&self) -> Vec<(String, String)> {
        let d = self.dir.path();
        vec![
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
                d.join("web-identity-token").display().to_string(),
            ),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
                format!("{}/v1/credentials", self.fake.url()),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".into(),
                d.join("pod-token").display().to_string(),
            ),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), self.fake.url()),
            ("KEY_SECRET".into(), self.key_secret.clone()),
            ("KEY_TOKEN".into(), self.key_token.clone()),
        ]
    }

    fn start(&self) -> Berth {
        let port = support::free_port();
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Berth::start_on(port, &self.config(port), &env)
    }

    fn upstream_test(&self, berth: &Berth, upstream: &str) -> CliRun {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_cli(
            &[
                "upstream",
                "test",
                "--config",
                berth.config_path.to_str().unwrap(),
                upstream,
                "--image",
                "acme/app:v1",
            ],
            &env,
            None,
            Duration::from_secs(60),
        )
    }

    fn count(&self, action: &str) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| {
                String::from_utf8_lossy(&r.body).contains(&format!("Action={action}&"))
                    || (action == "GetAuthorizationToken"
                        && r.header("x-amz-target")
                            .is_some_and(|t| t.ends_with(action)))
            })
            .count()
    }

    /// Every secret the test and the fake know.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![
            self.aws.registry_password.clone(),
            self.aws.web_identity_token.clone(),
            self.aws.pod_token.clone(),
            self.aws.imds_session.clone(),
            self.key_secret.clone(),
            self.key_token.clone(),
        ];
        for i in self.aws.issued.lock().unwrap().values() {
            s.push(i.secret.clone());
            s.extend(i.token.clone());
        }
        s
    }
}

fn pull(b: &Berth, host: &str, img: &TestImage) {
    let dest = support::tempdir();
    let src = format!(
        "docker://127.0.0.1:{}/proxy/acme/{host}/acme/app:v1",
        b.port
    );
    let out = skopeo_copy_to_oci(
        &src,
        Some(&format!("{LICENSE}:{LICENSE}")),
        dest.path(),
        &["--preserve-digests"],
    );
    assert!(
        out.status.success(),
        "pull {src}: {}\nberth log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.logs()
    );
    assert_eq!(
        read_oci_layout(dest.path()).manifest_digest,
        img.manifest_digest
    );
}

/// The status of a licensed manifest GET (plain HTTP/1.1, so nothing retries it).
fn get_status(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let auth = format!("Basic {}", STANDARD.encode(format!("{LICENSE}:{LICENSE}")));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
         Accept: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn no_secret_in(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "a secret ({}…) is in {what}:\n{text}",
            &s[..12]
        );
    }
}

#[test]
fn every_aws_identity_source_pulls_and_says_where_it_came_from() {
    let site = Site::new(Duration::from_secs(3600));
    let b = site.start();
    for host in ["irsa", "pod", "imds", "cross"] {
        pull(&b, &format!("{host}.dkr.ecr.test"), &site.image);
    }
    // One credential fetch and one ECR login per upstream for a whole pull.
    assert_eq!(site.count("AssumeRoleWithWebIdentity"), 1);
    assert_eq!(site.count("AssumeRole"), 1);
    assert_eq!(site.fake.count("GET", "/v1/credentials"), 1);
    assert_eq!(site.fake.count("PUT", "/latest/api/token"), 1);
    assert_eq!(site.count("GetAuthorizationToken"), 4);

    for (upstream, says) in [
        ("irsa", format!("✓ aws credentials: web identity as {ROLE} (access key ASIAWEB")),
        ("pod", "✓ aws credentials: container credentials from http://127.0.0.1:".to_string()),
        ("imds", "✓ aws credentials: instance metadata (IMDSv2) role berth-node-role".to_string()),
        (
            "cross",
            format!("✓ aws credentials: access key ASIASTATICKEY1 with a session token → role {CROSS_ROLE}"),
        ),
    ] {
        let r = site.upstream_test(&b, upstream);
        assert_eq!(r.code, Some(0), "{upstream}: {}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains(&says), "{upstream}: no {says:?} in\n{}", r.stdout);
        assert!(r.stdout.contains("✓ manifest: acme/app:v1 → sha256:"), "{}", r.stdout);
        no_secret_in("upstream test", &format!("{}{}", r.stdout, r.stderr), &site.secrets());
    }
    no_secret_in("berth's log", &b.logs(), &site.secrets());
}

#[test]
fn short_lived_credentials_are_renewed_once_for_twenty_concurrent_pulls() {
    // Four-second sessions: renewed halfway, at two seconds.
    let site = Site::new(Duration::from_secs(4));
    let b = site.start();
    let burst = |tag: &str| {
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let port = b.port;
                let path = format!("/v2/proxy/acme/irsa.dkr.ecr.test/acme/app/manifests/{tag}");
                std::thread::spawn(move || get_status(port, &path))
            })
            .collect();
        for t in threads {
            let status = t.join().unwrap();
            assert!(status == 200 || status == 404, "{status}");
        }
    };
    burst("v1");
    assert_eq!(
        site.count("AssumeRoleWithWebIdentity"),
        1,
        "20 pulls, one STS call"
    );
    assert_eq!(
        site.count("GetAuthorizationToken"),
        1,
        "20 pulls, one ECR login"
    );
    // Past the renewal point (and before expiry): the next pulls renew, once.
    std::thread::sleep(Duration::from_millis(2500));
    burst("not-there");
    assert_eq!(
        site.count("AssumeRoleWithWebIdentity"),
        2,
        "{:?}",
        site.fake.requests().len()
    );
    assert_eq!(site.count("GetAuthorizationToken"), 2);
    // Past expiry of everything issued first: still one renewal, and pulls go on.
    std::thread::sleep(Duration::from_millis(4500));
    pull(&b, "irsa.dkr.ecr.test", &site.image);
    assert_eq!(site.count("AssumeRoleWithWebIdentity"), 3);
    no_secret_in("berth's log", &b.logs(), &site.secrets());
}

#[test]
fn upstream_test_names_the_step_that_failed() {
    let site = Site::new(Duration::from_secs(3600));
    let b = site.start();
    let fails = |upstream: &str, says: &str| {
        let r = site.upstream_test(&b, upstream);
        assert_eq!(r.code, Some(1), "{upstream}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains(says),
            "{upstream}: no {says:?} in\n{}",
            r.stdout
        );
        no_secret_in(
            "upstream test",
            &format!("{}{}", r.stdout, r.stderr),
            &site.secrets(),
        );
    };
    let d = site.dir.path();
    // A token the issuer does not know (rotated, wrong cluster).
    std::fs::write(d.join("web-identity-token"), "not-the-token").unwrap();
    fails(
        "irsa",
        "✗ aws credentials: cloud identity: AWS credentials, STS AssumeRoleWithWebIdentity: answered 400 Bad Request (InvalidIdentityToken)",
    );
    std::fs::remove_file(d.join("web-identity-token")).unwrap();
    fails("irsa", "✗ aws credentials: cloud identity: AWS credentials, web identity: cannot read the token file");
    std::fs::write(d.join("pod-token"), "wrong").unwrap();
    fails(
        "pod",
        "✗ aws credentials: cloud identity: AWS credentials, container credentials endpoint: answered 401 Unauthorized",
    );
    // An ECR login refused: the credentials step passed, the ECR step names the key.
    let yaml = std::fs::read_to_string(&b.config_path).unwrap();
    let bad = yaml.replace(EXTERNAL_ID, "wrong-external-id");
    let bad_path = d.join("bad.yaml");
    std::fs::write(&bad_path, bad).unwrap();
    let env = site.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = run_cli(
        &[
            "upstream",
            "test",
            "--config",
            bad_path.to_str().unwrap(),
            "cross",
        ],
        &env,
        None,
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stdout.contains("✗ aws credentials: cloud identity: AWS credentials, STS AssumeRole: answered 403 Forbidden (AccessDenied)"),
        "{}",
        r.stdout
    );
    // A metadata endpoint that is not IMDS: the session-token step says so.
    let elsewhere = format!("{}/nothing-here", site.fake.url());
    let mut env = env.clone();
    env.retain(|(k, _)| *k != "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT", &elsewhere));
    let r = run_cli(
        &[
            "upstream",
            "test",
            "--config",
            b.config_path.to_str().unwrap(),
            "imds",
        ],
        &env,
        None,
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stdout.contains("✗ aws credentials: cloud identity: AWS credentials, IMDSv2 session token: answered 404"),
        "{}",
        r.stdout
    );
    no_secret_in("berth's log", &b.logs(), &site.secrets());
}

// ---- Google and Azure ------------------------------------------------------------------

use support::token::{RealmOptions, TokenRealm};

/// A registry behind a token realm that accepts exactly `user`/`password` (the login the
/// cloud identity must produce), with the test image in it. Realm tokens live `realm_ttl`
/// seconds, so a short one makes berth log in again.
fn realm_registry(
    user: &str,
    password: &str,
    realm_ttl: u64,
    path: &str,
) -> (TokenRealm, Registry, TestImage) {
    let realm = TokenRealm::start_with(
        user,
        password,
        realm_ttl,
        RealmOptions {
            path: path.into(),
            ..RealmOptions::default()
        },
    );
    let reg = Registry::start(realm.registry_auth());
    let img = push_image(
        &reg,
        Some((user, password)),
        "acme/app",
        "v1",
        &ImageSpec {
            layer_sizes: vec![20_000, 500],
            seed: 81,
        },
    );
    (realm, reg, img)
}

fn cloud_config(port: u16, cache: &Path, upstream: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\", hostname: \"127.0.0.1:{port}\" }}\n\
         cache: {{ dir: \"{}\" }}\n\
         upstreams:\n  - {upstream}\n\
         apps:\n  - {{ slug: acme, upstreams: [cloud] }}\n\
         licenses:\n  - {{ id: {LICENSE}, app: acme, customer: Cloud }}\n",
        cache.display()
    )
}

fn start_cloud(upstream: &str, env: &[(&str, &str)]) -> (Berth, tempfile::TempDir) {
    let dir = support::tempdir();
    let port = support::free_port();
    let b = Berth::start_on(port, &cloud_config(port, dir.path(), upstream), env);
    (b, dir)
}

fn test_upstream(b: &Berth, env: &[(&str, &str)]) -> CliRun {
    run_cli(
        &[
            "upstream",
            "test",
            "--config",
            b.config_path.to_str().unwrap(),
            "cloud",
            "--image",
            "acme/app:v1",
        ],
        env,
        None,
        Duration::from_secs(60),
    )
}

fn realm_logins(realm: &TokenRealm) -> Vec<String> {
    realm
        .requests()
        .iter()
        .filter(|r| {
            r.header("user-agent")
                .is_some_and(|u| u.starts_with("berth"))
        })
        .filter_map(|r| r.header("authorization").map(str::to_string))
        .collect()
}

#[test]
fn gke_workload_identity_pulls_with_the_metadata_servers_token() {
    let token = canary("GCPTOKEN");
    let (realm, reg, img) = realm_registry("oauth2accesstoken", &token, 1, "/token");
    let t = token.clone();
    // Four-second tokens: renewed after two.
    let metadata = FakeServer::start(move |req| {
        if req.path() != "/computeMetadata/v1/instance/service-accounts/default/token" {
            return FakeResponse::new(404);
        }
        if req.header("metadata-flavor") != Some("Google") {
            return FakeResponse::new(403);
        }
        FakeResponse::json(
            200,
            &serde_json::json!({"access_token": t, "expires_in": 4, "token_type": "Bearer"}),
        )
    });
    let host = format!("127.0.0.1:{}", metadata.port);
    let env = [("GCE_METADATA_HOST", host.as_str())];
    let (b, _dir) = start_cloud(
        &format!(
            "{{ name: cloud, kind: gcr, url: \"{}\", host: gcr.io }}",
            reg.url()
        ),
        &env,
    );
    // Twenty pulls at once: one token from the metadata server.
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (b_port, img) = (b.port, img.clone());
            std::thread::spawn(move || {
                let dest = support::tempdir();
                let out = skopeo_copy_to_oci(
                    &format!("docker://127.0.0.1:{b_port}/proxy/acme/gcr.io/acme/app:v1"),
                    Some(&format!("{LICENSE}:{LICENSE}")),
                    dest.path(),
                    &["--preserve-digests"],
                );
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(
                    read_oci_layout(dest.path()).manifest_digest,
                    img.manifest_digest
                );
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(metadata.request_count(), 1, "20 pulls, one metadata token");
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("oauth2accesstoken:{token}"))
    );
    let logins = realm_logins(&realm);
    assert!(
        !logins.is_empty() && logins.iter().all(|l| *l == expected),
        "{logins:?}"
    );
    // Past the token's renewal point and the realm token's life: one new metadata token.
    // (A tag berth has not cached, so the upstream is asked.)
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        get_status(b.port, "/v2/proxy/acme/gcr.io/acme/app/manifests/v2"),
        404
    );
    assert_eq!(metadata.request_count(), 2);
    let r = test_upstream(&b, &env);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "✓ cloud identity: GCP metadata server at http://{host} (default service account)"
        )),
        "{}",
        r.stdout
    );
    // The metadata server gone: the step says which.
    drop(metadata);
    let r = run_cli(
        &[
            "upstream",
            "test",
            "--config",
            b.config_path.to_str().unwrap(),
            "cloud",
        ],
        &[(
            "GCE_METADATA_HOST",
            &format!("127.0.0.1:{}", support::free_port()),
        )],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stdout.contains(
            "✗ cloud identity: cloud identity: GCP metadata server token: cannot connect"
        ),
        "{}",
        r.stdout
    );
    no_secret_in("berth's log", &b.logs(), std::slice::from_ref(&token));
}

/// An RSA key pair from openssl: the PKCS#8 PEM a service account key holds, and the
/// public key (PKCS#1 DER) the fake token endpoint verifies with.
fn rsa_key(dir: &Path) -> Option<(String, Vec<u8>)> {
    let pem = dir.join("key.pem");
    let der = dir.join("pub.der");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .output()
        .is_ok_and(|o| o.status.success())
        && std::process::Command::new("openssl")
            .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&der)
            .output()
            .is_ok_and(|o| o.status.success());
    ok.then(|| {
        (
            std::fs::read_to_string(&pem).unwrap(),
            std::fs::read(&der).unwrap(),
        )
    })
}

#[test]
fn a_service_account_key_is_exchanged_for_a_token_and_never_sent() {
    let dir = support::tempdir();
    let Some((pem, public)) = rsa_key(dir.path()) else {
        eprintln!("SKIP: openssl is not installed");
        return;
    };
    let token = canary("GCPTOKEN");
    let (realm, reg, img) = realm_registry("oauth2accesstoken", &token, 300, "/token");
    let t = token.clone();
    let token_endpoint = FakeServer::start(move |req| {
        let form: HashMap<String, String> = form_urlencoded::parse(&req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if req.method != "POST"
            || form.get("grant_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        {
            return FakeResponse::json(
                400,
                &serde_json::json!({"error": "unsupported_grant_type"}),
            );
        }
        let jwt = form.get("assertion").cloned().unwrap_or_default();
        let parts: Vec<&str> = jwt.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let verified = parts.len() == 3
            && ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                &public,
            )
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &b64.decode(parts[2]).unwrap_or_default(),
            )
            .is_ok();
        if !verified {
            return FakeResponse::json(400, &serde_json::json!({"error": "invalid_grant"}));
        }
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        let good = header["alg"] == "RS256"
            && header["kid"] == "key-0123"
            && claims["iss"] == "berth@acme-prod.iam.gserviceaccount.com"
            && claims["aud"]
                .as_str()
                .is_some_and(|a| a.ends_with("/token"))
            && claims["scope"]
                .as_str()
                .is_some_and(|s| s.contains("googleapis.com/auth/"))
            && claims["exp"].as_u64().unwrap_or(0) > claims["iat"].as_u64().unwrap_or(u64::MAX);
        if !good {
            return FakeResponse::json(400, &serde_json::json!({"error": "invalid_grant"}));
        }
        FakeResponse::json(
            200,
            &serde_json::json!({"access_token": t, "expires_in": 3599, "token_type": "Bearer"}),
        )
    });
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "key-0123",
        "private_key": pem,
        "client_email": "berth@acme-prod.iam.gserviceaccount.com",
        "token_uri": format!("{}/token", token_endpoint.url()),
    });
    std::fs::write(dir.path().join("sa.json"), key.to_string()).unwrap();
    let (b, _cache) = start_cloud(
        &format!(
            "{{ name: cloud, kind: gar, region: europe-west1, url: \"{}\", host: europe-west1-docker.pkg.dev, gcp_credentials: access_token, service_account_key_file: \"{}\" }}",
            reg.url(),
            dir.path().join("sa.json").display()
        ),
        &[],
    );
    pull(&b, "europe-west1-docker.pkg.dev", &img);
    assert_eq!(token_endpoint.request_count(), 1);
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("oauth2accesstoken:{token}"))
    );
    assert_eq!(realm_logins(&realm), vec![expected]);
    let r = test_upstream(&b, &[]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("✓ cloud identity: service account berth@acme-prod.iam.gserviceaccount.com exchanged at"), "{}", r.stdout);
    // The private key is in no request, log line or output.
    let key_body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let key_line = &key_body[40..100];
    for r in realm
        .requests()
        .iter()
        .chain(token_endpoint.requests().iter())
    {
        assert!(
            !String::from_utf8_lossy(&r.body).contains(key_line)
                && !format!("{:?}", r.headers).contains(key_line)
        );
    }
    no_secret_in(
        "berth's log",
        &b.logs(),
        &[key_line.to_string(), token.clone()],
    );
    no_secret_in("upstream test", &r.stdout, &[key_line.to_string(), token]);
}

#[test]
fn aks_managed_identity_is_exchanged_for_an_acr_refresh_token() {
    let refresh = canary("ACRREFRESH");
    let (realm, reg, img) = realm_registry(
        "00000000-0000-0000-0000-000000000000",
        &refresh,
        300,
        "/oauth2/token",
    );
    let aad = canary("AADTOKEN");
    let (a, r, origin) = (aad.clone(), refresh.clone(), reg.url());
    // The registry's own origin in front of docker-registry: ACR's /oauth2/exchange there,
    // and IMDS on the same fake (its own address in AZURE_POD_IDENTITY_AUTHORITY_HOST).
    let front = FakeServer::start(move |req| match (req.method.as_str(), req.path()) {
        ("GET", "/metadata/identity/oauth2/token") => {
            if req.header("metadata") != Some("true")
                || req.query("resource").as_deref() != Some("https://management.azure.com/")
                || req.query("client_id").as_deref() != Some("11111111-2222-3333-4444-555555555555")
            {
                return FakeResponse::json(400, &serde_json::json!({"error": "invalid_request"}));
            }
            FakeResponse::json(
                200,
                &serde_json::json!({"access_token": a, "expires_in": "3599", "token_type": "Bearer"}),
            )
        }
        ("POST", "/oauth2/exchange") => {
            let form: HashMap<String, String> = form_urlencoded::parse(&req.body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if form.get("grant_type").map(String::as_str) != Some("access_token")
                || form.get("access_token") != Some(&a)
                || form.get("service").is_none_or(|s| s.is_empty())
            {
                return FakeResponse::json(401, &serde_json::json!({"error": "unauthorized"}));
            }
            FakeResponse::json(200, &serde_json::json!({"refresh_token": r}))
        }
        _ => FakeResponse::proxy_to(&origin, req),
    });
    let env = [("AZURE_POD_IDENTITY_AUTHORITY_HOST", front.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (b, _dir) = start_cloud(
        &format!(
            "{{ name: cloud, kind: acr, url: \"{}\", host: acme.azurecr.io, azure_credentials: managed_identity, client_id: 11111111-2222-3333-4444-555555555555 }}",
            front.url()
        ),
        &env,
    );
    pull(&b, "acme.azurecr.io", &img);
    assert_eq!(front.count("GET", "/metadata/identity/oauth2/token"), 1);
    assert_eq!(front.count("POST", "/oauth2/exchange"), 1);
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("00000000-0000-0000-0000-000000000000:{refresh}"))
    );
    assert_eq!(realm_logins(&realm), vec![expected]);
    let r = test_upstream(&b, &env);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("✓ cloud identity: Azure managed identity (11111111-2222-3333-4444-555555555555) via IMDS at"),
        "{}",
        r.stdout
    );
    // Another identity than the one IMDS knows: the IMDS step says so.
    let yaml = std::fs::read_to_string(&b.config_path).unwrap();
    let bad = b.config_path.with_file_name("bad.yaml");
    std::fs::write(&bad, yaml.replace("11111111-2222", "99999999-2222")).unwrap();
    let r = run_cli(
        &[
            "upstream",
            "test",
            "--config",
            bad.to_str().unwrap(),
            "cloud",
        ],
        &env,
        None,
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stdout.contains("✗ cloud identity: cloud identity: Azure IMDS managed identity token: answered 400 Bad Request (invalid_request)"),
        "{}",
        r.stdout
    );
    no_secret_in("berth's log", &b.logs(), &[aad.clone(), refresh.clone()]);
    no_secret_in("upstream test", &r.stdout, &[aad, refresh]);
}

/// The token steps of Google's and Azure's flows, refused: `upstream test` names each.
#[test]
fn refused_google_and_azure_token_steps_are_named() {
    let dir = support::tempdir();
    let Some((pem, _)) = rsa_key(dir.path()) else {
        eprintln!("SKIP: openssl is not installed");
        return;
    };
    // A token endpoint that refuses every grant, and an Azure front whose IMDS answers but
    // whose exchange refuses.
    let google = FakeServer::start(|_| {
        FakeResponse::json(400, &serde_json::json!({"error": "invalid_grant"}))
    });
    let azure = FakeServer::start(|req| match req.path() {
        "/metadata/identity/oauth2/token" => FakeResponse::json(
            200,
            &serde_json::json!({"access_token": "aad", "expires_in": "3599"}),
        ),
        "/oauth2/exchange" => {
            FakeResponse::json(401, &serde_json::json!({"error": "unauthorized"}))
        }
        _ => FakeResponse::new(404),
    });
    let key = serde_json::json!({
        "type": "service_account",
        "private_key": pem,
        "client_email": "berth@acme-prod.iam.gserviceaccount.com",
        "token_uri": format!("{}/token", google.url()),
    });
    std::fs::write(dir.path().join("sa.json"), key.to_string()).unwrap();
    let cases = [
        (
            format!(
                "{{ name: cloud, kind: gcr, url: \"{}\", host: gcr.io, gcp_credentials: access_token, service_account_key_file: \"{}\" }}",
                google.url(),
                dir.path().join("sa.json").display()
            ),
            "✗ cloud identity: cloud identity: GCP token endpoint (JWT bearer grant): answered 400 Bad Request (invalid_grant)",
        ),
        (
            format!(
                "{{ name: cloud, kind: acr, url: \"{}\", host: acme.azurecr.io, azure_credentials: managed_identity }}",
                azure.url()
            ),
            "✗ cloud identity: cloud identity: ACR /oauth2/exchange: answered 401 Unauthorized (unauthorized)",
        ),
    ];
    let front = azure.url();
    for (upstream, says) in cases {
        let cfg = dir.path().join("berth.yaml");
        std::fs::write(
            &cfg,
            cloud_config(support::free_port(), &dir.path().join("cache"), &upstream),
        )
        .unwrap();
        let r = run_cli(
            &[
                "upstream",
                "test",
                "--config",
                cfg.to_str().unwrap(),
                "cloud",
            ],
            &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", front.as_str())],
            None,
            Duration::from_secs(60),
        );
        assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
        assert!(r.stdout.contains(says), "no {says:?} in\n{}", r.stdout);
    }
}
