//! The embedded state store: one SQLite file in berth's data directory, created and migrated
//! at open, in WAL mode so the command line can write while `berth serve` reads. Statements
//! run on the blocking pool; the connection is behind a mutex (control-plane writes are
//! rare and the pull path reads the directory, not the database).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    from_millis, generate, to_millis, AdminTokenRow, AuditEntry, Contents, Fut, KeyRow,
    LicenseChange, LicenseRow, PullEvent, SecretHash, SecretHasher, StateError, Store, Transfer,
    UsageBatch, UsageQuery,
};
use crate::tenancy::{Action, ApiKey, Glob, License, Origin};

mod hosted;

/// The schema, one entry per version; a store is migrated by applying the ones it lacks,
/// in order, each in its own transaction. Never edit a released entry: add one.
const MIGRATIONS: &[&str] = &[
    // 1: licenses, API keys, admin tokens, the admin audit trail, usage.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE generation (value BIGINT NOT NULL);
    INSERT INTO generation (value) VALUES (0);
    CREATE TABLE licenses (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL UNIQUE,
        app TEXT NOT NULL,
        customer TEXT NOT NULL,
        images TEXT NOT NULL,
        expires_ms BIGINT,
        revoked INTEGER NOT NULL DEFAULT 0,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        apps TEXT NOT NULL,
        actions TEXT NOT NULL,
        expires_ms BIGINT,
        revoked INTEGER NOT NULL DEFAULT 0,
        created_ms BIGINT NOT NULL,
        last_used_ms BIGINT
    );
    CREATE TABLE admin_tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE admin_audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE pulls (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms BIGINT NOT NULL,
        subject TEXT NOT NULL,
        app TEXT NOT NULL,
        image TEXT NOT NULL,
        reference TEXT NOT NULL,
        digest TEXT NOT NULL,
        client TEXT NOT NULL,
        user_agent TEXT NOT NULL
    );
    CREATE INDEX pulls_subject_time ON pulls (subject, time_ms);
    CREATE INDEX pulls_app_time ON pulls (app, time_ms);
    CREATE INDEX pulls_time ON pulls (time_ms);
    CREATE TABLE transfer (
        subject TEXT NOT NULL,
        app TEXT NOT NULL,
        image TEXT NOT NULL,
        day_ms BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        PRIMARY KEY (subject, app, image, day_ms)
    );
    "#,
    // 2: when a license's secret was rotated (tokens issued before are refused).
    "ALTER TABLE licenses ADD COLUMN rotated_ms BIGINT;",
    // 3: the hosted registry's index (`state::hosted`).
    r#"
    CREATE TABLE hosted_repos (
        app TEXT NOT NULL,
        name TEXT NOT NULL,
        full_name TEXT NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (app, name)
    );
    CREATE TABLE hosted_blobs (
        app TEXT NOT NULL,
        repo TEXT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        touched_ms BIGINT NOT NULL,
        PRIMARY KEY (app, repo, digest)
    );
    CREATE INDEX hosted_blobs_digest ON hosted_blobs (digest);
    CREATE TABLE hosted_manifests (
        app TEXT NOT NULL,
        repo TEXT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        artifact_type TEXT,
        subject TEXT,
        size BIGINT NOT NULL,
        annotations TEXT,
        touched_ms BIGINT NOT NULL,
        PRIMARY KEY (app, repo, digest)
    );
    CREATE INDEX hosted_manifests_subject ON hosted_manifests (app, repo, subject);
    CREATE INDEX hosted_manifests_digest ON hosted_manifests (digest);
    CREATE TABLE hosted_refs (
        app TEXT NOT NULL,
        repo TEXT NOT NULL,
        manifest TEXT NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (app, repo, manifest, target)
    );
    CREATE INDEX hosted_refs_target ON hosted_refs (app, repo, target);
    CREATE TABLE hosted_tags (
        app TEXT NOT NULL,
        repo TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (app, repo, tag)
    );
    CREATE INDEX hosted_tags_digest ON hosted_tags (app, repo, digest);
    "#,
    // 4: digests a delete released (a manifest or a blob link removed through the API):
    // collection frees their bytes once nothing links them, after the grace period.
    r#"
    CREATE TABLE hosted_released (
        digest TEXT NOT NULL,
        manifest BOOLEAN NOT NULL,
        released_ms BIGINT NOT NULL,
        PRIMARY KEY (digest, manifest)
    );
    "#,
];

