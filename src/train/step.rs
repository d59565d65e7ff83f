//! The one micro-step path of SFT and GRPO: pack sequences into a micro-batch
//! ([`LossBatch`]), then forward, per-row log-probs, a [`TokenLoss`], backward, and
//! gradient accumulation ([`micro_step`]) in a reusable [`Workspace`]. GRPO's `logp_old` /
//! reference passes use the same forward ([`forward_logprobs`]), which is what makes its
//! first PPO epoch's ratio exactly 1.
//!
//! The head runs through the chunked log-prob path (`model::head`): the log-probs and their
//! gradient are backend buffers and no `[tokens x vocab]` buffer exists beyond one chunk of
//! `Workspace::logit_chunk` rows. A loss whose gradient is known before the log-probs (SFT's
//! cross-entropy), or follows from each row's own log-prob (GRPO's token-level losses), skips
//! the forward's head pass: the head's backward computes the log-probs from its own logits
//! (`Workspace::head_one_pass`).

use super::{LossGrad, TokenLoss};
use crate::backend::chunked_logprob::{Dlp, RowGrads, RowLogprobs};
use crate::backend::Backend;
use crate::model::{Acts, GradHook, GradScratch, Packed, Qwen2};
use anyhow::Result;
use std::ops::Range;

/// Reusable memory of micro-batch steps: activations and gradient scratch (re-planned only
/// when the token count changes) and the gradient accumulators of the optimizer step.
pub struct Workspace<B: Backend> {
    /// Activation recomputation (`--recompute`, `model.recompute`): the forward keeps only
    /// each layer's input and the backward re-runs each layer's forward first. Less memory
    /// (one layer's activations instead of all), one more forward of the layers per step,
    /// the same bits. Off by default.
    pub recompute: bool,
    pub acts: Option<Acts<B>>,
    pub scratch: Option<GradScratch<B>>,
    /// One buffer per parameter of the model the workspace was made for; `micro_step` adds to
    /// them, [`Workspace::zero_grads`] starts an optimizer step.
    pub grads: Vec<B::Buf>,
    /// The length of each gradient buffer: ZeRO-2 releases the buffers after each optimizer
    /// step (`dist::zero`) and [`Workspace::zero_grads`] allocates them again.
    grad_lens: Vec<usize>,
    /// Rows of the output head per chunk: its logits (and, in the backward, their gradient)
    /// take `logit_chunk x vocab` floats each. `Qwen2::logit_chunk_rows` by default; the
    /// result does not depend on it (the CPU GEMM is batch-invariant, `tests/suite/head_chunk.rs`).
    pub logit_chunk: usize,
    /// A loss whose gradient is known before the log-probs (SFT: `TokenLoss::constant_dlp`) or
    /// follows from each row's own log-prob (GRPO's token-level losses: `TokenLoss::rowwise`)
    /// gets them from the head's backward, on its trained rows only: no forward head pass (a
    /// logits GEMM per chunk of every row, and, for SFT, a read of those logits). On by
    /// default; `MMR1_HEAD_ONE_PASS=0` runs the forward's pass, to measure what this saves.
    pub head_one_pass: bool,
}

/// `MMR1_HEAD_ONE_PASS`: `1`/unset on, `0` off (see `Workspace::head_one_pass`); panics on
/// another value, naming it.
pub(crate) fn head_one_pass_from_env() -> bool {
    crate::backend::cuda::device::switch_from_env(
        "MMR1_HEAD_ONE_PASS",
        true,
        "a loss known before the log-probs gets them from the head's backward",
    )
}

impl<B: Backend> Workspace<B> {
    pub fn new(model: &Qwen2<B>, be: &B) -> Self {
        Self::with_grads(be, model.zero_grads(be), model.logit_chunk_rows())
    }

    /// [`Workspace::new`] with every gradient buffer released (ZeRO 2: the backward or
    /// [`Workspace::zero_grads`] allocates them when needed), so the whole f32 gradient is
    /// never allocated up front.
    pub fn without_grads(model: &Qwen2<B>, be: &B) -> Self {
        let released = model.params.iter().map(|_| be.zeros(0)).collect();
        let mut ws = Self::with_grads(be, released, model.logit_chunk_rows());
        ws.grad_lens = model.params.iter().map(|p| be.len(p)).collect();
        ws
    }

