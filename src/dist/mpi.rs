//! MPI as the collective of a multi-process run (`mpirun -np N mmr1-fast ...`; feature `mpi`,
//! rsmpi over the system's MPI library). Buffers travel through the host, so it serves every
//! backend: the CPU backend's data parallelism (what CI proves), and GPUs staged through the
//! host with `dist.collective = mpi` (GPU runs of N > 1 ranks take `NcclComm` by default).
//!
//! Sums are NOT `MPI_Allreduce`: the standard leaves the order of its additions to the
//! implementation (Open MPI picks an algorithm by message size and world size), so its f32 sum
//! may differ from the rank-order sum the other collectives (`ThreadGroup`) take. Here rank 0
//! gathers every rank's values, adds them in rank order starting from rank 0's, and broadcasts
//! the result: every rank holds the same bits, and they are the bits `ThreadGroup` computes
//! for the same inputs. Large buffers go in chunks so rank 0 holds at most
//! `world * CHUNK` extra values at a time.

use super::{block_in_piece, download_all, piece_of, shard, upload_all, Collective};
use crate::backend::Backend;
use anyhow::{bail, ensure, Result};
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

/// Values of one gather (per rank): 4M f32 = 16 MB per rank in flight on rank 0.
const CHUNK: usize = 1 << 22;

/// This process's handle on the MPI world. Drop finalizes MPI (once per process).
pub struct MpiComm {
    // Field order: the communicator is dropped before the universe finalizes MPI.
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    _universe: Universe,
}

/// Where each rank's part starts in a gathered buffer (`MPI_Allgatherv`'s displacements):
/// the running sum of `counts`.
fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let d = *acc;
            *acc += c;
            Some(d)
        })
        .collect()
}

impl MpiComm {
    /// Initializes MPI (the launcher's world, or a singleton world of one without a launcher).
    pub fn init() -> Result<MpiComm> {
        let Some(universe) = mpi::initialize() else {
            bail!("MPI was already initialized in this process");
        };
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(MpiComm { world, rank, size, _universe: universe })
    }

    /// Ends the whole job (every rank) with `code`: a rank that fails alone would otherwise
    /// leave the others waiting in their next collective forever.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Every rank's `n`, so that a length mismatch fails on every rank alike (MPI itself would
    /// truncate or read past a buffer).
    fn lengths(&self, n: usize) -> Vec<u64> {
        let mut all = vec![0u64; self.size];
        self.world.all_gather_into(&(n as u64), &mut all[..]);
        all
    }

    fn check_same_len(&self, n: usize, what: &str) -> Result<()> {
        let all = self.lengths(n);
        if let Some((r, &m)) = all.iter().enumerate().find(|(_, &m)| m != all[0]) {
            bail!("{what}: rank {r} passed {m} values, rank 0 passed {}", all[0]);
        }
        Ok(())
    }

    /// Rank-order sum of `xs` over ranks, in place on every rank (see the module comment).
    fn sum_f32(&self, xs: &mut [f32]) {
        let root = self.world.process_at_rank(0);
        for part in xs.chunks_mut(CHUNK) {
            if self.rank == 0 {
                let n = part.len();
                let mut all = vec![0f32; n * self.size];
                root.gather_into_root(&part[..], &mut all[..]);
                for other in all[n..].chunks_exact(n) {
                    for (a, x) in part.iter_mut().zip(other) {
                        *a += x;
                    }
                }
            } else {
                root.gather_into(&part[..]);
            }
            root.broadcast_into(part);
        }
    }

    /// Every rank's `xs` (lengths may differ), by rank.
    fn gather_var<T: Equivalence + Default + Clone>(&self, xs: &[T]) -> Result<Vec<Vec<T>>> {
        let lens = self.lengths(xs.len());
        let total: u64 = lens.iter().sum();
        ensure!(total <= Count::MAX as u64, "all-gather of {total} values: more than MPI counts");
        if total == 0 {
            // Every rank sees the same lengths, so all skip alike: Open MPI refuses an
            // MPI_Allgatherv whose every count is zero (MPI_ERR_ARG, found by NCCL's
            // bootstrap, where every rank that can open NCCL sends nothing).
            return Ok(vec![Vec::new(); self.size]);
        }
        let counts: Vec<Count> = lens.iter().map(|&n| n as Count).collect();
        let displs = displacements(&counts);
        let mut buf = vec![T::default(); total as usize];
        {
            let mut part = PartitionMut::new(&mut buf[..], counts, &displs[..]);
            self.world.all_gather_varcount_into(xs, &mut part);
        }
        let mut out = Vec::with_capacity(self.size);
        let mut off = 0;
        for &n in &lens {
            out.push(buf[off..off + n as usize].to_vec());
            off += n as usize;
        }
        Ok(out)
    }
}

