//! Garbage collection of the hosted registry, online: marks, per repository, what tags
//! reach (child manifests of an index, referrers of a reached subject) — and, when the
//! policy keeps untagged manifests (the default: customers pull by digest), every
//! manifest — then removes from the index the manifests and blob links nothing reaches,
//! and frees the bytes of blobs no repository of any app links any more, unless proxied
//! content or an airgap pin holds them.
//!
//! Pushes go on meanwhile: the index deletes a link only if it was last touched before
//! `start - grace` (`state::hosted` explains the touch rule), so nothing pushed, mounted
//! or referenced in the grace period is taken, and bytes are deleted only after their
//! last link is gone (a crash in between leaves unlinked bytes, which the next full
//! collection finds; never a link to missing bytes).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{state_error, Hosted};
use crate::error::Error;
use crate::oci::Digest;
use crate::state::hosted::GcRepo;

/// What collection does with manifests no tag reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Untagged {
    /// Kept (pulls by digest go on working): only unreferenced blobs are collected.
    #[default]
    Keep,
    /// Deleted once older than the grace period, with what only they referenced.
    Delete,
}

impl Untagged {
    pub fn parse(s: &str) -> Option<Untagged> {
        match s {
            "keep" => Some(Untagged::Keep),
            "delete" => Some(Untagged::Delete),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// One app, or all (a full collection also frees bytes nothing links at all).
    pub app: Option<String>,
    pub dry_run: bool,
    /// Nothing touched more recently than this is collected.
    pub grace: Duration,
    pub untagged: Untagged,
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub dry_run: bool,
    pub repositories: usize,
    /// `<app>/<repository>@<digest>` of each manifest removed.
    pub manifests: Vec<String>,
    /// Blob links removed from repositories.
    pub blob_links: usize,
    /// Blobs whose bytes were deleted from storage.
    pub blobs_freed: usize,
    pub bytes_freed: u64,
}

/// The manifests and blob links of one repository nothing reaches (before the cutoff).
fn mark(r: &GcRepo, untagged: Untagged, cutoff: SystemTime) -> (Vec<String>, Vec<String>) {
    let by_digest: HashMap<&str, _> = r.manifests.iter().map(|m| (m.digest.as_str(), m)).collect();
    let mut referrers: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in &r.manifests {
        if let Some(s) = &m.subject {
            referrers
                .entry(s.as_str())
                .or_default()
                .push(m.digest.as_str());
        }
    }
    let mut stack: Vec<&str> = match untagged {
        Untagged::Keep => r.manifests.iter().map(|m| m.digest.as_str()).collect(),
        Untagged::Delete => r
            .tags
            .iter()
            .map(|(_, d)| d.as_str())
            // Recent manifests are roots too: a push in progress tags its index last.
            .chain(
                r.manifests
                    .iter()
                    .filter(|m| m.touched >= cutoff)
                    .map(|m| m.digest.as_str()),
            )
            .collect(),
    };
    let mut reached: HashSet<&str> = HashSet::new();
    while let Some(d) = stack.pop() {
        if !reached.insert(d) {
            continue;
        }
        if let Some(m) = by_digest.get(d) {
            stack.extend(m.refs.iter().map(String::as_str));
        }
        if let Some(rs) = referrers.get(d) {
            stack.extend(rs.iter().copied());
        }
    }
    let dead_manifests = r
        .manifests
        .iter()
        .filter(|m| !reached.contains(m.digest.as_str()) && m.touched < cutoff)
        .map(|m| m.digest.clone())
        .collect();
    let referenced: HashSet<&str> = r
        .manifests
        .iter()
        .filter(|m| reached.contains(m.digest.as_str()))
        .flat_map(|m| m.refs.iter().map(String::as_str))
        .collect();
    let dead_blobs = r
        .blobs
        .iter()
        .filter(|(d, _, touched)| !referenced.contains(d.as_str()) && *touched < cutoff)
        .map(|(d, _, _)| d.clone())
        .collect();
    (dead_manifests, dead_blobs)
}

impl Options {
    /// A collection of everything, as `hosted.gc` says.
    pub fn from_config(cfg: &crate::settings::GcConfig) -> Options {
        Options {
            app: None,
            dry_run: false,
            grace: cfg.grace,
            untagged: if cfg.delete_untagged {
                Untagged::Delete
            } else {
                Untagged::Keep
            },
        }
    }
}

/// Collects every `hosted.gc.interval` (when set), in the background; the first run is
/// one interval after start. Call inside the runtime.
pub fn start_schedule(hosted: &std::sync::Arc<Hosted>, cfg: &crate::settings::HostedConfig) {
    let Some(every) = cfg.gc.interval else {
        return;
    };
    let opts = Options::from_config(&cfg.gc);
    let me = std::sync::Arc::downgrade(hosted);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(me) = me.upgrade() else { return };
            if let Err(e) = me.collect(&opts).await {
                tracing::warn!(error = %e, "scheduled hosted garbage collection failed; it runs again in hosted.gc.interval");
            }
        }
    });
}

