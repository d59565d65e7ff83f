//! The Qwen2.5-VL vision tower's forward pass, written once against `Backend`, as
//! transformers' `Qwen2_5_VisionTransformerPretrainedModel.forward` computes it
//! (modeling_qwen2_5_vl.py, transformers 5.24):
//!
//! 1. patch embedding: the Conv3d whose stride equals its kernel is one GEMM,
//!    `[patches, C*T*P*P] @ W^T` with `W` `[hidden, C*T*P*P]` (no bias);
//! 2. rows permuted into window order (`vision_windows`), the 2D rotary angles likewise;
//! 3. `depth` blocks: `x += proj(attn(rope(qkv(norm1 x))))`, `x += down(silu(gate) * up)(norm2 x)`,
//!    RMSNorm eps 1e-6, attention bidirectional over the windows, or over each image (frame)
//!    at `fullatt_block_indexes`; the fused qkv weight's rows are `q | k | v`, head-major;
//! 4. the merger: `ln_q` (RMSNorm, eps 1e-6), each run of `merge^2` consecutive rows read as
//!    one row of `merge^2 * hidden`, `Linear -> GELU (erf) -> Linear` to the language model's
//!    width, and the merged rows put back in image order.
//!
//! Every activation the backward pass needs is kept in `VisionActs`.

use super::rope_tables::vision_rope_angles;
use super::vision_config::VisionConfig;
use super::vision_params::VisionLayout;
use super::vision_windows::{
    cu_seqlens, inverse_permutation, position_ids, window_index, window_patch_order,
};
use crate::backend::{AttnShape, AttnSpan, Backend, Tr};
use anyhow::{bail, Result};

/// RMSNorm epsilon of the vision blocks and the merger's `ln_q` (fixed in transformers, not
/// read from the config).
pub const VISION_EPS: f32 = 1e-6;

/// Rotary base of the vision tower's 2D rope: transformers' `Qwen2_5_VLVisionConfig`
/// default (`rope_parameters.rope_theta`), which the published checkpoints do not override.
pub const VISION_ROPE_THETA: f64 = 10000.0;

/// The vision tower on a backend: config, parameter layout, one buffer per parameter.
pub struct VisionTower<B: Backend> {
    pub cfg: VisionConfig,
    pub layout: VisionLayout,
    pub params: Vec<B::Buf>,
}

/// Host-side bookkeeping of one batch of images (integers and the rotary angles), made once
/// per batch from the grids.
#[derive(Clone, Debug)]
pub struct VisionPlan {
    pub grids: Vec<[usize; 3]>,
    /// Patches (rows of `pixel_values`).
    pub n: usize,
    /// Window order of patch rows: row `i` of the permuted matrix is patch `patch_order[i]`.
    pub patch_order: Vec<u32>,
    /// Its inverse: patch `p` sits at row `patch_inverse[p]` of the permuted matrix.
    pub patch_inverse: Vec<u32>,
    /// Window order of merged units (`window_index`) and its inverse.
    pub unit_order: Vec<u32>,
    pub unit_inverse: Vec<u32>,
    /// Attention spans over the window-ordered rows: each window, or each image frame.
    pub window_spans: Vec<AttnSpan>,
    pub full_spans: Vec<AttnSpan>,
    /// `[n, head_dim/2]` rotary angles of the window-ordered rows.
    pub angles: Vec<f32>,
}

fn spans_of(cu: &[usize]) -> Vec<AttnSpan> {
    cu.windows(2)
        .map(|w| AttnSpan {
            q_start: w[0],
            q_len: w[1] - w[0],
            kv_start: w[0],
            kv_len: w[1] - w[0],
        })
        .collect()
}

