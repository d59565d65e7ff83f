//! One response from a Qwen2.5-VL model for a prompt holding images: the prompt (image
//! placeholders already expanded) is the KV cache's prefill with the vision features in place
//! of the placeholders (`VlModel::decode_step`), then one token per step, sampled as
//! `rollout::generate` samples (same seed mixing and Philox draws, so a prompt without images
//! gives the same tokens as the text path). Batches of responses decode through the text
//! rollouts' scheduler (`rl::decode_scheduler`), with the vision features fed at each prefill.

use super::decode_scheduler::{decode_scheduled, Batch, Feed, Rollouts, Schedule};
use super::graded::{
    check_resume_point, collect_batches, grade_tokens, reward_item, stop_ids, GradeParams,
    GradedRollout,
};
use super::rollout::{mix_seed, Rollout, SamplingParams};
use crate::backend::rl_ops::RlOps;
use crate::data::prompt::{render_prompt_with_images, PromptStyle};
use crate::data::rl_items::RlItem;
use crate::model::kv_cache::KvCache;
use crate::model::vl_decode::VlStep;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::{expand_image_placeholders, VlImages};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Generates one response to `prompt` (expanded placeholders; `grids` its images in order,
/// `pixels` their patch rows). Stop strings are not supported here (no tokenizer is taken).
/// The image and video placeholder ids are never sampled (their logits are masked: see
/// [`generate_vl_seeded`]); `Rollout::logprobs` are under that masked distribution.
pub fn generate_vl<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    prompt: &[u32],
    grids: &[[usize; 3]],
    pixels: Option<&B::Buf>,
    params: &SamplingParams,
    base_seed: u64,
) -> Result<Rollout> {
    let seed = mix_seed(base_seed, 0);
    generate_vl_seeded(model, be, prompt, grids, pixels, params, seed)
}

/// [`generate_vl`] with the response's own seed (`Rollout::seed`: what `draw_token` takes),
/// as `rollout::generate_at` seeds the responses of a batch.
pub fn generate_vl_seeded<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    prompt: &[u32],
    grids: &[[usize; 3]],
    pixels: Option<&B::Buf>,
    params: &SamplingParams,
    seed: u64,
) -> Result<Rollout> {
    let features = |_: usize| -> Result<Option<B::Buf>> {
        match pixels {
            Some(px) if !grids.is_empty() => Ok(Some(model.image_features(be, grids, px)?)),
            _ => Ok(None),
        }
    };
    let mut r = decode_vl(model, be, &[(prompt, grids)], 1, params, &[seed], features)?;
    Ok(r.rollouts.remove(0))
}

/// One response per seed to the same `prompt`, decoded together (one KV-cache slot per
/// response while `params.kv_slots` allows). Each response is the one
/// [`generate_vl_seeded`] gives for its seed where the backend's decode is batch-invariant
/// (the CPU's and the emulator's are). `images` are the prompt's, preprocessed.
pub fn generate_vl_group<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    prompt: &[u32],
    images: &VlImages,
    params: &SamplingParams,
    seeds: &[u64],
) -> Result<Vec<Rollout>> {
    let group = seeds.len();
    generate_vl_batch(model, be, &[(prompt, images)], group, params, seeds)
}

/// `group` responses to each of `prompts`, response `g` of prompt `i` with seed
/// `seeds[i * group + g]`, prompt-major (`Rollout::prompt_index` = `i`).
pub fn generate_vl_batch<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    prompts: &[(&[u32], &VlImages)],
    group: usize,
    params: &SamplingParams,
    seeds: &[u64],
) -> Result<Vec<Rollout>> {
    Ok(generate_vl_scheduled(model, be, prompts, group, params, seeds)?.rollouts)
}

/// [`generate_vl_batch`] with the scheduler's account of the slots. The responses decode on
/// `params.kv_slots` KV-cache slots with continuous batching (`rl::decode_scheduler`, the
/// text rollouts' scheduler); the vision tower runs once per prompt, when its first response
/// takes a slot, and its features are kept until its last response has been prefilled.
pub fn generate_vl_scheduled<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    prompts: &[(&[u32], &VlImages)],
    group: usize,
    params: &SamplingParams,
    seeds: &[u64],
) -> Result<Rollouts> {
    let merge = model.cfg.vision.spatial_merge_size;
    let slots: Vec<(&[u32], &[[usize; 3]])> =
        prompts.iter().map(|(ids, im)| (*ids, im.grids.as_slice())).collect();
    let features = |i: usize| -> Result<Option<B::Buf>> {
        let im = prompts[i].1;
        if im.token_counts(merge).iter().sum::<usize>() == 0 {
            return Ok(None);
        }
        Ok(Some(model.image_features(be, &im.grids, &be.upload(&im.pixels))?))
    };
    decode_vl(model, be, &slots, group, params, seeds, features)
}

