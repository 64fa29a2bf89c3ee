//! The shared state store: PostgreSQL, for several replicas. The same schema and behaviour as
//! the SQLite store (versioned migrations in `schema_migrations`, run at open under an advisory
//! lock so replicas starting together migrate once; the generation raised in the same
//! transaction as every license, key or admin token write), over two connections that are
//! re-established on the next call after a loss: one the directory polls (`generation`,
//! `load`), one for everything else, so a slow usage report never delays a refresh.
//!
//! TLS to PostgreSQL is not spoken: `sslmode=disable` and the default `prefer` connect in the
//! clear, `sslmode=require` is refused at open rather than quietly not met.

#[cfg(test)]
pub(crate) mod test_server;

mod hosted;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::sqlite::{actions_json, apps_json, images_json, key_of, license_of};
use super::{
    day_of, from_millis, generate, to_millis, AdminTokenRow, AuditEntry, Contents, Fut, KeyRow,
    LicenseChange, LicenseRow, PullEvent, SecretHash, SecretHasher, StateError, Store, Transfer,
    UsageBatch, UsageQuery,
};
use crate::settings::Secret;

type PgError = tokio_postgres::Error;

/// The schema, one entry per version, meaning what `sqlite::MIGRATIONS` means version for
/// version (PostgreSQL's types: booleans, identity columns). A store is migrated by applying
/// the ones it lacks, in order, each in its own transaction. Never edit a released entry: add
/// one, here and in SQLite's list.
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
        revoked BOOLEAN NOT NULL DEFAULT FALSE,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        apps TEXT NOT NULL,
        actions TEXT NOT NULL,
        expires_ms BIGINT,
        revoked BOOLEAN NOT NULL DEFAULT FALSE,
        created_ms BIGINT NOT NULL,
        last_used_ms BIGINT
    );
    CREATE TABLE admin_tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        revoked BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE TABLE admin_audit (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE pulls (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    // 3: the hosted registry's index (`state::hosted`); names that are listed in order are
    // COLLATE "C": byte order, as the spec's lexical order and SQLite's, whatever the
    // database's locale.
    r#"
    CREATE TABLE hosted_repos (
        app TEXT NOT NULL,
        name TEXT NOT NULL,
        full_name TEXT COLLATE "C" NOT NULL UNIQUE,
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
        tag TEXT COLLATE "C" NOT NULL,
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

/// The advisory lock every process holds while it looks at and applies migrations (the
/// bytes of "berth-mi"); advisory locks are per database, so stores in other databases of the
/// same server do not wait for each other.
const MIGRATION_LOCK: i64 = 0x6265_7274_682d_6d69;

/// How long a connection attempt may take when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one call may take before its connection is given up (a server that stopped
/// answering must not hold the directory's refresh forever).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a call runs on its connection.
type Call<'c, T> = Pin<Box<dyn Future<Output = Result<T, PgError>> + Send + 'c>>;

/// The PostgreSQL store. `Debug` names the server, database and user, never the password.
pub struct PostgresStore {
    link: Link,
    /// `generation` and `load`: what every directory polls.
    directory: Lane,
    /// Everything else: control-plane writes, the audit trail, usage.
    control: Lane,
    hasher: SecretHasher,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.link.target)
            .field("database", &self.link.config.get_dbname())
            .field("user", &self.link.config.get_user())
            .finish()
    }
}

/// One connection, made when first needed and again after it was lost. Calls take it out
/// for their duration and put it back only when it is known to be idle and healthy, so a
/// call cancelled or timed out half-way leaves nothing behind: the connection is dropped and
/// the server rolls its transaction back.
type Lane = Mutex<Option<Conn>>;

struct Conn {
    client: Client,
    /// `SELECT value FROM generation`, prepared once: each poll is one round trip.
    generation: Statement,
}

/// How to reach the server, and how to speak of it without the password.
struct Link {
    config: Config,
    /// `host:port` (each of them, when the URL names several).
    target: String,
    /// The password as written in the URL and as decoded, scrubbed from every message.
    secrets: Vec<String>,
}

impl PostgresStore {
    /// Connects, migrates the database (creating the schema in an empty one) and reads the
    /// secret hashing key every replica shares.
    pub async fn open(url: &Secret) -> Result<PostgresStore, StateError> {
        let link = Link::new(url.expose())?;
        let mut client = link.connect().await?;
        link.migrate(&mut client).await?;
        let key: String = client
            .query_one("SELECT value FROM meta WHERE key = 'hash_key'", &[])
            .await
            .map_err(|e| link.error(&e))?
            .get(0);
        let key = SecretHash::from_hex(&key)
            .ok_or_else(|| StateError::Database("meta.hash_key is not 64 hex digits".into()))?;
        let conn = link.prepare(client).await?;
        Ok(PostgresStore {
            link,
            directory: Mutex::new(None),
            control: Mutex::new(Some(conn)),
            hasher: SecretHasher::new(&key.0),
        })
    }

    /// The lane's connection (a new one when there is none or it was lost), with the lane
    /// held until the call puts it back or gives it up.
    async fn take<'s>(
        &'s self,
        lane: &'s Lane,
    ) -> Result<(MutexGuard<'s, Option<Conn>>, Conn), StateError> {
        let mut slot = lane.lock().await;
        let conn = match slot.take() {
            Some(c) if !c.client.is_closed() => c,
            _ => {
                let client = self.link.connect().await?;
                self.link.prepare(client).await?
            }
        };
        Ok((slot, conn))
    }

    /// Runs `f` on `lane`, inside `begin … COMMIT` when `begin` is given. A connection found
    /// lost is replaced and `f` run once more when nothing can have been done yet: any time
    /// for reads (`retry_anywhere`), only when `BEGIN` itself failed for writes.
    fn run<'s, T, F>(
        &'s self,
        lane: &'s Lane,
        begin: Option<&'static str>,
        retry_anywhere: bool,
        f: F,
    ) -> Fut<'s, T>
    where
        T: Send + 's,
        F: for<'c> Fn(&'c Conn) -> Call<'c, T> + Send + Sync + 's,
    {
        Box::pin(async move {
            let mut first = true;
            loop {
                let (mut slot, conn) = self.take(lane).await?;
                let call = async {
                    if let Some(begin) = begin {
                        conn.client
                            .batch_execute(begin)
                            .await
                            .map_err(|e| (true, e))?;
                    }
                    let v = f(&conn).await.map_err(|e| (false, e))?;
                    if begin.is_some() {
                        conn.client
                            .batch_execute("COMMIT")
                            .await
                            .map_err(|e| (false, e))?;
                    }
                    Ok(v)
                };
                let e = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(Ok(v)) => {
                        *slot = Some(conn);
                        return Ok(v);
                    }
                    Ok(Err((at_begin, e))) => {
                        if lost(&e) {
                            // Dropped with `conn`; the next attempt or call connects anew.
                            if first && (retry_anywhere || at_begin) {
                                first = false;
                                continue;
                            }
                        } else if begin.is_none()
                            || conn.client.batch_execute("ROLLBACK").await.is_ok()
                        {
                            *slot = Some(conn);
                        }
                        e
                    }
                    Err(_) => {
                        return Err(StateError::Unavailable(format!(
                            "PostgreSQL at {} did not answer within {}s",
                            self.link.target,
                            CALL_TIMEOUT.as_secs()
                        )))
                    }
                };
                return Err(self.link.error(&e));
            }
        })
    }

    /// A read on the directory's connection.
    fn read_directory<'s, T, F>(&'s self, begin: Option<&'static str>, f: F) -> Fut<'s, T>
    where
        T: Send + 's,
        F: for<'c> Fn(&'c Conn) -> Call<'c, T> + Send + Sync + 's,
    {
        self.run(&self.directory, begin, true, f)
    }

    /// A read on the control connection.
    fn read<'s, T, F>(&'s self, f: F) -> Fut<'s, T>
    where
        T: Send + 's,
        F: for<'c> Fn(&'c Conn) -> Call<'c, T> + Send + Sync + 's,
    {
        self.run(&self.control, None, true, f)
    }

    /// One transaction on the control connection.
    fn write<'s, T, F>(&'s self, f: F) -> Fut<'s, T>
    where
        T: Send + 's,
        F: for<'c> Fn(&'c Conn) -> Call<'c, T> + Send + Sync + 's,
    {
        self.run(&self.control, Some("BEGIN"), false, f)
    }
}

