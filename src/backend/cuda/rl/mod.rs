//! The RL hot path as device kernels: the fused GRPO-family loss (`grpo_loss`), group
//! advantages (`advantage`), batched VAS scores (`vas_score`) and token sampling (`sample`). Each is a method of
//! [`CudaBackend`](super::CudaBackend), so it runs on the GPU and on the emulator, and each
//! is held to its CPU reference in `src/rl/` by `tests/suite/rl_kernels.rs`.
//!
//! The kernels know nothing of the trainer: they take flat device buffers plus the same
//! configuration types the CPU code takes (`LossConfig`, `Normalizer`, `AdvantageConfig`), and
//! return the same summaries (`LossMetrics`, `GroupStats`). Only the scalars of a summary
//! travel to the host; per-token outputs stay on the device.

pub mod advantage;
pub mod grpo_loss;
pub mod sample;
pub mod vas_score;

use super::device::{Arg, Device};
use super::{CudaBackend, DevBuf};
use crate::backend::rl_ops::{LossBufs, LossSummary, RlOps, RolloutBatch};
use crate::rl::advantage::{AdvantageConfig, GroupStats};
use crate::rl::grpo::{LossConfig, Normalizer};
use crate::rl::sampling::{RowDraw, SampleRule};
use crate::rl::vas::{RolloutScores, TdsMetric};

impl<D: Device> RlOps for CudaBackend<D> {
    fn rl_loss(
        &self,
        x: &LossBufs<'_, DevBuf<D::Mem>>,
        cfg: &LossConfig,
        norm: Normalizer,
        dlogp: &mut DevBuf<D::Mem>,
        dentropy: Option<&mut DevBuf<D::Mem>>,
    ) -> LossSummary {
        self.grpo_loss(x, cfg, norm, dlogp, dentropy)
    }
    fn rl_advantages(
        &self,
        rewards: &DevBuf<D::Mem>,
        offsets: &[usize],
        lengths: Option<&[usize]>,
        cfg: &AdvantageConfig,
        adv: &mut DevBuf<D::Mem>,
    ) -> GroupStats {
        self.group_advantages(rewards, offsets, lengths, cfg, adv)
    }
    fn rl_vas_max_rollouts(&self) -> Option<usize> {
        Some(vas_score::MAX_ROLLOUTS_PER_ITEM)
    }
    /// Uploads the token ids and correctness; callers whose rollouts are already in device
    /// memory call [`CudaBackend::vas_scores`] directly.
    fn rl_vas_scores(
        &self,
        r: &RolloutBatch<'_>,
        alpha: f32,
        beta: f32,
        metric: TdsMetric,
    ) -> Vec<RolloutScores> {
        use crate::backend::Backend;
        let tokens = self.upload_tokens(r.tokens);
        let correct = self.upload(r.correct);
        let d = vas_score::DeviceRollouts {
            tokens: &tokens,
            rollouts: r.rollouts,
            items: r.items,
            correct: &correct,
        };
        self.vas_scores(&d, alpha, beta, metric)
    }
    fn rl_sample(
        &self,
        logits: &DevBuf<D::Mem>,
        vocab: usize,
        draws: &[RowDraw],
        rule: &SampleRule,
    ) -> Vec<(u32, f32)> {
        self.sample_tokens(logits, vocab, draws, rule)
    }
}

impl<D: Device> CudaBackend<D> {
    /// `out[c] = sum_r m[r, c]` of a row-major [rows, cols] f64 matrix in device memory, in a
    /// fixed order (a block per column), downloaded.
    fn reduce_rows_f64(&self, m: &D::Mem, rows: usize, cols: usize) -> Vec<f64> {
        let out = self.dev.alloc(cols.max(1) * 8);
        self.dev.launch(
            "reduce_rows_f64",
            [cols as u32, 1, 1],
            [256, 1, 1],
            0,
            &[Arg::Ptr(m), Arg::I64(rows as i64), Arg::I32(cols as i32), Arg::Ptr(&out)],
        );
        f64s(&self.dev.download(&out, cols * 8))
    }
    fn upload_i64(&self, v: &[i64]) -> D::Mem {
        self.dev.upload(bytemuck::cast_slice(if v.is_empty() { &[0i64] } else { v }))
    }
}

/// Little-endian bytes to f64 values.
fn f64s(bytes: &[u8]) -> Vec<f64> {
    bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// How a kernel finds the segments (responses, groups) of a flat buffer: all of one length
/// (the kernel computes the bounds; nothing is uploaded), or the offsets themselves.
pub(crate) enum Segments<M> {
    /// Every segment has this many elements (> 0).
    Uniform(usize),
    /// `segments + 1` offsets (i64) in device memory.
    Ragged(M),
}

impl<M> Segments<M> {
    /// The `row_len` argument of the kernels: the common length, or 0 for "read the offsets".
    fn len_arg(&self) -> i64 {
        match self {
            Segments::Uniform(l) => *l as i64,
            Segments::Ragged(_) => 0,
        }
    }
    fn offsets_arg(&self) -> Arg<'_, M> {
        match self {
            Segments::Uniform(_) => Arg::Null,
            Segments::Ragged(m) => Arg::Ptr(m),
        }
    }
}

// Offsets go to the device as the host holds them: usize is the kernels' i64 on every target
// this crate builds for (checked here), so no converted copy is built per call.
const _: () = assert!(std::mem::size_of::<usize>() == 8);

impl<D: Device> CudaBackend<D> {
    /// The segments of `offsets` over `n` elements, checked like the CPU code checks them
    /// (start at 0, end at `n`, non-decreasing; `what` names the call in the panic). Equal
    /// lengths are found in the same pass and upload nothing; ragged offsets are uploaded
    /// as they are. Needs at least one segment.
    pub(crate) fn segments(&self, offsets: &[usize], n: usize, what: &str) -> Segments<D::Mem> {
        assert!(!offsets.is_empty() && offsets[0] == 0, "{what}: offsets must start at 0");
        assert_eq!(*offsets.last().unwrap(), n, "{what}: offsets must end at the element count");
        let step = offsets.get(1).map_or(0, |&o| o);
        // offsets[i] == i step for all i, in blocks without an early exit inside, which the
        // compiler vectorizes: this pass is the only host work per segment (131,072 groups:
        // a few us).
        const BLOCK: usize = 256;
        let uniform = step > 0
            && offsets.chunks(BLOCK).enumerate().all(|(c, ch)| {
                let base = c * BLOCK;
                ch.iter()
                    .enumerate()
                    .fold(true, |ok, (i, &o)| ok & (o == (base + i).wrapping_mul(step)))
            });
        if uniform {
            return Segments::Uniform(step);
        }
        assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{what}: offsets must be non-decreasing");
        Segments::Ragged(self.dev.upload(bytemuck::cast_slice(offsets)))
    }
}

/// Offsets as the kernels read them (i64), checked like the CPU code checks them.
fn offsets_i64(offsets: &[usize], n: usize, what: &str) -> Vec<i64> {
    assert!(!offsets.is_empty() && offsets[0] == 0, "{what}: offsets must start at 0");
    assert_eq!(*offsets.last().unwrap(), n, "{what}: offsets must end at the element count");
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{what}: offsets must be non-decreasing");
    offsets.iter().map(|&o| o as i64).collect()
}

fn buf_len<M>(b: &DevBuf<M>) -> usize {
    b.len
}
