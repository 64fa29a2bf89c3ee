//! The control plane's state: licenses, API keys and admin tokens managed at runtime, the
//! admin audit trail and usage, kept in a database behind the `Store` seam (embedded SQLite
//! by default, PostgreSQL for several replicas) with versioned migrations run at open, and
//! `Directory`, the in-memory snapshot every request authenticates against, refreshed
//! within a fraction of a second of any change made by any process.
//!
//! Secrets are never stored: a license secret, API key or admin token is kept as its keyed
//! SHA-256 (`SecretHasher`). They are long random values, so a fast keyed hash is enough.

mod directory;
pub mod hosted;
pub mod postgres;
mod secret;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

pub use directory::{Directory, Found, Snapshot};
pub use secret::{generate, SecretHash, SecretHasher};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::settings::StateConfig;
use crate::tenancy::{ApiKey, License};

/// The futures a store returns.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// Why the state store failed. Operators see the message; decisions are by variant.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database cannot be reached or opened (a wrong URL, a server down, a bad file).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error (a failed statement, a broken migration).
    #[error("state store error: {0}")]
    Database(String),
    /// The database holds a schema newer than this berth knows: an older binary against a
    /// store a newer one migrated.
    #[error("the state store's schema is version {found}, newer than this berth's {known}: run a newer berth")]
    SchemaTooNew { found: i64, known: i64 },
    /// A record with this id already exists.
    #[error("{0} already exists")]
    Conflict(String),
}

/// A license as stored: the public part and its secret's hash.
#[derive(Debug, Clone)]
pub struct LicenseRow {
    pub license: License,
    pub secret_hash: SecretHash,
    pub created: SystemTime,
}

/// An API key as stored.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub key: ApiKey,
    pub key_hash: SecretHash,
    pub created: SystemTime,
    pub last_used: Option<SystemTime>,
}

/// An admin API token as stored (tokens from the config file are not stored).
#[derive(Debug, Clone)]
pub struct AdminTokenRow {
    pub id: String,
    pub name: String,
    pub token_hash: SecretHash,
    pub created: SystemTime,
    pub revoked: bool,
}

/// A change to a stored license; `None` fields are left alone.
#[derive(Debug, Clone, Default)]
pub struct LicenseChange {
    /// `Some(None)` removes the expiry.
    pub expires: Option<Option<SystemTime>>,
    pub revoked: Option<bool>,
    pub secret_hash: Option<SecretHash>,
    pub customer: Option<String>,
    /// When the secret was rotated (set with `secret_hash`).
    pub rotated: Option<SystemTime>,
}

/// One line of the admin audit trail: who changed what, when.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Assigned by the store, increasing.
    pub seq: i64,
    pub time: SystemTime,
    /// The admin token's name, or `cli:<user>` for the local command line.
    pub actor: String,
    /// `license.create`, `license.revoke`, `apikey.create`, …
    pub action: String,
    /// The public id the action was on.
    pub target: String,
    /// A JSON object with the details (never a secret).
    pub detail: String,
}

/// One counted pull: a tag resolved, or an image pulled by digest (a multi-arch pull's
/// child manifests are not counted again).
#[derive(Debug, Clone, PartialEq)]
pub struct PullEvent {
    pub time: SystemTime,
    /// The license's or key's public id.
    pub subject: String,
    pub app: String,
    /// `host/repository` as the upstream names it.
    pub image: String,
    /// The tag or digest asked for.
    pub reference: String,
    /// The manifest digest it resolved to.
    pub digest: String,
    pub client: String,
    pub user_agent: String,
}

/// Bytes served to one subject for one image, added up over a stretch of time.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub subject: String,
    pub app: String,
    pub image: String,
    /// The day (UTC midnight) the bytes were served on.
    pub day: SystemTime,
    pub bytes: u64,
}

/// What usage writes in one batch.
#[derive(Debug, Clone, Default)]
pub struct UsageBatch {
    pub pulls: Vec<PullEvent>,
    pub transfer: Vec<Transfer>,
    /// API keys used, and when last.
    pub keys_used: Vec<(String, SystemTime)>,
}

/// Which usage to read.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub subject: Option<String>,
    pub app: Option<String>,
    pub since: Option<SystemTime>,
}

/// Everything the directory holds, read in one go.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub generation: i64,
    pub licenses: Vec<LicenseRow>,
    pub keys: Vec<KeyRow>,
    pub admin_tokens: Vec<AdminTokenRow>,
}

/// A state database. Every write that changes who may authenticate (licenses, keys, admin
/// tokens) raises the generation in the same transaction, so that every directory on every
/// replica notices with one cheap read; usage writes do not.
pub trait Store: hosted::HostedIndex + Send + Sync + std::fmt::Debug {
    /// The secret hasher of this store (its key is created with the store and shared by
    /// every process that opens it).
    fn hasher(&self) -> &SecretHasher;
    /// A number that changes whenever licenses, keys or admin tokens change.
    fn generation(&self) -> Fut<'_, i64>;
    /// Every license, key and admin token, with the generation they were read at.
    fn load(&self) -> Fut<'_, Contents>;
    fn insert_license<'a>(&'a self, row: &'a LicenseRow) -> Fut<'a, ()>;
    /// Applies `change`; `false` when there is no such license.
    fn update_license<'a>(&'a self, id: &'a str, change: &'a LicenseChange) -> Fut<'a, bool>;
    fn insert_key<'a>(&'a self, row: &'a KeyRow) -> Fut<'a, ()>;
    /// `false` when there is no such key.
    fn revoke_key<'a>(&'a self, id: &'a str) -> Fut<'a, bool>;
    fn insert_admin_token<'a>(&'a self, row: &'a AdminTokenRow) -> Fut<'a, ()>;
    fn revoke_admin_token<'a>(&'a self, id: &'a str) -> Fut<'a, bool>;
    /// Appends to the admin audit trail (the store assigns `seq`).
    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> Fut<'a, ()>;
    /// The trail after `after` (oldest first), at most `limit` entries.
    fn audit(&self, after: i64, limit: usize) -> Fut<'_, Vec<AuditEntry>>;
    /// Records pulls, bytes served and key use.
    fn record_usage<'a>(&'a self, batch: &'a UsageBatch) -> Fut<'a, ()>;
    /// Counted pulls matching `q`, oldest first.
    fn pulls<'a>(&'a self, q: &'a UsageQuery) -> Fut<'a, Vec<PullEvent>>;
    /// Bytes served matching `q` (by day).
    fn transfer<'a>(&'a self, q: &'a UsageQuery) -> Fut<'a, Vec<Transfer>>;
    /// The last pull of each subject (license or key id).
    fn last_pulls(&self) -> Fut<'_, Vec<(String, SystemTime)>>;
    /// The schema version the store is at.
    fn schema_version(&self) -> Fut<'_, i64>;
}

/// Opens (creating and migrating) the store `config` names.
pub async fn open(config: &StateConfig) -> Result<Arc<dyn Store>, StateError> {
    match config {
        StateConfig::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(path).await?)),
        StateConfig::Postgres(url) => Ok(Arc::new(postgres::PostgresStore::open(url).await?)),
    }
}

/// How long a directory waits between generation checks: a change made anywhere is in
/// force everywhere within this (and one reload).
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// Milliseconds since the epoch, as stored.
pub(crate) fn to_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// UTC midnight of the day `t` falls on (usage adds bytes up by day).
pub(crate) fn day_of(t: SystemTime) -> SystemTime {
    let ms = to_millis(t);
    from_millis(ms - ms.rem_euclid(86_400_000))
}
