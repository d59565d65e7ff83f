//! The progress bar of the long commands (score, eval): items done, elapsed, ETA, on stderr.
//! indicatif draws nothing when stderr is not a terminal, so logs and tests stay clean.

use indicatif::{ProgressBar, ProgressStyle};

pub fn items_bar(len: usize, what: &'static str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    // The template is a constant; the default bar is a harmless fallback rather than a panic.
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} items, {elapsed} (eta {eta})")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what);
    pb
}
