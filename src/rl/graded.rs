//! Rollouts of RL items, decoded and graded: the first half shared by VAS scoring
//! (`rl::scoring`), evaluation (`rl::evaluate`) and the RL step.

use crate::backend::rl_ops::RlOps;
use crate::backend::Backend;
use crate::data::prompt::{render_prompt, PromptStyle};
use crate::data::rl_items::RlItem;
use crate::model::{Qwen2, Qwen2Config};
use crate::rl::reward::{RewardConfig, RewardItem, Verdict};
use crate::rl::rollout::{generate, mix_seed, SamplingParams, StopReason};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};

/// One response to an item, with its grading (serializable: a scoring pass keeps finished
/// batches of them on disk, `rl::partial_results`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GradedRollout {
    /// The generated ids, exact length, the stop token included (as verl keeps the EOS).
    pub tokens: Vec<u32>,
    /// The decoded response without the stop token and special tokens: what is graded.
    pub text: String,
    pub verdict: Verdict,
    /// `reward.total(&verdict)`.
    pub reward: f32,
    pub stop: StopReason,
}

/// How items are sampled and graded.
#[derive(Clone, Debug)]
pub struct GradeParams {
    /// Temperature, top-p, top-k and length; stop ids are filled in by [`stop_ids`] when empty.
    pub sampling: SamplingParams,
    /// Responses per item.
    pub per_item: usize,
    pub prompt_style: PromptStyle,
    /// Items whose rollouts are decoded together (the KV cache holds `batch_items * per_item`).
    pub batch_items: usize,
    pub seed: u64,
    pub reward: RewardConfig,
}

/// The ids that end a response: the tokenizer's end-of-turn ids and the config's EOS ids.
pub fn stop_ids<B: Backend>(model: &Qwen2<B>, tok: &Tokenizer) -> Vec<u32> {
    stop_ids_of(&model.cfg, tok)
}

/// [`stop_ids`] from the model's config alone (no weights needed).
pub fn stop_ids_of(cfg: &Qwen2Config, tok: &Tokenizer) -> Vec<u32> {
    let mut ids = tok.stop_ids();
    ids.extend(cfg.eos_ids());
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The reference an item is graded against (`load_rl_items` guarantees an answer).
pub fn reward_item(item: &RlItem) -> RewardItem {
    RewardItem { answer: item.answer.clone().unwrap_or_default(), options: item.options.clone() }
}

/// Token ids of every item's prompt; an item whose prompt plus `max_new_tokens` would not fit
/// the model's positions is an error naming it, before any time is spent generating.
pub fn encode_prompts(
    model: &Qwen2Config,
    tok: &Tokenizer,
    items: &[RlItem],
    style: PromptStyle,
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    let limit = model.max_position_embeddings;
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let id = it.id_or(i);
            let ids = tok.encode(&render_prompt(tok, &it.problem, it.system.as_deref(), style)?).with_context(|| format!("item {id:?}"))?;
            model.check_ids(&ids).with_context(|| format!("item {id:?}: the tokenizer does not match the model"))?;
            if ids.len() + max_new_tokens > limit {
                bail!(
                    "item {id:?}: prompt of {} tokens + {max_new_tokens} new tokens exceeds the model's max_position_embeddings {limit}",
                    ids.len()
                );
            }
            Ok(ids)
        })
        .collect()
}

/// Grades one response: the text is the decoded tokens without stop ids and special tokens
/// (the stop token ends the turn; it is not part of the answer the format reward reads).
pub fn grade_tokens(
    tok: &Tokenizer,
    tokens: &[u32],
    stop_ids: &[u32],
    reward: &RewardConfig,
    reference: &RewardItem,
) -> Result<(String, Verdict, f32)> {
    let body: Vec<u32> = tokens.iter().copied().filter(|t| !stop_ids.contains(t)).collect();
    let text = tok.decode(&body, false)?;
    let verdict = reward.grade(&text, reference);
    let total = reward.total(&verdict);
    Ok((text, verdict, total))
}

