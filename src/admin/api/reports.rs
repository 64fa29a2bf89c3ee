//! `/api/v1/usage` (pulls and bytes per license or key) and `/api/v1/audit` (who changed
//! what, when).

use std::time::SystemTime;

use super::problem::Problem;
use super::{ok, Call, Reply};
use crate::control::usage::UsageFilter;

pub(super) async fn usage(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&["license", "app", "since"])?;
    let since = match c.query.get("since") {
        Some(s) => Some(parse_since(&s, SystemTime::now())?),
        None => None,
    };
    let filter = UsageFilter {
        license: c.query.get("license"),
        app: c.query.get("app"),
        since,
    };
    ok(&c.control().usage(&c.config, &filter).await?)
}

/// `since`: a duration back from now (`30d`, `12h`), a date (`2026-11-01`, from its UTC
/// midnight) or an RFC 3339 time.
fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, Problem> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        return now
            .checked_sub(d)
            .ok_or_else(|| Problem::bad_parameter("since", format!("{s:?} reaches before 1970")));
    }
    let date_only = s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-';
    let time = if date_only {
        humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
    } else {
        humantime::parse_rfc3339_weak(s)
    };
    time.map_err(|_| {
        Problem::bad_parameter(
            "since",
            format!("{s:?} is not a duration (30d), a date (2026-11-01) or an RFC 3339 time"),
        )
    })
}

pub(super) async fn audit(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&["after", "limit"])?;
    let after = match c.query.get("after") {
        None => 0,
        Some(a) => a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Problem::bad_parameter("after", format!("{a:?} is not a sequence number"))
        })?,
    };
    ok(&c.control().audit_trail(after, c.query.limit()?).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_as_operators_write_it() {
        let now = humantime::parse_rfc3339("2026-12-01T10:00:00Z").unwrap();
        let at = |s| humantime::format_rfc3339_seconds(parse_since(s, now).unwrap()).to_string();
        assert_eq!(at("30d"), "2026-11-01T10:00:00Z");
        assert_eq!(at("2026-11-15"), "2026-11-15T00:00:00Z");
        assert_eq!(at("2026-11-15T08:30:00Z"), "2026-11-15T08:30:00Z");
        for bad in ["soon", "2026-13-01", "-5d"] {
            let p = parse_since(bad, now).unwrap_err();
            assert_eq!(p.field.as_deref(), Some("since"), "{bad}");
        }
    }
}
