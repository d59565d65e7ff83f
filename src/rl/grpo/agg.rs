//! Loss aggregation (verl `loss_agg_mode`, TRL `loss_type`) with global counts, so that the
//! micro-batch split never changes the loss.
//!
//! Per-token weights `w_t` (the loss is `sum_t w_t * l_t`), with **global** counts from
//! [`Normalizer`] (N tokens, S sequences, L a constant) and n_i the active tokens of t's response:
//!
//! ```text
//! token-mean               m_t / N            verl token-mean; TRL dapo (global), bnpo (local)
//! token-sum                m_t                verl 0.9.1 token-sum
//! seq-mean-token-sum       m_t / S            verl seq-mean-token-sum
//! seq-mean-token-mean      m_t / (n_i S)      verl seq-mean-token-mean; TRL grpo
//! seq-mean-token-sum-norm  m_t / (L S)        verl >= 0.7.1 seq-mean-token-sum-norm (L =
//!                                             `loss_scale_factor`, default the padded width);
//!                                             TRL dr_grpo (L = max_completion_length)
//! ```
//!
//! Rounding-level details follow the [`Convention`]: verl adds 1e-8 to n_i and counts only
//! sequences with an active token in S (`agg_loss` with `global_batch_size=None`); TRL clamps
//! n_i and N to >= 1 and counts every row in S (`.mean()` over the batch dimension, `B *
//! max_completion_length`); MMR1's released code (EasyR1 `masked_mean`) adds 1e-8 to N.
//!
//! verl 0.7.0 and its git history before 0.7.1 (e.g. commit b178a3c, Jan 2026) divide
//! seq-mean-token-sum-norm by L only, not by S; every verl release since 0.7.1 (checked: 0.7.1,
//! 0.8.0, 0.9.1) divides by both, which is what this file does.

use super::Convention;
use serde::{Deserialize, Serialize};

/// How per-token losses are reduced to a scalar. Serde names are verl's `loss_agg_mode`; TRL's
/// `loss_type` names are accepted as aliases (`bnpo`/`dapo` = token-mean with TRL's
/// normaliser, `grpo` = seq-mean-token-mean, `dr_grpo` = seq-mean-token-sum-norm).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregation {
    /// Mean over all active tokens of the (global) batch. MMR1's setting.
    #[serde(rename = "token-mean", alias = "dapo", alias = "bnpo")]
    TokenMean,
    /// Sum over all active tokens (verl 0.9.1 `token-sum`).
    #[serde(rename = "token-sum")]
    TokenSum,
    /// Mean over responses of each response's token sum.
    #[serde(rename = "seq-mean-token-sum")]
    SeqMeanTokenSum,
    /// Mean over responses of each response's token mean (the original GRPO).
    #[serde(rename = "seq-mean-token-mean", alias = "grpo")]
    SeqMeanTokenMean,
    /// Sum over tokens / (L * number of responses) (Dr. GRPO).
    #[serde(rename = "seq-mean-token-sum-norm", alias = "dr_grpo")]
    SeqMeanTokenSumNorm,
}

impl Aggregation {
    pub const NAMES: &'static str = "token-mean (dapo, bnpo), token-sum, seq-mean-token-sum, \
         seq-mean-token-mean (grpo), seq-mean-token-sum-norm (dr_grpo)";
}

/// Global counts that fix the loss scale independently of the micro-batch split.
///
/// Build it once from the full batch (all micro-batches, all data-parallel ranks), e.g. by
/// [`Normalizer::count`] on each piece and [`Normalizer::merge`], then pass the same value to
/// every policy-loss call of that optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    /// Sum of the loss mask over the global batch (token-mean denominator).
    pub global_tokens: f64,
    /// Number of responses with at least one active token (verl's `seq_mask.sum()`).
    pub global_seqs: f64,
    /// Number of responses, fully masked ones included (TRL's B; verl geo_mean's `mean`).
    #[serde(default)]
    pub global_rows: f64,
    /// Constant L for [`Aggregation::SeqMeanTokenSumNorm`] (the configured max response
    /// length; verl `loss_scale_factor` or the padded width, TRL `max_completion_length`).
    pub max_response_len: f64,
}

impl Normalizer {
    /// Counts given directly (`global_rows = global_seqs`).
    pub fn new(global_tokens: f64, global_seqs: f64, max_response_len: f64) -> Self {
        Self { global_tokens, global_seqs, global_rows: global_seqs, max_response_len }
    }

    /// Counts of one piece of the batch.
    pub fn count<T: Copy + Into<f64>>(
        mask: &[T],
        offsets: &[usize],
        max_response_len: usize,
    ) -> Self {
        super::check_offsets(offsets, mask.len());
        let mut tokens = 0f64;
        let mut seqs = 0f64;
        for w in offsets.windows(2) {
            let n: f64 = mask[w[0]..w[1]].iter().map(|&m| m.into()).sum();
            tokens += n;
            if n > 0.0 {
                seqs += 1.0;
            }
        }
        Self {
            global_tokens: tokens,
            global_seqs: seqs,
            global_rows: (offsets.len() - 1) as f64,
            max_response_len: max_response_len as f64,
        }
    }

    /// Sum of the counts of two disjoint pieces (same `max_response_len`).
    pub fn merge(&self, other: &Self) -> Self {
        assert_eq!(self.max_response_len, other.max_response_len, "pieces disagree on L_max");
        Self {
            global_tokens: self.global_tokens + other.global_tokens,
            global_seqs: self.global_seqs + other.global_seqs,
            global_rows: self.global_rows + other.global_rows,
            max_response_len: self.max_response_len,
        }
    }

    /// Number of sequences S as the convention counts them.
    pub fn seqs(&self, conv: Convention) -> f64 {
        match conv {
            Convention::Trl => self.global_rows,
            Convention::Verl | Convention::Mmr1 => self.global_seqs,
        }
    }
}

/// Token-count denominator of a per-response mean, as the convention writes it.
pub fn seq_token_denom(n_i: f64, conv: Convention) -> f64 {
    match conv {
        Convention::Trl => n_i.max(1.0),
        Convention::Verl | Convention::Mmr1 => n_i + 1e-8,
    }
}

/// The weight per unit of mask of a token in a response with `n_i` active tokens.
pub fn token_weight(agg: Aggregation, n_i: f64, norm: &Normalizer, conv: Convention) -> f64 {
    let s = norm.seqs(conv);
    let d = match agg {
        Aggregation::TokenMean => match conv {
            Convention::Verl => norm.global_tokens,
            Convention::Trl => norm.global_tokens.max(1.0),
            Convention::Mmr1 => norm.global_tokens + 1e-8,
        },
        Aggregation::TokenSum => 1.0,
        Aggregation::SeqMeanTokenSum => s,
        Aggregation::SeqMeanTokenMean => seq_token_denom(n_i, conv) * s,
        Aggregation::SeqMeanTokenSumNorm => norm.max_response_len * s,
    };
    if d > 0.0 {
        1.0 / d
    } else {
        0.0
    }
}
