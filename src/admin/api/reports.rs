//! `/api/v1/usage` (pulls and bytes per license or key) and `/api/v1/audit` (who changed
//! what, when).

use std::time::SystemTime;

use super::problem::Problem;
use super::{ok, Call, Reply};
use crate::control::usage::UsageFilter;

pub(super) async fn usage(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&["license", "app", "since"])?;
    let since = match c.query.get("since") {
        // A bad query parameter is a bad request (400), not an invalid resource (422).
        Some(s) => Some(
            crate::control::parse_since("since", &s, SystemTime::now()).map_err(|e| match e {
                crate::control::ControlError::Invalid { field, message } => {
                    Problem::bad_parameter(&field, message)
                }
                e => e.into(),
            })?,
        ),
        None => None,
    };
    let filter = UsageFilter {
        license: c.query.get("license"),
        app: c.query.get("app"),
        since,
    };
    ok(&c.control().usage(&c.config, &filter).await?)
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
