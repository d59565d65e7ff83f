//! Supervised fine-tuning data with images, for a Qwen2.5-VL model: the conversations of
//! `sft_data` with their image files, rendered with one `<|vision_start|><|image_pad|>
//! <|vision_end|>` block per image, tokenized with the trained-token mask, and each image's
//! `<|image_pad|>` expanded to its merged patch count (as transformers'
//! `Qwen2_5_VLProcessor` expands it; `model::vl_prompt`).
//!
//! Where the images go: each `<image>` marker in a non-assistant turn (the convention of
//! MMR1's ShareGPT data, LLaMA-Factory's and verl's) is the next image; a conversation without
//! markers gets all its blocks at the start of its first user turn, in image order (the rule
//! `eval` uses for RL items). Markers and images must be as many.
//!
//! The patch grid of each image follows from its size alone (the "smart resize" rule of the
//! checkpoint's `preprocessor_config.json`), so loading reads only the image headers: the
//! pixels are decoded when a step uses them (`train::vl_sft`).

use super::sft_data::{load_jsonl_with_images, tokenize, SftExample};
use crate::model::vision_config::Qwen2VlConfig;
use crate::model::vision_preprocess::{smart_resize, PreprocessorConfig};
use crate::model::vl_prompt::IMAGE_PLACEHOLDER;
use crate::tokenizer::{Message, Tokenizer};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// A tokenized conversation with images: `ex.ids` holds each image's placeholder run
/// (`image_token_id` repeated, never trained), `images` the files in order and `grids` their
/// patch grids `(t, h, w)`.
#[derive(Clone, Debug, PartialEq)]
pub struct VlSftExample {
    pub ex: SftExample,
    pub images: Vec<PathBuf>,
    pub grids: Vec<[usize; 3]>,
}

/// The patch grid `[1, h / patch, w / patch]` the preprocessor gives an image of
/// `width x height` (a still image is one temporal patch).
pub fn image_grid(width: usize, height: usize, pc: &PreprocessorConfig) -> Result<[usize; 3]> {
    let (h, w) = if pc.do_resize {
        smart_resize(height, width, pc.factor(), pc.min_pixels, pc.max_pixels)?
    } else {
        (height, width)
    };
    let unit = pc.patch_size * pc.merge_size;
    if !h.is_multiple_of(unit) || !w.is_multiple_of(unit) {
        bail!("image of {w}x{h} is not a multiple of patch_size * merge_size = {unit}");
    }
    Ok([1, h / pc.patch_size, w / pc.patch_size])
}

/// The grid of an image file from its header (PNG, JPEG, WebP); errors name the file.
pub fn image_file_grid(path: &Path, pc: &PreprocessorConfig) -> Result<[usize; 3]> {
    let (w, h) = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| anyhow!("cannot read image {}: {e}", path.display()))?
        .into_dimensions()
        .map_err(|e| anyhow!("cannot decode image {}: {e}", path.display()))?;
    image_grid(w as usize, h as usize, pc).with_context(|| format!("image {}", path.display()))
}

/// The messages with one image block per image: `<image>` markers of non-assistant turns
/// replaced in order, or, without markers, all blocks before the first user turn's text.
pub fn place_images(messages: &[Message], n_images: usize) -> Result<Vec<Message>> {
    let asks = |m: &Message| m.role != "assistant";
    let markers: usize =
        messages.iter().filter(|m| asks(m)).map(|m| m.content.matches("<image>").count()).sum();
    let mut out = messages.to_vec();
    if markers == n_images {
        for m in out.iter_mut().filter(|m| asks(m)) {
            m.content = m.content.replace("<image>", IMAGE_PLACEHOLDER);
        }
    } else if markers == 0 {
        let first = out
            .iter_mut()
            .find(|m| m.role == "user")
            .context("the conversation has images but no user turn to put them in")?;
        first.content = format!("{}{}", IMAGE_PLACEHOLDER.repeat(n_images), first.content);
    } else {
        bail!("the conversation has {markers} <image> marker(s) but {n_images} image(s)");
    }
    Ok(out)
}

