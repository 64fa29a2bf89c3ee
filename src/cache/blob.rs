//! The blob store: content-addressed files under `<cache.dir>/sha256/<hex>`, single-flight
//! fills (one upstream fetch per blob however many clients ask), and readers that follow a
//! fill as it grows. A fill writes to a temp file, hashing as it goes, and is renamed in
//! only when digest and length match; readers wait on a watch channel, never poll.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use super::index::{Index, ReadGuard};
use crate::error::Error;
use crate::oci::Digest;

/// Bytes gathered before one write (and one wake-up of readers).
const WRITE_BATCH: usize = 256 * 1024;
/// The first batch is small, so the first bytes reach clients without waiting for a full
/// batch (time to first byte).
const FIRST_BATCH: usize = 16 * 1024;
/// Bytes per read of a cached or filling blob.
pub const READ_CHUNK: usize = 256 * 1024;
/// After a full disk, berth stops trying to cache for this long.
const DISK_FULL_BACKOFF: Duration = Duration::from_secs(60);

/// A fill is per repository as well as per digest: a request from another repository must
/// not see bytes it has no link to, even while they are in flight.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct FillKey {
    pub upstream: String,
    pub repository: String,
    pub digest: Digest,
}

#[derive(Debug, Clone)]
pub enum Head {
    Pending,
    /// The upstream answered 200; the total length when it said so.
    Ready(Option<u64>),
    Failed(Error),
}

#[derive(Debug, Clone)]
pub enum End {
    Running,
    /// Every byte is written and the digest matched.
    Verified,
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct FillState {
    pub head: Head,
    pub written: u64,
    pub end: End,
}

pub struct Fill {
    file: Arc<std::fs::File>,
    state: watch::Sender<FillState>,
}

impl Fill {
    pub fn subscribe(&self) -> watch::Receiver<FillState> {
        self.state.subscribe()
    }
}

pub enum Begin {
    /// The caller must fetch the blob and feed the writer.
    Leader(Box<FillWriter>),
    /// Someone is already fetching it: follow that fill.
    Follower(Arc<Fill>),
    /// The disk is full (or the temp file cannot be created): serve without caching.
    PassThrough,
}

pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
    index: Arc<Index>,
    fills: Mutex<HashMap<FillKey, Arc<Fill>>>,
    disk_full_until: Mutex<Option<Instant>>,
}

impl BlobStore {
    pub fn new(root: PathBuf, tmp: PathBuf, index: Arc<Index>) -> BlobStore {
        BlobStore {
            root,
            tmp,
            index,
            fills: Mutex::new(HashMap::new()),
            disk_full_until: Mutex::new(None),
        }
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join(d.hex())
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Opens a cached blob for reading; the guard keeps eviction away until dropped.
    pub fn open(&self, d: &Digest) -> Option<(Arc<std::fs::File>, u64, ReadGuard)> {
        let (size, guard) = self.index.acquire(d.hex())?;
        match std::fs::File::open(self.path(d)) {
            Ok(f) => Some((Arc::new(f), size, guard)),
            Err(_) => {
                // Removed behind berth's back: forget it so the next request refills.
                drop(guard);
                self.index.forget(d.hex());
                None
            }
        }
    }

    pub fn fills_in_flight(&self) -> usize {
        self.fills.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_cached(&self, d: &Digest) -> bool {
        self.index.contains(d.hex())
    }

    fn disk_full(&self) -> bool {
        let mut g = self
            .disk_full_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match *g {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *g = None;
                false
            }
            None => false,
        }
    }

    fn note_disk_full(&self) {
        let mut g = self
            .disk_full_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            tracing::error!(
                dir = %self.root.display(),
                "cache disk is full: serving pass-through without caching for {DISK_FULL_BACKOFF:?}"
            );
        }
        *g = Some(Instant::now() + DISK_FULL_BACKOFF);
    }