/// The SQLite store. `Debug` names the file only.
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    hasher: SecretHasher,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn db(e: rusqlite::Error) -> StateError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation {
            return StateError::Conflict("a record with this id or secret".into());
        }
        if matches!(
            f.code,
            rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::PermissionDenied
                | rusqlite::ErrorCode::NotADatabase
                | rusqlite::ErrorCode::ReadOnly
        ) {
            return StateError::Unavailable(e.to_string());
        }
    }
    StateError::Database(e.to_string())
}

impl SqliteStore {
    /// Opens the file (creating it, 0600, and its directory), migrates it and reads the key.
    pub async fn open(path: &Path) -> Result<SqliteStore, StateError> {
        let path = path.to_path_buf();
        let p = path.clone();
        let (conn, key) = tokio::task::spawn_blocking(move || Self::open_blocking(&p))
            .await
            .map_err(|e| StateError::Database(e.to_string()))??;
        Ok(SqliteStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
            hasher: SecretHasher::new(&key),
        })
    }

    fn open_blocking(path: &Path) -> Result<(Connection, Vec<u8>), StateError> {
        let unavailable = |e: std::io::Error| {
            StateError::Unavailable(format!("cannot create {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        // Created 0600 before SQLite opens it: the file holds customers' names and hashes.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(unavailable)?;
        }
        let mut conn = Connection::open(path)
            .map_err(|e| StateError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        migrate(&mut conn)?;
        let key: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'hash_key'", [], |r| {
                r.get(0)
            })
            .map_err(db)?;
        let key = SecretHash::from_hex(&key)
            .ok_or_else(|| StateError::Database("meta.hash_key is not 64 hex digits".into()))?;
        Ok((conn, key.0.to_vec()))
    }

    /// Runs `f` on the connection on the blocking pool.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StateError> + Send + 'static,
    ) -> Fut<'_, T> {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
                f(&mut c)
            })
            .await
            .map_err(|e| StateError::Database(e.to_string()))?
        })
    }
}

/// Applies the migrations the file lacks, under an immediate (write) transaction so two
/// processes opening a new file at once migrate it once.
fn migrate(conn: &mut Connection) -> Result<(), StateError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)",
    )
    .map_err(db)?;
    let known = MIGRATIONS.len() as i64;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    let found: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if found > known {
        return Err(StateError::SchemaTooNew { found, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        tx.execute_batch(sql)
            .map_err(|e| StateError::Database(format!("migration {version} failed: {e}")))?;
        if version == 1 {
            let key = SecretHash(generate::hash_key()).to_hex();
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('hash_key', ?1)",
                params![key],
            )
            .map_err(db)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
            params![version, to_millis(std::time::SystemTime::now())],
        )
        .map_err(db)?;
        tracing::info!(version, "state store migrated");
    }
    tx.commit().map_err(db)
}

fn bump(tx: &rusqlite::Transaction<'_>) -> Result<(), StateError> {
    tx.execute("UPDATE generation SET value = value + 1", [])
        .map_err(db)?;
    Ok(())
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn parse_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// A license row, as read by both SQL stores.
#[allow(clippy::too_many_arguments)]
pub(crate) fn license_of(
    id: String,
    hash: &str,
    app: String,
    customer: String,
    images: &str,
    expires_ms: Option<i64>,
    revoked: bool,
    created_ms: i64,
    rotated_ms: Option<i64>,
) -> Result<LicenseRow, StateError> {
    let images = parse_list(images)
        .iter()
        .map(|g| Glob::new(g))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StateError::Database(format!("license {id}: images: {e}")))?;
    let secret_hash = SecretHash::from_hex(hash)
        .ok_or_else(|| StateError::Database(format!("license {id}: bad secret hash")))?;
    Ok(LicenseRow {
        license: License {
            id,
            app,
            customer,
            expires: expires_ms.map(from_millis),
            revoked,
            images,
            rate_limit: None,
            origin: Origin::Store,
            rotated: rotated_ms.map(from_millis),
        },
        secret_hash,
        created: from_millis(created_ms),
    })
}

/// An API key row, as read by both SQL stores.
#[allow(clippy::too_many_arguments)]
pub(crate) fn key_of(
    id: String,
    hash: &str,
    name: String,
    apps: &str,
    actions: &str,
    expires_ms: Option<i64>,
    revoked: bool,
    created_ms: i64,
    last_used_ms: Option<i64>,
) -> Result<KeyRow, StateError> {
    let key_hash = SecretHash::from_hex(hash)
        .ok_or_else(|| StateError::Database(format!("key {id}: bad key hash")))?;
    let actions = parse_list(actions)
        .iter()
        .filter_map(|a| Action::parse(a))
        .collect();
    Ok(KeyRow {
        key: ApiKey {
            id,
            name,
            apps: parse_list(apps),
            actions,
            expires: expires_ms.map(from_millis),
            revoked,
        },
        key_hash,
        created: from_millis(created_ms),
        last_used: last_used_ms.map(from_millis),
    })
}

