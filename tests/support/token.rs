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
    pub server: FakeServer,
    issued: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der_b64: String,
    rng: SystemRandom,
}

impl TokenRealm {
    pub fn start(user: &str, password: &str, expires_in_secs: u64) -> TokenRealm {
        let service = "berth-test-registry".to_string();
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
        let signer = Signer {
            key,
            cert_der_b64: STANDARD.encode(cert.der()),
            rng,
        };
        let issued = Arc::new(AtomicUsize::new(0));
        let expected_basic = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        let (svc, iss, count) = (service.clone(), issuer.clone(), Arc::clone(&issued));
        let server = FakeServer::start(move |req: &Recorded| {
            if req.path() != "/token" {
                return FakeResponse::bytes(404, "not found");
            }
            if req.header("authorization") != Some(expected_basic.as_str()) {
                return FakeResponse::json(401, &json!({"details": "bad or missing credentials"}))
                    .header("www-authenticate", "Basic realm=\"berth-test-token\"");
            }
            let n = count.fetch_add(1, Ordering::SeqCst);
            let requested_service = req.query("service").unwrap_or_else(|| svc.clone());
            let access: Vec<_> = req
                .query_all("scope")
                .iter()
                .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
                .filter_map(|s| parse_scope(&s))
                .collect();
            let now = now_secs();
            let claims = json!({
                "iss": iss,
                "sub": "berth-test-user",
                "aud": requested_service,
                "exp": now + expires_in_secs,
                "nbf": now - 1,
                "iat": now,
                "jti": format!("berth-test-{n}-{now}"),
                "access": access,
            });
            let token = signer.sign(&claims);
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
        TokenRealm {
            service,
            issuer,
            cert_path,
            server,
            issued,
            _dir: dir,
        }
    }

    pub fn realm_url(&self) -> String {
        format!("{}/token", self.server.url())
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

    /// Tokens actually issued (requests with valid credentials).
    pub fn token_count(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Signer {
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
