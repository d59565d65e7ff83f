//! GRPO-family policy losses on packed responses, with their analytic gradients.
//!
//! The host reference of these losses (the CUDA kernel in kernels/grpo_loss.cu, reached through
//! `backend::rl_ops::RlOps`, is held to this code by tests/suite/rl_kernels.rs): flat slices, one
//! entry per token, responses packed back to back (`offsets[r]..offsets[r + 1]` are the tokens of response `r`), a 0/1 loss mask
//! per token (used as a multiplicative weight), per-token values and reductions in f64.
//!
//! Every surrogate of verl 0.9.1 and TRL 1.16.0 that users pick ([`PolicyLoss`]), every KL
//! estimator ([`KlEstimator`]) and every verl `loss_agg_mode` ([`Aggregation`]), each with its
//! gradient w.r.t. the log-probs and the metrics upstream logs. The formulas, their sources
//! and the differences between verl, TRL and MMR1's released code are in `docs/algorithm.md`
//! (sections 0 and 2); `tests/suite/parity_upstream.rs` pins every loss, gradient and metric to
//! fixtures written by the upstream functions themselves (`scripts/make_parity_fixtures.py`).
//!
//! Per active token, with `d = logp - logp_old`, `r = exp(d)`, weights `w_t` from
//! [`token_weight`] and the global [`Normalizer`]:
//!
//! ```text
//! loss = sum_t w_pg_t pg_mask_t pg_t  +  beta sum_t w_t kl_t  -  entropy_coef sum_t w_t H_t
//! ```
//!
//! **Normalisation independent of the micro-batch split.** The weights use *global* counts
//! supplied by the caller, and batch-level selections (Clip-Cov, KL-Cov, the entropy mask) are
//! computed once per batch ([`cov_selection`], [`high_entropy_mask`]). With these, the losses
//! and gradients of any partition of the batch into calls sum to the full-batch values, and
//! each token's gradient is bit-identical whatever the split (a response must not be split).
//! verl 0.9.1 reaches the same with `global_batch_info`; TRL 1.16 only for `loss_type="dapo"`.

use serde::{Deserialize, Serialize};

mod agg;
mod kl;
mod policy;

pub use super::advantage::Convention;
pub use agg::{seq_token_denom, token_weight, Aggregation, Normalizer};
pub use kl::{kl_term, K3Clamps, KlEstimator};
pub use policy::{
    cov_seed, cov_selection, high_entropy_mask, token_covariance, CovParams, PolicyLoss,
};

/// KL penalty in the loss (verl `use_kl_loss`, TRL `beta`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KlConfig {
    pub estimator: KlEstimator,
    /// beta: verl `kl_loss_coef`; MMR1 0.01.
    pub coef: f64,
}

/// Policy-loss configuration. `Default` is MMR1's released code ([`LossConfig::mmr1`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// The surrogate (verl `loss_mode`).
    pub policy: PolicyLoss,
    /// Lower clip: ratio floor 1 - eps_low (for A < 0).
    pub clip_eps_low: f64,
    /// Upper clip: ratio ceiling 1 + eps_high (for A > 0); > eps_low is DAPO clip-higher. For
    /// CISPO under [`Convention::Trl`] it is the absolute cap of the ratio (TRL `epsilon_high`).
    pub clip_eps_high: f64,
    /// Dual-clip constant c > 1: for A < 0 the loss is capped at -A*c (verl `clip_ratio_c`;
    /// vanilla only).
    pub dual_clip_c: Option<f64>,
    /// TRL `delta` (INTELLECT-2 two-sided clip): the unclipped ratio is capped at delta.
    pub trl_delta: Option<f64>,
    /// KL penalty to the reference policy; needs `ref_logp`.
    pub kl: Option<KlConfig>,
    /// TRL `use_bias_correction_kl`: the KL term is multiplied by the importance ratio.
    pub kl_ratio_weighted: bool,
    /// Entropy bonus coefficient: loss -= entropy_coef * agg(entropy). Needs `entropy`.
    pub entropy_coef: f64,
    pub agg: Aggregation,
    /// Rounding-level conventions (denominators, sequence counts, GSPO/GMPO forms, CISPO's
    /// bounds); see [`agg`] and the module doc.
    pub convention: Convention,
    /// Clamp of `logp - logp_old` before exp, where verl applies it (vanilla, sapo, cispo;
    /// verl 20; none in MMR1's released code and TRL).
    pub log_ratio_clamp: Option<f64>,
    /// Clamp of `ref - logp` before exp in k3 (verl 20; none in MMR1 and TRL).
    pub k3_inner_clamp: Option<f64>,
    /// Clamp of the k3 value to [-K, K] (verl and MMR1 10; none in TRL).
    pub k3_clamp: Option<f64>,
    /// Cap of GSPO's sequence log-ratio (verl 10; none in TRL).
    pub gspo_log_ratio_cap: Option<f64>,
    /// SAPO gate temperatures for A > 0 and A <= 0 (verl `tau_pos`/`tau_neg`, TRL
    /// `sapo_temperature_pos/neg`: 1.0 / 1.05).
    pub sapo_tau_pos: f64,
    pub sapo_tau_neg: f64,
    /// Clip-Cov / KL-Cov parameters.
    pub cov: CovParams,
}