fn as_u32(v: &[usize]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

impl VisionPlan {
    /// The plan for images with patch grids `grids` (`[t, h, w]` each, as `image_grid_thw`).
    /// A grid whose height or width is not a multiple of the merge size is an error naming it.
    pub fn new(cfg: &VisionConfig, grids: &[[usize; 3]]) -> Result<Self> {
        let m = cfg.spatial_merge_size;
        for (i, g) in grids.iter().enumerate() {
            if g.contains(&0) || g[1] % m != 0 || g[2] % m != 0 {
                bail!(
                    "image {i}: patch grid {g:?} must be positive with height and width multiples \
                     of spatial_merge_size {m}"
                );
            }
        }
        let (wi, cu_w) = window_index(grids, m, cfg.window_size, cfg.patch_size);
        let order = window_patch_order(&wi, m);
        let n = order.len();
        let pos = position_ids(grids, m);
        let unrotated = vision_rope_angles(&pos, cfg.head_dim(), VISION_ROPE_THETA);
        let half = cfg.head_dim() / 2;
        let angles =
            order.iter().flat_map(|&p| unrotated[p * half..(p + 1) * half].to_vec()).collect();
        Ok(VisionPlan {
            grids: grids.to_vec(),
            n,
            patch_inverse: as_u32(&inverse_permutation(&order)),
            patch_order: as_u32(&order),
            unit_inverse: as_u32(&inverse_permutation(&wi)),
            unit_order: as_u32(&wi),
            window_spans: spans_of(&cu_w),
            full_spans: spans_of(&cu_seqlens(grids)),
            angles,
        })
    }

    /// Merged rows (language-model tokens) of the batch.
    pub fn merged_rows(&self, cfg: &VisionConfig) -> usize {
        self.n / (cfg.spatial_merge_size * cfg.spatial_merge_size)
    }
}

/// One vision block's saved activations (rows in window order).
pub struct VisionBlockActs<B: Backend> {
    pub rstd1: B::Buf,
    pub xn1: B::Buf,
    /// Queries and keys after the rotary turn, values.
    pub q: B::Buf,
    pub k: B::Buf,
    pub v: B::Buf,
    pub att: B::Buf,
    pub lse: B::Buf,
    pub x_mid: B::Buf,
    pub rstd2: B::Buf,
    pub xn2: B::Buf,
    pub gate: B::Buf,
    pub up: B::Buf,
    pub act: B::Buf,
}

/// All activations of one vision forward.
pub struct VisionActs<B: Backend> {
    /// `resid[0]`: the patch embedding in window order; `resid[b + 1]`: block `b`'s output.
    pub resid: Vec<B::Buf>,
    pub blocks: Vec<VisionBlockActs<B>>,
    /// The merger: `ln_q` output `[n, hidden]` (= `[n/4, 4 hidden]`), its rstd, the first
    /// Linear's output (GELU input) and the GELU output, all in window order.
    pub rstd_q: B::Buf,
    pub xn_q: B::Buf,
    pub z: B::Buf,
    pub g: B::Buf,
    /// `[merged rows, out_hidden]` in image order: the tower's output.
    pub features: B::Buf,
}

/// Rows `rows` of a `[.., hidden]` Linear weight or bias, copied into their own buffer (the
/// fused qkv weight holds q, k and v one after the other).
fn slice_of<B: Backend>(be: &B, src: &B::Buf, start: usize, len: usize) -> B::Buf {
    let mut out = be.zeros(len);
    be.copy(&mut out, 0, src, start, len);
    out
}

impl<B: Backend> VisionTower<B> {
    pub fn from_host(be: &B, cfg: VisionConfig, layout: VisionLayout, host: &[Vec<f32>]) -> Self {
        VisionTower { params: host.iter().map(|h| be.upload(h)).collect(), cfg, layout }
    }

    pub fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.cfg.num_heads,
            n_kv_heads: self.cfg.num_heads,
            head_dim: self.cfg.head_dim(),
        }
    }

    /// The tower on `pixels` (`[plan.n, patch_dim]`, as the image processor's `pixel_values`):
    /// merged features `[merged rows, out_hidden]` in image order in `acts.features`.
    pub fn forward(&self, be: &B, pixels: &B::Buf, plan: &VisionPlan) -> Result<VisionActs<B>> {
        let c = &self.cfg;
        let (n, d, im) = (plan.n, c.hidden_size, c.intermediate_size);
        if be.len(pixels) != n * c.patch_dim() {
            bail!(
                "pixel_values holds {} values; the grids {:?} need {n} patches of {} = {}",
                be.len(pixels),
                plan.grids,
                c.patch_dim(),
                n * c.patch_dim()
            );
        }
        let p = &self.params;
        let lay = &self.layout;
        let (nh, hd) = (c.num_heads, c.head_dim());
        let shape = self.attn_shape();

        // Patch embedding, then window order.
        let mut emb = be.zeros(n * d);
        be.matmul(&mut emb, pixels, Tr::N, &p[lay.patch_embed], Tr::T, n, d, c.patch_dim(), 0.0);
        let mut x0 = be.zeros(n * d);
        be.embedding(&mut x0, &emb, &plan.patch_order, d);
        drop(emb);
        let angles = be.upload(&plan.angles);

        let mut resid = vec![x0];
        let mut blocks = Vec::with_capacity(c.depth);
        let mut tmp = be.zeros(n * d);
        for (b, w) in lay.blocks.iter().enumerate() {
            let x_in = &resid[b];
            let mut a = VisionBlockActs {
                rstd1: be.zeros(n),
                // xn1, xn2, act: GEMM operands alone, forward and backward (`operand_buf`).
                xn1: be.operand_buf(n * d),
                q: be.zeros(n * d),
                k: be.zeros(n * d),
                v: be.zeros(n * d),
                att: be.zeros(n * d),
                lse: be.zeros(n * nh),
                x_mid: be.zeros(n * d),
                rstd2: be.zeros(n),
                xn2: be.operand_buf(n * d),
                gate: be.zeros(n * im),
                up: be.zeros(n * im),
                act: be.operand_buf(n * im),
            };
            be.rmsnorm(&mut a.xn1, &mut a.rstd1, x_in, &p[w.norm1], n, d, VISION_EPS);
            for (j, out) in [&mut a.q, &mut a.k, &mut a.v].into_iter().enumerate() {
                let wj = slice_of(be, &p[w.qkv_w], j * d * d, d * d);
                let bj = slice_of(be, &p[w.qkv_b], j * d, d);
                be.matmul(out, &a.xn1, Tr::N, &wj, Tr::T, n, d, d, 0.0);
                be.add_bias(out, &bj, n, d);
            }
            be.rope_table(&mut a.q, &angles, n, nh, hd, false);
            be.rope_table(&mut a.k, &angles, n, nh, hd, false);
            let spans = if c.fullatt_block_indexes.contains(&b) {
                &plan.full_spans
            } else {
                &plan.window_spans
            };
            be.attention_bidir(&mut a.att, &mut a.lse, &a.q, &a.k, &a.v, spans, shape);
            be.matmul(&mut tmp, &a.att, Tr::N, &p[w.proj_w], Tr::T, n, d, d, 0.0);
            be.add_bias(&mut tmp, &p[w.proj_b], n, d);
            be.copy(&mut a.x_mid, 0, x_in, 0, n * d);
            be.add_assign(&mut a.x_mid, &tmp);

            be.rmsnorm(&mut a.xn2, &mut a.rstd2, &a.x_mid, &p[w.norm2], n, d, VISION_EPS);
            be.matmul(&mut a.gate, &a.xn2, Tr::N, &p[w.gate_w], Tr::T, n, im, d, 0.0);
            be.add_bias(&mut a.gate, &p[w.gate_b], n, im);
            be.matmul(&mut a.up, &a.xn2, Tr::N, &p[w.up_w], Tr::T, n, im, d, 0.0);
            be.add_bias(&mut a.up, &p[w.up_b], n, im);
            be.swiglu(&mut a.act, &a.gate, &a.up);
            be.matmul(&mut tmp, &a.act, Tr::N, &p[w.down_w], Tr::T, n, d, im, 0.0);
            be.add_bias(&mut tmp, &p[w.down_b], n, d);
            let mut x_out = be.zeros(n * d);
            be.copy(&mut x_out, 0, &a.x_mid, 0, n * d);
            be.add_assign(&mut x_out, &tmp);
            resid.push(x_out);
            blocks.push(a);
        }

        // The merger, on window-ordered rows; its output goes back to image order.
        let (rows, md, od) = (plan.merged_rows(c), c.merged_dim(), c.out_hidden_size);
        let (mut rstd_q, mut xn_q) = (be.zeros(n), be.zeros(n * d));
        be.rmsnorm(&mut xn_q, &mut rstd_q, &resid[c.depth], &p[lay.ln_q], n, d, VISION_EPS);
        let (mut z, mut g) = (be.zeros(rows * md), be.zeros(rows * md));
        be.matmul(&mut z, &xn_q, Tr::N, &p[lay.mlp0_w], Tr::T, rows, md, md, 0.0);
        be.add_bias(&mut z, &p[lay.mlp0_b], rows, md);
        be.gelu(&mut g, &z);
        let mut merged = be.zeros(rows * od);
        be.matmul(&mut merged, &g, Tr::N, &p[lay.mlp2_w], Tr::T, rows, od, md, 0.0);
        be.add_bias(&mut merged, &p[lay.mlp2_b], rows, od);
        let mut features = be.zeros(rows * od);
        be.embedding(&mut features, &merged, &plan.unit_inverse, od);
        Ok(VisionActs { resid, blocks, rstd_q, xn_q, z, g, features })
    }
}
