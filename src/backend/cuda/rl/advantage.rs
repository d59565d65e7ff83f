//! Launcher of the group advantage kernels (`kernels/advantage.cu`): the device form of
//! [`advantages_f64`](crate::rl::advantage::advantages_f64) for every estimator and scaling,
//! ragged groups of any size in one launch, zero-variance groups counted on the device.

use super::{buf_len, offsets_i64};
use crate::backend::cuda::device::{Arg, Device};
use crate::backend::cuda::{CudaBackend, DevBuf};
use crate::rl::advantage::{AdvEstimator, AdvantageConfig, Convention, GroupStats, ScaleRewards};

/// Groups per block of `group_adv_f32` (one warp each).
const GROUPS_PER_BLOCK: usize = 8;

/// Rewards per block of `adv_batch_stats_f64` (8 a thread): 32 blocks at 64k responses.
pub const BATCH_STATS_CHUNK: usize = 2048;

fn params(cfg: &AdvantageConfig) -> [f64; 4] {
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
    [est as f64, scale as f64, cfg.eps, (cfg.convention == Convention::Trl) as u8 as f64]
}

impl<D: Device> CudaBackend<D> {
    /// Advantages of `rewards` (one per response; group `g` is `offsets[g]..offsets[g + 1]`,
    /// empty groups allowed and not counted) into `adv` (same length), and the batch
    /// statistics. `lengths` (active tokens per response) is required by
    /// REINFORCE++-baseline, as in the reference.
    pub fn group_advantages(
        &self,
        rewards: &DevBuf<D::Mem>,
        offsets: &[usize],
        lengths: Option<&[usize]>,
        cfg: &AdvantageConfig,
        adv: &mut DevBuf<D::Mem>,
    ) -> GroupStats {
        let n = buf_len(rewards);
        let off = offsets_i64(offsets, n, "group_advantages");
        assert_eq!(buf_len(adv), n, "advantages: one per reward");
        let groups = offsets.len() - 1;
        let whiten = cfg.estimator == AdvEstimator::ReinforcePlusPlusBaseline;
        let lens = if whiten {
            let l = lengths.expect("reinforce_plus_plus_baseline needs response lengths");
            assert_eq!(l.len(), n, "lengths: one per response");
            Some(self.upload_i64(&l.iter().map(|&x| x as i64).collect::<Vec<_>>()))
        } else {
            None
        };
        let batch = self.dev.alloc(3 * 8);
        let blocks = n.div_ceil(BATCH_STATS_CHUNK).max(1);
        let part = self.dev.alloc(blocks * 4 * 8);
        let done = self.upload_u32(&[0]);
        self.dev.launch(
            "adv_batch_stats_f64",
            [blocks as u32, 1, 1],
            [256, 1, 1],
            0,
            &[
                Arg::Ptr(&rewards.mem),
                Arg::I64(n as i64),
                Arg::I64(BATCH_STATS_CHUNK as i64),
                Arg::Ptr(&part),
                Arg::Ptr(&done),
                Arg::Ptr(&batch),
            ],
        );
        let mut stats = GroupStats::default();
        if groups > 0 {
            let prm = self.upload_f64(&params(cfg));
            let d_off = self.upload_i64(&off);
            let gstat = self.dev.alloc(groups * 3 * 8);
            let adv64 = whiten.then(|| self.dev.alloc(n.max(1) * 8));
            self.dev.launch(
                "group_adv_f32",
                [groups.div_ceil(GROUPS_PER_BLOCK) as u32, 1, 1],
                [(32 * GROUPS_PER_BLOCK) as u32, 1, 1],
                0,
                &[
                    Arg::Ptr(&adv.mem),
                    adv64.as_ref().map_or(Arg::Null, Arg::Ptr),
                    Arg::Ptr(&gstat),
                    Arg::Ptr(&rewards.mem),
                    Arg::Ptr(&d_off),
                    Arg::I32(groups as i32),
                    Arg::I64(n as i64),
                    Arg::Ptr(&prm),
                    Arg::Ptr(&batch),
                ],
            );
            if let (Some(a64), Some(l)) = (&adv64, &lens) {
                self.dev.launch(
                    "whiten_tokens_f32",
                    [1, 1, 1],
                    [256, 1, 1],
                    0,
                    &[Arg::Ptr(&adv.mem), Arg::Ptr(a64), Arg::Ptr(l), Arg::I64(n as i64)],
                );
            }
            let g = self.reduce_rows_f64(&gstat, groups, 3);
            stats.num_groups = g[0] as usize;
            stats.num_zero_variance = g[1] as usize;
            if stats.num_groups > 0 {
                stats.mean_group_std = g[2] / stats.num_groups as f64;
            }
        }
        if n > 0 {
            let b = super::f64s(&self.dev.download(&batch, 3 * 8));
            stats.reward_mean = b[0];
            stats.reward_std = if n > 1 { b[1].sqrt() } else { 0.0 };
        }
        stats
    }
}
