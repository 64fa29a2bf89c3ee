//! The hosted registry's index in the PostgreSQL store (the tables of migration 3), with the
//! semantics of the SQLite one (`state::sqlite::hosted`), run on the control connection
//! through `PostgresStore::read`/`write` like every other call.
//!
//! Isolation: the default READ COMMITTED, which keeps the touch rule of `state::hosted`
//! because every check a push relies on is a row-locking `UPDATE … SET touched_ms` whose row
//! count is the answer, and every collection delete is one `DELETE … WHERE touched_ms <
//! cutoff AND NOT EXISTS (…)`. A push's UPDATE and a collection's DELETE of the same row wait
//! for each other on its lock: a DELETE that comes second re-evaluates its WHERE against the
//! row the push touched and skips it; an UPDATE that comes second finds the row gone and the
//! push is refused. Only the repository row needs more (see `ensure_repo` and `gc_delete`).
//!
//! Lock order, so that a push and a collection on different replicas do not deadlock each
//! other: manifest rows, then blob rows, then the repository row, in every transaction.

use std::collections::HashMap;
use std::time::SystemTime;

use tokio_postgres::Row;

use super::{Conn, PgError, PostgresStore};
use crate::state::hosted::{
    GcDeleted, GcManifest, GcRepo, HostedIndex, ManifestRow, NewManifest, PutManifest,
};
use crate::state::{from_millis, to_millis, Fut, StateError};

const MANIFEST_COLUMNS: &str =
    "m.digest, m.media_type, m.artifact_type, m.subject, m.size, m.annotations, m.touched_ms";

fn manifest_row(r: &Row) -> Result<ManifestRow, PgError> {
    Ok(ManifestRow {
        digest: r.try_get(0)?,
        media_type: r.try_get(1)?,
        artifact_type: r.try_get(2)?,
        subject: r.try_get(3)?,
        size: size_of(r.try_get(4)?),
        annotations: r.try_get(5)?,
        touched: from_millis(r.try_get(6)?),
    })
}

/// A size as stored (BIGINT): a size above `i64::MAX` cannot be written, so it is refused
/// before the call rather than wrapped into a negative number.
fn bigint(size: u64) -> Result<i64, StateError> {
    i64::try_from(size)
        .map_err(|_| StateError::Database(format!("a size of {size} bytes does not fit a BIGINT")))
}

