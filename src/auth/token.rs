//! Berth-issued bearer tokens: short-lived HS256 JWTs whose `access` claim lists the
//! repositories a license may pull, signed with a key kept in `auth.token_key_file`
//! (generated on first start). Verified on every request: signature, algorithm, expiry,
//! audience, issuer.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::oci::scope::Access;

const ISSUER: &str = "berth";
const KEY_LEN: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The license fingerprint (never the license id, which is a password).
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<Access>,
}

impl Claims {
    /// Whether the token lets its holder pull `name`.
    pub fn allows_pull(&self, name: &str) -> bool {
        self.allows(name, "pull")
    }

    /// Whether the token carries `action` (`pull`, `push`, `delete`) on repository `name`.
    pub fn allows(&self, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == "repository" && a.name == name && a.actions.iter().any(|x| x == action)
        })
    }
}

pub struct Issued {
    pub token: Secret,
    pub expires_in: u64,
    pub issued_at: SystemTime,
}

pub struct Issuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("auth.token_key_file: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.token_key_file: cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("auth.token_key_file: {path} holds fewer than {KEY_LEN} bytes")]
    Short { path: String },
}

impl Issuer {
    /// Loads the signing key, creating it (mode 0600) when the file does not exist yet.
    pub fn load_or_create(path: &Path, ttl: Duration) -> Result<Issuer, KeyError> {
        let shown = path.display().to_string();
        let key = match std::fs::read(path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; KEY_LEN];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k).map_err(
                    |_| KeyError::Create {
                        path: shown.clone(),
                        source: std::io::Error::other("no system randomness"),
                    },
                )?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| KeyError::Create {
                        path: shown.clone(),
                        source,
                    })?;
                }
                // Written aside and renamed in, so nobody ever reads a half-written key.
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                let written = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .and_then(|mut f| f.write_all(&k).and_then(|_| f.sync_all()))
                    .and_then(|_| std::fs::rename(&tmp, path));
                if let Err(source) = written {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(KeyError::Create {
                        path: shown.clone(),
                        source,
                    });
                }
                tracing::info!(path = %shown, "generated a new token signing key");
                k
            }
            Err(source) => {
                return Err(KeyError::Read {
                    path: shown,
                    source,
                })
            }
        };
        if key.len() < KEY_LEN {
            return Err(KeyError::Short { path: shown });
        }
        Ok(Issuer::from_key(&key, ttl))
    }

    pub fn from_key(key: &[u8], ttl: Duration) -> Issuer {
        Issuer {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            ttl,
        }
    }

    pub fn issue(&self, fingerprint: &str, audience: &str, access: Vec<Access>) -> Issued {
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut jti = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut jti);
        let claims = Claims {
            iss: ISSUER.into(),
            sub: fingerprint.into(),
            aud: audience.into(),
            exp: secs + self.ttl.as_secs(),
            nbf: secs.saturating_sub(1),
            iat: secs,
            jti: crate::oci::digest::hex(&jti),
            access,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default();
        Issued {
            token: Secret::new(token),
            expires_in: self.ttl.as_secs(),
            issued_at: now,
        }
    }

    /// Checks a token; only HS256 is accepted, so `alg: none` and key-confusion tricks fail.
    pub fn verify(&self, token: &str, audience: &str) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[audience]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        v.leeway = 5;
        v.validate_nbf = true;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn access(name: &str) -> Vec<Access> {
        vec![Access {
            kind: "repository".into(),
            name: name.into(),
            actions: vec!["pull".into()],
        }]
    }

    #[test]
    fn round_trip_and_rejections() {
        let i = Issuer::from_key(&[7u8; 32], Duration::from_secs(300));
        let t = i.issue("fp", "images.acme.test", access("proxy/acme/q/a"));
        let c = i.verify(t.token.expose(), "images.acme.test").unwrap();
        assert!(c.allows_pull("proxy/acme/q/a"));
        assert!(!c.allows_pull("proxy/acme/q/b"));
        // Wrong audience, wrong key.
        assert!(i.verify(t.token.expose(), "other.test").is_none());
        let other = Issuer::from_key(&[8u8; 32], Duration::from_secs(300));
        assert!(other.verify(t.token.expose(), "images.acme.test").is_none());
        // alg: none with the same claims.
        let parts: Vec<&str> = t.token.expose().split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(i.verify(&none, "images.acme.test").is_none());
        // Expired.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let expired = Claims {
            iss: ISSUER.into(),
            sub: "fp".into(),
            aud: "images.acme.test".into(),
            exp: now - 120,
            nbf: now - 400,
            iat: now - 400,
            jti: "x".into(),
            access: access("proxy/acme/q/a"),
        };
        let tok = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(&[7u8; 32]),
        )
        .unwrap();
        assert!(i.verify(&tok, "images.acme.test").is_none());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("berth-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("token.key");
        let a = Issuer::load_or_create(&path, Duration::from_secs(60)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = Issuer::load_or_create(&path, Duration::from_secs(60)).unwrap();
        let t = a.issue("fp", "h", vec![]);
        assert!(b.verify(t.token.expose(), "h").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
