//! GRPO's policy loss as a [`TokenLoss`], so that a GRPO micro-batch runs through the same
//! `train::micro_step` as an SFT one. The loss is defined on response tokens (one entry per
//! token, responses back to back); the packed micro-batch has a row per token of prompt +
//! response. `rows` maps one to the other: the log-probs of the response tokens are gathered
//! from their rows, and the gradient is scattered back (0 on every other row: prompt tokens
//! and each sequence's last row).
//!
//! The loss runs through [`RlOps::rl_loss`] on the backend's buffers: the fused kernel
//! (kernels/grpo_loss.cu) on CUDA and the emulator, `rl::grpo::policy_loss` on the CPU. The
//! gather, the loss and the scatter stay on the device; the per-token inputs (`logp_old`,
//! advantages, mask, reference log-probs, TRL's entropy mask) are uploaded, and only the
//! loss and its metrics come back. On-policy (`GrpoTokenLoss::on_policy`) the old log-probs
//! are the forward's own, read where they are.

use super::grpo::{Aggregation, LossConfig, LossInputs, LossMetrics, Normalizer, PolicyLoss};
use crate::backend::chunked_logprob::RowwiseGrad;
use crate::backend::rl_ops::{AdvBuf, LossBufs, LossSummary, RlOps};
use crate::train::{LossGrad, TokenLoss};

pub struct GrpoTokenLoss<'a> {
    /// Packed row of each response token (`train::LossBatch::rows`), ascending.
    rows: &'a [usize],
    /// `rows` as maximal runs of consecutive rows: (first response token, first row, length).
    runs: Vec<(usize, usize, usize)>,
    /// The micro-batch's per-token inputs except `logp` and `entropy`, which `eval` takes
    /// from the model (`entropy` only when the loss has an entropy bonus).
    inputs: LossInputs<'a>,
    cfg: &'a LossConfig,
    norm: Normalizer,
    inv_temp: f32,
    /// The old log-probs are this forward's own (`on_policy`): `inputs.logp_old` is empty.
    old_from_forward: bool,
    track_ratio_dev: bool,
    /// After `eval`: the loss's diagnostics for this micro-batch.
    pub metrics: LossMetrics,
    /// After `eval`, when asked for by [`GrpoTokenLoss::tracking_ratio_dev`]: the largest
    /// |exp(logp - logp_old) - 1| over this micro-batch (0 on the first PPO epoch's first
    /// mini-batch when the log-prob path is batch-invariant). 0 otherwise.
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
        Self::build(rows, inputs, cfg, norm, inv_temp, false)
    }

    /// [`GrpoTokenLoss::new`] for an on-policy update (one PPO epoch of one mini-batch): the
    /// old log-probs are the ones `eval` gets from the model, the same bits their own forward
    /// pass would give (`rl::trainer`, batch invariance), so `inputs.logp_old` is empty and
    /// the ratio is exactly 1.
    pub fn on_policy(
        rows: &'a [usize],
        inputs: LossInputs<'a>,
        cfg: &'a LossConfig,
        norm: Normalizer,
        inv_temp: f32,
    ) -> Self {
        assert!(inputs.logp_old.is_empty(), "GrpoTokenLoss::on_policy: old log-probs given");
        Self::build(rows, inputs, cfg, norm, inv_temp, true)
    }

    fn build(
        rows: &'a [usize],
        inputs: LossInputs<'a>,
        cfg: &'a LossConfig,
        norm: Normalizer,
        inv_temp: f32,
        old_from_forward: bool,
    ) -> Self {
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "GrpoTokenLoss: rows ascending");
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (k, &r) in rows.iter().enumerate() {
            match runs.last_mut() {
                Some((_, r0, len)) if *r0 + *len == r => *len += 1,
                _ => runs.push((k, r, 1)),
            }
        }
        GrpoTokenLoss {
            rows,
            runs,
            inputs,
            cfg,
            norm,
            inv_temp,
            old_from_forward,
            track_ratio_dev: false,
            metrics: LossMetrics::default(),
            max_ratio_dev: 0.0,
        }
    }

    /// Also measure `max_ratio_dev` (the only per-token values this loss brings to the host:
    /// the response tokens' log-probs, for the first-epoch batch-invariance check).
    pub fn tracking_ratio_dev(mut self) -> Self {
        self.track_ratio_dev = true;
        self
    }
}

impl GrpoTokenLoss<'_> {
    /// Whether a token's gradient depends on its own log-prob (and entropy) alone: not GSPO's
    /// or GMPO's sequence ratios, nor seq-mean-token-mean's per-response token count (every
    /// other weight comes from the step's global counts, `Normalizer`). Such a loss gives
    /// each chunk of the head's backward its gradient there ([`RowwiseGrad`]).
    fn token_level(&self) -> bool {
        let per_response = |a: Aggregation| a == Aggregation::SeqMeanTokenMean;
        !matches!(self.cfg.policy, PolicyLoss::Gspo | PolicyLoss::GeoMean)
            && !per_response(self.cfg.agg)
            && !per_response(self.cfg.pg_aggregation())
    }
}

