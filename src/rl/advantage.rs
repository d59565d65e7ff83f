//! Outcome advantages: GRPO (group / batch / no scaling = Dr. GRPO), RLOO, REINFORCE++ with
//! baseline and GPG.
//!
//! One scalar reward per response; responses of one prompt form a *group* and are stored
//! consecutively. Sources, pinned by `tests/suite/parity_upstream.rs` against fixtures written by the
//! upstream code: verl 0.9.1 `verl/trainer/ppo/core_algos.py` (`compute_grpo_outcome_advantage`,
//! `compute_rloo_outcome_advantage`, `compute_reinforce_plus_plus_baseline_outcome_advantage`,
//! `compute_gpg_outcome_advantage`, `verl_F.masked_whiten`); TRL 1.16.0
//! `GRPOTrainer._generate_and_score_completions` (`scale_rewards`, `nanstd`, `+ 1e-4`); MMR1
//! d8161a0 `compute_grpo_outcome_advantage` (= verl's GRPO). See `docs/algorithm.md` section 1.

use serde::{Deserialize, Serialize};

/// Whose numeric conventions to reproduce (`rl.convention`). It picks the presets
/// (`LossConfig::{mmr1, verl, trl}`, `AdvantageConfig::{verl, trl}`) and the rounding-level
/// details that no other setting names: denominators (`+1e-8` or `clamp(min=1)`), whether fully
/// masked responses count as sequences, TRL's singleton groups, TRL's GSPO/CISPO forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Convention {
    /// MMR1's released code (LengSicong/MMR1 d8161a0, an EasyR1 fork of verl).
    #[default]
    #[serde(rename = "mmr1", alias = "easyr1")]
    Mmr1,
    /// verl 0.9.1 (`verl/trainer/ppo/core_algos.py`).
    #[serde(rename = "verl")]
    Verl,
    /// Hugging Face TRL 1.16 `GRPOTrainer`.
    #[serde(rename = "trl")]
    Trl,
}

impl Convention {
    pub const NAMES: &'static str = "mmr1 (easyr1), verl, trl";
}

/// Advantage estimator (verl `algorithm.adv_estimator`; serde names are verl's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum AdvEstimator {
    /// `(r - mean_g) / (std_g + eps)` (scaled per [`ScaleRewards`]); Dr. GRPO without scaling.
    #[default]
    #[serde(rename = "grpo")]
    Grpo,
    /// RLOO (arXiv 2402.14740): `r - mean of the others = (r - mean_g) n / (n - 1)`; a
    /// singleton keeps `A = r` (verl `compute_rloo_outcome_advantage`).
    #[serde(rename = "rloo")]
    Rloo,
    /// REINFORCE++ with baseline (arXiv 2501.03262): `r - mean_g` broadcast to the response's
    /// tokens, then whitened over all active tokens of the batch (verl
    /// `compute_reinforce_plus_plus_baseline_outcome_advantage`, `masked_whiten`).
    #[serde(rename = "reinforce_plus_plus_baseline")]
    ReinforcePlusPlusBaseline,
    /// GPG (arXiv 2504.02546): `alpha (r - mean_g)`, `alpha = B / max(#nonzero rewards, 1)`
    /// (verl `compute_gpg_outcome_advantage`, f_norm 1).
    #[serde(rename = "gpg")]
    Gpg,
}

impl AdvEstimator {
    pub const NAMES: &'static str = "grpo, rloo, reinforce_plus_plus_baseline, gpg";
}

/// What GRPO divides the centred reward by (TRL `scale_rewards`; verl
/// `norm_adv_by_std_in_grpo` = group / none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ScaleRewards {
    /// The group's unbiased std (GRPO).
    #[default]
    #[serde(rename = "group", alias = "true")]
    Group,
    /// The unbiased std of all rewards of the batch (PPO-Lite, arXiv 2508.08221).
    #[serde(rename = "batch")]
    Batch,
    /// No scaling (Dr. GRPO, arXiv 2503.20783).
    #[serde(rename = "none", alias = "false")]
    None,
}

impl ScaleRewards {
    pub const NAMES: &'static str = "group, batch, none";
}

