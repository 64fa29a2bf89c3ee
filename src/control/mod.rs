//! The control plane's operations — create, list, extend, revoke and rotate licenses; create,
//! list and revoke API keys and admin tokens; the admin audit trail; usage reports — with
//! their validation, the secrets they hand out (once), and one audit record per change.
//! The admin HTTP API (`admin::api`) and the local command line (`cli`) both call this; the
//! JSON shapes here (`views`) are the contract both print.

pub mod metrics;
pub mod usage;
pub mod views;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::state::{
    generate, AdminTokenRow, AuditEntry, KeyRow, LicenseChange, LicenseRow, StateError, Store,
};
use crate::tenancy::{Action, ApiKey, Glob, License, Origin, State};
pub use views::*;

/// Why an operation was refused. The admin API maps each to a status, the CLI to an exit
/// code; messages name the field at fault and never carry a secret.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Licenses from the config file are changed by editing the file.
    #[error("{0} comes from the config file: change it there")]
    ReadOnly(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    State(StateError),
}

impl From<StateError> for ControlError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Conflict(what) => ControlError::Conflict(format!("{what} already exists")),
            e => ControlError::State(e),
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ControlError {
    ControlError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Who made a change, for the audit trail: an admin token's name, or the local user.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    /// The person at a terminal running the command line on the store directly.
    pub fn local() -> Actor {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Actor(format!("cli:{user}"))
    }
}

/// The control plane over one store.
#[derive(Debug, Clone)]
pub struct Control {
    pub store: Arc<dyn Store>,
}

/// At most this many items per page.
pub const MAX_PAGE: usize = 500;

impl Control {
    pub fn new(store: Arc<dyn Store>) -> Control {
        Control { store }
    }