/// The decode loop of every VL generation: `group` responses to each of `prompts` (prompt
/// ids and its images' grids), response `r` seeded `seeds[r]`, through the rollout
/// scheduler. `features_of(i)` gives the vision features of prompt `i`'s images (None
/// without images); it is called once per prompt, when its first response is prefilled.
fn decode_vl<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    prompts: &[(&[u32], &[[usize; 3]])],
    group: usize,
    params: &SamplingParams,
    seeds: &[u64],
    mut features_of: impl FnMut(usize) -> Result<Option<B::Buf>>,
) -> Result<Rollouts> {
    params.validate()?;
    if !params.stop_strings.is_empty() {
        bail!("stop strings are not supported for a vision-language prompt");
    }
    let n = prompts.len() * group;
    if seeds.len() != n {
        bail!("{} seeds for {} prompts x {group} responses", seeds.len(), prompts.len());
    }
    let vocab = model.cfg.text.vocab_size;
    let d = model.cfg.text.hidden_size;
    // A response never holds an image (or video) placeholder: fed back, it would read as an
    // image without pixels (transformers' forward then fails its placeholder count check, as
    // `VlModel::pack` does here). Those ids are never sampled: their logits are set to -inf on
    // the backend before the sampler runs there.
    let banned: Vec<usize> = [model.cfg.image_token_id, model.cfg.video_token_id]
        .into_iter()
        .map(|id| id as usize)
        .filter(|&id| id < vocab)
        .collect();
    let neg_inf = be.upload(&[f32::NEG_INFINITY]);
    // Per prompt, its M-RoPE offset (set by its prefill; a response that shares another slot's
    // prefill of its prompt, `Schedule::share_prompts`, needs it too), handed to the model per
    // slot; per prompt being prefilled, its vision features.
    let mut deltas: Vec<i64> = Vec::new();
    let mut prompt_deltas: HashMap<usize, i64> = HashMap::new();
    let mut held: HashMap<usize, Option<B::Buf>> = HashMap::new();
    let step = |cache: &mut KvCache<B>, feeds: &[Feed<'_>]| -> Result<B::Buf> {
        deltas.resize(cache.lens.len(), 0);
        for f in feeds.iter().filter(|f| !f.prefill) {
            deltas[f.slot] = prompt_deltas[&(f.response / group)];
        }
        let grids_of = |f: &Feed<'_>| -> &[[usize; 3]] {
            if f.prefill {
                prompts[f.response / group].1
            } else {
                &[]
            }
        };
        for f in feeds.iter().filter(|f| !grids_of(f).is_empty()) {
            let i = f.response / group;
            if let std::collections::hash_map::Entry::Vacant(e) = held.entry(i) {
                e.insert(features_of(i)?);
            }
        }
        let mut steps = Vec::with_capacity(feeds.len());
        let mut parts = Vec::new();
        for f in feeds {
            let grids = grids_of(f);
            if !grids.is_empty() {
                parts.extend(held[&(f.response / group)].as_ref());
            }
            steps.push(VlStep { slot: f.slot, tokens: f.tokens, grids });
        }
        // The step's images in order: one prompt's features as they are, several copied
        // back to back.
        let joined;
        let features = match parts.as_slice() {
            [] => None,
            [one] => Some(*one),
            many => {
                let total: usize = many.iter().map(|f| be.len(f)).sum();
                let mut all = be.zeros(total);
                let mut at = 0;
                for f in many {
                    be.copy(&mut all, at, f, 0, be.len(f));
                    at += be.len(f);
                }
                joined = all;
                Some(&joined)
            }
        };
        debug_assert!(features.is_none_or(|f| be.len(f) % d == 0));
        let mut logits = model.decode_step_features(be, cache, &steps, &mut deltas, features)?;
        for j in 0..feeds.len() {
            for &id in &banned {
                be.copy(&mut logits, j * vocab + id, &neg_inf, 0, 1);
            }
        }
        for f in feeds.iter().filter(|f| f.prefill) {
            prompt_deltas.insert(f.response / group, deltas[f.slot]);
        }
        // A prompt's features go once its last response is prefilled, or a later prompt's
        // first is (responses take slots in order: every response of the earlier prompts has
        // started, by its own prefill or by sharing one).
        for f in feeds.iter().filter(|f| f.prefill && f.response % group == group - 1) {
            held.remove(&(f.response / group));
        }
        if let Some(latest) = feeds.iter().filter(|f| f.prefill).map(|f| f.response / group).max() {
            held.retain(|&prompt, _| prompt >= latest);
        }
        Ok(logits)
    };
    let views: Vec<&[u32]> = prompts.iter().map(|p| p.0).collect();
    let batch = Batch { prompts: &views, group, seeds };
    let longest = views.iter().map(|p| p.len()).max().unwrap_or(0);
    let cap = longest.saturating_add(params.max_new_tokens);
    let schedule = Schedule::new(be, &model.text, params.kv_slots, n, cap);
    decode_scheduled(&model.text, be, &batch, params, schedule, None, step, |_| {})
}

