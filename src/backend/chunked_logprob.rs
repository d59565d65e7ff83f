//! Per-token log-probs and entropies from the final hidden states and the lm_head weight,
//! chunked over tokens, forward and backward, written against [`Backend`] ops so it runs on
//! every backend and the results stay in backend buffers.
//!
//! ```text
//! z_t  = inv_temp * (h_t . W^T)         logits of token t (W: [vocab, dim], HF lm_head layout)
//! lp_t = z_t[target_t] - logsumexp(z_t),   H_t = entropy of softmax(z_t)
//! ```
//!
//! No [tokens x vocab] buffer exists beyond one chunk: the forward keeps `chunk x vocab` logits,
//! the backward recomputes them per chunk (as llm.c's fused classifier does) and keeps `chunk x
//! vocab` logits and their gradient, giving d hidden (overwritten) and d lm_head (accumulated)
//! directly. Peak extra memory: `chunk * (2 vocab + 2 dim + 4)` floats (the gradient is an
//! operand buffer: bf16 alone where the GEMMs round to bf16, `Backend::operand_buf`).
//!
//! A loss whose gradient does not depend on the log-probs (SFT's cross-entropy: `-weight` a
//! row) needs no forward pass here at all: [`chunked_logprobs_with_backward_rows`] writes the
//! log-probs and entropies of the rows it visits from the backward's own logits, so a training
//! step computes each chunk's logits once instead of twice. Nor does a loss whose gradient at a
//! row depends on that row's log-prob and entropy alone (GRPO's token-level losses,
//! [`Dlp::FromLogprobs`]): the backward computes a chunk's log-probs from its logits, asks the
//! loss for their gradient, and goes on.

use super::{Backend, Tr};

/// Shapes of one call.
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    pub rows: usize,
    pub dim: usize,
    pub vocab: usize,
    /// Rows per chunk (>= 1).
    pub chunk: usize,
    /// Softmax temperature's inverse (GRPO divides logits by the rollout temperature).
    pub inv_temp: f32,
}

impl HeadShape {
    fn check<B: Backend>(&self, be: &B, hidden: &B::Buf, head: &B::Buf, targets: &[u32]) {
        assert!(self.chunk >= 1, "chunk must be >= 1");
        assert!(be.len(hidden) >= self.rows * self.dim, "hidden: fewer than rows x dim values");
        assert_eq!(be.len(head), self.vocab * self.dim, "head: vocab x dim values");
        assert!(targets.len() >= self.rows, "targets: one per row");
        assert!(
            targets[..self.rows].iter().all(|&t| (t as usize) < self.vocab),
            "targets: an id >= vocab ({})",
            self.vocab
        );
    }
}

/// `lp[t]`, `entropy[t]` for every row `t` (both overwritten, `rows` values each).
pub fn chunked_logprobs<B: Backend>(
    be: &B,
    lp: &mut B::Buf,
    entropy: &mut B::Buf,
    hidden: &B::Buf,
    head: &B::Buf,
    targets: &[u32],
    s: HeadShape,
) {
    let rows: Vec<usize> = (0..s.rows).collect();
    chunked_logprobs_rows(be, lp, entropy, hidden, head, targets, &rows, s);
}

/// [`chunked_logprobs`] of the rows of `rows` only (ascending, no repeats), in chunks of
/// `s.chunk` of those rows, gathered as the backward gathers them: `lp[r]`, `entropy[r]` for
/// each `r` in `rows`, other values left as they were. A loss that reads a response's rows
/// (GRPO) pays no logits for its prompt's. Every row, one run: the same launches as a chunk
/// loop over the rows in order.
#[allow(clippy::too_many_arguments)]
pub fn chunked_logprobs_rows<B: Backend>(
    be: &B,
    lp: &mut B::Buf,
    entropy: &mut B::Buf,
    hidden: &B::Buf,
    head: &B::Buf,
    targets: &[u32],
    rows: &[usize],
    s: HeadShape,
) {
    s.check(be, hidden, head, targets);
    assert!(be.len(lp) >= s.rows && be.len(entropy) >= s.rows, "lp, entropy: one value a row");
    if rows.is_empty() {
        return;
    }
    let c = s.chunk.min(rows.len());
    let (mut lpc, mut entc) = (be.zeros(c), be.zeros(c));
    head_chunks(be, hidden, head, targets, rows, s, |k| {
        be.logprobs(&mut lpc, &mut entc, k.logits, &k.targets, k.rows.len(), s.vocab, s.inv_temp);
        for &(j, r, len) in &k.runs {
            be.copy(lp, r, &lpc, j, len);
            be.copy(entropy, r, &entc, j, len);
        }
    });
}