impl Link {
    fn new(url: &str) -> Result<Link, StateError> {
        let mut secrets: Vec<String> = password_in_url(url).into_iter().collect();
        // The driver does not know the verifying modes: refuse them as TLS, not as a typo.
        if let Some(mode @ ("verify-ca" | "verify-full")) = query_value(url, "sslmode") {
            return Err(no_tls(mode));
        }
        let mut config: Config = url.parse().map_err(|e: PgError| {
            StateError::Unavailable(redact(
                &secrets,
                format!("state.postgres: not a PostgreSQL URL: {}", describe(&e)),
            ))
        })?;
        if let Some(p) = config.get_password() {
            secrets.push(String::from_utf8_lossy(p).into_owned());
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a password containing another form is scrubbed whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Prefer => {}
            _ => return Err(no_tls("require")),
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let target = target_of(&config);
        Ok(Link {
            config,
            target,
            secrets,
        })
    }

    async fn connect(&self) -> Result<Client, StateError> {
        // connect_timeout bounds each address; this bounds the whole handshake.
        let limit = CONNECT_TIMEOUT * 2;
        let (client, connection) =
            match tokio::time::timeout(limit, self.config.connect(NoTls)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(StateError::Unavailable(self.redact(format!(
                        "cannot connect to PostgreSQL at {}: {}",
                        self.target,
                        describe(&e)
                    ))))
                }
                Err(_) => {
                    return Err(StateError::Unavailable(format!(
                        "cannot connect to PostgreSQL at {}: no answer within {}s",
                        self.target,
                        limit.as_secs()
                    )))
                }
            };
        let target = self.target.clone();
        let secrets = self.secrets.clone();
        tokio::spawn(async move {
            // The client's calls fail and the next one connects again; this says why.
            if let Err(e) = connection.await {
                let error = redact(&secrets, describe(&e));
                tracing::warn!(server = %target, %error, "PostgreSQL connection lost");
            }
        });
        Ok(client)
    }