    /// A workspace around given gradient accumulators (a model whose trained parameters are
    /// not one `Qwen2`'s, e.g. a Qwen2.5-VL policy: decoder, then the tower unless frozen).
    pub fn with_grads(be: &B, grads: Vec<B::Buf>, logit_chunk: usize) -> Self {
        let grad_lens = grads.iter().map(|g| be.len(g)).collect();
        Workspace {
            recompute: false,
            acts: None,
            scratch: None,
            grads,
            grad_lens,
            logit_chunk,
            head_one_pass: head_one_pass_from_env(),
        }
    }

    /// The workspace with activation recomputation on or off (see `recompute`).
    pub fn with_recompute(mut self, on: bool) -> Self {
        self.recompute = on;
        self
    }

    /// Releases every gradient buffer (the start of an optimizer step whose gradients are
    /// reduce-scattered in buckets during the backward, `dist::buckets`): the backward
    /// allocates each one again, zeroed, when it reaches its tensor.
    pub fn release_grads(&mut self, be: &B) {
        for g in self.grads.iter_mut() {
            *g = be.zeros(0);
        }
    }

    /// Clears the gradient accumulators (the start of an optimizer step).
    /// Buffers still of their tensor's length are zeroed together (`Backend::fill_many`: one
    /// launch on the GPU); released ones (ZeRO 2) are allocated again, zeroed.
    pub fn zero_grads(&mut self, be: &B) {
        let mut kept = Vec::with_capacity(self.grads.len());
        for (g, &n) in self.grads.iter_mut().zip(&self.grad_lens) {
            if be.len(g) == n {
                kept.push(g);
            } else {
                *g = be.zeros(n);
            }
        }
        be.fill_many(&mut kept, 0.0);
    }
}

/// A packed micro-batch and the rows a loss trains.
pub struct LossBatch {
    pub batch: Packed,
    /// Packed rows whose next-token target is trained, in sequence order then position
    /// order (row `r` of a sequence predicts its token `r + 1`).
    pub rows: Vec<usize>,
}

impl LossBatch {
    /// Packs `seqs` padding-free; `trained(j, pos)` says whether token `pos` (>= 1) of
    /// sequence `j` is a trained target.
    pub fn pack<S: AsRef<[u32]>>(seqs: &[S], trained: impl Fn(usize, usize) -> bool) -> Self {
        let batch = Packed::new(seqs);
        let mut rows = Vec::new();
        for (j, sp) in batch.spans.iter().enumerate() {
            rows.extend(
                (1..sp.q_len).filter(|&pos| trained(j, pos)).map(|pos| sp.q_start + pos - 1),
            );
        }
        LossBatch { batch, rows }
    }

    /// `rows` as one flag per packed row.
    pub fn row_mask(&self) -> Vec<bool> {
        let mut m = vec![false; self.batch.tokens()];
        for &r in &self.rows {
            m[r] = true;
        }
        m
    }
}

/// Forward of a packed batch; returns the next-token targets and, per packed row, the target's
/// log-prob and the entropy of the distribution at `inv_temp` (rows without a target hold
/// junk). The activations stay in `ws` for a backward.
pub fn forward_logprobs<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    batch: &Packed,
    inv_temp: f32,
    ws: &mut Workspace<B>,
) -> Result<(Vec<u32>, Vec<f32>, Vec<f32>)> {
    forward_logprobs_of_rows(be, model, batch, None, inv_temp, ws)
}

