//! Ops that a decoder layer runs back to back, as one call: `Backend::qkv_epilogue` (biases,
//! RoPE and the KV-cache writes of the attention inputs), `Backend::add_rmsnorm` (a residual
//! add and the RMSNorm that reads it) and, in the backward, `Backend::rmsnorm_backward_add`
//! (an RMSNorm's input gradient added to the residual stream's) and
//! `Backend::qkv_backward_epilogue` (RoPE's backward of the query and key gradients).
//!
//! Why: a decode step is many small ops on a few rows each, and each launch costs a GPU
//! several microseconds whatever its size (docs/perf.md, "Where a decode step goes": ~10 small
//! kernels a layer at 5-7 us). The defaults here are the ops one after another; a backend that
//! fuses them must give the same bits (tests/suite/fused_layer_ops.rs holds the CUDA kernels to that
//! on the emulator).

use super::Backend;

/// The three projections of a layer's attention inputs and their biases: `q` is
/// `[rows, n_heads, head_dim]`, `k` and `v` are `[rows, n_kv_heads, head_dim]`.
pub struct Qkv<'a, B: Backend + ?Sized> {
    pub q: &'a mut B::Buf,
    pub k: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub bq: &'a B::Buf,
    pub bk: &'a B::Buf,
    pub bv: &'a B::Buf,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Where the projections are: `q`, `k` and `v` themselves (None), or one stacked GEMM's
    /// output `[rows, q + 2 kv]` (a row's q columns, then k's, then v's;
    /// `Backend::matmul_stacked`), from which the epilogue writes them.
    pub stacked: Option<&'a B::Buf>,
}

/// One-dimensional RoPE of a batch: row `t` turns pair `(i, i + head_dim/2)` by
/// `positions[t] as f32 * inv_freq[i]` (as `Backend::rope`), then the result is multiplied by
/// `factor` (transformers' attention factor of scaled RoPE; at 1 no multiplication is made).
pub struct Rope1d<'a> {
    pub positions: &'a [u32],
    pub inv_freq: &'a [f32],
    pub factor: f32,
}

/// A decode step's KV-cache destination: row `t` of the new k and v goes to row `rows[t]` of
/// `k` and `v` (as `Backend::scatter_rows`).
pub struct CacheRows<'a, B: Backend + ?Sized> {
    pub k: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub rows: &'a [usize],
}

/// `Backend::qkv_epilogue` as the ops one after another (the reference a fused kernel must
/// match bit for bit): bias adds, the rotation of q then k, the attention factor, the scatter
/// of k then v.
pub fn qkv_epilogue_ops<B: Backend + ?Sized>(
    be: &B,
    x: Qkv<'_, B>,
    rope: &Rope1d<'_>,
    cache: Option<CacheRows<'_, B>>,
) {
    let rows = rope.positions.len();
    let (hd, kvd) = (x.head_dim, x.n_kv_heads * x.head_dim);
    let qd = x.n_heads * hd;
    if let Some(s) = x.stacked {
        let w = qd + 2 * kvd;
        for r in 0..rows {
            be.copy(x.q, r * qd, s, r * w, qd);
            be.copy(x.k, r * kvd, s, r * w + qd, kvd);
            be.copy(x.v, r * kvd, s, r * w + qd + kvd, kvd);
        }
    }
    be.add_bias(x.q, x.bq, rows, qd);
    be.add_bias(x.k, x.bk, rows, kvd);
    be.add_bias(x.v, x.bv, rows, kvd);
    be.rope(x.q, rope.positions, x.n_heads, hd, rope.inv_freq, false);
    be.rope(x.k, rope.positions, x.n_kv_heads, hd, rope.inv_freq, false);
    if rope.factor != 1.0 {
        be.scale(x.q, rope.factor);
        be.scale(x.k, rope.factor);
    }
    if let Some(c) = cache {
        assert_eq!(c.rows.len(), rows, "qkv_epilogue: one cache row per row");
        be.scatter_rows(c.k, c.rows, x.k, kvd);
        be.scatter_rows(c.v, c.rows, x.v, kvd);
    }
}

/// A layer's attention input gradients after the attention backward: `dq` is
/// `[rows, n_heads, head_dim]`, `dk` and `dv` are `[rows, n_kv_heads, head_dim]`.
pub struct QkvGrads<'a, B: Backend + ?Sized> {
    pub dq: &'a mut B::Buf,
    pub dk: &'a mut B::Buf,
    pub dv: &'a B::Buf,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// `Backend::qkv_backward_epilogue` as the ops one after another: RoPE's backward (the
/// inverse rotation, then the attention factor, which commutes with it) of dq then dk, as
/// `Qwen2::rotate` with `inverse` makes it.
pub fn qkv_backward_epilogue_ops<B: Backend + ?Sized>(
    be: &B,
    x: QkvGrads<'_, B>,
    rope: &Rope1d<'_>,
) {
    let hd = x.head_dim;
    be.rope(x.dq, rope.positions, x.n_heads, hd, rope.inv_freq, true);
    if rope.factor != 1.0 {
        be.scale(x.dq, rope.factor);
    }
    be.rope(x.dk, rope.positions, x.n_kv_heads, hd, rope.inv_freq, true);
    if rope.factor != 1.0 {
        be.scale(x.dk, rope.factor);
    }
}

/// `Backend::add_rmsnorm` as the two ops: `sum = x + y`, then RMSNorm of `sum`.
#[allow(clippy::too_many_arguments)]
pub fn add_rmsnorm_ops<B: Backend + ?Sized>(
    be: &B,
    sum: &mut B::Buf,
    out: &mut B::Buf,
    rstd: &mut B::Buf,
    x: &B::Buf,
    y: &B::Buf,
    w: &B::Buf,
    rows: usize,
    dim: usize,
    eps: f32,
) {
    be.add_into(sum, x, y);
    be.rmsnorm(out, rstd, sum, w, rows, dim, eps);
}

/// `Backend::rmsnorm_backward_add` as the two ops: `rmsnorm_backward` into `scratch`, then
/// `dacc += scratch`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward_add_ops<B: Backend + ?Sized>(
    be: &B,
    dacc: &mut B::Buf,
    scratch: &mut B::Buf,
    dw: &mut B::Buf,
    dout: &B::Buf,
    x: &B::Buf,
    w: &B::Buf,
    rstd: &B::Buf,
    rows: usize,
    dim: usize,
) {
    be.rmsnorm_backward(scratch, dw, dout, x, w, rstd, rows, dim);
    be.add_assign(dacc, scratch);
}
