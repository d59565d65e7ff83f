//! Batched generation with the KV cache: G responses for each of B prompts (the RL rollout),
//! and the plain `generate` command as the case B = G = 1.
//!
//! Every response has its own seed, and step t of it draws the counter-based Philox4x32-10
//! uniform of (seed, 0, t) (`rl::philox`), so any rollout can be reproduced alone, whatever
//! else was in its batch. Each step's last-token logits (`[active sequences x vocab]`) stay in
//! the backend's memory and are sampled there (`RlOps::rl_sample`: the sampling kernel on the
//! GPU and the emulator, `rl::sampling::sample_row` itself on the CPU, which the kernel
//! follows bit for bit): only the sampled ids and their log-probs cross to the host, so a
//! response is a function of its seed and its logits on every backend. The responses share
//! `SamplingParams::kv_slots` KV-cache slots, a finished one's slot taken by the next waiting
//! prompt (continuous batching: `rl::decode_scheduler`).

use super::decode_scheduler::{decode_scheduled, Batch, Feed, Rollouts, Schedule};
use crate::backend::rl_ops::RlOps;
use crate::model::kv_cache::KvCache;
use crate::model::Qwen2;
use crate::rl::sampling::{sample_row, RowDraw, SampleRule, INVALID_TOKEN};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Token ids that end a response (included in it, as verl keeps the EOS token).
    pub stop_ids: Vec<u32>,
    /// Strings that end a response once its decoded text contains them (needs a tokenizer).
    pub stop_strings: Vec<String>,
    /// KV-cache slots: responses decoded at once, a finished one's slot taken by the next
    /// waiting response (`rl::decode_scheduler`). 0: automatic (one per response while they
    /// fit `decode_scheduler::KV_BUDGET_BYTES`). Changes speed and memory, never a response
    /// (on a batch-invariant backend: the CPU, the emulator).
    #[serde(default)]
    pub kv_slots: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        // MMR1's rollout setting: temperature 0.6, top_p 1.0 (../shared/MMR1.md).
        SamplingParams {
            temperature: 0.6,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop_ids: vec![],
            stop_strings: vec![],
            kv_slots: 0,
        }
    }
}

impl SamplingParams {
    /// What the sampler itself needs (temperature, top-k, top-p).
    pub fn rule(&self) -> SampleRule {
        SampleRule { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p }
    }
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!("temperature must be >= 0 (got {})", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1] (got {})", self.top_p);
        }
        if self.max_new_tokens == 0 {
            bail!("max_new_tokens must be positive");
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum StopReason {
    StopToken,
    StopString,
    MaxTokens,
}

/// One generated response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rollout {
    pub prompt_index: usize,
    pub seed: u64,
    pub tokens: Vec<u32>,
    /// Log-prob of each sampled token under the sampling distribution `softmax(logits / T)`
    /// (T = 1 when greedy), before top-p/top-k truncation.
    pub logprobs: Vec<f32>,
    pub stop: StopReason,
}

/// Samples one token id from `logits` with uniform draw `u` in [0, 1); returns it with its
/// log-prob under `softmax(logits / T)`. The rule (and the device kernel that follows it bit for
/// bit) is `rl::sampling::sample_row`; a row with a NaN or +inf logit, or none finite, gives
/// `(INVALID_TOKEN, NaN)`.
pub fn sample_token(logits: &[f32], p: &SamplingParams, u: f64) -> (u32, f32) {
    sample_row(logits, &p.rule(), u)
}

/// The token of decode step `step` of the response with seed `seed`: [`sample_token`] with the
/// Philox4x32-10 uniform of (seed, sequence 0, step), so a response is a function of its own
/// seed and logits, and the device sampler draws the same token from the same logits. Bad
/// logits are an error naming the step.
pub fn draw_token(
    logits: &[f32],
    p: &SamplingParams,
    seed: u64,
    step: usize,
) -> Result<(u32, f32)> {
    let (tok, lp) = sample_token(logits, p, row_draw(seed, step).uniform());
    checked_draw(tok, lp, seed, step)
}

/// The Philox draw of decode step `step` of the response with seed `seed`.
fn row_draw(seed: u64, step: usize) -> RowDraw {
    RowDraw { seed, seq: 0, step: step as u32 }
}