    async fn prepare(&self, client: Client) -> Result<Conn, StateError> {
        let generation = client
            .prepare("SELECT value FROM generation")
            .await
            .map_err(|e| self.error(&e))?;
        Ok(Conn { client, generation })
    }

    /// Applies the migrations the database lacks, one transaction each. Every opener takes
    /// the advisory lock first and reads the version under it, so of two replicas starting
    /// at once on an empty database one migrates and the other finds it done.
    async fn migrate(&self, client: &mut Client) -> Result<(), StateError> {
        let known = MIGRATIONS.len() as i64;
        let err = |e: PgError| self.error(&e);
        loop {
            let tx = client.transaction().await.map_err(err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(err)?;
            let exists: bool = tx
                .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
                .await
                .map_err(err)?
                .get(0);
            if !exists {
                tx.batch_execute(
                    "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
                )
                .await
                .map_err(err)?;
            }
            let found: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )
                .await
                .map_err(err)?
                .get(0);
            if found > known {
                return Err(StateError::SchemaTooNew { found, known });
            }
            if found == known {
                return tx.commit().await.map_err(err);
            }
            let version = found + 1;
            tx.batch_execute(MIGRATIONS[found as usize])
                .await
                .map_err(|e| {
                    StateError::Database(
                        self.redact(format!("migration {version} failed: {}", describe(&e))),
                    )
                })?;
            if version == 1 {
                // Made with the schema, so every replica hashes secrets with the same key.
                let key = SecretHash(generate::hash_key()).to_hex();
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('hash_key', $1)",
                    &[&key],
                )
                .await
                .map_err(err)?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)",
                &[&version, &to_millis(SystemTime::now())],
            )
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            tracing::info!(version, "state store migrated");
        }
    }

    /// The store's error for `e`: decided by SQLSTATE and by whether the connection went.
    fn error(&self, e: &PgError) -> StateError {
        if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            return StateError::Conflict("a record with this id or secret".into());
        }
        let message = self.redact(describe(e));
        if lost(e) {
            StateError::Unavailable(format!("PostgreSQL at {}: {message}", self.target))
        } else {
            StateError::Database(message)
        }
    }

    fn redact(&self, message: String) -> String {
        redact(&self.secrets, message)
    }
}

/// Whether `e` means the connection is gone (or never came), rather than a statement failed.
fn lost(e: &PgError) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // 08: connection exceptions; 57P: the server shutting down, crashed, starting, or
        // the database dropped; 53300: no connection slot.
        let c = code.code();
        return c.starts_with("08")
            || c.starts_with("57P")
            || *code == SqlState::TOO_MANY_CONNECTIONS;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// `e` in words: the server's message and SQLSTATE, or the client's error and its causes.
fn describe(e: &PgError) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn redact(secrets: &[String], mut message: String) -> String {
    for s in secrets {
        if message.contains(s.as_str()) {
            message = message.replace(s.as_str(), "<redacted>");
        }
    }
    message
}

/// The refusal of an `sslmode` that needs TLS: better no store than a clear-text one the
/// operator did not ask for.
fn no_tls(mode: &str) -> StateError {
    StateError::Unavailable(format!(
        "state.postgres: sslmode={mode} asks for TLS, which berth does not speak to PostgreSQL; \
         use sslmode=disable (on a network you trust)"
    ))
}

/// The value of query parameter `name` in `url`, as written.
fn query_value<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    url.split_once('?')?.1.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

