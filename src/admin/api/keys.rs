//! `/api/v1/apikeys` and `/api/v1/admin-tokens`: the vendor's credentials (API keys for
//! CI, admin tokens for this API), created with their secret shown once, listed, revoked.

use super::problem::Problem;
use super::{created, ok, Call, Reply};
use crate::control::{KeyFilter, NewAdminToken, NewKey, Page};

pub(super) async fn list(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&["app", "state", "after", "limit"])?;
    let filter = KeyFilter {
        app: c.query.get("app"),
        state: c.query.state()?,
        after: c.query.get("after"),
        limit: c.query.limit()?,
    };
    ok(&c.control().list_keys(&filter).await?)
}

pub(super) async fn create(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    let req: NewKey = c.json()?;
    created(&c.control().create_key(&c.config, &c.actor, req).await?)
}

pub(super) async fn get(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    ok(&c.control().key(c.param()).await?)
}

/// `POST …/revoke` and `DELETE`: a key is never deleted, only revoked (the audit trail and
/// usage keep naming it).
pub(super) async fn revoke(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    ok(&c.control().revoke_key(&c.actor, c.param()).await?)
}

/// Every admin token on one page (there are few): the stored ones and the config file's.
pub(super) async fn list_admin_tokens(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    let items = c.control().list_admin_tokens(&c.config).await?;
    ok(&Page { items, next: None })
}

pub(super) async fn create_admin_token(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    let req: NewAdminToken = c.json()?;
    created(&c.control().create_admin_token(&c.actor, &req.name).await?)
}

pub(super) async fn revoke_admin_token(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    ok(&c.control().revoke_admin_token(&c.actor, c.param()).await?)
}
