//! An in-test Docker token server (ES256 JWTs with an x5c chain) that the real
//! docker-registry accepts through its `auth: token:` configuration.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;

use super::fake::{FakeResponse, FakeServer, Recorded};
use super::registry::RegistryAuth;
use super::tempdir;

pub struct TokenRealm {
    pub service: String,
    pub issuer: String,
    /// PEM of the signing certificate: the registry's `rootcertbundle`.
    pub cert_path: PathBuf,
    /// Where tokens are served (`/token`, or ACR's `/oauth2/token`).
    pub path: String,
    pub server: FakeServer,
    issued: Arc<AtomicUsize>,
    signer: Arc<Signer>,
    _dir: tempfile::TempDir,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der_b64: String,
    rng: SystemRandom,
    issuer: String,
}

/// How a realm presents itself: Docker Hub's service name, ACR's `/oauth2/token` path
/// and its 400 to a POST (the OAuth2 password form berth must not use).
#[derive(Clone, Debug)]
pub struct RealmOptions {
    pub service: String,
    pub path: String,
    pub post_status: Option<u16>,
}

impl Default for RealmOptions {
    fn default() -> Self {
        RealmOptions {
            service: "berth-test-registry".into(),
            path: "/token".into(),
            post_status: None,
        }
    }
}

impl TokenRealm {
    pub fn start(user: &str, password: &str, expires_in_secs: u64) -> TokenRealm {
        Self::start_with(user, password, expires_in_secs, RealmOptions::default())
    }

    pub fn start_with(
        user: &str,
        password: &str,
        expires_in_secs: u64,
        opts: RealmOptions,
    ) -> TokenRealm {
        let service = opts.service.clone();
        let issuer = "berth-test-issuer".to_string();
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate P-256 key");
        let params = rcgen::CertificateParams::new(vec!["berth-test-token-signer".to_string()])
            .expect("cert params");
        let cert = params.self_signed(&key_pair).expect("self-sign cert");
        let dir = tempdir();
        let cert_path = dir.path().join("token-signer.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write cert pem");
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .expect("load key into ring");
        let signer = Arc::new(Signer {
            key,
            cert_der_b64: STANDARD.encode(cert.der()),
            rng,
            issuer: issuer.clone(),
        });
        let issued = Arc::new(AtomicUsize::new(0));
        let expected_basic = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        let (svc, count, sig) = (service.clone(), Arc::clone(&issued), Arc::clone(&signer));
        let (realm_path, post_status) = (opts.path.clone(), opts.post_status);
        let server = FakeServer::start(move |req: &Recorded| {
            if req.path() != realm_path {
                return FakeResponse::bytes(404, "not found");
            }
            if let (Some(status), "POST") = (post_status, req.method.as_str()) {
                return FakeResponse::json(status, &json!({"error": "unsupported_grant_type"}));
            }
            if req.header("authorization") != Some(expected_basic.as_str()) {
                return FakeResponse::json(401, &json!({"details": "bad or missing credentials"}))
                    .header("www-authenticate", "Basic realm=\"berth-test-token\"");
            }
            let n = count.fetch_add(1, Ordering::SeqCst);
            let requested_service = req.query("service").unwrap_or_else(|| svc.clone());
            let scopes: Vec<String> = req
                .query_all("scope")
                .iter()
                .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
                .collect();
            let token = sig.token(&requested_service, &scopes, expires_in_secs as i64, n);
            FakeResponse::json(
                200,
                &json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": expires_in_secs,
                    "issued_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                }),
            )
        });
        let path = opts.path.clone();
        TokenRealm {
            service,
            issuer,
            cert_path,
            path,
            server,
            issued,
            signer,
            _dir: dir,
        }
    }

    pub fn realm_url(&self) -> String {
        format!("{}{}", self.server.url(), self.path)
    }

    /// The `RegistryAuth` that makes a `Registry` trust this realm.
    pub fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth::Token {
            realm: self.realm_url(),
            service: self.service.clone(),
            issuer: self.issuer.clone(),
            root_cert_pem_path: self.cert_path.clone(),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }

    /// A token for this realm's service minted directly (not counted in
    /// `token_count`), for hand-made requests; a negative `expires_in_secs`
    /// gives an already-expired token. distribution 2.8 allows 60 s of clock
    /// leeway on `exp`, so "expired" means more than 60 s in the past.
    pub fn mint(&self, scopes: &[&str], expires_in_secs: i64) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        self.signer
            .token(&self.service, &scopes, expires_in_secs, usize::MAX)
    }

    /// Tokens actually issued (requests with valid credentials).
    pub fn token_count(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Signer {
    fn token(&self, audience: &str, scopes: &[String], expires_in_secs: i64, n: usize) -> String {
        let now = now_secs() as i64;
        let access: Vec<_> = scopes.iter().filter_map(|s| parse_scope(s)).collect();
        let expired = expires_in_secs < 0;
        self.sign(&json!({
            "iss": self.issuer,
            "sub": "berth-test-user",
            "aud": audience,
            "exp": now + expires_in_secs,
            // An expired token must also have been valid once, or it fails for the wrong reason.
            "nbf": if expired { now + expires_in_secs - 60 } else { now - 1 },
            "iat": if expired { now + expires_in_secs - 60 } else { now },
            "jti": format!("berth-test-{n}-{now}"),
            "access": access,
        }))
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        // distribution 2.8 verifies the x5c chain against its rootcertbundle.
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.cert_der_b64]});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("sign token");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// `type:name:actions`; names may contain ':' (host:port), actions never do.
fn parse_scope(scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    Some(json!({"type": kind, "name": name, "actions": actions}))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after epoch")
        .as_secs()
}
