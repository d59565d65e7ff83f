//! The rollout scheduler: continuous batching of responses over a bounded number of KV-cache
//! slots, for the text rollouts (`rollout::generate_at`) and the vision-language ones
//! (`vl_rollout::generate_vl_batch`) alike.
//!
//! The responses wait in a queue in their fixed order (response `r` answers prompt
//! `r / group`). The cache has `slots` slots; each decode step feeds every occupied slot:
//! its next token, or, for a slot that a response has just taken, that response's whole
//! prompt (its prefill), so prefills and single-token decodes share one step (the attention
//! takes ragged spans). When a response ends (a stop id, a stop string, `max_new_tokens`),
//! its slot is reset and the next waiting response's prompt goes in at the next step. The
//! long tail of a batch then decodes beside fresh prompts instead of beside idle slots (the
//! older path ran fixed chunks of slots to their longest response), and the cache's memory is
//! `slots` sequences whatever the number of responses.
//!
//! A response is a function of its prompt, its seed and the model: its Philox draws are
//! keyed by (seed, position) and a row of the forward does not depend on the rows beside it
//! (the CPU's and the emulator's forward are batch-invariant: tests/suite/continuous_batching.rs
//! checks mixed prefill + decode steps). So the slot count changes the speed and the memory,
//! never a token, on those backends. A GPU's cuBLAS may pick GEMM kernels by the batch's row
//! count, so there a response can differ in the last bits of a logit with the slot count, as
//! it can with the batch's size.

use super::rollout::{draw_tokens, Rollout, SamplingParams, StopReason};
use crate::backend::rl_ops::RlOps;
use crate::model::kv_cache::KvCache;
use crate::model::Qwen2;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The KV cache's memory when the slot count is automatic (`SamplingParams::kv_slots` = 0):
/// every response gets a slot when they all fit in this many bytes, else as many slots as fit
/// (at least one). 8 GiB holds 512 responses of 680 tokens for Qwen2.5-0.5B (24 layers, 2 KV
/// heads of 64, f32: 24.6 KB a token), or 14 of 5k tokens for a 7B model (115 KB a token);
/// twice as many where the backend stores the cache in bf16 (`Backend::kv_cache_value_bytes`).
pub const KV_BUDGET_BYTES: usize = 8 << 30;

/// Prompt tokens prefilled in one decode step, at most (a single longer prompt still goes in,
/// alone): bounds a step's activations when many slots free up at once, as at the start.
pub const PREFILL_TOKENS_PER_STEP: usize = 32768;

/// How the responses are laid on the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Slots of the KV cache: responses decoded at once.
    pub slots: usize,
    /// Prompt tokens a step may prefill (see [`PREFILL_TOKENS_PER_STEP`]).
    pub prefill_tokens: usize,
    /// Responses to one prompt share its prefill: one slot computes it, the others get copies
    /// of its cache rows and of its last token's logits (`KvCache::share_prefixes`): the same
    /// bits, the prompt computed once instead of once a response (GRPO's groups). A response
    /// starting in a later step shares too while a slot still decodes a response to its
    /// prompt. Off: each response prefills its prompt.
    pub share_prompts: bool,
}

impl Schedule {
    /// `requested` slots (0: automatic, [`KV_BUDGET_BYTES`]), at most one per response, for
    /// `responses` responses of up to `cap` tokens on `model`, whose cache `be` makes.
    pub fn new<B: RlOps>(
        be: &B,
        model: &Qwen2<B>,
        requested: usize,
        responses: usize,
        cap: usize,
    ) -> Self {
        let want = if requested > 0 {
            requested
        } else {
            let bytes = be.kv_cache_value_bytes(model.attn_shape());
            let per_slot =
                cap.max(1).saturating_mul(kv_values_per_token(model)).saturating_mul(bytes);
            KV_BUDGET_BYTES / per_slot.max(1)
        };
        Schedule {
            slots: want.clamp(1, responses.max(1)),
            prefill_tokens: PREFILL_TOKENS_PER_STEP,
            share_prompts: share_prompts_from_env(),
        }
    }
}

/// `Schedule::share_prompts` from `MMR1_SHARE_PROMPTS` (`1`/unset: on, `0`: each response
/// prefills its prompt, to time what sharing saves). Panics on another value, naming it.
pub fn share_prompts_from_env() -> bool {
    crate::backend::cuda::device::switch_from_env(
        "MMR1_SHARE_PROMPTS",
        true,
        "responses to one prompt starting together share its prefill",
    )
}