/// One chunk of the head's rows (`head_chunks`): the rows, their runs of consecutive rows as
/// (position in the chunk, first row, length), their targets, and the gathered hidden rows and
/// their logits (`rows.len()` rows of each).
struct Chunk<'a, B: Backend> {
    /// The position of the chunk's first row in the rows walked.
    first: usize,
    rows: &'a [usize],
    runs: Vec<(usize, usize, usize)>,
    targets: Vec<u32>,
    h: &'a B::Buf,
    logits: &'a B::Buf,
    /// The lm_head weight.
    head: &'a B::Buf,
}

/// The head over `rows` (ascending, non-empty), `s.chunk` of them at a time: each chunk's
/// hidden rows gathered (a copy a run of consecutive rows: a response is one), their logits
/// `h W^T` computed, then `each(chunk)`. The forward and the backward walk the same chunks, so
/// a pass and the backward over the same rows give their GEMMs the same operands.
fn head_chunks<B: Backend>(
    be: &B,
    hidden: &B::Buf,
    head: &B::Buf,
    targets: &[u32],
    rows: &[usize],
    s: HeadShape,
    mut each: impl FnMut(Chunk<'_, B>),
) {
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "rows: ascending, no repeats");
    assert!(rows.last().is_none_or(|&r| r < s.rows), "rows: a row >= {}", s.rows);
    let (d, v) = (s.dim, s.vocab);
    let c = s.chunk.min(rows.len());
    // Overwritten chunk by chunk (no fill: at a real vocabulary `logits` is up to 1 GiB).
    let (mut h, mut logits) = (be.output_buf(c * d), be.output_buf(c * v));
    for (i, rows) in rows.chunks(c).enumerate() {
        let n = rows.len();
        let runs = runs(rows);
        for &(j, r, len) in &runs {
            be.copy(&mut h, j * d, hidden, r * d, len * d);
        }
        let targets = rows.iter().map(|&r| targets[r]).collect();
        be.matmul(&mut logits, &h, Tr::N, head, Tr::T, n, v, d, 0.0);
        each(Chunk { first: i * c, rows, runs, targets, h: &h, logits: &logits, head });
    }
}

/// Backward of [`chunked_logprobs`] given `dlp[t]` = d loss / d lp[t] and `dent[t]` =
/// d loss / d entropy[t]: overwrites `dhidden` (`rows x dim`) and adds to `dhead`
/// (`vocab x dim`). Every row is visited ([`chunked_logprobs_backward_rows`] skips rows).
#[allow(clippy::too_many_arguments)]
pub fn chunked_logprobs_backward<B: Backend>(
    be: &B,
    dhidden: &mut B::Buf,
    dhead: &mut B::Buf,
    hidden: &B::Buf,
    head: &B::Buf,
    targets: &[u32],
    dlp: &B::Buf,
    dent: &B::Buf,
    s: HeadShape,
) {
    let rows: Vec<usize> = (0..s.rows).collect();
    let g = RowGrads { dlp: Dlp::Given(dlp), dent: Some(dent), rows: &rows };
    chunked_logprobs_backward_rows(be, dhidden, dhead, hidden, head, targets, g, s);
}

/// A loss's gradient at a row from that row's log-prob and entropy alone (GRPO's token-level
/// losses: `TokenLoss::rowwise`).
pub trait RowwiseGrad<B: Backend> {
    /// d loss / d lp and, when the loss has an entropy term, d loss / d entropy, of the `n`
    /// rows at positions `first..first + n` of `RowGrads::rows`, whose log-probs and entropies
    /// are `lp[..n]` and `entropy[..n]`: `n` values each.
    fn grad(
        &self,
        be: &B,
        first: usize,
        n: usize,
        lp: &B::Buf,
        entropy: &B::Buf,
    ) -> (B::Buf, Option<B::Buf>);
}

