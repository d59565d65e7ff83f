//! A Qwen2.5-VL checkpoint on the host: its config and the two parameter sets (the Qwen2
//! decoder under `model.*` / `lm_head`, the vision tower under `visual.*`).

use super::params::ParamLayout;
use super::safetensors_io::load_specs;
use super::vision_config::Qwen2VlConfig;
use super::vision_params::VisionLayout;
use anyhow::{Context, Result};
use std::path::Path;

pub struct VlHost {
    pub cfg: Qwen2VlConfig,
    pub text_layout: ParamLayout,
    pub text: Vec<Vec<f32>>,
    pub vision_layout: VisionLayout,
    pub vision: Vec<Vec<f32>>,
}

impl VlHost {
    /// Loads `dir/config.json` (flat or nested layout) and every decoder and vision tensor,
    /// f32/f16/bf16, one file or shards; a missing or mis-shaped tensor is an error naming it.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut cfg = Qwen2VlConfig::load(dir)?;
        super::safetensors_io::untie_if_the_head_differs(dir, &mut cfg.text)?;
        let text_layout = ParamLayout::new(&cfg.text);
        let vision_layout = VisionLayout::new(&cfg.vision);
        let text = load_specs(dir, &text_layout.specs).context("language model weights")?;
        let vision = load_specs(dir, &vision_layout.specs).context("vision tower weights")?;
        Ok(VlHost { cfg, text_layout, text, vision_layout, vision })
    }
}
