//! The manual backward pass of the packed forward (llm.c style: explicit gradient buffers,
//! one explicit backward per layer, no autograd tape). With activation recomputation the
//! layer's forward runs again, from its kept input, just before its backward.
//!
//! Input: d(loss)/d(log-prob of each packed row's target) and optionally d(loss)/d(entropy)
//! of each row's tempered distribution. Output: parameter gradients, ACCUMULATED (`+=`) into
//! buffers in layout order, so micro-batches of one optimizer step simply add up.
//!
//! The output projection is never materialized as `[tokens x vocab]`: logits are recomputed
//! chunk by chunk from `acts.xn_f` (`model::head`, through `backend::chunked_logprob`), and
//! only the rows the loss trains are visited (prompt rows of SFT cost nothing here). The
//! `*_buf` entry points take the upstream gradient in backend buffers (the training step's
//! path: it never visits the host); the slice ones upload it (tests, tools).

use super::forward::{Acts, LayerActs, LayerStore, Packed};
use super::grad_hook::GradHook;
use super::Qwen2;
use crate::backend::chunked_logprob::{Dlp, RowGrads, RowLogprobs};
use crate::backend::{Backend, Tr};
use anyhow::Result;

/// Gradient scratch for `t` tokens, planned once and reused across steps (like `Acts`).
pub struct GradScratch<B: Backend> {
    pub t: usize,
    /// d(loss)/d(residual stream) at the current depth.
    dresid: B::Buf,
    /// `[t, hidden]` work buffers: gradient of a norm output, and of a norm input.
    dxn: B::Buf,
    dnorm_in: B::Buf,
    datt: B::Buf,
    dq: B::Buf,
    dk: B::Buf,
    dv: B::Buf,
    /// GEMM operands alone (`Backend::operand_buf`): bf16 on a bf16 GPU.
    dgate: B::Buf,
    dup: B::Buf,
    dact: B::Buf,
}

impl<B: Backend> GradScratch<B> {
    /// d(loss)/d(input embeddings) `[t, hidden]` after `Qwen2::backward_to_embeddings`.
    pub fn dembed(&self) -> &B::Buf {
        &self.dresid
    }
    pub fn dembed_mut(&mut self) -> &mut B::Buf {
        &mut self.dresid
    }
}

/// Host gradients per packed row (`dlp`, optional `dent`) in backend buffers, with the rows
/// where either is non-zero: what the buffer backwards take (`RowGrads`).
pub(crate) struct UploadedGrads<B: Backend> {
    rows: Vec<usize>,
    dlp: B::Buf,
    dent: Option<B::Buf>,
}

impl<B: Backend> UploadedGrads<B> {
    pub(crate) fn new(be: &B, t: usize, dlp: &[f32], dent: Option<&[f32]>) -> Self {
        assert_eq!(dlp.len(), t, "backward: one dlp per packed row");
        if let Some(de) = dent {
            assert_eq!(de.len(), t, "backward: one dent per packed row");
        }
        let rows =
            (0..t).filter(|&r| dlp[r] != 0.0 || dent.is_some_and(|de| de[r] != 0.0)).collect();
        UploadedGrads { rows, dlp: be.upload(dlp), dent: dent.map(|de| be.upload(de)) }
    }

    pub(crate) fn row_grads(&self) -> RowGrads<'_, B> {
        RowGrads { dlp: Dlp::Given(&self.dlp), dent: self.dent.as_ref(), rows: &self.rows }
    }
}

impl<B: Backend> Qwen2<B> {
    /// One zeroed gradient buffer per parameter, in layout order.
    pub fn zero_grads(&self, be: &B) -> Vec<B::Buf> {
        self.layout.specs.iter().map(|s| be.zeros(s.numel())).collect()
    }

    /// Plans the backward scratch for `t` tokens.
    pub fn alloc_grad_scratch(&self, be: &B, t: usize) -> GradScratch<B> {
        let c = &self.cfg;
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let kvd = c.n_kv_heads() * c.head_dim();
        GradScratch {
            t,
            dresid: be.zeros(t * d),
            dxn: be.zeros(t * d),
            dnorm_in: be.zeros(t * d),
            datt: be.zeros(t * d),
            dq: be.zeros(t * d),
            dk: be.zeros(t * kvd),
            dv: be.zeros(t * kvd),
            // Read by the gate and up projections' GEMMs alone (`operand_buf`).
            dgate: be.operand_buf(t * i),
            dup: be.operand_buf(t * i),
            dact: be.zeros(t * i),
        }
    }

