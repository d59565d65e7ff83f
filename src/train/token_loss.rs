//! The token-level loss interface that SFT and GRPO share, and SFT's cross-entropy.
//!
//! A `TokenLoss` sees only per-row log-probs (and entropies) of a packed micro-batch, in the
//! backend's buffers, and returns d(loss)/d(log-prob) per row (and d(loss)/d(entropy)) in
//! backend buffers; the model turns that into parameter gradients
//! (`Qwen2::backward_with_buf`). A loss therefore never touches logits or parameters, and on a
//! device only its scalars reach the host. GRPO's policy loss implements it in
//! `rl::grpo_token_loss` (through `RlOps::rl_loss`: the fused kernel on CUDA, the `rl/`
//! reference on the CPU).

use crate::backend::chunked_logprob::RowwiseGrad;
use crate::backend::Backend;

/// A loss's value on one micro-batch and its gradient per packed row, in backend buffers.
pub struct LossGrad<B: Backend> {
    /// This micro-batch's contribution to the step's loss (losses of micro-batches add up).
    pub loss: f64,
    /// d(loss)/d(lp[row]) for every packed row; 0 on rows the loss ignores.
    pub dlp: B::Buf,
    /// d(loss)/d(entropy[row]), when the loss uses entropies.
    pub dent: Option<B::Buf>,
}

/// A loss that is a function of the per-row target log-probs (and entropies) of a packed
/// micro-batch, normalized so that the micro-batches of one optimizer step ADD UP to the
/// step's loss (normalize by step-global counts, never per micro-batch).
pub trait TokenLoss<B: Backend> {
    /// Multiplier of the logits before the softmax: 1 for SFT, 1/T for GRPO's rollout T.
    fn inv_temp(&self) -> f32 {
        1.0
    }
    /// The packed rows whose gradient may be non-zero, ascending: the head computes the
    /// log-probs of these rows only, forward and backward (prompt rows cost nothing).
    fn rows(&self) -> &[usize];
    /// `lp[row]`, `ent[row]` for the packed rows of `rows()` (every other row holds junk and
    /// must get zero gradient). `&mut self`: a loss may keep what it saw for the caller's metrics
    /// (GRPO's clip fractions, KL, ratio deviation).
    fn eval(&mut self, be: &B, lp: &B::Buf, ent: &B::Buf) -> LossGrad<B>;
    /// `Some(d loss / d lp)` per packed row when it is known before the log-probs: a constant,
    /// with no entropy term (SFT's `-weights`). A training step then takes the log-probs from
    /// the head's backward, which computes each chunk's logits once where a forward pass and
    /// the backward compute them twice, and calls `eval` after it for the loss value alone;
    /// `eval`'s `dlp` must equal this and its `dent` be `None`. `None` (the default, GRPO):
    /// `eval` first, on the forward's log-probs.
    fn constant_dlp(&self, be: &B) -> Option<B::Buf> {
        let _ = be;
        None
    }
    /// `Some` when the gradient at a row depends on nothing but that row's log-prob and
    /// entropy (GRPO's token-level losses): a training step then gets each chunk's log-probs
    /// from the head's backward, asks this for their gradient there, and calls `eval` after the
    /// backward for the value and metrics alone (its `dlp` and `dent` must equal what this
    /// gave). No forward head pass, as for `constant_dlp`. `None` (the default): `eval` first.
    fn rowwise(&self) -> Option<&dyn RowwiseGrad<B>> {
        None
    }
}

/// Supervised fine-tuning: cross-entropy on response tokens only. `weights[row]` is
/// `1 / (response tokens in the whole optimizer step)` on rows whose target is a response
/// token and 0 elsewhere, so `loss = -sum_row weights[row] * lp[row]` is the step's mean
/// token cross-entropy whatever the micro-batching.
#[derive(Clone, Debug)]
pub struct SftLoss {
    pub weights: Vec<f32>,
    rows: Vec<usize>,
}

impl SftLoss {
    /// Weights for a packed micro-batch: `trained[row]` says whether row's target (the next
    /// token) is trained; `step_tokens` counts trained targets in the whole optimizer step.
    pub fn new(trained: &[bool], step_tokens: usize) -> Self {
        let w = 1.0 / step_tokens.max(1) as f32;
        SftLoss {
            weights: trained.iter().map(|&b| if b { w } else { 0.0 }).collect(),
            rows: (0..trained.len()).filter(|&r| trained[r]).collect(),
        }
    }
}

impl<B: Backend> TokenLoss<B> for SftLoss {
    fn rows(&self) -> &[usize] {
        &self.rows
    }
    /// The gradient is the constant `-weights` (uploaded); the loss value needs the
    /// log-probs, so they come to the host (4 bytes a token; there is no dot product among
    /// the backend's ops, and the sum is kept in f64 as the reference does).
    fn eval(&mut self, be: &B, lp: &B::Buf, _ent: &B::Buf) -> LossGrad<B> {
        let n = self.weights.len();
        assert!(be.len(lp) >= n, "SftLoss: one weight per packed row");
        let lp = be.download(lp);
        let loss = -self.rows.iter().map(|&r| self.weights[r] as f64 * lp[r] as f64).sum::<f64>();
        LossGrad { loss, dlp: self.neg_weights(be), dent: None }
    }
    fn constant_dlp(&self, be: &B) -> Option<B::Buf> {
        Some(self.neg_weights(be))
    }
}

impl SftLoss {
    /// d loss / d lp: `-weights`, uploaded.
    fn neg_weights<B: Backend>(&self, be: &B) -> B::Buf {
        let neg: Vec<f32> = self.weights.iter().map(|w| -w).collect();
        be.upload(&neg)
    }
}