impl GrpoTokenLoss<'_> {
    /// `rl_loss` on the response tokens `r` of this micro-batch, whose log-probs (and
    /// entropies, with an entropy term) are `logp` (`entropy`) and whose responses are
    /// `offsets` (within `r`): the call's summary, d loss / d logp, d loss / d entropy. The
    /// per-token inputs are uploaded from the host; on-policy the old log-probs are `logp`.
    fn call<B: RlOps>(
        &self,
        be: &B,
        r: std::ops::Range<usize>,
        logp: &B::Buf,
        entropy: Option<&B::Buf>,
        offsets: &[usize],
    ) -> (LossSummary, B::Buf, Option<B::Buf>) {
        let x = &self.inputs;
        let up = |v: &[f32]| be.upload(&v[r.clone()]);
        let old = (!self.old_from_forward).then(|| up(x.logp_old));
        let (adv, mask) = (up(x.advantages), up(x.mask));
        let (ref_logp, pg_mask) = (x.ref_logp.map(up), x.pg_mask.map(up));
        let bufs = LossBufs {
            logp,
            logp_old: old.as_ref().unwrap_or(logp),
            advantages: AdvBuf::PerToken(&adv),
            mask: &mask,
            ref_logp: ref_logp.as_ref(),
            entropy,
            pg_mask: pg_mask.as_ref(),
            selected: x.selected.map(|s| &s[r.clone()]),
            offsets,
        };
        let mut dlogp = be.zeros(r.len());
        let mut dentropy = entropy.map(|_| be.zeros(r.len()));
        let out = be.rl_loss(&bufs, self.cfg, self.norm, &mut dlogp, dentropy.as_mut());
        (out, dlogp, dentropy)
    }
}

/// The token-level loss of a chunk of response tokens: the same `rl_loss` call as `eval`'s, on
/// the chunk's tokens as one response (their weights do not depend on the response,
/// [`GrpoTokenLoss::token_level`]), so each token's gradient has the bits `eval` gives it.
impl<B: RlOps> RowwiseGrad<B> for GrpoTokenLoss<'_> {
    fn grad(
        &self,
        be: &B,
        first: usize,
        n: usize,
        lp: &B::Buf,
        entropy: &B::Buf,
    ) -> (B::Buf, Option<B::Buf>) {
        let exact = |src: &B::Buf| {
            let mut out = be.zeros(n);
            be.copy(&mut out, 0, src, 0, n);
            out
        };
        let logp = exact(lp);
        let entropy = (self.cfg.entropy_coef != 0.0).then(|| exact(entropy));
        let (_, dlogp, dentropy) =
            self.call(be, first..first + n, &logp, entropy.as_ref(), &[0, n]);
        (dlogp, dentropy)
    }
}

impl<B: RlOps> TokenLoss<B> for GrpoTokenLoss<'_> {
    fn inv_temp(&self) -> f32 {
        self.inv_temp
    }

    fn rowwise(&self) -> Option<&dyn RowwiseGrad<B>> {
        self.token_level().then_some(self as &dyn RowwiseGrad<B>)
    }

    fn rows(&self) -> &[usize] {
        self.rows
    }

    fn eval(&mut self, be: &B, lp: &B::Buf, ent: &B::Buf) -> LossGrad<B> {
        let (n, t) = (self.rows.len(), be.len(lp));
        assert!(self.rows.last().is_none_or(|&r| r < t), "GrpoTokenLoss: a row past the batch");
        // Response tokens from their packed rows, one copy per response.
        let gather = |src: &B::Buf| {
            let mut out = be.zeros(n);
            for &(k, r, len) in &self.runs {
                be.copy(&mut out, k, src, r, len);
            }
            out
        };
        let logp = gather(lp);
        let entropy = (self.cfg.entropy_coef != 0.0).then(|| gather(ent));
        let x = &self.inputs;
        let (out, dlogp, dentropy) = self.call(be, 0..n, &logp, entropy.as_ref(), x.offsets);
        self.metrics = out.metrics;
        if self.track_ratio_dev && !self.old_from_forward {
            self.max_ratio_dev = be
                .download(&logp)
                .iter()
                .zip(x.logp_old)
                .map(|(a, b)| ((a - b) as f64).exp() - 1.0)
                .fold(0.0f64, |m, d| m.max(d.abs()));
        }
        // Back to the packed rows: 0 on every row the loss does not train.
        let scatter = |per_token: &B::Buf| {
            let mut out = be.zeros(t);
            for &(k, r, len) in &self.runs {
                be.copy(&mut out, r, per_token, k, len);
            }
            out
        };
        LossGrad { loss: out.loss, dlp: scatter(&dlogp), dent: dentropy.as_ref().map(scatter) }
    }
}
