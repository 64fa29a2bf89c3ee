//! Log output: tracing formats each line on the thread that logs it, and one background
//! thread writes the lines to stderr in order, batching writes when lines arrive faster
//! than the terminal or file takes them, so request handling never waits on a write(2).

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// A `MakeWriter` for tracing-subscriber; cheap to clone.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Msg>,
}

/// Collects one event's bytes and sends them as one line when tracing is done with it.
pub struct Line {
    buf: Vec<u8>,
    tx: SyncSender<Msg>,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            // A bounded queue: under a flood, logging slows callers down rather than
            // growing memory or dropping lines.
            let _ = self.tx.send(Msg::Line(std::mem::take(&mut self.buf)));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            buf: Vec::with_capacity(256),
            tx: self.tx.clone(),
        }
    }
}

impl Sink {
    /// Starts the writer thread.
    pub fn stderr() -> Sink {
        let (tx, rx) = sync_channel(16 * 1024);
        std::thread::Builder::new()
            .name("berth-log".into())
            .spawn(move || write_loop(rx))
            .map(|_| Sink { tx: tx.clone() })
            .unwrap_or(Sink { tx })
    }

    /// Waits until every line logged so far is written (call before exiting).
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    }
}

fn write_loop(rx: Receiver<Msg>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(l) => {
                    let _ = out.write_all(&l);
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        // Nothing queued: the lines so far go out now, so logs are never held back.
        let _ = out.flush();
        // Then a short nap: lines logged meanwhile queue up without waking this thread
        // (a send only costs a futex wake when the receiver is parked in recv), so under
        // load one wake-up and one write(2) carry dozens of lines instead of one each.
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// Longest a line waits in the queue while the writer naps after a write.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);
