//! One response from a Qwen2.5-VL model for a prompt holding images: the prompt (image
//! placeholders already expanded) is the KV cache's prefill with the vision features in place
//! of the placeholders (`VlModel::decode_step`), then one token per step, sampled as
//! `rollout::generate` samples (same seed mixing and Philox draws, so a prompt without images gives the same
//! tokens as the text path).

use super::graded::{grade_tokens, reward_item, stop_ids, GradeParams, GradedRollout};
use super::rollout::{draw_tokens, mix_seed, Rollout, SamplingParams, StopReason};
use crate::backend::rl_ops::RlOps;
use crate::data::prompt::{render_prompt_with_images, PromptStyle};
use crate::data::rl_items::RlItem;
use crate::model::vl_decode::VlStep;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::{expand_image_placeholders, VlImages};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
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
    let features = match pixels {
        Some(px) if !grids.is_empty() => Some(model.image_features(be, grids, px)?),
        _ => None,
    };
    let mut r = decode_slots(model, be, &[(prompt, grids)], features.as_ref(), params, &[seed])?;
    Ok(r.remove(0))
}

/// One response per seed to the same `prompt`, decoded together in one KV cache (one slot
/// per response: a prefill of all of them, then one step for every unfinished one). Each
/// response is the one [`generate_vl_seeded`] gives for its seed where the backend's decode
/// is batch-invariant (the CPU's is). `images` are the prompt's, preprocessed.
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

/// Prompts (with their preprocessed images) decoded at most this many responses to a KV
/// cache: each slot's prefill holds a copy of its prompt's vision features, so the slots of
/// one cache bound that memory (and the prefill's size). It changes only how the work is
/// split, never a response (each is a function of its seed where decoding is
/// batch-invariant).
pub const VL_SLOTS_PER_CACHE: usize = 64;

/// `group` responses to each of `prompts`, response `g` of prompt `i` with seed
/// `seeds[i * group + g]`, prompt-major (`Rollout::prompt_index` = `i`). The responses of
/// whole prompts share a KV cache, up to [`VL_SLOTS_PER_CACHE`] slots. The vision tower
/// runs once per prompt; its slots copy the features.
pub fn generate_vl_batch<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    prompts: &[(&[u32], &VlImages)],
    group: usize,
    params: &SamplingParams,
    seeds: &[u64],
) -> Result<Vec<Rollout>> {
    if seeds.len() != prompts.len() * group {
        bail!("{} seeds for {} prompts x {group} responses", seeds.len(), prompts.len());
    }
    let per_cache = (VL_SLOTS_PER_CACHE / group.max(1)).max(1);
    let mut out = Vec::with_capacity(seeds.len());
    for (c, chunk) in prompts.chunks(per_cache).enumerate() {
        let first = c * per_cache;
        let slots: Vec<(&[u32], &[[usize; 3]])> = chunk
            .iter()
            .flat_map(|(ids, im)| std::iter::repeat_n((*ids, im.grids.as_slice()), group))
            .collect();
        let d = model.cfg.text.hidden_size;
        let merge = model.cfg.vision.spatial_merge_size;
        let mut per_prompt = Vec::with_capacity(chunk.len());
        for (_, im) in chunk {
            let rows: usize = im.token_counts(merge).iter().sum();
            let f = if rows == 0 {
                None
            } else {
                Some(model.image_features(be, &im.grids, &be.upload(&im.pixels))?)
            };
            per_prompt.push((f, rows));
        }
        let total: usize = per_prompt.iter().map(|(_, r)| r * group).sum();
        let features = (total > 0).then(|| {
            let mut all = be.zeros(total * d);
            let mut at = 0;
            for (f, rows) in &per_prompt {
                for _ in 0..group {
                    if let Some(f) = f {
                        be.copy(&mut all, at * d, f, 0, rows * d);
                    }
                    at += rows;
                }
            }
            all
        });
        let sd = &seeds[first * group..(first + chunk.len()) * group];
        let rs = decode_slots(model, be, &slots, features.as_ref(), params, sd)?;
        out.extend(rs.into_iter().enumerate().map(|(s, mut r)| {
            r.prompt_index = first + s / group.max(1);
            r
        }));
    }
    Ok(out)
}

