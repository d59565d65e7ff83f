//! ZeRO stage 2's gradient exchange DURING the backward (Rajbhandari et al. 2020, section 5.2:
//! "we reduce-scatter the gradients ... in buckets"; DeepSpeed's stage 2 likewise): as soon
//! as a micro-batch's backward has finished a bucket of gradients (one decoder layer, or the
//! end bucket: head, final norm, embedding; `model::grad_hook`), the ranks reduce-scatter it
//! (`Collective::reduce_scatter_range`, the same blocks `shard(total, r, world)` as every
//! other exchange), each rank adds its part into an accumulator of ITS block, and the
//! bucket's full buffers are released. A rank therefore holds its f32 gradient block (4/N
//! bytes a parameter) plus the buckets the backward is working on (the end bucket, which is
//! live from the head's backward to the embedding's, and one layer), never the whole
//! gradient. The optimizer step then starts from the block (`zero::step_block`).
//!
//! Every rank must make the same collective calls: ranks pack their own micro-batches, so
//! they agree on the count first ([`agreed_rounds`]: the most any rank has) and a rank with
//! fewer reduces ZERO buckets, in the same order, for the rest ([`BucketReducer::pad_round`]).
//!
//! Numerics. The block after k micro-batches is `sum over micro-batches (rank-order sum of
//! that micro-batch's gradients)`, where the unbucketed path takes `rank-order sum over ranks
//! (each rank's sum over its micro-batches)`: the same terms added in another order. With ONE
//! micro-batch round (every rank at most one micro-batch) the first round is copied, not added
//! to zero, so the block holds exactly the unbucketed reduce-scatter's bits and the step is
//! bit-identical. With several the difference is f32 rounding of the sums (tests/suite/dp_sft.rs
//! states and checks the tolerance).

use super::{block_in_piece, shard, Collective};
use crate::backend::Backend;
use crate::model::GradHook;
use anyhow::{ensure, Result};
use std::ops::Range;

/// The most micro-batches any rank has this step (every rank calls it with its own count):
/// the number of bucket rounds every rank takes part in.
pub fn agreed_rounds<B: Backend>(comm: &dyn Collective<B>, mine: usize) -> Result<usize> {
    let all = comm.all_gather_host(&[mine as f64])?;
    Ok(all.iter().map(|v| v[0] as usize).max().unwrap_or(0))
}

/// The [`GradHook`] of a bucketed ZeRO-2 step: reduce-scatters each finished bucket into this
/// rank's block and releases the bucket's buffers. One per optimizer step.
pub struct BucketReducer<'c, B: Backend> {
    comm: &'c dyn Collective<B>,
    /// The buckets in the order the backward reports them (`ParamLayout::backward_buckets`).
    buckets: Vec<Vec<usize>>,
    /// Flat offset and length of every parameter tensor (layout order).
    offsets: Vec<usize>,
    lens: Vec<usize>,
    total: usize,
    /// This rank's block of the flat vector, and its gradient sum so far.
    block: Range<usize>,
    acc: B::Buf,
    /// The next bucket expected within the current round, and the rounds completed.
    next: usize,
    rounds: usize,
    /// The most gradient values live at a bucket's end: the workspace's allocated gradient
    /// buffers plus the block (the collective's own transient buffers not counted).
    peak: usize,
}

impl<'c, B: Backend> BucketReducer<'c, B> {
    /// A reducer for parameters of lengths `lens` (layout order) reported in `buckets`.
    pub fn new(
        be: &B,
        comm: &'c dyn Collective<B>,
        buckets: Vec<Vec<usize>>,
        lens: Vec<usize>,
    ) -> Self {
        let offsets: Vec<usize> = lens
            .iter()
            .scan(0, |acc, &n| {
                let o = *acc;
                *acc += n;
                Some(o)
            })
            .collect();
        let total = lens.iter().sum();
        let block = shard(total, comm.rank(), comm.world());
        let acc = be.zeros(block.len());
        BucketReducer {
            comm,
            buckets,
            offsets,
            lens,
            total,
            block,
            acc,
            next: 0,
            rounds: 0,
            peak: 0,
        }
    }

    /// The most gradient values this rank held at once (see the field): measured from the
    /// buffers' lengths at each finished bucket, before it is released, which is when the
    /// backward holds the most.
    pub fn peak_values(&self) -> usize {
        self.peak
    }

