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
        let search = ThresholdSearch::Radix;
        self.sample_tokens_into_with(logits, vocab, draws, rule, tokens, logprobs, search)
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
        assert!(vocab >= 1 && vocab < u32::MAX as usize, "sample: vocabulary of {vocab} tokens");
        assert_eq!(buf_len(logits), rows * vocab, "sample: logits must be [rows x vocab]");
        assert!(buf_len(tokens) >= rows && buf_len(logprobs) >= rows, "sample: outputs too short");
        assert!(rule.temperature >= 0.0 && rule.temperature.is_finite(), "sample: temperature");
        assert!(rule.top_p > 0.0 && rule.top_p <= 1.0, "sample: top_p must be in (0, 1]");
        if rows == 0 {
            return;
        }
        let packed: Vec<u32> = draws
            .iter()
            .flat_map(|d| {
                [d.seed as u32, (d.seed >> 32) as u32, d.seq as u32, (d.seq >> 32) as u32, d.step]
            })
            .collect();
        let d_draws = self.upload_u32(&packed);
        let mut args = vec![
            Arg::Ptr(&tokens.mem),
            Arg::Ptr(&logprobs.mem),
            Arg::Ptr(&logits.mem),
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
        let ids = self.dev.download(&tokens.mem, rows * 4);
        let lps = crate::backend::cuda::f32s(&self.dev.download(&logprobs.mem, rows * 4));
        ids.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).zip(lps).collect()
    }
}