    /// Appends to the audit trail (for operations outside the control plane's own, such
    /// as a garbage collection started through the admin API).
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), ControlError> {
        self.store
            .append_audit(&AuditEntry {
                seq: 0,
                time: SystemTime::now(),
                actor: actor.0.clone(),
                action: action.into(),
                target: target.into(),
                detail: detail.to_string(),
            })
            .await?;
        Ok(())
    }

    // ---- licenses ------------------------------------------------------------------

    /// Issues a license; its secret is in the answer and nowhere else, ever.
    pub async fn create_license(
        &self,
        config: &Config,
        actor: &Actor,
        req: NewLicense,
    ) -> Result<CreatedLicense, ControlError> {
        if config.app(&req.app).is_none() {
            return Err(invalid("app", format!("unknown app {:?}", req.app)));
        }
        let customer = req.customer.trim().to_string();
        if customer.is_empty() || customer.len() > 200 {
            return Err(invalid(
                "customer",
                "a customer name of 1 to 200 characters",
            ));
        }
        let expires = match &req.expires {
            Some(s) => Some(future_expiry("expires", s, SystemTime::now())?),
            None => None,
        };
        let mut images = Vec::new();
        for (i, p) in req.images.iter().enumerate() {
            images.push(Glob::new(p).map_err(|m| invalid(&format!("images[{i}]"), m))?);
        }
        let secret = generate::license_secret();
        let row = LicenseRow {
            license: License {
                id: generate::license_id(),
                app: req.app,
                customer,
                expires,
                revoked: false,
                images,
                rate_limit: None,
                origin: Origin::Store,
                rotated: None,
            },
            secret_hash: self.store.hasher().hash(secret.expose()),
            created: now_ms(),
        };
        self.store.insert_license(&row).await?;
        let view = LicenseView::of(&row.license, Some(row.created), None, SystemTime::now());
        self.audit(
            actor,
            "license.create",
            &view.id,
            serde_json::json!({"app": view.app, "customer": view.customer, "expires": view.expires, "images": view.images}),
        )
        .await?;
        Ok(CreatedLicense::new(view, secret.expose(), config))
    }

    /// Every license (the config file's and the store's), filtered, by id.
    pub async fn list_licenses(
        &self,
        config: &Config,
        filter: &LicenseFilter,
    ) -> Result<Page<LicenseView>, ControlError> {
        let now = SystemTime::now();
        let contents = self.store.load().await?;
        let last: std::collections::HashMap<String, SystemTime> =
            self.store.last_pulls().await?.into_iter().collect();
        let mut all: Vec<LicenseView> = contents
            .licenses
            .iter()
            .map(|r| {
                LicenseView::of(
                    &r.license,
                    Some(r.created),
                    last.get(&r.license.id).copied(),
                    now,
                )
            })
            .chain(
                config
                    .tenants
                    .licenses()
                    .iter()
                    .map(|l| LicenseView::of(l, None, last.get(&l.id).copied(), now)),
            )
            .filter(|v| filter.app.as_ref().is_none_or(|a| &v.app == a))
            .filter(|v| filter.state.as_ref().is_none_or(|s| &v.state == s))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Page::of(all, filter.after.as_deref(), filter.limit, |v| {
            v.id.clone()
        }))
    }

    pub async fn license(&self, config: &Config, id: &str) -> Result<LicenseView, ControlError> {
        let last = self.last_pull_of(id).await?;
        if let Some(r) = self
            .store
            .load()
            .await?
            .licenses
            .into_iter()
            .find(|r| r.license.id == id)
        {
            return Ok(LicenseView::of(
                &r.license,
                Some(r.created),
                last,
                SystemTime::now(),
            ));
        }
        match config.tenants.license(id) {
            Some(l) => Ok(LicenseView::of(&l, None, last, SystemTime::now())),
            None => Err(ControlError::NotFound(asked_license(config, id))),
        }
    }

    async fn last_pull_of(&self, id: &str) -> Result<Option<SystemTime>, ControlError> {
        Ok(self
            .store
            .last_pulls()
            .await?
            .into_iter()
            .find(|(s, _)| s == id)
            .map(|(_, t)| t))
    }

    /// A stored license or why it cannot be changed.
    async fn changeable(&self, config: &Config, id: &str) -> Result<(), ControlError> {
        if config.tenants.license(id).is_some() {
            return Err(ControlError::ReadOnly(format!("license {id}")));
        }
        Ok(())
    }

    async fn change(
        &self,
        config: &Config,
        actor: &Actor,
        id: &str,
        action: &str,
        change: LicenseChange,
        detail: serde_json::Value,
    ) -> Result<LicenseView, ControlError> {
        self.changeable(config, id).await?;
        if !self.store.update_license(id, &change).await? {
            return Err(ControlError::NotFound(asked_license(config, id)));
        }
        self.audit(actor, action, id, detail).await?;
        self.license(config, id).await
    }

    /// Revokes a license: refused from the next request on, on every replica, tokens
    /// already issued included.
    pub async fn revoke_license(
        &self,
        config: &Config,
        actor: &Actor,
        id: &str,
    ) -> Result<LicenseView, ControlError> {
        let change = LicenseChange {
            revoked: Some(true),
            ..LicenseChange::default()
        };
        self.change(
            config,
            actor,
            id,
            "license.revoke",
            change,
            serde_json::json!({}),
        )
        .await
    }

    /// Sets a new expiry (`None`: never expires).
    pub async fn extend_license(
        &self,
        config: &Config,
        actor: &Actor,
        id: &str,
        expires: Option<&str>,
    ) -> Result<LicenseView, ControlError> {
        let expires = match expires {
            Some(s) => Some(parse_expiry("expires", s, SystemTime::now())?),
            None => None,
        };
        let change = LicenseChange {
            expires: Some(expires),
            ..LicenseChange::default()
        };
        let shown = expires.map(rfc3339);
        self.change(
            config,
            actor,
            id,
            "license.extend",
            change,
            serde_json::json!({ "expires": shown }),
        )
        .await
    }

    /// A new secret for a license; the old one stops working (and tokens issued with it
    /// keep working until they expire only if the license stays active: they name the id).
    pub async fn rotate_license(
        &self,
        config: &Config,
        actor: &Actor,
        id: &str,
    ) -> Result<CreatedLicense, ControlError> {
        let secret = generate::license_secret();
        let change = LicenseChange {
            secret_hash: Some(self.store.hasher().hash(secret.expose())),
            rotated: Some(now_ms()),
            ..LicenseChange::default()
        };
        let view = self
            .change(
                config,
                actor,
                id,
                "license.rotate",
                change,
                serde_json::json!({}),
            )
            .await?;
        Ok(CreatedLicense::new(view, secret.expose(), config))
    }

    // ---- API keys ------------------------------------------------------------------

    pub async fn create_key(
        &self,
        config: &Config,
        actor: &Actor,
        req: NewKey,
    ) -> Result<CreatedKey, ControlError> {
        let name = req.name.trim().to_string();
        if name.is_empty()
            || name.len() > 100
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "name",
                "1 to 100 characters of letters, digits, '-', '_' and '.'",
            ));
        }
        if req.apps.is_empty() {
            return Err(invalid("apps", "at least one app"));
        }
        for (i, a) in req.apps.iter().enumerate() {
            if config.app(a).is_none() {
                return Err(invalid(&format!("apps[{i}]"), format!("unknown app {a:?}")));
            }
        }
        let mut actions = Vec::new();
        for (i, a) in req.actions.iter().enumerate() {
            let action = Action::parse(a).ok_or_else(|| {
                invalid(
                    &format!("actions[{i}]"),
                    format!("unknown action {a:?} (pull, push, delete)"),
                )
            })?;
            if !actions.contains(&action) {
                actions.push(action);
            }
        }
        if actions.is_empty() {
            return Err(invalid("actions", "at least one of pull, push, delete"));
        }
        actions.sort();
        let expires = match &req.expires {
            Some(s) => Some(future_expiry("expires", s, SystemTime::now())?),
            None => None,
        };
        let mut apps = req.apps.clone();
        apps.dedup();
        let secret = generate::api_key();
        let row = KeyRow {
            key: ApiKey {
                id: generate::key_id(),
                name,
                apps,
                actions,
                expires,
                revoked: false,
            },
            key_hash: self.store.hasher().hash(secret.expose()),
            created: now_ms(),
            last_used: None,
        };
        self.store.insert_key(&row).await?;
        let view = KeyView::of(&row, SystemTime::now());
        self.audit(
            actor,
            "apikey.create",
            &view.id,
            serde_json::json!({"name": view.name, "apps": view.apps, "actions": view.actions, "expires": view.expires}),
        )
        .await?;
        Ok(CreatedKey {
            key: secret.expose().to_string(),
            view,
        })
    }

    pub async fn list_keys(&self, filter: &KeyFilter) -> Result<Page<KeyView>, ControlError> {
        let now = SystemTime::now();
        let mut all: Vec<KeyView> = self
            .store
            .load()
            .await?
            .keys
            .iter()
            .map(|k| KeyView::of(k, now))
            .filter(|v| filter.app.as_ref().is_none_or(|a| v.apps.contains(a)))
            .filter(|v| filter.state.as_ref().is_none_or(|s| &v.state == s))
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Page::of(all, filter.after.as_deref(), filter.limit, |v| {
            v.id.clone()
        }))
    }

    pub async fn key(&self, id: &str) -> Result<KeyView, ControlError> {
        self.store
            .load()
            .await?
            .keys
            .iter()
            .find(|k| k.key.id == id)
            .map(|k| KeyView::of(k, SystemTime::now()))
            .ok_or_else(|| ControlError::NotFound(asked("API key", id)))
    }

    pub async fn revoke_key(&self, actor: &Actor, id: &str) -> Result<KeyView, ControlError> {
        if !self.store.revoke_key(id).await? {
            return Err(ControlError::NotFound(asked("API key", id)));
        }
        self.audit(actor, "apikey.revoke", id, serde_json::json!({}))
            .await?;
        self.key(id).await
    }

    // ---- admin tokens --------------------------------------------------------------

    pub async fn create_admin_token(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<CreatedAdminToken, ControlError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(invalid("name", "a name of 1 to 100 characters"));
        }
        let secret = generate::admin_token();
        let row = AdminTokenRow {
            id: generate::admin_token_id(),
            name: name.to_string(),
            token_hash: self.store.hasher().hash(secret.expose()),
            created: now_ms(),
            revoked: false,
        };
        self.store.insert_admin_token(&row).await?;
        self.audit(
            actor,
            "admin_token.create",
            &row.id,
            serde_json::json!({ "name": name }),
        )
        .await?;
        Ok(CreatedAdminToken {
            view: AdminTokenView::of(&row),
            token: secret.expose().to_string(),
        })
    }

    /// The stored admin tokens and the config file's (by name).
    pub async fn list_admin_tokens(
        &self,
        config: &Config,
    ) -> Result<Vec<AdminTokenView>, ControlError> {
        let mut out: Vec<AdminTokenView> = self
            .store
            .load()
            .await?
            .admin_tokens
            .iter()
            .map(AdminTokenView::of)
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(config.auth.admin_tokens.iter().map(|t| AdminTokenView {
            id: format!("config:{}", t.name),
            name: t.name.clone(),
            state: State::Active.as_str().into(),
            origin: Origin::Config.as_str().into(),
            created: None,
        }));
        Ok(out)
    }

    pub async fn revoke_admin_token(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<AdminTokenView, ControlError> {
        if id.starts_with("config:") {
            return Err(ControlError::ReadOnly(format!("admin token {id}")));
        }
        if !self.store.revoke_admin_token(id).await? {
            return Err(ControlError::NotFound(asked("admin token", id)));
        }
        self.audit(actor, "admin_token.revoke", id, serde_json::json!({}))
            .await?;
        self.store
            .load()
            .await?
            .admin_tokens
            .iter()
            .find(|t| t.id == id)
            .map(AdminTokenView::of)
            .ok_or_else(|| ControlError::NotFound(asked("admin token", id)))
    }

    // ---- the audit trail -----------------------------------------------------------

    /// The admin audit trail after `after`, oldest first.
    pub async fn audit_trail(
        &self,
        after: i64,
        limit: Option<usize>,
    ) -> Result<Page<AuditView>, ControlError> {
        let limit = limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let entries = self.store.audit(after, limit + 1).await?;
        let more = entries.len() > limit;
        let items: Vec<AuditView> = entries.iter().take(limit).map(AuditView::of).collect();
        let next = more
            .then(|| items.last().map(|e| e.seq.to_string()))
            .flatten();
        Ok(Page { items, next })
    }
}

