//! Launcher of the group advantage kernels (`kernels/advantage.cu`): the device form of
//! [`advantages_f64`](crate::rl::advantage::advantages_f64) for every estimator and scaling,
//! ragged groups of any size in one launch (equal sizes without offsets), zero-variance
//! groups and the batch statistics reduced on the device.

use super::{buf_len, Segments};
use crate::backend::cuda::device::{Arg, Device};
use crate::backend::cuda::{CudaBackend, DevBuf};
use crate::rl::advantage::{AdvEstimator, AdvantageConfig, Convention, GroupStats, ScaleRewards};

/// Threads per block of `group_adv_seg_f32` (ADV_THREADS).
const THREADS: usize = 256;

/// Rewards per block of `group_adv_seg_f32` with groups of 5 to 8 (8 lanes a group, 32
/// groups a block): where the batch statistics cross from one block's partial sums to the
/// next (tests aim sizes at it).
pub const BATCH_STATS_CHUNK: usize = 256;

/// Columns of the folded result of `adv_fold_f64`.
const FOLD_COLS: usize = 6;
/// Columns of a block's partial-sum row (AS_COUNT).
const PART_COLS: usize = 7;

/// Lanes per group: the group size rounded up to a power of two, at most a warp (larger
/// groups loop over their rewards).
fn lanes_per_group(max_group: usize) -> usize {
    max_group.clamp(1, 32).next_power_of_two()
}

fn codes(cfg: &AdvantageConfig) -> (i32, i32) {
    let est = match cfg.estimator {
        AdvEstimator::Grpo => 0,
        AdvEstimator::Rloo => 1,
        AdvEstimator::ReinforcePlusPlusBaseline => 2,
        AdvEstimator::Gpg => 3,
    };
    let scale = match cfg.scale {
        ScaleRewards::Group => 0,
        ScaleRewards::Batch => 1,
        ScaleRewards::None => 2,
    };
    (est, scale)
}

impl<D: Device> CudaBackend<D> {
    /// Advantages of `rewards` (one per response; group `g` is `offsets[g]..offsets[g + 1]`,
    /// empty groups allowed and not counted) into `adv` (same length), and the batch
    /// statistics. `lengths` (active tokens per response) is required by
    /// REINFORCE++-baseline, as in the reference.
    ///
    /// Two launches and one download of six numbers for every estimator but batch std
    /// scaling and GPG (three: they need the batch statistics first) and
    /// REINFORCE++-baseline (four: the whitening). Nothing is uploaded when the groups are of
    /// one size; ragged offsets are uploaded as they are.
    pub fn group_advantages(
        &self,
        rewards: &DevBuf<D::Mem>,
        offsets: &[usize],
        lengths: Option<&[usize]>,
        cfg: &AdvantageConfig,
        adv: &mut DevBuf<D::Mem>,
    ) -> GroupStats {
        let n = buf_len(rewards);
        assert_eq!(buf_len(adv), n, "advantages: one per reward");
        let groups = offsets.len().saturating_sub(1);
        let whiten = cfg.estimator == AdvEstimator::ReinforcePlusPlusBaseline;
        let lens = if whiten {
            let l = lengths.expect("reinforce_plus_plus_baseline needs response lengths");
            assert_eq!(l.len(), n, "lengths: one per response");
            Some(self.dev.upload(bytemuck::cast_slice(if l.is_empty() { &[0usize] } else { l })))
        } else {
            None
        };
        if groups == 0 {
            assert_eq!(offsets, [0], "group_advantages: offsets must start at 0");
            assert_eq!(n, 0, "group_advantages: offsets must end at the element count");
            return GroupStats::default();
        }
        let seg = self.segments(offsets, n, "group_advantages");
        let width = lanes_per_group(match &seg {
            Segments::Uniform(l) => *l,
            Segments::Ragged(_) => offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1),
        });
        let blocks = groups.div_ceil(THREADS / width);
        let part = self.dev.alloc(blocks * PART_COLS * 8);
        let folded = self.dev.alloc(FOLD_COLS * 8);
        let (est, scale) = codes(cfg);
        let adv64 = whiten.then(|| self.dev.alloc(n.max(1) * 8));
        // One segmented pass and its fold into `out`; `batch` is the fold of an earlier pass.
        let pass = |write: bool, batch: Option<&D::Mem>, out: &D::Mem| {
            self.dev.launch(
                "group_adv_seg_f32",
                [blocks as u32, 1, 1],
                [THREADS as u32, 1, 1],
                0,
                &[
                    Arg::Ptr(adv.mem()),
                    adv64.as_ref().map_or(Arg::Null, Arg::Ptr),
                    Arg::Ptr(&part),
                    Arg::Ptr(rewards.mem()),
                    seg.offsets_arg(),
                    Arg::I64(groups as i64),
                    Arg::I64(seg.len_arg()),
                    Arg::I32(width as i32),
                    Arg::I64(n as i64),
                    Arg::I32(est),
                    Arg::I32(scale),
                    Arg::F64(cfg.eps),
                    Arg::I32((cfg.convention == Convention::Trl) as i32),
                    batch.map_or(Arg::Null, Arg::Ptr),
                    Arg::I32(write as i32),
                ],
            );
            self.dev.launch(
                "adv_fold_f64",
                [1, 1, 1],
                [THREADS as u32, 1, 1],
                0,
                &[Arg::Ptr(&part), Arg::I64(blocks as i64), Arg::Ptr(out)],
            );
        };
        let needs_batch = (cfg.estimator == AdvEstimator::Grpo && cfg.scale == ScaleRewards::Batch)
            || cfg.estimator == AdvEstimator::Gpg;
        if needs_batch {
            // The batch statistics before any advantage: a pass that only sums.
            let batch = self.dev.alloc(FOLD_COLS * 8);
            pass(false, None, &batch);
            pass(true, Some(&batch), &folded);
        } else {
            pass(true, None, &folded);
        }
        if let (Some(a64), Some(l)) = (&adv64, &lens) {
            self.dev.launch(
                "whiten_tokens_f32",
                [1, 1, 1],
                [256, 1, 1],
                0,
                &[Arg::Ptr(adv.mem()), Arg::Ptr(a64), Arg::Ptr(l), Arg::I64(n as i64)],
            );
        }
        let f = super::f64s(&self.dev.download(&folded, FOLD_COLS * 8));
        let mut stats = GroupStats {
            num_groups: f[3] as usize,
            num_zero_variance: f[4] as usize,
            ..Default::default()
        };
        if stats.num_groups > 0 {
            stats.mean_group_std = f[5] / stats.num_groups as f64;
        }
        if n > 0 {
            stats.reward_mean = f[0];
            stats.reward_std = if n > 1 { f[1].sqrt() } else { 0.0 };
        }
        stats
    }
}
