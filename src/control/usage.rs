//! Usage: the recorder the customer edge tells of every manifest request and every
//! response body served (which requests count as a pull, batched writes to the store off
//! the request path), and the reports read back from the store's pull records (`berth
//! usage`, `/api/v1/usage`): who pulled which images and versions, how often, how many bytes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{rfc3339, Control, ControlError};
use crate::config::Config;
use crate::oci::repo::Reference;
use crate::state::{PullEvent, Store, Transfer, UsageBatch, UsageQuery};

/// What to report on.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageFilter {
    /// A license or key id.
    pub license: Option<String>,
    pub app: Option<String>,
    /// Only pulls at or after this time.
    #[serde(skip)]
    pub since: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub since: Option<String>,
    pub subjects: Vec<SubjectUsage>,
}

/// One license's (or key's) usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectUsage {
    pub id: String,
    /// `license` or `apikey`.
    pub kind: String,
    /// The customer's name (or the key's); empty for a license no longer known.
    pub name: String,
    pub app: String,
    pub pulls: u64,
    pub bytes: u64,
    pub last_pull: Option<String>,
    pub images: Vec<ImageUsage>,
}

/// One image and reference (a tag, or a digest pulled by digest) of a subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUsage {
    pub image: String,
    pub reference: String,
    /// The digest the last pull resolved to.
    pub digest: String,
    pub pulls: u64,
    pub last_pull: String,
}

