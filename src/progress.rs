//! The progress bar of every long phase (SFT, scoring, GRPO, evaluation) on stderr.
//! indicatif draws nothing when stderr is not a terminal, so logs and tests stay clean.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps or items, labelled `label`, with elapsed time and ETA.
pub fn bar(len: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    // The template is a constant; the default bar is a harmless fallback rather than a panic.
    let style =
        ProgressStyle::with_template("{msg:>20} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(label.to_string());
    pb
}
