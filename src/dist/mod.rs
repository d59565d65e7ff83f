//! Data parallelism: the collective operations the trainer needs, behind one trait.
//!
//! N ranks each hold a full copy of the model and optimizer. Each takes its shard of an
//! optimizer step's sequences, accumulates gradients with losses normalized by step-GLOBAL
//! counts (see `train::SftLoss`, `rl::grpo::agg::Normalizer`), then the ranks SUM their
//! gradients: the sum is the gradient one process computes on the whole batch, up to the order
//! of the f32 additions. Every rank then takes the same optimizer step on the same gradient, so
//! the replicas stay identical without exchanging weights.
//!
//! Implementations: [`Single`] (world 1, every operation a no-op: the plain single-process
//! path), [`ThreadGroup`] (N ranks as threads of one process, for tests of the sharded
//! trainer with no launcher), with feature `mpi`, `MpiComm` (N processes started by
//! `mpirun`; host buffers), and with feature `cuda`, `NcclComm` (device buffers of the CUDA
//! backend, GPU to GPU; `launch::World::comm_for` picks it, see `dist.collective`).
//!
//! Reductions are deterministic: `Single`, `ThreadGroup` and `MpiComm` sum over ranks in rank
//! order, so a run with a fixed world size is bit-reproducible and every rank holds
//! bit-identical results. `NcclComm` sums in NCCL's order, deterministic for a fixed world
//! size, topology and NCCL algorithm (module `nccl`), equal to the rank-order sum to rounding.

pub mod buckets;
pub mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod padded;
mod single;
mod thread_group;
pub mod zero;

#[cfg(feature = "mpi")]
pub use self::mpi::MpiComm;
#[cfg(feature = "cuda")]
pub use self::nccl::NcclComm;
pub use single::Single;
pub use thread_group::ThreadGroup;

use crate::backend::Backend;
use crate::model::Qwen2;
use crate::optim::AdamW;
use anyhow::Result;
use std::ops::Range;