/// Values the KV cache holds per token: a key and a value row in every layer.
pub fn kv_values_per_token<B: RlOps>(model: &Qwen2<B>) -> usize {
    2 * model.cfg.num_hidden_layers * model.cfg.n_kv_heads() * model.cfg.head_dim()
}

/// What the slots did: how full they were, and the cache's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlotStats {
    pub slots: usize,
    /// Decode steps (forward passes).
    pub steps: usize,
    /// Slots times steps, summed: the slot-steps there were.
    pub slot_steps: usize,
    /// Slot-steps that fed a slot (a prefill or a token): the work done.
    pub busy_slot_steps: usize,
    /// Tokens sampled (= response tokens).
    pub sampled: usize,
    /// Prompt tokens prefilled.
    pub prefilled: usize,
    /// Prompt tokens a response got as copies of another slot's prefill of its prompt
    /// (`Schedule::share_prompts`) instead of prefilling them.
    pub shared: usize,
    /// Values of the KV cache's key and value buffers, all layers (f32 or bf16:
    /// `Backend::kv_cache_value_bytes`).
    pub kv_values: usize,
    /// Wall time of the decode loop (the cache's allocation included).
    pub seconds: f64,
}

impl SlotStats {
    /// Share of the slot-steps that did work (1: no slot ever idle).
    pub fn occupancy(&self) -> f64 {
        if self.slot_steps == 0 {
            return 0.0;
        }
        self.busy_slot_steps as f64 / self.slot_steps as f64
    }

    /// Sampled tokens per second of decoding.
    pub fn tokens_per_s(&self) -> f64 {
        self.sampled as f64 / self.seconds.max(1e-9)
    }

    /// Adds `other`'s work (another batch, or another rank's): the counters and the seconds
    /// add up, `slots` and `kv_values` keep the larger cache.
    pub fn absorb(&mut self, other: &SlotStats) {
        self.slots = self.slots.max(other.slots);
        self.kv_values = self.kv_values.max(other.kv_values);
        self.steps += other.steps;
        self.slot_steps += other.slot_steps;
        self.busy_slot_steps += other.busy_slot_steps;
        self.sampled += other.sampled;
        self.prefilled += other.prefilled;
        self.shared += other.shared;
        self.seconds += other.seconds;
    }

    /// The occupancy the older path (chunks of `slots` consecutive responses, each chunk run
    /// until its longest response ends) has for responses of lengths `lens` (in tokens, each a
    /// step of its slot): what the scheduler is measured against.
    pub fn chunked_occupancy(lens: &[usize], slots: usize) -> f64 {
        let slots = slots.max(1);
        let steps: usize = lens.chunks(slots).map(|c| c.iter().max().copied().unwrap_or(0)).sum();
        let busy: usize = lens.iter().sum();
        if steps == 0 {
            return 0.0;
        }
        busy as f64 / (slots * steps) as f64
    }
}

/// The rollouts of a batch and how the slots were used.
#[derive(Clone, Debug, Default)]
pub struct Rollouts {
    pub rollouts: Vec<Rollout>,
    pub stats: SlotStats,
}

/// One slot's input in a decode step.
#[derive(Clone, Copy, Debug)]
pub struct Feed<'a> {
    pub slot: usize,
    /// The response the slot decodes (its prompt is `response / group`).
    pub response: usize,
    pub tokens: &'a [u32],
    /// The slot was just reset and `tokens` is the response's prompt.
    pub prefill: bool,
}

/// The responses to decode: `group` responses to each prompt, response `r` seeded `seeds[r]`.
pub struct Batch<'a> {
    pub prompts: &'a [&'a [u32]],
    pub group: usize,
    pub seeds: &'a [u64],
}