    /// Joins the fill for `key` or starts one. Exactly one caller per key gets `Leader`.
    pub fn begin(self: &Arc<Self>, key: FillKey) -> Begin {
        if self.disk_full() {
            return Begin::PassThrough;
        }
        let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fills.get(&key) {
            return Begin::Follower(f.clone());
        }
        let tmp_path = self.tmp.join(super::temp_name());
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_path)
        {
            Ok(f) => Arc::new(f),
            Err(e) => {
                if is_disk_full(&e) {
                    self.note_disk_full();
                } else {
                    tracing::warn!(error = %e, "cannot create a cache temp file; serving pass-through");
                }
                return Begin::PassThrough;
            }
        };
        let (tx, _) = watch::channel(FillState {
            head: Head::Pending,
            written: 0,
            end: End::Running,
        });
        let fill = Arc::new(Fill { file, state: tx });
        fills.insert(key.clone(), fill.clone());
        Begin::Leader(Box::new(FillWriter {
            store: self.clone(),
            fill,
            key,
            tmp_path,
            hasher: Some(Sha256::new()),
            buf: BytesMut::with_capacity(WRITE_BATCH),
            written: 0,
            total: None,
            done: false,
            pending: None,
            received: 0,
        }))
    }

    fn end_fill(&self, key: &FillKey) {
        self.fills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The leader's side of a fill. Dropping it unfinished fails the fill and removes the temp
/// file, so a panicking or cancelled fetch cannot leave readers waiting.
pub struct FillWriter {
    store: Arc<BlobStore>,
    fill: Arc<Fill>,
    key: FillKey,
    tmp_path: PathBuf,
    hasher: Option<Sha256>,
    buf: BytesMut,
    written: u64,
    total: Option<u64>,
    done: bool,
    /// The batch being hashed and written while the next one is gathered from the upstream.
    pending: Option<WriteJob>,
    /// Bytes accepted from the upstream so far (written, in flight or buffered).
    received: u64,
}

type WriteJob = tokio::task::JoinHandle<(Sha256, std::io::Result<usize>)>;

impl FillWriter {
    pub fn fill(&self) -> Arc<Fill> {
        self.fill.clone()
    }

    /// Where a resumed upstream request must start.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn total(&self) -> Option<u64> {
        self.total
    }

    pub fn head(&mut self, total: Option<u64>) {
        self.total = total;
        self.fill.state.send_modify(|s| s.head = Head::Ready(total));
    }

    pub fn head_failed(mut self, err: Error) {
        self.fill.state.send_modify(|s| {
            s.head = Head::Failed(err.clone());
            s.end = End::Failed(err.to_string());
        });
        self.cleanup();
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), String> {
        if let Some(t) = self.total {
            if self.written + (self.buf.len() + chunk.len()) as u64 > t {
                return Err(format!("upstream sent more than the announced {t} bytes"));
            }
        }
        self.buf.extend_from_slice(&chunk);
        self.received += chunk.len() as u64;
        let batch = if self.written == 0 && self.pending.is_none() {
            FIRST_BATCH
        } else {
            WRITE_BATCH
        };
        if self.buf.len() >= batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the batch in flight and takes back the hasher.
    async fn settle(&mut self) -> Result<(), String> {
        let Some(job) = self.pending.take() else {
            return Ok(());
        };
        let (hasher, res) = job.await.map_err(|e| format!("write task failed: {e}"))?;
        match res {
            Ok(n) => {
                self.hasher = Some(hasher);
                self.written += n as u64;
                Ok(())
            }
            Err(e) => {
                if is_disk_full(&e) {
                    self.store.note_disk_full();
                }
                Err(format!("writing the cache file failed: {e}"))
            }
        }
    }

    /// Hands the gathered bytes to a blocking task (hash, write, wake readers) and returns
    /// at once, so the upstream keeps streaming meanwhile; one batch is in flight at most,
    /// which also keeps the writes in order and memory bounded.
    async fn flush(&mut self) -> Result<(), String> {
        self.settle().await?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        let fill = self.fill.clone();
        let offset = self.written;
        let mut hasher = self.hasher.take().ok_or("fill already failed")?;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            // Hashing off the async threads: it is the most CPU a fill spends.
            hasher.update(&data);
            let res = fill.file.write_all_at(&data, offset).map(|_| data.len());
            if res.is_ok() {
                let w = offset + data.len() as u64;
                fill.state.send_modify(|s| s.written = w);
            }
            (hasher, res)
        }));
        Ok(())
    }

    /// Verifies length and digest, lets readers finish, then makes the blob durable and
    /// visible under its digest.
    pub async fn finish(mut self) -> Result<(), String> {
        self.flush().await?;
        self.settle().await?;
        if let Some(t) = self.total {
            if self.written != t {
                return Err(format!("upstream sent {} of {t} bytes", self.written));
            }
        }
        let hasher = self.hasher.take().ok_or("fill already failed")?;
        let got = Digest::from_sha256(&hasher.finalize());
        if got != self.key.digest {
            return Err(format!("content does not match {}", self.key.digest));
        }
        self.fill.state.send_modify(|s| s.end = End::Verified);
        let file = self.fill.file.clone();
        let tmp = self.tmp_path.clone();
        let dest = self.store.path(&self.key.digest);
        let published = tokio::task::spawn_blocking(move || {
            // fsync before rename: after a power cut the name must never point at
            // missing bytes.
            file.sync_data()?;
            std::fs::rename(&tmp, &dest)
        })
        .await
        .map_err(|e| format!("publish task failed: {e}"))
        .and_then(|r| r.map_err(|e| format!("publishing the cache file failed: {e}")));
        self.done = true;
        match published {
            Ok(()) => {
                self.store
                    .index
                    .insert(self.key.digest.hex(), self.written, false);
                self.store.end_fill(&self.key);
                Ok(())
            }
            Err(e) => {
                // Readers already got verified bytes; only the cache copy is lost.
                let _ = std::fs::remove_file(&self.tmp_path);
                self.store.end_fill(&self.key);
                Err(e)
            }
        }
    }

    pub fn fail(mut self, reason: String) {
        self.fill
            .state
            .send_modify(|s| s.end = End::Failed(reason.clone()));
        self.cleanup();
    }

    fn cleanup(&mut self) {
        self.done = true;
        let _ = std::fs::remove_file(&self.tmp_path);
        self.store.end_fill(&self.key);
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if !self.done {
            self.fill.state.send_modify(|s| {
                if matches!(s.head, Head::Pending) {
                    s.head = Head::Failed(Error::Internal("fill abandoned".into()));
                }
                s.end = End::Failed("fill abandoned".into());
            });
            self.cleanup();
        }
    }
}

