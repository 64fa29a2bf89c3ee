//! Ids and secrets the control plane hands out, and the keyed hash they are kept as.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::settings::Secret;

/// The lowercase base32 alphabet: no characters a shell, a YAML file or a URL treats
/// specially, and none that read alike in a terminal font once `0`, `1`, `8`, `9` are out.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// `n` random characters of [`ALPHABET`] (5 bits each).
fn random_chars(n: usize) -> String {
    let rng = SystemRandom::new();
    let mut bytes = vec![0u8; n];
    // The system generator failing is not something berth can work around.
    rng.fill(&mut bytes).expect("system random generator");
    bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect()
}

/// New public ids and secrets. Every kind has a prefix a reader (and a secret scanner)
/// recognises: `lic_`/`key_`/`adm_` for public ids, `berth_lic_`/`berth_key_`/`berth_adm_`
/// for secrets.
pub mod generate {
    use super::*;

    /// 80 bits: unique without coordination between replicas.
    pub fn license_id() -> String {
        format!("lic_{}", random_chars(16))
    }

    pub fn key_id() -> String {
        format!("key_{}", random_chars(16))
    }

    pub fn admin_token_id() -> String {
        format!("adm_{}", random_chars(16))
    }

    /// 200 bits.
    pub fn license_secret() -> Secret {
        Secret::new(format!("berth_lic_{}", random_chars(40)))
    }

    pub fn api_key() -> Secret {
        Secret::new(format!("berth_key_{}", random_chars(40)))
    }

    pub fn admin_token() -> Secret {
        Secret::new(format!("berth_adm_{}", random_chars(40)))
    }

    /// A key for [`SecretHasher`].
    pub fn hash_key() -> [u8; 32] {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .expect("system random generator");
        k
    }
}

/// The stored form of a secret: HMAC-SHA256 under the store's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    pub fn to_hex(&self) -> String {
        crate::oci::digest::hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<SecretHash> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(SecretHash(out))
    }
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not the secret, but there is no reason to print it either.
        f.write_str("SecretHash(..)")
    }
}

/// Hashes presented secrets for lookup. The key lives in the store, so every replica that
/// opens it agrees; secrets are 200 random bits, so the key is defence in depth, not what
/// makes the hash hard to reverse.
#[derive(Clone)]
pub struct SecretHasher {
    key: hmac::Key,
}

impl SecretHasher {
    pub fn new(key: &[u8]) -> SecretHasher {
        SecretHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    pub fn hash(&self, secret: &str) -> SecretHash {
        let tag = hmac::sign(&self.key, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        SecretHash(out)
    }
}

impl std::fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHasher(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets_have_their_prefixes_and_differ() {
        let a = generate::license_secret();
        let b = generate::license_secret();
        assert!(a.expose().starts_with("berth_lic_") && a.expose().len() == 50);
        assert_ne!(a, b);
        assert!(generate::api_key().expose().starts_with("berth_key_"));
        assert!(generate::license_id().starts_with("lic_"));
        assert!(generate::key_id().starts_with("key_"));
        assert!(generate::admin_token_id().starts_with("adm_"));
        let id = generate::license_id();
        assert!(id[4..].bytes().all(|c| ALPHABET.contains(&c)), "{id}");
    }

    #[test]
    fn hashes_depend_on_the_key_and_round_trip_as_hex() {
        let h1 = SecretHasher::new(&[1; 32]);
        let h2 = SecretHasher::new(&[2; 32]);
        assert_eq!(h1.hash("x"), h1.hash("x"));
        assert_ne!(h1.hash("x"), h2.hash("x"));
        assert_ne!(h1.hash("x"), h1.hash("y"));
        let h = h1.hash("x");
        assert_eq!(SecretHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(SecretHash::from_hex("zz"), None);
        assert!(!format!("{h:?} {h1:?}").contains(&h.to_hex()));
    }
}
