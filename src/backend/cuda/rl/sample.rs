//! Launcher of the sampling kernel (`kernels/sample.cu`): the device form of
//! [`sample_row`](crate::rl::sampling::sample_row) for every row of a logits buffer, with each
//! row's Philox uniform drawn on the device. Only token ids and log-probs leave the device.

use super::buf_len;
use crate::backend::cuda::device::{Arg, Device};
use crate::backend::cuda::{CudaBackend, DevBuf};
use crate::rl::sampling::{RowDraw, SampleRule, SAMPLE_LANES};

/// How the kernel finds the top-k / top-p threshold key (kernels/sample.cu). Both give the
/// same bits; the bisection is the simple baseline kept to check and time the radix search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThresholdSearch {
    /// 8 bits of the key a level from the top, histograms in shared memory (3-4 passes over a
    /// row of random logits): the default.
    Radix,
    /// The radix search deciding every top-p digit by exact passes, never by the histogram's
    /// masses: slower, the same bits; tests hold the exact path to the reference with it.
    RadixExact,
    /// One bit a pass from the top (about 50 passes at vocabulary 151,936).
    Bisect,
}

impl ThresholdSearch {
    fn kernel(self) -> &'static str {
        match self {
            ThresholdSearch::Radix | ThresholdSearch::RadixExact => "sample_tokens_f32",
            ThresholdSearch::Bisect => "sample_tokens_bisect_f32",
        }
    }
}

impl<D: Device> CudaBackend<D> {
    /// Whether `sample_tokens_into` takes the split form for few rows (on, the default from
    /// `MMR1_SAMPLE_SPLIT`) or one block a row always (off): the same bits either way.
    pub fn with_sample_split(mut self, on: bool) -> Self {
        self.sample_split = on;
        self
    }

    /// Samples row `r` of `logits` ([draws.len() x vocab]) under `rule` with the uniform of
    /// `draws[r]`, writing the token id (as u32 bits) to `tokens[r]` and its log-prob to
    /// `logprobs[r]`; a row that cannot be sampled gets `INVALID_TOKEN` and NaN.
    pub fn sample_tokens_into(
        &self,
        logits: &DevBuf<D::Mem>,
        vocab: usize,
        draws: &[RowDraw],
        rule: &SampleRule,
        tokens: &mut DevBuf<D::Mem>,
        logprobs: &mut DevBuf<D::Mem>,
    ) {
        let split = sample_split_for(draws.len());
        if self.sample_split && split > 1 && splits(rule, vocab) {
            return self
                .sample_tokens_split_into(logits, vocab, draws, rule, tokens, logprobs, split);
        }
        let search = ThresholdSearch::Radix;
        self.sample_tokens_into_with(logits, vocab, draws, rule, tokens, logprobs, search)
    }

    /// [`Self::sample_tokens_into`] in the split form (kernels/sample.cu): each row's lanes over
    /// `split` blocks (1, 2, 4 or 8), four launches; the same bits as one block a row. Only for
    /// a rule without a kept-set search and with a temperature (`splits`).
    #[allow(clippy::too_many_arguments)]
    pub fn sample_tokens_split_into(
        &self,
        logits: &DevBuf<D::Mem>,
        vocab: usize,
        draws: &[RowDraw],
        rule: &SampleRule,
        tokens: &mut DevBuf<D::Mem>,
        logprobs: &mut DevBuf<D::Mem>,
        split: usize,
    ) {
        let rows = draws.len();
        check_sample_args(logits, vocab, rows, rule, tokens, logprobs);
        assert!(
            splits(rule, vocab),
            "sample: the split form takes a temperature and no top-k/top-p"
        );
        assert!(matches!(split, 1 | 2 | 4 | 8), "sample: split {split} is not 1, 2, 4 or 8");
        if rows == 0 {
            return;
        }
        let d_draws = self.upload_u32(&packed_draws(draws));
        let p = self.split_passes(logits, vocab, rows, rule.temperature, split);
        self.dev.launch(
            "sample_split_draw_f32",
            [rows as u32, 1, 1],
            [32, 1, 1],
            0,
            &[
                Arg::Ptr(tokens.mem()),
                Arg::Ptr(logprobs.mem()),
                Arg::Ptr(&p.lanes2),
                Arg::Ptr(&p.lse),
                Arg::Ptr(&p.pmax),
                Arg::Ptr(&p.pbad),
                Arg::Ptr(logits.mem()),
                Arg::Ptr(&d_draws),
                Arg::I64(vocab as i64),
                Arg::F32(rule.temperature),
                Arg::I32(split as i32),
            ],
        );
    }

