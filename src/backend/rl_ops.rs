//! The RL step's batch ops behind one trait, so that a trainer written against [`RlOps`] runs
//! them where its buffers live: on the device for the CUDA backend (kernels/grpo_loss.cu,
//! advantage.cu, vas_score.cu, sample.cu, launched by `backend::cuda::rl`), and through the reference
//! functions of `rl/` for the CPU backend. Both take the same configuration types and return
//! the same summaries, so swapping the backend changes nothing else.

use super::cpu::Cpu;
use super::Backend;
use crate::rl::advantage::{advantages_f64, broadcast_to_tokens, AdvantageConfig, GroupStats};
use crate::rl::grpo::{policy_loss, LossConfig, LossInputs, LossMetrics, Normalizer};
use crate::rl::sampling::{sample_rows, RowDraw, SampleRule};
use crate::rl::vas::{score_item, RolloutScores, TdsMetric};

/// Advantages as the loss reads them.
#[derive(Clone, Copy)]
pub enum AdvBuf<'a, B> {
    /// One value per response, broadcast to its tokens by the loss (outcome rewards).
    PerResponse(&'a B),
    /// One value per token.
    PerToken(&'a B),
}

/// The token arrays of one loss call in backend buffers, packed as
/// [`LossInputs`]: response `r` is tokens `offsets[r]..offsets[r + 1]`; `mask` is a 0/1
/// weight per token.
#[derive(Clone, Copy)]
pub struct LossBufs<'a, B> {
    pub logp: &'a B,
    pub logp_old: &'a B,
    pub advantages: AdvBuf<'a, B>,
    pub mask: &'a B,
    /// Required when `cfg.kl` is set.
    pub ref_logp: Option<&'a B>,
    /// Required when `cfg.entropy_coef != 0`; with it the call also writes d loss / d entropy.
    pub entropy: Option<&'a B>,
    /// Multiplier of the policy term only (TRL's entropy mask, `high_entropy_mask`).
    pub pg_mask: Option<&'a B>,
    /// Clip-Cov / KL-Cov token selection of the whole batch (`cov_selection`, on the host: a
    /// random draw and a top-k over the optimizer-step batch), this call's tokens.
    pub selected: Option<&'a [bool]>,
    pub offsets: &'a [usize],
}

/// Rollouts of many items on the host, packed: item `i` owns rollouts `items[i]..items[i+1]`,
/// rollout `r` is `tokens[rollouts[r]..rollouts[r + 1]]` with correctness `correct[r]`.
#[derive(Clone, Copy)]
pub struct RolloutBatch<'a> {
    pub tokens: &'a [u32],
    pub rollouts: &'a [usize],
    pub items: &'a [usize],
    pub correct: &'a [f32],
}

/// The scalars of one loss call; the per-token gradients are in the caller's buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossSummary {
    /// This call's contribution to the full-batch loss.
    pub loss: f64,
    pub metrics: LossMetrics,
}

/// GRPO loss, group advantages, VAS scores and token sampling on a backend's buffers.
pub trait RlOps: Backend {
    /// The policy loss of one call (see `rl::grpo::policy_loss`): writes d loss / d logp to
    /// `dlogp` and, with `x.entropy`, d loss / d entropy to `dentropy`.
    fn rl_loss(
        &self,
        x: &LossBufs<'_, Self::Buf>,
        cfg: &LossConfig,
        norm: Normalizer,
        dlogp: &mut Self::Buf,
        dentropy: Option<&mut Self::Buf>,
    ) -> LossSummary;
    /// Group advantages (see `rl::advantage::advantages_f64`), one per reward, into `adv`.
    fn rl_advantages(
        &self,
        rewards: &Self::Buf,
        offsets: &[usize],
        lengths: Option<&[usize]>,
        cfg: &AdvantageConfig,
        adv: &mut Self::Buf,
    ) -> GroupStats;
    /// Most rollouts one item may have in [`RlOps::rl_vas_scores`] (None: no limit).
    fn rl_vas_max_rollouts(&self) -> Option<usize> {
        None
    }
    /// VAS scores of every item (see `rl::vas::score_item`).
    fn rl_vas_scores(
        &self,
        r: &RolloutBatch<'_>,
        alpha: f32,
        beta: f32,
        metric: TdsMetric,
    ) -> Vec<RolloutScores>;
    /// One token per row of `logits` (`[draws.len() x vocab]`), by `rl::sampling::sample_row`
    /// with the Philox uniform of the row's [`RowDraw`]: (token id, log-prob) per row. Only
    /// these leave the backend's memory.
    fn rl_sample(
        &self,
        logits: &Self::Buf,
        vocab: usize,
        draws: &[RowDraw],
        rule: &SampleRule,
    ) -> Vec<(u32, f32)>;
}

impl RlOps for Cpu {
    fn rl_loss(
        &self,
        x: &LossBufs<'_, Vec<f32>>,
        cfg: &LossConfig,
        norm: Normalizer,
        dlogp: &mut Vec<f32>,
        dentropy: Option<&mut Vec<f32>>,
    ) -> LossSummary {
        let per_token;
        let adv: &[f32] = match x.advantages {
            AdvBuf::PerToken(a) => a,
            AdvBuf::PerResponse(a) => {
                per_token = broadcast_to_tokens(a, x.offsets);
                &per_token
            }
        };
        let mut inp = LossInputs::new(x.logp, x.logp_old, adv, x.mask, x.offsets);
        inp.ref_logp = x.ref_logp.map(|v| v.as_slice());
        inp.entropy = x.entropy.map(|v| v.as_slice());
        inp.pg_mask = x.pg_mask.map(|v| v.as_slice());
        inp.selected = x.selected;
        let o = policy_loss(&inp, cfg, norm);
        dlogp.copy_from_slice(&o.dlogp);
        if let (Some(d), Some(g)) = (dentropy, &o.dentropy) {
            d.copy_from_slice(g);
        }
        LossSummary { loss: o.loss, metrics: o.metrics }
    }
    fn rl_advantages(
        &self,
        rewards: &Vec<f32>,
        offsets: &[usize],
        lengths: Option<&[usize]>,
        cfg: &AdvantageConfig,
        adv: &mut Vec<f32>,
    ) -> GroupStats {
        let r: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
        let (a, s) = advantages_f64(&r, offsets, lengths, cfg);
        assert_eq!(adv.len(), a.len(), "advantages: one per reward");
        for (o, v) in adv.iter_mut().zip(a) {
            *o = v as f32;
        }
        s
    }
    fn rl_vas_scores(
        &self,
        r: &RolloutBatch<'_>,
        alpha: f32,
        beta: f32,
        metric: TdsMetric,
    ) -> Vec<RolloutScores> {
        r.items
            .windows(2)
            .map(|w| {
                let toks: Vec<&[u32]> =
                    (w[0]..w[1]).map(|j| &r.tokens[r.rollouts[j]..r.rollouts[j + 1]]).collect();
                score_item(&r.correct[w[0]..w[1]], &toks, alpha, beta, metric)
            })
            .collect()
    }
    fn rl_sample(
        &self,
        logits: &Vec<f32>,
        vocab: usize,
        draws: &[RowDraw],
        rule: &SampleRule,
    ) -> Vec<(u32, f32)> {
        sample_rows(logits, vocab, draws, rule)
    }
}