    /// Micro-batch rounds reduced so far (own or padded).
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Runs of consecutive tensors of `tensors` (ascending): each is one contiguous piece of
    /// the flat vector.
    fn runs(tensors: &[usize]) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for &t in tensors {
            match out.last_mut() {
                Some(r) if r.end == t => r.end += 1,
                _ => out.push(t..t + 1),
            }
        }
        out
    }

    /// Reduce-scatters the piece of tensors `run` held in `bufs` and adds this rank's part
    /// into the block (copies it in the first round: the unbucketed bits, -0.0 included).
    fn reduce_piece(&mut self, be: &B, run: Range<usize>, bufs: &[B::Buf]) -> Result<()> {
        let start = self.offsets[run.start];
        let n: usize = self.lens[run.clone()].iter().sum();
        let part = self.comm.reduce_scatter_range(be, bufs, start, self.total)?;
        let rel = block_in_piece(self.total, self.comm.rank(), self.comm.world(), start..start + n);
        ensure!(
            be.len(&part) == rel.len(),
            "bucketed reduce-scatter: {} values came back, this rank's part holds {}",
            be.len(&part),
            rel.len()
        );
        if rel.is_empty() {
            return Ok(());
        }
        let at = start + rel.start - self.block.start;
        if self.rounds == 0 {
            be.copy(&mut self.acc, at, &part, 0, rel.len());
        } else {
            let mut cur = be.zeros(rel.len());
            be.copy(&mut cur, 0, &self.acc, at, rel.len());
            be.add_assign(&mut cur, &part);
            be.copy(&mut self.acc, at, &cur, 0, rel.len());
        }
        Ok(())
    }

    fn bucket_done(&mut self) {
        self.next += 1;
        if self.next == self.buckets.len() {
            self.next = 0;
            self.rounds += 1;
        }
    }

    /// One round of this rank contributing ZERO gradients (a rank with fewer micro-batches
    /// than [`agreed_rounds`]): the same collective calls, in the same order, as a backward.
    pub fn pad_round(&mut self, be: &B) -> Result<()> {
        ensure!(self.next == 0, "bucketed ZeRO-2: a zero round started inside a micro-batch");
        for b in 0..self.buckets.len() {
            for run in Self::runs(&self.buckets[b].clone()) {
                let n: usize = self.lens[run.clone()].iter().sum();
                self.peak = self.peak.max(n + be.len(&self.acc));
                self.reduce_piece(be, run, &[be.zeros(n)])?;
            }
            self.bucket_done();
        }
        Ok(())
    }

    /// The rank's gradient block after all rounds (zeros when there were none).
    pub fn finish(self) -> Result<B::Buf> {
        ensure!(
            self.next == 0,
            "bucketed ZeRO-2: the backward stopped after {} of {} buckets",
            self.next,
            self.buckets.len()
        );
        Ok(self.acc)
    }
}

impl<B: Backend> GradHook<B> for BucketReducer<'_, B> {
    fn finished(&mut self, be: &B, tensors: &[usize], grads: &mut [B::Buf]) -> Result<()> {
        ensure!(
            self.buckets.get(self.next).map(Vec::as_slice) == Some(tensors),
            "bucketed ZeRO-2: the backward reported tensors {tensors:?}, bucket {} is {:?}",
            self.next,
            self.buckets.get(self.next)
        );
        let live: usize = grads.iter().map(|g| be.len(g)).sum();
        self.peak = self.peak.max(live + be.len(&self.acc));
        for run in Self::runs(tensors) {
            self.reduce_piece(be, run.clone(), &grads[run.clone()])?;
            for g in &mut grads[run] {
                // Released: the next micro-batch's backward allocates it again, zeroed.
                *g = be.zeros(0);
            }
        }
        self.bucket_done();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::BucketReducer;
    use crate::backend::cpu::Cpu;
    use crate::dist::thread_group::on_ranks;
    use crate::dist::{shard, Collective};
    use crate::model::GradHook;

    #[test]
    fn runs_split_at_gaps() {
        assert_eq!(BucketReducer::<Cpu>::runs(&[0, 5, 6, 7]), vec![0..1, 5..8]);
        assert_eq!(BucketReducer::<Cpu>::runs(&[]), Vec::<std::ops::Range<usize>>::new());
    }

    /// Ragged rounds on 1, 2 and 3 thread ranks, buckets of non-contiguous tensors, a total
    /// not divisible by the world: the blocks equal the rank-order sum of all rounds, and a
    /// first round is copied (the unbucketed bits).
    #[test]
    fn bucket_rounds_sum_to_the_reduce_scatter() {
        let lens = vec![5usize, 3, 8, 1, 6];
        let buckets = vec![vec![2, 3], vec![1], vec![0, 4]];
        let total: usize = lens.iter().sum();
        let val =
            |r: usize, k: usize, i: usize| ((r * 131 + k * 17 + i * 7) % 23) as f32 * 0.37 - 3.9;
        for world in [1, 2, 3] {
            // Rank r has r + 1 rounds of its own (rank 0 one): others pad with zeros.
            let counts: Vec<usize> = (0..world).map(|r| (r + 1) % 3).collect();
            let out = on_ranks(world, |g| {
                let be = Cpu;
                let r = Collective::<Cpu>::rank(&g);
                let rounds = super::agreed_rounds::<Cpu>(&g, counts[r]).unwrap();
                let mut red = BucketReducer::new(&be, &g, buckets.clone(), lens.clone());
                for k in 0..rounds {
                    if k >= counts[r] {
                        red.pad_round(&be).unwrap();
                        continue;
                    }
                    let mut grads: Vec<Vec<f32>> = Vec::new();
                    let mut off = 0;
                    for &n in &lens {
                        grads.push((off..off + n).map(|i| val(r, k, i)).collect());
                        off += n;
                    }
                    for b in &buckets {
                        red.finished(&be, b, &mut grads).unwrap();
                        assert!(b.iter().all(|&t| grads[t].is_empty()), "bucket released");
                    }
                }
                assert_eq!(red.rounds(), rounds);
                (red.finish().unwrap(), rounds)
            });
            let rounds = out[0].1;
            let mut want = vec![0f32; total];
            for k in 0..rounds {
                let mut round = vec![0f32; total];
                for (r, &c) in counts.iter().enumerate() {
                    for (i, x) in round.iter_mut().enumerate() {
                        if k < c {
                            *x += val(r, k, i);
                        }
                    }
                }
                for (w, x) in want.iter_mut().zip(round) {
                    *w = if k == 0 { x } else { *w + x };
                }
            }
            for (r, (block, _)) in out.iter().enumerate() {
                assert_eq!(block, &want[shard(total, r, world)], "world {world} rank {r}");
            }
        }
    }
}
