//! The blob cache: single-flight fills (one upstream fetch per blob however many clients
//! ask) on top of the storage seam, and readers that follow a fill as it grows. A fill
//! writes to a staged blob of the backend, which hashes as it goes, and is committed only
//! when digest and length match; readers wait on a watch channel, never poll. Readers that
//! keep up take the fill's recent chunks from memory; only those that fall behind read the
//! staged blob back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};

use super::index::{Index, ReadGuard};
use crate::error::Error;
use crate::oci::Digest;
use crate::storage::{BlobBackend, ErrorKind, LocalFile, StagedBlob, StorageError};

/// Bytes gathered before one hash-and-write on a blocking thread. Followers do not wait
/// for it: they get chunks from the window as they arrive.
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes per read of a cached or filling blob.
pub const READ_CHUNK: usize = 256 * 1024;
/// Bytes of chunks already on disk that a fill keeps in memory for its followers. A
/// follower within this distance of the upstream takes the chunks themselves (no copy, no
/// blocking read); one further behind reads the temp file. Chunks not yet on disk come on
/// top, bounded by the write batching (one batch in flight, one being gathered).
const WINDOW: usize = 1024 * 1024;
/// After a full disk, berth stops trying to cache for this long.
const DISK_FULL_BACKOFF: Duration = Duration::from_secs(60);

/// A fill is per repository (of an app) as well as per digest: a request from another
/// repository, or another app pulling through the same upstream, must not see bytes it has
/// no link to, even while they are in flight.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct FillKey {
    pub repo: crate::content::RepoKey,
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
    /// Bytes received from the upstream and handed to followers (in the window or on disk).
    /// How much is on disk is the window's business: followers only read the file for bytes
    /// the window has let go of, so they need not wake for every write.
    pub received: u64,
    pub end: End,
}

pub struct Fill {
    staged: Arc<dyn StagedBlob>,
    state: watch::Sender<FillState>,
    window: Mutex<Window>,
}