impl LossConfig {
    /// MMR1's released code (LengSicong/MMR1 d8161a0, an EasyR1 fork,
    /// `verl/trainer/core_algos.py::compute_policy_loss` and `kl_penalty`): eps 0.2/0.2, no
    /// dual clip, **no log-ratio clamp**, k3 (`low_var_kl`) beta 0.01 with only the +-10 value
    /// clamp, token-mean over the micro-batch with `+1e-8`, no entropy bonus.
    pub fn mmr1() -> Self {
        Self {
            policy: PolicyLoss::Vanilla,
            clip_eps_low: 0.2,
            clip_eps_high: 0.2,
            dual_clip_c: None,
            trl_delta: None,
            kl: Some(KlConfig { estimator: KlEstimator::K3, coef: 0.01 }),
            kl_ratio_weighted: false,
            entropy_coef: 0.0,
            agg: Aggregation::TokenMean,
            convention: Convention::Mmr1,
            log_ratio_clamp: None,
            k3_inner_clamp: None,
            k3_clamp: Some(10.0),
            gspo_log_ratio_cap: None,
            sapo_tau_pos: 1.0,
            sapo_tau_neg: 1.05,
            cov: CovParams::default(),
        }
    }

    /// verl 0.9.1 actor defaults (`clip_ratio 0.2`, `clip_ratio_c 3.0`, token-mean, log-ratio
    /// clamp +-20, k3 clamps 20/10, GSPO cap 10, SAPO tau 1.0/1.05); the dual clip is always
    /// active in verl's vanilla loss. KL loss off unless `use_kl_loss`.
    pub fn verl() -> Self {
        Self {
            dual_clip_c: Some(3.0),
            kl: None,
            convention: Convention::Verl,
            log_ratio_clamp: Some(20.0),
            k3_inner_clamp: Some(20.0),
            gspo_log_ratio_cap: Some(10.0),
            ..Self::mmr1()
        }
    }

    /// TRL 1.16 `GRPOConfig` defaults: eps 0.2/0.2, no dual clip, no clamps, `loss_type="dapo"`
    /// (token-mean over the global batch), `beta = 0` (no KL), k3 when beta > 0.
    pub fn trl() -> Self {
        // Every field spelled out (not `..Self::mmr1()`): TRL's defaults do not follow MMR1's.
        Self {
            policy: PolicyLoss::Vanilla,
            clip_eps_low: 0.2,
            clip_eps_high: 0.2,
            dual_clip_c: None,
            trl_delta: None,
            kl: None,
            kl_ratio_weighted: false,
            entropy_coef: 0.0,
            agg: Aggregation::TokenMean,
            convention: Convention::Trl,
            log_ratio_clamp: None,
            k3_inner_clamp: None,
            k3_clamp: None,
            gspo_log_ratio_cap: None,
            sapo_tau_pos: 1.0,
            sapo_tau_neg: 1.05,
            cov: CovParams::default(),
        }
    }

    fn k3_clamps(&self) -> K3Clamps {
        K3Clamps { inner: self.k3_inner_clamp, value: self.k3_clamp }
    }