/// Where the head's backward gets d loss / d lp.
#[derive(Clone, Copy)]
pub enum Dlp<'a, B: Backend> {
    /// One value per row (`RowGrads::dent` the entropies' gradient).
    Given(&'a B::Buf),
    /// From each chunk's log-probs, computed by the backward from its logits (then
    /// `RowGrads::dent` is unused: the rule gives it). Needs the log-prob outputs
    /// ([`chunked_logprobs_with_backward_rows`]), which the loss's value is taken from.
    FromLogprobs(&'a dyn RowwiseGrad<B>),
}

/// The gradient that reaches the head: d loss / d lp and (optionally) d loss / d entropy per
/// row, in backend buffers, and the rows where either may be non-zero.
#[derive(Clone, Copy)]
pub struct RowGrads<'a, B: Backend> {
    pub dlp: Dlp<'a, B>,
    pub dent: Option<&'a B::Buf>,
    /// Ascending rows whose gradient may be non-zero; every other row is skipped (its d hidden
    /// is 0). SFT's prompt rows and a response's last row cost nothing this way.
    pub rows: &'a [usize],
}

/// Maximal runs of consecutive values of ascending `rows`, as (position in `rows`, first
/// value, length): a response's tokens are one run, so gathers are a copy per response.
fn runs(rows: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut j = 0;
    while j < rows.len() {
        let mut e = j + 1;
        while e < rows.len() && rows[e] == rows[e - 1] + 1 {
            e += 1;
        }
        out.push((j, rows[j], e - j));
        j = e;
    }
    out
}

/// [`chunked_logprobs_backward`] on the rows of `g.rows` only, in chunks of `s.chunk` of
/// those rows (gathered, so a chunk's GEMMs run on rows that carry gradient): overwrites
/// `dhidden` (`s.rows x dim`, 0 on every other row) and adds to `dhead`. `g.dent` None
/// means no entropy term.
#[allow(clippy::too_many_arguments)]
pub fn chunked_logprobs_backward_rows<B: Backend>(
    be: &B,
    dhidden: &mut B::Buf,
    dhead: &mut B::Buf,
    hidden: &B::Buf,
    head: &B::Buf,
    targets: &[u32],
    g: RowGrads<'_, B>,
    s: HeadShape,
) {
    backward_rows(be, None, dhidden, dhead, hidden, head, targets, g, s);
}

/// Per-row log-prob and entropy outputs of [`chunked_logprobs_with_backward_rows`]
/// (`rows` values each).
pub struct RowLogprobs<'a, B: Backend> {
    pub lp: &'a mut B::Buf,
    pub entropy: &'a mut B::Buf,
}

/// [`chunked_logprobs_backward_rows`] that also writes `lp[r]` and `entropy[r]` (as
/// [`chunked_logprobs`] computes them) for every row `r` of `g.rows`, from the logits the
/// backward computes anyway; other rows of `out` are left as they were. For a loss whose
/// `g.dlp` and `g.dent` are known before the log-probs (SFT): the forward's chunked pass,
/// a logits GEMM and a read of the logits per chunk, is then not needed.
#[allow(clippy::too_many_arguments)]
pub fn chunked_logprobs_with_backward_rows<B: Backend>(
    be: &B,
    out: RowLogprobs<'_, B>,
    dhidden: &mut B::Buf,
    dhead: &mut B::Buf,
    hidden: &B::Buf,
    head: &B::Buf,
    targets: &[u32],
    g: RowGrads<'_, B>,
    s: HeadShape,
) {
    assert!(be.len(out.lp) >= s.rows, "lp: one value per row");
    assert!(be.len(out.entropy) >= s.rows, "entropy: one value per row");
    backward_rows(be, Some(out), dhidden, dhead, hidden, head, targets, g, s);
}