/// Decodes every response of `batch` on a cache of `model` laid out by `schedule` (slots
/// past the response count are not allocated). `step` runs one decode step for `feeds` on
/// the cache and returns the logits of each feed's last token (`[feeds.len() x vocab]`, on the
/// backend); the scheduler samples them and decides what comes next. `on_token(r)` is called
/// for every token response `r` gets. The rollouts come back in response order,
/// `prompt_index` = `r / group`.
#[allow(clippy::too_many_arguments)]
pub fn decode_scheduled<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    batch: &Batch<'_>,
    params: &SamplingParams,
    schedule: Schedule,
    tokenizer: Option<&Tokenizer>,
    mut step: impl FnMut(&mut KvCache<B>, &[Feed<'_>]) -> Result<B::Buf>,
    mut on_token: impl FnMut(usize),
) -> Result<Rollouts> {
    let n = batch.prompts.len() * batch.group;
    if batch.seeds.len() != n {
        bail!(
            "{} seeds for {} prompts x {} responses",
            batch.seeds.len(),
            batch.prompts.len(),
            batch.group
        );
    }
    if n == 0 {
        return Ok(Rollouts::default());
    }
    let cap = cache_cap(model, batch.prompts, params)?;
    let t0 = std::time::Instant::now();
    let slots = schedule.slots.clamp(1, n);
    let mut cache = model.new_cache(be, slots, cap);
    let mut stats = SlotStats {
        slots,
        kv_values: cache.k.iter().chain(&cache.v).map(|b| be.len(b)).sum(),
        ..SlotStats::default()
    };
    let mut outs: Vec<Rollout> = batch
        .seeds
        .iter()
        .enumerate()
        .map(|(r, &seed)| Rollout {
            prompt_index: r / batch.group,
            seed,
            tokens: vec![],
            logprobs: vec![],
            stop: StopReason::MaxTokens,
        })
        .collect();
    // Per slot: the response it decodes and the token it feeds next (None: a prefill due).
    let mut held: Vec<Option<(usize, Option<u32>)>> = vec![None; slots];
    let mut next_waiting = 0;
    let vocab = model.cfg.vocab_size;
    // Prompts prefilled in an earlier step that a waiting response may still share, with their
    // last token's logits row (kept until the prompt's last response has started).
    let mut saved: Vec<(usize, B::Buf)> = Vec::new();
    loop {
        // Free slots take waiting responses, in order, within the step's prefill budget. A
        // response shares its prompt's prefill (`Schedule::share_prompts`) when a slot
        // prefills it in this step (`shares`), or when an earlier step's prefill of it is
        // saved and a slot still decodes a response to it (`late`). A sharing slot is not fed:
        // after the step it gets the prompt's rows and draws from the prompt's logits row.
        let mut prefill = 0;
        let mut prefilling: Vec<(usize, usize)> = Vec::new(); // (prompt, slot) this step
        let mut shares: Vec<(usize, usize)> = Vec::new(); // (source slot, slot) this step
        let mut late: Vec<(usize, usize)> = Vec::new(); // (holder slot, slot)
        for slot in 0..slots {
            if held[slot].is_some() {
                continue;
            }
            let r = next_waiting;
            if r == n {
                break;
            }
            let prompt = r / batch.group;
            if schedule.share_prompts {
                if let Some(&(_, src)) = prefilling.iter().find(|(p, _)| *p == prompt) {
                    next_waiting += 1;
                    held[slot] = Some((r, None));
                    shares.push((src, slot));
                    continue;
                }
                // A slot decoding a response to this prompt holds its prompt rows.
                let holder = held.iter().position(|h| {
                    h.is_some_and(|(r2, next)| next.is_some() && r2 / batch.group == prompt)
                });
                if let Some(src) = holder.filter(|_| saved.iter().any(|(p, _)| *p == prompt)) {
                    next_waiting += 1;
                    held[slot] = Some((r, None));
                    late.push((src, slot));
                    continue;
                }
            }
            let len = batch.prompts[prompt].len();
            if prefill > 0 && prefill + len > schedule.prefill_tokens {
                break;
            }
            next_waiting += 1;
            prefill += len;
            held[slot] = Some((r, None));
            prefilling.push((prompt, slot));
        }
        let sharing = |slot: usize| shares.iter().chain(&late).any(|&(_, s)| s == slot);
        let toks: Vec<[u32; 1]> =
            held.iter().map(|h| [h.and_then(|(_, t)| t).unwrap_or(0)]).collect();
        let feeds: Vec<Feed<'_>> = held
            .iter()
            .enumerate()
            .filter(|&(slot, _)| !sharing(slot))
            .filter_map(|(slot, h)| {
                let (r, next) = (*h)?;
                Some(match next {
                    Some(_) => Feed { slot, response: r, tokens: &toks[slot], prefill: false },
                    None => {
                        let tokens = batch.prompts[r / batch.group];
                        Feed { slot, response: r, tokens, prefill: true }
                    }
                })
            })
            .collect();
        // A sharing slot's source is fed (a prefill, or a holder's decode).
        if feeds.is_empty() {
            break;
        }
        let mut logits = step(&mut cache, &feeds)?;
        // (slot, response) of each logits row: the feeds, then the slots sharing a prefill,
        // whose cache rows (the prompt's: a holder has decoded past them) are copies of their
        // source's, and whose logits row is their source's in this step or the saved one.
        let mut order: Vec<(usize, usize)> = feeds.iter().map(|f| (f.slot, f.response)).collect();
        if !shares.is_empty() || !late.is_empty() {
            let response = |slot: usize| held[slot].expect("a held response").0;
            let copies: Vec<(usize, usize, usize)> = shares
                .iter()
                .chain(&late)
                .map(|&(src, slot)| (src, slot, batch.prompts[response(slot) / batch.group].len()))
                .collect();
            cache.share_prefixes(be, &copies)?;
            let mut rows: Vec<usize> = (0..feeds.len()).collect();
            rows.extend(shares.iter().map(|&(src, _)| {
                feeds.iter().position(|f| f.slot == src).expect("a prefill feed")
            }));
            let mut all = be.output_buf((rows.len() + late.len()) * vocab);
            be.gather_rows(&mut all, &logits, &rows, vocab);
            for (i, &(_, slot)) in late.iter().enumerate() {
                let prompt = response(slot) / batch.group;
                let row = &saved.iter().find(|(p, _)| *p == prompt).expect("a saved row").1;
                be.copy(&mut all, (rows.len() + i) * vocab, row, 0, vocab);
            }
            for &(_, slot) in shares.iter().chain(&late) {
                order.push((slot, response(slot)));
                stats.shared += cache.lens[slot];
            }
            logits = all;
        }
        // Prompts prefilled here whose later responses wait: their logits rows, for a slot
        // that frees in a later step; prompts whose responses have all started dropped.
        if schedule.share_prompts {
            saved.retain(|(p, _)| next_waiting < (p + 1) * batch.group);
            for (i, f) in feeds.iter().enumerate().filter(|(_, f)| f.prefill) {
                let prompt = f.response / batch.group;
                if next_waiting < (prompt + 1) * batch.group {
                    let mut row = be.output_buf(vocab);
                    be.copy(&mut row, 0, &logits, i * vocab, vocab);
                    saved.push((prompt, row));
                }
            }
        }
        stats.steps += 1;
        stats.slot_steps += slots;
        stats.busy_slot_steps += order.len();
        stats.prefilled += prefill;
        let rows: Vec<(u64, usize)> =
            order.iter().map(|&(_, r)| (outs[r].seed, outs[r].tokens.len())).collect();
        let drawn = draw_tokens(be, &logits, vocab, params, &rows)?;
        for (&(slot, r), (tok, lp)) in order.iter().zip(drawn) {
            let o = &mut outs[r];
            o.tokens.push(tok);
            o.logprobs.push(lp);
            stats.sampled += 1;
            on_token(r);
            let end = if params.stop_ids.contains(&tok) {
                Some(StopReason::StopToken)
            } else if hits_stop_string(o, params, tokenizer)? {
                Some(StopReason::StopString)
            } else if o.tokens.len() >= params.max_new_tokens {
                Some(StopReason::MaxTokens)
            } else {
                None
            };
            match end {
                Some(stop) => {
                    o.stop = stop;
                    cache.reset(slot);
                    held[slot] = None;
                }
                None => held[slot] = Some((r, Some(tok))),
            }
        }
    }
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(Rollouts { rollouts: outs, stats })
}

/// Tokens a slot must hold: the longest prompt and `max_new_tokens` (any response may land in
/// any slot), refused past the model's positions before any memory is sized by it (a huge
/// `max_new_tokens` would abort on allocation).
fn cache_cap<B: RlOps>(
    model: &Qwen2<B>,
    prompts: &[&[u32]],
    params: &SamplingParams,
) -> Result<usize> {
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        bail!("prompt {i} is empty");
    }
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let limit = model.cfg.max_position_embeddings;
    match longest.checked_add(params.max_new_tokens).filter(|&c| c <= limit) {
        Some(cap) => Ok(cap),
        None => bail!(
            "a prompt of {longest} tokens + max_new_tokens {} exceeds the model's max_position_embeddings {limit}; lower max_new_tokens to at most {}",
            params.max_new_tokens,
            limit.saturating_sub(longest)
        ),
    }
}

fn hits_stop_string(o: &Rollout, p: &SamplingParams, tok: Option<&Tokenizer>) -> Result<bool> {
    let Some(tok) = tok else { return Ok(false) };
    if p.stop_strings.is_empty() {
        return Ok(false);
    }
    // Only the tail can hold a string that just appeared; 64 tokens cover any sane stop string.
    let tail = &o.tokens[o.tokens.len().saturating_sub(64)..];
    let text = tok.decode(tail, true)?;
    Ok(p.stop_strings.iter().any(|s| text.contains(s.as_str())))
}
