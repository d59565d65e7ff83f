//! Launcher of the batched VAS scoring kernel (`kernels/vas_score.cu`): the device form of
//! [`score_item`](crate::rl::vas::score_item) for many items at once, from rollout token ids
//! already in device memory (pass rate, OVS, TDS by either [`TdsMetric`], VPS).

use super::buf_len;
use crate::backend::cuda::device::{Arg, Device};
use crate::backend::cuda::{CudaBackend, DevBuf};
use crate::rl::vas::{RolloutScores, TdsMetric};

/// Most rollouts one item may have (the kernel keeps per-rollout tallies in shared memory).
pub const MAX_ROLLOUTS_PER_ITEM: usize = 256;

/// Scratch (32-bit words) one launch may use for its hash tables; items beyond it go to the
/// next launch.
const SCRATCH_WORDS: usize = 64 << 20;

/// Rollouts of many items, packed: item `i` owns rollouts `items[i]..items[i + 1]`, rollout
/// `r` is `tokens[rollouts[r]..rollouts[r + 1]]` (exact length, u32 ids in device memory),
/// with correctness `correct[r]`.
pub struct DeviceRollouts<'a, M> {
    pub tokens: &'a M,
    pub rollouts: &'a [usize],
    pub items: &'a [usize],
    pub correct: &'a DevBuf<M>,
}

impl<D: Device> CudaBackend<D> {
    /// u32 token ids in device memory (for [`DeviceRollouts::tokens`]).
    pub fn upload_tokens(&self, ids: &[u32]) -> D::Mem {
        self.upload_u32(ids)
    }

    /// The VAS scores of every item, as [`score_item`](crate::rl::vas::score_item) computes
    /// them (n = the item's number of rollouts). Panics on malformed offsets or an item with
    /// more than [`MAX_ROLLOUTS_PER_ITEM`] rollouts.
    pub fn vas_scores(
        &self,
        r: &DeviceRollouts<'_, D::Mem>,
        alpha: f32,
        beta: f32,
        metric: TdsMetric,
    ) -> Vec<RolloutScores> {
        let n_roll = r.items.last().copied().unwrap_or(0);
        let roll = super::offsets_i64(
            r.rollouts,
            r.rollouts.last().copied().unwrap_or(0),
            "vas_scores rollouts",
        );
        let items = super::offsets_i64(r.items, n_roll, "vas_scores items");
        assert_eq!(r.rollouts.len(), n_roll + 1, "vas_scores: one rollout offset per rollout + 1");
        assert_eq!(buf_len(r.correct), n_roll, "vas_scores: one correctness value per rollout");
        let (code, max_n) = match metric {
            TdsMetric::InverseSelfBleu { max_n } => (0, max_n),
            TdsMetric::DistinctN { max_n } => (1, max_n),
        };
        assert!(max_n >= 1, "max_n must be >= 1");
        let n_items = r.items.len() - 1;
        // Hash table of each item: a power of two >= 2x its tokens (load <= 1/2), owner word +
        // one count per rollout per slot.
        let mut table = Vec::with_capacity(2 * n_items);
        let mut words = Vec::with_capacity(n_items);
        for i in 0..n_items {
            let k = r.items[i + 1] - r.items[i];
            assert!(
                k <= MAX_ROLLOUTS_PER_ITEM,
                "vas_scores: item {i} has {k} rollouts; the kernel takes at most {MAX_ROLLOUTS_PER_ITEM}"
            );
            let toks = r.rollouts[r.items[i + 1]] - r.rollouts[r.items[i]];
            let cap = (2 * toks).max(16).next_power_of_two();
            table.push(cap);
            words.push(if k >= 2 { cap * (1 + k) } else { 0 });
        }
        let d_roll = self.upload_i64(&roll);
        let mut out = Vec::with_capacity(n_items);
        let mut i0 = 0;
        while i0 < n_items {
            // A wave of items whose tables fit the scratch (at least one item).
            let mut i1 = i0 + 1;
            let mut total = words[i0];
            while i1 < n_items && total + words[i1] <= SCRATCH_WORDS {
                total += words[i1];
                i1 += 1;
            }
            let mut at = Vec::with_capacity(2 * (i1 - i0));
            let mut pos = 0usize;
            for i in i0..i1 {
                at.extend([pos as i64, table[i] as i64]);
                pos += words[i];
            }
            let d_at = self.upload_i64(&at);
            let d_items = self.upload_i64(&items[i0..=i1]);
            let scratch = self.dev.alloc(total.max(1) * 4);
            let res = self.dev.alloc((i1 - i0) * 4 * 4);
            self.dev.launch(
                "vas_score_f32",
                [(i1 - i0) as u32, 1, 1],
                [256, 1, 1],
                0,
                &[
                    Arg::Ptr(&res),
                    Arg::Ptr(&scratch),
                    Arg::Ptr(&d_at),
                    Arg::Ptr(r.tokens),
                    Arg::Ptr(&d_roll),
                    Arg::Ptr(&d_items),
                    Arg::Ptr(r.correct.mem()),
                    Arg::I32(code),
                    Arg::I32(max_n as i32),
                    Arg::F32(alpha),
                    Arg::F32(beta),
                ],
            );
            let v = crate::backend::cuda::f32s(&self.dev.download(&res, (i1 - i0) * 16));
            for (j, s) in v.chunks_exact(4).enumerate() {
                out.push(RolloutScores {
                    n: r.items[i0 + j + 1] - r.items[i0 + j],
                    pass_rate: s[0],
                    ovs: s[1],
                    tds: s[2],
                    vps: s[3],
                });
            }
            i0 = i1;
        }
        out
    }
}