fn now_ms() -> SystemTime {
    // Stored at millisecond precision; hand back what a reader will see.
    crate::state::from_millis(crate::state::to_millis(SystemTime::now()))
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An expiry as an operator writes it: a date (`2027-06-30`: valid through that day, UTC),
/// an RFC 3339 time, or a duration from now (`90d`, `12h`).
pub fn parse_expiry(field: &str, s: &str, now: SystemTime) -> Result<SystemTime, ControlError> {
    let s = s.trim();
    let date_only = s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-';
    if date_only {
        let midnight = humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
            .map_err(|e| invalid(field, format!("invalid date {s:?}: {e}")))?;
        return Ok(midnight + Duration::from_secs(86_400));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now + d);
    }
    Err(invalid(
        field,
        format!("{s:?} is not a date (2027-06-30), an RFC 3339 time or a duration (90d)"),
    ))
}

/// An expiry for something new: one already in the past would be expired from the start,
/// which is a mistake, not a wish (extending to the past is allowed: it ends a license now).
fn future_expiry(field: &str, s: &str, now: SystemTime) -> Result<SystemTime, ControlError> {
    let t = parse_expiry(field, s, now)?;
    if t <= now {
        return Err(invalid(
            field,
            format!("{s} is in the past, so this would be expired from the start (give a later date or a duration such as 90d)"),
        ));
    }
    Ok(t)
}