/// The password as written in `scheme://user:password@host…`, if there is one.
fn password_in_url(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    Some(userinfo.split_once(':')?.1.to_string())
}

/// `host:port` of each server the URL names.
fn target_of(config: &Config) -> String {
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port(i)),
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            Host::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), port(i)),
        })
        .collect();
    if hosts.is_empty() {
        let addrs: Vec<String> = config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, a)| std::net::SocketAddr::new(*a, port(i)).to_string())
            .collect();
        return if addrs.is_empty() {
            format!("localhost:{}", port(0))
        } else {
            addrs.join(",")
        };
    }
    hosts.join(",")
}

async fn bump(c: &Conn) -> Result<(), PgError> {
    c.client
        .execute("UPDATE generation SET value = value + 1", &[])
        .await?;
    Ok(())
}

/// The `WHERE` clause and its values for a usage query (`$N` placeholders).
fn usage_filter(q: &UsageQuery, time_col: &str) -> (String, Vec<Box<dyn ToSql + Send + Sync>>) {
    let mut clauses = vec!["TRUE".to_string()];
    let mut values: Vec<Box<dyn ToSql + Send + Sync>> = Vec::new();
    if let Some(s) = &q.subject {
        values.push(Box::new(s.clone()));
        clauses.push(format!("subject = ${}", values.len()));
    }
    if let Some(a) = &q.app {
        values.push(Box::new(a.clone()));
        clauses.push(format!("app = ${}", values.len()));
    }
    if let Some(t) = q.since {
        values.push(Box::new(to_millis(t)));
        clauses.push(format!("{time_col} >= ${}", values.len()));
    }
    (clauses.join(" AND "), values)
}