/// How advantages are computed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvantageConfig {
    pub estimator: AdvEstimator,
    /// GRPO's scaling. `None` = Dr. GRPO (mean-centred only).
    pub scale: ScaleRewards,
    /// Added to the std before dividing: verl 1e-6, TRL 1e-4.
    pub eps: f64,
    /// Singleton-group behaviour (see [`group_advantages_ragged`]).
    pub convention: Convention,
}

impl AdvantageConfig {
    /// verl `compute_grpo_outcome_advantage` defaults (what MMR1 runs).
    pub fn verl() -> Self {
        Self {
            estimator: AdvEstimator::Grpo,
            scale: ScaleRewards::Group,
            eps: 1e-6,
            convention: Convention::Verl,
        }
    }
    /// TRL 1.16 `GRPOTrainer` defaults (`scale_rewards="group"`).
    pub fn trl() -> Self {
        Self { eps: 1e-4, convention: Convention::Trl, ..Self::verl() }
    }
    /// Dr. GRPO (arXiv 2503.20783): no std division, verl singleton handling.
    pub fn dr_grpo() -> Self {
        Self { scale: ScaleRewards::None, ..Self::verl() }
    }
}

impl Default for AdvantageConfig {
    /// MMR1 = verl GRPO.
    fn default() -> Self {
        Self::verl()
    }
}

/// Batch statistics reported alongside the advantages.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GroupStats {
    /// Number of groups.
    pub num_groups: usize,
    /// Groups whose rewards are all exactly equal (this includes singleton groups): they carry
    /// no group-relative learning signal.
    pub num_zero_variance: usize,
    /// Mean of all rewards in the batch.
    pub reward_mean: f64,
    /// Unbiased (N-1) std of all rewards in the batch (0 for fewer than 2 rewards).
    pub reward_std: f64,
    /// Mean over groups of the per-group unbiased std (TRL logs this as `reward_std`);
    /// singleton groups count as std 0 here.
    pub mean_group_std: f64,
}

/// Group advantages for consecutive groups of `group_size` responses.
///
/// Panics if `group_size == 0` or `rewards.len()` is not a multiple of `group_size`.
pub fn group_advantages(
    rewards: &[f32],
    group_size: usize,
    cfg: &AdvantageConfig,
) -> (Vec<f32>, GroupStats) {
    assert!(group_size > 0, "group_size must be positive");
    assert!(
        rewards.len().is_multiple_of(group_size),
        "rewards.len() = {} is not a multiple of group_size = {}",
        rewards.len(),
        group_size
    );
    let offsets: Vec<usize> = (0..=rewards.len() / group_size).map(|g| g * group_size).collect();
    group_advantages_ragged(rewards, &offsets, cfg)
}

/// Group advantages with ragged groups: group `g` is `rewards[offsets[g]..offsets[g + 1]]`.
/// REINFORCE++-baseline needs response lengths: use [`advantages_f64`].
pub fn group_advantages_ragged(
    rewards: &[f32],
    offsets: &[usize],
    cfg: &AdvantageConfig,
) -> (Vec<f32>, GroupStats) {
    let r: Vec<f64> = rewards.iter().map(|&x| x as f64).collect();
    let (a, s) = advantages_f64(&r, offsets, None, cfg);
    (a.iter().map(|&x| x as f32).collect(), s)
}