pub(crate) fn images_json(l: &License) -> String {
    json_list(
        &l.images
            .iter()
            .map(|g| g.as_str().to_string())
            .collect::<Vec<_>>(),
    )
}

pub(crate) fn apps_json(k: &ApiKey) -> String {
    json_list(&k.apps)
}

pub(crate) fn actions_json(k: &ApiKey) -> String {
    json_list(
        &k.actions
            .iter()
            .map(|a| a.as_str().to_string())
            .collect::<Vec<_>>(),
    )
}

/// The `WHERE` clause and its values for a usage query (`?N` placeholders from `first`).
fn usage_filter(q: &UsageQuery, time_col: &str) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut clauses = vec!["1 = 1".to_string()];
    let mut values = Vec::new();
    if let Some(s) = &q.subject {
        values.push(Value::Text(s.clone()));
        clauses.push(format!("subject = ?{}", values.len()));
    }
    if let Some(a) = &q.app {
        values.push(Value::Text(a.clone()));
        clauses.push(format!("app = ?{}", values.len()));
    }
    if let Some(t) = q.since {
        values.push(Value::Integer(to_millis(t)));
        clauses.push(format!("{time_col} >= ?{}", values.len()));
    }
    (clauses.join(" AND "), values)
}

impl Store for SqliteStore {
    fn hasher(&self) -> &SecretHasher {
        &self.hasher
    }

