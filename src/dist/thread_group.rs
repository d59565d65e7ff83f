//! N ranks as threads of one process: the collective the data-parallel tests run on, with no
//! launcher and no network. Each operation deposits the rank's values in its slot, waits for
//! every rank, reads all slots (summing in rank order, so every rank computes the very same
//! bits), and waits again before a slot may be reused.
//!
//! A rank that panics leaves the others waiting at the barrier forever (as a dead MPI rank
//! does); the tests join their threads, so a failure there shows as a hang plus the panic
//! message, not as a wrong result.

use super::{block_in_piece, download_all, piece_of, shard, upload_all, Collective};
use crate::backend::Backend;
use anyhow::{bail, ensure, Result};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};

struct Shared {
    world: usize,
    barrier: Barrier,
    f32_slots: Mutex<Vec<Vec<f32>>>,
    f64_slots: Mutex<Vec<Vec<f64>>>,
}

/// One rank's handle on a group of threads; make the group with [`ThreadGroup::new`] and move
/// handle `r` to the thread of rank `r`.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A rank that panicked while holding the lock wrote nothing half-way that we rely on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ThreadGroup {
    /// Handles of the `world` ranks of a new group, in rank order.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        assert!(world >= 1, "a thread group needs at least one rank");
        let shared = Arc::new(Shared {
            world,
            barrier: Barrier::new(world),
            f32_slots: Mutex::new(vec![Vec::new(); world]),
            f64_slots: Mutex::new(vec![Vec::new(); world]),
        });
        (0..world).map(|rank| ThreadGroup { rank, shared: shared.clone() }).collect()
    }

    /// Every rank's `xs`, by rank (the one exchange all operations are made of).
    fn exchange<T: Clone>(&self, slots: &Mutex<Vec<Vec<T>>>, xs: &[T]) -> Vec<Vec<T>> {
        lock(slots)[self.rank] = xs.to_vec();
        self.shared.barrier.wait();
        let all = lock(slots).clone();
        // No rank may deposit the next operation's values before all have read these.
        self.shared.barrier.wait();
        all
    }

    /// Sum over ranks in rank order, starting from rank 0's values (so a world of one returns
    /// its input bit for bit, -0.0 included). Every rank sees the same lengths, so a mismatch
    /// makes every rank fail alike instead of leaving some waiting.
    fn sum_in_rank_order<T: Copy + std::ops::AddAssign>(all: Vec<Vec<T>>) -> Result<Vec<T>> {
        let n = all[0].len();
        if let Some((r, v)) = all.iter().enumerate().find(|(_, v)| v.len() != n) {
            bail!("all-reduce: rank {r} passed {} values, rank 0 passed {n}", v.len());
        }
        let mut it = all.into_iter();
        let mut acc = it.next().expect("a group has a rank 0");
        for v in it {
            for (a, x) in acc.iter_mut().zip(v) {
                *a += x;
            }
        }
        Ok(acc)
    }
}

