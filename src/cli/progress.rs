//! Progress bars on stderr, with rate and ETA, for the commands that move
//! a lot of data (ingest, verify, export, gc). Shown only when stderr is a
//! terminal and `--quiet` is not given: logs, pipes and cron mails get
//! nothing but the result.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether bars are drawn at all.
pub fn shown() -> bool {
    !super::quiet() && std::io::stderr().is_terminal()
}

/// A bar over `total` bytes, labelled `what`; hidden when not [`shown`].
pub fn bytes(what: &str, total: u64) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(10));
    let style = ProgressStyle::with_template(
        "{prefix} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    // Redrawn even while nothing advances, so a stalled source shows as a
    // falling rate rather than a frozen line.
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// A bar made on the first report of library functions that call back
/// with (done, total) bytes, so it never shows a made-up total.
pub struct Tracker {
    what: String,
    bar: Option<ProgressBar>,
}

impl Tracker {
    pub fn new(what: &str) -> Tracker {
        Tracker { what: what.to_string(), bar: None }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        let bar = self.bar.get_or_insert_with(|| bytes(&self.what, total));
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
    }

    /// Removes the bar, leaving the terminal to the command's result.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