/// [`crate::rl::graded::sample_and_grade`] for a Qwen2.5-VL model: each item's images (paths
/// already resolved) are preprocessed, its prompt rendered with one image block per image
/// ([`render_prompt_with_images`]) and expanded, and `per_item` responses generated, the
/// responses of `batch_items` items together ([`generate_vl_batch`]; response `r` of item `i` uses seed
/// `mix_seed(seed, i * per_item + r)`, whatever the batching), then graded.
/// `model_dir` holds the checkpoint's preprocessor_config.json.
pub fn sample_and_grade_vl<B: RlOps>(
    model: &VlModel<B>,
    model_dir: &Path,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &GradeParams,
    on_progress: impl FnMut(usize),
) -> Result<Vec<Vec<GradedRollout>>> {
    collect_batches(items.len(), on_progress, |sink| {
        sample_and_grade_vl_batches(model, model_dir, be, tok, items, params, 0, sink)
    })
}

/// [`sample_and_grade_vl`] from item `first` on, a batch at a time (as
/// `graded::sample_and_grade_batches`: the batches and seeds of a whole run).
#[allow(clippy::too_many_arguments)]
pub fn sample_and_grade_vl_batches<B: RlOps>(
    model: &VlModel<B>,
    model_dir: &Path,
    be: &B,
    tok: &Tokenizer,
    items: &[RlItem],
    params: &GradeParams,
    first: usize,
    mut on_batch: impl FnMut(usize, Vec<Vec<GradedRollout>>) -> Result<()>,
) -> Result<()> {
    if params.per_item == 0 {
        bail!("responses per item must be positive");
    }
    check_resume_point(first, params.batch_items, items.len())?;
    let mut sampling = params.sampling.clone();
    if sampling.stop_ids.is_empty() {
        sampling.stop_ids = stop_ids(&model.text, tok);
    }
    sampling.validate()?;
    let merge = model.cfg.vision.spatial_merge_size;
    let per = params.per_item;
    for start in (first..items.len()).step_by(params.batch_items.max(1)) {
        let end = (start + params.batch_items.max(1)).min(items.len());
        let mut prompts = Vec::with_capacity(end - start);
        for (i, item) in items.iter().enumerate().take(end).skip(start) {
            let ctx = || format!("item {:?}", item.id_or(i));
            let paths: Vec<PathBuf> = item.images.iter().map(PathBuf::from).collect();
            let images = VlImages::load(&paths, model_dir, &model.cfg.vision).with_context(ctx)?;
            let counts = images.token_counts(merge);
            let ids =
                encode_vl_prompt(tok, item, params.prompt_style, &counts, model.cfg.image_token_id)
                    .with_context(ctx)?;
            prompts.push((ids, images));
        }
        // Response r of item i is generate_vl's with seed mix_seed(seed, i * per_item + r).
        let seeds: Vec<u64> = (start * per..end * per)
            .map(|k| mix_seed(mix_seed(params.seed, k as u64), 0))
            .collect();
        let batch: Vec<(&[u32], &VlImages)> =
            prompts.iter().map(|(ids, im)| (ids.as_slice(), im)).collect();
        let rollouts = generate_vl_batch(model, be, &batch, per, &sampling, &seeds)
            .with_context(|| format!("items {start}..{end}"))?;
        let mut graded_batch = Vec::with_capacity(end - start);
        for (k, ro_group) in rollouts.chunks(per).enumerate() {
            let reference = reward_item(&items[start + k]);
            let mut graded = Vec::with_capacity(per);
            for ro in ro_group {
                let (text, verdict, reward) =
                    grade_tokens(tok, &ro.tokens, &sampling.stop_ids, &params.reward, &reference)?;
                let tokens = ro.tokens.clone();
                graded.push(GradedRollout { tokens, text, verdict, reward, stop: ro.stop });
            }
            graded_batch.push(graded);
        }
        on_batch(start, graded_batch)?;
    }
    Ok(())
}

/// The token ids of `item`'s prompt for a Qwen2.5-VL model: rendered with one image block per
/// image ([`render_prompt_with_images`]), tokenized, and each image's placeholder expanded to
/// `counts[image]` tokens (its merged patch count). Rollouts, evaluation and the `train`
/// pipeline's RL prompts all come here.
pub fn encode_vl_prompt(
    tok: &Tokenizer,
    item: &RlItem,
    style: PromptStyle,
    counts: &[usize],
    image_token_id: u32,
) -> Result<Vec<u32>> {
    let text = render_prompt_with_images(
        tok,
        &item.problem,
        item.system.as_deref(),
        style,
        item.images.len(),
    )?;
    let ids = tok.encode(&text)?;
    let mut e = expand_image_placeholders(&[ids], image_token_id, counts)?;
    Ok(e.seqs.remove(0))
}
