//! GRPO's policy loss ([`policy_loss`]) as a [`TokenLoss`], so that a GRPO micro-batch runs
//! through the same `train::micro_step` as an SFT one. The loss is defined on response
//! tokens (one entry per token, responses back to back); the packed micro-batch has a row per
//! token of prompt + response. `rows` maps one to the other: the log-probs of the response
//! tokens are gathered from their rows, and the gradient is scattered back (0 on every other
//! row: prompt tokens and each sequence's last row).

use super::grpo::{policy_loss, LossConfig, LossInputs, LossMetrics, Normalizer};
use crate::train::{LossGrad, TokenLoss};

pub struct GrpoTokenLoss<'a> {
    /// Packed row of each response token (`train::LossBatch::rows`).
    rows: &'a [usize],
    /// The micro-batch's per-token inputs except `logp` and `entropy`, which `eval` fills from
    /// the model (`entropy` only when the loss has an entropy bonus).
    inputs: LossInputs<'a>,
    cfg: &'a LossConfig,
    norm: Normalizer,
    inv_temp: f32,
    /// After `eval`: the loss's diagnostics for this micro-batch.
    pub metrics: LossMetrics,
    /// After `eval`: the largest |exp(logp - logp_old) - 1| over this micro-batch (0 on the
    /// first PPO epoch's first mini-batch when the log-prob path is batch-invariant).
    pub max_ratio_dev: f64,
}

impl<'a> GrpoTokenLoss<'a> {
    /// `inputs.logp` and `inputs.entropy` are ignored (filled by `eval`); every other slice
    /// has one entry per element of `rows`. `norm` holds the optimizer step's global counts.
    pub fn new(
        rows: &'a [usize],
        inputs: LossInputs<'a>,
        cfg: &'a LossConfig,
        norm: Normalizer,
        inv_temp: f32,
    ) -> Self {
        assert_eq!(inputs.logp_old.len(), rows.len(), "GrpoTokenLoss: one row per response token");
        GrpoTokenLoss {
            rows,
            inputs,
            cfg,
            norm,
            inv_temp,
            metrics: LossMetrics::default(),
            max_ratio_dev: 0.0,
        }
    }
}

impl TokenLoss for GrpoTokenLoss<'_> {
    fn inv_temp(&self) -> f32 {
        self.inv_temp
    }

    fn eval(&mut self, lp: &[f32], ent: &[f32]) -> LossGrad {
        let logp: Vec<f32> = self.rows.iter().map(|&r| lp[r]).collect();
        let entropy: Vec<f32> = self.rows.iter().map(|&r| ent[r]).collect();
        self.max_ratio_dev = logp
            .iter()
            .zip(self.inputs.logp_old)
            .map(|(x, y)| ((x - y) as f64).exp() - 1.0)
            .fold(0.0f64, |m, d| m.max(d.abs()));
        let inputs = LossInputs {
            logp: &logp,
            entropy: (self.cfg.entropy_coef != 0.0).then_some(entropy.as_slice()),
            ..self.inputs
        };
        let out = policy_loss(&inputs, self.cfg, self.norm);
        self.metrics = out.metrics;
        let scatter = |per_token: &[f32]| {
            let mut v = vec![0.0f32; lp.len()];
            for (k, &r) in self.rows.iter().enumerate() {
                v[r] = per_token[k];
            }
            v
        };
        LossGrad {
            loss: out.loss,
            dlp: scatter(&out.dlogp),
            dent: out.dentropy.as_deref().map(scatter),
        }
    }
}
