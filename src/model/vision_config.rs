//! `config.json` of a `Qwen2_5_VLForConditionalGeneration` checkpoint, in both layouts:
//! - flat (the published Qwen2.5-VL checkpoints): text keys at the top level, `rope_theta`,
//!   `rope_scaling: {type: "mrope", mrope_section}`, and a `vision_config` object;
//! - nested (what transformers 5 writes): `text_config` (with `rope_parameters` holding
//!   `mrope_section` and `rope_theta`) and `vision_config`.
//!
//! The text side becomes an ordinary `Qwen2Config` (same decoder, same weight names
//! `model.layers.N.*`), so everything written for Qwen2 applies to it unchanged.

use super::config::Qwen2Config;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// The vision tower's hyper-parameters (`vision_config`), as transformers'
/// `Qwen2_5_VLVisionConfig` names them; defaults are transformers'. Unknown keys are kept in
/// `extra` so a config written back (`vl_save`) is the one read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_merge")]
    pub spatial_merge_size: usize,
    #[serde(default = "d_temporal")]
    pub temporal_patch_size: usize,
    #[serde(default = "d_window")]
    pub window_size: usize,
    pub out_hidden_size: usize,
    #[serde(default)]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_tps")]
    pub tokens_per_second: usize,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn d_in_channels() -> usize {
    3
}
fn d_patch() -> usize {
    14
}
fn d_merge() -> usize {
    2
}
fn d_temporal() -> usize {
    2
}
fn d_window() -> usize {
    112
}
fn d_act() -> String {
    "silu".into()
}
fn d_tps() -> usize {
    4
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Input width of one patch: `in_channels * temporal_patch_size * patch_size^2`.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Width of the merger's MLP: `hidden_size * spatial_merge_size^2`.
    pub fn merged_dim(&self) -> usize {
        self.hidden_size * self.spatial_merge_size * self.spatial_merge_size
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("depth", self.depth),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_heads", self.num_heads),
            ("in_channels", self.in_channels),
            ("patch_size", self.patch_size),
            ("spatial_merge_size", self.spatial_merge_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("out_hidden_size", self.out_hidden_size),
        ] {
            if v == 0 {
                bail!("vision_config.{name} must be positive");
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            bail!(
                "vision_config.hidden_size {} is not a multiple of num_heads {}",
                self.hidden_size,
                self.num_heads
            );
        }
        // The 2D rotary embedding gives each of the two axes a quarter of head_dim in pairs.
        if !self.head_dim().is_multiple_of(4) {
            bail!("vision_config head_dim {} must be a multiple of 4 (2D rotary)", self.head_dim());
        }
        let unit = self.patch_size * self.spatial_merge_size;
        if !self.window_size.is_multiple_of(unit) {
            bail!(
                "vision_config.window_size {} is not a multiple of patch_size * spatial_merge_size = {unit}",
                self.window_size
            );
        }
        if let Some(&b) = self.fullatt_block_indexes.iter().find(|&&b| b >= self.depth) {
            bail!(
                "vision_config.fullatt_block_indexes names block {b}, but depth is {}",
                self.depth
            );
        }
        if self.hidden_act != "silu" {
            bail!("vision_config.hidden_act is {:?}; Qwen2.5-VL uses \"silu\"", self.hidden_act);
        }
        Ok(())
    }
}

/// A Qwen2.5-VL config: the language model (an ordinary Qwen2 decoder), the vision tower, the
/// special token ids and the M-RoPE split of the rotary frequencies over (t, h, w).
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2VlConfig {
    pub text: Qwen2Config,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    /// Rotary frequency pairs given to the temporal, height and width positions; sums to
    /// `head_dim / 2`.
    pub mrope_section: [usize; 3],
}

fn get_u32(obj: &Map<String, Value>, key: &str, default: u32) -> Result<u32> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .with_context(|| format!("field {key} must be a non-negative integer, got {v}")),
    }
}

impl Qwen2VlConfig {
    /// Whether a `config.json` value describes a Qwen2.5-VL model (rather than a text Qwen2).
    pub fn is_vl(root: &Value) -> bool {
        root.get("model_type").and_then(Value::as_str) == Some("qwen2_5_vl")
    }