impl<B: Backend> Collective<B> for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.size
    }
    fn all_reduce_sum(&self, be: &B, bufs: &mut [B::Buf]) -> Result<()> {
        let mut host = download_all(be, bufs);
        self.check_same_len(host.len(), "all-reduce")?;
        self.sum_f32(&mut host);
        upload_all(be, bufs, &host);
        Ok(())
    }
    fn broadcast(&self, be: &B, bufs: &mut [B::Buf], root: usize) -> Result<()> {
        ensure!(root < self.size, "broadcast from rank {root} in a world of {}", self.size);
        let mut host = download_all(be, bufs);
        self.check_same_len(host.len(), "broadcast")?;
        let from = self.world.process_at_rank(root as i32);
        for part in host.chunks_mut(CHUNK) {
            from.broadcast_into(part);
        }
        upload_all(be, bufs, &host);
        Ok(())
    }
    fn all_reduce_sum_host(&self, xs: &mut [f64]) -> Result<()> {
        let all = self.gather_var(xs)?;
        if let Some((r, v)) = all.iter().enumerate().find(|(_, v)| v.len() != all[0].len()) {
            bail!("all-reduce: rank {r} passed {} values, rank 0 passed {}", v.len(), all[0].len());
        }
        // Rank order from rank 0's values, on every rank: the same bits everywhere.
        let mut it = all.into_iter();
        let mut acc = it.next().expect("a world has a rank 0");
        for v in it {
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x;
            }
        }
        xs.copy_from_slice(&acc);
        Ok(())
    }
    fn all_gather_host(&self, xs: &[f64]) -> Result<Vec<Vec<f64>>> {
        self.gather_var(xs)
    }
    fn all_gather_bytes(&self, xs: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.gather_var(xs)
    }
    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
    fn reduce_scatter_range(
        &self,
        be: &B,
        bufs: &[B::Buf],
        start: usize,
        total: usize,
    ) -> Result<B::Buf> {
        let host = download_all(be, bufs);
        let n = host.len();
        piece_of(start, n, total)?;
        self.check_same_len(n, "reduce-scatter")?;
        // Rank q's part of the piece is gathered to q and summed there in rank order from
        // rank 0's values: the order (and so the bits) of `sum_f32`, whose root sums
        // everything. Every rank computes the same parts, so all make the same calls.
        let mut mine = Vec::new();
        for q in 0..self.size {
            let part_of_q = &host[block_in_piece(total, q, self.size, start..start + n)];
            let root = self.world.process_at_rank(q as i32);
            for part in part_of_q.chunks(CHUNK) {
                if q == self.rank {
                    let k = part.len();
                    let mut all = vec![0f32; k * self.size];
                    root.gather_into_root(part, &mut all[..]);
                    let (acc, others) = all.split_at_mut(k);
                    for other in others.chunks_exact(k) {
                        for (a, x) in acc.iter_mut().zip(other) {
                            *a += x;
                        }
                    }
                    mine.extend_from_slice(acc);
                } else {
                    root.gather_into(part);
                }
            }
        }
        Ok(be.upload(&mine))
    }
    fn gather_to_root(&self, xs: &[f32], root: usize) -> Result<Vec<Vec<f32>>> {
        ensure!(root < self.size, "gather to rank {root} in a world of {}", self.size);
        let lens = self.lengths(xs.len());
        let at = self.world.process_at_rank(root as i32);
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); self.size];
        // In rounds of at most CHUNK values per rank (MPI counts and displacements are i32).
        let rounds = lens.iter().max().copied().unwrap_or(0).div_ceil(CHUNK as u64) as usize;
        for k in 0..rounds {
            let part = &xs[(k * CHUNK).min(xs.len())..((k + 1) * CHUNK).min(xs.len())];
            if self.rank != root {
                at.gather_varcount_into(part);
                continue;
            }
            let counts: Vec<Count> = lens
                .iter()
                .map(|&n| (n as usize).saturating_sub(k * CHUNK).min(CHUNK) as Count)
                .collect();
            let displs = displacements(&counts);
            let mut buf = vec![0f32; counts.iter().map(|&c| c as usize).sum()];
            {
                let mut p = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
                at.gather_varcount_into_root(part, &mut p);
            }
            for ((o, &c), &d) in out.iter_mut().zip(&counts).zip(&displs) {
                o.extend_from_slice(&buf[d as usize..(d + c) as usize]);
            }
        }
        Ok(if self.rank == root { out } else { Vec::new() })
    }
    fn all_gather(&self, be: &B, mine: &B::Buf, bufs: &mut [B::Buf]) -> Result<()> {
        let n: usize = bufs.iter().map(|b| be.len(b)).sum();
        self.check_same_len(n, "all-gather")?;
        let block = be.download(mine);
        let lens = self.lengths(block.len());
        for (r, &m) in lens.iter().enumerate() {
            let want = shard(n, r, self.size).len();
            ensure!(
                m as usize == want,
                "all-gather: rank {r} passed {m} values, its block of {n} holds {want}"
            );
        }
        // In rounds of at most CHUNK values per rank (MPI counts are i32).
        let mut blocks: Vec<Vec<f32>> = vec![Vec::new(); self.size];
        let rounds = shard(n, 0, self.size).len().div_ceil(CHUNK);
        for k in 0..rounds {
            let part = &block[(k * CHUNK).min(block.len())..((k + 1) * CHUNK).min(block.len())];
            for (b, got) in blocks.iter_mut().zip(self.gather_var(part)?) {
                b.extend(got);
            }
        }
        upload_all(be, bufs, &blocks.concat());
        Ok(())
    }
}
