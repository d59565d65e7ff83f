//! Which policy-gradient surrogate the loss uses, and the batch-level token selections some of
//! them need (Clip-Cov, KL-Cov, entropy masking).
//!
//! Selections are statistics of the whole optimizer-step batch. Computing them once per batch
//! and passing them to every micro-batch call keeps the loss independent of the split (verl and
//! TRL compute them per micro-batch). Random choices use the caller's seed, not torch's RNG.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Policy loss (verl `policy_loss.loss_mode`; serde names are verl's, TRL's as aliases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PolicyLoss {
    /// PPO clip (verl `vanilla`, TRL loss types grpo/bnpo/dr_grpo/dapo), with dual clip
    /// (verl `clip_ratio_c`) and TRL's two-sided `delta` cap when configured.
    #[default]
    #[serde(rename = "vanilla", alias = "ppo", alias = "grpo")]
    Vanilla,
    /// GSPO (arXiv 2507.18071): the sequence's geometric-mean ratio per token (verl `gspo`,
    /// TRL `importance_sampling_level="sequence"`).
    #[serde(rename = "gspo")]
    Gspo,
    /// GPG (arXiv 2504.02546): `-A logp`, no ratio (verl `gpg`).
    #[serde(rename = "gpg")]
    Gpg,
    /// Clip-Cov (arXiv 2505.22617): PPO clip, with the gradient of a few high-covariance tokens
    /// detached (verl `clip_cov`).
    #[serde(rename = "clip_cov")]
    ClipCov,
    /// KL-Cov (arXiv 2505.22617): unclipped `-A ratio`, plus `ppo_kl_coef |log ratio|` on the
    /// top covariance tokens (verl `kl_cov`).
    #[serde(rename = "kl_cov")]
    KlCov,
    /// GMPO (arXiv 2507.20673): geometric mean of token ratios per sequence (verl `geo_mean`).
    #[serde(rename = "geo_mean", alias = "gmpo")]
    GeoMean,
    /// CISPO (arXiv 2506.13585): `-sg(clip(ratio)) A logp` (verl `cispo`, TRL `cispo`).
    #[serde(rename = "cispo")]
    Cispo,
    /// SAPO (arXiv 2511.20347): soft gate `sigmoid(tau (ratio - 1)) 4 / tau` (verl `sapo`,
    /// TRL `sapo`).
    #[serde(rename = "sapo")]
    Sapo,
}

impl PolicyLoss {
    pub const NAMES: &'static str =
        "vanilla (ppo, grpo), gspo, gpg, clip_cov, kl_cov, geo_mean (gmpo), cispo, sapo";

    /// Losses whose per-token terms depend on a batch-level selection (see [`cov_selection`]).
    pub fn needs_selection(self) -> bool {
        matches!(self, PolicyLoss::ClipCov | PolicyLoss::KlCov)
    }
}

/// Parameters of Clip-Cov and KL-Cov (verl `policy_loss.*` defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CovParams {
    /// Fraction of active tokens detached by Clip-Cov (verl `clip_cov_ratio` 0.0002).
    pub clip_cov_ratio: f64,
    /// Covariance window of Clip-Cov candidates (verl `clip_cov_lb` 1, `clip_cov_ub` 5).
    pub clip_cov_lb: f64,
    pub clip_cov_ub: f64,
    /// Fraction of active tokens that get the KL term in KL-Cov (verl `kl_cov_ratio` 0.0002).
    pub kl_cov_ratio: f64,
    /// Coefficient of `|log ratio|` in KL-Cov (verl 0.9.1 `PolicyLossConfig.ppo_kl_coef` 0.1).
    pub ppo_kl_coef: f64,
}

impl Default for CovParams {
    fn default() -> Self {
        Self {
            clip_cov_ratio: 0.0002,
            clip_cov_lb: 1.0,
            clip_cov_ub: 5.0,
            kl_cov_ratio: 0.0002,
            ppo_kl_coef: 0.1,
        }
    }
}

/// Per-token covariance `(A - mean A) (logp - mean logp)` over the active tokens (masked means
/// over the whole batch, as verl's `clip_cov` / `kl_cov` compute it per micro-batch).
pub fn token_covariance(adv: &[f64], logp: &[f64], mask: &[f64]) -> Vec<f64> {
    let n: f64 = mask.iter().sum();
    let (mut sa, mut sl) = (0f64, 0f64);
    for t in 0..mask.len() {
        sa += adv[t] * mask[t];
        sl += logp[t] * mask[t];
    }
    // verl_F.masked_mean divides by `mask.sum() + 1e-8`.
    let (ma, ml) = (sa / (n + 1e-8), sl / (n + 1e-8));
    (0..mask.len()).map(|t| (adv[t] - ma) * (logp[t] - ml)).collect()
}

