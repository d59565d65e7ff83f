//! A Qwen2.5-VL model with random weights, written straight to a Hugging Face directory: the
//! `init-model` shapes for benchmarks and the visual demo's tiny model made from scratch.
//!
//! Initialization is Hugging Face's for `Qwen2_5_VLForConditionalGeneration`
//! (`_init_weights`: every Linear/Conv3d/Embedding weight N(0, initializer_range), biases 0,
//! RMSNorm weights 1). Each tensor draws from its own stream, seeded by the run seed and the
//! tensor's index, so tensors are generated one at a time, in whatever order the writer asks
//! for them, and a 7B model never needs all its weights in memory at once.

use super::init::normal;
use super::params::{ParamLayout, ParamSpec};
use super::safetensors_io::SaveDtype;
use super::vision_config::Qwen2VlConfig;
use super::vision_params::VisionLayout;
use super::vl_save::write_vl_model_files_from;
use crate::fs::write_atomic;
use anyhow::{Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
use std::path::Path;

/// The published Qwen2.5-VL `preprocessor_config.json` (identical for 3B and 7B:
/// huggingface.co/Qwen/Qwen2.5-VL-{3B,7B}-Instruct/blob/main/preprocessor_config.json):
/// 14 px patches, temporal patch 2, 2x2 merge, CLIP mean/std, 3136..12845056 pixels.
pub fn published_preprocessor_config() -> serde_json::Value {
    serde_json::json!({
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor"
    })
}

/// Whether a tensor is an RMSNorm weight (initialized to 1): the decoder's `*norm.weight`, the
/// vision blocks' `norm1`/`norm2` and the merger's `ln_q`.
fn is_norm(name: &str) -> bool {
    ["norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight"].iter().any(|s| name.ends_with(s))
}

/// Tensor `index` of a model's tensors (decoder then vision tower), HF-initialized with `std`.
pub fn init_tensor(spec: &ParamSpec, index: usize, std: f32, seed: u64) -> Vec<f32> {
    let n = spec.numel();
    if is_norm(&spec.name) {
        return vec![1.0; n];
    }
    if spec.name.ends_with(".bias") {
        return vec![0.0; n];
    }
    let mut rng = ChaCha8Rng::seed_from_u64(crate::rl::rollout::mix_seed(seed, index as u64));
    normal(&mut rng, n, std)
}

/// The decoder and vision layouts of `cfg`, and their parameter count.
pub fn vl_layouts(cfg: &Qwen2VlConfig) -> (ParamLayout, VisionLayout, usize) {
    let text = ParamLayout::new(&cfg.text);
    let vision = VisionLayout::new(&cfg.vision);
    let n = text.numel() + vision.numel();
    (text, vision, n)
}

/// Writes a random Qwen2.5-VL model of `cfg` into `dir` (created): `config.json` (the nested
/// layout transformers 5 writes), `model.safetensors` (`dtype`), `preprocessor_config.json`
/// (`preprocessor`), and `tokenizer.json` (+ `tokenizer_config.json` beside it) copied from
/// `tokenizer` when given. Returns the parameter count.
pub fn write_random_vl_model(
    dir: &Path,
    cfg: &Qwen2VlConfig,
    preprocessor: &serde_json::Value,
    dtype: SaveDtype,
    seed: u64,
    tokenizer: Option<&Path>,
) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (text, vision, n) = vl_layouts(cfg);
    let std =
        cfg.text.extra.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02) as f32;
    let specs: Vec<&ParamSpec> = text.specs.iter().chain(&vision.specs).collect();
    let tensor = |i: usize| Ok(Cow::Owned(init_tensor(specs[i], i, std, seed)));
    write_vl_model_files_from(dir, cfg, &text, &vision, tensor, dtype, None)?;
    write_atomic(&dir.join("preprocessor_config.json"), &serde_json::to_vec_pretty(preprocessor)?)?;
    if let Some(src) = tokenizer {
        crate::tokenizer::copy_tokenizer_files(src, dir)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_are_one_biases_zero_weights_random() {
        let s = |name: &str| ParamSpec { name: name.into(), shape: vec![4, 8] };
        for n in ["model.norm.weight", "visual.blocks.0.norm2.weight", "visual.merger.ln_q.weight"]
        {
            assert!(init_tensor(&s(n), 3, 0.02, 1).iter().all(|&x| x == 1.0), "{n}");
        }
        assert!(init_tensor(&s("visual.blocks.0.attn.qkv.bias"), 3, 0.02, 1)
            .iter()
            .all(|&x| x == 0.0));
        let w = init_tensor(&s("visual.blocks.0.attn.qkv.weight"), 3, 0.02, 1);
        assert!(w.iter().all(|x| x.is_finite()) && w.iter().any(|&x| x != 0.0));
        // Its own stream: the same index and seed give the same tensor, another index not.
        assert_eq!(w, init_tensor(&s("visual.blocks.0.attn.qkv.weight"), 3, 0.02, 1));
        assert_ne!(w, init_tensor(&s("visual.blocks.0.attn.qkv.weight"), 4, 0.02, 1));
    }
}