    /// The log-sum-exp of each row of `logits / temperature` as the split form's passes
    /// compute it (tests hold it to `rl::sampling::tempered_lse` bit for bit: a fold in
    /// another order moves it by an ulp, which the drawn ids and f32 log-probs rarely show).
    /// Rows that cannot be sampled have none (their value is whatever the scratch held).
    pub fn sample_split_lse(
        &self,
        logits: &DevBuf<D::Mem>,
        vocab: usize,
        rows: usize,
        temperature: f32,
        split: usize,
    ) -> Vec<f64> {
        assert!(
            temperature > 0.0 && matches!(split, 1 | 2 | 4 | 8) && buf_len(logits) == rows * vocab
        );
        if rows == 0 {
            return vec![];
        }
        let p = self.split_passes(logits, vocab, rows, temperature, split);
        super::f64s(&self.dev.download(&p.lse, rows * 8))
    }

    /// The split form's three passes over the rows (max, exp sums, weight sums); the draw
    /// reads what they leave.
    fn split_passes(
        &self,
        logits: &DevBuf<D::Mem>,
        vocab: usize,
        rows: usize,
        temperature: f32,
        split: usize,
    ) -> SplitScratch<D::Mem> {
        let p = SplitScratch {
            pmax: self.dev.alloc(rows * split * 4),
            pbad: self.dev.alloc(rows * split * 4),
            lanes1: self.dev.alloc(rows * SAMPLE_LANES * 8),
            lanes2: self.dev.alloc(rows * SAMPLE_LANES * 8),
            lse: self.dev.alloc(rows * 8),
        };
        let (grid, block) = ([rows as u32, split as u32, 1], [(SAMPLE_LANES / split) as u32, 1, 1]);
        let (x, n, t) =
            (|| Arg::Ptr(logits.mem()), || Arg::I64(vocab as i64), || Arg::F32(temperature));
        let (pm, pb) = (|| Arg::Ptr(&p.pmax), || Arg::Ptr(&p.pbad));
        self.dev.launch("sample_split_max_f32", grid, block, 0, &[pm(), pb(), x(), n()]);
        let lanes1 = || Arg::Ptr(&p.lanes1);
        self.dev.launch(
            "sample_split_lse_f32",
            grid,
            block,
            0,
            &[lanes1(), pm(), pb(), x(), n(), t()],
        );
        let w = [Arg::Ptr(&p.lanes2), Arg::Ptr(&p.lse), lanes1(), pm(), pb(), x(), n(), t()];
        self.dev.launch("sample_split_weights_f32", grid, block, 0, &w);
        p
    }

