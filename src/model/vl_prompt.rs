//! Images given on the command line, made ready for a Qwen2.5-VL model: decoded and
//! preprocessed as the checkpoint's `preprocessor_config.json` says, and the prompt's image
//! placeholders expanded to one token per merged patch.
//!
//! The placeholder rule is transformers' `Qwen2_5_VLProcessor.__call__` (via
//! `replace_image_token`): every `<|image_pad|>` of the text, in order across the batch, takes
//! the next image and becomes `grid_t * grid_h * grid_w / merge_size^2` copies of itself. The
//! chat template writes one `<|vision_start|><|image_pad|><|vision_end|>` per image
//! (`IMAGE_PLACEHOLDER`), before the text of the user turn.

use super::vision_config::{Qwen2VlConfig, VisionConfig};
use super::vision_preprocess::{decode_rgb, preprocess, PreprocessorConfig};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What the Qwen2.5-VL chat template writes for one image in a message.
pub const IMAGE_PLACEHOLDER: &str = "<|vision_start|><|image_pad|><|vision_end|>";

/// The system prompt Qwen2.5-VL's chat template inserts when a conversation has none.
pub const QWEN25_VL_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// Whether `dir/config.json` describes a Qwen2.5-VL checkpoint (`model_type` "qwen2_5_vl").
pub fn is_vl_checkpoint(dir: &Path) -> Result<bool> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let root: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(Qwen2VlConfig::is_vl(&root))
}

/// Preprocessed images, in the order given: the patch rows of all of them back to back
/// (`[patches, patch_dim]`, what `VlModel::forward` takes) and each one's patch grid.
#[derive(Clone, Debug, Default)]
pub struct VlImages {
    pub pixels: Vec<f32>,
    pub grids: Vec<[usize; 3]>,
}

impl VlImages {
    /// Decodes (PNG, JPEG, WebP) and preprocesses `paths` with `model_dir`'s
    /// `preprocessor_config.json`, which must agree with the vision tower's patch geometry.
    /// Errors name the file.
    pub fn load(paths: &[PathBuf], model_dir: &Path, vision: &VisionConfig) -> Result<Self> {
        let mut out = VlImages::default();
        if paths.is_empty() {
            return Ok(out);
        }
        let pc = PreprocessorConfig::load(model_dir)?;
        let mine = (pc.patch_size, pc.merge_size, pc.temporal_patch_size);
        let tower = (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size);
        if mine != tower {
            bail!(
                "{}: (patch_size, merge_size, temporal_patch_size) = {mine:?} but the vision tower in config.json has {tower:?}",
                model_dir.join("preprocessor_config.json").display()
            );
        }
        for p in paths {
            let img = decode_rgb(p)?;
            let patches =
                preprocess(&img, &pc).with_context(|| format!("preprocessing {}", p.display()))?;
            out.pixels.extend_from_slice(&patches.pixel_values);
            out.grids.push(patches.grid_thw);
        }
        Ok(out)
    }

    /// Placeholder tokens of each image: its merged patch count.
    pub fn token_counts(&self, merge_size: usize) -> Vec<usize> {
        self.grids.iter().map(|g| g.iter().product::<usize>() / (merge_size * merge_size)).collect()
    }
}

/// Sequences with their image placeholders expanded, and the images (indices into the images
/// given, in order) that each one holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Expanded {
    pub seqs: Vec<Vec<u32>>,
    pub images: Vec<Range<usize>>,
}

/// Expands the image placeholders of `seqs` (each `image_token_id` is one image, taken in order
/// across the sequences) to `counts[image]` copies. The number of placeholders must equal
/// `counts.len()`.
pub fn expand_image_placeholders(
    seqs: &[Vec<u32>],
    image_token_id: u32,
    counts: &[usize],
) -> Result<Expanded> {
    let found: usize =
        seqs.iter().map(|s| s.iter().filter(|&&t| t == image_token_id).count()).sum();
    if found != counts.len() {
        bail!(
            "the prompt holds {found} image placeholder(s) (token {image_token_id}, <|image_pad|>) but {} image(s) were given; write one <|vision_start|><|image_pad|><|vision_end|> per image, in the order of the images",
            counts.len()
        );
    }
    let mut next = 0;
    let mut out = Vec::with_capacity(seqs.len());
    let mut ranges = Vec::with_capacity(seqs.len());
    for s in seqs {
        let first = next;
        let mut e = Vec::with_capacity(s.len());
        for &t in s {
            if t == image_token_id {
                e.extend(std::iter::repeat_n(image_token_id, counts[next]));
                next += 1;
            } else {
                e.push(t);
            }
        }
        out.push(e);
        ranges.push(first..next);
    }
    Ok(Expanded { seqs: out, images: ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_placeholder_takes_the_next_image_across_sequences() {
        let seqs = vec![vec![1, 9, 2, 9], vec![3], vec![9, 4]];
        let e = expand_image_placeholders(&seqs, 9, &[2, 1, 3]).unwrap();
        assert_eq!(e.seqs, vec![vec![1, 9, 9, 2, 9], vec![3], vec![9, 9, 9, 4]]);
        assert_eq!(e.images, vec![0..2, 2..2, 2..3]);
    }

    #[test]
    fn placeholder_count_must_match_the_images() {
        let err = expand_image_placeholders(&[vec![9, 9]], 9, &[4]).unwrap_err().to_string();
        assert!(err.contains("2 image placeholder(s)") && err.contains("1 image(s)"), "{err}");
        let err = expand_image_placeholders(&[vec![1]], 9, &[4]).unwrap_err().to_string();
        assert!(err.contains("0 image placeholder(s)"), "{err}");
    }
}
