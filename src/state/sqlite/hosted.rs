//! The hosted registry's index in the SQLite store (the tables of migration 3). Writes run
//! in immediate transactions, so a push, a delete and a collection step are serialized
//! with each other (SQLite has one writer) and the touch rule of `state::hosted` holds.

use std::time::SystemTime;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};

use super::{db, SqliteStore};
use crate::state::hosted::{
    GcDeleted, GcManifest, GcRepo, HostedIndex, ManifestRow, NewManifest, PutManifest,
};
use crate::state::{from_millis, to_millis, Fut, StateError};

const MANIFEST_COLUMNS: &str =
    "m.digest, m.media_type, m.artifact_type, m.subject, m.size, m.annotations, m.touched_ms";

fn manifest_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ManifestRow> {
    Ok(ManifestRow {
        digest: r.get(0)?,
        media_type: r.get(1)?,
        artifact_type: r.get(2)?,
        subject: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        annotations: r.get(5)?,
        touched: from_millis(r.get(6)?),
    })
}

fn immediate(c: &mut Connection) -> Result<Transaction<'_>, StateError> {
    c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)
}

fn ensure_repo(tx: &Transaction<'_>, app: &str, repo: &str, now: i64) -> Result<(), StateError> {
    tx.execute(
        "INSERT INTO hosted_repos (app, name, full_name, created_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (app, name) DO NOTHING",
        params![app, repo, format!("{app}/{repo}"), now],
    )
    .map_err(db)?;
    Ok(())
}

