//! The control plane the license, apikey, admin-token and usage commands work on: the state
//! store opened here (`control::Control` as the local user), or a running berth's admin API
//! (`--server`); both answer with the same views, so every command prints the same either
//! way. Also what those commands share: their failures and exit codes, and the checks that
//! keep a secret out of a request path, a listing or an error.

use std::process::ExitCode;
use std::time::SystemTime;

use super::remote::{query, segment, Remote};
use super::Global;
use crate::config::Config;
use crate::control::usage::{UsageFilter, UsageReport};
use crate::control::{
    self, Actor, AdminTokenView, Control, ControlError, CreatedAdminToken, CreatedKey,
    CreatedLicense, KeyFilter, KeyView, LicenseFilter, LicensePatch, LicenseView, ListFilter,
    NewAdminToken, NewKey, NewLicense, Page,
};

/// Why a command did not do what it was asked. Printed as one `berth: …` line.
#[derive(Debug)]
pub(super) enum Failure {
    /// The operation was refused or failed (not found, invalid, conflict, the store or the
    /// server failing): exit 1.
    Refused(String),
    /// The command line or the configuration is wrong: exit 2.
    Usage(String),
}

impl Failure {
    pub fn refused(m: impl Into<String>) -> Failure {
        Failure::Refused(m.into())
    }

    pub fn usage(m: impl Into<String>) -> Failure {
        Failure::Usage(m.into())
    }

    pub fn exit(self) -> ExitCode {
        match self {
            Failure::Refused(m) => {
                eprintln!("berth: {m}");
                ExitCode::FAILURE
            }
            Failure::Usage(m) => {
                eprintln!("berth: {m}");
                ExitCode::from(2)
            }
        }
    }
}

impl From<ControlError> for Failure {
    fn from(e: ControlError) -> Failure {
        match e {
            ControlError::State(e) => {
                Failure::Refused(format!("{e} (check state.sqlite or state.postgres)"))
            }
            e => Failure::Refused(e.to_string()),
        }
    }
}

