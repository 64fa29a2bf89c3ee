//! Customer authentication and entitlements: who is asking (a license, from HTTP Basic
//! today; berth-issued bearer tokens plug in here) and what that license may pull.

use std::time::SystemTime;

use base64::Engine as _;

use crate::config::{Config, License};
use crate::error::Error;

/// Why a request was not authenticated; logged for operators, never sent to clients
/// beyond a plain 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Malformed,
    Unknown,
    Expired,
    Revoked,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "no credentials",
            Rejection::Malformed => "malformed credentials",
            Rejection::Unknown => "unknown license",
            Rejection::Expired => "license expired",
            Rejection::Revoked => "license revoked",
        }
    }
}

/// Checks an `Authorization` header value: Basic with username = password = license id.
pub fn authenticate<'c>(
    config: &'c Config,
    authorization: Option<&str>,
    now: SystemTime,
) -> Result<&'c License, Rejection> {
    let value = authorization.ok_or(Rejection::Missing)?;
    let (scheme, rest) = value.split_once(' ').ok_or(Rejection::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Rejection::Malformed);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| Rejection::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| Rejection::Malformed)?;
    let (user, password) = decoded.split_once(':').ok_or(Rejection::Malformed)?;
    let license = config.license(user).ok_or(Rejection::Unknown)?;
    if !constant_time_eq(user.as_bytes(), password.as_bytes()) {
        return Err(Rejection::Unknown);
    }
    if license.revoked {
        return Err(Rejection::Revoked);
    }
    if !license.is_active(now) {
        return Err(Rejection::Expired);
    }
    Ok(license)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A license may pull only its own app's repositories.
pub fn authorize(license: &License, app: &str) -> Result<(), Error> {
    if license.app == app {
        Ok(())
    } else {
        Err(Error::Denied(format!(
            "this license is not entitled to app {app:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            r#"
server: { listen: "127.0.0.1:0", hostname: images.acme.test }
cache: { dir: /tmp/x }
upstreams: [ { name: u, url: "http://127.0.0.1:1" } ]
apps: [ { slug: acme, upstreams: [u] }, { slug: other, upstreams: [u] } ]
licenses:
  - { id: good-license-1, app: acme, customer: A }
  - { id: old-license-1, app: acme, customer: B, expires: "2020-01-01T00:00:00Z" }
  - { id: gone-license-1, app: acme, customer: C, revoked: true }
"#,
            Path::new("/"),
            &|_| None,
        )
        .unwrap()
    }

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    #[test]
    fn basic_license_login() {
        let c = config();
        let now = SystemTime::now();
        let h = basic("good-license-1", "good-license-1");
        assert_eq!(authenticate(&c, Some(&h), now).unwrap().customer, "A");
        let cases = [
            (None, Rejection::Missing),
            (Some("Bearer x".to_string()), Rejection::Malformed),
            (Some("Basic !!!".to_string()), Rejection::Malformed),
            (Some(basic("good-license-1", "wrong")), Rejection::Unknown),
            (
                Some(basic("nobody-at-all", "nobody-at-all")),
                Rejection::Unknown,
            ),
            (
                Some(basic("old-license-1", "old-license-1")),
                Rejection::Expired,
            ),
            (
                Some(basic("gone-license-1", "gone-license-1")),
                Rejection::Revoked,
            ),
        ];
        for (h, want) in cases {
            assert_eq!(
                authenticate(&c, h.as_deref(), now).unwrap_err(),
                want,
                "{h:?}"
            );
        }
    }

    #[test]
    fn other_apps_are_denied() {
        let c = config();
        let l = c.license("good-license-1").unwrap();
        assert!(authorize(l, "acme").is_ok());
        assert!(matches!(authorize(l, "other"), Err(Error::Denied(_))));
    }
}