/// A size as read: never negative when written by `bigint`, clamped if a hand edit made it so.
fn size_of(v: i64) -> u64 {
    v.max(0) as u64
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Creates the repository, or locks its row when it exists: the lock makes a collection that
/// is about to remove the repository as empty wait for this transaction and then see the
/// link it adds (see `gc_delete`). A no-op `DO UPDATE` rather than `DO NOTHING`, which would
/// lock nothing. Run last in a push, after its manifest and blob rows (the lock order).
async fn ensure_repo(c: &Conn, app: &str, repo: &str, now: i64) -> Result<(), PgError> {
    c.client
        .execute(
            "INSERT INTO hosted_repos (app, name, full_name, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (app, name) DO UPDATE SET created_ms = hosted_repos.created_ms",
            &[&app, &repo, &format!("{app}/{repo}"), &now],
        )
        .await?;
    Ok(())
}

/// Undoes what a refused push did so far (its touches, the manifest row), leaving an empty
/// transaction for `run` to commit: a refusal changes nothing, as in SQLite.
async fn refuse(c: &Conn, why: PutManifest) -> Result<PutManifest, PgError> {
    c.client.batch_execute("ROLLBACK; BEGIN").await?;
    Ok(why)
}

async fn put_manifest(
    c: &Conn,
    app: &str,
    repo: &str,
    m: &NewManifest,
    size: i64,
) -> Result<PutManifest, PgError> {
    let now = to_millis(SystemTime::now());
    let r = &m.row;
    // The manifest's own row first (the lock order: a collection removing it together with
    // its blobs takes the manifest row, then the blobs').
    c.client
        .execute(
            "INSERT INTO hosted_manifests
                (app, repo, digest, media_type, artifact_type, subject, size, annotations, touched_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (app, repo, digest) DO UPDATE SET touched_ms = excluded.touched_ms",
            &[
                &app,
                &repo,
                &r.digest,
                &r.media_type,
                &r.artifact_type,
                &r.subject,
                &size,
                &r.annotations,
                &now,
            ],
        )
        .await?;
    // Each check is the touch itself: a row-locking UPDATE whose count says whether the row
    // is (still) there. A collection deleting it concurrently either waits for this
    // transaction and then skips the freshly touched row, or deletes it first and this finds
    // nothing.
    for b in &m.blobs {
        let n = c
            .client
            .execute(
                "UPDATE hosted_blobs SET touched_ms = $4 WHERE app = $1 AND repo = $2 AND digest = $3",
                &[&app, &repo, b, &now],
            )
            .await?;
        if n == 0 {
            return refuse(c, PutManifest::BlobUnknown(b.clone())).await;
        }
    }
    let touch =
        "UPDATE hosted_manifests SET touched_ms = $4 WHERE app = $1 AND repo = $2 AND digest = $3";
    for child in &m.children {
        if c.client.execute(touch, &[&app, &repo, child, &now]).await? == 0 {
            return refuse(c, PutManifest::ManifestUnknown(child.clone())).await;
        }
    }
    // A subject keeps its referrers' company: touched so a collection that planned to
    // remove it before this referrer arrived does not.
    if let Some(s) = &r.subject {
        c.client.execute(touch, &[&app, &repo, s, &now]).await?;
    }
    for target in m.blobs.iter().chain(&m.children) {
        c.client
            .execute(
                "INSERT INTO hosted_refs (app, repo, manifest, target) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
                &[&app, &repo, &r.digest, target],
            )
            .await?;
    }
    if let Some(tag) = &m.tag {
        // The immutability check and the write are one statement: ON CONFLICT DO UPDATE
        // locks the existing row even when its WHERE declines, so two pushes to a new
        // immutable tag cannot both pass a check made before either wrote (READ COMMITTED
        // would let a separate SELECT see no tag in both).
        let moved = c
            .client
            .query_opt(
                "INSERT INTO hosted_tags (app, repo, tag, digest, updated_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (app, repo, tag) DO UPDATE
                   SET digest = excluded.digest, updated_ms = excluded.updated_ms
                   WHERE $6 OR hosted_tags.digest = excluded.digest
                 RETURNING 1",
                &[&app, &repo, tag, &r.digest, &now, &m.tag_mutable],
            )
            .await?;
        if moved.is_none() {
            // Locked by the statement above: what it points at cannot change meanwhile.
            let current: String = c
                .client
                .query_one(
                    "SELECT digest FROM hosted_tags WHERE app = $1 AND repo = $2 AND tag = $3",
                    &[&app, &repo, tag],
                )
                .await?
                .try_get(0)?;
            return refuse(c, PutManifest::TagImmutable(current)).await;
        }
    }
    ensure_repo(c, app, repo, now).await?;
    Ok(PutManifest::Stored)
}

/// Records a digest a delete released, for collection to free (in the same transaction).
async fn release(c: &Conn, digest: &str, manifest: bool) -> Result<(), PgError> {
    c.client
        .execute(
            "INSERT INTO hosted_released (digest, manifest, released_ms) VALUES ($1, $2, $3)
             ON CONFLICT (digest, manifest) DO UPDATE SET released_ms = excluded.released_ms",
            &[&digest, &manifest, &to_millis(SystemTime::now())],
        )
        .await?;
    Ok(())
}

/// The tags and references of manifests just deleted (in the same transaction).
async fn forget_manifests(
    c: &Conn,
    app: &str,
    repo: &str,
    digests: &[String],
) -> Result<(), PgError> {
    c.client
        .execute(
            "DELETE FROM hosted_tags WHERE app = $1 AND repo = $2 AND digest = ANY($3)",
            &[&app, &repo, &digests],
        )
        .await?;
    c.client
        .execute(
            "DELETE FROM hosted_refs WHERE app = $1 AND repo = $2 AND manifest = ANY($3)",
            &[&app, &repo, &digests],
        )
        .await?;
    Ok(())
}

/// `wanted` in its own order, without repeats, keeping those `done` holds (what a
/// `RETURNING` gave back, in no particular order).
fn in_order(wanted: &[String], done: Vec<Row>) -> Result<Vec<String>, PgError> {
    let mut done = done
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<std::collections::HashSet<_>, _>>()?;
    Ok(wanted
        .iter()
        .filter(|d| done.remove(d.as_str()))
        .cloned()
        .collect())
}

async fn gc_delete(
    c: &Conn,
    app: &str,
    repo: &str,
    manifests: &[String],
    blobs: &[String],
    cutoff: i64,
) -> Result<GcDeleted, PgError> {
    let mut out = GcDeleted::default();
    // Each a single DELETE whose WHERE holds the whole rule: a row a push touched meanwhile
    // is locked by it, and once the push commits, PostgreSQL re-evaluates this WHERE on the
    // touched row (READ COMMITTED's recheck) and skips it.
    if !manifests.is_empty() {
        let rows = c
            .client
            .query(
                "DELETE FROM hosted_manifests m WHERE m.app = $1 AND m.repo = $2 AND m.digest = ANY($3)
                   AND m.touched_ms < $4
                   AND NOT EXISTS (SELECT 1 FROM hosted_tags t
                                   WHERE t.app = m.app AND t.repo = m.repo AND t.digest = m.digest)
                 RETURNING m.digest",
                &[&app, &repo, &manifests, &cutoff],
            )
            .await?;
        out.manifests = in_order(manifests, rows)?;
        if !out.manifests.is_empty() {
            forget_manifests(c, app, repo, &out.manifests).await?;
        }
    }
    if !blobs.is_empty() {
        // Sees the references removed just above: a blob only those manifests used goes too.
        let rows = c
            .client
            .query(
                "DELETE FROM hosted_blobs b WHERE b.app = $1 AND b.repo = $2 AND b.digest = ANY($3)
                   AND b.touched_ms < $4
                   AND NOT EXISTS (SELECT 1 FROM hosted_refs r
                                   WHERE r.app = b.app AND r.repo = b.repo AND r.target = b.digest)
                 RETURNING b.digest",
                &[&app, &repo, &blobs, &cutoff],
            )
            .await?;
        out.blobs = in_order(blobs, rows)?;
    }
    // A repository left with nothing leaves the catalog. Its row is locked first, in a
    // statement of its own: a push linking into it holds that lock (`ensure_repo`) until it
    // commits, and the DELETE after it then runs on a snapshot taken once the lock is ours,
    // which sees the push's rows. (A recheck of the DELETE alone would not: its NOT EXISTS
    // subqueries keep the snapshot from before the wait.)
    c.client
        .execute(
            "SELECT 1 FROM hosted_repos WHERE app = $1 AND name = $2 FOR UPDATE",
            &[&app, &repo],
        )
        .await?;
    c.client
        .execute(
            "DELETE FROM hosted_repos WHERE app = $1 AND name = $2 AND created_ms < $3
               AND NOT EXISTS (SELECT 1 FROM hosted_blobs WHERE app = $1 AND repo = $2)
               AND NOT EXISTS (SELECT 1 FROM hosted_manifests WHERE app = $1 AND repo = $2)",
            &[&app, &repo, &cutoff],
        )
        .await?;
    Ok(out)
}

/// Everything collection marks from, read in one REPEATABLE READ snapshot so the
/// repositories, manifests, references, tags and blobs agree.
async fn gc_repos(c: &Conn, app: Option<&str>) -> Result<Vec<GcRepo>, PgError> {
    let mut repos: Vec<GcRepo> = Vec::new();
    let mut index = HashMap::new();
    for r in c
        .client
        .query(
            "SELECT app, name FROM hosted_repos WHERE $1::text IS NULL OR app = $1 ORDER BY full_name",
            &[&app],
        )
        .await?
    {
        let (a, n): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        index.insert((a.clone(), n.clone()), repos.len());
        repos.push(GcRepo {
            app: a,
            repo: n,
            ..GcRepo::default()
        });
    }
    let mut manifests = HashMap::new();
    for r in c
        .client
        .query(
            "SELECT app, repo, digest, size, subject, touched_ms FROM hosted_manifests
             WHERE $1::text IS NULL OR app = $1",
            &[&app],
        )
        .await?
    {
        let m = GcManifest {
            digest: r.try_get(2)?,
            size: size_of(r.try_get(3)?),
            subject: r.try_get(4)?,
            touched: from_millis(r.try_get(5)?),
            refs: Vec::new(),
        };
        let key: (String, String, String) = (r.try_get(0)?, r.try_get(1)?, m.digest.clone());
        manifests.insert(key, m);
    }
    for r in c
        .client
        .query(
            "SELECT app, repo, manifest, target FROM hosted_refs WHERE $1::text IS NULL OR app = $1",
            &[&app],
        )
        .await?
    {
        let key: (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if let Some(m) = manifests.get_mut(&key) {
            m.refs.push(r.try_get(3)?);
        }
    }
    for ((a, n, _), m) in manifests {
        if let Some(&i) = index.get(&(a, n)) {
            repos[i].manifests.push(m);
        }
    }
    for r in c
        .client
        .query(
            "SELECT app, repo, tag, digest FROM hosted_tags WHERE $1::text IS NULL OR app = $1",
            &[&app],
        )
        .await?
    {
        let key: (String, String) = (r.try_get(0)?, r.try_get(1)?);
        if let Some(&i) = index.get(&key) {
            repos[i].tags.push((r.try_get(2)?, r.try_get(3)?));
        }
    }
    for r in c
        .client
        .query(
            "SELECT app, repo, digest, size, touched_ms FROM hosted_blobs WHERE $1::text IS NULL OR app = $1",
            &[&app],
        )
        .await?
    {
        let key: (String, String) = (r.try_get(0)?, r.try_get(1)?);
        if let Some(&i) = index.get(&key) {
            repos[i].blobs.push((
                r.try_get(2)?,
                size_of(r.try_get(3)?),
                from_millis(r.try_get(4)?),
            ));
        }
    }
    // Byte order, sorted here (Rust's `String` order) rather than by the database's collation.
    for r in &mut repos {
        r.manifests.sort_by(|a, b| a.digest.cmp(&b.digest));
        r.tags.sort();
        r.blobs.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(repos)
}

impl HostedIndex for PostgresStore {
    fn link_blob<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        digest: &'a str,
        size: u64,
    ) -> Fut<'a, ()> {
        Box::pin(async move {
            let size = bigint(size)?;
            self.write(move |c| {
                let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
                Box::pin(async move {
                    let now = to_millis(SystemTime::now());
                    // The blob row before the repository row (the lock order).
                    c.client
                        .execute(
                            "INSERT INTO hosted_blobs (app, repo, digest, size, touched_ms) VALUES ($1, $2, $3, $4, $5)
                             ON CONFLICT (app, repo, digest) DO UPDATE SET touched_ms = excluded.touched_ms",
                            &[&app, &repo, &digest, &size, &now],
                        )
                        .await?;
                    ensure_repo(c, &app, &repo, now).await
                })
            })
            .await
        })
    }

    fn blob<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, Option<u64>> {
        self.read(move |c| {
            let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
            Box::pin(async move {
                let row = c
                    .client
                    .query_opt(
                        "SELECT size FROM hosted_blobs WHERE app = $1 AND repo = $2 AND digest = $3",
                        &[&app, &repo, &digest],
                    )
                    .await?;
                row.map(|r| r.try_get(0).map(size_of)).transpose()
            })
        })
    }

    fn app_has_blob<'a>(&'a self, app: &'a str, digest: &'a str) -> Fut<'a, bool> {
        self.read(move |c| {
            let (app, digest) = (app.to_string(), digest.to_string());
            Box::pin(async move {
                c.client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM hosted_blobs WHERE app = $1 AND digest = $2)",
                        &[&app, &digest],
                    )
                    .await?
                    .try_get(0)
            })
        })
    }

    fn unlink_blob<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, bool> {
        self.write(move |c| {
            let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
            Box::pin(async move {
                let n = c
                    .client
                    .execute(
                        "DELETE FROM hosted_blobs WHERE app = $1 AND repo = $2 AND digest = $3",
                        &[&app, &repo, &digest],
                    )
                    .await?;
                if n > 0 {
                    release(c, &digest, false).await?;
                }
                Ok(n > 0)
            })
        })
    }

    fn linked_anywhere<'a>(&'a self, digest: &'a str) -> Fut<'a, bool> {
        self.read(move |c| {
            let digest = digest.to_string();
            Box::pin(async move {
                c.client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM hosted_blobs WHERE digest = $1)
                             OR EXISTS (SELECT 1 FROM hosted_manifests WHERE digest = $1)",
                        &[&digest],
                    )
                    .await?
                    .try_get(0)
            })
        })
    }

    fn put_manifest<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        m: &'a NewManifest,
    ) -> Fut<'a, PutManifest> {
        Box::pin(async move {
            let size = bigint(m.row.size)?;
            self.write(move |c| {
                let (app, repo, m) = (app.to_string(), repo.to_string(), m.clone());
                Box::pin(async move { put_manifest(c, &app, &repo, &m, size).await })
            })
            .await
        })
    }

    fn manifest<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        digest: &'a str,
    ) -> Fut<'a, Option<ManifestRow>> {
        self.read(move |c| {
            let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
            Box::pin(async move {
                let row = c
                    .client
                    .query_opt(
                        &format!(
                            "SELECT {MANIFEST_COLUMNS} FROM hosted_manifests m
                             WHERE m.app = $1 AND m.repo = $2 AND m.digest = $3"
                        ),
                        &[&app, &repo, &digest],
                    )
                    .await?;
                row.as_ref().map(manifest_row).transpose()
            })
        })
    }

    fn tagged<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        tag: &'a str,
    ) -> Fut<'a, Option<ManifestRow>> {
        self.read(move |c| {
            let (app, repo, tag) = (app.to_string(), repo.to_string(), tag.to_string());
            Box::pin(async move {
                let row = c
                    .client
                    .query_opt(
                        &format!(
                            "SELECT {MANIFEST_COLUMNS} FROM hosted_tags t
                             JOIN hosted_manifests m ON m.app = t.app AND m.repo = t.repo AND m.digest = t.digest
                             WHERE t.app = $1 AND t.repo = $2 AND t.tag = $3"
                        ),
                        &[&app, &repo, &tag],
                    )
                    .await?;
                row.as_ref().map(manifest_row).transpose()
            })
        })
    }

    fn repo_exists<'a>(&'a self, app: &'a str, repo: &'a str) -> Fut<'a, bool> {
        self.read(move |c| {
            let (app, repo) = (app.to_string(), repo.to_string());
            Box::pin(async move {
                c.client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM hosted_repos WHERE app = $1 AND name = $2)",
                        &[&app, &repo],
                    )
                    .await?
                    .try_get(0)
            })
        })
    }

    fn tags<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> Fut<'a, Vec<String>> {
        let limit = limit_of(limit);
        self.read(move |c| {
            let (app, repo) = (app.to_string(), repo.to_string());
            let after = after.unwrap_or_default().to_string();
            Box::pin(async move {
                // `tag` is COLLATE "C": the comparison and the order are byte order.
                let rows = c
                    .client
                    .query(
                        "SELECT tag FROM hosted_tags WHERE app = $1 AND repo = $2 AND tag > $3
                         ORDER BY tag LIMIT $4",
                        &[&app, &repo, &after, &limit],
                    )
                    .await?;
                rows.iter().map(|r| r.try_get(0)).collect()
            })
        })
    }

    fn delete_manifest<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        digest: &'a str,
    ) -> Fut<'a, bool> {
        self.write(move |c| {
            let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
            Box::pin(async move {
                let n = c
                    .client
                    .execute(
                        "DELETE FROM hosted_manifests WHERE app = $1 AND repo = $2 AND digest = $3",
                        &[&app, &repo, &digest],
                    )
                    .await?;
                if n > 0 {
                    forget_manifests(c, &app, &repo, std::slice::from_ref(&digest)).await?;
                    release(c, &digest, true).await?;
                }
                Ok(n > 0)
            })
        })
    }

    fn tags_of<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, Vec<String>> {
        self.read(move |c| {
            let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        "SELECT tag FROM hosted_tags WHERE app = $1 AND repo = $2 AND digest = $3
                         ORDER BY tag",
                        &[&app, &repo, &digest],
                    )
                    .await?;
                rows.iter().map(|r| r.try_get(0)).collect()
            })
        })
    }

    fn delete_tag<'a>(&'a self, app: &'a str, repo: &'a str, tag: &'a str) -> Fut<'a, bool> {
        self.write(move |c| {
            let (app, repo, tag) = (app.to_string(), repo.to_string(), tag.to_string());
            Box::pin(async move {
                let n = c
                    .client
                    .execute(
                        "DELETE FROM hosted_tags WHERE app = $1 AND repo = $2 AND tag = $3",
                        &[&app, &repo, &tag],
                    )
                    .await?;
                Ok(n > 0)
            })
        })
    }

    fn referrers<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        subject: &'a str,
    ) -> Fut<'a, Vec<ManifestRow>> {
        self.read(move |c| {
            let (app, repo, subject) = (app.to_string(), repo.to_string(), subject.to_string());
            Box::pin(async move {
                // `digest` has the database's collation: byte order is asked for explicitly.
                let rows = c
                    .client
                    .query(
                        &format!(
                            "SELECT {MANIFEST_COLUMNS} FROM hosted_manifests m
                             WHERE m.app = $1 AND m.repo = $2 AND m.subject = $3
                             ORDER BY m.digest COLLATE \"C\""
                        ),
                        &[&app, &repo, &subject],
                    )
                    .await?;
                rows.iter().map(manifest_row).collect()
            })
        })
    }

    fn catalog<'a>(
        &'a self,
        apps: Option<&'a [String]>,
        after: Option<&'a str>,
        limit: usize,
    ) -> Fut<'a, Vec<String>> {
        if apps.is_some_and(<[String]>::is_empty) {
            return Box::pin(async { Ok(Vec::new()) });
        }
        let limit = limit_of(limit);
        self.read(move |c| {
            let apps = apps.map(<[String]>::to_vec);
            let after = after.unwrap_or_default().to_string();
            Box::pin(async move {
                // `full_name` is COLLATE "C": the comparison and the order are byte order.
                let rows = c
                    .client
                    .query(
                        "SELECT full_name FROM hosted_repos
                         WHERE full_name > $1 AND ($2::text[] IS NULL OR app = ANY($2))
                         ORDER BY full_name LIMIT $3",
                        &[&after, &apps, &limit],
                    )
                    .await?;
                rows.iter().map(|r| r.try_get(0)).collect()
            })
        })
    }

    fn app_bytes<'a>(&'a self, app: &'a str) -> Fut<'a, u64> {
        self.read(move |c| {
            let app = app.to_string();
            Box::pin(async move {
                // SUM of BIGINT is NUMERIC in PostgreSQL: cast back (it errs past i64::MAX
                // rather than wrapping).
                let n: i64 = c
                    .client
                    .query_one(
                        "SELECT
                           (SELECT COALESCE(SUM(size), 0) FROM
                              (SELECT MAX(size) AS size FROM hosted_blobs WHERE app = $1 GROUP BY digest) b)::BIGINT
                         + (SELECT COALESCE(SUM(size), 0) FROM
                              (SELECT MAX(size) AS size FROM hosted_manifests WHERE app = $1 GROUP BY digest) m)::BIGINT",
                        &[&app],
                    )
                    .await?
                    .try_get(0)?;
                Ok(size_of(n))
            })
        })
    }

    fn released<'a>(&'a self, before: SystemTime) -> Fut<'a, Vec<(String, bool)>> {
        self.read(move |c| {
            let before = to_millis(before);
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        "SELECT digest, manifest FROM hosted_released WHERE released_ms < $1
                         ORDER BY digest COLLATE \"C\"",
                        &[&before],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            })
        })
    }

    fn forget_released<'a>(&'a self, digests: &'a [String], before: SystemTime) -> Fut<'a, ()> {
        self.write(move |c| {
            let (digests, before) = (digests.to_vec(), to_millis(before));
            Box::pin(async move {
                c.client
                    .execute(
                        "DELETE FROM hosted_released WHERE digest = ANY($1) AND released_ms < $2",
                        &[&digests, &before],
                    )
                    .await?;
                Ok(())
            })
        })
    }

    fn hosted_blobs(&self) -> Fut<'_, Vec<(String, u64)>> {
        self.read(|c| {
            Box::pin(async move {
                let rows = c
                    .client
                    .query(
                        "SELECT digest, MAX(size) FROM hosted_blobs GROUP BY digest",
                        &[],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, size_of(r.try_get(1)?))))
                    .collect()
            })
        })
    }

    fn gc_repos<'a>(&'a self, app: Option<&'a str>) -> Fut<'a, Vec<GcRepo>> {
        self.run(
            &self.control,
            Some("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
            true,
            move |c| {
                let app = app.map(str::to_string);
                Box::pin(async move { gc_repos(c, app.as_deref()).await })
            },
        )
    }

    fn gc_delete<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        manifests: &'a [String],
        blobs: &'a [String],
        cutoff: SystemTime,
    ) -> Fut<'a, GcDeleted> {
        let cutoff = to_millis(cutoff);
        self.write(move |c| {
            let (app, repo) = (app.to_string(), repo.to_string());
            let (manifests, blobs) = (manifests.to_vec(), blobs.to_vec());
            Box::pin(async move { gc_delete(c, &app, &repo, &manifests, &blobs, cutoff).await })
        })
    }
}

