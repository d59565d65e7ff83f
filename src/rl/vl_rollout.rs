//! One response from a Qwen2.5-VL model for a prompt holding images: the prompt (image
//! placeholders already expanded) is the KV cache's prefill with the vision features in place
//! of the placeholders (`VlModel::decode_step`), then one token per step, sampled as
//! `rollout::generate` samples (same seed mixing and Philox draws, so a prompt without images gives the same
//! tokens as the text path).

use super::graded::{grade_tokens, reward_item, stop_ids, GradeParams, GradedRollout};
use super::rollout::{draw_tokens, mix_seed, Rollout, SamplingParams, StopReason};
use crate::backend::rl_ops::RlOps;
use crate::data::prompt::render_prompt_with_images;
use crate::data::rl_items::RlItem;
use crate::model::vl_decode::VlStep;
use crate::model::vl_forward::VlModel;
use crate::model::vl_prompt::{expand_image_placeholders, VlImages};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Generates one response to `prompt` (expanded placeholders; `grids` its images in order,
/// `pixels` their patch rows). Stop strings are not supported here (no tokenizer is taken).
pub fn generate_vl<B: RlOps>(
    model: &VlModel<B>,
    be: &B,
    prompt: &[u32],
    grids: &[[usize; 3]],
    pixels: Option<&B::Buf>,
    params: &SamplingParams,
    base_seed: u64,
) -> Result<Rollout> {
    params.validate()?;
    if !params.stop_strings.is_empty() {
        bail!("stop strings are not supported for a vision-language prompt");
    }
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let limit = model.cfg.text.max_position_embeddings;
    let Some(cap) = prompt.len().checked_add(params.max_new_tokens).filter(|&c| c <= limit) else {
        bail!(
            "a prompt of {} tokens (images expanded) + max_new_tokens {} exceeds the model's max_position_embeddings {limit}; lower max_new_tokens to at most {}",
            prompt.len(),
            params.max_new_tokens,
            limit.saturating_sub(prompt.len())
        );
    };
    let mut cache = model.text.new_cache(be, 1, cap);
    let mut deltas = [0i64];
    let mut out = Rollout {
        prompt_index: 0,
        seed: mix_seed(base_seed, 0),
        tokens: vec![],
        logprobs: vec![],
        stop: StopReason::MaxTokens,
    };
    let vocab = model.cfg.text.vocab_size;
    let mut step = VlStep { slot: 0, tokens: prompt, grids };
    let mut last;
    let mut pix = pixels;
    loop {
        let logits = model.decode_step_logits(be, &mut cache, &[step], &mut deltas, pix)?;
        let (tok, lp) =
            draw_tokens(be, &logits, vocab, params, &[(out.seed, out.tokens.len())])?[0];
        out.tokens.push(tok);
        out.logprobs.push(lp);
        if params.stop_ids.contains(&tok) {
            out.stop = StopReason::StopToken;
            break;
        }
        if out.tokens.len() >= params.max_new_tokens {
            break;
        }
        last = [tok];
        step = VlStep { slot: 0, tokens: &last, grids: &[] };
        pix = None;
    }
    Ok(out)
}

/// [`crate::rl::graded::sample_and_grade`] for a Qwen2.5-VL model: each item's images (paths
/// already resolved) are preprocessed, its prompt rendered with one image block per image
/// ([`render_prompt_with_images`]) and expanded, and `per_item` responses generated one at a
/// time (response `r` of item `i` uses seed `mix_seed(seed, i * per_item + r)`), then graded.
/// `batch_items` is not used: images make every prefill different, so items decode alone.
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
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = item.id_or(i);
        let ctx = || format!("item {id:?}");
        let paths: Vec<PathBuf> = item.images.iter().map(PathBuf::from).collect();
        let images = VlImages::load(&paths, model_dir, &model.cfg.vision).with_context(ctx)?;
        let text = render_prompt_with_images(&item.problem, params.prompt_style, paths.len())
            .with_context(ctx)?;
        let ids = tok.encode(&text).with_context(ctx)?;
        let counts = images.token_counts(merge);
        let mut e = expand_image_placeholders(&[ids], model.cfg.image_token_id, &counts)
            .with_context(ctx)?;
        let ids = e.seqs.remove(0);
        let pixels = (!images.grids.is_empty()).then(|| be.upload(&images.pixels));
        let reference = reward_item(item);
        let mut graded = Vec::with_capacity(params.per_item);
        for r in 0..params.per_item {
            let seed = mix_seed(params.seed, (i * params.per_item + r) as u64);
            let ro = generate_vl(model, be, &ids, &images.grids, pixels.as_ref(), &sampling, seed)
                .with_context(ctx)?;
            let (text, verdict, reward) =
                grade_tokens(tok, &ro.tokens, &sampling.stop_ids, &params.reward, &reference)?;
            graded.push(GradedRollout { tokens: ro.tokens, text, verdict, reward, stop: ro.stop });
        }
        out.push(graded);
        on_progress(i + 1);
    }
    Ok(out)
}
