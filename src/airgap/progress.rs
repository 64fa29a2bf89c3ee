//! Progress on stderr: one redrawn status line on a terminal (`indicatif`, which also keeps
//! lasting lines above it), plain lines otherwise (CI logs and pipes must not fill with
//! carriage returns or escape codes).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    /// `None` when stderr is not a terminal: only lasting lines are printed, plainly.
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress::with_terminal(std::io::stderr().is_terminal())
    }

    fn with_terminal(tty: bool) -> Progress {
        let bar = tty.then(|| {
            // Redrawn at most 5 times a second, as the hand-written line was.
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(5));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Progress { bar }
    }

    /// A transient status (bytes moving): redrawn on a terminal, never printed elsewhere.
    pub fn status(&mut self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
            bar.tick();
        }
    }

    /// A lasting event (a blob done, an image pushed): a line of its own everywhere.
    pub fn line(&mut self, msg: &str) {
        match &self.bar {
            // Printed above the status line, which is drawn again below it.
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_terminal_there_is_no_bar() {
        let mut p = Progress::with_terminal(false);
        assert!(p.bar.is_none());
        p.status("moving bytes");
        p.finish();
        let p = Progress::with_terminal(true);
        assert!(p.bar.is_some());
    }
}
