//! Image references (`[registry[:port]/]path[:tag][@digest]`): parsing, validation and Docker Hub normalisation.
//!
//! Follows the grammar of the Docker/distribution `reference` package, written by
//! hand: the crate carries no regex engine and these parsers run on every admission
//! request.

use std::fmt;

use super::name::{
    check_component, docker_hub_repository, valid_reference_host, valid_tag, ComponentError,
};
pub use super::name::{is_docker_hub_host, DOCKER_HUB, DOCKER_HUB_ALIASES, NAME_MAX};
use super::Digest;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("image name is {0} characters long, more than {NAME_MAX}")]
    NameTooLong(usize),
    #[error("invalid registry host {0:?}")]
    InvalidRegistry(String),
    #[error("empty path component in image name")]
    EmptyComponent,
    #[error("invalid path component {0:?} (lowercase letters, digits and single separators only)")]
    InvalidComponent(String),
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
    #[error("invalid digest {0:?} (expected sha256:<64 hex> or sha512:<128 hex>)")]
    InvalidDigest(String),
}

/// A parsed, normalised image reference.
///
/// `registry` is `docker.io` for every spelling of Docker Hub, and `repository`
/// then carries the implicit `library/` prefix for official images.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises `input`. Never panics, whatever the input.
    pub fn parse(input: &str) -> Result<ImageRef, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let d = d
                    .parse()
                    .map_err(|_| ReferenceError::InvalidDigest(d.to_string()))?;
                (n, Some(d))
            }
            None => (input, None),
        };
        // A tag's colon is the last one after the last slash; earlier colons
        // belong to a registry port.
        let slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[slash..].rfind(':') {
            Some(i) => {
                let tag = &name_tag[slash + i + 1..];
                validate_tag(tag)?;
                (&name_tag[..slash + i], Some(tag.to_string()))
            }
            None => (name_tag, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if name.len() > NAME_MAX {
            return Err(ReferenceError::NameTooLong(name.len()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_registry(first) => {
                validate_registry(first)?;
                (first, rest)
            }
            _ => (DOCKER_HUB, name),
        };
        for component in path.split('/') {
            validate_component(component)?;
        }
        let hub = is_docker_hub_host(registry);
        let repository = if hub {
            docker_hub_repository(path).into_owned()
        } else {
            path.to_string()
        };
        let registry = if hub { DOCKER_HUB } else { registry };
        // The limit holds for the normalised name (`docker.io/library/...`), as in
        // distribution's ParseNormalizedNamed; otherwise Display would not re-parse.
        let full = registry.len() + 1 + repository.len();
        if full > NAME_MAX {
            return Err(ReferenceError::NameTooLong(full));
        }
        Ok(ImageRef {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// Whether this image lives on Docker Hub (under any of its host names).
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `[:tag][@digest]` exactly as it should follow a name.
    pub fn suffix(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        s
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.registry, self.repository, self.suffix())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Distribution's rule for telling `registry/repo` from `user/repo`.
fn looks_like_registry(first: &str) -> bool {
    super::name::looks_like_host(first)
}

/// Checks `host[:port]`, where host is a DNS name, an IPv4 address or a
/// bracketed IPv6 address (the reference form of [`super::name::valid_reference_host`]).
pub fn validate_registry(reg: &str) -> Result<(), ReferenceError> {
    if valid_reference_host(reg) {
        Ok(())
    } else {
        Err(ReferenceError::InvalidRegistry(reg.to_string()))
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
pub fn validate_component(c: &str) -> Result<(), ReferenceError> {
    match check_component(c) {
        Ok(()) => Ok(()),
        Err(ComponentError::Empty) => Err(ReferenceError::EmptyComponent),
        Err(ComponentError::Invalid) => Err(ReferenceError::InvalidComponent(c.to_string())),
    }
}

/// `[\w][\w.-]{0,127}`
pub fn validate_tag(t: &str) -> Result<(), ReferenceError> {
    if valid_tag(t) {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag(t.to_string()))
    }
}

/// `sha256:` + 64 lowercase hex, or `sha512:` + 128 (the one digest grammar, [`Digest`]).
pub fn validate_digest(d: &str) -> Result<(), ReferenceError> {
    match d.parse::<Digest>() {
        Ok(_) => Ok(()),
        Err(_) => Err(ReferenceError::InvalidDigest(d.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> ImageRef {
        match ImageRef::parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn docker_hub_spellings_normalise() {
        for s in [
            "redis",
            "library/redis",
            "docker.io/redis",
            "docker.io/library/redis",
            "index.docker.io/library/redis",
            "registry-1.docker.io/library/redis",
            "registry-1.docker.io/redis",
        ] {
            let r = p(s);
            assert_eq!(r.registry, "docker.io", "{s}");
            assert_eq!(r.repository, "library/redis", "{s}");
            assert!(r.is_docker_hub());
            assert_eq!(r.to_string(), "docker.io/library/redis");
        }
        for s in [
            "docker.io/bitnami/redis",
            "index.docker.io/bitnami/redis",
            "bitnami/redis",
        ] {
            assert_eq!(p(s).repository, "bitnami/redis");
        }
    }

    #[test]
    fn registries_tags_and_digests() {
        let r = p("quay.io/acme/api:1.2");
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.tag.as_deref(),
                r.digest.as_ref().map(Digest::as_str)
            ),
            ("quay.io", "acme/api", Some("1.2"), None)
        );
        assert!(!r.is_docker_hub());
        let r = p("registry.example.com:5000/team/app:1");
        assert_eq!(r.registry, "registry.example.com:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("1"));
        let r = p("localhost/app");
        assert_eq!(r.registry, "localhost");
        let r = p("localhost:5000/a/b/c");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "a/b/c")
        );
        let r = p(&format!("ghcr.io/o/r:v1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(D));
        assert_eq!(r.to_string(), format!("ghcr.io/o/r:v1@{D}"));
        let r = p(&format!("redis@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/redis@{D}"));
        let r = p("[::1]:5000/x/y:z");
        assert_eq!(r.registry, "[::1]:5000");
        let r = p("10.0.0.1:5000/x");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("10.0.0.1:5000", "x")
        );
        // The registry host may hold uppercase (docker's domain-component); the path not.
        let r = p("Quay.io/acme/api");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("Quay.io", "acme/api")
        );
        assert_eq!(p("Docker.IO/redis").to_string(), "docker.io/library/redis");
        // Distribution reads a lone `host:port` as name and tag.
        let r = p("localhost:5000");
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("library/localhost", Some("5000"))
        );
        assert!(p("a__b/c-d---e/f.g_h:Tag_1.x-y").tag.is_some());
        let s512 = format!("sha512:{}", "a".repeat(128));
        assert_eq!(
            p(&format!("x@{s512}")).digest.as_ref().map(Digest::as_str),
            Some(s512.as_str())
        );
    }

    type Check = fn(&ReferenceError) -> bool;

    #[test]
    fn nasty_inputs_are_typed_errors() {
        use ReferenceError::*;
        let cases: Vec<(String, Check)> = vec![
            ("".into(), |e| matches!(e, Empty)),
            (":tag".into(), |e| matches!(e, Empty)),
            ("Redis".into(), |e| matches!(e, InvalidComponent(_))),
            ("acme/API".into(), |e| matches!(e, InvalidComponent(_))),
            ("quay.io/a/../b".into(), |e| {
                matches!(e, InvalidComponent(_))
            }),
            ("a..b".into(), |e| matches!(e, InvalidComponent(_))),
            ("a___b".into(), |e| matches!(e, InvalidComponent(_))),
            ("-a".into(), |e| matches!(e, InvalidComponent(_))),
            ("a-".into(), |e| matches!(e, InvalidComponent(_))),
            ("a//b".into(), |e| matches!(e, EmptyComponent)),
            ("quay.io/".into(), |e| matches!(e, EmptyComponent)),
            ("quay.io/a/".into(), |e| matches!(e, EmptyComponent)),
            ("/a".into(), |e| matches!(e, EmptyComponent)),
            ("a:".into(), |e| matches!(e, InvalidTag(_))),
            ("a:.x".into(), |e| matches!(e, InvalidTag(_))),
            ("a:t!".into(), |e| matches!(e, InvalidTag(_))),
            (format!("a:{}", "t".repeat(129)), |e| {
                matches!(e, InvalidTag(_))
            }),
            ("a@sha256:short".into(), |e| matches!(e, InvalidDigest(_))),
            (format!("a@sha256:{}", "A".repeat(64)), |e| {
                matches!(e, InvalidDigest(_))
            }),
            (format!("a@md5:{}", "a".repeat(32)), |e| {
                matches!(e, InvalidDigest(_))
            }),
            ("a@".into(), |e| matches!(e, InvalidDigest(_))),
            (format!("a@{D}@{D}"), |e| matches!(e, InvalidDigest(_))),
            ("host:port/a".into(), |e| matches!(e, InvalidRegistry(_))),
            ("host:99999999/a".into(), |e| {
                matches!(e, InvalidRegistry(_))
            }),
            ("-bad.io/a".into(), |e| matches!(e, InvalidRegistry(_))),
            ("bad..io/a".into(), |e| matches!(e, InvalidRegistry(_))),
            ("[zz::1]/a".into(), |e| matches!(e, InvalidRegistry(_))),
            ("[::1/a".into(), |e| {
                matches!(e, InvalidRegistry(_) | InvalidTag(_))
            }),
            ("[::1]x/a".into(), |e| matches!(e, InvalidRegistry(_))),
            ("[]/a".into(), |e| matches!(e, InvalidRegistry(_))),
            ("::::/a".into(), |e| matches!(e, InvalidRegistry(_))),
            ("a b".into(), |e| matches!(e, InvalidComponent(_))),
            ("é/a".into(), |e| matches!(e, InvalidComponent(_))),
            (format!("quay.io/{}", "a".repeat(300)), |e| {
                matches!(e, NameTooLong(_))
            }),
            (format!("{}:tag", "a/".repeat(150)), |e| {
                matches!(e, NameTooLong(_))
            }),
        ];
        for (input, ok) in cases {
            match ImageRef::parse(&input) {
                Ok(r) => panic!("{input:?} parsed as {r:?}"),
                Err(e) => assert!(ok(&e), "{input:?} gave {e:?}"),
            }
        }
    }

    #[test]
    fn never_panics_on_byte_soup() {
        // A tiny LCG over a hostile alphabet: the parser slices strings, so this is
        // mostly a guard against char-boundary and index mistakes.
        let alphabet: Vec<char> = "aZ9._-/:@[]é ﬁsha256".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 58) as usize;
            let s: String = (0..len)
                .map(|i| {
                    let x = seed.rotate_left(i as u32 * 7) as usize;
                    alphabet[x % alphabet.len()]
                })
                .collect();
            if let Ok(r) = ImageRef::parse(&s) {
                // What parses must round-trip through its canonical form.
                assert_eq!(ImageRef::parse(&r.to_string()), Ok(r), "{s:?}");
            }
        }
    }
}