impl Hosted {
    /// Runs one collection.
    pub async fn collect(&self, opts: &Options) -> Result<Report, Error> {
        let start = SystemTime::now();
        let cutoff = start
            .checked_sub(opts.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // Every app's links, to tell which blobs another repository still holds.
        let all = self.index.gc_repos(None).await.map_err(state_error)?;
        let mut report = Report {
            dry_run: opts.dry_run,
            ..Report::default()
        };
        let mut sizes: HashMap<String, u64> = HashMap::new();
        let mut links: HashMap<String, usize> = HashMap::new();
        for r in &all {
            for (d, size, _) in &r.blobs {
                sizes.insert(d.clone(), *size);
                *links.entry(d.clone()).or_default() += 1;
            }
        }
        let mut unlinked: Vec<String> = Vec::new();
        let mut dropped_manifests: Vec<String> = Vec::new();
        for r in all
            .iter()
            .filter(|r| opts.app.as_ref().is_none_or(|a| *a == r.app))
        {
            report.repositories += 1;
            let (manifests, blobs) = mark(r, opts.untagged, cutoff);
            if manifests.is_empty() && blobs.is_empty() {
                continue;
            }
            let (manifests, blobs) = if opts.dry_run {
                (manifests, blobs)
            } else {
                let done = self
                    .index
                    .gc_delete(&r.app, &r.repo, &manifests, &blobs, cutoff)
                    .await
                    .map_err(state_error)?;
                (done.manifests, done.blobs)
            };
            report.manifests.extend(
                manifests
                    .iter()
                    .map(|d| format!("{}/{}@{d}", r.app, r.repo)),
            );
            report.blob_links += blobs.len();
            for d in blobs {
                let n = links.entry(d.clone()).or_default();
                *n = n.saturating_sub(1);
                if *n == 0 {
                    unlinked.push(d);
                }
            }
            dropped_manifests.extend(manifests);
        }
        let proxied = self.cache.links.digests();
        let pins = crate::cache::read_pins(&*self.cache.storage.objects).await;
        // What deletes through the API released before the cutoff: their bytes go too.
        let released = self.index.released(cutoff).await.map_err(state_error)?;
        if opts.dry_run {
            let held = |d: &str| {
                let hex = d.split_once(':').map_or(d, |(_, h)| h);
                proxied.contains(d) || pins.contains(hex)
            };
            let mut counted = HashSet::new();
            for d in &unlinked {
                if !held(d) && counted.insert(d.clone()) {
                    report.blobs_freed += 1;
                    report.bytes_freed += sizes.get(d).copied().unwrap_or(0);
                }
            }
            for (d, manifest) in &released {
                if *manifest || held(d) || counted.contains(d) {
                    continue;
                }
                let Ok(digest) = d.parse::<Digest>() else {
                    continue;
                };
                if self.index.linked_anywhere(d).await.map_err(state_error)? {
                    continue;
                }
                if let Ok(info) = self.cache.storage.blobs.stat(&digest).await {
                    counted.insert(d.clone());
                    report.blobs_freed += 1;
                    report.bytes_freed += info.size;
                }
            }
            return Ok(report);
        }
        for d in &unlinked {
            self.free_blob(d, &proxied, &pins, cutoff, &mut report)
                .await?;
        }
        let mut settled = Vec::new();
        for (d, manifest) in released {
            if manifest {
                dropped_manifests.push(d.clone());
                settled.push(d);
            } else if self
                .free_blob(&d, &proxied, &pins, cutoff, &mut report)
                .await?
            {
                settled.push(d);
            }
        }
        for d in &dropped_manifests {
            if !proxied.contains(d) && !self.index.linked_anywhere(d).await.map_err(state_error)? {
                if let Ok(digest) = d.parse::<Digest>() {
                    if let Err(e) = self.cache.manifests.delete(&digest).await {
                        tracing::warn!(digest = %d, error = %e, "collection: cannot delete a manifest's bytes");
                    }
                }
            }
        }
        if opts.app.is_none() {
            self.free_orphans(&proxied, &pins, cutoff, &mut report)
                .await?;
        }
        self.index
            .forget_released(&settled, cutoff)
            .await
            .map_err(state_error)?;
        tracing::info!(
            repositories = report.repositories,
            manifests = report.manifests.len(),
            blob_links = report.blob_links,
            blobs_freed = report.blobs_freed,
            bytes_freed = report.bytes_freed,
            "hosted garbage collection done"
        );
        Ok(report)
    }

    /// Deletes a blob's bytes if nothing holds them: no hosted link (asked again now),
    /// no proxied repository, no airgap pin, and not used since the cutoff. False when it
    /// was left for a later collection (used too recently, or the delete failed).
    async fn free_blob(
        &self,
        d: &str,
        proxied: &HashSet<String>,
        pins: &HashSet<String>,
        cutoff: SystemTime,
        report: &mut Report,
    ) -> Result<bool, Error> {
        let Ok(digest) = d.parse::<Digest>() else {
            return Ok(true);
        };
        let hex = digest.hex().to_string();
        if self.index.linked_anywhere(d).await.map_err(state_error)? {
            return Ok(true);
        }
        if proxied.contains(d) || pins.contains(&hex) {
            // Still proxied content: back to the cache's LRU (an airgap pin stays pinned).
            self.cache
                .blobs
                .index()
                .set_pinned(&hex, pins.contains(&hex));
            return Ok(true);
        }
        let Ok(info) = self.cache.storage.blobs.stat(&digest).await else {
            return Ok(true);
        };
        if info.used >= cutoff {
            return Ok(false);
        }
        match self.cache.storage.blobs.delete(&digest).await {
            Ok(()) => {
                self.cache.blobs.index().forget(&hex);
                report.blobs_freed += 1;
                report.bytes_freed += info.size;
            }
            Err(e) if e.is_not_found() => self.cache.blobs.index().forget(&hex),
            Err(e) => {
                tracing::warn!(digest = %d, error = %e, "collection: cannot delete a blob");
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Frees stored blobs that nothing links at all (left by a collection cut short, or by
    /// a hosted delete whose collection never ran).
    async fn free_orphans(
        &self,
        proxied: &HashSet<String>,
        pins: &HashSet<String>,
        cutoff: SystemTime,
        report: &mut Report,
    ) -> Result<(), Error> {
        let stored = match self.cache.storage.blobs.list().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "collection: cannot list stored blobs");
                return Ok(());
            }
        };
        let hosted: HashSet<String> = self
            .index
            .hosted_blobs()
            .await
            .map_err(state_error)?
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        for (digest, info) in stored {
            let d = digest.to_string();
            if hosted.contains(&d) || proxied.contains(&d) || pins.contains(digest.hex()) {
                continue;
            }
            if info.used >= cutoff {
                continue;
            }
            self.free_blob(&d, proxied, pins, cutoff, report).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::hosted::GcManifest;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn m(n: u8, refs: &[u8], subject: Option<u8>, old: bool) -> GcManifest {
        GcManifest {
            digest: d(n),
            size: 1,
            subject: subject.map(d),
            touched: if old {
                SystemTime::UNIX_EPOCH
            } else {
                SystemTime::now()
            },
            refs: refs.iter().map(|r| d(*r)).collect(),
        }
    }

    fn repo() -> GcRepo {
        GcRepo {
            app: "acme".into(),
            repo: "api".into(),
            // 10: a tagged index of 11; 11: an image of blob 1; 12: a signature of 10;
            // 13: an untagged old image of blob 2; 14: a signature of 13; 15: a recent
            // untagged image of blob 3.
            manifests: vec![
                m(10, &[11], None, true),
                m(11, &[1], None, true),
                m(12, &[4], Some(10), true),
                m(13, &[2], None, true),
                m(14, &[5], Some(13), true),
                m(15, &[3], None, false),
            ],
            tags: vec![("1.0".into(), d(10))],
            blobs: [1, 2, 3, 4, 5, 6]
                .iter()
                .map(|b| (d(*b), 10, SystemTime::UNIX_EPOCH))
                .collect(),
        }
    }

    #[test]
    fn untagged_manifests_are_kept_by_default_and_only_loose_blobs_go() {
        let cutoff = SystemTime::now() - Duration::from_secs(3600);
        let (manifests, blobs) = mark(&repo(), Untagged::Keep, cutoff);
        assert!(manifests.is_empty());
        assert_eq!(blobs, [d(6)]);
    }

    #[test]
    fn deleting_untagged_takes_their_referrers_and_blobs_but_not_recent_pushes() {
        let cutoff = SystemTime::now() - Duration::from_secs(3600);
        let (mut manifests, mut blobs) = mark(&repo(), Untagged::Delete, cutoff);
        manifests.sort();
        blobs.sort();
        assert_eq!(manifests, [d(13), d(14)]);
        assert_eq!(blobs, [d(2), d(5), d(6)]);
    }
}
