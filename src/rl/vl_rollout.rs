//! One response from a Qwen2.5-VL model for a prompt holding images: the prompt (image
//! placeholders already expanded) is the KV cache's prefill with the vision features in place
//! of the placeholders (`VlModel::decode_step`), then one token per step, sampled as
//! `rollout::generate` samples (same seed mixing, so a prompt without images gives the same
//! tokens as the text path).

use super::rollout::{mix_seed, sample_token, Rollout, SamplingParams, StopReason};
use crate::backend::Backend;
use crate::model::vl_decode::VlStep;
use crate::model::vl_forward::VlModel;
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Generates one response to `prompt` (expanded placeholders; `grids` its images in order,
/// `pixels` their patch rows). Stop strings are not supported here (no tokenizer is taken).
pub fn generate_vl<B: Backend>(
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
    let mut rng = ChaCha8Rng::seed_from_u64(out.seed);
    let vocab = model.cfg.text.vocab_size;
    let mut step = VlStep { slot: 0, tokens: prompt, grids };
    let mut last;
    let mut pix = pixels;
    loop {
        let logits = model.decode_step(be, &mut cache, &[step], &mut deltas, pix)?;
        let u: f64 = rng.gen();
        let (tok, lp) = sample_token(&logits[..vocab], params, u);
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