/// Tokenizes one conversation with its images (see the module doc) and cuts it to `max_len`
/// tokens; a cut never splits an image's run: it moves back to the run's start, and images
/// past the cut are dropped with it.
pub fn tokenize_vl(
    tok: &Tokenizer,
    messages: &[Message],
    images: &[PathBuf],
    grids: &[[usize; 3]],
    default_system: Option<&str>,
    max_len: usize,
    cfg: &Qwen2VlConfig,
) -> Result<VlSftExample> {
    let msgs = place_images(messages, images.len())?;
    let full = tokenize(tok, &msgs, default_system, usize::MAX)?;
    let img = cfg.image_token_id;
    let found = full.ids.iter().filter(|&&t| t == img).count();
    if found != images.len() {
        bail!(
            "the rendered conversation holds {found} <|image_pad|> token(s) (id {img}) for {} image(s): \
             the text must not contain <|image_pad|> itself, and the tokenizer must know it as one token",
            images.len()
        );
    }
    let merge = cfg.vision.spatial_merge_size;
    let mut ids = Vec::with_capacity(full.ids.len());
    let mut trained = Vec::with_capacity(full.ids.len());
    let mut runs = Vec::with_capacity(images.len()); // (start, len) of each image's run
    let mut k = 0;
    for (&t, &tr) in full.ids.iter().zip(&full.trained) {
        if t == img {
            let n = grids[k].iter().product::<usize>() / (merge * merge);
            runs.push((ids.len(), n));
            ids.extend(std::iter::repeat_n(img, n));
            trained.extend(std::iter::repeat_n(false, n));
            k += 1;
        } else {
            ids.push(t);
            trained.push(tr);
        }
    }
    let mut cut = ids.len().min(max_len);
    let mut kept = runs.len();
    for (i, &(start, len)) in runs.iter().enumerate() {
        if start + len > cut {
            cut = cut.min(start);
            kept = i;
            break;
        }
    }
    ids.truncate(cut);
    trained.truncate(cut);
    Ok(VlSftExample {
        ex: SftExample { ids, trained },
        images: images[..kept].to_vec(),
        grids: grids[..kept].to_vec(),
    })
}

/// Loads a JSONL file of conversations with images for the Qwen2.5-VL model in `model_dir`
/// (its config and `preprocessor_config.json`, read here; no weights). Every image must exist
/// and have a readable header; errors name the file, the line and the image. Examples left
/// with no trained target after `max_len` are dropped and counted.
pub fn load_vl_sft_dataset(
    path: &Path,
    tok: &Tokenizer,
    default_system: Option<&str>,
    max_len: usize,
    model_dir: &Path,
    cfg: &Qwen2VlConfig,
) -> Result<(Vec<VlSftExample>, usize)> {
    let records = load_jsonl_with_images(path)?;
    let any_images = records.iter().any(|r| !r.images.is_empty());
    let pc = if any_images { Some(PreprocessorConfig::load(model_dir)?) } else { None };
    if let Some(pc) = &pc {
        let (v, mine) = (&cfg.vision, (pc.patch_size, pc.merge_size, pc.temporal_patch_size));
        let tower = (v.patch_size, v.spatial_merge_size, v.temporal_patch_size);
        if mine != tower {
            bail!(
                "{}: (patch_size, merge_size, temporal_patch_size) = {mine:?} but the vision tower in config.json has {tower:?}",
                model_dir.join("preprocessor_config.json").display()
            );
        }
    }
    // Image headers, rendering and tokenizing on all cores (see `load_sft_dataset`); the
    // result and the first error in file order are a sequential pass's.
    use rayon::prelude::*;
    let examples: Vec<Result<VlSftExample>> = records
        .par_iter()
        .map(|r| {
            let at = || format!("{}:{}", path.display(), r.line);
            let grids = match &pc {
                Some(pc) => {
                    r.images.iter().map(|p| image_file_grid(p, pc)).collect::<Result<Vec<_>>>()
                }
                None => Ok(vec![]),
            }
            .with_context(at)?;
            tokenize_vl(tok, &r.messages, &r.images, &grids, default_system, max_len, cfg)
                .with_context(at)
        })
        .collect();
    let mut out = Vec::with_capacity(examples.len());
    let mut dropped = 0;
    for ex in examples {
        let ex = ex?;
        if ex.ex.trained_targets() == 0 {
            dropped += 1;
        } else {
            out.push(ex);
        }
    }
    if out.is_empty() {
        bail!("{}: no example has a trained token within --max-len {max_len}", path.display());
    }
    Ok((out, dropped))
}