    fn generation(&self) -> Fut<'_, i64> {
        self.with(|c| {
            c.query_row("SELECT value FROM generation", [], |r| r.get(0))
                .map_err(db)
        })
    }

    fn load(&self) -> Fut<'_, Contents> {
        self.with(|c| {
            // One read transaction: the generation and the rows agree.
            let tx = c.transaction().map_err(db)?;
            let generation = tx
                .query_row("SELECT value FROM generation", [], |r| r.get(0))
                .map_err(db)?;
            let mut licenses = Vec::new();
            {
                let mut st = tx
                    .prepare("SELECT id, secret_hash, app, customer, images, expires_ms, revoked, created_ms, rotated_ms FROM licenses")
                    .map_err(db)?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                            r.get::<_, bool>(6)?,
                            r.get::<_, i64>(7)?,
                            r.get::<_, Option<i64>>(8)?,
                        ))
                    })
                    .map_err(db)?;
                for row in rows {
                    let (id, h, app, customer, images, exp, rev, created, rotated) =
                        row.map_err(db)?;
                    licenses.push(license_of(
                        id, &h, app, customer, &images, exp, rev, created, rotated,
                    )?);
                }
            }
            let mut keys = Vec::new();
            {
                let mut st = tx
                    .prepare("SELECT id, key_hash, name, apps, actions, expires_ms, revoked, created_ms, last_used_ms FROM api_keys")
                    .map_err(db)?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                            r.get::<_, bool>(6)?,
                            r.get::<_, i64>(7)?,
                            r.get::<_, Option<i64>>(8)?,
                        ))
                    })
                    .map_err(db)?;
                for row in rows {
                    let (id, h, name, apps, actions, exp, rev, created, used) = row.map_err(db)?;
                    keys.push(key_of(id, &h, name, &apps, &actions, exp, rev, created, used)?);
                }
            }
            let mut admin_tokens = Vec::new();
            {
                let mut st = tx
                    .prepare("SELECT id, token_hash, name, created_ms, revoked FROM admin_tokens")
                    .map_err(db)?;
                let rows = st
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, bool>(4)?,
                        ))
                    })
                    .map_err(db)?;
                for row in rows {
                    let (id, h, name, created, revoked) = row.map_err(db)?;
                    let token_hash = SecretHash::from_hex(&h).ok_or_else(|| {
                        StateError::Database(format!("admin token {id}: bad hash"))
                    })?;
                    admin_tokens.push(AdminTokenRow {
                        id,
                        name,
                        token_hash,
                        created: from_millis(created),
                        revoked,
                    });
                }
            }
            Ok(Contents {
                generation,
                licenses,
                keys,
                admin_tokens,
            })
        })
    }

    fn insert_license<'a>(&'a self, row: &'a LicenseRow) -> Fut<'a, ()> {
        let l = &row.license;
        let values = (
            l.id.clone(),
            row.secret_hash.to_hex(),
            l.app.clone(),
            l.customer.clone(),
            images_json(l),
            l.expires.map(to_millis),
            l.revoked,
            to_millis(row.created),
        );
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO licenses (id, secret_hash, app, customer, images, expires_ms, revoked, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![values.0, values.1, values.2, values.3, values.4, values.5, values.6, values.7],
            )
            .map_err(db)?;
            bump(&tx)?;
            tx.commit().map_err(db)
        })
    }

    fn update_license<'a>(&'a self, id: &'a str, change: &'a LicenseChange) -> Fut<'a, bool> {
        let id = id.to_string();
        let change = change.clone();
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            let exists = tx
                .query_row("SELECT 1 FROM licenses WHERE id = ?1", params![id], |_| {
                    Ok(())
                })
                .optional()
                .map_err(db)?
                .is_some();
            if !exists {
                return Ok(false);
            }
            if let Some(e) = change.expires {
                tx.execute(
                    "UPDATE licenses SET expires_ms = ?1 WHERE id = ?2",
                    params![e.map(to_millis), id],
                )
                .map_err(db)?;
            }
            if let Some(r) = change.revoked {
                tx.execute(
                    "UPDATE licenses SET revoked = ?1 WHERE id = ?2",
                    params![r, id],
                )
                .map_err(db)?;
            }
            if let Some(h) = change.secret_hash {
                tx.execute(
                    "UPDATE licenses SET secret_hash = ?1 WHERE id = ?2",
                    params![h.to_hex(), id],
                )
                .map_err(db)?;
            }
            if let Some(t) = change.rotated {
                tx.execute(
                    "UPDATE licenses SET rotated_ms = ?1 WHERE id = ?2",
                    params![to_millis(t), id],
                )
                .map_err(db)?;
            }
            if let Some(name) = &change.customer {
                tx.execute(
                    "UPDATE licenses SET customer = ?1 WHERE id = ?2",
                    params![name, id],
                )
                .map_err(db)?;
            }
            bump(&tx)?;
            tx.commit().map_err(db)?;
            Ok(true)
        })
    }

    fn insert_key<'a>(&'a self, row: &'a KeyRow) -> Fut<'a, ()> {
        let k = &row.key;
        let values = (
            k.id.clone(),
            row.key_hash.to_hex(),
            k.name.clone(),
            apps_json(k),
            actions_json(k),
            k.expires.map(to_millis),
            k.revoked,
            to_millis(row.created),
        );
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO api_keys (id, key_hash, name, apps, actions, expires_ms, revoked, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![values.0, values.1, values.2, values.3, values.4, values.5, values.6, values.7],
            )
            .map_err(db)?;
            bump(&tx)?;
            tx.commit().map_err(db)
        })
    }

    fn revoke_key<'a>(&'a self, id: &'a str) -> Fut<'a, bool> {
        let id = id.to_string();
        self.with(move |c| revoke(c, "api_keys", &id))
    }

    fn insert_admin_token<'a>(&'a self, row: &'a AdminTokenRow) -> Fut<'a, ()> {
        let values = (
            row.id.clone(),
            row.token_hash.to_hex(),
            row.name.clone(),
            to_millis(row.created),
            row.revoked,
        );
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute(
                "INSERT INTO admin_tokens (id, token_hash, name, created_ms, revoked) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![values.0, values.1, values.2, values.3, values.4],
            )
            .map_err(db)?;
            bump(&tx)?;
            tx.commit().map_err(db)
        })
    }

    fn revoke_admin_token<'a>(&'a self, id: &'a str) -> Fut<'a, bool> {
        let id = id.to_string();
        self.with(move |c| revoke(c, "admin_tokens", &id))
    }

    fn append_audit<'a>(&'a self, e: &'a AuditEntry) -> Fut<'a, ()> {
        let e = e.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO admin_audit (time_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![to_millis(e.time), e.actor, e.action, e.target, e.detail],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn audit(&self, after: i64, limit: usize) -> Fut<'_, Vec<AuditEntry>> {
        self.with(move |c| {
            let mut st = c
                .prepare("SELECT seq, time_ms, actor, action, target, detail FROM admin_audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(db)?;
            let rows = st
                .query_map(params![after, limit as i64], |r| {
                    Ok(AuditEntry {
                        seq: r.get(0)?,
                        time: from_millis(r.get(1)?),
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        target: r.get(4)?,
                        detail: r.get(5)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn record_usage<'a>(&'a self, batch: &'a UsageBatch) -> Fut<'a, ()> {
        let batch = batch.clone();
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            for p in &batch.pulls {
                tx.execute(
                    "INSERT INTO pulls (time_ms, subject, app, image, reference, digest, client, user_agent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![to_millis(p.time), p.subject, p.app, p.image, p.reference, p.digest, p.client, p.user_agent],
                )
                .map_err(db)?;
            }
            for t in &batch.transfer {
                tx.execute(
                    "INSERT INTO transfer (subject, app, image, day_ms, bytes) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (subject, app, image, day_ms) DO UPDATE SET bytes = bytes + excluded.bytes",
                    params![t.subject, t.app, t.image, to_millis(t.day), t.bytes as i64],
                )
                .map_err(db)?;
            }
            for (id, at) in &batch.keys_used {
                tx.execute(
                    "UPDATE api_keys SET last_used_ms = MAX(COALESCE(last_used_ms, 0), ?1) WHERE id = ?2",
                    params![to_millis(*at), id],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn pulls<'a>(&'a self, q: &'a UsageQuery) -> Fut<'a, Vec<PullEvent>> {
        let q = q.clone();
        self.with(move |c| {
            let (filter, values) = usage_filter(&q, "time_ms");
            let mut st = c
                .prepare(&format!("SELECT time_ms, subject, app, image, reference, digest, client, user_agent FROM pulls WHERE {filter} ORDER BY seq"))
                .map_err(db)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(values), |r| {
                    Ok(PullEvent {
                        time: from_millis(r.get(0)?),
                        subject: r.get(1)?,
                        app: r.get(2)?,
                        image: r.get(3)?,
                        reference: r.get(4)?,
                        digest: r.get(5)?,
                        client: r.get(6)?,
                        user_agent: r.get(7)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn transfer<'a>(&'a self, q: &'a UsageQuery) -> Fut<'a, Vec<Transfer>> {
        let mut q = q.clone();
        // Days start at midnight: a `since` within a day includes that day.
        q.since = q.since.map(super::day_of);
        self.with(move |c| {
            let (filter, values) = usage_filter(&q, "day_ms");
            let mut st = c
                .prepare(&format!("SELECT subject, app, image, day_ms, bytes FROM transfer WHERE {filter} ORDER BY day_ms"))
                .map_err(db)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(values), |r| {
                    Ok(Transfer {
                        subject: r.get(0)?,
                        app: r.get(1)?,
                        image: r.get(2)?,
                        day: from_millis(r.get(3)?),
                        bytes: r.get::<_, i64>(4)?.max(0) as u64,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn last_pulls(&self) -> Fut<'_, Vec<(String, std::time::SystemTime)>> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT subject, MAX(time_ms) FROM pulls GROUP BY subject")
                .map_err(db)?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, from_millis(r.get(1)?))))
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn schema_version(&self) -> Fut<'_, i64> {
        self.with(|c| {
            c.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(db)
        })
    }
}

fn revoke(c: &mut Connection, table: &str, id: &str) -> Result<bool, StateError> {
    let tx = c.transaction().map_err(db)?;
    let n = tx
        .execute(
            &format!("UPDATE {table} SET revoked = 1 WHERE id = ?1"),
            params![id],
        )
        .map_err(db)?;
    if n == 0 {
        return Ok(false);
    }
    bump(&tx)?;
    tx.commit().map_err(db)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    async fn store() -> (tempfile::TempDir, super::SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = super::SqliteStore::open(&dir.path().join("sub/state.db"))
            .await
            .unwrap();
        (dir, s)
    }

    crate::state_suite!(store);

    /// A file a berth of schema 1 wrote is migrated to the current schema at open, its
    /// rows and its hash key kept.
    #[tokio::test]
    async fn a_version_1_file_is_migrated_keeping_its_rows() {
        use crate::state::Store;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)")
                .unwrap();
            c.execute_batch(super::MIGRATIONS[0]).unwrap();
            c.execute_batch(&format!(
                "INSERT INTO meta (key, value) VALUES ('hash_key', '{}');
                 INSERT INTO schema_migrations VALUES (1, 0);
                 INSERT INTO licenses (id, secret_hash, app, customer, images, expires_ms, revoked, created_ms)
                 VALUES ('lic_old', '{}', 'acme', 'Old Co', '[]', NULL, 0, 5);",
                "11".repeat(32),
                "22".repeat(32)
            ))
            .unwrap();
        }
        let s = super::SqliteStore::open(&path).await.unwrap();
        assert_eq!(
            s.schema_version().await.unwrap(),
            super::MIGRATIONS.len() as i64
        );
        let c = s.load().await.unwrap();
        assert_eq!(c.licenses[0].license.customer, "Old Co");
        assert_eq!(c.licenses[0].license.rotated, None);
        assert_eq!(
            s.hasher().hash("x"),
            crate::state::SecretHasher::new(&[0x11; 32]).hash("x")
        );
    }
}
