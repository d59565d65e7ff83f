//! Numeric backends: the `Backend` trait (the whole op set the model needs), its CPU
//! reference (`cpu`), and, behind features, the CUDA backend.
//!
//! Conventions shared by every implementation:
//! - Buffers hold logical f32 values, row-major, and backends store f32, but for the GEMM
//!   operands `operand_buf` makes, which the CUDA backend in bf16 mode stores as bf16 values
//!   alone (only `matmul` reads them; `download` widens them).
//! - An op writes every element of its output (never relies on it being zeroed) unless its
//!   doc says it accumulates (`+=`). Tests poison outputs to hold every backend to this.
//! - Token ids, positions and row lists are host slices: they are tiny next to the
//!   activations. The CUDA backend uploads them per call, except read-only index arrays that
//!   repeat across calls (a decode step's positions, cache rows and attention work items are
//!   the same for every layer), which it uploads once (`cuda/upload_cache.rs`).

pub mod chunked_logprob;
pub mod cpu;
// The kernel backend; its GPU and emulator devices are behind the `cuda` and `emu` features.
pub mod cuda;
pub mod fused_ops;
pub mod memory;
pub mod precision;
pub mod profile;
// The RL step's batch ops (GRPO loss, advantages, VAS scores) on either backend.
pub mod rl_ops;
pub mod row_moves;
pub mod select;

// The argument types of the CPU loops, shared by every backend.
pub use mmr1_cpu_kernels::{AdamwStep, AttnShape, AttnSpan};

/// How `matmul` reads an operand: as stored (`N`) or transposed (`T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tr {
    N,
    T,
}

/// The op set of a Qwen2-family decoder, forward and backward, plus the optimizer step.
///
/// Model code is written once against this trait; it never knows which backend runs it.
pub trait Backend {
    type Buf;

    /// Short human name, e.g. "cpu" or "cuda:0 (NVIDIA H100)".
    fn name(&self) -> String;
    /// The counters of the backend's device memory manager (peak bytes, cache hits); None for
    /// a backend without one (the CPU, whose buffers are host `Vec`s).
    fn memory_stats(&self) -> Option<memory::MemoryStats> {
        None
    }
    /// Device time per kernel since the backend was created, largest first, when
    /// `MMR1_PROFILE=1` (see `profile`); empty otherwise and on the CPU.
    fn kernel_profile(&self) -> Vec<profile::KernelTime> {
        Vec::new()
    }

    /// Marks the start of a stretch of ops that repeats step after step under `tag` (a decode
    /// step of one shape: same ops, same buffers, new token ids and positions). A backend may
    /// replay such a stretch as one CUDA graph (`cuda::replay`); results are the same either
    /// way. Close it with `repeat_end`; stretches do not nest. A download inside one makes
    /// that tag run op by op from then on.
    fn repeat_begin(&self, tag: u64) {
        let _ = tag;
    }
    /// Ends the stretch `repeat_begin` started.
    fn repeat_end(&self) {}
    /// How often repeated stretches were replayed, None for a backend that does not replay.
    fn replay_stats(&self) -> Option<cuda::replay::ReplayStats> {
        None
    }