    /// The aggregation of the policy term: verl 0.9.1's sapo always uses seq-mean-token-mean
    /// for it (the KL and entropy terms keep `agg`; verl <= 0.8.0 forced it for gspo too).
    pub fn pg_aggregation(&self) -> Aggregation {
        match (self.convention, self.policy) {
            (Convention::Verl, PolicyLoss::Sapo) => Aggregation::SeqMeanTokenMean,
            _ => self.agg,
        }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        Self::mmr1()
    }
}

/// Per-token inputs of one call (a micro-batch or the whole batch), packed.
///
/// All token slices have the same length `offsets.last()`; `offsets` has one entry per response
/// plus one, starts at 0 and is non-decreasing. `T` is f32 in production, f64 for references.
#[derive(Clone, Copy, Debug)]
pub struct LossInputs<'a, T = f32> {
    /// Current-policy log-probs of the sampled tokens (what the gradient is taken against).
    pub logp: &'a [T],
    /// Behaviour-policy log-probs (from the rollout / before the update).
    pub logp_old: &'a [T],
    /// Per-token advantage (the response's advantage broadcast over its tokens).
    pub advantages: &'a [T],
    /// 1 for tokens in the loss, 0 for padding / prompt / masked tokens.
    pub mask: &'a [T],
    /// Reference-policy log-probs; required when `cfg.kl` is set.
    pub ref_logp: Option<&'a [T]>,
    /// Per-token entropies from the model; required when `cfg.entropy_coef != 0`.
    pub entropy: Option<&'a [T]>,
    /// Multiplier of the policy term only (TRL's entropy mask, [`high_entropy_mask`]); the
    /// normaliser and the KL term keep `mask`.
    pub pg_mask: Option<&'a [T]>,
    /// Clip-Cov / KL-Cov token selection ([`cov_selection`]); required for those losses.
    pub selected: Option<&'a [bool]>,
    /// Response boundaries.
    pub offsets: &'a [usize],
}

impl<'a, T> LossInputs<'a, T> {
    /// Inputs without KL, entropy, policy mask or selection.
    pub fn new(
        logp: &'a [T],
        logp_old: &'a [T],
        advantages: &'a [T],
        mask: &'a [T],
        offsets: &'a [usize],
    ) -> Self {
        Self {
            logp,
            logp_old,
            advantages,
            mask,
            ref_logp: None,
            entropy: None,
            pg_mask: None,
            selected: None,
            offsets,
        }
    }
}

/// Diagnostics of one call. Fractions and means are over this call's active tokens
/// (mask-weighted); combine calls with [`LossMetrics::merge`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossMetrics {
    /// Sum of the mask in this call (the weight used by `merge`).
    pub active_tokens: f64,
    /// This call's contribution to the policy-gradient part of the loss (sums across calls).
    pub pg_loss: f64,
    /// This call's contribution of `beta * agg(kl)` (sums across calls).
    pub kl_loss: f64,
    /// This call's contribution of `-entropy_coef * agg(entropy)` (sums across calls).
    pub entropy_loss: f64,
    /// TRL `clip_ratio/low_mean`: A < 0 and ratio < 1 - eps_low (vanilla, gspo).
    pub clip_frac_low: f64,
    /// TRL `clip_ratio/high_mean`: A > 0 and ratio > 1 + eps_high (vanilla, gspo); for TRL's
    /// cispo its `cispo_clip_ratio` (A > 0 and ratio > eps_high).
    pub clip_frac_high: f64,
    /// verl `actor/pg_clipfrac` as each loss defines it (vanilla, gspo: `pg_losses2 >
    /// pg_losses1`; cispo: ratio outside the clip; geo_mean: clipped with A > 0; clip_cov:
    /// detached tokens; 0 for gpg, kl_cov, sapo).
    pub clip_frac: f64,
    /// verl `actor/pg_clipfrac_lower` (vanilla: the dual clip caps the loss; geo_mean: clipped
    /// with A < 0).
    pub dual_clip_frac: f64,
    /// verl `actor/ppo_kl`: mean of `logp_old - logp` (with the loss's log-ratio clamp); for
    /// kl_cov the mean of `|logp - logp_old|`.
    pub approx_kl: f64,
    /// Mean of the KL-penalty estimator value to the reference policy (after clamps and the
    /// ratio weighting); 0 when no KL is configured.
    pub kl: f64,
    /// Mean of the importance ratio the loss uses (token or sequence level).
    pub mean_ratio: f64,
    /// Mean entropy, when entropies were provided.
    pub entropy: Option<f64>,
}