fn params(values: &[Box<dyn ToSql + Send + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect()
}

fn license_row(r: &Row) -> Result<LicenseRow, StateError> {
    license_of(
        r.try_get(0).map_err(decode)?,
        r.try_get::<_, &str>(1).map_err(decode)?,
        r.try_get(2).map_err(decode)?,
        r.try_get(3).map_err(decode)?,
        r.try_get::<_, &str>(4).map_err(decode)?,
        r.try_get(5).map_err(decode)?,
        r.try_get(6).map_err(decode)?,
        r.try_get(7).map_err(decode)?,
        r.try_get(8).map_err(decode)?,
    )
}

fn key_row(r: &Row) -> Result<KeyRow, StateError> {
    key_of(
        r.try_get(0).map_err(decode)?,
        r.try_get::<_, &str>(1).map_err(decode)?,
        r.try_get(2).map_err(decode)?,
        r.try_get::<_, &str>(3).map_err(decode)?,
        r.try_get::<_, &str>(4).map_err(decode)?,
        r.try_get(5).map_err(decode)?,
        r.try_get(6).map_err(decode)?,
        r.try_get(7).map_err(decode)?,
        r.try_get(8).map_err(decode)?,
    )
}

fn admin_row(r: &Row) -> Result<AdminTokenRow, StateError> {
    let id: String = r.try_get(0).map_err(decode)?;
    let token_hash = SecretHash::from_hex(r.try_get::<_, &str>(1).map_err(decode)?)
        .ok_or_else(|| StateError::Database(format!("admin token {id}: bad hash")))?;
    Ok(AdminTokenRow {
        id,
        token_hash,
        name: r.try_get(2).map_err(decode)?,
        created: from_millis(r.try_get(3).map_err(decode)?),
        revoked: r.try_get(4).map_err(decode)?,
    })
}

fn decode(e: PgError) -> StateError {
    StateError::Database(describe(&e))
}

impl Store for PostgresStore {
    fn hasher(&self) -> &SecretHasher {
        &self.hasher
    }

    fn generation(&self) -> Fut<'_, i64> {
        self.read_directory(None, |c| {
            Box::pin(async move { c.client.query_one(&c.generation, &[]).await?.try_get(0) })
        })
    }

    fn load(&self) -> Fut<'_, Contents> {
        // One snapshot: the generation and the rows agree.
        let rows = self.read_directory(
            Some("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
            |c| {
                Box::pin(async move {
                    let generation: i64 = c.client.query_one(&c.generation, &[]).await?.try_get(0)?;
                    let licenses = c
                        .client
                        .query("SELECT id, secret_hash, app, customer, images, expires_ms, revoked, created_ms, rotated_ms FROM licenses", &[])
                        .await?;
                    let keys = c
                        .client
                        .query("SELECT id, key_hash, name, apps, actions, expires_ms, revoked, created_ms, last_used_ms FROM api_keys", &[])
                        .await?;
                    let admin = c
                        .client
                        .query("SELECT id, token_hash, name, created_ms, revoked FROM admin_tokens", &[])
                        .await?;
                    Ok((generation, licenses, keys, admin))
                })
            },
        );
        Box::pin(async move {
            let (generation, licenses, keys, admin) = rows.await?;
            Ok(Contents {
                generation,
                licenses: licenses.iter().map(license_row).collect::<Result<_, _>>()?,
                keys: keys.iter().map(key_row).collect::<Result<_, _>>()?,
                admin_tokens: admin.iter().map(admin_row).collect::<Result<_, _>>()?,
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
        self.write(move |c| {
            let v = values.clone();
            Box::pin(async move {
                c.client
                    .execute(
                        "INSERT INTO licenses (id, secret_hash, app, customer, images, expires_ms, revoked, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[&v.0, &v.1, &v.2, &v.3, &v.4, &v.5, &v.6, &v.7],
                    )
                    .await?;
                bump(c).await
            })
        })
    }

    fn update_license<'a>(&'a self, id: &'a str, change: &'a LicenseChange) -> Fut<'a, bool> {
        self.write(move |c| {
            let id = id.to_string();
            let change = change.clone();
            Box::pin(async move {
                // Locks the row: concurrent changes to one license apply one after the other.
                let found = c
                    .client
                    .query_opt("SELECT 1 FROM licenses WHERE id = $1 FOR UPDATE", &[&id])
                    .await?;
                if found.is_none() {
                    return Ok(false);
                }
                if let Some(e) = change.expires {
                    c.client
                        .execute(
                            "UPDATE licenses SET expires_ms = $1 WHERE id = $2",
                            &[&e.map(to_millis), &id],
                        )
                        .await?;
                }
                if let Some(r) = change.revoked {
                    c.client
                        .execute("UPDATE licenses SET revoked = $1 WHERE id = $2", &[&r, &id])
                        .await?;
                }
                if let Some(h) = change.secret_hash {
                    c.client
                        .execute(
                            "UPDATE licenses SET secret_hash = $1 WHERE id = $2",
                            &[&h.to_hex(), &id],
                        )
                        .await?;
                }
                if let Some(t) = change.rotated {
                    c.client
                        .execute(
                            "UPDATE licenses SET rotated_ms = $1 WHERE id = $2",
                            &[&to_millis(t), &id],
                        )
                        .await?;
                }
                if let Some(name) = &change.customer {
                    c.client
                        .execute(
                            "UPDATE licenses SET customer = $1 WHERE id = $2",
                            &[name, &id],
                        )
                        .await?;
                }
                bump(c).await?;
                Ok(true)
            })
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
        self.write(move |c| {
            let v = values.clone();
            Box::pin(async move {
                c.client
                    .execute(
                        "INSERT INTO api_keys (id, key_hash, name, apps, actions, expires_ms, revoked, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[&v.0, &v.1, &v.2, &v.3, &v.4, &v.5, &v.6, &v.7],
                    )
                    .await?;
                bump(c).await
            })
        })
    }

    fn revoke_key<'a>(&'a self, id: &'a str) -> Fut<'a, bool> {
        self.write(move |c| {
            let id = id.to_string();
            Box::pin(revoke(
                c,
                "UPDATE api_keys SET revoked = TRUE WHERE id = $1",
                id,
            ))
        })
    }

    fn insert_admin_token<'a>(&'a self, row: &'a AdminTokenRow) -> Fut<'a, ()> {
        let values = (
            row.id.clone(),
            row.token_hash.to_hex(),
            row.name.clone(),
            to_millis(row.created),
            row.revoked,
        );
        self.write(move |c| {
            let v = values.clone();
            Box::pin(async move {
                c.client
                    .execute(
                        "INSERT INTO admin_tokens (id, token_hash, name, created_ms, revoked) VALUES ($1, $2, $3, $4, $5)",
                        &[&v.0, &v.1, &v.2, &v.3, &v.4],
                    )
                    .await?;
                bump(c).await
            })
        })
    }

    fn revoke_admin_token<'a>(&'a self, id: &'a str) -> Fut<'a, bool> {
        self.write(move |c| {
            let id = id.to_string();
            Box::pin(revoke(
                c,
                "UPDATE admin_tokens SET revoked = TRUE WHERE id = $1",
                id,
            ))
        })
    }

    fn append_audit<'a>(&'a self, e: &'a AuditEntry) -> Fut<'a, ()> {
        self.write(move |c| {
            let e = e.clone();
            Box::pin(async move {
                c.client
                    .execute(
                        "INSERT INTO admin_audit (time_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
                        &[&to_millis(e.time), &e.actor, &e.action, &e.target, &e.detail],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn audit(&self, after: i64, limit: usize) -> Fut<'_, Vec<AuditEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        "SELECT seq, time_ms, actor, action, target, detail FROM admin_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&after, &limit],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(AuditEntry {
                            seq: r.try_get(0)?,
                            time: from_millis(r.try_get(1)?),
                            actor: r.try_get(2)?,
                            action: r.try_get(3)?,
                            target: r.try_get(4)?,
                            detail: r.try_get(5)?,
                        })
                    })
                    .collect()
            })
        })
    }

    fn record_usage<'a>(&'a self, batch: &'a UsageBatch) -> Fut<'a, ()> {
        self.write(move |c| {
            let batch = batch.clone();
            Box::pin(async move {
                if !batch.pulls.is_empty() {
                    let st = c
                        .client
                        .prepare("INSERT INTO pulls (time_ms, subject, app, image, reference, digest, client, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                        .await?;
                    for p in &batch.pulls {
                        c.client
                            .execute(
                                &st,
                                &[&to_millis(p.time), &p.subject, &p.app, &p.image, &p.reference, &p.digest, &p.client, &p.user_agent],
                            )
                            .await?;
                    }
                }
                if !batch.transfer.is_empty() {
                    let st = c
                        .client
                        .prepare(
                            "INSERT INTO transfer (subject, app, image, day_ms, bytes) VALUES ($1, $2, $3, $4, $5)
                             ON CONFLICT (subject, app, image, day_ms) DO UPDATE SET bytes = transfer.bytes + excluded.bytes",
                        )
                        .await?;
                    for t in &batch.transfer {
                        let bytes = i64::try_from(t.bytes).unwrap_or(i64::MAX);
                        c.client
                            .execute(&st, &[&t.subject, &t.app, &t.image, &to_millis(t.day), &bytes])
                            .await?;
                    }
                }
                for (id, at) in &batch.keys_used {
                    c.client
                        .execute(
                            "UPDATE api_keys SET last_used_ms = GREATEST(COALESCE(last_used_ms, 0), $1) WHERE id = $2",
                            &[&to_millis(*at), id],
                        )
                        .await?;
                }
                Ok(())
            })
        })
    }

    fn pulls<'a>(&'a self, q: &'a UsageQuery) -> Fut<'a, Vec<PullEvent>> {
        self.read(move |c| {
            let (filter, values) = usage_filter(q, "time_ms");
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        &format!("SELECT time_ms, subject, app, image, reference, digest, client, user_agent FROM pulls WHERE {filter} ORDER BY seq"),
                        &params(&values),
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(PullEvent {
                            time: from_millis(r.try_get(0)?),
                            subject: r.try_get(1)?,
                            app: r.try_get(2)?,
                            image: r.try_get(3)?,
                            reference: r.try_get(4)?,
                            digest: r.try_get(5)?,
                            client: r.try_get(6)?,
                            user_agent: r.try_get(7)?,
                        })
                    })
                    .collect()
            })
        })
    }

    fn transfer<'a>(&'a self, q: &'a UsageQuery) -> Fut<'a, Vec<Transfer>> {
        let mut q = q.clone();
        // Days start at midnight: a `since` within a day includes that day.
        q.since = q.since.map(day_of);
        self.read(move |c| {
            let (filter, values) = usage_filter(&q, "day_ms");
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        &format!("SELECT subject, app, image, day_ms, bytes FROM transfer WHERE {filter} ORDER BY day_ms"),
                        &params(&values),
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(Transfer {
                            subject: r.try_get(0)?,
                            app: r.try_get(1)?,
                            image: r.try_get(2)?,
                            day: from_millis(r.try_get(3)?),
                            bytes: r.try_get::<_, i64>(4)?.max(0) as u64,
                        })
                    })
                    .collect()
            })
        })
    }

    fn last_pulls(&self) -> Fut<'_, Vec<(String, SystemTime)>> {
        self.read(|c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        "SELECT subject, MAX(time_ms) FROM pulls GROUP BY subject",
                        &[],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, from_millis(r.try_get(1)?))))
                    .collect()
            })
        })
    }

    fn schema_version(&self) -> Fut<'_, i64> {
        self.read(|c| {
            Box::pin(async move {
                c.client
                    .query_one(
                        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                        &[],
                    )
                    .await?
                    .try_get(0)
            })
        })
    }
}