/// The concurrency this file's comments promise, shown with a second connection that holds a
/// transaction open (one side of the race) while the store runs the other side.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::Duration;

    use tokio_postgres::{Client, NoTls};

    use super::super::test_server::Postgres;
    use super::*;
    use crate::settings::Secret;
    use crate::state::suite::manifest;

    const B: &str = "sha256:0101010101010101010101010101010101010101010101010101010101010101";

    fn server() -> &'static Postgres {
        static SERVER: OnceLock<Postgres> = OnceLock::new();
        SERVER.get_or_init(Postgres::start)
    }

    /// A store on a new database and a raw connection to the same database.
    async fn setup() -> (Arc<PostgresStore>, Client) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let url = server().fresh_database(&format!("hosted_{}", N.fetch_add(1, Ordering::Relaxed)));
        let store = PostgresStore::open(&Secret::new(&url)).await.unwrap();
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        (Arc::new(store), client)
    }

    /// Whether `task` is still waiting after a while (on a row lock, in these tests).
    async fn blocked<T>(task: &tokio::task::JoinHandle<T>) -> bool {
        tokio::time::sleep(Duration::from_millis(400)).await;
        !task.is_finished()
    }

    fn minute_ago() -> SystemTime {
        SystemTime::now() - Duration::from_secs(60)
    }

    #[tokio::test]
    async fn a_collection_waiting_on_a_push_skips_the_link_the_push_touched() {
        let (s, raw) = setup().await;
        s.link_blob("acme", "api", B, 10).await.unwrap();
        raw.execute("UPDATE hosted_blobs SET touched_ms = 1000", &[])
            .await
            .unwrap();
        // A push's check of the blob, not committed yet.
        raw.batch_execute("BEGIN").await.unwrap();
        let n = raw
            .execute(
                "UPDATE hosted_blobs SET touched_ms = $1",
                &[&to_millis(SystemTime::now())],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        let gc = {
            let s = s.clone();
            tokio::spawn(async move {
                s.gc_delete("acme", "api", &[], &[B.to_string()], minute_ago())
                    .await
            })
        };
        assert!(
            blocked(&gc).await,
            "the DELETE did not wait for the row lock"
        );
        raw.batch_execute("COMMIT").await.unwrap();
        assert_eq!(gc.await.unwrap().unwrap(), GcDeleted::default());
        assert_eq!(s.blob("acme", "api", B).await.unwrap(), Some(10));
    }

    #[tokio::test]
    async fn a_push_waiting_on_a_collection_is_refused() {
        let (s, raw) = setup().await;
        s.link_blob("acme", "api", B, 10).await.unwrap();
        // Collection's delete of the blob, not committed yet.
        raw.batch_execute("BEGIN; DELETE FROM hosted_blobs")
            .await
            .unwrap();
        let push = {
            let s = s.clone();
            tokio::spawn(async move {
                let m = manifest(&format!("sha256:{}", "aa".repeat(32)), &[B.into()], None);
                s.put_manifest("acme", "api", &m).await
            })
        };
        assert!(
            blocked(&push).await,
            "the touch did not wait for the row lock"
        );
        raw.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            push.await.unwrap().unwrap(),
            PutManifest::BlobUnknown(B.into())
        );
    }

    #[tokio::test]
    async fn an_empty_repository_is_kept_when_a_push_links_into_it_meanwhile() {
        let (s, raw) = setup().await;
        s.link_blob("acme", "api", B, 10).await.unwrap();
        assert!(s.unlink_blob("acme", "api", B).await.unwrap());
        raw.execute("UPDATE hosted_repos SET created_ms = 1000", &[])
            .await
            .unwrap();
        // A link_blob half-way: the blob row written, the repository row locked.
        raw.batch_execute("BEGIN").await.unwrap();
        raw.execute(
            "INSERT INTO hosted_blobs (app, repo, digest, size, touched_ms) VALUES ('acme', 'api', $1, 10, $2)",
            &[&B, &to_millis(SystemTime::now())],
        )
        .await
        .unwrap();
        let generation = raw.prepare("SELECT value FROM generation").await.unwrap();
        let conn = Conn {
            client: raw,
            generation,
        };
        ensure_repo(&conn, "acme", "api", to_millis(SystemTime::now()))
            .await
            .unwrap();
        let gc = {
            let s = s.clone();
            tokio::spawn(async move {
                s.gc_delete(
                    "acme",
                    "api",
                    &[],
                    &[],
                    SystemTime::now() + Duration::from_secs(60),
                )
                .await
            })
        };
        assert!(
            blocked(&gc).await,
            "collection did not wait for the repository lock"
        );
        conn.client.batch_execute("COMMIT").await.unwrap();
        gc.await.unwrap().unwrap();
        assert!(s.repo_exists("acme", "api").await.unwrap());
        assert_eq!(s.catalog(None, None, 10).await.unwrap(), ["acme/api"]);
    }

    #[tokio::test]
    async fn a_push_after_collection_removed_the_repository_makes_it_again() {
        let (s, raw) = setup().await;
        s.link_blob("acme", "api", B, 10).await.unwrap();
        assert!(s.unlink_blob("acme", "api", B).await.unwrap());
        // Collection's removal of the empty repository, not committed yet.
        raw.batch_execute("BEGIN; SELECT 1 FROM hosted_repos FOR UPDATE; DELETE FROM hosted_repos")
            .await
            .unwrap();
        let push = {
            let s = s.clone();
            tokio::spawn(async move { s.link_blob("acme", "api", B, 10).await })
        };
        assert!(
            blocked(&push).await,
            "the link did not wait for the repository row"
        );
        raw.batch_execute("COMMIT").await.unwrap();
        push.await.unwrap().unwrap();
        assert!(s.repo_exists("acme", "api").await.unwrap());
    }

    #[tokio::test]
    async fn an_immutable_tag_another_push_is_writing_is_not_taken_over() {
        let (s, raw) = setup().await;
        s.link_blob("acme", "api", B, 10).await.unwrap();
        let first = format!("sha256:{}", "aa".repeat(32));
        // Another replica's push of the new tag, not committed yet.
        raw.batch_execute("BEGIN").await.unwrap();
        raw.execute(
            "INSERT INTO hosted_tags (app, repo, tag, digest, updated_ms) VALUES ('acme', 'api', 'v1', $1, 0)",
            &[&first],
        )
        .await
        .unwrap();
        let push = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut m = manifest(
                    &format!("sha256:{}", "bb".repeat(32)),
                    &[B.into()],
                    Some("v1"),
                );
                m.tag_mutable = false;
                s.put_manifest("acme", "api", &m).await
            })
        };
        assert!(blocked(&push).await, "the tag upsert did not wait");
        raw.batch_execute("COMMIT").await.unwrap();
        assert_eq!(
            push.await.unwrap().unwrap(),
            PutManifest::TagImmutable(first.clone())
        );
        let tag: String = raw
            .query_one("SELECT digest FROM hosted_tags WHERE tag = 'v1'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(tag, first);
    }

    #[tokio::test]
    async fn a_refused_push_touches_nothing() {
        let (s, raw) = setup().await;
        s.link_blob("acme", "api", B, 10).await.unwrap();
        raw.execute("UPDATE hosted_blobs SET touched_ms = 1000", &[])
            .await
            .unwrap();
        let missing = format!("sha256:{}", "cc".repeat(32));
        let m = manifest(
            &format!("sha256:{}", "aa".repeat(32)),
            &[B.into(), missing.clone()],
            None,
        );
        assert_eq!(
            s.put_manifest("acme", "api", &m).await.unwrap(),
            PutManifest::BlobUnknown(missing)
        );
        let repos = s.gc_repos(None).await.unwrap();
        assert_eq!(repos[0].blobs, [(B.to_string(), 10, from_millis(1000))]);
        assert!(repos[0].manifests.is_empty());
        // The connection is in a clean state after the rollback: the next push stores.
        let ok = manifest(&format!("sha256:{}", "aa".repeat(32)), &[B.into()], None);
        assert_eq!(
            s.put_manifest("acme", "api", &ok).await.unwrap(),
            PutManifest::Stored
        );
    }
}