impl LossMetrics {
    /// Combine the metrics of disjoint calls: loss parts add, means are token-weighted.
    pub fn merge(parts: &[LossMetrics]) -> LossMetrics {
        let mut out = LossMetrics::default();
        let total: f64 = parts.iter().map(|p| p.active_tokens).sum();
        let wmean = |f: &dyn Fn(&LossMetrics) -> f64| -> f64 {
            if total > 0.0 {
                parts.iter().map(|p| f(p) * p.active_tokens).sum::<f64>() / total
            } else {
                0.0
            }
        };
        out.active_tokens = total;
        out.pg_loss = parts.iter().map(|p| p.pg_loss).sum();
        out.kl_loss = parts.iter().map(|p| p.kl_loss).sum();
        out.entropy_loss = parts.iter().map(|p| p.entropy_loss).sum();
        out.clip_frac_low = wmean(&|p| p.clip_frac_low);
        out.clip_frac_high = wmean(&|p| p.clip_frac_high);
        out.clip_frac = wmean(&|p| p.clip_frac);
        out.dual_clip_frac = wmean(&|p| p.dual_clip_frac);
        out.approx_kl = wmean(&|p| p.approx_kl);
        out.kl = wmean(&|p| p.kl);
        out.mean_ratio = wmean(&|p| p.mean_ratio);
        out.entropy = if parts.iter().all(|p| p.entropy.is_some()) && !parts.is_empty() {
            Some(wmean(&|p| p.entropy.unwrap()))
        } else {
            None
        };
        out
    }
}

/// Loss contribution of one call and its gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// This call's contribution to the full-batch loss (contributions of a partition sum to it).
    pub loss: f64,
    /// d loss / d logp per token (0 on masked tokens).
    pub dlogp: Vec<f32>,
    /// d loss / d entropy per token (`-entropy_coef * w_t`), when entropies were provided; the
    /// model backpropagates it through its entropy computation.
    pub dentropy: Option<Vec<f32>>,
    pub metrics: LossMetrics,
}

/// The same as [`LossOutput`] with f64 gradients (reference / tests).
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutputF64 {
    pub loss: f64,
    pub dlogp: Vec<f64>,
    pub dentropy: Option<Vec<f64>>,
    pub metrics: LossMetrics,
}

/// Policy loss of one call (micro-batch or full batch) with its analytic gradient.
///
/// Panics on inconsistent lengths, invalid offsets, a missing `ref_logp` when `cfg.kl` is set,
/// missing `entropy` when `cfg.entropy_coef != 0`, or a missing selection for clip_cov/kl_cov.
pub fn policy_loss<T: Copy + Into<f64>>(
    inputs: &LossInputs<'_, T>,
    cfg: &LossConfig,
    normalizer: Normalizer,
) -> LossOutput {
    let o = policy_loss_f64(inputs, cfg, normalizer);
    LossOutput {
        loss: o.loss,
        dlogp: o.dlogp.iter().map(|&g| g as f32).collect(),
        dentropy: o.dentropy.map(|v| v.iter().map(|&g| g as f32).collect()),
        metrics: o.metrics,
    }
}

pub(crate) fn check_offsets(offsets: &[usize], n: usize) {
    assert!(!offsets.is_empty() && offsets[0] == 0, "offsets must start at 0");
    assert_eq!(*offsets.last().unwrap(), n, "offsets must end at the token count");
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "offsets must be non-decreasing");
}

/// `clamp(x, -c, c)` with its derivative (torch: 1 inside, 0 where clamped).
fn clamp_sym(x: f64, c: Option<f64>) -> (f64, f64) {
    match c {
        Some(c) if x > c => (c, 0.0),
        Some(c) if x < -c => (-c, 0.0),
        _ => (x, 1.0),
    }
}