async fn revoke(c: &Conn, sql: &'static str, id: String) -> Result<bool, PgError> {
    let n = c.client.execute(sql, &[&id]).await?;
    if n == 0 {
        return Ok(false);
    }
    bump(c).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use super::test_server::Postgres;
    use super::*;
    use crate::state::suite as fixtures;

    /// One server for this module's tests (started by the first that needs it, stopped when
    /// the test process ends), each test in a database of its own.
    fn server() -> &'static Postgres {
        static SERVER: OnceLock<Postgres> = OnceLock::new();
        SERVER.get_or_init(Postgres::start)
    }

    /// A new, empty database's name and URL.
    fn fresh(what: &str) -> (String, String) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{what}_{}", N.fetch_add(1, Ordering::Relaxed));
        let url = server().fresh_database(&name);
        (name, url)
    }

    async fn open(url: &str) -> Result<PostgresStore, StateError> {
        PostgresStore::open(&Secret::new(url)).await
    }

    async fn store() -> ((), PostgresStore) {
        let (_, url) = fresh("suite");
        ((), open(&url).await.expect("open a fresh database"))
    }

    crate::state_suite!(store);

    /// The open error's message, which must name `what` and never the password `secret`.
    fn unavailable(r: Result<PostgresStore, StateError>, secret: &str) -> String {
        let e = r.expect_err("open must fail");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(secret), "the password leaked: {shown}");
        match e {
            StateError::Unavailable(m) => m,
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_empty_database_is_migrated_once_and_a_reopen_applies_nothing() {
        let (db, url) = fresh("migrate");
        let a = open(&url).await.unwrap();
        assert_eq!(a.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
        let applied = server().psql(&db, "SELECT version, applied_ms FROM schema_migrations");
        assert_eq!(applied.lines().count(), MIGRATIONS.len(), "{applied}");
        let key = server().psql(&db, "SELECT value FROM meta WHERE key = 'hash_key'");
        assert_eq!(key.len(), 64, "{key}");

        let b = open(&url).await.unwrap();
        assert_eq!(
            server().psql(&db, "SELECT version, applied_ms FROM schema_migrations"),
            applied,
            "the second open ran a migration again"
        );
        assert_eq!(
            server().psql(&db, "SELECT value FROM meta WHERE key = 'hash_key'"),
            key
        );
        // Both hash with the key the database holds: a secret one makes is found by the other.
        assert_eq!(
            a.hasher().hash("berth_lic_x"),
            b.hasher().hash("berth_lic_x")
        );
        a.insert_license(&fixtures::license("lic_m", a.hasher(), "berth_lic_x"))
            .await
            .unwrap();
        let seen = b.load().await.unwrap();
        assert_eq!(seen.licenses[0].secret_hash, b.hasher().hash("berth_lic_x"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_opening_an_empty_database_at_once_migrate_it_once() {
        let (db, url) = fresh("race");
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { open(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for o in opens {
            stores.push(o.await.unwrap().expect("every replica opens"));
        }
        assert_eq!(
            server().psql(&db, "SELECT count(*) FROM schema_migrations"),
            MIGRATIONS.len().to_string()
        );
        assert_eq!(server().psql(&db, "SELECT count(*) FROM meta"), "1");
        assert_eq!(server().psql(&db, "SELECT count(*) FROM generation"), "1");
        let h = stores[0].hasher().hash("s");
        assert!(stores.iter().all(|s| s.hasher().hash("s") == h));
    }

    #[tokio::test]
    async fn a_schema_newer_than_this_berth_is_refused() {
        let (db, url) = fresh("newer");
        drop(open(&url).await.unwrap());
        server().psql(
            &db,
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (7, 0)",
        );
        let e = open(&url).await.unwrap_err();
        assert!(
            matches!(e, StateError::SchemaTooNew { found: 7, known } if known == MIGRATIONS.len() as i64),
            "{e:?}"
        );
    }

    /// The backends serving database `db`, one pid a line.
    fn backends(db: &str) -> Vec<String> {
        let out = server().psql(
            "postgres",
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid() ORDER BY pid"
            ),
        );
        out.lines().map(str::to_string).collect()
    }

    #[tokio::test]
    async fn a_terminated_connection_is_replaced_on_the_next_call() {
        let (db, url) = fresh("terminated");
        let s = open(&url).await.unwrap();
        // Both connections in use: the directory's and the control one.
        let g = s.generation().await.unwrap();
        s.insert_license(&fixtures::license("lic_1", s.hasher(), "one"))
            .await
            .unwrap();
        let before = backends(&db);
        assert_eq!(before.len(), 2, "{before:?}");
        // Waits (up to 5 s) until each backend is gone.
        server().psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            ),
        );
        assert!(backends(&db).is_empty());

        assert_ne!(s.generation().await.unwrap(), g);
        s.insert_license(&fixtures::license("lic_2", s.hasher(), "two"))
            .await
            .unwrap();
        assert_eq!(s.load().await.unwrap().licenses.len(), 2);
        let after = backends(&db);
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(
            after.iter().all(|p| !before.contains(p)),
            "{before:?} {after:?}"
        );
    }

    #[tokio::test]
    async fn a_restarted_server_is_reconnected_to() {
        // A server of its own: the restart cuts every connection to it.
        let pg = Postgres::start();
        let s = open(&pg.url()).await.unwrap();
        let g = s.generation().await.unwrap();
        s.append_audit(&AuditEntry {
            seq: 0,
            time: SystemTime::now(),
            actor: "ops".into(),
            action: "license.create".into(),
            target: "lic_r".into(),
            detail: "{}".into(),
        })
        .await
        .unwrap();
        pg.restart();
        assert_eq!(s.generation().await.unwrap(), g);
        s.insert_key(&fixtures::key("key_r", s.hasher(), "berth_key_r"))
            .await
            .unwrap();
        assert_eq!(s.audit(0, 10).await.unwrap().len(), 1);
        assert_eq!(s.load().await.unwrap().keys.len(), 1);
    }

    #[tokio::test]
    async fn duplicate_secrets_conflict_like_duplicate_ids() {
        let (_, url) = fresh("conflict");
        let s = open(&url).await.unwrap();
        s.insert_license(&fixtures::license("lic_a", s.hasher(), "same"))
            .await
            .unwrap();
        let g = s.generation().await.unwrap();
        let again = s
            .insert_license(&fixtures::license("lic_b", s.hasher(), "same"))
            .await;
        assert!(matches!(again, Err(StateError::Conflict(_))), "{again:?}");
        s.insert_key(&fixtures::key("key_a", s.hasher(), "k"))
            .await
            .unwrap();
        let again = s.insert_key(&fixtures::key("key_b", s.hasher(), "k")).await;
        assert!(matches!(again, Err(StateError::Conflict(_))), "{again:?}");
        // The failed transactions were rolled back and the connection is usable.
        assert_eq!(s.load().await.unwrap().licenses.len(), 1);
        assert_ne!(s.generation().await.unwrap(), g);
    }

    #[tokio::test]
    async fn the_password_is_in_no_debug_and_no_error() {
        let pg = server();
        let (_, url) = fresh("redact");
        let s = open(&url).await.unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains(pg.password()), "{debug}");
        assert!(
            debug.contains(&format!("127.0.0.1:{}", pg.port())),
            "{debug}"
        );

        // Nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let canary = "pw-canary-5d1e";
        let m = unavailable(
            open(&format!(
                "postgres://berth:{canary}@127.0.0.1:{port}/db?sslmode=disable"
            ))
            .await,
            canary,
        );
        assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");

        // The server is there; the password is wrong (percent-encoded in the URL).
        let m = unavailable(
            open(&format!(
                "postgres://berth:{canary}%2Fx@127.0.0.1:{}/postgres?sslmode=disable",
                pg.port()
            ))
            .await,
            canary,
        );
        assert!(m.contains(&format!("127.0.0.1:{}", pg.port())), "{m}");
        assert!(m.contains("28P01"), "the server's reason is kept: {m}");

        // Not a URL the driver takes.
        unavailable(
            open(&format!("postgres://berth:{canary}@127.0.0.1:x/db")).await,
            canary,
        );
    }

    #[tokio::test]
    async fn sslmode_require_is_refused_not_downgraded() {
        let pg = server();
        let url = format!(
            "postgres://berth:{}@127.0.0.1:{}/berth?sslmode=require",
            pg.password(),
            pg.port()
        );
        let m = unavailable(open(&url).await, pg.password());
        assert!(
            m.contains("state.postgres") && m.contains("sslmode=require"),
            "{m}"
        );
    }

    /// `cargo test --lib state::postgres::tests::timing -- --ignored --nocapture`: the
    /// directory's round trips against a local server, printed (the numbers depend on the
    /// machine, so nothing is asserted).
    #[tokio::test]
    #[ignore]
    async fn timing() {
        let (_, url) = fresh("timing");
        let s = open(&url).await.unwrap();
        for i in 0..1000 {
            s.insert_license(&fixtures::license(
                &format!("lic_{i}"),
                s.hasher(),
                &format!("s{i}"),
            ))
            .await
            .unwrap();
        }
        s.generation().await.unwrap();
        let n = 1000u32;
        let t = std::time::Instant::now();
        for _ in 0..n {
            s.generation().await.unwrap();
        }
        let per_generation = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(s.load().await.unwrap().licenses.len(), 1000);
        }
        let per_load = t.elapsed() / 20;
        println!(
            "generation(): {per_generation:?} per call; load() of 1000 licenses: {per_load:?}"
        );
    }
}