/// The tokens a Clip-Cov or KL-Cov loss treats specially, for the whole batch.
///
/// - Clip-Cov: candidates are active tokens that the PPO clip does not already clip
///   (`pg_losses2 <= pg_losses1` with the unclamped ratio) and whose covariance lies strictly
///   inside `(lb, ub)`; `max(int(ratio * N), 1)` of them are chosen at random (verl:
///   `torch.randperm`; here a ChaCha8 permutation from `seed`).
/// - KL-Cov: the `max(1, int(N * ratio))` active tokens of largest covariance (verl
///   `torch.topk`; ties broken by position).
///
/// `logp` is the log-prob the covariance uses: verl uses the current policy's; on-policy
/// (one optimizer step per rollout batch) that equals `logp_old`, which is known for the whole
/// batch before the first micro-batch, so the trainer passes `logp_old`.
#[allow(clippy::too_many_arguments)]
pub fn cov_selection(
    loss: PolicyLoss,
    p: &CovParams,
    adv: &[f64],
    logp: &[f64],
    logp_old: &[f64],
    mask: &[f64],
    eps_low: f64,
    eps_high: f64,
    seed: u64,
) -> Vec<bool> {
    let n_tok = mask.len();
    let mut sel = vec![false; n_tok];
    let active: Vec<usize> = (0..n_tok).filter(|&t| mask[t] > 0.0).collect();
    if active.is_empty() {
        return sel;
    }
    let cov = token_covariance(adv, logp, mask);
    let n = mask.iter().sum::<f64>();
    match loss {
        PolicyLoss::ClipCov => {
            let cand: Vec<usize> = active
                .iter()
                .copied()
                .filter(|&t| {
                    let r = (logp[t] - logp_old[t]).exp();
                    let l1 = -adv[t] * r;
                    let l2 = -adv[t] * r.clamp(1.0 - eps_low, 1.0 + eps_high);
                    // verl: `cov_all[pg_losses2 > pg_losses1] = -inf` (already clipped).
                    let clipped = l2 > l1;
                    !clipped && cov[t] > p.clip_cov_lb && cov[t] < p.clip_cov_ub
                })
                .collect();
            let k = ((p.clip_cov_ratio * n) as usize).max(1);
            let mut cand = cand;
            if cand.len() > k {
                cand.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
                cand.truncate(k);
            }
            for t in cand {
                sel[t] = true;
            }
        }
        PolicyLoss::KlCov => {
            let k = ((n * p.kl_cov_ratio) as usize).max(1).min(active.len());
            let mut order = active.clone();
            order.sort_by(|&a, &b| cov[b].total_cmp(&cov[a]).then(a.cmp(&b)));
            for &t in &order[..k] {
                sel[t] = true;
            }
        }
        _ => {}
    }
    sel
}

/// Seed of [`cov_selection`]'s random choice for mini-batch `mi` of `minis` in PPO epoch
/// `epoch`: distinct for every (epoch, mini-batch) of an update whatever the base `seed`, so
/// that no two of them shuffle with the same stream (verl draws from torch's running RNG).
pub fn cov_seed(seed: u64, epoch: usize, minis: usize, mi: usize) -> u64 {
    seed ^ (epoch * minis + mi) as u64
}

/// TRL `top_entropy_quantile` (arXiv 2506.01939, "80/20"): 1 for active tokens whose entropy is
/// at least the `1 - quantile` quantile of the active tokens' entropies (torch.quantile, linear
/// interpolation), else 0. The loss multiplies the policy term by it; the KL term and the
/// normaliser keep the full mask (TRL 1.16 `get_high_entropy_mask`).
pub fn high_entropy_mask(entropy: &[f64], mask: &[f64], quantile: f64) -> Vec<f64> {
    let mut vals: Vec<f64> =
        entropy.iter().zip(mask).filter(|(_, &m)| m > 0.0).map(|(&e, _)| e).collect();
    if vals.is_empty() {
        return vec![0.0; mask.len()];
    }
    vals.sort_by(f64::total_cmp);
    let q = (1.0 - quantile).clamp(0.0, 1.0);
    let pos = q * (vals.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let thr = vals[lo] + (vals[hi] - vals[lo]) * (pos - lo as f64);
    entropy
        .iter()
        .zip(mask)
        .map(|(&e, &m)| if m > 0.0 && e * m >= thr { 1.0 } else { 0.0 })
        .collect()
}