/// The collective operations of data-parallel training over the buffers of backend `B`.
/// Every rank of a group must make the same calls in the same order with buffers of the same
/// lengths (as with MPI and NCCL); a call is a synchronization point.
pub trait Collective<B: Backend> {
    /// This process's rank in `0..world()`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Element-wise sum over ranks of every buffer in `bufs` (each rank passes buffers of the
    /// same lengths); every rank receives the same sum, added in rank order.
    fn all_reduce_sum(&self, be: &B, bufs: &mut [B::Buf]) -> Result<()>;
    /// Overwrites every buffer on every rank with rank `root`'s.
    fn broadcast(&self, be: &B, bufs: &mut [B::Buf], root: usize) -> Result<()>;
    /// Element-wise sum over ranks of small host values (token counts for the global
    /// normalizer, metrics), in f64 and in rank order: integer counts below 2^53 are exact.
    fn all_reduce_sum_host(&self, xs: &mut [f64]) -> Result<()>;
    /// Every rank's `xs` (which may differ in length), indexed by rank.
    fn all_gather_host(&self, xs: &[f64]) -> Result<Vec<Vec<f64>>>;
    /// Every rank's bytes (lengths may differ), by rank: serialized records such as rollouts.
    /// The default packs three bytes per f64 (exact integers) through `all_gather_host`.
    fn all_gather_bytes(&self, xs: &[u8]) -> Result<Vec<Vec<u8>>> {
        let packed: Vec<f64> = std::iter::once(xs.len() as f64)
            .chain(
                xs.chunks(3)
                    .map(|c| c.iter().rev().fold(0u32, |acc, &b| (acc << 8) | b as u32) as f64),
            )
            .collect();
        let all = self.all_gather_host(&packed)?;
        Ok(all
            .into_iter()
            .map(|v| {
                let n = v[0] as usize;
                let mut out: Vec<u8> = v[1..]
                    .iter()
                    .flat_map(|&x| {
                        let w = x as u32;
                        [w as u8, (w >> 8) as u8, (w >> 16) as u8]
                    })
                    .collect();
                out.truncate(n);
                out
            })
            .collect())
    }
    /// Returns when every rank has called it (rank 0 writes a checkpoint; the others wait).
    fn barrier(&self) -> Result<()>;
    /// ZeRO's gradient exchange: the buffers are taken as ONE flat vector (their
    /// concatenation), cut into the contiguous blocks `shard(total, r, world)`; returns this
    /// rank's block of the element-wise sum over ranks. The block holds the same bits as the
    /// same slice of `all_reduce_sum` (rank order from rank 0's values), so a sharded
    /// optimizer step can equal the replicated one. A block may be empty (`total < world`).
    /// By default the whole vector as one piece of [`Collective::reduce_scatter_range`]
    /// (NCCL overrides it with its padded exchange).
    fn reduce_scatter_sum(&self, be: &B, bufs: &[B::Buf]) -> Result<B::Buf> {
        self.reduce_scatter_range(be, bufs, 0, flat_len(be, bufs))
    }
    /// [`Collective::reduce_scatter_sum`] of a piece of the flat vector (ZeRO-2's buckets,
    /// `dist::buckets`): the concatenation of `bufs` is elements `start .. start + len` of a
    /// flat vector of `total` values (the same `start`, lengths and `total` on every rank),
    /// cut into the blocks `shard(total, r, world)`. Returns the part of this rank's block that
    /// falls in the piece (elements `block ∩ piece`, in order; empty when they do not meet),
    /// summed over ranks in rank order from rank 0's values: the bits of that slice of
    /// `all_reduce_sum`, so a bucketed step can equal the unbucketed one.
    fn reduce_scatter_range(
        &self,
        be: &B,
        bufs: &[B::Buf],
        start: usize,
        total: usize,
    ) -> Result<B::Buf>;
    /// The inverse layout: every rank passes its block `shard(total, rank, world)` of the
    /// flat concatenation of `bufs` (`total` = their summed length, the same on every rank)
    /// and every rank's `bufs` receive all blocks (ZeRO's all-gather of updated weights).
    fn all_gather(&self, be: &B, mine: &B::Buf, bufs: &mut [B::Buf]) -> Result<()>;
    /// Every rank's host values `xs` (lengths may differ), by rank, at rank `root` only (the
    /// others receive an empty list): a ZeRO checkpoint's moments, gathered to the rank that
    /// writes them, without holding them whole on any device.
    fn gather_to_root(&self, xs: &[f32], root: usize) -> Result<Vec<Vec<f32>>>;
}

/// Flattens buffers to one host vector (the host-staged collectives).
pub(crate) fn download_all<B: Backend>(be: &B, bufs: &[B::Buf]) -> Vec<f32> {
    let mut host = Vec::with_capacity(bufs.iter().map(|b| be.len(b)).sum());
    for b in bufs {
        host.extend(be.download(b));
    }
    host
}

/// Writes a flat host vector back over buffers of the same total length.
pub(crate) fn upload_all<B: Backend>(be: &B, bufs: &mut [B::Buf], host: &[f32]) {
    let mut off = 0;
    for b in bufs.iter_mut() {
        let n = be.len(b);
        *b = be.upload(&host[off..off + n]);
        off += n;
    }
}

/// Total length of `bufs` taken as one flat vector.
pub fn flat_len<B: Backend>(be: &B, bufs: &[B::Buf]) -> usize {
    bufs.iter().map(|b| be.len(b)).sum()
}

/// Elements `range` of the flat concatenation of `bufs`, as one new buffer (device copies,
/// nothing through the host).
pub fn flat_slice<B: Backend>(be: &B, bufs: &[B::Buf], range: Range<usize>) -> B::Buf {
    let mut out = be.zeros(range.len());
    let mut off = 0;
    for b in bufs {
        let n = be.len(b);
        let (lo, hi) = (range.start.max(off), range.end.min(off + n));
        if lo < hi {
            be.copy(&mut out, lo - range.start, b, lo - off, hi - lo);
        }
        off += n;
    }
    out
}

