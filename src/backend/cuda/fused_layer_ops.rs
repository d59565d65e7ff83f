//! `Backend::qkv_epilogue`, `Backend::add_rmsnorm` and `Backend::rmsnorm_backward_add` as one
//! launch each (src/backend/fused_ops.rs has the ops they replace, which they match bit for
//! bit): a decode step of Qwen2.5-0.5B made 7 launches a layer for the biases, RoPE and the
//! cache writes and 2 for each residual add and its norm, each a few microseconds of a ~5 ms
//! step whatever its size; the backward wrote each norm's input gradient and read it back to
//! add it to the residual gradient, which its GEMMs then converted to bf16 (docs/perf.md);
//! RoPE's backward turned dq and dk in two launches (four with scaled RoPE), and the q/k/v
//! projections' backward GEMMs then converted dq, dk and dv in three more.

use super::device::{Arg, Device};
use super::{kv_cache16, opt_arg, CudaBackend, DevBuf, FlashIo};
use crate::backend::fused_ops::{self, CacheRows, Qkv, QkvGrads, Rope1d};
use crate::backend::row_moves::check_rows;
use crate::backend::AttnShape;

type Buf<D> = DevBuf<<D as Device>::Mem>;

/// Whether the fused kernels run, from `MMR1_FUSED_LAYER_OPS` (`1`/unset: on, `0`: the ops
/// one after another, to measure what the fusion saves). Panics on another value, naming it.
pub(super) fn from_env() -> bool {
    super::device::switch_from_env(
        "MMR1_FUSED_LAYER_OPS",
        true,
        "a layer's biases, RoPE and cache writes, each residual add with its norm, each norm backward with its add, and RoPE's backward of dq and dk, one launch each",
    )
}

impl<D: Device> CudaBackend<D> {
    /// The fused layer ops (on, the default from `MMR1_FUSED_LAYER_OPS`) or the ops they
    /// replace (off): the same bits either way.
    pub fn with_fused_layer_ops(mut self, on: bool) -> Self {
        self.fused_layer_ops = on;
        self
    }

