//! The token-level loss interface that SFT and GRPO share, and SFT's cross-entropy.
//!
//! A `TokenLoss` sees only per-row log-probs (and entropies) of a packed micro-batch and returns
//! d(loss)/d(log-prob) per row (and d(loss)/d(entropy)); the model turns that into parameter
//! gradients (`Qwen2::backward_with`). A loss therefore never touches logits or parameters.
//! GRPO's policy loss implements it in `rl::grpo_token_loss`.

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
    /// get zero gradient). `&mut self`: a loss may keep what it saw for the caller's metrics
    /// (GRPO's clip fractions, KL, ratio deviation).
    fn eval(&mut self, lp: &[f32], ent: &[f32]) -> LossGrad;
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
    fn eval(&mut self, lp: &[f32], _ent: &[f32]) -> LossGrad {
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
