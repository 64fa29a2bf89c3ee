//! `POST /api/v1/gc`: one garbage collection of the hosted registry run by the server
//! itself (its memory of what is stored stays exact, which `berth gc` from another process
//! cannot update), with `berth gc`'s options as query parameters; the report is the answer
//! and goes into the audit trail.

use super::problem::{Kind, Problem};
use super::{ok, Call, Reply};
use crate::error::Error;
use crate::hosted::gc::{Options, Untagged};

fn flag(c: &Call<'_>, name: &str) -> Result<bool, Problem> {
    match c.query.get(name).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(Problem::bad_parameter(
            name,
            format!("{v:?}: use true or false"),
        )),
    }
}

pub(super) async fn run(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query
        .only(&["app", "dry_run", "grace", "delete_untagged"])?;
    let mut opts = Options::from_config(&c.config.hosted.gc);
    if let Some(app) = c.query.get("app") {
        if c.config.app(&app).is_none() {
            return Err(Problem::bad_parameter(
                "app",
                format!("unknown app {app:?}"),
            ));
        }
        opts.app = Some(app);
    }
    opts.dry_run = flag(c, "dry_run")?;
    if flag(c, "delete_untagged")? {
        opts.untagged = Untagged::Delete;
    }
    if let Some(g) = c.query.get("grace") {
        opts.grace = crate::settings::parse_duration("grace", &g)
            .map_err(|e| Problem::bad_parameter("grace", e))?;
    }
    let report = c.admin.hosted.collect(&opts).await.map_err(|e| match e {
        Error::Unavailable(m) => Problem::new(Kind::Unavailable, m),
        e => {
            tracing::error!(error = %e, "admin API: garbage collection failed");
            Problem::new(
                Kind::Internal,
                "garbage collection failed; the server's log says why",
            )
        }
    })?;
    if !report.dry_run {
        let detail = serde_json::json!({
            "app": opts.app,
            "manifests": report.manifests.len(),
            "blob_links": report.blob_links,
            "blobs_freed": report.blobs_freed,
            "bytes_freed": report.bytes_freed,
        });
        c.control()
            .audit(
                &c.actor,
                "hosted.gc",
                opts.app.as_deref().unwrap_or("*"),
                detail,
            )
            .await?;
    }
    ok(&report)
}
