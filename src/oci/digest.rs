//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`), parsed once at the edge.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

/// A validated digest; the hex part is lowercase and of the algorithm's length. It keeps
/// its text form, so it orders, hashes and borrows as `str` exactly as the string it
/// replaces did (equality, order and hash are the text's, as `Borrow<str>` requires; the
/// algorithm follows from the text).
#[derive(Debug, Clone)]
pub struct Digest {
    /// `<algorithm>:<hex>`.
    text: String,
    algorithm: Algorithm,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest")]
pub struct DigestError;

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.name().len() + 1..]
    }

    /// A sha256 digest from its hex part alone (a blob's file name in a cache or a bundle):
    /// 64 lowercase hex digits, or `None`.
    pub fn from_sha256_hex(hex: &str) -> Option<Digest> {
        format!("sha256:{hex}").parse().ok()
    }

    /// `<algorithm>:<hex>`, borrowed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn sha256_of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(&sha2::Sha256::digest(bytes))
    }

    pub fn from_sha256(raw: &[u8]) -> Digest {
        Digest {
            text: format!("sha256:{}", hex(raw)),
            algorithm: Algorithm::Sha256,
        }
    }
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError)?;
        let (algorithm, len) = match alg {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            _ => return Err(DigestError),
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError);
        }
        Ok(Digest {
            text: s.to_string(),
            algorithm,
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A digest travels as its string form (`"sha256:…"`), so typed fields keep the JSON of
/// the string fields they replace.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("invalid digest {s:?}")))
    }
}

impl PartialEq for Digest {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Digest {}

impl std::hash::Hash for Digest {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text.hash(h)
    }
}

impl PartialOrd for Digest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Digest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl std::borrow::Borrow<str> for Digest {
    fn borrow(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{}", "a".repeat(64)));
        assert!(format!("sha512:{}", "0".repeat(128))
            .parse::<Digest>()
            .is_ok());
        for bad in [
            "sha256:abc".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("md5:{}", "a".repeat(32)),
            format!("sha256:{}", "g".repeat(64)),
            "sha256".to_string(),
            format!("sha256:{}", "a".repeat(65)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_is_the_string_form() {
        let d = Digest::sha256_of(b"");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        // An escaped string cannot be borrowed; it must still parse.
        let escaped = json.replace(':', "\\u003a");
        assert_eq!(serde_json::from_str::<Digest>(&escaped).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
        let hex = "a".repeat(64);
        assert_eq!(Digest::from_sha256_hex(&hex).unwrap().hex(), hex);
        assert!(Digest::from_sha256_hex(&"A".repeat(64)).is_none());
        assert!(Digest::from_sha256_hex("sha256:aa").is_none());
    }

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