impl Fill {
    fn new(staged: Arc<dyn StagedBlob>) -> Fill {
        let (state, _) = watch::channel(FillState {
            head: Head::Pending,
            received: 0,
            end: End::Running,
        });
        Fill {
            staged,
            state,
            window: Mutex::new(Window::default()),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<FillState> {
        self.state.subscribe()
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a chunk from the upstream visible to followers at once, before it is hashed or
    /// written: followers still hold back the blob's last byte until the digest matched.
    fn publish(&self, chunk: Bytes) {
        let received = {
            let mut w = self.window();
            w.push(chunk);
            w.end
        };
        self.state.send_modify(|s| s.received = received);
    }

    /// Records that the staged blob holds `[0, written)`, so the window may let go of those chunks.
    fn stored(&self, written: u64) {
        self.window().stored(written);
    }

    /// (bytes the window holds, where it starts, bytes on disk), for the tests.
    #[cfg(test)]
    fn window_stats(&self) -> (usize, u64, u64) {
        let w = self.window();
        (w.len, w.end - w.len as u64, w.on_disk)
    }
}

/// The most recent chunks of a fill, contiguous and ending at everything received. A chunk
/// leaves only once it is on disk and the window is over `WINDOW`, so whatever lies before
/// the window's start can be read from the file.
#[derive(Default)]
struct Window {
    /// (offset in the blob, bytes), in order.
    chunks: VecDeque<(u64, Bytes)>,
    /// Bytes in `chunks`.
    len: usize,
    /// Offset just past the last chunk.
    end: u64,
    /// The file holds `[0, on_disk)`.
    on_disk: u64,
}

/// What a follower gets from the window.
enum Taken {
    /// Slices of the window's chunks from the follower's position on (possibly none).
    Memory,
    /// The position lies before the window: read the file, which holds bytes up to here.
    Disk(u64),
}

impl Window {
    fn push(&mut self, chunk: Bytes) {
        let n = chunk.len();
        self.chunks.push_back((self.end, chunk));
        self.end += n as u64;
        self.len += n;
        self.trim();
    }

    fn stored(&mut self, written: u64) {
        self.on_disk = written;
        self.trim();
    }

    fn trim(&mut self) {
        while self.len > WINDOW {
            match self.chunks.front() {
                Some((off, b)) if off + b.len() as u64 <= self.on_disk => {
                    self.len -= b.len();
                    self.chunks.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Appends to `out` slices covering `[pos, limit)`, at most `max` bytes (`limit` must
    /// not exceed `end`). Refcounted slices: nothing is copied.
    fn take(&self, pos: u64, limit: u64, max: usize, out: &mut Vec<Bytes>) -> Taken {
        let start = self.end - self.len as u64;
        if pos < start {
            return Taken::Disk(self.on_disk);
        }
        let limit = limit.min(pos + max as u64);
        let first = self
            .chunks
            .partition_point(|(off, b)| off + b.len() as u64 <= pos);
        let mut at = pos;
        for (off, b) in self.chunks.range(first..) {
            if at >= limit {
                break;
            }
            let from = (at - off) as usize;
            let to = (limit - off).min(b.len() as u64) as usize;
            out.push(b.slice(from..to));
            at = off + to as u64;
        }
        Taken::Memory
    }
}

pub enum Begin {
    /// The caller must fetch the blob and feed the writer.
    Leader(Box<FillWriter>),
    /// Someone is already fetching it: follow that fill.
    Follower(Arc<Fill>),
    /// The disk is full (or nothing can be staged): serve without caching.
    PassThrough,
}

/// A cached blob opened for reading; the guard keeps eviction away until dropped.
pub struct Opened {
    pub size: u64,
    /// The blob as a local file (sendfile), when the backend has one.
    pub local: Option<LocalFile>,
    pub guard: ReadGuard,
}

pub struct BlobStore {
    backend: Arc<dyn BlobBackend>,
    index: Arc<Index>,
    fills: Mutex<HashMap<FillKey, Arc<Fill>>>,
    disk_full_until: Mutex<Option<Instant>>,
}

impl BlobStore {
    pub fn new(backend: Arc<dyn BlobBackend>, index: Arc<Index>) -> BlobStore {
        BlobStore {
            backend,
            index,
            fills: Mutex::new(HashMap::new()),
            disk_full_until: Mutex::new(None),
        }
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn backend(&self) -> &Arc<dyn BlobBackend> {
        &self.backend
    }

    /// Opens a cached blob for reading; the guard keeps eviction away until dropped.
    pub async fn open(&self, d: &Digest) -> Option<Opened> {
        let (size, guard) = self.index.acquire(d.hex())?;
        match self.backend.local_file(d).await {
            Ok(local) => Some(Opened { size, local, guard }),
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
                dir = %self.backend.describe(),
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
        let staged = match self.backend.stage() {
            Ok(s) => s,
            Err(e) => {
                if e.kind() == ErrorKind::Full {
                    self.note_disk_full();
                } else {
                    tracing::warn!(error = %e, "cannot create a cache temp file; serving pass-through");
                }
                return Begin::PassThrough;
            }
        };
        let fill = Arc::new(Fill::new(staged));
        fills.insert(key.clone(), fill.clone());
        self.index.metrics().set_fills_in_flight(fills.len());
        Begin::Leader(Box::new(FillWriter {
            store: self.clone(),
            fill,
            key,
            broken: false,
            batch: Vec::new(),
            batch_len: 0,
            written: 0,
            total: None,
            done: false,
            pending: None,
            received: 0,
        }))
    }

    fn end_fill(&self, key: &FillKey) {
        let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        fills.remove(key);
        self.index.metrics().set_fills_in_flight(fills.len());
    }
}

/// The leader's side of a fill. Dropping it unfinished fails the fill and drops the staged
/// blob, so a panicking or cancelled fetch cannot leave readers waiting.
pub struct FillWriter {
    store: Arc<BlobStore>,
    fill: Arc<Fill>,
    key: FillKey,
    /// A write failed: the staged blob is incomplete and cannot be committed.
    broken: bool,
    /// The upstream's chunks gathered for the next write, as they came: copying them into
    /// one buffer cost a pass over every byte (frames are ~400 KiB anyway, so a batch is
    /// rarely more than one chunk).
    batch: Vec<Bytes>,
    /// Bytes in `batch`.
    batch_len: usize,
    written: u64,
    total: Option<u64>,
    done: bool,
    /// The batch being hashed and written while the next one is gathered from the upstream.
    pending: Option<WriteJob>,
    /// Bytes accepted from the upstream so far (written, in flight or buffered).
    received: u64,
}

type WriteJob = tokio::task::JoinHandle<Result<usize, StorageError>>;

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
        if chunk.is_empty() {
            return Ok(());
        }
        if let Some(t) = self.total {
            if self.received + chunk.len() as u64 > t {
                return Err(format!("upstream sent more than the announced {t} bytes"));
            }
        }
        self.received += chunk.len() as u64;
        self.batch_len += chunk.len();
        self.batch.push(chunk.clone());
        self.fill.publish(chunk);
        if self.batch_len >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the batch in flight.
    async fn settle(&mut self) -> Result<(), String> {
        let Some(job) = self.pending.take() else {
            return Ok(());
        };
        self.broken = true;
        let res = job.await.map_err(|e| format!("write task failed: {e}"))?;
        match res {
            Ok(n) => {
                self.broken = false;
                self.written += n as u64;
                Ok(())
            }
            Err(e) => {
                if e.kind() == ErrorKind::Full {
                    self.store.note_disk_full();
                }
                Err(format!("writing the cache file failed: {e}"))
            }
        }
    }

    /// Hands the gathered chunks to a blocking task (hash, write, let the window drop them)
    /// and returns at once, so the upstream keeps streaming meanwhile; one batch is in
    /// flight at most, which also keeps the writes in order and the window bounded.
    async fn flush(&mut self) -> Result<(), String> {
        self.settle().await?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let chunks = std::mem::take(&mut self.batch);
        let len = std::mem::take(&mut self.batch_len);
        let fill = self.fill.clone();
        if self.broken {
            return Err("fill already failed".into());
        }
        let offset = self.written;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            // Hashing (the staged blob hashes what it is given) off the async threads: it
            // is the most CPU a fill spends.
            let mut at = offset;
            for c in &chunks {
                fill.staged.append(c)?;
                at += c.len() as u64;
            }
            fill.stored(at);
            Ok(len)
        }));
        Ok(())
    }

    /// Verifies length and digest, lets readers finish, then commits the blob (durable and
    /// visible under its digest: for the filesystem, fsync then rename).
    pub async fn finish(mut self) -> Result<(), String> {
        if let Err(reason) = self.verify().await {
            // Followers are cut with the real reason, not Drop's "fill abandoned".
            self.fill
                .state
                .send_modify(|s| s.end = End::Failed(reason.clone()));
            self.cleanup();
            return Err(reason);
        }
        self.fill.state.send_modify(|s| s.end = End::Verified);
        let published = self
            .fill
            .staged
            .commit(&self.key.digest)
            .await
            .map_err(|e| format!("publishing the cache file failed: {e}"));
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
                self.fill.staged.abort();
                self.store.end_fill(&self.key);
                Err(e)
            }
        }
    }

    async fn verify(&mut self) -> Result<(), String> {
        self.flush().await?;
        self.settle().await?;
        if let Some(t) = self.total {
            if self.written != t {
                return Err(format!("upstream sent {} of {t} bytes", self.written));
            }
        }
        if self.broken {
            return Err("fill already failed".into());
        }
        let got = self.fill.staged.digest();
        if got != self.key.digest {
            return Err(format!("content does not match {}", self.key.digest));
        }
        Ok(())
    }

    pub fn fail(mut self, reason: String) {
        self.fill
            .state
            .send_modify(|s| s.end = End::Failed(reason.clone()));
        self.cleanup();
    }

    fn cleanup(&mut self) {
        self.done = true;
        self.fill.staged.abort();
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
    /// A complete cached blob without a local file: ranged reads from the backend.
    Stored {
        backend: Arc<dyn BlobBackend>,
        digest: Digest,
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
            Source::Stored {
                backend,
                digest,
                size,
                guard,
            } => {
                let end = end.unwrap_or(size).min(size);
                let r = send_stored(&*backend, &digest, start, end, &tx).await;
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

/// The buffers one follower reads the file into, used again once hyper has sent their bytes.
/// A fresh zeroed buffer per read cost more than the read: in a herd of 32 clients behind
/// one fill, zeroing and the allocator's page faults and `madvise` calls for those buffers
/// were a quarter of berth's CPU. A buffer taken back holds the bytes of an earlier read,
/// so it need not be zeroed again for `read_exact_at`.
#[derive(Default)]
struct Buffers(Vec<Bytes>);

impl Buffers {
    /// Enough for what one follower has in flight: the channel's two, the one being sent
    /// and what hyper queues for the socket.
    const KEEP: usize = 6;

    /// A buffer of `n` initialized bytes: a kept one nobody else holds any more, or a new one.
    fn get(&mut self, n: usize) -> BytesMut {
        let kept = self
            .0
            .iter()
            .position(Bytes::is_unique)
            .and_then(|i| self.0.swap_remove(i).try_into_mut().ok());
        let mut b = kept.unwrap_or_else(|| BytesMut::with_capacity(n.max(READ_CHUNK)));
        if b.len() >= n {
            b.truncate(n);
        } else {
            b.resize(n, 0);
        }
        b
    }

    /// Hands out the bytes read into `b`, keeping a handle to take the buffer back later.
    fn share(&mut self, b: BytesMut) -> Bytes {
        let bytes = b.freeze();
        if self.0.len() < Self::KEEP {
            self.0.push(bytes.clone());
        }
        bytes
    }
}

async fn read_at(
    staged: &Arc<dyn StagedBlob>,
    pos: u64,
    n: usize,
    bufs: &mut Buffers,
) -> std::io::Result<Bytes> {
    let staged = staged.clone();
    let mut buf = bufs.get(n);
    let buf = tokio::task::spawn_blocking(move || {
        staged.read_at(&mut buf, pos)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(bufs.share(buf))
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

/// Sends `[pos, end)` of a stored blob in ranged reads of [`READ_CHUNK`].
async fn send_stored(
    backend: &dyn BlobBackend,
    d: &Digest,
    mut pos: u64,
    end: u64,
    tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    while pos < end {
        let n = ((end - pos) as usize).min(READ_CHUNK);
        let b = backend.read(d, pos, n).await?;
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
    let mut slices = Vec::new();
    let mut bufs = Buffers::default();
    loop {
        let (received, verified) = {
            let st = rx.borrow_and_update();
            match &st.end {
                End::Failed(reason) => return Err(std::io::Error::other(reason.clone())),
                End::Verified => (st.received, true),
                End::Running => (st.received, false),
            }
        };
        // Until the fill is verified the last received byte is held back: a client must
        // never receive a complete body whose digest turns out wrong (HTTP/1.1 clients
        // cannot tell a cut after the last byte from a clean end).
        let available = if verified {
            received
        } else {
            received.saturating_sub(1)
        };
        let limit = end.map_or(available, |e| e.min(available));
        if pos < limit {
            let taken = fill.window().take(pos, limit, READ_CHUNK, &mut slices);
            match taken {
                Taken::Memory => {
                    // Caught up: the read buffers kept from the file need not stay pinned.
                    bufs.0.clear();
                    for b in slices.drain(..) {
                        pos += b.len() as u64;
                        if tx.send(Ok(b)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Taken::Disk(on_disk) => {
                    // Fallen behind the window: the staged blob holds everything before it.
                    let n = ((limit.min(on_disk) - pos) as usize).min(READ_CHUNK);
                    debug_assert!(n > 0, "the window let go of bytes not on disk");
                    let b = read_at(&fill.staged, pos, n, &mut bufs).await?;
                    pos += n as u64;
                    if tx.send(Ok(b)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            continue;
        }
        if verified {
            return Ok(());
        }
        if end.is_some_and(|e| pos >= e && e < received) {
            // A range wholly received: no need to wait for the rest of the blob.
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

    /// A cache directory on the filesystem backend, removed when dropped.
    struct Dir {
        _tmp: tempfile::TempDir,
        fs: Arc<crate::storage::fs::FsBackend>,
    }

    impl Dir {
        /// Staged files left in the directory.
        fn staged(&self) -> usize {
            self.fs.staged_files()
        }
    }

    fn store() -> (Arc<BlobStore>, Dir) {
        let tmp = tempfile::tempdir().unwrap();
        let (fs, _) = crate::storage::fs::FsBackend::open(tmp.path()).unwrap();
        let fs = Arc::new(fs);
        let s = Arc::new(BlobStore::new(
            fs.clone(),
            Arc::new(Index::new(None, crate::cache::CacheMetrics::default())),
        ));
        (s, Dir { _tmp: tmp, fs })
    }

    /// The committed blob, read back through the backend.
    async fn stored(s: &BlobStore, d: &Digest) -> Vec<u8> {
        let size = s.backend().stat(d).await.unwrap().size;
        s.backend()
            .read(d, 0, size as usize)
            .await
            .unwrap()
            .to_vec()
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
            repo: crate::content::RepoKey::proxied("a", "u", "r"),
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
        assert_eq!(stored(&s, &d).await, data);
        assert_eq!(dir.staged(), 0);
        drop(dir);
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
        let mut failure = None;
        while let Some(item) = rx.recv().await {
            match item {
                Ok(b) => got += b.len(),
                Err(e) => failure = Some(e.to_string()),
            }
        }
        let failure = failure.expect("the reader was not cut");
        assert!(failure.contains("does not match"), "reader saw {failure:?}");
        assert!(got < 14, "a reader received the whole wrong body");
        assert!(!s.is_cached(&d));
        assert!(s.backend().stat(&d).await.is_err());
        assert_eq!(dir.staged(), 0);
        // The next request starts a fresh fill.
        assert!(matches!(s.begin(key(&d)), Begin::Leader(_)));
        drop(dir);
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
        drop(dir);
    }

    /// Bytes that differ from position to position (a repeating pattern would hide
    /// misplaced chunks).
    fn blob(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Feeds `data[from..to]` in chunks of uneven sizes, as hyper's frames come.
    async fn feed(w: &mut FillWriter, data: &[u8], from: usize, to: usize) {
        let sizes = [16_384, 1, 65_536, 7_919, 131_072, 400_000, 3];
        let mut at = from;
        let mut i = 0;
        while at < to {
            let n = sizes[i % sizes.len()].min(to - at);
            w.write(Bytes::copy_from_slice(&data[at..at + n]))
                .await
                .unwrap();
            at += n;
            i += 1;
        }
    }

    fn leader(s: &Arc<BlobStore>, d: &Digest) -> Box<FillWriter> {
        match s.begin(key(d)) {
            Begin::Leader(w) => w,
            _ => panic!("expected leader"),
        }
    }

    #[tokio::test]
    async fn a_caught_up_follower_gets_chunks_before_they_are_on_disk() {
        let (s, dir) = store();
        let data = blob(10_000);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let fill = w.fill();
        let mut rx = read(
            Source::Filling(fill.clone()),
            0,
            None,
            Duration::from_secs(5),
        );
        w.write(Bytes::copy_from_slice(&data)).await.unwrap();
        // Far less than a write batch: nothing is on disk, yet the follower has every byte
        // but the held-back last one, straight from memory.
        let mut got = Vec::new();
        while got.len() < data.len() - 1 {
            got.extend_from_slice(&rx.recv().await.unwrap().unwrap());
        }
        assert_eq!(got, data[..data.len() - 1]);
        assert_eq!(fill.staged.len(), 0, "bytes came from the file");
        w.finish().await.unwrap();
        got.extend(collect(rx).await.unwrap());
        assert_eq!(got, data);
        drop(dir);
    }

    #[tokio::test]
    async fn a_follower_that_keeps_up_gets_the_exact_bytes() {
        let (s, dir) = store();
        let data = blob(6 * 1024 * 1024 + 123);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let rx = read(Source::Filling(w.fill()), 0, None, Duration::from_secs(5));
        let reader = tokio::spawn(collect(rx));
        feed(&mut w, &data, 0, data.len()).await;
        w.finish().await.unwrap();
        assert!(reader.await.unwrap().unwrap() == data);
        assert_eq!(stored(&s, &d).await, data);
        drop(dir);
    }

    #[tokio::test]
    async fn a_late_follower_reads_the_file_then_catches_up() {
        let (s, dir) = store();
        let data = blob(8 * 1024 * 1024 + 77);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let fill = w.fill();
        feed(&mut w, &data, 0, 4 * 1024 * 1024).await;
        // Every flush waits for the one before, so by now all but the last two batches are
        // on disk and the window has let go of the start of the blob.
        let (_, start, _) = fill.window_stats();
        assert!(start > 1024 * 1024, "window still starts at {start}");
        let late = tokio::spawn(collect(read(
            Source::Filling(fill.clone()),
            0,
            None,
            Duration::from_secs(5),
        )));
        // A range that lies wholly before the window comes from the file, and ends without
        // waiting for the fill.
        let range = collect(read(
            Source::Filling(fill.clone()),
            1000,
            Some(300_000),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
        assert_eq!(range, data[1000..300_000]);
        feed(&mut w, &data, 4 * 1024 * 1024, data.len()).await;
        w.finish().await.unwrap();
        assert!(late.await.unwrap().unwrap() == data);
        drop(dir);
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_the_window_continues_from_the_file() {
        let (s, dir) = store();
        let data = blob(5 * 1024 * 1024 + 5);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let fill = w.fill();
        // Nobody reads this one while the fill runs: it takes a few chunks from memory,
        // then the window moves on without it.
        let rx = read(
            Source::Filling(fill.clone()),
            0,
            None,
            Duration::from_secs(5),
        );
        feed(&mut w, &data, 0, data.len()).await;
        assert!(fill.window_stats().1 > 0);
        w.finish().await.unwrap();
        assert!(collect(rx).await.unwrap() == data);
        drop(dir);
    }

    #[tokio::test]
    async fn the_window_stays_bounded_whatever_the_blob_size() {
        let (s, dir) = store();
        let data = blob(24 * 1024 * 1024);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let fill = w.fill();
        // A follower that never reads must not make the fill keep its chunks.
        let stuck = read(
            Source::Filling(fill.clone()),
            0,
            None,
            Duration::from_secs(5),
        );
        // hyper's frames are up to ~400 KiB; larger chunks check that a chunk stays in the
        // window, over the cap, until it is on disk.
        let sizes = [50_000, 100_000, 150_000, 400_000, 1_500_000, 3_000_000];
        let largest_chunk = 3_000_000;
        let mut at = 0;
        let mut peak = 0;
        for i in 0.. {
            if at >= data.len() {
                break;
            }
            let n = sizes[i % sizes.len()].min(data.len() - at);
            w.write(Bytes::copy_from_slice(&data[at..at + n]))
                .await
                .unwrap();
            at += n;
            let (len, start, on_disk) = fill.window_stats();
            // Only chunks not yet on disk may push the window over its cap...
            assert!(
                len as u64 <= WINDOW as u64 + (at as u64 - on_disk),
                "window {len} at {at}, on disk {on_disk}"
            );
            // ...and those are one batch being written plus one being gathered.
            assert!(
                len <= WINDOW + 2 * WRITE_BATCH + largest_chunk,
                "window {len}"
            );
            assert!(start <= on_disk, "bytes before the window are not on disk");
            peak = peak.max(len);
        }
        assert!(peak > WINDOW / 2, "the window never filled: {peak}");
        w.finish().await.unwrap();
        drop(stuck);
        drop(dir);
    }

    #[tokio::test]
    async fn the_last_byte_waits_for_the_digest() {
        let (s, dir) = store();
        let data = blob(3 * 1024 * 1024);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let mut rx = read(Source::Filling(w.fill()), 0, None, Duration::from_secs(5));
        feed(&mut w, &data, 0, data.len()).await;
        let mut got = Vec::new();
        while got.len() < data.len() - 1 {
            got.extend_from_slice(&rx.recv().await.unwrap().unwrap());
        }
        assert_eq!(got.len(), data.len() - 1);
        // Every byte has arrived, but not the verdict: the last byte must not leave.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "a follower got past the held-back byte before verification"
        );
        w.finish().await.unwrap();
        got.extend(collect(rx).await.unwrap());
        assert!(got == data);
        drop(dir);
    }

    #[tokio::test]
    async fn a_bad_digest_fails_every_follower() {
        let (s, dir) = store();
        let mut data = blob(4 * 1024 * 1024);
        let d = Digest::sha256_of(&data);
        // One flipped byte in the middle; the length is right.
        data[2 * 1024 * 1024] ^= 1;
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let fill = w.fill();
        let idle = Duration::from_secs(5);
        let early = tokio::spawn(collect(read(Source::Filling(fill.clone()), 0, None, idle)));
        feed(&mut w, &data, 0, 3 * 1024 * 1024).await;
        let late = tokio::spawn(collect(read(Source::Filling(fill.clone()), 0, None, idle)));
        let tail = tokio::spawn(collect(read(
            Source::Filling(fill.clone()),
            3 * 1024 * 1024,
            None,
            idle,
        )));
        feed(&mut w, &data, 3 * 1024 * 1024, data.len()).await;
        let err = w.finish().await.unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        for (name, r) in [("early", early), ("late", late), ("tail", tail)] {
            assert!(r.await.unwrap().is_err(), "{name} follower ended cleanly");
        }
        assert!(!s.is_cached(&d));
        assert_eq!(dir.staged(), 0);
        drop(dir);
    }

    #[tokio::test]
    async fn a_stalled_fill_times_followers_out() {
        let (s, dir) = store();
        let data = blob(100_000);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let rx = read(
            Source::Filling(w.fill()),
            0,
            None,
            Duration::from_millis(200),
        );
        w.write(Bytes::copy_from_slice(&data[..50_000]))
            .await
            .unwrap();
        let err = collect(rx).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        drop(w);
        drop(dir);
    }

    #[tokio::test]
    async fn more_than_the_announced_length_fails_the_fill() {
        let (s, dir) = store();
        let data = blob(700_000);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(600_000));
        // Over the length while a batch is still in flight must be caught too.
        w.write(Bytes::copy_from_slice(&data[..300_000]))
            .await
            .unwrap();
        assert!(w
            .write(Bytes::copy_from_slice(&data[300_000..]))
            .await
            .is_err());
        drop(dir);
    }

    /// The engine on a backend without local files (the in-memory one here, an object
    /// store later): followers get the fill, and the committed blob is served whole and in
    /// ranges through ranged reads instead of a file.
    #[tokio::test]
    async fn a_backend_without_local_files_fills_and_serves_through_ranged_reads() {
        let mem = Arc::new(crate::storage::memory::MemoryBackend::default());
        let s = Arc::new(BlobStore::new(
            mem.clone(),
            Arc::new(Index::new(None, crate::cache::CacheMetrics::default())),
        ));
        let data = blob(3 * READ_CHUNK + 1234);
        let d = Digest::sha256_of(&data);
        let mut w = leader(&s, &d);
        w.head(Some(data.len() as u64));
        let follower = tokio::spawn(collect(read(
            Source::Filling(w.fill()),
            0,
            None,
            Duration::from_secs(5),
        )));
        feed(&mut w, &data, 0, data.len()).await;
        w.finish().await.unwrap();
        assert!(follower.await.unwrap().unwrap() == data);
        assert_eq!(mem.staged_count(), 0);
        let opened = s.open(&d).await.expect("cached");
        assert!(opened.local.is_none());
        let source = |o: Opened| Source::Stored {
            backend: s.backend().clone(),
            digest: d.clone(),
            size: o.size,
            guard: o.guard,
        };
        let whole = collect(read(source(opened), 0, None, Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(whole == data);
        let opened = s.open(&d).await.unwrap();
        let range = collect(read(
            source(opened),
            READ_CHUNK as u64 - 10,
            Some(2 * READ_CHUNK as u64 + 10),
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
        assert_eq!(range, data[READ_CHUNK - 10..2 * READ_CHUNK + 10]);
    }

    /// `berth_cache_fills_in_flight` counts a fill from its start to its end, whether it
    /// committed or was abandoned.
    #[tokio::test]
    async fn fills_in_flight_is_set_when_fills_start_and_end() {
        use crate::cache::metrics::value_in;
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::cache::CacheMetrics::register(&mut registry);
        let mem = Arc::new(crate::storage::memory::MemoryBackend::default());
        let s = Arc::new(BlobStore::new(mem, Arc::new(Index::new(None, metrics))));
        let in_flight = || value_in(&registry, "cache_fills_in_flight");
        let (one, two) = (blob(1000), blob(2000));
        let (d1, d2) = (Digest::sha256_of(&one), Digest::sha256_of(&two));
        let mut w1 = leader(&s, &d1);
        let w2 = leader(&s, &d2);
        assert_eq!(in_flight(), 2.0);
        w1.head(Some(one.len() as u64));
        feed(&mut w1, &one, 0, one.len()).await;
        w1.finish().await.unwrap();
        assert_eq!(in_flight(), 1.0);
        drop(w2);
        assert_eq!(in_flight(), 0.0);
        assert_eq!(value_in(&registry, "cache_blobs"), 1.0);
    }

    #[test]
    fn read_buffers_come_back_only_once_nobody_holds_their_bytes() {
        let mut bufs = Buffers::default();
        let mut b = bufs.get(1000);
        assert_eq!(b.len(), 1000);
        b.fill(7);
        let sent = bufs.share(b);
        // Still queued for the socket: the next read must not overwrite it.
        let mut other = bufs.get(1000);
        assert_ne!(other.as_ptr(), sent.as_ptr());
        other.fill(9);
        assert!(sent.iter().all(|&x| x == 7));
        let other = bufs.share(other);
        let ptr = sent.as_ptr();
        drop(sent);
        // Sent and dropped: the same memory comes back, as it was (no zeroing).
        let again = bufs.get(600);
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again.len(), 600);
        assert!(again.iter().all(|&x| x == 7));
        // A longer read than the buffer last held is zero-filled past the old bytes.
        let longer = bufs.get(READ_CHUNK);
        assert_ne!(longer.as_ptr(), other.as_ptr());
        assert_eq!(longer.len(), READ_CHUNK);
    }
}
