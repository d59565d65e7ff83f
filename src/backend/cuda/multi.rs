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
//! AdamW over every parameter tensor is one launch the same way (`adamw_many_f32`, rows of
//! `AdamwRow`): 290 launches a step at Qwen2.5-0.5B before, profiled at 9.8 ms of a 68.4 ms
//! H100 step, mostly the GPU waiting on per-launch host work.
//!
//! A kernel that writes through the table writes buffers the launch does not name as
//! arguments: the caller ends their bf16 shadows itself (`forget_shadows`). The emulator's
//! several-schedule comparison finds them by reading the table (emu/reach.rs), so each
//! schedule starts from the same contents of the buffers and must leave the same bits.

use super::device::{Arg, Device};
use super::{adamw_hyper_args, grid_for, CudaBackend, DevBuf, BLOCK};
use crate::backend::AdamwStep;

/// One table entry as the kernels read it (`BufSpan`: a pointer and three `long long`).
type Span = [u64; 4];

/// A row of `adamw_many_f32`'s table (`AdamwSpan`, kernels/elementwise.cu): the addresses of
/// p, g, m, v and of p's new bf16 shadow (0: none), the length, the first block and the block
/// count.
type AdamwRow = [u64; 8];

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
        rows.push([dev.addr(b.mem()), b.len as u64, first as u64, nb as u64]);
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
    fn upload_table(&self, bytes: &[u8]) -> D::Mem {
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
        let t = self.upload_table(bytemuck::cast_slice(&rows));
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
        let t = self.upload_table(bytemuck::cast_slice(&rows));
        self.forget_shadows(&shared);
        self.dev.launch(
            "fill_many_f32",
            [grid as u32, 1, 1],
            [BLOCK, 1, 1],
            0,
            &[Arg::Ptr(&t), Arg::I32(rows.len() as i32), Arg::F32(value)],
        );
    }

    /// `Backend::adamw_many`: `adamw` of every tensor in one launch (plus the table's write),
    /// each tensor given the grid of its own `adamw` launch so the work per block is the same;
    /// the values are the per-tensor bits whatever the grid (element-wise, one inline function,
    /// `adamw_elem`). With bf16 shadows wanted, each row also names a new shadow buffer that
    /// the kernel fills from the new weight and that is then adopted as that weight's shadow,
    /// as the per-tensor `adamw_bf16shadow_f32` path does. Empty tensors get no row.
    pub(super) fn adamw_list(
        &self,
        p: &mut [DevBuf<D::Mem>],
        g: &[DevBuf<D::Mem>],
        m: &mut [DevBuf<D::Mem>],
        v: &mut [DevBuf<D::Mem>],
        hp: AdamwStep,
    ) {
        crate::backend::check_adamw_lists(p.len(), g.len(), m.len(), v.len());
        for (i, (((p, g), m), v)) in p.iter().zip(g).zip(&*m).zip(&*v).enumerate() {
            assert!(
                g.len == p.len && m.len == p.len && v.len == p.len,
                "adamw_many: tensor {i} has {} values, its gradient {}, moments {} and {}",
                p.len,
                g.len,
                m.len,
                v.len
            );
        }
        let with_shadow = self.dev.wants_bf16_shadow();
        let mut rows: Vec<AdamwRow> = Vec::with_capacity(p.len());
        let mut shadows = Vec::new();
        let mut first = 0usize;
        for (i, p) in p.iter().enumerate().filter(|(_, p)| p.len > 0) {
            let shadow = with_shadow.then(|| self.dev.alloc(p.len * 2));
            let nb = grid_for(p.len) as usize;
            let a = |b: &DevBuf<D::Mem>| self.dev.addr(b.mem());
            rows.push([
                a(p),
                a(&g[i]),
                a(&m[i]),
                a(&v[i]),
                shadow.as_ref().map_or(0, |s| self.dev.addr(s)),
                p.len as u64,
                first as u64,
                nb as u64,
            ]);
            first += nb;
            if let Some(s) = shadow {
                shadows.push((i, s));
            }
        }
        if rows.is_empty() {
            return;
        }
        let written: Vec<&DevBuf<D::Mem>> = p.iter().chain(&*m).chain(&*v).collect();
        self.forget_shadows(&written);
        let t = self.upload_table(bytemuck::cast_slice(&rows));
        let mut args = vec![Arg::Ptr(&t), Arg::I32(rows.len() as i32)];
        args.extend(adamw_hyper_args(hp));
        self.dev.launch("adamw_many_f32", [first as u32, 1, 1], [BLOCK, 1, 1], 0, &args);
        for (i, s) in shadows {
            self.dev.adopt_bf16_shadow(p[i].mem(), s, p[i].len);
        }
    }

    /// Ends the bf16 shadows of buffers a table launch writes (a launch ends those of the
    /// buffers it names as arguments, not those it reaches through a table).
    fn forget_shadows(&self, bufs: &[&DevBuf<D::Mem>]) {
        for b in bufs {
            self.dev.forget_bf16_shadow(b.mem());
        }
    }
}