/// The decode loop of every VL generation: slot `s` decodes `slots[s]` (prompt ids and its
/// images' grids) with seed `seeds[s]`; `features` holds the vision features of all slots'
/// images, slot order.
fn decode_slots<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    slots: &[(&[u32], &[[usize; 3]])],
    features: Option<&B::Buf>,
    params: &SamplingParams,
    seeds: &[u64],
) -> Result<Vec<Rollout>> {
    params.validate()?;
    if !params.stop_strings.is_empty() {
        bail!("stop strings are not supported for a vision-language prompt");
    }
    if slots.iter().any(|(p, _)| p.is_empty()) {
        bail!("the prompt is empty");
    }
    let n = seeds.len();
    if n == 0 {
        return Ok(vec![]);
    }
    debug_assert_eq!(n, slots.len());
    let limit = model.cfg.text.max_position_embeddings;
    let longest = slots.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let Some(cap) = longest.checked_add(params.max_new_tokens).filter(|&c| c <= limit) else {
        bail!(
            "a prompt of {longest} tokens (images expanded) + max_new_tokens {} exceeds the model's max_position_embeddings {limit}; lower max_new_tokens to at most {}",
            params.max_new_tokens,
            limit.saturating_sub(longest)
        );
    };
    let mut cache = model.text.new_cache(be, n, cap);
    let mut deltas = vec![0i64; n];
    let mut outs: Vec<Rollout> = seeds
        .iter()
        .map(|&seed| Rollout {
            prompt_index: 0,
            seed,
            tokens: vec![],
            logprobs: vec![],
            stop: StopReason::MaxTokens,
        })
        .collect();
    let vocab = model.cfg.text.vocab_size;
    let prefill: Vec<VlStep> = slots
        .iter()
        .enumerate()
        .map(|(slot, &(tokens, grids))| VlStep { slot, tokens, grids })
        .collect();
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
    let mut logits = model.decode_step_features(be, &mut cache, &prefill, &mut deltas, features)?;
    let mut active: Vec<usize> = (0..n).collect();
    loop {
        for j in 0..active.len() {
            for &id in &banned {
                be.copy(&mut logits, j * vocab + id, &neg_inf, 0, 1);
            }
        }
        let rows: Vec<(u64, usize)> =
            active.iter().map(|&s| (outs[s].seed, outs[s].tokens.len())).collect();
        let drawn = draw_tokens(be, &logits, vocab, params, &rows)?;
        let mut next: Vec<(usize, [u32; 1])> = Vec::with_capacity(active.len());
        for (&s, (tok, lp)) in active.iter().zip(drawn) {
            let o = &mut outs[s];
            o.tokens.push(tok);
            o.logprobs.push(lp);
            if params.stop_ids.contains(&tok) {
                o.stop = StopReason::StopToken;
            } else if o.tokens.len() < params.max_new_tokens {
                next.push((s, [tok]));
            }
        }
        if next.is_empty() {
            break;
        }
        let steps: Vec<VlStep> =
            next.iter().map(|(s, t)| VlStep { slot: *s, tokens: t, grids: &[] }).collect();
        logits = model.decode_step_features(be, &mut cache, &steps, &mut deltas, None)?;
        active = next.iter().map(|(s, _)| *s).collect();
    }
    Ok(outs)
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
    mut on_progress: impl FnMut(usize),
) -> Result<Vec<Vec<GradedRollout>>> {
    if params.per_item == 0 {
        bail!("responses per item must be positive");
    }
    let mut sampling = params.sampling.clone();
    if sampling.stop_ids.is_empty() {
        sampling.stop_ids = stop_ids(&model.text, tok);
    }
    sampling.validate()?;
    let merge = model.cfg.vision.spatial_merge_size;
    let per = params.per_item;
    let mut out = Vec::with_capacity(items.len());
    for start in (0..items.len()).step_by(params.batch_items.max(1)) {
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
        for (k, ro_group) in rollouts.chunks(per).enumerate() {
            let reference = reward_item(&items[start + k]);
            let mut graded = Vec::with_capacity(per);
            for ro in ro_group {
                let (text, verdict, reward) =
                    grade_tokens(tok, &ro.tokens, &sampling.stop_ids, &params.reward, &reference)?;
                let tokens = ro.tokens.clone();
                graded.push(GradedRollout { tokens, text, verdict, reward, stop: ro.stop });
            }
            out.push(graded);
        }
        on_progress(end);
    }
    Ok(out)
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
    let text = render_prompt_with_images(&item.problem, style, item.images.len())?;
    let ids = tok.encode(&text)?;
    let mut e = expand_image_placeholders(&[ids], image_token_id, counts)?;
    Ok(e.seqs.remove(0))
}