/// The start of a usage report as an operator writes it: a duration back from now (`30d`),
/// a date (`2026-11-01`, from its UTC midnight) or an RFC 3339 time.
pub fn parse_since(field: &str, s: &str, now: SystemTime) -> Result<SystemTime, ControlError> {
    let s = s.trim();
    let bad = || {
        invalid(
            field,
            format!("{s:?} is not a duration (30d), a date (2026-11-01) or an RFC 3339 time"),
        )
    };
    if let Ok(d) = humantime::parse_duration(s) {
        return now.checked_sub(d).ok_or_else(bad);
    }
    let date_only = s.len() == 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-';
    if date_only {
        return humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).map_err(|_| bad());
    }
    humantime::parse_rfc3339_weak(s).map_err(|_| bad())
}

/// How a refusal names the record asked for: by the id given when it has the shape of a
/// public id, else not at all. Anything else is something pasted where an id belongs — a
/// config license's password is free-form, so no `berth_…` prefix gives it away — and a
/// "not found" would carry it into the API's answer, the CLI's output and the logs.
fn asked(what: &str, id: &str) -> String {
    if is_public_id(id) {
        format!("{what} {id}")
    } else {
        format!("{what} <not an id>")
    }
}

/// [`asked`] for licenses, which also knows the config file's passwords (one may have been
/// chosen in the shape of a public id).
fn asked_license(config: &Config, id: &str) -> String {
    if config.tenants.license_by_secret(id).is_some() {
        return "license <not an id>".into();
    }
    asked("license", id)
}