impl<B: Backend> Collective<B> for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, be: &B, bufs: &mut [B::Buf]) -> Result<()> {
        let host = download_all(be, bufs);
        let sum = Self::sum_in_rank_order(self.exchange(&self.shared.f32_slots, &host))?;
        upload_all(be, bufs, &sum);
        Ok(())
    }
    fn broadcast(&self, be: &B, bufs: &mut [B::Buf], root: usize) -> Result<()> {
        ensure!(
            root < self.shared.world,
            "broadcast from rank {root} in a world of {}",
            self.shared.world
        );
        // Only the root's values travel; the others deposit nothing.
        let host = if self.rank == root { download_all(be, bufs) } else { Vec::new() };
        let mut all = self.exchange(&self.shared.f32_slots, &host);
        let src = std::mem::take(&mut all[root]);
        let n: usize = bufs.iter().map(|b| be.len(b)).sum();
        ensure!(
            src.len() == n,
            "broadcast: rank {} holds {n} values, root {root} sent {}",
            self.rank,
            src.len()
        );
        upload_all(be, bufs, &src);
        Ok(())
    }
    fn all_reduce_sum_host(&self, xs: &mut [f64]) -> Result<()> {
        let sum = Self::sum_in_rank_order(self.exchange(&self.shared.f64_slots, xs))?;
        xs.copy_from_slice(&sum);
        Ok(())
    }
    fn all_gather_host(&self, xs: &[f64]) -> Result<Vec<Vec<f64>>> {
        Ok(self.exchange(&self.shared.f64_slots, xs))
    }
    fn barrier(&self) -> Result<()> {
        self.shared.barrier.wait();
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
        piece_of(start, host.len(), total)?;
        let all = self.exchange(&self.shared.f32_slots, &host);
        // Every rank sees every length, so a mismatch fails on every rank alike.
        let n = all[0].len();
        if let Some((r, v)) = all.iter().enumerate().find(|(_, v)| v.len() != n) {
            bail!("reduce-scatter: rank {r} passed {} values, rank 0 passed {n}", v.len());
        }
        // Only this rank's part is summed, in the order `sum_in_rank_order` takes.
        let mine = block_in_piece(total, self.rank, self.shared.world, start..start + n);
        let blocks: Vec<Vec<f32>> = all.into_iter().map(|v| v[mine.clone()].to_vec()).collect();
        Ok(be.upload(&Self::sum_in_rank_order(blocks)?))
    }
    fn gather_to_root(&self, xs: &[f32], root: usize) -> Result<Vec<Vec<f32>>> {
        let world = self.shared.world;
        ensure!(root < world, "gather to rank {root} in a world of {world}");
        let all = self.exchange(&self.shared.f32_slots, xs);
        Ok(if self.rank == root { all } else { Vec::new() })
    }
    fn all_gather(&self, be: &B, mine: &B::Buf, bufs: &mut [B::Buf]) -> Result<()> {
        let n: usize = bufs.iter().map(|b| be.len(b)).sum();
        let totals = self.exchange(&self.shared.f64_slots, &[n as f64]);
        if let Some((r, t)) = totals.iter().enumerate().find(|(_, t)| t[0] != totals[0][0]) {
            bail!(
                "all-gather: rank {r} gathers into {} values, rank 0 into {}",
                t[0],
                totals[0][0]
            );
        }
        let all = self.exchange(&self.shared.f32_slots, &be.download(mine));
        for (r, block) in all.iter().enumerate() {
            let want = shard(n, r, self.shared.world).len();
            ensure!(
                block.len() == want,
                "all-gather: rank {r} passed {} values, its block of {n} holds {want}",
                block.len()
            );
        }
        upload_all(be, bufs, &all.concat());
        Ok(())
    }
}