/// Where a reader takes bytes from.
pub enum Source {
    /// A complete cached file; the guard pins it against eviction while it is read.
    Cached {
        file: Arc<std::fs::File>,
        size: u64,
        guard: ReadGuard,
    },
    /// A fill in progress.
    Filling(Arc<Fill>),
}

/// Streams `[start, end)` of a blob into a channel. Followers of a fill send bytes as soon
/// as they are on disk and end only when the fill is verified; a failed fill or a fill
/// that makes no progress for `idle` ends the stream with an error (the client's connection
/// is then cut, never silently short).
pub fn read(
    source: Source,
    start: u64,
    end: Option<u64>,
    idle: Duration,
) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let result = match source {
            Source::Cached { file, size, guard } => {
                let r = send_range(&file, start, end.unwrap_or(size).min(size), &tx).await;
                drop(guard);
                r
            }
            Source::Filling(fill) => follow(&fill, start, end, idle, &tx).await,
        };
        if let Err(e) = result {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn read_at(file: &Arc<std::fs::File>, pos: u64, len: usize) -> std::io::Result<Bytes> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, pos)?;
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Sends `[pos, end)` of a file this reader has to itself; returns `Ok` early if the client
/// went away. Sequential reads on the reader's own descriptor fill buffers without zeroing
/// them first, and one chunk is read ahead while the previous one is written out.
async fn send_range(
    file: &Arc<std::fs::File>,
    mut pos: u64,
    end: u64,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let f = file.clone();
    tokio::task::spawn_blocking(move || (&*f).seek(SeekFrom::Start(pos)))
        .await
        .map_err(std::io::Error::other)??;
    while pos < end {
        let n = ((end - pos) as usize).min(READ_CHUNK);
        let f = file.clone();
        let b = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(n);
            (&*f).take(n as u64).read_to_end(&mut buf)?;
            if buf.len() != n {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "cached blob is shorter than its index entry",
                ));
            }
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        pos += n as u64;
        if tx.send(Ok(b)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

async fn follow(
    fill: &Arc<Fill>,
    mut pos: u64,
    end: Option<u64>,
    idle: Duration,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    let mut rx = fill.subscribe();
    loop {
        let st = rx.borrow_and_update().clone();
        // Until the fill is verified the last written byte is held back: a client must
        // never receive a complete body whose digest turns out wrong (HTTP/1.1 clients
        // cannot tell a cut after the last byte from a clean end).
        let available = match st.end {
            End::Verified => st.written,
            _ => st.written.saturating_sub(1),
        };
        let limit = end.map_or(available, |e| e.min(available));
        if pos < limit {
            let n = ((limit - pos) as usize).min(READ_CHUNK);
            let b = read_at(&fill.file, pos, n).await?;
            pos += n as u64;
            if tx.send(Ok(b)).await.is_err() {
                return Ok(());
            }
            continue;
        }
        match &st.end {
            End::Verified => return Ok(()),
            End::Failed(reason) => return Err(std::io::Error::other(reason.clone())),
            End::Running => {
                if end.is_some_and(|e| pos >= e && e < st.written) {
                    // A range wholly written: no need to wait for the rest of the blob.
                    return Ok(());
                }
                match tokio::time::timeout(idle, rx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(std::io::Error::other("fill ended without a result")),
                    Err(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no progress from the upstream for {idle:?}"),
                        ))
                    }
                }
            }
        }
    }
}