/// The shapes of public ids: `lic_`, `key_` or `adm_` and lowercase letters and digits (what
/// `state::generate` makes), or a config license's fingerprint (32 hex digits).
fn is_public_id(id: &str) -> bool {
    let generated = ["lic_", "key_", "adm_"].iter().any(|p| {
        id.strip_prefix(p).is_some_and(|rest| {
            (1..=32).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
    });
    let fingerprint = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    generated || fingerprint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_as_operators_write_it() {
        let now = humantime::parse_rfc3339("2026-12-01T10:00:00Z").unwrap();
        let at = |s| rfc3339(parse_since("since", s, now).unwrap());
        assert_eq!(at("30d"), "2026-11-01T10:00:00Z");
        assert_eq!(at("2026-11-01"), "2026-11-01T00:00:00Z");
        assert_eq!(at("2026-11-01T12:00:00Z"), "2026-11-01T12:00:00Z");
        for bad in ["lately", "2026-13-01", "-5d"] {
            assert!(
                matches!(
                    parse_since("since", bad, now),
                    Err(ControlError::Invalid { ref field, .. }) if field == "since"
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_not_found_repeats_only_what_is_shaped_like_an_id() {
        assert_eq!(
            asked("license", "lic_aaaaaaaaaaaaaaaa"),
            "license lic_aaaaaaaaaaaaaaaa"
        );
        assert_eq!(
            asked("API key", "key_doesnotexist"),
            "API key key_doesnotexist"
        );
        let fp = "0f37bea200a413bc6af02da9b3f36415";
        assert_eq!(asked("license", fp), format!("license {fp}"));
        for pasted in [
            "LICENSE-cfg+abc/=",
            "lic_Secret",
            "lic_",
            "hunter2-hunter2",
            "lic_a b",
        ] {
            assert_eq!(asked("license", pasted), "license <not an id>", "{pasted}");
        }
    }

    #[test]
    fn new_things_cannot_start_expired() {
        let now = SystemTime::now();
        assert!(future_expiry("expires", "90d", now).is_ok());
        assert!(matches!(
            future_expiry("expires", "2020-01-01", now),
            Err(ControlError::Invalid { ref field, .. }) if field == "expires"
        ));
    }

    #[test]
    fn expiries_as_operators_write_them() {
        let now = humantime::parse_rfc3339("2026-12-01T10:00:00Z").unwrap();
        let at = |s| rfc3339(parse_expiry("expires", s, now).unwrap());
        assert_eq!(at("2027-06-30"), "2027-07-01T00:00:00Z");
        assert_eq!(at("2027-06-30T12:00:00Z"), "2027-06-30T12:00:00Z");
        assert_eq!(at("90d"), "2027-03-01T10:00:00Z");
        assert!(matches!(
            parse_expiry("expires", "soon", now),
            Err(ControlError::Invalid { ref field, .. }) if field == "expires"
        ));
    }
}
