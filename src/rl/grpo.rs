//! GRPO / PPO-clip policy loss on packed responses, with its analytic gradient.
//!
//! Runs on the host for every backend (there is no CUDA loss kernel yet; a future one would be
//! checked against this): flat slices, one entry per token, responses packed
//! back to back (`offsets[r]..offsets[r + 1]` are the tokens of response `r`), a 0/1 loss mask
//! per token (f32, used as a multiplicative weight), per-token values in f64, reductions in f64.
//!
//! Per active token t (mask m_t = 1) with advantage A, delta = logp - logp_old:
//!
//! ```text
//! delta'  = clamp(delta, -C, C)                      (log_ratio_clamp, verl C = 20)
//! ratio   = exp(delta')
//! l1      = -A * ratio
//! l2      = -A * clamp(ratio, 1 - eps_low, 1 + eps_high)
//! l_clip  = max(l1, l2)
//! pg      = min(l_clip, -A * c)   if dual_clip_c = Some(c) and A < 0     (dual-clip PPO)
//!         = l_clip                otherwise
//! kl      = k1: logp - ref
//!           k3: x = clamp(ref - logp, -20, 20) [verl only]; k = e^x - x - 1; clamp(k, -K, K)
//! loss    = sum_t w_t * (pg_t + beta * kl_t)  -  entropy_coef * sum_t w_t * H_t
//! ```
//!
//! Sources:
//! - verl `verl/trainer/ppo/core_algos.py` (volcengine/verl commit 012be9d):
//!   `compute_policy_loss_vanilla` (log-ratio clamp +-20, clip-higher via `clip_ratio_low/high`,
//!   dual clip `clip_ratio_c = 3.0` applied where `advantages < 0`, `pg_clipfrac =
//!   mean(pg_losses2 > pg_losses1)`, `pg_clipfrac_lower` = dual-clip fraction,
//!   `ppo_kl = mean(-(logp - logp_old))`), `kl_penalty` (`low_var_kl`/`k3`: `kl = ref - logp`
//!   clamped to +-20, `exp(kl) - kl - 1` clamped to +-10; `kl`/`k1`: `logp - ref`), `agg_loss`
//!   (token-mean, seq-mean-token-mean, seq-mean-token-sum-norm).
//! - EasyR1 / MMR1 reference code `verl/trainer/core_algos.py::compute_policy_loss`
//!   (hiyouga/EasyR1 commit 2a319e3, which MMR1 forks): clipped ratio written as
//!   `exp(clamp(log_ratio, log(1 - eps_low), log(1 + eps_high)))`.
//! - TRL `trl/trainer/grpo_trainer.py::GRPOTrainer._compute_loss` (huggingface/trl commit
//!   d2b69d7): `-min(coef_1 * A, coef_2 * A)` (= `max(l1, l2)` above), k3 KL
//!   `exp(ref - logp) - (ref - logp) - 1` without clamps added as `beta * kl` to the per-token
//!   loss *before* aggregation, `loss_type` grpo (seq-mean-token-mean), bnpo (token-mean),
//!   dr_grpo (`sum / (B * max_completion_length)`); clip metrics `low_clip = ratio < 1-eps_low
//!   & A < 0`, `high_clip = ratio > 1+eps_high & A > 0`.
//! - MMR1 paper (arXiv 2509.21268) Sec. 3, Eq. for the GRPO objective: clipped surrogate with
//!   eps = 0.2 and a KL term to the reference policy (k3 estimator, beta = 0.01 in the code).
//! - Dual clip: Ye et al. 2019 (arXiv 1912.09729); clip-higher: DAPO (arXiv 2503.14476);
//!   k3 estimator: J. Schulman, "Approximating KL divergence" (2020).
//!
//! **Clamped log-ratio form = clamped ratio.** exp is strictly increasing, so
//! `exp(clamp(d, log(1-e_l), log(1+e_h))) = clamp(exp(d), 1-e_l, 1+e_h)` for every d, and both
//! have derivative exp(d) inside the interval and 0 outside. The extra `clamp(d, -20, 20)` on
//! the unclipped ratio does not change the clipped branch either (log(1-e_l) > -20,
//! log(1+e_h) < 20). So MMR1's form is exactly the PPO clipped ratio (up to 1 ulp of
//! `exp(log(1+e))` vs `1+e`).
//!
//! **Normalisation independent of the micro-batch split.** The weight `w_t` of each token
//! uses *global* counts supplied by the caller through [`Normalizer`]:
//!
//! ```text
//! TokenMean           w_t = m_t / N_tokens_global
//! SeqMeanTokenMean    w_t = m_t / (n_i * N_seqs_global)      n_i = sum of mask over t's response
//! SeqMeanTokenSumNorm w_t = m_t / (L_max * N_seqs_global)    L_max a constant (Dr. GRPO)
//! ```
//!
//! A response must not be split across calls (n_i is computed locally). With these weights the
//! losses and gradients of any partition of the batch into calls sum to the full-batch values,
//! and each token's gradient is bit-identical whatever the split. verl's `dp_actor` instead
//! scales each micro-batch's *local* token-mean by `1 / grad_accum` (or `micro_bsz /
//! mini_bsz`), which makes token-mean depend on the split; newer verl passes a global
//! `batch_num_tokens` / `global_batch_size` to `agg_loss` for the same reason as here.

