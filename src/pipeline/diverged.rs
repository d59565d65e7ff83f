//! What a run says when its numbers stop being finite: which step, which checkpoint produced
//! it (set aside, never resumed from), and plainly which checkpoint to resume from.

use crate::train::checkpoint::{set_aside_diverged, NonFiniteWeights};
use anyhow::{anyhow, Error};
use std::path::Path;

/// The error that stops a phase whose step `step` (1-based) went non-finite: `what` says what
/// did. The weights that step started from are those saved as `checkpoint-{step - 1}`, if
/// any; that checkpoint is set aside and `latest` moved to the newest good one.
pub fn diverged(phase: &str, dir: &Path, out: &Path, step: u64, what: &str) -> Error {
    stop(phase, dir, out, step, what, step.saturating_sub(1))
}

/// A save that `save_checkpoint` refused because the weights after the step are not finite
/// becomes the same plain message (the checkpoints before it are good); other errors pass.
pub fn unless_weights_diverged(phase: &str, dir: &Path, out: &Path, e: Error) -> Error {
    match e.downcast_ref::<NonFiniteWeights>() {
        // The set-aside step is one no checkpoint has: nothing good is renamed.
        Some(nf) => stop(phase, dir, out, nf.step, &nf.to_string(), nf.step),
        None => e,
    }
}

fn stop(phase: &str, dir: &Path, out: &Path, step: u64, what: &str, before: u64) -> Error {
    let key = phase.to_lowercase();
    let bad = dir.join(format!("checkpoint-{before}"));
    let had_bad = bad.is_dir();
    let good = match set_aside_diverged(dir, before) {
        Ok(g) => g,
        Err(e) => {
            return anyhow!(
                "{phase} step {step}: {what}; stopping (and could not set aside {}: {e:#})",
                bad.display()
            )
        }
    };
    let aside = if had_bad {
        format!(
            " {} holds the weights that produced it; it was renamed {}.diverged and will not be resumed from.",
            bad.display(),
            bad.display()
        )
    } else {
        String::new()
    };
    let next = match (good, phase) {
        (Some(g), _) => format!(
            " The last good checkpoint is {}: `mmr1-fast train --resume {}` continues from it; to train with a lower {key}.lr, start again with --overwrite.",
            g.display(),
            out.display()
        ),
        (None, "RL") => format!(
            " No good RL checkpoint remains: `mmr1-fast train --resume {}` restarts RL from its starting model; a lower rl.lr needs a fresh run (--overwrite).",
            out.display()
        ),
        (None, _) => format!(
            " No good {phase} checkpoint remains: start again with a lower {key}.lr (--overwrite)."
        ),
    };
    anyhow!("{phase} step {step}: {what}; stopping.{aside}{next}")
}