    // ---- memory -------------------------------------------------------------------------
    /// A buffer of `n` zeros.
    fn zeros(&self, n: usize) -> Self::Buf;
    /// A buffer of `n` values for an op that overwrites all of them (a GEMM with `beta = 0`, a
    /// gather): its contents are unspecified until then. The CPU gives zeros; the CUDA backend
    /// skips the fill launch `zeros` makes (at a decode step's logits, 39 MB written for
    /// nothing at 64 rows; the emulator hands out NaN there, so a reader of unwritten values
    /// fails the tests).
    fn output_buf(&self, n: usize) -> Self::Buf {
        self.zeros(n)
    }
    /// A buffer of `n` values that only `matmul` reads (as either operand) and that one op
    /// writes whole before each use (`rmsnorm`, `add_rmsnorm`'s `out`, `swiglu`, both outputs
    /// of `swiglu_backward`): a layer's RMSNorm outputs and SwiGLU activation, the backward's
    /// d gate and d up. A backend whose GEMMs round their operands to
    /// bf16 may store it as those bf16 values alone (the CUDA backend in bf16 mode: half the
    /// memory, and no f32 values written that nothing reads); any other op given it then
    /// panics, and `download` returns the bf16 values widened. Otherwise as `output_buf`.
    fn operand_buf(&self, n: usize) -> Self::Buf {
        self.output_buf(n)
    }
    /// A key or value buffer of a KV cache, `n` values, for a model of attention shape `shape`,
    /// zeroed. Written by `qkv_epilogue`'s cache rows and `scatter_rows`, read by `attention`
    /// and `download`, and by no other op. A backend whose attention rounds K and V to bf16
    /// before using them may store the roundings alone (the CUDA backend under flash
    /// attention: half the memory and half the bytes a decode step reads; the same values reach
    /// its tensor cores). Otherwise as `zeros`.
    fn kv_cache_buf(&self, n: usize, shape: AttnShape) -> Self::Buf {
        let _ = shape;
        self.zeros(n)
    }
    /// Bytes a value of `kv_cache_buf(_, shape)` takes: 4, or 2 where it stores bf16 (what a
    /// rollout's automatic slot count divides its memory budget by).
    fn kv_cache_value_bytes(&self, shape: AttnShape) -> usize {
        let _ = shape;
        4
    }
    fn upload(&self, host: &[f32]) -> Self::Buf;
    /// [`Backend::upload`] of a host vector the caller gives up: the CPU backend keeps it as
    /// the buffer (no copy; loading a model then holds its weights once, not twice).
    fn upload_vec(&self, host: Vec<f32>) -> Self::Buf {
        self.upload(&host)
    }
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// `dst[dst_off .. dst_off + n] = src[src_off .. src_off + n]`.
    fn copy(&self, dst: &mut Self::Buf, dst_off: usize, src: &Self::Buf, src_off: usize, n: usize);
    fn fill(&self, dst: &mut Self::Buf, value: f32);

    // ---- row moves: whole rows by index lists, one op each (a decode step's KV-cache writes
    // and lm_head gathers, whose rows are one per slot and never contiguous) --------------
    /// `dst[rows[t]*width .. +width] = src[t*width .. +width]` for every `t`: the packed rows
    /// of `src` scattered to rows of `dst`; other rows of `dst` are untouched. Rows must be
    /// distinct and inside `dst` (else a panic naming the row).
    fn scatter_rows(&self, dst: &mut Self::Buf, rows: &[usize], src: &Self::Buf, width: usize);
    /// `dst[t*width .. +width] = src[rows[t]*width .. +width]` for every `t`: rows of `src`
    /// gathered into packed rows of `dst` (a row may be listed more than once). Rows must be
    /// inside `src` (else a panic naming the row).
    fn gather_rows(&self, dst: &mut Self::Buf, src: &Self::Buf, rows: &[usize], width: usize);
    /// `buf[dst_rows[t]*width .. +width] = buf[src_rows[t]*width .. +width]` for every `t`:
    /// rows copied within one buffer, exactly (a KV cache's prompt rows shared by the
    /// responses of one prompt, `KvCache::share_prefixes`; any storage `kv_cache_buf` makes).
    /// Destination rows must be distinct and none a source row (else a panic naming the row).
    fn copy_rows_within(
        &self,
        buf: &mut Self::Buf,
        src_rows: &[usize],
        dst_rows: &[usize],
        width: usize,
    );
    /// `out = x + y` elementwise (all three of one length): a residual add in one op where a
    /// `copy` and an `add_assign` were two (same bits: one f32 addition per element).
    fn add_into(&self, out: &mut Self::Buf, x: &Self::Buf, y: &Self::Buf);

