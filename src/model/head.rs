//! The output head of a training step, forward and backward, through the chunked log-prob
//! path of `backend::chunked_logprob`: per-row log-probs and entropies stay in backend
//! buffers, d(loss)/d(log-prob) arrives in a backend buffer, and no `[tokens x vocab]` buffer
//! exists beyond one chunk of rows (allocated for the call, so it is not held through the
//! rest of the forward or backward).

use super::forward::Acts;
use super::Qwen2;
use crate::backend::chunked_logprob::{
    chunked_logprobs_backward_rows, chunked_logprobs_rows, chunked_logprobs_with_backward_rows,
    HeadShape, RowGrads, RowLogprobs,
};
use crate::backend::Backend;

impl<B: Backend> Qwen2<B> {
    /// The head's shapes for `rows` rows, `chunk` rows per chunk (`logit_chunk_rows()` unless a
    /// caller bounds memory further).
    pub fn head_shape(&self, rows: usize, chunk: usize, inv_temp: f32) -> HeadShape {
        HeadShape {
            rows,
            dim: self.cfg.hidden_size,
            vocab: self.cfg.vocab_size,
            chunk: chunk.max(1),
            inv_temp,
        }
    }

    /// Per packed row of `acts`: the log-prob of `targets[row]` under
    /// `softmax(logits * inv_temp)` and that distribution's entropy, in backend buffers of
    /// `max(t, 1)` values (rows without a target hold junk).
    pub fn token_logprobs_buf(
        &self,
        be: &B,
        acts: &Acts<B>,
        targets: &[u32],
        inv_temp: f32,
        chunk: usize,
    ) -> (B::Buf, B::Buf) {
        let rows: Vec<usize> = (0..acts.t).collect();
        self.token_logprobs_of_rows_buf(be, acts, targets, &rows, inv_temp, chunk)
    }

    /// [`Qwen2::token_logprobs_buf`] on the packed rows of `rows` only (ascending): the other
    /// rows hold junk, and cost no logits. The same bits on those rows whatever the other rows
    /// (the rows are gathered as the head's backward gathers them); a GRPO update and its old
    /// log-prob pass ask for the same rows, so their GEMMs see the same operands.
    pub fn token_logprobs_of_rows_buf(
        &self,
        be: &B,
        acts: &Acts<B>,
        targets: &[u32],
        rows: &[usize],
        inv_temp: f32,
        chunk: usize,
    ) -> (B::Buf, B::Buf) {
        let t = acts.t;
        let (mut lp, mut ent) = (be.zeros(t.max(1)), be.zeros(t.max(1)));
        let s = self.head_shape(t, chunk, inv_temp);
        let head = &self.params[self.layout.head()];
        chunked_logprobs_rows(be, &mut lp, &mut ent, &acts.xn_f, head, targets, rows, s);
        (lp, ent)
    }

    /// Head backward: overwrites `dxn` (`[t, hidden]`, d loss / d final-norm output; 0 on rows
    /// outside `g.rows`) and accumulates the lm_head gradient into `dhead`. With `lp_out`, also
    /// the log-prob and entropy of each row of `g.rows` (what `token_logprobs_buf` gives
    /// there), from the same logits: one logits GEMM a chunk where a forward pass and this
    /// backward take two.
    #[allow(clippy::too_many_arguments)]
    pub fn head_backward_buf(
        &self,
        be: &B,
        acts: &Acts<B>,
        targets: &[u32],
        g: RowGrads<'_, B>,
        lp_out: Option<RowLogprobs<'_, B>>,
        inv_temp: f32,
        chunk: usize,
        dxn: &mut B::Buf,
        dhead: &mut B::Buf,
    ) {
        let s = self.head_shape(acts.t, chunk, inv_temp);
        let head = &self.params[self.layout.head()];
        let h = &acts.xn_f;
        match lp_out {
            Some(o) => {
                chunked_logprobs_with_backward_rows(be, o, dxn, dhead, h, head, targets, g, s)
            }
            None => chunked_logprobs_backward_rows(be, dxn, dhead, h, head, targets, g, s),
        }
    }
}