/// [`forward_logprobs`] whose head computes the packed rows of `rows` only (ascending; `None`:
/// every row), the rows a loss will read (GRPO's response tokens: its old and reference
/// log-prob passes pay no logits for the prompts). The other rows hold junk. With the rows of
/// a [`micro_step`]'s loss, the head's GEMMs see the operands of that step's forward: the same
/// log-probs, bit for bit, on a device whose GEMM rows depend on the batch.
pub fn forward_logprobs_of_rows<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    batch: &Packed,
    rows: Option<&[usize]>,
    inv_temp: f32,
    ws: &mut Workspace<B>,
) -> Result<(Vec<u32>, Vec<f32>, Vec<f32>)> {
    let _r = crate::nvtx_ranges::range(c"forward");
    // No backward follows: one layer's buffers serve every layer (the recomputation plan),
    // unless the workspace already holds a plan for these tokens (a training step's, reused
    // rather than replaced). The same bits either way (tests/suite/recompute.rs); at Qwen2.5-0.5B
    // and 4,096 tokens the kept plan was 7.9 GB of the pass's 15.2 GiB peak (H100, 2026-11-27).
    let t = batch.tokens();
    let one_layer = ws.acts.as_ref().filter(|a| a.t == t).is_none_or(|a| a.recomputes());
    model.forward_with(be, batch, &mut ws.acts, one_layer)?;
    let acts = ws.acts.as_ref().expect("forward planned the activations");
    let (targets, _) = batch.next_token_targets();
    let chunk = ws.logit_chunk;
    let (lp, ent) = match rows {
        Some(rows) => model.token_logprobs_of_rows_buf(be, acts, &targets, rows, inv_temp, chunk),
        None => model.token_logprobs_buf(be, acts, &targets, inv_temp, chunk),
    };
    let t = batch.tokens();
    Ok((targets, be.download(&lp)[..t].to_vec(), be.download(&ent)[..t].to_vec()))
}

/// Forward, per-row log-probs, the loss, and backward of one packed micro-batch; gradients
/// are ACCUMULATED into `ws.grads`. Returns the loss contribution (see `LossGrad::loss`).
pub fn micro_step<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    batch: &Packed,
    loss: &mut dyn TokenLoss<B>,
    ws: &mut Workspace<B>,
) -> Result<f64> {
    micro_step_hooked(be, model, batch, loss, ws, None)
}

/// [`micro_step`] whose backward reports each finished bucket of gradients to `hook`
/// (`model::grad_hook`; ZeRO-2's bucketed reduce-scatter, `dist::buckets`); `None` is
/// `micro_step`.
pub fn micro_step_hooked<B: Backend>(
    be: &B,
    model: &Qwen2<B>,
    batch: &Packed,
    loss: &mut dyn TokenLoss<B>,
    ws: &mut Workspace<B>,
    hook: Option<&mut dyn GradHook<B>>,
) -> Result<f64> {
    // The backward scratch is planned before the forward, where it stays in the steady
    // state: planned after, it would take device blocks the forward's temporaries had freed,
    // and the next step would have to allocate those temporaries anew.
    if ws.scratch.as_ref().map(|s| s.t) != Some(batch.tokens()) {
        ws.scratch = Some(model.alloc_grad_scratch(be, batch.tokens()));
    }
    let inv_temp = loss.inv_temp();
    let forward = crate::nvtx_ranges::range(c"forward");
    model.forward_with(be, batch, &mut ws.acts, ws.recompute)?;
    drop(forward);
    let acts = ws.acts.as_ref().expect("forward planned the activations");
    let (targets, _) = batch.next_token_targets();
    let chunk = ws.logit_chunk;
    let (grads, scratch) = (&mut ws.grads, &mut ws.scratch);
    loss_and_backward(
        be,
        loss,
        batch.tokens(),
        ws.head_one_pass,
        |rows| model.token_logprobs_of_rows_buf(be, acts, &targets, rows, inv_temp, chunk),
        |g, out| {
            let t = &targets;
            model.backward_hooked(be, batch, acts, t, g, out, inv_temp, chunk, grads, scratch, hook)
        },
    )
}

