//! `/api/v1/apps` and `/api/v1/upstreams`: what the config file serves (read-only here),
//! and `POST /api/v1/upstreams/{name}/test`, the checks `berth upstream test` runs. No
//! answer carries an upstream credential: only which kind of credential is configured.

use serde::{Deserialize, Serialize};

use super::problem::{Kind, Problem};
use super::{ok, Call, Reply};
use crate::control::Page;
use crate::tenancy::{Upstream, UpstreamAuth};
use crate::upstream::probe::{self, Outcome};

#[derive(Debug, Serialize)]
struct AppView {
    slug: String,
    /// The names of the app's upstreams, in the app's order.
    upstreams: Vec<String>,
    /// The upstream images the app lists for airgap bundles.
    images: Vec<String>,
    hosted: HostedView,
}

/// The app's hosted registry: its policy and what it holds now.
#[derive(Debug, Serialize)]
struct HostedView {
    /// `apps[].hosted.quota` in bytes, if set.
    quota_bytes: Option<u64>,
    /// Bytes the app's pushed content takes (each blob once).
    used_bytes: u64,
    immutable_tags: Vec<String>,
}

#[derive(Debug, Serialize)]
struct UpstreamView {
    name: String,
    kind: &'static str,
    url: String,
    host: String,
    repositories: Vec<String>,
    /// `none`, `static`, `gcp_service_account` or `ecr`: never the credential.
    credentials: &'static str,
}

impl UpstreamView {
    fn of(u: &Upstream) -> UpstreamView {
        UpstreamView {
            name: u.name.clone(),
            kind: u.kind.as_str(),
            url: u.base_url.clone(),
            host: u.host.clone(),
            repositories: u
                .repositories
                .iter()
                .map(|g| g.as_str().to_string())
                .collect(),
            credentials: match u.auth {
                UpstreamAuth::Anonymous => "none",
                UpstreamAuth::Static(_) => "static",
                UpstreamAuth::GcpServiceAccount(_) => "gcp_service_account",
                UpstreamAuth::Ecr(_) => "ecr",
                UpstreamAuth::GcpToken(_) => "gcp_token",
                UpstreamAuth::AzureManagedIdentity(_) => "azure_managed_identity",
            },
        }
    }
}

pub(super) async fn apps(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&["after", "limit"])?;
    let mut all: Vec<AppView> = Vec::new();
    for a in c.config.tenants.apps() {
        let used_bytes = c.control().store.app_bytes(&a.slug).await.map_err(|e| {
            tracing::error!(error = %e, "admin API: the state store failed");
            Problem::new(Kind::Unavailable, "the state store cannot be read")
        })?;
        all.push(AppView {
            slug: a.slug.clone(),
            upstreams: a.upstreams.iter().map(|u| u.name.clone()).collect(),
            images: a.images.clone(),
            hosted: HostedView {
                quota_bytes: a.hosted.quota,
                used_bytes,
                immutable_tags: a
                    .hosted
                    .immutable_tags
                    .iter()
                    .map(|g| g.as_str().to_string())
                    .collect(),
            },
        });
    }
    all.sort_by(|a, b| a.slug.cmp(&b.slug));
    let limit = c.query.limit()?;
    ok(&Page::of(
        all,
        c.query.get("after").as_deref(),
        limit,
        |a| a.slug.clone(),
    ))
}

pub(super) fn upstreams(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&["after", "limit"])?;
    let mut all: Vec<UpstreamView> = c
        .config
        .tenants
        .upstreams()
        .iter()
        .map(|u| UpstreamView::of(u))
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let limit = c.query.limit()?;
    ok(&Page::of(
        all,
        c.query.get("after").as_deref(),
        limit,
        |u| u.name.clone(),
    ))
}

/// `POST /api/v1/upstreams/{name}/test`'s optional body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    /// Also HEAD this manifest: `REPO:TAG` or `REPO@DIGEST`, as named on the upstream.
    #[serde(default)]
    image: Option<String>,
}

#[derive(Debug, Serialize)]
struct ProbeReport {
    upstream: String,
    kind: &'static str,
    url: String,
    /// No step failed.
    ok: bool,
    steps: Vec<ProbeStep>,
}

#[derive(Debug, Serialize)]
struct ProbeStep {
    /// `url`, `dns`, `connect`, `tls`, `ecr token`, `auth`, `allow-list`, `manifest`.
    step: &'static str,
    /// `ok`, `failed` or `skipped`.
    outcome: &'static str,
    detail: String,
}

pub(super) async fn test_upstream(c: &Call<'_>) -> Result<Reply, Problem> {
    c.query.only(&[])?;
    let req: TestRequest = match &c.body {
        Some(_) => c.json()?,
        None => TestRequest::default(),
    };
    let image = req
        .image
        .as_deref()
        .map(probe::parse_image)
        .transpose()
        .map_err(|e| Problem::new(Kind::Invalid, format!("image: {e}")).with_field("image"))?;
    let name = c.param();
    let Some(up) = c
        .config
        .tenants
        .upstreams()
        .iter()
        .find(|u| u.name == name)
        .cloned()
    else {
        return Err(Problem::new(
            Kind::NotFound,
            format!("upstream {name:?} not found"),
        ));
    };
    let image = image.as_ref().map(|(r, t)| (r.as_str(), t.as_str()));
    let steps = probe::probe(&c.admin.probes.upstream, &up, image).await;
    ok(&ProbeReport {
        upstream: up.name.clone(),
        kind: up.kind.as_str(),
        url: up.base_url.clone(),
        ok: !steps.iter().any(|s| s.outcome == Outcome::Failed),
        steps: steps
            .into_iter()
            .map(|s| ProbeStep {
                step: s.what,
                outcome: match s.outcome {
                    Outcome::Ok => "ok",
                    Outcome::Failed => "failed",
                    Outcome::Skipped => "skipped",
                },
                detail: s.detail,
            })
            .collect(),
    })
}
