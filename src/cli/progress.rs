//! Progress bars on stderr, with rate and ETA, for the commands that move
//! a lot of data (ingest, verify, export, gc). Shown only when stderr is a
//! terminal and `--quiet` is not given: logs, pipes and cron mails get
//! nothing but the result.

use std::io::IsTerminal;
use std::sync::LazyLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Every bar is drawn through this, and log lines are printed through it
/// too (see [`init_logging`]), so that a log line never lands in the middle
/// of a bar.
static BARS: LazyLock<MultiProgress> = LazyLock::new(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));

/// Starts env_logger with `default_filter` unless RUST_LOG is set; its
/// lines are printed above any progress bar.
pub fn init_logging(default_filter: &str) {
    let logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter)).build();
    let level = logger.filter();
    if indicatif_log_bridge::LogWrapper::new(BARS.clone(), logger).try_init().is_ok() {
        log::set_max_level(level);
    }
}

/// Whether bars are drawn at all.
pub fn shown() -> bool {
    !super::quiet() && std::io::stderr().is_terminal()
}

/// A bar over `total` bytes, labelled `what`; hidden when not [`shown`].
pub fn bytes(what: &str, total: u64) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let bar = BARS.add(ProgressBar::new(total));
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

/// Turns a byte bar into a spinner with `msg`, for a last step whose
/// progress cannot be measured.
pub fn converting(bar: &ProgressBar, msg: &str) {
    if bar.is_hidden() {
        return;
    }
    bar.set_style(ProgressStyle::with_template("{prefix} {spinner} {msg} {elapsed}").expect("valid template"));
    bar.set_message(msg.to_string());
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
