//! Incremental decoding with a KV cache. The cache holds `slots` sequences of up to `cap`
//! tokens each; slot `s` owns rows `s*cap .. (s+1)*cap` of every layer's key and value
//! buffers. A step feeds any number of new tokens to any set of slots (a prefill is a step
//! with the whole prompt) and gives the logits of each slot's last new token, in a backend
//! buffer for the sampler on the backend or downloaded for a reader on the host; the same
//! layer code as the full forward runs, so both give the same logits.

use super::forward::LayerStore;
use super::{Acts, Packed, Qwen2};
use crate::backend::{AttnSpan, Backend};
use anyhow::{bail, Result};

/// Bytes of stacked weights a cache may hold (`KvCache::stacks`): every layer's q/k/v and
/// gate/up weights once more, in bf16. Qwen2.5-0.5B needs 0.47 GB and 1.5B 1.7 GB; 3B (3.6
/// GB) and larger decode with a GEMM per matrix, where the products are large enough that a
/// launch less matters little and the memory more.
pub const STACK_BUDGET_BYTES: usize = 2 << 30;

/// A layer's weights stacked for the forwards against a cache (`Backend::stack_rows`): q, k
/// and v's as one GEMM operand, gate and up's as another.
pub(crate) struct LayerStack<B: Backend> {
    pub qkv: B::Buf,
    pub gate_up: B::Buf,
}

/// A step's outputs of the stacked GEMMs, `[t, q + 2 kv]` and `[t, 2 intermediate]`: planned
/// with `KvCache::scratch`, for as many tokens, and kept with it.
pub(crate) struct StackedOut<B: Backend> {
    pub qkv: B::Buf,
    pub gate_up: B::Buf,
}

/// A layer's part of a forward against a KV cache: its key and value buffers, the cache rows
/// the step's tokens go to, and its stacked weights with the step's buffers for their
/// products (None: a GEMM per matrix).
pub(crate) struct CacheLayer<'a, B: Backend> {
    pub k: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub rows: &'a [usize],
    pub stacked: Option<(&'a LayerStack<B>, &'a mut StackedOut<B>)>,
}

pub struct KvCache<B: Backend> {
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub cap: usize,
    /// Tokens held per slot.
    pub lens: Vec<usize>,
    /// The activation buffers of the last step, reused by the next step of as many tokens (a
    /// decode step then zeroes and allocates none of them: ~45 launches a step saved). Every op
    /// overwrites its output, so nothing carries over from one step to the next.
    scratch: Option<Acts<B>>,
    /// Every layer's weights stacked (empty where the backend makes no stacks or they pass
    /// [`STACK_BUDGET_BYTES`]): copies made with the cache, so a cache decodes with the
    /// weights it was made with, as its keys and values were computed with them.
    stacks: Vec<LayerStack<B>>,
    /// The stacked GEMMs' outputs of the last step (planned with `scratch`).
    stacked_out: Option<StackedOut<B>>,
}

impl<B: Backend> KvCache<B> {
    /// Layer `l`'s part of a step writing `rows` (see [`CacheLayer`]).
    pub(crate) fn layer<'a>(&'a mut self, l: usize, rows: &'a [usize]) -> CacheLayer<'a, B> {
        CacheLayer {
            k: &mut self.k[l],
            v: &mut self.v[l],
            rows,
            stacked: self.stacks.get(l).zip(self.stacked_out.as_mut()),
        }
    }

    pub fn reset(&mut self, slot: usize) {
        self.lens[slot] = 0;
    }