/// A sampled token, or the error naming the step when its logits could not be sampled.
fn checked_draw(tok: u32, lp: f32, seed: u64, step: usize) -> Result<(u32, f32)> {
    if tok == INVALID_TOKEN {
        bail!("decode step {step} (response seed {seed}): the logits hold NaN or +inf, or no finite value");
    }
    Ok((tok, lp))
}

/// [`draw_token`] for every row of `logits`, a backend buffer `[rows.len() x vocab]`, on the
/// backend (`RlOps::rl_sample`): row `j` is decode step `rows[j].1` of the response with seed
/// `rows[j].0`. The same tokens and log-probs as [`draw_token`] on the downloaded rows; only
/// they leave the backend.
pub fn draw_tokens<B: RlOps>(
    be: &B,
    logits: &B::Buf,
    vocab: usize,
    p: &SamplingParams,
    rows: &[(u64, usize)],
) -> Result<Vec<(u32, f32)>> {
    let draws: Vec<RowDraw> = rows.iter().map(|&(seed, step)| row_draw(seed, step)).collect();
    let drawn = be.rl_sample(logits, vocab, &draws, &p.rule());
    drawn
        .into_iter()
        .zip(rows)
        .map(|((tok, lp), &(seed, step))| checked_draw(tok, lp, seed, step))
        .collect()
}

/// Generates `group` responses for every prompt. Response `g` of prompt `i` uses seed
/// `base_seed + (i * group + g)` (mixed), so it can be regenerated on its own.
#[allow(clippy::too_many_arguments)]
pub fn generate<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    prompts: &[Vec<u32>],
    group: usize,
    params: &SamplingParams,
    base_seed: u64,
    tokenizer: Option<&Tokenizer>,
    on_token: impl FnMut(usize),
) -> Result<Vec<Rollout>> {
    generate_at(model, be, prompts, group, params, base_seed, 0, tokenizer, on_token)
}

/// [`generate`] for part of a larger batch whose prompt `first` is `prompts[0]`: response `g`
/// of `prompts[i]` is seeded as prompt `first + i` of the whole batch (a data-parallel rank
/// decoding its shard gets the single-process responses). `prompt_index` stays local.
#[allow(clippy::too_many_arguments)]
pub fn generate_at<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    prompts: &[Vec<u32>],
    group: usize,
    params: &SamplingParams,
    base_seed: u64,
    first: usize,
    tokenizer: Option<&Tokenizer>,
    on_token: impl FnMut(usize),
) -> Result<Vec<Rollout>> {
    let r = generate_scheduled(
        model, be, prompts, group, params, base_seed, first, tokenizer, on_token,
    )?;
    Ok(r.rollouts)
}

/// [`generate_at`] with the scheduler's account of the slots (`SlotStats`: occupancy, the
/// KV cache's size). The responses decode on `params.kv_slots` KV-cache slots
/// (`rl::decode_scheduler`), each a function of its seed and prompt whatever the slot count.
#[allow(clippy::too_many_arguments)]
pub fn generate_scheduled<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    prompts: &[Vec<u32>],
    group: usize,
    params: &SamplingParams,
    base_seed: u64,
    first: usize,
    tokenizer: Option<&Tokenizer>,
    on_token: impl FnMut(usize),
) -> Result<Rollouts> {
    params.validate()?;
    if !params.stop_strings.is_empty() && tokenizer.is_none() {
        bail!("stop strings need a tokenizer");
    }
    let n = prompts.len() * group;
    if n == 0 {
        return Ok(Rollouts::default());
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            bail!("prompt {i} is empty");
        }
        model.check_ids(p)?;
    }
    let seeds: Vec<u64> = (0..n).map(|s| mix_seed(base_seed, (first * group + s) as u64)).collect();
    let views: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let batch = Batch { prompts: &views, group, seeds: &seeds };
    let longest = views.iter().map(|p| p.len()).max().unwrap_or(0);
    let schedule =
        Schedule::new(be, model, params.kv_slots, n, longest.saturating_add(params.max_new_tokens));
    let step = |cache: &mut KvCache<B>, feeds: &[Feed<'_>]| {
        let inputs: Vec<(usize, &[u32])> = feeds.iter().map(|f| (f.slot, f.tokens)).collect();
        model.decode_step_logits(be, cache, &inputs)
    };
    decode_scheduled(model, be, &batch, params, schedule, tokenizer, step, on_token)
}

/// SplitMix64 of `base + index`: well-spread per-response seeds from one run seed.
pub fn mix_seed(base: u64, index: u64) -> u64 {
    let mut z = base.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
