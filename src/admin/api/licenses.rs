//! `/api/v1/licenses`: list, create, show, extend (PATCH), revoke, rotate.

use super::problem::{Kind, Problem};
use super::{created, decode, ok, Call, Reply};
use crate::control::{LicenseFilter, LicensePatch, NewLicense};

pub(super) async fn list(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&["app", "state", "after", "limit"])?;
    let filter = LicenseFilter {
        app: c.query.get("app"),
        state: c.query.state()?,
        after: c.query.get("after"),
        limit: c.query.limit()?,
    };
    ok(&c.control().list_licenses(&c.config, &filter).await?)
}

pub(super) async fn create(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    let req: NewLicense = c.json()?;
    created(&c.control().create_license(&c.config, &c.actor, req).await?)
}

pub(super) async fn get(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    ok(&c.control().license(&c.config, c.param()).await?)
}

/// Sets the expiry. `expires` must be given: `null` removes the expiry, so leaving it out
/// by mistake must not make a license eternal.
pub(super) async fn patch(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    let patch: LicensePatch = c.json()?;
    let raw: serde_json::Value = c
        .body
        .as_deref()
        .map(decode)
        .transpose()?
        .unwrap_or_default();
    if raw.get("expires").is_none() {
        return Err(Problem::new(
            Kind::Invalid,
            "expires: required: a date, an RFC 3339 time, a duration, or null for none",
        )
        .with_field("expires"));
    }
    let view = c
        .control()
        .extend_license(&c.config, &c.actor, c.param(), patch.expires.as_deref())
        .await?;
    ok(&view)
}

pub(super) async fn revoke(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    ok(&c
        .control()
        .revoke_license(&c.config, &c.actor, c.param())
        .await?)
}

pub(super) async fn rotate(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    ok(&c
        .control()
        .rotate_license(&c.config, &c.actor, c.param())
        .await?)
}