    /// For each `(src, dst, len)`, slot `dst` (empty) gets the first `len` tokens slot `src`
    /// holds: their key and value rows copied exactly, every layer (one op a buffer for all of
    /// them). The responses to one prompt share its prefill this way instead of computing it
    /// again: a prefill's rows depend on the prompt alone, so the copies are the bits a
    /// prefill of `dst` would write.
    pub fn share_prefixes(&mut self, be: &B, shares: &[(usize, usize, usize)]) -> Result<()> {
        let slots = self.lens.len();
        for &(src, dst, len) in shares {
            if src >= slots || dst >= slots || src == dst {
                bail!("KV cache share {src} -> {dst}: slots must differ and exist ({slots} slots)");
            }
            if self.lens[dst] != 0 {
                bail!("KV cache share {src} -> {dst}: slot {dst} is not empty");
            }
            if len > self.lens[src] {
                bail!(
                    "KV cache share {src} -> {dst}: {len} tokens, the source holds {}",
                    self.lens[src]
                );
            }
        }
        let (mut from, mut to) = (Vec::new(), Vec::new());
        for &(src, dst, len) in shares {
            from.extend((0..len).map(|p| src * self.cap + p));
            to.extend((0..len).map(|p| dst * self.cap + p));
        }
        if let Some(k0) = self.k.first() {
            let width = be.len(k0) / (slots * self.cap).max(1);
            for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
                be.copy_rows_within(buf, &from, &to, width);
            }
        }
        for &(_, dst, len) in shares {
            self.lens[dst] = len;
        }
        Ok(())
    }
}

impl<B: Backend> Qwen2<B> {
    pub fn new_cache(&self, be: &B, slots: usize, cap: usize) -> KvCache<B> {
        let kvd = self.cfg.n_kv_heads() * self.cfg.head_dim();
        let n = self.cfg.num_hidden_layers;
        KvCache {
            // bf16 values on a backend whose attention rounds K and V to bf16 anyway.
            k: (0..n).map(|_| be.kv_cache_buf(slots * cap * kvd, self.attn_shape())).collect(),
            v: (0..n).map(|_| be.kv_cache_buf(slots * cap * kvd, self.attn_shape())).collect(),
            cap,
            lens: vec![0; slots],
            scratch: None,
            stacks: self.stack_layers(be),
            stacked_out: None,
        }
    }