/// Advantages in f64 with ragged groups (`offsets` start at 0, are non-decreasing and end at
/// `rewards.len()`; empty groups are allowed and not counted).
///
/// GRPO per group of size n (reductions in f64):
/// - n >= 2: `mean = sum/n`, `std = sqrt(sum (r - mean)^2 / (n - 1))` (torch.std, TRL nanstd).
/// - n == 1, verl/mmr1: mean 0, std 1 (verl's explicit special case), so `A = r / (1 + eps)`
///   with std scaling and `A = r` without.
/// - n == 1, [`Convention::Trl`]: TRL 1.16 uses std 0 for `num_generations == 1` and the group
///   mean is the reward itself, so `A = 0`.
///
/// `lengths` (active tokens per response) is required by REINFORCE++-baseline, whose
/// whitening is token-weighted: mean and unbiased variance over all active tokens of the batch,
/// `(x - mean) / sqrt(var + 1e-8)` (verl `masked_whiten`, masked means with `+1e-8`).
pub fn advantages_f64(
    rewards: &[f64],
    offsets: &[usize],
    lengths: Option<&[usize]>,
    cfg: &AdvantageConfig,
) -> (Vec<f64>, GroupStats) {
    assert!(!offsets.is_empty() && offsets[0] == 0, "offsets must start at 0");
    assert_eq!(*offsets.last().unwrap(), rewards.len(), "offsets must end at rewards.len()");
    let mut adv = vec![0f64; rewards.len()];
    let mut stats = GroupStats::default();
    let mut sum_group_std = 0f64;
    let (batch_mean, batch_var) = mean_var_unbiased(rewards);
    // mean_var_unbiased gives variance 0 below 2 values, so no length test here (one was an
    // equivalent mutant: `> 1` and `>= 1` could not be told apart).
    let batch_std = batch_var.sqrt();
    let nonzero = rewards.iter().filter(|&&r| r != 0.0).count();
    let gpg_alpha = rewards.len() as f64 / nonzero.max(1) as f64;
    for w in offsets.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert!(a <= b, "offsets must be non-decreasing");
        let n = b - a;
        if n == 0 {
            continue;
        }
        stats.num_groups += 1;
        let g = &rewards[a..b];
        if g.iter().all(|&r| r == g[0]) {
            stats.num_zero_variance += 1;
        }
        let singleton_trl = n == 1 && cfg.convention == Convention::Trl;
        let (mean, std) = if n == 1 {
            if singleton_trl {
                (g[0], 0.0)
            } else {
                (0.0, 1.0)
            }
        } else {
            let (m, v) = mean_var_unbiased(g);
            sum_group_std += v.sqrt();
            (m, v.sqrt())
        };
        for (o, &r) in adv[a..b].iter_mut().zip(g) {
            let c = r - mean;
            *o = match cfg.estimator {
                AdvEstimator::Grpo => match cfg.scale {
                    ScaleRewards::Group => c / (std + cfg.eps),
                    // TRL: the batch std; a singleton group still has A = 0 there.
                    ScaleRewards::Batch => c / (batch_std + cfg.eps),
                    ScaleRewards::None => c,
                },
                AdvEstimator::Rloo if n > 1 => {
                    let k = n as f64 / (n as f64 - 1.0);
                    r * k - mean * k
                }
                AdvEstimator::Rloo => r,
                AdvEstimator::ReinforcePlusPlusBaseline | AdvEstimator::Gpg if n == 1 => {
                    if cfg.estimator == AdvEstimator::Gpg {
                        gpg_alpha * r
                    } else {
                        r
                    }
                }
                AdvEstimator::ReinforcePlusPlusBaseline => c,
                AdvEstimator::Gpg => gpg_alpha * c,
            };
        }
    }
    if cfg.estimator == AdvEstimator::ReinforcePlusPlusBaseline {
        let len = lengths.expect("reinforce_plus_plus_baseline needs response lengths");
        assert_eq!(len.len(), rewards.len(), "lengths: one per response");
        whiten_token_weighted(&mut adv, len);
    }
    if !rewards.is_empty() {
        stats.reward_mean = batch_mean;
        stats.reward_std = batch_std;
    }
    if stats.num_groups > 0 {
        stats.mean_group_std = sum_group_std / stats.num_groups as f64;
    }
    (adv, stats)
}

/// verl `masked_whiten` of per-response values broadcast over `len[i]` tokens each: masked
/// mean and Bessel-corrected masked variance (`masked_mean` divides by `mask.sum() + 1e-8`),
/// then `(x - mean) / sqrt(var + 1e-8)`. Fewer than 2 tokens: verl raises; here unchanged.
fn whiten_token_weighted(x: &mut [f64], len: &[usize]) {
    let n: f64 = len.iter().map(|&l| l as f64).sum();
    if n < 2.0 {
        return;
    }
    let mean = x.iter().zip(len).map(|(&v, &l)| v * l as f64).sum::<f64>() / (n + 1e-8);
    let var = x.iter().zip(len).map(|(&v, &l)| (v - mean).powi(2) * l as f64).sum::<f64>()
        / (n + 1e-8)
        * (n / (n - 1.0));
    let inv = 1.0 / (var + 1e-8).sqrt();
    for v in x.iter_mut() {
        *v = (*v - mean) * inv;
    }
}

