//! The vision tower's backward pass, written once against `Backend`: from d(loss)/d(features)
//! to every parameter's gradient (accumulated, `+=`), by hand in the reverse order of
//! `vision_forward` with its saved `VisionActs`. The pixels get no gradient (they are data).

use super::vision_forward::{VisionActs, VisionPlan, VisionTower};
use crate::backend::{Backend, Tr};

/// `dst[start .. start + len] += src`, for gradients of a slice of a fused parameter (the q, k
/// and v rows of `attn.qkv`).
fn add_into_slice<B: Backend>(be: &B, dst: &mut B::Buf, start: usize, src: &B::Buf) {
    let len = be.len(src);
    let mut cur = be.zeros(len);
    be.copy(&mut cur, 0, dst, start, len);
    be.add_assign(&mut cur, src);
    be.copy(dst, start, &cur, 0, len);
}

impl<B: Backend> VisionTower<B> {
    /// One zero buffer per parameter, in layout order.
    pub fn zero_grads(&self, be: &B) -> Vec<B::Buf> {
        self.params.iter().map(|p| be.zeros(be.len(p))).collect()
    }

    /// Accumulates into `grads` (layout order) the gradients of a loss whose gradient with
    /// respect to `acts.features` (`[merged rows, out_hidden]`, image order) is `dfeatures`.
    pub fn backward(
        &self,
        be: &B,
        pixels: &B::Buf,
        plan: &VisionPlan,
        acts: &VisionActs<B>,
        dfeatures: &B::Buf,
        grads: &mut [B::Buf],
    ) {
        let c = &self.cfg;
        let (n, d, im) = (plan.n, c.hidden_size, c.intermediate_size);
        let (rows, md, od) = (plan.merged_rows(c), c.merged_dim(), c.out_hidden_size);
        let (nh, hd) = (c.num_heads, c.head_dim());
        let p = &self.params;
        let lay = &self.layout;
        let shape = self.attn_shape();
        assert_eq!(grads.len(), p.len(), "vision backward: one gradient buffer per parameter");

        // Merger. features[u] = merged[unit_inverse[u]], so merged row j's gradient is
        // dfeatures[unit_order[j]].
        let mut dmerged = be.zeros(rows * od);
        be.embedding(&mut dmerged, dfeatures, &plan.unit_order, od);
        be.bias_backward(&mut grads[lay.mlp2_b], &dmerged, rows, od);
        be.matmul(&mut grads[lay.mlp2_w], &dmerged, Tr::T, &acts.g, Tr::N, od, md, rows, 1.0);
        let mut dg = be.zeros(rows * md);
        be.matmul(&mut dg, &dmerged, Tr::N, &p[lay.mlp2_w], Tr::N, rows, md, od, 0.0);
        let mut dz = be.zeros(rows * md);
        be.gelu_backward(&mut dz, &dg, &acts.z);
        be.bias_backward(&mut grads[lay.mlp0_b], &dz, rows, md);
        be.matmul(&mut grads[lay.mlp0_w], &dz, Tr::T, &acts.xn_q, Tr::N, md, md, rows, 1.0);
        let mut dxn = be.zeros(n * d); // [rows, md] is [n, d]
        be.matmul(&mut dxn, &dz, Tr::N, &p[lay.mlp0_w], Tr::N, rows, md, md, 0.0);
        let mut dx = be.zeros(n * d);
        be.rmsnorm_backward(
            &mut dx,
            &mut grads[lay.ln_q],
            &dxn,
            &acts.resid[c.depth],
            &p[lay.ln_q],
            &acts.rstd_q,
            n,
            d,
        );

        // Blocks, last to first. `dx` is d(loss)/d(block output).
        let (mut dgate, mut dup, mut dact) = (be.zeros(n * im), be.zeros(n * im), be.zeros(n * im));
        let (mut dxn2, mut dx_mid) = (be.zeros(n * d), be.zeros(n * d));
        let (mut datt, mut dq, mut dk, mut dv) =
            (be.zeros(n * d), be.zeros(n * d), be.zeros(n * d), be.zeros(n * d));
        let (mut dxn1, mut dnorm) = (be.zeros(n * d), be.zeros(n * d));
        let (mut dwj, mut dbj, mut wj) = (be.zeros(d * d), be.zeros(d), be.zeros(d * d));
        let angles = be.upload(&plan.angles);
        for b in (0..c.depth).rev() {
            let w = &lay.blocks[b];
            let a = &acts.blocks[b];
            // x_out = x_mid + down(silu(gate) * up) + bias
            be.bias_backward(&mut grads[w.down_b], &dx, n, d);
            be.matmul(&mut grads[w.down_w], &dx, Tr::T, &a.act, Tr::N, d, im, n, 1.0);
            be.matmul(&mut dact, &dx, Tr::N, &p[w.down_w], Tr::N, n, im, d, 0.0);
            be.swiglu_backward(&mut dgate, &mut dup, &dact, &a.gate, &a.up);
            be.bias_backward(&mut grads[w.gate_b], &dgate, n, im);
            be.bias_backward(&mut grads[w.up_b], &dup, n, im);
            be.matmul(&mut grads[w.gate_w], &dgate, Tr::T, &a.xn2, Tr::N, im, d, n, 1.0);
            be.matmul(&mut grads[w.up_w], &dup, Tr::T, &a.xn2, Tr::N, im, d, n, 1.0);
            be.matmul(&mut dxn2, &dgate, Tr::N, &p[w.gate_w], Tr::N, n, d, im, 0.0);
            be.matmul(&mut dxn2, &dup, Tr::N, &p[w.up_w], Tr::N, n, d, im, 1.0);
            be.rmsnorm_backward(
                &mut dnorm,
                &mut grads[w.norm2],
                &dxn2,
                &a.x_mid,
                &p[w.norm2],
                &a.rstd2,
                n,
                d,
            );
            be.copy(&mut dx_mid, 0, &dx, 0, n * d);
            be.add_assign(&mut dx_mid, &dnorm);

            // x_mid = x_in + proj(attn(rope(q), rope(k), v)) + bias
            be.bias_backward(&mut grads[w.proj_b], &dx_mid, n, d);
            be.matmul(&mut grads[w.proj_w], &dx_mid, Tr::T, &a.att, Tr::N, d, d, n, 1.0);
            be.matmul(&mut datt, &dx_mid, Tr::N, &p[w.proj_w], Tr::N, n, d, d, 0.0);
            let spans = if c.fullatt_block_indexes.contains(&b) {
                &plan.full_spans
            } else {
                &plan.window_spans
            };
            be.attention_bidir_backward(
                &mut dq, &mut dk, &mut dv, &datt, &a.q, &a.k, &a.v, &a.att, &a.lse, spans, shape,
            );
            // The rotation is orthogonal: its backward turns the other way.
            be.rope_table(&mut dq, &angles, n, nh, hd, true);
            be.rope_table(&mut dk, &angles, n, nh, hd, true);
            for (j, dj) in [&dq, &dk, &dv].into_iter().enumerate() {
                be.matmul(&mut dwj, dj, Tr::T, &a.xn1, Tr::N, d, d, n, 0.0);
                add_into_slice(be, &mut grads[w.qkv_w], j * d * d, &dwj);
                be.fill(&mut dbj, 0.0);
                be.bias_backward(&mut dbj, dj, n, d);
                add_into_slice(be, &mut grads[w.qkv_b], j * d, &dbj);
                be.copy(&mut wj, 0, &p[w.qkv_w], j * d * d, d * d);
                be.matmul(
                    &mut dxn1,
                    dj,
                    Tr::N,
                    &wj,
                    Tr::N,
                    n,
                    d,
                    d,
                    if j == 0 { 0.0 } else { 1.0 },
                );
            }
            be.rmsnorm_backward(
                &mut dnorm,
                &mut grads[w.norm1],
                &dxn1,
                &acts.resid[b],
                &p[w.norm1],
                &a.rstd1,
                n,
                d,
            );
            be.copy(&mut dx, 0, &dx_mid, 0, n * d);
            be.add_assign(&mut dx, &dnorm);
        }

        // Window order back to patch order, then the patch embedding's weight.
        let mut demb = be.zeros(n * d);
        be.embedding(&mut demb, &dx, &plan.patch_inverse, d);
        be.matmul(
            &mut grads[lay.patch_embed],
            &demb,
            Tr::T,
            pixels,
            Tr::N,
            d,
            c.patch_dim(),
            n,
            1.0,
        );
    }
}
