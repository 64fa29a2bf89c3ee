//! Progress on stderr: one rewritten status line on a terminal, plain lines otherwise (CI
//! logs and pipes must not fill with carriage returns).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    tty: bool,
    last: Option<Instant>,
    dirty: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
            dirty: false,
        }
    }

    /// A transient status (bytes moving): redrawn at most 5 times a second on a terminal,
    /// never printed elsewhere.
    pub fn status(&mut self, msg: &str) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[K{msg}");
        let _ = e.flush();
        self.dirty = true;
    }

    /// A lasting event (a blob done, an image pushed): a line of its own everywhere.
    pub fn line(&mut self, msg: &str) {
        let mut e = std::io::stderr().lock();
        if self.dirty {
            let _ = write!(e, "\r\x1b[K");
            self.dirty = false;
        }
        let _ = writeln!(e, "{msg}");
    }

    pub fn finish(&mut self) {
        if self.dirty {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
            self.dirty = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