/// `params.per_item` graded responses for every item, in item order; `on_progress(done)` is
/// called after each batch with the number of items finished. A batch generates with seed
/// `mix_seed(seed, index of its first item)`: results are reproducible for a fixed seed and
/// `batch_items`.
pub fn sample_and_grade<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &GradeParams,
    on_progress: impl FnMut(usize),
) -> Result<Vec<Vec<GradedRollout>>> {
    collect_batches(items.len(), on_progress, |sink| {
        sample_and_grade_batches(model, be, tok, items, params, 0, sink)
    })
}

/// A pass over `n` items in batches of `batch` may start at `first` only where a batch starts
/// (or past the end): elsewhere its batches, and their seeds, would not be a whole run's.
pub(crate) fn check_resume_point(first: usize, batch: usize, n: usize) -> Result<()> {
    if !first.is_multiple_of(batch.max(1)) && first < n {
        bail!("resuming at item {first}: not the start of a batch of {batch}");
    }
    Ok(())
}

/// Where a pass hands each finished batch: `(its first item, its graded rollouts)`.
pub type BatchSink<'a> = &'a mut dyn FnMut(usize, Vec<Vec<GradedRollout>>) -> Result<()>;

/// Every batch of a pass from item 0 (`run(sink)`, a `*_batches` function), collected in item
/// order, with `on_progress(items done)` after each: the form that keeps nothing on disk.
pub(crate) fn collect_batches(
    n: usize,
    mut on_progress: impl FnMut(usize),
    run: impl FnOnce(BatchSink<'_>) -> Result<()>,
) -> Result<Vec<Vec<GradedRollout>>> {
    let mut out = Vec::with_capacity(n);
    run(&mut |_, graded| {
        out.extend(graded);
        on_progress(out.len());
        Ok(())
    })?;
    Ok(out)
}

/// [`sample_and_grade`] from item `first` on (a multiple of `params.batch_items`: each batch,
/// and so each rollout's seed, is the one a whole run has, so a run resumed there continues
/// it exactly), handing each batch to `on_batch(first item, graded rollouts)` as it finishes.
pub fn sample_and_grade_batches<B: RlOps>(
    model: &Qwen2<B>,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &GradeParams,
    first: usize,
    mut on_batch: impl FnMut(usize, Vec<Vec<GradedRollout>>) -> Result<()>,
) -> Result<()> {
    if params.per_item == 0 || params.batch_items == 0 {
        bail!("responses per item and items per batch must be positive");
    }
    check_resume_point(first, params.batch_items, items.len())?;
    let mut sampling = params.sampling.clone();
    if sampling.stop_ids.is_empty() {
        sampling.stop_ids = stop_ids(model, tok);
    }
    sampling.validate()?;
    let prompts =
        encode_prompts(&model.cfg, tok, items, params.prompt_style, sampling.max_new_tokens)?;
    for start in (first..items.len()).step_by(params.batch_items) {
        let end = (start + params.batch_items).min(items.len());
        let rollouts = generate(
            model,
            be,
            &prompts[start..end],
            params.per_item,
            &sampling,
            mix_seed(params.seed, start as u64),
            Some(tok),
            |_| {},
        )?;
        let mut it = rollouts.into_iter();
        let mut batch = Vec::with_capacity(end - start);
        for (k, item) in items[start..end].iter().enumerate() {
            let reference = reward_item(item);
            let mut graded = Vec::with_capacity(params.per_item);
            for r in it.by_ref().take(params.per_item) {
                debug_assert_eq!(r.prompt_index, k);
                let (text, verdict, reward) =
                    grade_tokens(tok, &r.tokens, &sampling.stop_ids, &params.reward, &reference)?;
                graded.push(GradedRollout {
                    tokens: r.tokens,
                    text,
                    verdict,
                    reward,
                    stop: r.stop,
                });
            }
            batch.push(graded);
        }
        on_batch(start, batch)?;
    }
    Ok(())
}