/// Writes `src` over elements `start .. start + len(src)` of the flat concatenation of `bufs`.
pub fn write_flat<B: Backend>(be: &B, bufs: &mut [B::Buf], start: usize, src: &B::Buf) {
    let end = start + be.len(src);
    let mut off = 0;
    for b in bufs.iter_mut() {
        let n = be.len(b);
        let (lo, hi) = (start.max(off), end.min(off + n));
        if lo < hi {
            be.copy(b, lo - off, src, lo - start, hi - lo);
        }
        off += n;
    }
}

/// The piece `start .. start + n` of a flat vector of `total` values that a
/// [`Collective::reduce_scatter_range`] call was given, or an error when it runs past the end
/// (every implementation checks its arguments alike).
pub fn piece_of(start: usize, n: usize, total: usize) -> Result<Range<usize>> {
    anyhow::ensure!(start + n <= total, "reduce-scatter: values {start}..{} of {total}", start + n);
    Ok(start..start + n)
}

/// The elements of `rank`'s block `shard(total, rank, world)` that fall in `piece`, relative
/// to `piece.start` (`0..0` when they do not meet): where a reduce-scatter of the piece
/// (`Collective::reduce_scatter_range`) finds the rank's part.
pub fn block_in_piece(
    total: usize,
    rank: usize,
    world: usize,
    piece: Range<usize>,
) -> Range<usize> {
    let b = shard(total, rank, world);
    let (lo, hi) = (b.start.max(piece.start), b.end.min(piece.end));
    if lo < hi {
        lo - piece.start..hi - piece.start
    } else {
        0..0
    }
}

/// The contiguous block of `0..n` that `rank` of `world` takes: sizes differ by at most one,
/// lower ranks take the larger blocks, blocks are in rank order (so rank r's sequences precede
/// rank r+1's, and world 1 takes everything). Some blocks are empty when `n < world`.
pub fn shard(n: usize, rank: usize, world: usize) -> Range<usize> {
    assert!(world >= 1 && rank < world, "shard: rank {rank} of world {world}");
    let (q, r) = (n / world, n % world);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}

/// Makes every rank a replica of rank 0: its parameters, AdamW moments (unless sharded) and
/// step count. Call it
/// once after building or resuming the model and optimizer on every rank, so that ranks which
/// initialized or loaded independently cannot start apart (afterwards identical gradients and
/// identical optimizer steps keep them identical).
pub fn sync_replicas<B: Backend>(
    be: &B,
    comm: &dyn Collective<B>,
    model: &mut Qwen2<B>,
    opt: &mut AdamW<B>,
) -> Result<()> {
    comm.broadcast(be, &mut model.params, 0)?;
    // A ZeRO shard is this rank's block, made from the same zeros or the same checkpoint
    // file as the other ranks' blocks: there is nothing of rank 0's to copy.
    if opt.zero.is_none() {
        comm.broadcast(be, &mut opt.m, 0)?;
        comm.broadcast(be, &mut opt.v, 0)?;
    }
    let step = comm.all_gather_host(&[opt.step as f64])?[0][0];
    opt.step = step as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shard;

    #[test]
    fn shards_tile_the_range_in_rank_order() {
        for n in 0..12 {
            for world in 1..5 {
                let blocks: Vec<_> = (0..world).map(|r| shard(n, r, world)).collect();
                assert_eq!(blocks[0].start, 0);
                assert_eq!(blocks[world - 1].end, n);
                for w in blocks.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
        assert_eq!(shard(7, 0, 3), 0..3);
        assert_eq!(shard(7, 2, 3), 5..7);
        assert_eq!(shard(1, 1, 2), 1..1);
    }
}