/// Broadcast one value per response to its tokens: token `t` of response `r` (packed at
/// `offsets[r]..offsets[r + 1]`) gets `per_response[r]`. verl multiplies by the response mask
/// afterwards; here masked tokens simply carry the value and the loss mask removes them.
pub fn broadcast_to_tokens(per_response: &[f32], offsets: &[usize]) -> Vec<f32> {
    assert_eq!(
        offsets.len(),
        per_response.len() + 1,
        "offsets must have one entry per response + 1"
    );
    let mut out = vec![0f32; *offsets.last().unwrap_or(&0)];
    for (r, w) in offsets.windows(2).enumerate() {
        out[w[0]..w[1]].fill(per_response[r]);
    }
    out
}

/// (mean, unbiased variance) in f64; variance is 0 for a single value.
fn mean_var_unbiased(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let mean = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, 0.0);
    }
    let ss = x.iter().map(|&v| (v - mean).powi(2)).sum::<f64>();
    (mean, ss / (n - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f64, tol: f64) -> bool {
        ((a as f64) - b).abs() <= tol * (1.0 + b.abs())
    }

    /// Two groups of 4 (hand-computed).
    /// Group 1 rewards [1, 0, 0, 0]: mean 0.25, sum sq dev = 0.5625 + 3 * 0.0625 = 0.75,
    /// unbiased var = 0.25, std = 0.5.
    ///   verl: A = 0.75 / 0.500001 = 1.49999700..., -0.25 / 0.500001 = -0.49999900...
    ///   trl:  A = 0.75 / 0.5001   = 1.49970006..., -0.25 / 0.5001   = -0.49990002...
    /// Group 2 rewards [2, 2, 2, 2]: zero variance, A = 0 in both.
    #[test]
    fn hand_computed_two_groups() {
        let r = [1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0];
        let (a, s) = group_advantages(&r, 4, &AdvantageConfig::verl());
        assert!(close(a[0], 1.499997000006, 1e-6), "{}", a[0]);
        assert!(close(a[1], -0.499999000002, 1e-6), "{}", a[1]);
        assert_eq!(&a[4..], &[0.0; 4]);
        assert_eq!(s.num_groups, 2);
        assert_eq!(s.num_zero_variance, 1);
        // all rewards: mean 9/8 = 1.125; sum sq dev = 0.015625 + 3*1.265625 + 4*0.765625 = 6.875
        assert!((s.reward_mean - 1.125).abs() < 1e-12);
        assert!((s.reward_std - (6.875f64 / 7.0).sqrt()).abs() < 1e-12);
        assert!((s.mean_group_std - 0.25).abs() < 1e-12);

        let (a, _) = group_advantages(&r, 4, &AdvantageConfig::trl());
        assert!(close(a[0], 1.499700059988, 1e-6), "{}", a[0]);
        assert!(close(a[1], -0.499900019996, 1e-6), "{}", a[1]);
        assert_eq!(&a[4..], &[0.0; 4]);

        // Dr. GRPO: mean-centred only.
        let (a, _) = group_advantages(&r, 4, &AdvantageConfig::dr_grpo());
        assert_eq!(&a[..4], &[0.75, -0.25, -0.25, -0.25]);
    }

    #[test]
    fn singleton_groups() {
        let r = [0.7f32, 1.0, 0.0];
        // ragged: [0.7] | [1.0, 0.0]
        let off = [0usize, 1, 3];
        let (a, s) = group_advantages_ragged(&r, &off, &AdvantageConfig::verl());
        assert!(close(a[0], 0.7f32 as f64 / (1.0 + 1e-6), 1e-7));
        // group 2: mean .5, var = (.25+.25)/1 = .5, std = .70710678
        let sd = 0.5f64.sqrt();
        assert!(close(a[1], 0.5 / (sd + 1e-6), 1e-6));
        assert!(close(a[2], -0.5 / (sd + 1e-6), 1e-6));
        assert_eq!(s.num_zero_variance, 1);
        let (a, _) = group_advantages_ragged(&r, &off, &AdvantageConfig::dr_grpo());
        assert_eq!(a[0], 0.7);
        let (a, _) = group_advantages_ragged(&r, &off, &AdvantageConfig::trl());
        assert_eq!(a[0], 0.0);
    }

    /// A singleton group keeps `A = r` under RLOO, REINFORCE++-baseline and GPG whatever the
    /// convention: TRL's singleton rule (mean = the reward, so A = 0) is GRPO's only.
    #[test]
    fn singletons_of_the_other_estimators_ignore_the_trl_rule() {
        let r = [0.7f64, 1.0, 0.0];
        let off = [0usize, 1, 3];
        let lens = [1usize, 1, 1];
        let trl = |estimator| AdvantageConfig { estimator, ..AdvantageConfig::trl() };
        let (a, _) = advantages_f64(&r, &off, None, &trl(AdvEstimator::Gpg));
        // alpha = B / #nonzero = 3 / 2.
        assert!((a[0] - 1.5 * 0.7).abs() < 1e-12, "{a:?}");
        let (a, _) = advantages_f64(&r, &off, None, &trl(AdvEstimator::Rloo));
        assert_eq!(a[0], 0.7);
        // REINFORCE++: [0.7, 0.5, -0.5] before whitening over 3 one-token responses.
        let (a, _) =
            advantages_f64(&r, &off, Some(&lens), &trl(AdvEstimator::ReinforcePlusPlusBaseline));
        let x = [0.7f64, 0.5, -0.5];
        let m = x.iter().sum::<f64>() / 3.0;
        let v = x.iter().map(|y| (y - m).powi(2)).sum::<f64>() / 2.0;
        assert!((a[0] - (0.7 - m) / v.sqrt()).abs() < 1e-6, "{a:?}");
    }

    /// REINFORCE++ whitening at its edge: 2 active tokens are whitened (unbiased variance over
    /// 2 values), fewer are left as they are (verl raises there).
    #[test]
    fn reinforce_whitening_needs_two_tokens() {
        let cfg = AdvantageConfig {
            estimator: AdvEstimator::ReinforcePlusPlusBaseline,
            ..AdvantageConfig::verl()
        };
        let (r, off) = ([1.0f64, 0.0], [0usize, 2]);
        // Centred [0.5, -0.5]; over 2 tokens mean 0, unbiased var 0.5.
        let (a, _) = advantages_f64(&r, &off, Some(&[1, 1]), &cfg);
        let w = 0.5 / 0.5f64.sqrt();
        assert!((a[0] - w).abs() < 1e-6 && (a[1] + w).abs() < 1e-6, "{a:?}");
        for lens in [[1usize, 0], [0, 0]] {
            let (a, _) = advantages_f64(&r, &off, Some(&lens), &cfg);
            assert_eq!(a, [0.5, -0.5], "{lens:?} active tokens: not whitened");
        }
    }

    /// An empty batch has no groups: statistics 0, not 0/0.
    #[test]
    fn empty_batch_has_zero_statistics() {
        let (a, s) = advantages_f64(&[], &[0], None, &AdvantageConfig::verl());
        assert!(a.is_empty());
        assert_eq!(s, GroupStats::default());
    }

    #[test]
    fn ragged_matches_uniform_and_zero_mean() {
        let r: Vec<f32> = (0..24).map(|i| ((i * 7919) % 13) as f32 / 13.0).collect();
        let (a, _) = group_advantages(&r, 6, &AdvantageConfig::verl());
        let off: Vec<usize> = (0..=4).map(|g| g * 6).collect();
        let (b, _) = group_advantages_ragged(&r, &off, &AdvantageConfig::verl());
        assert_eq!(a, b);
        for g in 0..4 {
            let s: f64 = a[g * 6..g * 6 + 6].iter().map(|&x| x as f64).sum();
            assert!(s.abs() < 1e-5);
        }
    }

    #[test]
    fn broadcast() {
        assert_eq!(broadcast_to_tokens(&[1.0, -2.0], &[0, 2, 5]), vec![1.0, 1.0, -2.0, -2.0, -2.0]);
    }
}