impl Control {
    pub async fn usage(
        &self,
        config: &Config,
        filter: &UsageFilter,
    ) -> Result<UsageReport, ControlError> {
        let q = UsageQuery {
            subject: filter.license.clone(),
            app: filter.app.clone(),
            since: filter.since,
        };
        let pulls = self.store.pulls(&q).await?;
        // Bytes are kept per day: the day `since` falls in counts whole.
        let by_day = UsageQuery {
            since: filter.since.map(crate::state::day_of),
            ..q.clone()
        };
        let transfer = self.store.transfer(&by_day).await?;
        let contents = self.store.load().await?;
        let name_of = |id: &str| -> (String, String) {
            if let Some(r) = contents.licenses.iter().find(|r| r.license.id == id) {
                return ("license".into(), r.license.customer.clone());
            }
            if let Some(k) = contents.keys.iter().find(|k| k.key.id == id) {
                return ("apikey".into(), k.key.name.clone());
            }
            match config.tenants.license(id) {
                Some(l) => ("license".into(), l.customer.clone()),
                None => ("license".into(), String::new()),
            }
        };
        // (subject, app) → usage; (image, reference) → per-image numbers.
        type Images = BTreeMap<(String, String), (String, u64, SystemTime)>;
        type Totals = (u64, u64, Option<SystemTime>, Images);
        let mut by: BTreeMap<(String, String), Totals> = BTreeMap::new();
        for p in &pulls {
            let e = by
                .entry((p.subject.clone(), p.app.clone()))
                .or_insert_with(|| (0, 0, None, BTreeMap::new()));
            e.0 += 1;
            e.2 = Some(e.2.map_or(p.time, |t| t.max(p.time)));
            let i =
                e.3.entry((p.image.clone(), p.reference.clone()))
                    .or_insert_with(|| (p.digest.clone(), 0, p.time));
            i.1 += 1;
            if p.time >= i.2 {
                i.0 = p.digest.clone();
                i.2 = p.time;
            }
        }
        for t in &transfer {
            let e = by
                .entry((t.subject.clone(), t.app.clone()))
                .or_insert_with(|| (0, 0, None, BTreeMap::new()));
            e.1 += t.bytes;
        }
        let subjects = by
            .into_iter()
            .map(|((id, app), (count, bytes, last, images))| {
                let (kind, name) = name_of(&id);
                SubjectUsage {
                    id,
                    kind,
                    name,
                    app,
                    pulls: count,
                    bytes,
                    last_pull: last.map(rfc3339),
                    images: images
                        .into_iter()
                        .map(|((image, reference), (digest, n, at))| ImageUsage {
                            image,
                            reference,
                            digest,
                            pulls: n,
                            last_pull: rfc3339(at),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(UsageReport {
            since: filter.since.map(rfc3339),
            subjects,
        })
    }
}

// ---- the recorder ----------------------------------------------------------------------

/// How long a pull covers the requests that follow it: a re-pull of the same tag inside
/// this is the same pull; after it, another.
pub const PULL_WINDOW: Duration = Duration::from_secs(300);
/// Events waiting for the writer; more are dropped (and counted) rather than waiting.
const QUEUE: usize = 65_536;
/// The writer writes at least this often when there is something to write.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A batch is written early once it holds this many pulls.
const BATCH_PULLS: usize = 10_000;
/// Pulls kept for a retry while the store cannot be written; beyond this they are dropped.
const MAX_PENDING_PULLS: usize = 100_000;
/// Entries of the pull window per table (bounded memory: ~100 bytes each).
const WINDOW_ENTRIES: u64 = 100_000;

/// One manifest request answered, as the edge saw it.
pub struct ManifestRequest<'a> {
    /// The license's or key's public id.
    pub subject: &'a str,
    pub app: &'a str,
    /// `host/repository` as the upstream names it.
    pub image: &'a str,
    pub reference: &'a Reference,
    /// The digest it resolved to (the answer's `Docker-Content-Digest`).
    pub digest: Option<&'a str>,
    /// The body, when an image index was served: its child manifests belong to this pull.
    pub index: Option<&'a [u8]>,
    pub client: &'a str,
    pub user_agent: &'a str,
}

/// What the writer is sent.
enum Event {
    Pull(PullEvent),
    Served {
        subject: String,
        key: bool,
        /// (app, image) when the request was for an image's content.
        image: Option<(String, String)>,
        bytes: u64,
        at: SystemTime,
    },
    Flush(oneshot::Sender<()>),
}

/// Decides which manifest requests are pulls and hands pulls, bytes served and API-key use
/// to a background writer that batches them into the store about once a second. The
/// request path never waits on the database: the queue is bounded, and when it is full
/// the record is dropped and counted (`berth_usage_dropped_total`).
///
/// The counting rule, per subject and image: a pull is counted once, however many
/// requests it takes. A tag request counts unless the same tag resolved to the same digest
/// was counted within [`PULL_WINDOW`]; it makes its digest belong to the pull. A digest
/// request counts unless the digest belongs to a recent pull of that subject (the
/// follow-up of a tag lookup, a child manifest of an index served, the same digest pulled
/// again). So `docker pull img:1.0` (HEAD tag, GET index by digest, GET child by digest)
/// is one pull, `img@sha256:<index>` is one, tags 1.0 and 1.1 are two, a digest of another
/// version right after a tag pull is two, and the same tag again after the window is two.
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    /// (subject, image, tag, digest) counted within the window; never refreshed.
    tags: moka::sync::Cache<u64, ()>,
    /// (subject, image, digest) belonging to a recent pull.
    belongs: moka::sync::Cache<u64, ()>,
    keys: std::collections::hash_map::RandomState,
    dropped: Counter,
    /// Drops since the last warning, and when that was (seconds since the epoch).
    unreported: AtomicU64,
    warned_at: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts the writer over `store` (call inside the runtime) and registers
    /// `berth_usage_dropped_total` into `registry`.
    pub fn start(
        store: Arc<dyn Store>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Arc<Recorder> {
        let r = Recorder::with_window(store, PULL_WINDOW, QUEUE);
        registry.register(
            "usage_dropped",
            "Usage records (pulls, bytes served, key use) dropped because the writer fell behind or the store failed",
            r.dropped.clone(),
        );
        Arc::new(r)
    }

    fn with_window(store: Arc<dyn Store>, window: Duration, queue: usize) -> Recorder {
        let (tx, rx) = mpsc::channel(queue);
        let dropped = Counter::default();
        tokio::spawn(write(rx, store, dropped.clone()));
        let table = || {
            moka::sync::Cache::builder()
                .max_capacity(WINDOW_ENTRIES)
                .time_to_live(window)
                .build()
        };
        Recorder {
            tx,
            tags: table(),
            belongs: table(),
            keys: Default::default(),
            dropped,
            unreported: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        }
    }

    fn key(&self, parts: impl Hash) -> u64 {
        self.keys.hash_one(parts)
    }

    /// Tells the recorder of a manifest request answered (GET or HEAD); returns whether it
    /// counted as a pull.
    pub fn manifest(&self, m: &ManifestRequest<'_>, now: SystemTime) -> bool {
        let counted = match m.reference {
            Reference::Tag(tag) => {
                let counted = self
                    .tags
                    .entry(self.key((m.subject, m.image, tag.as_str(), m.digest)))
                    .or_insert(())
                    .is_fresh();
                if let Some(d) = m.digest {
                    self.belongs.insert(self.key((m.subject, m.image, d)), ());
                }
                counted
            }
            // Fresh: it belonged to no recent pull, and belongs to this one from now on.
            Reference::Digest(d) => self
                .belongs
                .entry(self.key((m.subject, m.image, d.to_string().as_str())))
                .or_insert(())
                .is_fresh(),
        };
        if let Some(body) = m.index {
            for child in crate::oci::manifest::Manifest::parse(body)
                .map(|i| i.manifests)
                .unwrap_or_default()
            {
                let d = child.digest.to_string();
                self.belongs
                    .insert(self.key((m.subject, m.image, d.as_str())), ());
            }
        }
        if counted {
            self.send(Event::Pull(PullEvent {
                time: now,
                subject: m.subject.to_string(),
                app: m.app.to_string(),
                image: m.image.to_string(),
                reference: m.reference.to_string(),
                digest: m.digest.unwrap_or_default().to_string(),
                client: m.client.to_string(),
                user_agent: m.user_agent.to_string(),
            }));
        }
        counted
    }

    /// Tells the recorder a response body ended: `bytes` of `image` (app, image) sent to
    /// `subject`. A key's use is recorded for any request; a license's bytes only for an
    /// image's content.
    pub fn served(&self, subject: &str, key: bool, image: Option<(&str, &str)>, bytes: u64) {
        let image = image.filter(|_| bytes > 0);
        if !key && image.is_none() {
            return;
        }
        self.send(Event::Served {
            subject: subject.to_string(),
            key,
            image: image.map(|(a, i)| (a.to_string(), i.to_string())),
            bytes,
            at: SystemTime::now(),
        });
    }

    /// Writes what is queued (shutdown): waits for the writer to take it.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Event::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    fn send(&self, e: Event) {
        if self.tx.try_send(e).is_ok() {
            return;
        }
        self.dropped.inc();
        self.unreported.fetch_add(1, Ordering::Relaxed);
        // One warning, then at most one a minute with the count, while it lasts.
        let now = crate::state::to_millis(SystemTime::now()) as u64 / 1000;
        let last = self.warned_at.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = self.unreported.swap(0, Ordering::Relaxed);
            tracing::warn!(
                dropped = n,
                "usage recording is falling behind: records dropped (berth_usage_dropped_total)"
            );
        }
    }
}

/// What the writer holds between writes: pulls in order, bytes added up per (subject,
/// app, image, day), and the last use of each key.
#[derive(Default)]
struct Pending {
    pulls: Vec<PullEvent>,
    transfer: HashMap<(String, String, String, SystemTime), u64>,
    keys: HashMap<String, SystemTime>,
}

impl Pending {
    fn add(&mut self, e: Event) {
        match e {
            Event::Pull(p) => self.pulls.push(p),
            Event::Served {
                subject,
                key,
                image,
                bytes,
                at,
            } => {
                if key {
                    let t = self.keys.entry(subject.clone()).or_insert(at);
                    *t = (*t).max(at);
                }
                if let Some((app, image)) = image {
                    *self
                        .transfer
                        .entry((subject, app, image, crate::state::day_of(at)))
                        .or_insert(0) += bytes;
                }
            }
            Event::Flush(_) => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.pulls.is_empty() && self.transfer.is_empty() && self.keys.is_empty()
    }

    fn batch(&self) -> UsageBatch {
        UsageBatch {
            pulls: self.pulls.clone(),
            transfer: self
                .transfer
                .iter()
                .map(|((subject, app, image, day), bytes)| Transfer {
                    subject: subject.clone(),
                    app: app.clone(),
                    image: image.clone(),
                    day: *day,
                    bytes: *bytes,
                })
                .collect(),
            keys_used: self.keys.iter().map(|(k, t)| (k.clone(), *t)).collect(),
        }
    }
}

/// The writer: takes events off the queue and writes them in one transaction per second
/// (or per [`BATCH_PULLS`]). A store that fails keeps what was not written for the next
/// try, up to [`MAX_PENDING_PULLS`]; it is logged once per outage.
async fn write(mut rx: mpsc::Receiver<Event>, store: Arc<dyn Store>, dropped: Counter) {
    let mut pending = Pending::default();
    let mut failing = false;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut flushed = None;
        let open = tokio::select! {
            e = rx.recv() => match e {
                Some(Event::Flush(done)) => { flushed = Some(done); true }
                Some(e) => {
                    pending.add(e);
                    if pending.pulls.len() < BATCH_PULLS {
                        continue;
                    }
                    true
                }
                None => false,
            },
            _ = tick.tick() => true,
        };
        // Take what else is queued before writing, so a burst is one transaction.
        while let Ok(e) = rx.try_recv() {
            match e {
                Event::Flush(done) => flushed = flushed.or(Some(done)),
                e => pending.add(e),
            }
            if pending.pulls.len() >= BATCH_PULLS {
                break;
            }
        }
        if !pending.is_empty() {
            match store.record_usage(&pending.batch()).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("usage is written to the state store again");
                        failing = false;
                    }
                    pending = Pending::default();
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "cannot write usage to the state store; keeping it for the next try");
                        failing = true;
                    }
                    if pending.pulls.len() > MAX_PENDING_PULLS {
                        let n = pending.pulls.len() - MAX_PENDING_PULLS;
                        pending.pulls.drain(..n);
                        dropped.inc_by(n as u64);
                    }
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sqlite::SqliteStore;

    const INDEX: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const CHILD: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const OTHER: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn index_body() -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": CHILD, "size": 10}],
        }))
        .unwrap()
    }

    async fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db"))
            .await
            .unwrap();
        (dir, Arc::new(s))
    }

    /// One request of `subject` for `image`; `reference` is a tag or a digest.
    fn ask(
        r: &Recorder,
        subject: &str,
        image: &str,
        reference: &str,
        digest: &str,
        index: bool,
    ) -> bool {
        let reference = Reference::parse(reference).unwrap();
        let body = index_body();
        r.manifest(
            &ManifestRequest {
                subject,
                app: "acme",
                image,
                reference: &reference,
                digest: Some(digest),
                index: index.then_some(body.as_slice()),
                client: "192.0.2.1",
                user_agent: "t/1",
            },
            SystemTime::now(),
        )
    }

    #[tokio::test]
    async fn a_pull_counts_once_however_many_requests_it_takes() {
        let (_d, s) = store().await;
        let r = Recorder::with_window(s.clone(), Duration::from_millis(400), 64);
        let img = "h/app";
        // docker pull img:1.0 of a multi-arch image: HEAD tag, GET index, GET child.
        assert!(ask(&r, "lic_a", img, "1.0", INDEX, false));
        assert!(!ask(&r, "lic_a", img, INDEX, INDEX, true));
        assert!(!ask(&r, "lic_a", img, CHILD, CHILD, false));
        // Again at once: the same pull.
        assert!(!ask(&r, "lic_a", img, "1.0", INDEX, false));
        // Another tag, and a digest of another version: pulls of their own.
        assert!(ask(&r, "lic_a", img, "1.1", OTHER, false));
        // Another subject pulling by digest (an index, then its child): one.
        assert!(ask(&r, "lic_b", img, INDEX, INDEX, true));
        assert!(!ask(&r, "lic_b", img, CHILD, CHILD, false));
        // The same digest for another image is another image.
        assert!(ask(&r, "lic_b", "h/other", CHILD, CHILD, false));
        // A tag that moved is a new pull.
        assert!(ask(&r, "lic_b", img, "1.0", OTHER, false));
        // After the window, the same tag again.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(ask(&r, "lic_a", img, "1.0", INDEX, false));
        r.flush().await;
        let pulls = s.pulls(&UsageQuery::default()).await.unwrap();
        let seen: Vec<(&str, &str, &str)> = pulls
            .iter()
            .map(|p| (p.subject.as_str(), p.reference.as_str(), p.digest.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("lic_a", "1.0", INDEX),
                ("lic_a", "1.1", OTHER),
                ("lic_b", INDEX, INDEX),
                ("lic_b", CHILD, CHILD),
                ("lic_b", "1.0", OTHER),
                ("lic_a", "1.0", INDEX),
            ]
        );
        assert_eq!(pulls[0].client, "192.0.2.1");
        assert_eq!(pulls[0].user_agent, "t/1");
        assert_eq!(pulls[0].image, img);
    }

    #[tokio::test]
    async fn bytes_and_key_use_are_added_up_and_written() {
        let (_d, s) = store().await;
        let r = Recorder::with_window(s.clone(), PULL_WINDOW, 64);
        r.served("lic_a", false, Some(("acme", "h/app")), 100);
        r.served("lic_a", false, Some(("acme", "h/app")), 23);
        r.served("lic_a", false, Some(("acme", "h/other")), 5);
        // Nothing to say: a license's request for no image, an empty body.
        r.served("lic_a", false, None, 50);
        r.served("lic_a", false, Some(("acme", "h/app")), 0);
        r.served("key_1", true, None, 0);
        r.flush().await;
        let mut t = s.transfer(&UsageQuery::default()).await.unwrap();
        t.sort_by(|a, b| a.image.cmp(&b.image));
        let got: Vec<(&str, u64)> = t.iter().map(|t| (t.image.as_str(), t.bytes)).collect();
        assert_eq!(got, [("h/app", 123), ("h/other", 5)]);
        // A second batch adds to the day's numbers.
        r.served("lic_a", false, Some(("acme", "h/app")), 7);
        r.flush().await;
        let t = s.transfer(&UsageQuery::default()).await.unwrap();
        assert_eq!(t.iter().find(|t| t.image == "h/app").unwrap().bytes, 130);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (_d, s) = store().await;
        // The writer cannot run before this test yields: the queue of 2 fills up.
        let r = Recorder::with_window(s.clone(), PULL_WINDOW, 2);
        for i in 0..5 {
            r.served("lic_a", false, Some(("acme", "h/app")), 1 + i);
        }
        assert_eq!(r.dropped.get(), 3);
        r.flush().await;
        let t = s.transfer(&UsageQuery::default()).await.unwrap();
        assert_eq!(t[0].bytes, 1 + 2, "the first two were written");
    }

    /// `cargo test --release --lib recorder_throughput -- --ignored --nocapture`: pulls per
    /// second the recorder takes into SQLite without a drop, and what one manifest request
    /// costs on the request path.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn recorder_throughput() {
        let (_d, s) = store().await;
        let r = Arc::new(Recorder::with_window(s.clone(), PULL_WINDOW, QUEUE));
        let n = 200_000u64;
        let start = std::time::Instant::now();
        for i in 0..n {
            let tag = format!("v{i}");
            ask(&r, "lic_a", "h/app", &tag, INDEX, false);
            if i % 20_000 == 0 {
                // Paced in bursts: 20k per burst, then let the writer catch up a little.
                tokio::task::yield_now().await;
            }
        }
        let hot = start.elapsed();
        r.flush().await;
        let all = start.elapsed();
        let written = s.pulls(&UsageQuery::default()).await.unwrap().len() as u64;
        println!(
            "{n} counted pulls: {:.2} µs each on the request path; {written} written in {:.2?} ({:.0}/s); dropped {}",
            hot.as_secs_f64() * 1e6 / n as f64,
            all,
            written as f64 / all.as_secs_f64(),
            r.dropped.get()
        );
        // The repeat of a pull (the common case: a pull's follow-ups) sends nothing.
        let start = std::time::Instant::now();
        for _ in 0..n {
            ask(&r, "lic_a", "h/app", INDEX, INDEX, false);
        }
        println!(
            "follow-up request: {:.2} µs each",
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }
}