    // ---- dense algebra --------------------------------------------------------------------
    /// `out[m,n] = op_a(a)[m,k] @ op_b(b)[k,n] + beta * out`. With `beta == 0` the old
    /// contents of `out` are ignored (NaN included). `a` is stored `[m,k]` for `Tr::N` and
    /// `[k,m]` for `Tr::T`; `b` is stored `[k,n]` for `Tr::N` and `[n,k]` for `Tr::T`
    /// (a Hugging Face `Linear` weight `[out,in]` is used as `Tr::T`).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        out: &mut Self::Buf,
        a: &Self::Buf,
        ta: Tr,
        b: &Self::Buf,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    );
    /// The row-major matrices `parts` (`[n_j, k]` each, `Tr::T` weights) stacked row on row
    /// into one GEMM operand `[sum n_j, k]` for [`Backend::matmul_stacked`]: one GEMM where a
    /// layer ran one per matrix on the same input (q, k and v; gate and up), so a decode step
    /// launches fewer. A copy, of the values of the moment it is made (in the form the
    /// backend's GEMMs read: bf16 roundings in bf16 mode). None (the default) where the
    /// backend gains nothing: the CPU has no launches to save.
    fn stack_rows(&self, _parts: &[&Self::Buf]) -> Option<Self::Buf> {
        None
    }
    /// `out [m, sum n_j] = x [m, k] @ stack^T` for a `stack` of [`Backend::stack_rows`] whose
    /// parts have `ns` rows: columns `o_j .. o_j + n_j` of each row are what `matmul` with
    /// part j alone writes (the same bits on the emulator; on a GPU the library may pick
    /// another kernel for the wider product). Only backends whose `stack_rows` makes stacks.
    fn matmul_stacked(
        &self,
        _out: &mut Self::Buf,
        _x: &Self::Buf,
        _stack: &Self::Buf,
        _m: usize,
        _ns: &[usize],
        _k: usize,
    ) {
        unreachable!("matmul_stacked on a backend whose stack_rows makes no stacks")
    }
    /// `x[r, :] += bias` for every row of `x` `[rows, n]`.
    fn add_bias(&self, x: &mut Self::Buf, bias: &Self::Buf, rows: usize, n: usize);
    /// `dbias += sum over rows of dy[rows, n]` (accumulates).
    fn bias_backward(&self, dbias: &mut Self::Buf, dy: &Self::Buf, rows: usize, n: usize);
    /// `x += y` elementwise.
    fn add_assign(&self, x: &mut Self::Buf, y: &Self::Buf);
    /// `x *= s` elementwise.
    fn scale(&self, x: &mut Self::Buf, s: f32);
    /// Sum of squares, accumulated in f64 (gradient norms).
    fn sum_squares(&self, x: &Self::Buf) -> f64;

    // ---- decoder ops ----------------------------------------------------------------------
    /// `out[t, :] = table[ids[t], :]`, rows of width `dim`. Ids are checked by the caller.
    fn embedding(&self, out: &mut Self::Buf, table: &Self::Buf, ids: &[u32], dim: usize);
    /// `dtable[ids[t], :] += dout[t, :]` (accumulates).
    fn embedding_backward(&self, dtable: &mut Self::Buf, dout: &Self::Buf, ids: &[u32], dim: usize);

    /// RMSNorm as Qwen2 computes it: `out = x * rsqrt(mean(x^2) + eps) * w`, per row of
    /// width `dim`. Writes the per-row `rstd` for the backward pass.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    );
    /// Writes `dx` (overwrites) and accumulates `dw += ...`.
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        dim: usize,
    );

    /// Rotary embedding in place on `x[t, head, head_dim]` (`n_heads` heads per row), the
    /// "rotate half" layout of Hugging Face Llama/Qwen2: pair `(i, i + head_dim/2)` turns by
    /// `positions[t] as f32 * inv_freq[i]` (`head_dim / 2` frequencies: `cpu::rope_inv_freq`
    /// for plain RoPE, `RopeScaling::inv_freq` for a scaled one). `inverse` turns the other
    /// way, which is the backward pass (the rotation is orthogonal).
    fn rope(
        &self,
        x: &mut Self::Buf,
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        inv_freq: &[f32],
        inverse: bool,
    );

    /// Causal grouped-query attention over packed sequences (see `AttnSpan`), softmax scale
    /// `1/sqrt(head_dim)`. `q`/`out` are `[rows, n_heads, head_dim]`, `k`/`v` are
    /// `[rows, n_kv_heads, head_dim]`. Writes `lse[q_row * n_heads + h]`, the log-sum-exp of
    /// the scaled scores, for the backward pass. Rows of `out` not covered by a span are left
    /// untouched.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        spans: &[AttnSpan],
        shape: AttnShape,
    );
    /// Gradients of `attention`: overwrites `dq` rows covered by spans, and overwrites `dk`,
    /// `dv` rows covered by spans (full-sequence training: each kv row belongs to one span).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        spans: &[AttnSpan],
        shape: AttnShape,
    );

    /// `out = silu(gate) * up`, elementwise.
    fn swiglu(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf);
    /// `swiglu` of one stacked GEMM's output `gate_up` `[rows, 2 width]` (a row's gate
    /// columns, then its up columns; `matmul_stacked`) into `out` `[rows, width]`. The
    /// default copies the two halves out and runs `swiglu` (the reference a fused kernel
    /// matches bit for bit).
    fn swiglu_stacked(&self, out: &mut Self::Buf, gate_up: &Self::Buf, rows: usize, width: usize) {
        let n = rows * width;
        let (mut gate, mut up) = (self.output_buf(n), self.output_buf(n));
        for r in 0..rows {
            self.copy(&mut gate, r * width, gate_up, 2 * r * width, width);
            self.copy(&mut up, r * width, gate_up, (2 * r + 1) * width, width);
        }
        self.swiglu(out, &gate, &up);
    }
    /// Overwrites `dgate` and `dup`.
    fn swiglu_backward(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    );

    // ---- vision tower (Qwen2.5-VL) ------------------------------------------------------------
    /// `attention` without the causal mask: every query of a span sees all `kv_len` keys of
    /// its span (the vision tower's window and full attention). Same layouts and `lse`.
    #[allow(clippy::too_many_arguments)]
    fn attention_bidir(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        spans: &[AttnSpan],
        shape: AttnShape,
    );
    /// Gradients of `attention_bidir`, with `attention_backward`'s contract.
    #[allow(clippy::too_many_arguments)]
    fn attention_bidir_backward(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        spans: &[AttnSpan],
        shape: AttnShape,
    );
    /// Rotary embedding from a per-row angle table, in place on `x[rows, n_heads, head_dim]`:
    /// pair `(i, i + head_dim/2)` of every head of row `t` turns by `angles[t, i]`
    /// (`angles` is `[rows, head_dim/2]`, e.g. from `model::rope_tables`: the vision tower's
    /// 2D rope and M-RoPE). cos/sin are taken in f32 as transformers does. `inverse` turns
    /// the other way: the backward pass.
    fn rope_table(
        &self,
        x: &mut Self::Buf,
        angles: &Self::Buf,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        inverse: bool,
    );
    /// `out = gelu(x)`, the exact (erf) GELU of `torch.nn.GELU()`:
    /// `x / 2 * (1 + erf(x / sqrt 2))`.
    fn gelu(&self, out: &mut Self::Buf, x: &Self::Buf);
    /// Overwrites `dx = dout * gelu'(x)`.
    fn gelu_backward(&self, dx: &mut Self::Buf, dout: &Self::Buf, x: &Self::Buf);

    /// Per row of `logits[rows, vocab]`: `lp[r] = log_softmax(logits[r] * inv_temp)[targets[r]]`,
    /// and the entropy of that tempered distribution in `entropy[r]`.
    #[allow(clippy::too_many_arguments)]
    fn logprobs(
        &self,
        lp: &mut Self::Buf,
        entropy: &mut Self::Buf,
        logits: &Self::Buf,
        targets: &[u32],
        rows: usize,
        vocab: usize,
        inv_temp: f32,
    );
    /// Overwrites `dlogits[rows, vocab]` with d(loss)/d(logits) given `dlp[r]` =
    /// d(loss)/d(lp[r]) and `dent[r]` = d(loss)/d(entropy[r]).
    #[allow(clippy::too_many_arguments)]
    fn logprobs_backward(
        &self,
        dlogits: &mut Self::Buf,
        logits: &Self::Buf,
        targets: &[u32],
        dlp: &Self::Buf,
        dent: &Self::Buf,
        rows: usize,
        vocab: usize,
        inv_temp: f32,
    );
    /// `logprobs` and then `logprobs_backward` on the same logits, for a loss whose `dlp` and
    /// `dent` do not depend on `lp` and `entropy` (SFT's cross-entropy): the head's backward
    /// then yields the log-probs, and a training step runs the head's logits GEMM once, not
    /// twice (`train::micro_step`). The same values as the two ops. The CUDA backend makes it
    /// one launch (the backward's row statistics are the forward's).
    #[allow(clippy::too_many_arguments)]
    fn logprobs_and_backward(
        &self,
        dlogits: &mut Self::Buf,
        lp: &mut Self::Buf,
        entropy: &mut Self::Buf,
        logits: &Self::Buf,
        targets: &[u32],
        dlp: &Self::Buf,
        dent: &Self::Buf,
        rows: usize,
        vocab: usize,
        inv_temp: f32,
    ) {
        self.logprobs(lp, entropy, logits, targets, rows, vocab, inv_temp);
        self.logprobs_backward(dlogits, logits, targets, dlp, dent, rows, vocab, inv_temp);
    }

    // ---- a layer's back-to-back ops as one call (fused_ops) --------------------------------
    // The defaults are the ops one after another (the CPU keeps them); the CUDA backend makes
    // each one launch, with the same bits.

    /// The attention inputs from their projections: `q += bq`, `k += bk`, `v += bv` per row,
    /// q and k rotated as `rope` does (forward) and scaled by `rope.factor`, and, with
    /// `cache`, the new rows of k and v scattered into the caches as `scatter_rows` does.
    fn qkv_epilogue(
        &self,
        x: fused_ops::Qkv<'_, Self>,
        rope: &fused_ops::Rope1d<'_>,
        cache: Option<fused_ops::CacheRows<'_, Self>>,
    ) {
        fused_ops::qkv_epilogue_ops(self, x, rope, cache)
    }
    /// `sum = x + y`, then `rmsnorm(out, rstd, sum, w, ...)`: a residual add and the norm that
    /// reads it (the add's output is kept: the backward reads it).
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm(
        &self,
        sum: &mut Self::Buf,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        y: &Self::Buf,
        w: &Self::Buf,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        fused_ops::add_rmsnorm_ops(self, sum, out, rstd, x, y, w, rows, dim, eps)
    }
    /// RoPE's backward of a layer's query and key gradients, in place: each inverse-rotated
    /// as `rope(.., inverse = true)` does, then scaled by `rope.factor` (the default, the
    /// ops one after another). `dv` is not changed; a backend may prepare it, with dq and dk,
    /// for the GEMMs that read the three next (the CUDA backend writes their bf16 copies).
    fn qkv_backward_epilogue(
        &self,
        x: fused_ops::QkvGrads<'_, Self>,
        rope: &fused_ops::Rope1d<'_>,
    ) {
        fused_ops::qkv_backward_epilogue_ops(self, x, rope)
    }
    /// `rmsnorm_backward` with its `dx` added to `dacc` (the residual stream's gradient)
    /// instead of written: the same bits as `rmsnorm_backward(scratch, ...)` then
    /// `add_assign(dacc, scratch)`, which is the default (a backend that fuses leaves
    /// `scratch` unspecified; `dacc` and `scratch` hold `rows * dim` values).
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_backward_add(
        &self,
        dacc: &mut Self::Buf,
        scratch: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        rows: usize,
        dim: usize,
    ) {
        fused_ops::rmsnorm_backward_add_ops(self, dacc, scratch, dw, dout, x, w, rstd, rows, dim)
    }

    // ---- the optimizer side over every tensor at once (optfuse) --------------------------
    // One call for the whole parameter list where the optimizer used one per tensor; the
    // defaults are the per-tensor loops (the CPU keeps them), the CUDA backend makes them
    // one or two launches (`cuda::multi`).

    /// The sum over `xs` of `sum_squares`, added in order in f64: the same bits as
    /// `xs.iter().map(|x| self.sum_squares(x)).sum::<f64>()` (the global gradient norm).
    fn sum_squares_many(&self, xs: &[&Self::Buf]) -> f64 {
        xs.iter().map(|x| self.sum_squares(x)).sum()
    }
    /// `fill(b, value)` for every buffer of `bufs` (zeroing the gradients of a step).
    fn fill_many(&self, bufs: &mut [&mut Self::Buf], value: f32) {
        for b in bufs.iter_mut() {
            self.fill(b, value);
        }
    }
    /// `adamw(p[i], g[i], m[i], v[i], hp)` for every tensor i of a parameter list, one set of
    /// hyper-parameters for all (`optim::AdamW::step`): the same bits as the per-tensor calls.
    /// The four lists are parallel (same count; tensor i of each the same length).
    fn adamw_many(
        &self,
        p: &mut [Self::Buf],
        g: &[Self::Buf],
        m: &mut [Self::Buf],
        v: &mut [Self::Buf],
        hp: AdamwStep,
    ) {
        check_adamw_lists(p.len(), g.len(), m.len(), v.len());
        for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            self.adamw(p, g, m, v, hp);
        }
    }

    // ---- optimizer ------------------------------------------------------------------------
    /// One AdamW step (decoupled weight decay, bias correction) as `torch.optim.AdamW`:
    /// `p -= lr * wd * p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`. `grad_scale` multiplies `g`
    /// first (gradient clipping folded in).
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: AdamwStep,
    );
}

/// Panics unless `adamw_many`'s four lists have one entry per tensor each.
pub fn check_adamw_lists(p: usize, g: usize, m: usize, v: usize) {
    assert!(
        g == p && m == p && v == p,
        "adamw_many: {p} parameters, {g} gradients, {m} first and {v} second moments"
    );
}
