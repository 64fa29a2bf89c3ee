//! Usage: the recorder the customer edge tells of every manifest request and every
//! response body served (which requests count as a pull, batched writes to the store off
//! the request path), and the reports read back from the store's pull records (`berth
//! usage`, `/api/v1/usage`): who pulled which images and versions, how often, how many bytes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// What each app's hosted registry holds now (the app filter applies), and its quota.
    #[serde(default)]
    pub hosted: Vec<HostedUsage>,
}

/// One app's hosted storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostedUsage {
    pub app: String,
    pub used_bytes: u64,
    pub quota_bytes: Option<u64>,
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
        let mut hosted = Vec::new();
        let mut apps = config.tenants.apps();
        apps.sort_by(|a, b| a.slug.cmp(&b.slug));
        for app in apps
            .into_iter()
            .filter(|a| filter.app.as_ref().is_none_or(|f| *f == a.slug))
        {
            hosted.push(HostedUsage {
                app: app.slug.clone(),
                used_bytes: self.store.app_bytes(&app.slug).await?,
                quota_bytes: app.hosted.quota,
            });
        }
        Ok(UsageReport {
            since: filter.since.map(rfc3339),
            subjects,
            hosted,
        })
    }
}

// ---- the recorder ----------------------------------------------------------------------

/// How long a pull covers the requests that follow it: a re-pull of the same tag inside
/// this is the same pull; after it, another.
pub const PULL_WINDOW: Duration = Duration::from_secs(300);
/// Pulls waiting for the writer; more are dropped (and counted) rather than waited for.
const QUEUE: usize = 65_536;
/// The writer writes at least this often when there is something to write.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A batch is written early once it holds this many pulls.
const BATCH_PULLS: usize = 10_000;
/// Pulls kept for a retry while the store cannot be written; beyond this they are dropped.
const MAX_PENDING_PULLS: usize = 100_000;
/// Entries of the pull window per table (bounded memory: ~100 bytes each).
const WINDOW_ENTRIES: u64 = 100_000;
/// (subject, app, image) byte counters and keys held between two writes; beyond this a
/// new one is dropped (and counted).
const MAX_TALLIES: usize = 100_000;

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
    pub client: &'a str,
    pub user_agent: &'a str,
}

/// What the writer is sent: pulls one by one (each is a row), and flush requests.
enum Event {
    Pull(PullEvent),
    Flush(oneshot::Sender<()>),
}

/// Bytes served and keys used since the last write, added up where they happen: a body
/// ending costs one uncontended lock and a few map lookups, no allocation once its
/// (subject, app, image) was seen in this second.
#[derive(Default)]
struct Tally {
    /// subject → app → image → bytes.
    bytes: HashMap<String, HashMap<String, HashMap<String, u64>>>,
    entries: usize,
    /// key id → last use.
    keys: HashMap<String, SystemTime>,
}