/// A micro-step's loss and backward after its forward (the text model's and the VL model's):
/// `logprobs(rows)` gives the log-probs and entropies of the loss's rows (`TokenLoss::rows`;
/// buffers of `t` values), `backward` runs the model's backward from their gradient, its head
/// also writing the log-probs into the given outputs when asked. A loss whose gradient is known
/// before its log-probs (`TokenLoss::constant_dlp`) or comes from each row's own log-prob
/// (`TokenLoss::rowwise`: the backward asks it chunk by chunk), with `one_pass`
/// (`Workspace::head_one_pass`), skips `logprobs`: the head's backward computes them from the
/// logits it computes anyway, and the loss's value is evaluated after the backward.
pub(crate) fn loss_and_backward<B: Backend>(
    be: &B,
    loss: &mut dyn TokenLoss<B>,
    t: usize,
    one_pass: bool,
    logprobs: impl FnOnce(&[usize]) -> (B::Buf, B::Buf),
    backward: impl FnOnce(RowGrads<'_, B>, Option<RowLogprobs<'_, B>>) -> Result<()>,
) -> Result<f64> {
    let known = if one_pass { loss.constant_dlp(be) } else { None };
    let rowwise = one_pass && known.is_none() && loss.rowwise().is_some();
    let mut head_lp =
        (known.is_some() || rowwise).then(|| (be.zeros(t.max(1)), be.zeros(t.max(1))));
    let g = match known {
        // The value comes after the backward.
        Some(dlp) => Some(LossGrad { loss: f64::NAN, dlp, dent: None }),
        None if rowwise => None,
        None => {
            let forward = crate::nvtx_ranges::range(c"forward");
            let (lp, ent) = logprobs(loss.rows());
            drop(forward);
            let _r = crate::nvtx_ranges::range(c"loss");
            Some(loss.eval(be, &lp, &ent))
        }
    };
    let r = crate::nvtx_ranges::range(c"backward");
    let rg = match (&g, loss.rowwise()) {
        (Some(g), _) => {
            RowGrads { dlp: Dlp::Given(&g.dlp), dent: g.dent.as_ref(), rows: loss.rows() }
        }
        (None, Some(rule)) => {
            RowGrads { dlp: Dlp::FromLogprobs(rule), dent: None, rows: loss.rows() }
        }
        (None, None) => unreachable!("rowwise was checked"),
    };
    backward(rg, head_lp.as_mut().map(|(lp, entropy)| RowLogprobs { lp, entropy }))?;
    drop(r);
    let Some((lp, ent)) = head_lp else {
        return Ok(g.expect("evaluated before the backward").loss);
    };
    let _r = crate::nvtx_ranges::range(c"loss");
    let after = loss.eval(be, &lp, &ent);
    debug_assert!(rowwise || after.dent.is_none(), "a loss with constant_dlp has no entropy term");
    Ok(after.loss)
}

/// Contiguous runs of `range` whose lengths total at most `budget` tokens (a longer single
/// sequence gets a run of its own); sequences are never split. SFT packs examples with it,
/// GRPO the responses of a mini-batch.
pub fn pack_ranges(lens: &[usize], range: Range<usize>, budget: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut acc) = (range.start, 0);
    for r in range.clone() {
        if r > start && acc + lens[r] > budget {
            out.push(start..r);
            start = r;
            acc = 0;
        }
        acc += lens[r];
    }
    if start < range.end {
        out.push(start..range.end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{pack_ranges, LossBatch};
    use std::ops::Range;

    #[test]
    fn pack_ranges_respects_the_budget_and_never_splits() {
        let lens = [5, 5, 5, 20, 1, 1];
        assert_eq!(pack_ranges(&lens, 0..6, 10), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(pack_ranges(&lens, 2..5, 100), vec![2..5]);
        assert_eq!(pack_ranges(&lens, 3..3, 10), Vec::<Range<usize>>::new());
    }

    #[test]
    fn loss_batch_rows_are_the_rows_that_predict_trained_tokens() {
        let seqs = [vec![7u32, 8, 9, 10], vec![1, 2, 3]];
        // Sequence 0 trains tokens 2.., sequence 1 only token 1.
        let lb = LossBatch::pack(&seqs, |j, pos| if j == 0 { pos >= 2 } else { pos == 1 });
        assert_eq!(lb.rows, vec![1, 2, 4]);
        let (targets, _) = lb.batch.next_token_targets();
        let picked: Vec<u32> = lb.rows.iter().map(|&r| targets[r]).collect();
        assert_eq!(picked, vec![9, 10, 2]);
        assert_eq!(lb.row_mask(), vec![false, true, true, false, true, false, false]);
    }
}
