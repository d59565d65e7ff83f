//! Multi-buffer launches: one kernel over a list of buffers through a device table of
//! `BufSpan` entries (kernels/common.cuh: address, length, first block, block count) instead
//! of a launch per buffer. The optimizer side of a step touches every parameter tensor (290
//! of Qwen2.5-0.5B); per tensor, the gradient norm alone cost 580 launches and 290 host
//! synchronisations a step (docs/perf.md, "Optimizer side in fewer launches").
//!
//! Each entry gets the grid its buffer would get alone, so a block's work, and every bit it
//! computes, is what it was in the per-buffer launch; a block finds its entry by binary
//! search (`span_of_block`). Empty buffers are left out of the table (no block works on them).
//!
//! A kernel that writes through the table writes buffers the launch does not name as
//! arguments: the caller ends their bf16 shadows itself (`forget_shadows`), and the
//! emulator's several-schedule comparison (which snapshots named arguments) does not see
//! those writes; `fill_many_f32` writes one value per element, so no schedule can differ.

use super::device::{Arg, Device};
use super::{grid_for, CudaBackend, DevBuf, BLOCK};

/// One table entry as the kernels read it (`BufSpan`: a pointer and three `long long`).
type Span = [u64; 4];

/// The table of `bufs` with `blocks(len)` blocks each (empty buffers left out), and the grid.
fn table<M, D: Device<Mem = M>>(
    dev: &D,
    bufs: &[&DevBuf<M>],
    blocks: impl Fn(usize) -> usize,
) -> (Vec<Span>, usize) {
    let mut rows = Vec::with_capacity(bufs.len());
    let mut first = 0usize;
    for b in bufs.iter().filter(|b| b.len > 0) {
        let nb = blocks(b.len);
        rows.push([dev.addr(&b.mem), b.len as u64, first as u64, nb as u64]);
        first += nb;
    }
    (rows, first)
}

/// The blocks `sum_squares` gives a buffer of `n > 0` values (a grid fixed by the length alone).
pub(super) fn sumsq_blocks(n: usize) -> usize {
    n.div_ceil(BLOCK as usize).clamp(1, 1024)
}

impl<D: Device> CudaBackend<D> {
    /// The table in device memory (written, not uploaded: an upload may be a weight and
    /// gets marked for a bf16 shadow).
    fn upload_table(&self, rows: &[Span]) -> D::Mem {
        let bytes: &[u8] = bytemuck::cast_slice(rows);
        let mut t = self.dev.alloc(bytes.len());
        self.dev.write(&mut t, bytes);
        t
    }

    /// `Backend::sum_squares_many`: the per-tensor sums of `sum_squares`, bit for bit, from two
    /// launches and one download (of one f64 per non-empty tensor), added in order on the host
    /// as `optim::grad_norm` added the per-tensor results.
    pub(super) fn sum_squares_list(&self, xs: &[&DevBuf<D::Mem>]) -> f64 {
        let (rows, grid) = table(&self.dev, xs, sumsq_blocks);
        if rows.is_empty() {
            return 0.0;
        }
        let t = self.upload_table(&rows);
        let partial = self.dev.alloc(grid * 8);
        let totals = self.dev.alloc(rows.len() * 8);
        self.dev.launch(
            "sumsq_partial_many_f32",
            [grid as u32, 1, 1],
            [BLOCK, 1, 1],
            0,
            &[Arg::Ptr(&t), Arg::I32(rows.len() as i32), Arg::Ptr(&partial)],
        );
        self.dev.launch(
            "sum_partials_many_f64",
            [rows.len() as u32, 1, 1],
            [BLOCK, 1, 1],
            0,
            &[Arg::Ptr(&t), Arg::Ptr(&partial), Arg::Ptr(&totals)],
        );
        let bytes = self.dev.download(&totals, rows.len() * 8);
        // Empty tensors added 0.0 to the per-tensor sum: leaving them out changes no bit.
        bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).sum()
    }

    /// `Backend::fill_many`: `fill` of every buffer in one launch.
    pub(super) fn fill_list(&self, bufs: &mut [&mut DevBuf<D::Mem>], value: f32) {
        let shared: Vec<&DevBuf<D::Mem>> = bufs.iter().map(|b| &**b).collect();
        let (rows, grid) = table(&self.dev, &shared, |n| grid_for(n) as usize);
        if rows.is_empty() {
            return;
        }
        let t = self.upload_table(&rows);
        self.forget_shadows(&shared);
        self.dev.launch(
            "fill_many_f32",
            [grid as u32, 1, 1],
            [BLOCK, 1, 1],
            0,
            &[Arg::Ptr(&t), Arg::I32(rows.len() as i32), Arg::F32(value)],
        );
    }

    /// Ends the bf16 shadows of buffers a table launch writes (a launch ends those of the
    /// buffers it names as arguments, not those it reaches through a table).
    fn forget_shadows(&self, bufs: &[&DevBuf<D::Mem>]) {
        for b in bufs {
            self.dev.forget_bf16_shadow(&b.mem);
        }
    }
}