    /// [`Self::sample_tokens_into`] with a chosen threshold search.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_tokens_into_with(
        &self,
        logits: &DevBuf<D::Mem>,
        vocab: usize,
        draws: &[RowDraw],
        rule: &SampleRule,
        tokens: &mut DevBuf<D::Mem>,
        logprobs: &mut DevBuf<D::Mem>,
        search: ThresholdSearch,
    ) {
        let rows = draws.len();
        check_sample_args(logits, vocab, rows, rule, tokens, logprobs);
        if rows == 0 {
            return;
        }
        let d_draws = self.upload_u32(&packed_draws(draws));
        let mut args = vec![
            Arg::Ptr(tokens.mem()),
            Arg::Ptr(logprobs.mem()),
            Arg::Ptr(logits.mem()),
            Arg::Ptr(&d_draws),
            Arg::I64(vocab as i64),
            Arg::F32(rule.temperature),
            Arg::I64(rule.top_k.min(i64::MAX as usize) as i64),
            Arg::F32(rule.top_p),
        ];
        if search != ThresholdSearch::Bisect {
            args.push(Arg::I32((search == ThresholdSearch::RadixExact) as i32));
        }
        self.dev.launch(
            search.kernel(),
            [rows as u32, 1, 1],
            [SAMPLE_LANES as u32, 1, 1],
            0,
            &args,
        );
    }

    /// [`Self::sample_tokens_into`] into fresh buffers, downloaded: (token id, log-prob) per row.
    pub fn sample_tokens(
        &self,
        logits: &DevBuf<D::Mem>,
        vocab: usize,
        draws: &[RowDraw],
        rule: &SampleRule,
    ) -> Vec<(u32, f32)> {
        let rows = draws.len();
        let mut tokens = self.new_buf(rows);
        let mut logprobs = self.new_buf(rows);
        self.sample_tokens_into(logits, vocab, draws, rule, &mut tokens, &mut logprobs);
        let ids = self.dev.download(tokens.mem(), rows * 4);
        let lps = crate::backend::cuda::f32s(&self.dev.download(logprobs.mem(), rows * 4));
        ids.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).zip(lps).collect()
    }
}

/// Whether `sample_tokens_into` may take the split form, from `MMR1_SAMPLE_SPLIT` (`1`/unset:
/// on, `0`: one block a row always, to measure what the split saves). Panics on another value.
pub(crate) fn split_from_env() -> bool {
    crate::backend::cuda::device::switch_from_env(
        "MMR1_SAMPLE_SPLIT",
        true,
        "a few rows' lanes spread over several blocks each",
    )
}

/// Scratch of the split form: per-block maxima and NaN/+inf counts [rows][split], the lane sums
/// of the two f64 passes [rows][SAMPLE_LANES], the log-sum-exp [rows].
struct SplitScratch<M> {
    pmax: M,
    pbad: M,
    lanes1: M,
    lanes2: M,
    lse: M,
}

/// Blocks a row's lanes are spread over by [`CudaBackend::sample_tokens_into`]: the largest
/// power of two up to 8 that makes about 256 blocks (two an SM of an H100, so that every SM
/// works on the f64 passes), 1 from 128 rows on (one block a row is then as many blocks).
pub fn sample_split_for(rows: usize) -> usize {
    let want = (256 / rows.max(1)).clamp(1, 8);
    1 << want.ilog2()
}

/// Whether the split form applies to `rule`: a temperature (greedy takes the first maximum in
/// its own pass) and every token kept (top-k and top-p search the row in one block).
pub fn splits(rule: &SampleRule, vocab: usize) -> bool {
    rule.temperature > 0.0 && rule.top_p >= 1.0 && (rule.top_k == 0 || rule.top_k >= vocab)
}

fn check_sample_args<M>(
    logits: &DevBuf<M>,
    vocab: usize,
    rows: usize,
    rule: &SampleRule,
    tokens: &DevBuf<M>,
    logprobs: &DevBuf<M>,
) {
    assert!(vocab >= 1 && vocab < u32::MAX as usize, "sample: vocabulary of {vocab} tokens");
    assert_eq!(buf_len(logits), rows * vocab, "sample: logits must be [rows x vocab]");
    assert!(buf_len(tokens) >= rows && buf_len(logprobs) >= rows, "sample: outputs too short");
    assert!(rule.temperature >= 0.0 && rule.temperature.is_finite(), "sample: temperature");
    assert!(rule.top_p > 0.0 && rule.top_p <= 1.0, "sample: top_p must be in (0, 1]");
}

/// Each row's Philox key and counter as the kernels read them: seed lo, seed hi, sequence lo,
/// sequence hi, step.
fn packed_draws(draws: &[RowDraw]) -> Vec<u32> {
    draws
        .iter()
        .flat_map(|d| {
            [d.seed as u32, (d.seed >> 32) as u32, d.seq as u32, (d.seq >> 32) as u32, d.step]
        })
        .collect()
}
