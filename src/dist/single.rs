//! World size 1: the single-process path, every collective a no-op.

use super::{flat_len, flat_slice, piece_of, write_flat, Collective};
use crate::backend::Backend;
use anyhow::{ensure, Result};

/// The only rank of a world of one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl<B: Backend> Collective<B> for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _be: &B, _bufs: &mut [B::Buf]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _be: &B, _bufs: &mut [B::Buf], root: usize) -> Result<()> {
        ensure!(root == 0, "broadcast from rank {root} in a world of 1");
        Ok(())
    }
    fn all_reduce_sum_host(&self, _xs: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_gather_host(&self, xs: &[f64]) -> Result<Vec<Vec<f64>>> {
        Ok(vec![xs.to_vec()])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_range(
        &self,
        be: &B,
        bufs: &[B::Buf],
        start: usize,
        total: usize,
    ) -> Result<B::Buf> {
        let n = flat_len(be, bufs);
        piece_of(start, n, total)?;
        Ok(flat_slice(be, bufs, 0..n))
    }
    fn gather_to_root(&self, xs: &[f32], root: usize) -> Result<Vec<Vec<f32>>> {
        ensure!(root == 0, "gather to rank {root} in a world of 1");
        Ok(vec![xs.to_vec()])
    }
    fn all_gather(&self, be: &B, mine: &B::Buf, bufs: &mut [B::Buf]) -> Result<()> {
        let n = flat_len(be, bufs);
        ensure!(
            be.len(mine) == n,
            "all-gather: a world of 1 holds {n} values, got {}",
            be.len(mine)
        );
        write_flat(be, bufs, 0, mine);
        Ok(())
    }
}
