//! Repository names, one grammar: path components, tags, registry hosts (`host[:port]`) and
//! Docker Hub's names, with the limits berth puts on them before a name reaches an upstream
//! or the disk. `reference` (image references) and `repo` (berth's own repository paths)
//! are both built on these functions; nothing else spells the grammar.
//!
//! Hosts come in two forms, and the difference is deliberate:
//! - in an image reference (`Quay.io/acme/api:1`) the docker/distribution `reference`
//!   grammar applies: `domain-component := [a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`,
//!   so a host may hold uppercase letters (DNS is case-insensitive), and a bracketed IPv6
//!   address is allowed ([`valid_reference_host`]);
//! - inside a repository *name* (berth's `/v2/proxy/<app>/<host>/<repository>`, and the
//!   hosts configured for upstreams, which are matched against it) the host is a path
//!   component of an OCI distribution name, whose grammar is lowercase only; berth keeps
//!   DNS lengths there and no IPv6 ([`valid_host`]).
//!
//! Path components are lowercase in both.

/// Longest repository name accepted (registry plus repository), as in distribution's
/// reference grammar.
pub const NAME_MAX: usize = 255;

/// Longest tag, as in distribution.
pub const TAG_MAX: usize = 128;

/// The canonical registry name for Docker Hub (what `redis` expands to).
pub const DOCKER_HUB: &str = "docker.io";

/// Host names that all mean Docker Hub when they start a reference.
pub const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Whether `host` (as written in a reference or a config) names Docker Hub, in any case.
pub fn is_docker_hub_host(host: &str) -> bool {
    DOCKER_HUB_ALIASES
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host))
}

/// The repository Docker Hub knows a path by: official images live under `library/`, but
/// references spell them `redis`.
pub fn docker_hub_repository(path: &str) -> std::borrow::Cow<'_, str> {
    if path.contains('/') {
        std::borrow::Cow::Borrowed(path)
    } else {
        std::borrow::Cow::Owned(format!("library/{path}"))
    }
}

/// Distribution's rule for telling `registry/repo` from `user/repo`: the first component
/// of a name is a registry host when it has a dot or a port, or is `localhost`.
pub fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[')
}

/// Why a string is not a path component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentError {
    Empty,
    Invalid,
}

/// One path component: `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`.
pub fn check_component(s: &str) -> Result<(), ComponentError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(ComponentError::Empty);
    }
    if !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return Err(ComponentError::Invalid);
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", always between alnums.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return Err(ComponentError::Invalid),
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return Err(ComponentError::Invalid);
        }
    }
    Ok(())
}

/// One path component (see [`check_component`]).
pub fn valid_component(s: &str) -> bool {
    check_component(s).is_ok()
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A repository path of one or more components separated by `/`.
pub fn valid_repository(s: &str) -> bool {
    !s.is_empty() && s.len() <= NAME_MAX && s.split('/').all(valid_component)
}

/// Which spelling of a host is being checked (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostForm {
    /// In an image reference: any case, IPv6 in brackets, no length limits.
    Reference,
    /// Inside a repository name or a config: lowercase DNS name or IPv4, DNS lengths.
    Name,
}

/// A registry host as it appears inside a repository name and in the config: a lowercase
/// DNS name or IPv4 address, optionally with `:port`.
pub fn valid_host(h: &str) -> bool {
    check_host(h, HostForm::Name)
}

/// A registry host as it starts an image reference: a DNS name (any case), an IPv4
/// address or a bracketed IPv6 address, optionally with `:port`.
pub fn valid_reference_host(h: &str) -> bool {
    check_host(h, HostForm::Reference)
}

/// A host of a repository name in either spelling berth accepts: `host[:port]`, or
/// `host_port` (the rewriter's spelling, since a colon cannot appear in a repository path).
pub fn valid_host_in_path(h: &str) -> bool {
    valid_host(h)
        || h.rsplit_once('_')
            .is_some_and(|(n, p)| valid_host(&format!("{n}:{p}")))
}

/// The `host[:port]` rules, in one place.
fn check_host(h: &str, form: HostForm) -> bool {
    let (name, port) = match h.strip_prefix('[') {
        Some(rest) if form == HostForm::Reference => {
            let Some((inside, after)) = rest.split_once(']') else {
                return false;
            };
            let ipv6 = inside.matches(':').count() >= 2
                && inside
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
            if !ipv6 {
                return false;
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return false,
                },
            };
            (None, port)
        }
        _ => match h.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(h), None),
        },
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    let Some(name) = name else {
        return true;
    };
    let label_char = |b: u8| match form {
        HostForm::Reference => b.is_ascii_alphanumeric() || b == b'-',
        HostForm::Name => b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
    };
    let dns_lengths = form == HostForm::Name;
    !name.is_empty()
        && (!dns_lengths || name.len() <= 253)
        && name.split('.').all(|label| {
            !label.is_empty()
                && (!dns_lengths || label.len() <= 63)
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(label_char)
        })
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        for ok in [
            "a", "api", "a.b", "a_b", "a__b", "a--b", "a-b-c", "0x", "v1.2",
        ] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in [
            "", "A", ".a", "a.", "a..b", "a___b", "-a", "a-", "a/b", "..", "a b", "a:b", "a._b",
        ] {
            assert!(!valid_component(bad), "{bad}");
        }
        assert_eq!(check_component(""), Err(ComponentError::Empty));
        assert_eq!(check_component("A"), Err(ComponentError::Invalid));
    }

    #[test]
    fn repositories_and_tags() {
        assert!(valid_repository("acme/api"));
        assert!(!valid_repository("acme//api"));
        assert!(!valid_repository("acme/../api"));
        assert!(!valid_repository(&"a/".repeat(200)));
        assert!(valid_tag("1.2"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag(".x"));
        assert!(!valid_tag(&"x".repeat(129)));
        assert!(!valid_tag("a/b"));
        assert!(valid_host("quay.io"));
        assert!(valid_host("localhost:5000"));
        assert!(!valid_host("Quay.io"));
        assert!(!valid_host("a..b"));
        assert!(!valid_host("a:"));
        assert!(!valid_host("a:123456"));
    }

    #[test]
    fn the_two_host_forms() {
        // Uppercase and IPv6 belong to references only; DNS lengths to names only.
        for h in [
            "Quay.io",
            "[::1]",
            "[::1]:5000",
            &format!("{}.io", "a".repeat(64)),
        ] {
            assert!(valid_reference_host(h), "{h}");
            assert!(!valid_host(h), "{h}");
        }
        for h in ["quay.io", "localhost:5000", "10.0.0.1:5000", "a-b.c"] {
            assert!(valid_reference_host(h) && valid_host(h), "{h}");
        }
        for h in [
            "", "a:", "a:b", "a:1:2", "-a.io", "a-.io", "a..io", "[zz::1]", "[::1", "[::1]x", "[]",
            "::::", "a_b",
        ] {
            assert!(!valid_reference_host(h) && !valid_host(h), "{h}");
        }
        assert!(valid_host_in_path("reg.example_5000"));
        assert!(valid_host_in_path("localhost:5000"));
        assert!(!valid_host_in_path("reg_example"));
    }

    #[test]
    fn docker_hub_names() {
        assert!(is_docker_hub_host("docker.io"));
        assert!(is_docker_hub_host("Index.Docker.IO"));
        assert!(is_docker_hub_host("registry-1.docker.io"));
        assert!(!is_docker_hub_host("quay.io"));
        assert_eq!(docker_hub_repository("redis"), "library/redis");
        assert_eq!(docker_hub_repository("bitnami/redis"), "bitnami/redis");
    }
}
