//! Training: the token-level loss interface that SFT and GRPO share, one micro-batch step
//! (forward, log-probs, loss, backward), the SFT loop, and checkpoints.
//!
//! The split of work: a `TokenLoss` sees only per-row log-probs (and entropies) and returns
//! d(loss)/d(log-prob) per row (and d(loss)/d(entropy)); the model turns that into parameter
//! gradients (`Qwen2::backward`). A loss therefore never touches logits or parameters.

pub mod checkpoint;
pub mod sft;

use crate::backend::Backend;
use crate::model::{Acts, GradScratch, Packed, Qwen2};
use anyhow::Result;
use std::ops::Range;

/// A loss's value on one micro-batch and its gradient per packed row.
#[derive(Clone, Debug, Default)]
pub struct LossGrad {
    /// This micro-batch's contribution to the step's loss (losses of micro-batches add up).
    pub loss: f64,
    /// d(loss)/d(lp[row]); 0 on rows the loss ignores.
    pub dlp: Vec<f32>,
    /// d(loss)/d(entropy[row]), when the loss uses entropies.
    pub dent: Option<Vec<f32>>,
}

/// A loss that is a function of the per-row target log-probs (and entropies) of a packed
/// micro-batch, normalized so that the micro-batches of one optimizer step ADD UP to the
/// step's loss (normalize by step-global counts, never per micro-batch).
pub trait TokenLoss {
    /// Multiplier of the logits before the softmax: 1 for SFT, 1/T for GRPO's rollout T.
    fn inv_temp(&self) -> f32 {
        1.0
    }
    /// `lp[row]`, `ent[row]` for every packed row (rows without a target hold junk and must
    /// get zero gradient).
    fn eval(&self, lp: &[f32], ent: &[f32]) -> LossGrad;
}

/// Supervised fine-tuning: cross-entropy on response tokens only. `weights[row]` is
/// `1 / (response tokens in the whole optimizer step)` on rows whose target is a response
/// token and 0 elsewhere, so `loss = -sum_row weights[row] * lp[row]` is the step's mean
/// token cross-entropy whatever the micro-batching.
#[derive(Clone, Debug)]
pub struct SftLoss {
    pub weights: Vec<f32>,
}

impl SftLoss {
    /// Weights for a packed micro-batch: `trained[row]` says whether row's target (the next
    /// token) is trained; `step_tokens` counts trained targets in the whole optimizer step.
    pub fn new(trained: &[bool], step_tokens: usize) -> Self {
        let w = 1.0 / step_tokens.max(1) as f32;
        SftLoss { weights: trained.iter().map(|&b| if b { w } else { 0.0 }).collect() }
    }
}

impl TokenLoss for SftLoss {
    fn eval(&self, lp: &[f32], _ent: &[f32]) -> LossGrad {
        assert_eq!(lp.len(), self.weights.len(), "SftLoss: one weight per packed row");
        let loss = -self
            .weights
            .iter()
            .zip(lp)
            .filter(|(w, _)| **w != 0.0)
            .map(|(w, l)| *w as f64 * *l as f64)
            .sum::<f64>();
        LossGrad { loss, dlp: self.weights.iter().map(|w| -w).collect(), dent: None }
    }
}

/// Reusable memory of micro-batch steps: activations and gradient scratch, re-planned only
/// when the token count changes.
pub struct Workspace<B: Backend> {
    pub acts: Option<Acts<B>>,
    pub scratch: Option<GradScratch<B>>,
}

impl<B: Backend> Default for Workspace<B> {
    fn default() -> Self {
        Workspace { acts: None, scratch: None }
    }
}

/// Forward, per-row log-probs, the loss, and backward of one packed micro-batch; gradients
/// are ACCUMULATED into `grads`. Returns the loss contribution (see `LossGrad::loss`).
pub fn micro_step<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    batch: &Packed,
    loss: &dyn TokenLoss,
    ws: &mut Workspace<B>,
    grads: &mut [B::Buf],
) -> Result<f64> {
    // The backward scratch is planned before the forward, where it stays in the steady
    // state: planned after, it would take device blocks the forward's temporaries had freed,
    // and the next step would have to allocate those temporaries anew.
    if ws.scratch.as_ref().map(|s| s.t) != Some(batch.tokens()) {
        ws.scratch = Some(model.alloc_grad_scratch(be, batch.tokens()));
    }
    model.forward(be, batch, &mut ws.acts)?;
    let acts = ws.acts.as_ref().expect("forward planned the activations");
    let (targets, _) = batch.next_token_targets();
    let inv_temp = loss.inv_temp();
    let (lp, ent) = model.token_logprobs(be, acts, &targets, inv_temp);
    let g = loss.eval(&lp, &ent);
    model.backward_with(
        be,
        batch,
        acts,
        &targets,
        &g.dlp,
        g.dent.as_deref(),
        inv_temp,
        grads,
        &mut ws.scratch,
    );
    Ok(g.loss)
}

/// Contiguous runs of `range` whose lengths total at most `budget` tokens (a longer single
/// sequence gets a run of its own); sequences are never split. SFT packs examples with it,
/// GRPO the responses of a mini-batch.
pub fn pack_ranges(lens: &[usize], range: Range<usize>, budget: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut acc) = (range.start, 0);
    for r in range.clone() {
        if r > start && acc + lens[r] > budget {
            out.push(start..r);
            start = r;
            acc = 0;
        }
        acc += lens[r];
    }
    if start < range.end {
        out.push(start..range.end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::pack_ranges;
    use std::ops::Range;

    #[test]
    fn pack_ranges_respects_the_budget_and_never_splits() {
        let lens = [5, 5, 5, 20, 1, 1];
        assert_eq!(pack_ranges(&lens, 0..6, 10), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(pack_ranges(&lens, 2..5, 100), vec![2..5]);
        assert_eq!(pack_ranges(&lens, 3..3, 10), Vec::<Range<usize>>::new());
    }
}