    /// `Backend::qkv_epilogue`: `qkv_epilogue_f32`, or the ops one after another where the
    /// kernel does not apply (an odd head dimension leaves an unrotated last element per head,
    /// which the kernel's pairs do not cover).
    pub(super) fn qkv_epilogue_fused(
        &self,
        x: Qkv<'_, Self>,
        rope: &Rope1d<'_>,
        cache: Option<CacheRows<'_, Self>>,
    ) {
        let (rows, hd) = (rope.positions.len(), x.head_dim);
        let (qd, kvd) = (x.n_heads * hd, x.n_kv_heads * hd);
        assert_eq!(rope.inv_freq.len(), hd / 2, "qkv_epilogue: head_dim / 2 frequencies");
        if let Some(s) = x.stacked {
            assert!(
                s.len >= rows * (qd + 2 * kvd),
                "qkv_epilogue: stacked shorter than {rows} rows"
            );
        }
        assert!(
            x.q.len >= rows * qd && x.k.len >= rows * kvd && x.v.len >= rows * kvd,
            "qkv_epilogue: q, k or v shorter than {rows} rows"
        );
        assert!(
            x.bq.len >= qd && x.bk.len >= kvd && x.bv.len >= kvd,
            "qkv_epilogue: bias too short"
        );
        if hd % 2 == 1 || hd < 2 || !self.fused_layer_ops {
            return fused_ops::qkv_epilogue_ops(self, x, rope, cache);
        }
        if rows == 0 {
            return;
        }
        let inv = self.upload_index_bytes(bytemuck::cast_slice(rope.inv_freq));
        let pos = self.upload_index_u32(rope.positions);
        let dest = cache.map(|c| {
            check_rows("scatter_rows dst", c.rows, kvd, c.k.len, x.k.len, true);
            check_rows("scatter_rows dst", c.rows, kvd, c.v.len, x.v.len, true);
            assert_eq!(c.rows.len(), rows, "qkv_epilogue: one cache row per row");
            assert_eq!(c.k.is_bf16(), c.v.is_bf16(), "qkv_epilogue: K and V caches of one storage");
            let r: Vec<u32> = c.rows.iter().map(|&r| r as u32).collect();
            (c.k, c.v, self.upload_index_u32(&r))
        });
        // Without a cache (a training or log-prob forward) the flash kernels, with bf16 I/O,
        // read bf16 copies of q, k and v, which the epilogue writes when producers write GEMM
        // operands (the same conditions decide all three); with one, attention reads the
        // cache instead.
        let shape = AttnShape { n_heads: x.n_heads, n_kv_heads: x.n_kv_heads, head_dim: hd };
        let flash_reads_copies = self.use_flash(shape) && self.flash_io == FlashIo::Bf16;
        let sizes = [(&*x.q, rows * qd), (&*x.k, rows * kvd), (&*x.v, rows * kvd)];
        let copies = if dest.is_some() || !flash_reads_copies {
            None
        } else {
            self.producer_shadows_of(sizes)
        };
        // f32 caches take the first pointer of each pair, bf16 ones the second (`kv_cache16`).
        let none = [Arg::Null, Arg::Null];
        let [ck, ck16] = dest.as_ref().map_or(none, |d| kv_cache16::cache_dest(&*d.0));
        let [cv, cv16] = dest.as_ref().map_or(none, |d| kv_cache16::cache_dest(&*d.1));
        let pairs = rows * (x.n_heads + 2 * x.n_kv_heads) * (hd / 2);
        self.elementwise(
            "qkv_epilogue_f32",
            pairs,
            &[
                Arg::Ptr(x.q.mem()),
                Arg::Ptr(x.k.mem()),
                Arg::Ptr(x.v.mem()),
                Arg::Ptr(x.bq.mem()),
                Arg::Ptr(x.bk.mem()),
                Arg::Ptr(x.bv.mem()),
                Arg::Ptr(&*pos),
                Arg::Ptr(&*inv),
                Arg::I32(rows as i32),
                Arg::I32(x.n_heads as i32),
                Arg::I32(x.n_kv_heads as i32),
                Arg::I32(hd as i32),
                Arg::F32(rope.factor),
                ck,
                cv,
                opt_arg(dest.as_ref().map(|d| &*d.2)),
                opt_arg(copies.as_ref().map(|c| &c[0])),
                opt_arg(copies.as_ref().map(|c| &c[1])),
                opt_arg(copies.as_ref().map(|c| &c[2])),
                ck16,
                cv16,
                opt_arg(x.stacked.map(|s| s.mem())),
            ],
        );
        self.adopt_shadows(sizes, copies);
    }