    /// Reads and validates `dir/config.json`; every error names the file and the field.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let root: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let mut cfg = Self::from_json(&root)
            .with_context(|| format!("{}: invalid Qwen2.5-VL config", path.display()))?;
        cfg.text.generation_eos = super::config::generation_eos_ids(dir)?;
        Ok(cfg)
    }

    pub fn from_json(root: &Value) -> Result<Self> {
        let obj = root.as_object().context("config is not a JSON object")?;
        if !Self::is_vl(root) {
            bail!(
                "model_type is {:?}; expected \"qwen2_5_vl\" (Qwen2_5_VLForConditionalGeneration)",
                obj.get("model_type")
            );
        }
        // The text side: `text_config` (nested) or the top level itself (flat).
        let nested = obj.get("text_config").filter(|v| !v.is_null());
        let mut t: Map<String, Value> = match nested {
            Some(v) => v.as_object().context("text_config is not an object")?.clone(),
            None => obj.clone(),
        };
        // mrope_section: rope_parameters (transformers 5) or rope_scaling (published checkpoints).
        let rope = t
            .get("rope_parameters")
            .filter(|v| v.get("mrope_section").is_some())
            .or_else(|| t.get("rope_scaling").filter(|v| !v.is_null()))
            .cloned()
            .context(
                "no rope_scaling / rope_parameters with mrope_section (M-RoPE) in the text config",
            )?;
        let sec: Vec<usize> = serde_json::from_value(
            rope.get("mrope_section").cloned().context("rope settings lack mrope_section")?,
        )
        .context("mrope_section must be a list of 3 non-negative integers")?;
        let mrope_section: [usize; 3] = sec
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("mrope_section {sec:?} must have 3 entries (t, h, w)"))?;
        if t.get("rope_theta").is_none() {
            // Qwen2.5-VL's text default (transformers' Qwen2_5_VLTextConfig.default_theta).
            let theta = rope.get("rope_theta").cloned().unwrap_or(Value::from(1_000_000.0));
            t.insert("rope_theta".into(), theta);
        }
        // The decoder is Qwen2's: read it as one. The VL-only keys (and the storage dtype,
        // which the writer sets at the top level) stay out of its `extra`, so both layouts
        // read to the same config and a config written back (`vl_save`) reads as the one read.
        for k in [
            "rope_scaling",
            "rope_parameters",
            "text_config",
            "vision_config",
            "architectures",
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
            "vision_token_id",
            "dtype",
            "torch_dtype",
            "transformers_version",
        ] {
            t.remove(k);
        }
        t.insert("model_type".into(), Value::from("qwen2"));
        if let Some(tie) = obj.get("tie_word_embeddings") {
            t.insert("tie_word_embeddings".into(), tie.clone());
        }
        let text: Qwen2Config = serde_json::from_value(Value::Object(t))
            .context("text config: not a valid Qwen2 decoder config")?;
        text.validate().context("text config")?;
        if mrope_section.iter().sum::<usize>() != text.head_dim() / 2 {
            bail!(
                "mrope_section {mrope_section:?} sums to {}, but head_dim / 2 is {}",
                mrope_section.iter().sum::<usize>(),
                text.head_dim() / 2
            );
        }
        let vision: VisionConfig = serde_json::from_value(
            obj.get("vision_config").cloned().context("no vision_config object")?,
        )
        .context("vision_config")?;
        vision.validate()?;
        let cfg = Qwen2VlConfig {
            text,
            vision,
            image_token_id: get_u32(obj, "image_token_id", 151655)?,
            video_token_id: get_u32(obj, "video_token_id", 151656)?,
            vision_start_token_id: get_u32(obj, "vision_start_token_id", 151652)?,
            vision_end_token_id: get_u32(obj, "vision_end_token_id", 151653)?,
            mrope_section,
        };
        if cfg.vision.out_hidden_size != cfg.text.hidden_size {
            bail!(
                "vision_config.out_hidden_size {} must equal the language model's hidden_size {}",
                cfg.vision.out_hidden_size,
                cfg.text.hidden_size
            );
        }
        for (name, id) in [
            ("image_token_id", cfg.image_token_id),
            ("vision_start_token_id", cfg.vision_start_token_id),
            ("vision_end_token_id", cfg.vision_end_token_id),
        ] {
            if id as usize >= cfg.text.vocab_size {
                bail!("{name} {id} is outside the vocabulary (vocab_size {})", cfg.text.vocab_size);
            }
        }
        Ok(cfg)
    }
}