    /// Every layer's q/k/v and gate/up weights stacked (`Backend::stack_rows`), or none.
    fn stack_layers(&self, be: &B) -> Vec<LayerStack<B>> {
        let (d, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let kvd = self.cfg.n_kv_heads() * self.cfg.head_dim();
        let values = (d + 2 * kvd + 2 * i) * d * self.cfg.num_hidden_layers;
        if values.saturating_mul(2) > STACK_BUDGET_BYTES {
            return Vec::new();
        }
        let p = &self.params;
        let mut stacks = Vec::with_capacity(self.cfg.num_hidden_layers);
        for w in &self.layout.layers {
            let qkv = be.stack_rows(&[&p[w.q_w], &p[w.k_w], &p[w.v_w]]);
            let gate_up = be.stack_rows(&[&p[w.gate_w], &p[w.up_w]]);
            match qkv.zip(gate_up) {
                Some((qkv, gate_up)) => stacks.push(LayerStack { qkv, gate_up }),
                None => return Vec::new(),
            }
        }
        stacks
    }

    /// Appends `tokens` to each listed slot and returns the logits `[inputs.len(), vocab]`
    /// (host, row-major) of each slot's last new token. For tests and diagnostics that read the
    /// logits; decoding samples from [`Qwen2::decode_step_logits`] on the backend instead.
    pub fn decode_step(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        inputs: &[(usize, &[u32])],
    ) -> Result<Vec<f32>> {
        Ok(be.download(&self.decode_step_logits(be, cache, inputs)?))
    }

    /// [`Qwen2::decode_step`] with the logits left in a backend buffer `[inputs.len() x vocab]`:
    /// a sampler on the backend (`RlOps::rl_sample`) reads them there, and only the sampled
    /// ids and log-probs cross to the host.
    pub fn decode_step_logits(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        inputs: &[(usize, &[u32])],
    ) -> Result<B::Buf> {
        self.decode_step_with(be, cache, inputs, |_, _| Ok(()))
    }

    /// `decode_step` with a hook that runs once the batch is planned and its token embeddings
    /// are in place, before the layers: it may set the batch's rotary angles and overwrite
    /// embedding rows (a vision-language model's M-RoPE and image features).
    pub(crate) fn decode_step_with(
        &self,
        be: &B,
        cache: &mut KvCache<B>,
        inputs: &[(usize, &[u32])],
        hook: impl FnOnce(&mut Packed, &mut B::Buf) -> Result<()>,
    ) -> Result<B::Buf> {
        let mut batch = Packed::default();
        let mut rows = Vec::new();
        let mut last_rows = Vec::with_capacity(inputs.len());
        for &(slot, toks) in inputs {
            if slot >= cache.lens.len() {
                bail!("KV cache slot {slot} does not exist ({} slots)", cache.lens.len());
            }
            if toks.is_empty() {
                bail!("decode step for slot {slot} has no tokens");
            }
            let start = cache.lens[slot];
            let end = start + toks.len();
            if end > cache.cap {
                bail!(
                    "sequence in slot {slot} would reach {end} tokens; the KV cache holds {}",
                    cache.cap
                );
            }
            if end > self.cfg.max_position_embeddings {
                bail!(
                    "sequence would reach {end} tokens, past max_position_embeddings {}",
                    self.cfg.max_position_embeddings
                );
            }
            let q_start = batch.ids.len();
            batch.ids.extend_from_slice(toks);
            batch.positions.extend(start as u32..end as u32);
            batch.spans.push(AttnSpan {
                q_start,
                q_len: toks.len(),
                kv_start: slot * cache.cap,
                kv_len: end,
            });
            rows.extend((start..end).map(|p| slot * cache.cap + p));
            last_rows.push(batch.ids.len() - 1);
        }
        self.check_ids(&batch.ids)?;
        self.cfg.check_window(batch.spans.iter().map(|s| s.kv_len))?;
        // No backward follows: one layer's activation buffers serve every layer in turn,
        // planned once for as long as the steps keep their token count.
        let t = batch.tokens();
        let mut a = match cache.scratch.take() {
            Some(a) if a.t == t => a,
            old => {
                drop(old); // first, so that its memory can serve the new plan
                let mut a = self.alloc_acts_with(be, t, true);
                // A stacked step writes gate and up into `StackedOut::gate_up`: their own
                // buffers would be memory nothing touches (1.3 GB at a 32k-token prefill of
                // 0.5B).
                if let (false, LayerStore::Recomputed(la)) =
                    (cache.stacks.is_empty(), &mut a.layers)
                {
                    let la = la.get_mut();
                    (la.gate, la.up) = (be.output_buf(0), be.output_buf(0));
                    cache.stacked_out = None; // likewise
                    let kvd = self.cfg.n_kv_heads() * self.cfg.head_dim();
                    let (d, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
                    cache.stacked_out = Some(StackedOut {
                        qkv: be.output_buf(t * (d + 2 * kvd)),
                        gate_up: be.output_buf(t * 2 * i),
                    });
                }
                a
            }
        };
        let d = self.cfg.hidden_size;
        // From the embedding to the logits a step of this shape does the same ops on the same
        // buffers as the last one, with new ids, positions and rows: the backend may replay it
        // as one CUDA graph (`Backend::repeat_begin`).
        be.repeat_begin(step_tag(t, inputs.len(), cache.lens.len(), cache.cap));
        be.embedding(&mut a.resid[0], &self.params[self.layout.embed], &batch.ids, d);
        if let Err(e) = hook(&mut batch, &mut a.resid[0]) {
            be.repeat_end();
            return Err(e);
        }
        self.run_layers(be, &batch, &mut a, Some((&mut *cache, rows.as_slice())));
        let logits = self.logits_of_rows_buf(be, &a.xn_f, &last_rows);
        be.repeat_end();
        for &(slot, toks) in inputs {
            cache.lens[slot] += toks.len();
        }
        cache.scratch = Some(a);
        Ok(logits)
    }
}

/// The replay tag of a step: its token count, sequence count and the cache's geometry (steps
/// of another shape launch other grids, so they are kept apart).
fn step_tag(tokens: usize, seqs: usize, slots: usize, cap: usize) -> u64 {
    let words = [0x6465_636f_6465u64, tokens as u64, seqs as u64, slots as u64, cap as u64];
    words.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &w| (h ^ w).wrapping_mul(0x100_0000_01b3))
}