    /// `Backend::add_rmsnorm`: `add_rmsnorm_f32`, writing the norm's bf16 copy too when
    /// producers write their GEMM operands (as `rmsnorm_fwd`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_rmsnorm_fused(
        &self,
        sum: &mut Buf<D>,
        out: &mut Buf<D>,
        rstd: &mut Buf<D>,
        x: &Buf<D>,
        y: &Buf<D>,
        w: &Buf<D>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        assert!(x.len == y.len && sum.len == x.len, "add_rmsnorm: length mismatch");
        assert!(x.len >= rows * dim && out.len >= rows * dim, "add_rmsnorm: buffer too small");
        if rows == 0 {
            return;
        }
        if x.len != rows * dim || dim == 0 || !self.fused_layer_ops {
            // The add covers whole buffers (as add_into), the norm its rows: two ops (and when
            // the fusion is switched off).
            return fused_ops::add_rmsnorm_ops(self, sum, out, rstd, x, y, w, rows, dim, eps);
        }
        self.produce(out, rows * dim, |out, shadow| {
            self.dev.launch(
                "add_rmsnorm_f32",
                [rows as u32, 1, 1],
                [super::BLOCK, 1, 1],
                0,
                &[
                    Arg::Ptr(sum.mem()),
                    out,
                    opt_arg(shadow),
                    Arg::Ptr(rstd.mem()),
                    Arg::Ptr(x.mem()),
                    Arg::Ptr(y.mem()),
                    Arg::Ptr(w.mem()),
                    Arg::I32(rows as i32),
                    Arg::I32(dim as i32),
                    Arg::F32(eps),
                ],
            )
        });
    }

    /// `Backend::rmsnorm_backward_add`: `rmsnorm_bwd_dx_add_f32` (writing `dacc`'s bf16 copy
    /// too when producers write their GEMM operands: the residual gradient is the next GEMMs'
    /// operand), then the weight gradient as `rmsnorm_backward` makes it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rmsnorm_backward_add_fused(
        &self,
        dacc: &mut Buf<D>,
        scratch: &mut Buf<D>,
        dw: &mut Buf<D>,
        dout: &Buf<D>,
        x: &Buf<D>,
        w: &Buf<D>,
        rstd: &Buf<D>,
        rows: usize,
        dim: usize,
    ) {
        if !self.fused_layer_ops || dacc.len != rows * dim {
            return fused_ops::rmsnorm_backward_add_ops(
                self, dacc, scratch, dw, dout, x, w, rstd, rows, dim,
            );
        }
        // `dacc.mem()`, not the closure's f32 argument: the kernel reads and adds to it, so a
        // bf16-stored `dacc` (never made by the model) must fail here, not write `scratch`.
        self.produce(dacc, rows * dim, |_, shadow| {
            let out = vec![Arg::Ptr(dacc.mem()), opt_arg(shadow)];
            self.rmsnorm_bwd("rmsnorm_bwd_dx_add_f32", out, dw, dout, x, w, rstd, rows, dim);
        });
    }

    /// `Backend::qkv_backward_epilogue`: `qkv_bwd_epilogue_f32`, which also writes the bf16
    /// copies of dq, dk and dv when producers write their GEMM operands (the q/k/v
    /// projections' dX and dW GEMMs read them; the bias gradients' column reductions between
    /// only read the three, `device::READ_ONLY_ARGS`), or the ops one after another where the
    /// kernel does not apply (an odd head dimension) or the switch is off.
    pub(super) fn qkv_backward_epilogue_fused(&self, x: QkvGrads<'_, Self>, rope: &Rope1d<'_>) {
        let (rows, hd) = (rope.positions.len(), x.head_dim);
        let (qd, kvd) = (x.n_heads * hd, x.n_kv_heads * hd);
        assert_eq!(rope.inv_freq.len(), hd / 2, "qkv_backward_epilogue: head_dim / 2 frequencies");
        assert!(
            x.dq.len >= rows * qd && x.dk.len >= rows * kvd && x.dv.len >= rows * kvd,
            "qkv_backward_epilogue: dq, dk or dv shorter than {rows} rows"
        );
        if hd % 2 == 1 || hd < 2 || !self.fused_layer_ops {
            return fused_ops::qkv_backward_epilogue_ops(self, x, rope);
        }
        if rows == 0 {
            return;
        }
        let inv = self.upload_index_bytes(bytemuck::cast_slice(rope.inv_freq));
        let pos = self.upload_index_u32(rope.positions);
        // The same conditions decide all three: each or none.
        let sizes = [(&*x.dq, rows * qd), (&*x.dk, rows * kvd), (x.dv, rows * kvd)];
        let copies = self.producer_shadows_of(sizes);
        let heads = x.n_heads + if copies.is_some() { 2 } else { 1 } * x.n_kv_heads;
        self.elementwise(
            "qkv_bwd_epilogue_f32",
            rows * heads * (hd / 2),
            &[
                Arg::Ptr(x.dq.mem()),
                Arg::Ptr(x.dk.mem()),
                Arg::Ptr(x.dv.mem()),
                opt_arg(copies.as_ref().map(|c| &c[0])),
                opt_arg(copies.as_ref().map(|c| &c[1])),
                opt_arg(copies.as_ref().map(|c| &c[2])),
                Arg::Ptr(&*pos),
                Arg::Ptr(&*inv),
                Arg::I32(rows as i32),
                Arg::I32(x.n_heads as i32),
                Arg::I32(x.n_kv_heads as i32),
                Arg::I32(hd as i32),
                Arg::F32(rope.factor),
            ],
        );
        self.adopt_shadows(sizes, copies);
    }
}