use serde::{Deserialize, Serialize};

pub use super::advantage::Convention;

/// KL estimator for the penalty to the reference policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KlEstimator {
    /// `logp - ref_logp` (verl `kl`/`k1`). Unbiased but can be negative per token.
    K1,
    /// `exp(ref - logp) - (ref - logp) - 1` (verl `low_var_kl`/`k3`, TRL's only form). >= 0.
    K3,
}

/// KL penalty in the loss (verl `use_kl_loss`, TRL `beta`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KlConfig {
    pub estimator: KlEstimator,
    /// beta: verl `kl_loss_coef`; MMR1 0.01.
    pub coef: f32,
}

/// How per-token losses are reduced to a scalar (verl `loss_agg_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregation {
    /// Mean over all active tokens of the (global) batch. verl `token-mean`, TRL `bnpo`,
    /// EasyR1 `token`. MMR1's setting.
    TokenMean,
    /// Mean over responses of each response's token mean. verl `seq-mean-token-mean`, TRL
    /// `grpo`, EasyR1 `seq`, the original GRPO paper.
    SeqMeanTokenMean,
    /// Sum over tokens / (L_max * number of responses). Dr. GRPO; TRL `dr_grpo`; newer verl
    /// `seq-mean-token-sum-norm` (older verl divides by L_max only, see docs/algorithm.md).
    SeqMeanTokenSumNorm,
}

/// Policy-loss configuration. `Default` is MMR1's setting ([`LossConfig::mmr1`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Lower clip: ratio floor 1 - eps_low (for A < 0).
    pub clip_eps_low: f32,
    /// Upper clip: ratio ceiling 1 + eps_high (for A > 0); > eps_low is DAPO clip-higher.
    pub clip_eps_high: f32,
    /// Dual-clip constant c > 1: for A < 0 the loss is capped at -A*c (verl `clip_ratio_c`).
    pub dual_clip_c: Option<f32>,
    /// KL penalty to the reference policy; needs `ref_logp`.
    pub kl: Option<KlConfig>,
    /// Entropy bonus coefficient: loss -= entropy_coef * agg(entropy). Needs `entropy`.
    pub entropy_coef: f32,
    pub agg: Aggregation,
    /// Verl: the k3 exponent `ref - logp` is clamped to +-20 before exp (verl `kl_penalty`).
    /// Trl: no inner clamp. Other differences are expressed by the explicit fields below and
    /// the presets [`LossConfig::verl`] / [`LossConfig::trl`].
    pub convention: Convention,
    /// Clamp of `logp - logp_old` before exp for the unclipped ratio (verl/EasyR1 20).
    pub log_ratio_clamp: Option<f32>,
    /// Clamp of the k3 value to [-K, K] (verl/EasyR1 10).
    pub k3_clamp: Option<f32>,
}

impl LossConfig {
    /// MMR1 (MMR1.md, EasyR1 defaults): eps 0.2/0.2, no dual clip, k3 KL beta 0.01,
    /// token-mean, no entropy bonus, verl clamps.
    pub fn mmr1() -> Self {
        Self {
            clip_eps_low: 0.2,
            clip_eps_high: 0.2,
            dual_clip_c: None,
            kl: Some(KlConfig { estimator: KlEstimator::K3, coef: 0.01 }),
            entropy_coef: 0.0,
            agg: Aggregation::TokenMean,
            convention: Convention::Verl,
            log_ratio_clamp: Some(20.0),
            k3_clamp: Some(10.0),
        }
    }

    /// verl actor defaults (`clip_ratio 0.2`, `clip_ratio_c 3.0`, token-mean); the dual clip is
    /// always active in verl's vanilla loss. KL loss off unless `use_kl_loss`.
    pub fn verl() -> Self {
        Self { dual_clip_c: Some(3.0), kl: None, ..Self::mmr1() }
    }