/// The exit code of a finished command.
pub(super) fn finish(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

/// Refuses an argument that is a secret where an id belongs, without repeating it: it
/// would otherwise travel in a request path and come back in a "not found".
pub(super) fn check_id(what: &str, id: &str) -> Result<(), Failure> {
    if ["berth_lic_", "berth_key_", "berth_adm_"]
        .iter()
        .any(|p| id.starts_with(p))
    {
        return Err(Failure::usage(format!(
            "that is a secret, not the {what}'s id: pass its public id (`berth {} list` shows them)",
            match what {
                "API key" => "apikey",
                "admin token" => "admin-token",
                _ => "license",
            }
        )));
    }
    Ok(())
}

/// The store opened here, with the configuration its operations check against.
pub(super) struct Local {
    control: Control,
    config: Config,
    actor: Actor,
}

pub(super) enum Plane {
    Local(Box<Local>),
    Remote(Box<Remote>),
}

/// Listings are fetched a page at a time, this many each.
const PAGE: usize = control::MAX_PAGE;

/// The runtime and the plane `g` names: `--server`'s admin API, or the config's state store.
/// Prints why not and gives the exit code when neither can be had.
pub(super) fn open(g: &Global) -> Result<(tokio::runtime::Runtime, Plane), ExitCode> {
    let rt = super::runtime()?;
    if let Some(server) = &g.server {
        let remote = Remote::new(server, g.token.as_ref()).map_err(Failure::exit)?;
        return Ok((rt, Plane::Remote(Box::new(remote))));
    }
    let config = super::load_config(&g.config)?;
    let store = rt
        .block_on(crate::state::open(&config.state))
        .map_err(|e| {
            eprintln!("berth: {e} (check state.sqlite or state.postgres)");
            ExitCode::FAILURE
        })?;
    let local = Local {
        control: Control::new(store),
        config,
        actor: Actor::local(),
    };
    Ok((rt, Plane::Local(Box::new(local))))
}

/// Every page of a listing: `page` answers one page for a filter; the cursor moves on until
/// the last page.
async fn all_pages<T, F, Fut>(mut filter: ListFilter, mut page: F) -> Result<Vec<T>, Failure>
where
    F: FnMut(ListFilter) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, Failure>>,
{
    let mut all = Vec::new();
    filter.limit = Some(PAGE);
    loop {
        let p = page(filter.clone()).await?;
        all.extend(p.items);
        match p.next {
            // A server that hands back the same cursor would loop forever.
            Some(n) if filter.after.as_deref() != Some(n.as_str()) => filter.after = Some(n),
            _ => return Ok(all),
        }
    }
}

/// The admin API's query string for a listing filter.
fn list_query(f: &ListFilter) -> String {
    let limit = f.limit.map(|l| l.to_string());
    query(&[
        ("app", f.app.as_deref()),
        ("state", f.state.as_deref()),
        ("after", f.after.as_deref()),
        ("limit", limit.as_deref()),
    ])
}

impl Plane {
    /// The public name customers pull from, when known here (the config's
    /// `server.hostname`; the admin API does not say).
    pub fn hostname(&self) -> Option<&str> {
        match self {
            Plane::Local(l) => Some(&l.config.server.hostname),
            Plane::Remote(_) => None,
        }
    }

    // ---- licenses ------------------------------------------------------------------

    pub async fn create_license(&self, req: NewLicense) -> Result<CreatedLicense, Failure> {
        match self {
            Plane::Local(l) => Ok(l.control.create_license(&l.config, &l.actor, req).await?),
            Plane::Remote(r) => r.post("/api/v1/licenses", &req).await,
        }
    }

    /// Every license matching `filter`, all pages.
    pub async fn licenses(&self, filter: LicenseFilter) -> Result<Vec<LicenseView>, Failure> {
        all_pages(filter, |f| async move {
            match self {
                Plane::Local(l) => Ok(l.control.list_licenses(&l.config, &f).await?),
                Plane::Remote(r) => r.get(&format!("/api/v1/licenses{}", list_query(&f))).await,
            }
        })
        .await
    }

    /// In local mode, a config license's password given where its id belongs is caught
    /// here, before it is echoed in a "not found".
    fn check_license_id(&self, id: &str) -> Result<(), Failure> {
        check_id("license", id)?;
        if let Plane::Local(l) = self {
            if let Some(lic) = l.config.tenants.license_by_secret(id) {
                if lic.id != id {
                    return Err(Failure::usage(format!(
                        "that is the password of a license in the config file, not its id; its id is {}",
                        lic.id
                    )));
                }
            }
        }
        Ok(())
    }

    pub async fn license(&self, id: &str) -> Result<LicenseView, Failure> {
        self.check_license_id(id)?;
        match self {
            Plane::Local(l) => Ok(l.control.license(&l.config, id).await?),
            Plane::Remote(r) => r.get(&format!("/api/v1/licenses/{}", segment(id))).await,
        }
    }

    pub async fn revoke_license(&self, id: &str) -> Result<LicenseView, Failure> {
        self.check_license_id(id)?;
        match self {
            Plane::Local(l) => Ok(l.control.revoke_license(&l.config, &l.actor, id).await?),
            Plane::Remote(r) => {
                r.post_empty(&format!("/api/v1/licenses/{}/revoke", segment(id)))
                    .await
            }
        }
    }

    /// `expires: None` removes the expiry.
    pub async fn extend_license(
        &self,
        id: &str,
        expires: Option<String>,
    ) -> Result<LicenseView, Failure> {
        self.check_license_id(id)?;
        match self {
            Plane::Local(l) => Ok(l
                .control
                .extend_license(&l.config, &l.actor, id, expires.as_deref())
                .await?),
            Plane::Remote(r) => {
                r.patch(
                    &format!("/api/v1/licenses/{}", segment(id)),
                    &LicensePatch { expires },
                )
                .await
            }
        }
    }

    pub async fn rotate_license(&self, id: &str) -> Result<CreatedLicense, Failure> {
        self.check_license_id(id)?;
        match self {
            Plane::Local(l) => Ok(l.control.rotate_license(&l.config, &l.actor, id).await?),
            Plane::Remote(r) => {
                r.post_empty(&format!("/api/v1/licenses/{}/rotate", segment(id)))
                    .await
            }
        }
    }

    // ---- API keys ------------------------------------------------------------------

    pub async fn create_key(&self, req: NewKey) -> Result<CreatedKey, Failure> {
        match self {
            Plane::Local(l) => Ok(l.control.create_key(&l.config, &l.actor, req).await?),
            Plane::Remote(r) => r.post("/api/v1/apikeys", &req).await,
        }
    }

    /// Every API key matching `filter`, all pages.
    pub async fn keys(&self, filter: KeyFilter) -> Result<Vec<KeyView>, Failure> {
        all_pages(filter, |f| async move {
            match self {
                Plane::Local(l) => Ok(l.control.list_keys(&f).await?),
                Plane::Remote(r) => r.get(&format!("/api/v1/apikeys{}", list_query(&f))).await,
            }
        })
        .await
    }

    pub async fn key(&self, id: &str) -> Result<KeyView, Failure> {
        check_id("API key", id)?;
        match self {
            Plane::Local(l) => Ok(l.control.key(id).await?),
            Plane::Remote(r) => r.get(&format!("/api/v1/apikeys/{}", segment(id))).await,
        }
    }

    pub async fn revoke_key(&self, id: &str) -> Result<KeyView, Failure> {
        check_id("API key", id)?;
        match self {
            Plane::Local(l) => Ok(l.control.revoke_key(&l.actor, id).await?),
            Plane::Remote(r) => {
                r.post_empty(&format!("/api/v1/apikeys/{}/revoke", segment(id)))
                    .await
            }
        }
    }

    // ---- admin tokens --------------------------------------------------------------

    pub async fn create_admin_token(&self, name: &str) -> Result<CreatedAdminToken, Failure> {
        match self {
            Plane::Local(l) => Ok(l.control.create_admin_token(&l.actor, name).await?),
            Plane::Remote(r) => {
                r.post(
                    "/api/v1/admin-tokens",
                    &NewAdminToken {
                        name: name.to_string(),
                    },
                )
                .await
            }
        }
    }

    pub async fn admin_tokens(&self) -> Result<Vec<AdminTokenView>, Failure> {
        match self {
            Plane::Local(l) => Ok(l.control.list_admin_tokens(&l.config).await?),
            Plane::Remote(r) => {
                let page: Page<AdminTokenView> = r.get("/api/v1/admin-tokens").await?;
                Ok(page.items)
            }
        }
    }

    pub async fn revoke_admin_token(&self, id: &str) -> Result<AdminTokenView, Failure> {
        check_id("admin token", id)?;
        match self {
            Plane::Local(l) => Ok(l.control.revoke_admin_token(&l.actor, id).await?),
            Plane::Remote(r) => {
                r.post_empty(&format!("/api/v1/admin-tokens/{}/revoke", segment(id)))
                    .await
            }
        }
    }

    // ---- usage ---------------------------------------------------------------------

    /// `since` as the operator wrote it (checked here in both modes, so that a mistake reads
    /// the same either way).
    pub async fn usage(
        &self,
        license: Option<String>,
        app: Option<String>,
        since: Option<String>,
    ) -> Result<UsageReport, Failure> {
        if let Some(id) = &license {
            check_id("license", id)?;
        }
        let since_at = match &since {
            Some(s) => Some(control::parse_since("since", s, SystemTime::now())?),
            None => None,
        };
        match self {
            Plane::Local(l) => {
                let filter = UsageFilter {
                    license,
                    app,
                    since: since_at,
                };
                Ok(l.control.usage(&l.config, &filter).await?)
            }
            Plane::Remote(r) => {
                let q = query(&[
                    ("license", license.as_deref()),
                    ("app", app.as_deref()),
                    ("since", since.as_deref()),
                ]);
                r.get(&format!("/api/v1/usage{q}")).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_refused_where_ids_belong_without_being_repeated() {
        for s in ["berth_lic_abc", "berth_key_abc", "berth_adm_abc"] {
            match check_id("license", s) {
                Err(Failure::Usage(m)) => assert!(!m.contains(s), "{m}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert!(check_id("license", "lic_abcdefghijklmnop").is_ok());
    }
}
