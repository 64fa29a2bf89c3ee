//! Repository names: the distribution grammar for path components, and the limits berth
//! puts on them before a name reaches an upstream or the disk.

/// Longest repository name accepted, as in distribution's reference grammar.
pub const MAX_NAME_LEN: usize = 255;

/// One path component: `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`.
pub fn valid_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
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
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A repository path of one or more components separated by `/`.
pub fn valid_repository(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('/').all(valid_component)
}

/// A registry host as it appears in references: a lowercase DNS name or IPv4 address,
/// optionally with `:port`.
pub fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
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
            "", "A", ".a", "a.", "a..b", "a___b", "-a", "a-", "a/b", "..", "a b", "a:b",
        ] {
            assert!(!valid_component(bad), "{bad}");
        }
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
}