    /// TRL `GRPOConfig` shape: eps 0.2/0.2, no dual clip, no clamps, `loss_type="grpo"`
    /// (seq-mean-token-mean). TRL's `beta` default differs across versions; set `kl`
    /// explicitly when reproducing a given run.
    pub fn trl() -> Self {
        Self {
            clip_eps_low: 0.2,
            clip_eps_high: 0.2,
            dual_clip_c: None,
            kl: None,
            entropy_coef: 0.0,
            agg: Aggregation::SeqMeanTokenMean,
            convention: Convention::Trl,
            log_ratio_clamp: None,
            k3_clamp: None,
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
    /// Response boundaries.
    pub offsets: &'a [usize],
}

/// Global counts that fix the loss scale independently of the micro-batch split.
///
/// Build it once from the full batch (all micro-batches, all data-parallel ranks), e.g. by
/// [`Normalizer::count`] on each piece and [`Normalizer::merge`], then pass the same value to
/// every [`policy_loss`] call of that optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    /// Sum of the loss mask over the global batch (token-mean denominator).
    pub global_tokens: f64,
    /// Number of responses with at least one active token in the global batch (fully masked
    /// responses are excluded, as newer verl's `agg_loss` does).
    pub global_seqs: f64,
    /// Constant L_max for [`Aggregation::SeqMeanTokenSumNorm`] (e.g. the configured max
    /// response length; verl uses `loss_mask.shape[-1]`, TRL `max_completion_length`).
    pub max_response_len: f64,
}

impl Normalizer {
    pub fn new(global_tokens: f64, global_seqs: f64, max_response_len: f64) -> Self {
        Self { global_tokens, global_seqs, max_response_len }
    }

    /// Counts of one piece of the batch.
    pub fn count<T: Copy + Into<f64>>(
        mask: &[T],
        offsets: &[usize],
        max_response_len: usize,
    ) -> Self {
        check_offsets(offsets, mask.len());
        let mut tokens = 0f64;
        let mut seqs = 0f64;
        for w in offsets.windows(2) {
            let n: f64 = mask[w[0]..w[1]].iter().map(|&m| m.into()).sum();
            tokens += n;
            if n > 0.0 {
                seqs += 1.0;
            }
        }
        Self { global_tokens: tokens, global_seqs: seqs, max_response_len: max_response_len as f64 }
    }

    /// Sum of the counts of two disjoint pieces (same `max_response_len`).
    pub fn merge(&self, other: &Self) -> Self {
        assert_eq!(self.max_response_len, other.max_response_len, "pieces disagree on L_max");
        Self {
            global_tokens: self.global_tokens + other.global_tokens,
            global_seqs: self.global_seqs + other.global_seqs,
            max_response_len: self.max_response_len,
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
    /// Fraction of tokens with A < 0 and ratio < 1 - eps_low (clipped branch active; TRL
    /// `clip_ratio/low_mean`).
    pub clip_frac_low: f64,
    /// Fraction of tokens with A > 0 and ratio > 1 + eps_high (TRL `clip_ratio/high_mean`).
    pub clip_frac_high: f64,
    /// clip_frac_low + clip_frac_high = verl `pg_clipfrac` (`pg_losses2 > pg_losses1`), TRL
    /// `clip_ratio/region_mean`.
    pub clip_frac: f64,
    /// Fraction of tokens where the dual clip caps the loss (verl `pg_clipfrac_lower`).
    pub dual_clip_frac: f64,
    /// Mean of `logp_old - logp'` where `logp' - logp_old` is the (clamped) log-ratio: the k1
    /// estimate of KL(old || new), verl `ppo_kl`. Not the k3 value.
    pub approx_kl: f64,
    /// Mean of the KL-penalty estimator value (k1 or k3, after clamps) to the reference
    /// policy; 0 when no KL is configured.
    pub kl: f64,
    /// Mean of the (clamped) importance ratio exp(logp - logp_old).
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
/// Panics on inconsistent lengths, invalid offsets, a missing `ref_logp` when `cfg.kl` is set or
/// missing `entropy` when `cfg.entropy_coef != 0`.
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

/// Value and derivative of one token's policy-gradient and KL terms.
#[derive(Clone, Copy, Debug, Default)]
struct TokenTerm {
    pg: f64,
    dpg: f64,
    kl: f64,
    dkl: f64,
    ratio: f64,
    log_ratio: f64,
    clip_low: bool,
    clip_high: bool,
    dual: bool,
}

/// Per-token math (see the module doc for the formulas and their sources).
fn token_term(logp: f64, old: f64, adv: f64, reflp: Option<f64>, cfg: &LossConfig) -> TokenTerm {
    let mut t = TokenTerm::default();
    // Log-ratio clamp (verl/EasyR1 +-20): zero gradient outside.
    let delta = logp - old;
    let (d, dd) = match cfg.log_ratio_clamp {
        Some(c) if delta > c as f64 => (c as f64, 0.0),
        Some(c) if delta < -(c as f64) => (-(c as f64), 0.0),
        _ => (delta, 1.0),
    };
    let ratio = d.exp();
    t.ratio = ratio;
    t.log_ratio = d;
    let lo = 1.0 - cfg.clip_eps_low as f64;
    let hi = 1.0 + cfg.clip_eps_high as f64;
    let l1 = -adv * ratio;
    let l2 = -adv * ratio.clamp(lo, hi);
    // max(l1, l2): l2 > l1 only when the ratio is outside [lo, hi] on the side the advantage
    // favours, where clamp() has zero derivative.
    let (lc, dlc) = if l2 > l1 {
        if adv > 0.0 {
            t.clip_high = true;
        } else {
            t.clip_low = true;
        }
        (l2, 0.0)
    } else {
        (l1, -adv * ratio * dd)
    };
    let (pg, dpg) = match cfg.dual_clip_c {
        Some(c) if adv < 0.0 => {
            let l3 = -adv * c as f64;
            if lc > l3 {
                t.dual = true;
                (l3, 0.0)
            } else {
                (lc, dlc)
            }
        }
        _ => (lc, dlc),
    };
    t.pg = pg;
    t.dpg = dpg;
    if let (Some(kc), Some(r)) = (cfg.kl, reflp) {
        match kc.estimator {
            KlEstimator::K1 => {
                t.kl = logp - r;
                t.dkl = 1.0;
            }
            KlEstimator::K3 => {
                let x0 = r - logp;
                let (x, dx) = match cfg.convention {
                    Convention::Verl if x0 > 20.0 => (20.0, 0.0),
                    Convention::Verl if x0 < -20.0 => (-20.0, 0.0),
                    _ => (x0, -1.0), // dx/dlogp
                };
                let ex = x.exp();
                let (k, dk) = (ex - x - 1.0, (ex - 1.0) * dx);
                let (k, dk) = match cfg.k3_clamp {
                    Some(c) if k > c as f64 => (c as f64, 0.0),
                    Some(c) if k < -(c as f64) => (-(c as f64), 0.0),
                    _ => (k, dk),
                };
                t.kl = k;
                t.dkl = dk;
            }
        }
    }
    t
}

fn check_offsets(offsets: &[usize], n: usize) {
    assert!(!offsets.is_empty() && offsets[0] == 0, "offsets must start at 0");
    assert_eq!(*offsets.last().unwrap(), n, "offsets must end at the token count");
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "offsets must be non-decreasing");
}

/// [`policy_loss`] with f64 gradients.
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
    if let Some(c) = cfg.dual_clip_c {
        assert!(c > 1.0, "dual_clip_c must be > 1 (verl asserts the same)");
    }
    let beta = cfg.kl.map(|k| k.coef as f64).unwrap_or(0.0);
    let ent_coef = cfg.entropy_coef as f64;

    let mut dlogp = vec![0f64; n];
    let mut dent = inputs.entropy.map(|_| vec![0f64; n]);
    let mut m = LossMetrics::default();
    let (mut s_low, mut s_high, mut s_dual, mut s_akl, mut s_kl, mut s_ratio, mut s_ent) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64, 0f64);