fn put_manifest(
    c: &mut Connection,
    app: &str,
    repo: &str,
    m: &NewManifest,
) -> Result<PutManifest, StateError> {
    let now = to_millis(SystemTime::now());
    let tx = immediate(c)?;
    for b in &m.blobs {
        let n = tx
            .execute(
                "UPDATE hosted_blobs SET touched_ms = ?4 WHERE app = ?1 AND repo = ?2 AND digest = ?3",
                params![app, repo, b, now],
            )
            .map_err(db)?;
        if n == 0 {
            return Ok(PutManifest::BlobUnknown(b.clone()));
        }
    }
    let touch_manifest = |d: &str| {
        tx.execute(
            "UPDATE hosted_manifests SET touched_ms = ?4 WHERE app = ?1 AND repo = ?2 AND digest = ?3",
            params![app, repo, d, now],
        )
        .map_err(db)
    };
    for child in &m.children {
        if touch_manifest(child)? == 0 {
            return Ok(PutManifest::ManifestUnknown(child.clone()));
        }
    }
    // A subject keeps its referrers' company: touched so a collection that planned to
    // remove it before this referrer arrived does not.
    if let Some(s) = &m.row.subject {
        touch_manifest(s)?;
    }
    if let Some(tag) = &m.tag {
        let current: Option<String> = tx
            .query_row(
                "SELECT digest FROM hosted_tags WHERE app = ?1 AND repo = ?2 AND tag = ?3",
                params![app, repo, tag],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if let Some(current) = current {
            if current != m.row.digest && !m.tag_mutable {
                return Ok(PutManifest::TagImmutable(current));
            }
        }
    }
    ensure_repo(&tx, app, repo, now)?;
    let r = &m.row;
    tx.execute(
        "INSERT INTO hosted_manifests
            (app, repo, digest, media_type, artifact_type, subject, size, annotations, touched_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (app, repo, digest) DO UPDATE SET touched_ms = excluded.touched_ms",
        params![
            app,
            repo,
            r.digest,
            r.media_type,
            r.artifact_type,
            r.subject,
            r.size as i64,
            r.annotations,
            now
        ],
    )
    .map_err(db)?;
    for target in m.blobs.iter().chain(&m.children) {
        tx.execute(
            "INSERT INTO hosted_refs (app, repo, manifest, target) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            params![app, repo, r.digest, target],
        )
        .map_err(db)?;
    }
    if let Some(tag) = &m.tag {
        tx.execute(
            "INSERT INTO hosted_tags (app, repo, tag, digest, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (app, repo, tag) DO UPDATE SET digest = excluded.digest, updated_ms = excluded.updated_ms",
            params![app, repo, tag, r.digest, now],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)?;
    Ok(PutManifest::Stored)
}

fn delete_manifest(tx: &Transaction<'_>, app: &str, repo: &str, d: &str) -> Result<(), StateError> {
    tx.execute(
        "DELETE FROM hosted_tags WHERE app = ?1 AND repo = ?2 AND digest = ?3",
        params![app, repo, d],
    )
    .map_err(db)?;
    tx.execute(
        "DELETE FROM hosted_refs WHERE app = ?1 AND repo = ?2 AND manifest = ?3",
        params![app, repo, d],
    )
    .map_err(db)?;
    Ok(())
}

fn release(tx: &Transaction<'_>, digest: &str, manifest: bool) -> Result<(), StateError> {
    tx.execute(
        "INSERT INTO hosted_released (digest, manifest, released_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (digest, manifest) DO UPDATE SET released_ms = excluded.released_ms",
        params![digest, manifest, to_millis(SystemTime::now())],
    )
    .map_err(db)?;
    Ok(())
}

fn gc_repos(c: &mut Connection, app: Option<&str>) -> Result<Vec<GcRepo>, StateError> {
    // One read transaction: the repositories, manifests, references, tags and blobs agree.
    let tx = c.transaction().map_err(db)?;
    let mut repos: Vec<GcRepo> = Vec::new();
    let mut index = std::collections::HashMap::new();
    {
        let mut q = tx
            .prepare("SELECT app, name FROM hosted_repos WHERE ?1 IS NULL OR app = ?1 ORDER BY full_name")
            .map_err(db)?;
        let rows = q
            .query_map(params![app], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(db)?;
        for row in rows {
            let (a, n) = row.map_err(db)?;
            index.insert((a.clone(), n.clone()), repos.len());
            repos.push(GcRepo {
                app: a,
                repo: n,
                ..GcRepo::default()
            });
        }
    }
    let mut manifests = std::collections::HashMap::new();
    {
        let mut q = tx
            .prepare(
                "SELECT app, repo, digest, size, subject, touched_ms FROM hosted_manifests
                 WHERE ?1 IS NULL OR app = ?1",
            )
            .map_err(db)?;
        let rows = q
            .query_map(params![app], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    GcManifest {
                        digest: r.get(2)?,
                        size: r.get::<_, i64>(3)? as u64,
                        subject: r.get(4)?,
                        touched: from_millis(r.get(5)?),
                        refs: Vec::new(),
                    },
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (a, n, m) = row.map_err(db)?;
            manifests.insert((a, n, m.digest.clone()), m);
        }
    }
    {
        let mut q = tx
            .prepare(
                "SELECT app, repo, manifest, target FROM hosted_refs WHERE ?1 IS NULL OR app = ?1",
            )
            .map_err(db)?;
        let rows = q
            .query_map(params![app], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (a, n, m, t) = row.map_err(db)?;
            if let Some(m) = manifests.get_mut(&(a, n, m)) {
                m.refs.push(t);
            }
        }
    }
    for ((a, n, _), m) in manifests {
        if let Some(&i) = index.get(&(a, n)) {
            repos[i].manifests.push(m);
        }
    }
    {
        let mut q = tx
            .prepare("SELECT app, repo, tag, digest FROM hosted_tags WHERE ?1 IS NULL OR app = ?1")
            .map_err(db)?;
        let rows = q
            .query_map(params![app], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (a, n, t, d) = row.map_err(db)?;
            if let Some(&i) = index.get(&(a, n)) {
                repos[i].tags.push((t, d));
            }
        }
    }
    {
        let mut q = tx
            .prepare(
                "SELECT app, repo, digest, size, touched_ms FROM hosted_blobs WHERE ?1 IS NULL OR app = ?1",
            )
            .map_err(db)?;
        let rows = q
            .query_map(params![app], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)? as u64,
                    from_millis(r.get(4)?),
                ))
            })
            .map_err(db)?;
        for row in rows {
            let (a, n, d, size, touched) = row.map_err(db)?;
            if let Some(&i) = index.get(&(a, n)) {
                repos[i].blobs.push((d, size, touched));
            }
        }
    }
    for r in &mut repos {
        r.manifests.sort_by(|a, b| a.digest.cmp(&b.digest));
        r.tags.sort();
        r.blobs.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(repos)
}

fn gc_delete(
    c: &mut Connection,
    app: &str,
    repo: &str,
    manifests: &[String],
    blobs: &[String],
    cutoff: i64,
) -> Result<GcDeleted, StateError> {
    let tx = immediate(c)?;
    let mut out = GcDeleted::default();
    for d in manifests {
        let n = tx
            .execute(
                "DELETE FROM hosted_manifests WHERE app = ?1 AND repo = ?2 AND digest = ?3
                   AND touched_ms < ?4
                   AND NOT EXISTS (SELECT 1 FROM hosted_tags t
                                   WHERE t.app = ?1 AND t.repo = ?2 AND t.digest = ?3)",
                params![app, repo, d, cutoff],
            )
            .map_err(db)?;
        if n > 0 {
            delete_manifest(&tx, app, repo, d)?;
            out.manifests.push(d.clone());
        }
    }
    for d in blobs {
        let n = tx
            .execute(
                "DELETE FROM hosted_blobs WHERE app = ?1 AND repo = ?2 AND digest = ?3
                   AND touched_ms < ?4
                   AND NOT EXISTS (SELECT 1 FROM hosted_refs r
                                   WHERE r.app = ?1 AND r.repo = ?2 AND r.target = ?3)",
                params![app, repo, d, cutoff],
            )
            .map_err(db)?;
        if n > 0 {
            out.blobs.push(d.clone());
        }
    }
    // A repository left with nothing leaves the catalog.
    tx.execute(
        "DELETE FROM hosted_repos WHERE app = ?1 AND name = ?2 AND created_ms < ?3
           AND NOT EXISTS (SELECT 1 FROM hosted_blobs WHERE app = ?1 AND repo = ?2)
           AND NOT EXISTS (SELECT 1 FROM hosted_manifests WHERE app = ?1 AND repo = ?2)",
        params![app, repo, cutoff],
    )
    .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(out)
}

impl HostedIndex for SqliteStore {
    fn link_blob<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        digest: &'a str,
        size: u64,
    ) -> Fut<'a, ()> {
        let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
        self.with(move |c| {
            let now = to_millis(SystemTime::now());
            let tx = immediate(c)?;
            ensure_repo(&tx, &app, &repo, now)?;
            tx.execute(
                "INSERT INTO hosted_blobs (app, repo, digest, size, touched_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (app, repo, digest) DO UPDATE SET touched_ms = excluded.touched_ms",
                params![app, repo, digest, size as i64, now],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })
    }

    fn blob<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, Option<u64>> {
        let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
        self.with(move |c| {
            c.prepare_cached(
                "SELECT size FROM hosted_blobs WHERE app = ?1 AND repo = ?2 AND digest = ?3",
            )
            .map_err(db)?
            .query_row(params![app, repo, digest], |r| r.get::<_, i64>(0))
            .optional()
            .map(|s| s.map(|s| s as u64))
            .map_err(db)
        })
    }

    fn app_has_blob<'a>(&'a self, app: &'a str, digest: &'a str) -> Fut<'a, bool> {
        let (app, digest) = (app.to_string(), digest.to_string());
        self.with(move |c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM hosted_blobs WHERE app = ?1 AND digest = ?2)",
            )
            .map_err(db)?
            .query_row(params![app, digest], |r| r.get::<_, bool>(0))
            .map_err(db)
        })
    }

    fn unlink_blob<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, bool> {
        let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
        self.with(move |c| {
            let tx = immediate(c)?;
            let n = tx
                .execute(
                    "DELETE FROM hosted_blobs WHERE app = ?1 AND repo = ?2 AND digest = ?3",
                    params![app, repo, digest],
                )
                .map_err(db)?;
            if n > 0 {
                release(&tx, &digest, false)?;
            }
            tx.commit().map_err(db)?;
            Ok(n > 0)
        })
    }

    fn linked_anywhere<'a>(&'a self, digest: &'a str) -> Fut<'a, bool> {
        let digest = digest.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM hosted_blobs WHERE digest = ?1)
                     OR EXISTS (SELECT 1 FROM hosted_manifests WHERE digest = ?1)",
                params![digest],
                |r| r.get::<_, bool>(0),
            )
            .map_err(db)
        })
    }

    fn put_manifest<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        m: &'a NewManifest,
    ) -> Fut<'a, PutManifest> {
        let (app, repo, m) = (app.to_string(), repo.to_string(), m.clone());
        self.with(move |c| put_manifest(c, &app, &repo, &m))
    }

    fn manifest<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        digest: &'a str,
    ) -> Fut<'a, Option<ManifestRow>> {
        let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
        self.with(move |c| {
            c.prepare_cached(&format!(
                "SELECT {MANIFEST_COLUMNS} FROM hosted_manifests m
                 WHERE m.app = ?1 AND m.repo = ?2 AND m.digest = ?3"
            ))
            .map_err(db)?
            .query_row(params![app, repo, digest], manifest_row)
            .optional()
            .map_err(db)
        })
    }

    fn tagged<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        tag: &'a str,
    ) -> Fut<'a, Option<ManifestRow>> {
        let (app, repo, tag) = (app.to_string(), repo.to_string(), tag.to_string());
        self.with(move |c| {
            c.prepare_cached(&format!(
                "SELECT {MANIFEST_COLUMNS} FROM hosted_tags t
                 JOIN hosted_manifests m ON m.app = t.app AND m.repo = t.repo AND m.digest = t.digest
                 WHERE t.app = ?1 AND t.repo = ?2 AND t.tag = ?3"
            ))
            .map_err(db)?
            .query_row(params![app, repo, tag], manifest_row)
            .optional()
            .map_err(db)
        })
    }

    fn repo_exists<'a>(&'a self, app: &'a str, repo: &'a str) -> Fut<'a, bool> {
        let (app, repo) = (app.to_string(), repo.to_string());
        self.with(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM hosted_repos WHERE app = ?1 AND name = ?2)",
                params![app, repo],
                |r| r.get::<_, bool>(0),
            )
            .map_err(db)
        })
    }

    fn tags<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> Fut<'a, Vec<String>> {
        let (app, repo, after) = (app.to_string(), repo.to_string(), after.map(str::to_string));
        self.with(move |c| {
            let mut q = c
                .prepare_cached(
                    "SELECT tag FROM hosted_tags WHERE app = ?1 AND repo = ?2 AND tag > ?3
                     ORDER BY tag LIMIT ?4",
                )
                .map_err(db)?;
            let rows = q
                .query_map(
                    params![
                        app,
                        repo,
                        after.unwrap_or_default(),
                        limit.min(i64::MAX as usize) as i64
                    ],
                    |r| r.get::<_, String>(0),
                )
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn delete_manifest<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        digest: &'a str,
    ) -> Fut<'a, bool> {
        let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
        self.with(move |c| {
            let tx = immediate(c)?;
            let n = tx
                .execute(
                    "DELETE FROM hosted_manifests WHERE app = ?1 AND repo = ?2 AND digest = ?3",
                    params![app, repo, digest],
                )
                .map_err(db)?;
            if n > 0 {
                delete_manifest(&tx, &app, &repo, &digest)?;
                release(&tx, &digest, true)?;
            }
            tx.commit().map_err(db)?;
            Ok(n > 0)
        })
    }

    fn tags_of<'a>(&'a self, app: &'a str, repo: &'a str, digest: &'a str) -> Fut<'a, Vec<String>> {
        let (app, repo, digest) = (app.to_string(), repo.to_string(), digest.to_string());
        self.with(move |c| {
            let mut q = c
                .prepare_cached(
                    "SELECT tag FROM hosted_tags WHERE app = ?1 AND repo = ?2 AND digest = ?3
                     ORDER BY tag",
                )
                .map_err(db)?;
            let rows = q
                .query_map(params![app, repo, digest], |r| r.get::<_, String>(0))
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn delete_tag<'a>(&'a self, app: &'a str, repo: &'a str, tag: &'a str) -> Fut<'a, bool> {
        let (app, repo, tag) = (app.to_string(), repo.to_string(), tag.to_string());
        self.with(move |c| {
            c.execute(
                "DELETE FROM hosted_tags WHERE app = ?1 AND repo = ?2 AND tag = ?3",
                params![app, repo, tag],
            )
            .map(|n| n > 0)
            .map_err(db)
        })
    }

    fn referrers<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        subject: &'a str,
    ) -> Fut<'a, Vec<ManifestRow>> {
        let (app, repo, subject) = (app.to_string(), repo.to_string(), subject.to_string());
        self.with(move |c| {
            let mut q = c
                .prepare_cached(&format!(
                    "SELECT {MANIFEST_COLUMNS} FROM hosted_manifests m
                     WHERE m.app = ?1 AND m.repo = ?2 AND m.subject = ?3 ORDER BY m.digest"
                ))
                .map_err(db)?;
            let rows = q
                .query_map(params![app, repo, subject], manifest_row)
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn catalog<'a>(
        &'a self,
        apps: Option<&'a [String]>,
        after: Option<&'a str>,
        limit: usize,
    ) -> Fut<'a, Vec<String>> {
        let apps = apps.map(<[String]>::to_vec);
        let after = after.unwrap_or_default().to_string();
        self.with(move |c| {
            let mut values: Vec<rusqlite::types::Value> = vec![after.into()];
            let mut sql = "SELECT full_name FROM hosted_repos WHERE full_name > ?1".to_string();
            if let Some(apps) = apps {
                if apps.is_empty() {
                    return Ok(Vec::new());
                }
                let marks: Vec<String> = (0..apps.len()).map(|i| format!("?{}", i + 2)).collect();
                sql.push_str(&format!(" AND app IN ({})", marks.join(", ")));
                values.extend(apps.into_iter().map(Into::into));
            }
            values.push((limit.min(i64::MAX as usize) as i64).into());
            sql.push_str(&format!(" ORDER BY full_name LIMIT ?{}", values.len()));
            let mut q = c.prepare(&sql).map_err(db)?;
            let rows = q
                .query_map(params_from_iter(values), |r| r.get::<_, String>(0))
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn app_bytes<'a>(&'a self, app: &'a str) -> Fut<'a, u64> {
        let app = app.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT
                   (SELECT COALESCE(SUM(size), 0) FROM
                      (SELECT MAX(size) AS size FROM hosted_blobs WHERE app = ?1 GROUP BY digest))
                 + (SELECT COALESCE(SUM(size), 0) FROM
                      (SELECT MAX(size) AS size FROM hosted_manifests WHERE app = ?1 GROUP BY digest))",
                params![app],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(db)
        })
    }

    fn released<'a>(&'a self, before: SystemTime) -> Fut<'a, Vec<(String, bool)>> {
        let before = to_millis(before);
        self.with(move |c| {
            let mut q = c
                .prepare("SELECT digest, manifest FROM hosted_released WHERE released_ms < ?1 ORDER BY digest")
                .map_err(db)?;
            let rows = q
                .query_map(params![before], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn forget_released<'a>(&'a self, digests: &'a [String], before: SystemTime) -> Fut<'a, ()> {
        let (digests, before) = (digests.to_vec(), to_millis(before));
        self.with(move |c| {
            let tx = immediate(c)?;
            for d in &digests {
                tx.execute(
                    "DELETE FROM hosted_released WHERE digest = ?1 AND released_ms < ?2",
                    params![d, before],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn hosted_blobs(&self) -> Fut<'_, Vec<(String, u64)>> {
        self.with(|c| {
            let mut q = c
                .prepare("SELECT digest, MAX(size) FROM hosted_blobs GROUP BY digest")
                .map_err(db)?;
            let rows = q
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn gc_repos<'a>(&'a self, app: Option<&'a str>) -> Fut<'a, Vec<GcRepo>> {
        let app = app.map(str::to_string);
        self.with(move |c| gc_repos(c, app.as_deref()))
    }

    fn gc_delete<'a>(
        &'a self,
        app: &'a str,
        repo: &'a str,
        manifests: &'a [String],
        blobs: &'a [String],
        cutoff: SystemTime,
    ) -> Fut<'a, GcDeleted> {
        let (app, repo) = (app.to_string(), repo.to_string());
        let (manifests, blobs) = (manifests.to_vec(), blobs.to_vec());
        let cutoff = to_millis(cutoff);
        self.with(move |c| gc_delete(c, &app, &repo, &manifests, &blobs, cutoff))
    }
}