/// Value and derivative (w.r.t. this token's logp) of one token's policy term, with flags.
#[derive(Clone, Copy, Debug, Default)]
struct PgTerm {
    pg: f64,
    dpg: f64,
    ratio: f64,
    /// verl `ppo_kl` summand.
    akl: f64,
    low: bool,
    high: bool,
    clipped: bool,
    dual: bool,
}

/// PPO clip of a ratio `r` (derivative `dr` w.r.t. logp) with advantage `a`; TRL's `delta` caps
/// the unclipped ratio, verl's dual clip caps the loss for A < 0.
fn ppo_clip(r: f64, dr: f64, a: f64, cfg: &LossConfig, t: &mut PgTerm) {
    let lo = 1.0 - cfg.clip_eps_low;
    let hi = 1.0 + cfg.clip_eps_high;
    let (r1, dr1) = match cfg.trl_delta {
        Some(d) if r > d => (d, 0.0),
        _ => (r, dr),
    };
    let l1 = -a * r1;
    let l2 = -a * r.clamp(lo, hi);
    t.low = r1 < lo && a < 0.0;
    t.high = r1 > hi && a > 0.0;
    t.clipped = l2 > l1;
    // max(l1, l2): l2 > l1 only where clamp() is flat, so the clipped branch has slope 0.
    let (lc, dlc) = if l2 > l1 { (l2, 0.0) } else { (l1, -a * dr1) };
    (t.pg, t.dpg) = match cfg.dual_clip_c {
        Some(c) if a < 0.0 && cfg.policy == PolicyLoss::Vanilla => {
            let l3 = -a * c;
            if lc > l3 {
                t.dual = true;
                (l3, 0.0)
            } else {
                (lc, dlc)
            }
        }
        _ => (lc, dlc),
    };
}