    for w in inputs.offsets.windows(2) {
        let (a, b) = (w[0], w[1]);
        let n_i: f64 = inputs.mask[a..b].iter().map(|&x| x.into()).sum();
        // Per-token weight denominator for this response.
        let denom = match cfg.agg {
            Aggregation::TokenMean => norm.global_tokens,
            Aggregation::SeqMeanTokenMean => n_i * norm.global_seqs,
            Aggregation::SeqMeanTokenSumNorm => norm.max_response_len * norm.global_seqs,
        };
        for t in a..b {
            let mt: f64 = inputs.mask[t].into();
            if mt == 0.0 {
                continue;
            }
            let wt = if denom > 0.0 { mt / denom } else { 0.0 };
            let tt = token_term(
                inputs.logp[t].into(),
                inputs.logp_old[t].into(),
                inputs.advantages[t].into(),
                reflp.map(|r| r[t].into()),
                cfg,
            );
            m.pg_loss += wt * tt.pg;
            m.kl_loss += wt * beta * tt.kl;
            dlogp[t] = wt * (tt.dpg + beta * tt.dkl);
            if let (Some(e), Some(de)) = (inputs.entropy, dent.as_mut()) {
                let h: f64 = e[t].into();
                m.entropy_loss -= wt * ent_coef * h;
                de[t] = -ent_coef * wt;
                s_ent += mt * h;
            }
            m.active_tokens += mt;
            s_low += mt * tt.clip_low as u8 as f64;
            s_high += mt * tt.clip_high as u8 as f64;
            s_dual += mt * tt.dual as u8 as f64;
            s_akl += mt * -tt.log_ratio;
            s_kl += mt * tt.kl;
            s_ratio += mt * tt.ratio;
        }
    }
    if m.active_tokens > 0.0 {
        let c = m.active_tokens;
        m.clip_frac_low = s_low / c;
        m.clip_frac_high = s_high / c;
        m.clip_frac = (s_low + s_high) / c;
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