#[allow(clippy::too_many_arguments)]
fn backward_rows<B: Backend>(
    be: &B,
    mut out: Option<RowLogprobs<'_, B>>,
    dhidden: &mut B::Buf,
    dhead: &mut B::Buf,
    hidden: &B::Buf,
    head: &B::Buf,
    targets: &[u32],
    g: RowGrads<'_, B>,
    s: HeadShape,
) {
    s.check(be, hidden, head, targets);
    assert_eq!(be.len(dhead), s.vocab * s.dim, "dhead: vocab x dim values");
    assert!(be.len(dhidden) >= s.rows * s.dim, "dhidden: fewer than rows x dim values");
    match g.dlp {
        Dlp::Given(dlp) => assert!(be.len(dlp) >= s.rows, "dlp: one value per row"),
        Dlp::FromLogprobs(_) => assert!(out.is_some(), "a rowwise gradient needs lp outputs"),
    }
    assert!(g.dent.is_none_or(|e| be.len(e) >= s.rows), "dent: one value per row");
    let (d, v) = (s.dim, s.vocab);
    be.fill(dhidden, 0.0);
    if g.rows.is_empty() {
        return;
    }
    let c = s.chunk.min(g.rows.len());
    // Overwritten chunk by chunk. Only the two GEMMs read d logits: an operand buffer (bf16
    // alone on a bf16 GPU, neither the f32 values' writes nor their memory).
    let (mut dlogits, mut dh) = (be.operand_buf(c * v), be.output_buf(c * d));
    let mut gl = be.zeros(c);
    // Without an entropy term the chunk's d entropy is 0 throughout.
    let mut ge = be.zeros(c);
    let mut lpe = out.as_ref().map(|_| (be.output_buf(c), be.output_buf(c)));
    head_chunks(be, hidden, head, targets, g.rows, s, |k| {
        let n = k.rows.len();
        let (logits, tg, inv_temp) = (k.logits, &k.targets, s.inv_temp);
        let given = match g.dlp {
            Dlp::Given(dlp) => dlp,
            Dlp::FromLogprobs(rule) => {
                // The forward's log-probs of these rows (the same kernel on the same logits),
                // their gradient, then the gradient's backward.
                let (lpc, entc) = lpe.as_mut().expect("asserted above");
                be.logprobs(lpc, entc, logits, tg, n, v, inv_temp);
                let (dl, de) = rule.grad(be, k.first, n, lpc, entc);
                let de = de.as_ref().unwrap_or(&ge);
                be.logprobs_backward(&mut dlogits, logits, tg, &dl, de, n, v, inv_temp);
                finish_chunk(be, &k, &dlogits, &mut dh, dhead, dhidden, s);
                copy_logprobs(be, &k, out.as_mut(), lpe.as_ref());
                return;
            }
        };
        for &(j, r, len) in &k.runs {
            be.copy(&mut gl, j, given, r, len);
            if let Some(e) = g.dent {
                be.copy(&mut ge, j, e, r, len);
            }
        }
        match &mut lpe {
            Some((lpc, entc)) => be.logprobs_and_backward(
                &mut dlogits,
                lpc,
                entc,
                logits,
                tg,
                &gl,
                &ge,
                n,
                v,
                inv_temp,
            ),
            None => be.logprobs_backward(&mut dlogits, logits, tg, &gl, &ge, n, v, inv_temp),
        }
        finish_chunk(be, &k, &dlogits, &mut dh, dhead, dhidden, s);
        copy_logprobs(be, &k, out.as_mut(), lpe.as_ref());
    });
}

/// A chunk's d hidden rows (scattered to their packed rows) and its share of d lm_head, from
/// its d logits.
fn finish_chunk<B: Backend>(
    be: &B,
    k: &Chunk<'_, B>,
    dlogits: &B::Buf,
    dh: &mut B::Buf,
    dhead: &mut B::Buf,
    dhidden: &mut B::Buf,
    s: HeadShape,
) {
    let (n, d, v) = (k.rows.len(), s.dim, s.vocab);
    // d h [n, d] = d logits [n, v] @ W [v, d]
    be.matmul(dh, dlogits, Tr::N, k.head, Tr::N, n, d, v, 0.0);
    // d W [v, d] += d logits^T [v, n] @ h [n, d]
    be.matmul(dhead, dlogits, Tr::T, k.h, Tr::N, v, d, n, 1.0);
    for &(j, r, len) in &k.runs {
        be.copy(dhidden, r * d, dh, j * d, len * d);
    }
}

/// A chunk's log-probs and entropies to their packed rows of `out`, when asked for.
fn copy_logprobs<B: Backend>(
    be: &B,
    k: &Chunk<'_, B>,
    out: Option<&mut RowLogprobs<'_, B>>,
    lpe: Option<&(B::Buf, B::Buf)>,
) {
    if let (Some(o), Some((lpc, entc))) = (out, lpe) {
        for &(j, r, len) in &k.runs {
            be.copy(o.lp, r, lpc, j, len);
            be.copy(o.entropy, r, entc, j, len);
        }
    }
}
