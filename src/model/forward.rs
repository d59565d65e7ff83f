//! The full-sequence forward pass over a packed batch (sequences concatenated, no padding),
//! llm.c style: every activation the backward pass needs is kept in an `Acts` planned once
//! per token count and reused across steps, or, with activation recomputation, only each
//! layer's input (the backward re-runs the layer: `LayerStore::Recomputed`).

use super::kv_cache::CacheLayer;
use super::{KvCache, Qwen2};
use crate::backend::cpu::rope_inv_freq;
use crate::backend::fused_ops::{CacheRows, Qkv, QkvGrads, Rope1d};
use crate::backend::{AttnSpan, Backend, Tr};
use anyhow::Result;
use std::cell::RefCell;

/// Sequences packed back to back: ids, their positions (restarting at 0 per sequence), and
/// one attention span per sequence. A sequence's result never depends on its neighbours.
#[derive(Clone, Debug, Default)]
pub struct Packed {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub spans: Vec<AttnSpan>,
    /// Rotary angles per row `[tokens, head_dim/2]` when they are not `positions` times the
    /// inverse frequencies: Qwen2.5-VL's M-RoPE (`rope_tables::mrope_angles`). `None`: 1D RoPE.
    pub rope_angles: Option<Vec<f32>>,
}

impl Packed {
    pub fn new<S: AsRef<[u32]>>(seqs: &[S]) -> Self {
        let mut p = Packed::default();
        for s in seqs {
            let s = s.as_ref();
            let start = p.ids.len();
            p.ids.extend_from_slice(s);
            p.positions.extend(0..s.len() as u32);
            p.spans.push(AttnSpan {
                q_start: start,
                q_len: s.len(),
                kv_start: start,
                kv_len: s.len(),
            });
        }
        p
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Next-token targets per packed row; the last row of each sequence has none (target 0,
    /// `false` in the mask).
    pub fn next_token_targets(&self) -> (Vec<u32>, Vec<bool>) {
        let mut targets = vec![0u32; self.ids.len()];
        let mut has = vec![false; self.ids.len()];
        for sp in &self.spans {
            for i in 0..sp.q_len.saturating_sub(1) {
                targets[sp.q_start + i] = self.ids[sp.q_start + i + 1];
                has[sp.q_start + i] = true;
            }
        }
        (targets, has)
    }
}

/// One layer's saved activations. `x_in` of layer l is the residual stream entering it.
/// `xn1`, `xn2` and `act` are GEMM operands alone (`Backend::operand_buf`): only `matmul` may
/// read them, and on a bf16 GPU they hold bf16 values.
pub struct LayerActs<B: Backend> {
    pub rstd1: B::Buf,
    pub xn1: B::Buf,
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

/// Where a layer's forward writes the RMSNorm of its output, made by the op that writes the
/// output (`Backend::add_rmsnorm`: the residual add and the next norm in one launch).
pub(crate) enum NextNorm<'a, B: Backend> {
    /// The layer's own `xn1`/`rstd1`: one set of buffers serves every layer in turn
    /// (`LayerStore::Recomputed`, a decode step), and the next layer's input norm goes there.
    Own,
    /// The next layer's `xn1`/`rstd1` (every layer's activations kept).
    Layer(&'a mut LayerActs<B>),
    /// The final norm's output and `rstd` (after the last layer).
    Final(&'a mut B::Buf, &'a mut B::Buf),
}

/// Where the per-layer activations of a forward live.
pub enum LayerStore<B: Backend> {
    /// Every layer's activations, kept from the forward for the backward.
    Kept(Vec<LayerActs<B>>),
    /// Activation recomputation: one layer's buffers, which every layer's forward fills in
    /// turn and the backward refills for each layer (`Qwen2::backward_to_embeddings` re-runs
    /// the layer from its input `resid[l]`). The backward takes `&Acts`, so the buffers sit
    /// in a cell; only the forward and that recomputation ever borrow them.
    Recomputed(RefCell<LayerActs<B>>),
}

/// All activations of one forward pass over `t` tokens.
pub struct Acts<B: Backend> {
    pub t: usize,
    /// `resid[l]` enters layer l; `resid[n_layers]` leaves the last layer. Always kept: with
    /// recomputation these are the only per-layer activations that outlive the forward.
    pub resid: Vec<B::Buf>,
    pub layers: LayerStore<B>,
    pub rstd_f: B::Buf,
    /// The final normalized hidden states, input of the output projection.
    pub xn_f: B::Buf,
    /// Scratch `[t, hidden]` for projection outputs before the residual add.
    pub tmp: B::Buf,
}

impl<B: Backend> Acts<B> {
    /// Whether the backward re-runs each layer's forward (see [`LayerStore::Recomputed`]).
    pub fn recomputes(&self) -> bool {
        matches!(self.layers, LayerStore::Recomputed(_))
    }
}

impl<B: Backend> Qwen2<B> {
    /// Plans the activation memory for `t` tokens, every layer's activations kept.
    pub fn alloc_acts(&self, be: &B, t: usize) -> Acts<B> {
        self.alloc_acts_with(be, t, false)
    }

    /// Plans the activation memory for `t` tokens; with `recompute`, one layer's buffers
    /// instead of `num_hidden_layers` (the backward recomputes each layer from its input).
    pub fn alloc_acts_with(&self, be: &B, t: usize, recompute: bool) -> Acts<B> {
        let c = &self.cfg;
        let d = c.hidden_size;
        let layers = if recompute {
            LayerStore::Recomputed(RefCell::new(self.alloc_layer_acts(be, t)))
        } else {
            LayerStore::Kept(
                (0..c.num_hidden_layers).map(|_| self.alloc_layer_acts(be, t)).collect(),
            )
        };
        Acts {
            t,
            resid: (0..=c.num_hidden_layers).map(|_| be.zeros(t * d)).collect(),
            layers,
            rstd_f: be.zeros(t),
            xn_f: be.zeros(t * d),
            tmp: be.zeros(t * d),
        }
    }

    /// One decoder layer's activation buffers for `t` tokens (what recomputation saves per
    /// layer it does not keep).
    pub fn alloc_layer_acts(&self, be: &B, t: usize) -> LayerActs<B> {
        let c = &self.cfg;
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let kvd = c.n_kv_heads() * c.head_dim();
        let h = c.num_attention_heads;
        // xn1, xn2 and act are read by the projections' GEMMs alone, forward and backward:
        // `operand_buf` (bf16 alone where GEMMs read bf16).
        LayerActs {
            rstd1: be.zeros(t),
            xn1: be.operand_buf(t * d),
            q: be.zeros(t * d),
            k: be.zeros(t * kvd),
            v: be.zeros(t * kvd),
            att: be.zeros(t * d),
            lse: be.zeros(t * h),
            x_mid: be.zeros(t * d),
            rstd2: be.zeros(t),
            xn2: be.operand_buf(t * d),
            gate: be.zeros(t * i),
            up: be.zeros(t * i),
            act: be.operand_buf(t * i),
        }
    }

    /// Full forward of a packed batch, every layer's activations kept. Reuses `acts` when it
    /// was planned for this many tokens the same way.
    pub fn forward(&self, be: &B, batch: &Packed, acts: &mut Option<Acts<B>>) -> Result<()> {
        self.forward_with(be, batch, acts, false)
    }

    /// [`Qwen2::forward`]; with `recompute`, only each layer's input is kept (plus the final
    /// norm's output for the head) and the backward re-runs each layer's forward. The
    /// results, and the gradients of the backward, are the same bits either way.
    pub fn forward_with(
        &self,
        be: &B,
        batch: &Packed,
        acts: &mut Option<Acts<B>>,
        recompute: bool,
    ) -> Result<()> {
        self.check_ids(&batch.ids)?;
        self.cfg.check_window(batch.spans.iter().map(|s| s.kv_len))?;
        let t = batch.tokens();
        if acts.as_ref().map(|a| (a.t, a.recomputes())) != Some((t, recompute)) {
            // Drop the old plan first, so that its memory can serve the new one.
            *acts = None;
            *acts = Some(self.alloc_acts_with(be, t, recompute));
        }
        self.run(be, batch, acts.as_mut().expect("planned above"), None);
        Ok(())
    }

    /// Embedding, every layer, final norm: the body of `forward`.
    pub(crate) fn run(
        &self,
        be: &B,
        batch: &Packed,
        a: &mut Acts<B>,
        cache: Option<(&mut KvCache<B>, &[usize])>,
    ) {
        let d = self.cfg.hidden_size;
        be.embedding(&mut a.resid[0], &self.params[self.layout.embed], &batch.ids, d);
        self.run_layers(be, batch, a, cache);
    }

    /// Every layer and the final norm on the embeddings already in `a.resid[0]` (a
    /// vision-language model puts image features there first).
    pub(crate) fn run_layers(
        &self,
        be: &B,
        batch: &Packed,
        a: &mut Acts<B>,
        mut cache: Option<(&mut KvCache<B>, &[usize])>,
    ) {
        let (t, d) = (batch.tokens(), self.cfg.hidden_size);
        let eps = self.cfg.rms_norm_eps as f32;
        let n = self.cfg.num_hidden_layers;
        if n == 0 {
            let w = &self.params[self.layout.final_norm];
            return be.rmsnorm(&mut a.xn_f, &mut a.rstd_f, &a.resid[0], w, t, d, eps);
        }
        // The first layer's input norm; every later norm (the final one too) is made by the
        // residual add before it (`NextNorm`).
        let la0 = match &mut a.layers {
            LayerStore::Kept(v) => &mut v[0],
            LayerStore::Recomputed(cell) => cell.get_mut(),
        };
        let w0 = &self.params[self.layout.layers[0].input_norm];
        be.rmsnorm(&mut la0.xn1, &mut la0.rstd1, &a.resid[0], w0, t, d, eps);
        for l in 0..n {
            let (before, after) = a.resid.split_at_mut(l + 1);
            let kv = cache.as_mut().map(|(c, rows)| c.layer(l, rows));
            let last = l + 1 == n;
            let (la, next) = match &mut a.layers {
                LayerStore::Kept(v) => {
                    let (la, rest) = v[l..].split_first_mut().expect("a layer's activations");
                    let next = match rest.first_mut() {
                        Some(nx) => NextNorm::Layer(nx),
                        None => NextNorm::Final(&mut a.xn_f, &mut a.rstd_f),
                    };
                    (la, next)
                }
                LayerStore::Recomputed(cell) => {
                    let next = if last {
                        NextNorm::Final(&mut a.xn_f, &mut a.rstd_f)
                    } else {
                        NextNorm::Own
                    };
                    (cell.get_mut(), next)
                }
            };
            let out = Some((&mut after[0], next));
            self.layer_forward(be, l, &before[l], true, out, la, &mut a.tmp, batch, kv);
        }
    }

    /// The batch's 1D RoPE: the config's inverse frequencies (scaled ones included) and
    /// transformers' attention factor of scaled RoPE (1 for plain RoPE). Unused where the
    /// batch carries its own angle table (M-RoPE).
    fn rope_1d(&self) -> (Vec<f32>, f32) {
        let hd = self.cfg.head_dim();
        match self.cfg.rope_scaling().expect("rope settings checked at load") {
            None => (rope_inv_freq(hd, self.cfg.rope_theta() as f32), 1.0),
            Some(sc) => (sc.inv_freq, sc.attention_factor),
        }
    }

    /// Rotary embedding of `x` `[tokens, n_heads, head_dim]` for the batch's rows: 1D RoPE of
    /// `batch.positions` at the config's frequencies (scaled ones included), or the batch's
    /// own angle table (M-RoPE). `inverse` for the backward.
    pub(crate) fn rotate(
        &self,
        be: &B,
        x: &mut B::Buf,
        batch: &Packed,
        n_heads: usize,
        inverse: bool,
    ) {
        let hd = self.cfg.head_dim();
        match &batch.rope_angles {
            None => {
                let (inv, factor) = self.rope_1d();
                be.rope(x, &batch.positions, n_heads, hd, &inv, inverse);
                // Scaled RoPE: transformers' factor on cos and sin (a scalar, so it commutes
                // with the rotation and the backward applies it the same way).
                if factor != 1.0 {
                    be.scale(x, factor);
                }
            }
            Some(angles) => {
                assert_eq!(
                    angles.len(),
                    batch.tokens() * (hd / 2),
                    "rope_angles: [tokens, head_dim/2]"
                );
                be.rope_table(x, &be.upload(angles), batch.tokens(), n_heads, hd, inverse)
            }
        }
    }

    /// RoPE's backward of a layer's query and key gradients (`rotate` with `inverse` of each),
    /// for 1D RoPE as one `Backend::qkv_backward_epilogue`, which may also prepare `dv` for
    /// the GEMMs that read the three next.
    pub(crate) fn rotate_back(
        &self,
        be: &B,
        dq: &mut B::Buf,
        dk: &mut B::Buf,
        dv: &B::Buf,
        batch: &Packed,
    ) {
        let (n_heads, n_kv_heads) = (self.cfg.num_attention_heads, self.cfg.n_kv_heads());
        if batch.rope_angles.is_some() {
            self.rotate(be, dq, batch, n_heads, true);
            return self.rotate(be, dk, batch, n_kv_heads, true);
        }
        let (inv_freq, factor) = self.rope_1d();
        let grads = QkvGrads { dq, dk, dv, n_heads, n_kv_heads, head_dim: self.cfg.head_dim() };
        be.qkv_backward_epilogue(
            grads,
            &Rope1d { positions: &batch.positions, inv_freq: &inv_freq, factor },
        );
    }

    /// One decoder layer: `x_out = x_in + attn(norm(x_in)); x_out += mlp(norm(.))`.
    /// `normed_in`: `la.xn1`/`la.rstd1` already hold the input norm (made by the op before:
    /// `run_layers`); else the layer computes it.
    /// With `cache`, the new keys/values are written to the cache rows given and attention
    /// reads the cache (the spans then address cache rows); without, it reads `la.k`/`la.v`.
    /// With `x_out`, the op that writes it also writes the norm that reads it next (see
    /// [`NextNorm`]). Without (the backward's recomputation, which needs only `la`), the layer
    /// stops after the MLP activation: the down projection and the residual add are skipped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn layer_forward(
        &self,
        be: &B,
        l: usize,
        x_in: &B::Buf,
        normed_in: bool,
        x_out: Option<(&mut B::Buf, NextNorm<'_, B>)>,
        la: &mut LayerActs<B>,
        tmp: &mut B::Buf,
        batch: &Packed,
        mut cache: Option<CacheLayer<'_, B>>,
    ) {
        let c = &self.cfg;
        let t = batch.tokens();
        let (d, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let kvd = c.n_kv_heads() * hd;
        let eps = c.rms_norm_eps as f32;
        let w = &self.layout.layers[l];
        let p = &self.params;

        if !normed_in {
            be.rmsnorm(&mut la.xn1, &mut la.rstd1, x_in, &p[w.input_norm], t, d, eps);
        }
        // Against a cache that holds the layer's weights stacked, q, k and v come from one
        // GEMM (1D RoPE: the epilogue reads its output) and gate and up from another.
        let (stack, mut stacked) = cache.as_mut().and_then(|c| c.stacked.take()).unzip();
        let qkv_stacked = match (stack, stacked.as_deref_mut(), &batch.rope_angles) {
            (Some(st), Some(out), None) => {
                be.matmul_stacked(&mut out.qkv, &la.xn1, &st.qkv, t, &[d, kvd, kvd], d);
                true
            }
            _ => {
                be.matmul(&mut la.q, &la.xn1, Tr::N, &p[w.q_w], Tr::T, t, d, d, 0.0);
                be.matmul(&mut la.k, &la.xn1, Tr::N, &p[w.k_w], Tr::T, t, kvd, d, 0.0);
                be.matmul(&mut la.v, &la.xn1, Tr::N, &p[w.v_w], Tr::T, t, kvd, d, 0.0);
                false
            }
        };
        let (nh, nkv) = (c.num_attention_heads, c.n_kv_heads());
        match &batch.rope_angles {
            // Biases, RoPE and the cache writes in one op where the backend fuses them.
            None => {
                let (inv_freq, factor) = self.rope_1d();
                let qkv = Qkv {
                    q: &mut la.q,
                    k: &mut la.k,
                    v: &mut la.v,
                    bq: &p[w.q_b],
                    bk: &p[w.k_b],
                    bv: &p[w.v_b],
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    stacked: stacked.as_deref().filter(|_| qkv_stacked).map(|o| &o.qkv),
                };
                let rope = Rope1d { positions: &batch.positions, inv_freq: &inv_freq, factor };
                let rows =
                    cache.as_mut().map(|c| CacheRows { k: &mut *c.k, v: &mut *c.v, rows: c.rows });
                be.qkv_epilogue(qkv, &rope, rows);
            }
            // An angle table per row (M-RoPE): op by op.
            Some(_) => {
                be.add_bias(&mut la.q, &p[w.q_b], t, d);
                be.add_bias(&mut la.k, &p[w.k_b], t, kvd);
                be.add_bias(&mut la.v, &p[w.v_b], t, kvd);
                self.rotate(be, &mut la.q, batch, nh, false);
                self.rotate(be, &mut la.k, batch, nkv, false);
                if let Some(c) = cache.as_mut() {
                    // One op per buffer whatever the rows: a decode step's rows are one per
                    // slot, never contiguous across slots (a copy per run cost 2 x slots
                    // launches a layer).
                    be.scatter_rows(c.k, c.rows, &la.k, kvd);
                    be.scatter_rows(c.v, c.rows, &la.v, kvd);
                }
            }
        }
        match cache {
            None => be.attention(
                &mut la.att,
                &mut la.lse,
                &la.q,
                &la.k,
                &la.v,
                &batch.spans,
                self.attn_shape(),
            ),
            Some(c) => be.attention(
                &mut la.att,
                &mut la.lse,
                &la.q,
                c.k,
                c.v,
                &batch.spans,
                self.attn_shape(),
            ),
        }
        be.matmul(tmp, &la.att, Tr::N, &p[w.o_w], Tr::T, t, d, d, 0.0);
        be.add_rmsnorm(
            &mut la.x_mid,
            &mut la.xn2,
            &mut la.rstd2,
            x_in,
            tmp,
            &p[w.post_norm],
            t,
            d,
            eps,
        );
        match (stack, stacked) {
            (Some(st), Some(out)) => {
                be.matmul_stacked(&mut out.gate_up, &la.xn2, &st.gate_up, t, &[i, i], d);
                be.swiglu_stacked(&mut la.act, &out.gate_up, t, i);
            }
            _ => {
                be.matmul(&mut la.gate, &la.xn2, Tr::N, &p[w.gate_w], Tr::T, t, i, d, 0.0);
                be.matmul(&mut la.up, &la.xn2, Tr::N, &p[w.up_w], Tr::T, t, i, d, 0.0);
                be.swiglu(&mut la.act, &la.gate, &la.up);
            }
        }
        let Some((x_out, next)) = x_out else { return };
        be.matmul(tmp, &la.act, Tr::N, &p[w.down_w], Tr::T, t, d, i, 0.0);
        let next_input = || &p[self.layout.layers[l + 1].input_norm];
        let (xn, rstd, next_w) = match next {
            NextNorm::Own => (&mut la.xn1, &mut la.rstd1, next_input()),
            NextNorm::Layer(nx) => (&mut nx.xn1, &mut nx.rstd1, next_input()),
            NextNorm::Final(xn, rstd) => (xn, rstd, &p[self.layout.final_norm]),
        };
        be.add_rmsnorm(x_out, xn, rstd, &la.x_mid, tmp, next_w, t, d, eps);
    }

    /// Rows of the logit matrix per chunk, so that a chunk holds at most 256M floats (1 GiB)
    /// whatever the vocabulary: `[tokens x vocab]` is never materialized whole at long
    /// batches. Not smaller: every chunk's lm_head weight gradient is a GEMM that reads and
    /// writes the whole `[vocab x hidden]` gradient, so small chunks make the head memory-bound
    /// (measured on an H100 at Qwen2.5-0.5B, 4,096 tokens: 16M-float chunks of 110 rows cost
    /// 37 such GEMMs, 20.7 ms of a 120 ms step; docs/perf.md).
    pub fn logit_chunk_rows(&self) -> usize {
        (268_435_456 / self.cfg.vocab_size).max(1)
    }

    /// Logits `[rows.len(), vocab]` (host) of the given rows of `hidden` `[t, hidden_size]`.
    pub fn logits_of_rows(&self, be: &B, hidden: &B::Buf, rows: &[usize]) -> Vec<f32> {
        be.download(&self.logits_of_rows_buf(be, hidden, rows))
    }

    /// [`Qwen2::logits_of_rows`] left in a backend buffer (what the decoder samples from on the
    /// device, so that only the sampled ids come back to the host).
    pub fn logits_of_rows_buf(&self, be: &B, hidden: &B::Buf, rows: &[usize]) -> B::Buf {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let mut h = be.output_buf(rows.len() * d);
        be.gather_rows(&mut h, hidden, rows, d);
        let mut logits = be.output_buf(rows.len() * v);
        be.matmul(
            &mut logits,
            &h,
            Tr::N,
            &self.params[self.layout.head()],
            Tr::T,
            rows.len(),
            v,
            d,
            0.0,
        );
        logits
    }

    /// Per packed row: log-prob of `targets[row]` under `softmax(logits * inv_temp)`, and the
    /// entropy of that distribution, on the host. Computed chunk by chunk over rows
    /// ([`Qwen2::token_logprobs_buf`], which a training step uses to keep them on the device).
    pub fn token_logprobs(
        &self,
        be: &B,
        acts: &Acts<B>,
        targets: &[u32],
        inv_temp: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let t = acts.t;
        let (lp, ent) =
            self.token_logprobs_buf(be, acts, targets, inv_temp, self.logit_chunk_rows());
        (be.download(&lp)[..t].to_vec(), be.download(&ent)[..t].to_vec())
    }
}
