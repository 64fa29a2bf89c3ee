//! The JSON the control plane speaks — requests, answers, pages — shared by the admin HTTP
//! API, its OpenAPI document and `berth … --json`. Field names are a stable contract:
//! add fields, never rename them. Secrets appear only in the `Created*` answers.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::rfc3339;
use crate::config::Config;
use crate::state::{AdminTokenRow, AuditEntry, KeyRow};
use crate::tenancy::{License, Origin};

/// `POST /api/v1/licenses`, `berth license create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLicense {
    pub app: String,
    pub customer: String,
    /// A date (valid through that day, UTC), an RFC 3339 time, or a duration (`90d`).
    #[serde(default)]
    pub expires: Option<String>,
    /// Globs over `host/repository` narrowing the app's images.
    #[serde(default)]
    pub images: Vec<String>,
}

/// `PATCH /api/v1/licenses/{id}`, `berth license extend`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicensePatch {
    /// The new expiry; `null` for none.
    pub expires: Option<String>,
}

/// `POST /api/v1/apikeys`, `berth apikey create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    pub apps: Vec<String>,
    pub actions: Vec<String>,
    #[serde(default)]
    pub expires: Option<String>,
}

/// `POST /api/v1/admin-tokens`, `berth admin-token create`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAdminToken {
    pub name: String,
}

/// A license as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LicenseView {
    pub id: String,
    pub app: String,
    pub customer: String,
    pub images: Vec<String>,
    pub expires: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// `store` (managed here) or `config` (read-only, from the config file).
    pub origin: String,
    pub created: Option<String>,
    pub last_pull: Option<String>,
}

impl LicenseView {
    pub fn of(
        l: &License,
        created: Option<SystemTime>,
        last_pull: Option<SystemTime>,
        now: SystemTime,
    ) -> LicenseView {
        LicenseView {
            id: l.id.clone(),
            app: l.app.clone(),
            customer: l.customer.clone(),
            images: l.images.iter().map(|g| g.as_str().to_string()).collect(),
            expires: l.expires.map(rfc3339),
            state: l.state(now).as_str().into(),
            origin: l.origin.as_str().into(),
            created: created.map(rfc3339),
            last_pull: last_pull.map(rfc3339),
        }
    }
}

/// A new (or rotated) license: the only answer that carries its secret, with what to send
/// the customer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedLicense {
    #[serde(flatten)]
    pub license: LicenseView,
    /// The customer's password. Shown once; berth keeps only a hash.
    pub secret: String,
    /// The line the customer runs.
    pub docker_login: String,
    /// A Kubernetes `kubernetes.io/dockerconfigjson` Secret for the customer's cluster.
    pub pull_secret: String,
}

impl CreatedLicense {
    pub fn new(license: LicenseView, secret: &str, config: &Config) -> CreatedLicense {
        let host = &config.server.hostname;
        CreatedLicense {
            docker_login: format!("docker login {host} -u {} -p {secret}", license.id),
            pull_secret: crate::rewrite::pull_secret_yaml(
                "berth-pull-secret",
                None,
                host,
                &license.id,
                secret,
            ),
            secret: secret.to_string(),
            license,
        }
    }
}

/// An API key as listed: never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub apps: Vec<String>,
    pub actions: Vec<String>,
    pub expires: Option<String>,
    pub state: String,
    pub created: Option<String>,
    pub last_used: Option<String>,
}

impl KeyView {
    pub fn of(row: &KeyRow, now: SystemTime) -> KeyView {
        let k = &row.key;
        KeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            apps: k.apps.clone(),
            actions: k.actions.iter().map(|a| a.as_str().to_string()).collect(),
            expires: k.expires.map(rfc3339),
            state: k.state(now).as_str().into(),
            created: Some(rfc3339(row.created)),
            last_used: row.last_used.map(rfc3339),
        }
    }
}

/// A new API key: the only answer that carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub view: KeyView,
    /// `berth_key_…`: the password of `docker login -u api`. Shown once.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminTokenView {
    pub id: String,
    pub name: String,
    pub state: String,
    pub origin: String,
    pub created: Option<String>,
}

impl AdminTokenView {
    pub fn of(t: &AdminTokenRow) -> AdminTokenView {
        AdminTokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            state: if t.revoked { "revoked" } else { "active" }.into(),
            origin: Origin::Store.as_str().into(),
            created: Some(rfc3339(t.created)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedAdminToken {
    #[serde(flatten)]
    pub view: AdminTokenView,
    /// `berth_adm_…`, for `Authorization: Bearer`. Shown once.
    pub token: String,
}

/// One admin audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    pub seq: i64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

impl AuditView {
    pub fn of(e: &AuditEntry) -> AuditView {
        AuditView {
            seq: e.seq,
            time: humantime::format_rfc3339_millis(e.time).to_string(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Which licenses or API keys to list: by app and state, a page (`limit`) after a cursor.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListFilter {
    pub app: Option<String>,
    pub state: Option<String>,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// Which licenses to list.
pub type LicenseFilter = ListFilter;
/// Which API keys to list.
pub type KeyFilter = ListFilter;

/// One page of a listing; `next` is the `after` of the following page, `null` on the last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The page of `sorted` (by `key`) after `after`, at most `limit` (default 100).
    pub fn of(
        sorted: Vec<T>,
        after: Option<&str>,
        limit: Option<usize>,
        key: impl Fn(&T) -> String,
    ) -> Page<T> {
        let limit = limit.unwrap_or(100).clamp(1, super::MAX_PAGE);
        let mut items: Vec<T> = sorted
            .into_iter()
            .filter(|v| after.is_none_or(|a| key(v).as_str() > a))
            .take(limit + 1)
            .collect();
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(&key)
        } else {
            None
        };
        Page { items, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_on_from_next() {
        let all: Vec<String> = (0..7).map(|i| format!("id{i}")).collect();
        let p1 = Page::of(all.clone(), None, Some(3), |s| s.clone());
        assert_eq!(p1.items, ["id0", "id1", "id2"]);
        let p2 = Page::of(all.clone(), p1.next.as_deref(), Some(3), |s| s.clone());
        assert_eq!(p2.items, ["id3", "id4", "id5"]);
        let p3 = Page::of(all, p2.next.as_deref(), Some(3), |s| s.clone());
        assert_eq!(p3.items, ["id6"]);
        assert_eq!(p3.next, None);
    }
}