/// [`policy_loss`] with f64 gradients. See the module doc for the formulas and sources.
pub fn policy_loss_f64<T: Copy + Into<f64>>(
    inputs: &LossInputs<'_, T>,
    cfg: &LossConfig,
    norm: Normalizer,
) -> LossOutputF64 {
    let n = inputs.logp.len();
    assert_eq!(inputs.logp_old.len(), n, "logp_old length");
    assert_eq!(inputs.advantages.len(), n, "advantages length");
    assert_eq!(inputs.mask.len(), n, "mask length");
    check_offsets(inputs.offsets, n);
    let reflp = match (cfg.kl, inputs.ref_logp) {
        (Some(_), None) => panic!("cfg.kl is set but ref_logp was not provided"),
        (Some(_), Some(r)) => {
            assert_eq!(r.len(), n, "ref_logp length");
            Some(r)
        }
        (None, _) => None,
    };
    if cfg.entropy_coef != 0.0 {
        assert!(inputs.entropy.is_some(), "entropy_coef != 0 but entropy was not provided");
    }
    if let Some(e) = inputs.entropy {
        assert_eq!(e.len(), n, "entropy length");
    }
    if let Some(p) = inputs.pg_mask {
        assert_eq!(p.len(), n, "pg_mask length");
    }
    if cfg.policy.needs_selection() {
        let s = inputs.selected.expect("clip_cov / kl_cov need inputs.selected (cov_selection)");
        assert_eq!(s.len(), n, "selected length");
    }
    if let Some(c) = cfg.dual_clip_c {
        assert!(c > 1.0, "dual_clip_c must be > 1 (verl asserts the same)");
    }
    let f = |s: &[T], t: usize| -> f64 { s[t].into() };
    let beta = cfg.kl.map(|k| k.coef).unwrap_or(0.0);
    let ent_coef = cfg.entropy_coef;
    let conv = cfg.convention;
    let pg_agg = cfg.pg_aggregation();

    let mut dlogp = vec![0f64; n];
    let mut dent = inputs.entropy.map(|_| vec![0f64; n]);
    let mut m = LossMetrics::default();
    let (mut s_low, mut s_high, mut s_clip, mut s_dual, mut s_akl, mut s_kl, mut s_ratio) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    let mut s_ent = 0f64;

    for w in inputs.offsets.windows(2) {
        let (a0, b0) = (w[0], w[1]);
        let n_i: f64 = (a0..b0).map(|t| f(inputs.mask, t)).sum();
        let w_agg = token_weight(cfg.agg, n_i, &norm, conv);
        let w_pg = token_weight(pg_agg, n_i, &norm, conv);
        let pgm = |t: usize| inputs.pg_mask.map_or(1.0, |p| f(p, t));

        // Sequence-level quantities.
        // GSPO: mean log-ratio over the response (both verl and TRL clamp the length to >= 1).
        let seq_lr: f64 = (a0..b0)
            .map(|t| f(inputs.mask, t) * (f(inputs.logp, t) - f(inputs.logp_old, t)))
            .sum::<f64>()
            / n_i.max(1.0);
        // Sequence ratio of GSPO (value, d/d own logp per unit) and, for TRL, the spread of
        // the gradient over the response: d s / d logp_t = s m_t / n'.
        let (gspo_s, gspo_ds) = {
            let (l, dl) = match cfg.gspo_log_ratio_cap {
                Some(c) if seq_lr > c => (c, 0.0),
                _ => (seq_lr, 1.0),
            };
            (l.exp(), l.exp() * dl)
        };
        // Accumulators for the TRL sequence-level gradient spread: sum_u w_u m_u pgm_u for the
        // policy term and sum_u w_u m_u k_u for the ratio-weighted KL.
        let mut spread_pg = 0f64;
        let mut spread_kl = 0f64;

        if cfg.policy == PolicyLoss::GeoMean {
            geo_mean_response(inputs, cfg, &norm, a0, b0, n_i, &mut dlogp, &mut m);
        }

        for t in a0..b0 {
            let mt = f(inputs.mask, t);
            let lp = f(inputs.logp, t);
            let old = f(inputs.logp_old, t);
            let adv = f(inputs.advantages, t);
            let delta = lp - old;
            let mut tt = PgTerm::default();
            match cfg.policy {
                PolicyLoss::Vanilla | PolicyLoss::ClipCov => {
                    let c =
                        if cfg.policy == PolicyLoss::Vanilla { cfg.log_ratio_clamp } else { None };
                    let (d, dd) = clamp_sym(delta, c);
                    let r = d.exp();
                    tt.ratio = r;
                    tt.akl = -d;
                    ppo_clip(r, r * dd, adv, cfg, &mut tt);
                    if cfg.policy == PolicyLoss::ClipCov && inputs.selected.unwrap()[t] {
                        tt.pg = 0.0;
                        tt.dpg = 0.0;
                        tt.clipped = true; // verl pg_clipfrac = mean(corr == 0)
                    } else if cfg.policy == PolicyLoss::ClipCov {
                        tt.clipped = false;
                    }
                }
                PolicyLoss::Gspo => {
                    // The ratio's gradient reaches every token of the response (spread below).
                    // verl writes it with stop-gradients (`logp - sg(logp) + sg(log s)`), which
                    // gives the same gradient whenever the per-token weights of a response are
                    // equal, as they are in every aggregation.
                    let r = gspo_s;
                    tt.ratio = r;
                    tt.akl = -delta;
                    ppo_clip(r, 0.0, adv, cfg, &mut tt);
                    tt.dual = false;
                    if !tt.clipped {
                        let dcoef = match cfg.trl_delta {
                            Some(d) if r > d => 0.0,
                            _ => 1.0,
                        };
                        spread_pg += w_pg * mt * pgm(t) * (-adv) * dcoef;
                    }
                }
                PolicyLoss::Gpg => {
                    tt.pg = -lp * adv;
                    tt.dpg = -adv;
                    tt.ratio = delta.exp();
                    tt.akl = -delta;
                }
                PolicyLoss::KlCov => {
                    let r = delta.exp();
                    tt.ratio = r;
                    tt.akl = delta.abs();
                    tt.pg = -adv * r;
                    tt.dpg = -adv * r;
                    if inputs.selected.unwrap()[t] {
                        let k = cfg.cov.ppo_kl_coef;
                        let sg = if delta > 0.0 {
                            1.0
                        } else if delta < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        tt.pg += k * delta.abs();
                        tt.dpg += k * sg;
                    }
                }
                PolicyLoss::Cispo => {
                    let (d, _) = clamp_sym(delta, cfg.log_ratio_clamp);
                    let r = d.exp();
                    tt.ratio = r;
                    tt.akl = -d;
                    let (lo, hi) = match conv {
                        Convention::Trl => (f64::NEG_INFINITY, cfg.clip_eps_high),
                        _ => (1.0 - cfg.clip_eps_low, 1.0 + cfg.clip_eps_high),
                    };
                    let c = r.clamp(lo, hi);
                    tt.clipped = r != c;
                    tt.high = r > hi && adv > 0.0;
                    tt.pg = -c * adv * lp;
                    tt.dpg = -c * adv;
                }
                PolicyLoss::Sapo => {
                    let (d, dd) = clamp_sym(delta, cfg.log_ratio_clamp);
                    let r = d.exp();
                    tt.ratio = r;
                    tt.akl = -d;
                    let tau = if adv > 0.0 { cfg.sapo_tau_pos } else { cfg.sapo_tau_neg };
                    let sg = 1.0 / (1.0 + (-(tau * (r - 1.0))).exp());
                    tt.pg = -sg * 4.0 / tau * adv;
                    tt.dpg = -adv * 4.0 * sg * (1.0 - sg) * r * dd;
                }
                PolicyLoss::GeoMean => {
                    let lo = -(cfg.clip_eps_low);
                    let hi = cfg.clip_eps_high;
                    tt.ratio = delta.exp();
                    tt.akl = -delta;
                    let clipped = delta != delta.clamp(lo, hi);
                    tt.clipped = clipped && adv > 0.0;
                    tt.dual = clipped && adv < 0.0;
                }
            }
            if mt == 0.0 {
                continue;
            }
            let pm = pgm(t);
            if cfg.policy != PolicyLoss::GeoMean {
                m.pg_loss += w_pg * mt * pm * tt.pg;
                dlogp[t] += w_pg * mt * pm * tt.dpg;
            }
            if let (Some(kc), Some(r)) = (cfg.kl, reflp) {
                let (k, dk) = kl_term(kc.estimator, lp, f(r, t), cfg.k3_clamps());
                let (kv, dkv) = if cfg.kl_ratio_weighted {
                    // TRL multiplies by coef_1 (token or sequence ratio, unclamped).
                    match cfg.policy {
                        PolicyLoss::Gspo => {
                            spread_kl += w_agg * mt * k;
                            (k * gspo_s, dk * gspo_s)
                        }
                        _ => {
                            let r = delta.exp();
                            (k * r, dk * r + k * r)
                        }
                    }
                } else {
                    (k, dk)
                };
                m.kl_loss += w_agg * mt * beta * kv;
                dlogp[t] += w_agg * mt * beta * dkv;
                s_kl += mt * kv;
            }
            if let (Some(e), Some(de)) = (inputs.entropy, dent.as_mut()) {
                let h = f(e, t);
                m.entropy_loss -= w_agg * mt * ent_coef * h;
                de[t] = -ent_coef * w_agg * mt;
                s_ent += mt * h;
            }
            m.active_tokens += mt;
            s_low += mt * tt.low as u8 as f64;
            s_high += mt * tt.high as u8 as f64;
            s_clip += mt * tt.clipped as u8 as f64;
            s_dual += mt * tt.dual as u8 as f64;
            s_akl += mt * tt.akl;
            s_ratio += mt * tt.ratio;
        }
        // The sequence-level ratio carries the gradient of the mean log-ratio to every token:
        // d s / d logp_t = s [log s below the cap] m_t / max(n_i, 1).
        if cfg.policy == PolicyLoss::Gspo {
            for (t, g) in dlogp.iter_mut().enumerate().take(b0).skip(a0) {
                *g += gspo_ds * f(inputs.mask, t) / n_i.max(1.0) * (spread_pg + beta * spread_kl);
            }
        }
    }
    if m.active_tokens > 0.0 {
        let c = m.active_tokens;
        m.clip_frac_low = s_low / c;
        m.clip_frac_high = s_high / c;
        m.clip_frac = s_clip / c;
        m.dual_clip_frac = s_dual / c;
        m.approx_kl = s_akl / c;
        m.kl = s_kl / c;
        m.mean_ratio = s_ratio / c;
        m.entropy = inputs.entropy.map(|_| s_ent / c);
    } else {
        m.entropy = inputs.entropy.map(|_| 0.0);
    }
    LossOutputF64 {
        loss: m.pg_loss + m.kl_loss + m.entropy_loss,
        dlogp,
        dentropy: dent,
        metrics: m,
    }
}

