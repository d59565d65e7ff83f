//! Group-relative outcome advantages (GRPO).
//!
//! One scalar reward per response; responses of one prompt form a *group* and are stored
//! consecutively. The advantage of response `i` in group `g` is
//!
//! ```text
//! A_i = (r_i - mean_g) / (std_g + eps)      (norm_by_std = true, GRPO)
//! A_i =  r_i - mean_g                       (norm_by_std = false, Dr. GRPO)
//! ```
//!
//! Sources:
//! - verl `verl/trainer/ppo/core_algos.py::compute_grpo_outcome_advantage` (volcengine/verl,
//!   commit 012be9d): `torch.std` (unbiased, N-1), `epsilon = 1e-6`, a group of one response gets
//!   mean 0 and std 1 (so `A = r / (1 + eps)`), `norm_adv_by_std_in_grpo = False` is Dr. GRPO.
//! - TRL `trl/trainer/grpo_trainer.py::GRPOTrainer._generate_and_score_completions`
//!   (huggingface/trl, commit d2b69d7): `rewards.view(-1, G).std(dim=1)` (unbiased),
//!   `advantages / (std + 1e-4)` when `scale_rewards`; TRL's `nanstd` helper is used only for
//!   logging per-reward-function statistics, never for the advantage.
//! - MMR1 paper (arXiv 2509.21268), Sec. 3 (GRPO preliminaries): `A = (r - mean) / std` over the
//!   group; the released code (EasyR1 fork) follows the verl form above.
//!
//! See `docs/algorithm.md` for the full comparison.

use serde::{Deserialize, Serialize};

/// Whose numeric conventions to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Convention {
    /// verl / EasyR1 / MMR1 reference code.
    #[default]
    Verl,
    /// Hugging Face TRL `GRPOTrainer`.
    Trl,
}

/// How group advantages are computed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvantageConfig {
    /// Divide by the group std (GRPO). `false` = Dr. GRPO (mean-centred only).
    pub norm_by_std: bool,
    /// Added to the std before dividing: verl 1e-6, TRL 1e-4.
    pub eps: f32,
    /// Singleton-group behaviour (see [`group_advantages`]).
    pub convention: Convention,
}

impl AdvantageConfig {
    /// verl `compute_grpo_outcome_advantage` defaults (what MMR1 runs).
    pub fn verl() -> Self {
        Self { norm_by_std: true, eps: 1e-6, convention: Convention::Verl }
    }
    /// TRL `GRPOTrainer` defaults (`scale_rewards=True`).
    pub fn trl() -> Self {
        Self { norm_by_std: true, eps: 1e-4, convention: Convention::Trl }
    }
    /// Dr. GRPO (arXiv 2503.20783): no std division, verl singleton handling.
    pub fn dr_grpo() -> Self {
        Self { norm_by_std: false, eps: 1e-6, convention: Convention::Verl }
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
    /// no group-relative learning signal (all advantages 0 in every convention except a verl
    /// singleton, where A = r / (1 + eps)).
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
///
/// `offsets` must start at 0, be non-decreasing and end at `rewards.len()`. Empty groups are
/// allowed and contribute nothing (they are not counted in `num_groups`).
///
/// Per group of size n (all reductions in f64):
/// - n >= 2: `mean = sum/n`, `std = sqrt(sum (r - mean)^2 / (n - 1))` (torch.std default, both
///   conventions).
/// - n == 1, [`Convention::Verl`]: mean 0, std 1 (verl's explicit special case), so
///   `A = r / (1 + eps)` with std normalisation and `A = r` without.
/// - n == 1, [`Convention::Trl`]: TRL computes `torch.std` of one element, which is NaN, and
///   the advantage becomes NaN with `scale_rewards`; we return 0 instead (the response is
///   compared with itself) and document the divergence.
pub fn group_advantages_ragged(
    rewards: &[f32],
    offsets: &[usize],
    cfg: &AdvantageConfig,
) -> (Vec<f32>, GroupStats) {
    assert!(!offsets.is_empty() && offsets[0] == 0, "offsets must start at 0");
    assert_eq!(*offsets.last().unwrap(), rewards.len(), "offsets must end at rewards.len()");
    let mut adv = vec![0f32; rewards.len()];
    let mut stats = GroupStats::default();
    let mut sum_group_std = 0f64;
    for w in offsets.windows(2) {
        let (a, b) = (w[0], w[1]);
        assert!(a <= b, "offsets must be non-decreasing");
        let n = b - a;
        if n == 0 {
            continue;
        }
        stats.num_groups += 1;
        let g = &rewards[a..b];
        let all_equal = g.iter().all(|&r| r == g[0]);
        if all_equal {
            stats.num_zero_variance += 1;
        }
        let (mean, std) = if n == 1 {
            match cfg.convention {
                Convention::Verl => (0.0f64, 1.0f64),
                // TRL: mean = r, std = NaN; we use std 0 so A = 0 / eps = 0 (see doc).
                Convention::Trl => (g[0] as f64, 0.0f64),
            }
        } else {
            let (m, v) = mean_var_unbiased(g);
            sum_group_std += v.sqrt();
            (m, v.sqrt())
        };
        for (o, &r) in adv[a..b].iter_mut().zip(g) {
            let c = r as f64 - mean;
            *o = if cfg.norm_by_std { (c / (std + cfg.eps as f64)) as f32 } else { c as f32 };
        }
    }
    if !rewards.is_empty() {
        let (m, v) = mean_var_unbiased(rewards);
        stats.reward_mean = m;
        stats.reward_std = if rewards.len() > 1 { v.sqrt() } else { 0.0 };
    }
    if stats.num_groups > 0 {
        stats.mean_group_std = sum_group_std / stats.num_groups as f64;
    }
    (adv, stats)
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
fn mean_var_unbiased(x: &[f32]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    if x.len() < 2 {
        return (mean, 0.0);
    }
    let ss = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
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