    /// Accumulates into `grads` (layout order) the gradient of a loss whose derivative with
    /// respect to each packed row's target log-prob is `dlp[row]` (0 on rows without a
    /// target) and, optionally, with respect to each row's entropy `dent[row]`. Log-probs and
    /// entropies are those of `softmax(logits * inv_temp)`, as `token_logprobs` computes.
    /// `acts` must hold the forward of `batch`. Allocates its scratch; training loops use
    /// `backward_with` to reuse it.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        be: &B,
        batch: &Packed,
        acts: &Acts<B>,
        targets: &[u32],
        dlp: &[f32],
        dent: Option<&[f32]>,
        inv_temp: f32,
        grads: &mut [B::Buf],
    ) {
        let mut scratch = None;
        self.backward_with(be, batch, acts, targets, dlp, dent, inv_temp, grads, &mut scratch);
    }

    /// `backward` with a reusable scratch: re-planned only when the token count changes.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with(
        &self,
        be: &B,
        batch: &Packed,
        acts: &Acts<B>,
        targets: &[u32],
        dlp: &[f32],
        dent: Option<&[f32]>,
        inv_temp: f32,
        grads: &mut [B::Buf],
        scratch: &mut Option<GradScratch<B>>,
    ) {
        self.backward_to_embeddings(be, batch, acts, targets, dlp, dent, inv_temp, grads, scratch);
        let s = scratch.as_ref().expect("planned by backward_to_embeddings");
        let d = self.cfg.hidden_size;
        self.ready_grads(be, &[self.layout.embed], grads);
        be.embedding_backward(&mut grads[self.layout.embed], &s.dresid, &batch.ids, d);
    }

    /// `backward_with` up to, not including, the embedding table: on return
    /// `scratch.dembed()` holds d(loss)/d(input embeddings) `[t, hidden]` (a vision-language
    /// model takes its image rows from there before the table's gradient).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_to_embeddings(
        &self,
        be: &B,
        batch: &Packed,
        acts: &Acts<B>,
        targets: &[u32],
        dlp: &[f32],
        dent: Option<&[f32]>,
        inv_temp: f32,
        grads: &mut [B::Buf],
        scratch: &mut Option<GradScratch<B>>,
    ) {
        let up = UploadedGrads::new(be, batch.tokens(), dlp, dent);
        let chunk = self.logit_chunk_rows();
        self.backward_to_embeddings_buf(
            be,
            batch,
            acts,
            targets,
            up.row_grads(),
            None,
            inv_temp,
            chunk,
            grads,
            scratch,
        );
    }

    /// [`Qwen2::backward_with`] with the upstream gradient in backend buffers (`g.rows`: the
    /// rows it may be non-zero on), the head run in chunks of `chunk` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_buf(
        &self,
        be: &B,
        batch: &Packed,
        acts: &Acts<B>,
        targets: &[u32],
        g: RowGrads<'_, B>,
        inv_temp: f32,
        chunk: usize,
        grads: &mut [B::Buf],
        scratch: &mut Option<GradScratch<B>>,
    ) {
        self.backward_hooked(
            be, batch, acts, targets, g, None, inv_temp, chunk, grads, scratch, None,
        )
        .expect("a backward without a hook has nothing that can fail");
    }

    /// [`Qwen2::backward_with_buf`] that reports each finished bucket of gradients to `hook`
    /// (`model::grad_hook`: each decoder layer as its backward ends, then the end bucket after
    /// the embedding backward); `None` is `backward_with_buf`. Gradients the hook released
    /// are allocated again, zeroed, when the backward next reaches their tensors. An error is
    /// the hook's. With `lp_out` the head's backward also writes the log-prob and entropy of
    /// each row of `g.rows` there, from its own logits (`head_backward_buf`), for a loss whose
    /// gradient did not need them.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_hooked(
        &self,
        be: &B,
        batch: &Packed,
        acts: &Acts<B>,
        targets: &[u32],
        g: RowGrads<'_, B>,
        lp_out: Option<RowLogprobs<'_, B>>,
        inv_temp: f32,
        chunk: usize,
        grads: &mut [B::Buf],
        scratch: &mut Option<GradScratch<B>>,
        mut hook: Option<&mut dyn GradHook<B>>,
    ) -> Result<()> {
        self.backward_layers(
            be, batch, acts, targets, g, lp_out, inv_temp, chunk, grads, scratch, &mut hook,
        )?;
        let s = scratch.as_ref().expect("planned by backward_layers");
        let d = self.cfg.hidden_size;
        let embed = self.layout.embed;
        self.ready_grads(be, &[embed], grads);
        be.embedding_backward(&mut grads[embed], &s.dresid, &batch.ids, d);
        if let Some(h) = hook {
            let end = self.layout.backward_buckets().pop().expect("the end bucket");
            h.finished(be, &end, grads)?;
        }
        Ok(())
    }

    /// [`Qwen2::backward_to_embeddings`] with the upstream gradient in backend buffers (and,
    /// with `lp_out`, the log-probs of `g.rows` from the head's backward: `backward_hooked`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_to_embeddings_buf(
        &self,
        be: &B,
        batch: &Packed,
        acts: &Acts<B>,
        targets: &[u32],
        g: RowGrads<'_, B>,
        lp_out: Option<RowLogprobs<'_, B>>,
        inv_temp: f32,
        chunk: usize,
        grads: &mut [B::Buf],
        scratch: &mut Option<GradScratch<B>>,
    ) {
        self.backward_layers(
            be, batch, acts, targets, g, lp_out, inv_temp, chunk, grads, scratch, &mut None,
        )
        .expect("a backward without a hook has nothing that can fail");
    }

    /// The backward down to the embeddings, reporting each finished decoder layer to `hook`.
    #[allow(clippy::too_many_arguments)]
    fn backward_layers(
        &self,
        be: &B,
        batch: &Packed,
        acts: &Acts<B>,
        targets: &[u32],
        g: RowGrads<'_, B>,
        lp_out: Option<RowLogprobs<'_, B>>,
        inv_temp: f32,
        chunk: usize,
        grads: &mut [B::Buf],
        scratch: &mut Option<GradScratch<B>>,
        hook: &mut Option<&mut dyn GradHook<B>>,
    ) -> Result<()> {
        let t = batch.tokens();
        assert_eq!(acts.t, t, "backward: activations are for {} tokens, the batch has {t}", acts.t);
        assert_eq!(targets.len(), t, "backward: one target per packed row");
        assert_eq!(grads.len(), self.params.len(), "backward: one gradient buffer per parameter");
        if scratch.as_ref().map(|s| s.t) != Some(t) {
            *scratch = Some(self.alloc_grad_scratch(be, t));
        }
        let s = scratch.as_mut().expect("planned above");
        let c = &self.cfg;
        let d = c.hidden_size;

        // Output projection: fills s.dxn with d(loss)/d(xn_f).
        let head = self.layout.head();
        self.ready_grads(be, &[head, self.layout.final_norm], grads);
        let (dxn, dhead) = (&mut s.dxn, &mut grads[head]);
        self.head_backward_buf(be, acts, targets, g, lp_out, inv_temp, chunk, dxn, dhead);

        // Final norm: xn_f = rmsnorm(resid[L]).
        let lf = &self.layout;
        be.rmsnorm_backward(
            &mut s.dresid,
            &mut grads[lf.final_norm],
            &s.dxn,
            &acts.resid[c.num_hidden_layers],
            &self.params[lf.final_norm],
            &acts.rstd_f,
            t,
            d,
        );
        if let (Some(h), Some(lm)) = (hook.as_deref_mut(), lf.lm_head) {
            // An untied head and the final norm are done: their bucket goes first.
            h.finished(be, &[lf.final_norm, lm], grads)?;
        }
        for l in (0..c.num_hidden_layers).rev() {
            let x_in = &acts.resid[l];
            let tensors = self.layout.layers[l].tensors();
            self.ready_grads(be, &tensors, grads);
            match &acts.layers {
                LayerStore::Kept(v) => self.layer_backward(be, l, batch, x_in, &v[l], grads, s),
                LayerStore::Recomputed(cell) => {
                    // Activation recomputation: the same layer forward on the same input
                    // (same kernels, same order: the same bits as a kept forward), then the
                    // same layer backward. `s.dxn` and `s.dnorm_in` are free until the
                    // layer backward writes them; the projection scratch is `s.dxn`.
                    let mut la = cell.borrow_mut();
                    self.layer_forward(be, l, x_in, false, None, &mut la, &mut s.dxn, batch, None);
                    self.layer_backward(be, l, batch, x_in, &la, grads, s);
                }
            }
            if let Some(h) = hook.as_deref_mut() {
                h.finished(be, &tensors, grads)?;
            }
        }
        Ok(())
    }

    /// One decoder layer in reverse. On entry `s.dresid` is d(loss)/d(x_out); on exit it is
    /// d(loss)/d(x_in). Forward (see `layer_forward`):
    /// `x_mid = x_in + o(attn(rope(q(n1)), rope(k(n1)), v(n1)))`, `n1 = rmsnorm(x_in)`;
    /// `x_out = x_mid + down(silu(gate(n2)) * up(n2))`, `n2 = rmsnorm(x_mid)`.
    /// `x_in` is the layer's input and `la` its activations (kept or recomputed).
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        be: &B,
        l: usize,
        batch: &Packed,
        x_in: &B::Buf,
        la: &LayerActs<B>,
        grads: &mut [B::Buf],
        s: &mut GradScratch<B>,
    ) {
        let c = &self.cfg;
        let t = batch.tokens();
        let (d, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let kvd = c.n_kv_heads() * hd;
        let w = &self.layout.layers[l];
        let p = &self.params;

        // ---- MLP: the residual passes dresid straight through to x_mid; the branch gets it too.
        // down: y = act @ Wd^T (Wd [d,i]):  dact = dy @ Wd ; dWd += dy^T @ act.
        be.matmul(&mut s.dact, &s.dresid, Tr::N, &p[w.down_w], Tr::N, t, i, d, 0.0);
        be.matmul(&mut grads[w.down_w], &s.dresid, Tr::T, &la.act, Tr::N, d, i, t, 1.0);
        be.swiglu_backward(&mut s.dgate, &mut s.dup, &s.dact, &la.gate, &la.up);
        // gate/up: dxn2 = dgate @ Wg + dup @ Wu ; dWg += dgate^T @ xn2 ; dWu += dup^T @ xn2.
        be.matmul(&mut s.dxn, &s.dgate, Tr::N, &p[w.gate_w], Tr::N, t, d, i, 0.0);
        be.matmul(&mut s.dxn, &s.dup, Tr::N, &p[w.up_w], Tr::N, t, d, i, 1.0);
        be.matmul(&mut grads[w.gate_w], &s.dgate, Tr::T, &la.xn2, Tr::N, i, d, t, 1.0);
        be.matmul(&mut grads[w.up_w], &s.dup, Tr::T, &la.xn2, Tr::N, i, d, t, 1.0);
        // dresid += the norm's input gradient: now d(loss)/d(x_mid).
        be.rmsnorm_backward_add(
            &mut s.dresid,
            &mut s.dnorm_in,
            &mut grads[w.post_norm],
            &s.dxn,
            &la.x_mid,
            &p[w.post_norm],
            &la.rstd2,
            t,
            d,
        );

        // ---- attention
        // o_proj: datt = dx_mid @ Wo ; dWo += dx_mid^T @ att.
        be.matmul(&mut s.datt, &s.dresid, Tr::N, &p[w.o_w], Tr::N, t, d, d, 0.0);
        be.matmul(&mut grads[w.o_w], &s.dresid, Tr::T, &la.att, Tr::N, d, d, t, 1.0);
        // la.q / la.k hold the rotated q, k (rope is applied in place), which is what the
        // attention saw; the gradients come back with respect to them.
        be.attention_backward(
            &mut s.dq,
            &mut s.dk,
            &mut s.dv,
            &s.datt,
            &la.q,
            &la.k,
            &la.v,
            &la.att,
            &la.lse,
            &batch.spans,
            self.attn_shape(),
        );
        // Rope is an orthogonal rotation: its backward is the inverse rotation.
        self.rotate_back(be, &mut s.dq, &mut s.dk, &s.dv, batch);
        be.bias_backward(&mut grads[w.q_b], &s.dq, t, d);
        be.bias_backward(&mut grads[w.k_b], &s.dk, t, kvd);
        be.bias_backward(&mut grads[w.v_b], &s.dv, t, kvd);
        // q/k/v: dxn1 = dq @ Wq + dk @ Wk + dv @ Wv ; dW* += d*^T @ xn1.
        be.matmul(&mut s.dxn, &s.dq, Tr::N, &p[w.q_w], Tr::N, t, d, d, 0.0);
        be.matmul(&mut s.dxn, &s.dk, Tr::N, &p[w.k_w], Tr::N, t, d, kvd, 1.0);
        be.matmul(&mut s.dxn, &s.dv, Tr::N, &p[w.v_w], Tr::N, t, d, kvd, 1.0);
        be.matmul(&mut grads[w.q_w], &s.dq, Tr::T, &la.xn1, Tr::N, d, d, t, 1.0);
        be.matmul(&mut grads[w.k_w], &s.dk, Tr::T, &la.xn1, Tr::N, kvd, d, t, 1.0);
        be.matmul(&mut grads[w.v_w], &s.dv, Tr::T, &la.xn1, Tr::N, kvd, d, t, 1.0);
        // dresid += the norm's input gradient: now d(loss)/d(x_in).
        be.rmsnorm_backward_add(
            &mut s.dresid,
            &mut s.dnorm_in,
            &mut grads[w.input_norm],
            &s.dxn,
            x_in,
            &p[w.input_norm],
            &la.rstd1,
            t,
            d,
        );
    }
}