/// GMPO (verl 0.9.1 `compute_policy_loss_geo_mean`): per response,
///
/// ```text
/// d_t   = logp_t - old_t,  s = sign(A_t)
/// dmin  = s * min(s d_t, s clamp(d_t, -eps_low, eps_high))
/// ratio = exp( sum_t m_t dmin_t / (n_i + 1e-8) ),  A_i = sum_t m_t A_t / (n_i + 1e-8)
/// pg_i  = -A_i ratio;   loss = mean over all rows of pg_i  (torch.mean: fully masked rows count)
/// ```
///
/// d dmin_t / d logp_t: 1 where the unclamped term is strictly smaller, 0 where the clamped one
/// is, 1/2 + 1/2 * [inside the clamp] at ties (torch.minimum splits ties) = 1 inside the clamp.
#[allow(clippy::too_many_arguments)]
fn geo_mean_response<T: Copy + Into<f64>>(
    inputs: &LossInputs<'_, T>,
    cfg: &LossConfig,
    norm: &Normalizer,
    a0: usize,
    b0: usize,
    n_i: f64,
    dlogp: &mut [f64],
    m: &mut LossMetrics,
) {
    let f = |s: &[T], t: usize| -> f64 { s[t].into() };
    let (lo, hi) = (-(cfg.clip_eps_low), cfg.clip_eps_high);
    let den = match cfg.convention {
        Convention::Trl => n_i.max(1.0),
        _ => n_i + 1e-8,
    };
    let mut sum = 0f64;
    let mut sum_a = 0f64;
    let mut dmin = vec![0f64; b0 - a0];
    for t in a0..b0 {
        let mt = f(inputs.mask, t);
        let d = f(inputs.logp, t) - f(inputs.logp_old, t);
        let a = f(inputs.advantages, t);
        let s = if a > 0.0 {
            1.0
        } else if a < 0.0 {
            -1.0
        } else {
            0.0
        };
        let dc = d.clamp(lo, hi);
        let inside = if d == dc { 1.0 } else { 0.0 };
        let (u, c) = (s * d, s * dc);
        let (v, g) = if u < c {
            (u, 1.0)
        } else if c < u {
            (c, inside)
        } else {
            (u, 0.5 + 0.5 * inside)
        };
        sum += mt * s * v;
        sum_a += mt * a;
        // d(s * v)/d logp = s * s * g = g when s != 0.
        dmin[t - a0] = s * s * g;
    }
    let ratio = (sum / den).exp();
    let adv = sum_a / den;
    let rows = norm.global_rows;
    let wr = if rows > 0.0 { 1.0 / rows } else { 0.0 };
    m.pg_loss += wr * -adv * ratio;
    for t in a0..b0 {
        let mt = f(inputs.mask, t);
        dlogp[t] += wr * -adv * ratio * mt * dmin[t - a0] / den;
    }
}

/// DAPO-style dynamic-sampling filter (arXiv 2503.14476, Sec. 3.2 "Dynamic Sampling"): keep a
/// group unless its raw accuracies are all 0 or all 1 (such groups have zero advantage under
/// binary rewards and only dilute the batch). One flag per consecutive group of `group_size`.
/// With partial-credit accuracies, a group like [0.5, 0.5] is kept; filter on
/// `GroupStats`/reward equality instead if that matters.
pub fn informative_groups(accuracy: &[f32], group_size: usize) -> Vec<bool> {
    assert!(group_size > 0, "group_size must be positive");
    assert!(
        accuracy.len().is_multiple_of(group_size),
        "accuracy.len() not a multiple of group_size"
    );
    accuracy
        .chunks(group_size)
        .map(|g| !(g.iter().all(|&a| a <= 0.0) || g.iter().all(|&a| a >= 1.0)))
        .collect()
}

#[cfg(test)]
mod tests;