/// Decides which manifest requests are pulls, adds up bytes served and API-key use, and
/// hands them to a background writer that batches them into the store about once a
/// second. The request path never waits on the database: pulls go through a bounded
/// queue and bytes into bounded counters; what does not fit is dropped and counted
/// (`berth_usage_dropped_total`).
///
/// The counting rule, per subject and image: a pull is counted once, however many
/// requests it takes. A tag request counts unless the same tag resolved to the same digest
/// was counted within [`PULL_WINDOW`]; its digest then belongs to the pull. A digest
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
    /// (subject, image, index digest) whose children were told within the window.
    indexed: moka::sync::Cache<u64, ()>,
    tally: Arc<Mutex<Tally>>,
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
            "Usage records (pulls, bytes served, key use) dropped because the writer fell behind",
            r.dropped.clone(),
        );
        Arc::new(r)
    }

    fn with_window(store: Arc<dyn Store>, window: Duration, queue: usize) -> Recorder {
        let (tx, rx) = mpsc::channel(queue);
        let dropped = Counter::default();
        let tally = Arc::new(Mutex::new(Tally::default()));
        tokio::spawn(write(rx, tally.clone(), store, dropped.clone()));
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
            indexed: table(),
            tally,
            keys: Default::default(),
            dropped,
            unreported: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        }
    }

    fn key(&self, parts: impl Hash) -> u64 {
        self.keys.hash_one(parts)
    }

    /// Puts `parts` in `table` unless it is there; true when this call put it there (of
    /// several at once, exactly one). A lookup first: the common answer is "there", and a
    /// read is several times cheaper than moka's entry API.
    fn fresh(&self, table: &moka::sync::Cache<u64, ()>, parts: impl Hash) -> bool {
        let k = self.key(parts);
        !table.contains_key(&k) && table.entry(k).or_insert(()).is_fresh()
    }

    /// Tells the recorder of a manifest request answered (GET or HEAD); returns whether it
    /// counted as a pull.
    pub fn manifest(&self, m: &ManifestRequest<'_>, now: SystemTime) -> bool {
        let counted = match m.reference {
            Reference::Tag(tag) => {
                let counted = self.fresh(&self.tags, (m.subject, m.image, tag.as_str(), m.digest));
                if let Some(d) = m.digest {
                    // The digest belongs to this pull for as long as the tag counts; a
                    // repeat inside the window leaves both windows where they are.
                    if counted {
                        self.belongs.insert(self.key((m.subject, m.image, d)), ());
                    } else {
                        self.fresh(&self.belongs, (m.subject, m.image, d));
                    }
                }
                counted
            }
            // Fresh: it belonged to no recent pull, and belongs to this one from now on.
            Reference::Digest(d) => self.fresh(&self.belongs, (m.subject, m.image, d.as_str())),
        };
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

    /// Whether the children of the index `digest` just served to `subject` are to be told
    /// ([`Recorder::children`]): once per window, so that the index is read only then.
    pub fn wants_children(&self, subject: &str, image: &str, digest: &str) -> bool {
        self.fresh(&self.indexed, (subject, image, digest))
    }

    /// The child manifests of `index` (its bytes) belong to the pull that served it.
    pub fn children(&self, subject: &str, image: &str, index: &[u8]) {
        let Some(index) = crate::oci::manifest::Manifest::parse(index) else {
            return;
        };
        for child in &index.manifests {
            let k = self.key((subject, image, child.digest.as_str()));
            self.belongs.insert(k, ());
        }
    }

    /// Tells the recorder a response body ended: `bytes` of `image` (app, image) sent to
    /// `subject`. A key's use is recorded for any request; a license's bytes only for an
    /// image's content.
    pub fn served(&self, subject: &str, key: bool, image: Option<(&str, &str)>, bytes: u64) {
        let image = image.filter(|_| bytes > 0);
        if !key && image.is_none() {
            return;
        }
        let mut full = false;
        {
            let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            let t = &mut *t;
            if key {
                let now = SystemTime::now();
                let room = t.keys.len() < MAX_TALLIES;
                if let Some(at) = t.keys.get_mut(subject) {
                    *at = now;
                } else if room {
                    t.keys.insert(subject.to_string(), now);
                } else {
                    full = true;
                }
            }
            if let Some((app, image)) = image {
                if let Some(n) = t
                    .bytes
                    .get_mut(subject)
                    .and_then(|a| a.get_mut(app))
                    .and_then(|i| i.get_mut(image))
                {
                    *n += bytes;
                } else if t.entries < MAX_TALLIES {
                    *t.bytes
                        .entry(subject.to_string())
                        .or_default()
                        .entry(app.to_string())
                        .or_default()
                        .entry(image.to_string())
                        .or_insert(0) += bytes;
                    t.entries += 1;
                } else {
                    full = true;
                }
            }
        }
        if full {
            self.dropping();
        }
    }

    /// Writes what is queued and added up (shutdown): waits for the writer to take it.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Event::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    fn send(&self, e: Event) {
        if self.tx.try_send(e).is_err() {
            self.dropping();
        }
    }

    fn dropping(&self) {
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

/// What the writer holds until it is written: pulls in order, bytes per (subject, app,
/// image, day), the last use of each key.
#[derive(Default)]
struct Pending {
    pulls: Vec<PullEvent>,
    transfer: HashMap<(String, String, String, SystemTime), u64>,
    keys: HashMap<String, SystemTime>,
}

impl Pending {
    /// Takes the tally as of now (bytes are dated by the second they are written in).
    fn take(&mut self, tally: &Mutex<Tally>, now: SystemTime) {
        let t = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        let day = crate::state::day_of(now);
        for (subject, apps) in t.bytes {
            for (app, images) in apps {
                for (image, bytes) in images {
                    *self
                        .transfer
                        .entry((subject.clone(), app.clone(), image, day))
                        .or_insert(0) += bytes;
                }
            }
        }
        for (k, at) in t.keys {
            let e = self.keys.entry(k).or_insert(at);
            *e = (*e).max(at);
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

/// The writer: takes pulls off the queue and the tally of bytes and keys, and writes them
/// in one transaction per second (or per [`BATCH_PULLS`]). A store that fails keeps what
/// was not written for the next try, up to [`MAX_PENDING_PULLS`]; it is logged once per
/// outage. When the queue closes it writes what is left and ends.
async fn write(
    mut rx: mpsc::Receiver<Event>,
    tally: Arc<Mutex<Tally>>,
    store: Arc<dyn Store>,
    dropped: Counter,
) {
    let mut pending = Pending::default();
    let mut failing = false;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut flushed = None;
        let open = tokio::select! {
            e = rx.recv() => match e {
                Some(Event::Flush(done)) => { flushed = Some(done); true }
                Some(Event::Pull(p)) => {
                    pending.pulls.push(p);
                    if pending.pulls.len() < BATCH_PULLS {
                        continue;
                    }
                    true
                }
                None => false,
            },
            _ = tick.tick() => true,
        };
        // Take what else is queued before writing, so that a burst is one transaction.
        while pending.pulls.len() < BATCH_PULLS {
            match rx.try_recv() {
                Ok(Event::Pull(p)) => pending.pulls.push(p),
                Ok(Event::Flush(done)) => flushed = flushed.or(Some(done)),
                Err(_) => break,
            }
        }
        pending.take(&tally, SystemTime::now());
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

    /// One request of `subject` for `image`; `reference` is a tag or a digest; an index
    /// served tells its children as the edge does.
    fn ask(
        r: &Recorder,
        subject: &str,
        image: &str,
        reference: &str,
        digest: &str,
        index: bool,
    ) -> bool {
        let reference = Reference::parse(reference).unwrap();
        let counted = r.manifest(
            &ManifestRequest {
                subject,
                app: "acme",
                image,
                reference: &reference,
                digest: Some(digest),
                client: "192.0.2.1",
                user_agent: "t/1",
            },
            SystemTime::now(),
        );
        if index && r.wants_children(subject, image, digest) {
            r.children(subject, image, &index_body());
        }
        counted
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
        for tag in ["1", "2", "3", "4", "5"] {
            assert!(ask(&r, "lic_a", "h/app", tag, INDEX, false));
        }
        assert_eq!(r.dropped.get(), 3);
        r.flush().await;
        let pulls = s.pulls(&UsageQuery::default()).await.unwrap();
        let tags: Vec<&str> = pulls.iter().map(|p| p.reference.as_str()).collect();
        assert_eq!(tags, ["1", "2"], "the first two were written");
    }

    /// `cargo test --lib recorder_throughput -- --ignored --nocapture`: pulls per second
    /// the recorder takes into SQLite without a drop, and what one manifest request costs
    /// on the request path (counted, and a follow-up that belongs to a pull).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn recorder_throughput() {
        let (_d, s) = store().await;
        let r = Arc::new(Recorder::with_window(s.clone(), PULL_WINDOW, QUEUE));
        let n: usize = std::env::var("BERTH_BENCH_PULLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50_000);
        let tags: Vec<Reference> = (0..n).map(|i| Reference::Tag(format!("v{i}"))).collect();
        let request = |reference| ManifestRequest {
            subject: "lic_aaaaaaaaaaaaaaaa",
            app: "acme",
            image: "quay.io/acme/app",
            reference,
            digest: Some(INDEX),
            client: "192.0.2.1",
            user_agent: "containerd/1.7.0",
        };
        let start = std::time::Instant::now();
        for t in &tags {
            assert!(r.manifest(&request(t), SystemTime::now()));
        }
        let hot = start.elapsed();
        r.flush().await;
        let all = start.elapsed();
        let written = s.pulls(&UsageQuery::default()).await.unwrap().len();
        println!(
            "{n} counted pulls: {:.2} µs each on the request path; {written} written in {all:.2?} ({:.0}/s); dropped {}",
            hot.as_secs_f64() * 1e6 / n as f64,
            written as f64 / all.as_secs_f64(),
            r.dropped.get()
        );
        let each = |what: &str, start: std::time::Instant| {
            println!(
                "{what}: {:.2} µs each",
                start.elapsed().as_secs_f64() * 1e6 / n as f64
            )
        };
        let start = std::time::Instant::now();
        let last = &tags[n - 1];
        for _ in 0..n {
            r.manifest(&request(last), SystemTime::now());
        }
        each("the same tag again (not counted)", start);
        let by_digest = Reference::parse(INDEX).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..n {
            assert!(!r.manifest(&request(&by_digest), SystemTime::now()));
        }
        each("a digest that belongs to a pull", start);
        let (subject, image) = ("lic_aaaaaaaaaaaaaaaa", "quay.io/acme/app");
        let start = std::time::Instant::now();
        for _ in 0..n {
            r.wants_children(subject, image, INDEX);
        }
        each("an index whose children were told", start);
        let start = std::time::Instant::now();
        for _ in 0..n {
            r.served(subject, false, Some(("acme", image)), 1);
        }
        each("a body served", start);
        let body = index_body();
        let start = std::time::Instant::now();
        for _ in 0..n {
            r.children(subject, image, &body);
        }
        each("an index read for its children (once per pull)", start);
        r.flush().await;
    }
}