/// Runs `f(rank handle)` on one thread per rank of a world of `world` and returns the results
/// by rank (the unit tests of the collectives and of what runs over them).
#[cfg(test)]
pub(crate) fn on_ranks<T: Send>(world: usize, f: impl Fn(ThreadGroup) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let hs: Vec<_> = ThreadGroup::new(world).into_iter().map(|g| s.spawn(|| f(g))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::on_ranks;
    use crate::backend::cpu::Cpu;
    use crate::backend::Backend;
    use crate::dist::Collective;

    #[test]
    fn all_reduce_sums_in_rank_order_on_every_rank() {
        // Values whose f32 sum depends on the order: rank order is ((a + b) + c).
        let vals = [[1.0e8f32, 1.0, -3.5], [-1.0e8, 0.25, 7.0], [1.0, 0.5, 1e-3]];
        let out = on_ranks(3, |g| {
            let be = Cpu;
            let r = Collective::<Cpu>::rank(&g);
            let mut bufs = vec![be.upload(&vals[r][..1]), be.upload(&vals[r][1..])];
            g.all_reduce_sum(&be, &mut bufs).unwrap();
            let mut h = [r as f64, 0.5];
            Collective::<Cpu>::all_reduce_sum_host(&g, &mut h).unwrap();
            (bufs.iter().flat_map(|b| be.download(b)).collect::<Vec<f32>>(), h)
        });
        let want: Vec<f32> = (0..3).map(|i| (vals[0][i] + vals[1][i]) + vals[2][i]).collect();
        for (v, h) in &out {
            assert_eq!(
                v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(h, &[3.0, 1.5]);
        }
    }

    #[test]
    fn broadcast_copies_the_roots_buffers() {
        let out = on_ranks(3, |g| {
            let be = Cpu;
            let r = Collective::<Cpu>::rank(&g) as f32;
            let mut bufs = vec![be.upload(&[r, r + 0.5]), be.upload(&[-r])];
            g.broadcast(&be, &mut bufs, 1).unwrap();
            let gathered =
                Collective::<Cpu>::all_gather_host(&g, &vec![r as f64; r as usize]).unwrap();
            (bufs.iter().flat_map(|b| be.download(b)).collect::<Vec<f32>>(), gathered)
        });
        for (v, gathered) in out {
            assert_eq!(v, vec![1.0, 1.5, -1.0]);
            assert_eq!(gathered, vec![vec![], vec![1.0], vec![2.0, 2.0]]);
        }
    }

    #[test]
    fn bytes_of_every_length_travel_whole() {
        // The trait's default byte gather packs 3 bytes per f64: lengths 0, 4 and 8 cover every
        // remainder; values cover every byte.
        let out = on_ranks(3, |g| {
            let r = Collective::<Cpu>::rank(&g);
            let mine: Vec<u8> = (0..(4 * r)).map(|i| (i * 97 + r * 31 + 200) as u8).collect();
            Collective::<Cpu>::all_gather_bytes(&g, &mine).unwrap()
        });
        let want: Vec<Vec<u8>> =
            (0..3).map(|r| (0..(4 * r)).map(|i| (i * 97 + r * 31 + 200) as u8).collect()).collect();
        for got in out {
            assert_eq!(got, want);
        }
        let all: Vec<u8> = (0..=255).collect();
        let out = on_ranks(1, |g| Collective::<Cpu>::all_gather_bytes(&g, &all).unwrap());
        assert_eq!(out[0], vec![all.clone()]);
    }

    #[test]
    fn mismatched_lengths_fail_on_every_rank() {
        let out = on_ranks(2, |g| {
            let mut xs = vec![1.0; 1 + Collective::<Cpu>::rank(&g)];
            Collective::<Cpu>::all_reduce_sum_host(&g, &mut xs).map_err(|e| e.to_string())
        });
        for r in out {
            assert!(r.unwrap_err().contains("rank 1 passed 2 values"));
        }
    }

    /// Per-rank random values (never zeros) in buffers of the lengths `lens`.
    fn ragged(lens: &[usize], rank: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (rank as u64 + 1);
        lens.iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        // Mixed magnitudes so the f32 sum's order shows in its bits.
                        let u = ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                        let e = ((x >> 20) % 13) as i32 - 6;
                        (u + 0.01f32.copysign(u)) * 10f32.powi(e)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn reduce_scatter_and_all_gather_are_slices_of_the_all_reduce() {
        // Ragged lengths: totals not divisible by the world, block boundaries inside tensors,
        // empty tensors, and a total smaller than the world (empty blocks).
        let cases: [&[usize]; 5] = [&[7, 1, 12], &[3], &[0, 5, 0, 2], &[1], &[33, 17, 4, 9]];
        for (c, lens) in cases.iter().enumerate() {
            for world in [1, 2, 3, 4] {
                let total: usize = lens.iter().sum();
                let out = on_ranks(world, |g| {
                    let be = Cpu;
                    let r = Collective::<Cpu>::rank(&g);
                    let vals = ragged(lens, r, c as u64);
                    let bufs: Vec<Vec<f32>> = vals.iter().map(|v| be.upload(v)).collect();
                    let mut summed = bufs.clone();
                    g.all_reduce_sum(&be, &mut summed).unwrap();
                    let block = g.reduce_scatter_sum(&be, &bufs).unwrap();
                    // Gather the blocks back into poisoned buffers of the tensors' shapes.
                    let mut back: Vec<Vec<f32>> =
                        lens.iter().map(|&n| be.upload(&vec![f32::NAN; n])).collect();
                    g.all_gather(&be, &block, &mut back).unwrap();
                    (be.download(&block), summed.concat(), back.concat())
                });
                for (r, (block, summed, back)) in out.iter().enumerate() {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let range = crate::dist::shard(total, r, world);
                    assert_eq!(block.len(), range.len(), "{lens:?} world {world} rank {r}");
                    assert_eq!(
                        bits(block),
                        bits(&summed[range]),
                        "{lens:?} world {world} rank {r}"
                    );
                    assert_eq!(bits(back), bits(summed), "{lens:?} world {world} rank {r}");
                }
            }
        }
        // Single is the world of one.
        let be = Cpu;
        let bufs = ragged(&[5, 0, 3], 0, 9);
        let block =
            Collective::<Cpu>::reduce_scatter_sum(&crate::dist::Single, &be, &bufs).unwrap();
        assert_eq!(block, bufs.concat());
        let mut back = vec![vec![f32::NAN; 5], vec![], vec![f32::NAN; 3]];
        crate::dist::Single.all_gather(&be, &block, &mut back).unwrap();
        assert_eq!(back, bufs);
    }

    #[test]
    fn sharded_exchanges_refuse_mismatched_layouts_on_every_rank() {
        let out = on_ranks(2, |g| {
            let be = Cpu;
            let r = Collective::<Cpu>::rank(&g);
            let bufs = vec![vec![1.0f32; 3 + r]];
            let rs = g.reduce_scatter_sum(&be, &bufs).map(|_| ()).map_err(|e| e.to_string());
            // Rank 1 passes a block one too long for its share of 4.
            let mine = vec![1.0f32; 2 + r];
            let mut into = vec![vec![0.0f32; 4]];
            let ag = g.all_gather(&be, &mine, &mut into).map_err(|e| e.to_string());
            (rs, ag)
        });
        for (rs, ag) in out {
            assert!(rs.unwrap_err().contains("rank 1 passed 4 values, rank 0 passed 3"));
            assert!(ag.unwrap_err().contains("rank 1 passed 3 values, its block of 4 holds 2"));
        }
    }
}
