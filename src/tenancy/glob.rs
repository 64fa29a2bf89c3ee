//! Repository allow-list globs (`acme/*`, `acme/api-?`): `*` matches within one path
//! component, `**` across components, `?` one character.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        if pattern.starts_with('/') || pattern.ends_with('/') || pattern.contains("//") {
            return Err(format!("pattern {pattern:?} has an empty path component"));
        }
        Ok(Glob {
            pattern: pattern.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Characters before the first wildcard: a longer literal prefix is a more specific
    /// match when two upstreams claim the same repository.
    pub fn literal_len(&self) -> usize {
        self.pattern.find(['*', '?']).unwrap_or(self.pattern.len())
    }

    pub fn matches(&self, name: &str) -> bool {
        matches(self.pattern.as_bytes(), name.as_bytes())
    }
}

fn matches(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking per star kind; inputs are at most
    // 255 bytes, so the worst case stays small.
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => {
            if p.get(1) == Some(&b'*') {
                let rest = &p[2..];
                (0..=s.len()).any(|i| matches(rest, &s[i..]))
            } else {
                let rest = &p[1..];
                let mut i = 0;
                loop {
                    if matches(rest, &s[i..]) {
                        return true;
                    }
                    if i == s.len() || s[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
        }
        Some(b'?') => !s.is_empty() && s[0] != b'/' && matches(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && matches(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn star_stays_in_one_component() {
        assert!(g("acme/*").matches("acme/api"));
        assert!(!g("acme/*").matches("acme/team/api"));
        assert!(!g("acme/*").matches("acmex/api"));
        assert!(g("acme/**").matches("acme/team/api"));
        assert!(g("acme/api*").matches("acme/api-server"));
        assert!(g("acme/ap?").matches("acme/api"));
        assert!(!g("acme/ap?").matches("acme/ap"));
        assert!(g("*").matches("redis"));
        assert!(!g("*").matches("library/redis"));
    }

    #[test]
    fn literal_prefix_length() {
        assert_eq!(g("acme/*").literal_len(), 5);
        assert_eq!(g("acme/api").literal_len(), 8);
        assert_eq!(g("**").literal_len(), 0);
    }

    #[test]
    fn rejects_empty_components() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("acme//x").is_err());
        assert!(Glob::new("/acme").is_err());
    }
}