/// Waits until a fill knows whether the upstream will send the blob.
pub async fn wait_head(fill: &Fill, limit: Duration) -> Result<Option<u64>, Error> {
    let mut rx = fill.subscribe();
    let res = tokio::time::timeout(limit, rx.wait_for(|s| !matches!(s.head, Head::Pending))).await;
    match res {
        Err(_) => Err(Error::Internal("timed out waiting for the upstream".into())),
        Ok(Err(_)) => Err(Error::Internal("fill vanished".into())),
        Ok(Ok(s)) => match &s.head {
            Head::Ready(t) => Ok(*t),
            Head::Failed(e) => Err(e.clone()),
            Head::Pending => Err(Error::Internal("fill state".into())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Arc<BlobStore>, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "berth-blob-{}-{}",
            std::process::id(),
            super::super::temp_name()
        ));
        std::fs::create_dir_all(dir.join("sha256")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let s = Arc::new(BlobStore::new(
            dir.join("sha256"),
            dir.join("tmp"),
            Arc::new(Index::new(None)),
        ));
        (s, dir)
    }

    async fn collect(mut rx: mpsc::Receiver<std::io::Result<Bytes>>) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    fn key(d: &Digest) -> FillKey {
        FillKey {
            upstream: "u".into(),
            repository: "r".into(),
            digest: d.clone(),
        }
    }

    #[tokio::test]
    async fn followers_get_bytes_before_the_fill_ends() {
        let (s, dir) = store();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::sha256_of(&data);
        let Begin::Leader(mut w) = s.begin(key(&d)) else {
            panic!("expected leader")
        };
        assert!(matches!(s.begin(key(&d)), Begin::Follower(_)));
        w.head(Some(data.len() as u64));
        let mut rx = read(Source::Filling(w.fill()), 0, None, Duration::from_secs(5));
        w.write(Bytes::copy_from_slice(&data[..300_000]))
            .await
            .unwrap();
        // The first batch is on disk: a follower sees it while the fill is still running.
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(&first[..], &data[..first.len()]);
        w.write(Bytes::copy_from_slice(&data[300_000..]))
            .await
            .unwrap();
        w.finish().await.unwrap();
        let mut all = first.to_vec();
        all.extend(collect(rx).await.unwrap());
        assert_eq!(all, data);
        assert!(s.is_cached(&d));
        assert_eq!(std::fs::read(s.path(&d)).unwrap(), data);
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_bad_digest_fails_readers_and_leaves_nothing() {
        let (s, dir) = store();
        let d = Digest::sha256_of(b"the real bytes");
        let Begin::Leader(mut w) = s.begin(key(&d)) else {
            panic!("expected leader")
        };
        w.head(Some(14));
        let rx = read(Source::Filling(w.fill()), 0, None, Duration::from_secs(5));
        w.write(Bytes::from_static(b"the fake bytes"))
            .await
            .unwrap();
        let err = w.finish().await.unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        // The reader got at most all but the last byte, then an error.
        let mut rx = rx;
        let mut got = 0;
        let mut failed = false;
        while let Some(item) = rx.recv().await {
            match item {
                Ok(b) => got += b.len(),
                Err(_) => failed = true,
            }
        }
        assert!(failed);
        assert!(got < 14, "a reader received the whole wrong body");
        assert!(!s.is_cached(&d));
        assert!(!s.path(&d).exists());
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        // The next request starts a fresh fill.
        assert!(matches!(s.begin(key(&d)), Begin::Leader(_)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_abandoned_fill_fails_followers() {
        let (s, dir) = store();
        let d = Digest::sha256_of(b"x");
        let Begin::Leader(w) = s.begin(key(&d)) else {
            panic!("expected leader")
        };
        let fill = w.fill();
        drop(w);
        assert!(wait_head(&fill, Duration::from_secs(1)).await.is_err());
        assert!(
            collect(read(Source::Filling(fill), 0, None, Duration::from_secs(1)))
                .await
                .is_err()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
